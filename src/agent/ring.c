/* ring.c: scrollback ring (see ring.h). */
#include "agent/ring.h"

#include <string.h>

#include "core/alloc.h"

void gw_ring_init(gw_ring *r, size_t cap)
{
    memset(r, 0, sizeof *r);
    r->cap = cap;
    if (cap)
        r->data = gw_malloc(cap);
}

void gw_ring_free(gw_ring *r)
{
    gw_free(r->data);
    memset(r, 0, sizeof *r);
}

void gw_ring_write(gw_ring *r, const uint8_t *p, size_t n)
{
    r->total += n;
    if (!r->cap)
        return;
    if (n >= r->cap) {
        /* Only the last cap bytes survive. */
        memcpy(r->data, p + n - r->cap, r->cap);
        r->start = 0;
        r->len = r->cap;
        return;
    }
    size_t end = (r->start + r->len) % r->cap; /* where the next byte goes */
    size_t first = r->cap - end < n ? r->cap - end : n;
    memcpy(r->data + end, p, first);
    memcpy(r->data, p + first, n - first);
    if (r->len + n > r->cap) {
        size_t drop = r->len + n - r->cap;
        r->start = (r->start + drop) % r->cap;
        r->len = r->cap;
    } else {
        r->len += n;
    }
}

size_t gw_ring_copy(const gw_ring *r, uint8_t *out)
{
    if (!r->len)
        return 0;
    size_t first = r->cap - r->start < r->len ? r->cap - r->start : r->len;
    memcpy(out, r->data + r->start, first);
    memcpy(out + first, r->data, r->len - first);
    return r->len;
}

size_t gw_ring_utf8_skip(const gw_ring *r)
{
    if (r->total <= r->len)
        return 0;
    size_t k = 0;
    while (k < 3 && k < r->len && (r->data[(r->start + k) % r->cap] & 0xC0) == 0x80)
        k++;
    return k;
}

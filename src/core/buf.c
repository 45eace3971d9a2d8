#include "core/buf.h"

#include <string.h>

#include "core/alloc.h"
#include "core/common.h"

int gw_buf_reserve(gw_buf *b, size_t n, size_t max)
{
    if (n > max || b->len > max - n)
        return GW_ERR;
    if (b->data && b->cap - b->head - b->len >= n)
        return GW_OK;
    if (b->data && b->cap - b->len >= n) {
        /* Enough room once the consumed prefix is dropped. */
        memmove(b->data, b->data + b->head, b->len);
        b->head = 0;
        return GW_OK;
    }
    size_t want = (size_t)b->len + n;
    size_t cap = b->cap ? b->cap : 4096; /* a page: first growths cost no copy */
    while (cap < want)
        cap *= 2;
    if (cap > max && want <= max)
        cap = max;
    uint8_t *p = gw_try_malloc(cap);
    if (!p)
        return GW_ERR;
    if (b->len)
        memcpy(p, b->data + b->head, b->len);
    gw_free(b->data);
    b->data = p;
    b->cap = (uint32_t)cap;
    b->head = 0;
    return GW_OK;
}

int gw_buf_append(gw_buf *b, const void *p, size_t n, size_t max)
{
    if (n == 0)
        return GW_OK;
    if (gw_buf_reserve(b, n, max) != GW_OK)
        return GW_ERR;
    memcpy(gw_buf_tail(b), p, n);
    b->len += (uint32_t)n;
    return GW_OK;
}

void gw_buf_consume(gw_buf *b, size_t n)
{
    if (n >= b->len) {
        gw_buf_release(b);
        return;
    }
    b->head += (uint32_t)n;
    b->len -= (uint32_t)n;
}

void gw_buf_release(gw_buf *b)
{
    gw_free(b->data);
    b->data = NULL;
    b->cap = b->head = b->len = 0;
}

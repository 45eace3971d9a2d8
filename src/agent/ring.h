/* ring.h: the scrollback of a terminal session: a fixed-capacity byte ring
 * that keeps the most recent output (older bytes are overwritten). Pure
 * memory work, no I/O. */
#ifndef GW_RING_H
#define GW_RING_H

#include <stddef.h>
#include <stdint.h>

typedef struct gw_ring {
    uint8_t *data;  /* cap bytes, allocated by gw_ring_init (NULL when cap is 0) */
    size_t cap;
    size_t start;   /* offset of the oldest byte */
    size_t len;     /* bytes held, <= cap */
    uint64_t total; /* bytes ever written (tells whether older output was dropped) */
} gw_ring;

/* Prepares an empty ring of cap bytes (0: keeps nothing). Aborts on OOM. */
void gw_ring_init(gw_ring *r, size_t cap);
void gw_ring_free(gw_ring *r);
/* Appends p[0..n); when full, the oldest bytes make room. */
void gw_ring_write(gw_ring *r, const uint8_t *p, size_t n);
/* Copies the held bytes, oldest first, into out (r->len bytes of room).
 * Returns r->len. */
size_t gw_ring_copy(const gw_ring *r, uint8_t *out);
/* How many leading bytes of a copy to skip so a replay does not start in
 * the middle of a UTF-8 sequence cut by the wrap (0 when nothing was
 * dropped). At most 3. */
size_t gw_ring_utf8_skip(const gw_ring *r);

#endif

/* buf.h: a growable byte buffer with explicit capacity and a hard maximum.
 *
 * Cycle: gw_buf_reserve() -> write into gw_buf_tail() -> gw_buf_commit() ->
 * read from gw_buf_head() -> gw_buf_consume(). Storage is allocated lazily and
 * released by gw_buf_release() (or automatically by consume when the buffer
 * empties and GW_BUF_KEEP is not set), so an idle connection holds no buffer. */
#ifndef GW_BUF_H
#define GW_BUF_H

#include <stddef.h>
#include <stdint.h>

typedef struct gw_buf {
    uint8_t *data; /* storage, NULL while empty and released */
    uint32_t cap;  /* bytes allocated at data */
    uint32_t head; /* offset of the first unread byte */
    uint32_t len;  /* unread bytes starting at head */
} gw_buf;

static inline uint8_t *gw_buf_head(const gw_buf *b) { return b->data + b->head; }
static inline uint8_t *gw_buf_tail(const gw_buf *b) { return b->data + b->head + b->len; }
static inline size_t gw_buf_room(const gw_buf *b) { return b->data ? b->cap - b->head - b->len : 0; }

/* Makes room for at least n more bytes after the data (compacting first).
 * Fails with GW_ERR, changing nothing, when len + n would exceed max or memory
 * is short: peers decide n, so this never aborts. */
int gw_buf_reserve(gw_buf *b, size_t n, size_t max);
/* Appends n bytes (reserve + copy + commit). GW_ERR as gw_buf_reserve. */
int gw_buf_append(gw_buf *b, const void *p, size_t n, size_t max);
static inline void gw_buf_commit(gw_buf *b, size_t n) { b->len += (uint32_t)n; }
/* Drops n bytes from the front; frees storage when the buffer becomes empty. */
void gw_buf_consume(gw_buf *b, size_t n);
/* Frees the storage. */
void gw_buf_release(gw_buf *b);

#endif

/* utf8.h: incremental, fail-fast UTF-8 validation (RFC 3629: no overlongs, no
 * surrogates, nothing above U+10FFFF), for text messages split over frames
 * and reads. Fast path for ASCII runs a word at a time. */
#ifndef GW_UTF8_H
#define GW_UTF8_H

#include <stddef.h>
#include <stdint.h>

typedef struct gw_utf8 {
    uint32_t state; /* 0 = at a code point boundary; otherwise mid-sequence DFA state */
} gw_utf8;

static inline void gw_utf8_init(gw_utf8 *v) { v->state = 0; }
/* Feeds n bytes. Returns 0 (GW_OK) while the input is valid or a valid
 * prefix, -1 (GW_ERR) as soon as a byte makes it invalid (fail fast: a bad
 * byte is reported even when the message is not finished). */
int gw_utf8_feed(gw_utf8 *v, const uint8_t *p, size_t n);
/* 1 when the bytes fed so far end on a code point boundary. */
static inline int gw_utf8_complete(const gw_utf8 *v) { return v->state == 0; }
/* Whole-buffer check: 1 valid, 0 not. */
int gw_utf8_valid(const uint8_t *p, size_t n);

#endif

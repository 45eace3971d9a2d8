/* grpc_wire.h: the gRPC-over-HTTP/2 wire rules that are not HTTP/2 itself
 * (grpc/doc/PROTOCOL-HTTP2.md): the length-prefixed message framing, the
 * grpc-timeout header, the status codes and the percent-encoding of
 * grpc-message. Pure: no I/O, no allocation beyond the caller's buffer, so
 * it is unit-tested and fuzzed (fuzz/fuzz_grpc_wire.c). */
#ifndef GW_GRPC_WIRE_H
#define GW_GRPC_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"

/* Status codes (grpc/doc/statuscodes.md). */
enum {
    GW_GRPC_OK = 0,
    GW_GRPC_CANCELLED = 1,
    GW_GRPC_UNKNOWN = 2,
    GW_GRPC_INVALID_ARGUMENT = 3,
    GW_GRPC_DEADLINE_EXCEEDED = 4,
    GW_GRPC_NOT_FOUND = 5,
    GW_GRPC_PERMISSION_DENIED = 7,
    GW_GRPC_RESOURCE_EXHAUSTED = 8,
    GW_GRPC_FAILED_PRECONDITION = 9,
    GW_GRPC_OUT_OF_RANGE = 11,
    GW_GRPC_UNIMPLEMENTED = 12,
    GW_GRPC_INTERNAL = 13,
    GW_GRPC_UNAVAILABLE = 14,
    GW_GRPC_UNAUTHENTICATED = 16,
};

/* "RESOURCE_EXHAUSTED" for 8 (logs and metrics labels); "UNKNOWN" otherwise. */
const char *gw_grpc_status_name(int code);

#define GW_GRPC_PREFIX 5 /* compressed flag (1) + big-endian length (4) */

/* Reassembles length-prefixed messages from DATA frame bytes. */
typedef struct gw_grpc_reader {
    gw_buf buf;         /* the message being gathered (prefix included) */
    uint32_t max;       /* largest message accepted */
} gw_grpc_reader;

enum {
    GW_GRPC_MSG_MORE = 0,     /* everything was used; no whole message yet */
    GW_GRPC_MSG_READY = 1,    /* *msg, *len: one message (valid until the next call) */
    GW_GRPC_MSG_TOO_BIG = -1, /* the prefix announces more than max */
    GW_GRPC_MSG_COMPRESSED = -2, /* the compressed flag is set: no grpc-encoding was agreed */
    GW_GRPC_MSG_NOMEM = -3,
};

/* Feeds n bytes at p; *used says how many were taken (a READY answer may
 * leave the rest for the next call). The reader's buffer is released when a
 * message has been handed out and nothing follows. */
int gw_grpc_reader_feed(gw_grpc_reader *r, const uint8_t *p, size_t n, size_t *used, const uint8_t **msg,
                        size_t *len);
/* Bytes of a message begun but not finished (0: at a message boundary). */
static inline size_t gw_grpc_reader_partial(const gw_grpc_reader *r) { return r->buf.len; }
void gw_grpc_reader_free(gw_grpc_reader *r);

/* Writes the 5-byte prefix of an uncompressed message of len bytes. */
void gw_grpc_prefix(uint8_t out[GW_GRPC_PREFIX], size_t len);

/* grpc-timeout: 1 to 8 ASCII digits and a unit (H M S m u n). GW_OK with the
 * timeout in milliseconds (rounded up, so 1n is 1 ms, never 0), or GW_ERR. */
int gw_grpc_timeout_parse(const char *s, size_t n, uint64_t *ms);

/* grpc-message: percent-encodes msg (bytes outside 0x20-0x7E and '%') into
 * out (NUL-terminated, truncated at cap on a whole escape). Returns the
 * length written. */
size_t gw_grpc_message_encode(const char *msg, char *out, size_t cap);

#endif

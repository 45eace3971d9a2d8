/* ws_frame.h: the RFC 6455 frame codec. Pure: bytes in, results out, no I/O,
 * no allocation. The session (ws_session.c) owns state across frames. */
#ifndef GW_WS_FRAME_H
#define GW_WS_FRAME_H

#include <stddef.h>
#include <stdint.h>

enum gw_ws_opcode {
    GW_WS_OP_CONT = 0x0,
    GW_WS_OP_TEXT = 0x1,
    GW_WS_OP_BINARY = 0x2,
    GW_WS_OP_CLOSE = 0x8,
    GW_WS_OP_PING = 0x9,
    GW_WS_OP_PONG = 0xA,
};

#define GW_WS_RSV1 0x4 /* rsv field bits as they sit in byte 0 >> 4 */
#define GW_WS_RSV2 0x2
#define GW_WS_RSV3 0x1
#define GW_WS_MAX_HEADER 14 /* 2 + 8 extended length + 4 mask */

/* Close codes (RFC 6455 section 7.4.1). */
enum gw_ws_close_code {
    GW_WS_CLOSE_NORMAL = 1000,
    GW_WS_CLOSE_GOING_AWAY = 1001,
    GW_WS_CLOSE_PROTOCOL = 1002,
    GW_WS_CLOSE_UNSUPPORTED = 1003,
    GW_WS_CLOSE_NO_STATUS = 1005,   /* never on the wire */
    GW_WS_CLOSE_ABNORMAL = 1006,    /* never on the wire */
    GW_WS_CLOSE_INVALID_DATA = 1007,
    GW_WS_CLOSE_POLICY = 1008,
    GW_WS_CLOSE_TOO_BIG = 1009,
    GW_WS_CLOSE_EXTENSION = 1010,
    GW_WS_CLOSE_INTERNAL = 1011,
    GW_WS_CLOSE_TRY_AGAIN = 1013,
};

typedef struct gw_ws_frame_hdr {
    uint8_t fin;     /* 1 when FIN is set */
    uint8_t rsv;     /* the three RSV bits: GW_WS_RSV1|RSV2|RSV3 */
    uint8_t opcode;  /* enum gw_ws_opcode */
    uint8_t masked;  /* 1 when the MASK bit is set */
    uint8_t mask[4]; /* masking key when masked */
    uint32_t hdr_len; /* bytes of header, 2..14 */
    uint64_t len;    /* payload length */
} gw_ws_frame_hdr;

/* Parses one frame header from p[0..n).
 * Returns the header length (> 0) and fills *h; GW_AGAIN when n is too short
 * to hold the whole header; GW_ERR with *close_code = 1002 when the header is
 * malformed: an unknown opcode (3-7, 0xB-0xF), a control frame that is
 * fragmented or longer than 125 bytes, a 64-bit length with its top bit set,
 * or a length not in its minimal encoding. RSV bits and the masking rule are
 * left to the caller (they depend on the negotiated extensions and the role). */
int gw_ws_frame_parse_header(const uint8_t *p, size_t n, gw_ws_frame_hdr *h, uint16_t *close_code);

/* Walks frames laid back to back (a run, gw_ws_handler.on_run): the frame
 * at *off into h, its payload at *payload (h->len bytes); *off moves past
 * it. Returns 1 for a frame, 0 at the end, -1 when what is left is not one
 * whole frame. */
int gw_ws_frame_next(uint8_t *p, size_t n, size_t *off, gw_ws_frame_hdr *h, uint8_t **payload);

/* XORs p[0..n) with the masking key, in place. offset is the position of p[0]
 * within the frame's payload, so a payload can be unmasked in pieces. Works a
 * machine word at a time. */
void gw_ws_mask(uint8_t *p, size_t n, const uint8_t mask[4], uint64_t offset);

/* dst[i] = src[i] ^ mask[(offset + i) % 4] for i in [0, n), in one pass: a
 * payload masked on its way into an output buffer. dst and src do not
 * overlap; either may be at any alignment. */
void gw_ws_mask_copy(uint8_t *restrict dst, const uint8_t *restrict src, size_t n, const uint8_t mask[4],
                     uint64_t offset);

/* Writes a frame header into out (at least GW_WS_MAX_HEADER bytes) and returns
 * its length. mask is NULL for an unmasked (server) frame, else the 4-byte key
 * (client frames); the payload is masked separately with gw_ws_mask(). */
size_t gw_ws_frame_encode_header(uint8_t *out, int fin, int rsv, int opcode, uint64_t len, const uint8_t *mask);

/* 1 when code may appear in a Close frame on the wire: 1000-1003, 1007-1014,
 * 3000-4999. 1004, 1005, 1006, 1015, 0-999, 1016-2999 and >= 5000 are not. */
int gw_ws_close_code_valid(unsigned code);

/* Validates a Close frame payload (already unmasked). n == 0 is valid (no
 * code: *code = 1005). n == 1, an invalid code or a reason that is not UTF-8
 * give GW_ERR with *close_code set to 1002 (bad length/code) or 1007 (bad
 * UTF-8). On GW_OK *code, *reason and *reason_len are set. */
int gw_ws_close_parse(const uint8_t *p, size_t n, uint16_t *code, const uint8_t **reason, size_t *reason_len,
                      uint16_t *close_code);

/* Builds a Close payload (2-byte code + reason truncated to fit 125 bytes at a
 * UTF-8 boundary) into out[125]; returns its length. code 0 gives length 0. */
size_t gw_ws_close_build(uint8_t *out, unsigned code, const char *reason);

#endif

/* ws_frame.c: RFC 6455 frame header codec, payload masking and Close
 * payloads. Pure functions: no I/O, no allocation, no state between calls. */
#include "ws/ws_frame.h"

#include <string.h>

#include "core/common.h"
#include "ws/utf8.h"

/* ------------------------------------------------------------------ */
/* Header parse / encode                                              */
/* ------------------------------------------------------------------ */

static int opcode_known(unsigned op)
{
    return op <= GW_WS_OP_BINARY || (op >= GW_WS_OP_CLOSE && op <= GW_WS_OP_PONG);
}

int gw_ws_frame_parse_header(const uint8_t *p, size_t n, gw_ws_frame_hdr *h, uint16_t *close_code)
{
    if (n < 1)
        return GW_AGAIN;
    /* Fail fast on what the first byte alone already proves wrong, so a peer
     * sending garbage is refused before we wait for more of it. */
    unsigned op = p[0] & 0x0fu;
    unsigned fin = p[0] >> 7;
    if (!opcode_known(op) || ((op & 0x8u) && !fin)) {
        *close_code = GW_WS_CLOSE_PROTOCOL;
        return GW_ERR;
    }
    if (n < 2)
        return GW_AGAIN;

    unsigned len7 = p[1] & 0x7fu;
    unsigned masked = p[1] >> 7;
    if ((op & 0x8u) && len7 > 125) {
        *close_code = GW_WS_CLOSE_PROTOCOL;
        return GW_ERR;
    }

    size_t need = 2;
    uint64_t len;
    if (len7 < 126) {
        len = len7;
    } else if (len7 == 126) {
        need = 4;
        if (n < need)
            return GW_AGAIN;
        len = (uint64_t)p[2] << 8 | p[3];
        if (len < 126)
            goto bad; /* would have fit the 7-bit form */
    } else {
        need = 10;
        if (n < need)
            return GW_AGAIN;
        len = 0;
        for (int i = 2; i < 10; i++)
            len = len << 8 | p[i];
        if (len >> 63)
            goto bad;
        if (len <= 0xffff)
            goto bad; /* would have fit the 16-bit form */
    }
    if (masked) {
        if (n < need + 4)
            return GW_AGAIN;
        memcpy(h->mask, p + need, 4);
        need += 4;
    } else {
        memset(h->mask, 0, 4);
    }
    h->fin = (uint8_t)fin;
    h->rsv = (uint8_t)((p[0] >> 4) & 0x7u);
    h->opcode = (uint8_t)op;
    h->masked = (uint8_t)masked;
    h->hdr_len = (uint32_t)need;
    h->len = len;
    return (int)need;

bad:
    *close_code = GW_WS_CLOSE_PROTOCOL;
    return GW_ERR;
}

int gw_ws_frame_next(uint8_t *p, size_t n, size_t *off, gw_ws_frame_hdr *h, uint8_t **payload)
{
    if (*off >= n)
        return 0;
    uint16_t code;
    int hl = gw_ws_frame_parse_header(p + *off, n - *off, h, &code);
    if (hl < 0 || h->len > n - *off - (size_t)hl)
        return -1;
    *payload = p + *off + hl;
    *off += (size_t)hl + (size_t)h->len;
    return 1;
}

size_t gw_ws_frame_encode_header(uint8_t *out, int fin, int rsv, int opcode, uint64_t len, const uint8_t *mask)
{
    size_t n;
    out[0] = (uint8_t)((fin ? 0x80u : 0u) | ((unsigned)rsv & 0x7u) << 4 | ((unsigned)opcode & 0x0fu));
    uint8_t mbit = mask ? 0x80u : 0u;
    if (len < 126) {
        out[1] = (uint8_t)(mbit | len);
        n = 2;
    } else if (len <= 0xffff) {
        out[1] = (uint8_t)(mbit | 126u);
        out[2] = (uint8_t)(len >> 8);
        out[3] = (uint8_t)len;
        n = 4;
    } else {
        out[1] = (uint8_t)(mbit | 127u);
        for (int i = 0; i < 8; i++)
            out[2 + i] = (uint8_t)(len >> (56 - 8 * i));
        n = 10;
    }
    if (mask) {
        memcpy(out + n, mask, 4);
        n += 4;
    }
    return n;
}

/* ------------------------------------------------------------------ */
/* Masking                                                            */
/* ------------------------------------------------------------------ */

/* XORs n bytes of src with the mask from phase offset into dst; dst may be
 * src (each word is loaded before it is stored). The key three times in
 * memory order: from phase k on, 8 bytes of it are the key for a word, and
 * XOR with that word is the byte-wise XOR whatever the host byte order.
 * Words are loaded and stored through memcpy at any alignment (one unaligned
 * access on x86 and arm64; a per-byte prologue to reach alignment cost more
 * than it saved on the short frames that dominate). 8 is a multiple of 4, so
 * the phase is unchanged after whole words. */
static inline void mask_run(uint8_t *dst, const uint8_t *src, size_t n, const uint8_t mask[4], uint64_t offset)
{
    unsigned k = (unsigned)(offset & 3u);
    uint8_t key[12];
    memcpy(key, mask, 4);
    memcpy(key + 4, mask, 4);
    memcpy(key + 8, mask, 4);
    uint64_t w;
    memcpy(&w, key + k, sizeof w);
    while (n >= 4 * sizeof(uint64_t)) {
        uint64_t a, b, c, d;
        memcpy(&a, src, 8);
        memcpy(&b, src + 8, 8);
        memcpy(&c, src + 16, 8);
        memcpy(&d, src + 24, 8);
        a ^= w;
        b ^= w;
        c ^= w;
        d ^= w;
        memcpy(dst, &a, 8);
        memcpy(dst + 8, &b, 8);
        memcpy(dst + 16, &c, 8);
        memcpy(dst + 24, &d, 8);
        src += 32;
        dst += 32;
        n -= 32;
    }
    while (n >= sizeof(uint64_t)) {
        uint64_t a;
        memcpy(&a, src, 8);
        a ^= w;
        memcpy(dst, &a, 8);
        src += 8;
        dst += 8;
        n -= 8;
    }
    if (n >= 4) {
        uint32_t a, w4;
        memcpy(&a, src, 4);
        memcpy(&w4, key + k, 4);
        a ^= w4;
        memcpy(dst, &a, 4);
        src += 4;
        dst += 4;
        n -= 4;
    }
    for (size_t i = 0; i < n; i++)
        dst[i] = src[i] ^ key[k + i];
}

void gw_ws_mask(uint8_t *p, size_t n, const uint8_t mask[4], uint64_t offset) { mask_run(p, p, n, mask, offset); }

void gw_ws_mask_copy(uint8_t *restrict dst, const uint8_t *restrict src, size_t n, const uint8_t mask[4],
                     uint64_t offset)
{
    mask_run(dst, src, n, mask, offset);
}

/* ------------------------------------------------------------------ */
/* Close frames                                                       */
/* ------------------------------------------------------------------ */

int gw_ws_close_code_valid(unsigned code)
{
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) || (code >= 3000 && code <= 4999);
}

int gw_ws_close_parse(const uint8_t *p, size_t n, uint16_t *code, const uint8_t **reason, size_t *reason_len,
                      uint16_t *close_code)
{
    if (n == 0) {
        *code = GW_WS_CLOSE_NO_STATUS;
        *reason = p;
        *reason_len = 0;
        return GW_OK;
    }
    /* > 125 cannot come from a parsed control frame; refuse it anyway so
     * the contract does not depend on the caller having checked. */
    if (n == 1 || n > 125) {
        *close_code = GW_WS_CLOSE_PROTOCOL;
        return GW_ERR;
    }
    unsigned c = (unsigned)p[0] << 8 | p[1];
    if (!gw_ws_close_code_valid(c)) {
        *close_code = GW_WS_CLOSE_PROTOCOL;
        return GW_ERR;
    }
    if (!gw_utf8_valid(p + 2, n - 2)) {
        *close_code = GW_WS_CLOSE_INVALID_DATA;
        return GW_ERR;
    }
    *code = (uint16_t)c;
    *reason = p + 2;
    *reason_len = n - 2;
    return GW_OK;
}

size_t gw_ws_close_build(uint8_t *out, unsigned code, const char *reason)
{
    if (code == 0)
        return 0;
    out[0] = (uint8_t)(code >> 8);
    out[1] = (uint8_t)code;
    if (!reason)
        return 2;

    /* Keep the longest prefix of at most 123 bytes that ends on a code point
     * boundary with everything before it valid: a truncated or invalid reason
     * would make the peer fail our Close with 1007. */
    size_t keep = 0;
    gw_utf8 v;
    gw_utf8_init(&v);
    for (size_t i = 0; i < 123 && reason[i]; i++) {
        if (gw_utf8_feed(&v, (const uint8_t *)reason + i, 1) != GW_OK)
            break;
        if (gw_utf8_complete(&v))
            keep = i + 1;
    }
    memcpy(out + 2, reason, keep);
    return 2 + keep;
}

/* fuzz_ws_frame.c: frame headers parsed back to back over the input, with
 * payload unmasking, Close payload parsing and UTF-8 checks. Invariants:
 * a parsed header fits the input, re-encodes to the same bytes (parse only
 * accepts minimal encodings), every prefix of it is GW_AGAIN, unmasking
 * matches a byte-wise reference, and a parsed Close rebuilds to itself. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "ws/utf8.h"
#include "ws/ws_frame.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *buf = malloc(size ? size : 1), *ref = malloc(size ? size : 1);
    memcpy(buf, data, size);
    size_t pos = 0;
    while (pos < size) {
        gw_ws_frame_hdr h;
        uint16_t cc = 0;
        size_t n = size - pos;
        int r = gw_ws_frame_parse_header(buf + pos, n, &h, &cc);
        if (r == GW_AGAIN)
            break;
        if (r == GW_ERR) {
            if (cc != GW_WS_CLOSE_PROTOCOL)
                abort();
            break;
        }
        if (r < 2 || r > GW_WS_MAX_HEADER || (size_t)r > n || (uint32_t)r != h.hdr_len)
            abort();
        for (int k = 0; k < r; k++) {
            gw_ws_frame_hdr t;
            if (gw_ws_frame_parse_header(buf + pos, (size_t)k, &t, &cc) != GW_AGAIN)
                abort();
        }
        uint8_t enc[GW_WS_MAX_HEADER];
        size_t en = gw_ws_frame_encode_header(enc, h.fin, h.rsv, h.opcode, h.len, h.masked ? h.mask : NULL);
        if (en != (size_t)r || memcmp(enc, buf + pos, en) != 0)
            abort();
        if ((h.opcode & 8) && (!h.fin || h.len > 125))
            abort();
        if (h.len >> 63)
            abort();
        pos += (size_t)r;
        size_t avail = size - pos;
        size_t plen = h.len < avail ? (size_t)h.len : avail;
        uint8_t *p = buf + pos;
        /* Unmask in two pieces split by the first payload byte. */
        memcpy(ref, p, plen);
        for (size_t i = 0; i < plen; i++)
            ref[i] ^= h.mask[i & 3];
        size_t cut = plen ? p[0] % (plen + 1) : 0;
        gw_ws_mask(p, cut, h.mask, 0);
        gw_ws_mask(p + cut, plen - cut, h.mask, cut);
        if (memcmp(p, ref, plen) != 0)
            abort();
        /* UTF-8: whole vs split feed. */
        gw_utf8 v;
        gw_utf8_init(&v);
        int sr = gw_utf8_feed(&v, p, cut);
        if (sr == GW_OK)
            sr = gw_utf8_feed(&v, p + cut, plen - cut);
        if ((sr == GW_OK && gw_utf8_complete(&v)) != gw_utf8_valid(p, plen))
            abort();
        if (h.opcode == GW_WS_OP_CLOSE && plen == h.len) {
            uint16_t code = 0;
            const uint8_t *reason;
            size_t rl;
            cc = 0;
            if (gw_ws_close_parse(p, plen, &code, &reason, &rl, &cc) == GW_OK) {
                if (plen && !gw_ws_close_code_valid(code))
                    abort();
                if (!plen && code != GW_WS_CLOSE_NO_STATUS)
                    abort();
                if (!gw_utf8_valid(reason, rl))
                    abort();
                if (plen && !memchr(reason, 0, rl)) {
                    char s[126];
                    memcpy(s, reason, rl);
                    s[rl] = '\0';
                    uint8_t out[125];
                    size_t bn = gw_ws_close_build(out, code, s);
                    if (bn != plen || memcmp(out, p, plen) != 0)
                        abort();
                }
            } else if (cc != GW_WS_CLOSE_PROTOCOL && cc != GW_WS_CLOSE_INVALID_DATA) {
                abort();
            }
        }
        /* Close build from arbitrary bytes: always parses back. */
        if (plen) {
            char s[200];
            size_t k = plen < sizeof s - 1 ? plen : sizeof s - 1;
            memcpy(s, p, k);
            s[k] = '\0';
            uint8_t out[125];
            size_t bn = gw_ws_close_build(out, 1000 + (p[0] & 3), s);
            uint16_t code;
            const uint8_t *reason;
            size_t rl;
            if (bn < 2 || bn > 125 || gw_ws_close_parse(out, bn, &code, &reason, &rl, &cc) != GW_OK)
                abort();
        }
        pos += plen;
    }
    free(buf);
    free(ref);
    return 0;
}

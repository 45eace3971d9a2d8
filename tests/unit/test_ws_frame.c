/* test_ws_frame.c: frame header codec, masking and Close payloads. */
#include <stdlib.h>

#include "core/common.h"
#include "test.h"
#include "ws/ws_frame.h"

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
    /* xorshift64*: deterministic, so failures reproduce. */
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

/* Parses every proper prefix of p[0..n) (each must be GW_AGAIN) and then the
 * whole; returns the final result. */
static int parse_all_prefixes(const uint8_t *p, size_t n, gw_ws_frame_hdr *h, uint16_t *cc, int *prefix_ok)
{
    *prefix_ok = 1;
    for (size_t k = 0; k < n; k++) {
        /* Copy to a heap buffer of exactly k bytes so ASan catches reads
         * past the prefix. */
        uint8_t *c = malloc(k ? k : 1);
        memcpy(c, p, k);
        gw_ws_frame_hdr tmp;
        uint16_t tc = 0;
        int r = gw_ws_frame_parse_header(c, k, &tmp, &tc);
        free(c);
        if (r != GW_AGAIN)
            *prefix_ok = 0;
    }
    uint8_t *c = malloc(n);
    memcpy(c, p, n);
    int r = gw_ws_frame_parse_header(c, n, h, cc);
    free(c);
    return r;
}

static void test_lengths(void)
{
    static const uint64_t lens[] = {0, 1, 125, 126, 127, 65535, 65536, (1ull << 32) + 1, (1ull << 63) - 1};
    static const size_t want_base[] = {2, 2, 2, 4, 4, 4, 10, 10, 10};
    static const uint8_t key[4] = {0x11, 0x22, 0x33, 0x44};
    for (size_t i = 0; i < GW_ARRAY_LEN(lens); i++) {
        for (int m = 0; m < 2; m++) {
            uint8_t buf[GW_WS_MAX_HEADER + 3];
            memset(buf, 0xAA, sizeof buf);
            size_t n = gw_ws_frame_encode_header(buf, 1, 0, GW_WS_OP_BINARY, lens[i], m ? key : NULL);
            is_int(n, want_base[i] + (m ? 4u : 0u), "encoded length for len %llu masked %d",
                   (unsigned long long)lens[i], m);
            gw_ws_frame_hdr h;
            uint16_t cc = 0;
            int prefix_ok;
            int r = parse_all_prefixes(buf, n, &h, &cc, &prefix_ok);
            ok(prefix_ok, "every prefix is GW_AGAIN (len %llu masked %d)", (unsigned long long)lens[i], m);
            is_int(r, (int)n, "parse returns header length (len %llu masked %d)", (unsigned long long)lens[i], m);
            is_int(h.hdr_len, n, "hdr_len");
            ok(h.len == lens[i], "payload length %llu round-trips", (unsigned long long)lens[i]);
            is_int(h.masked, m, "mask bit");
            is_int(h.fin, 1, "fin");
            is_int(h.opcode, GW_WS_OP_BINARY, "opcode");
            if (m)
                is_mem(h.mask, 4, key, 4, "masking key");
            /* Trailing payload bytes do not change the result. */
            r = gw_ws_frame_parse_header(buf, sizeof buf, &h, &cc);
            is_int(r, (int)n, "parse with payload bytes after the header");
        }
    }
    /* Exact wire bytes for the three forms. */
    uint8_t b[GW_WS_MAX_HEADER];
    size_t n = gw_ws_frame_encode_header(b, 1, 0, GW_WS_OP_TEXT, 5, NULL);
    is_mem(b, n, "\x81\x05", 2, "7-bit form bytes");
    n = gw_ws_frame_encode_header(b, 0, GW_WS_RSV1, GW_WS_OP_TEXT, 256, (const uint8_t *)"\x01\x02\x03\x04");
    is_mem(b, n, "\x41\xfe\x01\x00\x01\x02\x03\x04", 8, "16-bit form bytes, rsv1, masked, fin=0");
    n = gw_ws_frame_encode_header(b, 1, 0, GW_WS_OP_BINARY, (1ull << 32) + 1, NULL);
    is_mem(b, n, "\x82\x7f\x00\x00\x00\x01\x00\x00\x00\x01", 10, "64-bit form bytes");
}

static void expect_err(const uint8_t *p, size_t n, const char *what)
{
    gw_ws_frame_hdr h;
    uint16_t cc = 0;
    int r = gw_ws_frame_parse_header(p, n, &h, &cc);
    is_int(r, GW_ERR, "%s: GW_ERR", what);
    is_int(cc, GW_WS_CLOSE_PROTOCOL, "%s: close code 1002", what);
}

static void test_minimal_encoding(void)
{
    expect_err((const uint8_t *)"\x82\x7e\x00\x00", 4, "16-bit form holding 0");
    expect_err((const uint8_t *)"\x82\x7e\x00\x7d", 4, "16-bit form holding 125");
    expect_err((const uint8_t *)"\x82\x7f\x00\x00\x00\x00\x00\x00\x00\x05", 10, "64-bit form holding 5");
    expect_err((const uint8_t *)"\x82\x7f\x00\x00\x00\x00\x00\x00\xff\xff", 10, "64-bit form holding 65535");
    gw_ws_frame_hdr h;
    uint16_t cc;
    is_int(gw_ws_frame_parse_header((const uint8_t *)"\x82\x7e\x00\x7e", 4, &h, &cc), 4, "16-bit form holding 126");
    is_int(gw_ws_frame_parse_header((const uint8_t *)"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00", 10, &h, &cc), 10,
           "64-bit form holding 65536");
    /* Top bit of the 64-bit length. */
    expect_err((const uint8_t *)"\x82\x7f\x80\x00\x00\x00\x00\x00\x00\x00", 10, "64-bit length with top bit");
    expect_err((const uint8_t *)"\x82\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01\x02\x03\x04", 14,
               "masked 64-bit all ones");
    is_int(gw_ws_frame_parse_header((const uint8_t *)"\x82\x7f\x7f\xff\xff\xff\xff\xff\xff\xff", 10, &h, &cc), 10,
           "2^63-1 accepted");
    /* While the length is incomplete the answer is GW_AGAIN. */
    is_int(gw_ws_frame_parse_header((const uint8_t *)"\x82\x7f\x80\x00", 4, &h, &cc), GW_AGAIN,
           "partial 64-bit length: GW_AGAIN");
}

static void test_opcodes(void)
{
    for (unsigned op = 0; op < 16; op++) {
        int known = op <= 2 || (op >= 8 && op <= 10);
        uint8_t b[2] = {(uint8_t)(0x80 | op), 0x00};
        gw_ws_frame_hdr h;
        uint16_t cc = 0;
        int r = gw_ws_frame_parse_header(b, 2, &h, &cc);
        if (known) {
            is_int(r, 2, "opcode %u accepted", op);
            is_int(h.opcode, op, "opcode %u reported", op);
        } else {
            is_int(r, GW_ERR, "opcode %u refused", op);
            is_int(cc, 1002, "opcode %u close code", op);
            /* The first byte alone proves it. */
            is_int(gw_ws_frame_parse_header(b, 1, &h, &cc), GW_ERR, "opcode %u refused after 1 byte", op);
        }
    }
    /* RSV bits are reported, not judged. */
    for (unsigned rsv = 0; rsv < 8; rsv++) {
        uint8_t b[2] = {(uint8_t)(0x80 | rsv << 4 | 1), 0x03};
        gw_ws_frame_hdr h;
        uint16_t cc;
        is_int(gw_ws_frame_parse_header(b, 2, &h, &cc), 2, "rsv %u parsed", rsv);
        is_int(h.rsv, rsv, "rsv %u reported", rsv);
        uint8_t e[GW_WS_MAX_HEADER];
        gw_ws_frame_encode_header(e, 1, (int)rsv, 1, 3, NULL);
        is_int(e[0], b[0], "rsv %u encoded", rsv);
    }
    /* Non-FIN data frames are fine. */
    gw_ws_frame_hdr h;
    uint16_t cc;
    is_int(gw_ws_frame_parse_header((const uint8_t *)"\x01\x00", 2, &h, &cc), 2, "fragmented text start");
    is_int(h.fin, 0, "fin 0 reported");
    is_int(gw_ws_frame_parse_header((const uint8_t *)"\x00\x00", 2, &h, &cc), 2, "continuation fin 0");
}

static void test_control_frames(void)
{
    static const unsigned ops[] = {GW_WS_OP_CLOSE, GW_WS_OP_PING, GW_WS_OP_PONG};
    for (size_t i = 0; i < GW_ARRAY_LEN(ops); i++) {
        uint8_t b[10];
        gw_ws_frame_hdr h;
        uint16_t cc = 0;
        b[0] = (uint8_t)ops[i]; /* fin = 0 */
        b[1] = 0;
        expect_err(b, 2, "fragmented control frame");
        is_int(gw_ws_frame_parse_header(b, 1, &h, &cc), GW_ERR, "fragmented control frame refused after 1 byte");
        b[0] = (uint8_t)(0x80 | ops[i]);
        b[1] = 125;
        is_int(gw_ws_frame_parse_header(b, 2, &h, &cc), 2, "control frame of 125 bytes");
        b[1] = 126;
        b[2] = 0;
        b[3] = 126;
        expect_err(b, 4, "control frame of 126 bytes");
        expect_err(b, 2, "control frame with 16-bit length, seen at 2 bytes");
        b[1] = 127;
        expect_err(b, 2, "control frame with 64-bit length");
        b[1] = 0x80 | 125;
        is_int(gw_ws_frame_parse_header(b, 2, &h, &cc), GW_AGAIN, "masked control frame needs its key");
    }
}

/* Every prefix of a stream of several frames, parsed as a session would:
 * header, skip payload, next header. */
static void test_stream_split(void)
{
    uint8_t s[512];
    size_t n = 0;
    static const uint8_t key[4] = {0xde, 0xad, 0xbe, 0xef};
    static const uint64_t lens[] = {0, 3, 125, 200};
    for (size_t i = 0; i < GW_ARRAY_LEN(lens); i++) {
        n += gw_ws_frame_encode_header(s + n, (int)(i & 1), 0, i ? GW_WS_OP_CONT : GW_WS_OP_TEXT, lens[i],
                                       (i & 1) ? key : NULL);
        memset(s + n, 'x', (size_t)lens[i]);
        n += (size_t)lens[i];
    }
    for (size_t cut = 0; cut <= n; cut++) {
        /* Available bytes grow one at a time up to cut; count frames seen. */
        size_t pos = 0, frames = 0;
        int bad = 0;
        for (size_t avail = 0; avail <= cut; avail++) {
            for (;;) {
                gw_ws_frame_hdr h;
                uint16_t cc;
                int r = gw_ws_frame_parse_header(s + pos, avail - pos, &h, &cc);
                if (r == GW_AGAIN)
                    break;
                if (r < 0) {
                    bad = 1;
                    break;
                }
                if (avail - pos < (size_t)r + h.len)
                    break; /* payload not all here yet */
                pos += (size_t)r + (size_t)h.len;
                frames++;
            }
            if (bad)
                break;
        }
        size_t want = 0, q = 0;
        for (size_t i = 0; i < GW_ARRAY_LEN(lens); i++) {
            size_t hl = lens[i] < 126 ? 2 : 4;
            hl += (i & 1) ? 4 : 0;
            if (q + hl + lens[i] <= cut)
                want++;
            q += hl + (size_t)lens[i];
        }
        if (bad || frames != want) {
            ok(0, "stream cut at %zu: frames %zu want %zu", cut, frames, want);
            return;
        }
    }
    ok(1, "stream of 4 frames parsed byte by byte at every cut point (%zu)", n);
}

static void mask_ref(uint8_t *p, size_t n, const uint8_t m[4], uint64_t off)
{
    for (size_t i = 0; i < n; i++)
        p[i] ^= m[(off + i) % 4];
}

static void test_mask(void)
{
    uint8_t *src = malloc(4096 + 16), *a = malloc(4096 + 16), *b = malloc(4096 + 16);
    int mismatches = 0, cases = 0;
    for (int iter = 0; iter < 3000; iter++) {
        size_t n = iter < 600 ? (size_t)(iter % 300) : (size_t)(rnd() % 4096);
        size_t align = (size_t)(rnd() % 16);
        uint64_t off = iter % 8 == 7 ? (uint64_t)rnd() : (uint64_t)(iter % 8);
        uint8_t m[4];
        for (int i = 0; i < 4; i++)
            m[i] = (uint8_t)rnd();
        for (size_t i = 0; i < n; i++)
            src[i] = (uint8_t)rnd();
        memcpy(a + align, src, n);
        memcpy(b, src, n);
        gw_ws_mask(a + align, n, m, off);
        mask_ref(b, n, m, off);
        cases++;
        if (memcmp(a + align, b, n) != 0)
            mismatches++;
        /* In pieces: split at random points, offset carried along. */
        memcpy(a + align, src, n);
        size_t pos = 0;
        while (pos < n) {
            size_t k = (size_t)(rnd() % 40);
            if (k > n - pos)
                k = n - pos;
            /* k may be 0: an empty piece must be a no-op. */
            gw_ws_mask(a + align + pos, k, m, off + pos);
            pos += k;
        }
        cases++;
        if (memcmp(a + align, b, n) != 0)
            mismatches++;
        /* Masking twice restores the data. */
        gw_ws_mask(a + align, n, m, off);
        cases++;
        if (memcmp(a + align, src, n) != 0)
            mismatches++;
    }
    is_int(mismatches, 0, "gw_ws_mask equals the byte-wise reference in %d cases (all offsets, alignments)", cases);

    /* Exact small case: every offset 0..7 on every alignment 0..7, short lengths. */
    mismatches = 0;
    for (uint64_t off = 0; off < 8; off++)
        for (size_t al = 0; al < 8; al++)
            for (size_t n = 0; n < 70; n++) {
                static const uint8_t m[4] = {1, 2, 4, 8};
                for (size_t i = 0; i < n; i++)
                    a[al + i] = b[i] = (uint8_t)(i * 7);
                gw_ws_mask(a + al, n, m, off);
                mask_ref(b, n, m, off);
                if (memcmp(a + al, b, n) != 0)
                    mismatches++;
            }
    is_int(mismatches, 0, "exhaustive offsets x alignments x lengths 0..69");
    /* Bytes outside the range are untouched. */
    memset(a, 0, 64);
    gw_ws_mask(a + 3, 50, (const uint8_t *)"\xff\xff\xff\xff", 1);
    ok(a[2] == 0 && a[53] == 0 && a[3] == 0xff && a[52] == 0xff, "mask touches only p[0..n)");
    free(src);
    free(a);
    free(b);
}

/* gw_ws_mask_copy against the byte loop: every length 0..299, every key
 * phase (offset 0..3, and one past 4), source and destination each at every
 * alignment 0..7; the bytes around dst stay untouched and src is unchanged. */
static void test_mask_copy(void)
{
    uint8_t *src = malloc(300 + 16), *dst = malloc(300 + 32), *want = malloc(300);
    static const uint8_t m[4] = {0x3c, 0xa5, 0x01, 0xfe};
    int mismatches = 0, cases = 0, guard_hits = 0, src_changed = 0;
    for (size_t n = 0; n < 300; n++)
        for (uint64_t off = 0; off < 5; off++)
            for (size_t sa = 0; sa < 8; sa++)
                for (size_t da = 0; da < 8; da++) {
                    for (size_t i = 0; i < n; i++)
                        src[sa + i] = (uint8_t)(i * 37 + n + 11);
                    for (size_t i = 0; i < n; i++)
                        want[i] = (uint8_t)(src[sa + i] ^ m[(off + i) % 4]);
                    memset(dst, 0x5a, 300 + 32);
                    gw_ws_mask_copy(dst + 8 + da, src + sa, n, m, off);
                    cases++;
                    if (memcmp(dst + 8 + da, want, n) != 0)
                        mismatches++;
                    for (size_t i = 0; i < 8 + da; i++)
                        guard_hits += dst[i] != 0x5a;
                    for (size_t i = 8 + da + n; i < 300 + 32; i++)
                        guard_hits += dst[i] != 0x5a;
                    for (size_t i = 0; i < n; i++)
                        src_changed += src[sa + i] != (uint8_t)(i * 37 + n + 11);
                }
    is_int(mismatches, 0, "gw_ws_mask_copy equals the byte loop in %d cases (lengths 0..299, offsets, alignments)",
           cases);
    is_int(guard_hits, 0, "gw_ws_mask_copy writes only dst[0..n)");
    is_int(src_changed, 0, "gw_ws_mask_copy leaves src as it was");
    /* Random keys and long lengths, and agreement with gw_ws_mask in place. */
    uint8_t *big = malloc(5000), *a = malloc(5000), *b = malloc(5000);
    mismatches = 0;
    for (int iter = 0; iter < 500; iter++) {
        size_t n = (size_t)(rnd() % 4800);
        uint64_t off = (uint64_t)rnd();
        uint8_t k[4];
        for (int i = 0; i < 4; i++)
            k[i] = (uint8_t)rnd();
        for (size_t i = 0; i < n; i++)
            big[i] = (uint8_t)rnd();
        memcpy(b, big, n);
        gw_ws_mask(b, n, k, off);
        gw_ws_mask_copy(a + (size_t)(iter % 7), big, n, k, off);
        mismatches += memcmp(a + (size_t)(iter % 7), b, n) != 0;
    }
    is_int(mismatches, 0, "gw_ws_mask_copy equals gw_ws_mask in place (random keys, lengths to 4800)");
    free(big);
    free(a);
    free(b);
    free(src);
    free(dst);
    free(want);
}

static void test_close_codes(void)
{
    static const struct {
        unsigned code;
        int valid;
    } t[] = {{0, 0},     {999, 0},  {1000, 1}, {1001, 1}, {1002, 1}, {1003, 1}, {1004, 0}, {1005, 0},
             {1006, 0},  {1007, 1}, {1008, 1}, {1009, 1}, {1010, 1}, {1011, 1}, {1012, 1}, {1013, 1},
             {1014, 1},  {1015, 0}, {1016, 0}, {2000, 0}, {2999, 0}, {3000, 1}, {3999, 1}, {4000, 1},
             {4999, 1},  {5000, 0}, {65535, 0}};
    for (size_t i = 0; i < GW_ARRAY_LEN(t); i++) {
        is_int(gw_ws_close_code_valid(t[i].code), t[i].valid, "close code %u valid=%d", t[i].code, t[i].valid);
        uint8_t p[2] = {(uint8_t)(t[i].code >> 8), (uint8_t)t[i].code};
        uint16_t code = 0, cc = 0;
        const uint8_t *reason = NULL;
        size_t rl = 99;
        int r = gw_ws_close_parse(p, 2, &code, &reason, &rl, &cc);
        if (t[i].valid) {
            is_int(r, GW_OK, "close payload with %u accepted", t[i].code);
            is_int(code, t[i].code, "code reported");
            is_int(rl, 0, "empty reason");
        } else {
            is_int(r, GW_ERR, "close payload with %u refused", t[i].code);
            is_int(cc, 1002, "refused with 1002");
        }
    }
}

static void test_close_parse(void)
{
    uint16_t code = 0, cc = 0;
    const uint8_t *reason = NULL;
    size_t rl = 99;
    const uint8_t *empty = (const uint8_t *)"";
    is_int(gw_ws_close_parse(empty, 0, &code, &reason, &rl, &cc), GW_OK, "empty close payload");
    is_int(code, 1005, "empty payload means 1005");
    is_int(rl, 0, "no reason");
    is_int(gw_ws_close_parse((const uint8_t *)"\x03", 1, &code, &reason, &rl, &cc), GW_ERR, "1-byte payload");
    is_int(cc, 1002, "1-byte payload gives 1002");

    const uint8_t ok_p[] = "\x03\xe8" "bye \xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5";
    is_int(gw_ws_close_parse(ok_p, sizeof ok_p - 1, &code, &reason, &rl, &cc), GW_OK, "UTF-8 reason");
    is_int(code, 1000, "code 1000");
    is_mem(reason, rl, ok_p + 2, sizeof ok_p - 3, "reason points into the payload");

    static const char *bad[] = {"\x03\xe8\xff", ("\x03\xe8" "ab\xc0\xaf"), "\x03\xe8\xed\xa0\x80", "\x03\xe8\xce",
                                "\x03\xe8\xf4\x90\x80\x80"};
    for (size_t i = 0; i < GW_ARRAY_LEN(bad); i++) {
        cc = 0;
        is_int(gw_ws_close_parse((const uint8_t *)bad[i], strlen(bad[i]), &code, &reason, &rl, &cc), GW_ERR,
               "invalid UTF-8 reason %zu refused", i);
        is_int(cc, 1007, "invalid UTF-8 reason %zu gives 1007", i);
    }
    /* Invalid code wins over invalid reason: 1002. */
    cc = 0;
    is_int(gw_ws_close_parse((const uint8_t *)"\x03\xed\xff", 3, &code, &reason, &rl, &cc), GW_ERR,
           "1005 on the wire");
    is_int(cc, 1002, "1005 on the wire gives 1002");
    uint8_t big[126];
    memset(big, 'a', sizeof big);
    big[0] = 0x03;
    big[1] = 0xe8;
    is_int(gw_ws_close_parse(big, 125, &code, &reason, &rl, &cc), GW_OK, "125-byte payload");
    is_int(gw_ws_close_parse(big, 126, &code, &reason, &rl, &cc), GW_ERR, "126-byte payload refused");
}

static void test_close_build(void)
{
    uint8_t out[125 + 8];
    memset(out, 0xAA, sizeof out);
    is_int(gw_ws_close_build(out, 0, "ignored"), 0, "code 0 gives an empty payload");
    is_int(gw_ws_close_build(out, 1000, NULL), 2, "no reason");
    is_mem(out, 2, "\x03\xe8", 2, "code in network order");
    size_t n = gw_ws_close_build(out, 4001, "bye");
    is_mem(out, n, "\x0f\xa1" "bye", 5, "code 4001 with reason");

    char reason[400];
    static const struct {
        const char *unit;
        size_t want_reason;
    } t[] = {{"a", 123}, {"\xc3\xa9", 122}, {"\xe2\x82\xac", 123}, {"\xf0\x9f\x98\x80", 120}, {"a\xc3\xa9", 123},
             {"ab\xe2\x82\xac", 122}};
    for (size_t i = 0; i < GW_ARRAY_LEN(t); i++) {
        reason[0] = '\0';
        while (strlen(reason) + strlen(t[i].unit) < sizeof reason)
            strcat(reason, t[i].unit);
        memset(out, 0xAA, sizeof out);
        n = gw_ws_close_build(out, 1001, reason);
        is_int(n, 2 + t[i].want_reason, "reason of units '%zu' truncated at a boundary", i);
        ok(out[125] == 0xAA, "nothing written past 125 bytes");
        is_mem(out + 2, n - 2, reason, n - 2, "kept prefix is the reason's prefix");
        uint16_t code, cc;
        const uint8_t *r;
        size_t rl;
        is_int(gw_ws_close_parse(out, n, &code, &r, &rl, &cc), GW_OK, "built payload parses");
    }
    /* Invalid UTF-8 inside the reason stops the copy before it. */
    n = gw_ws_close_build(out, 1000, "ok\xff" "more");
    is_int(n, 4, "reason cut before an invalid byte");
    n = gw_ws_close_build(out, 1000, "ok\xce");
    is_int(n, 4, "reason cut before a dangling lead byte");
}

int main(void)
{
    TEST_RUN(test_lengths);
    TEST_RUN(test_minimal_encoding);
    TEST_RUN(test_opcodes);
    TEST_RUN(test_control_frames);
    TEST_RUN(test_stream_split);
    TEST_RUN(test_mask);
    TEST_RUN(test_mask_copy);
    TEST_RUN(test_close_codes);
    TEST_RUN(test_close_parse);
    TEST_RUN(test_close_build);
    return test_done();
}

/* test_utf8.c: incremental fail-fast UTF-8 validation. */
#include <stdlib.h>

#include "core/common.h"
#include "test.h"
#include "ws/utf8.h"

static uint64_t rng_state = 0x243f6a8885a308d3ull;
static uint64_t rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

/* Reference: a deliberately different formulation from the DFA. For a
 * partial sequence it tracks the range of code points still reachable and
 * fails as soon as no completion can be valid (fail fast): the range lies
 * wholly above U+10FFFF, wholly below the sequence length's minimum
 * (overlong), or wholly inside the surrogates. Returns the index of the byte
 * that makes the input invalid, or -1 if none; *complete tells whether the
 * input ends on a boundary. */
static long ref_check(const uint8_t *p, size_t n, int *complete)
{
    uint32_t cp = 0;
    int need = 0, len = 0;
    for (size_t i = 0; i < n; i++) {
        uint8_t b = p[i];
        if (need == 0) {
            if (b < 0x80)
                continue;
            if ((b & 0xe0) == 0xc0) {
                len = 2;
                cp = b & 0x1fu;
            } else if ((b & 0xf0) == 0xe0) {
                len = 3;
                cp = b & 0x0fu;
            } else if ((b & 0xf8) == 0xf0) {
                len = 4;
                cp = b & 0x07u;
            } else {
                return (long)i; /* continuation byte or F8..FF */
            }
            need = len - 1;
        } else {
            if ((b & 0xc0) != 0x80)
                return (long)i;
            cp = cp << 6 | (b & 0x3fu);
            need--;
        }
        uint32_t lo = cp << (6 * need), hi = lo | ((1u << (6 * need)) - 1);
        uint32_t min = len == 2 ? 0x80 : len == 3 ? 0x800 : 0x10000;
        if (lo > 0x10ffff || hi < min || (lo >= 0xd800 && hi <= 0xdfff))
            return (long)i;
    }
    *complete = need == 0;
    return -1;
}

/* Feeds one byte at a time; returns the index of the first GW_ERR or -1. */
static long fail_pos_bytewise(const uint8_t *p, size_t n, int *complete)
{
    gw_utf8 v;
    gw_utf8_init(&v);
    for (size_t i = 0; i < n; i++)
        if (gw_utf8_feed(&v, p + i, 1) != GW_OK)
            return (long)i;
    *complete = gw_utf8_complete(&v);
    return -1;
}

/* Whole-buffer result, fed from an exact-size heap copy (ASan guard). */
static int valid_heap(const uint8_t *p, size_t n)
{
    uint8_t *c = malloc(n ? n : 1);
    memcpy(c, p, n);
    int r = gw_utf8_valid(c, n);
    free(c);
    return r;
}

/* Feeds in two pieces split at every point; returns 1 when every split
 * agrees with want_valid. */
static int all_splits_agree(const uint8_t *p, size_t n, int want_valid)
{
    for (size_t cut = 0; cut <= n; cut++) {
        gw_utf8 v;
        gw_utf8_init(&v);
        int r = gw_utf8_feed(&v, p, cut);
        if (r == GW_OK)
            r = gw_utf8_feed(&v, p + cut, n - cut);
        int valid = r == GW_OK && gw_utf8_complete(&v);
        if (valid != want_valid)
            return 0;
    }
    return 1;
}

static size_t enc(uint8_t *o, uint32_t cp)
{
    if (cp < 0x80) {
        o[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (uint8_t)(0xc0 | cp >> 6);
        o[1] = (uint8_t)(0x80 | (cp & 0x3f));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (uint8_t)(0xe0 | cp >> 12);
        o[1] = (uint8_t)(0x80 | (cp >> 6 & 0x3f));
        o[2] = (uint8_t)(0x80 | (cp & 0x3f));
        return 3;
    }
    o[0] = (uint8_t)(0xf0 | cp >> 18);
    o[1] = (uint8_t)(0x80 | (cp >> 12 & 0x3f));
    o[2] = (uint8_t)(0x80 | (cp >> 6 & 0x3f));
    o[3] = (uint8_t)(0x80 | (cp & 0x3f));
    return 4;
}

/* Autobahn 6.2-6.8 style: valid text, boundary code points. */
static void test_valid(void)
{
    static const char *t[] = {
        "",
        "Hello-\xc2\xb5@\xc3\x9f\xc3\xb6\xc3\xa4\xc3\xbc\xc3\xa0\xc3\xa1-UTF-8!!", /* 6.2 */
        "\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5",                          /* 6.5.1 kosme */
        "\xf0\x9f\x98\x80 emoji",
    };
    for (size_t i = 0; i < GW_ARRAY_LEN(t); i++) {
        size_t n = strlen(t[i]);
        ok(valid_heap((const uint8_t *)t[i], n), "valid text %zu", i);
        ok(all_splits_agree((const uint8_t *)t[i], n, 1), "valid text %zu at every split", i);
    }
    /* 6.6 / 6.7 / 6.8 boundary code points. */
    static const uint32_t cps[] = {0x0,    0x7f,   0x80,    0x7ff,   0x800,   0xd7ff,   0xe000,  0xfffd,
                                   0xfffe, 0xffff, 0xfeff, 0x10000, 0x3ffff, 0x40000, 0xfffff, 0x10ffff};
    for (size_t i = 0; i < GW_ARRAY_LEN(cps); i++) {
        uint8_t b[4];
        size_t n = enc(b, cps[i]);
        ok(valid_heap(b, n), "U+%04X valid", (unsigned)cps[i]);
        ok(all_splits_agree(b, n, 1), "U+%04X valid at every split", (unsigned)cps[i]);
        /* Truncated: valid prefix, not complete. */
        if (n > 1) {
            gw_utf8 v;
            gw_utf8_init(&v);
            is_int(gw_utf8_feed(&v, b, n - 1), GW_OK, "U+%04X truncated is a valid prefix", (unsigned)cps[i]);
            ok(!gw_utf8_complete(&v), "U+%04X truncated is not complete", (unsigned)cps[i]);
            ok(!gw_utf8_valid(b, n - 1), "U+%04X truncated is not valid", (unsigned)cps[i]);
        }
    }
    /* Every scalar value, encoded, validates; surrogates encoded naively do not. */
    int bad = 0;
    for (uint32_t cp = 0; cp <= 0x10ffff; cp++) {
        uint8_t b[4];
        size_t n = enc(b, cp);
        int want = !(cp >= 0xd800 && cp <= 0xdfff);
        if (gw_utf8_valid(b, n) != want)
            bad++;
    }
    is_int(bad, 0, "all 0x110000 code points: scalars valid, surrogates invalid");
}

/* Each invalid case with the index of the byte at which it must fail. */
static const struct {
    const char *s;
    size_t n;
    long fail_at;
    const char *what;
} bad_cases[] = {
    {"\x80", 1, 0, "lone continuation 80"},
    {"\xbf", 1, 0, "lone continuation BF"},
    {"a\x80\xbf", 3, 1, "continuations after ASCII"},
    {"\xc0\x80", 2, 0, "C0 refused at once"},
    {"\xc1\xbf", 2, 0, "C1 refused at once"},
    {"\xf5\x80\x80\x80", 4, 0, "F5 refused at once"},
    {"\xf8\x88\x80\x80\x80", 5, 0, "5-byte form F8"},
    {"\xfc\x84\x80\x80\x80\x80", 6, 0, "6-byte form FC"},
    {"\xfe", 1, 0, "FE"},
    {"\xff", 1, 0, "FF"},
    {"\xe0\x80\xaf", 3, 1, "overlong 3-byte E0 80"},
    {"\xe0\x9f\xbf", 3, 1, "overlong U+07FF in 3 bytes"},
    {"\xf0\x80\x80\xaf", 4, 1, "overlong 4-byte F0 80"},
    {"\xf0\x8f\xbf\xbf", 4, 1, "overlong U+FFFF in 4 bytes"},
    {"\xed\xa0\x80", 3, 1, "surrogate U+D800"},
    {"\xed\xad\xbf", 3, 1, "surrogate U+DB7F"},
    {"\xed\xbf\xbf", 3, 1, "surrogate U+DFFF"},
    {"\xed\xa0\x80\xed\xb0\x80", 6, 1, "surrogate pair"},
    {"\xf4\x90\x80\x80", 4, 1, "U+110000"},
    {"\xf7\xbf\xbf\xbf", 4, 0, "U+1FFFFF"},
    {"\xc2\x41", 2, 1, "2-byte lead then ASCII"},
    {"\xe1\x80\x41", 3, 2, "3-byte lead, cont, then ASCII"},
    {"\xf1\x80\x80\xc2", 4, 3, "4-byte cut by a new lead"},
    {"\xc2\xc2", 2, 1, "lead after lead"},
    {"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4\x90\x80\x80\x65\x64\x69\x74\x65\x64", 21, 12,
     "Autobahn 6.4.1 fail fast at F4 90"},
    {"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80\x65\x64\x69\x74\x65\x64", 20, 12,
     "Autobahn 6.4.3-like surrogate at ED A0"},
    {"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\x80\x65\x64\x69\x74\x65\x64", 18, 11,
     "Autobahn 6.4.4-like lone continuation"},
    {"0123456789abcdef0123456789abcdef0123456789\xff", 43, 42, "invalid after a long ASCII run"},
};

static void test_invalid(void)
{
    for (size_t i = 0; i < GW_ARRAY_LEN(bad_cases); i++) {
        const uint8_t *p = (const uint8_t *)bad_cases[i].s;
        size_t n = bad_cases[i].n;
        int complete = 0;
        ok(!valid_heap(p, n), "%s: invalid", bad_cases[i].what);
        is_int(fail_pos_bytewise(p, n, &complete), bad_cases[i].fail_at, "%s: fails at byte %ld", bad_cases[i].what,
               bad_cases[i].fail_at);
        is_int(ref_check(p, n, &complete), bad_cases[i].fail_at, "%s: reference agrees", bad_cases[i].what);
        ok(all_splits_agree(p, n, 0), "%s: invalid at every split", bad_cases[i].what);
        /* Fed as a whole prefix up to and including the bad byte: error. */
        gw_utf8 v;
        gw_utf8_init(&v);
        is_int(gw_utf8_feed(&v, p, (size_t)bad_cases[i].fail_at + 1), GW_ERR, "%s: prefix through bad byte",
               bad_cases[i].what);
        /* Sticky: later valid input does not clear the error. */
        is_int(gw_utf8_feed(&v, (const uint8_t *)"abc", 3), GW_ERR, "%s: error is sticky", bad_cases[i].what);
        /* A prefix ending just before it is still fine. */
        gw_utf8_init(&v);
        is_int(gw_utf8_feed(&v, p, (size_t)bad_cases[i].fail_at), GW_OK, "%s: prefix before bad byte OK",
               bad_cases[i].what);
    }
    /* Truncated sequences at the end of a message (Autobahn 6.3/6.14). */
    static const char *trunc[] = {"\xc2", "\xe0\xa0", "\xe1", "\xf0\x90\x80", "\xf4\x8f\xbf", "kosme\xce"};
    for (size_t i = 0; i < GW_ARRAY_LEN(trunc); i++) {
        size_t n = strlen(trunc[i]);
        gw_utf8 v;
        gw_utf8_init(&v);
        is_int(gw_utf8_feed(&v, (const uint8_t *)trunc[i], n), GW_OK, "truncated %zu is a valid prefix", i);
        ok(!gw_utf8_complete(&v), "truncated %zu is incomplete", i);
        ok(!gw_utf8_valid((const uint8_t *)trunc[i], n), "truncated %zu is not valid", i);
    }
}

/* Every single byte and every 2-byte lead/continuation pair against the
 * reference: this pins down each fail-fast decision of the DFA. */
static void test_exhaustive_pairs(void)
{
    int mism = 0;
    for (unsigned a = 0; a < 256; a++) {
        for (unsigned b = 0; b < 256; b++) {
            uint8_t s[2] = {(uint8_t)a, (uint8_t)b};
            int c1 = 0, c2 = 0;
            long r = ref_check(s, 2, &c1), g = fail_pos_bytewise(s, 2, &c2);
            if (r != g || (r < 0 && c1 != c2))
                mism++;
        }
    }
    is_int(mism, 0, "all 65536 two-byte inputs: fail position and completeness match the reference");
    mism = 0;
    for (unsigned a = 0xe0; a < 0x100; a++)
        for (unsigned b = 0x80; b < 0xc0; b++)
            for (unsigned c = 0; c < 256; c++) {
                uint8_t s[3] = {(uint8_t)a, (uint8_t)b, (uint8_t)c};
                int c1 = 0, c2 = 0;
                long r = ref_check(s, 3, &c1), g = fail_pos_bytewise(s, 3, &c2);
                if (r != g || (r < 0 && c1 != c2))
                    mism++;
            }
    is_int(mism, 0, "all 3-byte inputs with a 3/4-byte lead and a continuation match the reference");
}

/* Random inputs: mostly well-formed code points with random corruption, at
 * random lengths and alignments, fed in random pieces. */
static void test_random(void)
{
    uint8_t *buf = malloc(2048 + 8);
    int mism = 0, valid_seen = 0, invalid_seen = 0;
    for (int iter = 0; iter < 20000; iter++) {
        size_t align = (size_t)(rnd() % 8);
        uint8_t *p = buf + align;
        size_t n = 0, target = (size_t)(rnd() % (iter % 10 == 0 ? 2000 : 64));
        int mode = (int)(rnd() % 4);
        while (n + 4 <= target) {
            uint32_t cp;
            uint64_t r = rnd();
            switch (mode) {
            case 0: /* ASCII heavy */
                cp = r % 100 < 95 ? (uint32_t)(r >> 8) % 0x80 : (uint32_t)(r >> 8) % 0x110000;
                break;
            case 1: /* any code point class */
                cp = r % 4 == 0 ? (uint32_t)(r >> 8) % 0x80
                     : r % 4 == 1 ? 0x80 + (uint32_t)(r >> 8) % 0x780
                     : r % 4 == 2 ? 0x800 + (uint32_t)(r >> 8) % 0xf800
                                  : 0x10000 + (uint32_t)(r >> 8) % 0x100000;
                break;
            default:
                cp = (uint32_t)(r >> 8) % 0x110000;
                break;
            }
            if (cp >= 0xd800 && cp <= 0xdfff && mode != 3)
                cp = 'x';
            n += enc(p + n, cp);
        }
        /* Corrupt a few bytes in half of the cases. */
        if (n && rnd() % 2) {
            int k = 1 + (int)(rnd() % 3);
            for (int j = 0; j < k; j++)
                p[rnd() % n] = (uint8_t)rnd();
        }
        if (n && rnd() % 8 == 0)
            n -= 1 + (size_t)(rnd() % GW_MIN(n, 3)); /* truncate */
        int rc = 0, gc = 0;
        long r = ref_check(p, n, &rc);
        int want = r < 0 && rc;
        valid_seen += want;
        invalid_seen += !want;
        if (gw_utf8_valid(p, n) != want)
            mism++;
        /* Random pieces: the first error must be reported on the piece that
         * holds the bad byte. */
        gw_utf8 v;
        gw_utf8_init(&v);
        size_t pos = 0;
        long got = -1;
        while (pos < n) {
            size_t k = 1 + (size_t)(rnd() % 37);
            if (k > n - pos)
                k = n - pos;
            if (gw_utf8_feed(&v, p + pos, k) != GW_OK) {
                got = (long)pos;
                if (r < (long)pos || r >= (long)(pos + k))
                    mism++;
                break;
            }
            pos += k;
        }
        if (got < 0) {
            gc = gw_utf8_complete(&v);
            if (r >= 0 || gc != rc)
                mism++;
        }
    }
    is_int(mism, 0, "20000 random inputs agree with the reference (%d valid, %d invalid)", valid_seen, invalid_seen);
    ok(valid_seen > 2000 && invalid_seen > 2000, "random inputs cover both outcomes");
    free(buf);
}

/* The ASCII fast path: one non-ASCII sequence at every position and
 * alignment of a long ASCII buffer. */
static void test_fast_path(void)
{
    uint8_t *buf = malloc(200 + 8);
    int mism = 0;
    static const struct {
        const char *s;
        int valid;
    } ins[] = {{"\xc3\xa9", 1}, {"\xe2\x82\xac", 1}, {"\xf0\x9f\x98\x80", 1}, {"\xff", 0},
               {"\xed\xa0\x80", 0}, {"\x80", 0}, {"\xc3", 0}};
    for (size_t al = 0; al < 8; al++)
        for (size_t at = 0; at < 100; at++)
            for (size_t k = 0; k < GW_ARRAY_LEN(ins); k++) {
                uint8_t *p = buf + al;
                size_t il = strlen(ins[k].s);
                memset(p, 'a', 120);
                memcpy(p + at, ins[k].s, il);
                size_t n = 120;
                /* A truncated lead must sit at the very end to be "truncated". */
                if (ins[k].s[0] == '\xc3' && il == 1)
                    n = at + 1;
                int want = ins[k].valid;
                if (gw_utf8_valid(p, n) != want)
                    mism++;
                if (!all_splits_agree(p, n, want))
                    mism++;
            }
    is_int(mism, 0, "non-ASCII at every position/alignment of an ASCII run");
    free(buf);
}

int main(void)
{
    TEST_RUN(test_valid);
    TEST_RUN(test_invalid);
    TEST_RUN(test_exhaustive_pairs);
    TEST_RUN(test_random);
    TEST_RUN(test_fast_path);
    return test_done();
}

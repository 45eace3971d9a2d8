/* test_pmd.c: permessage-deflate negotiation and codec. */
#include <stdlib.h>
#include <zlib.h>

#include "core/common.h"
#include "test.h"
#include "ws/pmd.h"

static uint64_t rng_state = 0x13198a2e03707344ull;
static uint64_t rnd(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 0x2545f4914f6cdd1dull;
}

#define NO (-1)
static const struct {
    const char *offers;
    int want_nct;
    int accepted;
    const char *resp;
    int snct, cnct, smwb;
} server_cases[] = {
    {"permessage-deflate", 0, 1, "permessage-deflate", 0, 0, 15},
    {"permessage-deflate", 1, 1, "permessage-deflate; server_no_context_takeover", 1, 0, 15},
    {"PerMessage-Deflate", 0, 1, "permessage-deflate", 0, 0, 15},
    {"permessage-deflate; client_max_window_bits", 0, 1, "permessage-deflate", 0, 0, 15},
    {"permessage-deflate; client_max_window_bits=10", 0, 1, "permessage-deflate", 0, 0, 15},
    {"permessage-deflate; client_max_window_bits=\"12\"", 0, 1, "permessage-deflate", 0, 0, 15},
    {"permessage-deflate; server_no_context_takeover", 0, 1, "permessage-deflate; server_no_context_takeover", 1, 0,
     15},
    {"permessage-deflate; client_no_context_takeover", 0, 1, "permessage-deflate; client_no_context_takeover", 0, 1,
     15},
    {"permessage-deflate;server_no_context_takeover;client_no_context_takeover", 0, 1,
     "permessage-deflate; server_no_context_takeover; client_no_context_takeover", 1, 1, 15},
    {"permessage-deflate; server_max_window_bits=10", 0, 1, "permessage-deflate; server_max_window_bits=10", 0, 0, 10},
    {"permessage-deflate; server_max_window_bits=9", 1, 1,
     "permessage-deflate; server_no_context_takeover; server_max_window_bits=9", 1, 0, 9},
    {"permessage-deflate; server_max_window_bits=15", 0, 1, "permessage-deflate; server_max_window_bits=15", 0, 0, 15},
    {"permessage-deflate; server_max_window_bits = \"11\" ", 0, 1, "permessage-deflate; server_max_window_bits=11", 0,
     0, 11},
    {"permessage-deflate; server_max_window_bits=\"1\\1\"", 0, 1, "permessage-deflate; server_max_window_bits=11", 0,
     0, 11},
    {" \t permessage-deflate \t ; \t client_max_window_bits \t ", 0, 1, "permessage-deflate", 0, 0, 15},
    /* Not for us, or nothing at all. */
    {"", 0, 0, "", 0, 0, 15},
    {"x-webkit-deflate-frame", 0, 0, "", 0, 0, 15},
    {"permessage-deflate-x", 0, 0, "", 0, 0, 15},
    {", ,", 0, 0, "", 0, 0, 15},
    /* Invalid offers, alone. */
    {"permessage-deflate; server_max_window_bits=8", 0, 0, "", 0, 0, 15},
    {"permessage-deflate; server_max_window_bits=7", 0, 0, "", 0, 0, 15},
    {"permessage-deflate; server_max_window_bits=16", 0, 0, "", 0, 0, 15},
    {"permessage-deflate; server_max_window_bits=010", 0, 0, "", 0, 0, 15},
    {"permessage-deflate; server_max_window_bits=1a", 0, 0, "", 0, 0, 15},
    {"permessage-deflate; server_max_window_bits=", 0, 0, "", 0, 0, 15},
    {"permessage-deflate; server_max_window_bits", 0, 0, "", 0, 0, 15},
    {"permessage-deflate; server_max_window_bits=\"\"", 0, 0, "", 0, 0, 15},
    {"permessage-deflate; server_max_window_bits=\"10", 0, 0, "", 0, 0, 15},
    {"permessage-deflate; server_max_window_bits=100000000000000000000", 0, 0, "", 0, 0, 15},
    {"permessage-deflate; client_max_window_bits=8x", 0, 0, "", 0, 0, 15},
    {"permessage-deflate; client_max_window_bits=16", 0, 0, "", 0, 0, 15},
    {"permessage-deflate; client_max_window_bits=\"7\"", 0, 0, "", 0, 0, 15},
    {"permessage-deflate; server_no_context_takeover=1", 0, 0, "", 0, 0, 15},
    {"permessage-deflate; client_no_context_takeover=\"\"", 0, 0, "", 0, 0, 15},
    {"permessage-deflate; server_no_context_takeover; server_no_context_takeover", 0, 0, "", 0, 0, 15},
    {"permessage-deflate; client_max_window_bits; client_max_window_bits=10", 0, 0, "", 0, 0, 15},
    {"permessage-deflate; server_max_window_bits=10; server_max_window_bits=10", 0, 0, "", 0, 0, 15},
    {"permessage-deflate; foo", 0, 0, "", 0, 0, 15},
    {"permessage-deflate; foo=bar", 0, 0, "", 0, 0, 15},
    {"permessage-deflate;", 0, 0, "", 0, 0, 15},
    {"permessage-deflate; ;", 0, 0, "", 0, 0, 15},
    {"permessage-deflate x", 0, 0, "", 0, 0, 15},
    {"permessage-deflate; a;b;c;d;e;f;g;h;i;j", 0, 0, "", 0, 0, 15},
    /* Fallback to a later offer. */
    {"permessage-deflate; server_max_window_bits=8, permessage-deflate", 0, 1, "permessage-deflate", 0, 0, 15},
    {"permessage-deflate; foo, permessage-deflate; client_no_context_takeover", 0, 1,
     "permessage-deflate; client_no_context_takeover", 0, 1, 15},
    {"permessage-deflate; x=\"a,b\", permessage-deflate; server_max_window_bits=12", 0, 1,
     "permessage-deflate; server_max_window_bits=12", 0, 0, 12},
    {"permessage-deflate; x=\"a,b\\\"c,\", permessage-deflate; server_max_window_bits=13", 0, 1,
     "permessage-deflate; server_max_window_bits=13", 0, 0, 13},
    {"foo; bar=1, permessage-deflate; server_max_window_bits=10; client_max_window_bits, permessage-deflate", 0, 1,
     "permessage-deflate; server_max_window_bits=10", 0, 0, 10},
    {"permessage-deflate; server_max_window_bits=9, permessage-deflate; server_max_window_bits=10", 0, 1,
     "permessage-deflate; server_max_window_bits=9", 0, 0, 9},
    {"@@@, permessage-deflate", 0, 1, "permessage-deflate", 0, 0, 15},
    {"permessage-deflate;;, permessage-deflate; server_no_context_takeover", 0, 1,
     "permessage-deflate; server_no_context_takeover", 1, 0, 15},
    {"permessage-deflate; client_max_window_bits=8, permessage-deflate; server_max_window_bits=8", 0, 1,
     "permessage-deflate", 0, 0, 15},
};

static void test_negotiate_server(void)
{
    for (size_t i = 0; i < GW_ARRAY_LEN(server_cases); i++) {
        char resp[256];
        gw_pmd_params p;
        memset(resp, 'Z', sizeof resp);
        const char *o = server_cases[i].offers;
        int r = gw_pmd_negotiate_server(gw_str_make(o, strlen(o)), server_cases[i].want_nct, &p, resp, sizeof resp);
        is_int(r, server_cases[i].accepted, "[%s] accepted", o);
        if (r == 1) {
            is_str(resp, server_cases[i].resp, "[%s] response", o);
            is_int(p.enabled, 1, "[%s] enabled", o);
            is_int(p.server_no_context_takeover, server_cases[i].snct, "[%s] server_no_context_takeover", o);
            is_int(p.client_no_context_takeover, server_cases[i].cnct, "[%s] client_no_context_takeover", o);
            is_int(p.server_max_window_bits, server_cases[i].smwb, "[%s] server_max_window_bits", o);
            is_int(p.client_max_window_bits, 15, "[%s] client_max_window_bits", o);
        } else {
            is_int(p.enabled, 0, "[%s] not enabled", o);
            is_str(resp, "", "[%s] empty response", o);
        }
    }
    /* The offer string is a view, not NUL-terminated: bytes after n are ignored. */
    const char *o = "permessage-deflate; server_max_window_bits=10XYZ";
    char resp[128];
    gw_pmd_params p;
    is_int(gw_pmd_negotiate_server(gw_str_make(o, strlen(o) - 3), 0, &p, resp, sizeof resp), 1, "view length honoured");
    is_int(p.server_max_window_bits, 10, "value read up to the view end");
    /* Response buffer too small: declined, not truncated. */
    is_int(gw_pmd_negotiate_server(GW_STRLIT("permessage-deflate; server_no_context_takeover"), 0, &p, resp, 20), 0,
           "small response buffer declines");
    is_str(resp, "", "small response buffer left empty");
}

static const struct {
    const char *resp;
    int r;
    int snct, cnct, smwb, cmwb;
} client_cases[] = {
    {"", 0, 0, 0, 15, 15},
    {"   ", 0, 0, 0, 15, 15},
    {"permessage-deflate", 1, 0, 0, 15, 15},
    {"permessage-deflate; server_no_context_takeover", 1, 1, 0, 15, 15},
    {"permessage-deflate; client_no_context_takeover", 1, 0, 1, 15, 15},
    {"permessage-deflate; client_max_window_bits=10", 1, 0, 0, 15, 10},
    {"permessage-deflate; client_max_window_bits=\"9\"", 1, 0, 0, 15, 9},
    {"permessage-deflate; server_max_window_bits=12; client_no_context_takeover", 1, 0, 1, 12, 15},
    {"permessage-deflate; server_max_window_bits=8", 1, 0, 0, 8, 15},
    {"permessage-deflate; client_max_window_bits=8", GW_ERR, 0, 0, 15, 15},
    {"permessage-deflate; client_max_window_bits", GW_ERR, 0, 0, 15, 15},
    {"permessage-deflate; client_max_window_bits=16", GW_ERR, 0, 0, 15, 15},
    {"permessage-deflate; server_max_window_bits", GW_ERR, 0, 0, 15, 15},
    {"permessage-deflate; server_no_context_takeover; server_no_context_takeover", GW_ERR, 0, 0, 15, 15},
    {"permessage-deflate; foo", GW_ERR, 0, 0, 15, 15},
    {"permessage-deflate, permessage-deflate", GW_ERR, 0, 0, 15, 15},
    {"x-other", GW_ERR, 0, 0, 15, 15},
    {"permessage-deflate, x-other", GW_ERR, 0, 0, 15, 15},
    {"permessage-deflate; server_max_window_bits=\"10", GW_ERR, 0, 0, 15, 15},
    {"permessage-deflate;", GW_ERR, 0, 0, 15, 15},
};

static void test_client_accept(void)
{
    is_str(gw_pmd_client_offer(), "permessage-deflate; client_max_window_bits", "client offer");
    for (size_t i = 0; i < GW_ARRAY_LEN(client_cases); i++) {
        gw_pmd_params p;
        const char *s = client_cases[i].resp;
        int r = gw_pmd_client_accept(gw_str_make(s, strlen(s)), &p);
        is_int(r, client_cases[i].r, "client accept [%s]", s);
        if (r == 1) {
            is_int(p.enabled, 1, "[%s] enabled", s);
            is_int(p.server_no_context_takeover, client_cases[i].snct, "[%s] snct", s);
            is_int(p.client_no_context_takeover, client_cases[i].cnct, "[%s] cnct", s);
            is_int(p.server_max_window_bits, client_cases[i].smwb, "[%s] smwb", s);
            is_int(p.client_max_window_bits, client_cases[i].cmwb, "[%s] cmwb", s);
        }
    }
    /* What our own server answers, our client accepts with the same meaning. */
    for (size_t i = 0; i < GW_ARRAY_LEN(server_cases); i++) {
        if (!server_cases[i].accepted)
            continue;
        char resp[256];
        gw_pmd_params sp, cp;
        const char *o = server_cases[i].offers;
        gw_pmd_negotiate_server(gw_str_make(o, strlen(o)), server_cases[i].want_nct, &sp, resp, sizeof resp);
        int r = gw_pmd_client_accept(gw_str_make(resp, strlen(resp)), &cp);
        ok(r == 1 && memcmp(&sp, &cp, sizeof sp) == 0, "client reads server response [%.150s] identically", resp);
    }
}

/* ------------------------------------------------------------------ */

static const uint8_t *inflate_ok(gw_pmd *d, const void *in, size_t n, gw_buf *out, size_t max)
{
    uint16_t cc = 0;
    out->len = 0;
    out->head = 0;
    if (gw_pmd_inflate(d, in, n, out, max, &cc) != GW_OK)
        return NULL;
    return out->data ? gw_buf_head(out) : (const uint8_t *)"";
}

static void test_rfc_examples(void)
{
    gw_pmd_params p = {1, 0, 0, 15, 15};
    gw_pmd *d = gw_pmd_new(&p, 0);
    gw_buf out = {0};
    const uint8_t *r;

    /* 7.2.3.1: a message compressed alone. */
    r = inflate_ok(d, "\xf2\x48\xcd\xc9\xc9\x07\x00", 7, &out, 1000);
    ok(r != NULL, "7.2.3.1 inflates");
    if (r)
        is_mem(r, out.len, "Hello", 5, "7.2.3.1 is Hello");
    /* 7.2.3.2: the second message uses the shared window. */
    r = inflate_ok(d, "\xf2\x00\x11\x00\x00", 5, &out, 1000);
    ok(r != NULL, "7.2.3.2 second message inflates with context takeover");
    if (r)
        is_mem(r, out.len, "Hello", 5, "7.2.3.2 second message is Hello");
    gw_pmd_free(d);

    /* 7.2.3.3: a BFINAL block followed by a padding byte; then the stream
     * restarts for the next message. */
    d = gw_pmd_new(&p, 0);
    for (int i = 0; i < 2; i++) {
        r = inflate_ok(d, "\xf3\x48\xcd\xc9\xc9\x07\x00\x00", 8, &out, 1000);
        ok(r != NULL, "7.2.3.3 BFINAL message %d inflates", i);
        if (r)
            is_mem(r, out.len, "Hello", 5, "7.2.3.3 is Hello");
    }
    /* 7.2.3.4: no compression (stored block). */
    r = inflate_ok(d, "\x00\x05\x00\xfa\xff\x48\x65\x6c\x6c\x6f\x00", 11, &out, 1000);
    ok(r != NULL, "7.2.3.4 stored block inflates");
    if (r)
        is_mem(r, out.len, "Hello", 5, "7.2.3.4 is Hello");
    /* 7.2.3.6: an empty message as a single 0x00 byte. */
    r = inflate_ok(d, "\x00", 1, &out, 1000);
    ok(r != NULL && out.len == 0, "7.2.3.6 single 00 is empty");
    r = inflate_ok(d, "", 0, &out, 1000);
    ok(r != NULL && out.len == 0, "empty payload is an empty message");
    r = inflate_ok(d, "\xf2\x48\xcd\xc9\xc9\x07\x00", 7, &out, 1000);
    ok(r != NULL && out.len == 5, "stream still usable after empty messages");
    gw_buf_release(&out);
    gw_pmd_free(d);

    /* Our deflater reproduces 7.2.3.1 exactly. */
    d = gw_pmd_new(&p, 1);
    gw_buf o2 = {0};
    is_int(gw_pmd_deflate(d, (const uint8_t *)"Hello", 5, &o2, 1000), GW_OK, "deflate Hello");
    is_mem(gw_buf_head(&o2), o2.len, "\xf2\x48\xcd\xc9\xc9\x07\x00", 7, "deflate Hello gives the RFC bytes");
    gw_buf_release(&o2);
    is_int(gw_pmd_deflate(d, (const uint8_t *)"", 0, &o2, 1000), GW_OK, "deflate empty message");
    is_mem(gw_buf_head(&o2), o2.len, "\x00", 1, "empty message deflates to 00");
    gw_buf_release(&o2);
    gw_pmd_free(d);
}

static size_t fill(uint8_t *p, size_t n, int compressible)
{
    static const char *words[] = {"alpha ", "beta ", "gamma ", "{\"type\":\"resize\",\"cols\":80} ", "\xc3\xa9t\xc3\xa9 "};
    size_t i = 0;
    if (!compressible) {
        for (; i < n; i++)
            p[i] = (uint8_t)rnd();
        return n;
    }
    while (i < n) {
        const char *w = words[rnd() % GW_ARRAY_LEN(words)];
        size_t k = strlen(w);
        if (k > n - i)
            k = n - i;
        memcpy(p + i, w, k);
        i += k;
    }
    return n;
}

/* Server deflates, client inflates (and the other way round), for every
 * window size and takeover mode, over a sequence of messages. */
static void test_roundtrip(void)
{
    uint8_t *msg = malloc(300000);
    int failures = 0, runs = 0;
    for (int bits = 9; bits <= 15; bits++) {
        for (int mode = 0; mode < 4; mode++) {
            gw_pmd_params p = {1, (uint8_t)(mode & 1), (uint8_t)(mode >> 1 & 1), (uint8_t)bits, (uint8_t)bits};
            gw_pmd *srv = gw_pmd_new(&p, 1), *cli = gw_pmd_new(&p, 0);
            for (int m = 0; m < 8; m++) {
                size_t n = m == 0 ? 0 : m == 7 ? 200000 : (size_t)(rnd() % 5000);
                fill(msg, n, m % 2);
                for (int dir = 0; dir < 2; dir++) {
                    gw_pmd *tx = dir ? cli : srv, *rx = dir ? srv : cli;
                    gw_buf z = {0}, out = {0};
                    uint16_t cc = 0;
                    runs++;
                    if (gw_pmd_deflate(tx, msg, n, &z, 1u << 20) != GW_OK) {
                        failures++;
                        continue;
                    }
                    int r = gw_pmd_inflate(rx, z.data ? gw_buf_head(&z) : (const uint8_t *)"", z.len, &out,
                                           1u << 20, &cc);
                    if (r != GW_OK || out.len != n || (n && memcmp(gw_buf_head(&out), msg, n) != 0)) {
                        failures++;
                        printf("# roundtrip bits %d mode %d msg %d dir %d: r %d cc %u len %u want %zu\n", bits, mode,
                               m, dir, r, cc, out.len, n);
                    }
                    gw_buf_release(&z);
                    gw_buf_release(&out);
                }
            }
            gw_pmd_free(srv);
            gw_pmd_free(cli);
        }
    }
    is_int(failures, 0, "%d round trips across window bits 9..15 and takeover modes", runs);
    free(msg);
}

/* The window sizes negotiated are what our deflater really uses: a stream
 * made with N bits inflates with a raw inflater limited to N bits. */
static void test_window_respected(void)
{
    uint8_t *msg = malloc(100000);
    int failures = 0;
    for (int bits = 9; bits <= 15; bits++) {
        for (int side = 0; side < 2; side++) {
            gw_pmd_params p = {1, 0, 0, (uint8_t)(side ? bits : 15), (uint8_t)(side ? 15 : bits)};
            gw_pmd *d = gw_pmd_new(&p, side);
            /* Repeats at long distance tempt a bigger window. */
            fill(msg, 50000, 0);
            memcpy(msg + 50000, msg, 50000);
            gw_buf z = {0};
            if (gw_pmd_deflate(d, msg, 100000, &z, 1u << 20) != GW_OK) {
                failures++;
                gw_pmd_free(d);
                continue;
            }
            gw_buf_append(&z, "\x00\x00\xff\xff", 4, 1u << 20);
            z_stream s;
            memset(&s, 0, sizeof s);
            inflateInit2(&s, -bits);
            uint8_t *o = malloc(100000);
            s.next_in = gw_buf_head(&z);
            s.avail_in = z.len;
            s.next_out = o;
            s.avail_out = 100000;
            int r = inflate(&s, Z_SYNC_FLUSH);
            if ((r != Z_OK && r != Z_STREAM_END) || s.total_out != 100000 || memcmp(o, msg, 100000) != 0)
                failures++;
            inflateEnd(&s);
            free(o);
            gw_buf_release(&z);
            gw_pmd_free(d);
        }
    }
    is_int(failures, 0, "deflater output readable by an inflater with exactly the negotiated window");
    free(msg);
}

static void test_context_takeover(void)
{
    uint8_t msg[2000];
    fill(msg, sizeof msg, 0); /* incompressible alone, tiny when repeated */
    for (int nct = 0; nct < 2; nct++) {
        gw_pmd_params p = {1, (uint8_t)nct, (uint8_t)nct, 15, 15};
        gw_pmd *srv = gw_pmd_new(&p, 1), *cli = gw_pmd_new(&p, 0);
        gw_buf a = {0}, b = {0}, out = {0};
        uint16_t cc;
        gw_pmd_deflate(srv, msg, sizeof msg, &a, 1u << 20);
        gw_pmd_deflate(srv, msg, sizeof msg, &b, 1u << 20);
        if (nct)
            is_int(b.len, a.len, "no_context_takeover: second message costs the same (%u)", b.len);
        else
            ok(b.len < a.len / 10, "context takeover: second identical message is smaller (%u < %u)", b.len, a.len);
        is_int(gw_pmd_inflate(cli, gw_buf_head(&a), a.len, &out, 1u << 20, &cc), GW_OK, "first inflates");
        gw_buf_release(&out);
        is_int(gw_pmd_inflate(cli, gw_buf_head(&b), b.len, &out, 1u << 20, &cc), GW_OK, "second inflates");
        is_mem(gw_buf_head(&out), out.len, msg, sizeof msg, "second message content");
        gw_buf_release(&out);
        if (!nct) {
            /* Without the first message the second cannot be read. */
            gw_pmd *fresh = gw_pmd_new(&p, 0);
            int r = gw_pmd_inflate(fresh, gw_buf_head(&b), b.len, &out, 1u << 20, &cc);
            ok(r == GW_ERR || out.len != sizeof msg || memcmp(gw_buf_head(&out), msg, sizeof msg) != 0,
               "second message depends on the first");
            gw_buf_release(&out);
            gw_pmd_free(fresh);
        }
        gw_buf_release(&a);
        gw_buf_release(&b);
        gw_pmd_free(srv);
        gw_pmd_free(cli);
    }
}

static void test_bomb(void)
{
    size_t big = 20u << 20;
    uint8_t *zeros = calloc(1, big);
    gw_pmd_params p = {1, 0, 0, 15, 15};
    gw_pmd *srv = gw_pmd_new(&p, 1), *cli = gw_pmd_new(&p, 0);
    gw_buf z = {0}, out = {0};
    is_int(gw_pmd_deflate(srv, zeros, big, &z, 1u << 20), GW_OK, "20 MiB of zeros deflate");
    ok(z.len < 30000, "bomb is small (%u bytes)", z.len);
    uint16_t cc = 0;
    is_int(gw_pmd_inflate(cli, gw_buf_head(&z), z.len, &out, 65536, &cc), GW_ERR, "bomb refused");
    is_int(cc, 1009, "bomb gives 1009");
    ok(out.len <= 65536 && out.cap <= 65536, "output stopped at max (len %u cap %u)", out.len, out.cap);
    gw_buf_release(&out);
    gw_pmd_free(cli);

    /* Exactly max fits; one byte less does not. */
    for (size_t n = 0; n < 3; n++) {
        size_t len = 1000 + n * 16383;
        gw_buf zz = {0};
        gw_pmd *s2 = gw_pmd_new(&p, 1);
        gw_pmd_deflate(s2, zeros, len, &zz, 1u << 20);
        gw_pmd *c2 = gw_pmd_new(&p, 0);
        cc = 0;
        is_int(gw_pmd_inflate(c2, gw_buf_head(&zz), zz.len, &out, len, &cc), GW_OK, "%zu bytes with max %zu", len,
               len);
        is_int(out.len, len, "all %zu bytes out", len);
        gw_buf_release(&out);
        gw_pmd_free(c2);
        c2 = gw_pmd_new(&p, 0);
        is_int(gw_pmd_inflate(c2, gw_buf_head(&zz), zz.len, &out, len - 1, &cc), GW_ERR, "%zu bytes with max %zu",
               len, len - 1);
        is_int(cc, 1009, "1009 one byte over");
        gw_buf_release(&out);
        /* max counts what out already held. */
        gw_pmd_free(c2);
        c2 = gw_pmd_new(&p, 0);
        gw_buf_append(&out, "xy", 2, 100);
        is_int(gw_pmd_inflate(c2, gw_buf_head(&zz), zz.len, &out, len + 1, &cc), GW_ERR,
               "max includes bytes already in out");
        gw_buf_release(&out);
        gw_pmd_free(c2);
        gw_pmd_free(s2);
        gw_buf_release(&zz);
    }
    /* Deflate output is bounded too. */
    gw_buf small = {0};
    uint8_t rnd_data[4000];
    fill(rnd_data, sizeof rnd_data, 0);
    is_int(gw_pmd_deflate(srv, rnd_data, sizeof rnd_data, &small, 100), GW_ERR, "deflate over max fails");
    is_int(small.len, 0, "nothing left in out after a failed deflate");
    gw_buf_release(&small);
    is_int(gw_pmd_deflate(srv, (const uint8_t *)"Hello", 5, &small, 7), GW_OK, "deflate to exactly max");
    is_int(small.len, 7, "7 bytes");
    gw_buf_release(&small);
    gw_pmd *fresh = gw_pmd_new(&p, 1);
    is_int(gw_pmd_deflate(fresh, (const uint8_t *)"Hello", 5, &small, 6), GW_ERR, "deflate one byte over max fails");
    is_int(small.len, 0, "out unchanged");
    is_int(gw_pmd_deflate(fresh, (const uint8_t *)"Hello", 5, &small, 7), GW_OK, "deflater usable after failure");
    is_mem(gw_buf_head(&small), small.len, "\xf2\x48\xcd\xc9\xc9\x07\x00", 7, "fresh stream after failure");
    gw_buf_release(&small);
    gw_pmd_free(fresh);
    gw_buf_release(&z);
    gw_pmd_free(srv);
    free(zeros);
}

static void test_garbage(void)
{
    gw_pmd_params p = {1, 0, 0, 15, 15};
    static const struct {
        const char *in;
        size_t n;
        const char *what;
    } t[] = {
        {"\xff\xff\xff\xff", 4, "reserved block type"},
        {"\x07", 1, "BTYPE 11"},
        {"\x00\x05\x00\x00\x00Hello", 10, "stored block with bad NLEN"},
        {"\xf2\x48\xcd\xc9", 4, "message cut inside a block"},
        {"\xf2\x48\xcd\xc9\xc9\x07\x00\x00\x00\xff\xff", 11, "tail not stripped"},
        {"\x00\x00\x00\xff\xff\x00\x00\xff\xff", 9, "junk sync markers"},
    };
    for (size_t i = 0; i < GW_ARRAY_LEN(t); i++) {
        gw_pmd *d = gw_pmd_new(&p, 0);
        gw_buf out = {0};
        uint16_t cc = 0;
        is_int(gw_pmd_inflate(d, (const uint8_t *)t[i].in, t[i].n, &out, 1000, &cc), GW_ERR, "%s refused",
               t[i].what);
        is_int(cc, 1007, "%s gives 1007", t[i].what);
        is_int(gw_pmd_memory(d), 0, "%s: zlib state freed after the error", t[i].what);
        gw_buf_release(&out);
        gw_pmd_free(d);
    }
    /* Random garbage never crashes and reports 1007 or 1009 or succeeds. */
    int odd = 0;
    for (int i = 0; i < 2000; i++) {
        uint8_t g[64];
        size_t n = 1 + (size_t)(rnd() % sizeof g);
        for (size_t k = 0; k < n; k++)
            g[k] = (uint8_t)rnd();
        gw_pmd *d = gw_pmd_new(&p, 0);
        gw_buf out = {0};
        uint16_t cc = 0;
        int r = gw_pmd_inflate(d, g, n, &out, 4096, &cc);
        if (r != GW_OK && cc != 1007 && cc != 1009)
            odd++;
        if (r == GW_OK && out.len > 4096)
            odd++;
        gw_buf_release(&out);
        gw_pmd_free(d);
    }
    is_int(odd, 0, "random garbage yields OK, 1007 or 1009 only");
}

static void test_memory(void)
{
    uint8_t msg[3000];
    fill(msg, sizeof msg, 1);
    for (int nct = 0; nct < 2; nct++) {
        gw_pmd_params p = {1, (uint8_t)nct, (uint8_t)nct, 15, 15};
        gw_pmd *srv = gw_pmd_new(&p, 1), *cli = gw_pmd_new(&p, 0);
        is_int(gw_pmd_memory(srv), 0, "no zlib state before the first message");
        for (int m = 0; m < 3; m++) {
            gw_buf z = {0}, out = {0};
            uint16_t cc;
            is_int(gw_pmd_deflate(srv, msg, sizeof msg, &z, 1u << 20), GW_OK, "deflate %d", m);
            if (nct)
                is_int(gw_pmd_memory(srv), 0, "no_context_takeover: deflater freed after message %d", m);
            else
                ok(gw_pmd_memory(srv) > 100000, "context takeover: deflater kept (%zu bytes)", gw_pmd_memory(srv));
            is_int(gw_pmd_inflate(cli, gw_buf_head(&z), z.len, &out, 1u << 20, &cc), GW_OK, "inflate %d", m);
            if (nct)
                is_int(gw_pmd_memory(cli), 0, "no_context_takeover: inflater freed after message %d", m);
            else
                ok(gw_pmd_memory(cli) > 30000, "context takeover: inflater kept (%zu bytes)", gw_pmd_memory(cli));
            gw_buf_release(&z);
            gw_buf_release(&out);
        }
        gw_pmd_free(srv);
        gw_pmd_free(cli);
    }
    /* Only one direction without takeover: only that stream is freed. */
    gw_pmd_params p = {1, 1, 0, 15, 15}; /* server_no_context_takeover */
    gw_pmd *srv = gw_pmd_new(&p, 1);
    gw_buf z = {0}, out = {0};
    uint16_t cc;
    gw_pmd_deflate(srv, msg, sizeof msg, &z, 1u << 20);
    is_int(gw_pmd_memory(srv), 0, "server deflater freed under server_no_context_takeover");
    gw_pmd *cli = gw_pmd_new(&p, 0);
    gw_pmd_inflate(cli, gw_buf_head(&z), z.len, &out, 1u << 20, &cc);
    is_int(gw_pmd_memory(cli), 0, "client inflater freed under server_no_context_takeover");
    gw_buf_release(&z);
    gw_buf_release(&out);
    gw_pmd_deflate(cli, msg, sizeof msg, &z, 1u << 20);
    ok(gw_pmd_memory(cli) > 0, "client deflater kept (client context takeover allowed)");
    gw_pmd_inflate(srv, gw_buf_head(&z), z.len, &out, 1u << 20, &cc);
    ok(gw_pmd_memory(srv) > 0, "server inflater kept");
    gw_buf_release(&z);
    gw_buf_release(&out);
    gw_pmd_free(srv);
    gw_pmd_free(cli);
}

int main(void)
{
    TEST_RUN(test_negotiate_server);
    TEST_RUN(test_client_accept);
    TEST_RUN(test_rfc_examples);
    TEST_RUN(test_roundtrip);
    TEST_RUN(test_window_respected);
    TEST_RUN(test_context_takeover);
    TEST_RUN(test_bomb);
    TEST_RUN(test_garbage);
    TEST_RUN(test_memory);
    return test_done();
}

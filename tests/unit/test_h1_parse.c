/* test_h1_parse.c: the strict HTTP/1.1 head parser, header helpers, request
 * framing checks and the chunked decoder. Every valid head is also fed at
 * every prefix (each copied against a PROT_NONE guard page to catch
 * over-reads) and grown one byte at a time. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "core/common.h"
#include "http/h1_parse.h"
#include "test.h"

#define MAXH 64

static const gw_h1_limits dflt = {8192, 16384, MAXH};

/* ------------------------------------------------------------------------ */
/* Guard page: bytes copied so that the last one sits just before an
 * unreadable page (picohttpparser's test trick). */

static char *guard_base;
static size_t guard_page;

static void guard_init(void)
{
    guard_page = (size_t)sysconf(_SC_PAGESIZE);
    /* room for heads up to 4 pages plus the guard */
    guard_base = mmap(NULL, guard_page * 5, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (guard_base == MAP_FAILED)
        abort();
    if (mprotect(guard_base + guard_page * 4, guard_page, PROT_NONE) != 0)
        abort();
}

static char *guarded(const char *s, size_t n)
{
    if (n > guard_page * 4)
        abort();
    char *p = guard_base + guard_page * 4 - n;
    memcpy(p, s, n);
    return p;
}

static int preq(const char *s, size_t n, gw_http_req *r, gw_http_header *h, const gw_h1_limits *lim, int *st)
{
    return gw_h1_parse_request(guarded(s, n), n, r, h, lim, st);
}

static int preq_s(const char *s, gw_http_req *r, gw_http_header *h, int *st)
{
    return preq(s, strlen(s), r, h, &dflt, st);
}

/* Offset of a view from its buffer's start, to compare parses of copies. */
#define OFF(v, base) ((long)((v).p - (base)))

static int same_req(const gw_http_req *a, const char *ba, const gw_http_req *b, const char *bb)
{
    if (OFF(a->method, ba) != OFF(b->method, bb) || a->method.n != b->method.n)
        return 0;
    if (OFF(a->target, ba) != OFF(b->target, bb) || a->target.n != b->target.n)
        return 0;
    if (OFF(a->path, ba) != OFF(b->path, bb) || a->path.n != b->path.n || a->query.n != b->query.n)
        return 0;
    if (a->minor_version != b->minor_version || a->num_headers != b->num_headers)
        return 0;
    for (size_t i = 0; i < a->num_headers; i++)
        if (OFF(a->headers[i].name, ba) != OFF(b->headers[i].name, bb) || a->headers[i].name.n != b->headers[i].name.n ||
            OFF(a->headers[i].value, ba) != OFF(b->headers[i].value, bb) ||
            a->headers[i].value.n != b->headers[i].value.n)
            return 0;
    return 1;
}

/* Every proper prefix of a valid head gives GW_AGAIN (each against the guard
 * page), and growing a heap buffer one byte at a time ends with the same
 * parse as the whole. */
static void check_splits(const char *s, size_t n, int want_len, const gw_h1_limits *lim)
{
    gw_http_header h1[MAXH], h2[MAXH];
    gw_http_req r1, r2;
    int st = 0, bad_at = -1, rc;

    for (size_t i = 0; i < (size_t)want_len; i++) {
        st = 0;
        rc = preq(s, i, &r1, h1, lim, &st);
        if (rc != GW_AGAIN && bad_at < 0)
            bad_at = (int)i;
    }
    is_int(bad_at, -1, "every prefix of a %d-byte head is GW_AGAIN", want_len);

    char *ref = guarded(s, n);
    rc = gw_h1_parse_request(ref, n, &r1, h1, lim, &st);
    is_int(rc, want_len, "whole head parses to its length");

    char *grow = malloc(n);
    int last = GW_AGAIN;
    size_t at = 0;
    for (at = 1; at <= n; at++) {
        memcpy(grow, s, at);
        last = gw_h1_parse_request(grow, at, &r2, h2, lim, &st);
        if (last != GW_AGAIN)
            break;
    }
    is_int(last, want_len, "one byte at a time: same length");
    is_int((long)at, want_len, "one byte at a time: completes exactly at the last byte");
    ok(last == want_len && same_req(&r1, ref, &r2, grow), "one byte at a time: identical views");
    free(grow);
}

/* ------------------------------------------------------------------------ */

static void test_valid_get(void)
{
    static const char s[] = "GET /chat/room?x=1&y=2 HTTP/1.1\r\n"
                            "Host: example.com:8080\r\n"
                            "Upgrade: websocket\r\n"
                            "Connection: keep-alive, Upgrade\r\n"
                            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                            "Sec-WebSocket-Version: 13\r\n"
                            "X-Spaces:   padded value \t \r\n"
                            "X-Tab:\tin\tside\r\n"
                            "X-Empty:\r\n"
                            "X-Obs: caf\xc3\xa9\r\n"
                            "User-Agent: test/1.0 (x; y)\r\n"
                            "Accept: */*\r\n"
                            "\r\n";
    gw_http_header h[MAXH];
    gw_http_req r;
    int st = 0;
    int rc = preq_s(s, &r, h, &st);
    is_int(rc, (int)strlen(s), "full head length");
    ok(gw_str_eq(r.method, "GET"), "method");
    ok(gw_str_eq(r.target, "/chat/room?x=1&y=2"), "target");
    ok(gw_str_eq(r.path, "/chat/room"), "path");
    ok(gw_str_eq(r.query, "x=1&y=2"), "query");
    is_int(r.minor_version, 1, "minor version");
    is_int((long)r.num_headers, 11, "header count");
    ok(r.headers == h, "headers array is the caller's");
    ok(gw_str_eq(h[0].name, "Host") && gw_str_eq(h[0].value, "example.com:8080"), "first header");
    ok(gw_str_eq(h[5].name, "X-Spaces") && gw_str_eq(h[5].value, "padded value"), "OWS trimmed both sides");
    ok(gw_str_eq(h[6].value, "in\tside"), "inner HTAB kept");
    ok(h[7].value.n == 0, "empty value");
    ok(gw_str_eq(h[8].value, "caf\xc3\xa9"), "obs-text in value kept");
    check_splits(s, strlen(s), (int)strlen(s), &dflt);

    /* no query; HTTP/1.0; leading empty lines skipped but counted */
    static const char s2[] = "\r\n\r\nPOST /up HTTP/1.0\r\nContent-Length: 0\r\n\r\n";
    rc = preq_s(s2, &r, h, &st);
    is_int(rc, (int)strlen(s2), "leading CRLFs counted in the length");
    ok(gw_str_eq(r.method, "POST") && gw_str_eq(r.path, "/up") && r.query.n == 0, "POST /up");
    is_int(r.minor_version, 0, "HTTP/1.0");
    check_splits(s2, strlen(s2), (int)strlen(s2), &dflt);

    static const char s3[] = "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n";
    rc = preq_s(s3, &r, h, &st);
    is_int(rc, (int)strlen(s3), "asterisk-form");
    ok(gw_str_eq(r.target, "*") && gw_str_eq(r.path, "*"), "asterisk target");
    check_splits(s3, strlen(s3), (int)strlen(s3), &dflt);

    static const char s4[] = "GET /? HTTP/1.1\r\n\r\n";
    rc = preq_s(s4, &r, h, &st);
    is_int(rc, (int)strlen(s4), "no headers at all");
    ok(r.num_headers == 0 && gw_str_eq(r.path, "/") && r.query.n == 0 && r.query.p == r.target.p + 2,
       "empty query after '?'");
    check_splits(s4, strlen(s4), (int)strlen(s4), &dflt);

    static const char s5[] = "M-SEARCH! http://h.example/a?b HTTP/1.1\r\nA:b\r\n\r\n";
    rc = preq_s(s5, &r, h, &st);
    is_int(rc, (int)strlen(s5), "token method with punctuation, absolute-form");
    ok(gw_str_eq(r.method, "M-SEARCH!") && gw_str_eq(h[0].value, "b"), "method and no-space value");
}

static void test_many_headers(void)
{
    char s[4096];
    size_t n = (size_t)snprintf(s, sizeof s, "GET / HTTP/1.1\r\n");
    for (int i = 0; i < MAXH; i++)
        n += (size_t)snprintf(s + n, sizeof s - n, "X-H%d: v%d\r\n", i, i);
    n += (size_t)snprintf(s + n, sizeof s - n, "\r\n");
    gw_http_header h[MAXH];
    gw_http_req r;
    int st = 0;
    is_int(preq(s, n, &r, h, &dflt, &st), (int)n, "exactly max_headers headers");
    is_int((long)r.num_headers, MAXH, "all counted");
    ok(gw_str_eq(h[MAXH - 1].name, "X-H63") && gw_str_eq(h[MAXH - 1].value, "v63"), "last header");
    check_splits(s, n, (int)n, &dflt);
}

static void test_pipelined(void)
{
    static const char s[] = "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: y\r\n\r\n";
    size_t first = strlen("GET /a HTTP/1.1\r\nHost: x\r\n\r\n");
    gw_http_header h[MAXH];
    gw_http_req r;
    int st = 0;
    int rc = preq_s(s, &r, h, &st);
    is_int(rc, (int)first, "first parse returns only the first head");
    ok(gw_str_eq(r.path, "/a") && gw_str_eq(h[0].value, "x"), "first request's fields");
    rc = gw_h1_parse_request(s + first, strlen(s) - first, &r, h, &dflt, &st);
    is_int(rc, (int)(strlen(s) - first), "second head");
    ok(gw_str_eq(r.path, "/b") && gw_str_eq(h[0].value, "y"), "second request's fields");
    check_splits(s, strlen(s), (int)first, &dflt);
    /* a body-like tail after the head is not looked at */
    static const char t[] = "GET / HTTP/1.1\r\n\r\n\x01\x02\n\r";
    is_int(preq(t, sizeof t - 1, &r, h, &dflt, &st), 18, "bytes after the head are ignored");
}

struct bad {
    const char *in;
    size_t n; /* 0: strlen */
    int status;
    const char *what;
};

static void check_bad(const struct bad *b, const gw_h1_limits *lim)
{
    gw_http_header h[MAXH];
    gw_http_req r;
    size_t n = b->n ? b->n : strlen(b->in);
    int st = 0;
    int rc = preq(b->in, n, &r, h, lim, &st);
    ok(rc == GW_ERR && st == b->status, "%s -> %d (got rc %d status %d)", b->what, b->status, rc, st);
    /* Prefixes must say "more" or already the same verdict: never a
     * different error, never success. */
    int odd = -1;
    for (size_t i = 0; i < n; i++) {
        st = 0;
        rc = preq(b->in, i, &r, h, lim, &st);
        if (!(rc == GW_AGAIN || (rc == GW_ERR && st == b->status)) && odd < 0)
            odd = (int)i;
    }
    is_int(odd, -1, "%s: prefixes consistent", b->what);
}

static void test_rejections(void)
{
    static const struct bad cases[] = {
        {"GET / HTTP/1.1\r\nHost: a\rb\r\n\r\n", 0, 400, "bare CR in a value"},
        {"GET / HTTP/1.1\rHost: a\r\n\r\n", 0, 400, "bare CR after request line"},
        {"GET / HTTP/1.1\r\nHost: a\r\n\rX", 0, 400, "bare CR as final line"},
        {"\rGET / HTTP/1.1\r\n\r\n", 0, 400, "bare CR as leading empty line"},
        {"GET / HTTP/1.1\nHost: a\r\n\r\n", 0, 400, "lone LF after request line"},
        {"GET / HTTP/1.1\r\nHost: a\n\r\n", 0, 400, "lone LF after a header"},
        {"GET / HTTP/1.1\r\nHost: a\r\n\n", 0, 400, "lone LF as final line"},
        {"\nGET / HTTP/1.1\r\n\r\n", 0, 400, "lone LF leading line"},
        {"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n c\r\n\r\n", 0, 400, "obs-fold SP"},
        {"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n\tc\r\n\r\n", 0, 400, "obs-fold HTAB"},
        {"GET / HTTP/1.1\r\n Host: a\r\n\r\n", 0, 400, "whitespace before first header"},
        {"GET / HTTP/1.1\r\nHost : a\r\n\r\n", 0, 400, "SP before colon"},
        {"GET / HTTP/1.1\r\nHost\t: a\r\n\r\n", 0, 400, "HTAB before colon"},
        {"GET / HTTP/1.1\r\n: a\r\n\r\n", 0, 400, "empty field name"},
        {"GET / HTTP/1.1\r\nHo(st: a\r\n\r\n", 0, 400, "non-token name"},
        {"GET / HTTP/1.1\r\nH\xc3\xb6st: a\r\n\r\n", 0, 400, "non-ASCII name"},
        {"GET / HTTP/1.1\r\nHost a\r\n\r\n", 0, 400, "no colon"},
        {"GET / HTTP/1.1\r\nX: a\x01z\r\n\r\n", 0, 400, "control char in value"},
        {"GET / HTTP/1.1\r\nX: a\x7fz\r\n\r\n", 0, 400, "DEL in value"},
        {"GET / HTTP/1.1\r\nX: a\0z\r\n\r\n", 26, 400, "NUL in value"},
        {"GET / HTTP/1.1\r\nX: a\x1b\r\n\r\n", 0, 400, "ESC in value"},
        {"G(ET / HTTP/1.1\r\n\r\n", 0, 400, "non-token method"},
        {"GET\t/ HTTP/1.1\r\n\r\n", 0, 400, "HTAB after method"},
        {" / HTTP/1.1\r\n\r\n", 0, 400, "empty method"},
        {"GET  / HTTP/1.1\r\n\r\n", 0, 400, "two spaces after method"},
        {"GET /  HTTP/1.1\r\n\r\n", 0, 400, "two spaces after target"},
        {"GET /a\x01 HTTP/1.1\r\n\r\n", 0, 400, "CTL in target"},
        {"GET /a\tb HTTP/1.1\r\n\r\n", 0, 400, "HTAB in target"},
        {"GET /caf\xc3\xa9 HTTP/1.1\r\n\r\n", 0, 400, "non-ASCII in target"},
        {"GET /a\x7f HTTP/1.1\r\n\r\n", 0, 400, "DEL in target"},
        {"GET / HTTP/1.x\r\n\r\n", 0, 400, "HTTP/1.x"},
        {"GET / HTTP/2\r\n\r\n", 0, 400, "HTTP/2 without minor"},
        {"GET / HTTP/2.0garbage\r\n\r\n", 0, 400, "HTTP/2.0 garbage"},
        {"GET / HTTP/1.10\r\n\r\n", 0, 400, "HTTP/1.10"},
        {"GET / http/1.1\r\n\r\n", 0, 400, "lowercase HTTP"},
        {"GET / HTTP/1.1 \r\n\r\n", 0, 400, "SP after version"},
        {"GET /\r\n\r\n", 0, 400, "no version (HTTP/0.9 style)"},
        {"GET / HTTP/1.1\r\r\n\r\n", 0, 400, "CR CR LF"},
        {"GET / HTTP/2.0\r\n\r\n", 0, 505, "HTTP/2.0"},
        {"GET / HTTP/1.2\r\n\r\n", 0, 505, "HTTP/1.2"},
        {"GET / HTTP/0.9\r\n\r\n", 0, 505, "HTTP/0.9"},
        {"GET / HTTP/3.1\r\nHost: x\r\n\r\n", 0, 505, "HTTP/3.1"},
    };
    for (size_t i = 0; i < GW_ARRAY_LEN(cases); i++)
        check_bad(&cases[i], &dflt);
}

static void test_limits(void)
{
    gw_h1_limits lim = {32, 128, 3};
    gw_http_header h[MAXH];
    gw_http_req r;
    int st = 0;

    /* request line of exactly 32 bytes is fine, 33 is 414 */
    static const char ok32[] = "GET /aaaaaaaaaaaaaaaaaa HTTP/1.1\r\n\r\n";
    is_int((int)strlen("GET /aaaaaaaaaaaaaaaaaa HTTP/1.1"), 32, "fixture is 32 bytes");
    is_int(preq(ok32, strlen(ok32), &r, h, &lim, &st), (int)strlen(ok32), "32-byte request line accepted");
    check_splits(ok32, strlen(ok32), (int)strlen(ok32), &lim);
    static const struct bad b414 = {"GET /aaaaaaaaaaaaaaaaaaa HTTP/1.1\r\n\r\n", 0, 414, "33-byte request line"};
    check_bad(&b414, &lim);
    /* early: no line end yet, just 33 bytes of target */
    static const char early[] = "GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    st = 0;
    is_int(preq(early, 32, &r, h, &lim, &st), GW_AGAIN, "32 bytes without line end: still AGAIN");
    st = 0;
    is_int(preq(early, 33, &r, h, &lim, &st), GW_ERR, "33 bytes without line end: error at once");
    is_int(st, 414, "... 414");
    /* leading empty lines do not count toward the request line */
    static const char lead[] = "\r\n\r\nGET /aaaaaaaaaaaaaaaaaa HTTP/1.1\r\n\r\n";
    is_int(preq(lead, strlen(lead), &r, h, &lim, &st), (int)strlen(lead), "limit measured from the request line");

    /* 431: head over max_head (128), detected before the head ends */
    char big[512];
    size_t n = (size_t)snprintf(big, sizeof big, "GET / HTTP/1.1\r\nX-Long: ");
    memset(big + n, 'v', 200);
    n += 200;
    st = 0;
    is_int(preq(big, 128, &r, h, &lim, &st), GW_AGAIN, "128 bytes of an unfinished head: AGAIN");
    st = 0;
    is_int(preq(big, 129, &r, h, &lim, &st), GW_ERR, "129 bytes of an unfinished head: error");
    is_int(st, 431, "... 431 before the head is complete");
    /* a head of exactly max_head bytes is accepted, one more byte is not */
    char exact[256];
    size_t e = (size_t)snprintf(exact, sizeof exact, "GET / HTTP/1.1\r\nX: ");
    size_t fill = 128 - e - 4;
    memset(exact + e, 'z', fill);
    memcpy(exact + e + fill, "\r\n\r\n", 4);
    is_int(preq(exact, 128, &r, h, &lim, &st), 128, "head of exactly max_head bytes");
    check_splits(exact, 128, 128, &lim);
    memmove(exact + e + 1, exact + e, 128 - e);
    exact[e] = 'z';
    st = 0;
    is_int(preq(exact, 129, &r, h, &lim, &st), GW_ERR, "max_head + 1 bytes");
    is_int(st, 431, "... 431");

    /* too many headers: 3 fine, the first byte of a 4th is 431 */
    static const char three[] = "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    is_int(preq(three, strlen(three), &r, h, &lim, &st), (int)strlen(three), "max_headers headers");
    static const char four[] = "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD";
    st = 0;
    is_int(preq(four, strlen(four), &r, h, &lim, &st), GW_ERR, "first byte of one header too many");
    is_int(st, 431, "... 431");
    static const struct bad b431 = {"GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n", 0, 431, "4 headers"};
    check_bad(&b431, &lim);
}

/* ------------------------------------------------------------------------ */

static int presp(const char *s, gw_http_resp *r, gw_http_header *h, const gw_h1_limits *lim, int *st)
{
    size_t n = strlen(s);
    return gw_h1_parse_response(guarded(s, n), n, r, h, lim, st);
}

static void test_responses(void)
{
    static const char s[] = "HTTP/1.1 101 Switching Protocols\r\n"
                            "Upgrade: websocket\r\n"
                            "Connection: Upgrade\r\n"
                            "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
                            "\r\nframe bytes";
    size_t head = strlen(s) - strlen("frame bytes");
    gw_http_header h[MAXH];
    gw_http_resp r;
    int st = 0;
    is_int(presp(s, &r, h, &dflt, &st), (int)head, "101 response length");
    is_int(r.status, 101, "status");
    is_int(r.minor_version, 1, "minor");
    ok(gw_str_eq(r.reason, "Switching Protocols"), "reason");
    is_int((long)r.num_headers, 3, "headers");
    ok(gw_str_eq(h[2].value, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "accept value");
    int bad = -1;
    for (size_t i = 0; i < head; i++) {
        int rc = gw_h1_parse_response(guarded(s, i), i, &r, h, &dflt, &st);
        if (rc != GW_AGAIN && bad < 0)
            bad = (int)i;
    }
    is_int(bad, -1, "every prefix of the response is AGAIN");

    is_int(presp("HTTP/1.0 404 Not Found\r\n\r\n", &r, h, &dflt, &st), 26, "1.0 404");
    ok(r.status == 404 && r.minor_version == 0 && gw_str_eq(r.reason, "Not Found"), "404 fields");
    is_int(presp("HTTP/1.1 200\r\n\r\n", &r, h, &dflt, &st), 16, "no reason, no SP");
    ok(r.status == 200 && r.reason.n == 0, "empty reason");
    is_int(presp("HTTP/1.1 204 \r\n\r\n", &r, h, &dflt, &st), 17, "SP and empty reason");
    is_int(presp("HTTP/1.1 999 x\r\n\r\n", &r, h, &dflt, &st), 18, "status 999");

    static const char *const bads[] = {
        "HTTP/1.1 20 OK\r\n\r\n",         "HTTP/1.1 099 x\r\n\r\n",       "HTTP/1.1 2000 OK\r\n\r\n",
        "HTTP/2.0 200 OK\r\n\r\n",        "HTTP/1.2 200 OK\r\n\r\n",      "HTTP/1.1 200 OK\nX: y\r\n\r\n",
        "HTTP/1.1 200 OK\r\nX : y\r\n\r\n", "HTTP/1.1 200 O\x01K\r\n\r\n", "HTTP/1.1  200 OK\r\n\r\n",
        "http/1.1 200 OK\r\n\r\n",        "HTTP/1.1 200 OK\r\n y\r\n\r\n", "\r\nHTTP/1.1 200 OK\r\n\r\n",
    };
    for (size_t i = 0; i < GW_ARRAY_LEN(bads); i++) {
        st = 0;
        int rc = presp(bads[i], &r, h, &dflt, &st);
        ok(rc == GW_ERR && st == 502, "bad response %zu -> 502 (rc %d st %d)", i, rc, st);
    }
    gw_h1_limits lim = {16, 64, 2};
    st = 0;
    ok(presp("HTTP/1.1 200 A long reason phrase", &r, h, &lim, &st) == GW_ERR && st == 502, "long status line -> 502");
    st = 0;
    ok(presp("HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC", &r, h, &lim, &st) == GW_ERR && st == 502,
       "too many headers -> 502");
    st = 0;
    ok(presp("HTTP/1.1 200 OK\r\nA: 11111111111111111111111111111111111111111111111111", &r, h, &lim, &st) ==
               GW_ERR &&
           st == 502,
       "head over max_head -> 502");
}

/* ------------------------------------------------------------------------ */

static void test_header_helpers(void)
{
    static const char s[] = "GET / HTTP/1.1\r\nHost: a\r\nconnection: keep-alive , Upgrade\r\n"
                            "X-Dup: 1\r\nx-dup: 2\r\nUpgrade: foo, WebSocket\r\nX-List: ,, a ,\r\n"
                            "Connection: close\r\n\r\n";
    gw_http_header h[MAXH];
    gw_http_req r;
    int st = 0;
    int rc = preq_s(s, &r, h, &st);
    ok(rc > 0, "parsed");
    const gw_http_header *f = gw_h1_find_header(r.headers, r.num_headers, "CONNECTION");
    ok(f && f == &h[1], "find is case-insensitive and returns the first");
    f = gw_h1_find_header(r.headers, r.num_headers, "X-DUP");
    ok(f && gw_str_eq(f->value, "1"), "first of two");
    ok(!gw_h1_find_header(r.headers, r.num_headers, "Hos"), "no prefix match");
    ok(!gw_h1_find_header(r.headers, r.num_headers, "Hostx"), "no longer-name match");
    ok(!gw_h1_find_header(r.headers, 0, "Host"), "empty list");
    is_int((long)gw_h1_count_header(r.headers, r.num_headers, "x-dup"), 2, "count 2");
    is_int((long)gw_h1_count_header(r.headers, r.num_headers, "Connection"), 2, "count Connection");
    is_int((long)gw_h1_count_header(r.headers, r.num_headers, "Nope"), 0, "count 0");
    ok(gw_h1_header_has_token(r.headers, r.num_headers, "Connection", "upgrade"), "token after OWS and comma");
    ok(gw_h1_header_has_token(r.headers, r.num_headers, "Connection", "KEEP-ALIVE"), "token before OWS");
    ok(gw_h1_header_has_token(r.headers, r.num_headers, "Connection", "close"), "token on a later line");
    ok(gw_h1_header_has_token(r.headers, r.num_headers, "upgrade", "websocket"), "mixed case token");
    ok(!gw_h1_header_has_token(r.headers, r.num_headers, "Connection", "upgrad"), "no partial token");
    ok(!gw_h1_header_has_token(r.headers, r.num_headers, "Connection", "keep-alive , Upgrade"), "no whole-value");
    ok(gw_h1_header_has_token(r.headers, r.num_headers, "X-List", "a"), "empty elements skipped");
    ok(!gw_h1_header_has_token(r.headers, r.num_headers, "Missing", "a"), "absent header");
}

/* ------------------------------------------------------------------------ */

struct bodycase {
    const char *head; /* headers only, after the request line */
    int minor;
    int rc, status;
    const char *why;
    int chunked;
    uint64_t cl;
};

static void test_request_body(void)
{
    static const struct bodycase cases[] = {
        {"Host: a\r\n", 1, GW_OK, 0, NULL, 0, 0},
        {"Host: a\r\nContent-Length: 5\r\n", 1, GW_OK, 0, NULL, 0, 5},
        {"Host: a\r\nContent-Length: 0\r\n", 1, GW_OK, 0, NULL, 0, 0},
        {"Host: a\r\nContent-Length: 18446744073709551615\r\n", 1, GW_OK, 0, NULL, 0, UINT64_MAX},
        {"Host: a\r\nContent-Length: 18446744073709551616\r\n", 1, GW_ERR, 400, "bad_content_length", 0, 0},
        {"Host: a\r\nTransfer-Encoding: chunked\r\n", 1, GW_OK, 0, NULL, 1, 0},
        {"Host: a\r\nTransfer-Encoding: CHUNKED\r\n", 1, GW_OK, 0, NULL, 1, 0},
        {"Host: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n", 1, GW_ERR, 400, "conflicting_framing", 0, 0},
        {"Host: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n", 1, GW_ERR, 400, "conflicting_framing", 0, 0},
        {"Host: a\r\nContent-Length: 5\r\nContent-Length: 5\r\n", 1, GW_OK, 0, NULL, 0, 5},
        {"Host: a\r\nContent-Length: 5, 5\r\n", 1, GW_OK, 0, NULL, 0, 5},
        {"Host: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n", 1, GW_ERR, 400, "bad_content_length", 0, 0},
        {"Host: a\r\nContent-Length: 5, 6\r\n", 1, GW_ERR, 400, "bad_content_length", 0, 0},
        {"Host: a\r\nContent-Length: +5\r\n", 1, GW_ERR, 400, "bad_content_length", 0, 0},
        {"Host: a\r\nContent-Length: -5\r\n", 1, GW_ERR, 400, "bad_content_length", 0, 0},
        {"Host: a\r\nContent-Length: 0x5\r\n", 1, GW_ERR, 400, "bad_content_length", 0, 0},
        {"Host: a\r\nContent-Length:  5 5\r\n", 1, GW_ERR, 400, "bad_content_length", 0, 0},
        {"Host: a\r\nContent-Length: \r\n", 1, GW_ERR, 400, "bad_content_length", 0, 0},
        {"Host: a\r\nContent-Length: 5,\r\n", 1, GW_ERR, 400, "bad_content_length", 0, 0},
        {"Host: a\r\nContent-Length: 5.0\r\n", 1, GW_ERR, 400, "bad_content_length", 0, 0},
        {"Host: a\r\nTransfer-Encoding: gzip\r\n", 1, GW_ERR, 501, "unsupported_transfer_coding", 0, 0},
        {"Host: a\r\nTransfer-Encoding: gzip, chunked\r\n", 1, GW_ERR, 501, "unsupported_transfer_coding", 0, 0},
        {"Host: a\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n", 1, GW_ERR, 501,
         "unsupported_transfer_coding", 0, 0},
        {"Host: a\r\nTransfer-Encoding: chunked, gzip\r\n", 1, GW_ERR, 400, "bad_transfer_encoding", 0, 0},
        {"Host: a\r\nTransfer-Encoding: chunked, chunked\r\n", 1, GW_ERR, 400, "bad_transfer_encoding", 0, 0},
        {"Host: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", 1, GW_ERR, 400,
         "bad_transfer_encoding", 0, 0},
        {"Host: a\r\nTransfer-Encoding: chunked;q=1\r\n", 1, GW_ERR, 400, "bad_transfer_encoding", 0, 0},
        {"Host: a\r\nTransfer-Encoding: \r\n", 1, GW_ERR, 400, "bad_transfer_encoding", 0, 0},
        {"Host: a\r\nTransfer-Encoding: chunked,\r\n", 1, GW_ERR, 400, "bad_transfer_encoding", 0, 0},
        {"Host: a\r\nTransfer-Encoding: \"chunked\"\r\n", 1, GW_ERR, 400, "bad_transfer_encoding", 0, 0},
        {"Host: a\r\nTransfer-Encoding: x;a=\"b\\\"c\", chunked\r\n", 1, GW_ERR, 501, "unsupported_transfer_coding",
         0, 0},
        {"Host: a\r\nTransfer-Encoding: x;a\r\n", 1, GW_ERR, 400, "bad_transfer_encoding", 0, 0},
        {"Host: a\r\nTransfer-Encoding: chunked\r\n", 0, GW_ERR, 400, "bad_transfer_encoding", 0, 0},
        {"Transfer-Encoding: chunked\r\n", 0, GW_ERR, 400, "bad_transfer_encoding", 0, 0},
        {"Content-Length: 3\r\n", 0, GW_OK, 0, NULL, 0, 3},
        {"", 0, GW_OK, 0, NULL, 0, 0},
        {"", 1, GW_ERR, 400, "missing_host", 0, 0},
        {"Content-Length: 5\r\n", 1, GW_ERR, 400, "missing_host", 0, 0},
        {"Host: a\r\nHost: a\r\n", 1, GW_ERR, 400, "duplicate_host", 0, 0},
        {"Host: a\r\nhost: b\r\n", 0, GW_ERR, 400, "duplicate_host", 0, 0},
        {"Host: \r\n", 1, GW_ERR, 400, "bad_host", 0, 0},
        {"Host: a b\r\n", 1, GW_ERR, 400, "bad_host", 0, 0},
        {"Host: a/b\r\n", 1, GW_ERR, 400, "bad_host", 0, 0},
        {"Host: a@b\r\n", 1, GW_ERR, 400, "bad_host", 0, 0},
        {"Host: a:8x\r\n", 1, GW_ERR, 400, "bad_host", 0, 0},
        {"Host: [::1\r\n", 1, GW_ERR, 400, "bad_host", 0, 0},
        {"Host: [::1]x\r\n", 1, GW_ERR, 400, "bad_host", 0, 0},
        {"Host: [::1]:8080\r\n", 1, GW_OK, 0, NULL, 0, 0},
        {"Host: 127.0.0.1:80\r\n", 1, GW_OK, 0, NULL, 0, 0},
        {"Host: ex-ample.com:\r\n", 1, GW_OK, 0, NULL, 0, 0},
    };
    for (size_t i = 0; i < GW_ARRAY_LEN(cases); i++) {
        const struct bodycase *c = &cases[i];
        char s[512];
        snprintf(s, sizeof s, "POST / HTTP/1.%d\r\n%s\r\n", c->minor, c->head);
        gw_http_header h[MAXH];
        gw_http_req r;
        int st = 0;
        int rc = gw_h1_parse_request(s, strlen(s), &r, h, &dflt, &st);
        ok(rc > 0, "case %zu parses", i);
        if (rc <= 0)
            continue;
        gw_h1_body b = {7, 7};
        const char *why = NULL;
        st = 0;
        rc = gw_h1_request_body(&r, &b, &st, &why);
        is_int(rc, c->rc, "case %zu rc", i);
        if (c->rc == GW_OK) {
            ok(b.chunked == c->chunked && b.content_length == c->cl, "case %zu framing (chunked %d cl %llu)", i,
               b.chunked, (unsigned long long)b.content_length);
        } else {
            is_int(st, c->status, "case %zu status", i);
            is_str(why, c->why, "case %zu why", i);
        }
    }
}

/* ------------------------------------------------------------------------ */
/* Chunked decoder */

/* Decodes in with the input cut at the given points (ascending, within
 * [0, n]); each piece is appended to a working buffer that keeps the
 * undecoded nothing: the decoder consumes every byte on GW_AGAIN. Returns the
 * final rc; out gets the body, *tail the bytes left after it. */
static int chunked_run(const char *in, size_t n, const size_t *cuts, size_t ncuts, char *out, size_t *out_n,
                       char *tail, size_t *tail_n)
{
    gw_h1_chunked c;
    memset(&c, 0, sizeof c);
    size_t prev = 0, on = 0;
    int rc = GW_AGAIN;
    *tail_n = 0;
    for (size_t k = 0; k <= ncuts; k++) {
        size_t to = k < ncuts ? cuts[k] : n;
        size_t len = to - prev;
        uint8_t *piece = malloc(len + 1);
        memcpy(piece, in + prev, len);
        size_t consumed = 0, l = len;
        rc = gw_h1_chunked_decode(&c, piece, &l, &consumed);
        if (rc == GW_ERR) {
            free(piece);
            break;
        }
        if (consumed > len || l > consumed) {
            free(piece);
            return 99; /* contract broken */
        }
        memcpy(out + on, piece, l);
        on += l;
        if (rc == GW_DONE) {
            /* The next message starts at piece + consumed, untouched. */
            *tail_n = len - consumed;
            memcpy(tail, piece + consumed, *tail_n);
            /* rest of input untouched by the decoder */
            memcpy(tail + *tail_n, in + to, n - to);
            *tail_n += n - to;
            free(piece);
            break;
        }
        if (consumed != len) {
            free(piece);
            return 98;
        }
        free(piece);
        prev = to;
    }
    *out_n = on;
    return rc;
}

/* Whole, at every single split, at every pair of splits (short inputs) and
 * one byte at a time: same result each time. */
static void check_chunked(const char *in, size_t n, int want_rc, const char *body, const char *want_tail,
                          const char *what)
{
    char out[8192], tail[8192];
    size_t on, tn;
    int rc = chunked_run(in, n, NULL, 0, out, &on, tail, &tn);
    is_int(rc, want_rc, "%s: whole", what);
    if (want_rc == GW_DONE) {
        is_mem(out, on, body, strlen(body), "%s: body", what);
        is_mem(tail, tn, want_tail, strlen(want_tail), "%s: tail", what);
    }
    int bad = -1;
    for (size_t i = 0; i <= n && bad < 0; i++) {
        size_t cut[1] = {i};
        rc = chunked_run(in, n, cut, 1, out, &on, tail, &tn);
        if (rc != want_rc || (want_rc == GW_DONE && (on != strlen(body) || memcmp(out, body, on) ||
                                                     tn != strlen(want_tail) || memcmp(tail, want_tail, tn))))
            bad = (int)i;
    }
    is_int(bad, -1, "%s: every split point", what);
    bad = -1;
    if (n <= 80) {
        for (size_t i = 0; i <= n && bad < 0; i++)
            for (size_t j = i; j <= n && bad < 0; j++) {
                size_t cut[2] = {i, j};
                rc = chunked_run(in, n, cut, 2, out, &on, tail, &tn);
                if (rc != want_rc || (want_rc == GW_DONE && (on != strlen(body) || memcmp(out, body, on))))
                    bad = (int)(i * 1000 + j);
            }
        is_int(bad, -1, "%s: every pair of split points", what);
    }
    size_t *cuts = malloc((n + 1) * sizeof *cuts);
    for (size_t i = 0; i < n; i++)
        cuts[i] = i + 1;
    rc = chunked_run(in, n, cuts, n ? n - 1 : 0, out, &on, tail, &tn);
    free(cuts);
    is_int(rc, want_rc, "%s: one byte at a time", what);
    if (want_rc == GW_DONE)
        is_mem(out, on, body, strlen(body), "%s: one byte at a time body", what);
}

#define CK(in, rc, body, tail, what) check_chunked(in, sizeof(in) - 1, rc, body, tail, what)

static void test_chunked_valid(void)
{
    CK("5\r\nhello\r\n0\r\n\r\n", GW_DONE, "hello", "", "one chunk");
    CK("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\nGET / HTTP/1.1\r\n", GW_DONE, "hello world", "GET / HTTP/1.1\r\n",
       "two chunks and a pipelined request after");
    CK("0\r\n\r\n", GW_DONE, "", "", "empty body");
    CK("A\r\n0123456789\r\na\r\nabcdefghij\r\n0\r\n\r\n", GW_DONE, "0123456789abcdefghij", "", "hex upper/lower");
    CK("005\r\nhello\r\n000\r\n\r\n", GW_DONE, "hello", "", "leading zeros");
    CK("5;ext\r\nhello\r\n0;last\r\n\r\n", GW_DONE, "hello", "", "extension without value");
    CK("5;a=b;c=d\r\nhello\r\n0\r\n\r\n", GW_DONE, "hello", "", "extensions with token values");
    CK("5 ; a = \"q\\\"x, y\" ;b\t;c=\"\"\r\nhello\r\n0\r\n\r\n", GW_DONE, "hello", "",
       "BWS and quoted values with escapes");
    CK("5\r\nhello\r\n0\r\nX-Trailer: v\r\nChecksum:abc\r\nEmpty:\r\n\r\nrest", GW_DONE, "hello", "rest",
       "trailers consumed and discarded");
    CK("3\r\n\r\n\r\r\n0\r\n\r\n", GW_DONE, "\r\n\r", "", "CR/LF inside data is data");
    CK("5\r\nhel", GW_AGAIN, "", "", "incomplete data");
    CK("5\r\nhello\r\n0\r\nX: y\r\n", GW_AGAIN, "", "", "incomplete trailers");
    CK("ffffffffffffffff\r\nabc", GW_AGAIN, "", "", "largest size without overflow");
}

static void test_chunked_bad(void)
{
    CK("G\r\n", GW_ERR, "", "", "bad hex");
    CK("\r\n", GW_ERR, "", "", "empty size");
    CK(";a\r\n", GW_ERR, "", "", "extension without size");
    CK("-5\r\nhello\r\n", GW_ERR, "", "", "negative size");
    CK("0x5\r\nhello\r\n", GW_ERR, "", "", "0x prefix");
    CK("5\nhello\r\n0\r\n\r\n", GW_ERR, "", "", "lone LF after size");
    CK("5\rhello", GW_ERR, "", "", "bare CR after size");
    CK("5\r\nhelloX\r\n", GW_ERR, "", "", "data longer than size");
    CK("5\r\nhello\n0\r\n\r\n", GW_ERR, "", "", "lone LF after data");
    CK("5\r\nhello\r\r\n", GW_ERR, "", "", "CR CR after data");
    CK("5 \r\nhello\r\n", GW_ERR, "", "", "trailing whitespace without extension");
    CK("5;\r\nhello\r\n", GW_ERR, "", "", "empty extension name");
    CK("5;a=\r\nhello\r\n", GW_ERR, "", "", "empty extension value");
    CK("5;a \r\n", GW_ERR, "", "", "whitespace after ext-name then CR");
    CK("5;a=\"x\r\n", GW_ERR, "", "", "CR inside a quoted value");
    CK("5;a=\"x\"y\r\n", GW_ERR, "", "", "junk after a quoted value");
    CK("5;a\rb\r\n", GW_ERR, "", "", "bare CR in extensions");
    CK("5;a\nb\r\n", GW_ERR, "", "", "bare LF in extensions");
    CK("5;a=b=c\r\n", GW_ERR, "", "", "two '=' in an extension");
    CK("5;a(=b\r\n", GW_ERR, "", "", "non-token extension name");
    CK("10000000000000000\r\n", GW_ERR, "", "", "size overflow (17 hex digits)");
    CK("0\r\nX: a\n\r\n", GW_ERR, "", "", "lone LF in trailer");
    CK("0\r\nX: a\r\n b\r\n\r\n", GW_ERR, "", "", "obs-fold in trailers");
    CK("0\r\nX a\r\n\r\n", GW_ERR, "", "", "trailer without colon");
    CK("0\r\n: a\r\n\r\n", GW_ERR, "", "", "trailer with empty name");
    CK("0\r\nX : a\r\n\r\n", GW_ERR, "", "", "trailer with SP before colon");
    CK("0\r\nX: a\x01\r\n\r\n", GW_ERR, "", "", "control char in trailer");
    CK("0\r\n\n", GW_ERR, "", "", "lone LF ending the body");
    CK("0\r\n\rx", GW_ERR, "", "", "bare CR ending the body");

    /* line lengths: a size line of 4096 bytes passes, 4097 fails */
    char big[8192];
    memset(big, '0', 4095);
    memcpy(big + 4095, "5\r\nhello\r\n0\r\n\r\n", 15);
    check_chunked(big, 4095 + 15, GW_DONE, "hello", "", "4096-byte size line");
    memset(big, '0', 4096);
    memcpy(big + 4096, "5\r\nhello\r\n0\r\n\r\n", 15);
    check_chunked(big, 4096 + 15, GW_ERR, "", "", "4097-byte size line");
    memcpy(big, "5;x=", 4);
    memset(big + 4, 'a', 5000);
    memcpy(big + 5004, "\r\n", 2);
    check_chunked(big, 5006, GW_ERR, "", "", "long extension");
    memcpy(big, "0\r\nX:", 5);
    memset(big + 5, 'v', 5000);
    memcpy(big + 5005, "\r\n\r\n", 4);
    check_chunked(big, 5009, GW_ERR, "", "", "long trailer line");

    /* Trailer section bounded as a whole too */
    size_t n = (size_t)snprintf(big, sizeof big, "0\r\n");
    gw_h1_chunked c;
    memset(&c, 0, sizeof c);
    size_t len = n, consumed;
    int rc = gw_h1_chunked_decode(&c, (uint8_t *)big, &len, &consumed);
    is_int(rc, GW_AGAIN, "last chunk header");
    int i;
    for (i = 0; i < 1000; i++) {
        memcpy(big, "X-Filler: 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\r\n", 76);
        len = 76;
        rc = gw_h1_chunked_decode(&c, (uint8_t *)big, &len, &consumed);
        if (rc != GW_AGAIN)
            break;
    }
    ok(rc == GW_ERR && i < 1000, "endless trailers refused (after %d lines)", i);

    /* after DONE, further calls report DONE and touch nothing; after ERR, ERR */
    memset(&c, 0, sizeof c);
    memcpy(big, "0\r\n\r\nabc", 8);
    len = 8;
    rc = gw_h1_chunked_decode(&c, (uint8_t *)big, &len, &consumed);
    ok(rc == GW_DONE && len == 0 && consumed == 5 && memcmp(big + 5, "abc", 3) == 0, "done: tail left in place");
    len = 3;
    rc = gw_h1_chunked_decode(&c, (uint8_t *)big, &len, &consumed);
    ok(rc == GW_DONE && len == 0 && consumed == 0, "done stays done, consumes nothing");
    memset(&c, 0, sizeof c);
    memcpy(big, "Z", 1);
    len = 1;
    rc = gw_h1_chunked_decode(&c, (uint8_t *)big, &len, &consumed);
    memcpy(big, "0\r\n\r\n", 5);
    len = 5;
    rc = gw_h1_chunked_decode(&c, (uint8_t *)big, &len, &consumed);
    is_int(rc, GW_ERR, "error is sticky");
}

/* Issue 8 item 1: a chunked body whose last chunk arrives in a read with no
 * chunk data, followed by a pipelined request. The caller (the proxy) takes
 * the next request from buf + consumed; at every split point of the stream
 * into two reads (and every pair, three reads) that must be the pipelined
 * request byte for byte, and it must parse as GET /app/visible with the
 * hostile header value intact. */
static void test_chunked_then_pipelined(void)
{
    static const char body[] = "4\r\nwiki\r\n5;e=1\r\npedia\r\n0\r\nX-Sum: 1\r\n\r\n";
    static const char next[] = "GET /app/visible HTTP/1.1\r\nHost: gw.test\r\nX-Smuggle: GET /app/hidden HTTP/1.1\r\n\r\n";
    char in[512];
    size_t bn = sizeof body - 1, nn = sizeof next - 1, n = bn + nn;
    memcpy(in, body, bn);
    memcpy(in + bn, next, nn);
    int bad_split = -1, bad_parse = -1;
    for (size_t i = 0; i <= n; i++) {
        for (size_t j = i; j <= n; j++) {
            size_t cuts[2] = {i, j};
            char out[512], tail[512];
            size_t on = 0, tn = 0;
            int rc = chunked_run(in, n, cuts, 2, out, &on, tail, &tn);
            if (rc != GW_DONE || on != 9 || memcmp(out, "wikipedia", 9) || tn != nn || memcmp(tail, next, nn)) {
                if (bad_split < 0)
                    bad_split = (int)(i * 1000 + j);
                continue;
            }
            gw_http_header h[8];
            gw_http_req req;
            int st = 0;
            int r = gw_h1_parse_request(tail, tn, &req, h, &(gw_h1_limits){8192, 16384, 8}, &st);
            const gw_http_header *sm = r > 0 ? gw_h1_find_header(req.headers, req.num_headers, "X-Smuggle") : NULL;
            if (r != (int)nn || !gw_str_eq(req.target, "/app/visible") || !sm ||
                !gw_str_eq(sm->value, "GET /app/hidden HTTP/1.1"))
                if (bad_parse < 0)
                    bad_parse = (int)(i * 1000 + j);
        }
    }
    is_int(bad_split, -1, "body then pipelined request: every pair of split points keeps the next request whole");
    is_int(bad_parse, -1, "body then pipelined request: the next request parses as sent");
    /* The exact shape of the report: the last chunk alone in a read. */
    CK("3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", GW_DONE, "abc", "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
       "last chunk alone in a read, then a pipelined GET");
}

/* Issue 8 item 8: dot segments (RFC 3986 section 5.2.4 and its examples). */
static void test_normalize_path(void)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"/a/b/c/./../../g", "/a/g"},
        {"/mid/content=5/../6", "/mid/6"},
        {"/app/../x", "/x"},
        {"/app/../../../x", "/x"},
        {"/..", "/"},
        {"/.", "/"},
        {"/a/b/..", "/a/"},
        {"/a/b/.", "/a/b/"},
        {"/a/./b", "/a/b"},
        {"/a//../b", "/a/b"},
        {"/a//b", "/a//b"},
        {"/app/%2e%2E/admin", "/admin"},
        {"/app/%2E./admin", "/admin"},
        {"/app/.%2e", "/"},
        {"/a/..b/c", "/a/..b/c"},
        {"/a/.b/c.", "/a/.b/c."},
        {"/a%2eb", "/a.b"},
        {"/", "/"},
        {"*", "*"},
    };
    for (size_t i = 0; i < GW_ARRAY_LEN(cases); i++) {
        gw_str in = gw_str_make(cases[i].in, strlen(cases[i].in));
        char out[64];
        size_t n = gw_h1_normalize_path(in, out);
        is_mem(out, n, cases[i].out, strlen(cases[i].out), "normalize %s", cases[i].in);
        is_int((int)out[n], 0, "normalize %s: NUL-terminated", cases[i].in);
        int needs = strcmp(cases[i].in, cases[i].out) != 0;
        is_int(gw_h1_path_needs_normalizing(in), needs, "needs normalizing: %s", cases[i].in);
    }
    is_int(gw_h1_path_needs_normalizing(GW_STRLIT("/a/b.c/d..e/")), 0, "dots inside segments are not dot segments");
}

/* Review of issue 8, finding 4: targets that common upstream stacks
 * resolve outside the path the gateway routes are 400; their look-alikes
 * that are plain names, and anything in the query, are not. */
/* Parses "GET target HTTP/1.1" with a Host: the parser's result, and its
 * status in *st. */
static int parse_target(const char *target, int *st, int *len)
{
    char buf[256];
    *len = snprintf(buf, sizeof buf, "GET %s HTTP/1.1\r\nHost: h\r\n\r\n", target);
    gw_http_header h[MAXH];
    gw_http_req req;
    *st = 0;
    return preq(buf, (size_t)*len, &req, h, &dflt, st);
}

static void test_target_lookalikes(void)
{
    static const char *const bad[] = {
        "/app/..;/internal/x", "/app/..%2finternal/x", "/app/%2e%2e%2finternal/x", "/app/..%5cinternal/x",
        "/app/..\\internal/x", "/app/x#frag", "/app/.%2e;/internal/x", "/app/.;/x", "/app/%2E;x/y",
        "/app/..%3b/x", "/app/..%3B", "/a%2Fb", "/a%5Cb", "/a\\b", "/app/x?q=1#f", "#", "/app/..;",
        "http://h/app/..;/x", "http://h/a%2fb",
    };
    int st, n;
    for (size_t i = 0; i < GW_ARRAY_LEN(bad); i++) {
        int r = parse_target(bad[i], &st, &n);
        is_int(r, GW_ERR, "%s refused", bad[i]);
        is_int(st, 400, "%s: 400", bad[i]);
    }
    static const char *const good[] = {
        "/a;v=1/b", "/app/...;x", "/app/.x;y", "/app/x.;y", "/app/;/x", "/a/..b;c", "/q?x=..;/&y=%2F&z=%5C&w=\\",
        "/a%2eb", "/a%2Cb", "/a%20/b", "/app/../x", "/p%252F", "*",
    };
    for (size_t i = 0; i < GW_ARRAY_LEN(good); i++) {
        int r = parse_target(good[i], &st, &n);
        is_int(r, n, "%s accepted", good[i]);
    }
}

/* Issue 8 item 13: absolute-form served as origin-form. */
static void test_origin_form(void)
{
    static const struct {
        const char *line, *path, *query, *authority;
        int rc;
    } cases[] = {
        {"GET http://gw.test/app/x?q=1 HTTP/1.1", "/app/x", "q=1", "gw.test", GW_OK},
        {"GET HTTPS://evil.example:8443/y HTTP/1.1", "/y", "", "evil.example:8443", GW_OK},
        {"GET http://[::1]:80 HTTP/1.1", "/", "", "[::1]:80", GW_OK},
        {"GET http://h?x HTTP/1.1", "/", "x", "h", GW_OK},
        {"GET /plain?z HTTP/1.1", "/plain", "z", "", GW_OK},
        {"GET http://user@h/p HTTP/1.1", NULL, NULL, NULL, GW_ERR},
        {"GET http:///p HTTP/1.1", NULL, NULL, NULL, GW_ERR},
        {"GET http://h:8x/p HTTP/1.1", NULL, NULL, NULL, GW_ERR},
        {"GET http://h:99999/p HTTP/1.1", NULL, NULL, NULL, GW_ERR},
        {"GET http://h:65536/p HTTP/1.1", NULL, NULL, NULL, GW_ERR},
        {"GET http://h:4294967377/p HTTP/1.1", NULL, NULL, NULL, GW_ERR},
        {"GET http://h:65535/p HTTP/1.1", "/p", "", "h:65535", GW_OK},
    };
    for (size_t i = 0; i < GW_ARRAY_LEN(cases); i++) {
        char buf[256];
        int n = snprintf(buf, sizeof buf, "%s\r\nHost: gw.test\r\n\r\n", cases[i].line);
        gw_http_header h[8];
        gw_http_req req;
        int st = 0;
        int r = gw_h1_parse_request(buf, (size_t)n, &req, h, &(gw_h1_limits){8192, 16384, 8}, &st);
        is_int(r, n, "%s: parsed", cases[i].line);
        is_int(gw_h1_origin_form(&req), cases[i].rc, "%s: rc", cases[i].line);
        if (cases[i].rc != GW_OK)
            continue;
        is_mem(req.path.p, req.path.n, cases[i].path, strlen(cases[i].path), "%s: path", cases[i].line);
        is_mem(req.query.p, req.query.n, cases[i].query, strlen(cases[i].query), "%s: query", cases[i].line);
        is_mem(req.authority.n ? req.authority.p : "", req.authority.n, cases[i].authority, strlen(cases[i].authority), "%s: authority",
               cases[i].line);
    }
}

/* gw_h1_req_clone: a copy that outlives the input buffer. */
static void test_req_clone(void)
{
    char buf[] = "GET /a/b?x=1 HTTP/1.1\r\nHost: h\r\nSec-WebSocket-Protocol: p, tok\r\n\r\n";
    gw_http_header hdrs[MAXH];
    gw_http_req req;
    int st = 0;
    ok(gw_h1_parse_request(buf, strlen(buf), &req, hdrs, &dflt, &st) > 0, "parsed");
    gw_http_req *c = gw_h1_req_clone(&req);
    memset(buf, 'z', sizeof buf - 1); /* the input buffer is reused */
    ok(gw_str_eq(c->method, "GET") && gw_str_eq(c->target, "/a/b?x=1") && gw_str_eq(c->path, "/a/b") &&
           gw_str_eq(c->query, "x=1") && c->authority.n == 0 && c->minor_version == 1,
       "request line copied");
    ok(c->num_headers == 2 && gw_str_eq(c->headers[0].name, "Host") && gw_str_eq(c->headers[0].value, "h") &&
           gw_str_eq(c->headers[1].value, "p, tok"),
       "headers copied");
    gw_h1_req_clone_free(c);
}

int main(void)
{
    guard_init();
    TEST_RUN(test_req_clone);
    TEST_RUN(test_valid_get);
    TEST_RUN(test_many_headers);
    TEST_RUN(test_pipelined);
    TEST_RUN(test_rejections);
    TEST_RUN(test_limits);
    TEST_RUN(test_responses);
    TEST_RUN(test_header_helpers);
    TEST_RUN(test_request_body);
    TEST_RUN(test_chunked_valid);
    TEST_RUN(test_chunked_bad);
    TEST_RUN(test_chunked_then_pipelined);
    TEST_RUN(test_normalize_path);
    TEST_RUN(test_target_lookalikes);
    TEST_RUN(test_origin_form);
    return test_done();
}

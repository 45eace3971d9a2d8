/* test_ws_handshake.c: RFC 6455 opening handshake, server checks and client
 * helpers, on heads parsed by h1_parse. */
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "http/h1_parse.h"
#include "http/ws_handshake.h"
#include "test.h"

#define MAXH 32
static const gw_h1_limits lim = {8192, 16384, MAXH};

static gw_http_header hdrs[MAXH];
static char reqbuf[4096];

/* Parses "request line + extra lines": the test fixture is just the head. */
static gw_http_req parse(const char *head)
{
    gw_http_req r;
    int st = 0;
    snprintf(reqbuf, sizeof reqbuf, "%s", head);
    int rc = gw_h1_parse_request(reqbuf, strlen(reqbuf), &r, hdrs, &lim, &st);
    if (rc <= 0) {
        printf("# fixture did not parse (rc %d status %d): %s\n", rc, st, head);
        abort();
    }
    return r;
}

#define GOOD_HEADERS                                                                                                  \
    "Host: server.example.com\r\n"                                                                                     \
    "Upgrade: websocket\r\n"                                                                                           \
    "Connection: Upgrade\r\n"                                                                                          \
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"                                                                 \
    "Sec-WebSocket-Version: 13\r\n"

static void test_accept_key(void)
{
    char out[GW_WS_ACCEPT_LEN + 1];
    memset(out, 'x', sizeof out);
    gw_ws_accept_key(GW_STRLIT("dGhlIHNhbXBsZSBub25jZQ=="), out);
    is_str(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=", "RFC 6455 sample key");
    is_int((long)strlen(out), GW_WS_ACCEPT_LEN, "28 characters, NUL-terminated");
    gw_ws_accept_key(GW_STRLIT("x3JJHMbDL1EzLkh9GBhXDw=="), out);
    /* (Not from RFC 6455, whose only example is the key above: the pair of
     * the Wikipedia "WebSocket" article, checked with Python's hashlib.) */
    is_str(out, "HSmrc0sMlYUkAGmm5OPpG2HaGWk=", "second known pair (Wikipedia example)");
    /* A long junk key takes the streaming path; the value is base64(SHA-1(
     * 300 x 'k' + the RFC 6455 GUID)), computed with Python's hashlib. */
    char longkey[300];
    memset(longkey, 'k', sizeof longkey);
    gw_ws_accept_key(gw_str_make(longkey, sizeof longkey), out);
    is_str(out, "0epks0nN8rNytIigCrEHZPQGWfI=", "long key: the exact accept value");
}

static void test_upgrade_ok(void)
{
    gw_http_req r = parse("GET /chat HTTP/1.1\r\n" GOOD_HEADERS "Sec-WebSocket-Protocol: chat, superchat\r\n"
                          "Sec-WebSocket-Extensions: permessage-deflate\r\n\r\n");
    gw_ws_upgrade up;
    int st = 0;
    const char *code = NULL;
    ok(gw_ws_is_upgrade(&r), "is_upgrade");
    is_int(gw_ws_check_upgrade(&r, &up, &st, &code), GW_OK, "RFC sample request accepted");
    ok(gw_str_eq(up.key, "dGhlIHNhbXBsZSBub25jZQ=="), "key view");
    ok(gw_str_eq(up.protocols, "chat, superchat"), "protocols view");
    ok(gw_str_eq(up.extensions, "permessage-deflate"), "extensions view");

    r = parse("GET / HTTP/1.1\r\nhost: a\r\nupgrade: WebSocket\r\nconnection: keep-alive, Upgrade\r\n"
              "sec-websocket-key: AAAAAAAAAAAAAAAAAAAAAA==\r\nsec-websocket-version: 13\r\n\r\n");
    is_int(gw_ws_check_upgrade(&r, &up, &st, &code), GW_OK, "lowercase names, keep-alive, Upgrade, mixed case");
    ok(up.protocols.n == 0 && up.extensions.n == 0, "no protocols or extensions");

    r = parse("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c, WEBSOCKET\r\nConnection: keep-alive\r\n"
              "Connection: upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n");
    is_int(gw_ws_check_upgrade(&r, &up, &st, &code), GW_OK, "Upgrade in a list, Connection on two lines");

    r = parse("GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    ok(!gw_ws_is_upgrade(&r), "plain GET is not an upgrade");
    r = parse("GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocketx\r\n\r\n");
    ok(!gw_ws_is_upgrade(&r), "no partial token match");
}

struct refusal {
    const char *head;
    int status;
    const char *code;
    const char *what;
};

static void test_upgrade_refusals(void)
{
    static const struct refusal cases[] = {
        {"POST / HTTP/1.1\r\n" GOOD_HEADERS "\r\n", 405, "method_not_allowed", "POST"},
        {"get / HTTP/1.1\r\n" GOOD_HEADERS "\r\n", 405, "method_not_allowed", "lowercase get"},
        {"GET / HTTP/1.0\r\n" GOOD_HEADERS "\r\n", 400, "invalid_upgrade_request", "HTTP/1.0"},
        {"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
         400, "invalid_upgrade_request", "no Host"},
        {"GET / HTTP/1.1\r\nHost: b\r\n" GOOD_HEADERS "\r\n", 400, "invalid_upgrade_request", "two Host"},
        {"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
         400, "invalid_upgrade_request", "no Upgrade"},
        {"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
         400, "invalid_upgrade_request", "Upgrade h2c"},
        {"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n"
         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
         400, "invalid_upgrade_request", "no Connection"},
        {"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: keep-alive\r\n"
         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
         400, "invalid_upgrade_request", "Connection without upgrade"},
        {"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
         426, "unsupported_websocket_version", "no version"},
        {"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
         426, "unsupported_websocket_version", "version 8"},
        {"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13, 8\r\n\r\n",
         426, "unsupported_websocket_version", "version list 13, 8"},
        {"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Version: 8\r\n\r\n",
         426, "unsupported_websocket_version", "version on two lines"},
        {"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 013\r\n\r\n",
         426, "unsupported_websocket_version", "version 013"},
        {"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Version: 13\r\n\r\n",
         400, "invalid_websocket_key", "no key"},
        {"GET / HTTP/1.1\r\n" GOOD_HEADERS "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n", 400,
         "invalid_websocket_key", "key given twice"},
        {"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ\r\nSec-WebSocket-Version: 13\r\n\r\n",
         400, "invalid_websocket_key", "key without padding"},
        {"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=\r\nSec-WebSocket-Version: 13\r\n\r\n",
         400, "invalid_websocket_key", "key of 23 chars"},
        {"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==AAAA\r\nSec-WebSocket-Version: 13\r\n\r\n",
         400, "invalid_websocket_key", "key of 28 chars (20 bytes)"},
        {"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQAA\r\nSec-WebSocket-Version: 13\r\n\r\n",
         400, "invalid_websocket_key", "24 chars decoding to 18 bytes"},
        {"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25j*Q==\r\nSec-WebSocket-Version: 13\r\n\r\n",
         400, "invalid_websocket_key", "non-base64 char"},
        {"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: dGhlIHNhbXBs ZSBub25jQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
         400, "invalid_websocket_key", "space inside key"},
        {"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZ===\r\nSec-WebSocket-Version: 13\r\n\r\n",
         400, "invalid_websocket_key", "three padding chars"},
        {"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Key: \r\nSec-WebSocket-Version: 13\r\n\r\n",
         400, "invalid_websocket_key", "empty key"},
    };
    for (size_t i = 0; i < GW_ARRAY_LEN(cases); i++) {
        gw_http_req r = parse(cases[i].head);
        gw_ws_upgrade up;
        int st = 0;
        const char *code = NULL;
        int rc = gw_ws_check_upgrade(&r, &up, &st, &code);
        is_int(rc, GW_ERR, "%s refused", cases[i].what);
        is_int(st, cases[i].status, "%s status", cases[i].what);
        is_str(code, cases[i].code, "%s code", cases[i].what);
    }
}

static void test_select_protocol(void)
{
    static const char *const sup[] = {"superchat", "chat", "v2.proto", NULL};
    gw_http_req r = parse("GET / HTTP/1.1\r\nSec-WebSocket-Protocol: foo , bar\r\nX: y\r\n"
                          "sec-websocket-protocol: ,Chat, chat,superchat\r\n\r\n");
    gw_str p = gw_ws_select_protocol(&r, sup);
    ok(gw_str_eq(p, "chat"), "first supported in request order, across lines, case-sensitive");
    ok(p.p >= reqbuf && p.p + p.n <= reqbuf + sizeof reqbuf, "view into the request");

    r = parse("GET / HTTP/1.1\r\nSec-WebSocket-Protocol: v2.proto\r\nSec-WebSocket-Protocol: chat\r\n\r\n");
    ok(gw_str_eq(gw_ws_select_protocol(&r, sup), "v2.proto"), "first line wins");
    r = parse("GET / HTTP/1.1\r\nSec-WebSocket-Protocol: a, b\r\n\r\n");
    ok(gw_ws_select_protocol(&r, sup).n == 0, "nothing supported");
    r = parse("GET / HTTP/1.1\r\nSec-WebSocket-Protocol: superchatx, xchat\r\n\r\n");
    ok(gw_ws_select_protocol(&r, sup).n == 0, "no partial matches");
    r = parse("GET / HTTP/1.1\r\n\r\n");
    ok(gw_ws_select_protocol(&r, sup).n == 0, "no header");
    r = parse("GET / HTTP/1.1\r\nSec-WebSocket-Protocol: chat\r\n\r\n");
    ok(gw_ws_select_protocol(&r, NULL).n == 0, "NULL supported list");
}

static void test_join_header(void)
{
    gw_http_req r = parse("GET / HTTP/1.1\r\nSec-WebSocket-Extensions: a; x=1\r\nHost: h\r\n"
                          "sec-websocket-extensions: b\r\nSec-WebSocket-Extensions: c, d\r\n\r\n");
    char out[64];
    size_t n = gw_h1_join_header(&r, "Sec-WebSocket-Extensions", out, sizeof out);
    is_str(out, "a; x=1, b, c, d", "joined");
    is_int((long)n, 15, "length");
    n = gw_h1_join_header(&r, "Sec-WebSocket-Extensions", out, 9);
    is_str(out, "a; x=1, ", "truncated to cap - 1");
    is_int((long)n, 8, "truncated length");
    n = gw_h1_join_header(&r, "Sec-WebSocket-Extensions", out, 1);
    ok(n == 0 && out[0] == '\0', "cap 1: empty string");
    out[0] = 'z';
    n = gw_h1_join_header(&r, "Sec-WebSocket-Extensions", out, 0);
    ok(n == 0 && out[0] == 'z', "cap 0 writes nothing");
    n = gw_h1_join_header(&r, "Missing", out, sizeof out);
    ok(n == 0 && out[0] == '\0', "absent header");
}

static void test_client_request(void)
{
    char key[25], key2[25];
    gw_ws_client_key(key);
    gw_ws_client_key(key2);
    is_int((long)strlen(key), 24, "client key is 24 chars");
    ok(strcmp(key, key2) != 0, "two keys differ");

    char out[1024];
    size_t n = gw_ws_client_request(out, sizeof out, "up.example:9000", "/ws?a=1", key, "chat, superchat",
                                    "permessage-deflate; client_max_window_bits", "X-Correlation-ID: abc\r\n");
    ok(n > 0 && n == strlen(out), "request written");
    char want[1024];
    snprintf(want, sizeof want,
             "GET /ws?a=1 HTTP/1.1\r\nHost: up.example:9000\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: chat, superchat\r\n"
             "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\nX-Correlation-ID: abc\r\n\r\n",
             key);
    is_str(out, want, "exact request format");

    /* our own request passes our own server-side check */
    gw_http_req r;
    int st = 0;
    const char *code = NULL;
    is_int(gw_h1_parse_request(out, n, &r, hdrs, &lim, &st), (int)n, "request parses");
    gw_ws_upgrade up;
    is_int(gw_ws_check_upgrade(&r, &up, &st, &code), GW_OK, "and passes the server check");
    ok(gw_str_eq(up.key, key), "with our key");

    n = gw_ws_client_request(out, sizeof out, "h", "/", key, NULL, NULL, NULL);
    snprintf(want, sizeof want,
             "GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
             key);
    is_str(out, want, "minimal request");
    is_int((long)n, (long)strlen(want), "minimal length");
    is_int((long)gw_ws_client_request(out, strlen(want), "h", "/", key, NULL, NULL, NULL), 0, "cap one short -> 0");
    is_int((long)gw_ws_client_request(out, strlen(want) + 1, "h", "/", key, NULL, NULL, NULL), (long)strlen(want),
           "exact cap fits");
    is_int((long)gw_ws_client_request(out, sizeof out, "h\r\nX: y", "/", key, NULL, NULL, NULL), 0,
           "CRLF in host refused");
    is_int((long)gw_ws_client_request(out, sizeof out, "h", "/a b", key, NULL, NULL, NULL), 0, "SP in path refused");
    is_int((long)gw_ws_client_request(out, sizeof out, "h", "/", key, "a\nb", NULL, NULL), 0, "LF in protocols");
}

static gw_http_resp presp(const char *s, char *buf, gw_http_header *h)
{
    gw_http_resp r;
    int st = 0;
    strcpy(buf, s);
    int rc = gw_h1_parse_response(buf, strlen(buf), &r, h, &lim, &st);
    if (rc <= 0) {
        printf("# response fixture did not parse: %s\n", s);
        abort();
    }
    return r;
}

static void test_client_response(void)
{
    const char *key = "dGhlIHNhbXBsZSBub25jZQ==";
    char buf[1024];
    gw_http_header h[MAXH];
    const char *why = NULL;
    gw_http_resp r;

    r = presp("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
              buf, h);
    is_int(gw_ws_client_check_response(&r, key, NULL, &why), GW_OK, "valid 101");
    r = presp("HTTP/1.1 101 OK\r\nupgrade: WebSocket\r\nconnection: keep-alive, upgrade\r\n"
              "sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n\r\n",
              buf, h);
    is_int(gw_ws_client_check_response(&r, key, "superchat, chat", &why), GW_OK, "offered protocol selected");

    struct {
        const char *resp, *offered, *why, *what;
    } bad[] = {
        {"HTTP/1.1 200 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
         NULL, "status", "200 instead of 101"},
        {"HTTP/1.1 403 Forbidden\r\n\r\n", NULL, "status", "403"},
        {"HTTP/1.1 101 OK\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n", NULL,
         "upgrade", "no Upgrade"},
        {"HTTP/1.1 101 OK\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
         NULL, "upgrade", "Upgrade h2c"},
        {"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n", NULL,
         "upgrade", "no Connection"},
        {"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", NULL, "accept", "no Accept"},
        {"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo\r\n\r\n",
         NULL, "accept", "truncated Accept"},
        {"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Accept: S3PPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
         NULL, "accept", "Accept with wrong case"},
        {"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
         NULL, "accept", "two Accept headers"},
        {"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat\r\n\r\n",
         NULL, "protocol", "protocol when none offered"},
        {"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: other\r\n\r\n",
         "chat, superchat", "protocol", "protocol not offered"},
        {"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: chat, superchat\r\n\r\n",
         "chat, superchat", "protocol", "two protocols selected"},
        {"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: Chat\r\n\r\n",
         "chat", "protocol", "protocol differing in case"},
        {"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: cha\r\n\r\n",
         "chat", "protocol", "protocol prefix of an offer"},
    };
    for (size_t i = 0; i < GW_ARRAY_LEN(bad); i++) {
        r = presp(bad[i].resp, buf, h);
        why = NULL;
        is_int(gw_ws_client_check_response(&r, key, bad[i].offered, &why), GW_ERR, "%s refused", bad[i].what);
        is_str(why, bad[i].why, "%s reason", bad[i].what);
    }

    /* round trip with a fresh key */
    char k[25], acc[GW_WS_ACCEPT_LEN + 1], resp[256];
    gw_ws_client_key(k);
    gw_ws_accept_key(gw_str_make(k, strlen(k)), acc);
    snprintf(resp, sizeof resp,
             "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             "Sec-WebSocket-Accept: %s\r\n\r\n",
             acc);
    r = presp(resp, buf, h);
    is_int(gw_ws_client_check_response(&r, k, "chat", &why), GW_OK, "fresh key round trip");
}

int main(void)
{
    TEST_RUN(test_accept_key);
    TEST_RUN(test_upgrade_ok);
    TEST_RUN(test_upgrade_refusals);
    TEST_RUN(test_select_protocol);
    TEST_RUN(test_join_header);
    TEST_RUN(test_client_request);
    TEST_RUN(test_client_response);
    return test_done();
}

/* test_relay.c: the relay and HTTP proxy state machines (issue 9), driven
 * in one process on one loop: a listener hands accepted sockets to the
 * connection core (gw_client_accept with the HTTP phase) exactly as a worker
 * does; the routes send /relay and /api/ back to the same gateway (its echo
 * route and its own /healthz), so both legs of every relay and both sides of
 * every proxied exchange run through the code under test. A WebSocket
 * client (gw_wsc) and a raw HTTP socket play the client. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/common.h"
#include "loop/loop.h"
#include "echo/echo.h"
#include "log/log.h"
#include "net/sock.h"
#include "proxy/proxy.h"
#include "server/client.h"
#include "server/http_serve.h"
#include "server/state.h"
#include "server/ws_serve.h"
#include "test.h"

static gw_loop *L;
static gw_worker W;
static gw_io lis;
static uint16_t port, dead_port;

static const char *no_env(const char *name)
{
    GW_UNUSED(name);
    return NULL;
}

static void on_accept(gw_io *io, uint32_t events)
{
    GW_UNUSED(events);
    struct sockaddr_storage ss;
    int fd;
    while ((fd = gw_sock_accept(io->fd, &ss)) >= 0)
        gw_client_accept(&W, fd, &ss, 0, NULL, &gw_http_proto);
}

static int timed_out;
static void guard_cb(gw_timer *t)
{
    GW_UNUSED(t);
    timed_out = 1;
    gw_loop_stop(L);
}

/* Runs the loop until a callback stops it or ms pass. */
static void run(uint64_t ms)
{
    gw_timer g = {.cb = guard_cb};
    timed_out = 0;
    gw_timer_start_at(L, &g, gw_mono_ms() + ms);
    gw_loop_run(L);
    gw_timer_stop(L, &g);
}

static int setup(void)
{
    char err[512];
    if (gw_config_load(&gw_srv.cfg, no_env, err, sizeof err) != GW_OK) {
        printf("# config: %s\n", err);
        return GW_ERR;
    }
    gw_srv.cfg.ws_ping_interval_ms = 0; /* no heartbeats in a short test */
    gw_srv.limits.max_request_line = gw_srv.cfg.max_request_line;
    gw_srv.limits.max_head = gw_srv.cfg.max_header_bytes;
    gw_srv.limits.max_headers = 128;
    gw_srv.m_ws_connections = gw_metric_get("ws_connections", GW_METRIC_GAUGE, "t", NULL);
    gw_srv.m_conns_public = gw_metric_get("wsgate_connections", GW_METRIC_GAUGE, "t", "listener=\"public\"");
    gw_srv.m_conns_admin = gw_metric_get("wsgate_connections", GW_METRIC_GAUGE, "t", "listener=\"admin\"");
    gw_srv.m_accepted_public = gw_metric_get("wsgate_accepted", GW_METRIC_COUNTER, "t", "listener=\"public\"");
    gw_srv.m_accepted_admin = gw_metric_get("wsgate_accepted", GW_METRIC_COUNTER, "t", "listener=\"admin\"");
    gw_srv.m_tls_fail = gw_metric_get("wsgate_tls_fail", GW_METRIC_COUNTER, "t", NULL);
    pthread_mutex_init(&gw_srv.routes_mu, NULL);

    L = gw_loop_new();
    W.loop = L;
    gw_list_init(&W.clients);
    gw_list_init(&W.lingering);
    gw_list_init(&W.idle);

    gw_addr a;
    gw_parse_addr("127.0.0.1:0", &a);
    int fd = gw_sock_listen(&a, 0, 128, err, sizeof err);
    if (fd < 0)
        return GW_ERR;
    port = gw_sock_local_port(fd);
    lis.fd = fd;
    lis.cb = on_accept;
    gw_io_start(L, &lis, GW_EV_READ);
    /* A port nobody listens on: bound, then closed. */
    int dfd = gw_sock_listen(&a, 0, 1, err, sizeof err);
    dead_port = gw_sock_local_port(dfd);
    close(dfd);

    gw_kind_register(&gw_kind_echo);
    gw_kind_register(&gw_kind_proxy);
    char routes[1024], path[] = "/tmp/wsgate-test-relay-XXXXXX";
    snprintf(routes, sizeof routes,
             "{\"routes\":[{\"path\":\"/e/\",\"kind\":\"echo\"},"
             "{\"path\":\"/relay\",\"kind\":\"proxy\",\"upstream\":\"http://127.0.0.1:%u/e\"},"
             "{\"path\":\"/nowhere\",\"kind\":\"proxy\",\"upstream\":\"http://127.0.0.1:%u/x\"},"
             "{\"path\":\"/dead\",\"kind\":\"proxy\",\"upstream\":\"http://127.0.0.1:%u/\"},"
             "{\"path\":\"/api/\",\"kind\":\"proxy\",\"strip_prefix\":true,\"upstream\":\"http://127.0.0.1:%u\"}]}",
             port, port, dead_port, port);
    int rfd = mkstemp(path);
    if (rfd < 0 || write(rfd, routes, strlen(routes)) != (ssize_t)strlen(routes))
        return GW_ERR;
    close(rfd);
    gw_srv.routes = gw_routes_load(path, &gw_srv.cfg, err, sizeof err);
    unlink(path);
    if (!gw_srv.routes) {
        printf("# routes: %s\n", err);
        return GW_ERR;
    }
    return GW_OK;
}

/* =============================== WebSocket relay ============================ */

typedef struct wres {
    int opened, closed, nmsgs;
    char last[64];
    int status;
    gw_wsc_reason r;
    gw_wsc *c;
    int close_after_echo; /* 0: the test closes; else our Close code after the echo */
} wres;

static void w_open(gw_wsc *c, const char *sub, const gw_wsc_response *resp)
{
    GW_UNUSED(sub);
    wres *res = gw_wsc_data(c);
    res->opened++;
    res->status = resp->head.status;
    gw_wsc_send(c, GW_WS_OP_TEXT, (const uint8_t *)"hello relay", 11);
}

static void w_message(gw_wsc *c, int opcode, uint8_t *p, size_t n)
{
    GW_UNUSED(opcode);
    wres *res = gw_wsc_data(c);
    res->nmsgs++;
    snprintf(res->last, sizeof res->last, "%.*s", (int)n, (const char *)p);
    if (res->close_after_echo)
        gw_wsc_close(c, (unsigned)res->close_after_echo, "bye");
}

static void w_close(gw_wsc *c, const gw_wsc_reason *r)
{
    wres *res = gw_wsc_data(c);
    res->closed++;
    res->r = *r;
    res->r.resp = NULL;
    if (r->resp)
        res->status = r->resp->head.status;
    gw_wsc_free(c);
    res->c = NULL;
    gw_loop_stop(L);
}

static const gw_wsc_cbs wcbs = {w_open, w_message, NULL, NULL, w_close};

static void ws_to(wres *res, const char *path)
{
    char url[128], err[256];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u%s", port, path);
    gw_wsc_opts o = {.timeout_ms = 5000, .max_msg = 1 << 20};
    res->c = gw_wsc_connect(L, url, NULL, &o, &wcbs, res, err, sizeof err);
    if (!res->c)
        printf("# connect: %s\n", err);
}

/* Waits until every client and every lingering upstream leg is gone. */
static int settle(void)
{
    for (int i = 0; i < 100 && (W.nclients || W.nlingering); i++)
        run(20);
    return W.nclients == 0 && W.nlingering == 0;
}

static void test_relay_round_trip(void)
{
    wres res = {.close_after_echo = 4001};
    ws_to(&res, "/relay");
    run(5000);
    ok(!timed_out, "the relayed session ended");
    is_int(res.opened, 1, "the relay opened once the upstream (the echo route) accepted");
    is_int(res.status, 101, "101 to the client");
    is_int(res.nmsgs, 1, "one message came back");
    is_str(res.last, "hello relay", "through both legs and back");
    is_int(res.r.kind, GW_WSC_CLOSED_LOCALLY, "our close completed");
    is_int((int)res.r.peer_code, 4001, "the gateway answered our close with our code (carried to the upstream and back)");
    ok(settle(), "no client and no orphaned upstream leg is left (nclients %u, lingering %u)", W.nclients,
       W.nlingering);
}

/* A burst through the relay: many messages sent at once (text and binary,
 * empty to 70,000 bytes, a ping among them) cross both legs in runs and in
 * pieces, and come back in order, bytes exact. */
#define BURST_N 300

typedef struct bres {
    int got, bad, opened;
    gw_wsc_reason r;
} bres;

static size_t burst_size(int i) { return i % 50 == 7 ? 70000 : (size_t)(i * 37) % 300; }
static int burst_op(int i) { return i % 5 == 0 ? GW_WS_OP_TEXT : GW_WS_OP_BINARY; }
static uint8_t burst_byte(int i, size_t j) { return (uint8_t)('a' + (i + (int)(j % 26)) % 26); }

static void b_open(gw_wsc *c, const char *sub, const gw_wsc_response *resp)
{
    GW_UNUSED(sub);
    GW_UNUSED(resp);
    bres *res = gw_wsc_data(c);
    res->opened = 1;
    static uint8_t buf[70000];
    for (int i = 0; i < BURST_N; i++) {
        size_t n = burst_size(i);
        for (size_t j = 0; j < n; j++)
            buf[j] = burst_byte(i, j);
        gw_wsc_send(c, burst_op(i), buf, n);
        if (i == BURST_N / 2)
            gw_wsc_ping(c, (const uint8_t *)"mid", 3);
    }
}

static void b_message(gw_wsc *c, int opcode, uint8_t *p, size_t n)
{
    bres *res = gw_wsc_data(c);
    int i = res->got++;
    int good = i < BURST_N && opcode == burst_op(i) && n == burst_size(i);
    for (size_t j = 0; good && j < n; j++)
        good = p[j] == burst_byte(i, j);
    res->bad += !good;
    if (res->got == BURST_N)
        gw_wsc_close(c, 1000, "done");
}

static void b_close(gw_wsc *c, const gw_wsc_reason *r)
{
    bres *res = gw_wsc_data(c);
    res->r = *r;
    res->r.resp = NULL;
    gw_wsc_free(c);
    gw_loop_stop(L);
}

static void test_relay_burst(void)
{
    static const gw_wsc_cbs bcbs = {b_open, b_message, NULL, NULL, b_close};
    bres res = {0};
    char url[128], err[256];
    snprintf(url, sizeof url, "ws://127.0.0.1:%u/relay", port);
    gw_wsc_opts o = {.timeout_ms = 5000, .max_msg = 1 << 20};
    gw_wsc *c = gw_wsc_connect(L, url, NULL, &o, &bcbs, &res, err, sizeof err);
    ok(c != NULL, "connect: %.100s", c ? "" : err);
    run(10000);
    ok(!timed_out && res.opened, "the relayed burst ended");
    is_int(res.got, BURST_N, "every message came back");
    is_int(res.bad, 0, "in order, opcode and bytes exact");
    is_int(res.r.kind, GW_WSC_CLOSED_LOCALLY, "our close completed");
    ok(settle(), "nothing left behind");
}

static void test_relay_refused(void)
{
    wres res = {0};
    ws_to(&res, "/nowhere");
    run(5000);
    ok(!timed_out && res.closed == 1, "the refused relay ended");
    is_int(res.opened, 0, "never opened");
    is_int(res.r.kind, GW_WSC_HTTP_REFUSED, "an HTTP refusal");
    is_int(res.status, 404, "the upstream's own status is passed back");
    ok(settle(), "nothing left behind");
}

static void test_relay_unavailable(void)
{
    wres res = {0};
    ws_to(&res, "/dead");
    run(5000);
    ok(!timed_out && res.closed == 1, "the relay to a dead upstream ended");
    is_int(res.r.kind, GW_WSC_HTTP_REFUSED, "answered with HTTP");
    is_int(res.status, 502, "502 upstream_unavailable");
    ok(settle(), "nothing left behind");
}

/* ================================ HTTP proxy ================================ */

typedef struct hres {
    gw_io io;
    char buf[4096];
    size_t len;
    int eof;
    size_t want; /* stop once this many responses' worth arrived (by "HTTP/1.1 " count) */
} hres;

static size_t count(const char *s, const char *needle)
{
    size_t n = 0;
    for (const char *p = strstr(s, needle); p; p = strstr(p + 1, needle))
        n++;
    return n;
}

static void h_io(gw_io *io, uint32_t events)
{
    GW_UNUSED(events);
    hres *h = gw_container_of(io, hres, io);
    for (;;) {
        ssize_t r = read(io->fd, h->buf + h->len, sizeof h->buf - 1 - h->len);
        if (r > 0) {
            h->len += (size_t)r;
            h->buf[h->len] = '\0';
            continue;
        }
        if (r == 0)
            h->eof = 1;
        break;
    }
    if (h->eof || (h->want && count(h->buf, "\r\n\r\nok\n") >= h->want))
        gw_loop_stop(L);
}

static int http_exchange(hres *h, const char *req, size_t want)
{
    char err[256];
    gw_addr a;
    char where[64];
    snprintf(where, sizeof where, "127.0.0.1:%u", port);
    gw_parse_addr(where, &a);
    int fd = gw_sock_connect(&a, err, sizeof err);
    if (fd < 0)
        return GW_ERR;
    memset(h, 0, sizeof *h);
    h->want = want;
    h->io.fd = fd;
    h->io.cb = h_io;
    gw_io_start(L, &h->io, GW_EV_READ);
    run(50); /* connected */
    if (write(fd, req, strlen(req)) != (ssize_t)strlen(req))
        return GW_ERR;
    run(5000);
    return GW_OK;
}

static void http_close(hres *h)
{
    gw_io_stop(L, &h->io);
    close(h->io.fd);
}

static void test_proxy_exchange(void)
{
    hres h;
    ok(http_exchange(&h, "GET /api/healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", 0) == GW_OK,
       "request sent");
    ok(h.eof, "the client connection ended after Connection: close");
    ok(strncmp(h.buf, "HTTP/1.1 200", 12) == 0, "200 from the upstream (the gateway's /healthz): %.12s", h.buf);
    ok(strstr(h.buf, "\r\n\r\nok\n") != NULL, "its body");
    http_close(&h);
    gw_worker_free_idle(&W); /* the pooled upstream connection, and so its server side */
    ok(settle(), "nothing left behind");
}

static void test_proxy_keepalive_pool(void)
{
    hres h;
    http_exchange(&h,
                  "GET /api/healthz HTTP/1.1\r\nHost: t\r\n\r\n"
                  "GET /api/healthz HTTP/1.1\r\nHost: t\r\n\r\n",
                  2);
    ok(!timed_out, "two pipelined requests answered");
    is_int((int)count(h.buf, "HTTP/1.1 200"), 2, "two 200s, in order, on one connection");
    ok(!gw_list_empty(&W.idle), "the upstream connection went back to the worker's pool");
    http_close(&h);
    run(100);
    gw_worker_free_idle(&W);
    ok(gw_list_empty(&W.idle), "draining closes the pooled connections");
    ok(settle(), "nothing left behind");
}

static void test_proxy_unavailable(void)
{
    hres h;
    http_exchange(&h, "GET /dead HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", 0);
    ok(strncmp(h.buf, "HTTP/1.1 502", 12) == 0 && strstr(h.buf, "upstream_unavailable"),
       "a dead upstream is a 502 with the error envelope: %.12s", h.buf);
    http_close(&h);
    ok(settle(), "nothing left behind");
}

int main(void)
{
    gw_log_init(GW_LOG_FORMAT_JSON, GW_LOG_ERROR, "test", 2);
    if (setup() != GW_OK) {
        ok(0, "setup");
        return test_done();
    }
    TEST_RUN(test_relay_round_trip);
    TEST_RUN(test_relay_burst);
    TEST_RUN(test_relay_refused);
    TEST_RUN(test_relay_unavailable);
    TEST_RUN(test_proxy_exchange);
    TEST_RUN(test_proxy_keepalive_pool);
    TEST_RUN(test_proxy_unavailable);
    gw_io_stop(L, &lis);
    close(lis.fd);
    gw_worker_free_lingering(&W);
    run(50);
    gw_routes_unref(gw_srv.routes);
    gw_loop_free(L);
    gw_conn_thread_exit();
    gw_ws_thread_exit();
    return test_done();
}

/* probe.c: `wsgate probe` (see probe.h and DESIGN.md section 9).
 *
 * One loop, one thread. Each leg is a small state machine:
 *   WebSocket leg: CONNECTING (gw_wsc) -> UP (ping every interval, an echo
 *   deadline armed while a ping is unanswered) -> a drop (reason counted,
 *   logged) -> WAIT (back-off) -> CONNECTING ...
 *   HTTP leg: a GET every interval (or after the back-off when the last one
 *   failed); 2xx = up.
 * The back-off after a drop is min(backoff x attempts, 10 x backoff) with
 * backoff 3 s by default, i.e. DESIGN's min(3 x attempts, 30) s; attempts
 * counts consecutive failures and is reset by a successful echo. */
#include "probe/probe.h"

#include <errno.h>
#include <arpa/inet.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "config/config.h"
#include "core/alloc.h"
#include "core/common.h"
#include "core/list.h"
#include "http/h1_parse.h"
#include "log/log.h"
#include "loop/loop.h"
#include "metrics/metrics.h"
#include "net/conn.h"
#include "net/sock.h"
#include "upstream/ws_client.h"

const char gw_probe_usage[] =
    "Usage: wsgate probe --leg NAME=URL [--leg NAME=URL ...] [--listen HOST:PORT] [--interval 10s]\n"
    "                    [--timeout 20s] [--backoff 3s] [--ca-file PEM] [--insecure]\n"
    "\n"
    "A synthetic monitor. Each leg holds one permanent WebSocket to an echo endpoint\n"
    "(the gateway's /probe/ws), sends \"ping <monotonic ns>\" every interval and measures\n"
    "the round trip from the echo. A drop is counted, with a reason, when:\n"
    "  rtt_timeout      no echo within the timeout\n"
    "  connect_failed   the connection (or its TLS handshake / WebSocket upgrade) failed\n"
    "  connect_timeout  connect + TLS + upgrade did not finish within the timeout\n"
    "  io_error         reset, read/write error, or EOF without a close frame\n"
    "  closed_<code>    the server sent a close frame with that code (closed_1000, ...)\n"
    "  http_<status>    the server refused the upgrade with that HTTP status (http_404, ...)\n"
    "After a drop it reconnects after min(backoff x attempts, 10 x backoff), i.e.\n"
    "min(3 x attempts, 30) s by default; attempts counts consecutive failures and is reset\n"
    "by a successful echo.\n"
    "A leg URL http://host:port/path (or https://) is a plain HTTP check instead: a GET each\n"
    "interval, 2xx = up; failures count with http_<status>, connect_failed, connect_timeout,\n"
    "io_error, or rtt_timeout (no response within the timeout).\n"
    "URLs: ws://host:port/path, wss://host:port/path (TLS, SNI, certificate verified),\n"
    "unix:/path/to.sock:/ws-path, http://..., https://...\n"
    "\n"
    "Options (each also from the environment; flags win):\n"
    "  --leg NAME=URL      a leg; repeatable            PROBE_LEGS=\"name=url,name2=url2\"\n"
    "  --listen HOST:PORT  metrics listener (:9108)     PROBE_LISTEN\n"
    "  --interval DUR      ping / check interval (10s)  PROBE_INTERVAL\n"
    "  --timeout DUR       echo and connect timeout (20s) PROBE_TIMEOUT\n"
    "  --backoff DUR       back-off unit (3s); cap 10x  PROBE_BACKOFF\n"
    "  --ca-file PEM       extra trusted CAs for wss/https  PROBE_CA_FILE\n"
    "  --insecure          skip certificate verification  PROBE_INSECURE=1\n"
    "Durations: 250ms, 10s, 5m, 1h, or a bare number of seconds.\n"
    "\n"
    "Metrics listener: GET /metrics (Prometheus text) and GET /healthz.\n"
    "  wsgate_probe_connected{leg}                       1 while the leg is up\n"
    "  wsgate_probe_disconnects_total{leg,reason}        drops by reason\n"
    "  wsgate_probe_rtt_seconds{leg}                     histogram of echo round trips\n"
    "  wsgate_probe_connection_age_seconds{leg}          histogram, observed at each drop\n"
    "  wsgate_probe_last_disconnect_timestamp{leg}       unix seconds of the last drop\n"
    "Logs: one JSON line per drop: msg \"probe disconnect\" with leg, reason, age_s,\n"
    "last_rtt_ms (-1 before any echo), age_ms and error.\n"
    "SIGTERM/SIGINT stop the probe (exit 0).\n";

#define MAX_LEGS 64
#define RING 64          /* unanswered pings remembered per leg */
#define HTTP_MAX_HEAD (16u * 1024)

enum leg_state { LEG_WAIT, LEG_CONNECTING, LEG_UP };
enum http_state { H_IDLE, H_CONNECTING, H_TLS, H_READING };

typedef struct leg {
    char name[64];
    char url[1024];
    gw_wsc_target t;
    int state;
    int attempts;              /* consecutive failures */
    uint64_t up_since_ms;      /* when the leg came up (valid in LEG_UP) */
    double last_rtt_ms;        /* -1 before the first echo */
    gw_wsc *wsc;
    gw_timer tick;             /* next ping, next check, or next reconnect */
    gw_timer deadline;         /* echo (or HTTP response) deadline */
    uint64_t ring[RING];       /* send times (ns) of unanswered pings, oldest first */
    unsigned ring_head, ring_len;
    /* HTTP check */
    gw_conn hc;
    int hstate;
    uint64_t hstart_ns;
    /* metrics */
    gw_metric *m_connected, *m_rtt, *m_age, *m_last;
    char label[160];           /* leg="name" */
} leg;

static struct {
    gw_loop *loop;
    leg legs[MAX_LEGS];
    int nlegs;
    uint64_t interval_ms, timeout_ms, backoff_ms;
    gw_addr listen;
    char ca_file[4096];
    int insecure;
    void *tls_ctx;  /* shared by the legs (wss and https) */
    gw_io lio;      /* metrics listener */
    gw_io sigio;    /* signalfd */
    gw_list mconns; /* open metrics connections */
} P;

static const double rtt_buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                     0.1,    0.25,  0.5,    1,     2.5,  5,    10};
static const double age_buckets[] = {1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 21600, 43200, 86400, 604800};

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void leg_connect(leg *g);
static void http_check(leg *g);
static void http_finish(leg *g);

/* ================================ drops ===================================== */

static void schedule(leg *g, uint64_t after_ms)
{
    gw_timer_start_at(P.loop, &g->tick, gw_mono_ms() + after_ms);
}

/* Counts one failure with reason and schedules the next attempt. */
static void leg_drop(leg *g, const char *reason, const char *error)
{
    uint64_t now = gw_mono_ms();
    double age = 0;
    if (g->state == LEG_UP) {
        age = (double)(now - g->up_since_ms) / 1000.0;
        gw_histogram_observe(g->m_age, age);
        gw_gauge_set(g->m_connected, 0);
    }
    char labels[320], esc[96];
    gw_metrics_label_escape(reason, esc, sizeof esc);
    snprintf(labels, sizeof labels, "%s,reason=\"%s\"", g->label, esc);
    gw_counter_inc(gw_metric_get("wsgate_probe_disconnects_total", GW_METRIC_COUNTER,
                                 "Probe leg drops and failed attempts, by reason.", labels));
    gw_gauge_set(g->m_last, (int64_t)(gw_wall_ms() / 1000));

    gw_log_line *l = gw_log_begin(GW_LOG_WARN, "probe disconnect", NULL);
    if (l) {
        gw_log_str(l, "leg", g->name, 0);
        gw_log_str(l, "reason", reason, 0);
        gw_log_int(l, "age_s", (int64_t)age, 0);
        gw_log_int(l, "age_ms", (int64_t)(age * 1000.0), GW_LOG_JSON_ONLY);
        gw_log_int(l, "last_rtt_ms", g->last_rtt_ms < 0 ? -1 : (int64_t)(g->last_rtt_ms + 0.5), 0);
        gw_log_int(l, "attempts", g->attempts + 1, GW_LOG_JSON_ONLY);
        if (error && *error)
            gw_log_str(l, "error", error, GW_LOG_JSON_ONLY);
        gw_log_str(l, "url", g->url, GW_LOG_JSON_ONLY);
        gw_log_end(l);
    }

    g->state = LEG_WAIT;
    g->ring_len = 0;
    gw_timer_stop(P.loop, &g->deadline);
    g->attempts++;
    uint64_t delay = GW_MIN(P.backoff_ms * (uint64_t)g->attempts, P.backoff_ms * 10);
    schedule(g, delay);
}

static void leg_up(leg *g)
{
    if (g->state != LEG_UP) {
        g->state = LEG_UP;
        g->up_since_ms = gw_mono_ms();
        gw_gauge_set(g->m_connected, 1);
    }
}

static void observe_rtt(leg *g, uint64_t rtt_ns)
{
    g->last_rtt_ms = (double)rtt_ns / 1e6;
    gw_histogram_observe(g->m_rtt, (double)rtt_ns / 1e9);
    g->attempts = 0;
}

/* ============================== WebSocket legs ============================== */

static void arm_deadline(leg *g)
{
    if (!g->ring_len) {
        gw_timer_stop(P.loop, &g->deadline);
        return;
    }
    uint64_t oldest_ns = g->ring[g->ring_head];
    uint64_t now_ns = mono_ns();
    uint64_t elapsed_ms = now_ns > oldest_ns ? (now_ns - oldest_ns) / 1000000u : 0;
    uint64_t left = elapsed_ms >= P.timeout_ms ? 0 : P.timeout_ms - elapsed_ms;
    gw_timer_start_at(P.loop, &g->deadline, gw_mono_ms() + left);
}

static void send_ping(leg *g)
{
    uint64_t ns = mono_ns();
    char msg[40];
    int n = snprintf(msg, sizeof msg, "ping %" PRIu64, ns);
    if (gw_wsc_send(g->wsc, GW_WS_OP_TEXT, (const uint8_t *)msg, (size_t)n) != GW_OK)
        return; /* the client reports the failure through on_close */
    if (g->ring_len < RING) {
        g->ring[(g->ring_head + g->ring_len) % RING] = ns;
        g->ring_len++;
    }
    if (!gw_timer_active(&g->deadline))
        arm_deadline(g);
}

static void ws_open(gw_wsc *c, const char *sub, const gw_wsc_response *resp)
{
    GW_UNUSED(sub);
    GW_UNUSED(resp);
    leg *g = gw_wsc_data(c);
    leg_up(g);
    g->ring_len = 0;
    gw_log_line *l = gw_log_begin(GW_LOG_INFO, "probe connected", NULL);
    if (l) {
        gw_log_str(l, "leg", g->name, 0);
        gw_log_str(l, "url", g->url, GW_LOG_JSON_ONLY);
        gw_log_end(l);
    }
    send_ping(g);
    schedule(g, P.interval_ms);
}

static void ws_message(gw_wsc *c, int opcode, uint8_t *p, size_t n)
{
    leg *g = gw_wsc_data(c);
    uint64_t now = mono_ns();
    if (opcode != GW_WS_OP_TEXT || n < 6 || n > 30 || memcmp(p, "ping ", 5) != 0)
        return;
    char tmp[32];
    memcpy(tmp, p + 5, n - 5);
    tmp[n - 5] = '\0';
    char *end;
    errno = 0;
    unsigned long long sent = strtoull(tmp, &end, 10);
    if (*end || errno || sent > now)
        return;
    observe_rtt(g, now - sent);
    /* Echoes come back in order: everything sent up to this one is answered. */
    while (g->ring_len && g->ring[g->ring_head] <= sent) {
        g->ring_head = (g->ring_head + 1) % RING;
        g->ring_len--;
    }
    arm_deadline(g);
}

static void ws_close(gw_wsc *c, const gw_wsc_reason *r)
{
    leg *g = gw_wsc_data(c);
    char reason[32];
    switch (r->kind) {
    case GW_WSC_CONNECT_TIMEOUT:
        snprintf(reason, sizeof reason, "connect_timeout");
        break;
    case GW_WSC_HTTP_REFUSED:
        snprintf(reason, sizeof reason, "http_%d", r->status);
        break;
    case GW_WSC_CLOSED_BY_PEER:
        snprintf(reason, sizeof reason, "closed_%u", r->code);
        break;
    case GW_WSC_IO_ERROR:
    case GW_WSC_FAILED:
    case GW_WSC_CLOSED_LOCALLY:
        snprintf(reason, sizeof reason, "io_error");
        break;
    default: /* connect failed, TLS failed, bad handshake: the leg never came up */
        snprintf(reason, sizeof reason, "connect_failed");
        break;
    }
    char error[320];
    snprintf(error, sizeof error, "%s: %s", gw_wsc_end_str(r->kind), r->text);
    gw_wsc_free(c);
    g->wsc = NULL;
    gw_timer_stop(P.loop, &g->tick);
    leg_drop(g, reason, error);
}

static const gw_wsc_cbs ws_cbs = {ws_open, ws_message, NULL, NULL, ws_close};

static void deadline_cb(gw_timer *t)
{
    leg *g = gw_container_of(t, leg, deadline);
    if (g->t.is_http) {
        if (g->hstate != H_IDLE) {
            int connecting = g->hstate != H_READING;
            http_finish(g);
            char error[64];
            snprintf(error, sizeof error, "no %s within %" PRIu64 " ms", connecting ? "connection" : "response",
                     P.timeout_ms);
            leg_drop(g, connecting ? "connect_timeout" : "rtt_timeout", error);
        }
        return;
    }
    if (g->state != LEG_UP || !g->wsc)
        return;
    char error[96];
    snprintf(error, sizeof error, "no echo within %" PRIu64 " ms", P.timeout_ms);
    gw_wsc_free(g->wsc);
    g->wsc = NULL;
    gw_timer_stop(P.loop, &g->tick);
    leg_drop(g, "rtt_timeout", error);
}

static void leg_connect(leg *g)
{
    gw_wsc_opts o = {0};
    o.timeout_ms = P.timeout_ms;
    o.close_wait_ms = 1000;
    o.tls_ctx = P.tls_ctx;
    o.headers = "User-Agent: wsgate-probe\r\n";
    char err[256];
    g->state = LEG_CONNECTING;
    g->wsc = gw_wsc_connect(P.loop, NULL, &g->t, &o, &ws_cbs, g, err, sizeof err);
    if (!g->wsc)
        leg_drop(g, "connect_failed", err);
}

/* ================================ HTTP legs ================================= */

static void http_finish(leg *g)
{
    gw_timer_stop(P.loop, &g->deadline);
    if (g->hstate != H_IDLE)
        gw_conn_close(&g->hc);
    g->hstate = H_IDLE;
}

static void http_fail(leg *g, const char *reason, const char *error)
{
    http_finish(g);
    leg_drop(g, reason, error);
}

static void http_send(leg *g)
{
    char req[4096];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: wsgate-probe\r\nAccept: */*\r\n"
                     "Connection: close\r\n\r\n",
                     g->t.path, g->t.host_header);
    if (n < 0 || (size_t)n >= sizeof req || gw_conn_write(&g->hc, req, (size_t)n) != GW_OK) {
        http_fail(g, "io_error", "cannot send the request");
        return;
    }
    g->hstate = H_READING;
    gw_conn_want_read(&g->hc, 1);
}

/* The HTTP leg's reader: the response head decides the check. */
static size_t http_rcv(gw_conn *conn, uint8_t *p, size_t n)
{
    leg *g = gw_container_of(conn, leg, hc);
    gw_http_header hdrs[64];
    gw_http_resp resp;
    gw_h1_limits lim = {8192, HTTP_MAX_HEAD, 64};
    int st;
    int h = gw_h1_parse_response((const char *)p, n, &resp, hdrs, &lim, &st);
    if (h == GW_AGAIN)
        return 0; /* kept in hc.in until the head is whole */
    if (h < 0) {
        http_fail(g, "io_error", "malformed response head");
        return n;
    }
    int status = resp.status;
    http_finish(g);
    if (status >= 200 && status < 300) {
        leg_up(g);
        observe_rtt(g, mono_ns() - g->hstart_ns);
        schedule(g, P.interval_ms);
    } else {
        char reason[16], e[64];
        snprintf(reason, sizeof reason, "http_%d", status);
        snprintf(e, sizeof e, "HTTP status %d", status);
        leg_drop(g, reason, e);
    }
    return n;
}

static size_t http_max_input(gw_conn *conn)
{
    GW_UNUSED(conn);
    return HTTP_MAX_HEAD + 4096;
}

static const gw_conn_reader http_reader = {http_rcv, http_max_input, NULL};

static void http_read(leg *g)
{
    while (g->hstate == H_READING) {
        int filled;
        ssize_t r = gw_conn_read_into(&g->hc, &http_reader, &filled);
        if (r == GW_AGAIN)
            return;
        if (r == GW_CONN_FULL) {
            http_fail(g, "io_error", "response head too large");
            return;
        }
        if (r <= 0) {
            char e[128];
            snprintf(e, sizeof e, "%s before the response head", r == 0 ? "EOF" : strerror(g->hc.err));
            http_fail(g, "io_error", e);
            return;
        }
    }
}

static void http_tls_step(leg *g)
{
    int r = gw_conn_handshake(&g->hc);
    if (r == GW_ERR)
        http_fail(g, "connect_failed", "TLS handshake failed");
    else if (r == GW_OK)
        http_send(g);
}

static void http_io(gw_io *io, uint32_t events)
{
    leg *g = gw_container_of(io, leg, hc.io);
    switch (g->hstate) {
    case H_CONNECTING: {
        int soerr = gw_sock_connect_result(io->fd);
        if (soerr) {
            char e[128];
            snprintf(e, sizeof e, "connect: %s", strerror(soerr));
            http_fail(g, "connect_failed", e);
            return;
        }
        gw_conn_connected(&g->hc);
        if (g->t.tls) {
            /* An IP literal: no SNI, checked against the certificate's IPs. */
            struct in6_addr a6;
            int is_ip = inet_pton(AF_INET, g->t.sni, &a6) == 1 || inet_pton(AF_INET6, g->t.sni, &a6) == 1;
            if (gw_conn_tls(&g->hc, P.tls_ctx, 0, is_ip ? NULL : g->t.sni) != GW_OK) {
                http_fail(g, "connect_failed", "cannot create a TLS session");
                return;
            }
            if (is_ip)
                X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param((SSL *)g->hc.ssl), g->t.sni);
            g->hstate = H_TLS;
            http_tls_step(g);
            return;
        }
        http_send(g);
        return;
    }
    case H_TLS:
        http_tls_step(g);
        return;
    case H_READING:
        if ((events & GW_EV_WRITE) || (g->hc.flags & GW_CONN_F_TLS_WR)) {
            if (gw_conn_flush(&g->hc) == GW_ERR) {
                http_fail(g, "io_error", "write failed");
                return;
            }
        }
        if (events & (GW_EV_READ | GW_EV_ERROR))
            http_read(g);
        return;
    default:
        return;
    }
}

static void http_check(leg *g)
{
    char err[256];
    g->hstart_ns = mono_ns();
    int fd = gw_sock_connect(&g->t.addr, err, sizeof err);
    if (fd < 0) {
        leg_drop(g, "connect_failed", err);
        return;
    }
    gw_conn_init(&g->hc, P.loop, fd, http_io);
    g->hstate = H_CONNECTING;
    gw_conn_await_connect(&g->hc);
    gw_timer_start_at(P.loop, &g->deadline, gw_mono_ms() + P.timeout_ms);
}

/* ================================= ticks ==================================== */

static void tick_cb(gw_timer *t)
{
    leg *g = gw_container_of(t, leg, tick);
    if (g->t.is_http) {
        if (g->hstate == H_IDLE)
            http_check(g);
        return;
    }
    if (g->state == LEG_WAIT) {
        leg_connect(g);
        return;
    }
    if (g->state == LEG_UP && g->wsc) {
        send_ping(g);
        schedule(g, P.interval_ms);
    }
}

/* ============================ metrics listener ============================== */

typedef struct mconn {
    gw_list node; /* on P.mconns while open */
    gw_conn conn;
    gw_task task;
    gw_timer timer;
    int done;
} mconn;

static void mconn_free_task(gw_task *t)
{
    mconn *m = gw_container_of(t, mconn, task);
    gw_free(m);
}

static void mconn_close(mconn *m)
{
    if (m->done)
        return;
    m->done = 1;
    gw_list_remove(&m->node);
    gw_timer_stop(P.loop, &m->timer);
    gw_conn_close(&m->conn);
    m->task.fn = mconn_free_task;
    gw_loop_defer(P.loop, &m->task);
}

static void mconn_timer(gw_timer *t) { mconn_close(gw_container_of(t, mconn, timer)); }

static void mconn_respond(mconn *m, int status, const char *ctype, const void *body, size_t n)
{
    const char *text = status == 200 ? "OK" : status == 404 ? "Not Found" : status == 405 ? "Method Not Allowed"
                                                                                           : "Bad Request";
    char head[256];
    int hn = snprintf(head, sizeof head,
                      "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n", status,
                      text, ctype, n);
    struct iovec iov[2] = {{head, (size_t)hn}, {(void *)body, n}};
    gw_conn_writev(&m->conn, iov, n ? 2 : 1);
    int rc = gw_conn_flush(&m->conn);
    if (rc != GW_AGAIN) {
        mconn_close(m);
        return;
    }
    gw_conn_want_read(&m->conn, 0);
}

/* The metrics listener's reader: one request, one answer. */
static size_t mconn_rcv(gw_conn *conn, uint8_t *p, size_t n)
{
    mconn *m = gw_container_of(conn, mconn, conn);
    gw_http_header hdrs[64];
    gw_http_req req;
    gw_h1_limits lim = {8192, 16384, 64};
    int st;
    int h = gw_h1_parse_request((const char *)p, n, &req, hdrs, &lim, &st);
    if (h == GW_AGAIN)
        return 0; /* kept in conn.in until the head is whole */
    if (h < 0) {
        mconn_respond(m, 400, "text/plain", "bad request\n", 12);
        return n;
    }
    int get = gw_str_eq(req.method, "GET"), headm = gw_str_eq(req.method, "HEAD");
    if (!get && !headm) {
        mconn_respond(m, 405, "text/plain", "method not allowed\n", 19);
        return n;
    }
    if (gw_str_eq(req.path, "/metrics")) {
        gw_buf out = {0};
        if (gw_metrics_render(&out) != GW_OK) {
            gw_buf_release(&out);
            mconn_respond(m, 400, "text/plain", "", 0);
            return n;
        }
        mconn_respond(m, 200, "text/plain; version=0.0.4; charset=utf-8", out.len ? gw_buf_head(&out) : NULL,
                      out.len);
        gw_buf_release(&out);
        return n;
    }
    if (gw_str_eq(req.path, "/healthz")) {
        mconn_respond(m, 200, "text/plain", "ok\n", 3);
        return n;
    }
    mconn_respond(m, 404, "text/plain", "not found\n", 10);
    return n;
}

static size_t mconn_max_input(gw_conn *conn)
{
    GW_UNUSED(conn);
    return 16384;
}

static const gw_conn_reader mconn_reader = {mconn_rcv, mconn_max_input, NULL};

static void mconn_io(gw_io *io, uint32_t events)
{
    mconn *m = gw_container_of(io, mconn, conn.io);
    if (events & GW_EV_WRITE) {
        if (gw_conn_flush(&m->conn) != GW_AGAIN)
            mconn_close(m);
        return;
    }
    int filled;
    ssize_t r = gw_conn_read_into(&m->conn, &mconn_reader, &filled);
    if (r == GW_CONN_FULL)
        mconn_respond(m, 400, "text/plain", "request too large\n", 18);
    else if (r != GW_AGAIN && r <= 0)
        mconn_close(m);
}

static void listener_cb(gw_io *io, uint32_t events)
{
    GW_UNUSED(events);
    for (int i = 0; i < 64; i++) {
        int fd = gw_sock_accept(io->fd, NULL);
        if (fd < 0)
            return;
        mconn *m = gw_calloc(1, sizeof *m);
        gw_conn_init(&m->conn, P.loop, fd, mconn_io);
        m->timer.cb = mconn_timer;
        gw_timer_start(P.loop, &m->timer, 10000);
        gw_list_insert_tail(&P.mconns, &m->node);
        gw_conn_want_read(&m->conn, 1);
    }
}

/* ============================== configuration =============================== */

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "wsgate probe: %s\n(see wsgate probe --help)\n", msg);
    return 2;
}

static int valid_leg_name(const char *s, size_t n)
{
    if (n == 0 || n >= sizeof P.legs[0].name)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' ||
              c == '.'))
            return 0;
    }
    return 1;
}

/* Adds a leg from "name=url" (n bytes at s). */
static int add_leg(const char *s, size_t n)
{
    char spec[1200];
    if (n >= sizeof spec)
        return usage_error("leg too long: %.60s...", s);
    memcpy(spec, s, n);
    spec[n] = '\0';
    char *eq = strchr(spec, '=');
    if (!eq || !valid_leg_name(spec, (size_t)(eq - spec)))
        return usage_error("bad leg \"%s\" (want NAME=URL, NAME of letters, digits, _ . -)", spec);
    *eq = '\0';
    for (int i = 0; i < P.nlegs; i++)
        if (strcmp(P.legs[i].name, spec) == 0)
            return usage_error("leg name \"%s\" given twice", spec);
    if (P.nlegs == MAX_LEGS)
        return usage_error("too many legs (max 64)");
    leg *g = &P.legs[P.nlegs];
    memset(g, 0, sizeof *g);
    snprintf(g->name, sizeof g->name, "%.63s", spec);
    snprintf(g->url, sizeof g->url, "%s", eq + 1);
    char err[300];
    if (gw_wsc_parse_url(g->url, &g->t, err, sizeof err) != GW_OK)
        return usage_error("leg %s: %s", g->name, err);
    P.nlegs++;
    return 0;
}

static int set_duration(const char *what, const char *v, uint64_t *out)
{
    if (gw_parse_duration_ms(v, out) != GW_OK || *out == 0)
        return usage_error("%s: cannot parse \"%s\" as a positive duration", what, v);
    return 0;
}

static int configure(int argc, char **argv)
{
    P.interval_ms = 10000;
    P.timeout_ms = 20000;
    P.backoff_ms = 3000;
    const char *listen = ":9108";
    const char *v;
    int rc;
    if ((v = getenv("PROBE_INTERVAL")) && *v && (rc = set_duration("PROBE_INTERVAL", v, &P.interval_ms)))
        return rc;
    if ((v = getenv("PROBE_TIMEOUT")) && *v && (rc = set_duration("PROBE_TIMEOUT", v, &P.timeout_ms)))
        return rc;
    if ((v = getenv("PROBE_BACKOFF")) && *v && (rc = set_duration("PROBE_BACKOFF", v, &P.backoff_ms)))
        return rc;
    if ((v = getenv("PROBE_LISTEN")) && *v)
        listen = v;
    if ((v = getenv("PROBE_CA_FILE")) && *v)
        snprintf(P.ca_file, sizeof P.ca_file, "%s", v);
    if ((v = getenv("PROBE_INSECURE")) && *v && gw_parse_bool(v, &P.insecure) != GW_OK)
        return usage_error("PROBE_INSECURE: cannot parse \"%s\" as a boolean", v);
    int flag_legs = 0;
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--leg") == 0 || strncmp(argv[i], "--leg=", 6) == 0)
            flag_legs = 1;
    /* Legs from the flags replace PROBE_LEGS rather than adding to it. */
    if (!flag_legs && (v = getenv("PROBE_LEGS")) && *v) {
        const char *p = v;
        while (*p) {
            size_t n = strcspn(p, ",");
            const char *s = p;
            while (n && (*s == ' ' || *s == '\t')) {
                s++;
                n--;
            }
            while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
                n--;
            if (n && (rc = add_leg(s, n)))
                return rc;
            p += strcspn(p, ",");
            if (*p == ',')
                p++;
        }
    }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *val = NULL;
        char name[32];
        const char *eq = strncmp(a, "--", 2) == 0 ? strchr(a, '=') : NULL;
        if (eq) {
            snprintf(name, sizeof name, "%.*s", (int)(eq - a), a);
            val = eq + 1;
        } else {
            snprintf(name, sizeof name, "%s", a);
        }
        if (strcmp(name, "--insecure") == 0) {
            P.insecure = 1;
            continue;
        }
        int known = strcmp(name, "--leg") == 0 || strcmp(name, "--listen") == 0 || strcmp(name, "--interval") == 0 ||
                    strcmp(name, "--timeout") == 0 || strcmp(name, "--backoff") == 0 ||
                    strcmp(name, "--ca-file") == 0;
        if (!known)
            return usage_error("unknown argument \"%s\"", a);
        if (!val) {
            if (i + 1 >= argc)
                return usage_error("%s needs a value", name);
            val = argv[++i];
        }
        if (strcmp(name, "--leg") == 0)
            rc = add_leg(val, strlen(val));
        else if (strcmp(name, "--listen") == 0)
            listen = val, rc = 0;
        else if (strcmp(name, "--interval") == 0)
            rc = set_duration("--interval", val, &P.interval_ms);
        else if (strcmp(name, "--timeout") == 0)
            rc = set_duration("--timeout", val, &P.timeout_ms);
        else if (strcmp(name, "--backoff") == 0)
            rc = set_duration("--backoff", val, &P.backoff_ms);
        else
            snprintf(P.ca_file, sizeof P.ca_file, "%s", val), rc = 0;
        if (rc)
            return rc;
    }
    if (P.nlegs == 0)
        return usage_error("no legs: give --leg NAME=URL or PROBE_LEGS");
    if (gw_parse_addr(listen, &P.listen) != GW_OK)
        return usage_error("cannot parse listen address \"%s\"", listen);
    return 0;
}

/* ================================== main ==================================== */

static void on_signal(gw_io *io, uint32_t events)
{
    GW_UNUSED(events);
    struct signalfd_siginfo si;
    while (read(io->fd, &si, sizeof si) == (ssize_t)sizeof si) {
        if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT)
            gw_loop_stop(P.loop);
    }
}

static void quit_cb(gw_timer *t)
{
    GW_UNUSED(t);
    gw_loop_stop(P.loop);
}

int gw_probe_main(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            fputs(gw_probe_usage, stdout);
            return 0;
        }
    gw_log_init(GW_LOG_FORMAT_JSON, GW_LOG_INFO, "wsgate-probe", 2);
    memset(&P, 0, sizeof P);
    gw_list_init(&P.mconns);
    int rc = configure(argc, argv);
    if (rc)
        return rc;

    signal(SIGPIPE, SIG_IGN); /* TLS writes go through write(2) */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigprocmask(SIG_BLOCK, &set, NULL);

    P.loop = gw_loop_new();
    if (!P.loop) {
        fprintf(stderr, "wsgate probe: cannot create the event loop\n");
        return 1;
    }
    P.sigio.fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    P.sigio.cb = on_signal;
    if (P.sigio.fd >= 0)
        gw_io_start(P.loop, &P.sigio, GW_EV_READ);

    char err[512];
    int need_tls = 0;
    for (int i = 0; i < P.nlegs; i++)
        need_tls |= P.legs[i].t.tls;
    if (need_tls) {
        P.tls_ctx = gw_tls_client_ctx(!P.insecure, err, sizeof err);
        if (!P.tls_ctx) {
            fprintf(stderr, "wsgate probe: %s\n", err);
            return 1;
        }
        if (P.ca_file[0] && SSL_CTX_load_verify_locations(P.tls_ctx, P.ca_file, NULL) != 1) {
            fprintf(stderr, "wsgate probe: cannot load CA file %s\n", P.ca_file);
            return 1;
        }
    }

    P.lio.fd = gw_sock_listen(&P.listen, 0, 128, err, sizeof err);
    if (P.lio.fd < 0) {
        gw_log_line *l = gw_log_begin(GW_LOG_ERROR, "probe startup failed", NULL);
        if (l) {
            gw_log_str(l, "error", err, 0);
            gw_log_end(l);
        }
        return 1;
    }
    P.lio.cb = listener_cb;
    gw_io_start(P.loop, &P.lio, GW_EV_READ);

    for (int i = 0; i < P.nlegs; i++) {
        leg *g = &P.legs[i];
        char esc[128];
        gw_metrics_label_escape(g->name, esc, sizeof esc);
        snprintf(g->label, sizeof g->label, "leg=\"%s\"", esc);
        g->m_connected = gw_metric_get("wsgate_probe_connected", GW_METRIC_GAUGE,
                                       "1 while the probe leg is connected (WebSocket) or its last check passed (HTTP).",
                                       g->label);
        g->m_rtt = gw_histogram_get("wsgate_probe_rtt_seconds",
                                    "Round trip of probe pings (WebSocket echo) or checks (HTTP).", g->label,
                                    rtt_buckets, GW_ARRAY_LEN(rtt_buckets));
        g->m_age = gw_histogram_get("wsgate_probe_connection_age_seconds",
                                    "Age of probe connections when they dropped.", g->label, age_buckets,
                                    GW_ARRAY_LEN(age_buckets));
        g->m_last = gw_metric_get("wsgate_probe_last_disconnect_timestamp", GW_METRIC_GAUGE,
                                  "Unix time of the leg's last drop.", g->label);
        g->last_rtt_ms = -1;
        g->tick.cb = tick_cb;
        g->deadline.cb = deadline_cb;
        g->hc.io.fd = -1;
        g->state = LEG_WAIT;
        schedule(g, 0);
    }
    {
        char a[300];
        gw_addr_format(&P.listen, a, sizeof a);
        gw_log_line *l = gw_log_begin(GW_LOG_INFO, "probe started", NULL);
        if (l) {
            gw_log_str(l, "listen", a, 0);
            gw_log_int(l, "port", gw_sock_local_port(P.lio.fd), GW_LOG_JSON_ONLY);
            gw_log_int(l, "legs", P.nlegs, 0);
            gw_log_int(l, "interval_ms", (int64_t)P.interval_ms, GW_LOG_JSON_ONLY);
            gw_log_int(l, "timeout_ms", (int64_t)P.timeout_ms, GW_LOG_JSON_ONLY);
            gw_log_end(l);
        }
    }

    gw_loop_run(P.loop);

    /* Orderly stop: close every leg, let deferred frees run, release. */
    for (int i = 0; i < P.nlegs; i++) {
        leg *g = &P.legs[i];
        gw_timer_stop(P.loop, &g->tick);
        gw_timer_stop(P.loop, &g->deadline);
        if (g->wsc)
            gw_wsc_free(g->wsc);
        g->wsc = NULL;
        if (g->t.is_http)
            http_finish(g);
    }
    gw_io_stop(P.loop, &P.lio);
    close(P.lio.fd);
    while (!gw_list_empty(&P.mconns))
        mconn_close(gw_container_of(P.mconns.next, mconn, node));
    /* One more short turn runs the deferred frees. */
    gw_timer quit = {.cb = quit_cb};
    gw_timer_start(P.loop, &quit, 0);
    gw_loop_run(P.loop);
    if (P.sigio.fd >= 0) {
        gw_io_stop(P.loop, &P.sigio);
        close(P.sigio.fd);
    }
    gw_loop_free(P.loop);
    if (P.tls_ctx)
        gw_tls_ctx_free(P.tls_ctx);
    gw_metrics_reset();
    gw_conn_thread_exit();
    gw_ws_thread_exit();
    gw_log_line *l = gw_log_begin(GW_LOG_INFO, "probe stopped", NULL);
    if (l)
        gw_log_end(l);
    return 0;
}

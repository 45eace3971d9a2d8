/* ws_serve.c: the WebSocket phase of a client connection: the 101, the
 * session engine and the app it serves, heartbeats, idle and close
 * deadlines, drain, and the one "ws close" log line and metric per session. */
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/common.h"
#include "http/ws_handshake.h"
#include "log/log.h"
#include "server/state.h"
#include "server/ws_serve.h"
#include "ws/ws_frame.h"

static const gw_client_proto ws_proto;

gw_wsconn *gw_wsconn_of(const gw_client *c) { return gw_client_data(c, &ws_proto); }

/* The engine's handler: every session's events go to its app. */
static void on_message(gw_ws *ws, int opcode, uint8_t *p, size_t n)
{
    gw_wsconn *wsc = ws->data;
    wsc->last_msg_ms = gw_loop_now(wsc->c->w->loop);
    if (wsc->app->message)
        wsc->app->message(wsc, opcode, p, n);
}

static void on_peer_close(gw_ws *ws, unsigned code, const uint8_t *reason, size_t n)
{
    gw_wsconn *wsc = ws->data;
    if (wsc->app->peer_close)
        wsc->app->peer_close(wsc, code, reason, n);
}

/* For an app that forwards messages as they came (the relay). */
static void on_run(gw_ws *ws, uint8_t *p, size_t n, size_t count, uint64_t payload)
{
    gw_wsconn *wsc = ws->data;
    wsc->last_msg_ms = gw_loop_now(wsc->c->w->loop);
    wsc->app->message_run(wsc, p, n, count, payload);
}

static const gw_ws_handler app_handler = {on_message, NULL, on_peer_close, NULL};
static const gw_ws_handler app_handler_runs = {on_message, NULL, on_peer_close, on_run};

/* Starts the WebSocket phase once the 101 is written: the per-connection
 * state, the session engine with handler h, the "ws open" line, metrics. */
gw_wsconn *gw_ws_serve_open(gw_client *c, const gw_route *r, gw_route_table *table, const char *corr,
                            const char *user, const gw_ws_app *app, size_t app_size, const gw_pmd_params *pmd)
{
    /* One allocation for the session and its app's state: an idle relay is
     * no bigger than when its fields lived in gw_wsconn. */
    gw_wsconn *wsc = gw_calloc(1, sizeof *wsc + app_size);
    wsc->c = c;
    wsc->app = app;
    uint64_t now = gw_loop_now(c->w->loop);
    wsc->route = r;
    wsc->table = table;
    gw_routes_ref(table);
    wsc->opened_ms = wsc->last_seen_ms = wsc->last_msg_ms = wsc->last_ping_ms = now;
    snprintf(wsc->corr, sizeof wsc->corr, "%s", corr);
    snprintf(wsc->user, sizeof wsc->user, "%s", user && user[0] ? user : "-");
    gw_ws_init(&wsc->ws, &gw_conn_sink, &c->conn, 1, app->message_run ? &app_handler_runs : &app_handler, wsc,
               gw_srv.cfg.ws_max_message_bytes);
    gw_ws_set_runs(&wsc->ws, 1);
    if (pmd && pmd->enabled)
        gw_ws_enable_pmd(&wsc->ws, pmd);
    gw_ws_set_inflate_budget(&wsc->ws, (uint32_t)gw_srv.cfg.ws_max_inflate_ratio);
    gw_client_enter(c, GW_PHASE_WS, &ws_proto, wsc);
    c->close_after = 0;

    gw_counter_inc(gw_metric_handshake(r, "ok"));
    gw_gauge_add(gw_srv.m_ws_connections, 1);
    gw_gauge_add(r->ws_open, 1);
    gw_client_arm(c);
    return wsc;
}

/* Logs "ws open" (after the owner set the fields it knows). */
void gw_ws_serve_log_open(gw_wsconn *wsc, gw_str proto, int deflate, const char *trace)
{
    gw_client *c = wsc->c;
    gw_log_line *l = gw_log_begin(GW_LOG_INFO, "ws open", wsc->corr);
    if (l) {
        gw_log_str(l, "route", wsc->route->label, 0);
        gw_log_str(l, "user", wsc->user, 0);
        gw_log_str(l, "ip", c->ip, 0);
        if (proto.n)
            gw_log_strn(l, "subprotocol", proto.p, proto.n, GW_LOG_JSON_ONLY);
        gw_log_bool(l, "deflate", deflate, GW_LOG_JSON_ONLY);
        if (wsc->app->log_fields)
            wsc->app->log_fields(wsc, l, 0);
        if (trace)
            gw_log_str(l, "trace_id", trace, GW_LOG_JSON_ONLY);
        gw_log_end(l);
    }
}

int gw_ws_serve_upgrade(gw_client *c, gw_http_req *req, const gw_route *r, gw_route_table *table, const char *corr,
                        const char *trace, const gw_ws_app *app, size_t app_size)
{
    gw_ws_upgrade up;
    int status;
    const char *code;
    if (gw_ws_check_upgrade(req, &up, &status, &code) != GW_OK)
        return GW_ERR; /* checked by the caller already */
    gw_str proto = r->protocols ? gw_ws_select_protocol(req, r->protocols) : (gw_str){NULL, 0};
    gw_pmd_params pmd;
    char ext[256];
    gw_ws_negotiate_deflate(req, &pmd, ext, sizeof ext);
    char resp[1024];
    size_t n = gw_ws_build_101(resp, sizeof resp, up.key, proto, pmd.enabled ? ext : NULL, corr, trace);
    if (!n)
        return GW_ERR;
    gw_conn_write(&c->conn, resp, n);
    gw_wsconn *wsc = gw_ws_serve_open(c, r, table, corr, "-", app, app_size, &pmd);
    gw_ws_serve_log_open(wsc, proto, pmd.enabled, trace);
    return GW_OK;
}

void gw_ws_negotiate_deflate(const gw_http_req *req, gw_pmd_params *pmd, char *ext, size_t cap)
{
    memset(pmd, 0, sizeof *pmd);
    ext[0] = '\0';
    if (!gw_srv.cfg.ws_deflate)
        return;
    char offers[1024];
    size_t on = gw_h1_join_header(req, "Sec-WebSocket-Extensions", offers, sizeof offers);
    if (on && gw_pmd_negotiate_server(gw_str_make(offers, on), 0, pmd, ext, cap) != 1)
        pmd->enabled = 0;
}

size_t gw_ws_build_101(char *out, size_t cap, gw_str key, gw_str proto, const char *ext, const char *corr,
                       const char *trace)
{
    char accept[GW_WS_ACCEPT_LEN + 1];
    gw_ws_accept_key(key, accept);
    int n = snprintf(out, cap,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n%s%.*s%s%s%s%sX-Correlation-ID: %s\r\nX-Trace-ID: %s\r\n\r\n",
                     accept, proto.n ? "Sec-WebSocket-Protocol: " : "", (int)proto.n, proto.n ? proto.p : "",
                     proto.n ? "\r\n" : "", ext ? "Sec-WebSocket-Extensions: " : "", ext ? ext : "",
                     ext ? "\r\n" : "", corr, trace);
    if (n < 0 || (size_t)n >= cap)
        return 0;
    return (size_t)n;
}

void gw_ws_serve_closing(gw_wsconn *wsc)
{
    if (wsc->ws.state == GW_WS_CLOSE_SENT && !wsc->close_deadline_ms) {
        wsc->close_deadline_ms = gw_loop_now(wsc->c->w->loop) + GW_CLOSE_WAIT_MS;
        gw_client_arm(wsc->c);
    }
}

static void after_ws_event(gw_wsconn *wsc)
{
    if (wsc->ws.state == GW_WS_CLOSED) {
        gw_client_finish(wsc->c);
        return;
    }
    gw_ws_serve_closing(wsc);
}

static size_t ws_feed(gw_client *c, uint8_t *p, size_t n)
{
    gw_wsconn *wsc = c->pdata;
    size_t used = gw_ws_feed(&wsc->ws, p, n);
    after_ws_event(wsc);
    return c->phase == GW_PHASE_WS ? used : n;
}

static void ws_on_read(gw_client *c, uint64_t now) { ((gw_wsconn *)c->pdata)->last_seen_ms = now; }

static uint64_t ws_deadline(gw_client *c)
{
    const gw_config *cfg = &gw_srv.cfg;
    gw_wsconn *wsc = c->pdata;
    if (wsc->close_deadline_ms)
        return wsc->close_deadline_ms;
    uint64_t at = UINT64_MAX;
    if (c->w->draining && wsc->ws.state == GW_WS_OPEN)
        at = wsc->drain_at_ms; /* its turn in the spread of drain closes */
    if (cfg->ws_ping_interval_ms) {
        at = GW_MIN(at, wsc->last_ping_ms + cfg->ws_ping_interval_ms);
        at = GW_MIN(at, wsc->last_seen_ms + cfg->ws_pong_timeout_ms);
    }
    if (wsc->route->idle_ms)
        at = GW_MIN(at, wsc->last_msg_ms + wsc->route->idle_ms);
    return at == UINT64_MAX ? gw_loop_now(c->w->loop) + GW_BACKSTOP_MS : at;
}

/* The gateway's own close of the session: recorded (so the app does not
 * take the client's answer for a close the client started) and told to the
 * app at once (a relay closes its upstream leg with the same words). */
static void gateway_close(gw_wsconn *wsc, unsigned code, const char *reason, const char *cause)
{
    wsc->gateway_closed = 1;
    gw_ws_close(&wsc->ws, code, reason, cause);
    if (wsc->app->closing)
        wsc->app->closing(wsc, code, reason);
}

/* The one timer of a WebSocket client: close deadline, heartbeat, idle
 * limit, drain. Deadlines are derived from timestamps the read path keeps,
 * so no message re-arms a timer (O(1) per message). */
static void ws_timer(gw_client *c)
{
    const gw_config *cfg = &gw_srv.cfg;
    gw_wsconn *wsc = c->pdata;
    gw_ws *ws = &wsc->ws;
    uint64_t now = gw_loop_now(c->w->loop);

    /* A client we stopped reading (backpressure) may well be answering our
     * pings: its bytes wait unread. Silence we caused is not a dead peer. */
    if (c->conn.flags & GW_CONN_F_PAUSED)
        wsc->last_seen_ms = now;
    if (wsc->app->timer)
        wsc->app->timer(wsc, now);
    if (ws->state == GW_WS_CLOSE_SENT) {
        if (now >= wsc->close_deadline_ms) {
            gw_ws_abort(ws, ws->cause);
            gw_client_close(c);
            return;
        }
    } else if (c->w->draining && now >= wsc->drain_at_ms) {
        /* Its turn in the spread of drain closes; the answer is awaited at
         * most until the drain's end. */
        gateway_close(wsc, GW_WS_CLOSE_GOING_AWAY, "gateway is shutting down", gw_cause_shutdown);
        wsc->close_deadline_ms = GW_MIN(now + GW_CLOSE_WAIT_MS, GW_MAX(now, gw_srv.drain_end_ms));
    } else if (cfg->ws_ping_interval_ms && now >= wsc->last_seen_ms + cfg->ws_pong_timeout_ms) {
        /* The peer answered nothing, not even our pings: it is gone. Say so
         * and close without waiting for an answer that will not come. */
        gateway_close(wsc, GW_WS_CLOSE_GOING_AWAY, "heartbeat_timeout", gw_cause_heartbeat_timeout);
        gw_ws_abort(ws, gw_cause_heartbeat_timeout);
    } else if (wsc->route->idle_ms && now >= wsc->last_msg_ms + wsc->route->idle_ms) {
        gateway_close(wsc, GW_WS_CLOSE_NORMAL, "idle_timeout", gw_cause_idle_timeout);
    } else if (cfg->ws_ping_interval_ms && now >= wsc->last_ping_ms + cfg->ws_ping_interval_ms) {
        uint8_t stamp[8];
        for (int i = 0; i < 8; i++)
            stamp[i] = (uint8_t)(now >> (56 - 8 * i));
        gw_ws_ping(ws, stamp, sizeof stamp);
        wsc->last_ping_ms = now;
    }
    if (gw_conn_flush(&c->conn) == GW_ERR) {
        gw_ws_abort(ws, gw_cause_downstream_closed);
        gw_client_close(c);
        return;
    }
    after_ws_event(wsc);
    if (c->phase == GW_PHASE_WS)
        gw_client_arm(c);
}

static void ws_drained(gw_client *c)
{
    gw_wsconn *wsc = c->pdata;
    if (wsc && wsc->app->drained)
        wsc->app->drained(wsc);
}

static int ws_keep_paused(gw_client *c)
{
    gw_wsconn *wsc = c->pdata;
    return wsc && wsc->app->keep_paused && wsc->app->keep_paused(wsc);
}

static void ws_gone(gw_client *c, int why)
{
    gw_wsconn *wsc = c->pdata;
    if (wsc)
        gw_ws_abort(&wsc->ws, why == GW_GONE_SHUTDOWN ? gw_cause_shutdown : gw_cause_downstream_closed);
}

static void ws_drain_at(gw_client *c, uint64_t at) { ((gw_wsconn *)c->pdata)->drain_at_ms = at; }

static void ws_tick(gw_client *c)
{
    gw_wsconn *wsc = c->pdata;
    const gw_route *r = wsc->route;
    gw_ws *ws = &wsc->ws;
    if (ws->msgs_in != wsc->flushed_in) {
        gw_counter_add(r->msgs_in, ws->msgs_in - wsc->flushed_in);
        gw_counter_add(r->bytes_in, ws->bytes_in - wsc->flushed_bin);
        wsc->flushed_in = ws->msgs_in;
        wsc->flushed_bin = ws->bytes_in;
    }
    if (ws->msgs_out != wsc->flushed_out) {
        gw_counter_add(r->msgs_out, ws->msgs_out - wsc->flushed_out);
        gw_counter_add(r->bytes_out, ws->bytes_out - wsc->flushed_bout);
        wsc->flushed_out = ws->msgs_out;
        wsc->flushed_bout = ws->bytes_out;
    }
}

static size_t ws_max_input(const gw_client *c)
{
    GW_UNUSED(c);
    return (size_t)gw_srv.cfg.ws_max_message_bytes + GW_WS_MAX_HEADER + GW_READ_CHUNK;
}

/* Bytes still missing from the frame at the front of conn.in, so one read
 * can complete it (0 when unknown). */
static size_t ws_need(const gw_client *c)
{
    if (c->conn.in.len < 2)
        return 0;
    gw_ws_frame_hdr h;
    uint16_t code;
    int hl = gw_ws_frame_parse_header(gw_buf_head(&c->conn.in), c->conn.in.len, &h, &code);
    if (hl <= 0 || h.len > gw_srv.cfg.ws_max_message_bytes)
        return 0;
    uint64_t total = (uint64_t)hl + h.len;
    return total > c->conn.in.len ? (size_t)(total - c->conn.in.len) : 0;
}

void gw_ws_log_close(const gw_ws_close_line *cl)
{
    gw_log_line *l = gw_log_begin(cl->level, "ws close", cl->corr);
    if (!l)
        return;
    gw_log_str(l, "user", cl->user, 0);
    gw_log_str(l, "ip", cl->ip, 0);
    gw_log_int(l, "dur_ms", (int64_t)cl->dur_ms, 0);
    gw_log_str(l, "cause", cl->cause, 0);
    gw_log_str(l, "route", cl->route, GW_LOG_JSON_ONLY);
    if (cl->fields)
        cl->fields(cl->arg, l);
    gw_log_end(l);
}

static void session_fields(void *arg, gw_log_line *l)
{
    gw_wsconn *wsc = arg;
    gw_ws *ws = &wsc->ws;
    if (ws->close_sent)
        gw_log_int(l, "close_code_sent", ws->close_sent, GW_LOG_JSON_ONLY);
    if (ws->close_rcvd)
        gw_log_int(l, "close_code_received", ws->close_rcvd, GW_LOG_JSON_ONLY);
    if (ws->error)
        gw_log_str(l, "error", ws->error, GW_LOG_JSON_ONLY);
    if (wsc->app->log_fields)
        wsc->app->log_fields(wsc, l, 1);
    gw_log_int(l, "msgs_in", (int64_t)ws->msgs_in, GW_LOG_JSON_ONLY);
    gw_log_int(l, "msgs_out", (int64_t)ws->msgs_out, GW_LOG_JSON_ONLY);
}

/* Ends the WebSocket phase: one log line and one close metric, whatever the
 * path that got here. */
static void ws_closed(gw_client *c)
{
    gw_wsconn *wsc = c->pdata;
    if (!wsc)
        return;
    gw_ws *ws = &wsc->ws;
    const gw_route *r = wsc->route;
    if (wsc->app->closed)
        wsc->app->closed(wsc);
    const char *cause = ws->cause ? ws->cause : gw_cause_downstream_closed;
    uint64_t dur = gw_loop_now(c->w->loop) - wsc->opened_ms;

    ws_tick(c);
    gw_counter_inc(gw_metric_close(r, cause));
    gw_gauge_add(gw_srv.m_ws_connections, -1);
    gw_gauge_add(r->ws_open, -1);
    gw_histogram_observe(r->duration, (double)dur / 1000.0);
    gw_ws_close_line cl = {.level = GW_LOG_INFO,
                           .corr = wsc->corr,
                           .user = wsc->user,
                           .ip = c->ip,
                           .cause = cause,
                           .route = r->label,
                           .dur_ms = dur,
                           .fields = session_fields,
                           .arg = wsc};
    gw_ws_log_close(&cl);
    gw_ws_free(ws);
    if (wsc->app->free)
        wsc->app->free(wsc);
    gw_routes_unref(wsc->table);
    gw_free(wsc);
    c->pdata = NULL;
}

static const gw_client_proto ws_proto = {
    .feed = ws_feed,
    .on_read = ws_on_read,
    .deadline = ws_deadline,
    .timer = ws_timer,
    .drained = ws_drained,
    .keep_paused = ws_keep_paused,
    .gone = ws_gone,
    .finish = ws_closed,
    .end = ws_closed,
    .drain = ws_timer, /* notices draining and starts the close */
    .drain_at = ws_drain_at,
    .tick = ws_tick,
    .max_input = ws_max_input,
    .need = ws_need,
};

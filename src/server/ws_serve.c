/* ws_serve.c: the WebSocket phase of a client connection: the 101, the echo
 * route's handler, heartbeats, idle and close deadlines, drain, and the one
 * "ws close" log line and metric per session. */
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/common.h"
#include "http/ws_handshake.h"
#include "log/log.h"
#include "server/server.h"
#include "ws/pmd.h"

static void echo_message(gw_ws *ws, int opcode, uint8_t *p, size_t n)
{
    gw_client *c = ws->data;
    c->wsc->last_msg_ms = gw_loop_now(c->w->loop);
    gw_ws_send(ws, opcode, p, n);
}

static const gw_ws_handler echo_handler = {echo_message, NULL};

/* Starts the WebSocket phase once the 101 is written: the per-connection
 * state, the session engine with handler h, the "ws open" line, metrics. */
gw_wsconn *gw_ws_serve_open(gw_client *c, const gw_route *r, gw_route_table *table, const char *corr,
                            const char *user, const gw_ws_handler *h, const gw_pmd_params *pmd)
{
    gw_wsconn *wsc = gw_calloc(1, sizeof *wsc);
    uint64_t now = gw_loop_now(c->w->loop);
    wsc->route = r;
    wsc->table = table;
    gw_routes_ref(table);
    wsc->opened_ms = wsc->last_seen_ms = wsc->last_msg_ms = wsc->last_ping_ms = now;
    snprintf(wsc->corr, sizeof wsc->corr, "%s", corr);
    snprintf(wsc->user, sizeof wsc->user, "%s", user && user[0] ? user : "-");
    gw_ws_init(&wsc->ws, &gw_conn_sink, &c->conn, 1, h, c, gw_srv.cfg.ws_max_message_bytes);
    if (pmd && pmd->enabled)
        gw_ws_enable_pmd(&wsc->ws, pmd);
    gw_ws_set_inflate_budget(&wsc->ws, (uint32_t)gw_srv.cfg.ws_max_inflate_ratio);
    c->wsc = wsc;
    c->phase = GW_PHASE_WS;
    c->close_after = 0;

    gw_counter_inc(gw_metric_handshake(r, "ok"));
    gw_gauge_add(gw_srv.m_ws_connections, 1);
    gw_gauge_add(r->ws_open, 1);
    gw_client_arm(c);
    return wsc;
}

/* Logs "ws open" (after the owner set the fields it knows). */
static void log_open(gw_client *c, gw_str proto, int deflate, const char *trace)
{
    gw_wsconn *wsc = c->wsc;
    gw_log_line *l = gw_log_begin(GW_LOG_INFO, "ws open", wsc->corr);
    if (l) {
        gw_log_str(l, "route", wsc->route->label, 0);
        gw_log_str(l, "user", wsc->user, 0);
        gw_log_str(l, "ip", c->ip, 0);
        if (proto.n)
            gw_log_strn(l, "subprotocol", proto.p, proto.n, GW_LOG_JSON_ONLY);
        gw_log_bool(l, "deflate", deflate, GW_LOG_JSON_ONLY);
        if (wsc->up_url)
            gw_log_str(l, "upstream", wsc->up_url, GW_LOG_JSON_ONLY);
        if (wsc->resource_name)
            gw_log_str(l, "resource_name", wsc->resource_name, GW_LOG_JSON_ONLY);
        if (wsc->session_id)
            gw_log_str(l, "session_id", wsc->session_id, GW_LOG_JSON_ONLY);
        if (trace)
            gw_log_str(l, "trace_id", trace, GW_LOG_JSON_ONLY);
        gw_log_end(l);
    }
}

void gw_ws_serve_log_open(gw_client *c, gw_str proto, int deflate, const char *trace)
{
    log_open(c, proto, deflate, trace);
}

int gw_ws_serve_upgrade(gw_client *c, gw_http_req *req, const gw_route *r, gw_route_table *table, const char *corr,
                        const char *trace)
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
    gw_ws_serve_open(c, r, table, corr, "-", &echo_handler, &pmd);
    log_open(c, proto, pmd.enabled, trace);
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

static void after_ws_event(gw_client *c)
{
    gw_wsconn *wsc = c->wsc;
    if (wsc->ws.state == GW_WS_CLOSED) {
        gw_client_finish(c);
        return;
    }
    if (wsc->ws.state == GW_WS_CLOSE_SENT && !wsc->close_deadline_ms) {
        wsc->close_deadline_ms = gw_loop_now(c->w->loop) + GW_CLOSE_WAIT_MS;
        gw_client_arm(c);
    }
}

size_t gw_ws_serve_feed(gw_client *c, uint8_t *p, size_t n)
{
    size_t used = gw_ws_feed(&c->wsc->ws, p, n);
    after_ws_event(c);
    return c->phase == GW_PHASE_WS ? used : n;
}

uint64_t gw_ws_serve_deadline(gw_client *c)
{
    const gw_config *cfg = &gw_srv.cfg;
    gw_wsconn *wsc = c->wsc;
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
    return at == UINT64_MAX ? gw_loop_now(c->w->loop) + 3600000 : at;
}

/* The one timer of a WebSocket client: close deadline, heartbeat, idle
 * limit, drain. Deadlines are derived from timestamps the read path keeps,
 * so no message re-arms a timer (O(1) per message). */
void gw_ws_serve_timer(gw_client *c)
{
    const gw_config *cfg = &gw_srv.cfg;
    gw_wsconn *wsc = c->wsc;
    gw_ws *ws = &wsc->ws;
    uint64_t now = gw_loop_now(c->w->loop);

    /* A client we stopped reading (backpressure) may well be answering our
     * pings: its bytes wait unread. Silence we caused is not a dead peer. */
    if (c->conn.flags & GW_CONN_F_PAUSED)
        wsc->last_seen_ms = now;
    if (wsc->up)
        gw_relay_timer(c, now);
    if (ws->state == GW_WS_CLOSE_SENT) {
        if (now >= wsc->close_deadline_ms) {
            gw_ws_abort(ws, ws->cause);
            gw_client_close(c);
            return;
        }
    } else if (c->w->draining && now >= wsc->drain_at_ms) {
        /* Its turn in the spread of drain closes; the answer is awaited at
         * most until the drain's end. */
        gw_ws_close(ws, GW_WS_CLOSE_GOING_AWAY, "gateway is shutting down", gw_cause_shutdown);
        wsc->close_deadline_ms = GW_MIN(now + GW_CLOSE_WAIT_MS, GW_MAX(now, gw_srv.drain_end_ms));
    } else if (cfg->ws_ping_interval_ms && now >= wsc->last_seen_ms + cfg->ws_pong_timeout_ms) {
        /* The peer answered nothing, not even our pings: it is gone. Say so
         * and close without waiting for an answer that will not come. */
        gw_ws_close(ws, GW_WS_CLOSE_GOING_AWAY, "heartbeat_timeout", gw_cause_heartbeat_timeout);
        gw_ws_abort(ws, gw_cause_heartbeat_timeout);
    } else if (wsc->route->idle_ms && now >= wsc->last_msg_ms + wsc->route->idle_ms) {
        gw_ws_close(ws, GW_WS_CLOSE_NORMAL, "idle_timeout", gw_cause_idle_timeout);
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
    after_ws_event(c);
    if (c->phase == GW_PHASE_WS)
        gw_client_arm(c);
}

void gw_ws_serve_flush_stats(gw_client *c)
{
    gw_wsconn *wsc = c->wsc;
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

/* Ends the WebSocket phase: one log line and one close metric, whatever the
 * path that got here. */
void gw_ws_serve_closed(gw_client *c)
{
    gw_wsconn *wsc = c->wsc;
    if (!wsc)
        return;
    gw_ws *ws = &wsc->ws;
    const gw_route *r = wsc->route;
    gw_relay_downstream_closed(c);
    const char *cause = ws->cause ? ws->cause : gw_cause_downstream_closed;
    uint64_t dur = gw_loop_now(c->w->loop) - wsc->opened_ms;
    static const char *const first[] = {NULL, "downstream", "upstream", "gateway"};

    gw_ws_serve_flush_stats(c);
    gw_counter_inc(gw_metric_close(r, cause));
    gw_gauge_add(gw_srv.m_ws_connections, -1);
    gw_gauge_add(r->ws_open, -1);
    gw_histogram_observe(r->duration, (double)dur / 1000.0);

    gw_log_line *l = gw_log_begin(GW_LOG_INFO, "ws close", wsc->corr);
    if (l) {
        gw_log_str(l, "user", wsc->user, 0);
        gw_log_str(l, "ip", c->ip, 0);
        gw_log_int(l, "dur_ms", (int64_t)dur, 0);
        gw_log_str(l, "cause", cause, 0);
        gw_log_str(l, "route", r->label, GW_LOG_JSON_ONLY);
        if (ws->close_sent)
            gw_log_int(l, "close_code_sent", ws->close_sent, GW_LOG_JSON_ONLY);
        if (ws->close_rcvd)
            gw_log_int(l, "close_code_received", ws->close_rcvd, GW_LOG_JSON_ONLY);
        if (ws->error)
            gw_log_str(l, "error", ws->error, GW_LOG_JSON_ONLY);
        if (wsc->resource_name)
            gw_log_str(l, "resource_name", wsc->resource_name, GW_LOG_JSON_ONLY);
        if (wsc->session_id)
            gw_log_str(l, "session_id", wsc->session_id, GW_LOG_JSON_ONLY);
        if (wsc->up_url) {
            gw_log_str(l, "upstream", wsc->up_url, GW_LOG_JSON_ONLY);
            if (wsc->closed_first)
                gw_log_str(l, "closed_first", first[wsc->closed_first], GW_LOG_JSON_ONLY);
            if (wsc->down_code)
                gw_log_int(l, "downstream_code", wsc->down_code, GW_LOG_JSON_ONLY);
            if (wsc->up_code)
                gw_log_int(l, "upstream_code", wsc->up_code, GW_LOG_JSON_ONLY);
        }
        gw_log_int(l, "msgs_in", (int64_t)ws->msgs_in, GW_LOG_JSON_ONLY);
        gw_log_int(l, "msgs_out", (int64_t)ws->msgs_out, GW_LOG_JSON_ONLY);
        gw_log_end(l);
    }
    gw_ws_free(ws);
    gw_free(wsc->up_url);
    gw_free(wsc->resource_name);
    gw_free(wsc->session_id);
    gw_routes_unref(wsc->table);
    gw_free(wsc);
    c->wsc = NULL;
}

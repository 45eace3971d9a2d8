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

int gw_ws_serve_upgrade(gw_client *c, gw_http_req *req, const gw_route *r, const char *corr, const char *trace)
{
    const gw_config *cfg = &gw_srv.cfg;
    gw_ws_upgrade up;
    int status;
    const char *code;
    if (gw_ws_check_upgrade(req, &up, &status, &code) != GW_OK)
        return GW_ERR; /* checked by the caller already */

    gw_str proto = r->protocols ? gw_ws_select_protocol(req, r->protocols) : (gw_str){NULL, 0};
    gw_pmd_params pmd = {0};
    char ext_resp[256] = "";
    if (cfg->ws_deflate) {
        char offers[1024];
        size_t on = gw_h1_join_header(req, "Sec-WebSocket-Extensions", offers, sizeof offers);
        if (on && gw_pmd_negotiate_server(gw_str_make(offers, on), 0, &pmd, ext_resp, sizeof ext_resp) != 1)
            pmd.enabled = 0;
    }
    char accept[GW_WS_ACCEPT_LEN + 1];
    gw_ws_accept_key(up.key, accept);

    char resp[1024];
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n%s%.*s%s%s%s%sX-Correlation-ID: %s\r\nX-Trace-ID: %s\r\n\r\n",
                     accept, proto.n ? "Sec-WebSocket-Protocol: " : "", (int)proto.n, proto.n ? proto.p : "",
                     proto.n ? "\r\n" : "", pmd.enabled ? "Sec-WebSocket-Extensions: " : "",
                     pmd.enabled ? ext_resp : "", pmd.enabled ? "\r\n" : "", corr, trace);
    if (n < 0 || (size_t)n >= sizeof resp)
        return GW_ERR;
    gw_conn_write(&c->conn, resp, (size_t)n);

    gw_wsconn *wsc = gw_calloc(1, sizeof *wsc);
    uint64_t now = gw_loop_now(c->w->loop);
    wsc->route = r;
    wsc->opened_ms = wsc->last_seen_ms = wsc->last_msg_ms = wsc->last_ping_ms = now;
    snprintf(wsc->corr, sizeof wsc->corr, "%s", corr);
    snprintf(wsc->user, sizeof wsc->user, "-");
    gw_ws_init(&wsc->ws, &c->conn, 1, &echo_handler, c, cfg->ws_max_message_bytes);
    if (pmd.enabled)
        gw_ws_enable_pmd(&wsc->ws, &pmd);
    c->wsc = wsc;
    c->phase = GW_PHASE_WS;
    c->close_after = 0;

    gw_counter_inc(gw_metric_handshake(r, "ok"));
    gw_gauge_add(gw_srv.m_ws_connections, 1);
    gw_gauge_add(r->ws_open, 1);
    gw_log_line *l = gw_log_begin(GW_LOG_INFO, "ws open", corr);
    if (l) {
        gw_log_str(l, "route", r->label, 0);
        gw_log_str(l, "user", wsc->user, 0);
        gw_log_str(l, "ip", c->ip, 0);
        if (proto.n)
            gw_log_strn(l, "subprotocol", proto.p, proto.n, GW_LOG_JSON_ONLY);
        gw_log_bool(l, "deflate", pmd.enabled, GW_LOG_JSON_ONLY);
        gw_log_str(l, "trace_id", trace, GW_LOG_JSON_ONLY);
        gw_log_end(l);
    }
    gw_client_arm(c);
    return GW_OK;
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

    if (ws->state == GW_WS_CLOSE_SENT) {
        if (now >= wsc->close_deadline_ms) {
            gw_ws_abort(ws, ws->cause);
            gw_client_close(c);
            return;
        }
    } else if (c->w->draining) {
        gw_ws_close(ws, GW_WS_CLOSE_GOING_AWAY, "gateway is shutting down", gw_cause_shutdown);
        wsc->close_deadline_ms = now + GW_MIN((uint64_t)GW_CLOSE_WAIT_MS, cfg->shutdown_timeout_ms);
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
    const char *cause = ws->cause ? ws->cause : gw_cause_downstream_closed;
    uint64_t dur = gw_loop_now(c->w->loop) - wsc->opened_ms;

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
        gw_log_int(l, "msgs_in", (int64_t)ws->msgs_in, GW_LOG_JSON_ONLY);
        gw_log_int(l, "msgs_out", (int64_t)ws->msgs_out, GW_LOG_JSON_ONLY);
        gw_log_end(l);
    }
    gw_ws_free(ws);
    gw_free(wsc);
    c->wsc = NULL;
}

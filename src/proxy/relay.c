/* relay.c: the WebSocket relay (route kind "proxy", and the terminal route's
 * path to its agent).
 *
 * The client's upgrade is answered only once the upstream accepted its own:
 * until then the client is not read (GW_PHASE_UPSTREAM). A refusal is passed
 * back with the upstream's status, headers and body; a failure to reach the
 * upstream is a 502 (504 on timeout) with the error envelope. Once both legs
 * are open, messages are relayed both ways; each leg keeps its own
 * heartbeat; a Close on one leg is carried to the other with its code and
 * reason; and the one "ws close" line says which leg ended first and why. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "core/alloc.h"
#include "core/common.h"
#include "core/rand.h"
#include "http/ws_handshake.h"
#include "log/log.h"
#include "server/server.h"

#define HEADERS_MAX 8192

/* The upstream leg's user data: the client while it lives, then (c NULL)
 * an orphan on the worker's list until the leg's close completes. */
typedef struct relay_leg {
    gw_list node;
    gw_wsc *up;
    gw_client *c;
    gw_worker *w;
} relay_leg;

struct gw_relay_pending {
    relay_leg *leg;
    gw_route_table *table;
    const gw_route *route;
    char *up_url;
    char *resource_name;
    char *session_id;
    char *select_protocol;
    void (*on_result)(const gw_relay_result *res);
    char key[32];         /* the client's Sec-WebSocket-Key */
    gw_pmd_params pmd;    /* negotiated with the client */
    char ext[256];
    char corr[72];
    char trace[33];
    char user[64];
};

static void up_open(gw_wsc *up, const char *subprotocol, const gw_wsc_response *resp);
static void up_message(gw_wsc *up, int opcode, uint8_t *p, size_t n);
static void up_pong(gw_wsc *up, const uint8_t *p, size_t n);
static void up_drain(gw_wsc *up);
static void up_close(gw_wsc *up, const gw_wsc_reason *r);

static const gw_wsc_cbs up_cbs = {up_open, up_message, up_pong, up_drain, up_close};

/* ============================ building the request ========================== */

static int hop_by_hop(gw_str name)
{
    static const char *const drop[] = {"Host", "Connection", "Upgrade", "Keep-Alive", "Proxy-Connection",
                                       "Proxy-Authorization", "TE", "Trailer", "Transfer-Encoding",
                                       "Content-Length", "Sec-WebSocket-Key", "Sec-WebSocket-Version",
                                       "Sec-WebSocket-Extensions", "Sec-WebSocket-Protocol", "Sec-WebSocket-Accept",
                                       "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host",
                                       "X-Correlation-ID", "X-Request-ID", "traceparent", "tracestate"};
    for (size_t i = 0; i < GW_ARRAY_LEN(drop); i++)
        if (gw_str_ieq(name, drop[i]))
            return 1;
    /* Headers the gateway itself sets toward agents are never taken from a
     * client. */
    return name.n >= 9 && strncasecmp(name.p, "X-Wsgate-", 9) == 0;
}

int gw_h1_connection_lists(const gw_http_header *hdrs, size_t n, gw_str name)
{
    for (size_t i = 0; i < n; i++) {
        if (!gw_str_ieq(hdrs[i].name, "Connection"))
            continue;
        const char *p = hdrs[i].value.p, *end = p + hdrs[i].value.n;
        while (p < end) {
            while (p < end && (*p == ',' || *p == ' ' || *p == '\t'))
                p++;
            const char *tok = p;
            while (p < end && *p != ',' && *p != ' ' && *p != '\t')
                p++;
            if ((size_t)(p - tok) == name.n && name.n && strncasecmp(tok, name.p, name.n) == 0)
                return 1;
        }
    }
    return 0;
}

__attribute__((format(printf, 4, 5))) static size_t appendf(char *out, size_t cap, size_t pos, const char *fmt, ...)
{
    if (pos >= cap)
        return pos;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out + pos, cap - pos, fmt, ap);
    va_end(ap);
    return n < 0 ? cap : pos + (size_t)n;
}

/* End-to-end request headers plus the forwarding set: X-Forwarded-For (the
 * client's chain plus its address), X-Forwarded-Proto and -Host,
 * X-Correlation-ID and traceparent. Connection-level and handshake headers
 * are the upstream leg's own. The buffer is sized from what the client sent
 * (every header line at most once, each of the gateway's own lines bounded),
 * so nothing is ever dropped for want of room, whatever
 * GATEWAY_MAX_HEADER_BYTES allows. */
char *gw_relay_build_headers(const gw_client *c, const gw_http_req *req, const char *corr, const char *trace,
                             const char *extra, size_t *len)
{
    size_t cap = 512 + strlen(c->ip) + strlen(corr) + strlen(trace) + (extra ? strlen(extra) : 0) + req->authority.n;
    for (size_t i = 0; i < req->num_headers; i++)
        cap += req->headers[i].name.n + req->headers[i].value.n + 4;
    char *out = gw_malloc(cap);
    size_t pos = 0;
    for (size_t i = 0; i < req->num_headers; i++) {
        const gw_http_header *h = &req->headers[i];
        if (hop_by_hop(h->name) || gw_h1_connection_lists(req->headers, req->num_headers, h->name))
            continue;
        pos = appendf(out, cap, pos, "%.*s: %.*s\r\n", (int)h->name.n, h->name.p, (int)h->value.n, h->value.p);
    }
    const gw_http_header *xff = gw_h1_find_header(req->headers, req->num_headers, "X-Forwarded-For");
    if (xff)
        pos = appendf(out, cap, pos, "X-Forwarded-For: %.*s, %s\r\n", (int)xff->value.n, xff->value.p, c->ip);
    else
        pos = appendf(out, cap, pos, "X-Forwarded-For: %s\r\n", c->ip);
    const char *proto = gw_srv.tls_ctx ? "https" : "http";
    pos = appendf(out, cap, pos, "X-Forwarded-Proto: %s\r\n", proto);
    /* RFC 9112 section 3.2.2: an absolute-form target's authority stands
     * for the Host header (as information for the upstream only). */
    const gw_http_header *host = gw_h1_find_header(req->headers, req->num_headers, "Host");
    gw_str fwd_host = req->authority.n ? req->authority : host ? host->value : gw_str_make(NULL, 0);
    if (fwd_host.n)
        pos = appendf(out, cap, pos, "X-Forwarded-Host: %.*s\r\n", (int)fwd_host.n, fwd_host.p);
    pos = appendf(out, cap, pos, "X-Correlation-ID: %s\r\n", corr);
    /* A new span id under the same trace: the gateway is a hop. */
    char span[17];
    gw_rand_hex(span, 8);
    pos = appendf(out, cap, pos, "traceparent: 00-%s-%s-01\r\n", trace, span);
    if (extra)
        pos = appendf(out, cap, pos, "%s", extra);
    if (pos >= cap) {
        gw_free(out);
        return NULL;
    }
    *len = pos;
    return out;
}

/* The request target toward the upstream: the client's path (minus the
 * route's prefix with strip_prefix) under the upstream's base path, and the
 * query. */
char *gw_relay_upstream_path(const gw_route *r, const gw_upstream *u, const gw_http_req *req)
{
    gw_str path = req->path;
    if (r->strip_prefix) {
        size_t pl = strlen(r->path);
        if (r->path[pl - 1] == '/')
            pl--;
        if (path.n >= pl) {
            path.p += pl;
            path.n -= pl;
        }
    }
    const char *base = u->target.path;
    size_t bl = strlen(base);
    if (bl == 1 && base[0] == '/')
        bl = 0; /* "http://h:p" and "http://h:p/" pass the path as is */
    else if (bl && base[bl - 1] == '/' && path.n && path.p[0] == '/')
        bl--;
    size_t cap = bl + 1 + path.n + 1 + req->query.n + 1;
    char *out = gw_malloc(cap);
    snprintf(out, cap, "%.*s%s%.*s%s%.*s", (int)bl, base, path.n ? "" : "/", (int)path.n, path.p,
             req->query.n ? "?" : "", (int)req->query.n, req->query.p);
    return out;
}

/* ================================ start ===================================== */

static char *dup_or_null(const char *s) { return s ? gw_strdup(s) : NULL; }

int gw_relay_ws_start(gw_client *c, gw_http_req *req, const gw_route *r, gw_route_table *table,
                      const gw_req_ids *ids, const gw_relay_opts *o)
{
    static const gw_relay_opts none;
    if (!o)
        o = &none;
    gw_ws_upgrade upg;
    int status;
    const char *code;
    if (gw_ws_check_upgrade(req, &upg, &status, &code) != GW_OK || upg.key.n >= 32)
        return GW_ERR;
    gw_wsc_target t;
    const char *url = o->upstream_url;
    char *path = NULL; /* the client's target, whole, toward a route's upstream */
    if (o->target) {
        t = *o->target;
    } else {
        const gw_upstream *u = r->nusers && o->user ? gw_route_upstream(r, o->user, strlen(o->user)) : r->upstream;
        if (!u)
            return GW_ERR;
        t = u->target;
        path = gw_relay_upstream_path(r, u, req);
        url = u->url;
    }
    size_t hn = 0;
    char *headers = gw_relay_build_headers(c, req, ids->corr, ids->trace, o->extra_headers, &hn);
    if (!headers) {
        gw_log_line *l = gw_log_begin(GW_LOG_ERROR, "ws upstream request not built", ids->corr);
        if (l) {
            gw_log_str(l, "route", r->label, 0);
            gw_log_end(l);
        }
        gw_free(path);
        return GW_ERR;
    }

    gw_relay_pending *p = gw_calloc(1, sizeof *p);
    memcpy(p->key, upg.key.p, upg.key.n);
    p->route = r;
    p->table = table;
    gw_routes_ref(table);
    p->up_url = gw_strdup(url ? url : "");
    p->resource_name = dup_or_null(o->resource_name);
    p->session_id = dup_or_null(o->session_id);
    p->select_protocol = dup_or_null(o->select_protocol);
    p->on_result = o->on_result;
    snprintf(p->corr, sizeof p->corr, "%s", ids->corr);
    snprintf(p->trace, sizeof p->trace, "%s", ids->trace);
    snprintf(p->user, sizeof p->user, "%s", o->user && o->user[0] ? o->user : "-");
    gw_ws_negotiate_deflate(req, &p->pmd, p->ext, sizeof p->ext);

    /* The client's offer goes on whole, however long (a cut list could end
     * mid-name or lose the protocol the upstream would pick). */
    size_t pcap = 1;
    for (size_t i = 0; i < req->num_headers; i++)
        if (gw_str_ieq(req->headers[i].name, "Sec-WebSocket-Protocol"))
            pcap += req->headers[i].value.n + 2;
    char *protocols = gw_malloc(pcap);
    size_t pn = gw_h1_join_header(req, "Sec-WebSocket-Protocol", protocols, pcap);
    const char *offer = o->offer_protocols ? (o->offer_protocols[0] ? o->offer_protocols : NULL)
                                           : (pn ? protocols : NULL);
    gw_wsc_opts wo = {
        .protocols = offer,
        .headers = headers,
        .path = path,
        .deflate = 0, /* the gateway's own hop: messages cross it uncompressed */
        .max_msg = gw_srv.cfg.ws_max_message_bytes,
        .timeout_ms = r->connect_timeout_ms ? r->connect_timeout_ms : 10000,
    };
    char err[256];
    relay_leg *leg = gw_calloc(1, sizeof *leg);
    leg->c = c;
    leg->w = c->w;
    leg->up = gw_wsc_connect(c->w->loop, NULL, &t, &wo, &up_cbs, leg, err, sizeof err);
    gw_free(headers);
    gw_free(path);
    gw_free(protocols);
    c->pending = p;
    if (!leg->up) {
        gw_free(leg);
        gw_relay_pending_abort(c);
        return GW_ERR;
    }
    p->leg = leg;
    c->phase = GW_PHASE_UPSTREAM;
    c->phase_ms = gw_loop_now(c->w->loop);
    gw_conn_pause(&c->conn, 1);
    gw_client_arm(c);
    return GW_OK;
}

static void pending_free(gw_client *c)
{
    gw_relay_pending *p = c->pending;
    if (!p)
        return;
    gw_routes_unref(p->table);
    gw_free(p->up_url);
    gw_free(p->resource_name);
    gw_free(p->session_id);
    gw_free(p->select_protocol);
    gw_free(p);
    c->pending = NULL;
}

/* The client went away (or timed out) before the upstream answered. */
void gw_relay_pending_abort(gw_client *c)
{
    gw_relay_pending *p = c->pending;
    if (!p)
        return;
    if (c->phase == GW_PHASE_UPSTREAM)
        gw_counter_inc(gw_metric_handshake(p->route, "client_gone"));
    if (p->leg) {
        gw_wsc_free(p->leg->up);
        gw_free(p->leg);
    }
    pending_free(c);
}

/* =============================== upstream leg =============================== */

static void report_result(gw_client *c, const char *result, int status, const char *error)
{
    gw_relay_pending *p = c->pending;
    if (!p->on_result)
        return;
    gw_relay_result res = {.result = result,
                           .upstream_status = status,
                           .error = error ? error : "",
                           .corr = p->corr,
                           .ip = c->ip,
                           .user = p->user,
                           .upstream = p->up_url,
                           .resource_name = p->resource_name,
                           .session_id = p->session_id};
    p->on_result(&res);
}

static void up_open(gw_wsc *up, const char *subprotocol, const gw_wsc_response *resp)
{
    GW_UNUSED(resp);
    relay_leg *leg = gw_wsc_data(up);
    gw_client *c = leg->c;
    gw_relay_pending *p = c->pending;
    report_result(c, "accepted", 0, NULL);
    char out[1024];
    const char *sel = p->select_protocol ? p->select_protocol : subprotocol;
    gw_str proto = gw_str_make(sel, strlen(sel));
    size_t n = gw_ws_build_101(out, sizeof out, gw_str_make(p->key, strlen(p->key)), proto,
                               p->pmd.enabled ? p->ext : NULL, p->corr, p->trace);
    gw_conn_write(&c->conn, out, n);
    gw_wsconn *wsc = gw_ws_serve_open(c, p->route, p->table, p->corr, p->user, &gw_relay_handler, &p->pmd);
    wsc->up = up;
    wsc->leg = leg;
    p->leg = NULL;
    wsc->up_url = p->up_url;
    wsc->resource_name = p->resource_name;
    wsc->session_id = p->session_id;
    p->up_url = p->resource_name = p->session_id = NULL;
    wsc->up_last_seen_ms = wsc->up_last_ping_ms = gw_loop_now(c->w->loop);
    /* A selected protocol given by the route's owner may be a credential
     * (the terminal token): only the gateway's own names are logged. */
    gw_str logged = proto;
    if (p->select_protocol && strncmp(p->select_protocol, "wsgate.", 7) != 0)
        logged = gw_str_make(NULL, 0);
    gw_ws_serve_log_open(c, logged, p->pmd.enabled, p->trace);
    pending_free(c);
    /* Frames the client sent right after its upgrade wait in conn.in. */
    gw_conn_pause(&c->conn, 0);
    if (c->conn.in.len)
        gw_loop_pending(c->w->loop, &c->task);
}

/* The upstream refused or could not be reached: answer the client's
 * upgrade with what happened. */
static void refuse(gw_client *c, const gw_wsc_reason *r)
{
    gw_relay_pending *p = c->pending;
    const char *result;
    gw_req_ids ids;
    snprintf(ids.corr, sizeof ids.corr, "%s", p->corr);
    snprintf(ids.trace, sizeof ids.trace, "%s", p->trace);
    c->close_after = 1;
    if (r->kind == GW_WSC_HTTP_REFUSED && r->resp) {
        /* Pass the upstream's answer back: status, end-to-end headers
         * (subprotocol included), body. */
        const gw_wsc_response *resp = r->resp;
        char head[HEADERS_MAX];
        int pos = snprintf(head, sizeof head, "HTTP/1.1 %d %.*s\r\n", resp->head.status, (int)resp->head.reason.n,
                           resp->head.reason.p);
        for (size_t i = 0; i < resp->head.num_headers && pos > 0 && (size_t)pos < sizeof head; i++) {
            const gw_http_header *h = &resp->head.headers[i];
            if (gw_str_ieq(h->name, "Connection") || gw_str_ieq(h->name, "Transfer-Encoding") ||
                gw_str_ieq(h->name, "Content-Length") || gw_str_ieq(h->name, "Keep-Alive") ||
                gw_str_ieq(h->name, "Upgrade"))
                continue;
            pos += snprintf(head + pos, sizeof head - (size_t)pos, "%.*s: %.*s\r\n", (int)h->name.n, h->name.p,
                            (int)h->value.n, h->value.p);
        }
        if (pos > 0 && (size_t)pos < sizeof head)
            pos += snprintf(head + pos, sizeof head - (size_t)pos,
                            "Content-Length: %zu\r\nX-Correlation-ID: %s\r\nX-Trace-ID: %s\r\n"
                            "Connection: close\r\n\r\n",
                            resp->body_len, p->corr, p->trace);
        if (pos > 0 && (size_t)pos < sizeof head) {
            struct iovec iov[2] = {{head, (size_t)pos}, {(void *)resp->body, resp->body_len}};
            gw_conn_writev(&c->conn, iov, resp->body_len ? 2 : 1);
        } else {
            gw_http_error_ids(c, 502, "bad_upstream_response", "the upstream refused with an oversized head", NULL,
                              NULL, &ids);
        }
        gw_counter_inc(gw_metric_http(0, resp->head.status));
        result = "upstream_refused";
    } else if (r->kind == GW_WSC_CONNECT_TIMEOUT) {
        gw_http_error_ids(c, 504, "upstream_timeout", "the upstream did not answer in time", NULL, NULL, &ids);
        result = "upstream_timeout";
    } else {
        gw_http_error_ids(c, 502, "upstream_unavailable", "the upstream could not be reached", NULL, NULL, &ids);
        result = "upstream_unavailable";
    }
    report_result(c, result, r->kind == GW_WSC_HTTP_REFUSED ? r->status : 0, r->text);
    gw_counter_inc(gw_metric_handshake(p->route, result));
    gw_counter_inc(gw_metric_close(p->route, gw_cause_upstream_closed));
    gw_log_line *l = gw_log_begin(GW_LOG_WARN, "ws close", p->corr);
    if (l) {
        gw_log_str(l, "user", p->user, 0);
        gw_log_str(l, "ip", c->ip, 0);
        gw_log_int(l, "dur_ms", (int64_t)(gw_loop_now(c->w->loop) - c->phase_ms), 0);
        gw_log_str(l, "cause", gw_cause_upstream_closed, 0);
        gw_log_str(l, "route", p->route->label, GW_LOG_JSON_ONLY);
        gw_log_str(l, "upstream", p->up_url, GW_LOG_JSON_ONLY);
        if (p->resource_name)
            gw_log_str(l, "resource_name", p->resource_name, GW_LOG_JSON_ONLY);
        if (p->session_id)
            gw_log_str(l, "session_id", p->session_id, GW_LOG_JSON_ONLY);
        gw_log_str(l, "closed_first", "upstream", GW_LOG_JSON_ONLY);
        gw_log_str(l, "upstream_result", gw_wsc_end_str(r->kind), GW_LOG_JSON_ONLY);
        if (r->status)
            gw_log_int(l, "upstream_status", r->status, GW_LOG_JSON_ONLY);
        if (r->text[0])
            gw_log_str(l, "error", r->text, GW_LOG_JSON_ONLY);
        gw_log_end(l);
    }
    pending_free(c);
    gw_client_finish(c);
}

static void leg_free(relay_leg *leg)
{
    gw_wsc_free(leg->up);
    gw_free(leg);
}

static void up_close(gw_wsc *up, const gw_wsc_reason *r)
{
    relay_leg *leg = gw_wsc_data(up);
    gw_client *c = leg->c;
    if (!c) {
        /* An orphan: the client left first; this was the tail of its close. */
        gw_worker *w = leg->w;
        gw_list_remove(&leg->node);
        w->norphans--;
        leg_free(leg);
        gw_worker_maybe_stop(w);
        return;
    }
    if (c->phase == GW_PHASE_UPSTREAM) {
        if (c->pending)
            c->pending->leg = NULL;
        refuse(c, r); /* reads r->resp: free the leg after */
        leg_free(leg);
        return;
    }
    gw_wsconn *wsc = c->wsc;
    if (!wsc || wsc->up != up) {
        leg_free(leg);
        return;
    }
    if (!wsc->closed_first)
        wsc->closed_first = GW_FIRST_UPSTREAM;
    switch (r->kind) {
    case GW_WSC_CLOSED_BY_PEER:
        /* A clean close from the upstream: carry its code and reason. */
        wsc->up_code = (uint16_t)r->code;
        gw_ws_close(&wsc->ws, r->code == GW_WS_CLOSE_NO_STATUS ? 0 : r->code, r->text, gw_cause_graceful);
        break;
    case GW_WSC_CLOSED_LOCALLY:
        wsc->up_code = (uint16_t)r->peer_code;
        break;
    default:
        /* Reset, EOF without Close, protocol failure: the upstream is gone.
         * 1014 is "bad gateway" (RFC 6455 registry). */
        gw_ws_close(&wsc->ws, 1014, "upstream_closed", gw_cause_upstream_closed);
        break;
    }
    wsc->up = NULL;
    wsc->leg = NULL;
    leg_free(leg);
    gw_conn_flush(&c->conn);
    if (wsc->ws.state == GW_WS_CLOSE_SENT && !wsc->close_deadline_ms) {
        wsc->close_deadline_ms = gw_loop_now(c->w->loop) + GW_CLOSE_WAIT_MS;
        gw_client_arm(c);
    }
}

static gw_client *leg_client(gw_wsc *up)
{
    relay_leg *leg = gw_wsc_data(up);
    return leg ? leg->c : NULL;
}

static void up_message(gw_wsc *up, int opcode, uint8_t *p, size_t n)
{
    gw_client *c = leg_client(up);
    if (!c || c->phase != GW_PHASE_WS)
        return;
    gw_wsconn *wsc = c->wsc;
    wsc->up_last_seen_ms = gw_loop_now(c->w->loop);
    /* Messages of one upstream read batch leave toward the client in one
     * write, before the loop sleeps. */
    gw_conn_cork_deferred(&c->conn);
    if (gw_ws_send(&wsc->ws, opcode, p, n) != GW_OK)
        return;
    /* Backpressure: stop reading the upstream while the client's queue is
     * long; gw_relay_client_drained() resumes it. */
    if (gw_conn_queued(&c->conn) > GW_OUT_HIGH && !wsc->up_paused) {
        /* Try the socket first (unless the queue already waits for its write
         * event): what stays queued has write interest, and that event
         * resumes the upstream. */
        if (!(c->conn.io.events & GW_EV_WRITE))
            gw_conn_flush(&c->conn);
        if (gw_conn_queued(&c->conn) > GW_OUT_HIGH) {
            wsc->up_paused = 1;
            gw_wsc_pause(up, 1);
        }
    }
}

static void up_pong(gw_wsc *up, const uint8_t *p, size_t n)
{
    GW_UNUSED(p);
    GW_UNUSED(n);
    gw_client *c = leg_client(up);
    if (c && c->wsc)
        c->wsc->up_last_seen_ms = gw_loop_now(c->w->loop);
}

static void up_drain(gw_wsc *up)
{
    gw_client *c = leg_client(up);
    if (!c || c->phase != GW_PHASE_WS || !(c->conn.flags & GW_CONN_F_PAUSED))
        return;
    gw_conn_pause(&c->conn, 0);
    if (c->conn.in.len)
        gw_loop_pending(c->w->loop, &c->task);
}

void gw_relay_client_drained(gw_client *c)
{
    gw_wsconn *wsc = c->wsc;
    if (wsc && wsc->up && wsc->up_paused) {
        wsc->up_paused = 0;
        gw_wsc_pause(wsc->up, 0);
    }
}

/* ============================== downstream leg ============================== */

static void down_message(gw_ws *ws, int opcode, uint8_t *p, size_t n)
{
    gw_client *c = ws->data;
    gw_wsconn *wsc = c->wsc;
    wsc->last_msg_ms = gw_loop_now(c->w->loop);
    if (!wsc->up)
        return;
    gw_ws *uws = gw_wsc_ws(wsc->up);
    if (uws)
        gw_conn_cork_deferred(uws->conn);
    gw_wsc_send(wsc->up, opcode, p, n);
    if (gw_wsc_queued(wsc->up) > GW_OUT_HIGH && uws) {
        /* What stays queued has write interest, whose event (up_drain)
         * resumes us; a queue already waiting for it is left to it. */
        if (!(uws->conn->io.events & GW_EV_WRITE))
            gw_conn_flush(uws->conn);
        if (gw_wsc_queued(wsc->up) > GW_OUT_HIGH)
            gw_conn_pause(&c->conn, 1);
    }
}

static void down_peer_close(gw_ws *ws, unsigned code, const uint8_t *reason, size_t n)
{
    gw_client *c = ws->data;
    gw_wsconn *wsc = c->wsc;
    wsc->down_code = (uint16_t)code;
    if (!wsc->closed_first)
        wsc->closed_first = GW_FIRST_DOWNSTREAM;
    if (wsc->up) {
        char why[124];
        size_t k = GW_MIN(n, sizeof why - 1);
        memcpy(why, reason, k);
        why[k] = '\0';
        gw_wsc_close(wsc->up, code == GW_WS_CLOSE_NO_STATUS ? GW_WS_CLOSE_NORMAL : code, why);
    }
}

const gw_ws_handler gw_relay_handler = {down_message, NULL, down_peer_close};

/* The downstream session is over (any path): the upstream leg, if still
 * there, is told with the client's code (1001 when the client vanished) and
 * left to finish its close on its own as an orphan. */
void gw_relay_downstream_closed(gw_client *c)
{
    gw_wsconn *wsc = c->wsc;
    if (!wsc || !wsc->up)
        return;
    gw_wsc *up = wsc->up;
    wsc->up = NULL;
    if (!wsc->closed_first)
        wsc->closed_first = wsc->ws.cause == gw_cause_downstream_closed || wsc->ws.cause == gw_cause_graceful
                                ? GW_FIRST_DOWNSTREAM
                                : GW_FIRST_GATEWAY;
    if (wsc->ws.cause == gw_cause_graceful && wsc->down_code) {
        /* Already forwarded by down_peer_close; let that close finish. */
    } else if (wsc->ws.cause == gw_cause_shutdown) {
        gw_wsc_close(up, GW_WS_CLOSE_GOING_AWAY, "gateway is shutting down");
    } else {
        gw_wsc_close(up, GW_WS_CLOSE_GOING_AWAY, wsc->ws.cause ? wsc->ws.cause : "downstream_closed");
    }
    relay_leg *leg = wsc->leg;
    wsc->leg = NULL;
    leg->c = NULL;
    gw_list_insert_tail(&c->w->orphans, &leg->node);
    c->w->norphans++;
}

/* Drops every orphan leg at once (forced stop). */
void gw_relay_orphans_free(gw_worker *w)
{
    while (!gw_list_empty(&w->orphans)) {
        relay_leg *leg = gw_container_of(w->orphans.next, relay_leg, node);
        gw_list_remove(&leg->node);
        leg_free(leg);
        w->norphans--;
    }
}

/* Upstream heartbeat, on the client's timer. */
void gw_relay_timer(gw_client *c, uint64_t now)
{
    const gw_config *cfg = &gw_srv.cfg;
    gw_wsconn *wsc = c->wsc;
    if (!wsc->up || wsc->ws.state != GW_WS_OPEN)
        return;
    /* Backstop for the drain notifications: a leg paused for a queue that is
     * no longer long is resumed here at the latest. */
    if (wsc->up_paused && gw_conn_queued(&c->conn) <= GW_OUT_HIGH)
        gw_relay_client_drained(c);
    if ((c->conn.flags & GW_CONN_F_PAUSED) && gw_wsc_queued(wsc->up) <= GW_OUT_HIGH &&
        gw_conn_queued(&c->conn) <= GW_OUT_HIGH)
        up_drain(wsc->up);
    if (!cfg->ws_ping_interval_ms)
        return;
    if (wsc->up_paused)
        wsc->up_last_seen_ms = now; /* unread because we paused it, not silent */
    if (now >= wsc->up_last_seen_ms + cfg->ws_pong_timeout_ms) {
        relay_leg *leg = wsc->leg;
        wsc->up = NULL;
        wsc->leg = NULL;
        wsc->closed_first = GW_FIRST_UPSTREAM;
        leg_free(leg);
        gw_ws_close(&wsc->ws, 1014, "upstream_heartbeat_timeout", gw_cause_heartbeat_timeout);
        return;
    }
    if (now >= wsc->up_last_ping_ms + cfg->ws_ping_interval_ms) {
        gw_wsc_ping(wsc->up, (const uint8_t *)"wsgate", 6);
        wsc->up_last_ping_ms = now;
    }
}

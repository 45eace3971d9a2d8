/* relay.c: the WebSocket relay (route kind "proxy", and the terminal route's
 * path to its agent).
 *
 * The client's upgrade is answered only once the upstream accepted its own:
 * until then the client is held, not read (GW_PHASE_HELD). A refusal is passed
 * back with the upstream's status, headers and body; a failure to reach the
 * upstream is a 502 (504 on timeout) with the error envelope. Once both legs
 * are open, messages are relayed both ways; each leg keeps its own
 * heartbeat; a Close on one leg is carried to the other with its code and
 * reason; and the one "ws close" line says which leg ended first and why. */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/common.h"
#include "http/ws_handshake.h"
#include "log/log.h"
#include "proxy/forward.h"
#include "proxy/proxy.h"
#include "server/state.h"
#include "server/ws_serve.h"

#define HEADERS_MAX 8192

/* The upstream leg's user data: the client while it lives, then (c NULL)
 * an orphan on the worker's list until the leg's close completes. */
typedef struct relay_leg {
    gw_linger linger; /* on the worker while an orphan */
    gw_wsc *up;
    gw_client *c;
    gw_worker *w;
} relay_leg;

/* A relayed session: the app state of the client's WebSocket phase. */
typedef struct relay {
    relay_leg *leg;        /* the upstream leg (leg->up); NULL once it ended */
    char *up_url;          /* the upstream, for logs (owned) */
    char *resource_name;   /* terminal sessions: logged on every line (owned) */
    char *session_id;      /* terminal sessions (owned) */
    uint64_t up_last_seen_ms, up_last_ping_ms;
    uint16_t down_code;    /* Close code the client sent (0: none) */
    uint16_t up_code;      /* Close code the upstream sent (0: none) */
    uint8_t closed_first;  /* FIRST_*: which leg ended first */
    uint8_t up_paused;     /* upstream reads paused: the client's queue is long */
} relay;

#define RL_UP(rl) ((rl)->leg ? (rl)->leg->up : NULL)

enum { FIRST_NONE = 0, FIRST_DOWNSTREAM, FIRST_UPSTREAM, FIRST_GATEWAY };

/* The client's upgrade while the upstream has not answered: the state of
 * the client's GW_PHASE_HELD. */
typedef struct relay_pending {
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
} relay_pending;

static void up_open(gw_wsc *up, const char *subprotocol, const gw_wsc_response *resp);
static void up_message(gw_wsc *up, int opcode, uint8_t *p, size_t n);
static void up_pong(gw_wsc *up, const uint8_t *p, size_t n);
static void up_drain(gw_wsc *up);
static void up_close(gw_wsc *up, const gw_wsc_reason *r);
static void up_run(gw_wsc *up, uint8_t *p, size_t n, size_t count, uint64_t payload);

static const gw_wsc_cbs up_cbs = {up_open, up_message, up_pong, up_drain, up_close, up_run};

static void pending_abort(gw_client *c);
static int held_paused(gw_client *c)
{
    GW_UNUSED(c);
    return 1;
}
static size_t held_feed(gw_client *c, uint8_t *p, size_t n)
{
    GW_UNUSED(c);
    GW_UNUSED(p);
    GW_UNUSED(n);
    return 0; /* kept until the upstream answers */
}

/* The held upgrade: not read, closed at drain, freed at close. */
static const gw_client_proto held_proto = {.feed = held_feed, .keep_paused = held_paused, .end = pending_abort};

static relay_pending *pending_of(gw_client *c) { return gw_client_data(c, &held_proto); }

static const gw_ws_app relay_app;

/* The relay of c's WebSocket phase, or NULL. */
static relay *relay_of(gw_client *c)
{
    gw_wsconn *wsc = c ? gw_wsconn_of(c) : NULL;
    return wsc && wsc->app == &relay_app ? gw_ws_app_data(wsc) : NULL;
}

/* ================================ start ===================================== */

static char *dup_or_null(const char *s) { return s ? gw_strdup(s) : NULL; }

static void pending_free(relay_pending *p)
{
    gw_routes_unref(p->table);
    gw_free(p->up_url);
    gw_free(p->resource_name);
    gw_free(p->session_id);
    gw_free(p->select_protocol);
    gw_free(p);
}

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
        path = o->path ? gw_strdup(o->path) : NULL;
    } else {
        const gw_upstream *u = r->nusers && o->user ? gw_route_upstream(r, o->user, strlen(o->user)) : r->upstream;
        if (!u)
            return GW_ERR;
        t = u->target;
        path = gw_fwd_target(r, u, req);
        url = u->url;
    }
    size_t hn = 0;
    char *headers = gw_fwd_headers(req, c->ip, gw_srv.tls_ctx != NULL, ids->corr, ids->trace, o->extra_headers, &hn);
    if (!headers) {
        gw_log_line *l = gw_log_begin(GW_LOG_ERROR, "ws upstream request not built", ids->corr);
        if (l) {
            gw_log_str(l, "route", r->label, 0);
            gw_log_end(l);
        }
        gw_free(path);
        return GW_ERR;
    }

    relay_pending *p = gw_calloc(1, sizeof *p);
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
        .timeout_ms = r->connect_timeout_ms,
    };
    char err[256];
    relay_leg *leg = gw_calloc(1, sizeof *leg);
    leg->c = c;
    leg->w = c->w;
    leg->up = gw_wsc_connect(c->w->loop, NULL, &t, &wo, &up_cbs, leg, err, sizeof err);
    gw_free(headers);
    gw_free(path);
    gw_free(protocols);
    if (!leg->up) {
        gw_free(leg);
        pending_free(p);
        return GW_ERR;
    }
    p->leg = leg;
    gw_client_enter(c, GW_PHASE_HELD, &held_proto, p);
    c->phase_ms = gw_loop_now(c->w->loop);
    gw_conn_pause(&c->conn, 1);
    gw_client_arm(c);
    return GW_OK;
}

/* The client went away (or timed out) before the upstream answered. */
static void pending_abort(gw_client *c)
{
    relay_pending *p = c->pdata;
    if (!p)
        return;
    if (c->phase == GW_PHASE_HELD)
        gw_counter_inc(gw_metric_handshake(p->route, "client_gone"));
    if (p->leg) {
        gw_wsc_free(p->leg->up);
        gw_free(p->leg);
    }
    pending_free(p);
    c->pdata = NULL;
}

/* =============================== upstream leg =============================== */

static void report_result(gw_client *c, relay_pending *p, const char *result, int status, const char *error)
{
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
    relay_pending *p = pending_of(c);
    report_result(c, p, "accepted", 0, NULL);
    char out[1024];
    const char *sel = p->select_protocol ? p->select_protocol : subprotocol;
    gw_str proto = gw_str_make(sel, strlen(sel));
    size_t n = gw_ws_build_101(out, sizeof out, gw_str_make(p->key, strlen(p->key)), proto,
                               p->pmd.enabled ? p->ext : NULL, p->corr, p->trace);
    gw_conn_write(&c->conn, out, n);
    c->pdata = NULL; /* the held phase ends here: p is freed below */
    gw_wsconn *wsc = gw_ws_serve_open(c, p->route, p->table, p->corr, p->user, &relay_app, sizeof(relay), &p->pmd);
    relay *rl = gw_ws_app_data(wsc);
    rl->leg = leg;
    p->leg = NULL;
    rl->up_url = p->up_url;
    rl->resource_name = p->resource_name;
    rl->session_id = p->session_id;
    p->up_url = p->resource_name = p->session_id = NULL;
    rl->up_last_seen_ms = rl->up_last_ping_ms = gw_loop_now(c->w->loop);
    /* A selected protocol given by the route's owner may be a credential
     * (the terminal token): only the gateway's own names are logged. */
    gw_str logged = proto;
    if (p->select_protocol && strncmp(p->select_protocol, "wsgate.", 7) != 0)
        logged = gw_str_make(NULL, 0);
    gw_ws_serve_log_open(wsc, logged, p->pmd.enabled, p->trace);
    /* The upstream's messages go to the client as they came, unless the
     * client asked for compression (then each is deflated on its way). */
    gw_wsc_set_runs(up, !p->pmd.enabled);
    pending_free(p);
    /* Frames the client sent right after its upgrade wait in conn.in. */
    gw_conn_pause(&c->conn, 0);
    gw_client_kick(c);
}

/* The upstream refused or could not be reached: answer the client's
 * upgrade with what happened. */
static void refused_fields(void *arg, gw_log_line *l)
{
    const void *const *a = arg;
    const relay_pending *p = a[0];
    const gw_wsc_reason *r = a[1];
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
}

static void refuse(gw_client *c, const gw_wsc_reason *r)
{
    relay_pending *p = c->pdata;
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
            if (gw_fwd_hop_by_hop(h->name))
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
    report_result(c, p, result, r->kind == GW_WSC_HTTP_REFUSED ? r->status : 0, r->text);
    gw_counter_inc(gw_metric_handshake(p->route, result));
    gw_counter_inc(gw_metric_close(p->route, gw_cause_upstream_closed));
    const void *args[2] = {p, r};
    gw_ws_close_line cl = {.level = GW_LOG_WARN,
                           .corr = p->corr,
                           .user = p->user,
                           .ip = c->ip,
                           .cause = gw_cause_upstream_closed,
                           .route = p->route->label,
                           .dur_ms = gw_loop_now(c->w->loop) - c->phase_ms,
                           .fields = refused_fields,
                           .arg = (void *)args};
    gw_ws_log_close(&cl);
    pending_free(p);
    c->pdata = NULL;
    gw_client_finish(c);
}

static void leg_free(relay_leg *leg)
{
    gw_wsc_free(leg->up);
    gw_free(leg);
}

static void orphan_free(gw_linger *l) { leg_free(gw_container_of(l, relay_leg, linger)); }

/* 1011-range code for "the upstream behind the gateway failed" (RFC 6455
 * registry: 1014 Bad Gateway). */
#define CLOSE_BAD_GATEWAY 1014

static void up_close(gw_wsc *up, const gw_wsc_reason *r)
{
    relay_leg *leg = gw_wsc_data(up);
    gw_client *c = leg->c;
    if (!c) {
        /* An orphan: the client left first; this was the tail of its close. */
        gw_worker *w = leg->w;
        gw_worker_unlinger(w, &leg->linger);
        leg_free(leg);
        return;
    }
    if (c->phase == GW_PHASE_HELD) {
        relay_pending *p = pending_of(c);
        if (p)
            p->leg = NULL;
        refuse(c, r); /* reads r->resp: free the leg after */
        leg_free(leg);
        return;
    }
    gw_wsconn *wsc = gw_wsconn_of(c);
    relay *rl = relay_of(c);
    if (!rl || RL_UP(rl) != up) {
        leg_free(leg);
        return;
    }
    if (!rl->closed_first)
        rl->closed_first = gw_ws_serve_gateway_closed(wsc) ? FIRST_GATEWAY : FIRST_UPSTREAM;
    switch (r->kind) {
    case GW_WSC_CLOSED_BY_PEER:
        /* A clean close from the upstream: carry its code and reason. */
        rl->up_code = (uint16_t)r->code;
        gw_ws_close(&wsc->ws, r->code == GW_WS_CLOSE_NO_STATUS ? 0 : r->code, r->text, gw_cause_graceful);
        break;
    case GW_WSC_CLOSED_LOCALLY:
        rl->up_code = (uint16_t)r->peer_code;
        break;
    default:
        /* Reset, EOF without Close, protocol failure: the upstream is gone. */
        gw_ws_close(&wsc->ws, CLOSE_BAD_GATEWAY, "upstream_closed", gw_cause_upstream_closed);
        break;
    }
    rl->leg = NULL;
    leg_free(leg);
    gw_conn_flush(&c->conn);
    gw_ws_serve_closing(wsc);
}

/* The client an upstream message goes to, or NULL: its output corked till
 * the loop's pass ends (messages of one upstream read batch leave in one
 * write). */
static gw_client *up_target(gw_wsc *up)
{
    relay_leg *leg = gw_wsc_data(up);
    gw_client *c = leg ? leg->c : NULL;
    relay *rl = relay_of(c);
    if (!rl || c->phase != GW_PHASE_WS)
        return NULL;
    rl->up_last_seen_ms = gw_loop_now(c->w->loop);
    gw_conn_cork_deferred(&c->conn);
    return c;
}

/* Backpressure: stop reading the upstream while the client's queue is
 * long; relay_drained() resumes it. What stays queued has write interest,
 * and that event resumes the upstream. */
static void up_sent(gw_wsc *up, gw_client *c)
{
    relay *rl = relay_of(c);
    if (gw_conn_queued(&c->conn) > GW_OUT_HIGH && !rl->up_paused && gw_conn_try_drain(&c->conn) > GW_OUT_HIGH) {
        rl->up_paused = 1;
        gw_wsc_pause(up, 1);
    }
}

static void up_message(gw_wsc *up, int opcode, uint8_t *p, size_t n)
{
    gw_client *c = up_target(up);
    if (c && gw_ws_send(&((gw_wsconn *)c->pdata)->ws, opcode, p, n) == GW_OK)
        up_sent(up, c);
}

/* Whole upstream messages as they came: the same bytes go to the client. */
static void up_run(gw_wsc *up, uint8_t *p, size_t n, size_t count, uint64_t payload)
{
    gw_client *c = up_target(up);
    if (c && gw_ws_send_run(&((gw_wsconn *)c->pdata)->ws, p, n, count, payload) == GW_OK)
        up_sent(up, c);
}

static void up_pong(gw_wsc *up, const uint8_t *p, size_t n)
{
    GW_UNUSED(p);
    GW_UNUSED(n);
    relay_leg *leg = gw_wsc_data(up);
    relay *rl = relay_of(leg ? leg->c : NULL);
    if (rl)
        rl->up_last_seen_ms = gw_loop_now(leg->c->w->loop);
}

/* The upstream's queue drained: read the client again. */
static void up_drain(gw_wsc *up)
{
    relay_leg *leg = gw_wsc_data(up);
    gw_client *c = leg ? leg->c : NULL;
    if (!c || c->phase != GW_PHASE_WS || !(c->conn.flags & GW_CONN_F_PAUSED))
        return;
    gw_conn_pause(&c->conn, 0);
    gw_client_kick(c);
}

/* The client's output queue drained: resume the upstream. */
static void relay_drained(gw_wsconn *wsc)
{
    relay *rl = gw_ws_app_data(wsc);
    if (RL_UP(rl) && rl->up_paused) {
        rl->up_paused = 0;
        gw_wsc_pause(RL_UP(rl), 0);
    }
}

/* The client stays paused while the upstream's queue is long. */
static int relay_keep_paused(gw_wsconn *wsc)
{
    relay *rl = gw_ws_app_data(wsc);
    return RL_UP(rl) && gw_wsc_queued(RL_UP(rl)) > GW_OUT_HIGH;
}

/* ============================== downstream leg ============================== */

/* The upstream leg a client message goes to, or NULL: its output corked
 * till the loop's pass ends. */
static gw_wsc *down_target(gw_wsconn *wsc)
{
    relay *rl = gw_ws_app_data(wsc);
    gw_wsc *up = RL_UP(rl);
    gw_ws *uws = up ? gw_wsc_ws(up) : NULL;
    if (uws && uws->io) /* the upstream session writes to its conn (gw_conn_sink) */
        gw_conn_cork_deferred(uws->io);
    return up;
}

/* What stays queued has write interest, whose event (up_drain) resumes us;
 * a queue already waiting for it is left to it. */
static void down_sent(gw_wsconn *wsc, gw_wsc *up)
{
    gw_ws *uws = gw_wsc_ws(up);
    if (gw_wsc_queued(up) > GW_OUT_HIGH && uws && uws->io && gw_conn_try_drain(uws->io) > GW_OUT_HIGH)
        gw_conn_pause(&wsc->c->conn, 1);
}

static void down_message(gw_wsconn *wsc, int opcode, uint8_t *p, size_t n)
{
    gw_wsc *up = down_target(wsc);
    if (up) {
        gw_wsc_send(up, opcode, p, n);
        down_sent(wsc, up);
    }
}

/* Whole client messages as they came: remasked with fresh keys in place. */
static void down_run(gw_wsconn *wsc, uint8_t *p, size_t n, size_t count, uint64_t payload)
{
    gw_wsc *up = down_target(wsc);
    if (up) {
        gw_wsc_send_run(up, p, n, count, payload);
        down_sent(wsc, up);
    }
}

static void down_peer_close(gw_wsconn *wsc, unsigned code, const uint8_t *reason, size_t n)
{
    relay *rl = gw_ws_app_data(wsc);
    rl->down_code = (uint16_t)code;
    if (!rl->closed_first) /* an answer to the gateway's own Close is not the client's doing */
        rl->closed_first = gw_ws_serve_gateway_closed(wsc) ? FIRST_GATEWAY : FIRST_DOWNSTREAM;
    if (RL_UP(rl)) {
        char why[124];
        size_t k = GW_MIN(n, sizeof why - 1);
        memcpy(why, reason, k);
        why[k] = '\0';
        gw_wsc_close(RL_UP(rl), code == GW_WS_CLOSE_NO_STATUS ? GW_WS_CLOSE_NORMAL : code, why);
    }
}

/* The gateway closes the session itself (drain, heartbeat, idle limit):
 * both legs are told at once, with the same code and reason. */
static void relay_closing(gw_wsconn *wsc, unsigned code, const char *reason)
{
    relay *rl = gw_ws_app_data(wsc);
    if (!rl->closed_first)
        rl->closed_first = FIRST_GATEWAY;
    if (RL_UP(rl))
        gw_wsc_close(RL_UP(rl), code, reason);
}

/* The downstream session is over (any path): the upstream leg, if still
 * there, is told with the client's code (1001 when the client vanished) and
 * left to finish its close on its own as an orphan on the worker. */
static void relay_closed(gw_wsconn *wsc)
{
    relay *rl = gw_ws_app_data(wsc);
    if (!rl->leg)
        return;
    gw_wsc *up = rl->leg->up;
    if (!rl->closed_first)
        rl->closed_first = !gw_ws_serve_gateway_closed(wsc) && (wsc->ws.cause == gw_cause_downstream_closed ||
                                                                 wsc->ws.cause == gw_cause_graceful)
                               ? FIRST_DOWNSTREAM
                               : FIRST_GATEWAY;
    if (wsc->ws.cause == gw_cause_graceful && rl->down_code) {
        /* Already forwarded by down_peer_close; let that close finish. */
    } else if (wsc->ws.cause == gw_cause_shutdown) {
        gw_wsc_close(up, GW_WS_CLOSE_GOING_AWAY, "gateway is shutting down");
    } else {
        gw_wsc_close(up, GW_WS_CLOSE_GOING_AWAY, wsc->ws.cause ? wsc->ws.cause : "downstream_closed");
    }
    relay_leg *leg = rl->leg;
    rl->leg = NULL;
    leg->c = NULL;
    gw_worker_linger(leg->w, &leg->linger, &relay_app, orphan_free);
}

/* Upstream heartbeat, on the client's timer. */
static void relay_timer(gw_wsconn *wsc, uint64_t now)
{
    const gw_config *cfg = &gw_srv.cfg;
    relay *rl = gw_ws_app_data(wsc);
    gw_client *c = wsc->c;
    if (!RL_UP(rl) || wsc->ws.state != GW_WS_OPEN)
        return;
    /* Backstop for the drain notifications: a leg paused for a queue that is
     * no longer long is resumed here at the latest. */
    if (rl->up_paused && gw_conn_queued(&c->conn) <= GW_OUT_HIGH)
        relay_drained(wsc);
    if ((c->conn.flags & GW_CONN_F_PAUSED) && gw_wsc_queued(RL_UP(rl)) <= GW_OUT_HIGH &&
        gw_conn_queued(&c->conn) <= GW_OUT_HIGH)
        up_drain(RL_UP(rl));
    if (!cfg->ws_ping_interval_ms)
        return;
    if (rl->up_paused)
        rl->up_last_seen_ms = now; /* unread because we paused it, not silent */
    if (now >= rl->up_last_seen_ms + cfg->ws_pong_timeout_ms) {
        relay_leg *leg = rl->leg;
        rl->leg = NULL;
        rl->closed_first = FIRST_UPSTREAM;
        leg_free(leg);
        gw_ws_close(&wsc->ws, CLOSE_BAD_GATEWAY, "upstream_heartbeat_timeout", gw_cause_heartbeat_timeout);
        return;
    }
    if (now >= rl->up_last_ping_ms + cfg->ws_ping_interval_ms) {
        gw_wsc_ping(RL_UP(rl), (const uint8_t *)"wsgate", 6);
        rl->up_last_ping_ms = now;
    }
}

static void relay_log_fields(gw_wsconn *wsc, gw_log_line *l, int close)
{
    static const char *const first[] = {NULL, "downstream", "upstream", "gateway"};
    relay *rl = gw_ws_app_data(wsc);
    if (!close) {
        gw_log_str(l, "upstream", rl->up_url, GW_LOG_JSON_ONLY);
        if (rl->resource_name)
            gw_log_str(l, "resource_name", rl->resource_name, GW_LOG_JSON_ONLY);
        if (rl->session_id)
            gw_log_str(l, "session_id", rl->session_id, GW_LOG_JSON_ONLY);
        return;
    }
    if (rl->resource_name)
        gw_log_str(l, "resource_name", rl->resource_name, GW_LOG_JSON_ONLY);
    if (rl->session_id)
        gw_log_str(l, "session_id", rl->session_id, GW_LOG_JSON_ONLY);
    gw_log_str(l, "upstream", rl->up_url, GW_LOG_JSON_ONLY);
    if (rl->closed_first)
        gw_log_str(l, "closed_first", first[rl->closed_first], GW_LOG_JSON_ONLY);
    if (rl->down_code)
        gw_log_int(l, "downstream_code", rl->down_code, GW_LOG_JSON_ONLY);
    if (rl->up_code)
        gw_log_int(l, "upstream_code", rl->up_code, GW_LOG_JSON_ONLY);
}

static void relay_free(gw_wsconn *wsc)
{
    relay *rl = gw_ws_app_data(wsc);
    gw_free(rl->up_url);
    gw_free(rl->resource_name);
    gw_free(rl->session_id);
}

static const gw_ws_app relay_app = {
    .message = down_message,
    .message_run = down_run,
    .peer_close = down_peer_close,
    .drained = relay_drained,
    .keep_paused = relay_keep_paused,
    .timer = relay_timer,
    .closing = relay_closing,
    .closed = relay_closed,
    .log_fields = relay_log_fields,
    .free = relay_free,
};

/* ================================ the kind ================================== */

/* Per-user upstreams: the user is the user_header's value up to '@'. An
 * absent header or a user without an upstream (and no default) gets 403. */
static int resolve_user(gw_client *c, const gw_http_req *req, const gw_route *r, char *user, size_t cap,
                        const gw_req_ids *ids)
{
    const gw_http_header *h = gw_h1_find_header(req->headers, req->num_headers, r->user_header);
    size_t n = 0;
    if (h) {
        while (n < h->value.n && h->value.p[n] != '@')
            n++;
    }
    if (!h || n == 0 || n >= cap) {
        if (r->upstream)
            return GW_OK; /* no user: the default upstream serves */
        gw_counter_inc(gw_metric_handshake(r, "unknown_user"));
        gw_http_error_ids(c, 403, "unknown_user", "no upstream for this user", req, NULL, ids);
        return GW_ERR;
    }
    memcpy(user, h->value.p, n);
    user[n] = '\0';
    if (!gw_route_upstream(r, user, n) && !(r->upstream && !r->nusers)) {
        gw_counter_inc(gw_metric_handshake(r, "unknown_user"));
        gw_http_error_ids(c, 403, "unknown_user", "no upstream for this user", req, NULL, ids);
        return GW_ERR;
    }
    return GW_OK;
}

static int proxy_serve(gw_client *c, gw_http_req *req, const gw_route *r, gw_route_table *table,
                       const gw_req_ids *ids)
{
    char user[64] = "";
    if (r->user_header && resolve_user(c, req, r, user, sizeof user, ids) != GW_OK)
        return GW_OK;
    if (!gw_ws_is_upgrade(req)) {
        const gw_upstream *u = r->nusers && user[0] ? gw_route_upstream(r, user, strlen(user)) : r->upstream;
        if (!u) {
            gw_http_error_ids(c, 403, "unknown_user", "no upstream for this user", req, NULL, ids);
            return GW_OK;
        }
        /* The body streams to the upstream: the connection stays usable. */
        c->close_after = !gw_http_keep_alive(req) || atomic_load_explicit(&gw_srv.draining, memory_order_relaxed);
        gw_proxy_start(c, req, r, table, ids, u);
        return GW_DONE;
    }
    gw_relay_opts ro = {.user = user[0] ? user : NULL};
    if (gw_relay_ws_start(c, req, r, table, ids, &ro) == GW_OK)
        return GW_DONE;
    gw_counter_inc(gw_metric_handshake(r, "upstream_unavailable"));
    gw_http_error_ids(c, 502, "upstream_unavailable", "the upstream could not be reached", req, NULL, ids);
    return GW_OK;
}

static int proxy_parse(json_t *o, gw_route *r, const gw_config *cfg, char *err, size_t errcap)
{
    GW_UNUSED(cfg);
    if (!o) {
        snprintf(err, errcap, "route %s: a proxy route needs an upstream or users", r->path);
        return GW_ERR;
    }
    return gw_route_parse_upstreams(o, r, err, errcap);
}

static const char *const proxy_fields[] = {"upstream", "user_header", "users", NULL};

const gw_kind gw_kind_proxy = {
    .name = "proxy",
    .flags = GW_KIND_HTTP | GW_KIND_UPSTREAM,
    .fields = proxy_fields,
    .parse = proxy_parse,
    .serve = proxy_serve,
};

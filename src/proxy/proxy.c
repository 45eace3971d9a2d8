/* proxy.c: the HTTP reverse proxy (route kind "proxy", requests that are
 * not WebSocket upgrades).
 *
 * A request head is re-written toward the upstream (hop-by-hop headers
 * dropped, X-Forwarded-*, X-Correlation-ID and traceparent set, framing
 * re-stated) and sent on a pooled keep-alive connection (TCP or unix
 * socket). Bodies stream both ways as they arrive, never allocated up front:
 * Content-Length bodies pass through, chunked bodies are decoded (strictly)
 * and re-encoded, so no framing ambiguity crosses the gateway. While the
 * upstream's queue is long the client is not read; while the client's queue
 * is long the upstream is not read. Failures before the response starts
 * answer 502 (504 on timeout) with the error envelope. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "core/alloc.h"
#include "core/common.h"
#include "log/log.h"
#include "net/resolve.h"
#include "net/sock.h"
#include "proxy/forward.h"
#include "proxy/proxy.h"
#include "server/state.h"

#define POOL_MAX_IDLE 32         /* idle connections kept per worker and upstream */
#define POOL_IDLE_MS 30000       /* an idle pooled connection is closed after this */
#define RESP_HEAD_MAX (64 * 1024)

enum hup_state { HUP_CONNECTING, HUP_BUSY, HUP_IDLE, HUP_CLOSED };
enum resp_mode { RESP_NONE, RESP_LENGTH, RESP_CHUNKED, RESP_EOF };

typedef struct gw_hup {
    gw_conn conn;
    gw_linger node;      /* in the worker's idle list while pooled */
    gw_worker *w;
    gw_task task;        /* deferred free */
    gw_timer timer;      /* idle expiry, connect and read timeouts */
    char key[300];       /* pool key: the upstream address */
    uint8_t state;       /* enum hup_state */
    gw_client *c;        /* the client being served while busy */
    gw_resolve_req *resolving; /* HUP_CONNECTING before the socket exists: the name's lookup */
} gw_hup;

typedef struct gw_proxy {
    gw_hup *up;
    const gw_route *route;
    gw_route_table *table;
    gw_wsc_target target;
    char *head;          /* the request head toward the upstream (kept for a retry) */
    size_t head_len;
    uint8_t retried;     /* a stale pooled connection was replaced once */
    uint8_t reused;      /* the connection came from the pool */
    uint8_t req_chunked;
    uint8_t req_done;    /* the whole request body went out */
    uint8_t head_done;   /* the response head went to the client */
    uint8_t resp_mode;   /* enum resp_mode */
    uint8_t up_keepalive;
    uint8_t is_head;
    uint8_t client_http10;
    uint8_t sent_any;    /* request bytes reached the upstream's socket */
    uint8_t head_held;   /* chunked request: the head waits for the first valid chunk */
    uint64_t req_remaining;
    uint64_t resp_remaining;
    gw_h1_chunked req_dec, resp_dec;
    int status;
    uint64_t started_ms;
    uint64_t body_start_ms; /* the client's body started being read (0: not yet) */
    uint64_t body_rx;       /* request body bytes taken from the client (framing included) */
    uint64_t bytes_out;
    gw_req_ids ids;
    /* a kind's hooks (gw_proxy_start_ex) */
    gw_proxy_hooks hooks;
    char *fb_head;          /* the request head toward the fallback upstream (NULL: no fallback left) */
    size_t fb_head_len;
    gw_wsc_target fb_target;
    uint8_t fallen_back;    /* the answer now comes from the fallback upstream */
    uint8_t resp_closes;    /* this response's framing set c->close_after (undone for the fallback) */
    uint8_t cap_mode;       /* enum gw_proxy_body_mode of the current response */
    uint8_t cap_over;       /* its body passed cap_limit: gathering stopped */
    size_t cap_limit, cap_len, cap_size;
    uint8_t *cap;           /* the body gathered (TEE, HOLD) */
    char *held_head;        /* HOLD: the client's response head, not sent yet */
    size_t held_head_len;
    const char *outcome;    /* "ok", or the failure's code (for the done hook) */
} gw_proxy;

static const gw_client_proto stream_proto;
/* The exchange c is streaming, or NULL. */
#define PX(c) ((gw_proxy *)gw_client_data((c), &stream_proto))

static void hup_io(gw_io *io, uint32_t events);
static void hup_timer(gw_timer *t);
static void proxy_fail(gw_client *c, int status, const char *code, const char *msg);
static void proxy_end(gw_client *c, int reuse_upstream);
static void arm_read_timeout(gw_proxy *px);

/* ================================== pool ==================================== */

static void hup_free_task(gw_task *t) { gw_free(gw_container_of(t, gw_hup, task)); }

static void hup_close(gw_hup *h)
{
    if (h->state == HUP_CLOSED)
        return;
    h->state = HUP_CLOSED;
    if (h->resolving) {
        gw_resolve_cancel(h->resolving);
        h->resolving = NULL;
    }
    gw_list_remove(&h->node.node);
    gw_timer_stop(h->w->loop, &h->timer);
    gw_conn_close(&h->conn);
    h->c = NULL;
    h->task.fn = hup_free_task;
    gw_loop_defer(h->w->loop, &h->task);
}

static void pool_key(const gw_wsc_target *t, char *out, size_t cap)
{
    if (t->addr.is_unix)
        snprintf(out, cap, "unix:%s", t->addr.path);
    else
        snprintf(out, cap, "%s:%u", t->addr.host, t->addr.port);
}

static const char pool_owner[] = "proxy pool";

static gw_hup *pool_take(gw_worker *w, const char *key)
{
    for (gw_list *n = w->idle.next; n != &w->idle; n = n->next) {
        gw_hup *h = gw_container_of(n, gw_hup, node.node);
        if (h->node.owner == pool_owner && strcmp(h->key, key) == 0) {
            gw_list_remove(&h->node.node);
            gw_timer_stop(w->loop, &h->timer);
            h->state = HUP_BUSY;
            return h;
        }
    }
    return NULL;
}

/* The worker drains or stops: an idle pooled connection is closed. */
static void pool_drop(gw_linger *l) { hup_close(gw_container_of(l, gw_hup, node)); }

static void pool_put(gw_hup *h)
{
    gw_worker *w = h->w;
    size_t same = 0;
    for (gw_list *n = w->idle.next; n != &w->idle; n = n->next) {
        gw_hup *o = gw_container_of(n, gw_hup, node.node);
        same += o->node.owner == pool_owner && strcmp(o->key, h->key) == 0;
    }
    if (same >= POOL_MAX_IDLE || w->draining || h->conn.in.len || h->conn.out.len) {
        hup_close(h);
        return;
    }
    h->state = HUP_IDLE;
    h->c = NULL;
    gw_conn_pause(&h->conn, 0);
    gw_conn_want_read(&h->conn, 1); /* an idle connection that speaks or closes is dropped */
    h->node.owner = pool_owner;
    h->node.free = pool_drop;
    gw_list_insert_tail(&w->idle, &h->node.node);
    gw_timer_start(w->loop, &h->timer, POOL_IDLE_MS);
}


/* The upstream's name was looked up (never inline): connect now. */
static void hup_resolved(void *ud, int ok, const gw_resolved *ra, const char *err)
{
    gw_hup *h = ud;
    h->resolving = NULL;
    gw_client *c = h->c;
    char e[256];
    int fd = ok ? gw_sock_connect_resolved(ra, &PX(c)->target.addr, e, sizeof e) : -1;
    if (fd < 0) {
        gw_log_line *l = gw_log_begin(GW_LOG_WARN, "upstream unreachable", PX(c)->ids.corr);
        if (l) {
            gw_log_str(l, "error", ok ? e : err, 0);
            gw_log_end(l);
        }
        proxy_fail(c, 502, "upstream_unavailable", "the upstream could not be reached");
        return;
    }
    h->conn.io.fd = fd;
    gw_conn_await_connect(&h->conn);
}

/* A connection toward t: connecting at once to an IP literal, a unix path or
 * a cached name; otherwise after the name's lookup (net/resolve, off the
 * loop). NULL with err when the address cannot be used. */
static gw_hup *hup_connect(gw_worker *w, const gw_wsc_target *t, const char *key, char *err, size_t errcap)
{
    gw_resolved ra;
    int rr = gw_resolve_now(&t->addr, &ra, err, errcap);
    if (rr == GW_ERR)
        return NULL;
    int fd = -1;
    if (rr == GW_OK && (fd = gw_sock_connect_resolved(&ra, &t->addr, err, errcap)) < 0)
        return NULL;
    gw_hup *h = gw_calloc(1, sizeof *h);
    gw_conn_init(&h->conn, w->loop, fd, hup_io);
    h->w = w;
    h->timer.cb = hup_timer;
    h->state = HUP_CONNECTING;
    gw_list_init(&h->node.node);
    snprintf(h->key, sizeof h->key, "%s", key);
    /* Connected when writable; reads start then. */
    if (fd >= 0)
        gw_conn_await_connect(&h->conn);
    else
        h->resolving = gw_resolve_start(w->loop, &t->addr, hup_resolved, h);
    return h;
}

/* ============================ request toward upstream ======================= */

/* Writes request bytes toward the upstream (chunk-encoding them when the
 * request is chunked). */
static int send_body(gw_proxy *px, const uint8_t *p, size_t n)
{
    if (!n)
        return GW_OK;
    px->sent_any = 1;
    if (!px->req_chunked)
        return gw_conn_write(&px->up->conn, p, n);
    char hex[24];
    int hl = snprintf(hex, sizeof hex, "%zx\r\n", n);
    struct iovec iov[3] = {{hex, (size_t)hl}, {(void *)p, n}, {(void *)"\r\n", 2}};
    return gw_conn_writev(&px->up->conn, iov, 3);
}

/* Consumes request body bytes from the client. Returns bytes used. */
static size_t request_body(gw_client *c, uint8_t *p, size_t n)
{
    gw_proxy *px = PX(c);
    if (px->req_done || !px->up || px->up->state == HUP_CONNECTING)
        return 0;
    size_t used = 0;
    if (!px->req_chunked) {
        size_t k = (size_t)GW_MIN((uint64_t)n, px->req_remaining);
        if (send_body(px, p, k) != GW_OK)
            return n;
        px->req_remaining -= k;
        used = k;
        if (!px->req_remaining) {
            px->req_done = 1;
            arm_read_timeout(px);
        }
    } else {
        size_t len = n, consumed = 0;
        int r = gw_h1_chunked_decode(&px->req_dec, p, &len, &consumed);
        if (r == GW_ERR) {
            c->close_after = 1;
            proxy_fail(c, 400, "bad_chunked_body", "the chunked request body is malformed");
            return n;
        }
        if (px->head_held && (len || r == GW_DONE)) {
            /* The body's framing proved valid so far: now the upstream may
             * see the request (garbage from the first byte never reaches it). */
            px->head_held = 0;
            gw_conn_write(&px->up->conn, px->head, px->head_len);
        }
        send_body(px, p, len);
        if (r == GW_DONE) {
            gw_conn_write(&px->up->conn, "0\r\n\r\n", 5);
            px->req_done = 1;
            arm_read_timeout(px);
            /* The next request starts at p + consumed, untouched. */
            used = consumed;
        } else {
            used = n;
        }
    }
    px->body_rx += used;
    if (gw_conn_queued(&px->up->conn) > GW_OUT_HIGH)
        gw_conn_pause(&c->conn, 1); /* resumed when the upstream drains */
    return used;
}

static size_t stream_feed(gw_client *c, uint8_t *p, size_t n)
{
    gw_proxy *px = PX(c);
    if (!px)
        return 0;
    if (px->req_done) {
        /* A pipelined next request: it waits until this response is out. */
        gw_conn_pause(&c->conn, 1);
        return 0;
    }
    return request_body(c, p, n);
}

/* The request head toward the upstream: the client's target whole (as
 * normalised), its end-to-end headers and the forwarding set, sized from
 * what the client sent, so nothing is cut or dropped. */
static int build_head(gw_client *c, gw_proxy *px, const gw_http_req *req, const gw_h1_body *body,
                      const gw_wsc_target *t, const char *target_path, char **head_out, size_t *len_out)
{
    gw_upstream tmp;
    tmp.target = *t;
    char *path = target_path ? gw_strdup(target_path) : gw_fwd_target(px->route, &tmp, req);
    /* End-to-end headers and the forwarding set (shared with the WebSocket
     * relay), minus Expect: the gateway answers 100-continue itself. The
     * builder reads Host from the unfiltered request, so a client's
     * Connection: Host cannot remove X-Forwarded-Host. */
    gw_http_req filtered = *req;
    gw_http_header keep[128];
    size_t k = 0;
    for (size_t i = 0; i < req->num_headers && k < GW_ARRAY_LEN(keep); i++)
        if (!gw_str_ieq(req->headers[i].name, "Expect"))
            keep[k++] = req->headers[i];
    filtered.headers = keep;
    filtered.num_headers = k;
    size_t hn = 0;
    char *hdrs = gw_fwd_headers(&filtered, c->ip, gw_srv.tls_ctx != NULL, px->ids.corr, px->ids.trace, NULL, &hn);
    if (!hdrs) {
        gw_free(path);
        return GW_ERR;
    }
    char framing[64];
    if (body->chunked)
        snprintf(framing, sizeof framing, "Transfer-Encoding: chunked\r\n\r\n");
    else if (body->content_length)
        snprintf(framing, sizeof framing, "Content-Length: %" PRIu64 "\r\n\r\n", body->content_length);
    else
        snprintf(framing, sizeof framing, "\r\n");
    const char *host = t->host_header[0] ? t->host_header : "localhost";
    size_t cap = req->method.n + strlen(path) + strlen(host) + hn + strlen(framing) + 32;
    char *out = gw_malloc(cap);
    int n = snprintf(out, cap, "%.*s %s HTTP/1.1\r\nHost: %s\r\n%.*s%s", (int)req->method.n, req->method.p, path,
                     host, (int)hn, hdrs, framing);
    gw_free(path);
    gw_free(hdrs);
    if (n < 0 || (size_t)n >= cap) {
        gw_free(out);
        return GW_ERR;
    }
    *head_out = out;
    *len_out = (size_t)n;
    return GW_OK;
}

static void arm_read_timeout(gw_proxy *px)
{
    gw_timer_start(px->up->w->loop, &px->up->timer, px->route->read_timeout_ms ? px->route->read_timeout_ms : GW_READ_TIMEOUT_MS);
}

static void start_send(gw_client *c)
{
    gw_proxy *px = PX(c);
    gw_hup *h = px->up;
    h->state = HUP_BUSY;
    h->c = c;
    if (px->req_chunked)
        px->head_held = 1;
    else
        gw_conn_write(&h->conn, px->head, px->head_len);
    px->sent_any = 1;
    gw_conn_want_read(&h->conn, 1);
    /* The response timeout runs once the request is out: a client slow to
     * send its body is the client's timeout (408), not the upstream's. */
    if (px->req_done)
        arm_read_timeout(px);
    /* The body's deadline runs from now: the client is read from here on. */
    if (!px->req_done && !px->body_start_ms) {
        px->body_start_ms = gw_loop_now(c->w->loop);
        gw_client_arm(c);
    }
    /* Body bytes that came with the head wait in conn.in. */
    gw_conn_pause(&c->conn, 0);
    gw_client_kick(c);
}

static int attach_upstream(gw_client *c)
{
    gw_proxy *px = PX(c);
    char key[300], err[256];
    pool_key(&px->target, key, sizeof key);
    gw_hup *h = px->retried ? NULL : pool_take(c->w, key);
    px->reused = h != NULL;
    if (!h) {
        h = hup_connect(c->w, &px->target, key, err, sizeof err);
        if (!h)
            return GW_ERR;
        h->c = c;
        px->up = h;
        gw_timer_start(c->w->loop, &h->timer, px->route->connect_timeout_ms);
        return GW_OK;
    }
    px->up = h;
    start_send(c);
    return GW_OK;
}

int gw_proxy_start(gw_client *c, gw_http_req *req, const gw_route *r, gw_route_table *table, const gw_req_ids *ids,
                   const gw_upstream *u)
{
    return gw_proxy_start_ex(c, req, r, table, ids, u, NULL);
}

int gw_proxy_start_ex(gw_client *c, gw_http_req *req, const gw_route *r, gw_route_table *table,
                      const gw_req_ids *ids, const gw_upstream *u, const gw_proxy_opts *o)
{
    gw_h1_body body;
    int status;
    const char *why;
    if (gw_h1_request_body(req, &body, &status, &why) != GW_OK) {
        if (o && o->hooks.done)
            o->hooks.done(o->hooks.ud, 0, "refused");
        return GW_ERR; /* refused earlier */
    }
    gw_proxy *px = gw_calloc(1, sizeof *px);
    px->route = r;
    px->table = table;
    gw_routes_ref(table);
    px->target = u->target;
    px->ids = *ids;
    px->req_chunked = (uint8_t)body.chunked;
    px->req_remaining = body.content_length;
    px->req_done = !body.chunked && !body.content_length;
    px->is_head = gw_str_eq(req->method, "HEAD");
    px->client_http10 = req->minor_version == 0;
    px->started_ms = gw_loop_now(c->w->loop);
    if (o)
        px->hooks = o->hooks;
    gw_client_enter(c, GW_PHASE_STREAM, &stream_proto, px);
    if (build_head(c, px, req, &body, &px->target, o ? o->path : NULL, &px->head, &px->head_len) != GW_OK) {
        proxy_fail(c, 431, "request_header_fields_too_large", "the request head is too large to forward");
        return GW_OK;
    }
    /* The fallback's head is built now, while the client's request is at
     * hand; only a request without a body can be sent twice. */
    if (o && o->fallback && o->fallback_req && px->req_done) {
        gw_h1_body none = {0};
        px->fb_target = o->fallback->target;
        if (build_head(c, px, o->fallback_req, &none, &px->fb_target, NULL, &px->fb_head, &px->fb_head_len) !=
            GW_OK) {
            proxy_fail(c, 431, "request_header_fields_too_large", "the request head is too large to forward");
            return GW_OK;
        }
    }
    if ((body.chunked || body.content_length) &&
        gw_h1_header_has_token(req->headers, req->num_headers, "Expect", "100-continue"))
        gw_conn_write(&c->conn, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    c->phase_ms = px->started_ms;
    gw_conn_pause(&c->conn, 1);
    gw_client_arm(c);
    if (attach_upstream(c) != GW_OK)
        proxy_fail(c, 502, "upstream_unavailable", "the upstream could not be reached");
    return GW_OK;
}

/* ============================ response toward client ======================== */

static void log_request(gw_client *c, const char *outcome)
{
    gw_proxy *px = PX(c);
    gw_log_line *l = gw_log_begin(px->status >= 500 || !px->head_done ? GW_LOG_WARN : GW_LOG_INFO, "http proxy",
                                  px->ids.corr);
    if (l) {
        gw_log_str(l, "route", px->route->label, 0);
        gw_log_int(l, "status", px->status, 0);
        gw_log_int(l, "dur_ms", (int64_t)(gw_loop_now(c->w->loop) - px->started_ms), 0);
        gw_log_str(l, "ip", c->ip, 0);
        gw_log_str(l, "outcome", outcome, 0);
        gw_log_int(l, "bytes_out", (int64_t)px->bytes_out, GW_LOG_JSON_ONLY);
        gw_log_bool(l, "reused", px->reused, GW_LOG_JSON_ONLY);
        gw_log_end(l);
    }
}

static void proxy_free(gw_client *c)
{
    gw_proxy *px = PX(c);
    if (!px)
        return;
    if (px->hooks.done)
        px->hooks.done(px->hooks.ud, px->status, px->outcome ? px->outcome : "ok");
    gw_routes_unref(px->table);
    gw_free(px->head);
    gw_free(px->fb_head);
    gw_free(px->cap);
    gw_free(px->held_head);
    gw_free(px);
    c->pdata = NULL;
}

/* Ends the exchange: the upstream goes back to the pool or is closed; the
 * client goes back to reading requests or finishes. */
static void proxy_end(gw_client *c, int reuse_upstream)
{
    gw_proxy *px = PX(c);
    gw_hup *h = px->up;
    if (h) {
        h->c = NULL;
        gw_timer_stop(c->w->loop, &h->timer);
        if (reuse_upstream && px->req_done && px->up_keepalive && px->resp_mode != RESP_EOF)
            pool_put(h);
        else
            hup_close(h);
    }
    px->up = NULL;
    int close_client = c->close_after || px->resp_mode == RESP_EOF || !px->req_done;
    proxy_free(c);
    if (c->phase == GW_PHASE_STREAM)
        gw_client_http(c);
    c->phase_ms = gw_loop_now(c->w->loop);
    if (close_client) {
        c->close_after = 1;
        gw_client_finish(c);
        return;
    }
    gw_conn_pause(&c->conn, 0);
    gw_client_arm(c);
    gw_client_kick(c);
}

static void proxy_fail(gw_client *c, int status, const char *code, const char *msg)
{
    gw_proxy *px = PX(c);
    px->status = status;
    px->outcome = code;
    if (!px->head_done || px->held_head) { /* nothing reached the client yet */
        c->close_after = c->close_after || !px->req_done;
        gw_http_error_ids(c, status, code, msg, NULL, NULL, &px->ids);
        gw_counter_inc(gw_metric_http(0, status));
        log_request(c, code);
        proxy_end(c, 0);
    } else {
        /* Mid-body: nothing honest can be sent any more; cut the client so it
         * sees a truncated response, never a complete-looking one. */
        log_request(c, code);
        proxy_end(c, 0);
        gw_client_close(c);
    }
}

static void write_client(gw_client *c, const void *p, size_t n)
{
    if (!n)
        return;
    PX(c)->bytes_out += n;
    gw_conn_write(&c->conn, p, n);
}

static void send_chunk(gw_client *c, const uint8_t *p, size_t n)
{
    if (!n)
        return;
    if (PX(c)->client_http10) {
        write_client(c, p, n);
        return;
    }
    char hex[24];
    int hl = snprintf(hex, sizeof hex, "%zx\r\n", n);
    struct iovec iov[3] = {{hex, (size_t)hl}, {(void *)p, n}, {(void *)"\r\n", 2}};
    PX(c)->bytes_out += n;
    gw_conn_writev(&c->conn, iov, 3);
}

/* Body bytes (decoded) toward the client, in the response's framing. */
static void emit_body(gw_client *c, const uint8_t *p, size_t n)
{
    if (PX(c)->resp_mode == RESP_CHUNKED)
        send_chunk(c, p, n);
    else
        write_client(c, p, n);
}

/* A held response goes out after all: its head, the body gathered so far,
 * and (complete) the chunked terminator. Streaming goes on from here. */
static void release_held(gw_client *c, int complete)
{
    gw_proxy *px = PX(c);
    gw_conn_write(&c->conn, px->held_head, px->held_head_len);
    gw_free(px->held_head);
    px->held_head = NULL;
    gw_counter_inc(gw_metric_http(0, px->status));
    emit_body(c, px->cap, px->cap_len);
    if (complete && px->resp_mode == RESP_CHUNKED && !px->client_http10)
        gw_conn_write(&c->conn, "0\r\n\r\n", 5);
    gw_free(px->cap);
    px->cap = NULL;
    px->cap_len = px->cap_size = 0;
    px->cap_mode = GW_PROXY_PASS;
}

/* Response body bytes: gathered for a kind's hook (TEE, HOLD) within its
 * limit, and sent on unless held. */
static void body_out(gw_client *c, const uint8_t *p, size_t n)
{
    gw_proxy *px = PX(c);
    if (!n)
        return;
    if (px->cap_mode != GW_PROXY_PASS && !px->cap_over) {
        int fits = n <= px->cap_limit - px->cap_len;
        if (fits && px->cap_len + n > px->cap_size) {
            /* Grown as the body comes (a peer's size: a failed allocation
             * only ends the gathering, the body still streams). */
            size_t want = px->cap_size ? px->cap_size : 4096;
            while (want < px->cap_len + n)
                want *= 2;
            want = GW_MIN(want, px->cap_limit);
            uint8_t *nb = gw_try_malloc(want);
            if (nb) {
                if (px->cap_len)
                    memcpy(nb, px->cap, px->cap_len);
                gw_free(px->cap);
                px->cap = nb;
                px->cap_size = want;
            }
            fits = nb != NULL;
        }
        if (fits) {
            memcpy(px->cap + px->cap_len, p, n);
            px->cap_len += n;
            if (px->cap_mode == GW_PROXY_HOLD)
                return;
        } else {
            px->cap_over = 1;
            if (px->cap_mode == GW_PROXY_HOLD)
                release_held(c, 0);
            gw_free(px->cap);
            px->cap = NULL;
            px->cap_len = px->cap_size = 0;
        }
    }
    emit_body(c, p, n);
}

static void response_done(gw_client *c, int reuse_upstream);

/* Parses the response head in buf; writes the client's head. Returns head
 * bytes consumed, 0 when more is needed, or -1 on failure (handled). */
static ssize_t response_head(gw_client *c, const uint8_t *buf, size_t n)
{
    gw_proxy *px = PX(c);
    gw_http_header hdrs[128];
    gw_http_resp resp;
    int err = 502;
    gw_h1_limits lim = {.max_request_line = 8192, .max_head = RESP_HEAD_MAX, .max_headers = 128};
    int r = gw_h1_parse_response((const char *)buf, n, &resp, hdrs, &lim, &err);
    if (r == GW_AGAIN)
        return 0;
    if (r < 0) {
        proxy_fail(c, 502, "bad_upstream_response", "the upstream's response is malformed");
        return -1;
    }
    if (resp.status >= 100 && resp.status < 200)
        return r; /* interim responses are the gateway's hop only */
    px->status = resp.status;
    px->up_keepalive = resp.minor_version == 1 &&
                       !gw_h1_header_has_token(resp.headers, resp.num_headers, "Connection", "close");
    const gw_http_header *te = gw_h1_find_header(resp.headers, resp.num_headers, "Transfer-Encoding");
    const gw_http_header *cl = gw_h1_find_header(resp.headers, resp.num_headers, "Content-Length");
    uint64_t clen = 0;
    if (te && cl) {
        proxy_fail(c, 502, "bad_upstream_response", "the upstream's response framing is ambiguous");
        return -1;
    }
    if (cl) {
        if (gw_h1_count_header(resp.headers, resp.num_headers, "Content-Length") != 1 || !cl->value.n ||
            cl->value.n > 19) {
            proxy_fail(c, 502, "bad_upstream_response", "the upstream's Content-Length is invalid");
            return -1;
        }
        for (size_t i = 0; i < cl->value.n; i++) {
            if (cl->value.p[i] < '0' || cl->value.p[i] > '9') {
                proxy_fail(c, 502, "bad_upstream_response", "the upstream's Content-Length is invalid");
                return -1;
            }
            clen = clen * 10 + (uint64_t)(cl->value.p[i] - '0');
        }
    }
    if (px->is_head || resp.status == 204 || resp.status == 304) {
        px->resp_mode = RESP_NONE;
    } else if (te) {
        if (!gw_h1_header_has_token(resp.headers, resp.num_headers, "Transfer-Encoding", "chunked")) {
            proxy_fail(c, 502, "bad_upstream_response", "the upstream used an unsupported transfer coding");
            return -1;
        }
        px->resp_mode = RESP_CHUNKED;
    } else if (cl) {
        px->resp_mode = RESP_LENGTH;
        px->resp_remaining = clen;
    } else {
        px->resp_mode = RESP_EOF;
    }
    if ((px->resp_mode == RESP_EOF || (px->resp_mode == RESP_CHUNKED && px->client_http10)) && !c->close_after) {
        c->close_after = 1;
        px->resp_closes = 1;
    }

    char head[RESP_HEAD_MAX + 512];
    int pos = snprintf(head, sizeof head, "HTTP/1.1 %d %.*s\r\n", resp.status, (int)resp.reason.n, resp.reason.p);
    int has_corr = 0;
    for (size_t i = 0; i < resp.num_headers && (size_t)pos < sizeof head; i++) {
        const gw_http_header *h = &resp.headers[i];
        if (gw_fwd_hop_by_hop(h->name) || gw_fwd_connection_lists(resp.headers, resp.num_headers, h->name))
            continue;
        has_corr |= gw_str_ieq(h->name, "X-Correlation-ID");
        pos += snprintf(head + pos, sizeof head - (size_t)pos, "%.*s: %.*s\r\n", (int)h->name.n, h->name.p,
                        (int)h->value.n, h->value.p);
    }
    if (!has_corr && (size_t)pos < sizeof head)
        pos += snprintf(head + pos, sizeof head - (size_t)pos, "X-Correlation-ID: %s\r\n", px->ids.corr);
    if (px->resp_mode == RESP_LENGTH || (px->resp_mode == RESP_NONE && cl))
        pos += snprintf(head + pos, sizeof head - (size_t)pos, "Content-Length: %" PRIu64 "\r\n", clen);
    else if (px->resp_mode == RESP_CHUNKED && !px->client_http10)
        pos += snprintf(head + pos, sizeof head - (size_t)pos, "Transfer-Encoding: chunked\r\n");
    if ((size_t)pos < sizeof head)
        pos += snprintf(head + pos, sizeof head - (size_t)pos, "%s\r\n",
                        c->close_after ? "Connection: close\r\n" : "");
    if ((size_t)pos >= sizeof head) {
        proxy_fail(c, 502, "bad_upstream_response", "the upstream's response head is too large");
        return -1;
    }
    px->cap_mode = GW_PROXY_PASS;
    px->cap_over = 0;
    px->cap_len = 0;
    if (px->hooks.head) {
        size_t limit = 0;
        int mode = px->hooks.head(px->hooks.ud, resp.status, &resp, px->fallen_back, &limit);
        if (mode == GW_PROXY_TEE || mode == GW_PROXY_HOLD) {
            px->cap_mode = (uint8_t)mode;
            px->cap_limit = limit;
        }
    }
    if (px->cap_mode == GW_PROXY_HOLD) {
        px->held_head = gw_malloc((size_t)pos);
        memcpy(px->held_head, head, (size_t)pos);
        px->held_head_len = (size_t)pos;
    } else {
        gw_conn_write(&c->conn, head, (size_t)pos);
    }
    px->head_done = 1;
    if (!px->held_head)
        gw_counter_inc(gw_metric_http(0, resp.status));
    return r;
}

/* Forwards response body bytes; returns 1 when the response is complete. */
static int response_body(gw_client *c, uint8_t *p, size_t n, size_t *used)
{
    gw_proxy *px = PX(c);
    *used = n;
    switch (px->resp_mode) {
    case RESP_NONE:
        *used = 0;
        return 1;
    case RESP_LENGTH: {
        size_t k = (size_t)GW_MIN((uint64_t)n, px->resp_remaining);
        body_out(c, p, k);
        px->resp_remaining -= k;
        *used = k;
        return px->resp_remaining == 0;
    }
    case RESP_CHUNKED: {
        size_t len = n, consumed = 0;
        int r = gw_h1_chunked_decode(&px->resp_dec, p, &len, &consumed);
        if (r == GW_ERR) {
            proxy_fail(c, 502, "bad_upstream_response", "the upstream's chunked body is malformed");
            return -1;
        }
        body_out(c, p, len);
        if (r == GW_DONE) {
            if (!px->client_http10 && !px->held_head)
                gw_conn_write(&c->conn, "0\r\n\r\n", 5);
            *used = consumed;
            return 1;
        }
        return 0;
    }
    default:
        body_out(c, p, n);
        return 0;
    }
}

/* The fallback: the held answer is dropped (its connection closed, never
 * pooled: this may run inside its read callback) and the request goes
 * once to the fallback upstream; its answer is the client's, whatever it
 * is (there is no second fallback). */
static void replay(gw_client *c)
{
    gw_proxy *px = PX(c);
    if (px->up) {
        px->up->c = NULL;
        hup_close(px->up);
        px->up = NULL;
    }
    gw_free(px->head);
    px->head = px->fb_head;
    px->head_len = px->fb_head_len;
    px->fb_head = NULL;
    px->target = px->fb_target;
    px->fallen_back = 1;
    gw_free(px->held_head);
    px->held_head = NULL;
    gw_free(px->cap);
    px->cap = NULL;
    px->cap_len = px->cap_size = 0;
    px->cap_mode = GW_PROXY_PASS;
    px->cap_over = 0;
    px->status = 0;
    px->head_done = 0;
    px->resp_mode = RESP_NONE;
    px->resp_remaining = 0;
    memset(&px->resp_dec, 0, sizeof px->resp_dec);
    px->up_keepalive = 0;
    px->retried = 0;
    px->reused = 0;
    if (px->resp_closes)
        c->close_after = 0;
    px->resp_closes = 0;
    if (attach_upstream(c) != GW_OK)
        proxy_fail(c, 502, "upstream_unavailable", "the upstream could not be reached");
}

/* The response ended (all of it read): the kind's body hook sees what it
 * gathered; a held response is sent, or replaced by the fallback's. */
static void response_done(gw_client *c, int reuse_upstream)
{
    gw_proxy *px = PX(c);
    if (px->cap_mode == GW_PROXY_TEE && px->hooks.body) {
        px->hooks.body(px->hooks.ud, px->status, px->cap_over ? NULL : px->cap, px->cap_over ? 0 : px->cap_len,
                       px->fallen_back);
    } else if (px->cap_mode == GW_PROXY_HOLD && px->held_head) {
        int fb = px->hooks.body ? px->hooks.body(px->hooks.ud, px->status, px->cap, px->cap_len, px->fallen_back) : 0;
        if (fb && px->fb_head && !px->fallen_back) {
            replay(c);
            return;
        }
        release_held(c, 1);
    }
    proxy_end(c, reuse_upstream);
}

/* Processes upstream bytes at p (n of them). */
static void from_upstream(gw_client *c, uint8_t *p, size_t n, size_t *left)
{
    gw_proxy *px = PX(c);
    size_t off = 0;
    *left = 0;
    while (PX(c) == px && off < n) {
        if (!px->head_done) {
            ssize_t r = response_head(c, p + off, n - off);
            if (r < 0)
                return;
            if (r == 0) {
                *left = n - off;
                return;
            }
            off += (size_t)r;
            if (!px->head_done)
                continue; /* an interim response was skipped */
            if (px->resp_mode == RESP_NONE || (px->resp_mode == RESP_LENGTH && px->resp_remaining == 0)) {
                response_done(c, off == n);
                return;
            }
            continue;
        }
        size_t used;
        int done = response_body(c, p + off, n - off, &used);
        if (done < 0)
            return;
        off += used;
        if (done) {
            response_done(c, off == n);
            return;
        }
    }
}

/* The upstream's bytes, through the connection's one read path: the
 * response head and body toward the client. */
static size_t hup_rcv(gw_conn *conn, uint8_t *p, size_t n)
{
    gw_hup *h = gw_container_of(conn, gw_hup, conn);
    gw_client *c = h->c;
    gw_proxy *px = PX(c);
    gw_timer_start(h->w->loop, &h->timer, px->route->read_timeout_ms ? px->route->read_timeout_ms : GW_READ_TIMEOUT_MS);
    gw_conn_cork(&c->conn);
    /* What waited in conn.in is held aside while it is used: the response
     * may end here and the connection go back to the pool (which takes only
     * a connection with no input) or be closed (which frees its input). */
    gw_buf held = h->conn.in;
    h->conn.in = (gw_buf){0};
    size_t left;
    from_upstream(c, p, n, &left);
    if (h->conn.io.fd < 0 || h->conn.in.len) {
        gw_buf_release(&held);
        return n;
    }
    gw_buf_release(&h->conn.in);
    h->conn.in = held;
    return n - left;
}

static size_t hup_max_input(gw_conn *conn)
{
    GW_UNUSED(conn);
    return RESP_HEAD_MAX + GW_READ_CHUNK;
}

static const gw_conn_reader hup_reader = {hup_rcv, hup_max_input, NULL};

static void hup_read(gw_hup *h)
{
    gw_client *c = h->c;
    gw_proxy *px = PX(c);
    int filled;
    ssize_t r = gw_conn_read_into(&h->conn, &hup_reader, &filled);
    if (r == GW_AGAIN)
        return;
    if (r == GW_CONN_FULL) {
        proxy_fail(c, 502, "bad_upstream_response", "the upstream's response head is too large");
        return;
    }
    if (r <= 0) {
        if (px->head_done && px->resp_mode == RESP_EOF && r == 0) {
            response_done(c, 0);
            return;
        }
        if (!px->head_done && px->reused && !px->retried && h->conn.in.len == 0 && !c->conn.in.len &&
            px->req_remaining == 0 && !px->req_chunked) {
            /* A pooled connection the upstream had closed meanwhile: try
             * once more on a fresh one (the request had no body in flight). */
            hup_close(h);
            px->up = NULL;
            px->retried = 1;
            px->req_done = 1;
            if (attach_upstream(c) != GW_OK)
                proxy_fail(c, 502, "upstream_unavailable", "the upstream could not be reached");
            return;
        }
        proxy_fail(c, 502, "upstream_closed", "the upstream closed the connection before the response ended");
        return;
    }
    if (c->phase == GW_PHASE_CLOSED)
        return;
    if (gw_conn_uncork(&c->conn) != GW_OK) {
        gw_client_close(c);
        return;
    }
    /* The client reads slower than the upstream sends: stop reading it. */
    if (PX(c) == px && px->up == h && gw_conn_queued(&c->conn) > GW_OUT_HIGH)
        gw_conn_pause(&h->conn, 1);
}

static void hup_io(gw_io *io, uint32_t events)
{
    gw_hup *h = gw_container_of(io, gw_hup, conn.io);
    if (h->state == HUP_IDLE) {
        /* The upstream closed (or spoke out of turn) on an idle connection. */
        hup_close(h);
        return;
    }
    gw_client *c = h->c;
    if (!c || !PX(c) || PX(c)->up != h) {
        hup_close(h);
        return;
    }
    if (h->state == HUP_CONNECTING) {
        if (gw_sock_connect_result(h->conn.io.fd)) {
            proxy_fail(c, 502, "upstream_unavailable", "the upstream could not be reached");
            return;
        }
        gw_conn_connected(&h->conn);
        start_send(c);
        return;
    }
    if (events & GW_EV_WRITE) {
        int rc = gw_conn_flush(&h->conn);
        if (rc == GW_ERR) {
            proxy_fail(c, 502, "upstream_closed", "the upstream closed the connection");
            return;
        }
        if (rc == GW_OK && (c->conn.flags & GW_CONN_F_PAUSED) && c->phase == GW_PHASE_STREAM) {
            gw_conn_pause(&c->conn, 0);
            gw_client_kick(c);
        }
    }
    if (events & (GW_EV_READ | GW_EV_ERROR))
        hup_read(h);
}

static void hup_timer(gw_timer *t)
{
    gw_hup *h = gw_container_of(t, gw_hup, timer);
    if (h->state == HUP_IDLE || !h->c || !PX(h->c)) {
        hup_close(h);
        return;
    }
    gw_client *c = h->c;
    if (h->state != HUP_CONNECTING && !PX(c)->req_done)
        return; /* the client is still sending: its own body timeout applies */
    if (h->state == HUP_CONNECTING || !PX(c)->head_done)
        proxy_fail(c, 504, "upstream_timeout", "the upstream did not answer in time");
    else
        proxy_fail(c, 504, "upstream_timeout", "the upstream stalled mid-response");
}

/* The client's output drained: resume the upstream. */
static void stream_drained(gw_client *c)
{
    gw_proxy *px = PX(c);
    if (px && px->up && (px->up->conn.flags & GW_CONN_F_PAUSED))
        gw_conn_pause(&px->up->conn, 0);
}

static int body_pending(const gw_client *c) { return PX(c) && !PX(c)->req_done; }

/* When the request body must have arrived (slow-body defence):
 * GATEWAY_BODY_TIMEOUT after the gateway began reading it, plus one second
 * per GATEWAY_BODY_MIN_RATE bytes received, so a body arriving at least that
 * fast is never cut while a trickle (one byte every few seconds) is. 0 while
 * the body is not being read yet. */
static uint64_t body_deadline(const gw_client *c)
{
    const gw_proxy *px = PX(c);
    if (!px || px->req_done || !px->body_start_ms)
        return 0;
    uint64_t rate = gw_srv.cfg.body_min_rate, ext = 0;
    if (rate)
        ext = px->body_rx / rate * 1000 + px->body_rx % rate * 1000 / rate;
    return px->body_start_ms + gw_srv.cfg.body_timeout_ms + ext;
}

/* The client stopped sending its request body, or sends it too slowly. The
 * upstream connection is closed (never pooled half-written). */
static void body_timeout(gw_client *c, int too_slow)
{
    c->close_after = 1;
    proxy_fail(c, 408, "request_timeout",
               too_slow ? "the request body did not arrive in time" : "the request body stopped arriving");
}

/* The client went away mid-exchange. */
static void stream_end(gw_client *c)
{
    gw_proxy *px = PX(c);
    if (!px)
        return;
    if (px->up)
        hup_close(px->up);
    px->up = NULL;
    px->outcome = "client_gone";
    log_request(c, "client_gone");
    proxy_free(c);
}

/* A request body must keep arriving: a client silent for the handshake
 * timeout mid-body is cut, and so is one whose body misses its deadline
 * (GATEWAY_BODY_TIMEOUT, extended by the bytes that came; see
 * body_deadline): the slow-body defence. The timer may fire early (the
 * deadline only moves later); stream_timer re-arms then. Once the body is
 * out, the upstream's timeouts apply (0: the backstop). */
static uint64_t stream_deadline(gw_client *c)
{
    if (!body_pending(c))
        return 0;
    uint64_t deadline = body_deadline(c);
    uint64_t at = c->phase_ms + gw_srv.cfg.handshake_timeout_ms;
    return deadline && deadline < at ? deadline : at;
}

static void stream_timer(gw_client *c)
{
    uint64_t now = gw_loop_now(c->w->loop);
    if (body_pending(c)) {
        uint64_t deadline = body_deadline(c);
        if (deadline && now >= deadline) {
            body_timeout(c, 1);
            return;
        }
        if (now >= c->phase_ms + gw_srv.cfg.handshake_timeout_ms) {
            body_timeout(c, 0);
            return;
        }
    }
    gw_client_arm(c);
}

static void stream_on_read(gw_client *c, uint64_t now) { c->phase_ms = now; /* the body is still arriving */ }

/* Reads stay paused by the exchange itself (resumed as the upstream drains
 * or the response ends). */
static int stream_keep_paused(gw_client *c)
{
    GW_UNUSED(c);
    return 1;
}

static void stream_drain(gw_client *c) { c->close_after = 1; /* the exchange finishes, then the connection closes */ }

static const gw_client_proto stream_proto = {
    .feed = stream_feed,
    .on_read = stream_on_read,
    .deadline = stream_deadline,
    .timer = stream_timer,
    .drained = stream_drained,
    .keep_paused = stream_keep_paused,
    .end = stream_end,
    .drain = stream_drain,
};

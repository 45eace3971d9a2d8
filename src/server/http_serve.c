/* http_serve.c: requests on the public and admin listeners: health
 * endpoints, /metrics, route dispatch, WebSocket upgrades, and the error
 * envelope every HTTP error carries (DESIGN.md section 8). */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "server/http_serve.h"

#include "core/alloc.h"
#include "core/common.h"
#include "core/rand.h"
#include "http/bearer.h"
#include "http/ws_handshake.h"
#include "log/log.h"
#include "server/kind.h"
#include "server/state.h"
#include "store/store.h"

#define ID_MAX 64

typedef gw_req_ids req_ids;

typedef struct handler_entry {
    int listeners;
    const char *method;
    const char *path;
    int write;
    gw_http_handler fn;
} handler_entry;

static handler_entry handlers[32];
static size_t nhandlers;

void gw_http_register(int listeners, const char *method, const char *path, int write, gw_http_handler fn)
{
    if (nhandlers == GW_ARRAY_LEN(handlers)) {
        gw_log_msg(GW_LOG_ERROR, NULL, "too many HTTP handlers registered");
        return;
    }
    handlers[nhandlers++] = (handler_entry){listeners, method, path, write, fn};
}

static const handler_entry *find_handler(const gw_client *c, const gw_http_req *req, int *method_mismatch)
{
    *method_mismatch = 0;
    int lis = c->admin ? GW_LISTENER_ADMIN : GW_LISTENER_PUBLIC;
    for (size_t i = 0; i < nhandlers; i++) {
        const handler_entry *h = &handlers[i];
        size_t pl = strlen(h->path);
        if (!(h->listeners & lis))
            continue;
        int match = h->path[pl - 1] == '/' ? (req->path.n >= pl && memcmp(req->path.p, h->path, pl) == 0)
                                           : gw_str_eq(req->path, h->path);
        if (!match)
            continue;
        if (h->method && !gw_str_eq(req->method, h->method) &&
            !(strcmp(h->method, "GET") == 0 && gw_str_eq(req->method, "HEAD"))) {
            *method_mismatch = 1;
            continue;
        }
        return h;
    }
    return NULL;
}

static int has_handler(const gw_client *c, const gw_http_req *req)
{
    int mismatch;
    return find_handler(c, req, &mismatch) != NULL;
}

/* The bearer token against GATEWAY_ADMIN_TOKEN, by SHA-256 digests compared
 * in constant time (the token's length does not show either). Without a
 * token, write endpoints are open: the configuration allows that only on a
 * loopback or unix-socket admin listener (gw_config_load refuses the rest). */
static int admin_authorized(const gw_http_req *req)
{
    const char *want = gw_srv.cfg.admin_token;
    if (!want[0])
        return 1;
    uint8_t digest[GW_BEARER_DIGEST_LEN];
    gw_bearer_digest(want, strlen(want), digest);
    return gw_bearer_check(req, digest) == GW_BEARER_OK;
}

static const char *reason_phrase(int status)
{
    switch (status) {
    case 101: return "Switching Protocols";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 307: return "Temporary Redirect";
    case 308: return "Permanent Redirect";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 415: return "Unsupported Media Type";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 426: return "Upgrade Required";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    case 505: return "HTTP Version Not Supported";
    default: return "Unknown";
    }
}

/* A client-supplied id is reused only when it is short and plain, so it can
 * go into headers and logs without escaping or injection. */
static int id_ok(gw_str v)
{
    if (v.n == 0 || v.n > ID_MAX)
        return 0;
    for (size_t i = 0; i < v.n; i++) {
        char ch = v.p[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') || ch == '-' ||
              ch == '_' || ch == '.' || ch == ':'))
            return 0;
    }
    return 1;
}

static int is_hex(const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'a' && p[i] <= 'f')))
            return 0;
    return 1;
}

static void get_ids(const gw_http_req *req, req_ids *ids)
{
    ids->corr[0] = ids->trace[0] = '\0';
    if (req) {
        const gw_http_header *h = gw_h1_find_header(req->headers, req->num_headers, "X-Correlation-ID");
        if (!h || !id_ok(h->value))
            h = gw_h1_find_header(req->headers, req->num_headers, "X-Request-ID");
        if (h && id_ok(h->value)) {
            memcpy(ids->corr, h->value.p, h->value.n);
            ids->corr[h->value.n] = '\0';
        }
        /* W3C traceparent: 00-<32 hex trace id>-<16 hex parent>-<2 hex flags> */
        h = gw_h1_find_header(req->headers, req->num_headers, "traceparent");
        if (h && h->value.n == 55 && h->value.p[2] == '-' && h->value.p[35] == '-' && is_hex(h->value.p + 3, 32) &&
            memcmp(h->value.p + 3, "00000000000000000000000000000000", 32) != 0) {
            memcpy(ids->trace, h->value.p + 3, 32);
            ids->trace[32] = '\0';
        }
    }
    if (!ids->corr[0])
        gw_rand_hex(ids->corr, 16);
    if (!ids->trace[0])
        gw_rand_hex(ids->trace, 16);
}

int gw_http_keep_alive(const gw_http_req *req)
{
    if (req->minor_version == 0)
        return gw_h1_header_has_token(req->headers, req->num_headers, "Connection", "keep-alive");
    return !gw_h1_header_has_token(req->headers, req->num_headers, "Connection", "close");
}

/* Writes a complete response. body may be NULL with n == 0. */
static void respond(gw_client *c, int status, const char *ctype, const char *body, size_t n, const req_ids *ids,
                    const char *extra, int head_only)
{
    char hdr[1024];
    if (atomic_load_explicit(&gw_srv.draining, memory_order_relaxed) && !c->admin)
        c->close_after = 1;
    int hl = snprintf(hdr, sizeof hdr,
                      "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\nX-Correlation-ID: %s\r\n"
                      "X-Trace-ID: %s\r\nCache-Control: no-store\r\n%s%s\r\n",
                      status, reason_phrase(status), ctype, n, ids->corr, ids->trace, extra ? extra : "",
                      c->close_after ? "Connection: close\r\n" : "");
    if (hl < 0 || (size_t)hl >= sizeof hdr)
        hl = (int)sizeof hdr - 1;
    struct iovec iov[2] = {{hdr, (size_t)hl}, {(void *)body, n}};
    gw_conn_writev(&c->conn, iov, (!head_only && n) ? 2 : 1);
    gw_counter_inc(gw_metric_http(c->admin, status));
}

static void error_with_ids(gw_client *c, int status, const char *code, const char *message,
                           const gw_http_req *req, const char *extra, const req_ids *ids)
{
    char body[1024];
    size_t pos = 0;
    pos += (size_t)snprintf(body, sizeof body, "{\"code\":\"%s\",\"message\":\"", code);
    gw_json_escape(body, sizeof body - 128, &pos, message, strlen(message));
    pos += (size_t)snprintf(body + pos, sizeof body - pos,
                            "\",\"correlation_id\":\"%s\",\"details\":{\"trace_id\":\"%s\"}}", ids->corr,
                            ids->trace);
    int head_only = req && gw_str_eq(req->method, "HEAD");
    respond(c, status, "application/json", body, pos, ids, extra, head_only);

    gw_log_line *l = gw_log_begin(status >= 500 ? GW_LOG_ERROR : GW_LOG_WARN, "http error", ids->corr);
    if (l) {
        gw_log_int(l, "status", status, 0);
        gw_log_str(l, "code", code, 0);
        if (req) {
            gw_log_strn(l, "method", req->method.p, req->method.n, 0);
            gw_log_strn(l, "path", req->path.p, GW_MIN(req->path.n, (size_t)256), 0);
        }
        gw_log_str(l, "ip", c->ip, 0);
        gw_log_str(l, "listener", c->admin ? "admin" : "public", GW_LOG_JSON_ONLY);
        gw_log_str(l, "trace_id", ids->trace, GW_LOG_JSON_ONLY);
        gw_log_end(l);
    }
}

void gw_http_respond(gw_client *c, const gw_http_req *req, const gw_req_ids *ids, int status, const char *ctype,
                     const void *body, size_t n, const char *extra_headers)
{
    respond(c, status, ctype, body, n, ids, extra_headers, req && gw_str_eq(req->method, "HEAD"));
}

void gw_http_respond_json(gw_client *c, const gw_http_req *req, const gw_req_ids *ids, int status, void *j,
                          const char *extra_headers)
{
    char *out = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!out) {
        gw_http_error_ids(c, 500, "internal_error", "cannot encode the answer", req, NULL, ids);
        return;
    }
    gw_http_respond(c, req, ids, status, "application/json", out, strlen(out), extra_headers);
    free(out);
}

void gw_http_error_ids(gw_client *c, int status, const char *code, const char *message, const gw_http_req *req,
                       const char *extra_headers, const gw_req_ids *ids)
{
    error_with_ids(c, status, code, message, req, extra_headers, ids);
}

void gw_http_error(gw_client *c, int status, const char *code, const char *message, const gw_http_req *req,
                   const char *extra_headers)
{
    req_ids ids;
    get_ids(req, &ids);
    error_with_ids(c, status, code, message, req, extra_headers, &ids);
}

static void respond_text(gw_client *c, const gw_http_req *req, const req_ids *ids, int status, const char *ctype,
                         const char *body, size_t n)
{
    respond(c, status, ctype, body, n, ids, NULL, gw_str_eq(req->method, "HEAD"));
}

static int serve_builtin(gw_client *c, const gw_http_req *req, const req_ids *ids)
{
    gw_str path = req->path;
    int draining = atomic_load_explicit(&gw_srv.draining, memory_order_relaxed);
    int is_get = gw_str_eq(req->method, "GET") || gw_str_eq(req->method, "HEAD");
    int builtin = gw_str_eq(path, "/healthz") || gw_str_eq(path, "/readyz") || gw_str_eq(path, "/health") ||
                  (c->admin && gw_str_eq(path, "/metrics")) || (!c->admin && gw_str_eq(path, "/probe/healthz"));
    if (!builtin)
        return 0;
    if (!is_get) {
        error_with_ids(c, 405, "method_not_allowed", "use GET", req, "Allow: GET, HEAD\r\n", ids);
        return 1;
    }
    if (gw_str_eq(path, "/healthz") || gw_str_eq(path, "/probe/healthz")) {
        respond_text(c, req, ids, 200, "text/plain; charset=utf-8", "ok\n", 3);
    } else if (gw_str_eq(path, "/readyz")) {
        if (draining)
            error_with_ids(c, 503, "draining", "the gateway is shutting down", req, NULL, ids);
        else if (!gw_store_caught_up())
            error_with_ids(c, 503, "catching_up", "the session view is still being read from the store", req, NULL,
                           ids);
        else
            respond_text(c, req, ids, 200, "text/plain; charset=utf-8", "ready\n", 6);
    } else if (gw_str_eq(path, "/health")) {
        char body[480];
        uint64_t up = (gw_mono_ms() - gw_srv.start_mono_ms) / 1000;
        int healthy = gw_store_current_healthy();
        const char *reason = healthy ? NULL : gw_store_current_reason(); /* a literal without quotes */
        int n = snprintf(body, sizeof body,
                         "{\"status\":\"%s\",\"uptime_s\":%llu,\"backend\":{\"overall\":\"%s\",\"kind\":"
                         "\"%s\"%s%s%s},\"connections\":%llu}",
                         draining ? "draining" : healthy ? "ok" : "degraded", (unsigned long long)up,
                         healthy ? "healthy" : "unhealthy", gw_store_current_name(), reason ? ",\"reason\":\"" : "",
                         reason ? reason : "", reason ? "\"" : "",
                         (unsigned long long)(atomic_load_explicit(&gw_srv.nconns, memory_order_relaxed) +
                                              atomic_load_explicit(&gw_srv.nconns_admin, memory_order_relaxed)));
        respond_text(c, req, ids, draining ? 503 : 200, "application/json", body, (size_t)n);
    } else {
        gw_buf out = {0};
        if (gw_metrics_render(&out) != GW_OK) {
            gw_buf_release(&out);
            error_with_ids(c, 500, "internal_error", "cannot render metrics", req, NULL, ids);
            return 1;
        }
        respond_text(c, req, ids, 200, "text/plain; version=0.0.4; charset=utf-8", (const char *)gw_buf_head(&out),
                     out.len);
        gw_buf_release(&out);
    }
    return 1;
}

static int serve_route(gw_client *c, gw_http_req *req, const gw_route *r, gw_route_table *table,
                       const req_ids *ids_in);

static int http_handle(gw_client *c, gw_http_req *req, size_t head_len, const uint8_t *body_p, size_t body_len)
{
    GW_UNUSED(head_len);
    req_ids ids;
    get_ids(req, &ids);
    if (!gw_http_keep_alive(req))
        c->close_after = 1;

    gw_h1_body body;
    int status = 400;
    const char *why = "bad_request";
    if (gw_h1_request_body(req, &body, &status, &why) != GW_OK) {
        c->close_after = 1;
        error_with_ids(c, status, why, "the request framing is refused", req, NULL, &ids);
        gw_client_finish(c);
        return GW_DONE;
    }
    /* A body not read whole for the gateway's own endpoints (body_p NULL)
     * is not parsed as a next request: answer, then close. */
    if ((body.chunked || body.content_length) && !body_p)
        c->close_after = 1;

    if (serve_builtin(c, req, &ids))
        goto done;
    int mismatch = 0;
    const handler_entry *he = find_handler(c, req, &mismatch);
    if (he) {
        if (he->write && !admin_authorized(req)) {
            error_with_ids(c, 401, "unauthorized", "a valid admin bearer token is required", req,
                           "WWW-Authenticate: Bearer\r\n", &ids);
            goto done;
        }
        if (he->fn(c, req, body_p, body_len, &ids) == GW_DONE)
            return GW_DONE;
        goto done;
    }
    if (mismatch) {
        error_with_ids(c, 405, "method_not_allowed", "this endpoint does not take that method", req, NULL, &ids);
        goto done;
    }
    if (c->admin) {
        error_with_ids(c, 404, "not_found", "no such admin endpoint", req, NULL, &ids);
        goto done;
    }
    gw_route_table *table = gw_server_routes();
    const gw_route *r = gw_routes_match(table, req->path.p, req->path.n);
    int rc = serve_route(c, req, r, table, &ids);
    gw_routes_unref(table);
    if (rc == GW_DONE)
        return GW_DONE;

done:
    if (c->close_after) {
        gw_client_finish(c);
        return GW_DONE;
    }
    return GW_OK;
}

/* Serves a request that matched route r (NULL: none). Returns GW_DONE when
 * the connection changed phase, else GW_OK (a response was written). */
static int serve_route(gw_client *c, gw_http_req *req, const gw_route *r, gw_route_table *table,
                       const req_ids *ids_in)
{
    const req_ids ids = *ids_in;
    gw_h1_body body;
    int status = 400;
    const char *why = "bad_request";
    gw_h1_request_body(req, &body, &status, &why);
    if (!r) {
        error_with_ids(c, 404, "not_found", "no route matches this path", req, NULL, &ids);
        return GW_OK;
    }
    if (!gw_ws_is_upgrade(req) && (r->kind->flags & GW_KIND_HTTP))
        return r->kind->serve(c, req, r, table, &ids);
    if (!gw_ws_is_upgrade(req)) {
        gw_counter_inc(gw_metric_handshake(r, "upgrade_required"));
        error_with_ids(c, 426, "websocket_upgrade_required", "this route only speaks WebSocket", req,
                       "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n", &ids);
        return GW_OK;
    }
    /* During GATEWAY_DRAIN_DELAY upgrades are still served (the balancer
     * still sends them here); once the worker drains they are refused. */
    if (c->w->draining) {
        gw_counter_inc(gw_metric_handshake(r, "shutting_down"));
        error_with_ids(c, 503, "shutting_down", "the gateway is shutting down", req, NULL, &ids);
        return GW_OK;
    }
    if (body.chunked || body.content_length) {
        gw_counter_inc(gw_metric_handshake(r, "bad_request"));
        error_with_ids(c, 400, "invalid_upgrade_request", "an upgrade request has no body", req, NULL, &ids);
        return GW_OK;
    }
    gw_ws_upgrade up;
    const char *code = "invalid_upgrade_request";
    status = 400;
    if (gw_ws_check_upgrade(req, &up, &status, &code) != GW_OK) {
        const char *extra = NULL;
        if (status == 426)
            extra = "Sec-WebSocket-Version: 13\r\n";
        else if (status == 405)
            extra = "Allow: GET\r\n";
        gw_counter_inc(gw_metric_handshake(r, status == 426 ? "bad_version" : status == 405 ? "bad_method"
                                                         : strcmp(code, "invalid_websocket_key") == 0 ? "bad_key"
                                                                                                       : "bad_request"));
        error_with_ids(c, status, code, status == 426 ? "WebSocket version 13 is required" : "invalid WebSocket upgrade",
                       req, extra, &ids);
        return GW_OK;
    }
    if (!r->kind->serve) {
        error_with_ids(c, 404, "not_found", "this route's kind is not enabled", req, NULL, &ids);
        return GW_OK;
    }
    return r->kind->serve(c, req, r, table, &ids);
}

/* ============================== the HTTP phase ============================== */

/* The request target as every later step sees it (routes, handlers, the
 * upstream's request): absolute-form served as origin-form, dot segments
 * removed (RFC 3986 section 5.2.4), so "/app/../admin" is "/admin" before a
 * route prefix is matched and no upstream ever sees "/../". The client's
 * buffer is left untouched (a head may be parsed again when its body is
 * still arriving): a changed path lives in c->norm_path. */
static int normalize_target(gw_client *c, gw_http_req *req)
{
    if (gw_h1_origin_form(req) != GW_OK)
        return GW_ERR;
    if (!gw_h1_path_needs_normalizing(req->path))
        return GW_OK;
    gw_free(c->norm_path);
    c->norm_path = gw_malloc(req->path.n + 1);
    req->path = gw_str_make(c->norm_path, gw_h1_normalize_path(req->path, c->norm_path));
    return GW_OK;
}

/* Requests in n bytes at p; returns the bytes used. Returns early when a
 * request handed the connection to another phase. */
static size_t http_feed(gw_client *c, uint8_t *p, size_t n)
{
    size_t off = 0;
    while (off < n && c->phase == GW_PHASE_HTTP) {
        gw_http_header hdrs[128];
        gw_http_req req;
        int status = 400;
        int r = gw_h1_parse_request((const char *)p + off, n - off, &req, hdrs, &gw_srv.limits, &status);
        if (r > 0 && normalize_target(c, &req) != GW_OK) {
            r = GW_ERR;
            status = 400;
        }
        if (r == GW_AGAIN) {
            /* A new keep-alive request starts; the first one's head is due
             * within the handshake timeout of the accept. */
            if (off == 0 && c->conn.in.len == 0 && c->served)
                c->phase_ms = gw_loop_now(c->w->loop);
            break;
        }
        if (r < 0) {
            static const struct {
                int status;
                const char *code, *msg;
            } errs[] = {
                {400, "bad_request", "the request is malformed"},
                {414, "uri_too_long", "the request line is too long"},
                {431, "request_header_fields_too_large", "the request head is too large"},
                {505, "http_version_not_supported", "only HTTP/1.0 and HTTP/1.1 are served here"},
            };
            size_t i = 0;
            while (i + 1 < GW_ARRAY_LEN(errs) && errs[i].status != status)
                i++;
            if (errs[i].status != status)
                i = 0;
            c->close_after = 1;
            gw_http_error(c, errs[i].status, errs[i].code, errs[i].msg, NULL, NULL);
            gw_client_finish(c);
            return n;
        }
        /* The gateway's own endpoints (the admin API) read a small body
         * whole before the handler runs: wait until all of it is here. */
        const uint8_t *body = NULL;
        size_t blen = 0;
        gw_h1_body fr;
        int st;
        const char *why;
        if ((c->admin || has_handler(c, &req)) && gw_h1_request_body(&req, &fr, &st, &why) == GW_OK &&
            (fr.chunked || fr.content_length)) {
            if (fr.chunked || fr.content_length > GW_SMALL_BODY_MAX) {
                c->close_after = 1;
                gw_http_error(c, fr.chunked ? 411 : 413, fr.chunked ? "length_required" : "payload_too_large",
                              fr.chunked ? "send the body with Content-Length" : "the body is too large", &req,
                              NULL);
                gw_client_finish(c);
                return n;
            }
            if (n - off - (size_t)r < fr.content_length)
                break; /* the rest of the body has not arrived */
            body = p + off + r;
            blen = (size_t)fr.content_length;
        }
        off += (size_t)r + blen;
        c->served = 1;
        if (http_handle(c, &req, (size_t)r, body, blen) != GW_OK)
            continue; /* phase changed: the rest goes to the new phase */
        c->phase_ms = gw_loop_now(c->w->loop);
    }
    return off;
}

/* How long a connection with no request bytes may wait in the HTTP phase:
 * until its first request, the handshake timeout (counted from accept); after
 * one, the keep-alive idle timeout. */
static uint64_t http_wait_ms(const gw_client *c)
{
    return c->served ? gw_srv.cfg.http_idle_timeout_ms : gw_srv.cfg.handshake_timeout_ms;
}

/* A request under way, and the first request of a connection, must complete
 * its head in the handshake timeout (slow-header defence; a connection that
 * sends nothing is no different); an idle keep-alive connection gets the
 * idle timeout. */
static uint64_t http_deadline(gw_client *c)
{
    return c->phase_ms + (c->conn.in.len ? gw_srv.cfg.handshake_timeout_ms : http_wait_ms(c));
}

static void http_timer(gw_client *c)
{
    uint64_t now = gw_loop_now(c->w->loop);
    if (c->conn.in.len && now >= c->phase_ms + gw_srv.cfg.handshake_timeout_ms) {
        gw_http_error(c, 408, "request_timeout", "the request head did not arrive in time", NULL, NULL);
        gw_client_finish(c);
        return;
    }
    if (!c->conn.in.len && now >= c->phase_ms + http_wait_ms(c)) {
        if (!c->served)
            gw_log_msg(GW_LOG_DEBUG, NULL, "connection from %s closed: no request within the handshake timeout",
                       c->ip);
        gw_client_close(c);
        return;
    }
    gw_client_arm(c);
}

/* An idle keep-alive connection may still ask /readyz (and learn of the
 * drain from a 503 with Connection: close): it gets a short grace, then is
 * closed. */
static void http_drain(gw_client *c)
{
    c->close_after = 1;
    if (c->conn.in.len == 0 && !c->admin) {
        uint64_t grace = GW_MIN((uint64_t)1000, gw_srv.cfg.shutdown_timeout_ms / 4);
        uint64_t idle = http_wait_ms(c);
        c->phase_ms = gw_loop_now(c->w->loop) + grace - GW_MIN(idle, gw_loop_now(c->w->loop) + grace);
        gw_client_arm(c);
    }
}

const gw_client_proto gw_http_proto = {
    .feed = http_feed,
    .deadline = http_deadline,
    .timer = http_timer,
    .drain = http_drain,
};

/* http_serve.c: requests on the public and admin listeners: health
 * endpoints, /metrics, route dispatch, WebSocket upgrades, and the error
 * envelope every HTTP error carries (DESIGN.md section 8). */
#include <stdio.h>
#include <string.h>

#include "core/common.h"
#include "core/rand.h"
#include "http/bearer.h"
#include "http/ws_handshake.h"
#include "log/log.h"
#include "server/server.h"
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
static gw_route_serve_fn kind_handlers[8];

void gw_route_kind_register(int kind, gw_route_serve_fn fn)
{
    if (kind > 0 && (size_t)kind < GW_ARRAY_LEN(kind_handlers))
        kind_handlers[kind] = fn;
}

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

int gw_http_has_handler(const gw_client *c, const gw_http_req *req)
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

static int keep_alive(const gw_http_req *req)
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
        else
            respond_text(c, req, ids, 200, "text/plain; charset=utf-8", "ready\n", 6);
    } else if (gw_str_eq(path, "/health")) {
        char body[320];
        uint64_t up = (gw_mono_ms() - gw_srv.start_mono_ms) / 1000;
        int healthy = gw_store_current_healthy();
        int n = snprintf(body, sizeof body,
                         "{\"status\":\"%s\",\"uptime_s\":%llu,\"backend\":{\"overall\":\"%s\",\"kind\":"
                         "\"%s\"},\"connections\":%llu}",
                         draining ? "draining" : healthy ? "ok" : "degraded", (unsigned long long)up,
                         healthy ? "healthy" : "unhealthy", gw_store_current_name(),
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

/* Per-user upstreams: the user is the user_header's value up to '@'. An
 * absent header or a user without an upstream (and no default) gets 403. */
static int resolve_user(gw_client *c, const gw_http_req *req, const gw_route *r, char *user, size_t cap,
                        const req_ids *ids)
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
        error_with_ids(c, 403, "unknown_user", "no upstream for this user", req, NULL, ids);
        return GW_ERR;
    }
    memcpy(user, h->value.p, n);
    user[n] = '\0';
    if (!gw_route_upstream(r, user, n) && !(r->upstream && !r->nusers)) {
        gw_counter_inc(gw_metric_handshake(r, "unknown_user"));
        error_with_ids(c, 403, "unknown_user", "no upstream for this user", req, NULL, ids);
        return GW_ERR;
    }
    return GW_OK;
}

int gw_http_handle(gw_client *c, gw_http_req *req, size_t head_len, const uint8_t *body_p, size_t body_len)
{
    GW_UNUSED(head_len);
    req_ids ids;
    get_ids(req, &ids);
    if (!keep_alive(req))
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
    if (r->kind == GW_ROUTE_PROXY && !gw_ws_is_upgrade(req)) {
        char user[64] = "";
        if (r->user_header && resolve_user(c, req, r, user, sizeof user, &ids) != GW_OK)
            return GW_OK;
        const gw_upstream *u = r->nusers && user[0] ? gw_route_upstream(r, user, strlen(user)) : r->upstream;
        if (!u) {
            error_with_ids(c, 403, "unknown_user", "no upstream for this user", req, NULL, &ids);
            return GW_OK;
        }
        /* The body streams to the upstream: the connection stays usable. */
        c->close_after = !keep_alive(req) || atomic_load_explicit(&gw_srv.draining, memory_order_relaxed);
        gw_proxy_start(c, req, r, table, &ids, u);
        return GW_DONE;
    }
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
    if (r->kind != GW_ROUTE_ECHO && r->kind != GW_ROUTE_PROXY) {
        if ((size_t)r->kind < GW_ARRAY_LEN(kind_handlers) && kind_handlers[r->kind])
            return kind_handlers[r->kind](c, req, r, table, &ids);
        error_with_ids(c, 404, "not_found", "this route's kind is not enabled", req, NULL, &ids);
        return GW_OK;
    }
    if (r->kind == GW_ROUTE_PROXY) {
        char user[64] = "";
        if (r->user_header && resolve_user(c, req, r, user, sizeof user, &ids) != GW_OK)
            return GW_OK;
        gw_relay_opts ro = {.user = user[0] ? user : NULL};
        if (gw_relay_ws_start(c, req, r, table, &ids, &ro) == GW_OK)
            return GW_DONE;
        gw_counter_inc(gw_metric_handshake(r, "upstream_unavailable"));
        error_with_ids(c, 502, "upstream_unavailable", "the upstream could not be reached", req, NULL, &ids);
        return GW_OK;
    }
    if (gw_ws_serve_upgrade(c, req, r, table, ids.corr, ids.trace) == GW_OK)
        return GW_DONE;
    return GW_OK;
}


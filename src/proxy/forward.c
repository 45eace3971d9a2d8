/* forward.c: what the gateway forwards toward an upstream, shared by the
 * WebSocket relay and the HTTP proxy. */
#include "proxy/forward.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "core/alloc.h"
#include "core/common.h"
#include "core/rand.h"

int gw_fwd_hop_by_hop(gw_str name)
{
    static const char *const hop[] = {"Connection", "Keep-Alive", "Proxy-Connection", "Proxy-Authenticate",
                                      "Proxy-Authorization", "TE", "Trailer", "Transfer-Encoding", "Upgrade",
                                      "Content-Length"};
    for (size_t i = 0; i < GW_ARRAY_LEN(hop); i++)
        if (gw_str_ieq(name, hop[i]))
            return 1;
    return 0;
}

/* Request headers the gateway sets itself toward an upstream: the host, the
 * upstream leg's own handshake, the forwarding set and the ids. */
static int gateway_owned(gw_str name)
{
    static const char *const own[] = {"Host", "Sec-WebSocket-Key", "Sec-WebSocket-Version",
                                      "Sec-WebSocket-Extensions", "Sec-WebSocket-Protocol", "Sec-WebSocket-Accept",
                                      "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host",
                                      "X-Correlation-ID", "X-Request-ID", "traceparent", "tracestate"};
    for (size_t i = 0; i < GW_ARRAY_LEN(own); i++)
        if (gw_str_ieq(name, own[i]))
            return 1;
    /* Headers the gateway itself sets toward agents are never taken from a
     * client. */
    return name.n >= 9 && strncasecmp(name.p, "X-Wsgate-", 9) == 0;
}

int gw_fwd_connection_lists(const gw_http_header *hdrs, size_t n, gw_str name)
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
char *gw_fwd_headers(const gw_http_req *req, const char *ip, int tls, const char *corr, const char *trace,
                     const char *extra, size_t *len)
{
    size_t cap = 512 + strlen(ip) + strlen(corr) + strlen(trace) + (extra ? strlen(extra) : 0) + req->authority.n;
    for (size_t i = 0; i < req->num_headers; i++)
        cap += req->headers[i].name.n + req->headers[i].value.n + 4;
    char *out = gw_malloc(cap);
    size_t pos = 0;
    for (size_t i = 0; i < req->num_headers; i++) {
        const gw_http_header *h = &req->headers[i];
        if (gw_fwd_hop_by_hop(h->name) || gateway_owned(h->name) ||
            gw_fwd_connection_lists(req->headers, req->num_headers, h->name))
            continue;
        pos = appendf(out, cap, pos, "%.*s: %.*s\r\n", (int)h->name.n, h->name.p, (int)h->value.n, h->value.p);
    }
    const gw_http_header *xff = gw_h1_find_header(req->headers, req->num_headers, "X-Forwarded-For");
    if (xff)
        pos = appendf(out, cap, pos, "X-Forwarded-For: %.*s, %s\r\n", (int)xff->value.n, xff->value.p, ip);
    else
        pos = appendf(out, cap, pos, "X-Forwarded-For: %s\r\n", ip);
    const char *proto = tls ? "https" : "http";
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
char *gw_fwd_target(const gw_route *r, const gw_upstream *u, const gw_http_req *req)
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


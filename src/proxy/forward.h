/* forward.h: building what the gateway forwards toward an upstream, shared
 * by the WebSocket relay and the HTTP proxy: the one hop-by-hop header list,
 * the forwarded header set, and the request target. */
#ifndef GW_FORWARD_H
#define GW_FORWARD_H

#include <stddef.h>

#include "core/str.h"
#include "http/h1_parse.h"
#include "server/routes.h"

/* 1 for a hop-by-hop header (RFC 9110 section 7.6.1), or one that states
 * the message's framing (Content-Length): never forwarded either way; the
 * gateway states its own. */
int gw_fwd_hop_by_hop(gw_str name);
/* 1 when name is listed in a Connection header of hdrs (RFC 9110 section
 * 7.6.1: such headers are hop-by-hop too). */
int gw_fwd_connection_lists(const gw_http_header *hdrs, size_t n, gw_str name);
/* The forwarded header lines toward an upstream: the client's end-to-end
 * headers plus X-Forwarded-For (ip appended), -Proto (https when tls),
 * -Host, X-Correlation-ID and traceparent, then extra; in a buffer
 * allocated to fit whatever the client sent (gw_free it); *len its length.
 * NULL only if the size bound is broken (a bug: callers refuse and log). */
char *gw_fwd_headers(const gw_http_req *req, const char *ip, int tls, const char *corr, const char *trace,
                     const char *extra, size_t *len);
/* The request target toward the upstream, whole, allocated (gw_free it). */
char *gw_fwd_target(const gw_route *r, const gw_upstream *u, const gw_http_req *req);

#endif

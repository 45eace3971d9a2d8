/* proxy.h: the proxy route kind: HTTP requests through the reverse proxy
 * (proxy.c), WebSocket upgrades through the relay (relay.c). The relay is
 * also how the terminal route reaches its agent. */
#ifndef GW_PROXY_H
#define GW_PROXY_H

#include "http/h1_parse.h"
#include "server/client.h"
#include "server/http_serve.h"
#include "server/kind.h"
#include "server/routes.h"

extern const gw_kind gw_kind_proxy;
/* The `auth` kind (auth.c): /v1/auth/ proxied to its upstream, else 503. */
extern const gw_kind gw_kind_auth;

/* What became of a relay's upstream handshake, for the route's owner. */
typedef struct gw_relay_result {
    const char *result;        /* "accepted", "upstream_refused" (an HTTP answer), "upstream_timeout" or
                                  "upstream_unavailable" */
    int upstream_status;       /* the upstream's HTTP status when it refused, else 0 */
    const char *error;         /* what went wrong, when the upstream was not reached ("" otherwise) */
    const char *corr, *ip, *user, *upstream;
    const char *resource_name, *session_id; /* NULL when not given */
} gw_relay_result;

/* How a relay is set up; every field may be NULL. */
typedef struct gw_relay_opts {
    const gw_wsc_target *target; /* upstream (NULL: the route's upstream for user) */
    const char *upstream_url;    /* the upstream as logged (with target) */
    const char *extra_headers;   /* complete "Name: value\r\n" lines added toward the upstream */
    const char *user;            /* user for per-user upstreams and logs */
    const char *offer_protocols; /* subprotocols offered upstream (NULL: the client's; "": none) */
    const char *select_protocol; /* subprotocol the 101 selects (NULL: the upstream's pick) */
    const char *resource_name;   /* logged on every line of the session (terminal) */
    const char *session_id;      /* logged on every line of the session (terminal) */
    void (*on_result)(const gw_relay_result *res); /* called once the upstream accepted or refused */
} gw_relay_opts;

/* Relays the client's checked upgrade to an upstream: the client is held
 * (not read) until the upstream answers; then 101 and both legs run, or the
 * upstream's refusal is passed back. GW_ERR when no attempt could start
 * (nothing was written). */
int gw_relay_ws_start(gw_client *c, gw_http_req *req, const gw_route *r, gw_route_table *table,
                      const gw_req_ids *ids, const gw_relay_opts *o);

/* The HTTP reverse proxy (proxy.c): streams one exchange to u. */
int gw_proxy_start(gw_client *c, gw_http_req *req, const gw_route *r, gw_route_table *table, const gw_req_ids *ids,
                   const gw_upstream *u);

#endif

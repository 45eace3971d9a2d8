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
    const char *path;            /* request target toward target (NULL: target's own path) */
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

/* What a head hook asks of one response. */
enum gw_proxy_body_mode {
    GW_PROXY_PASS = 0, /* stream it, nothing else */
    GW_PROXY_TEE,      /* stream it, and hand its (decoded) body to the body hook at the end, if within the limit */
    GW_PROXY_HOLD,     /* send nothing yet: gather the body up to the limit, then the body hook decides */
};

/* A kind's view into one proxied exchange (the browser kind's learning and
 * fallback). Every hook runs on the client's worker. */
typedef struct gw_proxy_hooks {
    /* The final response head arrived (status >= 200). fallen_back is 1 on
     * the fallback upstream's answer. Returns an enum gw_proxy_body_mode and,
     * for TEE and HOLD, the body limit in *limit. A HOLD response whose body
     * passes the limit is sent as it is (head, what was gathered, the rest
     * streamed) and the body hook is not called. */
    int (*head)(void *ud, int status, const gw_http_resp *resp, int fallen_back, size_t *limit);
    /* The whole body of a TEE or HOLD response (p NULL and n 0 when a TEE
     * body passed the limit). For HOLD: return 1 to drop this response and
     * send the request once to the fallback upstream instead (only when one
     * was given and not used yet), 0 to send the held response. */
    int (*body)(void *ud, int status, const uint8_t *p, size_t n, int fallen_back);
    /* The exchange ended: status is the last answer's (0 when none came),
     * outcome "ok" or why it failed. Called once; ud is the hooks' to free. */
    void (*done)(void *ud, int status, const char *outcome);
    void *ud;
} gw_proxy_hooks;

typedef struct gw_proxy_opts {
    const char *path;                /* request target toward u (NULL: the route's rewrite of req's) */
    const gw_upstream *fallback;     /* where a HOLD body hook may send the request instead (NULL: none) */
    const gw_http_req *fallback_req; /* the request as the fallback gets it (its target rewritten per the route) */
    gw_proxy_hooks hooks;            /* all NULL: a plain exchange */
} gw_proxy_opts;

/* gw_proxy_start with a kind's options (o NULL: none). A fallback is only
 * taken for a request without a body (nothing of it was consumed). req and
 * fallback_req are used before this returns (their heads are built). */
int gw_proxy_start_ex(gw_client *c, gw_http_req *req, const gw_route *r, gw_route_table *table,
                      const gw_req_ids *ids, const gw_upstream *u, const gw_proxy_opts *o);

#endif

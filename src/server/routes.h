/* routes.h: the route table (DESIGN.md section 3): path prefixes matched
 * longest first, each with a kind and its settings. Loaded from
 * GATEWAY_ROUTES_FILE (JSON) at start and on SIGHUP; a table is immutable
 * once loaded and reference-counted, so a reload swaps the pointer while
 * open connections keep the table they started with. */
#ifndef GW_ROUTES_H
#define GW_ROUTES_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "config/config.h"
#include "metrics/metrics.h"
#include "server/kind.h"
#include "upstream/ws_client.h"

#define GW_CONNECT_TIMEOUT_MS 10000u /* connect + upstream handshake, unless the route says otherwise */
#define GW_READ_TIMEOUT_MS 60000u    /* an upstream's HTTP response must start within this */

typedef struct gw_upstream {
    char *name;           /* user name for per-user upstreams, NULL for the default */
    char *url;            /* as configured */
    gw_wsc_target target; /* parsed: host:port or unix path, TLS, base path */
} gw_upstream;

/* One entry of a terminal route's agent_upstreams allowlist:
 *   "HOST:PORT"         a name (case-insensitive) or an IP literal ([v6] in brackets);
 *   "ADDR/BITS:PORT"    an IPv4 CIDR, "[V6/BITS]:PORT" an IPv6 one (IP literals only);
 *   "unix:PATTERN"      a unix socket path, shell-style glob ("unix:/run/wsgate/agent-*.sock", "unix:*").
 * PORT is a number or "*" (any). Names are matched as written, never
 * resolved: a CIDR never matches a host name. */
typedef struct gw_agent_pattern {
    int kind;             /* GW_AGENT_PAT_* */
    char host[256];       /* NAME: lower-case */
    uint8_t net[16];      /* CIDR: IPv4 as ::ffff:a.b.c.d */
    int bits;             /* CIDR: prefix length over the 128-bit form */
    int port;             /* -1: any */
    char path[108];       /* UNIX: the glob */
} gw_agent_pattern;

enum { GW_AGENT_PAT_NAME = 1, GW_AGENT_PAT_CIDR, GW_AGENT_PAT_UNIX };

typedef struct gw_route {
    char *path;                   /* exact path, or a prefix when it ends in '/' */
    const gw_kind *kind;          /* what serves it (kind.h) */
    char *label;                  /* route label in logs and metrics (the path) */
    const char *const *protocols; /* subprotocols the gateway itself may select (echo) */
    uint64_t idle_ms;             /* close a WebSocket after this long without a message (0: never) */
    int strip_prefix;             /* proxy: drop the route's path prefix before forwarding */
    gw_upstream *upstream;        /* proxy: default upstream (NULL with users only) */
    char *user_header;            /* proxy: header naming the user (part before '@') */
    gw_upstream *users;           /* proxy: per-user upstreams */
    size_t nusers;
    uint64_t connect_timeout_ms;  /* upstream connect + handshake budget (GW_CONNECT_TIMEOUT_MS) */
    uint64_t read_timeout_ms;     /* proxy: HTTP response must start within this (GW_READ_TIMEOUT_MS) */
    gw_agent_pattern *agents;     /* terminal: agent_upstreams (NULL: the default, loopback and unix) */
    size_t nagents;
    void *kind_data;              /* a kind's own settings (parse sets it), freed with kind_free */
    void (*kind_free)(void *data);
    /* metrics series of this route (shared across reloads by label) */
    gw_metric *ws_open;
    gw_metric *msgs_in, *msgs_out;
    gw_metric *bytes_in, *bytes_out;
    gw_metric *duration;
} gw_route;

typedef struct gw_route_table {
    gw_route *routes;
    size_t n;
    atomic_int refs;
    uint64_t generation; /* counts reloads, for logs */
} gw_route_table;

/* Builds the table from file (NULL or "": defaults only). The echo route
 * /probe/ws is always present unless the file defines that path itself.
 * Returns the table with one reference, or NULL with a one-line reason. */
gw_route_table *gw_routes_load(const char *file, const gw_config *cfg, char *err, size_t errcap);
void gw_routes_ref(gw_route_table *t);
void gw_routes_unref(gw_route_table *t);
const gw_route *gw_routes_match(const gw_route_table *t, const char *path, size_t n);
/* The upstream for user (NULL: the default); NULL when there is none. */
const gw_upstream *gw_route_upstream(const gw_route *r, const char *user, size_t n);
/* For a kind's parse function: the proxy fields (upstream, user_header,
 * users; at least one upstream), and the terminal's agent_upstreams. */
int gw_route_parse_upstreams(struct json_t *o, gw_route *r, char *err, size_t errcap);
int gw_route_parse_agents(struct json_t *o, gw_route *r, char *err, size_t errcap);

/* Parses an upstream URL as the proxy takes it (http://host:port[/base] or
 * unix:/path) into *u (release with gw_upstream_free). GW_OK, or GW_ERR
 * with a reason. */
int gw_upstream_parse(const char *url, gw_upstream *u, char *err, size_t errcap);
void gw_upstream_free(gw_upstream *u);

/* Parses one agent_upstreams entry. GW_OK, or GW_ERR with a reason. */
int gw_agent_pattern_parse(const char *s, gw_agent_pattern *p, char *err, size_t errcap);
/* 1 when the terminal route r lets its tokens dial t: t matches one of the
 * route's agent_upstreams, or, without that field, t is a loopback address
 * (127.0.0.0/8, ::1, localhost) or a unix socket. */
int gw_route_agent_allowed(const gw_route *r, const gw_wsc_target *t);

#endif

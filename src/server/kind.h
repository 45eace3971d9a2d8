/* kind.h: a route kind is a plug-in. Each kind (echo, proxy, terminal, ...)
 * describes itself with one gw_kind table and is registered once at start
 * (main.c: one gw_kind_register line per kind, before routes are loaded).
 * The route table parses a route's kind-specific fields through the table
 * and keeps a pointer to it in the route; the HTTP phase hands a request on
 * a route to the kind's serve function. Nothing in the connection core
 * names a kind. */
#ifndef GW_KIND_H
#define GW_KIND_H

#include <stddef.h>

struct json_t;
struct gw_route;
struct gw_route_table;
struct gw_client;
struct gw_http_req;
struct gw_req_ids;
struct gw_config;

enum gw_kind_flags {
    GW_KIND_HTTP = 1u << 0,        /* serves plain HTTP requests (else 426 for anything but an upgrade) */
    GW_KIND_UPSTREAM = 1u << 1,    /* its sessions have an upstream leg (close cause "upstream_closed") */
    GW_KIND_DEFAULT_ONCE = 1u << 2, /* its default route is left out when the file has any route of it */
    GW_KIND_OWN_FIELDS = 1u << 3,  /* its fields are refused on routes of other kinds */
};

typedef struct gw_kind {
    const char *name;              /* "kind" in the routes file */
    unsigned flags;                /* GW_KIND_* */
    const char *const *fields;     /* route fields it reads beyond the common ones (NULL-terminated, or NULL) */
    const char *default_path;      /* a route of this kind present unless the file defines one (NULL: none) */
    /* Fills r's kind-specific settings from the route object o (NULL for
     * the default route). GW_OK, or GW_ERR with a one-line reason. */
    int (*parse)(struct json_t *o, struct gw_route *r, const struct gw_config *cfg, char *err, size_t errcap);
    /* Serves one request on a route of this kind: a plain request (with
     * GW_KIND_HTTP) or a checked WebSocket upgrade. Returns GW_DONE when it
     * took the connection over, GW_OK when it answered. */
    int (*serve)(struct gw_client *c, struct gw_http_req *req, const struct gw_route *r,
                 struct gw_route_table *table, const struct gw_req_ids *ids);
} gw_kind;

/* Registers a kind before the first routes are loaded (not thread-safe). */
void gw_kind_register(const gw_kind *k);
/* The registered kind of that name, or NULL. */
const gw_kind *gw_kind_find(const char *name);

#endif

/* routes.c: route table loading (jansson) and matching. */
#include "server/routes.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/common.h"

static const char *const echo_protocols[] = {"wsgate.echo.v1", NULL};

const char *gw_route_kind_str(int kind)
{
    switch (kind) {
    case GW_ROUTE_ECHO:
        return "echo";
    case GW_ROUTE_PROXY:
        return "proxy";
    case GW_ROUTE_TERMINAL:
        return "terminal";
    default:
        return "unknown";
    }
}

static void register_route_metrics(gw_route *r)
{
    static const double dur_buckets[] = {0.1, 1, 10, 60, 300, 1800, 3600, 14400, 86400};
    char esc[256], one[300], two[400];
    gw_metrics_label_escape(r->label, esc, sizeof esc);
    snprintf(one, sizeof one, "route=\"%s\"", esc);
    r->ws_open = gw_metric_get("wsgate_ws_connections", GW_METRIC_GAUGE, "Open WebSocket connections by route.", one);
    const char *mh = "WebSocket messages through the gateway, by route and direction.";
    const char *bh = "WebSocket payload bytes through the gateway, by route and direction.";
    snprintf(two, sizeof two, "route=\"%s\",direction=\"in\"", esc);
    r->msgs_in = gw_metric_get("wsgate_ws_messages_total", GW_METRIC_COUNTER, mh, two);
    r->bytes_in = gw_metric_get("wsgate_ws_bytes_total", GW_METRIC_COUNTER, bh, two);
    snprintf(two, sizeof two, "route=\"%s\",direction=\"out\"", esc);
    r->msgs_out = gw_metric_get("wsgate_ws_messages_total", GW_METRIC_COUNTER, mh, two);
    r->bytes_out = gw_metric_get("wsgate_ws_bytes_total", GW_METRIC_COUNTER, bh, two);
    r->duration = gw_histogram_get("wsgate_ws_session_duration_seconds", "WebSocket session durations by route.", one,
                                   dur_buckets, GW_ARRAY_LEN(dur_buckets));
}

static void free_upstream(gw_upstream *u)
{
    gw_free(u->name);
    gw_free(u->url);
}

static void free_table(gw_route_table *t)
{
    for (size_t i = 0; i < t->n; i++) {
        gw_route *r = &t->routes[i];
        gw_free(r->path);
        gw_free(r->label);
        gw_free(r->user_header);
        if (r->upstream) {
            free_upstream(r->upstream);
            gw_free(r->upstream);
        }
        for (size_t k = 0; k < r->nusers; k++)
            free_upstream(&r->users[k]);
        gw_free(r->users);
    }
    gw_free(t->routes);
    gw_free(t);
}

void gw_routes_ref(gw_route_table *t) { atomic_fetch_add(&t->refs, 1); }

void gw_routes_unref(gw_route_table *t)
{
    if (t && atomic_fetch_sub(&t->refs, 1) == 1)
        free_table(t);
}

static int parse_upstream(const char *url, const char *name, gw_upstream *u, char *err, size_t errcap)
{
    char e[256];
    memset(u, 0, sizeof *u);
    /* "unix:/path" upstreams take requests at their path as sent. */
    if (gw_wsc_parse_url(url, &u->target, e, sizeof e) != GW_OK) {
        snprintf(err, errcap, "upstream \"%s\": %s", url, e);
        return GW_ERR;
    }
    if (strncmp(url, "unix:", 5) != 0 && !u->target.is_http) {
        snprintf(err, errcap, "upstream \"%s\": use http://host:port or unix:/path", url);
        return GW_ERR;
    }
    if (u->target.tls) {
        snprintf(err, errcap, "upstream \"%s\": https upstreams are not supported yet", url);
        return GW_ERR;
    }
    u->url = gw_strdup(url);
    u->name = name ? gw_strdup(name) : NULL;
    return GW_OK;
}

static int duration_field(json_t *o, const char *key, uint64_t def, uint64_t *out, const char *path, char *err,
                          size_t errcap)
{
    json_t *v = json_object_get(o, key);
    *out = def;
    if (!v)
        return GW_OK;
    if (json_is_integer(v) && json_integer_value(v) >= 0) {
        *out = (uint64_t)json_integer_value(v) * 1000;
        return GW_OK;
    }
    if (!json_is_string(v) || gw_parse_duration_ms(json_string_value(v), out) != GW_OK) {
        snprintf(err, errcap, "route %s: %s must be a duration like \"5s\"", path, key);
        return GW_ERR;
    }
    return GW_OK;
}

static int parse_route(json_t *o, gw_route *r, const gw_config *cfg, char *err, size_t errcap)
{
    static const char *const known[] = {"path", "kind", "upstream", "strip_prefix", "user_header", "users",
                                        "connect_timeout", "read_timeout", "idle_timeout", NULL};
    const char *key;
    json_t *val;
    if (!json_is_object(o)) {
        snprintf(err, errcap, "each route must be an object");
        return GW_ERR;
    }
    json_t *jp = json_object_get(o, "path"), *jk = json_object_get(o, "kind");
    if (!json_is_string(jp) || json_string_value(jp)[0] != '/') {
        snprintf(err, errcap, "a route needs a \"path\" starting with '/'");
        return GW_ERR;
    }
    const char *path = json_string_value(jp);
    json_object_foreach(o, key, val)
    {
        int ok = 0;
        for (size_t i = 0; known[i]; i++)
            ok |= strcmp(key, known[i]) == 0;
        if (!ok) {
            snprintf(err, errcap, "route %s: unknown field \"%s\"", path, key);
            return GW_ERR;
        }
    }
    if (!json_is_string(jk)) {
        snprintf(err, errcap, "route %s: \"kind\" is required", path);
        return GW_ERR;
    }
    const char *kind = json_string_value(jk);
    r->path = gw_strdup(path);
    r->label = gw_strdup(path);
    if (strcmp(kind, "echo") == 0) {
        r->kind = GW_ROUTE_ECHO;
        r->protocols = echo_protocols;
        r->idle_ms = cfg->echo_idle_timeout_ms;
    } else if (strcmp(kind, "proxy") == 0) {
        r->kind = GW_ROUTE_PROXY;
    } else if (strcmp(kind, "terminal") == 0) {
        r->kind = GW_ROUTE_TERMINAL;
    } else {
        snprintf(err, errcap, "route %s: kind \"%s\" is not available in this build (echo, proxy, terminal)", path,
                 kind);
        return GW_ERR;
    }
    if (duration_field(o, "idle_timeout", r->idle_ms, &r->idle_ms, path, err, errcap) != GW_OK ||
        duration_field(o, "connect_timeout", 10000, &r->connect_timeout_ms, path, err, errcap) != GW_OK ||
        duration_field(o, "read_timeout", 60000, &r->read_timeout_ms, path, err, errcap) != GW_OK)
        return GW_ERR;
    json_t *sp = json_object_get(o, "strip_prefix");
    if (sp && !json_is_boolean(sp)) {
        snprintf(err, errcap, "route %s: strip_prefix must be true or false", path);
        return GW_ERR;
    }
    r->strip_prefix = sp && json_is_true(sp);
    if (r->kind != GW_ROUTE_PROXY)
        return GW_OK;

    json_t *ju = json_object_get(o, "upstream"), *jh = json_object_get(o, "user_header"),
           *jusers = json_object_get(o, "users");
    if (ju) {
        if (!json_is_string(ju)) {
            snprintf(err, errcap, "route %s: upstream must be a string", path);
            return GW_ERR;
        }
        r->upstream = gw_calloc(1, sizeof *r->upstream);
        if (parse_upstream(json_string_value(ju), NULL, r->upstream, err, errcap) != GW_OK)
            return GW_ERR;
    }
    if (jh) {
        if (!json_is_string(jh) || !json_string_length(jh)) {
            snprintf(err, errcap, "route %s: user_header must be a header name", path);
            return GW_ERR;
        }
        r->user_header = gw_strdup(json_string_value(jh));
    }
    if (jusers) {
        if (!json_is_object(jusers) || !r->user_header) {
            snprintf(err, errcap, "route %s: users must be an object {name: upstream} and needs user_header", path);
            return GW_ERR;
        }
        r->users = gw_calloc(json_object_size(jusers) + 1, sizeof *r->users);
        json_object_foreach(jusers, key, val)
        {
            if (!json_is_string(val)) {
                snprintf(err, errcap, "route %s: users.%s must be an upstream URL", path, key);
                return GW_ERR;
            }
            if (parse_upstream(json_string_value(val), key, &r->users[r->nusers], err, errcap) != GW_OK)
                return GW_ERR;
            r->nusers++;
        }
    }
    if (!r->upstream && !r->nusers) {
        snprintf(err, errcap, "route %s: a proxy route needs an upstream or users", path);
        return GW_ERR;
    }
    return GW_OK;
}

gw_route_table *gw_routes_load(const char *file, const gw_config *cfg, char *err, size_t errcap)
{
    static uint64_t generation;
    gw_route_table *t = gw_calloc(1, sizeof *t);
    json_t *root = NULL;
    size_t nfile = 0;
    if (file && file[0]) {
        json_error_t je;
        root = json_load_file(file, JSON_REJECT_DUPLICATES, &je);
        if (!root) {
            snprintf(err, errcap, "%s:%d: %s", file, je.line, je.text);
            gw_free(t);
            return NULL;
        }
        json_t *routes = json_object_get(root, "routes");
        if (!json_is_object(root) || !json_is_array(routes)) {
            snprintf(err, errcap, "%s: expected {\"routes\": [...]}", file);
            json_decref(root);
            gw_free(t);
            return NULL;
        }
        nfile = json_array_size(routes);
    }
    t->routes = gw_calloc(nfile + 2, sizeof *t->routes);
    int have_probe = 0, have_terminal = 0;
    for (size_t i = 0; i < nfile; i++) {
        gw_route *r = &t->routes[t->n];
        char e[512];
        int rc = parse_route(json_array_get(json_object_get(root, "routes"), i), r, cfg, e, sizeof e);
        t->n++;
        if (rc != GW_OK) {
            snprintf(err, errcap, "%s: %s", file, e);
            json_decref(root);
            free_table(t);
            return NULL;
        }
        for (size_t k = 0; k + 1 < t->n; k++) {
            if (strcmp(t->routes[k].path, r->path) == 0) {
                snprintf(err, errcap, "%s: route %s is defined twice", file, r->path);
                json_decref(root);
                free_table(t);
                return NULL;
            }
        }
        have_probe |= strcmp(r->path, "/probe/ws") == 0;
        have_terminal |= r->kind == GW_ROUTE_TERMINAL;
    }
    json_decref(root);
    if (!have_terminal) {
        gw_route *r = &t->routes[t->n++];
        r->path = gw_strdup("/ws/terminal/");
        r->label = gw_strdup("/ws/terminal/");
        r->kind = GW_ROUTE_TERMINAL;
        r->connect_timeout_ms = 10000;
    }
    if (!have_probe) {
        gw_route *r = &t->routes[t->n++];
        r->path = gw_strdup("/probe/ws");
        r->label = gw_strdup("/probe/ws");
        r->kind = GW_ROUTE_ECHO;
        r->protocols = echo_protocols;
        r->idle_ms = cfg->echo_idle_timeout_ms;
    }
    for (size_t i = 0; i < t->n; i++)
        register_route_metrics(&t->routes[i]);
    atomic_init(&t->refs, 1);
    t->generation = ++generation;
    return t;
}

const gw_route *gw_routes_match(const gw_route_table *t, const char *path, size_t n)
{
    const gw_route *best = NULL;
    size_t best_len = 0;
    for (size_t i = 0; i < t->n; i++) {
        const gw_route *r = &t->routes[i];
        size_t rl = strlen(r->path);
        int match;
        if (r->path[rl - 1] == '/')
            /* "/app/" matches "/app/..." and "/app" itself */
            match = (n >= rl && memcmp(path, r->path, rl) == 0) || (n == rl - 1 && memcmp(path, r->path, n) == 0);
        else
            match = n == rl && memcmp(path, r->path, rl) == 0;
        if (match && rl > best_len) {
            best = r;
            best_len = rl;
        }
    }
    return best;
}

const gw_upstream *gw_route_upstream(const gw_route *r, const char *user, size_t n)
{
    if (!user)
        return r->upstream;
    for (size_t i = 0; i < r->nusers; i++)
        if (strlen(r->users[i].name) == n && memcmp(r->users[i].name, user, n) == 0)
            return &r->users[i];
    return NULL;
}

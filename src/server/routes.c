/* routes.c: route table loading (jansson) and matching. */
#include "server/routes.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <fnmatch.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/alloc.h"
#include "core/common.h"

/* ============================== kind registry =============================== */

#define KINDS_MAX 16
static const gw_kind *kinds[KINDS_MAX];
static size_t nkinds;

void gw_kind_register(const gw_kind *k)
{
    for (size_t i = 0; i < nkinds; i++)
        if (kinds[i] == k)
            return;
    if (nkinds < KINDS_MAX)
        kinds[nkinds++] = k;
}

const gw_kind *gw_kind_find(const char *name)
{
    for (size_t i = 0; i < nkinds; i++)
        if (strcmp(kinds[i]->name, name) == 0)
            return kinds[i];
    return NULL;
}

static int kind_takes(const gw_kind *k, const char *field)
{
    for (size_t i = 0; k->fields && k->fields[i]; i++)
        if (strcmp(k->fields[i], field) == 0)
            return 1;
    return 0;
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
        gw_free(r->agents);
        if (r->kind_free)
            r->kind_free(r->kind_data);
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

static int parse_upstream_url(const char *url, const char *name, gw_upstream *u, char *err, size_t errcap)
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

/* ============================ agent allowlist =============================== */

/* An IP literal as 16 bytes (IPv4 as ::ffff:a.b.c.d). 1 when s is one. */
static int ip_literal(const char *s, uint8_t out[16])
{
    struct in_addr v4;
    if (inet_pton(AF_INET, s, &v4) == 1) {
        memset(out, 0, 10);
        out[10] = out[11] = 0xff;
        memcpy(out + 12, &v4, 4);
        return 1;
    }
    struct in6_addr v6;
    if (inet_pton(AF_INET6, s, &v6) == 1) {
        memcpy(out, &v6, 16);
        return 1;
    }
    return 0;
}

static int is_v4_mapped(const uint8_t a[16])
{
    static const uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return memcmp(a, prefix, 12) == 0;
}

static int prefix_match(const uint8_t a[16], const uint8_t b[16], int bits)
{
    int whole = bits / 8, rest = bits % 8;
    if (memcmp(a, b, (size_t)whole) != 0)
        return 0;
    if (!rest)
        return 1;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (a[whole] & mask) == (b[whole] & mask);
}

int gw_agent_pattern_parse(const char *s, gw_agent_pattern *p, char *err, size_t errcap)
{
    memset(p, 0, sizeof *p);
    if (strncmp(s, "unix:", 5) == 0) {
        const char *g = s + 5;
        if (!g[0] || strlen(g) >= sizeof p->path) {
            snprintf(err, errcap, "\"%s\": unix: needs a path or glob under %zu bytes", s, sizeof p->path);
            return GW_ERR;
        }
        p->kind = GW_AGENT_PAT_UNIX;
        memcpy(p->path, g, strlen(g) + 1);
        return GW_OK;
    }
    const char *hs = s, *he, *port;
    if (s[0] == '[') {
        hs = s + 1;
        he = strchr(hs, ']');
        if (!he || he[1] != ':') {
            snprintf(err, errcap, "\"%s\": expected [IPv6]:PORT or [IPv6/BITS]:PORT", s);
            return GW_ERR;
        }
        port = he + 2;
    } else {
        he = strrchr(s, ':');
        if (!he || memchr(s, ':', (size_t)(he - s))) {
            snprintf(err, errcap, "\"%s\": expected HOST:PORT, ADDR/BITS:PORT, [IPv6]:PORT or unix:PATH", s);
            return GW_ERR;
        }
        port = he + 1;
    }
    size_t hn = (size_t)(he - hs);
    if (hn == 0 || hn >= sizeof p->host) {
        snprintf(err, errcap, "\"%s\": the host is empty or too long", s);
        return GW_ERR;
    }
    if (strcmp(port, "*") == 0) {
        p->port = -1;
    } else {
        char *end;
        long v = port[0] >= '0' && port[0] <= '9' ? strtol(port, &end, 10) : 0;
        if (v < 1 || v > 65535 || *end) {
            snprintf(err, errcap, "\"%s\": the port must be 1..65535 or *", s);
            return GW_ERR;
        }
        p->port = (int)v;
    }
    char host[256];
    memcpy(host, hs, hn);
    host[hn] = '\0';
    char *slash = strchr(host, '/');
    int bits = -1;
    if (slash) {
        char *end;
        *slash = '\0';
        long b = slash[1] >= '0' && slash[1] <= '9' ? strtol(slash + 1, &end, 10) : -1;
        if (b < 0 || *end) {
            snprintf(err, errcap, "\"%s\": the prefix length must be a number", s);
            return GW_ERR;
        }
        bits = (int)b;
    }
    if (ip_literal(host, p->net)) {
        int v4 = strchr(host, ':') == NULL;
        if ((v4 && s[0] == '[') || (!v4 && s[0] != '[')) {
            snprintf(err, errcap, "\"%s\": IPv6 addresses go in brackets, IPv4 ones do not", s);
            return GW_ERR;
        }
        int max = v4 ? 32 : 128;
        if (bits > max) {
            snprintf(err, errcap, "\"%s\": the prefix length is at most %d", s, max);
            return GW_ERR;
        }
        p->kind = GW_AGENT_PAT_CIDR;
        p->bits = (bits < 0 ? max : bits) + (v4 ? 96 : 0);
        return GW_OK;
    }
    if (slash || s[0] == '[') {
        snprintf(err, errcap, "\"%s\": not an IP address", s);
        return GW_ERR;
    }
    for (size_t i = 0; i < hn; i++) {
        char c = host[i];
        if (!(isalnum((unsigned char)c) || c == '-' || c == '.')) {
            snprintf(err, errcap, "\"%s\": a host name is letters, digits, '-' and '.'", s);
            return GW_ERR;
        }
        host[i] = (char)tolower((unsigned char)c);
    }
    p->kind = GW_AGENT_PAT_NAME;
    memcpy(p->host, host, hn + 1);
    return GW_OK;
}

static int pattern_match(const gw_agent_pattern *p, const gw_wsc_target *t)
{
    const gw_addr *a = &t->addr;
    if (a->is_unix)
        return p->kind == GW_AGENT_PAT_UNIX && fnmatch(p->path, a->path, FNM_PATHNAME) == 0;
    if (p->kind == GW_AGENT_PAT_UNIX || (p->port >= 0 && p->port != a->port))
        return 0;
    uint8_t ip[16];
    if (ip_literal(a->host, ip)) {
        if (p->kind != GW_AGENT_PAT_CIDR)
            return 0;
        /* An IPv6 pattern never matches an IPv4-mapped address by accident
         * of its prefix, nor the other way round. */
        if (is_v4_mapped(p->net) != is_v4_mapped(ip) && p->bits < 96)
            return 0;
        return prefix_match(ip, p->net, p->bits);
    }
    return p->kind == GW_AGENT_PAT_NAME && strcasecmp(p->host, a->host) == 0;
}

int gw_route_agent_allowed(const gw_route *r, const gw_wsc_target *t)
{
    if (!r->agents)
        return gw_addr_is_loopback(&t->addr);
    for (size_t i = 0; i < r->nagents; i++)
        if (pattern_match(&r->agents[i], t))
            return 1;
    return 0;
}

static int parse_agents(json_t *v, gw_route *r, const char *path, char *err, size_t errcap)
{
    if (!json_is_array(v)) {
        snprintf(err, errcap, "route %s: agent_upstreams must be an array of patterns", path);
        return GW_ERR;
    }
    r->agents = gw_calloc(json_array_size(v) + 1, sizeof *r->agents);
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e)
    {
        char pe[300];
        if (!json_is_string(e) ||
            gw_agent_pattern_parse(json_string_value(e), &r->agents[r->nagents], pe, sizeof pe) != GW_OK) {
            snprintf(err, errcap, "route %s: agent_upstreams[%zu]: %s", path, i,
                     json_is_string(e) ? pe : "must be a string");
            return GW_ERR;
        }
        r->nagents++;
    }
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

/* Route fields every kind takes (their meaning is the kind's). */
static const char *const common_fields[] = {"path",         "kind",         "idle_timeout", "connect_timeout",
                                            "read_timeout", "strip_prefix", NULL};

static int parse_route(json_t *o, gw_route *r, const gw_config *cfg, char *err, size_t errcap)
{
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
        for (size_t i = 0; common_fields[i]; i++)
            ok |= strcmp(key, common_fields[i]) == 0;
        for (size_t i = 0; i < nkinds; i++)
            ok |= kind_takes(kinds[i], key);
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
    r->kind = gw_kind_find(kind);
    if (!r->kind) {
        char names[128] = "";
        size_t pos = 0;
        for (size_t i = 0; i < nkinds && pos < sizeof names; i++)
            pos += (size_t)snprintf(names + pos, sizeof names - pos, "%s%s", i ? ", " : "", kinds[i]->name);
        snprintf(err, errcap, "route %s: kind \"%s\" is not available in this build (%s)", path, kind, names);
        return GW_ERR;
    }
    if (duration_field(o, "idle_timeout", 0, &r->idle_ms, path, err, errcap) != GW_OK ||
        duration_field(o, "connect_timeout", GW_CONNECT_TIMEOUT_MS, &r->connect_timeout_ms, path, err, errcap) !=
            GW_OK ||
        duration_field(o, "read_timeout", GW_READ_TIMEOUT_MS, &r->read_timeout_ms, path, err, errcap) != GW_OK)
        return GW_ERR;
    json_t *sp = json_object_get(o, "strip_prefix");
    if (sp && !json_is_boolean(sp)) {
        snprintf(err, errcap, "route %s: strip_prefix must be true or false", path);
        return GW_ERR;
    }
    r->strip_prefix = sp && json_is_true(sp);
    /* A field that belongs to another kind, and that kind says so. */
    json_object_foreach(o, key, val)
    {
        for (size_t i = 0; i < nkinds; i++) {
            if (kinds[i] != r->kind && (kinds[i]->flags & GW_KIND_OWN_FIELDS) && kind_takes(kinds[i], key) &&
                !kind_takes(r->kind, key)) {
                snprintf(err, errcap, "route %s: %s is for %s routes", path, key, kinds[i]->name);
                return GW_ERR;
            }
        }
    }
    return r->kind->parse ? r->kind->parse(o, r, cfg, err, errcap) : GW_OK;
}

int gw_route_parse_agents(json_t *o, gw_route *r, char *err, size_t errcap)
{
    json_t *ja = o ? json_object_get(o, "agent_upstreams") : NULL;
    return ja ? parse_agents(ja, r, r->path, err, errcap) : GW_OK;
}

int gw_route_parse_upstreams(json_t *o, gw_route *r, char *err, size_t errcap)
{
    const char *key, *path = r->path;
    json_t *val;
    json_t *ju = json_object_get(o, "upstream"), *jh = json_object_get(o, "user_header"),
           *jusers = json_object_get(o, "users");
    if (ju) {
        if (!json_is_string(ju)) {
            snprintf(err, errcap, "route %s: upstream must be a string", path);
            return GW_ERR;
        }
        r->upstream = gw_calloc(1, sizeof *r->upstream);
        if (parse_upstream_url(json_string_value(ju), NULL, r->upstream, err, errcap) != GW_OK)
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
            if (parse_upstream_url(json_string_value(val), key, &r->users[r->nusers], err, errcap) != GW_OK)
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
    t->routes = gw_calloc(nfile + nkinds, sizeof *t->routes);
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
    }
    json_decref(root);
    /* Each kind's default route, unless the file defines its path (or,
     * GW_KIND_DEFAULT_ONCE, any route of that kind). */
    for (size_t k = 0; k < nkinds; k++) {
        const gw_kind *kd = kinds[k];
        if (!kd->default_path)
            continue;
        int have = 0;
        for (size_t i = 0; i < t->n; i++)
            have |= strcmp(t->routes[i].path, kd->default_path) == 0 ||
                    ((kd->flags & GW_KIND_DEFAULT_ONCE) && t->routes[i].kind == kd);
        if (have)
            continue;
        gw_route *r = &t->routes[t->n++];
        r->path = gw_strdup(kd->default_path);
        r->label = gw_strdup(kd->default_path);
        r->kind = kd;
        r->connect_timeout_ms = GW_CONNECT_TIMEOUT_MS;
        r->read_timeout_ms = GW_READ_TIMEOUT_MS;
        if (kd->parse && kd->parse(NULL, r, cfg, err, errcap) != GW_OK) {
            free_table(t);
            return NULL;
        }
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

int gw_upstream_parse(const char *url, gw_upstream *u, char *err, size_t errcap)
{
    return parse_upstream_url(url, NULL, u, err, errcap);
}

void gw_upstream_free(gw_upstream *u)
{
    if (u)
        free_upstream(u);
}

/* status.c: GET /status and /status.json on the admin listener (status.h). */
#include "server/status.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/common.h"
#include "server/http_serve.h"
#include "server/state.h"
#include "store/store.h"

/* The page's files, compiled in from web/status/ (the Makefile makes this
 * object depend on them). */
#define GW_EMBED(sym, file)                                                                                           \
    __asm__(".section .rodata\n.global " #sym "\n" #sym ":\n.incbin \"" file "\"\n.global " #sym                     \
            "_end\n" #sym "_end:\n.byte 0\n.previous\n")
GW_EMBED(gw_status_html, "web/status/index.html");
GW_EMBED(gw_status_js, "web/status/status.js");
GW_EMBED(gw_status_css, "web/status/status.css");
GW_EMBED(gw_status_icon, "web/status/favicon.svg");
extern const char gw_status_html[], gw_status_html_end[], gw_status_js[], gw_status_js_end[], gw_status_css[],
    gw_status_css_end[], gw_status_icon[], gw_status_icon_end[];

#define MAX_CAUSES 24

/* One per-second series: the last GW_STATUS_RING deltas. */
typedef struct series_ring {
    uint32_t v[GW_STATUS_RING];
} series_ring;

/* Only worker 0 touches this (sample and serve run on its loop). */
static struct {
    uint64_t nd;          /* per-second deltas recorded */
    uint64_t last_wall_ms;
    int64_t prev_hs, prev_msgs;
    series_ring hs, msgs;
    size_t ncauses;
    struct {
        char name[48];
        int64_t prev;
        series_ring r;
    } causes[MAX_CAUSES];
} ST;

/* ================================ label values ============================== */

/* The value of label key in a Prometheus label string into out ("" when
 * absent); escapes undone. */
static void label_value(const char *labels, const char *key, char *out, size_t cap)
{
    size_t kn = strlen(key), o = 0;
    out[0] = '\0';
    for (const char *p = labels; *p;) {
        if (strncmp(p, key, kn) == 0 && p[kn] == '=' && p[kn + 1] == '"') {
            for (p += kn + 2; *p && *p != '"'; p++) {
                if (*p == '\\' && p[1])
                    p++;
                if (o + 1 < cap)
                    out[o++] = *p == 'n' && p[-1] == '\\' ? '\n' : *p;
            }
            out[o] = '\0';
            return;
        }
        /* next label: skip past this one's closing quote */
        const char *q = strchr(p, '"');
        if (!q)
            return;
        for (q++; *q && *q != '"'; q++)
            if (*q == '\\' && q[1])
                q++;
        p = *q ? q + 1 : q;
        if (*p == ',')
            p++;
    }
}

static void add_sum(const char *labels, int64_t v, void *arg)
{
    GW_UNUSED(labels);
    *(int64_t *)arg += v;
}

static int64_t family_sum(const char *name)
{
    int64_t s = 0;
    gw_metrics_each(name, add_sum, &s);
    return s;
}

/* Sums a family by one label into a JSON object {value: sum}. */
typedef struct by_label {
    const char *key;
    json_t *obj;
} by_label;

static void add_by_label(const char *labels, int64_t v, void *arg)
{
    by_label *b = arg;
    char name[256];
    label_value(labels, b->key, name, sizeof name);
    json_t *cur = json_object_get(b->obj, name);
    json_object_set_new(b->obj, name, json_integer((cur ? json_integer_value(cur) : 0) + v));
}

static json_t *family_by(const char *name, const char *key)
{
    by_label b = {key, json_object()};
    gw_metrics_each(name, add_by_label, &b);
    return b.obj;
}

/* ================================== rings =================================== */

static void ring_put(series_ring *r, int64_t delta)
{
    r->v[ST.nd % GW_STATUS_RING] = (uint32_t)(delta < 0 ? 0 : delta > UINT32_MAX ? UINT32_MAX : delta);
}

static void sum_cause(const char *labels, int64_t v, void *arg)
{
    int64_t *sums = arg;
    char cause[48];
    label_value(labels, "cause", cause, sizeof cause);
    size_t i = 0;
    while (i < ST.ncauses && strcmp(ST.causes[i].name, cause) != 0)
        i++;
    if (i == ST.ncauses) {
        if (ST.ncauses == MAX_CAUSES)
            return;
        snprintf(ST.causes[ST.ncauses++].name, sizeof ST.causes[0].name, "%s", cause); /* prev 0, ring zeroed */
    }
    sums[i] += v;
}

void gw_status_sample(void)
{
    int64_t hs = family_sum("wsgate_ws_handshakes_total"), msgs = family_sum("wsgate_ws_messages_total");
    int64_t sums[MAX_CAUSES] = {0};
    gw_metrics_each("wsgate_ws_closes_total", sum_cause, sums);
    /* Counters start at 0 with the process: the first second holds
     * everything since the start. */
    ring_put(&ST.hs, hs - ST.prev_hs);
    ring_put(&ST.msgs, msgs - ST.prev_msgs);
    for (size_t i = 0; i < ST.ncauses; i++) {
        ring_put(&ST.causes[i].r, sums[i] - ST.causes[i].prev);
        ST.causes[i].prev = sums[i];
    }
    ST.nd++;
    ST.prev_hs = hs;
    ST.prev_msgs = msgs;
    ST.last_wall_ms = gw_wall_ms();
}

/* The ring's values, oldest first (the seconds sampled so far, at most 15 min). */
static json_t *ring_json(const series_ring *r)
{
    json_t *a = json_array();
    uint64_t from = ST.nd > GW_STATUS_RING ? ST.nd - GW_STATUS_RING : 0;
    for (uint64_t k = from; k < ST.nd; k++)
        json_array_append_new(a, json_integer(r->v[k % GW_STATUS_RING]));
    return a;
}

/* ================================= snapshot ================================= */

static const char *redacted(const char *secret) { return secret[0] ? "(redacted)" : ""; }

static json_t *status_config(void)
{
    const gw_config *c = &gw_srv.cfg;
    char pub[300], adm[300] = "";
    gw_addr_format(&c->public_addr, pub, sizeof pub);
    if (c->admin_addr.set)
        gw_addr_format(&c->admin_addr, adm, sizeof adm);
    json_t *j = json_object();
    json_object_set_new(j, "public_addr", json_string(pub));
    json_object_set_new(j, "admin_addr", json_string(adm));
    json_object_set_new(j, "tls", json_boolean(gw_srv.tls_ctx != NULL));
    json_object_set_new(j, "tls_cert_path", json_string(c->tls_cert_path));
    json_object_set_new(j, "workers", json_integer(gw_srv.nworkers));
    json_object_set_new(j, "max_connections", json_integer((json_int_t)c->max_connections));
    json_object_set_new(j, "admin_max_connections", json_integer((json_int_t)c->admin_max_connections));
    json_object_set_new(j, "routes_file", json_string(c->routes_file));
    json_object_set_new(j, "shutdown_timeout_ms", json_integer((json_int_t)c->shutdown_timeout_ms));
    json_object_set_new(j, "drain_delay_ms", json_integer((json_int_t)c->drain_delay_ms));
    json_object_set_new(j, "ws_ping_interval_ms", json_integer((json_int_t)c->ws_ping_interval_ms));
    json_object_set_new(j, "ws_max_message_bytes", json_integer((json_int_t)c->ws_max_message_bytes));
    json_object_set_new(j, "ws_deflate", json_boolean(c->ws_deflate));
    json_object_set_new(j, "push_queue_limit", json_integer((json_int_t)c->push_queue_limit));
    json_object_set_new(j, "redis_master_addr", json_string(c->redis_master_addr));
    json_object_set_new(j, "upgrade_socket", json_string(c->upgrade_socket));
    json_object_set_new(j, "service_name", json_string(c->service_name));
    /* Secrets: whether they are set, never their value. */
    json_object_set_new(j, "admin_token", json_string(redacted(c->admin_token)));
    json_object_set_new(j, "redis_password", json_string(redacted(c->redis_password)));
    json_object_set_new(j, "agent_secret", json_string(redacted(c->agent_secret)));
    return j;
}

static json_t *workers_json(void)
{
    json_t *a = json_array();
    for (int i = 0; i < gw_srv.nworkers; i++) {
        gw_worker *w = &gw_srv.workers[i];
        json_t *o = json_object();
        json_object_set_new(o, "id", json_integer(i));
        json_object_set_new(o, "clients", json_integer(atomic_load_explicit(&w->st_clients, memory_order_relaxed)));
        json_object_set_new(o, "cpu_percent",
                            json_real(atomic_load_explicit(&w->st_cpu_pm, memory_order_relaxed) / 10.0));
        json_array_append_new(a, o);
    }
    return a;
}

static json_t *status_snapshot(void)
{
    json_t *j = json_object();
    uint64_t now = gw_wall_ms();
    json_object_set_new(j, "version", json_string(GW_VERSION));
    json_object_set_new(j, "pid", json_integer(getpid()));
    json_object_set_new(j, "now_ms", json_integer((json_int_t)now));
    json_object_set_new(j, "started_ms", json_integer((json_int_t)gw_srv.start_wall_ms));
    json_object_set_new(j, "uptime_s", json_integer((json_int_t)((gw_mono_ms() - gw_srv.start_mono_ms) / 1000)));
    json_object_set_new(j, "draining", json_boolean(atomic_load(&gw_srv.draining)));
    json_object_set_new(j, "config", status_config());

    json_t *conns = json_object();
    json_object_set_new(conns, "public", json_integer(gw_metric_value(gw_srv.m_conns_public)));
    json_object_set_new(conns, "admin", json_integer(gw_metric_value(gw_srv.m_conns_admin)));
    json_object_set_new(conns, "websockets", json_integer(gw_metric_value(gw_srv.m_ws_connections)));
    json_object_set_new(conns, "by_route", family_by("wsgate_ws_connections", "route"));
    json_object_set_new(j, "connections", conns);

    json_t *totals = json_object();
    json_object_set_new(totals, "handshakes", family_by("wsgate_ws_handshakes_total", "result"));
    json_object_set_new(totals, "closes", family_by("wsgate_ws_closes_total", "cause"));
    json_object_set_new(totals, "messages", json_integer(family_sum("wsgate_ws_messages_total")));
    json_object_set_new(j, "totals", totals);

    json_t *series = json_object();
    json_object_set_new(series, "interval_s", json_integer(1));
    json_object_set_new(series, "capacity", json_integer(GW_STATUS_RING));
    json_object_set_new(series, "end_ms", json_integer((json_int_t)ST.last_wall_ms));
    json_object_set_new(series, "handshakes", ring_json(&ST.hs));
    json_object_set_new(series, "messages", ring_json(&ST.msgs));
    json_t *closes = json_object();
    for (size_t i = 0; i < ST.ncauses; i++)
        json_object_set_new(closes, ST.causes[i].name, ring_json(&ST.causes[i].r));
    json_object_set_new(series, "closes", closes);
    json_object_set_new(j, "series", series);

    json_t *push = json_object();
    json_object_set_new(push, "subscribers", json_integer(family_sum("wsgate_push_subscribers")));
    json_object_set_new(push, "deliveries", json_integer(family_sum("wsgate_push_deliveries_total")));
    json_object_set_new(push, "overflows", json_integer(family_sum("wsgate_push_overflows_total")));
    json_object_set_new(j, "push", push);

    json_t *be = json_object();
    int healthy = gw_store_current_healthy();
    json_object_set_new(be, "kind", json_string(gw_store_current_name()));
    json_object_set_new(be, "healthy", json_boolean(healthy));
    json_object_set_new(be, "reason", healthy ? json_null() : json_string(gw_store_current_reason()));
    json_object_set_new(j, "backend", be);

    json_t *tls = json_object();
    json_object_set_new(tls, "enabled", json_boolean(gw_srv.tls_ctx != NULL));
    if (gw_srv.tls_ctx) {
        pthread_mutex_lock(&gw_srv.tls_mu);
        json_object_set_new(tls, "serial", json_string(gw_srv.tls_serial));
        json_object_set_new(tls, "not_after", json_string(gw_srv.tls_not_after));
        json_object_set_new(tls, "loaded_ms", json_integer((json_int_t)gw_srv.tls_loaded_wall_ms));
        pthread_mutex_unlock(&gw_srv.tls_mu);
        json_object_set_new(tls, "last_reload_ok", json_boolean(gw_metric_value(gw_srv.m_tls_last_ok) != 0));
    }
    json_object_set_new(j, "tls", tls);

    gw_route_table *t = gw_server_routes();
    json_t *routes = json_object();
    json_object_set_new(routes, "count", json_integer((json_int_t)t->n));
    json_object_set_new(routes, "generation", json_integer((json_int_t)t->generation));
    gw_routes_unref(t);
    json_object_set_new(j, "routes", routes);
    json_object_set_new(j, "workers", workers_json());
    return j;
}

/* ================================ endpoints ================================= */

/* Everything from this origin only; no inline script or style. */
#define PAGE_HEADERS                                                                                                  \
    "Content-Security-Policy: default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "      \
    "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'\r\n"                                \
    "X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n"

static int get_json(gw_client *c, gw_http_req *req, const uint8_t *body, size_t n, const gw_req_ids *ids)
{
    GW_UNUSED(body);
    GW_UNUSED(n);
    gw_http_respond_json(c, req, ids, 200, status_snapshot(), PAGE_HEADERS);
    return GW_OK;
}

static int get_page(gw_client *c, gw_http_req *req, const uint8_t *body, size_t n, const gw_req_ids *ids)
{
    GW_UNUSED(body);
    GW_UNUSED(n);
    static const struct {
        const char *path, *ctype, *start, *end;
    } files[] = {
        {"/status", "text/html; charset=utf-8", gw_status_html, gw_status_html_end},
        {"/status/", "text/html; charset=utf-8", gw_status_html, gw_status_html_end},
        {"/status/status.js", "text/javascript; charset=utf-8", gw_status_js, gw_status_js_end},
        {"/status/status.css", "text/css; charset=utf-8", gw_status_css, gw_status_css_end},
        {"/status/favicon.svg", "image/svg+xml", gw_status_icon, gw_status_icon_end},
    };
    for (size_t i = 0; i < GW_ARRAY_LEN(files); i++) {
        if (gw_str_eq(req->path, files[i].path)) {
            gw_http_respond(c, req, ids, 200, files[i].ctype, files[i].start, (size_t)(files[i].end - files[i].start),
                            PAGE_HEADERS);
            return GW_OK;
        }
    }
    gw_http_error_ids(c, 404, "not_found", "no such status file", req, NULL, ids);
    return GW_OK;
}

void gw_status_init(void)
{
    /* The page and its files carry no data: open. The data needs the admin
     * token when one is set (as the write APIs). */
    gw_http_register(GW_LISTENER_ADMIN, "GET", "/status", 0, get_page);
    gw_http_register(GW_LISTENER_ADMIN, "GET", "/status/", 0, get_page);
    gw_http_register(GW_LISTENER_ADMIN, "GET", "/status.json", 1, get_json);
}

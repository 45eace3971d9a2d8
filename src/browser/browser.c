/* browser.c: the browser route kind (DESIGN.md section 7): a gateway in
 * front of a browsers-as-a-service control plane that sends session-bound
 * requests straight to the VM hosting the session, and falls back to the
 * control plane only when that VM says the browser is gone.
 *
 *   /browsers/{id}/{sub}{rest}  with sub allowlisted, a cached route for id and
 *                               the Authorization that taught the route:
 *       -> {base_url}/{sub}{rest}, Authorization removed, jwt=<route jwt> added
 *          to the query unless it has one (HTTP through the proxy, WebSocket
 *          upgrades through the relay)
 *   anything else under the route -> the control plane, as the proxy kind would
 *
 * Routes are learned from the control plane's 2xx JSON answers (learn.c;
 * bodies up to LEARN_MAX are looked at while they stream on, larger ones
 * pass unlearned) to the create request (POST to the route's path: any one
 * session) and to requests whose path names a session (that session only),
 * at most LEARN_PER_ANSWER per answer, from the top level or one member
 * down only, so an answer echoing a client's JSON cannot route another
 * session and one answer cannot flush the cache; and evicted on its 2xx answer to DELETE /browsers/{id}.
 * A direct GET whose (sub, rest) is in the fallback registry and that the VM
 * answers 404 with JSON code "browser_gone" (the body, at most GONE_MAX, is
 * held to look at it), or any direct GET the VM answers 401/403 after the
 * gateway added the route's jwt (a stale token), evicts the route and is
 * sent once to the control plane, Authorization restored, without jwt; that
 * answer is the client's whatever it is. Everything else is returned as the
 * VM gave it.
 *
 * Trust model: the control plane is trusted (it is configured by the
 * operator and its answers decide where sessions live), so the gateway dials
 * the hosts its base_url values name. Still, a learned base_url must be
 * http(s) or ws(s) with a host and no userinfo, query or fragment (never
 * unix: or another scheme), and a session id must be one plain path segment;
 * a learned route only ever serves requests for its own session id.
 * Session ids are not secrets, and a direct request bypasses the control
 * plane's authorization while the gateway adds the session's jwt: so a route
 * is bound to the SHA-256 of the Authorization of the request whose answer
 * taught it, and only a request presenting the same Authorization (compared
 * with CRYPTO_memcmp) goes direct; everyone else goes to the control plane
 * (reason credential_mismatch). A route taught without Authorization never
 * goes direct. */
#include "browser/browser.h"

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "browser/learn.h"
#include "browser/route_cache.h"
#include "core/alloc.h"
#include "core/common.h"
#include "http/ws_handshake.h"
#include "log/log.h"
#include "proxy/proxy.h"
#include "server/state.h"

#define LEARN_MAX (1024 * 1024) /* control-plane JSON bodies looked at for routes */
#define GONE_MAX (64 * 1024)    /* a VM's 404 (or 401/403) body held to decide the fallback */
#define CACHE_DEFAULT 10000
#define CACHE_LIMIT 1000000
#define SUB_MAX 64
#define SUFFIX_MAX 256
#define LEARN_PER_ANSWER 1 /* routes one control-plane answer may teach */

typedef struct bfallback {
    char sub[SUB_MAX + 1];
    char suffix[SUFFIX_MAX + 1]; /* the path after /{sub}, matched exactly */
} bfallback;

/* One cache per route path, for the life of the process: a reload keeps
 * what was learned (its new cache_size applies). */
typedef struct bshared {
    struct bshared *next;
    char *label;
    gw_bcache *cache;
} bshared;

static pthread_mutex_t shared_mu = PTHREAD_MUTEX_INITIALIZER;
static bshared *shared_list;

typedef struct bsettings {
    char **subs; /* the allowlist (none: direct routing off) */
    size_t nsubs;
    bfallback *fb;
    size_t nfb;
    size_t cache_size;
    gw_bcache *cache;
    gw_metric *learned, *ev_lru, *ev_deleted, *ev_gone, *ev_stale;
} bsettings;

enum { VIA_CP, VIA_DIRECT };
/* What an answer may teach: nothing, the route of the session it created
 * (POST to the route's path itself), or the route of the session its
 * request's path names (/browsers/{id}...), that id only. */
enum { LEARN_NONE, LEARN_CREATE, LEARN_SESSION };

/* One request's view, for the proxy's hooks (freed by done). */
typedef struct bx {
    const gw_route *route; /* alive while the exchange holds the table */
    bsettings *b;
    char id[GW_BROUTE_ID_MAX + 1];
    char corr[72];
    const char *reason;   /* why it went where it went */
    const char *fallback; /* NULL, "browser_gone" or "stale_jwt" */
    uint8_t via;
    uint8_t eligible;  /* (sub, rest) in the fallback registry */
    uint8_t jwt_added; /* the gateway put the route's jwt in the query */
    uint8_t is_get, is_head, delete_session;
    uint8_t learn;    /* LEARN_* */
    uint8_t has_cred; /* the request had one Authorization: cred is its digest */
    uint8_t cred[GW_BROUTE_CRED_LEN];
    int learned;
    uint64_t started_ms;
    gw_loop *loop;
} bx;

/* ================================ metrics =================================== */

static gw_metric *bmetric(const char *name, gw_metric_type type, const char *help, const gw_route *r, const char *more)
{
    char route[256], labels[512];
    gw_metrics_label_escape(r->label, route, sizeof route);
    snprintf(labels, sizeof labels, "route=\"%s\"%s%s", route, more ? "," : "", more ? more : "");
    return gw_metric_get(name, type, help, labels);
}

#define BROWSER_REQUESTS_HELP                                                                                          \
    "Requests on browser routes by where they went (direct to the VM, to the control plane, fallback to the "         \
    "control plane after the VM) and why."

static void count_request(const gw_route *r, const char *via, const char *reason)
{
    char more[128];
    snprintf(more, sizeof more, "via=\"%s\",reason=\"%s\"", via, reason);
    gw_counter_inc(bmetric("wsgate_browser_requests_total", GW_METRIC_COUNTER, BROWSER_REQUESTS_HELP, r, more));
}

static gw_metric *eviction_metric(const gw_route *r, const char *reason)
{
    char more[64];
    snprintf(more, sizeof more, "reason=\"%s\"", reason);
    return bmetric("wsgate_browser_route_evictions_total", GW_METRIC_COUNTER,
                   "Browser session routes dropped from the cache, by reason.", r, more);
}

static void evict(const gw_route *r, bsettings *b, const char *id, gw_metric *m, const char *corr, const char *reason)
{
    if (!gw_bcache_evict(b->cache, id, strlen(id)))
        return;
    gw_counter_inc(m);
    gw_log_line *l = gw_log_begin(GW_LOG_INFO, "browser route evicted", corr);
    if (l) {
        gw_log_str(l, "route", r->label, 0);
        gw_log_str(l, "session_id", id, 0);
        gw_log_str(l, "reason", reason, 0);
        gw_log_end(l);
    }
}

/* ================================ learning ================================== */

typedef struct learn_ctx {
    bx *x;
    size_t evicted;
} learn_ctx;

static void learn_one(void *ud, const char *id, const char *base_url, const char *jwt)
{
    learn_ctx *lc = ud;
    lc->evicted += gw_bcache_put(lc->x->b->cache, id, base_url, jwt, lc->x->has_cred ? lc->x->cred : NULL);
    lc->x->learned++;
    gw_counter_inc(lc->x->b->learned);
    gw_log_line *l = gw_log_begin(GW_LOG_DEBUG, "browser route learned", lc->x->corr);
    if (l) {
        gw_log_str(l, "route", lc->x->route->label, 0);
        gw_log_str(l, "session_id", id, 0);
        gw_log_str(l, "base_url", base_url, 0);
        gw_log_bool(l, "credential_bound", lc->x->has_cred, 0);
        gw_log_end(l);
    }
}

static int has_json_type(const gw_http_resp *resp)
{
    const gw_http_header *ct = gw_h1_find_header(resp->headers, resp->num_headers, "Content-Type");
    if (!ct)
        return 0;
    for (size_t i = 0; i + 4 <= ct->value.n; i++)
        if (strncasecmp(ct->value.p + i, "json", 4) == 0)
            return 1;
    return 0;
}

/* ================================ hooks ===================================== */

static int hook_head(void *ud, int status, const gw_http_resp *resp, int fallen_back, size_t *limit)
{
    bx *x = ud;
    if (x->via == VIA_DIRECT && !fallen_back) {
        /* Only a bodiless GET has a fallback (the proxy builds it then). */
        if (x->is_get && ((status == 404 && x->eligible) || ((status == 401 || status == 403) && x->jwt_added))) {
            *limit = GONE_MAX;
            return GW_PROXY_HOLD;
        }
        return GW_PROXY_PASS;
    }
    if (status < 200 || status > 299)
        return GW_PROXY_PASS;
    if (x->delete_session)
        evict(x->route, x->b, x->id, x->b->ev_deleted, x->corr, "deleted");
    if (x->learn != LEARN_NONE && !x->is_head && has_json_type(resp)) {
        *limit = LEARN_MAX;
        return GW_PROXY_TEE;
    }
    return GW_PROXY_PASS;
}

/* 1 when body is a JSON object whose "code" is "browser_gone". */
static int browser_gone(const uint8_t *p, size_t n)
{
    if (!p || !n)
        return 0;
    json_error_t e;
    json_t *j = json_loadb((const char *)p, n, 0, &e);
    if (!j)
        return 0;
    json_t *code = json_object_get(j, "code");
    int gone =
        json_is_string(code) && strcmp(json_string_value(code), "browser_gone") == 0 && json_string_length(code) == 12;
    json_decref(j);
    return gone;
}

static int hook_body(void *ud, int status, const uint8_t *p, size_t n, int fallen_back)
{
    bx *x = ud;
    if (x->via == VIA_DIRECT && !fallen_back) {
        /* A held answer of the VM: fall back or pass it on. */
        if (status == 404 && browser_gone(p, n)) {
            x->fallback = "browser_gone";
            evict(x->route, x->b, x->id, x->b->ev_gone, x->corr, "browser_gone");
        } else if ((status == 401 || status == 403) && x->jwt_added) {
            x->fallback = "stale_jwt";
            evict(x->route, x->b, x->id, x->b->ev_stale, x->corr, "stale_jwt");
        } else {
            return 0;
        }
        count_request(x->route, "fallback", x->fallback);
        return 1;
    }
    if (!p) {
        gw_log_line *l = gw_log_begin(GW_LOG_INFO, "browser learn skipped", x->corr);
        if (l) {
            gw_log_str(l, "route", x->route->label, 0);
            gw_log_str(l, "reason", "body_too_large", 0);
            gw_log_int(l, "limit", LEARN_MAX, 0);
            gw_log_end(l);
        }
        return 0;
    }
    learn_ctx lc = {.x = x};
    gw_blearn_json((const char *)p, n, x->learn == LEARN_CREATE ? NULL : x->id, LEARN_PER_ANSWER, learn_one, &lc);
    if (lc.evicted)
        gw_counter_add(x->b->ev_lru, lc.evicted);
    return 0;
}

static void hook_done(void *ud, int status, const char *outcome)
{
    bx *x = ud;
    gw_log_line *l = gw_log_begin(GW_LOG_INFO, "browser request", x->corr);
    if (l) {
        gw_log_str(l, "route", x->route->label, 0);
        gw_log_str(l, "route_taken", x->fallback ? "fallback" : x->via == VIA_DIRECT ? "direct" : "control_plane", 0);
        gw_log_str(l, "reason", x->fallback ? x->fallback : x->reason, 0);
        if (x->id[0])
            gw_log_str(l, "session_id", x->id, 0);
        gw_log_int(l, "status", status, 0);
        gw_log_str(l, "outcome", outcome, 0);
        gw_log_int(l, "learned", x->learned, GW_LOG_JSON_ONLY);
        gw_log_int(l, "dur_ms", (int64_t)(gw_loop_now(x->loop) - x->started_ms), 0);
        gw_log_end(l);
    }
    gw_free(x);
}

/* ================================ serving =================================== */

typedef struct bpath {
    gw_str id, sub, rest; /* rest: after /{sub}, "" or starting with '/' */
} bpath;

/* Splits the path under the route's prefix (r->path ends in '/'). */
static void split_path(const gw_route *r, const gw_http_req *req, bpath *bp)
{
    memset(bp, 0, sizeof *bp);
    size_t pl = strlen(r->path);
    if (req->path.n <= pl)
        return;
    const char *p = req->path.p + pl, *end = req->path.p + req->path.n;
    const char *s1 = memchr(p, '/', (size_t)(end - p));
    bp->id = gw_str_make(p, (size_t)((s1 ? s1 : end) - p));
    if (!s1)
        return;
    const char *q = s1 + 1;
    const char *s2 = memchr(q, '/', (size_t)(end - q));
    bp->sub = gw_str_make(q, (size_t)((s2 ? s2 : end) - q));
    bp->rest = s2 ? gw_str_make(s2, (size_t)(end - s2)) : gw_str_make(end, 0);
}

static int allowlisted(const bsettings *b, gw_str sub)
{
    for (size_t i = 0; i < b->nsubs; i++)
        if (strlen(b->subs[i]) == sub.n && memcmp(b->subs[i], sub.p, sub.n) == 0)
            return 1;
    return 0;
}

static int eligible(const bsettings *b, gw_str sub, gw_str rest)
{
    for (size_t i = 0; i < b->nfb; i++)
        if (strlen(b->fb[i].sub) == sub.n && memcmp(b->fb[i].sub, sub.p, sub.n) == 0 &&
            strlen(b->fb[i].suffix) == rest.n && memcmp(b->fb[i].suffix, rest.p, rest.n) == 0)
            return 1;
    return 0;
}

/* The request target toward the VM: {base path}/{sub}{rest}?{query}, with
 * jwt=<jwt> appended unless the query has a jwt already (*added says). */
static char *vm_target(const gw_wsc_target *t, const bpath *bp, const gw_http_req *req, const char *jwt, int *added)
{
    const char *v;
    size_t vn;
    *added = !gw_blearn_query_param(req->query.p, req->query.n, "jwt", &v, &vn);
    const char *base = t->path;
    size_t bl = strlen(base);
    if (bl && base[bl - 1] == '/')
        bl--;
    size_t cap = bl + 1 + bp->sub.n + bp->rest.n + 1 + req->query.n + 5 + strlen(jwt) + 2;
    char *out = gw_malloc(cap);
    snprintf(out, cap, "%.*s/%.*s%.*s%s%.*s%s%s%s", (int)bl, base, (int)bp->sub.n, bp->sub.p, (int)bp->rest.n,
             bp->rest.p, req->query.n || *added ? "?" : "", (int)req->query.n, req->query.p,
             req->query.n && *added ? "&" : "", *added ? "jwt=" : "", *added ? jwt : "");
    return out;
}

/* The digest of the request's Authorization (SHA-256 of its value) into
 * out: 1 when it has exactly one, else 0 (none, or several: no credential
 * to bind a route to or to match one). */
static int auth_digest(const gw_http_req *req, uint8_t *out)
{
    const gw_http_header *auth = NULL;
    for (size_t i = 0; i < req->num_headers; i++)
        if (gw_str_ieq(req->headers[i].name, "Authorization")) {
            if (auth)
                return 0;
            auth = &req->headers[i];
        }
    if (!auth)
        return 0;
    SHA256((const unsigned char *)auth->value.p, auth->value.n, out);
    return 1;
}

/* 1 when req is the create request: POST to the route's path itself. */
static int is_create(const gw_route *r, const gw_http_req *req)
{
    size_t pl = strlen(r->path); /* ends in '/' */
    return gw_str_eq(req->method, "POST") && (req->path.n == pl || req->path.n == pl - 1) &&
           memcmp(req->path.p, r->path, req->path.n) == 0;
}

static void answer_unavailable(gw_client *c, gw_http_req *req, const gw_route *r, const gw_req_ids *ids)
{
    gw_counter_inc(gw_metric_handshake(r, "upstream_unavailable"));
    gw_http_error_ids(c, 502, "upstream_unavailable", "the upstream could not be reached", req, NULL, ids);
}

static void log_ws(const gw_route *r, const char *corr, const char *via, const char *reason, const gw_str *id)
{
    gw_log_line *l = gw_log_begin(GW_LOG_INFO, "browser request", corr);
    if (l) {
        gw_log_str(l, "route", r->label, 0);
        gw_log_str(l, "route_taken", via, 0);
        gw_log_str(l, "reason", reason, 0);
        if (id->n) {
            char sid[GW_BROUTE_ID_MAX + 1];
            snprintf(sid, sizeof sid, "%.*s", (int)GW_MIN(id->n, (size_t)GW_BROUTE_ID_MAX), id->p);
            gw_log_str(l, "session_id", sid, 0);
        }
        gw_log_bool(l, "websocket", 1, 0);
        gw_log_end(l);
    }
}

/* The proxy takes the exchange (and the hooks' state, freed by done even
 * when it refuses at once: a body framing the HTTP phase let through). */
static int start_proxy(gw_client *c, gw_http_req *req, const gw_route *r, gw_route_table *table, const gw_req_ids *ids,
                       const gw_upstream *u, const gw_proxy_opts *o, gw_http_req *orig)
{
    if (gw_proxy_start_ex(c, req, r, table, ids, u, o) == GW_OK)
        return GW_DONE;
    gw_http_error_ids(c, 400, "bad_request", "the request body's framing is invalid", orig, NULL, ids);
    return GW_OK;
}

static int browser_serve(gw_client *c, gw_http_req *req, const gw_route *r, gw_route_table *table,
                         const gw_req_ids *ids)
{
    bsettings *b = r->kind_data;
    int upgrade = gw_ws_is_upgrade(req);
    bpath bp;
    split_path(r, req, &bp);
    int id_ok = gw_blearn_id_ok(bp.id.p, bp.id.n);
    const char *reason = "not_session";
    char base[GW_BROUTE_URL_MAX + 1], jwt[GW_BROUTE_JWT_MAX + 1];
    uint8_t cred[GW_BROUTE_CRED_LEN], route_cred[GW_BROUTE_CRED_LEN];
    int has_cred = auth_digest(req, cred), route_has_cred = 0;
    gw_upstream vm;
    memset(&vm, 0, sizeof vm);
    int direct = 0;
    if (id_ok && bp.sub.n) {
        if (!allowlisted(b, bp.sub))
            reason = "not_allowlisted";
        else if (gw_h1_path_needs_normalizing(bp.rest))
            reason = "not_normalized";
        else if (!gw_bcache_get(b->cache, bp.id.p, bp.id.n, base, jwt, route_cred, &route_has_cred))
            reason = "no_route";
        else if (!has_cred || !route_has_cred || CRYPTO_memcmp(cred, route_cred, sizeof cred) != 0)
            reason = "credential_mismatch"; /* not the credential the control plane accepted for it */
        else {
            char err[256];
            if (gw_wsc_parse_url(base, &vm.target, err, sizeof err) != GW_OK || vm.target.addr.is_unix)
                reason = "bad_route"; /* checked when learned: not expected */
            else if (vm.target.tls && !upgrade)
                reason = "vm_https"; /* the pooled HTTP client speaks plain HTTP only */
            else
                direct = 1;
        }
    }
    c->close_after = !gw_http_keep_alive(req) || atomic_load_explicit(&gw_srv.draining, memory_order_relaxed);
    if (!direct) {
        count_request(r, "control_plane", reason);
        if (upgrade) {
            log_ws(r, ids->corr, "control_plane", reason, &bp.id);
            if (gw_relay_ws_start(c, req, r, table, ids, NULL) == GW_OK)
                return GW_DONE;
            answer_unavailable(c, req, r, ids);
            return GW_OK;
        }
        bx *x = gw_calloc(1, sizeof *x);
        x->route = r;
        x->b = b;
        x->via = VIA_CP;
        x->reason = reason;
        x->is_head = gw_str_eq(req->method, "HEAD");
        x->loop = c->w->loop;
        x->started_ms = gw_loop_now(c->w->loop);
        snprintf(x->corr, sizeof x->corr, "%s", ids->corr);
        x->has_cred = (uint8_t)has_cred;
        memcpy(x->cred, cred, sizeof cred);
        if (id_ok) {
            x->delete_session = !bp.sub.n && gw_str_eq(req->method, "DELETE");
            x->learn = x->delete_session ? LEARN_NONE : LEARN_SESSION; /* a deleted session stays evicted */
            snprintf(x->id, sizeof x->id, "%.*s", (int)bp.id.n, bp.id.p);
        } else if (is_create(r, req)) {
            x->learn = LEARN_CREATE;
        }
        gw_proxy_opts o = {.hooks = {.head = hook_head, .body = hook_body, .done = hook_done, .ud = x}};
        return start_proxy(c, req, r, table, ids, r->upstream, &o, req);
    }

    /* Direct to the VM: the client's end-to-end headers minus Authorization
     * (the VM takes the route's jwt; the client's token is the control
     * plane's). */
    count_request(r, "direct", "cached_route");
    gw_http_header *keep = gw_malloc((req->num_headers ? req->num_headers : 1) * sizeof *keep);
    size_t k = 0;
    for (size_t i = 0; i < req->num_headers; i++)
        if (!gw_str_ieq(req->headers[i].name, "Authorization"))
            keep[k++] = req->headers[i];
    gw_http_req to_vm = *req;
    to_vm.headers = keep;
    to_vm.num_headers = k;
    int added = 0;
    char *path = vm_target(&vm.target, &bp, req, jwt, &added);
    vm.url = base;
    int rc;
    if (upgrade) {
        log_ws(r, ids->corr, "direct", "cached_route", &bp.id);
        gw_relay_opts ro = {.target = &vm.target, .path = path, .upstream_url = base};
        rc = gw_relay_ws_start(c, &to_vm, r, table, ids, &ro) == GW_OK ? GW_DONE : GW_OK;
        if (rc == GW_OK)
            answer_unavailable(c, req, r, ids);
    } else {
        bx *x = gw_calloc(1, sizeof *x);
        x->route = r;
        x->b = b;
        x->via = VIA_DIRECT;
        x->reason = "cached_route";
        /* Only a GET without a body can be sent again (the proxy keeps no
         * copy of a body). */
        gw_h1_body body;
        int st;
        const char *why;
        x->is_get = gw_str_eq(req->method, "GET") && gw_h1_request_body(req, &body, &st, &why) == GW_OK &&
                    !body.chunked && !body.content_length;
        x->is_head = gw_str_eq(req->method, "HEAD");
        x->eligible = (uint8_t)eligible(b, bp.sub, bp.rest);
        x->jwt_added = (uint8_t)added;
        x->learn = LEARN_SESSION; /* from the fallback's answer: this session only */
        x->has_cred = (uint8_t)has_cred;
        memcpy(x->cred, cred, sizeof cred);
        x->loop = c->w->loop;
        x->started_ms = gw_loop_now(c->w->loop);
        snprintf(x->id, sizeof x->id, "%.*s", (int)bp.id.n, bp.id.p);
        snprintf(x->corr, sizeof x->corr, "%s", ids->corr);
        gw_proxy_opts o = {.path = path,
                           .fallback = x->is_get ? r->upstream : NULL,
                           .fallback_req = req,
                           .hooks = {.head = hook_head, .body = hook_body, .done = hook_done, .ud = x}};
        rc = start_proxy(c, &to_vm, r, table, ids, &vm, &o, req);
    }
    gw_free(path);
    gw_free(keep);
    return rc;
}

/* ================================ settings ================================== */

static int segment_ok(const char *s, size_t max)
{
    size_t n = strlen(s);
    return gw_blearn_id_ok(s, n) && n <= max;
}

static void settings_free(void *p)
{
    bsettings *b = p;
    if (!b)
        return;
    for (size_t i = 0; i < b->nsubs; i++)
        gw_free(b->subs[i]);
    gw_free(b->subs);
    gw_free(b->fb);
    gw_free(b);
}

static gw_bcache *shared_cache(const char *label, size_t cap, size_t *evicted)
{
    pthread_mutex_lock(&shared_mu);
    bshared *s = shared_list;
    while (s && strcmp(s->label, label) != 0)
        s = s->next;
    if (!s) {
        s = gw_calloc(1, sizeof *s);
        s->label = gw_strdup(label);
        s->cache = gw_bcache_new(cap);
        s->next = shared_list;
        shared_list = s;
        *evicted = 0;
    } else {
        *evicted = gw_bcache_set_cap(s->cache, cap);
    }
    pthread_mutex_unlock(&shared_mu);
    return s->cache;
}

static int parse_fail(char *err, size_t errcap, const gw_route *r, const char *what)
{
    snprintf(err, errcap, "route %s: %s", r->label, what);
    return GW_ERR;
}

static int browser_parse(json_t *o, gw_route *r, const gw_config *cfg, char *err, size_t errcap)
{
    GW_UNUSED(cfg);
    if (!o)
        return parse_fail(err, errcap, r, "a browser route needs control_plane");
    json_t *cp = json_object_get(o, "control_plane");
    if (!json_is_string(cp))
        return parse_fail(err, errcap, r, "control_plane (the control plane's URL) is required");
    r->upstream = gw_calloc(1, sizeof *r->upstream);
    char e[300];
    if (gw_upstream_parse(json_string_value(cp), r->upstream, e, sizeof e) != GW_OK) {
        gw_free(r->upstream);
        r->upstream = NULL;
        snprintf(err, errcap, "route %s: control_plane %s", r->label, e);
        return GW_ERR;
    }
    bsettings *b = gw_calloc(1, sizeof *b);
    r->kind_data = b;
    r->kind_free = settings_free;

    json_t *subs = json_object_get(o, "subresources");
    if (subs && !json_is_array(subs))
        return parse_fail(err, errcap, r, "subresources must be a list of path segments");
    b->subs = gw_calloc(json_array_size(subs) + 1, sizeof *b->subs);
    size_t i;
    json_t *v;
    json_array_foreach(subs, i, v)
    {
        if (!json_is_string(v) || !segment_ok(json_string_value(v), SUB_MAX))
            return parse_fail(err, errcap, r, "each subresource must be one path segment ([A-Za-z0-9._~-], 1-64)");
        b->subs[b->nsubs++] = gw_strdup(json_string_value(v));
    }

    json_t *fb = json_object_get(o, "fallback");
    if (fb && !json_is_array(fb))
        return parse_fail(err, errcap, r, "fallback must be a list of {\"subresource\", \"suffix\"}");
    if (!fb) {
        b->fb = gw_calloc(1, sizeof *b->fb);
        snprintf(b->fb[0].sub, sizeof b->fb[0].sub, "telemetry");
        snprintf(b->fb[0].suffix, sizeof b->fb[0].suffix, "/events");
        b->nfb = 1;
    } else {
        b->fb = gw_calloc(json_array_size(fb) + 1, sizeof *b->fb);
        json_array_foreach(fb, i, v)
        {
            json_t *s = json_object_get(v, "subresource"), *x = json_object_get(v, "suffix");
            if (!json_is_object(v) || json_object_size(v) != 2 || !json_is_string(s) || !json_is_string(x) ||
                !segment_ok(json_string_value(s), SUB_MAX))
                return parse_fail(err, errcap, r,
                                  "each fallback entry is {\"subresource\": SEGMENT, \"suffix\": \"/path\" or \"\"}");
            const char *sx = json_string_value(x);
            if (strlen(sx) > SUFFIX_MAX || (sx[0] && sx[0] != '/') || strchr(sx, '?') ||
                strlen(sx) != json_string_length(x))
                return parse_fail(err, errcap, r, "a fallback suffix is \"\" or a path starting with '/' (no query)");
            snprintf(b->fb[b->nfb].sub, sizeof b->fb[b->nfb].sub, "%s", json_string_value(s));
            snprintf(b->fb[b->nfb].suffix, sizeof b->fb[b->nfb].suffix, "%s", sx);
            b->nfb++;
        }
    }

    json_t *cs = json_object_get(o, "cache_size");
    b->cache_size = CACHE_DEFAULT;
    if (cs) {
        if (!json_is_integer(cs) || json_integer_value(cs) < 1 || json_integer_value(cs) > CACHE_LIMIT)
            return parse_fail(err, errcap, r, "cache_size must be an integer from 1 to 1000000");
        b->cache_size = (size_t)json_integer_value(cs);
    }

    /* "/browsers" serves /browsers and everything under /browsers/. */
    size_t pl = strlen(r->path);
    if (r->path[pl - 1] != '/') {
        char *p = gw_malloc(pl + 2);
        memcpy(p, r->path, pl);
        p[pl] = '/';
        p[pl + 1] = '\0';
        gw_free(r->path);
        r->path = p;
    }
    size_t evicted;
    b->cache = shared_cache(r->label, b->cache_size, &evicted);
    b->learned = bmetric("wsgate_browser_routes_learned_total", GW_METRIC_COUNTER,
                         "Browser session routes learned from control-plane answers.", r, NULL);
    b->ev_lru = eviction_metric(r, "lru");
    b->ev_deleted = eviction_metric(r, "deleted");
    b->ev_gone = eviction_metric(r, "browser_gone");
    b->ev_stale = eviction_metric(r, "stale_jwt");
    gw_counter_add(eviction_metric(r, "resized"), evicted);
    /* The request series a dashboard plots exist (at 0) from the start. */
    static const char *const series[][2] = {{"direct", "cached_route"},
                                            {"control_plane", "no_route"},
                                            {"control_plane", "credential_mismatch"},
                                            {"fallback", "browser_gone"},
                                            {"fallback", "stale_jwt"}};
    for (size_t k = 0; k < sizeof series / sizeof series[0]; k++) {
        char more[128];
        snprintf(more, sizeof more, "via=\"%s\",reason=\"%s\"", series[k][0], series[k][1]);
        gw_counter_add(bmetric("wsgate_browser_requests_total", GW_METRIC_COUNTER, BROWSER_REQUESTS_HELP, r, more), 0);
    }
    gw_bcache_set_gauge(b->cache,
                        bmetric("wsgate_browser_routes", GW_METRIC_GAUGE, "Browser session routes cached.", r, NULL));
    return GW_OK;
}

static const char *const browser_fields[] = {"control_plane", "subresources", "fallback", "cache_size", NULL};

const gw_kind gw_kind_browser = {
    .name = "browser",
    .flags = GW_KIND_HTTP | GW_KIND_UPSTREAM | GW_KIND_OWN_FIELDS,
    .fields = browser_fields,
    .parse = browser_parse,
    .serve = browser_serve,
};

/* terminal.c: the terminal gateway, gateway side (see terminal.h).
 *
 * Order of checks on /ws/terminal/{allocation_id}, each refusal an HTTP
 * error with the envelope and its own code and metric reason:
 *   1. a token-like parameter in the query string: token_in_query (400),
 *      never looked up (a URL leaks into logs and histories);
 *   2. no token among the Sec-WebSocket-Protocol values: missing_token (401);
 *   3. atomic consumption: unknown_token, expired_token (401),
 *      token_replayed, allocation_mismatch (403);
 * and only then is the agent dialled. The token itself never reaches the
 * agent, a log line or a metric label. */
#include "terminal/terminal.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/common.h"
#include "core/rand.h"
#include "http/ws_handshake.h"
#include "log/log.h"
#include "metrics/metrics.h"
#include "proxy/proxy.h"
#include "server/client.h"
#include "server/http_serve.h"
#include "server/state.h"
#include "store/redis.h"
#include "store/store.h"

const char gw_terminal_help[] =
    "Terminal gateway (read by the terminal module; see README):\n"
    "  GATEWAY_TERMINAL_WEB_DIR          (auto)   folder of the terminal page (index.html, terminal.js and\n"
    "                                             node_modules/@xterm); default: web/ next to the binary's tree,\n"
    "                                             then /usr/share/wsgate/web\n"
    "  GATEWAY_TERMINAL_TOKEN_URL        (empty)  the control plane's token endpoint the page POSTs to for\n"
    "                                             {token,url} (served to the page in /terminal/config.json)\n"
    "  GATEWAY_TERMINAL_DEMO_UPSTREAM    (empty)  DEMO ONLY: agent URL; enables POST /terminal/demo-token on the\n"
    "                                             public listener, minting tokens for anyone who can reach it\n"
    "                                             (the URL must match the terminal route's agent_upstreams)\n"
    "  GATEWAY_TERMINAL_DEMO_ALLOCATION  (demo)   allocation id of the demo issuer's tokens\n";

/* ============================== module state ================================ */

typedef struct asset {
    const char *url;   /* path on the public listener */
    const char *rel;   /* file under the web folder */
    const char *ctype;
    char *data;        /* loaded at init; NULL when absent */
    size_t n;
} asset;

static asset assets[] = {
    {"/terminal/", "index.html", "text/html; charset=utf-8", NULL, 0},
    {"/terminal/index.html", "index.html", "text/html; charset=utf-8", NULL, 0},
    {"/terminal/terminal.js", "terminal.js", "text/javascript; charset=utf-8", NULL, 0},
    {"/terminal/terminal.css", "terminal.css", "text/css; charset=utf-8", NULL, 0},
    {"/terminal/vendor/xterm.js", "node_modules/@xterm/xterm/lib/xterm.js", "text/javascript; charset=utf-8", NULL,
     0},
    {"/terminal/vendor/xterm.css", "node_modules/@xterm/xterm/css/xterm.css", "text/css; charset=utf-8", NULL, 0},
    {"/terminal/vendor/addon-fit.js", "node_modules/@xterm/addon-fit/lib/addon-fit.js",
     "text/javascript; charset=utf-8", NULL, 0},
};

static struct {
    gw_token_store *table;        /* the embedded token table */
    gw_store *store;              /* the asynchronous store every request goes through */
    uint64_t store_timeout_ms;    /* GATEWAY_STORE_TIMEOUT: a request waits this long for the store */
    char agent_auth[300];         /* "Authorization: Bearer <secret>\r\n" or "" */
    char ws_base[1024];           /* GATEWAY_PUBLIC_WS_BASE_URL without a trailing '/' */
    char token_url[1024];         /* GATEWAY_TERMINAL_TOKEN_URL */
    char demo_upstream[GW_TOKEN_UPSTREAM_MAX + 1];
    char demo_alloc[GW_TOKEN_ID_MAX + 1];
    char web_dir[PATH_MAX];
    char *config_json;            /* /terminal/config.json body */
    gw_metric *m_accepted;
    gw_metric *m_replay;
    gw_metric *m_minted_admin, *m_minted_demo;
} T;

/* Refusal reasons: the envelope code and the metric reason are the same. */
static const char *const reasons[] = {"missing_token",      "unknown_token",      "expired_token",
                                      "token_replayed",     "allocation_mismatch", "token_in_query",
                                      "invalid_allocation_id", "invalid_subprotocol", "token_store_unavailable",
                                      "upstream_unavailable", "upstream_refused", "upstream_not_allowed",
                                      "service_unavailable"};
static gw_metric *m_rejected[GW_ARRAY_LEN(reasons)];

static gw_metric *rejected_metric(const char *reason)
{
    for (size_t i = 0; i < GW_ARRAY_LEN(reasons); i++)
        if (strcmp(reasons[i], reason) == 0)
            return m_rejected[i];
    return NULL;
}

/* ============================ waiting for the store =========================
 * A request whose answer needs the store waits in GW_PHASE_WAIT with a copy
 * of its head; the store's callback (never inline: store.h) or the deadline
 * ends the wait, whichever comes first; the other is then cancelled. */

typedef struct term_wait term_wait;
typedef void (*term_answer_fn)(term_wait *tw);

struct term_wait {
    gw_client *c;
    gw_store_op *op;         /* the store operation in flight (NULL once answered) */
    gw_http_req *req;        /* copy of the request head (gw_h1_req_clone) */
    gw_req_ids ids;
    uint64_t started_ms;
    /* consume (the terminal route) */
    const gw_route *route;
    gw_route_table *table;   /* holds route alive */
    char alloc[GW_TOKEN_ID_MAX + 1];
    char token[GW_TOKEN_LEN + 1];
    int wants_v1;
    gw_token_result res;
    gw_token_ctx t;
    /* mint */
    gw_token_ctx ctx;
    unsigned ttl;
    const char *source;
    char minted[GW_TOKEN_LEN + 1];
    int rc;
};

static term_wait *wait_new(gw_client *c, const gw_http_req *req, const gw_req_ids *ids)
{
    term_wait *tw = gw_calloc(1, sizeof *tw);
    tw->c = c;
    tw->req = gw_h1_req_clone(req);
    tw->ids = *ids;
    tw->started_ms = gw_loop_now(c->w->loop);
    return tw;
}

static void wait_free(term_wait *tw)
{
    if (tw->op)
        gw_store_cancel(T.store, tw->op);
    if (tw->table)
        gw_routes_unref(tw->table);
    gw_h1_req_clone_free(tw->req); /* wiped: it holds the offered token */
    OPENSSL_cleanse(tw, sizeof *tw);
    gw_free(tw);
}

static void wait_abort(gw_client *c, void *data)
{
    GW_UNUSED(c);
    wait_free(data);
}


int gw_terminal_id_ok(const char *s, size_t max, int user)
{
    size_t n = strlen(s);
    if (n == 0 || n > max)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
            c == '.')
            continue;
        if (user && (c == '@' || c == '+'))
            continue;
        return 0;
    }
    return 1;
}

static void resource_name(const gw_token_ctx *t, char *out, size_t cap)
{
    snprintf(out, cap, "core42:aicloud:%s:%s:%s:gpuaas/allocation:%s", t->region, t->tenant_id, t->project_id,
             t->allocation_id);
}

static void format_time(uint64_t ms, char *out, size_t cap)
{
    time_t s = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    char date[40];
    strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out, cap, "%s.%03uZ", date, (unsigned)(ms % 1000));
}

/* The URL a client connects to for allocation: under the public WebSocket
 * base when configured, else same-origin (a path the page resolves). */
static void ws_url(const char *alloc, char *out, size_t cap)
{
    snprintf(out, cap, "%s/ws/terminal/%s", T.ws_base, alloc);
}

/* ================================ minting =================================== */

typedef struct mint_err {
    int status;
    const char *code;
    char message[160];
} mint_err;

/* Copies the optional string field name of obj into out after checking it.
 * GW_OK (absent fields leave out empty) or GW_ERR with *e filled. */
static int take_field(json_t *obj, const char *name, char *out, size_t cap, size_t max, int required, int kind,
                      const char *code, mint_err *e)
{
    json_t *v = json_object_get(obj, name);
    out[0] = '\0';
    if (!v || json_is_null(v)) {
        if (!required)
            return GW_OK;
        e->status = 400;
        e->code = "missing_field";
        snprintf(e->message, sizeof e->message, "the field %s is required", name);
        return GW_ERR;
    }
    const char *s = json_string_value(v);
    size_t n = s ? json_string_length(v) : 0;
    int good = s && n > 0 && n < cap && strlen(s) == n;
    if (good && kind == 0)
        good = gw_terminal_id_ok(s, max, 0);
    else if (good && kind == 1)
        good = gw_terminal_id_ok(s, max, 1);
    if (!good) {
        e->status = 400;
        e->code = code;
        if (kind == 2)
            snprintf(e->message, sizeof e->message, "%s must be a ws://, wss:// or unix: URL", name);
        else
            snprintf(e->message, sizeof e->message, "%s must be 1..%zu characters of [A-Za-z0-9._-%s]", name, max,
                     kind == 1 ? "@+" : "");
        return GW_ERR;
    }
    memcpy(out, s, n + 1);
    return GW_OK;
}

static int upstream_ok(const char *url)
{
    gw_wsc_target t;
    char err[128];
    if (gw_wsc_parse_url(url, &t, err, sizeof err) != GW_OK || t.is_http)
        return 0;
    return 1;
}

/* Parses a mint request body into ctx and ttl. */
static int parse_mint(const uint8_t *body, size_t n, gw_token_ctx *ctx, unsigned *ttl, mint_err *e)
{
    memset(ctx, 0, sizeof *ctx);
    *ttl = GW_TOKEN_TTL_DEFAULT_S;
    json_error_t jerr;
    json_t *o = n ? json_loadb((const char *)body, n, JSON_REJECT_DUPLICATES, &jerr) : NULL;
    if (!o || !json_is_object(o)) {
        json_decref(o);
        e->status = 400;
        e->code = "invalid_json";
        snprintf(e->message, sizeof e->message, "the body must be a JSON object");
        return GW_ERR;
    }
    int rc = GW_ERR;
    if (take_field(o, "allocation_id", ctx->allocation_id, sizeof ctx->allocation_id, GW_TOKEN_ID_MAX, 1, 0,
                   "invalid_allocation_id", e) != GW_OK ||
        take_field(o, "upstream", ctx->upstream, sizeof ctx->upstream, GW_TOKEN_UPSTREAM_MAX, 1, 2,
                   "invalid_upstream", e) != GW_OK ||
        take_field(o, "user_id", ctx->user_id, sizeof ctx->user_id, GW_TOKEN_ID_MAX, 1, 1, "invalid_user_id", e) !=
            GW_OK ||
        take_field(o, "session_id", ctx->session_id, sizeof ctx->session_id, GW_TOKEN_ID_MAX, 0, 0,
                   "invalid_session_id", e) != GW_OK ||
        take_field(o, "region", ctx->region, sizeof ctx->region, GW_TOKEN_REGION_MAX, 0, 0, "invalid_region", e) !=
            GW_OK ||
        take_field(o, "tenant_id", ctx->tenant_id, sizeof ctx->tenant_id, GW_TOKEN_ID_MAX, 0, 0,
                   "invalid_tenant_id", e) != GW_OK ||
        take_field(o, "project_id", ctx->project_id, sizeof ctx->project_id, GW_TOKEN_ID_MAX, 0, 0,
                   "invalid_project_id", e) != GW_OK)
        goto out;
    if (!upstream_ok(ctx->upstream)) {
        e->status = 400;
        e->code = "invalid_upstream";
        if (strncmp(ctx->upstream, "unix:", 5) == 0)
            snprintf(e->message, sizeof e->message,
                     "a unix: upstream names its socket by an absolute path without \".\", \"..\" or empty segments");
        else
            snprintf(e->message, sizeof e->message, "upstream must be a ws://, wss:// or unix: URL");
        goto out;
    }
    json_t *t = json_object_get(o, "ttl_s");
    if (t && !json_is_null(t)) {
        if (!json_is_integer(t) || json_integer_value(t) < 1 || json_integer_value(t) > GW_TOKEN_TTL_MAX_S) {
            e->status = 400;
            e->code = "invalid_ttl";
            snprintf(e->message, sizeof e->message, "ttl_s must be an integer from 1 to %d", GW_TOKEN_TTL_MAX_S);
            goto out;
        }
        *ttl = (unsigned)json_integer_value(t);
    }
    if (!ctx->session_id[0])
        gw_rand_hex(ctx->session_id, 16);
    rc = GW_OK;
out:
    json_decref(o);
    return rc;
}

/* 1 when a terminal route of the current table lets its tokens dial url
 * (its agent_upstreams, by default loopback and unix sockets only). The
 * route that serves the connection checks again when it is used. */
static int upstream_allowed(const char *url)
{
    gw_wsc_target t;
    char err[128];
    if (gw_wsc_parse_url(url, &t, err, sizeof err) != GW_OK)
        return 0;
    gw_route_table *table = gw_server_routes();
    int ok = 0;
    for (size_t i = 0; table && i < table->n && !ok; i++)
        ok = table->routes[i].kind == &gw_kind_terminal && gw_route_agent_allowed(&table->routes[i], &t);
    gw_routes_unref(table);
    return ok;
}

static void answer_minted(gw_client *c, const gw_http_req *req, const gw_req_ids *ids, gw_token_ctx *ctx,
                          unsigned ttl, const char *source, char *tok);
static void wait_deadline(gw_client *c, void *data);
static const gw_client_wait_ops wait_ops = {wait_deadline, wait_abort};

static void minted(void *ud, int rc)
{
    term_wait *tw = ud;
    gw_client *c = tw->c;
    tw->op = NULL;
    gw_client_wait_end(c);
    if (rc != GW_OK)
        gw_http_error_ids(c, 503, "token_store_unavailable", "the token store did not keep the token (full or unreachable)", tw->req, NULL,
                          &tw->ids);
    else
        answer_minted(c, tw->req, &tw->ids, &tw->ctx, tw->ttl, tw->source, tw->minted);
    gw_client_resume(c);
    wait_free(tw);
}

/* Mints for ctx and answers 201 with the token's JSON once the store kept
 * it (the connection waits for the store). Returns what a handler returns. */
static int mint_and_answer(gw_client *c, gw_http_req *req, const gw_req_ids *ids, gw_token_ctx *ctx, unsigned ttl,
                           const char *source)
{
    if (!upstream_allowed(ctx->upstream)) {
        gw_log_line *l = gw_log_begin(GW_LOG_WARN, "terminal token refused", ids->corr);
        if (l) {
            gw_log_str(l, "reason", "upstream_not_allowed", 0);
            gw_log_str(l, "source", source, 0);
            gw_log_str(l, "upstream", ctx->upstream, 0);
            gw_log_str(l, "allocation_id", ctx->allocation_id, 0);
            gw_log_str(l, "user", ctx->user_id, 0);
            gw_log_str(l, "ip", c->ip, GW_LOG_JSON_ONLY);
            gw_log_end(l);
        }
        gw_http_error_ids(c, 400, "upstream_not_allowed",
                          "the upstream is not in the terminal route's agent_upstreams (default: loopback and unix "
                          "sockets only)",
                          req, NULL, ids);
        return GW_OK;
    }
    term_wait *tw = wait_new(c, req, ids);
    tw->ctx = *ctx;
    tw->ttl = ttl;
    tw->source = source;
    tw->op = gw_store_mint(T.store, c->w->loop, &tw->ctx, ttl, tw->minted, minted, tw);
    gw_client_wait(c, &wait_ops, tw, tw->started_ms + T.store_timeout_ms);
    return GW_DONE;
}

/* Answers 201 with the minted token's JSON (tok is wiped). */
static void answer_minted(gw_client *c, const gw_http_req *req, const gw_req_ids *ids, gw_token_ctx *ctx,
                          unsigned ttl, const char *source, char *tok)
{
    char url[1400], exp[64], rn[700];
    ws_url(ctx->allocation_id, url, sizeof url);
    format_time(ctx->expires_at_ms, exp, sizeof exp);
    resource_name(ctx, rn, sizeof rn);
    json_t *o = json_pack("{s:s, s:s, s:I, s:i, s:s, s:s, s:s, s:s}", "token", tok, "expires_at", exp,
                          "expires_at_ms", (json_int_t)ctx->expires_at_ms, "ttl_s", (int)ttl, "url", url,
                          "subprotocol", GW_TERMINAL_SUBPROTOCOL, "session_id", ctx->session_id, "allocation_id",
                          ctx->allocation_id);
    char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    OPENSSL_cleanse(tok, GW_TOKEN_LEN + 1);
    if (!body) {
        gw_http_error_ids(c, 500, "internal_error", "cannot encode the answer", req, NULL, ids);
        return;
    }
    gw_http_respond(c, req, ids, 201, "application/json", body, strlen(body), NULL);
    OPENSSL_cleanse(body, strlen(body));
    free(body);
    gw_counter_inc(strcmp(source, "demo") == 0 ? T.m_minted_demo : T.m_minted_admin);
    gw_log_line *l = gw_log_begin(GW_LOG_INFO, "terminal token minted", ids->corr);
    if (l) {
        gw_log_str(l, "source", source, 0);
        gw_log_str(l, "allocation_id", ctx->allocation_id, 0);
        gw_log_str(l, "user", ctx->user_id, 0);
        gw_log_str(l, "session_id", ctx->session_id, 0);
        gw_log_str(l, "resource_name", rn, GW_LOG_JSON_ONLY);
        gw_log_str(l, "upstream", ctx->upstream, GW_LOG_JSON_ONLY);
        gw_log_int(l, "ttl_s", ttl, GW_LOG_JSON_ONLY);
        gw_log_str(l, "ip", c->ip, GW_LOG_JSON_ONLY);
        gw_log_end(l);
    }
}

static int admin_mint(gw_client *c, gw_http_req *req, const uint8_t *body, size_t n, const gw_req_ids *ids)
{
    gw_token_ctx ctx;
    unsigned ttl;
    mint_err e;
    if (parse_mint(body, n, &ctx, &ttl, &e) != GW_OK) {
        gw_http_error_ids(c, e.status, e.code, e.message, req, NULL, ids);
        return GW_OK;
    }
    return mint_and_answer(c, req, ids, &ctx, ttl, "admin");
}

/* The demo issuer: tokens for one allocation on one agent, for anyone who
 * reaches the public listener. Off unless GATEWAY_TERMINAL_DEMO_UPSTREAM. */
static int demo_mint(gw_client *c, gw_http_req *req, const uint8_t *body, size_t n, const gw_req_ids *ids)
{
    gw_token_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    snprintf(ctx.allocation_id, sizeof ctx.allocation_id, "%s", T.demo_alloc);
    snprintf(ctx.upstream, sizeof ctx.upstream, "%s", T.demo_upstream);
    snprintf(ctx.user_id, sizeof ctx.user_id, "demo");
    snprintf(ctx.region, sizeof ctx.region, "local");
    snprintf(ctx.tenant_id, sizeof ctx.tenant_id, "demo");
    snprintf(ctx.project_id, sizeof ctx.project_id, "demo");
    /* The session id comes from ?session_id= (the public listener does not
     * read request bodies for the gateway's own endpoints) or a JSON body. */
    char sid[GW_TOKEN_ID_MAX + 1] = "";
    int bad = 0;
    gw_str q = req->query;
    for (size_t i = 0; i < q.n;) {
        size_t k = i;
        while (k < q.n && q.p[k] != '&')
            k++;
        if (k - i > 11 && memcmp(q.p + i, "session_id=", 11) == 0) {
            size_t vn = k - i - 11;
            if (vn > GW_TOKEN_ID_MAX)
                bad = 1;
            else {
                memcpy(sid, q.p + i + 11, vn);
                sid[vn] = '\0';
            }
        }
        i = k + 1;
    }
    if (body && n) {
        json_t *o = json_loadb((const char *)body, n, 0, NULL);
        const char *s = o ? json_string_value(json_object_get(o, "session_id")) : NULL;
        if (s && strlen(s) <= GW_TOKEN_ID_MAX)
            snprintf(sid, sizeof sid, "%s", s);
        else if (s)
            bad = 1;
        json_decref(o);
    }
    if (bad || (sid[0] && !gw_terminal_id_ok(sid, GW_TOKEN_ID_MAX, 0))) {
        gw_http_error_ids(c, 400, "invalid_session_id", "session_id must be 1..128 characters of [A-Za-z0-9._-]", req,
                          NULL, ids);
        return GW_OK;
    }
    snprintf(ctx.session_id, sizeof ctx.session_id, "%s", sid);
    if (!ctx.session_id[0])
        gw_rand_hex(ctx.session_id, 16);
    return mint_and_answer(c, req, ids, &ctx, GW_TOKEN_TTL_DEFAULT_S, "demo");
}

/* ================================ the page ================================== */

static int page(gw_client *c, gw_http_req *req, const uint8_t *body, size_t n, const gw_req_ids *ids)
{
    GW_UNUSED(body);
    GW_UNUSED(n);
    static const char sec[] = "Content-Security-Policy: default-src 'self'; connect-src 'self' ws: wss: http: https:; "
                              "style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'\r\n"
                              "X-Content-Type-Options: nosniff\r\nReferrer-Policy: no-referrer\r\n";
    if (gw_str_eq(req->path, "/terminal/config.json")) {
        gw_http_respond(c, req, ids, 200, "application/json", T.config_json, strlen(T.config_json), sec);
        return GW_OK;
    }
    for (size_t i = 0; i < GW_ARRAY_LEN(assets); i++) {
        if (!gw_str_eq(req->path, assets[i].url))
            continue;
        if (!assets[i].data) {
            gw_http_error_ids(c, 503, "terminal_page_unavailable",
                              "the terminal page's files were not found (GATEWAY_TERMINAL_WEB_DIR)", req, NULL, ids);
            return GW_OK;
        }
        gw_http_respond(c, req, ids, 200, assets[i].ctype, assets[i].data, assets[i].n, sec);
        return GW_OK;
    }
    gw_http_error_ids(c, 404, "not_found", "no such file", req, NULL, ids);
    return GW_OK;
}

static int page_redirect(gw_client *c, gw_http_req *req, const uint8_t *body, size_t n, const gw_req_ids *ids)
{
    GW_UNUSED(body);
    GW_UNUSED(n);
    gw_http_respond(c, req, ids, 301, "text/plain; charset=utf-8", "/terminal/\n", 11, "Location: /terminal/\r\n");
    return GW_OK;
}

static char *read_file(const char *path, size_t *n)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > 16 * 1024 * 1024) {
        close(fd);
        return NULL;
    }
    char *p = gw_malloc((size_t)st.st_size + 1);
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t r = read(fd, p + got, (size_t)st.st_size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fd);
    p[got] = '\0';
    *n = got;
    return p;
}

static int has_index(const char *dir)
{
    static const char idx[] = "/index.html";
    char p[PATH_MAX + sizeof idx];
    size_t n = strlen(dir);
    if (n >= PATH_MAX)
        return 0;
    memcpy(p, dir, n);
    memcpy(p + n, idx, sizeof idx);
    return access(p, R_OK) == 0;
}

/* The web folder: the variable, else web/ in the source tree the binary was
 * built in (build/wsgate, build/san/wsgate), else the installed location. */
static int find_web_dir(char *err, size_t errcap)
{
    const char *env = getenv("GATEWAY_TERMINAL_WEB_DIR");
    if (env && env[0]) {
        if (!has_index(env)) {
            snprintf(err, errcap, "GATEWAY_TERMINAL_WEB_DIR: no readable index.html in \"%s\"", env);
            return GW_ERR;
        }
        snprintf(T.web_dir, sizeof T.web_dir, "%s", env);
        return GW_OK;
    }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        char *slash = strrchr(exe, '/');
        if (slash)
            *slash = '\0';
        static const char *const rel[] = {"/../web", "/../../web", "/../share/wsgate/web"};
        for (size_t i = 0; i < GW_ARRAY_LEN(rel); i++) {
            char cand[PATH_MAX + 32];
            snprintf(cand, sizeof cand, "%s%s", exe, rel[i]);
            char *real = has_index(cand) ? realpath(cand, NULL) : NULL;
            if (real && strlen(real) < sizeof T.web_dir) {
                memcpy(T.web_dir, real, strlen(real) + 1);
                free(real);
                return GW_OK;
            }
            free(real);
        }
    }
    if (has_index("/usr/share/wsgate/web"))
        snprintf(T.web_dir, sizeof T.web_dir, "/usr/share/wsgate/web");
    return GW_OK;
}

static void load_assets(void)
{
    size_t missing = 0;
    for (size_t i = 0; i < GW_ARRAY_LEN(assets); i++) {
        if (!T.web_dir[0])
            break;
        char p[PATH_MAX + 128];
        snprintf(p, sizeof p, "%s/%s", T.web_dir, assets[i].rel);
        assets[i].data = read_file(p, &assets[i].n);
        missing += assets[i].data == NULL;
    }
    if (!T.web_dir[0] || missing) {
        gw_log_line *l = gw_log_begin(GW_LOG_WARN, "terminal page files missing", NULL);
        if (l) {
            gw_log_str(l, "web_dir", T.web_dir[0] ? T.web_dir : "(not found)", 0);
            gw_log_int(l, "missing", (int64_t)(T.web_dir[0] ? missing : GW_ARRAY_LEN(assets)), 0);
            gw_log_str(l, "hint", "run `make deps` (npm ci in web/) or set GATEWAY_TERMINAL_WEB_DIR", 0);
            gw_log_end(l);
        }
    }
}

static void build_config_json(void)
{
    const char *tu = T.token_url[0] ? T.token_url : (T.demo_upstream[0] ? "/terminal/demo-token" : "");
    json_t *o = json_pack("{s:s, s:s, s:s, s:b, s:s}", "ws_base_url", T.ws_base, "token_url", tu, "subprotocol",
                          GW_TERMINAL_SUBPROTOCOL, "demo", T.demo_upstream[0] != 0, "demo_allocation",
                          T.demo_upstream[0] ? T.demo_alloc : "");
    T.config_json = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!T.config_json)
        T.config_json = strdup("{}");
}

/* ============================ the terminal route ============================ */

/* 1 when the query string has a parameter whose name mentions a token
 * (token, access_token, ws_token, ...). */
static int query_has_token(gw_str q)
{
    size_t i = 0;
    while (i < q.n) {
        size_t k = i;
        while (k < q.n && q.p[k] != '=' && q.p[k] != '&')
            k++;
        for (size_t j = i; j + 5 <= k; j++)
            if (strncasecmp(q.p + j, "token", 5) == 0)
                return 1;
        while (k < q.n && q.p[k] != '&')
            k++;
        i = k + 1;
    }
    return 0;
}

static void refusal_log(const char *corr, const char *reason, const char *alloc, const gw_token_ctx *t,
                        const gw_client *c)
{
    gw_log_line *l = gw_log_begin(GW_LOG_WARN, "terminal refused", corr);
    if (!l)
        return;
    gw_log_str(l, "reason", reason, 0);
    gw_log_str(l, "allocation_id", alloc, 0);
    gw_log_str(l, "ip", c->ip, 0);
    if (t && t->allocation_id[0]) {
        char rn[700];
        resource_name(t, rn, sizeof rn);
        gw_log_str(l, "resource_name", rn, GW_LOG_JSON_ONLY);
        gw_log_str(l, "session_id", t->session_id, GW_LOG_JSON_ONLY);
        gw_log_str(l, "user", t->user_id, GW_LOG_JSON_ONLY);
    }
    gw_log_end(l);
}

static int refuse(gw_client *c, gw_http_req *req, const gw_route *r, const gw_req_ids *ids, int status,
                  const char *reason, const char *message, const char *alloc, const gw_token_ctx *t)
{
    gw_metric *m = rejected_metric(reason);
    if (m)
        gw_counter_inc(m);
    if (strcmp(reason, "token_replayed") == 0)
        gw_counter_inc(T.m_replay);
    gw_counter_inc(gw_metric_handshake(r, reason));
    refusal_log(ids->corr, reason, alloc, t, c);
    gw_http_error_ids(c, status, reason, message, req, status == 401 ? "WWW-Authenticate: Bearer\r\n" : NULL, ids);
    return GW_OK;
}

/* The agent answered the relay's upgrade: only now is the terminal
 * accepted; an agent that refuses or cannot be reached is a refusal. */
static void agent_result(const gw_relay_result *res)
{
    int accepted = strcmp(res->result, "accepted") == 0;
    const char *reason = accepted ? "ok"
                         : strcmp(res->result, "upstream_refused") == 0 ? "upstream_refused"
                                                                          : "upstream_unavailable";
    gw_counter_inc(accepted ? T.m_accepted : rejected_metric(reason));
    gw_log_line *l = gw_log_begin(accepted ? GW_LOG_INFO : GW_LOG_WARN, accepted ? "terminal accepted"
                                                                                 : "terminal refused",
                                  res->corr);
    if (!l)
        return;
    if (!accepted)
        gw_log_str(l, "reason", reason, 0);
    gw_log_str(l, "user", res->user, 0);
    gw_log_str(l, "ip", res->ip, 0);
    if (res->resource_name)
        gw_log_str(l, "resource_name", res->resource_name, GW_LOG_JSON_ONLY);
    if (res->session_id)
        gw_log_str(l, "session_id", res->session_id, GW_LOG_JSON_ONLY);
    gw_log_str(l, "upstream", res->upstream, GW_LOG_JSON_ONLY);
    if (res->upstream_status)
        gw_log_int(l, "upstream_status", res->upstream_status, GW_LOG_JSON_ONLY);
    if (!accepted && res->error[0])
        gw_log_str(l, "error", res->error, GW_LOG_JSON_ONLY);
    gw_log_end(l);
}

static void consumed(void *ud, gw_token_result res, const gw_token_ctx *t);

static int serve(gw_client *c, gw_http_req *req, const gw_route *r, gw_route_table *table, const gw_req_ids *ids)
{
    if (!T.store) { /* gw_terminal_init did not run */
        gw_http_error_ids(c, 404, "not_found", "this route's kind is not enabled", req, NULL, ids);
        return GW_OK;
    }
    /* The allocation id: the path after the route's prefix. */
    char alloc[GW_TOKEN_ID_MAX + 1] = "";
    size_t pl = strlen(r->path);
    gw_str rest = req->path;
    if (rest.n >= pl) {
        rest.p += pl;
        rest.n -= pl;
    }
    if (rest.n && rest.p[0] == '/') {
        rest.p++;
        rest.n--;
    }
    if (rest.n && rest.n <= GW_TOKEN_ID_MAX) {
        memcpy(alloc, rest.p, rest.n);
        alloc[rest.n] = '\0';
    }
    if (!gw_terminal_id_ok(alloc, GW_TOKEN_ID_MAX, 0))
        return refuse(c, req, r, ids, 400, "invalid_allocation_id",
                      "the path must be /ws/terminal/{allocation_id} with [A-Za-z0-9._-]", "-", NULL);

    if (query_has_token(req->query))
        return refuse(c, req, r, ids, 400, "token_in_query",
                      "tokens are never accepted in the URL; offer it in Sec-WebSocket-Protocol", alloc, NULL);

    /* Sec-WebSocket-Protocol: [wsgate.terminal.v1,] token */
    char offered[1024];
    size_t on = gw_h1_join_header(req, "Sec-WebSocket-Protocol", offered, sizeof offered);
    int wants_v1 = 0, ncand = 0;
    gw_str tok = {NULL, 0};
    for (size_t i = 0; i < on;) {
        size_t k = i;
        while (k < on && offered[k] != ',')
            k++;
        gw_str v = gw_str_trim(gw_str_make(offered + i, k - i));
        if (gw_str_eq(v, GW_TERMINAL_SUBPROTOCOL))
            wants_v1 = 1;
        else if (v.n) {
            tok = v;
            ncand++;
        }
        i = k + 1;
    }
    if (ncand == 0)
        return refuse(c, req, r, ids, 401, "missing_token",
                      "offer the terminal token in Sec-WebSocket-Protocol (after wsgate.terminal.v1)", alloc, NULL);
    if (ncand > 1) {
        OPENSSL_cleanse(offered, sizeof offered);
        return refuse(c, req, r, ids, 400, "invalid_subprotocol",
                      "offer exactly one token, alone or after wsgate.terminal.v1", alloc, NULL);
    }

    term_wait *tw = wait_new(c, req, ids);
    tw->route = r;
    tw->table = table;
    gw_routes_ref(table);
    snprintf(tw->alloc, sizeof tw->alloc, "%s", alloc);
    if (tok.n == GW_TOKEN_LEN) {
        memcpy(tw->token, tok.p, tok.n);
        tw->token[tok.n] = '\0';
    }
    tw->wants_v1 = wants_v1;
    tw->op = gw_store_consume(T.store, c->w->loop, tok.p, tok.n, alloc, consumed, tw);
    OPENSSL_cleanse(offered, sizeof offered);
    gw_client_wait(c, &wait_ops, tw, tw->started_ms + T.store_timeout_ms);
    return GW_DONE;
}

/* The store answered the consume: refuse, or dial the token's agent. */
static int serve_consumed(gw_client *c, term_wait *tw)
{
    gw_http_req *req = tw->req;
    const gw_route *r = tw->route;
    gw_route_table *table = tw->table;
    const gw_req_ids *ids = &tw->ids;
    const char *alloc = tw->alloc;
    char *token = tw->token;
    int wants_v1 = tw->wants_v1;
    gw_token_result res = tw->res;
    gw_token_ctx t = tw->t;
    OPENSSL_cleanse(&tw->t, sizeof tw->t);
    if (res != GW_TOKEN_OK) {
        OPENSSL_cleanse(token, GW_TOKEN_LEN + 1);
        switch (res) {
        case GW_TOKEN_EXPIRED:
            return refuse(c, req, r, ids, 401, "expired_token", "the terminal token has expired", alloc, &t);
        case GW_TOKEN_REPLAYED:
            return refuse(c, req, r, ids, 403, "token_replayed", "the terminal token was already used", alloc, &t);
        case GW_TOKEN_ALLOCATION_MISMATCH:
            return refuse(c, req, r, ids, 403, "allocation_mismatch",
                          "the terminal token is bound to another allocation", alloc, &t);
        case GW_TOKEN_BACKEND_ERROR:
            return refuse(c, req, r, ids, 503, "service_unavailable", "the token store is unavailable", alloc,
                          NULL);
        default:
            return refuse(c, req, r, ids, 401, "unknown_token", "the terminal token is not valid", alloc, NULL);
        }
    }

    gw_wsc_target target;
    char perr[160];
    if (gw_wsc_parse_url(t.upstream, &target, perr, sizeof perr) != GW_OK) {
        OPENSSL_cleanse(token, GW_TOKEN_LEN + 1);
        return refuse(c, req, r, ids, 502, "upstream_unavailable", "the token's agent URL is unusable", alloc, &t);
    }
    /* Checked at mint time too; the routes may have been reloaded since. */
    if (!gw_route_agent_allowed(r, &target)) {
        OPENSSL_cleanse(token, GW_TOKEN_LEN + 1);
        return refuse(c, req, r, ids, 403, "upstream_not_allowed",
                      "the token's agent is not in this route's agent_upstreams", alloc, &t);
    }
    char rn[700];
    resource_name(&t, rn, sizeof rn);
    char hdrs[1024];
    snprintf(hdrs, sizeof hdrs, "%sX-Wsgate-Session-Id: %s\r\nX-Wsgate-User-Id: %s\r\nX-Wsgate-Allocation-Id: %s\r\n",
             T.agent_auth, t.session_id, t.user_id, t.allocation_id);
    gw_relay_opts o = {
        .target = &target,
        .upstream_url = t.upstream,
        .extra_headers = hdrs,
        .user = t.user_id,
        .offer_protocols = "", /* the token never reaches the agent */
        .select_protocol = wants_v1 ? GW_TERMINAL_SUBPROTOCOL : token,
        .resource_name = rn,
        .session_id = t.session_id,
        .on_result = agent_result,
    };
    gw_log_line *l = gw_log_begin(GW_LOG_DEBUG, "terminal dialling agent", ids->corr);
    if (l) {
        gw_log_str(l, "allocation_id", t.allocation_id, 0);
        gw_log_str(l, "user", t.user_id, 0);
        gw_log_str(l, "resource_name", rn, GW_LOG_JSON_ONLY);
        gw_log_str(l, "upstream", t.upstream, GW_LOG_JSON_ONLY);
        gw_log_end(l);
    }
    /* The client's credentials are the gateway's business, never the
     * agent's: its Authorization and Cookie stay here (the agent would read
     * a client's Authorization first and refuse, burning the token), and so
     * does Origin (an agent refuses any request that carries one). The only
     * Authorization the agent sees is the gateway's own, in hdrs. */
    gw_http_header *keep = gw_calloc(req->num_headers + 1, sizeof *keep);
    gw_http_req to_agent = *req;
    to_agent.headers = keep;
    to_agent.num_headers = 0;
    for (size_t i = 0; i < req->num_headers; i++) {
        gw_str name = req->headers[i].name;
        if (!gw_str_ieq(name, "Authorization") && !gw_str_ieq(name, "Cookie") && !gw_str_ieq(name, "Origin"))
            keep[to_agent.num_headers++] = req->headers[i];
    }
    int rc = gw_relay_ws_start(c, &to_agent, r, table, ids, &o);
    gw_free(keep);
    OPENSSL_cleanse(token, GW_TOKEN_LEN + 1);
    OPENSSL_cleanse(hdrs, sizeof hdrs);
    OPENSSL_cleanse(&t, sizeof t);
    if (rc == GW_OK)
        return GW_DONE;
    return refuse(c, req, r, ids, 502, "upstream_unavailable", "the agent could not be reached", alloc, &t);
}


static void consumed(void *ud, gw_token_result res, const gw_token_ctx *t)
{
    term_wait *tw = ud;
    gw_client *c = tw->c;
    tw->op = NULL;
    tw->res = res;
    tw->t = *t;
    gw_client_wait_end(c);
    serve_consumed(c, tw);
    gw_client_resume(c);
    wait_free(tw);
}

/* The store did not answer in time: 503, and its late answer (a consumed
 * token's context, maybe) is cancelled, dropped and wiped. */
static void wait_deadline(gw_client *c, void *data)
{
    term_wait *tw = data;
    gw_store_cancel(T.store, tw->op);
    tw->op = NULL;
    gw_client_wait_end(c);
    if (tw->route) {
        refuse(c, tw->req, tw->route, &tw->ids, 503, "service_unavailable", "the token store did not answer in time",
               tw->alloc, NULL);
    } else {
        gw_log_line *l = gw_log_begin(GW_LOG_WARN, "terminal token refused", tw->ids.corr);
        if (l) {
            gw_log_str(l, "reason", "service_unavailable", 0);
            gw_log_str(l, "source", tw->source, 0);
            gw_log_int(l, "waited_ms", (int64_t)(gw_loop_now(c->w->loop) - tw->started_ms), 0);
            gw_log_str(l, "ip", c->ip, GW_LOG_JSON_ONLY);
            gw_log_end(l);
        }
        gw_http_error_ids(c, 503, "service_unavailable", "the token store did not answer in time", tw->req, NULL,
                          &tw->ids);
    }
    gw_client_resume(c);
    wait_free(tw);
}

/* ================================== init ==================================== */

int gw_terminal_init(const gw_config *cfg, char *err, size_t errcap)
{
    memset(&T, 0, sizeof T);
    if (cfg->agent_secret[0])
        snprintf(T.agent_auth, sizeof T.agent_auth, "Authorization: Bearer %s\r\n", cfg->agent_secret);
    snprintf(T.ws_base, sizeof T.ws_base, "%s", cfg->public_ws_base_url);
    size_t bl = strlen(T.ws_base);
    while (bl && T.ws_base[bl - 1] == '/')
        T.ws_base[--bl] = '\0';
    const char *tu = getenv("GATEWAY_TERMINAL_TOKEN_URL");
    snprintf(T.token_url, sizeof T.token_url, "%s", tu ? tu : "");
    const char *du = getenv("GATEWAY_TERMINAL_DEMO_UPSTREAM");
    if (du && du[0]) {
        if (strlen(du) > GW_TOKEN_UPSTREAM_MAX || !upstream_ok(du)) {
            snprintf(err, errcap, "GATEWAY_TERMINAL_DEMO_UPSTREAM: \"%s\" is not a ws://, wss:// or unix: URL", du);
            return GW_ERR;
        }
        snprintf(T.demo_upstream, sizeof T.demo_upstream, "%s", du);
    }
    const char *da = getenv("GATEWAY_TERMINAL_DEMO_ALLOCATION");
    snprintf(T.demo_alloc, sizeof T.demo_alloc, "%s", da && da[0] ? da : "demo");
    if (!gw_terminal_id_ok(T.demo_alloc, GW_TOKEN_ID_MAX, 0)) {
        snprintf(err, errcap, "GATEWAY_TERMINAL_DEMO_ALLOCATION: \"%s\" is not an id of [A-Za-z0-9._-]", da);
        return GW_ERR;
    }
    if (find_web_dir(err, errcap) != GW_OK)
        return GW_ERR;

    /* GATEWAY_REDIS_MASTER_ADDR: tokens live in Redis, shared by every
     * process on it (and it must answer now: never a silent fallback to
     * the embedded store); else in this process. */
    T.table = gw_token_store_embedded(NULL, 0);
    if (cfg->redis_master_addr[0]) {
        T.store = gw_store_redis(cfg, err, errcap);
        if (!T.store) {
            gw_token_store_free(T.table);
            T.table = NULL;
            return GW_ERR;
        }
    }
    /* GATEWAY_TEST_STORE_DELAY (tests only): the embedded store answers
     * that late, as a slow remote store would. */
    uint64_t delay = 0;
    const char *dv = getenv("GATEWAY_TEST_STORE_DELAY");
    if (!T.store && dv && dv[0] && gw_parse_duration_ms(dv, &delay) != GW_OK) {
        snprintf(err, errcap, "GATEWAY_TEST_STORE_DELAY: \"%s\" is not a duration", dv);
        gw_token_store_free(T.table);
        T.table = NULL;
        return GW_ERR;
    }
    if (delay) {
        gw_log_line *l = gw_log_begin(GW_LOG_WARN, "test hook set: the token store answers late", NULL);
        if (l) {
            gw_log_str(l, "variable", "GATEWAY_TEST_STORE_DELAY", 0);
            gw_log_int(l, "delay_ms", (int64_t)delay, 0);
            gw_log_end(l);
        }
    }
    if (!T.store)
        T.store = gw_store_embedded(T.table, delay);
    gw_store_set_current(T.store);
    T.store_timeout_ms = cfg->store_timeout_ms;

    static const char events_help[] = "Terminal WebSocket handshakes by outcome and reason";
    T.m_accepted = gw_metric_get("terminal_gateway_ws_events_total", GW_METRIC_COUNTER, events_help,
                                 "outcome=\"accepted\",reason=\"ok\"");
    for (size_t i = 0; i < GW_ARRAY_LEN(reasons); i++) {
        char labels[128];
        snprintf(labels, sizeof labels, "outcome=\"rejected\",reason=\"%s\"", reasons[i]);
        m_rejected[i] = gw_metric_get("terminal_gateway_ws_events_total", GW_METRIC_COUNTER, events_help, labels);
    }
    T.m_replay = gw_metric_get("terminal_token_replay_rejected_total", GW_METRIC_COUNTER,
                               "Terminal tokens refused because they were already used", NULL);
    T.m_minted_admin = gw_metric_get("wsgate_terminal_tokens_minted_total", GW_METRIC_COUNTER,
                                     "Terminal tokens minted, by issuer", "source=\"admin\"");
    T.m_minted_demo = gw_metric_get("wsgate_terminal_tokens_minted_total", GW_METRIC_COUNTER,
                                    "Terminal tokens minted, by issuer", "source=\"demo\"");

    gw_http_register(GW_LISTENER_ADMIN, "POST", "/v1/terminal/tokens", 1, admin_mint);
    if (T.demo_upstream[0]) {
        gw_http_register(GW_LISTENER_PUBLIC, "POST", "/terminal/demo-token", 0, demo_mint);
        gw_log_line *l = gw_log_begin(GW_LOG_WARN, "DEMO TOKEN ISSUER ENABLED", NULL);
        if (l) {
            gw_log_str(l, "warning",
                       "anyone who reaches the public listener can get a shell on the demo agent "
                       "(POST /terminal/demo-token); unset GATEWAY_TERMINAL_DEMO_UPSTREAM outside demos",
                       0);
            gw_log_str(l, "upstream", T.demo_upstream, 0);
            gw_log_str(l, "allocation_id", T.demo_alloc, 0);
            gw_log_end(l);
        }
    }
    gw_http_register(GW_LISTENER_PUBLIC, "GET", "/terminal/", 0, page);
    gw_http_register(GW_LISTENER_PUBLIC, "GET", "/terminal", 0, page_redirect);
    load_assets();
    build_config_json();
    return GW_OK;
}

static int terminal_parse(json_t *o, gw_route *r, const gw_config *cfg, char *err, size_t errcap)
{
    GW_UNUSED(cfg);
    return gw_route_parse_agents(o, r, err, errcap);
}

static const char *const terminal_fields[] = {"agent_upstreams", NULL};

const gw_kind gw_kind_terminal = {
    .name = "terminal",
    .flags = GW_KIND_UPSTREAM | GW_KIND_DEFAULT_ONCE | GW_KIND_OWN_FIELDS,
    .fields = terminal_fields,
    .default_path = "/ws/terminal/",
    .parse = terminal_parse,
    .serve = serve,
};

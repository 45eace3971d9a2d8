/* sessions.c: the process's view of device session snapshots (sessions.h).
 *
 * Two chained hash indexes over the same entries: by device_session_id and
 * by token digest (a new version may change the digest: the entry moves). */
#include "store/sessions.h"

#include <jansson.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/common.h"
#include "log/log.h"
#include "metrics/metrics.h"

static void metrics_init(void);

typedef struct sentry {
    struct sentry *next_id, *next_tok;
    gw_session s;
} sentry;

#define NBUCKETS_MIN 1024u

static struct {
    pthread_mutex_t mu;
    sentry **by_id, **by_tok;
    size_t nbuckets; /* power of two */
    size_t count;
    struct {
        gw_session_revoke_fn fn;
        void *arg;
    } hooks[8];
    int nhooks;
    gw_metric *m_applied, *m_stale, *m_malformed;
} V = {.mu = PTHREAD_MUTEX_INITIALIZER};

void gw_sessions_init(void) { metrics_init(); }

static void metrics_init(void)
{
    if (V.m_applied)
        return;
    static const char help[] = "Device session snapshots received (admin API and session-events stream), by result";
    V.m_applied = gw_metric_get("wsgate_session_snapshots_total", GW_METRIC_COUNTER, help, "result=\"applied\"");
    V.m_stale = gw_metric_get("wsgate_session_snapshots_total", GW_METRIC_COUNTER, help, "result=\"stale\"");
    V.m_malformed = gw_metric_get("wsgate_session_snapshots_total", GW_METRIC_COUNTER, help, "result=\"malformed\"");
}

/* ================================ parsing =================================== */

const char *gw_session_status_str(gw_session_status s) { return s == GW_SESSION_REVOKED ? "revoked" : "active"; }

static int id_ok(const char *s, size_t n, int user)
{
    if (n == 0 || n > GW_SESSION_ID_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
            c == '.' || c == ':')
            continue;
        if (user && (c == '@' || c == '+'))
            continue;
        return 0;
    }
    return 1;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

enum { F_ID, F_USER, F_STATUS, F_TOKEN, F_VERSION, NF };
static const char *const fnames[NF] = {"device_session_id", "user_id", "status", "token_sha256", "version"};

/* Checks one field's value into out. */
static int set_field(int f, const char *v, size_t n, gw_session *out, char *why, size_t cap)
{
    switch (f) {
    case F_ID:
    case F_USER:
        if (!id_ok(v, n, f == F_USER)) {
            snprintf(why, cap, "%s must be 1..%d characters of [A-Za-z0-9._:-%s]", fnames[f], GW_SESSION_ID_MAX,
                     f == F_USER ? "@+" : "");
            return GW_ERR;
        }
        memcpy(f == F_ID ? out->device_session_id : out->user_id, v, n);
        (f == F_ID ? out->device_session_id : out->user_id)[n] = '\0';
        return GW_OK;
    case F_STATUS:
        if (n == 6 && memcmp(v, "active", 6) == 0)
            out->status = GW_SESSION_ACTIVE;
        else if (n == 7 && memcmp(v, "revoked", 7) == 0)
            out->status = GW_SESSION_REVOKED;
        else {
            snprintf(why, cap, "status must be active or revoked");
            return GW_ERR;
        }
        return GW_OK;
    case F_TOKEN:
        for (size_t i = 0; n == 64 && i < 32; i++) {
            int hi = hexval(v[2 * i]), lo = hexval(v[2 * i + 1]);
            if (hi < 0 || lo < 0)
                break;
            out->token_sha256[i] = (uint8_t)(hi << 4 | lo);
            if (i == 31)
                return GW_OK;
        }
        snprintf(why, cap, "token_sha256 must be 64 hex digits (the SHA-256 of the session's bearer)");
        return GW_ERR;
    case F_VERSION: {
        uint64_t x = 0;
        size_t i = 0;
        for (; i < n && i < 19 && v[i] >= '0' && v[i] <= '9'; i++)
            x = x * 10 + (uint64_t)(v[i] - '0');
        if (n == 0 || i != n || x == 0 || x > (uint64_t)INT64_MAX) { /* it is answered as a JSON integer */
            snprintf(why, cap, "version must be a positive integer of at most 9223372036854775807");
            return GW_ERR;
        }
        out->version = x;
        return GW_OK;
    }
    }
    return GW_ERR;
}

int gw_session_from_fields(size_t n, const char *const *names, const size_t *nlens, const char *const *vals,
                           const size_t *vlens, gw_session *out, char *why, size_t whycap)
{
    memset(out, 0, sizeof *out);
    int seen[NF] = {0};
    for (size_t i = 0; i < n; i++) {
        for (int f = 0; f < NF; f++) {
            if (nlens[i] != strlen(fnames[f]) || memcmp(names[i], fnames[f], nlens[i]) != 0)
                continue;
            if (set_field(f, vals[i], vlens[i], out, why, whycap) != GW_OK)
                return GW_ERR;
            seen[f] = 1;
        }
    }
    for (int f = 0; f < NF; f++) {
        if (!seen[f]) {
            snprintf(why, whycap, "the field %s is required", fnames[f]);
            return GW_ERR;
        }
    }
    return GW_OK;
}

int gw_session_from_json(const uint8_t *body, size_t n, gw_session *out, char *why, size_t whycap)
{
    json_error_t jerr;
    json_t *o = n ? json_loadb((const char *)body, n, JSON_REJECT_DUPLICATES, &jerr) : NULL;
    if (!o || !json_is_object(o)) {
        json_decref(o);
        snprintf(why, whycap, "the body must be a JSON object");
        return GW_ERR;
    }
    const char *names[NF], *vals[NF];
    size_t nl[NF], vl[NF], k = 0;
    char vbuf[24];
    int rc = GW_OK;
    for (int f = 0; f < NF && rc == GW_OK; f++) {
        json_t *v = json_object_get(o, fnames[f]);
        if (!v || json_is_null(v))
            continue;
        names[k] = fnames[f];
        nl[k] = strlen(fnames[f]);
        if (f == F_VERSION && json_is_integer(v)) {
            json_int_t x = json_integer_value(v);
            snprintf(vbuf, sizeof vbuf, "%lld", x > 0 ? (long long)x : 0LL);
            vals[k] = vbuf;
            vl[k] = strlen(vbuf);
        } else if (json_is_string(v) && strlen(json_string_value(v)) == json_string_length(v)) {
            vals[k] = json_string_value(v);
            vl[k] = json_string_length(v);
        } else {
            snprintf(why, whycap, "%s must be a %s", fnames[f], f == F_VERSION ? "positive integer" : "string");
            rc = GW_ERR;
            break;
        }
        k++;
    }
    if (rc == GW_OK)
        rc = gw_session_from_fields(k, names, nl, vals, vl, out, why, whycap);
    json_decref(o);
    return rc;
}

/* ================================= the view ================================= */

static uint64_t hash_id(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return h;
}

static uint64_t hash_tok(const uint8_t t[32])
{
    uint64_t v;
    memcpy(&v, t, sizeof v); /* already uniform */
    return v;
}

static void grow_locked(void)
{
    size_t nb = V.nbuckets ? V.nbuckets * 2 : NBUCKETS_MIN;
    sentry **bi = gw_calloc(nb, sizeof *bi), **bt = gw_calloc(nb, sizeof *bt);
    for (size_t b = 0; b < V.nbuckets; b++) {
        for (sentry *x = V.by_id[b], *next; x; x = next) {
            next = x->next_id;
            size_t i = hash_id(x->s.device_session_id) & (nb - 1);
            x->next_id = bi[i];
            bi[i] = x;
        }
        for (sentry *x = V.by_tok[b], *next; x; x = next) {
            next = x->next_tok;
            size_t i = hash_tok(x->s.token_sha256) & (nb - 1);
            x->next_tok = bt[i];
            bt[i] = x;
        }
    }
    gw_free(V.by_id);
    gw_free(V.by_tok);
    V.by_id = bi;
    V.by_tok = bt;
    V.nbuckets = nb;
}

static sentry *find_id_locked(const char *id)
{
    if (!V.nbuckets)
        return NULL;
    for (sentry *x = V.by_id[hash_id(id) & (V.nbuckets - 1)]; x; x = x->next_id)
        if (strcmp(x->s.device_session_id, id) == 0)
            return x;
    return NULL;
}

static void tok_unlink_locked(sentry *e)
{
    sentry **pp = &V.by_tok[hash_tok(e->s.token_sha256) & (V.nbuckets - 1)];
    while (*pp && *pp != e)
        pp = &(*pp)->next_tok;
    if (*pp)
        *pp = e->next_tok;
}

static void tok_link_locked(sentry *e)
{
    size_t i = hash_tok(e->s.token_sha256) & (V.nbuckets - 1);
    e->next_tok = V.by_tok[i];
    V.by_tok[i] = e;
}

int gw_sessions_apply(const gw_session *s)
{
    metrics_init();
    pthread_mutex_lock(&V.mu);
    sentry *e = find_id_locked(s->device_session_id);
    int was_revoked = e && e->s.status == GW_SESSION_REVOKED;
    /* A bearer or user change: what was opened with the old bearer (or for
     * the old user) must end too (review3 F4). */
    int creds_changed = e && s->version > e->s.version &&
                        (memcmp(e->s.token_sha256, s->token_sha256, sizeof s->token_sha256) != 0 ||
                         strcmp(e->s.user_id, s->user_id) != 0);
    if (e && s->version <= e->s.version) {
        pthread_mutex_unlock(&V.mu);
        gw_counter_inc(V.m_stale);
        return 0;
    }
    if (e) {
        tok_unlink_locked(e);
        e->s = *s;
        tok_link_locked(e);
    } else {
        if (V.count >= V.nbuckets)
            grow_locked();
        e = gw_calloc(1, sizeof *e);
        e->s = *s;
        size_t i = hash_id(s->device_session_id) & (V.nbuckets - 1);
        e->next_id = V.by_id[i];
        V.by_id[i] = e;
        tok_link_locked(e);
        V.count++;
    }
    int nh = V.nhooks;
    pthread_mutex_unlock(&V.mu);
    gw_counter_inc(V.m_applied);
    int revoked_now = s->status == GW_SESSION_REVOKED && !was_revoked;
    if (revoked_now || (creds_changed && s->status != GW_SESSION_REVOKED)) {
        gw_log_line *l = gw_log_begin(GW_LOG_INFO,
                                      revoked_now ? "device session revoked" : "device session credentials changed",
                                      NULL);
        if (l) {
            gw_log_str(l, "device_session_id", s->device_session_id, 0);
            gw_log_str(l, "user", s->user_id, 0);
            gw_log_int(l, "version", (int64_t)s->version, 0);
            gw_log_end(l);
        }
        for (int i = 0; i < nh; i++)
            V.hooks[i].fn(s, V.hooks[i].arg);
    }
    return 1;
}

int gw_sessions_get(const char *device_session_id, gw_session *out)
{
    pthread_mutex_lock(&V.mu);
    sentry *e = find_id_locked(device_session_id);
    if (e)
        *out = e->s;
    pthread_mutex_unlock(&V.mu);
    return e != NULL;
}

int gw_sessions_find_token(const uint8_t token_sha256[32], gw_session *out)
{
    int found = 0;
    pthread_mutex_lock(&V.mu);
    if (V.nbuckets) {
        for (sentry *x = V.by_tok[hash_tok(token_sha256) & (V.nbuckets - 1)]; x && !found; x = x->next_tok) {
            if (CRYPTO_memcmp(x->s.token_sha256, token_sha256, 32) == 0) {
                *out = x->s;
                found = 1;
            }
        }
    }
    pthread_mutex_unlock(&V.mu);
    return found;
}

size_t gw_sessions_count(void)
{
    pthread_mutex_lock(&V.mu);
    size_t n = V.count;
    pthread_mutex_unlock(&V.mu);
    return n;
}

int gw_sessions_on_revoke(gw_session_revoke_fn fn, void *arg)
{
    pthread_mutex_lock(&V.mu);
    int ok = V.nhooks < (int)GW_ARRAY_LEN(V.hooks);
    if (ok) {
        V.hooks[V.nhooks].fn = fn;
        V.hooks[V.nhooks].arg = arg;
        V.nhooks++;
    }
    pthread_mutex_unlock(&V.mu);
    return ok ? GW_OK : GW_ERR;
}

void gw_sessions_malformed(const char *source, const char *id, const char *why)
{
    metrics_init();
    gw_counter_inc(V.m_malformed);
    gw_log_line *l = gw_log_begin(GW_LOG_WARN, "session snapshot dropped: malformed", NULL);
    if (l) {
        gw_log_str(l, "source", source, 0);
        if (id)
            gw_log_str(l, "entry_id", id, 0);
        gw_log_str(l, "error", why, 0);
        gw_log_end(l);
    }
}

void gw_sessions_reset(void)
{
    pthread_mutex_lock(&V.mu);
    for (size_t b = 0; b < V.nbuckets; b++) {
        for (sentry *x = V.by_id[b], *next; x; x = next) {
            next = x->next_id;
            gw_free(x);
        }
    }
    gw_free(V.by_id);
    gw_free(V.by_tok);
    V.by_id = V.by_tok = NULL;
    V.nbuckets = 0;
    V.count = 0;
    V.nhooks = 0;
    pthread_mutex_unlock(&V.mu);
}

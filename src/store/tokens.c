/* tokens.c: token minting and the embedded one-time token store. */
#include "store/tokens.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <string.h>
#include <time.h>

#include "core/alloc.h"
#include "core/common.h"
#include "core/rand.h"

/* ================================ helpers =================================== */

static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

size_t gw_base64url_encode(const uint8_t *p, size_t n, char *out)
{
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        out[o++] = b64url[v >> 18];
        out[o++] = b64url[(v >> 12) & 63];
        out[o++] = b64url[(v >> 6) & 63];
        out[o++] = b64url[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)p[i] << 16;
        out[o++] = b64url[v >> 18];
        out[o++] = b64url[(v >> 12) & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8;
        out[o++] = b64url[v >> 18];
        out[o++] = b64url[(v >> 12) & 63];
        out[o++] = b64url[(v >> 6) & 63];
    }
    out[o] = '\0';
    return o;
}

int gw_token_well_formed(const char *tok, size_t n)
{
    if (n != GW_TOKEN_LEN)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = tok[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_'))
            return 0;
    }
    /* 32 bytes leave 4 unused bits in the last character: a canonical
     * encoding has them zero, so only one spelling of a token exists. */
    const char *last = strchr(b64url, tok[n - 1]);
    return last && ((last - b64url) & 3) == 0;
}

void gw_token_hash(const char *tok, size_t n, uint8_t out[32]) { SHA256((const unsigned char *)tok, n, out); }

const char *gw_token_result_str(gw_token_result r)
{
    switch (r) {
    case GW_TOKEN_OK: return "ok";
    case GW_TOKEN_UNKNOWN: return "unknown_token";
    case GW_TOKEN_EXPIRED: return "expired_token";
    case GW_TOKEN_REPLAYED: return "token_replayed";
    case GW_TOKEN_ALLOCATION_MISMATCH: return "allocation_mismatch";
    case GW_TOKEN_BACKEND_ERROR: return "token_store_unavailable";
    }
    return "unknown_token";
}

static uint64_t real_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void gw_token_generate(gw_token_ctx *ctx, unsigned ttl_s, uint64_t now_ms, char *token_out, uint8_t hash[32])
{
    if (ttl_s == 0)
        ttl_s = GW_TOKEN_TTL_DEFAULT_S;
    if (ttl_s > GW_TOKEN_TTL_MAX_S)
        ttl_s = GW_TOKEN_TTL_MAX_S;
    uint8_t raw[GW_TOKEN_RAW_LEN];
    gw_rand_bytes(raw, sizeof raw);
    gw_base64url_encode(raw, sizeof raw, token_out);
    OPENSSL_cleanse(raw, sizeof raw);
    gw_token_hash(token_out, GW_TOKEN_LEN, hash);
    ctx->expires_at_ms = now_ms + (uint64_t)ttl_s * 1000u;
}

int gw_token_mint(gw_token_store *s, gw_token_ctx *ctx, unsigned ttl_s, char *token_out)
{
    uint8_t h[32];
    gw_token_generate(ctx, ttl_s, s->now_ms(), token_out, h);
    if (s->ops->put(s, h, ctx) != GW_OK) {
        OPENSSL_cleanse(token_out, GW_TOKEN_LEN);
        token_out[0] = '\0';
        return GW_ERR;
    }
    return GW_OK;
}

gw_token_result gw_token_consume(gw_token_store *s, const char *tok, size_t n, const char *allocation_id,
                                 gw_token_ctx *out)
{
    memset(out, 0, sizeof *out);
    if (!gw_token_well_formed(tok, n))
        return GW_TOKEN_UNKNOWN;
    uint8_t h[32];
    gw_token_hash(tok, n, h);
    return s->ops->consume(s, h, allocation_id, out);
}

void gw_token_store_free(gw_token_store *s)
{
    if (s)
        s->ops->free(s);
}

/* ============================== embedded store ============================== */

/* A context is kept packed (its strings back to back) so a minted token costs
 * its real size, not the fixed-size gw_token_ctx. */
#define NFIELDS 7

typedef struct entry {
    struct entry *next;
    uint8_t hash[32];
    uint8_t used;           /* consumed (or burned): a tombstone */
    uint64_t expires_at_ms; /* the token's expiry (tombstones keep it) */
    char *packed;           /* live entries: the context; NULL for tombstones */
} entry;

typedef struct embedded {
    gw_token_store base;
    pthread_mutex_t mu;
    entry **buckets;
    size_t nbuckets; /* power of two */
    size_t count;
    size_t max_entries;
    uint64_t next_sweep_ms;
} embedded;

#define SWEEP_EVERY_MS 1000u

static void ctx_fields(gw_token_ctx *c, char *f[NFIELDS], size_t cap[NFIELDS])
{
    f[0] = c->allocation_id, cap[0] = sizeof c->allocation_id;
    f[1] = c->upstream, cap[1] = sizeof c->upstream;
    f[2] = c->user_id, cap[2] = sizeof c->user_id;
    f[3] = c->session_id, cap[3] = sizeof c->session_id;
    f[4] = c->region, cap[4] = sizeof c->region;
    f[5] = c->tenant_id, cap[5] = sizeof c->tenant_id;
    f[6] = c->project_id, cap[6] = sizeof c->project_id;
}

static char *pack(const gw_token_ctx *ctx, size_t *total_out)
{
    char *f[NFIELDS];
    size_t cap[NFIELDS], total = 0, len[NFIELDS];
    ctx_fields((gw_token_ctx *)ctx, f, cap);
    for (int i = 0; i < NFIELDS; i++) {
        len[i] = strnlen(f[i], cap[i] - 1);
        total += len[i] + 1;
    }
    char *p = gw_malloc(total), *o = p;
    for (int i = 0; i < NFIELDS; i++) {
        memcpy(o, f[i], len[i]);
        o[len[i]] = '\0';
        o += len[i] + 1;
    }
    if (total_out)
        *total_out = total;
    return p;
}

char *gw_token_ctx_pack(const gw_token_ctx *ctx, size_t *n) { return pack(ctx, n); }

int gw_token_ctx_unpack(const char *p, size_t n, uint64_t expires_at_ms, gw_token_ctx *out)
{
    char *f[NFIELDS];
    size_t cap[NFIELDS];
    memset(out, 0, sizeof *out);
    ctx_fields(out, f, cap);
    for (int i = 0; i < NFIELDS; i++) {
        const char *end = memchr(p, '\0', n);
        if (!end || (size_t)(end - p) >= cap[i]) {
            OPENSSL_cleanse(out, sizeof *out);
            return GW_ERR;
        }
        size_t k = (size_t)(end - p);
        memcpy(f[i], p, k + 1);
        p += k + 1;
        n -= k + 1;
    }
    out->expires_at_ms = expires_at_ms;
    return n == 0 ? GW_OK : GW_ERR;
}

static void unpack(const char *p, uint64_t expires, gw_token_ctx *out)
{
    char *f[NFIELDS];
    size_t cap[NFIELDS];
    ctx_fields(out, f, cap);
    for (int i = 0; i < NFIELDS; i++) {
        size_t n = strlen(p);
        memcpy(f[i], p, n + 1); /* packed from fields of the same sizes */
        p += n + 1;
    }
    out->expires_at_ms = expires;
}

static size_t bucket_of(const embedded *e, const uint8_t h[32])
{
    /* The key is already a uniform hash: its first bytes index the table. */
    uint64_t v;
    memcpy(&v, h, sizeof v);
    return (size_t)v & (e->nbuckets - 1);
}

static void entry_free(entry *x)
{
    if (x->packed) {
        OPENSSL_cleanse(x->packed, strlen(x->packed)); /* not secret, but not needed either */
        gw_free(x->packed);
    }
    gw_free(x);
}

static size_t sweep_locked(embedded *e, uint64_t now)
{
    size_t gone = 0;
    for (size_t b = 0; b < e->nbuckets; b++) {
        entry **pp = &e->buckets[b];
        while (*pp) {
            entry *x = *pp;
            if (now >= x->expires_at_ms + GW_TOKEN_TOMBSTONE_MARGIN_MS) {
                *pp = x->next;
                entry_free(x);
                gone++;
            } else {
                pp = &x->next;
            }
        }
    }
    e->count -= gone;
    e->next_sweep_ms = now + SWEEP_EVERY_MS;
    return gone;
}

static void maybe_sweep(embedded *e, uint64_t now)
{
    if (now >= e->next_sweep_ms)
        sweep_locked(e, now);
}

static void grow_locked(embedded *e)
{
    size_t nb = e->nbuckets * 2;
    entry **nbk = gw_calloc(nb, sizeof *nbk);
    for (size_t b = 0; b < e->nbuckets; b++) {
        entry *x = e->buckets[b];
        while (x) {
            entry *next = x->next;
            uint64_t v;
            memcpy(&v, x->hash, sizeof v);
            size_t i = (size_t)v & (nb - 1);
            x->next = nbk[i];
            nbk[i] = x;
            x = next;
        }
    }
    gw_free(e->buckets);
    e->buckets = nbk;
    e->nbuckets = nb;
}

static entry *find_locked(embedded *e, const uint8_t h[32])
{
    for (entry *x = e->buckets[bucket_of(e, h)]; x; x = x->next)
        if (CRYPTO_memcmp(x->hash, h, 32) == 0)
            return x;
    return NULL;
}

static int emb_put(gw_token_store *s, const uint8_t hash[32], const gw_token_ctx *ctx)
{
    embedded *e = (embedded *)s;
    pthread_mutex_lock(&e->mu);
    uint64_t now = e->base.now_ms();
    maybe_sweep(e, now);
    if (e->count >= e->max_entries)
        sweep_locked(e, now);
    if (e->count >= e->max_entries || find_locked(e, hash)) {
        /* Full, or a 256-bit collision (never in practice): refuse rather
         * than overwrite. */
        pthread_mutex_unlock(&e->mu);
        return GW_ERR;
    }
    if (e->count >= e->nbuckets)
        grow_locked(e);
    entry *x = gw_calloc(1, sizeof *x);
    memcpy(x->hash, hash, 32);
    x->expires_at_ms = ctx->expires_at_ms;
    x->packed = pack(ctx, NULL);
    size_t b = bucket_of(e, hash);
    x->next = e->buckets[b];
    e->buckets[b] = x;
    e->count++;
    pthread_mutex_unlock(&e->mu);
    return GW_OK;
}

static gw_token_result emb_consume(gw_token_store *s, const uint8_t hash[32], const char *allocation_id,
                                   gw_token_ctx *out)
{
    embedded *e = (embedded *)s;
    gw_token_result r;
    pthread_mutex_lock(&e->mu);
    uint64_t now = e->base.now_ms();
    maybe_sweep(e, now);
    entry *x = find_locked(e, hash);
    if (!x || now >= x->expires_at_ms + GW_TOKEN_TOMBSTONE_MARGIN_MS) {
        r = GW_TOKEN_UNKNOWN;
    } else if (x->used) {
        r = GW_TOKEN_REPLAYED;
    } else if (now >= x->expires_at_ms) {
        r = GW_TOKEN_EXPIRED;
        unpack(x->packed, x->expires_at_ms, out); /* for the refusal's log line (its resource) */
    } else {
        unpack(x->packed, x->expires_at_ms, out);
        /* Mismatch burns the token too: a token presented on the wrong
         * path may have leaked, and checking before consuming would let
         * two requests race past the check. */
        r = allocation_id && strcmp(out->allocation_id, allocation_id) != 0 ? GW_TOKEN_ALLOCATION_MISMATCH
                                                                             : GW_TOKEN_OK;
        x->used = 1;
        gw_free(x->packed);
        x->packed = NULL;
    }
    pthread_mutex_unlock(&e->mu);
    return r;
}

static size_t emb_sweep(gw_token_store *s)
{
    embedded *e = (embedded *)s;
    pthread_mutex_lock(&e->mu);
    size_t n = sweep_locked(e, e->base.now_ms());
    pthread_mutex_unlock(&e->mu);
    return n;
}

static size_t emb_count(gw_token_store *s)
{
    embedded *e = (embedded *)s;
    pthread_mutex_lock(&e->mu);
    size_t n = e->count;
    pthread_mutex_unlock(&e->mu);
    return n;
}

static void emb_free(gw_token_store *s)
{
    embedded *e = (embedded *)s;
    for (size_t b = 0; b < e->nbuckets; b++) {
        entry *x = e->buckets[b];
        while (x) {
            entry *next = x->next;
            entry_free(x);
            x = next;
        }
    }
    gw_free(e->buckets);
    pthread_mutex_destroy(&e->mu);
    gw_free(e);
}

static const gw_token_store_ops embedded_ops = {"embedded", emb_put, emb_consume, emb_sweep, emb_count, emb_free};

gw_token_store *gw_token_store_embedded(uint64_t (*now_ms)(void), size_t max_entries)
{
    embedded *e = gw_calloc(1, sizeof *e);
    e->base.ops = &embedded_ops;
    pthread_mutex_init(&e->mu, NULL);
    e->nbuckets = 1024;
    e->buckets = gw_calloc(e->nbuckets, sizeof *e->buckets);
    e->max_entries = max_entries ? max_entries : 1000000;
    e->base.now_ms = now_ms ? now_ms : real_wall_ms;
    return &e->base;
}

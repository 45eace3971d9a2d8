/* tokens.h: one-time terminal tokens (DESIGN.md section 4).
 *
 * A token is 32 random bytes, base64url without padding (43 characters). The
 * store never sees the token itself: only its SHA-256, with the context the
 * token grants (allocation, agent URL, user, session, resource fields) and
 * its expiry. Consumption is atomic: exactly one caller gets GW_TOKEN_OK for
 * a token; the entry then becomes a tombstone kept until at least the
 * original expiry plus GW_TOKEN_TOMBSTONE_MARGIN_MS, so a second use is told
 * apart (GW_TOKEN_REPLAYED) from a token that never existed.
 *
 * This is the synchronous token table (the embedded backend's engine,
 * behind a small vtable, gw_token_store_ops). The gateway reaches tokens
 * through the asynchronous store seam (store/store.h), which a Redis store
 * (GETDEL plus a tombstone key, or one Lua script) implements next to the
 * embedded one. Every backend must pass tests/unit/test_tokens.c.
 *
 * Threading: a store is shared by every worker; its operations are
 * thread-safe. */
#ifndef GW_TOKENS_H
#define GW_TOKENS_H

#include <stddef.h>
#include <stdint.h>

#define GW_TOKEN_RAW_LEN 32                      /* random bytes in a token */
#define GW_TOKEN_LEN 43                          /* base64url characters, no padding */
#define GW_TOKEN_TTL_DEFAULT_S 60
#define GW_TOKEN_TTL_MAX_S 600
#define GW_TOKEN_TOMBSTONE_MARGIN_MS (5u * 60 * 1000) /* kept past expiry: expired/replayed stay distinct */

/* Field limits (bytes, without the NUL). */
#define GW_TOKEN_ID_MAX 128       /* allocation_id, user_id, session_id, tenant_id, project_id */
#define GW_TOKEN_REGION_MAX 64
#define GW_TOKEN_UPSTREAM_MAX 1023

typedef enum gw_token_result {
    GW_TOKEN_OK = 0,                /* consumed now: ctx filled */
    GW_TOKEN_UNKNOWN,               /* never minted here, malformed, or forgotten long after expiry */
    GW_TOKEN_EXPIRED,               /* minted, not used, past its expiry: ctx filled (for logs) */
    GW_TOKEN_REPLAYED,              /* already consumed (or burned by a mismatched use) */
    GW_TOKEN_ALLOCATION_MISMATCH,   /* valid but bound to another allocation: now burned */
    GW_TOKEN_BACKEND_ERROR,         /* the store could not answer: fail closed */
} gw_token_result;

/* What a token grants. Strings are NUL-terminated; empty when absent. */
typedef struct gw_token_ctx {
    char allocation_id[GW_TOKEN_ID_MAX + 1];
    char upstream[GW_TOKEN_UPSTREAM_MAX + 1]; /* the agent's URL */
    char user_id[GW_TOKEN_ID_MAX + 1];
    char session_id[GW_TOKEN_ID_MAX + 1];
    char region[GW_TOKEN_REGION_MAX + 1];
    char tenant_id[GW_TOKEN_ID_MAX + 1];
    char project_id[GW_TOKEN_ID_MAX + 1];
    uint64_t expires_at_ms;                   /* wall clock, ms since the epoch */
} gw_token_ctx;

typedef struct gw_token_store gw_token_store;

typedef struct gw_token_store_ops {
    const char *name; /* "embedded", "redis" */
    /* Stores ctx (with ctx->expires_at_ms set) under hash. GW_OK, or GW_ERR
     * when the store is full or unreachable (nothing stored). */
    int (*put)(gw_token_store *s, const uint8_t hash[32], const gw_token_ctx *ctx);
    /* Atomically consumes the entry under hash. allocation_id is the one the
     * client asked for (NULL: do not check). On GW_TOKEN_OK *out gets the
     * context; on ALLOCATION_MISMATCH and REPLAYED *out gets whatever context
     * the store still has (possibly empty strings) for logging. */
    gw_token_result (*consume)(gw_token_store *s, const uint8_t hash[32], const char *allocation_id,
                               gw_token_ctx *out);
    /* Forgets entries past expiry + margin; returns how many went. */
    size_t (*sweep)(gw_token_store *s);
    /* Entries held (live and tombstones), for metrics and tests. */
    size_t (*count)(gw_token_store *s);
    void (*free)(gw_token_store *s);
} gw_token_store_ops;

struct gw_token_store {
    const gw_token_store_ops *ops;
    uint64_t (*now_ms)(void); /* the store's wall clock (ms since the epoch); expiries use it */
};

/* The embedded in-memory store: a mutex-protected hash table of SHA-256
 * digests. now_ms is the wall clock (NULL: the real one; tests pass a fake).
 * max_entries bounds memory (0: 1,000,000): put fails beyond it, after a
 * sweep. Never returns NULL (aborts on OOM). */
gw_token_store *gw_token_store_embedded(uint64_t (*now_ms)(void), size_t max_entries);
void gw_token_store_free(gw_token_store *s);

/* Mints a token for ctx: fresh random bytes, base64url into token_out
 * (GW_TOKEN_LEN + 1 bytes, NUL-terminated), ctx->expires_at_ms set to now +
 * ttl_s (ttl_s 0: the default; clamped to [1, GW_TOKEN_TTL_MAX_S]). Only the
 * digest is stored. GW_OK or GW_ERR (store full or down). */
int gw_token_mint(gw_token_store *s, gw_token_ctx *ctx, unsigned ttl_s, char *token_out);
/* The first half of a mint: fresh random bytes, base64url into token_out,
 * their digest into hash, ctx->expires_at_ms = now_ms + ttl (ttl_s as
 * gw_token_mint). The caller stores hash (synchronously or through
 * store/store.h). */
void gw_token_generate(gw_token_ctx *ctx, unsigned ttl_s, uint64_t now_ms, char *token_out, uint8_t hash[32]);
/* Consumes the token text tok[0..n). A string that cannot be a token
 * (length, alphabet) is GW_TOKEN_UNKNOWN without touching the store. */
gw_token_result gw_token_consume(gw_token_store *s, const char *tok, size_t n, const char *allocation_id,
                                 gw_token_ctx *out);
/* 1 when tok[0..n) has the shape of a token (43 base64url characters). */
int gw_token_well_formed(const char *tok, size_t n);
/* A context's strings back to back, each NUL-terminated (a remote store
 * keeps this next to the digest); *n gets the length. gw_free it. */
char *gw_token_ctx_pack(const gw_token_ctx *ctx, size_t *n);
/* Reads what gw_token_ctx_pack wrote (p[0..n)) into out, with
 * expires_at_ms. GW_ERR when it is not that shape (out wiped). */
int gw_token_ctx_unpack(const char *p, size_t n, uint64_t expires_at_ms, gw_token_ctx *out);
/* SHA-256 of the token text. */
void gw_token_hash(const char *tok, size_t n, uint8_t out[32]);
/* base64url without padding of p[0..n) into out (4*ceil(n/3) + 1 bytes);
 * returns the length written. */
size_t gw_base64url_encode(const uint8_t *p, size_t n, char *out);
/* Stable names: "ok", "unknown_token", "expired_token", "token_replayed",
 * "allocation_mismatch", "token_store_unavailable" (the error codes and
 * metric reasons of the terminal gateway). */
const char *gw_token_result_str(gw_token_result r);

#endif

/* test_tokens.c: one-time terminal tokens and the embedded store. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "store/tokens.h"
#include "test.h"

static _Atomic uint64_t fake_now = 1700000000000ull;
static uint64_t fake_clock(void) { return atomic_load(&fake_now); }

static gw_token_ctx ctx_for(const char *alloc)
{
    gw_token_ctx c;
    memset(&c, 0, sizeof c);
    snprintf(c.allocation_id, sizeof c.allocation_id, "%s", alloc);
    snprintf(c.upstream, sizeof c.upstream, "ws://127.0.0.1:7681/");
    snprintf(c.user_id, sizeof c.user_id, "alice");
    snprintf(c.session_id, sizeof c.session_id, "sess-1");
    snprintf(c.region, sizeof c.region, "uae-north");
    snprintf(c.tenant_id, sizeof c.tenant_id, "t1");
    snprintf(c.project_id, sizeof c.project_id, "p1");
    return c;
}

static void test_base64url(void)
{
    char out[64];
    /* RFC 4648 test vectors, padding removed, URL alphabet. */
    is_int(gw_base64url_encode((const uint8_t *)"", 0, out), 0, "empty");
    gw_base64url_encode((const uint8_t *)"f", 1, out);
    is_str(out, "Zg", "f");
    gw_base64url_encode((const uint8_t *)"fo", 2, out);
    is_str(out, "Zm8", "fo");
    gw_base64url_encode((const uint8_t *)"foo", 3, out);
    is_str(out, "Zm9v", "foo");
    gw_base64url_encode((const uint8_t *)"foob", 4, out);
    is_str(out, "Zm9vYg", "foob");
    const uint8_t hi[] = {0xfb, 0xff, 0xbf};
    gw_base64url_encode(hi, 3, out);
    is_str(out, "-_-_", "URL-safe alphabet");
    uint8_t raw[32];
    memset(raw, 0xff, sizeof raw);
    is_int(gw_base64url_encode(raw, 32, out), GW_TOKEN_LEN, "32 bytes -> 43 chars");
    ok(gw_token_well_formed(out, GW_TOKEN_LEN), "all-ones token is canonical");
}

static void test_well_formed(void)
{
    char t[GW_TOKEN_LEN + 1];
    memset(t, 'A', GW_TOKEN_LEN);
    t[GW_TOKEN_LEN] = '\0';
    ok(gw_token_well_formed(t, GW_TOKEN_LEN), "43 A's");
    ok(!gw_token_well_formed(t, GW_TOKEN_LEN - 1), "too short");
    t[5] = '+';
    ok(!gw_token_well_formed(t, GW_TOKEN_LEN), "standard base64 '+' refused");
    t[5] = 'A';
    t[GW_TOKEN_LEN - 1] = 'B'; /* non-zero padding bits */
    ok(!gw_token_well_formed(t, GW_TOKEN_LEN), "non-canonical last char refused");
    t[GW_TOKEN_LEN - 1] = 'E';
    ok(gw_token_well_formed(t, GW_TOKEN_LEN), "canonical last char");
}

static void test_result_names(void)
{
    is_str(gw_token_result_str(GW_TOKEN_OK), "ok", "ok");
    is_str(gw_token_result_str(GW_TOKEN_UNKNOWN), "unknown_token", "unknown");
    is_str(gw_token_result_str(GW_TOKEN_EXPIRED), "expired_token", "expired");
    is_str(gw_token_result_str(GW_TOKEN_REPLAYED), "token_replayed", "replayed");
    is_str(gw_token_result_str(GW_TOKEN_ALLOCATION_MISMATCH), "allocation_mismatch", "mismatch");
}

static void test_mint_consume(void)
{
    gw_token_store *s = gw_token_store_embedded(fake_clock, 0);
    gw_token_ctx c = ctx_for("alloc-1"), got;
    char tok[GW_TOKEN_LEN + 1], tok2[GW_TOKEN_LEN + 1];
    is_int(gw_token_mint(s, &c, 0, tok), GW_OK, "mint");
    is_int(strlen(tok), GW_TOKEN_LEN, "token length");
    ok(gw_token_well_formed(tok, strlen(tok)), "token well formed");
    is_int(c.expires_at_ms, fake_clock() + 60000, "default ttl 60 s");
    is_int(gw_token_mint(s, &c, 0, tok2), GW_OK, "second mint");
    ok(strcmp(tok, tok2) != 0, "tokens differ");
    is_int(s->ops->count(s), 2, "two entries");

    is_int(gw_token_consume(s, tok, strlen(tok), "alloc-1", &got), GW_TOKEN_OK, "first use ok");
    is_str(got.allocation_id, "alloc-1", "ctx allocation");
    is_str(got.upstream, "ws://127.0.0.1:7681/", "ctx upstream");
    is_str(got.user_id, "alice", "ctx user");
    is_str(got.session_id, "sess-1", "ctx session");
    is_str(got.region, "uae-north", "ctx region");
    is_str(got.tenant_id, "t1", "ctx tenant");
    is_str(got.project_id, "p1", "ctx project");
    is_int(got.expires_at_ms, c.expires_at_ms, "ctx expiry");
    is_int(gw_token_consume(s, tok, strlen(tok), "alloc-1", &got), GW_TOKEN_REPLAYED, "second use is a replay");
    is_int(gw_token_consume(s, tok, strlen(tok), NULL, &got), GW_TOKEN_REPLAYED, "replay without allocation check");
    is_int(s->ops->count(s), 2, "tombstone kept");

    /* Unknown: well-formed but never minted; malformed strings. */
    char fake[GW_TOKEN_LEN + 1];
    memcpy(fake, tok2, sizeof fake);
    fake[0] = fake[0] == 'A' ? 'B' : 'A';
    is_int(gw_token_consume(s, fake, GW_TOKEN_LEN, "alloc-1", &got), GW_TOKEN_UNKNOWN, "never minted");
    is_int(gw_token_consume(s, "short", 5, "alloc-1", &got), GW_TOKEN_UNKNOWN, "malformed");
    is_int(gw_token_consume(s, tok2, GW_TOKEN_LEN - 1, "alloc-1", &got), GW_TOKEN_UNKNOWN, "truncated");
    /* The prefix check did not burn the real one. */
    is_int(gw_token_consume(s, tok2, GW_TOKEN_LEN, "alloc-1", &got), GW_TOKEN_OK, "real token still valid");
    gw_token_store_free(s);
}

static void test_ttl(void)
{
    gw_token_store *s = gw_token_store_embedded(fake_clock, 0);
    gw_token_ctx c = ctx_for("a"), got;
    char tok[GW_TOKEN_LEN + 1], long_tok[GW_TOKEN_LEN + 1], never[GW_TOKEN_LEN + 1];
    gw_token_mint(s, &c, 1, tok);
    is_int(c.expires_at_ms, fake_clock() + 1000, "ttl 1 s");
    gw_token_mint(s, &c, 100000, long_tok);
    is_int(c.expires_at_ms, fake_clock() + 600000, "ttl clamped to 600 s");
    gw_token_mint(s, &c, 1, never);

    atomic_fetch_add(&fake_now, 999);
    is_int(gw_token_consume(s, tok, GW_TOKEN_LEN, "a", &got), GW_TOKEN_OK, "used just before expiry");
    atomic_fetch_add(&fake_now, 1);
    is_int(gw_token_consume(s, never, GW_TOKEN_LEN, "a", &got), GW_TOKEN_EXPIRED, "at expiry: expired");
    is_str(got.allocation_id, "a", "an expired token still tells its allocation (for the refusal's log)");
    is_int(gw_token_consume(s, never, GW_TOKEN_LEN, "a", &got), GW_TOKEN_EXPIRED, "expired stays expired");
    is_int(gw_token_consume(s, tok, GW_TOKEN_LEN, "a", &got), GW_TOKEN_REPLAYED, "used then expired: replay");

    /* Tombstones and expired entries outlive the expiry by the margin. */
    atomic_fetch_add(&fake_now, GW_TOKEN_TOMBSTONE_MARGIN_MS - 1);
    is_int(gw_token_consume(s, tok, GW_TOKEN_LEN, "a", &got), GW_TOKEN_REPLAYED, "replay within margin");
    is_int(s->ops->sweep(s), 0, "nothing swept inside the margin");
    atomic_fetch_add(&fake_now, 1);
    is_int(gw_token_consume(s, tok, GW_TOKEN_LEN, "a", &got), GW_TOKEN_UNKNOWN, "forgotten after the margin");
    is_int(s->ops->sweep(s), 2, "two swept (used + expired)");
    is_int(s->ops->count(s), 1, "the 600 s token remains");
    is_int(gw_token_consume(s, long_tok, GW_TOKEN_LEN, "a", &got), GW_TOKEN_OK, "600 s token still valid");
    gw_token_store_free(s);
}

static void test_mismatch(void)
{
    gw_token_store *s = gw_token_store_embedded(fake_clock, 0);
    gw_token_ctx c = ctx_for("alloc-A"), got;
    char tok[GW_TOKEN_LEN + 1];
    gw_token_mint(s, &c, 0, tok);
    is_int(gw_token_consume(s, tok, GW_TOKEN_LEN, "alloc-B", &got), GW_TOKEN_ALLOCATION_MISMATCH, "other allocation");
    is_str(got.allocation_id, "alloc-A", "mismatch reports the bound allocation");
    is_int(gw_token_consume(s, tok, GW_TOKEN_LEN, "alloc-A", &got), GW_TOKEN_REPLAYED,
           "a mismatched use burned the token");
    gw_token_store_free(s);
}

static void test_full_and_sweep(void)
{
    gw_token_store *s = gw_token_store_embedded(fake_clock, 3);
    gw_token_ctx c = ctx_for("a");
    char tok[GW_TOKEN_LEN + 1];
    for (int i = 0; i < 3; i++)
        is_int(gw_token_mint(s, &c, 1, tok), GW_OK, "mint %d", i);
    is_int(gw_token_mint(s, &c, 1, tok), GW_ERR, "full store refuses");
    is_str(tok, "", "no token handed out when refused");
    atomic_fetch_add(&fake_now, 1000 + GW_TOKEN_TOMBSTONE_MARGIN_MS);
    is_int(gw_token_mint(s, &c, 1, tok), GW_OK, "a sweep on a full store makes room");
    is_int(s->ops->count(s), 1, "old entries swept");
    gw_token_store_free(s);
}

static void test_many_grow(void)
{
    gw_token_store *s = gw_token_store_embedded(fake_clock, 0);
    gw_token_ctx c = ctx_for("g"), got;
    enum { N = 5000 };
    char(*toks)[GW_TOKEN_LEN + 1] = calloc(N, sizeof *toks);
    int minted = 0, used = 0;
    for (int i = 0; i < N; i++)
        minted += gw_token_mint(s, &c, 0, toks[i]) == GW_OK;
    is_int(minted, N, "minted past several table growths");
    for (int i = 0; i < N; i++)
        used += gw_token_consume(s, toks[i], GW_TOKEN_LEN, "g", &got) == GW_TOKEN_OK;
    is_int(used, N, "every token found after growth");
    free(toks);
    gw_token_store_free(s);
}

/* Concurrency: several threads race to consume the same tokens (while
 * another keeps minting): each token is accepted exactly once, every other
 * attempt is a replay. */
enum { CT_TOKENS = 2000, CT_THREADS = 6 };
static char ct_toks[CT_TOKENS][GW_TOKEN_LEN + 1];
static gw_token_store *ct_store;
static atomic_int ct_ok, ct_replay, ct_other;
static atomic_int ct_go;

static void *racer(void *arg)
{
    size_t off = (size_t)(uintptr_t)arg;
    while (!atomic_load(&ct_go))
        ;
    gw_token_ctx got;
    for (size_t k = 0; k < CT_TOKENS; k++) {
        size_t i = (k + off * 331) % CT_TOKENS;
        gw_token_result r = gw_token_consume(ct_store, ct_toks[i], GW_TOKEN_LEN, "race", &got);
        if (r == GW_TOKEN_OK)
            atomic_fetch_add(&ct_ok, 1);
        else if (r == GW_TOKEN_REPLAYED)
            atomic_fetch_add(&ct_replay, 1);
        else
            atomic_fetch_add(&ct_other, 1);
    }
    return NULL;
}

static void *minter(void *arg)
{
    GW_UNUSED(arg);
    gw_token_ctx c = ctx_for("other");
    char tok[GW_TOKEN_LEN + 1];
    while (!atomic_load(&ct_go))
        ;
    for (int i = 0; i < 3000; i++)
        gw_token_mint(ct_store, &c, 0, tok); /* forces growth under the racers */
    return NULL;
}

static void test_concurrency(void)
{
    ct_store = gw_token_store_embedded(NULL, 0);
    gw_token_ctx c = ctx_for("race");
    for (int i = 0; i < CT_TOKENS; i++)
        gw_token_mint(ct_store, &c, 0, ct_toks[i]);
    pthread_t th[CT_THREADS + 1];
    for (int i = 0; i < CT_THREADS; i++)
        pthread_create(&th[i], NULL, racer, (void *)(uintptr_t)i);
    pthread_create(&th[CT_THREADS], NULL, minter, NULL);
    atomic_store(&ct_go, 1);
    for (int i = 0; i <= CT_THREADS; i++)
        pthread_join(th[i], NULL);
    is_int(atomic_load(&ct_ok), CT_TOKENS, "each token accepted exactly once");
    is_int(atomic_load(&ct_replay), CT_TOKENS * (CT_THREADS - 1), "every other attempt a replay");
    is_int(atomic_load(&ct_other), 0, "no other outcome");
    is_int(ct_store->ops->count(ct_store), CT_TOKENS + 3000, "all entries held");
    gw_token_store_free(ct_store);
}

int main(void)
{
    TEST_RUN(test_base64url);
    TEST_RUN(test_well_formed);
    TEST_RUN(test_result_names);
    TEST_RUN(test_mint_consume);
    TEST_RUN(test_ttl);
    TEST_RUN(test_mismatch);
    TEST_RUN(test_full_and_sweep);
    TEST_RUN(test_many_grow);
    TEST_RUN(test_concurrency);
    return test_done();
}

/* test_store.c: the asynchronous store seam (store/store.h) over the
 * embedded store: answers come through the loop, never inline, in the order
 * asked, exactly once; cancel silences them; the test hook's delay makes a
 * late store. */
#include <string.h>

#include "core/common.h"
#include "loop/loop.h"
#include "store/store.h"
#include "test.h"

static gw_loop *L;
static gw_token_store *table;

/* What the callbacks saw, in order. */
static int seen[16], nseen;
static gw_token_result seen_res[16];
static char seen_user[16][GW_TOKEN_ID_MAX + 1];
static int seen_rc[16];

static void on_consume(void *ud, gw_token_result res, const gw_token_ctx *ctx)
{
    int i = nseen++;
    seen[i] = (int)(intptr_t)ud;
    seen_res[i] = res;
    snprintf(seen_user[i], sizeof seen_user[i], "%s", ctx->user_id);
}

static void on_put(void *ud, int rc)
{
    int i = nseen++;
    seen[i] = (int)(intptr_t)ud;
    seen_rc[i] = rc;
}

static void stop_timer(gw_timer *t)
{
    GW_UNUSED(t);
    gw_loop_stop(L);
}

/* Runs the loop for about ms milliseconds. */
static void run_for(uint64_t ms)
{
    gw_timer t = {.cb = stop_timer};
    gw_timer_start(L, &t, ms);
    gw_loop_run(L);
    gw_timer_stop(L, &t);
}

static gw_token_ctx ctx_for(const char *alloc, const char *user)
{
    gw_token_ctx c;
    memset(&c, 0, sizeof c);
    snprintf(c.allocation_id, sizeof c.allocation_id, "%s", alloc);
    snprintf(c.upstream, sizeof c.upstream, "ws://127.0.0.1:7681/");
    snprintf(c.user_id, sizeof c.user_id, "%s", user);
    return c;
}

static void setup(void) { nseen = 0; }

static void test_answers_through_the_loop(void)
{
    setup();
    gw_store *s = gw_store_embedded(table, 0);
    is_str(s->ops->name, "embedded", "name");
    gw_token_ctx c = ctx_for("a1", "alice");
    char tok[GW_TOKEN_LEN + 1];
    gw_store_op *op = gw_store_mint(s, L, &c, 60, tok, on_put, (void *)1);
    ok(op != NULL, "mint returns a handle");
    is_int((long long)strlen(tok), GW_TOKEN_LEN, "the token text is there at once");
    is_int(nseen, 0, "the mint's answer is not delivered inline");
    run_for(1);
    ok(nseen == 1 && seen[0] == 1 && seen_rc[0] == GW_OK, "mint answered GW_OK through the loop");

    op = gw_store_consume(s, L, tok, strlen(tok), "a1", on_consume, (void *)2);
    ok(op != NULL, "consume returns a handle");
    is_int(nseen, 1, "the consume's answer is not delivered inline");
    run_for(1);
    ok(nseen == 2 && seen[1] == 2 && seen_res[1] == GW_TOKEN_OK, "consumed");
    is_str(seen_user[1], "alice", "with the token's context");

    gw_store_consume(s, L, tok, strlen(tok), "a1", on_consume, (void *)3);
    gw_store_consume(s, L, "short", 5, "a1", on_consume, (void *)4);
    run_for(1);
    ok(nseen == 4 && seen_res[2] == GW_TOKEN_REPLAYED, "a second use is a replay");
    ok(seen_res[3] == GW_TOKEN_UNKNOWN, "a malformed token is unknown, also through the loop");
    gw_store_free(s);
}

static void test_order_and_once(void)
{
    setup();
    gw_store *s = gw_store_embedded(table, 0);
    char tok[8][GW_TOKEN_LEN + 1];
    for (int i = 0; i < 8; i++) {
        gw_token_ctx c = ctx_for("a2", "bob");
        gw_store_mint(s, L, &c, 60, tok[i], on_put, (void *)(intptr_t)(10 + i));
    }
    for (int i = 0; i < 8; i++)
        gw_store_consume(s, L, tok[i], GW_TOKEN_LEN, "a2", on_consume, (void *)(intptr_t)(20 + i));
    run_for(1);
    run_for(1);
    is_int(nseen, 16, "each operation answered exactly once");
    int in_order = 1;
    for (int i = 0; i < 8; i++)
        in_order &= seen[i] == 10 + i && seen[8 + i] == 20 + i && seen_res[8 + i] == GW_TOKEN_OK;
    ok(in_order, "answers come in the order the operations were started");
    gw_store_free(s);
}

static void test_cancel(void)
{
    setup();
    gw_store *s = gw_store_embedded(table, 0);
    gw_token_ctx c = ctx_for("a3", "carol");
    char tok[GW_TOKEN_LEN + 1];
    gw_store_mint(s, L, &c, 60, tok, on_put, (void *)1);
    run_for(1);
    gw_store_op *op = gw_store_consume(s, L, tok, GW_TOKEN_LEN, "a3", on_consume, (void *)2);
    gw_store_cancel(s, op);
    run_for(2);
    is_int(nseen, 1, "a cancelled consume never calls back");
    gw_store_consume(s, L, tok, GW_TOKEN_LEN, "a3", on_consume, (void *)3);
    run_for(1);
    ok(nseen == 2 && seen_res[1] == GW_TOKEN_REPLAYED, "the cancelled consume still burned the token (fail closed)");
    gw_store_free(s);
}

/* The test hook: a store that answers late. The answer waits for its delay;
 * a caller whose deadline passes first cancels, and the late answer (a
 * consumed token's context) is dropped and wiped without a callback. */
static void test_late_store(void)
{
    setup();
    gw_store *s = gw_store_embedded(table, 40);
    gw_token_ctx c = ctx_for("a4", "dave");
    char tok[GW_TOKEN_LEN + 1], tok2[GW_TOKEN_LEN + 1];
    gw_store_mint(s, L, &c, 60, tok, on_put, (void *)1);
    c = ctx_for("a4", "dave");
    gw_store_mint(s, L, &c, 60, tok2, on_put, (void *)2);
    run_for(5);
    is_int(nseen, 0, "nothing answered before the delay");
    run_for(80);
    is_int(nseen, 2, "both mints answered after it");

    uint64_t t0 = gw_loop_now(L);
    gw_store_op *late = gw_store_consume(s, L, tok, GW_TOKEN_LEN, "a4", on_consume, (void *)3);
    gw_store_consume(s, L, tok2, GW_TOKEN_LEN, "a4", on_consume, (void *)4);
    run_for(10); /* the caller's deadline (10 ms) passes first */
    is_int(nseen, 2, "no answer by the deadline");
    gw_store_cancel(s, late);
    run_for(80);
    is_int(nseen, 3, "only the uncancelled consume answered");
    ok(seen[2] == 4 && seen_res[2] == GW_TOKEN_OK, "late but whole");
    ok(gw_loop_now(L) - t0 >= 40, "not before its delay");
    gw_store_free(s);
}

/* Sessions through the store: a publish applies (embedded), a lookup by the
 * bearer's digest answers from the view, both through the loop. */
static int sess_found = -1, sess_pub_rc = -1;
static char sess_id[GW_SESSION_ID_MAX + 1];
static void on_lookup(void *ud, int found, const gw_session *s)
{
    GW_UNUSED(ud);
    sess_found = found;
    snprintf(sess_id, sizeof sess_id, "%s", found ? s->device_session_id : "");
}
static void on_publish(void *ud, int rc, const char *id)
{
    GW_UNUSED(ud);
    sess_pub_rc = rc;
    ok(id && id[0] == '\0', "the embedded store has no entry id");
}

static void test_sessions(void)
{
    gw_sessions_reset();
    gw_store *s = gw_store_embedded(table, 0);
    gw_session snap;
    memset(&snap, 0, sizeof snap);
    snprintf(snap.device_session_id, sizeof snap.device_session_id, "dev-9");
    snprintf(snap.user_id, sizeof snap.user_id, "ursula");
    snap.status = GW_SESSION_ACTIVE;
    snap.version = 1;
    gw_token_hash("bearer-9", 8, snap.token_sha256);
    uint8_t other[32];
    gw_token_hash("bearer-x", 8, other);
    gw_store_session_lookup(s, L, snap.token_sha256, on_lookup, NULL);
    is_int(sess_found, -1, "lookup not answered inline");
    run_for(1);
    is_int(sess_found, 0, "not found before the publish");
    gw_store_session_publish(s, L, &snap, on_publish, NULL);
    is_int(sess_pub_rc, -1, "publish not answered inline");
    run_for(1);
    is_int(sess_pub_rc, GW_OK, "published");
    gw_store_session_lookup(s, L, snap.token_sha256, on_lookup, NULL);
    run_for(1);
    ok(sess_found == 1 && strcmp(sess_id, "dev-9") == 0, "found by the bearer's digest");
    gw_store_session_lookup(s, L, other, on_lookup, NULL);
    run_for(1);
    is_int(sess_found, 0, "another digest finds nothing");
    gw_store_op *op = gw_store_session_lookup(s, L, snap.token_sha256, on_lookup, NULL);
    sess_found = -1;
    gw_store_cancel(s, op);
    run_for(2);
    is_int(sess_found, -1, "a cancelled lookup never calls back");
    gw_store_free(s);
    gw_sessions_reset();
}

int main(void)
{
    L = gw_loop_new();
    table = gw_token_store_embedded(NULL, 0);
    TEST_RUN(test_answers_through_the_loop);
    TEST_RUN(test_order_and_once);
    TEST_RUN(test_cancel);
    TEST_RUN(test_late_store);
    TEST_RUN(test_sessions);
    gw_token_store_free(table);
    gw_loop_free(L);
    return test_done();
}

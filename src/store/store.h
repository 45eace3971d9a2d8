/* store.h: the asynchronous store seam (DESIGN.md section 4; ARCHITECTURE.md
 * "Stores are asynchronous").
 *
 * Every store operation completes through a callback, never by returning
 * its answer: the embedded store answers at once and a Redis store (next:
 * hiredis' async context attached to our loop, as hiredis' adapters/ae.h
 * attaches to Redis' ae loop) answers a round trip later, through the same
 * path. A backend is an ops table; each operation takes the calling worker's
 * loop, a callback and its user data, and returns a handle (never NULL) that
 * cancels it.
 *
 * Contract, for every backend:
 *  - The callback runs on the loop passed in (the caller's worker thread),
 *    exactly once, and NEVER inline from the call that started the
 *    operation: the embedded store queues it to run before the loop next
 *    sleeps (gw_loop_pending), so the caller may finish setting up its wait
 *    phase after the call without re-entrancy surprises.
 *  - gw_store_cancel(op) before the callback ran: the callback never runs,
 *    and whatever the answer held (a consumed token's context) is wiped and
 *    freed by the store when the answer comes, or at once. The operation
 *    itself may already have taken effect (a consumed token stays consumed:
 *    fail closed). The handle is invalid after the callback or the cancel.
 *  - A store that cannot answer completes with GW_TOKEN_BACKEND_ERROR (or
 *    GW_ERR for a put), through the callback as well.
 *  - Stores are shared by every worker: operations are thread-safe.
 *
 * A caller waits for the answer in an explicit connection phase with a
 * deadline (gw_client_wait, server.h); past the deadline it answers 503
 * and cancels the operation. */
#ifndef GW_STORE_H
#define GW_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "loop/loop.h"
#include "store/events.h"
#include "store/sessions.h"
#include "store/tokens.h"

typedef struct gw_store gw_store;
typedef struct gw_store_op gw_store_op;

/* A put (mint) finished: GW_OK, or GW_ERR (store full or unreachable). */
typedef void (*gw_store_put_cb)(void *ud, int rc);
/* A consume finished: res as gw_token_store_ops.consume; ctx (filled as it
 * describes) is valid only during the call and wiped after it. */
typedef void (*gw_store_consume_cb)(void *ud, gw_token_result res, const gw_token_ctx *ctx);
/* A session lookup finished: found 1 with *s (valid during the call), or 0;
 * GW_TOKEN_BACKEND_ERROR-like failures do not exist (the view is local). */
typedef void (*gw_store_session_cb)(void *ud, int found, const gw_session *s);
/* A session snapshot was published: rc GW_OK (id: the stream entry id on
 * Redis, "" on the embedded store, where it is applied at once) or GW_ERR. */
typedef void (*gw_store_publish_cb)(void *ud, int rc, const char *id);

typedef struct gw_store_ops {
    const char *name; /* "embedded", "redis" */
    /* Stores ctx (expires_at_ms set) under the token's digest. */
    gw_store_op *(*token_put)(gw_store *s, gw_loop *l, const uint8_t hash[32], const gw_token_ctx *ctx,
                              gw_store_put_cb cb, void *ud);
    /* Atomically consumes the token under hash (allocation_id: see
     * gw_token_store_ops.consume). hash NULL: the text cannot be a token;
     * answer GW_TOKEN_UNKNOWN without asking the backend. */
    gw_store_op *(*token_consume)(gw_store *s, gw_loop *l, const uint8_t hash[32], const char *allocation_id,
                                  gw_store_consume_cb cb, void *ud);
    /* The session whose bearer has this digest, from the process's view
     * (sessions.h), which the backend keeps complete. */
    gw_store_op *(*session_lookup)(gw_store *s, gw_loop *l, const uint8_t token_sha256[32], gw_store_session_cb cb,
                                   void *ud);
    /* Publishes a snapshot to every process: the embedded store applies it
     * to the view; Redis appends it to the session-events stream (every
     * process, this one included, applies it when it reads the entry). */
    gw_store_op *(*session_publish)(gw_store *s, gw_loop *l, const gw_session *snap, gw_store_publish_cb cb,
                                    void *ud);
    /* Cancels an operation whose callback has not run (see the contract). */
    void (*cancel)(gw_store_op *op);
    /* 1 while the backend answers (the embedded store always does). */
    int (*healthy)(gw_store *s);
    void (*free)(gw_store *s);
    /* Appends an event to the client-events stream: the embedded store
     * appends to the history at once (id: the id it assigned); Redis XADDs
     * it (id: the entry id) and every process reads it from the stream.
     * rc GW_ERR: refused (malformed) or the store is unavailable. */
    gw_store_op *(*event_publish)(gw_store *s, gw_loop *l, const gw_event_in *ev, gw_store_publish_cb cb, void *ud);
    /* Presence, fire and forget (a failure is the backend's to log): sets
     * (value, JSON text with last_seen_ms) or deletes (NULL) one connection's
     * entry (field) of user, renews the user's TTL (ttl_ms) and drops the
     * user's entries whose last_seen_ms is older than it (a dead process's). */
    void (*presence_put)(gw_store *s, gw_loop *l, const char *user, const char *field, const char *value,
                         uint64_t ttl_ms);
    /* The user's live entries as a JSON object text {field: value}; cb gets
     * (GW_OK, text) or (GW_ERR, NULL); the text is valid during the call. */
    gw_store_op *(*presence_get)(gw_store *s, gw_loop *l, const char *user, uint64_t ttl_ms, gw_store_publish_cb cb,
                                 void *ud);
} gw_store_ops;

struct gw_store {
    const gw_store_ops *ops;
    uint64_t (*now_ms)(void); /* the store's wall clock (ms since the epoch): token expiries use it */
};

/* The embedded store: answers from the in-process token table (not owned;
 * it must outlive the store) at once, through the loop (see the contract).
 * delay_ms > 0 is a test hook: the answer is computed at once but delivered
 * delay_ms later, as a slow remote store would (GATEWAY_TEST_STORE_DELAY). */
gw_store *gw_store_embedded(gw_token_store *table, uint64_t delay_ms);
void gw_store_free(gw_store *s);

/* Mints a token for ctx (as gw_token_mint: fresh random bytes into
 * token_out, ctx->expires_at_ms set) and stores its digest; cb tells
 * whether the store kept it. token_out is written before the call returns. */
gw_store_op *gw_store_mint(gw_store *s, gw_loop *l, gw_token_ctx *ctx, unsigned ttl_s, char *token_out,
                           gw_store_put_cb cb, void *ud);
/* Consumes the token text tok[0..n). A string that cannot be a token
 * completes with GW_TOKEN_UNKNOWN without asking the backend (still through
 * the loop, never inline). */
gw_store_op *gw_store_consume(gw_store *s, gw_loop *l, const char *tok, size_t n, const char *allocation_id,
                              gw_store_consume_cb cb, void *ud);
static inline void gw_store_cancel(gw_store *s, gw_store_op *op) { s->ops->cancel(op); }

static inline gw_store_op *gw_store_session_lookup(gw_store *s, gw_loop *l, const uint8_t token_sha256[32],
                                                  gw_store_session_cb cb, void *ud)
{
    return s->ops->session_lookup(s, l, token_sha256, cb, ud);
}
static inline gw_store_op *gw_store_session_publish(gw_store *s, gw_loop *l, const gw_session *snap,
                                                   gw_store_publish_cb cb, void *ud)
{
    return s->ops->session_publish(s, l, snap, cb, ud);
}

static inline gw_store_op *gw_store_event_publish(gw_store *s, gw_loop *l, const gw_event_in *ev,
                                                 gw_store_publish_cb cb, void *ud)
{
    return s->ops->event_publish(s, l, ev, cb, ud);
}

/* The process's store (NULL before gw_store_set_current). */
gw_store *gw_store_current(void);
/* The process's store, for /health and the wsgate_backend_healthy gauge
 * (set once at startup, before the workers run). */
void gw_store_set_current(gw_store *s);
/* Frees the process's store (its threads stopped and joined first): at
 * exit, once the workers stopped and before their loops are freed (a Redis
 * store's monitor thread posts to them and its connections live on them). */
void gw_store_shutdown(void);
/* "embedded" or "redis" ("embedded" before any store is set). */
const char *gw_store_current_name(void);
/* 1 while the current store's backend answers (store.h healthy). */
int gw_store_current_healthy(void);
/* Sets the wsgate_backend_healthy gauge (backends call it on a change). */
void gw_store_health_changed(int healthy);
/* Why the backend is unhealthy (a string literal; NULL: healthy), shown by
 * /health as backend.reason; any thread. */
void gw_store_health_note(const char *reason);
const char *gw_store_current_reason(void);
/* 0 while the backend is still reading, at startup, what its streams held
 * then (the session view is not complete: a revoked bearer could still look
 * active); /readyz answers 503 and session lookups wait meanwhile. 1 for a
 * store with nothing to catch up. Any thread. */
int gw_store_caught_up(void);
void gw_store_set_caught_up(int yes);

#endif

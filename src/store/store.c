/* store.c: the asynchronous store seam and the embedded store (see store.h).
 *
 * The embedded store does the work at once on its in-process table (a
 * consume is atomic there, as a Redis GETDEL is) and delivers the answer
 * through the loop: queued to run before the loop next sleeps, or, with the
 * test hook's delay, from a timer. Cancelling drops the queued answer and
 * wipes the context it carried. */
#include "store/store.h"

#include <openssl/crypto.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/common.h"
#include "metrics/metrics.h"
#include "store/presence.h"

enum { OP_PUT, OP_CONSUME, OP_LOOKUP, OP_PUBLISH, OP_EVENT, OP_PRESENCE };

struct gw_store_op {
    gw_task task;   /* queued on loop (delay 0) */
    gw_timer timer; /* armed on loop (test delay) */
    gw_loop *loop;
    int kind;
    union {
        gw_store_put_cb put;
        gw_store_consume_cb consume;
        gw_store_session_cb session;
        gw_store_publish_cb publish;
    } cb;
    void *ud;
    int rc;              /* put */
    gw_token_result res; /* consume */
    gw_token_ctx ctx;    /* consume: what the token granted (wiped on free) */
    int found;           /* lookup */
    gw_session sess;     /* lookup */
    char id[GW_EVENT_ID_MAX]; /* event publish: the id assigned */
    char *text;               /* presence: the answer (freed with the op) */
};

typedef struct embedded {
    gw_store base;
    gw_token_store *table;
    uint64_t delay_ms;
} embedded;

static void op_free(gw_store_op *op)
{
    free(op->text);
    OPENSSL_cleanse(&op->ctx, sizeof op->ctx);
    gw_free(op);
}

static void op_run(gw_store_op *op)
{
    if (op->kind == OP_PUT)
        op->cb.put(op->ud, op->rc);
    else if (op->kind == OP_CONSUME)
        op->cb.consume(op->ud, op->res, &op->ctx);
    else if (op->kind == OP_LOOKUP)
        op->cb.session(op->ud, op->found, op->found ? &op->sess : NULL);
    else if (op->kind == OP_PRESENCE)
        op->cb.publish(op->ud, op->text ? GW_OK : GW_ERR, op->text);
    else
        op->cb.publish(op->ud, op->rc, op->id);
    op_free(op);
}

static void op_task(gw_task *t) { op_run(gw_container_of(t, gw_store_op, task)); }
static void op_timer(gw_timer *t) { op_run(gw_container_of(t, gw_store_op, timer)); }

static gw_store_op *op_new(gw_loop *l, int kind, void *ud)
{
    gw_store_op *op = gw_calloc(1, sizeof *op);
    op->loop = l;
    op->kind = kind;
    op->ud = ud;
    op->task.fn = op_task;
    gw_list_init(&op->task.node);
    op->timer.cb = op_timer;
    return op;
}

/* Delivers op's answer later, never inline (the contract in store.h). */
static gw_store_op *op_post(embedded *e, gw_store_op *op)
{
    if (e && e->delay_ms)
        gw_timer_start(op->loop, &op->timer, e->delay_ms);
    else
        gw_loop_pending(op->loop, &op->task);
    return op;
}

static gw_store_op *emb_put(gw_store *s, gw_loop *l, const uint8_t hash[32], const gw_token_ctx *ctx,
                            gw_store_put_cb cb, void *ud)
{
    embedded *e = (embedded *)s;
    gw_store_op *op = op_new(l, OP_PUT, ud);
    op->cb.put = cb;
    op->rc = e->table->ops->put(e->table, hash, ctx);
    return op_post(e, op);
}

static gw_store_op *emb_consume(gw_store *s, gw_loop *l, const uint8_t hash[32], const char *allocation_id,
                                gw_store_consume_cb cb, void *ud)
{
    embedded *e = (embedded *)s;
    gw_store_op *op = op_new(l, OP_CONSUME, ud);
    op->cb.consume = cb;
    op->res = hash ? e->table->ops->consume(e->table, hash, allocation_id, &op->ctx) : GW_TOKEN_UNKNOWN;
    return op_post(e, op);
}

static gw_store_op *emb_session_lookup(gw_store *s, gw_loop *l, const uint8_t token_sha256[32],
                                       gw_store_session_cb cb, void *ud)
{
    gw_store_op *op = op_new(l, OP_LOOKUP, ud);
    op->cb.session = cb;
    op->found = gw_sessions_find_token(token_sha256, &op->sess);
    return op_post((embedded *)s, op);
}

static gw_store_op *emb_session_publish(gw_store *s, gw_loop *l, const gw_session *snap, gw_store_publish_cb cb,
                                        void *ud)
{
    gw_store_op *op = op_new(l, OP_PUBLISH, ud);
    op->cb.publish = cb;
    gw_sessions_apply(snap);
    op->rc = GW_OK;
    return op_post((embedded *)s, op);
}

static gw_store_op *emb_event_publish(gw_store *s, gw_loop *l, const gw_event_in *ev, gw_store_publish_cb cb,
                                      void *ud)
{
    gw_store_op *op = op_new(l, OP_EVENT, ud);
    op->cb.publish = cb;
    op->rc = gw_events_append_local(ev, op->id);
    return op_post((embedded *)s, op);
}

static void emb_presence_put(gw_store *s, gw_loop *l, const char *user, const char *field, const char *value,
                             uint64_t ttl_ms)
{
    GW_UNUSED(s);
    GW_UNUSED(l);
    uint64_t now = gw_wall_ms();
    gw_presence_put(user, field, value, now, ttl_ms, now);
}

static gw_store_op *emb_presence_get(gw_store *s, gw_loop *l, const char *user, uint64_t ttl_ms,
                                     gw_store_publish_cb cb, void *ud)
{
    gw_store_op *op = op_new(l, OP_PRESENCE, ud);
    op->cb.publish = cb;
    op->text = gw_presence_json(user, ttl_ms, gw_wall_ms());
    return op_post((embedded *)s, op);
}

static void emb_cancel(gw_store_op *op)
{
    if (!op)
        return;
    gw_task_cancel(&op->task);
    if (gw_timer_active(&op->timer))
        gw_timer_stop(op->loop, &op->timer);
    op_free(op);
}

static void emb_free(gw_store *s) { gw_free(s); }

static int emb_healthy(gw_store *s)
{
    GW_UNUSED(s);
    return 1;
}

static const gw_store_ops embedded_ops = {"embedded",          emb_put,    emb_consume, emb_session_lookup,
                                          emb_session_publish, emb_cancel, emb_healthy, emb_free,
                                          emb_event_publish, emb_presence_put, emb_presence_get};

gw_store *gw_store_embedded(gw_token_store *table, uint64_t delay_ms)
{
    embedded *e = gw_calloc(1, sizeof *e);
    e->base.ops = &embedded_ops;
    e->base.now_ms = table->now_ms;
    e->table = table;
    e->delay_ms = delay_ms;
    return &e->base;
}

void gw_store_free(gw_store *s)
{
    if (s)
        s->ops->free(s);
}

gw_store_op *gw_store_mint(gw_store *s, gw_loop *l, gw_token_ctx *ctx, unsigned ttl_s, char *token_out,
                           gw_store_put_cb cb, void *ud)
{
    uint8_t h[32];
    gw_token_generate(ctx, ttl_s, s->now_ms(), token_out, h);
    return s->ops->token_put(s, l, h, ctx, cb, ud);
}

gw_store_op *gw_store_consume(gw_store *s, gw_loop *l, const char *tok, size_t n, const char *allocation_id,
                              gw_store_consume_cb cb, void *ud)
{
    if (!gw_token_well_formed(tok, n))
        return s->ops->token_consume(s, l, NULL, allocation_id, cb, ud);
    uint8_t h[32];
    gw_token_hash(tok, n, h);
    return s->ops->token_consume(s, l, h, allocation_id, cb, ud);
}

/* ============================== current store =============================== */

static gw_store *current;
static gw_metric *m_healthy;

void gw_store_shutdown(void)
{
    gw_store *s = current;
    current = NULL;
    gw_store_free(s);
}

void gw_store_set_current(gw_store *s)
{
    current = s;
    char labels[64];
    snprintf(labels, sizeof labels, "backend=\"%s\"", gw_store_current_name());
    m_healthy = gw_metric_get("wsgate_backend_healthy", GW_METRIC_GAUGE,
                              "1 while the state backend (embedded or Redis) answers, 0 while it does not", labels);
    gw_gauge_set(m_healthy, s ? s->ops->healthy(s) : 1);
}

gw_store *gw_store_current(void) { return current; }

const char *gw_store_current_name(void) { return current ? current->ops->name : "embedded"; }

int gw_store_current_healthy(void) { return current ? current->ops->healthy(current) : 1; }

static _Atomic(const char *) health_reason;

void gw_store_health_note(const char *reason) { atomic_store(&health_reason, reason); }

const char *gw_store_current_reason(void) { return atomic_load(&health_reason); }

static atomic_int caught_up = 1;

int gw_store_caught_up(void) { return atomic_load(&caught_up); }

void gw_store_set_caught_up(int yes) { atomic_store(&caught_up, yes != 0); }

void gw_store_health_changed(int healthy)
{
    if (m_healthy)
        gw_gauge_set(m_healthy, healthy);
}

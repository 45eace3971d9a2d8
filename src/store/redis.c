/* redis.c: the Redis store (see redis.h). */
#include "store/redis.h"

#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <errno.h>
#include <jansson.h>
#include <netdb.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "core/alloc.h"
#include "core/common.h"
#include "log/log.h"
#include "net/addr.h"
#include "store/redis_ev.h"

#define RECONNECT_MIN_MS 100u
#define RECONNECT_MAX_MS 1000u
#define HEALTH_EVERY_MS 500u

enum { OP_PUT, OP_CONSUME, OP_PING, OP_LOOKUP, OP_PUBLISH, OP_XREAD, OP_EVENT, OP_PRESENCE, OP_PRESENCE_GET };

#define XREAD_BLOCK_MS 1000u /* one XREAD waits this long for new entries */
#define XREAD_COUNT "256"
#define STREAM_MAXLEN "100000" /* XADD trims the session-events stream to about this many entries */

typedef struct rstore rstore;
typedef struct rconn rconn;

/* A stream read in full by every process (monitor thread): one XREAD BLOCK
 * at a time from the last entry id read, resumed from it after a reconnect. */
typedef struct sreader {
    rstore *st;
    rconn *c;
    const char *role;   /* the connection's role (logs) */
    char stream[256];
    char last_id[64];   /* the last entry read: reading resumes after it */
    int reading;        /* an XREAD is in flight */
    int bit;            /* this reader's bit in rstore.stream_bad and rstore.caught_up */
    char target[64];    /* the stream's last entry at startup ("" if none): read up to it before serving */
    int done;           /* target reached (or nothing more to read) */
    uint64_t bad_logged_ms; /* when its unreadable stream was last logged */
    gw_timer retry;
    /* one entry: n field/value pairs (shape already checked) */
    void (*apply)(const char *id, size_t idn, size_t n, const char *const *names, const size_t *nl,
                  const char *const *vals, const size_t *vl);
    void (*malformed)(const char *source, const char *id, const char *why);
} sreader;

struct rconn {
    rstore *st;
    gw_loop *loop;
    gw_redis_ev ev;
    gw_list inflight;   /* rop.node, oldest first (Redis answers in order) */
    gw_timer watch;     /* fires at the oldest command's deadline */
    gw_timer retry;     /* reconnect back-off */
    gw_timer setup;     /* connect + AUTH/SELECT/SCRIPT LOAD deadline (2 x GATEWAY_STORE_TIMEOUT) */
    uint64_t backoff_ms;
    int up;             /* AUTH and SELECT answered on this connection */
    int down;           /* counted in st->ndown (a failure, not yet connected again) */
    int64_t clock_offset_ms; /* Redis' clock minus ours (TIME at setup; never later than true) */
    int clock_known;    /* clock_offset_ms measured on this connection */
    const char *role;   /* "worker", "monitor" or "sessions" (logs) */
    void (*on_up)(rconn *c); /* called when the connection is (again) ready */
    sreader *rd;        /* the stream this connection reads (NULL: none) */
    rconn *next;        /* st->conns */
};

struct rstore {
    gw_store base;
    int is_unix;
    char host[256];     /* numeric, resolved at startup (no DNS on a worker) */
    int port;
    char path[108];
    char addr_text[300];
    char password[256];
    int db;
    char prefix[128];
    uint64_t timeout_ms;
    pthread_mutex_t mu;
    rconn *conns;
    atomic_int ndown;
    gw_loop *mon_loop;  /* the monitor thread's loop */
    pthread_t mon_thread;
    rconn *mon;
    gw_timer ping;
    /* the stream readers (monitor thread) */
    sreader sess;       /* session-events */
    sreader evr;        /* client-events */
    char events_stream[256];
    atomic_int stream_bad; /* bit per stream reader whose XREAD answers an error (e.g. WRONGTYPE) */
    atomic_int caught_up;  /* bit per stream reader that reached its startup target */
    uint64_t started_ms;   /* when the readers started (the catch-up line) */
};

typedef struct rop {
    gw_task task;       /* answered without Redis: queued on loop */
    gw_list node;       /* rconn.inflight while sent */
    rconn *c;
    gw_loop *loop;
    int kind;
    int cancelled;
    uint64_t deadline;
    union {
        gw_store_put_cb put;
        gw_store_consume_cb consume;
        gw_store_session_cb session;
        gw_store_publish_cb publish;
    } cb;
    void *ud;
    int rc;
    gw_token_result res;
    gw_token_ctx ctx;
    int found;          /* lookup */
    gw_session sess;    /* lookup */
    uint8_t digest[32]; /* lookup: the bearer's SHA-256 */
    char id[64];        /* publish: the stream entry id */
    char *text;         /* presence get: the answer (freed with the op) */
    /* EVALSHA ops: the arguments after the digest, kept for eval_again */
    char *args;         /* argc - 2 arguments back to back (cleansed when freed) */
    size_t args_len;
    int argc;
    size_t lens[8];
    int retried;        /* sent again with EVAL already */
    gw_timer wait;      /* lookup: waiting for the startup catch-up */
} rop;

static __thread rconn *tl_conn; /* this worker's connection */

/* ================================ scripts ===================================
 * Loaded on every (re)connection (SCRIPT LOAD, queued after AUTH and
 * SELECT, before any command) and called by digest (EVALSHA). A NOSCRIPT
 * answer (someone ran SCRIPT FLUSH, a failover to an empty script cache)
 * is not a failure: the same command is sent again once with EVAL on the
 * same connection and both scripts are loaded again (eval_again). */

static const char put_script[] =
    "if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end\n"
    "redis.call('HSET', KEYS[1], 's', 'live', 'e', ARGV[1], 'a', ARGV[2], 'c', ARGV[3])\n"
    "redis.call('PEXPIREAT', KEYS[1], ARGV[4])\n"
    "return 1\n";

/* One round trip: the first caller turns the entry into a tombstone (its
 * TTL unchanged) and gets the context; later ones get "replayed". ARGV[4]
 * is the request's deadline on Redis' clock (ms; 0: none): a consume that
 * Redis runs after it (it sat in a frozen Redis' socket buffer while the
 * client got its 503) answers "late" and leaves the entry untouched, so
 * the client's retry with the same token works (review2 f6). */
static const char consume_script[] =
    "redis.replicate_commands()\n"
    "if ARGV[4] ~= '0' then\n"
    "  local t = redis.call('TIME')\n"
    "  if tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) > tonumber(ARGV[4]) then\n"
    "    return {'late', '', '0'}\n"
    "  end\n"
    "end\n"
    "local v = redis.call('HMGET', KEYS[1], 's', 'e', 'a', 'c')\n"
    "if not v[1] then return {'unknown', '', '0'} end\n"
    "if v[1] == 'used' then return {'replayed', '', v[2]} end\n"
    "if tonumber(ARGV[1]) >= tonumber(v[2]) then return {'expired', v[4], v[2]} end\n"
    "redis.call('HSET', KEYS[1], 's', 'used')\n"
    "redis.call('HDEL', KEYS[1], 'a', 'c')\n"
    "if ARGV[3] == '1' and v[3] ~= ARGV[2] then return {'mismatch', v[4], v[2]} end\n"
    "return {'ok', v[4], v[2]}\n";

static char put_sha[41], consume_sha[41]; /* SHA-1 hex of the scripts */

static void script_sha(const char *script, char out[41])
{
    unsigned char d[SHA_DIGEST_LENGTH];
    SHA1((const unsigned char *)script, strlen(script), d);
    for (int i = 0; i < SHA_DIGEST_LENGTH; i++)
        snprintf(out + 2 * i, 3, "%02x", d[i]);
}


static uint64_t wall_ms(void) { return gw_wall_ms(); }

/* ================================ health ==================================== */

static void conn_connect(rconn *c);
static void sess_after(sreader *rd, int rc);
static void sess_on_up(rconn *c);
static void on_sess_retry(gw_timer *t);

#define STREAM_BAD_LOG_EVERY_MS 60000u

static void health_publish(rstore *st)
{
    int down = atomic_load(&st->ndown) != 0, bad = atomic_load(&st->stream_bad);
    gw_store_health_note(down ? "redis unavailable"
                         : (bad & 3) == 3
                             ? "the session-events and client-events streams cannot be read (XREAD fails): "
                               "revocations are not applied and push events are not delivered"
                         : bad & 1 ? "the session-events stream cannot be read (XREAD fails): revocations are not applied"
                         : bad & 2 ? "the client-events stream cannot be read (XREAD fails): push events are not delivered"
                                   : NULL);
    gw_store_health_changed(!down && !bad);
}

static void conn_up(rconn *c)
{
    c->up = 1;
    c->backoff_ms = RECONNECT_MIN_MS;
    if (gw_timer_active(&c->setup))
        gw_timer_stop(c->loop, &c->setup);
    if (c->down) {
        c->down = 0;
        atomic_fetch_sub(&c->st->ndown, 1);
        health_publish(c->st);
        gw_log_line *l = gw_log_begin(GW_LOG_INFO, "redis connected again", NULL);
        if (l) {
            gw_log_str(l, "redis", c->st->addr_text, 0);
            gw_log_str(l, "connection", c->role, 0);
            gw_log_end(l);
        }
    }
    if (c->on_up)
        c->on_up(c);
}

uint64_t gw_redis_backoff_delay(uint64_t backoff_ms)
{
    uint32_t r = 0;
    if (backoff_ms < 2 || RAND_bytes((unsigned char *)&r, sizeof r) != 1)
        return backoff_ms;
    uint64_t half = backoff_ms / 2;
    return backoff_ms - half + r % (half + 1);
}

/* The connection failed (or is gone): count it down, retry after back-off
 * (with jitter). */
static void conn_down(rconn *c, const char *why)
{
    c->up = 0;
    if (gw_timer_active(&c->setup))
        gw_timer_stop(c->loop, &c->setup);
    if (!c->down) {
        c->down = 1;
        atomic_fetch_add(&c->st->ndown, 1);
        health_publish(c->st);
        gw_log_line *l = gw_log_begin(GW_LOG_WARN, "redis unavailable; reconnecting with back-off", NULL);
        if (l) {
            gw_log_str(l, "redis", c->st->addr_text, 0);
            gw_log_str(l, "connection", c->role, 0);
            gw_log_str(l, "error", why, 0);
            gw_log_end(l);
        }
    }
    if (!gw_timer_active(&c->retry)) {
        gw_timer_start(c->loop, &c->retry, gw_redis_backoff_delay(c->backoff_ms));
        c->backoff_ms = c->backoff_ms * 2 > RECONNECT_MAX_MS ? RECONNECT_MAX_MS : c->backoff_ms * 2;
    }
}

/* Drops the connection: its commands in flight answer the error (hiredis
 * calls their callbacks with no reply), then back-off and reconnect. */
static void conn_fail(rconn *c, const char *why)
{
    conn_down(c, why); /* first: the log names this cause, not the disconnect that follows */
    redisAsyncContext *ac = c->ev.ac;
    if (ac)
        redisAsyncFree(ac); /* deferred by hiredis when inside one of its callbacks */
}

/* A connection not ready (connected, AUTH, SELECT and both SCRIPT LOADs
 * answered) within twice GATEWAY_STORE_TIMEOUT (a connect and four round
 * trips) is failed like a command without an answer: an unanswered SYN or
 * a silent handshake never parks it on the kernel's SYN retries. */
static void on_setup_deadline(gw_timer *t)
{
    rconn *c = gw_container_of(t, rconn, setup);
    if (!c->up && c->ev.ac)
        conn_fail(c, "not connected and ready within twice GATEWAY_STORE_TIMEOUT");
}

static void on_retry(gw_timer *t)
{
    rconn *c = gw_container_of(t, rconn, retry);
    if (c->ev.ac) { /* still being freed */
        gw_timer_start(c->loop, &c->retry, RECONNECT_MIN_MS);
        return;
    }
    conn_connect(c);
}

/* =============================== operations ================================= */

static void op_free(rop *op)
{
    free(op->text);
    OPENSSL_cleanse(&op->ctx, sizeof op->ctx);
    if (op->args) {
        OPENSSL_cleanse(op->args, op->args_len);
        gw_free(op->args);
    }
    gw_free(op);
}

static void op_answer(rop *op)
{
    if (!op->cancelled) {
        if (op->kind == OP_PUT)
            op->cb.put(op->ud, op->rc);
        else if (op->kind == OP_CONSUME)
            op->cb.consume(op->ud, op->res, &op->ctx);
        else if (op->kind == OP_LOOKUP)
            op->cb.session(op->ud, op->found, op->found ? &op->sess : NULL);
        else if (op->kind == OP_PUBLISH || op->kind == OP_EVENT)
            op->cb.publish(op->ud, op->rc, op->id);
        else if (op->kind == OP_XREAD)
            sess_after(op->ud, op->rc);
        else if (op->kind == OP_PRESENCE_GET)
            op->cb.publish(op->ud, op->text ? GW_OK : GW_ERR, op->text);
    }
    op_free(op);
}

static void op_task(gw_task *t) { op_answer(gw_container_of(t, rop, task)); }

static rop *op_new(gw_loop *l, int kind, void *ud)
{
    rop *op = gw_calloc(1, sizeof *op);
    op->loop = l;
    op->kind = kind;
    op->ud = ud;
    op->task.fn = op_task;
    gw_list_init(&op->task.node);
    gw_list_init(&op->node);
    op->rc = GW_ERR;
    op->res = GW_TOKEN_BACKEND_ERROR;
    return op;
}

static void log_reply_error(const rconn *c, const char *what, const redisReply *r)
{
    gw_log_line *l = gw_log_begin(GW_LOG_WARN, "redis command failed", NULL);
    if (l) {
        gw_log_str(l, "redis", c->st->addr_text, 0);
        gw_log_str(l, "command", what, 0);
        gw_log_str(l, "error", r && r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply", 0);
        gw_log_end(l);
    }
}

static int reply_is(const redisReply *r, const char *s)
{
    return r && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS) && strlen(s) == r->len &&
           memcmp(r->str, s, r->len) == 0;
}

/* Fills op's answer from a consume script's reply {status, ctx, expiry}. */
static void read_consume(rconn *c, rop *op, const redisReply *r)
{
    if (!r || r->type != REDIS_REPLY_ARRAY || r->elements != 3 || r->element[1]->type != REDIS_REPLY_STRING ||
        r->element[2]->type != REDIS_REPLY_STRING) {
        log_reply_error(c, "token consume", r);
        return;
    }
    static const struct {
        const char *s;
        gw_token_result res;
        int has_ctx;
    } map[] = {{"ok", GW_TOKEN_OK, 1},           {"unknown", GW_TOKEN_UNKNOWN, 0},
               {"expired", GW_TOKEN_EXPIRED, 1}, {"replayed", GW_TOKEN_REPLAYED, 0},
               {"mismatch", GW_TOKEN_ALLOCATION_MISMATCH, 1}, {"late", GW_TOKEN_BACKEND_ERROR, 0}};
    for (size_t i = 0; i < GW_ARRAY_LEN(map); i++) {
        if (!reply_is(r->element[0], map[i].s))
            continue;
        if (map[i].has_ctx) {
            uint64_t exp = strtoull(r->element[2]->str, NULL, 10);
            if (gw_token_ctx_unpack(r->element[1]->str, r->element[1]->len, exp, &op->ctx) != GW_OK) {
                log_reply_error(c, "token consume (malformed entry)", NULL);
                return; /* the entry is burned either way: fail closed */
            }
        }
        op->res = map[i].res;
        return;
    }
    log_reply_error(c, "token consume", r);
}

static void apply_session(const char *id, size_t idn, size_t n, const char *const *names, const size_t *nl,
                          const char *const *vals, const size_t *vl)
{
    GW_UNUSED(idn);
    gw_session snap;
    char why[160];
    if (gw_session_from_fields(n, names, nl, vals, vl, &snap, why, sizeof why) != GW_OK)
        gw_sessions_malformed("stream", id, why);
    else
        gw_sessions_apply(&snap);
}

static void apply_event(const char *id, size_t idn, size_t n, const char *const *names, const size_t *nl,
                        const char *const *vals, const size_t *vl)
{
    gw_events_append_fields(id, idn, n, names, nl, vals, vl); /* counts and logs a malformed entry */
}

/* The session-events stream answers an error (a key of another type, an
 * ACL, ...) on a connection that is otherwise fine: the backend is
 * unhealthy (revocations stop reaching this process), logged on the change
 * and then once a minute while it lasts. */
static void stream_unreadable(sreader *rd, const redisReply *r)
{
    rstore *st = rd->st;
    uint64_t now = gw_mono_ms();
    int was = (atomic_fetch_or(&st->stream_bad, rd->bit) & rd->bit) != 0;
    if (!was)
        health_publish(st);
    if (was && now - rd->bad_logged_ms < STREAM_BAD_LOG_EVERY_MS)
        return;
    rd->bad_logged_ms = now;
    gw_log_line *l = gw_log_begin(GW_LOG_ERROR,
                                  rd->bit == 1 ? "session-events stream unreadable; revocations are not applied"
                                               : "client-events stream unreadable; push events are not delivered",
                                  NULL);
    if (l) {
        gw_log_str(l, "redis", st->addr_text, 0);
        gw_log_str(l, "stream", rd->stream, 0);
        gw_log_str(l, "error", r && r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply", 0);
        gw_log_end(l);
    }
}

static void stream_readable(sreader *rd)
{
    rstore *st = rd->st;
    if (!(atomic_fetch_and(&st->stream_bad, ~rd->bit) & rd->bit))
        return;
    health_publish(st);
    gw_log_line *l = gw_log_begin(GW_LOG_INFO,
                                  rd->bit == 1 ? "session-events stream readable again"
                                               : "client-events stream readable again",
                                  NULL);
    if (l) {
        gw_log_str(l, "stream", rd->stream, 0);
        gw_log_end(l);
    }
}

/* "<ms>-<seq>" order (a malformed id counts as 0-0). */
static int stream_id_cmp(const char *a, const char *b)
{
    char *e;
    unsigned long long am = strtoull(a, &e, 10), as = *e == '-' ? strtoull(e + 1, NULL, 10) : 0;
    unsigned long long bm = strtoull(b, &e, 10), bs = *e == '-' ? strtoull(e + 1, NULL, 10) : 0;
    return am != bm ? (am < bm ? -1 : 1) : as != bs ? (as < bs ? -1 : 1) : 0;
}

/* rd read what its stream held at startup (or can read nothing more): once
 * both readers have, the process is caught up (review3 F7: until then a
 * revoked bearer could still look active). */
static void reader_progress(sreader *rd, int nothing_more)
{
    if (rd->done || (!nothing_more && rd->target[0] && stream_id_cmp(rd->last_id, rd->target) < 0))
        return;
    rd->done = 1;
    rstore *st = rd->st;
    if ((atomic_fetch_or(&st->caught_up, rd->bit) | rd->bit) != 3)
        return;
    gw_store_set_caught_up(1);
    gw_log_line *l = gw_log_begin(GW_LOG_INFO, "store caught up: the session view and the event history are read",
                                  NULL);
    if (l) {
        gw_log_int(l, "ms", (int64_t)(gw_mono_ms() - st->started_ms), 0);
        gw_log_end(l);
    }
}

/* Applies the entries of an XREAD reply (nil: none arrived) and moves
 * last_id past them. GW_OK, or GW_ERR for an error reply. */
static int read_entries(sreader *rd, const redisReply *r)
{
    if (r->type == REDIS_REPLY_NIL) {
        stream_readable(rd);
        reader_progress(rd, 1);
        return GW_OK;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 1 || r->element[0]->type != REDIS_REPLY_ARRAY ||
        r->element[0]->elements != 2 || r->element[0]->element[1]->type != REDIS_REPLY_ARRAY) {
        stream_unreadable(rd, r);
        reader_progress(rd, 1); /* nothing readable to wait for: unhealthy instead */
        return GW_ERR;
    }
    stream_readable(rd);
    const redisReply *entries = r->element[0]->element[1];
    for (size_t i = 0; i < entries->elements; i++) {
        const redisReply *e = entries->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 2 || e->element[0]->type != REDIS_REPLY_STRING ||
            e->element[0]->len >= sizeof rd->last_id)
            continue; /* not an entry: nothing to resume from */
        memcpy(rd->last_id, e->element[0]->str, e->element[0]->len);
        rd->last_id[e->element[0]->len] = '\0';
        const redisReply *f = e->element[1];
        const char *names[32], *vals[32];
        size_t nl[32], vl[32], n = 0;
        int shape = f->type == REDIS_REPLY_ARRAY && f->elements % 2 == 0 && f->elements <= 64;
        for (size_t k = 0; shape && k < f->elements; k += 2) {
            if (f->element[k]->type != REDIS_REPLY_STRING || f->element[k + 1]->type != REDIS_REPLY_STRING) {
                shape = 0;
                break;
            }
            names[n] = f->element[k]->str;
            nl[n] = f->element[k]->len;
            vals[n] = f->element[k + 1]->str;
            vl[n] = f->element[k + 1]->len;
            n++;
        }
        if (!shape)
            rd->malformed("stream", rd->last_id, "the entry is not field/value strings (at most 32 fields)");
        else
            rd->apply(rd->last_id, strlen(rd->last_id), n, names, nl, vals, vl);
    }
    reader_progress(rd, 0);
    return GW_OK;
}

/* A presence script's reply: {field, value, ...} -> a JSON object text. */
static void read_presence(rconn *c, rop *op, const redisReply *r)
{
    if (r->type != REDIS_REPLY_ARRAY || r->elements % 2) {
        log_reply_error(c, "presence", r);
        return;
    }
    json_t *o = json_object();
    for (size_t i = 0; i + 1 < r->elements; i += 2) {
        const redisReply *f = r->element[i], *v = r->element[i + 1];
        if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
            continue;
        char field[512];
        snprintf(field, sizeof field, "%.*s", (int)GW_MIN(f->len, sizeof field - 1), f->str);
        json_t *jv = json_loadb(v->str, v->len, 0, NULL);
        json_object_set_new(o, field, jv ? jv : json_stringn(v->str, v->len));
    }
    op->text = json_dumps(o, JSON_COMPACT);
    json_decref(o);
}

static int eval_again(rconn *c, rop *op);

static void on_reply(redisAsyncContext *ac, void *reply, void *priv)
{
    GW_UNUSED(ac);
    rop *op = priv;
    rconn *c = op->c;
    redisReply *r = reply;
    gw_list_remove(&op->node);
    if (gw_list_empty(&c->inflight) && gw_timer_active(&c->watch))
        gw_timer_stop(c->loop, &c->watch);
    int noscript = r && r->type == REDIS_REPLY_ERROR && strncmp(r->str, "NOSCRIPT", 8) == 0;
    if (noscript && !op->retried) {
        if (eval_again(c, op))
            return;
        noscript = 0; /* the scripts are being loaded again: the connection is fine */
    }
    if (r) {
        if (op->kind == OP_PUT) {
            if (r->type == REDIS_REPLY_INTEGER && r->integer == 1)
                op->rc = GW_OK;
            else
                log_reply_error(c, "token put", r);
        } else if (op->kind == OP_CONSUME) {
            read_consume(c, op, r);
        } else if (op->kind == OP_PUBLISH || op->kind == OP_EVENT) {
            if (r->type == REDIS_REPLY_STRING && r->len < sizeof op->id) {
                memcpy(op->id, r->str, r->len);
                op->id[r->len] = '\0';
                op->rc = GW_OK;
            } else {
                log_reply_error(c, "XADD", r);
            }
        } else if (op->kind == OP_XREAD) {
            op->rc = read_entries(c->rd, r);
        } else if (op->kind == OP_PRESENCE) {
            if (r->type == REDIS_REPLY_ERROR)
                log_reply_error(c, "presence", r);
        } else if (op->kind == OP_PRESENCE_GET) {
            read_presence(c, op, r);
        } else if (!reply_is(r, "PONG")) {
            log_reply_error(c, "PING", r);
        }
    }
    op_answer(op);
    if (noscript)
        conn_fail(c, "NOSCRIPT after EVAL; reconnecting loads the scripts again");
}

static void on_watch(gw_timer *t)
{
    rconn *c = gw_container_of(t, rconn, watch);
    if (gw_list_empty(&c->inflight))
        return;
    rop *head = gw_container_of(c->inflight.next, rop, node);
    uint64_t now = gw_loop_now(c->loop);
    if (now < head->deadline) {
        gw_timer_start_at(c->loop, &c->watch, head->deadline);
        return;
    }
    conn_fail(c, "no answer within GATEWAY_STORE_TIMEOUT");
}

/* Sends a command for op on c, or answers the error through the loop when c
 * is down. Returns op (the caller's handle). */
static rop *op_send_for(rconn *c, rop *op, uint64_t extra_ms, int argc, const char **argv, const size_t *lens)
{
    op->c = c;
    if (!c->ev.ac || redisAsyncCommandArgv(c->ev.ac, on_reply, op, argc, argv, lens) != REDIS_OK) {
        gw_loop_pending(op->loop, &op->task);
        return op;
    }
    op->deadline = gw_loop_now(c->loop) + c->st->timeout_ms + extra_ms;
    gw_list_insert_tail(&c->inflight, &op->node);
    if (!gw_timer_active(&c->watch))
        gw_timer_start_at(c->loop, &c->watch, op->deadline);
    return op;
}

static rop *op_send(rconn *c, rop *op, int argc, const char **argv, const size_t *lens)
{
    return op_send_for(c, op, 0, argc, argv, lens);
}

/* Sends an EVALSHA (argv[1] the digest) and keeps what follows the digest
 * for eval_again. */
static rop *op_send_script(rconn *c, rop *op, int argc, const char **argv, const size_t *lens)
{
    op->argc = argc;
    op->args_len = 0;
    for (int i = 2; i < argc; i++)
        op->args_len += lens[i];
    op->args = gw_malloc(op->args_len + 1);
    char *p = op->args;
    for (int i = 0; i < argc; i++) {
        op->lens[i] = lens[i];
        if (i >= 2) {
            memcpy(p, argv[i], lens[i]);
            p += lens[i];
        }
    }
    return op_send(c, op, argc, argv, lens);
}

/* NOSCRIPT on op: loads both scripts again and, unless op was cancelled
 * (its caller is gone: running it now could burn a token nobody hears
 * about), sends op's command once more with EVAL. 1 when op is in flight
 * again (or answered through the loop), 0 when op is to be answered now. */
static int eval_again(rconn *c, rop *op)
{
    if (!c->ev.ac || !op->args)
        return 0;
    redisAsyncCommand(c->ev.ac, NULL, NULL, "SCRIPT LOAD %s", put_script);
    redisAsyncCommand(c->ev.ac, NULL, NULL, "SCRIPT LOAD %s", consume_script);
    if (op->cancelled || op->retried)
        return 0;
    op->retried = 1;
    const char *argv[8];
    argv[0] = "EVAL";
    argv[1] = op->kind == OP_PUT ? put_script : consume_script;
    size_t lens[8];
    lens[0] = 4;
    lens[1] = strlen(argv[1]);
    const char *p = op->args;
    for (int i = 2; i < op->argc; i++) {
        argv[i] = p;
        lens[i] = op->lens[i];
        p += lens[i];
    }
    op_send(c, op, op->argc, argv, lens);
    return 1;
}

/* ============================== connections ================================= */

static void on_setup(redisAsyncContext *ac, void *reply, void *priv)
{
    rconn *c = ac->data;
    redisReply *r = reply;
    if (!r)
        return; /* being freed */
    if (r->type == REDIS_REPLY_ERROR) {
        char why[200];
        snprintf(why, sizeof why, "%s refused: %s", (const char *)priv, r->str);
        conn_fail(c, why);
        return;
    }
    if (strcmp(priv, "SCRIPT LOAD consume") == 0)
        conn_up(c);
}

/* TIME during setup: Redis' clock minus ours, taken against our clock when
 * the answer is read, so it errs early (a consume may be called late up to
 * one round trip before its deadline, never after it). */
static void on_time(redisAsyncContext *ac, void *reply, void *priv)
{
    GW_UNUSED(priv);
    rconn *c = ac->data;
    redisReply *r = reply;
    if (!r)
        return; /* being freed */
    if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 || r->element[0]->type != REDIS_REPLY_STRING ||
        r->element[1]->type != REDIS_REPLY_STRING) {
        conn_fail(c, "TIME refused");
        return;
    }
    int64_t redis_ms = strtoll(r->element[0]->str, NULL, 10) * 1000 + strtoll(r->element[1]->str, NULL, 10) / 1000;
    c->clock_offset_ms = redis_ms - (int64_t)gw_wall_ms();
    c->clock_known = 1;
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    rconn *c = ac->data;
    if (status != REDIS_OK)
        conn_down(c, ac->errstr[0] ? ac->errstr : "connect failed"); /* hiredis frees the context */
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    rconn *c = ac->data;
    conn_down(c, status == REDIS_OK ? "disconnected"
                 : c->ev.lim.refused ? c->ev.lim.refused
                                 : (ac->errstr[0] ? ac->errstr : "connection lost"));
}

static void conn_connect(rconn *c)
{
    rstore *st = c->st;
    c->up = 0;
    c->clock_known = 0;
    redisAsyncContext *ac = st->is_unix ? redisAsyncConnectUnix(st->path) : redisAsyncConnect(st->host, st->port);
    if (!ac || ac->err) {
        char why[160];
        snprintf(why, sizeof why, "%s", ac ? ac->errstr : "out of memory");
        if (ac)
            redisAsyncFree(ac);
        conn_down(c, why);
        return;
    }
    ac->data = c;
    gw_redis_ev_attach(&c->ev, c->loop, ac);
    gw_timer_start(c->loop, &c->setup, 2 * st->timeout_ms); /* connect + 4 round trips */
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    if (st->password[0])
        redisAsyncCommand(ac, on_setup, (void *)"AUTH", "AUTH %s", st->password);
    redisAsyncCommand(ac, on_setup, (void *)"SELECT", "SELECT %d", st->db);
    redisAsyncCommand(ac, on_setup, (void *)"SCRIPT LOAD put", "SCRIPT LOAD %s", put_script);
    redisAsyncCommand(ac, on_time, NULL, "TIME");
    redisAsyncCommand(ac, on_setup, (void *)"SCRIPT LOAD consume", "SCRIPT LOAD %s", consume_script);
}

static rconn *conn_new(rstore *st, gw_loop *l, const char *role, sreader *rd)
{
    rconn *c = gw_calloc(1, sizeof *c);
    c->st = st;
    c->loop = l;
    c->role = role;
    c->rd = rd;
    if (rd)
        c->on_up = sess_on_up;
    c->ev.io.fd = -1;
    gw_list_init(&c->inflight);
    c->watch.cb = on_watch;
    c->retry.cb = on_retry;
    c->setup.cb = on_setup_deadline;
    c->backoff_ms = RECONNECT_MIN_MS;
    pthread_mutex_lock(&st->mu);
    c->next = st->conns;
    st->conns = c;
    pthread_mutex_unlock(&st->mu);
    conn_connect(c);
    return c;
}

/* The calling worker's connection to st, made on first use. */
static rconn *conn_for(rstore *st, gw_loop *l)
{
    if (tl_conn && tl_conn->st == st && tl_conn->loop == l)
        return tl_conn;
    rconn *found = NULL;
    pthread_mutex_lock(&st->mu);
    for (rconn *c = st->conns; c && !found; c = c->next)
        if (c->loop == l)
            found = c;
    pthread_mutex_unlock(&st->mu);
    tl_conn = found ? found : conn_new(st, l, "worker", NULL);
    return tl_conn;
}

/* ================================ monitor =================================== */

static void on_ping_timer(gw_timer *t)
{
    rstore *st = gw_container_of(t, rstore, ping);
    rconn *c = st->mon;
    if (c->ev.ac && gw_list_empty(&c->inflight)) {
        rop *op = op_new(st->mon_loop, OP_PING, NULL);
        const char *argv[] = {"PING"};
        size_t lens[] = {4};
        op_send(c, op, 1, argv, lens);
    }
    gw_timer_start(st->mon_loop, &st->ping, HEALTH_EVERY_MS);
}

static void reader_start(rstore *st, sreader *rd)
{
    rd->st = st;
    rd->retry.cb = on_sess_retry;
    rd->c = conn_new(st, st->mon_loop, rd->role, rd);
}

static void mon_start(void *arg)
{
    rstore *st = arg;
    st->mon = conn_new(st, st->mon_loop, "monitor", NULL);
    reader_start(st, &st->sess);
    reader_start(st, &st->evr);
    st->ping.cb = on_ping_timer;
    gw_timer_start(st->mon_loop, &st->ping, HEALTH_EVERY_MS);
}

static void *mon_main(void *arg)
{
    rstore *st = arg;
    gw_loop_run(st->mon_loop);
    return NULL;
}

/* ============================ the stream readers ============================
 * One XREAD BLOCK at a time per stream on its own monitor-thread connection,
 * from the last entry id read. The session-events stream is read from 0-0
 * (the whole stream, so a new process holds the same view as the others);
 * the client-events stream from the start of the history window, so a
 * (re)started process rebuilds its history and serves resumes. A dropped
 * connection loses nothing: reading resumes from last_id once it is back
 * (on_up). */

static void sess_read(sreader *rd)
{
    rconn *c = rd->c;
    if (rd->reading || !c->ev.ac)
        return;
    rop *op = op_new(rd->st->mon_loop, OP_XREAD, rd);
    char block[16];
    snprintf(block, sizeof block, "%u", XREAD_BLOCK_MS);
    const char *argv[] = {"XREAD", "COUNT", XREAD_COUNT, "BLOCK", block, "STREAMS", rd->stream, rd->last_id};
    size_t lens[8];
    for (int i = 0; i < 8; i++)
        lens[i] = strlen(argv[i]);
    rd->reading = 1;
    op_send_for(c, op, XREAD_BLOCK_MS, 8, argv, lens);
}

static void sess_after(sreader *rd, int rc)
{
    rd->reading = 0;
    if (rc == GW_OK)
        sess_read(rd);
    else if (!gw_timer_active(&rd->retry))
        gw_timer_start(rd->st->mon_loop, &rd->retry, RECONNECT_MAX_MS);
}

static void sess_on_up(rconn *c) { sess_read(c->rd); }

static void on_sess_retry(gw_timer *t) { sess_read(gw_container_of(t, sreader, retry)); }

/* ============================== the store ops =============================== */

static void token_key(const rstore *st, const uint8_t hash[32], char *out, size_t cap)
{
    static const char hex[] = "0123456789abcdef";
    char h[65];
    for (int i = 0; i < 32; i++) {
        h[2 * i] = hex[hash[i] >> 4];
        h[2 * i + 1] = hex[hash[i] & 15];
    }
    h[64] = '\0';
    snprintf(out, cap, "%stok:%s", st->prefix, h);
}

static gw_store_op *r_put(gw_store *s, gw_loop *l, const uint8_t hash[32], const gw_token_ctx *ctx,
                          gw_store_put_cb cb, void *ud)
{
    rstore *st = (rstore *)s;
    rop *op = op_new(l, OP_PUT, ud);
    op->cb.put = cb;
    char key[256], exp[24], until[24];
    token_key(st, hash, key, sizeof key);
    snprintf(exp, sizeof exp, "%llu", (unsigned long long)ctx->expires_at_ms);
    snprintf(until, sizeof until, "%llu", (unsigned long long)(ctx->expires_at_ms + GW_TOKEN_TOMBSTONE_MARGIN_MS));
    size_t plen;
    char *packed = gw_token_ctx_pack(ctx, &plen);
    const char *argv[] = {"EVALSHA", put_sha, "1", key, exp, ctx->allocation_id, packed, until};
    size_t lens[] = {7, 40, 1, strlen(key), strlen(exp), strlen(ctx->allocation_id), plen,
                     strlen(until)};
    op_send_script(conn_for(st, l), op, 8, argv, lens);
    OPENSSL_cleanse(packed, plen);
    gw_free(packed);
    return (gw_store_op *)op;
}

static gw_store_op *r_consume(gw_store *s, gw_loop *l, const uint8_t hash[32], const char *allocation_id,
                              gw_store_consume_cb cb, void *ud)
{
    rstore *st = (rstore *)s;
    rop *op = op_new(l, OP_CONSUME, ud);
    op->cb.consume = cb;
    if (!hash) {
        op->res = GW_TOKEN_UNKNOWN;
        gw_loop_pending(l, &op->task);
        return (gw_store_op *)op;
    }
    char key[256], now[24], late[24] = "0";
    token_key(st, hash, key, sizeof key);
    snprintf(now, sizeof now, "%llu", (unsigned long long)st->base.now_ms());
    rconn *c = conn_for(st, l);
    if (c->clock_known) /* this request's deadline (its 503), on Redis' clock */
        snprintf(late, sizeof late, "%lld", (long long)((int64_t)(gw_wall_ms() + st->timeout_ms) + c->clock_offset_ms));
    const char *alloc = allocation_id ? allocation_id : "";
    const char *argv[] = {"EVALSHA", consume_sha, "1", key, now, alloc, allocation_id ? "1" : "0", late};
    size_t lens[] = {7, 40, 1, strlen(key), strlen(now), strlen(alloc), 1, strlen(late)};
    op_send_script(c, op, 8, argv, lens);
    return (gw_store_op *)op;
}

#define LOOKUP_WAIT_STEP_MS 20u /* a lookup during the startup catch-up looks again this often */

static void lookup_wait(gw_timer *t)
{
    rop *op = gw_container_of(t, rop, wait);
    if (!gw_store_caught_up()) {
        gw_timer_start(op->loop, &op->wait, LOOKUP_WAIT_STEP_MS);
        return;
    }
    op->found = gw_sessions_find_token(op->digest, &op->sess);
    op_answer(op);
}

static gw_store_op *r_session_lookup(gw_store *s, gw_loop *l, const uint8_t token_sha256[32], gw_store_session_cb cb,
                                     void *ud)
{
    GW_UNUSED(s);
    rop *op = op_new(l, OP_LOOKUP, ud);
    op->cb.session = cb;
    memcpy(op->digest, token_sha256, 32);
    if (!gw_store_caught_up()) { /* answered once the view is complete (the caller's deadline bounds it) */
        op->wait.cb = lookup_wait;
        gw_timer_start(l, &op->wait, LOOKUP_WAIT_STEP_MS);
        return (gw_store_op *)op;
    }
    op->found = gw_sessions_find_token(token_sha256, &op->sess); /* the view the stream keeps complete */
    gw_loop_pending(l, &op->task);
    return (gw_store_op *)op;
}

static gw_store_op *r_session_publish(gw_store *s, gw_loop *l, const gw_session *snap, gw_store_publish_cb cb,
                                      void *ud)
{
    rstore *st = (rstore *)s;
    rop *op = op_new(l, OP_PUBLISH, ud);
    op->cb.publish = cb;
    static const char hex[] = "0123456789abcdef";
    char tok[65], ver[24];
    for (int i = 0; i < 32; i++) {
        tok[2 * i] = hex[snap->token_sha256[i] >> 4];
        tok[2 * i + 1] = hex[snap->token_sha256[i] & 15];
    }
    tok[64] = '\0';
    snprintf(ver, sizeof ver, "%llu", (unsigned long long)snap->version);
    const char *argv[] = {"XADD",    st->sess.stream,        "MAXLEN",   "~",
                          STREAM_MAXLEN, "*",           "device_session_id", snap->device_session_id,
                          "user_id", snap->user_id,     "status",   gw_session_status_str(snap->status),
                          "token_sha256", tok,          "version",  ver};
    size_t lens[16];
    for (int i = 0; i < 16; i++)
        lens[i] = strlen(argv[i]);
    op_send(conn_for(st, l), op, 16, argv, lens);
    return (gw_store_op *)op;
}

static gw_store_op *r_event_publish(gw_store *s, gw_loop *l, const gw_event_in *ev, gw_store_publish_cb cb,
                                    void *ud)
{
    rstore *st = (rstore *)s;
    rop *op = op_new(l, OP_EVENT, ud);
    op->cb.publish = cb;
    const char *argv[14] = {"XADD", st->events_stream, "MAXLEN", "~", STREAM_MAXLEN, "*", "user_id", ev->user_id,
                            "type", ev->type, "payload", ev->payload ? ev->payload : "null"};
    int argc = 12;
    if (ev->device_session_id[0]) {
        argv[argc++] = "device_session_id";
        argv[argc++] = ev->device_session_id;
    }
    size_t lens[14];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    op_send(conn_for(st, l), op, argc, argv, lens);
    return (gw_store_op *)op;
}

/* Presence: KEYS[1] the user's hash, ARGV[1] the TTL (ms), ARGV[2] the
 * connection's field, ARGV[3] its value ('' deletes it), ARGV[4] now (ms).
 * A change is O(1): set or delete the field and renew the key's TTL. The
 * fields of a dead process (last_seen_ms older than the TTL) are dropped by
 * a full pass only when a new field brings the hash to a multiple of 64
 * fields, and by every get: refreshing N connections costs N O(1) calls,
 * never N passes over N fields (review3 F2: one session's 3,000 streams
 * made the shared Redis decode 9 M fields per refresh round). */
#define PRESENCE_PRUNE                                                                                                 \
    "local all = redis.call('HGETALL', KEYS[1])\n"                                                                    \
    "local live = {}\n"                                                                                               \
    "for i = 1, #all, 2 do\n"                                                                                         \
    "  local ok, v = pcall(cjson.decode, all[i + 1])\n"                                                               \
    "  if ok and type(v) == 'table' and tonumber(v.last_seen_ms or 0) + tonumber(ARGV[1]) >= tonumber(ARGV[4]) then\n" \
    "    live[#live + 1] = all[i]; live[#live + 1] = all[i + 1]\n"                                                    \
    "  else redis.call('HDEL', KEYS[1], all[i]) end\n"                                                                \
    "end\n"

static const char presence_put_script[] =
    "if ARGV[3] == '' then redis.call('HDEL', KEYS[1], ARGV[2]); return 0 end\n"
    "local new = redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])\n"
    "redis.call('PEXPIRE', KEYS[1], ARGV[1])\n"
    "if new == 1 and redis.call('HLEN', KEYS[1]) % 64 == 0 then\n" PRESENCE_PRUNE "end\n"
    "return 0\n";

/* The same arguments (ARGV[2], ARGV[3] unused): prune, then the live fields. */
static const char presence_get_script[] = PRESENCE_PRUNE "return live\n";

static rop *presence_send(rstore *st, gw_loop *l, int kind, void *ud, const char *user, const char *field,
                          const char *value, uint64_t ttl_ms)
{
    rop *op = op_new(l, kind, ud);
    char key[512], ttl[24], now[24];
    snprintf(key, sizeof key, "%spresence:%s", st->prefix, user);
    snprintf(ttl, sizeof ttl, "%llu", (unsigned long long)ttl_ms);
    snprintf(now, sizeof now, "%llu", (unsigned long long)gw_wall_ms());
    const char *argv[] = {"EVAL", kind == OP_PRESENCE_GET ? presence_get_script : presence_put_script,
                          "1", key, ttl, field, value ? value : "", now};
    size_t lens[8];
    for (int i = 0; i < 8; i++)
        lens[i] = strlen(argv[i]);
    return op_send(conn_for(st, l), op, 8, argv, lens);
}

static void r_presence_put(gw_store *s, gw_loop *l, const char *user, const char *field, const char *value,
                           uint64_t ttl_ms)
{
    presence_send((rstore *)s, l, OP_PRESENCE, NULL, user, field, value, ttl_ms);
}

static gw_store_op *r_presence_get(gw_store *s, gw_loop *l, const char *user, uint64_t ttl_ms,
                                   gw_store_publish_cb cb, void *ud)
{
    rop *op = presence_send((rstore *)s, l, OP_PRESENCE_GET, ud, user, "", NULL, ttl_ms);
    op->cb.publish = cb;
    return (gw_store_op *)op;
}

static void r_cancel(gw_store_op *o)
{
    rop *op = (rop *)o;
    if (!op)
        return;
    OPENSSL_cleanse(&op->ctx, sizeof op->ctx);
    if (gw_list_linked(&op->node)) {
        op->cancelled = 1; /* freed when Redis answers or the connection drops */
        return;
    }
    if (gw_timer_active(&op->wait))
        gw_timer_stop(op->loop, &op->wait);
    gw_task_cancel(&op->task);
    op_free(op);
}

static int r_healthy(gw_store *s)
{
    rstore *st = (rstore *)s;
    return atomic_load(&st->ndown) == 0 && atomic_load(&st->stream_bad) == 0;
}

/* Frees the store; every loop that has a connection must be idle (stopped
 * or this thread's). The monitor thread is stopped first. */
static void mon_stop(void *arg)
{
    rstore *st = arg;
    gw_loop_stop(st->mon_loop);
}

static void r_free(gw_store *s)
{
    rstore *st = (rstore *)s;
    gw_loop_post(st->mon_loop, mon_stop, st);
    pthread_join(st->mon_thread, NULL);
    /* Free every context first (their callbacks may arm timers), then
     * stop the timers, then free the connections. */
    for (rconn *c = st->conns; c; c = c->next) {
        c->on_up = NULL;
        if (c->ev.ac) {
            c->ev.ac->onDisconnect = NULL;
            redisAsyncFree(c->ev.ac);
        }
    }
    if (gw_timer_active(&st->sess.retry))
        gw_timer_stop(st->mon_loop, &st->sess.retry);
    if (gw_timer_active(&st->evr.retry))
        gw_timer_stop(st->mon_loop, &st->evr.retry);
    if (gw_timer_active(&st->ping))
        gw_timer_stop(st->mon_loop, &st->ping);
    rconn *c = st->conns;
    while (c) {
        rconn *next = c->next;
        if (gw_timer_active(&c->retry))
            gw_timer_stop(c->loop, &c->retry);
        if (gw_timer_active(&c->watch))
            gw_timer_stop(c->loop, &c->watch);
        if (gw_timer_active(&c->setup))
            gw_timer_stop(c->loop, &c->setup);
        if (c->down)
            atomic_fetch_sub(&st->ndown, 1);
        if (tl_conn == c)
            tl_conn = NULL;
        gw_free(c);
        c = next;
    }
    gw_loop_free(st->mon_loop);
    pthread_mutex_destroy(&st->mu);
    OPENSSL_cleanse(st->password, sizeof st->password);
    gw_free(st);
}

static const gw_store_ops redis_ops = {"redis",   r_put,     r_consume, r_session_lookup, r_session_publish,
                                       r_cancel, r_healthy, r_free,   r_event_publish, r_presence_put,
                                       r_presence_get};

/* ================================= startup ================================== */

/* Resolves host once, at startup (a worker never waits for DNS). */
static int resolve(const char *host, char *out, size_t cap)
{
    if (!host[0]) {
        snprintf(out, cap, "127.0.0.1");
        return GW_OK;
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    if (getaddrinfo(host, NULL, &hints, &res) != 0 || !res)
        return GW_ERR;
    int rc = getnameinfo(res->ai_addr, res->ai_addrlen, out, (socklen_t)cap, NULL, 0, NI_NUMERICHOST);
    freeaddrinfo(res);
    return rc == 0 ? GW_OK : GW_ERR;
}

/* The time left until deadline (monotonic ms) as a socket timeout, at
 * least 1 ms; 0 when it has passed. */
static int time_left(uint64_t deadline, struct timeval *tv)
{
    uint64_t now = gw_mono_ms();
    if (now >= deadline)
        return 0;
    uint64_t left = deadline - now;
    *tv = (struct timeval){(time_t)(left / 1000), (suseconds_t)(left % 1000) * 1000};
    return 1;
}

/* One command on a blocking context, bounded by deadline as a whole (not
 * per read: a peer trickling a byte at a time cannot stretch it). NULL on
 * an error or at the deadline (rc->errstr says which). */
static redisReply *bounded_command(redisContext *rc, uint64_t deadline, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rv = redisvAppendCommand(rc, fmt, ap);
    va_end(ap);
    if (rv != REDIS_OK)
        return NULL;
    struct timeval tv;
    int done = 0;
    while (!done)
        if (!time_left(deadline, &tv) || redisSetTimeout(rc, tv) != REDIS_OK || redisBufferWrite(rc, &done) != REDIS_OK)
            goto late;
    for (;;) {
        void *reply = NULL;
        if (redisGetReplyFromReader(rc, &reply) != REDIS_OK)
            return NULL;
        if (reply)
            return reply;
        if (!time_left(deadline, &tv) || redisSetTimeout(rc, tv) != REDIS_OK || redisBufferRead(rc) != REDIS_OK)
            goto late;
    }
late:
    if (!rc->err || (rc->err == REDIS_ERR_IO && (errno == EAGAIN || errno == EWOULDBLOCK)))
        snprintf(rc->errstr, sizeof rc->errstr, "no answer within GATEWAY_STORE_TIMEOUT");
    return NULL;
}

/* One blocking connection, AUTH, SELECT, PING, all within one
 * GATEWAY_STORE_TIMEOUT. */
static int startup_check(rstore *st, char *err, size_t errcap)
{
    uint64_t deadline = gw_mono_ms() + st->timeout_ms;
    struct timeval tv = {(time_t)(st->timeout_ms / 1000), (suseconds_t)(st->timeout_ms % 1000) * 1000};
    redisContext *rc = st->is_unix ? redisConnectUnixWithTimeout(st->path, tv)
                                   : redisConnectWithTimeout(st->host, st->port, tv);
    if (!rc || rc->err) {
        snprintf(err, errcap, "GATEWAY_REDIS_MASTER_ADDR: %s does not answer (%s); not starting", st->addr_text,
                 rc ? rc->errstr : "out of memory");
        redisFree(rc);
        return GW_ERR;
    }
    gw_redis_limit lim;
    gw_redis_reader_limit(rc->reader, &lim);
    struct {
        const char *what;
        redisReply *r;
    } steps[3] = {{"AUTH", NULL}, {"SELECT", NULL}, {"PING", NULL}};
    int ok = GW_OK;
    for (int i = 0; i < 3 && ok == GW_OK; i++) {
        if (i == 0 && !st->password[0])
            continue;
        redisReply *r = i == 0   ? bounded_command(rc, deadline, "AUTH %s", st->password)
                        : i == 1 ? bounded_command(rc, deadline, "SELECT %d", st->db)
                                 : bounded_command(rc, deadline, "PING");
        if (!r || r->type == REDIS_REPLY_ERROR || (i == 2 && !reply_is(r, "PONG"))) {
            snprintf(err, errcap, "GATEWAY_REDIS_MASTER_ADDR: %s: %s failed (%s); not starting", st->addr_text,
                     steps[i].what, r ? (r->type == REDIS_REPLY_ERROR ? r->str : "unexpected reply")
                                      : lim.refused   ? lim.refused
                                      : (rc->errstr[0] ? rc->errstr : "no answer within GATEWAY_STORE_TIMEOUT"));
            ok = GW_ERR;
        }
        if (r)
            freeReplyObject(r);
    }
    /* Each stream's last entry now: the readers read up to it before the
     * process calls itself ready (an error here is the reader's to report). */
    sreader *rds[2] = {&st->sess, &st->evr};
    for (int i = 0; i < 2 && ok == GW_OK; i++) {
        redisReply *r = bounded_command(rc, deadline, "XREVRANGE %s + - COUNT 1", rds[i]->stream);
        rds[i]->target[0] = '\0';
        if (r && r->type == REDIS_REPLY_ARRAY && r->elements == 1 && r->element[0]->type == REDIS_REPLY_ARRAY &&
            r->element[0]->elements == 2 && r->element[0]->element[0]->type == REDIS_REPLY_STRING &&
            r->element[0]->element[0]->len < sizeof rds[i]->target) {
            memcpy(rds[i]->target, r->element[0]->element[0]->str, r->element[0]->element[0]->len);
            rds[i]->target[r->element[0]->element[0]->len] = '\0';
        }
        if (r)
            freeReplyObject(r);
    }
    redisFree(rc);
    return ok;
}

gw_store *gw_store_redis(const gw_config *cfg, char *err, size_t errcap)
{
    gw_addr a;
    if (gw_parse_addr(cfg->redis_master_addr, &a) != GW_OK) {
        snprintf(err, errcap, "GATEWAY_REDIS_MASTER_ADDR: cannot parse \"%s\" as an address", cfg->redis_master_addr);
        return NULL;
    }
    rstore *st = gw_calloc(1, sizeof *st);
    st->base.ops = &redis_ops;
    st->base.now_ms = wall_ms;
    st->is_unix = a.is_unix;
    snprintf(st->path, sizeof st->path, "%s", a.path);
    st->port = a.port;
    gw_addr_format(&a, st->addr_text, sizeof st->addr_text);
    snprintf(st->password, sizeof st->password, "%s", cfg->redis_password);
    st->db = cfg->redis_db;
    snprintf(st->prefix, sizeof st->prefix, "%s", cfg->redis_key_prefix);
    snprintf(st->sess.stream, sizeof st->sess.stream, "%s", cfg->session_events_stream);
    snprintf(st->sess.last_id, sizeof st->sess.last_id, "0-0");
    st->sess.role = "sessions";
    st->sess.bit = 1;
    st->sess.apply = apply_session;
    st->sess.malformed = gw_sessions_malformed;
    snprintf(st->evr.stream, sizeof st->evr.stream, "%s", cfg->client_events_stream);
    snprintf(st->events_stream, sizeof st->events_stream, "%s", cfg->client_events_stream);
    gw_event_id from = gw_events_start_id(); /* the history window's start (gw_events_init ran) */
    snprintf(st->evr.last_id, sizeof st->evr.last_id, "%llu-%llu", (unsigned long long)from.ms,
             (unsigned long long)from.seq);
    st->evr.role = "events";
    st->evr.bit = 2;
    st->evr.apply = apply_event;
    st->evr.malformed = gw_events_malformed;
    script_sha(put_script, put_sha);
    script_sha(consume_script, consume_sha);
    st->timeout_ms = cfg->store_timeout_ms ? cfg->store_timeout_ms : 2000;
    if (!a.is_unix && resolve(a.host, st->host, sizeof st->host) != GW_OK) {
        snprintf(err, errcap, "GATEWAY_REDIS_MASTER_ADDR: cannot resolve \"%s\"; not starting", a.host);
        gw_free(st);
        return NULL;
    }
    signal(SIGPIPE, SIG_IGN); /* a write to a closed Redis socket is an error, not a signal */
    if (startup_check(st, err, errcap) != GW_OK) {
        OPENSSL_cleanse(st->password, sizeof st->password);
        gw_free(st);
        return NULL;
    }
    pthread_mutex_init(&st->mu, NULL);
    atomic_init(&st->ndown, 0);
    atomic_init(&st->stream_bad, 0);
    /* A reader with nothing to read at startup is caught up already. */
    st->sess.done = !st->sess.target[0];
    st->evr.done = !st->evr.target[0];
    atomic_init(&st->caught_up, (st->sess.done ? 1 : 0) | (st->evr.done ? 2 : 0));
    gw_store_set_caught_up(st->sess.done && st->evr.done);
    st->started_ms = gw_mono_ms();
    st->mon_loop = gw_loop_new();
    gw_loop_post(st->mon_loop, mon_start, st);
    /* Signals belong to the main thread (gw_server_run waits for them):
     * the monitor starts with every signal blocked. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    pthread_create(&st->mon_thread, NULL, mon_main, st);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return &st->base;
}

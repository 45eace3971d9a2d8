/* push.c: the /ws/events route kind and the fan-out (see push.h).
 *
 * One event, N subscribers: the history (store/events.c) encodes the event
 * once into a WebSocket text frame and calls the fan-out hook, in id order,
 * under its lock. The hook posts the event (one reference each) to every
 * worker's loop. On the worker, deliver() puts a reference into the queue
 * of every matching subscriber (user_id, and device_session_id when the
 * event names one) whose high-water id is below the event's, and marks the
 * subscriber dirty; before the loop sleeps, flush() writes each dirty
 * subscriber's queued frames with one writev straight from the shared
 * frames (no copy per subscriber; only bytes the kernel did not take are
 * copied into the connection's queue). A subscriber whose queue holds more
 * than GATEWAY_PUSH_QUEUE_LIMIT unsent events is closed 1013. */
#include "push/push.h"

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <strings.h>

#include "core/alloc.h"
#include "core/common.h"
#include "core/list.h"
#include "core/rand.h"
#include "http/bearer.h"
#include "http/ws_handshake.h"
#include "log/log.h"
#include "metrics/metrics.h"
#include "server/admin_wait.h"
#include "server/http_serve.h"
#include "server/state.h"
#include "server/ws_serve.h"
#include "store/events.h"
#include "store/store.h"

#define FLUSH_IOV 64
#define GW_PRESENCE_TTL_MS 60000u /* presence hash TTL; refreshed every 20 s */
#define SHUTDOWN_DELAY_MIN_MS 500u
#define SHUTDOWN_DELAY_SPREAD_MS 4500u

static const char cause_overflow[] = "overflow";
static const char cause_revoked[] = "revoked";
static const char cause_credentials[] = "revoked"; /* the same close cause; its own reason (pointer compared) */
static const char cause_resync[] = "resync_required";
static const char cause_write_error[] = "write_error";

static struct {
    uint64_t queue_limit;
    uint64_t max_streams; /* GATEWAY_PUSH_MAX_STREAMS_PER_SESSION */
    uint64_t presence_ttl_ms; /* the presence hash's TTL; refreshed every third of it */
    char instance_id[128];    /* this process in presence entries: <hostname>-<pid> */
    uint64_t store_timeout_ms;
    gw_metric *m_deliveries, *m_overflows, *m_subscribers, *m_write_errors, *m_latency;
    gw_metric *m_drop_overflow, *m_drop_closed;
    gw_metric *m_resume_live, *m_resume_replayed, *m_resume_resync;
    gw_metric *m_published;
} P;

/* ======================= streams per device session =========================
 * Process-wide (a session's streams land on any worker): one count per
 * device session with streams open, under a mutex, taken before the 101
 * and given back when the stream ends (review3 F2: one session opened
 * thousands of streams, each costing presence work on the shared Redis). */

typedef struct scount {
    struct scount *next;
    unsigned n;
    char dev[GW_SESSION_ID_MAX + 1];
} scount;

#define SCOUNT_SLOTS 1024
static pthread_mutex_t sc_mu = PTHREAD_MUTEX_INITIALIZER;
static scount *sc_slots[SCOUNT_SLOTS];

static unsigned sc_slot(const char *dev)
{
    uint32_t h = 2166136261u;
    for (const unsigned char *p = (const unsigned char *)dev; *p; p++)
        h = (h ^ *p) * 16777619u;
    return h % SCOUNT_SLOTS;
}

/* One more stream for dev: 1, or 0 when it holds P.max_streams already. */
static int streams_take(const char *dev)
{
    pthread_mutex_lock(&sc_mu);
    scount **pp = &sc_slots[sc_slot(dev)];
    while (*pp && strcmp((*pp)->dev, dev) != 0)
        pp = &(*pp)->next;
    int ok = 1;
    if (!*pp) {
        scount *c = gw_calloc(1, sizeof *c);
        snprintf(c->dev, sizeof c->dev, "%s", dev);
        *pp = c;
    }
    if ((*pp)->n >= P.max_streams)
        ok = 0;
    else
        (*pp)->n++;
    if (!(*pp)->n) { /* refused with none open: nothing to keep */
        scount *c = *pp;
        *pp = c->next;
        gw_free(c);
    }
    pthread_mutex_unlock(&sc_mu);
    return ok;
}

static void streams_release(const char *dev)
{
    pthread_mutex_lock(&sc_mu);
    for (scount **pp = &sc_slots[sc_slot(dev)]; *pp; pp = &(*pp)->next) {
        if (strcmp((*pp)->dev, dev) == 0) {
            if (--(*pp)->n == 0) {
                scount *c = *pp;
                *pp = c->next;
                gw_free(c);
            }
            break;
        }
    }
    pthread_mutex_unlock(&sc_mu);
}

/* ============================== per worker ================================== */

typedef struct sub sub;

/* The subscribers of one user on one worker: an event for a user touches
 * only its group (a worker with 50,000 subscribers of 10,000 users looks at
 * five per event, not 50,000). */
typedef struct ugroup {
    struct ugroup *next; /* hash chain */
    uint64_t hash;
    gw_list subs; /* sub.gnode */
    char user_id[GW_SESSION_ID_MAX + 1];
} ugroup;

typedef struct pworker {
    pthread_mutex_t mu; /* the inbox */
    gw_event **inbox;   /* events posted to this worker, not yet delivered */
    size_t ninbox, capinbox;
    gw_list subs;  /* sub.node: all of this worker's subscribers */
    ugroup **groups; /* by user_id; ngroups_cap slots, a power of two */
    size_t ngroups, ngroups_cap;
    gw_list dirty; /* sub.dirty_node: frames to write */
    gw_task flush; /* before the loop sleeps */
    gw_timer presence; /* refreshes this worker's subscribers' presence */
    gw_loop *loop;
} pworker;

static pworker *PW; /* gw_srv.nworkers of them, made when the first worker serves a subscriber */
static int PW_n;

struct sub {
    const gw_push_owner *ops; /* the stream that carries the events (a WebSocket, a gRPC stream) */
    void *owner;
    char corr[72];            /* the subscription's correlation id (presence field) */
    int allocated;            /* made by gw_push_subscribe (freed by gw_push_unsubscribe) */
    int counted;              /* holds one of its session's GATEWAY_PUSH_MAX_STREAMS_PER_SESSION places */
    int replaying;            /* a resume still replaying the history in steps (live events wait for it) */
    gw_event_id replay_pos;   /* the last event the replay handed */
    gw_list node, dirty_node, gnode;
    pworker *pw;
    ugroup *group;
    char user_id[GW_SESSION_ID_MAX + 1];
    char dev[GW_SESSION_ID_MAX + 1];
    gw_event_id hw;    /* the highest id queued (or replayed past): live events at or below are duplicates */
    gw_event **q;      /* ring of references, oldest at qhead */
    size_t qcap, qhead, qn;
    uint64_t delivered;
    int closing;       /* a close was started: queue nothing more */
    const char *close_cause;
    int shutdown_sent;
    char cursor[GW_EVENT_ID_MAX];
    const char *resume; /* "live", "replayed", "resync" */
    uint64_t connected_at_ms; /* wall clock */
    int present;        /* a presence entry was written */
};

static void flush_task(gw_task *t);
static void presence_tick(gw_timer *t);
static void replay_one(gw_event *e, void *arg);

static void q_push(sub *s, gw_event *e)
{
    if (s->qn == s->qcap) {
        size_t ncap = s->qcap ? s->qcap * 2 : 16;
        gw_event **r = gw_malloc(ncap * sizeof *r);
        for (size_t i = 0; i < s->qn; i++)
            r[i] = s->q[(s->qhead + i) % s->qcap];
        gw_free(s->q);
        s->q = r;
        s->qcap = ncap;
        s->qhead = 0;
    }
    s->q[(s->qhead + s->qn) % s->qcap] = gw_event_ref(e);
    s->qn++;
    if (gw_event_id_cmp(e->id, s->hw) > 0)
        s->hw = e->id;
}

static void q_clear(sub *s)
{
    for (size_t i = 0; i < s->qn; i++)
        gw_event_unref(s->q[(s->qhead + i) % s->qcap]);
    s->qn = s->qhead = 0;
}

/* The one targeting rule, for live delivery and for the replay: e is for
 * s's user and, when it names a device session, for s's session. */
static int sub_wants(const sub *s, const gw_event *e)
{
    return strcmp(s->user_id, e->user_id) == 0 && (!e->device_session_id[0] || strcmp(s->dev, e->device_session_id) == 0);
}

/* The replay hands every held event after the cursor: only the
 * subscriber's own (its user, and its session when the event names one)
 * are queued, as live delivery does (review3 F1: a resume with any cursor
 * got every user's events). */
static void replay_one(gw_event *e, void *arg)
{
    sub *s = arg;
    if (sub_wants(s, e))
        q_push(s, e);
}

static void mark_dirty(sub *s)
{
    if (!gw_list_linked(&s->dirty_node))
        gw_list_insert_tail(&s->pw->dirty, &s->dirty_node);
    gw_loop_pending(s->pw->loop, &s->pw->flush);
}

/* One step of a replay in steps: queues the subscriber's own events among
 * the next GATEWAY_PUSH_QUEUE_LIMIT held after replay_pos. GW_OK (more to
 * come while s->replaying), or GW_AGAIN when the history no longer holds
 * replay_pos (resync). */
static int replay_step(sub *s)
{
    gw_event_id pos;
    int rc = gw_events_replay_some(&s->replay_pos, P.queue_limit, replay_one, s, &pos, &s->hw);
    if (rc == 1) {
        s->replay_pos = pos;
        s->replaying = 1;
        return GW_OK;
    }
    s->replaying = 0;
    return rc;
}

/* Writes what s's queue holds while its stream takes it; ends the stream
 * the hub decided to end (overflow, revocation). Runs from the flush task,
 * never while a worker list is being walked. */
static void sub_flush(sub *s)
{
    if (s->close_cause) {
        const char *cause = s->close_cause;
        s->close_cause = NULL;
        if (!s->closing) {
            s->closing = 1;
            q_clear(s);
            s->ops->end(s->owner, cause == cause_overflow      ? GW_PUSH_END_OVERFLOW
                                  : cause == cause_credentials ? GW_PUSH_END_CREDENTIALS
                                  : cause == cause_resync      ? GW_PUSH_END_RESYNC
                                                               : GW_PUSH_END_REVOKED);
        }
        return;
    }
    if (s->closing)
        return;
    uint64_t now = gw_mono_ms();
    for (;;) {
        /* A resume replays in steps of at most GATEWAY_PUSH_QUEUE_LIMIT
         * events, the next once the queue is written (review3 F5: the whole
         * window sat in one subscriber's queue). */
        if (!s->qn && s->replaying && s->ops->writable(s->owner)) {
            if (replay_step(s) == GW_AGAIN) {
                s->close_cause = cause_resync;
                sub_flush(s);
                return;
            }
            if (!s->qn)
                continue; /* a step with none of its events: the next step */
        }
        if (!s->qn || !s->ops->writable(s->owner))
            break;
        gw_event *ev[FLUSH_IOV];
        size_t n = 0;
        while (n < FLUSH_IOV && n < s->qn) {
            ev[n] = s->q[(s->qhead + n) % s->qcap];
            n++;
        }
        gw_histogram_observe(P.m_latency, (double)(now - GW_MIN(now, ev[0]->read_mono_ms)) / 1000.0);
        int rc = s->ops->write(s->owner, ev, n);
        for (size_t i = 0; i < n; i++) {
            gw_event_unref(s->q[s->qhead]);
            s->qhead = (s->qhead + 1) % s->qcap;
            s->qn--;
        }
        if (rc != GW_OK) {
            /* The owner's stream is dead: it closed itself. */
            gw_counter_inc(P.m_write_errors);
            q_clear(s);
            s->closing = 1;
            return;
        }
        s->delivered += n;
        gw_counter_add(P.m_deliveries, n);
    }
}

static void flush_task(gw_task *t)
{
    pworker *pw = gw_container_of(t, pworker, flush);
    while (!gw_list_empty(&pw->dirty)) {
        sub *s = gw_container_of(pw->dirty.next, sub, dirty_node);
        gw_list_remove(&s->dirty_node);
        sub_flush(s);
    }
}

/* ============================ groups by user ================================= */

static uint64_t user_hash(const char *u)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (const unsigned char *p = (const unsigned char *)u; *p; p++)
        h = (h ^ *p) * 1099511628211ull;
    return h;
}

static ugroup *group_find(const pworker *pw, const char *user)
{
    if (!pw->ngroups_cap)
        return NULL;
    uint64_t h = user_hash(user);
    for (ugroup *g = pw->groups[h & (pw->ngroups_cap - 1)]; g; g = g->next)
        if (g->hash == h && strcmp(g->user_id, user) == 0)
            return g;
    return NULL;
}

static void groups_grow(pworker *pw)
{
    size_t ncap = pw->ngroups_cap ? pw->ngroups_cap * 2 : 64;
    ugroup **t = gw_calloc(ncap, sizeof *t);
    for (size_t i = 0; i < pw->ngroups_cap; i++) {
        for (ugroup *g = pw->groups[i], *next; g; g = next) {
            next = g->next;
            g->next = t[g->hash & (ncap - 1)];
            t[g->hash & (ncap - 1)] = g;
        }
    }
    gw_free(pw->groups);
    pw->groups = t;
    pw->ngroups_cap = ncap;
}

static void group_join(sub *s)
{
    pworker *pw = s->pw;
    ugroup *g = group_find(pw, s->user_id);
    if (!g) {
        if (pw->ngroups + 1 > pw->ngroups_cap)
            groups_grow(pw);
        g = gw_calloc(1, sizeof *g);
        g->hash = user_hash(s->user_id);
        gw_list_init(&g->subs);
        snprintf(g->user_id, sizeof g->user_id, "%s", s->user_id);
        g->next = pw->groups[g->hash & (pw->ngroups_cap - 1)];
        pw->groups[g->hash & (pw->ngroups_cap - 1)] = g;
        pw->ngroups++;
    }
    gw_list_insert_tail(&g->subs, &s->gnode);
    s->group = g;
}

static void group_leave(sub *s)
{
    ugroup *g = s->group;
    if (!g)
        return;
    gw_list_remove(&s->gnode);
    s->group = NULL;
    if (!gw_list_empty(&g->subs))
        return;
    pworker *pw = s->pw;
    for (ugroup **pp = &pw->groups[g->hash & (pw->ngroups_cap - 1)]; *pp; pp = &(*pp)->next) {
        if (*pp == g) {
            *pp = g->next;
            break;
        }
    }
    pw->ngroups--;
    gw_free(g);
}


/* On a worker: one event (one reference, ours) to its subscribers. */
static void deliver(pworker *pw, gw_event *e)
{
    ugroup *g = group_find(pw, e->user_id);
    for (gw_list *it = g ? g->subs.next : NULL; g && it != &g->subs; it = it->next) {
        sub *s = gw_container_of(it, sub, gnode);
        if (!sub_wants(s, e) || s->replaying || gw_event_id_cmp(e->id, s->hw) <= 0)
            continue; /* (a replaying subscriber gets it from the history) */
        if (s->closing || s->close_cause) { /* its stream is ending: the resume gets it */
            gw_counter_inc(P.m_drop_closed);
            continue;
        }
        if (s->qn >= P.queue_limit) {
            gw_counter_inc(P.m_overflows);
            gw_counter_add(P.m_drop_overflow, s->qn + 1);
            s->close_cause = cause_overflow;
            q_clear(s);
            mark_dirty(s);
            continue;
        }
        q_push(s, e);
        mark_dirty(s);
    }
    gw_event_unref(e);
}

/* On a worker: the events its inbox gathered since the last wake-up. */
static void inbox_drain(void *arg)
{
    pworker *pw = arg;
    pthread_mutex_lock(&pw->mu);
    gw_event **v = pw->inbox;
    size_t n = pw->ninbox;
    pw->inbox = NULL;
    pw->ninbox = pw->capinbox = 0;
    pthread_mutex_unlock(&pw->mu);
    for (size_t i = 0; i < n; i++)
        deliver(pw, v[i]);
    gw_free(v);
}

/* The workers' push state, made once the workers exist. */
static pthread_mutex_t pw_mu = PTHREAD_MUTEX_INITIALIZER;
static atomic_int pw_ready;

static int pw_setup(void)
{
    if (atomic_load(&pw_ready))
        return 1;
    pthread_mutex_lock(&pw_mu);
    /* Not before every worker's loop exists: the store's reader may fan
     * out while the server is still creating them. */
    if (!atomic_load(&pw_ready) && atomic_load(&gw_srv.workers_ready) && gw_srv.nworkers > 0) {
        PW = gw_calloc((size_t)gw_srv.nworkers, sizeof *PW);
        for (int i = 0; i < gw_srv.nworkers; i++) {
            gw_list_init(&PW[i].subs);
            gw_list_init(&PW[i].dirty);
            gw_list_init(&PW[i].flush.node);
            PW[i].flush.fn = flush_task;
            PW[i].presence.cb = presence_tick;
            PW[i].loop = gw_srv.workers[i].loop;
            pthread_mutex_init(&PW[i].mu, NULL);
        }
        PW_n = gw_srv.nworkers;
        atomic_store(&pw_ready, 1);
    }
    pthread_mutex_unlock(&pw_mu);
    return atomic_load(&pw_ready);
}

/* The fan-out hook: any thread, under the history's lock, in id order:
 * one reference per worker into its inbox, and a wake-up when the inbox
 * was empty (a burst of events costs one post per worker). */
static void fan_out(gw_event *e, void *arg)
{
    GW_UNUSED(arg);
    if (!pw_setup())
        return;
    for (int i = 0; i < PW_n; i++) {
        pworker *pw = &PW[i];
        pthread_mutex_lock(&pw->mu);
        if (pw->ninbox == pw->capinbox) {
            pw->capinbox = pw->capinbox ? pw->capinbox * 2 : 64;
            pw->inbox = gw_realloc(pw->inbox, pw->capinbox * sizeof *pw->inbox);
        }
        pw->inbox[pw->ninbox++] = gw_event_ref(e);
        int wake = pw->ninbox == 1;
        pthread_mutex_unlock(&pw->mu);
        if (wake)
            gw_loop_post(pw->loop, inbox_drain, pw);
    }
}

static pworker *pw_self(void)
{
    for (int i = 0; i < PW_n; i++)
        if (pthread_equal(gw_srv.workers[i].thread, pthread_self()))
            return &PW[i];
    return NULL;
}

/* ============================== revocation ================================== */

typedef struct revoke_msg {
    char dev[GW_SESSION_ID_MAX + 1];
    atomic_int refs; /* workers still to run it */
    int credentials; /* the bearer or user changed (the session is still active) */
} revoke_msg;

static void revoke_on_worker(void *arg)
{
    revoke_msg *m = arg;
    pworker *pw = pw_self();
    if (pw) {
        for (gw_list *it = pw->subs.next; it != &pw->subs; it = it->next) {
            sub *s = gw_container_of(it, sub, node);
            if (!s->closing && strcmp(s->dev, m->dev) == 0) {
                s->close_cause = m->credentials ? cause_credentials : cause_revoked;
                q_clear(s);
                mark_dirty(s);
            }
        }
    }
    if (atomic_fetch_sub(&m->refs, 1) == 1)
        gw_free(m);
}

static void on_revoke(const gw_session *snap, void *arg)
{
    GW_UNUSED(arg);
    if (!pw_setup())
        return;
    int n = PW_n;
    revoke_msg *m = gw_calloc(1, sizeof *m);
    snprintf(m->dev, sizeof m->dev, "%s", snap->device_session_id);
    m->credentials = snap->status != GW_SESSION_REVOKED;
    atomic_init(&m->refs, n);
    for (int i = 0; i < PW_n; i++)
        if (PW[i].loop)
            gw_loop_post(PW[i].loop, revoke_on_worker, m);
}

/* =============================== presence ==================================== */

static void presence_field(const sub *s, char *out, size_t cap)
{
    snprintf(out, cap, "%s:%s", P.instance_id, s->corr);
}

static void presence_write(sub *s, int present)
{
    gw_store *st = gw_store_current();
    if (!st)
        return;
    char field[256], value[512];
    presence_field(s, field, sizeof field);
    if (present) {
        snprintf(value, sizeof value, "{\"instance_id\":\"%s\",\"connected_at_ms\":%llu,\"last_seen_ms\":%llu}",
                 P.instance_id, (unsigned long long)s->connected_at_ms, (unsigned long long)gw_wall_ms());
    }
    st->ops->presence_put(st, s->pw->loop, s->user_id, field, present ? value : NULL, P.presence_ttl_ms);
    s->present = present;
}

static void presence_tick(gw_timer *t)
{
    pworker *pw = gw_container_of(t, pworker, presence);
    for (gw_list *it = pw->subs.next; it != &pw->subs; it = it->next) {
        sub *s = gw_container_of(it, sub, node);
        if (!s->closing && s->present)
            presence_write(s, 1);
    }
    if (!gw_list_empty(&pw->subs))
        gw_timer_start(pw->loop, &pw->presence, GW_MAX(P.presence_ttl_ms / 3, 1));
}

/* ============================ the subscriber API ============================ */

static void replay_one(gw_event *e, void *arg);

/* Lists s on this worker and queues what its cursor missed (the owner sent
 * its bootstrap already: the queue is written from the flush task, after).
 * GW_OK, or GW_AGAIN when the cursor is older than the history (s is
 * listed; its owner says resync and ends the stream). */
static int sub_start(sub *s, const gw_push_owner *ops, void *owner, const char *user, const char *dev,
                     const char *corr, const gw_event_id *cursor, const char *cursor_text)
{
    s->ops = ops;
    s->owner = owner;
    s->pw = pw_self();
    gw_list_init(&s->node);
    gw_list_init(&s->dirty_node);
    gw_list_init(&s->gnode);
    snprintf(s->user_id, sizeof s->user_id, "%s", user);
    snprintf(s->dev, sizeof s->dev, "%s", dev);
    snprintf(s->corr, sizeof s->corr, "%s", corr);
    snprintf(s->cursor, sizeof s->cursor, "%s", cursor_text ? cursor_text : "");
    gw_gauge_add(P.m_subscribers, 1);
    gw_list_insert_tail(&s->pw->subs, &s->node);
    group_join(s);
    s->connected_at_ms = gw_wall_ms();
    /* The replay and the high-water mark come under the history's lock: an
     * event appended after it reaches this worker's inbox after now. */
    int rc = GW_OK;
    if (!cursor) {
        rc = gw_events_replay(NULL, replay_one, s, &s->hw); /* live from the history's last id */
    } else {
        s->replay_pos = *cursor;
        rc = replay_step(s);
    }
    if (rc == GW_AGAIN) {
        s->resume = "resync";
        gw_counter_inc(P.m_resume_resync);
        return GW_AGAIN;
    }
    presence_write(s, 1);
    if (!gw_timer_active(&s->pw->presence))
        gw_timer_start(s->pw->loop, &s->pw->presence, GW_MAX(P.presence_ttl_ms / 3, 1));
    s->resume = !cursor ? "live" : "replayed";
    gw_counter_inc(cursor ? P.m_resume_replayed : P.m_resume_live);
    /* Revoked between the lookup and now: the hook's post may have run
     * before this subscriber was listed. */
    gw_session now;
    if (gw_sessions_get(s->dev, &now) && now.status == GW_SESSION_REVOKED) {
        s->close_cause = cause_revoked;
        q_clear(s);
    } else if (gw_sessions_get(s->dev, &now) && strcmp(now.user_id, s->user_id) != 0) {
        s->close_cause = cause_credentials; /* moved to another user since the lookup */
        q_clear(s);
    }
    mark_dirty(s);
    return GW_OK;
}

/* Off the worker's lists (the stream ended). */
static void sub_stop(sub *s)
{
    gw_list_remove(&s->node);
    group_leave(s);
    if (s->counted) {
        s->counted = 0;
        streams_release(s->dev);
    }
    gw_list_remove(&s->dirty_node);
    q_clear(s);
    if (s->present)
        presence_write(s, 0);
    gw_gauge_add(P.m_subscribers, -1);
}

int gw_push_ready(void) { return pw_setup() && pw_self() != NULL; }

gw_push_sub *gw_push_subscribe(const gw_push_owner *ops, void *owner, const char *user, const char *dev,
                               const char *corr, const gw_event_id *cursor, const char *cursor_text,
                               int *resync)
{
    *resync = 0;
    if (!gw_push_ready())
        return NULL;
    if (!streams_take(dev)) {
        *resync = 2;
        return NULL;
    }
    sub *s = gw_calloc(1, sizeof *s);
    s->allocated = 1;
    s->counted = 1;
    if (sub_start(s, ops, owner, user, dev, corr, cursor, cursor_text) != GW_OK) {
        *resync = 1;
        sub_stop(s);
        gw_free(s);
        return NULL;
    }
    return (gw_push_sub *)s;
}

void gw_push_sub_kick(gw_push_sub *ps)
{
    sub *s = (sub *)ps;
    if (s->qn || s->close_cause || s->replaying)
        mark_dirty(s);
}

const char *gw_push_sub_resume(const gw_push_sub *ps) { return ((const sub *)ps)->resume; }
uint64_t gw_push_sub_delivered(const gw_push_sub *ps) { return ((const sub *)ps)->delivered; }

void gw_push_unsubscribe(gw_push_sub *ps)
{
    sub *s = (sub *)ps;
    if (!s)
        return;
    sub_stop(s);
    gw_free(s->q);
    if (s->allocated)
        gw_free(s);
}

/* ============================== the WebSocket =============================== */

/* The WebSocket as a subscriber's stream: the shared frames go out as they
 * are, from one writev. */
static int ws_writable(void *owner)
{
    gw_wsconn *wsc = owner;
    return wsc->ws.state == GW_WS_OPEN && gw_conn_queued(&wsc->c->conn) == 0;
}

static int ws_write(void *owner, gw_event *const *ev, size_t n)
{
    gw_wsconn *wsc = owner;
    struct iovec iov[FLUSH_IOV];
    for (size_t i = 0; i < n; i++) {
        iov[i].iov_base = ev[i]->frame;
        iov[i].iov_len = ev[i]->frame_len;
    }
    if (gw_conn_writev(&wsc->c->conn, iov, (int)n) != GW_OK) {
        gw_ws_abort(&wsc->ws, cause_write_error);
        gw_client_close(wsc->c);
        return GW_ERR;
    }
    return GW_OK;
}

static void ws_close_with(gw_wsconn *wsc, unsigned code, const char *reason, const char *cause)
{
    gw_ws_close(&wsc->ws, code, reason, cause);
    gw_ws_serve_closing(wsc);
    gw_client *c = wsc->c;
    if (gw_conn_flush(&c->conn) == GW_ERR) {
        gw_ws_abort(&wsc->ws, cause);
        gw_client_close(c);
    }
}

static void send_gateway(sub *s, const char *type, json_t *payload);

static void ws_end(void *owner, int why)
{
    gw_wsconn *wsc = owner;
    if (why == GW_PUSH_END_OVERFLOW) {
        ws_close_with(wsc, 1013, "push stream overflowed", cause_overflow);
    } else if (why == GW_PUSH_END_CREDENTIALS) {
        ws_close_with(wsc, GW_WS_CLOSE_POLICY, "device session credentials changed", cause_revoked);
    } else if (why == GW_PUSH_END_RESYNC) {
        sub *s = gw_ws_app_data(wsc);
        send_gateway(s, "gateway.resync_required", json_pack("{s:s}", "cursor", s->cursor));
        ws_close_with(wsc, 4409, "resync required: the cursor is older than the history", cause_resync);
    } else {
        ws_close_with(wsc, GW_WS_CLOSE_POLICY, "device session is revoked", cause_revoked);
    }
}

static const gw_push_owner ws_owner = {ws_writable, ws_write, ws_end};

/* A gateway message: {"type":"gateway.X","payload":{...}}. */
static void send_gateway(sub *s, const char *type, json_t *payload)
{
    json_t *o = json_pack("{s:s, s:o}", "type", type, "payload", payload);
    char *t = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (t)
        gw_ws_send(&((gw_wsconn *)s->owner)->ws, GW_WS_OP_TEXT, (const uint8_t *)t, strlen(t));
    free(t);
}

static void app_drained(gw_wsconn *wsc)
{
    sub *s = gw_ws_app_data(wsc);
    if (s->qn || s->replaying)
        mark_dirty(s);
}

/* Drain: its turn comes (ws_serve.c closes 1001 right after this call):
 * tell the client when to come back, spread so they do not all at once. */
static void app_timer(gw_wsconn *wsc, uint64_t now)
{
    sub *s = gw_ws_app_data(wsc);
    gw_client *c = wsc->c;
    if (c->w->draining && now >= wsc->drain_at_ms && !s->shutdown_sent && wsc->ws.state == GW_WS_OPEN) {
        s->shutdown_sent = 1;
        uint32_t r;
        gw_rand_bytes(&r, sizeof r);
        send_gateway(s, "gateway.shutdown",
                     json_pack("{s:I}", "reconnect_delay_ms",
                               (json_int_t)(SHUTDOWN_DELAY_MIN_MS + r % SHUTDOWN_DELAY_SPREAD_MS)));
    }
}

static void app_closed(gw_wsconn *wsc) { sub_stop(gw_ws_app_data(wsc)); }

static void app_free(gw_wsconn *wsc)
{
    sub *s = gw_ws_app_data(wsc);
    q_clear(s);
    gw_free(s->q);
    s->q = NULL;
}

static void app_log(gw_wsconn *wsc, gw_log_line *l, int close)
{
    sub *s = gw_ws_app_data(wsc);
    gw_log_str(l, "device_session_id", s->dev, GW_LOG_JSON_ONLY);
    if (!close) {
        gw_log_str(l, "resume", s->resume ? s->resume : "live", GW_LOG_JSON_ONLY);
        if (s->cursor[0])
            gw_log_str(l, "cursor", s->cursor, GW_LOG_JSON_ONLY);
    } else {
        gw_log_int(l, "events_delivered", (int64_t)s->delivered, GW_LOG_JSON_ONLY);
    }
}

static const gw_ws_app push_app = {
    .drained = app_drained,
    .timer = app_timer,
    .closed = app_closed,
    .log_fields = app_log,
    .free = app_free,
};


/* ============================ the subscription ============================== */

typedef struct push_wait {
    gw_client *c;
    gw_store_op *op;
    gw_http_req *req;
    gw_req_ids ids;
    const gw_route *route;
    gw_route_table *table;
    char bearer[512]; /* the offered bearer when it came as the subprotocol (echoed in the 101) */
    int has_cursor;
    gw_event_id cursor;
    char cursor_text[GW_EVENT_ID_MAX];
} push_wait;

static void pwait_free(push_wait *w)
{
    if (w->op)
        gw_store_cancel(gw_store_current(), w->op);
    if (w->table)
        gw_routes_unref(w->table);
    gw_h1_req_clone_free(w->req);
    OPENSSL_cleanse(w, sizeof *w);
    gw_free(w);
}

static void pwait_abort(gw_client *c, void *data)
{
    GW_UNUSED(c);
    pwait_free(data);
}

static int refuse(gw_client *c, const gw_http_req *req, const gw_route *r, const gw_req_ids *ids, int status,
                  const char *code, const char *message)
{
    gw_counter_inc(gw_metric_handshake(r, code));
    gw_log_line *l = gw_log_begin(GW_LOG_WARN, "push subscription refused", ids->corr);
    if (l) {
        gw_log_str(l, "reason", code, 0);
        gw_log_str(l, "ip", c->ip, 0);
        gw_log_end(l);
    }
    gw_http_error_ids(c, status, code, message, req, status == 401 ? "WWW-Authenticate: Bearer\r\n" : NULL, ids);
    return GW_OK;
}

/* The session is known and active: 101, bootstrap, replay, live. */
static void subscribe(gw_client *c, push_wait *w, const gw_session *sess)
{
    gw_ws_upgrade up;
    int status;
    const char *code;
    if (gw_ws_check_upgrade(w->req, &up, &status, &code) != GW_OK) {
        refuse(c, w->req, w->route, &w->ids, status, code, "not a valid WebSocket upgrade");
        return;
    }
    gw_str proto = gw_str_make(w->bearer, strlen(w->bearer));
    char resp[1536];
    size_t n = gw_ws_build_101(resp, sizeof resp, up.key, proto, NULL, w->ids.corr, w->ids.trace);
    if (!n) {
        refuse(c, w->req, w->route, &w->ids, 500, "internal_error", "cannot build the answer");
        return;
    }
    if (!pw_setup()) {
        refuse(c, w->req, w->route, &w->ids, 503, "service_unavailable", "the gateway is starting");
        return;
    }
    if (!streams_take(sess->device_session_id)) {
        OPENSSL_cleanse(resp, sizeof resp);
        refuse(c, w->req, w->route, &w->ids, 429, "too_many_streams",
               "this device session holds GATEWAY_PUSH_MAX_STREAMS_PER_SESSION streams already");
        return;
    }
    gw_conn_write(&c->conn, resp, n);
    OPENSSL_cleanse(resp, sizeof resp);
    gw_wsconn *wsc = gw_ws_serve_open(c, w->route, w->table, w->ids.corr, sess->user_id, &push_app, sizeof(sub), NULL);
    /* The wait paused reads; the WebSocket phase reads (a Close, pings). */
    gw_conn_pause(&c->conn, 0);
    gw_client_kick(c);
    sub *s = gw_ws_app_data(wsc);
    s->owner = wsc; /* send_gateway's target */
    s->counted = 1;  /* the place taken above, given back by sub_stop */
    /* The bootstrap first, then what the cursor missed, then live. */
    send_gateway(s, "gateway.server_time", json_pack("{s:I}", "server_time_ms", (json_int_t)gw_wall_ms()));
    int rc = sub_start(s, &ws_owner, wsc, sess->user_id, sess->device_session_id, w->ids.corr,
                       w->has_cursor ? &w->cursor : NULL, w->cursor_text);
    gw_ws_serve_log_open(wsc, (gw_str){NULL, 0}, 0, w->ids.trace); /* the subprotocol is the bearer: not logged */
    if (rc == GW_AGAIN) {
        send_gateway(s, "gateway.resync_required", json_pack("{s:s}", "cursor", w->cursor_text));
        s->closing = 1;
        q_clear(s);
        ws_close_with(wsc, 4409, "resync required: the cursor is older than the history", cause_resync);
    }
}

static void looked_up(void *ud, int found, const gw_session *sess)
{
    push_wait *w = ud;
    gw_client *c = w->c;
    w->op = NULL;
    gw_client_wait_end(c);
    if (!found)
        refuse(c, w->req, w->route, &w->ids, 401, "unknown_session", "the bearer is not a known device session");
    else if (sess->status != GW_SESSION_ACTIVE)
        refuse(c, w->req, w->route, &w->ids, 403, "session_revoked", "the device session is revoked");
    else
        subscribe(c, w, sess);
    gw_client_resume(c);
    pwait_free(w);
}

static void pwait_deadline(gw_client *c, void *data)
{
    push_wait *w = data;
    gw_store_cancel(gw_store_current(), w->op);
    w->op = NULL;
    gw_client_wait_end(c);
    refuse(c, w->req, w->route, &w->ids, 503, "service_unavailable", "the session store did not answer in time");
    gw_client_resume(c);
    pwait_free(w);
}

static const gw_client_wait_ops pwait_ops = {pwait_deadline, pwait_abort};

/* The value of name=... in a query string (not decoded: ids need none). */
static int query_param(gw_str q, const char *name, gw_str *out)
{
    size_t nl = strlen(name);
    size_t i = 0;
    while (i < q.n) {
        size_t k = i;
        while (k < q.n && q.p[k] != '&')
            k++;
        if (k - i > nl && memcmp(q.p + i, name, nl) == 0 && q.p[i + nl] == '=') {
            *out = gw_str_make(q.p + i + nl + 1, k - i - nl - 1);
            return 1;
        }
        i = k + 1;
    }
    return 0;
}

static int events_serve(gw_client *c, gw_http_req *req, const gw_route *r, gw_route_table *table,
                        const gw_req_ids *ids)
{
    if (!gw_store_current())
        return refuse(c, req, r, ids, 503, "service_unavailable", "no session store");
    /* The bearer: alone as Sec-WebSocket-Protocol, or Authorization: Bearer. */
    char offered[1024];
    size_t on = gw_h1_join_header(req, "Sec-WebSocket-Protocol", offered, sizeof offered);
    gw_str tok = {NULL, 0};
    int from_proto = 0;
    if (on) {
        gw_str v = gw_str_trim(gw_str_make(offered, on));
        if (memchr(v.p, ',', v.n)) {
            OPENSSL_cleanse(offered, sizeof offered);
            return refuse(c, req, r, ids, 400, "invalid_subprotocol",
                          "offer the session bearer alone in Sec-WebSocket-Protocol");
        }
        tok = v;
        from_proto = 1;
    } else {
        const gw_http_header *h = gw_h1_find_header(req->headers, req->num_headers, "Authorization");
        if (h && h->value.n > 7 && strncasecmp(h->value.p, "Bearer ", 7) == 0)
            tok = gw_str_trim(gw_str_make(h->value.p + 7, h->value.n - 7));
    }
    if (!tok.n)
        return refuse(c, req, r, ids, 401, "missing_bearer",
                      "offer the session bearer in Sec-WebSocket-Protocol or Authorization: Bearer");
    if (tok.n >= sizeof(((push_wait *)0)->bearer))
        return refuse(c, req, r, ids, 401, "unknown_session", "the bearer is not a known device session");
    /* The cursor: ?cursor= or Last-Event-ID. */
    gw_str cur = {NULL, 0};
    const gw_http_header *le = gw_h1_find_header(req->headers, req->num_headers, "Last-Event-ID");
    if (!query_param(req->query, "cursor", &cur) && le)
        cur = le->value;
    gw_event_id cursor = {0, 0};
    if (cur.n && (cur.n >= GW_EVENT_ID_MAX || gw_event_id_parse(cur.p, cur.n, &cursor) != GW_OK))
        return refuse(c, req, r, ids, 400, "invalid_cursor", "the cursor must be an event id (<ms>-<seq>)");

    push_wait *w = gw_calloc(1, sizeof *w);
    w->c = c;
    w->req = gw_h1_req_clone(req);
    w->ids = *ids;
    w->route = r;
    w->table = table;
    gw_routes_ref(table);
    if (from_proto) {
        memcpy(w->bearer, tok.p, tok.n);
        w->bearer[tok.n] = '\0';
    }
    if (cur.n) {
        w->has_cursor = 1;
        w->cursor = cursor;
        memcpy(w->cursor_text, cur.p, cur.n);
        w->cursor_text[cur.n] = '\0';
    }
    uint8_t digest[32];
    gw_bearer_digest(tok.p, tok.n, digest);
    OPENSSL_cleanse(offered, sizeof offered);
    uint64_t now = gw_loop_now(c->w->loop);
    w->op = gw_store_session_lookup(gw_store_current(), c->w->loop, digest, looked_up, w);
    gw_client_wait(c, &pwait_ops, w, now + P.store_timeout_ms);
    return GW_DONE;
}

static int events_parse(json_t *o, gw_route *r, const gw_config *cfg, char *err, size_t errcap)
{
    GW_UNUSED(o);
    GW_UNUSED(r);
    GW_UNUSED(cfg);
    GW_UNUSED(err);
    GW_UNUSED(errcap);
    return GW_OK;
}

const gw_kind gw_kind_events = {
    .name = "events",
    .default_path = "/ws/events",
    .parse = events_parse,
    .serve = events_serve,
};

/* ============================ POST /v1/events =============================== */

typedef struct pub_wait {
    gw_admin_wait w; /* first */
    gw_event_in ev;
} pub_wait;

static void pub_free(gw_admin_wait *aw)
{
    pub_wait *w = (pub_wait *)aw;
    gw_event_in_free(&w->ev);
    gw_free(w);
}

static void published(void *ud, int rc, const char *id)
{
    pub_wait *w = ud;
    gw_client *c = gw_admin_wait_answered(&w->w);
    if (rc != GW_OK || !id || !id[0]) {
        gw_http_error_ids(c, 503, "service_unavailable", "the event stream is unavailable", w->w.req, NULL,
                          &w->w.ids);
    } else {
        gw_counter_inc(P.m_published);
        char body[128];
        int n = snprintf(body, sizeof body, "{\"id\":\"%s\"}", id);
        gw_http_respond(c, w->w.req, &w->w.ids, 201, "application/json", body, (size_t)n, NULL);
        gw_log_line *l = gw_log_begin(GW_LOG_INFO, "client event published", w->w.ids.corr);
        if (l) {
            gw_log_str(l, "entry_id", id, 0);
            gw_log_str(l, "user", w->ev.user_id, 0);
            gw_log_str(l, "type", w->ev.type, 0);
            if (w->ev.device_session_id[0])
                gw_log_str(l, "device_session_id", w->ev.device_session_id, 0);
            gw_log_end(l);
        }
    }
    gw_admin_wait_done(&w->w);
}

static int post_event(gw_client *c, gw_http_req *req, const uint8_t *body, size_t n, const gw_req_ids *ids)
{
    pub_wait *w = gw_calloc(1, sizeof *w);
    char why[200];
    if (gw_event_in_from_json(body, n, &w->ev, why, sizeof why) != GW_OK) {
        gw_free(w);
        gw_http_error_ids(c, 400, "invalid_event", why, req, NULL, ids);
        return GW_OK;
    }
    w->w.late = "the event stream did not answer in time";
    w->w.free = pub_free;
    gw_admin_wait_hold(&w->w, c, req, ids,
                       gw_store_event_publish(gw_store_current(), c->w->loop, &w->ev, published, w),
                       P.store_timeout_ms);
    return GW_DONE;
}

/* ========================= GET /v1/presence/USER ============================ */

typedef struct pres_wait {
    gw_admin_wait w; /* first */
    char user[GW_SESSION_ID_MAX + 1];
} pres_wait;

static void pres_free(gw_admin_wait *aw) { gw_free(aw); }

static void pres_answer(void *ud, int rc, const char *text)
{
    pres_wait *w = ud;
    gw_client *c = gw_admin_wait_answered(&w->w);
    json_t *conns = rc == GW_OK && text ? json_loads(text, 0, NULL) : NULL;
    json_t *o = conns ? json_pack("{s:s, s:o}", "user_id", w->user, "connections", conns) : NULL;
    char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (body)
        gw_http_respond(c, w->w.req, &w->w.ids, 200, "application/json", body, strlen(body), NULL);
    else
        gw_http_error_ids(c, 503, "service_unavailable", "the store is unavailable", w->w.req, NULL, &w->w.ids);
    free(body);
    gw_admin_wait_done(&w->w);
}

static int get_presence(gw_client *c, gw_http_req *req, const uint8_t *body, size_t n, const gw_req_ids *ids)
{
    GW_UNUSED(body);
    GW_UNUSED(n);
    static const char pfx[] = "/v1/presence/";
    size_t un = req->path.n - (sizeof pfx - 1);
    if (un == 0 || un > GW_SESSION_ID_MAX) {
        gw_http_error_ids(c, 404, "not_found", "GET /v1/presence/USER_ID", req, NULL, ids);
        return GW_OK;
    }
    pres_wait *w = gw_calloc(1, sizeof *w);
    memcpy(w->user, req->path.p + sizeof pfx - 1, un);
    w->w.late = "the store did not answer in time";
    w->w.free = pres_free;
    gw_store *st = gw_store_current();
    gw_admin_wait_hold(&w->w, c, req, ids,
                       st->ops->presence_get(st, c->w->loop, w->user, P.presence_ttl_ms, pres_answer, w),
                       P.store_timeout_ms);
    return GW_DONE;
}

/* ================================== init ==================================== */

void gw_push_init(const gw_config *cfg)
{
    P.queue_limit = cfg->push_queue_limit;
    P.max_streams = cfg->push_max_streams_per_session ? cfg->push_max_streams_per_session : 16;
    P.store_timeout_ms = cfg->store_timeout_ms ? cfg->store_timeout_ms : 2000;
    P.presence_ttl_ms = GW_PRESENCE_TTL_MS;
    const char *pt = getenv("GATEWAY_TEST_PRESENCE_TTL"); /* tests only: expiry in seconds, not a minute */
    uint64_t ptv;
    if (pt && pt[0] && gw_parse_duration_ms(pt, &ptv) == GW_OK && ptv >= 30)
        P.presence_ttl_ms = ptv;
    char host[64] = "host";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = '\0';
    snprintf(P.instance_id, sizeof P.instance_id, "%s-%d", host, (int)getpid());
    uint64_t now = gw_wall_ms();
    /* With Redis the history is rebuilt from the stream's last window; the
     * embedded stream starts empty now. */
    uint64_t start = cfg->redis_master_addr[0] ? (now > cfg->push_history_window_ms ? now - cfg->push_history_window_ms : 1)
                                               : now;
    gw_events_init(cfg->push_history_window_ms, gw_wall_ms, start);
    gw_events_set_hook(fan_out, NULL);
    gw_sessions_on_revoke(on_revoke, NULL);
    P.m_deliveries = gw_metric_get("wsgate_push_deliveries_total", GW_METRIC_COUNTER,
                                   "Events written to push subscribers", NULL);
    static const char drops_help[] = "Events not delivered to a subscriber, by reason";
    P.m_drop_overflow = gw_metric_get("wsgate_push_drops_total", GW_METRIC_COUNTER, drops_help, "reason=\"overflow\"");
    P.m_drop_closed = gw_metric_get("wsgate_push_drops_total", GW_METRIC_COUNTER, drops_help, "reason=\"closed\"");
    P.m_overflows = gw_metric_get("wsgate_push_overflows_total", GW_METRIC_COUNTER,
                                  "Push subscribers closed because their queue passed GATEWAY_PUSH_QUEUE_LIMIT", NULL);
    P.m_subscribers = gw_metric_get("wsgate_push_subscribers", GW_METRIC_GAUGE, "Open push subscriptions", NULL);
    P.m_write_errors = gw_metric_get("ws_notifications_write_errors_total", GW_METRIC_COUNTER,
                                     "Push event writes that failed (the subscriber's connection was dead)", NULL);
    static const char resume_help[] = "Push subscriptions by how they started: live, replayed (cursor), resync";
    P.m_resume_live = gw_metric_get("wsgate_push_resumes_total", GW_METRIC_COUNTER, resume_help, "result=\"live\"");
    P.m_resume_replayed =
        gw_metric_get("wsgate_push_resumes_total", GW_METRIC_COUNTER, resume_help, "result=\"replayed\"");
    P.m_resume_resync = gw_metric_get("wsgate_push_resumes_total", GW_METRIC_COUNTER, resume_help, "result=\"resync\"");
    P.m_published = gw_metric_get("wsgate_push_published_total", GW_METRIC_COUNTER,
                                  "Events accepted by POST /v1/events", NULL);
    static const double lat_buckets[] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5};
    P.m_latency = gw_histogram_get("wsgate_push_delivery_latency_seconds",
                                   "Time from reading an event off the stream to writing it to a subscriber", NULL,
                                   lat_buckets, GW_ARRAY_LEN(lat_buckets));
    gw_http_register(GW_LISTENER_ADMIN, "POST", "/v1/events", 1, post_event);
    gw_http_register(GW_LISTENER_ADMIN, "GET", "/v1/presence/", 1, get_presence);
}

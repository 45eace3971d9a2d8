/* resolve.c: upstream names resolved off the worker loops (see resolve.h).
 *
 * One table of names (mutex), each entry pending, answered or failed, with
 * the requests waiting for it while pending; RESOLVER_THREADS threads take
 * pending names from a queue, call getaddrinfo, fill the entry and post
 * each waiter's answer to its loop. */
#include "net/resolve.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "core/alloc.h"
#include "core/common.h"

#define RESOLVER_THREADS 2
#define CACHE_MAX 4096 /* names kept; past it, answered entries are dropped */

enum { E_PENDING, E_OK, E_FAILED };

struct gw_resolve_req {
    gw_resolve_req *next; /* on its entry's waiters while pending */
    gw_loop *loop;
    gw_resolve_cb cb;
    void *ud;
    uint16_t port;
    int cancelled; /* read and written on loop's thread only */
    int ok;
    gw_resolved r;
    char err[160];
};

typedef struct centry {
    struct centry *next;     /* hash chain */
    struct centry *qnext;    /* on the resolver queue while pending */
    int state;
    uint64_t expires_ms;
    gw_resolved r;           /* port 0 */
    char err[160];
    gw_resolve_req *waiters;
    char host[256];
} centry;

#define NSLOTS 1024

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_once_t once;
    centry *slots[NSLOTS];
    size_t n;
    centry *qhead, **qtail;
    atomic_ulong lookups;
} R = {.mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER, .once = PTHREAD_ONCE_INIT};

static unsigned slot_of(const char *host)
{
    uint32_t h = 2166136261u;
    for (const unsigned char *p = (const unsigned char *)host; *p; p++)
        h = (h ^ *p) * 16777619u;
    return h % NSLOTS;
}

static void set_port(gw_resolved *r, uint16_t port)
{
    if (r->ss.ss_family == AF_INET)
        ((struct sockaddr_in *)&r->ss)->sin_port = htons(port);
    else if (r->ss.ss_family == AF_INET6)
        ((struct sockaddr_in6 *)&r->ss)->sin6_port = htons(port);
}

/* A unix path or an IP literal: 1 and out filled. */
static int literal(const gw_addr *a, gw_resolved *out)
{
    memset(out, 0, sizeof *out);
    if (a->is_unix) {
        struct sockaddr_un *un = (struct sockaddr_un *)&out->ss;
        un->sun_family = AF_UNIX;
        snprintf(un->sun_path, sizeof un->sun_path, "%s", a->path);
        out->len = sizeof *un;
        return 1;
    }
    const char *host = a->host[0] ? a->host : "127.0.0.1";
    struct sockaddr_in *v4 = (struct sockaddr_in *)&out->ss;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        out->len = sizeof *v4;
        set_port(out, a->port);
        return 1;
    }
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&out->ss;
    if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        out->len = sizeof *v6;
        set_port(out, a->port);
        return 1;
    }
    return 0;
}

static centry *find_locked(const char *host)
{
    for (centry *e = R.slots[slot_of(host)]; e; e = e->next)
        if (strcmp(e->host, host) == 0)
            return e;
    return NULL;
}

/* Drops answered entries: the expired ones, or all of them when the table
 * is still full. Pending entries stay (their waiters need them). */
static void trim_locked(uint64_t now, int all)
{
    for (unsigned i = 0; i < NSLOTS; i++) {
        for (centry **pp = &R.slots[i]; *pp;) {
            centry *e = *pp;
            if (e->state != E_PENDING && (all || e->expires_ms <= now)) {
                *pp = e->next;
                gw_free(e);
                R.n--;
            } else {
                pp = &e->next;
            }
        }
    }
}

static centry *entry_locked(const char *host, uint64_t now)
{
    centry *e = find_locked(host);
    if (e)
        return e;
    if (R.n >= CACHE_MAX) {
        trim_locked(now, 0);
        if (R.n >= CACHE_MAX)
            trim_locked(now, 1);
    }
    e = gw_calloc(1, sizeof *e);
    snprintf(e->host, sizeof e->host, "%s", host);
    e->state = E_FAILED; /* expired: looked up on first use */
    unsigned s = slot_of(host);
    e->next = R.slots[s];
    R.slots[s] = e;
    R.n++;
    return e;
}

/* Fills e from one getaddrinfo call (no lock held while it runs). */
static void lookup(const char *host, int *ok, gw_resolved *r, char *err, size_t errcap)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    atomic_fetch_add(&R.lookups, 1);
    int rc = getaddrinfo(host, NULL, &hints, &res);
    memset(r, 0, sizeof *r);
    if (rc != 0 || !res) {
        snprintf(err, errcap, "resolve %s: %s", host, rc ? gai_strerror(rc) : "no address");
        *ok = 0;
    } else {
        memcpy(&r->ss, res->ai_addr, res->ai_addrlen);
        r->len = res->ai_addrlen;
        err[0] = '\0';
        *ok = 1;
    }
    if (res)
        freeaddrinfo(res);
}

static void store_locked(centry *e, int ok, const gw_resolved *r, const char *err, uint64_t now)
{
    e->state = ok ? E_OK : E_FAILED;
    e->r = *r;
    snprintf(e->err, sizeof e->err, "%s", err);
    e->expires_ms = now + (ok ? GW_RESOLVE_TTL_MS : GW_RESOLVE_NEG_TTL_MS);
}

static void deliver(void *arg)
{
    gw_resolve_req *q = arg;
    if (!q->cancelled)
        q->cb(q->ud, q->ok, q->ok ? &q->r : NULL, q->err);
    gw_free(q);
}

static void answer(gw_resolve_req *q, const centry *e)
{
    q->ok = e->state == E_OK;
    q->r = e->r;
    set_port(&q->r, q->port);
    snprintf(q->err, sizeof q->err, "%s", e->err);
}

static void *resolver_main(void *arg)
{
    GW_UNUSED(arg);
    pthread_mutex_lock(&R.mu);
    for (;;) {
        while (!R.qhead)
            pthread_cond_wait(&R.cv, &R.mu);
        centry *e = R.qhead;
        R.qhead = e->qnext;
        if (!R.qhead)
            R.qtail = &R.qhead;
        e->qnext = NULL;
        char host[256];
        memcpy(host, e->host, sizeof host);
        pthread_mutex_unlock(&R.mu);
        int ok;
        gw_resolved r;
        char err[160];
        lookup(host, &ok, &r, err, sizeof err);
        pthread_mutex_lock(&R.mu);
        store_locked(e, ok, &r, err, gw_mono_ms());
        gw_resolve_req *w = e->waiters;
        e->waiters = NULL;
        while (w) {
            gw_resolve_req *next = w->next;
            answer(w, e);
            gw_loop_post(w->loop, deliver, w);
            w = next;
        }
    }
    return NULL;
}

static void start_threads(void)
{
    R.qtail = &R.qhead;
    for (int i = 0; i < RESOLVER_THREADS; i++) {
        pthread_t t;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&at, 256 * 1024);
        if (pthread_create(&t, &at, resolver_main, NULL) != 0) {
            fprintf(stderr, "wsgate: cannot start a resolver thread\n");
            abort();
        }
        pthread_attr_destroy(&at);
    }
}

int gw_resolve_now(const gw_addr *a, gw_resolved *out, char *err, size_t errcap)
{
    if (literal(a, out))
        return GW_OK;
    int rc = GW_AGAIN;
    uint64_t now = gw_mono_ms();
    pthread_mutex_lock(&R.mu);
    centry *e = find_locked(a->host);
    if (e && e->state != E_PENDING && e->expires_ms > now) {
        if (e->state == E_OK) {
            *out = e->r;
            set_port(out, a->port);
            rc = GW_OK;
        } else {
            snprintf(err, errcap, "%s", e->err);
            rc = GW_ERR;
        }
    }
    pthread_mutex_unlock(&R.mu);
    return rc;
}

gw_resolve_req *gw_resolve_start(gw_loop *l, const gw_addr *a, gw_resolve_cb cb, void *ud)
{
    pthread_once(&R.once, start_threads);
    gw_resolve_req *q = gw_calloc(1, sizeof *q);
    q->loop = l;
    q->cb = cb;
    q->ud = ud;
    q->port = a->port;
    if (literal(a, &q->r)) {
        q->ok = 1;
        gw_loop_post(l, deliver, q);
        return q;
    }
    uint64_t now = gw_mono_ms();
    pthread_mutex_lock(&R.mu);
    centry *e = entry_locked(a->host, now);
    if (e->state != E_PENDING && e->expires_ms > now) {
        answer(q, e); /* answered since the caller looked */
        gw_loop_post(l, deliver, q);
    } else {
        q->next = e->waiters;
        e->waiters = q;
        if (e->state != E_PENDING) {
            e->state = E_PENDING;
            *R.qtail = e;
            R.qtail = &e->qnext;
            pthread_cond_signal(&R.cv);
        }
    }
    pthread_mutex_unlock(&R.mu);
    return q;
}

void gw_resolve_cancel(gw_resolve_req *r)
{
    if (r)
        r->cancelled = 1;
}

int gw_resolve_blocking(const gw_addr *a, gw_resolved *out, char *err, size_t errcap)
{
    int rc = gw_resolve_now(a, out, err, errcap);
    if (rc != GW_AGAIN)
        return rc;
    int ok;
    char e[160];
    lookup(a->host, &ok, out, e, sizeof e);
    uint64_t now = gw_mono_ms();
    pthread_mutex_lock(&R.mu);
    centry *ce = entry_locked(a->host, now);
    if (ce->state != E_PENDING)
        store_locked(ce, ok, out, e, now);
    pthread_mutex_unlock(&R.mu);
    if (!ok) {
        snprintf(err, errcap, "%s", e);
        return GW_ERR;
    }
    set_port(out, a->port);
    return GW_OK;
}

void gw_resolve_flush(void)
{
    pthread_mutex_lock(&R.mu);
    trim_locked(0, 1);
    pthread_mutex_unlock(&R.mu);
}

unsigned long gw_resolve_lookups(void) { return atomic_load(&R.lookups); }

/* loop.c: the generic event loop over a readiness backend. */
#include "loop/loop.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/common.h"
#include "loop/loop_backend.h"

typedef struct posted {
    struct posted *next;
    void (*fn)(void *arg);
    void *arg;
} posted;

struct gw_loop {
    const gw_backend_ops *ops;
    gw_backend *be;
    uint64_t now;
    uint64_t (*clock)(void *arg); /* NULL: gw_mono_ms */
    void *clock_arg;
    int stop;
    /* timers: binary min-heap on when */
    gw_timer **heap;
    uint32_t nheap, capheap;
    gw_list pending;
    gw_list deferred;
    /* cross-thread queue */
    pthread_mutex_t mu;
    posted *post_head, *post_tail;
    gw_io wake;
};

static void run_list(gw_list *list);

uint64_t gw_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t gw_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t gw_loop_now(const gw_loop *l) { return l->now; }

static uint64_t loop_clock(const gw_loop *l) { return l->clock ? l->clock(l->clock_arg) : gw_mono_ms(); }

void gw_loop_set_clock(gw_loop *l, uint64_t (*clock)(void *arg), void *arg)
{
    l->clock = clock;
    l->clock_arg = arg;
    l->now = loop_clock(l);
}

/* ============================ cross-thread posts ============================ */

static void run_posted(gw_loop *l)
{
    pthread_mutex_lock(&l->mu);
    posted *p = l->post_head;
    l->post_head = l->post_tail = NULL;
    pthread_mutex_unlock(&l->mu);
    while (p) {
        posted *next = p->next;
        p->fn(p->arg);
        gw_free(p);
        p = next;
    }
}

static void on_wake(gw_io *io, uint32_t events)
{
    GW_UNUSED(events);
    gw_loop *l = gw_container_of(io, gw_loop, wake);
    uint64_t v;
    while (read(io->fd, &v, sizeof v) < 0 && errno == EINTR) {
    }
    run_posted(l);
}

void gw_loop_post(gw_loop *l, void (*fn)(void *arg), void *arg)
{
    posted *p = gw_malloc(sizeof *p);
    p->next = NULL;
    p->fn = fn;
    p->arg = arg;
    pthread_mutex_lock(&l->mu);
    int was_empty = l->post_head == NULL;
    if (l->post_tail)
        l->post_tail->next = p;
    else
        l->post_head = p;
    l->post_tail = p;
    pthread_mutex_unlock(&l->mu);
    if (was_empty) {
        uint64_t one = 1;
        while (write(l->wake.fd, &one, sizeof one) < 0 && errno == EINTR) {
        }
    }
}

/* ================================ lifecycle ================================= */

gw_loop *gw_loop_new(void)
{
    char err[160];
    return gw_loop_create(err, sizeof err);
}

gw_loop *gw_loop_create(char *err, size_t errcap)
{
    gw_loop *l = gw_calloc(1, sizeof *l);
    l->ops = &gw_backend_epoll;
    l->be = l->ops->create(err, errcap);
    if (!l->be) {
        gw_free(l);
        return NULL;
    }
    l->now = gw_mono_ms();
    gw_list_init(&l->pending);
    gw_list_init(&l->deferred);
    pthread_mutex_init(&l->mu, NULL);
    l->wake.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    l->wake.cb = on_wake;
    if (l->wake.fd < 0 || gw_io_start(l, &l->wake, GW_EV_READ) != GW_OK) {
        snprintf(err, errcap, "cannot watch the loop's eventfd: %s", strerror(errno));
        gw_loop_free(l);
        return NULL;
    }
    return l;
}

void gw_loop_free(gw_loop *l)
{
    if (!l)
        return;
    if (l->wake.fd >= 0) {
        gw_io_stop(l, &l->wake);
        close(l->wake.fd);
    }
    run_posted(l);
    run_list(&l->deferred); /* frees queued by the last callbacks */
    l->ops->destroy(l->be);
    gw_free(l->heap);
    pthread_mutex_destroy(&l->mu);
    gw_free(l);
}

void gw_loop_stop(gw_loop *l) { l->stop = 1; }

/* ================================ watchers ================================== */

int gw_io_start(gw_loop *l, gw_io *io, uint32_t events)
{
    return gw_io_update(l, io, events);
}

int gw_io_update(gw_loop *l, gw_io *io, uint32_t events)
{
    if (io->events == events)
        return GW_OK;
    if (l->ops->ctl(l->be, io, io->events, events) != GW_OK)
        return GW_ERR;
    io->events = events;
    return GW_OK;
}

void gw_io_stop(gw_loop *l, gw_io *io)
{
    if (io->fd >= 0 && io->events)
        l->ops->ctl(l->be, io, io->events, 0);
    io->events = 0;
}

/* ================================= timers =================================== */

static void heap_swap(gw_loop *l, uint32_t a, uint32_t b)
{
    gw_timer *t = l->heap[a];
    l->heap[a] = l->heap[b];
    l->heap[b] = t;
    l->heap[a]->idx = a + 1;
    l->heap[b]->idx = b + 1;
}

static void heap_up(gw_loop *l, uint32_t i)
{
    while (i > 0) {
        uint32_t parent = (i - 1) / 2;
        if (l->heap[parent]->when <= l->heap[i]->when)
            break;
        heap_swap(l, i, parent);
        i = parent;
    }
}

static void heap_down(gw_loop *l, uint32_t i)
{
    for (;;) {
        uint32_t c = 2 * i + 1, m = i;
        if (c < l->nheap && l->heap[c]->when < l->heap[m]->when)
            m = c;
        if (c + 1 < l->nheap && l->heap[c + 1]->when < l->heap[m]->when)
            m = c + 1;
        if (m == i)
            break;
        heap_swap(l, i, m);
        i = m;
    }
}

void gw_timer_stop(gw_loop *l, gw_timer *t)
{
    if (!t->idx)
        return;
    uint32_t i = t->idx - 1;
    t->idx = 0;
    l->nheap--;
    if (i == l->nheap)
        return;
    l->heap[i] = l->heap[l->nheap];
    l->heap[i]->idx = i + 1;
    heap_down(l, i);
    heap_up(l, i);
}

void gw_timer_start_at(gw_loop *l, gw_timer *t, uint64_t when)
{
    if (t->idx) {
        /* Re-arm in place. */
        uint32_t i = t->idx - 1;
        t->when = when;
        heap_down(l, i);
        heap_up(l, i);
        return;
    }
    if (l->nheap == l->capheap) {
        l->capheap = l->capheap ? l->capheap * 2 : 64;
        l->heap = gw_realloc(l->heap, l->capheap * sizeof *l->heap);
    }
    t->when = when;
    l->heap[l->nheap] = t;
    t->idx = ++l->nheap;
    heap_up(l, l->nheap - 1);
}

void gw_timer_start(gw_loop *l, gw_timer *t, uint64_t after_ms)
{
    gw_timer_start_at(l, t, l->now + after_ms);
}

static void run_timers(gw_loop *l)
{
    /* Bounded: a timer re-armed for "now" runs on the next iteration. */
    uint32_t budget = l->nheap;
    while (l->nheap && l->heap[0]->when <= l->now && budget--) {
        gw_timer *t = l->heap[0];
        gw_timer_stop(l, t);
        t->cb(t);
    }
}

/* ============================ pending / deferred ============================ */

void gw_loop_pending(gw_loop *l, gw_task *t)
{
    if (gw_list_linked(&t->node))
        return;
    gw_list_insert_tail(&l->pending, &t->node);
}

void gw_loop_defer(gw_loop *l, gw_task *t)
{
    gw_list_remove(&t->node);
    gw_list_insert_tail(&l->deferred, &t->node);
}

void gw_task_cancel(gw_task *t) { gw_list_remove(&t->node); }

static void run_list(gw_list *list)
{
    /* Detach first: tasks may queue themselves again for the next round. */
    gw_list batch;
    gw_list_init(&batch);
    if (gw_list_empty(list))
        return;
    batch.next = list->next;
    batch.prev = list->prev;
    batch.next->prev = &batch;
    batch.prev->next = &batch;
    gw_list_init(list);
    while (!gw_list_empty(&batch)) {
        gw_task *t = gw_container_of(batch.next, gw_task, node);
        gw_list_remove(&t->node);
        t->fn(t);
    }
}

/* ================================== run ===================================== */

void gw_loop_run(gw_loop *l)
{
    l->stop = 0;
    while (!l->stop) {
        int timeout = -1;
        if (!gw_list_empty(&l->pending))
            timeout = 0;
        else if (l->nheap) {
            uint64_t when = l->heap[0]->when, now = loop_clock(l);
            /* One more ms: the clock is read in whole ms (truncated), so a
             * timer armed at 1000.9 for 300 ms is due at 1300; waking at
             * 1300.0 would fire it 0.9 ms early. Waking past when + 1 never
             * fires a timer before its time (epoll's timer slack hides this, an
             * exact timed wait would not). */
            timeout = when <= now ? 0 : (int)GW_MIN(when - now + 1, (uint64_t)60000);
        }
        int n = l->ops->wait(l->be, timeout);
        if (n < 0) {
            /* The backend cannot wait (it should not happen): do not spin
             * at full speed; timers and posted work still run. */
            struct timespec ts = {.tv_sec = 0, .tv_nsec = 10 * 1000000};
            nanosleep(&ts, NULL);
        }
        /* The time after the wait, before any callback: an I/O callback that
         * arms a timer after a long idle must count from now. */
        l->now = loop_clock(l);
        if (n > 0)
            l->ops->dispatch(l->be, n);
        run_list(&l->deferred);
        run_timers(l);
        run_list(&l->deferred);
        run_list(&l->pending);
        run_list(&l->deferred);
    }
}

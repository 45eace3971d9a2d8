/* loop_uring.c: the io_uring backend (GATEWAY_IO=io_uring). The only file
 * that includes <liburing.h>.
 *
 * Readiness through the ring: each watched fd has at most one one-shot poll
 * request in the ring. Its answer is dispatched like an epoll event, and the
 * request is armed again before the next wait if the watcher still wants
 * events, so the semantics stay level-triggered (a one-shot poll armed on an
 * fd that is already ready answers at once). Interest changes only touch the
 * backend's table; the requests they need go into the submission queue and
 * leave with the wait (one io_uring_enter submits them and waits): no system
 * call per change, where epoll makes one epoll_ctl each.
 *
 * Staleness: a request's user_data is (generation << 32 | fd). Stopping a
 * watcher bumps its slot's generation and queues a removal, so an answer
 * that was already in flight, or that arrives after the fd number was reused,
 * is recognised and dropped. The removal must reach the kernel: a poll
 * request holds a reference to the file, and a closed socket is released
 * only when its requests are gone (at the next wait, in the same loop pass).
 *
 * The ring is created disabled and enabled by the first wait, on the
 * worker's own thread: with IORING_SETUP_SINGLE_ISSUER that thread becomes
 * the only submitter, and IORING_SETUP_DEFER_TASKRUN runs completion work
 * only when it waits (no interrupts of the worker while it runs callbacks). */
#include <errno.h>
#include <liburing.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/common.h"
#include "loop/loop_backend.h"

#define SQ_ENTRIES 1024u
#define CQ_ENTRIES 8192u
#define MAX_EVENTS 256
#define UD_IGNORE (1ull << 63) /* removals: their answers are not events */
#define GEN_MASK 0x7fffffffu

typedef struct slot {
    gw_io *io;         /* NULL: the fd is not watched */
    uint32_t gen;      /* bumped when a request is dropped: older answers are stale */
    uint32_t want;     /* GW_EV_* interest */
    uint32_t armed_mask;
    uint8_t armed;     /* a poll request with armed_mask is in the ring */
    uint8_t dirty;     /* on the dirty list: (re)arm before the next wait */
} slot;

typedef struct ev {
    uint64_t ud;
    int32_t res;
} ev;

struct gw_backend {
    struct io_uring ring;
    int enabled;
    slot *slots;
    uint32_t nslots;
    int *dirty;
    uint32_t ndirty, capdirty;
    ev events[MAX_EVENTS];
};

static gw_backend *uring_create(char *err, size_t errcap)
{
    gw_backend *b = gw_calloc(1, sizeof *b);
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
              IORING_SETUP_R_DISABLED;
    p.cq_entries = CQ_ENTRIES;
    int rc = io_uring_queue_init_params(SQ_ENTRIES, &b->ring, &p);
    if (rc == -EINVAL) {
        /* A kernel older than 6.1: no single issuer, no deferred task work. */
        memset(&p, 0, sizeof p);
        p.flags = IORING_SETUP_CQSIZE;
        p.cq_entries = CQ_ENTRIES;
        rc = io_uring_queue_init_params(SQ_ENTRIES, &b->ring, &p);
        b->enabled = 1;
    }
    if (rc < 0) {
        snprintf(err, errcap, "io_uring_queue_init: %s", strerror(-rc));
        gw_free(b);
        return NULL;
    }
    if (!(p.features & IORING_FEAT_EXT_ARG) || !(p.features & IORING_FEAT_NODROP)) {
        snprintf(err, errcap, "io_uring: this kernel lacks timed waits or lossless completions (Linux >= 5.11 needed)");
        io_uring_queue_exit(&b->ring);
        gw_free(b);
        return NULL;
    }
    return b;
}

static void uring_destroy(gw_backend *b)
{
    if (!b)
        return;
    io_uring_queue_exit(&b->ring);
    gw_free(b->slots);
    gw_free(b->dirty);
    gw_free(b);
}

static struct io_uring_sqe *get_sqe(gw_backend *b)
{
    struct io_uring_sqe *sqe = io_uring_get_sqe(&b->ring);
    if (!sqe && b->enabled) {
        /* The submission queue is full (more than SQ_ENTRIES changes in one
         * pass): hand what is there to the kernel and take a fresh entry. */
        io_uring_submit(&b->ring);
        sqe = io_uring_get_sqe(&b->ring);
    }
    return sqe;
}

static uint64_t slot_ud(const slot *s, int fd) { return (uint64_t)(s->gen & GEN_MASK) << 32 | (uint32_t)fd; }

/* Drops s's request from the ring (its answer, if one is already on the way,
 * is stale from now on). */
static void drop_request(gw_backend *b, slot *s, int fd)
{
    if (s->armed) {
        struct io_uring_sqe *sqe = get_sqe(b);
        if (sqe) {
            io_uring_prep_poll_remove(sqe, slot_ud(s, fd));
            io_uring_sqe_set_data64(sqe, UD_IGNORE);
        }
        s->armed = 0;
    }
    s->gen++;
}

static void mark_dirty(gw_backend *b, slot *s, int fd)
{
    if (s->dirty)
        return;
    if (b->ndirty == b->capdirty) {
        b->capdirty = b->capdirty ? b->capdirty * 2 : 256;
        b->dirty = gw_realloc(b->dirty, b->capdirty * sizeof *b->dirty);
    }
    b->dirty[b->ndirty++] = fd;
    s->dirty = 1;
}

/* GW_EV_ERROR as interest alone maps to no bit: the kernel always reports
 * POLLERR and POLLHUP. */
static uint32_t to_poll(uint32_t want)
{
    uint32_t m = 0;
    if (want & GW_EV_READ)
        m |= POLLIN | POLLRDHUP;
    if (want & GW_EV_WRITE)
        m |= POLLOUT;
    if (want & GW_EV_EXCLUSIVE) /* a listener shared by the workers: wake one ring */
        m = (m & ~(uint32_t)POLLRDHUP) | EPOLLEXCLUSIVE;
    return m;
}

static int uring_ctl(gw_backend *b, gw_io *io, uint32_t old_events, uint32_t new_events)
{
    GW_UNUSED(old_events);
    int fd = io->fd;
    if (fd < 0)
        return GW_ERR;
    if ((uint32_t)fd >= b->nslots) {
        if (!new_events)
            return GW_OK;
        uint32_t n = b->nslots ? b->nslots : 1024;
        while (n <= (uint32_t)fd)
            n *= 2;
        b->slots = gw_realloc(b->slots, n * sizeof *b->slots);
        memset(b->slots + b->nslots, 0, (n - b->nslots) * sizeof *b->slots);
        b->nslots = n;
    }
    slot *s = &b->slots[fd];
    if (!new_events) {
        if (s->io == io) {
            drop_request(b, s, fd);
            s->io = NULL;
            s->want = 0;
        }
        return GW_OK;
    }
    if (s->io != io) {
        /* A new watcher on this fd number: nothing of the old one may reach it. */
        if (s->io || s->armed)
            drop_request(b, s, fd);
        s->io = io;
    }
    s->want = new_events;
    mark_dirty(b, s, fd);
    return GW_OK;
}

/* Arms what changed since the last wait: a watcher with no request, or one
 * whose request watches other events than it wants now. */
static void flush_dirty(gw_backend *b)
{
    for (uint32_t i = 0; i < b->ndirty; i++) {
        int fd = b->dirty[i];
        slot *s = &b->slots[fd];
        s->dirty = 0;
        if (!s->io)
            continue;
        uint32_t mask = to_poll(s->want);
        if (s->armed && s->armed_mask == mask)
            continue;
        if (s->armed)
            drop_request(b, s, fd);
        struct io_uring_sqe *sqe = get_sqe(b);
        if (!sqe) {
            /* The kernel took nothing (it failed): keep the rest for the next wait. */
            s->dirty = 1;
            memmove(b->dirty, b->dirty + i, (b->ndirty - i) * sizeof *b->dirty);
            b->ndirty -= i;
            return;
        }
        io_uring_prep_poll_add(sqe, fd, mask);
        io_uring_sqe_set_data64(sqe, slot_ud(s, fd));
        s->armed = 1;
        s->armed_mask = mask;
    }
    b->ndirty = 0;
}

static int uring_wait(gw_backend *b, int timeout_ms)
{
    if (!b->enabled) {
        /* io_uring_enable_rings() is not exported by Debian 12's liburing 2.3. */
        if (syscall(__NR_io_uring_register, b->ring.ring_fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0) < 0)
            return -1;
        b->enabled = 1;
    }
    flush_dirty(b);
    struct io_uring_cqe *cqe;
    struct __kernel_timespec ts = {.tv_sec = timeout_ms / 1000, .tv_nsec = (long long)(timeout_ms % 1000) * 1000000};
    int rc = io_uring_submit_and_wait_timeout(&b->ring, &cqe, 1, timeout_ms >= 0 ? &ts : NULL, NULL);
    if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY) {
        errno = -rc;
        return -1;
    }
    /* Copied out and consumed at once: callbacks may queue requests, and
     * the ring's slots are free again before they run. */
    int n = 0;
    unsigned head;
    io_uring_for_each_cqe(&b->ring, head, cqe)
    {
        if (n == MAX_EVENTS)
            break;
        b->events[n].ud = cqe->user_data;
        b->events[n].res = cqe->res;
        n++;
    }
    io_uring_cq_advance(&b->ring, (unsigned)n);
    return n;
}

static void uring_dispatch(gw_backend *b, int n)
{
    for (int i = 0; i < n; i++) {
        uint64_t ud = b->events[i].ud;
        if (ud & UD_IGNORE)
            continue;
        int fd = (int)(uint32_t)ud;
        if ((uint32_t)fd >= b->nslots)
            continue;
        slot *s = &b->slots[fd];
        if (!s->io || (s->gen & GEN_MASK) != (uint32_t)(ud >> 32))
            continue; /* stopped, re-armed or reused since: stale */
        s->armed = 0;
        mark_dirty(b, s, fd); /* armed again before the next wait while wanted */
        int32_t res = b->events[i].res;
        uint32_t e = 0;
        if (res < 0)
            e = GW_EV_ERROR | GW_EV_READ;
        else {
            if (res & (POLLIN | POLLRDHUP))
                e |= GW_EV_READ;
            if (res & POLLOUT)
                e |= GW_EV_WRITE;
            if (res & (POLLERR | POLLHUP))
                e |= GW_EV_ERROR | GW_EV_READ;
        }
        gw_io *io = s->io;
        if (e && io->fd >= 0 && io->events)
            io->cb(io, e);
    }
}

const gw_backend_ops gw_backend_uring = {
    .name = "io_uring",
    .create = uring_create,
    .destroy = uring_destroy,
    .ctl = uring_ctl,
    .wait = uring_wait,
    .dispatch = uring_dispatch,
};

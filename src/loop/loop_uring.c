/* loop_uring.c: the io_uring backend (GATEWAY_IO=io_uring). The only file
 * that includes <liburing.h>.
 *
 * Two kinds of request per watched fd, each at most once in the ring:
 *  - a one-shot poll for readiness (writes, listeners, TLS, pipes, anything
 *    without GW_EV_RECV). Its answer is dispatched like an epoll event and
 *    the poll is armed again before the next wait while the watcher still
 *    wants events, so the semantics stay level-triggered (a one-shot poll
 *    armed on an fd that is already ready answers at once);
 *  - for a watcher with GW_EV_RECV (a plain stream socket that reads only
 *    through gw_io_recv_take), a multishot receive with buffers provided by
 *    the worker's buffer ring: the kernel receives as data arrives, with no
 *    system call per read; the owner's callback takes the bytes in place.
 * Interest changes only touch the backend's table; the requests they need go
 * into the submission queue and leave with the wait (one io_uring_enter
 * submits and waits).
 *
 * Receive order is never broken: while a receive is in the ring the fd is
 * not read directly (gw_io_recv_take answers GW_AGAIN); a pause cancels the
 * receive but keeps whatever it still delivers (no byte is dropped), and the
 * bytes queued are reported again, as a level-triggered event would be, once
 * reading resumes. When the buffer ring runs dry (ENOBUFS) that fd falls
 * back to a poll and direct reads until its next readiness event.
 *
 * Staleness: a request's user_data is (kind, generation, fd). Dropping a
 * request bumps the generation of its kind, so an answer already in flight,
 * or one that arrives after the fd number was reused, is recognised and
 * dropped (a stale receive's buffer goes back to the ring). The removal must
 * reach the kernel: a request holds a reference to the file, and a closed
 * socket is released only when its requests are gone (at the next wait, in
 * the same loop pass).
 *
 * The ring is created disabled and enabled by the first wait, on the
 * worker's own thread: with IORING_SETUP_SINGLE_ISSUER that thread becomes
 * the only submitter, and IORING_SETUP_DEFER_TASKRUN runs completion work
 * only when it waits (no interrupts of the worker while it runs callbacks,
 * and no buffer is written while a callback reads it). */
#include <errno.h>
#include <liburing.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/common.h"
#include "loop/loop_backend.h"

#define SQ_ENTRIES 1024u
#define CQ_ENTRIES 8192u
#define MAX_EVENTS 256
#define NBUFS 64u            /* provided receive buffers per worker (a power of two) */
#define BUF_SIZE (64u * 1024) /* 4 MiB per worker in all: one buffer takes a whole read batch (16 KiB ones split 8 x 4 KiB messages over several callbacks and sends: 2.3x the CPU per message) */
#define BGID 1
#define QCACHE 64 /* emptied receive queues kept per worker */

/* user_data: bit 63 ignore, bits 62-61 kind, bits 60-32 generation, 31-0 fd */
#define UD_IGNORE (1ull << 63) /* removals and cancels: their answers are not events */
#define UD_QUIESCE (UD_IGNORE | 1u)
#define K_POLL 0ull
#define K_RECV 1ull
#define K_SYNTH 2ull /* not a request: queued bytes to report again */
#define GEN_MASK 0x1fffffffu

typedef struct rxbuf {
    uint8_t *heap; /* a copy (the watcher paused: no ring buffer is held while paused), else NULL */
    uint16_t bid;  /* the ring buffer, when heap is NULL */
    uint32_t len, off;
} rxbuf;

typedef struct rxq {
    rxbuf *v;
    uint32_t head, count, cap;
    int eof;
    int err;
} rxq;

typedef struct slot {
    gw_io *io;           /* NULL: the fd is not watched */
    rxq *q;              /* bytes received and not yet taken (NULL: none) */
    uint32_t want;       /* GW_EV_* interest */
    uint32_t pgen, rgen; /* bumped when a request of that kind is dropped */
    uint32_t armed_mask;
    uint8_t armed;       /* a poll request with armed_mask is in the ring */
    uint8_t recv;        /* a multishot receive is in the ring (maybe being cancelled) */
    uint8_t cancelling;  /* its cancel is queued: it ends soon, its data still counts */
    uint8_t fallback;    /* the buffer ring ran dry: poll and read directly until the next event */
    uint8_t multi;       /* the poll request is multishot (edge: one answer per wake-up) */
    uint8_t rdhup;       /* the peer shut its side: a one-shot poll without read interest would answer
                            at once forever (io_uring always reports POLLRDHUP), so it is multishot */
    uint8_t dirty;       /* on the dirty list: looked at before the next wait */
    uint64_t seq;        /* the dispatch that last reported its received bytes */
} slot;

typedef struct ev {
    uint64_t ud;
    int32_t res;
    uint32_t flags;
} ev;

struct gw_backend {
    struct io_uring ring;
    int enabled;
    slot *slots;
    uint32_t nslots;
    int *dirty;
    uint32_t ndirty, capdirty;
    /* the provided buffer ring */
    struct io_uring_buf_ring *br;
    uint8_t *bufs;
    int br_ok;
    uint16_t *recycle; /* buffers taken, given back at the next wait */
    uint32_t nrecycle;
    uint64_t *lost; /* removals and cancels that found no submission entry: sent at the next wait */
    uint32_t nlost, caplost;
    void **dfree; /* copies taken, freed at the next wait */
    uint32_t ndfree, capdfree;
    uint64_t seq; /* dispatches so far */
    rxq *qcache[QCACHE]; /* emptied queues kept for reuse: no allocation per message */
    uint32_t nqcache;
    ev events[MAX_EVENTS];
};

static uint64_t mk_ud(uint64_t kind, uint32_t gen, int fd)
{
    return kind << 61 | (uint64_t)(gen & GEN_MASK) << 32 | (uint32_t)fd;
}

static void buf_give_back(gw_backend *b, uint16_t bid)
{
    io_uring_buf_ring_add(b->br, b->bufs + (size_t)bid * BUF_SIZE, BUF_SIZE, bid, io_uring_buf_ring_mask(NBUFS), 0);
    io_uring_buf_ring_advance(b->br, 1);
}

static int setup_buffers(gw_backend *b)
{
    size_t ring_bytes = NBUFS * sizeof(struct io_uring_buf);
    void *mem = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        return GW_ERR;
    b->br = mem;
    io_uring_buf_ring_init(b->br);
    struct io_uring_buf_reg reg;
    memset(&reg, 0, sizeof reg);
    reg.ring_addr = (uintptr_t)mem;
    reg.ring_entries = NBUFS;
    reg.bgid = BGID;
    if (io_uring_register_buf_ring(&b->ring, &reg, 0) < 0) {
        munmap(mem, ring_bytes);
        b->br = NULL;
        return GW_ERR;
    }
    b->bufs = gw_malloc((size_t)NBUFS * BUF_SIZE);
    b->recycle = gw_malloc(NBUFS * sizeof *b->recycle);
    for (uint32_t i = 0; i < NBUFS; i++)
        io_uring_buf_ring_add(b->br, b->bufs + (size_t)i * BUF_SIZE, BUF_SIZE, (uint16_t)i,
                              io_uring_buf_ring_mask(NBUFS), (int)i);
    io_uring_buf_ring_advance(b->br, NBUFS);
    b->br_ok = 1;
    return GW_OK;
}

static gw_backend *uring_create(char *err, size_t errcap)
{
    /* Multishot receive with provided buffers (6.0), multishot poll and
     * cancel-any (5.19) are used without a fallback: refuse older kernels
     * with the reason rather than fail connections one by one. */
    struct utsname u;
    unsigned major = 0, minor = 0;
    if (uname(&u) == 0 && sscanf(u.release, "%u.%u", &major, &minor) == 2 && (major < 6)) {
        snprintf(err, errcap, "io_uring: Linux >= 6.0 needed (this kernel: %s); use GATEWAY_IO=epoll", u.release);
        return NULL;
    }
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
    if (setup_buffers(b) != GW_OK) {
        snprintf(err, errcap, "io_uring: cannot register the receive buffer ring");
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
    for (uint32_t i = 0; i < b->nslots; i++)
        if (b->slots[i].q) {
            gw_free(b->slots[i].q->v);
            gw_free(b->slots[i].q);
        }
    if (b->br)
        munmap(b->br, NBUFS * sizeof(struct io_uring_buf));
    gw_free(b->bufs);
    gw_free(b->recycle);
    for (uint32_t i = 0; i < b->ndfree; i++)
        gw_free(b->dfree[i]);
    gw_free(b->dfree);
    gw_free(b->lost);
    for (uint32_t i = 0; i < b->nqcache; i++) {
        gw_free(b->qcache[i]->v);
        gw_free(b->qcache[i]);
    }
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

/* Queues a removal (poll) or cancel (receive) of the request ud. One that
 * finds no submission entry (the kernel refused a submit) is kept and sent
 * at the next wait: a request never removed would hold its socket open. */
static void send_removal(gw_backend *b, uint64_t ud, int poll)
{
    struct io_uring_sqe *sqe = get_sqe(b);
    if (!sqe) {
        if (b->nlost == b->caplost) {
            b->caplost = b->caplost ? b->caplost * 2 : 64;
            b->lost = gw_realloc(b->lost, b->caplost * sizeof *b->lost);
        }
        b->lost[b->nlost++] = ud | (poll ? 0 : UD_IGNORE);
        return;
    }
    if (poll)
        io_uring_prep_poll_remove(sqe, ud);
    else
        io_uring_prep_cancel64(sqe, ud, 0);
    io_uring_sqe_set_data64(sqe, UD_IGNORE);
}

/* Drops s's poll request (its answer, if already on the way, is stale). */
static void drop_poll(gw_backend *b, slot *s, int fd)
{
    if (s->armed) {
        send_removal(b, mk_ud(K_POLL, s->pgen, fd), 1);
        s->armed = 0;
    }
    s->pgen++;
}

/* Asks s's receive to end. With stale set (the watcher is gone) its answers
 * are dropped; else what it still delivers is queued. */
static void cancel_recv(gw_backend *b, slot *s, int fd, int stale)
{
    if (s->recv && !s->cancelling) {
        send_removal(b, mk_ud(K_RECV, s->rgen, fd), 0);
        s->cancelling = 1;
    }
    if (stale) {
        s->rgen++;
        s->recv = 0;
        s->cancelling = 0;
    }
}

/* The i-th entry from the head of q (a ring over v). */
static rxbuf *q_at(rxq *q, uint32_t i) { return &q->v[(q->head + i) % q->cap]; }

static void q_release(gw_backend *b, slot *s);

/* The watcher is gone: what it did not take is given back (buffers) or
 * freed (copies), and the queue goes to the cache. */
static void q_clear(gw_backend *b, slot *s)
{
    rxq *q = s->q;
    if (!q)
        return;
    for (uint32_t i = 0; i < q->count; i++) {
        rxbuf *r = q_at(q, i);
        if (r->heap)
            gw_free(r->heap);
        else
            b->recycle[b->nrecycle++] = r->bid;
    }
    q_release(b, s);
}

static void q_detach(gw_backend *b, slot *s);

static int q_pending(const slot *s) { return s->q && (s->q->count || s->q->eof || s->q->err); }

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
            drop_poll(b, s, fd);
            cancel_recv(b, s, fd, 1);
            q_clear(b, s);
            s->io = NULL;
            s->want = 0;
            s->fallback = 0;
            s->rdhup = 0;
        }
        return GW_OK;
    }
    if (s->io != io) {
        /* A new watcher on this fd number: nothing of the old one may reach it. */
        drop_poll(b, s, fd);
        cancel_recv(b, s, fd, 1);
        q_clear(b, s);
        s->fallback = 0;
        s->rdhup = 0;
        s->io = io;
    }
    s->want = new_events;
    mark_dirty(b, s, fd);
    return GW_OK;
}

/* Whether s receives by completion now. */
static int recv_mode(const gw_backend *b, const slot *s)
{
    return b->br_ok && (s->want & GW_EV_RECV) && !s->fallback;
}

/* Brings each changed slot's requests in line with what its watcher wants.
 * Slots with received bytes that their watcher wants to read are reported
 * again (level-triggered), as synthetic events in events[0..n). Returns n. */
static int flush_dirty(gw_backend *b)
{
    uint32_t nlost = b->nlost;
    b->nlost = 0;
    for (uint32_t j = 0; j < nlost; j++) {
        uint64_t ud = b->lost[j];
        send_removal(b, ud & ~UD_IGNORE, !(ud & UD_IGNORE));
    }
    int nsynth = 0;
    uint32_t i, kept = 0; /* slots kept on the list for the next wait: b->dirty[0..kept) */
    for (i = 0; i < b->ndirty; i++) {
        int fd = b->dirty[i];
        slot *s = &b->slots[fd];
        s->dirty = 0;
        if (!s->io)
            continue;
        int by_recv = recv_mode(b, s);
        int want_read = (s->want & GW_EV_READ) != 0;
        /* the receive */
        if (by_recv && want_read && !s->recv && !(s->q && (s->q->eof || s->q->err))) {
            struct io_uring_sqe *sqe = get_sqe(b);
            if (!sqe)
                break;
            io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
            sqe->flags |= IOSQE_BUFFER_SELECT;
            sqe->buf_group = BGID;
            io_uring_sqe_set_data64(sqe, mk_ud(K_RECV, s->rgen, fd));
            s->recv = 1;
            s->cancelling = 0;
        } else if (s->recv && (!want_read || !by_recv)) {
            cancel_recv(b, s, fd, 0);
        }
        if (!want_read)
            q_detach(b, s);
        if (want_read && q_pending(s)) {
            if (nsynth < MAX_EVENTS) {
                b->events[nsynth].ud = mk_ud(K_SYNTH, s->rgen, fd);
                b->events[nsynth].res = 0;
                b->events[nsynth].flags = 0;
                nsynth++;
            } else {
                /* more reports than one dispatch takes: the next wait's */
                b->dirty[kept++] = fd;
                s->dirty = 1;
            }
        }
        /* the poll */
        uint32_t pw = s->want & (GW_EV_READ | GW_EV_WRITE | GW_EV_ERROR | GW_EV_EXCLUSIVE);
        if (by_recv && want_read)
            pw &= ~(uint32_t)GW_EV_READ; /* the receive reports input, errors and the end */
        int need_poll = (pw & (GW_EV_READ | GW_EV_WRITE | GW_EV_ERROR)) != 0;
        if (by_recv && want_read && !(pw & GW_EV_WRITE))
            need_poll = 0;
        uint32_t mask = to_poll(pw);
        /* io_uring reports POLLRDHUP whatever the mask: without read
         * interest, a one-shot poll on a half-closed socket would answer
         * at once each time it is armed. Errors alone (a paused
         * connection's watch) and any wait without read interest after the
         * peer's FIN use a multishot poll, which answers once per wake-up:
         * a reset, write space. */
        int multi = !(pw & GW_EV_READ) && (!(pw & GW_EV_WRITE) || s->rdhup);
        if (s->armed && (!need_poll || s->armed_mask != mask || s->multi != multi))
            drop_poll(b, s, fd);
        if (need_poll && !s->armed) {
            struct io_uring_sqe *sqe = get_sqe(b);
            if (!sqe)
                break;
            if (multi)
                io_uring_prep_poll_multishot(sqe, fd, mask);
            else
                io_uring_prep_poll_add(sqe, fd, mask);
            io_uring_sqe_set_data64(sqe, mk_ud(K_POLL, s->pgen, fd));
            s->armed = 1;
            s->armed_mask = mask;
            s->multi = (uint8_t)multi;
        }
    }
    if (i < b->ndirty) {
        /* The kernel took nothing (it failed): keep the rest for the next wait. */
        b->slots[b->dirty[i]].dirty = 1;
        memmove(b->dirty + kept, b->dirty + i, (b->ndirty - i) * sizeof *b->dirty);
        b->ndirty = kept + (b->ndirty - i);
    } else {
        b->ndirty = kept;
    }
    return nsynth;
}

static int uring_wait(gw_backend *b, int timeout_ms)
{
    if (!b->enabled) {
        /* io_uring_enable_rings() is not exported by Debian 12's liburing 2.3. */
        if (syscall(__NR_io_uring_register, b->ring.ring_fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0) < 0)
            return -1;
        b->enabled = 1;
    }
    /* Buffers taken since the last wait go back to the kernel now: no
     * callback reads them any more. */
    for (uint32_t i = 0; i < b->nrecycle; i++)
        buf_give_back(b, b->recycle[i]);
    b->nrecycle = 0;
    for (uint32_t i = 0; i < b->ndfree; i++)
        gw_free(b->dfree[i]);
    b->ndfree = 0;
    int n = flush_dirty(b);
    if (n)
        timeout_ms = 0; /* bytes already here: do not sleep */
    struct io_uring_cqe *cqe;
    struct __kernel_timespec ts = {.tv_sec = timeout_ms / 1000, .tv_nsec = (long long)(timeout_ms % 1000) * 1000000};
    int rc = io_uring_submit_and_wait_timeout(&b->ring, &cqe, n ? 0 : 1, timeout_ms >= 0 ? &ts : NULL, NULL);
    if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EAGAIN && rc != -EBUSY && !n) {
        errno = -rc;
        return -1;
    }
    /* Copied out and consumed at once: callbacks may queue requests, and
     * the ring's slots are free again before they run. */
    unsigned head, seen = 0;
    io_uring_for_each_cqe(&b->ring, head, cqe)
    {
        if (n == MAX_EVENTS)
            break;
        b->events[n].ud = cqe->user_data;
        b->events[n].res = cqe->res;
        b->events[n].flags = cqe->flags;
        n++;
        seen++;
    }
    io_uring_cq_advance(&b->ring, seen);
    return n;
}

/* s's queue, made (or taken from the cache) when it has none. */
static rxq *q_get(gw_backend *b, slot *s)
{
    if (!s->q)
        s->q = b->nqcache ? b->qcache[--b->nqcache] : gw_calloc(1, sizeof *s->q);
    return s->q;
}

/* An emptied queue: kept for the next connection that receives (idle
 * connections hold none), or freed past the cache. */
static void q_release(gw_backend *b, slot *s)
{
    rxq *q = s->q;
    s->q = NULL;
    if (b->nqcache < QCACHE) {
        q->head = q->count = 0;
        q->eof = q->err = 0;
        b->qcache[b->nqcache++] = q;
        return;
    }
    gw_free(q->v);
    gw_free(q);
}

static void q_push(gw_backend *b, slot *s, uint16_t bid, uint32_t len)
{
    q_get(b, s);
    rxq *q = s->q;
    if (q->count == q->cap) {
        uint32_t ncap = q->cap ? q->cap * 2 : 4;
        rxbuf *v = gw_malloc(ncap * sizeof *v);
        for (uint32_t i = 0; i < q->count; i++)
            v[i] = *q_at(q, i);
        gw_free(q->v);
        q->v = v;
        q->cap = ncap;
        q->head = 0;
    }
    *q_at(q, q->count) = (rxbuf){.bid = bid, .len = len, .off = 0};
    q->count++;
}

/* The watcher paused: what it has not taken moves out of the ring's
 * buffers into copies, so paused connections never hold the buffers the
 * others receive into (64 paused peers with a byte each would otherwise
 * push every connection of the worker back to polling). */
static void q_detach(gw_backend *b, slot *s)
{
    rxq *q = s->q;
    if (!q)
        return;
    for (uint32_t i = 0; i < q->count; i++) {
        rxbuf *r = q_at(q, i);
        if (r->heap)
            continue;
        uint32_t n = r->len - r->off;
        r->heap = gw_malloc(n ? n : 1);
        memcpy(r->heap, b->bufs + (size_t)r->bid * BUF_SIZE + r->off, n);
        b->recycle[b->nrecycle++] = r->bid;
        r->len = n;
        r->off = 0;
    }
}

/* A receive's answer: queue what it brought (the watcher hears of it in
 * the second pass of the dispatch, once for all its answers of the batch). */
static void on_recv(gw_backend *b, slot *s, int fd, const ev *e)
{
    int has_buf = (e->flags & IORING_CQE_F_BUFFER) != 0;
    uint16_t bid = (uint16_t)(e->flags >> IORING_CQE_BUFFER_SHIFT);
    if (!(e->flags & IORING_CQE_F_MORE)) {
        /* The receive ended (cancelled, the end of the stream, an error, no
         * buffer left): armed again before the next wait while wanted. */
        s->recv = 0;
        s->cancelling = 0;
        mark_dirty(b, s, fd);
    }
    if (e->res > 0 && has_buf) {
        q_push(b, s, bid, (uint32_t)e->res);
        if (!(s->want & GW_EV_READ))
            q_detach(b, s); /* arrived after a pause */
        return;
    }
    if (has_buf)
        b->recycle[b->nrecycle++] = bid;
    if (e->res == -ENOBUFS) {
        s->fallback = 1; /* a poll and direct reads until the next event */
    } else if (e->res == 0 || (e->res < 0 && e->res != -ECANCELED)) {
        q_get(b, s);
        if (e->res == 0)
            s->q->eof = 1;
        else
            s->q->err = -e->res;
    }
}

/* A receive's answer whatever its generation: its bytes are queued for a
 * live watcher, else their buffer goes back. */
static void recv_answer(gw_backend *b, const ev *e)
{
    uint32_t gen = (uint32_t)(e->ud >> 32) & GEN_MASK;
    int fd = (int)(uint32_t)e->ud;
    slot *s = (uint32_t)fd < b->nslots ? &b->slots[fd] : NULL;
    if (!s || !s->io || (s->rgen & GEN_MASK) != gen) {
        /* stale: its watcher is gone; the bytes have no reader */
        if (e->flags & IORING_CQE_F_BUFFER)
            b->recycle[b->nrecycle++] = (uint16_t)(e->flags >> IORING_CQE_BUFFER_SHIFT);
        return;
    }
    on_recv(b, s, fd, e);
}

static void uring_dispatch(gw_backend *b, int n)
{
    /* First every receive's bytes go to their queues; each answer becomes a
     * report to its watcher, made once per watcher below: a connection that
     * received several buffers in this batch reads them all in one callback
     * (one cork, one send for all its replies), as one big read would. */
    b->seq++;
    for (int i = 0; i < n; i++) {
        ev *e = &b->events[i];
        if (!(e->ud & UD_IGNORE) && ((e->ud >> 61) & 3) == K_RECV) {
            recv_answer(b, e);
            e->ud = (e->ud & ~(3ull << 61)) | K_SYNTH << 61;
        }
    }
    for (int i = 0; i < n; i++) {
        const ev *e = &b->events[i];
        uint64_t ud = e->ud;
        if (ud & UD_IGNORE)
            continue;
        uint64_t kind = (ud >> 61) & 3;
        uint32_t gen = (uint32_t)(ud >> 32) & GEN_MASK;
        int fd = (int)(uint32_t)ud;
        slot *s = (uint32_t)fd < b->nslots ? &b->slots[fd] : NULL;
        if (!s || !s->io)
            continue;
        gw_io *io = s->io;
        if (kind == K_SYNTH) {
            if ((s->rgen & GEN_MASK) != gen || s->seq == b->seq || !q_pending(s) || !(s->want & GW_EV_READ) ||
                io->fd < 0)
                continue;
            s->seq = b->seq;
            io->cb(io, GW_EV_READ | (s->q->err ? GW_EV_ERROR : 0));
            /* the callback may have grown the table (a watcher on a higher
             * fd): s is looked up again */
            s = &b->slots[fd];
            if (s->io == io && q_pending(s))
                mark_dirty(b, s, fd);
            continue;
        }
        if ((s->pgen & GEN_MASK) != gen)
            continue; /* stopped, re-armed or reused since: stale */
        if (!s->multi || !(e->flags & IORING_CQE_F_MORE)) {
            s->armed = 0;
            mark_dirty(b, s, fd); /* armed again before the next wait while wanted */
        }
        s->fallback = 0; /* after a readiness event the receive is tried again */
        int32_t res = e->res;
        uint32_t m = 0;
        if (res < 0)
            m = GW_EV_ERROR | GW_EV_READ;
        else {
            /* Only what was asked for (io_uring adds POLLRDHUP to any mask),
             * and errors and hang-ups, which are always news. */
            if ((res & (POLLIN | POLLRDHUP)) && (s->armed_mask & POLLIN))
                m |= GW_EV_READ;
            if ((res & POLLOUT) && (s->armed_mask & POLLOUT))
                m |= GW_EV_WRITE;
            if (res & (POLLERR | POLLHUP))
                m |= GW_EV_ERROR | GW_EV_READ;
            if (!m && (res & POLLRDHUP))
                s->rdhup = 1; /* armed as multishot from now on */
        }
        if (m && io->fd >= 0 && io->events)
            io->cb(io, m);
    }
}

/* The loop stopped (a worker ends, a test's run returns): every request
 * leaves the ring, so no file is held by it any more (a listener closed
 * afterwards, from another thread, is released at once; the ring's own
 * teardown at exit is asynchronous and would keep it open a while). Bytes
 * received on the way are kept for their watchers; a next run arms what is
 * still wanted again. */
static void uring_quiesce(gw_backend *b)
{
    if (!b->enabled)
        return;
    struct io_uring_sqe *sqe = get_sqe(b);
    if (!sqe)
        return;
    io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL);
    io_uring_sqe_set_data64(sqe, UD_QUIESCE);
    int done = 0, live = 1;
    for (int round = 0; round < 100 && (done < 2 || live); round++) {
        struct io_uring_cqe *cqe;
        int nap = !done || live; /* something still to come: wait for it (20 ms at most per round) */
        struct __kernel_timespec ts = {.tv_sec = 0, .tv_nsec = nap ? 20000000 : 0};
        io_uring_submit_and_wait_timeout(&b->ring, &cqe, nap ? 1 : 0, &ts, NULL);
        if (done)
            done = 2; /* one more reap after the cancel's answer: the last answers of what it ended */
        unsigned head, seen = 0;
        io_uring_for_each_cqe(&b->ring, head, cqe)
        {
            seen++;
            if (cqe->user_data == UD_QUIESCE) {
                done = 1;
                continue;
            }
            if (!(cqe->user_data & UD_IGNORE) && ((cqe->user_data >> 61) & 3) == K_RECV) {
                ev e = {.ud = cqe->user_data, .res = cqe->res, .flags = cqe->flags};
                recv_answer(b, &e);
            }
        }
        io_uring_cq_advance(&b->ring, seen);
        /* every receive ends with an answer without F_MORE: wait for all */
        live = 0;
        for (uint32_t fd = 0; fd < b->nslots && !live; fd++)
            live = b->slots[fd].recv;
    }
    for (uint32_t fd = 0; fd < b->nslots; fd++) {
        slot *s = &b->slots[fd];
        if (s->armed || s->recv) {
            s->armed = s->recv = s->cancelling = 0;
            s->pgen++;
            s->rgen++;
        }
        if (s->io)
            mark_dirty(b, s, (int)fd);
    }
}

static ssize_t uring_recv_take(gw_backend *b, gw_io *io, uint8_t **p, size_t max, int *more)
{
    int fd = io->fd;
    if (fd < 0 || (uint32_t)fd >= b->nslots || b->slots[fd].io != io)
        return GW_IO_DIRECT;
    slot *s = &b->slots[fd];
    rxq *q = s->q;
    if (q && q->count) {
        rxbuf *r = q_at(q, 0);
        size_t k = GW_MIN(max, (size_t)(r->len - r->off));
        *p = (r->heap ? r->heap : b->bufs + (size_t)r->bid * BUF_SIZE) + r->off;
        r->off += (uint32_t)k;
        if (r->off == r->len) {
            /* given back (or freed) at the next wait: the caller reads *p until then */
            if (r->heap) {
                if (b->ndfree == b->capdfree) {
                    b->capdfree = b->capdfree ? b->capdfree * 2 : 64;
                    b->dfree = gw_realloc(b->dfree, b->capdfree * sizeof *b->dfree);
                }
                b->dfree[b->ndfree++] = r->heap;
            } else {
                b->recycle[b->nrecycle++] = r->bid;
            }
            q->head = (q->head + 1) % q->cap;
            q->count--;
        }
        *more = q->count > 0 || q->eof || q->err;
        if (!*more)
            q_release(b, s); /* an idle connection keeps no queue */
        return (ssize_t)k;
    }
    if (q && q->err) {
        errno = q->err;
        return GW_ERR;
    }
    if (q && q->eof)
        return 0;
    if (s->recv)
        return GW_AGAIN; /* bytes may be on their way through the ring */
    return GW_IO_DIRECT;
}

const gw_backend_ops gw_backend_uring = {
    .name = "io_uring",
    .create = uring_create,
    .destroy = uring_destroy,
    .ctl = uring_ctl,
    .wait = uring_wait,
    .dispatch = uring_dispatch,
    .recv_take = uring_recv_take,
    .quiesce = uring_quiesce,
};

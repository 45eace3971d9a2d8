/* loop_epoll.c: the epoll backend (level-triggered). The only file that
 * includes <sys/epoll.h>. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/common.h"
#include "loop/loop_backend.h"

#define MAX_EVENTS 256

struct gw_backend {
    int epfd;
    struct epoll_event events[MAX_EVENTS];
};

static gw_backend *epoll_create_backend(char *err, size_t errcap)
{
    int fd = epoll_create1(EPOLL_CLOEXEC);
    if (fd < 0) {
        snprintf(err, errcap, "epoll_create1: %s", strerror(errno));
        return NULL;
    }
    gw_backend *b = gw_malloc(sizeof *b);
    b->epfd = fd;
    return b;
}

static void epoll_destroy(gw_backend *b)
{
    if (!b)
        return;
    close(b->epfd);
    gw_free(b);
}

/* GW_EV_ERROR as interest maps to no bit: the fd stays registered, and
 * epoll reports EPOLLERR and EPOLLHUP whatever the mask says. */
static uint32_t to_epoll(uint32_t ev)
{
    uint32_t e = 0;
    if (ev & GW_EV_READ)
        e |= EPOLLIN | EPOLLRDHUP;
    if (ev & GW_EV_WRITE)
        e |= EPOLLOUT;
    return e;
}

static int epoll_backend_ctl(gw_backend *b, gw_io *io, uint32_t old_events, uint32_t new_events)
{
    struct epoll_event ev = {.events = to_epoll(new_events), .data.ptr = io};
    int op;
    if (!old_events && !new_events)
        return GW_OK;
    if (!old_events)
        op = EPOLL_CTL_ADD;
    else if (!new_events)
        op = EPOLL_CTL_DEL;
    else
        op = EPOLL_CTL_MOD;
    /* EPOLLEXCLUSIVE (a listener shared by the workers) takes no other flag
     * than EPOLLIN/EPOLLOUT (EINVAL otherwise): a listener has no use for
     * EPOLLRDHUP. */
    if (new_events & GW_EV_EXCLUSIVE)
        ev.events = (ev.events & ~(uint32_t)EPOLLRDHUP) | EPOLLEXCLUSIVE;
    return epoll_ctl(b->epfd, op, io->fd, &ev) == 0 ? GW_OK : GW_ERR;
}

static int epoll_backend_wait(gw_backend *b, int timeout_ms)
{
    int n = epoll_wait(b->epfd, b->events, MAX_EVENTS, timeout_ms);
    if (n < 0)
        return errno == EINTR ? 0 : -1;
    return n;
}

static void epoll_backend_dispatch(gw_backend *b, int n)
{
    for (int i = 0; i < n; i++) {
        gw_io *io = b->events[i].data.ptr;
        uint32_t e = b->events[i].events, ev = 0;
        if (e & (EPOLLIN | EPOLLRDHUP))
            ev |= GW_EV_READ;
        if (e & EPOLLOUT)
            ev |= GW_EV_WRITE;
        if (e & (EPOLLERR | EPOLLHUP))
            ev |= GW_EV_ERROR | GW_EV_READ;
        /* A watcher stopped earlier in this batch has fd -1 (its memory is
         * kept alive by the deferred-free list until the batch ends). */
        if (io->fd >= 0 && io->events)
            io->cb(io, ev);
    }
}

const gw_backend_ops gw_backend_epoll = {
    .create = epoll_create_backend,
    .destroy = epoll_destroy,
    .ctl = epoll_backend_ctl,
    .wait = epoll_backend_wait,
    .dispatch = epoll_backend_dispatch,
};

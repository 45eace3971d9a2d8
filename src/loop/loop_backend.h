/* loop_backend.h: what a readiness backend provides to loop.c. Two are
 * compiled in: loop_epoll.c (the default) and loop_uring.c (io_uring, poll
 * requests through the ring); gw_loop_set_backend() picks one for the loops
 * created after it (GATEWAY_IO). */
#ifndef GW_LOOP_BACKEND_H
#define GW_LOOP_BACKEND_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "loop/loop.h"

typedef struct gw_backend gw_backend;

typedef struct gw_backend_ops {
    const char *name;
    /* NULL with err set when the backend cannot start (io_uring refused by
     * the kernel or a seccomp policy). */
    gw_backend *(*create)(char *err, size_t errcap);
    void (*destroy)(gw_backend *b);
    /* old and new are GW_EV_* interest sets; 0 means not registered. A
     * watcher stopped (new 0) must never be reported again, even if its fd
     * number is reused at once. */
    int (*ctl)(gw_backend *b, gw_io *io, uint32_t old_events, uint32_t new_events);
    /* Waits up to timeout_ms (-1: forever) for readiness. Returns the number
     * of ready events kept for dispatch (0 after EINTR), or -1 on error.
     * Waiting and dispatching are separate so the loop refreshes its clock in
     * between: callbacks must see the time after the wait, not before it. */
    int (*wait)(gw_backend *b, int timeout_ms);
    /* Calls io->cb for each of the n events the last wait returned. */
    void (*dispatch)(gw_backend *b, int n);
    /* Completion receive (NULL when the backend has none): gw_io_recv_take. */
    ssize_t (*recv_take)(gw_backend *b, gw_io *io, uint8_t **p, size_t max, int *more);
    /* The loop stopped: drop every request the kernel holds (optional). */
    void (*quiesce)(gw_backend *b);
} gw_backend_ops;

extern const gw_backend_ops gw_backend_epoll;
extern const gw_backend_ops gw_backend_uring;

#endif

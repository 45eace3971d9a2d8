/* loop_backend.h: what a readiness backend provides to loop.c: the seam
 * between the loop (timers, posted work, the pass) and the kernel's
 * interface. loop_epoll.c is the one compiled in. (An io_uring backend was
 * built behind this seam, measured and removed: ARCHITECTURE.md, "io_uring:
 * measured in wsgate, removed".) */
#ifndef GW_LOOP_BACKEND_H
#define GW_LOOP_BACKEND_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "loop/loop.h"

typedef struct gw_backend gw_backend;

typedef struct gw_backend_ops {
    /* NULL with err set when the backend cannot start. */
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
} gw_backend_ops;

extern const gw_backend_ops gw_backend_epoll;

#endif

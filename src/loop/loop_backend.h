/* loop_backend.h: what a readiness backend provides to loop.c. One backend is
 * compiled in; loop_epoll.c is the default. */
#ifndef GW_LOOP_BACKEND_H
#define GW_LOOP_BACKEND_H

#include <stdint.h>

#include "loop/loop.h"

typedef struct gw_backend gw_backend;

gw_backend *gw_backend_new(void);
void gw_backend_free(gw_backend *b);
/* old and new are GW_EV_* interest sets; 0 means not registered. */
int gw_backend_ctl(gw_backend *b, gw_io *io, uint32_t old_events, uint32_t new_events);
/* Waits up to timeout_ms (-1: forever) for readiness. Returns the number of
 * ready events kept for gw_backend_dispatch (0 after EINTR), or -1 on error.
 * Waiting and dispatching are separate so the loop refreshes its clock in
 * between: callbacks must see the time after the wait, not before it. */
int gw_backend_wait(gw_backend *b, int timeout_ms);
/* Calls io->cb for each of the n events the last wait returned. */
void gw_backend_dispatch(gw_backend *b, int n);

#endif

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
/* Waits up to timeout_ms (-1: forever) and calls io->cb for each ready
 * watcher. Returns the number of events dispatched, or -1 on error. */
int gw_backend_poll(gw_backend *b, int timeout_ms);

#endif

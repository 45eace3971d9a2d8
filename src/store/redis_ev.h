/* redis_ev.h: hiredis' asynchronous context attached to a wsgate loop.
 *
 * The same job as hiredis' adapters/ae.h does for Redis' own ae loop:
 * hiredis asks for read and write interest through ac->ev (addRead,
 * delRead, addWrite, delWrite) and tells us when it is done with the
 * socket (cleanup); we turn those into one gw_io watcher on the loop of the
 * thread that owns the context, and call redisAsyncHandleRead/Write when
 * the socket is ready. hiredis 0.14 has no timer hook (scheduleTimer came
 * in 1.0): deadlines are kept by the caller (store/redis.c) with gw_timer.
 *
 * The struct is embedded by its owner and outlives the context: after
 * hiredis' cleanup (the context is being freed, possibly from inside a
 * redisAsyncHandleRead) ac is NULL and the watcher stopped, so the I/O
 * callback never touches a freed context. One thread only: the loop's. */
#ifndef GW_REDIS_EV_H
#define GW_REDIS_EV_H

#include <stdint.h>

#include <hiredis/async.h>

#include "loop/loop.h"

typedef struct gw_redis_ev {
    gw_loop *loop;
    redisAsyncContext *ac; /* NULL when nothing is attached (or after cleanup) */
    gw_io io;
    uint32_t want;         /* GW_EV_READ | GW_EV_WRITE asked for by hiredis */
} gw_redis_ev;

/* Attaches ac to l through e (e->ac = ac). GW_OK, or GW_ERR when ac already
 * has an event library attached. */
int gw_redis_ev_attach(gw_redis_ev *e, gw_loop *l, redisAsyncContext *ac);

#endif

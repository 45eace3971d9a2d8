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

/* One reply's running totals (reset when the next reply starts). */
typedef struct gw_redis_limit {
    const char *refused; /* why a reply was refused, or NULL */
    size_t bytes;        /* string bytes of the reply being read */
    size_t elements;     /* array elements of the reply being read */
} gw_redis_limit;

typedef struct gw_redis_ev {
    gw_loop *loop;
    redisAsyncContext *ac; /* NULL when nothing is attached (or after cleanup) */
    gw_io io;
    uint32_t want;         /* GW_EV_READ | GW_EV_WRITE asked for by hiredis */
    gw_redis_limit lim;    /* lim.refused: why a reply was refused, or NULL */
} gw_redis_ev;

/* Bounds on a reply's shape. hiredis 0.14 has none: `*2147483647` makes it
 * calloc 16 GiB of element pointers (and walk them all when freed) on the
 * calling thread, a `$` length is buffered however large it is. */
#define GW_REDIS_MAX_ELEMENTS (1u << 20) /* elements in one array, and in one whole reply */
#define GW_REDIS_MAX_BULK (64u << 20)    /* bytes in one bulk string, and in one whole reply */


/* Installs the bounds on reader r: an array or bulk string above them, or a
 * reply whose strings together pass GW_REDIS_MAX_BULK bytes (or whose arrays
 * together pass GW_REDIS_MAX_ELEMENTS elements), is a protocol error (the
 * connection fails), and lim->refused is set to the reason (hiredis itself
 * reports it as "Out of memory"). r->privdata is taken. */
void gw_redis_reader_limit(redisReader *r, gw_redis_limit *lim);

/* Attaches ac to l through e (e->ac = ac) and installs the reply bounds on
 * its reader (e->lim.refused names a refusal; a bulk string still being read
 * past GW_REDIS_MAX_BULK fails the connection before more is buffered).
 * GW_OK, or GW_ERR when ac already has an event library attached. */
int gw_redis_ev_attach(gw_redis_ev *e, gw_loop *l, redisAsyncContext *ac);

#endif

/* loop.h: one event loop per worker thread.
 *
 * Readiness-based and level-triggered, behind a small backend interface
 * (loop_backend.h; epoll). The loop owns:
 *  - fd watchers (gw_io), whose callback gets the ready events;
 *  - timers (gw_timer, a binary min-heap; the owner embeds the struct);
 *  - a "pending" list worked through before each sleep (connections whose
 *    buffered input must be processed again without a new readiness event);
 *  - a deferred-free list, emptied after each batch of events, so no object
 *    is freed while a callback further up the stack still uses it;
 *  - a cross-thread task queue woken by an eventfd (gw_loop_post). */
#ifndef GW_LOOP_H
#define GW_LOOP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "core/list.h"

typedef struct gw_loop gw_loop;

#define GW_EV_READ 0x1u
#define GW_EV_WRITE 0x2u
#define GW_EV_ERROR 0x4u /* reported: error or hang-up; as interest alone: watch for nothing else */
#define GW_EV_EXCLUSIVE 0x80000000u /* with READ on a listen fd shared by workers: wake one */

typedef struct gw_io gw_io;
typedef void (*gw_io_cb)(gw_io *io, uint32_t events);
struct gw_io {
    int fd;          /* -1 when not watched */
    uint32_t events; /* interest now registered with the backend */
    gw_io_cb cb;
};

typedef struct gw_timer gw_timer;
typedef void (*gw_timer_cb)(gw_timer *t);
struct gw_timer {
    uint64_t when;  /* monotonic ms at which it fires */
    uint32_t idx;   /* heap slot + 1; 0 when not armed */
    gw_timer_cb cb;
};

/* A node for the pending and deferred lists: embed it, set fn. */
typedef struct gw_task gw_task;
typedef void (*gw_task_fn)(gw_task *t);
struct gw_task {
    gw_list node;
    gw_task_fn fn;
};

gw_loop *gw_loop_new(void);
/* As gw_loop_new, with the reason in err when it fails. */
gw_loop *gw_loop_create(char *err, size_t errcap);
void gw_loop_free(gw_loop *l);
/* Runs until gw_loop_stop(). */
void gw_loop_run(gw_loop *l);
/* Asks the loop to return after the current iteration (same thread). */
void gw_loop_stop(gw_loop *l);

/* Cached monotonic time in ms, refreshed after every wait for events, before
 * any callback of that wakeup runs (so a timer armed in an I/O callback after
 * a long sleep counts from the time of the wakeup, not from before it). */
uint64_t gw_loop_now(const gw_loop *l);
/* Replaces the loop's clock (default gw_mono_ms) with clock(arg), in ms.
 * For tests: a fake clock makes "a long idle" instant and exact. */
void gw_loop_set_clock(gw_loop *l, uint64_t (*clock)(void *arg), void *arg);
/* Wall-clock ms since the epoch (not cached). */
uint64_t gw_wall_ms(void);
uint64_t gw_mono_ms(void);

/* fd watchers. io->fd and io->cb must be set. Interest changes that do not
 * change anything make no system call. */
int gw_io_start(gw_loop *l, gw_io *io, uint32_t events);
int gw_io_update(gw_loop *l, gw_io *io, uint32_t events);
void gw_io_stop(gw_loop *l, gw_io *io);


void gw_timer_start(gw_loop *l, gw_timer *t, uint64_t after_ms);
void gw_timer_start_at(gw_loop *l, gw_timer *t, uint64_t when);
void gw_timer_stop(gw_loop *l, gw_timer *t);
static inline int gw_timer_active(const gw_timer *t) { return t->idx != 0; }

/* Queues t to run before the loop next sleeps (once, however often it is
 * queued). */
void gw_loop_pending(gw_loop *l, gw_task *t);
/* Queues t to run after the current batch of events (for frees). */
void gw_loop_defer(gw_loop *l, gw_task *t);
/* Removes t from whichever list it is on. */
void gw_task_cancel(gw_task *t);

/* Runs fn(arg) on l's thread soon. Safe from any thread (mutex + eventfd). */
void gw_loop_post(gw_loop *l, void (*fn)(void *arg), void *arg);

#endif

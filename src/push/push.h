/* push.h: push events (DESIGN.md section 5): the /ws/events route kind,
 * admin POST /v1/events, and the fan-out of the client-events stream to the
 * subscribers of every worker (ARCHITECTURE.md "Push"). */
#ifndef GW_PUSH_H
#define GW_PUSH_H

#include <stddef.h>

#include "config/config.h"
#include "server/kind.h"
#include "store/events.h"

extern const gw_kind gw_kind_events;

/* Sets up the history (GATEWAY_PUSH_HISTORY_WINDOW), the fan-out, the
 * revocation hook, metrics and POST /v1/events. Call before the store is
 * made (gw_terminal_init): the Redis reader starts at the window's start. */
void gw_push_init(const gw_config *cfg);

/* ========================== the subscriber API ================================
 * One push stream, whatever carries it (the /ws/events WebSocket, a gRPC
 * SubscribeEvents stream): the hub queues the matching events of the user
 * (and device session), replays what a cursor missed, ends the stream on
 * overflow (GATEWAY_PUSH_QUEUE_LIMIT) and revocation, and writes the queue
 * through the owner while it takes more. On a worker thread only. */
typedef struct gw_push_sub gw_push_sub;

/* Why the hub ends a stream: overflow (1013 / RESOURCE_EXHAUSTED), the
 * session revoked, its bearer or user changed (1008 / FAILED_PRECONDITION),
 * or the history evicted what a replay in steps had still to send (resync:
 * 4409 / OUT_OF_RANGE, after gateway.resync_required). */
enum { GW_PUSH_END_OVERFLOW = 1, GW_PUSH_END_REVOKED, GW_PUSH_END_CREDENTIALS, GW_PUSH_END_RESYNC };

typedef struct gw_push_owner {
    /* 1 while the stream takes more events now (else the owner calls
     * gw_push_sub_kick when it does again). */
    int (*writable)(void *owner);
    /* Writes n events in order (ev[i]->frame, or ->alt). GW_ERR: the stream
     * is dead and the owner closed it (it still calls gw_push_unsubscribe). */
    int (*write)(void *owner, gw_event *const *ev, size_t n);
    /* The hub ends the stream (GW_PUSH_END_*): the queue is dropped, the
     * owner says why and closes it (then gw_push_unsubscribe). */
    void (*end)(void *owner, int why);
} gw_push_owner;

/* 1 once the workers' push state exists and this thread is a worker. */
int gw_push_ready(void);
/* Lists a subscriber on this worker and queues what cursor (NULL: none)
 * missed; the owner writes its bootstrap first. NULL when the hub is not
 * ready (*resync 0), when the cursor is older than the history (*resync 1),
 * or when the device session holds GATEWAY_PUSH_MAX_STREAMS_PER_SESSION
 * streams already (*resync 2). */
gw_push_sub *gw_push_subscribe(const gw_push_owner *ops, void *owner, const char *user, const char *dev,
                               const char *corr, const gw_event_id *cursor, const char *cursor_text, int *resync);
/* The stream takes more again: the queue is written before the loop sleeps. */
void gw_push_sub_kick(gw_push_sub *s);
/* "live", "replayed" (how it started) and the events written so far. */
const char *gw_push_sub_resume(const gw_push_sub *s);
uint64_t gw_push_sub_delivered(const gw_push_sub *s);
/* Off the lists, queue dropped, freed (the stream ended). */
void gw_push_unsubscribe(gw_push_sub *s);

/* `wsgate publish`: posts one event to the admin listener. */
int gw_publish_cli_main(int argc, char **argv);

#endif

/* events.h: the client-events stream as this process sees it (DESIGN.md
 * section 5): a bounded, ordered history of events, each encoded once.
 *
 * An event's id is its stream entry id, "<ms>-<seq>" as Redis writes it;
 * it is the event's id on the wire and the resume cursor. The embedded
 * store assigns ids itself (gw_events_append_local); the Redis store reads
 * the stream (XREAD) and appends what it reads, ids included
 * (gw_events_append_fields). Entries at or below the last id are ignored,
 * so a reader that re-reads after a reconnect adds nothing twice.
 *
 * Each event is encoded once, at append, into a complete WebSocket text
 * frame (unmasked, server role: the same bytes for every recipient) and
 * reference-counted (atomic): the history holds one reference, every
 * subscriber queue that holds the event one more; the last unref frees it.
 *
 * The history keeps the events of the last GATEWAY_PUSH_HISTORY_WINDOW (by
 * their id's time, and by when this process read them), at most
 * GW_EVENTS_MAX of them and GW_EVENTS_MAX_BYTES of memory (0 as the window:
 * only the count and memory bounds). A cursor older than
 * what was evicted cannot be served: gw_events_replay says so (resync).
 *
 * Appends call the registered hook under the history's lock, so every
 * hook call sees the events in id order whichever thread appends (the push
 * fan-out posts each one to the workers in that order). Thread-safe. */
#ifndef GW_EVENTS_H
#define GW_EVENTS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "store/sessions.h"

#define GW_EVENT_ID_MAX 48
#define GW_EVENT_TYPE_MAX 128
#define GW_EVENT_PAYLOAD_MAX (64 * 1024)
#define GW_EVENTS_MAX 1000000
#define GW_EVENTS_CURSOR_SKEW_MS 60000u /* a cursor this far past the clock (and past every id read) is refused */
#define GW_EVENTS_MAX_BYTES ((size_t)256 << 20) /* memory the history may hold (frames + headers) */

typedef struct gw_event_id {
    uint64_t ms, seq;
} gw_event_id;

typedef struct gw_event {
    atomic_uint refs;
    gw_event_id id;
    char id_text[GW_EVENT_ID_MAX];
    char user_id[GW_SESSION_ID_MAX + 1];
    char device_session_id[GW_SESSION_ID_MAX + 1]; /* "" for every session of the user */
    uint64_t read_mono_ms; /* when this process read it (delivery latency) */
    uint8_t *alt;          /* the second encoding (the gRPC message), or NULL: gw_events_set_alt_encoder */
    size_t alt_len;
    size_t frame_len;
    uint8_t frame[];       /* the WebSocket text frame: header + JSON */
} gw_event;

/* An event to publish (POST /v1/events, wsgate publish). */
typedef struct gw_event_in {
    char user_id[GW_SESSION_ID_MAX + 1];
    char type[GW_EVENT_TYPE_MAX + 1];
    char device_session_id[GW_SESSION_ID_MAX + 1];
    char *payload; /* JSON text (owned by the caller), or NULL for null */
} gw_event_in;

static inline gw_event *gw_event_ref(gw_event *e)
{
    atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
    return e;
}
void gw_event_unref(gw_event *e);

/* Parses "<ms>-<seq>" (or "<ms>", seq 0). GW_OK or GW_ERR. */
int gw_event_id_parse(const char *s, size_t n, gw_event_id *out);
static inline int gw_event_id_cmp(gw_event_id a, gw_event_id b)
{
    return a.ms < b.ms ? -1 : a.ms > b.ms ? 1 : a.seq < b.seq ? -1 : a.seq > b.seq ? 1 : 0;
}

/* An event to publish from a JSON object body: user_id and type required
 * strings, device_session_id optional, payload a string holding JSON text
 * (the stream field) or any other JSON value (taken as is). GW_OK, or
 * GW_ERR with why. out->payload is allocated (gw_event_in_free). */
int gw_event_in_from_json(const uint8_t *body, size_t n, gw_event_in *out, char *why, size_t whycap);
void gw_event_in_free(gw_event_in *in);

/* Sets the window and the clock (wall ms) and clears the history; the
 * history starts "evicted up to" start_ms - 1: a cursor from before that
 * cannot be served. Call before anything appends. */
void gw_events_init(uint64_t window_ms, uint64_t (*now_ms)(void), uint64_t start_ms);
/* Where a reader of the stream starts: the oldest id still in the window. */
gw_event_id gw_events_start_id(void);

typedef void (*gw_events_hook)(gw_event *e, void *arg);
/* The fan-out (one; called under the history's lock, in id order). */
void gw_events_set_hook(gw_events_hook fn, void *arg);

/* A second encoding made once per event at append, beside the WebSocket
 * frame (the gRPC surface's length-prefixed Event message), shared by every
 * subscriber of that protocol like the frame. enc returns an allocation
 * (gw_malloc; freed with the event) and its length, or NULL. Set once at
 * start, before anything appends. */
typedef uint8_t *(*gw_events_alt_encoder)(const char *id, const char *type, size_t typen, const char *payload_json,
                                          size_t payload_len, uint64_t created_at_ms, size_t *len);
void gw_events_set_alt_encoder(gw_events_alt_encoder enc);

/* Appends an entry read from the stream: n field/value pairs. A malformed
 * entry is logged and counted (never fatal). GW_OK (appended or already
 * seen) or GW_ERR (malformed). */
int gw_events_append_fields(const char *id, size_t idn, size_t n, const char *const *names, const size_t *nlens,
                            const char *const *vals, const size_t *vlens);
/* The embedded stream: appends with the next id (> every id so far, "ms-seq"
 * from the clock) and writes it to id_out. GW_OK or GW_ERR. */
int gw_events_append_local(const gw_event_in *in, char id_out[GW_EVENT_ID_MAX]);

/* A subscriber's start. With a cursor: fn gets (a reference to) every held
 * event after it, in order; *hw is set to the highest id the subscriber has
 * now seen (the history's last, or the cursor if higher): live events at or
 * below it are duplicates. Returns GW_OK, or GW_AGAIN when the cursor is
 * older than the history (resync required; fn is not called). Runs under
 * the lock, so no append slips between the replay and the live feed. */
int gw_events_replay(const gw_event_id *cursor, void (*fn)(gw_event *e, void *arg), void *arg, gw_event_id *hw);
/* A replay in steps (a subscriber's queue holds at most one step): fn gets
 * the held events after *after, at most max of them (0: all). Returns 1
 * when more remain (*pos: the last one handed; call again from it), GW_OK
 * when the history's end was reached (*hw set as gw_events_replay sets it,
 * under the same lock: live events above it are new), or GW_AGAIN when
 * *after is older than the history (resync). */
int gw_events_replay_some(const gw_event_id *after, size_t max, void (*fn)(gw_event *e, void *arg), void *arg,
                          gw_event_id *pos, gw_event_id *hw);

/* Counts and logs a malformed entry (source "stream" or "admin"). */
void gw_events_malformed(const char *source, const char *id, const char *why);

size_t gw_events_count(void);
/* Empties the history (tests, shutdown). */
void gw_events_reset(void);

/* The history's memory bound (0: GW_EVENTS_MAX_BYTES; tests set less) and
 * what it holds now. */
void gw_events_set_max_bytes(size_t max);
size_t gw_events_bytes(void);

#endif

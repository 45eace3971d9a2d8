/* sessions.h: device session snapshots (DESIGN.md section 5), the process's
 * view of them.
 *
 * A snapshot is {device_session_id, user_id, status (active or revoked),
 * token_sha256 (the SHA-256 of the session's bearer secret, 64 hex digits
 * on the wire), version}; for one device_session_id the highest version
 * wins, whatever order the snapshots arrive in (an equal or lower version
 * changes nothing). Snapshots come from the admin API (POST /v1/sessions)
 * on both backends and, with Redis, from the session-events stream, which
 * every process reads in full, so every process holds the same view.
 *
 * Push (/ws/events) authenticates a bearer by its digest through the
 * asynchronous store (gw_store_session_lookup, store.h) and registers a
 * revocation hook (gw_sessions_on_revoke) to cut a revoked session's live
 * streams. The view is one table per process, thread-safe. */
#ifndef GW_SESSIONS_H
#define GW_SESSIONS_H

#include <stddef.h>
#include <stdint.h>

#define GW_SESSION_ID_MAX 128

typedef enum gw_session_status { GW_SESSION_ACTIVE = 1, GW_SESSION_REVOKED = 2 } gw_session_status;

typedef struct gw_session {
    char device_session_id[GW_SESSION_ID_MAX + 1];
    char user_id[GW_SESSION_ID_MAX + 1];
    gw_session_status status;
    uint8_t token_sha256[32];
    uint64_t version;
} gw_session;

/* Registers the view's metrics (wsgate_session_snapshots_total) at start. */
void gw_sessions_init(void);

/* A snapshot from n field/value pairs (a stream entry's fields; names and
 * values need not be NUL-terminated). GW_OK, or GW_ERR with why (a missing
 * or malformed field; unknown fields are ignored). */
int gw_session_from_fields(size_t n, const char *const *names, const size_t *nlens, const char *const *vals,
                           const size_t *vlens, gw_session *out, char *why, size_t whycap);
/* The same from a JSON object body (POST /v1/sessions): version a positive
 * integer (or its decimal text), the others strings. */
int gw_session_from_json(const uint8_t *body, size_t n, gw_session *out, char *why, size_t whycap);
/* "active" / "revoked". */
const char *gw_session_status_str(gw_session_status s);

/* Applies a snapshot to the view: 1 when it changed it (a new session or a
 * higher version), 0 when stale. A session that becomes revoked, or whose
 * bearer digest or user changes, calls the revocation hooks (s->status
 * says which: revoked, or active with new credentials), on the calling
 * thread, after the view is updated: streams opened with the old bearer
 * end. */
int gw_sessions_apply(const gw_session *s);
/* Copies the session with that id (1) or returns 0. */
int gw_sessions_get(const char *device_session_id, gw_session *out);
/* Copies the session whose bearer has this digest (1) or returns 0. */
int gw_sessions_find_token(const uint8_t token_sha256[32], gw_session *out);
size_t gw_sessions_count(void);

/* Revocation hooks (at most 8; registered before the workers start). fn
 * runs on whichever thread applied the snapshot (a worker for the admin API
 * on the embedded store, the Redis monitor thread for the stream): it must
 * hand work to the owning workers itself (gw_loop_post). */
typedef void (*gw_session_revoke_fn)(const gw_session *s, void *arg);
int gw_sessions_on_revoke(gw_session_revoke_fn fn, void *arg);

/* Counts and logs a malformed snapshot (never fatal): source "stream" or
 * "admin", id the stream entry id (or NULL). */
void gw_sessions_malformed(const char *source, const char *id, const char *why);

/* Empties the view and the hooks (tests). */
void gw_sessions_reset(void);

#endif

/* admin.h: the session snapshot admin API (DESIGN.md section 5), on the
 * admin listener, admin-token protected like the token mint:
 *
 *   POST /v1/sessions   {"device_session_id","user_id","status","token_sha256","version"}
 *                       -> 202 {"device_session_id","version","status","id"}: published to every
 *                          process (Redis: appended to the session-events stream, id its entry id;
 *                          embedded: applied at once, id null); 400 for a malformed snapshot, 503
 *                          service_unavailable when the store does not answer in time.
 *   GET /v1/sessions/ID -> 200 this process's view of the session (no token digest), or 404.
 */
#ifndef GW_SESSIONS_ADMIN_H
#define GW_SESSIONS_ADMIN_H

#include <stdint.h>

/* Registers the endpoints (before gw_server_start); the store is
 * gw_store_current(); a request waits at most timeout_ms for it. */
void gw_sessions_admin_init(uint64_t timeout_ms);

#endif

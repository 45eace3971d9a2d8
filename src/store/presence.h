/* presence.h: the embedded store's presence table (DESIGN.md section 5):
 * per user, one entry per connection (field) with its JSON value
 * ({instance_id, connected_at_ms, last_seen_ms}). An entry whose
 * last_seen_ms is older than the TTL is gone (a dead subscriber's process
 * stopped refreshing it), like the Redis hash <prefix>presence:<user_id>
 * whose TTL the refresh timer renews. Thread-safe. */
#ifndef GW_PRESENCE_H
#define GW_PRESENCE_H

#include <stddef.h>
#include <stdint.h>

/* Sets (value non-NULL) or deletes (NULL) field of user's entry at now_ms,
 * then drops entries (any user's) whose last refresh is older than ttl_ms.
 * O(1) apart from the expired entries it drops. */
void gw_presence_put(const char *user, const char *field, const char *value, uint64_t last_seen_ms,
                     uint64_t ttl_ms, uint64_t now_ms);
/* The user's live entries as a JSON object text {field: value, ...}
 * (malloc'd; free it). */
char *gw_presence_json(const char *user, uint64_t ttl_ms, uint64_t now_ms);
/* Entries held, expired ones not yet pruned included (tests). */
size_t gw_presence_count(void);
void gw_presence_reset(void);

#endif

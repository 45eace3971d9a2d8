/* route_cache.h: the browser kind's route cache (DESIGN.md section 7): which
 * VM serves a browser session (session id -> base_url + jwt), bounded, least
 * recently used entry evicted first.
 *
 * One cache is shared by every worker of the process (a route learned from
 * the control plane's answer on one worker must route the next request on
 * any other, since clients' connections land on any worker), so every call
 * takes the cache's mutex. The critical sections are a hash lookup and a few
 * pointer moves (plus a copy of two short strings on a hit), never I/O, so a
 * lock is cheaper and simpler than per-worker copies kept in sync. */
#ifndef GW_ROUTE_CACHE_H
#define GW_ROUTE_CACHE_H

#include <stddef.h>
#include <stdint.h>

#define GW_BROUTE_ID_MAX 128   /* session id: bytes */
#define GW_BROUTE_URL_MAX 1024 /* base_url: bytes */
#define GW_BROUTE_JWT_MAX 8192 /* jwt (query-encoded): bytes */
#define GW_BROUTE_CRED_LEN 32  /* the credential digest (SHA-256) bound to a route */

typedef struct gw_bcache gw_bcache;
struct gw_metric;

/* A cache of at most cap entries (cap >= 1). Never NULL (aborts on OOM). */
gw_bcache *gw_bcache_new(size_t cap);
void gw_bcache_free(gw_bcache *c);
/* Changes the bound; returns how many entries were evicted to meet it. */
size_t gw_bcache_set_cap(gw_bcache *c, size_t cap);
/* Stores (or replaces) id's route and marks it most recently used. cred is
 * the digest (GW_BROUTE_CRED_LEN bytes) of the credential the route is bound
 * to, or NULL for none (browser.c never sends such a route direct). Returns
 * how many entries were evicted for room (0 or 1). Strings are copied;
 * lengths past the GW_BROUTE_*_MAX bounds are refused (returns 0, nothing
 * stored: the learner never passes such values). */
size_t gw_bcache_put(gw_bcache *c, const char *id, const char *base_url, const char *jwt, const uint8_t *cred);
/* Looks id (n bytes) up. On a hit marks it most recently used, copies its
 * base_url and jwt into the caller's buffers (sizes GW_BROUTE_URL_MAX + 1 and
 * GW_BROUTE_JWT_MAX + 1), its credential digest into cred (when not NULL;
 * GW_BROUTE_CRED_LEN bytes) and whether it has one into *has_cred (when not
 * NULL), and returns 1; 0 when absent. */
int gw_bcache_get(gw_bcache *c, const char *id, size_t n, char *base_url, char *jwt, uint8_t *cred, int *has_cred);
/* Removes id's route. 1 when there was one. */
int gw_bcache_evict(gw_bcache *c, const char *id, size_t n);
size_t gw_bcache_size(gw_bcache *c);
/* A gauge kept equal to the number of entries (set under the cache's lock,
 * so concurrent changes never leave it stale); NULL for none. */
void gw_bcache_set_gauge(gw_bcache *c, struct gw_metric *m);

#endif

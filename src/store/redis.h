/* redis.h: the Redis store (DESIGN.md sections 1, 2, 10).
 *
 * Terminal tokens live in Redis under <prefix>tok:<hex SHA-256> (a hash:
 * state, expiry, allocation, packed context; never the token itself), with
 * a TTL of the token's expiry plus GW_TOKEN_TOMBSTONE_MARGIN_MS. A consume
 * is one Lua script, one round trip: it turns the entry into a tombstone
 * and returns what the token granted, so any number of processes sharing
 * the Redis see each token consumed exactly once, and a replay is told
 * apart from an unknown token.
 *
 * Connections: one per worker thread, made on that worker's first store
 * operation and driven by the worker's own loop (redis_ev.h), plus one for
 * a monitor thread that PINGs every HEALTH_EVERY_MS. Every command has a
 * deadline (GATEWAY_STORE_TIMEOUT): a connection whose oldest command is
 * past it is dropped (its commands answer GW_TOKEN_BACKEND_ERROR / GW_ERR)
 * and made again with back-off (100ms doubling to 1s). While a connection
 * is down its operations answer the error at once (through the loop). The
 * backend is healthy while no connection is down.
 *
 * Startup (gw_store_redis) is the only blocking part: one connection with a
 * timeout for AUTH, SELECT and PING; any failure is an error line. */
#ifndef GW_STORE_REDIS_H
#define GW_STORE_REDIS_H

#include <stddef.h>

#include "config/config.h"
#include "store/store.h"

/* Checks the Redis of cfg (bounded connect, AUTH, SELECT, PING within
 * cfg->store_timeout_ms) and returns its store, or NULL with err filled
 * ("GATEWAY_REDIS_MASTER_ADDR: ..."). */
gw_store *gw_store_redis(const gw_config *cfg, char *err, size_t errcap);

/* The reconnect delay for a back-off step of backoff_ms, with equal
 * jitter: uniform in [backoff_ms / 2, backoff_ms], so the connections of
 * many workers and processes do not reconnect in lockstep. */
uint64_t gw_redis_backoff_delay(uint64_t backoff_ms);

#endif

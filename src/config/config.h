/* config.h: the gateway's configuration, from the environment (twelve-factor;
 * DESIGN.md section 2). One immutable struct, validated at load: startup fails
 * fast with one clear line naming the variable. */
#ifndef GW_CONFIG_H
#define GW_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "log/log.h"
#include "net/addr.h"

typedef struct gw_config {
    gw_addr public_addr;         /* GATEWAY_PUBLIC_HTTP_ADDR, default ":8080" */
    gw_addr admin_addr;          /* GATEWAY_ADMIN_HTTP_ADDR, default off */
    gw_addr grpc_addr;           /* GATEWAY_AUTHENTICATED_GRPC_ADDR, default ":9090"; unset (empty) turns gRPC off */
    int grpc_addr_explicit;       /* GATEWAY_AUTHENTICATED_GRPC_ADDR was set (not the default) */
    char admin_token[256];       /* GATEWAY_ADMIN_TOKEN */
    char tls_cert_path[4096];    /* GATEWAY_TLS_CERT_PATH */
    char tls_key_path[4096];     /* GATEWAY_TLS_KEY_PATH */
    char routes_file[4096];      /* GATEWAY_ROUTES_FILE */
    char upgrade_socket[108];    /* GATEWAY_UPGRADE_SOCKET: unix socket path for in-place binary upgrades */
    char redis_master_addr[256]; /* GATEWAY_REDIS_MASTER_ADDR */
    char redis_password[256];    /* GATEWAY_REDIS_PASSWORD */
    int redis_db;                /* GATEWAY_REDIS_DB, default 0 */
    char redis_key_prefix[128];  /* GATEWAY_REDIS_KEY_PREFIX, default "wsgate:" */
    char redis_replica_addrs[1024]; /* GATEWAY_REDIS_REPLICA_ADDRS, reserved */
    char session_events_stream[256]; /* GATEWAY_SESSION_EVENTS_REDIS_STREAM, default "wsgate:session-events" */
    char client_events_stream[256];  /* GATEWAY_CLIENT_EVENTS_REDIS_STREAM, default "wsgate:client-events" */
    char signer_key_path[4096];  /* GATEWAY_RESPONSE_SIGNER_PRIVATE_KEY_PEM_PATH */
    uint64_t shutdown_timeout_ms; /* GATEWAY_SHUTDOWN_TIMEOUT, default 30s */
    uint64_t drain_delay_ms;      /* GATEWAY_DRAIN_DELAY, default 5s (at most half the shutdown timeout):
                                   * /readyz answers 503 while the listeners keep serving */
    uint64_t ws_ping_interval_ms; /* GATEWAY_WS_PING_INTERVAL, default 25s; 0 disables */
    uint64_t ws_pong_timeout_ms;  /* GATEWAY_WS_PONG_TIMEOUT, default 50s */
    uint64_t store_timeout_ms;    /* GATEWAY_STORE_TIMEOUT, default 2s: how long a request waits for the store */
    uint64_t ws_max_message_bytes; /* GATEWAY_WS_MAX_MESSAGE_BYTES, default 1MiB */
    uint64_t push_queue_limit;    /* GATEWAY_PUSH_QUEUE_LIMIT, default 1024 */
    uint64_t push_max_streams_per_session; /* GATEWAY_PUSH_MAX_STREAMS_PER_SESSION, default 16 */
    uint64_t push_history_window_ms; /* GATEWAY_PUSH_HISTORY_WINDOW, default 5m */
    gw_log_format log_format;     /* GATEWAY_LOG_FORMAT, default json */
    gw_log_level log_level;       /* GATEWAY_LOG_LEVEL, default info */
    char service_name[64];        /* GATEWAY_SERVICE_NAME, default "wsgate": the `service` field of every log line */
    char public_ws_base_url[1024]; /* GATEWAY_PUBLIC_WS_BASE_URL */
    char agent_secret[256];       /* GATEWAY_AGENT_SECRET */
    /* Core engine knobs (documented in README; defaults suit a public edge). */
    int workers;                  /* GATEWAY_WORKERS, default: online CPUs */
    uint64_t max_connections;     /* GATEWAY_MAX_CONNECTIONS, default 100000 (per process, public listener) */
    uint64_t admin_max_connections; /* GATEWAY_ADMIN_MAX_CONNECTIONS, default 128 (admin listener, its own limit) */
    uint64_t handshake_timeout_ms; /* GATEWAY_HANDSHAKE_TIMEOUT, default 10s: request head must arrive by then */
    uint64_t http_idle_timeout_ms; /* GATEWAY_HTTP_IDLE_TIMEOUT, default 60s: keep-alive idle */
    uint64_t echo_idle_timeout_ms; /* GATEWAY_ECHO_IDLE_TIMEOUT, default 90s: /probe/ws idle limit */
    uint64_t max_header_bytes;    /* GATEWAY_MAX_HEADER_BYTES, default 16KiB -> 431 */
    uint64_t max_request_line;    /* GATEWAY_MAX_REQUEST_LINE_BYTES, default 8KiB -> 414 */
    uint64_t body_timeout_ms;     /* GATEWAY_BODY_TIMEOUT, default 60s: a proxied request body's base deadline */
    uint64_t body_min_rate;       /* GATEWAY_BODY_MIN_RATE, default 1KiB (bytes/s): each byte extends it; 0 = fixed */
    int ws_deflate;               /* GATEWAY_WS_DEFLATE, default on ("on"/"off", "true"/"false", "1"/"0") */
    uint64_t ws_max_inflate_ratio; /* GATEWAY_WS_MAX_INFLATE_RATIO, default 100; 0 = no decompression budget */
} gw_config;

/* Fills *c with defaults, then overrides from the environment through
 * getenv_fn (getenv in production, a table in tests). Returns GW_OK, or GW_ERR
 * with a one-line message naming the variable and the bad value in err
 * (e.g. "GATEWAY_WS_PING_INTERVAL: cannot parse \"abc\" as a duration").
 * Removed variables GATEWAY_REDIS_TLS_ENABLED and GATEWAY_REDIS_USERNAME are
 * refused when set (even to empty? no: when set to a non-empty value). Also
 * refused: only one of the TLS cert/key pair set, pong timeout < ping
 * interval, workers < 1 or > 256, max message bytes < 125 or > 1 GiB. */
int gw_config_load(gw_config *c, const char *(*getenv_fn)(const char *name), char *err, size_t errcap);

/* Parsers shared with subcommands. All return GW_OK or GW_ERR. */
/* "250ms", "25s", "5m", "1h", "1h30m", or a bare integer meaning seconds. */
int gw_parse_duration_ms(const char *s, uint64_t *out);
/* "1048576", "64KiB", "1MiB", "1GiB", "10KB" (=10000), "1MB". */
int gw_parse_size(const char *s, uint64_t *out);
int gw_parse_bool(const char *s, int *out);
/* (Addresses: gw_parse_addr and gw_addr_format are in net/addr.h.) */

/* Calls fn for each variable of a feature not built yet (gRPC, Redis, push,
 * response signer) that is set to a non-empty value; returns their number.
 * Such values are validated by gw_config_load but have no effect: the caller
 * warns about each at start. fn may be NULL (count only). */
size_t gw_config_unbuilt(const char *(*getenv_fn)(const char *name),
                         void (*fn)(const char *name, const char *feature, void *arg), void *arg);

/* The help text listing every variable with its default, for --help. */
extern const char gw_config_help[];

#endif

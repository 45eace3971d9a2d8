/* config.c: the gateway's configuration from the environment.
 *
 * gw_config_load() starts from the documented defaults (DESIGN.md section 2,
 * config.h) and overrides them variable by variable through a getenv-like
 * function, so tests and the fuzzer can feed a table. It is pure: no file or
 * network access (reading the signer key or pinging Redis belongs to the
 * modules that use them). The first bad value stops the load with one line
 * naming the variable and the value; secrets are never echoed.
 *
 * An empty variable is treated as unset (the default applies), as twelve-
 * factor deployments expect, except for the listener addresses where empty
 * has a meaning: GATEWAY_ADMIN_HTTP_ADDR and GATEWAY_AUTHENTICATED_GRPC_ADDR
 * empty turn the listener off, GATEWAY_PUBLIC_HTTP_ADDR empty is an error. */
#include "config/config.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "core/common.h"

#define MS_PER_S 1000ull
#define MS_PER_M (60ull * MS_PER_S)
#define MS_PER_H (60ull * MS_PER_M)
#define KIB 1024ull
#define MIB (1024ull * KIB)
#define GIB (1024ull * MIB)

/* ------------------------------------------------------------------ */
/* Parsers */

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

/* Reads decimal digits at *p into *out, advancing *p; GW_ERR on overflow.
 * Returns the number of digits read in *ndig. */
static int read_digits(const char **p, uint64_t *out, size_t *ndig)
{
    uint64_t v = 0;
    size_t n = 0;
    const char *s = *p;
    while (is_digit(*s)) {
        unsigned d = (unsigned)(*s - '0');
        if (v > (UINT64_MAX - d) / 10)
            return GW_ERR;
        v = v * 10 + d;
        s++;
        n++;
    }
    *p = s;
    *out = v;
    *ndig = n;
    return GW_OK;
}

/* A non-empty string of decimal digits and nothing else. */
static int parse_uint(const char *s, uint64_t *out)
{
    size_t n;
    if (!s || !is_digit(*s))
        return GW_ERR;
    if (read_digits(&s, out, &n) != GW_OK || *s)
        return GW_ERR;
    return GW_OK;
}

static int mul_add(uint64_t *acc, uint64_t a, uint64_t b)
{
    if (b && a > UINT64_MAX / b)
        return GW_ERR;
    uint64_t v = a * b;
    if (*acc > UINT64_MAX - v)
        return GW_ERR;
    *acc += v;
    return GW_OK;
}

/* Go's time.ParseDuration subset: one or more <number><unit> with units ms,
 * s, m, h (any order), number with an optional fraction ("1.5s"); or a bare
 * integer meaning seconds. Fractions finer than a millisecond are truncated
 * (digits past the ninth are read but ignored). No sign, no spaces. */
int gw_parse_duration_ms(const char *s, uint64_t *out)
{
    uint64_t total = 0, v;
    if (!s || !*s)
        return GW_ERR;
    if (parse_uint(s, &v) == GW_OK) {
        if (v > UINT64_MAX / MS_PER_S)
            return GW_ERR;
        *out = v * MS_PER_S;
        return GW_OK;
    }
    const char *p = s;
    while (*p) {
        uint64_t ip = 0, fv = 0, fscale = 1;
        size_t nint = 0, nfrac = 0;
        if (read_digits(&p, &ip, &nint) != GW_OK)
            return GW_ERR;
        if (*p == '.') {
            p++;
            while (is_digit(*p)) {
                if (nfrac < 9) {
                    fv = fv * 10 + (uint64_t)(*p - '0');
                    fscale *= 10;
                }
                nfrac++;
                p++;
            }
        }
        if (nint + nfrac == 0)
            return GW_ERR;
        uint64_t unit;
        if (p[0] == 'm' && p[1] == 's') {
            unit = 1;
            p += 2;
        } else if (p[0] == 's') {
            unit = MS_PER_S;
            p++;
        } else if (p[0] == 'm') {
            unit = MS_PER_M;
            p++;
        } else if (p[0] == 'h') {
            unit = MS_PER_H;
            p++;
        } else {
            return GW_ERR;
        }
        /* fv < 1e9 and unit <= 3.6e6: the product fits in 64 bits. */
        if (mul_add(&total, ip, unit) != GW_OK || mul_add(&total, fv * unit / fscale, 1) != GW_OK)
            return GW_ERR;
    }
    *out = total;
    return GW_OK;
}

/* Bare bytes, or an integer followed directly by KB/MB/GB (powers of 1000)
 * or KiB/MiB/GiB (powers of 1024), spelled exactly so. */
int gw_parse_size(const char *s, uint64_t *out)
{
    static const struct {
        const char *unit;
        uint64_t mult;
    } units[] = {
        {"", 1}, {"KB", 1000ull}, {"MB", 1000000ull}, {"GB", 1000000000ull}, {"KiB", KIB}, {"MiB", MIB}, {"GiB", GIB},
    };
    uint64_t v;
    size_t n;
    if (!s || !is_digit(*s))
        return GW_ERR;
    if (read_digits(&s, &v, &n) != GW_OK)
        return GW_ERR;
    for (size_t i = 0; i < GW_ARRAY_LEN(units); i++) {
        if (strcmp(s, units[i].unit) == 0) {
            if (v > UINT64_MAX / units[i].mult)
                return GW_ERR;
            *out = v * units[i].mult;
            return GW_OK;
        }
    }
    return GW_ERR;
}

int gw_parse_bool(const char *s, int *out)
{
    static const char *const yes[] = {"on", "true", "1", "yes"};
    static const char *const no[] = {"off", "false", "0", "no"};
    if (!s)
        return GW_ERR;
    for (size_t i = 0; i < GW_ARRAY_LEN(yes); i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = 1;
            return GW_OK;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = 0;
            return GW_OK;
        }
    }
    return GW_ERR;
}

/* ------------------------------------------------------------------ */
/* Loading */

typedef struct loader {
    gw_config *c;
    const char *(*getenv_fn)(const char *name);
    char *err;
    size_t errcap;
} loader;

static int fail(loader *L, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int fail(loader *L, const char *fmt, ...)
{
    if (L->err && L->errcap) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(L->err, L->errcap, fmt, ap);
        va_end(ap);
    }
    return GW_ERR;
}

/* Quotes v for an error line: printable ASCII as is, '"' and '\\' escaped,
 * other bytes as \xHH, cut after 80 input bytes so the message stays one
 * short line whatever the environment holds. */
static const char *quote(const char *v, char *out, size_t cap)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0, i = 0;
    out[o++] = '"';
    for (; v[i] && i < 80 && o + 8 < cap; i++) {
        unsigned char ch = (unsigned char)v[i];
        if (ch == '"' || ch == '\\') {
            out[o++] = '\\';
            out[o++] = (char)ch;
        } else if (ch < 0x20 || ch >= 0x7f) {
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[ch >> 4];
            out[o++] = hex[ch & 15];
        } else {
            out[o++] = (char)ch;
        }
    }
    out[o++] = '"';
    if (v[i]) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = '\0';
    return out;
}

#define QCAP 400 /* quote() output for 80 input bytes, worst case */

/* The value of name, or NULL when unset or empty. */
static const char *get(loader *L, const char *name)
{
    const char *v = L->getenv_fn(name);
    return v && *v ? v : NULL;
}

static void fmt_ms(uint64_t ms, char *out, size_t cap)
{
    if (ms && ms % MS_PER_H == 0)
        snprintf(out, cap, "%lluh", (unsigned long long)(ms / MS_PER_H));
    else if (ms && ms % MS_PER_M == 0)
        snprintf(out, cap, "%llum", (unsigned long long)(ms / MS_PER_M));
    else if (ms % MS_PER_S == 0)
        snprintf(out, cap, "%llus", (unsigned long long)(ms / MS_PER_S));
    else
        snprintf(out, cap, "%llums", (unsigned long long)ms);
}

static int load_str(loader *L, const char *name, char *dst, size_t cap, int secret)
{
    const char *v = get(L, name);
    if (!v)
        return GW_OK;
    size_t n = strlen(v);
    if (n >= cap) {
        char q[QCAP];
        if (secret)
            return fail(L, "%s: value is too long (%zu bytes, at most %zu)", name, n, cap - 1);
        return fail(L, "%s: %s is too long (%zu bytes, at most %zu)", name, quote(v, q, sizeof q), n, cap - 1);
    }
    memcpy(dst, v, n + 1);
    return GW_OK;
}

/* Duration in ms; min_ms is the smallest accepted value. */
static int load_duration(loader *L, const char *name, uint64_t *dst, uint64_t min_ms)
{
    const char *v = get(L, name);
    char q[QCAP];
    uint64_t ms;
    if (!v)
        return GW_OK;
    if (gw_parse_duration_ms(v, &ms) != GW_OK)
        return fail(L, "%s: cannot parse %s as a duration (e.g. 250ms, 25s, 5m, 1h30m)", name, quote(v, q, sizeof q));
    if (ms < min_ms)
        return fail(L, "%s: %s must be greater than 0", name, quote(v, q, sizeof q));
    *dst = ms;
    return GW_OK;
}

static int load_size(loader *L, const char *name, uint64_t *dst, uint64_t min, uint64_t max, const char *range)
{
    const char *v = get(L, name);
    char q[QCAP];
    uint64_t n;
    if (!v)
        return GW_OK;
    if (gw_parse_size(v, &n) != GW_OK)
        return fail(L, "%s: cannot parse %s as a size (e.g. 65536, 64KiB, 1MiB, 10KB)", name, quote(v, q, sizeof q));
    if (n < min || n > max)
        return fail(L, "%s: %s is out of range (%s)", name, quote(v, q, sizeof q), range);
    *dst = n;
    return GW_OK;
}

static int load_uint(loader *L, const char *name, uint64_t *dst, uint64_t min, uint64_t max)
{
    const char *v = get(L, name);
    char q[QCAP];
    uint64_t n;
    if (!v)
        return GW_OK;
    if (parse_uint(v, &n) != GW_OK)
        return fail(L, "%s: cannot parse %s as a non-negative integer", name, quote(v, q, sizeof q));
    if (n < min || n > max)
        return fail(L, "%s: %s is out of range (%llu..%llu)", name, quote(v, q, sizeof q), (unsigned long long)min,
                    (unsigned long long)max);
    *dst = n;
    return GW_OK;
}

/* Listener address. empty_ok: an empty value turns the listener off. */
static int load_listen(loader *L, const char *name, gw_addr *dst, int empty_ok)
{
    const char *v = L->getenv_fn(name);
    char q[QCAP];
    if (!v)
        return GW_OK;
    if (!*v) {
        if (!empty_ok)
            return fail(L, "%s: \"\" must not be empty (this listener cannot be turned off)", name);
        memset(dst, 0, sizeof *dst);
        return GW_OK;
    }
    if (gw_parse_addr(v, dst) != GW_OK)
        return fail(L, "%s: cannot parse %s as an address (HOST:PORT, :PORT, [V6]:PORT or unix:/path)", name,
                    quote(v, q, sizeof q));
    return GW_OK;
}

static int check_removed(loader *L, const char *name)
{
    const char *v = get(L, name);
    char q[QCAP];
    if (!v)
        return GW_OK;
    return fail(L,
                "%s=%s: this variable was removed (Redis traffic is password-protected with TLS off by policy); "
                "unset it",
                name, quote(v, q, sizeof q));
}

/* GATEWAY_SHUTDOWN_TIMEOUT and GATEWAY_DRAIN_DELAY: the delay takes at most
 * half the budget, so the closes and relays keep the other half. A delay set
 * past that is refused; the default delay is cut to half a short budget. */
static int load_drain(loader *L)
{
    gw_config *c = L->c;
    if (load_duration(L, "GATEWAY_SHUTDOWN_TIMEOUT", &c->shutdown_timeout_ms, 0) ||
        load_duration(L, "GATEWAY_DRAIN_DELAY", &c->drain_delay_ms, 0))
        return GW_ERR;
    if (c->drain_delay_ms > c->shutdown_timeout_ms / 2) {
        const char *v = get(L, "GATEWAY_DRAIN_DELAY");
        if (!v) {
            c->drain_delay_ms = c->shutdown_timeout_ms / 2;
            return GW_OK;
        }
        char q[QCAP], b[32];
        fmt_ms(c->shutdown_timeout_ms, b, sizeof b);
        return fail(L, "GATEWAY_DRAIN_DELAY: %s is more than half of GATEWAY_SHUTDOWN_TIMEOUT (%s)",
                    quote(v, q, sizeof q), b);
    }
    return GW_OK;
}

static void set_defaults(gw_config *c)
{
    memset(c, 0, sizeof *c);
    gw_parse_addr(":8080", &c->public_addr);
    gw_parse_addr(":9090", &c->grpc_addr);
    /* admin_addr stays zeroed: off */
    snprintf(c->redis_key_prefix, sizeof c->redis_key_prefix, "wsgate:");
    snprintf(c->session_events_stream, sizeof c->session_events_stream, "wsgate:session-events");
    snprintf(c->client_events_stream, sizeof c->client_events_stream, "wsgate:client-events");
    c->redis_db = 0;
    c->shutdown_timeout_ms = 30 * MS_PER_S;
    c->drain_delay_ms = 5 * MS_PER_S;
    c->ws_ping_interval_ms = 25 * MS_PER_S;
    c->ws_pong_timeout_ms = 50 * MS_PER_S;
    c->store_timeout_ms = 2 * MS_PER_S;
    c->ws_max_message_bytes = MIB;
    c->push_queue_limit = 1024;
    c->push_max_streams_per_session = 16;
    c->push_history_window_ms = 5 * MS_PER_M;
    c->log_format = GW_LOG_FORMAT_JSON;
    c->log_level = GW_LOG_INFO;
    snprintf(c->service_name, sizeof c->service_name, "wsgate");
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    c->workers = n < 1 ? 1 : n > 256 ? 256 : (int)n;
    c->max_connections = 100000;
    c->admin_max_connections = 128;
    c->handshake_timeout_ms = 10 * MS_PER_S;
    c->http_idle_timeout_ms = 60 * MS_PER_S;
    c->echo_idle_timeout_ms = 90 * MS_PER_S;
    c->max_header_bytes = 16 * KIB;
    c->max_request_line = 8 * KIB;
    c->body_timeout_ms = 60 * MS_PER_S;
    c->body_min_rate = KIB;
    c->ws_deflate = 1;
    c->ws_max_inflate_ratio = 100;
}

static int load_all(loader *L)
{
    gw_config *c = L->c;
    const char *v;
    char q[QCAP];
    uint64_t u;

    if (check_removed(L, "GATEWAY_REDIS_TLS_ENABLED") || check_removed(L, "GATEWAY_REDIS_USERNAME"))
        return GW_ERR;

    /* Listeners */
    if (load_listen(L, "GATEWAY_PUBLIC_HTTP_ADDR", &c->public_addr, 0) ||
        load_listen(L, "GATEWAY_ADMIN_HTTP_ADDR", &c->admin_addr, 1) ||
        load_listen(L, "GATEWAY_AUTHENTICATED_GRPC_ADDR", &c->grpc_addr, 1))
        return GW_ERR;
    c->grpc_addr_explicit = L->getenv_fn("GATEWAY_AUTHENTICATED_GRPC_ADDR") != NULL;
    if (load_str(L, "GATEWAY_ADMIN_TOKEN", c->admin_token, sizeof c->admin_token, 1))
        return GW_ERR;
    /* Without a token the admin write endpoints (the token mint) are open to
     * whoever reaches the listener: only a loopback or unix-socket listener
     * may go without one. */
    if (c->admin_addr.set && !c->admin_token[0] && !gw_addr_is_loopback(&c->admin_addr)) {
        char a[300];
        gw_addr_format(&c->admin_addr, a, sizeof a);
        return fail(L,
                    "GATEWAY_ADMIN_TOKEN: required when GATEWAY_ADMIN_HTTP_ADDR (%s) is not a loopback address "
                    "or a unix socket",
                    quote(a, q, sizeof q));
    }

    /* TLS */
    if (load_str(L, "GATEWAY_TLS_CERT_PATH", c->tls_cert_path, sizeof c->tls_cert_path, 0) ||
        load_str(L, "GATEWAY_TLS_KEY_PATH", c->tls_key_path, sizeof c->tls_key_path, 0))
        return GW_ERR;
    if (!c->tls_cert_path[0] != !c->tls_key_path[0]) {
        const char *have = c->tls_cert_path[0] ? "GATEWAY_TLS_CERT_PATH" : "GATEWAY_TLS_KEY_PATH";
        const char *miss = c->tls_cert_path[0] ? "GATEWAY_TLS_KEY_PATH" : "GATEWAY_TLS_CERT_PATH";
        return fail(L, "%s: must be set together with %s (only %s=%s is set)", miss, have, have,
                    quote(c->tls_cert_path[0] ? c->tls_cert_path : c->tls_key_path, q, sizeof q));
    }
    if (load_str(L, "GATEWAY_ROUTES_FILE", c->routes_file, sizeof c->routes_file, 0))
        return GW_ERR;
    if (load_str(L, "GATEWAY_UPGRADE_SOCKET", c->upgrade_socket, sizeof c->upgrade_socket, 0))
        return GW_ERR;

    /* Redis */
    if (load_str(L, "GATEWAY_REDIS_MASTER_ADDR", c->redis_master_addr, sizeof c->redis_master_addr, 0))
        return GW_ERR;
    if (c->redis_master_addr[0]) {
        gw_addr a;
        if (gw_parse_addr(c->redis_master_addr, &a) != GW_OK)
            return fail(L,
                        "GATEWAY_REDIS_MASTER_ADDR: cannot parse %s as an address (HOST:PORT, [V6]:PORT or "
                        "unix:/path)",
                        quote(c->redis_master_addr, q, sizeof q));
    }
    if (load_str(L, "GATEWAY_REDIS_PASSWORD", c->redis_password, sizeof c->redis_password, 1))
        return GW_ERR;
    u = (uint64_t)c->redis_db;
    if (load_uint(L, "GATEWAY_REDIS_DB", &u, 0, 2147483647))
        return GW_ERR;
    c->redis_db = (int)u;
    if (load_str(L, "GATEWAY_REDIS_KEY_PREFIX", c->redis_key_prefix, sizeof c->redis_key_prefix, 0) ||
        load_str(L, "GATEWAY_REDIS_REPLICA_ADDRS", c->redis_replica_addrs, sizeof c->redis_replica_addrs, 0) ||
        load_str(L, "GATEWAY_SESSION_EVENTS_REDIS_STREAM", c->session_events_stream, sizeof c->session_events_stream,
                 0) ||
        load_str(L, "GATEWAY_CLIENT_EVENTS_REDIS_STREAM", c->client_events_stream, sizeof c->client_events_stream, 0) ||
        load_str(L, "GATEWAY_RESPONSE_SIGNER_PRIVATE_KEY_PEM_PATH", c->signer_key_path, sizeof c->signer_key_path, 0))
        return GW_ERR;

    /* Timing and limits */
    if (load_drain(L) || load_duration(L, "GATEWAY_WS_PING_INTERVAL", &c->ws_ping_interval_ms, 0) ||
        load_duration(L, "GATEWAY_WS_PONG_TIMEOUT", &c->ws_pong_timeout_ms, 1) ||
        load_duration(L, "GATEWAY_STORE_TIMEOUT", &c->store_timeout_ms, 1))
        return GW_ERR;
    if (c->store_timeout_ms > 3600 * MS_PER_S) /* deadlines are now + this (+ a block): never wraps */
        return fail(L, "GATEWAY_STORE_TIMEOUT: %s must be at most 1h", quote(get(L, "GATEWAY_STORE_TIMEOUT"), q, sizeof q));
    if (c->ws_ping_interval_ms && c->ws_pong_timeout_ms < c->ws_ping_interval_ms) {
        char a[32], b[32];
        fmt_ms(c->ws_pong_timeout_ms, a, sizeof a);
        fmt_ms(c->ws_ping_interval_ms, b, sizeof b);
        return fail(L, "GATEWAY_WS_PONG_TIMEOUT: \"%s\" is shorter than GATEWAY_WS_PING_INTERVAL (%s)", a, b);
    }
    if (load_size(L, "GATEWAY_WS_MAX_MESSAGE_BYTES", &c->ws_max_message_bytes, 125, GIB, "125 bytes to 1GiB") ||
        load_uint(L, "GATEWAY_PUSH_QUEUE_LIMIT", &c->push_queue_limit, 1, UINT32_MAX) ||
        load_uint(L, "GATEWAY_PUSH_MAX_STREAMS_PER_SESSION", &c->push_max_streams_per_session, 1, 100000) ||
        load_duration(L, "GATEWAY_PUSH_HISTORY_WINDOW", &c->push_history_window_ms, 0))
        return GW_ERR;

    /* Logs */
    if ((v = get(L, "GATEWAY_LOG_FORMAT")) && gw_log_parse_format(v, &c->log_format) != GW_OK)
        return fail(L, "GATEWAY_LOG_FORMAT: unknown format %s (json or text)", quote(v, q, sizeof q));
    if ((v = get(L, "GATEWAY_LOG_LEVEL")) && gw_log_parse_level(v, &c->log_level) != GW_OK)
        return fail(L, "GATEWAY_LOG_LEVEL: unknown level %s (debug, info, warn or error)", quote(v, q, sizeof q));
    if (load_str(L, "GATEWAY_SERVICE_NAME", c->service_name, sizeof c->service_name, 0))
        return GW_ERR;
    /* A log label value: letters, digits, '.', '_' and '-' only, so that it
     * needs no quoting in text logs and matches as-is in LogQL selectors. */
    if (strspn(c->service_name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") !=
        strlen(c->service_name))
        return fail(L, "GATEWAY_SERVICE_NAME: %s may hold only letters, digits, '.', '_' and '-'",
                    quote(c->service_name, q, sizeof q));

    if (load_str(L, "GATEWAY_PUBLIC_WS_BASE_URL", c->public_ws_base_url, sizeof c->public_ws_base_url, 0))
        return GW_ERR;
    if (c->public_ws_base_url[0] && strncmp(c->public_ws_base_url, "ws://", 5) != 0 &&
        strncmp(c->public_ws_base_url, "wss://", 6) != 0)
        return fail(L, "GATEWAY_PUBLIC_WS_BASE_URL: %s must start with ws:// or wss://",
                    quote(c->public_ws_base_url, q, sizeof q));
    if (load_str(L, "GATEWAY_AGENT_SECRET", c->agent_secret, sizeof c->agent_secret, 1))
        return GW_ERR;

    /* Engine knobs */
    u = (uint64_t)c->workers;
    if (load_uint(L, "GATEWAY_WORKERS", &u, 1, 256))
        return GW_ERR;
    c->workers = (int)u;
    if (load_uint(L, "GATEWAY_MAX_CONNECTIONS", &c->max_connections, 1, 100000000) ||
        load_uint(L, "GATEWAY_ADMIN_MAX_CONNECTIONS", &c->admin_max_connections, 1, 1000000) ||
        load_duration(L, "GATEWAY_HANDSHAKE_TIMEOUT", &c->handshake_timeout_ms, 1) ||
        load_duration(L, "GATEWAY_HTTP_IDLE_TIMEOUT", &c->http_idle_timeout_ms, 1) ||
        load_duration(L, "GATEWAY_ECHO_IDLE_TIMEOUT", &c->echo_idle_timeout_ms, 1) ||
        load_size(L, "GATEWAY_MAX_HEADER_BYTES", &c->max_header_bytes, 256, 16 * MIB, "256 bytes to 16MiB") ||
        load_size(L, "GATEWAY_MAX_REQUEST_LINE_BYTES", &c->max_request_line, 64, MIB, "64 bytes to 1MiB") ||
        load_duration(L, "GATEWAY_BODY_TIMEOUT", &c->body_timeout_ms, 1) ||
        load_size(L, "GATEWAY_BODY_MIN_RATE", &c->body_min_rate, 0, 1024 * MIB, "0 to 1GiB per second"))
        return GW_ERR;
    if ((v = get(L, "GATEWAY_WS_DEFLATE")) && gw_parse_bool(v, &c->ws_deflate) != GW_OK)
        return fail(L, "GATEWAY_WS_DEFLATE: cannot parse %s as a boolean (on/off, true/false, yes/no, 1/0)",
                    quote(v, q, sizeof q));
    if (load_uint(L, "GATEWAY_WS_MAX_INFLATE_RATIO", &c->ws_max_inflate_ratio, 0, 1000000))
        return GW_ERR;
    return GW_OK;
}

int gw_config_load(gw_config *c, const char *(*getenv_fn)(const char *name), char *err, size_t errcap)
{
    loader L = {c, getenv_fn, err, errcap};
    if (err && errcap)
        err[0] = '\0';
    set_defaults(c);
    return load_all(&L) == GW_OK ? GW_OK : GW_ERR;
}

/* ------------------------------------------------------------------ */

/* Variables of features not built yet (keep in step with gw_config_help):
 * none at the moment; the list ends with its NULL entry. */
static const struct {
    const char *name, *feature;
} unbuilt[] = {
    {NULL, NULL},
};

size_t gw_config_unbuilt(const char *(*getenv_fn)(const char *name),
                         void (*fn)(const char *name, const char *feature, void *arg), void *arg)
{
    size_t n = 0;
    for (size_t i = 0; unbuilt[i].name; i++) {
        const char *v = getenv_fn(unbuilt[i].name);
        if (v && *v) {
            n++;
            if (fn)
                fn(unbuilt[i].name, unbuilt[i].feature, arg);
        }
    }
    return n;
}

const char gw_config_help[] =
    "Environment variables (an empty value means the default unless noted):\n"
    "\n"
    "  variable                                      default                 meaning\n"
    "  GATEWAY_PUBLIC_HTTP_ADDR                      :8080                   public listener: WebSockets, /healthz,\n"
    "                                                                        /readyz, proxied HTTP (cannot be empty)\n"
    "  GATEWAY_ADMIN_HTTP_ADDR                       (off)                   admin listener: /metrics, health,\n"
    "                                                                        the terminal token mint, sessions\n"
    "                                                                        (a unix:/path listener is mode 0600;\n"
    "                                                                        only a stale socket there is replaced)\n"
    "  GATEWAY_ADMIN_TOKEN                           (empty)                 admin write APIs need\n"
    "                                                                        Authorization: Bearer <token>;\n"
    "                                                                        required unless the admin listener\n"
    "                                                                        is loopback or a unix socket\n"
    "  GATEWAY_TLS_CERT_PATH                         (empty)                 PEM certificate; with the key, the\n"
    "                                                                        public listener speaks TLS\n"
    "  GATEWAY_TLS_KEY_PATH                          (empty)                 PEM private key (set both or neither)\n"
    "  GATEWAY_ROUTES_FILE                           (empty)                 JSON route table, reloaded on SIGHUP\n"
    "  GATEWAY_UPGRADE_SOCKET                        (empty)                 unix socket path: a new `wsgate serve`\n"
    "                                                                        with the same setting takes the\n"
    "                                                                        listeners of the running one over it\n"
    "                                                                        (in-place upgrade; the old one drains)\n"
    "  GATEWAY_SHUTDOWN_TIMEOUT                      30s                     drain budget after SIGTERM/SIGINT\n"
    "  GATEWAY_DRAIN_DELAY                           5s                      after SIGTERM, /readyz answers 503\n"
    "                                                                        while the listeners keep serving this\n"
    "                                                                        long; then they close and WebSockets\n"
    "                                                                        get 1001 spread over half the rest\n"
    "                                                                        (at most half the timeout; the\n"
    "                                                                        default is cut to that)\n"
    "  GATEWAY_WS_PING_INTERVAL                      25s                     WebSocket ping interval; 0 disables\n"
    "  GATEWAY_WS_PONG_TIMEOUT                       50s                     close when no pong by then\n"
    "                                                                        (not shorter than the ping interval)\n"
    "  GATEWAY_STORE_TIMEOUT                         2s                      a request waits this long for the store (503;\n"
    "                                                                        at most 1h)\n"
    "  GATEWAY_REDIS_MASTER_ADDR                     (empty: embedded)       Redis HOST:PORT (or unix:/path): the\n"
    "                                                                        state backend many processes share;\n"
    "                                                                        must answer AUTH/SELECT/PING at start\n"
    "                                                                        (within GATEWAY_STORE_TIMEOUT) or the\n"
    "                                                                        start fails (never a silent fallback)\n"
    "  GATEWAY_REDIS_PASSWORD                        (empty)                 AUTH password (no TLS, by policy)\n"
    "  GATEWAY_REDIS_DB                              0                       SELECTed database, 0 to 2147483647\n"
    "  GATEWAY_REDIS_KEY_PREFIX                      wsgate:                 prefix of every key wsgate writes\n"
    "  GATEWAY_REDIS_REPLICA_ADDRS                   (empty)                 accepted and reserved (unused)\n"
    "  GATEWAY_SESSION_EVENTS_REDIS_STREAM           wsgate:session-events   session snapshots stream, read in full\n"
    "                                                                        by every process\n"
    "  GATEWAY_CLIENT_EVENTS_REDIS_STREAM            wsgate:client-events    client events stream (push): read by\n"
    "                                                                        every process from the history window\n"
    "  GATEWAY_PUSH_QUEUE_LIMIT                      1024                    events queued unsent per /ws/events\n"
    "                                                                        subscriber; past it 1013 (overflow)\n"
    "  GATEWAY_PUSH_MAX_STREAMS_PER_SESSION          16                      push streams one device session may\n"
    "                                                                        hold open per process; past it 429\n"
    "  GATEWAY_PUSH_HISTORY_WINDOW                   5m                      events kept for resume (?cursor=,\n"
    "                                                                        Last-Event-ID); older cursors get\n"
    "                                                                        gateway.resync_required\n"
    "  GATEWAY_WS_MAX_MESSAGE_BYTES                  1MiB                    larger messages close with 1009\n"
    "                                                                        (125 bytes to 1GiB)\n"
    "  GATEWAY_LOG_FORMAT                            json                    json or text\n"
    "  GATEWAY_LOG_LEVEL                             info                    debug, info, warn or error\n"
    "  GATEWAY_SERVICE_NAME                          wsgate                  the `service` field of every log line\n"
    "                                                                        (letters, digits, . _ -; up to 63)\n"
    "  GATEWAY_PUBLIC_WS_BASE_URL                    (empty: same origin)    ws:// or wss:// base for served pages\n"
    "  GATEWAY_AGENT_SECRET                          (empty)                 shared with `wsgate agent`; required\n"
    "                                                                        for an agent on TCP (without it an\n"
    "                                                                        agent listens on a unix socket only)\n"
    "  GATEWAY_WORKERS                               (online CPUs)           worker threads, 1 to 256\n"
    "  GATEWAY_MAX_CONNECTIONS                       100000                  public connections per process\n"
    "  GATEWAY_ADMIN_MAX_CONNECTIONS                 128                     admin connections per process (a\n"
    "                                                                        limit of their own)\n"
    "  GATEWAY_HANDSHAKE_TIMEOUT                     10s                     first request head (and TLS) due this\n"
    "                                                                        long after accept, a silent connection\n"
    "                                                                        is closed; later heads as well\n"
    "  GATEWAY_HTTP_IDLE_TIMEOUT                     60s                     keep-alive idle limit\n"
    "  GATEWAY_ECHO_IDLE_TIMEOUT                     90s                     /probe/ws idle limit\n"
    "  GATEWAY_MAX_HEADER_BYTES                      16KiB                   larger request heads get 431\n"
    "  GATEWAY_MAX_REQUEST_LINE_BYTES                8KiB                    longer request lines get 414\n"
    "  GATEWAY_BODY_TIMEOUT                          60s                     a proxied request body must arrive in\n"
    "                                                                        this, plus 1s per GATEWAY_BODY_MIN_RATE\n"
    "                                                                        bytes received (else 408)\n"
    "  GATEWAY_BODY_MIN_RATE                         1KiB                    bytes per second that extend the body\n"
    "                                                                        deadline; 0: the deadline is fixed\n"
    "  GATEWAY_WS_DEFLATE                            on                      permessage-deflate (on/off)\n"
    "  GATEWAY_WS_MAX_INFLATE_RATIO                  100                     inflated/compressed bytes per connection\n"
    "                                                                        (+1MiB); past it 1008; 0 disables\n"
    "  GATEWAY_AUTHENTICATED_GRPC_ADDR               :9090                   gRPC listener (HTTP/2: h2c, or TLS with\n"
    "                                                                        ALPN h2 when the TLS pair is set):\n"
    "                                                                        ExecuteCommand, SubscribeEvents, health;\n"
    "                                                                        empty turns gRPC off\n"
    "  GATEWAY_RESPONSE_SIGNER_PRIVATE_KEY_PEM_PATH  (empty)                 Ed25519 PKCS#8 PEM signing every\n"
    "                                                                        ExecuteCommand response; required while\n"
    "                                                                        gRPC is on (`wsgate keygen --out P`);\n"
    "                                                                        missing or unreadable: start fails\n"
    "\n"
    "Testing only (never set in production; setting it logs a warning at start):\n"
    "\n"
    "  GATEWAY_TEST_STORE_DELAY                      0                       the embedded store answers this late,\n"
    "                                                                        as a slow remote store would\n"
    "  GATEWAY_TEST_PRESENCE_TTL                     60s                     push presence entries expire this soon\n"
    "                                                                        (refreshed every third of it)\n"
    "\n"
    "Removed (refused when set): GATEWAY_REDIS_TLS_ENABLED, GATEWAY_REDIS_USERNAME.\n"
    "Formats: durations 250ms, 25s, 5m, 1h, 1h30m, 1.5s (a bare integer means seconds);\n"
    "sizes 65536, 64KiB, 1MiB, 1GiB (powers of 1024), 10KB, 1MB, 1GB (powers of 1000);\n"
    "addresses HOST:PORT, :PORT (all interfaces), [V6]:PORT, unix:/path;\n"
    "booleans on/off, true/false, yes/no, 1/0.\n";

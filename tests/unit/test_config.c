/* test_config.c: configuration from a table-driven fake environment, and the
 * duration/size/address/bool parsers. */
#include "config/config.h"

#include <unistd.h>

#include "core/common.h"
#include "test.h"

/* ------------------------------------------------------------------ */
/* Fake environment */

typedef struct env_kv {
    const char *name, *value;
} env_kv;

static const env_kv *env_tab;
static size_t env_n;

static const char *fake_getenv(const char *name)
{
    for (size_t i = 0; i < env_n; i++)
        if (strcmp(env_tab[i].name, name) == 0)
            return env_tab[i].value;
    return NULL;
}

static gw_config cfg; /* large: keep it off the stack */
static char err[512];

static int load(const env_kv *tab, size_t n)
{
    env_tab = tab;
    env_n = n;
    memset(err, 'X', sizeof err);
    err[sizeof err - 1] = '\0';
    return gw_config_load(&cfg, fake_getenv, err, sizeof err);
}

/* Loads a single NAME=VALUE over the defaults. */
static int load1(const char *name, const char *value)
{
    static env_kv one[1];
    one[0].name = name;
    one[0].value = value;
    return load(one, 1);
}

/* ------------------------------------------------------------------ */

static void test_defaults(void)
{
    is_int(load(NULL, 0), GW_OK, "empty environment loads");
    is_str(err, "", "no error text");
    char a[128];
    gw_addr_format(&cfg.public_addr, a, sizeof a);
    is_str(a, ":8080", "public :8080");
    ok(cfg.public_addr.set && !cfg.public_addr.is_unix && cfg.public_addr.host[0] == '\0' &&
           cfg.public_addr.port == 8080,
       "public addr fields");
    is_int(cfg.admin_addr.set, 0, "admin off");
    gw_addr_format(&cfg.admin_addr, a, sizeof a);
    is_str(a, "off", "admin formats as off");
    ok(cfg.grpc_addr.set && cfg.grpc_addr.port == 9090 && cfg.grpc_addr.host[0] == '\0', "grpc :9090");
    is_str(cfg.admin_token, "", "admin token empty");
    is_str(cfg.tls_cert_path, "", "cert empty");
    is_str(cfg.tls_key_path, "", "key empty");
    is_str(cfg.routes_file, "", "routes empty");
    is_str(cfg.redis_master_addr, "", "redis master empty (embedded backend)");
    is_str(cfg.redis_password, "", "redis password empty");
    is_int(cfg.redis_db, 0, "redis db 0");
    is_str(cfg.redis_key_prefix, "wsgate:", "redis key prefix");
    is_str(cfg.redis_replica_addrs, "", "replicas empty");
    is_str(cfg.session_events_stream, "wsgate:session-events", "session stream");
    is_str(cfg.client_events_stream, "wsgate:client-events", "client stream");
    is_str(cfg.signer_key_path, "", "signer key empty");
    is_int(cfg.shutdown_timeout_ms, 30000, "shutdown 30s");
    is_int(cfg.drain_delay_ms, 5000, "drain delay 5s");
    is_int(cfg.ws_ping_interval_ms, 25000, "ping 25s");
    is_int(cfg.ws_pong_timeout_ms, 50000, "pong 50s");
    is_int(cfg.ws_max_message_bytes, 1048576, "max message 1MiB");
    is_int(cfg.push_queue_limit, 1024, "push queue 1024");
    is_int(cfg.push_history_window_ms, 300000, "history 5m");
    is_int(cfg.log_format, GW_LOG_FORMAT_JSON, "log json");
    is_int(cfg.log_level, GW_LOG_INFO, "log info");
    is_str(cfg.public_ws_base_url, "", "base url empty");
    is_str(cfg.agent_secret, "", "agent secret empty");
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    is_int(cfg.workers, cpus < 1 ? 1 : cpus > 256 ? 256 : cpus, "workers = online CPUs");
    is_int(cfg.max_connections, 100000, "max connections");
    is_int(cfg.admin_max_connections, 128, "admin max connections");
    is_int(cfg.handshake_timeout_ms, 10000, "handshake 10s");
    is_int(cfg.http_idle_timeout_ms, 60000, "http idle 60s");
    is_int(cfg.echo_idle_timeout_ms, 90000, "echo idle 90s");
    is_int(cfg.max_header_bytes, 16384, "max header 16KiB");
    is_int(cfg.max_request_line, 8192, "max request line 8KiB");
    is_int(cfg.body_timeout_ms, 60000, "body timeout 60s");
    is_int(cfg.body_min_rate, 1024, "body min rate 1KiB/s");
    is_int(cfg.ws_deflate, 1, "deflate on");
}

static void test_every_variable(void)
{
    static const env_kv env[] = {
        {"GATEWAY_PUBLIC_HTTP_ADDR", "127.0.0.1:18080"},
        {"GATEWAY_ADMIN_HTTP_ADDR", "[::1]:19000"},
        {"GATEWAY_AUTHENTICATED_GRPC_ADDR", "unix:/run/wsgate/grpc.sock"},
        {"GATEWAY_ADMIN_TOKEN", "s3cret"},
        {"GATEWAY_TLS_CERT_PATH", "/etc/tls/cert.pem"},
        {"GATEWAY_TLS_KEY_PATH", "/etc/tls/key.pem"},
        {"GATEWAY_ROUTES_FILE", "/etc/wsgate/routes.json"},
        {"GATEWAY_REDIS_MASTER_ADDR", "redis.internal:6380"},
        {"GATEWAY_REDIS_PASSWORD", "pw"},
        {"GATEWAY_REDIS_DB", "3"},
        {"GATEWAY_REDIS_KEY_PREFIX", "gw:"},
        {"GATEWAY_REDIS_REPLICA_ADDRS", "r1:6379,r2:6379"},
        {"GATEWAY_SESSION_EVENTS_REDIS_STREAM", "s-stream"},
        {"GATEWAY_CLIENT_EVENTS_REDIS_STREAM", "c-stream"},
        {"GATEWAY_RESPONSE_SIGNER_PRIVATE_KEY_PEM_PATH", "/etc/wsgate/signer.pem"},
        {"GATEWAY_SHUTDOWN_TIMEOUT", "1m30s"},
        {"GATEWAY_DRAIN_DELAY", "12s"},
        {"GATEWAY_WS_PING_INTERVAL", "10s"},
        {"GATEWAY_WS_PONG_TIMEOUT", "20s"},
        {"GATEWAY_WS_MAX_MESSAGE_BYTES", "64KiB"},
        {"GATEWAY_PUSH_QUEUE_LIMIT", "77"},
        {"GATEWAY_PUSH_HISTORY_WINDOW", "1h"},
        {"GATEWAY_LOG_FORMAT", "text"},
        {"GATEWAY_LOG_LEVEL", "debug"},
        {"GATEWAY_PUBLIC_WS_BASE_URL", "wss://example.com/base"},
        {"GATEWAY_AGENT_SECRET", "agent-secret"},
        {"GATEWAY_WORKERS", "3"},
        {"GATEWAY_MAX_CONNECTIONS", "5000"},
        {"GATEWAY_ADMIN_MAX_CONNECTIONS", "7"},
        {"GATEWAY_HANDSHAKE_TIMEOUT", "2500ms"},
        {"GATEWAY_HTTP_IDLE_TIMEOUT", "15"},
        {"GATEWAY_ECHO_IDLE_TIMEOUT", "1.5s"},
        {"GATEWAY_MAX_HEADER_BYTES", "32KB"},
        {"GATEWAY_MAX_REQUEST_LINE_BYTES", "4096"},
        {"GATEWAY_BODY_TIMEOUT", "2m"},
        {"GATEWAY_BODY_MIN_RATE", "0"},
        {"GATEWAY_WS_DEFLATE", "off"},
        {"GATEWAY_REDIS_TLS_ENABLED", ""}, /* removed, but empty is tolerated */
        {"GATEWAY_REDIS_USERNAME", ""},
    };
    is_int(load(env, GW_ARRAY_LEN(env)), GW_OK, "full environment loads: %.150s", err);
    char a[128];
    gw_addr_format(&cfg.public_addr, a, sizeof a);
    is_str(a, "127.0.0.1:18080", "public addr");
    gw_addr_format(&cfg.admin_addr, a, sizeof a);
    is_str(a, "[::1]:19000", "admin addr");
    is_str(cfg.admin_addr.host, "::1", "v6 host without brackets");
    ok(cfg.grpc_addr.set && cfg.grpc_addr.is_unix, "grpc unix");
    is_str(cfg.grpc_addr.path, "/run/wsgate/grpc.sock", "grpc path");
    is_str(cfg.admin_token, "s3cret", "admin token");
    is_str(cfg.tls_cert_path, "/etc/tls/cert.pem", "cert");
    is_str(cfg.tls_key_path, "/etc/tls/key.pem", "key");
    is_str(cfg.routes_file, "/etc/wsgate/routes.json", "routes");
    is_str(cfg.redis_master_addr, "redis.internal:6380", "redis master");
    is_str(cfg.redis_password, "pw", "redis password");
    is_int(cfg.redis_db, 3, "redis db");
    is_str(cfg.redis_key_prefix, "gw:", "prefix");
    is_str(cfg.redis_replica_addrs, "r1:6379,r2:6379", "replicas");
    is_str(cfg.session_events_stream, "s-stream", "session stream");
    is_str(cfg.client_events_stream, "c-stream", "client stream");
    is_str(cfg.signer_key_path, "/etc/wsgate/signer.pem", "signer");
    is_int(cfg.shutdown_timeout_ms, 90000, "shutdown");
    is_int(cfg.drain_delay_ms, 12000, "drain delay");
    is_int(cfg.ws_ping_interval_ms, 10000, "ping");
    is_int(cfg.ws_pong_timeout_ms, 20000, "pong");
    is_int(cfg.ws_max_message_bytes, 65536, "max message");
    is_int(cfg.push_queue_limit, 77, "queue limit");
    is_int(cfg.push_history_window_ms, 3600000, "history");
    is_int(cfg.log_format, GW_LOG_FORMAT_TEXT, "log format");
    is_int(cfg.log_level, GW_LOG_DEBUG, "log level");
    is_str(cfg.public_ws_base_url, "wss://example.com/base", "base url");
    is_str(cfg.agent_secret, "agent-secret", "agent secret");
    is_int(cfg.workers, 3, "workers");
    is_int(cfg.max_connections, 5000, "max connections");
    is_int(cfg.admin_max_connections, 7, "admin max connections");
    is_int(cfg.handshake_timeout_ms, 2500, "handshake");
    is_int(cfg.http_idle_timeout_ms, 15000, "http idle (bare seconds)");
    is_int(cfg.echo_idle_timeout_ms, 1500, "echo idle");
    is_int(cfg.max_header_bytes, 32000, "max header");
    is_int(cfg.max_request_line, 4096, "max request line");
    is_int(cfg.body_timeout_ms, 120000, "body timeout");
    is_int(cfg.body_min_rate, 0, "body min rate 0: a fixed deadline");
    is_int(cfg.ws_deflate, 0, "deflate off");
}

static void test_empty_values(void)
{
    is_int(load1("GATEWAY_PUBLIC_HTTP_ADDR", ""), GW_ERR, "empty public addr refused");
    is_str(err, "GATEWAY_PUBLIC_HTTP_ADDR: \"\" must not be empty (this listener cannot be turned off)",
           "public empty message");
    is_int(load1("GATEWAY_ADMIN_HTTP_ADDR", ""), GW_OK, "empty admin ok");
    is_int(cfg.admin_addr.set, 0, "admin off");
    is_int(load1("GATEWAY_AUTHENTICATED_GRPC_ADDR", ""), GW_OK, "empty grpc ok");
    is_int(cfg.grpc_addr.set, 0, "grpc off");
    /* Everything else: empty means the default. */
    static const char *const dflt[] = {
        "GATEWAY_SHUTDOWN_TIMEOUT",
        "GATEWAY_DRAIN_DELAY",
        "GATEWAY_WS_PING_INTERVAL",
        "GATEWAY_WS_MAX_MESSAGE_BYTES",
        "GATEWAY_REDIS_KEY_PREFIX",
        "GATEWAY_LOG_LEVEL",
        "GATEWAY_WORKERS",
        "GATEWAY_WS_DEFLATE",
        "GATEWAY_MAX_REQUEST_LINE_BYTES",
        "GATEWAY_REDIS_DB",
        "GATEWAY_PUSH_QUEUE_LIMIT",
        "GATEWAY_SESSION_EVENTS_REDIS_STREAM",
    };
    for (size_t i = 0; i < GW_ARRAY_LEN(dflt); i++)
        is_int(load1(dflt[i], ""), GW_OK, "%s empty -> default", dflt[i]);
    load1("GATEWAY_REDIS_KEY_PREFIX", "");
    is_str(cfg.redis_key_prefix, "wsgate:", "empty prefix keeps default");
    load1("GATEWAY_WS_DEFLATE", "");
    is_int(cfg.ws_deflate, 1, "empty deflate keeps default");
}

static void test_removed(void)
{
    is_int(load1("GATEWAY_REDIS_TLS_ENABLED", "true"), GW_ERR, "REDIS_TLS_ENABLED refused");
    is_str(err,
           "GATEWAY_REDIS_TLS_ENABLED=\"true\": this variable was removed (Redis traffic is password-protected "
           "with TLS off by policy); unset it",
           "TLS_ENABLED message");
    is_int(load1("GATEWAY_REDIS_TLS_ENABLED", "false"), GW_ERR, "refused even when false");
    is_int(load1("GATEWAY_REDIS_USERNAME", "default"), GW_ERR, "REDIS_USERNAME refused");
    ok(strncmp(err, "GATEWAY_REDIS_USERNAME=\"default\": this variable was removed", 58) == 0,
       "USERNAME message: %.150s", err);
    is_int(load1("GATEWAY_REDIS_USERNAME", ""), GW_OK, "empty USERNAME tolerated");
}

typedef struct bad_case {
    const char *name, *value, *msg;
} bad_case;

static void test_bad_values(void)
{
    static const bad_case cases[] = {
        {"GATEWAY_PUBLIC_HTTP_ADDR", "8080",
         "GATEWAY_PUBLIC_HTTP_ADDR: cannot parse \"8080\" as an address (HOST:PORT, :PORT, [V6]:PORT or unix:/path)"},
        {"GATEWAY_ADMIN_HTTP_ADDR", "::1:80",
         "GATEWAY_ADMIN_HTTP_ADDR: cannot parse \"::1:80\" as an address (HOST:PORT, :PORT, [V6]:PORT or unix:/path)"},
        {"GATEWAY_AUTHENTICATED_GRPC_ADDR", ":65536",
         "GATEWAY_AUTHENTICATED_GRPC_ADDR: cannot parse \":65536\" as an address (HOST:PORT, :PORT, [V6]:PORT or "
         "unix:/path)"},
        {"GATEWAY_REDIS_MASTER_ADDR", "redis://x:6379",
         "GATEWAY_REDIS_MASTER_ADDR: cannot parse \"redis://x:6379\" as an address (HOST:PORT, [V6]:PORT or "
         "unix:/path)"},
        {"GATEWAY_REDIS_DB", "-1", "GATEWAY_REDIS_DB: cannot parse \"-1\" as a non-negative integer"},
        {"GATEWAY_REDIS_DB", "2147483648", "GATEWAY_REDIS_DB: \"2147483648\" is out of range (0..2147483647)"},
        {"GATEWAY_SHUTDOWN_TIMEOUT", "-5s",
         "GATEWAY_SHUTDOWN_TIMEOUT: cannot parse \"-5s\" as a duration (e.g. 250ms, 25s, 5m, 1h30m)"},
        {"GATEWAY_WS_PING_INTERVAL", "abc",
         "GATEWAY_WS_PING_INTERVAL: cannot parse \"abc\" as a duration (e.g. 250ms, 25s, 5m, 1h30m)"},
        {"GATEWAY_WS_PONG_TIMEOUT", "0", "GATEWAY_WS_PONG_TIMEOUT: \"0\" must be greater than 0"},
        {"GATEWAY_WS_PONG_TIMEOUT", "10s",
         "GATEWAY_WS_PONG_TIMEOUT: \"10s\" is shorter than GATEWAY_WS_PING_INTERVAL (25s)"},
        {"GATEWAY_WS_MAX_MESSAGE_BYTES", "124",
         "GATEWAY_WS_MAX_MESSAGE_BYTES: \"124\" is out of range (125 bytes to 1GiB)"},
        {"GATEWAY_WS_MAX_MESSAGE_BYTES", "1073741825",
         "GATEWAY_WS_MAX_MESSAGE_BYTES: \"1073741825\" is out of range (125 bytes to 1GiB)"},
        {"GATEWAY_WS_MAX_MESSAGE_BYTES", "1 MiB",
         "GATEWAY_WS_MAX_MESSAGE_BYTES: cannot parse \"1 MiB\" as a size (e.g. 65536, 64KiB, 1MiB, 10KB)"},
        {"GATEWAY_PUSH_QUEUE_LIMIT", "0", "GATEWAY_PUSH_QUEUE_LIMIT: \"0\" is out of range (1..4294967295)"},
        {"GATEWAY_PUSH_QUEUE_LIMIT", "1k", "GATEWAY_PUSH_QUEUE_LIMIT: cannot parse \"1k\" as a non-negative integer"},
        {"GATEWAY_PUSH_HISTORY_WINDOW", "5 m",
         "GATEWAY_PUSH_HISTORY_WINDOW: cannot parse \"5 m\" as a duration (e.g. 250ms, 25s, 5m, 1h30m)"},
        {"GATEWAY_LOG_FORMAT", "xml", "GATEWAY_LOG_FORMAT: unknown format \"xml\" (json or text)"},
        {"GATEWAY_LOG_LEVEL", "trace", "GATEWAY_LOG_LEVEL: unknown level \"trace\" (debug, info, warn or error)"},
        {"GATEWAY_PUBLIC_WS_BASE_URL", "https://x",
         "GATEWAY_PUBLIC_WS_BASE_URL: \"https://x\" must start with ws:// or wss://"},
        {"GATEWAY_WORKERS", "0", "GATEWAY_WORKERS: \"0\" is out of range (1..256)"},
        {"GATEWAY_WORKERS", "257", "GATEWAY_WORKERS: \"257\" is out of range (1..256)"},
        {"GATEWAY_WORKERS", "four", "GATEWAY_WORKERS: cannot parse \"four\" as a non-negative integer"},
        {"GATEWAY_MAX_CONNECTIONS", "0", "GATEWAY_MAX_CONNECTIONS: \"0\" is out of range (1..100000000)"},
        {"GATEWAY_ADMIN_MAX_CONNECTIONS", "0", "GATEWAY_ADMIN_MAX_CONNECTIONS: \"0\" is out of range (1..1000000)"},
        {"GATEWAY_MAX_CONNECTIONS", "99999999999999999999",
         "GATEWAY_MAX_CONNECTIONS: cannot parse \"99999999999999999999\" as a non-negative integer"},
        {"GATEWAY_HANDSHAKE_TIMEOUT", "0s", "GATEWAY_HANDSHAKE_TIMEOUT: \"0s\" must be greater than 0"},
        {"GATEWAY_HTTP_IDLE_TIMEOUT", "1d",
         "GATEWAY_HTTP_IDLE_TIMEOUT: cannot parse \"1d\" as a duration (e.g. 250ms, 25s, 5m, 1h30m)"},
        {"GATEWAY_ECHO_IDLE_TIMEOUT", "0ms", "GATEWAY_ECHO_IDLE_TIMEOUT: \"0ms\" must be greater than 0"},
        {"GATEWAY_MAX_HEADER_BYTES", "100", "GATEWAY_MAX_HEADER_BYTES: \"100\" is out of range (256 bytes to 16MiB)"},
        {"GATEWAY_MAX_REQUEST_LINE_BYTES", "2MiB",
         "GATEWAY_MAX_REQUEST_LINE_BYTES: \"2MiB\" is out of range (64 bytes to 1MiB)"},
        {"GATEWAY_BODY_TIMEOUT", "0s", "GATEWAY_BODY_TIMEOUT: \"0s\" must be greater than 0"},
        {"GATEWAY_STORE_TIMEOUT", "61m", "GATEWAY_STORE_TIMEOUT: \"61m\" must be at most 1h"},
        {"GATEWAY_STORE_TIMEOUT", "18446744073709551s",
         "GATEWAY_STORE_TIMEOUT: \"18446744073709551s\" must be at most 1h"},
        {"GATEWAY_BODY_MIN_RATE", "2GiB", "GATEWAY_BODY_MIN_RATE: \"2GiB\" is out of range (0 to 1GiB per second)"},
        {"GATEWAY_WS_DEFLATE", "maybe",
         "GATEWAY_WS_DEFLATE: cannot parse \"maybe\" as a boolean (on/off, true/false, yes/no, 1/0)"},
        {"GATEWAY_TLS_CERT_PATH", "/c.pem",
         "GATEWAY_TLS_KEY_PATH: must be set together with GATEWAY_TLS_CERT_PATH (only "
         "GATEWAY_TLS_CERT_PATH=\"/c.pem\" is set)"},
        {"GATEWAY_TLS_KEY_PATH", "/k.pem",
         "GATEWAY_TLS_CERT_PATH: must be set together with GATEWAY_TLS_KEY_PATH (only "
         "GATEWAY_TLS_KEY_PATH=\"/k.pem\" is set)"},
        /* Non-printable bytes are shown escaped, keeping the message one line. */
        {"GATEWAY_LOG_LEVEL", "in\nfo\"\xff",
         "GATEWAY_LOG_LEVEL: unknown level \"in\\x0afo\\\"\\xff\" (debug, info, "
         "warn or error)"},
    };
    for (size_t i = 0; i < GW_ARRAY_LEN(cases); i++) {
        int rc = load1(cases[i].name, cases[i].value);
        is_int(rc, GW_ERR, "%s bad value #%zu refused", cases[i].name, i);
        is_str(err, cases[i].msg, "message for %s", cases[i].name);
    }
}

static void test_long_values(void)
{
    static char longv[5000];
    memset(longv, 'a', sizeof longv - 1);
    /* A secret that is too long is refused without being echoed. */
    static const char *const secrets[] = {"GATEWAY_ADMIN_TOKEN", "GATEWAY_REDIS_PASSWORD", "GATEWAY_AGENT_SECRET"};
    for (size_t i = 0; i < GW_ARRAY_LEN(secrets); i++) {
        is_int(load1(secrets[i], longv), GW_ERR, "%s too long refused", secrets[i]);
        ok(strncmp(err, secrets[i], strlen(secrets[i])) == 0 && !strstr(err, "aaaa") && strstr(err, "too long"),
           "secret not echoed: %.150s", err);
    }
    is_int(load1("GATEWAY_ROUTES_FILE", longv), GW_ERR, "path too long refused");
    char want[256];
    snprintf(want, sizeof want, "GATEWAY_ROUTES_FILE: \"%.80s\"... is too long (4999 bytes, at most 4095)", longv);
    is_str(err, want, "long value cut in the message");
    longv[255] = '\0';
    is_int(load1("GATEWAY_ADMIN_TOKEN", longv), GW_OK, "255-byte token fits");
    is_int((long long)strlen(cfg.admin_token), 255, "token kept whole");
    longv[255] = 'a';
    /* A tiny error buffer is still NUL-terminated. */
    env_kv one[1] = {{"GATEWAY_WORKERS", "0"}};
    env_tab = one;
    env_n = 1;
    char small[8];
    is_int(gw_config_load(&cfg, fake_getenv, small, sizeof small), GW_ERR, "small err buffer");
    is_str(small, "GATEWAY", "truncated message");
    is_int(gw_config_load(&cfg, fake_getenv, NULL, 0), GW_ERR, "NULL err buffer ok");
}

static void test_cross_checks(void)
{
    static const env_kv ping_off[] = {{"GATEWAY_WS_PING_INTERVAL", "0"}, {"GATEWAY_WS_PONG_TIMEOUT", "1s"}};
    is_int(load(ping_off, 2), GW_OK, "ping 0 disables the pong check");
    is_int(cfg.ws_ping_interval_ms, 0, "ping disabled");
    static const env_kv equal[] = {{"GATEWAY_WS_PING_INTERVAL", "30s"}, {"GATEWAY_WS_PONG_TIMEOUT", "30s"}};
    is_int(load(equal, 2), GW_OK, "pong == ping is fine");
    static const env_kv shorter[] = {{"GATEWAY_WS_PING_INTERVAL", "1m"}, {"GATEWAY_WS_PONG_TIMEOUT", "59999ms"}};
    is_int(load(shorter, 2), GW_ERR, "pong < ping refused");
    is_str(err, "GATEWAY_WS_PONG_TIMEOUT: \"59999ms\" is shorter than GATEWAY_WS_PING_INTERVAL (1m)", "message");
    static const env_kv tls[] = {{"GATEWAY_TLS_CERT_PATH", "/c"}, {"GATEWAY_TLS_KEY_PATH", "/k"}};
    is_int(load(tls, 2), GW_OK, "both TLS paths ok");
    is_int(load1("GATEWAY_WS_MAX_MESSAGE_BYTES", "125"), GW_OK, "125 bytes ok");
    is_int(load1("GATEWAY_WS_MAX_MESSAGE_BYTES", "1GiB"), GW_OK, "1GiB ok");
    is_int(cfg.ws_max_message_bytes, 1073741824, "1GiB value");
    is_int(load1("GATEWAY_WORKERS", "256"), GW_OK, "256 workers ok");
    is_int(load1("GATEWAY_WORKERS", "1"), GW_OK, "1 worker ok");
    is_int(load1("GATEWAY_LOG_LEVEL", "WARN"), GW_OK, "level case-insensitive");
    is_int(cfg.log_level, GW_LOG_WARN, "warn");
    /* The drain delay takes at most half the shutdown budget. */
    static const env_kv delay_half[] = {{"GATEWAY_SHUTDOWN_TIMEOUT", "10s"}, {"GATEWAY_DRAIN_DELAY", "5s"}};
    is_int(load(delay_half, 2), GW_OK, "delay of half the budget ok");
    is_int(cfg.drain_delay_ms, 5000, "delay kept");
    static const env_kv delay_long[] = {{"GATEWAY_SHUTDOWN_TIMEOUT", "10s"}, {"GATEWAY_DRAIN_DELAY", "5001ms"}};
    is_int(load(delay_long, 2), GW_ERR, "delay past half the budget refused");
    is_str(err, "GATEWAY_DRAIN_DELAY: \"5001ms\" is more than half of GATEWAY_SHUTDOWN_TIMEOUT (10s)", "message");
    is_int(load1("GATEWAY_SHUTDOWN_TIMEOUT", "3s"), GW_OK, "short budget with the default delay ok");
    is_int(cfg.drain_delay_ms, 1500, "the default delay is cut to half the budget");
    is_int(load1("GATEWAY_DRAIN_DELAY", "0"), GW_OK, "no delay ok");
    is_int(cfg.drain_delay_ms, 0, "delay 0");
    /* The first error wins and is the only line. */
    static const env_kv two_bad[] = {{"GATEWAY_WORKERS", "0"}, {"GATEWAY_PUBLIC_HTTP_ADDR", "x"}};
    is_int(load(two_bad, 2), GW_ERR, "two bad values");
    ok(strchr(err, '\n') == NULL, "one line");
    /* Removed variables are checked before anything else. */
    static const env_kv removed_first[] = {{"GATEWAY_WORKERS", "0"}, {"GATEWAY_REDIS_USERNAME", "u"}};
    is_int(load(removed_first, 2), GW_ERR, "removed + bad");
    ok(strncmp(err, "GATEWAY_REDIS_USERNAME", 22) == 0, "removed variable reported first");
}

/* Issue 8 item 4: an admin listener that is not loopback or a unix socket
 * needs GATEWAY_ADMIN_TOKEN (the token mint would be open to the network). */
static void test_admin_token_rule(void)
{
    static const char *const open_ok[] = {"127.0.0.1:9091", "127.8.9.10:1", "[::1]:9091", "localhost:9091",
                                          "[::ffff:127.0.0.1]:9091", "unix:/run/wsgate/admin.sock"};
    for (size_t i = 0; i < GW_ARRAY_LEN(open_ok); i++)
        is_int(load1("GATEWAY_ADMIN_HTTP_ADDR", open_ok[i]), GW_OK, "%s without a token: %.100s", open_ok[i], err);
    static const char *const need[] = {":9091", "0.0.0.0:9091", "[::]:9091", "10.0.0.5:9091", "admin.internal:9091",
                                       "128.0.0.1:9091", "[::ffff:10.0.0.1]:9091"};
    for (size_t i = 0; i < GW_ARRAY_LEN(need); i++) {
        is_int(load1("GATEWAY_ADMIN_HTTP_ADDR", need[i]), GW_ERR, "%s without a token refused", need[i]);
        ok(strncmp(err, "GATEWAY_ADMIN_TOKEN: required when GATEWAY_ADMIN_HTTP_ADDR (", 60) == 0 &&
               strchr(err, '\n') == NULL,
           "one clear line: %.200s", err);
        env_kv both[] = {{"GATEWAY_ADMIN_HTTP_ADDR", need[i]}, {"GATEWAY_ADMIN_TOKEN", "t0ken"}};
        is_int(load(both, 2), GW_OK, "%s with a token ok", need[i]);
    }
    is_int(load1("GATEWAY_ADMIN_HTTP_ADDR", ":9091"), GW_ERR, "all interfaces");
    is_str(err,
           "GATEWAY_ADMIN_TOKEN: required when GATEWAY_ADMIN_HTTP_ADDR (\":9091\") is not a loopback address or a "
           "unix socket",
           "message");
}

/* ------------------------------------------------------------------ */
/* Parsers */

typedef struct dur_case {
    const char *in;
    int rc;
    uint64_t ms;
} dur_case;

static void test_parse_duration(void)
{
    static const dur_case cases[] = {
        {"250ms", GW_OK, 250},
        {"25s", GW_OK, 25000},
        {"5m", GW_OK, 300000},
        {"1h", GW_OK, 3600000},
        {"1h30m", GW_OK, 5400000},
        {"30m1h", GW_OK, 5400000},
        {"1h0m0s5ms", GW_OK, 3600005},
        {"1.5s", GW_OK, 1500},
        {"1.5h", GW_OK, 5400000},
        {".5s", GW_OK, 500},
        {"5.s", GW_OK, 5000},
        {"1.5ms", GW_OK, 1},
        {"0.0001s", GW_OK, 0},
        {"0.999999999999s", GW_OK, 999},
        {"0", GW_OK, 0},
        {"0s", GW_OK, 0},
        {"7", GW_OK, 7000},
        {"007", GW_OK, 7000},
        {"18446744073709551", GW_OK, 18446744073709551000ull},
        {"18446744073709552", GW_ERR, 0},
        {"18446744073709551615ms", GW_OK, UINT64_MAX},
        {"18446744073709551616ms", GW_ERR, 0},
        {"5124095576030h", GW_OK, 18446744073708000000ull},
        {"5124095576031h", GW_ERR, 0},
        {"5124095576030h1551615ms", GW_OK, UINT64_MAX},
        {"5124095576030h1551616ms", GW_ERR, 0},
        {"99999999999999999999s", GW_ERR, 0},
        {"", GW_ERR, 0},
        {"s", GW_ERR, 0},
        {"ms", GW_ERR, 0},
        {".s", GW_ERR, 0},
        {".", GW_ERR, 0},
        {"-1s", GW_ERR, 0},
        {"+1s", GW_ERR, 0},
        {"-1", GW_ERR, 0},
        {"1.5", GW_ERR, 0},
        {"1h30", GW_ERR, 0},
        {"1d", GW_ERR, 0},
        {"1us", GW_ERR, 0},
        {"1ns", GW_ERR, 0},
        {"1S", GW_ERR, 0},
        {"1 s", GW_ERR, 0},
        {" 1s", GW_ERR, 0},
        {"1s ", GW_ERR, 0},
        {"1..5s", GW_ERR, 0},
        {"1.5.5s", GW_ERR, 0},
        {"1sx", GW_ERR, 0},
        {"abc", GW_ERR, 0},
        {"0x10", GW_ERR, 0},
        {"1e3s", GW_ERR, 0},
    };
    for (size_t i = 0; i < GW_ARRAY_LEN(cases); i++) {
        uint64_t v = 12345;
        int rc = gw_parse_duration_ms(cases[i].in, &v);
        is_int(rc, cases[i].rc, "duration \"%s\" rc", cases[i].in);
        if (cases[i].rc == GW_OK)
            ok(v == cases[i].ms, "duration \"%s\" = %llu (got %llu)", cases[i].in, (unsigned long long)cases[i].ms,
               (unsigned long long)v);
        else
            ok(v == 12345, "duration \"%s\" leaves *out alone on error", cases[i].in);
    }
    is_int(gw_parse_duration_ms(NULL, &(uint64_t){0}), GW_ERR, "NULL refused");

    /* Every prefix of a few inputs: the grammar decides at each cut. */
    static const struct {
        const char *full;
        int64_t want[12]; /* -1 = GW_ERR, per prefix length 1..n */
    } pre[] = {
        {"1h30m", {1000, 3600000, -1, -1, 5400000}},
        {"1.5s", {1000, -1, -1, 1500}},
        {"250ms", {2000, 25000, 250000, 15000000, 250}},
        {"2m3s4ms", {2000, 120000, -1, 123000, -1, 123000 + 240000, 123004}},
    };
    for (size_t i = 0; i < GW_ARRAY_LEN(pre); i++) {
        size_t n = strlen(pre[i].full);
        int all = 1;
        for (size_t k = 1; k <= n; k++) {
            char buf[32];
            memcpy(buf, pre[i].full, k);
            buf[k] = '\0';
            uint64_t v = 0;
            int rc = gw_parse_duration_ms(buf, &v);
            if (pre[i].want[k - 1] < 0 ? rc != GW_ERR : rc != GW_OK || v != (uint64_t)pre[i].want[k - 1]) {
                all = 0;
                printf("#   prefix \"%s\": rc %d v %llu\n", buf, rc, (unsigned long long)v);
            }
        }
        ok(all, "every prefix of \"%s\"", pre[i].full);
    }
}

static void test_parse_size(void)
{
    static const dur_case cases[] = {
        {"0", GW_OK, 0},
        {"1048576", GW_OK, 1048576},
        {"64KiB", GW_OK, 65536},
        {"1MiB", GW_OK, 1048576},
        {"1GiB", GW_OK, 1073741824},
        {"10KB", GW_OK, 10000},
        {"1MB", GW_OK, 1000000},
        {"2GB", GW_OK, 2000000000},
        {"0KiB", GW_OK, 0},
        {"18446744073709551615", GW_OK, UINT64_MAX},
        {"18446744073709551616", GW_ERR, 0},
        {"18014398509481983KiB", GW_OK, 18014398509481983ull * 1024},
        {"18014398509481984KiB", GW_ERR, 0},
        {"17179869183GiB", GW_OK, 17179869183ull << 30},
        {"17179869184GiB", GW_ERR, 0},
        {"18446744073GB", GW_OK, 18446744073000000000ull},
        {"18446744074GB", GW_ERR, 0},
        {"", GW_ERR, 0},
        {"KiB", GW_ERR, 0},
        {"-1", GW_ERR, 0},
        {"+1", GW_ERR, 0},
        {"1.5MiB", GW_ERR, 0},
        {"1 MiB", GW_ERR, 0},
        {"1kib", GW_ERR, 0},
        {"1kb", GW_ERR, 0},
        {"1K", GW_ERR, 0},
        {"1Ki", GW_ERR, 0},
        {"1TiB", GW_ERR, 0},
        {"1MiBs", GW_ERR, 0},
        {"1B", GW_ERR, 0},
        {" 1", GW_ERR, 0},
        {"1 ", GW_ERR, 0},
        {"0x10", GW_ERR, 0},
    };
    for (size_t i = 0; i < GW_ARRAY_LEN(cases); i++) {
        uint64_t v = 12345;
        int rc = gw_parse_size(cases[i].in, &v);
        is_int(rc, cases[i].rc, "size \"%s\" rc", cases[i].in);
        if (cases[i].rc == GW_OK)
            ok(v == cases[i].ms, "size \"%s\" = %llu (got %llu)", cases[i].in, (unsigned long long)cases[i].ms,
               (unsigned long long)v);
        else
            ok(v == 12345, "size \"%s\" leaves *out alone on error", cases[i].in);
    }
    is_int(gw_parse_size(NULL, &(uint64_t){0}), GW_ERR, "NULL refused");
}

typedef struct addr_case {
    const char *in;
    int rc;
    int is_unix;
    const char *host_or_path;
    unsigned port;
    const char *formatted;
} addr_case;

static int addr_eq(const gw_addr *a, const gw_addr *b)
{
    return a->set == b->set && a->is_unix == b->is_unix && strcmp(a->host, b->host) == 0 && a->port == b->port &&
           strcmp(a->path, b->path) == 0;
}

static void test_parse_addr(void)
{
    static char longpath[200], okpath[200];
    memcpy(longpath, "unix:/", 6);
    memset(longpath + 6, 'p', 107); /* path of 108 bytes: no room for the NUL */
    memcpy(okpath, "unix:/", 6);
    memset(okpath + 6, 'p', 106); /* 107 bytes: fits */
    static char longhost[300];
    memset(longhost, 'h', 254);
    memcpy(longhost + 254, ":80", 4);
    const addr_case cases[] = {
        {":8080", GW_OK, 0, "", 8080, ":8080"},
        {"127.0.0.1:80", GW_OK, 0, "127.0.0.1", 80, "127.0.0.1:80"},
        {"0.0.0.0:0", GW_OK, 0, "0.0.0.0", 0, "0.0.0.0:0"},
        {"localhost:65535", GW_OK, 0, "localhost", 65535, "localhost:65535"},
        {"redis-1.svc.cluster.local:6379", GW_OK, 0, "redis-1.svc.cluster.local", 6379,
         "redis-1.svc.cluster.local:6379"},
        {"[::1]:9090", GW_OK, 0, "::1", 9090, "[::1]:9090"},
        {"[::]:443", GW_OK, 0, "::", 443, "[::]:443"},
        {"[2001:db8::ff00:42:8329]:1", GW_OK, 0, "2001:db8::ff00:42:8329", 1, "[2001:db8::ff00:42:8329]:1"},
        {"[::ffff:1.2.3.4]:5", GW_OK, 0, "::ffff:1.2.3.4", 5, "[::ffff:1.2.3.4]:5"},
        {"unix:/run/wsgate.sock", GW_OK, 1, "/run/wsgate.sock", 0, "unix:/run/wsgate.sock"},
        {"unix:rel.sock", GW_OK, 1, "rel.sock", 0, "unix:rel.sock"},
        {okpath, GW_OK, 1, okpath + 5, 0, okpath},
        {":080800", GW_ERR, 0, NULL, 0, NULL}, /* six digits */
        {":00080", GW_OK, 0, "", 80, ":80"},
        {longpath, GW_ERR, 0, NULL, 0, NULL},
        {longhost, GW_ERR, 0, NULL, 0, NULL},
        {"unix:", GW_ERR, 0, NULL, 0, NULL},
        {"", GW_ERR, 0, NULL, 0, NULL},
        {"8080", GW_ERR, 0, NULL, 0, NULL},
        {":", GW_ERR, 0, NULL, 0, NULL},
        {"host:", GW_ERR, 0, NULL, 0, NULL},
        {":65536", GW_ERR, 0, NULL, 0, NULL},
        {":99999", GW_ERR, 0, NULL, 0, NULL},
        {":-1", GW_ERR, 0, NULL, 0, NULL},
        {":+80", GW_ERR, 0, NULL, 0, NULL},
        {":80 ", GW_ERR, 0, NULL, 0, NULL},
        {" :80", GW_ERR, 0, NULL, 0, NULL},
        {":8o", GW_ERR, 0, NULL, 0, NULL},
        {"::1:80", GW_ERR, 0, NULL, 0, NULL},
        {"[::1]", GW_ERR, 0, NULL, 0, NULL},
        {"[::1]80", GW_ERR, 0, NULL, 0, NULL},
        {"[::1:80", GW_ERR, 0, NULL, 0, NULL},
        {"[]:80", GW_ERR, 0, NULL, 0, NULL},
        {"[1.2.3.4]:80", GW_ERR, 0, NULL, 0, NULL},
        {"[::g]:80", GW_ERR, 0, NULL, 0, NULL},
        {"[::1]:80:81", GW_ERR, 0, NULL, 0, NULL},
        {"a:b:80", GW_ERR, 0, NULL, 0, NULL},
        {"under_score:80", GW_ERR, 0, NULL, 0, NULL},
        {"sp ace:80", GW_ERR, 0, NULL, 0, NULL},
        {".lead:80", GW_ERR, 0, NULL, 0, NULL},
        {"a..b:80", GW_ERR, 0, NULL, 0, NULL},
        {"-lead:80", GW_ERR, 0, NULL, 0, NULL},
        {"http://x:80", GW_ERR, 0, NULL, 0, NULL},
        {"x:80/path", GW_ERR, 0, NULL, 0, NULL},
    };
    for (size_t i = 0; i < GW_ARRAY_LEN(cases); i++) {
        gw_addr a;
        memset(&a, 0x5a, sizeof a);
        int rc = gw_parse_addr(cases[i].in, &a);
        is_int(rc, cases[i].rc, "addr \"%.60s\" rc", cases[i].in);
        if (rc != GW_OK || cases[i].rc != GW_OK)
            continue;
        ok(a.set == 1 && a.is_unix == cases[i].is_unix, "addr \"%.60s\" kind", cases[i].in);
        if (cases[i].is_unix)
            is_str(a.path, cases[i].host_or_path, "addr path");
        else
            is_str(a.host, cases[i].host_or_path, "addr host");
        is_int(a.port, cases[i].port, "addr port");
        char f[300];
        gw_addr_format(&a, f, sizeof f);
        is_str(f, cases[i].formatted, "addr format");
        gw_addr b;
        ok(gw_parse_addr(f, &b) == GW_OK && addr_eq(&a, &b), "format round-trips");
    }
    gw_addr a;
    is_int(gw_parse_addr(NULL, &a), GW_ERR, "NULL refused");
    /* Every prefix of "[::1]:80" before the port digits is refused. */
    const char *full = "[::1]:80";
    int good = 1;
    for (size_t k = 0; k <= strlen("[::1]:"); k++) {
        char b[16];
        memcpy(b, full, k);
        b[k] = '\0';
        if (gw_parse_addr(b, &a) != GW_ERR)
            good = 0;
    }
    ok(good, "every prefix of [::1]:80 up to the colon refused");
    /* A small format buffer truncates safely. */
    gw_parse_addr("[::1]:9090", &a);
    char small[5];
    gw_addr_format(&a, small, sizeof small);
    is_str(small, "[::1", "format truncates");
}

static void test_parse_bool(void)
{
    static const struct {
        const char *in;
        int rc, v;
    } cases[] = {
        {"on", GW_OK, 1},   {"off", GW_OK, 0},   {"true", GW_OK, 1},   {"false", GW_OK, 0}, {"1", GW_OK, 1},
        {"0", GW_OK, 0},    {"yes", GW_OK, 1},   {"no", GW_OK, 0},     {"ON", GW_OK, 1},    {"False", GW_OK, 0},
        {"YES", GW_OK, 1},  {"", GW_ERR, 0},     {"2", GW_ERR, 0},     {"y", GW_ERR, 0},    {"enable", GW_ERR, 0},
        {"on ", GW_ERR, 0}, {" off", GW_ERR, 0}, {"truee", GW_ERR, 0}, {"01", GW_ERR, 0},
    };
    for (size_t i = 0; i < GW_ARRAY_LEN(cases); i++) {
        int v = 7;
        int rc = gw_parse_bool(cases[i].in, &v);
        is_int(rc, cases[i].rc, "bool \"%s\" rc", cases[i].in);
        is_int(v, cases[i].rc == GW_OK ? cases[i].v : 7, "bool \"%s\" value", cases[i].in);
    }
    int v;
    is_int(gw_parse_bool(NULL, &v), GW_ERR, "NULL refused");
}

static void test_help(void)
{
    static const char *const vars[] = {
        "GATEWAY_PUBLIC_HTTP_ADDR",
        "GATEWAY_AUTHENTICATED_GRPC_ADDR",
        "GATEWAY_ADMIN_HTTP_ADDR",
        "GATEWAY_ADMIN_TOKEN",
        "GATEWAY_TLS_CERT_PATH",
        "GATEWAY_TLS_KEY_PATH",
        "GATEWAY_ROUTES_FILE",
        "GATEWAY_REDIS_MASTER_ADDR",
        "GATEWAY_REDIS_PASSWORD",
        "GATEWAY_REDIS_DB",
        "GATEWAY_REDIS_KEY_PREFIX",
        "GATEWAY_REDIS_REPLICA_ADDRS",
        "GATEWAY_SESSION_EVENTS_REDIS_STREAM",
        "GATEWAY_CLIENT_EVENTS_REDIS_STREAM",
        "GATEWAY_RESPONSE_SIGNER_PRIVATE_KEY_PEM_PATH",
        "GATEWAY_SHUTDOWN_TIMEOUT",
        "GATEWAY_DRAIN_DELAY",
        "GATEWAY_WS_PING_INTERVAL",
        "GATEWAY_WS_PONG_TIMEOUT",
        "GATEWAY_WS_MAX_MESSAGE_BYTES",
        "GATEWAY_PUSH_QUEUE_LIMIT",
        "GATEWAY_PUSH_HISTORY_WINDOW",
        "GATEWAY_LOG_FORMAT",
        "GATEWAY_LOG_LEVEL",
        "GATEWAY_PUBLIC_WS_BASE_URL",
        "GATEWAY_AGENT_SECRET",
        "GATEWAY_WORKERS",
        "GATEWAY_MAX_CONNECTIONS",
        "GATEWAY_ADMIN_MAX_CONNECTIONS",
        "GATEWAY_HANDSHAKE_TIMEOUT",
        "GATEWAY_HTTP_IDLE_TIMEOUT",
        "GATEWAY_ECHO_IDLE_TIMEOUT",
        "GATEWAY_MAX_HEADER_BYTES",
        "GATEWAY_MAX_REQUEST_LINE_BYTES",
        "GATEWAY_BODY_TIMEOUT",
        "GATEWAY_BODY_MIN_RATE",
        "GATEWAY_WS_DEFLATE",
        "GATEWAY_REDIS_TLS_ENABLED",
        "GATEWAY_REDIS_USERNAME",
    };
    int all = 1;
    for (size_t i = 0; i < GW_ARRAY_LEN(vars); i++) {
        /* Each variable appears as a whole word (followed by space, comma or period). */
        const char *p = gw_config_help;
        int found = 0;
        size_t n = strlen(vars[i]);
        while ((p = strstr(p, vars[i])) != NULL) {
            if (p[n] == ' ' || p[n] == ',' || p[n] == '.')
                found = 1;
            p += n;
        }
        if (!found) {
            all = 0;
            printf("#   missing from help: %s\n", vars[i]);
        }
    }
    ok(all, "help names every variable");
    ok(strstr(gw_config_help, ":8080") && strstr(gw_config_help, "1MiB") && strstr(gw_config_help, "25s") &&
           strstr(gw_config_help, "50s"),
       "help shows defaults");
    size_t n = strlen(gw_config_help);
    ok(n > 0 && gw_config_help[n - 1] == '\n', "help ends with a newline");
}

static char seen[8][64];
static size_t nseen;
static void on_unbuilt(const char *name, const char *feature, void *arg)
{
    GW_UNUSED(arg);
    if (nseen < 8)
        snprintf(seen[nseen++], sizeof seen[0], "%s=%s", name, feature);
}

/* Issue 8 item 19: variables of features not built yet are reported when
 * set (the caller warns), and --help marks them so. Since issue 12 (gRPC,
 * the response signer) every feature is built: none is reported or marked. */
static void test_unbuilt(void)
{
    static const env_kv set[] = {
        {"GATEWAY_REDIS_MASTER_ADDR", "127.0.0.1:6379"},
        {"GATEWAY_AUTHENTICATED_GRPC_ADDR", ":9090"},
        {"GATEWAY_PUSH_QUEUE_LIMIT", "10"},
        {"GATEWAY_RESPONSE_SIGNER_PRIVATE_KEY_PEM_PATH", "/k.pem"},
        {"GATEWAY_WORKERS", "2"},
    };
    env_tab = set;
    env_n = GW_ARRAY_LEN(set);
    nseen = 0;
    is_int(gw_config_unbuilt(fake_getenv, on_unbuilt, NULL), 0, "no unbuilt variable (gRPC and signer are built)");
    is_int(nseen, 0, "nothing reported");
    static const char *const built[] = {"GATEWAY_REDIS_MASTER_ADDR",    "GATEWAY_REDIS_PASSWORD",
                                        "GATEWAY_REDIS_DB",             "GATEWAY_REDIS_KEY_PREFIX",
                                        "GATEWAY_SESSION_EVENTS_REDIS_STREAM", "GATEWAY_PUSH_QUEUE_LIMIT",
                                        "GATEWAY_PUSH_HISTORY_WINDOW",  "GATEWAY_CLIENT_EVENTS_REDIS_STREAM",
                                        "GATEWAY_AUTHENTICATED_GRPC_ADDR",
                                        "GATEWAY_RESPONSE_SIGNER_PRIVATE_KEY_PEM_PATH"};
    for (size_t i = 0; i < GW_ARRAY_LEN(built); i++) {
        char line[160];
        snprintf(line, sizeof line, "  %-46sNOT BUILT", built[i]);
        ok(strstr(gw_config_help, line) == NULL, "help no longer marks %s as not built", built[i]);
        snprintf(line, sizeof line, "  %s ", built[i]);
        ok(strstr(gw_config_help, line) != NULL, "help documents %s", built[i]);
        env_kv one[1] = {{built[i], "x"}};
        env_tab = one;
        env_n = 1;
        is_int(gw_config_unbuilt(fake_getenv, NULL, NULL), 0, "%s is built: not reported", built[i]);
    }
    ok(strstr(gw_config_help, "Not built yet") == NULL, "help has no Not built yet section");
    env_n = 0;
    is_int(gw_config_unbuilt(fake_getenv, NULL, NULL), 0, "none set: none reported");
}

/* GATEWAY_SERVICE_NAME: the `service` field of every log line (issue 14). */
static void test_service_name(void)
{
    is_int(load(NULL, 0), GW_OK, "defaults load");
    is_str(cfg.service_name, "wsgate", "service name defaults to wsgate");
    is_int(load1("GATEWAY_SERVICE_NAME", "edge-gw.eu_1"), GW_OK, "service name set");
    is_str(cfg.service_name, "edge-gw.eu_1", "service name kept");
    is_int(load1("GATEWAY_SERVICE_NAME", ""), GW_OK, "empty service name");
    is_str(cfg.service_name, "wsgate", "empty means the default");
    is_int(load1("GATEWAY_SERVICE_NAME", "ws gate"), GW_ERR, "space refused");
    is_str(err, "GATEWAY_SERVICE_NAME: \"ws gate\" may hold only letters, digits, '.', '_' and '-'", "message");
    is_int(load1("GATEWAY_SERVICE_NAME", "a\"b"), GW_ERR, "quote refused");
    char longv[80];
    memset(longv, 'a', sizeof longv - 1);
    longv[sizeof longv - 1] = '\0';
    is_int(load1("GATEWAY_SERVICE_NAME", longv), GW_ERR, "79 bytes refused");
    ok(strstr(err, "too long (79 bytes, at most 63)") != NULL, "too long message: %.150s", err);
    longv[63] = '\0';
    is_int(load1("GATEWAY_SERVICE_NAME", longv), GW_OK, "63 bytes fit");
    ok(strstr(gw_config_help, "GATEWAY_SERVICE_NAME ") != NULL, "help names GATEWAY_SERVICE_NAME");
}

int main(void)
{
    TEST_RUN(test_defaults);
    TEST_RUN(test_every_variable);
    TEST_RUN(test_empty_values);
    TEST_RUN(test_removed);
    TEST_RUN(test_bad_values);
    TEST_RUN(test_long_values);
    TEST_RUN(test_cross_checks);
    TEST_RUN(test_admin_token_rule);
    TEST_RUN(test_parse_duration);
    TEST_RUN(test_parse_size);
    TEST_RUN(test_parse_addr);
    TEST_RUN(test_parse_bool);
    TEST_RUN(test_help);
    TEST_RUN(test_unbuilt);
    TEST_RUN(test_service_name);
    return test_done();
}

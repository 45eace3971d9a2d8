/* main.c: the wsgate command line. */
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "core/common.h"
#include "log/log.h"
#include "probe/probe.h"
#include "browser/browser.h"
#include "echo/echo.h"
#include "grpc/grpc.h"
#include "grpc/signer.h"
#include "proxy/proxy.h"
#include "push/push.h"
#include "server/server.h"
#include "agent/agent.h"
#include "sessions/admin.h"
#include "terminal/terminal.h"

static const char usage[] =
    "wsgate " GW_VERSION ": a WebSocket gateway\n"
    "\n"
    "Usage: wsgate [COMMAND] [--help]\n"
    "\n"
    "Commands:\n"
    "  serve      run the gateway (the default): public listener with /healthz, /readyz,\n"
    "             /health, the echo route /probe/ws (and /probe/healthz), the terminal\n"
    "             route /ws/terminal/{allocation_id} and page /terminal/, push events on\n"
    "             /ws/events (POST /v1/events on the admin listener), and the proxy\n"
    "             routes of GATEWAY_ROUTES_FILE (WebSocket relay and HTTP reverse proxy;\n"
    "             SIGHUP reloads it, and the TLS certificate and key); admin listener\n"
    "             with /metrics, /status and the token mint\n"
    "             when GATEWAY_ADMIN_HTTP_ADDR is set. SIGTERM/SIGINT drain and exit 0\n"
    "             within GATEWAY_SHUTDOWN_TIMEOUT.\n"
    "  probe      synthetic monitor: permanent WebSocket legs pinged every interval,\n"
    "             drops counted by reason, Prometheus metrics on :9108 (see\n"
    "             `wsgate probe --help`; PROBE_LEGS, PROBE_LISTEN, PROBE_INTERVAL,\n"
    "             PROBE_TIMEOUT, PROBE_BACKOFF, PROBE_CA_FILE, PROBE_INSECURE)\n"
    "  agent      terminal agent: serves PTYs over WebSocket to the gateway\n"
    "             (`wsgate agent [--listen HOST:PORT|unix:/path] [--grace 60s]\n"
    "             [--scrollback 64KiB] [-- COMMAND ARGS...]`; see `wsgate agent --help`)\n"
    "  token      mint a one-time terminal token through the admin listener\n"
    "             (`wsgate token --allocation ID --upstream URL --user U [--session S]\n"
    "             [--ttl S]`; see `wsgate token --help`)\n"
    "  keygen     make the Ed25519 response signer key (`wsgate keygen --out PREFIX`:\n"
    "             PREFIX.key, PKCS#8 PEM 0600, and PREFIX.pub; see `wsgate keygen --help`)\n"
    "  publish    append an event to the client-events stream through the admin listener\n"
    "             (`wsgate publish --user U --type T [--payload JSON] [--session ID]`);\n"
    "             subscribers read it on /ws/events (see `wsgate publish --help`)\n"
    "  version    print the version\n"
    "  help       print this text\n"
    "\n"
    "Configuration comes from the environment:\n";

static void print_help(FILE *f)
{
    fputs(usage, f);
    fputs(gw_config_help, f);
    fputs("\n", f);
    fputs(gw_terminal_help, f);
}

static const char *env_get(const char *name) { return getenv(name); }

static void warn_unbuilt(const char *name, const char *feature, void *arg)
{
    GW_UNUSED(arg);
    gw_log_line *l = gw_log_begin(GW_LOG_WARN, "variable of a feature not built yet: ignored", NULL);
    if (l) {
        gw_log_str(l, "variable", name, 0);
        gw_log_str(l, "feature", feature, 0);
        gw_log_end(l);
    }
}

static int cmd_serve(void)
{
    /* Buffers are allocated while bytes wait and freed when they leave: keep
     * freed memory in the allocator instead of returning it to the kernel
     * each time (which costs a page fault per page on the next burst). */
    mallopt(M_TRIM_THRESHOLD, 64 * 1024 * 1024);
    mallopt(M_MMAP_THRESHOLD, 8 * 1024 * 1024);
    gw_config cfg;
    char err[512];
    if (gw_config_load(&cfg, env_get, err, sizeof err) != GW_OK) {
        gw_log_init(GW_LOG_FORMAT_JSON, GW_LOG_INFO, "wsgate", 2);
        gw_log_line *l = gw_log_begin(GW_LOG_ERROR, "invalid configuration", NULL);
        if (l) {
            gw_log_str(l, "error", err, 0);
            gw_log_end(l);
        }
        return 2;
    }
    gw_log_init(cfg.log_format, cfg.log_level, cfg.service_name, 2);
    gw_config_unbuilt(env_get, warn_unbuilt, NULL);
    /* The route kinds of this build: one line each. */
    gw_kind_register(&gw_kind_echo);
    gw_kind_register(&gw_kind_proxy);
    gw_kind_register(&gw_kind_auth);
    gw_kind_register(&gw_kind_terminal);
    gw_kind_register(&gw_kind_events);
    gw_kind_register(&gw_kind_browser);
    gw_kind_register(&gw_kind_command);
    gw_push_init(&cfg); /* before the store: the Redis reader starts at the history window */
    /* gRPC: the signer key (a missing or unreadable one stops the start), the
     * event encoder (before anything is appended), its listener. */
    if (gw_grpc_init(&cfg, err, sizeof err) != GW_OK) {
        gw_log_line *l = gw_log_begin(GW_LOG_ERROR, "invalid configuration", NULL);
        if (l) {
            gw_log_str(l, "error", err, 0);
            gw_log_end(l);
        }
        return 2;
    }
    if (gw_grpc_enabled())
        gw_server_listen_protocol(&cfg.grpc_addr, &gw_grpc_proto, gw_grpc_tls_ctx(), gw_grpc_tls_make);
    if (gw_terminal_init(&cfg, err, sizeof err) != GW_OK) {
        gw_log_line *l = gw_log_begin(GW_LOG_ERROR, "invalid configuration", NULL);
        if (l) {
            gw_log_str(l, "error", err, 0);
            gw_log_end(l);
        }
        return 2;
    }
    gw_sessions_admin_init(cfg.store_timeout_ms);
    if (gw_server_start(&cfg, err, sizeof err) != GW_OK) {
        gw_log_line *l = gw_log_begin(GW_LOG_ERROR, "startup failed", NULL);
        if (l) {
            gw_log_str(l, "error", err, 0);
            gw_log_end(l);
        }
        return 1;
    }
    gw_grpc_log_off();
    return gw_server_run();
}

int main(int argc, char **argv)
{
    const char *cmd = argc > 1 ? argv[1] : "serve";
    if (strcmp(cmd, "probe") == 0)
        return gw_probe_main(argc - 1, argv + 1); /* it has its own --help */
    if (strcmp(cmd, "agent") == 0)
        return gw_agent_main(argc - 1, argv + 1); /* it has its own --help */
    if (strcmp(cmd, "token") == 0)
        return gw_token_cli_main(argc - 1, argv + 1); /* it has its own --help */
    if (strcmp(cmd, "keygen") == 0)
        return gw_keygen_main(argc, argv);
    if (strcmp(cmd, "publish") == 0)
        return gw_publish_cli_main(argc - 1, argv + 1); /* it has its own --help */
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            print_help(stdout);
            return 0;
        }
    }
    if (strcmp(cmd, "serve") == 0)
        return cmd_serve();
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("wsgate %s\n", GW_VERSION);
        return 0;
    }
    if (strcmp(cmd, "help") == 0) {
        print_help(stdout);
        return 0;
    }
    fprintf(stderr, "wsgate: unknown command \"%s\"\n\n", cmd);
    print_help(stderr);
    return 2;
}

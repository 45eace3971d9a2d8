/* token_cli.c: `wsgate token`: mints a terminal token through the admin
 * listener (GATEWAY_ADMIN_HTTP_ADDR, with GATEWAY_ADMIN_TOKEN) and prints
 * the JSON answer. A blocking client: one request, Connection: close. */
#include <errno.h>
#include <jansson.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "config/config.h"
#include "core/common.h"
#include "terminal/terminal.h"

static const char token_usage[] =
    "Usage: wsgate token --allocation ID --upstream URL --user USER [--session ID] [--ttl SECONDS]\n"
    "                    [--region R] [--tenant T] [--project P]\n"
    "\n"
    "Mints a one-time terminal token (POST /v1/terminal/tokens on the admin listener) and prints\n"
    "the JSON answer: {token, expires_at, url, subprotocol, session_id, ...}. The browser offers\n"
    "the token in Sec-WebSocket-Protocol: new WebSocket(url, [\"wsgate.terminal.v1\", token]).\n"
    "\n"
    "  --allocation ID   allocation the token is bound to (/ws/terminal/ID)\n"
    "  --upstream URL    the agent: ws://host:port[/path], wss://..., or unix:/path/to.sock; it must\n"
    "                    match a terminal route's agent_upstreams (default: loopback and unix sockets)\n"
    "  --user USER       user id (sent to the agent as X-Wsgate-User-Id)\n"
    "  --session ID      terminal session to create or re-attach (default: a new one)\n"
    "  --ttl SECONDS     lifetime, 1..600 (default 60)\n"
    "  --region, --tenant, --project   fields of the logged resource name\n"
    "\n"
    "Environment: GATEWAY_ADMIN_HTTP_ADDR (required; host:port, :port or unix:/path),\n"
    "GATEWAY_ADMIN_TOKEN (sent as Authorization: Bearer when set).\n"
    "Exit status: 0 when minted, 1 when refused (the error envelope goes to stderr), 2 on usage errors.\n";

static int connect_admin(const gw_addr *a, char *err, size_t cap)
{
    if (a->is_unix) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un un = {.sun_family = AF_UNIX};
        snprintf(un.sun_path, sizeof un.sun_path, "%s", a->path);
        if (fd < 0 || connect(fd, (struct sockaddr *)&un, sizeof un) != 0) {
            snprintf(err, cap, "connect unix:%s: %s", a->path, strerror(errno));
            if (fd >= 0)
                close(fd);
            return -1;
        }
        return fd;
    }
    const char *host = a->host[0] && strcmp(a->host, "0.0.0.0") != 0 && strcmp(a->host, "::") != 0 ? a->host
                                                                                                    : "127.0.0.1";
    char port[8];
    snprintf(port, sizeof port, "%u", a->port);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        snprintf(err, cap, "resolve %s: %s", host, gai_strerror(rc));
        return -1;
    }
    int fd = -1;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        snprintf(err, cap, "connect %s:%s: %s", host, port, strerror(errno));
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    return fd;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int gw_token_cli_main(int argc, char **argv)
{
    const char *alloc = NULL, *up = NULL, *user = NULL, *sess = NULL, *region = NULL, *tenant = NULL,
               *project = NULL;
    long ttl = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(token_usage, stdout);
            return 0;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "wsgate token: %s needs a value\n\n%s", a, token_usage);
            return 2;
        }
        const char *v = argv[++i];
        if (strcmp(a, "--allocation") == 0)
            alloc = v;
        else if (strcmp(a, "--upstream") == 0)
            up = v;
        else if (strcmp(a, "--user") == 0)
            user = v;
        else if (strcmp(a, "--session") == 0)
            sess = v;
        else if (strcmp(a, "--region") == 0)
            region = v;
        else if (strcmp(a, "--tenant") == 0)
            tenant = v;
        else if (strcmp(a, "--project") == 0)
            project = v;
        else if (strcmp(a, "--ttl") == 0) {
            char *end;
            uint64_t ms;
            ttl = strtol(v, &end, 10);
            if (*end) { /* also accept durations like "90s" or "5m" */
                if (gw_parse_duration_ms(v, &ms) != GW_OK) {
                    fprintf(stderr, "wsgate token: --ttl: cannot parse \"%s\"\n", v);
                    return 2;
                }
                ttl = (long)(ms / 1000);
            }
        } else {
            fprintf(stderr, "wsgate token: unknown option \"%s\"\n\n%s", a, token_usage);
            return 2;
        }
    }
    if (!alloc || !up || !user) {
        fprintf(stderr, "wsgate token: --allocation, --upstream and --user are required\n\n%s", token_usage);
        return 2;
    }
    const char *addr_s = getenv("GATEWAY_ADMIN_HTTP_ADDR");
    gw_addr addr;
    if (!addr_s || !addr_s[0] || gw_parse_addr(addr_s, &addr) != GW_OK || !addr.set) {
        fprintf(stderr, "wsgate token: GATEWAY_ADMIN_HTTP_ADDR must name the gateway's admin listener\n");
        return 2;
    }
    json_t *o = json_pack("{s:s, s:s, s:s}", "allocation_id", alloc, "upstream", up, "user_id", user);
    if (sess)
        json_object_set_new(o, "session_id", json_string(sess));
    if (region)
        json_object_set_new(o, "region", json_string(region));
    if (tenant)
        json_object_set_new(o, "tenant_id", json_string(tenant));
    if (project)
        json_object_set_new(o, "project_id", json_string(project));
    if (ttl)
        json_object_set_new(o, "ttl_s", json_integer(ttl));
    char *body = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!body) {
        fprintf(stderr, "wsgate token: arguments are not valid UTF-8\n");
        return 2;
    }

    const char *tok = getenv("GATEWAY_ADMIN_TOKEN");
    char err[300] = "";
    int fd = connect_admin(&addr, err, sizeof err);
    if (fd < 0) {
        fprintf(stderr, "wsgate token: %s\n", err);
        free(body);
        return 1;
    }
    char head[1024];
    int hn = snprintf(head, sizeof head,
                      "POST /v1/terminal/tokens HTTP/1.1\r\nHost: wsgate-admin\r\nContent-Type: application/json\r\n"
                      "Content-Length: %zu\r\nConnection: close\r\n%s%s%s\r\n",
                      strlen(body), tok && tok[0] ? "Authorization: Bearer " : "", tok && tok[0] ? tok : "",
                      tok && tok[0] ? "\r\n" : "");
    if (hn < 0 || (size_t)hn >= sizeof head || write_all(fd, head, (size_t)hn) != 0 ||
        write_all(fd, body, strlen(body)) != 0) {
        fprintf(stderr, "wsgate token: cannot send the request\n");
        free(body);
        close(fd);
        return 1;
    }
    free(body);
    /* Read the whole answer (the server closes), 10 s at most. */
    size_t cap = 65536, n = 0;
    char *resp = malloc(cap);
    for (;;) {
        struct pollfd pf = {fd, POLLIN, 0};
        if (poll(&pf, 1, 10000) <= 0)
            break;
        if (n + 1 >= cap)
            break;
        ssize_t r = read(fd, resp + n, cap - 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    resp[n] = '\0';
    int status = 0;
    char *bodyp = strstr(resp, "\r\n\r\n");
    if (sscanf(resp, "HTTP/1.%*d %d", &status) != 1 || !bodyp) {
        fprintf(stderr, "wsgate token: no valid HTTP answer from %s\n", addr_s);
        free(resp);
        return 1;
    }
    bodyp += 4;
    if (status == 201) {
        printf("%s\n", bodyp);
        free(resp);
        return 0;
    }
    fprintf(stderr, "wsgate token: refused with %d: %s\n", status, bodyp);
    free(resp);
    return 1;
}

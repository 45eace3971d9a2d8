/* token_cli.c: `wsgate token`: mints a terminal token through the admin
 * listener (GATEWAY_ADMIN_HTTP_ADDR, with GATEWAY_ADMIN_TOKEN) and prints
 * the JSON answer. A blocking client: one request, Connection: close. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/admin_client.h"
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

    char err[300] = "", *answer = NULL;
    int status = gw_admin_post("/v1/terminal/tokens", body, &answer, err, sizeof err);
    free(body);
    if (status < 0) {
        fprintf(stderr, "wsgate token: %s\n", err);
        return 2;
    }
    if (status == 0) {
        fprintf(stderr, "wsgate token: %s\n", err);
        return 1;
    }
    if (status == 201) {
        printf("%s\n", answer);
        free(answer);
        return 0;
    }
    fprintf(stderr, "wsgate token: refused with %d: %s\n", status, answer);
    free(answer);
    return 1;
}

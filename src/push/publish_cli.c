/* publish_cli.c: `wsgate publish`: appends one event to the client-events
 * stream through the admin listener (POST /v1/events) and prints its id. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/admin_client.h"
#include "push/push.h"

static const char publish_usage[] =
    "Usage: wsgate publish --user USER --type TYPE [--payload JSON] [--session DEVICE_SESSION_ID]\n"
    "\n"
    "Appends one event to the client-events stream (POST /v1/events on the admin listener: the\n"
    "embedded stream, or XADD to GATEWAY_CLIENT_EVENTS_REDIS_STREAM on Redis) and prints the\n"
    "answer {\"id\":...}: the event id, which subscribers resume from (?cursor= or Last-Event-ID).\n"
    "\n"
    "  --user USER       the user whose /ws/events streams get it\n"
    "  --type TYPE       the event's type\n"
    "  --payload JSON    the event's payload, JSON text (default null)\n"
    "  --session ID      only that device session's streams get it\n"
    "\n"
    "Environment: GATEWAY_ADMIN_HTTP_ADDR (required), GATEWAY_ADMIN_TOKEN (sent as Authorization: Bearer).\n"
    "Exit status: 0 when published, 1 when refused (the error envelope goes to stderr), 2 on usage errors.\n";

int gw_publish_cli_main(int argc, char **argv)
{
    const char *user = NULL, *type = NULL, *payload = NULL, *sess = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(publish_usage, stdout);
            return 0;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "wsgate publish: %s needs a value\n\n%s", a, publish_usage);
            return 2;
        }
        const char *v = argv[++i];
        if (strcmp(a, "--user") == 0)
            user = v;
        else if (strcmp(a, "--type") == 0)
            type = v;
        else if (strcmp(a, "--payload") == 0)
            payload = v;
        else if (strcmp(a, "--session") == 0)
            sess = v;
        else {
            fprintf(stderr, "wsgate publish: unknown option \"%s\"\n\n%s", a, publish_usage);
            return 2;
        }
    }
    if (!user || !type) {
        fprintf(stderr, "wsgate publish: --user and --type are required\n\n%s", publish_usage);
        return 2;
    }
    json_t *o = json_pack("{s:s, s:s}", "user_id", user, "type", type);
    if (o && payload)
        json_object_set_new(o, "payload", json_string(payload)); /* a string holds JSON text */
    if (o && sess)
        json_object_set_new(o, "device_session_id", json_string(sess));
    char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!body) {
        fprintf(stderr, "wsgate publish: arguments are not valid UTF-8\n");
        return 2;
    }
    char err[300] = "", *answer = NULL;
    int status = gw_admin_post("/v1/events", body, &answer, err, sizeof err);
    free(body);
    if (status <= 0) {
        fprintf(stderr, "wsgate publish: %s\n", err);
        return status < 0 ? 2 : 1;
    }
    if (status == 201) {
        printf("%s\n", answer);
        free(answer);
        return 0;
    }
    fprintf(stderr, "wsgate publish: refused with %d: %s\n", status, answer);
    free(answer);
    return 1;
}

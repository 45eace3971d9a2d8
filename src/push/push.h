/* push.h: push events (DESIGN.md section 5): the /ws/events route kind,
 * admin POST /v1/events, and the fan-out of the client-events stream to the
 * subscribers of every worker (ARCHITECTURE.md "Push"). */
#ifndef GW_PUSH_H
#define GW_PUSH_H

#include <stddef.h>

#include "config/config.h"
#include "server/kind.h"

extern const gw_kind gw_kind_events;

/* Sets up the history (GATEWAY_PUSH_HISTORY_WINDOW), the fan-out, the
 * revocation hook, metrics and POST /v1/events. Call before the store is
 * made (gw_terminal_init): the Redis reader starts at the window's start. */
void gw_push_init(const gw_config *cfg);

/* `wsgate publish`: posts one event to the admin listener. */
int gw_publish_cli_main(int argc, char **argv);

#endif

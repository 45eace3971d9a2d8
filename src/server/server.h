/* server.h: the gateway process: start-up, workers, listeners, route
 * reloads, the SIGTERM drain. (What the workers share is in state.h.) */
#ifndef GW_SERVER_H
#define GW_SERVER_H

#include <stddef.h>

#include "config/config.h"

int gw_server_start(const gw_config *cfg, char *err, size_t errcap);
/* Blocks until SIGTERM/SIGINT, drains, and returns the exit status. */
int gw_server_run(void);
/* Loads GATEWAY_ROUTES_FILE again; on success swaps the table in. */
int gw_server_reload_routes(char *err, size_t errcap);

#endif

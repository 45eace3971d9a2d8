/* server.h: the gateway process: start-up, workers, listeners, route
 * reloads, the SIGTERM drain. (What the workers share is in state.h.) */
#ifndef GW_SERVER_H
#define GW_SERVER_H

#include <stddef.h>

#include "config/config.h"

struct gw_client_proto;
/* Before gw_server_start: a listener on a (when set) whose connections are
 * served by proto from accept on (TLS first with tls_ctx, NULL for none;
 * tls_make builds a fresh context from the certificate files when SIGHUP
 * rotates them); one SO_REUSEPORT socket per worker, closed when the
 * workers drain. */
void gw_server_listen_protocol(const gw_addr *a, const struct gw_client_proto *proto, void *tls_ctx,
                               void *(*tls_make)(const char *cert, const char *key, char *err, size_t errcap));
int gw_server_start(const gw_config *cfg, char *err, size_t errcap);
/* Blocks until SIGTERM/SIGINT, drains, and returns the exit status. */
int gw_server_run(void);
/* Loads GATEWAY_ROUTES_FILE again; on success swaps the table in. */
int gw_server_reload_routes(char *err, size_t errcap);

#endif

/* admin_client.h: the command line's client for the admin listener
 * (`wsgate token`, `wsgate publish`): one blocking request, Connection:
 * close, to GATEWAY_ADMIN_HTTP_ADDR with GATEWAY_ADMIN_TOKEN. */
#ifndef GW_ADMIN_CLIENT_H
#define GW_ADMIN_CLIENT_H

#include <stddef.h>

/* POSTs body (JSON) to path. Returns the HTTP status (0 when no valid answer
 * came; err says why) and sets *resp_body to the answer's body (free it).
 * Returns -1 when GATEWAY_ADMIN_HTTP_ADDR does not name a listener. */
int gw_admin_post(const char *path, const char *body, char **resp_body, char *err, size_t errcap);

#endif

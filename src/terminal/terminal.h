/* terminal.h: the terminal gateway (DESIGN.md section 4), gateway side.
 *
 * gw_terminal_init() wires the module into the server before it starts:
 *  - admin POST /v1/terminal/tokens mints one-time tokens (an admin write
 *    API: GATEWAY_ADMIN_TOKEN bearer when set);
 *  - the route kind "terminal" (/ws/terminal/{allocation_id}): the token
 *    from Sec-WebSocket-Protocol is consumed atomically before anything is
 *    dialled, then the client is relayed to the token's agent with the agent
 *    secret and the session headers;
 *  - GET /terminal/ serves the browser page (xterm.js) and its config.json;
 *  - POST /terminal/demo-token, only when GATEWAY_TERMINAL_DEMO_UPSTREAM is
 *    set (an explicit, loudly logged opt-in for demos).
 *
 * Variables read here with getenv (documented in README and in
 * gw_terminal_help): GATEWAY_TERMINAL_WEB_DIR, GATEWAY_TERMINAL_TOKEN_URL,
 * GATEWAY_TERMINAL_DEMO_UPSTREAM, GATEWAY_TERMINAL_DEMO_ALLOCATION. */
#ifndef GW_TERMINAL_H
#define GW_TERMINAL_H

#include <stddef.h>

#include "config/config.h"
#include "server/kind.h"
#include "store/tokens.h"

#define GW_TERMINAL_SUBPROTOCOL "wsgate.terminal.v1"

/* Registers the handlers and creates the token store. Call once, before
 * gw_server_start. GW_OK, or GW_ERR with a one-line reason in err (a bad
 * GATEWAY_TERMINAL_* value). */
int gw_terminal_init(const gw_config *cfg, char *err, size_t errcap);
/* The route kind "terminal" (registered in main.c). */
extern const gw_kind gw_kind_terminal;

/* Field checks shared by the admin API and the demo issuer. An id is 1..max
 * characters of [A-Za-z0-9._-] (user ids also '@' and '+'): safe in paths,
 * headers, logs and resource names without escaping. */
int gw_terminal_id_ok(const char *s, size_t max, int user);

/* `wsgate token ...`: mints a token through the admin listener and prints
 * the JSON answer. Returns the exit status. */
int gw_token_cli_main(int argc, char **argv);

/* Help text of the variables this module reads. */
extern const char gw_terminal_help[];

#endif

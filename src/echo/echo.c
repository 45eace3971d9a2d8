/* echo.c: the echo route kind: an unauthenticated WebSocket that sends every
 * message back (the synthetic monitor's target, /probe/ws by default). */
#include "echo/echo.h"

#include <jansson.h>

#include "core/common.h"
#include "server/http_serve.h"
#include "server/state.h"
#include "server/ws_serve.h"

static const char *const echo_protocols[] = {"wsgate.echo.v1", NULL};

static void echo_message(gw_wsconn *wsc, int opcode, uint8_t *p, size_t n) { gw_ws_send(&wsc->ws, opcode, p, n); }

static const gw_ws_app echo_app = {.message = echo_message};

static int echo_parse(json_t *o, gw_route *r, const gw_config *cfg, char *err, size_t errcap)
{
    GW_UNUSED(err);
    GW_UNUSED(errcap);
    r->protocols = echo_protocols;
    if (!o || !json_object_get(o, "idle_timeout"))
        r->idle_ms = cfg->echo_idle_timeout_ms;
    return GW_OK;
}

static int echo_serve(gw_client *c, gw_http_req *req, const gw_route *r, gw_route_table *table, const gw_req_ids *ids)
{
    return gw_ws_serve_upgrade(c, req, r, table, ids->corr, ids->trace, &echo_app, 0) == GW_OK ? GW_DONE : GW_OK;
}

const gw_kind gw_kind_echo = {
    .name = "echo",
    .default_path = "/probe/ws",
    .parse = echo_parse,
    .serve = echo_serve,
};

/* auth.c: the `auth` route kind: the public /v1/auth/... endpoints (sign-in,
 * token refresh: the control plane's auth service, DESIGN.md section 6 and
 * README "Routes"). With an upstream the requests are proxied like a proxy
 * route (streamed, pooled, forwarded headers); without one (the default
 * route) every request answers 503 service_unavailable with the envelope,
 * so clients see a clear "not configured" instead of a 404. */
#include <stdio.h>
#include <string.h>

#include <jansson.h>

#include "core/common.h"
#include "http/ws_handshake.h"
#include "log/log.h"
#include "proxy/proxy.h"
#include "server/state.h"

static const char *const auth_fields[] = {"upstream", NULL};

static int auth_parse(json_t *o, gw_route *r, const gw_config *cfg, char *err, size_t errcap)
{
    GW_UNUSED(cfg);
    if (!o || !json_object_get(o, "upstream"))
        return GW_OK; /* no auth upstream: 503 */
    return gw_route_parse_upstreams(o, r, err, errcap);
}

static int auth_serve(gw_client *c, gw_http_req *req, const gw_route *r, gw_route_table *table,
                      const gw_req_ids *ids)
{
    if (!r->upstream || gw_ws_is_upgrade(req)) {
        gw_log_line *l = gw_log_begin(GW_LOG_WARN, "auth request refused: no auth upstream", ids->corr);
        if (l) {
            gw_log_strn(l, "path", req->path.p, req->path.n, 0);
            gw_log_str(l, "ip", c->ip, 0);
            gw_log_end(l);
        }
        gw_http_error_ids(c, 503, "service_unavailable",
                          r->upstream ? "the auth endpoints do not take WebSocket upgrades"
                                      : "no auth upstream is configured",
                          req, NULL, ids);
        return GW_OK;
    }
    c->close_after = !gw_http_keep_alive(req) || atomic_load_explicit(&gw_srv.draining, memory_order_relaxed);
    gw_proxy_start(c, req, r, table, ids, r->upstream);
    return GW_DONE;
}

const gw_kind gw_kind_auth = {
    .name = "auth",
    .flags = GW_KIND_HTTP | GW_KIND_UPSTREAM,
    .fields = auth_fields,
    .default_path = "/v1/auth/",
    .parse = auth_parse,
    .serve = auth_serve,
};

/* state.c: the process-wide gw_srv, the current route table, the metric
 * families every module uses, and what a worker keeps past its clients. */
#include "server/state.h"

#include <stdio.h>

#include "core/common.h"

gw_server gw_srv;

gw_route_table *gw_server_routes(void)
{
    pthread_mutex_lock(&gw_srv.routes_mu);
    gw_route_table *t = gw_srv.routes;
    gw_routes_ref(t);
    pthread_mutex_unlock(&gw_srv.routes_mu);
    return t;
}

static gw_metric *route_metric(const char *name, gw_metric_type type, const char *help, const gw_route *r,
                               const char *key, const char *val)
{
    char route[256], labels[512];
    gw_metrics_label_escape(r ? r->label : "", route, sizeof route);
    if (key)
        snprintf(labels, sizeof labels, "route=\"%s\",%s=\"%s\"", route, key, val);
    else
        snprintf(labels, sizeof labels, "route=\"%s\"", route);
    return gw_metric_get(name, type, help, labels);
}

gw_metric *gw_metric_handshake(const gw_route *r, const char *result)
{
    return route_metric("wsgate_ws_handshakes_total", GW_METRIC_COUNTER,
                        "WebSocket upgrade attempts by route and result.", r, "result", result);
}

gw_metric *gw_metric_close(const gw_route *r, const char *cause)
{
    return route_metric("wsgate_ws_closes_total", GW_METRIC_COUNTER,
                        "WebSocket sessions ended, by route and cause.", r, "cause", cause);
}

gw_metric *gw_metric_http(int admin, int status)
{
    /* Few distinct statuses exist; the registry lookup is cheap enough for
     * HTTP (WebSocket messages never come here). */
    char labels[64];
    snprintf(labels, sizeof labels, "listener=\"%s\",code=\"%d\"", admin ? "admin" : "public", status);
    return gw_metric_get("wsgate_http_responses_total", GW_METRIC_COUNTER,
                         "HTTP responses sent by the gateway itself, by listener and status.", labels);
}

void gw_worker_maybe_stop(gw_worker *w)
{
    if (w->draining && !w->hold && w->nclients == 0 && w->nlingering == 0)
        gw_loop_stop(w->loop);
}

void gw_worker_linger(gw_worker *w, gw_linger *l, const void *owner, void (*free_fn)(gw_linger *l))
{
    l->owner = owner;
    l->free = free_fn;
    gw_list_insert_tail(&w->lingering, &l->node);
    w->nlingering++;
}

void gw_worker_unlinger(gw_worker *w, gw_linger *l)
{
    gw_list_remove(&l->node);
    w->nlingering--;
    gw_worker_maybe_stop(w);
}

static void free_list(gw_list *list)
{
    while (!gw_list_empty(list)) {
        gw_linger *l = gw_container_of(list->next, gw_linger, node);
        gw_list_remove(&l->node);
        l->free(l);
    }
}

void gw_worker_free_idle(gw_worker *w) { free_list(&w->idle); }

void gw_worker_free_lingering(gw_worker *w)
{
    free_list(&w->lingering);
    w->nlingering = 0;
    free_list(&w->idle);
}

/* admin_wait.h: an admin API request held while the store answers it
 * (POST /v1/sessions, POST /v1/events, GET /v1/presence/USER): the client
 * waits in the held phase (gw_client_wait) until the answer or
 * GATEWAY_STORE_TIMEOUT, which answers 503 service_unavailable with the
 * envelope. Embed a gw_admin_wait first in the request's own state. */
#ifndef GW_ADMIN_WAIT_H
#define GW_ADMIN_WAIT_H

#include <stdint.h>

#include "http/h1_parse.h"
#include "server/client.h"
#include "server/http_serve.h"
#include "store/store.h"

typedef struct gw_admin_wait gw_admin_wait;
struct gw_admin_wait {
    gw_client *c;
    gw_store_op *op;     /* the store request; NULL once answered */
    gw_http_req *req;    /* a copy of the request head */
    gw_req_ids ids;
    const char *late;    /* the 503's message at the deadline */
    void (*free)(gw_admin_wait *w); /* frees the state w is embedded in */
};

/* Holds c (w already zeroed, late and free set) for the store request op
 * until timeout_ms from now. */
void gw_admin_wait_hold(gw_admin_wait *w, gw_client *c, const gw_http_req *req, const gw_req_ids *ids,
                        gw_store_op *op, uint64_t timeout_ms);
/* In the store's answer: ends the wait (the caller then answers c). */
gw_client *gw_admin_wait_answered(gw_admin_wait *w);
/* After the answer: the client reads again; w's state is freed. */
void gw_admin_wait_done(gw_admin_wait *w);

#endif

/* admin_wait.c: an admin API request held while the store answers it (see
 * admin_wait.h). */
#include "server/admin_wait.h"

#include "core/common.h"
#include "server/http_serve.h"
#include "server/state.h"

static void wait_free(gw_admin_wait *w)
{
    if (w->op)
        gw_store_cancel(gw_store_current(), w->op);
    gw_h1_req_clone_free(w->req);
    w->req = NULL;
    w->free(w);
}

static void wait_abort(gw_client *c, void *data)
{
    GW_UNUSED(c);
    wait_free(data);
}

static void wait_deadline(gw_client *c, void *data)
{
    gw_admin_wait *w = data;
    gw_client_wait_end(c);
    gw_http_error_ids(c, 503, "service_unavailable", w->late, w->req, NULL, &w->ids);
    gw_client_resume(c);
    wait_free(w);
}

static const gw_client_wait_ops wait_ops = {wait_deadline, wait_abort};

void gw_admin_wait_hold(gw_admin_wait *w, gw_client *c, const gw_http_req *req, const gw_req_ids *ids,
                        gw_store_op *op, uint64_t timeout_ms)
{
    w->c = c;
    w->req = gw_h1_req_clone(req);
    w->ids = *ids;
    w->op = op; /* a store never answers inside the call that made op */
    gw_client_wait(c, &wait_ops, w, gw_loop_now(c->w->loop) + timeout_ms);
}

gw_client *gw_admin_wait_answered(gw_admin_wait *w)
{
    w->op = NULL;
    gw_client_wait_end(w->c);
    return w->c;
}

void gw_admin_wait_done(gw_admin_wait *w)
{
    gw_client_resume(w->c);
    wait_free(w);
}

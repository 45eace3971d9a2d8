/* admin.c: POST /v1/sessions and GET /v1/sessions/ID (see admin.h). */
#include "sessions/admin.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/common.h"
#include "http/h1_parse.h"
#include "log/log.h"
#include "server/admin_wait.h"
#include "server/client.h"
#include "server/http_serve.h"
#include "server/state.h"
#include "store/sessions.h"
#include "store/store.h"

static uint64_t timeout_ms;

typedef struct pub_wait {
    gw_admin_wait w; /* first */
    gw_session snap;
} pub_wait;

static void pub_free(gw_admin_wait *aw) { gw_free(aw); }

static void published(void *ud, int rc, const char *id)
{
    pub_wait *w = ud;
    gw_client *c = gw_admin_wait_answered(&w->w);
    if (rc != GW_OK) {
        gw_http_error_ids(c, 503, "service_unavailable", "the session store is unavailable", w->w.req, NULL,
                          &w->w.ids);
    } else {
        json_t *o = json_pack("{s:s, s:I, s:s, s:o}", "device_session_id", w->snap.device_session_id, "version",
                              (json_int_t)w->snap.version, "status", gw_session_status_str(w->snap.status), "id",
                              id && id[0] ? json_string(id) : json_null());
        char *body = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        if (body)
            gw_http_respond(c, w->w.req, &w->w.ids, 202, "application/json", body, strlen(body), NULL);
        else
            gw_http_error_ids(c, 500, "internal_error", "cannot encode the answer", w->w.req, NULL, &w->w.ids);
        free(body);
        gw_log_line *l = gw_log_begin(GW_LOG_INFO, "session snapshot published", w->w.ids.corr);
        if (l) {
            gw_log_str(l, "device_session_id", w->snap.device_session_id, 0);
            gw_log_str(l, "user", w->snap.user_id, 0);
            gw_log_str(l, "status", gw_session_status_str(w->snap.status), 0);
            gw_log_int(l, "version", (int64_t)w->snap.version, 0);
            if (id && id[0])
                gw_log_str(l, "entry_id", id, 0);
            gw_log_end(l);
        }
    }
    gw_admin_wait_done(&w->w);
}

static int post_session(gw_client *c, gw_http_req *req, const uint8_t *body, size_t n, const gw_req_ids *ids)
{
    gw_session snap;
    char why[200];
    if (gw_session_from_json(body, n, &snap, why, sizeof why) != GW_OK) {
        gw_http_error_ids(c, 400, "invalid_session", why, req, NULL, ids);
        return GW_OK;
    }
    pub_wait *w = gw_calloc(1, sizeof *w);
    w->snap = snap;
    w->w.late = "the session store did not answer in time";
    w->w.free = pub_free;
    gw_admin_wait_hold(&w->w, c, req, ids,
                       gw_store_session_publish(gw_store_current(), c->w->loop, &w->snap, published, w), timeout_ms);
    return GW_DONE;
}

static int get_session(gw_client *c, gw_http_req *req, const uint8_t *body, size_t n, const gw_req_ids *ids)
{
    GW_UNUSED(body);
    GW_UNUSED(n);
    static const char pfx[] = "/v1/sessions/";
    char id[GW_SESSION_ID_MAX + 1];
    size_t idn = req->path.n - (sizeof pfx - 1);
    gw_session s;
    if (idn == 0 || idn > GW_SESSION_ID_MAX) {
        gw_http_error_ids(c, 404, "not_found", "no such device session", req, NULL, ids);
        return GW_OK;
    }
    memcpy(id, req->path.p + sizeof pfx - 1, idn);
    id[idn] = '\0';
    if (!gw_sessions_get(id, &s)) {
        gw_http_error_ids(c, 404, "not_found", "no such device session", req, NULL, ids);
        return GW_OK;
    }
    json_t *o = json_pack("{s:s, s:s, s:s, s:I}", "device_session_id", s.device_session_id, "user_id", s.user_id,
                          "status", gw_session_status_str(s.status), "version", (json_int_t)s.version);
    gw_http_respond_json(c, req, ids, 200, o, NULL);
    return GW_OK;
}

void gw_sessions_admin_init(uint64_t t)
{
    timeout_ms = t;
    gw_sessions_init();
    gw_http_register(GW_LISTENER_ADMIN, "POST", "/v1/sessions", 1, post_session);
    gw_http_register(GW_LISTENER_ADMIN, "GET", "/v1/sessions/", 1, get_session);
}

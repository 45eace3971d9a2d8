/* ws_serve.h: the WebSocket phase of a connection: the 101, the session
 * engine, heartbeats, idle and close deadlines, drain, and the one "ws close"
 * line and metric per session. What the session is for (echo, a relay to an
 * upstream, later push streams) is a gw_ws_app the route's kind supplies. */
#ifndef GW_WS_SERVE_H
#define GW_WS_SERVE_H

#include <stdint.h>

#include "http/h1_parse.h"
#include "log/log.h"
#include "server/client.h"
#include "server/routes.h"
#include "ws/pmd.h"
#include "ws/ws_session.h"

#define GW_CLOSE_WAIT_MS 5000 /* wait for the peer's Close after ours */

typedef struct gw_wsconn gw_wsconn;

/* A WebSocket application on an upgraded connection. Every entry is
 * optional; the app's state lives right after the gw_wsconn, in the same
 * allocation (app_size bytes, zeroed): gw_ws_app_data(wsc). */
typedef struct gw_ws_app {
    /* A data message from the client (see gw_ws_handler.on_message). */
    void (*message)(gw_wsconn *wsc, int opcode, uint8_t *p, size_t n);
    /* Optional, for an app that forwards messages: whole messages in runs,
     * as they came (see gw_ws_handler.on_run); with it, the session starts
     * with runs on. */
    void (*message_run)(gw_wsconn *wsc, uint8_t *p, size_t n, size_t count, uint64_t payload);
    /* The client sent a valid Close (already answered by the engine). */
    void (*peer_close)(gw_wsconn *wsc, unsigned code, const uint8_t *reason, size_t n);
    /* The client's output queue drained. */
    void (*drained)(gw_wsconn *wsc);
    /* 1 while the app keeps the client's reads paused (its other side is full). */
    int (*keep_paused)(gw_wsconn *wsc);
    /* On the connection's timer (heartbeat, drain, idle checks run too). */
    void (*timer)(gw_wsconn *wsc, uint64_t now);
    /* The gateway itself starts closing the session (drain, heartbeat, idle
     * limit): its Close (code, reason) is on its way to the client. */
    void (*closing)(gw_wsconn *wsc, unsigned code, const char *reason);
    /* The session ends (any path), before its close line. */
    void (*closed)(gw_wsconn *wsc);
    /* Adds the app's fields to the "ws open" (close 0) or "ws close" line. */
    void (*log_fields)(gw_wsconn *wsc, gw_log_line *l, int close);
    /* Frees what the app's state holds (after the close line). */
    void (*free)(gw_wsconn *wsc);
} gw_ws_app;

/* Per-connection WebSocket state, allocated at upgrade. */
struct gw_wsconn {
    gw_ws ws;
    gw_client *c;
    const gw_route *route;
    gw_route_table *table; /* holds route alive across reloads */
    const gw_ws_app *app;
    uint64_t opened_ms;    /* monotonic, at the 101 */
    uint64_t last_seen_ms; /* last bytes from the peer */
    uint64_t last_msg_ms;  /* last data message or ping from the peer (idle limit) */
    uint64_t last_ping_ms; /* last ping we sent */
    uint64_t close_deadline_ms; /* after our Close: give up waiting at this time */
    uint64_t drain_at_ms;  /* draining: our Close 1001 is due at this time (spread over the close window) */
    uint64_t flushed_in, flushed_out, flushed_bin, flushed_bout; /* counts already added to metrics */
    char corr[71];         /* correlation id of the upgrade request (at most 64 characters) */
    uint8_t gateway_closed; /* the gateway's own Close came first (drain, heartbeat, idle limit); sits
                               in corr's spare byte, so an idle session is no bigger */
    char user[64];         /* authenticated user, "-" when anonymous */
};

/* The app's state: app_size bytes right after the gw_wsconn. */
static inline void *gw_ws_app_data(gw_wsconn *wsc) { return wsc + 1; }

/* 1 when the gateway started the close itself: its own deadlines (drain,
 * heartbeat, idle limit) or the engine's limits and protocol checks; not
 * when the client or the app (e.g. a relay carrying its upstream's Close)
 * started it. The client's Close is then only an answer. */
static inline int gw_ws_serve_gateway_closed(const gw_wsconn *wsc)
{
    return wsc->gateway_closed || wsc->ws.error != NULL;
}

/* The connection's WebSocket state, or NULL outside the WebSocket phase. */
gw_wsconn *gw_wsconn_of(const gw_client *c);

void gw_ws_negotiate_deflate(const gw_http_req *req, gw_pmd_params *pmd, char *ext, size_t cap);
size_t gw_ws_build_101(char *out, size_t cap, gw_str key, gw_str proto, const char *ext, const char *corr,
                       const char *trace);
/* Starts the WebSocket phase once the 101 is written: the session engine
 * serving app (with app_size bytes of state, zeroed), metrics. The caller logs "ws open" after
 * setting what it knows (gw_ws_serve_log_open). */
gw_wsconn *gw_ws_serve_open(gw_client *c, const gw_route *r, gw_route_table *table, const char *corr,
                            const char *user, const gw_ws_app *app, size_t app_size, const gw_pmd_params *pmd);
void gw_ws_serve_log_open(gw_wsconn *wsc, gw_str proto, int deflate, const char *trace);
/* Answers a checked upgrade with 101 and starts app on it: the whole
 * upgrade for a kind served by the gateway itself (echo). */
int gw_ws_serve_upgrade(gw_client *c, gw_http_req *req, const gw_route *r, gw_route_table *table, const char *corr,
                        const char *trace, const gw_ws_app *app, size_t app_size);
/* After the app started a close: arm the close-handshake deadline. */
void gw_ws_serve_closing(gw_wsconn *wsc);

/* The one "ws close" line (a session, or an upgrade that never opened):
 * the fields every close has, then the caller's. */
typedef struct gw_ws_close_line {
    int level;
    const char *corr, *user, *ip, *cause, *route;
    uint64_t dur_ms;
    void (*fields)(void *arg, gw_log_line *l); /* the rest (may be NULL) */
    void *arg;
} gw_ws_close_line;
void gw_ws_log_close(const gw_ws_close_line *cl);

#endif

/* server.h: the gateway process: workers, listeners, client connections,
 * routes, and the process-wide state they share. */
#ifndef GW_SERVER_H
#define GW_SERVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <stdint.h>

#include "config/config.h"
#include "core/list.h"
#include "http/h1_parse.h"
#include "loop/loop.h"
#include "metrics/metrics.h"
#include "net/conn.h"
#include "server/routes.h"
#include "ws/ws_session.h"

#define GW_READ_CHUNK (256u * 1024) /* one read per wakeup lands in the worker buffer */
#define GW_OUT_HIGH (1024u * 1024)      /* stop reading a peer whose output queue passes this */
#define GW_CLOSE_WAIT_MS 5000           /* wait for the peer's Close after ours */
#define GW_LINGER_MS 2000               /* read and discard after our last byte before closing */

typedef struct gw_worker gw_worker;

enum gw_client_phase {
    GW_PHASE_TLS = 0, /* TLS handshake in progress */
    GW_PHASE_HTTP,    /* reading HTTP requests */
    GW_PHASE_UPSTREAM, /* upgrade received; waiting for the upstream's answer (reads paused) */
    GW_PHASE_WS,      /* WebSocket session */
    GW_PHASE_PROXY,   /* an HTTP request is being proxied (proxy.c) */
    GW_PHASE_WAIT,    /* a request waits for an asynchronous answer (a store), reads paused, with a deadline */
    GW_PHASE_FINISH,  /* flushing our last bytes, then lingering for the peer's FIN */
    GW_PHASE_CLOSED,  /* socket closed, freed after the batch */
};

/* Per-connection WebSocket state, allocated at upgrade. */
typedef struct gw_wsconn {
    gw_ws ws;
    const gw_route *route;
    gw_route_table *table; /* holds route alive across reloads */
    uint64_t opened_ms;    /* monotonic, at the 101 */
    uint64_t last_seen_ms; /* last bytes from the peer */
    uint64_t last_msg_ms;  /* last data message or ping from the peer (idle limit) */
    uint64_t last_ping_ms; /* last ping we sent */
    uint64_t close_deadline_ms; /* after our Close: give up waiting at this time */
    uint64_t drain_at_ms;  /* draining: our Close 1001 is due at this time (spread over the close window) */
    uint64_t flushed_in, flushed_out, flushed_bin, flushed_bout; /* counts already added to metrics */
    char corr[72];         /* correlation id of the upgrade request */
    char user[64];         /* authenticated user, "-" when anonymous */
    /* relay only */
    gw_wsc *up;            /* the upstream leg; NULL for echo, or once it ended */
    struct relay_leg *leg; /* its user data (relay.c) */
    char *up_url;          /* the upstream, for logs (owned) */
    char *resource_name;   /* terminal sessions: logged on every line (owned) */
    char *session_id;      /* terminal sessions (owned) */
    uint64_t up_last_seen_ms, up_last_ping_ms;
    uint16_t down_code;    /* Close code the client sent (0: none) */
    uint16_t up_code;      /* Close code the upstream sent (0: none) */
    uint8_t closed_first;  /* GW_FIRST_*: which leg ended first */
    uint8_t up_paused;     /* upstream reads paused: the client's queue is long */
} gw_wsconn;

enum { GW_FIRST_NONE = 0, GW_FIRST_DOWNSTREAM, GW_FIRST_UPSTREAM, GW_FIRST_GATEWAY };

typedef struct gw_relay_pending gw_relay_pending;
typedef struct gw_proxy gw_proxy;

/* A request waiting in GW_PHASE_WAIT (see gw_client_wait). */
struct gw_client;
typedef struct gw_client_wait_ops {
    /* The deadline passed before the answer: answer the client (503,
     * envelope, log line with correlation_id), cancel the operation, free
     * data, then call gw_client_wait_end and gw_client_resume. */
    void (*deadline)(struct gw_client *c, void *data);
    /* The connection ends while waiting: cancel the operation, free data
     * (no answer can be written any more). */
    void (*abort)(struct gw_client *c, void *data);
} gw_client_wait_ops;

typedef struct gw_client {
    gw_conn conn;
    gw_worker *w;
    gw_list node;          /* in w->clients */
    gw_task task;          /* deferred free, or re-processing of buffered input */
    gw_timer timer;        /* the one timer: deadlines of the current phase */
    uint8_t phase;         /* enum gw_client_phase */
    uint8_t admin;         /* accepted on the admin listener */
    uint8_t close_after;   /* close once the current response is out */
    uint8_t freeing;       /* task is queued for the deferred free */
    uint8_t served;        /* a request was answered: waiting for the next one is keep-alive idling */
    uint64_t phase_ms;     /* monotonic time the phase (or pending request) started */
    gw_wsconn *wsc;        /* set in GW_PHASE_WS */
    gw_relay_pending *pending; /* set in GW_PHASE_UPSTREAM */
    gw_proxy *proxy;       /* set in GW_PHASE_PROXY */
    const gw_client_wait_ops *wait; /* set in GW_PHASE_WAIT, with wait_data and wait_deadline_ms */
    void *wait_data;
    uint64_t wait_deadline_ms;
    char ip[46];           /* peer address, for logs */
    char *norm_path;       /* the current request's path with dot segments removed (when it had any) */
} gw_client;

typedef struct gw_worker_stats {
    uint64_t http_requests;
} gw_worker_stats;

struct gw_worker {
    int id;
    gw_loop *loop;
    pthread_t thread;
    gw_io pub_lis;     /* public listener (own SO_REUSEPORT socket, or shared) */
    gw_io admin_lis;   /* admin listener (worker 0 only) */
    gw_timer accept_timer; /* re-enables accepting after EMFILE */
    gw_timer stats_timer;  /* flushes per-connection counters to metrics */
    gw_list clients;
    uint32_t nclients;     /* public clients (admin ones are not counted for drain) */
    gw_list orphans;       /* upstream legs finishing their close after the client left */
    gw_list pool;          /* idle keep-alive connections to HTTP upstreams (proxy.c) */
    uint32_t norphans;
    int draining;          /* after GATEWAY_DRAIN_DELAY: listener closed, connections being closed */
    int hold;              /* worker 0 keeps serving /metrics until the others finished draining */
    uint8_t *rbuf;         /* GW_READ_CHUNK bytes: reads land here first */
};

typedef struct gw_server {
    gw_config cfg;
    void *tls_ctx;                /* SSL_CTX * for the public listener, or NULL */
    int nworkers;
    gw_worker *workers;
    atomic_int draining;          /* set at SIGTERM: /readyz answers 503 (the listeners serve on for
                                   * GATEWAY_DRAIN_DELAY; then each worker's draining is set) */
    /* The drain's schedule (monotonic ms), written before the workers are
     * told to drain: WebSocket closes are spread over [close_start,
     * close_start + close_span); everything ends by drain_end. */
    uint64_t drain_close_start_ms, drain_close_span_ms, drain_end_ms;
    atomic_uint_fast64_t nconns;  /* open public client connections, all workers (GATEWAY_MAX_CONNECTIONS) */
    atomic_uint_fast64_t nconns_admin; /* open admin connections (GATEWAY_ADMIN_MAX_CONNECTIONS) */
    uint64_t start_wall_ms;
    uint64_t start_mono_ms;
    gw_h1_limits limits;
    gw_route_table *routes;       /* current table; read under routes_mu and referenced */
    pthread_mutex_t routes_mu;
    /* metrics */
    gw_metric *m_ws_connections;  /* ws_connections (kept name) */
    gw_metric *m_conns_public, *m_conns_admin;
    gw_metric *m_accepted_public, *m_accepted_admin;
    gw_metric *m_rejected, *m_rejected_admin;
    gw_metric *m_tls_fail;
    gw_metric *m_draining;
} gw_server;

extern gw_server gw_srv;

/* server.c */
int gw_server_start(const gw_config *cfg, char *err, size_t errcap);
/* Blocks until SIGTERM/SIGINT, drains, and returns the exit status. */
int gw_server_run(void);
/* The current route table, referenced (release with gw_routes_unref). */
gw_route_table *gw_server_routes(void);
/* Loads GATEWAY_ROUTES_FILE again; on success swaps the table in. */
int gw_server_reload_routes(char *err, size_t errcap);
gw_metric *gw_metric_handshake(const gw_route *r, const char *result);
gw_metric *gw_metric_close(const gw_route *r, const char *cause);
gw_metric *gw_metric_http(int admin, int status);

/* Stops a draining worker's loop once it has nothing left to finish. */
void gw_worker_maybe_stop(gw_worker *w);

/* client.c */
void gw_client_accept(gw_worker *w, int fd, const struct sockaddr_storage *ss, int admin);
void gw_client_close(gw_client *c);
void gw_client_finish(gw_client *c);
void gw_client_drain(gw_client *c);
void gw_client_arm(gw_client *c);
/* Parks the connection in GW_PHASE_WAIT until the waiter's answer comes or
 * deadline_ms (monotonic) passes: reads stay paused (pipelined bytes wait in
 * conn.in), the deadline and the connection's end go to ops. A handler that
 * parks returns GW_DONE; the request it answers later must be copied (its
 * bytes leave conn.in when the handler returns). */
void gw_client_wait(gw_client *c, const gw_client_wait_ops *ops, void *data, uint64_t deadline_ms);
/* The answer came (or the deadline passed): back to GW_PHASE_HTTP. The
 * waiter then writes its response or changes phase (an upgrade), and calls
 * gw_client_resume. */
void gw_client_wait_end(gw_client *c);
/* After a response written outside the read path: finishes the connection
 * when it must close, else resumes reading (buffered input first). Does
 * nothing when the connection left GW_PHASE_HTTP. */
void gw_client_resume(gw_client *c);

/* http_serve.c */
#define GW_SMALL_BODY_MAX (1024u * 1024) /* bodies of the gateway's own endpoints, read whole */

/* Ids of a request: correlation (from X-Correlation-ID / X-Request-ID or
 * generated) and trace (from traceparent or generated). */
typedef struct gw_req_ids {
    char corr[72];
    char trace[33];
} gw_req_ids;

/* A handler for one of the gateway's own endpoints. body is the whole
 * request body (n bytes, read before the call; at most GW_SMALL_BODY_MAX).
 * It writes one response (gw_http_respond / gw_http_error_ids) and returns
 * GW_OK, or returns GW_DONE when it took the connection over (an upgrade). */
typedef int (*gw_http_handler)(gw_client *c, gw_http_req *req, const uint8_t *body, size_t n,
                               const gw_req_ids *ids);

enum { GW_LISTENER_PUBLIC = 1, GW_LISTENER_ADMIN = 2 };
/* Registers a handler before gw_server_start (not thread-safe after).
 * method NULL takes every method; path ending in '/' matches as a prefix.
 * write: an admin write API, refused with 401 unless the request carries
 * Authorization: Bearer GATEWAY_ADMIN_TOKEN (when that variable is set). */
void gw_http_register(int listeners, const char *method, const char *path, int write, gw_http_handler fn);

/* A route kind served by another module (the terminal gateway): called
 * for a valid WebSocket upgrade on a route of that kind. Returns GW_DONE
 * when it took the connection over, GW_OK when it answered with an error. */
typedef int (*gw_route_serve_fn)(gw_client *c, gw_http_req *req, const gw_route *r, gw_route_table *table,
                                 const gw_req_ids *ids);
void gw_route_kind_register(int kind, gw_route_serve_fn fn);

/* 1 when req is for one of the gateway's own registered endpoints. */
int gw_http_has_handler(const gw_client *c, const gw_http_req *req);

/* Handles one complete request (head, and for the gateway's own endpoints
 * its whole small body); returns GW_OK to go on reading, GW_DONE when the
 * connection switched phase or is finishing. */
int gw_http_handle(gw_client *c, gw_http_req *req, size_t head_len, const uint8_t *body, size_t body_len);
/* Writes a complete response with the request's ids. */
void gw_http_respond(gw_client *c, const gw_http_req *req, const gw_req_ids *ids, int status, const char *ctype,
                     const void *body, size_t n, const char *extra_headers);
void gw_http_error_ids(gw_client *c, int status, const char *code, const char *message, const gw_http_req *req,
                       const char *extra_headers, const gw_req_ids *ids);
void gw_http_error(gw_client *c, int status, const char *code, const char *message, const gw_http_req *req,
                   const char *extra_headers);

/* proxy.c */
int gw_proxy_start(gw_client *c, gw_http_req *req, const gw_route *r, gw_route_table *table, const gw_req_ids *ids,
                   const gw_upstream *u);
size_t gw_proxy_feed(gw_client *c, uint8_t *p, size_t n);
void gw_proxy_client_drained(gw_client *c);
void gw_proxy_abort(gw_client *c);
int gw_proxy_body_pending(const gw_client *c);
void gw_proxy_body_timeout(gw_client *c, int too_slow);
uint64_t gw_proxy_body_deadline(const gw_client *c);
void gw_proxy_pool_free(gw_worker *w);

/* ws_serve.c */
void gw_ws_negotiate_deflate(const gw_http_req *req, gw_pmd_params *pmd, char *ext, size_t cap);
size_t gw_ws_build_101(char *out, size_t cap, gw_str key, gw_str proto, const char *ext, const char *corr,
                       const char *trace);
void gw_ws_serve_log_open(gw_client *c, gw_str proto, int deflate, const char *trace);
gw_wsconn *gw_ws_serve_open(gw_client *c, const gw_route *r, gw_route_table *table, const char *corr,
                            const char *user, const gw_ws_handler *h, const gw_pmd_params *pmd);
int gw_ws_serve_upgrade(gw_client *c, gw_http_req *req, const gw_route *r, gw_route_table *table, const char *corr,
                        const char *trace);
size_t gw_ws_serve_feed(gw_client *c, uint8_t *p, size_t n);
void gw_ws_serve_timer(gw_client *c);
void gw_ws_serve_closed(gw_client *c);
void gw_ws_serve_flush_stats(gw_client *c);
uint64_t gw_ws_serve_deadline(gw_client *c);

/* relay.c */
/* What became of a relay's upstream handshake, for the route's owner. */
typedef struct gw_relay_result {
    const char *result;        /* "accepted", "upstream_refused" (an HTTP answer), "upstream_timeout" or
                                  "upstream_unavailable" */
    int upstream_status;       /* the upstream's HTTP status when it refused, else 0 */
    const char *error;         /* what went wrong, when the upstream was not reached ("" otherwise) */
    const char *corr, *ip, *user, *upstream;
    const char *resource_name, *session_id; /* NULL when not given */
} gw_relay_result;

/* How a relay is set up; every field may be NULL. */
typedef struct gw_relay_opts {
    const gw_wsc_target *target; /* upstream (NULL: the route's upstream for user) */
    const char *upstream_url;    /* the upstream as logged (with target) */
    const char *extra_headers;   /* complete "Name: value\r\n" lines added toward the upstream */
    const char *user;            /* user for per-user upstreams and logs */
    const char *offer_protocols; /* subprotocols offered upstream (NULL: the client's; "": none) */
    const char *select_protocol; /* subprotocol the 101 selects (NULL: the upstream's pick) */
    const char *resource_name;   /* logged on every line of the session (terminal) */
    const char *session_id;      /* logged on every line of the session (terminal) */
    void (*on_result)(const gw_relay_result *res); /* called once the upstream accepted or refused */
} gw_relay_opts;

int gw_relay_ws_start(gw_client *c, gw_http_req *req, const gw_route *r, gw_route_table *table,
                      const gw_req_ids *ids, const gw_relay_opts *o);
void gw_relay_pending_abort(gw_client *c);
/* 1 when name is listed in a Connection header of hdrs (RFC 9110 section
 * 7.6.1: such headers are hop-by-hop and never forwarded). */
int gw_h1_connection_lists(const gw_http_header *hdrs, size_t n, gw_str name);
/* The forwarded header lines toward an upstream (see relay.c), in a buffer
 * allocated to fit whatever the client sent (gw_free it); *len its length.
 * NULL only if the size bound is broken (a bug: callers refuse and log). */
char *gw_relay_build_headers(const gw_client *c, const gw_http_req *req, const char *corr, const char *trace,
                             const char *extra, size_t *len);
/* The request target toward the upstream, whole, allocated (gw_free it). */
char *gw_relay_upstream_path(const gw_route *r, const gw_upstream *u, const gw_http_req *req);
extern const gw_ws_handler gw_relay_handler;
/* The downstream session ended: forward its close to the upstream leg. */
void gw_relay_downstream_closed(gw_client *c);
/* The client's output queue drained: resume the upstream. */
void gw_relay_client_drained(gw_client *c);
void gw_relay_timer(gw_client *c, uint64_t now);
void gw_relay_orphans_free(gw_worker *w);

#endif

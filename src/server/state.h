/* state.h: what the gateway's workers share: the process-wide gw_srv
 * (configuration, counters, the current route table, metric families) and
 * each worker's own state. Below every module that serves a connection. */
#ifndef GW_STATE_H
#define GW_STATE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "config/config.h"
#include "core/list.h"
#include "http/h1_parse.h"
#include "loop/loop.h"
#include "metrics/metrics.h"
#include "server/routes.h"

typedef struct gw_worker gw_worker;

/* Something a worker keeps after its connection left: an upstream leg
 * finishing its close (counted: a draining worker waits for it), or an idle
 * pooled connection (not counted: closed when the worker drains). */
typedef struct gw_linger {
    gw_list node;
    const void *owner;              /* who put it there (its type) */
    void (*free)(struct gw_linger *l); /* forced stop: drop it now */
} gw_linger;

struct gw_worker {
    int id;
    gw_loop *loop;
    pthread_t thread;
    gw_io pub_lis;     /* public listener (own SO_REUSEPORT socket, or shared) */
    gw_io admin_lis;   /* admin listener (worker 0 only) */
    gw_io proto_lis;   /* the protocol listener (gRPC: gw_server_listen_protocol), own SO_REUSEPORT socket */
    gw_timer accept_timer; /* re-enables accepting after EMFILE */
    gw_timer stats_timer;  /* flushes per-connection counters to metrics */
    gw_list clients;
    uint32_t nclients;     /* public clients (admin ones are not counted for drain) */
    gw_list lingering;     /* gw_linger: work finishing after its client left */
    uint32_t nlingering;
    gw_list idle;          /* gw_linger: idle pooled upstream connections */
    int draining;          /* after GATEWAY_DRAIN_DELAY: listener closed, connections being closed */
    int hold;              /* worker 0 keeps serving /metrics until the others finished draining */
    /* Load, published by the worker once a second for the status page. */
    _Atomic uint32_t st_clients;   /* its public clients */
    _Atomic uint32_t st_cpu_pm;    /* its thread's CPU time over the last second, per mille */
    uint64_t st_cpu_ns, st_mono_ms;
    void *tls_ctx;         /* this worker's reference to the current SSL_CTX (swapped on SIGHUP by a post;
                            * open connections hold their own through their SSL) */
    void *proto_tls_ctx;   /* the same for the protocol listener (gRPC: the context with ALPN h2) */
};

typedef struct gw_server {
    gw_config cfg;
    void *tls_ctx;                /* the SSL_CTX loaded at start, or NULL: non-NULL means TLS is on (never
                                   * swapped; new handshakes use their worker's tls_ctx) */
    void *tls_cur;                /* the current pair's SSL_CTX (main thread: SIGHUP) */
    pthread_mutex_t tls_mu;       /* guards the description below (read by the status page) */
    char tls_serial[80], tls_not_after[40];
    uint64_t tls_loaded_wall_ms;
    /* A listener whose connections are served by one protocol from accept
     * on (gRPC), counted with the public ones: gw_server_listen_protocol. */
    gw_addr proto_addr;
    const struct gw_client_proto *proto;
    void *proto_tls_ctx;          /* the protocol listener's SSL_CTX at start (workers hold their own) */
    void *(*proto_tls_make)(const char *cert, const char *key, char *err, size_t errcap); /* a fresh one (SIGHUP) */
    int nworkers;
    gw_worker *workers;
    atomic_int workers_ready;     /* every worker's loop exists: other threads (the store's reader
                                   * fanning events out) may post to them */
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
    gw_metric *m_tls_reload_ok, *m_tls_reload_err, *m_tls_last_ok;
} gw_server;

extern gw_server gw_srv;

/* The current route table, referenced (release with gw_routes_unref). */
gw_route_table *gw_server_routes(void);
gw_metric *gw_metric_handshake(const gw_route *r, const char *result);
gw_metric *gw_metric_close(const gw_route *r, const char *cause);
gw_metric *gw_metric_http(int admin, int status);

/* Stops a draining worker's loop once it has nothing left to finish. */
void gw_worker_maybe_stop(gw_worker *w);
/* l stays on w until gw_worker_unlinger (a draining worker waits for it). */
void gw_worker_linger(gw_worker *w, gw_linger *l, const void *owner, void (*free_fn)(gw_linger *l));
void gw_worker_unlinger(gw_worker *w, gw_linger *l);
/* Drops every lingering and idle item at once (forced stop, exit). */
void gw_worker_free_lingering(gw_worker *w);
/* Closes every idle item (drain). */
void gw_worker_free_idle(gw_worker *w);

#endif

/* server.c: process start-up, workers and listeners, accept, routes,
 * metrics families, and the SIGTERM drain. */
#include "server/server.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/common.h"
#include "log/log.h"
#include "net/sock.h"
#include "server/client.h"
#include "server/http_serve.h"
#include "server/state.h"
#include "server/status.h"
#include "server/upgrade.h"
#include "store/store.h"
#include "ws/ws_session.h"

/* ================================== routes ================================== */

static void precreate_route_series(const gw_route_table *t)
{
    static const char *const causes[] = {"downstream_closed", "upstream_closed", "graceful", "heartbeat_timeout",
                                         "shutdown", "protocol_error", "too_large", "idle_timeout",
                                         "inflate_budget"};
    for (size_t i = 0; i < t->n; i++) {
        gw_metric_handshake(&t->routes[i], "ok");
        for (size_t k = 0; k < GW_ARRAY_LEN(causes); k++)
            if ((t->routes[i].kind->flags & GW_KIND_UPSTREAM) || strcmp(causes[k], "upstream_closed") != 0)
                gw_metric_close(&t->routes[i], causes[k]);
    }
}

int gw_server_reload_routes(char *err, size_t errcap)
{
    gw_route_table *t = gw_routes_load(gw_srv.cfg.routes_file, &gw_srv.cfg, err, errcap);
    if (!t)
        return GW_ERR;
    precreate_route_series(t);
    pthread_mutex_lock(&gw_srv.routes_mu);
    gw_route_table *old = gw_srv.routes;
    gw_srv.routes = t;
    pthread_mutex_unlock(&gw_srv.routes_mu);
    if (old)
        gw_routes_unref(old);
    return GW_OK;
}

/* ================================= metrics ================================== */

static void register_metrics(void)
{
    char labels[128];
    snprintf(labels, sizeof labels, "version=\"%s\"", GW_VERSION);
    gw_gauge_set(gw_metric_get("wsgate_build_info", GW_METRIC_GAUGE, "Build information.", labels), 1);
    gw_srv.m_ws_connections = gw_metric_get("ws_connections", GW_METRIC_GAUGE, "Open WebSocket connections.", NULL);
    const char *ch = "Open client TCP connections by listener.";
    gw_srv.m_conns_public = gw_metric_get("wsgate_connections", GW_METRIC_GAUGE, ch, "listener=\"public\"");
    gw_srv.m_conns_admin = gw_metric_get("wsgate_connections", GW_METRIC_GAUGE, ch, "listener=\"admin\"");
    const char *ah = "Client TCP connections accepted by listener.";
    gw_srv.m_accepted_public = gw_metric_get("wsgate_connections_accepted_total", GW_METRIC_COUNTER, ah,
                                             "listener=\"public\"");
    gw_srv.m_accepted_admin = gw_metric_get("wsgate_connections_accepted_total", GW_METRIC_COUNTER, ah,
                                            "listener=\"admin\"");
    const char *rh = "Connections refused at accept, by reason.";
    gw_srv.m_rejected =
        gw_metric_get("wsgate_connections_rejected_total", GW_METRIC_COUNTER, rh, "reason=\"max_connections\"");
    gw_srv.m_rejected_admin =
        gw_metric_get("wsgate_connections_rejected_total", GW_METRIC_COUNTER, rh, "reason=\"admin_max_connections\"");
    gw_srv.m_tls_fail = gw_metric_get("wsgate_tls_handshake_failures_total", GW_METRIC_COUNTER,
                                      "TLS handshakes that failed on the public listener.", NULL);
    gw_srv.m_draining = gw_metric_get("wsgate_draining", GW_METRIC_GAUGE,
                                      "1 while the gateway drains after SIGTERM.", NULL);
    if (gw_srv.tls_ctx) {
        const char *th = "TLS certificate reloads on SIGHUP, by result.";
        gw_srv.m_tls_reload_ok = gw_metric_get("wsgate_tls_reload_total", GW_METRIC_COUNTER, th, "result=\"ok\"");
        gw_srv.m_tls_reload_err = gw_metric_get("wsgate_tls_reload_total", GW_METRIC_COUNTER, th, "result=\"error\"");
        gw_srv.m_tls_last_ok = gw_metric_get("wsgate_tls_last_reload_success", GW_METRIC_GAUGE,
                                             "0 when the last TLS reload was refused (the previous pair is served).",
                                             NULL);
        gw_gauge_set(gw_srv.m_tls_last_ok, 1);
    }
}

/* ================================ TLS reload ================================ */

static void tls_describe_current(void)
{
    pthread_mutex_lock(&gw_srv.tls_mu);
    gw_tls_ctx_describe(gw_srv.tls_cur, gw_srv.tls_serial, sizeof gw_srv.tls_serial, gw_srv.tls_not_after,
                        sizeof gw_srv.tls_not_after);
    gw_srv.tls_loaded_wall_ms = gw_wall_ms();
    pthread_mutex_unlock(&gw_srv.tls_mu);
}

typedef struct tls_swap {
    gw_worker *w;
    void *ctx;
    int proto; /* the protocol listener's context (else the public one's) */
} tls_swap;

/* On the worker: new handshakes from now on use the new pair; the old
 * context lives on inside the SSL of every connection made from it. */
static void worker_tls_swap(void *arg)
{
    tls_swap *ts = arg;
    void **slot = ts->proto ? &ts->w->proto_tls_ctx : &ts->w->tls_ctx;
    void *old = *slot;
    *slot = ts->ctx;
    if (old)
        gw_tls_ctx_free(old);
    gw_free(ts);
}

/* SIGHUP: loads GATEWAY_TLS_CERT_PATH/KEY_PATH again. A pair that does not
 * load or does not match is refused with one line and the old one stays. */
static void reload_tls(void)
{
    if (!gw_srv.tls_ctx)
        return;
    char err[512];
    void *ctx = gw_tls_server_ctx(gw_srv.cfg.tls_cert_path, gw_srv.cfg.tls_key_path, err, sizeof err);
    /* The protocol listener (gRPC) is rotated with it: one pair, both or neither. */
    void *pctx = NULL;
    if (ctx && gw_srv.proto_tls_ctx && gw_srv.proto_tls_make) {
        pctx = gw_srv.proto_tls_make(gw_srv.cfg.tls_cert_path, gw_srv.cfg.tls_key_path, err, sizeof err);
        if (!pctx) {
            gw_tls_ctx_free(ctx);
            ctx = NULL;
        }
    }
    if (!ctx) {
        gw_counter_inc(gw_srv.m_tls_reload_err);
        gw_gauge_set(gw_srv.m_tls_last_ok, 0);
        gw_log_line *l = gw_log_begin(GW_LOG_ERROR, "tls reload refused; keeping the old certificate", NULL);
        if (l) {
            gw_log_str(l, "error", err, 0);
            gw_log_str(l, "serial", gw_srv.tls_serial, 0);
            gw_log_end(l);
        }
        return;
    }
    for (int i = 0; i < gw_srv.nworkers; i++) {
        tls_swap *ts = gw_malloc(sizeof *ts);
        ts->w = &gw_srv.workers[i];
        ts->ctx = gw_tls_ctx_ref(ctx);
        ts->proto = 0;
        gw_loop_post(gw_srv.workers[i].loop, worker_tls_swap, ts);
        if (pctx) {
            tls_swap *tp = gw_malloc(sizeof *tp);
            tp->w = &gw_srv.workers[i];
            tp->ctx = gw_tls_ctx_ref(pctx);
            tp->proto = 1;
            gw_loop_post(gw_srv.workers[i].loop, worker_tls_swap, tp);
        }
    }
    if (pctx)
        gw_tls_ctx_free(pctx); /* the workers hold theirs */
    gw_tls_ctx_free(gw_srv.tls_cur);
    gw_srv.tls_cur = ctx;
    tls_describe_current();
    gw_counter_inc(gw_srv.m_tls_reload_ok);
    gw_gauge_set(gw_srv.m_tls_last_ok, 1);
    gw_log_line *l = gw_log_begin(GW_LOG_INFO, "tls certificate reloaded", NULL);
    if (l) {
        gw_log_str(l, "serial", gw_srv.tls_serial, 0);
        gw_log_str(l, "not_after", gw_srv.tls_not_after, 0);
        gw_log_end(l);
    }
}

/* ============================== accept / workers ============================ */

static void accept_resume(gw_timer *t)
{
    gw_worker *w = gw_container_of(t, gw_worker, accept_timer);
    if (w->pub_lis.fd >= 0 && !w->draining)
        gw_io_update(w->loop, &w->pub_lis, GW_EV_READ);
    if (w->admin_lis.fd >= 0)
        gw_io_update(w->loop, &w->admin_lis, GW_EV_READ);
    if (w->proto_lis.fd >= 0 && !w->draining)
        gw_io_update(w->loop, &w->proto_lis, GW_EV_READ);
}

/* admin: 1 for the admin listener; proto: what serves the connection from
 * accept on (the protocol listener), else the HTTP phase. */
static void accept_loop(gw_worker *w, gw_io *io, int admin, const gw_client_proto *proto)
{
    /* Bounded work per wakeup: other connections get their turn. */
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage ss;
        int fd = gw_sock_accept(io->fd, &ss);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* Out of descriptors: stop accepting for a moment instead of
                 * spinning on a listener that stays readable. */
                gw_log_msg(GW_LOG_WARN, NULL, "accept paused: %s", strerror(errno));
                gw_io_update(w->loop, io, 0);
                gw_timer_start(w->loop, &w->accept_timer, 100);
            }
            return;
        }
        /* Each listener has its own limit: admin connections (scrapes, the
         * control plane) never use up the public ones, nor the reverse. */
        atomic_uint_fast64_t *open = admin ? &gw_srv.nconns_admin : &gw_srv.nconns;
        uint64_t limit = admin ? gw_srv.cfg.admin_max_connections : gw_srv.cfg.max_connections;
        if (atomic_load_explicit(open, memory_order_relaxed) >= limit) {
            gw_counter_inc(admin ? gw_srv.m_rejected_admin : gw_srv.m_rejected);
            close(fd);
            continue;
        }
        if (proto)
            gw_client_accept(w, fd, &ss, 0, w->proto_tls_ctx, proto);
        else
            gw_client_accept(w, fd, &ss, admin, admin ? NULL : w->tls_ctx, &gw_http_proto);
    }
}

static void on_accept_public(gw_io *io, uint32_t events)
{
    GW_UNUSED(events);
    accept_loop(gw_container_of(io, gw_worker, pub_lis), io, 0, NULL);
}

static void on_accept_proto(gw_io *io, uint32_t events)
{
    GW_UNUSED(events);
    accept_loop(gw_container_of(io, gw_worker, proto_lis), io, 0, gw_srv.proto);
}

static void on_accept_admin(gw_io *io, uint32_t events)
{
    GW_UNUSED(events);
    accept_loop(gw_container_of(io, gw_worker, admin_lis), io, 1, NULL);
}

/* The worker's load for the status page: clients, and its thread's CPU
 * time over the last tick. */
static void publish_load(gw_worker *w)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    uint64_t ns = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec, now = gw_mono_ms();
    if (w->st_mono_ms && now > w->st_mono_ms)
        atomic_store_explicit(&w->st_cpu_pm, (uint32_t)GW_MIN((ns - w->st_cpu_ns) / ((now - w->st_mono_ms) * 1000), 1000u),
                              memory_order_relaxed);
    w->st_cpu_ns = ns;
    w->st_mono_ms = now;
    atomic_store_explicit(&w->st_clients, w->nclients, memory_order_relaxed);
}

static void stats_tick(gw_timer *t)
{
    gw_worker *w = gw_container_of(t, gw_worker, stats_timer);
    for (gw_list *n = w->clients.next; n != &w->clients; n = n->next) {
        gw_client *c = gw_container_of(n, gw_client, node);
        if (c->phase < GW_PHASE_FINISH && c->proto->tick)
            c->proto->tick(c);
    }
    publish_load(w);
    if (w->id == 0)
        gw_status_sample(); /* worker 0 also serves the admin listener: the rings need no lock */
    gw_timer_start(w->loop, t, 1000);
}

static void worker_release(void *arg)
{
    gw_worker *w = arg;
    w->hold = 0;
    gw_worker_maybe_stop(w);
}

/* Gives each of this worker's WebSockets its turn to be closed, evenly over
 * the close window, so their clients do not all reconnect at once. */
static void schedule_ws_closes(gw_worker *w)
{
    uint64_t n = 0, i = 0;
    for (gw_list *p = w->clients.next; p != &w->clients; p = p->next) {
        gw_client *c = gw_container_of(p, gw_client, node);
        n += c->phase < GW_PHASE_FINISH && c->proto->drain_at;
    }
    for (gw_list *p = w->clients.next; p != &w->clients; p = p->next) {
        gw_client *c = gw_container_of(p, gw_client, node);
        if (c->phase < GW_PHASE_FINISH && c->proto->drain_at)
            c->proto->drain_at(c, gw_srv.drain_close_start_ms + gw_srv.drain_close_span_ms * i++ / n);
    }
}

static void worker_drain(void *arg)
{
    gw_worker *w = arg;
    w->draining = 1;
    if (w->pub_lis.fd >= 0) {
        gw_io_stop(w->loop, &w->pub_lis);
        close(w->pub_lis.fd);
        w->pub_lis.fd = -1;
    }
    if (w->proto_lis.fd >= 0) {
        gw_io_stop(w->loop, &w->proto_lis);
        close(w->proto_lis.fd);
        w->proto_lis.fd = -1;
    }
    schedule_ws_closes(w);
    gw_list *n = w->clients.next;
    while (n != &w->clients) {
        gw_list *next = n->next;
        gw_client_drain(gw_container_of(n, gw_client, node));
        n = next;
    }
    gw_worker_free_idle(w);
    gw_worker_maybe_stop(w);
}

static void worker_stop(void *arg)
{
    gw_worker *w = arg;
    while (!gw_list_empty(&w->clients)) {
        gw_client *c = gw_container_of(w->clients.next, gw_client, node);
        if (c->phase < GW_PHASE_FINISH && c->proto->gone)
            c->proto->gone(c, GW_GONE_SHUTDOWN);
        gw_client_close(c);
    }
    gw_worker_free_lingering(w);
    gw_loop_stop(w->loop);
}

static void *worker_main(void *arg)
{
    gw_worker *w = arg;
    gw_loop_run(w->loop);
    gw_conn_thread_exit();
    gw_ws_thread_exit();
    return NULL;
}

/* The listening socket a previous process handed over for (role, its
 * configured address a) (in-place upgrade), or -1. */
static int inherited_fd(const char *role, const gw_addr *a)
{
    char addr[300];
    gw_addr_format(a, addr, sizeof addr);
    return gw_upgrade_take(role, addr);
}

/* The handed-over socket for (role, a), or a new one. */
static int listener_fd(const char *role, const gw_addr *a, int reuseport, int backlog, char *err, size_t errcap)
{
    int fd = inherited_fd(role, a);
    return fd >= 0 ? fd : gw_sock_listen(a, reuseport, backlog, err, errcap);
}

static int open_listeners(char *err, size_t errcap)
{
    const gw_config *cfg = &gw_srv.cfg;
    gw_addr pub = cfg->public_addr;
    int shared = -1;
    for (int i = 0; i < gw_srv.nworkers; i++) {
        gw_worker *w = &gw_srv.workers[i];
        int fd;
        uint32_t ev = GW_EV_READ;
        if (pub.is_unix) {
            if (shared < 0) {
                if ((shared = listener_fd("public", &pub, 0, 4096, err, errcap)) < 0)
                    return GW_ERR;
                /* A handed-over unix listener came once per worker: the same socket. */
                for (int extra; (extra = inherited_fd("public", &pub)) >= 0;)
                    close(extra);
            }
            fd = i == 0 ? shared : dup(shared);
            ev |= GW_EV_EXCLUSIVE;
        } else {
            /* Each worker's own SO_REUSEPORT socket; handed-over ones keep
             * their accept queues, a worker beyond their number joins the
             * group with a new one. */
            fd = inherited_fd("public", &cfg->public_addr);
            if (fd < 0)
                fd = gw_sock_listen(&pub, 1, 4096, err, errcap);
            if (fd < 0)
                return GW_ERR;
            if (pub.port == 0)
                pub.port = gw_sock_local_port(fd); /* the others join the port the first got */
        }
        w->pub_lis.fd = fd;
        w->pub_lis.cb = on_accept_public;
        if (gw_io_start(w->loop, &w->pub_lis, ev) != GW_OK) {
            snprintf(err, errcap, "cannot watch the public listener: %s", strerror(errno));
            return GW_ERR;
        }
    }
    gw_addr pa = gw_srv.proto_addr;
    for (int i = 0; gw_srv.proto && pa.set && i < gw_srv.nworkers; i++) {
        gw_worker *w = &gw_srv.workers[i];
        /* unix sockets: one socket on worker 0 (no SO_REUSEPORT there) */
        if (pa.is_unix && i > 0)
            break;
        int fd = inherited_fd("grpc", &gw_srv.proto_addr); /* handed over by the process this one upgrades */
        if (fd < 0)
            fd = gw_sock_listen(&pa, !pa.is_unix, 4096, err, errcap);
        if (fd < 0)
            return GW_ERR;
        if (!pa.is_unix && pa.port == 0)
            pa.port = gw_sock_local_port(fd);
        w->proto_lis.fd = fd;
        w->proto_lis.cb = on_accept_proto;
        gw_io_start(w->loop, &w->proto_lis, GW_EV_READ);
    }
    if (cfg->admin_addr.set) {
        gw_worker *w = &gw_srv.workers[0];
        int fd = listener_fd("admin", &cfg->admin_addr, 0, 512, err, errcap);
        if (fd < 0)
            return GW_ERR;
        w->admin_lis.fd = fd;
        w->admin_lis.cb = on_accept_admin;
        gw_io_start(w->loop, &w->admin_lis, GW_EV_READ);
    }
    gw_upgrade_close_unused();
    return GW_OK;
}

void gw_server_listen_protocol(const gw_addr *a, const gw_client_proto *proto, void *tls_ctx,
                               void *(*tls_make)(const char *cert, const char *key, char *err, size_t errcap))
{
    gw_srv.proto_addr = *a;
    gw_srv.proto = proto;
    gw_srv.proto_tls_ctx = tls_ctx;
    gw_srv.proto_tls_make = tls_make;
}

int gw_server_start(const gw_config *cfg, char *err, size_t errcap)
{
    gw_srv.cfg = *cfg;
    gw_srv.start_wall_ms = gw_wall_ms();
    gw_srv.start_mono_ms = gw_mono_ms();
    gw_srv.limits.max_request_line = cfg->max_request_line;
    gw_srv.limits.max_head = cfg->max_header_bytes;
    gw_srv.limits.max_headers = 128;
    if (cfg->tls_cert_path[0]) {
        gw_srv.tls_ctx = gw_tls_server_ctx(cfg->tls_cert_path, cfg->tls_key_path, err, errcap);
        if (!gw_srv.tls_ctx)
            return GW_ERR;
        gw_srv.tls_cur = gw_tls_ctx_ref(gw_srv.tls_ctx);
    }
    pthread_mutex_init(&gw_srv.tls_mu, NULL);
    tls_describe_current();
    register_metrics();
    gw_status_init();
    pthread_mutex_init(&gw_srv.routes_mu, NULL);
    if (gw_server_reload_routes(err, errcap) != GW_OK)
        return GW_ERR;
    gw_srv.nworkers = cfg->workers;
    gw_srv.workers = gw_calloc((size_t)cfg->workers, sizeof(gw_worker));
    for (int i = 0; i < gw_srv.nworkers; i++) {
        gw_worker *w = &gw_srv.workers[i];
        w->id = i;
        char lerr[200];
        w->loop = gw_loop_create(lerr, sizeof lerr);
        if (!w->loop) {
            snprintf(err, errcap, "cannot create an event loop: %s", lerr);
            return GW_ERR;
        }
        w->pub_lis.fd = w->admin_lis.fd = w->proto_lis.fd = -1;
        w->tls_ctx = gw_srv.tls_ctx ? gw_tls_ctx_ref(gw_srv.tls_ctx) : NULL;
        w->proto_tls_ctx = gw_srv.proto_tls_ctx ? gw_tls_ctx_ref(gw_srv.proto_tls_ctx) : NULL;
        w->accept_timer.cb = accept_resume;
        w->stats_timer.cb = stats_tick;
        gw_list_init(&w->clients);
        gw_list_init(&w->lingering);
        gw_list_init(&w->idle);
        gw_timer_start(w->loop, &w->stats_timer, 1000);
    }
    atomic_store(&gw_srv.workers_ready, 1);
    if (cfg->upgrade_socket[0] && gw_upgrade_takeover(cfg->upgrade_socket, err, errcap) != GW_OK)
        return GW_ERR;
    if (open_listeners(err, errcap) != GW_OK)
        return GW_ERR;
    return GW_OK;
}

/* Frees what the workers left (admin connections, loops, buffers) once
 * their threads have ended, so leak checkers see a clean exit. */
static void server_free(void)
{
    for (int i = 0; i < gw_srv.nworkers; i++) {
        gw_worker *w = &gw_srv.workers[i];
        while (!gw_list_empty(&w->clients)) {
            gw_client *c = gw_container_of(w->clients.next, gw_client, node);
            gw_list_remove(&c->node);
            if (c->phase < GW_PHASE_CLOSED && c->proto->end)
                c->proto->end(c);
            gw_conn_close(&c->conn);
            gw_task_cancel(&c->task);
            gw_free(c);
        }
        gw_worker_free_lingering(w);
        if (w->pub_lis.fd >= 0)
            close(w->pub_lis.fd);
        if (w->admin_lis.fd >= 0)
            close(w->admin_lis.fd);
        if (w->proto_lis.fd >= 0)
            close(w->proto_lis.fd);
        gw_loop_free(w->loop); /* runs a TLS swap still posted */
        if (w->tls_ctx)
            gw_tls_ctx_free(w->tls_ctx);
        if (w->proto_tls_ctx)
            gw_tls_ctx_free(w->proto_tls_ctx);
    }
    atomic_store(&gw_srv.workers_ready, 0);
    gw_free(gw_srv.workers);
    gw_srv.workers = NULL;
    if (gw_srv.tls_ctx)
        gw_tls_ctx_free(gw_srv.tls_ctx);
    gw_srv.tls_ctx = NULL;
    if (gw_srv.tls_cur)
        gw_tls_ctx_free(gw_srv.tls_cur);
    gw_srv.tls_cur = NULL;
    gw_routes_unref(gw_srv.routes);
    gw_srv.routes = NULL;
    gw_metrics_reset();
}

static int join_until(pthread_t t, uint64_t deadline_wall_ms)
{
    struct timespec ts = {.tv_sec = (time_t)(deadline_wall_ms / 1000),
                          .tv_nsec = (long)(deadline_wall_ms % 1000) * 1000000L};
    return pthread_timedjoin_np(t, NULL, &ts);
}

/* Sleeps until until_mono_ms (GATEWAY_DRAIN_DELAY) while the workers serve
 * on. A second SIGTERM or SIGINT ends the wait early; SIGHUP is ignored now. */
static void wait_drain_delay(const sigset_t *set, uint64_t until_mono_ms)
{
    for (;;) {
        uint64_t now = gw_mono_ms();
        if (now >= until_mono_ms)
            return;
        uint64_t left = until_mono_ms - now;
        struct timespec ts = {.tv_sec = (time_t)(left / 1000), .tv_nsec = (long)(left % 1000) * 1000000L};
        int sig = sigtimedwait(set, NULL, &ts);
        if (sig == SIGTERM || sig == SIGINT) {
            gw_log_msg(GW_LOG_INFO, NULL, "second %s: drain delay cut short", sig == SIGTERM ? "SIGTERM" : "SIGINT");
            return;
        }
    }
}

int gw_server_run(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL); /* workers inherit the mask */
    signal(SIGPIPE, SIG_IGN);

    for (int i = 0; i < gw_srv.nworkers; i++)
        pthread_create(&gw_srv.workers[i].thread, NULL, worker_main, &gw_srv.workers[i]);
    /* The workers accept now: a process we took the listeners from may drain. */
    gw_upgrade_start();

    char pub[300], adm[300] = "off";
    gw_addr_format(&gw_srv.cfg.public_addr, pub, sizeof pub);
    if (gw_srv.cfg.admin_addr.set)
        gw_addr_format(&gw_srv.cfg.admin_addr, adm, sizeof adm);
    gw_log_line *l = gw_log_begin(GW_LOG_INFO, "gateway started", NULL);
    if (l) {
        gw_log_str(l, "public", pub, 0);
        gw_log_str(l, "admin", adm, 0);
        gw_log_bool(l, "tls", gw_srv.tls_ctx != NULL, 0);
        gw_log_int(l, "workers", gw_srv.nworkers, 0);
        gw_log_str(l, "version", GW_VERSION, 0);
        gw_log_str(l, "backend", gw_store_current_name(), 0);
        gw_log_end(l);
    }

    int sig;
    for (;;) {
        if (sigwait(&set, &sig) != 0)
            continue;
        if (sig == SIGHUP) {
            reload_tls();
            char err[512];
            if (gw_server_reload_routes(err, sizeof err) != GW_OK) {
                gw_log_line *rl = gw_log_begin(GW_LOG_ERROR, "routes reload refused; keeping the old table", NULL);
                if (rl) {
                    gw_log_str(rl, "error", err, 0);
                    gw_log_end(rl);
                }
            } else {
                gw_log_line *rl = gw_log_begin(GW_LOG_INFO, "routes reloaded", NULL);
                if (rl) {
                    gw_log_int(rl, "routes", (int64_t)gw_srv.routes->n, 0);
                    gw_log_int(rl, "generation", (int64_t)gw_srv.routes->generation, 0);
                    gw_log_end(rl);
                }
            }
            continue;
        }
        break;
    }
    /* The drain, as load balancers expect it:
     * 1. at once: /readyz answers 503 (and responses say Connection: close)
     *    while the listeners keep serving for GATEWAY_DRAIN_DELAY, the time
     *    the balancer needs to notice and stop sending;
     * 2. then the public listener closes and the WebSockets get their Close
     *    1001, spread evenly over the first half of what remains of
     *    GATEWAY_SHUTDOWN_TIMEOUT, so their reconnects arrive spread out;
     * 3. relays and in-flight requests get the rest of the budget, less a
     *    margin for the forced close and exit. */
    uint64_t t0 = gw_mono_ms();
    uint64_t budget = gw_srv.cfg.shutdown_timeout_ms;
    uint64_t margin = GW_MIN(budget / 10, (uint64_t)1000);
    gw_upgrade_lock(); /* no hand-over of listeners that are about to close */
    atomic_store(&gw_srv.draining, 1);
    gw_upgrade_unlock();
    gw_gauge_set(gw_srv.m_draining, 1);
    l = gw_log_begin(GW_LOG_INFO, "draining", NULL);
    if (l) {
        gw_log_str(l, "signal", gw_upgrade_handed_over() ? "upgrade" : sig == SIGTERM ? "SIGTERM" : "SIGINT", 0);
        gw_log_int(l, "timeout_ms", (int64_t)budget, 0);
        gw_log_int(l, "drain_delay_ms", (int64_t)gw_srv.cfg.drain_delay_ms, 0);
        gw_log_int(l, "connections", (int64_t)(atomic_load(&gw_srv.nconns) + atomic_load(&gw_srv.nconns_admin)), 0);
        gw_log_end(l);
    }
    wait_drain_delay(&set, t0 + gw_srv.cfg.drain_delay_ms);
    uint64_t now = gw_mono_ms();
    gw_srv.drain_end_ms = t0 + budget - margin;
    gw_srv.drain_close_start_ms = now;
    gw_srv.drain_close_span_ms = (t0 + budget > now ? t0 + budget - now : 0) / 2;
    l = gw_log_begin(GW_LOG_INFO, "drain: closing listeners and connections", NULL);
    if (l) {
        gw_log_int(l, "close_window_ms", (int64_t)gw_srv.drain_close_span_ms, 0);
        gw_log_int(l, "connections", (int64_t)(atomic_load(&gw_srv.nconns) + atomic_load(&gw_srv.nconns_admin)), 0);
        gw_log_end(l);
    }
    /* Worker 0 owns the admin listener: it keeps answering /metrics and
     * /readyz until every other worker has drained. */
    gw_srv.workers[0].hold = gw_srv.nworkers > 1;
    for (int i = 0; i < gw_srv.nworkers; i++)
        gw_loop_post(gw_srv.workers[i].loop, worker_drain, &gw_srv.workers[i]);
    uint64_t deadline = gw_wall_ms() + (gw_srv.drain_end_ms > now ? gw_srv.drain_end_ms - now : 0);
    int forced = 0;
    for (int k = 1; k <= gw_srv.nworkers; k++) {
        int i = k % gw_srv.nworkers; /* worker 0 last */
        gw_worker *w = &gw_srv.workers[i];
        if (i == 0 && w->hold)
            gw_loop_post(w->loop, worker_release, w);
        if (join_until(w->thread, deadline) != 0) {
            forced = 1;
            gw_loop_post(w->loop, worker_stop, w);
            pthread_join(w->thread, NULL);
        }
    }
    l = gw_log_begin(GW_LOG_INFO, "stopped", NULL);
    if (l) {
        gw_log_int(l, "drain_ms", (int64_t)(gw_mono_ms() - t0), 0);
        gw_log_bool(l, "forced", forced, 0);
        gw_log_end(l);
    }
    gw_upgrade_stop();
    gw_store_shutdown(); /* before the worker loops go: the store's threads use them */
    server_free();
    return 0;
}

/* client.c: one accepted connection through its phases: TLS handshake,
 * then whatever gw_client_proto serves it (HTTP requests, a WebSocket
 * session, a route kind's exchange), finish (flush + linger), closed. The
 * core names no protocol and no route kind.
 *
 * Reads land in the worker's shared buffer and are processed in place; only
 * an incomplete tail (a partial head or frame) is copied into the
 * connection's own buffer. Output produced while a read batch is processed
 * is corked and leaves in one write. */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/common.h"
#include "log/log.h"
#include "net/sock.h"
#include "server/client.h"
#include "server/state.h"

static void client_io(gw_io *io, uint32_t events);
static void client_timer(gw_timer *t);

static void client_free_task(gw_task *t)
{
    gw_client *c = gw_container_of(t, gw_client, task);
    gw_free(c->norm_path);
    gw_free(c);
}

void gw_client_accept(gw_worker *w, int fd, const struct sockaddr_storage *ss, int admin, void *tls_ctx,
                      const gw_client_proto *http)
{
    gw_client *c = gw_calloc(1, sizeof *c);
    gw_conn_init(&c->conn, w->loop, fd, client_io);
    /* A client reset while its reads are paused (backpressure) is noticed at
     * once: client_io handles GW_EV_ERROR on a paused connection. */
    c->conn.flags |= GW_CONN_F_WATCH_HUP;
    c->w = w;
    c->admin = (uint8_t)admin;
    c->timer.cb = client_timer;
    c->phase_ms = gw_loop_now(w->loop);
    gw_sock_ntop(ss, c->ip, sizeof c->ip);
    if (ss->ss_family != AF_UNIX)
        gw_sock_nodelay(fd);
    gw_list_insert_tail(&w->clients, &c->node);
    if (!admin)
        w->nclients++;
    atomic_fetch_add_explicit(admin ? &gw_srv.nconns_admin : &gw_srv.nconns, 1, memory_order_relaxed);
    gw_gauge_add(admin ? gw_srv.m_conns_admin : gw_srv.m_conns_public, 1);
    gw_counter_inc(admin ? gw_srv.m_accepted_admin : gw_srv.m_accepted_public);
    c->phase = GW_PHASE_HTTP;
    c->base = c->proto = http;
    if (tls_ctx) {
        if (gw_conn_tls(&c->conn, tls_ctx, 1, NULL) != GW_OK) {
            gw_client_close(c);
            return;
        }
        c->phase = GW_PHASE_TLS;
    }
    gw_conn_want_read(&c->conn, 1);
    gw_client_arm(c);
}

/* Closes the socket now and frees c after the current batch. */
void gw_client_close(gw_client *c)
{
    if (c->phase == GW_PHASE_CLOSED)
        return;
    if (c->phase != GW_PHASE_FINISH && c->proto->finish)
        c->proto->finish(c);
    if (c->proto->end)
        c->proto->end(c);
    c->pdata = NULL;
    c->phase = GW_PHASE_CLOSED;
    gw_timer_stop(c->w->loop, &c->timer);
    gw_conn_close(&c->conn);
    gw_list_remove(&c->node);
    gw_worker *w = c->w;
    if (!c->admin)
        w->nclients--;
    atomic_fetch_sub_explicit(c->admin ? &gw_srv.nconns_admin : &gw_srv.nconns, 1, memory_order_relaxed);
    gw_gauge_add(c->admin ? gw_srv.m_conns_admin : gw_srv.m_conns_public, -1);
    gw_task_cancel(&c->task);
    c->task.fn = client_free_task;
    gw_loop_defer(w->loop, &c->task);
    gw_worker_maybe_stop(w);
}

/* Sends what is queued, then half-closes and reads until the peer's FIN (or
 * the linger time), so unread input does not turn our close into a reset
 * that destroys the response in flight. */
void gw_client_finish(gw_client *c)
{
    if (c->phase == GW_PHASE_CLOSED || c->phase == GW_PHASE_FINISH)
        return;
    if (c->proto->finish)
        c->proto->finish(c);
    c->phase = GW_PHASE_FINISH;
    c->phase_ms = gw_loop_now(c->w->loop);
    gw_conn_uncork(&c->conn);
    int rc = gw_conn_flush(&c->conn);
    if (rc == GW_ERR) {
        gw_client_close(c);
        return;
    }
    if (rc == GW_OK)
        gw_conn_shutdown(&c->conn);
    gw_conn_pause(&c->conn, 0);
    gw_conn_want_read(&c->conn, 1);
    gw_client_arm(c);
}

void gw_client_enter(gw_client *c, int phase, const gw_client_proto *proto, void *pdata)
{
    c->phase = (uint8_t)phase;
    c->proto = proto;
    c->pdata = pdata;
}

void gw_client_http(gw_client *c) { gw_client_enter(c, GW_PHASE_HTTP, c->base, NULL); }

void gw_client_kick(gw_client *c)
{
    if (c->conn.in.len)
        gw_loop_pending(c->w->loop, &c->task);
}

void gw_client_arm(gw_client *c)
{
    uint64_t at;
    switch (c->phase) {
    case GW_PHASE_TLS:
        at = c->phase_ms + gw_srv.cfg.handshake_timeout_ms;
        break;
    case GW_PHASE_FINISH:
        at = c->phase_ms + GW_LINGER_MS;
        break;
    case GW_PHASE_CLOSED:
        return;
    default:
        at = c->proto->deadline ? c->proto->deadline(c) : 0;
        if (!at)
            at = c->phase_ms + GW_BACKSTOP_MS; /* the phase has its own timeouts; this is a backstop */
        break;
    }
    gw_timer_start_at(c->w->loop, &c->timer, at);
}

static void client_timer(gw_timer *t)
{
    gw_client *c = gw_container_of(t, gw_client, timer);
    if (c->phase != GW_PHASE_TLS && c->phase != GW_PHASE_FINISH && c->proto->timer) {
        c->proto->timer(c);
        return;
    }
    gw_client_close(c);
}

/* Processes n bytes at p for the current phase; returns bytes consumed.
 * When the phase hands the connection on (HTTP to a streamed exchange and
 * back, an upgrade to WebSocket), the rest goes to the new phase. */
static size_t process(gw_client *c, uint8_t *p, size_t n)
{
    size_t off = 0;
    while (off < n) {
        if (c->phase == GW_PHASE_FINISH || c->phase == GW_PHASE_CLOSED)
            return n; /* finishing: discard */
        const gw_client_proto *pr = c->proto;
        int phase = c->phase;
        off += pr->feed(c, p + off, n - off);
        if (c->proto == pr && c->phase == phase)
            return off;
    }
    return off;
}

static void on_peer_gone(gw_client *c, int reset)
{
    GW_UNUSED(reset);
    if (c->phase != GW_PHASE_FINISH && c->phase != GW_PHASE_CLOSED && c->proto->gone)
        c->proto->gone(c, GW_GONE_PEER);
    gw_client_close(c);
}

static size_t max_input(const gw_client *c)
{
    if (c->phase == GW_PHASE_FINISH)
        return c->conn.in.len + GW_READ_CHUNK; /* lingering: whatever comes is discarded */
    if (c->proto->max_input)
        return c->proto->max_input(c);
    return (size_t)gw_srv.cfg.max_header_bytes + GW_READ_CHUNK + GW_SMALL_BODY_MAX;
}

/* Bytes still missing from what waits in conn.in, so one read can complete
 * it (0 when unknown). */
static size_t pending_need(const gw_client *c)
{
    return c->phase != GW_PHASE_FINISH && c->proto->need ? c->proto->need(c) : 0;
}

/* What the connection hands its bytes to: the current phase, corked, so
 * all output produced while a read batch is processed leaves in one write. */
static size_t client_rcv(gw_conn *conn, uint8_t *p, size_t n)
{
    gw_client *c = gw_container_of(conn, gw_client, conn);
    if (c->phase == GW_PHASE_FINISH)
        return n; /* lingering: discard */
    if (c->proto->on_read)
        c->proto->on_read(c, gw_loop_now(c->w->loop));
    gw_conn_cork(&c->conn);
    return process(c, p, n);
}

static size_t client_max_input(gw_conn *conn) { return max_input(gw_container_of(conn, gw_client, conn)); }

static size_t client_need(gw_conn *conn) { return pending_need(gw_container_of(conn, gw_client, conn)); }

static const gw_conn_reader client_reader = {client_rcv, client_max_input, client_need};

static void client_read(gw_client *c)
{
    gw_worker *w = c->w;
    for (int round = 0; round < 8 && c->phase != GW_PHASE_CLOSED; round++) {
        int lingering = c->phase == GW_PHASE_FINISH, filled = 0;
        ssize_t r = gw_conn_read_into(&c->conn, &client_reader, &filled);
        if (r == GW_AGAIN)
            return;
        if (r == GW_CONN_FULL) {
            /* Cannot happen while the parsers enforce their limits (they
             * fail before input passes them); be safe anyway. */
            gw_conn_uncork(&c->conn);
            on_peer_gone(c, 0);
            return;
        }
        if (r <= 0) {
            on_peer_gone(c, r < 0);
            return;
        }
        if (lingering)
            continue;
        if (c->phase == GW_PHASE_CLOSED)
            return;
        if (gw_conn_uncork(&c->conn) != GW_OK) {
            on_peer_gone(c, 1);
            return;
        }
        if (c->phase == GW_PHASE_HTTP && c->close_after) {
            gw_client_finish(c);
            return;
        }
        /* Backpressure: a peer that does not read what we send stops being
         * read until its queue drains. A handler may also have paused us
         * (a relay whose other leg is full): then not one more read either;
         * the engine already stopped decoding, and the rest waits in conn.in. */
        if (gw_conn_queued(&c->conn) > GW_OUT_HIGH)
            gw_conn_pause(&c->conn, 1);
        if (c->conn.flags & GW_CONN_F_PAUSED)
            return;
        if (c->phase == GW_PHASE_HTTP)
            gw_client_arm(c);
        if (!filled && gw_conn_pending(&c->conn) == 0)
            return;
    }
    /* Budget spent with input still waiting inside TLS: come back before
     * sleeping, since no readiness event will announce it. */
    if (c->phase != GW_PHASE_CLOSED && gw_conn_pending(&c->conn)) {
        gw_loop_pending(w->loop, &c->task);
    }
}

/* Processes input already buffered in conn.in (after a pause ends, the
 * kernel will not announce those bytes again). */
static void process_buffered(gw_client *c)
{
    if (!c->conn.in.len || (c->conn.flags & GW_CONN_F_PAUSED) ||
        (c->phase != GW_PHASE_HTTP && c->phase != GW_PHASE_WS && c->phase != GW_PHASE_STREAM))
        return;
    gw_conn_cork(&c->conn);
    size_t used = process(c, gw_buf_head(&c->conn.in), c->conn.in.len);
    if (c->phase == GW_PHASE_CLOSED)
        return;
    gw_buf_consume(&c->conn.in, used);
    if (gw_conn_uncork(&c->conn) != GW_OK) {
        on_peer_gone(c, 1);
        return;
    }
    if (c->phase == GW_PHASE_HTTP && c->close_after)
        gw_client_finish(c);
    else if (c->phase == GW_PHASE_HTTP)
        gw_client_arm(c);
}

/* ================ waiting for an asynchronous answer (a store) ================ */

/* Reads stay paused and input waits in conn.in until the answer; the one
 * timer carries the deadline. */
static size_t wait_feed(gw_client *c, uint8_t *p, size_t n)
{
    GW_UNUSED(c);
    GW_UNUSED(p);
    GW_UNUSED(n);
    return 0; /* kept until the answer */
}

static uint64_t wait_deadline(gw_client *c) { return c->wait_deadline_ms; }

static void wait_timer(gw_client *c)
{
    if (gw_loop_now(c->w->loop) >= c->wait_deadline_ms) {
        c->wait->deadline(c, c->wait_data);
        return;
    }
    gw_client_arm(c);
}

static int wait_keep_paused(gw_client *c)
{
    GW_UNUSED(c);
    return 1;
}

/* The connection ends while waiting: the operation is cancelled. */
static void wait_end(gw_client *c)
{
    const gw_client_wait_ops *ops = c->wait;
    if (!ops)
        return;
    c->wait = NULL;
    ops->abort(c, c->wait_data);
}

static void wait_drain(gw_client *c) { c->close_after = 1; /* the answer comes, then the connection closes */ }

static const gw_client_proto wait_proto = {
    .feed = wait_feed,
    .deadline = wait_deadline,
    .timer = wait_timer,
    .keep_paused = wait_keep_paused,
    .end = wait_end,
    .drain = wait_drain,
};

static void client_pending_task(gw_task *t);

void gw_client_wait(gw_client *c, const gw_client_wait_ops *ops, void *data, uint64_t deadline_ms)
{
    gw_client_enter(c, GW_PHASE_HELD, &wait_proto, NULL);
    c->phase_ms = gw_loop_now(c->w->loop);
    c->wait = ops;
    c->wait_data = data;
    c->wait_deadline_ms = deadline_ms;
    gw_conn_pause(&c->conn, 1);
    gw_client_arm(c);
}

void gw_client_wait_end(gw_client *c)
{
    if (c->proto != &wait_proto)
        return;
    c->wait = NULL;
    c->wait_data = NULL;
    gw_client_http(c);
    c->phase_ms = gw_loop_now(c->w->loop);
}

void gw_client_resume(gw_client *c)
{
    if (c->phase != GW_PHASE_HTTP)
        return;
    if (c->close_after) {
        gw_client_finish(c);
        return;
    }
    gw_conn_pause(&c->conn, 0);
    c->task.fn = client_pending_task;
    gw_loop_pending(c->w->loop, &c->task);
    gw_client_arm(c);
}

static void client_pending_task(gw_task *t)
{
    gw_client *c = gw_container_of(t, gw_client, task);
    if (c->phase != GW_PHASE_CLOSED)
        process_buffered(c);
    if (c->phase != GW_PHASE_CLOSED && !(c->conn.flags & GW_CONN_F_PAUSED))
        client_read(c);
}

static void client_io(gw_io *io, uint32_t events)
{
    gw_client *c = gw_container_of(io, gw_client, conn.io);
    c->task.fn = client_pending_task;
    if (c->phase == GW_PHASE_TLS) {
        int r = gw_conn_handshake(&c->conn);
        if (r == GW_ERR) {
            gw_counter_inc(gw_srv.m_tls_fail);
            gw_client_close(c);
            return;
        }
        if (r == GW_AGAIN)
            return;
        c->phase = GW_PHASE_HTTP; /* phase_ms stays: the first head is due within the timeout of the accept */
        gw_conn_update(&c->conn);
        gw_client_arm(c);
        events |= GW_EV_READ; /* TLS may already hold application data */
    }
    if (events & GW_EV_WRITE || (c->conn.flags & GW_CONN_F_TLS_WR)) {
        int rc = gw_conn_flush(&c->conn);
        if (rc == GW_ERR) {
            on_peer_gone(c, 1);
            return;
        }
        if (rc == GW_OK) {
            if (c->phase == GW_PHASE_FINISH)
                gw_conn_shutdown(&c->conn);
            int serving = c->phase != GW_PHASE_FINISH;
            if (serving && c->proto->drained)
                c->proto->drained(c);
            if ((c->conn.flags & GW_CONN_F_PAUSED) && c->phase != GW_PHASE_CLOSED &&
                !(serving && c->proto->keep_paused && c->proto->keep_paused(c))) {
                gw_conn_pause(&c->conn, 0);
                /* Input may be waiting in our buffer: process it again. */
                if (c->conn.in.len)
                    gw_loop_pending(c->w->loop, &c->task);
            }
        }
    }
    /* A TLS read that needed the socket writable is retried now. */
    if ((events & GW_EV_WRITE) && (c->conn.flags & GW_CONN_F_TLS_RW))
        events |= GW_EV_READ;
    if ((events & (GW_EV_READ | GW_EV_ERROR)) && c->phase != GW_PHASE_CLOSED &&
        !(c->conn.flags & GW_CONN_F_PAUSED)) {
        client_read(c);
    } else if ((events & GW_EV_ERROR) && c->phase != GW_PHASE_CLOSED) {
        /* Reads are paused (backpressure), but the socket reported an error
         * or a hang-up (GW_CONN_F_WATCH_HUP): a reset peer. Its unread bytes
         * are gone with it, so it ends now rather than at the next
         * heartbeat, and a relay's upstream leg is told at once. */
        on_peer_gone(c, 1);
    }
}

/* Called on each client when the worker starts draining. */
void gw_client_drain(gw_client *c)
{
    switch (c->phase) {
    case GW_PHASE_FINISH:
    case GW_PHASE_CLOSED:
        break;
    case GW_PHASE_TLS:
        gw_client_close(c);
        break;
    default:
        if (c->proto->drain)
            c->proto->drain(c);
        else
            gw_client_close(c);
        break;
    }
}

/* client.c: one accepted connection through its phases: TLS handshake,
 * HTTP requests, WebSocket session, finish (flush + linger), closed.
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
#include "server/server.h"

static void client_io(gw_io *io, uint32_t events);
static void client_timer(gw_timer *t);

static void client_free_task(gw_task *t)
{
    gw_client *c = gw_container_of(t, gw_client, task);
    gw_free(c->norm_path);
    gw_free(c);
}

/* The request target as every later step sees it (routes, handlers, the
 * upstream's request): absolute-form served as origin-form, dot segments
 * removed (RFC 3986 section 5.2.4), so "/app/../admin" is "/admin" before a
 * route prefix is matched and no upstream ever sees "/../". The client's
 * buffer is left untouched (a head may be parsed again when its body is
 * still arriving): a changed path lives in c->norm_path. */
static int normalize_target(gw_client *c, gw_http_req *req)
{
    if (gw_h1_origin_form(req) != GW_OK)
        return GW_ERR;
    if (!gw_h1_path_needs_normalizing(req->path))
        return GW_OK;
    gw_free(c->norm_path);
    c->norm_path = gw_malloc(req->path.n + 1);
    req->path = gw_str_make(c->norm_path, gw_h1_normalize_path(req->path, c->norm_path));
    return GW_OK;
}

void gw_client_accept(gw_worker *w, int fd, const struct sockaddr_storage *ss, int admin)
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
    if (gw_srv.tls_ctx && !admin) {
        if (gw_conn_tls(&c->conn, gw_srv.tls_ctx, 1, NULL) != GW_OK) {
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
    if (c->wsc)
        gw_ws_serve_closed(c);
    if (c->pending)
        gw_relay_pending_abort(c);
    if (c->proxy)
        gw_proxy_abort(c);
    if (c->wait) {
        const gw_client_wait_ops *ops = c->wait;
        c->wait = NULL;
        ops->abort(c, c->wait_data);
    }
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
    if (c->wsc)
        gw_ws_serve_closed(c);
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

/* How long a connection with no request bytes may wait in the HTTP phase:
 * until its first request, the handshake timeout (counted from accept); after
 * one, the keep-alive idle timeout. */
static uint64_t http_wait_ms(const gw_client *c)
{
    return c->served ? gw_srv.cfg.http_idle_timeout_ms : gw_srv.cfg.handshake_timeout_ms;
}

void gw_client_arm(gw_client *c)
{
    const gw_config *cfg = &gw_srv.cfg;
    uint64_t at;
    switch (c->phase) {
    case GW_PHASE_TLS:
        at = c->phase_ms + cfg->handshake_timeout_ms;
        break;
    case GW_PHASE_HTTP:
        /* A request under way, and the first request of a connection, must
         * complete its head in the handshake timeout (slow-header defence;
         * a connection that sends nothing is no different); an idle
         * keep-alive connection gets the idle timeout. */
        at = c->phase_ms + (c->conn.in.len ? cfg->handshake_timeout_ms : http_wait_ms(c));
        break;
    case GW_PHASE_WS:
        at = gw_ws_serve_deadline(c);
        break;
    case GW_PHASE_PROXY:
        /* A request body must keep arriving: a client silent for the
         * handshake timeout mid-body is cut, and so is one whose body misses
         * its deadline (GATEWAY_BODY_TIMEOUT, extended by the bytes that
         * came; see gw_proxy_body_deadline): the slow-body defence. The
         * timer may fire early (the deadline only moves later); client_timer
         * re-arms then. Once the body is out, the upstream's timeouts apply. */
        if (gw_proxy_body_pending(c)) {
            uint64_t deadline = gw_proxy_body_deadline(c);
            at = c->phase_ms + cfg->handshake_timeout_ms;
            if (deadline && deadline < at)
                at = deadline;
            break;
        }
        at = c->phase_ms + 3600000;
        break;
    case GW_PHASE_UPSTREAM:
        /* The upstream side has its own timeouts; this is a backstop. */
        at = c->phase_ms + 3600000;
        break;
    case GW_PHASE_WAIT:
        at = c->wait_deadline_ms;
        break;
    case GW_PHASE_FINISH:
        at = c->phase_ms + GW_LINGER_MS;
        break;
    default:
        return;
    }
    gw_timer_start_at(c->w->loop, &c->timer, at);
}

static void client_timer(gw_timer *t)
{
    gw_client *c = gw_container_of(t, gw_client, timer);
    uint64_t now = gw_loop_now(c->w->loop);
    switch (c->phase) {
    case GW_PHASE_WS:
        gw_ws_serve_timer(c);
        return;
    case GW_PHASE_WAIT:
        if (now >= c->wait_deadline_ms) {
            c->wait->deadline(c, c->wait_data);
            return;
        }
        gw_client_arm(c);
        return;
    case GW_PHASE_PROXY:
        if (gw_proxy_body_pending(c)) {
            uint64_t deadline = gw_proxy_body_deadline(c);
            if (deadline && now >= deadline) {
                gw_proxy_body_timeout(c, 1);
                return;
            }
            if (now >= c->phase_ms + gw_srv.cfg.handshake_timeout_ms) {
                gw_proxy_body_timeout(c, 0);
                return;
            }
        }
        gw_client_arm(c);
        return;
    case GW_PHASE_HTTP:
        if (c->conn.in.len && now >= c->phase_ms + gw_srv.cfg.handshake_timeout_ms) {
            gw_http_error(c, 408, "request_timeout", "the request head did not arrive in time", NULL, NULL);
            gw_client_finish(c);
            return;
        }
        if (!c->conn.in.len && now >= c->phase_ms + http_wait_ms(c)) {
            if (!c->served)
                gw_log_msg(GW_LOG_DEBUG, NULL, "connection from %s closed: no request within the handshake timeout",
                           c->ip);
            gw_client_close(c);
            return;
        }
        gw_client_arm(c);
        return;
    default:
        gw_client_close(c);
        return;
    }
}

/* Processes n bytes at p for the current phase; returns bytes consumed. */
static size_t process(gw_client *c, uint8_t *p, size_t n)
{
    size_t off = 0;
    while (off < n) {
        if (c->phase == GW_PHASE_WS)
            return off + gw_ws_serve_feed(c, p + off, n - off);
        if (c->phase == GW_PHASE_UPSTREAM || c->phase == GW_PHASE_WAIT)
            return off; /* kept until the upstream (or the store) answers */
        if (c->phase == GW_PHASE_PROXY) {
            size_t used = gw_proxy_feed(c, p + off, n - off);
            if (c->phase == GW_PHASE_PROXY || used == 0)
                return off + used;
            off += used;
            continue;
        }
        if (c->phase != GW_PHASE_HTTP)
            return n; /* finishing: discard */
        gw_http_header hdrs[128];
        gw_http_req req;
        int status = 400;
        int r = gw_h1_parse_request((const char *)p + off, n - off, &req, hdrs, &gw_srv.limits, &status);
        if (r > 0 && normalize_target(c, &req) != GW_OK) {
            r = GW_ERR;
            status = 400;
        }
        if (r == GW_AGAIN) {
            /* A new keep-alive request starts; the first one's head is due
             * within the handshake timeout of the accept. */
            if (off == 0 && c->conn.in.len == 0 && c->served)
                c->phase_ms = gw_loop_now(c->w->loop);
            break;
        }
        if (r < 0) {
            static const struct {
                int status;
                const char *code, *msg;
            } errs[] = {
                {400, "bad_request", "the request is malformed"},
                {414, "uri_too_long", "the request line is too long"},
                {431, "request_header_fields_too_large", "the request head is too large"},
                {505, "http_version_not_supported", "only HTTP/1.0 and HTTP/1.1 are served here"},
            };
            size_t i = 0;
            while (i + 1 < GW_ARRAY_LEN(errs) && errs[i].status != status)
                i++;
            if (errs[i].status != status)
                i = 0;
            c->close_after = 1;
            gw_http_error(c, errs[i].status, errs[i].code, errs[i].msg, NULL, NULL);
            gw_client_finish(c);
            return n;
        }
        /* The gateway's own endpoints (the admin API) read a small body
         * whole before the handler runs: wait until all of it is here. */
        const uint8_t *body = NULL;
        size_t blen = 0;
        gw_h1_body fr;
        int st;
        const char *why;
        if ((c->admin || gw_http_has_handler(c, &req)) && gw_h1_request_body(&req, &fr, &st, &why) == GW_OK &&
            (fr.chunked || fr.content_length)) {
            if (fr.chunked || fr.content_length > GW_SMALL_BODY_MAX) {
                c->close_after = 1;
                gw_http_error(c, fr.chunked ? 411 : 413, fr.chunked ? "length_required" : "payload_too_large",
                              fr.chunked ? "send the body with Content-Length" : "the body is too large", &req,
                              NULL);
                gw_client_finish(c);
                return n;
            }
            if (n - off - (size_t)r < fr.content_length)
                break; /* the rest of the body has not arrived */
            body = p + off + r;
            blen = (size_t)fr.content_length;
        }
        off += (size_t)r + blen;
        c->served = 1;
        if (gw_http_handle(c, &req, (size_t)r, body, blen) != GW_OK)
            continue; /* phase changed: loop feeds the rest to the new phase */
        c->phase_ms = gw_loop_now(c->w->loop);
    }
    return off;
}

static void on_peer_gone(gw_client *c, int reset)
{
    GW_UNUSED(reset);
    if (c->phase == GW_PHASE_WS && c->wsc)
        gw_ws_abort(&c->wsc->ws, gw_cause_downstream_closed);
    gw_client_close(c);
}

static size_t max_input(const gw_client *c)
{
    if (c->phase == GW_PHASE_WS)
        return (size_t)gw_srv.cfg.ws_max_message_bytes + GW_WS_MAX_HEADER + GW_READ_CHUNK;
    return (size_t)gw_srv.cfg.max_header_bytes + GW_READ_CHUNK + GW_SMALL_BODY_MAX;
}

/* Bytes still missing from the frame at the front of conn.in, so one read
 * can complete it (0 when unknown). */
static size_t pending_need(const gw_client *c)
{
    if (c->phase != GW_PHASE_WS || c->conn.in.len < 2)
        return 0;
    gw_ws_frame_hdr h;
    uint16_t code;
    int hl = gw_ws_frame_parse_header(gw_buf_head(&c->conn.in), c->conn.in.len, &h, &code);
    if (hl <= 0 || h.len > gw_srv.cfg.ws_max_message_bytes)
        return 0;
    uint64_t total = (uint64_t)hl + h.len;
    return total > c->conn.in.len ? (size_t)(total - c->conn.in.len) : 0;
}

static void client_read(gw_client *c)
{
    gw_worker *w = c->w;
    for (int round = 0; round < 8 && c->phase != GW_PHASE_CLOSED; round++) {
        int own = c->conn.in.len > 0 && c->phase != GW_PHASE_FINISH;
        uint8_t *p;
        size_t cap;
        if (own) {
            /* Room for the rest of what is pending (a frame split across
             * reads) and a read's worth more, within the input cap. */
            size_t want = GW_MAX((size_t)GW_READ_CHUNK / 4, pending_need(c));
            want = GW_MIN(want, max_input(c) - c->conn.in.len);
            if (want == 0 || gw_buf_reserve(&c->conn.in, want, max_input(c)) != GW_OK) {
                /* Cannot happen while the parsers enforce their limits
                 * (they fail before input passes them); be safe anyway. */
                on_peer_gone(c, 0);
                return;
            }
            p = gw_buf_tail(&c->conn.in);
            cap = gw_buf_room(&c->conn.in);
        } else {
            p = w->rbuf;
            cap = GW_READ_CHUNK;
        }
        ssize_t r = gw_conn_read(&c->conn, p, cap);
        if (r == GW_AGAIN)
            return;
        if (r <= 0) {
            on_peer_gone(c, r < 0);
            return;
        }
        if (c->phase == GW_PHASE_FINISH)
            continue; /* lingering: discard */
        if (c->wsc)
            c->wsc->last_seen_ms = gw_loop_now(w->loop);
        else if (c->phase == GW_PHASE_PROXY)
            c->phase_ms = gw_loop_now(w->loop); /* the body is still arriving */
        gw_conn_cork(&c->conn);
        if (own) {
            gw_buf_commit(&c->conn.in, (size_t)r);
            size_t used = process(c, gw_buf_head(&c->conn.in), c->conn.in.len);
            if (c->phase != GW_PHASE_CLOSED)
                gw_buf_consume(&c->conn.in, used);
        } else {
            size_t used = process(c, p, (size_t)r);
            if (used < (size_t)r &&
                (c->phase == GW_PHASE_HTTP || c->phase == GW_PHASE_WS || c->phase == GW_PHASE_UPSTREAM ||
                 c->phase == GW_PHASE_WAIT || c->phase == GW_PHASE_PROXY) &&
                gw_buf_append(&c->conn.in, p + used, (size_t)r - used, max_input(c)) != GW_OK) {
                gw_conn_uncork(&c->conn);
                on_peer_gone(c, 0);
                return;
            }
        }
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
        if ((size_t)r < cap && gw_conn_pending(&c->conn) == 0)
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
        (c->phase != GW_PHASE_HTTP && c->phase != GW_PHASE_WS && c->phase != GW_PHASE_PROXY))
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

static void client_pending_task(gw_task *t);

void gw_client_wait(gw_client *c, const gw_client_wait_ops *ops, void *data, uint64_t deadline_ms)
{
    c->phase = GW_PHASE_WAIT;
    c->phase_ms = gw_loop_now(c->w->loop);
    c->wait = ops;
    c->wait_data = data;
    c->wait_deadline_ms = deadline_ms;
    gw_conn_pause(&c->conn, 1);
    gw_client_arm(c);
}

void gw_client_wait_end(gw_client *c)
{
    if (c->phase != GW_PHASE_WAIT)
        return;
    c->wait = NULL;
    c->wait_data = NULL;
    c->phase = GW_PHASE_HTTP;
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
            if (c->wsc && c->wsc->up)
                gw_relay_client_drained(c);
            if (c->proxy)
                gw_proxy_client_drained(c);
            if ((c->conn.flags & GW_CONN_F_PAUSED) && c->phase != GW_PHASE_UPSTREAM && c->phase != GW_PHASE_WAIT &&
                c->phase != GW_PHASE_PROXY &&
                !(c->wsc && c->wsc->up && gw_wsc_queued(c->wsc->up) > GW_OUT_HIGH)) {
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
    case GW_PHASE_WS:
        gw_ws_serve_timer(c); /* notices draining and starts the close */
        break;
    case GW_PHASE_HTTP:
        /* An idle keep-alive connection may still ask /readyz (and learn of
         * the drain from a 503 with Connection: close): it gets a short
         * grace, then is closed. */
        c->close_after = 1;
        if (c->conn.in.len == 0 && !c->admin) {
            uint64_t grace = GW_MIN((uint64_t)1000, gw_srv.cfg.shutdown_timeout_ms / 4);
            uint64_t idle = http_wait_ms(c);
            c->phase_ms = gw_loop_now(c->w->loop) + grace - GW_MIN(idle, gw_loop_now(c->w->loop) + grace);
            gw_client_arm(c);
        }
        break;
    case GW_PHASE_PROXY:
    case GW_PHASE_WAIT:
        c->close_after = 1; /* the exchange finishes, then the connection closes */
        break;
    case GW_PHASE_TLS:
    case GW_PHASE_UPSTREAM:
        gw_client_close(c);
        break;
    default:
        break;
    }
}

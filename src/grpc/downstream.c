/* downstream.c: see downstream.h. One connection per call (Connection:
 * close): the answer is framed by Content-Length, or by the close. The
 * connection reads through gw_conn_read_into like every socket above net/. */
#include "grpc/downstream.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "core/alloc.h"
#include "core/common.h"
#include "http/h1_parse.h"
#include "net/conn.h"
#include "net/sock.h"

#define DS_MAX_HEAD (16u * 1024)
#define DS_MAX_HEADERS 64

struct gw_downstream {
    gw_conn conn;
    gw_loop *loop;
    gw_timer timer;
    gw_task task; /* reports a failure to start, after the call returned */
    gw_downstream_cb cb;
    void *ud;
    uint8_t *req;
    size_t req_len;
    int connected, done;
    int status;             /* from the head */
    size_t head_len;        /* bytes of head in conn.in (0: not parsed yet) */
    long long content_length; /* -1: until the close */
    int fail_result;
    char why[160];
};

static void ds_free_task(gw_task *t)
{
    gw_downstream *d = gw_container_of(t, gw_downstream, task);
    gw_free(d->req);
    gw_free(d);
}

/* Closes the connection now; the memory goes after the batch (the reader
 * may be inside gw_conn_read_into on it). */
static void ds_free(gw_downstream *d)
{
    gw_timer_stop(d->loop, &d->timer);
    gw_task_cancel(&d->task);
    if (d->conn.io.fd >= 0)
        gw_conn_close(&d->conn);
    d->task.fn = ds_free_task;
    gw_loop_defer(d->loop, &d->task);
}

static void ds_finish(gw_downstream *d, int result, const uint8_t *body, size_t n, const char *why)
{
    if (d->done)
        return;
    d->done = 1;
    d->cb(d->ud, result, d->status, body, n, why ? why : "");
    ds_free(d);
}

static int status_result(int st)
{
    if (st >= 200 && st < 300)
        return GW_DS_OK;
    if (st == 502 || st == 503 || st == 504)
        return GW_DS_UNAVAILABLE;
    return GW_DS_FAILED;
}

/* The answer so far in p[0..n): GW_AGAIN for more, else finished. */
static size_t ds_rcv(gw_conn *c, uint8_t *p, size_t n)
{
    gw_downstream *d = gw_container_of(c, gw_downstream, conn);
    if (!d->head_len) {
        gw_http_resp resp;
        gw_http_header hs[DS_MAX_HEADERS];
        gw_h1_limits lim = {DS_MAX_HEAD, DS_MAX_HEAD, DS_MAX_HEADERS};
        int st = 0;
        int r = gw_h1_parse_response((const char *)p, n, &resp, hs, &lim, &st);
        if (r == GW_AGAIN)
            return 0;
        if (r < 0) {
            ds_finish(d, GW_DS_FAILED, NULL, 0, "malformed response head");
            return n;
        }
        d->head_len = (size_t)r;
        d->status = resp.status;
        d->content_length = -1;
        for (size_t i = 0; i < resp.num_headers; i++) {
            const gw_http_header *h = &resp.headers[i];
            if (h->name.n == 14 && strncasecmp(h->name.p, "Content-Length", 14) == 0) {
                long long v = 0;
                for (size_t k = 0; k < h->value.n; k++) {
                    if (h->value.p[k] < '0' || h->value.p[k] > '9' || v > (long long)GW_DOWNSTREAM_MAX_BODY) {
                        v = -2;
                        break;
                    }
                    v = v * 10 + (h->value.p[k] - '0');
                }
                d->content_length = h->value.n ? v : -2;
            } else if (h->name.n == 17 && strncasecmp(h->name.p, "Transfer-Encoding", 17) == 0) {
                ds_finish(d, GW_DS_FAILED, NULL, 0, "chunked answers are not supported (send Content-Length)");
                return n;
            }
        }
        if (d->content_length == -2 || d->content_length > (long long)GW_DOWNSTREAM_MAX_BODY) {
            ds_finish(d, GW_DS_FAILED, NULL, 0, "bad or oversized Content-Length");
            return n;
        }
    }
    size_t have = n - d->head_len;
    if (have > GW_DOWNSTREAM_MAX_BODY) {
        ds_finish(d, GW_DS_FAILED, NULL, 0, "answer body over 1 MiB");
        return n;
    }
    if (d->content_length >= 0 && have >= (size_t)d->content_length) {
        ds_finish(d, status_result(d->status), p + d->head_len, (size_t)d->content_length, NULL);
        return n;
    }
    return 0; /* keep everything until the body is whole */
}

static size_t ds_max_input(gw_conn *c)
{
    GW_UNUSED(c);
    return DS_MAX_HEAD + GW_DOWNSTREAM_MAX_BODY + 1;
}

static const gw_conn_reader ds_reader = {ds_rcv, ds_max_input, NULL};

static void ds_io(gw_io *io, uint32_t events)
{
    gw_downstream *d = gw_container_of(io, gw_downstream, conn.io);
    if (!d->connected) {
        int e = gw_sock_connect_result(d->conn.io.fd);
        if (e) {
            snprintf(d->why, sizeof d->why, "connect: %s", strerror(e));
            ds_finish(d, GW_DS_UNAVAILABLE, NULL, 0, d->why);
            return;
        }
        d->connected = 1;
        gw_conn_connected(&d->conn);
        if (gw_conn_write(&d->conn, d->req, d->req_len) != GW_OK) {
            ds_finish(d, GW_DS_UNAVAILABLE, NULL, 0, "write failed");
            return;
        }
        gw_conn_want_read(&d->conn, 1);
        return;
    }
    if (events & GW_EV_WRITE) {
        if (gw_conn_flush(&d->conn) == GW_ERR) {
            ds_finish(d, GW_DS_UNAVAILABLE, NULL, 0, "write failed");
            return;
        }
    }
    if (!(events & (GW_EV_READ | GW_EV_ERROR)))
        return;
    for (;;) {
        int filled = 0;
        ssize_t r = gw_conn_read_into(&d->conn, &ds_reader, &filled);
        if (d->done)
            return;
        if (r == GW_AGAIN)
            return;
        if (r == 0) {
            /* The close ends a body without Content-Length. */
            if (d->head_len && d->content_length < 0) {
                size_t bn = d->conn.in.len - d->head_len;
                ds_finish(d, status_result(d->status), gw_buf_head(&d->conn.in) + d->head_len, bn, NULL);
            } else {
                ds_finish(d, d->head_len ? GW_DS_FAILED : GW_DS_UNAVAILABLE, NULL, 0,
                          d->head_len ? "closed before the whole body" : "closed before an answer");
            }
            return;
        }
        if (r < 0) {
            ds_finish(d, r == GW_CONN_FULL ? GW_DS_FAILED : GW_DS_UNAVAILABLE, NULL, 0,
                      r == GW_CONN_FULL ? "answer too large" : "read failed");
            return;
        }
        if (!filled)
            return;
    }
}

static void ds_timeout(gw_timer *t)
{
    gw_downstream *d = gw_container_of(t, gw_downstream, timer);
    ds_finish(d, GW_DS_TIMEOUT, NULL, 0, "no answer by the deadline");
}

static void ds_start_failed(gw_task *t)
{
    gw_downstream *d = gw_container_of(t, gw_downstream, task);
    ds_finish(d, d->fail_result, NULL, 0, d->why);
}

gw_downstream *gw_downstream_call(gw_loop *l, const gw_wsc_target *t, const char *path, const char *headers,
                                  const uint8_t *body, size_t n, uint64_t deadline_ms, gw_downstream_cb cb,
                                  void *ud)
{
    gw_downstream *d = gw_calloc(1, sizeof *d);
    d->loop = l;
    d->cb = cb;
    d->ud = ud;
    d->timer.cb = ds_timeout;
    d->task.fn = ds_start_failed;
    gw_list_init(&d->task.node);
    d->conn.io.fd = -1;
    const char *base = strcmp(t->path, "/") == 0 ? "" : t->path;
    size_t base_n = strlen(base);
    if (base_n && base[base_n - 1] == '/')
        base_n--;
    size_t cap = strlen(path) + base_n + strlen(t->host_header) + (headers ? strlen(headers) : 0) + n + 256;
    d->req = gw_malloc(cap);
    int hn = snprintf((char *)d->req, cap,
                      "POST %.*s%s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream\r\n"
                      "Content-Length: %zu\r\nConnection: close\r\n%s\r\n",
                      (int)base_n, base, path, t->host_header, n, headers ? headers : "");
    if (hn > 0 && (size_t)hn + n <= cap) {
        if (n)
            memcpy(d->req + hn, body, n);
        d->req_len = (size_t)hn + n;
    }
    gw_timer_start_at(l, &d->timer, deadline_ms);
    if (t->tls) {
        d->fail_result = GW_DS_FAILED;
        snprintf(d->why, sizeof d->why, "https downstreams are not supported");
        gw_loop_pending(l, &d->task);
        return d;
    }
    int fd = gw_sock_connect(&t->addr, d->why, sizeof d->why);
    if (fd < 0 || !d->req_len) {
        d->fail_result = GW_DS_UNAVAILABLE;
        gw_loop_pending(l, &d->task);
        return d;
    }
    gw_conn_init(&d->conn, l, fd, ds_io);
    if (gw_conn_await_connect(&d->conn) != GW_OK) {
        d->fail_result = GW_DS_UNAVAILABLE;
        snprintf(d->why, sizeof d->why, "connect failed");
        gw_loop_pending(l, &d->task);
    }
    return d;
}

void gw_downstream_cancel(gw_downstream *d)
{
    if (d && !d->done) {
        d->done = 1;
        ds_free(d);
    }
}

/* ws_client.c: the asynchronous WebSocket client (see ws_client.h).
 *
 * Phases: CONNECTING (nonblocking connect, waiting for writability) -> TLS
 * (wss only) -> UPGRADE (request sent, reading the response head) -> OPEN
 * (gw_ws in client role) -> LINGER (session over, flushing our last frames)
 * -> DEAD (socket closed; on_close queued). A refusal goes UPGRADE -> BODY
 * (reading the refusal's body, bounded) -> DEAD.
 *
 * Re-entrancy: the owner's callbacks run with c->busy set; gw_wsc_free()
 * called then only marks the client, and the driver tears it down once the
 * callback (and the gw_ws_feed() that called it, which still reads from
 * conn.in) has returned. on_close always runs from a pending task. */
#include "upstream/ws_client.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "core/alloc.h"
#include "core/common.h"
#include "http/ws_handshake.h"
#include "net/resolve.h"
#include "net/sock.h"
#include "ws/pmd.h"

#define READ_CHUNK (16u * 1024)
#define MAX_HEAD (16u * 1024)  /* a longer upgrade response head is refused */
#define MAX_HDRS 64
#define BODY_CAP (64u * 1024)   /* refusal bodies are kept up to this */
#define LINGER_MS 2000          /* time given to our last frames to leave */
#define READ_ROUNDS 8           /* reads per wakeup (fairness) */

enum {
    S_RESOLVING, /* the upstream's name is being looked up (net/resolve) */
    S_CONNECTING,
    S_TLS,
    S_UPGRADE,
    S_BODY,
    S_OPEN,
    S_LINGER,
    S_DEAD,
};

enum { BODY_NONE, BODY_LENGTH, BODY_CHUNKED, BODY_EOF };

/* The cause we give gw_ws_close() for closes we start: recognising it by
 * pointer tells a local close from a peer's. */
static const char cause_local[] = "closed_locally";

struct gw_wsc {
    gw_loop *loop;
    gw_conn conn;
    gw_ws ws;
    gw_timer timer;   /* connect deadline, close wait, linger */
    gw_task task;     /* on_close notification, then the deferred free */
    gw_task rtask;    /* re-processing buffered input after a resume */
    gw_wsc_cbs cb;
    void *data;
    int state;
    uint8_t ws_inited;  /* gw_ws_init done */
    uint8_t freed;      /* gw_wsc_free() called */
    uint8_t busy;       /* an owner callback is running (inside our call chain) */
    uint8_t close_req;  /* gw_wsc_close() called */
    uint8_t paused;     /* owner paused reading */
    uint8_t close_armed; /* close-wait timer armed */
    uint8_t own_ctx;    /* tls_ctx is ours to free */
    uint8_t verify;     /* wss with certificate verification */
    int deflate;
    uint64_t max_msg, timeout_ms, close_wait_ms;
    void *tls_ctx;
    struct wsc_hs *hs;      /* handshake-only state, freed once the session is open */
    char *peer_reason;      /* the peer's close reason, once one arrived */
    gw_wsc_reason *reason;  /* allocated when the connection ends */
};

/* What only the connect and upgrade need: kept apart so that an open
 * connection (an idle relay leg) carries a few hundred bytes, not kilobytes. */
struct wsc_hs {
    gw_wsc_target t;
    char *protocols, *headers; /* owned copies of the options */
    char *path;                /* owned copy of opts->path; NULL: t.path */
    char key[25];
    char subproto[128];
    /* response kept for refusals and bad handshakes */
    gw_buf headbuf;
    gw_http_header hdrs[MAX_HDRS];
    gw_wsc_response resp;
    int body_mode;
    uint64_t body_len;   /* Content-Length */
    size_t body_decoded; /* chunked: bytes at the front of body already decoded */
    gw_h1_chunked chunk;
    gw_buf body;
    gw_resolve_req *resolving; /* while S_RESOLVING */
};

static gw_wsc_reason *rsn(gw_wsc *c)
{
    if (!c->reason)
        c->reason = gw_calloc(1, sizeof *c->reason);
    return c->reason;
}

static void hs_free(gw_wsc *c)
{
    struct wsc_hs *hs = c->hs;
    if (!hs)
        return;
    gw_buf_release(&hs->headbuf);
    gw_buf_release(&hs->body);
    gw_free(hs->protocols);
    gw_free(hs->headers);
    gw_free(hs->path);
    gw_free(hs);
    c->hs = NULL;
}

static const gw_h1_limits resp_limits = {8192, MAX_HEAD, MAX_HDRS};

static void on_io(gw_io *io, uint32_t events);
static void process_input(gw_wsc *c);
static void read_open(gw_wsc *c);

const char *gw_wsc_end_str(gw_wsc_end kind)
{
    switch (kind) {
    case GW_WSC_CONNECT_FAILED: return "connect_failed";
    case GW_WSC_CONNECT_TIMEOUT: return "connect_timeout";
    case GW_WSC_TLS_FAILED: return "tls_failed";
    case GW_WSC_HTTP_REFUSED: return "http_refused";
    case GW_WSC_BAD_HANDSHAKE: return "bad_handshake";
    case GW_WSC_CLOSED_BY_PEER: return "closed_by_peer";
    case GW_WSC_IO_ERROR: return "io_error";
    case GW_WSC_FAILED: return "failed";
    case GW_WSC_CLOSED_LOCALLY: return "closed_locally";
    }
    return "unknown";
}

/* ================================= URL parse ================================ */

int gw_wsc_parse_url(const char *url, gw_wsc_target *t, char *err, size_t errcap)
{
    memset(t, 0, sizeof *t);
    if (!url) {
        snprintf(err, errcap, "no URL");
        return GW_ERR;
    }
    for (const char *p = url; *p; p++)
        if ((unsigned char)*p <= 0x20 || *p == 0x7f) {
            snprintf(err, errcap, "URL contains a space or a control character");
            return GW_ERR;
        }
    if (strncmp(url, "unix:", 5) == 0) {
        /* unix:/sock/path[:/ws/path]: the socket path ends at the last ":/". */
        const char *s = url + 5, *sep = NULL;
        for (const char *p = s; (p = strstr(p, ":/")) != NULL; p++)
            sep = p;
        size_t n = sep ? (size_t)(sep - s) : strlen(s);
        if (n == 0 || n >= sizeof t->addr.path || s[0] != '/') {
            snprintf(err, errcap, "bad unix socket path in \"%s\" (want an absolute path)", url);
            return GW_ERR;
        }
        /* The path is matched against agent_upstreams patterns as written:
         * it must be the one file it names, without "." or ".." segments
         * or an empty one ("//") that would lead a match elsewhere. */
        for (size_t i = 0; i < n; i++) {
            if (s[i] != '/')
                continue;
            size_t e = i + 1;
            while (e < n && s[e] != '/')
                e++;
            size_t len = e - i - 1;
            if ((len == 0 && e < n) || (len == 1 && s[i + 1] == '.') ||
                (len == 2 && s[i + 1] == '.' && s[i + 2] == '.')) {
                snprintf(err, errcap, "unix socket path in \"%s\" has an empty, \".\" or \"..\" segment", url);
                return GW_ERR;
            }
        }
        memcpy(t->addr.path, s, n);
        t->addr.path[n] = '\0';
        t->addr.is_unix = 1;
        t->addr.set = 1;
        const char *path = sep ? sep + 1 : "/";
        size_t plen = strcspn(path, "#"); /* a fragment is never sent */
        if (plen + 1 >= sizeof t->path) {
            snprintf(err, errcap, "path too long in \"%s\"", url);
            return GW_ERR;
        }
        if (plen)
            snprintf(t->path, sizeof t->path, "%.*s", (int)plen, path);
        else
            snprintf(t->path, sizeof t->path, "/");
        snprintf(t->host_header, sizeof t->host_header, "localhost");
        return GW_OK;
    }
    static const struct {
        const char *scheme;
        int tls, http;
        uint16_t port;
    } schemes[] = {{"ws://", 0, 0, 80}, {"wss://", 1, 0, 443}, {"http://", 0, 1, 80}, {"https://", 1, 1, 443}};
    size_t i;
    for (i = 0; i < GW_ARRAY_LEN(schemes); i++)
        if (strncasecmp(url, schemes[i].scheme, strlen(schemes[i].scheme)) == 0)
            break;
    if (i == GW_ARRAY_LEN(schemes)) {
        snprintf(err, errcap, "unsupported URL \"%s\" (want ws://, wss://, http://, https:// or unix:)", url);
        return GW_ERR;
    }
    t->tls = schemes[i].tls;
    t->is_http = schemes[i].http;
    const char *auth = url + strlen(schemes[i].scheme);
    size_t alen = strcspn(auth, "/?#");
    const char *rest = auth + alen;
    char host[256];
    const char *port_s = NULL;
    size_t hlen;
    int v6 = 0;
    if (alen && auth[0] == '[') {
        const char *close = memchr(auth, ']', alen);
        if (!close) {
            snprintf(err, errcap, "bad IPv6 literal in \"%s\"", url);
            return GW_ERR;
        }
        hlen = (size_t)(close - auth - 1);
        if (hlen == 0 || hlen >= sizeof host) {
            snprintf(err, errcap, "bad IPv6 literal in \"%s\"", url);
            return GW_ERR;
        }
        memcpy(host, auth + 1, hlen);
        if (close + 1 < auth + alen) {
            if (close[1] != ':') {
                snprintf(err, errcap, "bad authority in \"%s\"", url);
                return GW_ERR;
            }
            port_s = close + 2;
        }
        v6 = 1;
    } else {
        const char *colon = memchr(auth, ':', alen);
        hlen = colon ? (size_t)(colon - auth) : alen;
        if (colon)
            port_s = colon + 1;
        if (hlen >= sizeof host) {
            snprintf(err, errcap, "host name too long in \"%s\"", url);
            return GW_ERR;
        }
        memcpy(host, auth, hlen);
    }
    host[hlen] = '\0';
    if (!hlen || memchr(auth, '@', alen)) {
        snprintf(err, errcap, "bad host in \"%s\"", url);
        return GW_ERR;
    }
    unsigned long port = schemes[i].port;
    if (port_s) {
        size_t plen = (size_t)(auth + alen - port_s);
        char tmp[8];
        char *end;
        if (plen == 0 || plen > 5) {
            snprintf(err, errcap, "bad port in \"%s\"", url);
            return GW_ERR;
        }
        memcpy(tmp, port_s, plen);
        tmp[plen] = '\0';
        port = strtoul(tmp, &end, 10);
        if (*end || port == 0 || port > 65535 || tmp[0] < '0' || tmp[0] > '9') {
            snprintf(err, errcap, "bad port in \"%s\"", url);
            return GW_ERR;
        }
    }
    char hp[300];
    snprintf(hp, sizeof hp, v6 ? "[%s]:%lu" : "%s:%lu", host, port);
    /* A URL's host is never a unix socket: "http://unix:806/" would read
     * as the socket "806" through gw_parse_addr's "unix:" form (a control
     * plane's base_url, a token's upstream could point the gateway at any
     * socket file; found by fuzz_browser_learn). */
    if (gw_parse_addr(hp, &t->addr) != GW_OK || t->addr.is_unix) {
        snprintf(err, errcap, "bad host in \"%s\"", url);
        return GW_ERR;
    }
    if (port == schemes[i].port)
        snprintf(t->host_header, sizeof t->host_header, v6 ? "[%s]" : "%s", host);
    else
        snprintf(t->host_header, sizeof t->host_header, "%s", hp);
    snprintf(t->sni, sizeof t->sni, "%s", host);
    /* The request target: path and query; a fragment is never sent. */
    size_t plen = strcspn(rest, "#");
    if (plen + 2 > sizeof t->path) {
        snprintf(err, errcap, "path too long in \"%s\"", url);
        return GW_ERR;
    }
    if (plen == 0 || rest[0] != '/')
        snprintf(t->path, sizeof t->path, "/%.*s", (int)plen, rest);
    else
        snprintf(t->path, sizeof t->path, "%.*s", (int)plen, rest);
    return GW_OK;
}

/* ================================ teardown ================================== */

static void free_task(gw_task *tk)
{
    gw_wsc *c = gw_container_of(tk, gw_wsc, task);
    hs_free(c);
    gw_free(c->peer_reason);
    gw_free(c->reason);
    if (c->own_ctx && c->tls_ctx)
        gw_tls_ctx_free(c->tls_ctx);
    gw_free(c);
}

static void notify_task(gw_task *tk)
{
    gw_wsc *c = gw_container_of(tk, gw_wsc, task);
    if (c->freed)
        return;
    c->cb.on_close(c, rsn(c));
}

/* Closes the socket and queues the one on_close. c->reason must be set. */
static void end_conn(gw_wsc *c)
{
    if (c->state == S_DEAD)
        return;
    c->state = S_DEAD;
    if (c->hs && c->hs->resolving) {
        gw_resolve_cancel(c->hs->resolving);
        c->hs->resolving = NULL;
    }
    gw_timer_stop(c->loop, &c->timer);
    gw_task_cancel(&c->rtask);
    if (c->ws_inited) {
        gw_ws_free(&c->ws);
        c->ws_inited = 0;
    }
    gw_conn_close(&c->conn);
    if (!c->freed) {
        c->task.fn = notify_task;
        gw_loop_pending(c->loop, &c->task);
    }
}

static void end_with(gw_wsc *c, gw_wsc_end kind, int err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void end_with(gw_wsc *c, gw_wsc_end kind, int err, const char *fmt, ...)
{
    if (c->state == S_DEAD)
        return;
    rsn(c)->kind = kind;
    rsn(c)->err = err;
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(rsn(c)->text, sizeof rsn(c)->text, fmt, ap);
        va_end(ap);
    }
    end_conn(c);
}

/* Teardown after gw_wsc_free(), outside any callback of ours. */
static void release(gw_wsc *c)
{
    if (c->state == S_OPEN && c->ws_inited && c->ws.state == GW_WS_OPEN) {
        gw_ws_close(&c->ws, GW_WS_CLOSE_GOING_AWAY, "going away", cause_local);
        gw_conn_flush(&c->conn);
    }
    end_conn(c); /* no notification: freed is set */
    gw_task_cancel(&c->task);
    gw_task_cancel(&c->rtask);
    c->task.fn = free_task;
    gw_loop_defer(c->loop, &c->task);
}

void gw_wsc_free(gw_wsc *c)
{
    if (!c || c->freed)
        return;
    c->freed = 1;
    if (!c->busy)
        release(c);
}

/* After an owner callback: honours a gw_wsc_free() made inside it. Returns
 * 1 when c is gone (the caller must stop touching the connection). */
static int after_callback(gw_wsc *c)
{
    if (c->freed) {
        release(c);
        return 1;
    }
    return c->state == S_DEAD;
}

/* ============================= session handlers ============================= */

static void h_message(gw_ws *ws, int opcode, uint8_t *p, size_t n)
{
    gw_wsc *c = ws->data;
    if (!c->freed && c->cb.on_message)
        c->cb.on_message(c, opcode, p, n);
}

static void h_pong(gw_ws *ws, const uint8_t *p, size_t n)
{
    gw_wsc *c = ws->data;
    if (!c->freed && c->cb.on_pong)
        c->cb.on_pong(c, p, n);
}

static void h_run(gw_ws *ws, uint8_t *p, size_t n, size_t count, uint64_t payload)
{
    gw_wsc *c = ws->data;
    if (!c->freed && c->cb.on_run)
        c->cb.on_run(c, p, n, count, payload);
}

static const gw_ws_handler wsc_handler = {h_message, h_pong, NULL, h_run};

/* Finds the peer's Close frame among the frames just consumed (server frames
 * are not masked, so the bytes are as sent) and keeps its reason: the
 * session keeps only the code. */
static void capture_close_reason(gw_wsc *c, const uint8_t *p, size_t n)
{
    size_t off = 0;
    while (off < n) {
        gw_ws_frame_hdr h;
        uint16_t cc;
        int hl = gw_ws_frame_parse_header(p + off, n - off, &h, &cc);
        if (hl <= 0 || h.len > n - off - (size_t)hl)
            return;
        if (h.opcode == GW_WS_OP_CLOSE && !h.masked) {
            uint16_t code, e;
            const uint8_t *r;
            size_t rl;
            if (gw_ws_close_parse(p + off + hl, (size_t)h.len, &code, &r, &rl, &e) == GW_OK) {
                gw_free(c->peer_reason);
                c->peer_reason = gw_strndup((const char *)r, GW_MIN(rl, (size_t)123));
            }
            return;
        }
        off += (size_t)hl + (size_t)h.len;
    }
}

static void ws_ended(gw_wsc *c)
{
    gw_ws *ws = &c->ws;
    gw_wsc_reason *r = rsn(c);
    if (ws->cause == cause_local) {
        r->kind = GW_WSC_CLOSED_LOCALLY;
        r->code = ws->close_sent;
        r->peer_code = ws->close_rcvd;
        if (ws->close_rcvd)
            snprintf(r->text, sizeof r->text, "%s", c->peer_reason ? c->peer_reason : "");
        else
            snprintf(r->text, sizeof r->text, "no close reply");
    } else if (ws->close_rcvd && ws->cause == gw_cause_graceful) {
        r->kind = GW_WSC_CLOSED_BY_PEER;
        r->code = ws->close_rcvd;
        snprintf(r->text, sizeof r->text, "%s", c->peer_reason ? c->peer_reason : "");
    } else {
        r->kind = GW_WSC_FAILED;
        r->code = ws->close_sent;
        snprintf(r->text, sizeof r->text, "%s", ws->error ? ws->error : (ws->cause ? ws->cause : "failed"));
    }
}

/* Looks at the session after input or a send: ended -> flush and close;
 * our Close sent -> wait for the reply at most close_wait_ms. */
static void after_ws(gw_wsc *c)
{
    if (c->state != S_OPEN)
        return;
    if (c->conn.flags & GW_CONN_F_ERROR) {
        end_with(c, GW_WSC_IO_ERROR, c->conn.err, "write failed: %s", strerror(c->conn.err ? c->conn.err : EPIPE));
        return;
    }
    if (c->ws.state == GW_WS_CLOSED) {
        ws_ended(c);
        int rc = gw_conn_flush(&c->conn);
        if (rc == GW_AGAIN) {
            c->state = S_LINGER;
            gw_conn_want_read(&c->conn, 0);
            gw_timer_start(c->loop, &c->timer, LINGER_MS);
            return;
        }
        end_conn(c);
        return;
    }
    if (c->ws.state == GW_WS_CLOSE_SENT && !c->close_armed) {
        c->close_armed = 1;
        gw_timer_start(c->loop, &c->timer, c->close_wait_ms);
    }
}

/* ================================ open phase ================================ */

/* Feeds n bytes at p to the session; returns how many it used. */
static size_t feed_session(gw_wsc *c, uint8_t *p, size_t n)
{
    uint16_t had_close = c->ws.close_rcvd;
    c->busy = 1;
    size_t used = gw_ws_feed(&c->ws, p, n);
    c->busy = 0;
    if (!had_close && c->ws.close_rcvd)
        capture_close_reason(c, p, used);
    return used;
}

/* After a corked batch was fed: its output leaves, then the owner's
 * gw_wsc_free and the session's state are honoured. Returns 1 when c is
 * gone or dead. */
static int after_feed(gw_wsc *c)
{
    gw_conn_uncork(&c->conn);
    if (after_callback(c))
        return 1;
    after_ws(c);
    return c->state != S_OPEN;
}

/* Feeds buffered input to the session in one corked batch. */
static void process_input(gw_wsc *c)
{
    if (!c->conn.in.len)
        return;
    gw_conn_cork(&c->conn);
    size_t used = feed_session(c, gw_buf_head(&c->conn.in), c->conn.in.len);
    gw_buf_consume(&c->conn.in, used);
    after_feed(c);
}

static size_t max_input(const gw_wsc *c) { return (size_t)c->max_msg + GW_WS_MAX_HEADER + READ_CHUNK; }

/* The open session's reader on the connection's one read path. */
static size_t open_rcv(gw_conn *conn, uint8_t *p, size_t n)
{
    gw_wsc *c = gw_container_of(conn, gw_wsc, conn);
    gw_conn_cork(conn);
    return feed_session(c, p, n);
}

static size_t open_max_input(gw_conn *conn) { return max_input(gw_container_of(conn, gw_wsc, conn)); }

static const gw_conn_reader open_reader = {open_rcv, open_max_input, NULL};

static void read_open(gw_wsc *c)
{
    for (int round = 0; round < READ_ROUNDS; round++) {
        if (c->state != S_OPEN || c->paused)
            return;
        int filled = 0;
        ssize_t r = gw_conn_read_into(&c->conn, &open_reader, &filled);
        if (r == GW_AGAIN)
            return;
        if (r == GW_CONN_FULL) {
            /* The session fails a too-large frame before its bytes pass
             * this bound; running out of memory lands here. */
            gw_conn_uncork(&c->conn);
            if (after_callback(c))
                return;
            end_with(c, GW_WSC_IO_ERROR, ENOMEM, "input buffer: out of memory");
            return;
        }
        if (r <= 0) {
            if (c->ws.state == GW_WS_CLOSE_SENT) {
                gw_ws_abort(&c->ws, c->ws.cause);
                ws_ended(c);
                end_conn(c);
                return;
            }
            if (r == 0)
                end_with(c, GW_WSC_IO_ERROR, 0, "connection closed without a close frame");
            else
                end_with(c, GW_WSC_IO_ERROR, c->conn.err, "read failed: %s", strerror(c->conn.err));
            return;
        }
        if (after_feed(c))
            return;
        if (!filled && gw_conn_pending(&c->conn) == 0)
            return;
    }
    /* Budget spent with bytes possibly waiting inside TLS: come back before
     * sleeping, no readiness event will announce them. */
    if (c->state == S_OPEN && !c->paused)
        gw_loop_pending(c->loop, &c->rtask);
}

static void rtask_fn(gw_task *tk)
{
    gw_wsc *c = gw_container_of(tk, gw_wsc, rtask);
    if (c->state != S_OPEN || c->paused)
        return;
    process_input(c);
    read_open(c);
}

/* =============================== upgrade phase ============================== */

/* Copies the response head (conn.in[0..len)) to headbuf and parses it there,
 * so the views survive the connection's buffers. */
static void keep_head(gw_wsc *c, size_t len)
{
    gw_buf_release(&c->hs->headbuf);
    if (gw_buf_append(&c->hs->headbuf, gw_buf_head(&c->conn.in), len, MAX_HEAD + 1) != GW_OK)
        return;
    int st;
    memset(&c->hs->resp, 0, sizeof c->hs->resp);
    if (gw_h1_parse_response((const char *)gw_buf_head(&c->hs->headbuf), len, &c->hs->resp.head, c->hs->hdrs, &resp_limits,
                             &st) > 0) {
        c->hs->resp.raw = (const char *)gw_buf_head(&c->hs->headbuf);
        c->hs->resp.raw_len = len;
        rsn(c)->resp = &c->hs->resp;
        rsn(c)->status = c->hs->resp.head.status;
    }
}

static void refusal_done(gw_wsc *c, int truncated)
{
    c->hs->resp.body = c->hs->body.len ? gw_buf_head(&c->hs->body) : NULL;
    c->hs->resp.body_len = c->hs->body_mode == BODY_CHUNKED ? c->hs->body_decoded : c->hs->body.len;
    if (c->hs->body_mode == BODY_LENGTH && c->hs->resp.body_len > c->hs->body_len)
        c->hs->resp.body_len = (size_t)c->hs->body_len;
    c->hs->resp.body_len = GW_MIN(c->hs->resp.body_len, (size_t)BODY_CAP);
    c->hs->resp.body_truncated = truncated;
    end_with(c, GW_WSC_HTTP_REFUSED, 0, "HTTP %d %.*s", c->hs->resp.head.status, (int)c->hs->resp.head.reason.n,
             c->hs->resp.head.reason.p);
}

/* Looks at the refusal body gathered so far; finishes when it is complete. */
static void body_progress(gw_wsc *c)
{
    switch (c->hs->body_mode) {
    case BODY_NONE:
        c->hs->body.len = 0;
        refusal_done(c, 0);
        return;
    case BODY_LENGTH:
        if (c->hs->body.len >= c->hs->body_len)
            refusal_done(c, 0);
        else if (c->hs->body.len >= BODY_CAP)
            refusal_done(c, 1);
        return;
    case BODY_CHUNKED: {
        size_t n = c->hs->body.len - c->hs->body_decoded, consumed = 0;
        int r = gw_h1_chunked_decode(&c->hs->chunk, gw_buf_head(&c->hs->body) + c->hs->body_decoded, &n, &consumed);
        c->hs->body_decoded += n;
        c->hs->body.len = (uint32_t)c->hs->body_decoded;
        if (r == GW_DONE)
            refusal_done(c, 0);
        else if (r == GW_ERR || c->hs->body_decoded >= BODY_CAP)
            refusal_done(c, 1);
        return;
    }
    default:
        if (c->hs->body.len >= BODY_CAP)
            refusal_done(c, 1);
        return;
    }
}

static void body_add(gw_wsc *c, const uint8_t *p, size_t n)
{
    if (gw_buf_append(&c->hs->body, p, n, BODY_CAP + READ_CHUNK + MAX_HEAD) != GW_OK) {
        refusal_done(c, 1);
        return;
    }
    body_progress(c);
}

static void start_refusal(gw_wsc *c, size_t head_len)
{
    keep_head(c, head_len);
    const gw_http_resp *h = &c->hs->resp.head;
    int st = h->status;
    gw_h1_chunked zero = {0};
    c->hs->chunk = zero;
    if ((st >= 100 && st < 200) || st == 204 || st == 304) {
        c->hs->body_mode = BODY_NONE;
    } else if (gw_h1_header_has_token(h->headers, h->num_headers, "Transfer-Encoding", "chunked")) {
        c->hs->body_mode = BODY_CHUNKED;
    } else {
        const gw_http_header *cl = gw_h1_find_header(h->headers, h->num_headers, "Content-Length");
        if (cl) {
            char tmp[24];
            size_t n = GW_MIN(cl->value.n, sizeof tmp - 1);
            memcpy(tmp, cl->value.p, n);
            tmp[n] = '\0';
            char *end;
            c->hs->body_len = strtoull(tmp, &end, 10);
            c->hs->body_mode = (*end || n == 0) ? BODY_EOF : BODY_LENGTH;
        } else {
            c->hs->body_mode = BODY_EOF;
        }
    }
    c->state = S_BODY;
    size_t rest = c->conn.in.len - head_len;
    if (rest)
        body_add(c, gw_buf_head(&c->conn.in) + head_len, rest);
    else
        body_progress(c);
    if (c->state == S_BODY)
        gw_buf_release(&c->conn.in);
}

/* The 101 passed the checks: start the session, tell the owner, and feed
 * the bytes that came after the head. */
static void open_session(gw_wsc *c, size_t head_len, const gw_http_resp *resp, const gw_pmd_params *pmd)
{
    gw_ws_init(&c->ws, &gw_conn_sink, &c->conn, 0, &wsc_handler, c, c->max_msg);
    c->ws_inited = 1;
    if (pmd && pmd->enabled)
        gw_ws_enable_pmd(&c->ws, pmd);
    c->state = S_OPEN;
    gw_timer_stop(c->loop, &c->timer);
    gw_wsc_response r = {0};
    r.head = *resp;
    r.raw = (const char *)gw_buf_head(&c->conn.in);
    r.raw_len = head_len;
    c->busy = 1;
    if (c->cb.on_open)
        c->cb.on_open(c, c->hs->subproto, &r);
    c->busy = 0;
    gw_buf_consume(&c->conn.in, head_len);
    hs_free(c);
    if (after_callback(c))
        return;
    if (c->paused)
        gw_conn_pause(&c->conn, 1);
    if (c->conn.in.len)
        process_input(c);
    else
        after_ws(c);
}

/* Parses the upgrade response in conn.in. */
static void handle_head(gw_wsc *c)
{
    gw_http_resp resp;
    int st = 0;
    int r = gw_h1_parse_response((const char *)gw_buf_head(&c->conn.in), c->conn.in.len, &resp, c->hs->hdrs,
                                 &resp_limits, &st);
    if (r == GW_AGAIN)
        return;
    if (r < 0) {
        end_with(c, GW_WSC_BAD_HANDSHAKE, 0, "malformed response head");
        return;
    }
    size_t head_len = (size_t)r;
    if (resp.status != 101) {
        start_refusal(c, head_len);
        return;
    }
    const char *why = NULL;
    if (gw_ws_client_check_response(&resp, c->hs->key, c->hs->protocols, &why) != GW_OK) {
        keep_head(c, head_len);
        end_with(c, GW_WSC_BAD_HANDSHAKE, 0, "101 response failed the %s check", why);
        return;
    }
    /* Extensions: only permessage-deflate, only when offered. */
    gw_pmd_params pmd = {0};
    size_t next = gw_h1_count_header(resp.headers, resp.num_headers, "Sec-WebSocket-Extensions");
    if (next) {
        const gw_http_header *e = gw_h1_find_header(resp.headers, resp.num_headers, "Sec-WebSocket-Extensions");
        if (!c->deflate || next > 1 || gw_pmd_client_accept(e->value, &pmd) != 1) {
            keep_head(c, head_len);
            end_with(c, GW_WSC_BAD_HANDSHAKE, 0, "101 response has an extension we did not offer or cannot use");
            return;
        }
    }
    const gw_http_header *ph = gw_h1_find_header(resp.headers, resp.num_headers, "Sec-WebSocket-Protocol");
    if (ph)
        snprintf(c->hs->subproto, sizeof c->hs->subproto, "%.*s", (int)ph->value.n, ph->value.p);
    open_session(c, head_len, &resp, &pmd);
}

/* Before the session: a refusal's body is gathered as it comes; the
 * upgrade response head is kept in conn.in until it is whole. */
static size_t pre_rcv(gw_conn *conn, uint8_t *p, size_t n)
{
    gw_wsc *c = gw_container_of(conn, gw_wsc, conn);
    if (c->state != S_BODY)
        return 0; /* parsed from conn.in by handle_head once kept */
    body_add(c, p, n);
    return n;
}

static size_t pre_max_input(gw_conn *conn) { return MAX_HEAD + max_input(gw_container_of(conn, gw_wsc, conn)); }

static const gw_conn_reader pre_reader = {pre_rcv, pre_max_input, NULL};

static void read_pre(gw_wsc *c)
{
    for (int round = 0; round < READ_ROUNDS; round++) {
        int filled = 0;
        ssize_t r = gw_conn_read_into(&c->conn, &pre_reader, &filled);
        if (r == GW_AGAIN)
            return;
        if (r == GW_CONN_FULL) {
            end_with(c, GW_WSC_BAD_HANDSHAKE, 0, "response head over %u bytes", MAX_HEAD);
            return;
        }
        if (r <= 0) {
            if (c->state == S_BODY) {
                refusal_done(c, c->hs->body_mode != BODY_EOF);
                return;
            }
            if (r == 0)
                end_with(c, GW_WSC_IO_ERROR, 0, "connection closed before the upgrade response");
            else
                end_with(c, GW_WSC_IO_ERROR, c->conn.err, "read failed before the upgrade response: %s",
                         strerror(c->conn.err));
            return;
        }
        if (c->state == S_UPGRADE) {
            handle_head(c);
            if (c->state == S_UPGRADE && c->conn.in.len > MAX_HEAD) {
                end_with(c, GW_WSC_BAD_HANDSHAKE, 0, "response head over %u bytes", MAX_HEAD);
                return;
            }
        }
        if (c->state == S_OPEN) {
            /* TLS may hold more already decrypted. */
            if (gw_conn_pending(&c->conn))
                gw_loop_pending(c->loop, &c->rtask);
            return;
        }
        if (c->state != S_UPGRADE && c->state != S_BODY)
            return;
    }
}

static void send_request(gw_wsc *c)
{
    gw_ws_client_key(c->hs->key);
    const char *path = c->hs->path ? c->hs->path : c->hs->t.path;
    size_t cap = 1024 + strlen(path) + strlen(c->hs->t.host_header) + (c->hs->protocols ? strlen(c->hs->protocols) : 0) +
                 (c->hs->headers ? strlen(c->hs->headers) : 0) + 128;
    char *req = gw_malloc(cap);
    size_t n = gw_ws_client_request(req, cap, c->hs->t.host_header, path, c->hs->key, c->hs->protocols,
                                    c->deflate ? gw_pmd_client_offer() : NULL, c->hs->headers);
    if (n == 0) {
        gw_free(req);
        end_with(c, GW_WSC_CONNECT_FAILED, EINVAL, "cannot build the upgrade request (bad characters in a header?)");
        return;
    }
    c->state = S_UPGRADE;
    int rc = gw_conn_write(&c->conn, req, n);
    gw_free(req);
    if (rc != GW_OK) {
        end_with(c, GW_WSC_IO_ERROR, c->conn.err, "cannot send the upgrade request: %s", strerror(c->conn.err));
        return;
    }
    gw_conn_want_read(&c->conn, 1);
}

static void tls_step(gw_wsc *c)
{
    int r = gw_conn_handshake(&c->conn);
    if (r == GW_AGAIN)
        return;
    if (r != GW_OK) {
        SSL *ssl = c->conn.ssl;
        long v = ssl ? SSL_get_verify_result(ssl) : X509_V_OK;
        if (c->verify && v != X509_V_OK)
            end_with(c, GW_WSC_TLS_FAILED, 0, "TLS handshake failed: certificate verification: %s",
                     X509_verify_cert_error_string(v));
        else
            end_with(c, GW_WSC_TLS_FAILED, c->conn.err, "TLS handshake failed");
        return;
    }
    send_request(c);
}

static void connected(gw_wsc *c)
{
    if (!c->hs->t.tls) {
        send_request(c);
        return;
    }
    /* An IP literal gets no SNI (RFC 6066) and is checked against the
     * certificate's IP addresses, not its DNS names. */
    struct in6_addr tmp6;
    struct in_addr tmp4;
    int is_ip = inet_pton(AF_INET, c->hs->t.sni, &tmp4) == 1 || inet_pton(AF_INET6, c->hs->t.sni, &tmp6) == 1;
    if (gw_conn_tls(&c->conn, c->tls_ctx, 0, is_ip ? NULL : c->hs->t.sni) != GW_OK) {
        end_with(c, GW_WSC_TLS_FAILED, 0, "cannot create a TLS session");
        return;
    }
    if (is_ip && c->verify)
        X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param((SSL *)c->conn.ssl), c->hs->t.sni);
    c->state = S_TLS;
    tls_step(c);
}

/* ================================= events =================================== */

static void on_io(gw_io *io, uint32_t events)
{
    gw_wsc *c = gw_container_of(io, gw_wsc, conn.io);
    /* A TLS read that needed the socket writable is retried on writability. */
    if ((events & GW_EV_WRITE) && (c->conn.flags & GW_CONN_F_TLS_RW))
        events |= GW_EV_READ;
    switch (c->state) {
    case S_CONNECTING: {
        int soerr = gw_sock_connect_result(c->conn.io.fd);
        if (soerr) {
            char a[300];
            gw_addr_format(&c->hs->t.addr, a, sizeof a);
            end_with(c, GW_WSC_CONNECT_FAILED, soerr, "connect %s: %s", a, strerror(soerr));
            return;
        }
        gw_conn_connected(&c->conn);
        connected(c);
        return;
    }
    case S_TLS:
        tls_step(c);
        return;
    case S_UPGRADE:
    case S_BODY:
        if ((events & GW_EV_WRITE) || (c->conn.flags & GW_CONN_F_TLS_WR)) {
            if (gw_conn_flush(&c->conn) == GW_ERR) {
                end_with(c, GW_WSC_IO_ERROR, c->conn.err, "cannot send the upgrade request: %s",
                         strerror(c->conn.err));
                return;
            }
        }
        if (events & (GW_EV_READ | GW_EV_ERROR))
            read_pre(c);
        return;
    case S_OPEN:
        if ((events & GW_EV_WRITE) || (c->conn.flags & GW_CONN_F_TLS_WR)) {
            int had = gw_conn_queued(&c->conn) > 0;
            int rc = gw_conn_flush(&c->conn);
            if (rc == GW_ERR) {
                after_ws(c); /* reports the write error */
                return;
            }
            if (rc == GW_OK && had && c->cb.on_drain) {
                c->busy = 1;
                c->cb.on_drain(c);
                c->busy = 0;
                if (after_callback(c))
                    return;
                after_ws(c);
                if (c->state != S_OPEN)
                    return;
            }
        }
        if ((events & (GW_EV_READ | GW_EV_ERROR)) && !c->paused)
            read_open(c);
        return;
    case S_LINGER: {
        int rc = gw_conn_flush(&c->conn);
        if (rc != GW_AGAIN)
            end_conn(c);
        return;
    }
    default:
        return;
    }
}

static void on_timer(gw_timer *tm)
{
    gw_wsc *c = gw_container_of(tm, gw_wsc, timer);
    switch (c->state) {
    case S_RESOLVING:
        end_with(c, GW_WSC_CONNECT_TIMEOUT, ETIMEDOUT, "the name %s was not resolved in %llu ms", c->hs->t.addr.host,
                 (unsigned long long)c->timeout_ms);
        return;
    case S_CONNECTING:
        end_with(c, GW_WSC_CONNECT_TIMEOUT, ETIMEDOUT, "TCP connect did not complete in %llu ms",
                 (unsigned long long)c->timeout_ms);
        return;
    case S_TLS:
        end_with(c, GW_WSC_CONNECT_TIMEOUT, ETIMEDOUT, "TLS handshake did not complete in %llu ms",
                 (unsigned long long)c->timeout_ms);
        return;
    case S_UPGRADE:
        end_with(c, GW_WSC_CONNECT_TIMEOUT, ETIMEDOUT, "no upgrade response in %llu ms",
                 (unsigned long long)c->timeout_ms);
        return;
    case S_BODY:
        refusal_done(c, 1);
        return;
    case S_OPEN:
        /* Our Close got no reply in time. */
        if (c->ws.state == GW_WS_CLOSE_SENT) {
            gw_ws_abort(&c->ws, c->ws.cause);
            ws_ended(c);
            end_conn(c);
        }
        return;
    case S_LINGER:
        end_conn(c);
        return;
    default:
        return;
    }
}

/* ================================== API ===================================== */

/* Opens the TCP connection to the resolved address (S_CONNECTING). */
static void start_connect(gw_wsc *c, const gw_resolved *ra)
{
    char cerr[256] = "";
    c->state = S_CONNECTING;
    int fd = gw_sock_connect_resolved(ra, &c->hs->t.addr, cerr, sizeof cerr);
    int e = errno;
    if (fd < 0) {
        end_with(c, GW_WSC_CONNECT_FAILED, e, "%s", cerr);
        return;
    }
    c->conn.io.fd = fd;
    if (gw_conn_await_connect(&c->conn) != GW_OK)
        end_with(c, GW_WSC_CONNECT_FAILED, errno, "cannot watch the socket: %s", strerror(errno));
}

static void on_resolved(void *ud, int ok, const gw_resolved *ra, const char *err)
{
    gw_wsc *c = ud;
    c->hs->resolving = NULL;
    if (!ok) {
        c->state = S_CONNECTING;
        end_with(c, GW_WSC_CONNECT_FAILED, 0, "%s", err);
        return;
    }
    start_connect(c, ra);
}

gw_wsc *gw_wsc_connect(gw_loop *l, const char *url, const gw_wsc_target *t, const gw_wsc_opts *opts,
                       const gw_wsc_cbs *cbs, void *data, char *err, size_t errcap)
{
    gw_wsc_opts none = {0};
    if (!opts)
        opts = &none;
    if (!cbs || !cbs->on_close) {
        snprintf(err, errcap, "on_close is required");
        return NULL;
    }
    gw_wsc_target parsed;
    if (url) {
        if (gw_wsc_parse_url(url, &parsed, err, errcap) != GW_OK)
            return NULL;
        t = &parsed;
    }
    if (!t) {
        snprintf(err, errcap, "no target");
        return NULL;
    }
    gw_wsc *c = gw_calloc(1, sizeof *c);
    c->hs = gw_calloc(1, sizeof *c->hs);
    c->loop = l;
    c->hs->t = *t;
    if (opts->unix_path) {
        if (strlen(opts->unix_path) >= sizeof c->hs->t.addr.path) {
            snprintf(err, errcap, "unix socket path too long");
            gw_free(c->hs);
            gw_free(c);
            return NULL;
        }
        memset(&c->hs->t.addr, 0, sizeof c->hs->t.addr);
        c->hs->t.addr.set = 1;
        c->hs->t.addr.is_unix = 1;
        snprintf(c->hs->t.addr.path, sizeof c->hs->t.addr.path, "%s", opts->unix_path);
    }
    c->cb = *cbs;
    c->data = data;
    c->hs->protocols = opts->protocols && opts->protocols[0] ? gw_strdup(opts->protocols) : NULL;
    c->hs->headers = opts->headers && opts->headers[0] ? gw_strdup(opts->headers) : NULL;
    c->hs->path = opts->path && opts->path[0] ? gw_strdup(opts->path) : NULL;
    c->deflate = opts->deflate;
    c->max_msg = opts->max_msg ? opts->max_msg : 1024 * 1024;
    c->timeout_ms = opts->timeout_ms ? opts->timeout_ms : 10000;
    c->close_wait_ms = opts->close_wait_ms ? opts->close_wait_ms : 5000;
    c->timer.cb = on_timer;
    c->rtask.fn = rtask_fn;
    c->task.fn = notify_task;
    c->conn.io.fd = -1;
    if (c->hs->t.tls) {
        c->verify = (uint8_t)(opts->tls_ctx ? 1 : !opts->insecure);
        if (opts->tls_ctx) {
            c->tls_ctx = opts->tls_ctx;
        } else {
            c->tls_ctx = gw_tls_client_ctx(!opts->insecure, err, errcap);
            if (!c->tls_ctx) {
                hs_free(c);
                gw_free(c);
                return NULL;
            }
            c->own_ctx = 1;
            if (opts->ca_file && opts->ca_file[0] &&
                SSL_CTX_load_verify_locations(c->tls_ctx, opts->ca_file, NULL) != 1) {
                ERR_clear_error();
                snprintf(err, errcap, "cannot load CA file %s", opts->ca_file);
                gw_tls_ctx_free(c->tls_ctx);
                hs_free(c);
                gw_free(c);
                return NULL;
            }
        }
    }
    /* The deadline covers the name lookup, the TCP connect, TLS and the upgrade. */
    gw_timer_start_at(l, &c->timer, gw_mono_ms() + c->timeout_ms);
    gw_conn_init(&c->conn, l, -1, on_io);
    gw_resolved ra;
    char cerr[256] = "";
    int rr = gw_resolve_now(&c->hs->t.addr, &ra, cerr, sizeof cerr);
    if (rr == GW_AGAIN) {
        c->state = S_RESOLVING;
        c->hs->resolving = gw_resolve_start(l, &c->hs->t.addr, on_resolved, c);
        return c;
    }
    c->state = S_CONNECTING;
    if (rr != GW_OK)
        end_with(c, GW_WSC_CONNECT_FAILED, 0, "%s", cerr);
    else
        start_connect(c, &ra);
    return c;
}

int gw_wsc_send(gw_wsc *c, int opcode, const uint8_t *p, size_t n)
{
    if (!c || c->freed || c->state != S_OPEN || c->ws.state != GW_WS_OPEN)
        return GW_ERR;
    int rc = gw_ws_send(&c->ws, opcode, p, n);
    if (rc != GW_OK && !c->busy)
        after_ws(c);
    return rc;
}

int gw_wsc_send_run(gw_wsc *c, uint8_t *p, size_t n, size_t count, uint64_t payload)
{
    if (!c || c->freed || c->state != S_OPEN || c->ws.state != GW_WS_OPEN)
        return GW_ERR;
    int rc = gw_ws_send_run(&c->ws, p, n, count, payload);
    if (rc != GW_OK && !c->busy)
        after_ws(c);
    return rc;
}

void gw_wsc_set_runs(gw_wsc *c, int on)
{
    if (c && c->ws_inited && c->cb.on_run)
        gw_ws_set_runs(&c->ws, on);
}

int gw_wsc_ping(gw_wsc *c, const uint8_t *p, size_t n)
{
    if (!c || c->freed || c->state != S_OPEN || c->ws.state != GW_WS_OPEN)
        return GW_ERR;
    int rc = gw_ws_ping(&c->ws, p, n);
    if (rc != GW_OK && !c->busy)
        after_ws(c);
    return rc;
}

void gw_wsc_close(gw_wsc *c, unsigned code, const char *reason)
{
    if (!c || c->freed || c->close_req || c->state == S_DEAD || c->state == S_LINGER)
        return;
    c->close_req = 1;
    if (c->state != S_OPEN) {
        rsn(c)->code = code;
        end_with(c, GW_WSC_CLOSED_LOCALLY, 0, "closed before the connection opened");
        return;
    }
    gw_ws_close(&c->ws, code, reason ? reason : "", cause_local);
    if (c->busy)
        return; /* process_input looks at the session when the callback returns */
    gw_conn_flush(&c->conn);
    after_ws(c);
}

void gw_wsc_pause(gw_wsc *c, int paused)
{
    if (!c || c->freed || c->paused == !!paused)
        return;
    c->paused = (uint8_t)!!paused;
    if (c->state != S_OPEN)
        return;
    gw_conn_pause(&c->conn, c->paused);
    if (!c->paused && (c->conn.in.len || gw_conn_pending(&c->conn)))
        gw_loop_pending(c->loop, &c->rtask);
}

void *gw_wsc_data(const gw_wsc *c) { return c->data; }
size_t gw_wsc_queued(const gw_wsc *c) { return c->state == S_DEAD ? 0 : gw_conn_queued(&c->conn); }
int gw_wsc_is_open(const gw_wsc *c) { return c->state == S_OPEN && c->ws.state == GW_WS_OPEN; }
gw_ws *gw_wsc_ws(gw_wsc *c) { return c->state == S_OPEN ? &c->ws : NULL; }

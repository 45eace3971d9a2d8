/* grpc_server.c: the gRPC connection (see grpc.h).
 *
 * One h2conn per connection, one gstream per HTTP/2 stream. A request is
 * dispatched when its half-close arrives (all three methods take one
 * request message): the bearer is looked up in the session store
 * (asynchronous; the connection keeps serving its other streams), then the
 * method runs. Responses are a HEADERS frame, DATA from the stream's own
 * buffer (a data provider that defers while it is empty) and trailers
 * (grpc-status, grpc-message); an error before any message is a
 * trailers-only response.
 *
 * Bounds: at most GW_GRPC_MAX_STREAMS streams (SETTINGS), a request message
 * at most GW_GRPC_MAX_MESSAGE, request bytes held per connection at most
 * GW_GRPC_CONN_BUFFERED, a SubscribeEvents stream's unsent bytes at most
 * SUB_OUT_HIGH (past it the push hub queues, and ends the stream at
 * GATEWAY_PUSH_QUEUE_LIMIT), nghttp2's output asked for only while the
 * connection's queue is under GW_OUT_HIGH, a stream's unsent answers at
 * most STREAM_UNSENT_MAX (past it RST_STREAM) and all streams' at most
 * CONN_UNSENT_MAX per connection (past it GOAWAY), a request not whole
 * within GATEWAY_HANDSHAKE_TIMEOUT reset, and PING / SETTINGS /
 * RST_STREAM frames rate-limited per connection (past it GOAWAY
 * ENHANCE_YOUR_CALM). */
#include "grpc/grpc.h"

#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>
#include <nghttp2/nghttp2.h>
#include <openssl/crypto.h>
#include <openssl/ssl.h>

#include "core/alloc.h"
#include "core/common.h"
#include "core/list.h"
#include "core/rand.h"
#include "grpc/downstream.h"
#include "grpc/grpc_wire.h"
#include "grpc/reflection.h"
#include "grpc/signer.h"
#include "grpc/health/v1/health.pb-c.h"
#include "http/bearer.h"
#include "log/log.h"
#include "metrics/metrics.h"
#include "net/conn.h"
#include "push/push.h"
#include "server/http_serve.h"
#include "server/routes.h"
#include "server/state.h"
#include "store/events.h"
#include "store/store.h"
#include "wsgate/v1/edge_gateway.pb-c.h"

#define SUB_OUT_HIGH (64u * 1024)      /* a subscriber stream's unsent bytes before the hub holds events */
#define STREAM_UNSENT_MAX (256u * 1024) /* a stream holding this much unsent takes no new answer: reset */
#define CONN_UNSENT_MAX (4u * 1024 * 1024) /* all streams' unsent on a connection: past it GOAWAY */
#define TRAILER_GRACE_MS 10000u        /* an ended stream whose peer does not take its trailers is reset */
#define FLOOD_BURST 200.0              /* control frames of one type a connection may send at once */
#define FLOOD_RATE 20.0                /* and per second after that */
#define MAX_HEADER_LIST (16u * 1024)
#define SHUTDOWN_DELAY_MIN_MS 500u
#define SHUTDOWN_DELAY_SPREAD_MS 4500u

static const char path_exec[] = "/wsgate.v1.EdgeGateway/ExecuteCommand";
static const char path_sub[] = "/wsgate.v1.EdgeGateway/SubscribeEvents";
static const char path_health[] = "/grpc.health.v1.Health/Check";
static const char path_reflect[] = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo";

enum { M_UNKNOWN = 0, M_EXEC, M_SUB, M_HEALTH, M_REFLECT };
static const char *const method_names[] = {"unknown", "ExecuteCommand", "SubscribeEvents", "Health/Check",
                                           "ServerReflectionInfo"};

static struct {
    int enabled;
    int off_no_key; /* off because the default address had no signer key */
    gw_signer *signer;
    void *tls_ctx;
    uint64_t store_timeout_ms;
    gw_metric *m_calls[17];
    gw_metric *m_streams, *m_floods, *m_conns;
} G;

typedef struct h2conn h2conn;

typedef struct gstream {
    h2conn *h;
    int32_t id;
    gw_list node;
    int method;
    int bad;                 /* the request was refused while its headers arrived (answered at dispatch) */
    int content_type_ok;
    size_t header_bytes;
    char corr[72];
    char bearer[512];
    uint64_t started_ms;
    uint64_t deadline_ms;    /* grpc-timeout (0: none) */
    uint64_t wait_ms;        /* the store's answer is due (0: not waiting) */
    uint64_t trailer_by_ms;  /* the trailers must be taken by then (0: not ended) */
    uint64_t request_by_ms;  /* the whole request must have arrived by then (0: dispatched or ended) */
    gw_timer timer;
    gw_grpc_reader rd;
    uint8_t *msg;            /* the request message (whole) */
    size_t msg_len;
    int nmsgs;
    int dispatched;
    /* the answer */
    int responding;          /* HEADERS (with the data provider) submitted */
    int ended;               /* grpc-status decided */
    int status;
    char message[256];
    gw_buf out;              /* length-prefixed messages nghttp2 has not taken */
    int deferred;            /* the data provider said DEFERRED: resume on new data */
    /* session */
    gw_store_op *op;
    char user[GW_SESSION_ID_MAX + 1];
    char dev[GW_SESSION_ID_MAX + 1];
    /* SubscribeEvents */
    gw_push_sub *sub;
    /* ExecuteCommand */
    gw_downstream *ds;
    char request_id[128];
    char command[128];
    char route[128];
} gstream;

struct h2conn {
    gw_client *c;
    nghttp2_session *s;
    gw_list streams;
    size_t nstreams;
    size_t ndispatched;      /* streams whose request arrived whole (the idle deadline runs while 0) */
    size_t buffered;         /* request bytes held by its streams */
    gw_task pump;
    int pump_queued;
    int draining, shutdown_done, dead;
    uint64_t drain_at_ms;
    uint64_t idle_since_ms;
    double tok_ping, tok_settings, tok_rst;
    uint64_t tok_ms;
};

static void pump_later(h2conn *h);
static void stream_end(gstream *st, int status, const char *message);

/* ================================ helpers =================================== */

static gw_metric *m_call(int code) { return G.m_calls[code >= 0 && code <= 16 ? code : 2]; }

static void call_log(gstream *st)
{
    gw_counter_inc(m_call(st->status));
    gw_log_line *l = gw_log_begin(st->status == GW_GRPC_OK ? GW_LOG_INFO : GW_LOG_WARN, "grpc call", st->corr);
    if (!l)
        return;
    gw_log_str(l, "method", method_names[st->method], 0);
    gw_log_str(l, "code", gw_grpc_status_name(st->status), 0);
    if (st->status != GW_GRPC_OK && st->message[0])
        gw_log_str(l, "grpc_message", st->message, 0);
    gw_log_str(l, "ip", st->h->c->ip, 0);
    if (st->user[0])
        gw_log_str(l, "user", st->user, 0);
    if (st->dev[0])
        gw_log_str(l, "device_session_id", st->dev, GW_LOG_JSON_ONLY);
    if (st->command[0])
        gw_log_str(l, "command", st->command, 0);
    if (st->request_id[0])
        gw_log_str(l, "request_id", st->request_id, GW_LOG_JSON_ONLY);
    if (st->sub)
        gw_log_int(l, "events_delivered", (int64_t)gw_push_sub_delivered(st->sub), GW_LOG_JSON_ONLY);
    gw_log_int(l, "dur_ms", (int64_t)(gw_loop_now(st->h->c->w->loop) - st->started_ms), 0);
    gw_log_end(l);
}

static void stream_arm(gstream *st)
{
    uint64_t at = 0;
    uint64_t cand[4] = {st->deadline_ms, st->wait_ms, st->trailer_by_ms, st->request_by_ms};
    for (int i = 0; i < 4; i++)
        if (cand[i] && (!at || cand[i] < at))
            at = cand[i];
    if (at)
        gw_timer_start_at(st->h->c->w->loop, &st->timer, at);
    else
        gw_timer_stop(st->h->c->w->loop, &st->timer);
}

/* Releases what a stream holds besides itself (store op, downstream call,
 * push subscription). */
static void stream_release(gstream *st)
{
    if (st->op) {
        gw_store_cancel(gw_store_current(), st->op);
        st->op = NULL;
    }
    if (st->ds) {
        gw_downstream_cancel(st->ds);
        st->ds = NULL;
    }
    if (st->sub) {
        gw_push_unsubscribe(st->sub);
        st->sub = NULL;
    }
}

static void stream_free(gstream *st)
{
    h2conn *h = st->h;
    stream_release(st);
    gw_timer_stop(h->c->w->loop, &st->timer);
    gw_list_remove(&st->node);
    h->nstreams--;
    if (st->dispatched && !--h->ndispatched) {
        h->idle_since_ms = gw_loop_now(h->c->w->loop);
        if (h->c->phase < GW_PHASE_FINISH)
            gw_client_arm(h->c); /* the idle deadline runs again */
    }
    h->buffered -= GW_MIN(h->buffered, st->msg_len + gw_grpc_reader_partial(&st->rd));
    gw_grpc_reader_free(&st->rd);
    gw_free(st->msg);
    gw_buf_release(&st->out);
    OPENSSL_cleanse(st->bearer, sizeof st->bearer);
    gw_gauge_add(G.m_streams, -1);
    gw_free(st);
}

#define NV(n, v) {(uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, strlen(v), NGHTTP2_NV_FLAG_NO_COPY_NAME}

/* The data provider: the stream's buffer, then the trailers. */
static ssize_t data_read(nghttp2_session *s, int32_t id, uint8_t *buf, size_t length, uint32_t *flags,
                         nghttp2_data_source *src, void *ud)
{
    GW_UNUSED(ud);
    gstream *st = src->ptr;
    size_t n = GW_MIN(length, (size_t)st->out.len);
    if (n) {
        memcpy(buf, gw_buf_head(&st->out), n);
        gw_buf_consume(&st->out, n);
        if (st->sub && st->out.len < SUB_OUT_HIGH)
            gw_push_sub_kick(st->sub);
    }
    if (st->out.len == 0 && st->ended) {
        *flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
        char code[8], msg[800];
        snprintf(code, sizeof code, "%d", st->status);
        gw_grpc_message_encode(st->message, msg, sizeof msg);
        nghttp2_nv nv[2] = {NV("grpc-status", code), NV("grpc-message", msg)};
        if (nghttp2_submit_trailer(s, id, nv, msg[0] ? 2 : 1) != 0)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        return (ssize_t)n;
    }
    if (!n) {
        st->deferred = 1;
        return NGHTTP2_ERR_DEFERRED;
    }
    return (ssize_t)n;
}

/* HEADERS with the data provider (once). */
static int stream_respond(gstream *st)
{
    if (st->responding)
        return GW_OK;
    nghttp2_nv nv[2] = {NV(":status", "200"), NV("content-type", "application/grpc")};
    nghttp2_data_provider dp = {.source.ptr = st, .read_callback = data_read};
    if (nghttp2_submit_response(st->h->s, st->id, nv, 2, &dp) != 0)
        return GW_ERR;
    st->responding = 1;
    return GW_OK;
}

static void stream_resume(gstream *st)
{
    if (st->deferred) {
        st->deferred = 0;
        nghttp2_session_resume_data(st->h->s, st->id);
    }
    pump_later(st->h);
}

/* The bytes a connection's streams hold that nghttp2 has not taken. */
static size_t conn_unsent(const h2conn *h)
{
    size_t n = 0;
    for (const gw_list *it = h->streams.next; it != &h->streams; it = it->next)
        n += gw_container_of(it, gstream, node)->out.len;
    return n;
}

/* Ends a stream at once: logged with `status`, its unsent bytes dropped,
 * RST_STREAM `code` (trailers may never leave while its window is shut). */
static void stream_reset(gstream *st, int status, const char *message, uint32_t code)
{
    st->request_by_ms = 0;
    stream_end(st, status, message);
    gw_buf_release(&st->out);
    nghttp2_submit_rst_stream(st->h->s, NGHTTP2_FLAG_NONE, st->id, code);
    pump_later(st->h);
}

/* Appends one message (packed protobuf) to the stream's output. A stream
 * whose peer leaves STREAM_UNSENT_MAX untaken gets no more (reset,
 * ENHANCE_YOUR_CALM, logged RESOURCE_EXHAUSTED); a connection whose
 * streams hold CONN_UNSENT_MAX gets GOAWAY ENHANCE_YOUR_CALM. GW_ERR: the
 * stream is ended. */
static int stream_send(gstream *st, const uint8_t *pb, size_t n)
{
    uint8_t pfx[GW_GRPC_PREFIX];
    gw_grpc_prefix(pfx, n);
    h2conn *h = st->h;
    if (conn_unsent(h) >= CONN_UNSENT_MAX) {
        gw_counter_inc(G.m_floods);
        gw_log_line *l = gw_log_begin(GW_LOG_WARN, "grpc connection refused: answers not taken", st->corr);
        if (l) {
            gw_log_int(l, "unsent_bytes", (int64_t)conn_unsent(h), 0);
            gw_log_str(l, "ip", h->c->ip, 0);
            gw_log_end(l);
        }
        stream_reset(st, GW_GRPC_RESOURCE_EXHAUSTED, "the connection holds too many answers not taken",
                     NGHTTP2_ENHANCE_YOUR_CALM);
        for (gw_list *it = h->streams.next; it != &h->streams; it = it->next)
            gw_buf_release(&gw_container_of(it, gstream, node)->out);
        nghttp2_session_terminate_session(h->s, NGHTTP2_ENHANCE_YOUR_CALM);
        return GW_ERR;
    }
    if (st->out.len >= STREAM_UNSENT_MAX) {
        stream_reset(st, GW_GRPC_RESOURCE_EXHAUSTED, "answers not taken (stream flow-control window shut)",
                     NGHTTP2_ENHANCE_YOUR_CALM);
        return GW_ERR;
    }
    if (stream_respond(st) != GW_OK || gw_buf_append(&st->out, pfx, sizeof pfx, GW_CONN_OUT_MAX) != GW_OK ||
        gw_buf_append(&st->out, pb, n, GW_CONN_OUT_MAX) != GW_OK)
        return GW_ERR;
    stream_resume(st);
    return GW_OK;
}

/* The call's outcome: trailers (after what the stream's buffer holds), or
 * a trailers-only response when nothing was sent. */
static void stream_end(gstream *st, int status, const char *message)
{
    if (st->ended)
        return;
    st->ended = 1;
    st->status = status;
    snprintf(st->message, sizeof st->message, "%s", message ? message : "");
    call_log(st);
    stream_release(st);
    st->wait_ms = 0;
    st->deadline_ms = 0;
    st->request_by_ms = 0;
    st->trailer_by_ms = gw_loop_now(st->h->c->w->loop) + TRAILER_GRACE_MS;
    stream_arm(st);
    if (!st->responding) {
        char code[8], msg[800];
        snprintf(code, sizeof code, "%d", status);
        gw_grpc_message_encode(st->message, msg, sizeof msg);
        nghttp2_nv nv[4] = {NV(":status", "200"), NV("content-type", "application/grpc"), NV("grpc-status", code),
                            NV("grpc-message", msg)};
        st->responding = 1;
        if (nghttp2_submit_response(st->h->s, st->id, nv, msg[0] ? 4 : 3, NULL) != 0)
            nghttp2_submit_rst_stream(st->h->s, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
        pump_later(st->h);
        return;
    }
    stream_resume(st);
}

/* ================================ sending ==================================== */

static void conn_fail(h2conn *h, const char *why)
{
    if (h->dead)
        return;
    h->dead = 1;
    gw_log_line *l = gw_log_begin(GW_LOG_WARN, "grpc connection closed", NULL);
    if (l) {
        gw_log_str(l, "reason", why, 0);
        gw_log_str(l, "ip", h->c->ip, 0);
        gw_log_end(l);
    }
}

/* nghttp2's output into the connection while its queue takes it; the
 * connection finishes once neither side wants more. */
static void pump(h2conn *h)
{
    gw_client *c = h->c;
    if (c->phase >= GW_PHASE_FINISH)
        return;
    while (!h->dead && gw_conn_queued(&c->conn) <= GW_OUT_HIGH) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(h->s, &data);
        if (n < 0) {
            conn_fail(h, nghttp2_strerror((int)n));
            break;
        }
        if (n == 0)
            break;
        if (gw_conn_write(&c->conn, data, (size_t)n) != GW_OK) {
            gw_client_close(c);
            return;
        }
    }
    int want = !h->dead && (nghttp2_session_want_read(h->s) || nghttp2_session_want_write(h->s));
    if (h->draining && h->shutdown_done && !h->nstreams && !nghttp2_session_want_write(h->s))
        want = 0;
    if (!want)
        gw_client_finish(c);
}

static void pump_task(gw_task *t)
{
    h2conn *h = gw_container_of(t, h2conn, pump);
    h->pump_queued = 0;
    gw_client *c = h->c;
    if (c->phase >= GW_PHASE_FINISH)
        return;
    gw_conn_cork(&c->conn);
    pump(h);
    if (c->phase < GW_PHASE_CLOSED && gw_conn_uncork(&c->conn) != GW_OK)
        gw_client_close(c);
}

static void pump_later(h2conn *h)
{
    if (!h->pump_queued) {
        h->pump_queued = 1;
        gw_loop_pending(h->c->w->loop, &h->pump);
    }
}

/* ============================ SubscribeEvents ================================ */

static uint8_t *event_pack(const char *id, const char *type, size_t typen, const char *payload, size_t payn,
                           uint64_t created_ms, size_t *len)
{
    Wsgate__V1__Event ev = WSGATE__V1__EVENT__INIT;
    char *t = gw_malloc(typen + 1), *p = gw_malloc(payn + 1);
    memcpy(t, type, typen);
    t[typen] = '\0';
    memcpy(p, payload, payn);
    p[payn] = '\0';
    ev.id = (char *)id;
    ev.type = t;
    ev.payload = p;
    ev.created_at_ms = (int64_t)created_ms;
    size_t n = wsgate__v1__event__get_packed_size(&ev);
    uint8_t *out = gw_malloc(n + GW_GRPC_PREFIX);
    gw_grpc_prefix(out, n);
    wsgate__v1__event__pack(&ev, out + GW_GRPC_PREFIX);
    gw_free(t);
    gw_free(p);
    *len = n + GW_GRPC_PREFIX;
    return out;
}

/* The gateway's own event (no id). */
static void send_gateway_event(gstream *st, const char *type, const char *payload)
{
    size_t n;
    uint8_t *m = event_pack("", type, strlen(type), payload, strlen(payload), gw_wall_ms(), &n);
    stream_send(st, m + GW_GRPC_PREFIX, n - GW_GRPC_PREFIX);
    gw_free(m);
}

static int sub_writable(void *owner)
{
    gstream *st = owner;
    return !st->ended && st->out.len < SUB_OUT_HIGH && gw_conn_queued(&st->h->c->conn) <= GW_OUT_HIGH;
}

static int sub_write(void *owner, gw_event *const *ev, size_t n)
{
    gstream *st = owner;
    for (size_t i = 0; i < n; i++) {
        if (!ev[i]->alt)
            continue;
        if (gw_buf_append(&st->out, ev[i]->alt, ev[i]->alt_len, GW_CONN_OUT_MAX) != GW_OK) {
            stream_end(st, GW_GRPC_RESOURCE_EXHAUSTED, "push stream overflowed");
            return GW_ERR;
        }
    }
    stream_resume(st);
    return GW_OK;
}

static void sub_end(void *owner, int why)
{
    gstream *st = owner;
    /* Events not yet taken are dropped with the stream (a resume gets them). */
    gw_buf_release(&st->out);
    if (why == GW_PUSH_END_OVERFLOW) {
        stream_end(st, GW_GRPC_RESOURCE_EXHAUSTED, "push stream overflowed");
    } else if (why == GW_PUSH_END_CREDENTIALS) {
        stream_end(st, GW_GRPC_FAILED_PRECONDITION, "device session credentials changed");
    } else if (why == GW_PUSH_END_RESYNC) {
        send_gateway_event(st, "gateway.resync_required", "{}");
        stream_end(st, GW_GRPC_OUT_OF_RANGE, "resync required: the cursor is older than the history");
    } else {
        stream_end(st, GW_GRPC_FAILED_PRECONDITION, "device session is revoked");
    }
}

static const gw_push_owner sub_owner = {sub_writable, sub_write, sub_end};

static void run_subscribe(gstream *st)
{
    Wsgate__V1__SubscribeEventsRequest *rq = wsgate__v1__subscribe_events_request__unpack(NULL, st->msg_len, st->msg);
    if (!rq) {
        stream_end(st, GW_GRPC_INVALID_ARGUMENT, "cannot decode SubscribeEventsRequest");
        return;
    }
    char cursor_text[GW_EVENT_ID_MAX] = "";
    gw_event_id cursor;
    size_t cn = rq->cursor ? strlen(rq->cursor) : 0;
    int bad = cn && (cn >= GW_EVENT_ID_MAX || gw_event_id_parse(rq->cursor, cn, &cursor) != GW_OK);
    if (cn && !bad)
        memcpy(cursor_text, rq->cursor, cn + 1);
    wsgate__v1__subscribe_events_request__free_unpacked(rq, NULL);
    if (bad) {
        stream_end(st, GW_GRPC_INVALID_ARGUMENT, "the cursor must be an event id (<ms>-<seq>)");
        return;
    }
    if (!gw_push_ready()) {
        stream_end(st, GW_GRPC_UNAVAILABLE, "the gateway is starting");
        return;
    }
    char boot[64];
    snprintf(boot, sizeof boot, "{\"server_time_ms\":%llu}", (unsigned long long)gw_wall_ms());
    send_gateway_event(st, "gateway.server_time", boot);
    int resync = 0;
    st->sub = gw_push_subscribe(&sub_owner, st, st->user, st->dev, st->corr, cn ? &cursor : NULL, cursor_text,
                                &resync);
    if (!st->sub) {
        if (resync == 1) {
            char p[96];
            snprintf(p, sizeof p, "{\"cursor\":\"%s\"}", cursor_text);
            send_gateway_event(st, "gateway.resync_required", p);
            stream_end(st, GW_GRPC_OUT_OF_RANGE, "resync required: the cursor is older than the history");
        } else if (resync == 2) {
            stream_end(st, GW_GRPC_RESOURCE_EXHAUSTED,
                       "too many streams for this device session (GATEWAY_PUSH_MAX_STREAMS_PER_SESSION)");
        } else {
            stream_end(st, GW_GRPC_UNAVAILABLE, "the gateway is starting");
        }
        return;
    }
    gw_log_line *l = gw_log_begin(GW_LOG_INFO, "grpc subscribe", st->corr);
    if (l) {
        gw_log_str(l, "user", st->user, 0);
        gw_log_str(l, "device_session_id", st->dev, GW_LOG_JSON_ONLY);
        gw_log_str(l, "resume", gw_push_sub_resume(st->sub), GW_LOG_JSON_ONLY);
        if (cursor_text[0])
            gw_log_str(l, "cursor", cursor_text, GW_LOG_JSON_ONLY);
        gw_log_end(l);
    }
}

/* ============================= ExecuteCommand ================================ */

static int id_ok(const char *s, size_t max, int strict)
{
    size_t n = strlen(s);
    if (n > max)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (strict ? !((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                       ch == '.' || ch == '_' || ch == '-')
                   : (ch < 0x21 || ch > 0x7e))
            return 0;
    }
    return 1;
}

static void exec_done(void *ud, int result, int status, const uint8_t *body, size_t n, const char *why)
{
    gstream *st = ud;
    st->ds = NULL;
    if (result != GW_DS_OK) {
        gw_log_line *l = gw_log_begin(GW_LOG_WARN, "grpc command downstream failed", st->corr);
        if (l) {
            gw_log_str(l, "command", st->command, 0);
            gw_log_str(l, "route", st->route, 0);
            gw_log_int(l, "downstream_status", status, 0);
            gw_log_str(l, "error", why, 0);
            gw_log_end(l);
        }
        if (result == GW_DS_UNAVAILABLE)
            stream_end(st, GW_GRPC_UNAVAILABLE, "the command's downstream is unavailable");
        else if (result == GW_DS_TIMEOUT)
            stream_end(st, GW_GRPC_DEADLINE_EXCEEDED, "the command's downstream did not answer in time");
        else
            stream_end(st, GW_GRPC_INTERNAL, "the command's downstream failed");
        return;
    }
    Wsgate__V1__ExecuteCommandResponse rs = WSGATE__V1__EXECUTE_COMMAND_RESPONSE__INIT;
    Wsgate__V1__ResponseSignature sig = WSGATE__V1__RESPONSE_SIGNATURE__INIT;
    uint8_t sigb[GW_SIG_LEN];
    uint64_t now = gw_wall_ms();
    rs.request_id = st->request_id;
    rs.command = st->command;
    rs.server_time_ms = (int64_t)now;
    rs.payload.data = (uint8_t *)body;
    rs.payload.len = n;
    rs.downstream_status = status;
    if (gw_signer_sign(G.signer, st->request_id, st->command, now, body, n, sigb) != GW_OK) {
        stream_end(st, GW_GRPC_INTERNAL, "cannot sign the response");
        return;
    }
    sig.algorithm = (char *)"ed25519";
    sig.key_id = (char *)gw_signer_key_id(G.signer);
    sig.signature.data = sigb;
    sig.signature.len = sizeof sigb;
    rs.signature = &sig;
    size_t pn = wsgate__v1__execute_command_response__get_packed_size(&rs);
    uint8_t *pb = gw_malloc(pn ? pn : 1);
    wsgate__v1__execute_command_response__pack(&rs, pb);
    int rc = stream_send(st, pb, pn);
    gw_free(pb);
    stream_end(st, rc == GW_OK ? GW_GRPC_OK : GW_GRPC_INTERNAL, rc == GW_OK ? NULL : "cannot queue the response");
}

static void run_exec(gstream *st)
{
    Wsgate__V1__ExecuteCommandRequest *rq = wsgate__v1__execute_command_request__unpack(NULL, st->msg_len, st->msg);
    if (!rq) {
        stream_end(st, GW_GRPC_INVALID_ARGUMENT, "cannot decode ExecuteCommandRequest");
        return;
    }
    /* "." and ".." would be dot segments of the downstream path. */
    int ok = rq->command && rq->command[0] && id_ok(rq->command, 100, 1) && strcmp(rq->command, ".") != 0 &&
             strcmp(rq->command, "..") != 0 && rq->request_id && id_ok(rq->request_id, 100, 0);
    if (ok) {
        snprintf(st->command, sizeof st->command, "%s", rq->command);
        snprintf(st->request_id, sizeof st->request_id, "%s", rq->request_id);
    }
    if (!ok) {
        wsgate__v1__execute_command_request__free_unpacked(rq, NULL);
        stream_end(st, GW_GRPC_INVALID_ARGUMENT,
                   "command must be 1 to 100 of [A-Za-z0-9._-] and not . or .., request_id at most 100 printable "
                   "characters");
        return;
    }
    char path[160];
    snprintf(path, sizeof path, "/commands/%s", st->command);
    gw_route_table *t = gw_server_routes();
    const gw_route *r = t ? gw_routes_match(t, path, strlen(path)) : NULL;
    const gw_upstream *u = r && r->kind == &gw_kind_command ? gw_route_upstream(r, NULL, 0) : NULL;
    if (!u) {
        if (t)
            gw_routes_unref(t);
        wsgate__v1__execute_command_request__free_unpacked(rq, NULL);
        char m[200];
        snprintf(m, sizeof m, "no route for command %s", st->command);
        stream_end(st, GW_GRPC_UNIMPLEMENTED, m);
        return;
    }
    snprintf(st->route, sizeof st->route, "%s", r->label);
    const char *p = path;
    if (r->strip_prefix) {
        size_t rl = strlen(r->path);
        p = strlen(path) > rl ? path + rl - (r->path[rl - 1] == '/') : "";
    }
    uint64_t now = gw_loop_now(st->h->c->w->loop);
    uint64_t deadline = now + r->read_timeout_ms;
    if (st->deadline_ms && st->deadline_ms < deadline)
        deadline = st->deadline_ms;
    char hdr[1024];
    snprintf(hdr, sizeof hdr,
             "X-Correlation-ID: %s\r\nX-Wsgate-User-Id: %s\r\nX-Wsgate-Session-Id: %s\r\nX-Wsgate-Request-Id: %s\r\n"
             "X-Wsgate-Command: %s\r\nX-Wsgate-Deadline-Ms: %llu\r\n",
             st->corr, st->user, st->dev, st->request_id, st->command, (unsigned long long)(deadline - now));
    st->ds = gw_downstream_call(st->h->c->w->loop, &u->target, p[0] ? p : "/", hdr, rq->payload.data,
                                rq->payload.len, deadline, exec_done, st);
    gw_routes_unref(t);
    wsgate__v1__execute_command_request__free_unpacked(rq, NULL);
}

/* ================================ health ===================================== */

static int gateway_draining(const h2conn *h) { return h->draining || atomic_load(&gw_srv.draining); }

static void run_health(gstream *st)
{
    Grpc__Health__V1__HealthCheckRequest *rq = grpc__health__v1__health_check_request__unpack(NULL, st->msg_len,
                                                                                              st->msg);
    if (!rq) {
        stream_end(st, GW_GRPC_INVALID_ARGUMENT, "cannot decode HealthCheckRequest");
        return;
    }
    int known = !rq->service || !rq->service[0] || strcmp(rq->service, "wsgate.v1.EdgeGateway") == 0;
    grpc__health__v1__health_check_request__free_unpacked(rq, NULL);
    if (!known) {
        stream_end(st, GW_GRPC_NOT_FOUND, "unknown service");
        return;
    }
    Grpc__Health__V1__HealthCheckResponse rs = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    rs.status = gateway_draining(st->h) ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING
                                        : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
    uint8_t pb[16];
    size_t n = grpc__health__v1__health_check_response__pack(&rs, pb);
    int rc = stream_send(st, pb, n);
    stream_end(st, rc == GW_OK ? GW_GRPC_OK : GW_GRPC_INTERNAL, NULL);
}

/* ================================ dispatch =================================== */

static void looked_up(void *ud, int found, const gw_session *sess)
{
    gstream *st = ud;
    st->op = NULL;
    st->wait_ms = 0;
    stream_arm(st);
    if (!found) {
        stream_end(st, GW_GRPC_UNAUTHENTICATED, "the bearer is not a known device session");
    } else if (sess->status != GW_SESSION_ACTIVE) {
        stream_end(st, GW_GRPC_FAILED_PRECONDITION, "device session is revoked");
    } else {
        snprintf(st->user, sizeof st->user, "%s", sess->user_id);
        snprintf(st->dev, sizeof st->dev, "%s", sess->device_session_id);
        if (st->method == M_EXEC)
            run_exec(st);
        else
            run_subscribe(st);
    }
    pump_later(st->h);
}

static void dispatch(gstream *st)
{
    st->dispatched = 1;
    st->h->ndispatched++;
    st->request_by_ms = 0;
    stream_arm(st);
    if (st->ended)
        return;
    if (st->bad) {
        stream_end(st, GW_GRPC_INVALID_ARGUMENT, "malformed grpc-timeout");
        return;
    }
    if (st->method == M_UNKNOWN) {
        stream_end(st, GW_GRPC_UNIMPLEMENTED, "unknown method");
        return;
    }
    if (!st->content_type_ok) {
        stream_end(st, GW_GRPC_INVALID_ARGUMENT, "content-type must be application/grpc");
        return;
    }
    if (st->method == M_REFLECT) {
        stream_end(st, GW_GRPC_OK, NULL); /* every request was answered */
        return;
    }
    if (st->nmsgs != 1) {
        stream_end(st, GW_GRPC_INVALID_ARGUMENT, "expected exactly one request message");
        return;
    }
    if (st->method == M_HEALTH) {
        run_health(st);
        return;
    }
    if (gateway_draining(st->h)) {
        stream_end(st, GW_GRPC_UNAVAILABLE, "gateway is shutting down");
        return;
    }
    if (!st->bearer[0]) {
        stream_end(st, GW_GRPC_UNAUTHENTICATED, "missing authorization: Bearer metadata");
        return;
    }
    gw_store *store = gw_store_current();
    if (!store) {
        stream_end(st, GW_GRPC_UNAVAILABLE, "no session store");
        return;
    }
    uint8_t digest[32];
    gw_bearer_digest(st->bearer, strlen(st->bearer), digest);
    OPENSSL_cleanse(st->bearer, sizeof st->bearer);
    gw_loop *l = st->h->c->w->loop;
    st->wait_ms = gw_loop_now(l) + G.store_timeout_ms;
    st->op = gw_store_session_lookup(store, l, digest, looked_up, st);
    stream_arm(st);
}

/* A request that has not arrived whole (no END_STREAM) by its deadline:
 * the stream is reset and what it held is freed. */
static void request_expired(gstream *st)
{
    gw_log_line *l = gw_log_begin(GW_LOG_WARN, "grpc request not complete in time", st->corr);
    if (l) {
        gw_log_str(l, "method", method_names[st->method], 0);
        gw_log_int(l, "timeout_ms", (int64_t)gw_srv.cfg.handshake_timeout_ms, 0);
        gw_log_str(l, "ip", st->h->c->ip, 0);
        gw_log_end(l);
    }
    stream_reset(st, GW_GRPC_DEADLINE_EXCEEDED, "the request did not arrive whole in time (GATEWAY_HANDSHAKE_TIMEOUT)",
                 NGHTTP2_CANCEL);
}

static void stream_timer(gw_timer *t)
{
    gstream *st = gw_container_of(t, gstream, timer);
    uint64_t now = gw_loop_now(st->h->c->w->loop);
    if (st->trailer_by_ms) {
        if (now >= st->trailer_by_ms) {
            /* The peer does not take what is left (no window): reset. */
            st->trailer_by_ms = 0;
            nghttp2_submit_rst_stream(st->h->s, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
            pump_later(st->h);
            return;
        }
    } else if (st->request_by_ms && now >= st->request_by_ms) {
        request_expired(st);
        return;
    } else if (st->deadline_ms && now >= st->deadline_ms) {
        stream_end(st, GW_GRPC_DEADLINE_EXCEEDED, "deadline exceeded");
        return;
    } else if (st->wait_ms && now >= st->wait_ms) {
        stream_end(st, GW_GRPC_UNAVAILABLE, "the session store did not answer in time");
        return;
    }
    stream_arm(st);
}

/* =========================== nghttp2 callbacks =============================== */

static int flood(h2conn *h, double *tok, const char *what)
{
    uint64_t now = gw_loop_now(h->c->w->loop);
    if (!h->tok_ms) {
        h->tok_ping = h->tok_settings = h->tok_rst = FLOOD_BURST;
    } else if (now > h->tok_ms) {
        double add = (double)(now - h->tok_ms) / 1000.0 * FLOOD_RATE;
        h->tok_ping = GW_MIN(FLOOD_BURST, h->tok_ping + add);
        h->tok_settings = GW_MIN(FLOOD_BURST, h->tok_settings + add);
        h->tok_rst = GW_MIN(FLOOD_BURST, h->tok_rst + add);
    }
    h->tok_ms = now;
    if (*tok >= 1.0) {
        *tok -= 1.0;
        return 0;
    }
    gw_counter_inc(G.m_floods);
    gw_log_line *l = gw_log_begin(GW_LOG_WARN, "grpc connection refused: flood", NULL);
    if (l) {
        gw_log_str(l, "frames", what, 0);
        gw_log_str(l, "ip", h->c->ip, 0);
        gw_log_end(l);
    }
    nghttp2_session_terminate_session(h->s, NGHTTP2_ENHANCE_YOUR_CALM);
    return 1;
}

static int on_begin_headers(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    h2conn *h = ud;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    gstream *st = gw_calloc(1, sizeof *st);
    st->h = h;
    st->id = f->hd.stream_id;
    st->timer.cb = stream_timer;
    st->rd.max = GW_GRPC_MAX_MESSAGE;
    st->started_ms = gw_loop_now(h->c->w->loop);
    st->request_by_ms = st->started_ms + gw_srv.cfg.handshake_timeout_ms;
    gw_rand_hex(st->corr, 16); /* unless x-correlation-id / x-request-id names one */
    gw_list_insert_tail(&h->streams, &st->node);
    h->nstreams++;
    gw_gauge_add(G.m_streams, 1);
    nghttp2_session_set_stream_user_data(s, st->id, st);
    stream_arm(st);
    return 0;
}

static int hdr_is(const uint8_t *n, size_t nl, const char *want)
{
    return nl == strlen(want) && memcmp(n, want, nl) == 0;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nl,
                     const uint8_t *value, size_t vl, uint8_t flags, void *ud)
{
    GW_UNUSED(flags);
    h2conn *h = ud;
    gstream *st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (!st || f->hd.type != NGHTTP2_HEADERS)
        return 0;
    st->header_bytes += nl + vl + 32;
    if (st->header_bytes > MAX_HEADER_LIST)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* the stream is reset */
    if (f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0; /* trailers: nothing read from them */
    if (hdr_is(name, nl, ":path")) {
        st->method = hdr_is(value, vl, path_exec)     ? M_EXEC
                     : hdr_is(value, vl, path_sub)    ? M_SUB
                     : hdr_is(value, vl, path_health) ? M_HEALTH
                     : hdr_is(value, vl, path_reflect) ? M_REFLECT
                                                       : M_UNKNOWN;
    } else if (hdr_is(name, nl, "content-type")) {
        st->content_type_ok = vl >= 16 && memcmp(value, "application/grpc", 16) == 0 &&
                              (vl == 16 || value[16] == '+' || value[16] == ';');
    } else if (hdr_is(name, nl, "authorization")) {
        if (vl > 7 && strncasecmp((const char *)value, "Bearer ", 7) == 0 && vl - 7 < sizeof st->bearer) {
            size_t i = 7;
            while (i < vl && value[i] == ' ')
                i++;
            memcpy(st->bearer, value + i, vl - i);
            st->bearer[vl - i] = '\0';
        }
    } else if (hdr_is(name, nl, "grpc-timeout")) {
        uint64_t ms;
        if (gw_grpc_timeout_parse((const char *)value, vl, &ms) == GW_OK)
            st->deadline_ms = gw_loop_now(h->c->w->loop) + ms;
        else
            st->bad = 1;
    } else if (hdr_is(name, nl, "x-correlation-id") || hdr_is(name, nl, "x-request-id")) {
        if (vl >= 1 && vl <= 64) {
            int ok = 1;
            for (size_t i = 0; i < vl; i++)
                ok &= value[i] > 0x20 && value[i] < 0x7f && value[i] != '"' && value[i] != '\\';
            if (ok) {
                memcpy(st->corr, value, vl);
                st->corr[vl] = '\0';
            }
        }
    }
    return 0;
}

static int on_data(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data, size_t len, void *ud)
{
    GW_UNUSED(flags);
    h2conn *h = ud;
    gstream *st = nghttp2_session_get_stream_user_data(s, id);
    if (!st || st->ended || st->dispatched)
        return 0;
    while (len) {
        size_t before = st->msg_len + gw_grpc_reader_partial(&st->rd);
        if (h->buffered + len > GW_GRPC_CONN_BUFFERED) {
            stream_end(st, GW_GRPC_RESOURCE_EXHAUSTED, "too many request bytes held on this connection");
            return 0;
        }
        size_t used;
        const uint8_t *m;
        size_t ml;
        int r = gw_grpc_reader_feed(&st->rd, data, len, &used, &m, &ml);
        data += used;
        len -= used;
        if (r == GW_GRPC_MSG_READY && st->method == M_REFLECT) {
            /* Reflection is a bidirectional stream: each request is
             * answered as it arrives. */
            h->buffered -= GW_MIN(h->buffered, before); /* the partial message is whole: none held */
            uint8_t *ans;
            size_t an;
            if (gw_reflection_answer(m, ml, &ans, &an) != GW_OK) {
                stream_end(st, GW_GRPC_INVALID_ARGUMENT, "cannot decode ServerReflectionRequest");
                return 0;
            }
            int rc = stream_send(st, ans, an);
            gw_free(ans);
            if (rc != GW_OK) {
                stream_end(st, GW_GRPC_RESOURCE_EXHAUSTED, "reflection answers not taken");
                return 0;
            }
            continue;
        }
        if (r == GW_GRPC_MSG_READY) {
            st->nmsgs++;
            if (!st->msg) {
                st->msg = gw_malloc(ml ? ml : 1);
                memcpy(st->msg, m, ml);
                st->msg_len = ml;
            }
        }
        size_t after = st->msg_len + (r == GW_GRPC_MSG_READY ? 0 : gw_grpc_reader_partial(&st->rd));
        h->buffered = h->buffered + after - GW_MIN(before, h->buffered + after);
        if (r == GW_GRPC_MSG_TOO_BIG || r == GW_GRPC_MSG_NOMEM) {
            char m2[96];
            snprintf(m2, sizeof m2, "request message larger than %u bytes", GW_GRPC_MAX_MESSAGE);
            stream_end(st, GW_GRPC_RESOURCE_EXHAUSTED, m2);
            return 0;
        }
        if (r == GW_GRPC_MSG_COMPRESSED) {
            stream_end(st, GW_GRPC_UNIMPLEMENTED, "compressed messages are not accepted (no grpc-encoding)");
            return 0;
        }
    }
    return 0;
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    h2conn *h = ud;
    switch (f->hd.type) {
    case NGHTTP2_PING:
        if (!(f->hd.flags & NGHTTP2_FLAG_ACK))
            flood(h, &h->tok_ping, "PING");
        return 0;
    case NGHTTP2_SETTINGS:
        if (!(f->hd.flags & NGHTTP2_FLAG_ACK))
            flood(h, &h->tok_settings, "SETTINGS");
        return 0;
    case NGHTTP2_RST_STREAM:
        flood(h, &h->tok_rst, "RST_STREAM");
        return 0;
    case NGHTTP2_HEADERS:
    case NGHTTP2_DATA:
        if (f->hd.flags & NGHTTP2_FLAG_END_STREAM) {
            gstream *st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
            if (st && !st->dispatched)
                dispatch(st);
        }
        return 0;
    default:
        return 0;
    }
}

static int on_stream_close(nghttp2_session *s, int32_t id, uint32_t code, void *ud)
{
    GW_UNUSED(code);
    h2conn *h = ud;
    gstream *st = nghttp2_session_get_stream_user_data(s, id);
    if (!st || h->dead == 2)
        return 0;
    if (!st->ended) {
        st->ended = 1;
        st->status = GW_GRPC_CANCELLED;
        snprintf(st->message, sizeof st->message, "the client reset the stream");
        call_log(st);
    }
    nghttp2_session_set_stream_user_data(s, id, NULL);
    stream_free(st);
    pump_later(h);
    return 0;
}

/* ============================== the connection =============================== */

static h2conn *h2_new(gw_client *c)
{
    if (c->conn.ssl) {
        const unsigned char *proto = NULL;
        unsigned int pl = 0;
        SSL_get0_alpn_selected(c->conn.ssl, &proto, &pl);
        if (pl != 2 || memcmp(proto, "h2", 2) != 0)
            return NULL;
    }
    h2conn *h = gw_calloc(1, sizeof *h);
    h->c = c;
    gw_list_init(&h->streams);
    gw_list_init(&h->pump.node);
    h->pump.fn = pump_task;
    h->idle_since_ms = gw_loop_now(c->w->loop);
    nghttp2_session_callbacks *cb;
    nghttp2_session_callbacks_new(&cb);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_option *opt;
    nghttp2_option_new(&opt);
    nghttp2_option_set_max_outbound_ack(opt, 1000);
    nghttp2_option_set_max_settings(opt, 32);
    /* nghttp2's own reset limit is a backstop above ours (which answers
     * ENHANCE_YOUR_CALM; nghttp2's says INTERNAL_ERROR). */
    nghttp2_option_set_stream_reset_rate_limit(opt, (uint64_t)(2 * FLOOD_BURST), (uint64_t)(2 * FLOOD_RATE));
    int rc = nghttp2_session_server_new2(&h->s, cb, h, opt);
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cb);
    if (rc != 0) {
        gw_free(h);
        return NULL;
    }
    nghttp2_settings_entry set[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, GW_GRPC_MAX_STREAMS},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_LIST},
    };
    nghttp2_submit_settings(h->s, NGHTTP2_FLAG_NONE, set, GW_ARRAY_LEN(set));
    gw_counter_inc(G.m_conns);
    return h;
}

static size_t g_feed(gw_client *c, uint8_t *p, size_t n)
{
    h2conn *h = c->pdata;
    if (!h) {
        h = h2_new(c);
        if (!h) {
            gw_log_msg(GW_LOG_WARN, NULL, "grpc connection refused: TLS without ALPN h2 (ip %s)", c->ip);
            gw_client_close(c);
            return n;
        }
        c->pdata = h;
    }
    if (!h->dead) {
        ssize_t r = nghttp2_session_mem_recv(h->s, p, n);
        if (r < 0)
            conn_fail(h, nghttp2_strerror((int)r));
    }
    pump(h);
    return n;
}

static uint64_t g_deadline(gw_client *c)
{
    h2conn *h = c->pdata;
    if (!h)
        return c->phase_ms + gw_srv.cfg.handshake_timeout_ms;
    if (h->draining && !h->shutdown_done)
        return h->drain_at_ms;
    if (!h->ndispatched && !h->shutdown_done)
        return h->idle_since_ms + gw_srv.cfg.http_idle_timeout_ms;
    return 0;
}

/* Drain: every SubscribeEvents stream gets gateway.shutdown, then
 * UNAVAILABLE; calls in flight finish; no new stream is taken. */
static void shutdown_streams(h2conn *h)
{
    h->shutdown_done = 1;
    for (gw_list *it = h->streams.next; it != &h->streams;) {
        gstream *st = gw_container_of(it, gstream, node);
        it = it->next;
        if (st->sub && !st->ended) {
            uint32_t r;
            gw_rand_bytes(&r, sizeof r);
            char p[64];
            snprintf(p, sizeof p, "{\"reconnect_delay_ms\":%u}", SHUTDOWN_DELAY_MIN_MS + r % SHUTDOWN_DELAY_SPREAD_MS);
            send_gateway_event(st, "gateway.shutdown", p);
            stream_end(st, GW_GRPC_UNAVAILABLE, "gateway is shutting down");
        }
    }
    pump_later(h);
}

static void g_timer(gw_client *c)
{
    h2conn *h = c->pdata;
    uint64_t now = gw_loop_now(c->w->loop);
    if (!h) {
        gw_client_close(c); /* no preface in time */
        return;
    }
    if (h->draining && !h->shutdown_done) {
        if (now >= h->drain_at_ms)
            shutdown_streams(h);
    } else if (!h->ndispatched && !h->shutdown_done && now >= h->idle_since_ms + gw_srv.cfg.http_idle_timeout_ms) {
        /* Idle: no stream, or only streams whose request never arrived
         * whole (those are reset: a client cannot hold the connection
         * by starting requests it does not finish). */
        nghttp2_submit_goaway(h->s, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(h->s),
                              NGHTTP2_NO_ERROR, NULL, 0);
        h->draining = h->shutdown_done = 1;
        for (gw_list *it = h->streams.next; it != &h->streams; it = it->next) {
            gstream *st = gw_container_of(it, gstream, node);
            if (!st->ended)
                request_expired(st);
        }
        pump_later(h);
    }
    gw_client_arm(c);
}

static void g_drained(gw_client *c)
{
    h2conn *h = c->pdata;
    if (!h)
        return;
    for (gw_list *it = h->streams.next; it != &h->streams; it = it->next) {
        gstream *st = gw_container_of(it, gstream, node);
        if (st->sub)
            gw_push_sub_kick(st->sub);
    }
    pump_later(h);
}

static void free_streams(h2conn *h)
{
    while (!gw_list_empty(&h->streams)) {
        gstream *st = gw_container_of(h->streams.next, gstream, node);
        if (!st->ended) {
            st->ended = 1;
            st->status = GW_GRPC_CANCELLED;
            snprintf(st->message, sizeof st->message, "the connection ended");
            call_log(st);
        }
        nghttp2_session_set_stream_user_data(h->s, st->id, NULL);
        stream_free(st);
    }
}

static void g_finish(gw_client *c)
{
    h2conn *h = c->pdata;
    if (h) {
        free_streams(h);
        gw_task_cancel(&h->pump);
        h->pump_queued = 0;
    }
}

static void g_end(gw_client *c)
{
    h2conn *h = c->pdata;
    if (!h)
        return;
    free_streams(h);
    gw_task_cancel(&h->pump);
    h->dead = 2;
    nghttp2_session_del(h->s);
    gw_free(h);
    c->pdata = NULL;
}

static void g_drain(gw_client *c)
{
    h2conn *h = c->pdata;
    if (!h) {
        gw_client_close(c);
        return;
    }
    if (h->draining)
        return;
    h->draining = 1;
    if (!h->drain_at_ms)
        h->drain_at_ms = gw_loop_now(c->w->loop);
    nghttp2_submit_goaway(h->s, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(h->s), NGHTTP2_NO_ERROR,
                          NULL, 0);
    pump_later(h);
    gw_client_arm(c);
}

static void g_drain_at(gw_client *c, uint64_t at)
{
    h2conn *h = c->pdata;
    if (h)
        h->drain_at_ms = at;
}

static size_t g_max_input(const gw_client *c)
{
    GW_UNUSED(c);
    return GW_CONN_READ_CHUNK + 64 * 1024;
}

const gw_client_proto gw_grpc_proto = {
    .feed = g_feed,
    .deadline = g_deadline,
    .timer = g_timer,
    .drained = g_drained,
    .finish = g_finish,
    .end = g_end,
    .drain = g_drain,
    .drain_at = g_drain_at,
    .max_input = g_max_input,
};

/* ============================= the command kind =============================== */

static const char *const command_fields[] = {"upstream", NULL};

static int command_parse(json_t *o, gw_route *r, const gw_config *cfg, char *err, size_t errcap)
{
    GW_UNUSED(cfg);
    if (!o) {
        snprintf(err, errcap, "a command route needs an upstream");
        return GW_ERR;
    }
    if (strncmp(r->path, "/commands/", 10) != 0) {
        snprintf(err, errcap, "a command route's path starts with /commands/ (then the command name)");
        return GW_ERR;
    }
    if (gw_route_parse_upstreams(o, r, err, errcap) != GW_OK)
        return GW_ERR;
    if (!r->upstream || !r->upstream->target.is_http || r->upstream->target.tls) {
        snprintf(err, errcap, "a command route's upstream is http://HOST:PORT[/base] or unix:/path");
        return GW_ERR;
    }
    return GW_OK;
}

static int command_serve(gw_client *c, gw_http_req *req, const gw_route *r, gw_route_table *table,
                         const gw_req_ids *ids)
{
    GW_UNUSED(r);
    GW_UNUSED(table);
    gw_http_error_ids(c, 404, "not_found", "command routes are served over gRPC (ExecuteCommand)", req, NULL, ids);
    return GW_OK;
}

const gw_kind gw_kind_command = {
    .name = "command",
    .flags = GW_KIND_HTTP,
    .fields = command_fields,
    .parse = command_parse,
    .serve = command_serve,
};

/* ================================== init ===================================== */

static int signing_key(gw_client *c, gw_http_req *req, const uint8_t *body, size_t n, const gw_req_ids *ids)
{
    GW_UNUSED(body);
    GW_UNUSED(n);
    if (!G.signer) {
        gw_http_error_ids(c, 404, "not_found", "no response signer is configured", req, NULL, ids);
        return GW_OK;
    }
    char extra[96];
    snprintf(extra, sizeof extra, "X-Wsgate-Key-Id: %s\r\n", gw_signer_key_id(G.signer));
    const char *pem = gw_signer_public_pem(G.signer);
    gw_http_respond(c, req, ids, 200, "application/x-pem-file", pem, strlen(pem), extra);
    return GW_OK;
}

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen, const unsigned char *in,
                       unsigned int inlen, void *arg)
{
    GW_UNUSED(ssl);
    GW_UNUSED(arg);
    for (unsigned int i = 0; i < inlen;) {
        unsigned int l = in[i];
        if (i + 1 + l > inlen)
            break;
        if (l == 2 && memcmp(in + i + 1, "h2", 2) == 0) {
            *out = in + i + 1;
            *outlen = 2;
            return SSL_TLSEXT_ERR_OK;
        }
        i += 1 + l;
    }
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

int gw_grpc_enabled(void) { return G.enabled; }

void gw_grpc_log_off(void)
{
    if (!G.off_no_key)
        return;
    gw_log_line *l = gw_log_begin(GW_LOG_WARN, "gRPC off: no response signer key", NULL);
    if (l) {
        gw_log_str(l, "hint",
                   "set GATEWAY_RESPONSE_SIGNER_PRIVATE_KEY_PEM_PATH (wsgate keygen --out PREFIX) to serve gRPC on "
                   ":9090, or GATEWAY_AUTHENTICATED_GRPC_ADDR= to turn it off without this line",
                   0);
        gw_log_end(l);
    }
}
void *gw_grpc_tls_ctx(void) { return G.tls_ctx; }

void *gw_grpc_tls_make(const char *cert, const char *key, char *err, size_t errcap)
{
    void *ctx = gw_tls_server_ctx(cert, key, err, errcap);
    if (ctx)
        SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
    return ctx;
}

int gw_grpc_init(const gw_config *cfg, char *err, size_t errcap)
{
    G.enabled = cfg->grpc_addr.set;
    if (gw_reflection_init() != GW_OK) {
        snprintf(err, errcap, "gRPC: the embedded descriptor set cannot be read");
        return GW_ERR;
    }
    G.store_timeout_ms = cfg->store_timeout_ms ? cfg->store_timeout_ms : 2000;
    if (cfg->signer_key_path[0]) {
        G.signer = gw_signer_load(cfg->signer_key_path, err, errcap);
        if (!G.signer)
            return GW_ERR;
    } else if (G.enabled && !cfg->grpc_addr_explicit) {
        /* The default address and no key: a plain `wsgate serve` starts,
         * without gRPC, and says so once (DESIGN.md turns gRPC on by
         * default with the key required; failing every default start is
         * worse for an operator than one clear line). */
        G.enabled = 0;
        G.off_no_key = 1; /* said once the start succeeded (gw_grpc_log_off): a failed start stays one line */
    } else if (G.enabled) {
        snprintf(err, errcap,
                 "GATEWAY_RESPONSE_SIGNER_PRIVATE_KEY_PEM_PATH is required while gRPC is on "
                 "(GATEWAY_AUTHENTICATED_GRPC_ADDR; empty turns gRPC off; `wsgate keygen --out PREFIX` makes a key)");
        return GW_ERR;
    }
    if (G.enabled && cfg->tls_cert_path[0]) {
        G.tls_ctx = gw_grpc_tls_make(cfg->tls_cert_path, cfg->tls_key_path, err, errcap);
        if (!G.tls_ctx)
            return GW_ERR;
    }
    static const char help[] = "gRPC calls answered, by status code";
    for (int i = 0; i <= 16; i++) {
        char lab[48];
        snprintf(lab, sizeof lab, "code=\"%s\"", gw_grpc_status_name(i));
        if (i == 2 || strcmp(gw_grpc_status_name(i), "UNKNOWN") != 0)
            G.m_calls[i] = gw_metric_get("wsgate_grpc_calls_total", GW_METRIC_COUNTER, help, lab);
    }
    for (int i = 0; i <= 16; i++)
        if (!G.m_calls[i])
            G.m_calls[i] = G.m_calls[2];
    G.m_streams = gw_metric_get("wsgate_grpc_streams", GW_METRIC_GAUGE, "Open gRPC streams", NULL);
    G.m_conns = gw_metric_get("wsgate_grpc_connections_total", GW_METRIC_COUNTER, "gRPC connections started", NULL);
    G.m_floods = gw_metric_get("wsgate_grpc_floods_total", GW_METRIC_COUNTER,
                               "gRPC connections ended with ENHANCE_YOUR_CALM (PING, SETTINGS or RST_STREAM flood, answers not taken)",
                               NULL);
    if (G.enabled)
        gw_events_set_alt_encoder(event_pack);
    gw_http_register(GW_LISTENER_ADMIN, "GET", "/v1/signing-key", 0, signing_key);
    return GW_OK;
}

/* ws_session.c: RFC 6455 message engine (see ws_session.h). */
#include "ws/ws_session.h"

#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/common.h"
#include "core/rand.h"

const char gw_cause_downstream_closed[] = "downstream_closed";
const char gw_cause_upstream_closed[] = "upstream_closed";
const char gw_cause_graceful[] = "graceful";
const char gw_cause_heartbeat_timeout[] = "heartbeat_timeout";
const char gw_cause_shutdown[] = "shutdown";
const char gw_cause_protocol_error[] = "protocol_error";
const char gw_cause_too_large[] = "too_large";
const char gw_cause_idle_timeout[] = "idle_timeout";
const char gw_cause_overflow[] = "overflow";
const char gw_cause_revoked[] = "revoked";
const char gw_cause_inflate_budget[] = "inflate_budget";

/* Messages shorter than this go out uncompressed even with deflate on: the
 * deflate block overhead makes them larger and costs CPU for nothing. */
#define PMD_MIN_SIZE 64

/* Scratch for inflated input and for output that must be transformed
 * (compressed or masked). Per thread, reused. */
static _Thread_local gw_buf scratch_in;
static _Thread_local gw_buf scratch_out;
static uint8_t empty_payload[1];

void gw_ws_init(gw_ws *ws, const gw_sink *sink, void *io, int is_server, const gw_ws_handler *h, void *data,
                uint64_t max_msg)
{
    memset(ws, 0, sizeof *ws);
    ws->sink = sink;
    ws->io = io;
    ws->is_server = (uint8_t)is_server;
    ws->h = h;
    ws->data = data;
    ws->max_msg = max_msg;
    ws->inflate_ratio = GW_WS_INFLATE_RATIO_DEFAULT;
}

void gw_ws_set_inflate_budget(gw_ws *ws, uint32_t ratio) { ws->inflate_ratio = ratio; }

void gw_ws_enable_pmd(gw_ws *ws, const gw_pmd_params *p)
{
    if (p && p->enabled && !ws->pmd)
        ws->pmd = gw_pmd_new(p, ws->is_server);
}

void gw_ws_thread_exit(void)
{
    gw_buf_release(&scratch_in);
    gw_buf_release(&scratch_out);
}

void gw_ws_free(gw_ws *ws)
{
    gw_buf_release(&ws->msg);
    if (ws->pmd) {
        gw_pmd_free(ws->pmd);
        ws->pmd = NULL;
    }
}

/* ================================= sending ================================== */

/* A client frame through the sink's writev: the payload is masked into the
 * thread's scratch (the caller's bytes stay intact). */
static int send_masked(gw_ws *ws, const uint8_t *hdr, size_t hl, const uint8_t mask[4], const uint8_t *p, size_t n)
{
    if (n == 0) {
        struct iovec iov = {(void *)hdr, hl};
        return ws->sink->writev(ws->io, &iov, 1);
    }
    scratch_out.head = scratch_out.len = 0;
    if (gw_buf_reserve(&scratch_out, n, ws->sink->max_out) != GW_OK)
        return GW_ERR;
    gw_ws_mask_copy(gw_buf_head(&scratch_out), p, n, mask, 0);
    struct iovec iov[2] = {{(void *)hdr, hl}, {gw_buf_head(&scratch_out), n}};
    return ws->sink->writev(ws->io, iov, 2);
}

/* A client frame goes out masked with a fresh unpredictable key (RFC 6455
 * section 5.3), masked on its one copy into the output. */
static int send_client_frame(gw_ws *ws, int fin, int rsv, int opcode, const uint8_t *p, size_t n)
{
    uint8_t hdr[GW_WS_MAX_HEADER], mask[4];
    gw_rand_bytes(mask, sizeof mask);
    size_t hl = gw_ws_frame_encode_header(hdr, fin, rsv, opcode, n, mask);
    uint8_t *out = ws->sink->reserve ? ws->sink->reserve(ws->io, hl + n) : NULL;
    if (out) {
        /* Built in place where the sink would copy the frame anyway (the
         * output queue or the cork stage). */
        memcpy(out, hdr, hl);
        gw_ws_mask_copy(out + hl, p, n, mask, 0);
        ws->sink->commit(ws->io, hl + n);
        return GW_OK;
    }
    return send_masked(ws, hdr, hl, mask, p, n);
}

static int send_frame(gw_ws *ws, int fin, int rsv, int opcode, const uint8_t *p, size_t n)
{
    uint8_t hdr[GW_WS_MAX_HEADER];
    if (!ws->is_server)
        return send_client_frame(ws, fin, rsv, opcode, p, n);
    uint8_t *out = ws->sink->reserve ? ws->sink->reserve(ws->io, GW_WS_MAX_HEADER + n) : NULL;
    if (out) {
        /* Header and payload copied once into where the sink keeps them. */
        size_t hl = gw_ws_frame_encode_header(out, fin, rsv, opcode, n, NULL);
        memcpy(out + hl, p, n);
        ws->sink->commit(ws->io, hl + n);
        return GW_OK;
    }
    size_t hl = gw_ws_frame_encode_header(hdr, fin, rsv, opcode, n, NULL);
    struct iovec iov[2] = {{hdr, hl}, {(void *)p, n}};
    return ws->sink->writev(ws->io, iov, n ? 2 : 1);
}

int gw_ws_send_frame(gw_ws *ws, int fin, int rsv, int opcode, const uint8_t *p, size_t n)
{
    if (ws->state == GW_WS_CLOSED || (ws->state == GW_WS_CLOSE_SENT && opcode < GW_WS_OP_CLOSE))
        return GW_ERR;
    return send_frame(ws, fin, rsv, opcode, p, n);
}

int gw_ws_send(gw_ws *ws, int opcode, const uint8_t *p, size_t n)
{
    if (ws->state != GW_WS_OPEN)
        return GW_ERR;
    ws->msgs_out++;
    ws->bytes_out += n;
    if (ws->pmd && n >= PMD_MIN_SIZE) {
        gw_buf z = {0};
        if (gw_pmd_deflate(ws->pmd, p, n, &z, ws->sink->max_out) != GW_OK) {
            gw_buf_release(&z);
            return GW_ERR;
        }
        int rc = send_frame(ws, 1, GW_WS_RSV1, opcode, z.len ? gw_buf_head(&z) : empty_payload, z.len);
        gw_buf_release(&z);
        return rc;
    }
    return send_frame(ws, 1, 0, opcode, p, n);
}

void gw_ws_set_runs(gw_ws *ws, int on) { ws->runs = on && ws->h->on_run; }

/* Gives every frame of a run of masked frames a fresh key: the payload is
 * XORed once with old key ^ new key, the new key written over the old. */
static int remask_run(uint8_t *p, size_t n)
{
    size_t off = 0;
    gw_ws_frame_hdr h;
    uint8_t *pl;
    int r;
    while ((r = gw_ws_frame_next(p, n, &off, &h, &pl)) == 1) {
        if (!h.masked)
            return GW_ERR;
        uint8_t key[4], x[4];
        gw_rand_bytes(key, sizeof key);
        for (int i = 0; i < 4; i++)
            x[i] = (uint8_t)(h.mask[i] ^ key[i]);
        memcpy(pl - 4, key, 4);
        gw_ws_mask(pl, (size_t)h.len, x, 0);
    }
    return r == 0 ? GW_OK : GW_ERR;
}

int gw_ws_send_run(gw_ws *ws, uint8_t *p, size_t n, size_t count, uint64_t payload)
{
    if (ws->state != GW_WS_OPEN || n < 2)
        return GW_ERR;
    /* Every frame of a run has its sender's role: masked from a client. */
    int masked = (p[1] & 0x80u) != 0;
    if (masked != !ws->is_server || (masked && remask_run(p, n) != GW_OK))
        return GW_ERR;
    ws->msgs_out += count;
    ws->bytes_out += payload;
    struct iovec iov = {p, n};
    return ws->sink->writev(ws->io, &iov, 1);
}

int gw_ws_ping(gw_ws *ws, const uint8_t *p, size_t n)
{
    if (ws->state != GW_WS_OPEN)
        return GW_ERR;
    return send_frame(ws, 1, 0, GW_WS_OP_PING, p, GW_MIN(n, (size_t)125));
}

int gw_ws_close(gw_ws *ws, unsigned code, const char *reason, const char *cause)
{
    if (ws->state != GW_WS_OPEN)
        return GW_OK;
    uint8_t payload[125];
    size_t n = gw_ws_close_build(payload, code, reason);
    ws->close_sent = (uint16_t)code;
    ws->cause = cause;
    ws->state = GW_WS_CLOSE_SENT;
    return send_frame(ws, 1, 0, GW_WS_OP_CLOSE, payload, n);
}

void gw_ws_abort(gw_ws *ws, const char *cause)
{
    if (!ws->cause)
        ws->cause = cause;
    ws->state = GW_WS_CLOSED;
}

/* Fails the connection: sends Close with code and the error code as reason,
 * and ends the session without waiting for the peer (RFC 6455 section 7.1.7). */
static void fail(gw_ws *ws, unsigned code, const char *error, const char *cause)
{
    if (ws->state == GW_WS_OPEN) {
        ws->error = error;
        gw_ws_close(ws, code, error, cause);
    } else if (!ws->cause) {
        ws->cause = cause;
    }
    ws->state = GW_WS_CLOSED;
}

/* ================================ receiving ================================= */

/* Inflated bytes this connection may still produce under its budget
 * (UINT64_MAX without one). n is the compressed size of the message now. */
static uint64_t inflate_allowance(gw_ws *ws, size_t n)
{
    if (!ws->inflate_ratio)
        return UINT64_MAX;
    ws->z_in += n;
    uint64_t cap = GW_WS_INFLATE_SLACK;
    uint64_t earned = ws->z_in > (UINT64_MAX - cap) / ws->inflate_ratio ? UINT64_MAX - cap
                                                                         : ws->z_in * ws->inflate_ratio;
    cap += earned;
    return cap > ws->z_out ? cap - ws->z_out : 0;
}

static void deliver(gw_ws *ws, int opcode, uint8_t *p, size_t n, int compressed)
{
    if (compressed) {
        uint16_t code = 0;
        scratch_in.head = scratch_in.len = 0;
        uint64_t allow = inflate_allowance(ws, n);
        int budget_bound = allow < ws->max_msg;
        int rc = gw_pmd_inflate(ws->pmd, p, n, &scratch_in, budget_bound ? (size_t)allow : ws->max_msg, &code);
        ws->z_out += scratch_in.len;
        if (rc != GW_OK && budget_bound && code == GW_WS_CLOSE_TOO_BIG) {
            /* Tiny input that inflates without end buys CPU, not data: a
             * policy matter (1008), not a message size one. */
            fail(ws, GW_WS_CLOSE_POLICY, "inflate_budget_exceeded", gw_cause_inflate_budget);
            return;
        }
        if (rc != GW_OK) {
            fail(ws, code ? code : GW_WS_CLOSE_INVALID_DATA,
                 code == GW_WS_CLOSE_TOO_BIG ? "message_too_large" : "invalid_compressed_data",
                 code == GW_WS_CLOSE_TOO_BIG ? gw_cause_too_large : gw_cause_protocol_error);
            return;
        }
        p = scratch_in.len ? gw_buf_head(&scratch_in) : empty_payload;
        n = scratch_in.len;
        if (opcode == GW_WS_OP_TEXT && !gw_utf8_valid(p, n)) {
            fail(ws, GW_WS_CLOSE_INVALID_DATA, "invalid_utf8", gw_cause_protocol_error);
            return;
        }
    }
    ws->msgs_in++;
    ws->bytes_in += n;
    if (ws->state == GW_WS_OPEN && ws->h->on_message)
        ws->h->on_message(ws, opcode, p, n);
    if (scratch_in.cap > 1024u * 1024)
        gw_buf_release(&scratch_in);
}

static void on_close_frame(gw_ws *ws, const uint8_t *p, size_t n)
{
    uint16_t code, err;
    const uint8_t *reason;
    size_t rlen;
    if (gw_ws_close_parse(p, n, &code, &reason, &rlen, &err) != GW_OK) {
        fail(ws, err, err == GW_WS_CLOSE_INVALID_DATA ? "invalid_utf8" : "protocol_error", gw_cause_protocol_error);
        return;
    }
    ws->close_rcvd = code;
    if (ws->state == GW_WS_OPEN) {
        /* Peer-initiated: echo its code (none if it sent none). */
        uint8_t payload[2];
        size_t pl = 0;
        if (code != GW_WS_CLOSE_NO_STATUS) {
            payload[0] = (uint8_t)(code >> 8);
            payload[1] = (uint8_t)code;
            pl = 2;
        }
        ws->close_sent = code == GW_WS_CLOSE_NO_STATUS ? GW_WS_CLOSE_NORMAL : code;
        send_frame(ws, 1, 0, GW_WS_OP_CLOSE, payload, pl);
        ws->cause = gw_cause_graceful;
    }
    ws->state = GW_WS_CLOSED;
    if (ws->h->on_peer_close)
        ws->h->on_peer_close(ws, code, reason, rlen);
}

static void on_control(gw_ws *ws, int opcode, uint8_t *p, size_t n)
{
    switch (opcode) {
    case GW_WS_OP_PING:
        if (ws->state == GW_WS_OPEN)
            send_frame(ws, 1, 0, GW_WS_OP_PONG, p, n);
        break;
    case GW_WS_OP_PONG:
        if (ws->h->on_pong)
            ws->h->on_pong(ws, p, n);
        break;
    default:
        on_close_frame(ws, p, n);
        break;
    }
}

/* Checks a header against the session's state. 0 = fine; else fails ws. */
static int check_header(gw_ws *ws, const gw_ws_frame_hdr *h)
{
    if (h->masked != ws->is_server) {
        fail(ws, GW_WS_CLOSE_PROTOCOL, ws->is_server ? "unmasked_frame" : "masked_frame", gw_cause_protocol_error);
        return -1;
    }
    int control = h->opcode >= GW_WS_OP_CLOSE;
    uint8_t allowed = 0;
    /* RSV1 marks a compressed message: only on its first frame, only when
     * permessage-deflate was negotiated. */
    if (ws->pmd && !control && h->opcode != GW_WS_OP_CONT)
        allowed = GW_WS_RSV1;
    if (h->rsv & ~allowed) {
        fail(ws, GW_WS_CLOSE_PROTOCOL, "reserved_bits_set", gw_cause_protocol_error);
        return -1;
    }
    if (control)
        return 0;
    if (h->opcode == GW_WS_OP_CONT) {
        if (!ws->msg_opcode) {
            fail(ws, GW_WS_CLOSE_PROTOCOL, "unexpected_continuation", gw_cause_protocol_error);
            return -1;
        }
    } else if (ws->msg_opcode) {
        fail(ws, GW_WS_CLOSE_PROTOCOL, "expected_continuation", gw_cause_protocol_error);
        return -1;
    }
    if (h->len > ws->max_msg || ws->msg.len + h->len > ws->max_msg) {
        fail(ws, GW_WS_CLOSE_TOO_BIG, "message_too_large", gw_cause_too_large);
        return -1;
    }
    return 0;
}

/* Unmasks (and for plain text, validates) payload bytes [from, to) of the
 * current frame. Returns -1 when the text is invalid (ws failed). */
static int unmask_part(gw_ws *ws, const gw_ws_frame_hdr *h, uint8_t *payload, uint64_t from, uint64_t to,
                       int text_plain)
{
    if (from >= to)
        return 0;
    if (h->masked)
        gw_ws_mask(payload + from, (size_t)(to - from), h->mask, from);
    if (text_plain && gw_utf8_feed(&ws->utf8, payload + from, (size_t)(to - from)) != GW_OK) {
        fail(ws, GW_WS_CLOSE_INVALID_DATA, "invalid_utf8", gw_cause_protocol_error);
        return -1;
    }
    return 0;
}

/* A run is cut at this many bytes, so the owner's backpressure (checked
 * between runs) holds within one read's worth. */
#define RUN_MAX (64u * 1024)

/* The longest run of whole, final, uncompressed binary or valid text frames
 * at the start of p[0..n), handed to on_run. Returns its bytes (0: the
 * first frame is not one; the frame-by-frame path takes it, and fails it
 * when it breaks a rule). Nothing is changed in a frame that is not taken. */
static size_t take_run(gw_ws *ws, uint8_t *p, size_t n)
{
    size_t end = 0, next = 0, count = 0;
    uint64_t payload = 0;
    gw_ws_frame_hdr h;
    uint8_t *pl;
    /* Whole frames only (a partial or bad header ends the walk). */
    while (end < RUN_MAX && gw_ws_frame_next(p, n, &next, &h, &pl) == 1) {
        if (!h.fin || h.rsv || (h.opcode != GW_WS_OP_BINARY && h.opcode != GW_WS_OP_TEXT) ||
            h.masked != ws->is_server || h.len > ws->max_msg)
            break;
        size_t len = (size_t)h.len;
        if (h.opcode == GW_WS_OP_TEXT) {
            /* Checked unmasked, left as it came. */
            if (h.masked)
                gw_ws_mask(pl, len, h.mask, 0);
            int valid = gw_utf8_valid(pl, len);
            if (h.masked)
                gw_ws_mask(pl, len, h.mask, 0);
            if (!valid)
                break;
        }
        end = next;
        count++;
        payload += len;
    }
    if (!count)
        return 0;
    ws->msgs_in += count;
    ws->bytes_in += payload;
    ws->h->on_run(ws, p, end, count, payload);
    return end;
}

size_t gw_ws_feed(gw_ws *ws, uint8_t *p, size_t n)
{
    size_t off = 0;
    /* A paused connection decodes nothing more (backpressure): the check
     * runs before every frame, so a handler's pause takes effect at once. */
    while (off < n && ws->state != GW_WS_CLOSED && !ws->sink->paused(ws->io)) {
        if (ws->runs && ws->state == GW_WS_OPEN && ws->cur_done == 0 && !ws->msg_opcode) {
            size_t k = take_run(ws, p + off, n - off);
            if (k) {
                off += k;
                continue;
            }
        }
        gw_ws_frame_hdr h;
        uint16_t code = 0;
        int hl = gw_ws_frame_parse_header(p + off, n - off, &h, &code);
        if (hl == GW_AGAIN)
            break;
        if (hl < 0) {
            fail(ws, code ? code : GW_WS_CLOSE_PROTOCOL, "protocol_error", gw_cause_protocol_error);
            break;
        }
        if (ws->cur_done == 0 && check_header(ws, &h) != 0)
            break;
        int control = h.opcode >= GW_WS_OP_CLOSE;
        int first = !control && h.opcode != GW_WS_OP_CONT;
        int compressed = control ? 0 : (first ? (h.rsv & GW_WS_RSV1) != 0 : ws->msg_compressed);
        int opcode = control ? h.opcode : (first ? h.opcode : ws->msg_opcode);
        int text_plain = opcode == GW_WS_OP_TEXT && !compressed;
        if (first && text_plain && ws->cur_done == 0)
            gw_utf8_init(&ws->utf8);
        uint8_t *payload = p + off + hl;
        size_t avail = n - off - (size_t)hl;
        if (avail < h.len) {
            /* Partial frame: unmask and validate what is here now, so bad
             * UTF-8 fails fast and no byte is processed twice. */
            if (unmask_part(ws, &h, payload, ws->cur_done, avail, text_plain) != 0)
                break;
            ws->cur_done = avail;
            break;
        }
        size_t len = (size_t)h.len;
        if (unmask_part(ws, &h, payload, ws->cur_done, len, text_plain) != 0)
            break;
        ws->cur_done = 0;
        off += (size_t)hl + len;

        if (control) {
            on_control(ws, h.opcode, payload, len);
            continue;
        }
        if (ws->state == GW_WS_CLOSE_SENT) {
            /* Data after our Close is discarded (RFC 6455 section 1.4). */
            if (h.fin)
                ws->msg_opcode = 0;
            else if (first)
                ws->msg_opcode = (uint8_t)h.opcode;
            continue;
        }
        if (first && h.fin && ws->msg.len == 0) {
            /* The common case: a whole message in one frame, used in place. */
            if (text_plain && !gw_utf8_complete(&ws->utf8)) {
                fail(ws, GW_WS_CLOSE_INVALID_DATA, "invalid_utf8", gw_cause_protocol_error);
                break;
            }
            deliver(ws, opcode, payload, len, compressed);
            continue;
        }
        if (first) {
            ws->msg_opcode = (uint8_t)h.opcode;
            ws->msg_compressed = (uint8_t)compressed;
        }
        if (len && gw_buf_append(&ws->msg, payload, len, ws->max_msg) != GW_OK) {
            fail(ws, GW_WS_CLOSE_TOO_BIG, "message_too_large", gw_cause_too_large);
            break;
        }
        if (h.fin) {
            if (text_plain && !gw_utf8_complete(&ws->utf8)) {
                fail(ws, GW_WS_CLOSE_INVALID_DATA, "invalid_utf8", gw_cause_protocol_error);
                break;
            }
            ws->msg_opcode = 0;
            deliver(ws, opcode, ws->msg.len ? gw_buf_head(&ws->msg) : empty_payload, ws->msg.len, compressed);
            gw_buf_release(&ws->msg);
        }
    }
    return off;
}

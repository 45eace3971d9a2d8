/* fuzz_ws_session.c: the message engine (gw_ws_feed) on hostile input,
 * differentially: the same bytes go to two sessions, one delivering whole
 * messages in runs (gw_ws_handler.on_run, the relay's path) and one frame by
 * frame, and both must deliver the same messages (opcode and unmasked
 * bytes, in order), count the same, answer the same, and end the same way.
 * Every run is checked against its contract: whole final frames, binary or
 * valid UTF-8 text, uncompressed, within max_msg, with the sender's masking,
 * count and payload as given.
 *
 * Each side also forwards what it gets as the relay does, to a session of
 * the other role (runs with gw_ws_send_run: client frames get fresh keys in
 * place; messages with gw_ws_send), and a third session reading each
 * forwarder's output must get the same messages, without complaint; from a
 * server the two outputs are byte for byte the same. With an odd input
 * size, every delivery pauses the session (backpressure) until the next
 * feed.
 *
 * Byte 0: bit 0 role (1 server), bit 1 permessage-deflate, bits 2-7 the
 * split (0: whole; else the input arrives in pieces of that many bytes *
 * 7). Byte 1: max_msg = (value + 1) * 64. The rest is the input. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/common.h"
#include "core/sink.h"
#include "ws/utf8.h"
#include "ws/ws_frame.h"
#include "ws/ws_session.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct side {
    gw_ws ws;
    gw_buf out;     /* what the session wrote */
    uint64_t hash;  /* of every delivered message, in order */
    uint64_t msgs;
    int pause;      /* pause after every delivery */
    int paused;     /* what the sink tells the session */
    struct side *fwd; /* where deliveries are forwarded (NULL: nowhere) */
} side;

static int mem_writev(void *io, const struct iovec *iov, int n)
{
    side *s = io;
    for (int i = 0; i < n; i++)
        if (gw_buf_append(&s->out, iov[i].iov_base, iov[i].iov_len, 1 << 22) != GW_OK)
            return GW_ERR;
    return GW_OK;
}

static int mem_paused(void *io) { return ((side *)io)->paused; }

static const gw_sink sink = {mem_writev, mem_paused, 1 << 22, NULL, NULL};

static void add(side *s, int opcode, const uint8_t *p, size_t n)
{
    uint64_t h = s->hash ^ (uint64_t)opcode ^ ((uint64_t)n << 8);
    h *= 0x100000001b3ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ p[i]) * 0x100000001b3ull;
    s->hash = h;
    s->msgs++;
}

static void on_msg(gw_ws *ws, int opcode, uint8_t *p, size_t n)
{
    side *s = ws->data;
    add(s, opcode, p, n);
    if (s->fwd && gw_ws_send(&s->fwd->ws, opcode, p, n) != GW_OK)
        abort();
    s->paused = s->pause;
}

static void on_run(gw_ws *ws, uint8_t *p, size_t n, size_t count, uint64_t payload)
{
    static uint8_t tmp[1 << 16];
    size_t off = 0, frames = 0;
    uint64_t sum = 0;
    gw_ws_frame_hdr h;
    uint8_t *pl;
    int r;
    while ((r = gw_ws_frame_next(p, n, &off, &h, &pl)) == 1) {
        if (!h.fin || h.rsv || h.masked != ws->is_server || (h.opcode != GW_WS_OP_BINARY && h.opcode != GW_WS_OP_TEXT) ||
            h.len > ws->max_msg || h.len > sizeof tmp)
            abort();
        size_t len = (size_t)h.len;
        memcpy(tmp, pl, len);
        if (h.masked)
            gw_ws_mask(tmp, len, h.mask, 0);
        if (h.opcode == GW_WS_OP_TEXT && !gw_utf8_valid(tmp, len))
            abort();
        add(ws->data, h.opcode, tmp, len);
        frames++;
        sum += len;
    }
    if (r < 0)
        abort();
    if (frames != count || sum != payload || count == 0)
        abort();
    side *s = ws->data;
    if (s->fwd && gw_ws_send_run(&s->fwd->ws, p, n, count, payload) != GW_OK)
        abort();
    s->paused = s->pause;
}

static const gw_ws_handler with_runs = {on_msg, NULL, NULL, on_run};
static const gw_ws_handler without = {on_msg, NULL, NULL, NULL};

/* Feeds in, split pieces at a time, keeping what is not consumed; a
 * paused session is resumed and fed what it left before more comes. */
static void feed(side *s, const uint8_t *in, size_t n, size_t split)
{
    gw_buf pend = {0};
    size_t pos = 0;
    while (s->ws.state != GW_WS_CLOSED) {
        int resumed = s->paused;
        s->paused = 0;
        if (!resumed) {
            if (pos >= n)
                break;
            size_t take = split ? GW_MIN(split, n - pos) : n - pos;
            if (gw_buf_append(&pend, in + pos, take, 1 << 22) != GW_OK)
                break;
            pos += take;
        }
        size_t used = gw_ws_feed(&s->ws, gw_buf_head(&pend), pend.len);
        gw_buf_consume(&pend, used);
    }
    gw_buf_release(&pend);
}

/* What a forwarder wrote, read by a session of the other role (v). */
static void read_forwarded(side *v, side *f, int is_server)
{
    memset(v, 0, sizeof *v);
    gw_ws_init(&v->ws, &sink, v, is_server, &without, v, 1 << 22);
    if (f->out.len)
        gw_ws_feed(&v->ws, gw_buf_head(&f->out), f->out.len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    int is_server = data[0] & 1;
    size_t split = (size_t)(data[0] >> 2) * 7;
    uint64_t max_msg = ((uint64_t)data[1] + 1) * 64;
    gw_pmd_params pp = {.enabled = 1, .server_max_window_bits = 15, .client_max_window_bits = 15};
    side a, b, fa, fb, va, vb;
    memset(&a, 0, sizeof a);
    memset(&b, 0, sizeof b);
    memset(&fa, 0, sizeof fa);
    memset(&fb, 0, sizeof fb);
    gw_ws_init(&a.ws, &sink, &a, is_server, &with_runs, &a, max_msg);
    gw_ws_init(&b.ws, &sink, &b, is_server, &without, &b, max_msg);
    gw_ws_init(&fa.ws, &sink, &fa, !is_server, &without, &fa, 1 << 22);
    gw_ws_init(&fb.ws, &sink, &fb, !is_server, &without, &fb, 1 << 22);
    a.fwd = &fa;
    b.fwd = &fb;
    a.pause = b.pause = (int)(size & 1);
    gw_ws_set_runs(&a.ws, 1);
    gw_ws_set_runs(&b.ws, 1); /* no on_run: stays off */
    if (!a.ws.runs || b.ws.runs)
        abort();
    if (data[0] & 2) {
        gw_ws_enable_pmd(&a.ws, &pp);
        gw_ws_enable_pmd(&b.ws, &pp);
    }
    feed(&a, data + 2, size - 2, split);
    feed(&b, data + 2, size - 2, split);
    if (a.msgs != b.msgs || a.hash != b.hash || a.ws.msgs_in != b.ws.msgs_in || a.ws.bytes_in != b.ws.bytes_in ||
        a.ws.state != b.ws.state || a.ws.close_sent != b.ws.close_sent || a.ws.cause != b.ws.cause ||
        a.out.len != b.out.len)
        abort();
    /* A server session's answers are unmasked: byte for byte the same. */
    if (is_server && a.out.len && memcmp(gw_buf_head(&a.out), gw_buf_head(&b.out), a.out.len) != 0)
        abort();
    /* Forwarded: counted alike; from a server, the same bytes. */
    if (fa.ws.msgs_out != b.msgs || fb.ws.msgs_out != b.msgs || fa.ws.bytes_out != fb.ws.bytes_out ||
        fa.out.len != fb.out.len)
        abort();
    if (!is_server && fa.out.len && memcmp(gw_buf_head(&fa.out), gw_buf_head(&fb.out), fa.out.len) != 0)
        abort();
    read_forwarded(&va, &fa, is_server);
    read_forwarded(&vb, &fb, is_server);
    if (va.msgs != b.msgs || va.hash != b.hash || vb.msgs != b.msgs || vb.hash != b.hash || va.ws.state != GW_WS_OPEN ||
        vb.ws.state != GW_WS_OPEN || va.out.len || vb.out.len)
        abort();
    side *all[] = {&a, &b, &fa, &fb, &va, &vb};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        gw_ws_free(&all[i]->ws);
        gw_buf_release(&all[i]->out);
    }
    return 0;
}

/* Unit tests for ws/ws_session: the message engine fed by hand-built frames,
 * at every split point, with its output read back from a memory sink: bytes
 * in, bytes out, no socket and no loop. */
#include <stdlib.h>
#include <string.h>

#include "core/buf.h"
#include "core/common.h"
#include "core/sink.h"
#include "ws/ws_session.h"
#include "test.h"

static gw_ws ws;

/* The memory sink: what the engine wrote, how many writev calls it made,
 * whether the owner has paused decoding, and a switch to make it fail. */
static gw_buf sunk;
static size_t sunk_read; /* bytes of sunk already drained */
static int sink_calls, sink_paused, sink_fail;

static int mem_writev(void *io, const struct iovec *iov, int n)
{
    GW_UNUSED(io);
    sink_calls++;
    if (sink_fail)
        return GW_ERR;
    for (int i = 0; i < n; i++)
        if (gw_buf_append(&sunk, iov[i].iov_base, iov[i].iov_len, 1 << 26) != GW_OK)
            return GW_ERR;
    return GW_OK;
}

static int mem_paused(void *io)
{
    GW_UNUSED(io);
    return sink_paused;
}

static const gw_sink mem_sink = {mem_writev, mem_paused, 1 << 26};

static uint8_t msgs[8][4096];
static size_t msg_len[8];
static int msg_op[8], nmsgs;
static int no_echo;     /* the handler does not echo */
static int pause_at;    /* > 0: the handler pauses the conn on message number pause_at */

static void on_msg(gw_ws *w, int opcode, uint8_t *p, size_t n)
{
    if (nmsgs < 8 && n <= sizeof msgs[0]) {
        memcpy(msgs[nmsgs], p, n);
        msg_len[nmsgs] = n;
        msg_op[nmsgs] = opcode;
    }
    if (nmsgs < 8)
        msg_len[nmsgs] = n;
    nmsgs++;
    if (!no_echo)
        gw_ws_send(w, opcode, p, n); /* echo */
    if (pause_at && nmsgs == pause_at)
        sink_paused = 1; /* as a relay pauses the conn when the other leg is full */
}

static const gw_ws_handler handler = {on_msg, NULL};

static void setup(int is_server, uint64_t max)
{
    gw_ws_init(&ws, &mem_sink, NULL, is_server, &handler, NULL, max);
    nmsgs = 0;
    no_echo = 0;
    pause_at = 0;
    sink_calls = sink_paused = sink_fail = 0;
    sunk.head = sunk.len = 0;
    sunk_read = 0;
}

static void teardown(void)
{
    gw_ws_free(&ws);
    gw_buf_release(&sunk);
}

/* Appends a client frame (masked unless mask == 0) to b. */
static void frame(gw_buf *b, int fin, int rsv, int op, const void *p, size_t n, int mask)
{
    uint8_t hdr[14], key[4] = {0x37, 0xfa, 0x21, 0x3d};
    size_t hl = gw_ws_frame_encode_header(hdr, fin, rsv, op, n, mask ? key : NULL);
    gw_buf_append(b, hdr, hl, 1 << 24);
    size_t at = b->len;
    gw_buf_append(b, p, n, 1 << 24);
    if (mask && n)
        gw_ws_mask(gw_buf_head(b) + at, n, key, 0);
}

/* Feeds all of in, split at split (0 = whole), keeping unconsumed bytes as
 * the server's client loop does. Returns bytes left unconsumed. */
static size_t feed_split(const gw_buf *in, size_t split)
{
    gw_buf pend = {0};
    size_t pos = 0, total = in->len;
    while (pos < total && ws.state != GW_WS_CLOSED) {
        size_t take = split ? GW_MIN(split, total - pos) : total - pos;
        gw_buf_append(&pend, gw_buf_head(in) + pos, take, 1 << 24);
        pos += take;
        size_t used = gw_ws_feed(&ws, gw_buf_head(&pend), pend.len);
        gw_buf_consume(&pend, used);
    }
    size_t left = pend.len;
    gw_buf_release(&pend);
    return left;
}

/* Reads what the engine wrote since the last drain (at most cap bytes). */
static size_t drain_sink(uint8_t *out, size_t cap)
{
    size_t n = GW_MIN(cap, sunk.len - sunk_read);
    if (n)
        memcpy(out, gw_buf_head(&sunk) + sunk_read, n);
    sunk_read += n;
    return n;
}

static void test_single_and_splits(void)
{
    gw_buf in = {0};
    frame(&in, 1, 0, GW_WS_OP_TEXT, "Hello", 5, 1);
    frame(&in, 0, 0, GW_WS_OP_BINARY, "ab", 2, 1);
    frame(&in, 1, 0, GW_WS_OP_PING, "pp", 2, 1);  /* interleaved control */
    frame(&in, 1, 0, GW_WS_OP_CONT, "cd", 2, 1);
    uint8_t out[1024];
    for (size_t split = 0; split <= in.len; split++) {
        setup(1, 1 << 20);
        gw_buf copy = {0};
        gw_buf_append(&copy, gw_buf_head(&in), in.len, 1 << 20);
        size_t left = feed_split(&copy, split);
        gw_buf_release(&copy);
        size_t n = drain_sink(out, sizeof out);
        int good = left == 0 && nmsgs == 2 && msg_op[0] == GW_WS_OP_TEXT && msg_len[0] == 5 &&
                   memcmp(msgs[0], "Hello", 5) == 0 && msg_op[1] == GW_WS_OP_BINARY && msg_len[1] == 4 &&
                   memcmp(msgs[1], "abcd", 4) == 0;
        /* Output: echo Hello, pong pp, echo abcd (unmasked server frames). */
        static const uint8_t want[] = {0x81, 5, 'H', 'e', 'l', 'l', 'o', 0x8a, 2, 'p', 'p', 0x82, 4, 'a', 'b', 'c', 'd'};
        good = good && n == sizeof want && memcmp(out, want, n) == 0;
        ok(good, "split %zu: messages, pong and echoes exact", split);
        teardown();
    }
    gw_buf_release(&in);
}

static void expect_close(const char *what, gw_buf *in, size_t split, unsigned code, const char *cause)
{
    uint8_t out[512];
    feed_split(in, split);
    size_t n = drain_sink(out, sizeof out);
    /* The last frame written must be a Close with code. */
    int found = 0;
    for (size_t i = 0; i + 3 < n; i++) {
        if (out[i] != 0x88)
            continue;
        if (out[i + 1] & 0x80) { /* masked (client role): unmask the code */
            if (i + 7 < n && (out[i + 1] & 0x7f) >= 2 &&
                (unsigned)((out[i + 6] ^ out[i + 2]) << 8 | (out[i + 7] ^ out[i + 3])) == code)
                found = 1;
        } else if (out[i + 1] >= 2 && (unsigned)(out[i + 2] << 8 | out[i + 3]) == code) {
            found = 1;
        }
    }
    ok(ws.state == GW_WS_CLOSED, "%s: session closed", what);
    ok(found, "%s: Close %u sent", what, code);
    is_str(ws.cause, cause, "%s: cause", what);
}

static void test_violations(void)
{
    struct {
        const char *what;
        int fin, rsv, op, mask;
        const char *payload;
        size_t n;
        unsigned code;
        const char *cause;
    } cases[] = {
        {"unmasked", 1, 0, GW_WS_OP_TEXT, 0, "hi", 2, 1002, "protocol_error"},
        {"rsv1 without deflate", 1, 4, GW_WS_OP_TEXT, 1, "hi", 2, 1002, "protocol_error"},
        {"rsv2", 1, 2, GW_WS_OP_BINARY, 1, "hi", 2, 1002, "protocol_error"},
        {"opcode 3", 1, 0, 3, 1, "", 0, 1002, "protocol_error"},
        {"opcode 0xB", 1, 0, 0xB, 1, "", 0, 1002, "protocol_error"},
        {"fragmented ping", 0, 0, GW_WS_OP_PING, 1, "x", 1, 1002, "protocol_error"},
        {"continuation first", 1, 0, GW_WS_OP_CONT, 1, "x", 1, 1002, "protocol_error"},
        {"bad utf8", 1, 0, GW_WS_OP_TEXT, 1, "a\xff", 2, 1007, "protocol_error"},
        {"truncated utf8", 1, 0, GW_WS_OP_TEXT, 1, "a\xc3", 2, 1007, "protocol_error"},
        {"close 1 byte", 1, 0, GW_WS_OP_CLOSE, 1, "\x03", 1, 1002, "protocol_error"},
        {"close code 1005", 1, 0, GW_WS_OP_CLOSE, 1, "\x03\xed", 2, 1002, "protocol_error"},
        {"close bad reason", 1, 0, GW_WS_OP_CLOSE, 1, "\x03\xe8\xff", 3, 1007, "protocol_error"},
        {"clean close 3000", 1, 0, GW_WS_OP_CLOSE, 1, "\x0b\xb8ok", 4, 3000, "graceful"},
    };
    for (size_t i = 0; i < GW_ARRAY_LEN(cases); i++) {
        for (size_t split = 0; split <= 3; split++) {
            setup(1, 1 << 20);
            gw_buf in = {0};
            frame(&in, cases[i].fin, cases[i].rsv, cases[i].op, cases[i].payload, cases[i].n, cases[i].mask);
            char what[128];
            snprintf(what, sizeof what, "%s (split %zu)", cases[i].what, split);
            expect_close(what, &in, split, cases[i].code, cases[i].cause);
            gw_buf_release(&in);
            teardown();
        }
    }
}

static void test_new_message_inside_fragmented(void)
{
    setup(1, 1 << 20);
    gw_buf in = {0};
    frame(&in, 0, 0, GW_WS_OP_TEXT, "ab", 2, 1);
    frame(&in, 1, 0, GW_WS_OP_TEXT, "cd", 2, 1);
    expect_close("text inside fragmented text", &in, 0, 1002, "protocol_error");
    gw_buf_release(&in);
    teardown();
}

static void test_fail_fast_utf8(void)
{
    /* A 1000-byte text frame whose 3rd byte is invalid: the close must come
     * after only 20 payload bytes arrived, not after the whole frame. */
    setup(1, 1 << 20);
    char payload[1000];
    memset(payload, 'a', sizeof payload);
    payload[2] = (char)0xc0;
    gw_buf in = {0};
    frame(&in, 1, 0, GW_WS_OP_TEXT, payload, sizeof payload, 1);
    size_t used = gw_ws_feed(&ws, gw_buf_head(&in), 4 + 4 + 20); /* hdr(2+2) + mask(4) + 20 */
    ok(used == 0 && ws.state == GW_WS_CLOSED, "invalid UTF-8 detected mid-frame");
    uint8_t out[64];
    size_t n = drain_sink(out, sizeof out);
    ok(n >= 4 && out[0] == 0x88 && (out[2] << 8 | out[3]) == 1007, "Close 1007 sent");
    gw_buf_release(&in);
    teardown();
}

static void test_too_big(void)
{
    setup(1, 100);
    gw_buf in = {0};
    char big[101] = {0};
    frame(&in, 1, 0, GW_WS_OP_BINARY, big, 101, 1);
    /* Only the header is fed: the limit applies before the payload arrives. */
    gw_ws_feed(&ws, gw_buf_head(&in), 8);
    ok(ws.state == GW_WS_CLOSED && ws.cause == gw_cause_too_large, "frame over the limit fails at its header");
    gw_buf_release(&in);
    teardown();

    setup(1, 100);
    frame(&in, 0, 0, GW_WS_OP_BINARY, big, 60, 1);
    frame(&in, 1, 0, GW_WS_OP_CONT, big, 60, 1);
    expect_close("fragments summing over the limit", &in, 0, 1009, "too_large");
    gw_buf_release(&in);
    teardown();
}

static void test_client_role_masks(void)
{
    setup(0, 1 << 20);
    is_int(gw_ws_send(&ws, GW_WS_OP_TEXT, (const uint8_t *)"masked!", 7), GW_OK, "client send");
    uint8_t out[64];
    size_t n = drain_sink(out, sizeof out);
    ok(n == 2 + 4 + 7 && out[0] == 0x81 && (out[1] & 0x80) && (out[1] & 0x7f) == 7, "client frame has MASK bit");
    gw_ws_mask(out + 6, 7, out + 2, 0);
    is_mem(out + 6, 7, "masked!", 7, "unmasks to the payload");
    /* A masked frame from a server is a violation for a client. */
    gw_buf in = {0};
    frame(&in, 1, 0, GW_WS_OP_TEXT, "x", 1, 1);
    expect_close("masked frame to client", &in, 0, 1002, "protocol_error");
    gw_buf_release(&in);
    teardown();
}

static void test_deflate_roundtrip(void)
{
    gw_pmd_params p = {.enabled = 1, .server_max_window_bits = 15, .client_max_window_bits = 15};
    setup(1, 1 << 20);
    gw_ws_enable_pmd(&ws, &p);
    gw_pmd *client = gw_pmd_new(&p, 0);
    char text[300];
    for (size_t i = 0; i < sizeof text; i++)
        text[i] = "wsgate "[i % 7];
    gw_buf z = {0}, in = {0};
    gw_pmd_deflate(client, (const uint8_t *)text, sizeof text, &z, 1 << 20);
    frame(&in, 1, GW_WS_RSV1, GW_WS_OP_TEXT, gw_buf_head(&z), z.len, 1);
    feed_split(&in, 7);
    ok(nmsgs == 1 && msg_len[0] == sizeof text && memcmp(msgs[0], text, sizeof text) == 0,
       "compressed text inflated and delivered");
    uint8_t out[1024];
    size_t n = drain_sink(out, sizeof out);
    ok(n > 2 && (out[0] & 0x40) && (out[0] & 0x0f) == GW_WS_OP_TEXT, "echo is compressed (RSV1)");
    gw_buf plain = {0};
    uint16_t code = 0;
    size_t plen = out[1] & 0x7f, off = 2;
    if (plen == 126) {
        plen = (size_t)out[2] << 8 | out[3];
        off = 4;
    }
    is_int(gw_pmd_inflate(client, out + off, plen, &plain, 1 << 20, &code), GW_OK, "client inflates the echo");
    is_mem(gw_buf_head(&plain), plain.len, text, sizeof text, "echo equals the message");
    gw_buf_release(&z);
    gw_buf_release(&in);
    gw_buf_release(&plain);
    gw_pmd_free(client);
    teardown();
}

/* Appends a masked compressed message (one frame) with data to in. */
static void zframe(gw_buf *in, gw_pmd *client, const void *data, size_t n)
{
    gw_buf z = {0};
    gw_pmd_deflate(client, data, n, &z, 1 << 26);
    frame(in, 1, GW_WS_RSV1, GW_WS_OP_BINARY, gw_buf_head(&z), z.len, 1);
    gw_buf_release(&z);
}

/* Backpressure inside the engine: once the handler pauses the connection,
 * not one more frame is decoded or inflated; the rest is left unconsumed
 * and decoded after the pause ends. */
static void test_pause_stops_decoding(void)
{
    gw_pmd_params p = {.enabled = 1, .server_max_window_bits = 15, .client_max_window_bits = 15};
    setup(1, 1 << 20);
    gw_ws_enable_pmd(&ws, &p);
    gw_ws_set_inflate_budget(&ws, 0); /* bombs on purpose: this test is about the pause */
    no_echo = 1;
    pause_at = 1;
    gw_pmd *client = gw_pmd_new(&p, 0);
    static uint8_t big[1 << 20]; /* 1 MiB of zeros: ~1 KiB compressed */
    gw_buf in = {0};
    zframe(&in, client, big, sizeof big);
    size_t first = in.len;
    zframe(&in, client, big, sizeof big);
    frame(&in, 1, 0, GW_WS_OP_PING, "pp", 2, 1);
    zframe(&in, client, big, sizeof big);
    size_t used = gw_ws_feed(&ws, gw_buf_head(&in), in.len);
    is_int(nmsgs, 1, "one message delivered, then the handler paused");
    is_int((long long)used, (long long)first, "the feed stopped right after that message's frame");
    is_int((long long)ws.z_out, 1 << 20, "only that message was inflated");
    is_int((long long)ws.bytes_in, 1 << 20, "bytes_in counts that message only");
    uint8_t out[64];
    is_int((long long)drain_sink(out, sizeof out), 0, "the ping behind the pause is not answered yet");
    gw_buf_consume(&in, used);
    is_int((long long)gw_ws_feed(&ws, gw_buf_head(&in), in.len), 0, "a feed while paused consumes nothing");
    is_int(nmsgs, 1, "and delivers nothing");
    is_int((long long)ws.z_out, 1 << 20, "and inflates nothing");
    sink_paused = 0;
    pause_at = 0;
    used = gw_ws_feed(&ws, gw_buf_head(&in), in.len);
    is_int((long long)used, (long long)in.len, "after the pause ends the rest is consumed");
    is_int(nmsgs, 3, "both remaining messages delivered");
    ok(msg_len[1] == (1u << 20) && msg_len[2] == (1u << 20), "at their full size");
    size_t n = drain_sink(out, sizeof out);
    ok(n == 4 && out[0] == 0x8a && out[1] == 2 && out[2] == 'p', "the ping is answered");
    gw_buf_release(&in);
    gw_pmd_free(client);
    teardown();
}

/* Reads the first Close frame the (server-role) engine wrote: code and
 * reason. */
static unsigned read_close(char *reason, size_t cap)
{
    static uint8_t out[1 << 16];
    size_t n = drain_sink(out, sizeof out);
    for (size_t i = 0; i + 3 < n;) {
        size_t len = out[i + 1] & 0x7f, hl = 2;
        if (len == 126) {
            len = (size_t)out[i + 2] << 8 | out[i + 3];
            hl = 4;
        }
        if ((out[i] & 0x0f) == GW_WS_OP_CLOSE && len >= 2 && i + hl + len <= n) {
            size_t rl = GW_MIN(len - 2, cap - 1);
            memcpy(reason, out + i + hl + 2, rl);
            reason[rl] = '\0';
            return (unsigned)(out[i + hl] << 8 | out[i + hl + 1]);
        }
        i += hl + len;
    }
    return 0;
}

/* The decompression budget: inflated bytes stay within ratio x compressed
 * bytes + GW_WS_INFLATE_SLACK over the connection's life; past it, 1008. */
static void test_inflate_budget(void)
{
    gw_pmd_params p = {.enabled = 1, .server_max_window_bits = 15, .client_max_window_bits = 15};
    static uint8_t big[1 << 20];
    char reason[128];

    /* Default ratio (100): the first 1 MiB bomb fits the slack, the second
     * (another ~1 KiB for 1 MiB) does not. */
    setup(1, 4 << 20);
    gw_ws_enable_pmd(&ws, &p);
    no_echo = 1;
    gw_pmd *client = gw_pmd_new(&p, 0);
    gw_buf in = {0};
    zframe(&in, client, big, sizeof big);
    zframe(&in, client, big, sizeof big);
    zframe(&in, client, big, sizeof big);
    gw_ws_feed(&ws, gw_buf_head(&in), in.len);
    is_int(nmsgs, 1, "the first bomb is delivered (within the slack)");
    ok(ws.state == GW_WS_CLOSED, "the second fails the connection");
    is_str(ws.cause, gw_cause_inflate_budget, "cause inflate_budget");
    is_str(ws.error, "inflate_budget_exceeded", "error text");
    is_int(read_close(reason, sizeof reason), 1008, "Close 1008 sent");
    is_str(reason, "inflate_budget_exceeded", "with the reason");
    ok(ws.z_out <= GW_WS_INFLATE_SLACK + (uint64_t)GW_WS_INFLATE_RATIO_DEFAULT * ws.z_in,
       "inflation stopped at the budget (%llu bytes from %llu)", (unsigned long long)ws.z_out,
       (unsigned long long)ws.z_in);
    gw_buf_release(&in);
    gw_pmd_free(client);
    teardown();

    /* Budget off: the same input is all delivered. */
    setup(1, 4 << 20);
    gw_ws_enable_pmd(&ws, &p);
    gw_ws_set_inflate_budget(&ws, 0);
    no_echo = 1;
    client = gw_pmd_new(&p, 0);
    for (int i = 0; i < 3; i++)
        zframe(&in, client, big, sizeof big);
    gw_ws_feed(&ws, gw_buf_head(&in), in.len);
    ok(nmsgs == 3 && ws.state == GW_WS_OPEN, "without a budget all three are inflated");
    gw_buf_release(&in);
    gw_pmd_free(client);
    teardown();

    /* Ordinary compressible data (about 4:1) never meets the budget, however
     * much of it flows. */
    setup(1, 4 << 20);
    gw_ws_enable_pmd(&ws, &p);
    no_echo = 1;
    client = gw_pmd_new(&p, 0);
    static uint8_t text[64 * 1024];
    uint32_t x = 12345;
    for (size_t i = 0; i < sizeof text; i++) {
        x = x * 1103515245u + 12345u;
        text[i] = (uint8_t)"abcdefghijklmnop"[(x >> 16) & 15];
    }
    for (int i = 0; i < 200; i++) {
        in.head = in.len = 0;
        zframe(&in, client, text, sizeof text);
        gw_ws_feed(&ws, gw_buf_head(&in), in.len);
    }
    ok(nmsgs == 200 && ws.state == GW_WS_OPEN, "200 messages of 64 KiB at ~2:1 all delivered (%d)", nmsgs);
    gw_buf_release(&in);
    gw_pmd_free(client);
    teardown();
}

/* The sink contract: one writev per frame (header and payload together, so
 * a corking sink can batch frames without a system call each), a failing
 * sink fails the send, and close attribution does not depend on the sink. */
static void test_sink_contract(void)
{
    setup(1, 1 << 20);
    no_echo = 1;
    for (int i = 0; i < 3; i++)
        is_int(gw_ws_send(&ws, GW_WS_OP_BINARY, (const uint8_t *)"abc", 3), GW_OK, "send %d", i);
    is_int(gw_ws_ping(&ws, NULL, 0), GW_OK, "empty ping");
    is_int(sink_calls, 4, "four frames, four writev calls");
    uint8_t out[64];
    static const uint8_t want[] = {0x82, 3, 'a', 'b', 'c', 0x82, 3, 'a', 'b', 'c', 0x82, 3, 'a', 'b', 'c', 0x89, 0};
    size_t n = drain_sink(out, sizeof out);
    is_mem(out, n, want, sizeof want, "the frames, in order");
    sink_fail = 1;
    is_int(gw_ws_send(&ws, GW_WS_OP_TEXT, (const uint8_t *)"x", 1), GW_ERR, "a failing sink fails the send");
    sink_fail = 0;
    is_int(gw_ws_close(&ws, 1001, "going_away", gw_cause_shutdown), GW_OK, "close");
    ok(ws.state == GW_WS_CLOSE_SENT && ws.cause == gw_cause_shutdown && ws.close_sent == 1001,
       "close attributed to its cause");
    teardown();
}

/* A memory sink that also builds frames in place (as gw_conn_sink does
 * for a queued or corked connection). */
static uint8_t *mem_reserve(void *io, size_t n)
{
    GW_UNUSED(io);
    sink_calls++;
    if (sink_fail || gw_buf_reserve(&sunk, n, 1 << 26) != GW_OK)
        return NULL;
    return gw_buf_tail(&sunk);
}

static void mem_commit(void *io, size_t n)
{
    GW_UNUSED(io);
    sunk.len += (uint32_t)n;
}

static const gw_sink mem_sink_rsv = {mem_writev, mem_paused, 1 << 26, mem_reserve, mem_commit};

/* A client session's frames, built in place (reserve/commit) and through
 * writev alike: whole, masked with a fresh key each, unmasking to the
 * payload. */
static void test_client_frames_in_place(void)
{
    static uint8_t plain[200], out[300];
    for (size_t i = 0; i < sizeof plain; i++)
        plain[i] = (uint8_t)(i ^ 0x55);
    int bad = 0, cases = 0, same_key = 0;
    uint8_t last_key[4] = {0};
    for (int rsv = 0; rsv < 2; rsv++)
        for (size_t n = 0; n < sizeof plain; n += n < 10 ? 1 : 17) {
            setup(0, 1 << 20);
            if (rsv)
                gw_ws_init(&ws, &mem_sink_rsv, NULL, 0, &handler, NULL, 1 << 20);
            bad += gw_ws_send(&ws, GW_WS_OP_BINARY, plain, n) != GW_OK;
            size_t got = drain_sink(out, sizeof out);
            gw_ws_frame_hdr h;
            uint16_t cc;
            int hl = gw_ws_frame_parse_header(out, got, &h, &cc);
            if (hl <= 0 || !h.masked || h.len != n || (size_t)hl + n != got || h.opcode != GW_WS_OP_BINARY) {
                bad++;
            } else {
                gw_ws_mask(out + hl, n, h.mask, 0);
                bad += memcmp(out + hl, plain, n) != 0;
                same_key += memcmp(h.mask, last_key, 4) == 0;
                memcpy(last_key, h.mask, 4);
            }
            cases++;
            teardown();
        }
    is_int(bad, 0, "%d frames (writev and in place): whole, masked, unmask to the payload", cases);
    is_int(same_key, 0, "no frame reuses the previous frame's key");
}

/* Runs (gw_ws_handler.on_run): every delivered message in order, whichever
 * way it came: seq_* hold them unmasked; events tells the way ("R<count>"
 * for a run, "M" for on_message). */
static char events[512];
static uint8_t seq_data[16][2048];
static size_t seq_len[16];
static int seq_op[16], nseq, run_calls, run_pause;
static size_t run_longest;
static uint64_t run_payload_sum;
static gw_buf run_wire; /* the runs' bytes as handed over */

static void seq_add(int opcode, const uint8_t *p, size_t n, const uint8_t *key)
{
    if (nseq < 16 && n <= sizeof seq_data[0]) {
        memcpy(seq_data[nseq], p, n);
        if (key)
            gw_ws_mask(seq_data[nseq], n, key, 0);
        seq_len[nseq] = n;
        seq_op[nseq] = opcode;
    }
    nseq++;
}

static void on_run_msg(gw_ws *w, int opcode, uint8_t *p, size_t n)
{
    GW_UNUSED(w);
    strcat(events, "M");
    seq_add(opcode, p, n, NULL);
}

static void on_run_cb(gw_ws *w, uint8_t *p, size_t n, size_t count, uint64_t payload)
{
    GW_UNUSED(w);
    run_calls++;
    size_t el = strlen(events);
    snprintf(events + el, sizeof events - el, "R%zu", count);
    gw_buf_append(&run_wire, p, n, 1 << 24);
    if (n > run_longest)
        run_longest = n;
    run_payload_sum += payload;
    /* The run is frames back to back: each one is a message. */
    size_t off = 0, frames = 0;
    uint64_t sum = 0;
    gw_ws_frame_hdr h;
    uint8_t *pl;
    int r;
    while ((r = gw_ws_frame_next(p, n, &off, &h, &pl)) == 1) {
        seq_add(h.opcode, pl, (size_t)h.len, h.masked ? h.mask : NULL);
        frames++;
        sum += h.len;
    }
    if (r < 0)
        strcat(events, "!");
    if (frames != count || sum != payload)
        strcat(events, "!");
    if (run_pause)
        sink_paused = 1;
}

static const gw_ws_handler run_handler = {on_run_msg, NULL, NULL, on_run_cb};

static void setup_runs(int is_server)
{
    setup(is_server, 1 << 20);
    ws.h = &run_handler;
    gw_ws_set_runs(&ws, 1);
    events[0] = '\0';
    nseq = run_calls = run_pause = 0;
    run_longest = 0;
    run_payload_sum = 0;
    run_wire.head = run_wire.len = 0;
}

static void teardown_runs(void)
{
    gw_buf_release(&run_wire);
    teardown();
}

/* A relay's view: whole final binary and text frames come in runs, as they
 * came off the wire (still masked), in order with everything else (a
 * fragmented message, a ping), at every split of the input; a frame that
 * arrived in pieces comes through on_message. */
static void test_run_delivery(void)
{
    static uint8_t b2[300], b3[200];
    for (size_t i = 0; i < sizeof b2; i++)
        b2[i] = (uint8_t)(i * 7 + 1);
    for (size_t i = 0; i < sizeof b3; i++)
        b3[i] = (uint8_t)(i ^ 0xa5);
    gw_buf in = {0};
    frame(&in, 1, 0, GW_WS_OP_BINARY, "abc", 3, 1);
    frame(&in, 1, 0, GW_WS_OP_BINARY, b2, sizeof b2, 1); /* 16-bit length */
    frame(&in, 1, 0, GW_WS_OP_TEXT, "h\xc3\xa9llo", 6, 1);
    size_t first_run = in.len;
    frame(&in, 1, 0, GW_WS_OP_PING, "pp", 2, 1);
    frame(&in, 0, 0, GW_WS_OP_BINARY, "ab", 2, 1);
    frame(&in, 1, 0, GW_WS_OP_CONT, "cd", 2, 1);
    size_t second_at = in.len;
    frame(&in, 1, 0, GW_WS_OP_BINARY, b3, sizeof b3, 1);
    frame(&in, 1, 0, GW_WS_OP_BINARY, "", 0, 1);
    const struct {
        int op;
        const void *p;
        size_t n;
    } want[] = {{2, "abc", 3}, {2, b2, sizeof b2}, {1, "h\xc3\xa9llo", 6}, {2, "abcd", 4}, {2, b3, sizeof b3}, {2, "", 0}};

    setup_runs(1);
    size_t left = feed_split(&in, 0);
    is_str(events, "R3MR2", "whole input: a run of 3, the fragmented message, a run of 2");
    ok(left == 0 && run_wire.len == first_run + (in.len - second_at) &&
           memcmp(gw_buf_head(&run_wire), gw_buf_head(&in), first_run) == 0 &&
           memcmp(gw_buf_head(&run_wire) + first_run, gw_buf_head(&in) + second_at, in.len - second_at) == 0,
       "the runs are the input's bytes, still masked");
    ok(ws.msgs_in == 6 && ws.bytes_in == 3 + sizeof b2 + 6 + 4 + sizeof b3 && run_payload_sum == 3 + sizeof b2 + 6 + sizeof b3,
       "msgs_in %llu, bytes_in %llu counted for runs too", (unsigned long long)ws.msgs_in,
       (unsigned long long)ws.bytes_in);
    uint8_t out[64];
    size_t n = drain_sink(out, sizeof out);
    ok(n == 4 && out[0] == 0x8a && out[2] == 'p', "the ping between them is answered");
    teardown_runs();

    int bad = 0, split_runs = 0, split_msgs = 0;
    for (size_t split = 1; split <= in.len; split++) {
        setup_runs(1);
        feed_split(&in, split);
        int good = nseq == 6 && !strchr(events, '!');
        for (int i = 0; good && i < 6; i++)
            good = seq_op[i] == want[i].op && seq_len[i] == want[i].n && memcmp(seq_data[i], want[i].p, want[i].n) == 0;
        bad += !good;
        split_runs += run_calls > 0;
        int ms = 0;
        for (const char *e = events; *e; e++)
            ms += *e == 'M';
        split_msgs += ms > 1; /* more than the fragmented one */
        teardown_runs();
    }
    is_int(bad, 0, "every split: the six messages, in order, bytes exact");
    ok(split_runs > 0 && split_msgs > 0, "splits delivered runs (%d) and frames in pieces (%d)", split_runs,
       split_msgs);
    gw_buf_release(&in);

    /* From a server (client-role session): the frames are plain, and text
     * is checked all the same. */
    setup_runs(0);
    frame(&in, 1, 0, GW_WS_OP_TEXT, "ok", 2, 0);
    frame(&in, 1, 0, GW_WS_OP_BINARY, "\xff", 1, 0);
    feed_split(&in, 0);
    ok(!strcmp(events, "R2") && run_wire.len == in.len && memcmp(gw_buf_head(&run_wire), gw_buf_head(&in), in.len) == 0,
       "server frames come in a run, unchanged");
    gw_buf_release(&in);
    teardown_runs();

    /* Runs off, or a handler without on_run: everything through on_message. */
    setup_runs(1);
    gw_ws_set_runs(&ws, 0);
    frame(&in, 1, 0, GW_WS_OP_BINARY, "abc", 3, 1);
    frame(&in, 1, 0, GW_WS_OP_TEXT, "x", 1, 1);
    feed_split(&in, 0);
    is_str(events, "MM", "runs off: each message through on_message");
    teardown_runs();
    setup_runs(1);
    ws.h = &handler;
    gw_ws_set_runs(&ws, 1);
    no_echo = 1;
    feed_split(&in, 0);
    ok(ws.runs == 0 && nmsgs == 2, "a handler without on_run gets no runs");
    gw_buf_release(&in);
    teardown_runs();
}

/* Every rule holds for frames that would go in a run: a bad one ends the
 * run before it, is not delivered, and fails the session; nothing after it
 * is delivered. */
static void test_run_rules(void)
{
    static uint8_t big[11];
    gw_buf in = {0};
    struct {
        const char *what;
        int fin, rsv, op;
        const void *p;
        size_t n;
        int mask;
        unsigned code;
        const char *cause;
    } cases[] = {
        {"invalid UTF-8 text", 1, 0, GW_WS_OP_TEXT, "a\xff", 2, 1, 1007, "protocol_error"},
        {"RSV1 without deflate", 1, 4, GW_WS_OP_BINARY, "x", 1, 1, 1002, "protocol_error"},
        {"too big", 1, 0, GW_WS_OP_BINARY, big, sizeof big, 1, 1009, "too_large"},
        {"unmasked from a client", 1, 0, GW_WS_OP_BINARY, "x", 1, 0, 1002, "protocol_error"},
        {"continuation without a start", 1, 0, GW_WS_OP_CONT, "x", 1, 1, 1002, "protocol_error"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        setup_runs(1);
        ws.max_msg = 10;
        frame(&in, 1, 0, GW_WS_OP_BINARY, "ok", 2, 1);
        size_t good_len = in.len;
        frame(&in, cases[i].fin, cases[i].rsv, cases[i].op, cases[i].p, cases[i].n, cases[i].mask);
        frame(&in, 1, 0, GW_WS_OP_BINARY, "after", 5, 1);
        gw_buf copy = {0};
        gw_buf_append(&copy, gw_buf_head(&in), in.len, 1 << 20);
        expect_close(cases[i].what, &in, 0, cases[i].code, cases[i].cause);
        ok(!strcmp(events, "R1") && run_wire.len == good_len && nseq == 1,
           "%s: the run ends before it (events %.60s)", cases[i].what, events);
        /* The frame not taken is left as it came (the owner pauses after
         * the run, so the frame-by-frame path never touches it). */
        teardown_runs();
        setup_runs(1);
        ws.max_msg = 10;
        run_pause = 1;
        size_t k = gw_ws_feed(&ws, gw_buf_head(&copy), copy.len);
        ok(k == good_len && memcmp(gw_buf_head(&copy), gw_buf_head(&in), copy.len) == 0,
           "%s: the bytes past the run are as they came", cases[i].what);
        gw_buf_release(&copy);
        gw_buf_release(&in);
        teardown_runs();
    }
    /* After our Close, data is discarded, not delivered. */
    setup_runs(1);
    gw_ws_close(&ws, 1001, "bye", gw_cause_shutdown);
    frame(&in, 1, 0, GW_WS_OP_BINARY, "x", 1, 1);
    feed_split(&in, 0);
    ok(run_calls == 0 && nseq == 0, "data after our Close is discarded");
    gw_buf_release(&in);
    teardown_runs();
}

/* A run is cut at 64 KiB so backpressure holds; a pause from the owner in
 * on_run stops the feed right after that run. */
static void test_run_limits(void)
{
    static uint8_t kb[1000];
    gw_buf in = {0};
    for (int i = 0; i < 100; i++)
        frame(&in, 1, 0, GW_WS_OP_BINARY, kb, sizeof kb, 1);
    setup_runs(1);
    feed_split(&in, 0);
    ok(run_calls >= 2 && nseq == 100 && run_longest <= 64 * 1024 + 1008,
       "100 KB of frames: %d runs, the longest %zu bytes, 100 messages", run_calls, run_longest);
    teardown_runs();
    setup_runs(1);
    run_pause = 1;
    size_t used = gw_ws_feed(&ws, gw_buf_head(&in), in.len);
    ok(run_calls == 1 && used == run_wire.len && used < in.len, "paused in on_run: the feed stops after it");
    is_int((long long)gw_ws_feed(&ws, gw_buf_head(&in) + used, in.len - used), 0, "a paused feed takes nothing");
    sink_paused = run_pause = 0;
    used += gw_ws_feed(&ws, gw_buf_head(&in) + used, in.len - used);
    ok(used == in.len && nseq == 100, "resumed: the rest is delivered");
    teardown_runs();
    gw_buf_release(&in);

    /* With deflate on, a compressed message comes inflated through
     * on_message; an uncompressed one still in a run. */
    gw_pmd_params pp = {.enabled = 1, .server_max_window_bits = 15, .client_max_window_bits = 15};
    setup_runs(1);
    gw_ws_enable_pmd(&ws, &pp);
    gw_pmd *client = gw_pmd_new(&pp, 0);
    frame(&in, 1, 0, GW_WS_OP_BINARY, "raw", 3, 1);
    zframe(&in, client, "squeezed squeezed", 17);
    frame(&in, 1, 0, GW_WS_OP_BINARY, "raw", 3, 1);
    feed_split(&in, 0);
    ok(!strcmp(events, "R1MR1") && nseq == 3 && seq_len[1] == 17 && memcmp(seq_data[1], "squeezed squeezed", 17) == 0,
       "compressed: inflated through on_message, between runs (events %.60s)", events);
    gw_pmd_free(client);
    gw_buf_release(&in);
    teardown_runs();
}

/* gw_ws_send_run: a client session gives every frame its own fresh key and
 * remasks it in place (the payloads unmask to the plain bytes), in one
 * write; a server session sends a server's run unchanged; a run of the
 * wrong masking, or on a closing session, is refused with nothing sent. */
static void test_send_run(void)
{
    static const uint8_t inkey[4] = {0x37, 0xfa, 0x21, 0x3d}; /* frame()'s */
    static uint8_t plain[300];
    for (size_t i = 0; i < sizeof plain; i++)
        plain[i] = (uint8_t)(i ^ 0x55);
    const size_t sizes[] = {0, 1, 5, 125, 126, 300};
    gw_buf in = {0};
    uint64_t total = 0;
    for (size_t i = 0; i < 6; i++) {
        frame(&in, 1, 0, i == 2 ? GW_WS_OP_TEXT : GW_WS_OP_BINARY, plain, sizes[i], 1);
        total += sizes[i];
    }
    gw_buf copy = {0};
    gw_buf_append(&copy, gw_buf_head(&in), in.len, 1 << 20);
    setup(0, 1 << 20);
    is_int(gw_ws_send_run(&ws, gw_buf_head(&copy), copy.len, 6, total), GW_OK, "client session sends the run");
    static uint8_t out[2048];
    size_t got = drain_sink(out, sizeof out);
    int bad = got != in.len || sink_calls != 1, same_key = 0;
    uint8_t keys[6][4];
    size_t off = 0;
    for (size_t i = 0; i < 6 && !bad; i++) {
        gw_ws_frame_hdr h, hin;
        uint16_t cc;
        int hl = gw_ws_frame_parse_header(out + off, got - off, &h, &cc);
        gw_ws_frame_parse_header(gw_buf_head(&in) + off, in.len - off, &hin, &cc);
        if (hl <= 0 || !h.masked || h.len != sizes[i] || h.opcode != hin.opcode || !h.fin ||
            memcmp(out + off, gw_buf_head(&in) + off, (size_t)hl - 4) != 0) {
            bad++;
            break;
        }
        gw_ws_mask(out + off + hl, sizes[i], h.mask, 0);
        bad += memcmp(out + off + hl, plain, sizes[i]) != 0;
        same_key += memcmp(h.mask, inkey, 4) == 0;
        memcpy(keys[i], h.mask, 4);
        off += (size_t)hl + sizes[i];
    }
    is_int(bad, 0, "one write; each frame's header kept, payload unmasks to the plain bytes");
    is_int(same_key, 0, "no frame keeps the client's key");
    ok(memcmp(keys[0], keys[1], 4) && memcmp(keys[1], keys[2], 4) && memcmp(keys[4], keys[5], 4),
       "each frame has its own key");
    ok(ws.msgs_out == 6 && ws.bytes_out == total, "msgs_out and bytes_out count the run");
    teardown();

    /* A server session: a server's run unchanged; a client's refused. */
    gw_buf srv = {0};
    frame(&srv, 1, 0, GW_WS_OP_BINARY, plain, 200, 0);
    frame(&srv, 1, 0, GW_WS_OP_TEXT, "ok", 2, 0);
    setup(1, 1 << 20);
    is_int(gw_ws_send_run(&ws, gw_buf_head(&srv), srv.len, 2, 202), GW_OK, "server session sends a server's run");
    got = drain_sink(out, sizeof out);
    ok(got == srv.len && memcmp(out, gw_buf_head(&srv), got) == 0, "unchanged");
    memcpy(gw_buf_head(&copy), gw_buf_head(&in), in.len);
    is_int(gw_ws_send_run(&ws, gw_buf_head(&copy), copy.len, 6, total), GW_ERR, "a client's (masked) run refused");
    is_int((long long)drain_sink(out, sizeof out), 0, "nothing sent");
    teardown();
    setup(0, 1 << 20);
    is_int(gw_ws_send_run(&ws, gw_buf_head(&srv), srv.len, 2, 202), GW_ERR,
           "a client session refuses an unmasked run");
    memcpy(gw_buf_head(&copy), gw_buf_head(&in), in.len);
    is_int(gw_ws_send_run(&ws, gw_buf_head(&copy), copy.len - 1, 6, total), GW_ERR, "a run cut short is refused");
    is_int((long long)drain_sink(out, sizeof out), 0, "nothing sent");
    gw_ws_close(&ws, 1000, "", gw_cause_graceful);
    drain_sink(out, sizeof out);
    is_int(gw_ws_send_run(&ws, gw_buf_head(&copy), copy.len, 6, total), GW_ERR, "a closing session refuses a run");
    is_int((long long)drain_sink(out, sizeof out), 0, "nothing sent");
    teardown();
    gw_buf_release(&srv);
    gw_buf_release(&copy);
    gw_buf_release(&in);
}

int main(void)
{
    TEST_RUN(test_single_and_splits);
    TEST_RUN(test_violations);
    TEST_RUN(test_new_message_inside_fragmented);
    TEST_RUN(test_fail_fast_utf8);
    TEST_RUN(test_too_big);
    TEST_RUN(test_client_role_masks);
    TEST_RUN(test_deflate_roundtrip);
    TEST_RUN(test_pause_stops_decoding);
    TEST_RUN(test_inflate_budget);
    TEST_RUN(test_sink_contract);
    TEST_RUN(test_client_frames_in_place);
    TEST_RUN(test_run_delivery);
    TEST_RUN(test_run_rules);
    TEST_RUN(test_run_limits);
    TEST_RUN(test_send_run);
    return test_done();
}

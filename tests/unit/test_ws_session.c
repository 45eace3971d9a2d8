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

static uint8_t masked_got[4096], masked_key[4];
static size_t masked_len;
static int masked_calls;

static void on_masked(gw_ws *w, int opcode, uint8_t *p, size_t n, const uint8_t key[4])
{
    GW_UNUSED(w);
    masked_calls++;
    if (opcode == GW_WS_OP_BINARY && n <= sizeof masked_got) {
        memcpy(masked_got, p, n);
        masked_len = n;
        memcpy(masked_key, key, 4);
    }
}

static const gw_ws_handler masked_handler = {on_msg, NULL, NULL, on_masked};

static void setup_masked(void)
{
    setup(1, 1 << 20);
    no_echo = 1;
    masked_calls = 0;
    masked_len = 0;
    ws.h = &masked_handler;
}

/* A forwarding owner (on_masked_message) gets a whole binary message in one
 * frame still masked, with its key; everything else (text, fragments, a
 * frame that arrived in pieces) comes unmasked through on_message, and the
 * protocol's checks hold for masked delivery too. */
static void test_masked_delivery(void)
{
    static const uint8_t key[4] = {0x37, 0xfa, 0x21, 0x3d}; /* frame()'s */
    uint8_t plain[300], wire[300];
    for (size_t i = 0; i < sizeof plain; i++)
        plain[i] = (uint8_t)(i * 5 + 3);
    gw_buf in = {0};
    frame(&in, 1, 0, GW_WS_OP_BINARY, plain, sizeof plain, 1);
    size_t whole = in.len;
    /* At every split: one message, masked when it arrived whole, plain when
     * its frame came in pieces. */
    int bad = 0, masked_seen = 0, plain_seen = 0;
    for (size_t split = 0; split <= whole; split += split < 20 ? 1 : 37) {
        setup_masked();
        feed_split(&in, split);
        if (masked_calls == 1 && nmsgs == 0) {
            memcpy(wire, plain, sizeof plain);
            gw_ws_mask(wire, sizeof wire, key, 0);
            bad += masked_len != sizeof plain || memcmp(masked_got, wire, sizeof wire) != 0 ||
                   memcmp(masked_key, key, 4) != 0;
            masked_seen++;
        } else if (masked_calls == 0 && nmsgs == 1) {
            bad += msg_len[0] != sizeof plain || memcmp(msgs[0], plain, sizeof plain) != 0 || msg_op[0] != 2;
            plain_seen++;
        } else {
            bad++;
        }
        teardown();
    }
    is_int(bad, 0, "every split: one binary message, masked with its key or plain, bytes exact");
    ok(masked_seen > 0 && plain_seen > 0, "whole frames came masked (%d), split ones plain (%d)", masked_seen,
       plain_seen);
    gw_buf_release(&in);

    /* Text and fragmented binary: unmasked, through on_message. */
    setup_masked();
    frame(&in, 1, 0, GW_WS_OP_TEXT, "héllo", 6, 1);
    frame(&in, 0, 0, GW_WS_OP_BINARY, "ab", 2, 1);
    frame(&in, 1, 0, GW_WS_OP_CONT, "cd", 2, 1);
    feed_split(&in, 0);
    ok(masked_calls == 0 && nmsgs == 2 && msg_len[0] == 6 && memcmp(msgs[0], "héllo", 6) == 0 && msg_op[0] == 1 &&
           msg_len[1] == 4 && memcmp(msgs[1], "abcd", 4) == 0 && msg_op[1] == 2,
       "text and a fragmented binary message come unmasked through on_message");
    gw_buf_release(&in);
    teardown();

    /* The checks still apply to a frame that would go masked. */
    setup_masked();
    frame(&in, 1, 4, GW_WS_OP_BINARY, "x", 1, 1);
    expect_close("RSV1 without deflate, masked path", &in, 0, 1002, "protocol_error");
    ok(masked_calls == 0, "a frame with a reserved bit is not delivered");
    gw_buf_release(&in);
    teardown();
    setup_masked();
    ws.max_msg = 10;
    frame(&in, 1, 0, GW_WS_OP_BINARY, plain, 11, 1);
    expect_close("too big, masked path", &in, 0, 1009, "too_large");
    ok(masked_calls == 0, "an oversized frame is not delivered");
    gw_buf_release(&in);
    teardown();
    setup_masked();
    frame(&in, 1, 0, GW_WS_OP_BINARY, "x", 1, 0);
    expect_close("unmasked binary from a client", &in, 0, 1002, "protocol_error");
    ok(masked_calls == 0, "an unmasked client frame is not delivered");
    gw_buf_release(&in);
    teardown();
    /* After our Close, data is discarded, not delivered. */
    setup_masked();
    gw_ws_close(&ws, 1001, "bye", gw_cause_shutdown);
    frame(&in, 1, 0, GW_WS_OP_BINARY, "x", 1, 1);
    feed_split(&in, 0);
    ok(masked_calls == 0 && nmsgs == 0, "data after our Close is discarded");
    gw_buf_release(&in);
    teardown();
}

/* gw_ws_send_masked from a client session: the frame carries a fresh key
 * (not the input's) and unmasks to the plain payload, built in place and
 * through writev alike; from a server session it goes out plain. */
static void test_send_masked(void)
{
    static const uint8_t inkey[4] = {0xde, 0xad, 0xbe, 0xef};
    uint8_t plain[200], buf[200], out[300];
    for (size_t i = 0; i < sizeof plain; i++)
        plain[i] = (uint8_t)(i ^ 0x55);
    int bad = 0, same_key = 0, cases = 0;
    for (int rsv = 0; rsv < 2; rsv++)
        for (size_t n = 0; n < sizeof plain; n += n < 10 ? 1 : 17) {
            setup(0, 1 << 20);
            if (rsv)
                gw_ws_init(&ws, &mem_sink_rsv, NULL, 0, &handler, NULL, 1 << 20);
            memcpy(buf, plain, n);
            gw_ws_mask(buf, n, inkey, 0);
            bad += gw_ws_send_masked(&ws, GW_WS_OP_BINARY, buf, n, inkey) != GW_OK;
            size_t got = drain_sink(out, sizeof out);
            gw_ws_frame_hdr h;
            uint16_t cc;
            int hl = gw_ws_frame_parse_header(out, got, &h, &cc);
            if (hl <= 0 || !h.masked || h.len != n || (size_t)hl + n != got || h.opcode != GW_WS_OP_BINARY) {
                bad++;
            } else {
                gw_ws_mask(out + hl, n, h.mask, 0);
                bad += memcmp(out + hl, plain, n) != 0;
                same_key += memcmp(h.mask, inkey, 4) == 0;
            }
            bad += ws.msgs_out != 1 || ws.bytes_out != n;
            cases++;
            teardown();
        }
    is_int(bad, 0, "%d frames (writev and in place): whole, masked, unmask to the payload", cases);
    is_int(same_key, 0, "no frame reuses the input's key");
    setup(1, 1 << 20);
    memcpy(buf, plain, 50);
    gw_ws_mask(buf, 50, inkey, 0);
    is_int(gw_ws_send_masked(&ws, GW_WS_OP_BINARY, buf, 50, inkey), GW_OK, "server session send_masked");
    size_t got = drain_sink(out, sizeof out);
    ok(got == 52 && out[0] == 0x82 && out[1] == 50 && memcmp(out + 2, plain, 50) == 0,
       "a server session sends it unmasked");
    teardown();
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
    TEST_RUN(test_masked_delivery);
    TEST_RUN(test_send_masked);
    return test_done();
}

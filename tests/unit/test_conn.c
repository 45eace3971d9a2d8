/* Unit tests for net/conn: direct writes and queueing, corked batches,
 * deferred (until-sleep) writes, message packing (one send per pass), and the rule that a queue waiting for its
 * write event is drained only by that event. */
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/common.h"
#include "loop/loop.h"
#include "net/conn.h"
#include "test.h"
#include "ws/ws_frame.h"
#include "ws/ws_session.h"

static gw_loop *L;

static void noop_io(gw_io *io, uint32_t ev)
{
    GW_UNUSED(io);
    GW_UNUSED(ev);
}

static void pair(gw_conn *c, int *peer, int sndbuf)
{
    int sv[2];
    socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv);
    if (sndbuf) {
        setsockopt(sv[0], SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof sndbuf);
        setsockopt(sv[1], SOL_SOCKET, SO_RCVBUF, &sndbuf, sizeof sndbuf);
    }
    gw_conn_init(c, L, sv[0], noop_io);
    *peer = sv[1];
}

static size_t drain(int fd, size_t *reads)
{
    uint8_t buf[65536];
    size_t total = 0;
    *reads = 0;
    for (;;) {
        ssize_t r = read(fd, buf, sizeof buf);
        if (r <= 0)
            break;
        total += (size_t)r;
        (*reads)++;
    }
    return total;
}

static void stop_soon(gw_timer *t)
{
    GW_UNUSED(t);
    gw_loop_stop(L);
}

/* Runs one loop iteration (pending tasks included). */
static void spin(void)
{
    gw_timer t = {.cb = stop_soon};
    gw_timer_start(L, &t, 0);
    gw_loop_run(L);
}

static void test_direct_and_queue(void)
{
    gw_conn c;
    int peer;
    pair(&c, &peer, 0);
    is_int(gw_conn_write(&c, "hello", 5), GW_OK, "direct write");
    is_int(gw_conn_queued(&c), 0, "nothing queued when the socket took it");
    ok(c.out.data == NULL, "no buffer held after a complete write");
    size_t reads;
    is_int(drain(peer, &reads), 5, "peer got the bytes");
    gw_conn_close(&c);
    close(peer);
}

static void test_cork_batches(void)
{
    gw_conn c;
    int peer;
    pair(&c, &peer, 0);
    gw_conn_cork(&c);
    for (int i = 0; i < 10; i++)
        gw_conn_write(&c, "0123456789", 10);
    size_t reads;
    is_int(drain(peer, &reads), 0, "corked writes wait");
    is_int(gw_conn_uncork(&c), GW_OK, "uncork");
    is_int(drain(peer, &reads), 100, "all bytes after uncork");
    gw_conn_close(&c);
    close(peer);
}

static void test_deferred_until_sleep(void)
{
    gw_conn a, b;
    int pa, pb;
    pair(&a, &pa, 0);
    pair(&b, &pb, 0);
    gw_conn_cork_deferred(&a);
    gw_conn_cork_deferred(&b);
    for (int i = 0; i < 50; i++) {
        gw_conn_write(&a, "abcd", 4);
        gw_conn_write(&b, "wxyz", 4);
    }
    ok(gw_conn_queued(&a) == 200 && gw_conn_queued(&b) == 200, "deferred bytes wait in the queue (counted)");
    size_t reads;
    is_int(drain(pa, &reads), 0, "nothing sent before the loop sleeps");
    spin();
    is_int(drain(pa, &reads), 200, "a flushed before sleeping");
    is_int(drain(pb, &reads), 200, "b flushed before sleeping");
    is_int(gw_conn_queued(&a), 0, "queue empty after the flush");
    ok(!(a.flags & GW_CONN_F_DEFER), "deferral ends with the iteration");
    gw_conn_close(&a);
    gw_conn_close(&b);
    close(pa);
    close(pb);
}

static void test_waiting_queue_left_to_its_event(void)
{
    gw_conn c;
    int peer;
    pair(&c, &peer, 4096);
    /* Fill the socket so a remainder is queued with write interest on. */
    static uint8_t big[1 << 20];
    memset(big, 'x', sizeof big);
    gw_conn_write(&c, big, sizeof big);
    ok(gw_conn_queued(&c) > 0, "remainder queued");
    ok(c.io.events & GW_EV_WRITE, "write interest on while bytes wait");
    size_t before = gw_conn_queued(&c);
    /* The peer reads everything it can: the socket could take more now. */
    size_t reads;
    drain(peer, &reads);
    /* A deferred write and a large write must not drain the waiting queue
     * behind its event's back. */
    gw_conn_cork_deferred(&c);
    gw_conn_write(&c, big, 100000);
    /* Exactly the waiting bytes plus the new ones: not one byte went out
     * around the event (neither the large write nor the deferred flush). */
    is_int(gw_conn_queued(&c), before + 100000, "a large deferred write appends behind the waiting queue");
    spin();
    is_int(gw_conn_queued(&c), before + 100000, "queue waiting for its event is not drained around it");
    is_int(drain(peer, &reads), 0, "the peer received nothing before the event");
    ok(c.io.events & GW_EV_WRITE, "write interest still on: the event will drain and notify");
    /* The event path drains it. */
    for (int i = 0; i < 2000 && gw_conn_queued(&c); i++) {
        drain(peer, &reads);
        if (gw_conn_flush(&c) == GW_ERR)
            break;
    }
    drain(peer, &reads);
    is_int(gw_conn_queued(&c), 0, "flushing from the event drains it");
    ok(!(c.io.events & GW_EV_WRITE), "write interest off once drained");
    gw_conn_close(&c);
    close(peer);
}

static void test_error_is_sticky(void)
{
    gw_conn c;
    int peer;
    pair(&c, &peer, 0);
    close(peer);
    gw_conn_write(&c, "x", 1);
    int rc = gw_conn_write(&c, "y", 1);
    ok(rc == GW_ERR || (c.flags & GW_CONN_F_ERROR), "write to a closed peer fails");
    is_int(gw_conn_write(&c, "z", 1), GW_ERR, "and keeps failing");
    gw_conn_close(&c);
}

static uint32_t seen_ev;
static int seen_calls;

static void record_io(gw_io *io, uint32_t ev)
{
    GW_UNUSED(io);
    seen_ev |= ev;
    seen_calls++;
}

/* A connected TCP pair on loopback: *srv (nonblocking) and *cli. */
static void tcp_pair(int *srv, int *cli)
{
    int lis = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof a;
    bind(lis, (struct sockaddr *)&a, sizeof a);
    listen(lis, 1);
    getsockname(lis, (struct sockaddr *)&a, &al);
    *cli = socket(AF_INET, SOCK_STREAM, 0);
    connect(*cli, (struct sockaddr *)&a, sizeof a);
    *srv = accept(lis, NULL, NULL);
    fcntl(*srv, F_SETFL, O_NONBLOCK);
    close(lis);
}

/* Spins the loop until record_io ran or about 1 s passed. */
static void spin_until_event(void)
{
    for (int i = 0; i < 100 && !seen_calls; i++) {
        spin();
        if (!seen_calls)
            usleep(10000);
    }
}

/* Reads paused for backpressure: with GW_CONN_F_WATCH_HUP the socket stays
 * registered for errors and hang-ups only, so a peer's reset is reported
 * at once (GW_EV_ERROR) while its FIN (data may still wait unread) is not;
 * without the flag a paused connection is not watched at all. */
static void test_paused_watches_reset(void)
{
    int srv, cli;
    gw_conn c;
    tcp_pair(&srv, &cli);
    gw_conn_init(&c, L, srv, record_io);
    gw_conn_want_read(&c, 1);
    gw_conn_pause(&c, 1);
    is_int(c.io.events, 0, "paused without the flag: not watched");
    c.flags |= GW_CONN_F_WATCH_HUP;
    gw_conn_update(&c);
    is_int(c.io.events, GW_EV_ERROR, "paused with the flag: errors and hang-ups only");
    seen_ev = 0;
    seen_calls = 0;
    (void)!write(cli, "unread", 6);
    shutdown(cli, SHUT_WR);
    for (int i = 0; i < 5; i++) {
        spin();
        usleep(5000);
    }
    is_int(seen_calls, 0, "data and a FIN while paused wake nothing (no busy loop)");
    struct linger lg = {1, 0};
    setsockopt(cli, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    close(cli);
    spin_until_event();
    ok(seen_ev & GW_EV_ERROR, "the peer's reset is reported while paused (events 0x%x)", seen_ev);
    gw_conn_pause(&c, 0);
    is_int(c.io.events, GW_EV_READ, "resumed: read interest again");
    gw_conn_close(&c);
}

/* A transport that counts the sends it is asked for (each is one system
 * call of the plain transport) and passes them on. */
static int sends;

static ssize_t counting_write(gw_conn *c, const uint8_t *p, size_t n)
{
    sends++;
    return gw_transport_plain.write(c, p, n);
}

static ssize_t counting_writev(gw_conn *c, const struct iovec *iov, int n)
{
    sends++;
    return gw_transport_plain.writev(c, iov, n);
}

static gw_transport counting;

static void count_sends(gw_conn *c)
{
    counting = gw_transport_plain;
    counting.write = counting_write;
    counting.writev = counting_writev;
    c->tp = &counting;
    sends = 0;
}

/* Writes frame i (a server text frame "frame NN") through the connection's
 * sink, as the WebSocket engine does: header and payload as two pieces. */
static void send_numbered_frame(gw_conn *c, int i)
{
    char payload[16];
    int n = snprintf(payload, sizeof payload, "frame %02d", i % 100);
    uint8_t hdr[GW_WS_MAX_HEADER];
    size_t hl = gw_ws_frame_encode_header(hdr, 1, 0, GW_WS_OP_TEXT, (uint64_t)n, NULL);
    struct iovec iov[2] = {{hdr, hl}, {payload, (size_t)n}};
    gw_conn_sink.writev(c, iov, 2);
}

/* The peer's bytes are exactly frames 0..n-1, in order. */
static int frames_in_order(int fd, int n)
{
    uint8_t want[64 * 16], got[64 * 16 + 1];
    size_t wl = 0;
    for (int i = 0; i < n; i++) {
        char text[16];
        snprintf(text, sizeof text, "frame %02d", i % 100);
        want[wl] = 0x81;
        want[wl + 1] = 8;
        memcpy(want + wl + 2, text, 8);
        wl += 10;
    }
    ssize_t r = read(fd, got, sizeof got);
    return r == (ssize_t)wl && memcmp(got, want, wl) == 0;
}

/* Message packing: frames written during one pass of the loop leave in one
 * send, in order, both for a connection's own read batch (corked: pipelined
 * echoes) and for a peer written to meanwhile (deferred: a relay's other
 * leg, whatever number of its messages the pass produced). */
static void test_one_pass_one_send(void)
{
    enum { N = 48 };
    gw_conn c;
    int peer;
    size_t reads;
    pair(&c, &peer, 0);
    count_sends(&c);
    gw_conn_cork(&c);
    for (int i = 0; i < N; i++)
        send_numbered_frame(&c, i);
    is_int(sends, 0, "corked: no send while the batch runs");
    is_int(gw_conn_uncork(&c), GW_OK, "uncork");
    is_int(sends, 1, "corked: %d frames left in one send", N);
    ok(frames_in_order(peer, N), "corked: the peer got frames 0..%d in order", N - 1);
    gw_conn_close(&c);
    close(peer);

    gw_conn a, b;
    int pa, pb;
    pair(&a, &pa, 0);
    pair(&b, &pb, 0);
    count_sends(&a);
    b.tp = &counting;
    gw_conn_cork_deferred(&a);
    gw_conn_cork_deferred(&b);
    for (int i = 0; i < N; i++) {
        send_numbered_frame(&a, i);
        send_numbered_frame(&b, i);
    }
    is_int(sends, 0, "deferred: no send before the pass ends");
    spin();
    is_int(sends, 2, "deferred: %d frames on each of two connections left in one send each", N);
    ok(frames_in_order(pa, N), "deferred: a's peer got frames 0..%d in order", N - 1);
    ok(frames_in_order(pb, N), "deferred: b's peer got frames 0..%d in order", N - 1);
    is_int(drain(pa, &reads), 0, "nothing more for a");

    /* The next pass packs again (the deferral is per pass, not once). */
    sends = 0;
    gw_conn_cork_deferred(&a);
    for (int i = 0; i < 3; i++)
        send_numbered_frame(&a, i);
    spin();
    is_int(sends, 1, "deferred, next pass: 3 frames in one send");
    ok(frames_in_order(pa, 3), "deferred, next pass: in order");
    gw_conn_close(&a);
    gw_conn_close(&b);
    close(pa);
    close(pb);
}

/* A queue that drains gives its storage to the next queue that starts (a
 * relay queues every message on the other leg and flushes it at the end of
 * the pass: without this, each message cost a page's malloc and free), and
 * a drained connection still holds no storage (idle memory). */
static void test_drained_queue_storage_reused(void)
{
    gw_conn a, b;
    int pa, pb;
    size_t reads;
    pair(&a, &pa, 0);
    pair(&b, &pb, 0);
    gw_conn_cork_deferred(&a);
    gw_conn_write(&a, "0123456789", 10);
    uint8_t *block = a.out.data;
    ok(block != NULL, "a deferred write is queued in a block");
    spin();
    is_int(drain(pa, &reads), 10, "a's bytes went out at the end of the pass");
    ok(a.out.data == NULL && a.out.cap == 0, "the drained connection holds no storage");
    /* Whatever the allocator hands out next is not what b gets. */
    void *other = malloc(4096);
    gw_conn_cork_deferred(&b);
    gw_conn_write(&b, "abcdefghij", 10);
    ok(b.out.data == block && (void *)block != other, "the next queue reuses the drained block");
    free(other);
    spin();
    is_int(drain(pb, &reads), 10, "b's bytes went out");
    ok(b.out.data == NULL, "b holds no storage once drained");
    gw_conn_close(&a);
    gw_conn_close(&b);
    close(pa);
    close(pb);
}

/* A pass that defers more connections than the old 16-block cache held
 * (a relay at 100 connections defers up to one leg per event), and 4 KiB
 * frames (header + payload: more than a page): the next pass takes every
 * queue's storage from the blocks the last pass drained, none from the
 * allocator, and a 4 KiB frame sits in one block without growing. */
static void test_pass_reuses_all_blocks(void)
{
    enum { N = 40 };
    static gw_conn c[N];
    int peer[N];
    static uint8_t frame[8 + 4096];
    uint8_t *seen[N];
    void *decoy[2 * N] = {0};
    size_t reads;
    for (size_t i = 0; i < sizeof frame; i++)
        frame[i] = (uint8_t)i;
    for (int i = 0; i < N; i++)
        pair(&c[i], &peer[i], 0);
    int reused = 0, whole = 0, drained = 0, held = 0;
    for (int round = 0; round < 3; round++) {
        for (int i = 0; i < N; i++) {
            gw_conn_cork_deferred(&c[i]);
            /* Two writes, as a frame's header and payload iovecs would be. */
            gw_conn_write(&c[i], frame, 8);
            gw_conn_write(&c[i], frame + 8, 4096);
        }
        for (int i = 0; i < N; i++) {
            if (round > 0) {
                for (int j = 0; j < N; j++)
                    if (seen[j] == c[i].out.data) {
                        reused++;
                        seen[j] = NULL; /* each drained block serves one queue */
                        break;
                    }
            }
            whole += c[i].out.len == sizeof frame;
        }
        for (int i = 0; i < N; i++)
            seen[i] = c[i].out.data;
        for (int i = 0; i < 2 * N; i++)
            free(decoy[i]);
        spin();
        for (int i = 0; i < N; i++) {
            drained += drain(peer[i], &reads) == sizeof frame;
            held += c[i].out.data != NULL;
        }
        /* Whatever the allocator hands out next is not a drained block: a
         * queue that gets one got it from the cache. */
        for (int i = 0; i < N; i++) {
            decoy[i] = malloc(16 * 1024);
            decoy[N + i] = malloc(4096);
        }
    }
    for (int i = 0; i < 2 * N; i++)
        free(decoy[i]);
    is_int(whole, 3 * N, "every queue holds its whole frame");
    is_int(drained, 3 * N, "every peer got its frame each pass");
    is_int(reused, 2 * N, "passes 2 and 3: all %d queues took blocks the pass before drained", N);
    is_int(held, 0, "a drained connection holds no storage");
    for (int i = 0; i < N; i++) {
        gw_conn_close(&c[i]);
        close(peer[i]);
    }
}

/* Client frames built in place by the WebSocket engine (gw_conn_sink's
 * reserve/commit): in a deferred queue behind bytes already there, in the
 * cork stage, and sent directly (no stage: the writev path), every frame is
 * whole, in order, masked with its own key, and unmasks to the payload. */
static const gw_ws_handler no_handler;

static int frames_unmask_to(int fd, const uint8_t *pre, size_t npre, int nframes, const uint8_t *payload, size_t n,
                            uint8_t keys[][4])
{
    static uint8_t buf[1 << 16];
    size_t got = 0;
    for (int tries = 0; tries < 100; tries++) {
        ssize_t r = read(fd, buf + got, sizeof buf - got);
        if (r > 0)
            got += (size_t)r;
        else
            break;
    }
    if (got < npre || memcmp(buf, pre, npre) != 0)
        return 0;
    size_t off = npre;
    for (int f = 0; f < nframes; f++) {
        gw_ws_frame_hdr h;
        uint16_t cc;
        int hl = gw_ws_frame_parse_header(buf + off, got - off, &h, &cc);
        if (hl <= 0 || !h.masked || h.len != n || h.opcode != GW_WS_OP_BINARY || got - off - (size_t)hl < n)
            return 0;
        gw_ws_mask(buf + off + (size_t)hl, n, h.mask, 0);
        if (memcmp(buf + off + (size_t)hl, payload, n) != 0)
            return 0;
        memcpy(keys[f], h.mask, 4);
        off += (size_t)hl + n;
    }
    return off == got;
}

static void test_masked_frames_in_place(void)
{
    static uint8_t payload[3000];
    for (size_t i = 0; i < sizeof payload; i++)
        payload[i] = (uint8_t)(i * 13 + 1);
    static const size_t sizes[] = {0, 1, 5, 64, 125, 126, 3000};
    for (int mode = 0; mode < 3; mode++) {
        for (size_t s = 0; s < GW_ARRAY_LEN(sizes); s++) {
            gw_conn c;
            int peer;
            pair(&c, &peer, 0);
            gw_ws ws;
            gw_ws_init(&ws, &gw_conn_sink, &c, 0, &no_handler, NULL, 1 << 20);
            const char *pre = mode == 0 ? "queued-first" : "";
            if (mode == 0)
                gw_conn_cork_deferred(&c);
            else if (mode == 1)
                gw_conn_cork(&c);
            if (pre[0])
                gw_conn_write(&c, pre, strlen(pre));
            int rc = GW_OK;
            for (int f = 0; f < 3; f++)
                rc |= gw_ws_send(&ws, GW_WS_OP_BINARY, payload, sizes[s]);
            if (mode == 0)
                spin();
            else if (mode == 1)
                gw_conn_uncork(&c);
            uint8_t keys[3][4];
            ok(rc == GW_OK && frames_unmask_to(peer, (const uint8_t *)pre, strlen(pre), 3, payload, sizes[s], keys),
               "mode %d (%s), %zu B: 3 whole masked frames that unmask to the payload", mode,
               mode == 0 ? "deferred queue" : mode == 1 ? "cork stage" : "direct", sizes[s]);
            ok(memcmp(keys[0], keys[1], 4) != 0 || memcmp(keys[1], keys[2], 4) != 0,
               "mode %d, %zu B: a fresh key per frame", mode, sizes[s]);
            gw_ws_free(&ws);
            gw_conn_close(&c);
            close(peer);
        }
    }
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    L = gw_loop_new();
    TEST_RUN(test_direct_and_queue);
    TEST_RUN(test_cork_batches);
    TEST_RUN(test_deferred_until_sleep);
    TEST_RUN(test_waiting_queue_left_to_its_event);
    TEST_RUN(test_error_is_sticky);
    TEST_RUN(test_paused_watches_reset);
    TEST_RUN(test_one_pass_one_send);
    TEST_RUN(test_drained_queue_storage_reused);
    TEST_RUN(test_pass_reuses_all_blocks);
    TEST_RUN(test_masked_frames_in_place);
    gw_conn_thread_exit();
    gw_loop_free(L);
    return test_done();
}

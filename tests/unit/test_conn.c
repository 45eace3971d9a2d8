/* Unit tests for net/conn: direct writes and queueing, corked batches,
 * deferred (until-sleep) writes, and the rule that a queue waiting for its
 * write event is drained only by that event. */
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/common.h"
#include "loop/loop.h"
#include "net/conn.h"
#include "test.h"

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
    gw_conn_thread_exit();
    gw_loop_free(L);
    return test_done();
}

/* Unit tests for loop/: timers (order, re-arm, stop), fd watchers, pending
 * and deferred tasks, cross-thread posts; the last ones hold what a backend
 * must keep (loop_backend.h): level triggering, interest changes, no stale
 * event for a reused fd number, a closed socket really released, no busy
 * loop, and more ready watchers than one wait reports. */
#include <pthread.h>
#include <string.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "core/common.h"
#include "loop/loop.h"
#include "test.h"

static gw_loop *L;
static int order[16], norder;

typedef struct tmr {
    gw_timer t;
    int id;
} tmr;

static void on_tmr(gw_timer *t)
{
    tmr *x = gw_container_of(t, tmr, t);
    order[norder++] = x->id;
    if (x->id == 99)
        gw_loop_stop(L);
}

static void test_timers(void)
{
    L = gw_loop_new();
    tmr a = {.t.cb = on_tmr, .id = 3}, b = {.t.cb = on_tmr, .id = 1}, c = {.t.cb = on_tmr, .id = 2},
        d = {.t.cb = on_tmr, .id = 7}, stop = {.t.cb = on_tmr, .id = 99};
    norder = 0;
    gw_timer_start(L, &a.t, 30);
    gw_timer_start(L, &b.t, 10);
    gw_timer_start(L, &c.t, 20);
    gw_timer_start(L, &d.t, 15);
    gw_timer_stop(L, &d.t);
    ok(!gw_timer_active(&d.t), "stopped timer is inactive");
    gw_timer_start(L, &c.t, 5); /* re-arm earlier */
    gw_timer_start(L, &stop.t, 60);
    uint64_t t0 = gw_mono_ms();
    gw_loop_run(L);
    uint64_t el = gw_mono_ms() - t0;
    is_int(norder, 4, "four timers fired (stopped one did not)");
    is_int(order[0], 2, "re-armed timer first");
    is_int(order[1], 1, "then 10 ms");
    is_int(order[2], 3, "then 30 ms");
    is_int(order[3], 99, "stop last");
    /* Timers never fire early (5 ms of slack for the ms clock). The upper
     * bound only proves the loop woke for the 60 ms timer instead of some
     * long default poll timeout: 5 s is 80 times the wait, so a loaded
     * 2-core machine cannot reach it while a real oversleep would. */
    ok(el >= 55 && el < 5000, "loop slept until the last timer (%llu ms)", (unsigned long long)el);
    gw_loop_free(L);
}

static gw_io rd;
static char got[64];
static size_t ngot;

static void on_read(gw_io *io, uint32_t ev)
{
    ok(ev & GW_EV_READ, "read event reported");
    ssize_t r = read(io->fd, got + ngot, sizeof got - ngot);
    if (r > 0)
        ngot += (size_t)r;
    gw_io_stop(L, io);
    gw_loop_stop(L);
}

static void test_io(void)
{
    int sv[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    L = gw_loop_new();
    rd.fd = sv[0];
    rd.cb = on_read;
    is_int(gw_io_start(L, &rd, GW_EV_READ), GW_OK, "watch fd");
    is_int(write(sv[1], "ping", 4), 4, "write to peer");
    ngot = 0;
    gw_loop_run(L);
    is_mem(got, ngot, "ping", 4, "callback read the bytes");
    is_int(rd.events, 0, "stopped watcher has no interest");
    gw_loop_free(L);
    close(sv[0]);
    close(sv[1]);
}

/* A fake clock: the loop reads fake_now. */
static uint64_t fake_now;
static uint64_t fake_clock(void *arg)
{
    GW_UNUSED(arg);
    return fake_now;
}

static gw_timer deadline;
static int deadline_fired;
static uint64_t now_in_cb;

static void on_deadline(gw_timer *t)
{
    GW_UNUSED(t);
    deadline_fired++;
}

/* Like a server's accept callback: reads, then arms a 2 s deadline. */
static void on_read_arm(gw_io *io, uint32_t ev)
{
    GW_UNUSED(ev);
    char b[8];
    ok(read(io->fd, b, sizeof b) == 1, "callback read the byte");
    now_in_cb = gw_loop_now(L);
    gw_timer_start(L, &deadline, 2000);
    gw_io_stop(L, io);
    gw_loop_stop(L); /* the timers of this iteration still run */
}

/* Issue 8 item 10: after a long idle the loop's time must be refreshed
 * before I/O callbacks run, or a timer they arm starts from a stale time and
 * fires at once. */
static void test_clock_after_idle(void)
{
    int sv[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    fake_now = 1000;
    L = gw_loop_new();
    gw_loop_set_clock(L, fake_clock, NULL);
    is_int(gw_loop_now(L), 1000, "the loop reads the fake clock");
    rd.fd = sv[0];
    rd.cb = on_read_arm;
    rd.events = 0;
    deadline.cb = on_deadline;
    deadline_fired = 0;
    gw_io_start(L, &rd, GW_EV_READ);
    /* Ten idle seconds pass, then a byte arrives. */
    fake_now = 11000;
    is_int(write(sv[1], "x", 1), 1, "peer writes");
    gw_loop_run(L);
    is_int(now_in_cb, 11000, "the I/O callback sees the time after the wait");
    is_int(deadline_fired, 0, "a 2 s deadline armed in the callback did not fire at once");
    ok(gw_timer_active(&deadline), "the deadline is still armed");
    is_int(deadline.when, 13000, "it counts from the wakeup (11 s + 2 s)");
    /* It fires when its time comes, not before. */
    fake_now = 12999;
    tmr stop = {.t.cb = on_tmr, .id = 99};
    norder = 0;
    gw_timer_start(L, &stop.t, 0);
    gw_loop_run(L);
    is_int(deadline_fired, 0, "not fired 1 ms early");
    fake_now = 13000;
    gw_timer_start(L, &stop.t, 0);
    gw_loop_run(L);
    is_int(deadline_fired, 1, "fired at 13 s");
    gw_loop_free(L);
    close(sv[0]);
    close(sv[1]);
}

static gw_task t1, t2;
static void task_fn(gw_task *t)
{
    order[norder++] = t == &t1 ? 1 : 2;
    if (norder == 2)
        gw_loop_stop(L);
}

static void test_tasks(void)
{
    L = gw_loop_new();
    norder = 0;
    t1.fn = t2.fn = task_fn;
    gw_loop_pending(L, &t1);
    gw_loop_pending(L, &t1); /* queued once however often */
    gw_loop_defer(L, &t2);
    gw_timer keep = {.cb = NULL};
    GW_UNUSED(keep);
    gw_loop_run(L);
    is_int(norder, 2, "each task ran once");
    is_int(order[0], 2, "deferred runs right after the event batch");
    is_int(order[1], 1, "pending runs before sleeping");
    gw_loop_free(L);
}

static int posted_on_loop;
static pthread_t loop_thread;
static void posted(void *arg)
{
    posted_on_loop = pthread_equal(pthread_self(), loop_thread) ? *(int *)arg : -1;
    gw_loop_stop(L);
}

static void *poster(void *arg)
{
    usleep(20000);
    gw_loop_post(L, posted, arg);
    return NULL;
}

static void test_post(void)
{
    L = gw_loop_new();
    loop_thread = pthread_self();
    int v = 42;
    pthread_t th;
    pthread_create(&th, NULL, poster, &v);
    gw_loop_run(L);
    pthread_join(th, NULL);
    is_int(posted_on_loop, 42, "posted function ran on the loop's thread");
    gw_loop_free(L);
}

/* ====================== what every backend must keep ====================== */

static gw_timer rp_stop;
static void stop_loop(gw_timer *t)
{
    GW_UNUSED(t);
    gw_loop_stop(L);
}

static gw_io lv;
static int lv_calls;

/* Reads one byte per event: the rest must be reported again (level). */
static void on_level(gw_io *io, uint32_t ev)
{
    char b;
    ok(ev & GW_EV_READ, "read event");
    if (read(io->fd, &b, 1) == 1)
        lv_calls++;
    if (lv_calls == 5) {
        gw_io_stop(L, io);
        gw_loop_stop(L);
    }
}

static void test_level_triggered(void)
{
    int sv[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    L = gw_loop_new();
    lv = (gw_io){.fd = sv[0], .cb = on_level};
    lv_calls = 0;
    gw_io_start(L, &lv, GW_EV_READ);
    is_int(write(sv[1], "abcde", 5), 5, "five bytes");
    rp_stop.cb = stop_loop; /* a guard: the test fails instead of hanging */
    gw_timer_start(L, &rp_stop, 2000);
    gw_loop_run(L);
    gw_timer_stop(L, &rp_stop);
    is_int(lv_calls, 5, "one byte per event, five events: unread bytes are reported again");
    gw_loop_free(L);
    close(sv[0]);
    close(sv[1]);
}

static gw_io chg;
static gw_timer chg_timer;
static uint32_t chg_seen;

static void on_chg(gw_io *io, uint32_t ev)
{
    chg_seen |= ev;
    if (ev & GW_EV_WRITE) {
        gw_io_stop(L, io);
        gw_loop_stop(L);
    }
}

static void chg_add_write(gw_timer *t)
{
    GW_UNUSED(t);
    gw_io_update(L, &chg, GW_EV_READ | GW_EV_WRITE);
}

/* A watcher waiting to read (nothing comes) that starts wanting to write
 * hears that the socket is writable. */
static void test_interest_change(void)
{
    int sv[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    L = gw_loop_new();
    chg = (gw_io){.fd = sv[0], .cb = on_chg};
    chg_seen = 0;
    gw_io_start(L, &chg, GW_EV_READ);
    chg_timer.cb = chg_add_write;
    gw_timer_start(L, &chg_timer, 20);
    rp_stop.cb = stop_loop; /* a guard: the test fails instead of hanging */
    gw_timer_start(L, &rp_stop, 2000);
    gw_loop_run(L);
    gw_timer_stop(L, &rp_stop);
    ok(chg_seen & GW_EV_WRITE, "write readiness after the interest grew");
    ok(!(chg_seen & GW_EV_READ), "no read event: nothing was sent");
    gw_loop_free(L);
    close(sv[0]);
    close(sv[1]);
}

static gw_io ra, rb, rp;
static int rb_calls, ra_calls, reused_fd;
static int ra_pair[2], rb_pair[2];

static void on_ra(gw_io *io, uint32_t ev)
{
    GW_UNUSED(io);
    GW_UNUSED(ev);
    ra_calls++;
}

static void on_rb(gw_io *io, uint32_t ev)
{
    GW_UNUSED(io);
    GW_UNUSED(ev);
    rb_calls++;
}

/* Reported first in the batch: stops A, closes A's fd and watches a new
 * socket with nothing to read under the same fd number. A's event of this
 * batch must not reach the new watcher. */
static void on_rp(gw_io *io, uint32_t ev)
{
    GW_UNUSED(ev);
    char b[8];
    ok(read(io->fd, b, sizeof b) == 1, "P read its byte");
    gw_io_stop(L, io);
    gw_io_stop(L, &ra);
    int old = ra.fd;
    close(ra.fd);
    ra.fd = -1;
    socketpair(AF_UNIX, SOCK_STREAM, 0, rb_pair);
    if (rb_pair[0] != old) {
        /* Put the new socket at the old number. */
        dup2(rb_pair[0], old);
        close(rb_pair[0]);
        rb_pair[0] = old;
    }
    reused_fd = rb_pair[0];
    rb = (gw_io){.fd = rb_pair[0], .cb = on_rb};
    gw_io_start(L, &rb, GW_EV_READ);
    gw_timer_start(L, &rp_stop, 50);
}

static void test_no_stale_event_after_fd_reuse(void)
{
    int pp[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, pp);
    socketpair(AF_UNIX, SOCK_STREAM, 0, ra_pair);
    L = gw_loop_new();
    rp_stop.cb = stop_loop;
    ra_calls = rb_calls = 0;
    rp = (gw_io){.fd = pp[0], .cb = on_rp};
    ra = (gw_io){.fd = ra_pair[0], .cb = on_ra};
    is_int(write(pp[1], "p", 1), 1, "P readable");
    is_int(write(ra_pair[1], "a", 1), 1, "A readable");
    int a_fd = ra_pair[0];
    gw_io_start(L, &rp, GW_EV_READ); /* both ready at once: P first */
    gw_io_start(L, &ra, GW_EV_READ);
    gw_loop_run(L);
    is_int(reused_fd, a_fd, "the new socket has A's old fd number");
    is_int(ra_calls, 0, "A, stopped in the same batch, hears nothing");
    is_int(rb_calls, 0, "the new watcher on the reused number hears nothing: its socket is quiet");
    gw_io_stop(L, &rb);
    gw_loop_free(L);
    close(pp[0]);
    close(pp[1]);
    close(ra_pair[1]);
    close(rb_pair[0]);
    close(rb_pair[1]);
}

static gw_io cl;
static gw_timer cl_timer;

static void on_cl(gw_io *io, uint32_t ev)
{
    GW_UNUSED(io);
    GW_UNUSED(ev);
    ok(0, "no event: nothing was sent");
}

static void cl_close(gw_timer *t)
{
    GW_UNUSED(t);
    gw_io_stop(L, &cl);
    close(cl.fd);
    cl.fd = -1;
    gw_timer_start(L, &rp_stop, 30);
}

/* A socket watched for reading, stopped and closed from a timer, is
 * released while the loop runs on (a backend that holds a request on the
 * file must remove it): the peer reads end of stream. */
static void test_stopped_socket_is_released(void)
{
    int sv[2];
    socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
    L = gw_loop_new();
    rp_stop.cb = stop_loop;
    cl = (gw_io){.fd = sv[0], .cb = on_cl};
    cl_timer.cb = cl_close;
    gw_io_start(L, &cl, GW_EV_READ);
    gw_timer_start(L, &cl_timer, 20);
    gw_loop_run(L);
    char b[4];
    is_int(recv(sv[1], b, sizeof b, MSG_DONTWAIT), 0, "the peer reads end of stream");
    gw_loop_free(L);
    close(sv[1]);
}

/* A socket still watched when the loop stops (a worker ends) and closed
 * afterwards, from outside the loop: released at once (the peer reads end of
 * stream), not held by a request in the backend until the next wait that
 * never comes. */
static void test_closed_after_the_loop_stopped(void)
{
    int sv[2];
    socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv);
    L = gw_loop_new();
    gw_io w = {.fd = sv[0], .cb = on_cl};
    gw_io_start(L, &w, GW_EV_READ);
    rp_stop.cb = stop_loop;
    gw_timer_start(L, &rp_stop, 20);
    gw_loop_run(L);
    gw_io_stop(L, &w);
    close(sv[0]);
    char b[4];
    is_int(recv(sv[1], b, sizeof b, MSG_DONTWAIT), 0, "the peer reads end of stream");
    gw_loop_free(L);
    close(sv[1]);
}

static gw_io wo;
static int wo_read_events, wo_write_events;

static void on_wo(gw_io *io, uint32_t ev)
{
    if (ev & GW_EV_READ)
        wo_read_events++;
    if (ev & GW_EV_WRITE) {
        wo_write_events++;
        gw_io_stop(L, io);
        gw_loop_stop(L);
    }
}

static gw_timer wo_timer;
static int wo_peer;
static double wo_cpu_ms;

static double thread_cpu_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static void wo_drain_peer(gw_timer *t)
{
    GW_UNUSED(t);
    wo_cpu_ms = thread_cpu_ms() - wo_cpu_ms;
    char b[65536];
    while (read(wo_peer, b, sizeof b) > 0) {
    }
}

/* Waiting to write (the send buffer full) while the peer has shut its
 * side: no read event (none was asked for), no busy loop (the half-close
 * stays true), and the write event comes
 * once the peer reads. */
static void test_write_wait_after_peer_fin(void)
{
    int sv[2];
    socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv);
    char junk[4096];
    memset(junk, 'j', sizeof junk);
    while (write(sv[0], junk, sizeof junk) > 0) {
    }
    shutdown(sv[1], SHUT_WR);
    L = gw_loop_new();
    wo = (gw_io){.fd = sv[0], .cb = on_wo};
    wo_read_events = wo_write_events = 0;
    wo_peer = sv[1];
    gw_io_start(L, &wo, GW_EV_WRITE);
    wo_timer.cb = wo_drain_peer;
    gw_timer_start(L, &wo_timer, 200);
    rp_stop.cb = stop_loop;
    gw_timer_start(L, &rp_stop, 3000); /* a guard */
    wo_cpu_ms = thread_cpu_ms();
    gw_loop_run(L);
    gw_timer_stop(L, &rp_stop);
    is_int(wo_read_events, 0, "no read event: only writing was asked for");
    is_int(wo_write_events, 1, "the write event once the peer read");
    ok(wo_cpu_ms < 50, "no busy loop while waiting: %.1f ms of CPU in 200 ms", wo_cpu_ms);
    gw_loop_free(L);
    close(sv[0]);
    close(sv[1]);
}

#define NEOF 300
static gw_io eofs[NEOF];
static int eof_calls[NEOF], eof_done;

/* Hears the end of the stream and pauses the first time (the end stays
 * unread), stops the watcher the second. */
static void on_eof(gw_io *io, uint32_t ev)
{
    GW_UNUSED(ev);
    int i = (int)(io - eofs);
    char b[8];
    ssize_t r = read(io->fd, b, sizeof b);
    if (r != 0)
        return;
    if (++eof_calls[i] == 1) {
        gw_io_update(L, io, 0); /* paused */
        return;
    }
    gw_io_stop(L, io);
    if (++eof_done == NEOF)
        gw_loop_stop(L);
}

static gw_timer eof_timer;

static void eof_resume_all(gw_timer *t)
{
    GW_UNUSED(t);
    for (int i = 0; i < NEOF; i++)
        if (eof_calls[i] == 1)
            gw_io_update(L, &eofs[i], GW_EV_READ);
}

/* More paused connections with their end of stream unread than one
 * wait reports (epoll: 256 at a time), all resumed at once: every one is reported again,
 * none forgotten. */
static void test_more_reports_than_one_dispatch(void)
{
    L = gw_loop_new();
    eof_done = 0;
    for (int i = 0; i < NEOF; i++) {
        int sv[2];
        socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv);
        eofs[i] = (gw_io){.fd = sv[0], .cb = on_eof};
        eof_calls[i] = 0;
        close(sv[1]);
        gw_io_start(L, &eofs[i], GW_EV_READ);
    }
    eof_timer.cb = eof_resume_all;
    gw_timer_start(L, &eof_timer, 100);
    rp_stop.cb = stop_loop;
    gw_timer_start(L, &rp_stop, 3000); /* a guard */
    gw_loop_run(L);
    gw_timer_stop(L, &rp_stop);
    gw_timer_stop(L, &eof_timer);
    is_int(eof_done, NEOF, "every end of stream reported again after the resume");
    gw_loop_free(L);
    for (int i = 0; i < NEOF; i++)
        close(eofs[i].fd);
}

int main(void)
{
    TEST_RUN(test_timers);
    TEST_RUN(test_io);
    TEST_RUN(test_clock_after_idle);
    TEST_RUN(test_tasks);
    TEST_RUN(test_post);
    TEST_RUN(test_level_triggered);
    TEST_RUN(test_interest_change);
    TEST_RUN(test_no_stale_event_after_fd_reuse);
    TEST_RUN(test_stopped_socket_is_released);
    TEST_RUN(test_closed_after_the_loop_stopped);
    TEST_RUN(test_write_wait_after_peer_fin);
    TEST_RUN(test_more_reports_than_one_dispatch);
    return test_done();
}

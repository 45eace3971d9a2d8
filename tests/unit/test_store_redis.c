/* test_store_redis.c: the hiredis adapter (store/redis_ev.h) and the Redis
 * store (store/redis.h) against a real redis-server started here (a free
 * loopback port, a password, no persistence; killed by its PID): answers
 * come through the loop, never inline; tokens consume once, replays and
 * unknown tokens are told apart; cancel silences an answer; a frozen Redis
 * (SIGSTOP) answers GW_TOKEN_BACKEND_ERROR by the deadline and the store
 * reconnects by itself; a dead Redis answers the error at once. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <dirent.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "config/config.h"
#include "core/common.h"
#include "loop/loop.h"
#include "store/redis.h"
#include "store/redis_ev.h"
#include "store/store.h"
#include "test.h"

#define PW "unit-test-pw"

static gw_loop *L;
static pid_t redis_pid;
static int redis_port;
static char redis_dir[64];

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bind(fd, (struct sockaddr *)&a, sizeof a);
    socklen_t n = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &n);
    close(fd);
    return ntohs(a.sin_port);
}

static int redis_answers(void)
{
    struct timeval tv = {0, 200000};
    redisContext *c = redisConnectWithTimeout("127.0.0.1", redis_port, tv);
    int ok = 0;
    if (c && !c->err) {
        redisReply *r = redisCommand(c, "AUTH %s", PW);
        ok = r && r->type == REDIS_REPLY_STATUS;
        if (r)
            freeReplyObject(r);
    }
    redisFree(c);
    return ok;
}

static int redis_start(void)
{
    char port[16];
    snprintf(port, sizeof port, "%d", redis_port);
    redis_pid = fork();
    if (redis_pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* a crashed test leaves no redis-server behind */
        int fd = open("/dev/null", O_WRONLY);
        dup2(fd, 1);
        dup2(fd, 2);
        execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1", "--requirepass", PW, "--save",
               "", "--appendonly", "no", "--dir", redis_dir, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 200; i++) {
        if (redis_answers())
            return GW_OK;
        usleep(25000);
    }
    return GW_ERR;
}

static void redis_kill(void)
{
    if (redis_pid > 0) {
        kill(redis_pid, SIGCONT);
        kill(redis_pid, SIGKILL);
        waitpid(redis_pid, NULL, 0);
        redis_pid = 0;
    }
}

static void stop_timer(gw_timer *t)
{
    GW_UNUSED(t);
    gw_loop_stop(L);
}

/* Runs the loop until *flag or about ms milliseconds. */
static int *until_flag;
static void check_flag(gw_timer *t);
static gw_timer flag_timer = {.cb = check_flag};
static void check_flag(gw_timer *t)
{
    if (*until_flag)
        gw_loop_stop(L);
    else
        gw_timer_start(L, t, 5);
}

static void run_until(int *flag, uint64_t ms)
{
    gw_timer t = {.cb = stop_timer};
    gw_timer_start(L, &t, ms);
    until_flag = flag;
    gw_timer_start(L, &flag_timer, 0);
    gw_loop_run(L);
    gw_timer_stop(L, &t);
    if (gw_timer_active(&flag_timer))
        gw_timer_stop(L, &flag_timer);
}

/* ------------------------------------------------------------- the adapter */

static int pinged, disconnected;
static char pong[16];
static void on_ping(redisAsyncContext *ac, void *reply, void *priv)
{
    GW_UNUSED(ac);
    GW_UNUSED(priv);
    redisReply *r = reply;
    snprintf(pong, sizeof pong, "%s", r && r->str ? r->str : "(none)");
    pinged = 1;
}
static void on_disc(const redisAsyncContext *ac, int status)
{
    GW_UNUSED(ac);
    GW_UNUSED(status);
    disconnected = 1;
}

static void test_adapter(void)
{
    redisAsyncContext *ac = redisAsyncConnect("127.0.0.1", redis_port);
    ok(ac && !ac->err, "async connect started");
    gw_redis_ev ev = {0};
    is_int(gw_redis_ev_attach(&ev, L, ac), GW_OK, "attached to the loop");
    is_int(gw_redis_ev_attach(&ev, L, ac), GW_ERR, "a second attach is refused");
    redisAsyncSetDisconnectCallback(ac, on_disc);
    redisAsyncCommand(ac, NULL, NULL, "AUTH %s", PW);
    redisAsyncCommand(ac, on_ping, NULL, "PING");
    is_int(pinged, 0, "nothing answered inline");
    ok(ev.want & GW_EV_WRITE, "hiredis asked for write interest (connect, then the commands)");
    run_until(&pinged, 3000);
    is_str(pong, "PONG", "PING answered through the loop");
    ok(ev.want == GW_EV_READ, "after the writes: read interest only");
    redisAsyncDisconnect(ac);
    run_until(&disconnected, 3000);
    is_int(disconnected, 1, "disconnected");
    ok(ev.ac == NULL && ev.io.events == 0, "cleanup detached the context and stopped the watcher");
}

/* ---------------------------------------------------------------- the store */

static int nput, nconsumed, put_rc;
static gw_token_result res;
static char user[GW_TOKEN_ID_MAX + 1];
static void on_put(void *ud, int rc)
{
    GW_UNUSED(ud);
    put_rc = rc;
    nput++;
}
static void on_consume(void *ud, gw_token_result r, const gw_token_ctx *ctx)
{
    GW_UNUSED(ud);
    res = r;
    snprintf(user, sizeof user, "%s", ctx->user_id);
    nconsumed++;
}

static gw_store *store_new(uint64_t timeout_ms)
{
    gw_config cfg;
    memset(&cfg, 0, sizeof cfg);
    snprintf(cfg.redis_master_addr, sizeof cfg.redis_master_addr, "127.0.0.1:%d", redis_port);
    snprintf(cfg.redis_password, sizeof cfg.redis_password, "%s", PW);
    snprintf(cfg.redis_key_prefix, sizeof cfg.redis_key_prefix, "unit:");
    snprintf(cfg.session_events_stream, sizeof cfg.session_events_stream, "unit:sessions");
    cfg.store_timeout_ms = timeout_ms;
    char err[300];
    gw_store *s = gw_store_redis(&cfg, err, sizeof err);
    if (!s)
        printf("# %s\n", err);
    return s;
}

static void mint(gw_store *s, const char *alloc, const char *u, char *tok)
{
    gw_token_ctx c;
    memset(&c, 0, sizeof c);
    snprintf(c.allocation_id, sizeof c.allocation_id, "%s", alloc);
    snprintf(c.upstream, sizeof c.upstream, "ws://127.0.0.1:7681/");
    snprintf(c.user_id, sizeof c.user_id, "%s", u);
    nput = 0;
    gw_store_mint(s, L, &c, 60, tok, on_put, NULL);
    is_int(nput, 0, "mint not answered inline");
    run_until(&nput, 3000);
    ok(nput == 1 && put_rc == GW_OK, "minted");
}

static gw_token_result consume(gw_store *s, const char *tok, const char *alloc)
{
    nconsumed = 0;
    user[0] = '\0';
    gw_store_consume(s, L, tok, strlen(tok), alloc, on_consume, NULL);
    if (nconsumed)
        return (gw_token_result)-1; /* inline: a contract breach */
    run_until(&nconsumed, 5000);
    return nconsumed == 1 ? res : (gw_token_result)-2;
}

/* Runs the loop until the store's health is want (1 when it got there
 * within ms). */
static int wait_health(gw_store *s, int want, uint64_t ms)
{
    for (uint64_t waited = 0; waited < ms; waited += 20) {
        if (s->ops->healthy(s) == want)
            return 1;
        int never = 0;
        run_until(&never, 20);
    }
    return s->ops->healthy(s) == want;
}

static void test_tokens(void)
{
    gw_store *s = store_new(1000);
    ok(s != NULL, "store made (AUTH, SELECT, PING)");
    if (!s)
        return;
    is_str(s->ops->name, "redis", "name");
    char tok[GW_TOKEN_LEN + 1], tok2[GW_TOKEN_LEN + 1], tok3[GW_TOKEN_LEN + 1];
    mint(s, "a1", "alice", tok);
    is_int(consume(s, tok, "a1"), GW_TOKEN_OK, "consumed");
    is_str(user, "alice", "with its context");
    is_int(consume(s, tok, "a1"), GW_TOKEN_REPLAYED, "replay told apart");
    is_int(consume(s, "A" "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", "a1"), GW_TOKEN_UNKNOWN, "unknown");
    is_int(consume(s, "short", "a1"), GW_TOKEN_UNKNOWN, "not a token");
    mint(s, "a2", "bob", tok2);
    is_int(consume(s, tok2, "other"), GW_TOKEN_ALLOCATION_MISMATCH, "mismatch");
    is_str(user, "bob", "mismatch carries the context for the log");
    is_int(consume(s, tok2, "a2"), GW_TOKEN_REPLAYED, "a mismatch burns the token");
    /* Cancel: the answer never comes, the token stays consumed. */
    mint(s, "a3", "carol", tok3);
    nconsumed = 0;
    gw_store_op *op = gw_store_consume(s, L, tok3, strlen(tok3), "a3", on_consume, NULL);
    gw_store_cancel(s, op);
    int never = 0;
    run_until(&never, 300);
    is_int(nconsumed, 0, "a cancelled consume is never answered");
    is_int(consume(s, tok3, "a3"), GW_TOKEN_REPLAYED, "but it took effect (fail closed)");
    ok(s->ops->healthy(s), "healthy");
    /* Someone flushes the scripts: the call that meets NOSCRIPT is sent
     * again with EVAL on the same connection (review2 f5): it succeeds, the
     * connection never drops, the scripts are loaded again. */
    struct timeval tv = {1, 0};
    redisContext *rc = redisConnectWithTimeout("127.0.0.1", redis_port, tv);
    redisReply *r = redisCommand(rc, "AUTH %s", PW);
    freeReplyObject(r);
    r = redisCommand(rc, "SCRIPT FLUSH");
    ok(r && r->type == REDIS_REPLY_STATUS, "SCRIPT FLUSH");
    freeReplyObject(r);
    redisFree(rc);
    char tok4[GW_TOKEN_LEN + 1];
    nput = 0;
    gw_token_ctx c4;
    memset(&c4, 0, sizeof c4);
    snprintf(c4.allocation_id, sizeof c4.allocation_id, "a4");
    gw_store_mint(s, L, &c4, 60, tok4, on_put, NULL);
    run_until(&nput, 3000);
    ok(nput == 1 && put_rc == GW_OK, "the call that met NOSCRIPT succeeded (EVAL)");
    ok(s->ops->healthy(s), "healthy throughout: the connection was kept");
    rc = redisConnectWithTimeout("127.0.0.1", redis_port, tv);
    freeReplyObject(redisCommand(rc, "AUTH %s", PW));
    r = redisCommand(rc, "SCRIPT FLUSH");
    freeReplyObject(r);
    redisFree(rc);
    is_int(consume(s, tok4, "a4"), GW_TOKEN_OK, "a consume meeting NOSCRIPT succeeds too (EVAL)");
    is_int(consume(s, tok4, "a4"), GW_TOKEN_REPLAYED, "once");
    mint(s, "a5", "frank", tok4);
    is_int(consume(s, tok4, "a5"), GW_TOKEN_OK, "scripts loaded again: EVALSHA works");
    ok(s->ops->healthy(s), "still healthy");
    gw_store_free(s);
}

/* Until every thread of pid is stopped (state T in /proc), at most 2 s. */
static void wait_stopped(pid_t pid)
{
    char dir[64];
    snprintf(dir, sizeof dir, "/proc/%d/task", (int)pid);
    for (int tries = 0; tries < 200; tries++) {
        DIR *d = opendir(dir);
        int all = d != NULL;
        struct dirent *de;
        while (d && (de = readdir(d))) {
            if (de->d_name[0] == '.')
                continue;
            char path[400], buf[512];
            snprintf(path, sizeof path, "%s/%s/stat", dir, de->d_name);
            FILE *f = fopen(path, "r");
            if (!f || !fgets(buf, sizeof buf, f)) {
                if (f)
                    fclose(f);
                continue;
            }
            fclose(f);
            const char *p = strrchr(buf, ')');
            if (!p || p[1] != ' ' || p[2] != 'T')
                all = 0;
        }
        if (d)
            closedir(d);
        if (all)
            return;
        struct timespec ts = {0, 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

static void test_frozen_and_dead(void)
{
    gw_store *s = store_new(300);
    ok(s != NULL, "store made");
    if (!s)
        return;
    char tok[GW_TOKEN_LEN + 1];
    mint(s, "f1", "dave", tok);
    kill(redis_pid, SIGSTOP);
    /* kill() returns before the stop takes hold: a command Redis read in
     * that gap runs in time and only its reply is held back (the token is
     * then rightly used, and the retry "replayed"). Send once every thread
     * of Redis is stopped. */
    wait_stopped(redis_pid);
    uint64_t t0 = gw_mono_ms();
    is_int(consume(s, tok, "f1"), GW_TOKEN_BACKEND_ERROR, "a frozen Redis: the deadline answers the error");
    uint64_t took = gw_mono_ms() - t0;
    ok(took >= 250 && took < 2000, "by the deadline (%llu ms)", (unsigned long long)took);
    int unhealthy = wait_health(s, 0, 2000);
    ok(unhealthy, "unhealthy while frozen");
    kill(redis_pid, SIGCONT);
    int healthy = wait_health(s, 1, 6000);
    ok(healthy, "healthy again after SIGCONT, by itself");
    /* Redis runs the frozen consume when thawed. The script compares Redis'
     * TIME with the request's deadline to leave the token alone when late
     * (review2 f6), but a Redis stopped before the command arrived can
     * answer TIME from its clock cached before the freeze, so the late
     * consume may still use the token: the retry then gets "replayed"
     * (known gap, in the runbook). What must hold either way: the token is
     * used at most once. */
    gw_token_result r1 = consume(s, tok, "f1");
    ok(r1 == GW_TOKEN_OK || r1 == GW_TOKEN_REPLAYED, "the retry: used now or by the late consume (%d)", (int)r1);
    is_int(consume(s, tok, "f1"), GW_TOKEN_REPLAYED, "never twice");

    redis_kill();
    int down = wait_health(s, 0, 4000);
    ok(down, "a dead Redis is noticed without a request");
    t0 = gw_mono_ms();
    is_int(consume(s, tok, "f1"), GW_TOKEN_BACKEND_ERROR, "dead: the error");
    ok(gw_mono_ms() - t0 < 250, "at once, not by the deadline");
    ok(redis_start() == GW_OK, "Redis started again");
    int back = wait_health(s, 1, 6000);
    ok(back, "reconnected by itself");
    char tok2[GW_TOKEN_LEN + 1];
    mint(s, "f2", "erin", tok2);
    is_int(consume(s, tok2, "f2"), GW_TOKEN_OK, "whole again");
    gw_store_free(s);
}

/* Sessions on Redis: a publish is an XADD to the session-events stream;
 * the monitor's reader applies it (from the whole stream) to the view,
 * where a lookup by digest finds it. */
static int pubs, pub_rc, looked, look_found;
static char pub_id[64];
static void on_pub(void *ud, int rc, const char *id)
{
    GW_UNUSED(ud);
    pub_rc = rc;
    snprintf(pub_id, sizeof pub_id, "%s", id);
    pubs++;
}
static void on_look(void *ud, int found, const gw_session *s)
{
    GW_UNUSED(ud);
    GW_UNUSED(s);
    look_found = found;
    looked++;
}

static void test_sessions(void)
{
    gw_sessions_reset();
    gw_store *s = store_new(1000);
    ok(s != NULL, "store made");
    if (!s)
        return;
    gw_session snap;
    memset(&snap, 0, sizeof snap);
    snprintf(snap.device_session_id, sizeof snap.device_session_id, "rdev-1");
    snprintf(snap.user_id, sizeof snap.user_id, "uma");
    snap.status = GW_SESSION_REVOKED;
    snap.version = 4;
    gw_token_hash("rbearer", 7, snap.token_sha256);
    gw_store_session_publish(s, L, &snap, on_pub, NULL);
    is_int(pubs, 0, "publish not answered inline");
    run_until(&pubs, 3000);
    ok(pub_rc == GW_OK && strchr(pub_id, '-') != NULL, "XADD answered an entry id (%s)", pub_id);
    look_found = 0;
    for (int i = 0; i < 100 && !look_found; i++) {
        looked = 0;
        gw_store_session_lookup(s, L, snap.token_sha256, on_look, NULL);
        run_until(&looked, 1000);
        if (!look_found)
            usleep(20000); /* the monitor thread reads the stream */
    }
    ok(look_found, "the stream reader applied it: found by digest");
    gw_session v;
    ok(gw_sessions_get("rdev-1", &v) && v.version == 4 && v.status == GW_SESSION_REVOKED, "the view has v4 revoked");
    gw_store_free(s);
    gw_sessions_reset();
}

static void test_startup_refusals(void)
{
    gw_config cfg;
    memset(&cfg, 0, sizeof cfg);
    snprintf(cfg.redis_master_addr, sizeof cfg.redis_master_addr, "127.0.0.1:%d", free_port());
    cfg.store_timeout_ms = 500;
    char err[300];
    ok(gw_store_redis(&cfg, err, sizeof err) == NULL, "a dead address: no store");
    ok(strstr(err, "does not answer") != NULL, "why: %.200s", err);
    snprintf(cfg.redis_master_addr, sizeof cfg.redis_master_addr, "127.0.0.1:%d", redis_port);
    snprintf(cfg.redis_password, sizeof cfg.redis_password, "not-the-pw-42");
    ok(gw_store_redis(&cfg, err, sizeof err) == NULL, "a wrong password: no store");
    ok(strstr(err, "AUTH failed") != NULL && strstr(err, "not-the-pw-42") == NULL, "why, without the password: %.180s", err);
}

/* Reply bounds (review2 f2): an array above GW_REDIS_MAX_ELEMENTS is a
 * protocol error at its header, before hiredis allocates its elements;
 * shapes within the bounds parse as before. */
static void test_reply_bounds(void)
{
    redisReader *r = redisReaderCreate();
    gw_redis_limit lim;
    gw_redis_reader_limit(r, &lim);
    void *reply = NULL;
    static const char fine[] = "*2\r\n$3\r\nabc\r\n:7\r\n";
    redisReaderFeed(r, fine, sizeof fine - 1);
    ok(redisReaderGetReply(r, &reply) == REDIS_OK && reply, "a small array parses");
    redisReply *rr = reply;
    ok(rr && rr->type == REDIS_REPLY_ARRAY && rr->elements == 2 && rr->element[1]->integer == 7, "as before");
    if (reply)
        freeReplyObject(reply);
    ok(lim.refused == NULL, "nothing refused");
    static const char huge[] = "*2097152\r\n"; /* 2^21 elements: above the bound */
    reply = NULL;
    redisReaderFeed(r, huge, sizeof huge - 1);
    ok(redisReaderGetReply(r, &reply) == REDIS_ERR && !reply, "an array of 2^21 elements is an error at once");
    ok(lim.refused && strstr(lim.refused, "array of more than 1048576 elements"), "why: %s",
       lim.refused ? lim.refused : "(none)");
    redisReaderFree(r);
}

/* Whole-reply bounds (review3 F6): strings that are each within 64 MiB but
 * together pass it, or nested arrays whose elements together pass 2^20,
 * fail the reply; the totals start again with each reply. */
static void test_reply_totals(void)
{
    redisReader *r = redisReaderCreate();
    gw_redis_limit lim;
    gw_redis_reader_limit(r, &lim);
    size_t one = 24u << 20; /* 24 MiB: three of them pass 64 MiB */
    char *blob = malloc(one + 64);
    memset(blob, 'x', one + 64);
    char head[64];
    void *reply = NULL;
    /* two replies of two 24 MiB strings each: both fine (totals reset) */
    for (int k = 0; k < 2; k++) {
        redisReaderFeed(r, "*2\r\n", 4);
        for (int i = 0; i < 2; i++) {
            int hn = snprintf(head, sizeof head, "$%zu\r\n", one);
            redisReaderFeed(r, head, (size_t)hn);
            redisReaderFeed(r, blob, one);
            redisReaderFeed(r, "\r\n", 2);
        }
        reply = NULL;
        ok(redisReaderGetReply(r, &reply) == REDIS_OK && reply, "48 MiB in one reply: fine (reply %d)", k + 1);
        if (reply)
            freeReplyObject(reply);
    }
    ok(lim.refused == NULL, "nothing refused");
    /* one reply of three: refused at the third string */
    redisReaderFeed(r, "*3\r\n", 4);
    int refused = 0;
    for (int i = 0; i < 3 && !refused; i++) {
        int hn = snprintf(head, sizeof head, "$%zu\r\n", one);
        redisReaderFeed(r, head, (size_t)hn);
        redisReaderFeed(r, blob, one);
        redisReaderFeed(r, "\r\n", 2);
        reply = NULL;
        refused = redisReaderGetReply(r, &reply) == REDIS_ERR;
        if (reply)
            freeReplyObject(reply);
    }
    ok(refused, "72 MiB of strings in one reply is an error");
    ok(lim.refused && strstr(lim.refused, "more than 64 MiB of strings in one reply"), "why: %s",
       lim.refused ? lim.refused : "(none)");
    redisReaderFree(r);
    free(blob);
    /* nested arrays: 3 x 2^19 elements */
    r = redisReaderCreate();
    gw_redis_reader_limit(r, &lim);
    redisReaderFeed(r, "*3\r\n*524288\r\n", strlen("*3\r\n*524288\r\n"));
    reply = NULL;
    int rc = redisReaderGetReply(r, &reply);
    ok(rc == REDIS_OK && !reply, "2^19 elements so far: still reading");
    for (int i = 0; i < 524288; i++)
        redisReaderFeed(r, ":1\r\n", strlen(":1\r\n"));
    redisReaderFeed(r, "*524288\r\n", strlen("*524288\r\n"));
    rc = redisReaderGetReply(r, &reply);
    if (reply)
        freeReplyObject(reply);
    ok(rc == REDIS_ERR, "arrays totalling past 2^20 elements: an error");
    ok(lim.refused && strstr(lim.refused, "elements in one reply"), "why: %s", lim.refused ? lim.refused : "(none)");
    redisReaderFree(r);
}

/* Reconnect back-off has equal jitter: within [b/2, b], and spread. */
static void test_backoff_jitter(void)
{
    uint64_t lo = UINT64_MAX, hi = 0;
    int seen[1001] = {0}, distinct = 0;
    for (int i = 0; i < 2000; i++) {
        uint64_t d = gw_redis_backoff_delay(1000);
        lo = d < lo ? d : lo;
        hi = d > hi ? d : hi;
        if (d <= 1000 && !seen[d]++)
            distinct++;
    }
    ok(lo >= 500 && hi <= 1000, "within [500, 1000]: %llu..%llu", (unsigned long long)lo, (unsigned long long)hi);
    ok(distinct >= 200, "spread: %d distinct delays of 2000", distinct);
    ok(hi - lo >= 400, "over most of the range");
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    L = gw_loop_new();
    redis_port = free_port();
    snprintf(redis_dir, sizeof redis_dir, "/tmp/wsgate-unit-redis-XXXXXX");
    if (!mkdtemp(redis_dir) || redis_start() != GW_OK) {
        ok(0, "redis-server starts (installed by make deps)");
        redis_kill();
        return test_done();
    }
    TEST_RUN(test_reply_bounds);
    TEST_RUN(test_reply_totals);
    TEST_RUN(test_backoff_jitter);
    TEST_RUN(test_adapter);
    TEST_RUN(test_tokens);
    TEST_RUN(test_frozen_and_dead);
    TEST_RUN(test_sessions);
    TEST_RUN(test_startup_refusals);
    redis_kill();
    rmdir(redis_dir);
    gw_loop_free(L);
    return test_done();
}

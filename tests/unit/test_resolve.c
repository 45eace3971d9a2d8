/* test_resolve.c: upstream names resolved off the loop (net/resolve.c):
 * literals and unix paths at once, names through a resolver thread whose
 * answer comes through the loop (never inline), the cache, cancellation. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/un.h>

#include "core/common.h"
#include "loop/loop.h"
#include "net/resolve.h"
#include "test.h"

static gw_loop *L;

static void stop_timer(gw_timer *t)
{
    GW_UNUSED(t);
    gw_loop_stop(L);
}

/* Runs the loop until *flag is set or about ms milliseconds passed. */
static void run_until(const int *flag, uint64_t ms)
{
    uint64_t end = gw_mono_ms() + ms;
    while (!*flag && gw_mono_ms() < end) {
        gw_timer t = {.cb = stop_timer};
        gw_timer_start(L, &t, 10);
        gw_loop_run(L);
        if (gw_timer_active(&t))
            gw_timer_stop(L, &t);
    }
}

static gw_addr addr(const char *host, uint16_t port)
{
    gw_addr a;
    memset(&a, 0, sizeof a);
    a.set = 1;
    snprintf(a.host, sizeof a.host, "%s", host);
    a.port = port;
    return a;
}

static void test_literals(void)
{
    gw_resolved r;
    char err[160];
    gw_addr a = addr("10.1.2.3", 8080);
    is_int(gw_resolve_now(&a, &r, err, sizeof err), GW_OK, "IPv4 literal at once");
    const struct sockaddr_in *v4 = (const struct sockaddr_in *)&r.ss;
    is_int(v4->sin_family, AF_INET, "AF_INET");
    is_int(ntohs(v4->sin_port), 8080, "port applied");
    is_int((long long)r.len, (long long)sizeof *v4, "length");
    a = addr("::1", 443);
    is_int(gw_resolve_now(&a, &r, err, sizeof err), GW_OK, "IPv6 literal at once");
    is_int(((const struct sockaddr_in6 *)&r.ss)->sin6_port, htons(443), "v6 port");
    a = addr("", 7);
    is_int(gw_resolve_now(&a, &r, err, sizeof err), GW_OK, "empty host is 127.0.0.1");
    is_int(((const struct sockaddr_in *)&r.ss)->sin_addr.s_addr, htonl(0x7f000001), "loopback");
    gw_addr u;
    memset(&u, 0, sizeof u);
    u.set = u.is_unix = 1;
    snprintf(u.path, sizeof u.path, "/tmp/x.sock");
    is_int(gw_resolve_now(&u, &r, err, sizeof err), GW_OK, "unix path at once");
    is_str(((const struct sockaddr_un *)&r.ss)->sun_path, "/tmp/x.sock", "path");
    unsigned long before = gw_resolve_lookups();
    a = addr("10.9.9.9", 1);
    is_int(gw_resolve_now(&a, &r, err, sizeof err), GW_OK, "literal");
    is_int((long long)gw_resolve_lookups(), (long long)before, "literals never look up");
}

static int answered, answered_ok, inside;
static gw_resolved answer;

static void on_answer(void *ud, int ok, const gw_resolved *r, const char *err)
{
    GW_UNUSED(err);
    ok(!inside, "never answered inside gw_resolve_start");
    answered++;
    answered_ok = ok;
    if (ok)
        answer = *r;
    if (ud)
        (*(int *)ud)++;
}

static void test_name_through_the_loop_and_cached(void)
{
    gw_resolve_flush();
    gw_resolved r;
    char err[160];
    gw_addr a = addr("localhost", 9000);
    is_int(gw_resolve_now(&a, &r, err, sizeof err), GW_AGAIN, "a name is not answered at once");
    unsigned long before = gw_resolve_lookups();
    int done = 0;
    answered = 0;
    inside = 1;
    gw_resolve_req *q = gw_resolve_start(L, &a, on_answer, &done);
    inside = 0;
    ok(q != NULL, "a request");
    run_until(&done, 5000);
    is_int(answered, 1, "answered once");
    ok(answered_ok, "localhost resolves");
    uint16_t port = answer.ss.ss_family == AF_INET ? ((const struct sockaddr_in *)&answer.ss)->sin_port
                                                    : ((const struct sockaddr_in6 *)&answer.ss)->sin6_port;
    is_int(ntohs(port), 9000, "the asker's port");
    is_int((long long)gw_resolve_lookups(), (long long)before + 1, "one lookup");
    a.port = 9001;
    is_int(gw_resolve_now(&a, &r, err, sizeof err), GW_OK, "cached now");
    is_int((long long)gw_resolve_lookups(), (long long)before + 1, "no new lookup");
    /* asking again through start: still answered through the loop */
    done = 0;
    inside = 1;
    gw_resolve_start(L, &a, on_answer, &done);
    inside = 0;
    is_int(done, 0, "not inline even when cached");
    run_until(&done, 5000);
    is_int(done, 1, "answered from the cache");
    is_int((long long)gw_resolve_lookups(), (long long)before + 1, "still one lookup");
    /* a literal through start: also through the loop */
    gw_addr lit = addr("127.0.0.1", 1);
    done = 0;
    inside = 1;
    gw_resolve_start(L, &lit, on_answer, &done);
    inside = 0;
    run_until(&done, 5000);
    is_int(done, 1, "literal answered through the loop");
}

static void test_cancel(void)
{
    gw_resolve_flush();
    gw_addr a = addr("localhost", 1);
    int done = 0, other = 0;
    answered = 0;
    gw_resolve_req *q = gw_resolve_start(L, &a, on_answer, &done);
    gw_resolve_start(L, &a, on_answer, &other); /* shares the lookup */
    gw_resolve_cancel(q);
    run_until(&other, 5000);
    is_int(other, 1, "the other asker is answered");
    int spare = 0;
    run_until(&spare, 100);
    is_int(done, 0, "a cancelled request is never answered");
    is_int(answered, 1, "one answer in all");
}

int main(void)
{
    L = gw_loop_new();
    TEST_RUN(test_literals);
    TEST_RUN(test_name_through_the_loop_and_cached);
    TEST_RUN(test_cancel);
    gw_loop_free(L);
    return test_done();
}

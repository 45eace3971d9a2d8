/* test_metrics.c: the Prometheus registry: exact exposition text, pointer
 * stability, concurrent updates, registration errors. */
#include "metrics/metrics.h"

#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/buf.h"
#include "core/common.h"
#include "test.h"

/* Renders the registry into a NUL-terminated static string. */
static const char *render(void)
{
    static char out[1 << 16];
    gw_buf b = {0};
    int rc = gw_metrics_render(&b);
    ok(rc == GW_OK, "render ok");
    size_t n = b.len < sizeof out - 1 ? b.len : sizeof out - 1;
    if (n)
        memcpy(out, gw_buf_head(&b), n);
    out[n] = '\0';
    gw_buf_release(&b);
    return out;
}

static void test_counter(void)
{
    gw_metrics_reset();
    gw_metric *c = gw_metric_get("wsgate_things_total", GW_METRIC_COUNTER, "Things seen.", NULL);
    gw_counter_inc(c);
    gw_counter_add(c, 41);
    is_int(gw_metric_value(c), 42, "value");
    is_str(render(),
           "# HELP wsgate_things_total Things seen.\n# TYPE wsgate_things_total counter\n"
           "wsgate_things_total 42\n",
           "counter without labels");
    ok(gw_metric_get("wsgate_things_total", GW_METRIC_COUNTER, "ignored", "") == c, "\"\" labels == NULL labels");
    gw_counter_add(c, UINT64_MAX - 42);
    ok(strstr(render(), "wsgate_things_total 18446744073709551615\n") != NULL, "full uint64 range rendered");
}

static void test_labels(void)
{
    gw_metrics_reset();
    const char *help = "Closes by cause.";
    gw_metric *a =
        gw_metric_get("wsgate_ws_closes_total", GW_METRIC_COUNTER, help, "route=\"/probe/ws\",cause=\"graceful\"");
    gw_metric *b =
        gw_metric_get("wsgate_ws_closes_total", GW_METRIC_COUNTER, help, "route=\"/probe/ws\",cause=\"overflow\"");
    gw_metric *a2 = gw_metric_get("wsgate_ws_closes_total", GW_METRIC_COUNTER, "other help",
                                  "route=\"/probe/ws\",cause=\"graceful\"");
    ok(a == a2, "same name + labels -> same pointer");
    ok(a != b, "different labels -> different series");
    gw_metric *g = gw_metric_get("ws_connections", GW_METRIC_GAUGE, "Open WebSocket connections.", NULL);
    gw_counter_add(a, 2);
    gw_counter_inc(b);
    gw_gauge_add(g, 5);
    gw_gauge_add(g, -7);
    is_int(gw_metric_value(g), -2, "gauge value");
    is_str(render(),
           "# HELP wsgate_ws_closes_total Closes by cause.\n"
           "# TYPE wsgate_ws_closes_total counter\n"
           "wsgate_ws_closes_total{route=\"/probe/ws\",cause=\"graceful\"} 2\n"
           "wsgate_ws_closes_total{route=\"/probe/ws\",cause=\"overflow\"} 1\n"
           "# HELP ws_connections Open WebSocket connections.\n"
           "# TYPE ws_connections gauge\n"
           "ws_connections -2\n",
           "families and series in registration order");
    gw_gauge_set(g, 7);
    is_int(gw_metric_value(g), 7, "gauge set");
    /* A series created later in an earlier family renders with its family. */
    gw_metric *c = gw_metric_get("wsgate_ws_closes_total", GW_METRIC_COUNTER, help, "route=\"/x\",cause=\"shutdown\"");
    gw_counter_inc(c);
    const char *out = render();
    const char *pc = strstr(out, "cause=\"shutdown\"} 1\n"), *pg = strstr(out, "# HELP ws_connections");
    ok(pc && pg && pc < pg, "late series grouped under its family");
    /* Pointers stay valid and distinct across many registrations. */
    gw_metric *ptrs[200];
    char lab[64];
    for (int i = 0; i < 200; i++) {
        snprintf(lab, sizeof lab, "n=\"%d\"", i);
        ptrs[i] = gw_metric_get("wsgate_many", GW_METRIC_GAUGE, "Many.", lab);
        gw_gauge_set(ptrs[i], i);
    }
    int stable = 1;
    for (int i = 0; i < 200; i++) {
        snprintf(lab, sizeof lab, "n=\"%d\"", i);
        stable &= gw_metric_get("wsgate_many", GW_METRIC_GAUGE, "Many.", lab) == ptrs[i];
        stable &= gw_metric_value(ptrs[i]) == i;
    }
    ok(stable, "200 series keep their pointers and values");
    is_int(gw_metric_value(a), 2, "first series untouched");
}

static void test_histogram(void)
{
    gw_metrics_reset();
    static const double bounds[] = {0.25, 1, 2.5};
    gw_metric *h = gw_histogram_get("wsgate_handshake_seconds", "Handshake time.", NULL, bounds, 3);
    gw_metric *hl = gw_histogram_get("wsgate_handshake_seconds", "Handshake time.", "route=\"/a\"", NULL, 0);
    gw_histogram_observe(h, 0.125);
    gw_histogram_observe(h, 0.25); /* upper bound is inclusive */
    gw_histogram_observe(h, 0.5);
    gw_histogram_observe(h, 2);
    gw_histogram_observe(h, 4);
    gw_histogram_observe(hl, 1);
    is_int(gw_metric_value(h), 5, "histogram value is its count");
    is_str(render(),
           "# HELP wsgate_handshake_seconds Handshake time.\n"
           "# TYPE wsgate_handshake_seconds histogram\n"
           "wsgate_handshake_seconds_bucket{le=\"0.25\"} 2\n"
           "wsgate_handshake_seconds_bucket{le=\"1\"} 3\n"
           "wsgate_handshake_seconds_bucket{le=\"2.5\"} 4\n"
           "wsgate_handshake_seconds_bucket{le=\"+Inf\"} 5\n"
           "wsgate_handshake_seconds_sum 6.875\n"
           "wsgate_handshake_seconds_count 5\n"
           "wsgate_handshake_seconds_bucket{route=\"/a\",le=\"0.25\"} 0\n"
           "wsgate_handshake_seconds_bucket{route=\"/a\",le=\"1\"} 1\n"
           "wsgate_handshake_seconds_bucket{route=\"/a\",le=\"2.5\"} 1\n"
           "wsgate_handshake_seconds_bucket{route=\"/a\",le=\"+Inf\"} 1\n"
           "wsgate_handshake_seconds_sum{route=\"/a\"} 1\n"
           "wsgate_handshake_seconds_count{route=\"/a\"} 1\n",
           "histogram exposition, second series uses the family's buckets");

    gw_metrics_reset();
    static const double odd[] = {0.00001, 0.005, 0.1, 10, 1e21};
    gw_metric *o = gw_histogram_get("wsgate_odd", "Odd bounds.", NULL, odd, 5);
    gw_histogram_observe(o, 0.1);
    const char *out = render();
    ok(strstr(out, "le=\"1e-05\"} 0\n") && strstr(out, "le=\"0.005\"} 0\n") && strstr(out, "le=\"0.1\"} 1\n") &&
           strstr(out, "le=\"10\"} 1\n") && strstr(out, "le=\"1e+21\"} 1\n") && strstr(out, "wsgate_odd_sum 0.1\n"),
       "minimal le formatting");

    gw_metrics_reset();
    gw_metric *d = gw_metric_get("wsgate_default_seconds", GW_METRIC_HISTOGRAM, "Default buckets.", NULL);
    gw_histogram_observe(d, 0.3);
    out = render();
    ok(strstr(out, "le=\"0.005\"} 0\n") && strstr(out, "le=\"0.25\"} 0\n") && strstr(out, "le=\"0.5\"} 1\n") &&
           strstr(out, "le=\"10\"} 1\n") && strstr(out, "le=\"+Inf\"} 1\n") &&
           strstr(out, "wsgate_default_seconds_sum 0.3\n"),
       "gw_metric_get histogram uses default buckets");
}

static void test_help_escape(void)
{
    gw_metrics_reset();
    gw_metric *c = gw_metric_get("wsgate_h", GW_METRIC_COUNTER, "back\\slash\nnew \"line\"", NULL);
    GW_UNUSED(c);
    is_str(render(), "# HELP wsgate_h back\\\\slash\\nnew \"line\"\n# TYPE wsgate_h counter\nwsgate_h 0\n",
           "HELP escapes backslash and newline only");
    gw_metrics_reset();
    gw_metric_get("wsgate_e", GW_METRIC_GAUGE, "", NULL);
    is_str(render(), "# HELP wsgate_e \n# TYPE wsgate_e gauge\nwsgate_e 0\n", "empty help");
    gw_metrics_reset();
    is_str(render(), "", "empty registry renders nothing");
}

static void test_label_escape(void)
{
    char out[64];
    gw_metrics_label_escape("plain", out, sizeof out);
    is_str(out, "plain", "plain");
    gw_metrics_label_escape("a\\b\"c\nd", out, sizeof out);
    is_str(out, "a\\\\b\\\"c\\nd", "escapes backslash, quote, newline");
    gw_metrics_label_escape("", out, sizeof out);
    is_str(out, "", "empty");
    gw_metrics_label_escape("abcdef", out, 4);
    is_str(out, "abc", "truncated to cap-1");
    gw_metrics_label_escape("ab\"", out, 4);
    is_str(out, "ab", "never splits an escape");
    gw_metrics_label_escape("ab\"", out, 5);
    is_str(out, "ab\\\"", "escape fits exactly");
    out[0] = 'x';
    gw_metrics_label_escape("abc", out, 1);
    is_str(out, "", "cap 1 gives empty string");
    /* A label built with it renders verbatim. */
    gw_metrics_reset();
    char lab[128], val[64];
    gw_metrics_label_escape("/ws/\"x\"", val, sizeof val);
    snprintf(lab, sizeof lab, "route=\"%s\"", val);
    gw_counter_inc(gw_metric_get("wsgate_r_total", GW_METRIC_COUNTER, "R.", lab));
    ok(strstr(render(), "wsgate_r_total{route=\"/ws/\\\"x\\\"\"} 1\n") != NULL, "escaped label in output");
}

/* ------------------------------------------------------------------ */

#define NTHREADS 4
#define NINCR 100000

static gw_metric *shared_counter, *shared_gauge, *shared_hist;
static gw_metric *got_ptr[NTHREADS];

static void *hammer(void *arg)
{
    int id = (int)(intptr_t)arg;
    got_ptr[id] = gw_metric_get("wsgate_race_total", GW_METRIC_COUNTER, "Race.", "k=\"v\"");
    for (int i = 0; i < NINCR; i++) {
        gw_counter_inc(shared_counter);
        gw_gauge_add(shared_gauge, (i & 1) ? -1 : 2);
        if (i % 4 == 0)
            gw_histogram_observe(shared_hist, 0.5);
    }
    return NULL;
}

static void test_concurrency(void)
{
    gw_metrics_reset();
    shared_counter = gw_metric_get("wsgate_conc_total", GW_METRIC_COUNTER, "Conc.", NULL);
    shared_gauge = gw_metric_get("wsgate_conc_gauge", GW_METRIC_GAUGE, "Conc.", NULL);
    static const double b[] = {1};
    shared_hist = gw_histogram_get("wsgate_conc_seconds", "Conc.", NULL, b, 1);
    pthread_t t[NTHREADS];
    for (int i = 0; i < NTHREADS; i++)
        pthread_create(&t[i], NULL, hammer, (void *)(intptr_t)i);
    for (int i = 0; i < NTHREADS; i++)
        pthread_join(t[i], NULL);
    is_int(gw_metric_value(shared_counter), NTHREADS * NINCR, "4 x 100000 increments");
    is_int(gw_metric_value(shared_gauge), NTHREADS * (NINCR / 2), "gauge adds");
    is_int(gw_metric_value(shared_hist), NTHREADS * NINCR / 4, "histogram count");
    ok(strstr(render(), "wsgate_conc_seconds_sum 50000\n") != NULL, "histogram sum exact under contention");
    int same = 1;
    for (int i = 1; i < NTHREADS; i++)
        same &= got_ptr[i] == got_ptr[0];
    ok(same && got_ptr[0], "concurrent get of one series returns one pointer");
}

/* Runs fn in a child; returns its stderr and whether it died of SIGABRT. */
static int child_aborts(void (*fn)(void), char *err, size_t cap)
{
    int fds[2];
    if (pipe(fds) != 0)
        return 0;
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        fn();
        _exit(0);
    }
    close(fds[1]);
    size_t n = 0;
    ssize_t r;
    while (n < cap - 1 && (r = read(fds[0], err + n, cap - 1 - n)) > 0)
        n += (size_t)r;
    err[n] = '\0';
    err[strcspn(err, "\n")] = '\0'; /* first line only: keeps the TAP output whole */
    close(fds[0]);
    int st = 0;
    waitpid(pid, &st, 0);
    return WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT;
}

static void type_clash(void)
{
    gw_metric_get("wsgate_clash", GW_METRIC_COUNTER, "C.", NULL);
    gw_metric_get("wsgate_clash", GW_METRIC_GAUGE, "C.", NULL);
}

static void bad_name(void)
{
    gw_metric_get("9bad name", GW_METRIC_COUNTER, "C.", NULL);
}

static void bad_buckets(void)
{
    static const double b[] = {1, 0.5};
    gw_histogram_get("wsgate_bad_buckets", "B.", NULL, b, 2);
}

static void test_programming_errors(void)
{
    char err[1024];
    gw_metrics_reset();
    ok(child_aborts(type_clash, err, sizeof err), "type clash aborts");
    ok(strstr(err, "wsgate_clash registered as counter, then as gauge") != NULL, "clear message: %.150s", err);
    ok(child_aborts(bad_name, err, sizeof err), "invalid name aborts");
    ok(strstr(err, "invalid metric name \"9bad name\"") != NULL, "clear message: %.150s", err);
    ok(child_aborts(bad_buckets, err, sizeof err), "descending buckets abort");
    ok(strstr(err, "strictly ascending") != NULL, "clear message: %.150s", err);
}

int main(void)
{
    TEST_RUN(test_counter);
    TEST_RUN(test_labels);
    TEST_RUN(test_histogram);
    TEST_RUN(test_help_escape);
    TEST_RUN(test_label_escape);
    TEST_RUN(test_concurrency);
    TEST_RUN(test_programming_errors);
    gw_metrics_reset();
    return test_done();
}

/* test_log.c: the structured logger, captured through a pipe. */
#include "log/log.h"

#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include "core/common.h"
#include "test.h"

static int cap_rd = -1, cap_wr = -1;
static char cap_buf[1 << 20];

static void cap_open(gw_log_format fmt, gw_log_level level)
{
    int fds[2];
    if (cap_rd >= 0) {
        close(cap_rd);
        close(cap_wr);
    }
    if (pipe(fds) != 0) {
        perror("pipe");
        exit(2);
    }
    cap_rd = fds[0];
    cap_wr = fds[1];
    fcntl(cap_rd, F_SETFL, O_NONBLOCK);
    gw_log_init(fmt, level, "wsgate", cap_wr);
}

/* Everything written so far, NUL-terminated. */
static const char *cap_read(size_t *len)
{
    size_t n = 0;
    for (;;) {
        ssize_t r = read(cap_rd, cap_buf + n, sizeof cap_buf - 1 - n);
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    cap_buf[n] = '\0';
    if (len)
        *len = n;
    return cap_buf;
}

/* Checks that line (one line, with its newline) is a JSON object whose keys
 * are exactly keys[] in that order; returns the parsed object (caller
 * decrefs) or NULL. */
static json_t *check_json_keys(const char *line, const char *const *keys, size_t nkeys)
{
    json_error_t e;
    json_t *j = json_loads(line, 0, &e);
    ok(j && json_is_object(j), "line parses as a JSON object (%s)", j ? "ok" : e.text);
    if (!j)
        return NULL;
    size_t i = 0;
    int order_ok = 1;
    for (void *it = json_object_iter(j); it; it = json_object_iter_next(j, it), i++) {
        if (i >= nkeys || strcmp(json_object_iter_key(it), keys[i]) != 0)
            order_ok = 0;
    }
    ok(order_ok && i == nkeys, "keys in order (%zu keys)", i);
    return j;
}

static const char *jstr(json_t *j, const char *k)
{
    json_t *v = json_object_get(j, k);
    return v && json_is_string(v) ? json_string_value(v) : NULL;
}

static void test_json_fields(void)
{
    cap_open(GW_LOG_FORMAT_JSON, GW_LOG_DEBUG);
    time_t before = time(NULL);
    gw_log_line *l = gw_log_begin(GW_LOG_INFO, "ws close", "corr-1");
    ok(l != NULL, "begin returns a line");
    gw_log_str(l, "user", "alice", 0);
    gw_log_str(l, "route", "/probe/ws", GW_LOG_JSON_ONLY);
    gw_log_int(l, "dur_ms", 12, 0);
    gw_log_int(l, "neg", INT64_MIN, 0);
    gw_log_bool(l, "tls", 1, 0);
    gw_log_bool(l, "resumed", 0, 0);
    gw_log_str(l, "nothing", NULL, 0);
    gw_log_strn(l, "part", "abcdef", 3, 0);
    gw_log_end(l);
    size_t n;
    const char *out = cap_read(&n);
    ok(n > 0 && out[n - 1] == '\n' && strchr(out, '\n') == out + n - 1, "exactly one line");
    static const char *const keys[] = {"ts",     "level", "service", "msg",     "correlation_id", "user", "route",
                                       "dur_ms", "neg",   "tls",     "resumed", "nothing",        "part"};
    json_t *j = check_json_keys(out, keys, GW_ARRAY_LEN(keys));
    if (!j)
        return;
    is_str(jstr(j, "level"), "info", "level");
    is_str(jstr(j, "service"), "wsgate", "service");
    is_str(jstr(j, "msg"), "ws close", "msg");
    is_str(jstr(j, "correlation_id"), "corr-1", "correlation_id");
    is_str(jstr(j, "user"), "alice", "user");
    is_str(jstr(j, "route"), "/probe/ws", "JSON_ONLY field present in JSON");
    is_int(json_integer_value(json_object_get(j, "dur_ms")), 12, "dur_ms is an integer");
    ok(json_integer_value(json_object_get(j, "neg")) == INT64_MIN, "INT64_MIN round-trips");
    ok(json_is_true(json_object_get(j, "tls")), "true");
    ok(json_is_false(json_object_get(j, "resumed")), "false");
    ok(json_is_null(json_object_get(j, "nothing")), "NULL string is null");
    is_str(jstr(j, "part"), "abc", "strn takes n bytes");
    const char *ts = jstr(j, "ts");
    ok(ts && strlen(ts) == 24 && ts[4] == '-' && ts[7] == '-' && ts[10] == 'T' && ts[13] == ':' && ts[16] == ':' &&
           ts[19] == '.' && ts[23] == 'Z',
       "ts is RFC 3339 with milliseconds: %s", ts ? ts : "(null)");
    if (ts) {
        struct tm tm = {0};
        const char *end = strptime(ts, "%Y-%m-%dT%H:%M:%S", &tm);
        time_t t = timegm(&tm);
        ok(end && *end == '.' && t >= before - 1 && t <= time(NULL) + 1, "ts is now, in UTC");
    }
    ok(strncmp(out, "{\"ts\":\"", 7) == 0, "raw line starts with ts");
    json_decref(j);
}

static void test_correlation_omitted(void)
{
    static const char *const keys[] = {"ts", "level", "service", "msg", "k"};
    cap_open(GW_LOG_FORMAT_JSON, GW_LOG_DEBUG);
    gw_log_line *l = gw_log_begin(GW_LOG_WARN, "m", NULL);
    gw_log_int(l, "k", 1, 0);
    gw_log_end(l);
    json_t *j = check_json_keys(cap_read(NULL), keys, GW_ARRAY_LEN(keys));
    if (j)
        is_str(jstr(j, "level"), "warn", "warn level name");
    json_decref(j);
    l = gw_log_begin(GW_LOG_ERROR, "m", "");
    gw_log_int(l, "k", 1, 0);
    gw_log_end(l);
    j = check_json_keys(cap_read(NULL), keys, GW_ARRAY_LEN(keys));
    if (j)
        is_str(jstr(j, "level"), "error", "error level name");
    json_decref(j);
    l = gw_log_begin(GW_LOG_DEBUG, "m", NULL);
    gw_log_end(l);
    j = check_json_keys(cap_read(NULL), keys, 4);
    if (j)
        is_str(jstr(j, "level"), "debug", "debug level name");
    json_decref(j);
}

static void esc(const char *in, size_t n, const char *want)
{
    char out[256];
    size_t pos = 0;
    gw_json_escape(out, sizeof out, &pos, in, n);
    is_mem(out, pos, want, strlen(want), "escape -> %s", want);
}

static void test_escape(void)
{
    esc("plain", 5, "plain");
    esc("a\"b\\c", 5, "a\\\"b\\\\c");
    esc("\n\r\t\b\f", 5, "\\n\\r\\t\\b\\f");
    esc("\x01\x1f\x7f", 3, "\\u0001\\u001f\\u007f");
    esc("a\0b", 3, "a\\u0000b");
    esc("caf\xc3\xa9 \xf0\x9f\x98\x80 \xe2\x82\xac", 14, "caf\xc3\xa9 \xf0\x9f\x98\x80 \xe2\x82\xac");
    esc("\xff", 1, "\\ufffd");
    esc("\xc0\xaf", 2, "\\ufffd\\ufffd");                       /* overlong '/' */
    esc("\xe0\x80\xaf", 3, "\\ufffd\\ufffd\\ufffd");            /* overlong 3-byte */
    esc("\xed\xa0\x80", 3, "\\ufffd\\ufffd\\ufffd");            /* UTF-16 surrogate */
    esc("\xf4\x90\x80\x80", 4, "\\ufffd\\ufffd\\ufffd\\ufffd"); /* > U+10FFFF */
    esc("\xf0\x8f\xbf\xbf", 4, "\\ufffd\\ufffd\\ufffd\\ufffd"); /* overlong 4-byte */
    esc("x\xe2\x82", 3, "x\\ufffd\\ufffd");                     /* truncated sequence */
    esc("\x80x", 2, "\\ufffdx");                                /* lone continuation */
    esc("\xf4\x8f\xbf\xbf", 4, "\xf4\x8f\xbf\xbf");             /* U+10FFFF is fine */

    /* At every capacity the output is a whole-unit prefix of the full one. */
    const char *in = "a\"\x01\xc3\xa9\xff\xf0\x9f\x98\x80z";
    char full[128];
    size_t fulln = 0;
    gw_json_escape(full, sizeof full, &fulln, in, strlen(in));
    static const size_t units[] = {0, 1, 3, 9, 11, 17, 21, 22}; /* unit boundaries of full */
    int all_ok = 1;
    for (size_t cap = 0; cap <= fulln; cap++) {
        char out[128];
        memset(out, '#', sizeof out);
        size_t pos = 0;
        gw_json_escape(out, cap, &pos, in, strlen(in));
        size_t want = 0;
        for (size_t u = 0; u < GW_ARRAY_LEN(units); u++)
            if (units[u] <= cap)
                want = units[u];
        if (pos != want || memcmp(out, full, pos) != 0 || out[pos] != '#')
            all_ok = 0;
    }
    ok(all_ok && fulln == 22, "escape stops at unit boundaries for every cap (full %zu)", fulln);
    /* Appends after an existing *pos. */
    char out[16] = "ab";
    size_t pos = 2;
    gw_json_escape(out, sizeof out, &pos, "\n", 1);
    is_mem(out, pos, "ab\\n", 4, "appends at *pos");

    /* Round trip through a real JSON parser. */
    cap_open(GW_LOG_FORMAT_JSON, GW_LOG_DEBUG);
    gw_log_line *l = gw_log_begin(GW_LOG_INFO, "m\"\n\x01", "c\\");
    gw_log_str(l, "k\"", "v\xc3\xa9\xff\t", 0);
    gw_log_end(l);
    json_error_t e;
    json_t *j = json_loads(cap_read(NULL), 0, &e);
    ok(j != NULL, "escaped line parses");
    if (j) {
        is_str(jstr(j, "msg"), "m\"\n\x01", "msg decoded");
        is_str(jstr(j, "correlation_id"), "c\\", "correlation_id decoded");
        is_str(jstr(j, "k\""), "v\xc3\xa9\xef\xbf\xbd\t", "value decoded with U+FFFD");
        json_decref(j);
    }
}

static void test_text_format(void)
{
    cap_open(GW_LOG_FORMAT_TEXT, GW_LOG_INFO);
    gw_log_line *l = gw_log_begin(GW_LOG_INFO, "ws close", "corr-9");
    gw_log_str(l, "route", "/probe/ws", GW_LOG_JSON_ONLY);
    gw_log_str(l, "user", "alice", 0);
    gw_log_str(l, "ip", "1.2.3.4", 0);
    gw_log_int(l, "dur_ms", 12, 0);
    gw_log_str(l, "cause", "graceful", 0);
    gw_log_int(l, "bytes", 99, GW_LOG_JSON_ONLY);
    gw_log_end(l);
    is_str(cap_read(NULL), "ws close user=alice ip=1.2.3.4 dur_ms=12 cause=graceful\n", "ws close line exact");

    l = gw_log_begin(GW_LOG_WARN, "odd values", NULL);
    gw_log_str(l, "sp", "a b", 0);
    gw_log_str(l, "q", "x\"y", 0);
    gw_log_str(l, "eq", "a=b", 0);
    gw_log_str(l, "empty", "", 0);
    gw_log_str(l, "nl", "a\nb\\c", 0);
    gw_log_str(l, "bad", "\xff", 0);
    gw_log_str(l, "utf", "\xc3\xa9", 0);
    gw_log_bool(l, "b", 1, 0);
    gw_log_int(l, "n", -5, 0);
    gw_log_end(l);
    is_str(cap_read(NULL),
           "odd values sp=\"a b\" q=\"x\\\"y\" eq=\"a=b\" empty=\"\" nl=\"a\\nb\\\\c\" bad=\xef\xbf\xbd "
           "utf=\xc3\xa9 b=true n=-5\n",
           "quoting and escaping in text");

    l = gw_log_begin(GW_LOG_INFO, "multi\nline", NULL);
    gw_log_end(l);
    is_str(cap_read(NULL), "multi\\nline\n", "control chars in msg escaped (one line)");

    gw_log_msg(GW_LOG_INFO, "c", "listening on %s:%d", "0.0.0.0", 8080);
    is_str(cap_read(NULL), "listening on 0.0.0.0:8080\n", "gw_log_msg in text");
}

static void test_truncation(void)
{
    static char big[20000];
    memset(big, 'x', sizeof big - 1);
    cap_open(GW_LOG_FORMAT_JSON, GW_LOG_DEBUG);

    /* Every value length around the limit, with a field after it that must
     * be dropped once truncation happened. */
    int all_valid = 1, all_short = 1, saw_trunc = 0, saw_full = 0, order_ok = 1;
    for (size_t vlen = 7900; vlen <= 8200; vlen++) {
        gw_log_line *l = gw_log_begin(GW_LOG_INFO, "big", "corr");
        gw_log_strn(l, "v", big, vlen, 0);
        gw_log_int(l, "after", 1, 0);
        gw_log_end(l);
        size_t n;
        const char *out = cap_read(&n);
        if (n > 8192 || out[n - 1] != '\n' || memchr(out, '\n', n - 1))
            all_short = 0;
        json_error_t e;
        json_t *j = json_loads(out, 0, &e);
        if (!j) {
            all_valid = 0;
            continue;
        }
        json_t *t = json_object_get(j, "truncated");
        if (t) {
            saw_trunc++;
            if (!json_is_true(t) || json_object_get(j, "after"))
                order_ok = 0;
        } else {
            saw_full++;
            if (strlen(jstr(j, "v")) != vlen || !json_object_get(j, "after"))
                order_ok = 0;
        }
        json_decref(j);
    }
    ok(all_valid, "every near-limit line is valid JSON");
    ok(all_short, "every line is at most 8192 bytes, one line");
    ok(saw_trunc > 0 && saw_full > 0, "both sides of the limit seen (%d truncated, %d whole)", saw_trunc, saw_full);
    ok(order_ok, "truncated lines drop later fields; whole lines keep them");

    /* Escape-heavy value: 6 output bytes per input byte. */
    static char ctl[3000];
    memset(ctl, 1, sizeof ctl);
    gw_log_line *l = gw_log_begin(GW_LOG_INFO, "ctl", NULL);
    gw_log_strn(l, "v", ctl, sizeof ctl, 0);
    gw_log_end(l);
    size_t n;
    const char *out = cap_read(&n);
    json_error_t e;
    json_t *j = json_loads(out, 0, &e);
    ok(j && json_is_true(json_object_get(j, "truncated")) && n <= 8192, "escape-heavy value truncated validly");
    json_decref(j);

    /* Huge message through gw_log_msg; the trailing key still closes. */
    gw_log_msg(GW_LOG_INFO, "corr", "%s", big);
    out = cap_read(&n);
    j = json_loads(out, 0, &e);
    ok(j && json_is_true(json_object_get(j, "truncated")) && n <= 8192, "huge gw_log_msg truncated validly");
    if (j)
        ok(jstr(j, "msg") && strlen(jstr(j, "msg")) > 7000, "most of the message kept");
    json_decref(j);

    /* Many small fields. */
    l = gw_log_begin(GW_LOG_INFO, "many", NULL);
    for (int i = 0; i < 2000; i++)
        gw_log_int(l, "field", i, 0);
    gw_log_end(l);
    out = cap_read(&n);
    j = json_loads(out, 0, &e);
    ok(j && json_is_true(json_object_get(j, "truncated")) && n <= 8192, "many fields truncated validly");
    json_decref(j);

    /* Huge correlation id. */
    l = gw_log_begin(GW_LOG_INFO, "m", big);
    gw_log_int(l, "k", 1, 0);
    gw_log_end(l);
    out = cap_read(&n);
    j = json_loads(out, 0, &e);
    ok(j && json_is_true(json_object_get(j, "truncated")) && n <= 8192, "huge correlation id truncated validly");
    json_decref(j);

    /* Text format. */
    cap_open(GW_LOG_FORMAT_TEXT, GW_LOG_DEBUG);
    l = gw_log_begin(GW_LOG_INFO, "t", NULL);
    gw_log_strn(l, "v", big, 10000, 0);
    gw_log_int(l, "after", 1, 0);
    gw_log_end(l);
    out = cap_read(&n);
    ok(n <= 8192 && n > 16 && strcmp(out + n - 16, " truncated=true\n") == 0 && !strstr(out, "after="),
       "text truncation marked (%zu bytes)", n);
    l = gw_log_begin(GW_LOG_INFO, "t", NULL);
    gw_log_strn(l, "v", big, 10000, 0); /* no quoting needed: bare */
    gw_log_str(l, "q", "a b", 0);
    gw_log_end(l);
    out = cap_read(&n);
    ok(n <= 8192 && !strstr(out, "q="), "text: later field dropped");
    l = gw_log_begin(GW_LOG_INFO, "t", NULL);
    static char spaced[10000];
    memset(spaced, ' ', sizeof spaced - 1);
    gw_log_str(l, "v", spaced, 0);
    gw_log_end(l);
    out = cap_read(&n);
    ok(n <= 8192 && strcmp(out + n - 17, "\" truncated=true\n") == 0, "text: quoted value closed before marker");

    /* A line after a truncated one is whole again. */
    l = gw_log_begin(GW_LOG_INFO, "next", NULL);
    gw_log_int(l, "k", 1, 0);
    gw_log_end(l);
    is_str(cap_read(NULL), "next k=1\n", "state reset after truncation");
}

static void test_levels(void)
{
    gw_log_level lv;
    gw_log_format f;
    is_int(gw_log_parse_level("debug", &lv), GW_OK, "parse debug");
    is_int(lv, GW_LOG_DEBUG, "debug value");
    is_int(gw_log_parse_level("info", &lv), GW_OK, "parse info");
    is_int(lv, GW_LOG_INFO, "info value");
    is_int(gw_log_parse_level("warn", &lv), GW_OK, "parse warn");
    is_int(lv, GW_LOG_WARN, "warn value");
    is_int(gw_log_parse_level("ERROR", &lv), GW_OK, "parse ERROR (case-insensitive)");
    is_int(lv, GW_LOG_ERROR, "error value");
    is_int(gw_log_parse_level("verbose", &lv), GW_ERR, "unknown level refused");
    is_int(gw_log_parse_level("", &lv), GW_ERR, "empty level refused");
    is_int(gw_log_parse_format("json", &f), GW_OK, "parse json");
    is_int(f, GW_LOG_FORMAT_JSON, "json value");
    is_int(gw_log_parse_format("text", &f), GW_OK, "parse text");
    is_int(f, GW_LOG_FORMAT_TEXT, "text value");
    is_int(gw_log_parse_format("logfmt", &f), GW_ERR, "unknown format refused");

    cap_open(GW_LOG_FORMAT_TEXT, GW_LOG_WARN);
    ok(!gw_log_enabled(GW_LOG_INFO) && gw_log_enabled(GW_LOG_WARN) && gw_log_enabled(GW_LOG_ERROR),
       "enabled follows level");
    ok(gw_log_begin(GW_LOG_DEBUG, "d", NULL) == NULL, "debug filtered");
    ok(gw_log_begin(GW_LOG_INFO, "i", NULL) == NULL, "info filtered");
    gw_log_str(NULL, "k", "v", 0); /* NULL line is a no-op */
    gw_log_int(NULL, "k", 1, 0);
    gw_log_bool(NULL, "k", 1, 0);
    gw_log_end(NULL);
    gw_log_msg(GW_LOG_INFO, NULL, "hidden %d", 1);
    gw_log_msg(GW_LOG_WARN, NULL, "shown %d", 2);
    gw_log_msg(GW_LOG_ERROR, NULL, "shown %d", 3);
    is_str(cap_read(NULL), "shown 2\nshown 3\n", "only warn and above written");
}

static void test_log_msg_json(void)
{
    static const char *const keys[] = {"ts", "level", "service", "msg", "correlation_id"};
    cap_open(GW_LOG_FORMAT_JSON, GW_LOG_INFO);
    gw_log_msg(GW_LOG_ERROR, "abc", "bind %s: %s (%d)", "[::1]:80", "Permission \"denied\"", 13);
    json_t *j = check_json_keys(cap_read(NULL), keys, GW_ARRAY_LEN(keys));
    if (j) {
        is_str(jstr(j, "msg"), "bind [::1]:80: Permission \"denied\" (13)", "formatted message");
        is_str(jstr(j, "level"), "error", "level");
    }
    json_decref(j);
    gw_log_init(GW_LOG_FORMAT_JSON, GW_LOG_INFO, "other-svc", cap_wr);
    gw_log_msg(GW_LOG_INFO, NULL, "x");
    j = json_loads(cap_read(NULL), 0, NULL);
    if (j)
        is_str(jstr(j, "service"), "other-svc", "service name from init");
    ok(j != NULL, "parsed");
    json_decref(j);
}

/* ------------------------------------------------------------------ */

#define NTHREADS 4
#define NLINES 3000

static char conc_out[32 << 20];
static size_t conc_len;
static int conc_overflow;

static void *conc_reader(void *arg)
{
    GW_UNUSED(arg);
    int fl = fcntl(cap_rd, F_GETFL);
    fcntl(cap_rd, F_SETFL, fl & ~O_NONBLOCK);
    for (;;) {
        /* Keep draining even when full, so writers never block forever. */
        static char discard[65536];
        int full = conc_len == sizeof conc_out;
        ssize_t r = full ? read(cap_rd, discard, sizeof discard)
                         : read(cap_rd, conc_out + conc_len, sizeof conc_out - conc_len);
        if (r <= 0)
            break;
        if (full)
            conc_overflow = 1;
        else
            conc_len += (size_t)r;
    }
    return NULL;
}

static void *conc_writer(void *arg)
{
    int id = (int)(intptr_t)arg;
    char pad[3000];
    memset(pad, 'p', sizeof pad);
    for (int i = 0; i < NLINES; i++) {
        gw_log_line *l = gw_log_begin(GW_LOG_INFO, "conc", "c");
        gw_log_int(l, "thread", id, 0);
        gw_log_int(l, "seq", i, 0);
        /* Line sizes vary up to ~3 KiB (below PIPE_BUF, so pipe writes are
         * atomic). */
        gw_log_strn(l, "pad", pad, (size_t)((i * 37 + id * 11) % 2900), 0);
        gw_log_end(l);
    }
    return NULL;
}

static void test_concurrent(void)
{
    cap_open(GW_LOG_FORMAT_JSON, GW_LOG_INFO);
    pthread_t rd, wr[NTHREADS];
    conc_len = 0;
    pthread_create(&rd, NULL, conc_reader, NULL);
    for (int t = 0; t < NTHREADS; t++)
        pthread_create(&wr[t], NULL, conc_writer, (void *)(intptr_t)t);
    for (int t = 0; t < NTHREADS; t++)
        pthread_join(wr[t], NULL);
    close(cap_wr); /* EOF for the reader */
    pthread_join(rd, NULL);
    cap_wr = open("/dev/null", O_WRONLY); /* keep cap_open's close() valid */

    int next[NTHREADS] = {0};
    int lines = 0, bad = 0;
    char *p = conc_out, *end = conc_out + conc_len;
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl) {
            bad++;
            break;
        }
        json_error_t e;
        json_t *j = json_loadb(p, (size_t)(nl - p), 0, &e);
        if (!j) {
            bad++;
        } else {
            int t = (int)json_integer_value(json_object_get(j, "thread"));
            int s = (int)json_integer_value(json_object_get(j, "seq"));
            if (t < 0 || t >= NTHREADS || s != next[t])
                bad++;
            else
                next[t]++;
            json_decref(j);
        }
        lines++;
        p = nl + 1;
    }
    ok(!conc_overflow, "capture buffer large enough");
    is_int(lines, NTHREADS * NLINES, "line count");
    is_int(bad, 0, "no torn or interleaved lines");
    int all = 1;
    for (int t = 0; t < NTHREADS; t++)
        all &= next[t] == NLINES;
    ok(all, "every thread's lines arrive in order");
}

int main(void)
{
    TEST_RUN(test_json_fields);
    TEST_RUN(test_correlation_omitted);
    TEST_RUN(test_escape);
    TEST_RUN(test_text_format);
    TEST_RUN(test_truncation);
    TEST_RUN(test_levels);
    TEST_RUN(test_log_msg_json);
    TEST_RUN(test_concurrent);
    gw_log_init(GW_LOG_FORMAT_JSON, GW_LOG_INFO, "wsgate", 2);
    return test_done();
}

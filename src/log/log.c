/* log.c: structured log lines built in a thread-local buffer, one write(2)
 * per line.
 *
 * A line is assembled in an 8 KiB _Thread_local buffer so logging never
 * allocates and concurrent threads never interleave inside a line (each line
 * reaches the fd with a single write). The tail of the buffer is reserved for
 * the truncation marker, so a line that does not fit is cut at a field or
 * character boundary and still closed as valid JSON. */
#include "log/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "core/common.h"

#define LOG_BUF_SIZE 8192
/* Room kept back for the closing marker: ,"truncated":true}\n in JSON,
 * " truncated=true\n" in text. */
#define LOG_TAIL_RESERVE 32
#define LOG_SOFT_CAP (LOG_BUF_SIZE - LOG_TAIL_RESERVE)

struct gw_log_line {
    char buf[LOG_BUF_SIZE];
    size_t len;
    int truncated; /* something was cut or dropped: later fields are dropped too */
};

/* ------------------------------------------------------------------ */
/* Process-wide settings. Written by gw_log_init before worker threads
 * start; the level is atomic so it may also be changed later. */

static gw_log_format log_fmt = GW_LOG_FORMAT_JSON;
static _Atomic int log_level = GW_LOG_INFO;
static char log_service[64] = "wsgate";
static int log_fd = 2;

static _Thread_local struct gw_log_line tls_line;
static _Thread_local char tls_msg[LOG_BUF_SIZE];

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void gw_log_init(gw_log_format fmt, gw_log_level level, const char *service, int fd)
{
    log_fmt = fmt;
    atomic_store_explicit(&log_level, (int)level, memory_order_relaxed);
    snprintf(log_service, sizeof log_service, "%s", service && *service ? service : "wsgate");
    log_fd = fd;
}

int gw_log_parse_level(const char *s, gw_log_level *out)
{
    if (!s)
        return GW_ERR;
    for (size_t i = 0; i < GW_ARRAY_LEN(level_names); i++) {
        if (strcasecmp(s, level_names[i]) == 0) {
            *out = (gw_log_level)i;
            return GW_OK;
        }
    }
    if (strcasecmp(s, "warning") == 0) {
        *out = GW_LOG_WARN;
        return GW_OK;
    }
    return GW_ERR;
}

int gw_log_parse_format(const char *s, gw_log_format *out)
{
    if (s && strcasecmp(s, "json") == 0) {
        *out = GW_LOG_FORMAT_JSON;
        return GW_OK;
    }
    if (s && strcasecmp(s, "text") == 0) {
        *out = GW_LOG_FORMAT_TEXT;
        return GW_OK;
    }
    return GW_ERR;
}

int gw_log_enabled(gw_log_level level)
{
    return (int)level >= atomic_load_explicit(&log_level, memory_order_relaxed);
}

/* ------------------------------------------------------------------ */
/* UTF-8 and escaping */

/* Length of the valid UTF-8 sequence at s[0..n), or 0 when s[0] does not
 * start one (overlong forms, surrogates and code points above U+10FFFF are
 * invalid, as are truncated sequences). */
static size_t utf8_seq_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        return n >= 2 && (s[1] & 0xC0) == 0x80 ? 2 : 0;
    if (c >= 0xE0 && c <= 0xEF) {
        if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80)
            return 0;
        if (c == 0xE0 && s[1] < 0xA0) /* overlong */
            return 0;
        if (c == 0xED && s[1] >= 0xA0) /* UTF-16 surrogate */
            return 0;
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80 || (s[3] & 0xC0) != 0x80)
            return 0;
        if (c == 0xF0 && s[1] < 0x90) /* overlong */
            return 0;
        if (c == 0xF4 && s[1] >= 0x90) /* above U+10FFFF */
            return 0;
        return 4;
    }
    return 0;
}

enum esc_mode {
    ESC_JSON,        /* JSON string body */
    ESC_TEXT_QUOTED, /* text-format value inside double quotes */
    ESC_TEXT_BARE,   /* text-format message: only control chars escaped */
};

/* Appends s[0..n) escaped for mode to out[*pos..cap). Never writes a partial
 * escape or a partial UTF-8 sequence. Returns the number of input bytes
 * consumed: less than n means the output ran out of room. */
static size_t escape_into(char *out, size_t cap, size_t *pos, const char *s, size_t n, enum esc_mode mode)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *u = (const unsigned char *)s;
    size_t p = *pos, i = 0;
    while (i < n) {
        unsigned char c = u[i];
        char tmp[8];
        const char *rep = NULL;
        size_t replen = 0, in = 1;
        if (c == '"' && mode != ESC_TEXT_BARE) {
            rep = "\\\"";
            replen = 2;
        } else if (c == '\\' && mode != ESC_TEXT_BARE) {
            rep = "\\\\";
            replen = 2;
        } else if (c < 0x20 || c == 0x7f) {
            switch (c) {
            case '\n':
                rep = "\\n";
                replen = 2;
                break;
            case '\r':
                rep = "\\r";
                replen = 2;
                break;
            case '\t':
                rep = "\\t";
                replen = 2;
                break;
            case '\b':
                rep = "\\b";
                replen = 2;
                break;
            case '\f':
                rep = "\\f";
                replen = 2;
                break;
            default:
                memcpy(tmp, "\\u00", 4);
                tmp[4] = hex[c >> 4];
                tmp[5] = hex[c & 15];
                rep = tmp;
                replen = 6;
                break;
            }
        } else if (c < 0x80) {
            rep = (const char *)u + i;
            replen = 1;
        } else {
            size_t l = utf8_seq_len(u + i, n - i);
            if (l) {
                rep = (const char *)u + i;
                replen = in = l;
            } else if (mode == ESC_JSON) {
                rep = "\\ufffd";
                replen = 6;
            } else {
                /* Text lines stay valid UTF-8: U+FFFD encoded. */
                rep = "\xef\xbf\xbd";
                replen = 3;
            }
        }
        if (p > cap || cap - p < replen)
            break;
        memcpy(out + p, rep, replen);
        p += replen;
        i += in;
    }
    *pos = p;
    return i;
}

void gw_json_escape(char *out, size_t cap, size_t *pos, const char *s, size_t n)
{
    if (!s)
        return;
    escape_into(out, cap, pos, s, n, ESC_JSON);
}

/* ------------------------------------------------------------------ */
/* Line assembly */

/* Appends raw bytes if they fit entirely below the soft cap. */
static int put(gw_log_line *l, const char *s, size_t n)
{
    if (l->len > LOG_SOFT_CAP || LOG_SOFT_CAP - l->len < n)
        return 0;
    memcpy(l->buf + l->len, s, n);
    l->len += n;
    return 1;
}

static int puts_(gw_log_line *l, const char *s)
{
    return put(l, s, strlen(s));
}

/* Appends a quoted JSON string; if it does not fit, keeps what fits of the
 * body, closes the quote and marks the line truncated. 0 only when not even
 * the two quotes fit. */
static int put_json_string(gw_log_line *l, const char *s, size_t n)
{
    if (l->len > LOG_SOFT_CAP || LOG_SOFT_CAP - l->len < 2)
        return 0;
    l->buf[l->len++] = '"';
    size_t used = escape_into(l->buf, LOG_SOFT_CAP - 1, &l->len, s, n, ESC_JSON);
    l->buf[l->len++] = '"';
    if (used < n)
        l->truncated = 1;
    return 1;
}

/* Does a text-format value need quoting? */
static int text_needs_quotes(const char *s, size_t n)
{
    if (n == 0)
        return 1;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= 0x20 || c == '"' || c == '=' || c == 0x7f)
            return 1;
    }
    return 0;
}

static void format_ts(char *out, size_t cap)
{
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    snprintf(out, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
             tm.tm_min, tm.tm_sec, (int)(ts.tv_nsec / 1000000));
}

gw_log_line *gw_log_begin(gw_log_level level, const char *msg, const char *correlation_id)
{
    if (!gw_log_enabled(level))
        return NULL;
    if ((unsigned)level >= GW_ARRAY_LEN(level_names))
        level = GW_LOG_ERROR;
    gw_log_line *l = &tls_line;
    /* One line at a time per thread: a begin without an end discards the
     * unfinished line. */
    l->len = 0;
    l->truncated = 0;
    if (!msg)
        msg = "";
    if (log_fmt == GW_LOG_FORMAT_TEXT) {
        size_t used = escape_into(l->buf, LOG_SOFT_CAP, &l->len, msg, strlen(msg), ESC_TEXT_BARE);
        if (used < strlen(msg))
            l->truncated = 1;
        return l;
    }
    char ts[96];
    format_ts(ts, sizeof ts);
    /* The fixed head is well under the soft cap; only msg and the
     * correlation id can be long. */
    puts_(l, "{\"ts\":\"");
    puts_(l, ts);
    puts_(l, "\",\"level\":\"");
    puts_(l, level_names[level]);
    puts_(l, "\",\"service\":");
    put_json_string(l, log_service, strlen(log_service));
    puts_(l, ",\"msg\":");
    put_json_string(l, msg, strlen(msg));
    if (correlation_id && *correlation_id && !l->truncated) {
        size_t mark = l->len;
        if (!puts_(l, ",\"correlation_id\":") || !put_json_string(l, correlation_id, strlen(correlation_id))) {
            l->len = mark;
            l->truncated = 1;
        }
    }
    return l;
}

/* Writes the key part of a field (",\"key\":" or " key="). Returns 0 (and
 * rolls back) when the line is full or text mode skips the field. */
static int field_key(gw_log_line *l, const char *key, int flags, size_t *mark)
{
    if (!l || l->truncated)
        return 0;
    if (log_fmt == GW_LOG_FORMAT_TEXT && (flags & GW_LOG_JSON_ONLY))
        return 0;
    *mark = l->len;
    if (!key)
        key = "";
    int fit;
    if (log_fmt == GW_LOG_FORMAT_TEXT) {
        size_t klen = strlen(key);
        fit = put(l, " ", 1);
        if (fit) {
            /* Keys are code literals; escaping them just keeps the line sane. */
            size_t used = escape_into(l->buf, LOG_SOFT_CAP, &l->len, key, klen, ESC_TEXT_BARE);
            fit = used == klen && put(l, "=", 1);
        }
    } else {
        fit = put(l, ",", 1) && put_json_string(l, key, strlen(key)) && !l->truncated && put(l, ":", 1);
    }
    if (!fit) {
        l->len = *mark;
        l->truncated = 1;
        return 0;
    }
    return 1;
}

static void field_fail(gw_log_line *l, size_t mark)
{
    l->len = mark;
    l->truncated = 1;
}

void gw_log_strn(gw_log_line *l, const char *key, const char *val, size_t n, int flags)
{
    size_t mark;
    if (!field_key(l, key, flags, &mark))
        return;
    if (log_fmt == GW_LOG_FORMAT_TEXT) {
        if (!val) {
            val = "";
            n = 0;
        }
        if (!text_needs_quotes(val, n)) {
            if (escape_into(l->buf, LOG_SOFT_CAP, &l->len, val, n, ESC_TEXT_BARE) < n)
                l->truncated = 1;
            return;
        }
        if (!put(l, "\"", 1) || LOG_SOFT_CAP - l->len < 1) {
            field_fail(l, mark);
            return;
        }
        if (escape_into(l->buf, LOG_SOFT_CAP - 1, &l->len, val, n, ESC_TEXT_QUOTED) < n)
            l->truncated = 1;
        l->buf[l->len++] = '"';
        return;
    }
    if (!val) {
        if (!put(l, "null", 4))
            field_fail(l, mark);
        return;
    }
    if (!put_json_string(l, val, n))
        field_fail(l, mark);
}

void gw_log_str(gw_log_line *l, const char *key, const char *val, int flags)
{
    gw_log_strn(l, key, val, val ? strlen(val) : 0, flags);
}

void gw_log_int(gw_log_line *l, const char *key, int64_t val, int flags)
{
    size_t mark;
    if (!field_key(l, key, flags, &mark))
        return;
    char num[24];
    int n = snprintf(num, sizeof num, "%lld", (long long)val);
    if (!put(l, num, (size_t)n))
        field_fail(l, mark);
}

void gw_log_bool(gw_log_line *l, const char *key, int val, int flags)
{
    size_t mark;
    if (!field_key(l, key, flags, &mark))
        return;
    if (!puts_(l, val ? "true" : "false"))
        field_fail(l, mark);
}

/* Writes the whole line; a short write (signal, full pipe on a nonblocking
 * fd) is continued so a line is never left half-written by us. */
static void write_line(const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(log_fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return; /* nowhere to report a logging failure */
        }
        p += w;
        n -= (size_t)w;
    }
}

void gw_log_end(gw_log_line *l)
{
    if (!l)
        return;
    /* The reserved tail always has room for these. */
    const char *tail;
    if (log_fmt == GW_LOG_FORMAT_TEXT)
        tail = l->truncated ? " truncated=true\n" : "\n";
    else
        tail = l->truncated ? ",\"truncated\":true}\n" : "}\n";
    size_t tn = strlen(tail);
    memcpy(l->buf + l->len, tail, tn);
    l->len += tn;
    write_line(l->buf, l->len);
    l->len = 0;
    l->truncated = 0;
}

void gw_log_msg(gw_log_level level, const char *correlation_id, const char *fmt, ...)
{
    if (!gw_log_enabled(level))
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tls_msg, sizeof tls_msg, fmt, ap);
    va_end(ap);
    if (n < 0)
        tls_msg[0] = '\0';
    gw_log_line *l = gw_log_begin(level, tls_msg, correlation_id);
    if (l && n >= (int)sizeof tls_msg)
        l->truncated = 1;
    gw_log_end(l);
}

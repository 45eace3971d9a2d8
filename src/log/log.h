/* log.h: structured logs, one line per event, one write(2) per line.
 *
 * JSON (default): {"ts":"2026-11-24T07:04:27.123Z","level":"info","service":"wsgate",
 *   "msg":"ws close","correlation_id":"...", <fields in the order added>}
 * text: "<msg> k=v k=v" with only the fields added without GW_LOG_JSON_ONLY, so
 *   the close line is exactly "ws close user=<u> ip=<ip> dur_ms=<n> cause=<cause>".
 *
 * Usage (a line is built in a thread-local buffer, nothing is allocated):
 *   gw_log_line *l = gw_log_begin(GW_LOG_INFO, "ws close", corr_id);
 *   if (l) { gw_log_str(l, "user", u, 0); gw_log_int(l, "dur_ms", d, 0); gw_log_end(l); }
 * gw_log_begin returns NULL when the level is filtered out. Strings are JSON-
 * escaped (control characters as \u00XX, invalid UTF-8 bytes as \ufffd); in
 * text mode values with spaces, quotes or '=' are written quoted. Over-long
 * lines are truncated at 8 KiB with "truncated":true, never split. */
#ifndef GW_LOG_H
#define GW_LOG_H

#include <stddef.h>
#include <stdint.h>

typedef enum gw_log_level { GW_LOG_DEBUG = 0, GW_LOG_INFO, GW_LOG_WARN, GW_LOG_ERROR } gw_log_level;
typedef enum gw_log_format { GW_LOG_FORMAT_JSON = 0, GW_LOG_FORMAT_TEXT } gw_log_format;

#define GW_LOG_JSON_ONLY 1 /* flag: field is left out of text-format lines */

typedef struct gw_log_line gw_log_line;

/* Sets format, level, service name ("wsgate") and the output fd (2 by
 * default). Call once at start; safe to call again before threads start. */
void gw_log_init(gw_log_format fmt, gw_log_level level, const char *service, int fd);
/* Parses "debug"/"info"/"warn"/"error" and "json"/"text"; GW_ERR if unknown. */
int gw_log_parse_level(const char *s, gw_log_level *out);
int gw_log_parse_format(const char *s, gw_log_format *out);
int gw_log_enabled(gw_log_level level);

gw_log_line *gw_log_begin(gw_log_level level, const char *msg, const char *correlation_id);
void gw_log_str(gw_log_line *l, const char *key, const char *val, int flags);
void gw_log_strn(gw_log_line *l, const char *key, const char *val, size_t n, int flags);
void gw_log_int(gw_log_line *l, const char *key, int64_t val, int flags);
void gw_log_bool(gw_log_line *l, const char *key, int val, int flags);
void gw_log_end(gw_log_line *l);

/* One-liners with printf formatting for the message only (no fields). */
void gw_log_msg(gw_log_level level, const char *correlation_id, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Appends s JSON-escaped (without quotes) to out[*pos..cap), advancing *pos;
 * stops at cap. Shared with the error envelope and /health writers. */
void gw_json_escape(char *out, size_t cap, size_t *pos, const char *s, size_t n);

#endif

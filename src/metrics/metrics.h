/* metrics.h: process-wide Prometheus registry.
 *
 * Counters and gauges are registered once (name + fixed label set) and then
 * bumped lock-free from any worker thread (relaxed atomics); registration and
 * rendering take a mutex. A labelled series is looked up or created with
 * gw_metric_get(); hot paths keep the returned pointer. */
#ifndef GW_METRICS_H
#define GW_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"

typedef enum gw_metric_type { GW_METRIC_COUNTER, GW_METRIC_GAUGE, GW_METRIC_HISTOGRAM } gw_metric_type;

typedef struct gw_metric gw_metric;

/* Returns the series name{labels}, creating it (and its family, with help and
 * type, on first use). labels is NULL or the inside of the braces in
 * Prometheus syntax, e.g. "route=\"/probe/ws\",cause=\"graceful\"" (callers
 * escape label values with gw_metrics_label_escape). For histograms, buckets
 * (upper bounds, ascending, nbuckets of them; +Inf is implied) are taken from
 * the first registration of the family. Never returns NULL (aborts on OOM). */
gw_metric *gw_metric_get(const char *name, gw_metric_type type, const char *help, const char *labels);
gw_metric *gw_histogram_get(const char *name, const char *help, const char *labels, const double *buckets,
                            size_t nbuckets);

void gw_counter_add(gw_metric *m, uint64_t n);
static inline void gw_counter_inc(gw_metric *m) { gw_counter_add(m, 1); }
void gw_gauge_add(gw_metric *m, int64_t delta);
void gw_gauge_set(gw_metric *m, int64_t v);
void gw_histogram_observe(gw_metric *m, double v);
/* Current value of a counter or gauge (tests, /health). */
int64_t gw_metric_value(const gw_metric *m);

/* Calls fn(labels, value) for each series of the family name (counters and
 * gauges; labels as registered, "" when none), under the registry's lock:
 * fn must not register metrics. */
void gw_metrics_each(const char *name, void (*fn)(const char *labels, int64_t value, void *arg), void *arg);

/* Renders every family in Prometheus text exposition format 0.0.4 (# HELP,
 * # TYPE, then each series; histograms as _bucket{le=...}, _sum, _count)
 * into out. Families appear in registration order. GW_OK or GW_ERR (OOM). */
int gw_metrics_render(gw_buf *out);

/* Escapes a label value (backslash, double quote, newline) into out (cap
 * bytes, NUL-terminated, truncated). */
void gw_metrics_label_escape(const char *in, char *out, size_t cap);

/* Frees everything (tests). */
void gw_metrics_reset(void);

#endif

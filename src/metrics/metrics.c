/* metrics.c: the process-wide Prometheus registry.
 *
 * Families (name, help, type, histogram bounds) hold a singly linked list of
 * series (one per label string). Every family and series is its own
 * allocation and is never moved, so the pointers handed out stay valid until
 * gw_metrics_reset(). Lookup, creation and rendering hold one mutex; value
 * updates are relaxed atomics and take no lock. */
#include "metrics/metrics.h"

#include <inttypes.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/common.h"

/* Render output limit: far above any realistic registry, but bounded. */
#define RENDER_MAX (64u * 1024 * 1024)

typedef struct family family;

struct gw_metric {
    family *fam;
    char *labels; /* inside of the braces, "" when none */
    gw_metric *next;
    _Atomic uint64_t counter;
    _Atomic int64_t gauge;
    /* histograms: counts[i] observations in (bounds[i-1], bounds[i]];
     * counts[nbuckets] is the +Inf overflow bucket. */
    _Atomic uint64_t *counts;
    _Atomic uint64_t sum_bits; /* double stored as its bit pattern */
};

struct family {
    char *name;
    char *help;
    gw_metric_type type;
    double *bounds;
    size_t nbounds;
    gw_metric *series, **series_tail;
    family *next;
};

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static family *families, **families_tail = &families;

/* Prometheus client default buckets, used when a histogram is created through
 * gw_metric_get() (which carries no bounds). */
static const double default_bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};

static const char *type_name(gw_metric_type t)
{
    switch (t) {
    case GW_METRIC_COUNTER:
        return "counter";
    case GW_METRIC_GAUGE:
        return "gauge";
    case GW_METRIC_HISTOGRAM:
        return "histogram";
    }
    return "unknown";
}

/* Registration mistakes are bugs in the caller, found on first run: say
 * what happened and stop. Called with reg_lock held. */
static _Noreturn void die(const char *msg)
{
    pthread_mutex_unlock(&reg_lock);
    fprintf(stderr, "metrics: programming error: %s\n", msg);
    abort();
}

static int valid_name(const char *s)
{
    if (!s || !*s)
        return 0;
    for (const char *p = s; *p; p++) {
        char c = *p;
        int alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || c == ':';
        if (!alpha && !(p != s && c >= '0' && c <= '9'))
            return 0;
    }
    return 1;
}

/* Called with reg_lock held. */
static family *family_get(const char *name, gw_metric_type type, const char *help, const double *bounds, size_t nbounds)
{
    for (family *f = families; f; f = f->next) {
        if (strcmp(f->name, name) != 0)
            continue;
        if (f->type != type) {
            char msg[512];
            snprintf(msg, sizeof msg, "metric %s registered as %s, then as %s", name, type_name(f->type),
                     type_name(type));
            die(msg);
        }
        return f;
    }
    if (!valid_name(name)) {
        char msg[512];
        snprintf(msg, sizeof msg, "invalid metric name \"%s\"", name ? name : "(null)");
        die(msg);
    }
    family *f = gw_calloc(1, sizeof *f);
    f->name = gw_strdup(name);
    f->help = gw_strdup(help ? help : "");
    f->type = type;
    f->series_tail = &f->series;
    if (type == GW_METRIC_HISTOGRAM) {
        if (!bounds || nbounds == 0) {
            bounds = default_bounds;
            nbounds = GW_ARRAY_LEN(default_bounds);
        }
        for (size_t i = 1; i < nbounds; i++) {
            if (!(bounds[i] > bounds[i - 1])) {
                char msg[512];
                snprintf(msg, sizeof msg, "histogram %s: bucket bounds must be strictly ascending", name);
                die(msg);
            }
        }
        f->bounds = gw_malloc(nbounds * sizeof *f->bounds);
        memcpy(f->bounds, bounds, nbounds * sizeof *f->bounds);
        f->nbounds = nbounds;
    }
    *families_tail = f;
    families_tail = &f->next;
    return f;
}

static gw_metric *series_get(const char *name, gw_metric_type type, const char *help, const char *labels,
                             const double *bounds, size_t nbounds)
{
    if (!labels)
        labels = "";
    pthread_mutex_lock(&reg_lock);
    family *f = family_get(name, type, help, bounds, nbounds);
    gw_metric *m;
    for (m = f->series; m; m = m->next) {
        if (strcmp(m->labels, labels) == 0)
            goto out;
    }
    m = gw_calloc(1, sizeof *m);
    m->fam = f;
    m->labels = gw_strdup(labels);
    if (type == GW_METRIC_HISTOGRAM) {
        m->counts = gw_calloc(f->nbounds + 1, sizeof *m->counts);
        for (size_t i = 0; i <= f->nbounds; i++)
            atomic_init(&m->counts[i], 0);
    }
    atomic_init(&m->counter, 0);
    atomic_init(&m->gauge, 0);
    atomic_init(&m->sum_bits, 0); /* all-zero bits are +0.0 */
    *f->series_tail = m;
    f->series_tail = &m->next;
out:
    pthread_mutex_unlock(&reg_lock);
    return m;
}

gw_metric *gw_metric_get(const char *name, gw_metric_type type, const char *help, const char *labels)
{
    return series_get(name, type, help, labels, NULL, 0);
}

gw_metric *gw_histogram_get(const char *name, const char *help, const char *labels, const double *buckets,
                            size_t nbuckets)
{
    return series_get(name, GW_METRIC_HISTOGRAM, help, labels, buckets, nbuckets);
}

/* ------------------------------------------------------------------ */
/* Updates: lock-free; relaxed because a scrape needs no ordering with
 * anything else, only eventually-correct totals. */

void gw_counter_add(gw_metric *m, uint64_t n)
{
    atomic_fetch_add_explicit(&m->counter, n, memory_order_relaxed);
}

void gw_gauge_add(gw_metric *m, int64_t delta)
{
    atomic_fetch_add_explicit(&m->gauge, delta, memory_order_relaxed);
}

void gw_gauge_set(gw_metric *m, int64_t v)
{
    atomic_store_explicit(&m->gauge, v, memory_order_relaxed);
}

static uint64_t dbl_bits(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof u);
    return u;
}

static double bits_dbl(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof d);
    return d;
}

void gw_histogram_observe(gw_metric *m, double v)
{
    family *f = m->fam;
    size_t i = 0;
    /* NaN compares false everywhere and so lands in +Inf, as in Prometheus
     * client libraries. */
    while (i < f->nbounds && !(v <= f->bounds[i]))
        i++;
    atomic_fetch_add_explicit(&m->counts[i], 1, memory_order_relaxed);
    uint64_t old = atomic_load_explicit(&m->sum_bits, memory_order_relaxed);
    while (!atomic_compare_exchange_weak_explicit(&m->sum_bits, &old, dbl_bits(bits_dbl(old) + v), memory_order_relaxed,
                                                  memory_order_relaxed)) {
    }
}

int64_t gw_metric_value(const gw_metric *m)
{
    switch (m->fam->type) {
    case GW_METRIC_COUNTER:
        return (int64_t)atomic_load_explicit(&((gw_metric *)m)->counter, memory_order_relaxed);
    case GW_METRIC_GAUGE:
        return atomic_load_explicit(&((gw_metric *)m)->gauge, memory_order_relaxed);
    case GW_METRIC_HISTOGRAM: {
        uint64_t total = 0;
        for (size_t i = 0; i <= m->fam->nbounds; i++)
            total += atomic_load_explicit(&m->counts[i], memory_order_relaxed);
        return (int64_t)total;
    }
    }
    return 0;
}

void gw_metrics_each(const char *name, void (*fn)(const char *labels, int64_t value, void *arg), void *arg)
{
    pthread_mutex_lock(&reg_lock);
    for (family *f = families; f; f = f->next) {
        if (strcmp(f->name, name) != 0)
            continue;
        for (gw_metric *m = f->series; m; m = m->next)
            fn(m->labels, gw_metric_value(m), arg);
    }
    pthread_mutex_unlock(&reg_lock);
}

/* ------------------------------------------------------------------ */
/* Rendering */

static int appendf(gw_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int appendf(gw_buf *b, const char *fmt, ...)
{
    va_list ap, ap2;
    va_start(ap, fmt);
    va_copy(ap2, ap);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || gw_buf_reserve(b, (size_t)n + 1, RENDER_MAX) != GW_OK) {
        va_end(ap2);
        return GW_ERR;
    }
    vsnprintf((char *)gw_buf_tail(b), (size_t)n + 1, fmt, ap2);
    va_end(ap2);
    gw_buf_commit(b, (size_t)n);
    return GW_OK;
}

static int append_help(gw_buf *b, const char *s)
{
    for (; *s; s++) {
        int rc;
        if (*s == '\\')
            rc = gw_buf_append(b, "\\\\", 2, RENDER_MAX);
        else if (*s == '\n')
            rc = gw_buf_append(b, "\\n", 2, RENDER_MAX);
        else
            rc = gw_buf_append(b, s, 1, RENDER_MAX);
        if (rc != GW_OK)
            return GW_ERR;
    }
    return GW_OK;
}

/* Shortest decimal form that reads back as the same double ("0.005", "1",
 * "2.5", "1e-05", "1e+21"); Prometheus spells infinities +Inf/-Inf. */
static void fmt_double(double d, char *out, size_t cap)
{
    if (isnan(d)) {
        snprintf(out, cap, "NaN");
        return;
    }
    if (isinf(d)) {
        snprintf(out, cap, d > 0 ? "+Inf" : "-Inf");
        return;
    }
    int prec = 1;
    for (; prec < 17; prec++) {
        snprintf(out, cap, "%.*g", prec, d);
        if (strtod(out, NULL) == d)
            break;
    }
    /* At least 6 digits of precision so that exponent notation starts where
     * Go's strconv 'g' (the Prometheus client's) starts it: 10 -> "10",
     * 50000 -> "50000", 1e6 -> "1e+06". %g drops the trailing zeros. */
    snprintf(out, cap, "%.*g", prec < 6 ? 6 : prec, d);
}

static int render_histogram(gw_buf *b, const family *f, const gw_metric *m)
{
    const char *sep = m->labels[0] ? "," : "";
    uint64_t cum = 0;
    char num[40];
    for (size_t i = 0; i <= f->nbounds; i++) {
        cum += atomic_load_explicit(&m->counts[i], memory_order_relaxed);
        if (i < f->nbounds)
            fmt_double(f->bounds[i], num, sizeof num);
        else
            snprintf(num, sizeof num, "+Inf");
        if (appendf(b, "%s_bucket{%s%sle=\"%s\"} %" PRIu64 "\n", f->name, m->labels, sep, num, cum) != GW_OK)
            return GW_ERR;
    }
    fmt_double(bits_dbl(atomic_load_explicit(&((gw_metric *)m)->sum_bits, memory_order_relaxed)), num, sizeof num);
    const char *lo = m->labels[0] ? "{" : "", *lc = m->labels[0] ? "}" : "";
    if (appendf(b, "%s_sum%s%s%s %s\n", f->name, lo, m->labels, lc, num) != GW_OK)
        return GW_ERR;
    return appendf(b, "%s_count%s%s%s %" PRIu64 "\n", f->name, lo, m->labels, lc, cum);
}

int gw_metrics_render(gw_buf *out)
{
    int rc = GW_OK;
    pthread_mutex_lock(&reg_lock);
    for (family *f = families; f && rc == GW_OK; f = f->next) {
        rc = appendf(out, "# HELP %s ", f->name);
        if (rc == GW_OK)
            rc = append_help(out, f->help);
        if (rc == GW_OK)
            rc = appendf(out, "\n# TYPE %s %s\n", f->name, type_name(f->type));
        for (gw_metric *m = f->series; m && rc == GW_OK; m = m->next) {
            const char *lo = m->labels[0] ? "{" : "", *lc = m->labels[0] ? "}" : "";
            switch (f->type) {
            case GW_METRIC_COUNTER:
                rc = appendf(out, "%s%s%s%s %" PRIu64 "\n", f->name, lo, m->labels, lc,
                             atomic_load_explicit(&m->counter, memory_order_relaxed));
                break;
            case GW_METRIC_GAUGE:
                rc = appendf(out, "%s%s%s%s %" PRId64 "\n", f->name, lo, m->labels, lc,
                             atomic_load_explicit(&m->gauge, memory_order_relaxed));
                break;
            case GW_METRIC_HISTOGRAM:
                rc = render_histogram(out, f, m);
                break;
            }
        }
    }
    pthread_mutex_unlock(&reg_lock);
    return rc;
}

void gw_metrics_label_escape(const char *in, char *out, size_t cap)
{
    if (cap == 0)
        return;
    size_t o = 0;
    for (; in && *in; in++) {
        const char *rep;
        char one[2] = {*in, 0};
        if (*in == '\\')
            rep = "\\\\";
        else if (*in == '"')
            rep = "\\\"";
        else if (*in == '\n')
            rep = "\\n";
        else
            rep = one;
        size_t n = strlen(rep);
        if (cap - 1 - o < n) /* never split an escape */
            break;
        memcpy(out + o, rep, n);
        o += n;
    }
    out[o] = '\0';
}

void gw_metrics_reset(void)
{
    pthread_mutex_lock(&reg_lock);
    family *f = families;
    while (f) {
        family *fn = f->next;
        gw_metric *m = f->series;
        while (m) {
            gw_metric *mn = m->next;
            gw_free(m->labels);
            gw_free((void *)m->counts);
            gw_free(m);
            m = mn;
        }
        gw_free(f->name);
        gw_free(f->help);
        gw_free(f->bounds);
        gw_free(f);
        f = fn;
    }
    families = NULL;
    families_tail = &families;
    pthread_mutex_unlock(&reg_lock);
}

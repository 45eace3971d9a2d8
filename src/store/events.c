/* events.c: the client-events history (see events.h). */
#include "store/events.h"

#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/common.h"
#include "log/log.h"
#include "loop/loop.h"
#include "metrics/metrics.h"
#include "ws/ws_frame.h"

static struct {
    pthread_mutex_t mu;
    gw_event **ring; /* oldest at head */
    size_t cap, head, n;
    size_t bytes;    /* memory the held events take (event_bytes) */
    size_t max_bytes; /* GW_EVENTS_MAX_BYTES (tests set less) */
    gw_event_id last;    /* highest id appended */
    gw_event_id evicted; /* highest id evicted (or the start point): older cursors need a resync */
    uint64_t window_ms;
    uint64_t (*now_ms)(void);
    gw_events_hook hook;
    void *hook_arg;
    gw_events_alt_encoder alt;
    gw_metric *m_malformed, *m_appended;
} H = {.mu = PTHREAD_MUTEX_INITIALIZER};

void gw_event_unref(gw_event *e)
{
    if (e && atomic_fetch_sub_explicit(&e->refs, 1, memory_order_acq_rel) == 1) {
        gw_free(e->alt);
        gw_free(e);
    }
}

int gw_event_id_parse(const char *s, size_t n, gw_event_id *out)
{
    uint64_t v[2] = {0, 0};
    int part = 0;
    size_t digits = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '-' && part == 0 && digits) {
            part = 1;
            digits = 0;
            continue;
        }
        /* Redis allows each part up to 2^64-1 (20 digits): refusing those
         * made one such entry, and every later one Redis numbers above it,
         * malformed forever (review3 F3). */
        if (c < '0' || c > '9' || digits >= 20 || v[part] > (UINT64_MAX - (uint64_t)(c - '0')) / 10)
            return GW_ERR;
        v[part] = v[part] * 10 + (uint64_t)(c - '0');
        digits++;
    }
    if (!digits)
        return GW_ERR;
    out->ms = v[0];
    out->seq = v[1];
    return GW_OK;
}

static void metrics_init(void)
{
    if (H.m_malformed)
        return;
    H.m_malformed = gw_metric_get("wsgate_push_malformed_entries_total", GW_METRIC_COUNTER,
                                  "Client-events stream entries dropped because they were malformed", NULL);
    H.m_appended = gw_metric_get("wsgate_push_events_total", GW_METRIC_COUNTER,
                                 "Client events read from the stream (or published to the embedded stream)", NULL);
}

void gw_events_malformed(const char *source, const char *id, const char *why)
{
    metrics_init();
    gw_counter_inc(H.m_malformed);
    gw_log_line *l = gw_log_begin(GW_LOG_WARN, "client event dropped: malformed", NULL);
    if (l) {
        gw_log_str(l, "source", source, 0);
        if (id)
            gw_log_str(l, "entry_id", id, 0);
        gw_log_str(l, "error", why, 0);
        gw_log_end(l);
    }
}

void gw_events_init(uint64_t window_ms, uint64_t (*now_ms)(void), uint64_t start_ms)
{
    gw_events_reset();
    metrics_init();
    pthread_mutex_lock(&H.mu);
    H.window_ms = window_ms;
    H.now_ms = now_ms;
    H.evicted = (gw_event_id){start_ms ? start_ms - 1 : 0, UINT64_MAX};
    H.last = (gw_event_id){0, 0};
    pthread_mutex_unlock(&H.mu);
}

gw_event_id gw_events_start_id(void)
{
    pthread_mutex_lock(&H.mu);
    gw_event_id id = H.evicted;
    pthread_mutex_unlock(&H.mu);
    return id;
}

void gw_events_set_alt_encoder(gw_events_alt_encoder enc)
{
    pthread_mutex_lock(&H.mu);
    H.alt = enc;
    pthread_mutex_unlock(&H.mu);
}

void gw_events_set_hook(gw_events_hook fn, void *arg)
{
    pthread_mutex_lock(&H.mu);
    H.hook = fn;
    H.hook_arg = arg;
    pthread_mutex_unlock(&H.mu);
}

static int id_ok(const char *s, size_t n, size_t max)
{
    if (n == 0 || n > max)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return 0;
    return 1;
}

/* Builds the event: {"id","type","payload","created_at_ms"} in one text
 * frame. NULL with why when a field is malformed. */
static gw_event *event_build(gw_event_id id, const char *type, size_t typen, const char *payload, size_t payn,
                             const char *user, size_t usern, const char *dev, size_t devn, char *why, size_t whycap)
{
    if (!id_ok(user, usern, GW_SESSION_ID_MAX)) {
        snprintf(why, whycap, "user_id must be 1 to %d printable characters", GW_SESSION_ID_MAX);
        return NULL;
    }
    if (devn && !id_ok(dev, devn, GW_SESSION_ID_MAX)) {
        snprintf(why, whycap, "device_session_id must be at most %d printable characters", GW_SESSION_ID_MAX);
        return NULL;
    }
    if (!id_ok(type, typen, GW_EVENT_TYPE_MAX)) {
        snprintf(why, whycap, "type must be 1 to %d printable characters", GW_EVENT_TYPE_MAX);
        return NULL;
    }
    if (payn > GW_EVENT_PAYLOAD_MAX) {
        snprintf(why, whycap, "payload is larger than %d bytes", GW_EVENT_PAYLOAD_MAX);
        return NULL;
    }
    json_t *p = NULL;
    if (payn) {
        json_error_t jerr;
        p = json_loadb(payload, payn, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &jerr);
        if (!p) {
            snprintf(why, whycap, "payload is not JSON text: %s", jerr.text);
            return NULL;
        }
    }
    char idt[GW_EVENT_ID_MAX];
    snprintf(idt, sizeof idt, "%llu-%llu", (unsigned long long)id.ms, (unsigned long long)id.seq);
    json_t *o = json_object();
    json_t *jt = json_stringn(type, typen);
    if (o && jt) {
        json_object_set_new(o, "id", json_string(idt));
        json_object_set_new(o, "type", jt);
        json_object_set(o, "payload", p ? p : json_null()); /* p is kept for the second encoding */
        json_object_set_new(o, "created_at_ms", json_integer((json_int_t)id.ms));
    } else {
        json_decref(jt);
        json_decref(o);
        o = NULL;
    }
    char *text = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!text) {
        json_decref(p);
        snprintf(why, whycap, "cannot encode the event (type is not UTF-8?)");
        return NULL;
    }
    size_t tn = strlen(text);
    uint8_t hdr[14];
    size_t hn = gw_ws_frame_encode_header(hdr, 1, 0, GW_WS_OP_TEXT, tn, NULL);
    gw_event *e = gw_malloc(sizeof *e + hn + tn);
    memset(e, 0, sizeof *e);
    atomic_init(&e->refs, 1);
    e->id = id;
    memcpy(e->id_text, idt, sizeof idt);
    memcpy(e->user_id, user, usern);
    if (devn)
        memcpy(e->device_session_id, dev, devn);
    e->read_mono_ms = gw_mono_ms();
    memcpy(e->frame, hdr, hn);
    memcpy(e->frame + hn, text, tn);
    e->frame_len = hn + tn;
    free(text);
    if (H.alt) {
        char *pt = json_dumps(p ? p : json_null(), JSON_COMPACT | JSON_ENCODE_ANY);
        e->alt = H.alt(idt, type, typen, pt ? pt : "null", pt ? strlen(pt) : 4, id.ms, &e->alt_len);
        free(pt);
    }
    json_decref(p);
    return e;
}

static size_t event_bytes(const gw_event *e) { return sizeof *e + e->frame_len; }

/* Drops the oldest events past the count or byte bound, or older than the
 * window by their id's time or by when this process read them (an id from
 * a publisher's clock a day ahead would otherwise pin the window: review3
 * F3). */
static void evict_locked(uint64_t now, size_t incoming)
{
    uint64_t mono = gw_mono_ms();
    while (H.n) {
        gw_event *e = H.ring[H.head];
        int old = H.window_ms && (e->id.ms + H.window_ms < now || e->read_mono_ms + H.window_ms < mono);
        if (!old && H.n < GW_EVENTS_MAX && H.bytes + incoming <= (H.max_bytes ? H.max_bytes : GW_EVENTS_MAX_BYTES))
            break;
        H.evicted = e->id;
        H.head = (H.head + 1) % H.cap;
        H.n--;
        H.bytes -= event_bytes(e);
        gw_event_unref(e);
    }
}

/* Appends e (its reference goes to the history) and hands it to the hook. */
static void append_locked(gw_event *e)
{
    evict_locked(H.now_ms ? H.now_ms() : gw_wall_ms(), event_bytes(e));
    if (H.n == H.cap) {
        size_t ncap = H.cap ? H.cap * 2 : 256;
        gw_event **r = gw_malloc(ncap * sizeof *r);
        for (size_t i = 0; i < H.n; i++)
            r[i] = H.ring[(H.head + i) % H.cap];
        gw_free(H.ring);
        H.ring = r;
        H.cap = ncap;
        H.head = 0;
    }
    H.ring[(H.head + H.n) % H.cap] = e;
    H.n++;
    H.bytes += event_bytes(e);
    H.last = e->id;
    gw_counter_inc(H.m_appended);
    if (H.hook)
        H.hook(e, H.hook_arg);
}

static const char *field(size_t n, const char *const *names, const size_t *nlens, const char *const *vals,
                         const size_t *vlens, const char *name, size_t *len)
{
    size_t k = strlen(name);
    for (size_t i = 0; i < n; i++) {
        if (nlens[i] == k && memcmp(names[i], name, k) == 0) {
            *len = vlens[i];
            return vals[i];
        }
    }
    *len = 0;
    return NULL;
}

int gw_events_append_fields(const char *id, size_t idn, size_t n, const char *const *names, const size_t *nlens,
                            const char *const *vals, const size_t *vlens)
{
    metrics_init();
    char idt[GW_EVENT_ID_MAX];
    snprintf(idt, sizeof idt, "%.*s", (int)(idn < sizeof idt ? idn : sizeof idt - 1), id);
    gw_event_id eid;
    if (gw_event_id_parse(id, idn, &eid) != GW_OK) {
        gw_events_malformed("stream", idt, "the entry id is not <ms>-<seq>");
        return GW_ERR;
    }
    pthread_mutex_lock(&H.mu);
    int seen = gw_event_id_cmp(eid, H.last) <= 0;
    pthread_mutex_unlock(&H.mu);
    if (seen)
        return GW_OK;
    size_t un, tn, pn, dn;
    const char *u = field(n, names, nlens, vals, vlens, "user_id", &un);
    const char *t = field(n, names, nlens, vals, vlens, "type", &tn);
    const char *p = field(n, names, nlens, vals, vlens, "payload", &pn);
    const char *d = field(n, names, nlens, vals, vlens, "device_session_id", &dn);
    char why[200];
    gw_event *e = NULL;
    if (!u || !t)
        snprintf(why, sizeof why, "the fields user_id and type are required");
    else
        e = event_build(eid, t, tn, p, pn, u, un, d, dn, why, sizeof why);
    if (!e) {
        gw_events_malformed("stream", idt, why);
        return GW_ERR;
    }
    pthread_mutex_lock(&H.mu);
    if (gw_event_id_cmp(eid, H.last) <= 0) { /* another reader got there first */
        pthread_mutex_unlock(&H.mu);
        gw_event_unref(e);
        return GW_OK;
    }
    append_locked(e);
    pthread_mutex_unlock(&H.mu);
    return GW_OK;
}

int gw_events_append_local(const gw_event_in *in, char id_out[GW_EVENT_ID_MAX])
{
    metrics_init();
    pthread_mutex_lock(&H.mu);
    uint64_t now = H.now_ms ? H.now_ms() : gw_wall_ms();
    gw_event_id id = now > H.last.ms ? (gw_event_id){now, 0} : (gw_event_id){H.last.ms, H.last.seq + 1};
    char why[200];
    const char *pay = in->payload ? in->payload : "";
    gw_event *e = event_build(id, in->type, strlen(in->type), pay, strlen(pay), in->user_id, strlen(in->user_id),
                              in->device_session_id, strlen(in->device_session_id), why, sizeof why);
    if (!e) {
        pthread_mutex_unlock(&H.mu);
        gw_events_malformed("admin", NULL, why);
        return GW_ERR;
    }
    memcpy(id_out, e->id_text, GW_EVENT_ID_MAX);
    append_locked(e);
    pthread_mutex_unlock(&H.mu);
    return GW_OK;
}

int gw_events_replay(const gw_event_id *cursor, void (*fn)(gw_event *e, void *arg), void *arg, gw_event_id *hw)
{
    pthread_mutex_lock(&H.mu);
    uint64_t now = H.now_ms ? H.now_ms() : gw_wall_ms();
    evict_locked(now, 0);
    /* Older than the history, or ahead of everything read and of the clock
     * (a cursor from before a stream reset, a corrupted client store: as
     * the high-water mark it would silently drop every live event; review3
     * F8): the client must resync. */
    if (cursor && (gw_event_id_cmp(*cursor, H.evicted) < 0 ||
                   (gw_event_id_cmp(*cursor, H.last) > 0 && cursor->ms > now + GW_EVENTS_CURSOR_SKEW_MS))) {
        pthread_mutex_unlock(&H.mu);
        return GW_AGAIN;
    }
    *hw = H.last;
    if (cursor) {
        /* binary search for the first event after the cursor */
        size_t lo = 0, hi = H.n;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (gw_event_id_cmp(H.ring[(H.head + mid) % H.cap]->id, *cursor) <= 0)
                lo = mid + 1;
            else
                hi = mid;
        }
        for (size_t i = lo; i < H.n; i++)
            fn(H.ring[(H.head + i) % H.cap], arg);
        if (gw_event_id_cmp(*cursor, *hw) > 0)
            *hw = *cursor;
    }
    pthread_mutex_unlock(&H.mu);
    return GW_OK;
}

int gw_events_replay_some(const gw_event_id *after, size_t max, void (*fn)(gw_event *e, void *arg), void *arg,
                          gw_event_id *pos, gw_event_id *hw)
{
    pthread_mutex_lock(&H.mu);
    uint64_t now = H.now_ms ? H.now_ms() : gw_wall_ms();
    evict_locked(now, 0);
    if (gw_event_id_cmp(*after, H.evicted) < 0 ||
        (gw_event_id_cmp(*after, H.last) > 0 && after->ms > now + GW_EVENTS_CURSOR_SKEW_MS)) {
        pthread_mutex_unlock(&H.mu);
        return GW_AGAIN;
    }
    size_t lo = 0, hi = H.n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (gw_event_id_cmp(H.ring[(H.head + mid) % H.cap]->id, *after) <= 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    size_t end = max && H.n - lo > max ? lo + max : H.n;
    for (size_t i = lo; i < end; i++)
        fn(H.ring[(H.head + i) % H.cap], arg);
    if (end < H.n) {
        *pos = H.ring[(H.head + end - 1) % H.cap]->id;
        pthread_mutex_unlock(&H.mu);
        return 1;
    }
    *hw = gw_event_id_cmp(*after, H.last) > 0 ? *after : H.last;
    pthread_mutex_unlock(&H.mu);
    return GW_OK;
}

size_t gw_events_count(void)
{
    pthread_mutex_lock(&H.mu);
    size_t n = H.n;
    pthread_mutex_unlock(&H.mu);
    return n;
}

void gw_events_reset(void)
{
    pthread_mutex_lock(&H.mu);
    for (size_t i = 0; i < H.n; i++)
        gw_event_unref(H.ring[(H.head + i) % H.cap]);
    gw_free(H.ring);
    H.ring = NULL;
    H.cap = H.head = H.n = 0;
    H.bytes = 0;
    H.last = (gw_event_id){0, 0};
    H.evicted = (gw_event_id){0, 0};
    pthread_mutex_unlock(&H.mu);
}

void gw_events_set_max_bytes(size_t max)
{
    pthread_mutex_lock(&H.mu);
    H.max_bytes = max ? max : GW_EVENTS_MAX_BYTES;
    pthread_mutex_unlock(&H.mu);
}

size_t gw_events_bytes(void)
{
    pthread_mutex_lock(&H.mu);
    size_t b = H.bytes;
    pthread_mutex_unlock(&H.mu);
    return b;
}

/* ============================== publishing ================================== */

int gw_event_in_from_json(const uint8_t *body, size_t n, gw_event_in *out, char *why, size_t whycap)
{
    memset(out, 0, sizeof *out);
    json_error_t jerr;
    json_t *o = n ? json_loadb((const char *)body, n, JSON_REJECT_DUPLICATES, &jerr) : NULL;
    if (!o || !json_is_object(o)) {
        json_decref(o);
        snprintf(why, whycap, "the body must be a JSON object");
        return GW_ERR;
    }
    static const struct {
        const char *name;
        size_t off, cap;
        int required;
    } f[] = {{"user_id", offsetof(gw_event_in, user_id), GW_SESSION_ID_MAX + 1, 1},
             {"type", offsetof(gw_event_in, type), GW_EVENT_TYPE_MAX + 1, 1},
             {"device_session_id", offsetof(gw_event_in, device_session_id), GW_SESSION_ID_MAX + 1, 0}};
    int rc = GW_OK;
    for (size_t i = 0; i < GW_ARRAY_LEN(f) && rc == GW_OK; i++) {
        json_t *v = json_object_get(o, f[i].name);
        if (!v || json_is_null(v)) {
            if (f[i].required) {
                snprintf(why, whycap, "the field %s is required", f[i].name);
                rc = GW_ERR;
            }
            continue;
        }
        const char *s = json_string_value(v);
        size_t sl = s ? json_string_length(v) : 0;
        if (!s || !id_ok(s, sl, f[i].cap - 1) || memchr(s, 0, sl)) {
            snprintf(why, whycap, "the field %s must be a string of 1 to %zu printable characters", f[i].name,
                     f[i].cap - 1);
            rc = GW_ERR;
            continue;
        }
        memcpy((char *)out + f[i].off, s, sl + 1);
    }
    json_t *p = json_object_get(o, "payload");
    if (rc == GW_OK && p) {
        /* payload: a string holding JSON text (the stream field), or any
         * other JSON value, taken as is */
        if (json_is_string(p)) {
            json_error_t pe;
            json_t *chk = json_loadb(json_string_value(p), json_string_length(p), JSON_DECODE_ANY, &pe);
            if (!chk) {
                snprintf(why, whycap, "payload (a string) must hold JSON text: %s", pe.text);
                rc = GW_ERR;
            } else {
                json_decref(chk);
                out->payload = gw_strdup(json_string_value(p));
            }
        } else {
            char *t = json_dumps(p, JSON_COMPACT | JSON_ENCODE_ANY);
            if (t) {
                out->payload = gw_strdup(t);
                free(t);
            }
        }
        if (out->payload && strlen(out->payload) > GW_EVENT_PAYLOAD_MAX) {
            snprintf(why, whycap, "payload is larger than %d bytes", GW_EVENT_PAYLOAD_MAX);
            rc = GW_ERR;
        }
    }
    json_decref(o);
    if (rc != GW_OK)
        gw_event_in_free(out);
    return rc;
}

void gw_event_in_free(gw_event_in *in)
{
    gw_free(in->payload);
    in->payload = NULL;
}

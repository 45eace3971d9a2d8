/* test_events.c: the client-events history (store/events.h): ids, the
 * embedded stream's id order, one encoding per event (a complete WebSocket
 * text frame), the shared frame's reference count, replay from a cursor with
 * the high-water id, eviction by window and the resync answer, duplicates
 * and malformed stream entries. */
#include <string.h>
#include <time.h>

#include "core/common.h"
#include "core/alloc.h"
#include "store/events.h"
#include "test.h"

static uint64_t fake_now = 1000000;
static uint64_t clock_fn(void) { return fake_now; }

static gw_event *seen[64];
static int nseen;
static void hook(gw_event *e, void *arg)
{
    GW_UNUSED(arg);
    if (nseen < 64)
        seen[nseen++] = gw_event_ref(e);
}

static gw_event *replayed[64];
static int nreplayed;
static void on_replay(gw_event *e, void *arg)
{
    GW_UNUSED(arg);
    replayed[nreplayed++] = e;
}

static void drop_seen(void)
{
    for (int i = 0; i < nseen; i++)
        gw_event_unref(seen[i]);
    nseen = 0;
}

static int publish(const char *user, const char *type, const char *payload, char id[GW_EVENT_ID_MAX])
{
    gw_event_in in;
    memset(&in, 0, sizeof in);
    snprintf(in.user_id, sizeof in.user_id, "%s", user);
    snprintf(in.type, sizeof in.type, "%s", type);
    in.payload = (char *)payload;
    return gw_events_append_local(&in, id);
}

static void test_ids(void)
{
    gw_event_id a, b;
    ok(gw_event_id_parse("1700000000000-5", 15, &a) == GW_OK && a.ms == 1700000000000ull && a.seq == 5, "ms-seq");
    ok(gw_event_id_parse("42", 2, &b) == GW_OK && b.ms == 42 && b.seq == 0, "ms alone");
    ok(gw_event_id_parse("", 0, &b) == GW_ERR, "empty refused");
    ok(gw_event_id_parse("1-", 2, &b) == GW_ERR, "no seq digits refused");
    ok(gw_event_id_parse("-1", 2, &b) == GW_ERR, "no ms refused");
    ok(gw_event_id_parse("1-2-3", 5, &b) == GW_ERR, "two dashes refused");
    /* Redis ids go up to 2^64-1 in each part (review3 F3: 20 digits were refused) */
    ok(gw_event_id_parse("18446744073709551615-0", 22, &b) == GW_OK && b.ms == UINT64_MAX, "2^64-1 ms accepted");
    ok(gw_event_id_parse("1-18446744073709551615", 22, &b) == GW_OK && b.seq == UINT64_MAX, "2^64-1 seq accepted");
    ok(gw_event_id_parse("18446744073709551616", 20, &b) == GW_ERR, "2^64 refused (overflow)");
    ok(gw_event_id_parse("99999999999999999999", 20, &b) == GW_ERR, "20 nines refused (overflow)");
    ok(gw_event_id_parse("123456789012345678901", 21, &b) == GW_ERR, "21 digits refused");
    gw_event_id x = {5, 1}, y = {5, 2}, z = {6, 0};
    is_int(gw_event_id_cmp(x, y), -1, "seq orders within a ms");
    is_int(gw_event_id_cmp(z, y), 1, "ms first");
    is_int(gw_event_id_cmp(x, x), 0, "equal");
}

static void test_encode_once_and_refcount(void)
{
    fake_now = 1000000;
    gw_events_init(60000, clock_fn, fake_now);
    gw_events_set_hook(hook, NULL);
    char id1[GW_EVENT_ID_MAX], id2[GW_EVENT_ID_MAX];
    ok(publish("alice", "note", "{\"n\":1}", id1) == GW_OK, "publish 1");
    ok(publish("alice", "note", "[2]", id2) == GW_OK, "publish 2 (same ms)");
    is_str(id1, "1000000-0", "first id of the ms");
    is_str(id2, "1000000-1", "second id of the same ms: seq+1");
    is_int(nseen, 2, "the hook saw both, in order");
    gw_event *e = seen[0];
    /* one complete text frame: FIN+text, unmasked, 7-bit length */
    const char *json = "{\"id\":\"1000000-0\",\"type\":\"note\",\"payload\":{\"n\":1},\"created_at_ms\":1000000}";
    is_int(e->frame[0], 0x81, "FIN + text opcode");
    is_int(e->frame[1], strlen(json), "unmasked length");
    ok(e->frame_len == 2 + strlen(json) && memcmp(e->frame + 2, json, strlen(json)) == 0, "the event JSON");
    is_int(atomic_load(&e->refs), 2, "history + hook hold one reference each");
    gw_event_ref(e);
    gw_event_ref(e);
    is_int(atomic_load(&e->refs), 4, "every holder adds one");
    gw_event_unref(e);
    gw_event_unref(e);
    gw_events_reset(); /* the history lets go */
    is_int(atomic_load(&e->refs), 1, "the last holder keeps it alive after the history let go");
    drop_seen(); /* frees (ASan checks the count reached zero exactly once) */
    gw_events_set_hook(NULL, NULL);
}

static void test_replay_and_window(void)
{
    fake_now = 2000000;
    gw_events_init(10000, clock_fn, fake_now);
    char ids[5][GW_EVENT_ID_MAX];
    for (int i = 0; i < 5; i++) {
        fake_now += 1000;
        publish("u", "t", NULL, ids[i]);
    }
    gw_event_id cur, hw;
    gw_event_id_parse(ids[1], strlen(ids[1]), &cur);
    nreplayed = 0;
    is_int(gw_events_replay(&cur, on_replay, NULL, &hw), GW_OK, "a cursor inside the window");
    is_int(nreplayed, 3, "the 3 events after it");
    is_str(replayed[0]->id_text, ids[2], "from the next one");
    is_str(replayed[2]->id_text, ids[4], "to the last");
    is_int(hw.ms, 2005000, "high-water: the last id");
    nreplayed = 0;
    is_int(gw_events_replay(NULL, on_replay, NULL, &hw), GW_OK, "no cursor");
    is_int(nreplayed, 0, "no cursor: nothing replayed");
    is_int(hw.ms, 2005000, "no cursor: live from the last id");
    gw_event_id future = {fake_now + 2000, 0}; /* another process read 2 s further */
    is_int(gw_events_replay(&future, on_replay, NULL, &hw), GW_OK, "a cursor past the last id (another process)");
    ok(gw_event_id_cmp(hw, future) == 0, "high-water is the cursor: nothing at or below it is sent");
    gw_event_id before = {1999999, 0};
    is_int(gw_events_replay(&before, on_replay, NULL, &hw), GW_AGAIN, "a cursor from before the stream started");
    /* Move the clock: the first events leave the window. */
    fake_now = 2003500 + 10000;
    is_int(gw_events_replay(&cur, on_replay, NULL, &hw), GW_AGAIN, "the cursor's successors were evicted: resync");
    is_int(gw_events_count(), 2, "the window keeps the last 2");
    gw_event_id_parse(ids[2], strlen(ids[2]), &cur);
    nreplayed = 0;
    is_int(gw_events_replay(&cur, on_replay, NULL, &hw), GW_OK, "the newest evicted id is still a valid cursor");
    is_int(nreplayed, 2, "and replays what follows it");
    gw_events_reset();
}

static void test_stream_entries(void)
{
    fake_now = 3000000;
    gw_events_init(60000, clock_fn, fake_now - 60000);
    gw_events_set_hook(hook, NULL);
    const char *n3[] = {"user_id", "type", "payload"};
    size_t nl3[] = {7, 4, 7};
    const char *v3[] = {"bob", "ping", "{\"a\":1}"};
    size_t vl3[] = {3, 4, 7};
    is_int(gw_events_append_fields("2990000-0", 9, 3, n3, nl3, v3, vl3), GW_OK, "a stream entry");
    is_int(gw_events_append_fields("2990000-0", 9, 3, n3, nl3, v3, vl3), GW_OK, "the same id again: ignored");
    is_int(nseen, 1, "appended once");
    const char *bad[] = {"bob", "ping", "{nope"};
    size_t badl[] = {3, 4, 5};
    is_int(gw_events_append_fields("2990001-0", 9, 3, n3, nl3, bad, badl), GW_ERR, "payload not JSON: malformed");
    is_int(gw_events_append_fields("2990002-0", 9, 2, n3 + 1, nl3 + 1, v3 + 1, vl3 + 1), GW_ERR, "no user_id");
    is_int(gw_events_append_fields("x-y", 3, 3, n3, nl3, v3, vl3), GW_ERR, "an id that is not ms-seq");
    is_int(nseen, 1, "nothing malformed reached the hook");
    const char *n4[] = {"user_id", "type", "device_session_id"};
    size_t nl4[] = {7, 4, 17};
    const char *v4[] = {"bob", "direct", "dev-1"};
    size_t vl4[] = {3, 6, 5};
    is_int(gw_events_append_fields("2990003-7", 9, 3, n4, nl4, v4, vl4), GW_OK, "targeted entry, no payload");
    is_str(seen[1]->device_session_id, "dev-1", "the target session");
    ok(strstr((const char *)seen[1]->frame + 2, "\"payload\":null") != NULL, "no payload: null");
    drop_seen();
    gw_events_set_hook(NULL, NULL);
    gw_events_reset();
}

/* review3 F3: an entry id far ahead of the clock does not pin the window
 * (events also leave by when this process read them), and the history's
 * memory is bounded whatever the window. */
static void test_history_bounds(void)
{
    fake_now = 5000000;
    gw_events_init(50, clock_fn, fake_now - 50); /* a 50 ms window; the fake wall clock stands still */
    const char *n3[] = {"user_id", "type", "payload"};
    size_t nl3[] = {7, 4, 7};
    const char *v3[] = {"bob", "ping", "{\"a\":1}"};
    size_t vl3[] = {3, 4, 7};
    char future[64];
    int fl = snprintf(future, sizeof future, "%llu-0", (unsigned long long)(fake_now + 86400000ull));
    is_int(gw_events_append_fields(future, (size_t)fl, 3, n3, nl3, v3, vl3), GW_OK, "an id a day ahead");
    gw_event_id fid;
    gw_event_id_parse(future, (size_t)fl, &fid);
    struct timespec ts = {0, 120 * 1000000L};
    nanosleep(&ts, NULL);
    fl = snprintf(future, sizeof future, "%llu-1", (unsigned long long)(fake_now + 86400000ull));
    is_int(gw_events_append_fields(future, (size_t)fl, 3, n3, nl3, v3, vl3), GW_OK, "the next one");
    gw_event_id start = gw_events_start_id();
    ok(gw_event_id_cmp(start, fid) == 0, "the first left the window 50 ms after it was read");
    is_int(gw_events_append_fields("18446744073709551614-0", 22, 3, n3, nl3, v3, vl3), GW_OK,
           "a 20-digit id is an event, not a malformed entry");
    gw_events_reset();

    /* memory: 1 KiB payloads, a bound of about ten of them */
    fake_now = 6000000;
    gw_events_init(0, clock_fn, fake_now - 1); /* window 0: only the count and memory bounds */
    char pay[1100];
    memset(pay, 'x', sizeof pay);
    pay[0] = '"';
    pay[1024] = '"';
    pay[1025] = '\0';
    char id[GW_EVENT_ID_MAX];
    is_int(publish("bob", "big", pay, id), GW_OK, "one event");
    size_t one = gw_events_bytes();
    ok(one > 1024 && one < 2048, "an event's memory: %zu bytes", one);
    gw_events_set_max_bytes(10 * one);
    for (int i = 0; i < 40; i++)
        publish("bob", "big", pay, id);
    ok(gw_events_bytes() <= 10 * one, "held %zu bytes, bound %zu", gw_events_bytes(), 10 * one);
    ok(gw_events_bytes() >= 9 * one, "and still about ten events: %zu", gw_events_bytes());
    gw_event_id cur = {0, 0};
    gw_event_id hw;
    nreplayed = 0;
    is_int(gw_events_replay(&cur, on_replay, NULL, &hw), GW_AGAIN, "a cursor before the evicted ones: resync");
    gw_events_set_max_bytes(0);
    gw_events_reset();
}

/* review3 F8: a cursor past every id read and more than a minute past the
 * clock is a resync, not a silent high-water mark; one a little ahead (another
 * process read further) is served. */
static void test_future_cursor(void)
{
    fake_now = 7000000;
    gw_events_init(60000, clock_fn, fake_now - 60000);
    char id[GW_EVENT_ID_MAX];
    publish("bob", "t", "1", id);
    gw_event_id hw, ahead = {fake_now + 500, 0}, far = {fake_now + 3600000, 0};
    nreplayed = 0;
    is_int(gw_events_replay(&ahead, on_replay, NULL, &hw), GW_OK, "a cursor 0.5 s ahead: served");
    ok(gw_event_id_cmp(hw, ahead) == 0, "as the high-water mark");
    is_int(gw_events_replay(&far, on_replay, NULL, &hw), GW_AGAIN, "an hour ahead: resync");
    gw_events_reset();
}

static void test_publish_json(void)
{
    gw_event_in in;
    char why[200];
    const char *ok1 = "{\"user_id\":\"u\",\"type\":\"t\",\"payload\":{\"x\":[1,2]},\"device_session_id\":\"d\"}";
    is_int(gw_event_in_from_json((const uint8_t *)ok1, strlen(ok1), &in, why, sizeof why), GW_OK, "object payload");
    is_str(in.payload, "{\"x\":[1,2]}", "taken as JSON text (compact)");
    is_str(in.device_session_id, "d", "target");
    gw_event_in_free(&in);
    const char *ok2 = "{\"user_id\":\"u\",\"type\":\"t\",\"payload\":\"[1]\"}";
    is_int(gw_event_in_from_json((const uint8_t *)ok2, strlen(ok2), &in, why, sizeof why), GW_OK, "string payload");
    is_str(in.payload, "[1]", "a string holds JSON text");
    gw_event_in_free(&in);
    const char *bad1 = "{\"type\":\"t\"}";
    is_int(gw_event_in_from_json((const uint8_t *)bad1, strlen(bad1), &in, why, sizeof why), GW_ERR, "no user_id");
    ok(strstr(why, "user_id") != NULL, "why names it: %s", why);
    const char *bad2 = "{\"user_id\":\"u\",\"type\":\"t\",\"payload\":\"{x\"}";
    is_int(gw_event_in_from_json((const uint8_t *)bad2, strlen(bad2), &in, why, sizeof why), GW_ERR,
           "string payload that is not JSON");
    is_int(gw_event_in_from_json((const uint8_t *)"[]", 2, &in, why, sizeof why), GW_ERR, "not an object");
}

static int alt_calls;
static uint8_t *alt_enc(const char *id, const char *type, size_t typen, const char *payload, size_t pn,
                        uint64_t created_ms, size_t *len)
{
    alt_calls++;
    char buf[256];
    int n = snprintf(buf, sizeof buf, "%s|%.*s|%.*s|%llu", id, (int)typen, type, (int)pn, payload,
                     (unsigned long long)created_ms);
    uint8_t *out = gw_malloc((size_t)n);
    memcpy(out, buf, (size_t)n);
    *len = (size_t)n;
    return out;
}

/* The second encoding (gRPC's): made once per event at append, from the
 * same fields, freed with the event (ASan). */
static void test_alt_encoding(void)
{
    fake_now = 3000000;
    gw_events_init(60000, clock_fn, fake_now);
    gw_events_set_hook(hook, NULL);
    gw_events_set_alt_encoder(alt_enc);
    alt_calls = 0;
    char id[GW_EVENT_ID_MAX];
    ok(publish("bob", "tick", "{\"a\": [1, 2]}", id) == GW_OK, "publish");
    ok(publish("bob", "none", NULL, id) == GW_OK, "publish without payload");
    is_int(alt_calls, 2, "encoded once per event");
    is_int(nseen, 2, "both seen");
    const char *want = "3000000-0|tick|{\"a\":[1,2]}|3000000";
    is_mem(seen[0]->alt, seen[0]->alt_len, want, strlen(want), "fields and compact JSON payload");
    const char *want2 = "3000000-1|none|null|3000000";
    is_mem(seen[1]->alt, seen[1]->alt_len, want2, strlen(want2), "no payload is null");
    gw_events_set_alt_encoder(NULL);
    ok(publish("bob", "plain", "1", id) == GW_OK && nseen == 3 && seen[2]->alt == NULL, "no encoder: no alt");
    gw_events_reset();
    drop_seen();
    gw_events_set_hook(NULL, NULL);
}

int main(void)
{
    TEST_RUN(test_ids);
    TEST_RUN(test_encode_once_and_refcount);
    TEST_RUN(test_replay_and_window);
    TEST_RUN(test_stream_entries);
    TEST_RUN(test_history_bounds);
    TEST_RUN(test_future_cursor);
    TEST_RUN(test_publish_json);
    TEST_RUN(test_alt_encoding);
    return test_done();
}

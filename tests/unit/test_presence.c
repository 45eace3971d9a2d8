/* test_presence.c: the embedded presence table (store/presence.c). */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/presence.h"
#include "test.h"

#define TTL 60000u
#define T0 1700000000000ull

static json_t *listing(const char *user, uint64_t now)
{
    char *t = gw_presence_json(user, TTL, now);
    json_t *o = json_loads(t, 0, NULL);
    free(t);
    return o;
}

static void test_put_get_delete(void)
{
    gw_presence_reset();
    gw_presence_put("alice", "i1:c1", "{\"instance_id\":\"i1\"}", T0, TTL, T0);
    gw_presence_put("alice", "i1:c2", "{\"instance_id\":\"i1\"}", T0, TTL, T0);
    gw_presence_put("bob", "i1:c3", "{\"instance_id\":\"i1\"}", T0, TTL, T0);
    json_t *o = listing("alice", T0 + 1);
    is_int((long long)json_object_size(o), 2, "alice has two entries");
    ok(json_is_object(json_object_get(o, "i1:c1")), "value is the JSON object");
    is_str(json_string_value(json_object_get(json_object_get(o, "i1:c2"), "instance_id")), "i1", "value kept");
    json_decref(o);
    o = listing("bob", T0 + 1);
    is_int((long long)json_object_size(o), 1, "bob has one");
    json_decref(o);
    gw_presence_put("alice", "i1:c1", NULL, T0 + 2, TTL, T0 + 2);
    o = listing("alice", T0 + 3);
    is_int((long long)json_object_size(o), 1, "deleted field gone");
    ok(json_object_get(o, "i1:c2") != NULL, "the other stays");
    json_decref(o);
    gw_presence_put("alice", "i1:c2", "{\"instance_id\":\"i2\"}", T0 + 4, TTL, T0 + 4);
    o = listing("alice", T0 + 5);
    is_str(json_string_value(json_object_get(json_object_get(o, "i1:c2"), "instance_id")), "i2", "update replaces the value");
    json_decref(o);
    is_int((long long)gw_presence_count(), 2, "two entries held");
    /* Same characters split differently between user and field are distinct keys. */
    gw_presence_put("ab", "c", "1", T0, TTL, T0);
    gw_presence_put("a", "bc", "2", T0, TTL, T0);
    o = listing("ab", T0 + 1);
    is_int((long long)json_object_size(o), 1, "ab/c is not a/bc");
    json_decref(o);
    gw_presence_reset();
    is_int((long long)gw_presence_count(), 0, "reset empties");
}

static void test_expiry(void)
{
    gw_presence_reset();
    gw_presence_put("u", "dead", "1", T0, TTL, T0);
    gw_presence_put("u", "live", "1", T0 + 30000, TTL, T0 + 30000);
    json_t *o = listing("u", T0 + TTL + 1);
    is_int((long long)json_object_size(o), 1, "the entry past its TTL is left out");
    ok(json_object_get(o, "live") != NULL, "the refreshed one stays");
    json_decref(o);
    is_int((long long)gw_presence_count(), 1, "and pruned from memory");
    /* A refresh moves an entry to the young end: the older one is pruned first. */
    gw_presence_put("u", "a", "1", T0 + 40000, TTL, T0 + 40000);
    gw_presence_put("u", "live", "1", T0 + 50000, TTL, T0 + 50000);
    gw_presence_put("v", "x", "1", T0 + 40000 + TTL + 1, TTL, T0 + 40000 + TTL + 1);
    is_int((long long)gw_presence_count(), 2, "a pruned from memory by the put; live and x held");
    o = listing("u", T0 + 40000 + TTL + 1);
    is_int((long long)json_object_size(o), 1, "a expired, live refreshed");
    ok(json_object_get(o, "live") != NULL, "live kept");
    json_decref(o);
    /* The wall clock went backwards: an entry refreshed "earlier" sits at the
     * young end; the listing still leaves it out once expired. */
    gw_presence_reset();
    gw_presence_put("w", "late", "1", T0 + 100000, TTL, T0 + 100000);
    gw_presence_put("w", "back", "1", T0, TTL, T0); /* clock stepped back */
    o = listing("w", T0 + TTL + 10);
    is_int((long long)json_object_size(o), 1, "expired entry left out though not at the old end");
    ok(json_object_get(o, "late") != NULL, "late kept");
    json_decref(o);
    gw_presence_reset();
}

/* 50,000 entries of one user, refreshed twice, then all expired at once
 * (the old list-based table took 35 s here for this; now 0.2 s: measured, not
 * asserted). */
static void test_many(void)
{
    gw_presence_reset();
    char f[32];
    for (int round = 0; round < 2; round++)
        for (int i = 0; i < 50000; i++) {
            snprintf(f, sizeof f, "i1:c%d", i);
            gw_presence_put("bench", f, "1", T0 + (uint64_t)round, TTL, T0 + (uint64_t)round);
        }
    is_int((long long)gw_presence_count(), 50000, "50,000 entries, one per field");
    json_t *o = listing("bench", T0 + 2);
    is_int((long long)json_object_size(o), 50000, "all listed");
    json_decref(o);
    gw_presence_put("other", "x", "1", T0 + TTL + 5, TTL, T0 + TTL + 5);
    is_int((long long)gw_presence_count(), 1, "all expired ones pruned by one put");
    gw_presence_reset();
}

int main(void)
{
    TEST_RUN(test_put_get_delete);
    TEST_RUN(test_expiry);
    TEST_RUN(test_many);
    return test_done();
}

/* test_browser.c: the browser kind's pure parts: route learning from JSON
 * (learn.c) and the bounded LRU route cache (route_cache.c), including the
 * cache under concurrent workers. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "browser/learn.h"
#include "browser/route_cache.h"
#include "metrics/metrics.h"
#include "test.h"

typedef struct got {
    int n;
    char id[8][160], base[8][1100], jwt[8][600];
} got;

static void collect(void *ud, const char *id, const char *base, const char *jwt)
{
    got *g = ud;
    if (g->n < 8) {
        snprintf(g->id[g->n], sizeof g->id[0], "%s", id);
        snprintf(g->base[g->n], sizeof g->base[0], "%s", base);
        snprintf(g->jwt[g->n], sizeof g->jwt[0], "%s", jwt);
    }
    g->n++;
}

static int learn_as(const char *json, const char *only_id, int max, got *g)
{
    memset(g, 0, sizeof *g);
    return gw_blearn_json(json, strlen(json), only_id, max, collect, g);
}

/* A create answer, no cap in the way. */
static int learn(const char *json, got *g)
{
    return learn_as(json, NULL, 8, g);
}

static void test_learn_flat_and_nested(void)
{
    got g;
    is_int(learn("{\"session_id\":\"abc\",\"base_url\":\"http://vm:8080/s/abc\",\"jwt\":\"t.k-n\"}", &g), 1, "flat");
    is_str(g.id[0], "abc", "id");
    is_str(g.base[0], "http://vm:8080/s/abc", "base");
    is_str(g.jwt[0], "t.k-n", "jwt as is");
    is_int(learn("{\"session_id\":\"x1\",\"base_url\":\"https://h/\",\"jwt\":\"a+b/c\"}", &g), 1, "flat");
    is_str(g.base[0], "https://h", "trailing slash folded to the authority");
    is_str(g.jwt[0], "a%2Bb%2Fc", "jwt percent-encoded");
    /* Only the top level and its members' values: deeper objects and
     * arrays (where an answer may echo a client's JSON) are not looked at. */
    is_int(learn("{\"a\":[1,{\"b\":{\"session_id\":\"x1\",\"base_url\":\"https://h/\",\"jwt\":\"a+b/c\"}}],"
                 "\"c\":{\"session_id\":\"x2\",\"base_url\":\"ws://h2:1/p//\",\"jwt\":\"j\"}}",
                 &g),
           1, "a member's value is looked at, an array's items are not");
    is_str(g.id[0], "x2", "the member's route");
    is_str(g.base[0], "ws://h2:1/p", "trailing slashes folded");
    is_int(learn("{\"session_id\":\"z\",\"base_url\":\"http://h\",\"jwt\":\"j\","
                 "\"inner\":{\"session_id\":\"y\",\"base_url\":\"http://h2\",\"jwt\":\"k\"}}",
                 &g),
           2, "an object that is a route and holds one");
    is_int(learn("[{\"session_id\":\"z\",\"base_url\":\"http://h\",\"jwt\":\"j\"}]", &g), 0,
           "a top-level array is not looked at");
    is_int(learn("{\"meta\":{\"x\":{\"session_id\":\"v\",\"base_url\":\"http://h\",\"jwt\":\"j\"}}}", &g), 0,
           "two levels down is not looked at");
    is_int(learn("not json", &g), -1, "not JSON");
    is_int(learn("{\"session_id\":\"a\",\"base_url\":\"http://h\"}", &g), 0, "no jwt");
    is_int(learn("{\"session_id\":1,\"base_url\":\"http://h\",\"jwt\":\"j\"}", &g), 0, "id not a string");
    is_int(learn("{\"session_id\":\"a\",\"base_url\":\"http://h\",\"jwt\":\"\"}", &g), 0, "empty jwt");
    is_int(learn("{\"session_id\":\"a\\u0000b\",\"base_url\":\"http://h\",\"jwt\":\"j\"}", &g), -1,
           "NUL in id: refused by the parser");
    is_int(learn("{\"session_id\":\"a\",\"base_url\":\"http://h\\u0000x\",\"jwt\":\"j\"}", &g), -1,
           "NUL in url: refused by the parser");
}

static void test_learn_refuses_unsafe(void)
{
    static const char *const bad_urls[] = {
        "unix:/tmp/s", "ftp://h/x",   "http://u:p@h/x",      "http://h/x?q=1", "http://h/x#f",
        "http:///x",   "http://h /x", "javascript:alert(1)", "http://h\\\\x",  "file:///etc/passwd"};
    got g;
    for (size_t i = 0; i < sizeof bad_urls / sizeof *bad_urls; i++) {
        char json[256];
        snprintf(json, sizeof json, "{\"session_id\":\"a\",\"base_url\":\"%s\",\"jwt\":\"j\"}", bad_urls[i]);
        is_int(learn(json, &g), 0, "base_url refused: %s", bad_urls[i]);
    }
    static const char *const bad_ids[] = {"..", ".", "a/b", "a b", "a%2Fb", "", "a?b"};
    for (size_t i = 0; i < sizeof bad_ids / sizeof *bad_ids; i++) {
        char json[256];
        snprintf(json, sizeof json, "{\"session_id\":\"%s\",\"base_url\":\"http://h\",\"jwt\":\"j\"}", bad_ids[i]);
        is_int(learn(json, &g), 0, "id refused: \"%s\"", bad_ids[i]);
    }
    char *long_id = malloc(400);
    memset(long_id, 'a', 129);
    snprintf(long_id + 129, 200, "\",\"base_url\":\"http://h\",\"jwt\":\"j\"}");
    char json[512];
    snprintf(json, sizeof json, "{\"session_id\":\"%s", long_id);
    is_int(learn(json, &g), 0, "id over 128 bytes refused");
    free(long_id);
    /* Too deep: not looked at (but no crash). */
    char deep[400] = "";
    for (int i = 0; i < 70; i++)
        strcat(deep, "[");
    strcat(deep, "{\"session_id\":\"a\",\"base_url\":\"http://h\",\"jwt\":\"j\"}");
    for (int i = 0; i < 70; i++)
        strcat(deep, "]");
    is_int(learn(deep, &g), 0, "nested deeper than the bound");
}

/* Review 4 F2: which session an answer may teach, and how many. */
static void test_learn_scope_and_cap(void)
{
    got g;
    const char *two = "{\"session_id\":\"a\",\"base_url\":\"http://h\",\"jwt\":\"j\","
                      "\"other\":{\"session_id\":\"b\",\"base_url\":\"http://evil\",\"jwt\":\"k\"}}";
    is_int(learn_as(two, "a", 8, &g), 1, "only the named session");
    is_str(g.id[0], "a", "a");
    is_int(learn_as(two, "b", 8, &g), 1, "only b, from the member");
    is_str(g.base[0], "http://evil", "b's");
    is_int(learn_as(two, "c", 8, &g), 0, "neither is c");
    is_int(learn_as(two, NULL, 1, &g), 1, "capped at 1");
    is_str(g.id[0], "a", "the top level first");
    is_int(learn_as(two, NULL, 0, &g), 0, "cap 0: nothing");
    is_int(learn_as("{\"session_id\":\"ab\",\"base_url\":\"http://h\",\"jwt\":\"j\"}", "a", 8, &g), 0,
           "a prefix of the id is not the id");
}

static void test_learn_cdp_ws_url(void)
{
    got g;
    is_int(learn("{\"session_id\":\"s1\",\"cdp_ws_url\":\"ws://vm:9222/s/s1/cdp?x=1&jwt=ab.c%2Bd\"}", &g), 1,
           "cdp_ws_url");
    is_str(g.base[0], "http://vm:9222/s/s1", "base: http, path minus its last segment");
    is_str(g.jwt[0], "ab.c%2Bd", "jwt from the query, as written");
    is_int(learn("{\"session_id\":\"s1\",\"cdp_ws_url\":\"wss://vm/cdp?jwt=t\"}", &g), 1, "wss, short path");
    is_str(g.base[0], "https://vm", "wss -> https, the authority alone");
    is_int(learn("{\"session_id\":\"s1\",\"cdp_ws_url\":\"ws://vm/cdp?token=t\"}", &g), 0, "no jwt in the query");
    is_int(learn("{\"session_id\":\"s1\",\"cdp_ws_url\":\"ws://vm/cdp?jwt=a%2\"}", &g), 0, "bad escape");
    is_int(learn("{\"session_id\":\"s1\",\"cdp_ws_url\":\"ws://vm/cdp?jwt=a&b\"}", &g), 1, "jwt then more");
    is_str(g.jwt[0], "a", "jwt value ends at '&'");
    is_int(learn("{\"session_id\":\"s1\",\"cdp_ws_url\":\"ws://u@vm/cdp?jwt=t\"}", &g), 0, "userinfo refused");
    is_int(learn("{\"session_id\":\"s1\",\"cdp_ws_url\":\"ws://vm/cdp?jwt=\"}", &g), 0, "empty jwt");
    is_int(learn("{\"cdp_ws_url\":\"ws://vm/cdp?jwt=t\"}", &g), 0, "no session_id");
    is_int(
        learn("{\"session_id\":\"s\",\"base_url\":\"ftp://x\",\"jwt\":\"j\",\"cdp_ws_url\":\"ws://vm/c?jwt=t\"}", &g),
        1, "a bad base_url leaves cdp_ws_url");
    is_str(g.base[0], "http://vm", "from cdp_ws_url");
}

static void test_query_param(void)
{
    const char *v;
    size_t vn;
    const char *q = "a=1&jwt=xyz&jwtx=2&b";
    is_int(gw_blearn_query_param(q, strlen(q), "jwt", &v, &vn), 1, "found");
    is_mem(v, vn, "xyz", 3, "value");
    is_int(gw_blearn_query_param(q, strlen(q), "b", &v, &vn), 1, "bare name");
    is_int((int)vn, 0, "empty value");
    is_int(gw_blearn_query_param(q, strlen(q), "jw", &v, &vn), 0, "prefix is not a match");
    is_int(gw_blearn_query_param("xjwt=1", 6, "jwt", &v, &vn), 0, "suffix is not a match");
    is_int(gw_blearn_query_param("", 0, "jwt", &v, &vn), 0, "empty query");
}

static void test_cache_lru(void)
{
    gw_bcache *c = gw_bcache_new(3);
    char base[GW_BROUTE_URL_MAX + 1], jwt[GW_BROUTE_JWT_MAX + 1];
    is_int((int)gw_bcache_put(c, "a", "http://a", "ja", NULL), 0, "a");
    is_int((int)gw_bcache_put(c, "b", "http://b", "jb", NULL), 0, "b");
    is_int((int)gw_bcache_put(c, "c", "http://c", "jc", NULL), 0, "c");
    is_int(gw_bcache_get(c, "a", 1, base, jwt, NULL, NULL), 1, "a found (now most recent)");
    is_str(base, "http://a", "a's base");
    is_str(jwt, "ja", "a's jwt");
    is_int((int)gw_bcache_put(c, "d", "http://d", "jd", NULL), 1, "d evicts one");
    is_int(gw_bcache_get(c, "b", 1, base, jwt, NULL, NULL), 0, "b (least recent) evicted");
    is_int(gw_bcache_get(c, "a", 1, base, jwt, NULL, NULL), 1, "a kept");
    is_int((int)gw_bcache_put(c, "c", "http://c2", "jc2", NULL), 0, "replace c: no eviction");
    is_int((int)gw_bcache_size(c), 3, "size 3");
    is_int(gw_bcache_get(c, "c", 1, base, jwt, NULL, NULL), 1, "c");
    is_str(base, "http://c2", "replaced value");
    is_int(gw_bcache_evict(c, "c", 1), 1, "evict c");
    is_int(gw_bcache_evict(c, "c", 1), 0, "evict c again");
    is_int((int)gw_bcache_size(c), 2, "size 2");
    is_int((int)gw_bcache_set_cap(c, 1), 1, "shrink evicts the least recent");
    is_int(gw_bcache_get(c, "d", 1, base, jwt, NULL, NULL), 0, "d (older) gone");
    is_int(gw_bcache_get(c, "a", 1, base, jwt, NULL, NULL), 1, "a stays");
    is_int(gw_bcache_get(c, "ab", 2, base, jwt, NULL, NULL), 0, "length is part of the key");
    char big[GW_BROUTE_JWT_MAX + 2];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    is_int((int)gw_bcache_put(c, "z", "http://z", big, NULL), 0, "oversized jwt refused");
    is_int(gw_bcache_get(c, "z", 1, base, jwt, NULL, NULL), 0, "not stored");
    gw_metric *m = gw_metric_get("test_bcache_size", GW_METRIC_GAUGE, "t", NULL);
    gw_bcache_set_gauge(c, m);
    is_int((int)gw_metric_value(m), 1, "gauge synced");
    gw_bcache_put(c, "y", "http://y", "j", NULL);
    is_int((int)gw_metric_value(m), 1, "gauge after put with eviction (cap 1)");
    gw_bcache_set_cap(c, 10);
    gw_bcache_put(c, "x", "http://x", "j", NULL);
    is_int((int)gw_metric_value(m), 2, "gauge after growth");
    gw_bcache_free(c);
}

/* Many keys through a small cache: the size never passes the bound, and the
 * most recent keys are the ones kept. */
static void test_cache_credential(void)
{
    gw_bcache *c = gw_bcache_new(4);
    char base[GW_BROUTE_URL_MAX + 1], jwt[GW_BROUTE_JWT_MAX + 1];
    uint8_t cred[GW_BROUTE_CRED_LEN], out[GW_BROUTE_CRED_LEN];
    memset(cred, 0xab, sizeof cred);
    int has = -1;
    gw_bcache_put(c, "a", "http://a", "ja", cred);
    is_int(gw_bcache_get(c, "a", 1, base, jwt, out, &has), 1, "a");
    is_int(has, 1, "bound to a credential");
    is_int(memcmp(out, cred, sizeof cred), 0, "its digest");
    gw_bcache_put(c, "a", "http://a", "ja", NULL);
    is_int(gw_bcache_get(c, "a", 1, base, jwt, out, &has), 1, "a replaced");
    is_int(has, 0, "no credential now");
    gw_bcache_free(c);
}

static void test_cache_many(void)
{
    gw_bcache *c = gw_bcache_new(100);
    char id[32], base[GW_BROUTE_URL_MAX + 1], jwt[GW_BROUTE_JWT_MAX + 1];
    size_t evicted = 0;
    for (int i = 0; i < 5000; i++) {
        snprintf(id, sizeof id, "k%d", i);
        evicted += gw_bcache_put(c, id, "http://h", id, NULL);
    }
    is_int((int)gw_bcache_size(c), 100, "bounded");
    is_int((int)evicted, 4900, "every extra put evicted one");
    int kept = 0;
    for (int i = 4900; i < 5000; i++) {
        snprintf(id, sizeof id, "k%d", i);
        kept += gw_bcache_get(c, id, strlen(id), base, jwt, NULL, NULL) && strcmp(jwt, id) == 0;
    }
    is_int(kept, 100, "the last 100 kept, values right");
    gw_bcache_free(c);
}

typedef struct worker_arg {
    gw_bcache *c;
    int t;
} worker_arg;

static void *worker(void *p)
{
    worker_arg *a = p;
    char id[32], base[GW_BROUTE_URL_MAX + 1], jwt[GW_BROUTE_JWT_MAX + 1];
    for (int i = 0; i < 20000; i++) {
        snprintf(id, sizeof id, "t%d-%d", a->t, i % 300);
        switch (i % 3) {
        case 0:
            gw_bcache_put(a->c, id, "http://h", id, NULL);
            break;
        case 1:
            if (gw_bcache_get(a->c, id, strlen(id), base, jwt, NULL, NULL) && strcmp(jwt, id) != 0)
                abort(); /* a torn value */
            break;
        default:
            gw_bcache_evict(a->c, id, strlen(id));
            break;
        }
    }
    return NULL;
}

static void test_cache_threads(void)
{
    gw_bcache *c = gw_bcache_new(64);
    pthread_t th[4];
    worker_arg args[4];
    for (int i = 0; i < 4; i++) {
        args[i] = (worker_arg){c, i};
        pthread_create(&th[i], NULL, worker, &args[i]);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    ok(gw_bcache_size(c) <= 64, "bounded under 4 threads (%zu)", gw_bcache_size(c));
    gw_bcache_free(c);
}

int main(void)
{
    TEST_RUN(test_learn_flat_and_nested);
    TEST_RUN(test_learn_refuses_unsafe);
    TEST_RUN(test_learn_scope_and_cap);
    TEST_RUN(test_learn_cdp_ws_url);
    TEST_RUN(test_query_param);
    TEST_RUN(test_cache_lru);
    TEST_RUN(test_cache_credential);
    TEST_RUN(test_cache_many);
    TEST_RUN(test_cache_threads);
    gw_metrics_reset();
    return test_done();
}

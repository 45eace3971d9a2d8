/* test_sessions.c: the session view (store/sessions.h): the highest version
 * wins in any order, the token index follows a new digest, revocation hooks
 * run once per revocation, snapshots are validated field by field. */
#include <openssl/sha.h>
#include <string.h>

#include "core/common.h"
#include "store/sessions.h"
#include "test.h"

static gw_session mk(const char *id, uint64_t version, gw_session_status st, const char *bearer)
{
    gw_session s;
    memset(&s, 0, sizeof s);
    snprintf(s.device_session_id, sizeof s.device_session_id, "%s", id);
    snprintf(s.user_id, sizeof s.user_id, "user-%s", id);
    s.status = st;
    s.version = version;
    SHA256((const unsigned char *)bearer, strlen(bearer), s.token_sha256);
    return s;
}

static int revoked_n;
static char revoked_id[GW_SESSION_ID_MAX + 1];
static void on_revoke(const gw_session *s, void *arg)
{
    revoked_n += (int)(intptr_t)arg;
    snprintf(revoked_id, sizeof revoked_id, "%s", s->device_session_id);
}

static void test_highest_version_wins(void)
{
    gw_sessions_reset();
    gw_session s = mk("d1", 5, GW_SESSION_ACTIVE, "b1"), out;
    is_int(gw_sessions_apply(&s), 1, "a new session applies");
    gw_session old = mk("d1", 3, GW_SESSION_REVOKED, "b0");
    is_int(gw_sessions_apply(&old), 0, "a lower version is stale");
    gw_session same = mk("d1", 5, GW_SESSION_REVOKED, "b1");
    is_int(gw_sessions_apply(&same), 0, "an equal version is stale");
    ok(gw_sessions_get("d1", &out) && out.version == 5 && out.status == GW_SESSION_ACTIVE, "the view keeps v5 active");
    gw_session newer = mk("d1", 9, GW_SESSION_ACTIVE, "b2");
    is_int(gw_sessions_apply(&newer), 1, "a higher version applies");
    uint8_t h[32];
    SHA256((const unsigned char *)"b1", 2, h);
    ok(!gw_sessions_find_token(h, &out), "the old bearer no longer finds the session");
    SHA256((const unsigned char *)"b2", 2, h);
    ok(gw_sessions_find_token(h, &out) && strcmp(out.device_session_id, "d1") == 0 && out.version == 9,
       "the new bearer finds it");
    is_int((long long)gw_sessions_count(), 1, "one session");
    ok(!gw_sessions_get("nope", &out), "unknown id not found");
}

static void test_many_and_growth(void)
{
    gw_sessions_reset();
    char id[32], b[32];
    for (int i = 0; i < 5000; i++) {
        snprintf(id, sizeof id, "dev-%d", i);
        snprintf(b, sizeof b, "bearer-%d", i);
        gw_session s = mk(id, 1, GW_SESSION_ACTIVE, b);
        gw_sessions_apply(&s);
    }
    is_int((long long)gw_sessions_count(), 5000, "5000 sessions");
    int found = 0;
    for (int i = 0; i < 5000; i++) {
        snprintf(b, sizeof b, "bearer-%d", i);
        uint8_t h[32];
        gw_session out;
        SHA256((const unsigned char *)b, strlen(b), h);
        snprintf(id, sizeof id, "dev-%d", i);
        found += gw_sessions_find_token(h, &out) && strcmp(out.device_session_id, id) == 0;
    }
    is_int(found, 5000, "every bearer finds its own session after the tables grew");
}

static void test_revocation_hook(void)
{
    gw_sessions_reset();
    revoked_n = 0;
    is_int(gw_sessions_on_revoke(on_revoke, (void *)1), GW_OK, "hook registered");
    static const struct {
        const char *id;
        uint64_t version;
        gw_session_status st;
        int hooks_after;
        const char *what;
    } steps[] = {
        {"r1", 1, GW_SESSION_ACTIVE, 0, "active: no hook"},
        {"r1", 2, GW_SESSION_REVOKED, 1, "revoked: the hook ran once"},
        {"r1", 3, GW_SESSION_REVOKED, 1, "already revoked: not again"},
        {"r2", 1, GW_SESSION_REVOKED, 2, "a session first seen revoked calls it"},
        {"r2", 1, GW_SESSION_REVOKED, 2, "a stale replay does not"},
    };
    for (size_t i = 0; i < GW_ARRAY_LEN(steps); i++) {
        gw_session s = mk(steps[i].id, steps[i].version, steps[i].st, "x");
        gw_sessions_apply(&s);
        is_int(revoked_n, steps[i].hooks_after, "%s", steps[i].what);
    }
    is_str(revoked_id, "r2", "the hook got the session");
}

static void test_parse(void)
{
    static const char hex[] = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    const char *names[] = {"device_session_id", "user_id", "status", "token_sha256", "version", "extra"};
    const char *vals[] = {"dev-1", "bob@example.com", "revoked", hex, "42", "ignored"};
    size_t nl[6], vl[6];
    for (int i = 0; i < 6; i++) {
        nl[i] = strlen(names[i]);
        vl[i] = strlen(vals[i]);
    }
    gw_session s;
    char why[160];
    is_int(gw_session_from_fields(6, names, nl, vals, vl, &s, why, sizeof why), GW_OK, "fields parse");
    ok(strcmp(s.device_session_id, "dev-1") == 0 && s.status == GW_SESSION_REVOKED && s.version == 42 &&
           s.token_sha256[0] == 0x9f && s.token_sha256[31] == 0x08,
       "fields read");
    is_int(gw_session_from_fields(4, names, nl, vals, vl, &s, why, sizeof why), GW_ERR, "version missing");
    ok(strstr(why, "version") != NULL, "why names the field: %s", why);
    const char *bad[][2] = {{"status", "gone"}, {"version", "0"}, {"version", "-1"}, {"version", "12a"},
                            {"token_sha256", "abc"}, {"device_session_id", "a b"}, {"user_id", ""}};
    for (size_t k = 0; k < GW_ARRAY_LEN(bad); k++) {
        const char *v2[6];
        memcpy(v2, vals, sizeof v2);
        size_t vl2[6];
        memcpy(vl2, vl, sizeof vl2);
        for (int i = 0; i < 5; i++)
            if (strcmp(names[i], bad[k][0]) == 0) {
                v2[i] = bad[k][1];
                vl2[i] = strlen(bad[k][1]);
            }
        is_int(gw_session_from_fields(5, names, nl, v2, vl2, &s, why, sizeof why), GW_ERR, "%s=\"%s\" refused",
               bad[k][0], bad[k][1]);
    }
    const char *js = "{\"device_session_id\":\"d\",\"user_id\":\"u\",\"status\":\"active\",\"token_sha256\":"
                     "\"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\",\"version\":7}";
    is_int(gw_session_from_json((const uint8_t *)js, strlen(js), &s, why, sizeof why), GW_OK, "JSON parses");
    is_int((long long)s.version, 7, "JSON version");
    is_int(gw_session_from_json((const uint8_t *)"[1]", 3, &s, why, sizeof why), GW_ERR, "not an object");
    const char *jv = "{\"device_session_id\":\"d\",\"user_id\":\"u\",\"status\":\"active\",\"token_sha256\":"
                     "\"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08\",\"version\":true}";
    is_int(gw_session_from_json((const uint8_t *)jv, strlen(jv), &s, why, sizeof why), GW_ERR, "version true");
}

int main(void)
{
    TEST_RUN(test_highest_version_wins);
    TEST_RUN(test_many_and_growth);
    TEST_RUN(test_revocation_hook);
    TEST_RUN(test_parse);
    gw_sessions_reset();
    return test_done();
}

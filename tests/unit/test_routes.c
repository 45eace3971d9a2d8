/* test_routes.c: a terminal route's agent_upstreams allowlist (issue 8 item
 * 4): pattern parsing, matching token upstreams, the loopback-and-unix
 * default, and the field in a routes file. */
#include "server/routes.h"

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "core/common.h"
#include "test.h"

static int allowed(const gw_route *r, const char *url)
{
    gw_wsc_target t;
    char err[128];
    if (gw_wsc_parse_url(url, &t, err, sizeof err) != GW_OK)
        return -1;
    return gw_route_agent_allowed(r, &t);
}

static void test_default_loopback_and_unix(void)
{
    gw_route r = {0};
    r.kind = GW_ROUTE_TERMINAL;
    static const char *const yes[] = {"ws://127.0.0.1:7681/", "ws://127.9.8.7:1/", "ws://[::1]:7681/",
                                      "ws://localhost:7681/", "ws://LOCALHOST:1/", "unix:/run/wsgate/agent.sock",
                                      "ws://[::ffff:127.0.0.1]:7681/", "wss://127.0.0.1/"};
    for (size_t i = 0; i < GW_ARRAY_LEN(yes); i++)
        is_int(allowed(&r, yes[i]), 1, "default allows %s", yes[i]);
    static const char *const no[] = {"ws://attacker/",           "ws://10.0.0.1:7681/", "ws://0.0.0.0:7681/",
                                     "ws://[::]:7681/",          "ws://128.0.0.1:1/",   "ws://localhost.:7681/",
                                     "ws://127.0.0.1.nip.io:1/", "ws://[::ffff:10.0.0.1]:7681/",
                                     "ws://169.254.169.254:80/"};
    for (size_t i = 0; i < GW_ARRAY_LEN(no); i++)
        is_int(allowed(&r, no[i]), 0, "default refuses %s", no[i]);
}

static void test_patterns(void)
{
    static const char *const pats[] = {"10.1.0.0/16:7681", "agent.internal:*", "[fd00::/8]:7681",
                                       "unix:/run/wsgate/agent-*.sock", "192.168.5.5:22"};
    gw_agent_pattern p[GW_ARRAY_LEN(pats)];
    char err[300];
    for (size_t i = 0; i < GW_ARRAY_LEN(pats); i++)
        is_int(gw_agent_pattern_parse(pats[i], &p[i], err, sizeof err), GW_OK, "%s parses: %.200s", pats[i], err);
    gw_route r = {0};
    r.kind = GW_ROUTE_TERMINAL;
    r.agents = p;
    r.nagents = GW_ARRAY_LEN(p);
    static const struct {
        const char *url;
        int want;
    } cases[] = {
        {"ws://10.1.2.3:7681/", 1},          {"ws://10.1.2.3:7682/", 0},          {"ws://10.2.0.1:7681/", 0},
        {"ws://agent.internal:1/", 1},       {"ws://AGENT.internal:7681/", 1},    {"ws://evil.agent.internal:1/", 0},
        {"ws://agent.internal.evil:1/", 0},  {"ws://[fd12::1]:7681/", 1},         {"ws://[fe80::1]:7681/", 0},
        {"unix:/run/wsgate/agent-3.sock", 1}, {"unix:/run/wsgate/other.sock", 0}, {"unix:/tmp/agent-3.sock", 0},
        {"ws://192.168.5.5:22/", 1},         {"ws://192.168.5.6:22/", 0},         {"ws://127.0.0.1:7681/", 0},
        {"ws://[::ffff:10.1.2.3]:7681/", 1}, /* the same IPv4 address, mapped */
    };
    for (size_t i = 0; i < GW_ARRAY_LEN(cases); i++)
        is_int(allowed(&r, cases[i].url), cases[i].want, "%s", cases[i].url);
    /* An empty list allows nothing at all. */
    gw_agent_pattern none[1];
    r.agents = none;
    r.nagents = 0;
    is_int(allowed(&r, "ws://127.0.0.1:7681/"), 0, "empty allowlist: nothing");
    is_int(allowed(&r, "unix:/run/a.sock"), 0, "empty allowlist: no unix either");
}

/* A unix: glob never crosses a '/' (FNM_PATHNAME), and a socket path with
 * dot segments never reaches the match (review of issue 8, finding 1). */
static void test_unix_glob_segments(void)
{
    gw_agent_pattern p[2];
    char err[300];
    is_int(gw_agent_pattern_parse("unix:/run/agents/*", &p[0], err, sizeof err), GW_OK, "glob parses");
    is_int(gw_agent_pattern_parse("unix:/srv/a?/x.sock", &p[1], err, sizeof err), GW_OK, "? glob parses");
    gw_route r = {0};
    r.kind = GW_ROUTE_TERMINAL;
    r.agents = p;
    r.nagents = 2;
    is_int(allowed(&r, "unix:/run/agents/a1.sock"), 1, "a socket in the directory");
    is_int(allowed(&r, "unix:/run/agents/sub/a1.sock"), 0, "* does not match a subdirectory");
    is_int(allowed(&r, "unix:/run/agents/../evil/x.sock"), -1, ".. refused when parsed");
    is_int(allowed(&r, "unix:/run/agents//x.sock"), -1, "// refused when parsed");
    is_int(allowed(&r, "unix:/srv/ab/x.sock"), 1, "? matches one character");
    is_int(allowed(&r, "unix:/srv/a//x.sock"), -1, "? never stands for a /");
    /* Straight through the matcher, past the parser: '/' is never a glob's. */
    gw_wsc_target t = {0};
    t.addr.is_unix = 1;
    t.addr.set = 1;
    snprintf(t.addr.path, sizeof t.addr.path, "/run/agents/x/../../evil/x.sock");
    is_int(gw_route_agent_allowed(&r, &t), 0, "* never matches across '/'");
    snprintf(t.addr.path, sizeof t.addr.path, "/srv/a//x.sock");
    is_int(gw_route_agent_allowed(&r, &t), 0, "? never matches a '/'");
}

static void test_bad_patterns(void)
{
    static const char *const bad[] = {"",           "host",          "host:",         "host:0",       "host:65536",
                                      "host:x",     ":7681",         "10.0.0.0/33:1", "10.0.0.0/x:1", "[::1]:",
                                      "::1:7681",   "[fd00::/129]:1", "[10.0.0.1]:1", "unix:",        "bad_host:1",
                                      "name/8:1",   "[name]:1"};
    gw_agent_pattern p;
    char err[300];
    for (size_t i = 0; i < GW_ARRAY_LEN(bad); i++) {
        err[0] = '\0';
        is_int(gw_agent_pattern_parse(bad[i], &p, err, sizeof err), GW_ERR, "\"%s\" refused", bad[i]);
        ok(err[0] != '\0', "with a reason for \"%s\"", bad[i]);
    }
}

static void test_routes_file(void)
{
    char path[] = "/tmp/wsgate-test-routes-XXXXXX";
    int fd = mkstemp(path);
    static const char good[] =
        "{\"routes\":[{\"path\":\"/ws/terminal/\",\"kind\":\"terminal\","
        "\"agent_upstreams\":[\"10.0.0.0/8:7681\",\"unix:/run/a.sock\"]}]}";
    ok(fd >= 0 && write(fd, good, sizeof good - 1) == (ssize_t)(sizeof good - 1), "routes file written");
    close(fd);
    gw_config cfg = {0};
    char err[512] = "";
    gw_route_table *t = gw_routes_load(path, &cfg, err, sizeof err);
    ok(t != NULL, "loads: %.200s", err);
    if (t) {
        const gw_route *r = gw_routes_match(t, "/ws/terminal/x", 14);
        ok(r && r->kind == GW_ROUTE_TERMINAL && r->nagents == 2, "terminal route with two patterns");
        is_int(allowed(r, "ws://10.3.3.3:7681/"), 1, "listed CIDR");
        is_int(allowed(r, "ws://127.0.0.1:7681/"), 0, "the default no longer applies");
        is_int(allowed(r, "unix:/run/a.sock"), 1, "listed socket");
        gw_routes_unref(t);
    }
    static const char *const bad[] = {
        "{\"routes\":[{\"path\":\"/t/\",\"kind\":\"terminal\",\"agent_upstreams\":\"10.0.0.0/8:1\"}]}",
        "{\"routes\":[{\"path\":\"/t/\",\"kind\":\"terminal\",\"agent_upstreams\":[\"nope\"]}]}",
        "{\"routes\":[{\"path\":\"/t/\",\"kind\":\"terminal\",\"agent_upstreams\":[7681]}]}",
        "{\"routes\":[{\"path\":\"/e\",\"kind\":\"echo\",\"agent_upstreams\":[\"127.0.0.1:1\"]}]}",
    };
    static const char *const why[] = {"must be an array", "agent_upstreams[0]: \"nope\"",
                                      "agent_upstreams[0]: must be a string", "is for terminal routes"};
    for (size_t i = 0; i < GW_ARRAY_LEN(bad); i++) {
        FILE *f = fopen(path, "w");
        fputs(bad[i], f);
        fclose(f);
        err[0] = '\0';
        t = gw_routes_load(path, &cfg, err, sizeof err);
        ok(t == NULL && strstr(err, why[i]) != NULL, "bad file %zu refused: %.200s", i, err);
        gw_routes_unref(t);
    }
    unlink(path);
}

int main(void)
{
    TEST_RUN(test_default_loopback_and_unix);
    TEST_RUN(test_unix_glob_segments);
    TEST_RUN(test_patterns);
    TEST_RUN(test_bad_patterns);
    TEST_RUN(test_routes_file);
    return test_done();
}

/* test_routes.c: the route table and its kind registry (issue 9): kinds
 * as plug-ins (parse of their fields, default routes, a kind added by one
 * registration line), and a terminal route's agent_upstreams allowlist
 * (issue 8 item 4): pattern parsing, matching token upstreams, the
 * loopback-and-unix default, and the field in a routes file. */
#include "server/routes.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/common.h"
#include "echo/echo.h"
#include "proxy/proxy.h"
#include "terminal/terminal.h"
#include "test.h"

/* Loads a routes file with the given text (NULL text: no file). */
static gw_route_table *load_text(const char *text, const gw_config *cfg, char *err, size_t errcap)
{
    if (!text)
        return gw_routes_load(NULL, cfg, err, errcap);
    char path[] = "/tmp/wsgate-test-routes-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0 || write(fd, text, strlen(text)) != (ssize_t)strlen(text)) {
        snprintf(err, errcap, "cannot write %s", path);
        return NULL;
    }
    close(fd);
    err[0] = '\0';
    gw_route_table *t = gw_routes_load(path, cfg, err, errcap);
    unlink(path);
    return t;
}

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
    r.kind = &gw_kind_terminal;
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
    r.kind = &gw_kind_terminal;
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
    r.kind = &gw_kind_terminal;
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
        ok(r && r->kind == &gw_kind_terminal && r->nagents == 2, "terminal route with two patterns");
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

static void test_defaults(void)
{
    gw_config cfg = {0};
    cfg.echo_idle_timeout_ms = 1234;
    char err[512] = "";
    gw_route_table *t = load_text(NULL, &cfg, err, sizeof err);
    ok(t != NULL, "no file: defaults only (%.150s)", err);
    if (!t)
        return;
    is_int((int)t->n, 2, "one default route per kind that has one");
    const gw_route *e = gw_routes_match(t, "/probe/ws", 9);
    ok(e && e->kind == &gw_kind_echo && e->idle_ms == 1234 && e->protocols &&
           strcmp(e->protocols[0], "wsgate.echo.v1") == 0,
       "/probe/ws is the echo kind with GATEWAY_ECHO_IDLE_TIMEOUT and its subprotocol");
    const gw_route *term = gw_routes_match(t, "/ws/terminal/abc", 16);
    ok(term && term->kind == &gw_kind_terminal && term->connect_timeout_ms == GW_CONNECT_TIMEOUT_MS,
       "/ws/terminal/ is the terminal kind with the default connect timeout");
    ok(gw_routes_match(t, "/other", 6) == NULL, "nothing else matches");
    gw_routes_unref(t);
}

static void test_proxy_fields(void)
{
    gw_config cfg = {0};
    cfg.echo_idle_timeout_ms = 1234;
    char err[512];
    gw_route_table *t = load_text("{\"routes\":[{\"path\":\"/api/\",\"kind\":\"proxy\",\"upstream\":"
                                  "\"http://127.0.0.1:9/base\",\"connect_timeout\":\"3s\",\"strip_prefix\":true},"
                                  "{\"path\":\"/probe/ws\",\"kind\":\"proxy\",\"upstream\":\"unix:/run/x.sock\"},"
                                  "{\"path\":\"/e\",\"kind\":\"echo\",\"idle_timeout\":0}]}",
                                  &cfg, err, sizeof err);
    ok(t != NULL, "proxy routes load (%.150s)", err);
    if (!t)
        return;
    const gw_route *r = gw_routes_match(t, "/api/x", 6);
    ok(r && r->kind == &gw_kind_proxy && r->upstream && r->upstream->target.addr.port == 9 &&
           r->connect_timeout_ms == 3000 && r->read_timeout_ms == GW_READ_TIMEOUT_MS && r->strip_prefix,
       "proxy route: upstream, connect_timeout 3s, the default read timeout, strip_prefix");
    r = gw_routes_match(t, "/probe/ws", 9);
    ok(r && r->kind == &gw_kind_proxy, "a file that defines /probe/ws replaces the echo default");
    r = gw_routes_match(t, "/e", 2);
    ok(r && r->kind == &gw_kind_echo && r->idle_ms == 0, "an echo route's idle_timeout overrides the default");
    ok(gw_routes_match(t, "/ws/terminal/a", 14) != NULL, "the terminal default stays");
    is_int((int)t->n, 4, "three routes and the terminal default");
    gw_routes_unref(t);

    static const char *const bad[] = {
        "{\"routes\":[{\"path\":\"/a\",\"kind\":\"proxy\"}]}",
        "{\"routes\":[{\"path\":\"/a\",\"kind\":\"proxy\",\"upstream\":\"http://h:1\",\"users\":{\"u\":\"http://h:2\"}}]}",
        "{\"routes\":[{\"path\":\"/a\",\"kind\":\"proxy\",\"upstream\":\"https://h:1\"}]}",
        "{\"routes\":[{\"path\":\"/a\",\"kind\":\"nope\"}]}",
        "{\"routes\":[{\"path\":\"/a\",\"kind\":\"echo\",\"colour\":1}]}",
        "{\"routes\":[{\"path\":\"/a\",\"kind\":\"echo\",\"connect_timeout\":\"soon\"}]}",
    };
    static const char *const why[] = {"a proxy route needs an upstream or users", "needs user_header",
                                      "https upstreams are not supported yet",
                                      "kind \"nope\" is not available in this build (echo, proxy, terminal)",
                                      "unknown field \"colour\"", "connect_timeout must be a duration"};
    for (size_t i = 0; i < GW_ARRAY_LEN(bad); i++) {
        t = load_text(bad[i], &cfg, err, sizeof err);
        ok(t == NULL && strstr(err, why[i]) != NULL, "bad route %zu refused: %.200s", i, err);
        gw_routes_unref(t);
    }
}

/* A kind added by a test: its own field, parse and default route. */
static int greet_parse(json_t *o, gw_route *r, const gw_config *cfg, char *err, size_t errcap)
{
    GW_UNUSED(cfg);
    json_t *g = o ? json_object_get(o, "greeting") : NULL;
    if (g && !json_is_string(g)) {
        snprintf(err, errcap, "route %s: greeting must be a string", r->path);
        return GW_ERR;
    }
    r->idle_ms = g ? strlen(json_string_value(g)) : 7;
    return GW_OK;
}
static const char *const greet_fields[] = {"greeting", NULL};
static const gw_kind greet_kind = {.name = "greet",
                                   .flags = GW_KIND_OWN_FIELDS,
                                   .fields = greet_fields,
                                   .default_path = "/hello",
                                   .parse = greet_parse};

static void test_plugin_kind(void)
{
    gw_kind_register(&greet_kind);
    gw_kind_register(&greet_kind); /* twice is once */
    ok(gw_kind_find("greet") == &greet_kind && gw_kind_find("nope") == NULL, "a registered kind is found by name");
    gw_config cfg = {0};
    char err[512];
    gw_route_table *t = load_text("{\"routes\":[{\"path\":\"/g\",\"kind\":\"greet\",\"greeting\":\"hi!\"}]}", &cfg,
                                  err, sizeof err);
    ok(t != NULL, "a route of the new kind loads (%.150s)", err);
    if (t) {
        const gw_route *r = gw_routes_match(t, "/g", 2);
        ok(r && r->kind == &greet_kind && r->idle_ms == 3, "its parse read its own field");
        r = gw_routes_match(t, "/hello", 6);
        ok(r && r->kind == &greet_kind && r->idle_ms == 7, "its default route is there, parsed without a file entry");
        is_int((int)t->n, 4, "the file's route and three defaults");
        gw_routes_unref(t);
    }
    t = load_text("{\"routes\":[{\"path\":\"/e\",\"kind\":\"echo\",\"greeting\":\"x\"}]}", &cfg, err, sizeof err);
    ok(t == NULL && strstr(err, "greeting is for greet routes"), "its own field is refused elsewhere: %.150s", err);
    gw_routes_unref(t);
    t = load_text("{\"routes\":[{\"path\":\"/g\",\"kind\":\"greet\",\"greeting\":5}]}", &cfg, err, sizeof err);
    ok(t == NULL && strstr(err, "greeting must be a string"), "its parse refuses: %.150s", err);
    gw_routes_unref(t);
}

int main(void)
{
    gw_kind_register(&gw_kind_echo);
    gw_kind_register(&gw_kind_proxy);
    gw_kind_register(&gw_kind_terminal);
    TEST_RUN(test_defaults);
    TEST_RUN(test_proxy_fields);
    TEST_RUN(test_default_loopback_and_unix);
    TEST_RUN(test_unix_glob_segments);
    TEST_RUN(test_patterns);
    TEST_RUN(test_bad_patterns);
    TEST_RUN(test_routes_file);
    TEST_RUN(test_plugin_kind);
    return test_done();
}

/* fuzz_config.c: gw_config_load over an environment made of the input's
 * NUL-separated NAME=VALUE pairs, then every parser on the raw input.
 * Checks the invariants the rest of the gateway relies on: a refused load
 * leaves a single non-empty line naming a GATEWAY_ variable; an accepted one
 * respects the documented ranges; a parsed address formats and re-parses to
 * itself. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "config/config.h"
#include "core/common.h"
#include "log/log.h"

#define MAX_VARS 64

static const char *names[MAX_VARS], *values[MAX_VARS];
static size_t nvars;

static const char *fake_getenv(const char *name)
{
    for (size_t i = 0; i < nvars; i++)
        if (strcmp(names[i], name) == 0)
            return values[i];
    return NULL;
}

static void check(int cond)
{
    if (!cond)
        abort();
}

static int addr_eq(const gw_addr *a, const gw_addr *b)
{
    return a->set == b->set && a->is_unix == b->is_unix && strcmp(a->host, b->host) == 0 && a->port == b->port &&
           strcmp(a->path, b->path) == 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 1 << 16)
        return 0;
    /* Environment: split a NUL-terminated copy at each NUL, then at '='. */
    char *env = malloc(size + 1);
    memcpy(env, data, size);
    env[size] = '\0';
    nvars = 0;
    for (char *p = env; p < env + size + 1 && nvars < MAX_VARS;) {
        size_t n = strlen(p);
        char *eq = strchr(p, '=');
        if (eq) {
            *eq = '\0';
            names[nvars] = p;
            values[nvars] = eq + 1;
            nvars++;
        }
        p += n + 1;
    }
    static gw_config c;
    char err[256];
    if (gw_config_load(&c, fake_getenv, err, sizeof err) == GW_OK) {
        check(c.workers >= 1 && c.workers <= 256);
        check(c.ws_max_message_bytes >= 125 && c.ws_max_message_bytes <= (1ull << 30));
        check(!c.ws_ping_interval_ms || c.ws_pong_timeout_ms >= c.ws_ping_interval_ms);
        check(!c.tls_cert_path[0] == !c.tls_key_path[0]);
        check(c.public_addr.set);
        check(c.push_queue_limit >= 1 && c.max_connections >= 1);
        check(c.redis_db >= 0);
    } else {
        check(strncmp(err, "GATEWAY_", 8) == 0);
        check(strchr(err, '\n') == NULL);
    }
    free(env);

    /* Each parser on the raw input (up to its first NUL). */
    char *raw = malloc(size + 1);
    memcpy(raw, data, size);
    raw[size] = '\0';
    uint64_t u;
    int b;
    gw_addr a, a2;
    gw_log_level lv;
    gw_log_format lf;
    gw_parse_duration_ms(raw, &u);
    if (gw_parse_size(raw, &u) == GW_OK && raw[0] != '0')
        check(u > 0);
    if (gw_parse_bool(raw, &b) == GW_OK)
        check(b == 0 || b == 1);
    if (gw_parse_addr(raw, &a) == GW_OK) {
        char f[400];
        gw_addr_format(&a, f, sizeof f);
        check(gw_parse_addr(f, &a2) == GW_OK && addr_eq(&a, &a2));
    }
    gw_log_parse_level(raw, &lv);
    gw_log_parse_format(raw, &lf);

    /* The shared JSON escaper on the whole input: no raw control bytes and no
     * bare quote may come out. */
    char out[4096];
    size_t pos = 0;
    gw_json_escape(out, sizeof out, &pos, (const char *)data, size);
    check(pos <= sizeof out);
    for (size_t i = 0; i < pos; i++) {
        check((unsigned char)out[i] >= 0x20);
        if (out[i] == '"')
            check(i > 0 && out[i - 1] == '\\');
    }
    free(raw);
    return 0;
}

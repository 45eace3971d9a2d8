/* fuzz_browser_learn.c: the browser kind's route learning (learn.c) on
 * arbitrary bytes. Every route it reports must pass the checks the kind
 * relies on: an id that is one safe path segment, a base_url the gateway may
 * dial (gw_blearn_base_url_ok, and gw_wsc_parse_url accepts it as a TCP
 * target), a jwt that is safe to paste into a query, all within the cache's
 * bounds; never another id than the one asked for, never more routes than
 * the cap; and the cache takes each one. The first byte picks the mode
 * (create answer or one session's answer) and the cap (1..4). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "browser/learn.h"
#include "browser/route_cache.h"
#include "core/common.h"
#include "upstream/ws_client.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static gw_bcache *cache;

typedef struct fz {
    const char *only_id;
    int seen;
} fz;

static void check(void *ud, const char *id, const char *base, const char *jwt)
{
    fz *f = ud;
    f->seen++;
    if (f->only_id && strcmp(id, f->only_id) != 0)
        abort();
    if (!gw_blearn_id_ok(id, strlen(id)) || !gw_blearn_base_url_ok(base))
        abort();
    if (!jwt[0] || strlen(jwt) > GW_BROUTE_JWT_MAX || strlen(base) > GW_BROUTE_URL_MAX)
        abort();
    for (const char *p = jwt; *p; p++)
        if (strchr("&#? \r\n+/", *p) || (unsigned char)*p < 0x21 || (unsigned char)*p > 0x7e)
            abort();
    gw_wsc_target t;
    char err[256];
    if (gw_wsc_parse_url(base, &t, err, sizeof err) == GW_OK && t.addr.is_unix)
        abort();
    if (gw_bcache_put(cache, id, base, jwt, NULL) > 1)
        abort();
    char b[GW_BROUTE_URL_MAX + 1], j[GW_BROUTE_JWT_MAX + 1];
    if (!gw_bcache_get(cache, id, strlen(id), b, j, NULL, NULL) || strcmp(b, base) || strcmp(j, jwt))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!cache)
        cache = gw_bcache_new(16);
    if (!size)
        return 0;
    fz f = {.only_id = (data[0] & 1) ? "s1" : NULL};
    int max = 1 + ((data[0] >> 1) & 3);
    int n = gw_blearn_json((const char *)data + 1, size - 1, f.only_id, max, check, &f);
    if (n < -1 || n > max || (n >= 0 && n != f.seen))
        abort();
    if (gw_bcache_size(cache) > 16)
        abort();
    return 0;
}

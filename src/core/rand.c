#include "core/rand.h"

#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>

/* One DRBG call per 4096 masking keys: the call's fixed cost (provider
 * dispatch, reseed checks) is most of what a 4 KiB request cost. */
#define POOL 16384

static _Thread_local unsigned char pool[POOL];
static _Thread_local size_t pool_pos = POOL;

void gw_rand_bytes(void *p, size_t n)
{
    unsigned char *out = p;
    if (n == 4 && POOL - pool_pos >= 4) {
        /* A masking key (one per client frame): fixed-size copies, inlined. */
        memcpy(out, pool + pool_pos, 4);
        memset(pool + pool_pos, 0, 4);
        pool_pos += 4;
        return;
    }
    while (n) {
        if (pool_pos == POOL) {
            if (RAND_bytes(pool, POOL) != 1)
                abort(); /* no entropy: never hand out predictable masks or ids */
            pool_pos = 0;
        }
        size_t k = POOL - pool_pos < n ? POOL - pool_pos : n;
        memcpy(out, pool + pool_pos, k);
        /* Wipe what was handed out so a later memory disclosure cannot
         * replay it. */
        memset(pool + pool_pos, 0, k);
        pool_pos += k;
        out += k;
        n -= k;
    }
}

void gw_rand_hex(char *out, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    unsigned char b[64];
    if (n > sizeof b)
        n = sizeof b;
    gw_rand_bytes(b, n);
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = hex[b[i] >> 4];
        out[2 * i + 1] = hex[b[i] & 15];
    }
    out[2 * n] = '\0';
}

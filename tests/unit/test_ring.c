/* test_ring.c: the agent's scrollback ring. */
#include <stdlib.h>
#include <string.h>

#include "agent/ring.h"
#include "test.h"

static size_t copy(const gw_ring *r, char *out)
{
    size_t n = gw_ring_copy(r, (uint8_t *)out);
    out[n] = '\0';
    return n;
}

static void test_basic(void)
{
    gw_ring r;
    char out[64];
    gw_ring_init(&r, 8);
    is_int(copy(&r, out), 0, "empty");
    gw_ring_write(&r, (const uint8_t *)"abc", 3);
    copy(&r, out);
    is_str(out, "abc", "under capacity");
    gw_ring_write(&r, (const uint8_t *)"defgh", 5);
    copy(&r, out);
    is_str(out, "abcdefgh", "exactly full");
    gw_ring_write(&r, (const uint8_t *)"ij", 2);
    copy(&r, out);
    is_str(out, "cdefghij", "oldest dropped");
    gw_ring_write(&r, (const uint8_t *)"0123456789XY", 12);
    copy(&r, out);
    is_str(out, "456789XY", "write larger than capacity keeps the tail");
    is_int(r.total, 22, "total counts everything");
    gw_ring_free(&r);
}

/* Every chunking of a long stream leaves the same tail. */
static void test_every_split(void)
{
    const char *s = "the quick brown fox jumps over the lazy dog 0123456789";
    size_t n = strlen(s);
    for (size_t cap = 1; cap <= 20; cap++) {
        for (size_t chunk = 1; chunk <= n; chunk++) {
            gw_ring r;
            gw_ring_init(&r, cap);
            for (size_t i = 0; i < n; i += chunk)
                gw_ring_write(&r, (const uint8_t *)s + i, i + chunk <= n ? chunk : n - i);
            char out[64];
            size_t got = copy(&r, out);
            if (got != cap || memcmp(out, s + n - cap, cap) != 0) {
                ok(0, "cap %zu chunk %zu", cap, chunk);
                gw_ring_free(&r);
                return;
            }
            gw_ring_free(&r);
        }
    }
    ok(1, "all capacities and chunk sizes keep the last cap bytes");
}

static void test_utf8_skip(void)
{
    gw_ring r;
    char out[8];
    gw_ring_init(&r, 4);
    gw_ring_write(&r, (const uint8_t *)"ab", 2);
    is_int(gw_ring_utf8_skip(&r), 0, "nothing dropped: no skip");
    /* a b x E2 82 AC y: the last 4 bytes start with the whole euro sign. */
    gw_ring_write(&r, (const uint8_t *)"x\xe2\x82\xacy", 5);
    copy(&r, out);
    is_mem(out, 4, "\xe2\x82\xacy", 4, "tail held");
    is_int(gw_ring_utf8_skip(&r), 0, "sequence intact: no skip");
    gw_ring_free(&r);

    gw_ring_init(&r, 3); /* keeps 82 AC y: the lead byte was dropped */
    gw_ring_write(&r, (const uint8_t *)"ax\xe2\x82\xacy", 6);
    copy(&r, out);
    is_mem(out, 3, "\x82\xacy", 3, "cut tail held");
    is_int(gw_ring_utf8_skip(&r), 2, "skip the two continuation bytes");
    gw_ring_free(&r);

    gw_ring_init(&r, 0);
    gw_ring_write(&r, (const uint8_t *)"abc", 3);
    is_int(r.len, 0, "capacity 0 keeps nothing");
    gw_ring_free(&r);
}

int main(void)
{
    TEST_RUN(test_basic);
    TEST_RUN(test_every_split);
    TEST_RUN(test_utf8_skip);
    return test_done();
}

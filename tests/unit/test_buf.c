/* Unit tests for core/buf: reserve/commit/consume cycle, caps, release. */
#include <stdlib.h>

#include "core/buf.h"
#include "core/common.h"
#include "test.h"

static void test_cycle(void)
{
    gw_buf b = {0};
    ok(b.data == NULL && gw_buf_room(&b) == 0, "empty buffer holds no storage");
    is_int(gw_buf_append(&b, "hello", 5, 64), GW_OK, "append within max");
    is_mem(gw_buf_head(&b), b.len, "hello", 5, "data readable at head");
    gw_buf_consume(&b, 2);
    is_mem(gw_buf_head(&b), b.len, "llo", 3, "consume drops the front");
    is_int(gw_buf_reserve(&b, 10, 64), GW_OK, "reserve more");
    ok(gw_buf_room(&b) >= 10, "room after reserve");
    memcpy(gw_buf_tail(&b), "0123456789", 10);
    gw_buf_commit(&b, 10);
    is_mem(gw_buf_head(&b), b.len, "llo0123456789", 13, "commit appends");
    gw_buf_consume(&b, 13);
    ok(b.data == NULL && b.len == 0, "storage released when emptied");
}

static void test_caps(void)
{
    gw_buf b = {0};
    is_int(gw_buf_append(&b, "abcdefgh", 8, 8), GW_OK, "exactly max fits");
    is_int(gw_buf_append(&b, "x", 1, 8), GW_ERR, "one byte over max refused");
    is_int(b.len, 8, "refused append changed nothing");
    is_int(gw_buf_reserve(&b, (size_t)-1, 8), GW_ERR, "huge reserve refused without overflow");
    gw_buf_release(&b);
    ok(b.data == NULL, "release frees");
}

static void test_compaction(void)
{
    gw_buf b = {0};
    uint8_t chunk[700];
    for (size_t i = 0; i < sizeof chunk; i++)
        chunk[i] = (uint8_t)i;
    gw_buf_append(&b, chunk, sizeof chunk, 1024);
    uint32_t cap = b.cap;
    gw_buf_consume(&b, 600);
    is_int(gw_buf_append(&b, chunk, 600, 1024), GW_OK, "append reuses consumed prefix");
    is_int(b.cap, cap, "no growth needed after compaction");
    is_mem(gw_buf_head(&b), 100, chunk + 600, 100, "old tail kept in order");
    is_mem(gw_buf_head(&b) + 100, 600, chunk, 600, "new data after it");
    gw_buf_release(&b);
}

int main(void)
{
    TEST_RUN(test_cycle);
    TEST_RUN(test_caps);
    TEST_RUN(test_compaction);
    return test_done();
}

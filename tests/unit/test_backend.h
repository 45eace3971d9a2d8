/* test_backend.h: for a unit test that runs on both I/O backends.
 * scripts/run-unit.sh runs the binary of a source that includes this header
 * a second time with WSGATE_IO=io_uring; its main calls
 * test_select_backend() before making any loop. */
#ifndef GW_TEST_BACKEND_H
#define GW_TEST_BACKEND_H

#include <stdio.h>
#include <stdlib.h>

#include "core/common.h"
#include "loop/loop.h"

static inline int test_select_backend(void)
{
    const char *io = getenv("WSGATE_IO");
    if (io && *io && gw_loop_set_backend(io) != GW_OK) {
        printf("# WSGATE_IO=%s: no such backend\n", io);
        return GW_ERR;
    }
    printf("# backend %s\n", gw_loop_backend_name());
    return GW_OK;
}

#endif

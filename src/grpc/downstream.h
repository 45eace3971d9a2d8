/* downstream.h: ExecuteCommand's downstream call, one HTTP/1.1 POST on a
 * connection of its own (Connection: close), driven by the worker's loop
 * (README "gRPC", the downstream contract). */
#ifndef GW_GRPC_DOWNSTREAM_H
#define GW_GRPC_DOWNSTREAM_H

#include <stddef.h>
#include <stdint.h>

#include "loop/loop.h"
#include "upstream/ws_client.h"

#define GW_DOWNSTREAM_MAX_BODY (1024u * 1024) /* larger answers are an INTERNAL failure */

enum {
    GW_DS_OK = 0,          /* a 2xx answer: status, body */
    GW_DS_UNAVAILABLE,     /* not reached, refused the connection, closed early, or 502/503/504 */
    GW_DS_TIMEOUT,         /* no whole answer by the deadline */
    GW_DS_FAILED,          /* any other status, a malformed or oversized answer */
};

typedef struct gw_downstream gw_downstream;
/* The outcome, once, on the loop (never inline from gw_downstream_call):
 * result GW_DS_*, the HTTP status (0 when none), the body (valid during the
 * call), and what went wrong for logs. */
typedef void (*gw_downstream_cb)(void *ud, int result, int status, const uint8_t *body, size_t n, const char *why);

/* POSTs body to target->path + path_suffix with the extra header lines
 * (complete "Name: value\r\n"), answering before deadline_ms (monotonic).
 * NULL never: a failure to start is reported through cb. */
gw_downstream *gw_downstream_call(gw_loop *l, const gw_wsc_target *t, const char *path, const char *headers,
                                  const uint8_t *body, size_t n, uint64_t deadline_ms, gw_downstream_cb cb,
                                  void *ud);
/* Drops the call: cb is not called. */
void gw_downstream_cancel(gw_downstream *d);

#endif

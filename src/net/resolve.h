/* resolve.h: upstream names resolved off the worker loops.
 *
 * getaddrinfo() blocks for as long as DNS takes (seconds when a server does
 * not answer), so a worker never calls it: an address that is a unix path
 * or an IP literal is answered at once; a name is answered from a process-
 * wide cache (GW_RESOLVE_TTL_MS for an answer, GW_RESOLVE_NEG_TTL_MS for a
 * failure), or resolved by a resolver thread whose answer comes back to the
 * asking loop through gw_loop_post, never inline. Concurrent asks for one
 * uncached name share one lookup. */
#ifndef GW_RESOLVE_H
#define GW_RESOLVE_H

#include <sys/socket.h>

#include "loop/loop.h"
#include "net/addr.h"

#define GW_RESOLVE_TTL_MS 30000u    /* an answer is reused this long */
#define GW_RESOLVE_NEG_TTL_MS 2000u /* a failed name is answered from the cache this long */

typedef struct gw_resolved {
    struct sockaddr_storage ss;
    socklen_t len;
} gw_resolved;

/* Without blocking: a unix path, an IP literal (or an empty host: 127.0.0.1)
 * or a cached name: GW_OK and *out filled (a's port applied); a cached
 * failure: GW_ERR with the reason in err; a name to look up: GW_AGAIN. */
int gw_resolve_now(const gw_addr *a, gw_resolved *out, char *err, size_t errcap);

/* The answer: ok, out filled; or !ok with the reason in err. */
typedef void (*gw_resolve_cb)(void *ud, int ok, const gw_resolved *out, const char *err);

typedef struct gw_resolve_req gw_resolve_req;

/* Looks a's name up on a resolver thread; cb runs on l later (never inside
 * this call). Returns the request, to cancel. */
gw_resolve_req *gw_resolve_start(gw_loop *l, const gw_addr *a, gw_resolve_cb cb, void *ud);
/* On l's thread, before cb ran: cb will not run (the lookup may still
 * finish and fill the cache). */
void gw_resolve_cancel(gw_resolve_req *r);

/* Blocking form for the command-line tools (never on a worker): the cache,
 * else getaddrinfo on the calling thread. */
int gw_resolve_blocking(const gw_addr *a, gw_resolved *out, char *err, size_t errcap);

/* Empties the cache (tests). */
void gw_resolve_flush(void);
/* Lookups made by resolver threads or gw_resolve_blocking so far (tests). */
unsigned long gw_resolve_lookups(void);

#endif

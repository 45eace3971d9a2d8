/* sock.h: nonblocking socket helpers. Errors come back as GW_ERR with a
 * readable message in err (anet's shape). */
#ifndef GW_SOCK_H
#define GW_SOCK_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "net/addr.h"
#include "net/resolve.h"

/* Creates a nonblocking, close-on-exec listening socket on a. reuseport sets
 * SO_REUSEPORT (TCP only) so each worker can own one. A unix socket gets
 * mode 0600 whatever the umask; a stale socket at its path (connect
 * refused) is replaced, while a live socket or any other file there makes
 * the call fail. Returns the fd or GW_ERR. */
int gw_sock_listen(const gw_addr *a, int reuseport, int backlog, char *err, size_t errcap);
/* The same for a unix socket of the given type (SOCK_STREAM,
 * SOCK_SEQPACKET) at path: mode 0600, a stale socket replaced. */
int gw_sock_listen_unix(const char *path, int type, int backlog, char *err, size_t errcap);
/* The port a TCP listening socket is bound to (for ":0"), or 0. */
uint16_t gw_sock_local_port(int fd);
/* Starts a nonblocking connect to a (TCP or unix), resolving a name on the
 * calling thread (net/resolve's cache first): for the command-line tools,
 * never on a worker loop. Returns the fd (connect in progress or done) or
 * GW_ERR. */
int gw_sock_connect(const gw_addr *a, char *err, size_t errcap);
/* Starts a nonblocking connect to an address already resolved
 * (gw_resolve_now / gw_resolve_start); a names it in errors. */
int gw_sock_connect_resolved(const gw_resolved *r, const gw_addr *a, char *err, size_t errcap);
/* Accepts one connection on the listening socket lfd, nonblocking and
 * close-on-exec; *ss (ss may be NULL) gets the peer's address. The one
 * accept path of the process. Returns the fd, or -1 with errno set. */
int gw_sock_accept(int lfd, struct sockaddr_storage *ss);
/* The outcome of a nonblocking connect once its socket reported writable:
 * 0, or the errno it failed with (SO_ERROR). The one connect-completion
 * path. */
int gw_sock_connect_result(int fd);
/* Sets TCP_NODELAY (ignored for unix sockets). */
void gw_sock_nodelay(int fd);
/* Formats the peer address ip (no port) into out; "unix" for unix sockets. */
void gw_sock_ntop(const struct sockaddr_storage *ss, char *out, size_t cap);

#endif

/* upgrade.h: in-place binary upgrades over GATEWAY_UPGRADE_SOCKET.
 *
 * A running `wsgate serve` listens on the unix socket (SOCK_SEQPACKET, mode
 * 0600, same user only). A new `wsgate serve` with the same setting connects
 * at start, asks for the listening sockets and gets every one of them
 * (public per worker, admin) over SCM_RIGHTS, each named by role and
 * configured address in a small versioned JSON message. It serves on them
 * (binding fresh only what it did not get, closing what it does not use),
 * then says "ready"; the old process answers "draining" and drains exactly
 * as on SIGTERM. Both accept from the same sockets (the same accept queues)
 * until the old one's listeners close: no connection attempt is refused.
 *
 * Protocol (version 1), one JSON object per datagram:
 *   new -> old  {"v":1,"op":"takeover","pid":N}
 *   old -> new  {"v":1,"op":"sockets","pid":P,"version":"...","sockets":[{"role","addr","worker"}...]}
 *               then {"v":1,"op":"fds","n":k} datagrams carrying k descriptors each, in that order
 *               (or {"v":1,"op":"refused","error":"..."})
 *   new -> old  {"v":1,"op":"ready"}
 *   old -> new  {"v":1,"op":"draining"}
 */
#ifndef GW_UPGRADE_H
#define GW_UPGRADE_H

#include <stddef.h>

/* New process, before its listeners are opened: with GATEWAY_UPGRADE_SOCKET
 * set, takes the listening sockets of the process behind it. Nothing there,
 * or a stale socket (connect refused: its process is gone, the file is
 * removed): GW_OK with nothing inherited, and the upgrade listener is bound.
 * A process that does not answer within 5 s, refuses, or anything else at
 * the path: GW_ERR with one line in err (the caller exits 1 rather than
 * binding beside a live gateway). */
int gw_upgrade_takeover(const char *path, char *err, size_t errcap);
/* An inherited listening socket for (role, addr), now the caller's, or -1. */
int gw_upgrade_take(const char *role, const char *addr);
/* Closes the inherited sockets nobody took (logged). */
void gw_upgrade_close_unused(void);
/* After the workers started: tells the old process to drain (when sockets
 * were inherited), binds the upgrade listener if not yet bound and starts
 * the thread that serves it. */
void gw_upgrade_start(void);
/* Taken around setting the draining flag: no hand-over overlaps it. */
void gw_upgrade_lock(void);
void gw_upgrade_unlock(void);
/* 1 once a new process took the sockets and asked this one to drain. */
int gw_upgrade_handed_over(void);
/* Stops the thread and closes the listener (exit). */
void gw_upgrade_stop(void);

#endif

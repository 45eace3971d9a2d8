/* addr.h: a listen or upstream address and its text form. Transport-level:
 * the configuration and the subcommands parse their address strings with
 * it; net/sock connects and listens on it. */
#ifndef GW_ADDR_H
#define GW_ADDR_H

#include <stddef.h>
#include <stdint.h>

/* A listen or upstream address: "HOST:PORT", ":PORT" (all interfaces),
 * "[v6]:PORT", or "unix:/path". */
typedef struct gw_addr {
    int set;             /* 0 when the variable was empty (listener off) */
    int is_unix;
    char host[256];      /* "" for all interfaces; no brackets for IPv6 */
    uint16_t port;
    char path[108];      /* unix socket path */
} gw_addr;

/* Parses s into out: GW_OK, or GW_ERR (out untouched). */
int gw_parse_addr(const char *s, gw_addr *out);
/* Formats an address for logs ("127.0.0.1:8080", "[::1]:8080", "unix:/p",
 * ":8080"; "off" when unset). */
void gw_addr_format(const gw_addr *a, char *out, size_t cap);
/* 1 for a unix socket or a loopback host (127.0.0.0/8, ::1, localhost). */
int gw_addr_is_loopback(const gw_addr *a);

#endif

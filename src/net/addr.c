/* addr.c: listen and upstream addresses (see addr.h). */
#include "net/addr.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "core/common.h"

static int is_digit(char c) { return c >= '0' && c <= '9'; }

/* Letters, digits, dots and dashes; no empty label, no leading dash. */
static int valid_hostname(const char *h, size_t n)
{
    if (n > 253)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = h[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c) || c == '.' || c == '-';
        if (!ok)
            return 0;
        if (c == '.' && (i == 0 || h[i - 1] == '.'))
            return 0;
        if (c == '-' && (i == 0 || h[i - 1] == '.'))
            return 0;
    }
    return 1;
}

/* One to five decimal digits and nothing else, at most 65535. */
static int parse_port(const char *s, uint16_t *out)
{
    size_t n = strlen(s);
    if (n == 0 || n > 5)
        return GW_ERR;
    unsigned v = 0;
    for (size_t i = 0; i < n; i++) {
        if (!is_digit(s[i]))
            return GW_ERR;
        v = v * 10 + (unsigned)(s[i] - '0');
    }
    if (v > 65535)
        return GW_ERR;
    *out = (uint16_t)v;
    return GW_OK;
}

int gw_parse_addr(const char *s, gw_addr *out)
{
    gw_addr a;
    memset(&a, 0, sizeof a);
    if (!s || !*s)
        return GW_ERR;
    if (strncmp(s, "unix:", 5) == 0) {
        size_t n = strlen(s + 5);
        if (n == 0 || n >= sizeof a.path)
            return GW_ERR;
        memcpy(a.path, s + 5, n + 1);
        a.is_unix = 1;
    } else if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':')
            return GW_ERR;
        size_t n = (size_t)(close - (s + 1));
        struct in6_addr tmp;
        if (n == 0 || n >= INET6_ADDRSTRLEN)
            return GW_ERR;
        memcpy(a.host, s + 1, n);
        a.host[n] = '\0';
        if (inet_pton(AF_INET6, a.host, &tmp) != 1)
            return GW_ERR;
        if (parse_port(close + 2, &a.port) != GW_OK)
            return GW_ERR;
    } else {
        const char *colon = strchr(s, ':');
        /* A second colon means an IPv6 address without brackets. */
        if (!colon || strchr(colon + 1, ':'))
            return GW_ERR;
        size_t n = (size_t)(colon - s);
        if (n >= sizeof a.host || !valid_hostname(s, n))
            return GW_ERR;
        memcpy(a.host, s, n);
        a.host[n] = '\0';
        if (parse_port(colon + 1, &a.port) != GW_OK)
            return GW_ERR;
    }
    a.set = 1;
    *out = a;
    return GW_OK;
}

/* An unset address (listener off) is written as "off". */
void gw_addr_format(const gw_addr *a, char *out, size_t cap)
{
    if (cap == 0)
        return;
    if (!a->set)
        snprintf(out, cap, "off");
    else if (a->is_unix)
        snprintf(out, cap, "unix:%s", a->path);
    else if (strchr(a->host, ':'))
        snprintf(out, cap, "[%s]:%u", a->host, (unsigned)a->port);
    else
        snprintf(out, cap, "%s:%u", a->host, (unsigned)a->port);
}

/* 1 for a unix socket or a loopback host (127.0.0.0/8, ::1, ::ffff:127.x,
 * "localhost"); an empty host (all interfaces) or any other name is not. */
int gw_addr_is_loopback(const gw_addr *a)
{
    if (!a->set)
        return 0;
    if (a->is_unix)
        return 1;
    if (strcasecmp(a->host, "localhost") == 0)
        return 1;
    struct in_addr v4;
    struct in6_addr v6;
    if (inet_pton(AF_INET, a->host, &v4) == 1)
        return (ntohl(v4.s_addr) >> 24) == 127;
    if (inet_pton(AF_INET6, a->host, &v6) == 1)
        return IN6_IS_ADDR_LOOPBACK(&v6) || (IN6_IS_ADDR_V4MAPPED(&v6) && v6.s6_addr[12] == 127);
    return 0;
}

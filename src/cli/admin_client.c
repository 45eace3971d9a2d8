/* admin_client.c: see admin_client.h. */
#include "cli/admin_client.h"

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "config/config.h"
#include "core/common.h"

static int connect_admin(const gw_addr *a, char *err, size_t cap)
{
    if (a->is_unix) {
        int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_un un = {.sun_family = AF_UNIX};
        snprintf(un.sun_path, sizeof un.sun_path, "%s", a->path);
        if (fd < 0 || connect(fd, (struct sockaddr *)&un, sizeof un) != 0) {
            snprintf(err, cap, "connect unix:%s: %s", a->path, strerror(errno));
            if (fd >= 0)
                close(fd);
            return -1;
        }
        return fd;
    }
    const char *host = a->host[0] && strcmp(a->host, "0.0.0.0") != 0 && strcmp(a->host, "::") != 0 ? a->host
                                                                                                    : "127.0.0.1";
    char port[8];
    snprintf(port, sizeof port, "%u", a->port);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        snprintf(err, cap, "resolve %s: %s", host, gai_strerror(rc));
        return -1;
    }
    int fd = -1;
    for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
        fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd >= 0 && connect(fd, ai->ai_addr, ai->ai_addrlen) == 0)
            break;
        snprintf(err, cap, "connect %s:%s: %s", host, port, strerror(errno));
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    return fd;
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

int gw_admin_post(const char *path, const char *body, char **resp_body, char *err, size_t errcap)
{
    *resp_body = NULL;
    const char *addr_s = getenv("GATEWAY_ADMIN_HTTP_ADDR");
    gw_addr addr;
    if (!addr_s || !addr_s[0] || gw_parse_addr(addr_s, &addr) != GW_OK || !addr.set) {
        snprintf(err, errcap, "GATEWAY_ADMIN_HTTP_ADDR must name the gateway's admin listener");
        return -1;
    }
    const char *tok = getenv("GATEWAY_ADMIN_TOKEN");
    int fd = connect_admin(&addr, err, errcap);
    if (fd < 0)
        return 0;
    char head[1024];
    int hn = snprintf(head, sizeof head,
                      "POST %s HTTP/1.1\r\nHost: wsgate-admin\r\nContent-Type: application/json\r\n"
                      "Content-Length: %zu\r\nConnection: close\r\n%s%s%s\r\n",
                      path, strlen(body), tok && tok[0] ? "Authorization: Bearer " : "", tok && tok[0] ? tok : "",
                      tok && tok[0] ? "\r\n" : "");
    if (hn < 0 || (size_t)hn >= sizeof head || write_all(fd, head, (size_t)hn) != 0 ||
        write_all(fd, body, strlen(body)) != 0) {
        snprintf(err, errcap, "cannot send the request");
        close(fd);
        return 0;
    }
    /* Read the whole answer (the server closes), 10 s at most. */
    size_t cap = 65536, n = 0;
    char *resp = malloc(cap);
    if (!resp) {
        close(fd);
        snprintf(err, errcap, "out of memory");
        return 0;
    }
    for (;;) {
        struct pollfd pf = {fd, POLLIN, 0};
        if (poll(&pf, 1, 10000) <= 0)
            break;
        if (n + 1 >= cap)
            break;
        ssize_t r = read(fd, resp + n, cap - 1 - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    resp[n] = '\0';
    int status = 0;
    char *bodyp = strstr(resp, "\r\n\r\n");
    if (sscanf(resp, "HTTP/1.%*d %d", &status) != 1 || !bodyp) {
        snprintf(err, errcap, "no valid HTTP answer from %s", addr_s);
        free(resp);
        return 0;
    }
    bodyp += 4;
    memmove(resp, bodyp, strlen(bodyp) + 1);
    *resp_body = resp;
    return status;
}

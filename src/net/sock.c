#include "net/sock.h"

#include "net/resolve.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "core/common.h"

static int fail(char *err, size_t cap, const char *what, const gw_addr *a)
{
    char addr[512];
    gw_addr_format(a, addr, sizeof addr);
    snprintf(err, cap, "%s %s: %s", what, addr, strerror(errno));
    return GW_ERR;
}

static int resolve(const gw_addr *a, int passive, struct sockaddr_storage *ss, socklen_t *len, char *err,
                   size_t cap)
{
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    char port[8];
    snprintf(port, sizeof port, "%u", a->port);
    if (passive)
        hints.ai_flags = AI_PASSIVE;
    const char *host = a->host[0] ? a->host : NULL;
    if (!host && !passive)
        host = "127.0.0.1";
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0 || !res) {
        snprintf(err, cap, "resolve %s: %s", a->host, gai_strerror(rc));
        return GW_ERR;
    }
    /* For ":port" prefer IPv6 any (dual stack) when the machine has it; else
     * the first answer. */
    struct addrinfo *pick = res;
    if (!a->host[0]) {
        for (struct addrinfo *r = res; r; r = r->ai_next)
            if (r->ai_family == AF_INET6) {
                pick = r;
                break;
            }
    }
    memcpy(ss, pick->ai_addr, pick->ai_addrlen);
    *len = pick->ai_addrlen;
    freeaddrinfo(res);
    return GW_OK;
}

/* Makes room for a unix socket at un's path: nothing there, or a stale
 * socket (a connect to it is refused: its process is gone), which is
 * removed. A regular file, a directory, a symlink or a socket someone
 * still accepts on is left alone and the listen fails. */
static int unix_path_free(const struct sockaddr_un *un, const gw_addr *a, char *err, size_t cap)
{
    struct stat st;
    if (lstat(un->sun_path, &st) != 0)
        return errno == ENOENT ? GW_OK : fail(err, cap, "listen", a);
    if (!S_ISSOCK(st.st_mode)) {
        snprintf(err, cap, "listen unix:%s: the path exists and is not a socket; not replacing it", un->sun_path);
        return GW_ERR;
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return fail(err, cap, "socket", a);
    int rc = connect(fd, (const struct sockaddr *)un, sizeof *un), e = errno;
    close(fd);
    if (rc == 0 || e == EAGAIN) {
        snprintf(err, cap, "listen unix:%s: another process is listening on this socket", un->sun_path);
        return GW_ERR;
    }
    if (e != ECONNREFUSED) {
        snprintf(err, cap, "listen unix:%s: an existing socket that cannot be probed (%s); not replacing it",
                 un->sun_path, strerror(e));
        return GW_ERR;
    }
    if (unlink(un->sun_path) != 0 && errno != ENOENT)
        return fail(err, cap, "unlink stale socket", a);
    return GW_OK;
}

/* A unix socket is mode 0600 whatever the umask: it is chmod-ed between
 * bind and listen. A connect is only accepted once listen has run (before,
 * it is refused), so the umask's mode never lets anyone in, and no
 * process-wide umask change can race other threads creating files. */
static int listen_unix(const gw_addr *a, int type, int backlog, char *err, size_t errcap)
{
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    if (strlen(a->path) >= sizeof un.sun_path) {
        snprintf(err, errcap, "listen unix:%s: the path is longer than %zu bytes", a->path, sizeof un.sun_path - 1);
        return GW_ERR;
    }
    memcpy(un.sun_path, a->path, strlen(a->path) + 1);
    if (unix_path_free(&un, a, err, errcap) != GW_OK)
        return GW_ERR;
    int fd = socket(AF_UNIX, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return fail(err, errcap, "socket", a);
    if (bind(fd, (struct sockaddr *)&un, sizeof un) < 0) {
        fail(err, errcap, "listen", a);
        close(fd);
        return GW_ERR;
    }
    if (chmod(un.sun_path, 0600) < 0 || listen(fd, backlog) < 0) {
        fail(err, errcap, "listen", a);
        close(fd);
        unlink(un.sun_path);
        return GW_ERR;
    }
    return fd;
}

int gw_sock_listen_unix(const char *path, int type, int backlog, char *err, size_t errcap)
{
    gw_addr a = {.set = 1, .is_unix = 1};
    snprintf(a.path, sizeof a.path, "%s", path);
    return listen_unix(&a, type, backlog, err, errcap);
}

int gw_sock_listen(const gw_addr *a, int reuseport, int backlog, char *err, size_t errcap)
{
    int fd, one = 1;
    if (a->is_unix)
        return listen_unix(a, SOCK_STREAM, backlog, err, errcap);
    struct sockaddr_storage ss;
    socklen_t len;
    if (resolve(a, 1, &ss, &len, err, errcap) != GW_OK)
        return GW_ERR;
    fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return fail(err, errcap, "socket", a);
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (reuseport)
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    if (ss.ss_family == AF_INET6) {
        int off = 0;
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
    }
    if (bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, backlog) < 0) {
        fail(err, errcap, "listen", a);
        close(fd);
        return GW_ERR;
    }
    return fd;
}

uint16_t gw_sock_local_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
        return 0;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return 0;
}

int gw_sock_connect_resolved(const gw_resolved *r, const gw_addr *a, char *err, size_t errcap)
{
    int fd = socket(r->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return fail(err, errcap, "socket", a);
    if (connect(fd, (const struct sockaddr *)&r->ss, r->len) < 0 && errno != EINPROGRESS) {
        fail(err, errcap, "connect", a);
        close(fd);
        return GW_ERR;
    }
    if (!a->is_unix)
        gw_sock_nodelay(fd);
    return fd;
}

int gw_sock_connect(const gw_addr *a, char *err, size_t errcap)
{
    gw_resolved r;
    if (gw_resolve_blocking(a, &r, err, errcap) != GW_OK)
        return GW_ERR;
    return gw_sock_connect_resolved(&r, a, err, errcap);
}

void gw_sock_nodelay(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

void gw_sock_ntop(const struct sockaddr_storage *ss, char *out, size_t cap)
{
    if (ss->ss_family == AF_INET) {
        inet_ntop(AF_INET, &((const struct sockaddr_in *)ss)->sin_addr, out, (socklen_t)cap);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
        if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr))
            inet_ntop(AF_INET, &s6->sin6_addr.s6_addr[12], out, (socklen_t)cap);
        else
            inet_ntop(AF_INET6, &s6->sin6_addr, out, (socklen_t)cap);
    } else {
        snprintf(out, cap, "unix");
    }
}

int gw_sock_accept(int lfd, struct sockaddr_storage *ss)
{
    struct sockaddr_storage tmp;
    socklen_t len = sizeof tmp;
    int fd = accept4(lfd, (struct sockaddr *)&tmp, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0 && ss)
        *ss = tmp;
    return fd;
}

int gw_sock_connect_result(int fd)
{
    int soerr = 0;
    socklen_t sl = sizeof soerr;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0)
        return errno;
    return soerr;
}

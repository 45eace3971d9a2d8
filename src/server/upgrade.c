/* upgrade.c: in-place binary upgrades: the listening sockets handed from the
 * running process to a new one over GATEWAY_UPGRADE_SOCKET (upgrade.h). */
#include "server/upgrade.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "net/addr.h"

#include "core/alloc.h"
#include "core/common.h"
#include "log/log.h"
#include "net/sock.h"
#include "server/state.h"

#define UPGRADE_V 1
#define ANSWER_MS 5000       /* the old process answers a takeover within this */
#define READY_MS 60000       /* the new process says ready within this (store checks, routes) */
#define FDS_PER_MSG 200      /* below SCM_MAX_FD (253) */
#define MSG_MAX 65536

typedef struct inherited {
    char role[16];
    char addr[300];
    int worker;
    int fd;
} inherited;

static struct {
    char path[108];
    int lfd;                 /* our upgrade listener, or -1 */
    ino_t ino;               /* its inode: removed at exit only while the path is still ours */
    int conn;                /* new process: the connection to the old one until ready */
    int old_pid;
    inherited *in;
    size_t nin;
    int stop_pipe[2];
    pthread_t thread;
    int thread_on;
    pthread_mutex_t mu;      /* hand-over vs. the start of a drain */
    atomic_int handed_over;
} U = {.lfd = -1, .conn = -1, .stop_pipe = {-1, -1}, .mu = PTHREAD_MUTEX_INITIALIZER};

void gw_upgrade_lock(void) { pthread_mutex_lock(&U.mu); }
void gw_upgrade_unlock(void) { pthread_mutex_unlock(&U.mu); }
int gw_upgrade_handed_over(void) { return atomic_load(&U.handed_over); }

/* ============================== message helpers ============================= */

/* Waits until fd is readable: 1, 0 on timeout, -1 when the stop pipe fired. */
static int wait_readable(int fd, int timeout_ms)
{
    struct pollfd p[2] = {{.fd = fd, .events = POLLIN}, {.fd = U.stop_pipe[0], .events = POLLIN}};
    for (;;) {
        int r = poll(p, U.stop_pipe[0] >= 0 ? 2 : 1, timeout_ms);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            return 0;
        if (p[1].revents)
            return -1;
        return 1;
    }
}

static int send_json(int fd, json_t *j, const int *fds, size_t nfds)
{
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    if (!s)
        return GW_ERR;
    struct iovec iov = {.iov_base = s, .iov_len = strlen(s)};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1};
    char cbuf[CMSG_SPACE(sizeof(int) * FDS_PER_MSG)];
    if (nfds) {
        memset(cbuf, 0, sizeof cbuf);
        mh.msg_control = cbuf;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(cm), fds, sizeof(int) * nfds);
    }
    ssize_t n;
    do
        n = sendmsg(fd, &mh, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    free(s);
    return n == (ssize_t)iov.iov_len ? GW_OK : GW_ERR;
}

/* Receives one datagram within timeout_ms: its JSON object (with "v" 1), and
 * up to *nfds descriptors into fds (*nfds set to how many came). NULL with
 * why set on timeout, EOF, a bad message or a version this build does not
 * speak. */
static json_t *recv_json(int fd, int timeout_ms, int *fds, size_t *nfds, const char **why)
{
    size_t cap = nfds ? *nfds : 0;
    if (nfds)
        *nfds = 0;
    int w = wait_readable(fd, timeout_ms);
    if (w <= 0) {
        *why = w == 0 ? "no answer in time" : "stopping";
        return NULL;
    }
    char *buf = gw_malloc(MSG_MAX);
    char cbuf[CMSG_SPACE(sizeof(int) * FDS_PER_MSG)];
    struct iovec iov = {.iov_base = buf, .iov_len = MSG_MAX - 1};
    struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof cbuf};
    ssize_t n;
    do
        n = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
    while (n < 0 && errno == EINTR);
    for (struct cmsghdr *cm = n >= 0 ? CMSG_FIRSTHDR(&mh) : NULL; cm; cm = CMSG_NXTHDR(&mh, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
            continue;
        size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int *got = (int *)(void *)CMSG_DATA(cm);
        for (size_t i = 0; i < k; i++) {
            if (nfds && *nfds < cap)
                fds[(*nfds)++] = got[i];
            else
                close(got[i]);
        }
    }
    json_t *j = NULL;
    if (n <= 0) {
        *why = n == 0 ? "the other process closed the connection" : "receive failed";
    } else if (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
        *why = "message truncated";
    } else {
        buf[n] = '\0';
        j = json_loads(buf, 0, NULL);
        if (!j || !json_is_object(j)) {
            *why = "not a JSON object";
        } else if (json_integer_value(json_object_get(j, "v")) != UPGRADE_V) {
            *why = "protocol version not spoken by this build";
        } else {
            gw_free(buf);
            return j;
        }
    }
    json_decref(j);
    gw_free(buf);
    if (nfds) {
        for (size_t i = 0; i < *nfds; i++)
            close(fds[i]);
        *nfds = 0;
    }
    return NULL;
}

static const char *op_of(json_t *j) { return json_string_value(json_object_get(j, "op")); }

static json_t *msg(const char *op)
{
    json_t *j = json_object();
    json_object_set_new(j, "v", json_integer(UPGRADE_V));
    json_object_set_new(j, "op", json_string(op));
    return j;
}

/* ============================ old process: hand over ======================== */

typedef struct handout {
    json_t *list;
    int *fds;
    size_t n;
} handout;

static void handout_add(handout *h, const char *role, const gw_addr *a, int worker, int fd)
{
    char addr[300];
    gw_addr_format(a, addr, sizeof addr);
    json_t *s = json_object();
    json_object_set_new(s, "role", json_string(role));
    json_object_set_new(s, "addr", json_string(addr));
    json_object_set_new(s, "worker", json_integer(worker));
    json_array_append_new(h->list, s);
    h->fds[h->n++] = fd;
}

/* Sends every listening socket (under U.mu: no drain closes them meanwhile). */
static int send_sockets(int c, const char **why)
{
    if (atomic_load(&gw_srv.draining)) {
        *why = "this process is draining";
        return GW_ERR;
    }
    handout h = {.list = json_array(), .fds = gw_calloc(2 * (size_t)gw_srv.nworkers + 1, sizeof(int))};
    for (int i = 0; i < gw_srv.nworkers; i++)
        if (gw_srv.workers[i].pub_lis.fd >= 0)
            handout_add(&h, "public", &gw_srv.cfg.public_addr, i, gw_srv.workers[i].pub_lis.fd);
    if (gw_srv.workers[0].admin_lis.fd >= 0)
        handout_add(&h, "admin", &gw_srv.cfg.admin_addr, 0, gw_srv.workers[0].admin_lis.fd);
    /* the protocol listener (gRPC): one SO_REUSEPORT socket per worker */
    for (int i = 0; i < gw_srv.nworkers; i++)
        if (gw_srv.workers[i].proto_lis.fd >= 0)
            handout_add(&h, "grpc", &gw_srv.proto_addr, i, gw_srv.workers[i].proto_lis.fd);
    json_t *j = msg("sockets");
    json_object_set_new(j, "pid", json_integer(getpid()));
    json_object_set_new(j, "version", json_string(GW_VERSION));
    json_object_set_new(j, "sockets", h.list);
    int rc = send_json(c, j, NULL, 0);
    for (size_t off = 0; rc == GW_OK && off < h.n; off += FDS_PER_MSG) {
        size_t k = GW_MIN(h.n - off, (size_t)FDS_PER_MSG);
        json_t *f = msg("fds");
        json_object_set_new(f, "n", json_integer((json_int_t)k));
        rc = send_json(c, f, h.fds + off, k);
    }
    gw_free(h.fds);
    if (rc != GW_OK)
        *why = "send failed";
    return rc;
}

static void log_upgrade(gw_log_level lv, const char *what, int pid, const char *why)
{
    gw_log_line *l = gw_log_begin(lv, what, NULL);
    if (l) {
        if (pid > 0)
            gw_log_int(l, "new_pid", pid, 0);
        if (why)
            gw_log_str(l, "error", why, 0);
        gw_log_end(l);
    }
}

/* One takeover request on connection c. Returns 1 when this process now
 * drains (the new one serves). */
static int serve_one(int c)
{
    struct ucred cr;
    socklen_t cl = sizeof cr;
    int pid = 0;
    const char *why = NULL;
    if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cr, &cl) != 0 || cr.uid != geteuid()) {
        log_upgrade(GW_LOG_WARN, "upgrade refused: peer is not this user", 0, NULL);
        return 0;
    }
    pid = cr.pid;
    json_t *req = recv_json(c, ANSWER_MS, NULL, NULL, &why);
    if (!req || !op_of(req) || strcmp(op_of(req), "takeover") != 0) {
        json_t *r = msg("refused");
        json_object_set_new(r, "error", json_string(why ? why : "expected a takeover request"));
        send_json(c, r, NULL, 0);
        json_decref(req);
        log_upgrade(GW_LOG_WARN, "upgrade refused: bad request", pid, why);
        return 0;
    }
    json_decref(req);
    gw_upgrade_lock();
    int rc = send_sockets(c, &why);
    gw_upgrade_unlock();
    if (rc != GW_OK) {
        json_t *r = msg("refused");
        json_object_set_new(r, "error", json_string(why));
        send_json(c, r, NULL, 0);
        log_upgrade(GW_LOG_WARN, "upgrade refused", pid, why);
        return 0;
    }
    log_upgrade(GW_LOG_INFO, "upgrade: listeners handed over; waiting for the new process", pid, NULL);
    json_t *ready = recv_json(c, READY_MS, NULL, NULL, &why);
    if (!ready || !op_of(ready) || strcmp(op_of(ready), "ready") != 0) {
        json_decref(ready);
        /* The new process failed to start: we never stopped serving. */
        log_upgrade(GW_LOG_WARN, "upgrade aborted: the new process did not become ready; serving on", pid,
                    why ? why : "unexpected message");
        return 0;
    }
    json_decref(ready);
    atomic_store(&U.handed_over, 1);
    send_json(c, msg("draining"), NULL, 0);
    log_upgrade(GW_LOG_INFO, "upgrade: the new process serves; draining", pid, NULL);
    kill(getpid(), SIGTERM); /* the main thread drains exactly as on SIGTERM */
    return 1;
}

static void *upgrade_thread(void *arg)
{
    GW_UNUSED(arg);
    for (;;) {
        int w = wait_readable(U.lfd, -1);
        if (w < 0)
            break;
        int c = accept4(U.lfd, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0)
            continue;
        int done = serve_one(c);
        close(c);
        if (done)
            break;
    }
    /* Handed over (the new process owns the path now) or stopping. */
    close(U.lfd);
    U.lfd = -1;
    return NULL;
}

/* ============================ new process: take over ======================== */

static int bind_listener(char *err, size_t errcap)
{
    U.lfd = gw_sock_listen_unix(U.path, SOCK_SEQPACKET, 8, err, errcap);
    struct stat st;
    if (U.lfd >= 0 && stat(U.path, &st) == 0)
        U.ino = st.st_ino;
    if (U.lfd < 0) {
        char e2[600];
        snprintf(e2, sizeof e2, "GATEWAY_UPGRADE_SOCKET: %s", err);
        snprintf(err, errcap, "%s", e2);
        return GW_ERR;
    }
    return GW_OK;
}

static int refuse(char *err, size_t errcap, const char *why)
{
    snprintf(err, errcap,
             "GATEWAY_UPGRADE_SOCKET %s: the running gateway did not hand over its listeners (%s); not starting "
             "beside it",
             U.path, why);
    if (U.conn >= 0)
        close(U.conn);
    U.conn = -1;
    return GW_ERR;
}

/* fd is a listening stream socket bound to addr_text (the port, and the
 * address when it is an IP literal; for unix: the path). */
static int listener_matches(int fd, const char *addr_text)
{
    struct stat st;
    int acc = 0, type = 0;
    socklen_t l = sizeof acc, tl = sizeof type;
    gw_addr want;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode) ||
        getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &l) != 0 || !acc ||
        getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tl) != 0 || type != SOCK_STREAM ||
        gw_parse_addr(addr_text, &want) != GW_OK)
        return 0;
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &sl) != 0)
        return 0;
    if (want.is_unix)
        return ss.ss_family == AF_UNIX && strcmp(((struct sockaddr_un *)&ss)->sun_path, want.path) == 0;
    uint16_t port = ss.ss_family == AF_INET    ? ntohs(((struct sockaddr_in *)&ss)->sin_port)
                    : ss.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&ss)->sin6_port)
                                               : 0;
    if (!port || (want.port && port != want.port))
        return 0;
    char host[INET6_ADDRSTRLEN] = "";
    if (ss.ss_family == AF_INET)
        inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, host, sizeof host);
    else
        inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&ss)->sin6_addr, host, sizeof host);
    struct in6_addr tmp6;
    struct in_addr tmp4;
    int literal = inet_pton(AF_INET, want.host, &tmp4) == 1 || inet_pton(AF_INET6, want.host, &tmp6) == 1;
    return !literal || strcmp(host, want.host) == 0;
}

/* Reads the socket list and the descriptors that follow it. */
static int receive_sockets(json_t *hdr, char *err, size_t errcap)
{
    json_t *list = json_object_get(hdr, "sockets");
    size_t n = json_array_size(list);
    if (!json_is_array(list) || n > 4096)
        return refuse(err, errcap, "malformed socket list");
    U.in = gw_calloc(n ? n : 1, sizeof *U.in);
    for (size_t i = 0; i < n; i++) {
        json_t *s = json_array_get(list, i);
        const char *role = json_string_value(json_object_get(s, "role"));
        const char *addr = json_string_value(json_object_get(s, "addr"));
        if (!role || !addr)
            return refuse(err, errcap, "malformed socket list");
        snprintf(U.in[i].role, sizeof U.in[i].role, "%s", role);
        snprintf(U.in[i].addr, sizeof U.in[i].addr, "%s", addr);
        U.in[i].worker = (int)json_integer_value(json_object_get(s, "worker"));
        U.in[i].fd = -1;
    }
    int fds[FDS_PER_MSG];
    while (U.nin < n) {
        size_t k = FDS_PER_MSG;
        const char *why = NULL;
        json_t *m = recv_json(U.conn, ANSWER_MS, fds, &k, &why);
        if (!m || !op_of(m) || strcmp(op_of(m), "fds") != 0 || k == 0 || U.nin + k > n ||
            (size_t)json_integer_value(json_object_get(m, "n")) != k) {
            json_decref(m);
            for (size_t i = 0; i < k; i++)
                close(fds[i]);
            return refuse(err, errcap, why ? why : "descriptors missing");
        }
        json_decref(m);
        for (size_t i = 0; i < k; i++)
            U.in[U.nin++].fd = fds[i];
    }
    /* Each one must be a listening socket bound to the address it is named
     * by: nothing else is served on (review4 F5). */
    for (size_t i = 0; i < U.nin; i++) {
        if (!listener_matches(U.in[i].fd, U.in[i].addr)) {
            char why[400];
            snprintf(why, sizeof why, "descriptor %zu (%s %s) is not a listening socket on that address", i,
                     U.in[i].role, U.in[i].addr);
            return refuse(err, errcap, why);
        }
    }
    return GW_OK;
}

int gw_upgrade_takeover(const char *path, char *err, size_t errcap)
{
    snprintf(U.path, sizeof U.path, "%s", path);
    if (pipe2(U.stop_pipe, O_CLOEXEC) != 0) {
        snprintf(err, errcap, "GATEWAY_UPGRADE_SOCKET: pipe: %s", strerror(errno));
        return GW_ERR;
    }
    struct stat st;
    if (lstat(path, &st) != 0) {
        if (errno != ENOENT) {
            snprintf(err, errcap, "GATEWAY_UPGRADE_SOCKET %s: %s", path, strerror(errno));
            return GW_ERR;
        }
        return bind_listener(err, errcap); /* a first start */
    }
    if (!S_ISSOCK(st.st_mode)) {
        snprintf(err, errcap, "GATEWAY_UPGRADE_SOCKET %s: the path exists and is not a socket; not replacing it",
                 path);
        return GW_ERR;
    }
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    memcpy(un.sun_path, path, strlen(path) + 1);
    U.conn = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (U.conn < 0 || connect(U.conn, (struct sockaddr *)&un, sizeof un) != 0) {
        int e = errno;
        if (U.conn >= 0)
            close(U.conn);
        U.conn = -1;
        if (e == ECONNREFUSED) {
            /* A stale socket: the process that made it is gone. */
            gw_log_line *l = gw_log_begin(GW_LOG_INFO, "upgrade socket was stale (no process behind it); replaced",
                                          NULL);
            if (l) {
                gw_log_str(l, "path", path, 0);
                gw_log_end(l);
            }
            return bind_listener(err, errcap);
        }
        char why[160];
        snprintf(why, sizeof why, "connect: %s", strerror(e));
        return refuse(err, errcap, why);
    }
    /* The process behind the socket must be ours (same user): another
     * user's socket at that path could hand us listeners it keeps a copy of
     * and share our clients (review4 F5). */
    struct ucred cr;
    socklen_t cl = sizeof cr;
    if (getsockopt(U.conn, SOL_SOCKET, SO_PEERCRED, &cr, &cl) != 0 || cr.uid != geteuid()) {
        char why[160];
        snprintf(why, sizeof why, "the process behind the socket runs as another user (uid %ld)",
                 cl == sizeof cr ? (long)cr.uid : -1L);
        return refuse(err, errcap, why);
    }
    json_t *req = msg("takeover");
    json_object_set_new(req, "pid", json_integer(getpid()));
    if (send_json(U.conn, req, NULL, 0) != GW_OK)
        return refuse(err, errcap, "send failed");
    const char *why = NULL;
    json_t *hdr = recv_json(U.conn, ANSWER_MS, NULL, NULL, &why);
    if (!hdr)
        return refuse(err, errcap, why);
    if (!op_of(hdr) || strcmp(op_of(hdr), "sockets") != 0) {
        char w2[300];
        const char *e = json_string_value(json_object_get(hdr, "error"));
        snprintf(w2, sizeof w2, "refused: %s", e ? e : "unexpected answer");
        json_decref(hdr);
        return refuse(err, errcap, w2);
    }
    U.old_pid = (int)json_integer_value(json_object_get(hdr, "pid"));
    if (U.old_pid != (int)cr.pid) {
        json_decref(hdr);
        return refuse(err, errcap, "the answer names another process than the one behind the socket");
    }
    int rc = receive_sockets(hdr, err, errcap);
    json_decref(hdr);
    return rc;
}

int gw_upgrade_take(const char *role, const char *addr)
{
    for (size_t i = 0; i < U.nin; i++) {
        if (U.in[i].fd >= 0 && strcmp(U.in[i].role, role) == 0 && strcmp(U.in[i].addr, addr) == 0) {
            int fd = U.in[i].fd;
            U.in[i].fd = -1;
            return fd;
        }
    }
    return -1;
}

void gw_upgrade_close_unused(void)
{
    for (size_t i = 0; i < U.nin; i++) {
        if (U.in[i].fd < 0)
            continue;
        gw_log_line *l = gw_log_begin(GW_LOG_WARN, "upgrade: inherited listener not in this configuration; closed",
                                      NULL);
        if (l) {
            gw_log_str(l, "role", U.in[i].role, 0);
            gw_log_str(l, "addr", U.in[i].addr, 0);
            gw_log_end(l);
        }
        close(U.in[i].fd);
        U.in[i].fd = -1;
    }
}

void gw_upgrade_start(void)
{
    if (!U.path[0])
        return;
    if (U.conn >= 0) {
        /* We serve on the inherited sockets: the old process may stop. */
        const char *why = NULL;
        json_t *a = NULL;
        if (send_json(U.conn, msg("ready"), NULL, 0) == GW_OK)
            a = recv_json(U.conn, ANSWER_MS, NULL, NULL, &why);
        gw_log_line *l = gw_log_begin(a ? GW_LOG_INFO : GW_LOG_WARN,
                                      a ? "upgrade: took over the listeners; the old process drains"
                                        : "upgrade: the old process did not confirm its drain",
                                      NULL);
        if (l) {
            gw_log_int(l, "old_pid", U.old_pid, 0);
            gw_log_int(l, "sockets", (int64_t)U.nin, 0);
            if (why)
                gw_log_str(l, "error", why, 0);
            gw_log_end(l);
        }
        json_decref(a);
        close(U.conn);
        U.conn = -1;
        char err[600];
        unlink(U.path); /* the old process's listener: it takes no more requests */
        if (bind_listener(err, sizeof err) != GW_OK) {
            gw_log_msg(GW_LOG_ERROR, NULL, "%s (further in-place upgrades are not possible)", err);
            return;
        }
    }
    if (U.lfd >= 0 && pthread_create(&U.thread, NULL, upgrade_thread, NULL) == 0)
        U.thread_on = 1;
}

void gw_upgrade_stop(void)
{
    if (U.thread_on) {
        if (write(U.stop_pipe[1], "x", 1) < 0) {
            /* the pipe is ours and empty: cannot fail short of EBADF */
        }
        pthread_join(U.thread, NULL);
        U.thread_on = 0;
    }
    if (U.lfd >= 0)
        close(U.lfd);
    U.lfd = -1;
    /* A process that exits without handing over removes its socket (a
     * killed one leaves it stale: the next start replaces it). */
    struct stat st;
    if (U.path[0] && !atomic_load(&U.handed_over) && U.ino && lstat(U.path, &st) == 0 && st.st_ino == U.ino)
        unlink(U.path);
    for (int i = 0; i < 2; i++)
        if (U.stop_pipe[i] >= 0)
            close(U.stop_pipe[i]);
    U.stop_pipe[0] = U.stop_pipe[1] = -1;
    gw_free(U.in);
    U.in = NULL;
    U.nin = 0;
}

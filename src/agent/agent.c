/* agent.c: the terminal agent (see agent.h).
 *
 * Objects: a listener, connections (agent_conn: HTTP head, then a gw_ws in
 * server role), and PTY sessions (pty_sess: master fd, child pid, scrollback
 * ring, input queue toward the PTY). A connection is attached to at most one
 * session and a session to at most one connection; either can end first:
 *   - connection ends: the session is detached and its grace timer starts;
 *   - shell exits: its last output is drained, the connection closes with
 *     1000 "exit N", and the session is freed.
 * Children are reaped from a signalfd (SIGCHLD) with waitpid(-1, WNOHANG);
 * the agent is also a child subreaper, so processes the shells leave behind
 * are reaped too and no zombie stays. Every descriptor is close-on-exec.
 *
 * Flow control: PTY output goes to the WebSocket while its queue is under
 * OUT_HIGH; past it the agent stops reading the PTY (the shell blocks on
 * write) until the queue drains under OUT_LOW. Input toward the PTY is
 * queued up to IN_HIGH; past it the agent stops reading the WebSocket. */
#include "agent/agent.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <dirent.h>
#include <unistd.h>

#include "agent/ring.h"
#include "config/config.h"
#include "core/alloc.h"
#include "core/common.h"
#include "core/list.h"
#include "core/rand.h"
#include "http/bearer.h"
#include "http/h1_parse.h"
#include "http/ws_handshake.h"
#include "log/log.h"
#include "loop/loop.h"
#include "net/conn.h"
#include "net/sock.h"
#include "ws/ws_session.h"

#define READ_CHUNK (16u * 1024)
#define IN_MAX (2u * 1024 * 1024)     /* socket input buffered at most (a partial frame) */
#define MAX_MSG (1u * 1024 * 1024)    /* larger WebSocket messages close with 1009 */
#define OUT_HIGH (256u * 1024)        /* stop reading the PTY past this much queued output */
#define OUT_LOW (64u * 1024)          /* resume under this */
#define IN_HIGH (256u * 1024)         /* stop reading the socket past this much pending PTY input */
#define IN_CAP (8u * 1024 * 1024)     /* pending PTY input never grows past this */
#define PTY_CHUNK (64u * 1024)
#define PTY_ROUNDS 4                  /* PTY reads per wakeup (fairness) */
#define HANDSHAKE_MS 10000
#define CLOSE_WAIT_MS 5000
#define KILL_AFTER_MS 3000            /* SIGHUP -> SIGKILL */
#define SUBPROTOCOL "wsgate.terminal.v1"

static const char agent_usage[] =
    "Usage: wsgate agent [--listen unix:/path|HOST:PORT] [--grace 60s] [--scrollback 64KiB] [-- COMMAND ARGS...]\n"
    "\n"
    "Terminal agent: serves PTYs over WebSocket to the gateway (DESIGN.md section 4).\n"
    "  --listen ADDR       where to listen (default 127.0.0.1:7681, which needs GATEWAY_AGENT_SECRET);\n"
    "                      unix:/abs/path for a unix socket (mode 0600; only a stale socket there is replaced)\n"
    "  --grace DURATION    how long a PTY outlives its dropped WebSocket for a re-attach (default 60s)\n"
    "  --scrollback SIZE   recent output replayed on re-attach (default 64KiB; 0 disables)\n"
    "  -- COMMAND ARGS     the program to run in each PTY (default: $SHELL, else /bin/sh)\n"
    "\n"
    "Protocol: binary frames carry terminal bytes both ways; text frames carry JSON control\n"
    "messages, {\"type\":\"resize\",\"cols\":N,\"rows\":N}. When the program exits the agent closes\n"
    "with 1000 and the reason \"exit N\" (or \"signal N\"). Sessions are keyed by the\n"
    "X-Wsgate-Session-Id header the gateway sends; a new connection with the same id within the\n"
    "grace period re-attaches and first receives the scrollback, but only when the user and\n"
    "allocation (X-Wsgate-User-Id, X-Wsgate-Allocation-Id) are the session's; otherwise 409\n"
    "session_conflict. A request with an Origin header (a web page) is refused with 403\n"
    "origin_refused: the gateway never sends one. GET /healthz answers ok.\n"
    "\n"
    "Environment:\n"
    "  GATEWAY_AGENT_SECRET   bearer secret (Authorization: Bearer ...) shared with the gateway;\n"
    "                         required on TCP: without it the agent refuses to start (exit 2) unless\n"
    "                         --listen is a unix: socket, which it then creates with mode 0600\n"
    "  GATEWAY_LOG_FORMAT, GATEWAY_LOG_LEVEL   json|text, debug|info|warn|error\n"
    "The program runs with TERM=xterm-256color, WSGATE_SESSION_ID and WSGATE_USER_ID set,\n"
    "without GATEWAY_AGENT_SECRET and GATEWAY_ADMIN_TOKEN in its environment, and with no\n"
    "descriptor but 0, 1 and 2 (the PTY) open.\n";

typedef struct pty_sess pty_sess;
typedef struct agent_conn agent_conn;

enum { P_HTTP = 0, P_WS, P_FINISH, P_DEAD };

struct agent_conn {
    gw_conn conn;
    gw_list node;       /* in A.conns */
    gw_task task;       /* deferred free */
    gw_timer timer;     /* handshake, close and finish deadlines */
    int phase;          /* P_* */
    gw_ws ws;           /* P_WS */
    pty_sess *s;        /* attached session, or NULL */
    char ip[46];
    char corr[72];
    uint64_t opened_ms;
};

struct pty_sess {
    gw_list node;       /* in A.sessions */
    char id[129];
    char user[129];
    char alloc[129];
    pid_t pid;          /* the child; 0 once reaped */
    int wstatus;        /* its wait status once reaped */
    gw_io io;           /* the PTY master */
    gw_buf in;          /* client bytes waiting for the PTY */
    gw_ring ring;       /* scrollback */
    agent_conn *conn;   /* attached connection, or NULL */
    gw_timer timer;     /* grace, then SIGKILL escalation */
    uint8_t pty_eof;    /* the master reported hang-up */
    uint8_t paused;     /* PTY reads stopped: the WebSocket's queue is long */
    uint8_t killing;    /* SIGHUP sent (grace over or agent stopping) */
    gw_task task;       /* deferred free: its PTY watcher may still be in this batch */
};

static struct {
    gw_loop *loop;
    gw_io lis;
    gw_io sig;
    gw_list conns;
    gw_list sessions;
    size_t nsessions;
    uint8_t secret_hash[GW_BEARER_DIGEST_LEN];
    int have_secret;
    uint64_t grace_ms;
    size_t scrollback;
    char **cmd;         /* argv of the program (NULL-terminated) */
    int stopping;
    gw_timer stop_timer;
    uint64_t stop_started;
    gw_h1_limits limits;
    char unix_path[108];
} A;

static void sess_update_io(pty_sess *s);
static void sess_free(pty_sess *s);
static void conn_finish(agent_conn *a);
static void conn_arm(agent_conn *a);

/* ================================= logging ================================== */

static void log_sess(gw_log_level lvl, const char *msg, const pty_sess *s, const char *corr, const char *k,
                     const char *v)
{
    gw_log_line *l = gw_log_begin(lvl, msg, corr);
    if (!l)
        return;
    gw_log_str(l, "session_id", s->id, 0);
    gw_log_str(l, "user", s->user[0] ? s->user : "-", 0);
    if (s->alloc[0])
        gw_log_str(l, "allocation_id", s->alloc, GW_LOG_JSON_ONLY);
    if (s->pid)
        gw_log_int(l, "pid", s->pid, GW_LOG_JSON_ONLY);
    if (k)
        gw_log_str(l, k, v, 0);
    gw_log_end(l);
}

static void exit_reason(int wstatus, char *out, size_t cap)
{
    if (WIFSIGNALED(wstatus))
        snprintf(out, cap, "signal %d", WTERMSIG(wstatus));
    else
        snprintf(out, cap, "exit %d", WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : 0);
}

/* ================================== PTYs ==================================== */

/* The child's environment: ours without the secrets, with TERM and the
 * session's identity. Built before fork (the child only execs). */
static char **child_env(const pty_sess *s)
{
    extern char **environ;
    size_t n = 0;
    while (environ[n])
        n++;
    char **env = gw_calloc(n + 4, sizeof *env);
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        const char *e = environ[i];
        if (strncmp(e, "GATEWAY_AGENT_SECRET=", 21) == 0 || strncmp(e, "GATEWAY_ADMIN_TOKEN=", 20) == 0 ||
            strncmp(e, "TERM=", 5) == 0 || strncmp(e, "WSGATE_SESSION_ID=", 18) == 0 ||
            strncmp(e, "WSGATE_USER_ID=", 15) == 0)
            continue;
        env[k++] = gw_strdup(e);
    }
    env[k++] = gw_strdup("TERM=xterm-256color");
    char buf[200];
    snprintf(buf, sizeof buf, "WSGATE_SESSION_ID=%s", s->id);
    env[k++] = gw_strdup(buf);
    snprintf(buf, sizeof buf, "WSGATE_USER_ID=%s", s->user);
    env[k++] = gw_strdup(buf);
    env[k] = NULL;
    return env;
}

static void env_free(char **env)
{
    for (size_t i = 0; env[i]; i++)
        gw_free(env[i]);
    gw_free(env);
}

static void pty_cb(gw_io *io, uint32_t ev);

/* In the child, before exec: every descriptor above 2 goes, including those
 * the agent's launcher left open without close-on-exec (the agent's own are
 * close-on-exec already). close_range(2) first; where the kernel lacks it,
 * the list in /proc/self/fd (the agent is single-threaded, so opendir is
 * safe after fork). */
static void close_inherited(void)
{
    if (close_range(3, ~0U, 0) == 0)
        return;
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return;
    int dfd = dirfd(d);
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        int fd = atoi(e->d_name);
        if (fd > 2 && fd != dfd)
            close(fd);
    }
    closedir(d);
}

/* Starts the program on a new PTY for s. GW_OK or GW_ERR (logged). */
static int sess_spawn(pty_sess *s)
{
    int m = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
    char name[128];
    if (m < 0 || grantpt(m) != 0 || unlockpt(m) != 0 || ptsname_r(m, name, sizeof name) != 0) {
        gw_log_msg(GW_LOG_ERROR, NULL, "agent: cannot open a PTY: %s", strerror(errno));
        if (m >= 0)
            close(m);
        return GW_ERR;
    }
    int fl = fcntl(m, F_GETFL);
    fcntl(m, F_SETFL, fl | O_NONBLOCK);
    struct winsize ws = {.ws_row = 24, .ws_col = 80};
    ioctl(m, TIOCSWINSZ, &ws);
    char **env = child_env(s);
    pid_t pid = fork();
    if (pid < 0) {
        gw_log_msg(GW_LOG_ERROR, NULL, "agent: fork: %s", strerror(errno));
        env_free(env);
        close(m);
        return GW_ERR;
    }
    if (pid == 0) {
        /* The child: a new session whose controlling terminal is the PTY's
         * slave side, default signal handling, then the program. */
        sigset_t all;
        sigemptyset(&all);
        sigprocmask(SIG_SETMASK, &all, NULL);
        signal(SIGPIPE, SIG_DFL);
        signal(SIGCHLD, SIG_DFL);
        signal(SIGHUP, SIG_DFL);
        setsid();
        int sl = open(name, O_RDWR);
        if (sl < 0)
            _exit(126);
        ioctl(sl, TIOCSCTTY, 0);
        dup2(sl, 0);
        dup2(sl, 1);
        dup2(sl, 2);
        if (sl > 2)
            close(sl);
        close_inherited();
        execvpe(A.cmd[0], A.cmd, env);
        static const char msg[] = "wsgate agent: cannot run the program\r\n";
        ssize_t w = write(2, msg, sizeof msg - 1);
        (void)w;
        _exit(127);
    }
    env_free(env);
    s->pid = pid;
    s->io.fd = m;
    s->io.cb = pty_cb;
    s->io.events = 0;
    sess_update_io(s);
    return GW_OK;
}

static void sess_update_io(pty_sess *s)
{
    if (s->io.fd < 0)
        return;
    uint32_t ev = 0;
    if (!s->pty_eof && !s->paused)
        ev |= GW_EV_READ;
    if (s->in.len && !s->pty_eof)
        ev |= GW_EV_WRITE;
    gw_io_update(A.loop, &s->io, ev);
}

static int conn_ws_open(const agent_conn *a) { return a && a->phase == P_WS && a->ws.state == GW_WS_OPEN; }

/* Output from the PTY: into the scrollback, and to the attached client. */
static void sess_output(pty_sess *s, const uint8_t *p, size_t n)
{
    gw_ring_write(&s->ring, p, n);
    agent_conn *a = s->conn;
    if (!conn_ws_open(a))
        return;
    gw_ws_send(&a->ws, GW_WS_OP_BINARY, p, n);
    if (gw_conn_queued(&a->conn) > OUT_HIGH && !s->paused) {
        s->paused = 1;
        sess_update_io(s);
    }
}

/* Reads what the PTY has (bounded). Returns the bytes read. */
static size_t sess_read(pty_sess *s, int rounds)
{
    static uint8_t buf[PTY_CHUNK];
    size_t total = 0;
    for (int i = 0; i < rounds && !s->paused; i++) {
        ssize_t r = read(s->io.fd, buf, sizeof buf);
        if (r > 0) {
            sess_output(s, buf, (size_t)r);
            total += (size_t)r;
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        /* EIO (every slave descriptor closed) or EOF: the terminal hung up. */
        s->pty_eof = 1;
        break;
    }
    return total;
}

static void sess_write_input(pty_sess *s)
{
    while (s->in.len && !s->pty_eof) {
        ssize_t w = write(s->io.fd, gw_buf_head(&s->in), s->in.len);
        if (w > 0) {
            gw_buf_consume(&s->in, (size_t)w);
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        s->pty_eof = 1;
        gw_buf_release(&s->in);
    }
    agent_conn *a = s->conn;
    if (a && a->phase == P_WS && (a->conn.flags & GW_CONN_F_PAUSED) && s->in.len < IN_HIGH / 2) {
        gw_conn_pause(&a->conn, 0);
        if (a->conn.in.len)
            gw_loop_pending(A.loop, &a->task);
    }
}

/* The shell exited (reaped) or the PTY hung up: once both, close the
 * client with the status, and free the session. */
static void sess_maybe_end(pty_sess *s)
{
    if (s->pid)
        return; /* not reaped yet: SIGCHLD will come */
    /* Whatever the program wrote last is still in the master: send it. */
    if (!s->pty_eof)
        sess_read(s, 64);
    char why[32];
    exit_reason(s->wstatus, why, sizeof why);
    log_sess(GW_LOG_INFO, "agent session ended", s, s->conn ? s->conn->corr : NULL, "status", why);
    agent_conn *a = s->conn;
    if (a) {
        a->s = NULL;
        s->conn = NULL;
        if (conn_ws_open(a)) {
            gw_ws_close(&a->ws, GW_WS_CLOSE_NORMAL, why, gw_cause_graceful);
            conn_arm(a);
        }
    }
    sess_free(s);
}

static void pty_cb(gw_io *io, uint32_t ev)
{
    pty_sess *s = gw_container_of(io, pty_sess, io);
    if (ev & GW_EV_WRITE)
        sess_write_input(s);
    if (ev & (GW_EV_READ | GW_EV_ERROR))
        sess_read(s, PTY_ROUNDS);
    agent_conn *a = s->conn;
    if (a && a->phase == P_WS)
        gw_conn_flush(&a->conn);
    sess_update_io(s);
    if (s->pty_eof)
        sess_maybe_end(s);
}

static void sess_timer(gw_timer *t)
{
    pty_sess *s = gw_container_of(t, pty_sess, timer);
    if (s->conn || !s->pid)
        return;
    if (!s->killing) {
        log_sess(GW_LOG_INFO, "agent session grace expired", s, NULL, "action", "SIGHUP");
        s->killing = 1;
        kill(-s->pid, SIGHUP);
        kill(s->pid, SIGHUP);
        gw_timer_start(A.loop, &s->timer, KILL_AFTER_MS);
    } else {
        log_sess(GW_LOG_WARN, "agent session did not exit on SIGHUP", s, NULL, "action", "SIGKILL");
        kill(-s->pid, SIGKILL);
        kill(s->pid, SIGKILL);
    }
}

static pty_sess *sess_find(const char *id)
{
    for (gw_list *n = A.sessions.next; n != &A.sessions; n = n->next) {
        pty_sess *s = gw_container_of(n, pty_sess, node);
        if (strcmp(s->id, id) == 0)
            return s;
    }
    return NULL;
}

static pty_sess *sess_new(const char *id, const char *user, const char *alloc)
{
    pty_sess *s = gw_calloc(1, sizeof *s);
    snprintf(s->id, sizeof s->id, "%s", id);
    snprintf(s->user, sizeof s->user, "%s", user);
    snprintf(s->alloc, sizeof s->alloc, "%s", alloc);
    s->io.fd = -1;
    s->timer.cb = sess_timer;
    gw_ring_init(&s->ring, A.scrollback);
    if (sess_spawn(s) != GW_OK) {
        gw_ring_free(&s->ring);
        gw_free(s);
        return NULL;
    }
    gw_list_insert_tail(&A.sessions, &s->node);
    A.nsessions++;
    log_sess(GW_LOG_INFO, "agent session started", s, NULL, "command", A.cmd[0]);
    return s;
}

static void sess_free_task(gw_task *t)
{
    gw_free(gw_container_of(t, pty_sess, task));
}

/* Frees s after the current batch of events (a SIGCHLD reap can end a session
 * whose PTY event is later in the same batch); a child still running is killed
 * (its reap comes later and finds no session, which is fine). */
static void sess_free(pty_sess *s)
{
    if (s->pid) {
        kill(-s->pid, SIGKILL);
        kill(s->pid, SIGKILL);
    }
    if (s->conn)
        s->conn->s = NULL;
    gw_timer_stop(A.loop, &s->timer);
    if (s->io.fd >= 0) {
        gw_io_stop(A.loop, &s->io);
        close(s->io.fd);
        s->io.fd = -1;
    }
    gw_buf_release(&s->in);
    gw_ring_free(&s->ring);
    gw_list_remove(&s->node);
    A.nsessions--;
    s->task.fn = sess_free_task;
    gw_loop_defer(A.loop, &s->task);
}

/* The connection went away: keep the PTY for the grace period. */
static void sess_detach(pty_sess *s)
{
    s->conn = NULL;
    if (s->paused) {
        s->paused = 0; /* nobody to wait for: output goes to the scrollback */
        sess_update_io(s);
    }
    if (!s->pid) {
        sess_free(s);
        return;
    }
    log_sess(GW_LOG_INFO, "agent session detached", s, NULL, NULL, NULL);
    if (A.stopping)
        return;
    gw_timer_start(A.loop, &s->timer, A.grace_ms);
}

/* SIGCHLD: reap every child that ended. */
static void reap(void)
{
    for (;;) {
        int st;
        pid_t pid = waitpid(-1, &st, WNOHANG);
        if (pid <= 0)
            break;
        for (gw_list *n = A.sessions.next; n != &A.sessions; n = n->next) {
            pty_sess *s = gw_container_of(n, pty_sess, node);
            if (s->pid == pid) {
                s->pid = 0;
                s->wstatus = st;
                if (s->conn || s->io.fd >= 0) {
                    if (s->conn) {
                        sess_maybe_end(s);
                    } else {
                        /* Detached: drain into the scrollback, free. */
                        char why[32];
                        exit_reason(st, why, sizeof why);
                        if (!s->pty_eof)
                            sess_read(s, 64);
                        log_sess(GW_LOG_INFO, "agent session ended", s, NULL, "status", why);
                        sess_free(s);
                    }
                }
                break;
            }
        }
    }
}

/* ============================= the connections ============================== */

static void conn_free_task(gw_task *t)
{
    agent_conn *a = gw_container_of(t, agent_conn, task);
    gw_free(a);
}

static void conn_rerun_task(gw_task *t);

/* Closes the socket now and frees the connection after the batch. */
static void conn_close(agent_conn *a)
{
    if (a->phase == P_DEAD)
        return;
    int was_ws = a->phase == P_WS || (a->phase == P_FINISH && a->opened_ms);
    a->phase = P_DEAD;
    gw_timer_stop(A.loop, &a->timer);
    if (a->s) {
        pty_sess *s = a->s;
        a->s = NULL;
        sess_detach(s);
    }
    if (was_ws) {
        gw_log_line *l = gw_log_begin(GW_LOG_INFO, "agent ws close", a->corr);
        if (l) {
            gw_log_str(l, "ip", a->ip, 0);
            gw_log_int(l, "dur_ms", (int64_t)(gw_loop_now(A.loop) - a->opened_ms), 0);
            gw_log_str(l, "cause", a->ws.cause ? a->ws.cause : gw_cause_downstream_closed, 0);
            gw_log_end(l);
        }
        gw_ws_free(&a->ws);
    }
    gw_conn_close(&a->conn);
    gw_list_remove(&a->node);
    gw_task_cancel(&a->task);
    a->task.fn = conn_free_task;
    gw_loop_defer(A.loop, &a->task);
}

/* Our last bytes are queued: send them, then close (bounded by a timer). */
static void conn_finish(agent_conn *a)
{
    if (a->phase == P_DEAD)
        return;
    if (a->s) {
        pty_sess *s = a->s;
        a->s = NULL;
        sess_detach(s);
    }
    if (a->phase == P_WS)
        a->phase = P_FINISH;
    else if (a->phase == P_HTTP) {
        a->opened_ms = 0;
        a->phase = P_FINISH;
    }
    gw_conn_want_read(&a->conn, 0);
    if (gw_conn_flush(&a->conn) != GW_AGAIN) {
        conn_close(a);
        return;
    }
    gw_timer_start(A.loop, &a->timer, 2000);
}

static void conn_arm(agent_conn *a)
{
    if (a->phase == P_WS && a->ws.state == GW_WS_CLOSE_SENT)
        gw_timer_start(A.loop, &a->timer, CLOSE_WAIT_MS);
}

static void conn_timer(gw_timer *t)
{
    agent_conn *a = gw_container_of(t, agent_conn, timer);
    if (a->phase == P_WS && a->ws.state == GW_WS_CLOSE_SENT)
        gw_ws_abort(&a->ws, a->ws.cause);
    conn_close(a); /* handshake, close-wait and finish deadlines all end here */
}

static void http_reply(agent_conn *a, int status, const char *reason, const char *code, const char *msg,
                       const char *extra)
{
    char body[640], head[768];
    int bn = snprintf(body, sizeof body, "{\"code\":\"%s\",\"message\":\"%s\",\"correlation_id\":\"%s\"}", code,
                      msg, a->corr);
    int hn = snprintf(head, sizeof head,
                      "HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s"
                      "Connection: close\r\n\r\n",
                      status, reason, bn, extra ? extra : "");
    struct iovec iov[2] = {{head, (size_t)hn}, {body, (size_t)bn}};
    gw_conn_writev(&a->conn, iov, 2);
    conn_finish(a);
}

static int id_ok(gw_str v)
{
    if (v.n == 0 || v.n > 128)
        return 0;
    for (size_t i = 0; i < v.n; i++) {
        char c = v.p[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
              c == '.' || c == '@' || c == '+'))
            return 0;
    }
    return 1;
}

static void header_copy(const gw_http_req *req, const char *name, char *out, size_t cap)
{
    const gw_http_header *h = gw_h1_find_header(req->headers, req->num_headers, name);
    out[0] = '\0';
    if (h && id_ok(h->value) && h->value.n < cap) {
        memcpy(out, h->value.p, h->value.n);
        out[h->value.n] = '\0';
    }
}

static void on_message(gw_ws *ws, int opcode, uint8_t *p, size_t n);
static const gw_ws_handler agent_handler = {on_message, NULL, NULL};

/* Attaches a (just upgraded) to s: the scrollback first, then live output. */
static void attach(agent_conn *a, pty_sess *s, int reattach)
{
    if (s->conn && s->conn != a) {
        /* Taken over: a browser reconnecting may arrive before the agent
         * noticed its old connection died. The newest wins. */
        agent_conn *old = s->conn;
        old->s = NULL;
        s->conn = NULL;
        if (conn_ws_open(old)) {
            gw_ws_close(&old->ws, GW_WS_CLOSE_GOING_AWAY, "session re-attached elsewhere", gw_cause_graceful);
            conn_arm(old);
            gw_conn_flush(&old->conn);
        }
    }
    gw_timer_stop(A.loop, &s->timer);
    s->killing = 0;
    s->conn = a;
    a->s = s;
    if (reattach && s->ring.len) {
        uint8_t *tmp = gw_malloc(s->ring.len);
        size_t n = gw_ring_copy(&s->ring, tmp);
        size_t skip = gw_ring_utf8_skip(&s->ring);
        gw_ws_send(&a->ws, GW_WS_OP_BINARY, tmp + skip, n - skip);
        gw_free(tmp);
    }
    log_sess(GW_LOG_INFO, reattach ? "agent session re-attached" : "agent session attached", s, a->corr, "ip", a->ip);
    if (s->paused && gw_conn_queued(&a->conn) <= OUT_HIGH)
        s->paused = 0;
    sess_update_io(s);
    if (!s->pid) /* exited while detached: replay, then the status */
        sess_maybe_end(s);
}

/* A complete request head in a->conn.in: answer it. Returns the head's
 * length on an upgrade (the rest is WebSocket input), or 0 when the
 * connection is finishing. */
static size_t handle_request(agent_conn *a, const gw_http_req *req, size_t head_len)
{
    const gw_http_header *cid = gw_h1_find_header(req->headers, req->num_headers, "X-Correlation-ID");
    if (cid && cid->value.n < sizeof a->corr && id_ok(cid->value)) {
        memcpy(a->corr, cid->value.p, cid->value.n);
        a->corr[cid->value.n] = '\0';
    } else {
        gw_rand_hex(a->corr, 16);
    }
    if (gw_str_eq(req->path, "/healthz") && !gw_ws_is_upgrade(req)) {
        static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n"
                                 "Connection: close\r\n\r\nok\n";
        gw_conn_write(&a->conn, ok, sizeof ok - 1);
        conn_finish(a);
        return 0;
    }
    /* Browsers send Origin on every WebSocket handshake, and any page may
     * open one to a loopback port: a request with an Origin is a web page,
     * never the gateway (which sends none). */
    if (gw_h1_find_header(req->headers, req->num_headers, "Origin")) {
        gw_log_line *l = gw_log_begin(GW_LOG_WARN, "agent refused", a->corr);
        if (l) {
            gw_log_int(l, "status", 403, 0);
            gw_log_str(l, "ip", a->ip, 0);
            gw_log_str(l, "reason", "origin_refused", 0);
            gw_log_end(l);
        }
        http_reply(a, 403, "Forbidden", "origin_refused", "requests from web pages (with Origin) are refused", NULL);
        return 0;
    }
    if (A.have_secret) {
        gw_bearer_result br = gw_bearer_check(req, A.secret_hash);
        int st = br == GW_BEARER_OK ? 0 : br == GW_BEARER_MISSING ? 401 : 403;
        if (st) {
            gw_log_line *l = gw_log_begin(GW_LOG_WARN, "agent refused", a->corr);
            if (l) {
                gw_log_int(l, "status", st, 0);
                gw_log_str(l, "ip", a->ip, 0);
                gw_log_str(l, "reason", st == 401 ? "missing_agent_secret" : "invalid_agent_secret", 0);
                gw_log_end(l);
            }
            if (st == 401)
                http_reply(a, 401, "Unauthorized", "missing_agent_secret",
                           "this agent only accepts the gateway (Authorization: Bearer)",
                           "WWW-Authenticate: Bearer\r\n");
            else
                http_reply(a, 403, "Forbidden", "invalid_agent_secret", "the agent secret does not match", NULL);
            return 0;
        }
    }
    if (!gw_ws_is_upgrade(req)) {
        http_reply(a, 426, "Upgrade Required", "websocket_upgrade_required", "this agent only speaks WebSocket",
                   "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n");
        return 0;
    }
    gw_ws_upgrade up;
    int status;
    const char *code;
    if (gw_ws_check_upgrade(req, &up, &status, &code) != GW_OK) {
        http_reply(a, status, status == 426 ? "Upgrade Required" : "Bad Request", code, "invalid WebSocket upgrade",
                   status == 426 ? "Sec-WebSocket-Version: 13\r\n" : NULL);
        return 0;
    }
    if (A.stopping) {
        http_reply(a, 503, "Service Unavailable", "shutting_down", "the agent is shutting down", NULL);
        return 0;
    }
    char sid[129], user[129], alloc[129];
    header_copy(req, "X-Wsgate-Session-Id", sid, sizeof sid);
    header_copy(req, "X-Wsgate-User-Id", user, sizeof user);
    header_copy(req, "X-Wsgate-Allocation-Id", alloc, sizeof alloc);
    if (gw_h1_find_header(req->headers, req->num_headers, "X-Wsgate-Session-Id") && !sid[0]) {
        http_reply(a, 400, "Bad Request", "invalid_session_id", "X-Wsgate-Session-Id must be [A-Za-z0-9._@+-]{1,128}",
                   NULL);
        return 0;
    }
    if (!sid[0])
        gw_rand_hex(sid, 16);
    pty_sess *s = sess_find(sid);
    int reattach = s != NULL;
    if (s && (!s->pid && s->io.fd < 0)) {
        s = NULL;
        reattach = 0;
    }
    if (s && (strcmp(s->user, user) != 0 || strcmp(s->alloc, alloc) != 0)) {
        /* A session is its user's and its allocation's: a token for another
         * user (or allocation) naming the same session id gets neither the
         * scrollback nor the shell. */
        gw_log_line *l = gw_log_begin(GW_LOG_WARN, "agent refused", a->corr);
        if (l) {
            gw_log_int(l, "status", 409, 0);
            gw_log_str(l, "ip", a->ip, 0);
            gw_log_str(l, "reason", "session_conflict", 0);
            gw_log_str(l, "session_id", sid, 0);
            gw_log_str(l, "user", user[0] ? user : "-", 0);
            gw_log_str(l, "allocation_id", alloc[0] ? alloc : "-", GW_LOG_JSON_ONLY);
            gw_log_str(l, "session_user", s->user[0] ? s->user : "-", GW_LOG_JSON_ONLY);
            gw_log_str(l, "session_allocation_id", s->alloc[0] ? s->alloc : "-", GW_LOG_JSON_ONLY);
            gw_log_end(l);
        }
        http_reply(a, 409, "Conflict", "session_conflict",
                   "the session belongs to another user or allocation", NULL);
        return 0;
    }
    if (!s) {
        s = sess_new(sid, user, alloc);
        if (!s) {
            http_reply(a, 500, "Internal Server Error", "spawn_failed", "cannot start a terminal", NULL);
            return 0;
        }
    }
    static const char *const protos[] = {SUBPROTOCOL, NULL};
    gw_str proto = gw_ws_select_protocol(req, protos);
    char accept[GW_WS_ACCEPT_LEN + 1];
    gw_ws_accept_key(up.key, accept);
    char resp[512];
    int n = snprintf(resp, sizeof resp,
                     "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n%s%s%s\r\n",
                     accept, proto.n ? "Sec-WebSocket-Protocol: " : "", proto.n ? SUBPROTOCOL : "",
                     proto.n ? "\r\n" : "");
    gw_conn_write(&a->conn, resp, (size_t)n);
    gw_ws_init(&a->ws, &gw_conn_sink, &a->conn, 1, &agent_handler, a, MAX_MSG);
    a->phase = P_WS;
    a->opened_ms = gw_loop_now(A.loop);
    gw_timer_stop(A.loop, &a->timer);
    attach(a, s, reattach);
    return head_len;
}

static void on_message(gw_ws *ws, int opcode, uint8_t *p, size_t n)
{
    agent_conn *a = ws->data;
    pty_sess *s = a->s;
    if (!s || s->pty_eof)
        return;
    if (opcode == GW_WS_OP_BINARY) {
        if (gw_buf_append(&s->in, p, n, IN_CAP) != GW_OK) {
            gw_ws_close(ws, GW_WS_CLOSE_TRY_AGAIN, "input_overflow", gw_cause_overflow);
            return;
        }
        sess_write_input(s);
        if (s->in.len > IN_HIGH)
            gw_conn_pause(&a->conn, 1); /* resumed by sess_write_input */
        sess_update_io(s);
        return;
    }
    /* Text: a JSON control message. Unknown ones are ignored (forward
     * compatible); malformed ones too, with a debug line. */
    json_t *o = json_loadb((const char *)p, n, 0, NULL);
    const char *type = o ? json_string_value(json_object_get(o, "type")) : NULL;
    if (type && strcmp(type, "resize") == 0) {
        json_int_t cols = json_integer_value(json_object_get(o, "cols"));
        json_int_t rows = json_integer_value(json_object_get(o, "rows"));
        if (cols >= 1 && cols <= 10000 && rows >= 1 && rows <= 10000) {
            struct winsize wsz = {.ws_row = (unsigned short)rows, .ws_col = (unsigned short)cols};
            ioctl(s->io.fd, TIOCSWINSZ, &wsz); /* the kernel sends SIGWINCH to the foreground group */
        }
    } else {
        gw_log_msg(GW_LOG_DEBUG, a->corr, "agent: ignored control message");
    }
    json_decref(o);
}

/* Reads and processes input; called on read events and for buffered input
 * after a pause. */
/* The connection's protocol over n bytes at p: the upgrade request, then
 * WebSocket frames. Returns the bytes used; what is left waits in conn.in. */
static size_t conn_feed(agent_conn *a, uint8_t *p, size_t n)
{
    if (a->phase != P_HTTP && a->phase != P_WS)
        return n; /* finishing: read and discard until the peer's FIN */
    size_t off = 0;
    if (a->phase == P_HTTP) {
        gw_http_header hdrs[64];
        gw_http_req req;
        int status = 400;
        int r = gw_h1_parse_request((const char *)p, n, &req, hdrs, &A.limits, &status);
        if (r == GW_AGAIN)
            return 0;
        if (r < 0) {
            http_reply(a, status, "Bad Request", "bad_request", "malformed request", NULL);
            return n;
        }
        off = handle_request(a, &req, (size_t)r);
        if (!off)
            return n;
    }
    if (a->phase == P_WS && off < n && !(a->conn.flags & GW_CONN_F_PAUSED)) {
        gw_conn_cork(&a->conn);
        off += gw_ws_feed(&a->ws, p + off, n - off);
        gw_conn_uncork(&a->conn);
    }
    return off;
}

/* After input was fed: the close handshake's end, the deadlines, the PTY's
 * interest (a full PTY paused the socket, a drained one resumes it). */
static void conn_after(agent_conn *a)
{
    if (a->phase != P_WS)
        return;
    if (a->ws.state == GW_WS_CLOSED) {
        conn_finish(a);
        return;
    }
    conn_arm(a);
    if (a->s)
        sess_update_io(a->s);
}

/* Input already waiting in conn.in (after a pause ends). */
static void conn_process(agent_conn *a)
{
    if (a->conn.in.len) {
        size_t used = conn_feed(a, gw_buf_head(&a->conn.in), a->conn.in.len);
        if (a->conn.io.fd >= 0)
            gw_buf_consume(&a->conn.in, used);
    }
    conn_after(a);
}

static size_t agent_rcv(gw_conn *conn, uint8_t *p, size_t n)
{
    return conn_feed(gw_container_of(conn, agent_conn, conn), p, n);
}

static size_t agent_max_input(gw_conn *conn)
{
    GW_UNUSED(conn);
    return IN_MAX;
}

/* The client connection's reader on the connection's one read path. */
static const gw_conn_reader agent_reader = {agent_rcv, agent_max_input, NULL};

static void conn_rerun_task(gw_task *t)
{
    agent_conn *a = gw_container_of(t, agent_conn, task);
    if (a->phase == P_WS)
        conn_process(a);
}

static void conn_cb(gw_io *io, uint32_t ev)
{
    agent_conn *a = gw_container_of(io, agent_conn, conn.io);
    if (a->phase == P_DEAD)
        return;
    if (ev & GW_EV_WRITE) {
        int fr = gw_conn_flush(&a->conn);
        if (fr == GW_ERR) {
            if (a->phase == P_WS)
                gw_ws_abort(&a->ws, gw_cause_downstream_closed);
            conn_close(a);
            return;
        }
        if (a->phase == P_FINISH && fr == GW_OK) {
            conn_close(a);
            return;
        }
        pty_sess *s = a->s;
        if (s && s->paused && gw_conn_queued(&a->conn) < OUT_LOW) {
            s->paused = 0;
            sess_read(s, PTY_ROUNDS); /* output waiting in the PTY goes now */
            gw_conn_flush(&a->conn);
            sess_update_io(s);
        }
    }
    if (!(ev & (GW_EV_READ | GW_EV_ERROR)) || a->phase == P_DEAD)
        return;
    for (int round = 0; round < 8; round++) {
        int filled = 0;
        ssize_t r = gw_conn_read_into(&a->conn, &agent_reader, &filled);
        if (r == GW_AGAIN)
            return;
        if (r == GW_CONN_FULL || r <= 0) {
            if (a->phase == P_WS)
                gw_ws_abort(&a->ws, r == GW_CONN_FULL ? gw_cause_too_large : gw_cause_downstream_closed);
            conn_close(a);
            return;
        }
        conn_after(a);
        if (!filled || a->phase == P_DEAD || (a->conn.flags & GW_CONN_F_PAUSED))
            return;
    }
}

static void accept_cb(gw_io *io, uint32_t ev)
{
    GW_UNUSED(ev);
    for (int i = 0; i < 64; i++) {
        struct sockaddr_storage ss;
        int fd = gw_sock_accept(io->fd, &ss);
        if (fd < 0)
            return;
        gw_sock_nodelay(fd);
        agent_conn *a = gw_calloc(1, sizeof *a);
        gw_conn_init(&a->conn, A.loop, fd, conn_cb);
        gw_sock_ntop(&ss, a->ip, sizeof a->ip);
        a->timer.cb = conn_timer;
        a->task.fn = conn_rerun_task;
        gw_list_insert_tail(&A.conns, &a->node);
        gw_conn_want_read(&a->conn, 1);
        gw_timer_start(A.loop, &a->timer, HANDSHAKE_MS);
    }
}

/* ================================= signals ================================== */

static void stop_check(gw_timer *t)
{
    GW_UNUSED(t);
    uint64_t waited = gw_loop_now(A.loop) - A.stop_started;
    if (A.nsessions == 0 && gw_list_empty(&A.conns)) {
        gw_loop_stop(A.loop);
        return;
    }
    if (waited >= 2 * KILL_AFTER_MS) {
        gw_loop_stop(A.loop); /* give up on stragglers */
        return;
    }
    if (waited >= KILL_AFTER_MS) {
        for (gw_list *n = A.sessions.next; n != &A.sessions; n = n->next) {
            pty_sess *s = gw_container_of(n, pty_sess, node);
            if (s->pid) {
                kill(-s->pid, SIGKILL);
                kill(s->pid, SIGKILL);
            }
        }
    }
    gw_timer_start(A.loop, &A.stop_timer, 100);
}

static void begin_stop(void)
{
    if (A.stopping)
        return;
    A.stopping = 1;
    A.stop_started = gw_loop_now(A.loop);
    gw_log_msg(GW_LOG_INFO, NULL, "agent stopping");
    gw_io_stop(A.loop, &A.lis);
    close(A.lis.fd);
    A.lis.fd = -1;
    if (A.unix_path[0])
        unlink(A.unix_path);
    for (gw_list *n = A.conns.next; n != &A.conns;) {
        agent_conn *a = gw_container_of(n, agent_conn, node);
        n = n->next;
        if (conn_ws_open(a)) {
            gw_ws_close(&a->ws, GW_WS_CLOSE_GOING_AWAY, "agent shutting down", gw_cause_shutdown);
            conn_finish(a);
        } else {
            conn_close(a);
        }
    }
    for (gw_list *n = A.sessions.next; n != &A.sessions; n = n->next) {
        pty_sess *s = gw_container_of(n, pty_sess, node);
        s->killing = 1;
        gw_timer_stop(A.loop, &s->timer);
        if (s->pid) {
            kill(-s->pid, SIGHUP);
            kill(s->pid, SIGHUP);
        }
    }
    A.stop_timer.cb = stop_check;
    gw_timer_start(A.loop, &A.stop_timer, 50);
}

static void sig_cb(gw_io *io, uint32_t ev)
{
    GW_UNUSED(ev);
    struct signalfd_siginfo si;
    while (read(io->fd, &si, sizeof si) == (ssize_t)sizeof si) {
        if (si.ssi_signo == SIGCHLD)
            reap();
        else if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT)
            begin_stop();
    }
}

/* ================================== main ==================================== */

int gw_agent_main(int argc, char **argv)
{
    const char *listen_s = "127.0.0.1:7681";
    const char *grace_s = "60s", *scroll_s = "64KiB";
    char **cmd = NULL;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        if (strcmp(o, "--help") == 0 || strcmp(o, "-h") == 0) {
            fputs(agent_usage, stdout);
            return 0;
        }
        if (strcmp(o, "--") == 0) {
            if (i + 1 < argc)
                cmd = argv + i + 1;
            break;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "wsgate agent: %s needs a value\n\n%s", o, agent_usage);
            return 2;
        }
        if (strcmp(o, "--listen") == 0)
            listen_s = argv[++i];
        else if (strcmp(o, "--grace") == 0)
            grace_s = argv[++i];
        else if (strcmp(o, "--scrollback") == 0)
            scroll_s = argv[++i];
        else {
            fprintf(stderr, "wsgate agent: unknown option \"%s\"\n\n%s", o, agent_usage);
            return 2;
        }
    }
    gw_log_format fmt = GW_LOG_FORMAT_JSON;
    gw_log_level lvl = GW_LOG_INFO;
    const char *e = getenv("GATEWAY_LOG_FORMAT");
    if (e && e[0] && gw_log_parse_format(e, &fmt) != GW_OK) {
        fprintf(stderr, "wsgate agent: GATEWAY_LOG_FORMAT: unknown \"%s\"\n", e);
        return 2;
    }
    e = getenv("GATEWAY_LOG_LEVEL");
    if (e && e[0] && gw_log_parse_level(e, &lvl) != GW_OK) {
        fprintf(stderr, "wsgate agent: GATEWAY_LOG_LEVEL: unknown \"%s\"\n", e);
        return 2;
    }
    gw_log_init(fmt, lvl, "wsgate-agent", 2);

    memset(&A, 0, sizeof A);
    uint64_t scroll;
    gw_addr addr;
    if (gw_parse_duration_ms(grace_s, &A.grace_ms) != GW_OK) {
        fprintf(stderr, "wsgate agent: --grace: cannot parse \"%s\" as a duration\n", grace_s);
        return 2;
    }
    if (gw_parse_size(scroll_s, &scroll) != GW_OK || scroll > 64u * 1024 * 1024) {
        fprintf(stderr, "wsgate agent: --scrollback: \"%s\" is not a size up to 64MiB\n", scroll_s);
        return 2;
    }
    A.scrollback = (size_t)scroll;
    if (gw_parse_addr(listen_s, &addr) != GW_OK || !addr.set) {
        fprintf(stderr, "wsgate agent: --listen: cannot parse \"%s\"\n", listen_s);
        return 2;
    }
    if (addr.is_unix && addr.path[0] != '/') {
        /* A token names its agent's socket by an absolute path only. */
        fprintf(stderr, "wsgate agent: --listen: \"%s\": a unix socket path must be absolute\n", listen_s);
        return 2;
    }
    const char *secret = getenv("GATEWAY_AGENT_SECRET");
    if (secret && secret[0]) {
        A.have_secret = 1;
        gw_bearer_digest(secret, strlen(secret), A.secret_hash);
    } else if (!addr.is_unix) {
        /* A terminal agent must never be a shell for whoever reaches its
         * port (any web page reaches a loopback one): without a secret, a
         * unix socket only, which only this user can open. */
        fprintf(stderr,
                "wsgate agent: GATEWAY_AGENT_SECRET is required to listen on %s (TCP); set it, or listen on a "
                "unix:/path socket\n",
                listen_s);
        return 2;
    }
    static char *default_cmd[2];
    if (!cmd) {
        const char *sh = getenv("SHELL");
        default_cmd[0] = (char *)(sh && sh[0] ? sh : "/bin/sh");
        cmd = default_cmd;
    }
    A.cmd = cmd;
    A.limits = (gw_h1_limits){8192, 16384, 64};

    /* Signals arrive through a signalfd; the children get them unblocked. */
    signal(SIGPIPE, SIG_IGN);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigprocmask(SIG_BLOCK, &set, NULL);
    prctl(PR_SET_CHILD_SUBREAPER, 1);

    A.loop = gw_loop_new();
    if (!A.loop) {
        fprintf(stderr, "wsgate agent: cannot create the event loop\n");
        return 1;
    }
    gw_list_init(&A.conns);
    gw_list_init(&A.sessions);
    char err[300];
    /* Without a secret the socket file is the only gate: gw_sock_listen
     * makes it 0600 and never replaces anything but a stale socket. */
    int lfd = gw_sock_listen(&addr, 0, 128, err, sizeof err);
    if (lfd < 0) {
        fprintf(stderr, "wsgate agent: %s\n", err);
        gw_loop_free(A.loop);
        return 1;
    }
    if (addr.is_unix)
        snprintf(A.unix_path, sizeof A.unix_path, "%s", addr.path);
    A.lis.fd = lfd;
    A.lis.cb = accept_cb;
    gw_io_start(A.loop, &A.lis, GW_EV_READ);
    A.sig.fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    A.sig.cb = sig_cb;
    gw_io_start(A.loop, &A.sig, GW_EV_READ);

    char shown[300];
    gw_addr_format(&addr, shown, sizeof shown);
    if (!addr.is_unix && addr.port == 0) {
        /* --listen 127.0.0.1:0: tell which port the kernel picked. */
        snprintf(shown, sizeof shown, "%s:%u", addr.host, gw_sock_local_port(lfd));
    }
    gw_log_line *l = gw_log_begin(GW_LOG_INFO, "agent listening", NULL);
    if (l) {
        gw_log_str(l, "addr", shown, 0);
        gw_log_bool(l, "secret", A.have_secret, 0);
        gw_log_int(l, "grace_ms", (int64_t)A.grace_ms, 0);
        gw_log_int(l, "scrollback", (int64_t)A.scrollback, 0);
        gw_log_str(l, "command", A.cmd[0], 0);
        gw_log_int(l, "pid", getpid(), GW_LOG_JSON_ONLY);
        gw_log_end(l);
    }

    gw_loop_run(A.loop);

    /* Whatever is left after the stop budget goes now. */
    while (!gw_list_empty(&A.conns))
        conn_close(gw_container_of(A.conns.next, agent_conn, node));
    while (!gw_list_empty(&A.sessions))
        sess_free(gw_container_of(A.sessions.next, pty_sess, node));
    for (int i = 0; i < 20; i++) { /* collect the SIGKILLed */
        int st;
        if (waitpid(-1, &st, WNOHANG) < 0 && errno == ECHILD)
            break;
        usleep(10000);
    }
    if (A.lis.fd >= 0) {
        gw_io_stop(A.loop, &A.lis);
        close(A.lis.fd);
    }
    gw_io_stop(A.loop, &A.sig);
    close(A.sig.fd);
    gw_loop_free(A.loop);
    gw_ws_thread_exit();
    gw_conn_thread_exit();
    gw_log_msg(GW_LOG_INFO, NULL, "agent stopped");
    return 0;
}

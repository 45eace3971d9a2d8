/*
 * loadgen: a single-threaded epoll WebSocket load generator for the echo
 * benchmark. It is deliberately self-contained (nothing from src/) so that
 * the tool measuring the gateway shares no code, and no bugs, with it.
 *
 * Modes (all stop by themselves):
 *   rate        open loop: a total of R msgs/s spread over C connections on a
 *               fixed schedule. Latency is taken from each message's
 *               *scheduled* send time, so a server stall that delays sends
 *               shows up in the latency instead of silently lowering the
 *               offered load (coordinated omission, as in wrk2).
 *   throughput  closed loop: C connections each keep W messages in flight.
 *               With --burst K instead: each connection sends K messages
 *               back-to-back (one write), waits for all K echoes, and sends
 *               the next K; the result line then carries the burst round
 *               trip (first send to last echo) percentiles.
 *   idle        open N connections, print a line when all are up, hold them,
 *               then close.
 *   connect     connection churn: N connections in total, at most P at a time,
 *               each doing a handshake, one echoed message and a clean close
 *               (our close frame, the server's close frame, then the server's
 *               FIN); reports completed connections per second. Stops at N or
 *               after the duration, whichever comes first.
 *
 * Every run ends with one key=value line on stdout for scripts; progress
 * and diagnostics go to stderr.
 *
 * Build: cc -std=c17 -O2 -Wall -Wextra -Werror -o loadgen loadgen.c -lcrypto
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define NS_PER_S 1000000000ULL
#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define MAX_HS_RESPONSE 8192
#define SCRATCH_SIZE (256 * 1024)
#define FRAME_POOL 16
/* A connection whose unsent bytes exceed this is not given more messages:
 * they are counted as dropped errors, so a dead server cannot make the
 * generator buffer without bound. */
#define MAX_BACKLOG (8u * 1024 * 1024)

enum mode { MODE_RATE, MODE_THROUGHPUT, MODE_IDLE, MODE_CONNECT };

struct opts {
    const char *host;
    int port;
    const char *path;
    const char *label;
    enum mode mode;
    int conns;
    size_t size;
    double rate;
    int window;
    int burst;
    double duration;
    double warmup;
    double hold;
    double drain;
    double connect_timeout;
    int connect_parallel;
    bool spin;
};

/* ---------- time ---------- */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS_PER_S + (uint64_t)ts.tv_nsec;
}

/* ---------- log-linear histogram (HDR style) ----------
 * Values below 2^SUB_BITS are counted exactly; above, every power-of-two
 * range is cut into 2^(SUB_BITS-1) equal buckets, so the relative error is
 * below 2^-(SUB_BITS-1) (< 0.8 % here) over the whole 64-bit range with a
 * fixed 58 KiB table and no per-sample storage. */
#define SUB_BITS 8
#define SUB_COUNT (1u << SUB_BITS)
#define SUB_HALF (SUB_COUNT / 2)
#define HIST_BUCKETS (SUB_COUNT + (64 - SUB_BITS) * SUB_HALF)

struct hist {
    uint64_t counts[HIST_BUCKETS];
    uint64_t total;
    uint64_t max;
    uint64_t min;
};

static unsigned hist_index(uint64_t v)
{
    if (v < SUB_COUNT)
        return (unsigned)v;
    unsigned msb = 63u - (unsigned)__builtin_clzll(v);
    unsigned shift = msb - (SUB_BITS - 1);
    unsigned sub = (unsigned)(v >> shift);
    return SUB_COUNT + (shift - 1) * SUB_HALF + (sub - SUB_HALF);
}

/* Highest value that maps to bucket idx (what HDR reports for percentiles). */
static uint64_t hist_value(unsigned idx)
{
    if (idx < SUB_COUNT)
        return idx;
    unsigned k = idx - SUB_COUNT;
    unsigned shift = k / SUB_HALF + 1;
    uint64_t sub = k % SUB_HALF + SUB_HALF;
    return (sub << shift) + ((1ULL << shift) - 1);
}

static void hist_record(struct hist *h, uint64_t v)
{
    h->counts[hist_index(v)]++;
    if (h->total == 0 || v < h->min)
        h->min = v;
    h->total++;
    if (v > h->max)
        h->max = v;
}

static uint64_t hist_percentile(const struct hist *h, double p)
{
    if (h->total == 0)
        return 0;
    uint64_t want = (uint64_t)(p / 100.0 * (double)h->total + 0.999999);
    if (want < 1)
        want = 1;
    uint64_t seen = 0;
    for (unsigned i = 0; i < HIST_BUCKETS; i++) {
        seen += h->counts[i];
        if (seen >= want) {
            uint64_t v = hist_value(i);
            return v < h->max ? v : h->max;
        }
    }
    return h->max;
}

/* ---------- connections ---------- */

enum cstate { CS_IDLE, CS_CONNECTING, CS_HANDSHAKE, CS_OPEN, CS_DEAD };

struct conn {
    int fd;
    enum cstate st;
    bool epollout;
    bool dirty;
    char accept[32];
    char *hs;
    size_t hs_len;
    unsigned char *out;
    size_t out_off, out_len, out_cap;
    /* frame parser */
    unsigned char hdr[14];
    unsigned hdr_len, hdr_need;
    bool in_payload;
    uint8_t opcode;
    bool fin, masked;
    uint8_t mask[4];
    uint64_t pay_len, pay_pos;
    uint64_t msg_len;
    unsigned char ctl[125];
    /* scheduled send times of messages in flight (rate mode), a ring */
    uint64_t *fifo;
    size_t fifo_cap, fifo_head, fifo_count;
    uint64_t sent, recv;
    /* connect mode: when this connection was started, whether our close
     * frame went out and whether the server's came back */
    uint64_t t_start;
    uint64_t burst_t0; /* throughput --burst: when the burst in flight left */
    bool closing, got_close;
};

struct stats {
    uint64_t connect_errors, handshake_errors, closed_errors, proto_errors;
    uint64_t size_errors, dropped, lost;
    uint64_t sent, recv, recv_window;
};

static struct opts o;
static struct conn *conns;
static int epfd;
static struct stats st;
static struct hist hist;
static struct hist lag; /* rate mode: actual send time minus scheduled */
static unsigned char *frames[FRAME_POOL];
static size_t frame_len;
static unsigned frame_next;
static int *dirty_list;
static int dirty_count;
static int open_count, pending_count;
static int nslots;          /* entries in conns[]: o.conns, or the parallelism in connect mode */
static uint64_t completed;  /* connect mode: connections closed cleanly */
static uint64_t last_done;  /* connect mode: when the last one completed */
static uint64_t window_start, window_end; /* measurement window */
static bool sending = true;
static struct sockaddr_storage addr;
static socklen_t addr_len;

static void die(const char *msg)
{
    fprintf(stderr, "loadgen: %s\n", msg);
    exit(2);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n);
    if (!p)
        die("out of memory");
    return p;
}

static uint64_t total_errors(void)
{
    return st.connect_errors + st.handshake_errors + st.closed_errors + st.proto_errors +
           st.size_errors + st.dropped + st.lost;
}

static void conn_events(struct conn *c, bool want_out)
{
    if (c->epollout == want_out)
        return;
    struct epoll_event ev = {.events = EPOLLIN | (want_out ? EPOLLOUT : 0u), .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->epollout = want_out;
}

static void conn_kill(struct conn *c)
{
    if (c->st == CS_DEAD || c->st == CS_IDLE)
        return;
    if (c->st == CS_OPEN)
        open_count--;
    else
        pending_count--;
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    c->st = CS_DEAD;
    free(c->hs);
    c->hs = NULL;
    /* Messages it still owed us are lost. */
    if (c->sent > c->recv)
        st.lost += c->sent - c->recv;
    c->recv = c->sent;
}

static void out_append(struct conn *c, const void *p, size_t n)
{
    if (c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    if (c->out_len + n > c->out_cap) {
        if (c->out_off > 0) {
            memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
            c->out_len -= c->out_off;
            c->out_off = 0;
        }
        size_t cap = c->out_cap ? c->out_cap : 4096;
        while (cap < c->out_len + n)
            cap *= 2;
        if (cap != c->out_cap) {
            unsigned char *nb = realloc(c->out, cap);
            if (!nb)
                die("out of memory");
            c->out = nb;
            c->out_cap = cap;
        }
    }
    memcpy(c->out + c->out_len, p, n);
    c->out_len += n;
    if (!c->dirty) {
        c->dirty = true;
        dirty_list[dirty_count++] = (int)(c - conns);
    }
}

static void conn_flush(struct conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
        if (n > 0) {
            c->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            conn_events(c, true);
            return;
        }
        st.closed_errors++;
        conn_kill(c);
        return;
    }
    c->out_off = c->out_len = 0;
    if (c->st == CS_OPEN || c->st == CS_HANDSHAKE)
        conn_events(c, false);
}

static void flush_dirty(void)
{
    for (int i = 0; i < dirty_count; i++) {
        struct conn *c = &conns[dirty_list[i]];
        c->dirty = false;
        if (c->st == CS_OPEN || c->st == CS_HANDSHAKE)
            conn_flush(c);
    }
    dirty_count = 0;
}

static void fifo_push(struct conn *c, uint64_t t)
{
    if (c->fifo_count == c->fifo_cap) {
        size_t ncap = c->fifo_cap ? c->fifo_cap * 2 : 64;
        uint64_t *nf = xmalloc(ncap * sizeof *nf);
        for (size_t i = 0; i < c->fifo_count; i++)
            nf[i] = c->fifo[(c->fifo_head + i) % c->fifo_cap];
        free(c->fifo);
        c->fifo = nf;
        c->fifo_cap = ncap;
        c->fifo_head = 0;
    }
    c->fifo[(c->fifo_head + c->fifo_count) % c->fifo_cap] = t;
    c->fifo_count++;
}

static bool fifo_pop(struct conn *c, uint64_t *t)
{
    if (c->fifo_count == 0)
        return false;
    *t = c->fifo[c->fifo_head];
    c->fifo_head = (c->fifo_head + 1) % c->fifo_cap;
    c->fifo_count--;
    return true;
}

/* Queue one data message; false when the connection is too backed up. */
static bool send_message(struct conn *c)
{
    if (c->out_len - c->out_off > MAX_BACKLOG) {
        st.dropped++;
        return false;
    }
    out_append(c, frames[frame_next], frame_len);
    frame_next = (frame_next + 1) % FRAME_POOL;
    c->sent++;
    st.sent++;
    return true;
}

static void send_control(struct conn *c, uint8_t opcode, const unsigned char *p, size_t n)
{
    unsigned char f[2 + 4 + 125];
    uint8_t m[4];
    if (getrandom(m, 4, 0) != 4)
        memset(m, 0x5a, 4);
    f[0] = (unsigned char)(0x80 | opcode);
    f[1] = (unsigned char)(0x80 | n);
    memcpy(f + 2, m, 4);
    for (size_t i = 0; i < n; i++)
        f[6 + i] = p[i] ^ m[i & 3];
    out_append(c, f, 6 + n);
}

static void on_message(struct conn *c, uint64_t len, uint64_t t)
{
    if (len != o.size)
        st.size_errors++;
    c->recv++;
    st.recv++;
    if (t >= window_start && t < window_end)
        st.recv_window++;
    if (o.mode == MODE_RATE) {
        uint64_t sched;
        if (fifo_pop(c, &sched) && sched >= window_start && sched < window_end)
            hist_record(&hist, t > sched ? t - sched : 0);
    } else if (o.mode == MODE_THROUGHPUT && o.burst > 0) {
        if (c->recv == c->sent) { /* the whole burst is back */
            if (c->burst_t0 >= window_start && t < window_end)
                hist_record(&hist, t > c->burst_t0 ? t - c->burst_t0 : 0);
            if (sending && t < window_end) {
                c->burst_t0 = t;
                for (int k = 0; k < o.burst; k++)
                    send_message(c);
            }
        }
    } else if (o.mode == MODE_THROUGHPUT) {
        if (sending && t < window_end)
            send_message(c);
    } else if (o.mode == MODE_CONNECT && !c->closing) {
        static const unsigned char normal[2] = {0x03, 0xe8}; /* 1000 */
        send_control(c, 0x8, normal, sizeof normal);
        c->closing = true;
    }
}

/* A complete frame has been parsed; returns false when the connection must
 * be dropped. */
static bool on_frame(struct conn *c, uint64_t t)
{
    switch (c->opcode) {
    case 0x0:
    case 0x1:
    case 0x2:
        c->msg_len += c->pay_len;
        if (c->fin) {
            uint64_t len = c->msg_len;
            c->msg_len = 0;
            on_message(c, len, t);
        }
        return true;
    case 0x8:
        if (o.mode == MODE_CONNECT && c->closing) {
            /* The server's answer to our close: now wait for its FIN. */
            c->got_close = true;
            return true;
        }
        st.closed_errors++;
        fprintf(stderr, "loadgen: server sent close\n");
        return false;
    case 0x9:
        send_control(c, 0xA, c->ctl, (size_t)c->pay_len);
        return true;
    case 0xA:
        return true;
    default:
        st.proto_errors++;
        return false;
    }
}

/* Streaming frame parser: accepts the byte stream cut anywhere. */
static bool feed(struct conn *c, const unsigned char *p, size_t n, uint64_t t)
{
    while (n > 0) {
        if (!c->in_payload) {
            if (c->hdr_need == 0)
                c->hdr_need = 2;
            while (c->hdr_len < c->hdr_need && n > 0) {
                c->hdr[c->hdr_len++] = *p++;
                n--;
                if (c->hdr_len == 2) {
                    unsigned l7 = c->hdr[1] & 0x7f;
                    c->hdr_need = 2 + (l7 == 126 ? 2 : l7 == 127 ? 8 : 0) +
                                  ((c->hdr[1] & 0x80) ? 4 : 0);
                }
            }
            if (c->hdr_len < c->hdr_need)
                return true;
            c->fin = (c->hdr[0] & 0x80) != 0;
            c->opcode = c->hdr[0] & 0x0f;
            c->masked = (c->hdr[1] & 0x80) != 0;
            unsigned l7 = c->hdr[1] & 0x7f;
            unsigned pos = 2;
            if (l7 == 126) {
                c->pay_len = ((uint64_t)c->hdr[2] << 8) | c->hdr[3];
                pos = 4;
            } else if (l7 == 127) {
                c->pay_len = 0;
                for (int i = 0; i < 8; i++)
                    c->pay_len = (c->pay_len << 8) | c->hdr[2 + i];
                pos = 10;
            } else {
                c->pay_len = l7;
            }
            if (c->masked)
                memcpy(c->mask, c->hdr + pos, 4);
            if ((c->hdr[0] & 0x70) != 0 || ((c->opcode & 0x8) && (c->pay_len > 125 || !c->fin))) {
                st.proto_errors++;
                return false;
            }
            c->pay_pos = 0;
            c->hdr_len = 0;
            c->hdr_need = 0;
            c->in_payload = true;
        }
        uint64_t left = c->pay_len - c->pay_pos;
        size_t k = left < n ? (size_t)left : n;
        if (c->opcode & 0x8) {
            for (size_t i = 0; i < k; i++) {
                uint64_t at = c->pay_pos + i;
                c->ctl[at] = c->masked ? (unsigned char)(p[i] ^ c->mask[at & 3]) : p[i];
            }
        }
        c->pay_pos += k;
        p += k;
        n -= k;
        if (c->pay_pos == c->pay_len) {
            c->in_payload = false;
            if (!on_frame(c, t))
                return false;
        }
    }
    return true;
}

/* ---------- handshake ---------- */

static void b64(const unsigned char *in, int n, char *out)
{
    EVP_EncodeBlock((unsigned char *)out, in, n);
}

static bool start_connect(struct conn *c)
{
    int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fprintf(stderr, "loadgen: socket: %s\n", strerror(errno));
        st.connect_errors++;
        c->st = CS_DEAD;
        return false;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    if (connect(fd, (struct sockaddr *)&addr, addr_len) < 0 && errno != EINPROGRESS) {
        fprintf(stderr, "loadgen: connect: %s\n", strerror(errno));
        close(fd);
        c->fd = -1;
        st.connect_errors++;
        c->st = CS_DEAD;
        return false;
    }
    c->st = CS_CONNECTING;
    c->t_start = now_ns();
    pending_count++;
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
    c->epollout = true;
    return true;
}

static void send_handshake(struct conn *c)
{
    unsigned char raw[16];
    char key[32];
    if (getrandom(raw, sizeof raw, 0) != (ssize_t)sizeof raw)
        die("getrandom failed");
    b64(raw, sizeof raw, key);
    char cat[128];
    snprintf(cat, sizeof cat, "%s%s", key, WS_GUID);
    unsigned char dig[SHA_DIGEST_LENGTH];
    SHA1((const unsigned char *)cat, strlen(cat), dig);
    b64(dig, SHA_DIGEST_LENGTH, c->accept);
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\nUser-Agent: wsgate-loadgen\r\n\r\n",
                     o.path, o.host, o.port, key);
    c->st = CS_HANDSHAKE;
    c->hs = xmalloc(MAX_HS_RESPONSE + 1);
    c->hs_len = 0;
    out_append(c, req, (size_t)n);
}

/* Case-insensitive search for a header line's value in a response head. */
static bool header_value(const char *head, const char *name, char *val, size_t cap)
{
    size_t nl = strlen(name);
    const char *p = strstr(head, "\r\n");
    while (p) {
        p += 2;
        if (strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (*v == ' ' || *v == '\t')
                v++;
            const char *e = strstr(v, "\r\n");
            if (!e)
                return false;
            while (e > v && (e[-1] == ' ' || e[-1] == '\t'))
                e--;
            size_t len = (size_t)(e - v);
            if (len >= cap)
                return false;
            memcpy(val, v, len);
            val[len] = 0;
            return true;
        }
        p = strstr(p, "\r\n");
    }
    return false;
}

static void handshake_fail(struct conn *c, const char *why)
{
    if (st.handshake_errors < 5)
        fprintf(stderr, "loadgen: handshake failed: %s\n", why);
    st.handshake_errors++;
    conn_kill(c);
}

/* Returns bytes after the response head (already frames), or -1 on error,
 * or -2 when the head is not complete yet. */
static void on_handshake_data(struct conn *c, const unsigned char *p, size_t n, uint64_t t)
{
    size_t room = MAX_HS_RESPONSE - c->hs_len;
    size_t k = n < room ? n : room;
    memcpy(c->hs + c->hs_len, p, k);
    c->hs_len += k;
    c->hs[c->hs_len] = 0;
    char *end = strstr(c->hs, "\r\n\r\n");
    if (!end) {
        if (c->hs_len == MAX_HS_RESPONSE)
            handshake_fail(c, "response head too long");
        return;
    }
    size_t head_len = (size_t)(end - c->hs) + 4;
    end[2] = 0; /* keep the last header's CRLF for header_value */
    if (strncmp(c->hs, "HTTP/1.1 101", 12) != 0) {
        char line[64];
        snprintf(line, sizeof line, "status %.40s", c->hs);
        char *cr = strchr(line, '\r');
        if (cr)
            *cr = 0;
        handshake_fail(c, line);
        return;
    }
    char acc[64];
    if (!header_value(c->hs, "sec-websocket-accept", acc, sizeof acc) ||
        strcmp(acc, c->accept) != 0) {
        handshake_fail(c, "bad Sec-WebSocket-Accept");
        return;
    }
    size_t old_len = c->hs_len - k; /* bytes of head we had before this read */
    size_t consumed_here = head_len - old_len;
    free(c->hs);
    c->hs = NULL;
    c->st = CS_OPEN;
    pending_count--;
    open_count++;
    if (consumed_here < n && !feed(c, p + consumed_here, n - consumed_here, t)) {
        conn_kill(c);
        return;
    }
    if (o.mode == MODE_CONNECT && c->sent == 0)
        send_message(c);
}

/* Connect mode: the server closed after the close handshake. */
static void conn_done(struct conn *c, uint64_t t)
{
    completed++;
    last_done = t;
    hist_record(&hist, t - c->t_start);
    conn_kill(c);
}

static void on_readable(struct conn *c, uint64_t t)
{
    static unsigned char scratch[SCRATCH_SIZE];
    for (;;) {
        ssize_t n = read(c->fd, scratch, sizeof scratch);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) {
            if (c->st == CS_OPEN && c->got_close)
                conn_done(c, t);
            else if (c->st == CS_HANDSHAKE)
                handshake_fail(c, n == 0 ? "connection closed" : strerror(errno));
            else {
                st.closed_errors++;
                conn_kill(c);
            }
            return;
        }
        if (c->st == CS_HANDSHAKE)
            on_handshake_data(c, scratch, (size_t)n, t);
        else if (c->st == CS_OPEN && !feed(c, scratch, (size_t)n, t))
            conn_kill(c);
        if (c->st != CS_OPEN && c->st != CS_HANDSHAKE)
            return;
        if ((size_t)n < sizeof scratch)
            return;
    }
}

static void on_event(struct epoll_event *ev, uint64_t t)
{
    struct conn *c = ev->data.ptr;
    if (c->st == CS_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0 || (ev->events & (EPOLLERR | EPOLLHUP))) {
            if (st.connect_errors < 5)
                fprintf(stderr, "loadgen: connect: %s\n", strerror(err ? err : ECONNRESET));
            st.connect_errors++;
            conn_kill(c);
            return;
        }
        send_handshake(c);
        conn_flush(c);
        return;
    }
    if (ev->events & (EPOLLIN | EPOLLERR | EPOLLHUP))
        on_readable(c, t);
    if ((ev->events & EPOLLOUT) && (c->st == CS_OPEN || c->st == CS_HANDSHAKE))
        conn_flush(c);
}

/* Waits for events until deadline (absolute ns) at the latest, handling
 * them. Sub-millisecond precision matters for the rate schedule. */
static void poll_once(uint64_t deadline)
{
    struct epoll_event evs[256];
    uint64_t t = now_ns();
    uint64_t wait = deadline > t && !o.spin ? deadline - t : 0;
    struct timespec ts = {.tv_sec = (time_t)(wait / NS_PER_S), .tv_nsec = (long)(wait % NS_PER_S)};
    int n = epoll_pwait2(epfd, evs, 256, &ts, NULL);
    if (n < 0 && errno == ENOSYS)
        n = epoll_wait(epfd, evs, 256, (int)((wait + 999999) / 1000000));
    if (n < 0) {
        if (errno == EINTR)
            return;
        die("epoll_wait failed");
    }
    t = now_ns();
    for (int i = 0; i < n; i++)
        on_event(&evs[i], t);
    flush_dirty();
}

/* ---------- setup ---------- */

static void build_frames(void)
{
    size_t hl = o.size < 126 ? 2 : o.size <= 0xffff ? 4 : 10;
    frame_len = hl + 4 + o.size;
    unsigned char *payload = xmalloc(o.size ? o.size : 1);
    for (size_t i = 0; i < o.size; i++)
        payload[i] = (unsigned char)('a' + i % 26);
    /* A pool of frames, each with its own random mask, masked once up
     * front: every frame on the wire is valid and masked, and the
     * generator spends its CPU on the network rather than on XOR. */
    for (int f = 0; f < FRAME_POOL; f++) {
        unsigned char *b = xmalloc(frame_len);
        b[0] = 0x82;
        if (hl == 2) {
            b[1] = (unsigned char)(0x80 | o.size);
        } else if (hl == 4) {
            b[1] = 0x80 | 126;
            b[2] = (unsigned char)(o.size >> 8);
            b[3] = (unsigned char)o.size;
        } else {
            b[1] = 0x80 | 127;
            for (int i = 0; i < 8; i++)
                b[2 + i] = (unsigned char)((uint64_t)o.size >> (56 - 8 * i));
        }
        unsigned char *m = b + hl;
        if (getrandom(m, 4, 0) != 4)
            die("getrandom failed");
        for (size_t i = 0; i < o.size; i++)
            b[hl + 4 + i] = payload[i] ^ m[i & 3];
        frames[f] = b;
    }
    free(payload);
}

static void resolve(void)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res;
    char port[16];
    snprintf(port, sizeof port, "%d", o.port);
    int rc = getaddrinfo(o.host, port, &hints, &res);
    if (rc != 0) {
        fprintf(stderr, "loadgen: %s: %s\n", o.host, gai_strerror(rc));
        exit(2);
    }
    memcpy(&addr, res->ai_addr, res->ai_addrlen);
    addr_len = res->ai_addrlen;
    freeaddrinfo(res);
}

/* Opens all connections, at most connect_parallel handshakes at a time so
 * that 10,000 idle connections do not overflow the server's accept queue. */
static uint64_t connect_all(void)
{
    uint64_t t0 = now_ns();
    uint64_t deadline = t0 + (uint64_t)(o.connect_timeout * 1e9);
    int next = 0;
    while (now_ns() < deadline) {
        while (next < o.conns && pending_count < o.connect_parallel)
            start_connect(&conns[next++]);
        if (next == o.conns && pending_count == 0)
            break;
        uint64_t t = now_ns();
        poll_once(t + 50000000ULL < deadline ? t + 50000000ULL : deadline);
    }
    for (int i = 0; i < o.conns; i++) {
        struct conn *c = &conns[i];
        if (c->st == CS_CONNECTING || c->st == CS_HANDSHAKE) {
            handshake_fail(c, "timed out");
        } else if (c->st == CS_IDLE) {
            c->st = CS_DEAD;
            st.connect_errors++;
        }
    }
    return now_ns() - t0;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: loadgen --mode rate|throughput|idle|connect [options]\n"
            "  --host H          server host (127.0.0.1)\n"
            "  --port P          server port (required)\n"
            "  --path P          request path (/)\n"
            "  --conns N         connections (rate/throughput 50, idle 1000;\n"
            "                    connect: in total, 1000)\n"
            "  --size B          message payload bytes (64)\n"
            "  --rate R          rate mode: total messages per second (10000)\n"
            "  --window W        throughput mode: messages in flight per connection (8)\n"
            "  --burst K         throughput mode: K messages back-to-back per connection,\n"
            "                    the next K once all are echoed (replaces --window)\n"
            "  --duration S      measured seconds (5); connect: time limit\n"
            "  --warmup S        seconds run before measuring (1)\n"
            "  --hold S          idle mode: seconds to hold connections once up (5)\n"
            "  --drain S         seconds to wait for outstanding echoes at the end (2)\n"
            "  --connect-timeout S  (30)   --connect-parallel N  (256)\n"
            "                    connect mode: connections at a time (P)\n"
            "  --label TEXT      copied into the result line\n"
            "  --spin            never sleep in epoll (busy-poll the generator's core)\n");
    exit(2);
}

static double parse_num(const char *s, const char *what)
{
    char *end;
    double v = strtod(s, &end);
    if (*s == 0 || *end != 0 || v < 0) {
        fprintf(stderr, "loadgen: bad %s: %s\n", what, s);
        exit(2);
    }
    return v;
}

static void parse_args(int argc, char **argv)
{
    static const struct option lo[] = {
        {"mode", required_argument, 0, 'm'},    {"host", required_argument, 0, 'h'},
        {"port", required_argument, 0, 'p'},    {"path", required_argument, 0, 'P'},
        {"conns", required_argument, 0, 'c'},   {"size", required_argument, 0, 's'},
        {"rate", required_argument, 0, 'r'},    {"window", required_argument, 0, 'w'},
        {"duration", required_argument, 0, 'd'}, {"warmup", required_argument, 0, 'W'},
        {"hold", required_argument, 0, 'H'},    {"drain", required_argument, 0, 'D'},
        {"connect-timeout", required_argument, 0, 'T'},
        {"connect-parallel", required_argument, 0, 'C'},
        {"label", required_argument, 0, 'l'},   {"spin", no_argument, 0, 'S'},
        {"burst", required_argument, 0, 'B'},   {"help", no_argument, 0, '?'},
        {0, 0, 0, 0}};
    o = (struct opts){.host = "127.0.0.1", .path = "/", .label = "-", .mode = MODE_RATE,
                      .conns = -1, .size = 64, .rate = 10000, .window = 8, .duration = 5,
                      .warmup = 1, .hold = 5, .drain = 2, .connect_timeout = 30,
                      .connect_parallel = 256};
    bool have_mode = false;
    int ch;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (ch) {
        case 'm':
            have_mode = true;
            if (strcmp(optarg, "rate") == 0)
                o.mode = MODE_RATE;
            else if (strcmp(optarg, "throughput") == 0)
                o.mode = MODE_THROUGHPUT;
            else if (strcmp(optarg, "idle") == 0)
                o.mode = MODE_IDLE;
            else if (strcmp(optarg, "connect") == 0)
                o.mode = MODE_CONNECT;
            else
                usage();
            break;
        case 'h': o.host = optarg; break;
        case 'p': o.port = (int)parse_num(optarg, "port"); break;
        case 'P': o.path = optarg; break;
        case 'c': o.conns = (int)parse_num(optarg, "conns"); break;
        case 's': o.size = (size_t)parse_num(optarg, "size"); break;
        case 'r': o.rate = parse_num(optarg, "rate"); break;
        case 'w': o.window = (int)parse_num(optarg, "window"); break;
        case 'B': o.burst = (int)parse_num(optarg, "burst"); break;
        case 'd': o.duration = parse_num(optarg, "duration"); break;
        case 'W': o.warmup = parse_num(optarg, "warmup"); break;
        case 'H': o.hold = parse_num(optarg, "hold"); break;
        case 'D': o.drain = parse_num(optarg, "drain"); break;
        case 'T': o.connect_timeout = parse_num(optarg, "connect-timeout"); break;
        case 'C': o.connect_parallel = (int)parse_num(optarg, "connect-parallel"); break;
        case 'l': o.label = optarg; break;
        case 'S': o.spin = true; break;
        default: usage();
        }
    }
    if (!have_mode || o.port <= 0 || o.port > 65535 || optind != argc)
        usage();
    if (o.conns < 0)
        o.conns = o.mode == MODE_IDLE || o.mode == MODE_CONNECT ? 1000 : 50;
    if (o.conns < 1 || o.conns > 1000000 || o.window < 1 || o.burst > 100000 || o.connect_parallel < 1 ||
        o.duration <= 0 || o.duration > 3600 || o.hold > 3600 || o.warmup > 3600 ||
        o.drain > 600 || (o.mode == MODE_RATE && o.rate <= 0) || o.size > (64u << 20))
        usage();
}

static void raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < (rlim_t)nslots + 16)
        fprintf(stderr, "loadgen: warning: RLIMIT_NOFILE %llu < %d connections\n",
                (unsigned long long)rl.rlim_cur, nslots);
}

/* Waits for replies to messages already sent, up to the drain time. */
static void drain(void)
{
    sending = false;
    uint64_t deadline = now_ns() + (uint64_t)(o.drain * 1e9);
    while (now_ns() < deadline && st.recv + st.lost < st.sent && open_count > 0)
        poll_once(deadline);
}

static void close_all(void)
{
    for (int i = 0; i < nslots; i++) {
        struct conn *c = &conns[i];
        if (c->st == CS_OPEN) {
            if (c->sent > c->recv)
                st.lost += c->sent - c->recv;
            c->recv = c->sent;
            epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
            close(c->fd);
            c->st = CS_DEAD;
            open_count--;
        }
    }
}

static void print_errors(void)
{
    printf(" errors=%llu connect_errors=%llu handshake_errors=%llu closed_errors=%llu"
           " proto_errors=%llu size_errors=%llu dropped=%llu lost=%llu",
           (unsigned long long)total_errors(), (unsigned long long)st.connect_errors,
           (unsigned long long)st.handshake_errors, (unsigned long long)st.closed_errors,
           (unsigned long long)st.proto_errors, (unsigned long long)st.size_errors,
           (unsigned long long)st.dropped, (unsigned long long)st.lost);
}

static int run_idle(uint64_t connect_ns)
{
    printf("idle_up label=%s conns=%d up=%d connect_ms=%.1f errors=%llu\n", o.label, o.conns,
           open_count, (double)connect_ns / 1e6, (unsigned long long)total_errors());
    fflush(stdout);
    uint64_t deadline = now_ns() + (uint64_t)(o.hold * 1e9);
    while (now_ns() < deadline)
        poll_once(deadline);
    int held = open_count;
    close_all();
    printf("mode=idle label=%s conns=%d up_at_end=%d connect_ms=%.1f hold_s=%.1f", o.label,
           o.conns, held, (double)connect_ns / 1e6, o.hold);
    print_errors();
    printf("\n");
    return held == o.conns && total_errors() == 0 ? 0 : 1;
}

/* Connect mode. Slots are reused: a slot whose connection ended (cleanly
 * or not) gets the next connection, so at most P are in progress and the
 * total is bounded by --conns and the time by --duration (plus --drain for
 * the ones in progress at the limit). The rate is completions over the time
 * from the first start to the last completion. */
static int run_connect(void)
{
    uint64_t t0 = now_ns();
    uint64_t stop = t0 + (uint64_t)(o.duration * 1e9);
    uint64_t drain_end = stop + (uint64_t)(o.drain * 1e9);
    int started = 0;
    for (;;) {
        uint64_t t = now_ns();
        /* Only after poll_once: the dirty list is empty, so resetting a
         * slot cannot leave a stale entry in it. */
        for (int i = 0; i < nslots && started < o.conns && t < stop; i++) {
            struct conn *c = &conns[i];
            if (c->st != CS_IDLE && c->st != CS_DEAD)
                continue;
            free(c->out);
            free(c->fifo);
            *c = (struct conn){.fd = -1};
            started++;
            start_connect(c);
        }
        if (open_count + pending_count == 0 && (started == o.conns || t >= stop))
            break;
        if (t >= drain_end)
            break;
        uint64_t until = t + 50000000ULL;
        poll_once(until < drain_end ? until : drain_end);
    }
    /* Still in progress at the time limit: failures. */
    for (int i = 0; i < nslots; i++) {
        struct conn *c = &conns[i];
        if (c->st == CS_CONNECTING || c->st == CS_HANDSHAKE) {
            handshake_fail(c, "timed out");
        } else if (c->st == CS_OPEN) {
            st.closed_errors++;
            conn_kill(c);
        }
    }
    double secs = (double)((completed ? last_done : now_ns()) - t0) / 1e9;
    printf("mode=connect label=%s size=%zu conns=%d parallel=%d started=%d completed=%llu"
           " duration_s=%.2f conns_per_s=%.0f p50_us=%.1f p99_us=%.1f p999_us=%.1f max_us=%.1f"
           " echoed=%llu",
           o.label, o.size, o.conns, nslots, started, (unsigned long long)completed, secs,
           secs > 0 ? (double)completed / secs : 0.0, (double)hist_percentile(&hist, 50) / 1e3,
           (double)hist_percentile(&hist, 99) / 1e3, (double)hist_percentile(&hist, 99.9) / 1e3,
           (double)hist.max / 1e3, (unsigned long long)st.recv);
    print_errors();
    printf("\n");
    return total_errors() == 0 && completed > 0 ? 0 : 1;
}

static int run_throughput(void)
{
    uint64_t t0 = now_ns();
    window_start = t0 + (uint64_t)(o.warmup * 1e9);
    window_end = window_start + (uint64_t)(o.duration * 1e9);
    for (int i = 0; i < o.conns; i++)
        if (conns[i].st == CS_OPEN) {
            conns[i].burst_t0 = t0;
            for (int w = 0; w < (o.burst > 0 ? o.burst : o.window); w++)
                send_message(&conns[i]);
        }
    flush_dirty();
    while (now_ns() < window_end && open_count > 0)
        poll_once(window_end);
    drain();
    close_all();
    double rate = (double)st.recv_window / o.duration;
    printf("mode=throughput label=%s size=%zu conns=%d window=%d duration_s=%.2f msgs_per_s=%.0f"
           " echoed=%llu sent=%llu",
           o.label, o.size, o.conns, o.burst > 0 ? o.burst : o.window, o.duration, rate,
           (unsigned long long)st.recv, (unsigned long long)st.sent);
    if (o.burst > 0)
        printf(" burst=%d bursts=%llu burst_p50_us=%.1f burst_p99_us=%.1f", o.burst,
               (unsigned long long)hist.total, (double)hist_percentile(&hist, 50) / 1e3,
               (double)hist_percentile(&hist, 99) / 1e3);
    print_errors();
    printf("\n");
    return total_errors() == 0 ? 0 : 1;
}

static int run_rate(void)
{
    int nopen = 0;
    int *live = xmalloc(sizeof(int) * (size_t)o.conns);
    for (int i = 0; i < o.conns; i++)
        if (conns[i].st == CS_OPEN)
            live[nopen++] = i;
    uint64_t start = now_ns() + 1000000ULL;
    window_start = start + (uint64_t)(o.warmup * 1e9);
    window_end = window_start + (uint64_t)(o.duration * 1e9);
    uint64_t total = (uint64_t)((o.warmup + o.duration) * o.rate);
    double gap = 1e9 / o.rate;
    uint64_t next = 0;
    /* Message n is due at start + n/R and goes to connection n mod C: each
     * connection sends at R/C, staggered, and the schedule never drifts
     * because due times are computed, not accumulated. */
    while (next < total && open_count > 0) {
        uint64_t t = now_ns();
        while (next < total) {
            uint64_t due = start + (uint64_t)((double)next * gap);
            if (due > t)
                break;
            struct conn *c = &conns[live[next % (uint64_t)nopen]];
            if (c->st == CS_OPEN) {
                if (send_message(c)) {
                    fifo_push(c, due);
                    if (due >= window_start && due < window_end)
                        hist_record(&lag, t - due);
                }
            } else {
                st.lost++;
            }
            next++;
        }
        flush_dirty();
        if (next < total)
            poll_once(start + (uint64_t)((double)next * gap));
    }
    st.lost += total - next;
    drain();
    close_all();
    free(live);
    double achieved = (double)st.recv_window / o.duration;
    printf("mode=rate label=%s size=%zu conns=%d rate_target=%.0f rate_achieved=%.0f"
           " duration_s=%.2f samples=%llu p50_us=%.1f p90_us=%.1f p99_us=%.1f p999_us=%.1f"
           " max_us=%.1f send_lag_p50_us=%.1f send_lag_p99_us=%.1f sent=%llu echoed=%llu",
           o.label, o.size, o.conns, o.rate, achieved, o.duration,
           (unsigned long long)hist.total, (double)hist_percentile(&hist, 50) / 1e3,
           (double)hist_percentile(&hist, 90) / 1e3, (double)hist_percentile(&hist, 99) / 1e3,
           (double)hist_percentile(&hist, 99.9) / 1e3, (double)hist.max / 1e3,
           (double)hist_percentile(&lag, 50) / 1e3, (double)hist_percentile(&lag, 99) / 1e3,
           (unsigned long long)st.sent, (unsigned long long)st.recv);
    print_errors();
    printf("\n");
    return total_errors() == 0 ? 0 : 1;
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    nslots = o.mode == MODE_CONNECT && o.connect_parallel < o.conns ? o.connect_parallel : o.conns;
    signal(SIGPIPE, SIG_IGN);
    prctl(PR_SET_TIMERSLACK, 1000UL, 0, 0, 0);
    raise_nofile();
    resolve();
    build_frames();
    epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        die("epoll_create1 failed");
    conns = calloc((size_t)nslots, sizeof *conns);
    dirty_list = xmalloc(sizeof(int) * (size_t)nslots);
    if (!conns)
        die("out of memory");
    for (int i = 0; i < nslots; i++)
        conns[i].fd = -1;
    if (o.mode == MODE_CONNECT)
        return run_connect();

    uint64_t connect_ns = connect_all();
    fprintf(stderr, "loadgen: %d/%d connections up in %.1f ms\n", open_count, o.conns,
            (double)connect_ns / 1e6);
    if (o.mode == MODE_IDLE)
        return run_idle(connect_ns);
    if (open_count == 0) {
        printf("mode=%s label=%s size=%zu conns=%d up=0", o.mode == MODE_RATE ? "rate" : "throughput",
               o.label, o.size, o.conns);
        print_errors();
        printf("\n");
        return 1;
    }
    return o.mode == MODE_RATE ? run_rate() : run_throughput();
}

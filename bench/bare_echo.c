/*
 * bare_echo: the floor for the echo benchmark. A minimal single-threaded
 * epoll WebSocket echo server: handshake (SHA-1 + base64 from OpenSSL),
 * frame parsing, unmasking and echoing, and nothing else a real gateway
 * does (no UTF-8 or protocol validation beyond what echo needs, no limits
 * beyond a payload cap, no timers, no logging). Any request path upgrades.
 *
 * Per message it aims at one read and one write: reads go into a shared
 * scratch buffer, every complete frame in it is echoed into a shared output
 * buffer, and that is written once. Only a partial frame or an unsent tail
 * is copied into per-connection memory, so an idle connection costs its
 * small struct plus the kernel's socket.
 *
 * usage: bare_echo PORT [HOST]
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
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
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define SCRATCH (256 * 1024)
#define MAX_HEAD 8192
#define MAX_PAYLOAD (16u << 20)

struct conn {
    int fd;
    bool open;     /* handshake done */
    bool closing;  /* close frame echoed: drop once written */
    bool epollout;
    unsigned char *in; /* unparsed bytes carried between reads */
    size_t in_len, in_cap;
    unsigned char *out; /* unsent bytes */
    size_t out_off, out_len;
};

static int epfd;
static unsigned char scratch[SCRATCH];
static unsigned char *obuf;
static size_t obuf_cap;

static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n);
    if (!q) {
        fprintf(stderr, "bare_echo: out of memory\n");
        exit(1);
    }
    return q;
}

static void conn_close(struct conn *c)
{
    epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->in);
    free(c->out);
    free(c);
}

static void set_out_interest(struct conn *c, bool want)
{
    if (c->epollout == want)
        return;
    /* While output is pending we stop reading: the peer gets backpressure
     * instead of this process buffering without bound. */
    struct epoll_event ev = {.events = want ? EPOLLOUT : EPOLLIN, .data.ptr = c};
    epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->epollout = want;
}

/* Writes p[0..n); keeps what the socket did not take. false: drop conn. */
static bool send_bytes(struct conn *c, const unsigned char *p, size_t n)
{
    size_t done = 0;
    while (done < n) {
        ssize_t w = write(c->fd, p + done, n - done);
        if (w > 0) {
            done += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        return false;
    }
    if (done < n) {
        size_t rest = n - done;
        c->out = xrealloc(c->out, rest);
        memcpy(c->out, p + done, rest);
        c->out_off = 0;
        c->out_len = rest;
        set_out_interest(c, true);
    }
    return true;
}

static void obuf_reserve(size_t need)
{
    if (need <= obuf_cap)
        return;
    size_t cap = obuf_cap ? obuf_cap : SCRATCH;
    while (cap < need)
        cap *= 2;
    obuf = xrealloc(obuf, cap);
    obuf_cap = cap;
}

static void unmask(unsigned char *dst, const unsigned char *src, size_t n, const unsigned char m[4])
{
    uint32_t m32;
    memcpy(&m32, m, 4);
    uint64_t m64 = ((uint64_t)m32 << 32) | m32;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t v;
        memcpy(&v, src + i, 8);
        v ^= m64;
        memcpy(dst + i, &v, 8);
    }
    for (; i < n; i++)
        dst[i] = src[i] ^ m[i & 3];
}

/* Echoes every complete frame in p[0..n) into obuf at *olen. Returns bytes
 * consumed, or -1 when the connection must be dropped. */
static long echo_frames(struct conn *c, const unsigned char *p, size_t n, size_t *olen)
{
    size_t pos = 0;
    while (n - pos >= 2) {
        const unsigned char *f = p + pos;
        unsigned op = f[0] & 0x0f;
        bool masked = f[1] & 0x80;
        uint64_t len = f[1] & 0x7f;
        size_t hl = 2;
        if (len == 126) {
            if (n - pos < 4)
                break;
            len = ((uint64_t)f[2] << 8) | f[3];
            hl = 4;
        } else if (len == 127) {
            if (n - pos < 10)
                break;
            len = 0;
            for (int i = 0; i < 8; i++)
                len = (len << 8) | f[2 + i];
            hl = 10;
        }
        if (!masked || len > MAX_PAYLOAD)
            return -1;
        if (n - pos < hl + 4 + len)
            break;
        const unsigned char *mask = f + hl;
        const unsigned char *payload = f + hl + 4;
        if (op == 0x8)
            c->closing = true;
        if (op == 0xA) { /* unsolicited pong: nothing to echo */
            pos += hl + 4 + (size_t)len;
            continue;
        }
        obuf_reserve(*olen + 10 + (size_t)len);
        unsigned char *o = obuf + *olen;
        /* echo keeps FIN and opcode (ping answers as pong) */
        o[0] = (unsigned char)((f[0] & 0x80) | (op == 0x9 ? 0xA : op));
        size_t ohl;
        if (len < 126) {
            o[1] = (unsigned char)len;
            ohl = 2;
        } else if (len <= 0xffff) {
            o[1] = 126;
            o[2] = (unsigned char)(len >> 8);
            o[3] = (unsigned char)len;
            ohl = 4;
        } else {
            o[1] = 127;
            for (int i = 0; i < 8; i++)
                o[2 + i] = (unsigned char)(len >> (56 - 8 * i));
            ohl = 10;
        }
        unmask(o + ohl, payload, (size_t)len, mask);
        *olen += ohl + (size_t)len;
        pos += hl + 4 + (size_t)len;
        if (c->closing)
            break;
    }
    return (long)pos;
}

static bool do_handshake(struct conn *c)
{
    c->in[c->in_len] = 0;
    char *end = strstr((char *)c->in, "\r\n\r\n");
    if (!end)
        return c->in_len < MAX_HEAD;
    end[2] = 0;
    char *key = NULL;
    for (char *line = strstr((char *)c->in, "\r\n"); line && line[2]; line = strstr(line + 2, "\r\n")) {
        if (strncasecmp(line + 2, "Sec-WebSocket-Key:", 18) == 0) {
            key = line + 2 + 18;
            while (*key == ' ')
                key++;
            char *e = strstr(key, "\r\n");
            while (e > key && e[-1] == ' ')
                e--;
            *e = 0;
            break;
        }
    }
    if (!key || strlen(key) > 64)
        return false;
    char cat[128];
    snprintf(cat, sizeof cat, "%s%s", key, WS_GUID);
    unsigned char dig[SHA_DIGEST_LENGTH];
    SHA1((unsigned char *)cat, strlen(cat), dig);
    char acc[64];
    EVP_EncodeBlock((unsigned char *)acc, dig, SHA_DIGEST_LENGTH);
    char resp[256];
    int rn = snprintf(resp, sizeof resp,
                      "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                      acc);
    size_t head = (size_t)(end + 4 - (char *)c->in);
    size_t rest = c->in_len - head;
    c->open = true;
    if (rest == 0) {
        free(c->in);
        c->in = NULL;
        c->in_len = c->in_cap = 0;
    } else {
        memmove(c->in, c->in + head, rest);
        c->in_len = rest;
    }
    return send_bytes(c, (unsigned char *)resp, (size_t)rn);
}

/* Parses and echoes what is buffered; keeps a partial frame. */
static bool process(struct conn *c, const unsigned char *p, size_t n, bool from_conn_buf)
{
    size_t olen = 0;
    long used = echo_frames(c, p, n, &olen);
    if (used < 0)
        return false;
    size_t rest = n - (size_t)used;
    if (rest > 0 && !c->closing) {
        if (from_conn_buf) {
            memmove(c->in, c->in + used, rest);
        } else {
            if (c->in_cap < rest + SCRATCH) {
                c->in_cap = rest + SCRATCH;
                c->in = xrealloc(c->in, c->in_cap + 1);
            }
            memcpy(c->in, p + used, rest);
        }
        c->in_len = rest;
    } else if (from_conn_buf) {
        free(c->in);
        c->in = NULL;
        c->in_len = c->in_cap = 0;
    }
    if (olen > 0 && !send_bytes(c, obuf, olen))
        return false;
    return !(c->closing && c->out_len == 0);
}

static bool on_readable(struct conn *c)
{
    ssize_t n;
    if (!c->open || c->in_len > 0) {
        /* A handshake or a partial frame is pending: read after it, sized
         * for the frame being completed. */
        size_t want = c->open ? SCRATCH : MAX_HEAD;
        if (c->open && c->in_len >= 2) {
            uint64_t len = c->in[1] & 0x7f;
            if (len == 126 && c->in_len >= 4)
                len = ((uint64_t)c->in[2] << 8) | c->in[3];
            else if (len == 127 && c->in_len >= 10) {
                len = 0;
                for (int i = 0; i < 8; i++)
                    len = (len << 8) | c->in[2 + i];
            }
            if (len > MAX_PAYLOAD)
                return false;
            if (len + 14 > want)
                want = (size_t)len + 14;
        }
        if (c->in_cap < c->in_len + want) {
            c->in_cap = c->in_len + want;
            c->in = xrealloc(c->in, c->in_cap + 1);
        }
        n = read(c->fd, c->in + c->in_len, c->open ? c->in_cap - c->in_len : MAX_HEAD - c->in_len);
        if (n <= 0)
            return n < 0 && (errno == EAGAIN || errno == EINTR);
        c->in_len += (size_t)n;
        if (!c->open) {
            if (!do_handshake(c))
                return false;
            if (!c->open || c->in_len == 0)
                return true;
        }
        return process(c, c->in, c->in_len, true);
    }
    n = read(c->fd, scratch, sizeof scratch);
    if (n <= 0)
        return n < 0 && (errno == EAGAIN || errno == EINTR);
    return process(c, scratch, (size_t)n, false);
}

static bool on_writable(struct conn *c)
{
    while (c->out_off < c->out_len) {
        ssize_t w = write(c->fd, c->out + c->out_off, c->out_len - c->out_off);
        if (w > 0) {
            c->out_off += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN)
            return true;
        return false;
    }
    free(c->out);
    c->out = NULL;
    c->out_off = c->out_len = 0;
    if (c->closing)
        return false;
    set_out_interest(c, false);
    /* Frames may have arrived while we were not reading. */
    return true;
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: bare_echo PORT [HOST]\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
    if (inet_pton(AF_INET, argc == 3 ? argv[2] : "127.0.0.1", &sa.sin_addr) != 1) {
        fprintf(stderr, "bare_echo: bad host\n");
        return 2;
    }
    if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(lfd, 4096) < 0) {
        perror("bare_echo: bind/listen");
        return 1;
    }
    epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &lev);
    fprintf(stderr, "bare_echo: listening on %s:%s\n", argc == 3 ? argv[2] : "127.0.0.1", argv[1]);
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(epfd, evs, 256, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("bare_echo: epoll_wait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = evs[i].data.ptr;
            if (!c) {
                for (;;) {
                    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0)
                        break;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct conn *nc = calloc(1, sizeof *nc);
                    if (!nc) {
                        close(fd);
                        continue;
                    }
                    nc->fd = fd;
                    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = nc};
                    epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev);
                }
                continue;
            }
            bool ok = true;
            if (evs[i].events & EPOLLOUT)
                ok = on_writable(c);
            else if (evs[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP))
                ok = on_readable(c);
            if (!ok)
                conn_close(c);
        }
    }
}

/*
 * fanout: the push fan-out benchmark's client (`make bench-fanout`).
 * Self-contained (nothing from src/). Opens N WebSocket subscriptions to
 * /ws/events with one session bearer (one session may hold many streams),
 * then publishes E events per second for D seconds through the admin
 * listener (POST /v1/events, keep-alive), each carrying its send time
 * (CLOCK_MONOTONIC ns) in the payload, and measures publish-to-receipt
 * latency for every delivery. One epoll thread.
 *
 * usage: fanout SERVER HOST PORT SUB_PATH SUBPROTOCOL PUB_PORT PUB_PATH PUB_TOKEN USER N RATE SECONDS PIDS
 *   SERVER names the server in the output (wsgate, nchan, node); SUBPROTOCOL
 *   and PUB_TOKEN are "-" for none; PIDS is a comma-separated list of the
 *   server's processes (nginx: its workers) whose CPU is summed.
 * The same client drives wsgate (/ws/events, POST /v1/events), Nchan
 * (nchan_subscriber websocket, nchan_publisher) and a Node `ws` broadcast
 * server: each delivers the published body (or, for wsgate, an event
 * carrying its payload) and the client finds "t": in it.
 * Prints one JSON line: server, subscribers, rate, deliveries,
 * deliveries_per_s, p50/p99/p999 latency (ms), server CPU us per delivery
 * (from /proc/PID/stat of every PID).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define GW_MINI(a, b) ((a) < (b) ? (a) : (b))

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *m)
{
    perror(m);
    exit(1);
}

typedef struct sub {
    int fd;
    int open; /* the 101 arrived */
    size_t n;
    unsigned char buf[65536];
} sub;

static uint64_t *lat; /* every delivery's latency, ns */
static size_t nlat, caplat;

static void record(uint64_t v)
{
    if (nlat == caplat) {
        caplat = caplat ? caplat * 2 : 1 << 20;
        lat = realloc(lat, caplat * sizeof *lat);
        if (!lat)
            die("realloc");
    }
    lat[nlat++] = v;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* src_idx >= 0: bind to 127.0.0.(2 + src_idx / 20000), so 50,000 subscribers do
 * not run out of ephemeral ports on one source address. */
static int dial_from(const char *host, int port, int src_idx)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0 && src_idx >= 0) {
        struct sockaddr_in b = {.sin_family = AF_INET};
        b.sin_addr.s_addr = htonl(0x7f000002u + (uint32_t)(src_idx / 20000));
        if (bind(fd, (struct sockaddr *)&b, sizeof b) != 0)
            die("bind");
    }
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, host, &a.sin_addr);
    if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof a) != 0)
        die("connect");
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

static int dial(const char *host, int port) { return dial_from(host, port, -1); }

/* Consumes whole frames from s->buf; returns 0 when the server closed. */
static int frames(sub *s, uint64_t *got)
{
    size_t off = 0;
    if (!s->open) {
        unsigned char *e = memmem(s->buf, s->n, "\r\n\r\n", 4);
        if (!e)
            return 1;
        if (memcmp(s->buf, "HTTP/1.1 101", 12) != 0) {
            fprintf(stderr, "fanout: refused: %.*s\n", (int)(s->n < 200 ? s->n : 200), s->buf);
            exit(1);
        }
        s->open = 1;
        off = (size_t)(e + 4 - s->buf);
    }
    uint64_t t = now_ns();
    for (;;) {
        if (s->n - off < 2)
            break;
        unsigned char *p = s->buf + off;
        uint64_t len = p[1] & 0x7f;
        size_t h = 2;
        if (len == 126) {
            if (s->n - off < 4)
                break;
            len = (uint64_t)p[2] << 8 | p[3];
            h = 4;
        } else if (len == 127) {
            if (s->n - off < 10)
                break;
            len = 0;
            for (int i = 0; i < 8; i++)
                len = len << 8 | p[2 + i];
            h = 10;
        }
        if (s->n - off < h + len)
            break;
        int op = p[0] & 0x0f;
        if (op == 8)
            return 0;
        if (op == 1) {
            const char *m = memmem(p + h, len, "\"t\":", 4);
            if (m) {
                uint64_t sent = strtoull(m + 4, NULL, 10);
                record(t - sent);
                (*got)++;
            }
        }
        off += h + len;
    }
    memmove(s->buf, s->buf + off, s->n - off);
    s->n -= off;
    return 1;
}

static uint64_t self_cpu_us(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000u +
           (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

static uint64_t cpu_ticks_one(int pid)
{
    char path[64], b[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f || !fgets(b, sizeof b, f))
        die("stat");
    fclose(f);
    char *p = strrchr(b, ')') + 2;
    unsigned long ut = 0, st = 0;
    sscanf(p, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st);
    return ut + st;
}

/* The CPU of every process in the comma-separated list. */
static uint64_t cpu_ticks(const char *pids)
{
    uint64_t t = 0;
    for (const char *p = pids; *p;) {
        char *end;
        long pid = strtol(p, &end, 10);
        if (end == p || pid <= 0)
            die("bad PIDS");
        t += cpu_ticks_one((int)pid);
        p = *end == ',' ? end + 1 : end;
    }
    return t;
}

int main(int argc, char **argv)
{
    if (argc != 14) {
        fprintf(stderr, "usage: fanout SERVER HOST PORT SUB_PATH SUBPROTOCOL PUB_PORT PUB_PATH PUB_TOKEN USER N RATE "
                        "SECONDS PIDS\n");
        return 2;
    }
    const char *server = argv[1], *host = argv[2], *sub_path = argv[4], *proto = argv[5], *pub_path = argv[7],
               *tok = argv[8], *user = argv[9], *pids = argv[13];
    int port = atoi(argv[3]), aport = atoi(argv[6]), n = atoi(argv[10]);
    double rate = atof(argv[11]), secs = atof(argv[12]);
    char proto_h[512] = "", auth_h[512] = "";
    if (strcmp(proto, "-") != 0)
        snprintf(proto_h, sizeof proto_h, "Sec-WebSocket-Protocol: %s\r\n", proto);
    if (strcmp(tok, "-") != 0)
        snprintf(auth_h, sizeof auth_h, "Authorization: Bearer %s\r\n", tok);
    struct rlimit rl = {(rlim_t)n + 64, (rlim_t)n + 64};
    setrlimit(RLIMIT_NOFILE, &rl);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    sub *subs = calloc((size_t)n, sizeof *subs);
    char req[1024];
    int rl_n = snprintf(req, sizeof req,
                        "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n%s\r\n",
                        sub_path, host, proto_h);
    for (int i = 0; i < n; i++) {
        subs[i].fd = dial_from(host, port, i);
        if (write(subs[i].fd, req, (size_t)rl_n) != rl_n)
            die("write");
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &subs[i]};
        epoll_ctl(ep, EPOLL_CTL_ADD, subs[i].fd, &ev);
    }
    struct epoll_event evs[512];
    uint64_t got = 0;
    int opened = 0;
    uint64_t deadline = now_ns() + 60ull * 1000000000ull;
    while (opened < n && now_ns() < deadline) { /* the 101s and the server_time messages */
        int k = epoll_wait(ep, evs, 512, 100);
        for (int i = 0; i < k; i++) {
            sub *s = evs[i].data.ptr;
            ssize_t r = read(s->fd, s->buf + s->n, sizeof s->buf - s->n);
            if (r <= 0)
                die("subscriber closed during setup");
            s->n += (size_t)r;
            int was = s->open;
            frames(s, &got);
            opened += !was && s->open;
        }
    }
    if (opened < n) {
        fprintf(stderr, "fanout: only %d of %d subscribed\n", opened, n);
        return 1;
    }
    int afd = dial(host, aport);
    uint64_t step = (uint64_t)(1e9 / rate), start = now_ns(), next = start, end = start + (uint64_t)(secs * 1e9);
    uint64_t published = 0, c0 = cpu_ticks(pids), k0 = self_cpu_us();
    nlat = 0;
    got = 0;
    char body[256], hreq[1024], resp[4096];
    while (now_ns() < end + 2000000000ull) {
        uint64_t t = now_ns();
        if (t >= next && t < end) {
            int bn = snprintf(body, sizeof body, "{\"user_id\":\"%s\",\"type\":\"bench\",\"payload\":{\"t\":%llu}}",
                              user, (unsigned long long)now_ns());
            int hn = snprintf(hreq, sizeof hreq,
                              "POST %s HTTP/1.1\r\nHost: a\r\n%s"
                              "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
                              pub_path, auth_h, bn, body);
            if (write(afd, hreq, (size_t)hn) != hn)
                die("publish");
            ssize_t r = read(afd, resp, sizeof resp); /* 2xx, small: one read */
            if (r < 12 || memcmp(resp, "HTTP/1.1 2", 10) != 0) {
                fprintf(stderr, "fanout: publish answered: %.*s\n", (int)(r > 0 ? GW_MINI(r, 200) : 0), resp);
                exit(1);
            }
            published++;
            next += step;
            continue;
        }
        if (t >= end && got >= published * (uint64_t)n)
            break;
        int wait_ms = t < end ? (int)((next > t ? next - t : 0) / 1000000) : 10;
        int k = epoll_wait(ep, evs, 512, wait_ms);
        for (int i = 0; i < k; i++) {
            sub *s = evs[i].data.ptr;
            ssize_t r = read(s->fd, s->buf + s->n, sizeof s->buf - s->n);
            if (r <= 0)
                continue;
            s->n += (size_t)r;
            if (!frames(s, &got))
                fprintf(stderr, "fanout: a subscriber was closed\n");
        }
    }
    double el = (double)(now_ns() - start) / 1e9;
    uint64_t c1 = cpu_ticks(pids), k1 = self_cpu_us();
    double cpu_us = (double)(c1 - c0) / (double)sysconf(_SC_CLK_TCK) * 1e6;
    qsort(lat, nlat, sizeof *lat, cmp_u64);
#define PCT(p) (nlat ? (double)lat[(size_t)((double)(nlat - 1) * (p))] / 1e6 : 0.0)
    printf("{\"server\":\"%s\",\"subscribers\":%d,\"events_per_s\":%.0f,\"published\":%llu,\"deliveries\":%llu,\"expected\":%llu,"
           "\"deliveries_per_s\":%.0f,\"p50_ms\":%.3f,\"p99_ms\":%.3f,\"p999_ms\":%.3f,\"server_cpu_us_per_delivery\":%.3f,"
           "\"client_cpu_us_per_delivery\":%.3f}\n",
           server, n, rate, (unsigned long long)published, (unsigned long long)got,
           (unsigned long long)(published * (uint64_t)n), (double)got / el, PCT(0.5), PCT(0.99), PCT(0.999),
           got ? cpu_us / (double)got : 0.0, got ? (double)(k1 - k0) / (double)got : 0.0);
    return 0;
}

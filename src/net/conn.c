/* conn.c: transports (plain and TLS) and buffered writes. */
#include "net/conn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/common.h"

/* ============================== plain transport ============================= */

/* After a failed socket call: 1 to retry (EINTR), GW_AGAIN, or GW_ERR with
 * c->err set. */
static ssize_t failed(gw_conn *c)
{
    if (errno == EINTR)
        return 1;
    if (errno == EAGAIN || errno == EWOULDBLOCK)
        return GW_AGAIN;
    c->err = errno;
    return GW_ERR;
}

static ssize_t plain_read(gw_conn *c, uint8_t *p, size_t n)
{
    ssize_t r;
    while ((r = recv(c->io.fd, p, n, 0)) < 0) {
        ssize_t f = failed(c);
        if (f != 1)
            return f;
    }
    return r;
}

static ssize_t plain_writev(gw_conn *c, const struct iovec *iov, int n)
{
    struct msghdr mh = {.msg_iov = (struct iovec *)iov, .msg_iovlen = (size_t)n};
    ssize_t r;
    /* One buffer (a corked batch, a queue) goes out with send(2): the kernel
     * then copies and checks no msghdr and iovec array. */
    while ((r = n == 1 ? send(c->io.fd, iov[0].iov_base, iov[0].iov_len, MSG_NOSIGNAL)
                       : sendmsg(c->io.fd, &mh, MSG_NOSIGNAL)) < 0) {
        ssize_t f = failed(c);
        if (f != 1)
            return f;
    }
    return r;
}

static ssize_t plain_write(gw_conn *c, const uint8_t *p, size_t n)
{
    struct iovec iov = {(void *)p, n};
    return plain_writev(c, &iov, 1);
}

static int plain_handshake(gw_conn *c)
{
    GW_UNUSED(c);
    return GW_OK;
}

static size_t plain_pending(gw_conn *c)
{
    GW_UNUSED(c);
    return 0;
}

static void plain_free(gw_conn *c) { GW_UNUSED(c); }

const gw_transport gw_transport_plain = {plain_read, plain_write, plain_writev, plain_handshake, plain_pending,
                                         plain_free};

/* =============================== TLS transport ============================== */

static ssize_t tls_map(gw_conn *c, int r, int writing)
{
    int e = SSL_get_error(c->ssl, r);
    switch (e) {
    case SSL_ERROR_WANT_READ:
        if (writing)
            c->flags |= GW_CONN_F_TLS_WR;
        return GW_AGAIN;
    case SSL_ERROR_WANT_WRITE:
        if (!writing)
            c->flags |= GW_CONN_F_TLS_RW;
        return GW_AGAIN;
    case SSL_ERROR_ZERO_RETURN:
        return 0;
    case SSL_ERROR_SYSCALL:
        c->err = errno ? errno : EPIPE;
        ERR_clear_error();
        return errno == 0 && !writing ? 0 : GW_ERR;
    default:
        c->err = EPROTO;
        ERR_clear_error();
        return GW_ERR;
    }
}

static ssize_t tls_read(gw_conn *c, uint8_t *p, size_t n)
{
    c->flags &= ~GW_CONN_F_TLS_RW;
    int r = SSL_read(c->ssl, p, (int)GW_MIN(n, (size_t)INT32_MAX));
    if (r > 0)
        return r;
    return tls_map(c, r, 0);
}

static ssize_t tls_write(gw_conn *c, const uint8_t *p, size_t n)
{
    c->flags &= ~GW_CONN_F_TLS_WR;
    if (n == 0)
        return 0;
    int r = SSL_write(c->ssl, p, (int)GW_MIN(n, (size_t)INT32_MAX));
    if (r > 0)
        return r;
    return tls_map(c, r, 1);
}

static ssize_t tls_writev(gw_conn *c, const struct iovec *iov, int n)
{
    ssize_t total = 0;
    for (int i = 0; i < n; i++) {
        ssize_t r = tls_write(c, iov[i].iov_base, iov[i].iov_len);
        if (r < 0)
            return total ? total : r;
        total += r;
        if ((size_t)r < iov[i].iov_len)
            break;
    }
    return total;
}

static int tls_handshake(gw_conn *c)
{
    c->flags &= ~(GW_CONN_F_TLS_RW | GW_CONN_F_TLS_WR);
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) {
        c->flags &= ~GW_CONN_F_HANDSHAKE;
        return GW_OK;
    }
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ)
        return GW_AGAIN;
    if (e == SSL_ERROR_WANT_WRITE) {
        c->flags |= GW_CONN_F_TLS_RW;
        return GW_AGAIN;
    }
    c->err = EPROTO;
    ERR_clear_error();
    return GW_ERR;
}

static size_t tls_pending(gw_conn *c) { return (size_t)SSL_pending(c->ssl); }

static void tls_free(gw_conn *c)
{
    if (c->ssl) {
        /* A quiet shutdown: we are closing the socket anyway and must not
         * block on the peer's close_notify. */
        SSL_set_quiet_shutdown(c->ssl, 1);
        SSL_free(c->ssl);
        c->ssl = NULL;
    }
}

static const gw_transport tls_transport = {tls_read, tls_write, tls_writev, tls_handshake, tls_pending, tls_free};

void *gw_tls_server_ctx(const char *cert, const char *key, char *err, size_t errcap)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) {
        snprintf(err, errcap, "TLS: cannot create context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) {
        snprintf(err, errcap, "GATEWAY_TLS_CERT_PATH: cannot load certificate chain from %s", cert);
        SSL_CTX_free(ctx);
        ERR_clear_error();
        return NULL;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
        snprintf(err, errcap, "GATEWAY_TLS_KEY_PATH: cannot load a private key matching the certificate from %s",
                 key);
        SSL_CTX_free(ctx);
        ERR_clear_error();
        return NULL;
    }
    return ctx;
}

void *gw_tls_client_ctx(int verify, char *err, size_t errcap)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        snprintf(err, errcap, "TLS: cannot create client context");
        return NULL;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF | SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    if (verify) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        SSL_CTX_set_default_verify_paths(ctx);
    }
    return ctx;
}

void gw_tls_ctx_free(void *ctx) { SSL_CTX_free(ctx); }

void *gw_tls_ctx_ref(void *ctx)
{
    SSL_CTX_up_ref(ctx);
    return ctx;
}

void gw_tls_ctx_describe(void *ctx, char *serial, size_t serialcap, char *not_after, size_t nacap)
{
    serial[0] = not_after[0] = '\0';
    X509 *x = ctx ? SSL_CTX_get0_certificate(ctx) : NULL;
    if (!x)
        return;
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
    char *hex = bn ? BN_bn2hex(bn) : NULL;
    if (hex)
        snprintf(serial, serialcap, "%s", hex);
    OPENSSL_free(hex);
    BN_free(bn);
    BIO *b = BIO_new(BIO_s_mem());
    if (b && ASN1_TIME_print(b, X509_get0_notAfter(x)) == 1) {
        int n = BIO_read(b, not_after, (int)nacap - 1);
        not_after[n > 0 ? n : 0] = '\0';
    }
    BIO_free(b);
}

int gw_conn_tls(gw_conn *c, void *ctx, int is_server, const char *sni)
{
    SSL *ssl = SSL_new(ctx);
    if (!ssl)
        return GW_ERR;
    SSL_set_fd(ssl, c->io.fd);
    if (is_server) {
        SSL_set_accept_state(ssl);
    } else {
        SSL_set_connect_state(ssl);
        if (sni && sni[0]) {
            /* An IP literal is not a server name (RFC 6066 section 3): send
             * no SNI and check the certificate's IP addresses instead. */
            struct in6_addr a6;
            struct in_addr a4;
            if (inet_pton(AF_INET, sni, &a4) == 1 || inet_pton(AF_INET6, sni, &a6) == 1) {
                X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), sni);
            } else {
                SSL_set_tlsext_host_name(ssl, sni);
                SSL_set1_host(ssl, sni);
            }
        }
    }
    c->ssl = ssl;
    c->tp = &tls_transport;
    c->flags |= GW_CONN_F_HANDSHAKE;
    return GW_OK;
}

int gw_conn_handshake(gw_conn *c)
{
    if (!(c->flags & GW_CONN_F_HANDSHAKE))
        return GW_OK;
    int r = c->tp->handshake(c);
    gw_conn_update(c);
    return r;
}

/* ================================ generic =================================== */

void gw_conn_init(gw_conn *c, gw_loop *l, int fd, gw_io_cb cb)
{
    memset(c, 0, sizeof *c);
    c->io.fd = fd;
    c->io.cb = cb;
    c->loop = l;
    c->tp = &gw_transport_plain;
}

ssize_t gw_conn_read(gw_conn *c, uint8_t *p, size_t n)
{
    ssize_t r = c->tp->read(c, p, n);
    if (c->flags & GW_CONN_F_TLS_RW)
        gw_conn_update(c);
    return r;
}

size_t gw_conn_pending(gw_conn *c) { return c->tp->pending(c); }

static _Thread_local uint8_t *read_buf; /* GW_CONN_READ_CHUNK, allocated at the thread's first read */

uint8_t *gw_conn_read_buffer(void)
{
    if (!read_buf)
        read_buf = gw_malloc(GW_CONN_READ_CHUNK);
    return read_buf;
}

ssize_t gw_conn_read_into(gw_conn *c, const gw_conn_reader *rd, int *filled)
{
    size_t max = rd->max_input(c);
    int own = c->in.len > 0;
    uint8_t *p;
    size_t cap;
    if (own) {
        /* Room for the rest of what is pending (a frame split across reads)
         * and a read's worth more, within the input cap. */
        size_t want = GW_MAX((size_t)GW_CONN_READ_CHUNK / 4, rd->need ? rd->need(c) : 0);
        want = GW_MIN(want, max > c->in.len ? max - c->in.len : 0);
        if (want == 0 || gw_buf_reserve(&c->in, want, max) != GW_OK)
            return GW_CONN_FULL;
        p = gw_buf_tail(&c->in);
        cap = gw_buf_room(&c->in);
    } else {
        p = gw_conn_read_buffer();
        cap = GW_CONN_READ_CHUNK;
    }
    ssize_t r = gw_conn_read(c, p, cap);
    if (r <= 0)
        return r;
    *filled = (size_t)r == cap;
    if (own) {
        gw_buf_commit(&c->in, (size_t)r);
        size_t used = rd->rcv(c, gw_buf_head(&c->in), c->in.len);
        if (c->io.fd >= 0)
            gw_buf_consume(&c->in, used);
    } else {
        size_t used = rd->rcv(c, p, (size_t)r);
        if (used < (size_t)r && c->io.fd >= 0 && gw_buf_append(&c->in, p + used, (size_t)r - used, max) != GW_OK)
            return GW_CONN_FULL;
    }
    return r;
}

void gw_conn_update(gw_conn *c)
{
    uint32_t ev = 0;
    if (c->io.fd < 0)
        return;
    if (c->flags & GW_CONN_F_HANDSHAKE) {
        ev = (c->flags & GW_CONN_F_TLS_RW) ? GW_EV_WRITE : GW_EV_READ;
    } else {
        if ((c->flags & GW_CONN_F_READING) && !(c->flags & GW_CONN_F_PAUSED))
            ev |= GW_EV_READ;
        else if ((c->flags & (GW_CONN_F_READING | GW_CONN_F_WATCH_HUP)) == (GW_CONN_F_READING | GW_CONN_F_WATCH_HUP))
            ev |= GW_EV_ERROR; /* paused: no input, but a reset is still news */
        if (c->flags & GW_CONN_F_TLS_RW)
            ev |= GW_EV_WRITE;
        if (c->out.len && !(c->flags & GW_CONN_F_ERROR))
            ev |= (c->flags & GW_CONN_F_TLS_WR) ? GW_EV_READ : GW_EV_WRITE;
    }
    gw_io_update(c->loop, &c->io, ev);
}

void gw_conn_want_read(gw_conn *c, int on)
{
    if (on)
        c->flags |= GW_CONN_F_READING;
    else
        c->flags &= ~GW_CONN_F_READING;
    gw_conn_update(c);
}

void gw_conn_pause(gw_conn *c, int paused)
{
    if (paused)
        c->flags |= GW_CONN_F_PAUSED;
    else
        c->flags &= ~GW_CONN_F_PAUSED;
    gw_conn_update(c);
}

/* The staging buffer corked writes gather in: one per thread, kept between
 * batches, so a batch costs no allocation. */
#define STAGE_SLOTS 4
typedef struct stage_slot {
    gw_buf buf;
    gw_conn *owner;
} stage_slot;
static _Thread_local stage_slot slots[STAGE_SLOTS];
static _Thread_local gw_task flush_task;

static stage_slot *slot_of(const gw_conn *c)
{
    if (!(c->flags & GW_CONN_F_CORKED))
        return NULL;
    for (int i = 0; i < STAGE_SLOTS; i++)
        if (slots[i].owner == c)
            return &slots[i];
    return NULL;
}

/* Output queue storage. A queue that empties gives its block to a small
 * per-thread cache, and the next queue to start takes it from there: a relay,
 * whose every message is queued on the other leg and sent at the end of the
 * loop pass, then costs no malloc/free per message (a page is past glibc's
 * per-thread cache, so each one went through the arena). Two sizes: a page,
 * and a large block that holds one frame of up to 16 KiB with its header (a
 * 4 KiB message no longer grows a page into a fresh 8 KiB block). The cache
 * holds as many blocks as one loop pass can fill (a pass handles at most
 * 256 events (loop_epoll.c), each deferring at most one other leg), so a
 * pass under load allocates nothing. An idle connection still holds no
 * storage. */
#define OUT_BLOCK 4096u
#define OUT_BLOCK_LARGE (16u * 1024)
#define OUT_SPARES 256
#define OUT_SPARES_LARGE 64
static _Thread_local uint8_t *out_spare[OUT_SPARES];
static _Thread_local uint8_t *out_spare_large[OUT_SPARES_LARGE];
static _Thread_local int out_nspare, out_nspare_large;

/* Gives a queue's storage back to the cache (or frees it). */
static void out_drop(uint8_t *data, uint32_t cap)
{
    if (data && cap == OUT_BLOCK && out_nspare < OUT_SPARES)
        out_spare[out_nspare++] = data;
    else if (data && cap == OUT_BLOCK_LARGE && out_nspare_large < OUT_SPARES_LARGE)
        out_spare_large[out_nspare_large++] = data;
    else
        gw_free(data);
}

/* Room for n more bytes in c's output queue; up to a large block's worth
 * comes from the cache (or is allocated in the cache's sizes, to return to
 * it). GW_OK, or GW_ERR past GW_CONN_OUT_MAX or without memory. */
static int out_reserve(gw_conn *c, size_t n)
{
    gw_buf *b = &c->out;
    if (gw_buf_room(b) >= n)
        return GW_OK;
    size_t want = (size_t)b->len + n;
    if (want > OUT_BLOCK_LARGE || (b->data && b->cap >= want))
        return gw_buf_reserve(b, n, GW_CONN_OUT_MAX); /* beyond the cache's sizes, or compacting */
    uint8_t *blk;
    uint32_t cap;
    if (want <= OUT_BLOCK && out_nspare > 0) {
        blk = out_spare[--out_nspare];
        cap = OUT_BLOCK;
    } else if (out_nspare_large > 0) {
        blk = out_spare_large[--out_nspare_large];
        cap = OUT_BLOCK_LARGE;
    } else {
        cap = want <= OUT_BLOCK ? OUT_BLOCK : OUT_BLOCK_LARGE;
        blk = gw_try_malloc(cap);
        if (!blk)
            return GW_ERR;
    }
    if (b->len)
        memcpy(blk, gw_buf_head(b), b->len);
    out_drop(b->data, b->cap);
    b->data = blk;
    b->cap = cap;
    b->head = 0;
    return GW_OK;
}

/* Drops n bytes from the front of the output queue; an emptied queue's
 * storage goes back to the cache (or is freed). */
static void out_consume(gw_conn *c, size_t n)
{
    if (n < c->out.len) {
        gw_buf_consume(&c->out, n);
        return;
    }
    out_drop(c->out.data, c->out.cap);
    c->out = (gw_buf){0};
}

static size_t iov_total(const struct iovec *iov, int n)
{
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += iov[i].iov_len;
    return total;
}

/* Appends iov (less its first skip bytes) to b, which has room for it. */
static void copy_iov(gw_buf *b, const struct iovec *iov, int n, size_t skip)
{
    for (int i = 0; i < n; i++) {
        size_t len = iov[i].iov_len;
        if (skip >= len) {
            skip -= len;
            continue;
        }
        memcpy(gw_buf_tail(b), (const uint8_t *)iov[i].iov_base + skip, len - skip);
        b->len += (uint32_t)(len - skip);
        skip = 0;
    }
}

/* Appends iov to the staging buffer b (one reservation for all of it). */
static int queue_iov(gw_buf *b, const struct iovec *iov, int n, size_t skip)
{
    size_t t = iov_total(iov, n) - skip;
    if (t == 0)
        return GW_OK;
    if (gw_buf_reserve(b, t, GW_CONN_OUT_MAX) != GW_OK)
        return GW_ERR;
    copy_iov(b, iov, n, skip);
    return GW_OK;
}

/* Appends iov (less its first skip bytes) to c's output queue. */
static int queue_out(gw_conn *c, const struct iovec *iov, int n, size_t skip)
{
    size_t t = iov_total(iov, n) - skip;
    if (t == 0)
        return GW_OK;
    if (out_reserve(c, t) != GW_OK)
        return GW_ERR;
    copy_iov(&c->out, iov, n, skip);
    return GW_OK;
}

/* Writes iov now, queueing what the kernel does not take. */
static int write_direct(gw_conn *c, const struct iovec *iov, int n, size_t total)
{
    ssize_t r = c->tp->writev(c, iov, n);
    if (r == GW_ERR) {
        c->flags |= GW_CONN_F_ERROR;
        return GW_ERR;
    }
    if (r == GW_AGAIN)
        r = 0;
    if ((size_t)r < total) {
        if (queue_out(c, iov, n, (size_t)r) != GW_OK) {
            c->flags |= GW_CONN_F_ERROR;
            return GW_ERR;
        }
        gw_conn_update(c);
    }
    return GW_OK;
}

/* Deferred connections copy writes up to this size into their queue; larger
 * ones go out at once with whatever waits. */
#define DEFER_COPY_MAX (64 * 1024)

/* Writes above this size skip the stage: copying them would cost more than
 * the system call the stage saves. */
#define STAGE_COPY_MAX (1024u * 1024)

int gw_conn_writev(gw_conn *c, const struct iovec *iov, int n)
{
    if (c->flags & GW_CONN_F_ERROR)
        return GW_ERR;
    /* (Not while write interest is on: a queue waiting for its event is
     * drained by that event, which tells the owner it drained.) */
    if ((c->flags & GW_CONN_F_DEFER) && !(c->flags & GW_CONN_F_HANDSHAKE) && !(c->io.events & GW_EV_WRITE) &&
        n < 15) {
        size_t total = 0;
        for (int i = 0; i < n; i++)
            total += iov[i].iov_len;
        if (total > DEFER_COPY_MAX) {
            /* Large writes are not worth a copy: send what waits and this
             * together now, in one call. */
            struct iovec all[16];
            int k = 0;
            size_t waiting = c->out.len;
            if (waiting) {
                all[k].iov_base = gw_buf_head(&c->out);
                all[k++].iov_len = waiting;
            }
            memcpy(all + k, iov, (size_t)n * sizeof *iov);
            if (!waiting)
                return write_direct(c, all, n, total);
            /* out's bytes are re-queued by write_direct if not all go. */
            gw_buf tmp = c->out;
            c->out = (gw_buf){0};
            int rc = write_direct(c, all, n + k, total + waiting);
            out_drop(tmp.data, tmp.cap);
            return rc;
        }
    }
    if (c->out.len || (c->flags & (GW_CONN_F_HANDSHAKE | GW_CONN_F_DEFER))) {
        /* Bytes already wait (or the connection is deferred): append behind
         * them to keep the order. */
        if (queue_out(c, iov, n, 0) != GW_OK) {
            c->flags |= GW_CONN_F_ERROR;
            return GW_ERR;
        }
        return GW_OK;
    }
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += iov[i].iov_len;
    stage_slot *sl = slot_of(c);
    if (sl) {
        gw_buf *stage = &sl->buf;
        if (total <= STAGE_COPY_MAX)
            return queue_iov(stage, iov, n, 0);
        if (stage->len && n < 15) {
            /* A large write while corked: send the staged bytes and it
             * together, in one call, without copying the large part. */
            struct iovec all[16];
            all[0].iov_base = gw_buf_head(stage);
            all[0].iov_len = stage->len;
            memcpy(all + 1, iov, (size_t)n * sizeof *iov);
            size_t staged = stage->len;
            stage->head = stage->len = 0;
            return write_direct(c, all, n + 1, total + staged);
        }
        if (stage->len)
            return queue_iov(stage, iov, n, 0);
    }
    return write_direct(c, iov, n, total);
}

int gw_conn_write(gw_conn *c, const void *p, size_t n)
{
    struct iovec iov = {(void *)p, n};
    return gw_conn_writev(c, &iov, 1);
}

static int sink_writev(void *io, const struct iovec *iov, int n) { return gw_conn_writev(io, iov, n); }

static int sink_paused(void *io) { return (((gw_conn *)io)->flags & GW_CONN_F_PAUSED) != 0; }

/* The buffer a sink_reserve handed out, and its size, until its sink_commit. */
static _Thread_local gw_buf *reserved;
static _Thread_local size_t reserved_n;

/* Room for n bytes where gw_conn_writev would copy them (the output queue or
 * the cork stage), so the engine can build a frame there in place; NULL where
 * it would not copy them (a direct send, a large deferred write) or on
 * failure: the engine then uses sink_writev, which decides (and fails) as
 * before. */
static uint8_t *sink_reserve(void *io, size_t n)
{
    gw_conn *c = io;
    reserved = NULL;
    if (c->flags & GW_CONN_F_ERROR)
        return NULL;
    if ((c->flags & GW_CONN_F_DEFER) && !(c->flags & GW_CONN_F_HANDSHAKE) && !(c->io.events & GW_EV_WRITE) &&
        n > DEFER_COPY_MAX)
        return NULL;
    if (c->out.len || (c->flags & (GW_CONN_F_HANDSHAKE | GW_CONN_F_DEFER))) {
        if (n == 0 || out_reserve(c, n) != GW_OK)
            return NULL;
        reserved = &c->out;
        reserved_n = n;
        return gw_buf_tail(&c->out);
    }
    stage_slot *sl = slot_of(c);
    if (!sl || n == 0 || n > STAGE_COPY_MAX || gw_buf_reserve(&sl->buf, n, GW_CONN_OUT_MAX) != GW_OK)
        return NULL;
    reserved = &sl->buf;
    reserved_n = n;
    return gw_buf_tail(&sl->buf);
}

static void sink_commit(void *io, size_t n)
{
    GW_UNUSED(io);
    /* More than was reserved, or no reservation: bytes past the buffer's
     * room would be sent (a bug in an engine, never input): stop here. */
    if (!reserved || n > reserved_n)
        abort();
    reserved->len += (uint32_t)n;
    reserved = NULL;
}

const gw_sink gw_conn_sink = {sink_writev, sink_paused, GW_CONN_OUT_MAX, sink_reserve, sink_commit};

int gw_conn_await_connect(gw_conn *c) { return gw_io_update(c->loop, &c->io, GW_EV_WRITE); }

void gw_conn_connected(gw_conn *c) { gw_io_update(c->loop, &c->io, 0); }

size_t gw_conn_try_drain(gw_conn *c)
{
    if (!(c->io.events & GW_EV_WRITE))
        gw_conn_flush(c);
    return c->out.len;
}

int gw_conn_flush(gw_conn *c)
{
    if (c->flags & GW_CONN_F_ERROR)
        return GW_ERR;
    while (c->out.len) {
        if (c->flags & GW_CONN_F_HANDSHAKE)
            return GW_AGAIN;
        ssize_t r = c->tp->write(c, gw_buf_head(&c->out), c->out.len);
        if (r == GW_AGAIN)
            break;
        if (r < 0) {
            c->flags |= GW_CONN_F_ERROR;
            gw_conn_update(c);
            return GW_ERR;
        }
        out_consume(c, (size_t)r);
    }
    gw_conn_update(c);
    return c->out.len ? GW_AGAIN : GW_OK;
}

void gw_conn_cork(gw_conn *c)
{
    /* A few connections per thread can be corked at once (the one whose read
     * batch is being processed, and the peers a relay writes to meanwhile);
     * with output already queued, writes append to the queue in order
     * instead. */
    if ((c->flags & (GW_CONN_F_CORKED | GW_CONN_F_HANDSHAKE | GW_CONN_F_DEFER)) || c->out.len || c->io.fd < 0)
        return;
    for (int i = 0; i < STAGE_SLOTS; i++) {
        if (!slots[i].owner) {
            slots[i].owner = c;
            slots[i].buf.head = slots[i].buf.len = 0;
            c->flags |= GW_CONN_F_CORKED;
            return;
        }
    }
}

int gw_conn_uncork(gw_conn *c)
{
    stage_slot *sl = slot_of(c);
    if (!sl)
        return (c->flags & GW_CONN_F_ERROR) ? GW_ERR : GW_OK;
    c->flags &= ~GW_CONN_F_CORKED;
    sl->owner = NULL;
    gw_buf *stage = &sl->buf;
    if (!stage->len)
        return GW_OK;
    struct iovec iov = {gw_buf_head(stage), stage->len};
    stage->len = 0;
    int rc = gw_conn_writev(c, &iov, 1);
    stage->head = 0;
    /* Keep the staging storage unless a burst made it large. */
    if (stage->cap > 2u * 1024 * 1024)
        gw_buf_release(stage);
    return rc;
}

static _Thread_local gw_list deferred_conns;

static void flush_deferred(gw_task *t)
{
    GW_UNUSED(t);
    while (deferred_conns.next && !gw_list_empty(&deferred_conns)) {
        gw_conn *c = gw_container_of(deferred_conns.next, gw_conn, defer_node);
        gw_list_remove(&c->defer_node);
        c->flags &= ~GW_CONN_F_DEFER;
        /* With write interest already on, the owner's write event sends the
         * queue and tells it the queue drained (its backpressure resumes
         * there): flushing here would drain it silently. */
        if (c->io.events & GW_EV_WRITE)
            continue;
        /* A failed write marks the connection dead; its owner learns it from
         * the error event the kernel reports, or at its next write. */
        gw_conn_flush(c);
    }
}

void gw_conn_cork_deferred(gw_conn *c)
{
    /* A connection corked by its own batch sends at that batch's end. */
    if (c->flags & (GW_CONN_F_DEFER | GW_CONN_F_ERROR | GW_CONN_F_CORKED | GW_CONN_F_HANDSHAKE) || c->io.fd < 0)
        return;
    if (!deferred_conns.next)
        gw_list_init(&deferred_conns);
    c->flags |= GW_CONN_F_DEFER;
    gw_list_insert_tail(&deferred_conns, &c->defer_node);
    flush_task.fn = flush_deferred;
    gw_loop_pending(c->loop, &flush_task);
}

void gw_conn_thread_exit(void)
{
    gw_free(read_buf);
    read_buf = NULL;
    for (int i = 0; i < STAGE_SLOTS; i++) {
        gw_buf_release(&slots[i].buf);
        slots[i].owner = NULL;
    }
    while (out_nspare > 0)
        gw_free(out_spare[--out_nspare]);
    while (out_nspare_large > 0)
        gw_free(out_spare_large[--out_nspare_large]);
}

void gw_conn_shutdown(gw_conn *c)
{
    if (c->flags & GW_CONN_F_WSHUT || c->io.fd < 0)
        return;
    c->flags |= GW_CONN_F_WSHUT;
    if (c->ssl)
        SSL_shutdown(c->ssl);
    shutdown(c->io.fd, SHUT_WR);
}

void gw_conn_close(gw_conn *c)
{
    stage_slot *sl = slot_of(c);
    if (sl)
        sl->owner = NULL;
    c->flags &= ~(GW_CONN_F_CORKED | GW_CONN_F_DEFER);
    gw_list_remove(&c->defer_node);
    if (c->io.fd >= 0) {
        gw_io_stop(c->loop, &c->io);
        c->tp->free(c);
        close(c->io.fd);
        c->io.fd = -1;
    }
    c->tp = &gw_transport_plain;
    gw_buf_release(&c->in);
    out_consume(c, c->out.len);
}

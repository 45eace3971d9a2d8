/* conn.h: a byte-stream connection (TCP or unix socket, plain or TLS) on a
 * loop. Protocol code reads and writes through it and never knows which
 * transport it has (redis ConnectionType / nginx c->recv shape).
 *
 * Writes: gw_conn_write() tries the socket at once when nothing is queued and
 * queues only what the kernel did not take. Between gw_conn_cork() and
 * gw_conn_uncork() writes are gathered in a per-thread staging buffer and go
 * out in one system call at uncork (a read batch that produces several
 * frames costs one write). The out buffer is allocated only while bytes wait,
 * so an idle connection holds no buffer. */
#ifndef GW_CONN_H
#define GW_CONN_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "core/buf.h"
#include "core/sink.h"
#include "loop/loop.h"

typedef struct gw_conn gw_conn;

typedef struct gw_transport {
    /* > 0 bytes read, 0 at EOF, GW_AGAIN, GW_ERR (c->err set) */
    ssize_t (*read)(gw_conn *c, uint8_t *p, size_t n);
    /* >= 0 bytes written, GW_AGAIN, GW_ERR */
    ssize_t (*write)(gw_conn *c, const uint8_t *p, size_t n);
    ssize_t (*writev)(gw_conn *c, const struct iovec *iov, int n);
    /* TLS handshake step: GW_OK done, GW_AGAIN, GW_ERR */
    int (*handshake)(gw_conn *c);
    /* bytes already decrypted and waiting inside the transport */
    size_t (*pending)(gw_conn *c);
    void (*free)(gw_conn *c);
} gw_transport;

/* flags */
#define GW_CONN_F_READING 0x01u    /* owner wants read events */
#define GW_CONN_F_PAUSED 0x02u     /* reads paused for backpressure */
#define GW_CONN_F_TLS_RW 0x04u     /* TLS read needs the socket writable */
#define GW_CONN_F_TLS_WR 0x08u     /* TLS write needs the socket readable */
#define GW_CONN_F_HANDSHAKE 0x10u  /* TLS handshake not finished */
#define GW_CONN_F_CORKED 0x20u     /* writes go to the staging buffer */
#define GW_CONN_F_WSHUT 0x40u      /* write side shut down */
#define GW_CONN_F_ERROR 0x80u      /* a write failed: the connection is dead */
#define GW_CONN_F_DEFER 0x100u     /* writes queue in out until the loop is about to sleep */
#define GW_CONN_F_WATCH_HUP 0x200u /* while paused, still report errors and hang-ups (GW_EV_ERROR): the
                                      owner's callback must handle GW_EV_ERROR on a paused conn */

#define GW_CONN_OUT_MAX (64u * 1024 * 1024) /* hard cap on queued output */

struct gw_conn {
    gw_io io;
    gw_loop *loop;
    const gw_transport *tp;
    void *ssl;      /* SSL * when TLS */
    gw_buf in;      /* unprocessed input (partial frames / heads) */
    gw_buf out;     /* output the kernel has not taken yet */
    uint32_t flags; /* GW_CONN_F_* */
    int err;        /* errno (or -1 for TLS errors) of the last failure */
    gw_list defer_node; /* on the thread's deferred-flush list while GW_CONN_F_DEFER */
};

extern const gw_transport gw_transport_plain;

/* ================================ reading ===================================
 * The connection owns its input: gw_conn_read_into reads once, into the
 * thread's read buffer when nothing waits in c->in (no copy: the bytes are
 * processed in place), else appended to c->in; it hands what waits to the
 * reader's rcv, and keeps the tail rcv did not use in c->in (the only copy
 * on the input side, and only for a head or frame split across reads).
 * This is the seam a completion-based backend would plug into (it would own
 * the buffers; the reader sees bytes). */
#define GW_CONN_READ_CHUNK (256u * 1024) /* the thread's read buffer */
#define GW_CONN_FULL (-4)                /* gw_conn_read_into: the input cap was reached */

typedef struct gw_conn_reader {
    /* n bytes at p (what waited in c->in first): returns how many it used.
     * It may pause, finish or close the connection. */
    size_t (*rcv)(gw_conn *c, uint8_t *p, size_t n);
    /* Most input kept unprocessed (c->in's cap). */
    size_t (*max_input)(gw_conn *c);
    /* Bytes still missing from what waits in c->in (0: unknown), so one
     * read can complete it (optional). */
    size_t (*need)(gw_conn *c);
} gw_conn_reader;

/* One read for rd. Returns the bytes read (> 0; *filled set when the read
 * took all the room it had, so more may be waiting), 0 at end of stream,
 * GW_AGAIN, GW_ERR (read error) or GW_CONN_FULL (the input cap). */
ssize_t gw_conn_read_into(gw_conn *c, const gw_conn_reader *rd, int *filled);
/* The thread's read buffer (GW_CONN_READ_CHUNK bytes), for a reader that
 * still reads by itself (the HTTP proxy's upstream side). */
uint8_t *gw_conn_read_buffer(void);

/* Initialises c around a connected nonblocking fd; cb gets its events. The
 * caller starts reading with gw_conn_want_read(c, 1). */
void gw_conn_init(gw_conn *c, gw_loop *l, int fd, gw_io_cb cb);
/* Wraps c in TLS (server side when is_server). ctx is an SSL_CTX *. Returns
 * GW_OK or GW_ERR. The handshake runs through gw_conn_handshake(). */
int gw_conn_tls(gw_conn *c, void *ctx, int is_server, const char *sni);
int gw_conn_handshake(gw_conn *c);

ssize_t gw_conn_read(gw_conn *c, uint8_t *p, size_t n);
size_t gw_conn_pending(gw_conn *c);

/* Writes (or queues) all of iov. GW_OK, or GW_ERR when the connection is
 * dead or its queue would pass GW_CONN_OUT_MAX. */
int gw_conn_writev(gw_conn *c, const struct iovec *iov, int n);
int gw_conn_write(gw_conn *c, const void *p, size_t n);
/* Writes queued bytes: GW_OK when all left, GW_AGAIN when some wait (write
 * interest is then on), GW_ERR. */
int gw_conn_flush(gw_conn *c);
void gw_conn_cork(gw_conn *c);
/* Defers c's writes until the loop is about to sleep: writes made to it
 * from other connections' callbacks in this iteration (a relay forwarding
 * many messages from many peers) leave in one system call. Any number of
 * connections may be deferred at once; the bytes wait in c->out, so the
 * owner's backpressure checks (gw_conn_queued) see them. */
void gw_conn_cork_deferred(gw_conn *c);
int gw_conn_uncork(gw_conn *c);
static inline size_t gw_conn_queued(const gw_conn *c) { return c->out.len; }
/* A connect in progress: the owner's callback hears when the socket is
 * writable (then gw_sock_connect_result says how it went). GW_OK or GW_ERR. */
int gw_conn_await_connect(gw_conn *c);
/* The connect completed: no interest until the owner asks (want_read,
 * writes). */
void gw_conn_connected(gw_conn *c);
/* Flow control for a writer with a long queue: tries the socket now, unless
 * the queue already waits for its write event (which will send it); returns
 * the bytes still queued. */
size_t gw_conn_try_drain(gw_conn *c);

/* The sink (core/sink.h) that writes through a gw_conn (io = the conn):
 * gw_conn_writev, corking and deferral included; paused while the conn is
 * paused (gw_conn_pause). A WebSocket session on a conn uses it. */
extern const gw_sink gw_conn_sink;

void gw_conn_want_read(gw_conn *c, int on);
void gw_conn_pause(gw_conn *c, int paused);
/* Recomputes and applies the event interest from the flags and queue. */
void gw_conn_update(gw_conn *c);
/* Shuts the write side down (after a final flush attempt). */
void gw_conn_shutdown(gw_conn *c);
/* Stops watching, frees transport state and buffers, closes the fd. */
void gw_conn_close(gw_conn *c);

/* Frees this thread's staging buffer (call as a worker thread ends). */
void gw_conn_thread_exit(void);

/* TLS context for a server from PEM files; NULL with err set on failure. */
void *gw_tls_server_ctx(const char *cert, const char *key, char *err, size_t errcap);
void *gw_tls_client_ctx(int verify, char *err, size_t errcap);
void gw_tls_ctx_free(void *ctx);
/* Takes one more reference on ctx (released with gw_tls_ctx_free): an SSL
 * made from it holds its own, so a swapped-out context lives exactly as long
 * as the connections that use it. Returns ctx. */
void *gw_tls_ctx_ref(void *ctx);
/* The serial number (hex) and notAfter (text) of ctx's certificate, for logs
 * and the status page; "" when there is none. */
void gw_tls_ctx_describe(void *ctx, char *serial, size_t serialcap, char *not_after, size_t nacap);

#endif

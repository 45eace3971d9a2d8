/* ws_client.h: an asynchronous WebSocket client connection on a gw_loop.
 *
 * Used by the relay (WebSocket upstreams), the terminal gateway (agents) and
 * the probe. It resolves and connects (TCP or unix socket), runs TLS with SNI
 * and certificate verification for wss://, sends the upgrade request, checks
 * the 101, then drives a gw_ws in client role: reads into the connection's
 * buffer, feeds the session, keeps a partial frame for the next read, corks
 * the writes of one read batch, and turns write interest on while output
 * waits.
 *
 * Lifetime. gw_wsc_connect() returns a client that the owner must release
 * with gw_wsc_free() exactly once, at any time, from anywhere (including
 * inside its own callbacks). Every connection ends with exactly one
 * on_close() carrying a precise reason, unless the owner frees the client
 * first (then no callback runs any more). on_close() is never called from
 * inside a gw_wsc_* call the owner made: it runs from the loop (a pending
 * task), so the owner's state is never re-entered. The memory is released
 * by a deferred task, after the current batch of events, never inside a
 * callback of the client itself.
 *
 * Threading: one loop, one thread, like everything on a gw_loop. The
 * program must ignore SIGPIPE (OpenSSL writes with write(2)). */
#ifndef GW_WS_CLIENT_H
#define GW_WS_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "net/addr.h"
#include "http/h1_parse.h"
#include "loop/loop.h"
#include "net/conn.h"
#include "ws/ws_session.h"

typedef struct gw_wsc gw_wsc;

/* A parsed target. URL forms:
 *   ws://host[:port][/path[?query]]     (port 80 by default)
 *   wss://host[:port][/path[?query]]    (port 443; TLS)
 *   unix:/path/to/sock[:/ws-path]       (Host: localhost; path "/" when absent;
 *                                        the socket path ends at the last ":/")
 *   http:// and https:// parse the same way with is_http set (the probe's
 *   plain HTTP checks use this parser too).
 * IPv6 literals go in brackets: ws://[::1]:8080/x. */
typedef struct gw_wsc_target {
    int tls;               /* wss:// or https:// */
    int is_http;           /* http(s):// rather than ws(s):// */
    gw_addr addr;          /* host:port, or is_unix + path */
    char host_header[300]; /* Host: value ("host" or "host:port" when the port is not the default) */
    char sni[256];         /* name for SNI and the certificate check; "" for unix sockets */
    char path[2048];       /* request target, at least "/" */
} gw_wsc_target;

/* Parses url into *t. GW_OK, or GW_ERR with a one-line reason in err. */
int gw_wsc_parse_url(const char *url, gw_wsc_target *t, char *err, size_t errcap);

typedef struct gw_wsc_opts {
    const char *protocols;   /* subprotocols to offer, "a, b"; NULL for none */
    const char *headers;     /* extra request headers: complete "Name: value\r\n" lines; NULL for none */
    const char *path;        /* request target to send instead of the target's path (any length); NULL: t's */
    int deflate;             /* offer permessage-deflate */
    uint64_t max_msg;        /* larger incoming messages fail with 1009; 0 = 1 MiB */
    uint64_t timeout_ms;     /* connect + TLS + upgrade must finish in this; 0 = 10 s */
    uint64_t close_wait_ms;  /* after our Close, wait this long for the peer's; 0 = 5 s */
    int insecure;            /* wss: do not verify the server certificate */
    const char *ca_file;     /* wss: PEM file of trusted CAs (added to the system store) */
    void *tls_ctx;           /* wss: an SSL_CTX * to use (shared; overrides insecure and ca_file; not freed) */
    const char *unix_path;   /* connect to this unix socket instead of the URL's host:port */
} gw_wsc_opts;

/* The server's HTTP response to the upgrade request. Views stay valid only
 * during the callback that receives it. */
typedef struct gw_wsc_response {
    gw_http_resp head;       /* status, reason, headers */
    const char *raw;         /* the head as received, raw_len bytes (ends with CRLF CRLF) */
    size_t raw_len;
    const uint8_t *body;     /* refusals only: the body (de-chunked), up to 64 KiB */
    size_t body_len;
    int body_truncated;      /* the body was longer, or did not complete in time */
} gw_wsc_response;

typedef enum gw_wsc_end {
    GW_WSC_CONNECT_FAILED = 1, /* resolve/connect failed: err, text = strerror or resolver text */
    GW_WSC_CONNECT_TIMEOUT,    /* connect + TLS + upgrade not done in timeout_ms; text says which step */
    GW_WSC_TLS_FAILED,         /* TLS handshake failed: text (e.g. the certificate verification error) */
    GW_WSC_HTTP_REFUSED,       /* the server answered the upgrade with status (not 101): resp has it */
    GW_WSC_BAD_HANDSHAKE,      /* malformed response or 101 that fails RFC 6455 checks: text says why */
    GW_WSC_CLOSED_BY_PEER,     /* the peer sent Close: code (1005 when none) and text = its reason */
    GW_WSC_IO_ERROR,           /* reset, read/write error, or EOF without a Close: err (0 at EOF) */
    GW_WSC_FAILED,             /* we failed the connection (peer broke the protocol, message too large):
                                * code = the close code sent, text = the error code */
    GW_WSC_CLOSED_LOCALLY,     /* gw_wsc_close(): code = ours; peer_code = its reply (0: none came) */
} gw_wsc_end;

typedef struct gw_wsc_reason {
    gw_wsc_end kind;
    int err;                      /* errno when relevant, else 0 */
    int status;                   /* HTTP status (HTTP_REFUSED, and BAD_HANDSHAKE when a head was parsed) */
    unsigned code;                /* close code (see the kinds) */
    unsigned peer_code;           /* CLOSED_LOCALLY: the code the peer answered with, 0 when none */
    char text[256];               /* human-readable detail, NUL-terminated, may be empty */
    const gw_wsc_response *resp;  /* HTTP_REFUSED, BAD_HANDSHAKE: the response (when one was parsed) */
} gw_wsc_reason;

typedef struct gw_wsc_cbs {
    /* The upgrade succeeded. subprotocol is the server's pick ("" when none). */
    void (*on_open)(gw_wsc *c, const char *subprotocol, const gw_wsc_response *resp);
    /* A complete message; p is writable and valid only during the call. */
    void (*on_message)(gw_wsc *c, int opcode, uint8_t *p, size_t n);
    void (*on_pong)(gw_wsc *c, const uint8_t *p, size_t n); /* optional */
    /* Queued output drained after having been queued (optional; for relays
     * that stop reading their source while this client's queue is long). */
    void (*on_drain)(gw_wsc *c);
    /* The connection is over (see gw_wsc_end). The owner still calls
     * gw_wsc_free() (it may do so here). */
    void (*on_close)(gw_wsc *c, const gw_wsc_reason *r);
    /* Optional, for relays: whole messages in runs as they came, once
     * gw_wsc_set_runs() turned runs on (see gw_ws_handler.on_run). */
    void (*on_run)(gw_wsc *c, uint8_t *p, size_t n, size_t count, uint64_t payload);
} gw_wsc_cbs;

/* Starts connecting to url (parsed with gw_wsc_parse_url) or to a target
 * already parsed (url NULL, t set). opts may be NULL (defaults). cbs is
 * copied; cbs->on_close is required. Returns the client, or NULL with err
 * set when url is unusable or a TLS context cannot be made (then nothing
 * was started and no callback will run). A connection that fails later,
 * even at once, reports through on_close from the loop. */
gw_wsc *gw_wsc_connect(gw_loop *l, const char *url, const gw_wsc_target *t, const gw_wsc_opts *opts,
                       const gw_wsc_cbs *cbs, void *data, char *err, size_t errcap);

/* Sends a whole text/binary message. GW_OK, or GW_ERR when not open (or
 * closing) or the connection is dead/over its output cap (then on_close
 * follows with IO_ERROR). Safe inside callbacks. */
int gw_wsc_send(gw_wsc *c, int opcode, const uint8_t *p, size_t n);
/* Sends a run a server session handed over (masked client frames: each gets
 * a fresh key in place; gw_ws_send_run). GW_OK or GW_ERR as gw_wsc_send. */
int gw_wsc_send_run(gw_wsc *c, uint8_t *p, size_t n, size_t count, uint64_t payload);
/* Turns delivery in runs to cbs->on_run on or off (an open connection). */
void gw_wsc_set_runs(gw_wsc *c, int on);
/* Sends a ping with up to 125 bytes of payload. GW_OK or GW_ERR. */
int gw_wsc_ping(gw_wsc *c, const uint8_t *p, size_t n);
/* Starts the close handshake (open) or abandons the attempt (connecting).
 * on_close follows with CLOSED_LOCALLY once the peer answered, the
 * connection dropped or close_wait_ms passed. A second call does nothing.
 * Safe inside callbacks: the effect comes after the callback returns. */
void gw_wsc_close(gw_wsc *c, unsigned code, const char *reason);
/* Releases c: closes the socket (sending Close 1001 best-effort when open),
 * no more callbacks, memory freed by a deferred task. NULL is fine. */
void gw_wsc_free(gw_wsc *c);

/* Stops (paused = 1) or resumes reading from the server (backpressure).
 * Input already buffered is processed again on resume. */
void gw_wsc_pause(gw_wsc *c, int paused);

void *gw_wsc_data(const gw_wsc *c);
/* Bytes of output waiting for the socket. */
size_t gw_wsc_queued(const gw_wsc *c);
/* 1 while the session is open (after on_open, before any close). */
int gw_wsc_is_open(const gw_wsc *c);
/* The session (after on_open), for relays that forward raw frames with
 * gw_ws_send_frame; NULL before. */
gw_ws *gw_wsc_ws(gw_wsc *c);

/* Short stable name of a kind: "connect_failed", "connect_timeout",
 * "tls_failed", "http_refused", "bad_handshake", "closed_by_peer",
 * "io_error", "failed", "closed_locally". */
const char *gw_wsc_end_str(gw_wsc_end kind);

#endif

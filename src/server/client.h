/* client.h: one accepted connection through its phases. The core (accept,
 * TLS, reading, corking, the one timer, finish, close) names no protocol and
 * no route kind: whatever serves the connection in a phase does so through a
 * gw_client_proto table (the HTTP phase, the WebSocket phase, a route kind
 * holding an upgrade or streaming an exchange), like HAProxy's mux_ops over
 * its connection. */
#ifndef GW_CLIENT_H
#define GW_CLIENT_H

#include <stdint.h>
#include <sys/socket.h>

#include "core/list.h"
#include "loop/loop.h"
#include "net/conn.h"

#define GW_READ_CHUNK GW_CONN_READ_CHUNK /* one read per wakeup lands in the thread's read buffer */
#define GW_OUT_HIGH (1024u * 1024)      /* stop reading a peer whose output queue passes this */
#define GW_LINGER_MS 2000               /* read and discard after our last byte before closing */
#define GW_SMALL_BODY_MAX (1024u * 1024) /* bodies of the gateway's own endpoints, read whole */
#define GW_BACKSTOP_MS 3600000u         /* a phase with no deadline of its own is re-checked this often */

struct gw_worker;
typedef struct gw_client gw_client;

enum gw_client_phase {
    GW_PHASE_TLS = 0, /* TLS handshake in progress */
    GW_PHASE_HTTP,    /* reading HTTP requests */
    GW_PHASE_HELD,    /* a route kind holds the connection, reads paused (an upgrade waiting for its upstream) */
    GW_PHASE_WS,      /* WebSocket session */
    GW_PHASE_STREAM,  /* a route kind streams an HTTP exchange (the request body is fed to it) */
    GW_PHASE_FINISH,  /* flushing our last bytes, then lingering for the peer's FIN */
    GW_PHASE_CLOSED,  /* socket closed, freed after the batch */
};

/* Why a connection ends without its protocol's goodbye. */
enum { GW_GONE_PEER = 1, GW_GONE_SHUTDOWN };

/* What serves a connection in a phase. Every entry but feed is optional. */
typedef struct gw_client_proto {
    /* Bytes that arrived (or wait in conn.in): returns how many it used. */
    size_t (*feed)(gw_client *c, uint8_t *p, size_t n);
    /* A read returned bytes at now (timestamps for deadlines). */
    void (*on_read)(gw_client *c, uint64_t now);
    /* When the phase's timer is due (0: the backstop). */
    uint64_t (*deadline)(gw_client *c);
    /* The timer fired (NULL: the connection is closed). */
    void (*timer)(gw_client *c);
    /* The output queue drained. */
    void (*drained)(gw_client *c);
    /* 1 while reads stay paused after a drain (the phase paused them). */
    int (*keep_paused)(gw_client *c);
    /* The peer vanished, or the worker stops: the session ends without
     * its goodbye (called just before the close). */
    void (*gone)(gw_client *c, int why);
    /* The connection finishes (flush + linger) or closes: the phase ends. */
    void (*finish)(gw_client *c);
    /* The connection closes: free the phase's state (after finish, if any). */
    void (*end)(gw_client *c);
    /* The worker drains (NULL: close at once). */
    void (*drain)(gw_client *c);
    /* A drained worker spreads the closes of these: this one's turn is at. */
    void (*drain_at)(gw_client *c, uint64_t at);
    /* Once a second: add per-connection counters to the shared metrics. */
    void (*tick)(gw_client *c);
    /* Input kept unprocessed at most (NULL: an HTTP head plus a small body). */
    size_t (*max_input)(const gw_client *c);
    /* Bytes still missing from what waits in conn.in (0: unknown). */
    size_t (*need)(const gw_client *c);
} gw_client_proto;

/* A request waiting for an asynchronous answer (a store; gw_client_wait). */
typedef struct gw_client_wait_ops {
    /* The deadline passed before the answer: answer the client (503,
     * envelope, log line with correlation_id), cancel the operation, free
     * data, then call gw_client_wait_end and gw_client_resume. */
    void (*deadline)(gw_client *c, void *data);
    /* The connection ends while waiting: cancel the operation, free data
     * (no answer can be written any more). */
    void (*abort)(gw_client *c, void *data);
} gw_client_wait_ops;

struct gw_client {
    gw_conn conn;
    struct gw_worker *w;
    gw_list node;          /* in w->clients */
    gw_task task;          /* deferred free, or re-processing of buffered input */
    gw_timer timer;        /* the one timer: deadlines of the current phase */
    uint8_t phase;         /* enum gw_client_phase */
    uint8_t admin;         /* accepted on the admin listener */
    uint8_t close_after;   /* close once the current response is out */
    uint8_t freeing;       /* task is queued for the deferred free */
    uint8_t served;        /* a request was answered: waiting for the next one is keep-alive idling */
    uint64_t phase_ms;     /* monotonic time the phase (or pending request) started */
    const gw_client_proto *base; /* the HTTP phase, given at accept */
    const gw_client_proto *proto; /* what serves the current phase */
    void *pdata;           /* its state (the WebSocket session, a held upgrade, an exchange) */
    const gw_client_wait_ops *wait; /* while waiting (gw_client_wait), with wait_data and its deadline */
    void *wait_data;
    uint64_t wait_deadline_ms;
    char ip[46];           /* peer address, for logs */
    char *norm_path;       /* the current request's path with dot segments removed (when it had any) */
};

/* A new connection on worker w, served by http (the HTTP phase) once TLS
 * (tls_ctx, NULL for none) is through. */
void gw_client_accept(struct gw_worker *w, int fd, const struct sockaddr_storage *ss, int admin, void *tls_ctx,
                      const gw_client_proto *http);
/* Hands the connection to proto in phase, with its state. */
void gw_client_enter(gw_client *c, int phase, const gw_client_proto *proto, void *pdata);
/* Back to reading HTTP requests (after a streamed exchange). */
void gw_client_http(gw_client *c);
/* Input waiting in conn.in is processed again before the loop sleeps. */
void gw_client_kick(gw_client *c);
void gw_client_close(gw_client *c);
void gw_client_finish(gw_client *c);
void gw_client_drain(gw_client *c);
void gw_client_arm(gw_client *c);
/* The request being served waits (reads paused, input kept) for an
 * asynchronous answer until deadline_ms (monotonic); ops->deadline runs if
 * it passes first, ops->abort if the connection ends first. */
void gw_client_wait(gw_client *c, const gw_client_wait_ops *ops, void *data, uint64_t deadline_ms);
/* The answer came (or the deadline passed): back to the HTTP phase, reads
 * still paused (answer the client, then gw_client_resume). */
void gw_client_wait_end(gw_client *c);
/* Reads resume and waiting input is processed (or the connection finishes
 * when it was to close after this answer). */
void gw_client_resume(gw_client *c);
/* The proto's state when c is in that proto, else NULL. */
static inline void *gw_client_data(const gw_client *c, const gw_client_proto *proto)
{
    return c->proto == proto ? c->pdata : NULL;
}

#endif

/* ws_session.h: the RFC 6455 message engine for one connection, server or
 * client role, over a gw_conn.
 *
 * The owner feeds it the bytes it read (gw_ws_feed); it decodes frames,
 * unmasks payloads in place (no copy for a message that arrives in one
 * frame), enforces the protocol (masking, reserved bits, opcodes,
 * fragmentation with control frames interleaved, fail-fast UTF-8, close
 * codes, message size limit, permessage-deflate), answers pings and close
 * frames itself, and hands complete messages to the owner's handler. Frames
 * it sends go to the conn (corked by the owner during a read batch).
 *
 * After each feed the owner checks ws->state: GW_WS_CLOSED means the close
 * handshake is complete or the connection failed; the owner then flushes and
 * closes the socket, logging ws->cause. */
#ifndef GW_WS_SESSION_H
#define GW_WS_SESSION_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "core/buf.h"
#include "core/sink.h"
#include "ws/pmd.h"
#include "ws/utf8.h"
#include "ws/ws_frame.h"

typedef struct gw_ws gw_ws;

typedef struct gw_ws_handler {
    /* A complete data message: text is valid UTF-8, compression undone. p is
     * writable and valid only during the call. May call gw_ws_send/close. */
    void (*on_message)(gw_ws *ws, int opcode, uint8_t *p, size_t n);
    /* A pong arrived (optional). */
    void (*on_pong)(gw_ws *ws, const uint8_t *p, size_t n);
    /* The peer sent a valid Close (optional): code (1005 when none) and its
     * reason, valid only during the call. The session has already answered. */
    void (*on_peer_close)(gw_ws *ws, unsigned code, const uint8_t *reason, size_t n);
    /* Optional, for owners that forward messages to another WebSocket (a
     * relay), once gw_ws_set_runs() turned runs on: a run of count whole
     * messages as they came off the wire, p[0..n) being their frames,
     * headers included, back to back. Each is one final frame, binary or
     * text (its UTF-8 checked), uncompressed, within max_msg, and every
     * other check of the protocol is made; frames from a client are still
     * masked with their keys. payload is their payload bytes in total. The
     * owner forwards the run whole with gw_ws_send_run (one copy, one
     * write); p is writable and valid only during the call. Fragmented,
     * compressed, control and partially received frames still come through
     * on_message and the other callbacks, in order with the runs. */
    void (*on_run)(gw_ws *ws, uint8_t *p, size_t n, size_t count, uint64_t payload);
} gw_ws_handler;

enum gw_ws_state {
    GW_WS_OPEN = 0,   /* messages flow both ways */
    GW_WS_CLOSE_SENT, /* we sent Close and wait for the peer's */
    GW_WS_CLOSED,     /* handshake complete or connection failed: close the socket */
};

/* Close causes (DESIGN.md section 8); static strings, compared by pointer. */
extern const char gw_cause_downstream_closed[];
extern const char gw_cause_upstream_closed[];
extern const char gw_cause_graceful[];
extern const char gw_cause_heartbeat_timeout[];
extern const char gw_cause_shutdown[];
extern const char gw_cause_protocol_error[];
extern const char gw_cause_too_large[];
extern const char gw_cause_idle_timeout[];
extern const char gw_cause_overflow[];
extern const char gw_cause_revoked[];
extern const char gw_cause_inflate_budget[];

/* Decompression budget (see gw_ws_set_inflate_budget). */
#define GW_WS_INFLATE_RATIO_DEFAULT 100u
#define GW_WS_INFLATE_SLACK (1024u * 1024) /* inflated bytes allowed beyond the ratio */

struct gw_ws {
    const gw_sink *sink;     /* where frames go (see core/sink.h) */
    void *io;                /* the sink's context (the server's: a gw_conn) */
    const gw_ws_handler *h;
    void *data;              /* the owner's */
    gw_pmd *pmd;             /* NULL unless permessage-deflate was negotiated */
    gw_buf msg;              /* fragments of the message being assembled */
    uint64_t max_msg;        /* larger messages close with 1009 */
    uint64_t cur_done;       /* payload bytes of a partial frame already unmasked */
    gw_utf8 utf8;            /* validator state of the text message in progress */
    uint8_t is_server;       /* role: server expects masked frames, client sends them */
    uint8_t state;           /* enum gw_ws_state */
    uint8_t msg_opcode;      /* opcode of the fragmented message in progress, 0 = none */
    uint8_t msg_compressed;  /* the message in progress has RSV1 */
    uint8_t runs;            /* whole messages go to h->on_run in runs (gw_ws_set_runs) */
    uint16_t close_sent;     /* code we sent (0: none yet) */
    uint16_t close_rcvd;     /* code the peer sent (0: none; 1005: Close without a code) */
    const char *cause;       /* why the session ended (gw_cause_*), NULL while open */
    const char *error;       /* error code text sent as close reason when we failed it */
    uint64_t msgs_in, msgs_out, bytes_in, bytes_out;
    /* Decompression budget: over the connection's life, inflated bytes stay
     * within inflate_ratio times the compressed payload bytes received plus
     * GW_WS_INFLATE_SLACK (0 = no budget). */
    uint32_t inflate_ratio;
    uint64_t z_in, z_out;
};

/* Initialises ws writing to sink with context io. max_msg bounds a message
 * (after inflation). */
void gw_ws_init(gw_ws *ws, const gw_sink *sink, void *io, int is_server, const gw_ws_handler *h, void *data, uint64_t max_msg);
/* Turns delivery in runs (gw_ws_handler.on_run) on or off; on only takes
 * with a handler that has on_run. */
void gw_ws_set_runs(gw_ws *ws, int on);
/* Enables permessage-deflate with negotiated parameters. */
void gw_ws_enable_pmd(gw_ws *ws, const gw_pmd_params *p);
void gw_ws_free(gw_ws *ws);

/* Sets the decompression budget: a connection may inflate at most ratio
 * times the compressed bytes it sent, plus GW_WS_INFLATE_SLACK (one large
 * message of any ratio), summed over its life; past it the connection fails
 * with 1008 "inflate_budget_exceeded" (cause gw_cause_inflate_budget), and
 * the inflater stops at the budget, so a bomb costs no more CPU than that.
 * 0 turns the budget off. gw_ws_init sets GW_WS_INFLATE_RATIO_DEFAULT. */
void gw_ws_set_inflate_budget(gw_ws *ws, uint32_t ratio);

/* Processes p[0..n). Returns the number of bytes consumed: the caller keeps
 * the rest (a partial frame, or everything after the point where it paused)
 * and passes it again, with more bytes after it, on the next call. Bytes of
 * a partial frame are already unmasked and validated (ws->cur_done) so the
 * work is not repeated.
 *
 * Backpressure: while the sink says paused (for gw_conn_sink: the conn is
 * paused, gw_conn_pause), no further frame is decoded: a handler that pauses the connection from
 * on_message stops the feed right after that message, and a feed on a
 * paused connection consumes nothing. Nothing is inflated or delivered for
 * a paused connection; its undecoded bytes stay with the caller. */
size_t gw_ws_feed(gw_ws *ws, uint8_t *p, size_t n);

/* Sends a whole message (text/binary; compressed when negotiated and worth
 * it). GW_OK or GW_ERR (sink dead or over its output cap). */
int gw_ws_send(gw_ws *ws, int opcode, const uint8_t *p, size_t n);
/* Sends a run that a session of the other role handed to its on_run, as it
 * is: from a client (masked) on a client-role session, each frame gets a
 * fresh unpredictable key (RFC 6455 section 5.3) and its payload is
 * remasked in place (XOR with old key ^ new key, one pass); from a server
 * (unmasked) on a server-role session the bytes go unchanged. One write
 * into the sink; no compression (the frames say RSV1 = 0). GW_ERR when not
 * open, when the run's masking does not fit this session's role, or when
 * the sink is dead or over its cap. */
int gw_ws_send_run(gw_ws *ws, uint8_t *p, size_t n, size_t count, uint64_t payload);
/* Sends one raw frame (for relays and fragmented sends); no compression. */
int gw_ws_send_frame(gw_ws *ws, int fin, int rsv, int opcode, const uint8_t *p, size_t n);
int gw_ws_ping(gw_ws *ws, const uint8_t *p, size_t n);
/* Starts the close handshake with code and reason, recording cause. A
 * session already closing keeps its first cause. */
int gw_ws_close(gw_ws *ws, unsigned code, const char *reason, const char *cause);
/* Frees this thread's scratch buffers (call as a worker thread ends). */
void gw_ws_thread_exit(void);

/* Marks the session failed without a handshake (peer gone). */
void gw_ws_abort(gw_ws *ws, const char *cause);

#endif

/* sink.h: where a protocol engine's output goes (the seam between protocol
 * code, which does no I/O, and the transport that does).
 *
 * A sink is an ops table plus the owner's context pointer, as wslay's
 * send_callback plus user_data: the engine hands it whole frames as iovecs
 * and asks it, before decoding each further input frame, whether its owner
 * wants decoding to stop now (backpressure). The transport's own sink
 * (gw_conn_sink, net/conn.h) queues into the connection's output buffer and
 * keeps its corking, so the sink costs no system call per frame. */
#ifndef GW_SINK_H
#define GW_SINK_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

typedef struct gw_sink {
    /* Writes (or queues) all of iov[0..n) as one unit: GW_OK, or GW_ERR
     * when the output is dead or would pass max_out. */
    int (*writev)(void *io, const struct iovec *iov, int n);
    /* Nonzero while the owner wants no further input decoded. */
    int (*paused)(void *io);
    /* Largest output the sink accepts at once (bounds the engine's scratch). */
    size_t max_out;
    /* Optional (both or neither): room for n bytes of output where the sink
     * would copy a writev's bytes anyway, so the engine builds a frame there
     * in place (header, payload masked on the way: one pass, no scratch),
     * then commit(io, k) queues the first k <= n of them. NULL: use writev.
     * Nothing may be written to the sink between the two calls. */
    uint8_t *(*reserve)(void *io, size_t n);
    void (*commit)(void *io, size_t n);
} gw_sink;

#endif

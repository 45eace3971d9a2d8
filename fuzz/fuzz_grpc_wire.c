/* fuzz_grpc_wire.c: what a gRPC peer controls before a method runs: the
 * length-prefixed framing (fed in chunks whose sizes the input picks), the
 * request messages decoded from it (protobuf-c, as the server does), the
 * grpc-timeout header and the grpc-message encoding of text. Invariants:
 * every byte is consumed, a message is never longer than the limit nor than
 * what was fed, the message concatenation re-framed is a prefix of the
 * input, timeouts are >= 1 ms, and an encoded grpc-message is printable
 * ASCII within its buffer. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "core/alloc.h"
#include "grpc/grpc_wire.h"
#include "grpc/reflection.h"
#include "grpc/health/v1/health.pb-c.h"
#include "wsgate/v1/edge_gateway.pb-c.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void decode(const uint8_t *m, size_t n)
{
    Wsgate__V1__ExecuteCommandRequest *e = wsgate__v1__execute_command_request__unpack(NULL, n, m);
    if (e)
        wsgate__v1__execute_command_request__free_unpacked(e, NULL);
    Wsgate__V1__SubscribeEventsRequest *s = wsgate__v1__subscribe_events_request__unpack(NULL, n, m);
    if (s)
        wsgate__v1__subscribe_events_request__free_unpacked(s, NULL);
    Grpc__Health__V1__HealthCheckRequest *h = grpc__health__v1__health_check_request__unpack(NULL, n, m);
    if (h)
        grpc__health__v1__health_check_request__free_unpacked(h, NULL);
    static int ready;
    if (!ready && gw_reflection_init() != GW_OK)
        abort();
    ready = 1;
    uint8_t *out;
    size_t on;
    if (gw_reflection_answer(m, n, &out, &on) == GW_OK)
        gw_free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    uint32_t max = 1u + data[0] * 16u;
    size_t chunk = 1u + data[1] % 64u;
    const uint8_t *p = data + 2;
    size_t n = size - 2;
    gw_grpc_reader r = {.max = max};
    size_t off = 0, msgs_bytes = 0;
    int stop = 0;
    while (off < n && !stop) {
        size_t len = GW_MIN(chunk, n - off);
        size_t done = 0;
        while (done < len) {
            size_t used;
            const uint8_t *m;
            size_t ml;
            int rc = gw_grpc_reader_feed(&r, p + off + done, len - done, &used, &m, &ml);
            if (used > len - done)
                abort();
            done += used;
            if (rc == GW_GRPC_MSG_READY) {
                if (ml > max)
                    abort();
                /* The message is the input's bytes right after its prefix. */
                size_t at = msgs_bytes + GW_GRPC_PREFIX;
                if (at + ml > n || memcmp(p + at, m, ml) != 0)
                    abort();
                msgs_bytes = at + ml;
                decode(m, ml);
            } else if (rc < 0) {
                stop = 1;
                break;
            } else if (used == 0) {
                abort(); /* MORE must take everything offered */
            }
        }
        off += done;
    }
    gw_grpc_reader_free(&r);
    for (size_t i = 0; i + 1 < n && i < 16; i++) {
        uint64_t ms = 0;
        if (gw_grpc_timeout_parse((const char *)p + i, GW_MIN(n - i, 10), &ms) == GW_OK && ms == 0)
            abort();
    }
    char *text = malloc(n + 1);
    memcpy(text, p, n);
    text[n] = '\0';
    char out[97];
    size_t w = gw_grpc_message_encode(text, out, sizeof out);
    if (w >= sizeof out || strlen(out) != w)
        abort();
    for (size_t i = 0; i < w; i++)
        if (out[i] < 0x20 || out[i] > 0x7e)
            abort();
    free(text);
    return 0;
}

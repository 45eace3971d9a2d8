/* pmd.h: permessage-deflate (RFC 7692) negotiation and codec on zlib.
 *
 * Negotiation is pure string work. The codec keeps one z_stream per
 * direction, created lazily on first use; with no_context_takeover for a
 * direction that stream is reset (and its memory freed) after every message,
 * so idle connections that negotiated no_context_takeover hold no zlib state. */
#ifndef GW_PMD_H
#define GW_PMD_H

#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "core/str.h"

typedef struct gw_pmd_params {
    uint8_t enabled;
    uint8_t server_no_context_takeover;
    uint8_t client_no_context_takeover;
    uint8_t server_max_window_bits; /* 9..15; 15 when not negotiated */
    uint8_t client_max_window_bits; /* 9..15; 15 when not negotiated */
} gw_pmd_params;

/* Server side. offers is the full Sec-WebSocket-Extensions value (possibly
 * several comma-separated extensions, each with ;-separated parameters,
 * possibly from several header lines already joined with ", "). Picks the
 * first permessage-deflate offer that is valid and acceptable: unknown
 * parameters, duplicated parameters, or bad values make that offer invalid
 * and the next one is tried (RFC 7692 section 5). server_max_window_bits=8 is
 * declined (zlib cannot make an 8-bit raw deflate window). Returns 1 and fills
 * *out and resp (the response header value, NUL-terminated, e.g.
 * "permessage-deflate; server_no_context_takeover") when one is accepted, 0
 * when none is (then the connection proceeds without compression). When
 * want_no_context_takeover is set, the server also asks for
 * server_no_context_takeover and client_no_context_takeover... only the
 * server one is ours to impose: it is always allowed in a response. */
int gw_pmd_negotiate_server(gw_str offers, int want_server_no_context_takeover, gw_pmd_params *out, char *resp,
                            size_t resp_cap);

/* Client side: the offer we send ("permessage-deflate; client_max_window_bits"). */
const char *gw_pmd_client_offer(void);
/* Client side: validates the server's response value. Returns 1 and fills
 * *out when it accepted permessage-deflate with valid parameters, 0 when the
 * header is empty, GW_ERR (-1) when the response is invalid (the client must
 * then fail the connection). */
int gw_pmd_client_accept(gw_str response, gw_pmd_params *out);

typedef struct gw_pmd gw_pmd;

/* is_server selects which side's parameters apply to our deflater/inflater. */
gw_pmd *gw_pmd_new(const gw_pmd_params *p, int is_server);
void gw_pmd_free(gw_pmd *d);

/* Inflates one whole message: the concatenated payloads of its frames (the
 * codec appends the 0x00 0x00 0xff 0xff tail itself). Appends the result to
 * out. Returns GW_OK; GW_ERR with *close_code = 1009 when the output would
 * pass max bytes (a deflate bomb stops there, not after), 1007 when the data
 * is not valid deflate. */
int gw_pmd_inflate(gw_pmd *d, const uint8_t *in, size_t n, gw_buf *out, size_t max, uint16_t *close_code);

/* Deflates one whole message and appends the compressed bytes (without the
 * trailing 0x00 0x00 0xff 0xff, as RFC 7692 section 7.2.1 says) to out.
 * Returns GW_OK or GW_ERR (out of memory). */
int gw_pmd_deflate(gw_pmd *d, const uint8_t *in, size_t n, gw_buf *out, size_t max);

/* Bytes of zlib state held now (for tests and metrics). */
size_t gw_pmd_memory(const gw_pmd *d);

#endif

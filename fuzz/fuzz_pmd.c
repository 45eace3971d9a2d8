/* fuzz_pmd.c: permessage-deflate. Byte 0 selects the mode and parameters:
 *   bit 7 set:   the rest is a Sec-WebSocket-Extensions value, given to both
 *                negotiation functions; an accepted server response must be
 *                accepted by our client with the same parameters.
 *   bit 7 clear: bits 0-1 takeover flags, bit 2 role, bits 3-5 window
 *                (9 + value, capped at 15); byte 1 picks the output max; the
 *                rest is split at byte 2 into two messages inflated in turn.
 *                Output never passes max, errors are 1007/1009/1011 only, and
 *                what inflates re-deflates and inflates back identically. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "ws/pmd.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void negotiate(const uint8_t *p, size_t n)
{
    char resp[256];
    gw_pmd_params sp, cp;
    gw_str s = gw_str_make((const char *)p, n);
    for (int want = 0; want < 2; want++) {
        int r = gw_pmd_negotiate_server(s, want, &sp, resp, sizeof resp);
        if (r != 0 && r != 1)
            abort();
        if (r == 1) {
            if (!sp.enabled || sp.server_max_window_bits < 9 || sp.server_max_window_bits > 15 ||
                sp.client_max_window_bits != 15 || strlen(resp) >= sizeof resp)
                abort();
            if (want && !sp.server_no_context_takeover)
                abort();
            if (gw_pmd_client_accept(gw_str_make(resp, strlen(resp)), &cp) != 1 || memcmp(&sp, &cp, sizeof sp) != 0)
                abort();
        } else if (sp.enabled || resp[0]) {
            abort();
        }
    }
    int r = gw_pmd_client_accept(s, &cp);
    if (r != 0 && r != 1 && r != GW_ERR)
        abort();
    if (r == 1 && (!cp.enabled || cp.client_max_window_bits < 9 || cp.client_max_window_bits > 15 ||
                   cp.server_max_window_bits < 8 || cp.server_max_window_bits > 15))
        abort();
}

static void roundtrip(const gw_pmd_params *pp, int is_server, const uint8_t *msg, size_t n)
{
    gw_pmd *tx = gw_pmd_new(pp, !is_server), *rx = gw_pmd_new(pp, is_server);
    gw_buf z = {0}, o = {0};
    uint16_t cc = 0;
    for (int i = 0; i < 2; i++) {
        if (gw_pmd_deflate(tx, msg, n, &z, 1u << 20) != GW_OK)
            abort();
        if (gw_pmd_inflate(rx, z.data ? gw_buf_head(&z) : (const uint8_t *)"", z.len, &o, n, &cc) != GW_OK)
            abort();
        if (o.len != n || (n && memcmp(gw_buf_head(&o), msg, n) != 0))
            abort();
        gw_buf_release(&z);
        gw_buf_release(&o);
    }
    gw_pmd_free(tx);
    gw_pmd_free(rx);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if (data[0] & 0x80) {
        negotiate(data + 1, size - 1);
        return 0;
    }
    if (size < 3)
        return 0;
    unsigned f = data[0];
    unsigned bits = 9 + ((f >> 3) & 7);
    if (bits > 15)
        bits = 15;
    gw_pmd_params pp = {1, (uint8_t)(f & 1), (uint8_t)(f >> 1 & 1), (uint8_t)bits, (uint8_t)bits};
    int is_server = (f >> 2) & 1;
    size_t max = (size_t)data[1] * 97 + 1;
    const uint8_t *in = data + 3;
    size_t n = size - 3;
    size_t cut = n ? data[2] % (n + 1) : 0;

    gw_pmd *d = gw_pmd_new(&pp, is_server);
    const uint8_t *part[2] = {in, in + cut};
    size_t plen[2] = {cut, n - cut};
    for (int i = 0; i < 2; i++) {
        gw_buf o = {0};
        uint16_t cc = 0;
        int r = gw_pmd_inflate(d, part[i], plen[i], &o, max, &cc);
        if (o.len > max)
            abort();
        if (r == GW_OK) {
            int no_ctx = is_server ? pp.client_no_context_takeover : pp.server_no_context_takeover;
            if (no_ctx && gw_pmd_memory(d) != 0)
                abort();
            roundtrip(&pp, is_server, o.data ? gw_buf_head(&o) : (const uint8_t *)"", o.len);
        } else if (r != GW_ERR || (cc != 1007 && cc != 1009 && cc != 1011)) {
            abort();
        } else if (gw_pmd_memory(d) != 0) {
            abort(); /* a failed inflate frees its stream */
        }
        gw_buf_release(&o);
        if (r != GW_OK)
            break;
    }
    gw_pmd_free(d);
    return 0;
}

/* fuzz_h1_parse.c: request and response head parsers with small limits, the
 * framing checks on what parses, then the chunked decoder over the rest of
 * the input cut in two at a point chosen by the first byte. Checks the
 * contracts: lengths within the input, every view inside the buffer, statuses
 * from the documented set, decoder output never longer than its input. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "http/h1_parse.h"
#include "http/ws_handshake.h"

#define MAXH 16

static void check_view(gw_str s, const char *buf, size_t len)
{
    if (s.n && (s.p < buf || s.p + s.n > buf + len))
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t sel = data[0];
    /* An exactly sized heap copy: ASan sees any read past the end. */
    char *buf = malloc(size - 1 ? size - 1 : 1);
    size_t len = size - 1;
    memcpy(buf, data + 1, len);

    gw_h1_limits lim = {64 + (sel & 0x3f), 256 + (size_t)(sel & 0x7f) * 4, (size_t)(sel & 7) + 4};
    gw_http_header h[MAXH];
    gw_http_req req;
    int st = 0;
    int rc = gw_h1_parse_request(buf, len, &req, h, &lim, &st);
    if (rc > 0) {
        if ((size_t)rc > len || req.num_headers > lim.max_headers || (size_t)rc > lim.max_head)
            abort();
        check_view(req.method, buf, (size_t)rc);
        check_view(req.target, buf, (size_t)rc);
        check_view(req.path, buf, (size_t)rc);
        check_view(req.query, buf, (size_t)rc);
        if (req.method.n == 0 || req.target.n == 0 || req.minor_version < 0 || req.minor_version > 1)
            abort();
        for (size_t i = 0; i < req.num_headers; i++) {
            check_view(h[i].name, buf, (size_t)rc);
            check_view(h[i].value, buf, (size_t)rc);
            if (h[i].name.n == 0)
                abort();
        }
        gw_h1_body body;
        const char *why = NULL;
        int bst = 0;
        if (gw_h1_request_body(&req, &body, &bst, &why) == GW_ERR) {
            if ((bst != 400 && bst != 501) || !why)
                abort();
        }
        gw_ws_upgrade up;
        const char *code = NULL;
        if (gw_ws_check_upgrade(&req, &up, &bst, &code) == GW_OK) {
            char acc[GW_WS_ACCEPT_LEN + 1];
            check_view(up.key, buf, (size_t)rc);
            gw_ws_accept_key(up.key, acc);
            if (strlen(acc) != GW_WS_ACCEPT_LEN)
                abort();
        }
        char joined[64];
        if (gw_h1_join_header(&req, "Sec-WebSocket-Protocol", joined, sizeof joined) >= sizeof joined)
            abort();
    } else if (rc == GW_ERR) {
        if (st != 400 && st != 414 && st != 431 && st != 505)
            abort();
    } else if (rc != GW_AGAIN) {
        abort();
    } else if (len > lim.max_head) {
        abort(); /* over the limit must never ask for more */
    }

    gw_http_resp resp;
    st = 0;
    rc = gw_h1_parse_response(buf, len, &resp, h, &lim, &st);
    if (rc > 0) {
        if ((size_t)rc > len || resp.status < 100 || resp.status > 999)
            abort();
        check_view(resp.reason, buf, (size_t)rc);
        for (size_t i = 0; i < resp.num_headers; i++) {
            check_view(h[i].name, buf, (size_t)rc);
            check_view(h[i].value, buf, (size_t)rc);
        }
        const char *why = NULL;
        (void)gw_ws_client_check_response(&resp, "dGhlIHNhbXBsZSBub25jZQ==", "chat, superchat", &why);
    } else if (rc == GW_ERR ? st != 502 : rc != GW_AGAIN) {
        abort();
    }

    /* Chunked decoder over everything, in two pieces. */
    size_t cut = len ? (size_t)sel * len / 256 : 0;
    gw_h1_chunked c;
    memset(&c, 0, sizeof c);
    size_t pieces[2] = {cut, len - cut}, off = 0;
    for (int i = 0; i < 2; i++) {
        size_t n = pieces[i], consumed = 0, out = n;
        uint8_t *p = malloc(n ? n : 1);
        memcpy(p, buf + off, n);
        rc = gw_h1_chunked_decode(&c, p, &out, &consumed);
        if (consumed > n || out > consumed)
            abort();
        if (rc == GW_AGAIN && consumed != n)
            abort();
        if (rc == GW_DONE && memcmp(p + consumed, buf + off + consumed, n - consumed) != 0)
            abort(); /* the bytes after the body must be intact, where they were */
        free(p);
        off += n;
        if (rc != GW_AGAIN)
            break;
    }
    free(buf);
    return 0;
}

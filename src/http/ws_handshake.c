/* ws_handshake.c: RFC 6455 opening handshake on parsed heads (see
 * ws_handshake.h). No allocation: the only buffers are on the stack. */
#include "http/ws_handshake.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/sha.h>

#include "core/common.h"

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define WS_KEY_LEN 24

int gw_ws_is_upgrade(const gw_http_req *req)
{
    return gw_h1_header_has_token(req->headers, req->num_headers, "Upgrade", "websocket");
}

static int b64_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' || c == '/';
}

/* The key must be 22 base64 characters plus "==": exactly what 16 bytes
 * encode to. The charset is checked here because EVP_DecodeBlock skips
 * leading/trailing whitespace; the decode then confirms the length (it counts
 * the two padding bytes, hence 18). */
static int key_valid(gw_str k)
{
    unsigned char raw[WS_KEY_LEN];
    if (k.n != WS_KEY_LEN || k.p[22] != '=' || k.p[23] != '=')
        return 0;
    for (size_t i = 0; i < 22; i++)
        if (!b64_char(k.p[i]))
            return 0;
    return EVP_DecodeBlock(raw, (const unsigned char *)k.p, WS_KEY_LEN) == 18;
}

int gw_ws_check_upgrade(const gw_http_req *req, gw_ws_upgrade *up, int *status, const char **code)
{
    const gw_http_header *h = req->headers;
    size_t n = req->num_headers;

    *status = 400;
    *code = "invalid_upgrade_request";
    if (!gw_str_eq(req->method, "GET")) {
        *status = 405;
        *code = "method_not_allowed";
        return GW_ERR;
    }
    if (req->minor_version != 1 || gw_h1_count_header(h, n, "Host") != 1 ||
        !gw_h1_header_has_token(h, n, "Upgrade", "websocket") || !gw_h1_header_has_token(h, n, "Connection", "upgrade"))
        return GW_ERR;

    /* The version is judged before the key so that a client speaking another
     * draft learns, through 426 + "Sec-WebSocket-Version: 13", what we accept.
     * Several values ("13, 8") are an offer we cannot take as plain 13. */
    const gw_http_header *ver = gw_h1_find_header(h, n, "Sec-WebSocket-Version");
    if (!ver || gw_h1_count_header(h, n, "Sec-WebSocket-Version") != 1 || !gw_str_eq(ver->value, "13")) {
        *status = 426;
        *code = "unsupported_websocket_version";
        return GW_ERR;
    }

    const gw_http_header *key = gw_h1_find_header(h, n, "Sec-WebSocket-Key");
    if (!key || gw_h1_count_header(h, n, "Sec-WebSocket-Key") != 1 || !key_valid(key->value)) {
        *code = "invalid_websocket_key";
        return GW_ERR;
    }

    const gw_http_header *proto = gw_h1_find_header(h, n, "Sec-WebSocket-Protocol");
    const gw_http_header *ext = gw_h1_find_header(h, n, "Sec-WebSocket-Extensions");
    up->key = key->value;
    up->protocols = proto ? proto->value : gw_str_make("", 0);
    up->extensions = ext ? ext->value : gw_str_make("", 0);
    return GW_OK;
}

void gw_ws_accept_key(gw_str key, char *out)
{
    unsigned char md[SHA_DIGEST_LENGTH];
    char cat[128];

    if (key.n <= sizeof cat - (sizeof WS_GUID - 1)) {
        memcpy(cat, key.p, key.n);
        memcpy(cat + key.n, WS_GUID, sizeof WS_GUID - 1);
        SHA1((const unsigned char *)cat, key.n + sizeof WS_GUID - 1, md);
    } else {
        /* Only a peer's junk key is this long; hash it in two pieces. */
        EVP_MD_CTX *ctx = EVP_MD_CTX_new();
        if (!ctx || !EVP_DigestInit_ex(ctx, EVP_sha1(), NULL) || !EVP_DigestUpdate(ctx, key.p, key.n) ||
            !EVP_DigestUpdate(ctx, WS_GUID, sizeof WS_GUID - 1) || !EVP_DigestFinal_ex(ctx, md, NULL))
            memset(md, 0, sizeof md); /* yields an Accept no peer can match */
        EVP_MD_CTX_free(ctx);
    }
    /* 20 bytes encode to 28 characters plus the NUL EVP_EncodeBlock writes. */
    EVP_EncodeBlock((unsigned char *)out, md, SHA_DIGEST_LENGTH);
}

gw_str gw_ws_select_protocol(const gw_http_req *req, const char *const *supported)
{
    const gw_http_header *h = req->headers;
    for (size_t i = 0; i < req->num_headers; i++) {
        if (!gw_str_ieq(h[i].name, "Sec-WebSocket-Protocol"))
            continue;
        gw_str rest = h[i].value;
        while (rest.n) {
            const char *c = memchr(rest.p, ',', rest.n);
            gw_str e = gw_str_make(rest.p, c ? (size_t)(c - rest.p) : rest.n);
            rest = c ? gw_str_make(c + 1, rest.n - e.n - 1) : gw_str_make(rest.p + rest.n, 0);
            e = gw_str_trim(e);
            if (e.n == 0)
                continue;
            for (const char *const *s = supported; s && *s; s++)
                if (gw_str_eq(e, *s))
                    return e;
        }
    }
    return gw_str_make("", 0);
}

size_t gw_h1_join_header(const gw_http_req *req, const char *name, char *out, size_t cap)
{
    size_t w = 0;
    int first = 1;
    if (cap == 0)
        return 0;
    for (size_t i = 0; i < req->num_headers; i++) {
        if (!gw_str_ieq(req->headers[i].name, name))
            continue;
        gw_str v = req->headers[i].value;
        if (!first && w < cap - 1) {
            size_t k = GW_MIN((size_t)2, cap - 1 - w);
            memcpy(out + w, ", ", k);
            w += k;
        }
        first = 0;
        size_t k = GW_MIN(v.n, cap - 1 - w);
        memcpy(out + w, v.p, k);
        w += k;
    }
    out[w] = '\0';
    return w;
}

void gw_ws_client_key(char *key_out)
{
    unsigned char raw[16];
    /* A failing CSPRNG leaves nothing sane to fall back on (TLS would fail
     * too); a predictable key would defeat the handshake's cache-busting. */
    if (RAND_bytes(raw, sizeof raw) != 1)
        abort();
    EVP_EncodeBlock((unsigned char *)key_out, raw, sizeof raw);
}

/* 1 when s may go into a header line: no CTL (HTAB allowed), no DEL. */
static int header_safe(const char *s)
{
    for (; s && *s; s++)
        if (((unsigned char)*s < 0x20 && *s != '\t') || *s == 0x7f)
            return 0;
    return 1;
}

size_t gw_ws_client_request(char *out, size_t cap, const char *host, const char *path, const char *key,
                            const char *protocols, const char *extensions, const char *extra_headers)
{
    if (!header_safe(host) || !header_safe(path) || !header_safe(key) || !header_safe(protocols) ||
        !header_safe(extensions) || !*host || !*path || strpbrk(path, " \t"))
        return 0;
    int w = snprintf(out, cap,
                     "GET %s HTTP/1.1\r\n"
                     "Host: %s\r\n"
                     "Upgrade: websocket\r\n"
                     "Connection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\n"
                     "%s%s%s"
                     "%s%s%s"
                     "%s"
                     "\r\n",
                     path, host, key, protocols ? "Sec-WebSocket-Protocol: " : "", protocols ? protocols : "",
                     protocols ? "\r\n" : "", extensions ? "Sec-WebSocket-Extensions: " : "",
                     extensions ? extensions : "", extensions ? "\r\n" : "", extra_headers ? extra_headers : "");
    if (w < 0 || (size_t)w >= cap)
        return 0;
    return (size_t)w;
}

/* 1 when token is one of the comma-separated elements of list (exact). */
static int list_has(const char *list, gw_str token)
{
    gw_str rest = gw_str_make(list, strlen(list));
    while (rest.n) {
        const char *c = memchr(rest.p, ',', rest.n);
        gw_str e = gw_str_make(rest.p, c ? (size_t)(c - rest.p) : rest.n);
        rest = c ? gw_str_make(c + 1, rest.n - e.n - 1) : gw_str_make(rest.p + rest.n, 0);
        e = gw_str_trim(e);
        if (e.n == token.n && memcmp(e.p, token.p, e.n) == 0)
            return 1;
    }
    return 0;
}

int gw_ws_client_check_response(const gw_http_resp *resp, const char *key, const char *offered, const char **why)
{
    const gw_http_header *h = resp->headers;
    size_t n = resp->num_headers;
    char want[GW_WS_ACCEPT_LEN + 1];

    if (resp->status != 101) {
        *why = "status";
        return GW_ERR;
    }
    if (!gw_h1_header_has_token(h, n, "Upgrade", "websocket") || !gw_h1_header_has_token(h, n, "Connection", "upgrade")) {
        *why = "upgrade";
        return GW_ERR;
    }
    const gw_http_header *acc = gw_h1_find_header(h, n, "Sec-WebSocket-Accept");
    gw_ws_accept_key(gw_str_make(key, strlen(key)), want);
    if (!acc || gw_h1_count_header(h, n, "Sec-WebSocket-Accept") != 1 || !gw_str_eq(acc->value, want)) {
        *why = "accept";
        return GW_ERR;
    }
    /* The server may pick one protocol we offered, on one line, or none. */
    const gw_http_header *proto = gw_h1_find_header(h, n, "Sec-WebSocket-Protocol");
    if (proto) {
        if (gw_h1_count_header(h, n, "Sec-WebSocket-Protocol") != 1 || !offered || proto->value.n == 0 ||
            memchr(proto->value.p, ',', proto->value.n) || !list_has(offered, proto->value)) {
            *why = "protocol";
            return GW_ERR;
        }
    }
    return GW_OK;
}

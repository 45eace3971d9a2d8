/* ws_handshake.h: the RFC 6455 opening handshake, server and client sides.
 * Pure string work on parsed heads (h1_parse.h); SHA-1 and base64 come from
 * OpenSSL. */
#ifndef GW_WS_HANDSHAKE_H
#define GW_WS_HANDSHAKE_H

#include <stddef.h>

#include "core/str.h"
#include "http/h1_parse.h"

#define GW_WS_ACCEPT_LEN 28

/* 1 when the request asks for a WebSocket upgrade at all (Upgrade header
 * contains the token "websocket", case-insensitive). */
int gw_ws_is_upgrade(const gw_http_req *req);

typedef struct gw_ws_upgrade {
    gw_str key;        /* Sec-WebSocket-Key (validated: base64 of 16 bytes) */
    gw_str protocols;  /* Sec-WebSocket-Protocol lines joined view: first line only; use gw_ws_select_protocol */
    gw_str extensions; /* first Sec-WebSocket-Extensions line, n == 0 when absent */
} gw_ws_upgrade;

/* Validates a server-side upgrade request (RFC 6455 section 4.2.1): method
 * GET, HTTP/1.1, Host present, Upgrade containing "websocket", Connection
 * containing "upgrade", Sec-WebSocket-Key that decodes to exactly 16 bytes
 * and is given once, Sec-WebSocket-Version exactly "13".
 * Returns GW_OK and fills *up, or GW_ERR with *status and *code:
 *   426 "unsupported_websocket_version" for a missing or other version (the
 *       response must then carry Sec-WebSocket-Version: 13),
 *   400 "invalid_websocket_key", 400 "invalid_upgrade_request" (other
 *       failures), 405 "method_not_allowed" for a method other than GET. */
int gw_ws_check_upgrade(const gw_http_req *req, gw_ws_upgrade *up, int *status, const char **code);

/* Writes the 28-character Sec-WebSocket-Accept for key into out and
 * NUL-terminates it (out has at least 29 bytes). */
void gw_ws_accept_key(gw_str key, char *out);

/* Picks the subprotocol to select: walks every Sec-WebSocket-Protocol header
 * of req in order (comma-separated tokens) and returns the first that appears
 * in supported (NULL-terminated list; exact, case-sensitive match). Returns a
 * view into the request; n == 0 when nothing matches. */
gw_str gw_ws_select_protocol(const gw_http_req *req, const char *const *supported);

/* Joins every value of the header name in req into out as "v1, v2" (for
 * Sec-WebSocket-Extensions and -Protocol sent on several lines). Returns the
 * length written (truncated to cap - 1, always NUL-terminated). */
size_t gw_h1_join_header(const gw_http_req *req, const char *name, char *out, size_t cap);

/* Client side. Generates a fresh random key (16 random bytes from
 * RAND_bytes, base64) into key_out (25 bytes: 24 chars + NUL). */
void gw_ws_client_key(char *key_out);

/* Writes a client upgrade request into out (NUL-terminated) and returns its
 * length, or 0 when cap is too small. host is the Host header value, path
 * the request target; protocols and extensions may be NULL; extra_headers is
 * NULL or a block of complete "Name: value\r\n" lines added verbatim. */
size_t gw_ws_client_request(char *out, size_t cap, const char *host, const char *path, const char *key,
                            const char *protocols, const char *extensions, const char *extra_headers);

/* Validates the server's response to our request with key: status 101,
 * Upgrade websocket, Connection upgrade, Sec-WebSocket-Accept matching.
 * A selected Sec-WebSocket-Protocol must be one we offered (offered is the
 * comma-separated list we sent, or NULL). Returns GW_OK, or GW_ERR with *why
 * set to a short static reason ("status", "upgrade", "accept", "protocol"). */
int gw_ws_client_check_response(const gw_http_resp *resp, const char *key, const char *offered, const char **why);

#endif

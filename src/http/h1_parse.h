/* h1_parse.h: strict HTTP/1.1 message head parser (RFC 9112), picohttpparser's
 * shape: pure functions over (buf, len) that fill caller-provided arrays with
 * views into the caller's buffer. No allocation, no state between calls: a
 * partial head gives GW_AGAIN and the caller calls again with more bytes.
 *
 * Strictness (no request may be smuggled past the gateway): bare CR, bare LF
 * line endings are accepted only as CRLF (a lone LF is GW_ERR), obs-fold
 * (a header line starting with SP/HTAB), whitespace between a field name and
 * the colon, empty or non-token field names, control characters (other than
 * HTAB) or DEL in values, non-token methods, targets with spaces or controls,
 * and versions other than HTTP/1.0 and HTTP/1.1 (505) are all refused. */
#ifndef GW_H1_PARSE_H
#define GW_H1_PARSE_H

#include <stddef.h>
#include <stdint.h>

#include "core/str.h"

typedef struct gw_http_header {
    gw_str name;  /* as received (compare case-insensitively) */
    gw_str value; /* leading and trailing OWS removed */
} gw_http_header;

typedef struct gw_h1_limits {
    size_t max_request_line; /* longer request line -> 414 */
    size_t max_head;         /* longer head (request line + headers) -> 431 */
    size_t max_headers;      /* more header lines -> 431 */
} gw_h1_limits;

typedef struct gw_http_req {
    gw_str method;
    gw_str target;       /* request-target as sent */
    gw_str path;         /* target up to '?' (origin-form), or the whole target */
    gw_str query;        /* after '?', without it; n == 0 when absent */
    gw_str authority;    /* absolute-form only (see gw_h1_origin_form); n == 0 otherwise */
    int minor_version;   /* 0 or 1 */
    gw_http_header *headers;
    size_t num_headers;
} gw_http_req;

typedef struct gw_http_resp {
    int minor_version;
    int status;          /* 100..999 */
    gw_str reason;
    gw_http_header *headers;
    size_t num_headers;
} gw_http_resp;

/* A deep copy of req in one allocation (release with gw_free): its strings
 * and headers point into the copy. For a request answered after its bytes
 * left the input buffer (a request waiting for a store). */
gw_http_req *gw_h1_req_clone(const gw_http_req *req);
/* Wipes (it may hold credentials) and frees a copy from gw_h1_req_clone. */
void gw_h1_req_clone_free(gw_http_req *copy);

/* Parses a request head at buf[0..len). headers must have room for
 * lim->max_headers entries. Returns the head's length including the final
 * CRLF CRLF (> 0); GW_AGAIN when the head is incomplete and within limits;
 * GW_ERR with *status set to 400 (malformed; also a target with a '#', or a
 * path with a backslash, %2F, %5C or a "."/".." segment followed by ';' or
 * %3B, which upstream stacks may resolve differently from the gateway), 414
 * (request line over max_request_line, detected as soon as that many bytes
 * arrived without a line end), 431 (head over max_head or too many headers, detected as soon as
 * the limit is passed) or 505 (unsupported HTTP version). Leading empty lines
 * (CRLF) before a request line are skipped, as RFC 9112 section 2.2 allows. */
int gw_h1_parse_request(const char *buf, size_t len, gw_http_req *req, gw_http_header *headers,
                        const gw_h1_limits *lim, int *status);

/* Parses a response head (for the WebSocket client and the proxy). Same
 * return contract; *status (the error) is 502-worthy malformation -> set to
 * 502 on GW_ERR. max_request_line bounds the status line. */
int gw_h1_parse_response(const char *buf, size_t len, gw_http_resp *resp, gw_http_header *headers,
                         const gw_h1_limits *lim, int *status);

/* Request-target forms (RFC 9112 section 3.2). An absolute-form target
 * ("http://host[:port]/path?q" or https://, scheme case-insensitive) is
 * served as its origin form: req->path becomes a view of its path ("/" when
 * empty) and req->authority of its authority, which must be a valid
 * host[:port] (no userinfo). The authority is information only: nothing ever
 * connects to it. Origin-form and other targets are left as they are.
 * GW_OK, or GW_ERR (400) for a malformed absolute-form. */
int gw_h1_origin_form(gw_http_req *req);

/* 1 when path (starting with '/') needs gw_h1_normalize_path: it holds a
 * dot segment ("." or ".."), or a percent-encoded dot (%2E, either case). */
int gw_h1_path_needs_normalizing(gw_str path);
/* Writes path normalised into out (room for path.n + 1 bytes; NUL-terminated)
 * and returns its length: each %2E / %2e becomes '.' (an unreserved
 * character, RFC 3986 section 6.2.2.2), then dot segments are removed as RFC
 * 3986 section 5.2.4 describes ("/a/b/../c/./d" -> "/a/c/d"; ".." never
 * climbs above the root: "/../x" -> "/x"). Paths not starting with '/' are
 * copied unchanged. */
size_t gw_h1_normalize_path(gw_str path, char *out);

/* Finds the first header named name (case-insensitive); NULL when absent. */
const gw_http_header *gw_h1_find_header(const gw_http_header *h, size_t n, const char *name);
/* Counts headers named name. */
size_t gw_h1_count_header(const gw_http_header *h, size_t n, const char *name);
/* 1 when the comma-separated list value contains token (case-insensitive,
 * OWS around elements ignored), e.g. Connection: keep-alive, Upgrade. Looks
 * through every header line with that name. */
int gw_h1_header_has_token(const gw_http_header *h, size_t n, const char *name, const char *token);

/* Message body framing of a request (RFC 9112 section 6). */
typedef struct gw_h1_body {
    int chunked;             /* Transfer-Encoding: chunked (final coding) */
    uint64_t content_length; /* when !chunked; 0 when absent */
} gw_h1_body;

/* Checks request semantics that protect against smuggling and fills *body:
 * exactly one Host header (HTTP/1.1) with a valid value, Content-Length a
 * plain decimal (repeated values must be identical: "5, 5" or two lines of 5
 * are folded; differing ones are refused), Transfer-Encoding only "chunked"
 * as the last and only coding (anything else -> 501 for unknown codings, 400
 * for malformed), both CL and TE present -> 400, TE in HTTP/1.0 -> 400.
 * Returns GW_OK or GW_ERR with *status (400 or 501) and *why set to a short
 * static reason ("missing_host", "duplicate_host", "bad_content_length",
 * "conflicting_framing", "bad_transfer_encoding", "unsupported_transfer_coding"). */
int gw_h1_request_body(const gw_http_req *req, gw_h1_body *body, int *status, const char **why);

/* Incremental chunked-body decoder (the one stateful piece; zero-fill to start). */
typedef struct gw_h1_chunked {
    int state;          /* private */
    uint64_t remaining; /* private: bytes left in the current chunk */
    size_t line_len;    /* private: bytes of the current size/trailer line seen */
} gw_h1_chunked;

/* Decodes chunked data in place: buf[0..*len) holds raw bytes on entry and the
 * decoded body bytes on return (moved to the front, *len updated).
 * Returns GW_DONE when the last chunk and trailers were consumed (*consumed
 * tells how many input bytes belonged to the body; the bytes after the body,
 * buf[*consumed..input len), are never moved or touched, so the next message
 * starts at buf + *consumed whether or not this read carried chunk data),
 * GW_AGAIN when more input is needed (every byte consumed), GW_ERR on
 * malformed chunks (bad hex, missing CRLF, size overflow, chunk extensions
 * with bare CR/LF, size line or trailer line over 4096 bytes). */
int gw_h1_chunked_decode(gw_h1_chunked *c, uint8_t *buf, size_t *len, size_t *consumed);

#endif

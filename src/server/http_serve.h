/* http_serve.h: the HTTP phase of a connection: request heads, the
 * gateway's own endpoints, route dispatch to the route's kind, and the error
 * envelope every HTTP error carries. */
#ifndef GW_HTTP_SERVE_H
#define GW_HTTP_SERVE_H

#include <stddef.h>
#include <stdint.h>

#include "http/h1_parse.h"
#include "server/client.h"

/* The HTTP phase: what gw_client_accept is given. */
extern const gw_client_proto gw_http_proto;

/* Ids of a request: correlation (from X-Correlation-ID / X-Request-ID or
 * generated) and trace (from traceparent or generated). */
typedef struct gw_req_ids {
    char corr[72];
    char trace[33];
} gw_req_ids;

/* A handler for one of the gateway's own endpoints. body is the whole
 * request body (n bytes, read before the call; at most GW_SMALL_BODY_MAX).
 * It writes one response (gw_http_respond / gw_http_error_ids) and returns
 * GW_OK, or returns GW_DONE when it took the connection over (an upgrade). */
typedef int (*gw_http_handler)(gw_client *c, gw_http_req *req, const uint8_t *body, size_t n,
                               const gw_req_ids *ids);

enum { GW_LISTENER_PUBLIC = 1, GW_LISTENER_ADMIN = 2 };
/* Registers a handler before gw_server_start (not thread-safe after).
 * method NULL takes every method; path ending in '/' matches as a prefix.
 * write: an admin write API, refused with 401 unless the request carries
 * Authorization: Bearer GATEWAY_ADMIN_TOKEN (when that variable is set). */
void gw_http_register(int listeners, const char *method, const char *path, int write, gw_http_handler fn);

/* 1 when the request asks to keep the connection open. */
int gw_http_keep_alive(const gw_http_req *req);
/* Writes a complete response with the request's ids. */
void gw_http_respond(gw_client *c, const gw_http_req *req, const gw_req_ids *ids, int status, const char *ctype,
                     const void *body, size_t n, const char *extra_headers);
/* Writes the JSON value j (a jansson json_t *, taken: released here) as an
 * application/json response; 500 internal_error when it cannot be encoded. */
void gw_http_respond_json(gw_client *c, const gw_http_req *req, const gw_req_ids *ids, int status, void *j,
                          const char *extra_headers);
void gw_http_error_ids(gw_client *c, int status, const char *code, const char *message, const gw_http_req *req,
                       const char *extra_headers, const gw_req_ids *ids);
void gw_http_error(gw_client *c, int status, const char *code, const char *message, const gw_http_req *req,
                   const char *extra_headers);

#endif

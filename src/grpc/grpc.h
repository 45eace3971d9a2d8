/* grpc.h: the gRPC surface (DESIGN.md section 6, README "gRPC"): service
 * wsgate.v1.EdgeGateway (ExecuteCommand, SubscribeEvents) and
 * grpc.health.v1.Health over HTTP/2 (nghttp2, driven by wsgate's own
 * connections) on GATEWAY_AUTHENTICATED_GRPC_ADDR.
 *
 * A gRPC connection is a gw_client whose protocol from accept on is
 * gw_grpc_proto (never the HTTP/1.1 phase): nghttp2_session_mem_recv takes
 * what the connection read, nghttp2_session_mem_send's output goes out
 * through the connection (corked per batch, and not asked for while the
 * connection's queue passes GW_OUT_HIGH). */
#ifndef GW_GRPC_H
#define GW_GRPC_H

#include <stddef.h>

#include "config/config.h"
#include "server/client.h"
#include "server/kind.h"

#define GW_GRPC_MAX_MESSAGE (1024u * 1024)   /* a request message larger than this: RESOURCE_EXHAUSTED */
#define GW_GRPC_MAX_STREAMS 100              /* SETTINGS_MAX_CONCURRENT_STREAMS */
#define GW_GRPC_CONN_BUFFERED (4u * 1024 * 1024) /* request bytes held per connection, all streams */

extern const gw_client_proto gw_grpc_proto;
/* The `command` route kind: ExecuteCommand's routes (README "Routes"). */
extern const gw_kind gw_kind_command;

/* Loads the signer (when gRPC is on, or the key is set), registers GET
 * /v1/signing-key and the event encoder. GW_OK, or GW_ERR with one line. */
int gw_grpc_init(const gw_config *cfg, char *err, size_t errcap);
/* 1 when the gRPC listener is to be opened. */
int gw_grpc_enabled(void);
/* A server SSL_CTX for the gRPC listener (ALPN h2) from the certificate
 * files: at start and on each SIGHUP rotation. */
void *gw_grpc_tls_make(const char *cert, const char *key, char *err, size_t errcap);
/* Logs the one warning of a start with gRPC off for want of a signer key
 * (after the start succeeded: a failed start stays one line). */
void gw_grpc_log_off(void);
/* The TLS context of the gRPC listener (ALPN h2), or NULL for h2c. */
void *gw_grpc_tls_ctx(void);

#endif

/* bearer.h: checking an "Authorization: Bearer <secret>" request header
 * against a secret known only by its SHA-256 digest. Digests of a fixed size
 * are compared with CRYPTO_memcmp, so neither the secret's bytes nor its
 * length show in the timing. No I/O. */
#ifndef GW_BEARER_H
#define GW_BEARER_H

#include <stddef.h>
#include <stdint.h>

#include "http/h1_parse.h"

#define GW_BEARER_DIGEST_LEN 32

/* The digest a secret is compared by. */
void gw_bearer_digest(const char *secret, size_t n, uint8_t out[GW_BEARER_DIGEST_LEN]);

typedef enum gw_bearer_result {
    GW_BEARER_OK = 0,
    GW_BEARER_MISSING,   /* no Authorization header */
    GW_BEARER_INVALID,   /* not "Bearer <value>", a wrong value, or more than one Authorization header */
} gw_bearer_result;

/* Checks the request's Authorization header. The scheme is matched without
 * regard to case (RFC 9110 section 11.1), the credential exactly: an empty
 * credential, a prefix of the secret or a different case are all INVALID,
 * and so is a request with two Authorization headers (which one an agent or
 * a proxy reads is not defined). */
gw_bearer_result gw_bearer_check(const gw_http_req *req, const uint8_t want[GW_BEARER_DIGEST_LEN]);

#endif

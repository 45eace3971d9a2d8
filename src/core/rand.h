/* rand.h: fast cryptographically strong random bytes (masking keys, ids).
 * A per-thread pool refilled from OpenSSL's DRBG, so a 4-byte WebSocket
 * mask costs a memcpy, not a system call. */
#ifndef GW_RAND_H
#define GW_RAND_H

#include <stddef.h>

void gw_rand_bytes(void *p, size_t n);
/* Writes 2*n lowercase hex characters of n random bytes plus a NUL. */
void gw_rand_hex(char *out, size_t n);

#endif

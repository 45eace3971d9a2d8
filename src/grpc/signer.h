/* signer.h: Ed25519 response signatures (DESIGN.md section 6;
 * docs/response-signing.md). The key is a PKCS#8 PEM file
 * (GATEWAY_RESPONSE_SIGNER_PRIVATE_KEY_PEM_PATH), loaded once at start;
 * signing is thread-safe (OpenSSL's one-shot EVP_DigestSign on a shared,
 * read-only key). */
#ifndef GW_SIGNER_H
#define GW_SIGNER_H

#include <stddef.h>
#include <stdint.h>

#define GW_SIG_LEN 64
#define GW_KEY_ID_LEN 16 /* hex of the first 8 bytes of SHA-256(raw public key) */

typedef struct gw_signer gw_signer;

/* Loads an Ed25519 private key from a PEM file. NULL with a one-line err
 * (naming the path) when it is missing, unreadable or not Ed25519. */
gw_signer *gw_signer_load(const char *path, char *err, size_t errcap);
void gw_signer_free(gw_signer *s);
const char *gw_signer_key_id(const gw_signer *s); /* GW_KEY_ID_LEN hex characters */
/* The public key as PEM (SubjectPublicKeyInfo), NUL-terminated. */
const char *gw_signer_public_pem(const gw_signer *s);

/* The canonical byte string (docs/response-signing.md), into out (cap
 * bytes); returns its length, or 0 when it does not fit:
 *   "wsgate.v1.ExecuteCommand\n" request_id "\n" command "\n"
 *   server_time_ms (decimal) "\n" hex(SHA-256(payload)) "\n" key_id */
size_t gw_signer_canonical(const char *key_id, const char *request_id, const char *command, uint64_t server_time_ms,
                           const uint8_t *payload, size_t payload_len, uint8_t *out, size_t cap);
/* Signs the canonical string of a response. GW_OK or GW_ERR. */
int gw_signer_sign(const gw_signer *s, const char *request_id, const char *command, uint64_t server_time_ms,
                   const uint8_t *payload, size_t payload_len, uint8_t sig[GW_SIG_LEN]);

/* `wsgate keygen --out PREFIX`: writes PREFIX.key (PKCS#8 PEM, mode 0600,
 * never over an existing file) and PREFIX.pub (PEM). */
int gw_keygen_main(int argc, char **argv);

#endif

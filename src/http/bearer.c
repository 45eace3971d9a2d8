/* bearer.c: see bearer.h. */
#include "http/bearer.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <strings.h>

void gw_bearer_digest(const char *secret, size_t n, uint8_t out[GW_BEARER_DIGEST_LEN])
{
    SHA256((const unsigned char *)secret, n, out);
}

gw_bearer_result gw_bearer_check(const gw_http_req *req, const uint8_t want[GW_BEARER_DIGEST_LEN])
{
    size_t count = gw_h1_count_header(req->headers, req->num_headers, "Authorization");
    if (count == 0)
        return GW_BEARER_MISSING;
    const gw_http_header *h = gw_h1_find_header(req->headers, req->num_headers, "Authorization");
    if (count > 1 || h->value.n < 7 || strncasecmp(h->value.p, "Bearer ", 7) != 0)
        return GW_BEARER_INVALID;
    uint8_t got[GW_BEARER_DIGEST_LEN];
    gw_bearer_digest(h->value.p + 7, h->value.n - 7, got);
    int same = CRYPTO_memcmp(got, want, sizeof got) == 0;
    OPENSSL_cleanse(got, sizeof got);
    /* "Bearer " alone: the empty credential never matches a secret (an
     * empty secret is never configured for a check). */
    return same && h->value.n > 7 ? GW_BEARER_OK : GW_BEARER_INVALID;
}

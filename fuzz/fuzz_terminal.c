/* fuzz_terminal.c: the terminal module's byte-level pieces: token shape
 * checks and consumption on the embedded store (arbitrary presented tokens
 * must never match, crash or leak), base64url, and the scrollback ring
 * under arbitrary write sizes (checked against a simple model). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "agent/ring.h"
#include "store/tokens.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static gw_token_store *s;
    static char minted[GW_TOKEN_LEN + 1];
    if (!s) {
        s = gw_token_store_embedded(NULL, 1000);
        gw_token_ctx c;
        memset(&c, 0, sizeof c);
        strcpy(c.allocation_id, "a");
        strcpy(c.upstream, "ws://127.0.0.1:1/");
        gw_token_mint(s, &c, 600, minted);
    }
    gw_token_ctx out;
    gw_token_result r = gw_token_consume(s, (const char *)data, size, "a", &out);
    if (r == GW_TOKEN_OK && !(size == GW_TOKEN_LEN && memcmp(data, minted, size) == 0))
        abort(); /* only the minted token may ever be accepted */

    char enc[4 * 1024 / 3 + 8];
    size_t n = size > 1024 ? 1024 : size;
    size_t en = gw_base64url_encode(data, n, enc);
    if (en != (n * 4 + 2) / 3 || strlen(enc) != en)
        abort();
    if (n == GW_TOKEN_RAW_LEN && !gw_token_well_formed(enc, en))
        abort();

    /* Ring: capacity from the first byte, write sizes from the next ones,
     * content from the rest; the ring must equal the tail of the stream. */
    if (size < 2)
        return 0;
    size_t cap = data[0] % 64;
    gw_ring ring;
    gw_ring_init(&ring, cap);
    uint8_t *model = malloc(size);
    size_t mlen = 0, i = 1;
    while (i < size) {
        size_t k = data[i] % 97;
        i++;
        if (k > size - i)
            k = size - i;
        gw_ring_write(&ring, data + i, k);
        memcpy(model + mlen, data + i, k);
        mlen += k;
        i += k;
    }
    uint8_t got[64];
    size_t gl = gw_ring_copy(&ring, got);
    size_t want = mlen < cap ? mlen : cap;
    if (gl != want || memcmp(got, model + mlen - want, want) != 0 || gw_ring_utf8_skip(&ring) > 3)
        abort();
    free(model);
    gw_ring_free(&ring);
    return 0;
}

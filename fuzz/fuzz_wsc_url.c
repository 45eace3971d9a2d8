/* fuzz_wsc_url.c: gw_wsc_parse_url on arbitrary strings. Checks that a URL
 * it accepts gives a usable target: a path starting with "/", a Host value
 * and an address, every field NUL-terminated within its array. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "upstream/ws_client.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 4096)
        return 0;
    char *s = malloc(size + 1);
    memcpy(s, data, size);
    s[size] = '\0';
    gw_wsc_target t;
    char err[256];
    if (gw_wsc_parse_url(s, &t, err, sizeof err) == GW_OK) {
        if (t.path[0] != '/' || !t.host_header[0] || !t.addr.set)
            abort();
        if (memchr(t.path, '\0', sizeof t.path) == NULL || memchr(t.sni, '\0', sizeof t.sni) == NULL)
            abort();
        if (strpbrk(t.host_header, "\r\n") || strchr(t.path, '#'))
            abort();
        if (!t.addr.is_unix && t.addr.port == 0)
            abort();
    } else if (!memchr(err, '\0', sizeof err)) {
        abort();
    }
    free(s);
    return 0;
}

/* grpc_wire.c: see grpc_wire.h. */
#include "grpc/grpc_wire.h"

#include <string.h>

#include "core/common.h"

const char *gw_grpc_status_name(int code)
{
    switch (code) {
    case GW_GRPC_OK: return "OK";
    case GW_GRPC_CANCELLED: return "CANCELLED";
    case GW_GRPC_INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case GW_GRPC_DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case GW_GRPC_NOT_FOUND: return "NOT_FOUND";
    case GW_GRPC_PERMISSION_DENIED: return "PERMISSION_DENIED";
    case GW_GRPC_RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case GW_GRPC_FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    case GW_GRPC_OUT_OF_RANGE: return "OUT_OF_RANGE";
    case GW_GRPC_UNIMPLEMENTED: return "UNIMPLEMENTED";
    case GW_GRPC_INTERNAL: return "INTERNAL";
    case GW_GRPC_UNAVAILABLE: return "UNAVAILABLE";
    case GW_GRPC_UNAUTHENTICATED: return "UNAUTHENTICATED";
    default: return "UNKNOWN";
    }
}

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

int gw_grpc_reader_feed(gw_grpc_reader *r, const uint8_t *p, size_t n, size_t *used, const uint8_t **msg,
                        size_t *len)
{
    *used = 0;
    *msg = NULL;
    *len = 0;
    /* The previous message was handed out: drop it. */
    if (r->buf.len >= GW_GRPC_PREFIX && r->buf.len == GW_GRPC_PREFIX + be32(gw_buf_head(&r->buf) + 1))
        gw_buf_consume(&r->buf, r->buf.len);
    size_t off = 0;
    while (off < n) {
        size_t have = r->buf.len;
        size_t want;
        if (have < GW_GRPC_PREFIX) {
            want = GW_GRPC_PREFIX - have;
        } else {
            const uint8_t *h = gw_buf_head(&r->buf);
            want = GW_GRPC_PREFIX + (size_t)be32(h + 1) - have;
        }
        size_t take = GW_MIN(want, n - off);
        if (gw_buf_append(&r->buf, p + off, take, (size_t)r->max + GW_GRPC_PREFIX) != GW_OK)
            return GW_GRPC_MSG_NOMEM;
        off += take;
        *used = off;
        const uint8_t *h = gw_buf_head(&r->buf);
        if (r->buf.len == GW_GRPC_PREFIX) {
            if (h[0] != 0)
                return GW_GRPC_MSG_COMPRESSED;
            if (be32(h + 1) > r->max)
                return GW_GRPC_MSG_TOO_BIG;
        }
        if (r->buf.len >= GW_GRPC_PREFIX && r->buf.len == GW_GRPC_PREFIX + be32(h + 1)) {
            *msg = h + GW_GRPC_PREFIX;
            *len = r->buf.len - GW_GRPC_PREFIX;
            return GW_GRPC_MSG_READY;
        }
    }
    return GW_GRPC_MSG_MORE;
}

void gw_grpc_reader_free(gw_grpc_reader *r) { gw_buf_release(&r->buf); }

void gw_grpc_prefix(uint8_t out[GW_GRPC_PREFIX], size_t len)
{
    out[0] = 0;
    out[1] = (uint8_t)(len >> 24);
    out[2] = (uint8_t)(len >> 16);
    out[3] = (uint8_t)(len >> 8);
    out[4] = (uint8_t)len;
}

int gw_grpc_timeout_parse(const char *s, size_t n, uint64_t *ms)
{
    if (n < 2 || n > 9)
        return GW_ERR;
    uint64_t v = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return GW_ERR;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    switch (s[n - 1]) {
    case 'H': v *= 3600000u; break;
    case 'M': v *= 60000u; break;
    case 'S': v *= 1000u; break;
    case 'm': break;
    case 'u': v = (v + 999u) / 1000u; break;
    case 'n': v = (v + 999999u) / 1000000u; break;
    default: return GW_ERR;
    }
    *ms = v ? v : 1;
    return GW_OK;
}

size_t gw_grpc_message_encode(const char *msg, char *out, size_t cap)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    if (!cap)
        return 0;
    for (const unsigned char *p = (const unsigned char *)msg; *p; p++) {
        if (*p >= 0x20 && *p <= 0x7e && *p != '%') {
            if (o + 1 >= cap)
                break;
            out[o++] = (char)*p;
        } else {
            if (o + 3 >= cap)
                break;
            out[o++] = '%';
            out[o++] = hex[*p >> 4];
            out[o++] = hex[*p & 15];
        }
    }
    out[o] = '\0';
    return o;
}

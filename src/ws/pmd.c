/* pmd.c: permessage-deflate (RFC 7692): Sec-WebSocket-Extensions negotiation
 * and a per-message deflate/inflate codec on zlib raw streams. */
#include "ws/pmd.h"

#include <stdio.h>
#include <string.h>
#include <zlib.h>

#include "core/alloc.h"
#include "core/common.h"
#include "ws/ws_frame.h"

#define PMD_NAME "permessage-deflate"

/* ------------------------------------------------------------------ */
/* Header value lexing (RFC 6455 section 9.1 / RFC 7230 lists)        */
/* ------------------------------------------------------------------ */

#define MAX_PARAMS 8
#define MAX_VALUE 8 /* a longer value cannot be a valid window size */

typedef struct ext_param {
    gw_str name;
    uint8_t has_value;
    uint8_t value_overflow; /* value longer than MAX_VALUE */
    uint8_t value_len;
    char value[MAX_VALUE]; /* after quoted-string unescaping */
} ext_param;

typedef struct ext_elem {
    gw_str name;
    size_t nparams;
    uint8_t too_many; /* more than MAX_PARAMS: can only be an invalid offer */
    ext_param params[MAX_PARAMS];
} ext_elem;

typedef struct lexer {
    const char *p;
    const char *end;
} lexer;

enum { ELEM_END, ELEM_OK, ELEM_EMPTY, ELEM_BAD };

static int is_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return 1;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static void skip_ows(lexer *l)
{
    while (l->p < l->end && (*l->p == ' ' || *l->p == '\t'))
        l->p++;
}

static gw_str read_token(lexer *l)
{
    const char *s = l->p;
    while (l->p < l->end && is_tchar((unsigned char)*l->p))
        l->p++;
    return gw_str_make(s, (size_t)(l->p - s));
}

/* Stores one value byte; values longer than the buffer are only flagged. */
static void value_push(ext_param *pa, char c)
{
    if (pa->value_len < MAX_VALUE)
        pa->value[pa->value_len++] = c;
    else
        pa->value_overflow = 1;
}

/* quoted-string = DQUOTE *( qdtext / quoted-pair ) DQUOTE; unescapes into pa. */
static int read_quoted(lexer *l, ext_param *pa)
{
    l->p++; /* opening quote */
    while (l->p < l->end) {
        unsigned char c = (unsigned char)*l->p++;
        if (c == '"')
            return 1;
        if (c == '\\') {
            if (l->p == l->end)
                return 0;
            c = (unsigned char)*l->p++;
        }
        if (c < 0x20 && c != '\t')
            return 0;
        if (c == 0x7f)
            return 0;
        value_push(pa, (char)c);
    }
    return 0; /* unterminated */
}

/* After a syntax error, moves to the next top-level comma (skipping quoted
 * strings) so the following elements can still be read. */
static void skip_elem(lexer *l)
{
    int quoted = 0;
    while (l->p < l->end) {
        char c = *l->p;
        if (quoted) {
            if (c == '\\' && l->p + 1 < l->end)
                l->p++;
            else if (c == '"')
                quoted = 0;
        } else if (c == '"') {
            quoted = 1;
        } else if (c == ',') {
            return;
        }
        l->p++;
    }
}

/* Reads one list element: OWS token *( OWS ";" OWS token [ OWS "=" OWS
 * ( token / quoted-string ) ] ) OWS, up to and including the next comma. */
static int next_elem(lexer *l, ext_elem *e)
{
    memset(e, 0, sizeof *e);
    skip_ows(l);
    if (l->p == l->end)
        return ELEM_END;
    if (*l->p == ',') {
        l->p++;
        return ELEM_EMPTY;
    }
    e->name = read_token(l);
    if (e->name.n == 0)
        goto bad;
    for (;;) {
        skip_ows(l);
        if (l->p == l->end)
            return ELEM_OK;
        if (*l->p == ',') {
            l->p++;
            return ELEM_OK;
        }
        if (*l->p != ';')
            goto bad;
        l->p++;
        skip_ows(l);
        ext_param tmp, *pa = e->nparams < MAX_PARAMS ? &e->params[e->nparams] : &tmp;
        memset(pa, 0, sizeof *pa);
        pa->name = read_token(l);
        if (pa->name.n == 0)
            goto bad;
        skip_ows(l);
        if (l->p < l->end && *l->p == '=') {
            l->p++;
            skip_ows(l);
            pa->has_value = 1;
            if (l->p < l->end && *l->p == '"') {
                if (!read_quoted(l, pa))
                    goto bad;
            } else {
                gw_str v = read_token(l);
                if (v.n == 0)
                    goto bad;
                for (size_t i = 0; i < v.n; i++)
                    value_push(pa, v.p[i]);
            }
        }
        if (e->nparams < MAX_PARAMS)
            e->nparams++;
        else
            e->too_many = 1;
    }
bad:
    skip_elem(l);
    if (l->p < l->end)
        l->p++;
    return ELEM_BAD;
}

/* ------------------------------------------------------------------ */
/* permessage-deflate parameters                                      */
/* ------------------------------------------------------------------ */

typedef struct pmd_req {
    int snct;  /* server_no_context_takeover present */
    int cnct;  /* client_no_context_takeover present */
    int smwb;  /* server_max_window_bits: -1 absent, else 8..15 */
    int cmwb;  /* client_max_window_bits: -1 absent, 0 without value, else 8..15 */
} pmd_req;

/* A window size: "8".."15", decimal without leading zeros (RFC 7692
 * section 7.1.2), after any quoted-string unescaping. */
static int parse_bits(const ext_param *pa)
{
    if (pa->value_overflow || pa->value_len == 0 || pa->value_len > 2 || pa->value[0] == '0')
        return -1;
    int v = 0;
    for (size_t i = 0; i < pa->value_len; i++) {
        if (pa->value[i] < '0' || pa->value[i] > '9')
            return -1;
        v = v * 10 + (pa->value[i] - '0');
    }
    return v >= 8 && v <= 15 ? v : -1;
}

/* Checks the parameters of one permessage-deflate element. A response must
 * give client_max_window_bits a value; an offer may leave it out. Returns 1
 * when every parameter is known, single and well-formed. */
static int pmd_collect(const ext_elem *e, pmd_req *r, int is_response)
{
    r->snct = r->cnct = 0;
    r->smwb = r->cmwb = -1;
    if (e->too_many)
        return 0;
    for (size_t i = 0; i < e->nparams; i++) {
        const ext_param *pa = &e->params[i];
        if (gw_str_ieq(pa->name, "server_no_context_takeover")) {
            if (r->snct || pa->has_value)
                return 0;
            r->snct = 1;
        } else if (gw_str_ieq(pa->name, "client_no_context_takeover")) {
            if (r->cnct || pa->has_value)
                return 0;
            r->cnct = 1;
        } else if (gw_str_ieq(pa->name, "server_max_window_bits")) {
            if (r->smwb != -1 || !pa->has_value)
                return 0;
            if ((r->smwb = parse_bits(pa)) < 0)
                return 0;
        } else if (gw_str_ieq(pa->name, "client_max_window_bits")) {
            if (r->cmwb != -1)
                return 0;
            if (!pa->has_value) {
                if (is_response)
                    return 0;
                r->cmwb = 0;
            } else if ((r->cmwb = parse_bits(pa)) < 0) {
                return 0;
            }
        } else {
            return 0;
        }
    }
    return 1;
}

int gw_pmd_negotiate_server(gw_str offers, int want_server_no_context_takeover, gw_pmd_params *out, char *resp,
                            size_t resp_cap)
{
    lexer l = {offers.p, offers.p + offers.n};
    ext_elem e;
    pmd_req r;
    int st;

    memset(out, 0, sizeof *out);
    out->server_max_window_bits = out->client_max_window_bits = 15;
    if (resp_cap)
        resp[0] = '\0';
    while ((st = next_elem(&l, &e)) != ELEM_END) {
        if (st != ELEM_OK || !gw_str_ieq(e.name, PMD_NAME) || !pmd_collect(&e, &r, 0))
            continue;
        /* zlib turns a raw 8-bit window into 9 bits, which would break the
         * client's promise-sized inflater: decline and try the next offer. */
        if (r.smwb == 8)
            continue;
        int snct = r.snct || want_server_no_context_takeover;
        char smwb[48] = "";
        if (r.smwb > 0)
            snprintf(smwb, sizeof smwb, "; server_max_window_bits=%d", r.smwb);
        /* client_max_window_bits is never answered: we do not need the
         * client to shrink its window, our inflater always uses 15 bits. */
        int w = snprintf(resp, resp_cap, "%s%s%s%s", PMD_NAME, snct ? "; server_no_context_takeover" : "",
                         r.cnct ? "; client_no_context_takeover" : "", smwb);
        if (w < 0 || (size_t)w >= resp_cap) {
            if (resp_cap)
                resp[0] = '\0';
            return 0;
        }
        out->enabled = 1;
        out->server_no_context_takeover = (uint8_t)snct;
        out->client_no_context_takeover = (uint8_t)r.cnct;
        out->server_max_window_bits = (uint8_t)(r.smwb > 0 ? r.smwb : 15);
        return 1;
    }
    return 0;
}

const char *gw_pmd_client_offer(void)
{
    return PMD_NAME "; client_max_window_bits";
}

int gw_pmd_client_accept(gw_str response, gw_pmd_params *out)
{
    lexer l = {response.p, response.p + response.n};
    ext_elem e;
    pmd_req r, got = {0, 0, -1, -1};
    int st, found = 0;

    memset(out, 0, sizeof *out);
    out->server_max_window_bits = out->client_max_window_bits = 15;
    while ((st = next_elem(&l, &e)) != ELEM_END) {
        if (st == ELEM_EMPTY)
            continue;
        /* We offered only permessage-deflate, once: anything else, or a
         * second acceptance, is a server error (RFC 6455 section 9.1). */
        if (st == ELEM_BAD || !gw_str_ieq(e.name, PMD_NAME) || found)
            return GW_ERR;
        if (!pmd_collect(&e, &r, 1))
            return GW_ERR;
        /* client_max_window_bits=8 would need an 8-bit raw deflate window,
         * which zlib silently widens to 9 bits; compressing with more window
         * than the server allowed could make its inflater fail, and silently
         * using no compression is not an option once accepted, so the
         * handshake fails instead. */
        if (r.cmwb == 8)
            return GW_ERR;
        got = r;
        found = 1;
    }
    if (!found)
        return 0;
    out->enabled = 1;
    out->server_no_context_takeover = (uint8_t)got.snct;
    out->client_no_context_takeover = (uint8_t)got.cnct;
    /* server_max_window_bits may be 8 here: it only bounds the server's
     * deflater, and our 15-bit inflater reads any smaller window. */
    out->server_max_window_bits = (uint8_t)(got.smwb > 0 ? got.smwb : 15);
    out->client_max_window_bits = (uint8_t)(got.cmwb > 0 ? got.cmwb : 15);
    return 1;
}

/* ------------------------------------------------------------------ */
/* Codec                                                              */
/* ------------------------------------------------------------------ */

#define CHUNK 16384
static const uint8_t sync_tail[4] = {0x00, 0x00, 0xff, 0xff};

struct gw_pmd {
    z_stream inf;
    z_stream def;
    uint8_t inf_live;  /* inflateInit2 done, inflateEnd pending */
    uint8_t def_live;
    uint8_t inf_reset; /* no_context_takeover for the peer's messages */
    uint8_t def_reset; /* no_context_takeover for ours */
    uint8_t def_bits;  /* our deflate window, 9..15 */
    size_t mem;        /* bytes zlib holds through zalloc below */
};

/* zlib allocations go through these so gw_pmd_memory() can report them. A
 * size header (padded to max_align_t) remembers what each block cost. */
typedef union mem_hdr {
    size_t n;
    max_align_t align;
} mem_hdr;

static voidpf pmd_zalloc(voidpf opaque, uInt items, uInt size)
{
    gw_pmd *d = opaque;
    size_t n = (size_t)items * size;
    mem_hdr *h = gw_try_malloc(sizeof *h + n);
    if (!h)
        return Z_NULL;
    h->n = n;
    d->mem += n;
    return h + 1;
}

static void pmd_zfree(voidpf opaque, voidpf p)
{
    gw_pmd *d = opaque;
    if (!p)
        return;
    mem_hdr *h = (mem_hdr *)p - 1;
    d->mem -= h->n;
    gw_free(h);
}

gw_pmd *gw_pmd_new(const gw_pmd_params *p, int is_server)
{
    gw_pmd *d = gw_calloc(1, sizeof *d);
    unsigned bits = is_server ? p->server_max_window_bits : p->client_max_window_bits;
    /* 8 is never negotiated (see the negotiation functions); clamp anyway so
     * a hand-built params struct cannot reach zlib's 8-bit quirk. */
    if (bits < 9)
        bits = 9;
    if (bits > 15)
        bits = 15;
    d->def_bits = (uint8_t)bits;
    d->def_reset = is_server ? p->server_no_context_takeover : p->client_no_context_takeover;
    d->inf_reset = is_server ? p->client_no_context_takeover : p->server_no_context_takeover;
    return d;
}

static void inf_end(gw_pmd *d)
{
    if (d->inf_live) {
        inflateEnd(&d->inf);
        d->inf_live = 0;
    }
}

static void def_end(gw_pmd *d)
{
    if (d->def_live) {
        deflateEnd(&d->def);
        d->def_live = 0;
    }
}

void gw_pmd_free(gw_pmd *d)
{
    if (!d)
        return;
    inf_end(d);
    def_end(d);
    gw_free(d);
}

size_t gw_pmd_memory(const gw_pmd *d)
{
    return d->mem;
}

/* max bounds out->len, like gw_buf's own max: bytes already in out count
 * (the session passes an empty buffer and its message size limit). Output
 * goes straight into out in chunks no larger than the room left; once that
 * room is full we ask zlib for one more byte into a scratch byte, and if it
 * produces one the message is too big (1009): at most max + 1 bytes are ever
 * produced, however much the input would expand. On GW_ERR out may hold a
 * partial result; the z_stream is freed because it is mid-message. */
int gw_pmd_inflate(gw_pmd *d, const uint8_t *in, size_t n, gw_buf *out, size_t max, uint16_t *close_code)
{
    /* An empty payload carries no deflate data at all; feeding only the tail
     * would leave the stream inside a half-read stored block header. */
    if (n == 0)
        return GW_OK;
    if (!d->inf_live) {
        memset(&d->inf, 0, sizeof d->inf);
        d->inf.zalloc = pmd_zalloc;
        d->inf.zfree = pmd_zfree;
        d->inf.opaque = d;
        /* Always the largest window: reading a smaller one is always fine,
         * whatever the peer's deflater used. */
        if (inflateInit2(&d->inf, -15) != Z_OK) {
            *close_code = GW_WS_CLOSE_INTERNAL;
            return GW_ERR;
        }
        d->inf_live = 1;
    }
    z_stream *z = &d->inf;
    int tail_fed = 0;
    int full = 0; /* the last call filled all the room it was given */
    int ended = 0; /* the peer closed the stream with a BFINAL block */
    uint8_t probe;

    z->next_in = (Bytef *)(uintptr_t)in;
    z->avail_in = 0;
    size_t left = n;
    for (;;) {
        if (z->avail_in == 0 && left) {
            /* avail_in is a uInt: feed huge inputs in pieces. */
            uInt take = left > 0x40000000u ? 0x40000000u : (uInt)left;
            z->avail_in = take;
            left -= take;
        }
        if (z->avail_in == 0 && !left && !full) {
            if (tail_fed)
                break; /* everything in, everything out */
            z->next_in = (Bytef *)(uintptr_t)sync_tail;
            z->avail_in = sizeof sync_tail;
            tail_fed = 1;
        }
        size_t room = out->len < max ? max - out->len : 0;
        size_t chunk = room < CHUNK ? room : CHUNK;
        int probing = chunk == 0;
        if (probing) {
            z->next_out = &probe;
            z->avail_out = 1;
        } else {
            if (gw_buf_reserve(out, chunk, max) != GW_OK)
                goto oom;
            z->next_out = gw_buf_tail(out);
            z->avail_out = (uInt)chunk;
        }
        int ret = inflate(z, Z_SYNC_FLUSH);
        size_t made = (probing ? 1 : chunk) - z->avail_out;
        if (probing && made) {
            *close_code = GW_WS_CLOSE_TOO_BIG;
            goto fail;
        }
        if (!probing)
            gw_buf_commit(out, made);
        full = z->avail_out == 0;
        if (ret == Z_STREAM_END) {
            /* The peer ended with a BFINAL block (RFC 7692 section 7.2.3.3):
             * what follows it is padding and our tail, and the window is
             * gone, so the next message starts a fresh stream. */
            if (inflateReset(z) != Z_OK)
                goto oom;
            ended = 1;
            break;
        }
        if (ret == Z_MEM_ERROR)
            goto oom;
        if (ret != Z_OK && ret != Z_BUF_ERROR) {
            *close_code = GW_WS_CLOSE_INVALID_DATA;
            goto fail;
        }
        if (ret == Z_BUF_ERROR && z->avail_in == 0 && !left && tail_fed)
            break; /* no progress possible and nothing left to give */
    }
    /* A compliant message ends right where our tail completes an empty
     * stored block, leaving zlib between blocks (data_type bit 128). Data cut
     * inside a block would otherwise silently run into the next message. */
    if (!ended && !(z->data_type & 128)) {
        *close_code = GW_WS_CLOSE_INVALID_DATA;
        goto fail;
    }
    if (d->inf_reset)
        inf_end(d);
    return GW_OK;
oom:
    *close_code = GW_WS_CLOSE_INTERNAL;
fail:
    /* The stream is mid-message and unusable; the connection is closing. */
    inf_end(d);
    return GW_ERR;
}

/* max bounds out->len as in gw_pmd_inflate. On GW_ERR out is left as it was
 * and the deflate stream is dropped: none of the failed message was emitted,
 * and a fresh stream never refers back to earlier messages, so the peer can
 * still read what we send next whatever its window holds. */
int gw_pmd_deflate(gw_pmd *d, const uint8_t *in, size_t n, gw_buf *out, size_t max)
{
    /* Every message ends on a byte boundary after a sync flush, so an empty
     * message is the single byte 00 (RFC 7692 section 7.2.3.6) whatever the
     * stream state; zlib itself would emit nothing for an empty input right
     * after a flush, as it skips repeated flushes. */
    if (n == 0)
        return gw_buf_append(out, "", 1, max);
    if (!d->def_live) {
        memset(&d->def, 0, sizeof d->def);
        d->def.zalloc = pmd_zalloc;
        d->def.zfree = pmd_zfree;
        d->def.opaque = d;
        if (deflateInit2(&d->def, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -(int)d->def_bits, 8, Z_DEFAULT_STRATEGY) !=
            Z_OK)
            return GW_ERR;
        d->def_live = 1;
    }
    z_stream *z = &d->def;
    size_t start = out->len;
    /* The sync flush ends with 00 00 ff ff that we strip, so the buffer may
     * briefly hold 4 bytes past max, plus one spare byte: zlib is only known
     * to be finished when a call leaves output room unused, and a call that
     * exactly fills the room cannot be told apart from one with more to say. */
    size_t lim = max > SIZE_MAX - 5 ? SIZE_MAX : max + 5;

    z->next_in = (Bytef *)(uintptr_t)in;
    z->avail_in = 0;
    size_t left = n;
    for (;;) {
        if (z->avail_in == 0 && left) {
            uInt take = left > 0x40000000u ? 0x40000000u : (uInt)left;
            z->avail_in = take;
            left -= take;
        }
        size_t want = deflateBound(z, z->avail_in) + 16;
        size_t chunk = want < CHUNK ? want : CHUNK;
        if (chunk > lim - out->len)
            chunk = lim - out->len; /* out->len <= lim always holds here */
        if (chunk == 0)
            goto fail;
        if (gw_buf_reserve(out, chunk, lim) != GW_OK)
            goto fail;
        z->next_out = gw_buf_tail(out);
        z->avail_out = (uInt)chunk;
        int flush = left ? Z_NO_FLUSH : Z_SYNC_FLUSH;
        int ret = deflate(z, flush);
        gw_buf_commit(out, chunk - z->avail_out);
        if (ret != Z_OK && ret != Z_BUF_ERROR)
            goto fail;
        /* With the sync flush requested, room left over means zlib has
         * nothing more to give. */
        if (!left && z->avail_in == 0 && z->avail_out != 0)
            break;
    }
    if (out->len - start < 4 || memcmp(gw_buf_tail(out) - 4, sync_tail, 4) != 0)
        goto fail;
    out->len -= 4;
    if (out->len > max)
        goto fail;
    if (d->def_reset)
        def_end(d);
    return GW_OK;
fail:
    out->len = (uint32_t)start;
    def_end(d);
    return GW_ERR;
}

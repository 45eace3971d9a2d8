/* h1_parse.c: strict HTTP/1.1 head parser, header helpers, request framing
 * checks and the chunked body decoder (see h1_parse.h for the contracts).
 *
 * Every scan is a plain loop over one 256-entry class table; no strlen on
 * input, no allocation. The head parsers keep no state: each call rescans
 * from the start, which bounds the work per call by max_head. */
#include "http/h1_parse.h"

#include <openssl/crypto.h>
#include <string.h>

#include "core/alloc.h"
#include "core/common.h"

/* ------------------------------------------------------------------------ */
/* Character classes                                                         */

#define C_TOKEN 0x01  /* tchar (RFC 9110 section 5.6.2) */
#define C_VALUE 0x02  /* field-value byte: HTAB, SP, VCHAR, obs-text */
#define C_TARGET 0x04 /* request-target byte: VCHAR only (no SP, CTL, non-ASCII) */
#define C_HEX 0x08    /* HEXDIG */
#define C_HOST 0x10   /* reg-name byte: unreserved, sub-delims, '%' */
#define C_QDTEXT 0x20 /* qdtext of a quoted-string */

static const uint8_t cls[256] = {
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x22, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x22, 0x37, 0x06, 0x27, 0x37, 0x37, 0x37, 0x37, 0x36, 0x36, 0x37, 0x37, 0x36, 0x37, 0x37, 0x26,
    0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x26, 0x36, 0x26, 0x36, 0x26, 0x26,
    0x26, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37,
    0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x26, 0x06, 0x26, 0x27, 0x37,
    0x27, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37,
    0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x26, 0x27, 0x26, 0x37, 0x00,
    0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
    0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
    0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
    0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
    0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
    0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
    0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
    0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22,
};

#define IS(c, k) (cls[(uint8_t)(c)] & (k))

/* Internal outcomes of the head scanners besides a byte count. */
#define P_BAD (-1)  /* malformed */
#define P_MORE (-2) /* ran out of bytes at the scan window's end */
#define P_MANY (-3) /* more header lines than allowed */

/* ------------------------------------------------------------------------ */
/* Head parsing                                                              */

/* Parses header lines and the final empty line from p up to end. Returns
 * the position just after the final CRLF, or NULL with *err set. The count
 * check runs on the first byte of a new line, so an excess header is caught
 * before its line is complete. */
static const char *parse_headers(const char *p, const char *end, gw_http_header *headers, size_t max_headers,
                                 size_t *num, int *err)
{
    size_t n = 0;

    for (;;) {
        if (p == end)
            goto more;
        if (*p == '\r') {
            if (++p == end)
                goto more;
            if (*p != '\n')
                goto bad;
            *num = n;
            return p + 1;
        }
        if (n == max_headers) {
            *err = P_MANY;
            return NULL;
        }
        /* A line starting with SP/HTAB (obs-fold), a lone LF, an empty name and
         * whitespace before the colon all fail here: none is a tchar or ':'. */
        const char *name = p;
        while (p < end && IS(*p, C_TOKEN))
            p++;
        if (p == end)
            goto more;
        if (*p != ':' || p == name)
            goto bad;
        size_t name_n = (size_t)(p - name);
        p++;
        while (p < end && (*p == ' ' || *p == '\t'))
            p++;
        const char *v = p;
        while (p < end && IS(*p, C_VALUE))
            p++;
        if (p == end)
            goto more;
        if (*p != '\r') /* CTL, DEL or a lone LF inside the value */
            goto bad;
        const char *ve = p;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        if (++p == end)
            goto more;
        if (*p != '\n')
            goto bad;
        p++;
        headers[n].name = gw_str_make(name, name_n);
        headers[n].value = gw_str_make(v, (size_t)(ve - v));
        n++;
    }
more:
    *err = P_MORE;
    return NULL;
bad:
    *err = P_BAD;
    return NULL;
}

/* Matches "HTTP/" DIGIT "." DIGIT CR from p, stopping at end. Returns the
 * position of the CR's successor, or NULL with *err. Syntax only: which
 * versions are supported is the caller's decision. */
static const char *parse_version(const char *p, const char *end, int *major, int *minor, int *err)
{
    static const char pat[] = "HTTP/#.#";
    for (size_t i = 0; i < sizeof pat - 1; i++, p++) {
        if (p == end) {
            *err = P_MORE;
            return NULL;
        }
        if (pat[i] == '#' ? (*p < '0' || *p > '9') : *p != pat[i]) {
            *err = P_BAD;
            return NULL;
        }
    }
    *major = p[-3] - '0';
    *minor = p[-1] - '0';
    return p;
}

/* The window over which a start line is scanned: its bytes at offsets
 * 0..max_line (the CR of a line of exactly max_line bytes sits at offset
 * max_line). Running out of the window when it was cut short by the limit
 * means the line is too long; otherwise more bytes may still come. */
static const char *line_window(const char *start, const char *end, size_t max_line, int *limited)
{
    size_t room = (size_t)(end - start);
    *limited = room > max_line;
    return *limited ? start + max_line + 1 : end;
}

/* "%" HEXDIG HEXDIG of the byte c (case-insensitive) at p. */
static int is_pct(const char *p, size_t left, char hi, char lo)
{
    return left >= 3 && p[0] == '%' && p[1] == hi && (p[2] | 0x20) == lo;
}

/* A target every upstream stack reads as the gateway routes it (see
 * h1_parse.h): no fragment anywhere (RFC 9112 section 3.2 has none), and in
 * the path no backslash (raw or %5C), no encoded '/' (%2F), and no segment
 * that is "." or ".." followed by ';' (Tomcat-style path parameters:
 * "..;x" is ".." there, a name here). The query is not looked at. */
static int target_safe(gw_str target, gw_str path)
{
    if (memchr(target.p, '#', target.n))
        return 0;
    for (size_t i = 0; i < path.n; i++) {
        const char *q = path.p + i;
        size_t left = path.n - i;
        if (*q == '\\' || is_pct(q, left, '2', 'f') || is_pct(q, left, '5', 'c'))
            return 0;
        if (i != 0 && q[-1] != '/')
            continue;
        /* A segment starts here: up to two dots, raw or %2E, then ';'? */
        size_t j = 0, dots = 0;
        while (dots < 3 && j < left) {
            if (q[j] == '.')
                j++;
            else if (is_pct(q + j, left - j, '2', 'e'))
                j += 3;
            else
                break;
            dots++;
        }
        if ((dots == 1 || dots == 2) && j < left && (q[j] == ';' || is_pct(q + j, left - j, '3', 'b')))
            return 0;
    }
    return 1;
}

int gw_h1_parse_request(const char *buf, size_t len, gw_http_req *req, gw_http_header *headers,
                        const gw_h1_limits *lim, int *status)
{
    /* Only the first max_head bytes are looked at: running out of them means
     * the head is too large (431), however the rest of it looks. */
    int truncated = len > lim->max_head;
    const char *p = buf, *end = buf + (truncated ? lim->max_head : len);
    int err = P_MORE, limited, major, minor;

    /* RFC 9112 section 2.2: ignore empty lines before the request line. */
    while (p < end && *p == '\r') {
        if (end - p < 2)
            goto more;
        if (p[1] != '\n')
            goto bad;
        p += 2;
    }

    const char *rl_end = line_window(p, end, lim->max_request_line, &limited);
    const char *m = p;
    while (p < rl_end && IS(*p, C_TOKEN))
        p++;
    if (p == rl_end)
        goto rl_more;
    if (*p != ' ' || p == m)
        goto bad;
    req->method = gw_str_make(m, (size_t)(p - m));
    const char *t = ++p;
    while (p < rl_end && IS(*p, C_TARGET))
        p++;
    if (p == rl_end)
        goto rl_more;
    if (*p != ' ' || p == t)
        goto bad;
    req->target = gw_str_make(t, (size_t)(p - t));
    p = parse_version(p + 1, rl_end, &major, &minor, &err);
    if (!p)
        goto rl_err;
    if (p == rl_end)
        goto rl_more;
    if (*p != '\r')
        goto bad;
    if (++p == end)
        goto more;
    if (*p != '\n')
        goto bad;
    p++;
    if (major != 1 || minor > 1) {
        *status = 505;
        return GW_ERR;
    }
    req->minor_version = minor;

    const char *q = memchr(req->target.p, '?', req->target.n);
    if (q) {
        req->path = gw_str_make(req->target.p, (size_t)(q - req->target.p));
        req->query = gw_str_make(q + 1, req->target.n - req->path.n - 1);
    } else {
        req->path = req->target;
        req->query = gw_str_make(req->target.p + req->target.n, 0);
    }
    req->authority = gw_str_make(NULL, 0);
    if (!target_safe(req->target, req->path))
        goto bad;

    size_t n = 0;
    p = parse_headers(p, end, headers, lim->max_headers, &n, &err);
    if (!p) {
        if (err == P_MANY) {
            *status = 431;
            return GW_ERR;
        }
        if (err == P_MORE)
            goto more;
        goto bad;
    }
    req->headers = headers;
    req->num_headers = n;
    return (int)(p - buf);

rl_err:
    if (err == P_BAD)
        goto bad;
rl_more:
    if (limited) {
        *status = 414;
        return GW_ERR;
    }
more:
    if (truncated) {
        *status = 431;
        return GW_ERR;
    }
    return GW_AGAIN;
bad:
    *status = 400;
    return GW_ERR;
}

int gw_h1_parse_response(const char *buf, size_t len, gw_http_resp *resp, gw_http_header *headers,
                         const gw_h1_limits *lim, int *status)
{
    int truncated = len > lim->max_head;
    const char *p = buf, *end = buf + (truncated ? lim->max_head : len);
    int err = P_MORE, limited, major, minor;
    const char *sl_end = line_window(p, end, lim->max_request_line, &limited);

    p = parse_version(p, sl_end, &major, &minor, &err);
    if (!p)
        goto sl_err;
    /* SP 3DIGIT, then SP reason or directly CRLF (an empty reason without its
     * SP is common enough from upstreams to tolerate). */
    for (int i = 0; i < 4; i++, p++) {
        if (p == sl_end)
            goto sl_more;
        if (i == 0 ? *p != ' ' : (*p < '0' || *p > '9' || (i == 1 && *p == '0')))
            goto bad;
    }
    if (major != 1 || minor > 1)
        goto bad;
    resp->minor_version = minor;
    resp->status = (p[-3] - '0') * 100 + (p[-2] - '0') * 10 + (p[-1] - '0');
    if (p == sl_end)
        goto sl_more;
    const char *r = p;
    if (*p == ' ') {
        r = ++p;
        while (p < sl_end && IS(*p, C_VALUE))
            p++;
        if (p == sl_end)
            goto sl_more;
    }
    if (*p != '\r')
        goto bad;
    resp->reason = gw_str_make(r, (size_t)(p - r));
    if (++p == end)
        goto more;
    if (*p != '\n')
        goto bad;
    p++;

    size_t n = 0;
    p = parse_headers(p, end, headers, lim->max_headers, &n, &err);
    if (!p) {
        if (err == P_MORE)
            goto more;
        goto bad; /* malformed or too many headers: both just "bad upstream" */
    }
    resp->headers = headers;
    resp->num_headers = n;
    return (int)(p - buf);

sl_err:
    if (err == P_BAD)
        goto bad;
sl_more:
    if (limited)
        goto bad;
more:
    if (truncated)
        goto bad;
    return GW_AGAIN;
bad:
    *status = 502;
    return GW_ERR;
}

/* ------------------------------------------------------------------------ */
/* Header lookup                                                             */

static int name_is(gw_str name, const char *want, size_t want_n)
{
    return name.n == want_n && strncasecmp(name.p, want, want_n) == 0;
}

const gw_http_header *gw_h1_find_header(const gw_http_header *h, size_t n, const char *name)
{
    size_t nn = strlen(name);
    for (size_t i = 0; i < n; i++)
        if (name_is(h[i].name, name, nn))
            return &h[i];
    return NULL;
}

size_t gw_h1_count_header(const gw_http_header *h, size_t n, const char *name)
{
    size_t nn = strlen(name), count = 0;
    for (size_t i = 0; i < n; i++)
        count += (size_t)name_is(h[i].name, name, nn);
    return count;
}

/* Splits a comma-separated list: returns the next element (OWS-trimmed,
 * possibly empty) and advances *rest past it and its comma; *rest->p == NULL
 * after the last element. */
static gw_str next_elem(gw_str *rest)
{
    const char *c = memchr(rest->p, ',', rest->n);
    gw_str e;
    if (c) {
        e = gw_str_make(rest->p, (size_t)(c - rest->p));
        rest->n -= e.n + 1;
        rest->p = c + 1;
    } else {
        e = *rest;
        rest->p = NULL;
        rest->n = 0;
    }
    return gw_str_trim(e);
}

int gw_h1_header_has_token(const gw_http_header *h, size_t n, const char *name, const char *token)
{
    size_t nn = strlen(name), tn = strlen(token);
    for (size_t i = 0; i < n; i++) {
        if (!name_is(h[i].name, name, nn))
            continue;
        gw_str rest = h[i].value;
        while (rest.p) {
            gw_str e = next_elem(&rest);
            if (e.n == tn && strncasecmp(e.p, token, tn) == 0)
                return 1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Request framing (RFC 9112 section 6.3)                                    */

/* Host = uri-host [ ":" port ]; uri-host is an IP-literal in brackets or a
 * reg-name (which covers IPv4). Empty values are refused: every route needs
 * an authority. */
static int host_valid(gw_str v)
{
    size_t i = 0;
    if (v.n == 0)
        return 0;
    if (v.p[0] == '[') {
        for (i = 1; i < v.n && v.p[i] != ']'; i++)
            if (!(IS(v.p[i], C_HEX) || v.p[i] == ':' || v.p[i] == '.'))
                return 0;
        if (i == v.n || i == 1)
            return 0;
        i++;
    } else {
        while (i < v.n && IS(v.p[i], C_HOST))
            i++;
        if (i == 0)
            return 0;
    }
    if (i == v.n)
        return 1;
    if (v.p[i] != ':')
        return 0;
    /* port = *DIGIT (RFC 3986), and a TCP port is at most 65535. */
    uint32_t port = 0;
    for (i++; i < v.n; i++) {
        if (v.p[i] < '0' || v.p[i] > '9')
            return 0;
        port = port * 10 + (uint32_t)(v.p[i] - '0');
        if (port > 65535)
            return 0;
    }
    return 1;
}

int gw_h1_origin_form(gw_http_req *req)
{
    gw_str t = req->path; /* the target without its query */
    size_t skip;
    if (t.n >= 7 && strncasecmp(t.p, "http://", 7) == 0)
        skip = 7;
    else if (t.n >= 8 && strncasecmp(t.p, "https://", 8) == 0)
        skip = 8;
    else
        return GW_OK;
    const char *a = t.p + skip, *end = t.p + t.n;
    const char *slash = memchr(a, '/', (size_t)(end - a));
    gw_str auth = gw_str_make(a, (size_t)((slash ? slash : end) - a));
    if (!host_valid(auth))
        return GW_ERR;
    req->authority = auth;
    req->path = slash ? gw_str_make(slash, (size_t)(end - slash)) : GW_STRLIT("/");
    return GW_OK;
}

static int is_pct_dot(const char *p, size_t left)
{
    return left >= 3 && p[0] == '%' && p[1] == '2' && (p[2] == 'e' || p[2] == 'E');
}

int gw_h1_path_needs_normalizing(gw_str path)
{
    if (!path.n || path.p[0] != '/')
        return 0;
    for (size_t i = 0; i < path.n; i++) {
        if (is_pct_dot(path.p + i, path.n - i))
            return 1;
        if (path.p[i] != '/')
            continue;
        /* a segment "." or ".." after this slash */
        size_t s = i + 1, e = s;
        while (e < path.n && path.p[e] != '/')
            e++;
        if ((e - s == 1 && path.p[s] == '.') || (e - s == 2 && path.p[s] == '.' && path.p[s + 1] == '.'))
            return 1;
    }
    return 0;
}

size_t gw_h1_normalize_path(gw_str path, char *out)
{
    /* Percent-encoded dots first, so "%2e%2E" is the dot segment it means. */
    int absolute = path.n && path.p[0] == '/';
    size_t n = 0;
    for (size_t i = 0; i < path.n; i++) {
        if (absolute && is_pct_dot(path.p + i, path.n - i)) {
            out[n++] = '.';
            i += 2;
        } else {
            out[n++] = path.p[i];
        }
    }
    if (!absolute) {
        out[n] = '\0';
        return n;
    }
    /* RFC 3986 section 5.2.4, over segments, in place (the output never
     * overtakes the input): each "/seg" is copied, "/." dropped, "/.."
     * drops the last copied segment; a final "." or ".." leaves a '/'. */
    size_t o = 0, i = 0;
    while (i < n) {
        size_t s = i + 1, e = s;
        while (e < n && out[e] != '/')
            e++;
        size_t len = e - s;
        int dot = len == 1 && out[s] == '.', dotdot = len == 2 && out[s] == '.' && out[s + 1] == '.';
        if (dotdot) {
            while (o > 0 && out[o - 1] != '/')
                o--;
            if (o > 0)
                o--;
        }
        if (dot || dotdot) {
            if (e == n)
                out[o++] = '/';
        } else {
            memmove(out + o, out + i, e - i);
            o += e - i;
        }
        i = e;
    }
    if (o == 0)
        out[o++] = '/';
    out[o] = '\0';
    return o;
}

/* 1*DIGIT into *out; 0 on anything else (sign, hex, spaces) or overflow. */
static int parse_decimal(gw_str s, uint64_t *out)
{
    uint64_t v = 0;
    if (s.n == 0)
        return 0;
    for (size_t i = 0; i < s.n; i++) {
        unsigned d = (unsigned)(uint8_t)s.p[i] - '0';
        if (d > 9 || v > (UINT64_MAX - d) / 10)
            return 0;
        v = v * 10 + d;
    }
    *out = v;
    return 1;
}

/* transfer-coding = token *( OWS ";" OWS token "=" ( token / quoted-string ) ).
 * Returns the coding name in *name, or 0 when malformed. *has_params tells
 * whether parameters followed. */
static int parse_coding(gw_str e, gw_str *name, int *has_params)
{
    size_t i = 0;
    while (i < e.n && IS(e.p[i], C_TOKEN))
        i++;
    if (i == 0)
        return 0;
    *name = gw_str_make(e.p, i);
    *has_params = 0;
    while (i < e.n) {
        while (i < e.n && (e.p[i] == ' ' || e.p[i] == '\t'))
            i++;
        if (i == e.n || e.p[i] != ';')
            return 0;
        i++;
        *has_params = 1;
        while (i < e.n && (e.p[i] == ' ' || e.p[i] == '\t'))
            i++;
        size_t s = i;
        while (i < e.n && IS(e.p[i], C_TOKEN))
            i++;
        if (i == s || i == e.n || e.p[i] != '=')
            return 0;
        i++;
        if (i < e.n && e.p[i] == '"') {
            for (i++; i < e.n && e.p[i] != '"'; i++) {
                if (e.p[i] == '\\') {
                    if (++i == e.n || !IS(e.p[i], C_VALUE))
                        return 0;
                } else if (!IS(e.p[i], C_QDTEXT)) {
                    return 0;
                }
            }
            if (i == e.n)
                return 0;
            i++;
        } else {
            s = i;
            while (i < e.n && IS(e.p[i], C_TOKEN))
                i++;
            if (i == s)
                return 0;
        }
    }
    return 1;
}

int gw_h1_request_body(const gw_http_req *req, gw_h1_body *body, int *status, const char **why)
{
    const gw_http_header *h = req->headers;
    size_t n = req->num_headers;
    size_t hosts = 0, cls_n = 0, tes = 0;
    const gw_http_header *host = NULL;

    body->chunked = 0;
    body->content_length = 0;
    *status = 400;

    for (size_t i = 0; i < n; i++) {
        if (name_is(h[i].name, "Host", 4)) {
            hosts++;
            host = &h[i];
        } else if (name_is(h[i].name, "Content-Length", 14)) {
            cls_n++;
        } else if (name_is(h[i].name, "Transfer-Encoding", 17)) {
            tes++;
        }
    }
    if (hosts > 1) {
        *why = "duplicate_host";
        return GW_ERR;
    }
    if (hosts == 0 && req->minor_version >= 1) {
        *why = "missing_host";
        return GW_ERR;
    }
    if (host && !host_valid(host->value)) {
        *why = "bad_host";
        return GW_ERR;
    }
    if (tes && req->minor_version == 0) {
        /* An HTTP/1.0 hop cannot have produced chunked framing: a proxy
         * between us and the client may have framed this by Content-Length. */
        *why = "bad_transfer_encoding";
        return GW_ERR;
    }
    if (tes && cls_n) {
        *why = "conflicting_framing";
        return GW_ERR;
    }

    if (tes) {
        /* Walk every coding on every line, in order: chunked must be the last
         * and the only one, without parameters. Syntax errors beat unknown
         * codings, so the whole list is checked before deciding 501. */
        size_t codings = 0, chunked_at = 0, chunked_n = 0;
        int unknown = 0;
        for (size_t i = 0; i < n; i++) {
            if (!name_is(h[i].name, "Transfer-Encoding", 17))
                continue;
            gw_str rest = h[i].value;
            while (rest.p) {
                gw_str e = next_elem(&rest), name;
                int params;
                if (!parse_coding(e, &name, &params))
                    goto bad_te;
                codings++;
                if (name_is(name, "chunked", 7)) {
                    if (params)
                        goto bad_te;
                    chunked_n++;
                    chunked_at = codings;
                } else {
                    unknown = 1;
                }
            }
        }
        if (chunked_n > 1 || (chunked_n == 1 && chunked_at != codings))
            goto bad_te;
        if (unknown) {
            *status = 501;
            *why = "unsupported_transfer_coding";
            return GW_ERR;
        }
        body->chunked = 1;
        return GW_OK;
    bad_te:
        *why = "bad_transfer_encoding";
        return GW_ERR;
    }

    if (cls_n) {
        /* Every element of every line must be the same plain decimal. */
        int seen = 0;
        uint64_t v = 0;
        for (size_t i = 0; i < n; i++) {
            if (!name_is(h[i].name, "Content-Length", 14))
                continue;
            gw_str rest = h[i].value;
            while (rest.p) {
                uint64_t x;
                if (!parse_decimal(next_elem(&rest), &x) || (seen && x != v)) {
                    *why = "bad_content_length";
                    return GW_ERR;
                }
                v = x;
                seen = 1;
            }
        }
        body->content_length = v;
    }
    return GW_OK;
}

/* ------------------------------------------------------------------------ */
/* Chunked decoder                                                           */

#define MAX_CHUNK_LINE 4096
/* Trailers produce no output, so nothing else would bound them: cap the whole
 * trailer section. */
#define MAX_TRAILERS 65536

enum {
    CK_SIZE0,     /* first hex digit of a size line */
    CK_SIZE,      /* more hex digits, ';', or CR */
    CK_EXT_END,   /* after an extension element: BWS ';' or CR */
    CK_EXT_WS,    /* BWS seen after an element: more BWS or ';' */
    CK_EXT_NAME0, /* after ';': BWS, then an ext-name */
    CK_EXT_NAME,  /* in ext-name: tchar, BWS, '=', ';' or CR */
    CK_EXT_NWS,   /* BWS after ext-name: BWS, '=' or ';' */
    CK_EXT_VAL0,  /* after '=': BWS, then a token or a quoted-string */
    CK_EXT_TOKEN, /* in a token ext-val */
    CK_EXT_QUOTE, /* in a quoted ext-val */
    CK_EXT_QESC,  /* after a backslash in a quoted ext-val */
    CK_SIZE_LF,   /* CR of the size line seen */
    CK_DATA,      /* copying chunk data */
    CK_DATA_CR,   /* CRLF after chunk data */
    CK_DATA_LF,
    CK_TR_START, /* start of a trailer line or of the final CRLF */
    CK_TR_NAME,
    CK_TR_VALUE,
    CK_TR_LF,
    CK_FINAL_LF,
    CK_DONE,
    CK_ERR,
};

int gw_h1_chunked_decode(gw_h1_chunked *c, uint8_t *buf, size_t *len, size_t *consumed)
{
    size_t in = 0, out = 0, n = *len;
    int st = c->state;

    if (st == CK_DONE) {
        *len = 0;
        *consumed = 0;
        return GW_DONE;
    }
    if (st == CK_ERR)
        goto err;

    while (in < n) {
        if (st == CK_DATA) {
            size_t take = (size_t)GW_MIN((uint64_t)(n - in), c->remaining);
            if (out != in)
                memmove(buf + out, buf + in, take);
            out += take;
            in += take;
            c->remaining -= take;
            if (c->remaining == 0)
                st = CK_DATA_CR;
            continue;
        }

        uint8_t ch = buf[in++];
        if (st <= CK_EXT_QESC) {
            /* All size-line states share the line bound; the CR is not counted. */
            if (ch != '\r' && ++c->line_len > MAX_CHUNK_LINE)
                goto err;
        } else if (st >= CK_TR_START && st <= CK_TR_LF) {
            if (st != CK_TR_LF && ch != '\r' && ++c->line_len > MAX_CHUNK_LINE)
                goto err;
            /* remaining is free while in trailers: it counts their bytes. */
            if (++c->remaining > MAX_TRAILERS)
                goto err;
        }

        switch (st) {
        case CK_SIZE0:
        case CK_SIZE:
            if (IS(ch, C_HEX)) {
                unsigned d = ch <= '9' ? ch - '0' : (ch | 0x20) - 'a' + 10;
                if (c->remaining > (UINT64_MAX >> 4))
                    goto err;
                c->remaining = (c->remaining << 4) | d;
                st = CK_SIZE;
                break;
            }
            if (st == CK_SIZE0)
                goto err;
            goto ext_end;
        case CK_EXT_END:
        ext_end:
            if (ch == ';')
                st = CK_EXT_NAME0;
            else if (ch == ' ' || ch == '\t')
                st = CK_EXT_WS;
            else if (ch == '\r')
                st = CK_SIZE_LF;
            else
                goto err;
            break;
        case CK_EXT_WS:
            if (ch == ';')
                st = CK_EXT_NAME0;
            else if (ch != ' ' && ch != '\t')
                goto err;
            break;
        case CK_EXT_NAME0:
            if (IS(ch, C_TOKEN))
                st = CK_EXT_NAME;
            else if (ch != ' ' && ch != '\t')
                goto err;
            break;
        case CK_EXT_NAME:
            if (IS(ch, C_TOKEN))
                break;
            if (ch == ' ' || ch == '\t')
                st = CK_EXT_NWS;
            else if (ch == '=')
                st = CK_EXT_VAL0;
            else
                goto ext_end;
            break;
        case CK_EXT_NWS:
            if (ch == '=')
                st = CK_EXT_VAL0;
            else if (ch == ';')
                st = CK_EXT_NAME0;
            else if (ch != ' ' && ch != '\t')
                goto err;
            break;
        case CK_EXT_VAL0:
            if (IS(ch, C_TOKEN))
                st = CK_EXT_TOKEN;
            else if (ch == '"')
                st = CK_EXT_QUOTE;
            else if (ch != ' ' && ch != '\t')
                goto err;
            break;
        case CK_EXT_TOKEN:
            if (IS(ch, C_TOKEN))
                break;
            goto ext_end;
        case CK_EXT_QUOTE:
            if (ch == '"')
                st = CK_EXT_END;
            else if (ch == '\\')
                st = CK_EXT_QESC;
            else if (!IS(ch, C_QDTEXT))
                goto err;
            break;
        case CK_EXT_QESC:
            if (!IS(ch, C_VALUE))
                goto err;
            st = CK_EXT_QUOTE;
            break;
        case CK_SIZE_LF:
            if (ch != '\n')
                goto err;
            c->line_len = 0;
            if (c->remaining == 0) {
                st = CK_TR_START; /* remaining now counts trailer bytes */
            } else {
                st = CK_DATA;
            }
            break;
        case CK_DATA_CR:
            if (ch != '\r')
                goto err;
            st = CK_DATA_LF;
            break;
        case CK_DATA_LF:
            if (ch != '\n')
                goto err;
            st = CK_SIZE0;
            break;
        case CK_TR_START:
            if (ch == '\r') {
                st = CK_FINAL_LF;
            } else if (IS(ch, C_TOKEN)) {
                st = CK_TR_NAME;
            } else {
                goto err; /* lone LF, obs-fold, empty name */
            }
            break;
        case CK_TR_NAME:
            if (ch == ':')
                st = CK_TR_VALUE;
            else if (!IS(ch, C_TOKEN))
                goto err;
            break;
        case CK_TR_VALUE:
            if (ch == '\r')
                st = CK_TR_LF;
            else if (!IS(ch, C_VALUE))
                goto err;
            break;
        case CK_TR_LF:
            if (ch != '\n')
                goto err;
            c->line_len = 0;
            st = CK_TR_START;
            break;
        case CK_FINAL_LF:
            if (ch != '\n')
                goto err;
            /* The body ends here: whatever follows belongs to the next
             * message and stays exactly where it was, at buf + in. */
            c->state = CK_DONE;
            *len = out;
            *consumed = in;
            return GW_DONE;
        default:
            goto err;
        }
    }
    c->state = st;
    *len = out;
    *consumed = n;
    return GW_AGAIN;
err:
    c->state = CK_ERR;
    *len = out;
    *consumed = in;
    return GW_ERR;
}

/* ============================== request copy ================================ */

static gw_str clone_str(gw_str v, char **at)
{
    if (!v.p)
        return v;
    memcpy(*at, v.p, v.n);
    gw_str out = gw_str_make(*at, v.n);
    *at += v.n;
    return out;
}

/* Bytes of a copy of req (gw_h1_req_clone). */
static size_t clone_size(const gw_http_req *req)
{
    size_t n = req->method.n + req->target.n + req->path.n + req->query.n + req->authority.n;
    for (size_t i = 0; i < req->num_headers; i++)
        n += req->headers[i].name.n + req->headers[i].value.n;
    return sizeof *req + req->num_headers * sizeof(gw_http_header) + n + 1;
}

gw_http_req *gw_h1_req_clone(const gw_http_req *req)
{
    size_t hsize = req->num_headers * sizeof(gw_http_header);
    gw_http_req *out = gw_malloc(clone_size(req));
    gw_http_header *hdrs = (gw_http_header *)(out + 1);
    char *at = (char *)hdrs + hsize;
    *out = *req;
    out->headers = hdrs;
    out->method = clone_str(req->method, &at);
    out->target = clone_str(req->target, &at);
    out->path = clone_str(req->path, &at);
    out->query = clone_str(req->query, &at);
    out->authority = clone_str(req->authority, &at);
    for (size_t i = 0; i < req->num_headers; i++) {
        hdrs[i].name = clone_str(req->headers[i].name, &at);
        hdrs[i].value = clone_str(req->headers[i].value, &at);
    }
    return out;
}

void gw_h1_req_clone_free(gw_http_req *copy)
{
    if (!copy)
        return;
    OPENSSL_cleanse(copy, clone_size(copy));
    gw_free(copy);
}

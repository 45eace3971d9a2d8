/* learn.c: route learning from the control plane's JSON answers (parsed
 * with jansson; this file only walks the tree and checks the values). */
#include "browser/learn.h"

#include <ctype.h>
#include <jansson.h>
#include <string.h>
#include <strings.h>

#include "browser/route_cache.h"
#include "core/common.h"

static int unreserved(unsigned char ch)
{
    return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') || ch == '-' || ch == '.' ||
           ch == '_' || ch == '~';
}

int gw_blearn_id_ok(const char *id, size_t n)
{
    if (!n || n > GW_BROUTE_ID_MAX)
        return 0;
    if ((n == 1 && id[0] == '.') || (n == 2 && id[0] == '.' && id[1] == '.'))
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!unreserved((unsigned char)id[i]))
            return 0;
    return 1;
}

/* The length of url's scheme including "://" when it is one we route to. */
static size_t scheme_len(const char *url)
{
    static const char *const ok[] = {"http://", "https://", "ws://", "wss://"};
    for (size_t i = 0; i < GW_ARRAY_LEN(ok); i++)
        if (strncasecmp(url, ok[i], strlen(ok[i])) == 0)
            return strlen(ok[i]);
    return 0;
}

int gw_blearn_base_url_ok(const char *url)
{
    size_t n = strlen(url), s = scheme_len(url);
    if (!s || n > GW_BROUTE_URL_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)url[i];
        if (ch <= 0x20 || ch == 0x7f || ch == '?' || ch == '#' || ch == '\\')
            return 0;
    }
    size_t alen = strcspn(url + s, "/");
    return alen > 0 && !memchr(url + s, '@', alen);
}

int gw_blearn_query_param(const char *q, size_t n, const char *name, const char **v, size_t *vn)
{
    size_t nl = strlen(name), i = 0;
    while (i < n) {
        size_t e = i;
        while (e < n && q[e] != '&')
            e++;
        if (e - i >= nl && memcmp(q + i, name, nl) == 0 && (e - i == nl || q[i + nl] == '=')) {
            *v = e - i == nl ? q + e : q + i + nl + 1;
            *vn = e - i == nl ? 0 : e - i - nl - 1;
            return 1;
        }
        i = e + 1;
    }
    return 0;
}

/* jwt from a JSON string, percent-encoded for a query. 0 when too long or
 * empty. */
static int encode_jwt(const char *jwt, char *out, size_t cap)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    if (!jwt[0])
        return 0;
    for (const unsigned char *p = (const unsigned char *)jwt; *p; p++) {
        if (o + 4 > cap)
            return 0;
        if (unreserved(*p) || *p == '=') {
            out[o++] = (char)*p;
        } else {
            out[o++] = '%';
            out[o++] = hex[*p >> 4];
            out[o++] = hex[*p & 15];
        }
    }
    out[o] = '\0';
    return 1;
}

/* A jwt taken from a URL's query as written: it must already be safe to
 * paste into one (unreserved, '=' or a %XX escape). */
static int query_jwt_ok(const char *v, size_t n)
{
    if (!n || n > GW_BROUTE_JWT_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)v[i];
        if (ch == '%') {
            if (i + 2 >= n || !isxdigit((unsigned char)v[i + 1]) || !isxdigit((unsigned char)v[i + 2]))
                return 0;
            i += 2;
            continue;
        }
        if (!unreserved(ch) && ch != '=')
            return 0;
    }
    return 1;
}

/* The base URL a cdp_ws_url stands for: scheme as http(s), authority, path
 * without its last segment (".../cdp" is the "cdp" subresource of that
 * base). The jwt is taken from the query. 0 when it is unusable. */
static int from_cdp_url(const char *url, char *base, char *jwt)
{
    size_t s = scheme_len(url);
    if (!s || strlen(url) > GW_BROUTE_URL_MAX + GW_BROUTE_JWT_MAX + 64)
        return 0;
    const char *q = strchr(url, '?');
    if (!q)
        return 0;
    const char *qe = strchr(q, '#');
    size_t qn = qe ? (size_t)(qe - q - 1) : strlen(q + 1);
    const char *v;
    size_t vn;
    if (!gw_blearn_query_param(q + 1, qn, "jwt", &v, &vn) || !query_jwt_ok(v, vn))
        return 0;
    memcpy(jwt, v, vn);
    jwt[vn] = '\0';
    /* Path end: the last '/' before the query, after the authority. */
    const char *auth = url + s, *path_end = q;
    const char *last = NULL;
    for (const char *p = auth; p < path_end; p++)
        if (*p == '/')
            last = p;
    size_t alen = strcspn(auth, "/?");
    const char *cut = last && last >= auth + alen ? last : auth + alen;
    int tls = strncasecmp(url, "wss://", 6) == 0 || strncasecmp(url, "https://", 8) == 0;
    const char *scheme = tls ? "https://" : "http://";
    size_t rest = (size_t)(cut - auth);
    if (strlen(scheme) + rest > GW_BROUTE_URL_MAX)
        return 0;
    memcpy(base, scheme, strlen(scheme));
    memcpy(base + strlen(scheme), auth, rest);
    base[strlen(scheme) + rest] = '\0';
    return gw_blearn_base_url_ok(base);
}

static int learn_object(json_t *o, const char *only_id, gw_blearn_fn fn, void *ud)
{
    json_t *jid = json_object_get(o, "session_id");
    if (!json_is_string(jid))
        return 0;
    const char *id = json_string_value(jid);
    if (!gw_blearn_id_ok(id, json_string_length(jid)) || strlen(id) != json_string_length(jid))
        return 0;
    if (only_id && strcmp(id, only_id) != 0)
        return 0;
    char base[GW_BROUTE_URL_MAX + 1], jwt[GW_BROUTE_JWT_MAX + 1];
    json_t *jb = json_object_get(o, "base_url"), *jj = json_object_get(o, "jwt");
    if (json_is_string(jb) && json_is_string(jj) && strlen(json_string_value(jb)) == json_string_length(jb) &&
        strlen(json_string_value(jj)) == json_string_length(jj) && gw_blearn_base_url_ok(json_string_value(jb)) &&
        encode_jwt(json_string_value(jj), jwt, sizeof jwt)) {
        size_t bl = strlen(json_string_value(jb));
        memcpy(base, json_string_value(jb), bl + 1);
        size_t keep = scheme_len(base) + strcspn(base + scheme_len(base), "/");
        while (bl > keep && base[bl - 1] == '/')
            base[--bl] = '\0'; /* "{base_url}/{sub}" never doubles the slash */
        fn(ud, id, base, jwt);
        return 1;
    }
    json_t *jc = json_object_get(o, "cdp_ws_url");
    if (json_is_string(jc) && strlen(json_string_value(jc)) == json_string_length(jc) &&
        from_cdp_url(json_string_value(jc), base, jwt)) {
        fn(ud, id, base, jwt);
        return 1;
    }
    return 0;
}

int gw_blearn_json(const char *body, size_t n, const char *only_id, int max, gw_blearn_fn fn, void *ud)
{
    json_error_t e;
    json_t *root = json_loadb(body, n, JSON_DECODE_ANY | JSON_REJECT_DUPLICATES, &e);
    if (!root)
        return -1;
    int found = 0;
    if (json_is_object(root) && max > 0) {
        found = learn_object(root, only_id, fn, ud);
        const char *key;
        json_t *v;
        json_object_foreach(root, key, v)
        {
            if (found >= max)
                break;
            if (json_is_object(v))
                found += learn_object(v, only_id, fn, ud);
        }
    }
    json_decref(root);
    return found;
}

/* learn.h: route learning for the browser kind (DESIGN.md section 7), pure
 * (no I/O, no cache): looks at a control plane's JSON answer and reports the
 * browser session routes it names at the places a route may be. */
#ifndef GW_BROWSER_LEARN_H
#define GW_BROWSER_LEARN_H

#include <stddef.h>

/* Called once per route found: id (a session id usable as one path segment),
 * base_url (http(s):// or ws(s)://, no userinfo, query or fragment, no
 * trailing '/'), jwt (query-encoded: safe to paste after "jwt="). */
typedef void (*gw_blearn_fn)(void *ud, const char *id, const char *base_url, const char *jwt);

/* Parses body (n bytes) as JSON and looks for routes in two places only: the
 * top-level object, then the objects that are direct values of its members
 * (e.g. {"browser": {...}}), in that order; deeper objects and arrays are
 * never looked at (an answer that echoes client JSON must not install routes).
 * An object with string session_id, base_url and jwt is a route; an object
 * with session_id and a cdp_ws_url whose query carries jwt is one too
 * (base_url: the URL's scheme as http(s), authority, and path minus its last
 * segment). only_id, when not NULL, is the one session id that may be
 * learned (others are skipped); at most max routes are reported. Values that
 * fail the checks (see gw_blearn_base_url_ok, the id and jwt character sets
 * and the route_cache.h bounds) are skipped. Returns the number of routes
 * reported, or -1 when body is not JSON. */
int gw_blearn_json(const char *body, size_t n, const char *only_id, int max, gw_blearn_fn fn, void *ud);

/* 1 when url is acceptable as a VM's base URL: http, https, ws or wss, a
 * non-empty authority without userinfo ('@'), no query or fragment, no
 * whitespace or control character, within GW_BROUTE_URL_MAX. */
int gw_blearn_base_url_ok(const char *url);

/* 1 when id is a usable session id: 1..GW_BROUTE_ID_MAX of [A-Za-z0-9._~-],
 * and not "." or "..". */
int gw_blearn_id_ok(const char *id, size_t n);

/* Finds the first parameter called name in query q (n bytes, without '?').
 * 1 and its value in *v, *vn when present, else 0. */
int gw_blearn_query_param(const char *q, size_t n, const char *name, const char **v, size_t *vn);

#endif

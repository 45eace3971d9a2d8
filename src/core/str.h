/* str.h: non-owning string views and the comparisons protocol code needs. */
#ifndef GW_STR_H
#define GW_STR_H

#include <stddef.h>
#include <string.h>
#include <strings.h>

typedef struct gw_str {
    const char *p;
    size_t n;
} gw_str;

#define GW_STRLIT(s) ((gw_str){(s), sizeof(s) - 1})

static inline gw_str gw_str_make(const char *p, size_t n) { return (gw_str){p, n}; }
static inline int gw_str_eq(gw_str a, const char *lit)
{
    size_t n = strlen(lit);
    return a.n == n && memcmp(a.p, lit, n) == 0;
}
static inline int gw_str_ieq(gw_str a, const char *lit)
{
    size_t n = strlen(lit);
    return a.n == n && strncasecmp(a.p, lit, n) == 0;
}
/* Trims spaces and horizontal tabs (HTTP optional whitespace) on both sides. */
static inline gw_str gw_str_trim(gw_str s)
{
    while (s.n && (s.p[0] == ' ' || s.p[0] == '\t')) {
        s.p++;
        s.n--;
    }
    while (s.n && (s.p[s.n - 1] == ' ' || s.p[s.n - 1] == '\t'))
        s.n--;
    return s;
}

#endif

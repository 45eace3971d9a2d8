#include "core/alloc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void oom(size_t n)
{
    fprintf(stderr, "{\"level\":\"fatal\",\"msg\":\"out of memory\",\"bytes\":%zu}\n", n);
    abort();
}

void *gw_malloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        oom(n);
    return p;
}

void *gw_calloc(size_t nmemb, size_t n)
{
    void *p = calloc(nmemb ? nmemb : 1, n ? n : 1);
    if (!p)
        oom(nmemb * n);
    return p;
}

void *gw_realloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        oom(n);
    return q;
}

char *gw_strdup(const char *s)
{
    return gw_strndup(s, strlen(s));
}

char *gw_strndup(const char *s, size_t n)
{
    char *p = gw_malloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

void *gw_try_malloc(size_t n)
{
    return malloc(n ? n : 1);
}

void gw_free(void *p)
{
    free(p);
}

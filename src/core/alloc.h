/* alloc.h: allocation policy in one place.
 *
 * gw_malloc/gw_calloc/gw_realloc/gw_strdup abort the process on OOM: use them
 * for small fixed-size structs. Sizes that a peer controls go through the
 * gw_try_* variants, whose failure the caller must turn into a clean close. */
#ifndef GW_ALLOC_H
#define GW_ALLOC_H

#include <stddef.h>

void *gw_malloc(size_t n);
void *gw_calloc(size_t nmemb, size_t n);
void *gw_realloc(void *p, size_t n);
char *gw_strdup(const char *s);
char *gw_strndup(const char *s, size_t n);
__attribute__((warn_unused_result)) void *gw_try_malloc(size_t n);
void gw_free(void *p);

#endif

/* route_cache.c: the browser kind's bounded LRU route cache (one mutex; see
 * route_cache.h for why). A chained hash table indexes the entries; an
 * intrusive list orders them, most recently used at the tail. */
#include "browser/route_cache.h"

#include <pthread.h>
#include <stdint.h>
#include <string.h>

#include "core/alloc.h"
#include "core/common.h"
#include "core/list.h"
#include "metrics/metrics.h"

typedef struct entry {
    gw_list lru;         /* most recently used at the tail */
    struct entry *hnext; /* hash chain */
    uint32_t hash;
    char *id, *base_url, *jwt;
    uint8_t cred[GW_BROUTE_CRED_LEN]; /* digest of the credential bound to the route */
    uint8_t has_cred;
} entry;

struct gw_bcache {
    pthread_mutex_t mu;
    entry **buckets;
    size_t nbuckets; /* a power of two, >= cap */
    size_t n, cap;
    gw_list lru;
    gw_metric *gauge;
};

static void sync_gauge(gw_bcache *c)
{
    if (c->gauge)
        gw_gauge_set(c->gauge, (int64_t)c->n);
}

void gw_bcache_set_gauge(gw_bcache *c, gw_metric *m)
{
    pthread_mutex_lock(&c->mu);
    c->gauge = m;
    sync_gauge(c);
    pthread_mutex_unlock(&c->mu);
}

static uint32_t hash_id(const char *id, size_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (uint8_t)id[i]) * 16777619u;
    return h;
}

gw_bcache *gw_bcache_new(size_t cap)
{
    gw_bcache *c = gw_calloc(1, sizeof *c);
    pthread_mutex_init(&c->mu, NULL);
    c->cap = cap ? cap : 1;
    c->nbuckets = 64;
    while (c->nbuckets < c->cap && c->nbuckets < ((size_t)1 << 24))
        c->nbuckets <<= 1;
    c->buckets = gw_calloc(c->nbuckets, sizeof *c->buckets);
    gw_list_init(&c->lru);
    return c;
}

static entry **slot_of(gw_bcache *c, const char *id, size_t n, uint32_t h)
{
    entry **pp = &c->buckets[h & (c->nbuckets - 1)];
    while (*pp && !((*pp)->hash == h && strlen((*pp)->id) == n && memcmp((*pp)->id, id, n) == 0))
        pp = &(*pp)->hnext;
    return pp;
}

static void entry_free(entry *e)
{
    gw_free(e->id);
    gw_free(e->base_url);
    gw_free(e->jwt);
    gw_free(e);
}

/* Unlinks e (found at *pp) and frees it. */
static void drop(gw_bcache *c, entry **pp)
{
    entry *e = *pp;
    *pp = e->hnext;
    gw_list_remove(&e->lru);
    c->n--;
    entry_free(e);
}

static size_t shrink_to(gw_bcache *c, size_t cap)
{
    size_t evicted = 0;
    while (c->n > cap) {
        entry *old = gw_container_of(c->lru.next, entry, lru);
        drop(c, slot_of(c, old->id, strlen(old->id), old->hash));
        evicted++;
    }
    return evicted;
}

void gw_bcache_free(gw_bcache *c)
{
    if (!c)
        return;
    shrink_to(c, 0);
    gw_free(c->buckets);
    pthread_mutex_destroy(&c->mu);
    gw_free(c);
}

size_t gw_bcache_set_cap(gw_bcache *c, size_t cap)
{
    pthread_mutex_lock(&c->mu);
    c->cap = cap ? cap : 1;
    size_t ev = shrink_to(c, c->cap);
    sync_gauge(c);
    pthread_mutex_unlock(&c->mu);
    return ev;
}

size_t gw_bcache_put(gw_bcache *c, const char *id, const char *base_url, const char *jwt, const uint8_t *cred)
{
    size_t n = strlen(id);
    if (!n || n > GW_BROUTE_ID_MAX || strlen(base_url) > GW_BROUTE_URL_MAX || strlen(jwt) > GW_BROUTE_JWT_MAX)
        return 0;
    uint32_t h = hash_id(id, n);
    size_t evicted = 0;
    pthread_mutex_lock(&c->mu);
    entry **pp = slot_of(c, id, n, h);
    entry *e = *pp;
    if (e) {
        /* A newer answer for the same session: its values win. */
        gw_free(e->base_url);
        gw_free(e->jwt);
        gw_list_remove(&e->lru);
    } else {
        evicted = shrink_to(c, c->cap - 1);
        e = gw_calloc(1, sizeof *e);
        e->hash = h;
        e->id = gw_strdup(id);
        pp = slot_of(c, id, n, h); /* the chain may have changed */
        e->hnext = *pp;
        *pp = e;
        c->n++;
    }
    e->base_url = gw_strdup(base_url);
    e->jwt = gw_strdup(jwt);
    e->has_cred = cred != NULL;
    if (cred)
        memcpy(e->cred, cred, GW_BROUTE_CRED_LEN);
    else
        memset(e->cred, 0, GW_BROUTE_CRED_LEN);
    gw_list_insert_tail(&c->lru, &e->lru);
    sync_gauge(c);
    pthread_mutex_unlock(&c->mu);
    return evicted;
}

int gw_bcache_get(gw_bcache *c, const char *id, size_t n, char *base_url, char *jwt, uint8_t *cred, int *has_cred)
{
    if (!n || n > GW_BROUTE_ID_MAX)
        return 0;
    uint32_t h = hash_id(id, n);
    pthread_mutex_lock(&c->mu);
    entry *e = *slot_of(c, id, n, h);
    if (e) {
        gw_list_remove(&e->lru);
        gw_list_insert_tail(&c->lru, &e->lru);
        memcpy(base_url, e->base_url, strlen(e->base_url) + 1);
        memcpy(jwt, e->jwt, strlen(e->jwt) + 1);
        if (cred)
            memcpy(cred, e->cred, GW_BROUTE_CRED_LEN);
        if (has_cred)
            *has_cred = e->has_cred;
    }
    pthread_mutex_unlock(&c->mu);
    return e != NULL;
}

int gw_bcache_evict(gw_bcache *c, const char *id, size_t n)
{
    if (!n || n > GW_BROUTE_ID_MAX)
        return 0;
    uint32_t h = hash_id(id, n);
    pthread_mutex_lock(&c->mu);
    entry **pp = slot_of(c, id, n, h);
    int found = *pp != NULL;
    if (found)
        drop(c, pp);
    sync_gauge(c);
    pthread_mutex_unlock(&c->mu);
    return found;
}

size_t gw_bcache_size(gw_bcache *c)
{
    pthread_mutex_lock(&c->mu);
    size_t n = c->n;
    pthread_mutex_unlock(&c->mu);
    return n;
}

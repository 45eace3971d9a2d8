/* presence.c: the embedded presence table (see presence.h).
 *
 * One entry per (user, field), found through a hash table, and every entry
 * on one list in the order it was last refreshed (oldest first). Every
 * subscriber of a process refreshes its entry each TTL/3, so a process with
 * 50,000 subscribers makes 50,000 puts per refresh round: a put is O(1)
 * (hash lookup, move to the tail) and pruning pops expired entries off the
 * head, never walking the live ones. A user's listing walks the table
 * (admin API, rare) and leaves out expired entries even when the wall clock
 * went backwards and the order is no longer exact. */
#include "store/presence.h"

#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"
#include "core/common.h"
#include "core/list.h"

typedef struct pentry {
    struct pentry *hnext; /* hash chain */
    gw_list age;          /* on T.by_age, oldest refresh first */
    uint64_t hash;
    uint64_t last_seen_ms;
    char *user, *field, *value;
} pentry;

static struct {
    pthread_mutex_t mu;
    pentry **slots;
    size_t nslots, n;
    gw_list by_age;
} T = {.mu = PTHREAD_MUTEX_INITIALIZER};


static uint64_t key_hash(const char *user, const char *field)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a over user, a 0 byte, field */
    for (const unsigned char *p = (const unsigned char *)user; *p; p++)
        h = (h ^ *p) * 1099511628211ull;
    h *= 1099511628211ull;
    for (const unsigned char *p = (const unsigned char *)field; *p; p++)
        h = (h ^ *p) * 1099511628211ull;
    return h;
}

static void ensure_init_locked(void)
{
    if (T.slots)
        return;
    T.nslots = 64;
    T.slots = gw_calloc(T.nslots, sizeof *T.slots);
    gw_list_init(&T.by_age);
}

static void grow_locked(void)
{
    size_t ns = T.nslots * 2;
    pentry **s = gw_calloc(ns, sizeof *s);
    for (size_t i = 0; i < T.nslots; i++) {
        for (pentry *e = T.slots[i], *next; e; e = next) {
            next = e->hnext;
            e->hnext = s[e->hash & (ns - 1)];
            s[e->hash & (ns - 1)] = e;
        }
    }
    gw_free(T.slots);
    T.slots = s;
    T.nslots = ns;
}

static pentry **find_locked(const char *user, const char *field, uint64_t h)
{
    pentry **pp = &T.slots[h & (T.nslots - 1)];
    for (; *pp; pp = &(*pp)->hnext)
        if ((*pp)->hash == h && strcmp((*pp)->user, user) == 0 && strcmp((*pp)->field, field) == 0)
            break;
    return pp;
}

static void unlink_free_locked(pentry **pp)
{
    pentry *e = *pp;
    *pp = e->hnext;
    gw_list_remove(&e->age);
    T.n--;
    gw_free(e->user);
    gw_free(e->field);
    gw_free(e->value);
    gw_free(e);
}

static int expired(const pentry *e, uint64_t ttl_ms, uint64_t now_ms) { return e->last_seen_ms + ttl_ms < now_ms; }

/* Drops expired entries from the old end of the age list. */
static void prune_locked(uint64_t ttl_ms, uint64_t now_ms)
{
    while (!gw_list_empty(&T.by_age)) {
        pentry *e = gw_container_of(T.by_age.next, pentry, age);
        if (!expired(e, ttl_ms, now_ms))
            break;
        unlink_free_locked(find_locked(e->user, e->field, e->hash));
    }
}

void gw_presence_put(const char *user, const char *field, const char *value, uint64_t last_seen_ms,
                     uint64_t ttl_ms, uint64_t now_ms)
{
    uint64_t h = key_hash(user, field);
    pthread_mutex_lock(&T.mu);
    ensure_init_locked();
    pentry **pp = find_locked(user, field, h);
    if (*pp && !value) {
        unlink_free_locked(pp);
    } else if (*pp) {
        pentry *e = *pp;
        gw_free(e->value);
        e->value = gw_strdup(value);
        e->last_seen_ms = last_seen_ms;
        gw_list_remove(&e->age);
        gw_list_insert_tail(&T.by_age, &e->age);
    } else if (value) {
        pentry *e = gw_calloc(1, sizeof *e);
        e->hash = h;
        e->user = gw_strdup(user);
        e->field = gw_strdup(field);
        e->value = gw_strdup(value);
        e->last_seen_ms = last_seen_ms;
        e->hnext = *pp;
        *pp = e;
        gw_list_insert_tail(&T.by_age, &e->age);
        if (++T.n > T.nslots)
            grow_locked();
    }
    prune_locked(ttl_ms, now_ms);
    pthread_mutex_unlock(&T.mu);
}

char *gw_presence_json(const char *user, uint64_t ttl_ms, uint64_t now_ms)
{
    json_t *o = json_object();
    pthread_mutex_lock(&T.mu);
    if (T.slots) {
        prune_locked(ttl_ms, now_ms);
        for (gw_list *it = T.by_age.next; it != &T.by_age; it = it->next) {
            pentry *e = gw_container_of(it, pentry, age);
            if (strcmp(e->user, user) != 0 || expired(e, ttl_ms, now_ms))
                continue;
            json_t *v = json_loads(e->value, 0, NULL);
            json_object_set_new(o, e->field, v ? v : json_string(e->value));
        }
    }
    pthread_mutex_unlock(&T.mu);
    char *t = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return t;
}

size_t gw_presence_count(void)
{
    pthread_mutex_lock(&T.mu);
    size_t n = T.n;
    pthread_mutex_unlock(&T.mu);
    return n;
}

void gw_presence_reset(void)
{
    pthread_mutex_lock(&T.mu);
    if (T.slots) {
        for (size_t i = 0; i < T.nslots; i++)
            while (T.slots[i])
                unlink_free_locked(&T.slots[i]);
        gw_free(T.slots);
        T.slots = NULL;
        T.nslots = T.n = 0;
    }
    pthread_mutex_unlock(&T.mu);
}

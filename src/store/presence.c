/* presence.c: the embedded presence table (see presence.h). */
#include "store/presence.h"

#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "core/alloc.h"

typedef struct pentry {
    struct pentry *next;
    char *user, *field, *value;
    uint64_t last_seen_ms;
} pentry;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pentry *head; /* a list: presence is per user and small; a hash when it is not */

static void entry_free(pentry *e)
{
    gw_free(e->user);
    gw_free(e->field);
    gw_free(e->value);
    gw_free(e);
}

/* Drops stale entries of user (every user when NULL). Lock held. */
static void prune_locked(const char *user, uint64_t ttl_ms, uint64_t now_ms)
{
    for (pentry **pp = &head; *pp;) {
        pentry *e = *pp;
        if ((!user || strcmp(e->user, user) == 0) && e->last_seen_ms + ttl_ms < now_ms) {
            *pp = e->next;
            entry_free(e);
        } else {
            pp = &e->next;
        }
    }
}

void gw_presence_put(const char *user, const char *field, const char *value, uint64_t last_seen_ms,
                     uint64_t ttl_ms, uint64_t now_ms)
{
    pthread_mutex_lock(&mu);
    pentry **pp = &head;
    for (; *pp; pp = &(*pp)->next)
        if (strcmp((*pp)->user, user) == 0 && strcmp((*pp)->field, field) == 0)
            break;
    if (*pp && !value) {
        pentry *e = *pp;
        *pp = e->next;
        entry_free(e);
    } else if (*pp) {
        gw_free((*pp)->value);
        (*pp)->value = gw_strdup(value);
        (*pp)->last_seen_ms = last_seen_ms;
    } else if (value) {
        pentry *e = gw_calloc(1, sizeof *e);
        e->user = gw_strdup(user);
        e->field = gw_strdup(field);
        e->value = gw_strdup(value);
        e->last_seen_ms = last_seen_ms;
        e->next = head;
        head = e;
    }
    prune_locked(NULL, ttl_ms, now_ms);
    pthread_mutex_unlock(&mu);
}

char *gw_presence_json(const char *user, uint64_t ttl_ms, uint64_t now_ms)
{
    json_t *o = json_object();
    pthread_mutex_lock(&mu);
    prune_locked(user, ttl_ms, now_ms);
    for (pentry *e = head; e; e = e->next) {
        if (strcmp(e->user, user) != 0)
            continue;
        json_t *v = json_loads(e->value, 0, NULL);
        json_object_set_new(o, e->field, v ? v : json_string(e->value));
    }
    pthread_mutex_unlock(&mu);
    char *t = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    return t;
}

void gw_presence_reset(void)
{
    pthread_mutex_lock(&mu);
    while (head) {
        pentry *e = head;
        head = e->next;
        entry_free(e);
    }
    pthread_mutex_unlock(&mu);
}

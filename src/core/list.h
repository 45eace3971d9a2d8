/* list.h: intrusive circular doubly linked list (embed a gw_list node). */
#ifndef GW_LIST_H
#define GW_LIST_H

#include <stddef.h>

typedef struct gw_list {
    struct gw_list *prev, *next;
} gw_list;

static inline void gw_list_init(gw_list *l) { l->prev = l->next = l; }
static inline int gw_list_empty(const gw_list *l) { return l->next == l; }
static inline int gw_list_linked(const gw_list *n) { return n->next != NULL && n->next != n; }
static inline void gw_list_insert_tail(gw_list *l, gw_list *n)
{
    n->prev = l->prev;
    n->next = l;
    l->prev->next = n;
    l->prev = n;
}
static inline void gw_list_remove(gw_list *n)
{
    if (!n->next)
        return;
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = n;
}

#endif

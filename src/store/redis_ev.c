/* redis_ev.c: the hiredis event adapter for the wsgate loop (see redis_ev.h). */
#include "store/redis_ev.h"

#include <pthread.h>
#include <stdio.h>

#include "core/common.h"

/* ============================== reply bounds ================================ */

static redisReplyObjectFunctions *std_fn; /* hiredis' own (read from a fresh reader) */
static redisReplyObjectFunctions limited_fn;
static pthread_once_t limit_once = PTHREAD_ONCE_INIT;

static void refuse(const redisReadTask *t, const char *why)
{
    if (t->privdata)
        ((gw_redis_limit *)t->privdata)->refused = why;
}

/* The reply's totals, reset when t starts a new reply (a task without a
 * parent is a reply's top object). */
static gw_redis_limit *totals(const redisReadTask *t)
{
    gw_redis_limit *l = t->privdata;
    if (l && !t->parent)
        l->bytes = l->elements = 0;
    return l;
}

static void *lim_string(const redisReadTask *t, char *s, size_t len)
{
    gw_redis_limit *l = totals(t);
    if (len > GW_REDIS_MAX_BULK) {
        refuse(t, "reply refused: a bulk string longer than 64 MiB");
        return NULL; /* hiredis: a reader error, the connection fails */
    }
    if (l && (l->bytes += len) > GW_REDIS_MAX_BULK) {
        refuse(t, "reply refused: more than 64 MiB of strings in one reply");
        return NULL;
    }
    return std_fn->createString(t, s, len);
}

static void *lim_array(const redisReadTask *t, int n)
{
    gw_redis_limit *l = totals(t);
    if (n < 0 || (unsigned)n > GW_REDIS_MAX_ELEMENTS) {
        refuse(t, "reply refused: an array of more than 1048576 elements");
        return NULL;
    }
    if (l && (l->elements += (size_t)n) > GW_REDIS_MAX_ELEMENTS) {
        refuse(t, "reply refused: more than 1048576 elements in one reply");
        return NULL;
    }
    return std_fn->createArray(t, n);
}

static void *lim_integer(const redisReadTask *t, long long v)
{
    totals(t);
    return std_fn->createInteger(t, v);
}

static void *lim_nil(const redisReadTask *t)
{
    totals(t);
    return std_fn->createNil(t);
}

static void limit_init(void)
{
    redisReader *r = redisReaderCreate();
    std_fn = r->fn;
    redisReaderFree(r);
    limited_fn = (redisReplyObjectFunctions){lim_string, lim_array, lim_integer, lim_nil, std_fn->freeObject};
}

void gw_redis_reader_limit(redisReader *r, gw_redis_limit *lim)
{
    pthread_once(&limit_once, limit_init);
    *lim = (gw_redis_limit){0};
    r->fn = &limited_fn;
    r->privdata = lim;
}

/* A bulk string longer than GW_REDIS_MAX_BULK is buffered whole before
 * hiredis hands it to createString: refuse it as soon as that much is
 * waiting unparsed (hiredis then drops the connection as failed). */
static int over_bulk(gw_redis_ev *e)
{
    redisContext *c = &e->ac->c;
    if (c->err || !c->reader || c->reader->len - c->reader->pos <= (size_t)GW_REDIS_MAX_BULK + 64)
        return 0;
    e->lim.refused = "reply refused: a bulk string longer than 64 MiB";
    c->err = REDIS_ERR_PROTOCOL;
    snprintf(c->errstr, sizeof c->errstr, "%s", e->lim.refused);
    return 1;
}

static void ev_apply(gw_redis_ev *e)
{
    if (e->io.fd < 0)
        return;
    if (e->want)
        gw_io_update(e->loop, &e->io, e->want);
    else
        gw_io_stop(e->loop, &e->io);
}

static void ev_io(gw_io *io, uint32_t events)
{
    gw_redis_ev *e = gw_container_of(io, gw_redis_ev, io);
    /* An error or hang-up is hiredis' to read: while connecting it waits
     * for writability (the connect's outcome), afterwards for input. */
    int err = (events & GW_EV_ERROR) != 0;
    if (e->ac && ((events & GW_EV_READ) || (err && (e->want & GW_EV_READ)))) {
        over_bulk(e);                /* then the read below fails the connection */
        redisAsyncHandleRead(e->ac); /* may free the context: cleanup clears e->ac */
    }
    if (e->ac && ((events & GW_EV_WRITE) || (err && !(e->want & GW_EV_READ))))
        redisAsyncHandleWrite(e->ac);
}

static void ev_add_read(void *p)
{
    gw_redis_ev *e = p;
    e->want |= GW_EV_READ;
    ev_apply(e);
}

static void ev_del_read(void *p)
{
    gw_redis_ev *e = p;
    e->want &= ~GW_EV_READ;
    ev_apply(e);
}

static void ev_add_write(void *p)
{
    gw_redis_ev *e = p;
    e->want |= GW_EV_WRITE;
    ev_apply(e);
}

static void ev_del_write(void *p)
{
    gw_redis_ev *e = p;
    e->want &= ~GW_EV_WRITE;
    ev_apply(e);
}

static void ev_cleanup(void *p)
{
    gw_redis_ev *e = p;
    e->want = 0;
    gw_io_stop(e->loop, &e->io);
    e->io.fd = -1;
    e->ac = NULL;
}

int gw_redis_ev_attach(gw_redis_ev *e, gw_loop *l, redisAsyncContext *ac)
{
    if (ac->ev.data)
        return GW_ERR;
    e->loop = l;
    e->ac = ac;
    e->want = 0;
    e->io.fd = ac->c.fd;
    e->io.events = 0;
    e->io.cb = ev_io;
    ac->ev.data = e;
    ac->ev.addRead = ev_add_read;
    ac->ev.delRead = ev_del_read;
    ac->ev.addWrite = ev_add_write;
    ac->ev.delWrite = ev_del_write;
    ac->ev.cleanup = ev_cleanup;
    gw_redis_reader_limit(ac->c.reader, &e->lim);
    return GW_OK;
}

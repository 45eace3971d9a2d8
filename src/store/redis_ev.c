/* redis_ev.c: the hiredis event adapter for the wsgate loop (see redis_ev.h). */
#include "store/redis_ev.h"

#include "core/common.h"

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
    if (e->ac && ((events & GW_EV_READ) || (err && (e->want & GW_EV_READ))))
        redisAsyncHandleRead(e->ac); /* may free the context: cleanup clears e->ac */
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
    return GW_OK;
}

/* store_bench.c: terminal token mint+consume through the asynchronous store
 * (store/store.h), embedded or Redis, on one worker loop, with `window`
 * operations in flight. Prints one JSON line per phase: tokens/s and the
 * CPU time of this process (user+sys, getrusage) per token; run-store.sh
 * adds redis-server's own CPU. Not a test: numbers depend on the machine.
 *
 *   store_bench embedded|HOST:PORT PASSWORD N WINDOW */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "config/config.h"
#include "core/alloc.h"
#include "core/common.h"
#include "loop/loop.h"
#include "store/redis.h"
#include "store/store.h"

static gw_loop *L;
static gw_store *S;
static char (*toks)[GW_TOKEN_LEN + 1];
static size_t n_total, window, next_i, done_n, errors;
static int phase; /* 0 mint, 1 consume */

static void start_one(void);

static void finished(void)
{
    done_n++;
    if (done_n == n_total)
        gw_loop_stop(L);
    else
        start_one();
}

static void on_put(void *ud, int rc)
{
    GW_UNUSED(ud);
    errors += rc != GW_OK;
    finished();
}

static void on_consume(void *ud, gw_token_result r, const gw_token_ctx *ctx)
{
    GW_UNUSED(ud);
    GW_UNUSED(ctx);
    errors += r != GW_TOKEN_OK;
    finished();
}

static void start_one(void)
{
    if (next_i >= n_total)
        return;
    size_t i = next_i++;
    if (phase == 0) {
        gw_token_ctx c;
        memset(&c, 0, sizeof c);
        snprintf(c.allocation_id, sizeof c.allocation_id, "bench-alloc");
        snprintf(c.upstream, sizeof c.upstream, "ws://127.0.0.1:7681/");
        snprintf(c.user_id, sizeof c.user_id, "bench-user-%zu", i);
        snprintf(c.session_id, sizeof c.session_id, "bench-session-%zu", i);
        gw_store_mint(S, L, &c, 600, toks[i], on_put, NULL);
    } else {
        gw_store_consume(S, L, toks[i], GW_TOKEN_LEN, "bench-alloc", on_consume, NULL);
    }
}

static double cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec / 1e6;
}

static void kick(gw_task *t)
{
    GW_UNUSED(t);
    for (size_t k = 0; k < window; k++)
        start_one();
}

static void run_phase(int p, const char *backend)
{
    phase = p;
    next_i = done_n = errors = 0;
    double c0 = cpu_s();
    uint64_t t0 = gw_mono_ms();
    gw_task t = {.fn = kick};
    gw_list_init(&t.node);
    gw_loop_pending(L, &t);
    gw_loop_run(L);
    double wall = (double)(gw_mono_ms() - t0) / 1000.0, cpu = cpu_s() - c0;
    printf("{\"backend\":\"%s\",\"phase\":\"%s\",\"tokens\":%zu,\"window\":%zu,\"errors\":%zu,\"seconds\":%.3f,"
           "\"tokens_per_s\":%.0f,\"cpu_us_per_token\":%.2f}\n",
           backend, p == 0 ? "mint" : "consume", n_total, window, errors, wall, (double)n_total / wall,
           cpu * 1e6 / (double)n_total);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: store_bench embedded|HOST:PORT PASSWORD N WINDOW\n");
        return 2;
    }
    n_total = strtoul(argv[3], NULL, 10);
    window = strtoul(argv[4], NULL, 10);
    if (!n_total || !window)
        return 2;
    L = gw_loop_new();
    gw_token_store *table = NULL;
    const char *backend = "embedded";
    if (strcmp(argv[1], "embedded") == 0) {
        table = gw_token_store_embedded(NULL, n_total + 16);
        S = gw_store_embedded(table, 0);
    } else {
        gw_config cfg;
        memset(&cfg, 0, sizeof cfg);
        snprintf(cfg.redis_master_addr, sizeof cfg.redis_master_addr, "%s", argv[1]);
        snprintf(cfg.redis_password, sizeof cfg.redis_password, "%s", argv[2]);
        snprintf(cfg.redis_key_prefix, sizeof cfg.redis_key_prefix, "bench:");
        snprintf(cfg.session_events_stream, sizeof cfg.session_events_stream, "bench:sessions");
        cfg.store_timeout_ms = 5000;
        char err[300];
        S = gw_store_redis(&cfg, err, sizeof err);
        if (!S) {
            fprintf(stderr, "%s\n", err);
            return 1;
        }
        backend = "redis";
    }
    toks = gw_calloc(n_total, sizeof *toks);
    run_phase(0, backend);
    run_phase(1, backend);
    gw_store_free(S);
    gw_token_store_free(table);
    gw_free(toks);
    gw_loop_free(L);
    return 0;
}

/* resolver_shim.c: an LD_PRELOAD getaddrinfo for test_resolve.py. Names in
 * the .test domain stand for DNS answers the tests control:
 *   *.slow.test  answered 127.0.0.1 after SHIM_DELAY_MS (default 1500) ms
 *   *.fast.test  answered 127.0.0.1 at once
 *   *.gone.test  EAI_NONAME (no such name)
 * Every call for a .test name appends the name and the calling thread's id
 * to SHIM_LOG (when set), so a test can count lookups and see which thread
 * made them. Other names go to the real getaddrinfo. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

typedef int (*gai_fn)(const char *, const char *, const struct addrinfo *, struct addrinfo **);

static int ends(const char *s, const char *suf)
{
    size_t n = strlen(s), k = strlen(suf);
    return n >= k && strcmp(s + n - k, suf) == 0;
}

static void note(const char *node)
{
    const char *path = getenv("SHIM_LOG");
    if (!path)
        return;
    FILE *f = fopen(path, "a");
    if (!f)
        return;
    fprintf(f, "%s %ld\n", node, (long)syscall(SYS_gettid));
    fclose(f);
}

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints, struct addrinfo **res)
{
    gai_fn real = (gai_fn)dlsym(RTLD_NEXT, "getaddrinfo");
    if (node && ends(node, ".test")) {
        note(node);
        if (ends(node, ".slow.test")) {
            const char *d = getenv("SHIM_DELAY_MS");
            usleep((useconds_t)(d ? atoi(d) : 1500) * 1000u);
            return real("127.0.0.1", service, hints, res);
        }
        if (ends(node, ".fast.test"))
            return real("127.0.0.1", service, hints, res);
        return EAI_NONAME;
    }
    return real(node, service, hints, res);
}

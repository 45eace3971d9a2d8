/* test.h: a tiny TAP harness for the unit tests. Each tests/unit/test_<module>.c
 * is its own binary: it defines main() as
 *     int main(void) { TEST_RUN(test_a); TEST_RUN(test_b); return test_done(); }
 * Checks print "ok N - what" or "not ok N - what" with both values; the binary
 * ends with a "N passed, N failed" line and exits non-zero on any failure. */
#ifndef GW_TEST_H
#define GW_TEST_H

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

static int test_passed_, test_failed_, test_n_;
static const char *test_current_ = "";

static inline int test_ok_(int cond, const char *file, int line, const char *what)
{
    test_n_++;
    if (cond) {
        test_passed_++;
        printf("ok %d - %s: %s\n", test_n_, test_current_, what);
    } else {
        test_failed_++;
        printf("not ok %d - %s: %s (%s:%d)\n", test_n_, test_current_, what, file, line);
    }
    return cond;
}

#define ok(cond, ...)                                                                                                 \
    do {                                                                                                               \
        char what_[256];                                                                                               \
        snprintf(what_, sizeof what_, __VA_ARGS__);                                                                    \
        test_ok_(!!(cond), __FILE__, __LINE__, what_);                                                                 \
    } while (0)

#define is_int(got, want, ...)                                                                                        \
    do {                                                                                                               \
        long long g_ = (long long)(got), w_ = (long long)(want);                                                       \
        char what_[256];                                                                                               \
        snprintf(what_, sizeof what_, __VA_ARGS__);                                                                    \
        if (!test_ok_(g_ == w_, __FILE__, __LINE__, what_))                                                            \
            printf("#   got %lld, want %lld\n", g_, w_);                                                           \
    } while (0)

#define is_str(got, want, ...)                                                                                        \
    do {                                                                                                               \
        const char *g_ = (got), *w_ = (want);                                                                          \
        char what_[256];                                                                                               \
        snprintf(what_, sizeof what_, __VA_ARGS__);                                                                    \
        if (!test_ok_(g_ && w_ && strcmp(g_, w_) == 0, __FILE__, __LINE__, what_))                                    \
            printf("#   got \"%s\", want \"%s\"\n", g_ ? g_ : "(null)", w_ ? w_ : "(null)");                        \
    } while (0)

#define is_mem(got, gotn, want, wantn, ...)                                                                           \
    do {                                                                                                               \
        size_t gn_ = (gotn), wn_ = (wantn);                                                                            \
        char what_[256];                                                                                               \
        snprintf(what_, sizeof what_, __VA_ARGS__);                                                                    \
        if (!test_ok_(gn_ == wn_ && memcmp((got), (want), gn_) == 0, __FILE__, __LINE__, what_))                      \
            printf("#   lengths got %zu, want %zu\n", gn_, wn_);                                                   \
    } while (0)

#define TEST_RUN(fn)                                                                                                  \
    do {                                                                                                               \
        test_current_ = #fn;                                                                                           \
        printf("# %s\n", #fn);                                                                                         \
        fn();                                                                                                          \
    } while (0)

static inline int test_done(void)
{
    printf("%d passed, %d failed\n", test_passed_, test_failed_);
    return test_failed_ ? 1 : 0;
}

#endif

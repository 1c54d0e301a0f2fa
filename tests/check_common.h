/*
 * check_common.h - shared helpers for the Check test binaries.
 *
 * A test file registers its suite with RK_TEST_SUITE; check_main.c collects every
 * registered suite from the "rk_suites" linker section into one runner, so adding
 * a test file means editing only tests/meson.build.
 *
 *     RK_TEST_SUITE(tokenizer_suite, RK_NEEDS_SHARED)
 *     {
 *         Suite *s = suite_create("tokenizer");
 *         ...
 *         return s;
 *     }
 */
#ifndef RK_CHECK_COMMON_H
#define RK_CHECK_COMMON_H

#include <check.h>
#include <stdbool.h>
#include <stddef.h>

struct rk_test_suite {
    const char *name;
    Suite *(*make)(void);
    bool needs_shared; /* skipped (exit 77 if nothing else ran) without ../shared */
};

#define RK_NEEDS_SHARED true
#define RK_SELF_CONTAINED false

/* Check tag of test cases that take more than a fraction of a second (bulk
 * fuzzing, statistics over many draws, throughput). tests/meson.build runs
 * each unit binary twice: suite `unit` with CK_EXCLUDE_TAGS=slow (the few
 * seconds to run after every change) and suite `unit-slow` with
 * CK_INCLUDE_TAGS=slow. */
#define RK_TEST_TAG_SLOW "slow"

#define RK_TEST_SUITE(fn, needs)                                                        \
    static Suite *fn(void);                                                             \
    static const struct rk_test_suite rk_suite_desc_##fn                                \
        __attribute__((used, section("rk_suites"), aligned(sizeof(void *)))) = {#fn, fn, \
                                                                                 needs}; \
    static Suite *fn(void)

/* Path of a file under ../shared (e.g. "fixtures/models/x.bin"), or NULL when
 * it does not exist. Static buffer per call slot: copy if you keep it. */
const char *rk_test_shared(const char *rel);
/* Path of a file under the project's tests/data (always returned). */
const char *rk_test_data(const char *rel);
/* True under an instrumented build's test setup (asan, tsan: RWKVD_TEST_SLOW
 * is set): code runs several times slower there, so tests shorten long
 * generations and skip assertions about latency ratios. */
bool rk_test_slow(void);
/* A fresh temporary directory for this test process (created on first use). */
const char *rk_test_tmpdir(void);

/* Compare float arrays element-wise: |a-b| <= atol + rtol*|b|. On failure,
 * fails the test naming `what`, the first bad index, both values and the
 * largest difference. */
void rk_check_close(const float *a, const float *b, size_t n, double atol, double rtol,
                    const char *what);
/* Largest absolute difference. */
double rk_max_abs_diff(const float *a, const float *b, size_t n);

/* Central finite differences for the gradient tests: `loss` reads x[n]
 * (through `user`); x is moved to x + h u and x - h u in place and restored
 * bit for bit. Returns (loss(x + h u) - loss(x - h u)) / 2h. */
typedef double rk_fd_loss(void *user);
double rk_fd_along(rk_fd_loss *loss, void *user, float *x, const float *u, size_t n, double h);
/* For a loss of one row of logits that overwrites the row (with its
 * gradient): the central difference at coordinate i of x[n], each side
 * computed on a copy of x. */
typedef double rk_fd_row_loss(float *row, size_t n, void *user);
double rk_fd_row(rk_fd_row_loss *loss, void *user, const float *x, size_t n, size_t i, double h);

/* The thread counts that the thread-identity tests compare with one thread:
 * RWKVD_TEST_THREADS ("2,3,5": comma-separated, each 2..64), else {3}. The
 * `matrix` suite of tests/meson.build sets it. Fills out[] (at most max
 * entries) and returns how many; an unreadable value fails the test. */
size_t rk_test_threads(int *out, size_t max);

/* Read a whole file into a malloc'd buffer (NULL on error). */
void *rk_test_read_file(const char *path, size_t *len);
/* Write a buffer to a file; returns 0 on success. */
int rk_test_write_file(const char *path, const void *data, size_t len);

#endif

/*
 * test_tenant_window.c - the per-tenant minute budgets (server/
 * tenant_window.c): all-or-nothing reservations against every counter, a
 * spent counter that refuses even a need of 0, refunds that stop at 0,
 * charges past the limit, tenants counted apart, and threads that share one
 * table. The minute's renewal is not tested (no timed unit tests).
 */
#include "check_common.h"
#include "srv.h"

#include <pthread.h>

START_TEST(test_window_reserve)
{
    struct rk_tenant_window *w = rk_tenant_window_new();
    ck_assert_ptr_nonnull(w);
    const long long limit[RK_TW_COUNTERS] = {10, 100};
    const long long six[RK_TW_COUNTERS] = {6, 0}, five[RK_TW_COUNTERS] = {5, 0};
    struct rk_tw_status st;
    ck_assert_int_eq(rk_tenant_window_reserve(w, "a", six, limit, &st), RK_OK);
    ck_assert(st.used[0] == 0 && st.renew_s >= 1 && st.renew_s <= 61);
    ck_assert_int_eq(rk_tenant_window_reserve(w, "a", five, limit, &st), RK_EBUSY);
    ck_assert(st.used[0] == 6); /* nothing taken */
    ck_assert_int_eq(rk_tenant_window_reserve(w, "b", five, limit, &st), RK_OK);
    ck_assert(st.used[0] == 0); /* b is counted apart */
    /* a refund gives back, down to 0 and not below */
    rk_tenant_window_refund(w, "a", six);
    rk_tenant_window_refund(w, "a", six);
    ck_assert_int_eq(rk_tenant_window_reserve(w, "a", (long long[]){10, 0}, limit, &st), RK_OK);
    ck_assert(st.used[0] == 0);
    /* the second counter: charged past its limit, it refuses even a need of 0 */
    rk_tenant_window_charge(w, "b", (long long[]){0, 150});
    ck_assert_int_eq(rk_tenant_window_reserve(w, "b", (long long[]){1, 0}, limit, &st),
                     RK_EBUSY);
    ck_assert(st.used[0] == 5 && st.used[1] == 150);
    rk_tenant_window_refund(w, "b", (long long[]){0, 60});
    ck_assert_int_eq(rk_tenant_window_reserve(w, "b", (long long[]){5, 0}, limit, &st), RK_OK);
    ck_assert_int_eq(rk_tenant_window_reserve(w, "b", (long long[]){1, 0}, limit, &st),
                     RK_EBUSY);
    /* many tenants: the table grows */
    char name[16];
    for (int i = 0; i < 100; i++) {
        snprintf(name, sizeof name, "t%d", i);
        ck_assert_int_eq(rk_tenant_window_reserve(w, name, (long long[]){i % 10 + 1, 0}, limit,
                                                  NULL), RK_OK);
    }
    ck_assert_int_eq(rk_tenant_window_reserve(w, "t7", (long long[]){3, 0}, limit, &st),
                     RK_EBUSY);
    ck_assert(st.used[0] == 8);
    rk_tenant_window_free(w);
    rk_tenant_window_free(NULL);
    ck_assert_int_eq(rk_tenant_window_reserve(NULL, "a", six, limit, &st), RK_ENOMEM);
    rk_tenant_window_refund(NULL, "a", six);
}
END_TEST

struct taker {
    struct rk_tenant_window *w;
    int got;
};

static void *take_all(void *arg)
{
    struct taker *t = arg;
    const long long one[RK_TW_COUNTERS] = {1, 0}, limit[RK_TW_COUNTERS] = {1000, 1};
    for (int i = 0; i < 1000; i++)
        t->got += rk_tenant_window_reserve(t->w, "shared", one, limit, NULL) == RK_OK;
    return NULL;
}

/* Two threads share one tenant's budget: together they get exactly it. */
START_TEST(test_window_threads)
{
    struct rk_tenant_window *w = rk_tenant_window_new();
    struct taker a = {w, 0}, b = {w, 0};
    pthread_t ta, tb;
    ck_assert_int_eq(pthread_create(&ta, NULL, take_all, &a), 0);
    ck_assert_int_eq(pthread_create(&tb, NULL, take_all, &b), 0);
    pthread_join(ta, NULL);
    pthread_join(tb, NULL);
    ck_assert_int_eq(a.got + b.got, 1000);
    rk_tenant_window_free(w);
}
END_TEST

RK_TEST_SUITE(tenant_window_suite, RK_SELF_CONTAINED)
{
    Suite *s = suite_create("tenant_window");
    TCase *tc = tcase_create("window");
    tcase_add_test(tc, test_window_reserve);
    tcase_add_test(tc, test_window_threads);
    suite_add_tcase(s, tc);
    return s;
}

/*
 * tenant_window.h - per-tenant budgets counted in one-minute windows: a
 * table of tenants, each with RK_TW_COUNTERS tallies for its current minute
 * (a window that starts with the tenant's first use and renews 60 s later).
 * The judge budget (calls and tokens, shared by best_of, ttt with a judge
 * and rl jobs scored by the judge) and the ttt sample budget are two such
 * tables. Thread-safe: the loop thread and the job worker share the judge's.
 */
#ifndef RK_TENANT_WINDOW_H
#define RK_TENANT_WINDOW_H

#include <stdbool.h>

#define RK_TW_COUNTERS 2
#define RK_TW_PERIOD_US 60000000ll /* one minute */

struct rk_tenant_window;

/* The state of a tenant's minute, as reserve saw it. */
struct rk_tw_status {
    long long used[RK_TW_COUNTERS]; /* this minute's tallies before the reservation */
    int renew_s;                    /* seconds (rounded up) until the minute renews */
};

/* NULL when out of memory. */
struct rk_tenant_window *rk_tenant_window_new(void);
void rk_tenant_window_free(struct rk_tenant_window *w);

/* Reserve need[c] of every counter c for `tenant`'s current minute: all or
 * nothing. Counter c refuses when used + need would pass limit[c] or used
 * has already reached it (so a need of 0 still stops at a spent limit).
 * RK_OK (taken), RK_EBUSY (refused; nothing taken) or RK_ENOMEM (also for
 * a NULL w); *st (may be NULL) gets the tallies before the reservation. */
int rk_tenant_window_reserve(struct rk_tenant_window *w, const char *tenant,
                             const long long need[RK_TW_COUNTERS],
                             const long long limit[RK_TW_COUNTERS], struct rk_tw_status *st);

/* Give back a reservation that was not used up (each tally stops at 0;
 * a NULL w is a no-op, as for charge). */
void rk_tenant_window_refund(struct rk_tenant_window *w, const char *tenant,
                             const long long n[RK_TW_COUNTERS]);

/* Add what was spent without a reservation (the judge's tokens, known
 * after the call), whatever the limit. */
void rk_tenant_window_charge(struct rk_tenant_window *w, const char *tenant,
                             const long long n[RK_TW_COUNTERS]);

#endif

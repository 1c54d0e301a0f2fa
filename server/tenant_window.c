/*
 * tenant_window.c - per-tenant one-minute budgets (tenant_window.h).
 *
 * A row per tenant seen within the last minute: a tenant's row is reused by
 * another once it has been idle for a minute, so the table stays as large
 * as the set of tenants active within a minute. A linear search: tenants
 * active at once are few next to the cost of what the budgets guard (judge
 * calls, tuning samples).
 */
#include "tenant_window.h"

#include "srv.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tw_row {
    char tenant[RK_STATE_ID_MAX + 1];
    int64_t start_us; /* start of the current minute */
    long long used[RK_TW_COUNTERS];
};

struct rk_tenant_window {
    pthread_mutex_t mu;
    struct tw_row *rows; /* mu */
    size_t n, cap;       /* mu */
};

struct rk_tenant_window *rk_tenant_window_new(void)
{
    struct rk_tenant_window *w = calloc(1, sizeof *w);
    if (w && pthread_mutex_init(&w->mu, NULL) != 0) {
        free(w);
        return NULL;
    }
    return w;
}

void rk_tenant_window_free(struct rk_tenant_window *w)
{
    if (!w)
        return;
    pthread_mutex_destroy(&w->mu);
    free(w->rows);
    free(w);
}

/* The tenant's row for the minute that holds `now` (a fresh one, or an idle
 * tenant's, when it has none); NULL when out of memory. Under w->mu. */
static struct tw_row *row_of(struct rk_tenant_window *w, const char *tenant, int64_t now)
{
    struct tw_row *row = NULL;
    for (size_t i = 0; i < w->n && !row; i++)
        if (!strcmp(w->rows[i].tenant, tenant))
            row = &w->rows[i];
    if (!row) {
        for (size_t i = 0; i < w->n && !row; i++)
            if (now - w->rows[i].start_us >= RK_TW_PERIOD_US)
                row = &w->rows[i];
        if (!row) {
            if (w->n == w->cap) {
                size_t cap = w->cap ? w->cap * 2 : 8;
                struct tw_row *p = realloc(w->rows, cap * sizeof *p);
                if (!p)
                    return NULL;
                w->rows = p;
                w->cap = cap;
            }
            row = &w->rows[w->n++];
        }
        memset(row, 0, sizeof *row);
        snprintf(row->tenant, sizeof row->tenant, "%s", tenant);
        row->start_us = now;
    }
    if (now - row->start_us >= RK_TW_PERIOD_US) {
        row->start_us = now;
        memset(row->used, 0, sizeof row->used);
    }
    return row;
}

int rk_tenant_window_reserve(struct rk_tenant_window *w, const char *tenant,
                             const long long need[RK_TW_COUNTERS],
                             const long long limit[RK_TW_COUNTERS], struct rk_tw_status *st)
{
    if (!w) {
        if (st)
            memset(st, 0, sizeof *st);
        return RK_ENOMEM;
    }
    int64_t now = rk_now_us();
    pthread_mutex_lock(&w->mu);
    struct tw_row *row = row_of(w, tenant, now);
    int rc = row ? RK_OK : RK_ENOMEM;
    for (int c = 0; row && c < RK_TW_COUNTERS; c++)
        if (row->used[c] >= limit[c] || need[c] > limit[c] - row->used[c])
            rc = RK_EBUSY;
    if (st) {
        memset(st, 0, sizeof *st);
        if (row) {
            memcpy(st->used, row->used, sizeof st->used);
            st->renew_s = (int)((row->start_us + RK_TW_PERIOD_US - now) / 1000000) + 1;
        }
    }
    for (int c = 0; rc == RK_OK && c < RK_TW_COUNTERS; c++)
        row->used[c] += need[c];
    pthread_mutex_unlock(&w->mu);
    return rc;
}

static void add(struct rk_tenant_window *w, const char *tenant, const long long n[RK_TW_COUNTERS],
                int sign)
{
    if (!w)
        return;
    pthread_mutex_lock(&w->mu);
    struct tw_row *row = row_of(w, tenant, rk_now_us());
    for (int c = 0; row && c < RK_TW_COUNTERS; c++) {
        row->used[c] += sign * n[c];
        if (row->used[c] < 0)
            row->used[c] = 0;
    }
    pthread_mutex_unlock(&w->mu);
}

void rk_tenant_window_refund(struct rk_tenant_window *w, const char *tenant,
                             const long long n[RK_TW_COUNTERS])
{
    add(w, tenant, n, -1);
}

void rk_tenant_window_charge(struct rk_tenant_window *w, const char *tenant,
                             const long long n[RK_TW_COUNTERS])
{
    add(w, tenant, n, 1);
}

/*
 * metrics.c - Prometheus text exposition for GET /metrics.
 *
 * Engine-side counters and histograms are C11 atomics (written by the engine
 * thread, read here); request counts by route and status are touched only
 * on the loop thread.
 */
#include "srv.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Upper bounds in seconds of the histogram buckets (the last is +Inf). */
static const double bounds[RK_HIST_BUCKETS] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                               0.05,   0.1,   0.25,   0.5,   1,    2.5,
                                               5,      10,    30,     1e300};

void rk_hist_observe(struct rk_hist *h, double seconds)
{
    int i = 0;
    while (i < RK_HIST_BUCKETS - 1 && seconds > bounds[i])
        i++;
    atomic_fetch_add_explicit(&h->le[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_us, (uint64_t)(seconds * 1e6), memory_order_relaxed);
}

void rk_metrics_count_request(struct rk_metrics *m, const char *route, int status)
{
    for (size_t i = 0; i < m->n_by_route; i++)
        if (m->by_route[i].status == status && !strcmp(m->by_route[i].route, route)) {
            m->by_route[i].n++;
            return;
        }
    if (m->n_by_route == m->cap_by_route) {
        size_t nc = m->cap_by_route ? m->cap_by_route * 2 : 32;
        void *p = realloc(m->by_route, nc * sizeof *m->by_route);
        if (!p)
            return;
        m->by_route = p;
        m->cap_by_route = nc;
    }
    m->by_route[m->n_by_route++] = (struct rk_route_count){route, status, 1};
}

void rk_metrics_free(struct rk_metrics *m)
{
    free(m->by_route);
    m->by_route = NULL;
    m->n_by_route = m->cap_by_route = 0;
}

static void hist(struct rk_buf *o, const char *name, const char *help, struct rk_hist *h)
{
    rk_buf_printf(o, "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    uint64_t cum = 0;
    for (int i = 0; i < RK_HIST_BUCKETS; i++) {
        cum += atomic_load_explicit(&h->le[i], memory_order_relaxed);
        if (i == RK_HIST_BUCKETS - 1)
            rk_buf_printf(o, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)cum);
        else
            rk_buf_printf(o, "%s_bucket{le=\"%g\"} %llu\n", name, bounds[i],
                          (unsigned long long)cum);
    }
    rk_buf_printf(o, "%s_sum %.6f\n%s_count %llu\n", name,
                  (double)atomic_load(&h->sum_us) / 1e6, name,
                  (unsigned long long)atomic_load(&h->count));
}

static void counter(struct rk_buf *o, const char *name, const char *help, const char *type,
                    double v)
{
    rk_buf_printf(o, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", name, help, name, type, name, v);
}

void rk_metrics_render(struct rk_srv *srv, struct rk_buf *o)
{
    struct rk_metrics *m = &srv->metrics;
    rk_buf_puts(o, "# HELP rwkvd_http_requests_total HTTP requests by route and status.\n"
                   "# TYPE rwkvd_http_requests_total counter\n");
    for (size_t i = 0; i < m->n_by_route; i++)
        rk_buf_printf(o, "rwkvd_http_requests_total{route=\"%s\",code=\"%d\"} %llu\n",
                      m->by_route[i].route, m->by_route[i].status,
                      (unsigned long long)m->by_route[i].n);
    counter(o, "rwkvd_prompt_tokens_total", "Prompt tokens processed.", "counter",
            (double)atomic_load(&m->tokens_in));
    counter(o, "rwkvd_generated_tokens_total", "Tokens generated.", "counter",
            (double)atomic_load(&m->tokens_out));
    counter(o, "rwkvd_engine_steps_total", "Engine steps (batched decode passes).", "counter",
            (double)atomic_load(&m->steps));
    counter(o, "rwkvd_sequences_started_total", "Sequences admitted.", "counter",
            (double)atomic_load(&m->seqs_started));
    counter(o, "rwkvd_sequences_canceled_total", "Sequences stopped by a disconnect, deadline "
            "or shutdown.", "counter", (double)atomic_load(&m->seqs_canceled));
    counter(o, "rwkvd_judge_calls_total", "best_of judge calls started.", "counter",
            (double)atomic_load(&srv->judge_calls));
    counter(o, "rwkvd_judge_failures_total", "best_of requests failed by their judge.",
            "counter", (double)atomic_load(&srv->judge_errors));
    counter(o, "rwkvd_judge_tokens_total", "Judge tokens (as the judge reports them).",
            "counter", (double)atomic_load(&srv->judge_tokens));
    counter(o, "rwkvd_teacher_answers_total", "Teacher answers of observer jobs fetched from "
            "the teacher.", "counter", (double)atomic_load(&srv->teacher_calls));
    counter(o, "rwkvd_teacher_cached_total", "Teacher answers of observer jobs read from their "
            "cache file.", "counter", (double)atomic_load(&srv->teacher_cached));
    counter(o, "rwkvd_teacher_failures_total", "Teacher calls of observer jobs that failed.",
            "counter", (double)atomic_load(&srv->teacher_errors));
    counter(o, "rwkvd_rl_judge_answers_total", "Judge answers of rl jobs fetched from the "
            "judge.", "counter", (double)atomic_load(&srv->rl_judge_calls));
    counter(o, "rwkvd_rl_judge_cached_total", "Judge answers of rl jobs read from their cache "
            "file.", "counter", (double)atomic_load(&srv->rl_judge_cached));
    counter(o, "rwkvd_rl_judge_failures_total", "Judge calls of rl jobs that failed.",
            "counter", (double)atomic_load(&srv->rl_judge_errors));
    counter(o, "rwkvd_queue_depth", "Requests waiting for a sequence slot.", "gauge",
            srv->engine ? rk_engine_queued(srv->engine) : 0);
    counter(o, "rwkvd_active_sequences", "Sequences in prefill or decode.", "gauge",
            srv->engine ? rk_engine_active(srv->engine) : 0);
    counter(o, "rwkvd_open_connections", "Open HTTP connections.", "gauge", srv->n_conns);
    counter(o, "rwkvd_generation_jobs_live", "Generation requests held in memory (waiting, "
            "running, or with output not yet sent).", "gauge", (double)rk_jobs_live());
    counter(o, "rwkvd_connections_evicted_total",
            "Idle connections closed to make room at --conn-limit.", "counter",
            srv->n_conns_evicted);
    counter(o, "rwkvd_connections_refused_total",
            "Connections answered 503 at --conn-limit (nothing idle to evict).", "counter",
            srv->n_conns_refused);
    counter(o, "rwkvd_connections_reaped_total",
            "Idle connections closed because the client had gone.", "counter",
            srv->n_conns_reaped);
    hist(o, "rwkvd_time_to_first_token_seconds", "Time from submission to the first token.",
         &m->ttft);
    hist(o, "rwkvd_token_latency_seconds", "Time between consecutive tokens of a sequence.",
         &m->token_latency);
    hist(o, "rwkvd_engine_step_seconds", "Duration of one engine step.", &m->step_time);
    hist(o, "rwkvd_request_duration_seconds", "Duration of generation requests.",
         &m->request_time);
    uint64_t cn = atomic_load(&m->copy_count);
    counter(o, "rwkvd_adapter_copy_seconds_sum", "Total time spent copying adapter states into "
            "sequences.", "counter", (double)atomic_load(&m->copy_us_sum) / 1e6);
    counter(o, "rwkvd_adapter_copy_total", "Adapter state copies.", "counter", (double)cn);
    if (srv->store) {
        struct rk_store_stats st;
        rk_store_stats(srv->store, &st);
        counter(o, "rwkvd_adapter_cache_hits_total", "Adapter cache hits.", "counter",
                (double)st.hits);
        counter(o, "rwkvd_adapter_cache_misses_total", "Adapter cache misses.", "counter",
                (double)st.misses);
        counter(o, "rwkvd_adapter_cache_evictions_total", "Adapter cache evictions.", "counter",
                (double)st.evictions);
        counter(o, "rwkvd_adapter_cache_bytes", "Bytes of adapter states in the cache.", "gauge",
                (double)st.bytes);
        counter(o, "rwkvd_adapter_cache_entries", "Adapter versions in the cache.", "gauge",
                (double)st.entries);
    }
}

/*
 * method_observer.c - the "observer" tuning method: distillation of a
 * teacher endpoint into the initial state. The parameters, the state and
 * the gradient are those of "standard"; the difference is the loss. The
 * host (the jobs worker, `rwkvd tune`) asks the teacher for completions of
 * the prompts, trains on prompt + answer and, where the teacher gave top-k
 * log-probabilities over the student's vocabulary, fills a struct
 * rk_observer_targets that the run carries in p->method_data. At a position
 * with a teacher distribution the loss is KL(q || s), where q is the
 * teacher's top-k renormalised with one "rest" bin for the mass it did not
 * list, and s the student's softmax folded into the same bins; at every
 * other selected position (or without targets at all: a teacher that gave
 * text only) it is the cross-entropy of the next token. docs/TUNING.md
 * states the formula and its gradient.
 */
#include "method_standard.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define OBS_TOP_MAX 64 /* entries per position a target may hold */

struct obs_seq {
    struct rk_loss_span span; /* first: a struct rk_loss_table entry */
    int k;                    /* entries per position */
    uint32_t *ids;    /* [n_pos * k], UINT32_MAX = unused */
    float *q;         /* [n_pos * k] */
    float *rest;      /* [n_pos] */
};

struct rk_observer_targets {
    struct rk_loss_table tab; /* first (rk_loss_table_new); of struct obs_seq */
};

int rk_observer_targets_create(size_t n_seq, struct rk_observer_targets **out)
{
    *out = rk_loss_table_new(sizeof **out, n_seq, sizeof(struct obs_seq));
    return *out ? RK_OK : RK_ENOMEM;
}

static void seq_clear(void *entry)
{
    struct obs_seq *s = entry;
    free(s->ids), free(s->q), free(s->rest);
    memset(s, 0, sizeof *s);
}

void rk_observer_targets_free(struct rk_observer_targets *o)
{
    rk_loss_table_free(o, seq_clear);
}

size_t rk_observer_targets_positions(const struct rk_observer_targets *o)
{
    size_t n = 0;
    for (size_t i = 0; o && i < o->tab.n; i++)
        n += ((const struct obs_seq *)rk_loss_table_entry(&o->tab, i))->span.n_pos;
    return n;
}

int rk_observer_targets_set(struct rk_observer_targets *o, size_t seq, size_t t0, size_t n_pos,
                            int k, const uint32_t *ids, const double *lps, struct rk_errbuf *eb)
{
    if (!o || seq >= o->tab.n || k < 1 || k > OBS_TOP_MAX || !n_pos || !ids || !lps)
        return rk_errbuf_set(eb, RK_EINVAL, "observer: bad target arguments");
    struct obs_seq s = {{t0, n_pos}, k, malloc(n_pos * (size_t)k * sizeof(uint32_t)),
                        malloc(n_pos * (size_t)k * sizeof(float)), malloc(n_pos * sizeof(float))};
    if (!s.ids || !s.q || !s.rest) {
        seq_clear(&s);
        return rk_errbuf_set(eb, RK_ENOMEM, "observer: out of memory");
    }
    for (size_t p = 0; p < n_pos; p++) {
        uint32_t *pi = s.ids + p * (size_t)k;
        float *pq = s.q + p * (size_t)k;
        double pr[OBS_TOP_MAX], sum = 0;
        int n = 0;
        for (int i = 0; i < k; i++) {
            double lp = lps[p * (size_t)k + (size_t)i];
            uint32_t id = ids[p * (size_t)k + (size_t)i];
            if (lp == -INFINITY || id == UINT32_MAX)
                continue;
            if (!(lp <= 1e-3) || isnan(lp)) {
                seq_clear(&s);
                return rk_errbuf_set(eb, RK_EFORMAT,
                                     "observer: log-probability %g at answer position %zu is "
                                     "not a log-probability (<= 0)", lp, p);
            }
            double x = exp(lp < 0 ? lp : 0);
            int j = 0;
            while (j < n && pi[j] != id)
                j++;
            if (j == n) {
                pi[n] = id;
                pr[n++] = 0;
            }
            pr[j] += x;
            sum += x;
        }
        if (sum > 1.01) {
            seq_clear(&s);
            return rk_errbuf_set(eb, RK_EFORMAT,
                                 "observer: the top-k probabilities at answer position %zu sum "
                                 "to %.4g, more than 1", p, sum);
        }
        double z = sum > 1 ? sum : 1;
        for (int j = 0; j < n; j++)
            pq[j] = (float)(pr[j] / z);
        for (int j = n; j < k; j++) {
            pi[j] = UINT32_MAX;
            pq[j] = 0;
        }
        s.rest[p] = (float)((sum < 1 ? 1 - sum : 0) / z);
    }
    struct obs_seq *e = rk_loss_table_entry(&o->tab, seq);
    seq_clear(e);
    *e = s;
    return RK_OK;
}

double rk_observer_kl_row(float *lg, int V, const uint32_t *ids, const float *q, int k,
                          float q_rest, size_t nsel)
{
    bool nan;
    double lse = rk_row_lse(lg, V, &nan);
    /* the listed bins: P = softmax at their ids */
    double pk[OBS_TOP_MAX], sk = 0, loss = 0;
    for (int i = 0; i < k; i++) {
        pk[i] = 0;
        if (ids[i] == UINT32_MAX || ids[i] >= (uint32_t)V)
            continue;
        double lp = (double)lg[ids[i]] - lse;
        pk[i] = exp(lp);
        sk += pk[i];
        if (q[i] > 0)
            loss += (double)q[i] * (log((double)q[i]) - lp);
    }
    double s_rest = 1 - sk;
    if (s_rest < 1e-30)
        s_rest = 1e-30;
    if (q_rest > 0)
        loss += (double)q_rest * (log((double)q_rest) - log(s_rest));
    /* dKL/dz_v = P_v (1 - q_b / s_b) for v in bin b; the listed bins hold one
     * token each, so there it is P_v - q_i */
    double rest_f = 1 - (double)q_rest / s_rest, inv = 1.0 / (double)nsel;
    for (int v = 0; v < V; v++)
        lg[v] = (float)(exp((double)lg[v] - lse) * rest_f * inv);
    for (int i = 0; i < k; i++)
        if (ids[i] != UINT32_MAX && ids[i] < (uint32_t)V)
            lg[ids[i]] = (float)((pk[i] - (double)q[i]) * inv);
    return nan ? NAN : loss;
}

static double obs_loss(float *logits, int V, size_t t, uint32_t target, size_t nsel, void *user)
{
    const struct rk_tune_loss_ctx *lc = user;
    const struct rk_observer_targets *o = lc && lc->p ? lc->p->method_data : NULL;
    size_t p;
    const struct obs_seq *s = o && lc->ds ? rk_loss_table_at(&o->tab, lc, t, &p) : NULL;
    if (s)
        return rk_observer_kl_row(logits, V, s->ids + p * (size_t)s->k, s->q + p * (size_t)s->k,
                                  s->k, s->rest[p], nsel);
    return rk_loss_xent(logits, V, t, target, nsel, user);
}

/* "standard" with its own loss */
RK_METHOD_STANDARD_WITH_LOSS(rk_method_observer, "observer",
                             "distillation from a teacher endpoint: KL to its top-k "
                             "log-probabilities, or cross-entropy on its answers",
                             obs_loss)

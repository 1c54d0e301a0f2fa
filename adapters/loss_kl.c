/*
 * loss_kl.c - collateral protection: the base model's next-token
 * distributions over generic text (rk_kl_ref, built once per tuning run) and
 * the loss hook rk_loss_kl_ref, which rk_tune_run hands to rk_backward_seq
 * for the generic sequences (the same backward as every other loss; only
 * the hook differs). Relies on core's forward (rk_forward_seq) and on the
 * dataset's sequences; see rk_adapters.h for the formulas and docs/TUNING.md
 * for the memory and the choice of k.
 */
#include "rk_adapters.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct rk_kl_ref {
    int V, k;
    size_t n_seq;
    size_t *row0;  /* [n_seq + 1]: the rows of sequence s are row0[s] .. row0[s+1]-1 */
    uint32_t *ids; /* [rows][k], each row ascending */
    float *p;      /* [rows][k] base probabilities of ids */
    float *rest;   /* [rows] base mass outside ids */
};

void rk_kl_ref_free(struct rk_kl_ref *r)
{
    if (!r)
        return;
    free(r->row0), free(r->ids), free(r->p), free(r->rest);
    free(r);
}

size_t rk_kl_ref_bytes(const struct rk_kl_ref *r)
{
    size_t rows = r->row0[r->n_seq];
    return rows * (size_t)r->k * (sizeof(uint32_t) + sizeof(float)) + rows * sizeof(float) +
           (r->n_seq + 1) * sizeof(size_t);
}

/* --- building ------------------------------------------------------------- */

/* Sift-down of a min-heap of ids ordered by z (ties: the larger id is
 * "smaller", so the smaller id wins a tie and the selection is unique). */
static bool heap_less(const float *z, uint32_t a, uint32_t b)
{
    return z[a] < z[b] || (z[a] == z[b] && a > b);
}

static void heap_down(uint32_t *h, int n, int i, const float *z)
{
    for (;;) {
        int l = 2 * i + 1, m = i;
        if (l < n && heap_less(z, h[l], h[m]))
            m = l;
        if (l + 1 < n && heap_less(z, h[l + 1], h[m]))
            m = l + 1;
        if (m == i)
            return;
        uint32_t t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

/* One row: the k largest logits of z [V], their probabilities and the rest. */
static int reduce_row(const float *z, int V, int k, uint32_t *ids, float *p, float *rest)
{
    double mx = -INFINITY;
    for (int j = 0; j < V; j++)
        mx = z[j] > mx ? z[j] : mx;
    double sum = 0;
    for (int j = 0; j < V; j++)
        sum += exp((double)z[j] - mx);
    double lse = mx + log(sum);
    if (!isfinite(lse))
        return RK_ENUMERIC;
    for (int j = 0; j < k; j++)
        ids[j] = (uint32_t)j;
    for (int i = k / 2 - 1; i >= 0; i--)
        heap_down(ids, k, i, z);
    for (int j = k; j < V; j++)
        if (heap_less(z, ids[0], (uint32_t)j)) {
            ids[0] = (uint32_t)j;
            heap_down(ids, k, 0, z);
        }
    qsort(ids, (size_t)k, sizeof *ids, cmp_u32);
    for (int i = 0; i < k; i++)
        p[i] = (float)exp((double)z[ids[i]] - lse);
    /* the rest summed directly, not as 1 - kept (which cancels) */
    double r = 0;
    for (int j = 0, s = 0; j < V; j++) {
        if (s < k && ids[s] == (uint32_t)j) {
            s++;
            continue;
        }
        r += exp((double)z[j] - lse);
    }
    *rest = (float)r;
    return RK_OK;
}

enum { BUILD_CHUNK = 64 }; /* logits rows held at once: CHUNK * V floats */

int rk_kl_ref_build(struct rk_ctx *ctx, const struct rk_dataset *ds, int topk,
                    struct rk_kl_ref **out)
{
    *out = NULL;
    size_t n_seq = ds ? rk_dataset_len(ds) : 0;
    if (n_seq == 0 || topk < 1)
        return RK_EINVAL;
    const struct rk_model *m = rk_ctx_model(ctx);
    int V = rk_model_n_vocab(m);
    if (rk_dataset_vocab_used(ds) > (uint32_t)V)
        return RK_EINVAL;
    struct rk_kl_ref *r = calloc(1, sizeof *r);
    float *lg = NULL, *st = NULL;
    int rc = RK_ENOMEM;
    if (!r || !(r->row0 = malloc((n_seq + 1) * sizeof *r->row0)))
        goto out;
    r->V = V;
    r->k = topk < V ? topk : V;
    r->n_seq = n_seq;
    size_t rows = 0;
    for (size_t s = 0; s < n_seq; s++) {
        size_t n;
        rk_dataset_get(ds, s, NULL, NULL, &n);
        r->row0[s] = rows;
        rows += n - 1;
    }
    r->row0[n_seq] = rows;
    size_t k = (size_t)r->k;
    r->ids = malloc(rows * k * sizeof *r->ids);
    r->p = malloc(rows * k * sizeof *r->p);
    r->rest = malloc(rows * sizeof *r->rest);
    lg = malloc((size_t)BUILD_CHUNK * (size_t)V * sizeof *lg);
    st = malloc(rk_state_len(m) * sizeof *st);
    if (!r->ids || !r->p || !r->rest || !lg || !st)
        goto out;
    for (size_t s = 0; s < n_seq; s++) {
        const uint32_t *tok;
        size_t n;
        rk_dataset_get(ds, s, &tok, NULL, &n);
        memset(st, 0, rk_state_len(m) * sizeof *st);
        /* inputs tok[0 .. n-2]: row t predicts tok[t+1] */
        for (size_t t0 = 0; t0 + 1 < n; t0 += BUILD_CHUNK) {
            size_t c = n - 1 - t0 < BUILD_CHUNK ? n - 1 - t0 : BUILD_CHUNK;
            if ((rc = rk_forward_seq(ctx, tok + t0, c, st, lg, true)) != RK_OK)
                goto out;
            for (size_t i = 0; i < c; i++) {
                size_t row = r->row0[s] + t0 + i;
                rc = reduce_row(lg + i * (size_t)V, V, r->k, r->ids + row * k, r->p + row * k,
                                r->rest + row);
                if (rc != RK_OK)
                    goto out;
            }
        }
    }
    *out = r;
    r = NULL;
    rc = RK_OK;
out:
    rk_kl_ref_free(r);
    free(lg), free(st);
    return rc;
}

/* --- the loss hook ---------------------------------------------------------- */

double rk_loss_kl_ref(float *logits, int V, size_t t, uint32_t target, size_t nsel, void *user)
{
    (void)target;
    const struct rk_tune_loss_ctx *lc = user;
    const struct rk_kl_ref *r = lc ? lc->kl : NULL;
    if (!r || V != r->V || lc->seq >= r->n_seq || t >= r->row0[lc->seq + 1] - r->row0[lc->seq])
        return NAN; /* fails the step: the reference does not belong to this sequence */
    size_t row = r->row0[lc->seq] + t, k = (size_t)r->k;
    const uint32_t *ids = r->ids + row * k;
    const float *p = r->p + row * k;
    double rest = r->rest[row];
    double mx = -INFINITY;
    for (int j = 0; j < V; j++)
        mx = logits[j] > mx ? logits[j] : mx;
    double sum = 0;
    for (int j = 0; j < V; j++)
        sum += exp((double)logits[j] - mx);
    double lse = mx + log(sum);
    double loss = 0, q_rest = 0;
    for (size_t i = 0; i < k; i++)
        if (p[i] > 0)
            loss += (double)p[i] * (log((double)p[i]) - ((double)logits[ids[i]] - lse));
    for (int j = 0, s = 0; j < V; j++) {
        if ((size_t)s < k && ids[s] == (uint32_t)j) {
            s++;
            continue;
        }
        q_rest += exp((double)logits[j] - lse);
    }
    double fac = 1; /* d/dz_j for j outside S is q_j * fac */
    if (rest > 0) {
        double qr = q_rest > 1e-300 ? q_rest : 1e-300;
        loss += rest * (log(rest) - log(qr));
        fac = 1 - rest / qr;
    }
    const double inv = 1.0 / (double)nsel;
    for (int j = 0, s = 0; j < V; j++) {
        double q = exp((double)logits[j] - lse);
        if ((size_t)s < k && ids[s] == (uint32_t)j)
            logits[j] = (float)((q - (double)p[s++]) * inv);
        else
            logits[j] = (float)(q * fac * inv);
    }
    return loss;
}

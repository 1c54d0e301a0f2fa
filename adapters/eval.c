/*
 * eval.c - how a state adapter is judged: mean cross-entropy and perplexity
 * over token sequences, and multiple-choice accuracy by summed
 * log-likelihood of each choice given the prompt. Everything runs through
 * rk_forward_seq (all_logits) from a copy of the initial state.
 */
#include "rk_adapters.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define EVAL_CHUNK 32 /* tokens per rk_forward_seq call: bounds logits to [32][V] */

/* Feed tokens[0..n) from `st` (updated); add log p(tokens[t+1] | ..t) for
 * every t with want(t+1) into *ll. `first` (may be NULL) holds the logits
 * before tokens[0]: then tokens[0] is scored too (with want(0)). */
static int score_seq(struct rk_ctx *ctx, const uint32_t *tok, const uint8_t *mask, size_t n,
                     float *st, const struct rk_readout *ro, const float *first, float *logits,
                     size_t V, double *ll, size_t *cnt)
{
    if (first && (!mask || mask[0])) {
        *ll += rk_logprob(first, V, tok[0]);
        (*cnt)++;
    }
    /* the last token's logits are not needed */
    for (size_t t0 = 0; t0 + 1 < n; t0 += EVAL_CHUNK) {
        size_t nc = n - 1 - t0 < EVAL_CHUNK ? n - 1 - t0 : EVAL_CHUNK;
        int rc = rk_forward_seq_ro(ctx, tok + t0, nc, st, ro, logits, true);
        if (rc != RK_OK)
            return rc;
        for (size_t j = 0; j < nc; j++) {
            size_t t = t0 + j + 1;
            if (!mask || mask[t]) {
                *ll += rk_logprob(logits + j * V, V, tok[t]);
                (*cnt)++;
            }
        }
    }
    return RK_OK;
}

/* The carry of a read-out term: *buf (freed by the caller) gets its
 * carry_len floats, zero; `out` a copy of `ro` using it. */
static int ro_carry(const struct rk_readout *ro, struct rk_readout *out, float **buf)
{
    *buf = NULL;
    if (!ro || !ro->ops)
        return RK_OK;
    *out = *ro;
    out->carry = *buf = calloc(ro->ops->carry_len(ro->data) + 1, sizeof(float));
    return *buf ? RK_OK : RK_ENOMEM;
}

static int mc_item(struct rk_ctx *ctx, const struct rk_mc_item *it, const float *state,
                   const struct rk_readout *ro0, double *lls)
{
    const struct rk_model *m = rk_ctx_model(ctx);
    size_t slen = rk_state_len(m), V = (size_t)rk_model_n_vocab(m);
    float *st = malloc(slen * sizeof(float)), *st2 = malloc(slen * sizeof(float));
    float *last = malloc(V * sizeof(float)), *logits = malloc(EVAL_CHUNK * V * sizeof(float));
    struct rk_readout ro, ro2;
    float *cy = NULL, *cy2 = NULL;
    int rc = RK_ENOMEM;
    if (!st || !st2 || !last || !logits || ro_carry(ro0, &ro, &cy) || ro_carry(ro0, &ro2, &cy2))
        goto out;
    size_t clen = cy ? ro0->ops->carry_len(ro0->data) : 0;
    if (state)
        memcpy(st, state, slen * sizeof(float));
    else
        memset(st, 0, slen * sizeof(float));
    if ((rc = rk_forward_seq_ro(ctx, it->prompt, it->n_prompt, st, cy ? &ro : NULL, last,
                                false)) != RK_OK)
        goto out;
    for (size_t c = 0; c < it->n_choices; c++) {
        memcpy(st2, st, slen * sizeof(float));
        if (cy)
            memcpy(cy2, cy, clen * sizeof(float));
        double ll = 0;
        size_t cnt = 0;
        rc = score_seq(ctx, it->choices[c], NULL, it->n_choice[c], st2, cy2 ? &ro2 : NULL, last,
                       logits, V, &ll, &cnt);
        if (rc != RK_OK)
            goto out;
        lls[c] = ll;
    }
out:
    free(st), free(st2), free(last), free(logits), free(cy), free(cy2);
    return rc;
}

int rk_eval_mc_item(struct rk_ctx *ctx, const struct rk_mc_item *it, const float *state,
                    double *lls)
{
    return mc_item(ctx, it, state, NULL, lls);
}

int rk_eval_run(struct rk_ctx *ctx, const struct rk_dataset *d, const float *state,
                rk_cancel_cb *cancel, void *cancel_user, struct rk_eval_result *out)
{
    return rk_eval_run_ro(ctx, d, state, NULL, cancel, cancel_user, out);
}

int rk_eval_run_ro(struct rk_ctx *ctx, const struct rk_dataset *d, const float *state,
                   const struct rk_readout *ro0, rk_cancel_cb *cancel, void *cancel_user,
                   struct rk_eval_result *out)
{
    memset(out, 0, sizeof *out);
    out->loss = out->ppl = out->accuracy = NAN;
    const struct rk_model *m = rk_ctx_model(ctx);
    size_t slen = rk_state_len(m), V = (size_t)rk_model_n_vocab(m);
    if (rk_dataset_vocab_used(d) > V)
        return RK_ERANGE;
    float *st = malloc(slen * sizeof(float)), *logits = malloc(EVAL_CHUNK * V * sizeof(float));
    double *lls = NULL;
    struct rk_readout ro;
    float *cy = NULL;
    int rc = RK_ENOMEM;
    if (!st || !logits || ro_carry(ro0, &ro, &cy))
        goto out;
    double ll = 0;
    size_t cnt = 0;
    for (size_t i = 0; i < rk_dataset_len(d); i++) {
        if (cancel && cancel(cancel_user)) {
            rc = RK_ECANCELED;
            goto out;
        }
        const uint32_t *tok;
        const uint8_t *mask;
        size_t n;
        rk_dataset_get(d, i, &tok, &mask, &n);
        if (state)
            memcpy(st, state, slen * sizeof(float));
        else
            memset(st, 0, slen * sizeof(float));
        if (cy)
            memset(cy, 0, ro0->ops->carry_len(ro0->data) * sizeof(float));
        if ((rc = score_seq(ctx, tok, mask, n, st, cy ? &ro : NULL, NULL, logits, V, &ll,
                            &cnt)) != RK_OK)
            goto out;
        out->n_seq++;
    }
    out->n_targets = cnt;
    if (cnt) {
        out->loss = -ll / (double)cnt;
        out->ppl = exp(out->loss);
    }
    for (size_t i = 0; i < rk_dataset_n_mc(d); i++) {
        if (cancel && cancel(cancel_user)) {
            rc = RK_ECANCELED;
            goto out;
        }
        struct rk_mc_item it;
        rk_dataset_get_mc(d, i, &it);
        double *p = realloc(lls, it.n_choices * sizeof *lls);
        if (!p) {
            rc = RK_ENOMEM;
            goto out;
        }
        lls = p;
        if ((rc = mc_item(ctx, &it, state, ro0, lls)) != RK_OK)
            goto out;
        size_t best = 0;
        for (size_t c = 1; c < it.n_choices; c++)
            if (lls[c] > lls[best])
                best = c;
        out->n_mc++;
        out->n_mc_correct += best == it.answer;
    }
    if (out->n_mc)
        out->accuracy = (double)out->n_mc_correct / (double)out->n_mc;
    rc = RK_OK;
out:
    free(st), free(logits), free(lls), free(cy);
    return rc;
}

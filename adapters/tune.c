/*
 * tune.c - the tuning driver (rk_tune_run). Method "standard": Adam(W) on the
 * initial state of a frozen model. Each step takes `batch` sequences in a
 * seeded per-epoch order, gets dLoss/dstate0 of each from rk_backward_seq,
 * averages them weighted by the number of scored positions (so the step's
 * loss is the token mean over the batch), clips the norm and updates the
 * wkv parts (and the token shifts when asked). Validation loss every
 * eval_every steps drives early stopping and the choice of the returned
 * state. The step counter, the state, the Adam moments and the best state
 * are all a resumed job needs: the data order is a function of (seed, step).
 */
#include "rk_adapters.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void rk_tune_params_default(struct rk_tune_params *p)
{
    memset(p, 0, sizeof *p);
    p->method = RK_TUNE_STANDARD;
    p->steps = 100;
    p->batch = 4;
    p->lr = 1.0;
    p->lr_final = 0.01;
    p->warmup = 10;
    p->decay = RK_LR_COSINE;
    p->beta1 = 0.9;
    p->beta2 = 0.99;
    p->eps = 1e-8;
    p->weight_decay = 0;
    p->clip_norm = 1.0;
    p->tune_shift = false;
    p->seed = 0;
    p->val_split = 0.1;
    p->eval_every = 10;
    p->patience = 0;
    p->seq_len_max = 0;
    p->bptt_checkpoint = 16;
    p->n_threads = 0;
    p->checkpoint_every = 0;
}

int rk_tune_method_parse(const char *s, enum rk_tune_method *out)
{
    if (s && strcmp(s, "standard") == 0) {
        *out = RK_TUNE_STANDARD;
        return RK_OK;
    }
    return RK_EINVAL;
}

const char *rk_tune_method_name(enum rk_tune_method m)
{
    return m == RK_TUNE_STANDARD ? "standard" : "unknown";
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The training order: epoch e visits the sequences in a permutation drawn
 * from (seed, e); sample g of the run is position g % n of epoch g / n. */
struct order {
    size_t n;
    size_t *perm;
    long epoch; /* the epoch perm holds, -1 = none */
    uint64_t seed;
};

static size_t order_at(struct order *o, long g)
{
    long e = g / (long)o->n;
    if (e != o->epoch) {
        for (size_t i = 0; i < o->n; i++)
            o->perm[i] = i;
        uint64_t rng = o->seed * 0x9e3779b97f4a7c15ull + (uint64_t)e * 0xd1b54a32d192ed03ull + 1;
        rk_shuffle(o->perm, o->n, &rng);
        o->epoch = e;
    }
    return o->perm[g % (long)o->n];
}

static int check_params(const struct rk_tune_params *p)
{
    if (p->method != RK_TUNE_STANDARD || p->steps < 1 || p->batch < 1 || !(p->lr > 0) ||
        !(p->lr_final >= 0) || p->warmup < 0 || !(p->beta1 >= 0 && p->beta1 < 1) ||
        !(p->beta2 >= 0 && p->beta2 < 1) || !(p->eps > 0) || !(p->weight_decay >= 0) ||
        !(p->clip_norm >= 0) || !(p->val_split >= 0 && p->val_split < 1) ||
        p->eval_every < 0 || p->patience < 0 || p->bptt_checkpoint < 0 ||
        p->checkpoint_every < 0 || p->n_threads < 0 ||
        (p->seq_len_max != 0 && p->seq_len_max < 2))
        return RK_EINVAL;
    return RK_OK;
}

/* Validation loss of `st` over `val` (sequences only). */
static int val_loss(struct rk_ctx *ctx, const struct rk_dataset *val, const float *st,
                    rk_cancel_cb *cancel, void *user, double *out)
{
    struct rk_eval_result er;
    int rc = rk_eval_run(ctx, val, st, cancel, user, &er);
    *out = er.loss;
    if (rc == RK_OK && !isfinite(er.loss))
        rc = RK_ENUMERIC;
    return rc;
}

int rk_tune_run(const struct rk_model *m, const struct rk_tune_params *p,
                const struct rk_dataset *ds, const float *init, rk_cancel_cb *cancel,
                rk_tune_progress_cb *progress, void *user, float *out,
                struct rk_tune_result *res)
{
    struct rk_tune_result rdummy;
    if (!res)
        res = &rdummy;
    memset(res, 0, sizeof *res);
    res->val_loss_init = res->val_loss_best = NAN;
    res->loss_last = NAN;
    if (!m || !p || !ds || !out)
        return RK_EINVAL;
    int rc = check_params(p);
    if (rc != RK_OK)
        return rc;
    if (rk_dataset_len(ds) == 0 || rk_dataset_vocab_used(ds) > (uint32_t)rk_model_n_vocab(m))
        return RK_EINVAL;
    const size_t slen = rk_state_len(m);
    if (p->resume && p->resume->len != slen)
        return RK_EMISMATCH;
    struct rk_state_layout lay;
    rk_state_layout(m, &lay);
    const int L = rk_model_n_layer(m);

    struct rk_dataset *train_own = NULL, *val = NULL;
    const struct rk_dataset *train = ds;
    struct rk_ctx *ctx = NULL;
    float *st = NULL, *grad = NULL, *gacc = NULL, *mom = NULL, *var = NULL, *best = NULL;
    uint32_t *tgt = NULL;
    uint8_t *msk = NULL;
    struct order ord = {0};

    if (p->val_split > 0 && rk_dataset_len(ds) >= 2) {
        if ((rc = rk_dataset_split(ds, p->val_split, p->seed, &train_own, &val)) != RK_OK)
            goto out;
        train = train_own;
    }
    size_t len_max = 0;
    for (size_t i = 0; i < rk_dataset_len(train); i++) {
        size_t n;
        rk_dataset_get(train, i, NULL, NULL, &n);
        len_max = n > len_max ? n : len_max;
    }
    if (p->seq_len_max && len_max > p->seq_len_max)
        len_max = p->seq_len_max;

    struct rk_ctx_params cp = {.n_threads = p->n_threads};
    if ((rc = rk_ctx_create(m, &cp, &ctx)) != RK_OK)
        goto out;
    rc = RK_ENOMEM;
    st = malloc(slen * sizeof(float));
    grad = malloc(slen * sizeof(float));
    gacc = malloc(slen * sizeof(float));
    mom = calloc(slen, sizeof(float));
    var = calloc(slen, sizeof(float));
    best = malloc(slen * sizeof(float));
    tgt = malloc(len_max * sizeof(uint32_t));
    msk = malloc(len_max);
    ord.n = rk_dataset_len(train);
    ord.perm = malloc(ord.n * sizeof(size_t));
    ord.epoch = -1;
    ord.seed = p->seed;
    if (!st || !grad || !gacc || !mom || !var || !best || !tgt || !msk || !ord.perm)
        goto out;

    long step = 0;
    double best_val = INFINITY;
    int bad_evals = 0;
    if (init)
        memcpy(st, init, slen * sizeof(float));
    else
        memset(st, 0, slen * sizeof(float));
    memcpy(best, st, slen * sizeof(float));
    if (p->resume) {
        const struct rk_tune_checkpoint *r = p->resume;
        memcpy(st, r->state, slen * sizeof(float));
        memcpy(mom, r->m, slen * sizeof(float));
        memcpy(var, r->v, slen * sizeof(float));
        memcpy(best, r->best ? r->best : r->state, slen * sizeof(float));
        step = r->step;
        res->steps_done = step;
        best_val = r->best_val;
        bad_evals = r->bad_evals;
    }
    if (val && !p->resume) {
        if ((rc = val_loss(ctx, val, st, cancel, user, &best_val)) != RK_OK)
            goto out;
        res->val_loss_init = best_val;
        res->best_step = 0;
    }
    res->val_loss_best = val ? best_val : NAN;

    struct rk_lr_schedule sched = {p->lr, p->lr_final, p->warmup, p->steps, p->decay};
    struct rk_adamw_params ap = {0, p->beta1, p->beta2, p->eps, p->weight_decay};
    struct rk_backward_params bp = {.checkpoint_every = p->bptt_checkpoint};
    double t_start = now_s(), t_compute = 0;
    size_t tokens = 0;

    while (step < p->steps) {
        double t0 = now_s();
        memset(gacc, 0, slen * sizeof(float));
        double loss_sum = 0;
        size_t k_sum = 0;
        for (int bi = 0; bi < p->batch; bi++) {
            if (cancel && cancel(user)) {
                rc = RK_ECANCELED;
                goto out;
            }
            const uint32_t *tok;
            const uint8_t *mask;
            size_t n;
            rk_dataset_get(train, order_at(&ord, step * p->batch + bi), &tok, &mask, &n);
            if (p->seq_len_max && n > p->seq_len_max)
                n = p->seq_len_max;
            /* inputs tok[0..n-2] predict tok[1..n-1] */
            size_t k = 0;
            for (size_t t = 0; t + 1 < n; t++) {
                tgt[t] = tok[t + 1];
                msk[t] = mask[t + 1];
                k += mask[t + 1] != 0;
            }
            if (k == 0)
                continue;
            double l;
            rc = rk_backward_seq(ctx, &bp, tok, tgt, msk, n - 1, st, &l, grad, cancel, user);
            if (rc != RK_OK)
                goto out;
            const float wgt = (float)k;
            for (size_t i = 0; i < slen; i++)
                gacc[i] += wgt * grad[i];
            loss_sum += l * (double)k;
            k_sum += k;
            tokens += n - 1;
        }
        double loss = k_sum ? loss_sum / (double)k_sum : 0;
        if (k_sum) {
            const float inv = (float)(1.0 / (double)k_sum);
            for (size_t i = 0; i < slen; i++)
                gacc[i] *= inv;
        }
        if (!p->tune_shift)
            for (int l = 0; l < L; l++) {
                float *g = gacc + (size_t)l * lay.layer_stride;
                memset(g + lay.att_shift, 0, lay.shift_len * sizeof(float));
                memset(g + lay.ffn_shift, 0, lay.shift_len * sizeof(float));
            }
        double gnorm = rk_grad_norm(gacc, slen);
        res->loss_last = loss;
        if (!isfinite(loss) || !isfinite(gnorm)) {
            rk_log(RK_LOG_WARN, "tune: non-finite %s at step %ld",
                   isfinite(loss) ? "gradient" : "loss", step + 1);
            res->steps_done = step;
            rc = RK_ENUMERIC;
            goto out;
        }
        ap.lr = rk_lr_at(&sched, step);
        double scale = rk_clip_scale(gnorm, p->clip_norm);
        if (p->tune_shift) {
            rk_adamw_update(st, gacc, mom, var, slen, step + 1, &ap, scale);
        } else {
            for (int l = 0; l < L; l++) {
                size_t o = (size_t)l * lay.layer_stride + lay.wkv;
                rk_adamw_update(st + o, gacc + o, mom + o, var + o, lay.wkv_len, step + 1, &ap,
                                scale);
            }
        }
        step++;
        res->steps_done = step;
        t_compute += now_s() - t0;
        struct rk_tune_progress pr = {
            .step = step,
            .steps = p->steps,
            .loss = loss,
            .grad_norm = gnorm,
            .lr = ap.lr,
            .val_loss = NAN,
            .tokens_per_s = t_compute > 0 ? (double)tokens / t_compute : 0,
            .tokens = tokens,
            .elapsed_s = now_s() - t_start,
        };
        if (progress)
            progress(&pr, user);
        bool stop = false;
        if (val && p->eval_every && (step % p->eval_every == 0 || step == p->steps)) {
            double vl;
            if ((rc = val_loss(ctx, val, st, cancel, user, &vl)) != RK_OK)
                goto out;
            if (vl < best_val) {
                best_val = vl;
                memcpy(best, st, slen * sizeof(float));
                res->best_step = step;
                bad_evals = 0;
            } else {
                bad_evals++;
            }
            res->val_loss_best = best_val;
            pr.val_loss = vl;
            pr.elapsed_s = now_s() - t_start;
            if (progress)
                progress(&pr, user);
            if (p->patience && bad_evals >= p->patience) {
                res->stopped_early = true;
                stop = true;
            }
        }
        if (p->checkpoint_cb &&
            ((p->checkpoint_every && step % p->checkpoint_every == 0) || stop ||
             step == p->steps)) {
            struct rk_tune_checkpoint ck = {step, slen, st, mom, var, best, best_val, bad_evals};
            if ((rc = p->checkpoint_cb(&ck, user)) != RK_OK)
                goto out;
        }
        if (stop)
            break;
    }
    res->tokens_per_s = t_compute > 0 ? (double)tokens / t_compute : 0;
    memcpy(out, val ? best : st, slen * sizeof(float));
    rc = RK_OK;
out:
    rk_ctx_free(ctx);
    rk_dataset_free(train_own);
    rk_dataset_free(val);
    free(st), free(grad), free(gacc), free(mom), free(var), free(best), free(tgt), free(msk);
    free(ord.perm);
    return rc;
}

/*
 * tune.c - the tuning driver (rk_tune_run), the same for every method of
 * the table in methods.c. Adam(W) on the method's parameters with the
 * model frozen. Each step takes `batch` sequences in a seeded per-epoch
 * order, turns the parameters into the initial state, gets dLoss/dstate0
 * of each sequence from rk_backward_seq (with the method's loss), averages
 * them weighted by the number of scored positions (so the step's loss is
 * the token mean over the batch), carries the mean back to the parameters,
 * clips the norm and updates the method's trainable spans. Validation loss
 * every eval_every steps drives early stopping and the choice of the
 * returned parameters. With kl_weight > 0 each step also runs kl_batch
 * generic sequences through the same backward with the KL hook of
 * loss_kl.c and adds kl_weight times their gradient. The step counter, the parameters, the Adam moments
 * and the best parameters are all a resumed job needs: the data order is a
 * function of (seed, step).
 */
#include "rk_adapters.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void rk_tune_params_default(struct rk_tune_params *p)
{
    memset(p, 0, sizeof *p);
    p->method = rk_tune_method_default();
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
    p->kl_weight = 0;
    p->kl_topk = 64;
    p->kl_batch = 1;
    p->kl_data = NULL;
    p->kernel_m = 256;
    p->kernel_sigma = 0.5;
    p->kernel_seed = 0;
    p->kernel_fade = RK_FADE_MEAN;
    p->dbp_lr = 1e-3;
    p->rl_k = 4;
    p->rl_temperature = 1.0;
    p->rl_max_tokens = 32;
    p->rl_kl = 0.05;
}

const struct rk_tune_method *rk_tune_params_method(const struct rk_tune_params *p)
{
    return p && p->method ? p->method : rk_tune_method_default();
}

size_t rk_tune_params_len(const struct rk_model *m, const struct rk_tune_params *p)
{
    return rk_tune_params_method(p)->params_len(m, p);
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

int rk_tune_params_check(const struct rk_tune_params *p)
{
    if (p->steps < 1 || p->batch < 1 || !(p->lr > 0) ||
        !(p->lr_final >= 0) || p->warmup < 0 || !(p->beta1 >= 0 && p->beta1 < 1) ||
        !(p->beta2 >= 0 && p->beta2 < 1) || !(p->eps > 0) || !(p->weight_decay >= 0) ||
        !(p->clip_norm >= 0) || !(p->val_split >= 0 && p->val_split < 1) ||
        p->eval_every < 0 || p->patience < 0 || p->bptt_checkpoint < 0 ||
        p->checkpoint_every < 0 || p->n_threads < 0 ||
        (p->seq_len_max != 0 && p->seq_len_max < 2) || !(p->kl_weight >= 0) ||
        !isfinite(p->kl_weight) || p->kernel_m < 1 || p->kernel_m > RK_KERNEL_M_MAX ||
        !(p->kernel_sigma > 0) ||
        (p->kernel_fade != RK_FADE_MEAN && p->kernel_fade != RK_FADE_NONE) || !(p->dbp_lr >= 0))
        return RK_EINVAL;
    if (p->kl_weight > 0 &&
        (p->kl_topk < 1 || p->kl_batch < 1 || !p->kl_data || rk_dataset_len(p->kl_data) == 0))
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

/* --- one run ---------------------------------------------------------------- */

/* Everything a run computes with. Parameter-sized arrays are [plen]; state-
 * sized ones [slen]. */
struct run {
    const struct rk_model *m;
    const struct rk_tune_params *p;
    const struct rk_tune_method *meth;
    rk_cancel_cb *cancel;
    rk_tune_progress_cb *progress;
    void *user;
    struct rk_tune_result *res;
    size_t slen, plen;
    struct rk_dataset *train_own, *val; /* the split (NULL without one) */
    const struct rk_dataset *train;
    struct rk_ctx *ctx;
    float *params, *gparams, *mom, *var, *best; /* [plen] */
    float *st0, *dst, *gacc;                    /* [slen] */
    uint32_t *tgt;                              /* [len_max] */
    uint8_t *msk;                               /* [len_max] */
    struct rk_span *spans;
    size_t n_spans;
    struct order ord;
    struct rk_kl_ref *kl; /* with kl_weight > 0: the base model on p->kl_data */
    struct order kord;    /* the order of the generic sequences */
    float *gkl;           /* [slen] */
    double kl_last;       /* mean KL of the last step's generic positions */
    long step;
    double best_val;
    int bad_evals;
    double t_start, t_compute;
    size_t tokens;
    void *x; /* the method's extra part of the run (meth->extra) */
};

/* Validation loss of `params` over r->val, with the method's read-out term
 * when it has one. */
static int run_val_loss(struct run *r, const float *params, double *out)
{
    r->meth->to_state(r->m, r->p, params, r->st0);
    if (!r->meth->extra)
        return val_loss(r->ctx, r->val, r->st0, r->cancel, r->user, out);
    struct rk_readout ro;
    void *grad;
    r->meth->extra->bind(r->x, params, &ro, &grad);
    struct rk_eval_result er;
    int rc = rk_eval_run_ro(r->ctx, r->val, r->st0, &ro, r->cancel, r->user, &er);
    *out = er.loss;
    if (rc == RK_OK && !isfinite(er.loss))
        rc = RK_ENUMERIC;
    return rc;
}

/* Split off the validation set and allocate every buffer. */
static int run_alloc(struct run *r)
{
    const struct rk_tune_params *p = r->p;
    const struct rk_dataset *ds = r->train;
    int rc;
    if (p->val_split > 0 && rk_dataset_len(ds) >= 2) {
        if ((rc = rk_dataset_split(ds, p->val_split, p->seed, &r->train_own, &r->val)) != RK_OK)
            return rc;
        r->train = r->train_own;
    }
    size_t len_max = 0;
    for (size_t i = 0; i < rk_dataset_len(r->train); i++) {
        size_t n;
        rk_dataset_get(r->train, i, NULL, NULL, &n);
        len_max = n > len_max ? n : len_max;
    }
    for (size_t i = 0; p->kl_weight > 0 && i < rk_dataset_len(p->kl_data); i++) {
        size_t n;
        rk_dataset_get(p->kl_data, i, NULL, NULL, &n);
        len_max = n > len_max ? n : len_max;
    }
    if (p->seq_len_max && len_max > p->seq_len_max)
        len_max = p->seq_len_max;
    struct rk_ctx_params cp = {.n_threads = p->n_threads};
    if ((rc = rk_ctx_create(r->m, &cp, &r->ctx)) != RK_OK)
        return rc;
    if (p->kl_weight > 0) {
        if ((rc = rk_kl_ref_build(r->ctx, p->kl_data, p->kl_topk, &r->kl)) != RK_OK)
            return rc;
        r->kord.n = rk_dataset_len(p->kl_data);
        r->kord.epoch = -1;
        r->kord.seed = p->seed ^ 0x6b4c5f636f6c6c61ull;
        if (!(r->kord.perm = malloc(r->kord.n * sizeof(size_t))) ||
            !(r->gkl = malloc(r->slen * sizeof(float))))
            return RK_ENOMEM;
    }
    r->n_spans = r->meth->trainable(r->m, p, NULL, 0);
    r->params = malloc(r->plen * sizeof(float));
    r->gparams = malloc(r->plen * sizeof(float));
    r->mom = calloc(r->plen, sizeof(float));
    r->var = calloc(r->plen, sizeof(float));
    r->best = malloc(r->plen * sizeof(float));
    r->st0 = malloc(r->slen * sizeof(float));
    r->dst = malloc(r->slen * sizeof(float));
    r->gacc = malloc(r->slen * sizeof(float));
    r->tgt = malloc(len_max * sizeof(uint32_t));
    r->msk = malloc(len_max);
    r->spans = malloc((r->n_spans ? r->n_spans : 1) * sizeof *r->spans);
    r->ord.n = rk_dataset_len(r->train);
    r->ord.perm = malloc(r->ord.n * sizeof(size_t));
    r->ord.epoch = -1;
    r->ord.seed = p->seed;
    if (!r->params || !r->gparams || !r->mom || !r->var || !r->best || !r->st0 || !r->dst ||
        !r->gacc || !r->tgt || !r->msk || !r->spans || !r->ord.perm)
        return RK_ENOMEM;
    r->meth->trainable(r->m, p, r->spans, r->n_spans);
    if (r->meth->extra && (rc = r->meth->extra->begin(r->m, p, &r->x)) != RK_OK)
        return rc;
    return RK_OK;
}

static void run_free(struct run *r)
{
    if (r->meth->extra && r->x)
        r->meth->extra->end(r->x);
    rk_ctx_free(r->ctx);
    rk_dataset_free(r->train_own);
    rk_dataset_free(r->val);
    free(r->params), free(r->gparams), free(r->mom), free(r->var), free(r->best);
    free(r->st0), free(r->dst), free(r->gacc), free(r->tgt), free(r->msk), free(r->spans);
    free(r->ord.perm);
    rk_kl_ref_free(r->kl);
    free(r->kord.perm), free(r->gkl);
}

/* The starting point: the method's parameters of `init`, or the resumed
 * checkpoint; a fresh run with a validation split measures its start. */
static int run_start(struct run *r, const float *init)
{
    const struct rk_tune_params *p = r->p;
    struct rk_tune_result *res = r->res;
    r->best_val = INFINITY;
    r->meth->params_init(r->m, p, init, r->params);
    memcpy(r->best, r->params, r->plen * sizeof(float));
    if (p->resume) {
        const struct rk_tune_checkpoint *ck = p->resume;
        memcpy(r->params, ck->state, r->plen * sizeof(float));
        memcpy(r->mom, ck->m, r->plen * sizeof(float));
        memcpy(r->var, ck->v, r->plen * sizeof(float));
        memcpy(r->best, ck->best ? ck->best : ck->state, r->plen * sizeof(float));
        r->step = ck->step;
        res->steps_done = r->step;
        r->best_val = ck->best_val;
        r->bad_evals = ck->bad_evals;
    }
    if (r->val && !p->resume) {
        int rc = run_val_loss(r, r->params, &r->best_val);
        if (rc != RK_OK)
            return rc;
        res->val_loss_init = r->best_val;
        res->best_step = 0;
    }
    res->val_loss_best = r->val ? r->best_val : NAN;
    return RK_OK;
}

/* Collateral protection: kl_batch generic sequences of step r->step, with
 * the loss hook rk_loss_kl_ref; kl_weight times their position-weighted
 * mean dKL/dstate0 is added to r->gacc, the mean KL kept in r->kl_last.
 * A method with a read-out term runs the generic sequences with it too
 * (`tr`: the training pass's parameters): the KL is the served state's, and
 * its gradient reaches the term's parameters through the term's weights.
 * The term's gradient is scaled by 1 / k_train afterwards (ex->grad), so
 * each generic sequence's weight is its positions * kl_weight * k_train /
 * (the step's generic positions). */
static int run_kl_gradient(struct run *r, const struct rk_backward_params *tr, size_t k_train)
{
    const struct rk_tune_params *p = r->p;
    const struct rk_tune_extra *ex = r->meth->extra;
    struct rk_tune_loss_ctx lc = {.p = p, .ds = p->kl_data, .kl = r->kl};
    struct rk_backward_params bp = {.checkpoint_every = p->bptt_checkpoint,
                                    .loss = rk_loss_kl_ref,
                                    .loss_user = &lc,
                                    .ro_ops = tr->ro_ops,
                                    .ro_data = tr->ro_data,
                                    .ro_grad = tr->ro_grad};
    memset(r->gkl, 0, r->slen * sizeof(float));
    double loss_sum = 0;
    size_t k_sum = 0, k_all = 0;
    for (int bi = 0; ex && bi < p->kl_batch; bi++) {
        size_t n;
        rk_dataset_get(p->kl_data, order_at(&r->kord, r->step * p->kl_batch + bi), NULL, NULL,
                       &n);
        if (p->seq_len_max && n > p->seq_len_max)
            n = p->seq_len_max;
        k_all += n - 1;
    }
    for (int bi = 0; bi < p->kl_batch; bi++) {
        if (r->cancel && r->cancel(r->user))
            return RK_ECANCELED;
        const uint32_t *tok;
        size_t n;
        lc.seq = order_at(&r->kord, r->step * p->kl_batch + bi);
        rk_dataset_get(p->kl_data, lc.seq, &tok, NULL, &n);
        if (p->seq_len_max && n > p->seq_len_max)
            n = p->seq_len_max;
        size_t k = n - 1; /* every position of generic text */
        for (size_t t = 0; t < k; t++) {
            r->tgt[t] = tok[t + 1];
            r->msk[t] = 1;
        }
        double l;
        if (ex)
            ex->weight(r->x, k_all ? (float)((double)k * p->kl_weight * (double)k_train /
                                             (double)k_all)
                                   : 0.0f);
        int rc = rk_backward_seq(r->ctx, &bp, tok, r->tgt, r->msk, k, r->st0, &l, r->dst,
                                 r->cancel, r->user);
        if (rc != RK_OK)
            return rc;
        for (size_t i = 0; i < r->slen; i++)
            r->gkl[i] += (float)k * r->dst[i];
        loss_sum += l * (double)k;
        k_sum += k;
        r->tokens += k;
    }
    r->kl_last = loss_sum / (double)k_sum;
    const float w = (float)(p->kl_weight / (double)k_sum);
    for (size_t i = 0; i < r->slen; i++)
        r->gacc[i] += w * r->gkl[i];
    return RK_OK;
}

/* The batch of step r->step: the token-weighted mean of dLoss/dparams into
 * r->gparams, the mean loss into *loss. */
static int run_gradient(struct run *r, double *loss)
{
    const struct rk_tune_params *p = r->p;
    struct rk_tune_loss_ctx lc = {.p = p, .ds = r->train};
    struct rk_backward_params bp = {.checkpoint_every = p->bptt_checkpoint,
                                    .loss = r->meth->loss,
                                    .loss_user = &lc};
    r->meth->to_state(r->m, p, r->params, r->st0);
    const struct rk_tune_extra *ex = r->meth->extra;
    if (ex) {
        struct rk_readout ro;
        ex->bind(r->x, r->params, &ro, &bp.ro_grad);
        bp.ro_ops = ro.ops;
        bp.ro_data = ro.data;
    }
    memset(r->gacc, 0, r->slen * sizeof(float));
    double loss_sum = 0;
    size_t k_sum = 0;
    for (int bi = 0; bi < p->batch; bi++) {
        if (r->cancel && r->cancel(r->user))
            return RK_ECANCELED;
        const uint32_t *tok;
        const uint8_t *mask;
        size_t n;
        lc.seq = order_at(&r->ord, r->step * p->batch + bi);
        rk_dataset_get(r->train, lc.seq, &tok, &mask, &n);
        if (p->seq_len_max && n > p->seq_len_max)
            n = p->seq_len_max;
        /* inputs tok[0..n-2] predict tok[1..n-1] */
        size_t k = 0;
        for (size_t t = 0; t + 1 < n; t++) {
            r->tgt[t] = tok[t + 1];
            r->msk[t] = mask[t + 1];
            k += mask[t + 1] != 0;
        }
        if (k == 0)
            continue;
        double l;
        if (ex)
            ex->weight(r->x, (float)k);
        int rc = rk_backward_seq(r->ctx, &bp, tok, r->tgt, r->msk, n - 1, r->st0, &l, r->dst,
                                 r->cancel, r->user);
        if (rc != RK_OK)
            return rc;
        const float wgt = (float)k;
        for (size_t i = 0; i < r->slen; i++)
            r->gacc[i] += wgt * r->dst[i];
        loss_sum += l * (double)k;
        k_sum += k;
        r->tokens += n - 1;
    }
    *loss = k_sum ? loss_sum / (double)k_sum : 0;
    if (k_sum) {
        const float inv = (float)(1.0 / (double)k_sum);
        for (size_t i = 0; i < r->slen; i++)
            r->gacc[i] *= inv;
    }
    if (r->kl) {
        int rc = run_kl_gradient(r, &bp, k_sum);
        if (rc != RK_OK)
            return rc;
    }
    r->meth->grad_to_params(r->m, p, r->params, r->gacc, r->gparams);
    if (ex)
        ex->grad(r->x, r->params, k_sum ? (float)(1.0 / (double)k_sum) : 0.0f, r->gparams);
    return RK_OK;
}

/* One AdamW update of the trainable spans with the clipped gradient. */
static void run_update(struct run *r, double lr, double gnorm)
{
    const struct rk_tune_params *p = r->p;
    struct rk_adamw_params ap = {lr, p->beta1, p->beta2, p->eps, p->weight_decay};
    double scale = rk_clip_scale(gnorm, p->clip_norm);
    for (size_t i = 0; i < r->n_spans; i++) {
        size_t o = r->spans[i].off;
        rk_adamw_update(r->params + o, r->gparams + o, r->mom + o, r->var + o, r->spans[i].len,
                        r->step + 1, &ap, scale);
    }
}

/* After an evaluation step: validation, the best parameters, patience.
 * *stop is set when patience runs out. */
static int run_evaluate(struct run *r, struct rk_tune_progress *pr, bool *stop)
{
    const struct rk_tune_params *p = r->p;
    double vl;
    int rc = run_val_loss(r, r->params, &vl);
    if (rc != RK_OK)
        return rc;
    if (vl < r->best_val) {
        r->best_val = vl;
        memcpy(r->best, r->params, r->plen * sizeof(float));
        r->res->best_step = r->step;
        r->bad_evals = 0;
    } else {
        r->bad_evals++;
    }
    r->res->val_loss_best = r->best_val;
    pr->val_loss = vl;
    pr->elapsed_s = now_s() - r->t_start;
    if (r->progress)
        r->progress(pr, r->user);
    if (p->patience && r->bad_evals >= p->patience) {
        r->res->stopped_early = true;
        *stop = true;
    }
    return RK_OK;
}

/* One optimizer step with its reports; *stop when the run should end early. */
static int run_step(struct run *r, const struct rk_lr_schedule *sched, bool *stop)
{
    const struct rk_tune_params *p = r->p;
    struct rk_tune_result *res = r->res;
    double t0 = now_s(), loss;
    int rc = run_gradient(r, &loss);
    if (rc != RK_OK)
        return rc;
    double gnorm = rk_grad_norm(r->gparams, r->plen);
    res->loss_last = loss;
    if (!isfinite(loss) || !isfinite(gnorm)) {
        rk_log(RK_LOG_WARN, "tune: non-finite %s at step %ld",
               isfinite(loss) ? "gradient" : "loss", r->step + 1);
        res->steps_done = r->step;
        return RK_ENUMERIC;
    }
    double lr = rk_lr_at(sched, r->step);
    run_update(r, lr, gnorm);
    double t_after = now_s();
    if (r->meth->extra && r->meth->extra->after_update)
        r->meth->extra->after_update(r->x, r->params);
    t_after = now_s() - t_after;
    r->step++;
    res->steps_done = r->step;
    r->t_compute += now_s() - t0;
    struct rk_tune_progress pr = {
        .step = r->step,
        .steps = p->steps,
        .loss = loss,
        .grad_norm = gnorm,
        .lr = lr,
        .val_loss = NAN,
        .kl = r->kl ? r->kl_last : NAN,
        .score = NAN,
        .tokens_per_s = r->t_compute > 0 ? (double)r->tokens / r->t_compute : 0,
        .tokens = r->tokens,
        .elapsed_s = now_s() - r->t_start,
        .after_s = t_after,
    };
    if (r->progress)
        r->progress(&pr, r->user);
    if (r->val && p->eval_every && (r->step % p->eval_every == 0 || r->step == p->steps))
        if ((rc = run_evaluate(r, &pr, stop)) != RK_OK)
            return rc;
    if (p->checkpoint_cb &&
        ((p->checkpoint_every && r->step % p->checkpoint_every == 0) || *stop ||
         r->step == p->steps)) {
        struct rk_tune_checkpoint ck = {r->step,   r->plen,     r->params,   r->mom,
                                        r->var,    r->best,     r->best_val, r->bad_evals};
        if ((rc = p->checkpoint_cb(&ck, r->user)) != RK_OK)
            return rc;
    }
    return RK_OK;
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
    res->kl_last = NAN;
    res->score_first = res->score_last = NAN;
    if (!m || !p || !ds || !out)
        return RK_EINVAL;
    if (rk_tune_params_method(p) == &rk_method_rl)
        return RK_EINVAL; /* samples its own data: rk_rl_run */
    int rc = rk_tune_params_check(p);
    if (rc != RK_OK)
        return rc;
    if (rk_dataset_len(ds) == 0 || rk_dataset_vocab_used(ds) > (uint32_t)rk_model_n_vocab(m))
        return RK_EINVAL;
    struct run r = {.m = m, .p = p, .meth = rk_tune_params_method(p), .cancel = cancel,
                    .progress = progress, .user = user, .res = res, .train = ds};
    r.slen = rk_state_len(m);
    r.plen = r.meth->params_len(m, p);
    if (p->resume && p->resume->len != r.plen)
        return RK_EMISMATCH;
    if ((rc = run_alloc(&r)) != RK_OK || (rc = run_start(&r, init)) != RK_OK)
        goto out;
    struct rk_lr_schedule sched = {p->lr, p->lr_final, p->warmup, p->steps, p->decay};
    r.t_start = now_s();
    bool stop = false;
    while (r.step < p->steps && !stop)
        if ((rc = run_step(&r, &sched, &stop)) != RK_OK)
            goto out;
    res->tokens_per_s = r.t_compute > 0 ? (double)r.tokens / r.t_compute : 0;
    res->tokens = r.tokens;
    res->kl_last = r.kl ? r.kl_last : NAN;
    memcpy(out, r.val ? r.best : r.params, r.plen * sizeof(float));
    rc = RK_OK;
out:
    run_free(&r);
    return rc;
}

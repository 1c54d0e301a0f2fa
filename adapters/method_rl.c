/*
 * method_rl.c - the "rl" tuning method: a policy gradient into the initial
 * state. The parameters, the state and the chain rule are those of
 * "standard"; the difference is the data, which the run makes itself. Each
 * step samples rl_k completions of every prompt of its batch from the
 * current state, asks the host to score them (a judge, a checker), turns
 * the scores into advantages normalised per prompt and backpropagates
 *
 *     -A_i log p(y_t) + rl_kl * KL_bins(p_state || p_start)
 *
 * at every completion position through rk_backward_seq (the loss hook
 * below), token-weighted over the step's completions. p_start is the
 * starting state's distribution at the same positions, kept as its
 * RK_RL_REF_TOPK most likely tokens plus a rest bin. docs/TUNING.md states
 * the formulas. rk_rl_run is the driver; rk_tune_run refuses the method.
 */
#include "method_standard.h"
#include "rk_adapters.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define ADV_EPS 1e-6   /* the eps of (s - mean) / (std + eps) */
#define REF_CHUNK 16   /* rows of reference logits computed at once */

/* --- per-sequence targets: advantage and the starting state's bins ------- */

struct rl_seq {
    struct rk_loss_span span; /* first: a struct rk_loss_table entry */
    double adv;
    uint32_t *ids; /* [n_pos * k] */
    float *lq;     /* [n_pos * k] log-probabilities of the start */
    float *lrest;  /* [n_pos] log of the rest's mass (-INFINITY: empty) */
};

struct rk_rl_targets {
    struct rk_loss_table tab; /* first (rk_loss_table_new); of struct rl_seq */
    int k;
};

int rk_rl_targets_create(size_t n_seq, int k, struct rk_rl_targets **out)
{
    if (k < 1 || k > RK_RL_REF_TOPK)
        return RK_EINVAL;
    if (!(*out = rk_loss_table_new(sizeof **out, n_seq, sizeof(struct rl_seq))))
        return RK_ENOMEM;
    (*out)->k = k;
    return RK_OK;
}

static void rl_seq_clear(void *entry)
{
    struct rl_seq *s = entry;
    free(s->ids), free(s->lq), free(s->lrest);
    memset(s, 0, sizeof *s);
}

void rk_rl_targets_free(struct rk_rl_targets *t) { rk_loss_table_free(t, rl_seq_clear); }

int rk_rl_targets_set(struct rk_rl_targets *t, size_t seq, double adv, size_t t0, size_t n_pos)
{
    struct rl_seq *s = t ? rk_loss_table_entry(&t->tab, seq) : NULL;
    if (!s || !isfinite(adv))
        return RK_EINVAL;
    rl_seq_clear(s);
    s->adv = adv;
    s->span = (struct rk_loss_span){t0, n_pos};
    return RK_OK;
}

int rk_rl_targets_set_ref(struct rk_rl_targets *t, size_t seq, size_t p, const float *logits,
                          int V)
{
    struct rl_seq *s = t ? rk_loss_table_entry(&t->tab, seq) : NULL;
    if (!s || p >= s->span.n_pos || V < 1)
        return RK_EINVAL;
    size_t k = (size_t)t->k, n_pos = s->span.n_pos;
    if (!s->ids) {
        s->ids = malloc(n_pos * k * sizeof(uint32_t));
        s->lq = malloc(n_pos * k * sizeof(float));
        s->lrest = malloc(n_pos * sizeof(float));
        if (!s->ids || !s->lq || !s->lrest) {
            free(s->ids), free(s->lq), free(s->lrest);
            s->ids = NULL, s->lq = s->lrest = NULL;
            return RK_ENOMEM;
        }
    }
    uint32_t *ids = s->ids + p * k;
    float *lq = s->lq + p * k;
    rk_logprobs_top(logits, (size_t)V, k, ids, lq);
    double sum = 0;
    for (size_t i = 0; i < k; i++) {
        if (ids[i] == UINT32_MAX)
            continue;
        sum += exp((double)lq[i]);
        if (!(lq[i] > -1e4f)) /* an underflowed probability: keep log q finite */
            lq[i] = -1e4f;
    }
    double rest = 1 - sum;
    s->lrest[p] = (size_t)V <= k || rest < 1e-30 ? -INFINITY : (float)log(rest);
    return RK_OK;
}

double rk_rl_row(float *lg, int V, uint32_t target, double adv, double kl_w, const uint32_t *ids,
                 const float *lq, float lrest, int k, size_t nsel, double *kl_out)
{
    bool nan;
    double lse = rk_row_lse(lg, V, &nan);
    double loss = -adv * ((double)lg[target] - lse), kl = 0;
    double g[RK_RL_REF_TOPK], gsum = 0, g_rest = 0;
    bool with_kl = kl_w > 0 && ids;
    if (with_kl) {
        /* bins: each listed id, and the rest; s_b the current mass, q_b the
         * start's; KL = sum_b s_b (log s_b - log q_b) */
        double s_list = 0;
        for (int i = 0; i < k; i++) {
            g[i] = 0;
            if (ids[i] == UINT32_MAX || ids[i] >= (uint32_t)V)
                continue;
            double ls = (double)lg[ids[i]] - lse, s = exp(ls);
            g[i] = ls - (double)lq[i];
            s_list += s;
            kl += s * g[i];
        }
        if (lrest > -INFINITY) {
            double s_rest = 1 - s_list;
            if (s_rest < 1e-30)
                s_rest = 1e-30;
            g_rest = log(s_rest) - (double)lrest;
            kl += s_rest * g_rest;
        }
        gsum = kl;
        loss += kl_w * kl;
    }
    /* d/dz_v: adv (P_v - [v = y]) + kl_w P_v (g_b(v) - sum_b s_b g_b) */
    const double inv = 1.0 / (double)nsel;
    const double c_rest = with_kl ? kl_w * (g_rest - gsum) : 0;
    for (int v = 0; v < V; v++) {
        double P = exp((double)lg[v] - lse);
        lg[v] = (float)(P * (adv + c_rest) * inv);
    }
    if (with_kl)
        for (int i = 0; i < k; i++)
            if (ids[i] != UINT32_MAX && ids[i] < (uint32_t)V) {
                /* lg still holds P (adv + c_rest) / nsel; recover P */
                double P = exp((double)lq[i] + g[i]);
                lg[ids[i]] = (float)(P * (adv + kl_w * (g[i] - gsum)) * inv);
            }
    lg[target] -= (float)(adv * inv);
    if (kl_out)
        *kl_out = kl;
    return nan ? NAN : loss;
}

static double rl_loss(float *logits, int V, size_t t, uint32_t target, size_t nsel, void *user)
{
    const struct rk_tune_loss_ctx *lc = user;
    const struct rk_rl_targets *tg = lc && lc->p ? lc->p->method_data : NULL;
    if (!tg)
        return rk_loss_xent(logits, V, t, target, nsel, user);
    size_t p, k = (size_t)tg->k;
    const struct rl_seq *s = rk_loss_table_at(&tg->tab, lc, t, &p);
    if (!s)
        return rk_loss_xent(logits, V, t, target, nsel, user);
    return rk_rl_row(logits, V, target, s->adv, lc->p->rl_kl, s->ids ? s->ids + p * k : NULL,
                     s->lq ? s->lq + p * k : NULL, s->lrest ? s->lrest[p] : -INFINITY, tg->k,
                     nsel, NULL);
}

/* --- the method entry: "standard" with its own loss ------------------------ */

RK_METHOD_STANDARD_WITH_LOSS(rk_method_rl, "rl",
                             "policy gradient on scored samples of prompts (a judge or a "
                             "checker), with a KL term to the starting state",
                             rl_loss)

/* --- the driver ------------------------------------------------------------ */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

uint64_t rk_rl_sample_seed(uint64_t seed, long step, size_t prompt, int k)
{
    return mix64(mix64(mix64(seed ^ 0x726c5f73616d706cull) + (uint64_t)step) + prompt) +
           (uint64_t)k;
}

struct rl_run {
    const struct rk_model *m;
    struct rk_tune_params p; /* the caller's, method_data = tg */
    const struct rk_rl_io *io;
    const struct rk_rl_prompts *prompts;
    struct rk_ctx *ctx;
    size_t slen, plen, V, n_spans;
    float *params, *gparams, *mom, *var, *st0, *start, *dst, *gacc, *logits, *ref;
    float **kst;          /* [K] states */
    uint32_t **comp;      /* [K] completions [max_tokens] */
    size_t *comp_n;       /* [K] */
    uint32_t *seq, *tgt;  /* [len_max] */
    uint8_t *msk;         /* [len_max] */
    double *score;        /* [K] */
    struct rk_span *spans;
    size_t *perm;
    long perm_epoch;
    struct rk_rl_targets *tg;
    size_t tokens;
};

static size_t rl_order(struct rl_run *r, long g)
{
    size_t n = r->prompts->count;
    long e = g / (long)n;
    if (e != r->perm_epoch) {
        for (size_t i = 0; i < n; i++)
            r->perm[i] = i;
        uint64_t rng = r->p.seed * 0x9e3779b97f4a7c15ull + (uint64_t)e * 0xd1b54a32d192ed03ull + 1;
        rk_shuffle(r->perm, n, &rng);
        r->perm_epoch = e;
    }
    return r->perm[g % (long)n];
}

/* Whether comp[0..n) ends with the stop sequence. */
static bool ends_with_stop(const struct rk_rl_io *io, const uint32_t *comp, size_t n)
{
    if (!io->n_stop || n < io->n_stop)
        return false;
    return memcmp(comp + n - io->n_stop, io->stop, io->n_stop * sizeof(uint32_t)) == 0;
}

/* Sample rl_k completions of prompt `pi` from r->st0 (the current state). */
static int rl_sample(struct rl_run *r, long step, size_t pi, const uint32_t *pt, size_t np)
{
    const int K = r->p.rl_k;
    int rc;
    memcpy(r->kst[0], r->st0, r->slen * sizeof(float));
    if ((rc = rk_forward_seq(r->ctx, pt, np, r->kst[0], r->logits, false)) != RK_OK)
        return rc;
    for (int k = 1; k < K; k++) {
        memcpy(r->kst[k], r->kst[0], r->slen * sizeof(float));
        memcpy(r->logits + (size_t)k * r->V, r->logits, r->V * sizeof(float));
    }
    struct rk_sampler **smp = calloc((size_t)K, sizeof *smp);
    float **act_st = malloc((size_t)K * sizeof *act_st);
    uint32_t *act_tok = malloc((size_t)K * sizeof *act_tok);
    int *act_k = malloc((size_t)K * sizeof *act_k);
    bool *done = calloc((size_t)K, sizeof *done);
    if (!smp || !act_st || !act_tok || !act_k || !done) {
        rc = RK_ENOMEM;
        goto out;
    }
    for (int k = 0; k < K; k++) {
        struct rk_sampler_params sp;
        rk_sampler_params_default(&sp);
        sp.temperature = (float)r->p.rl_temperature;
        sp.seed = rk_rl_sample_seed(r->p.seed, step, pi, k);
        if ((rc = rk_sampler_create(&sp, r->V, &smp[k])) != RK_OK)
            goto out;
        r->comp_n[k] = 0;
    }
    for (int t = 0; t < r->p.rl_max_tokens; t++) {
        size_t na = 0;
        for (int k = 0; k < K; k++) {
            if (done[k])
                continue;
            uint32_t id;
            if ((rc = rk_sampler_sample(smp[k], r->logits + (size_t)k * r->V, &id)) != RK_OK)
                goto out;
            if (id == 0 && r->io->stop_at_zero) {
                done[k] = true;
                continue;
            }
            r->comp[k][r->comp_n[k]++] = id;
            if (ends_with_stop(r->io, r->comp[k], r->comp_n[k]) ||
                t + 1 == r->p.rl_max_tokens) {
                done[k] = true;
                continue;
            }
            act_st[na] = r->kst[k];
            act_tok[na] = id;
            act_k[na++] = k;
        }
        if (!na)
            break;
        if (r->io->cancel && r->io->cancel(r->io->user)) {
            rc = RK_ECANCELED;
            goto out;
        }
        /* the batch's logits go to rows 0..na-1 of r->ref, then to their k */
        if ((rc = rk_forward_batch(r->ctx, na, act_tok, act_st, r->ref)) != RK_OK)
            goto out;
        for (size_t a = 0; a < na; a++)
            memcpy(r->logits + (size_t)act_k[a] * r->V, r->ref + a * r->V, r->V * sizeof(float));
        r->tokens += na;
    }
    rc = RK_OK;
out:
    for (int k = 0; smp && k < K; k++)
        rk_sampler_free(smp[k]);
    free(smp), free(act_st), free(act_tok), free(act_k), free(done);
    return rc;
}

/* The starting state's bins at the completion positions of sequence k. */
static int rl_reference(struct rl_run *r, size_t k, const uint32_t *pt, size_t np)
{
    size_t nc = r->comp_n[k];
    int rc;
    memcpy(r->kst[0], r->start, r->slen * sizeof(float));
    if (np > 1 && (rc = rk_forward_seq(r->ctx, pt, np - 1, r->kst[0], NULL, false)) != RK_OK)
        return rc;
    /* the inputs at positions np-1 .. np+nc-2: pt[np-1], comp[0..nc-2] */
    for (size_t p0 = 0; p0 < nc; p0 += REF_CHUNK) {
        size_t c = nc - p0 < REF_CHUNK ? nc - p0 : REF_CHUNK;
        uint32_t in[REF_CHUNK];
        for (size_t i = 0; i < c; i++)
            in[i] = p0 + i == 0 ? pt[np - 1] : r->comp[k][p0 + i - 1];
        if ((rc = rk_forward_seq(r->ctx, in, c, r->kst[0], r->ref, true)) != RK_OK)
            return rc;
        for (size_t i = 0; i < c; i++)
            if ((rc = rk_rl_targets_set_ref(r->tg, k, p0 + i, r->ref + i * r->V, (int)r->V)) !=
                RK_OK)
                return rc;
        r->tokens += c;
    }
    return RK_OK;
}

/* One prompt of a step: sample, score, and add the completions' token-
 * weighted gradient to r->gacc. */
static int rl_prompt(struct rl_run *r, long step, size_t pi, double *loss_sum, size_t *tok_sum,
                     double *score_sum, bool *signal)
{
    const int K = r->p.rl_k;
    const uint32_t *pt = r->prompts->tokens[pi];
    size_t np = r->prompts->n[pi];
    int rc = rl_sample(r, step, pi, pt, np);
    if (rc != RK_OK)
        return rc;
    double mean = 0, var = 0;
    for (int k = 0; k < K; k++) {
        if ((rc = r->io->score(r->io->score_user, pi, k, r->comp[k], r->comp_n[k], &r->score[k])) !=
            RK_OK)
            return rc;
        if (!isfinite(r->score[k]))
            return RK_ENUMERIC;
        mean += r->score[k];
    }
    mean /= K;
    for (int k = 0; k < K; k++)
        var += (r->score[k] - mean) * (r->score[k] - mean);
    double sd = sqrt(var / K);
    *signal |= sd > 0;
    *score_sum += mean * K;
    for (int k = 0; k < K; k++) {
        size_t nc = r->comp_n[k];
        double adv = (r->score[k] - mean) / (sd + ADV_EPS);
        if ((rc = rk_rl_targets_set(r->tg, (size_t)k, adv, np - 1, nc)) != RK_OK)
            return rc;
        if (nc && r->p.rl_kl > 0 && (rc = rl_reference(r, (size_t)k, pt, np)) != RK_OK)
            return rc;
    }
    struct rk_tune_loss_ctx lc = {.p = &r->p}; /* no dataset: seq is the sample */
    struct rk_backward_params bp = {.checkpoint_every = r->p.bptt_checkpoint,
                                    .loss = rk_method_rl.loss,
                                    .loss_user = &lc};
    for (int k = 0; k < K; k++) {
        size_t nc = r->comp_n[k], n = np + nc;
        if (!nc)
            continue;
        if (r->io->cancel && r->io->cancel(r->io->user))
            return RK_ECANCELED;
        lc.seq = (size_t)k;
        memcpy(r->seq, pt, np * sizeof(uint32_t));
        memcpy(r->seq + np, r->comp[k], nc * sizeof(uint32_t));
        /* inputs seq[0..n-2] predict seq[1..n-1]; the completion's from np-1 */
        for (size_t t = 0; t + 1 < n; t++) {
            r->tgt[t] = r->seq[t + 1];
            r->msk[t] = t + 1 >= np;
        }
        double l;
        if ((rc = rk_backward_seq(r->ctx, &bp, r->seq, r->tgt, r->msk, n - 1, r->st0, &l, r->dst,
                                  r->io->cancel, r->io->user)) != RK_OK)
            return rc;
        for (size_t i = 0; i < r->slen; i++)
            r->gacc[i] += (float)nc * r->dst[i];
        *loss_sum += l * (double)nc;
        *tok_sum += nc;
        r->tokens += n - 1;
    }
    return RK_OK;
}

int rk_rl_params_check(const struct rk_tune_params *p)
{
    if (p->rl_k < 2 || p->rl_k > RK_RL_K_MAX || !(p->rl_temperature > 0) ||
        !(p->rl_temperature <= 10) || p->rl_max_tokens < 1 ||
        p->rl_max_tokens > RK_RL_MAX_TOKENS_MAX || !(p->rl_kl >= 0) || !isfinite(p->rl_kl))
        return RK_EINVAL;
    return RK_OK;
}

static void rl_free(struct rl_run *r)
{
    rk_ctx_free(r->ctx);
    free(r->params), free(r->gparams), free(r->mom), free(r->var), free(r->st0);
    free(r->start), free(r->dst), free(r->gacc), free(r->logits), free(r->ref);
    for (int k = 0; r->kst && k < r->p.rl_k; k++)
        free(r->kst[k]);
    for (int k = 0; r->comp && k < r->p.rl_k; k++)
        free(r->comp[k]);
    free(r->kst), free(r->comp), free(r->comp_n), free(r->seq), free(r->tgt), free(r->msk);
    free(r->score), free(r->spans), free(r->perm);
    rk_rl_targets_free(r->tg);
}

static int rl_alloc(struct rl_run *r)
{
    const int K = r->p.rl_k;
    size_t len_max = 0;
    for (size_t i = 0; i < r->prompts->count; i++) {
        size_t n = r->prompts->n[i];
        len_max = n > len_max ? n : len_max;
    }
    len_max += (size_t)r->p.rl_max_tokens;
    struct rk_ctx_params cp = {.n_threads = r->p.n_threads};
    int rc = rk_ctx_create(r->m, &cp, &r->ctx);
    if (rc != RK_OK)
        return rc;
    size_t rows = (size_t)K > REF_CHUNK ? (size_t)K : REF_CHUNK;
    r->n_spans = rk_method_rl.trainable(r->m, &r->p, NULL, 0);
    r->params = malloc(r->plen * sizeof(float));
    r->gparams = malloc(r->plen * sizeof(float));
    r->mom = calloc(r->plen, sizeof(float));
    r->var = calloc(r->plen, sizeof(float));
    r->st0 = malloc(r->slen * sizeof(float));
    r->start = malloc(r->slen * sizeof(float));
    r->dst = malloc(r->slen * sizeof(float));
    r->gacc = malloc(r->slen * sizeof(float));
    r->logits = malloc((size_t)K * r->V * sizeof(float));
    r->ref = malloc(rows * r->V * sizeof(float));
    r->kst = calloc((size_t)K, sizeof *r->kst);
    r->comp = calloc((size_t)K, sizeof *r->comp);
    r->comp_n = calloc((size_t)K, sizeof *r->comp_n);
    r->seq = malloc(len_max * sizeof(uint32_t));
    r->tgt = malloc(len_max * sizeof(uint32_t));
    r->msk = malloc(len_max);
    r->score = malloc((size_t)K * sizeof(double));
    r->spans = malloc((r->n_spans ? r->n_spans : 1) * sizeof *r->spans);
    r->perm = malloc(r->prompts->count * sizeof(size_t));
    r->perm_epoch = -1;
    if (!r->params || !r->gparams || !r->mom || !r->var || !r->st0 || !r->start || !r->dst ||
        !r->gacc || !r->logits || !r->ref || !r->kst || !r->comp || !r->comp_n || !r->seq ||
        !r->tgt || !r->msk || !r->score || !r->spans || !r->perm)
        return RK_ENOMEM;
    for (int k = 0; k < K; k++)
        if (!(r->kst[k] = malloc(r->slen * sizeof(float))) ||
            !(r->comp[k] = malloc((size_t)r->p.rl_max_tokens * sizeof(uint32_t))))
            return RK_ENOMEM;
    rk_method_rl.trainable(r->m, &r->p, r->spans, r->n_spans);
    return rk_rl_targets_create((size_t)K, (int)(r->V < RK_RL_REF_TOPK ? r->V : RK_RL_REF_TOPK),
                                &r->tg);
}

int rk_rl_run(const struct rk_model *m, const struct rk_tune_params *p,
              const struct rk_rl_prompts *prompts, const float *init, const struct rk_rl_io *io,
              rk_tune_progress_cb *progress, float *out, struct rk_tune_result *res)
{
    struct rk_tune_result rdummy;
    if (!res)
        res = &rdummy;
    memset(res, 0, sizeof *res);
    res->val_loss_init = res->val_loss_best = NAN;
    res->loss_last = res->kl_last = res->score_first = res->score_last = NAN;
    if (!m || !p || !prompts || !out || !io || !io->score)
        return RK_EINVAL;
    int rc = rk_tune_params_check(p);
    if (rc != RK_OK || (rc = rk_rl_params_check(p)) != RK_OK)
        return rc;
    if (!prompts->count)
        return RK_EINVAL;
    for (size_t i = 0; i < prompts->count; i++) {
        if (!prompts->n[i] || !prompts->tokens[i])
            return RK_EINVAL;
        for (size_t t = 0; t < prompts->n[i]; t++)
            if (prompts->tokens[i][t] >= (uint32_t)rk_model_n_vocab(m))
                return RK_EINVAL;
    }
    struct rl_run r = {.m = m, .p = *p, .io = io, .prompts = prompts};
    r.p.method = &rk_method_rl;
    r.slen = rk_state_len(m);
    r.plen = rk_method_rl.params_len(m, &r.p);
    r.V = (size_t)rk_model_n_vocab(m);
    if (p->resume && p->resume->len != r.plen)
        return RK_EMISMATCH;
    if ((rc = rl_alloc(&r)) != RK_OK)
        goto out;
    r.p.method_data = r.tg;
    rk_method_rl.params_init(m, &r.p, init, r.params);
    rk_method_rl.to_state(m, &r.p, r.params, r.start);
    long step = 0;
    if (p->resume) {
        memcpy(r.params, p->resume->state, r.plen * sizeof(float));
        memcpy(r.mom, p->resume->m, r.plen * sizeof(float));
        memcpy(r.var, p->resume->v, r.plen * sizeof(float));
        step = p->resume->step;
        res->steps_done = step;
    }
    struct rk_lr_schedule sched = {p->lr, p->lr_final, p->warmup, p->steps, p->decay};
    struct rk_adamw_params ap = {0, p->beta1, p->beta2, p->eps, p->weight_decay};
    double t_start = now_s();
    while (step < p->steps) {
        rk_method_rl.to_state(m, &r.p, r.params, r.st0);
        memset(r.gacc, 0, r.slen * sizeof(float));
        double loss_sum = 0, score_sum = 0;
        size_t tok_sum = 0;
        bool signal = false;
        for (int b = 0; b < p->batch; b++) {
            size_t pi = rl_order(&r, step * p->batch + b);
            if ((rc = rl_prompt(&r, step, pi, &loss_sum, &tok_sum, &score_sum, &signal)) !=
                RK_OK)
                goto out;
        }
        double loss = tok_sum ? loss_sum / (double)tok_sum : 0;
        double score = score_sum / ((double)p->batch * p->rl_k);
        if (tok_sum) {
            const float inv = (float)(1.0 / (double)tok_sum);
            for (size_t i = 0; i < r.slen; i++)
                r.gacc[i] *= inv;
        }
        rk_method_rl.grad_to_params(m, &r.p, r.params, r.gacc, r.gparams);
        double gnorm = rk_grad_norm(r.gparams, r.plen);
        res->loss_last = loss;
        res->score_last = score;
        if (step == (p->resume ? p->resume->step : 0))
            res->score_first = score;
        if (!isfinite(loss) || !isfinite(gnorm)) {
            rk_log(RK_LOG_WARN, "tune: non-finite %s at step %ld",
                   isfinite(loss) ? "gradient" : "loss", step + 1);
            rc = RK_ENUMERIC;
            goto out;
        }
        ap.lr = rk_lr_at(&sched, step);
        double scale = rk_clip_scale(gnorm, p->clip_norm);
        /* no prompt of the batch told its samples apart: every advantage is
         * 0 and what is left is the KL term's rounding noise, which Adam
         * would blow up to a step of size lr; the step changes nothing */
        for (size_t i = 0; signal && i < r.n_spans; i++) {
            size_t o = r.spans[i].off;
            rk_adamw_update(r.params + o, r.gparams + o, r.mom + o, r.var + o, r.spans[i].len,
                            step + 1, &ap, scale);
        }
        step++;
        res->steps_done = step;
        double el = now_s() - t_start;
        struct rk_tune_progress pr = {
            .step = step,
            .steps = p->steps,
            .loss = loss,
            .grad_norm = gnorm,
            .lr = ap.lr,
            .val_loss = NAN,
            .kl = NAN,
            .score = score,
            .tokens_per_s = el > 0 ? (double)r.tokens / el : 0,
            .tokens = r.tokens,
            .elapsed_s = el,
        };
        if (progress)
            progress(&pr, io->user);
        if (p->checkpoint_cb &&
            ((p->checkpoint_every && step % p->checkpoint_every == 0) || step == p->steps)) {
            struct rk_tune_checkpoint ck = {step,   r.plen, r.params, r.mom,
                                            r.var,  r.params, INFINITY, 0};
            if ((rc = p->checkpoint_cb(&ck, io->user)) != RK_OK)
                goto out;
        }
    }
    res->tokens = r.tokens;
    double el = now_s() - t_start;
    res->tokens_per_s = el > 0 ? (double)r.tokens / el : 0;
    memcpy(out, r.params, r.plen * sizeof(float));
    rc = RK_OK;
out:
    rl_free(&r);
    return rc;
}

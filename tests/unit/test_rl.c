/*
 * test_rl.c - the "rl" method: its loss row against central differences,
 * the whole policy-gradient loss through the backward against finite
 * differences on a small model, and a run that raises the mean score of a
 * local checker (and resumes bit-identically).
 */
#include "check_common.h"
#include "rk_adapters.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The target, advantage and start of one rl row; row_at is its
 * rk_fd_row_loss. */
struct row_pt {
    uint32_t y;
    double adv, klw;
    const uint32_t *ids;
    const float *lq;
    float lrest;
    int k;
};

static double row_at(float *row, size_t n, void *user)
{
    const struct row_pt *p = user;
    return rk_rl_row(row, (int)n, p->y, p->adv, p->klw, p->ids, p->lq, p->lrest, p->k, 1, NULL);
}

/* The row's gradient (advantage term and KL term) against central
 * differences, with a rest bin and without one. */
START_TEST(test_rl_row_grad)
{
    enum { V = 40, K = 5 };
    float lg[V], ref[V], g[V];
    for (int v = 0; v < V; v++) {
        lg[v] = (float)((v * 7919) % 23) * 0.125f - 1.5f;
        ref[v] = (float)((v * 104729) % 17) * 0.2f - 1.0f;
    }
    struct rk_rl_targets *t = NULL;
    ck_assert_int_eq(rk_rl_targets_create(1, K, &t), RK_OK);
    ck_assert_int_eq(rk_rl_targets_set(t, 0, 0.5, 3, 1), RK_OK);
    ck_assert_int_eq(rk_rl_targets_set_ref(t, 0, 0, ref, V), RK_OK);
    ck_assert_int_eq(rk_rl_targets_set_ref(t, 0, 1, ref, V), RK_EINVAL); /* past n_pos */
    ck_assert_int_eq(rk_rl_targets_set(t, 0, NAN, 3, 1), RK_EINVAL);
    rk_rl_targets_free(t);
    /* the start's top 5 by hand */
    uint32_t ids[K];
    float lq[K];
    rk_logprobs_top(ref, V, K, ids, lq);
    double sum = 0;
    for (int i = 0; i < K; i++)
        sum += exp((double)lq[i]);
    float lrest = (float)log(1 - sum);
    const double advs[3] = {1.3, -0.7, 0};
    for (int c = 0; c < 3; c++) {
        double adv = advs[c], klw = 0.4;
        memcpy(g, lg, sizeof g);
        double kl;
        double l = rk_rl_row(g, V, 7, adv, klw, ids, lq, lrest, K, 2, &kl);
        ck_assert(isfinite(l) && kl > 0);
        const float h = 1.0f / 64;
        struct row_pt pt = {7, adv, klw, ids, lq, lrest, K};
        for (int v = 0; v < V; v++) {
            double fd = rk_fd_row(row_at, &pt, lg, V, (size_t)v, h);
            ck_assert_msg(fabs(fd - 2 * (double)g[v]) < 3e-4, "adv=%g v=%d fd=%g grad=%g", adv,
                          v, fd, 2 * (double)g[v]);
        }
    }
    /* KL to itself is 0 and gives no gradient; no KL: the plain -adv log p */
    memcpy(g, ref, sizeof g);
    double kl = 1;
    rk_rl_row(g, V, 7, 0, 1, ids, lq, lrest, K, 1, &kl);
    ck_assert_msg(fabs(kl) < 1e-6, "kl=%g", kl);
    for (int v = 0; v < V; v++)
        ck_assert_msg(fabs(g[v]) < 1e-6, "v=%d g=%g", v, g[v]);
    memcpy(g, lg, sizeof g);
    double l = rk_rl_row(g, V, 7, 2.0, 1, NULL, NULL, -INFINITY, K, 1, NULL);
    ck_assert(fabs(l + 2 * rk_logprob(lg, V, 7)) < 1e-5);
}
END_TEST

struct fd_ctx {
    struct rk_ctx *ctx;
    struct rk_tune_params p;
    uint32_t tok[20], tgt[20];
    uint8_t mask[20];
    size_t n;
    float *st; /* the state rk_fd_along moves */
};

static double seq_loss(struct fd_ctx *f, const float *st, float *grad)
{
    struct rk_tune_loss_ctx lc = {.p = &f->p, .seq = 0};
    struct rk_backward_params bp = {.checkpoint_every = 4, .loss = rk_method_rl.loss,
                                    .loss_user = &lc};
    size_t slen = rk_state_len(rk_ctx_model(f->ctx));
    float *tmp = grad ? grad : malloc(slen * sizeof(float));
    double l = NAN;
    ck_assert_int_eq(rk_backward_seq(f->ctx, &bp, f->tok, f->tgt, f->mask, f->n, st, &l, tmp,
                                     NULL, NULL),
                     RK_OK);
    if (!grad)
        free(tmp);
    return l;
}

static double seq_loss_at(void *user)
{
    struct fd_ctx *f = user;
    return seq_loss(f, f->st, NULL);
}

/* The policy-gradient loss with its KL term, through the backward into the
 * state, against central differences along the gradient and along a fixed
 * pseudo-random direction. */
START_TEST(test_rl_state_grad)
{
    struct rk_model *m = NULL;
    struct rk_errbuf eb;
    ck_assert_msg(rk_model_load(rk_test_data("rand-mh.safetensors"), NULL, &m, &eb) == RK_OK,
                  "%s", eb.msg);
    struct fd_ctx f = {.n = 19};
    struct rk_ctx_params cp = {.n_threads = 2};
    ck_assert_int_eq(rk_ctx_create(m, &cp, &f.ctx), RK_OK);
    rk_ctx_set_reference(f.ctx, true);
    rk_tune_params_default(&f.p);
    f.p.rl_kl = 0.5;
    size_t slen = rk_state_len(m), V = (size_t)rk_model_n_vocab(m), t0 = 7;
    uint32_t seq[20];
    for (size_t i = 0; i < 20; i++)
        seq[i] = (uint32_t)((i * 53 + 11) % V);
    for (size_t t = 0; t < f.n; t++) {
        f.tok[t] = seq[t];
        f.tgt[t] = seq[t + 1];
        f.mask[t] = t >= t0;
    }
    size_t n_pos = f.n - t0;
    /* the start: the zero state's logits at the completion positions */
    struct rk_rl_targets *tg = NULL;
    ck_assert_int_eq(rk_rl_targets_create(1, 16, &tg), RK_OK);
    ck_assert_int_eq(rk_rl_targets_set(tg, 0, -0.8, t0, n_pos), RK_OK);
    float *st0 = calloc(slen, sizeof(float)), *lg = malloc(f.n * V * sizeof(float));
    ck_assert_int_eq(rk_forward_seq(f.ctx, seq, f.n, st0, lg, true), RK_OK);
    for (size_t p = 0; p < n_pos; p++)
        ck_assert_int_eq(rk_rl_targets_set_ref(tg, 0, p, lg + (t0 + p) * V, (int)V), RK_OK);
    f.p.method_data = tg;
    float *st = malloc(slen * sizeof(float)), *g = malloc(slen * sizeof(float));
    float *dir = malloc(slen * sizeof(float));
    for (size_t i = 0; i < slen; i++)
        st[i] = (float)((i * 2654435761u) % 1000) * 2e-4f - 0.1f;
    double l = seq_loss(&f, st, g);
    ck_assert(isfinite(l));
    for (int d = 0; d < 2; d++) {
        double gn = 0, dd = 0;
        for (size_t i = 0; i < slen; i++) {
            dir[i] = d == 0 ? g[i] : (float)((i * 40503u) % 97) / 48.0f - 1.0f;
            dd += (double)dir[i] * dir[i];
        }
        for (size_t i = 0; i < slen; i++) {
            dir[i] = (float)(dir[i] / sqrt(dd));
            gn += (double)g[i] * dir[i];
        }
        f.st = st;
        double fd = rk_fd_along(seq_loss_at, &f, st, dir, slen, 1e-2);
        ck_assert_msg(fabs(fd - gn) <= 2e-3 + 2e-2 * fabs(gn), "dir %d: fd %g, backward %g", d,
                      fd, gn);
        ck_assert(d == 1 || gn > 1e-4); /* a gradient that is there */
    }
    free(st), free(g), free(dir), free(st0), free(lg);
    rk_rl_targets_free(tg);
    rk_ctx_free(f.ctx);
    rk_model_free(m);
}
END_TEST

/* The checker: the share of the completion's tokens below V/4. */
struct score_ctx {
    uint32_t limit;
    int calls;
};

static int score_low(void *user, size_t prompt, int k, const uint32_t *tok, size_t n,
                     double *score)
{
    struct score_ctx *s = user;
    (void)prompt, (void)k;
    s->calls++;
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += tok[i] < s->limit;
    *score = n ? (double)c / (double)n : 0;
    return RK_OK;
}

struct ck_copy {
    long step;
    float *state, *m, *v;
    size_t len;
};

static int keep_ckpt(const struct rk_tune_checkpoint *ck, void *user)
{
    struct score_ctx *s = user;
    struct ck_copy *c = (struct ck_copy *)(s + 1);
    if (ck->step != 3)
        return RK_OK;
    c->step = ck->step;
    c->len = ck->len;
    c->state = malloc(ck->len * sizeof(float));
    c->m = malloc(ck->len * sizeof(float));
    c->v = malloc(ck->len * sizeof(float));
    memcpy(c->state, ck->state, ck->len * sizeof(float));
    memcpy(c->m, ck->m, ck->len * sizeof(float));
    memcpy(c->v, ck->v, ck->len * sizeof(float));
    return RK_OK;
}

/* The mean score of the first three and the last three steps. */
static double score_steps[2];
static void keep_score(const struct rk_tune_progress *p, void *u)
{
    (void)u;
    if (getenv("RL_DEBUG"))
        fprintf(stderr, "step %ld loss %g score %g\n", p->step, p->loss, p->score);
    if (p->step <= 3)
        score_steps[0] += p->score / 3;
    if (p->step > p->steps - 3)
        score_steps[1] += p->score / 3;
}

/* A run raises the checker's mean score; 3 steps + resume for 9 more give
 * the bits of 12 steps straight; bad rl parameters are refused, and
 * rk_tune_run refuses the method. */
START_TEST(test_rl_run)
{
    struct rk_model *m = NULL;
    struct rk_errbuf eb;
    ck_assert_msg(rk_model_load(rk_test_data("rand-mh.safetensors"), NULL, &m, &eb) == RK_OK,
                  "%s", eb.msg);
    const size_t V = (size_t)rk_model_n_vocab(m);
    uint32_t p0[3] = {5, 17, 2}, p1[2] = {40, 41}, p2[1] = {9};
    const uint32_t *pt[3] = {p0, p1, p2};
    size_t pn[3] = {3, 2, 1};
    struct rk_rl_prompts pr = {pt, pn, 3};
    struct {
        struct score_ctx s;
        struct ck_copy c;
    } u = {{(uint32_t)(V / 4), 0}, {0}};
    struct rk_rl_io io = {.score = score_low, .score_user = &u, .user = &u};
    struct rk_tune_params p;
    rk_tune_params_default(&p);
    p.method = &rk_method_rl;
    p.steps = 12;
    p.batch = 3;
    p.rl_k = 4;
    p.rl_max_tokens = 6;
    p.lr = 0.2;
    p.warmup = 0;
    p.n_threads = 2;
    p.checkpoint_every = 1;
    p.checkpoint_cb = keep_ckpt;
    size_t plen = rk_tune_params_len(m, &p);
    float *a = malloc(plen * sizeof(float)), *b = malloc(plen * sizeof(float));
    struct rk_tune_result ra, rb;
    ck_assert_int_eq(rk_rl_run(m, &p, &pr, NULL, &io, keep_score, a, &ra), RK_OK);
    ck_assert_int_eq(u.s.calls, 12 * 3 * 4);
    /* deterministic (seeded samples); about 0.26 throughout with the
     * gradient zeroed, 0.25 -> 0.37 with it */
    ck_assert_msg(score_steps[1] > score_steps[0] + 0.06, "score %g -> %g", score_steps[0],
                  score_steps[1]);
    /* resume from step 3 */
    ck_assert_int_eq(u.c.step, 3);
    struct rk_tune_checkpoint ck = {3, plen, u.c.state, u.c.m, u.c.v, u.c.state, INFINITY, 0};
    p.resume = &ck;
    p.checkpoint_cb = NULL;
    ck_assert_int_eq(rk_rl_run(m, &p, &pr, NULL, &io, NULL, b, &rb), RK_OK);
    ck_assert_int_eq(rb.steps_done, 12);
    ck_assert(memcmp(a, b, plen * sizeof(float)) == 0);
    p.resume = NULL;
    p.rl_k = 1;
    ck_assert_int_eq(rk_rl_run(m, &p, &pr, NULL, &io, NULL, b, &rb), RK_EINVAL);
    p.rl_k = 4;
    p.rl_temperature = 0;
    ck_assert_int_eq(rk_rl_run(m, &p, &pr, NULL, &io, NULL, b, &rb), RK_EINVAL);
    p.rl_temperature = 1;
    pn[2] = 0;
    ck_assert_int_eq(rk_rl_run(m, &p, &pr, NULL, &io, NULL, b, &rb), RK_EINVAL);
    struct rk_dataset *ds = NULL;
    ck_assert_int_eq(rk_dataset_create(&ds), RK_OK);
    ck_assert_int_eq(rk_dataset_add(ds, p0, NULL, 3), RK_OK);
    ck_assert_int_eq(rk_tune_run(m, &p, ds, NULL, NULL, NULL, NULL, b, NULL), RK_EINVAL);
    rk_dataset_free(ds);
    free(u.c.state), free(u.c.m), free(u.c.v), free(a), free(b);
    rk_model_free(m);
}
END_TEST

RK_TEST_SUITE(rl_suite, RK_SELF_CONTAINED)
{
    Suite *s = suite_create("rl");
    TCase *tc = tcase_create("rl");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_rl_row_grad);
    tcase_add_test(tc, test_rl_state_grad);
    suite_add_tcase(s, tc);
    TCase *slow = tcase_create("rl-run"); /* about 8 s */
    tcase_set_tags(slow, RK_TEST_TAG_SLOW);
    tcase_set_timeout(slow, 120);
    tcase_add_test(slow, test_rl_run);
    suite_add_tcase(s, slow);
    return s;
}

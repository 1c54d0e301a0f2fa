/*
 * test_tune.c - the tuning side of the adapters layer: AdamW and schedule
 * math against hand-computed values, datasets (validation, seeded split and
 * shuffle), evaluation, and rk_tune_run itself: a run on a memorisable task
 * must lower held-out loss and raise multiple-choice accuracy over the
 * untuned state, be bit-identical for the same seed, resume exactly from a
 * checkpoint, stop with RK_ENUMERIC on NaN and RK_ECANCELED on cancel.
 */
#include "check_common.h"
#include "core_int.h"
#include "rk_adapters.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- optimizer ------------------------------------------------------------ */

START_TEST(test_adamw_math)
{
    /* three steps of AdamW on two parameters, against the formulas in double */
    float p[2] = {1.0f, -2.0f}, m[2] = {0}, v[2] = {0};
    double pd[2] = {1.0, -2.0}, md[2] = {0}, vd[2] = {0};
    const float grads[3][2] = {{0.5f, -1.0f}, {0.25f, 2.0f}, {-0.125f, 0.0f}};
    struct rk_adamw_params ap = {0.1, 0.9, 0.99, 1e-8, 0.01};
    for (int t = 1; t <= 3; t++) {
        rk_adamw_update(p, grads[t - 1], m, v, 2, t, &ap, 0.5);
        for (int i = 0; i < 2; i++) {
            double g = grads[t - 1][i] * 0.5;
            md[i] = 0.9 * md[i] + 0.1 * g;
            vd[i] = 0.99 * vd[i] + 0.01 * g * g;
            double mh = md[i] / (1 - pow(0.9, t)), vh = vd[i] / (1 - pow(0.99, t));
            pd[i] -= 0.1 * (mh / (sqrt(vh) + 1e-8) + 0.01 * pd[i]);
        }
    }
    for (int i = 0; i < 2; i++) {
        ck_assert_msg(fabs(p[i] - pd[i]) < 1e-6, "param %d: %.8f vs %.8f", i, p[i], pd[i]);
        ck_assert(fabs(m[i] - md[i]) < 1e-7 && fabs(v[i] - vd[i]) < 1e-7);
    }
    /* Adam's first step moves every parameter by lr (sign of the gradient) */
    float q[3] = {0, 0, 0}, g[3] = {3, -1e-3f, 0}, m2[3] = {0}, v2[3] = {0};
    struct rk_adamw_params a2 = {0.5, 0.9, 0.99, 1e-8, 0};
    rk_adamw_update(q, g, m2, v2, 3, 1, &a2, 1);
    ck_assert(fabsf(q[0] + 0.5f) < 1e-5f && fabsf(q[1] - 0.5f) < 1e-4f && q[2] == 0);
}
END_TEST

START_TEST(test_schedule_and_clip)
{
    struct rk_lr_schedule s = {1.0, 0.01, 10, 110, RK_LR_COSINE};
    ck_assert(fabs(rk_lr_at(&s, 0) - 0.1) < 1e-12);  /* warmup ramp (step+1)/warmup */
    ck_assert(fabs(rk_lr_at(&s, 9) - 1.0) < 1e-12);
    ck_assert(fabs(rk_lr_at(&s, 10) - 1.0) < 1e-12); /* decay starts at the peak */
    ck_assert(fabs(rk_lr_at(&s, 109) - 0.01) < 1e-12);
    ck_assert(fabs(rk_lr_at(&s, 500) - 0.01) < 1e-12);
    double mid = rk_lr_at(&s, 10 + 99 / 2); /* cosine: below the linear midpoint at f<0.5 */
    ck_assert(mid > 0.505 && mid < 1.0);
    s.decay = RK_LR_LINEAR;
    s.warmup = 0;
    s.total = 101;
    ck_assert(fabs(rk_lr_at(&s, 50) - 0.505) < 1e-12);
    s.decay = RK_LR_CONSTANT;
    ck_assert(rk_lr_at(&s, 77) == 1.0);
    float g[4] = {3, 4, 0, 0};
    ck_assert(fabs(rk_grad_norm(g, 4) - 5) < 1e-12);
    ck_assert(fabs(rk_clip_scale(5, 1) - 0.2) < 1e-12);
    ck_assert(rk_clip_scale(0.5, 1) == 1 && rk_clip_scale(5, 0) == 1);
}
END_TEST

/* --- datasets ------------------------------------------------------------- */

START_TEST(test_dataset_basics)
{
    struct rk_dataset *d = NULL;
    ck_assert_int_eq(rk_dataset_create(&d), RK_OK);
    uint32_t t[5] = {1, 2, 3, 4, 9};
    uint8_t none[5] = {1, 0, 0, 0, 0}, some[5] = {0, 0, 1, 1, 0};
    ck_assert_int_eq(rk_dataset_add(d, t, NULL, 1), RK_EINVAL); /* too short */
    ck_assert_int_eq(rk_dataset_add(d, t, none, 5), RK_EINVAL); /* mask[0] alone counts nothing */
    ck_assert_int_eq(rk_dataset_add(d, t, some, 5), RK_OK);
    ck_assert_int_eq(rk_dataset_add(d, t, NULL, 3), RK_OK);
    ck_assert_uint_eq(rk_dataset_len(d), 2);
    ck_assert_uint_eq(rk_dataset_n_tokens(d), 8);
    ck_assert_uint_eq(rk_dataset_n_targets(d), 4);
    ck_assert_uint_eq(rk_dataset_vocab_used(d), 10);
    const uint32_t *tk;
    const uint8_t *mk;
    size_t n;
    rk_dataset_get(d, 0, &tk, &mk, &n);
    ck_assert(n == 5 && tk[4] == 9 && mk[0] == 0 && mk[2] == 1 && mk[4] == 0);
    const uint32_t c0[] = {5}, c1[] = {6, 7};
    const uint32_t *ch[] = {c0, c1};
    size_t nch[] = {1, 2};
    struct rk_mc_item it = {t, 2, 2, ch, nch, 1};
    ck_assert_int_eq(rk_dataset_add_mc(d, &it), RK_OK);
    it.answer = 2;
    ck_assert_int_eq(rk_dataset_add_mc(d, &it), RK_EINVAL);
    it.answer = 0;
    it.n_prompt = 0;
    ck_assert_int_eq(rk_dataset_add_mc(d, &it), RK_EINVAL);
    ck_assert_uint_eq(rk_dataset_n_mc(d), 1);
    struct rk_mc_item got;
    rk_dataset_get_mc(d, 0, &got);
    ck_assert(got.n_choices == 2 && got.answer == 1 && got.choices[1][1] == 7);
    rk_dataset_free(d);
    rk_dataset_free(NULL);
}
END_TEST

START_TEST(test_dataset_split_shuffle)
{
    struct rk_dataset *d = NULL, *tr = NULL, *va = NULL, *tr2 = NULL, *va2 = NULL;
    ck_assert_int_eq(rk_dataset_create(&d), RK_OK);
    for (uint32_t i = 0; i < 50; i++) {
        uint32_t t[3] = {i, i + 1, i + 2};
        ck_assert_int_eq(rk_dataset_add(d, t, NULL, 3), RK_OK);
    }
    ck_assert_int_eq(rk_dataset_split(d, 0.2, 7, &tr, &va), RK_OK);
    ck_assert_uint_eq(rk_dataset_len(va), 10);
    ck_assert_uint_eq(rk_dataset_len(tr), 40);
    ck_assert_int_eq(rk_dataset_split(d, 0.2, 7, &tr2, &va2), RK_OK);
    bool seen[50] = {0};
    uint32_t prev = 0;
    for (size_t i = 0; i < 10; i++) {
        const uint32_t *a, *b;
        rk_dataset_get(va, i, &a, NULL, NULL);
        rk_dataset_get(va2, i, &b, NULL, NULL);
        ck_assert_uint_eq(a[0], b[0]); /* same seed, same split */
        ck_assert(i == 0 || a[0] > prev); /* original order kept */
        prev = a[0];
        seen[a[0]] = true;
    }
    for (size_t i = 0; i < 40; i++) {
        const uint32_t *a;
        rk_dataset_get(tr, i, &a, NULL, NULL);
        ck_assert(!seen[a[0]]);
        seen[a[0]] = true;
    }
    for (int i = 0; i < 50; i++)
        ck_assert(seen[i]); /* a partition */
    rk_dataset_free(tr2), rk_dataset_free(va2);
    ck_assert_int_eq(rk_dataset_split(d, 0.2, 8, &tr2, &va2), RK_OK);
    bool differs = false;
    for (size_t i = 0; i < 10; i++) {
        const uint32_t *a, *b;
        rk_dataset_get(va, i, &a, NULL, NULL);
        rk_dataset_get(va2, i, &b, NULL, NULL);
        differs |= a[0] != b[0];
    }
    ck_assert(differs);
    rk_dataset_free(tr), rk_dataset_free(va);
    ck_assert_int_eq(rk_dataset_split(d, 1.0, 8, &tr, &va), RK_EINVAL);
    rk_dataset_free(tr2), rk_dataset_free(va2), rk_dataset_free(d);

    size_t idx[100], cnt[100] = {0};
    uint64_t rng = 3;
    for (int rep = 0; rep < 3; rep++) {
        for (size_t i = 0; i < 100; i++)
            idx[i] = i;
        rk_shuffle(idx, 100, &rng);
        for (size_t i = 0; i < 100; i++)
            cnt[idx[i]]++;
    }
    for (size_t i = 0; i < 100; i++)
        ck_assert_uint_eq(cnt[i], 3);
}
END_TEST

/* --- a memorisable task on the random multi-head fixture ------------------ */

/*
 * Every example is a few random lowercase letters, then " -> " and the word
 * "kiwi". Loss is on the word only. A held-out set uses other random prefixes;
 * the mc items offer kiwi/pear/plum/lime after a fresh prefix. The untuned
 * (zero) state has no reason to prefer "kiwi"; the only way to lower the
 * held-out loss is for the state to carry "the answer is kiwi".
 */
static const char *WORDS[4] = {"kiwi", "pear", "plum", "lime"};

static uint64_t mix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static size_t make_prefix(uint64_t *rng, uint32_t *t)
{
    size_t n = 0;
    t[n++] = '\n';
    size_t len = 4 + mix64(rng) % 6;
    for (size_t i = 0; i < len; i++)
        t[n++] = 'a' + (uint32_t)(mix64(rng) % 26);
    const char *arrow = " -> ";
    for (const char *c = arrow; *c; c++)
        t[n++] = (uint32_t)*c;
    return n;
}

static struct rk_dataset *make_task(uint64_t seed, size_t n_seq, size_t n_mc)
{
    struct rk_dataset *d = NULL;
    ck_assert_int_eq(rk_dataset_create(&d), RK_OK);
    uint64_t rng = seed;
    for (size_t s = 0; s < n_seq; s++) {
        uint32_t t[32];
        uint8_t mk[32] = {0};
        size_t n = make_prefix(&rng, t);
        for (const char *c = WORDS[0]; *c; c++) {
            mk[n] = 1;
            t[n++] = (uint32_t)*c;
        }
        ck_assert_int_eq(rk_dataset_add(d, t, mk, n), RK_OK);
    }
    for (size_t s = 0; s < n_mc; s++) {
        uint32_t pr[32], ch[4][4];
        size_t np = make_prefix(&rng, pr), nch[4] = {4, 4, 4, 4};
        size_t rot = mix64(&rng) % 4; /* the right answer moves around */
        const uint32_t *chp[4];
        for (size_t c = 0; c < 4; c++) {
            for (size_t i = 0; i < 4; i++)
                ch[c][i] = (uint32_t)WORDS[(c + rot) % 4][i];
            chp[c] = ch[c];
        }
        struct rk_mc_item it = {pr, np, 4, chp, nch, (4 - rot) % 4};
        ck_assert_int_eq(rk_dataset_add_mc(d, &it), RK_OK);
    }
    return d;
}

struct fx {
    struct rk_model *m;
    struct rk_ctx *ctx;
    size_t slen;
};

static void fx_open_as(struct fx *t, enum rk_dtype wtype)
{
    /* The multi-head random fixture (L2 C192 H3 V384). The shared tiny model
     * is too weakly trained for this: its logits barely respond to anything,
     * so no state can make one word likely (held-out loss stays ~4.5 nats
     * for any lr), and it forgets its initial state within a few tokens. */
    const char *path = rk_test_data("rand-mh.safetensors");
    struct rk_errbuf eb;
    struct rk_model_params mp = {.wtype = wtype};
    ck_assert_msg(rk_model_load(path, &mp, &t->m, &eb) == RK_OK, "%s", eb.msg);
    struct rk_ctx_params cp = {.n_threads = 1};
    ck_assert_int_eq(rk_ctx_create(t->m, &cp, &t->ctx), RK_OK);
    t->slen = rk_state_len(t->m);
}
static void fx_open(struct fx *t) { fx_open_as(t, RK_DTYPE_AUTO); }
static void fx_close(struct fx *t)
{
    rk_ctx_free(t->ctx);
    rk_model_free(t->m);
}

static void task_params(struct rk_tune_params *p)
{
    rk_tune_params_default(p);
    p->steps = 30;
    p->batch = 4;
    p->val_split = 0.25;
    p->eval_every = 10;
    p->n_threads = 1;
    p->seed = 1;
}

/* The task below on the model as loaded (f32) and quantized to 8 bits at
 * load (q8: the backward multiplies by the dequantized weights). */
static const enum rk_dtype task_wtypes[] = {RK_DTYPE_AUTO, RK_DTYPE_Q8};

START_TEST(test_tune_learns_task)
{
    struct fx t;
    fx_open_as(&t, task_wtypes[_i]);
    struct rk_dataset *train = make_task(100, 32, 0), *held = make_task(200, 24, 24);
    struct rk_eval_result e0, e1;
    ck_assert_int_eq(rk_eval_run(t.ctx, held, NULL, NULL, NULL, &e0), RK_OK);
    struct rk_tune_params p;
    task_params(&p);
    float *st = malloc(sizeof(float) * t.slen);
    struct rk_tune_result res;
    int rc = rk_tune_run(t.m, &p, train, NULL, NULL, NULL, NULL, st, &res);
    ck_assert_msg(rc == RK_OK, "tune: %s", rk_strerror(rc));
    ck_assert_int_eq(rk_eval_run(t.ctx, held, st, NULL, NULL, &e1), RK_OK);
    fprintf(stderr,
            "task (%s): held-out loss %.4f -> %.4f (ppl %.2f -> %.2f), mc accuracy %.3f -> %.3f "
            "(%zu items); val %.4f -> %.4f at step %ld; %.0f tokens/s\n",
            rk_dtype_name(rk_model_wtype(t.m)), e0.loss, e1.loss, e0.ppl, e1.ppl, e0.accuracy, e1.accuracy, e1.n_mc,
            res.val_loss_init, res.val_loss_best, res.best_step, res.tokens_per_s);
    /* Margins: untuned, the random model puts ~9 nats on each answer byte
     * and its mc choice is arbitrary (0 of 24 right with this seed). Measured
     * with the defaults (lr 1 -> 0.01, 30 steps): held-out loss ~0.08 and
     * accuracy 1.0; at lr 0.1 loss is still ~3.7 yet accuracy already 1.0.
     * We ask for the held-out loss to fall at least 3x and the accuracy to
     * gain 0.5 and reach 0.9: far beyond chance variation over 24 items (one
     * item is 0.04), with room for a 10x slower learner. */
    ck_assert_msg(e1.loss < e0.loss / 3, "held-out loss %.4f -> %.4f", e0.loss, e1.loss);
    ck_assert_msg(e1.accuracy >= e0.accuracy + 0.5 && e1.accuracy >= 0.9,
                  "accuracy %.3f -> %.3f", e0.accuracy, e1.accuracy);
    ck_assert(res.val_loss_best < res.val_loss_init);
    /* only the wkv parts moved (tune_shift off) */
    struct rk_state_layout lay;
    rk_state_layout(t.m, &lay);
    for (size_t i = 0; i < lay.shift_len; i++)
        ck_assert(st[lay.att_shift + i] == 0 && st[lay.ffn_shift + i] == 0);
    free(st);
    rk_dataset_free(train), rk_dataset_free(held);
    fx_close(&t);
}
END_TEST

/* checkpoint callback: keep a deep copy of the checkpoint at step 10 */
struct ck_copy {
    long at;
    struct rk_tune_checkpoint ck;
    float *buf;
};
static int keep_ck(const struct rk_tune_checkpoint *ck, void *user)
{
    struct ck_copy *c = user;
    if (ck->step != c->at)
        return RK_OK;
    c->buf = malloc(sizeof(float) * ck->len * 4);
    memcpy(c->buf, ck->state, sizeof(float) * ck->len);
    memcpy(c->buf + ck->len, ck->m, sizeof(float) * ck->len);
    memcpy(c->buf + 2 * ck->len, ck->v, sizeof(float) * ck->len);
    memcpy(c->buf + 3 * ck->len, ck->best, sizeof(float) * ck->len);
    c->ck = *ck;
    c->ck.state = c->buf;
    c->ck.m = c->buf + ck->len;
    c->ck.v = c->buf + 2 * ck->len;
    c->ck.best = c->buf + 3 * ck->len;
    return RK_OK;
}

START_TEST(test_tune_deterministic_and_resume)
{
    struct fx t;
    fx_open(&t);
    struct rk_dataset *train = make_task(300, 16, 0);
    struct rk_tune_params p;
    task_params(&p);
    p.steps = 16;
    p.batch = 2;
    p.eval_every = 5;
    p.tune_shift = true;
    float *a = malloc(sizeof(float) * t.slen), *b = malloc(sizeof(float) * t.slen);
    float *c = malloc(sizeof(float) * t.slen);
    struct ck_copy cc = {.at = 10};
    p.checkpoint_cb = keep_ck;
    p.checkpoint_every = 5;
    ck_assert_int_eq(rk_tune_run(t.m, &p, train, NULL, NULL, NULL, &cc, a, NULL), RK_OK);
    p.checkpoint_cb = NULL;
    ck_assert_int_eq(rk_tune_run(t.m, &p, train, NULL, NULL, NULL, NULL, b, NULL), RK_OK);
    ck_assert_msg(memcmp(a, b, sizeof(float) * t.slen) == 0, "same seed, different state");
    /* resume from step 10: identical result */
    ck_assert(cc.buf);
    p.resume = &cc.ck;
    ck_assert_int_eq(rk_tune_run(t.m, &p, train, NULL, NULL, NULL, NULL, c, NULL), RK_OK);
    ck_assert_msg(memcmp(a, c, sizeof(float) * t.slen) == 0, "resumed run differs");
    p.resume = NULL;
    /* another seed gives another state */
    p.seed = 2;
    ck_assert_int_eq(rk_tune_run(t.m, &p, train, NULL, NULL, NULL, NULL, c, NULL), RK_OK);
    ck_assert(memcmp(a, c, sizeof(float) * t.slen) != 0);
    free(cc.buf), free(a), free(b), free(c);
    rk_dataset_free(train);
    fx_close(&t);
}
END_TEST

static bool cancel_after(void *user)
{
    int *n = user;
    return --*n < 0;
}

START_TEST(test_tune_numeric_and_cancel)
{
    struct fx t;
    fx_open(&t);
    struct rk_dataset *train = make_task(400, 8, 0);
    struct rk_tune_params p;
    task_params(&p);
    p.steps = 3;
    p.val_split = 0;
    float *st = malloc(sizeof(float) * t.slen), *init = calloc(t.slen, sizeof(float));
    struct rk_state_layout lay;
    rk_state_layout(t.m, &lay);
    init[lay.layer_stride * 1 + lay.wkv + 77] = NAN; /* a poisoned starting state */
    struct rk_tune_result res;
    ck_assert_int_eq(rk_tune_run(t.m, &p, train, init, NULL, NULL, NULL, st, &res), RK_ENUMERIC);
    ck_assert_int_eq(res.steps_done, 0);
    /* cancel at every phase: before the first sequence, inside the backward
     * (between layers), and after a few steps */
    const int budgets[] = {0, 3, 40};
    for (size_t i = 0; i < 3; i++) {
        int n = budgets[i];
        ck_assert_int_eq(rk_tune_run(t.m, &p, train, NULL, cancel_after, NULL, &n, st, &res),
                         RK_ECANCELED);
    }
    /* bad parameters */
    p.lr = 0;
    ck_assert_int_eq(rk_tune_run(t.m, &p, train, NULL, NULL, NULL, NULL, st, NULL), RK_EINVAL);
    task_params(&p);
    p.val_split = 1;
    ck_assert_int_eq(rk_tune_run(t.m, &p, train, NULL, NULL, NULL, NULL, st, NULL), RK_EINVAL);
    /* token ids beyond the vocabulary */
    struct rk_dataset *bad = NULL;
    rk_dataset_create(&bad);
    uint32_t tk[3] = {1, 1000, 2};
    rk_dataset_add(bad, tk, NULL, 3);
    task_params(&p);
    ck_assert_int_eq(rk_tune_run(t.m, &p, bad, NULL, NULL, NULL, NULL, st, NULL), RK_EINVAL);
    rk_dataset_free(bad);
    free(st), free(init);
    rk_dataset_free(train);
    fx_close(&t);
}
END_TEST

/* eval: the mc log-likelihood equals the sum of per-token log-probs from
 * token-by-token forwards */
START_TEST(test_eval_mc_matches_forward)
{
    struct fx t;
    fx_open(&t);
    struct rk_dataset *d = make_task(500, 2, 1);
    struct rk_mc_item it;
    rk_dataset_get_mc(d, 0, &it);
    double lls[4];
    ck_assert_int_eq(rk_eval_mc_item(t.ctx, &it, NULL, lls), RK_OK);
    size_t V = (size_t)rk_model_n_vocab(t.m);
    float *st = calloc(t.slen, sizeof(float)), *lg = malloc(sizeof(float) * V);
    float *st2 = malloc(sizeof(float) * t.slen);
    for (size_t i = 0; i < it.n_prompt; i++)
        ck_assert_int_eq(rk_forward_token(t.ctx, it.prompt[i], st, lg), RK_OK);
    for (size_t c = 0; c < 4; c++) {
        memcpy(st2, st, sizeof(float) * t.slen);
        float *l2 = malloc(sizeof(float) * V);
        memcpy(l2, lg, sizeof(float) * V);
        double s = 0;
        for (size_t j = 0; j < it.n_choice[c]; j++) {
            s += rk_logprob(l2, V, it.choices[c][j]);
            ck_assert_int_eq(rk_forward_token(t.ctx, it.choices[c][j], st2, l2), RK_OK);
        }
        ck_assert_msg(fabs(s - lls[c]) < 1e-3, "choice %zu: %.6f vs %.6f", c, s, lls[c]);
        free(l2);
    }
    struct rk_eval_result er;
    ck_assert_int_eq(rk_eval_run(t.ctx, d, NULL, NULL, NULL, &er), RK_OK);
    ck_assert(er.n_seq == 2 && er.n_targets == 8 && er.n_mc == 1);
    ck_assert(fabs(er.ppl - exp(er.loss)) < 1e-9 * er.ppl);
    free(st), free(lg), free(st2);
    rk_dataset_free(d);
    fx_close(&t);
}
END_TEST

RK_TEST_SUITE(tune_unit_suite, RK_SELF_CONTAINED)
{
    Suite *s = suite_create("tune-unit");
    TCase *tc = tcase_create("optim-dataset");
    tcase_add_test(tc, test_adamw_math);
    tcase_add_test(tc, test_schedule_and_clip);
    tcase_add_test(tc, test_dataset_basics);
    tcase_add_test(tc, test_dataset_split_shuffle);
    suite_add_tcase(s, tc);
    return s;
}

RK_TEST_SUITE(tune_model_suite, RK_SELF_CONTAINED)
{
    Suite *s = suite_create("tune-model");
    TCase *tc = tcase_create("rand-mh");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_eval_mc_matches_forward);
    tcase_add_loop_test(tc, test_tune_learns_task, 0, 2);
    tcase_add_test(tc, test_tune_deterministic_and_resume);
    tcase_add_test(tc, test_tune_numeric_and_cancel);
    suite_add_tcase(s, tc);
    return s;
}

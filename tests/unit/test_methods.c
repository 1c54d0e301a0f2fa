/*
 * test_methods.c - the tuning-method seam: the method table, the logits-loss
 * hook of the backward (the default is cross-entropy with the same bits; a
 * hook's scale reaches the gradient exactly), RKTCKPT1 checkpoints, and the
 * hyperparameter table (ranges, parsing, and that every entry is documented
 * in docs/JOBS.md or docs/TUNING.md).
 */
#include "check_common.h"
#include "rk_config.h"
#include "rk_adapters.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- the method table ----------------------------------------------------- */

START_TEST(test_method_table)
{
    size_t n;
    const struct rk_tune_method *const *ms = rk_tune_methods(&n);
    ck_assert_uint_ge(n, 1);
    ck_assert_ptr_eq(rk_tune_method_find("standard"), &rk_method_standard);
    ck_assert_ptr_eq(rk_tune_method_default(), &rk_method_standard);
    ck_assert_ptr_null(rk_tune_method_find("kernel-x"));
    ck_assert_ptr_null(rk_tune_method_find(NULL));
    char names[128];
    rk_tune_method_names(names, sizeof names);
    ck_assert_str_eq(names, "standard, kernel, dbp, observer, rl");
    ck_assert_ptr_eq(rk_tune_method_find("observer"), &rk_method_observer);
    for (size_t i = 0; i < n; i++) {
        const struct rk_tune_method *m = ms[i];
        ck_assert(m->name && m->help && m->params_len && m->params_init && m->to_state &&
                  m->grad_to_params && m->trainable);
    }
    struct rk_tune_params p;
    rk_tune_params_default(&p);
    ck_assert_ptr_eq(rk_tune_params_method(&p), &rk_method_standard);
    p.method = NULL;
    ck_assert_ptr_eq(rk_tune_params_method(&p), &rk_method_standard);

    // Entries built from "standard" keep its hooks but the ones they change.
    const struct rk_tune_method *st = &rk_method_standard, *ob = &rk_method_observer,
                                *ke = &rk_method_kernel, *db = &rk_method_dbp;
    ck_assert(ob->params_len == st->params_len && ob->params_init == st->params_init &&
              ob->to_state == st->to_state && ob->grad_to_params == st->grad_to_params &&
              ob->trainable == st->trainable && !ob->extra && !ob->to_adapter);
    ck_assert(ob->loss && ob->loss != st->loss);
    const struct rk_tune_method *rl = &rk_method_rl;
    ck_assert(rl->params_len == st->params_len && rl->params_init == st->params_init &&
              rl->to_state == st->to_state && rl->grad_to_params == st->grad_to_params &&
              rl->trainable == st->trainable && !rl->extra && !rl->to_adapter);
    ck_assert(rl->loss && rl->loss != st->loss && rl->loss != ob->loss);
    ck_assert(ke->to_state == st->to_state && !ke->loss);
    ck_assert(ke->params_len != st->params_len && ke->extra && ke->to_adapter);
    ck_assert(db->params_len == ke->params_len && db->params_init == ke->params_init &&
              db->to_state == ke->to_state && db->grad_to_params == ke->grad_to_params &&
              db->trainable == ke->trainable && db->loss == ke->loss &&
              db->extra == ke->extra && db->to_adapter == ke->to_adapter);
    ck_assert_str_ne(db->name, ke->name);
}
END_TEST

/* standard: the parameters are the state; without tune_shift the shifts get
 * no gradient and no update. */
START_TEST(test_method_standard)
{
    struct rk_model *m = NULL;
    struct rk_errbuf eb;
    ck_assert_msg(rk_model_load(rk_test_data("rand-mh.safetensors"), NULL, &m, &eb) == RK_OK,
                  "%s", eb.msg);
    struct rk_tune_params p;
    rk_tune_params_default(&p);
    const struct rk_tune_method *me = &rk_method_standard;
    size_t slen = rk_state_len(m), plen = me->params_len(m, &p);
    ck_assert_uint_eq(plen, slen);
    float *a = malloc(slen * sizeof(float)), *b = malloc(slen * sizeof(float));
    float *g = malloc(slen * sizeof(float));
    for (size_t i = 0; i < slen; i++)
        a[i] = (float)i * 0.001f;
    me->params_init(m, &p, a, b);
    ck_assert(memcmp(a, b, slen * sizeof(float)) == 0);
    me->to_state(m, &p, b, g);
    ck_assert(memcmp(a, g, slen * sizeof(float)) == 0);
    me->grad_to_params(m, &p, b, a, g);
    struct rk_state_layout lay;
    rk_state_layout(m, &lay);
    struct rk_span sp[64];
    size_t ns = me->trainable(m, &p, sp, 64);
    ck_assert_uint_eq(ns, (size_t)rk_model_n_layer(m));
    size_t covered = 0;
    for (size_t i = 0; i < ns; i++) {
        covered += sp[i].len;
        ck_assert_uint_eq(sp[i].len, lay.wkv_len);
    }
    for (int l = 0; l < rk_model_n_layer(m); l++) {
        size_t o = (size_t)l * lay.layer_stride;
        ck_assert(g[o + lay.att_shift] == 0 && g[o + lay.ffn_shift + lay.shift_len - 1] == 0);
        ck_assert(g[o + lay.wkv + 1] == a[o + lay.wkv + 1]);
    }
    ck_assert_uint_lt(covered, slen);
    p.tune_shift = true;
    ck_assert_uint_eq(me->trainable(m, &p, sp, 64), 1);
    ck_assert_uint_eq(sp[0].len, slen);
    me->grad_to_params(m, &p, b, a, g);
    ck_assert(memcmp(a, g, slen * sizeof(float)) == 0);
    free(a), free(b), free(g);
    rk_model_free(m);
}
END_TEST

/* --- the logits-loss hook --------------------------------------------------- */

static double xent_twice(float *lg, int V, size_t t, uint32_t tg, size_t nsel, void *user)
{
    int *calls = user;
    __atomic_add_fetch(calls, 1, __ATOMIC_RELAXED);
    double l = rk_loss_xent(lg, V, t, tg, nsel, NULL);
    for (int v = 0; v < V; v++)
        lg[v] *= 2; /* exact: the gradient doubles, bit for bit */
    return 2 * l;
}

static double xent_same(float *lg, int V, size_t t, uint32_t tg, size_t nsel, void *user)
{
    (void)user;
    return rk_loss_xent(lg, V, t, tg, nsel, NULL);
}

START_TEST(test_loss_hook)
{
    struct rk_model *m = NULL;
    struct rk_errbuf eb;
    ck_assert_msg(rk_model_load(rk_test_data("rand-mh.safetensors"), NULL, &m, &eb) == RK_OK,
                  "%s", eb.msg);
    struct rk_ctx *ctx = NULL;
    struct rk_ctx_params cp = {.n_threads = 2};
    ck_assert_int_eq(rk_ctx_create(m, &cp, &ctx), RK_OK);
    size_t slen = rk_state_len(m), n = 24;
    uint32_t tok[24], tgt[24];
    uint8_t mask[24];
    for (size_t i = 0; i < n; i++) {
        tok[i] = (uint32_t)(i * 37 % 300);
        tgt[i] = (uint32_t)((i + 1) * 37 % 300);
        mask[i] = i % 3 != 0;
    }
    float *st = malloc(slen * sizeof(float)), *g0 = malloc(slen * sizeof(float));
    float *g1 = malloc(slen * sizeof(float)), *g2 = malloc(slen * sizeof(float));
    for (size_t i = 0; i < slen; i++)
        st[i] = (float)((i * 2654435761u) % 1000) * 1e-4f - 0.05f;
    double l0, l1, l2;
    struct rk_backward_params bp = {.checkpoint_every = 5};
    ck_assert_int_eq(rk_backward_seq(ctx, &bp, tok, tgt, mask, n, st, &l0, g0, NULL, NULL),
                     RK_OK);
    bp.loss = xent_same;
    ck_assert_int_eq(rk_backward_seq(ctx, &bp, tok, tgt, mask, n, st, &l1, g1, NULL, NULL),
                     RK_OK);
    ck_assert(l0 == l1 && memcmp(g0, g1, slen * sizeof(float)) == 0);
    int calls = 0;
    bp.loss = xent_twice;
    bp.loss_user = &calls;
    ck_assert_int_eq(rk_backward_seq(ctx, &bp, tok, tgt, mask, n, st, &l2, g2, NULL, NULL),
                     RK_OK);
    ck_assert_int_eq(calls, 16); /* the selected positions */
    ck_assert(l2 == 2 * l0);
    for (size_t i = 0; i < slen; i++)
        ck_assert_msg(g2[i] == 2 * g0[i], "dstate[%zu]: %g vs 2 * %g", i, g2[i], g0[i]);
    free(st), free(g0), free(g1), free(g2);
    rk_ctx_free(ctx);
    rk_model_free(m);
}
END_TEST

/* --- checkpoints ------------------------------------------------------------ */

START_TEST(test_ckpt_roundtrip)
{
    enum { N = 37 };
    float buf[4][N];
    for (int k = 0; k < 4; k++)
        for (int i = 0; i < N; i++)
            buf[k][i] = (float)(k * 100 + i) * 0.5f;
    struct rk_tune_checkpoint ck = {12, N, buf[0], buf[1], buf[2], buf[3], 1.25, 2};
    char path[512], bad[512];
    snprintf(path, sizeof path, "%s/m.ckpt", rk_test_tmpdir());
    snprintf(bad, sizeof bad, "%s/none.ckpt", rk_test_tmpdir());
    ck_assert_int_eq(rk_tune_ckpt_save(path, &ck, NULL), RK_OK);
    struct rk_tune_checkpoint got = {0};
    float *mem = NULL;
    struct rk_errbuf eb = {0};
    ck_assert_int_eq(rk_tune_ckpt_load(path, N, &got, &mem, &eb), RK_OK);
    ck_assert(got.step == 12 && got.len == N && got.best_val == 1.25 && got.bad_evals == 2);
    ck_assert(memcmp(got.state, buf[0], sizeof buf[0]) == 0 &&
              memcmp(got.best, buf[3], sizeof buf[3]) == 0 &&
              memcmp(got.v, buf[2], sizeof buf[2]) == 0);
    free(mem);
    ck_assert_int_eq(rk_tune_ckpt_load(path, N + 1, &got, &mem, &eb), RK_EFORMAT);
    ck_assert_ptr_nonnull(strstr(eb.msg, "not a checkpoint"));
    ck_assert_int_eq(rk_tune_ckpt_load(path, N - 1, &got, &mem, NULL), RK_EFORMAT);
    ck_assert_int_eq(rk_tune_ckpt_load(bad, N, &got, &mem, NULL), RK_ENOTFOUND);
    FILE *f = fopen(bad, "wb");
    fwrite("RKTCKPT2", 1, 8, f);
    fclose(f);
    ck_assert_int_eq(rk_tune_ckpt_load(bad, N, &got, &mem, NULL), RK_EFORMAT);
    ck_assert_ptr_null(mem);
}
END_TEST

/* --- the hyperparameter table ---------------------------------------------- */

START_TEST(test_hparams_table)
{
    size_t n;
    const struct rk_hparam *t = rk_hparams(&n);
    struct rk_tune_params d;
    rk_tune_params_default(&d);
    ck_assert_int_eq(rk_tune_params_check(&d), RK_OK);
    for (size_t i = 0; i < n; i++) {
        const struct rk_hparam *h = &t[i];
        ck_assert_ptr_eq(rk_hparam_find(h->name), h);
        for (size_t j = 0; j < i; j++)
            ck_assert_msg(strcmp(t[j].cli, h->cli), "option --%s twice", h->cli);
        ck_assert(h->help && h->help[0]);
        ck_assert(!(h->where & RK_HP_OPENAI) == !h->openai);
        if (h->where & RK_HP_HOST)
            continue;
        // Defaults lie in range, except "0 = none" of seq_len_max.
        double x = rk_hparam_get(h, &d);
        if (strcmp(h->name, "seq_len_max"))
            ck_assert_msg(rk_hparam_check(h, x, 0) == RK_OK, "default of %s", h->name);
        // get(set(x)) == x at both ends.
        struct rk_tune_params p = d;
        double hi = h->hi;
        rk_hparam_set(h, &p, hi);
        ck_assert_msg(rk_hparam_get(h, &p) == hi, "%s", h->name);
        ck_assert_msg(rk_hparam_check(h, hi, 0) == RK_OK, "%s", h->name);
        if (h->type == RK_HP_INT || h->type == RK_HP_NUM)
            ck_assert_int_eq(rk_hparam_check(h, h->hi * 2 + 1, 0), RK_ERANGE);
    }
    double x;
    ck_assert_int_eq(rk_hparam_parse(rk_hparam_find("steps"), "12", &x), RK_OK);
    ck_assert(x == 12);
    ck_assert_int_eq(rk_hparam_parse(rk_hparam_find("steps"), "1.5", &x), RK_EINVAL);
    ck_assert_int_eq(rk_hparam_parse(rk_hparam_find("steps"), "0", &x), RK_ERANGE);
    ck_assert_int_eq(rk_hparam_check(rk_hparam_find("steps"), 3.0, 0), RK_OK);
    ck_assert_int_eq(rk_hparam_check(rk_hparam_find("steps"), 3.5, 0), RK_ERANGE);
    ck_assert_int_eq(rk_hparam_check(rk_hparam_find("steps"), 11, 10), RK_ERANGE);
    ck_assert_int_eq(rk_hparam_check(rk_hparam_find("lr"), 0, 0), RK_ERANGE); /* (0, ...] */
    ck_assert_int_eq(rk_hparam_parse(rk_hparam_find("decay"), "linear", &x), RK_OK);
    ck_assert(x == RK_LR_LINEAR);
    ck_assert_int_eq(rk_hparam_parse(rk_hparam_find("decay"), "step", &x), RK_EINVAL);
    char r[64];
    rk_hparam_range_str(rk_hparam_find("batch"), 64, r, sizeof r);
    ck_assert_str_eq(r, "[1, 64]");
    rk_hparam_range_str(rk_hparam_find("lr"), 0, r, sizeof r);
    ck_assert_str_eq(r, "(0, 1000]");
}
END_TEST

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    ck_assert_msg(f != NULL, "%s", path);
    static char buf[1 << 20];
    size_t k = fread(buf, 1, sizeof buf - 1, f);
    buf[k] = 0;
    fclose(f);
    return buf;
}

/* Every hyperparameter of the table is documented: the job ones as `name` in
 * docs/JOBS.md, the CLI ones as `--option` in docs/TUNING.md. */
START_TEST(test_hparams_documented)
{
    char path[4096];
    size_t n;
    const struct rk_hparam *t = rk_hparams(&n);
    snprintf(path, sizeof path, "%s/docs/JOBS.md", RK_SOURCE_ROOT);
    char *jobs = strdup(slurp(path));
    snprintf(path, sizeof path, "%s/docs/TUNING.md", RK_SOURCE_ROOT);
    char *tuning = strdup(slurp(path));
    for (size_t i = 0; i < n; i++) {
        char key[96];
        if (t[i].where & RK_HP_JOB) {
            snprintf(key, sizeof key, "`%s`", t[i].name);
            ck_assert_msg(strstr(jobs, key), "%s is not documented in docs/JOBS.md", key);
        }
        if (t[i].where & RK_HP_OPENAI) {
            snprintf(key, sizeof key, "`%s`", t[i].openai);
            ck_assert_msg(strstr(jobs, key), "%s is not documented in docs/JOBS.md", key);
        }
        if (t[i].where & RK_HP_CLI) {
            snprintf(key, sizeof key, "`--%s", t[i].cli);
            ck_assert_msg(strstr(tuning, key), "%s is not documented in docs/TUNING.md", key);
        }
    }
    size_t nm;
    const struct rk_tune_method *const *ms = rk_tune_methods(&nm);
    for (size_t i = 0; i < nm; i++) {
        char key[96];
        snprintf(key, sizeof key, "## Method `%s`", ms[i]->name);
        ck_assert_msg(strstr(tuning, key), "method %s has no section in docs/TUNING.md",
                      ms[i]->name);
    }
    free(jobs), free(tuning);
}
END_TEST


/* --- the observer method's KL loss -------------------------------------------- */

/* The targets of one KL row; kl_at is its rk_fd_row_loss. */
struct kl_bins {
    const uint32_t *ids;
    const float *q;
    int k;
    float rest;
};

static double kl_at(float *row, size_t n, void *user)
{
    const struct kl_bins *b = user;
    return rk_observer_kl_row(row, (int)n, b->ids, b->q, b->k, b->rest, 1);
}

/* The gradient of KL(q || s) against central differences, at a point where
 * every bin (the rest included) has weight; with nsel = 3 it is a third. */
START_TEST(test_observer_kl_grad)
{
    enum { V = 40, K = 5 };
    float lg[V], g[V];
    for (int v = 0; v < V; v++)
        lg[v] = (float)((v * 7919) % 23) * 0.125f - 1.5f;
    uint32_t ids[K] = {3, 17, 5, UINT32_MAX, 30};
    double lps[K] = {log(0.4), log(0.2), log(0.1), -INFINITY, log(0.05)};
    struct rk_observer_targets *o = NULL;
    struct rk_errbuf eb = {0};
    ck_assert_int_eq(rk_observer_targets_create(1, &o), RK_OK);
    ck_assert_int_eq(rk_observer_targets_set(o, 0, 0, 1, K, ids, lps, &eb), RK_OK);
    ck_assert_uint_eq(rk_observer_targets_positions(o), 1);
    rk_observer_targets_free(o);
    /* the same renormalisation by hand: S = 0.75 < 1, rest = 0.25 */
    float q[K] = {0.4f, 0.2f, 0.1f, 0, 0.05f}, rest = 0.25f;
    memcpy(g, lg, sizeof g);
    double l = rk_observer_kl_row(g, V, ids, q, K, rest, 3);
    ck_assert(l > 0 && isfinite(l));
    const float h = 1.0f / 64;
    struct kl_bins bins = {ids, q, K, rest};
    for (int v = 0; v < V; v++) {
        double fd = rk_fd_row(kl_at, &bins, lg, V, (size_t)v, h);
        ck_assert_msg(fabs(fd - 3 * (double)g[v]) < 2e-4, "v=%d fd=%g grad=%g", v, fd,
                      3 * (double)g[v]);
    }
}
END_TEST

/* A teacher whose top-k are the student's own probabilities: KL = 0 and no
 * gradient; malformed log-probabilities are refused. */
START_TEST(test_observer_kl_zero)
{
    enum { V = 32, K = 6 };
    float lg[V];
    double se = 0;
    for (int v = 0; v < V; v++) {
        lg[v] = (float)((v * 31) % 13) * 0.3f - 2;
        se += exp((double)lg[v]);
    }
    uint32_t ids[K] = {0, 9, 4, 21, 13, 2};
    double lps[K];
    for (int i = 0; i < K; i++)
        lps[i] = (double)lg[ids[i]] - log(se);
    struct rk_observer_targets *o = NULL;
    struct rk_errbuf eb = {0};
    ck_assert_int_eq(rk_observer_targets_create(2, &o), RK_OK);
    ck_assert_int_eq(rk_observer_targets_set(o, 1, 4, 1, K, ids, lps, &eb), RK_OK);
    /* the targets through the loss hook of a run, at position 4 of sequence 1 */
    struct rk_dataset *ds = NULL;
    uint32_t tok[6] = {1, 2, 3, 4, 5, 6};
    ck_assert_int_eq(rk_dataset_create(&ds), RK_OK);
    ck_assert_int_eq(rk_dataset_add(ds, tok, NULL, 3), RK_OK);
    ck_assert_int_eq(rk_dataset_add(ds, tok, NULL, 6), RK_OK);
    ck_assert_uint_eq(rk_dataset_tag(ds, 1), 1);
    struct rk_tune_params p;
    rk_tune_params_default(&p);
    p.method = &rk_method_observer;
    p.method_data = o;
    struct rk_tune_loss_ctx lc = {.p = &p, .ds = ds, .seq = 1};
    float g[V];
    memcpy(g, lg, sizeof g);
    double l = rk_method_observer.loss(g, V, 4, 7, 1, &lc);
    ck_assert_msg(fabs(l) < 1e-6, "KL %g", l);
    for (int v = 0; v < V; v++)
        ck_assert_msg(fabs(g[v]) < 1e-6, "v=%d grad %g", v, (double)g[v]);
    /* outside the answer: cross-entropy */
    memcpy(g, lg, sizeof g);
    ck_assert(fabs(rk_method_observer.loss(g, V, 3, 7, 1, &lc) -
                   (log(se) - (double)lg[7])) < 1e-5);
    /* a split keeps the tags */
    struct rk_dataset *tr = NULL, *va = NULL;
    ck_assert_int_eq(rk_dataset_split(ds, 0.5, 1, &tr, &va), RK_OK);
    ck_assert_uint_eq(rk_dataset_tag(tr, 0) + rk_dataset_tag(va, 0), 1);
    rk_dataset_free(tr), rk_dataset_free(va), rk_dataset_free(ds);
    /* malformed: above 0, NaN, a sum above 1 */
    double bad[K] = {0.5, -1, -1, -1, -1, -1};
    ck_assert_int_eq(rk_observer_targets_set(o, 0, 0, 1, K, ids, bad, &eb), RK_EFORMAT);
    bad[0] = NAN;
    ck_assert_int_eq(rk_observer_targets_set(o, 0, 0, 1, K, ids, bad, &eb), RK_EFORMAT);
    for (int i = 0; i < K; i++)
        bad[i] = log(0.3);
    ck_assert_int_eq(rk_observer_targets_set(o, 0, 0, 1, K, ids, bad, &eb), RK_EFORMAT);
    ck_assert(strstr(eb.msg, "sum"));
    /* one id twice adds up (0.3 + 0.3 + 0.3 = 0.9 < 1) */
    uint32_t dup[3] = {5, 5, 6};
    ck_assert_int_eq(rk_observer_targets_set(o, 0, 0, 1, 3, dup, bad, &eb), RK_OK);
    rk_observer_targets_free(o);
}
END_TEST

RK_TEST_SUITE(methods_suite, RK_SELF_CONTAINED)
{
    Suite *s = suite_create("methods");
    TCase *tc = tcase_create("seam");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_method_table);
    tcase_add_test(tc, test_method_standard);
    tcase_add_test(tc, test_loss_hook);
    tcase_add_test(tc, test_observer_kl_grad);
    tcase_add_test(tc, test_observer_kl_zero);
    tcase_add_test(tc, test_ckpt_roundtrip);
    tcase_add_test(tc, test_hparams_table);
    tcase_add_test(tc, test_hparams_documented);
    suite_add_tcase(s, tc);
    return s;
}

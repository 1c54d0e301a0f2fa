/*
 * test_kernel.c - kernel states (methods "kernel" and "dbp"):
 *
 *   1. the read-out term's gradient (rk_kernel_readout through
 *      rk_backward_seq) against central finite differences of the loss,
 *      along the gradient and along random directions, for P, for the WKV
 *      state and the token shift of the first layer (whose gradient flows
 *      back through r and w of the later layer's term), with both fades;
 *   2. P = 0 gives the plain model's logits and gradient;
 *   3. mixed passes: sequences with no state, a standard state and a
 *      kernel state in one rk_forward_multi_ro, each bit-identical to
 *      running alone (prefill, then decode steps) with the AVX-512 kernels,
 *      as rk_forward_multi promises (within 1e-4 with the portable ones);
 *   1b. the same gradient against tools/ref_rwkv7.py (float64 NumPy, its own
 *      forward and its own writer of the state file): the loss and central
 *      differences along fixed directions, tests/data/kernel-mh.*;
 *   4. state files: a kernel state round-trips through format_version 2,
 *      the plain reader refuses it, standard files stay version 1;
 *   5. tuning: kernel and dbp runs lower the loss, and resume bit-identically
 *      from a checkpoint;
 *   7. kl_weight with a kernel state: the generic text runs with the
 *      read-out term, so a state whose core part is the base's but whose P
 *      is not zero has a KL to the base above zero;
 *   6. the two builds of the hot loops (AVX-512 and portable) give the same
 *      bits in a kernel and a dbp run, and RWKVD_NO_AVX512 selects the
 *      portable one.
 */
#include "check_common.h"
#include "rk_adapters.h"
#include "rk_fileio.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static float rng_sym(uint64_t *s) { return (float)((double)(rng_next(s) >> 11) / 9007199254740992.0 * 2 - 1); }

struct kfx {
    struct rk_model *m;
    struct rk_ctx *ctx;
    struct rk_tune_params p;
    struct rk_kernel_layout kl;
    size_t slen;
    float *ad; /* adapter [kl.len] */
    struct rk_kernel_view view;
};

static void kfx_open(struct kfx *f, int M, int fade, float pscale)
{
    struct rk_errbuf eb;
    f->m = NULL;
    ck_assert_msg(rk_model_load(rk_test_data("rand-mh.safetensors"), NULL, &f->m, &eb) == RK_OK,
                  "%s", eb.msg);
    struct rk_ctx_params cp = {.n_threads = 2};
    ck_assert_int_eq(rk_ctx_create(f->m, &cp, &f->ctx), RK_OK);
    rk_tune_params_default(&f->p);
    f->p.method = &rk_method_kernel;
    f->p.kernel_m = M;
    f->p.kernel_fade = fade;
    f->p.kernel_seed = 7;
    f->slen = rk_state_len(f->m);
    rk_kernel_layout(f->m, M, &f->kl);
    ck_assert_uint_eq(rk_method_kernel.params_len(f->m, &f->p), f->kl.len);
    f->ad = malloc(f->kl.len * sizeof(float));
    rk_method_kernel.params_init(f->m, &f->p, NULL, f->ad);
    uint64_t s = 99;
    for (size_t i = 0; i < f->slen; i++)
        f->ad[i] = 0.05f * rng_sym(&s);
    for (size_t i = f->kl.P; i < f->kl.omega; i++)
        f->ad[i] = pscale * rng_sym(&s);
    rk_kernel_view_of(f->m, M, fade, f->ad, &f->view);
}

static void kfx_close(struct kfx *f)
{
    free(f->ad);
    rk_ctx_free(f->ctx);
    rk_model_free(f->m);
}

enum { T = 20 };
static uint32_t tok[T], tgt[T];

static void make_tokens(void)
{
    for (size_t i = 0; i < T; i++) {
        tok[i] = (uint32_t)(i * 37 % 300);
        tgt[i] = (uint32_t)((i + 1) * 37 % 300);
    }
}

/* loss and gradients (dstate [slen], dP [nP]) at the fixture's adapter */
static double loss_grad(struct kfx *f, float *dst, float *dP)
{
    size_t nP = f->kl.omega - f->kl.P;
    float *tmp = dP ? NULL : malloc(nP * sizeof(float));
    float *dst_tmp = dst ? NULL : malloc(f->slen * sizeof(float));
    struct rk_kernel_grad g = {.weight = 1.0f, .dP = dP ? dP : tmp};
    memset(g.dP, 0, nP * sizeof(float));
    struct rk_backward_params bp = {.checkpoint_every = 6, .ro_ops = &rk_kernel_readout,
                                    .ro_data = &f->view, .ro_grad = &g};
    double l;
    ck_assert_int_eq(rk_backward_seq(f->ctx, &bp, tok, tgt, NULL, T, f->ad, &l,
                                     dst ? dst : dst_tmp, NULL, NULL),
                     RK_OK);
    free(tmp), free(dst_tmp);
    return l;
}

static double loss_at(void *user) { return loss_grad(user, NULL, NULL); }

/* Central difference of the loss along u over the floats [off, off + n) of
 * the adapter, against g . u. */
static void check_dir(struct kfx *f, size_t off, size_t n, const float *u, const float *gr,
                      double eps, const char *what)
{
    double gu = 0, un = 0;
    for (size_t i = 0; i < n; i++) {
        gu += (double)gr[i] * u[i];
        un += (double)u[i] * u[i];
    }
    double fd = rk_fd_along(loss_at, f, f->ad + off, u, n, eps);
    double tol = 1e-2 * fabs(gu) + 2e-4 * sqrt(un);
    ck_assert_msg(fabs(fd - gu) <= tol, "%s: finite difference %.6g, gradient %.6g", what, fd,
                  gu);
}

static void fd_case(int fade)
{
    struct kfx f;
    kfx_open(&f, 32, fade, 4.0f);
    make_tokens();
    size_t nP = f.kl.omega - f.kl.P;
    float *dst = malloc(f.slen * sizeof(float)), *dP = malloc(nP * sizeof(float));
    double l0 = loss_grad(&f, dst, dP);
    ck_assert(isfinite(l0));
    struct rk_state_layout lay;
    rk_state_layout(f.m, &lay);
    uint64_t s = 5;
    /* P: along the gradient and along a random direction */
    double gn = 0;
    for (size_t i = 0; i < nP; i++)
        gn += (double)dP[i] * dP[i];
    ck_assert(gn > 0);
    float *u = malloc(nP * sizeof(float));
    for (size_t i = 0; i < nP; i++)
        u[i] = (float)(dP[i] / sqrt(gn));
    check_dir(&f, f.kl.P, nP, u, dP, 1e-2, "P along the gradient");
    for (size_t i = 0; i < nP; i++)
        u[i] = rng_sym(&s) / sqrtf((float)nP / 3.0f);
    check_dir(&f, f.kl.P, nP, u, dP, 1e-2, "P along a random direction");
    /* the first layer's WKV state and att shift: through r and w of layer 1's term */
    const float *gw = dst + lay.wkv, *gs = dst + lay.att_shift;
    float *uw = malloc(lay.wkv_len * sizeof(float));
    double wn = 0;
    for (size_t i = 0; i < lay.wkv_len; i++)
        wn += (double)gw[i] * gw[i];
    for (size_t i = 0; i < lay.wkv_len; i++)
        uw[i] = (float)(gw[i] / sqrt(wn));
    check_dir(&f, lay.wkv, lay.wkv_len, uw, gw, 1e-2, "layer-0 WKV state");
    double sn = 0;
    for (size_t i = 0; i < lay.shift_len; i++)
        sn += (double)gs[i] * gs[i];
    for (size_t i = 0; i < lay.shift_len; i++)
        uw[i] = (float)(gs[i] / sqrt(sn));
    check_dir(&f, lay.att_shift, lay.shift_len, uw, gs, 1e-2, "layer-0 att shift");
    /* a single P element with a large gradient */
    size_t best = 0;
    for (size_t i = 1; i < nP; i++)
        if (fabsf(dP[i]) > fabsf(dP[best]))
            best = i;
    float one = 1.0f;
    check_dir(&f, f.kl.P + best, 1, &one, dP + best, 1e-2, "largest P element");
    free(u), free(uw), free(dst), free(dP);
    kfx_close(&f);
}

/* The term alone: loss = sum_t dy_t . y_t(r, w) over n rows of one head;
 * rk_kernel_readout's bwd against central differences along its own dr
 * and dw and along random directions. */
static double hook_loss(const struct kfx *f, size_t n, const float *r, const float *w,
                        const float *dy)
{
    const size_t N = (size_t)f->view.N;
    float *y = calloc(n * N, sizeof(float)), carry[64] = {0};
    rk_kernel_readout.fwd(&f->view, 1, 2, n, N, r, w, carry, y);
    double l = 0;
    for (size_t i = 0; i < n * N; i++)
        l += (double)dy[i] * y[i];
    free(y);
    return l;
}

/* hook_loss at (r, w), either of which rk_fd_along moves; an rk_fd_loss. */
struct hook_pt {
    const struct kfx *f;
    size_t n;
    const float *r, *w, *dy;
};

static double hook_at(void *user)
{
    const struct hook_pt *p = user;
    return hook_loss(p->f, p->n, p->r, p->w, p->dy);
}

static void hook_case(int fade)
{
    struct kfx f;
    kfx_open(&f, 48, fade, 0.5f);
    const size_t n = 8, N = (size_t)f.view.N, nn = n * N;
    float *r = malloc(nn * sizeof(float)), *w = malloc(nn * sizeof(float));
    float *dy = malloc(nn * sizeof(float)), *dr = calloc(nn, sizeof(float));
    float *dw = calloc(nn, sizeof(float)), *u = malloc(nn * sizeof(float));
    uint64_t s = 3;
    for (size_t i = 0; i < nn; i++) {
        r[i] = 2 * rng_sym(&s);
        w[i] = 0.775f + 0.2f * rng_sym(&s);
        dy[i] = rng_sym(&s);
    }
    size_t nP = f.kl.omega - f.kl.P;
    struct rk_kernel_grad g = {.weight = 1.0f, .dP = calloc(nP, sizeof(float))};
    float *scr = malloc(rk_kernel_readout.bwd_scratch(&f.view, n) * sizeof(float));
    rk_kernel_readout.bwd(&f.view, 1, 2, n, N, r, w, dy, dr, dw, &g, scr);
    free(scr);
    for (int which = 0; which < 2; which++) {
        float *v = which ? w : r, *gr = which ? dw : dr;
        if (which && fade == RK_FADE_NONE) {
            for (size_t i = 0; i < nn; i++)
                ck_assert(dw[i] == 0);
            continue;
        }
        for (int dir = 0; dir < 2; dir++) {
            double gn = 0, gu = 0;
            for (size_t i = 0; i < nn; i++)
                gn += (double)gr[i] * gr[i];
            ck_assert(gn > 0);
            for (size_t i = 0; i < nn; i++)
                u[i] = dir ? rng_sym(&s) : (float)(gr[i] / sqrt(gn));
            for (size_t i = 0; i < nn; i++)
                gu += (double)gr[i] * u[i];
            struct hook_pt pt = {&f, n, r, w, dy};
            double fd = rk_fd_along(hook_at, &pt, v, u, nn, which ? 1e-3 : 1e-2);
            ck_assert_msg(fabs(fd - gu) <= 5e-3 * fabs(gu) + 1e-3 * sqrt(gn),
                          "d%s (%s, fade %d): finite difference %.7g, gradient %.7g",
                          which ? "w" : "r", dir ? "random" : "along", fade, fd, gu);
        }
    }
    free(r), free(w), free(dy), free(dr), free(dw), free(u), free(g.dP);
    kfx_close(&f);
}

START_TEST(test_kernel_hook_fd)
{
    hook_case(RK_FADE_MEAN);
    hook_case(RK_FADE_NONE);
}
END_TEST

/* the features' cos and sin against libm over the range they meet */
START_TEST(test_kernel_cos_sin)
{
    enum { n = 4001 };
    static float z[n], c[n], sn[n];
    for (int i = 0; i < n; i++)
        z[i] = -60.0f + 120.0f * (float)i / (n - 1);
    rk_kernel_cos_sin(z, c, sn, n);
    for (int i = 0; i < n; i++) {
        ck_assert_msg(fabs(c[i] - cos((double)z[i])) < 4e-7, "cos(%g) = %.9g", z[i], c[i]);
        ck_assert_msg(fabs(sn[i] - sin((double)z[i])) < 4e-7, "sin(%g) = %.9g", z[i], sn[i]);
    }
}
END_TEST

START_TEST(test_kernel_fd_mean) { fd_case(RK_FADE_MEAN); }
END_TEST

START_TEST(test_kernel_fd_none) { fd_case(RK_FADE_NONE); }
END_TEST

/* rwkvd's loss and gradient against the float64 NumPy reference */
START_TEST(test_kernel_vs_numpy)
{
    struct rk_model *m = NULL;
    struct rk_errbuf eb;
    ck_assert_msg(rk_model_load(rk_test_data("rand-mh.safetensors"), NULL, &m, &eb) == RK_OK,
                  "%s", eb.msg);
    void *buf;
    size_t len;
    ck_assert_int_eq(rk_file_read_all(rk_test_data("kernel-mh.safetensors"), 1 << 24, &buf, &len,
                                      &eb), RK_OK);
    float *ad = NULL;
    struct rk_state_meta meta;
    ck_assert_msg(rk_state_file_parse_alloc(buf, len, m, false, &ad, &meta, &eb) == RK_OK, "%s",
                  eb.msg);
    free(buf);
    ck_assert_int_eq(meta.kernel_m, 16);
    ck_assert_int_eq(meta.kernel_fade, RK_FADE_MEAN);
    const int M = 16;
    struct rk_kernel_view view;
    rk_kernel_view_of(m, M, meta.kernel_fade, ad, &view);
    struct rk_kernel_layout kl;
    rk_kernel_layout(m, M, &kl);
    const uint32_t tk[12] = {5, 17, 200, 33, 91, 4, 250, 120, 7, 64, 300, 12};
    size_t slen = rk_state_len(m), nP = kl.omega - kl.P;
    float *dst = malloc(slen * sizeof(float));
    struct rk_kernel_grad g = {.weight = 1.0f, .dP = calloc(nP, sizeof(float))};
    struct rk_backward_params bp = {.ro_ops = &rk_kernel_readout, .ro_data = &view, .ro_grad = &g};
    struct rk_ctx *ctx = NULL;
    ck_assert_int_eq(rk_ctx_create(m, NULL, &ctx), RK_OK);
    double loss;
    ck_assert_int_eq(rk_backward_seq(ctx, &bp, tk, tk + 1, NULL, 11, ad, &loss, dst, NULL, NULL),
                     RK_OK);
    FILE *f = fopen(rk_test_data("kernel-mh.fd.txt"), "r");
    ck_assert_ptr_nonnull(f);
    char name[32];
    double want;
    int layer;
    ck_assert_int_eq(fscanf(f, "%31s %lf", name, &want), 2);
    ck_assert_str_eq(name, "loss");
    ck_assert_msg(fabs(loss - want) < 1e-5 * fabs(want), "loss %.9g, NumPy %.9g", loss, want);
    struct rk_state_layout lay;
    rk_state_layout(m, &lay);
    const int H = rk_model_n_head(m), N = rk_model_head_size(m), L = rk_model_n_layer(m);
    int seen = 0;
    while (fscanf(f, "%31s %d %lf", name, &layer, &want) == 3) {
        double gu = 0;
        if (!strcmp(name, "P")) {
            ck_assert_int_eq(layer, L - 1);
            const float *gp = g.dP + (size_t)layer * H * N * M;
            for (size_t i = 0; i < (size_t)H * N * M; i++)
                gu += gp[i] * sin(1.7 * (double)i + 0.3);
        } else if (!strcmp(name, "wkv")) {
            const float *gw = dst + (size_t)layer * lay.layer_stride + lay.wkv;
            for (size_t i = 0; i < lay.wkv_len; i++)
                gu += gw[i] * sin(2.3 * (double)i + 1.1);
        } else {
            ck_assert_str_eq(name, "att_shift");
            const float *gs = dst + (size_t)layer * lay.layer_stride + lay.att_shift;
            for (size_t i = 0; i < lay.shift_len; i++)
                gu += gs[i] * sin(0.7 * (double)i + 2.0);
        }
        ck_assert_msg(fabs(gu - want) < 2e-3 * fabs(want) + 1e-5, "%s %d: rwkvd %.9g, NumPy %.9g",
                      name, layer, gu, want);
        seen++;
    }
    fclose(f);
    ck_assert_int_eq(seen, 3);
    /* the full gradient of tools/ref_backward_torch.py --kernel, where it was made */
    FILE *tf = fopen(rk_test_data("kernel-mh.grad-torch.bin"), "rb");
    if (tf) {
        char magic[8];
        uint32_t hd[3];
        double tl;
        ck_assert(fread(magic, 1, 8, tf) == 8 && !memcmp(magic, "RKKGRD01", 8));
        ck_assert(fread(hd, 4, 3, tf) == 3 && hd[0] == 11 && hd[1] == slen && hd[2] == nP);
        uint32_t ttk[11];
        ck_assert(fread(ttk, 4, 11, tf) == 11 && !memcmp(ttk, tk, sizeof ttk));
        ck_assert(fread(&tl, 8, 1, tf) == 1);
        ck_assert_msg(fabs(loss - tl) < 1e-5 * fabs(tl), "loss %.9g, torch %.9g", loss, tl);
        float *ref = malloc((slen + nP) * sizeof(float));
        ck_assert(fread(ref, 4, slen + nP, tf) == slen + nP);
        double mx = 0, err = 0;
        for (size_t i = 0; i < slen + nP; i++) {
            double got = i < slen ? dst[i] : g.dP[i - slen];
            mx = fmax(mx, fabs(ref[i]));
            err = fmax(err, fabs(got - ref[i]));
        }
        ck_assert_msg(err <= 2e-3 * mx, "gradient vs torch: max error %g of max %g", err, mx);
        free(ref);
        fclose(tf);
    }
    free(g.dP), free(dst), free(ad);
    rk_ctx_free(ctx);
    rk_model_free(m);
}
END_TEST

/* P = 0: the plain model's logits and gradient */
START_TEST(test_kernel_zero_is_base)
{
    struct kfx f;
    kfx_open(&f, 48, RK_FADE_MEAN, 0.0f);
    make_tokens();
    size_t V = (size_t)rk_model_n_vocab(f.m);
    float *s1 = malloc(f.slen * sizeof(float)), *s2 = malloc(f.slen * sizeof(float));
    float *l1 = malloc(T * V * sizeof(float)), *l2 = malloc(T * V * sizeof(float));
    float carry[64] = {0};
    struct rk_readout ro = {&rk_kernel_readout, &f.view, carry};
    memcpy(s1, f.ad, f.slen * sizeof(float));
    memcpy(s2, f.ad, f.slen * sizeof(float));
    ck_assert_int_eq(rk_forward_seq(f.ctx, tok, T, s1, l1, true), RK_OK);
    ck_assert_int_eq(rk_forward_seq_ro(f.ctx, tok, T, s2, &ro, l2, true), RK_OK);
    ck_assert(memcmp(l1, l2, T * V * sizeof(float)) == 0);
    ck_assert(memcmp(s1, s2, f.slen * sizeof(float)) == 0);
    float *g1 = malloc(f.slen * sizeof(float)), *g2 = malloc(f.slen * sizeof(float));
    double a, b;
    ck_assert_int_eq(rk_backward_seq(f.ctx, NULL, tok, tgt, NULL, T, f.ad, &a, g1, NULL, NULL),
                     RK_OK);
    b = loss_grad(&f, g2, NULL);
    ck_assert(a == b);
    for (size_t i = 0; i < f.slen; i++)
        ck_assert_msg(g1[i] == g2[i], "dstate[%zu] %g vs %g", i, g1[i], g2[i]);
    free(s1), free(s2), free(l1), free(l2), free(g1), free(g2);
    kfx_close(&f);
}
END_TEST

/* a and b [n]: the same bits with the AVX-512 kernels (rk_forward_multi's
 * promise), within 1e-4 relative with the portable ones */
static bool same_out(const float *a, const float *b, size_t n)
{
    if (!getenv("RWKVD_NO_AVX512") && __builtin_cpu_supports("avx512f"))
        return memcmp(a, b, n * sizeof(float)) == 0;
    for (size_t i = 0; i < n; i++)
        if (!(fabsf(a[i] - b[i]) <= 1e-4f * (1 + fabsf(a[i]))))
            return false;
    return true;
}

/* no state, a standard state and a kernel state in one pass, each as alone */
START_TEST(test_kernel_mixed_batch)
{
    struct kfx f;
    kfx_open(&f, 64, RK_FADE_MEAN, 0.3f);
    size_t V = (size_t)rk_model_n_vocab(f.m), LH = (size_t)f.view.L * f.view.H;
    enum { S = 3, STEPS = 4 };
    const size_t plen[S] = {5, 9, 7};
    float *st[S], *al[S], *cy[S], *cya[S];
    struct rk_readout ro[S], roa[S];
    const struct rk_readout *rop[S];
    for (int i = 0; i < S; i++) {
        st[i] = calloc(f.slen, sizeof(float));
        al[i] = calloc(f.slen, sizeof(float));
        cy[i] = calloc(LH, sizeof(float));
        cya[i] = calloc(LH, sizeof(float));
        if (i > 0) { /* 1: the state part alone (standard); 2: the kernel state */
            memcpy(st[i], f.ad, f.slen * sizeof(float));
            memcpy(al[i], f.ad, f.slen * sizeof(float));
        }
        ro[i] = (struct rk_readout){&rk_kernel_readout, &f.view, cy[i]};
        roa[i] = (struct rk_readout){&rk_kernel_readout, &f.view, cya[i]};
        rop[i] = i == 2 ? &ro[i] : NULL;
    }
    uint32_t toks[32];
    size_t o = 0;
    for (int i = 0; i < S; i++)
        for (size_t t = 0; t < plen[i]; t++)
            toks[o++] = (uint32_t)((i * 101 + t * 13) % 300);
    float *lg = malloc(S * V * sizeof(float)), *la = malloc(V * sizeof(float));
    ck_assert_int_eq(rk_forward_multi_ro(f.ctx, S, toks, plen, st, rop, NULL, lg), RK_OK);
    o = 0;
    for (int i = 0; i < S; i++) {
        ck_assert_int_eq(rk_forward_seq_ro(f.ctx, toks + o, plen[i], al[i],
                                           i == 2 ? &roa[i] : NULL, la, false),
                         RK_OK);
        o += plen[i];
        ck_assert_msg(same_out(la, lg + i * V, V), "prefill %d differs", i);
    }
    ck_assert(same_out(cy[2], cya[2], LH));
    /* the kernel term changed sequence 2's logits */
    float *lb = malloc(V * sizeof(float)), *sb = calloc(f.slen, sizeof(float));
    memcpy(sb, f.ad, f.slen * sizeof(float));
    ck_assert_int_eq(rk_forward_seq(f.ctx, toks + plen[0] + plen[1], plen[2], sb, lb, false),
                     RK_OK);
    ck_assert(!same_out(lb, lg + 2 * V, V));
    const size_t one[S] = {1, 1, 1};
    for (int k = 0; k < STEPS; k++) {
        uint32_t dt[S];
        for (int i = 0; i < S; i++)
            dt[i] = (uint32_t)((k * 7 + i * 31) % 300);
        ck_assert_int_eq(rk_forward_multi_ro(f.ctx, S, dt, one, st, rop, NULL, lg), RK_OK);
        for (int i = 0; i < S; i++) {
            ck_assert_int_eq(
                rk_forward_seq_ro(f.ctx, dt + i, 1, al[i], i == 2 ? &roa[i] : NULL, la, false),
                RK_OK);
            ck_assert_msg(same_out(la, lg + i * V, V), "decode step %d sequence %d differs", k, i);
            ck_assert(same_out(st[i], al[i], f.slen));
        }
    }
    for (int i = 0; i < S; i++)
        free(st[i]), free(al[i]), free(cy[i]), free(cya[i]);
    free(lg), free(la), free(lb), free(sb);
    kfx_close(&f);
}
END_TEST

START_TEST(test_kernel_state_file)
{
    struct kfx f;
    kfx_open(&f, 32, RK_FADE_NONE, 0.2f);
    struct rk_state_meta meta;
    rk_state_meta_init(&meta, f.m);
    snprintf(meta.method, sizeof meta.method, "kernel");
    meta.kernel_m = 32;
    meta.kernel_fade = RK_FADE_NONE;
    ck_assert_uint_eq(rk_adapter_len(f.m, &meta), f.kl.len);
    void *buf;
    size_t len;
    ck_assert_int_eq(rk_state_file_encode(f.m, f.ad, &meta, &buf, &len), RK_OK);
    float *back = NULL;
    struct rk_state_meta got;
    struct rk_errbuf eb = {0};
    ck_assert_msg(rk_state_file_parse_alloc(buf, len, f.m, true, &back, &got, &eb) == RK_OK,
                  "%s", eb.msg);
    ck_assert(memcmp(back, f.ad, f.kl.len * sizeof(float)) == 0);
    ck_assert_int_eq(got.kernel_m, 32);
    ck_assert_int_eq(got.kernel_fade, RK_FADE_NONE);
    ck_assert_str_eq(got.method, "kernel");
    free(back);
    /* the plain reader refuses it, saying why */
    float *st = malloc(f.slen * sizeof(float));
    ck_assert_int_eq(rk_state_file_parse(buf, len, f.m, true, st, NULL, &eb), RK_EFORMAT);
    ck_assert_msg(strstr(eb.msg, "kernel state"), "%s", eb.msg);
    /* a truncated kernel file is refused */
    for (size_t n = len / 2; n < len; n += len / 7 + 1) {
        float *x = NULL;
        ck_assert_int_ne(rk_state_file_parse_alloc(buf, n, f.m, true, &x, NULL, NULL), RK_OK);
        ck_assert_ptr_null(x);
    }
    free(buf);
    /* a standard state stays format_version 1 and loads both ways */
    meta.kernel_m = 0;
    ck_assert_int_eq(rk_state_file_encode(f.m, f.ad, &meta, &buf, &len), RK_OK);
    ck_assert(memmem(buf, len, "\"format_version\":\"1\"", 20) != NULL);
    ck_assert_int_eq(rk_state_file_parse(buf, len, f.m, true, st, &got, NULL), RK_OK);
    ck_assert_int_eq(got.kernel_m, 0);
    ck_assert_int_eq(rk_state_file_parse_alloc(buf, len, f.m, true, &back, &got, NULL), RK_OK);
    ck_assert(memcmp(back, f.ad, f.slen * sizeof(float)) == 0);
    free(back), free(buf), free(st);
    kfx_close(&f);
}
END_TEST

/* checkpoint at step `at`, deep copy */
struct kck {
    long at;
    struct rk_tune_checkpoint ck;
    float *buf;
};
static int keep(const struct rk_tune_checkpoint *ck, void *user)
{
    struct kck *c = user;
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

static void tune_case(const struct rk_tune_method *me)
{
    struct rk_model *m = NULL;
    struct rk_errbuf eb;
    ck_assert_msg(rk_model_load(rk_test_data("rand-mh.safetensors"), NULL, &m, &eb) == RK_OK,
                  "%s", eb.msg);
    struct rk_dataset *ds = NULL;
    rk_dataset_create(&ds);
    for (int k = 0; k < 6; k++) { /* a repeating pattern per sequence */
        uint32_t t[24];
        for (int i = 0; i < 24; i++)
            t[i] = (uint32_t)((k * 11 + (i % 4) * 29) % 300);
        ck_assert_int_eq(rk_dataset_add(ds, t, NULL, 24), RK_OK);
    }
    struct rk_tune_params p;
    rk_tune_params_default(&p);
    p.method = me;
    p.kernel_m = 32;
    p.steps = 8;
    p.batch = 2;
    p.lr = 0.05;
    p.lr_final = 0.01;
    p.warmup = 0;
    p.val_split = 0;
    p.n_threads = 2;
    p.dbp_lr = 0.01;
    size_t plen = rk_tune_params_len(m, &p);
    float *a = malloc(plen * sizeof(float)), *c = malloc(plen * sizeof(float));
    struct kck kc = {.at = 4};
    p.checkpoint_cb = keep;
    p.checkpoint_every = 2;
    struct rk_tune_result res;
    ck_assert_int_eq(rk_tune_run(m, &p, ds, NULL, NULL, NULL, &kc, a, &res), RK_OK);
    p.checkpoint_cb = NULL;
    ck_assert(kc.buf);
    p.resume = &kc.ck;
    ck_assert_int_eq(rk_tune_run(m, &p, ds, NULL, NULL, NULL, NULL, c, NULL), RK_OK);
    ck_assert_msg(memcmp(a, c, plen * sizeof(float)) == 0, "%s: resumed run differs", me->name);
    p.resume = NULL;
    /* the tuned adapter has a non-zero P and a lower loss than the zero state */
    float *ad = NULL;
    struct rk_state_meta meta;
    rk_state_meta_init(&meta, m);
    ck_assert_int_eq(rk_tune_export(m, &p, a, &ad, &meta), RK_OK);
    ck_assert_int_eq(meta.kernel_m, 32);
    ck_assert_str_eq(meta.method, me->name);
    struct rk_kernel_view v;
    rk_kernel_view_of(m, 32, meta.kernel_fade, ad, &v);
    double pn = 0;
    for (size_t i = 0; i < (size_t)v.L * v.H * v.N * v.M; i++)
        pn += (double)v.P[i] * v.P[i];
    ck_assert(pn > 0);
    struct rk_ctx *ctx = NULL;
    ck_assert_int_eq(rk_ctx_create(m, NULL, &ctx), RK_OK);
    struct rk_readout ro = {&rk_kernel_readout, &v, NULL};
    struct rk_eval_result e0, e1;
    ck_assert_int_eq(rk_eval_run(ctx, ds, NULL, NULL, NULL, &e0), RK_OK);
    ck_assert_int_eq(rk_eval_run_ro(ctx, ds, ad, &ro, NULL, NULL, &e1), RK_OK);
    ck_assert_msg(e1.loss < e0.loss, "%s: %g !< %g", me->name, e1.loss, e0.loss);
    /* a run that starts from this kernel state (init_kernel) goes on from its
     * P, features and phases, not from P = 0 and the features of its own
     * kernel_seed: one step at a tiny learning rate leaves them as they were */
    size_t slen = rk_state_len(m);
    struct rk_tune_params q = p;
    q.steps = 1;
    q.lr = q.lr_final = 1e-7;
    q.kernel_seed = 99;
    q.dbp_lr = 0; /* dbp: R stays I, so P = P~ R stays the state's P */
    q.init_kernel = ad + slen;
    float *g = malloc(plen * sizeof(float)), *ad2 = NULL;
    ck_assert_int_eq(rk_tune_run(m, &q, ds, ad, NULL, NULL, NULL, g, NULL), RK_OK);
    struct rk_state_meta meta2;
    rk_state_meta_init(&meta2, m);
    ck_assert_int_eq(rk_tune_export(m, &q, g, &ad2, &meta2), RK_OK);
    struct rk_kernel_view v2;
    rk_kernel_view_of(m, 32, meta2.kernel_fade, ad2, &v2);
    size_t np = (size_t)v.L * v.H * v.N * v.M, nw = (size_t)v.L * v.M * v.N;
    ck_assert(!memcmp(v2.omega, v.omega, nw * sizeof(float)));
    ck_assert(!memcmp(v2.beta, v.beta, (size_t)v.L * v.M * sizeof(float)));
    double dmax = 0;
    for (size_t i = 0; i < np; i++)
        dmax = fmax(dmax, fabs((double)v2.P[i] - v.P[i]));
    ck_assert_msg(dmax < 1e-3 * sqrt(pn / (double)np) + 1e-6, "%s: P moved by %g", me->name,
                  dmax);
    free(g), free(ad2);
    rk_ctx_free(ctx);
    free(ad), free(kc.buf), free(a), free(c);
    rk_dataset_free(ds);
    rk_model_free(m);
}

START_TEST(test_kernel_tune) { tune_case(&rk_method_kernel); }
END_TEST

START_TEST(test_dbp_tune) { tune_case(&rk_method_dbp); }
END_TEST

/* A few steps of `me` on the portable build and on the one the process
 * chose: the same parameters, bit for bit (forward, backward, the gradient
 * of P or Ptilde, and dbp's update of R all run in them). */
static void builds_case(const struct rk_tune_method *me)
{
    struct rk_model *m = NULL;
    struct rk_errbuf eb;
    ck_assert_msg(rk_model_load(rk_test_data("rand-mh.safetensors"), NULL, &m, &eb) == RK_OK,
                  "%s", eb.msg);
    struct rk_dataset *ds = NULL;
    rk_dataset_create(&ds);
    for (int k = 0; k < 4; k++) {
        uint32_t t[20];
        for (int i = 0; i < 20; i++)
            t[i] = (uint32_t)((k * 13 + i * 7) % 300);
        ck_assert_int_eq(rk_dataset_add(ds, t, NULL, 20), RK_OK);
    }
    struct rk_tune_params p;
    rk_tune_params_default(&p);
    p.method = me;
    p.kernel_m = 48; /* 3 vectors of 16: the AVX-512 build's main loops and no tail */
    p.steps = 3;
    p.batch = 2;
    p.lr = 0.05;
    p.warmup = 0;
    p.val_split = 0;
    p.n_threads = 1;
    p.dbp_lr = 0.01;
    size_t plen = rk_tune_params_len(m, &p);
    float *a = malloc(plen * sizeof(float)), *b = malloc(plen * sizeof(float));
    rk_kernel_force_portable(true);
    ck_assert_int_eq(rk_tune_run(m, &p, ds, NULL, NULL, NULL, NULL, a, NULL), RK_OK);
    rk_kernel_force_portable(false);
    ck_assert_int_eq(rk_tune_run(m, &p, ds, NULL, NULL, NULL, NULL, b, NULL), RK_OK);
    ck_assert_msg(memcmp(a, b, plen * sizeof(float)) == 0, "%s: the builds differ (AVX-512: %d)",
                  me->name, (int)rk_cpu_avx512());
    struct rk_kernel_layout kl;
    rk_kernel_layout(m, p.kernel_m, &kl);
    double pn = 0;
    for (size_t i = kl.P; i < kl.omega; i++)
        pn += (double)a[i] * a[i];
    ck_assert(pn > 0); /* P (or Ptilde) was trained */
    const char *no = getenv("RWKVD_NO_AVX512");
    if (no && *no && *no != '0')
        ck_assert(!rk_cpu_avx512());
    free(a), free(b);
    rk_dataset_free(ds);
    rk_model_free(m);
}

/* The KL of one step of `kernel` resumed at parameters whose core state is
 * zero (the base's) and whose P is p_scale times fixed values. */
static double kl_at(struct rk_model *m, struct rk_dataset *ds, struct rk_dataset *gen,
                    float p_scale)
{
    struct rk_tune_params p;
    rk_tune_params_default(&p);
    p.method = &rk_method_kernel;
    p.kernel_m = 32;
    p.steps = 1;
    p.batch = 1;
    p.warmup = 0;
    p.val_split = 0;
    p.n_threads = 1;
    p.kl_weight = 1;
    p.kl_batch = 2;
    p.kl_data = gen;
    size_t plen = rk_tune_params_len(m, &p);
    float *x = malloc(plen * sizeof(float)), *z = calloc(plen, sizeof(float));
    float *out = malloc(plen * sizeof(float));
    rk_method_kernel.params_init(m, &p, NULL, x);
    struct rk_kernel_layout kl;
    rk_kernel_layout(m, p.kernel_m, &kl);
    for (size_t i = kl.P; i < kl.omega; i++)
        x[i] = p_scale * (float)((int)(i * 2654435761u % 2001) - 1000) / 1000.0f;
    struct rk_tune_checkpoint ck = {.step = 0, .len = plen, .state = x, .m = z, .v = z,
                                    .best = x, .best_val = INFINITY};
    p.resume = &ck;
    struct rk_tune_result res;
    ck_assert_int_eq(rk_tune_run(m, &p, ds, NULL, NULL, NULL, NULL, out, &res), RK_OK);
    free(x), free(z), free(out);
    return res.kl_last;
}

START_TEST(test_kernel_kl_readout)
{
    struct rk_model *m = NULL;
    struct rk_errbuf eb;
    ck_assert_msg(rk_model_load(rk_test_data("rand-mh.safetensors"), NULL, &m, &eb) == RK_OK,
                  "%s", eb.msg);
    struct rk_dataset *ds = NULL, *gen = NULL;
    rk_dataset_create(&ds);
    rk_dataset_create(&gen);
    uint32_t t[16];
    for (int i = 0; i < 16; i++)
        t[i] = (uint32_t)((i * 37 + 5) % 300);
    ck_assert_int_eq(rk_dataset_add(ds, t, NULL, 16), RK_OK);
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < 16; i++)
            t[i] = (uint32_t)((k * 101 + i * 53) % 300);
        ck_assert_int_eq(rk_dataset_add(gen, t, NULL, 16), RK_OK);
    }
    double k0 = kl_at(m, ds, gen, 0.0f), k1 = kl_at(m, ds, gen, 4.0f);
    ck_assert_msg(fabs(k0) < 1e-5, "P = 0: KL %g, want 0", k0);
    ck_assert_msg(k1 > 1e-3, "P != 0: KL %g, want > 0 (the read-out term on the generic text)",
                  k1);
    rk_dataset_free(ds), rk_dataset_free(gen);
    rk_model_free(m);
}
END_TEST

START_TEST(test_kernel_builds) { builds_case(&rk_method_kernel); }
END_TEST

START_TEST(test_dbp_builds) { builds_case(&rk_method_dbp); }
END_TEST

RK_TEST_SUITE(kernel_suite, RK_SELF_CONTAINED)
{
    Suite *s = suite_create("kernel");
    TCase *tc = tcase_create("kernel");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_kernel_cos_sin);
    tcase_add_test(tc, test_kernel_hook_fd);
    tcase_add_test(tc, test_kernel_fd_mean);
    tcase_add_test(tc, test_kernel_vs_numpy);
    tcase_add_test(tc, test_kernel_fd_none);
    tcase_add_test(tc, test_kernel_zero_is_base);
    tcase_add_test(tc, test_kernel_mixed_batch);
    tcase_add_test(tc, test_kernel_state_file);
    tcase_add_test(tc, test_kernel_tune);
    tcase_add_test(tc, test_dbp_tune);
    tcase_add_test(tc, test_kernel_kl_readout);
    tcase_add_test(tc, test_kernel_builds);
    tcase_add_test(tc, test_dbp_builds);
    suite_add_tcase(s, tc);
    return s;
}

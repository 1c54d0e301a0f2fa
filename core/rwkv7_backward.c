/*
 * rwkv7_backward.c - dLoss/d(initial state) of RWKV-7 by backpropagation
 * through time (rk_backward_seq), weights frozen.
 *
 * The math is Part 2 (forward) and Part 3 (backward) of the project's RWKV-7
 * spec; tools/ref_backward_torch.py is an independent float64 autograd version
 * of the same function and tests/golden/test_backward.c compares the two and
 * checks both against central finite differences.
 *
 * Plan (spec 3.3):
 *   1. forward over the whole sequence, one layer at a time (GEMMs over all T
 *      rows), keeping only each layer's residual input xs[l] [T][C] and the
 *      layer-0 value v_first [T][C];
 *   2. loss over the selected positions, backward through head and ln_out
 *      (in token chunks, so the [T][V] logits never exist at once);
 *   3. for l = L-1..0: recompute layer l from xs[l] and state0, keeping its
 *      per-token intermediates and a WKV checkpoint every K tokens; backprop
 *      the channel-mix, then the time-mix, with the WKV recurrence run in
 *      reverse chunk by chunk (each chunk's states recomputed from its
 *      checkpoint). The reverse WKV leaves dLoss/dS0 of every head; the two
 *      token-shift gradients fall out of the lerps at t = 0.
 *
 * Self-contained: it uses only the model struct and the shared kernels of
 * core_int.h (rk__matmul, rk__weight_row), not the forward pass's internals.
 * Products with a transposed weight (every backward linear map) go through
 * matmul_t below: one sgemm per block of weight rows (rk__matmul_t), 16-bit
 * rows widened into fp32 scratch first. Memory: docs/TUNING.md.
 */
/* vectorise the element-wise loops (no fast-math: results are unchanged) */
#pragma GCC optimize("O3")
#include "core_int.h"

#include <math.h>
#include <string.h>

#define DECAY_C 0.60653065971263342 /* e^{-1/2}: w = exp(-e^{-1/2} sigmoid(z)) */
#define LN_EPS 1e-5
#define GN_EPS 64e-5
#define WBLOCK_FLOATS (1u << 20) /* fp32 scratch for a block of 16-bit weight rows */
/* Keep all layers' activations from the first forward when they fit here
 * (bytes). Tests lower it to exercise the recompute path. */
static size_t store_bytes_max = (size_t)1 << 30;
void rk__backward_set_store_max(size_t bytes) { store_bytes_max = bytes; }

/* --- one backward call: sizes, buffers ------------------------------------ */

/* What the backward of one layer needs from its forward, [T][...]. */
struct act {
    float *mu1, *rs1;            /* [T] LN1 mean and 1/std */
    float *u;                    /* [T][C] LN1 output */
    float *r, *kh, *vh;          /* [T][C] receptance, raw key, raw value */
    float *sz, *w;               /* [T][C] sigmoid(z) and decay */
    float *tw;                   /* [T][Dw] tanh(x_w w1) */
    float *alpha, *nu;           /* [T][C] in-context rate, value-residual mix */
    float *gh, *g;               /* [T][Dg] sigmoid(x_g g1), [T][C] gate */
    float *kk, *qn;              /* [T][C] removal key, [T][H] its pre-norm length */
    float *k, *v;                /* [T][C] replacement key, mixed value */
    float *y;                    /* [T][C] WKV output */
    float *gmu, *grs;            /* [T][H] GroupNorm mean and 1/std */
    float *sb;                   /* [T][H] bonus scalar sum_j r k r_k */
    float *o;                    /* [T][C] GroupNorm + bonus output */
    float *xm;                   /* [T][C] residual after time-mix (LN2 input) */
    float *mu2, *rs2;            /* [T] */
    float *u2;                   /* [T][C] LN2 output */
    float *fs;                   /* [T][F] ffn key pre-activation */
    float *ck;                   /* [T/K+1][H][N][N] WKV state before token c*K */

};

struct bwd {
    const struct rk_model *m;
    struct rk__pool *pool;
    size_t T;
    int L, C, H, N, F, V;
    int K; /* tokens between WKV checkpoints */
    struct rk_state_layout lay;
    /* the read-out term (rk_readout_ops), if any, and its carry */
    const struct rk_readout_ops *ro;
    const void *ro_data;
    void *ro_grad;
    float *ro_carry;
    float *ro_scratch; /* [H][ro_scratch_len] */
    size_t ro_scratch_len;

    /* whole sequence */
    float *xs;      /* [L+1][T][C] residual input of layer l; xs[L] feeds ln_out */
    float *vfirst;  /* [T][C] layer-0 value */
    float *dvfirst; /* [T][C] dLoss/dv_first summed over layers >= 1 */
    float *dx;      /* [T][C] gradient w.r.t. the current layer's output, then input */

    /* the activations of the layer being processed: one of acts[] */
    struct act a;
    struct act *acts; /* [n_acts]: L when every layer is kept, else 1 */
    int n_acts;
    float *xr, *xw, *xk, *xv, *xa, *xg; /* [T][C] lerps (reused as their gradients) */

    /* backward / scratch */
    float *t0, *t1, *t2, *t3;    /* [T][C] */
    float *tf;                   /* [T][F] */
    float *tlr;                  /* [T][Dmax] */
    float *sbuf;                 /* [K+1][H][N][N] states of one chunk */
    float *sabuf;                /* [K][H][N] sa of one chunk */
    float *G;                    /* [H][N][N] dLoss/dS */
    float *wrows;                /* WBLOCK_FLOATS: a block of weight rows as fp32 */

    /* head */
    size_t Tc;                   /* selected positions per head chunk */
    float *logits;               /* [Tc][V] */
    float *hx;                   /* [Tc][C] ln_out input rows */
    float *hn;                   /* [Tc][C] ln_out output rows, then their gradient */
    float *hmu, *hrs;            /* [Tc] */
    double *hloss;               /* [Tc] loss of each row */
};

static inline float sigmoidf_(float x) { return 1.0f / (1.0f + expf(-x)); }

/* Layer norm of n values with population variance; writes the output and
 * returns mean and 1/std (accumulated in double). */
static void ln_fwd(float *out, const float *x, const float *w, const float *b, int n, double eps,
                   float *mu_out, float *rs_out)
{
    double s = 0, ss = 0;
    for (int i = 0; i < n; i++)
        s += x[i];
    double mu = s / n;
    for (int i = 0; i < n; i++) {
        double d = x[i] - mu;
        ss += d * d;
    }
    double rs = 1.0 / sqrt(ss / n + eps);
    for (int i = 0; i < n; i++)
        out[i] = (float)((x[i] - mu) * rs) * w[i] + b[i];
    *mu_out = (float)mu;
    *rs_out = (float)rs;
}

/* dx += d(LN)/dx applied to dout: with xhat = (x-mu)*rs and h = dout*w,
 * dx = (h - mean(h) - xhat*mean(h*xhat)) * rs. */
static void ln_bwd(float *dx, const float *dout, const float *x, const float *w, int n, float mu,
                   float rs)
{
    double sh = 0, shx = 0;
    for (int i = 0; i < n; i++) {
        double h = (double)dout[i] * w[i];
        double xh = ((double)x[i] - mu) * rs;
        sh += h;
        shx += h * xh;
    }
    double mh = sh / n, mhx = shx / n;
    for (int i = 0; i < n; i++) {
        double h = (double)dout[i] * w[i];
        double xh = ((double)x[i] - mu) * rs;
        dx[i] += (float)((h - mh - xh * mhx) * rs);
    }
}

/* Y[n][W.rows] = X[n][W.cols] W^T (the forward product). */
static void matmul(struct bwd *b, float *Y, const float *X, size_t n, const struct rk_weight *W)
{
    rk__matmul(b->pool, false, Y, X, n, W);
}

/* dX[n][W.cols] (+)= dY[n][W.rows] W, the product with the transposed weight:
 * one sgemm per block of weight rows, widened into b->wrows when 16-bit. */
static void matmul_t(struct bwd *b, float *dX, const float *dY, size_t n,
                     const struct rk_weight *W, bool accumulate)
{
    rk__matmul_t(b->pool, dX, dY, n, W, accumulate, b->wrows, WBLOCK_FLOATS);
}

/* --- memory plan ---------------------------------------------------------- */

/* Every buffer is carved from one aligned block; `plan` computes offsets in
 * floats (rounded to 16 so each slice stays 64-byte aligned). */
struct plan {
    size_t off;
    float *base;
};

static float *carve(struct plan *p, size_t n)
{
    float *r = p->base ? p->base + p->off : NULL;
    p->off += (n + 15) & ~(size_t)15;
    return r;
}

/* One activation set (struct act) for T tokens. */
static void layout_act(const struct bwd *b, struct plan *p, struct act *a)
{
    const size_t T = b->T, C = b->C, H = b->H, NN = (size_t)b->N * b->N, F = b->F;
    size_t nck = (T + b->K - 1) / b->K + 1;
    a->mu1 = carve(p, T);
    a->rs1 = carve(p, T);
    a->u = carve(p, T * C);
    a->r = carve(p, T * C);
    a->kh = carve(p, T * C);
    a->vh = carve(p, T * C);
    a->sz = carve(p, T * C);
    a->w = carve(p, T * C);
    a->tw = carve(p, T * (size_t)b->m->Dw);
    a->alpha = carve(p, T * C);
    a->nu = carve(p, T * C);
    a->gh = carve(p, T * (size_t)b->m->Dg);
    a->g = carve(p, T * C);
    a->kk = carve(p, T * C);
    a->qn = carve(p, T * H);
    a->k = carve(p, T * C);
    a->v = carve(p, T * C);
    a->y = carve(p, T * C);
    a->gmu = carve(p, T * H);
    a->grs = carve(p, T * H);
    a->sb = carve(p, T * H);
    a->o = carve(p, T * C);
    a->xm = carve(p, T * C);
    a->mu2 = carve(p, T);
    a->rs2 = carve(p, T);
    a->u2 = carve(p, T * C);
    a->fs = carve(p, T * F);
    a->ck = carve(p, nck * H * NN);
}

/* Everything but the activation sets (whose count is decided from this size). */
static void layout(struct bwd *b, struct plan *p)
{
    const size_t T = b->T, C = b->C, H = b->H, NN = (size_t)b->N * b->N, F = b->F;
    const struct rk_model *m = b->m;
    size_t dmax = m->Dw;
    if ((size_t)m->Da > dmax) dmax = m->Da;
    if ((size_t)m->Dv > dmax) dmax = m->Dv;
    if ((size_t)m->Dg > dmax) dmax = m->Dg;

    b->xs = carve(p, (size_t)(b->L + 1) * T * C);
    b->vfirst = carve(p, T * C);
    b->dvfirst = carve(p, T * C);
    b->dx = carve(p, T * C);
    b->xr = carve(p, T * C);
    b->xw = carve(p, T * C);
    b->xk = carve(p, T * C);
    b->xv = carve(p, T * C);
    b->xa = carve(p, T * C);
    b->xg = carve(p, T * C);
    b->t0 = carve(p, T * C);
    b->t1 = carve(p, T * C);
    b->t2 = carve(p, T * C);
    b->t3 = carve(p, T * C);
    b->tf = carve(p, T * F);
    b->tlr = carve(p, T * dmax);
    b->sbuf = carve(p, (size_t)(b->K + 1) * H * NN);
    b->sabuf = carve(p, (size_t)b->K * C);
    b->G = carve(p, H * NN);
    b->wrows = carve(p, WBLOCK_FLOATS);
    b->logits = carve(p, b->Tc * (size_t)b->V);
    b->hx = carve(p, b->Tc * C);
    b->hn = carve(p, b->Tc * C);
    b->hmu = carve(p, b->Tc);
    b->hrs = carve(p, b->Tc);
    b->hloss = (double *)carve(p, 2 * b->Tc);
    for (int i = 0; i < b->n_acts; i++)
        layout_act(b, p, &b->acts[i]);
}

/* --- forward of one layer over all T tokens, keeping activations ---------- */

/* --- parallel loops ------------------------------------------------------- */

/* The element-wise work between the products is split over token rows (the
 * WKV recurrence over heads) between the context's threads. Each row or head
 * runs the same code whatever the split, so the results do not depend on the
 * thread count (test_backward_threads). */
typedef void range_fn(struct bwd *b, void *arg, size_t i0, size_t i1);

struct par {
    struct bwd *b;
    void *arg;
    range_fn *fn;
};

static void par_range(void *p, size_t i0, size_t i1)
{
    const struct par *j = p;
    j->fn(j->b, j->arg, i0, i1);
}

/* fn(b, arg, i0, i1) over a partition of [0, n) between the threads. */
static void par_for(struct bwd *b, size_t n, range_fn *fn, void *arg)
{
    struct par j = {b, arg, fn};
    rk__pool_for(b->pool, n, par_range, &j);
}

/* What the range functions of one layer share. */
struct lctx {
    int l;
    const struct rk_layer *ly;
    const float *x;   /* [T][C] the layer input */
    const float *st0; /* the layer's part of state0 */
    float *out;       /* forward: the layer output; NULL in a recompute */
    float *dst0;      /* backward: the layer's part of dstate0 */
};

/* --- forward of one layer over all T tokens, keeping activations ---------- */

static void f_ln1(struct bwd *b, void *arg, size_t t0, size_t t1)
{
    const struct lctx *lc = arg;
    const int C = b->C;
    for (size_t t = t0; t < t1; t++)
        ln_fwd(b->a.u + t * C, lc->x + t * C, lc->ly->ln1_w, lc->ly->ln1_b, C, LN_EPS,
               &b->a.mu1[t], &b->a.rs1[t]);
}

/* the six token-shift lerps x_c = u + (p - u) mu_c, p = previous row's u */
static void f_lerp(struct bwd *b, void *arg, size_t t0, size_t t1)
{
    const struct lctx *lc = arg;
    const struct rk_layer *ly = lc->ly;
    const int C = b->C;
    for (size_t t = t0; t < t1; t++) {
        const float *u = b->a.u + t * C;
        const float *p = t ? b->a.u + (t - 1) * C : lc->st0 + b->lay.att_shift;
        for (int c = 0; c < C; c++) {
            float d = p[c] - u[c];
            b->xr[t * C + c] = u[c] + d * ly->x_r[c];
            b->xw[t * C + c] = u[c] + d * ly->x_w[c];
            b->xk[t * C + c] = u[c] + d * ly->x_k[c];
            b->xv[t * C + c] = u[c] + d * ly->x_v[c];
            b->xa[t * C + c] = u[c] + d * ly->x_a[c];
            b->xg[t * C + c] = u[c] + d * ly->x_g[c];
        }
    }
}

static void f_tanh(struct bwd *b, void *arg, size_t t0, size_t t1)
{
    (void)arg;
    const size_t D = (size_t)b->m->Dw;
    for (size_t i = t0 * D; i < t1 * D; i++)
        b->a.tw[i] = tanhf(b->a.tw[i]);
}

/* decay: z = w0 + tanh(x_w w1) w2 (in t0), w = exp(-e^{-1/2} sigmoid(z)) */
static void f_decay(struct bwd *b, void *arg, size_t t0, size_t t1)
{
    const struct lctx *lc = arg;
    const int C = b->C;
    for (size_t t = t0; t < t1; t++)
        for (int c = 0; c < C; c++) {
            size_t i = t * C + c;
            float s = sigmoidf_(lc->ly->w0[c] + b->t0[i]);
            b->a.sz[i] = s;
            b->a.w[i] = expf((float)(-DECAY_C) * s);
        }
}

/* in-context learning rate alpha = sigmoid(a0 + (x_a a1) a2) */
static void f_alpha(struct bwd *b, void *arg, size_t t0, size_t t1)
{
    const struct lctx *lc = arg;
    const int C = b->C;
    for (size_t t = t0; t < t1; t++)
        for (int c = 0; c < C; c++)
            b->a.alpha[t * C + c] = sigmoidf_(lc->ly->a0[c] + b->t0[t * C + c]);
}

/* value residual: layer 0 keeps its value as v_first; later layers mix */
static void f_value(struct bwd *b, void *arg, size_t t0, size_t t1)
{
    const struct lctx *lc = arg;
    const size_t C = (size_t)b->C;
    if (lc->l == 0) {
        memcpy(b->a.v + t0 * C, b->a.vh + t0 * C, sizeof(float) * (t1 - t0) * C);
        memcpy(b->vfirst + t0 * C, b->a.vh + t0 * C, sizeof(float) * (t1 - t0) * C);
        return;
    }
    for (size_t i = t0 * C; i < t1 * C; i++) {
        float nu = sigmoidf_(lc->ly->v0[i % C] + b->t0[i]);
        b->a.nu[i] = nu;
        b->a.v[i] = b->a.vh[i] + (b->vfirst[i] - b->a.vh[i]) * nu;
    }
}

static void f_gate(struct bwd *b, void *arg, size_t t0, size_t t1)
{
    (void)arg;
    const size_t D = (size_t)b->m->Dg;
    for (size_t i = t0 * D; i < t1 * D; i++)
        b->a.gh[i] = sigmoidf_(b->a.gh[i]);
}

/* removal key kk = normalize(kh * k_k) per head; replacement key k */
static void f_keys(struct bwd *b, void *arg, size_t t0, size_t t1)
{
    const struct lctx *lc = arg;
    const struct rk_layer *ly = lc->ly;
    const int C = b->C, H = b->H, N = b->N;
    for (size_t t = t0; t < t1; t++) {
        for (int h = 0; h < H; h++) {
            double ss = 0;
            for (int j = 0; j < N; j++) {
                int c = h * N + j;
                double q = (double)b->a.kh[t * C + c] * ly->k_k[c];
                ss += q * q;
            }
            double nrm = sqrt(ss);
            if (nrm < 1e-12)
                nrm = 1e-12;
            b->a.qn[t * H + h] = (float)nrm;
            for (int j = 0; j < N; j++) {
                int c = h * N + j;
                b->a.kk[t * C + c] = (float)(b->a.kh[t * C + c] * ly->k_k[c] / nrm);
            }
        }
        for (int c = 0; c < C; c++) {
            size_t i = t * C + c;
            b->a.k[i] = b->a.kh[i] * (1.0f + (b->a.alpha[i] - 1.0f) * ly->k_a[c]);
        }
    }
}

/* a = -kk, b = kk * alpha of one head at one token (spec 2.2 step 10) */
static inline void wkv_ab(int N, const float *kk, const float *al, float *aa, float *bb)
{
    for (int j = 0; j < N; j++) {
        aa[j] = -kk[j];
        bb[j] = kk[j] * al[j];
    }
}

/* WKV of heads [h0, h1) over all tokens, a checkpoint every K tokens; the
 * running state lives in G (free during the forward). */
static void f_wkv(struct bwd *b, void *arg, size_t h0, size_t h1)
{
    const struct lctx *lc = arg;
    const int C = b->C, N = b->N;
    const size_t NN = (size_t)N * N, HNN = (size_t)b->H * NN;
    const float *S0 = lc->st0 + b->lay.wkv;
    for (size_t h = h0; h < h1; h++) {
        float *S = b->G + h * NN;
        memcpy(S, S0 + h * NN, sizeof(float) * NN);
        for (size_t t = 0; t < b->T; t++) {
            if (t % b->K == 0)
                memcpy(b->a.ck + (t / b->K) * HNN + h * NN, S, sizeof(float) * NN);
            size_t o = t * C + h * N;
            float aa[RK_HEAD_SIZE], bb[RK_HEAD_SIZE];
            wkv_ab(N, b->a.kk + o, b->a.alpha + o, aa, bb);
            rk__wkv_head(false, S, b->a.r + o, b->a.w + o, b->a.k + o, b->a.v + o, aa, bb,
                         b->a.y + o, NULL);
        }
        if (b->ro)
            b->ro->fwd(b->ro_data, lc->l, (int)h, b->T, (size_t)C, b->a.r + h * N,
                       b->a.w + h * N, b->ro_carry, b->a.y + h * N);
    }
}

/* GroupNorm per head, bonus, then o * g into t1 */
static void f_out(struct bwd *b, void *arg, size_t t0, size_t t1)
{
    const struct lctx *lc = arg;
    const struct rk_layer *ly = lc->ly;
    const int C = b->C, H = b->H, N = b->N;
    for (size_t t = t0; t < t1; t++) {
        for (int h = 0; h < H; h++) {
            const float *yh = b->a.y + t * C + h * N;
            double s = 0, ss = 0, bon = 0;
            for (int j = 0; j < N; j++)
                s += yh[j];
            double mu = s / N;
            for (int j = 0; j < N; j++)
                ss += ((double)yh[j] - mu) * ((double)yh[j] - mu);
            double rs = 1.0 / sqrt(ss / N + GN_EPS);
            for (int j = 0; j < N; j++) {
                int c = h * N + j;
                bon += (double)b->a.r[t * C + c] * b->a.k[t * C + c] * ly->r_k[c];
            }
            b->a.gmu[t * H + h] = (float)mu;
            b->a.grs[t * H + h] = (float)rs;
            b->a.sb[t * H + h] = (float)bon;
            for (int j = 0; j < N; j++) {
                int c = h * N + j;
                float gn = (float)((yh[j] - mu) * rs) * ly->lnx_w[c] + ly->lnx_b[c];
                b->a.o[t * C + c] = gn + (float)bon * b->a.v[t * C + c];
            }
        }
        for (int c = 0; c < C; c++)
            b->t1[t * C + c] = b->a.o[t * C + c] * b->a.g[t * C + c];
    }
}

/* residual after the time mix (t0 holds its output), then LN2 */
static void f_ln2(struct bwd *b, void *arg, size_t t0, size_t t1)
{
    const struct lctx *lc = arg;
    const int C = b->C;
    for (size_t i = t0 * C; i < t1 * C; i++)
        b->a.xm[i] = lc->x[i] + b->t0[i];
    for (size_t t = t0; t < t1; t++)
        ln_fwd(b->a.u2 + t * C, b->a.xm + t * C, lc->ly->ln2_w, lc->ly->ln2_b, C, LN_EPS,
               &b->a.mu2[t], &b->a.rs2[t]);
}

static void f_ffn_lerp(struct bwd *b, void *arg, size_t t0, size_t t1)
{
    const struct lctx *lc = arg;
    const int C = b->C;
    for (size_t t = t0; t < t1; t++) {
        const float *u2 = b->a.u2 + t * C;
        const float *p = t ? b->a.u2 + (t - 1) * C : lc->st0 + b->lay.ffn_shift;
        for (int c = 0; c < C; c++)
            b->t1[t * C + c] = u2[c] + (p[c] - u2[c]) * lc->ly->ffn_x_k[c];
    }
}

static void f_relu2(struct bwd *b, void *arg, size_t t0, size_t t1)
{
    (void)arg;
    const size_t F = (size_t)b->F;
    for (size_t i = t0 * F; i < t1 * F; i++) {
        float s = b->a.fs[i] > 0 ? b->a.fs[i] : 0;
        b->tf[i] = s * s;
    }
}

static void f_resid(struct bwd *b, void *arg, size_t t0, size_t t1)
{
    const struct lctx *lc = arg;
    const size_t C = (size_t)b->C;
    for (size_t i = t0 * C; i < t1 * C; i++)
        lc->out[i] += b->a.xm[i];
}

/* Layer l over all tokens from xs[l] and the layer's part of state0. With
 * `out` non-NULL the layer output is written there (the first forward);
 * otherwise the ffn value product is skipped (the recompute of backward). */
static void layer_fwd(struct bwd *b, int l, const float *st0, float *out)
{
    const struct rk_layer *ly = &b->m->layers[l];
    const size_t T = b->T;
    struct lctx lc = {.l = l, .ly = ly, .x = b->xs + (size_t)l * T * b->C, .st0 = st0, .out = out};
    if (b->ro) /* every layer's term starts the sequence from a zero carry */
        memset(b->ro_carry, 0, b->ro->carry_len(b->ro_data) * sizeof(float));

    par_for(b, T, f_ln1, &lc);
    par_for(b, T, f_lerp, &lc);
    matmul(b, b->a.r, b->xr, T, &ly->wr);
    matmul(b, b->a.kh, b->xk, T, &ly->wk);
    matmul(b, b->a.vh, b->xv, T, &ly->wv);
    matmul(b, b->a.tw, b->xw, T, &ly->w1);
    par_for(b, T, f_tanh, &lc);
    matmul(b, b->t0, b->a.tw, T, &ly->w2);
    par_for(b, T, f_decay, &lc);
    matmul(b, b->tlr, b->xa, T, &ly->a1);
    matmul(b, b->t0, b->tlr, T, &ly->a2);
    par_for(b, T, f_alpha, &lc);
    if (l > 0) {
        matmul(b, b->tlr, b->xv, T, &ly->v1);
        matmul(b, b->t0, b->tlr, T, &ly->v2);
    }
    par_for(b, T, f_value, &lc);
    matmul(b, b->a.gh, b->xg, T, &ly->g1);
    par_for(b, T, f_gate, &lc);
    matmul(b, b->a.g, b->a.gh, T, &ly->g2);
    par_for(b, T, f_keys, &lc);
    par_for(b, (size_t)b->H, f_wkv, &lc);
    par_for(b, T, f_out, &lc);
    matmul(b, b->t0, b->t1, T, &ly->wo);
    par_for(b, T, f_ln2, &lc);
    par_for(b, T, f_ffn_lerp, &lc);
    matmul(b, b->a.fs, b->t1, T, &ly->ffn_key);
    if (!out)
        return;
    par_for(b, T, f_relu2, &lc);
    matmul(b, out, b->tf, T, &ly->ffn_value);
    par_for(b, T, f_resid, &lc);
}

/* --- backward of one layer ------------------------------------------------ */

/* Reverse WKV of heads [h0, h1) over all T tokens (spec 3.1). Input: dy
 * [T][C] in t0. Accumulated into: dr (xr, holding the bonus part), dk (xk,
 * likewise), dv (xv). Written: dw -> xw, da -> xa, db -> xg, and dS0 (arg)
 * for these heads. Each chunk's states are recomputed from its checkpoint
 * into sbuf [K+1][H][N][N] (this head's slices only). */
struct wkv_bwd_arg {
    int l;
    float *dS0;
};

static void wkv_bwd(struct bwd *b, void *arg, size_t h0, size_t h1)
{
    const struct wkv_bwd_arg *wa = arg;
    float *dS0 = wa->dS0;
    const float *dy = b->t0;
    float *dr = b->xr, *dw = b->xw, *dk = b->xk, *dv = b->xv, *da = b->xa, *db = b->xg;
    const size_t T = b->T;
    const int C = b->C, N = b->N, K = b->K;
    const size_t NN = (size_t)N * N, HNN = (size_t)b->H * NN;
    size_t nchunk = (T + K - 1) / K;
    for (size_t h = h0; h < h1; h++) {
        float *Gh = b->G + h * NN;
        memset(Gh, 0, sizeof(float) * NN);
        for (size_t ci = nchunk; ci-- > 0;) {
            size_t ta = ci * K, tb = ta + K < T ? ta + K : T;
            /* states S_{ta-1} .. S_{tb-1} and sa of the chunk */
            memcpy(b->sbuf + h * NN, b->a.ck + ci * HNN + h * NN, sizeof(float) * NN);
            for (size_t t = ta; t < tb; t++) {
                size_t o = t * C + h * N;
                float *Sn = b->sbuf + (t - ta + 1) * HNN + h * NN;
                float aa[RK_HEAD_SIZE], bb[RK_HEAD_SIZE], yb[RK_HEAD_SIZE];
                memcpy(Sn, Sn - HNN, sizeof(float) * NN);
                wkv_ab(N, b->a.kk + o, b->a.alpha + o, aa, bb);
                rk__wkv_head(false, Sn, b->a.r + o, b->a.w + o, b->a.k + o, b->a.v + o, aa, bb,
                             yb, b->sabuf + (t - ta) * C + h * N);
            }
            for (size_t t = tb; t-- > ta;) {
                size_t o = t * C + h * N;
                const float *Sold = b->sbuf + (t - ta) * HNN + h * NN;
                const float *Snew = Sold + HNN;
                const float *sa = b->sabuf + (t - ta) * C + h * N;
                const float *r = b->a.r + o, *w = b->a.w + o, *k = b->a.k + o, *v = b->a.v + o;
                const float *dyh = dy + o;
                float aa[RK_HEAD_SIZE], bb[RK_HEAD_SIZE];
                float cdr[RK_HEAD_SIZE] = {0}, cdw[RK_HEAD_SIZE] = {0}, cdb[RK_HEAD_SIZE] = {0};
                float cdk[RK_HEAD_SIZE] = {0}, cda[RK_HEAD_SIZE] = {0};
                wkv_ab(N, b->a.kk + o, b->a.alpha + o, aa, bb);
                /* per row i: G_i += dy_i r; the column gradients of r, w, b, k
                 * and a; dv_i; G_i <- G_i diag(w) + dsa_i a (kernels_wkv.c) */
                rk__wkv_head_bwd(false, N, Gh, Sold, Snew, dyh, sa, r, w, k, v, aa, bb, dv + o,
                                 cdr, cdw, cdb, cdk, cda);
                for (int j = 0; j < N; j++) {
                    dr[o + j] += cdr[j];
                    dw[o + j] = cdw[j];
                    db[o + j] = cdb[j];
                    dk[o + j] += cdk[j];
                    da[o + j] = cda[j];
                }
            }
        }
        memcpy(dS0 + h * NN, Gh, sizeof(float) * NN);
        /* the read-out term: y_t += f(r_t, w_<=t) */
        if (b->ro)
            b->ro->bwd(b->ro_data, wa->l, (int)h, T, (size_t)C, b->a.r + h * N, b->a.w + h * N,
                       dy + h * N, dr + h * N, dw + h * N, b->ro_grad,
                       b->ro_scratch + h * b->ro_scratch_len);
    }
}

static void b_relu2(struct bwd *b, void *arg, size_t t0, size_t t1)
{
    (void)arg;
    const size_t F = (size_t)b->F;
    float *restrict tf = b->tf;
    const float *restrict fs = b->a.fs;
    for (size_t i = t0 * F; i < t1 * F; i++)
        tf[i] = fs[i] > 0 ? tf[i] * 2.0f * fs[i] : 0.0f;
}

/* dxk2 (t0) -> du2 (t1) through the ffn lerp, then dx += LN2 backward */
static void b_ln2(struct bwd *b, void *arg, size_t t0, size_t t1)
{
    const struct lctx *lc = arg;
    const struct rk_layer *ly = lc->ly;
    const size_t T = b->T;
    const int C = b->C;
    const float *dxk2 = b->t0;
    float *du2 = b->t1;
    for (size_t t = t0; t < t1; t++) {
        for (int c = 0; c < C; c++) {
            float mk = ly->ffn_x_k[c];
            float g = dxk2[t * C + c] * (1.0f - mk);
            if (t + 1 < T)
                g += dxk2[(t + 1) * C + c] * mk;
            du2[t * C + c] = g;
        }
        ln_bwd(b->dx + t * C, du2 + t * C, b->a.xm + t * C, ly->ln2_w, C, b->a.mu2[t],
               b->a.rs2[t]);
    }
}

/* from d(o * g) (t0): dg -> t2; the bonus o += sb * v, sb = sum_j r k r_k
 * (dv -> xv, dr -> xr, dk -> xk); GroupNorm backward into dy (t0) */
static void b_out(struct bwd *b, void *arg, size_t t0, size_t t1)
{
    const struct lctx *lc = arg;
    const struct rk_layer *ly = lc->ly;
    const int C = b->C, H = b->H, N = b->N;
    float *dmo = b->t0, *dg = b->t2, *dO = b->t1;
    float *dr = b->xr, *dk = b->xk, *dv = b->xv;
    float *dy = b->t0; /* each row of dmo is consumed before its dy is written */
    for (size_t t = t0; t < t1; t++) {
        for (size_t i = t * C; i < (t + 1) * C; i++) {
            dg[i] = dmo[i] * b->a.o[i];
            dO[i] = dmo[i] * b->a.g[i];
        }
        for (int h = 0; h < H; h++) {
            size_t o = t * C + h * N;
            double dsb = 0;
            for (int j = 0; j < N; j++)
                dsb += (double)dO[o + j] * b->a.v[o + j];
            float sbv = b->a.sb[t * H + h];
            for (int j = 0; j < N; j++) {
                int c = h * N + j;
                dv[o + j] = dO[o + j] * sbv;
                dr[o + j] = (float)dsb * b->a.k[o + j] * ly->r_k[c];
                dk[o + j] = (float)dsb * b->a.r[o + j] * ly->r_k[c];
            }
            double sh = 0, shx = 0;
            float mu = b->a.gmu[t * H + h], rs = b->a.grs[t * H + h];
            for (int j = 0; j < N; j++) {
                double hh = (double)dO[o + j] * ly->lnx_w[h * N + j];
                double xh = ((double)b->a.y[o + j] - mu) * rs;
                sh += hh;
                shx += hh * xh;
            }
            double mh = sh / N, mhx = shx / N;
            for (int j = 0; j < N; j++) {
                double hh = (double)dO[o + j] * ly->lnx_w[h * N + j];
                double xh = ((double)b->a.y[o + j] - mu) * rs;
                dy[o + j] = (float)((hh - mh - xh * mhx) * rs);
            }
        }
    }
}

/* chain back to kh (t1) and alpha (t3) (spec 3.2) */
static void b_keys(struct bwd *b, void *arg, size_t t0, size_t t1)
{
    const struct lctx *lc = arg;
    const struct rk_layer *ly = lc->ly;
    const int C = b->C, H = b->H, N = b->N;
    const float *dk = b->xk, *da = b->xa, *db = b->xg;
    float *dkh = b->t1, *dal = b->t3;
    for (size_t t = t0; t < t1; t++) {
        for (int h = 0; h < H; h++) {
            size_t o = t * C + h * N;
            double dot = 0;
            float dkk[RK_HEAD_SIZE];
            for (int j = 0; j < N; j++) {
                dkk[j] = -da[o + j] + db[o + j] * b->a.alpha[o + j];
                dot += (double)b->a.kk[o + j] * dkk[j];
            }
            float qn = b->a.qn[t * H + h];
            for (int j = 0; j < N; j++) {
                int c = h * N + j;
                size_t i = o + j;
                float dq = (dkk[j] - b->a.kk[i] * (float)dot) / qn;
                float al = b->a.alpha[i];
                dkh[i] = dk[i] * (1.0f + (al - 1.0f) * ly->k_a[c]) + dq * ly->k_k[c];
                dal[i] = db[i] * b->a.kk[i] + dk[i] * b->a.kh[i] * ly->k_a[c];
            }
        }
    }
}

/* value: dv (xv) -> d v-hat (t0); later layers also feed v_first and the
 * mix's pre-activation (t1) */
static void b_value(struct bwd *b, void *arg, size_t t0, size_t t1)
{
    const struct lctx *lc = arg;
    const size_t C = (size_t)b->C;
    const float *dv = b->xv;
    float *dvh = b->t0, *dzv = b->t1;
    if (lc->l == 0) {
        for (size_t i = t0 * C; i < t1 * C; i++)
            dvh[i] = dv[i] + b->dvfirst[i];
        return;
    }
    for (size_t i = t0 * C; i < t1 * C; i++) {
        float nu = b->a.nu[i];
        dvh[i] = dv[i] * (1.0f - nu);
        b->dvfirst[i] += dv[i] * nu;
        float dnu = dv[i] * (b->vfirst[i] - b->a.vh[i]);
        dzv[i] = dnu * nu * (1.0f - nu);
    }
}

/* decay: dz = dw * w * (-c) * s(1-s) into t0 */
static void b_decay(struct bwd *b, void *arg, size_t t0, size_t t1)
{
    (void)arg;
    const size_t C = (size_t)b->C;
    const float *dw = b->xw;
    for (size_t i = t0 * C; i < t1 * C; i++) {
        float s = b->a.sz[i];
        b->t0[i] = dw[i] * b->a.w[i] * (float)(-DECAY_C) * s * (1.0f - s);
    }
}

static void b_tanh(struct bwd *b, void *arg, size_t t0, size_t t1)
{
    (void)arg;
    const size_t D = (size_t)b->m->Dw;
    for (size_t i = t0 * D; i < t1 * D; i++)
        b->tlr[i] *= 1.0f - b->a.tw[i] * b->a.tw[i];
}

/* alpha = sigmoid(...): d pre-activation into t0 from dal (t3) */
static void b_alpha(struct bwd *b, void *arg, size_t t0, size_t t1)
{
    (void)arg;
    const size_t C = (size_t)b->C;
    const float *dal = b->t3;
    for (size_t i = t0 * C; i < t1 * C; i++)
        b->t0[i] = dal[i] * b->a.alpha[i] * (1.0f - b->a.alpha[i]);
}

static void b_gate(struct bwd *b, void *arg, size_t t0, size_t t1)
{
    (void)arg;
    const size_t D = (size_t)b->m->Dg;
    for (size_t i = t0 * D; i < t1 * D; i++)
        b->tlr[i] *= b->a.gh[i] * (1.0f - b->a.gh[i]);
}

/* lerps x_c = u + (p - u) mu_c, p_t = u_{t-1}: du (t0) from the six lerp
 * gradients, then dx += LN1 backward */
static void b_ln1(struct bwd *b, void *arg, size_t t0, size_t t1)
{
    const struct lctx *lc = arg;
    const struct rk_layer *ly = lc->ly;
    const size_t T = b->T;
    const int C = b->C;
    const float *mus[6] = {ly->x_r, ly->x_w, ly->x_k, ly->x_v, ly->x_a, ly->x_g};
    const float *dxs[6] = {b->xr, b->xw, b->xk, b->xv, b->xa, b->xg};
    float *du = b->t0;
    for (size_t t = t0; t < t1; t++) {
        for (int c = 0; c < C; c++) {
            float g = 0, gp = 0;
            for (int q = 0; q < 6; q++) {
                g += dxs[q][t * C + c] * (1.0f - mus[q][c]);
                if (t + 1 < T)
                    gp += dxs[q][(t + 1) * C + c] * mus[q][c];
            }
            du[t * C + c] = g + gp;
        }
        ln_bwd(b->dx + t * C, du + t * C, lc->x + t * C, ly->ln1_w, C, b->a.mu1[t],
               b->a.rs1[t]);
    }
}

/* Backward of layer l. On entry b->dx holds dLoss/d(layer output) and the
 * activations of layer l are in place (layer_fwd with out = NULL); on exit
 * b->dx holds dLoss/d(layer input) and dst0 (this layer's part of dstate0)
 * is written. */
static void layer_bwd(struct bwd *b, int l, float *dst0)
{
    const struct rk_layer *ly = &b->m->layers[l];
    const size_t T = b->T, TC = b->T * (size_t)b->C;
    const int C = b->C;
    struct lctx lc = {.l = l, .ly = ly, .x = b->xs + (size_t)l * TC, .dst0 = dst0};

    /* channel mix: out = xm + Wv relu(Wk xk2)^2, xk2 = u2 + (p2 - u2) mu_k */
    matmul_t(b, b->tf, b->dx, T, &ly->ffn_value, false); /* d hidden [T][F] */
    par_for(b, T, b_relu2, &lc);
    matmul_t(b, b->t0, b->tf, T, &ly->ffn_key, false); /* dxk2 */
    float *dffn0 = dst0 + b->lay.ffn_shift;
    for (int c = 0; c < C; c++)
        dffn0[c] = b->t0[c] * ly->ffn_x_k[c];
    par_for(b, T, b_ln2, &lc); /* dx is now dLoss/dxm */

    /* time mix output: xm = x + Wo (o * g) */
    matmul_t(b, b->t0, b->dx, T, &ly->wo, false);
    par_for(b, T, b_out, &lc);
    struct wkv_bwd_arg wa = {l, dst0 + b->lay.wkv};
    par_for(b, (size_t)b->H, wkv_bwd, &wa);
    par_for(b, T, b_keys, &lc);

    /* r and k (dkh complete); their input gradients go to xr and xk */
    matmul_t(b, b->t0, b->xr, T, &ly->wr, false);
    memcpy(b->xr, b->t0, sizeof(float) * TC);
    matmul_t(b, b->xk, b->t1, T, &ly->wk, false);
    /* value */
    par_for(b, T, b_value, &lc);
    matmul_t(b, b->xv, b->t0, T, &ly->wv, false);
    if (l > 0) {
        matmul_t(b, b->tlr, b->t1, T, &ly->v2, false);
        matmul_t(b, b->xv, b->tlr, T, &ly->v1, true);
    }
    /* decay: z = w0 + tanh(xw w1) w2 */
    par_for(b, T, b_decay, &lc);
    matmul_t(b, b->tlr, b->t0, T, &ly->w2, false);
    par_for(b, T, b_tanh, &lc);
    matmul_t(b, b->xw, b->tlr, T, &ly->w1, false);
    /* alpha = sigmoid(a0 + (xa a1) a2) */
    par_for(b, T, b_alpha, &lc);
    matmul_t(b, b->tlr, b->t0, T, &ly->a2, false);
    matmul_t(b, b->xa, b->tlr, T, &ly->a1, false);
    /* gate g = sigmoid(xg g1) g2 */
    matmul_t(b, b->tlr, b->t2, T, &ly->g2, false);
    par_for(b, T, b_gate, &lc);
    matmul_t(b, b->xg, b->tlr, T, &ly->g1, false);

    /* token shift at t = 0 reads the shift state */
    float *datt0 = dst0 + b->lay.att_shift;
    const float *mus[6] = {ly->x_r, ly->x_w, ly->x_k, ly->x_v, ly->x_a, ly->x_g};
    const float *dxs[6] = {b->xr, b->xw, b->xk, b->xv, b->xa, b->xg};
    for (int c = 0; c < C; c++) {
        float gp = 0;
        for (int q = 0; q < 6; q++)
            gp += dxs[q][c] * mus[q][c];
        datt0[c] = gp;
    }
    /* dx_in = dxm (residual, already in dx) + LN1 backward of the lerps */
    par_for(b, T, b_ln1, &lc);
}

/* --- loss and head -------------------------------------------------------- */

struct hctx {
    const uint32_t *targets;
    const size_t *sel;
    size_t s0, nsel;
    rk_logits_loss_fn *loss;
    void *loss_user;
};

/* ln_out of the selected rows s0 + [i0, i1) */
static void h_ln(struct bwd *b, void *arg, size_t i0, size_t i1)
{
    const struct hctx *hc = arg;
    const struct rk_model *m = b->m;
    const int C = b->C;
    const float *xL = b->xs + (size_t)b->L * b->T * C;
    for (size_t i = i0; i < i1; i++) {
        memcpy(b->hx + i * C, xL + hc->sel[hc->s0 + i] * C, sizeof(float) * C);
        ln_fwd(b->hn + i * C, b->hx + i * C, m->lnout_w, m->lnout_b, C, LN_EPS, &b->hmu[i],
               &b->hrs[i]);
    }
}

/* Cross-entropy of one row; its logits become dLoss/dlogits / nsel. The
 * exponentials are fp32 (every term is <= 1 after the shift), summed in
 * double; the softmax divides by that sum. A NaN logit makes the loss NaN
 * (the caller fails the job); rk__exp_sum alone would count it as zero. */
double rk_loss_xent(float *lg, int V, size_t t, uint32_t tg, size_t nsel, void *user)
{
    (void)t, (void)user;
    float mx = lg[0];
    int nan = 0;
    for (int v = 0; v < V; v++) {
        mx = lg[v] > mx ? lg[v] : mx;
        nan |= lg[v] != lg[v];
    }
    float ltg = lg[tg];
    double se = rk__exp_sum(lg, lg, (size_t)V, mx);
    double loss = nan ? NAN : (double)mx + log(se) - (double)ltg;
    float scale = (float)(1.0 / ((double)nsel * se));
    for (int v = 0; v < V; v++)
        lg[v] *= scale;
    lg[tg] -= (float)(1.0 / (double)nsel);
    return loss;
}

/* Each row's loss into hloss[i]; its logits become dLoss/dlogits. */
static void h_loss(struct bwd *b, void *arg, size_t i0, size_t i1)
{
    const struct hctx *hc = arg;
    const int V = b->V;
    for (size_t i = i0; i < i1; i++) {
        size_t t = hc->sel[hc->s0 + i];
        b->hloss[i] = hc->loss(b->logits + i * (size_t)V, V, t, hc->targets[t], hc->nsel,
                               hc->loss_user);
    }
}

static void h_ln_bwd(struct bwd *b, void *arg, size_t i0, size_t i1)
{
    const struct hctx *hc = arg;
    const int C = b->C;
    for (size_t i = i0; i < i1; i++)
        ln_bwd(b->dx + hc->sel[hc->s0 + i] * C, b->hn + i * C, b->hx + i * C, b->m->lnout_w, C,
               b->hmu[i], b->hrs[i]);
}

/* Loss over the selected positions and dLoss/dxs[L] into b->dx. */
static int head_fwd_bwd(struct bwd *b, const struct rk_backward_params *p,
                        const uint32_t *targets, const size_t *sel, size_t nsel, double *loss)
{
    double total = 0;
    memset(b->dx, 0, sizeof(float) * b->T * b->C);
    struct hctx hc = {.targets = targets, .sel = sel, .nsel = nsel,
                      .loss = p && p->loss ? p->loss : rk_loss_xent,
                      .loss_user = p ? p->loss_user : NULL};
    for (hc.s0 = 0; hc.s0 < nsel; hc.s0 += b->Tc) {
        size_t n = nsel - hc.s0 < b->Tc ? nsel - hc.s0 : b->Tc;
        par_for(b, n, h_ln, &hc);
        matmul(b, b->logits, b->hn, n, &b->m->head);
        par_for(b, n, h_loss, &hc);
        for (size_t i = 0; i < n; i++)
            total += b->hloss[i];
        matmul_t(b, b->hn, b->logits, n, &b->m->head, false); /* d ln_out output */
        par_for(b, n, h_ln_bwd, &hc);
    }
    *loss = total / (double)nsel;
    return RK_OK;
}

/* --- entry point ---------------------------------------------------------- */

int rk_backward_seq(struct rk_ctx *ctx, const struct rk_backward_params *p,
                    const uint32_t *tokens, const uint32_t *targets, const uint8_t *mask,
                    size_t n, const float *state0, double *loss, float *dstate0,
                    rk_cancel_cb *cancel, void *cancel_user)
{
    if (!ctx || !tokens || !targets || !loss || !dstate0 || n == 0)
        return RK_EINVAL;
    const struct rk_model *m = rk_ctx_model(ctx);
    struct bwd b = {0};
    b.m = m;
    b.pool = rk__ctx_pool(ctx);
    b.T = n;
    b.L = m->L;
    b.C = m->C;
    b.H = m->H;
    b.N = m->N;
    b.F = m->F;
    b.V = m->V;
    RK_ASSERT(b.N == RK_HEAD_SIZE && b.H * b.N == b.C);
    b.K = p && p->checkpoint_every > 0 ? p->checkpoint_every : 16;
    if ((size_t)b.K > n)
        b.K = (int)n;
    rk_state_layout(m, &b.lay);
    const size_t slen = rk_state_len(m);
    if (p && p->ro_ops) {
        b.ro = p->ro_ops;
        b.ro_data = p->ro_data;
        b.ro_grad = p->ro_grad;
    }

    size_t nsel = 0;
    for (size_t t = 0; t < n; t++) {
        if (tokens[t] >= (uint32_t)b.V)
            return RK_ERANGE;
        if (!mask || mask[t]) {
            if (targets[t] >= (uint32_t)b.V)
                return RK_ERANGE;
            nsel++;
        }
    }
    /* head chunk: at most ~16M logits at once */
    size_t tc = ((size_t)16 << 20) / (size_t)b.V;
    if (tc < 1)
        tc = 1;
    if (tc > 256)
        tc = 256;
    b.Tc = tc < n ? tc : n;

    /* Keep every layer's activations when they fit in store_bytes_max (no
     * recompute: about a quarter less work), else one set, recomputed per
     * layer in the backward sweep. */
    struct act probe;
    struct plan pa = {0};
    layout_act(&b, &pa, &probe);
    size_t act_floats = pa.off;
    b.n_acts = (size_t)b.L * act_floats * sizeof(float) <= store_bytes_max ? b.L : 1;
    struct act *acts = rk__calloc((size_t)b.n_acts, sizeof *acts);
    struct plan pl = {0};
    b.acts = acts;
    layout(&b, &pl);
    size_t nfloats = pl.off;
    size_t *sel = rk__malloc(sizeof(size_t) * (nsel ? nsel : 1));
    float *zero = NULL;
    float *mem = rk__ctx_workspace(ctx, sizeof(float) * nfloats);
    if (!state0)
        zero = rk__calloc(slen, sizeof(float));
    if (b.ro) {
        b.ro_carry = rk__calloc(b.ro->carry_len(b.ro_data) + 1, sizeof(float));
        b.ro_scratch_len = b.ro->bwd_scratch(b.ro_data, n);
        b.ro_scratch = rk__malloc(((size_t)b.H * b.ro_scratch_len + 1) * sizeof(float));
    }
    if (!acts || !sel || !mem || (!state0 && !zero) ||
        (b.ro && (!b.ro_carry || !b.ro_scratch))) {
        rk__free(acts);
        rk__free(sel);
        rk__free(zero);
        rk__free(b.ro_carry);
        rk__free(b.ro_scratch);
        return RK_ENOMEM;
    }
    pl.off = 0;
    pl.base = mem;
    layout(&b, &pl);
    if (!state0)
        state0 = zero;
    nsel = 0;
    for (size_t t = 0; t < n; t++)
        if (!mask || mask[t])
            sel[nsel++] = t;

    int rc = RK_OK;
    memset(dstate0, 0, sizeof(float) * slen);
    *loss = 0;
    if (nsel == 0)
        goto out;

    /* 1. forward, keeping the residual stream */
    for (size_t t = 0; t < n; t++) {
        float *x0 = b.xs + t * b.C;
        rk__weight_row(&m->emb, (int)tokens[t], b.t0);
        float mu, rs;
        ln_fwd(x0, b.t0, m->ln0_w, m->ln0_b, b.C, LN_EPS, &mu, &rs);
    }
    for (int l = 0; l < b.L; l++) {
        if (cancel && cancel(cancel_user)) {
            rc = RK_ECANCELED;
            goto out;
        }
        b.a = b.acts[b.n_acts > 1 ? l : 0];
        layer_fwd(&b, l, state0 + (size_t)l * b.lay.layer_stride,
                  b.xs + (size_t)(l + 1) * n * b.C);
    }
    /* 2. loss, head and ln_out */
    rc = head_fwd_bwd(&b, p, targets, sel, nsel, loss);
    if (rc != RK_OK)
        goto out;
    /* 3. layers in reverse */
    memset(b.dvfirst, 0, sizeof(float) * n * b.C);
    for (int l = b.L - 1; l >= 0; l--) {
        if (cancel && cancel(cancel_user)) {
            rc = RK_ECANCELED;
            goto out;
        }
        if (b.n_acts > 1)
            b.a = b.acts[l];
        else
            layer_fwd(&b, l, state0 + (size_t)l * b.lay.layer_stride, NULL);
        layer_bwd(&b, l, dstate0 + (size_t)l * b.lay.layer_stride);
    }
out:
    if (rc != RK_OK) {
        memset(dstate0, 0, sizeof(float) * slen);
        *loss = 0;
    }
    rk__free(acts);
    rk__free(sel);
    rk__free(zero);
    rk__free(b.ro_carry);
    rk__free(b.ro_scratch);
    return rc;
}

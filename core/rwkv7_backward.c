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
    for (int i = 0; i < b->n_acts; i++)
        layout_act(b, p, &b->acts[i]);
}

/* --- forward of one layer over all T tokens, keeping activations ---------- */

/* One WKV step for all heads: S [H][N][N] is updated in place from S_{t-1} to
 * S_t; sa [C] receives S_{t-1} a per head; y [C] (may be NULL) gets S_t r.
 * a = -kk, b = kk*alpha (spec 2.2 step 10). */
#ifdef __x86_64__
#include <immintrin.h>

static bool bwd_avx512(void)
{
    static int cached = -1;
    if (cached < 0) {
        const char *env = getenv("RWKVD_NO_AVX512");
        cached = __builtin_cpu_supports("avx512f") && !(env && *env && *env != '0');
    }
    return cached;
}

/* One row i of the reverse WKV step for N = 64 (the scalar loop below is the
 * reference): G_i += dy_i r; accumulates the per-column gradients of r, w,
 * b, k and a; G_i <- G_i * w + dsa * a. Returns dL/dv_i. */
__attribute__((target("avx512f,fma"))) static float
wkv_bwd_row_avx512(float *Gr, const float *So, const float *Sn, float dyi, float sai, float vi,
                   const float *r, const float *w, const float *k, const float *aa,
                   const float *bb, float *cdr, float *cdw, float *cdb, float *cdk, float *cda)
{
    __m512 vdy = _mm512_set1_ps(dyi), vsa = _mm512_set1_ps(sai), vv = _mm512_set1_ps(vi);
    __m512 g[4], psa = _mm512_setzero_ps(), pv = _mm512_setzero_ps();
    for (int q = 0; q < 4; q++) {
        int j = 16 * q;
        __m512 gij = _mm512_fmadd_ps(vdy, _mm512_loadu_ps(r + j), _mm512_loadu_ps(Gr + j));
        g[q] = gij;
        __m512 so = _mm512_loadu_ps(So + j);
        _mm512_storeu_ps(cdr + j, _mm512_fmadd_ps(_mm512_loadu_ps(Sn + j), vdy, _mm512_loadu_ps(cdr + j)));
        _mm512_storeu_ps(cdw + j, _mm512_fmadd_ps(gij, so, _mm512_loadu_ps(cdw + j)));
        _mm512_storeu_ps(cdb + j, _mm512_fmadd_ps(gij, vsa, _mm512_loadu_ps(cdb + j)));
        _mm512_storeu_ps(cdk + j, _mm512_fmadd_ps(gij, vv, _mm512_loadu_ps(cdk + j)));
        psa = _mm512_fmadd_ps(gij, _mm512_loadu_ps(bb + j), psa);
        pv = _mm512_fmadd_ps(gij, _mm512_loadu_ps(k + j), pv);
    }
    float dsa = _mm512_reduce_add_ps(psa);
    __m512 vdsa = _mm512_set1_ps(dsa);
    for (int q = 0; q < 4; q++) {
        int j = 16 * q;
        _mm512_storeu_ps(cda + j, _mm512_fmadd_ps(_mm512_loadu_ps(So + j), vdsa, _mm512_loadu_ps(cda + j)));
        _mm512_storeu_ps(Gr + j, _mm512_fmadd_ps(g[q], _mm512_loadu_ps(w + j),
                                                 _mm512_mul_ps(vdsa, _mm512_loadu_ps(aa + j))));
    }
    return _mm512_reduce_add_ps(pv);
}
#endif

/* One WKV step for every head (see rk__wkv_head); sa [C] receives S a per head
 * for the backward, y [C] (or NULL) the output. */
static void wkv_step(int H, int N, float *S, const float *r, const float *w, const float *k,
                     const float *v, const float *kk, const float *alpha, float *sa, float *y)
{
    float yb[RK_HEAD_SIZE];
    for (int h = 0; h < H; h++) {
        const float *kkh = kk + h * N, *ah = alpha + h * N;
        float bb[RK_HEAD_SIZE], aa[RK_HEAD_SIZE];
        for (int j = 0; j < N; j++) {
            aa[j] = -kkh[j];
            bb[j] = kkh[j] * ah[j];
        }
        rk__wkv_head(false, S + (size_t)h * N * N, r + h * N, w + h * N, k + h * N, v + h * N, aa,
                     bb, y ? y + h * N : yb, sa + h * N);
    }
}

/* Layer l over all tokens from xs[l] and the layer's part of state0. With
 * `out` non-NULL the layer output is written there (the first forward);
 * otherwise the ffn value product is skipped (the recompute of backward). */
static void layer_fwd(struct bwd *b, int l, const float *st0, float *out)
{
    const struct rk_model *m = b->m;
    const struct rk_layer *ly = &m->layers[l];
    const size_t T = b->T;
    const int C = b->C, H = b->H, N = b->N, F = b->F;
    const float *x = b->xs + (size_t)l * T * C;
    const float *p_att0 = st0 + b->lay.att_shift;
    const float *S0 = st0 + b->lay.wkv;
    const float *p_ffn0 = st0 + b->lay.ffn_shift;

    for (size_t t = 0; t < T; t++)
        ln_fwd(b->a.u + t * C, x + t * C, ly->ln1_w, ly->ln1_b, C, LN_EPS, &b->a.mu1[t], &b->a.rs1[t]);
    for (size_t t = 0; t < T; t++) {
        const float *u = b->a.u + t * C;
        const float *p = t ? b->a.u + (t - 1) * C : p_att0;
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
    matmul(b, b->a.r, b->xr, T, &ly->wr);
    matmul(b, b->a.kh, b->xk, T, &ly->wk);
    matmul(b, b->a.vh, b->xv, T, &ly->wv);

    /* decay: z = w0 + tanh(x_w w1) w2, w = exp(-e^{-1/2} sigmoid(z)) */
    matmul(b, b->a.tw, b->xw, T, &ly->w1);
    for (size_t i = 0; i < T * (size_t)m->Dw; i++)
        b->a.tw[i] = tanhf(b->a.tw[i]);
    matmul(b, b->t0, b->a.tw, T, &ly->w2);
    for (size_t t = 0; t < T; t++)
        for (int c = 0; c < C; c++) {
            size_t i = t * C + c;
            float s = sigmoidf_(ly->w0[c] + b->t0[i]);
            b->a.sz[i] = s;
            b->a.w[i] = expf((float)(-DECAY_C) * s);
        }
    /* in-context learning rate */
    matmul(b, b->tlr, b->xa, T, &ly->a1);
    matmul(b, b->t0, b->tlr, T, &ly->a2);
    for (size_t t = 0; t < T; t++)
        for (int c = 0; c < C; c++)
            b->a.alpha[t * C + c] = sigmoidf_(ly->a0[c] + b->t0[t * C + c]);
    /* value residual */
    if (l == 0) {
        memcpy(b->a.v, b->a.vh, sizeof(float) * T * C);
        memcpy(b->vfirst, b->a.vh, sizeof(float) * T * C);
    } else {
        matmul(b, b->tlr, b->xv, T, &ly->v1);
        matmul(b, b->t0, b->tlr, T, &ly->v2);
        for (size_t i = 0; i < T * (size_t)C; i++) {
            float nu = sigmoidf_(ly->v0[i % C] + b->t0[i]);
            b->a.nu[i] = nu;
            b->a.v[i] = b->a.vh[i] + (b->vfirst[i] - b->a.vh[i]) * nu;
        }
    }
    /* gate */
    matmul(b, b->a.gh, b->xg, T, &ly->g1);
    for (size_t i = 0; i < T * (size_t)m->Dg; i++)
        b->a.gh[i] = sigmoidf_(b->a.gh[i]);
    matmul(b, b->a.g, b->a.gh, T, &ly->g2);
    /* removal key kk = normalize(kh * k_k) per head; replacement key k */
    for (size_t t = 0; t < T; t++) {
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
    /* WKV with a checkpoint every K tokens */
    const size_t HNN = (size_t)H * N * N;
    float *S = b->G; /* G is free during the forward */
    memcpy(S, S0, sizeof(float) * HNN);
    for (size_t t = 0; t < T; t++) {
        if (t % b->K == 0)
            memcpy(b->a.ck + (t / b->K) * HNN, S, sizeof(float) * HNN);
        wkv_step(H, N, S, b->a.r + t * C, b->a.w + t * C, b->a.k + t * C, b->a.v + t * C,
                 b->a.kk + t * C, b->a.alpha + t * C, b->sabuf, b->a.y + t * C);
    }
    /* GroupNorm per head, bonus, gate, output */
    for (size_t t = 0; t < T; t++) {
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
    matmul(b, b->t0, b->t1, T, &ly->wo);
    for (size_t i = 0; i < T * (size_t)C; i++)
        b->a.xm[i] = x[i] + b->t0[i];

    /* channel mix */
    for (size_t t = 0; t < T; t++)
        ln_fwd(b->a.u2 + t * C, b->a.xm + t * C, ly->ln2_w, ly->ln2_b, C, LN_EPS, &b->a.mu2[t],
               &b->a.rs2[t]);
    for (size_t t = 0; t < T; t++) {
        const float *u2 = b->a.u2 + t * C;
        const float *p = t ? b->a.u2 + (t - 1) * C : p_ffn0;
        for (int c = 0; c < C; c++)
            b->t1[t * C + c] = u2[c] + (p[c] - u2[c]) * ly->ffn_x_k[c];
    }
    matmul(b, b->a.fs, b->t1, T, &ly->ffn_key);
    if (!out)
        return;
    for (size_t i = 0; i < T * (size_t)F; i++) {
        float s = b->a.fs[i] > 0 ? b->a.fs[i] : 0;
        b->tf[i] = s * s;
    }
    matmul(b, out, b->tf, T, &ly->ffn_value);
    for (size_t i = 0; i < T * (size_t)C; i++)
        out[i] += b->a.xm[i];
}

/* --- backward of one layer ------------------------------------------------ */

/* Reverse WKV over all T tokens for all heads (spec 3.1). Inputs: dy [T][C]
 * (b->t0). Outputs accumulated into: dr (b->t1, already holding the bonus
 * part), and written: dw -> b->xw, dk -> b->xk (added to bonus part held
 * there), dv -> b->xv (added), da -> b->xa, db -> b->xg. dS0 -> dS0. */
static void wkv_bwd(struct bwd *b, const float *dy, float *dr, float *dw, float *dk, float *dv,
                    float *da, float *db, float *dS0)
{
    const size_t T = b->T;
    const int C = b->C, H = b->H, N = b->N, K = b->K;
    const size_t HNN = (size_t)H * N * N;
    float *G = b->G;
    memset(G, 0, sizeof(float) * HNN);
    memset(dw, 0, sizeof(float) * T * C);
    memset(da, 0, sizeof(float) * T * C);
    memset(db, 0, sizeof(float) * T * C);
    size_t nchunk = (T + K - 1) / K;
    for (size_t ci = nchunk; ci-- > 0;) {
        size_t ta = ci * K, tb = ta + K < T ? ta + K : T;
        /* states S_{ta-1} .. S_{tb-1} and sa of the chunk */
        memcpy(b->sbuf, b->a.ck + ci * HNN, sizeof(float) * HNN);
        for (size_t t = ta; t < tb; t++) {
            float *Sn = b->sbuf + (t - ta + 1) * HNN;
            memcpy(Sn, Sn - HNN, sizeof(float) * HNN);
            wkv_step(H, N, Sn, b->a.r + t * C, b->a.w + t * C, b->a.k + t * C, b->a.v + t * C,
                     b->a.kk + t * C, b->a.alpha + t * C, b->sabuf + (t - ta) * C, NULL);
        }
        for (size_t t = tb; t-- > ta;) {
            const float *Sold_all = b->sbuf + (t - ta) * HNN;
            const float *Snew_all = Sold_all + HNN;
            const float *sa_all = b->sabuf + (t - ta) * C;
            for (int h = 0; h < H; h++) {
                size_t o = t * C + h * N;
                const float *Sold = Sold_all + (size_t)h * N * N;
                const float *Snew = Snew_all + (size_t)h * N * N;
                const float *sa = sa_all + h * N;
                const float *r = b->a.r + o, *w = b->a.w + o, *k = b->a.k + o, *v = b->a.v + o;
                const float *kk = b->a.kk + o, *al = b->a.alpha + o, *dyh = dy + o;
                float *Gh = G + (size_t)h * N * N;
                float aa[RK_HEAD_SIZE], bb[RK_HEAD_SIZE];
                float cdr[RK_HEAD_SIZE] = {0}, cdw[RK_HEAD_SIZE] = {0}, cdb[RK_HEAD_SIZE] = {0};
                float cdk[RK_HEAD_SIZE] = {0}, cda[RK_HEAD_SIZE] = {0};
                for (int j = 0; j < N; j++) {
                    aa[j] = -kk[j];
                    bb[j] = kk[j] * al[j];
                }
#ifdef __x86_64__
                if (N == 64 && bwd_avx512()) {
                    for (int i = 0; i < N; i++)
                        dv[o + i] += wkv_bwd_row_avx512(Gh + (size_t)i * N, Sold + (size_t)i * N,
                                                        Snew + (size_t)i * N, dyh[i], sa[i], v[i],
                                                        r, w, k, aa, bb, cdr, cdw, cdb, cdk, cda);
                } else
#endif
                for (int i = 0; i < N; i++) {
                    float *Gr = Gh + (size_t)i * N;
                    const float *So = Sold + (size_t)i * N, *Sn = Snew + (size_t)i * N;
                    const float dyi = dyh[i], sai = sa[i], vi = v[i];
                    float dsa = 0, dvi = 0;
                    for (int j = 0; j < N; j++) {
                        float gij = Gr[j] + dyi * r[j]; /* full dL/dS_t */
                        Gr[j] = gij;
                        cdr[j] += Sn[j] * dyi;
                        cdw[j] += gij * So[j];
                        cdb[j] += gij * sai;
                        cdk[j] += gij * vi;
                        dsa += gij * bb[j];
                        dvi += gij * k[j];
                    }
                    for (int j = 0; j < N; j++) {
                        cda[j] += So[j] * dsa;
                        Gr[j] = Gr[j] * w[j] + dsa * aa[j]; /* dL/dS_{t-1} */
                    }
                    dv[o + i] += dvi;
                }
                for (int j = 0; j < N; j++) {
                    dr[o + j] += cdr[j];
                    dw[o + j] = cdw[j];
                    db[o + j] = cdb[j];
                    dk[o + j] += cdk[j];
                    da[o + j] = cda[j];
                }
            }
        }
    }
    memcpy(dS0, G, sizeof(float) * HNN);
}

/* Backward of layer l. On entry b->dx holds dLoss/d(layer output) and the
 * activations of layer l are in place (layer_fwd with out = NULL); on exit
 * b->dx holds dLoss/d(layer input) and dst0 (this layer's part of dstate0)
 * is written. */
static void layer_bwd(struct bwd *b, int l, float *dst0)
{
    const struct rk_model *m = b->m;
    const struct rk_layer *ly = &m->layers[l];
    const size_t T = b->T, TC = b->T * (size_t)b->C;
    const int C = b->C, H = b->H, N = b->N, F = b->F;
    const float *x = b->xs + (size_t)l * T * C;
    float *dx = b->dx;

    /* channel mix: out = xm + Wv relu(Wk xk2)^2, xk2 = u2 + (p2 - u2) mu_k */
    matmul_t(b, b->tf, dx, T, &ly->ffn_value, false); /* d hidden [T][F] */
    {
        float *restrict tf = b->tf;
        const float *restrict fs = b->a.fs;
        for (size_t i = 0; i < T * (size_t)F; i++)
            tf[i] = fs[i] > 0 ? tf[i] * 2.0f * fs[i] : 0.0f;
    }
    float *dxk2 = b->t0;
    matmul_t(b, dxk2, b->tf, T, &ly->ffn_key, false);
    float *dffn0 = dst0 + b->lay.ffn_shift;
    float *du2 = b->t1;
    for (size_t t = 0; t < T; t++)
        for (int c = 0; c < C; c++) {
            float mk = ly->ffn_x_k[c];
            float g = dxk2[t * C + c] * (1.0f - mk);
            if (t + 1 < T)
                g += dxk2[(t + 1) * C + c] * mk;
            du2[t * C + c] = g;
        }
    for (int c = 0; c < C; c++)
        dffn0[c] = dxk2[c] * ly->ffn_x_k[c];
    /* dxm = dx (residual) + LN2 backward */
    float *dxm = dx; /* updated in place */
    for (size_t t = 0; t < T; t++)
        ln_bwd(dxm + t * C, du2 + t * C, b->a.xm + t * C, ly->ln2_w, C, b->a.mu2[t], b->a.rs2[t]);

    /* time mix output: xm = x + Wo (o * g) */
    float *dmo = b->t0;
    matmul_t(b, dmo, dxm, T, &ly->wo, false);
    float *dg = b->t2, *dO = b->t1;
    for (size_t i = 0; i < TC; i++) {
        dg[i] = dmo[i] * b->a.o[i];
        dO[i] = dmo[i] * b->a.g[i];
    }
    /* bonus o += sb * v, sb = sum_j r k r_k; GroupNorm backward into dy (t0) */
    float *dr = b->xr, *dk = b->xk, *dv = b->xv;
    float *dy = b->t0; /* dmo is no longer needed */
    for (size_t t = 0; t < T; t++)
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
            /* GroupNorm: input y, weight lnx_w */
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
    float *dw = b->xw, *da = b->xa, *db = b->xg;
    /* dg (t2) must survive; da/db/dw reuse the lerp buffers of w, a, g
     * whose forward values are no longer needed. */
    wkv_bwd(b, dy, dr, dw, dk, dv, da, db, dst0 + b->lay.wkv);

    /* chain back to kh, alpha, v-hat, z (spec 3.2) */
    float *dkh = b->t1, *dal = b->t3;
    for (size_t t = 0; t < T; t++) {
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
    /* matrices r, k (dkh complete), then free dr/dk buffers for dx_r/dx_k */
    float *dxr = b->t0;
    matmul_t(b, dxr, dr, T, &ly->wr, false);
    memcpy(b->xr, dxr, sizeof(float) * TC);
    matmul_t(b, b->xk, dkh, T, &ly->wk, false); /* dk (xk) was consumed into dkh */
    /* value: l >= 1 mixes with v_first */
    float *dvh = b->t0;
    if (l == 0) {
        for (size_t i = 0; i < TC; i++)
            dvh[i] = dv[i] + b->dvfirst[i];
        matmul_t(b, b->xv, dvh, T, &ly->wv, false);
    } else {
        float *dzv = b->t1; /* dkh consumed */
        for (size_t i = 0; i < TC; i++) {
            float nu = b->a.nu[i];
            dvh[i] = dv[i] * (1.0f - nu);
            b->dvfirst[i] += dv[i] * nu;
            float dnu = dv[i] * (b->vfirst[i] - b->a.vh[i]);
            dzv[i] = dnu * nu * (1.0f - nu);
        }
        matmul_t(b, b->xv, dvh, T, &ly->wv, false);
        matmul_t(b, b->tlr, dzv, T, &ly->v2, false);
        matmul_t(b, b->xv, b->tlr, T, &ly->v1, true);
    }
    /* decay: dz = dw * w * (-c) * s(1-s); z = w0 + tanh(xw w1) w2 */
    float *dz = b->t0;
    for (size_t i = 0; i < TC; i++) {
        float s = b->a.sz[i];
        dz[i] = dw[i] * b->a.w[i] * (float)(-DECAY_C) * s * (1.0f - s);
    }
    matmul_t(b, b->tlr, dz, T, &ly->w2, false);
    for (size_t i = 0; i < T * (size_t)m->Dw; i++)
        b->tlr[i] *= 1.0f - b->a.tw[i] * b->a.tw[i];
    matmul_t(b, b->xw, b->tlr, T, &ly->w1, false);
    /* alpha = sigmoid(a0 + (xa a1) a2) */
    for (size_t i = 0; i < TC; i++)
        dz[i] = dal[i] * b->a.alpha[i] * (1.0f - b->a.alpha[i]);
    matmul_t(b, b->tlr, dz, T, &ly->a2, false);
    matmul_t(b, b->xa, b->tlr, T, &ly->a1, false);
    /* gate g = sigmoid(xg g1) g2 */
    matmul_t(b, b->tlr, dg, T, &ly->g2, false);
    for (size_t i = 0; i < T * (size_t)m->Dg; i++)
        b->tlr[i] *= b->a.gh[i] * (1.0f - b->a.gh[i]);
    matmul_t(b, b->xg, b->tlr, T, &ly->g1, false);

    /* lerps x_c = u + (p - u) mu_c, p_t = u_{t-1} (or the shift state) */
    float *du = b->t0;
    float *datt0 = dst0 + b->lay.att_shift;
    const float *mus[6] = {ly->x_r, ly->x_w, ly->x_k, ly->x_v, ly->x_a, ly->x_g};
    float *dxs[6] = {b->xr, b->xw, b->xk, b->xv, b->xa, b->xg};
    for (size_t t = 0; t < T; t++)
        for (int c = 0; c < C; c++) {
            float g = 0, gp = 0;
            for (int q = 0; q < 6; q++) {
                g += dxs[q][t * C + c] * (1.0f - mus[q][c]);
                if (t + 1 < T)
                    gp += dxs[q][(t + 1) * C + c] * mus[q][c];
            }
            du[t * C + c] = g + gp;
        }
    for (int c = 0; c < C; c++) {
        float gp = 0;
        for (int q = 0; q < 6; q++)
            gp += dxs[q][c] * mus[q][c];
        datt0[c] = gp;
    }
    /* dx_in = dxm (residual, already in dx) + LN1 backward */
    for (size_t t = 0; t < T; t++)
        ln_bwd(dx + t * C, du + t * C, x + t * C, ly->ln1_w, C, b->a.mu1[t], b->a.rs1[t]);
}

/* --- loss and head -------------------------------------------------------- */

/* Loss over the selected positions and dLoss/dxs[L] into b->dx. */
static int head_fwd_bwd(struct bwd *b, const uint32_t *targets, const size_t *sel, size_t nsel,
                        double *loss)
{
    const struct rk_model *m = b->m;
    const int C = b->C, V = b->V;
    const float *xL = b->xs + (size_t)b->L * b->T * C;
    double total = 0;
    memset(b->dx, 0, sizeof(float) * b->T * C);
    for (size_t s0 = 0; s0 < nsel; s0 += b->Tc) {
        size_t n = nsel - s0 < b->Tc ? nsel - s0 : b->Tc;
        for (size_t i = 0; i < n; i++) {
            memcpy(b->hx + i * C, xL + sel[s0 + i] * C, sizeof(float) * C);
            ln_fwd(b->hn + i * C, b->hx + i * C, m->lnout_w, m->lnout_b, C, LN_EPS, &b->hmu[i],
                   &b->hrs[i]);
        }
        matmul(b, b->logits, b->hn, n, &m->head);
        for (size_t i = 0; i < n; i++) {
            float *lg = b->logits + i * (size_t)V;
            float mx = lg[0];
            for (int v = 1; v < V; v++)
                mx = lg[v] > mx ? lg[v] : mx;
            /* fp32 exponentials (every term is <= 1 after the shift), summed
             * in double; the softmax divides by the sum instead of taking
             * a second exponential */
            uint32_t tg = targets[sel[s0 + i]];
            float ltg = lg[tg];
            double se = 0;
            for (int v = 0; v < V; v++) {
                float e = expf(lg[v] - mx);
                lg[v] = e;
                se += e;
            }
            total += (double)mx + log(se) - (double)ltg;
            float scale = (float)(1.0 / ((double)nsel * se));
            for (int v = 0; v < V; v++)
                lg[v] *= scale;
            lg[tg] -= (float)(1.0 / (double)nsel);
        }
        matmul_t(b, b->hn, b->logits, n, &m->head, false); /* d ln_out output */
        for (size_t i = 0; i < n; i++)
            ln_bwd(b->dx + sel[s0 + i] * C, b->hn + i * C, b->hx + i * C, m->lnout_w, C,
                   b->hmu[i], b->hrs[i]);
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
    float *mem = rk__malloc_aligned(sizeof(float) * nfloats);
    if (!state0)
        zero = rk__calloc(slen, sizeof(float));
    if (!acts || !sel || !mem || (!state0 && !zero)) {
        rk__free(acts);
        rk__free(sel);
        rk__free_aligned(mem);
        rk__free(zero);
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
    rc = head_fwd_bwd(&b, targets, sel, nsel, loss);
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
    rk__free_aligned(mem);
    rk__free(zero);
    return rc;
}

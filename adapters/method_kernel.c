/*
 * method_kernel.c - the "kernel" and "dbp" tuning methods and the read-out
 * term that serves their states (docs/TUNING.md has the equations).
 *
 * Per layer l and head h a kernel state adds a memory P [N][M] to the
 * core state, read through fixed random Fourier features of the head's
 * receptance:
 *
 *     rhat = r / sqrt(|r|^2 + 1e-6)
 *     phi  = sqrt(2/M) cos(Omega_l rhat + beta_l)          [M]
 *     y_t += c_t P phi(r_t)                                 (before the GroupNorm)
 *     c_t  = prod_{tau <= t} mean_j w_tau[j]   (fade "mean"; 1 with fade "none")
 *
 * Omega_l [M][N] ~ N(0, 1/sigma^2), beta_l [M] ~ U[0, 2pi), drawn from
 * kernel_seed and stored with the state, so phi . phi' approximates the
 * Gaussian kernel exp(-|rhat - rhat'|^2 / (2 sigma^2)). P = 0 gives the base
 * model bit for bit (the term is skipped only in cost, never in value: 0 is
 * added). The core calls the term through struct rk_readout (rk_core.h) in
 * its forward passes and in rk_backward_seq, whose bwd below is the exact
 * gradient: to P, to r_t (through rhat and phi) and to w (through c_t).
 *
 * "dbp" tunes the same state with P = Ptilde R, R [M][M] per layer
 * (shared by the layer's heads), R = I at the start; Adam steps go to
 * Ptilde (dLoss/dPtilde = dLoss/dP R^T) and after every step
 *     R <- R - eta (E[x x^T] - diag E[x^2]) R / mean(E[x^2]),  x = R phi,
 * over feature vectors sampled from the step's sequences (decorrelated
 * backpropagation, Dalm et al. 2024). Its served state is the kernel state
 * with P = Ptilde R.
 */
/* Vectorise the loops. No fast-math and no contraction into FMA: every sum
 * keeps its written order and rounding, so the AVX-512 and the portable
 * builds of the functions below (HOT) give the same bits. */
#pragma GCC optimize("O3", "fp-contract=off")
#include "method_standard.h"

#include <math.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RHAT_EPS 1e-6
/* The fade c_t counts as 0 once log c_t < FADE_LOG_MIN (c < 4.2e-18): the
 * memory has faded, its work is skipped, and no product of c with a
 * gradient reaches the subnormal range (slow on x86). */
#define FADE_LOG_MIN (-40.0f)
/* The hot functions (BODY) are built twice, for AVX-512 and for any x86-64
 * (elsewhere only the latter), as plain functions; which build runs is
 * chosen once, by rk_cpu_avx512() (the core's switch: the CPU and
 * RWKVD_NO_AVX512), or forced to the portable one with
 * rk_kernel_force_portable. Both compute the same operations in the same
 * order (16 running sums per dot product, one vector register or four), so
 * they agree bit for bit (tests/unit/test_kernel.c compares them). */
#if defined(__x86_64__)
#define KERNEL_AVX512 1
#define AVX512_BUILD __attribute__((target("avx512f")))
#endif
#define BODY static inline __attribute__((always_inline))
#define SAMPLES_PER_HEAD 32 /* DBP: feature vectors kept per (layer, head) per step */

/* --- layout ------------------------------------------------------------------ */

void rk_kernel_layout(const struct rk_model *m, int M, struct rk_kernel_layout *out)
{
    size_t L = (size_t)rk_model_n_layer(m), H = (size_t)rk_model_n_head(m),
           N = (size_t)rk_model_head_size(m), Mz = (size_t)(M > 0 ? M : 0);
    out->P = rk_state_len(m);
    out->omega = out->P + L * H * N * Mz;
    out->beta = out->omega + L * Mz * N;
    out->len = out->beta + L * Mz;
}

size_t rk_adapter_len(const struct rk_model *m, const struct rk_state_meta *meta)
{
    if (!meta || meta->kernel_m <= 0)
        return rk_state_len(m);
    struct rk_kernel_layout kl;
    rk_kernel_layout(m, meta->kernel_m, &kl);
    return kl.len;
}

void rk_kernel_view_of(const struct rk_model *m, int M, int fade, const float *adapter,
                       struct rk_kernel_view *v)
{
    struct rk_kernel_layout kl;
    rk_kernel_layout(m, M, &kl);
    v->L = rk_model_n_layer(m);
    v->H = rk_model_n_head(m);
    v->N = rk_model_head_size(m);
    v->M = M;
    v->fade = fade;
    v->P = adapter + kl.P;
    v->omega = adapter + kl.omega;
    v->beta = adapter + kl.beta;
}

/* --- the read-out term ------------------------------------------------------- */

/* Dot product of n floats in 16 running sums (the compiler vectorises it). */
static inline float dot16(const float *a, const float *b, int n)
{
    float acc[16] = {0};
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int q = 0; q < 16; q++)
            acc[q] += a[i + q] * b[i + q];
    float s = 0;
    for (; i < n; i++)
        s += a[i] * b[i];
    for (int q = 0; q < 16; q++)
        s += acc[q];
    return s;
}

/* cos and sin of z[n] (|z| < 2^22) without libm, so that the loop
 * vectorises: z = k pi + r with |r| <= pi/2 (pi in three parts), then the
 * Taylor series of cos r to r^14 and of sin r to r^15 (truncation below
 * 1e-10 on [-pi/2, pi/2]) and the sign (-1)^k. Within 4e-7 of libm's
 * cosf/sinf (tests/unit/test_kernel.c); the features are defined by this
 * function, in training and in serving alike. */
static inline void cos_sin(const float *z, float *c, float *s, int n)
{
    for (int i = 0; i < n; i++) {
        const float x = z[i];
        const float kf = (x * 0.318309886183790672f + 12582912.0f) - 12582912.0f;
        const float r = ((x - kf * 3.140625f) - kf * 9.67502593994140625e-4f) -
                        kf * 1.509957990978376432e-7f;
        const float r2 = r * r;
        float cp = 1.0f / 87178291200.0f;               /* 1/14! */
        cp = cp * -r2 + 1.0f / 479001600.0f;            /* 1/12! */
        cp = cp * -r2 + 1.0f / 3628800.0f;              /* 1/10! */
        cp = cp * -r2 + 1.0f / 40320.0f;
        cp = cp * -r2 + 1.0f / 720.0f;
        cp = cp * -r2 + 1.0f / 24.0f;
        cp = cp * -r2 + 0.5f;
        cp = cp * -r2 + 1.0f;
        float sp = 1.0f / 1307674368000.0f;             /* 1/15! */
        sp = sp * -r2 + 1.0f / 6227020800.0f;           /* 1/13! */
        sp = sp * -r2 + 1.0f / 39916800.0f;             /* 1/11! */
        sp = sp * -r2 + 1.0f / 362880.0f;
        sp = sp * -r2 + 1.0f / 5040.0f;
        sp = sp * -r2 + 1.0f / 120.0f;
        sp = sp * -r2 + 1.0f / 6.0f;
        sp = sp * -r2 + 1.0f;
        sp *= r;
        const float sign = 1.0f - 2.0f * (float)((int)kf & 1);
        c[i] = sign * cp;
        s[i] = sign * sp;
    }
}

void rk_kernel_cos_sin(const float *z, float *c, float *s, int n) { cos_sin(z, c, s, n); }

/* rhat [N] and its scale 1/nu; z [M] = Omega rhat + beta; phi [M]; and
 * (sn non-NULL) sin z [M]. */
static inline void features(const struct rk_kernel_view *v, int l, const float *r, float *rhat,
                            float *inv_nu, float *z, float *phi, float *sn)
{
    const int N = v->N, M = v->M;
    double ss = 0;
    for (int j = 0; j < N; j++)
        ss += (double)r[j] * r[j];
    float inv = (float)(1.0 / sqrt(ss + RHAT_EPS));
    for (int j = 0; j < N; j++)
        rhat[j] = r[j] * inv;
    *inv_nu = inv;
    const float *Om = v->omega + (size_t)l * M * N, *be = v->beta + (size_t)l * M;
    const float s = sqrtf(2.0f / (float)M);
    float sbuf[RK_KERNEL_M_MAX];
    for (int mi = 0; mi < M; mi++)
        z[mi] = be[mi] + dot16(Om + (size_t)mi * N, rhat, N);
    cos_sin(z, phi, sn ? sn : sbuf, M);
    for (int mi = 0; mi < M; mi++)
        phi[mi] *= s;
}

void rk_kernel_features(const struct rk_kernel_view *v, int l, const float *r, float *phi)
{
    float rhat[RK_KERNEL_M_MAX], z[RK_KERNEL_M_MAX], inv;
    features(v, l, r, rhat, &inv, z, phi, NULL);
}

/* mean_j w[j], accumulated in double */
static inline double mean_decay(const float *w, int N)
{
    double s = 0;
    for (int j = 0; j < N; j++)
        s += w[j];
    return s / N;
}

/* The fade after one more token: the carry is log c. */
static inline float fade_step(float carry, const float *w, int N)
{
    return (float)((double)carry + log(mean_decay(w, N)));
}

static size_t ro_carry_len(const void *data)
{
    const struct rk_kernel_view *v = data;
    return (size_t)v->L * (size_t)v->H;
}

BODY void ro_fwd_body(const void *data, int l, int h, size_t n, size_t stride, const float *r,
                      const float *w, float *carry, float *y)
{
    const struct rk_kernel_view *v = data;
    const int N = v->N, M = v->M;
    const float *P = v->P + ((size_t)l * v->H + (size_t)h) * (size_t)N * M;
    float *cl = carry + (size_t)l * v->H + h;
    float rhat[RK_KERNEL_M_MAX], z[RK_KERNEL_M_MAX], phi[RK_KERNEL_M_MAX], inv;
    for (size_t t = 0; t < n; t++) {
        const float *rt = r + t * stride, *wt = w + t * stride;
        float c = 1.0f;
        if (v->fade == RK_FADE_MEAN) {
            *cl = fade_step(*cl, wt, N);
            if (*cl < FADE_LOG_MIN)
                continue; /* faded: c = 0 */
            c = expf(*cl);
        }
        features(v, l, rt, rhat, &inv, z, phi, NULL);
        float *yt = y + t * stride;
        for (int i = 0; i < N; i++)
            yt[i] += c * dot16(P + (size_t)i * M, phi, M);
    }
}

/* The backward runs over blocks of TB tokens so that each row of P and of
 * Omega is read once per block rather than once per token. */
#define TB 8

static size_t ro_bwd_scratch(const void *data, size_t n)
{
    const struct rk_kernel_view *v = data;
    return n + (size_t)TB * (4 * (size_t)v->M + 4 * (size_t)v->N);
}

BODY void ro_bwd_body(const void *data, int l, int h, size_t n, size_t stride, const float *r,
                      const float *w, const float *dy, float *dr, float *dw, void *grad,
                      float *scratch)
{
    const struct rk_kernel_view *v = data;
    struct rk_kernel_grad *g = grad;
    const int N = v->N, M = v->M, H = v->H;
    const size_t lh = (size_t)l * H + (size_t)h, Mz = (size_t)M;
    const float *P = v->P + lh * (size_t)N * M;
    float *dP = g->dP + lh * (size_t)N * M;
    const float *Om = v->omega + (size_t)l * M * N, *be = v->beta + (size_t)l * M;
    const float s = sqrtf(2.0f / (float)M);
    /* c_t forward, as ro_fwd computes it; then per block: features, the
     * read-outs u = P phi, and the gradients */
    float *cs = scratch, *blk = scratch + n; /* [n], then the block's buffers */
    float *z = blk, *phi = z + TB * Mz, *sn = phi + TB * Mz, *dphi = sn + TB * Mz;
    float *u = dphi + TB * Mz, *rhat = u + TB * (size_t)N, *drh = rhat + TB * (size_t)N;
    float *gy = drh + TB * (size_t)N;
    float inv[TB], dyu[TB];
    float carry = 0;
    for (size_t t = 0; t < n; t++) {
        if (v->fade == RK_FADE_MEAN) {
            carry = fade_step(carry, w + t * stride, N);
            cs[t] = carry < FADE_LOG_MIN ? 0.0f : expf(carry);
        } else {
            cs[t] = 1.0f;
        }
    }
    /* the fade's reverse sum needs the blocks from the last one back */
    size_t every = n / 4 ? n / 4 : 1;
    double acc = 0; /* sum over t' >= t of c_t' (dy_t' . P phi_t') */
    size_t nblk = (n + TB - 1) / TB;
    for (size_t bi = nblk; bi-- > 0;) {
        const size_t t0 = bi * TB, nb = n - t0 < TB ? n - t0 : TB;
        /* c only falls: a block whose first c is 0 and everything after it
         * add nothing (acc is still 0 there) */
        if (cs[t0] == 0.0f)
            continue;
        /* features of the block's tokens */
        for (size_t k = 0; k < nb; k++) {
            const float *rt = r + (t0 + k) * stride;
            double ss = 0;
            for (int j = 0; j < N; j++)
                ss += (double)rt[j] * rt[j];
            inv[k] = (float)(1.0 / sqrt(ss + RHAT_EPS));
            for (int j = 0; j < N; j++)
                rhat[k * N + j] = rt[j] * inv[k];
        }
        for (int mi = 0; mi < M; mi++) {
            const float *om = Om + (size_t)mi * N;
            for (size_t k = 0; k < nb; k++)
                z[k * Mz + mi] = be[mi] + dot16(om, rhat + k * N, N);
        }
        for (size_t k = 0; k < nb; k++) {
            cos_sin(z + k * Mz, phi + k * Mz, sn + k * Mz, M);
            for (int mi = 0; mi < M; mi++)
                phi[k * Mz + mi] *= s;
        }
        /* u = P phi per token; gy = c dy; dphi = P^T gy; dP += weight gy phi^T */
        memset(dphi, 0, nb * Mz * sizeof(float));
        for (size_t k = 0; k < nb; k++) {
            const float *dyt = dy + (t0 + k) * stride;
            for (int i = 0; i < N; i++)
                gy[k * N + i] = cs[t0 + k] * dyt[i];
        }
        for (int i = 0; i < N; i++) {
            const float *Pi = P + (size_t)i * M;
            float *dPi = dP + (size_t)i * M;
            for (size_t k = 0; k < nb; k++) {
                u[k * N + i] = dot16(Pi, phi + k * Mz, M);
                const float gi = gy[k * N + i], wi = g->weight * gi;
                const float *ph = phi + k * Mz;
                float *dp = dphi + k * Mz;
                for (int mi = 0; mi < M; mi++) {
                    dPi[mi] += wi * ph[mi];
                    dp[mi] += gi * Pi[mi];
                }
            }
        }
        /* the fade: dw_tau[j] += (1/N) sum_{t >= tau} c_t (dy_t . u_t) / mean w_tau */
        if (v->fade == RK_FADE_MEAN) {
            for (size_t k = 0; k < nb; k++) {
                double d = 0;
                for (int i = 0; i < N; i++)
                    d += (double)gy[k * N + i] * u[k * N + i];
                dyu[k] = (float)d; /* c_t (dy_t . u_t) */
            }
            for (size_t k = nb; k-- > 0;) {
                const size_t t = t0 + k;
                acc += dyu[k];
                const float *wt = w + t * stride;
                const float dm = (float)(acc / mean_decay(wt, N) / N);
                float *dwt = dw + t * stride;
                for (int j = 0; j < N; j++)
                    dwt[j] += dm;
            }
        }
        /* dz = -dphi s sin z; drhat = Omega^T dz */
        for (size_t k = 0; k < nb * Mz; k++)
            dphi[k] *= -s * sn[k];
        memset(drh, 0, nb * (size_t)N * sizeof(float));
        for (int mi = 0; mi < M; mi++) {
            const float *om = Om + (size_t)mi * N;
            for (size_t k = 0; k < nb; k++) {
                const float dz = dphi[k * Mz + mi];
                float *d = drh + k * N;
                for (int j = 0; j < N; j++)
                    d[j] += dz * om[j];
            }
        }
        /* rhat = r / nu: dr = (drhat - rhat (rhat . drhat)) / nu */
        for (size_t k = 0; k < nb; k++) {
            const float *rh = rhat + k * N, *dh = drh + k * N;
            double d = 0;
            for (int j = 0; j < N; j++)
                d += (double)rh[j] * dh[j];
            float *drt = dr + (t0 + k) * stride;
            for (int j = 0; j < N; j++)
                drt[j] += (dh[j] - rh[j] * (float)d) * inv[k];
        }
        /* DBP: feature vectors at t = 0, n/4, n/2, ... */
        for (size_t k = nb; g->samp && k-- > 0;)
            if ((t0 + k) % every == 0 && g->nsamp[lh] < g->samp_max) {
                float *dst = g->samp + (lh * (size_t)g->samp_max + (size_t)g->nsamp[lh]) * Mz;
                memcpy(dst, phi + k * Mz, Mz * sizeof(float));
                g->nsamp[lh]++;
            }
    }
}

/* --- the methods --------------------------------------------------------------- */

static bool is_dbp(const struct rk_tune_params *p) { return p->method == &rk_method_dbp; }

static size_t r_len(const struct rk_model *m, const struct rk_tune_params *p)
{
    return (size_t)rk_model_n_layer(m) * (size_t)p->kernel_m * (size_t)p->kernel_m;
}

static size_t k_len(const struct rk_model *m, const struct rk_tune_params *p)
{
    struct rk_kernel_layout kl;
    rk_kernel_layout(m, p->kernel_m, &kl);
    return kl.len + (is_dbp(p) ? r_len(m, p) : 0);
}

static uint64_t splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* uniform in (0, 1) */
static double unif(uint64_t *x) { return ((double)(splitmix(x) >> 11) + 0.5) / 9007199254740992.0; }

static void k_init(const struct rk_model *m, const struct rk_tune_params *p, const float *state,
                   float *params)
{
    struct rk_kernel_layout kl;
    rk_kernel_layout(m, p->kernel_m, &kl);
    size_t slen = rk_state_len(m);
    if (state)
        memcpy(params, state, slen * sizeof(float));
    else
        memset(params, 0, slen * sizeof(float));
    const int L = rk_model_n_layer(m), N = rk_model_head_size(m), M = p->kernel_m;
    if (p->init_kernel) { /* a kernel state's P, features and phases */
        memcpy(params + kl.P, p->init_kernel, (kl.len - kl.P) * sizeof(float));
        goto dbp;
    }
    memset(params + kl.P, 0, (kl.omega - kl.P) * sizeof(float));
    uint64_t rng = p->kernel_seed * 0xd1b54a32d192ed03ull + 0x6b657264; /* fixed offset */
    for (size_t i = 0; i < (size_t)L * M * N; i++) {
        double u1 = unif(&rng), u2 = unif(&rng);
        double gauss = sqrt(-2.0 * log(u1)) * cos(2.0 * 3.14159265358979323846 * u2);
        params[kl.omega + i] = (float)(gauss / p->kernel_sigma);
    }
    for (size_t i = 0; i < (size_t)L * M; i++)
        params[kl.beta + i] = (float)(2.0 * 3.14159265358979323846 * unif(&rng));
dbp:
    if (is_dbp(p)) {
        float *R = params + kl.len;
        memset(R, 0, r_len(m, p) * sizeof(float));
        for (int l = 0; l < L; l++)
            for (int i = 0; i < M; i++)
                R[((size_t)l * M + i) * M + i] = 1.0f;
    }
}

/* The state part as "standard" has it; the rest zero (extra->grad adds P's). */
static void k_grad(const struct rk_model *m, const struct rk_tune_params *p, const float *params,
                   const float *dstate, float *dparams)
{
    rk_std_grad_to_params(m, p, params, dstate, dparams);
    size_t slen = rk_state_len(m);
    memset(dparams + slen, 0, (k_len(m, p) - slen) * sizeof(float));
}

/* The standard spans, then P (or Ptilde). */
static size_t k_trainable(const struct rk_model *m, const struct rk_tune_params *p,
                          struct rk_span *spans, size_t cap)
{
    size_t n = rk_std_trainable(m, p, spans, cap);
    struct rk_kernel_layout kl;
    rk_kernel_layout(m, p->kernel_m, &kl);
    if (n < cap)
        spans[n] = (struct rk_span){kl.P, kl.omega - kl.P};
    return n + 1;
}

/* Peff [L][H][N][M] = Ptilde R_l for every head. */
static void dbp_effective(const struct rk_model *m, const struct rk_tune_params *p,
                          const float *params, float *Peff);
BODY void dbp_effective_body(const struct rk_model *m, const struct rk_tune_params *p,
                             const float *params, float *Peff)
{
    struct rk_kernel_layout kl;
    rk_kernel_layout(m, p->kernel_m, &kl);
    const size_t L = (size_t)rk_model_n_layer(m), H = (size_t)rk_model_n_head(m),
                 N = (size_t)rk_model_head_size(m), M = (size_t)p->kernel_m;
    const float *Pt = params + kl.P, *R = params + kl.len;
    memset(Peff, 0, L * H * N * M * sizeof(float));
    for (size_t l = 0; l < L; l++)
        for (size_t row = 0; row < H * N; row++) {
            const float *pt = Pt + (l * H * N + row) * M;
            float *pe = Peff + (l * H * N + row) * M;
            for (size_t k = 0; k < M; k++) {
                const float a = pt[k];
                if (a == 0.0f)
                    continue;
                const float *rk = R + (l * M + k) * M;
                for (size_t j = 0; j < M; j++)
                    pe[j] += a * rk[j];
            }
        }
}

static void k_to_adapter(const struct rk_model *m, const struct rk_tune_params *p,
                         const float *params, float *adapter, struct rk_state_meta *meta)
{
    struct rk_kernel_layout kl;
    rk_kernel_layout(m, p->kernel_m, &kl);
    memcpy(adapter, params, kl.len * sizeof(float));
    if (is_dbp(p))
        dbp_effective(m, p, params, adapter + kl.P);
    if (meta) {
        meta->kernel_m = p->kernel_m;
        meta->kernel_fade = p->kernel_fade;
    }
}

/* --- a run's part ------------------------------------------------------------- */

struct krun {
    const struct rk_model *m;
    const struct rk_tune_params *p;
    struct rk_kernel_layout kl;
    size_t nP; /* floats of P */
    bool dbp;
    struct rk_kernel_view view;
    struct rk_kernel_grad g;
    float *carry; /* [L*H], for validation */
    float *Peff;  /* dbp: Ptilde R */
    float *cov, *xs, *tmp; /* dbp: [M][M], [n][M], [M][M] */
};

static void kx_end(void *xv)
{
    struct krun *x = xv;
    if (!x)
        return;
    free(x->g.dP), free(x->g.samp), free(x->g.nsamp), free(x->carry), free(x->Peff);
    free(x->cov), free(x->xs), free(x->tmp);
    free(x);
}

static int kx_begin(const struct rk_model *m, const struct rk_tune_params *p, void **out)
{
    struct krun *x = calloc(1, sizeof *x);
    if (!x)
        return RK_ENOMEM;
    x->m = m;
    x->p = p;
    x->dbp = is_dbp(p);
    rk_kernel_layout(m, p->kernel_m, &x->kl);
    x->nP = x->kl.omega - x->kl.P;
    const size_t LH = (size_t)rk_model_n_layer(m) * (size_t)rk_model_n_head(m),
                 M = (size_t)p->kernel_m;
    x->g.dP = malloc(x->nP * sizeof(float));
    x->carry = calloc(LH, sizeof(float));
    bool ok = x->g.dP && x->carry;
    if (x->dbp) {
        x->g.samp_max = SAMPLES_PER_HEAD;
        x->g.samp = malloc(LH * SAMPLES_PER_HEAD * M * sizeof(float));
        x->g.nsamp = calloc(LH, sizeof(int));
        x->Peff = malloc(x->nP * sizeof(float));
        x->cov = malloc(M * M * sizeof(float));
        x->tmp = malloc(M * M * sizeof(float));
        x->xs = malloc((size_t)rk_model_n_head(m) * SAMPLES_PER_HEAD * M * sizeof(float));
        ok = ok && x->g.samp && x->g.nsamp && x->Peff && x->cov && x->tmp && x->xs;
    }
    if (!ok) {
        kx_end(x);
        return RK_ENOMEM;
    }
    *out = x;
    return RK_OK;
}

static void kx_bind(void *xv, const float *params, struct rk_readout *ro, void **grad)
{
    struct krun *x = xv;
    rk_kernel_view_of(x->m, x->p->kernel_m, x->p->kernel_fade, params, &x->view);
    if (x->dbp) {
        dbp_effective(x->m, x->p, params, x->Peff);
        x->view.P = x->Peff;
        memset(x->g.nsamp, 0, (size_t)x->view.L * x->view.H * sizeof(int));
    }
    memset(x->g.dP, 0, x->nP * sizeof(float));
    x->g.weight = 1.0f;
    ro->ops = &rk_kernel_readout;
    ro->data = &x->view;
    ro->carry = x->carry;
    *grad = &x->g;
}

static void kx_weight(void *xv, float w) { ((struct krun *)xv)->g.weight = w; }

BODY void kx_grad_body(void *xv, const float *params, float scale, float *dparams)
{
    struct krun *x = xv;
    float *d = dparams + x->kl.P;
    if (!x->dbp) {
        for (size_t i = 0; i < x->nP; i++)
            d[i] = x->g.dP[i] * scale;
        return;
    }
    /* dPtilde = dP R^T, row by row */
    const size_t L = (size_t)x->view.L, HN = (size_t)x->view.H * x->view.N,
                 M = (size_t)x->view.M;
    const float *R = params + x->kl.len;
    for (size_t l = 0; l < L; l++)
        for (size_t row = 0; row < HN; row++) {
            const float *dp = x->g.dP + (l * HN + row) * M;
            float *o = d + (l * HN + row) * M;
            for (size_t k = 0; k < M; k++)
                o[k] = scale * dot16(dp, R + (l * M + k) * M, (int)M);
        }
}

/* DBP: R <- R - eta (E[x x^T] - diag E[x^2]) R / mean E[x^2] per layer,
 * x = R phi over the step's sampled feature vectors of the layer's heads. */
BODY void kx_after_body(void *xv, float *params)
{
    struct krun *x = xv;
    if (!x->dbp || !(x->p->dbp_lr > 0))
        return;
    const int L = x->view.L, H = x->view.H, M = x->view.M;
    const size_t Mz = (size_t)M;
    for (int l = 0; l < L; l++) {
        float *R = params + x->kl.len + (size_t)l * Mz * Mz;
        size_t ns = 0;
        for (int h = 0; h < H; h++) {
            size_t lh = (size_t)l * H + h;
            for (int k = 0; k < x->g.nsamp[lh]; k++, ns++) {
                const float *phi = x->g.samp + (lh * SAMPLES_PER_HEAD + (size_t)k) * Mz;
                for (size_t i = 0; i < Mz; i++)
                    x->xs[ns * Mz + i] = dot16(R + i * Mz, phi, M);
            }
        }
        if (ns < 2)
            continue;
        memset(x->cov, 0, Mz * Mz * sizeof(float));
        for (size_t k = 0; k < ns; k++) {
            const float *xk = x->xs + k * Mz;
            for (size_t i = 0; i < Mz; i++) {
                float a = xk[i] / (float)ns;
                float *ci = x->cov + i * Mz;
                for (size_t j = 0; j < Mz; j++)
                    ci[j] += a * xk[j];
            }
        }
        double tr = 0;
        for (size_t i = 0; i < Mz; i++)
            tr += x->cov[i * Mz + i];
        if (!(tr > 0))
            continue;
        const float f = (float)(x->p->dbp_lr * (double)M / tr);
        for (size_t i = 0; i < Mz; i++)
            x->cov[i * Mz + i] = 0;
        /* tmp = cov R; R -= f tmp */
        memset(x->tmp, 0, Mz * Mz * sizeof(float));
        for (size_t i = 0; i < Mz; i++)
            for (size_t k = 0; k < Mz; k++) {
                const float a = x->cov[i * Mz + k];
                const float *rk = R + k * Mz;
                float *ti = x->tmp + i * Mz;
                for (size_t j = 0; j < Mz; j++)
                    ti[j] += a * rk[j];
            }
        for (size_t i = 0; i < Mz * Mz; i++)
            R[i] -= f * x->tmp[i];
    }
}

/* --- the two builds of the hot functions -------------------------------------- */

/* name_avx512 (x86-64) and name_plain, each the body of name inlined:
 * params is the parenthesised parameter list, args the call's arguments. */
#ifdef KERNEL_AVX512
#define BUILDS(name, params, args)                                                                \
    AVX512_BUILD static void name##_avx512 params { name##_body args; }                           \
    static void name##_plain params { name##_body args; }
#else
#define BUILDS(name, params, args) static void name##_plain params { name##_body args; }
#endif

#define RO_FWD_PARAMS                                                                             \
    (const void *data, int l, int h, size_t n, size_t stride, const float *r, const float *w,    \
     float *carry, float *y)
#define RO_BWD_PARAMS                                                                             \
    (const void *data, int l, int h, size_t n, size_t stride, const float *r, const float *w,    \
     const float *dy, float *dr, float *dw, void *grad, float *scratch)
#define EFFECTIVE_PARAMS                                                                          \
    (const struct rk_model *m, const struct rk_tune_params *p, const float *params, float *Peff)

BUILDS(ro_fwd, RO_FWD_PARAMS, (data, l, h, n, stride, r, w, carry, y))
BUILDS(ro_bwd, RO_BWD_PARAMS, (data, l, h, n, stride, r, w, dy, dr, dw, grad, scratch))
BUILDS(dbp_effective, EFFECTIVE_PARAMS, (m, p, params, Peff))
BUILDS(kx_grad, (void *xv, const float *params, float scale, float *dparams),
       (xv, params, scale, dparams))
BUILDS(kx_after, (void *xv, float *params), (xv, params))

struct hot_fns {
    void (*ro_fwd) RO_FWD_PARAMS;
    void (*ro_bwd) RO_BWD_PARAMS;
    void (*dbp_effective) EFFECTIVE_PARAMS;
    void (*kx_grad)(void *xv, const float *params, float scale, float *dparams);
    void (*kx_after)(void *xv, float *params);
};

static const struct hot_fns hot_plain = {ro_fwd_plain, ro_bwd_plain, dbp_effective_plain,
                                         kx_grad_plain, kx_after_plain};
#ifdef KERNEL_AVX512
static const struct hot_fns hot_avx512 = {ro_fwd_avx512, ro_bwd_avx512, dbp_effective_avx512,
                                          kx_grad_avx512, kx_after_avx512};
#endif

static atomic_bool force_portable;

void rk_kernel_force_portable(bool on) { atomic_store(&force_portable, on); }

/* The build this call runs. */
static const struct hot_fns *hot(void)
{
#ifdef KERNEL_AVX512
    if (!atomic_load_explicit(&force_portable, memory_order_relaxed) && rk_cpu_avx512())
        return &hot_avx512;
#endif
    return &hot_plain;
}

static void ro_fwd RO_FWD_PARAMS { hot()->ro_fwd(data, l, h, n, stride, r, w, carry, y); }

static void ro_bwd RO_BWD_PARAMS
{
    hot()->ro_bwd(data, l, h, n, stride, r, w, dy, dr, dw, grad, scratch);
}

static void dbp_effective EFFECTIVE_PARAMS { hot()->dbp_effective(m, p, params, Peff); }

static void kx_grad(void *xv, const float *params, float scale, float *dparams)
{
    hot()->kx_grad(xv, params, scale, dparams);
}

static void kx_after(void *xv, float *params) { hot()->kx_after(xv, params); }

const struct rk_readout_ops rk_kernel_readout = {
    .carry_len = ro_carry_len,
    .fwd = ro_fwd,
    .bwd = ro_bwd,
    .bwd_scratch = ro_bwd_scratch,
};

static const struct rk_tune_extra kernel_extra = {
    .begin = kx_begin,
    .end = kx_end,
    .bind = kx_bind,
    .weight = kx_weight,
    .grad = kx_grad,
    .after_update = kx_after,
};

/* Both entries: "standard" (its to_state: the state is the parameters'
 * first part) with the kernel memory's hooks; is_dbp tells them apart. */
#define KERNEL_HOOKS                                                                              \
    RK_METHOD_STANDARD_HOOKS, .params_len = k_len, .params_init = k_init,                         \
    .grad_to_params = k_grad, .trainable = k_trainable, .extra = &kernel_extra,                   \
    .to_adapter = k_to_adapter

RK_METHOD_OVERRIDES_BEGIN
const struct rk_tune_method rk_method_kernel = {
    KERNEL_HOOKS,
    .name = "kernel",
    .help = "Adam on the initial state and a kernel memory P [N][M] per head, read through "
            "random Fourier features of the receptance",
};

const struct rk_tune_method rk_method_dbp = {
    KERNEL_HOOKS,
    .name = "dbp",
    .help = "the kernel state with P = Ptilde R, R a decorrelating matrix per layer "
            "(decorrelated backpropagation)",
};
RK_METHOD_OVERRIDES_END

int rk_tune_export(const struct rk_model *m, const struct rk_tune_params *p, const float *params,
                   float **out, struct rk_state_meta *meta)
{
    const struct rk_tune_method *meth = rk_tune_params_method(p);
    snprintf(meta->method, sizeof meta->method, "%s", meth->name);
    meta->kernel_m = 0;
    meta->kernel_fade = 0;
    if (meth->to_adapter) {
        meta->kernel_m = p->kernel_m;
        meta->kernel_fade = p->kernel_fade;
    }
    size_t n = rk_adapter_len(m, meta);
    *out = malloc(n * sizeof(float));
    if (!*out)
        return RK_ENOMEM;
    if (meth->to_adapter)
        meth->to_adapter(m, p, params, *out, meta);
    else
        meth->to_state(m, p, params, *out);
    return RK_OK;
}

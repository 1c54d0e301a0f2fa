/*
 * kernels_vec.c - the element-wise kernels: the deterministic exponential
 * and its sum (softmax, log-sum-exp), LayerNorm, and the gates of the
 * time-mix (decay, in-context rate, value residual).
 *
 * Each has its plain C reference next to the AVX-512 version, chosen at run
 * time (rk__cpu(), or `ref`); the tests compare them (exp_sum_paths_agree
 * bit for bit, the rest through whole passes with rk_ctx_set_reference and
 * the portable runs under RWKVD_NO_AVX512).
 */
#include "core_int.h"

#include <math.h>
#include <string.h>

#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

#if defined(__x86_64__)
#include <immintrin.h>
#define RK_X86 1
#endif

#define DECAY_SCALE 0.6065306597126334f /* e^-0.5 */

/* --- deterministic exp ---------------------------------------------------- */

/*
 * e^x for x <= 0, relative error about 2e-7. x = k ln2 + r with |r| <= ln2/2
 * (Cody-Waite split of ln2; adding 1.5 * 2^23 rounds to the nearest
 * integer), e^r by its degree-7 Taylor polynomial, then an exact scaling by
 * 2^k. Inputs at or below -87 give 0, which only drops candidates e^-87 times
 * less likely than the best. The 4-lane version performs the same IEEE
 * operations per lane, so both give bit-identical results.
 */
#define EXP_LOG2E 1.44269504088896341f
#define EXP_LN2_HI 0.693145751953125f /* exact in 16 bits */
#define EXP_LN2_LO 1.42860682030941723e-6f
#define EXP_ROUND 12582912.0f
#define EXP_MIN -87.0f

#define EXP_POLY(p, r)                                                                             \
    do {                                                                                           \
        p = (1.0f / 5040.0f) * r + 1.0f / 720.0f;                                                  \
        p = p * r + 1.0f / 120.0f;                                                                 \
        p = p * r + 1.0f / 24.0f;                                                                  \
        p = p * r + 1.0f / 6.0f;                                                                   \
        p = p * r + 0.5f;                                                                          \
        p = p * r + 1.0f;                                                                          \
        p = p * r + 1.0f;                                                                          \
    } while (0)

static inline float exp_det(float x)
{
    float xc = x > EXP_MIN ? x : EXP_MIN;
    float kf = (xc * EXP_LOG2E + EXP_ROUND) - EXP_ROUND;
    float r = (xc - kf * EXP_LN2_HI) - kf * EXP_LN2_LO;
    float p;
    EXP_POLY(p, r);
    int32_t k = (int32_t)kf; /* -126 <= k <= 0 */
    union {
        uint32_t u;
        float f;
    } scale = {.u = (uint32_t)(k + 127) << 23};
    float y = p * scale.f;
    return x > EXP_MIN ? y : 0.0f;
}

/* GCC/clang vector extensions: plain SSE2 on x86-64, NEON on arm64. */
typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));
typedef double v2d __attribute__((vector_size(16)));

static inline v4f exp_det4(v4f x)
{
    const v4f min = {EXP_MIN, EXP_MIN, EXP_MIN, EXP_MIN};
    v4i keep = x > min;
    v4f xc = (v4f)(((v4i)x & keep) | ((v4i)min & ~keep));
    v4f kf = (xc * EXP_LOG2E + EXP_ROUND) - EXP_ROUND;
    v4f r = (xc - kf * EXP_LN2_HI) - kf * EXP_LN2_LO;
    v4f p;
    EXP_POLY(p, r);
    v4i k = __builtin_convertvector(kf, v4i);
    v4f scale = (v4f)((k + 127) << 23);
    v4f y = p * scale;
    return (v4f)((v4i)y & keep);
}

/* The four-lane part of rk__exp_sum from element i on, continuing the lane
 * sums in lane[4] (lane j holds the elements with index % 4 == j). */
static double exp_sum_from(float *out, const float *v, size_t i, size_t n, float m,
                           double lane[4])
{
    v2d lo = {lane[0], lane[1]}, hi = {lane[2], lane[3]};
    for (; i + 4 <= n; i += 4) {
        v4f x;
        memcpy(&x, v + i, sizeof x);
        x = exp_det4(x - m);
        if (out)
            memcpy(out + i, &x, sizeof x);
        lo += (v2d){x[0], x[1]};
        hi += (v2d){x[2], x[3]};
    }
    lane[0] = lo[0], lane[1] = lo[1], lane[2] = hi[0], lane[3] = hi[1];
    for (; i < n; i++) {
        float e = exp_det(v[i] - m);
        if (out)
            out[i] = e;
        lane[i & 3] += e;
    }
    return (lane[0] + lane[1]) + (lane[2] + lane[3]);
}

double rk__exp_sum_portable(float *out, const float *v, size_t n, float m)
{
    double lane[4] = {0, 0, 0, 0};
    return exp_sum_from(out, v, 0, n, m, lane);
}

#ifdef RK_X86
/* 16 lanes of exp_det4: the same IEEE operations in the same order (no FMA:
 * separate multiplies and adds), so every lane gets the same bits. */
__attribute__((target("avx512f"))) static inline __m512 exp_det16(__m512 x)
{
    const __m512 min = _mm512_set1_ps(EXP_MIN), rnd = _mm512_set1_ps(EXP_ROUND);
    __mmask16 keep = _mm512_cmp_ps_mask(x, min, _CMP_GT_OQ);
    __m512 xc = _mm512_mask_blend_ps(keep, min, x);
    __m512 kf = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(xc, _mm512_set1_ps(EXP_LOG2E)), rnd),
                              rnd);
    __m512 r = _mm512_sub_ps(_mm512_sub_ps(xc, _mm512_mul_ps(kf, _mm512_set1_ps(EXP_LN2_HI))),
                             _mm512_mul_ps(kf, _mm512_set1_ps(EXP_LN2_LO)));
    __m512 p = _mm512_add_ps(_mm512_mul_ps(_mm512_set1_ps(1.0f / 5040.0f), r),
                             _mm512_set1_ps(1.0f / 720.0f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.0f / 120.0f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.0f / 24.0f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.0f / 6.0f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(0.5f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.0f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.0f));
    __m512i k = _mm512_cvttps_epi32(kf);
    __m512 scale = _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_add_epi32(k, _mm512_set1_epi32(127)), 23));
    return _mm512_maskz_mov_ps(keep, _mm512_mul_ps(p, scale));
}

/* Sixteen elements per step; each quarter of the vector is added to the four
 * double lanes in turn, which is the order of the four-lane loop. */
__attribute__((target("avx512f"))) static double exp_sum_avx512(float *out, const float *v,
                                                                  size_t n, float m)
{
    __m256d acc = _mm256_setzero_pd();
    const __m512 vm = _mm512_set1_ps(m);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 e = exp_det16(_mm512_sub_ps(_mm512_loadu_ps(v + i), vm));
        if (out)
            _mm512_storeu_ps(out + i, e);
        acc = _mm256_add_pd(acc, _mm256_cvtps_pd(_mm512_extractf32x4_ps(e, 0)));
        acc = _mm256_add_pd(acc, _mm256_cvtps_pd(_mm512_extractf32x4_ps(e, 1)));
        acc = _mm256_add_pd(acc, _mm256_cvtps_pd(_mm512_extractf32x4_ps(e, 2)));
        acc = _mm256_add_pd(acc, _mm256_cvtps_pd(_mm512_extractf32x4_ps(e, 3)));
    }
    double lane[4];
    _mm256_storeu_pd(lane, acc);
    return exp_sum_from(out, v, i, n, m, lane);
}
#endif

/* The sum of exp(v[i] - m) for i < n (m >= every v[i]; NaN counts as
 * zero), taken in four lanes (lane j holds the elements i with i % 4 == j)
 * in double. With `out`, out[i] receives each term (out may be v). The
 * AVX-512 path gives the same bits as the portable one. */
double rk__exp_sum(float *out, const float *v, size_t n, float m)
{
#ifdef RK_X86
    if (rk__cpu()->avx512)
        return exp_sum_avx512(out, v, n, m);
#endif
    return rk__exp_sum_portable(out, v, n, m);
}

/* --- LayerNorm ---------------------------------------------------------- */

#ifdef RK_X86
/* The same LayerNorm, mean and variance summed in double in vector lanes
 * (eight per register, two registers per 16 values), the output with the
 * reference's float operations in the same order. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c"))) static void
layernorm_avx512(float *out, const float *x, const float *w, const float *b, int n, float eps)
{
    __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
        s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1)));
    }
    double mean = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
    for (int k = i; k < n; k++)
        mean += x[k];
    mean /= n;
    __m512d m = _mm512_set1_pd(mean);
    s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
    for (i = 0; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        __m512d d0 = _mm512_sub_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(v)), m);
        __m512d d1 = _mm512_sub_pd(_mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1)), m);
        s0 = _mm512_fmadd_pd(d0, d0, s0);
        s1 = _mm512_fmadd_pd(d1, d1, s1);
    }
    double var = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
    for (int k = i; k < n; k++)
        var += (x[k] - mean) * (x[k] - mean);
    var /= n;
    float inv = (float)(1.0 / sqrt(var + eps)), mf = (float)mean;
    __m512 vi = _mm512_set1_ps(inv), vm = _mm512_set1_ps(mf);
    for (i = 0; i + 16 <= n; i += 16) {
        __m512 o = _mm512_mul_ps(_mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm), vi),
                                 _mm512_loadu_ps(w + i));
        _mm512_storeu_ps(out + i, _mm512_add_ps(o, _mm512_loadu_ps(b + i)));
    }
    for (; i < n; i++)
        out[i] = (x[i] - mf) * inv * w[i] + b[i];
}
#endif

void rk__layernorm(bool ref, float *out, const float *x, const float *w, const float *b, int n,
                   float eps)
{
#ifdef RK_X86
    if (!ref && rk__cpu()->avx512) {
        layernorm_avx512(out, x, w, b, n, eps);
        return;
    }
#endif
    double mean = 0, var = 0;
    for (int i = 0; i < n; i++)
        mean += x[i];
    mean /= n;
    for (int i = 0; i < n; i++) {
        double d = x[i] - mean;
        var += d * d;
    }
    var /= n;
    float inv = (float)(1.0 / sqrt(var + eps));
    float mf = (float)mean;
    for (int i = 0; i < n; i++)
        out[i] = (x[i] - mf) * inv * w[i] + b[i];
}

/* --- time-mix gates -------------------------------------------------------- */

static inline float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

#ifdef RK_X86
#define AVX512F __attribute__((target("avx512f,fma")))
/* e^x to about 1 ulp: x = n ln2 + r with |r| <= ln2/2, a degree-7 Taylor
 * polynomial for e^r (truncation error < 1e-8), then a scale by 2^n. NaN
 * stays NaN; large negative x gives 0, large positive x +inf. */
AVX512F static inline __m512 exp_avx512(__m512 x)
{
    x = _mm512_max_ps(_mm512_set1_ps(-104.0f), _mm512_min_ps(_mm512_set1_ps(89.0f), x));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

AVX512F static inline __m512 sigmoid_avx512(__m512 x)
{
    __m512 one = _mm512_set1_ps(1.0f);
    return _mm512_div_ps(one, _mm512_add_ps(one, exp_avx512(_mm512_sub_ps(_mm512_setzero_ps(), x))));
}

/* rk__decay_gates, 16 channels at a time (the same arithmetic as the
 * scalar loop, with exp_avx512). */
AVX512F static void gates_avx512(float *w, float *a, const float *w0, const float *a0, int C)
{
    for (int ch = 0; ch < C; ch += 16) {
        __mmask16 m = C - ch >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (C - ch)) - 1);
        __m512 zw = _mm512_add_ps(_mm512_maskz_loadu_ps(m, w0 + ch), _mm512_maskz_loadu_ps(m, w + ch));
        __m512 za = _mm512_add_ps(_mm512_maskz_loadu_ps(m, a0 + ch), _mm512_maskz_loadu_ps(m, a + ch));
        __m512 sw = _mm512_mul_ps(_mm512_set1_ps(-DECAY_SCALE), sigmoid_avx512(zw));
        _mm512_mask_storeu_ps(w + ch, m, exp_avx512(sw));
        _mm512_mask_storeu_ps(a + ch, m, sigmoid_avx512(za));
    }
}

/* v += (v_first - v) sigmoid(v0 + nu_raw), 16 channels at a time */
AVX512F static void vres_avx512(float *v, const float *vf, const float *v0, const float *nu, int C)
{
    for (int ch = 0; ch < C; ch += 16) {
        __mmask16 m = C - ch >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (C - ch)) - 1);
        __m512 g = sigmoid_avx512(
            _mm512_add_ps(_mm512_maskz_loadu_ps(m, v0 + ch), _mm512_maskz_loadu_ps(m, nu + ch)));
        __m512 vv = _mm512_maskz_loadu_ps(m, v + ch);
        vv = _mm512_fmadd_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, vf + ch), vv), g, vv);
        _mm512_mask_storeu_ps(v + ch, m, vv);
    }
}
#endif

void rk__decay_gates(bool ref, float *w, float *a, const float *w0, const float *a0, int C)
{
#ifdef RK_X86
    if (!ref && rk__cpu()->avx512) {
        gates_avx512(w, a, w0, a0, C);
        return;
    }
#endif
    for (int ch = 0; ch < C; ch++) {
        w[ch] = expf(-DECAY_SCALE * sigmoidf(w0[ch] + w[ch]));
        a[ch] = sigmoidf(a0[ch] + a[ch]);
    }
}

void rk__value_residual(bool ref, float *v, const float *v_first, const float *v0,
                        const float *nu_raw, int C)
{
#ifdef RK_X86
    if (!ref && rk__cpu()->avx512) {
        vres_avx512(v, v_first, v0, nu_raw, C);
        return;
    }
#endif
    for (int ch = 0; ch < C; ch++) {
        float nu = sigmoidf(v0[ch] + nu_raw[ch]);
        v[ch] += (v_first[ch] - v[ch]) * nu;
    }
}

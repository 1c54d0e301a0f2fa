/*
 * kernels_wkv.c - the WKV recurrence of RWKV-7 (spec 2.2 step 11 and 3.1),
 * one head at a time: the step forward, a run of tokens, the head's output
 * (GroupNorm, bonus, gate) and the step backward.
 *
 * Every kernel has its plain reference loop (`ref`, or a CPU without
 * AVX-512: rk__cpu()) next to the AVX-512 version, which keeps the state in
 * registers eight rows at a time. The tests compare the two
 * (test_wkv_head, test_wkv_bwd_paths, and whole passes with
 * rk_ctx_set_reference). One AVX-512 step serves every path (token, batch,
 * prefill, backward), so all of them give the same bits.
 *
 * Orientation: S[i][j], i = value channel, j = key channel, N = 64.
 */
#include "core_int.h"

#include <math.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define RK_X86 1
#endif

#define N RK_HEAD_SIZE
#define WKV_PF_ROWS 2 /* tokens ahead that rk__wkv_seq fetches (1 to 8: same speed) */

/* --- reference ------------------------------------------------------------- */

/* One head, one token: sa = S a; S = S diag(w) + sa b^T + v k^T; y = S r. */
static void wkv_head_ref(float *S, const float *r, const float *w, const float *k, const float *v,
                         const float *a, const float *b, float *y, float *sa_out)
{
    for (int i = 0; i < N; i++) {
        float *Si = S + i * N;
        float sa = 0.0f;
        for (int j = 0; j < N; j++)
            sa += Si[j] * a[j];
        if (sa_out)
            sa_out[i] = sa;
        float vi = v[i], yi = 0.0f;
        for (int j = 0; j < N; j++) {
            float s = Si[j] * w[j] + sa * b[j] + vi * k[j];
            Si[j] = s;
            yi += s * r[j];
        }
        y[i] = yi;
    }
}


/* rk__wkv_seq, plain: a = -kk, b = kk * alpha, then the step. */
static void wkv_seq_ref(float *S, size_t n, size_t stride, const float *r, const float *w,
                        const float *k, const float *v, const float *kk, const float *alpha,
                        float *y)
{
    float avec[N], bvec[N];
    for (size_t t = 0; t < n; t++) {
        size_t o = t * stride;
        for (int i = 0; i < N; i++) {
            avec[i] = -kk[o + i];
            bvec[i] = kk[o + i] * alpha[o + i];
        }
        wkv_head_ref(S, r + o, w + o, k + o, v + o, avec, bvec, y + o, NULL);
    }
}

/* GroupNorm of y over the head, the bonus (r . k . r_k) v and the gate. */
static void wkv_out_ref(float *out, const float *y, const float *r, const float *k,
                        const float *v, const float *g, const float *r_k, const float *ln_w,
                        const float *ln_b, float eps)
{
    float mean = 0.0f, var = 0.0f, bonus = 0.0f;
    for (int i = 0; i < N; i++)
        mean += y[i];
    mean /= N;
    for (int i = 0; i < N; i++) {
        float d = y[i] - mean;
        var += d * d;
    }
    var /= N;
    float inv = 1.0f / sqrtf(var + eps);
    for (int i = 0; i < N; i++)
        bonus += r[i] * k[i] * r_k[i];
    for (int i = 0; i < N; i++) {
        float on = (y[i] - mean) * inv * ln_w[i] + ln_b[i];
        out[i] = (on + bonus * v[i]) * g[i];
    }
}

/* rk__wkv_head_bwd, plain: one row i at a time. */
static void wkv_bwd_ref(int n, float *G, const float *Sold, const float *Snew, const float *dy,
                        const float *sa, const float *r, const float *w, const float *k,
                        const float *v, const float *aa, const float *bb, float *dv, float *cdr,
                        float *cdw, float *cdb, float *cdk, float *cda)
{
    for (int i = 0; i < n; i++) {
        float *Gr = G + (size_t)i * n;
        const float *So = Sold + (size_t)i * n, *Sn = Snew + (size_t)i * n;
        const float dyi = dy[i], sai = sa[i], vi = v[i];
        float dsa = 0, dvi = 0;
        for (int j = 0; j < n; j++) {
            float gij = Gr[j] + dyi * r[j]; /* full dL/dS_t */
            Gr[j] = gij;
            cdr[j] += Sn[j] * dyi;
            cdw[j] += gij * So[j];
            cdb[j] += gij * sai;
            cdk[j] += gij * vi;
            dsa += gij * bb[j];
            dvi += gij * k[j];
        }
        for (int j = 0; j < n; j++) {
            cda[j] += So[j] * dsa;
            Gr[j] = Gr[j] * w[j] + dsa * aa[j]; /* dL/dS_{t-1} */
        }
        dv[i] += dvi;
    }
}

/* --- AVX-512 --------------------------------------------------------------- */

#ifdef RK_X86
#define WKV_AVX512 __attribute__((target("avx512f,avx512dq,fma")))
/* Eight vectors in; lane i (i < 8) of the result is the sum of the lanes of
 * p[i]. Pairs fold through unpacks, then 128-bit blocks through shuffles:
 * 24 instructions for eight sums, where _mm512_reduce_add_ps costs about
 * eight per vector, each a chain of dependent steps. */
WKV_AVX512 static inline __m512 sum8_lanes(const __m512 p[8])
{
    __m512 q[4], r[2];
#pragma GCC unroll 4
    for (int i = 0; i < 4; i++) /* block L: p2i and p2i+1, two partials each */
        q[i] = _mm512_add_ps(_mm512_unpacklo_ps(p[2 * i], p[2 * i + 1]),
                             _mm512_unpackhi_ps(p[2 * i], p[2 * i + 1]));
#pragma GCC unroll 2
    for (int i = 0; i < 2; i++) { /* block L: rows 4i .. 4i+3, one partial each */
        __m512d c = _mm512_castps_pd(q[2 * i]), d = _mm512_castps_pd(q[2 * i + 1]);
        r[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(c, d)),
                             _mm512_castpd_ps(_mm512_unpackhi_pd(c, d)));
    }
    /* blocks: rows 0-3 (L0+L1), rows 0-3 (L2+L3), rows 4-7 (L0+L1), (L2+L3) */
    __m512 s = _mm512_add_ps(_mm512_shuffle_f32x4(r[0], r[1], 0x88),
                             _mm512_shuffle_f32x4(r[0], r[1], 0xDD));
    /* block 0: rows 0-3, block 1: rows 4-7 */
    return _mm512_add_ps(_mm512_shuffle_f32x4(s, s, 0x08), _mm512_shuffle_f32x4(s, s, 0x0D));
}

/* The step of wkv_head_ref, eight rows of S at a time, with a, b, w, k and
 * r held in registers: each row's products with a (then with r) are summed
 * over its four vectors, and the eight rows' lane sums are finished together
 * by sum8_lanes. One function serves every path (token, batch, prefill,
 * backward), so all of them give the same bits. */
WKV_AVX512 static void wkv_head_avx512(float *S, const float *r, const float *w, const float *k,
                                       const float *v, const float *a, const float *b, float *y,
                                       float *sa_out)
{
    __m512 A[4], W[4], B[4], K[4], R[4];
#pragma GCC unroll 4
    for (int q = 0; q < 4; q++) {
        A[q] = _mm512_loadu_ps(a + 16 * q);
        W[q] = _mm512_loadu_ps(w + 16 * q);
        B[q] = _mm512_loadu_ps(b + 16 * q);
        K[q] = _mm512_loadu_ps(k + 16 * q);
        R[q] = _mm512_loadu_ps(r + 16 * q);
    }
    for (int i0 = 0; i0 < N; i0 += 8) {
        float *S0 = S + (size_t)i0 * N;
        __m512 p[8];
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) {
            const float *Si = S0 + (size_t)i * N;
            __m512 t = _mm512_mul_ps(_mm512_loadu_ps(Si), A[0]);
            t = _mm512_fmadd_ps(_mm512_loadu_ps(Si + 16), A[1], t);
            t = _mm512_fmadd_ps(_mm512_loadu_ps(Si + 32), A[2], t);
            p[i] = _mm512_fmadd_ps(_mm512_loadu_ps(Si + 48), A[3], t);
        }
        __m512 sa = sum8_lanes(p);
        if (sa_out)
            _mm256_storeu_ps(sa_out + i0, _mm512_castps512_ps256(sa));
        __m512 vv = _mm512_castps256_ps512(_mm256_loadu_ps(v + i0));
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) {
            float *Si = S0 + (size_t)i * N;
            __m512i ix = _mm512_set1_epi32(i);
            __m512 sai = _mm512_permutexvar_ps(ix, sa), vi = _mm512_permutexvar_ps(ix, vv);
            __m512 o = _mm512_setzero_ps();
#pragma GCC unroll 4
            for (int q = 0; q < 4; q++) {
                __m512 s = _mm512_mul_ps(_mm512_loadu_ps(Si + 16 * q), W[q]);
                s = _mm512_fmadd_ps(sai, B[q], s);
                s = _mm512_fmadd_ps(vi, K[q], s);
                _mm512_storeu_ps(Si + 16 * q, s);
                o = q ? _mm512_fmadd_ps(s, R[q], o) : _mm512_mul_ps(s, R[0]);
            }
            p[i] = o;
        }
        _mm256_storeu_ps(y + i0, _mm512_castps512_ps256(sum8_lanes(p)));
    }
}

/* The WKV vectors a = -kk and b = kk * alpha of one head and token. */
WKV_AVX512 static void wkv_ab_avx512(float *avec, float *bvec, const float *kk, const float *a)
{
    for (int q = 0; q < 4; q++) {
        __m512 x = _mm512_loadu_ps(kk + 16 * q);
        _mm512_storeu_ps(avec + 16 * q, _mm512_sub_ps(_mm512_setzero_ps(), x));
        _mm512_storeu_ps(bvec + 16 * q, _mm512_mul_ps(x, _mm512_loadu_ps(a + 16 * q)));
    }
}

/* rk__wkv_seq with the step above; the vectors of a token WKV_PF_ROWS ahead
 * are fetched while this one runs (tokens lie `stride` floats apart). */
WKV_AVX512 static void wkv_seq_avx512(float *S, size_t n, size_t stride, const float *r,
                                      const float *w, const float *k, const float *v,
                                      const float *kk, const float *alpha, float *y)
{
    float avec[N], bvec[N];
    for (size_t t = 0; t < n; t++) {
        size_t o = t * stride;
        if (t + WKV_PF_ROWS < n) {
            size_t o2 = o + WKV_PF_ROWS * stride;
            const float *rows[] = {r, w, k, v, kk, alpha};
            for (int q = 0; q < 6; q++)
                for (int l = 0; l < N; l += 16)
                    _mm_prefetch((const char *)(rows[q] + o2 + l), _MM_HINT_T0);
        }
        wkv_ab_avx512(avec, bvec, kk + o, alpha + o);
        wkv_head_avx512(S, r + o, w + o, k + o, v + o, avec, bvec, y + o, NULL);
    }
}

/* wkv_out_ref with the head's 64 values in four vectors. */
WKV_AVX512 static void wkv_out_avx512(float *out, const float *y, const float *r, const float *k,
                                      const float *v, const float *g, const float *r_k,
                                      const float *ln_w, const float *ln_b, float eps)
{
    __m512 Y[4], sum = _mm512_setzero_ps(), bon = _mm512_setzero_ps();
    for (int q = 0; q < 4; q++) {
        Y[q] = _mm512_loadu_ps(y + 16 * q);
        sum = _mm512_add_ps(sum, Y[q]);
        __m512 rk = _mm512_mul_ps(_mm512_loadu_ps(r + 16 * q), _mm512_loadu_ps(k + 16 * q));
        bon = _mm512_fmadd_ps(rk, _mm512_loadu_ps(r_k + 16 * q), bon);
    }
    __m512 mean = _mm512_set1_ps(_mm512_reduce_add_ps(sum) / N), dd = _mm512_setzero_ps();
    for (int q = 0; q < 4; q++) {
        Y[q] = _mm512_sub_ps(Y[q], mean);
        dd = _mm512_fmadd_ps(Y[q], Y[q], dd);
    }
    __m512 inv = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(dd) / N + eps));
    __m512 bonus = _mm512_set1_ps(_mm512_reduce_add_ps(bon));
    for (int q = 0; q < 4; q++) {
        __m512 on = _mm512_fmadd_ps(_mm512_mul_ps(Y[q], inv), _mm512_loadu_ps(ln_w + 16 * q),
                                    _mm512_loadu_ps(ln_b + 16 * q));
        on = _mm512_fmadd_ps(bonus, _mm512_loadu_ps(v + 16 * q), on);
        _mm512_storeu_ps(out + 16 * q, _mm512_mul_ps(on, _mm512_loadu_ps(g + 16 * q)));
    }
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

/* wkv_bwd_ref for N = 64, row by row with wkv_bwd_row_avx512. */
__attribute__((target("avx512f,fma"))) static void
wkv_bwd_avx512(float *G, const float *Sold, const float *Snew, const float *dy, const float *sa,
               const float *r, const float *w, const float *k, const float *v, const float *aa,
               const float *bb, float *dv, float *cdr, float *cdw, float *cdb, float *cdk,
               float *cda)
{
    for (int i = 0; i < N; i++)
        dv[i] += wkv_bwd_row_avx512(G + (size_t)i * N, Sold + (size_t)i * N,
                                    Snew + (size_t)i * N, dy[i], sa[i], v[i], r, w, k, aa, bb,
                                    cdr, cdw, cdb, cdk, cda);
}
#endif

/* --- dispatch -------------------------------------------------------------- */

static bool fast(bool ref)
{
#ifdef RK_X86
    return !ref && rk__cpu()->avx512;
#else
    (void)ref;
    return false;
#endif
}

void rk__wkv_head(bool ref, float *S, const float *r, const float *w, const float *k,
                  const float *v, const float *a, const float *b, float *y, float *sa)
{
#ifdef RK_X86
    if (fast(ref)) {
        wkv_head_avx512(S, r, w, k, v, a, b, y, sa);
        return;
    }
#endif
    wkv_head_ref(S, r, w, k, v, a, b, y, sa);
}

void rk__wkv_seq(bool ref, float *S, size_t n, size_t stride, const float *r, const float *w,
                 const float *k, const float *v, const float *kk, const float *alpha, float *y)
{
#ifdef RK_X86
    if (fast(ref)) {
        wkv_seq_avx512(S, n, stride, r, w, k, v, kk, alpha, y);
        return;
    }
#endif
    wkv_seq_ref(S, n, stride, r, w, k, v, kk, alpha, y);
}

void rk__wkv_out(bool ref, float *out, const float *y, const float *r, const float *k,
                 const float *v, const float *g, const float *r_k, const float *ln_w,
                 const float *ln_b, float eps)
{
#ifdef RK_X86
    if (fast(ref)) {
        wkv_out_avx512(out, y, r, k, v, g, r_k, ln_w, ln_b, eps);
        return;
    }
#endif
    wkv_out_ref(out, y, r, k, v, g, r_k, ln_w, ln_b, eps);
}

void rk__wkv_head_bwd(bool ref, int n, float *G, const float *Sold, const float *Snew,
                      const float *dy, const float *sa, const float *r, const float *w,
                      const float *k, const float *v, const float *aa, const float *bb, float *dv,
                      float *cdr, float *cdw, float *cdb, float *cdk, float *cda)
{
#ifdef RK_X86
    if (n == N && fast(ref)) {
        wkv_bwd_avx512(G, Sold, Snew, dy, sa, r, w, k, v, aa, bb, dv, cdr, cdw, cdb, cdk, cda);
        return;
    }
#endif
    wkv_bwd_ref(n, G, Sold, Snew, dy, sa, r, w, k, v, aa, bb, dv, cdr, cdw, cdb, cdk, cda);
}

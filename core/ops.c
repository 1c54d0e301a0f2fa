/*
 * ops.c - the matrix kernels: Y[n][rows] = X[n][cols] * W^T for weights held
 * in f32, f16 or bf16, with fp32 accumulation. This is the only file that calls
 * cblas_*.
 *
 * The paths, all computing the same thing:
 *   reference  plain scalar loops, single thread (the numerical yardstick);
 *   panel      weights repacked at load into panels of 16 rows
 *              (struct rk_weight.panel; only while AVX-512 runs): any number
 *              of rows of X, from one decode token to a prefill chunk, in
 *              register tiles of 3 panels x 8 rows with the weights widened
 *              in registers; whole panels split across the pool;
 *   dot        row-major weights, few rows of X: each weight row is read once
 *              and dotted with every row of X; AVX-512 when the CPU has it
 *              (runtime check), portable C otherwise;
 *   tiled      row-major weights, up to 48 rows of X (AVX-512): 4x4 tiles;
 *   gemm       row-major weights, many rows of X: each thread converts a
 *              block of W rows to fp32 (kept in its L2 cache) and calls
 *              single-threaded OpenBLAS sgemm on it.
 *
 * Thread counts never change the bits. Each product is cut into blocks whose
 * size follows the shape and the path only (split_blocks), and a thread
 * takes a run of whole blocks. Our own kernels give every output the same
 * operations in any block. OpenBLAS does not: on x86 an element of C can get
 * other bits when the call's N or the element's column inside the call
 * changes (its AVX2 and AVX-512 kernels treat edge columns differently, and
 * the SkylakeX build takes a small-matrix kernel when M*N*K is small). So
 * every sgemm call here covers one whole block, the same call whatever the
 * number of threads (issue 13: splitting N by thread count broke this on a
 * Zen 4, where OpenBLAS 0.3.21 runs its Haswell kernels).
 */
/* The register-blocked kernels below rely on full unrolling of their small
 * constant-trip loops so that accumulators stay in registers. */
#pragma GCC optimize("O3")

#include "core_int.h"

#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define RK_X86 1
#endif

/* Rows of X up to which the dot path is used (the tiled path's limit is
 * rk__cpu()->tiled_rows, 48 unless RWKVD_TILED_ROWS_MAX says otherwise);
 * measured in BENCHMARKS.md. */
#define DOT_ROWS_MAX 3
/* Weight elements below which a matmul runs on the calling thread only. */
#define PAR_MIN_ELEMS (1 << 16)
/* Bytes of fp32 weight rows converted per gemm block at most: sgemm packs
 * the activations again for every block, so few, large blocks win; measured
 * on 0.1B prefill (512 tokens), 4 MiB beat 1 MiB by 8-10 % (8 MiB: no
 * further gain). Each compute thread keeps one such buffer. */
#define GEMM_BLOCK_BYTES (4 * 1024 * 1024)
/* The sgemm products are cut into about SPLIT_BLOCKS blocks (an even share
 * for 1, 2, 3, 4, 6 and 12 threads) of at least SPLIT_MIN rows or columns:
 * below 128 an sgemm call on 512 x 768 inputs loses 5-10 % to packing, from
 * 128 to 3072 it is flat (SkylakeX and Haswell kernels, BENCHMARKS.md). */
#define SPLIT_BLOCKS 12
#define SPLIT_MIN 128

extern void openblas_set_num_threads(int);

/* Whether the AVX-512 kernels run (cpu.c decides, once per process). */
static inline bool have_avx512(void) { return rk__cpu()->avx512; }

void rk__weight_row(const struct rk_weight *W, int r, float *out)
{
    size_t cols = (size_t)W->cols;
    /* a row-major row is contiguous (the embedding lookup of every token) */
    size_t base = W->panel ? 0 : (size_t)r * cols;
    switch (W->dtype) {
    case RK_DTYPE_F32: {
        const float *p = (const float *)W->data + base;
        for (size_t i = 0; i < cols; i++)
            out[i] = W->panel ? p[rk__weight_index(W, (size_t)r, i)] : p[i];
        break;
    }
    case RK_DTYPE_BF16: {
        const uint16_t *p = (const uint16_t *)W->data + base;
        for (size_t i = 0; i < cols; i++)
            out[i] = rk__bf16_to_f32(W->panel ? p[rk__weight_index(W, (size_t)r, i)] : p[i]);
        break;
    }
    case RK_DTYPE_F16: {
        const uint16_t *p = (const uint16_t *)W->data + base;
        for (size_t i = 0; i < cols; i++)
            out[i] = rk__f16_to_f32(W->panel ? p[rk__weight_index(W, (size_t)r, i)] : p[i]);
        break;
    }
    case RK_DTYPE_Q8:
        rk__q8_dequant(out, W, r, 0, W->cols);
        break;
    default:
        RK_ASSERT(!"bad weight dtype");
    }
}

/* Element idx (row-major numbering) of W. */
static inline float weight_at(const struct rk_weight *W, size_t idx)
{
    if (W->panel)
        idx = rk__weight_index(W, idx / (size_t)W->cols, idx % (size_t)W->cols);
    switch (W->dtype) {
    case RK_DTYPE_Q8: return rk__q8_at(W, idx);
    case RK_DTYPE_F32: return ((const float *)W->data)[idx];
    case RK_DTYPE_BF16: return rk__bf16_to_f32(((const uint16_t *)W->data)[idx]);
    default: return rk__f16_to_f32(((const uint16_t *)W->data)[idx]);
    }
}

bool rk__weight_wants_panels(const struct rk_weight *W)
{
    return (W->dtype == RK_DTYPE_F32 || W->dtype == RK_DTYPE_F16 ||
            (W->dtype == RK_DTYPE_BF16 && W->cols % 2 == 0)) &&
           !W->panel && W->rows > 0 && W->rows % 16 == 0 && W->cols > 0 && have_avx512();
}

/* Panel order on elements of type T with `cols` columns: for bf16 this runs
 * on 32-bit pairs of columns (cols / 2 of them), which is the paired order. */
#define PACK_PANELS(T, dst, src, rows, cols)                                      \
    do {                                                                          \
        for (size_t p = 0; p < (size_t)(rows) / 16; p++) {                         \
            const T *s_ = (const T *)(src) + p * 16 * (cols);                     \
            T *o_ = (T *)(dst) + p * 16 * (cols);                                 \
            /* a few columns at a time, so the 16 source rows stream together */ \
            for (size_t k0 = 0; k0 < (cols); k0 += 64) {                          \
                size_t k1 = k0 + 64 < (cols) ? k0 + 64 : (cols);                  \
                for (size_t j = 0; j < 16; j++)                                   \
                    for (size_t k = k0; k < k1; k++)                              \
                        o_[k * 16 + j] = s_[j * (cols) + k];                      \
            }                                                                     \
        }                                                                         \
    } while (0)

void rk__weight_pack(void *dst, const struct rk_weight *W)
{
    RK_ASSERT(!W->panel && W->rows % 16 == 0);
    size_t cols = (size_t)W->cols;
    if (W->dtype == RK_DTYPE_F32) {
        PACK_PANELS(uint32_t, dst, W->data, W->rows, cols);
    } else if (W->dtype == RK_DTYPE_BF16) {
        RK_ASSERT(cols % 2 == 0);
        PACK_PANELS(uint32_t, dst, W->data, W->rows, cols / 2);
    } else {
        PACK_PANELS(uint16_t, dst, W->data, W->rows, cols);
    }
}

/* --- reference ------------------------------------------------------------ */

static void matmul_ref(float *Y, size_t ldy, const float *X, size_t n, const struct rk_weight *W,
                       int r0, int r1)
{
    size_t cols = (size_t)W->cols;
    for (size_t i = 0; i < n; i++)
        for (int r = r0; r < r1; r++) {
            float acc = 0.0f;
            for (size_t c = 0; c < cols; c++)
                acc += X[i * cols + c] * weight_at(W, (size_t)r * cols + c);
            Y[i * ldy + (size_t)(r - r0)] = acc;
        }
}

/* --- dot path ------------------------------------------------------------- */

/* Portable: rows [r0, r1) of W against n <= DOT_ROWS_MAX rows of X. */
static void dot_portable(float *Y, size_t ldy, int yoff, const float *X, size_t n,
                         const struct rk_weight *W, int r0, int r1, float *rowbuf)
{
    size_t cols = (size_t)W->cols;
    for (int r = r0; r < r1; r++) {
        const float *w;
        if (W->dtype == RK_DTYPE_F32) {
            w = (const float *)W->data + (size_t)r * cols;
        } else {
            rk__weight_row(W, r, rowbuf);
            w = rowbuf;
        }
        for (size_t i = 0; i < n; i++) {
            float acc = 0.0f;
            const float *x = X + i * cols;
            for (size_t c = 0; c < cols; c++)
                acc += x[c] * w[c];
            Y[i * ldy + (size_t)(r - yoff)] = acc;
        }
    }
}

#ifdef RK_X86
#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))

AVX512 static inline __m512 load16(enum rk_dtype t, const void *base, size_t idx)
{
    if (t == RK_DTYPE_BF16) {
        __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)base + idx));
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    if (t == RK_DTYPE_F16) {
        __m256i h = _mm256_loadu_si256((const __m256i *)((const uint16_t *)base + idx));
        return _mm512_cvtph_ps(h);
    }
    return _mm512_loadu_ps((const float *)base + idx);
}

AVX512 static inline __m512 load16_mask(enum rk_dtype t, const void *base, size_t idx,
                                        __mmask16 m)
{
    if (t == RK_DTYPE_BF16) {
        __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)base + idx);
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    }
    if (t == RK_DTYPE_F16) {
        __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)base + idx);
        return _mm512_cvtph_ps(h);
    }
    return _mm512_maskz_loadu_ps(m, (const float *)base + idx);
}

/* One weight row against NX rows of X; NX is a compile-time constant per
 * instantiation so the accumulators live in registers. Every AVX-512 path for
 * few rows of X (this one, dot1_rows4 and the 4x4 tiles) sums each output in
 * the same order (one accumulator over 16-column steps, then one horizontal
 * sum), so a sequence's result does not depend on how many other sequences
 * share its decode step. */
#define DOT_AVX512(NX)                                                                      \
    AVX512 static void dot_avx512_##NX(float *Y, size_t ldy, int yoff, const float *X,      \
                                       const struct rk_weight *W, int r0, int r1)           \
    {                                                                                       \
        size_t cols = (size_t)W->cols;                                                      \
        enum rk_dtype t = W->dtype;                                                         \
        for (int r = r0; r < r1; r++) {                                                     \
            size_t base = (size_t)r * cols;                                                 \
            __m512 acc[NX];                                                                 \
            for (int i = 0; i < NX; i++)                                                    \
                acc[i] = _mm512_setzero_ps();                                               \
            for (size_t c = 0; c < cols; c += 16) {                                         \
                size_t left = cols - c;                                                     \
                __mmask16 m = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1); \
                __m512 w0 = left >= 16 ? load16(t, W->data, base + c)                       \
                                       : load16_mask(t, W->data, base + c, m);              \
                for (int i = 0; i < NX; i++)                                                \
                    acc[i] = _mm512_fmadd_ps(w0, _mm512_maskz_loadu_ps(m, X + i * cols + c), \
                                             acc[i]);                                       \
            }                                                                               \
            for (int i = 0; i < NX; i++)                                                    \
                Y[(size_t)i * ldy + (size_t)(r - yoff)] = _mm512_reduce_add_ps(acc[i]);     \
        }                                                                                   \
    }
DOT_AVX512(1)

/* Decode (one row of X): four weight rows at a time, so four independent
 * accumulator chains hide FMA latency and the horizontal sums are shared;
 * software prefetch runs a few rows ahead of the hardware streamer. */
AVX512 static void dot1_rows4_avx512(float *Y, int yoff, const float *X,
                                     const struct rk_weight *W, int r0, int r1)
{
    size_t cols = (size_t)W->cols;
    enum rk_dtype t = W->dtype;
    size_t esz = t == RK_DTYPE_F32 ? 4 : 2;
    const char *bytes = W->data;
    int r = r0;
    for (; r + 4 <= r1; r += 4) {
        size_t base = (size_t)r * cols;
        const char *pf = bytes + (base + 8 * cols) * esz;
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        __m512 a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
        for (size_t c = 0; c < cols; c += 16) {
            __m512 x = _mm512_loadu_ps(X + c);
            if ((c & 31) == 0) {
                size_t o = c * esz;
                _mm_prefetch(pf + o, _MM_HINT_T0);
                _mm_prefetch(pf + cols * esz + o, _MM_HINT_T0);
                _mm_prefetch(pf + 2 * cols * esz + o, _MM_HINT_T0);
                _mm_prefetch(pf + 3 * cols * esz + o, _MM_HINT_T0);
            }
            a0 = _mm512_fmadd_ps(load16(t, W->data, base + c), x, a0);
            a1 = _mm512_fmadd_ps(load16(t, W->data, base + cols + c), x, a1);
            a2 = _mm512_fmadd_ps(load16(t, W->data, base + 2 * cols + c), x, a2);
            a3 = _mm512_fmadd_ps(load16(t, W->data, base + 3 * cols + c), x, a3);
        }
        Y[r - yoff] = _mm512_reduce_add_ps(a0);
        Y[r + 1 - yoff] = _mm512_reduce_add_ps(a1);
        Y[r + 2 - yoff] = _mm512_reduce_add_ps(a2);
        Y[r + 3 - yoff] = _mm512_reduce_add_ps(a3);
    }
    if (r < r1)
        dot_avx512_1(Y, 1, yoff, X, W, r, r1);
}

DOT_AVX512(2)
DOT_AVX512(3)
DOT_AVX512(4)
/* Two or three rows of X: four weight rows at a time as in dot1_rows4, so
 * 8 or 12 independent accumulator chains keep the FMA units busy. */
#define DOT_ROWS4(NX)                                                                       \
    AVX512 static void dot_rows4_avx512_##NX(float *Y, size_t ldy, int yoff, const float *X, \
                                             const struct rk_weight *W, int r0, int r1)     \
    {                                                                                       \
        size_t cols = (size_t)W->cols;                                                      \
        enum rk_dtype t = W->dtype;                                                         \
        size_t esz = t == RK_DTYPE_F32 ? 4 : 2;                                             \
        int r = r0;                                                                         \
        for (; r + 4 <= r1; r += 4) {                                                       \
            size_t base = (size_t)r * cols;                                                 \
            __m512 acc[4][NX];                                                              \
            for (int q = 0; q < 4; q++)                                                     \
                for (int i = 0; i < NX; i++)                                                \
                    acc[q][i] = _mm512_setzero_ps();                                        \
            const char *pf = (const char *)W->data + (base + 8 * cols) * esz;               \
            for (size_t c = 0; c < cols; c += 16) {                                         \
                if (((c * esz) & 63) == 0)                                                  \
                    for (int q = 0; q < 4; q++)                                             \
                        _mm_prefetch(pf + ((size_t)q * cols + c) * esz, _MM_HINT_T0);       \
                __m512 w[4];                                                                \
                for (int q = 0; q < 4; q++)                                                 \
                    w[q] = load16(t, W->data, base + (size_t)q * cols + c);                 \
                for (int i = 0; i < NX; i++) {                                              \
                    __m512 x = _mm512_loadu_ps(X + (size_t)i * cols + c);                   \
                    for (int q = 0; q < 4; q++)                                             \
                        acc[q][i] = _mm512_fmadd_ps(w[q], x, acc[q][i]);                    \
                }                                                                           \
            }                                                                               \
            for (int q = 0; q < 4; q++)                                                     \
                for (int i = 0; i < NX; i++)                                                \
                    Y[(size_t)i * ldy + (size_t)(r + q - yoff)] =                           \
                        _mm512_reduce_add_ps(acc[q][i]);                                    \
        }                                                                                   \
        if (r < r1)                                                                         \
            dot_avx512_##NX(Y, ldy, yoff, X, W, r, r1);                                     \
    }
DOT_ROWS4(2)
DOT_ROWS4(3)

/* Sixteen horizontal sums at once, each grouped exactly as
 * _mm512_reduce_add_ps groups its lanes (lane j + lane j+8, then + 4, then
 * lanes 0+2 and 1+3, then those two), so the results are bit-identical to
 * sixteen separate reductions. Lane 4q+t of the result is the sum of
 * a[4t+q]. Each level adds the matching halves of two vectors at once. */
AVX512 static inline __m512 reduce16_avx512(const __m512 a[16])
{
    __m512 c[8], e[4], g[2];
    for (int p = 0; p < 8; p++) /* [a.T3 | b.T3]: lanes j + j+8 */
        c[p] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * p], a[2 * p + 1], 0x44),
                             _mm512_shuffle_f32x4(a[2 * p], a[2 * p + 1], 0xee));
    for (int s = 0; s < 4; s++) /* quarter q: a[4s+q].T6, lanes j + j+4 */
        e[s] = _mm512_add_ps(_mm512_shuffle_f32x4(c[2 * s], c[2 * s + 1], 0x88),
                             _mm512_shuffle_f32x4(c[2 * s], c[2 * s + 1], 0xdd));
    for (int h = 0; h < 2; h++) /* per quarter: lanes 0+2 and 1+3 of two vectors */
        g[h] = _mm512_add_ps(_mm512_shuffle_ps(e[2 * h], e[2 * h + 1], 0x44),
                             _mm512_shuffle_ps(e[2 * h], e[2 * h + 1], 0xee));
    return _mm512_add_ps(_mm512_shuffle_ps(g[0], g[1], 0x88), _mm512_shuffle_ps(g[0], g[1], 0xdd));
}

/* A 4x4 tile: 4 fp32 weight rows (w, row stride `cols`) against 4 rows of X,
 * 16 accumulators. Each weight vector feeds 4 FMAs and each X vector 4, so
 * the loop is bound by FMAs rather than loads. Needs cols % 16 == 0. Output
 * (a, i) goes to Y[i * ldy + a]. */
AVX512 static void tile4x4_f32(float *Y, size_t ldy, const float *X, size_t cols, const float *w,
                               const char *pf, size_t pf_lines)
{
    /* spread the prefetches of pf_lines cache lines over the loop */
    size_t steps = cols / 16, per = (pf_lines + steps - 1) / steps, line = 0;
    __m512 a00 = _mm512_setzero_ps(), a01 = a00, a02 = a00, a03 = a00;
    __m512 a10 = a00, a11 = a00, a12 = a00, a13 = a00;
    __m512 a20 = a00, a21 = a00, a22 = a00, a23 = a00;
    __m512 a30 = a00, a31 = a00, a32 = a00, a33 = a00;
    const float *w0 = w, *w1 = w + cols, *w2 = w + 2 * cols, *w3 = w + 3 * cols;
    const float *x0 = X, *x1 = X + cols, *x2 = X + 2 * cols, *x3 = X + 3 * cols;
    for (size_t c = 0; c < cols; c += 16) {
        for (size_t q = 0; q < per && line < pf_lines; q++, line++)
            _mm_prefetch(pf + line * 64, _MM_HINT_T1);
        __m512 v0 = _mm512_loadu_ps(w0 + c), v1 = _mm512_loadu_ps(w1 + c);
        __m512 v2 = _mm512_loadu_ps(w2 + c), v3 = _mm512_loadu_ps(w3 + c);
        __m512 x = _mm512_loadu_ps(x0 + c);
        a00 = _mm512_fmadd_ps(v0, x, a00);
        a10 = _mm512_fmadd_ps(v1, x, a10);
        a20 = _mm512_fmadd_ps(v2, x, a20);
        a30 = _mm512_fmadd_ps(v3, x, a30);
        x = _mm512_loadu_ps(x1 + c);
        a01 = _mm512_fmadd_ps(v0, x, a01);
        a11 = _mm512_fmadd_ps(v1, x, a11);
        a21 = _mm512_fmadd_ps(v2, x, a21);
        a31 = _mm512_fmadd_ps(v3, x, a31);
        x = _mm512_loadu_ps(x2 + c);
        a02 = _mm512_fmadd_ps(v0, x, a02);
        a12 = _mm512_fmadd_ps(v1, x, a12);
        a22 = _mm512_fmadd_ps(v2, x, a22);
        a32 = _mm512_fmadd_ps(v3, x, a32);
        x = _mm512_loadu_ps(x3 + c);
        a03 = _mm512_fmadd_ps(v0, x, a03);
        a13 = _mm512_fmadd_ps(v1, x, a13);
        a23 = _mm512_fmadd_ps(v2, x, a23);
        a33 = _mm512_fmadd_ps(v3, x, a33);
    }
    /* a_{4r+i} = acc(weight row r, X row i) */
    __m512 acc[16] = {a00, a01, a02, a03, a10, a11, a12, a13,
                      a20, a21, a22, a23, a30, a31, a32, a33};
    __m512 sums = reduce16_avx512(acc); /* lane 4i+r = Y(i, r) */
    /* the lane index of the extract must be a constant at any optimisation */
    _mm_storeu_ps(Y, _mm512_extractf32x4_ps(sums, 0));
    _mm_storeu_ps(Y + ldy, _mm512_extractf32x4_ps(sums, 1));
    _mm_storeu_ps(Y + 2 * ldy, _mm512_extractf32x4_ps(sums, 2));
    _mm_storeu_ps(Y + 3 * ldy, _mm512_extractf32x4_ps(sums, 3));
}

static void dot_rows(float *Y, size_t ldy, int yoff, const float *X, size_t n,
                     const struct rk_weight *W, int r0, int r1, float *rowbuf);
AVX512 static void convert_block_avx512(float *dst, const struct rk_weight *W, int r0, int r1);

/* Rows [r0, r1) of W against any number of rows of X, in 4x4 tiles; blocks of
 * 4 weight rows stay in L1 while all of X streams past them. */
AVX512 static void tiled_avx512(float *Y, size_t ldy, int yoff, const float *X, size_t n,
                                const struct rk_weight *W, int r0, int r1)
{
    size_t cols = (size_t)W->cols;
    int r = r0;
    size_t n4 = n & ~(size_t)3;
    if (cols % 16 != 0) { /* no tiles: groups of up to 4 rows of X */
        for (size_t i = 0; i < n; i += 4)
            dot_rows(Y + i * ldy, ldy, yoff, X + i * cols, n - i < 4 ? n - i : 4, W, r0, r1, NULL);
        return;
    }
    /* 16-bit weights: widen each block of 4 rows to fp32 once (it stays in
     * L1) and reuse it for every group of 4 rows of X */
    float *wbuf = W->dtype != RK_DTYPE_F32 ? rk__thread_buf(RK_TL_SCRATCH, 4 * cols) : NULL;
    if (W->dtype != RK_DTYPE_F32 && !wbuf) { /* no scratch: untiled */
        for (size_t i = 0; i < n; i += 4)
            dot_rows(Y + i * ldy, ldy, yoff, X + i * cols, n - i < 4 ? n - i : 4, W, r0, r1, NULL);
        return;
    }
    /* While a block's tiles run, the weights two blocks ahead are fetched
     * into L2, so streaming them from memory overlaps the FMAs; the lines
     * are shared out over the block's tiles. (Past the end of W on the last
     * blocks, which prefetch tolerates.) */
    size_t esz = W->dtype == RK_DTYPE_F32 ? 4 : 2, blk = 4 * cols * esz;
    size_t tiles = n4 / 4, pf_lines = tiles ? (blk / 64 + tiles - 1) / tiles : 0;
    for (; r + 4 <= r1; r += 4) {
        const float *w;
        const char *pf = (const char *)W->data + (size_t)(r + 8) * cols * esz;
        if (wbuf) {
            convert_block_avx512(wbuf, W, r, r + 4);
            w = wbuf;
        } else {
            w = (const float *)W->data + (size_t)r * cols;
        }
        for (size_t i = 0; i < n4; i += 4)
            tile4x4_f32(Y + i * ldy + (size_t)(r - yoff), ldy, X + i * cols, cols, w,
                        pf + (i / 4) * pf_lines * 64, pf_lines);
        if (n4 < n)
            dot_rows(Y + n4 * ldy, ldy, yoff, X + n4 * cols, n - n4, W, r, r + 4, NULL);
    }
    if (r < r1)
        for (size_t i = 0; i < n; i += 4)
            dot_rows(Y + i * ldy, ldy, yoff, X + i * cols, n - i < 4 ? n - i : 4, W, r, r1, NULL);
}

AVX512 static void convert_block_avx512(float *dst, const struct rk_weight *W, int r0, int r1)
{
    size_t cols = (size_t)W->cols;
    size_t total = (size_t)(r1 - r0) * cols, base = (size_t)r0 * cols, i = 0;
    size_t esz = W->dtype == RK_DTYPE_F32 ? 4 : 2;
    /* the block after this one is next: fetch it ahead (past the end of W
     * on the last block, which prefetch tolerates) */
    const char *pf = (const char *)W->data + (base + total) * esz;
    for (; i + 16 <= total; i += 16) {
        if (((i * esz) & 63) == 0)
            _mm_prefetch(pf + i * esz, _MM_HINT_T0);
        _mm512_storeu_ps(dst + i, load16(W->dtype, W->data, base + i));
    }
    for (; i < total; i++)
        dst[i] = weight_at(W, base + i);
}
#endif

#ifdef RK_X86
/* --- panel kernels ---------------------------------------------------------
 * For weights held in panels (struct rk_weight.panel). A kernel takes NP
 * consecutive panels (16 * NP weight rows) and NB rows of X. For each column
 * k in order it widens the panels' 16-value vectors once and adds w * x[b][k]
 * (x broadcast to all lanes) into NP * NB accumulators, one per (panel, row
 * of X), each holding 16 outputs. Every output is thus one FMA chain over
 * k = 0, 1, ..., cols-1 whatever NP, NB, the number of rows of X or the split
 * between threads: a sequence's result does not depend on what shares its
 * pass, and prefill, chunked and token-by-token runs give the same bits.
 * Each panel vector feeds NB FMAs and each broadcast NP, so the loop is bound
 * by the FMA units, not by loads; the rows of X are read 16 * NP weight rows
 * at a time instead of 4 (the row-major tiles above), which keeps them in L1.
 * The first pass over a group (pfd != 0) prefetches each panel's stream pfd
 * bytes ahead, which runs into the next group at the end; later passes over
 * the same group find it in cache. */
#define PANEL_PF_BYTES 4096
#define PANEL_NP 3 /* panels per group: 3 x 8 = 24 accumulators */
#define PANEL_NB 8 /* rows of X per pass */

AVX512 static inline __m512 widen_f16(const uint16_t *p)
{
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}

AVX512 static inline __m512 widen_f32(const float *p) { return _mm512_loadu_ps(p); }

typedef void panel_fn(float *Y, size_t ldy, const float *X, size_t cols, const void *P,
                      size_t pfd);

/* The pieces every panel kernel shares: NP x NB accumulators, one column's
 * FMAs (w[p] x the rows' broadcast column kk), the final stores. */
#define PANEL_ZERO(NP, NB)                                                                   \
    __m512 acc[NP][NB];                                                                      \
    for (int p = 0; p < NP; p++)                                                             \
        for (int b = 0; b < NB; b++)                                                         \
            acc[p][b] = _mm512_setzero_ps()
#define PANEL_FMA(NP, NB, kk)                                                                \
    for (int b = 0; b < NB; b++) {                                                           \
        __m512 x = _mm512_set1_ps(X[(size_t)b * cols + (kk)]);                               \
        for (int p = 0; p < NP; p++)                                                         \
            acc[p][b] = _mm512_fmadd_ps(w[p], x, acc[p][b]);                                 \
    }
#define PANEL_STORE(NP, NB)                                                                  \
    for (int p = 0; p < NP; p++)                                                             \
        for (int b = 0; b < NB; b++)                                                         \
            _mm512_storeu_ps(Y + (size_t)b * ldy + 16 * p, acc[p][b])

#define PANEL_KER(T, ET, NP, NB)                                                             \
    AVX512 static void panel_##T##_##NP##x##NB(float *Y, size_t ldy, const float *X,         \
                                               size_t cols, const void *P_, size_t pfd)      \
    {                                                                                        \
        const ET *P = P_;                                                                    \
        PANEL_ZERO(NP, NB);                                                                  \
        const char *pf = (const char *)P + pfd;                                              \
        size_t ps = cols * 16; /* elements per panel */                                      \
        for (size_t k = 0; k < cols; k++) {                                                  \
            if (pfd && (k * 16 * sizeof(ET)) % 64 == 0)                                      \
                for (int p = 0; p < NP; p++)                                                 \
                    _mm_prefetch(pf + ((size_t)p * ps + k * 16) * sizeof(ET), _MM_HINT_T0);  \
            __m512 w[NP];                                                                    \
            for (int p = 0; p < NP; p++)                                                     \
                w[p] = widen_##T(P + (size_t)p * ps + k * 16);                               \
            PANEL_FMA(NP, NB, k);                                                            \
        }                                                                                    \
        PANEL_STORE(NP, NB);                                                                 \
    }
/* bf16 panels hold column pairs: one 64-byte load gives columns k and k+1
 * of 16 rows; a shift widens column k (the low halves) and a masked move
 * column k+1 (the high halves), one instruction each where a plain panel
 * needs two, and the FMAs still run over k in order. */
#define PANEL_KER_BF16(NP, NB)                                                               \
    AVX512 static void panel_bf16_##NP##x##NB(float *Y, size_t ldy, const float *X,          \
                                              size_t cols, const void *P_, size_t pfd)       \
    {                                                                                        \
        const uint16_t *P = P_;                                                              \
        PANEL_ZERO(NP, NB);                                                                  \
        const char *pf = (const char *)P + pfd;                                              \
        size_t ps = cols * 16; /* elements per panel */                                      \
        for (size_t k = 0; k < cols; k += 2) {                                               \
            if (pfd)                                                                         \
                for (int p = 0; p < NP; p++)                                                 \
                    _mm_prefetch(pf + ((size_t)p * ps + k * 16) * 2, _MM_HINT_T0);           \
            __m512i d[NP];                                                                   \
            __m512 w[NP];                                                                    \
            for (int p = 0; p < NP; p++) {                                                   \
                d[p] = _mm512_loadu_si512((const void *)(P + (size_t)p * ps + k * 16));      \
                w[p] = _mm512_castsi512_ps(_mm512_slli_epi32(d[p], 16));                     \
            }                                                                                \
            PANEL_FMA(NP, NB, k);                                                            \
            for (int p = 0; p < NP; p++)                                                     \
                w[p] = _mm512_castsi512_ps(_mm512_maskz_mov_epi16(0xAAAAAAAAu, d[p]));       \
            PANEL_FMA(NP, NB, k + 1);                                                        \
        }                                                                                    \
        PANEL_STORE(NP, NB);                                                                 \
    }
#define PANEL_KERS_BF16(NP)                                                                  \
    PANEL_KER_BF16(NP, 1) PANEL_KER_BF16(NP, 2) PANEL_KER_BF16(NP, 3) PANEL_KER_BF16(NP, 4)  \
    PANEL_KER_BF16(NP, 5) PANEL_KER_BF16(NP, 6) PANEL_KER_BF16(NP, 7) PANEL_KER_BF16(NP, 8)
#define PANEL_KERS(T, ET, NP)                                                                \
    PANEL_KER(T, ET, NP, 1) PANEL_KER(T, ET, NP, 2) PANEL_KER(T, ET, NP, 3)                  \
    PANEL_KER(T, ET, NP, 4) PANEL_KER(T, ET, NP, 5) PANEL_KER(T, ET, NP, 6)                  \
    PANEL_KER(T, ET, NP, 7) PANEL_KER(T, ET, NP, 8)
PANEL_KERS_BF16(1)
PANEL_KERS_BF16(2)
PANEL_KERS_BF16(3)
PANEL_KERS(f16, uint16_t, 1)
PANEL_KERS(f16, uint16_t, 2)
PANEL_KERS(f16, uint16_t, 3)
PANEL_KERS(f32, float, 1)
PANEL_KERS(f32, float, 2)
PANEL_KERS(f32, float, 3)
#define PANEL_ROW(T, NP)                                                                     \
    {panel_##T##_##NP##x1, panel_##T##_##NP##x2, panel_##T##_##NP##x3, panel_##T##_##NP##x4, \
     panel_##T##_##NP##x5, panel_##T##_##NP##x6, panel_##T##_##NP##x7, panel_##T##_##NP##x8}
static panel_fn *const panel_bf16[PANEL_NP][PANEL_NB] = {
    PANEL_ROW(bf16, 1), PANEL_ROW(bf16, 2), PANEL_ROW(bf16, 3)};
static panel_fn *const panel_f16[PANEL_NP][PANEL_NB] = {
    PANEL_ROW(f16, 1), PANEL_ROW(f16, 2), PANEL_ROW(f16, 3)};
static panel_fn *const panel_f32[PANEL_NP][PANEL_NB] = {
    PANEL_ROW(f32, 1), PANEL_ROW(f32, 2), PANEL_ROW(f32, 3)};

/* Columns [c0, c1) (even) of one bf16 panel P, widened into dst[c * ld]
 * (16 floats each): one 64-byte load holds two columns. */
AVX512 static void widen_pairs_t(float *dst, size_t ld, const uint16_t *P, int c0, int c1)
{
    for (int c = c0; c < c1; c += 2) {
        __m512i d = _mm512_loadu_si512((const void *)(P + (size_t)c * 16));
        _mm512_storeu_ps(dst + (size_t)c * ld, _mm512_castsi512_ps(_mm512_slli_epi32(d, 16)));
        _mm512_storeu_ps(dst + (size_t)(c + 1) * ld,
                         _mm512_castsi512_ps(_mm512_maskz_mov_epi16(0xAAAAAAAAu, d)));
    }
}

/* Columns [c0, c1) of one f16 panel P, widened into dst[c * ld]. */
AVX512 static void widen_f16_t(float *dst, size_t ld, const uint16_t *P, int c0, int c1)
{
    for (int c = c0; c < c1; c++)
        _mm512_storeu_ps(dst + (size_t)c * ld, widen_f16(P + (size_t)c * 16));
}

/* Rows [r0, r1) of a panel-held W (multiples of 16) against n rows of X:
 * groups of PANEL_NP panels, each swept by the rows of X PANEL_NB at a time. */
static void panel_rows(float *Y, size_t ldy, int yoff, const float *X, size_t n,
                       const struct rk_weight *W, int r0, int r1)
{
    size_t cols = (size_t)W->cols;
    panel_fn *const(*tab)[PANEL_NB] = W->dtype == RK_DTYPE_BF16  ? panel_bf16
                                      : W->dtype == RK_DTYPE_F16 ? panel_f16
                                                                 : panel_f32;
    const char *base = W->data;
    size_t esz = W->dtype == RK_DTYPE_F32 ? 4 : 2;
    for (int r = r0; r < r1; r += 16 * PANEL_NP) {
        int np = (r1 - r) / 16 < PANEL_NP ? (r1 - r) / 16 : PANEL_NP;
        const char *P = base + (size_t)r * cols * esz;
        for (size_t i = 0; i < n; i += PANEL_NB) {
            size_t nb = n - i < PANEL_NB ? n - i : PANEL_NB;
            tab[np - 1][nb - 1](Y + i * ldy + (size_t)(r - yoff), ldy, X + i * cols, cols, P,
                                i == 0 ? PANEL_PF_BYTES : 0);
        }
    }
}
#endif

static void dot_rows(float *Y, size_t ldy, int yoff, const float *X, size_t n,
                     const struct rk_weight *W, int r0, int r1, float *rowbuf)
{
#ifdef RK_X86
    if (have_avx512()) {
        switch (n) {
        case 1:
            if (W->cols % 16 == 0)
                dot1_rows4_avx512(Y, yoff, X, W, r0, r1);
            else
                dot_avx512_1(Y, ldy, yoff, X, W, r0, r1);
            return;
        case 2:
            if (W->cols % 16 == 0)
                dot_rows4_avx512_2(Y, ldy, yoff, X, W, r0, r1);
            else
                dot_avx512_2(Y, ldy, yoff, X, W, r0, r1);
            return;
        case 3:
            if (W->cols % 16 == 0)
                dot_rows4_avx512_3(Y, ldy, yoff, X, W, r0, r1);
            else
                dot_avx512_3(Y, ldy, yoff, X, W, r0, r1);
            return;
        case 4: dot_avx512_4(Y, ldy, yoff, X, W, r0, r1); return;
        default: break;
        }
    }
#endif
    dot_portable(Y, ldy, yoff, X, n, W, r0, r1, rowbuf);
}

/* --- gemm path ------------------------------------------------------------ */

/* The width of the blocks an sgemm product of `total` rows or columns is cut
 * into, at most `cap` (a multiple of 16): from the shape alone. */
static int split_width(int total, int cap)
{
    int w = ((total + SPLIT_BLOCKS - 1) / SPLIT_BLOCKS + 15) & ~15;
    if (w < SPLIT_MIN)
        w = SPLIT_MIN;
    if (w > cap)
        w = cap;
    return w < total ? w : total;
}

/* Thread ith's share [*a, *b) of [0, total) cut into blocks of `unit`: a run
 * of whole blocks, so a block is computed the same way by any thread. */
static void split_blocks(int total, int unit, int ith, int nth, int *a, int *b)
{
    long nb = (total + unit - 1) / unit;
    long b0 = nb * ith / nth, b1 = nb * (ith + 1) / nth;
    *a = (int)(b0 * unit);
    *b = b1 * unit < total ? (int)(b1 * unit) : total;
}

/* Rows of W per sgemm call on the gemm path; the converted block of a 16-bit
 * W must fit GEMM_BLOCK_BYTES. */
static int gemm_block_rows(const struct rk_weight *W)
{
    int cap = (int)(GEMM_BLOCK_BYTES / (sizeof(float) * (size_t)W->cols)) & ~15;
    return split_width(W->rows, cap < 16 ? 16 : cap);
}

/* Rows [r0, r1) of W, one sgemm call per block of gemm_block_rows() rows
 * from r0; callers pass whole blocks counted from the product's first row. */
static void gemm_rows(float *Y, size_t ldy, int yoff, const float *X, size_t n,
                      const struct rk_weight *W, int r0, int r1)
{
    int cols = W->cols, rb = gemm_block_rows(W);
    if (W->dtype == RK_DTYPE_F32) {
        for (int b0 = r0; b0 < r1; b0 += rb) {
            int b1 = b0 + rb < r1 ? b0 + rb : r1;
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, b1 - b0, cols, 1.0f, X,
                        cols, (const float *)W->data + (size_t)b0 * (size_t)cols, cols, 0.0f,
                        Y + (b0 - yoff), (int)ldy);
        }
        return;
    }
    float *buf = rk__thread_buf(RK_TL_SCRATCH, (size_t)rb * (size_t)cols);
    if (!buf) { /* no memory for the block: fall back to the reference loop */
        matmul_ref(Y + (r0 - yoff), ldy, X, n, W, r0, r1);
        return;
    }
    for (int b0 = r0; b0 < r1; b0 += rb) {
        int b1 = b0 + rb < r1 ? b0 + rb : r1;
#ifdef RK_X86
        if (have_avx512())
            convert_block_avx512(buf, W, b0, b1);
        else
#endif
            for (int r = b0; r < b1; r++)
                rk__weight_row(W, r, buf + (size_t)(r - b0) * (size_t)cols);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, b1 - b0, cols, 1.0f, X, cols,
                    buf, cols, 0.0f, Y + (b0 - yoff), (int)ldy);
    }
}

/* --- dispatch ------------------------------------------------------------- */

/* Rows of X up to which the tiled AVX-512 path runs (RWKVD_TILED_ROWS_MAX). */
static size_t tiled_rows_max(void) { return rk__cpu()->tiled_rows; }

size_t rk__tiled_rows(void) { return tiled_rows_max(); }

/* The pool parallelises; each sgemm call runs on its calling thread. */
static pthread_once_t blas_once = PTHREAD_ONCE_INIT;
static void blas_one_thread(void) { openblas_set_num_threads(1); }
static void blas_single_threaded(void) { pthread_once(&blas_once, blas_one_thread); }

struct mm_job {
    float *Y;
    size_t ldy;
    const float *X;
    size_t n;
    const struct rk_weight *W;
    int r0, r1;
    bool relu2;         /* then Y = max(Y, 0)^2 */
    const uint16_t *xb; /* X rounded to bf16: the product runs on AMX tiles */
    const struct rk__q8x *xq; /* X quantized: a Q8 W, kernel q8kind (q8.c) */
    int q8kind;
};

/* Y[i][c0 - yoff .. c1 - yoff) = max(., 0)^2 for i < n; NaN becomes 0 on
 * both paths. Branch-free: the sign of a pre-activation is unpredictable. */
#ifdef RK_X86
AVX512 static void relu2_avx512(float *p, size_t len)
{
    __m512 z = _mm512_setzero_ps();
    for (size_t i = 0; i < len; i += 16) {
        __mmask16 m = len - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (len - i)) - 1);
        __m512 h = _mm512_max_ps(_mm512_maskz_loadu_ps(m, p + i), z);
        _mm512_mask_storeu_ps(p + i, m, _mm512_mul_ps(h, h));
    }
}
#endif

static void relu2_cols(float *Y, size_t ldy, size_t n, int c0, int c1)
{
    for (size_t i = 0; i < n; i++) {
        float *p = Y + i * ldy + c0;
        size_t len = (size_t)(c1 - c0);
#ifdef RK_X86
        if (have_avx512()) {
            relu2_avx512(p, len);
            continue;
        }
#endif
        for (size_t k = 0; k < len; k++) {
            float h = p[k] > 0.0f ? p[k] : 0.0f;
            p[k] = h * h;
        }
    }
}

/* Whether rows of this product go to sgemm (mm_range's last branch). */
static bool mm_uses_gemm(const struct mm_job *j)
{
#ifdef RK_X86
    if (j->xq || j->xb || j->W->panel || (j->n <= tiled_rows_max() && have_avx512()))
        return false;
#endif
    return j->n > DOT_ROWS_MAX;
}

static void mm_range(const struct mm_job *j, int a, int b)
{
    if (j->xq) {
        rk__q8_rows(j->q8kind, j->Y, j->ldy, j->r0, j->xq, j->W, a, b);
        return;
    }
#ifdef RK_X86
    if (j->xb) {
        rk__amx_rows(j->Y, j->ldy, j->r0, j->xb, j->n, j->W, a, b);
        return;
    }
    if (j->W->panel) {
        panel_rows(j->Y, j->ldy, j->r0, j->X, j->n, j->W, a, b);
        return;
    }
    if (j->n > DOT_ROWS_MAX && j->n <= tiled_rows_max() && have_avx512()) {
        tiled_avx512(j->Y, j->ldy, j->r0, j->X, j->n, j->W, a, b);
        return;
    }
#endif
    if (j->n <= DOT_ROWS_MAX) {
        float *rowbuf =
            j->W->dtype == RK_DTYPE_F32 ? NULL : rk__thread_buf(RK_TL_SCRATCH, (size_t)j->W->cols);
        if (j->W->dtype != RK_DTYPE_F32 && !rowbuf && !have_avx512()) {
            matmul_ref(j->Y + (a - j->r0), j->ldy, j->X, j->n, j->W, a, b);
            return;
        }
        dot_rows(j->Y, j->ldy, j->r0, j->X, j->n, j->W, a, b, rowbuf);
    } else {
        gemm_rows(j->Y, j->ldy, j->r0, j->X, j->n, j->W, a, b);
    }
}

static void mm_worker(int ith, int nth, void *arg)
{
    const struct mm_job *j = arg;
    /* sgemm: whole blocks of the product's rows. Our kernels: blocks of 16
     * rows (whole panels, and the AVX-512 tails stay at the end of W). */
    int unit = mm_uses_gemm(j) ? gemm_block_rows(j->W) : 16, a, b;
    split_blocks(j->r1 - j->r0, unit, ith, nth, &a, &b);
    if (a >= b)
        return;
    a += j->r0, b += j->r0;
    mm_range(j, a, b);
    if (j->relu2)
        relu2_cols(j->Y, j->ldy, j->n, a - j->r0, b - j->r0);
}

/* AMX products: the rows of X of every product that runs on the tiles are
 * rounded to bf16 once, into the calling thread's buffer, the rows split
 * over the pool (each thread then reads all of them). */
enum { AMX_MANY_MAX = 16 };
/* Products over the same n rows (rk__matmul_many, or one product), with the
 * rounded rows of those on AMX tiles (xb[i], or NULL). */
struct many_job {
    const struct rk__mm *mm;
    int count;
    size_t n;
    uint16_t **xb;
    struct rk__q8x *xq; /* [count]: quantized X of the Q8 products (q == NULL: none) */
};

static void amx_round_worker(int ith, int nth, void *arg)
{
    const struct many_job *a = arg;
    size_t r0 = a->n * (size_t)ith / (size_t)nth, r1 = a->n * (size_t)(ith + 1) / (size_t)nth;
    for (int i = 0; i < a->count && r1 > r0; i++) {
        size_t cols = (size_t)a->mm[i].W->cols;
        if (a->xb[i])
            rk__amx_round(a->xb[i] + r0 * cols, a->mm[i].X + r0 * cols, r1 - r0, cols);
    }
}

/* xb[i] = the rounded rows of product i, or NULL where it keeps the fp32
 * kernels (W does not fit the tiles, AMX is off or memory is short). */
static void amx_prepare(struct rk__pool *pool, int kern, const struct rk__mm *mm, int count,
                        size_t n, uint16_t **xb)
{
    size_t n16 = (n + 15) & ~(size_t)15, total = 0;
    bool on = kern == RK_KERN_AMX && rk__amx_usable();
    for (int i = 0; i < count; i++) {
        xb[i] = NULL;
        if (on && rk__amx_fits(mm[i].W))
            total += n16 * (size_t)mm[i].W->cols; /* a multiple of 32: 64-byte aligned */
    }
    if (total == 0)
        return;
    uint16_t *buf = (uint16_t *)rk__thread_buf(RK_TL_AMX_X, (total + 1) / 2);
    if (!buf)
        return;
    for (int i = 0; i < count; i++)
        if (on && rk__amx_fits(mm[i].W)) {
            xb[i] = buf;
            buf += n16 * (size_t)mm[i].W->cols;
        }
    struct many_job a = {mm, count, n, xb, NULL};
    if (pool && n >= 16)
        rk__pool_run(pool, amx_round_worker, &a);
    else
        amx_round_worker(0, 1, &a);
}

/* The rows of X of every Q8 product among mm[count] quantized once, on the
 * calling thread, into its buffer (a product whose X and width match an
 * earlier one's shares that one's); xq[i].q = NULL for the others. False
 * when out of memory. */
static bool q8_prepare(const struct rk__mm *mm, int count, size_t n, struct rk__q8x *xq)
{
    size_t total = 0;
    for (int i = 0; i < count; i++)
        if (mm[i].W->dtype == RK_DTYPE_Q8)
            total += rk__q8x_bytes(n, (size_t)mm[i].W->cols);
    for (int i = 0; i < count; i++)
        xq[i].q = NULL;
    if (total == 0)
        return true;
    char *buf = (char *)rk__thread_buf(RK_TL_Q8X, total / sizeof(float));
    if (!buf)
        return false;
    for (int i = 0; i < count; i++) {
        if (mm[i].W->dtype != RK_DTYPE_Q8)
            continue;
        size_t cols = (size_t)mm[i].W->cols;
        int k = 0;
        while (k < i && !(xq[k].q && mm[k].X == mm[i].X && xq[k].cols == cols))
            k++;
        if (k < i) {
            xq[i] = xq[k];
            continue;
        }
        rk__q8x_quantize(&xq[i], buf, mm[i].X, n, cols);
        buf += rk__q8x_bytes(n, cols);
    }
    return true;
}

static void matmul_rows_act(struct rk__pool *pool, int kern, float *Y, const float *X, size_t n,
                            const struct rk_weight *W, int r0, int r1, bool relu2)
{
    bool ref = kern == RK_KERN_REF;
    RK_ASSERT(W->data && r0 >= 0 && r1 <= W->rows && r0 <= r1);
    size_t ldy = (size_t)(r1 - r0);
    if (W->dtype == RK_DTYPE_Q8) {
        struct rk__mm one = {Y, X, W};
        struct rk__q8x xq;
        if (!q8_prepare(&one, 1, n, &xq)) { /* no memory: fp32 activations, one thread */
            matmul_ref(Y, ldy, X, n, W, r0, r1);
        } else {
            struct mm_job j = {Y, ldy, X, n, W, r0, r1, relu2, NULL, &xq,
                               ref ? RK_Q8_REF : rk__cpu()->q8};
            size_t elems = (size_t)(r1 - r0) * (size_t)W->cols * n;
            if (ref || !pool || elems < PAR_MIN_ELEMS)
                mm_worker(0, 1, &j);
            else
                rk__pool_run(pool, mm_worker, &j);
            return;
        }
        if (relu2)
            relu2_cols(Y, ldy, n, 0, r1 - r0);
        return;
    }
    /* panels are only held while the AVX-512 kernels run (rk__weight_wants_panels);
     * a row range that splits a panel takes the reference loop */
    if (ref || (W->panel && (!have_avx512() || r0 % 16 || r1 % 16))) {
        matmul_ref(Y, ldy, X, n, W, r0, r1);
        if (relu2)
            relu2_cols(Y, ldy, n, 0, r1 - r0);
        return;
    }
    blas_single_threaded();
    uint16_t *xb = NULL;
    struct rk__mm one = {Y, X, W};
    amx_prepare(pool, kern, &one, 1, n, &xb);
    struct mm_job j = {Y, ldy, X, n, W, r0, r1, relu2, xb, NULL, 0};
    size_t elems = (size_t)(r1 - r0) * (size_t)W->cols * (n > DOT_ROWS_MAX ? n : 1);
    if (!pool || elems < PAR_MIN_ELEMS)
        mm_worker(0, 1, &j);
    else
        rk__pool_run(pool, mm_worker, &j);
}

void rk__matmul_rows(struct rk__pool *pool, int kern, float *Y, const float *X, size_t n,
                     const struct rk_weight *W, int r0, int r1)
{
    matmul_rows_act(pool, kern, Y, X, n, W, r0, r1, false);
}

void rk__matmul_relu2(struct rk__pool *pool, int kern, float *Y, const float *X, size_t n,
                      const struct rk_weight *W)
{
    matmul_rows_act(pool, kern, Y, X, n, W, 0, W->rows, true);
}

static void many_worker(int ith, int nth, void *arg)
{
    const struct many_job *mj = arg;
    for (int i = 0; i < mj->count; i++) {
        const struct rk__mm *t = &mj->mm[i];
        struct mm_job j = {t->Y, (size_t)t->W->rows, t->X, mj->n, t->W, 0, t->W->rows, false,
                           mj->xb[i], mj->xq[i].q ? &mj->xq[i] : NULL, rk__cpu()->q8};
        /* a product of fewer blocks than threads (the LoRA factors) starts
         * on another thread than the one before, so the load spreads */
        mm_worker((ith + i) % nth, nth, &j);
    }
}

void rk__matmul_many(struct rk__pool *pool, int kern, const struct rk__mm *mm, int count,
                     size_t n)
{
    bool together = kern != RK_KERN_REF && pool && count <= AMX_MANY_MAX;
    for (int i = 0; together && i < count; i++)
        together = !(mm[i].W->panel && mm[i].W->dtype != RK_DTYPE_Q8 && !have_avx512());
    if (!together) {
        for (int i = 0; i < count; i++)
            rk__matmul(pool, kern, mm[i].Y, mm[i].X, n, mm[i].W);
        return;
    }
    blas_single_threaded();
    uint16_t *xb[AMX_MANY_MAX];
    amx_prepare(pool, kern, mm, count, n, xb);
    struct rk__q8x xq[AMX_MANY_MAX];
    if (!q8_prepare(mm, count, n, xq)) {
        for (int i = 0; i < count; i++)
            rk__matmul(pool, kern, mm[i].Y, mm[i].X, n, mm[i].W);
        return;
    }
    struct many_job mj = {mm, count, n, xb, xq};
    rk__pool_run(pool, many_worker, &mj);
}

void rk__matmul(struct rk__pool *pool, int kern, float *Y, const float *X, size_t n,
                const struct rk_weight *W)
{
    rk__matmul_rows(pool, kern, Y, X, n, W, 0, W->rows);
}

/* --- product with the transposed weight ------------------------------------ */

struct mt_job {
    float *dX;
    const float *dY;
    size_t n;
    const struct rk_weight *W;
    float *wbuf;
    int r0, nb;
    float beta;
};

/* One sgemm with K = the block's rows per block of dX's columns
 * (split_width: from the shape, not the thread count); each thread takes a
 * run of whole column blocks, widens that part of the block of weight rows,
 * then makes one call per column block. */
static void mt_sgemm(const struct mt_job *j, const float *B, int ldb, CBLAS_TRANSPOSE tb, int c0,
                     int c1)
{
    int cols = j->W->cols, w = split_width(cols, cols);
    for (int cb = c0; cb < c1; cb += w) {
        int ce = cb + w < c1 ? cb + w : c1;
        const float *Bc = tb == CblasTrans ? B + (size_t)cb * (size_t)ldb : B + cb;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, tb, (int)j->n, ce - cb, j->nb, 1.0f,
                    j->dY + j->r0, j->W->rows, Bc, ldb, j->beta, j->dX + cb, cols);
    }
}

static void mt_worker(int ith, int nth, void *arg)
{
    const struct mt_job *j = arg;
    const struct rk_weight *W = j->W;
    int cols = W->cols, c0, c1;
    split_blocks(cols, split_width(cols, cols), ith, nth, &c0, &c1);
    if (c0 >= c1)
        return;
    const float *B;
    if (W->panel && W->dtype != RK_DTYPE_Q8) {
        /* this thread's columns of the block, widened as the block's
         * transpose (wbuf[c][r - r0], row stride nb): each panel's 16 values
         * of a column are one contiguous run there */
        size_t nb = (size_t)j->nb;
        for (int p = 0; p < j->nb / 16; p++) {
            if (W->dtype == RK_DTYPE_F32) {
                const float *F = (const float *)W->data + (size_t)(j->r0 + 16 * p) * cols;
                for (int c = c0; c < c1; c++)
                    memcpy(j->wbuf + (size_t)c * nb + 16 * (size_t)p, F + (size_t)c * 16,
                           16 * sizeof(float));
                continue;
            }
            const uint16_t *P = (const uint16_t *)W->data + (size_t)(j->r0 + 16 * p) * cols;
#ifdef RK_X86
            if (W->dtype == RK_DTYPE_BF16 && c0 % 2 == 0 && c1 % 2 == 0) {
                widen_pairs_t(j->wbuf + 16 * (size_t)p, nb, P, c0, c1);
                continue;
            }
            if (W->dtype == RK_DTYPE_F16) {
                widen_f16_t(j->wbuf + 16 * (size_t)p, nb, P, c0, c1);
                continue;
            }
#endif
            for (int c = c0; c < c1; c++) {
                float *dst = j->wbuf + (size_t)c * nb + 16 * (size_t)p;
                if (W->dtype == RK_DTYPE_BF16) /* column pairs: c's values 2 apart */
                    for (int q = 0; q < 16; q++)
                        dst[q] = rk__bf16_to_f32(P[(size_t)(c >> 1) * 32 + 2 * q + (c & 1)]);
                else
                    for (int q = 0; q < 16; q++)
                        dst[q] = rk__f16_to_f32(P[(size_t)c * 16 + q]);
            }
        }
        mt_sgemm(j, j->wbuf, j->nb, CblasTrans, c0, c1);
        return;
    }
    if (W->dtype == RK_DTYPE_F32) {
        B = (const float *)W->data + (size_t)j->r0 * (size_t)cols;
    } else if (W->dtype == RK_DTYPE_Q8) {
        for (int i = 0; i < j->nb; i++)
            rk__q8_dequant(j->wbuf + (size_t)i * (size_t)cols + c0, W, j->r0 + i, c0, c1);
        B = j->wbuf;
    } else {
        for (int i = 0; i < j->nb; i++) {
            const uint16_t *src = (const uint16_t *)W->data + (size_t)(j->r0 + i) * (size_t)cols;
            float *dst = j->wbuf + (size_t)i * (size_t)cols;
            if (W->dtype == RK_DTYPE_BF16)
                for (int c = c0; c < c1; c++)
                    dst[c] = rk__bf16_to_f32(src[c]);
            else
                for (int c = c0; c < c1; c++)
                    dst[c] = rk__f16_to_f32(src[c]);
        }
        B = j->wbuf;
    }
    mt_sgemm(j, B, cols, CblasNoTrans, c0, c1);
}

void rk__matmul_t(struct rk__pool *pool, float *dX, const float *dY, size_t n,
                  const struct rk_weight *W, bool accumulate, float *wbuf, size_t wbuf_floats)
{
    const int rows = W->rows, cols = W->cols;
    /* fp32 weights need no scratch: one block of all rows */
    int B = W->dtype == RK_DTYPE_F32 && !W->panel ? rows : (int)(wbuf_floats / (size_t)cols);
    if (B > rows)
        B = rows;
    if (W->panel) /* whole panels */
        B &= ~15;
    RK_ASSERT(B >= 1 && ((W->dtype == RK_DTYPE_F32 && !W->panel) || wbuf));
    blas_single_threaded();
    for (int r0 = 0; r0 < rows; r0 += B) {
        struct mt_job j = {dX, dY, n, W, wbuf, r0, rows - r0 < B ? rows - r0 : B,
                           accumulate || r0 > 0 ? 1.0f : 0.0f};
        if (!pool || n * (size_t)j.nb * (size_t)cols < PAR_MIN_ELEMS)
            mt_worker(0, 1, &j);
        else
            rk__pool_run(pool, mt_worker, &j);
    }
}

/*
 * q8.c - 8-bit weights (RK_DTYPE_Q8): building them, and the products
 * Y[n][rows] = X[n][cols] * W^T with X quantized per block of 32.
 *
 * The format is GGML's Q8_0: along each row (the input, reduction
 * dimension) the values come in blocks of 32, each block one fp16 scale d
 * and 32 integers q in [-127, 127] (a file may hold -128), value = d * q.
 * From fp32 rows, d = absmax / 127 (held as fp16) and q = round(x / d),
 * halves away from zero, as GGML's reference quantizer does, so a file
 * converted here and a GGUF Q8_0 tensor of the same weights agree.
 *
 * DESIGN. In memory (struct rk_weight with dtype Q8) a matrix is two
 * arrays in panels of 16 rows (W.panel; the last panel padded with rows of
 * zeros), the layout every kernel reads:
 *   data   uint8, q + 128 (the sign bit flipped): panel p, then for each
 *          group g of four columns the 16 rows' four bytes, so value
 *          (16p + l, 4g + j) is byte p*cols*16 + g*64 + l*4 + j;
 *   scale  fp16: panel p, then for each block b the 16 rows' scales.
 * One 64-byte load is then four columns of 16 rows: the AVX-512 VNNI
 * instruction (vpdpbusd) multiplies it, unsigned, by a row of X's four
 * signed bytes broadcast, adding each row's 4-term product into its own
 * lane, so a block of 32 columns is 8 instructions into one register of 16
 * rows, with no horizontal sums, and 16 scales are one 32-byte load. With
 * w + 128 unsigned, sum((w + 128) x) - 128 sum(x) = sum(w x) exactly; the
 * correction -128 sum(x) of each block of X is computed once per
 * activation row and is the start value. The AVX2 path flips the bit back
 * and multiplies |w| by x with w's sign (vpmaddubsw, no saturation at
 * |w| <= 128, |x| <= 127), 8 rows per register. Scales stay fp16 (half the
 * scale bytes of fp32; decode is memory-bound). Row counts are free; cols
 * must be a multiple of 32 (a load error otherwise). Files hold the rows
 * in order (rk__q8_panel_put and rk__q8_row_raw convert one row).
 *
 * The product. Each row of X is quantized per block of 32 the same way as
 * weights, but with an fp32 scale dx and round to nearest even (one C
 * function, used by every path). Output (r, i) is then defined as this
 * exact computation, the reference: y = 0; for each block b in increasing
 * order, p = the integer dot product of the block's 32 weight and
 * activation values (exact in int32, and exact in fp32: |p| < 2^24),
 * d = fp32(ws[b]) * dx[b] (one rounding), y = fma(p, d, y) (one rounding).
 * Integer sums are exact in any order, so the kernels may split a block's
 * sum as they like; the float steps are one per block in order, per row,
 * which every kernel does with rows in lanes. So the AVX2 and VNNI kernels
 * give the reference's bits for any number of rows of X, threads or row
 * range. Against fp32 math the difference is the activation rounding: each
 * block's relative error is at most 1/254 of its largest |x| times the
 * weights' (tests check the bound the docs state).
 */
#pragma GCC optimize("O3")

#include "core_int.h"

#include <math.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define RK_X86 1
#endif

#define QB RK_Q8_BLOCK

/* --- building ------------------------------------------------------------- */

int rk__q8_quantize_row(uint8_t *q, uint16_t *scale, const float *x, size_t cols)
{
    RK_ASSERT(cols % QB == 0);
    for (size_t b = 0; b < cols / QB; b++) {
        const float *v = x + b * QB;
        float amax = 0.0f;
        for (int k = 0; k < QB; k++) {
            if (!isfinite(v[k]))
                return RK_ENUMERIC;
            float a = fabsf(v[k]);
            amax = a > amax ? a : amax;
        }
        float d = amax / 127.0f;
        uint16_t h = rk__f32_to_f16(d);
        float dh = rk__f16_to_f32(h);
        if (!isfinite(dh))
            return RK_ENUMERIC; /* |x| above 127 * 65504 */
        /* A block whose scale rounds to 0 in fp16 (|x| below about 4e-6)
         * dequantizes to zeros whatever q holds: store q = 0 there, and never
         * form 1/d of a subnormal d (an infinite id would make 0 * id NaN). */
        float id = dh != 0.0f ? 1.0f / d : 0.0f;
        scale[b] = h;
        for (int k = 0; k < QB; k++) {
            float r = roundf(v[k] * id);
            int iq = r > 127.0f ? 127 : r < -127.0f ? -127 : (int)r;
            q[b * QB + (size_t)k] = (uint8_t)(iq + 128);
        }
    }
    return RK_OK;
}

int rk__q8_from_q8_0(uint8_t *q, uint16_t *scale, const void *blocks, size_t cols)
{
    RK_ASSERT(cols % QB == 0);
    const unsigned char *p = blocks;
    for (size_t b = 0; b < cols / QB; b++, p += RK_Q8_0_BLOCK_BYTES) {
        uint16_t h = (uint16_t)(p[0] | p[1] << 8); /* little-endian fp16 */
        if (!isfinite(rk__f16_to_f32(h)))
            return RK_ENUMERIC;
        scale[b] = h;
        for (int k = 0; k < QB; k++)
            q[b * QB + (size_t)k] = p[2 + k] ^ 0x80u;
    }
    return RK_OK;
}

int rk__q8_from_i8(uint8_t *q, uint16_t *scale, const void *qs, const void *scales, size_t cols)
{
    RK_ASSERT(cols % QB == 0);
    const unsigned char *s = scales, *v = qs;
    for (size_t b = 0; b < cols / QB; b++) {
        uint16_t h = (uint16_t)(s[2 * b] | s[2 * b + 1] << 8);
        if (!isfinite(rk__f16_to_f32(h)))
            return RK_ENUMERIC;
        scale[b] = h;
    }
    for (size_t k = 0; k < cols; k++)
        q[k] = v[k] ^ 0x80u;
    return RK_OK;
}

/* --- the panel layout -------------------------------------------------------- */

size_t rk__q8_panel_rows(size_t rows) { return (rows + 15) & ~(size_t)15; }

void rk__q8_panel_init(uint8_t *q, uint16_t *scale, size_t rows, size_t cols)
{
    size_t pr = rk__q8_panel_rows(rows);
    memset(q, 0x80, pr * cols); /* value 0 */
    memset(scale, 0, pr * (cols / QB) * sizeof(uint16_t));
}

void rk__q8_panel_put(uint8_t *q, uint16_t *scale, size_t cols, size_t r, const uint8_t *rq,
                      const uint16_t *rs)
{
    size_t nb = cols / QB;
    uint8_t *P = q + (r >> 4) * cols * 16 + (r & 15) * 4;
    for (size_t g = 0; g < cols / 4; g++)
        memcpy(P + g * 64, rq + 4 * g, 4);
    uint16_t *S = scale + (r >> 4) * nb * 16 + (r & 15);
    for (size_t b = 0; b < nb; b++)
        S[b * 16] = rs[b];
}

/* Where value (r, k) and the scale of (r, block b) live. */
static inline size_t q_at(const struct rk_weight *W, size_t r, size_t k)
{
    size_t cols = (size_t)W->cols;
    return W->panel ? (r >> 4) * cols * 16 + (k >> 2) * 64 + (r & 15) * 4 + (k & 3)
                    : r * cols + k;
}

static inline size_t s_at(const struct rk_weight *W, size_t r, size_t b)
{
    size_t nb = (size_t)W->cols / QB;
    return W->panel ? ((r >> 4) * nb + b) * 16 + (r & 15) : r * nb + b;
}

/* Value (as stored: + 128) and scale at the given positions, either form. */
static inline int q_raw(const struct rk_weight *W, size_t i)
{
    unsigned v = ((const uint8_t *)W->data)[i];
    return (int)(W->i8_scales ? v ^ 0x80u : v);
}

static inline uint16_t s_raw(const struct rk_weight *W, size_t i)
{
    if (W->i8_scales)
        return (uint16_t)(W->i8_scales[2 * i] | W->i8_scales[2 * i + 1] << 8);
    return W->scale[i];
}

void rk__q8_row_raw(const struct rk_weight *W, int r, uint8_t *q, uint16_t *scale)
{
    size_t cols = (size_t)W->cols, nb = cols / QB;
    for (size_t k = 0; k < cols; k++)
        q[k] = (uint8_t)q_raw(W, q_at(W, (size_t)r, k));
    for (size_t b = 0; b < nb; b++)
        scale[b] = s_raw(W, s_at(W, (size_t)r, b));
}

void rk__q8_dequant(float *out, const struct rk_weight *W, int r, int c0, int c1)
{
    RK_ASSERT(W->dtype == RK_DTYPE_Q8 && c0 >= 0 && c1 <= W->cols);
    if (W->panel) { /* the backward's blocks of rows: the row's groups 64 bytes apart */
        size_t cols = (size_t)W->cols, nb = cols / QB, ru = (size_t)r;
        const uint8_t *P = (const uint8_t *)W->data + (ru >> 4) * cols * 16 + (ru & 15) * 4;
        const uint16_t *S = W->scale + (ru >> 4) * nb * 16 + (ru & 15);
        for (int c = c0; c < c1;) {
            int e = (c / QB + 1) * QB < c1 ? (c / QB + 1) * QB : c1;
            float d = rk__f16_to_f32(S[(size_t)(c / QB) * 16]);
            for (int k = c; k < e; k++)
                out[k - c0] = d * (float)((int)P[(size_t)(k >> 2) * 64 + (size_t)(k & 3)] - 128);
            c = e;
        }
        return;
    }
    for (int c = c0; c < c1;) { /* a block (or the part of one in range) at a time */
        int e = (c / QB + 1) * QB < c1 ? (c / QB + 1) * QB : c1;
        float d = rk__f16_to_f32(s_raw(W, s_at(W, (size_t)r, (size_t)(c / QB))));
        for (int k = c; k < e; k++)
            out[k - c0] = d * (float)(q_raw(W, q_at(W, (size_t)r, (size_t)k)) - 128);
        c = e;
    }
}

float rk__q8_at(const struct rk_weight *W, size_t idx)
{
    size_t cols = (size_t)W->cols, r = idx / cols, k = idx % cols;
    int q = q_raw(W, q_at(W, r, k)) - 128;
    return rk__f16_to_f32(s_raw(W, s_at(W, r, k / QB))) * (float)q;
}

/* --- activations ----------------------------------------------------------- */

size_t rk__q8x_bytes(size_t n, size_t cols)
{
    /* quants, the per-block start values and the scales, each part a
     * multiple of 64 bytes */
    size_t nb = cols / QB;
    return ((n * cols + 63) & ~(size_t)63) + 2 * ((n * nb * 4 + 63) & ~(size_t)63);
}

/* One block of 32 activations: q, its start value -128 * sum(q), the scale
 * (NaN where the block holds a NaN or Inf). The definition. */
static void quant_block_ref(const float *v, int8_t *q, int32_t *bsum, float *dout)
{
    float amax = 0.0f;
    bool bad = false;
    for (int k = 0; k < QB; k++) {
        float a = fabsf(v[k]);
        bad |= !(a <= 3.4028235e38f);
        amax = a > amax ? a : amax;
    }
    float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    int32_t sum = 0;
    for (int k = 0; k < QB; k++) {
        /* round to nearest even: |v id| <= 127 (plus rounding) < 2^22 */
        float r = (v[k] * id + 12582912.0f) - 12582912.0f;
        r = r > 127.0f ? 127.0f : r < -127.0f ? -127.0f : r;
        q[k] = bad ? 0 : (int8_t)r;
        sum += q[k];
    }
    *bsum = -128 * sum;
    *dout = bad ? NAN : d; /* NaN or Inf in: NaN out */
}

#ifdef RK_X86
/* The same block with AVX-512: the same operations lane by lane (a product
 * and a sum, rounded apart, as the C above compiles in ISO C), so the same
 * bits. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512dq"))) static void
quant_block_avx512(const float *v, int8_t *q, int32_t *bsum, float *dout)
{
    __m512 v0 = _mm512_loadu_ps(v), v1 = _mm512_loadu_ps(v + 16);
    __m512 a0 = _mm512_abs_ps(v0), a1 = _mm512_abs_ps(v1);
    const __m512 big = _mm512_set1_ps(3.4028235e38f);
    __mmask16 ok0 = _mm512_cmp_ps_mask(a0, big, _CMP_LE_OQ),
              ok1 = _mm512_cmp_ps_mask(a1, big, _CMP_LE_OQ);
    if ((ok0 & ok1) != 0xffff) {
        memset(q, 0, QB);
        *bsum = 0;
        *dout = NAN;
        return;
    }
    float amax = _mm512_reduce_max_ps(_mm512_max_ps(a0, a1));
    float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    const __m512 vid = _mm512_set1_ps(id), magic = _mm512_set1_ps(12582912.0f),
                 hi = _mm512_set1_ps(127.0f), lo = _mm512_set1_ps(-127.0f);
    __m512 r0 = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(v0, vid), magic), magic);
    __m512 r1 = _mm512_sub_ps(_mm512_add_ps(_mm512_mul_ps(v1, vid), magic), magic);
    __m512i i0 = _mm512_cvttps_epi32(_mm512_max_ps(_mm512_min_ps(r0, hi), lo));
    __m512i i1 = _mm512_cvttps_epi32(_mm512_max_ps(_mm512_min_ps(r1, hi), lo));
    _mm_storeu_si128((__m128i *)q, _mm512_cvtepi32_epi8(i0));
    _mm_storeu_si128((__m128i *)(q + 16), _mm512_cvtepi32_epi8(i1));
    *bsum = -128 * _mm512_reduce_add_epi32(_mm512_add_epi32(i0, i1));
    *dout = d;
}
#endif

void rk__q8x_quantize_kind(bool ref, struct rk__q8x *xq, void *buf, const float *X, size_t n,
                           size_t cols)
{
    RK_ASSERT(cols % QB == 0 && ((uintptr_t)buf & 63) == 0);
    size_t nb = cols / QB, qbytes = (n * cols + 63) & ~(size_t)63,
           sbytes = (n * nb * 4 + 63) & ~(size_t)63;
    xq->q = buf;
    xq->bsum = (int32_t *)((char *)buf + qbytes);
    xq->d = (float *)((char *)buf + qbytes + sbytes);
    xq->n = n;
    xq->cols = cols;
    void (*blk)(const float *, int8_t *, int32_t *, float *) = quant_block_ref;
#ifdef RK_X86
    if (!ref && rk__cpu()->avx512)
        blk = quant_block_avx512;
#endif
    for (size_t i = 0; i < n; i++)
        for (size_t b = 0; b < nb; b++)
            blk(X + i * cols + b * QB, xq->q + i * cols + b * QB, &xq->bsum[i * nb + b],
                &xq->d[i * nb + b]);
}

void rk__q8x_quantize(struct rk__q8x *xq, void *buf, const float *X, size_t n, size_t cols)
{
    rk__q8x_quantize_kind(false, xq, buf, X, n, cols);
}

/* --- reference ------------------------------------------------------------- */

/* Output columns yoff.. of Y for weight rows [r0, r1): the definition. */
static void rows_ref(float *Y, size_t ldy, int yoff, const struct rk__q8x *xq,
                     const struct rk_weight *W, int r0, int r1)
{
    size_t cols = (size_t)W->cols, nb = cols / QB;
    const uint8_t *wq = W->data;
    for (int r = r0; r < r1; r++)
        for (size_t i = 0; i < xq->n; i++) {
            const int8_t *x = xq->q + i * cols;
            float y = 0.0f;
            for (size_t b = 0; b < nb; b++) {
                int32_t p = 0;
                for (size_t k = b * QB; k < (b + 1) * QB; k++)
                    p += ((int32_t)wq[q_at(W, (size_t)r, k)] - 128) * x[k];
                float d = rk__f16_to_f32(W->scale[s_at(W, (size_t)r, b)]) * xq->d[i * nb + b];
                y = fmaf((float)p, d, y);
            }
            Y[i * ldy + (size_t)(r - yoff)] = y;
        }
}

#ifdef RK_X86
static inline int32_t ld32(const int8_t *p)
{
    int32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* Lanes [l0, l1) of the 16 results v of one panel into y[0 .. l1 - l0). */
static inline void put_lanes(float *y, const float *v, int l0, int l1)
{
    for (int l = l0; l < l1; l++)
        y[l - l0] = v[l];
}

/* The panels over weight rows [r0, r1): for each, the lanes [l0, l1) in
 * range, and the column of Y that lane 0 would have (ycol + l0 >= 0). */
#define FOR_PANELS(W, r0, r1, yoff, BODY)                                                  \
    do {                                                                                   \
        size_t cols_ = (size_t)(W)->cols, nb_ = cols_ / QB;                                \
        for (int p_ = (r0) >> 4; p_ <= ((r1) - 1) >> 4; p_++) {                            \
            int l0 = (r0) > 16 * p_ ? (r0) - 16 * p_ : 0;                                  \
            int l1 = (r1) < 16 * p_ + 16 ? (r1) - 16 * p_ : 16;                            \
            long ycol = 16L * p_ - (yoff);                                                 \
            const uint8_t *P = (const uint8_t *)(W)->data + (size_t)p_ * cols_ * 16;       \
            const uint16_t *S = (W)->scale + (size_t)p_ * nb_ * 16;                         \
            BODY;                                                                          \
        }                                                                                  \
    } while (0)

/* --- AVX2 ------------------------------------------------------------------ */

#define AVX2 __attribute__((target("avx2,fma,f16c")))

/* One panel (16 weight rows: lanes 0-7 and 8-15, one half at a time)
 * against NX rows of X from i0. Per block and half, the 32-term integer dot
 * products of 8 rows (vpmaddubsw on |w| and x with w's sign, then
 * vpmaddwd), then one fma per row with the block's scale product; the
 * fp32 results wait in y[] between blocks (16 registers hold no more). */
AVX2 static inline __attribute__((always_inline)) void
panel_avx2(float *Y, size_t ldy, long ycol, int l0, int l1, const struct rk__q8x *xq, size_t i0,
           int NX, const uint8_t *P, const uint16_t *S, size_t nb)
{
    size_t cols = xq->cols;
    const __m256i flip = _mm256_set1_epi8((char)0x80), ones = _mm256_set1_epi16(1);
    float y[8][16];
    for (int i = 0; i < NX; i++)
        for (int l = 0; l < 16; l++)
            y[i][l] = 0.0f;
    for (size_t b = 0; b < nb; b++) {
        const uint8_t *pb = P + b * 512;
        for (int h = 0; h < 2; h++) {
            __m256i acc[8];
            for (int i = 0; i < NX; i++)
                acc[i] = _mm256_setzero_si256();
            for (int g = 0; g < 8; g++) {
                __m256i w = _mm256_xor_si256(
                    _mm256_loadu_si256((const __m256i *)(pb + 64 * g + 32 * h)), flip);
                __m256i aw = _mm256_abs_epi8(w);
                for (int i = 0; i < NX; i++) {
                    const int8_t *x = xq->q + (i0 + (size_t)i) * cols + b * QB + 4 * (size_t)g;
                    __m256i p = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(_mm256_set1_epi32(ld32(x)), w));
                    acc[i] = _mm256_add_epi32(acc[i], _mm256_madd_epi16(p, ones));
                }
            }
            __m256 sv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(S + b * 16 + 8 * h)));
            for (int i = 0; i < NX; i++) {
                __m256 d = _mm256_mul_ps(sv, _mm256_set1_ps(xq->d[(i0 + (size_t)i) * nb + b]));
                _mm256_storeu_ps(y[i] + 8 * h,
                                 _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[i]), d,
                                                 _mm256_loadu_ps(y[i] + 8 * h)));
            }
        }
    }
    for (int i = 0; i < NX; i++)
        put_lanes(Y + (i0 + (size_t)i) * ldy + (size_t)(ycol + l0), y[i], l0, l1);
}

AVX2 static void rows_avx2(float *Y, size_t ldy, int yoff, const struct rk__q8x *xq,
                           const struct rk_weight *W, int r0, int r1)
{
    FOR_PANELS(W, r0, r1, yoff, {
        size_t i = 0;
        for (; i + 8 <= xq->n; i += 8)
            panel_avx2(Y, ldy, ycol, l0, l1, xq, i, 8, P, S, nb_);
        if (i + 4 <= xq->n) {
            panel_avx2(Y, ldy, ycol, l0, l1, xq, i, 4, P, S, nb_);
            i += 4;
        }
        if (i + 2 <= xq->n) {
            panel_avx2(Y, ldy, ycol, l0, l1, xq, i, 2, P, S, nb_);
            i += 2;
        }
        if (i < xq->n)
            panel_avx2(Y, ldy, ycol, l0, l1, xq, i, 1, P, S, nb_);
    });
}

/* --- AVX-512 VNNI ------------------------------------------------------------ */

#define VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c")))

/* One panel (16 weight rows, one per lane) against NX rows of X from i0.
 * Per block: the 8 groups' 64-byte vectors (16 rows x 4 bytes, held + 128)
 * against each row's 4 bytes broadcast, vpdpbusd in two chains that start
 * from the block's correction -128 sum(x) and 0; then one fma per row. */
#ifndef PF_AHEAD
#define PF_AHEAD 8192 /* bytes of the panel stream fetched ahead */
#endif

VNNI static inline __attribute__((always_inline)) void
panel_vnni(float *Y, size_t ldy, long ycol, int l0, int l1, const struct rk__q8x *xq, size_t i0,
           int NX, const uint8_t *P, const uint16_t *S, size_t nb)
{
    size_t cols = xq->cols;
    __m512 y[8];
    for (int i = 0; i < NX; i++)
        y[i] = _mm512_setzero_ps();
    for (size_t b = 0; b < nb; b++) {
        const uint8_t *pb = P + b * 512;
        if (i0 == 0) /* the first pass over this panel reads it from memory */
            for (int g = 0; g < 8; g++)
                _mm_prefetch((const char *)pb + PF_AHEAD + 64 * g, _MM_HINT_T0);
        __m512i w[8];
        for (int g = 0; g < 8; g++)
            w[g] = _mm512_loadu_si512(pb + 64 * g);
        __m512 sv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(S + b * 16)));
        for (int i = 0; i < NX; i++) {
            const int8_t *x = xq->q + (i0 + (size_t)i) * cols + b * QB;
            __m512i a = _mm512_set1_epi32(xq->bsum[(i0 + (size_t)i) * nb + b]);
            __m512i c = _mm512_setzero_si512();
            for (int g = 0; g < 8; g += 2) {
                a = _mm512_dpbusd_epi32(a, w[g], _mm512_set1_epi32(ld32(x + 4 * g)));
                c = _mm512_dpbusd_epi32(c, w[g + 1], _mm512_set1_epi32(ld32(x + 4 * g + 4)));
            }
            __m512 d = _mm512_mul_ps(sv, _mm512_set1_ps(xq->d[(i0 + (size_t)i) * nb + b]));
            y[i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(a, c)), d, y[i]);
        }
    }
    for (int i = 0; i < NX; i++) {
        float *yr = Y + (i0 + (size_t)i) * ldy + (size_t)(ycol + l0);
        if (l0 == 0 && l1 == 16) {
            _mm512_storeu_ps(yr, y[i]);
        } else {
            float v[16];
            _mm512_storeu_ps(v, y[i]);
            put_lanes(yr, v, l0, l1);
        }
    }
}

VNNI static void rows_vnni(float *Y, size_t ldy, int yoff, const struct rk__q8x *xq,
                           const struct rk_weight *W, int r0, int r1)
{
    FOR_PANELS(W, r0, r1, yoff, {
        size_t i = 0;
        for (; i + 8 <= xq->n; i += 8)
            panel_vnni(Y, ldy, ycol, l0, l1, xq, i, 8, P, S, nb_);
        switch (xq->n - i) {
        case 7: panel_vnni(Y, ldy, ycol, l0, l1, xq, i, 7, P, S, nb_); break;
        case 6: panel_vnni(Y, ldy, ycol, l0, l1, xq, i, 6, P, S, nb_); break;
        case 5: panel_vnni(Y, ldy, ycol, l0, l1, xq, i, 5, P, S, nb_); break;
        case 4: panel_vnni(Y, ldy, ycol, l0, l1, xq, i, 4, P, S, nb_); break;
        case 3: panel_vnni(Y, ldy, ycol, l0, l1, xq, i, 3, P, S, nb_); break;
        case 2: panel_vnni(Y, ldy, ycol, l0, l1, xq, i, 2, P, S, nb_); break;
        case 1: panel_vnni(Y, ldy, ycol, l0, l1, xq, i, 1, P, S, nb_); break;
        default: break;
        }
    });
}
#endif /* RK_X86 */

/* --- dispatch ---------------------------------------------------------------- */

bool rk__q8_kern_runs(int kind)
{
    switch (kind) {
    case RK_Q8_REF: return true;
#ifdef RK_X86
    case RK_Q8_AVX2:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case RK_Q8_VNNI:
        return rk__q8_kern_runs(RK_Q8_AVX2) && __builtin_cpu_supports("avx512f") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vnni");
#endif
    default: return false;
    }
}

void rk__q8_rows(int kind, float *Y, size_t ldy, int yoff, const struct rk__q8x *xq,
                 const struct rk_weight *W, int r0, int r1)
{
    RK_ASSERT(W->dtype == RK_DTYPE_Q8 && (size_t)W->cols == xq->cols && !W->i8_scales);
    if (r0 >= r1 || xq->n == 0)
        return;
#ifdef RK_X86
    if (!W->panel) /* the kernels read panels; a row-major matrix takes the definition */
        kind = RK_Q8_REF;
#endif
    switch (kind) {
#ifdef RK_X86
    case RK_Q8_VNNI: rows_vnni(Y, ldy, yoff, xq, W, r0, r1); return;
    case RK_Q8_AVX2: rows_avx2(Y, ldy, yoff, xq, W, r0, r1); return;
#endif
    default: rows_ref(Y, ldy, yoff, xq, W, r0, r1); return;
    }
}

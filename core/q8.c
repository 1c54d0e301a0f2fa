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
 * arrays, both row-major:
 *   data   uint8 [rows][cols], q + 128 (the sign bit flipped);
 *   scale  fp16  [rows][cols / 32], one per block.
 * Quants and scales apart so that a row's quants are one contiguous run
 * that the kernels stream in 64-byte loads (two blocks), and 16 scales
 * are one 32-byte load widened by one instruction. The quants are held
 * offset to unsigned because the AVX-512 VNNI instruction (vpdpbusd)
 * multiplies unsigned by signed bytes: with w + 128 unsigned and the
 * activation x signed, sum((w + 128) x) - 128 sum(x) = sum(w x) exactly,
 * and the correction -128 sum(x) of each group of four bytes is computed
 * once per activation row and is the accumulator's start value, so one
 * instruction does a 64-byte step. The AVX2 path flips the bit back and
 * multiplies |w| by x with w's sign (vpmaddubsw, no saturation at
 * |w| <= 128, |x| <= 127). Scales stay fp16 (half the scale bytes of
 * fp32; decode is memory-bound). Row counts are free; cols must be a
 * multiple of 32 (a load error otherwise).
 *
 * The product. Each row of X is quantized per block of 32 the same way as
 * weights, but with an fp32 scale dx and round to nearest even (one C
 * function, used by every path). Output (r, i) is then defined as this
 * exact computation, the reference: for block b, for the group j < 8 of
 * four consecutive bytes, p = the integer dot product of those four
 * weight and activation values (exact), d = fp32(ws[b]) * dx[b] (one
 * rounding), and accumulator lane (b % 2) * 8 + j becomes
 * fma(p, d, lane) (one rounding), blocks in increasing order; the 16
 * lanes are summed as a tree: lane j + lane j+8, then the halves of the
 * 8, 4 and 2 that remain. That is the order in which the 512-bit path
 * adds (two blocks per register) and the 256-bit path with one register
 * for even and one for odd blocks, so the AVX2 and VNNI kernels give the
 * reference's bits, for any number of rows of X, threads or tile shape.
 * Against fp32 math the difference is the activation rounding: each
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

void rk__q8_dequant(float *out, const struct rk_weight *W, int r, int c0, int c1)
{
    RK_ASSERT(W->dtype == RK_DTYPE_Q8 && c0 >= 0 && c1 <= W->cols);
    size_t cols = (size_t)W->cols, nb = cols / QB;
    const uint8_t *q = (const uint8_t *)W->data + (size_t)r * cols;
    const uint16_t *s = W->scale + (size_t)r * nb;
    for (int c = c0; c < c1;) { /* a block (or the part of one in range) at a time */
        int e = (c / QB + 1) * QB < c1 ? (c / QB + 1) * QB : c1;
        float d = rk__f16_to_f32(s[c / QB]);
        for (int k = c; k < e; k++)
            out[k - c0] = d * (float)((int)q[k] - 128);
        c = e;
    }
}

float rk__q8_at(const struct rk_weight *W, size_t idx)
{
    size_t cols = (size_t)W->cols;
    int q = (int)((const uint8_t *)W->data)[idx] - 128;
    return rk__f16_to_f32(W->scale[(idx / cols) * (cols / QB) + (idx % cols) / QB]) * (float)q;
}

/* --- activations ----------------------------------------------------------- */

size_t rk__q8x_bytes(size_t n, size_t cols)
{
    /* quants, the VNNI start values (one int32 per 4 bytes) and the scales,
     * each part a multiple of 64 bytes */
    size_t nb = cols / QB;
    return 2 * ((n * cols + 63) & ~(size_t)63) + ((n * nb * 4 + 63) & ~(size_t)63);
}

void rk__q8x_quantize(struct rk__q8x *xq, void *buf, const float *X, size_t n, size_t cols)
{
    RK_ASSERT(cols % QB == 0 && ((uintptr_t)buf & 63) == 0);
    size_t nb = cols / QB, qbytes = (n * cols + 63) & ~(size_t)63;
    xq->q = buf;
    xq->bias = (int32_t *)((char *)buf + qbytes);
    xq->d = (float *)((char *)buf + 2 * qbytes);
    xq->n = n;
    xq->cols = cols;
    for (size_t i = 0; i < n; i++)
        for (size_t b = 0; b < nb; b++) {
            const float *v = X + i * cols + b * QB;
            int8_t *q = xq->q + i * cols + b * QB;
            int32_t *bias = xq->bias + (i * cols + b * QB) / 4;
            float amax = 0.0f;
            bool bad = false;
            for (int k = 0; k < QB; k++) {
                float a = fabsf(v[k]);
                bad |= !(a <= 3.4028235e38f);
                amax = a > amax ? a : amax;
            }
            float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
            for (int k = 0; k < QB; k++) {
                /* round to nearest even: |v id| <= 127 (plus rounding) < 2^22 */
                float r = (v[k] * id + 12582912.0f) - 12582912.0f;
                r = r > 127.0f ? 127.0f : r < -127.0f ? -127.0f : r;
                q[k] = bad ? 0 : (int8_t)r;
            }
            for (int j = 0; j < QB / 4; j++)
                bias[j] = -128 * (q[4 * j] + q[4 * j + 1] + q[4 * j + 2] + q[4 * j + 3]);
            xq->d[i * nb + b] = bad ? NAN : d; /* NaN or Inf in: NaN out */
        }
}

/* --- reference ------------------------------------------------------------- */

/* The 16 lanes summed in the documented tree. */
static inline float lanes_sum(const float *a)
{
    float h[8];
    for (int j = 0; j < 8; j++)
        h[j] = a[j] + a[j + 8];
    for (int j = 0; j < 4; j++)
        h[j] = h[j] + h[j + 4];
    for (int j = 0; j < 2; j++)
        h[j] = h[j] + h[j + 2];
    return h[0] + h[1];
}

static void rows_ref(float *Y, size_t ldy, int yoff, const struct rk__q8x *xq,
                     const struct rk_weight *W, int r0, int r1)
{
    size_t cols = (size_t)W->cols, nb = cols / QB;
    for (int r = r0; r < r1; r++) {
        const uint8_t *wq = (const uint8_t *)W->data + (size_t)r * cols;
        const uint16_t *ws = W->scale + (size_t)r * nb;
        for (size_t i = 0; i < xq->n; i++) {
            const int8_t *x = xq->q + i * cols;
            const float *dx = xq->d + i * nb;
            float acc[16] = {0};
            for (size_t b = 0; b < nb; b++) {
                float d = rk__f16_to_f32(ws[b]) * dx[b];
                for (int j = 0; j < 8; j++) {
                    int p = 0;
                    for (int k = 0; k < 4; k++) {
                        size_t c = b * QB + 4 * (size_t)j + (size_t)k;
                        p += ((int)wq[c] - 128) * x[c];
                    }
                    float *a = &acc[(b & 1) * 8 + (size_t)j];
                    *a = fmaf((float)p, d, *a);
                }
            }
            Y[i * ldy + (size_t)(r - yoff)] = lanes_sum(acc);
        }
    }
}

#ifdef RK_X86
/* --- AVX2 ------------------------------------------------------------------ */

#define AVX2 __attribute__((target("avx2,fma,f16c")))

AVX2 static inline float sum8x2_avx2(__m256 e, __m256 o)
{
    __m256 h = _mm256_add_ps(e, o);
    __m128 v = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    v = _mm_add_ps(v, _mm_movehl_ps(v, v));
    return _mm_cvtss_f32(_mm_add_ss(v, _mm_shuffle_ps(v, v, 1)));
}

/* One weight row against NX rows of X (NX constant per call site). */
AVX2 static inline __attribute__((always_inline)) void
row_avx2(float *Y, size_t ldy, size_t yi, const struct rk__q8x *xq, size_t i0, int NX,
         const uint8_t *wq, const uint16_t *ws, size_t nb)
{
    size_t cols = xq->cols;
    __m256 acc[4][2];
    for (int i = 0; i < NX; i++)
        acc[i][0] = acc[i][1] = _mm256_setzero_ps();
    const __m256i flip = _mm256_set1_epi8((char)0x80), ones = _mm256_set1_epi16(1);
    for (size_t b = 0; b < nb; b++) {
        __m256i w = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(wq + b * QB)), flip);
        __m256i aw = _mm256_abs_epi8(w);
        float wd = _cvtsh_ss(ws[b]);
        int o = (int)(b & 1);
        for (int i = 0; i < NX; i++) {
            size_t xi = (i0 + (size_t)i) * cols + b * QB;
            __m256i x = _mm256_loadu_si256((const __m256i *)(xq->q + xi));
            __m256i p16 = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(x, w));
            __m256 p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
            __m256 d = _mm256_set1_ps(wd * xq->d[(i0 + (size_t)i) * nb + b]);
            acc[i][o] = _mm256_fmadd_ps(p, d, acc[i][o]);
        }
    }
    for (int i = 0; i < NX; i++)
        Y[(i0 + (size_t)i) * ldy + yi] = sum8x2_avx2(acc[i][0], acc[i][1]);
}

AVX2 static void rows_avx2(float *Y, size_t ldy, int yoff, const struct rk__q8x *xq,
                           const struct rk_weight *W, int r0, int r1)
{
    size_t cols = (size_t)W->cols, nb = cols / QB;
    for (int r = r0; r < r1; r++) {
        const uint8_t *wq = (const uint8_t *)W->data + (size_t)r * cols;
        const uint16_t *ws = W->scale + (size_t)r * nb;
        size_t yi = (size_t)(r - yoff), i = 0;
        for (; i + 4 <= xq->n; i += 4)
            row_avx2(Y, ldy, yi, xq, i, 4, wq, ws, nb);
        switch (xq->n - i) {
        case 3: row_avx2(Y, ldy, yi, xq, i, 3, wq, ws, nb); break;
        case 2: row_avx2(Y, ldy, yi, xq, i, 2, wq, ws, nb); break;
        case 1: row_avx2(Y, ldy, yi, xq, i, 1, wq, ws, nb); break;
        default: break;
        }
    }
}

/* --- AVX-512 VNNI ------------------------------------------------------------ */

#define VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c")))

VNNI static inline float sum16_vnni(__m512 a)
{
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(a),
                             _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
    __m128 v = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
    v = _mm_add_ps(v, _mm_movehl_ps(v, v));
    return _mm_cvtss_f32(_mm_add_ss(v, _mm_shuffle_ps(v, v, 1)));
}

/* NR weight rows (r .. r+NR-1) against NX rows of X (i0 ..), both constant
 * per call site: NR * NX accumulators of 16 lanes, one 64-byte step (two
 * blocks) at a time, 16 blocks' scales per load. */
VNNI static inline __attribute__((always_inline)) void
tile_vnni(float *Y, size_t ldy, size_t yi, const struct rk__q8x *xq, size_t i0, int NX,
          const uint8_t *wq, const uint16_t *ws, int NR, size_t nb)
{
    size_t cols = xq->cols, nchunk = (nb + 1) / 2;
    __m512 acc[4][4];
    for (int r = 0; r < NR; r++)
        for (int i = 0; i < NX; i++)
            acc[r][i] = _mm512_setzero_ps();
    for (size_t g = 0; g < nb; g += 16) {
        size_t left = nb - g;
        __mmask16 mb = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
        __m512 wsv[4], xdv[4];
        for (int r = 0; r < NR; r++) {
            const uint16_t *p = ws + (size_t)r * nb + g;
            if (left >= 16) {
                wsv[r] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
            } else { /* through a copy: a masked load here streams slowly */
                uint16_t t[16] = {0};
                memcpy(t, p, left * sizeof(uint16_t));
                wsv[r] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)t));
            }
        }
        for (int i = 0; i < NX; i++) {
            const float *p = xq->d + (i0 + (size_t)i) * nb + g;
            xdv[i] = left >= 16 ? _mm512_loadu_ps(p) : _mm512_maskz_loadu_ps(mb, p);
        }
        size_t k1 = g / 2 + 8 < nchunk ? g / 2 + 8 : nchunk;
        for (size_t k = g / 2; k < k1; k++) {
            int kk = (int)(k - g / 2);
            __m512i idx = _mm512_inserti64x4(_mm512_set1_epi32(2 * kk),
                                             _mm256_set1_epi32(2 * kk + 1), 1);
            bool half = 2 * k + 1 == nb; /* odd block count: the last step holds one */
            __mmask64 mq = half ? (__mmask64)0xffffffffu : ~(__mmask64)0;
            __mmask16 ml = half ? (__mmask16)0x00ff : (__mmask16)0xffff;
            __m512i w[4];
            __m512 wb[4];
            /* plain loads but for the half step: masked loads that miss the
             * caches stream far slower (measured on a Zen 4) */
            for (int r = 0; r < NR; r++) {
                const char *pw = (const char *)wq + (size_t)r * cols + 64 * k;
                /* the rows of the tile after next: NR streams that the
                 * hardware prefetcher alone follows too late */
                _mm_prefetch(pw + (size_t)(2 * NR) * cols, _MM_HINT_T0);
                w[r] = half ? _mm512_maskz_loadu_epi8(mq, pw) : _mm512_loadu_si512(pw);
                wb[r] = _mm512_permutexvar_ps(idx, wsv[r]);
            }
            for (int i = 0; i < NX; i++) {
                size_t xo = (i0 + (size_t)i) * cols + 64 * k;
                __m512i x = half ? _mm512_maskz_loadu_epi8(mq, xq->q + xo)
                                 : _mm512_loadu_si512(xq->q + xo);
                __m512i s = half ? _mm512_maskz_loadu_epi32(ml, xq->bias + xo / 4)
                                 : _mm512_loadu_si512(xq->bias + xo / 4);
                __m512 xb = _mm512_permutexvar_ps(idx, xdv[i]);
                for (int r = 0; r < NR; r++) {
                    __m512 p = _mm512_cvtepi32_ps(_mm512_dpbusd_epi32(s, w[r], x));
                    acc[r][i] = _mm512_mask3_fmadd_ps(p, _mm512_mul_ps(wb[r], xb), acc[r][i],
                                                      ml);
                }
            }
        }
    }
    for (int r = 0; r < NR; r++)
        for (int i = 0; i < NX; i++)
            Y[(i0 + (size_t)i) * ldy + yi + (size_t)r] = sum16_vnni(acc[r][i]);
}

#define TILE_ROWS(NR)                                                                      \
    do {                                                                                   \
        size_t i_ = 0;                                                                     \
        for (; i_ + 4 <= xq->n; i_ += 4)                                                   \
            tile_vnni(Y, ldy, yi, xq, i_, 4, wq, ws, NR, nb);                               \
        switch (xq->n - i_) {                                                              \
        case 3: tile_vnni(Y, ldy, yi, xq, i_, 3, wq, ws, NR, nb); break;                    \
        case 2: tile_vnni(Y, ldy, yi, xq, i_, 2, wq, ws, NR, nb); break;                    \
        case 1: tile_vnni(Y, ldy, yi, xq, i_, 1, wq, ws, NR, nb); break;                    \
        default: break;                                                                    \
        }                                                                                  \
    } while (0)

VNNI static void rows_vnni(float *Y, size_t ldy, int yoff, const struct rk__q8x *xq,
                           const struct rk_weight *W, int r0, int r1)
{
    size_t cols = (size_t)W->cols, nb = cols / QB;
    int r = r0;
    for (; r + 4 <= r1; r += 4) {
        const uint8_t *wq = (const uint8_t *)W->data + (size_t)r * cols;
        const uint16_t *ws = W->scale + (size_t)r * nb;
        size_t yi = (size_t)(r - yoff);
        TILE_ROWS(4);
    }
    for (; r < r1; r++) {
        const uint8_t *wq = (const uint8_t *)W->data + (size_t)r * cols;
        const uint16_t *ws = W->scale + (size_t)r * nb;
        size_t yi = (size_t)(r - yoff);
        TILE_ROWS(1);
    }
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
    RK_ASSERT(W->dtype == RK_DTYPE_Q8 && (size_t)W->cols == xq->cols);
    switch (kind) {
#ifdef RK_X86
    case RK_Q8_VNNI: rows_vnni(Y, ldy, yoff, xq, W, r0, r1); return;
    case RK_Q8_AVX2: rows_avx2(Y, ldy, yoff, xq, W, r0, r1); return;
#endif
    default: rows_ref(Y, ldy, yoff, xq, W, r0, r1); return;
    }
}

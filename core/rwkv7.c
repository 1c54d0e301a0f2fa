/*
 * rwkv7.c - the RWKV-7 ("x070") forward pass: contexts, one token, a sequence
 * (prefill) and a batched decode step.
 *
 * Follows the per-token math of RWKV-v7/rwkv_v7_numpy.py (time_mixing and
 * channel_mixing), written here for R rows at once so that every linear layer
 * is one matmul over the rows:
 *   - sequence mode: the R rows are consecutive tokens of ONE sequence; token
 *     shift reads the previous row, and the WKV recurrence runs over the rows
 *     in order on the single state;
 *   - batch mode: the R rows are the next tokens of R different sequences;
 *     every row has its own state for both token shift and WKV.
 * Scratch lives in one block per context (no allocation per token).
 * Orientation: wkv state S[h][i][j], i = value channel, j = key channel.
 */
#include "core_int.h"

#include <math.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define RK_X86 1
#endif

#define N RK_HEAD_SIZE
#define LN_EPS 1e-5f
#define GN_EPS (64e-5f)
#define WKV_PF_ROWS 2 /* rows ahead that the WKV pass fetches (1 to 8: same speed) */
#define DECAY_SCALE 0.6065306597126334f /* e^-0.5 */

struct rk_ctx {
    const struct rk_model *m;
    struct rk__pool *pool;
    bool ref;
    bool amx; /* rk_ctx_set_amx: bf16 products on AMX tiles */
    int rows_max;
    void *block;
    /* scratch, each [rows_max][dim] */
    float *x, *u, *prev;                  /* [R][C] */
    float *xr, *xw, *xk, *xv, *xa, *xg;   /* [R][C] */
    float *r, *k, *v, *w, *a, *g, *kk, *y; /* [R][C] */
    float *vfirst, *tmp;                  /* [R][C] */
    float *lw, *la, *lv, *lg;             /* LoRA hidden rows [R][Dw], [R][Da], ... */
    float *hidden;                        /* [R][F] */
    /* rows -> sequences: segment s is rows [seg[s], seg[s+1]) and continues
     * state segst[s]; lrow lists the rows whose logits are wanted */
    int *seg, *lrow;
    float **segst;
    bool row_invariant; /* rk_forward_multi: slice matmuls at the tiled limit */
    /* the backward pass's buffers, kept between calls (rk__ctx_workspace) */
    void *ws;
    size_t ws_bytes;
};

/* The segments of one pass (points into the context's arrays). */
struct rowmap {
    int nseg;
    const int *seg;
    float *const *st;
};

const struct rk_model *rk_ctx_model(const struct rk_ctx *ctx) { return ctx->m; }
struct rk__pool *rk__ctx_pool(struct rk_ctx *ctx) { return ctx->pool; }
int rk_ctx_n_threads(const struct rk_ctx *ctx) { return rk__pool_n_threads(ctx->pool); }

struct ctx_run {
    void (*fn)(void *arg, int ith, int nth);
    void *arg;
};

static void ctx_run_worker(int ith, int nth, void *p)
{
    const struct ctx_run *r = p;
    r->fn(r->arg, ith, nth);
}

void rk_ctx_run(struct rk_ctx *ctx, void (*fn)(void *arg, int ith, int nth), void *arg)
{
    struct ctx_run r = {fn, arg};
    rk__pool_run(ctx->pool, ctx_run_worker, &r);
}

struct ctx_copy {
    float *dst;
    const float *src;
};

static void ctx_copy_range(void *p, size_t a, size_t b)
{
    const struct ctx_copy *c = p;
    if (c->src)
        memcpy(c->dst + a, c->src + a, (b - a) * sizeof(float));
    else
        memset(c->dst + a, 0, (b - a) * sizeof(float));
}

void rk_ctx_copy(struct rk_ctx *ctx, float *dst, const float *src, size_t n)
{
    struct ctx_copy c = {dst, src};
    /* below a few pages one thread is faster than a fork-join */
    if (n < (1u << 16))
        ctx_copy_range(&c, 0, n);
    else
        rk__pool_for(ctx->pool, n, ctx_copy_range, &c);
}
void rk_ctx_set_reference(struct rk_ctx *ctx, bool reference) { ctx->ref = reference; }

bool rk_amx_available(void) { return rk__amx_usable(); }

bool rk_ctx_set_amx(struct rk_ctx *ctx, bool on)
{
    /* the large matrices decide: bf16 panels with columns in 32s */
    ctx->amx = on && rk__amx_usable() && rk__amx_fits(&ctx->m->layers[0].wk);
    return ctx->amx;
}

/* The kernels of this context's products (rk__matmul's `kern`). */
static int kern(const struct rk_ctx *c)
{
    return c->ref ? RK_KERN_REF : c->amx ? RK_KERN_AMX : RK_KERN_FAST;
}

int rk_ctx_create(const struct rk_model *m, const struct rk_ctx_params *p, struct rk_ctx **out)
{
    *out = NULL;
    if (!m)
        return RK_EINVAL;
    int n_threads = p ? p->n_threads : 0;
    int rows = p && p->rows_max > 0 ? p->rows_max : 64;
    if (rows > 4096 || n_threads < 0)
        return RK_EINVAL;
    struct rk_ctx *c = rk__calloc(1, sizeof *c);
    if (!c)
        return RK_ENOMEM;
    c->m = m;
    c->rows_max = rows;
    size_t dsum = (size_t)m->Dw + (size_t)m->Da + (size_t)m->Dv + (size_t)m->Dg;
    size_t C = (size_t)m->C, R = (size_t)rows;
    size_t nC = 20, total = R * (C * nC + dsum + (size_t)m->F) + 64 * 28;
    c->block = rk__malloc_aligned(total * sizeof(float));
    if (!c->block) {
        rk__free(c);
        return RK_ENOMEM;
    }
    float *q = c->block;
    float **slots[] = {&c->x,  &c->u,  &c->prev, &c->xr, &c->xw, &c->xk, &c->xv,
                       &c->xa, &c->xg, &c->r,    &c->k,  &c->v,  &c->w,  &c->a,
                       &c->g,  &c->kk, &c->y,    &c->vfirst, &c->tmp};
    for (size_t i = 0; i < sizeof slots / sizeof slots[0]; i++) {
        *slots[i] = q;
        q += (R * C + 15) & ~(size_t)15;
    }
    float **lora[] = {&c->lw, &c->la, &c->lv, &c->lg};
    const int dims[] = {m->Dw, m->Da, m->Dv, m->Dg};
    for (size_t i = 0; i < 4; i++) {
        *lora[i] = q;
        q += (R * (size_t)dims[i] + 15) & ~(size_t)15;
    }
    c->hidden = q;
    c->seg = rk__calloc((size_t)rows + 1, sizeof *c->seg);
    c->lrow = rk__calloc((size_t)rows, sizeof *c->lrow);
    c->segst = rk__calloc((size_t)rows, sizeof *c->segst);
    int rc = c->seg && c->lrow && c->segst ? rk__pool_create(n_threads, p ? p->nice : 0, &c->pool)
                                           : RK_ENOMEM;
    if (rc != RK_OK) {
        rk__free(c->seg), rk__free(c->lrow), rk__free(c->segst);
        rk__free_aligned(c->block);
        rk__free(c);
        return rc;
    }
    *out = c;
    return RK_OK;
}

void rk_ctx_free(struct rk_ctx *ctx)
{
    if (!ctx)
        return;
    rk__pool_free(ctx->pool);
    rk__free(ctx->seg), rk__free(ctx->lrow), rk__free(ctx->segst);
    rk__free_aligned(ctx->block);
    rk__free_aligned(ctx->ws);
    rk__free(ctx);
}

void *rk__ctx_workspace(struct rk_ctx *ctx, size_t bytes)
{
    if (ctx->ws_bytes < bytes) {
        rk__free_aligned(ctx->ws);
        ctx->ws = rk__malloc_aligned(bytes);
        ctx->ws_bytes = ctx->ws ? bytes : 0;
    }
    return ctx->ws;
}

/* --- small helpers -------------------------------------------------------- */

static inline float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

/* In a multi-sequence pass (c->row_invariant), a product with row-major
 * weights over more rows than the tiled limit goes in slices of that limit,
 * so each row's result is the one it gets in any pass of up to that many
 * rows: what a sequence computes does not depend on what shares its pass.
 * Panel-held weights give every row the same bits at any count. */
static bool needs_slices(const struct rk_ctx *c, size_t n, const struct rk_weight *W)
{
    size_t lim = rk__tiled_rows();
    return c->row_invariant && n > lim && lim > 0 && !W->panel;
}

static void matmul_act(struct rk_ctx *c, float *Y, const float *X, size_t n,
                       const struct rk_weight *W, bool relu2)
{
    size_t step = needs_slices(c, n, W) ? rk__tiled_rows() : n;
    for (size_t r0 = 0; r0 < n; r0 += step) {
        float *y = Y + r0 * (size_t)W->rows;
        const float *x = X + r0 * (size_t)W->cols;
        size_t k = n - r0 < step ? n - r0 : step;
        if (relu2)
            rk__matmul_relu2(c->pool, kern(c), y, x, k, W);
        else
            rk__matmul(c->pool, kern(c), y, x, k, W);
    }
}

static void matmul(struct rk_ctx *c, float *Y, const float *X, size_t n, const struct rk_weight *W)
{
    matmul_act(c, Y, X, n, W, false);
}

/* Independent products over the same R rows in one pass of the pool; in a
 * multi-sequence pass past the tiled limit with row-major weights, one by
 * one through matmul()'s slicing. */
static void matmul_many(struct rk_ctx *c, const struct rk__mm *mm, int count, size_t n)
{
    bool sliced = false;
    for (int i = 0; i < count; i++)
        sliced |= needs_slices(c, n, mm[i].W);
    if (!sliced) {
        rk__matmul_many(c->pool, kern(c), mm, count, n);
        return;
    }
    for (int i = 0; i < count; i++)
        matmul(c, mm[i].Y, mm[i].X, n, mm[i].W);
}

/* --- WKV ------------------------------------------------------------------ */

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
#endif

void rk__wkv_head(bool ref, float *S, const float *r, const float *w, const float *k,
                  const float *v, const float *a, const float *b, float *y, float *sa)
{
#ifdef RK_X86
    if (!ref && rk__use_avx512()) {
        wkv_head_avx512(S, r, w, k, v, a, b, y, sa);
        return;
    }
#endif
    wkv_head_ref(S, r, w, k, v, a, b, y, sa);
}

struct wkv_job {
    struct rk_ctx *c;
    int layer, H;
    const struct rowmap *rm;
};

/* Head h of row t after its WKV step: GroupNorm of y over the head, the
 * bonus (r . k . r_k) v and the gate, into tmp. */
static void wkv_out_head(struct rk_ctx *c, const struct rk_layer *ly, size_t t, int h)
{
    size_t o = t * (size_t)c->m->C + (size_t)h * N;
    float mean = 0.0f, var = 0.0f, bonus = 0.0f;
    for (int i = 0; i < N; i++)
        mean += c->y[o + i];
    mean /= N;
    for (int i = 0; i < N; i++) {
        float d = c->y[o + i] - mean;
        var += d * d;
    }
    var /= N;
    float inv = 1.0f / sqrtf(var + GN_EPS);
    for (int i = 0; i < N; i++)
        bonus += c->r[o + i] * c->k[o + i] * ly->r_k[h * N + i];
    for (int i = 0; i < N; i++) {
        size_t ch = (size_t)h * N + (size_t)i;
        float on = (c->y[o + i] - mean) * inv * ly->lnx_w[ch] + ly->lnx_b[ch];
        c->tmp[o + i] = (on + bonus * c->v[o + i]) * c->g[o + i];
    }
}

#ifdef RK_X86
/* wkv_out_head with the head's 64 values in four vectors. */
WKV_AVX512 static void wkv_out_head_avx512(struct rk_ctx *c, const struct rk_layer *ly, size_t t,
                                           int h)
{
    size_t o = t * (size_t)c->m->C + (size_t)h * N, ch = (size_t)h * N;
    __m512 Y[4], sum = _mm512_setzero_ps(), bon = _mm512_setzero_ps();
    for (int q = 0; q < 4; q++) {
        Y[q] = _mm512_loadu_ps(c->y + o + 16 * q);
        sum = _mm512_add_ps(sum, Y[q]);
        __m512 rk = _mm512_mul_ps(_mm512_loadu_ps(c->r + o + 16 * q),
                                  _mm512_loadu_ps(c->k + o + 16 * q));
        bon = _mm512_fmadd_ps(rk, _mm512_loadu_ps(ly->r_k + ch + 16 * q), bon);
    }
    __m512 mean = _mm512_set1_ps(_mm512_reduce_add_ps(sum) / N), dd = _mm512_setzero_ps();
    for (int q = 0; q < 4; q++) {
        Y[q] = _mm512_sub_ps(Y[q], mean);
        dd = _mm512_fmadd_ps(Y[q], Y[q], dd);
    }
    __m512 inv = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(dd) / N + GN_EPS));
    __m512 bonus = _mm512_set1_ps(_mm512_reduce_add_ps(bon));
    for (int q = 0; q < 4; q++) {
        __m512 on = _mm512_fmadd_ps(_mm512_mul_ps(Y[q], inv),
                                    _mm512_loadu_ps(ly->lnx_w + ch + 16 * q),
                                    _mm512_loadu_ps(ly->lnx_b + ch + 16 * q));
        on = _mm512_fmadd_ps(bonus, _mm512_loadu_ps(c->v + o + 16 * q), on);
        _mm512_storeu_ps(c->tmp + o + 16 * q,
                         _mm512_mul_ps(on, _mm512_loadu_ps(c->g + o + 16 * q)));
    }
}

/* The WKV vectors a = -kk and b = kk * a of one head and row. */
WKV_AVX512 static void wkv_ab_avx512(float *avec, float *bvec, const float *kk, const float *a)
{
    for (int q = 0; q < 4; q++) {
        __m512 x = _mm512_loadu_ps(kk + 16 * q);
        _mm512_storeu_ps(avec + 16 * q, _mm512_sub_ps(_mm512_setzero_ps(), x));
        _mm512_storeu_ps(bvec + 16 * q, _mm512_mul_ps(x, _mm512_loadu_ps(a + 16 * q)));
    }
}
#endif

/* Heads are independent, so threads split the (segment, head) pairs; each
 * runs its segment's rows in order, then the head's output (wkv_out_head). */
static void wkv_worker(int ith, int nth, void *arg)
{
    const struct wkv_job *j = arg;
    struct rk_ctx *c = j->c;
    const struct rk_model *m = c->m;
    size_t C = (size_t)m->C, lstride = 2 * C + (size_t)m->H * N * N;
    bool fast = !c->ref && rk__use_avx512();
    float bvec[N], avec[N];
    int units = j->rm->nseg * j->H;
    for (int u = ith; u < units; u += nth) {
        int h = u % j->H, s = u / j->H;
        int r0 = j->rm->seg[s], r1 = j->rm->seg[s + 1];
        float *S = j->rm->st[s] + (size_t)j->layer * lstride + C + (size_t)h * N * N;
        for (int t = r0; t < r1; t++) {
            size_t o = (size_t)t * C + (size_t)h * N;
#ifdef RK_X86
            if (fast) {
                /* rows lie C floats apart: fetch WKV_PF_ROWS rows ahead */
                if (t + WKV_PF_ROWS < r1) {
                    size_t o2 = o + WKV_PF_ROWS * C;
                    const float *rows[] = {c->r, c->w, c->k, c->v, c->kk, c->a};
                    for (int q = 0; q < 6; q++)
                        for (int l = 0; l < N; l += 16)
                            _mm_prefetch((const char *)(rows[q] + o2 + l), _MM_HINT_T0);
                }
                wkv_ab_avx512(avec, bvec, c->kk + o, c->a + o);
                wkv_head_avx512(S, c->r + o, c->w + o, c->k + o, c->v + o, avec, bvec, c->y + o,
                                NULL);
                continue;
            }
#endif
            for (int i = 0; i < N; i++) {
                avec[i] = -c->kk[o + i];
                bvec[i] = c->kk[o + i] * c->a[o + i];
            }
            wkv_head_ref(S, c->r + o, c->w + o, c->k + o, c->v + o, avec, bvec, c->y + o, NULL);
        }
        for (int t = r0; t < r1; t++) {
#ifdef RK_X86
            if (fast) {
                wkv_out_head_avx512(c, &m->layers[j->layer], (size_t)t, h);
                continue;
            }
#endif
            wkv_out_head(c, &m->layers[j->layer], (size_t)t, h);
        }
    }
    (void)fast;
}

/* --- one layer over R rows ------------------------------------------------ */

/* Element-wise work is split by rows across the pool when there are enough
 * rows (prefill); a phase function handles rows [t0, t1). */
struct phase {
    struct rk_ctx *c;
    const struct rk_layer *ly;
    int l;
    void (*fn)(const struct phase *ph, int t0, int t1);
    int R;
};

static void phase_range(void *arg, size_t t0, size_t t1)
{
    const struct phase *ph = arg;
    ph->fn(ph, (int)t0, (int)t1);
}

static void run_phase(struct rk_ctx *c, const struct rk_layer *ly, int l, int R,
                      void (*fn)(const struct phase *, int, int))
{
    struct phase ph = {c, ly, l, fn, R};
    if (R >= 8 && !c->ref)
        rk__pool_for(c->pool, (size_t)R, phase_range, &ph);
    else
        fn(&ph, 0, R);
}

/* Token shift: fill prev[R][C] with the previous normalised input of each row
 * and store this step's last input back into the state. */
static void token_shift(struct rk_ctx *c, const struct rowmap *rm, size_t off, const float *u,
                        float *prev)
{
    size_t C = (size_t)c->m->C;
    for (int s = 0; s < rm->nseg; s++) {
        size_t r0 = (size_t)rm->seg[s], n = (size_t)(rm->seg[s + 1] - rm->seg[s]);
        memcpy(prev + r0 * C, rm->st[s] + off, C * sizeof(float));
        if (n > 1)
            memcpy(prev + (r0 + 1) * C, u + r0 * C, (n - 1) * C * sizeof(float));
        memcpy(rm->st[s] + off, u + (r0 + n - 1) * C, C * sizeof(float));
    }
}

/* x += delta (the previous block's output, if any), then u = LN(x). */
static void ph_ln1(const struct phase *ph, int t0, int t1)
{
    struct rk_ctx *c = ph->c;
    int C = c->m->C;
    for (int t = t0; t < t1; t++) {
        float *x = c->x + (size_t)t * C;
        if (ph->l > 0) {
            const float *d = c->xr + (size_t)t * C; /* previous channel-mix output */
            for (int i = 0; i < C; i++)
                x[i] += d[i];
        }
        rk__layernorm(c->ref, c->u + (size_t)t * C, x, ph->ly->ln1_w, ph->ly->ln1_b, C, LN_EPS);
    }
}

/* six lerps: x_c = u + (prev - u) * mu_c */
static void ph_lerp6(const struct phase *ph, int t0, int t1)
{
    struct rk_ctx *c = ph->c;
    const struct rk_layer *ly = ph->ly;
    int C = c->m->C;
    for (size_t t = (size_t)t0, i = (size_t)t0 * C; t < (size_t)t1; t++)
        for (int ch = 0; ch < C; ch++, i++) {
            float u = c->u[i], d = c->prev[i] - u;
            c->xr[i] = u + d * ly->x_r[ch];
            c->xw[i] = u + d * ly->x_w[ch];
            c->xk[i] = u + d * ly->x_k[ch];
            c->xv[i] = u + d * ly->x_v[ch];
            c->xa[i] = u + d * ly->x_a[ch];
            c->xg[i] = u + d * ly->x_g[ch];
        }
}

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

/* The decay and in-context-rate gates of ph_post for one row, 16 channels
 * at a time (the same arithmetic as the scalar loop, with exp_avx512). */
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

/* After the projections: decay w, in-context rate a, value residual, the
 * normalised removal key kk and the replacement key k. On entry w, a and tmp
 * hold the raw LoRA outputs (before w0/a0/v0). */
static void ph_post(const struct phase *ph, int t0, int t1)
{
    struct rk_ctx *c = ph->c;
    const struct rk_layer *ly = ph->ly;
    int C = c->m->C, H = c->m->H;
#ifdef RK_X86
    bool fast = !c->ref && rk__use_avx512();
#endif
    for (size_t t = (size_t)t0; t < (size_t)t1; t++) {
        size_t o = t * (size_t)C;
        float *w = c->w + o, *a = c->a + o, *v = c->v + o, *k = c->k + o, *kk = c->kk + o;
        if (ph->l == 0)
            memcpy(c->vfirst + o, v, (size_t)C * sizeof(float));
#ifdef RK_X86
        if (fast) {
            gates_avx512(w, a, ly->w0, ly->a0, C);
            if (ph->l > 0)
                vres_avx512(v, c->vfirst + o, ly->v0, c->tmp + o, C);
        } else
#endif
        {
            for (int ch = 0; ch < C; ch++) {
                w[ch] = expf(-DECAY_SCALE * sigmoidf(ly->w0[ch] + w[ch]));
                a[ch] = sigmoidf(ly->a0[ch] + a[ch]);
            }
            const float *nu_raw = c->tmp + o, *vf = c->vfirst + o;
            for (int ch = 0; ph->l > 0 && ch < C; ch++) {
                float nu = sigmoidf(ly->v0[ch] + nu_raw[ch]);
                v[ch] += (vf[ch] - v[ch]) * nu;
            }
        }
        for (int h = 0; h < H; h++) {
            float ss = 0.0f;
            for (int i = h * N; i < (h + 1) * N; i++) {
                float q = k[i] * ly->k_k[i];
                kk[i] = q;
                ss += q * q;
            }
            float inv = 1.0f / fmaxf(sqrtf(ss), 1e-12f);
            for (int i = h * N; i < (h + 1) * N; i++)
                kk[i] *= inv;
        }
        for (int ch = 0; ch < C; ch++)
            k[ch] *= 1.0f + (a[ch] - 1.0f) * ly->k_a[ch];
    }
}

/* x += time-mix output, u = LN2(x) */
static void ph_ln2(const struct phase *ph, int t0, int t1)
{
    struct rk_ctx *c = ph->c;
    int C = c->m->C;
    for (int t = t0; t < t1; t++) {
        float *x = c->x + (size_t)t * C;
        const float *d = c->xr + (size_t)t * C;
        for (int i = 0; i < C; i++)
            x[i] += d[i];
        rk__layernorm(c->ref, c->u + (size_t)t * C, x, ph->ly->ln2_w, ph->ly->ln2_b, C, LN_EPS);
    }
}

static void ph_lerp_ffn(const struct phase *ph, int t0, int t1)
{
    struct rk_ctx *c = ph->c;
    int C = c->m->C;
    for (size_t t = (size_t)t0, i = (size_t)t0 * C; t < (size_t)t1; t++)
        for (int ch = 0; ch < C; ch++, i++) {
            float u = c->u[i];
            c->xk[i] = u + (c->prev[i] - u) * ph->ly->ffn_x_k[ch];
        }
}

/* Time-mix of layer l. On entry x holds the residual stream (minus the
 * previous layer's channel-mix output, still in xr); on exit xr holds this
 * time-mix's output, not yet added. */
static void time_mix(struct rk_ctx *c, int l, int R, const struct rowmap *rm)
{
    const struct rk_model *m = c->m;
    const struct rk_layer *ly = &m->layers[l];
    int C = m->C, H = m->H;
    size_t lstride = 2 * (size_t)C + (size_t)H * N * N, loff = (size_t)l * lstride;

    run_phase(c, ly, l, R, ph_ln1);
    token_shift(c, rm, loff, c->u, c->prev);
    run_phase(c, ly, l, R, ph_lerp6);

    /* everything that reads the mixed inputs, in one pass of the pool:
     * r [R][C], k-hat, v-hat, and the first halves of the four LoRAs */
    struct rk__mm in[7] = {
        {c->r, c->xr, &ly->wr},  {c->k, c->xk, &ly->wk},  {c->v, c->xv, &ly->wv},
        {c->lw, c->xw, &ly->w1}, {c->la, c->xa, &ly->a1}, {c->lg, c->xg, &ly->g1},
        {c->lv, c->xv, &ly->v1}, /* value residual: layers >= 1 */
    };
    matmul_many(c, in, l > 0 ? 7 : 6, R);
    // decay w_raw = tanh(x_w w1) w2; gate g = sigmoid(x_g g1) g2
    for (size_t i = 0; i < (size_t)R * (size_t)ly->w1.rows; i++)
        c->lw[i] = tanhf(c->lw[i]);
    for (size_t i = 0; i < (size_t)R * (size_t)ly->g1.rows; i++)
        c->lg[i] = sigmoidf(c->lg[i]);
    // in-context learning rate a_raw = (x_a a1) a2; value residual nu_raw = (x_v v1) v2
    struct rk__mm out[4] = {
        {c->w, c->lw, &ly->w2}, {c->a, c->la, &ly->a2}, {c->g, c->lg, &ly->g2},
        {c->tmp, c->lv, &ly->v2},
    };
    matmul_many(c, out, l > 0 ? 4 : 3, R);

    run_phase(c, ly, l, R, ph_post);

    struct wkv_job wj = {c, l, H, rm};
    if (c->ref)
        wkv_worker(0, 1, &wj);
    else
        rk__pool_run(c->pool, wkv_worker, &wj);

    matmul(c, c->xr, c->tmp, R, &ly->wo);
}

/* Channel-mix of layer l: adds the time-mix output to x, leaves its own
 * output in xr (added by the next layer or by finish_rows). */
static void channel_mix(struct rk_ctx *c, int l, int R, const struct rowmap *rm)
{
    const struct rk_model *m = c->m;
    const struct rk_layer *ly = &m->layers[l];
    int C = m->C;
    size_t lstride = 2 * (size_t)C + (size_t)m->H * N * N;
    size_t off = (size_t)l * lstride + (size_t)C + (size_t)m->H * N * N;

    run_phase(c, ly, l, R, ph_ln2);
    token_shift(c, rm, off, c->u, c->prev);
    run_phase(c, ly, l, R, ph_lerp_ffn);
    matmul_act(c, c->hidden, c->xk, R, &ly->ffn_key, true); // relu(.)^2 [R][F]
    matmul(c, c->xr, c->hidden, R, &ly->ffn_value); // [R][C]
}

/* R rows split into the segments of `rm`; logits for the nl rows listed in
 * lrow (ascending), written as [nl][V]. */
static int forward_rows(struct rk_ctx *c, int R, const uint32_t *tokens, const struct rowmap *rm,
                        float *logits, const int *lrow, int nl)
{
    const struct rk_model *m = c->m;
    int C = m->C;
    for (int t = 0; t < R; t++)
        if (tokens[t] >= (uint32_t)m->V)
            return RK_ERANGE;
    for (int t = 0; t < R; t++) {
        rk__weight_row(&m->emb, (int)tokens[t], c->tmp + (size_t)t * C);
        rk__layernorm(c->ref, c->x + (size_t)t * C, c->tmp + (size_t)t * C, m->ln0_w, m->ln0_b, C,
                      LN_EPS);
    }
    for (int l = 0; l < m->L; l++) {
        time_mix(c, l, R, rm);
        channel_mix(c, l, R, rm);
    }
    for (size_t i = 0; i < (size_t)R * (size_t)C; i++) /* last channel-mix output */
        c->x[i] += c->xr[i];
    if (!logits || nl == 0)
        return RK_OK;
    for (int i = 0; i < nl; i++)
        rk__layernorm(c->ref, c->u + (size_t)i * C, c->x + (size_t)lrow[i] * C, m->lnout_w,
                      m->lnout_b, C, LN_EPS);
    matmul(c, logits, c->u, (size_t)nl, &m->head);
    return RK_OK;
}

int rk_forward_seq(struct rk_ctx *ctx, const uint32_t *tokens, size_t n, float *state,
                   float *logits, bool all_logits)
{
    if (!ctx || !tokens || !state || n == 0)
        return RK_EINVAL;
    size_t V = (size_t)ctx->m->V;
    float *st[1] = {state};
    for (size_t i = 0; i < n; i++)
        if (tokens[i] >= (uint32_t)V)
            return RK_ERANGE;
    for (size_t t0 = 0; t0 < n; t0 += (size_t)ctx->rows_max) {
        size_t R = n - t0 < (size_t)ctx->rows_max ? n - t0 : (size_t)ctx->rows_max;
        bool last = t0 + R == n;
        int nl = !logits ? 0 : all_logits ? (int)R : last ? 1 : 0;
        float *lg = !logits ? NULL : all_logits ? logits + t0 * V : logits;
        ctx->seg[0] = 0;
        ctx->seg[1] = (int)R;
        for (int i = 0; i < nl; i++)
            ctx->lrow[i] = (int)R - nl + i;
        struct rowmap rm = {1, ctx->seg, st};
        int rc = forward_rows(ctx, (int)R, tokens + t0, &rm, lg, ctx->lrow, nl);
        if (rc != RK_OK)
            return rc;
    }
    return RK_OK;
}

int rk_forward_batch(struct rk_ctx *ctx, size_t B, const uint32_t *tokens, float *const *states,
                     float *logits)
{
    if (!ctx || !tokens || !states || B == 0)
        return RK_EINVAL;
    size_t V = (size_t)ctx->m->V;
    for (size_t i = 0; i < B; i++)
        if (tokens[i] >= (uint32_t)V)
            return RK_ERANGE;
    for (size_t b0 = 0; b0 < B; b0 += (size_t)ctx->rows_max) {
        size_t R = B - b0 < (size_t)ctx->rows_max ? B - b0 : (size_t)ctx->rows_max;
        for (size_t i = 0; i <= R; i++)
            ctx->seg[i] = (int)i;
        for (size_t i = 0; i < R; i++)
            ctx->lrow[i] = (int)i;
        struct rowmap rm = {(int)R, ctx->seg, states + b0};
        int rc = forward_rows(ctx, (int)R, tokens + b0, &rm, logits ? logits + b0 * V : NULL,
                              ctx->lrow, logits ? (int)R : 0);
        if (rc != RK_OK)
            return rc;
    }
    return RK_OK;
}

int rk_forward_multi(struct rk_ctx *ctx, size_t nseg, const uint32_t *tokens, const size_t *n,
                     float *const *states, const bool *want, float *logits)
{
    if (!ctx || !tokens || !n || !states || nseg == 0)
        return RK_EINVAL;
    size_t V = (size_t)ctx->m->V, total = 0;
    for (size_t i = 0; i < nseg; i++) {
        if (n[i] == 0 || !states[i] || n[i] > (size_t)ctx->rows_max)
            return RK_EINVAL;
        total += n[i];
        if (total > (size_t)ctx->rows_max)
            return RK_EINVAL;
    }
    for (size_t t = 0; t < total; t++)
        if (tokens[t] >= (uint32_t)V)
            return RK_ERANGE;
    int nl = 0;
    ctx->seg[0] = 0;
    for (size_t i = 0; i < nseg; i++) {
        ctx->seg[i + 1] = ctx->seg[i] + (int)n[i];
        ctx->segst[i] = states[i];
        if (logits && (!want || want[i]))
            ctx->lrow[nl++] = ctx->seg[i + 1] - 1;
    }
    struct rowmap rm = {(int)nseg, ctx->seg, ctx->segst};
    ctx->row_invariant = true;
    int rc = forward_rows(ctx, (int)total, tokens, &rm, logits, ctx->lrow, nl);
    ctx->row_invariant = false;
    if (rc != RK_OK || !logits || nl == (int)nseg)
        return rc;
    /* the head wrote nl rows in order; move each to its sequence's row,
     * last first (a row's target is never before its source) */
    for (size_t i = nseg, k = (size_t)nl; i-- > 0;)
        if (!want || want[i]) {
            k--;
            if (k != i)
                memmove(logits + i * V, logits + k * V, V * sizeof(float));
        }
    return RK_OK;
}

int rk_forward_token(struct rk_ctx *ctx, uint32_t token, float *state, float *logits)
{
    return rk_forward_seq(ctx, &token, 1, state, logits, false);
}

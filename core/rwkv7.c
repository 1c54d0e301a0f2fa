/*
 * rwkv7.c - the RWKV-7 ("x070") forward pass: contexts, one token, a sequence
 * (prefill), a batched decode step and a pass over several sequences.
 *
 * The math is Part 2.2 of the project's RWKV-7 spec (the per-token forward
 * of RWKV-v7/rwkv_v7_numpy.py); tools/ref_rwkv7.py is an independent NumPy
 * version that produced the golden files. One function per operation, each
 * over R rows at once so that every linear layer is one matmul over the
 * rows:
 *
 *   embed            x = LN0(emb[token])                          spec 2.2
 *   add_norm         x += previous block's output; xn = LN(x)     steps 1, 14
 *   token_shift      prev = xn of each row's previous token       steps 1, 14
 *   tm_lerp          x_c = xn + (prev - xn) mu_c, c in r w k v a g step 2
 *   tm_project       r, k-hat, v-hat and the four LoRAs           steps 3-7
 *   tm_gates_keys    decay w, rate alpha, value residual, kk, k   steps 4-9
 *   wkv_heads        WKV recurrence, GroupNorm, bonus, gate       steps 10-12
 *   time_mix         ... then att = W_o o                         step 13
 *   channel_mix      ffn = W_fv relu(W_fk lerp(xn))^2             steps 14-16
 *   head             logits = W_head LN_out(x)
 *
 * Row modes (struct rowmap): the rows fall into segments, each segment the
 * consecutive tokens of one sequence with its own state. Sequence mode
 * (rk_forward_seq) is one segment; batch mode (rk_forward_batch) one row per
 * segment; rk_forward_multi anything in between. Token shift reads the
 * previous row of the segment (or the state for its first row), and the WKV
 * recurrence runs over a segment's rows in order on its state.
 *
 * The kernels live elsewhere: products in ops.c (and amx.c), the WKV step and
 * head output in kernels_wkv.c, LayerNorm and the gates in kernels_vec.c;
 * each takes `ref` (rk_ctx_set_reference) for its plain reference loop, and
 * cpu.c decides what the CPU runs. Element-wise work over 8 rows or more is
 * split by rows over the context's thread pool; the WKV heads always are.
 * Scratch lives in one block per context (no allocation per token), one
 * named buffer per activation.
 * Orientation: wkv state S[h][i][j], i = value channel, j = key channel.
 */
#include "core_int.h"

#include <math.h>
#include <string.h>

#define N RK_HEAD_SIZE
#define LN_EPS 1e-5f
#define GN_EPS (64e-5f)

struct rk_ctx {
    const struct rk_model *m;
    struct rk__pool *pool;
    bool ref;
    bool amx; /* rk_ctx_set_amx: bf16 products on AMX tiles */
    int rows_max;
    void *block;
    /* activations of one pass over R <= rows_max rows, [R][C] unless noted */
    float *emb;                          /* embedding rows, before LN0 */
    float *x;                            /* residual stream */
    float *xn;                           /* LN1 / LN2 output; LN_out of the logit rows */
    float *prev;                         /* xn of each row's previous token */
    float *xr, *xw, *xk, *xv, *xa, *xg;  /* time-mix lerps */
    float *lw, *la, *lv, *lg;            /* LoRA bottlenecks [R][Dw], [R][Da], [R][Dv], [R][Dg] */
    float *r, *k, *v;                    /* receptance; key (k-hat, then the replacement
                                            key); value (v-hat, then mixed) */
    float *w, *a, *g, *nu;               /* decay, in-context rate, gate, value-residual
                                            mix (each the raw LoRA output first) */
    float *kk;                           /* removal key */
    float *v_first;                      /* layer-0 value of each row */
    float *y;                            /* WKV output */
    float *o;                            /* GroupNorm + bonus, gated: W_o's input */
    float *att;                          /* time-mix output */
    float *ffn_x;                        /* channel-mix lerp */
    float *hidden;                       /* [R][F] relu(W_fk ffn_x)^2 */
    float *ffn;                          /* channel-mix output */
    /* rows -> sequences: segment s is rows [seg[s], seg[s+1]) and continues
     * state segst[s]; lrow lists the rows whose logits are wanted */
    int *seg, *lrow;
    float **segst;
    const struct rk_readout **segro;
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
    const struct rk_readout *const *ro; /* [nseg] read-out terms, or NULL */
};

/* --- context -------------------------------------------------------------- */

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
    size_t C = (size_t)m->C, R = (size_t)rows;
    /* every buffer [R][dim], 64-byte aligned */
    struct {
        float **p;
        size_t dim;
    } bufs[] = {
        {&c->emb, C},    {&c->x, C},       {&c->xn, C},       {&c->prev, C},
        {&c->xr, C},     {&c->xw, C},      {&c->xk, C},       {&c->xv, C},
        {&c->xa, C},     {&c->xg, C},      {&c->lw, (size_t)m->Dw}, {&c->la, (size_t)m->Da},
        {&c->lv, (size_t)m->Dv}, {&c->lg, (size_t)m->Dg}, {&c->r, C}, {&c->k, C},
        {&c->v, C},      {&c->w, C},       {&c->a, C},        {&c->g, C},
        {&c->nu, C},     {&c->kk, C},      {&c->v_first, C},  {&c->y, C},
        {&c->o, C},      {&c->att, C},     {&c->ffn_x, C},    {&c->hidden, (size_t)m->F},
        {&c->ffn, C},
    };
    size_t nbuf = sizeof bufs / sizeof bufs[0], total = 0;
    for (size_t i = 0; i < nbuf; i++)
        total += (R * bufs[i].dim + 15) & ~(size_t)15;
    c->block = rk__malloc_aligned(total * sizeof(float));
    float *q = c->block;
    for (size_t i = 0; q && i < nbuf; i++) {
        *bufs[i].p = q;
        q += (R * bufs[i].dim + 15) & ~(size_t)15;
    }
    c->seg = rk__calloc((size_t)rows + 1, sizeof *c->seg);
    c->lrow = rk__calloc((size_t)rows, sizeof *c->lrow);
    c->segst = rk__calloc((size_t)rows, sizeof *c->segst);
    c->segro = rk__calloc((size_t)rows, sizeof *c->segro);
    int rc = c->block && c->seg && c->lrow && c->segst && c->segro
                 ? rk__pool_create(n_threads, p ? p->nice : 0, &c->pool)
                 : RK_ENOMEM;
    if (rc != RK_OK) {
        rk__free(c->seg), rk__free(c->lrow), rk__free(c->segst), rk__free(c->segro);
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
    rk__free(ctx->seg), rk__free(ctx->lrow), rk__free(ctx->segst), rk__free(ctx->segro);
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

/* --- products --------------------------------------------------------------- */

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

/* Y[n][W.rows] = X[n][W.cols] W^T, squared ReLU applied with `relu2`. */
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

/* --- row-wise operations ------------------------------------------------------ */

static inline float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

/* An operation on rows [t0, t1) of layer l. for_rows splits R rows over the
 * pool when there are 8 or more (prefill, large batches). */
struct rows_op {
    struct rk_ctx *c;
    const struct rk_layer *ly;
    int l;
    void (*fn)(const struct rows_op *op, size_t t0, size_t t1);
    const float *in;  /* add_norm: the block output to add, or NULL */
    const float *w, *b; /* add_norm: the LayerNorm's weight and bias */
};

static void rows_range(void *arg, size_t t0, size_t t1)
{
    const struct rows_op *op = arg;
    op->fn(op, t0, t1);
}

static void for_rows(struct rows_op *op, int R)
{
    if (R >= 8 && !op->c->ref)
        rk__pool_for(op->c->pool, (size_t)R, rows_range, op);
    else
        op->fn(op, 0, (size_t)R);
}

/* Embedding (spec 2.2): x[R][C] = LN0(emb[token]). */
static void embed(struct rk_ctx *c, int R, const uint32_t *tokens)
{
    const struct rk_model *m = c->m;
    size_t C = (size_t)m->C;
    for (size_t t = 0; t < (size_t)R; t++) {
        rk__weight_row(&m->emb, (int)tokens[t], c->emb + t * C);
        rk__layernorm(c->ref, c->x + t * C, c->emb + t * C, m->ln0_w, m->ln0_b, (int)C, LN_EPS);
    }
}

/* Residual and LayerNorm (steps 1 and 14): x[R][C] += in[R][C] (the
 * previous block's output, when there is one), then xn[R][C] = LN(x). */
static void add_norm_rows(const struct rows_op *op, size_t t0, size_t t1)
{
    struct rk_ctx *c = op->c;
    size_t C = (size_t)c->m->C;
    for (size_t t = t0; t < t1; t++) {
        float *x = c->x + t * C;
        if (op->in) {
            const float *d = op->in + t * C;
            for (size_t i = 0; i < C; i++)
                x[i] += d[i];
        }
        rk__layernorm(c->ref, c->xn + t * C, x, op->w, op->b, (int)C, LN_EPS);
    }
}

static void add_norm(struct rk_ctx *c, int R, const float *in, const float *w, const float *b)
{
    struct rows_op op = {c, NULL, 0, add_norm_rows, in, w, b};
    for_rows(&op, R);
}

/* Token shift (steps 1 and 14): prev[R][C] = xn of each row's previous token
 * (the state's saved one for a segment's first row); the segment's last xn
 * goes back into the state at float offset `off`. */
static void token_shift(struct rk_ctx *c, const struct rowmap *rm, size_t off)
{
    size_t C = (size_t)c->m->C;
    const float *xn = c->xn;
    float *prev = c->prev;
    for (int s = 0; s < rm->nseg; s++) {
        size_t r0 = (size_t)rm->seg[s], n = (size_t)(rm->seg[s + 1] - rm->seg[s]);
        memcpy(prev + r0 * C, rm->st[s] + off, C * sizeof(float));
        if (n > 1)
            memcpy(prev + (r0 + 1) * C, xn + r0 * C, (n - 1) * C * sizeof(float));
        memcpy(rm->st[s] + off, xn + (r0 + n - 1) * C, C * sizeof(float));
    }
}

/* Step 2, six lerps: x_c[R][C] = xn + (prev - xn) mu_c, c in r w k v a g. */
static void tm_lerp(const struct rows_op *op, size_t t0, size_t t1)
{
    struct rk_ctx *c = op->c;
    const struct rk_layer *ly = op->ly;
    size_t C = (size_t)c->m->C;
    for (size_t t = t0, i = t0 * C; t < t1; t++)
        for (size_t ch = 0; ch < C; ch++, i++) {
            float u = c->xn[i], d = c->prev[i] - u;
            c->xr[i] = u + d * ly->x_r[ch];
            c->xw[i] = u + d * ly->x_w[ch];
            c->xk[i] = u + d * ly->x_k[ch];
            c->xv[i] = u + d * ly->x_v[ch];
            c->xa[i] = u + d * ly->x_a[ch];
            c->xg[i] = u + d * ly->x_g[ch];
        }
}

/* Steps 3-7, the products of the lerps:
 *   r = W_r x_r, k-hat = W_k x_k, v-hat = W_v x_v            [R][C]
 *   w_raw = tanh(x_w w1) w2, a_raw = (x_a a1) a2             [R][C]
 *   g = sigmoid(x_g g1) g2, nu_raw = (x_v v1) v2 (layers >= 1) [R][C]
 * Each stage's products run in one pass of the pool. */
static void tm_project(struct rk_ctx *c, int l, int R)
{
    const struct rk_layer *ly = &c->m->layers[l];
    struct rk__mm in[7] = {
        {c->r, c->xr, &ly->wr},  {c->k, c->xk, &ly->wk},  {c->v, c->xv, &ly->wv},
        {c->lw, c->xw, &ly->w1}, {c->la, c->xa, &ly->a1}, {c->lg, c->xg, &ly->g1},
        {c->lv, c->xv, &ly->v1},
    };
    matmul_many(c, in, l > 0 ? 7 : 6, (size_t)R);
    for (size_t i = 0; i < (size_t)R * (size_t)ly->w1.rows; i++) /* [R][Dw] */
        c->lw[i] = tanhf(c->lw[i]);
    for (size_t i = 0; i < (size_t)R * (size_t)ly->g1.rows; i++) /* [R][Dg] */
        c->lg[i] = sigmoidf(c->lg[i]);
    struct rk__mm out[4] = {
        {c->w, c->lw, &ly->w2},
        {c->a, c->la, &ly->a2},
        {c->g, c->lg, &ly->g2},
        {c->nu, c->lv, &ly->v2},
    };
    matmul_many(c, out, l > 0 ? 4 : 3, (size_t)R);
}

/* Steps 4-9 on rows [t0, t1), each [C]:
 *   w = exp(-e^-1/2 sigmoid(w0 + w_raw)), alpha = sigmoid(a0 + a_raw)  (into w, a)
 *   layer 0: v_first = v; else v += (v_first - v) sigmoid(v0 + nu_raw)
 *   kk = k-hat k_k, normalised per head (the removal key)
 *   k = k-hat (1 + (alpha - 1) k_a) (the replacement key) */
static void tm_gates_keys(const struct rows_op *op, size_t t0, size_t t1)
{
    struct rk_ctx *c = op->c;
    const struct rk_layer *ly = op->ly;
    int C = c->m->C, H = c->m->H;
    for (size_t t = t0; t < t1; t++) {
        size_t o = t * (size_t)C;
        float *w = c->w + o, *a = c->a + o, *v = c->v + o, *k = c->k + o, *kk = c->kk + o;
        if (op->l == 0)
            memcpy(c->v_first + o, v, (size_t)C * sizeof(float));
        rk__decay_gates(c->ref, w, a, ly->w0, ly->a0, C);
        if (op->l > 0)
            rk__value_residual(c->ref, v, c->v_first + o, ly->v0, c->nu + o, C);
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

/* --- WKV and GroupNorm --------------------------------------------------------- */

struct wkv_job {
    struct rk_ctx *c;
    int l;
    const struct rowmap *rm;
};

/* Steps 10-12 for every (segment, head) pair, split over the pool (heads are
 * independent): the WKV recurrence over the segment's rows in order on its
 * state S [N][N] (a = -kk, b = kk alpha; y = S r), then per row the head's
 * GroupNorm of y, the bonus (r . k . r_k) v and the gate g, into o. */
static void wkv_heads_worker(int ith, int nth, void *arg)
{
    const struct wkv_job *j = arg;
    struct rk_ctx *c = j->c;
    const struct rk_model *m = c->m;
    const struct rk_layer *ly = &m->layers[j->l];
    size_t C = (size_t)m->C, lstride = 2 * C + (size_t)m->H * N * N;
    int units = j->rm->nseg * m->H;
    for (int u = ith; u < units; u += nth) {
        int h = u % m->H, s = u / m->H;
        size_t r0 = (size_t)j->rm->seg[s], r1 = (size_t)j->rm->seg[s + 1];
        float *S = j->rm->st[s] + (size_t)j->l * lstride + C + (size_t)h * N * N;
        size_t o = r0 * C + (size_t)h * N;
        rk__wkv_seq(c->ref, S, r1 - r0, C, c->r + o, c->w + o, c->k + o, c->v + o, c->kk + o,
                    c->a + o, c->y + o);
        const struct rk_readout *ro = j->rm->ro ? j->rm->ro[s] : NULL;
        if (ro && ro->ops)
            ro->ops->fwd(ro->data, j->l, h, r1 - r0, C, c->r + o, c->w + o, ro->carry,
                         c->y + o);
        for (size_t t = r0; t < r1; t++) {
            size_t ot = t * C + (size_t)h * N, ch = (size_t)h * N;
            rk__wkv_out(c->ref, c->o + ot, c->y + ot, c->r + ot, c->k + ot, c->v + ot,
                        c->g + ot, ly->r_k + ch, ly->lnx_w + ch, ly->lnx_b + ch, GN_EPS);
        }
    }
}

static void wkv_heads(struct rk_ctx *c, int l, const struct rowmap *rm)
{
    struct wkv_job j = {c, l, rm};
    if (c->ref)
        wkv_heads_worker(0, 1, &j);
    else
        rk__pool_run(c->pool, wkv_heads_worker, &j);
}

/* --- blocks --------------------------------------------------------------------- */

/* Float offsets of layer l's parts in a state (rk_state_layout). */
static size_t state_att_shift(const struct rk_model *m, int l)
{
    return (size_t)l * (2 * (size_t)m->C + (size_t)m->H * N * N);
}
static size_t state_ffn_shift(const struct rk_model *m, int l)
{
    return state_att_shift(m, l) + (size_t)m->C + (size_t)m->H * N * N;
}

/* Time-mix of layer l (steps 1-13): x += in (the previous channel-mix's
 * output, NULL before layer 0), then att[R][C] = the time-mix output, not
 * yet added to x. */
static void time_mix(struct rk_ctx *c, int l, int R, const struct rowmap *rm, const float *in)
{
    const struct rk_layer *ly = &c->m->layers[l];
    add_norm(c, R, in, ly->ln1_w, ly->ln1_b);        /* xn = LN1(x)  [R][C] */
    token_shift(c, rm, state_att_shift(c->m, l));    /* prev         [R][C] */
    struct rows_op lerp = {c, ly, l, tm_lerp, NULL, NULL, NULL};
    for_rows(&lerp, R);                              /* x_r .. x_g   [R][C] */
    tm_project(c, l, R);                             /* r k v w a g nu */
    struct rows_op gk = {c, ly, l, tm_gates_keys, NULL, NULL, NULL};
    for_rows(&gk, R);                                /* w a v kk k   [R][C] */
    wkv_heads(c, l, rm);                             /* o            [R][C] */
    matmul(c, c->att, c->o, (size_t)R, &ly->wo);     /* att = W_o o  [R][C] */
}

/* Step 15's lerp: ffn_x[R][C] = xn + (prev - xn) mu_k. */
static void cm_lerp(const struct rows_op *op, size_t t0, size_t t1)
{
    struct rk_ctx *c = op->c;
    size_t C = (size_t)c->m->C;
    for (size_t t = t0, i = t0 * C; t < t1; t++)
        for (size_t ch = 0; ch < C; ch++, i++) {
            float u = c->xn[i];
            c->ffn_x[i] = u + (c->prev[i] - u) * op->ly->ffn_x_k[ch];
        }
}

/* Channel-mix of layer l (steps 14-16): x += att, then ffn[R][C] = the
 * channel-mix output, not yet added to x. */
static void channel_mix(struct rk_ctx *c, int l, int R, const struct rowmap *rm)
{
    const struct rk_layer *ly = &c->m->layers[l];
    add_norm(c, R, c->att, ly->ln2_w, ly->ln2_b);            /* xn = LN2(x)   [R][C] */
    token_shift(c, rm, state_ffn_shift(c->m, l));            /* prev          [R][C] */
    struct rows_op lerp = {c, ly, l, cm_lerp, NULL, NULL, NULL};
    for_rows(&lerp, R);                                      /* ffn_x         [R][C] */
    matmul_act(c, c->hidden, c->ffn_x, (size_t)R, &ly->ffn_key, true); /* relu(.)^2 [R][F] */
    matmul(c, c->ffn, c->hidden, (size_t)R, &ly->ffn_value); /* ffn           [R][C] */
}

/* Head: x += the last channel-mix output; logits[nl][V] = W_head LN_out(x)
 * for the nl rows listed in lrow (their LN_out rows go to xn[0..nl)). */
static void head(struct rk_ctx *c, int R, float *logits, const int *lrow, int nl)
{
    const struct rk_model *m = c->m;
    size_t C = (size_t)m->C;
    for (size_t i = 0; i < (size_t)R * C; i++)
        c->x[i] += c->ffn[i];
    if (!logits || nl == 0)
        return;
    for (int i = 0; i < nl; i++)
        rk__layernorm(c->ref, c->xn + (size_t)i * C, c->x + (size_t)lrow[i] * C, m->lnout_w,
                      m->lnout_b, (int)C, LN_EPS);
    matmul(c, logits, c->xn, (size_t)nl, &m->head);
}

/* R rows split into the segments of `rm`; logits for the nl rows listed in
 * lrow (ascending), written as [nl][V]. */
static int forward_rows(struct rk_ctx *c, int R, const uint32_t *tokens, const struct rowmap *rm,
                        float *logits, const int *lrow, int nl)
{
    const struct rk_model *m = c->m;
    for (int t = 0; t < R; t++)
        if (tokens[t] >= (uint32_t)m->V)
            return RK_ERANGE;
    embed(c, R, tokens);
    for (int l = 0; l < m->L; l++) {
        time_mix(c, l, R, rm, l > 0 ? c->ffn : NULL);
        channel_mix(c, l, R, rm);
    }
    head(c, R, logits, lrow, nl);
    return RK_OK;
}

int rk_forward_seq(struct rk_ctx *ctx, const uint32_t *tokens, size_t n, float *state,
                   float *logits, bool all_logits)
{
    return rk_forward_seq_ro(ctx, tokens, n, state, NULL, logits, all_logits);
}

int rk_forward_seq_ro(struct rk_ctx *ctx, const uint32_t *tokens, size_t n, float *state,
                      const struct rk_readout *ro, float *logits, bool all_logits)
{
    const struct rk_readout *ros[1] = {ro};
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
        struct rowmap rm = {1, ctx->seg, st, ro ? ros : NULL};
        int rc = forward_rows(ctx, (int)R, tokens + t0, &rm, lg, ctx->lrow, nl);
        if (rc != RK_OK)
            return rc;
    }
    return RK_OK;
}

int rk_forward_batch(struct rk_ctx *ctx, size_t B, const uint32_t *tokens, float *const *states,
                     float *logits)
{
    return rk_forward_batch_ro(ctx, B, tokens, states, NULL, logits);
}

int rk_forward_batch_ro(struct rk_ctx *ctx, size_t B, const uint32_t *tokens,
                        float *const *states, const struct rk_readout *const *ro, float *logits)
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
        struct rowmap rm = {(int)R, ctx->seg, states + b0, ro ? ro + b0 : NULL};
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
    return rk_forward_multi_ro(ctx, nseg, tokens, n, states, NULL, want, logits);
}

int rk_forward_multi_ro(struct rk_ctx *ctx, size_t nseg, const uint32_t *tokens, const size_t *n,
                        float *const *states, const struct rk_readout *const *ro,
                        const bool *want, float *logits)
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
        ctx->segro[i] = ro ? ro[i] : NULL;
        if (logits && (!want || want[i]))
            ctx->lrow[nl++] = ctx->seg[i + 1] - 1;
    }
    struct rowmap rm = {(int)nseg, ctx->seg, ctx->segst, ro ? ctx->segro : NULL};
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

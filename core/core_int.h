/*
 * core_int.h - private structures shared by the files of core/.
 *
 * Nothing outside core/ includes this header except white-box tests (through
 * core_internal_dep). The model struct is filled by the loaders (load_*.c) and
 * read by the forward/backward code (rwkv7.c, rwkv7_backward.c).
 */
#ifndef RK_CORE_INT_H
#define RK_CORE_INT_H

#include "rk_core.h"
#include "rk_tensorfile.h"

#include <stdio.h>
#include <stdlib.h>

/* Programmer errors only, never user input. Always on. */
#define RK_ASSERT(cond)                                                                   \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            fprintf(stderr, "RK_ASSERT(%s) failed at %s:%d\n", #cond, __FILE__, __LINE__); \
            abort();                                                                      \
        }                                                                                 \
    } while (0)

#define RK_HEAD_SIZE 64

/* --- allocation (one wrapper so tests can inject failures) ---------------- */

void *rk__malloc(size_t n);
void *rk__calloc(size_t n, size_t sz);
void *rk__realloc(void *p, size_t n);
void rk__free(void *p);
/* 64-byte aligned; free with rk__free_aligned. */
void *rk__malloc_aligned(size_t n);
void rk__free_aligned(void *p);
/* Test hook: the Nth allocation from now fails (0 = never). */
void rk__alloc_fail_after(long n);

/* --- bf16 / f16 conversion ------------------------------------------------ */

static inline float rk__bf16_to_f32(uint16_t h)
{
    union {
        uint32_t u;
        float f;
    } v = {.u = (uint32_t)h << 16};
    return v.f;
}
/* Round to nearest even; NaN stays NaN. */
static inline uint16_t rk__f32_to_bf16(float f)
{
    union {
        uint32_t u;
        float f;
    } v = {.f = f};
    if ((v.u & 0x7fffffffu) > 0x7f800000u)
        return (uint16_t)((v.u >> 16) | 0x40);
    uint32_t r = 0x7fffu + ((v.u >> 16) & 1u);
    return (uint16_t)((v.u + r) >> 16);
}
float rk__f16_to_f32(uint16_t h);
uint16_t rk__f32_to_f16(float f);

/* --- weights -------------------------------------------------------------- */

/* A matrix in nn.Linear orientation: y[rows] = W[rows][cols] x[cols].
 * `data` points into the mapped file or into model-owned memory; elements of
 * `dtype` (F32, F16 or BF16). Row-major (rows contiguous) unless `panel`:
 * then the rows come in groups of 16 ("panels", rows % 16 == 0), and panel p
 * holds, column after column, the 16 values W[16p .. 16p+15][k]; for bf16,
 * columns go in pairs (cols even), each row's two values side by side, so
 * one 32-bit lane holds W[r][k] and W[r][k+1]. The AVX-512 kernels stream
 * that order (see ops.c). */
struct rk_weight {
    enum rk_dtype dtype;
    const void *data;
    int rows; /* out */
    int cols; /* in */
    bool panel;
    /* Q8 only (q8.c): data holds the values + 128 as uint8 and scale the
     * fp16 scales of blocks of 32 columns, both in panels of 16 rows (panel
     * set; the loader always packs them) or row-major (panel clear: one row
     * read from a file). */
    const uint16_t *scale;
    /* Q8 only, the form of a table that is only looked up by row (the
     * embedding of a q8 file, used where it lies in the file's map): data
     * holds the file's signed int8 values row-major and these bytes the
     * little-endian fp16 scales, at any alignment; scale is then NULL. */
    const unsigned char *i8_scales;
};

/* Where element (r, k) of W lives in W.data, in elements. */
static inline size_t rk__weight_index(const struct rk_weight *W, size_t r, size_t k)
{
    if (!W->panel)
        return r * (size_t)W->cols + k;
    size_t base = (r >> 4) * (size_t)W->cols * 16;
    if (W->dtype == RK_DTYPE_BF16)
        return base + (k >> 1) * 32 + (r & 15) * 2 + (k & 1);
    if (W->dtype == RK_DTYPE_Q8) /* groups of four columns */
        return base + (k >> 2) * 64 + (r & 15) * 4 + (k & 3);
    return base + k * 16 + (r & 15);
}
/* Whether the matrix kernels want W (row-major) repacked into panels:
 * rows % 16 == 0 (and even cols for bf16), and the AVX-512 kernels in use. */
bool rk__weight_wants_panels(const struct rk_weight *W);
/* Copies row-major W into dst (rows * cols elements of W.dtype) in panel
 * order; the caller then points a copy of W at dst with `panel` set. */
void rk__weight_pack(void *dst, const struct rk_weight *W);

struct rk_layer {
    float *ln1_w, *ln1_b, *ln2_w, *ln2_b;         /* [C] */
    float *x_r, *x_w, *x_k, *x_v, *x_a, *x_g;     /* [C] token-shift mixes */
    float *w0, *a0, *v0;                          /* [C] (v0 unused in layer 0) */
    struct rk_weight w1, w2, a1, a2, v1, v2, g1, g2; /* fp32, Linear form:
                                                    w1 [Dw][C], w2 [C][Dw], ... */
    float *k_k, *k_a;                             /* [C] */
    float *r_k;                                   /* [H][N] */
    struct rk_weight wr, wk, wv, wo;              /* [C][C] receptance key value output */
    float *lnx_w, *lnx_b;                         /* [C] GroupNorm */
    float *ffn_x_k;                               /* [C] */
    struct rk_weight ffn_key;                     /* [F][C] */
    struct rk_weight ffn_value;                   /* [C][F] */
};

struct rk_model {
    char *path;
    enum rk_format format;
    enum rk_dtype wtype; /* precision of the large matrices */
    int L, C, H, N, V, F;
    int Dw, Da, Dv, Dg; /* low-rank sizes, from tensor shapes */

    struct rk_weight emb;  /* [V][C] rows are embeddings (ln0 applied at lookup) */
    float *ln0_w, *ln0_b;  /* [C] */
    float *lnout_w, *lnout_b; /* [C] */
    struct rk_weight head; /* [V][C] */
    struct rk_layer *layers; /* [L] */

    /* storage */
    void *map;       /* read-only mmap of the file a single-file loader reads
                        (maps[0]), or NULL */
    size_t map_len;
    struct rk__map {
        void *p; /* NULL once unmapped (nothing of it used) */
        size_t len;
    } *maps;         /* every mapped file: one, or a directory's shards */
    size_t n_maps;
    char *vocab_file; /* a vocabulary found beside the weights, or NULL */
    void **owned;    /* blocks owned by the model (converted tensors), freed at free */
    size_t n_owned, cap_owned;
    size_t weight_bytes;
    uint64_t fingerprint;
};

/* Allocate `n` bytes owned by the model (64-byte aligned), freed by
 * rk_model_free. NULL on failure. */
void *rk__model_alloc(struct rk_model *m, size_t n);

/* After a loader has filled every field: check shapes for consistency and
 * compute the fingerprint. Names the file and tensor on error. */
int rk__model_finish(struct rk_model *m, struct rk_errbuf *eb);

/* Map `path` read-only into m->maps (kept until rk_model_free); *buf and *len
 * get the bytes. `name` is the file's name for messages. RK_EIO, or
 * RK_EFORMAT for an empty file. */
int rk__model_map_file(struct rk_model *m, const char *path, const char *name,
                       const void **buf, size_t *len, struct rk_errbuf *eb);

/* Models of several files (load_tensorfile.c, core/FORMAT.md "Directories
 * and shards"): a directory (Hugging Face layout with config.json, one
 * model.safetensors or shards with model.safetensors.index.json; or .pth
 * shards) or a comma-separated list of .pth / safetensors files. m->path is
 * set. */
int rk__load_multi(struct rk_model *m, const struct rk_model_params *p, bool dir,
                   struct rk_errbuf *eb);

/* Format-specific loaders (load_tensorfile.c, load_rwkvcpp.c).
 * Each receives the mapped file and fills `m` (m->map/map_len/path are set). */
int rk__load_safetensors(struct rk_model *m, const struct rk_model_params *p,
                         struct rk_errbuf *eb);
int rk__load_pth(struct rk_model *m, const struct rk_model_params *p, struct rk_errbuf *eb);
int rk__load_rwkvcpp(struct rk_model *m, const struct rk_model_params *p, struct rk_errbuf *eb);
/* GGUF (gguf.c): llama.cpp's rwkv7 files. */
int rk__load_gguf(struct rk_model *m, const struct rk_model_params *p, struct rk_errbuf *eb);

/* The World tokenizer from decoded tokens (tokenizer.c): token i (1..n_tok)
 * is len[i] bytes at blob + off[i]; the same checks as rk_tok_load_world
 * (no duplicates, every single byte a token). `what` names the source. */
int rk__tok_world_build(const uint8_t *blob, const uint32_t *off, const uint32_t *len,
                        size_t n_tok, const char *what, struct rk_tokenizer **out,
                        struct rk_errbuf *eb);

/* --- loader internals (model.c; see core/FORMAT.md) ----------------------- */

#define RK_LOAD_MAX_TENSORS RK_TF_TENSORS_MAX /* tensors in one file */
#define RK_LOAD_MAX_NAME RK_TF_NAME_MAX       /* bytes in a tensor name */
#define RK_LOAD_MAX_DIMS RK_TF_DIMS_MAX       /* dimensions of one tensor */
#define RK_LOAD_MAX_LAYERS 4096   /* blocks.N: N < this */

/* One tensor as a container parser found it, before it is placed into the
 * model. `data` points into the mapped file; `shape` is row-major as stored
 * (PyTorch order, last dimension contiguous). */
struct rk__tensor {
    char name[RK_LOAD_MAX_NAME + 1]; /* the file's name, for messages */
    char key[64];     /* official name it stands for ("" = not used) */
    bool linear_form; /* a LoRA factor stored transposed w.r.t. the official
                         layout, i.e. already in nn.Linear form */
    enum rk_dtype dtype; /* F32, F16, BF16, or Q8 (an I8 tensor and its scales) */
    int ndim;
    int64_t shape[RK_LOAD_MAX_DIMS];
    const void *data;  /* Q8: int8 [rows][cols] */
    const void *scale; /* Q8: little-endian fp16 [rows][cols / 32], any alignment */
    size_t nbytes; /* = elements * element size (checked by the parser) */
};

struct rk__tensor_list {
    struct rk__tensor *v;
    size_t n, cap;
};
/* Append a zeroed entry; RK_ENOMEM, or RK_EFORMAT past RK_LOAD_MAX_TENSORS
 * (the message names the file). */
int rk__tensor_push(struct rk__tensor_list *l, const struct rk_model *m, struct rk__tensor **out,
                    struct rk_errbuf *eb);
void rk__tensor_list_free(struct rk__tensor_list *l);
/* Fill t->key/t->linear_form from t->name: official names map to themselves,
 * Hugging Face (fla) names to their official equivalent; unknown names leave
 * key "". */
void rk__tensor_map_name(struct rk__tensor *t);
/* Bytes per element of F32/F16/BF16 (0 for anything else). */
size_t rk__dtype_size(enum rk_dtype t);
/* Place the listed tensors into `m` (dimensions, shape checks, conversions).
 * Fills everything but the fingerprint. */
int rk__model_build(struct rk_model *m, const struct rk__tensor_list *l,
                    const struct rk_model_params *p, struct rk_errbuf *eb);
/* The file's base name, for error messages. */
const char *rk__model_file(const struct rk_model *m);

/* A read-only view of one held tensor, in the canonical order used by the
 * fingerprint and the safetensors writer (emb, ln0, blocks..., ln_out, head).
 * Used by tests to compare models tensor by tensor. */
struct rk__tensor_view {
    char name[64];       /* official name */
    enum rk_dtype dtype; /* as held */
    const void *data;    /* NULL when absent (layer-0 v0/v1/v2) */
    int rows, cols;      /* as held: vectors 1 x C, r_k H x N, LoRA in Linear form */
    bool panel;          /* held in panels (struct rk_weight), not row-major */
    const uint16_t *scale; /* Q8: the block scales (struct rk_weight) */
    const unsigned char *i8_scales; /* Q8: struct rk_weight.i8_scales */
};
/* The weight a view of a large matrix describes. */
static inline struct rk_weight rk__view_weight(const struct rk__tensor_view *v)
{
    return (struct rk_weight){v->dtype, v->data, v->rows, v->cols, v->panel, v->scale,
                              v->i8_scales};
}
size_t rk__model_n_tensors(const struct rk_model *m);
void rk__model_tensor(const struct rk_model *m, size_t i, struct rk__tensor_view *out);

/* --- thread pool (pool.c) ------------------------------------------------- */

/* fn is called once per thread index ith in [0, nth) in parallel; the caller
 * runs ith = 0. Returns when all have finished. */
typedef void rk__pool_fn(int ith, int nth, void *arg);
struct rk__pool;
int rk__pool_create(int n_threads, int nice, struct rk__pool **out);
void rk__pool_free(struct rk__pool *p);
int rk__pool_n_threads(const struct rk__pool *p);
void rk__pool_run(struct rk__pool *p, rk__pool_fn *fn, void *arg);
/* fn(arg, i0, i1) over a partition of [0, n) into one contiguous range per
 * thread (on the caller alone without a pool or with n < 2). */
typedef void rk__range_fn(void *arg, size_t i0, size_t i1);
void rk__pool_for(struct rk__pool *p, size_t n, rk__range_fn *fn, void *arg);
/* The calling thread's scratch buffer `slot` with room for n floats (64-byte
 * aligned), grown as needed and kept until the thread exits; NULL when out
 * of memory. Slots: the matrix kernels' scratch, and the bf16 rows of X that
 * a thread rounds for an AMX product (shared with the pool for its length). */
enum { RK_TL_SCRATCH, RK_TL_AMX_X, RK_TL_Q8X, RK_TL_N };
float *rk__thread_buf(int slot, size_t n);

/* --- CPU features and kernel switches (cpu.c) ------------------------------ */

/* What the kernels run, decided once per process from CPUID and the
 * RWKVD_* switches; every kernel consults it, so all threads agree. */
struct rk__cpu {
    bool avx512;       /* AVX-512 F/BW/VL/DQ, and RWKVD_NO_AVX512 unset or "0"
                          (the portable runs of the tests set it) */
    bool panels;       /* repack weights into panels at load (RWKVD_NO_PANELS
                          unset; only while avx512 holds) */
    size_t tiled_rows; /* rows of X up to which row-major weights take the
                          tiled AVX-512 path (RWKVD_TILED_ROWS_MAX, 48) */
    bool no_amx;       /* RWKVD_NO_AMX */
    int q8;            /* the Q8 products' kernel: RK_Q8_VNNI with avx512 and
                          AVX512-VNNI, else RK_Q8_AVX2 with AVX2 + FMA and
                          RWKVD_NO_AVX2 unset, else RK_Q8_REF */
};
const struct rk__cpu *rk__cpu(void);
/* rk__cpu()->avx512. */
bool rk__use_avx512(void);
/* Whether products may run on AMX tiles in this process, decided on the
 * first call: AVX-512, not RWKVD_NO_AMX, CPUID, XCR0, the OS's permission
 * and a probe product (rk__amx_probe) run with faults caught. */
bool rk__amx_usable(void);

/* --- kernels (ops.c) ------------------------------------------------------ */

/* Y[n][W.rows] = X[n][W.cols] * W^T, fp32 accumulation, any weight dtype.
 * `kern` picks the kernels: RK_KERN_FAST (AVX-512 where the CPU has it),
 * RK_KERN_REF (the plain scalar reference loop) or RK_KERN_AMX (as FAST,
 * but bf16 panel weights run on AMX tiles with X rounded to bf16 where
 * rk__amx_usable; amx.c). `pool` may be NULL. */
enum { RK_KERN_FAST = 0, RK_KERN_REF = 1, RK_KERN_AMX = 2 };
/* dX[n][W.cols] = dY[n][W.rows] W, or += with `accumulate`: the product with
 * the transposed weight (backward). 16-bit weights are widened block by
 * block into wbuf (wbuf_floats >= W.cols, >= 16 * W.cols for panels); fp32
 * weights need none. */
void rk__matmul_t(struct rk__pool *pool, float *dX, const float *dY, size_t n,
                  const struct rk_weight *W, bool accumulate, float *wbuf, size_t wbuf_floats);
/* Row counts up to this take the same summation order whatever the count
 * (AVX-512 dot and tile paths for row-major weights); more rows go to sgemm.
 * Panel-held weights take one order for every count. */
size_t rk__tiled_rows(void);
void rk__matmul(struct rk__pool *pool, int kern, float *Y, const float *X, size_t n,
                const struct rk_weight *W);
/* Same, but only rows [r0, r1) of W (Y has r1-r0 columns). Used by the head
 * and the tests. */
void rk__matmul_rows(struct rk__pool *pool, int kern, float *Y, const float *X, size_t n,
                     const struct rk_weight *W, int r0, int r1);
/* Y = max(X * W^T, 0)^2 (NaN gives 0), the square applied by each thread to
 * its own part of Y. */
void rk__matmul_relu2(struct rk__pool *pool, int kern, float *Y, const float *X, size_t n,
                      const struct rk_weight *W);
/* Several independent products over the same n rows of X, each
 * Y[n][W.rows] = X[n][W.cols] * W^T, in one pass of the pool (one fork and
 * join instead of one per product); each is split between the threads as
 * rk__matmul splits it, so the results are the same bits. */
struct rk__mm {
    float *Y;
    const float *X;
    const struct rk_weight *W;
};
void rk__matmul_many(struct rk__pool *pool, int kern, const struct rk__mm *mm, int count,
                     size_t n);
/* AMX (amx.c): whether W suits the tiles (bf16 panels, columns a multiple of 32); n rows of X
 * rounded to bf16 (round to nearest even) into xb; rows [r0, r1) (multiples
 * of 16) of Y = X W^T from those bf16 rows, written as in rk__matmul_rows
 * with Y's column 0 = row yoff (xb must have room for n rounded up to 16
 * rows; the rows past n are read but do not matter). */
bool rk__amx_fits(const struct rk_weight *W);
void rk__amx_round(uint16_t *xb, const float *X, size_t n, size_t cols);
void rk__amx_rows(float *Y, size_t ldy, int yoff, const uint16_t *xb, size_t n,
                  const struct rk_weight *W, int r0, int r1);
/* One product on the tiles with a known answer; true when it came out right.
 * Only cpu.c calls it, with SIGILL and SIGSEGV caught. */
bool rk__amx_probe(void);
/* Row `r` of W as fp32 into out[W.cols]. */
void rk__weight_row(const struct rk_weight *W, int r, float *out);
/* --- 8-bit weights (q8.c) --------------------------------------------------- */

#define RK_Q8_BLOCK 32          /* values per scale, along the input dimension */
#define RK_Q8_0_BLOCK_BYTES 34  /* one GGML Q8_0 block: fp16 scale, 32 int8 */
/* The kernels of the Q8 products; rk__cpu()->q8 is the best this process runs. */
enum { RK_Q8_REF = 0, RK_Q8_AVX2 = 1, RK_Q8_VNNI = 2 };
/* One fp32 row (cols % 32 == 0) as 8-bit: q[cols] (value + 128) and the
 * fp16 block scales scale[cols / 32], as GGML's Q8_0 reference quantizer
 * does. RK_ENUMERIC for a non-finite value or one too large for the scale. */
int rk__q8_quantize_row(uint8_t *q, uint16_t *scale, const float *x, size_t cols);
/* One row from cols / 32 GGML Q8_0 blocks (34 bytes each, any alignment);
 * lossless. RK_ENUMERIC for a non-finite scale. */
int rk__q8_from_q8_0(uint8_t *q, uint16_t *scale, const void *blocks, size_t cols);
/* One row from int8 values qs[cols] and little-endian fp16 scales
 * scales[cols / 32] (any alignment); RK_ENUMERIC for a non-finite scale. */
int rk__q8_from_i8(uint8_t *q, uint16_t *scale, const void *qs, const void *scales,
                   size_t cols);
/* Columns [c0, c1) of row r of a Q8 W as fp32 into out[c1 - c0]. */
void rk__q8_dequant(float *out, const struct rk_weight *W, int r, int c0, int c1);
/* Element idx (row-major numbering) of a Q8 W as fp32. */
float rk__q8_at(const struct rk_weight *W, size_t idx);
/* Rows a panelled Q8 matrix of `rows` rows holds (a multiple of 16). */
size_t rk__q8_panel_rows(size_t rows);
/* Fills panelled q [rk__q8_panel_rows(rows) * cols] and scale
 * [rk__q8_panel_rows(rows) * cols / 32] with zeros (the padding rows). */
void rk__q8_panel_init(uint8_t *q, uint16_t *scale, size_t rows, size_t cols);
/* Row r of a panelled matrix from one row as q8_quantize_row gives it. */
void rk__q8_panel_put(uint8_t *q, uint16_t *scale, size_t cols, size_t r, const uint8_t *rq,
                      const uint16_t *rs);
/* Row r of a Q8 W (either layout) back into q[cols] (value + 128) and
 * scale[cols / 32]. */
void rk__q8_row_raw(const struct rk_weight *W, int r, uint8_t *q, uint16_t *scale);
/* n rows of X quantized per block of 32 for the Q8 products: q [n][cols]
 * (round to nearest even of x / d), bsum [n][cols / 32] (-128 times the sum
 * of each block's q: the VNNI start values), d [n][cols / 32] (fp32
 * scale absmax / 127; NaN where the block holds a NaN or Inf). */
struct rk__q8x {
    int8_t *q;      /* [n][cols] */
    int32_t *bsum;  /* [n][cols / 32]: -128 * the block's sum of q */
    float *d;       /* [n][cols / 32] */
    size_t n, cols;
};
/* Bytes of buffer rk__q8x_quantize needs. */
size_t rk__q8x_bytes(size_t n, size_t cols);
/* Fills xq from X[n][cols] into buf (64-byte aligned, rk__q8x_bytes long). */
void rk__q8x_quantize(struct rk__q8x *xq, void *buf, const float *X, size_t n, size_t cols);
/* The same with the plain loop (ref) or the fastest this CPU runs (the
 * AVX-512 one gives the same bits; test_q8 compares them). */
void rk__q8x_quantize_kind(bool ref, struct rk__q8x *xq, void *buf, const float *X, size_t n,
                           size_t cols);
/* Whether this CPU executes kernel `kind`. */
bool rk__q8_kern_runs(int kind);
/* Rows [r0, r1) of Y = X W^T for the quantized rows of xq, with kernel
 * `kind` (which must run here); Y's column 0 is row yoff. Every kind gives
 * the reference's bits (q8.c). */
void rk__q8_rows(int kind, float *Y, size_t ldy, int yoff, const struct rk__q8x *xq,
                 const struct rk_weight *W, int r0, int r1);

/* --- WKV kernels (kernels_wkv.c) ------------------------------------------- */

/* `ref` selects the plain loop; otherwise AVX-512 where rk__cpu() has it.
 * Vectors are one head's N = 64 values. */

/* One WKV step of one head: sa = S a; S = S diag(w) + sa b^T + v k^T;
 * y = S r. y [N] is always written; `sa` [N] receives S a (before the
 * update) when non-NULL. */
void rk__wkv_head(bool ref, float *S, const float *r, const float *w, const float *k,
                  const float *v, const float *a, const float *b, float *y, float *sa);
/* The steps of n consecutive tokens of one sequence on one head's state S
 * [N][N], with a = -kk and b = kk * alpha per token. The vectors of token t
 * start at r + t * stride (likewise w, k, v, kk, alpha, y). */
void rk__wkv_seq(bool ref, float *S, size_t n, size_t stride, const float *r, const float *w,
                 const float *k, const float *v, const float *kk, const float *alpha, float *y);
/* One head's output for one token: out = (GroupNorm(y) * ln_w + ln_b
 * + (sum r k r_k) v) * g, the GroupNorm over the head's N values with eps. */
void rk__wkv_out(bool ref, float *out, const float *y, const float *r, const float *k,
                 const float *v, const float *g, const float *r_k, const float *ln_w,
                 const float *ln_b, float eps);
/* The reverse of one step of one head (n = N on the AVX-512 path; any n on
 * the plain one). G [n][n] holds dL/dS_t minus dy r^T on entry and dL/dS_{t-1}
 * on exit; Sold, Snew are S_{t-1} and S_t, dy the gradient of y, sa = S_{t-1}
 * a, aa and bb the step's a and b. Adds dL/dv to dv[n] and the per-column
 * sums to cdr (r), cdw (w), cdb (b), cdk (k), cda (a). */
void rk__wkv_head_bwd(bool ref, int n, float *G, const float *Sold, const float *Snew,
                      const float *dy, const float *sa, const float *r, const float *w,
                      const float *k, const float *v, const float *aa, const float *bb, float *dv,
                      float *cdr, float *cdw, float *cdb, float *cdk, float *cda);

/* --- element-wise kernels (kernels_vec.c) ---------------------------------- */

/* The sum of exp(v[i] - m) for i < n (m >= every v[i]), fp32 exponentials
 * (relative error about 2e-7) summed in double in a fixed order; NaN terms
 * count as zero. With `out` (may be v), out[i] receives each term. */
double rk__exp_sum(float *out, const float *v, size_t n, float m);
/* The same without AVX-512 (the tests compare the two bit for bit). */
double rk__exp_sum_portable(float *out, const float *v, size_t n, float m);
/* Layer norm over n with population variance (sums in double). */
void rk__layernorm(bool ref, float *out, const float *x, const float *w, const float *b, int n,
                   float eps);
/* The time-mix gates of one row [C], in place: w = exp(-e^-1/2 sigmoid(w0 + w)),
 * a = sigmoid(a0 + a). */
void rk__decay_gates(bool ref, float *w, float *a, const float *w0, const float *a0, int C);
/* The value residual of one row [C]: v += (v_first - v) sigmoid(v0 + nu_raw). */
void rk__value_residual(bool ref, float *v, const float *v_first, const float *v0,
                        const float *nu_raw, int C);

/* --- context internals (rwkv7.c) -------------------------------------------- */

struct rk_ctx;
/* The context's thread pool (for the backward pass). */
struct rk__pool *rk__ctx_pool(struct rk_ctx *ctx);
/* At least `bytes` of 64-byte aligned scratch owned by the context, kept
 * between calls so repeated backward passes do not fault fresh pages in;
 * grows as needed, freed with the context. NULL when out of memory. */
void *rk__ctx_workspace(struct rk_ctx *ctx, size_t bytes);

/* --- backward (rwkv7_backward.c) ---------------------------------------- */

/* Test hook: the backward keeps every layer's activations when they fit in
 * `bytes` and recomputes layer by layer otherwise (default 1 GiB). */
void rk__backward_set_store_max(size_t bytes);

#endif /* RK_CORE_INT_H */

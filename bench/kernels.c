/*
 * kernels.c - rwkvd-kernels: the kernel-level measurements quoted in
 * BENCHMARKS.md that `rwkvd bench` does not make.
 *
 *   rwkvd-kernels isa
 *       one thread: fp32 FMA, AVX512-BF16 VDPBF16PS and AMX TDPBF16PS
 *       throughput in GFLOP/s (24 independent accumulators for the vector
 *       instructions, 4 tiles for AMX); those the CPU lacks are skipped
 *   rwkvd-kernels wkv [STRIDE]
 *       ns per head and token of the WKV step (rk__wkv_head), 512 tokens in
 *       order on one head, inputs STRIDE floats apart (default 64; the
 *       model's C in a prefill), best of 40 rounds
 *   rwkvd-kernels matmul ROWS COLS N THREADS
 *       a bf16 panel product Y[N][ROWS] = X W^T on the fp32 kernels and on
 *       AMX tiles, then the same weights as q8 (8-bit, core/q8.c) on the
 *       kernel cpu.c picks, best of 20, GFLOP/s and weight GB/s
 *   rwkvd-kernels sgemm ROWS COLS N THREADS
 *       the two sgemm-backed products on row-major bf16 weights: forward
 *       Y[N][ROWS] = X W^T (the path without AVX-512 or with
 *       RWKVD_NO_PANELS) and the backward's dX[N][COLS] = dY W
 *       (rk__matmul_t, 4 MiB of widened rows per block), best of 15 each,
 *       GFLOP/s; compiled against an older core/ops.c it gives the
 *       before/after figures of issue 13 in BENCHMARKS.md
 *   rwkvd-kernels step MODEL N THREADS REPS [prefill] [amx]
 *       median and best time of one rk_forward_batch over N sequences, or
 *       with `prefill` of one N-token rk_forward_seq from the zero state;
 *       `amx` turns the context's AMX path on
 *
 * Built with -DRWKVD_KERNELS_WKV_ONLY it needs nothing but rk__wkv_head, so
 * the same `wkv` measurement also links against older builds of the core
 * (the before/after figures in BENCHMARKS.md).
 */
#include "core_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

#ifndef RWKVD_KERNELS_WKV_ONLY
#if defined(__x86_64__)
enum { NACC = 24, ITERS = 20000000 };

__attribute__((target("avx512f,fma"))) static double isa_fma(void)
{
    __m512 acc[NACC], a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(1e-3f);
    for (int i = 0; i < NACC; i++)
        acc[i] = _mm512_set1_ps((float)i);
    double t = now();
    for (long n = 0; n < ITERS; n++) {
#pragma GCC unroll 24
        for (int i = 0; i < NACC; i++)
            acc[i] = _mm512_fmadd_ps(a, acc[i], b);
    }
    t = now() - t;
    float s = 0;
    for (int i = 0; i < NACC; i++)
        s += _mm512_reduce_add_ps(acc[i]);
    if (s == 12345.0f)
        printf(" ");
    return (double)ITERS * NACC * 32 / t / 1e9;
}

__attribute__((target("avx512f,avx512bf16"))) static double isa_dpbf16(void)
{
    __m512 acc[NACC];
    __m512bh a = (__m512bh)_mm512_set1_epi32(0x3f803f80), b = (__m512bh)_mm512_set1_epi32(0x3a833a83);
    for (int i = 0; i < NACC; i++)
        acc[i] = _mm512_set1_ps((float)i);
    double t = now();
    for (long n = 0; n < ITERS / 4; n++) {
#pragma GCC unroll 24
        for (int i = 0; i < NACC; i++)
            acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
    }
    t = now() - t;
    float s = 0;
    for (int i = 0; i < NACC; i++)
        s += _mm512_reduce_add_ps(acc[i]);
    if (s == 12345.0f)
        printf(" ");
    return (double)(ITERS / 4) * NACC * 64 / t / 1e9;
}
#endif

/* AMX: a 512 x 2048 by 2048 x 2048 bf16 product through the library's own
 * tile kernel on one thread (no pool). */
static double isa_amx(void)
{
    enum { R = 2048, C = 2048, NX = 512 };
    uint16_t *w = malloc(2ul * R * C), *p = rk__malloc_aligned(2ul * R * C);
    uint16_t *xb = rk__malloc_aligned(2ul * NX * C);
    float *Y = malloc(4ul * NX * R);
    for (size_t i = 0; i < (size_t)R * C; i++)
        w[i] = rk__f32_to_bf16((float)(i % 251) * 1e-3f - 0.1f);
    for (size_t i = 0; i < (size_t)NX * C; i++)
        xb[i] = rk__f32_to_bf16((float)(i % 127) * 1e-3f);
    struct rk_weight W = {RK_DTYPE_BF16, w, R, C, false, NULL, NULL};
    rk__weight_pack(p, &W);
    W.data = p;
    W.panel = true;
    double best = 1e30;
    for (int it = 0; it < 10; it++) {
        double t = now();
        rk__amx_rows(Y, R, 0, xb, NX, &W, 0, R);
        t = now() - t;
        best = t < best ? t : best;
    }
    free(w), rk__free_aligned(p), rk__free_aligned(xb), free(Y);
    return 2.0 * R * C * NX / best / 1e9;
}

static int cmd_isa(void)
{
#if defined(__x86_64__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f"))
        printf("fp32 FMA (AVX-512)   %.1f GFLOP/s\n", isa_fma());
    if (__builtin_cpu_supports("avx512bf16"))
        printf("VDPBF16PS (AVX-512)  %.1f GFLOP/s\n", isa_dpbf16());
#endif
    if (rk__amx_usable())
        printf("TDPBF16PS (AMX)      %.1f GFLOP/s (rk__amx_rows, 512x2048x2048)\n", isa_amx());
    else
        printf("AMX                  not usable here\n");
    return 0;
}

#endif

static int cmd_wkv(int stride)
{
    enum { T = 512, HN = 64 };
    if (stride < HN)
        stride = HN;
    float *S = rk__malloc_aligned(sizeof(float) * HN * HN), *buf[7];
    for (int q = 0; q < 7; q++) {
        buf[q] = rk__malloc_aligned(sizeof(float) * (size_t)T * (size_t)stride);
        for (size_t i = 0; i < (size_t)T * (size_t)stride; i++)
            buf[q][i] = q == 1 ? 0.99f : 0.01f * (float)((int)(i % 64) - 32) / 32.0f;
    }
    for (int i = 0; i < HN * HN; i++)
        S[i] = (float)(i % 100) * 1e-3f;
    double best = 1e30;
    for (int rep = 0; rep < 40; rep++) {
        double t = now();
        for (int i = 0; i < T; i++) {
            size_t o = (size_t)i * (size_t)stride;
            rk__wkv_head(false, S, buf[0] + o, buf[1] + o, buf[2] + o, buf[3] + o, buf[4] + o,
                         buf[5] + o, buf[6] + o, NULL);
        }
        t = now() - t;
        best = t < best ? t : best;
    }
    printf("WKV step, stride %d: %.1f ns per head and token\n", stride, best / T * 1e9);
    rk__free_aligned(S);
    for (int q = 0; q < 7; q++)
        rk__free_aligned(buf[q]);
    return 0;
}

#ifndef RWKVD_KERNELS_WKV_ONLY
static int cmd_matmul(int R, int C, int n, int threads)
{
    if (R <= 0 || R % 32 || C <= 0 || C % 32 || n <= 0 || threads <= 0) {
        fprintf(stderr, "matmul: ROWS and COLS must be positive multiples of 32\n");
        return 2;
    }
    uint16_t *w = malloc(2ul * R * C), *p = rk__malloc_aligned(2ul * R * C);
    float *X = malloc(4ul * n * C), *Y = malloc(4ul * n * R);
    for (size_t i = 0; i < (size_t)R * C; i++)
        w[i] = rk__f32_to_bf16((float)(i % 251) * 1e-3f - 0.1f);
    for (size_t i = 0; i < (size_t)n * C; i++)
        X[i] = (float)(i % 127) * 1e-3f;
    struct rk_weight W = {RK_DTYPE_BF16, w, R, C, false, NULL, NULL};
    bool panels = rk__weight_wants_panels(&W);
    if (panels) {
        rk__weight_pack(p, &W);
        W.data = p;
        W.panel = true;
    }
    struct rk__pool *pool = NULL;
    if (rk__pool_create(threads, 0, &pool) != RK_OK)
        return 1;
    for (int kern = RK_KERN_FAST; kern <= RK_KERN_AMX; kern += RK_KERN_AMX) {
        if (kern == RK_KERN_AMX && !rk__amx_usable())
            break;
        double best = 1e30;
        for (int it = 0; it < 20; it++) {
            double t = now();
            rk__matmul(pool, kern, Y, X, (size_t)n, &W);
            t = now() - t;
            best = t < best ? t : best;
        }
        printf("R%d C%d n%d threads %d %s: %.3f ms, %.1f GFLOP/s, %.1f GB/s of weights\n", R,
               C, n, threads, kern == RK_KERN_AMX ? "AMX " : "bf16", best * 1e3,
               2.0 * R * C * n / best / 1e9, 2.0 * R * C / best / 1e9);
    }
    /* the same values as 8-bit weights */
    size_t PR = rk__q8_panel_rows((size_t)R);
    uint8_t *q = rk__malloc_aligned(PR * C), *rq = malloc((size_t)C);
    uint16_t *sc = malloc(PR * C / 16), *rs = malloc((size_t)C / 16);
    float *row = malloc(4ul * C);
    rk__q8_panel_init(q, sc, (size_t)R, (size_t)C);
    for (int r = 0; r < R; r++) {
        for (int c = 0; c < C; c++)
            row[c] = rk__bf16_to_f32(w[(size_t)r * C + c]);
        rk__q8_quantize_row(rq, rs, row, (size_t)C);
        rk__q8_panel_put(q, sc, (size_t)C, (size_t)r, rq, rs);
    }
    free(rq), free(rs);
    struct rk_weight Q = {RK_DTYPE_Q8, q, R, C, true, sc, NULL};
    double best = 1e30;
    for (int it = 0; it < 20; it++) {
        double t = now();
        rk__matmul(pool, RK_KERN_FAST, Y, X, (size_t)n, &Q);
        t = now() - t;
        best = t < best ? t : best;
    }
    static const char *const kn[] = {"q8 portable", "q8 avx2", "q8 vnni"};
    printf("R%d C%d n%d threads %d %s: %.3f ms, %.1f GFLOP/s, %.1f GB/s of weights\n", R, C, n,
           threads, kn[rk__cpu()->q8], best * 1e3, 2.0 * R * C * n / best / 1e9,
           (double)R * C * (1.0 + 2.0 / 32) / best / 1e9);
    rk__free_aligned(q), free(sc), free(row);
    rk__pool_free(pool);
    free(w), rk__free_aligned(p), free(X), free(Y);
    return 0;
}

static int cmd_sgemm(int R, int C, int n, int threads)
{
    if (R <= 0 || C <= 0 || n <= 0 || threads <= 0) {
        fprintf(stderr, "sgemm: ROWS, COLS, N and THREADS must be positive\n");
        return 2;
    }
    uint16_t *w = malloc(2ul * R * C);
    float *X = malloc(4ul * n * (R > C ? R : C)), *Y = malloc(4ul * n * (R > C ? R : C));
    float *wbuf = malloc(4ul << 20);
    for (size_t i = 0; i < (size_t)R * C; i++)
        w[i] = rk__f32_to_bf16((float)(i % 251) * 1e-3f - 0.1f);
    for (size_t i = 0; i < (size_t)n * (R > C ? R : C); i++)
        X[i] = (float)(i % 127) * 1e-3f;
    struct rk_weight W = {RK_DTYPE_BF16, w, R, C, false, NULL, NULL}; /* row-major: no panels */
    struct rk__pool *pool = NULL;
    if (rk__pool_create(threads, 0, &pool) != RK_OK)
        return 1;
    double best[2] = {1e30, 1e30};
    for (int it = 0; it < 15; it++) {
        double t0 = now();
        rk__matmul(pool, RK_KERN_FAST, Y, X, (size_t)n, &W);
        double t1 = now();
        rk__matmul_t(pool, Y, X, (size_t)n, &W, false, wbuf, 1u << 20);
        double t2 = now();
        best[0] = t1 - t0 < best[0] ? t1 - t0 : best[0];
        best[1] = t2 - t1 < best[1] ? t2 - t1 : best[1];
    }
    double gf = 2.0 * R * C * n / 1e9;
    printf("R%d C%d n%d threads %d: forward %.3f ms %.1f GFLOP/s, transposed %.3f ms %.1f "
           "GFLOP/s\n",
           R, C, n, threads, best[0] * 1e3, gf / best[0], best[1] * 1e3, gf / best[1]);
    rk__pool_free(pool);
    free(w), free(X), free(Y), free(wbuf);
    return 0;
}

static int cmd_step(const char *path, int n, int threads, int reps, bool prefill, bool amx)
{
    struct rk_model *m = NULL;
    if (n <= 0 || n > 4096 || threads <= 0 || reps <= 0 ||
        rk_model_load(path, NULL, &m, NULL) != RK_OK) {
        fprintf(stderr, "step: cannot load %s or bad arguments\n", path);
        return 2;
    }
    size_t V = (size_t)rk_model_n_vocab(m), SL = rk_state_len(m), states = prefill ? 1 : (size_t)n;
    struct rk_ctx_params cp = {.n_threads = threads, .rows_max = prefill ? 512 : n};
    struct rk_ctx *c = NULL;
    if (rk_ctx_create(m, &cp, &c) != RK_OK)
        return 1;
    if (amx && !rk_ctx_set_amx(c, true))
        printf("(AMX not available for this model here: fp32 kernels)\n");
    float *st = calloc(states * SL, sizeof(float)), *lg = malloc((prefill ? 1 : (size_t)n) * V * 4);
    float **sp = malloc(states * sizeof *sp);
    uint32_t *tk = malloc((size_t)n * sizeof *tk);
    double *ts = malloc((size_t)reps * sizeof *ts);
    for (size_t b = 0; b < states; b++)
        sp[b] = st + b * SL;
    for (int i = 0; i < n; i++)
        tk[i] = (uint32_t)(((size_t)i * 37 + 1) % V);
    for (int r = 0; r < reps; r++) {
        double t = now();
        if (prefill) {
            memset(st, 0, SL * sizeof(float));
            rk_forward_seq(c, tk, (size_t)n, st, lg, false);
        } else {
            rk_forward_batch(c, (size_t)n, tk, sp, lg);
        }
        ts[r] = now() - t;
    }
    qsort(ts, (size_t)reps, sizeof *ts, cmp_double);
    printf("%s N=%d threads %d%s: best %.2f ms, median %.2f ms -> %.1f tok/s (median)\n",
           prefill ? "prefill" : "batch", n, threads, amx ? " amx" : "", ts[0] * 1e3,
           ts[reps / 2] * 1e3, n / ts[reps / 2]);
    free(st), free(lg), free(sp), free(tk), free(ts);
    rk_ctx_free(c);
    rk_model_free(m);
    return 0;
}

#endif

int main(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "wkv"))
        return cmd_wkv(argc > 2 ? atoi(argv[2]) : 64);
#ifndef RWKVD_KERNELS_WKV_ONLY
    if (argc >= 2 && !strcmp(argv[1], "isa"))
        return cmd_isa();
    if (argc >= 6 && !strcmp(argv[1], "matmul"))
        return cmd_matmul(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), atoi(argv[5]));
    if (argc >= 6 && !strcmp(argv[1], "sgemm"))
        return cmd_sgemm(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), atoi(argv[5]));
    if (argc >= 6 && !strcmp(argv[1], "step")) {
        bool prefill = false, amx = false;
        for (int i = 6; i < argc; i++) {
            prefill |= !strcmp(argv[i], "prefill");
            amx |= !strcmp(argv[i], "amx");
        }
        return cmd_step(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), prefill, amx);
    }
#endif
    fprintf(stderr, "usage: rwkvd-kernels isa | wkv [STRIDE] | matmul ROWS COLS N THREADS |\n"
                    "       sgemm ROWS COLS N THREADS | step MODEL N THREADS REPS [prefill] [amx]\n"
                    "(see the comment at the top of bench/kernels.c)\n");
    return 2;
}

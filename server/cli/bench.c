/*
 * bench.c - `rwkvd bench`: prefill, single-stream decode and batched decode
 * throughput plus peak RSS, and (with --limits) the machine's read bandwidth
 * and sgemm rate measured in the same run, so results can be reported as
 * ratios against what the hardware allows.
 */
#include "cli_common.h"
#include "cmd.h"

#include <cblas.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>

extern void openblas_set_num_threads(int);

static uint64_t rng_next(uint64_t *s)
{
    *s += 0x9e3779b97f4a7c15ull;
    uint64_t z = *s;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double peak_rss_mb(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0;
}

/* --- hardware limits ------------------------------------------------------ */

struct bw_arg {
    const float *buf;
    size_t n;
    int reps;
    double sum;
};

/* Sum the buffer with 8 independent vector accumulators so that the loop is
 * limited by memory, not by the add latency. */
#if defined(__x86_64__)
#include <immintrin.h>
__attribute__((target("avx512f"))) static double sum_avx512(const float *b, size_t n)
{
    __m512 acc[8];
    for (int k = 0; k < 8; k++)
        acc[k] = _mm512_setzero_ps();
    for (size_t i = 0; i + 128 <= n; i += 128)
        for (int k = 0; k < 8; k++)
            acc[k] = _mm512_add_ps(acc[k], _mm512_loadu_ps(b + i + 16 * k));
    for (int k = 1; k < 8; k++)
        acc[0] = _mm512_add_ps(acc[0], acc[k]);
    return _mm512_reduce_add_ps(acc[0]);
}
#endif

static double sum_plain(const float *b, size_t n)
{
    float acc[32] = {0};
    for (size_t i = 0; i + 32 <= n; i += 32)
        for (int k = 0; k < 32; k++)
            acc[k] += b[i + k];
    double s = 0;
    for (int k = 0; k < 32; k++)
        s += acc[k];
    return s;
}

static void *bw_thread(void *p)
{
    struct bw_arg *a = p;
    double s = 0;
    for (int r = 0; r < a->reps; r++) {
#if defined(__x86_64__)
        if (__builtin_cpu_supports("avx512f"))
            s += sum_avx512(a->buf, a->n);
        else
#endif
            s += sum_plain(a->buf, a->n);
    }
    a->sum = s;
    return NULL;
}

/* Read bandwidth in GB/s with `threads` readers over a 1 GiB buffer. */
static double measure_bandwidth(int threads)
{
    size_t total = (size_t)1 << 28; /* floats = 1 GiB */
    float *buf = malloc(total * sizeof(float));
    if (!buf)
        return 0;
    for (size_t i = 0; i < total; i++)
        buf[i] = (float)(i & 7);
    pthread_t th[64];
    struct bw_arg args[64];
    if (threads > 64)
        threads = 64;
    int reps = 3;
    double t0 = rk_cli_now();
    for (int i = 0; i < threads; i++) {
        args[i] = (struct bw_arg){buf + total / (size_t)threads * (size_t)i,
                                  total / (size_t)threads, reps, 0};
        pthread_create(&th[i], NULL, bw_thread, &args[i]);
    }
    for (int i = 0; i < threads; i++)
        pthread_join(th[i], NULL);
    double dt = rk_cli_now() - t0;
    free(buf);
    return (double)total * sizeof(float) * reps / dt / 1e9;
}

/* OpenBLAS sgemm GFLOP/s on a prefill-like shape (512 x 768 x 3072). */
static double measure_sgemm(int threads)
{
    int M = 512, K = 768, Nn = 3072;
    float *A = calloc((size_t)M * K, sizeof(float)), *B = calloc((size_t)Nn * K, sizeof(float));
    float *Cm = calloc((size_t)M * Nn, sizeof(float));
    if (!A || !B || !Cm) {
        free(A), free(B), free(Cm);
        return 0;
    }
    for (size_t i = 0; i < (size_t)M * K; i++)
        A[i] = (float)(i % 13) * 0.01f;
    for (size_t i = 0; i < (size_t)Nn * K; i++)
        B[i] = (float)(i % 7) * 0.01f;
    openblas_set_num_threads(threads);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, Nn, K, 1, A, K, B, K, 0, Cm, Nn);
    int reps = 10;
    double t0 = rk_cli_now();
    for (int r = 0; r < reps; r++)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, Nn, K, 1, A, K, B, K, 0, Cm, Nn);
    double dt = rk_cli_now() - t0;
    openblas_set_num_threads(1);
    free(A), free(B), free(Cm);
    return 2.0 * M * K * Nn * reps / dt / 1e9;
}

/* --- kernel states (--kernel-m) ------------------------------------------- */

struct kbench {
    double dec_plain, dec_kernel;                 /* single-stream tok/s */
    double term_fwd_s;  /* the term alone, one token through every layer and head, 1 thread */
    double term_bwd_s;  /* its backward over the prompt, every layer and head, 1 thread */
    double st_std, st_kernel, st_dbp; /* seconds per tuning step */
    double dbp_r_share; /* fraction of dbp's step time in its R update (timed directly) */
};

struct kstep {
    double last, best;
    double sum_dt, sum_after; /* steps 2.. : whole steps, and their after-update hooks */
};

static void kstep_cb(const struct rk_tune_progress *pr, void *user)
{
    struct kstep *k = user;
    if (isnan(pr->val_loss)) { /* a step report, not an evaluation's */
        double dt = pr->elapsed_s - k->last;
        if (pr->step >= 2 && dt < k->best)
            k->best = dt;
        if (pr->step >= 2) {
            k->sum_dt += dt;
            k->sum_after += pr->after_s;
        }
        k->last = pr->elapsed_s;
    }
}

/* Seconds of one optimizer step of `meth` on one sequence (the best of
 * steps 2..5 of one run); *after_share (if not NULL) gets the fraction of
 * those steps' time spent in the method's after-update hook (dbp: R). */
static double kernel_step(const struct rk_model *m, const struct rk_dataset *ds,
                          const struct rk_tune_method *meth, int M, double dbp_lr, int threads,
                          double *after_share)
{
    struct rk_tune_params p;
    rk_tune_params_default(&p);
    p.method = meth;
    p.kernel_m = M;
    p.dbp_lr = dbp_lr;
    p.steps = 5;
    p.batch = 1;
    p.val_split = 0;
    p.eval_every = 0;
    p.lr = 0.01;
    p.n_threads = threads;
    float *out = malloc(rk_tune_params_len(m, &p) * sizeof(float));
    struct kstep k = {0, 1e30, 0, 0};
    int rc = out ? rk_tune_run(m, &p, ds, NULL, NULL, kstep_cb, &k, out, NULL) : RK_ENOMEM;
    free(out);
    if (after_share)
        *after_share = k.sum_dt > 0 ? k.sum_after / k.sum_dt : 0;
    return rc == RK_OK ? k.best : -1;
}

/* Decode with a kernel state of M features against plain decode (alternating
 * rounds, best of each), and with `tune` the tuning steps of standard,
 * kernel and dbp (with its R update timed on its own). */
static int kernel_bench(const struct rk_model *m, struct rk_ctx *ctx, const uint32_t *toks,
                        size_t n_toks, long ptoks, long dtoks, int M, bool tune, int threads,
                        struct kbench *kb)
{
    memset(kb, 0, sizeof *kb);
    struct rk_tune_params p;
    rk_tune_params_default(&p);
    p.method = &rk_method_kernel;
    p.kernel_m = M;
    struct rk_kernel_layout kl;
    rk_kernel_layout(m, M, &kl);
    size_t SL = rk_state_len(m), LH = (size_t)rk_model_n_layer(m) * rk_model_n_head(m);
    size_t V = (size_t)rk_model_n_vocab(m);
    float *ad = malloc(kl.len * sizeof(float)), *st = malloc(SL * sizeof(float));
    float *carry = calloc(LH, sizeof(float)), *lg = malloc(V * sizeof(float));
    int rc = RK_ENOMEM;
    if (!ad || !st || !carry || !lg)
        goto out;
    rk_method_kernel.params_init(m, &p, NULL, ad);
    uint64_t seed = 7;
    for (size_t i = kl.P; i < kl.omega; i++)
        ad[i] = (float)((double)(rng_next(&seed) >> 11) / 9007199254740992.0 - 0.5) * 0.04f;
    struct rk_kernel_view view;
    rk_kernel_view_of(m, M, RK_FADE_MEAN, ad, &view);
    struct rk_readout ro = {&rk_kernel_readout, &view, carry};
    /* the term alone runs unfaded (fade none): the most work it can do */
    struct rk_kernel_view full = view;
    full.fade = RK_FADE_NONE;
    for (int round = 0; round < 5; round++)
        for (int k = 0; k < 2; k++) {
            memset(st, 0, SL * sizeof(float));
            memset(carry, 0, LH * sizeof(float));
            double t0 = rk_cli_now();
            for (long i = 0; i < dtoks; i++)
                if ((rc = rk_forward_seq_ro(ctx, &toks[(size_t)i % n_toks], 1, st,
                                            k ? &ro : NULL, lg, false)) != RK_OK)
                    goto out;
            double r = (double)dtoks / (rk_cli_now() - t0);
            double *b = k ? &kb->dec_kernel : &kb->dec_plain;
            *b = r > *b ? r : *b;
        }
    /* the term alone on one thread, best of 20: forward of one token, and
     * (with --tune) forward + backward over the prompt, for every layer and head */
    {
        const int L = rk_model_n_layer(m), H = rk_model_n_head(m), N = rk_model_head_size(m);
        size_t T = tune ? (size_t)ptoks : 1, TN = T * (size_t)N;
        float *r = malloc(TN * sizeof(float)), *w = malloc(TN * sizeof(float));
        float *y = calloc(TN, sizeof(float)), *dr = calloc(TN, sizeof(float));
        float *dw = calloc(TN, sizeof(float));
        struct rk_kernel_grad g = {.weight = 1.0f, .dP = calloc(kl.omega - kl.P, sizeof(float))};
        float *scr = malloc(rk_kernel_readout.bwd_scratch(&full, T) * sizeof(float));
        rc = r && w && y && dr && dw && g.dP && scr ? RK_OK : RK_ENOMEM;
        for (size_t i = 0; rc == RK_OK && i < TN; i++) {
            r[i] = (float)((double)(rng_next(&seed) >> 11) / 9007199254740992.0 - 0.5);
            w[i] = 0.9f;
        }
        kb->term_fwd_s = kb->term_bwd_s = 1e30;
        for (int rep = 0; rc == RK_OK && rep < 20; rep++) {
            double t0 = rk_cli_now();
            for (int l = 0; l < L; l++)
                for (int h = 0; h < H; h++)
                    rk_kernel_readout.fwd(&full, l, h, 1, (size_t)N, r, w, carry, y);
            double dt = rk_cli_now() - t0;
            kb->term_fwd_s = dt < kb->term_fwd_s ? dt : kb->term_fwd_s;
            if (!tune || rep >= 3)
                continue;
            t0 = rk_cli_now();
            for (int l = 0; l < L; l++)
                for (int h = 0; h < H; h++) {
                    rk_kernel_readout.fwd(&full, l, h, T, (size_t)N, r, w, carry, y);
                    rk_kernel_readout.bwd(&full, l, h, T, (size_t)N, r, w, y, dr, dw, &g, scr);
                }
            dt = rk_cli_now() - t0;
            kb->term_bwd_s = dt < kb->term_bwd_s ? dt : kb->term_bwd_s;
        }
        free(r), free(w), free(y), free(dr), free(dw), free(g.dP), free(scr);
        if (rc != RK_OK)
            goto out;
    }
    if (tune) {
        struct rk_dataset *ds = NULL;
        if ((rc = rk_dataset_create(&ds)) != RK_OK ||
            (rc = rk_dataset_add(ds, toks, NULL, (size_t)ptoks + 1)) != RK_OK) {
            rk_dataset_free(ds);
            goto out;
        }
        kb->st_std = kernel_step(m, ds, &rk_method_standard, M, 0, threads, NULL);
        kb->st_kernel = kernel_step(m, ds, &rk_method_kernel, M, 0, threads, NULL);
        kb->st_dbp = kernel_step(m, ds, &rk_method_dbp, M, 1e-3, threads, &kb->dbp_r_share);
        rk_dataset_free(ds);
        rc = kb->st_std > 0 && kb->st_kernel > 0 && kb->st_dbp > 0 ? RK_OK : RK_EINTERNAL;
    }
out:
    free(ad), free(st), free(carry), free(lg);
    return rc;
}

/* --- the benchmark -------------------------------------------------------- */

/* Seconds of one prefill of n tokens from the zero state (logits for the
 * last token only), or -1 on failure. */
static double prefill_once(struct rk_ctx *ctx, const uint32_t *toks, size_t n, float *state,
                           size_t state_len, float *logits)
{
    memset(state, 0, state_len * sizeof(float));
    double t0 = rk_cli_now();
    if (rk_forward_seq(ctx, toks, n, state, logits, false) != RK_OK)
        return -1;
    return rk_cli_now() - t0;
}

int rk_cmd_bench(int argc, char **argv)
{
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"threads", required_argument, 0, 'j'},
                                         {"prompt-tokens", required_argument, 0, 'p'},
                                         {"decode-tokens", required_argument, 0, 'n'},
                                         {"chunk", required_argument, 0, 'c'},
                                         {"batch", required_argument, 0, 'b'},
                                         {"wtype", required_argument, 0, 'w'},
                                         {"json", no_argument, 0, 'J'},
                                         {"limits", no_argument, 0, 'L'},
                                         {"tune", no_argument, 0, 'T'},
                                         {"no-amx", no_argument, 0, 'A'},
                                         {"kernel-m", required_argument, 0, 'K'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *model = NULL, *batch_list = "1,4,16";
    long threads = 0, ptoks = 512, dtoks = 64, chunk = 512, kernel_m = 0;
    bool json = false, limits = false, tune = false, no_amx = false;
    enum rk_dtype wtype = RK_DTYPE_AUTO;
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "m:j:p:n:c:b:w:K:JLTAh", opts, NULL)) != -1) {
        switch (o) {
        case 'm': model = optarg; break;
        case 'j':
            if (!rk_cli_parse_long(optarg, 0, 256, &threads))
                goto bad;
            break;
        case 'p':
            if (!rk_cli_parse_long(optarg, 1, 1 << 20, &ptoks))
                goto bad;
            break;
        case 'n':
            if (!rk_cli_parse_long(optarg, 1, 1 << 20, &dtoks))
                goto bad;
            break;
        case 'c':
            if (!rk_cli_parse_long(optarg, 1, 4096, &chunk))
                goto bad;
            break;
        case 'b': batch_list = optarg; break;
        case 'A': no_amx = true; break;
        case 'K':
            if (!rk_cli_parse_long(optarg, 1, RK_KERNEL_M_MAX, &kernel_m))
                goto bad;
            break;
        case 'w':
            if (rk_dtype_parse(optarg, &wtype) != RK_OK)
                goto bad;
            break;
        case 'J': json = true; break;
        case 'L': limits = true; break;
        case 'T': tune = true; break;
        case 'h':
            printf("usage: rwkvd bench --model FILE [options]\n\n"
                   "  --threads N         compute threads (default: all CPUs)\n"
                   "  --prompt-tokens N   prefill length (default 512)\n"
                   "  --decode-tokens N   decode steps per measurement (default 64)\n"
                   "  --chunk N           prefill rows per pass (default 512; serve uses\n"
                   "                      --prefill-chunk, default 256)\n"
                   "  --batch LIST        batch sizes for batched decode (default 1,4,16)\n"
                   "  --wtype T           convert large matrices at load (f32|f16|bf16|q8)\n"
                   "  --limits            also measure read bandwidth and sgemm GFLOP/s\n"
                   "  --tune              also measure state tuning (forward + backward over\n"
                   "                      the prompt, every position scored), alternating\n"
                   "                      with prefill runs so the two compare in one run\n"
                   "  --no-amx            prefill on the fp32 kernels only (by default a bf16\n"
                   "                      model's prefill also runs on AMX tiles where the\n"
                   "                      CPU has them, as serve does; both are reported)\n"
                   "  --kernel-m M        also decode with a kernel state of M features per\n"
                   "                      head against plain decode, and with --tune time a\n"
                   "                      step of the methods standard, kernel and dbp\n"
                   "                      (docs/TUNING.md) on the prompt\n"
                   "  --json              print one JSON object\n");
            return 0;
        default: return 2;
        }
    }
    if (!model) {
        fprintf(stderr, "rwkvd bench: --model is required (see --help)\n");
        return 2;
    }
    uint32_t *blist = NULL;
    size_t nb = 0;
    if (!rk_cli_parse_ids(batch_list, &blist, &nb) || nb > 16) {
        fprintf(stderr, "rwkvd bench: --batch must be a list of up to 16 sizes\n");
        return 2;
    }
    for (size_t i = 0; i < nb; i++)
        if (blist[i] < 1 || blist[i] > 1024) {
            fprintf(stderr, "rwkvd bench: batch sizes must be 1..1024\n");
            free(blist);
            return 2;
        }
    int status = 1;
    struct rk_model *m = rk_cli_load_model(model, wtype);
    struct rk_ctx *ctx = NULL, *pctx = NULL, *tctx = NULL;
    float *grad = NULL;
    float *logits = NULL, *states = NULL;
    uint32_t *toks = NULL;
    float **sp = NULL;
    if (!m)
        goto out;
    size_t V = (size_t)rk_model_n_vocab(m), SL = rk_state_len(m);
    size_t bmax = 1;
    for (size_t i = 0; i < nb; i++)
        if (blist[i] > bmax)
            bmax = blist[i];
    struct rk_ctx_params cp = {.n_threads = (int)threads,
                               .rows_max = (int)(chunk > (long)bmax ? chunk : (long)bmax)};
    logits = malloc(bmax * V * sizeof(float));
    states = calloc(bmax * SL, sizeof(float));
    size_t n_toks = (size_t)ptoks + 1 > 64 + bmax ? (size_t)ptoks + 1 : 64 + bmax;
    toks = malloc(n_toks * sizeof *toks);
    sp = malloc(bmax * sizeof *sp);
    if (!logits || !states || !toks || !sp || rk_ctx_create(m, &cp, &ctx) != RK_OK) {
        fprintf(stderr, "rwkvd bench: out of memory\n");
        goto out;
    }
    uint64_t seed = 42;
    for (size_t i = 0; i < n_toks; i++)
        toks[i] = (uint32_t)(rng_next(&seed) % V);

    // prefill: best of 3 runs from the zero state, logits for the last token
    double best = 1e30;
    struct rk_ctx_params cp_pf = cp;
    cp_pf.rows_max = (int)chunk;
    if (rk_ctx_create(m, &cp_pf, &pctx) != RK_OK)
        goto out;
    /* with AMX (as serve and generate run prompts) and without, alternating */
    bool amx = !no_amx && rk_ctx_set_amx(pctx, true);
    double best_exact = 1e30;
    for (int rep = 0; rep < 3; rep++) {
        for (int pass = amx ? 0 : 1; pass < 2; pass++) {
            rk_ctx_set_amx(pctx, pass == 0);
            double dt = prefill_once(pctx, toks, (size_t)ptoks, states, SL, logits);
            if (dt < 0)
                goto fail;
            double *b = pass == 0 ? &best : &best_exact;
            if (dt < *b)
                *b = dt;
        }
    }
    rk_ctx_set_amx(pctx, false);
    double prefill_exact = (double)ptoks / best_exact;
    double prefill = amx ? (double)ptoks / best : prefill_exact;

    // single-stream decode with logits every step
    memset(states, 0, SL * sizeof(float));
    uint32_t tk = toks[0];
    rk_forward_token(ctx, tk, states, logits); /* warm-up */
    double decode = 0;
    for (int round = 0; round < 3; round++) { /* best of 3 stretches */
        double t0 = rk_cli_now();
        for (long i = 0; i < dtoks; i++) {
            tk = toks[(size_t)(i + 1) % n_toks];
            if (rk_forward_token(ctx, tk, states, logits) != RK_OK)
                goto fail;
        }
        double r = (double)dtoks / (rk_cli_now() - t0);
        decode = r > decode ? r : decode;
    }
    /* peak RSS of prefill + single-stream decode, before the batched runs
     * allocate one state per sequence */
    double rss_single = peak_rss_mb();

    // adapter swap: one copy of a stored state into a sequence's state buffer
    float *adapter = calloc(SL, sizeof(float));
    if (!adapter)
        goto out;
    for (size_t i = 0; i < SL; i++)
        adapter[i] = (float)(i % 97) * 1e-3f;
    int swaps = 200;
    double ts = rk_cli_now();
    for (int i = 0; i < swaps; i++) {
        rk_ctx_copy(ctx, states, adapter, SL); /* as the engine's admission does */
        adapter[i % SL] += 1e-6f; /* keep the copies from being merged */
    }
    double swap_s = (rk_cli_now() - ts) / swaps;
    free(adapter);

    // batched decode: B sequences with their own states, logits for each;
    // then the same on AMX tiles (serve --amx-decode) where available. Three
    // rounds over the batch sizes, best of each, so that the ratios between
    // sizes come from the same stretches of machine time.
    double batched[16] = {0}, batched_amx[16] = {0};
    for (int round = 0; round < 3; round++)
        for (int pass = 0; pass < (amx ? 2 : 1); pass++) {
            rk_ctx_set_amx(ctx, pass == 1);
            for (size_t bi = 0; bi < nb; bi++) {
                size_t B = blist[bi];
                for (size_t b = 0; b < B; b++)
                    sp[b] = states + b * SL;
                memset(states, 0, B * SL * sizeof(float));
                rk_forward_batch(ctx, B, toks, sp, logits);
                long steps = dtoks / (long)(B > 4 ? 4 : B);
                if (steps < 8)
                    steps = 8;
                double tb = rk_cli_now();
                for (long s = 0; s < steps; s++)
                    if (rk_forward_batch(ctx, B, toks + (size_t)s % 64, sp, logits) != RK_OK)
                        goto fail;
                double r = (double)B * (double)steps / (rk_cli_now() - tb);
                double *best_r = pass ? &batched_amx[bi] : &batched[bi];
                *best_r = r > *best_r ? r : *best_r;
            }
        }
    rk_ctx_set_amx(ctx, false);
    double rss = peak_rss_mb();
    /* tuning: rk_backward_seq over the prompt (targets = next tokens, all
     * scored), each run after a prefill run, best of 3 of each; before the
     * limits, whose 1 GiB bandwidth buffer would count in the peak RSS */
    double tune_s = 1e30, tune_pf_s = 1e30, tune_rss = 0;
    if (tune) {
        grad = malloc(SL * sizeof(float));
        if (!grad || rk_ctx_create(m, &cp, &tctx) != RK_OK) {
            fprintf(stderr, "rwkvd bench: out of memory\n");
            goto out;
        }
        for (int rep = 0; rep < 3; rep++) {
            double dt = prefill_once(pctx, toks, (size_t)ptoks, states, SL, logits);
            if (dt < 0)
                goto fail;
            tune_pf_s = dt < tune_pf_s ? dt : tune_pf_s;
            double loss, tb0 = rk_cli_now();
            if (rk_backward_seq(tctx, NULL, toks, toks + 1, NULL, (size_t)ptoks, NULL, &loss,
                                grad, NULL, NULL) != RK_OK)
                goto fail;
            dt = rk_cli_now() - tb0;
            tune_s = dt < tune_s ? dt : tune_s;
        }
        tune_rss = peak_rss_mb();
    }
    double bw = 0, gf = 0;
    if (limits) {
        int nt = threads > 0 ? (int)threads : 2;
        bw = measure_bandwidth(nt);
        gf = measure_sgemm(nt);
    }
    double wbytes = (double)rk_model_weight_bytes(m);
    struct stat fst;
    double file_mb = stat(model, &fst) == 0 ? (double)fst.st_size / 1048576.0 : 0;
    /* A decode step reads every weight once except the embedding table, of
     * which it reads one row. */
    enum rk_dtype wt = rk_model_wtype(m);
    struct kbench kb = {0};
    if (kernel_m && kernel_bench(m, ctx, toks, n_toks, ptoks, dtoks, (int)kernel_m, tune,
                                 (int)threads, &kb) != RK_OK) {
        fprintf(stderr, "rwkvd bench: the kernel-state runs failed\n");
        goto out;
    }
    double emb_bytes = (double)V * rk_model_n_embd(m) *
                       (wt == RK_DTYPE_F32 ? 4.0 : wt == RK_DTYPE_Q8 ? 1.0 + 2.0 / 32 : 2.0);
    double step_bytes = wbytes - emb_bytes;
    if (json) {
        printf("{\"prefill_tok_s\":%.2f,\"decode_tok_s\":%.2f,\"batched_tok_s\":{", prefill, decode);
        for (size_t bi = 0; bi < nb; bi++)
            printf("%s\"%u\":%.2f", bi ? "," : "", blist[bi], batched[bi]);
        printf("},\"peak_rss_mb\":%.1f,\"peak_rss_single_mb\":%.1f,\"file_mb\":%.1f", rss,
               rss_single, file_mb);
        printf(",\"adapter_swap_us\":%.2f,\"adapter_swap_vs_step\":%.5f", swap_s * 1e6,
               swap_s * decode);
        printf(",\"model_mb\":%.1f,\"wtype\":\"%s\",\"threads\":%d", wbytes / 1048576.0,
               rk_dtype_name(rk_model_wtype(m)), rk_ctx_n_threads(ctx));
        printf(",\"prefill_amx\":%s,\"prefill_fp32_tok_s\":%.2f", amx ? "true" : "false",
               prefill_exact);
        if (amx) {
            printf(",\"batched_amx_tok_s\":{");
            for (size_t bi = 0; bi < nb; bi++)
                printf("%s\"%u\":%.2f", bi ? "," : "", blist[bi], batched_amx[bi]);
            printf("}");
        }
        if (limits)
            printf(",\"read_gb_s\":%.2f,\"sgemm_gflop_s\":%.1f,\"decode_bw_line_tok_s\":%.2f,"
                   "\"decode_vs_line\":%.3f", bw, gf, bw * 1e9 / step_bytes,
                   decode / (bw * 1e9 / step_bytes));
        if (tune)
            printf(",\"tune_tok_s\":%.2f,\"tune_prefill_tok_s\":%.2f,\"tune_vs_prefill\":%.3f,"
                   "\"tune_peak_rss_mb\":%.1f",
                   (double)ptoks / tune_s, (double)ptoks / tune_pf_s, tune_pf_s / tune_s, tune_rss);
        if (kernel_m)
            printf(",\"kernel_m\":%ld,\"kernel_decode_tok_s\":%.2f,\"plain_decode_tok_s\":%.2f,"
                   "\"kernel_decode_overhead\":%.4f,\"kernel_term_us_per_token\":%.1f",
                   kernel_m, kb.dec_kernel, kb.dec_plain, kb.dec_plain / kb.dec_kernel - 1,
                   kb.term_fwd_s * 1e6);
        if (kernel_m && tune)
            printf(",\"step_s\":{\"standard\":%.4f,\"kernel\":%.4f,\"dbp\":%.4f},"
                   "\"dbp_r_update_share\":%.4f,\"kernel_term_step_s\":%.4f", kb.st_std,
                   kb.st_kernel, kb.st_dbp, kb.dbp_r_share, kb.term_bwd_s);
        printf("}\n");
    } else {
        printf("model        %s (L=%d C=%d V=%zu, %s, %.1f MB of weights)\n", model,
               rk_model_n_layer(m), rk_model_n_embd(m), V, rk_dtype_name(rk_model_wtype(m)),
               wbytes / 1048576.0);
        printf("prefill      %.1f tok/s (%ld tokens, chunk %ld%s)\n", prefill, ptoks, chunk,
               amx ? ", AMX tiles, bf16 inputs" : "");
        if (amx)
            printf("prefill fp32 %.1f tok/s (the exact path, --no-amx)\n", prefill_exact);
        printf("decode       %.2f tok/s (single stream)\n", decode);
        for (size_t bi = 0; bi < nb; bi++)
            printf("batched B=%-3u %.2f tok/s (aggregate)\n", blist[bi], batched[bi]);
        for (size_t bi = 0; amx && bi < nb; bi++)
            printf("batched B=%-3u %.2f tok/s on AMX tiles (serve --amx-decode)\n", blist[bi],
                   batched_amx[bi]);
        printf("peak RSS     %.1f MiB (%.1f MiB before the batched runs; file %.1f MiB)\n", rss,
               rss_single, file_mb);
        printf("adapter swap %.1f us per state copy (%zu KiB) = %.3f%% of one decode step\n",
               swap_s * 1e6, SL * sizeof(float) / 1024, 100.0 * swap_s * decode);
        if (limits)
            printf("limits       read %.2f GB/s (decode line %.1f tok/s, decode at %.0f%% of it), "
                   "sgemm %.1f GFLOP/s\n",
                   bw, bw * 1e9 / step_bytes, 100.0 * decode / (bw * 1e9 / step_bytes), gf);
        if (tune)
            printf("tuning       %.1f tok/s forward + backward (%ld tokens, all scored) = "
                   "%.1f%% of the prefill runs between them (%.1f tok/s); peak RSS %.1f MiB\n",
                   (double)ptoks / tune_s, ptoks, 100.0 * tune_pf_s / tune_s,
                   (double)ptoks / tune_pf_s, tune_rss);
        if (kernel_m)
            printf("kernel M=%ld decode %.2f tok/s with a kernel state, %.2f tok/s plain "
                   "(alternating rounds): +%.1f%% per token\n", kernel_m, kb.dec_kernel,
                   kb.dec_plain, 100.0 * (kb.dec_plain / kb.dec_kernel - 1));
        if (kernel_m)
            printf("kernel M=%ld the term alone: %.1f us per token through all %d layers x %d "
                   "heads on one thread = %.1f%% of a plain decode step\n", kernel_m,
                   kb.term_fwd_s * 1e6, rk_model_n_layer(m), rk_model_n_head(m),
                   100.0 * kb.term_fwd_s * kb.dec_plain);
        if (kernel_m && tune)
            printf("kernel M=%ld the term's forward + backward over the prompt: %.3f s on one "
                   "thread = %.1f%% of a standard step\n", kernel_m, kb.term_bwd_s,
                   100.0 * kb.term_bwd_s / kb.st_std);
        if (kernel_m && tune)
            printf("kernel M=%ld tuning step (%ld tokens, batch 1): standard %.3f s, kernel "
                   "%.3f s (%.2fx), dbp %.3f s (%.2fx; its R update %.1f%% of the step)\n",
                   kernel_m, ptoks, kb.st_std, kb.st_kernel, kb.st_kernel / kb.st_std, kb.st_dbp,
                   kb.st_dbp / kb.st_std, 100.0 * kb.dbp_r_share);
    }
    status = 0;
out:
    free(blist);
    free(logits);
    free(states);
    free(toks);
    free(sp);
    free(grad);
    rk_ctx_free(ctx);
    rk_ctx_free(pctx);
    rk_ctx_free(tctx);
    rk_model_free(m);
    return status;
fail:
    fprintf(stderr, "rwkvd bench: a forward pass failed\n");
    status = 1;
    goto out;
bad:
    fprintf(stderr, "rwkvd bench: invalid value '%s' for %s\n", optarg, argv[optind - 1]);
    return 2;
}

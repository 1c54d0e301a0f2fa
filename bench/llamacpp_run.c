/* llamacpp_run: drives llama.cpp's libllama for the comparison in
 * bench/llamacpp_compare.sh. Not built by meson (CI has no llama.cpp); the
 * script compiles it against the llama.h of the library it measures.
 *
 *   llamacpp_run logits BACKEND_DIR MODEL.gguf THREADS ID,ID,...
 *       feeds the tokens from the zero state in one batch and prints the
 *       logits after the last one as one JSON array (as `rwkvd logits`).
 *   llamacpp_run tokenize BACKEND_DIR MODEL.gguf TEXT
 *       prints the token ids of TEXT (no special tokens added or parsed) as
 *       one JSON array (as `rwkvd tokenize`).
 *   llamacpp_run bench BACKEND_DIR MODEL.gguf THREADS PROMPT DECODE RUNS
 *       per run: clears the state, prefills PROMPT tokens in one batch, then
 *       decodes DECODE tokens one at a time; prints best and median
 *       tokens/s of each phase as one JSON object.
 *
 * BACKEND_DIR holds the ggml CPU backend variants (libggml-cpu-*.so), loaded
 * with ggml_backend_load_all_from_path(), which picks the best one the CPU
 * supports. logits and bench take token ids as they are. */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ggml-backend.h"
#include "llama.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void quiet_log(enum ggml_log_level level, const char *text, void *ud)
{
    (void)ud;
    if (level >= GGML_LOG_LEVEL_WARN || getenv("LLAMACPP_RUN_VERBOSE"))
        fputs(text, stderr);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int parse_int(const char *s, const char *what, long lo, long hi)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < lo || v > hi) {
        fprintf(stderr, "llamacpp_run: %s must be an integer in %ld..%ld, got '%s'\n",
                what, lo, hi, s);
        exit(2);
    }
    return (int)v;
}

static struct llama_context *make_ctx(struct llama_model *model, int threads, int n_batch)
{
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)(n_batch + 64);
    cp.n_batch = (uint32_t)n_batch;
    cp.n_ubatch = (uint32_t)n_batch;
    cp.n_seq_max = 1;
    cp.n_threads = threads;
    cp.n_threads_batch = threads;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        fprintf(stderr, "llamacpp_run: llama_init_from_model failed\n");
        exit(1);
    }
    return ctx;
}

int main(int argc, char **argv)
{
    if (argc == 5 && strcmp(argv[1], "tokenize") == 0) {
        llama_log_set(quiet_log, NULL);
        ggml_backend_load_all_from_path(argv[2]);
        llama_backend_init();
        struct llama_model_params mp = llama_model_default_params();
        mp.vocab_only = true;
        struct llama_model *model = llama_model_load_from_file(argv[3], mp);
        if (!model) {
            fprintf(stderr, "llamacpp_run: llama.cpp could not load %s\n", argv[3]);
            return 1;
        }
        const struct llama_vocab *vocab = llama_model_get_vocab(model);
        int len = (int)strlen(argv[4]), cap = len + 8;
        llama_token *tok = malloc(sizeof *tok * (size_t)cap);
        int n = llama_tokenize(vocab, argv[4], len, tok, cap, false, false);
        if (n < 0) {
            fprintf(stderr, "llamacpp_run: llama_tokenize failed (%d)\n", n);
            return 1;
        }
        putchar('[');
        for (int i = 0; i < n; i++)
            printf("%s%d", i ? "," : "", tok[i]);
        puts("]");
        free(tok);
        llama_model_free(model);
        return 0;
    }
    if (argc < 6 || (strcmp(argv[1], "logits") != 0 && strcmp(argv[1], "bench") != 0) ||
        (strcmp(argv[1], "logits") == 0 && argc != 6) ||
        (strcmp(argv[1], "bench") == 0 && argc != 8)) {
        fprintf(stderr, "usage: llamacpp_run logits BACKEND_DIR MODEL THREADS ID,ID,...\n"
                        "       llamacpp_run tokenize BACKEND_DIR MODEL TEXT\n"
                        "       llamacpp_run bench BACKEND_DIR MODEL THREADS PROMPT DECODE RUNS\n");
        return 2;
    }
    int threads = parse_int(argv[4], "THREADS", 1, 512);
    llama_log_set(quiet_log, NULL);
    ggml_backend_load_all_from_path(argv[2]);
    llama_backend_init();

    struct llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    struct llama_model *model = llama_model_load_from_file(argv[3], mp);
    if (!model) {
        fprintf(stderr, "llamacpp_run: llama.cpp could not load %s\n", argv[3]);
        return 1;
    }
    int n_vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));

    if (strcmp(argv[1], "logits") == 0) {
        int cap = 16, n = 0;
        llama_token *tok = malloc(sizeof *tok * (size_t)cap);
        for (char *s = argv[5], *end;; s = end + 1) {
            long v = strtol(s, &end, 10);
            if (end == s || v < 0 || v >= n_vocab || (*end != ',' && *end != '\0')) {
                fprintf(stderr, "llamacpp_run: bad token list (ids 0..%d, comma-separated)\n",
                        n_vocab - 1);
                return 2;
            }
            if (n == cap)
                tok = realloc(tok, sizeof *tok * (size_t)(cap *= 2));
            tok[n++] = (llama_token)v;
            if (*end == '\0')
                break;
        }
        struct llama_context *ctx = make_ctx(model, threads, n < 32 ? 32 : n);
        if (llama_decode(ctx, llama_batch_get_one(tok, n)) != 0) {
            fprintf(stderr, "llamacpp_run: llama_decode failed\n");
            return 1;
        }
        const float *lg = llama_get_logits_ith(ctx, -1);
        putchar('[');
        for (int i = 0; i < n_vocab; i++)
            printf("%s%.9g", i ? "," : "", (double)lg[i]);
        puts("]");
        llama_free(ctx);
        free(tok);
    } else {
        int prompt = parse_int(argv[5], "PROMPT", 1, 65536);
        int decode = parse_int(argv[6], "DECODE", 1, 65536);
        int runs = parse_int(argv[7], "RUNS", 1, 1000);
        struct llama_context *ctx = make_ctx(model, threads, prompt);
        llama_token *tok = malloc(sizeof *tok * (size_t)prompt);
        srand(1);
        for (int i = 0; i < prompt; i++)
            tok[i] = 1 + rand() % (n_vocab - 1);
        double *pf = malloc(sizeof *pf * (size_t)runs), *dc = malloc(sizeof *dc * (size_t)runs);
        for (int r = 0; r < runs; r++) {
            llama_memory_clear(llama_get_memory(ctx), true);
            double t0 = now_s();
            if (llama_decode(ctx, llama_batch_get_one(tok, prompt)) != 0) {
                fprintf(stderr, "llamacpp_run: llama_decode (prefill) failed\n");
                return 1;
            }
            (void)llama_get_logits_ith(ctx, -1);
            double t1 = now_s();
            for (int i = 0; i < decode; i++) {
                llama_token t = tok[i % prompt];
                if (llama_decode(ctx, llama_batch_get_one(&t, 1)) != 0) {
                    fprintf(stderr, "llamacpp_run: llama_decode (decode) failed\n");
                    return 1;
                }
                (void)llama_get_logits_ith(ctx, -1);
            }
            double t2 = now_s();
            pf[r] = prompt / (t1 - t0);
            dc[r] = decode / (t2 - t1);
        }
        qsort(pf, (size_t)runs, sizeof *pf, cmp_double);
        qsort(dc, (size_t)runs, sizeof *dc, cmp_double);
        printf("{\"threads\":%d,\"prompt_tokens\":%d,\"decode_tokens\":%d,\"runs\":%d,"
               "\"prefill_tok_s_best\":%.2f,\"prefill_tok_s_median\":%.2f,"
               "\"decode_tok_s_best\":%.2f,\"decode_tok_s_median\":%.2f}\n",
               threads, prompt, decode, runs, pf[runs - 1], pf[runs / 2], dc[runs - 1],
               dc[runs / 2]);
        free(pf);
        free(dc);
        free(tok);
        llama_free(ctx);
    }
    llama_model_free(model);
    llama_backend_free();
    return 0;
}

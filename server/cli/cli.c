/*
 * cli.c - the offline subcommands: generate, logits, tokenize, convert.
 * `logits` and `tokenize` print exactly one JSON array on stdout, so other
 * implementations can be compared with them.
 */
#include "cli_common.h"
#include "cmd.h"
#include "rk_adapters.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* --- shared helpers ------------------------------------------------------- */

double rk_cli_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

bool rk_cli_parse_long(const char *s, long lo, long hi, long *out)
{
    if (!s || !*s)
        return false;
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

bool rk_cli_parse_float(const char *s, double lo, double hi, double *out)
{
    if (!s || !*s)
        return false;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !isfinite(v) || v < lo || v > hi)
        return false;
    *out = v;
    return true;
}

bool rk_cli_parse_ids(const char *s, uint32_t **out, size_t *n)
{
    *out = NULL;
    *n = 0;
    if (!s || !*s)
        return false;
    size_t cap = 1;
    for (const char *p = s; *p; p++)
        cap += *p == ',';
    uint32_t *ids = malloc(cap * sizeof *ids);
    if (!ids)
        return false;
    size_t k = 0;
    const char *p = s;
    for (;;) {
        char *end;
        errno = 0;
        if (*p < '0' || *p > '9')
            goto bad;
        unsigned long v = strtoul(p, &end, 10);
        if (errno || v > UINT32_MAX)
            goto bad;
        ids[k++] = (uint32_t)v;
        if (*end == '\0')
            break;
        if (*end != ',')
            goto bad;
        p = end + 1;
    }
    *out = ids;
    *n = k;
    return true;
bad:
    free(ids);
    return false;
}

struct rk_model *rk_cli_load_model(const char *path, enum rk_dtype wtype)
{
    struct rk_errbuf eb = {0};
    struct rk_model *m = NULL;
    struct rk_model_params p = {.wtype = wtype};
    int rc = rk_model_load(path, &p, &m, &eb);
    if (rc != RK_OK) {
        fprintf(stderr, "rwkvd: %s\n", eb.msg[0] ? eb.msg : rk_strerror(rc));
        return NULL;
    }
    return m;
}

int rk_cli_load_state_ro(const char *path, const struct rk_model *m, float *state,
                         struct rk_cli_ro *ro)
{
    void *buf = NULL;
    size_t len = 0;
    struct rk_errbuf eb = {0};
    struct rk_state_meta meta;
    float *ad = NULL;
    if (ro)
        memset(ro, 0, sizeof *ro);
    int rc = rk_file_read_all(path, (size_t)1 << 34, &buf, &len, &eb);
    if (rc == RK_OK) {
        // As PUT /states does: a file without a fingerprint (a community
        // state, an RWKV-PEFT .pth) is checked by its shapes alone.
        rc = rk_state_file_parse_alloc(buf, len, m, false, &ad, &meta, &eb);
        free(buf);
    }
    if (rc != RK_OK) {
        fprintf(stderr, "rwkvd: %s: %s\n", path, eb.msg[0] ? eb.msg : rk_strerror(rc));
        return rc;
    }
    memcpy(state, ad, rk_state_len(m) * sizeof(float));
    if (!ro || meta.kernel_m <= 0) {
        free(ad);
        return RK_OK;
    }
    ro->adapter = ad;
    ro->carry = calloc((size_t)rk_model_n_layer(m) * rk_model_n_head(m), sizeof(float));
    if (!ro->carry) {
        rk_cli_ro_free(ro);
        fprintf(stderr, "rwkvd: out of memory\n");
        return RK_ENOMEM;
    }
    rk_kernel_view_of(m, meta.kernel_m, meta.kernel_fade, ad, &ro->view);
    ro->ro = (struct rk_readout){&rk_kernel_readout, &ro->view, ro->carry};
    ro->on = true;
    return RK_OK;
}

int rk_cli_load_state(const char *path, const struct rk_model *m, float *state,
                      struct rk_state_meta *meta)
{
    int rc = rk_cli_load_state_ro(path, m, state, NULL);
    if (rc == RK_OK && meta) { /* the metadata again, from the header */
        void *buf = NULL;
        size_t len = 0;
        float *ad = NULL;
        if (rk_file_read_all(path, (size_t)1 << 34, &buf, &len, NULL) == RK_OK &&
            rk_state_file_parse_alloc(buf, len, m, false, &ad, meta, NULL) == RK_OK)
            free(ad);
        free(buf);
    }
    return rc;
}

void rk_cli_ro_free(struct rk_cli_ro *ro)
{
    if (!ro)
        return;
    free(ro->adapter);
    free(ro->carry);
    memset(ro, 0, sizeof *ro);
}

const struct rk_readout *rk_cli_ro_start(struct rk_cli_ro *ro)
{
    if (!ro || !ro->on)
        return NULL;
    memset(ro->carry, 0, (size_t)ro->view.L * ro->view.H * sizeof(float));
    return &ro->ro;
}

/* Whether the file starts with GGUF's magic (a vocabulary given as a GGUF
 * file: its metadata's World vocabulary). */
static bool is_gguf(const char *path)
{
    char magic[4] = {0};
    FILE *f = fopen(path, "rb");
    if (!f)
        return false;
    size_t n = fread(magic, 1, 4, f);
    fclose(f);
    return n == 4 && !memcmp(magic, "GGUF", 4);
}

struct rk_tokenizer *rk_cli_load_tokenizer(const char *vocab, const struct rk_model *m)
{
    struct rk_tokenizer *t = NULL;
    if (!vocab && m && rk_model_vocab_file(m)) {
        // A model directory that carries its vocabulary (core/FORMAT.md).
        vocab = rk_model_vocab_file(m);
        fprintf(stderr, "rwkvd: vocabulary from the model directory: %s\n", vocab);
    }
    if (!vocab && m && rk_model_format(m) == RK_FORMAT_GGUF) {
        // A GGUF file carries its vocabulary in its metadata (core/FORMAT.md).
        struct rk_errbuf eb = {0};
        int rc = rk_tok_load_gguf(rk_model_path(m), &t, &eb);
        if (rc == RK_OK) {
            fprintf(stderr, "rwkvd: vocabulary from the GGUF metadata (%zu tokens)\n",
                    rk_tok_n_vocab(t));
            if (rk_tok_n_vocab(t) > (size_t)rk_model_n_vocab(m)) {
                fprintf(stderr, "rwkvd: the GGUF vocabulary has %zu tokens but the model only "
                        "%d\n", rk_tok_n_vocab(t), rk_model_n_vocab(m));
                rk_tok_free(t);
                return NULL;
            }
            return t;
        }
        if (rc != RK_ENOTFOUND) {
            fprintf(stderr, "rwkvd: %s\n", eb.msg[0] ? eb.msg : rk_strerror(rc));
            return NULL;
        }
    }
    if (vocab) {
        struct rk_errbuf eb = {0};
        int rc = is_gguf(vocab) ? rk_tok_load_gguf(vocab, &t, &eb)
                                : rk_tok_load_world(vocab, &t, &eb);
        if (rc != RK_OK) {
            fprintf(stderr, "rwkvd: %s\n", eb.msg[0] ? eb.msg : rk_strerror(rc));
            return NULL;
        }
        if (m && rk_tok_n_vocab(t) > (size_t)rk_model_n_vocab(m)) {
            fprintf(stderr, "rwkvd: vocabulary %s has %zu tokens but the model only %d\n", vocab,
                    rk_tok_n_vocab(t), rk_model_n_vocab(m));
            rk_tok_free(t);
            return NULL;
        }
        return t;
    }
    int V = m ? rk_model_n_vocab(m) : 256;
    if (V < 256 || V >= 65536) {
        // Below 256 the bytes do not fit; 65536 and more is the World
        // vocabulary, which bytes would only turn into nonsense.
        fprintf(stderr, "rwkvd: the model has %d tokens; %s\n", V,
                V < 256 ? "the byte tokenizer needs at least 256, so pass --vocab with its "
                          "vocabulary"
                        : "pass --vocab with its vocabulary (e.g. rwkv_vocab_v20230424.txt)");
        return NULL;
    }
    if (V != 256)
        fprintf(stderr, "rwkvd: warning: no --vocab; using the byte tokenizer for a model with "
                        "%d tokens (ids 256..%d are never produced by a prompt and decode to "
                        "nothing)\n", V, V - 1);
    if (rk_tok_create_bytes(&t) != RK_OK) {
        fprintf(stderr, "rwkvd: out of memory\n");
        return NULL;
    }
    return t;
}

static void print_json_floats(const float *v, size_t n)
{
    fputc('[', stdout);
    for (size_t i = 0; i < n; i++) {
        if (i)
            fputc(',', stdout);
        if (isfinite(v[i]))
            printf("%.9g", (double)v[i]);
        else
            fputs("null", stdout);
    }
    fputs("]\n", stdout);
}

/* --- logits --------------------------------------------------------------- */

int rk_cmd_logits(int argc, char **argv)
{
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"tokens", required_argument, 0, 't'},
                                         {"threads", required_argument, 0, 'j'},
                                         {"reference", no_argument, 0, 'r'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *model = NULL, *tokens = NULL;
    long threads = 0;
    bool ref = false;
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "m:t:j:rh", opts, NULL)) != -1) {
        switch (o) {
        case 'm': model = optarg; break;
        case 't': tokens = optarg; break;
        case 'r': ref = true; break;
        case 'j':
            if (!rk_cli_parse_long(optarg, 0, 256, &threads)) {
                fprintf(stderr, "rwkvd logits: --threads must be 0..256\n");
                return 2;
            }
            break;
        case 'h':
            printf("usage: rwkvd logits --model FILE --tokens ID,ID,... [--threads N] [--reference]\n\n"
                   "Feeds the tokens from the zero state and prints the logits after the last\n"
                   "one as a single JSON array. --reference uses the plain fp32 kernels.\n");
            return 0;
        default: return 2;
        }
    }
    if (!model || !tokens) {
        fprintf(stderr, "rwkvd logits: --model and --tokens are required (see --help)\n");
        return 2;
    }
    uint32_t *ids = NULL;
    size_t n = 0;
    if (!rk_cli_parse_ids(tokens, &ids, &n)) {
        fprintf(stderr, "rwkvd logits: --tokens must be a comma-separated list of ids\n");
        return 2;
    }
    int status = 1;
    struct rk_ctx *ctx = NULL;
    float *state = NULL, *logits = NULL;
    struct rk_model *m = rk_cli_load_model(model, RK_DTYPE_AUTO);
    if (!m)
        goto out;
    struct rk_ctx_params cp = {.n_threads = (int)threads};
    if (rk_ctx_create(m, &cp, &ctx) != RK_OK) {
        fprintf(stderr, "rwkvd logits: cannot create a context\n");
        goto out;
    }
    rk_ctx_set_reference(ctx, ref);
    state = calloc(rk_state_len(m), sizeof(float));
    logits = malloc((size_t)rk_model_n_vocab(m) * sizeof(float));
    if (!state || !logits) {
        fprintf(stderr, "rwkvd logits: out of memory\n");
        goto out;
    }
    int rc = rk_forward_seq(ctx, ids, n, state, logits, false);
    if (rc != RK_OK) {
        fprintf(stderr, "rwkvd logits: %s (the model has %d tokens)\n", rk_strerror(rc),
                rk_model_n_vocab(m));
        goto out;
    }
    print_json_floats(logits, (size_t)rk_model_n_vocab(m));
    status = 0;
out:
    free(ids);
    free(state);
    free(logits);
    rk_ctx_free(ctx);
    rk_model_free(m);
    return status;
}

/* --- tokenize ------------------------------------------------------------- */

int rk_cmd_tokenize(int argc, char **argv)
{
    static const struct option opts[] = {{"vocab", required_argument, 0, 'v'},
                                         {"text", required_argument, 0, 't'},
                                         {"bytes", no_argument, 0, 'b'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *vocab = NULL, *text = NULL;
    bool bytes = false;
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "v:t:bh", opts, NULL)) != -1) {
        switch (o) {
        case 'v': vocab = optarg; break;
        case 't': text = optarg; break;
        case 'b': bytes = true; break;
        case 'h':
            printf("usage: rwkvd tokenize (--vocab FILE | --bytes) --text STRING\n\n"
                   "Prints the token ids of STRING as a single JSON array, using a World\n"
                   "vocabulary file or the byte tokenizer.\n");
            return 0;
        default: return 2;
        }
    }
    if (!text || (!vocab && !bytes)) {
        fprintf(stderr, "rwkvd tokenize: --text and one of --vocab/--bytes are required\n");
        return 2;
    }
    struct rk_tokenizer *t = NULL;
    if (vocab) {
        t = rk_cli_load_tokenizer(vocab, NULL);
    } else if (rk_tok_create_bytes(&t) != RK_OK) {
        t = NULL;
    }
    if (!t)
        return 1;
    size_t len = strlen(text), n = 0;
    uint32_t *ids = malloc((len + 1) * sizeof *ids);
    int status = 1;
    if (!ids || rk_tok_encode(t, text, len, ids, len + 1, &n) != RK_OK) {
        fprintf(stderr, "rwkvd tokenize: encoding failed\n");
        goto out;
    }
    fputc('[', stdout);
    for (size_t i = 0; i < n; i++)
        printf(i ? ",%u" : "%u", ids[i]);
    fputs("]\n", stdout);
    status = 0;
out:
    free(ids);
    rk_tok_free(t);
    return status;
}

/* --- convert -------------------------------------------------------------- */

int rk_cmd_convert(int argc, char **argv)
{
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"out", required_argument, 0, 'o'},
                                         {"dtype", required_argument, 0, 'd'},
                                         {"wtype", required_argument, 0, 'd'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *model = NULL, *outp = NULL;
    enum rk_dtype dt = RK_DTYPE_AUTO;
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "m:o:d:h", opts, NULL)) != -1) {
        switch (o) {
        case 'm': model = optarg; break;
        case 'o': outp = optarg; break;
        case 'd':
            if (rk_dtype_parse(optarg, &dt) != RK_OK) {
                fprintf(stderr, "rwkvd convert: --dtype must be f32, f16, bf16, q8 or auto\n");
                return 2;
            }
            break;
        case 'h':
            printf("usage: rwkvd convert --model IN --out OUT.safetensors [--dtype f32|f16|bf16|q8|auto]\n\n"
                   "Reads any supported model (safetensors with official or Hugging Face names,\n"
                   ".pth, rwkv.cpp .bin, GGUF) and writes safetensors with the official RWKV-7\n"
                   "names. --dtype (or --wtype) sets the precision of the large matrices\n"
                   "(default: as loaded); q8 writes each as I8 values plus F16 scales per block\n"
                   "of 32 input columns (core/FORMAT.md). The model is loaded in that precision\n"
                   "(a quantized GGUF file with --dtype f32 gives its exact dequantized values).\n"
                   "Small tensors are written as f32.\n");
            return 0;
        default: return 2;
        }
    }
    if (!model || !outp) {
        fprintf(stderr, "rwkvd convert: --model and --out are required (see --help)\n");
        return 2;
    }
    // Loaded in the wanted precision (the same values a conversion at
    // writing gives), so a quantized GGUF file's matrices come out as their
    // exact dequantized values rather than through the 8-bit form.
    struct rk_model *m = rk_cli_load_model(model, dt);
    if (!m)
        return 1;
    struct rk_errbuf eb = {0};
    int rc = rk_model_save_safetensors(m, outp, dt, &eb);
    if (rc != RK_OK)
        fprintf(stderr, "rwkvd convert: %s\n", eb.msg[0] ? eb.msg : rk_strerror(rc));
    else
        fprintf(stderr, "rwkvd convert: wrote %s (L=%d C=%d V=%d, %s)\n", outp, rk_model_n_layer(m),
                rk_model_n_embd(m), rk_model_n_vocab(m),
                rk_dtype_name(dt == RK_DTYPE_AUTO ? rk_model_wtype(m) : dt));
    rk_model_free(m);
    return rc == RK_OK ? 0 : 1;
}

/* --- generate ------------------------------------------------------------- */

int rk_cmd_generate(int argc, char **argv)
{
    enum { O_TEMP = 256, O_TOPP, O_TOPK, O_MINP, O_PRES, O_FREQ, O_REP, O_SEED, O_STOP, O_MAX };
    static const struct option opts[] = {{"model", required_argument, 0, 'm'},
                                         {"vocab", required_argument, 0, 'v'},
                                         {"prompt", required_argument, 0, 'p'},
                                         {"max-tokens", required_argument, 0, 'n'},
                                         {"threads", required_argument, 0, 'j'},
                                         {"temperature", required_argument, 0, O_TEMP},
                                         {"top-p", required_argument, 0, O_TOPP},
                                         {"top-k", required_argument, 0, O_TOPK},
                                         {"min-p", required_argument, 0, O_MINP},
                                         {"presence-penalty", required_argument, 0, O_PRES},
                                         {"frequency-penalty", required_argument, 0, O_FREQ},
                                         {"repetition-penalty", required_argument, 0, O_REP},
                                         {"seed", required_argument, 0, O_SEED},
                                         {"stop", required_argument, 0, O_STOP},
                                         {"state", required_argument, 0, 's'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    const char *model = NULL, *vocab = NULL, *prompt = NULL, *state_path = NULL;
    const char *stops[16];
    size_t n_stops = 0;
    long max_tokens = 128, threads = 0, topk = 0, seed = 0;
    struct rk_sampler_params sp;
    rk_sampler_params_default(&sp);
    double d;
    int o;
    optind = 1;
    while ((o = getopt_long(argc, argv, "m:v:p:n:j:s:h", opts, NULL)) != -1) {
        switch (o) {
        case 'm': model = optarg; break;
        case 'v': vocab = optarg; break;
        case 'p': prompt = optarg; break;
        case 's': state_path = optarg; break;
        case 'n':
            if (!rk_cli_parse_long(optarg, 1, 1000000, &max_tokens))
                goto badarg;
            break;
        case 'j':
            if (!rk_cli_parse_long(optarg, 0, 256, &threads))
                goto badarg;
            break;
        case O_TEMP:
            if (!rk_cli_parse_float(optarg, 0, 100, &d))
                goto badarg;
            sp.temperature = (float)d;
            break;
        case O_TOPP:
            if (!rk_cli_parse_float(optarg, 1e-6, 1, &d))
                goto badarg;
            sp.top_p = (float)d;
            break;
        case O_TOPK:
            if (!rk_cli_parse_long(optarg, 0, 1 << 20, &topk))
                goto badarg;
            sp.top_k = (int)topk;
            break;
        case O_MINP:
            if (!rk_cli_parse_float(optarg, 0, 1, &d))
                goto badarg;
            sp.min_p = (float)d;
            break;
        case O_PRES:
            if (!rk_cli_parse_float(optarg, -2, 2, &d))
                goto badarg;
            sp.presence_penalty = (float)d;
            break;
        case O_FREQ:
            if (!rk_cli_parse_float(optarg, -2, 2, &d))
                goto badarg;
            sp.frequency_penalty = (float)d;
            break;
        case O_REP:
            if (!rk_cli_parse_float(optarg, 0.01, 100, &d))
                goto badarg;
            sp.repetition_penalty = (float)d;
            break;
        case O_SEED:
            if (!rk_cli_parse_long(optarg, 0, __LONG_MAX__, &seed))
                goto badarg;
            sp.seed = (uint64_t)seed;
            break;
        case O_STOP:
            if (n_stops == 16) {
                fprintf(stderr, "rwkvd generate: at most 16 --stop strings\n");
                return 2;
            }
            stops[n_stops++] = optarg;
            break;
        case 'h':
            printf("usage: rwkvd generate --model FILE [--vocab FILE] --prompt TEXT [options]\n\n"
                   "Feeds the prompt and streams the generated text to stdout.\n\n"
                   "  --max-tokens N           tokens to generate (default 128)\n"
                   "  --temperature T          0 = greedy (default 1)\n"
                   "  --top-p P, --top-k K, --min-p P\n"
                   "  --presence-penalty X, --frequency-penalty X  (-2..2)\n"
                   "  --repetition-penalty X   (1 = off)\n"
                   "  --seed N                 same seed, same output\n"
                   "  --stop STRING            stop before STRING (repeatable, up to 16)\n"
                   "  --state FILE             start from a tuned state (adapter file)\n"
                   "  --threads N              compute threads (default: all CPUs)\n"
                   "  --vocab FILE             World vocabulary; byte models need none\n\n"
                   "The prompt of a bf16 model runs on AMX tiles (inputs rounded to bf16) where\n"
                   "the CPU offers them, as in serve; generated tokens use the fp32 kernels.\n"
                   "RWKVD_NO_AMX=1 keeps the prompt on the fp32 kernels too.\n");
            return 0;
        default: return 2;
        }
    }
    if (!model || !prompt) {
        fprintf(stderr, "rwkvd generate: --model and --prompt are required (see --help)\n");
        return 2;
    }
    int status = 1, rc;
    struct rk_model *m = NULL;
    struct rk_tokenizer *tok = NULL;
    struct rk_ctx *ctx = NULL;
    struct rk_sampler *smp = NULL;
    struct rk_stopper *stopper = NULL;
    float *state = NULL, *logits = NULL;
    uint32_t *ids = NULL;
    struct rk_cli_ro kro = {0}; /* a kernel state's term */
    m = rk_cli_load_model(model, RK_DTYPE_AUTO);
    if (!m)
        goto out;
    tok = rk_cli_load_tokenizer(vocab, m);
    if (!tok)
        goto out;
    struct rk_ctx_params cp = {.n_threads = (int)threads};
    size_t V = (size_t)rk_model_n_vocab(m), plen = strlen(prompt), n_ids = 0;
    state = calloc(rk_state_len(m), sizeof(float));
    logits = malloc(V * sizeof(float));
    ids = malloc((plen + 1) * sizeof *ids);
    if (!state || !logits || !ids || rk_ctx_create(m, &cp, &ctx) != RK_OK) {
        fprintf(stderr, "rwkvd generate: out of memory\n");
        goto out;
    }
    if (state_path) {
        if ((rc = rk_cli_load_state_ro(state_path, m, state, &kro)) != RK_OK)
            goto out;
    }
    const struct rk_readout *ro = rk_cli_ro_start(&kro);
    if ((rc = rk_sampler_create(&sp, V, &smp)) != RK_OK) {
        fprintf(stderr, "rwkvd generate: invalid sampling parameters: %s\n", rk_strerror(rc));
        goto out;
    }
    if (n_stops && (rc = rk_stopper_create(stops, n_stops, &stopper)) != RK_OK) {
        fprintf(stderr, "rwkvd generate: invalid --stop: %s\n", rk_strerror(rc));
        goto out;
    }
    rk_tok_encode(tok, prompt, plen, ids, plen + 1, &n_ids);
    if (n_ids == 0) {
        /* an empty prompt starts from the end-of-text token */
        ids[0] = 0;
        n_ids = 1;
    }
    for (size_t i = 0; i < n_ids; i++)
        rk_sampler_accept(smp, ids[i]);
    /* as the server: the prompt on AMX tiles where available (bf16 models;
     * RWKVD_NO_AMX=1 turns it off), generated tokens on the fp32 kernels */
    rk_ctx_set_amx(ctx, true);
    rc = rk_forward_seq_ro(ctx, ids, n_ids, state, ro, logits, false);
    rk_ctx_set_amx(ctx, false);
    if (rc != RK_OK) {
        fprintf(stderr, "rwkvd generate: %s\n", rk_strerror(rc));
        goto out;
    }
    struct rk_utf8_stream us;
    rk_utf8_stream_init(&us);
    char piece[1024];
    const char *emit;
    size_t emit_len;
    bool stopped = false;
    for (long i = 0; i < max_tokens && !stopped; i++) {
        uint32_t next;
        if ((rc = rk_sampler_sample(smp, logits, &next)) != RK_OK)
            break;
        if (next == 0 && !rk_tok_is_bytes(tok))
            break; /* end of text */
        int w = rk_tok_decode_stream(tok, &us, next, piece, sizeof piece);
        if (w > 0) {
            if (stopper) {
                stopped = rk_stopper_feed(stopper, piece, (size_t)w, &emit, &emit_len);
                fwrite(emit, 1, emit_len, stdout);
            } else {
                fwrite(piece, 1, (size_t)w, stdout);
            }
            fflush(stdout);
        }
        if (stopped)
            break;
        if ((rc = rk_forward_seq_ro(ctx, &next, 1, state, ro, logits, false)) != RK_OK)
            break;
    }
    if (!stopped) {
        int w = rk_utf8_stream_flush(&us, piece, sizeof piece);
        if (stopper) {
            if (w > 0)
                stopped = rk_stopper_feed(stopper, piece, (size_t)w, &emit, &emit_len);
            if (w > 0)
                fwrite(emit, 1, emit_len, stdout);
            if (!stopped) {
                rk_stopper_finish(stopper, &emit, &emit_len);
                fwrite(emit, 1, emit_len, stdout);
            }
        } else if (w > 0) {
            fwrite(piece, 1, (size_t)w, stdout);
        }
    }
    fputc('\n', stdout);
    status = 0;
out:
    rk_cli_ro_free(&kro);
    free(state);
    free(logits);
    free(ids);
    rk_stopper_free(stopper);
    rk_sampler_free(smp);
    rk_ctx_free(ctx);
    rk_tok_free(tok);
    rk_model_free(m);
    return status;
badarg:
    fprintf(stderr, "rwkvd generate: invalid value '%s' for %s (see --help)\n", optarg,
            argv[optind - 1]);
    return 2;
}

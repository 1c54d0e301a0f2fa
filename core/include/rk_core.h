/*
 * rk_core.h - the public interface of rwkvd's core layer.
 *
 * The core owns the RWKV-7 ("x070") model: loading every supported file format,
 * the forward pass (one token, a whole sequence, a batched decode step), the
 * backward pass into the initial state, the tokenizers and the sampler. It uses
 * only libc, libm, pthreads and OpenBLAS; it knows nothing of JSON, HTTP or libuv.
 *
 * Usage:
 *
 *     struct rk_errbuf eb;
 *     struct rk_model *m = NULL;
 *     if (rk_model_load("model.safetensors", NULL, &m, &eb) != RK_OK) {
 *         fprintf(stderr, "%s\n", eb.msg);
 *         return 1;
 *     }
 *     struct rk_ctx *ctx = NULL;
 *     rk_ctx_create(m, NULL, &ctx);               // one per thread
 *     float *state = calloc(rk_state_len(m), sizeof(float));   // zero state
 *     float *logits = malloc(rk_model_n_vocab(m) * sizeof(float));
 *     uint32_t prompt[] = {34, 105, 110};
 *     rk_forward_seq(ctx, prompt, 3, state, logits, false);    // prefill
 *     struct rk_sampler *s = NULL;
 *     rk_sampler_create(NULL, rk_model_n_vocab(m), &s);        // greedy
 *     uint32_t tok;
 *     for (int i = 0; i < 16; i++) {
 *         rk_sampler_sample(s, logits, &tok);
 *         rk_forward_token(ctx, tok, state, logits);
 *     }
 *     rk_sampler_free(s); rk_ctx_free(ctx); rk_model_free(m);
 *
 * Conventions: every fallible function returns RK_OK (0) or a negative RK_E*
 * code. Pointer parameters are borrowed (used only during the call) unless the
 * comment says "kept" (stored by the callee) or "takes" (ownership moves).
 * Functions that parse external input take an optional struct rk_errbuf that
 * receives a human-readable message naming the file, tensor or line at fault.
 */
#ifndef RK_CORE_H
#define RK_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define RK_API __attribute__((visibility("default")))

/* --- errors --------------------------------------------------------------- */

enum rk_err {
    RK_OK = 0,
    RK_ENOMEM = -1,     /* allocation failed */
    RK_EINVAL = -2,     /* invalid argument or request */
    RK_EIO = -3,        /* file system error */
    RK_EFORMAT = -4,    /* bad magic, version, shape, or truncated file */
    RK_EMISMATCH = -5,  /* state and model are incompatible */
    RK_ERANGE = -6,     /* token id, length or count out of range */
    RK_ENOTFOUND = -7,  /* no such object */
    RK_EEXIST = -8,     /* object already exists */
    RK_EBUSY = -9,      /* queue full or resource busy */
    RK_ECANCELED = -10, /* cancelled by the caller's callback */
    RK_ENUMERIC = -11,  /* NaN or Inf in loss or gradients */
    RK_EINTERNAL = -12, /* a bug */
    RK_ETIMEOUT = -13,  /* a deadline passed before the work finished */
};

/* Detail for humans. `code` repeats the return code; `msg` is NUL-terminated. */
struct rk_errbuf {
    int code;
    char msg[256];
};

/* Short description of an error code ("out of memory"); never NULL. */
RK_API const char *rk_strerror(int code);
/* Stable symbolic name of an error code ("RK_ENOMEM" -> "enomem"); never NULL. */
RK_API const char *rk_errname(int code);
/* Fill `eb` (may be NULL) with `code` and a printf-style message; returns `code`. */
RK_API int rk_errbuf_set(struct rk_errbuf *eb, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* --- logging -------------------------------------------------------------- */

enum rk_log_level { RK_LOG_DEBUG = 0, RK_LOG_INFO, RK_LOG_WARN, RK_LOG_ERROR };
typedef void rk_log_cb(enum rk_log_level level, const char *msg, void *user);
/* Route core/adapters log lines to `fn` (NULL restores the default: stderr for
 * WARN and above). Not thread-safe against concurrent logging; call at start-up. */
RK_API void rk_log_set(rk_log_cb *fn, void *user);
RK_API void rk_log(enum rk_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* --- kernel switches ------------------------------------------------------ */

/* Whether this process runs AVX-512 kernels: the CPU has them and
 * RWKVD_NO_AVX512 is unset or "0" (core/cpu.c decides once per process).
 * Kernels outside the core (the kernel states' read-out term) follow it. */
RK_API bool rk_cpu_avx512(void);

/* --- cancellation and progress -------------------------------------------- */

/* Returns true to stop a long operation at the next step boundary. */
typedef bool rk_cancel_cb(void *user);

/* --- model ---------------------------------------------------------------- */

enum rk_dtype {
    RK_DTYPE_AUTO = 0, /* keep the file's precision (load) */
    RK_DTYPE_F32 = 1,
    RK_DTYPE_F16 = 2,
    RK_DTYPE_BF16 = 3,
    RK_DTYPE_Q8 = 4, /* 8-bit: int8 per value, one fp16 scale per block of 32 along
                        the input dimension (GGML's Q8_0; core/FORMAT.md) */
};
/* "f32", "f16", "bf16", "q8", "auto". */
RK_API const char *rk_dtype_name(enum rk_dtype t);
/* Parses the names above; returns RK_EINVAL for anything else. */
RK_API int rk_dtype_parse(const char *s, enum rk_dtype *out);

enum rk_format {
    RK_FORMAT_UNKNOWN = 0,
    RK_FORMAT_SAFETENSORS, /* official names or Hugging Face (fla) names */
    RK_FORMAT_PTH,         /* torch.save zip: pickle + raw storages */
    RK_FORMAT_RWKVCPP,     /* rwkv.cpp .bin (FP32/FP16) */
    RK_FORMAT_GGUF,        /* GGUF v2/v3, llama.cpp's rwkv7 architecture */
};
RK_API const char *rk_format_name(enum rk_format f);

struct rk_model_params {
    /* Precision of the large matrices (att r/k/v/o, ffn key/value, emb, head).
     * AUTO keeps what the file holds (f32, f16, bf16 or q8) and maps it
     * without a copy where possible; any other value converts at load time
     * (Q8 quantizes: every such matrix's input dimension must then be a
     * multiple of 32). Small
     * tensors are held in fp32; LoRA factors in 16 bits when the file has
     * them so (exactly the file's values), in fp32 otherwise. */
    enum rk_dtype wtype;
    /* Keep the weight matrices in the file's row order. By default they are
     * repacked at load into the order the AVX-512 kernels stream (when those
     * run); the environment variable RWKVD_NO_PANELS=1 does the same as
     * setting this. For measurements and tests. */
    bool no_panels;
};

struct rk_model; /* immutable after load; safe to share between threads */

/* Load a model; the format is detected from the file's bytes. `path` is one
 * file, a directory (Hugging Face layout: config.json with model.safetensors
 * or shards and model.safetensors.index.json; or .pth shards) or a
 * comma-separated list of files whose tensors together make the model
 * (core/FORMAT.md). `p` may be NULL (defaults). On failure *out stays NULL
 * and `eb` names the file, the tensor and the problem. Returns RK_EIO,
 * RK_EFORMAT, RK_ENOMEM. */
RK_API int rk_model_load(const char *path, const struct rk_model_params *p,
                         struct rk_model **out, struct rk_errbuf *eb);
/* NULL is a no-op. No context made from `m` may be used afterwards. */
RK_API void rk_model_free(struct rk_model *m);

RK_API int rk_model_n_layer(const struct rk_model *m); /* L */
RK_API int rk_model_n_embd(const struct rk_model *m);  /* C */
RK_API int rk_model_n_head(const struct rk_model *m);  /* H = C / N */
RK_API int rk_model_head_size(const struct rk_model *m); /* N = 64 */
RK_API int rk_model_n_vocab(const struct rk_model *m); /* V */
RK_API enum rk_format rk_model_format(const struct rk_model *m);
/* Precision in which the large matrices are held. */
RK_API enum rk_dtype rk_model_wtype(const struct rk_model *m);
/* Bytes of weights the model holds (mapped or owned). */
RK_API size_t rk_model_weight_bytes(const struct rk_model *m);
/* A 64-bit fingerprint of the weights: FNV-1a over (L, C, H, V) and a sample of
 * weight bytes (every tensor's shape plus up to 4 KiB of each tensor's data,
 * as fp32), identical for the same weights in any file format or precision
 * that represents them exactly in fp32. Computed once at load. */
RK_API uint64_t rk_model_fingerprint(const struct rk_model *m);
/* The vocabulary file found beside the weights of a model directory
 * (rwkv_vocab_v20230424.txt), or NULL; valid while the model lives. */
RK_API const char *rk_model_vocab_file(const struct rk_model *m);
/* The path the model was loaded from; valid while the model lives. */
RK_API const char *rk_model_path(const struct rk_model *m);

/* Write the model as safetensors with official RWKV-7 names, large matrices in
 * `wtype` (AUTO = as held). Written atomically (temp file, fsync, rename). */
RK_API int rk_model_save_safetensors(const struct rk_model *m, const char *path,
                                     enum rk_dtype wtype, struct rk_errbuf *eb);

/* --- state ---------------------------------------------------------------- */

/*
 * The recurrent state of one sequence is a flat fp32 buffer of rk_state_len()
 * floats. Per layer i (layer stride = 2*C + H*N*N):
 *     att_shift[C]     last LN1 output of the time-mix
 *     wkv[H][N][N]     row = value channel, column = key channel
 *     ffn_shift[C]     last LN2 output of the channel-mix
 * All zeros is the fresh state. Gradients and optimizer moments use the same
 * layout.
 */
struct rk_state_layout {
    size_t layer_stride; /* floats per layer */
    size_t att_shift;    /* offset of att_shift within a layer */
    size_t wkv;          /* offset of wkv within a layer */
    size_t ffn_shift;    /* offset of ffn_shift within a layer */
    size_t wkv_len;      /* H*N*N */
    size_t shift_len;    /* C */
};
RK_API size_t rk_state_len(const struct rk_model *m);
RK_API void rk_state_layout(const struct rk_model *m, struct rk_state_layout *out);

/* --- context and forward -------------------------------------------------- */

struct rk_ctx_params {
    int n_threads; /* compute threads incl. the caller; 0 = number of CPUs */
    int rows_max;  /* largest prefill chunk / decode batch handled in one
                      pass (0 = 64); longer sequences are chunked */
    int nice;      /* 1..19: the helper threads lower their scheduling
                      priority to this nice value (Linux); 0 = inherit */
};

struct rk_ctx; /* per-thread scratch; use from one thread at a time */

/* `m` is kept: it must outlive the context. `p` may be NULL. */
RK_API int rk_ctx_create(const struct rk_model *m, const struct rk_ctx_params *p,
                         struct rk_ctx **out);
RK_API void rk_ctx_free(struct rk_ctx *ctx);
RK_API const struct rk_model *rk_ctx_model(const struct rk_ctx *ctx);
/* Number of compute threads the context uses (including the caller). */
RK_API int rk_ctx_n_threads(const struct rk_ctx *ctx);
/* Runs fn(arg, ith, nth) once on each of the context's nth compute threads
 * (the caller is ith 0) and returns when all have finished; for work of the
 * caller's own, such as sampling several sequences at once. Not while the
 * context is computing (one call at a time per context). */
RK_API void rk_ctx_run(struct rk_ctx *ctx, void (*fn)(void *arg, int ith, int nth), void *arg);
/* dst[0 .. n) = src[0 .. n) (or zeros when src is NULL), split over the
 * context's compute threads: the adapter swap, a whole state copied into a
 * sequence's slot. The ranges must not overlap. */
RK_API void rk_ctx_copy(struct rk_ctx *ctx, float *dst, const float *src, size_t n);

/* Select the plain fp32 reference kernels (true) or the fast paths (false, the
 * default). Tests use this to compare the two on the same inputs. */
RK_API void rk_ctx_set_reference(struct rk_ctx *ctx, bool reference);

/* Whether this process can run products on Intel AMX tiles: the CPU has
 * AMX-BF16, the OS grants the tile state, a probe product runs (some virtual
 * machines advertise AMX and fault), and RWKVD_NO_AMX is unset or "0". */
RK_API bool rk_amx_available(void);
/* With `on`, this context's products with bf16 weights (held in panels, the
 * AVX-512 layout) round their input rows to bf16 and run on AMX tiles:
 * several times the throughput of the fp32 kernels on long prefill chunks.
 * Each row's result still depends only on that row (any chunking or batch
 * gives the same bits), but it differs from the fp32 path by the rounding
 * of the inputs (about 2^-9 relative each), so the context keeps the exact
 * path unless asked. Returns whether the path is now on (false where AMX is
 * unavailable or the model's matrices are not bf16). Off by default; a
 * context in reference mode ignores it. */
RK_API bool rk_ctx_set_amx(struct rk_ctx *ctx, bool on);

/* One token. `state` [rk_state_len] is read and updated in place. `logits`
 * [V] receives the logits after the token, or NULL to skip the head.
 * Returns RK_ERANGE for a token id >= V. */
RK_API int rk_forward_token(struct rk_ctx *ctx, uint32_t token, float *state, float *logits);

/* A sequence of n >= 1 tokens (prefill), processed in chunks with GEMMs over
 * each chunk and the WKV recurrence in order. `logits`: NULL, [V] (logits
 * after the last token, all_logits=false) or [n][V] (after every token,
 * all_logits=true). Gives the same result as n calls of rk_forward_token up to
 * rounding. */
RK_API int rk_forward_seq(struct rk_ctx *ctx, const uint32_t *tokens, size_t n, float *state,
                          float *logits, bool all_logits);

/* One decode step over B sequences, each with its own state: tokens[b] is fed
 * to states[b] (distinct buffers), logits [B][V] (or NULL) receives each
 * sequence's logits. B may exceed rows_max (it is then processed in parts). */
RK_API int rk_forward_batch(struct rk_ctx *ctx, size_t B, const uint32_t *tokens,
                            float *const *states, float *logits);

/* Several sequences in one pass, e.g. prompt chunks together with decode
 * tokens: sequence i takes the next n[i] >= 1 tokens of `tokens`
 * (concatenated in order) and continues states[i] (distinct buffers). With
 * `logits` [nseg][V], row i receives the logits after sequence i's last
 * token when want is NULL or want[i] (other rows may be overwritten). The total
 * token count must not exceed rows_max (RK_EINVAL). Products over more than
 * 48 rows go in slices of 48, so with the AVX-512 kernels each sequence's
 * result is bit-identical to running it alone in chunks of at most 48 rows
 * (rk_forward_token, or rk_forward_seq with rows_max <= 48), whatever else
 * shares the pass. */
RK_API int rk_forward_multi(struct rk_ctx *ctx, size_t nseg, const uint32_t *tokens,
                            const size_t *n, float *const *states, const bool *want,
                            float *logits);

/* --- extra read-out terms ------------------------------------------------- */

/*
 * A term added, per sequence, to the WKV read-out y = S r of every head
 * (step 10 of the forward, before the GroupNorm): the hook through which an
 * initial state that holds more than the N x N matrices (the "kernel" tuning
 * method of the adapters layer) is served and tuned. The core knows only
 * this interface; the term's owner supplies the functions and their data.
 *
 * `carry` is the sequence's running floats [carry_len] (all zero when a
 * sequence starts; the owner keeps them with the sequence's state). Rows
 * are [n] vectors of one head at stride `stride` floats: r (receptance), w
 * (decay), y (read-out; fwd adds to it), dy, dr, dw (the gradients; bwd
 * adds to dr and dw). Calls for different (layer, head) pairs may run at
 * the same time on different threads; a call must touch only its own
 * pair's part of `carry` and of `grad`.
 */
struct rk_readout_ops {
    size_t (*carry_len)(const void *data); /* floats of running data per sequence */
    void (*fwd)(const void *data, int layer, int head, size_t n, size_t stride, const float *r,
                const float *w, float *carry, float *y);
    /* The gradient of a whole sequence (from a zero carry): given dy, adds
     * dLoss/dr and dLoss/dw to dr and dw and the owner's own gradient to
     * `grad` (an object of the owner's). `scratch` is bwd_scratch(data, n)
     * floats of its own (the caller allocates them). */
    void (*bwd)(const void *data, int layer, int head, size_t n, size_t stride, const float *r,
                const float *w, const float *dy, float *dr, float *dw, void *grad,
                float *scratch);
    size_t (*bwd_scratch)(const void *data, size_t n);
};
/* One sequence's term: ops and data are borrowed; carry [ops->carry_len]. */
struct rk_readout {
    const struct rk_readout_ops *ops;
    const void *data;
    float *carry;
};

/* rk_forward_seq, rk_forward_batch and rk_forward_multi with a read-out term
 * per sequence: `ro` (NULL = none for all) holds one pointer per sequence
 * (NULL = none for that one). A sequence's result does not depend on the
 * terms of the others. */
RK_API int rk_forward_seq_ro(struct rk_ctx *ctx, const uint32_t *tokens, size_t n, float *state,
                             const struct rk_readout *ro, float *logits, bool all_logits);
RK_API int rk_forward_batch_ro(struct rk_ctx *ctx, size_t B, const uint32_t *tokens,
                               float *const *states, const struct rk_readout *const *ro,
                               float *logits);
RK_API int rk_forward_multi_ro(struct rk_ctx *ctx, size_t nseg, const uint32_t *tokens,
                               const size_t *n, float *const *states,
                               const struct rk_readout *const *ro, const bool *want,
                               float *logits);

/* --- backward into the initial state -------------------------------------- */

/*
 * The loss as a hook on the logits. For one selected position t of a
 * sequence, `logits` [V] holds the model's output after tokens[0..t] and
 * target = targets[t]. The hook returns that position's loss and overwrites
 * `logits` with dLoss_t/dlogits / nsel (nsel = the number of selected
 * positions: the sequence's loss is the mean of the rows). A NaN
 * loss fails the step. Called from the context's compute threads, several
 * rows at once (each with its own row), so it must only read `user`.
 * rk_loss_xent is the default: -log softmax(logits)[target].
 */
typedef double rk_logits_loss_fn(float *logits, int V, size_t t, uint32_t target, size_t nsel,
                                 void *user);
RK_API double rk_loss_xent(float *logits, int V, size_t t, uint32_t target, size_t nsel,
                           void *user);

/*
 * Loss = mean over selected positions t of loss_t(logits_t), where logits_t
 * is the output after tokens[0..t] starting from `state0` and loss_t is
 * p->loss (default: cross-entropy against targets[t]). mask[t] (NULL = all)
 * selects the positions. Writes the loss and dstate0 [rk_state_len] =
 * dLoss/dstate0 (wkv parts and both token-shift parts). `cancel` (may be
 * NULL) is checked between layers.
 * Memory: see docs/TUNING.md (the memory formula of the backward pass).
 */
struct rk_backward_params {
    int checkpoint_every;    /* tokens between stored WKV checkpoints (0 = 16) */
    rk_logits_loss_fn *loss; /* NULL = rk_loss_xent */
    void *loss_user;         /* borrowed; passed to `loss` */
    /* A read-out term (NULL = none): ro_ops->bwd receives ro_grad. */
    const struct rk_readout_ops *ro_ops;
    const void *ro_data;
    void *ro_grad;
};
RK_API int rk_backward_seq(struct rk_ctx *ctx, const struct rk_backward_params *p,
                           const uint32_t *tokens, const uint32_t *targets, const uint8_t *mask,
                           size_t n, const float *state0, double *loss, float *dstate0,
                           rk_cancel_cb *cancel, void *cancel_user);

/* --- tokenizers ----------------------------------------------------------- */

struct rk_tokenizer; /* immutable after load; safe to share */

/* The RWKV World vocabulary (rwkv_vocab_v20230424.txt format): one token per
 * line, `<id> <python str or bytes literal> <byte length>`. Ids must be 1..N
 * without gaps (any order), every single byte must be a token, and no two
 * tokens may have the same bytes. Returns RK_EIO, RK_ENOMEM, or RK_EFORMAT with
 * `eb` naming the file and line. Id 0 is end-of-text and has no bytes. */
RK_API int rk_tok_load_world(const char *path, struct rk_tokenizer **out, struct rk_errbuf *eb);
/* The World vocabulary held in a GGUF file's metadata (tokenizer.ggml.model
 * "rwkv", tokenizer.ggml.tokens with llama.cpp's escaped token text, id 0
 * end-of-text, the normal tokens 1..K; later padding is left out).
 * RK_ENOTFOUND when the file names no tokenizer or "none"; RK_EIO,
 * RK_ENOMEM, or RK_EFORMAT naming the file and the token. */
RK_API int rk_tok_load_gguf(const char *path, struct rk_tokenizer **out, struct rk_errbuf *eb);
/* The byte tokenizer: id = byte value, vocab 256. */
RK_API int rk_tok_create_bytes(struct rk_tokenizer **out);
RK_API void rk_tok_free(struct rk_tokenizer *t);
/* Largest id + 1: 65530 for rwkv_vocab_v20230424.txt (the model's V is padded
 * further, to 65536), 256 for the byte tokenizer. */
RK_API size_t rk_tok_n_vocab(const struct rk_tokenizer *t);
/* True for the byte tokenizer (id 0 is then the NUL byte, not end-of-text). */
RK_API bool rk_tok_is_bytes(const struct rk_tokenizer *t);

/* Encode `len` bytes of `text` (any bytes, NUL included) by greedy longest
 * match; special strings such as "<|endoftext|>" are plain text. Writes at
 * most `cap` ids (`ids` may be NULL when cap is 0); *n_out receives the number
 * of ids the full encoding needs (never more than len). Returns RK_ERANGE if
 * cap < *n_out. */
RK_API int rk_tok_encode(const struct rk_tokenizer *t, const char *text, size_t len,
                         uint32_t *ids, size_t cap, size_t *n_out);
/* The bytes of one token (not NUL-terminated); NULL with *len 0 for an id
 * outside the vocabulary or the end-of-text id. */
RK_API const uint8_t *rk_tok_bytes(const struct rk_tokenizer *t, uint32_t id, size_t *len);

/* Streaming decoder: holds back an incomplete UTF-8 sequence until the next
 * token completes it, so output is always valid UTF-8. Invalid bytes become
 * U+FFFD. Caller-provided storage; zero-initialise or call _init. */
struct rk_utf8_stream {
    uint8_t pend[4];
    int n_pend;
};
RK_API void rk_utf8_stream_init(struct rk_utf8_stream *s);
/* Append the valid UTF-8 produced by `id` to out (cap bytes; needs at most
 * token length * 3 + 8). World: id 0 and ids outside the vocabulary produce
 * nothing. Returns the number of bytes written, or RK_ERANGE (the stream is
 * then unchanged). */
RK_API int rk_tok_decode_stream(const struct rk_tokenizer *t, struct rk_utf8_stream *s,
                                uint32_t id, char *out, size_t cap);
/* Flush what is held back (as U+FFFD) at the end of a stream. */
RK_API int rk_utf8_stream_flush(struct rk_utf8_stream *s, char *out, size_t cap);

/* --- sampler -------------------------------------------------------------- */

struct rk_logit_bias {
    uint32_t token;
    float bias;
};

struct rk_sampler_params {
    float temperature;        /* 0 = greedy (argmax); default 1 */
    int top_k;                /* 0 = off */
    float top_p;              /* 1 = off */
    float min_p;              /* 0 = off */
    float presence_penalty;   /* OpenAI semantics, 0 = off */
    float frequency_penalty;  /* OpenAI semantics, 0 = off */
    float repetition_penalty; /* CTRL-style divisor, 1 = off */
    int penalty_last_n;       /* window of past tokens for penalties; 0 = all */
    uint64_t seed;            /* same seed and inputs -> same tokens */
    const struct rk_logit_bias *bias; /* borrowed during create (copied) */
    size_t n_bias;
};
/* Defaults: temperature 1, top_p 1, everything else off, seed 0. */
RK_API void rk_sampler_params_default(struct rk_sampler_params *p);

struct rk_sampler;
/* `p` may be NULL (greedy). Returns RK_EINVAL for out-of-range parameters:
 * temperature negative or not finite, top_k < 0, top_p outside (0,1], min_p
 * outside [0,1], presence/frequency penalties outside [-2,2], repetition
 * penalty <= 0, penalty_last_n outside [0, 2^24], bias token >= n_vocab or
 * non-finite bias. All memory is allocated here; sampling does not allocate.
 * Random stream: xoshiro256** seeded by splitmix64(seed), the softmax uses a
 * libm-independent exp, so results are the same on every IEEE-754 machine.
 * One sampler per sequence; not thread-safe. */
RK_API int rk_sampler_create(const struct rk_sampler_params *p, size_t n_vocab,
                             struct rk_sampler **out);
RK_API void rk_sampler_free(struct rk_sampler *s);
/* Start over with new parameters (NULL: greedy), keeping the buffers: the
 * state afterwards is that of a sampler just created with `p`. RK_EINVAL
 * (parameters as for rk_sampler_create) or RK_ENOMEM leave it unchanged. */
RK_API int rk_sampler_reset(struct rk_sampler *s, const struct rk_sampler_params *p);
/* Record a token as part of the context for the penalties (prompt tokens
 * may be accepted too; rk_sampler_sample accepts what it picks). */
RK_API void rk_sampler_accept(struct rk_sampler *s, uint32_t token);
/* Pick the next token from `logits` [n_vocab] (modified in place: penalties,
 * bias, temperature). Order: logit bias, repetition penalty, presence and
 * frequency penalties (logit -= count*frequency + (count>0)*presence), then
 * temperature 0 -> argmax (lowest id on ties), else temperature, top-k,
 * softmax, top-p, min-p (relative to the most likely token), renormalise,
 * draw. NaN logits are never picked; RK_ENUMERIC if every logit is NaN. */
RK_API int rk_sampler_sample(struct rk_sampler *s, float *logits, uint32_t *out);

/* log-softmax helpers for logprobs: the log-probability of `token` (-inf for
 * token >= n_vocab), and the k most likely tokens (ids and log-probabilities,
 * most likely first, lower id first on ties; entries beyond n_vocab get id
 * UINT32_MAX and -inf). Thread-safe; no allocation. */
RK_API float rk_logprob(const float *logits, size_t n_vocab, uint32_t token);
RK_API void rk_logprobs_top(const float *logits, size_t n_vocab, size_t k, uint32_t *ids,
                            float *lps);

/* Stop sequences over generated text. Feed each newly decoded piece of text;
 * the matcher tells how many bytes are safe to emit now (it holds back a
 * suffix that may still become a stop sequence) and whether a stop sequence
 * was hit (the emitted text then ends right before it). The first occurrence
 * to end wins, whatever the split into pieces. Limits: at most
 * RK_STOPPER_MAX_STOPS stop strings of 1..RK_STOPPER_STOP_MAX bytes (an empty
 * one is RK_EINVAL; n_stops 0 passes all text through), pieces of at most
 * RK_STOPPER_PIECE_MAX bytes per feed (more is a programmer error). Create
 * allocates everything; feed does not allocate. */
#define RK_STOPPER_MAX_STOPS 16
#define RK_STOPPER_STOP_MAX 256
#define RK_STOPPER_PIECE_MAX 65536
struct rk_stopper;
RK_API int rk_stopper_create(const char *const *stops, size_t n_stops, struct rk_stopper **out);
RK_API void rk_stopper_free(struct rk_stopper *s);
/* Returns true when a stop sequence was found (and on every later call, then
 * emitting nothing). emit and emit_len: text to send now (points into the
 * stopper, valid until the next call). */
RK_API bool rk_stopper_feed(struct rk_stopper *s, const char *piece, size_t len,
                            const char **emit, size_t *emit_len);
/* End of generation: returns whatever was held back (nothing after a stop). */
RK_API void rk_stopper_finish(struct rk_stopper *s, const char **emit, size_t *emit_len);

#ifdef __cplusplus
}
#endif
#endif /* RK_CORE_H */

/*
 * rk_adapters.h - the public interface of rwkvd's adapters layer: state-adapter
 * files and their store, tuning methods, optimizer, datasets and evaluation.
 * Depends on core only (no JSON, no HTTP, no libuv).
 */
#ifndef RK_ADAPTERS_H
#define RK_ADAPTERS_H

#include "rk_core.h"
#include "rk_fileio.h"

#ifdef __cplusplus
extern "C" {
#endif

/* === state files and store ================================================ */

/*
 * State adapters: an initial recurrent state tuned for one base model, plus
 * metadata. On disk an adapter is a safetensors file (adapters/FORMAT.md):
 *
 *     blocks.{i}.att.time_state   F32 [H, N, N]   row = value, column = key
 *     blocks.{i}.att.shift_state  F32 [C]          optional (zero if absent)
 *     blocks.{i}.ffn.shift_state  F32 [C]          optional (zero if absent)
 *     __metadata__: format "rwkvd-state", format_version "1", fingerprint (16
 *     hex digits of rk_model_fingerprint), n_layer, n_embd, n_head, head_size,
 *     vocab, method, created (ms since the epoch), version, plus free text.
 *
 * In memory an adapter is a flat float buffer in the core state layout
 * (rk_state_layout), so applying it to a sequence is one copy.
 */

#define RK_STATE_ID_MAX 64 /* ids match ^[a-z0-9][a-z0-9_-]{0,63}$ */

/* True when `id` (NUL-terminated, may be NULL) is a valid state id or tenant
 * name: 1..64 characters of [a-z0-9_-], starting with [a-z0-9]. */
RK_API bool rk_state_id_valid(const char *id);

/* Descriptive metadata kept with a state. Strings are NUL-terminated. */
struct rk_state_meta {
    uint64_t fingerprint; /* rk_model_fingerprint of the base model */
    int n_layer, n_embd, n_head, head_size, n_vocab;
    bool has_shift;       /* the file carried token-shift parts */
    char method[32];      /* "standard", "import-pth", "upload", ... */
    char note[128];       /* free text (a job id, a description) */
    int64_t created_ms;   /* creation time, ms since the epoch */
    uint64_t version;     /* 1 for the first save under an id, +1 per replace */
    /* A kernel state (method "kernel" or "dbp", docs/TUNING.md): kernel_m > 0
     * features per head, and then the adapter's floats are the core state
     * followed by the kernel part (rk_kernel_layout); 0 = a plain state. */
    int kernel_m;
    int kernel_fade;      /* enum rk_kernel_fade */
};

/* --- kernel states ---------------------------------------------------------
 *
 * A kernel state adds, per layer l and head h, a memory P [N][M] read
 * through a fixed random-feature map of the receptance:
 *     rhat = r / sqrt(|r|^2 + 1e-6),  phi = sqrt(2/M) cos(Omega rhat + beta),
 *     y += c_t P phi   (the WKV read-out, before the GroupNorm)
 * with Omega [M][N], beta [M] per layer, and c_t = prod_{tau<=t} mean_j
 * w_tau[j] (fade "mean"; 0 once log c_t < -40) or 1 (fade "none"). Floats after the core state:
 *     P [L][H][N][M], Omega [L][M][N], beta [L][M].
 */
enum rk_kernel_fade { RK_FADE_MEAN = 0, RK_FADE_NONE = 1 };
#define RK_KERNEL_M_MAX 4096

struct rk_kernel_layout {
    size_t P, omega, beta; /* float offsets from the start of the adapter */
    size_t len;            /* floats of the whole adapter (core state included) */
};
RK_API void rk_kernel_layout(const struct rk_model *m, int kernel_m, struct rk_kernel_layout *out);
/* Floats of an adapter with this metadata: rk_state_len, or the kernel
 * layout's len when meta->kernel_m > 0 (meta NULL: rk_state_len). */
RK_API size_t rk_adapter_len(const struct rk_model *m, const struct rk_state_meta *meta);

/* What the read-out term of a kernel state reads (borrowed pointers). */
struct rk_kernel_view {
    int L, H, N, M;
    int fade;
    const float *P, *omega, *beta;
};
/* The view of an adapter [rk_adapter_len] whose metadata says kernel_m > 0. */
RK_API void rk_kernel_view_of(const struct rk_model *m, int kernel_m, int fade,
                              const float *adapter, struct rk_kernel_view *out);
/* The core read-out term of kernel states: data = a struct rk_kernel_view,
 * carry [L*H] (the log of c_t), grad = a struct rk_kernel_grad. */
RK_API extern const struct rk_readout_ops rk_kernel_readout;
/* Gradient of the read-out term (what rk_kernel_readout's bwd adds to). */
struct rk_kernel_grad {
    float weight; /* factor of this sequence's gradient */
    float *dP;    /* [L][H][N][M], += weight * dLoss/dP */
    /* DBP statistics (NULL = none): up to samp_max feature vectors per
     * (layer, head), [L][H][samp_max][M], count in nsamp [L*H] */
    float *samp;
    int *nsamp;
    int samp_max;
};
/* cos and sin of z[n] as the features compute them (for tests). */
RK_API void rk_kernel_cos_sin(const float *z, float *c, float *s, int n);
/* The kernel states' hot loops run their AVX-512 build where rk_cpu_avx512()
 * says so; on = the portable build from now on (off: back to that choice),
 * for tests that compare the two. */
RK_API void rk_kernel_force_portable(bool on);
/* The feature vector phi [M] of one head's receptance r [N] (for tests). */
RK_API void rk_kernel_features(const struct rk_kernel_view *v, int layer, const float *r,
                               float *phi);

/* Fill `meta` from the model (fingerprint and shape), method "upload",
 * created now, version 0. */
RK_API void rk_state_meta_init(struct rk_state_meta *meta, const struct rk_model *m);

/* Parse an adapter file held in memory: a safetensors state file or an
 * RWKV-PEFT .pth (torch zip holding blocks.{i}.att.time_state tensors in
 * fp32, fp16 or bf16), detected from the bytes. `state` [rk_state_len(m)]
 * receives the state (parts the file lacks are zero). `meta` (may be NULL)
 * receives the metadata; a .pth gets method "import-pth".
 * `require_fingerprint`: a safetensors file must then carry a fingerprint.
 * A fingerprint or shape that does not match `m` is RK_EMISMATCH; anything
 * malformed is RK_EFORMAT (with detail in `eb`). Every size and offset is
 * checked against `len` before use. Thread-safe. */
RK_API int rk_state_file_parse(const void *buf, size_t len, const struct rk_model *m,
                               bool require_fingerprint, float *state,
                               struct rk_state_meta *meta, struct rk_errbuf *eb);
/* rk_state_file_parse for any adapter, kernel states included: *out
 * receives a malloc'd buffer of rk_adapter_len(m, meta) floats (the caller
 * frees it). rk_state_file_parse itself refuses a kernel state (RK_EFORMAT,
 * saying so), since its buffer holds only the core state. */
RK_API int rk_state_file_parse_alloc(const void *buf, size_t len, const struct rk_model *m,
                                     bool require_fingerprint, float **out,
                                     struct rk_state_meta *meta, struct rk_errbuf *eb);

/* Where a state file comes from, for rk_state_file_import. The WKV matrices
 * are [H][N][N] with rows = value channel, columns = key channel in rwkvd's
 * files, RWKV-PEFT's .pth and the core's state (rwkv7_spec.md 2.7); ai00's
 * state files hold each matrix transposed, which the bytes cannot show. */
enum rk_state_from {
    RK_STATE_FROM_AUTO,  /* an upload: rwkvd safetensors (fingerprint optional) or RWKV-PEFT .pth */
    RK_STATE_FROM_STORE, /* the store's own files: rwkvd safetensors, fingerprint required */
    RK_STATE_FROM_AI00,  /* an ai00_server state file: safetensors of time_state only,
                            [H, key, value], metadata format "pt"; transposed on import,
                            method "import-ai00" */
};
/* rk_state_file_parse with the source named (plain states only, like it).
 * Shapes are checked against `m` ([H, N, N] per layer, every layer present;
 * RK_EMISMATCH otherwise). */
RK_API int rk_state_file_import(const void *buf, size_t len, const struct rk_model *m,
                                enum rk_state_from from, float *state,
                                struct rk_state_meta *meta, struct rk_errbuf *eb);

/* Serialise `state` [rk_adapter_len(m, meta)] with `meta` as a safetensors
 * adapter (token-shift parts included; the kernel part when
 * meta->kernel_m > 0). *out receives a malloc'd buffer the caller
 * frees; *len its size. Thread-safe. */
RK_API int rk_state_file_encode(const struct rk_model *m, const float *state,
                                const struct rk_state_meta *meta, void **out, size_t *len);

/* The file helpers (rk_file_write_atomic, rk_file_read_all,
 * rk_file_clean_temps, ...) are core's: rk_fileio.h. */
/* The same in parent/<id>/<sub> for every <id> in `parent` that is a valid
 * id (rk_state_id_valid): e.g. DATA/tenants/<tenant>/states. Each level is
 * opened relative to the last with O_NOFOLLOW, so a symbolic link planted
 * at any level below `parent` is not followed. Returns the number removed. */
RK_API int rk_file_clean_temps_each(const char *parent, const char *sub);

/* Convenience: encode and write atomically / read and parse (fingerprint
 * required). */
RK_API int rk_state_file_save(const char *path, const struct rk_model *m, const float *state,
                              const struct rk_state_meta *meta, struct rk_errbuf *eb);
RK_API int rk_state_file_load(const char *path, const struct rk_model *m, float *state,
                              struct rk_state_meta *meta, struct rk_errbuf *eb);

/*
 * The state store: a directory of adapters with per-tenant namespaces
 *
 *     DIR/tenants/<tenant>/states/<id>.safetensors
 *
 * plus an in-memory LRU cache of parsed states bounded in bytes. Every state
 * handed out is an immutable, reference-counted version: replacing or
 * deleting an id never changes a version a request already holds, which is
 * released with rk_state_ref_release. Tenant names and ids must pass
 * rk_state_id_valid; a state of another tenant is simply not found
 * (RK_ENOTFOUND), like a missing one.
 *
 * Thread-safety: every rk_store_* function and rk_state_ref_release may be
 * called from any thread (one mutex guards the cache; file I/O for one
 * tenant/id is serialised by the same mutex only around the rename).
 */
struct rk_state_store;
struct rk_state_ref; /* one immutable version of one adapter */

struct rk_store_params {
    size_t cache_bytes_max; /* LRU bound on cached state bytes (0 = 256 MiB) */
    size_t file_bytes_max;  /* largest adapter file accepted (0 = 1 GiB) */
};

/* Open (creating if needed) the store at `dir` for model `m` (kept: it must
 * outlive the store). `p` may be NULL. */
RK_API int rk_store_open(const char *dir, const struct rk_model *m,
                         const struct rk_store_params *p, struct rk_state_store **out,
                         struct rk_errbuf *eb);
/* NULL is a no-op. Refs still held stay valid until released. */
RK_API void rk_store_free(struct rk_state_store *s);

/* Look up tenant/id: a cache hit, or a load from disk with the fingerprint
 * check (RK_EMISMATCH when the file was made for another model). On success
 * *out holds one reference. RK_ENOTFOUND when absent or ids invalid. */
RK_API int rk_store_get(struct rk_state_store *s, const char *tenant, const char *id,
                        struct rk_state_ref **out, struct rk_errbuf *eb);
/* rk_store_get without the disk: a cache hit gives RK_OK and *out one
 * reference (and counts as a hit, with the LRU order updated); anything else
 * gives RK_ENOTFOUND and counts nothing, and then only rk_store_get can tell
 * whether the state exists. Never reads a file, so an event loop can call it
 * and leave misses to a worker thread. */
RK_API int rk_store_get_cached(struct rk_state_store *s, const char *tenant, const char *id,
                               struct rk_state_ref **out);

/* Save `state` [rk_adapter_len(m, meta)] under tenant/id (atomic write), replacing any previous
 * version; meta->version is set to the previous version + 1 (1 when new).
 * `meta` may be NULL (method "upload"). *out (may be NULL) receives a
 * reference to the new version. Requests holding the old version keep it. */
RK_API int rk_store_put(struct rk_state_store *s, const char *tenant, const char *id,
                        const float *state, const struct rk_state_meta *meta,
                        struct rk_state_ref **out, struct rk_errbuf *eb);

/* Remove tenant/id from disk and cache. RK_ENOTFOUND when absent. */
RK_API int rk_store_delete(struct rk_state_store *s, const char *tenant, const char *id,
                           struct rk_errbuf *eb);

/* Call `fn` for every state of `tenant`, in id order, with its metadata and
 * file size (from the file; states that fail to parse are reported with
 * meta->version 0 and `ok` false). Return false from `fn` to stop. */
typedef bool rk_store_list_cb(const char *id, const struct rk_state_meta *meta, size_t bytes,
                              bool ok, void *user);
RK_API int rk_store_list(struct rk_state_store *s, const char *tenant, rk_store_list_cb *fn,
                         void *user);

/* The raw adapter file of tenant/id (malloc'd; caller frees). */
RK_API int rk_store_read_file(struct rk_state_store *s, const char *tenant, const char *id,
                              void **out, size_t *len, struct rk_errbuf *eb);

struct rk_store_stats {
    uint64_t hits, misses, evictions;
    size_t bytes;   /* state bytes held by the cache */
    size_t entries; /* cached versions */
};
RK_API void rk_store_stats(struct rk_state_store *s, struct rk_store_stats *out);

/* The state [rk_state_len] of a version; valid while the reference is held. */
RK_API const float *rk_state_ref_data(const struct rk_state_ref *r);
/* For a kernel state (meta kernel_m > 0): true, and `out` views its kernel
 * part (valid while the reference is held); false for a plain state. */
RK_API bool rk_state_ref_kernel(const struct rk_state_ref *r, const struct rk_model *m,
                                struct rk_kernel_view *out);
RK_API const struct rk_state_meta *rk_state_ref_meta(const struct rk_state_ref *r);
/* Take another reference (cheap, atomic). */
RK_API struct rk_state_ref *rk_state_ref_retain(struct rk_state_ref *r);
/* Drop a reference; the last one frees the version. NULL is a no-op. Any thread. */
RK_API void rk_state_ref_release(struct rk_state_ref *r);
/* A reference to a state that belongs to no store (a temporary state):
 * takes `data` (malloc'd, [len] floats; freed with the last reference) and
 * copies `meta`. NULL when out of memory (data is then not taken). */
RK_API struct rk_state_ref *rk_state_ref_detached(float *data, const struct rk_state_meta *meta,
                                                  size_t len);

/* === end of state files and store ========================================= */

/* === tuning, datasets, evaluation ========================================= */

/*
 * Tuning a state adapter: Adam(W) on the parameters of a tuning method (for
 * "standard", the initial state) of a frozen model, with gradients from
 * rk_backward_seq. Everything here works
 * on token ids; turning JSONL or text into token sequences is the server's
 * job. Usage:
 *
 *     struct rk_dataset *ds = NULL;
 *     rk_dataset_create(&ds);
 *     rk_dataset_add(ds, tokens, loss_mask, n);      // once per example
 *     struct rk_tune_params tp;
 *     rk_tune_params_default(&tp);
 *     tp.steps = 200;
 *     float *st = malloc(rk_state_len(m) * sizeof(float));
 *     struct rk_tune_result res;
 *     int rc = rk_tune_run(m, &tp, ds, NULL, NULL, NULL, NULL, st, &res);
 *
 * Determinism: the same model, dataset, parameters (seed included) and
 * thread count give bit-identical states.
 */

/* --- datasets: token sequences and multiple-choice items in memory -------- */

/*
 * A sequence of n tokens trains or scores the prediction of token t from
 * tokens[0..t-1] wherever loss_mask[t] is non-zero (t >= 1; mask[0] is
 * ignored because nothing precedes the first token). A multiple-choice item
 * is a prompt and several continuations, one of them right.
 */
struct rk_dataset;

struct rk_mc_item {
    const uint32_t *prompt; /* [n_prompt], n_prompt >= 1 */
    size_t n_prompt;
    size_t n_choices;               /* >= 2 */
    const uint32_t *const *choices; /* [n_choices][n_choice[i]] */
    const size_t *n_choice;         /* each >= 1 */
    size_t answer;                  /* index of the right choice */
};

RK_API int rk_dataset_create(struct rk_dataset **out);
/* NULL is a no-op. */
RK_API void rk_dataset_free(struct rk_dataset *d);
/* Append a copy of tokens[n] with loss_mask[n] (NULL: every position t >= 1).
 * RK_EINVAL unless n >= 2 and at least one position t >= 1 is selected. */
RK_API int rk_dataset_add(struct rk_dataset *d, const uint32_t *tokens, const uint8_t *loss_mask,
                          size_t n);
/* Append a copy of a multiple-choice item. RK_EINVAL for an empty prompt or
 * choice, fewer than 2 choices, or answer >= n_choices. */
RK_API int rk_dataset_add_mc(struct rk_dataset *d, const struct rk_mc_item *item);
RK_API size_t rk_dataset_len(const struct rk_dataset *d);      /* sequences */
RK_API size_t rk_dataset_n_mc(const struct rk_dataset *d);     /* mc items */
RK_API size_t rk_dataset_n_tokens(const struct rk_dataset *d); /* over sequences */
RK_API size_t rk_dataset_n_targets(const struct rk_dataset *d); /* selected positions */
/* Borrow sequence i (valid until the dataset is freed). */
RK_API void rk_dataset_get(const struct rk_dataset *d, size_t i, const uint32_t **tokens,
                           const uint8_t **loss_mask, size_t *n);
/* The tag of sequence i: its index in the dataset it was first added to,
 * kept by rk_dataset_split (so per-sequence data of a method, such as a
 * teacher's distributions, can be found from a split's sequence). */
RK_API uint64_t rk_dataset_tag(const struct rk_dataset *d, size_t i);
/* Borrow mc item i (pointers valid until the dataset is freed). */
RK_API void rk_dataset_get_mc(const struct rk_dataset *d, size_t i, struct rk_mc_item *out);
/* Largest token id + 1 over everything held (0 when empty). */
RK_API uint32_t rk_dataset_vocab_used(const struct rk_dataset *d);
/* Split the sequences (not the mc items) at random: round(val_frac * len)
 * sequences, at least 1 when val_frac > 0 and len >= 2, go to *val, the rest
 * to *train, both in their original order. mc items are not copied.
 * The same seed gives the same split. */
RK_API int rk_dataset_split(const struct rk_dataset *d, double val_frac, uint64_t seed,
                            struct rk_dataset **train, struct rk_dataset **val);
/* Fisher-Yates shuffle of idx[n] driven by a splitmix64 generator whose
 * state is *rng (advanced). */
RK_API void rk_shuffle(size_t *idx, size_t n, uint64_t *rng);

/* --- optimizer over flat float buffers ------------------------------------ */

enum rk_lr_decay {
    RK_LR_COSINE = 0, /* lr_init -> lr_final along half a cosine */
    RK_LR_LINEAR,     /* straight line */
    RK_LR_CONSTANT,   /* lr_init throughout (after warmup) */
};
struct rk_lr_schedule {
    double lr_init, lr_final;
    long warmup; /* steps of linear ramp from lr_init/warmup to lr_init */
    long total;  /* steps in all; decay runs over [warmup, total) */
    enum rk_lr_decay decay;
};
/* Learning rate of step `step` (0-based). */
RK_API double rk_lr_at(const struct rk_lr_schedule *s, long step);

struct rk_adamw_params {
    double lr;
    double beta1, beta2, eps;
    double weight_decay; /* decoupled (AdamW); 0 = Adam */
};
/* One AdamW update of n parameters in place, llm.c style: g = grad *
 * grad_scale; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; param -= lr (m_hat /
 * (sqrt(v_hat) + eps) + wd param), with bias correction for step t (1-based).
 * Deterministic and element-wise (any split of the buffer gives the same). */
RK_API void rk_adamw_update(float *param, const float *grad, float *m, float *v, size_t n, long t,
                            const struct rk_adamw_params *p, double grad_scale);
/* Euclidean norm (accumulated in double, fixed order). */
RK_API double rk_grad_norm(const float *g, size_t n);
/* Factor that scales a gradient of norm `norm` to at most `max_norm`
 * (1 when max_norm <= 0 or norm <= max_norm). */
RK_API double rk_clip_scale(double norm, double max_norm);

/* --- tuning ---------------------------------------------------------------- */

/*
 * Tuning methods: the seam. A method says what is tuned (a flat vector of
 * params_len floats: the "parameters"), how the parameters become the
 * initial state of every training sequence, how dLoss/dstate flows back to
 * them, and the loss, as a hook on the logits. rk_tune_run drives every
 * method the same way:
 *
 *     params --to_state--> state0 --rk_backward_seq(loss)--> dLoss/dstate0
 *            <--grad_to_params--                        --> AdamW on params
 *
 * Checkpoints, Adam moments and rk_tune_run's output all have the
 * parameters' length. Each method is one file, adapters/method_<name>.c;
 * adapters/methods.c lists them. Entries are immutable and shared.
 */
struct rk_tune_params;

/* A range of the parameter vector: [off, off + len). */
struct rk_span {
    size_t off, len;
};

/* What a method whose states carry a read-out term (struct rk_readout in
 * rk_core.h: "kernel", "dbp") adds to the driver; NULL for plain-state
 * methods. A run calls begin once, then per step: bind (the current
 * parameters: the term for the backward and validation, gradient zeroed),
 * weight before each sequence's backward (the token weight of its
 * gradient), grad (dparams += scale * the term's gradient), and after
 * each update after_update (may be NULL); end at the end. */
struct rk_tune_extra {
    int (*begin)(const struct rk_model *m, const struct rk_tune_params *p, void **x);
    void (*end)(void *x);
    void (*bind)(void *x, const float *params, struct rk_readout *ro, void **grad);
    void (*weight)(void *x, float w);
    void (*grad)(void *x, const float *params, float scale, float *dparams);
    void (*after_update)(void *x, float *params);
};

/* What a method's loss hook gets as `user` (see rk_logits_loss_fn): the
 * run's parameters, the dataset and the index of the training sequence
 * whose logits these are, so that a method can look up per-sequence data
 * (a teacher's distribution, an advantage) by (seq, t). */
struct rk_kl_ref;
struct rk_tune_loss_ctx {
    const struct rk_tune_params *p;
    const struct rk_dataset *ds;
    size_t seq;
    /* Set for the sequences of p->kl_data: the base model's distributions
     * that rk_loss_kl_ref compares with (NULL for training sequences). */
    const struct rk_kl_ref *kl;
};

struct rk_tune_method {
    const char *name; /* "standard": --method, "method" of the APIs, a state's method */
    const char *help; /* one line for --help, the docs and error messages */
    /* Floats in the parameter vector. */
    size_t (*params_len)(const struct rk_model *m, const struct rk_tune_params *p);
    /* Starting parameters [params_len] from a starting state
     * [rk_state_len] (`state` NULL = the zero state). */
    void (*params_init)(const struct rk_model *m, const struct rk_tune_params *p,
                        const float *state, float *params);
    /* The initial state [rk_state_len] that `params` give. */
    void (*to_state)(const struct rk_model *m, const struct rk_tune_params *p,
                     const float *params, float *state);
    /* dLoss/dparams [params_len] from dLoss/dstate [rk_state_len] (the chain
     * rule through to_state); parts that are not trained get zero. */
    void (*grad_to_params)(const struct rk_model *m, const struct rk_tune_params *p,
                           const float *params, const float *dstate, float *dparams);
    /* The spans of the parameters the optimizer updates, in order, into
     * spans[cap]; returns their number (at most cap). */
    size_t (*trainable)(const struct rk_model *m, const struct rk_tune_params *p,
                        struct rk_span *spans, size_t cap);
    /* The loss on the logits (NULL = cross-entropy against the next token,
     * rk_loss_xent); its `user` is a struct rk_tune_loss_ctx. */
    rk_logits_loss_fn *loss;
    /* The read-out term's part of a run (NULL = none). */
    const struct rk_tune_extra *extra;
    /* The served adapter (rk_adapter_len floats, kernel part included) from
     * the parameters, and the metadata it needs (kernel_m, kernel_fade);
     * NULL = the parameters are the state (to_state). */
    void (*to_adapter)(const struct rk_model *m, const struct rk_tune_params *p,
                       const float *params, float *adapter, struct rk_state_meta *meta);
};

/* The adapter of `params` for saving or storing: *out (malloc'd, the
 * caller frees it) gets rk_adapter_len(m, meta) floats and `meta` (already
 * initialised) the method's name and its kernel fields. RK_ENOMEM. */
RK_API int rk_tune_export(const struct rk_model *m, const struct rk_tune_params *p,
                          const float *params, float **out, struct rk_state_meta *meta);

/* The method called `name` (NULL or unknown: NULL). */
RK_API const struct rk_tune_method *rk_tune_method_find(const char *name);
/* The registered methods: *n gets their number. */
RK_API const struct rk_tune_method *const *rk_tune_methods(size_t *n);
/* Their names joined by ", " into buf[cap] (for error messages). */
RK_API void rk_tune_method_names(char *buf, size_t cap);
/* The default method, "standard". */
RK_API const struct rk_tune_method *rk_tune_method_default(void);

/* The method entries (adapters/method_<name>.c). */
RK_API extern const struct rk_tune_method rk_method_standard;
RK_API extern const struct rk_tune_method rk_method_kernel;
RK_API extern const struct rk_tune_method rk_method_dbp;
RK_API extern const struct rk_tune_method rk_method_observer;
RK_API extern const struct rk_tune_method rk_method_rl;

/*
 * The observer method's targets: the teacher's top-k distributions, per
 * training sequence (indexed by rk_dataset_tag) and answer position. Pass
 * them as p->method_data; positions without one get cross-entropy.
 */
struct rk_observer_targets;
RK_API int rk_observer_targets_create(size_t n_seq, struct rk_observer_targets **out);
RK_API void rk_observer_targets_free(struct rk_observer_targets *o);
/* Positions holding a distribution, over all sequences. */
RK_API size_t rk_observer_targets_positions(const struct rk_observer_targets *o);
/* The distributions of sequence `seq` at target positions t0 .. t0+n_pos-1
 * (position t predicts token t+1): k entries per position, ids[p*k+i] with
 * log-probability lps[p*k+i] (-INFINITY or id UINT32_MAX: no entry; 1 <= k
 * <= 64). Probabilities of the same id add up; with S their sum, q_i = p_i /
 * max(S, 1) and the rest bin gets max(0, 1 - S) / max(S, 1). RK_EFORMAT (eb
 * says where) for a log-probability above 0 (1e-3 of slack) or NaN, or
 * probabilities summing to more than 1.01. Replaces earlier targets. */
RK_API int rk_observer_targets_set(struct rk_observer_targets *o, size_t seq, size_t t0,
                                   size_t n_pos, int k, const uint32_t *ids, const double *lps,
                                   struct rk_errbuf *eb);
/* One row of the observer loss: KL(q || s) between the teacher's bins (q[k]
 * over ids[k], UINT32_MAX unused, plus q_rest) and the softmax of logits[V]
 * folded into the same bins; returns it and overwrites logits with
 * dKL/dlogits / nsel (an rk_logits_loss_fn's contract). */
RK_API double rk_observer_kl_row(float *logits, int V, const uint32_t *ids, const float *q, int k,
                                 float q_rest, size_t nsel);

/* Saved between steps so that an interrupted job can resume bit-identically
 * (same parameters, dataset and thread count). Arrays are [len] floats, the
 * method's parameters (for "standard": the core state layout); `m`/`v` are
 * the Adam moments. */
struct rk_tune_checkpoint {
    long step;          /* optimizer steps done */
    size_t len;         /* rk_tune_params_len */
    const float *state; /* current parameters */
    const float *m, *v;
    const float *best;  /* parameters with the best validation loss so far */
    double best_val;    /* INFINITY when none yet */
    int bad_evals;      /* evaluations since best_val improved */
};
/* Called every checkpoint_every steps and at the end (borrowed pointers,
 * valid during the call). A non-zero return stops the run with that code. */
typedef int rk_tune_checkpoint_cb(const struct rk_tune_checkpoint *ck, void *user);

/*
 * Checkpoint files (RKTCKPT1, little-endian as written by this machine):
 * "RKTCKPT1", u64 step, u64 len, f64 best_val, i64 bad_evals, then f32
 * state, m, v, best, [len] each. The format of `rwkvd tune --checkpoint`
 * and of the jobs journal's <id>.ckpt.
 */
/* Write `ck` to `path` atomically. RK_ENOMEM, RK_EIO (detail in `eb`). */
RK_API int rk_tune_ckpt_save(const char *path, const struct rk_tune_checkpoint *ck,
                             struct rk_errbuf *eb);
/* Read the checkpoint at `path`, which must hold `len` floats per array,
 * into `ck`; *mem (taken by the caller: free it) holds the arrays ck points
 * into. RK_ENOTFOUND when the file is absent, RK_EFORMAT when it is not a
 * checkpoint of that length (or its step is absurd), RK_EIO, RK_ENOMEM;
 * detail in `eb` (may be NULL). */
RK_API int rk_tune_ckpt_load(const char *path, size_t len, struct rk_tune_checkpoint *ck,
                             float **mem, struct rk_errbuf *eb);

struct rk_tune_progress {
    long step, steps;   /* steps done, steps planned */
    double loss;        /* training loss of this step (token-weighted) */
    double grad_norm;   /* before clipping */
    double lr;
    double val_loss;    /* NAN unless this report follows an evaluation */
    double kl;          /* mean KL(p_base || p_state) per generic-text position of
                           this step (NAN unless kl_weight > 0) */
    double score;       /* method rl: mean score of this step's samples (else NAN) */
    double tokens_per_s; /* forward+backward tokens per second, this run */
    size_t tokens;      /* tokens processed, this run */
    double elapsed_s;
    double after_s;     /* seconds of this step in the method's after-update hook
                           (dbp: the update of R; 0 for methods without one) */
};
typedef void rk_tune_progress_cb(const struct rk_tune_progress *p, void *user);

struct rk_tune_params {
    const struct rk_tune_method *method; /* NULL = "standard" */
    long steps;            /* optimizer steps (default 100) */
    int batch;             /* sequences per step; gradients are token-weighted means (4) */
    double lr, lr_final;   /* schedule ends (default 1 -> 0.01, see docs/TUNING.md) */
    long warmup;           /* (default 10) */
    enum rk_lr_decay decay; /* (default cosine) */
    double beta1, beta2, eps, weight_decay; /* (0.9, 0.99, 1e-8, 0) */
    double clip_norm;      /* clip the gradient norm to this (default 1; 0 = off) */
    bool tune_shift;       /* also tune both token-shift vectors (default false) */
    uint64_t seed;         /* shuffling and the validation split (default 0) */
    double val_split;      /* fraction of sequences held out (default 0.1; 0 = none) */
    long eval_every;       /* steps between validation evaluations (default 10) */
    int patience;          /* stop after this many evaluations without a new
                              best validation loss (default 0 = never) */
    size_t seq_len_max;    /* longer sequences are cut to this (0 = none) */
    int bptt_checkpoint;   /* WKV checkpoint interval of the backward (0 = 16) */
    int n_threads;         /* compute threads (0 = all CPUs) */
    long checkpoint_every; /* steps between checkpoint_cb calls (0 = end only) */
    /* methods "kernel" and "dbp" (docs/TUNING.md) */
    int kernel_m;          /* features per head, M (default 256 = 4N) */
    double kernel_sigma;   /* Gaussian kernel width on the unit receptance (0.5) */
    uint64_t kernel_seed;  /* seed of the random features (default 0) */
    int kernel_fade;       /* enum rk_kernel_fade (default mean) */
    double dbp_lr;         /* DBP: step of the decorrelating matrix (1e-3) */
    /* Kernel and dbp: the kernel part (floats [P, len) of rk_kernel_layout) of
     * a kernel state with this run's kernel_m and kernel_fade to start from:
     * its P, features and phases, so a run goes on where that state's ended
     * (dbp starts with R = I, P~ = P). NULL = P zero and fresh features from
     * kernel_seed. Borrowed. */
    const float *init_kernel;
    rk_tune_checkpoint_cb *checkpoint_cb; /* may be NULL */
    const struct rk_tune_checkpoint *resume; /* borrowed; NULL = fresh start */
    const void *method_data; /* borrowed; per-run data of the method's loss
                                (observer: struct rk_observer_targets), or NULL */
    /* Collateral protection (docs/TUNING.md): with kl_weight > 0 each step
     * adds kl_weight * KL(p_base || p_state), averaged over the positions of
     * kl_batch sequences of kl_data, to the loss. p_base is the model's
     * next-token distribution from the zero state, computed once per run and
     * kept as its kl_topk largest probabilities per position plus the rest. */
    double kl_weight;      /* lambda (default 0 = off) */
    int kl_topk;           /* probabilities kept per position (default 64; V if larger) */
    int kl_batch;          /* generic sequences per step (default 1) */
    const struct rk_dataset *kl_data; /* borrowed generic text (rk_generic_dataset);
                                         needed when kl_weight > 0 */
    /* method "rl" (docs/TUNING.md): samples per prompt, their temperature
     * and length, and the weight of KL(p_state || p_start) */
    int rl_k;              /* 2..RK_RL_K_MAX (default 4) */
    double rl_temperature; /* (0, 10] (default 1) */
    int rl_max_tokens;     /* 1..RK_RL_MAX_TOKENS_MAX (default 32) */
    double rl_kl;          /* [0, 1000] (default 0.05) */
};
/* Fill the defaults listed above. */
RK_API void rk_tune_params_default(struct rk_tune_params *p);
/* The method of `p` (its default when p->method is NULL). */
RK_API const struct rk_tune_method *rk_tune_params_method(const struct rk_tune_params *p);
/* Floats in the parameters that `p`'s method tunes for `m`. */
RK_API size_t rk_tune_params_len(const struct rk_model *m, const struct rk_tune_params *p);
/* RK_OK when `p` can run (rk_tune_run's own check, looser than the ranges of
 * rk_hparams(), which bound what the CLI and the APIs accept); else RK_EINVAL. */
RK_API int rk_tune_params_check(const struct rk_tune_params *p);

/*
 * The hyperparameters, described once. This table drives the HTTP parsers
 * (POST /tune, the OpenAI fine-tuning route), the `rwkvd tune` options, the
 * jobs journal and the docs (a test checks that every entry is documented).
 * Most entries are fields of struct rk_tune_params; RK_HP_HOST entries are
 * resolved by the host before rk_tune_run (epochs, init_state, the OpenAI
 * learning-rate multiplier).
 */
enum rk_hparam_type {
    RK_HP_INT,  /* integer in [lo, hi] */
    RK_HP_NUM,  /* real in [lo, hi] ((lo, hi] when lo_open) */
    RK_HP_BOOL, /* true/false; a CLI switch */
    RK_HP_ENUM, /* one of `choices` (the value is its index) */
    RK_HP_STR,  /* a string (host entries only) */
};
/* Where an entry is accepted. */
#define RK_HP_JOB 1u  /* POST /tune, the jobs journal and job objects */
#define RK_HP_CLI 2u  /* an option of `rwkvd tune` */
#define RK_HP_HOST 4u /* not a field of rk_tune_params: the host resolves it */
#define RK_HP_OPENAI 8u /* in the OpenAI fine-tuning "hyperparameters", as `openai` */
/* A server limit that lowers `hi` for jobs (docs/JOBS.md, RWKVD_JOB_*). */
enum rk_hparam_cap { RK_HP_CAP_NONE = 0, RK_HP_CAP_STEPS, RK_HP_CAP_BATCH };

struct rk_hparam {
    const char *name;   /* the JSON key */
    const char *cli;    /* the `rwkvd tune` option without "--" */
    const char *openai; /* the OpenAI fine-tuning name (RK_HP_OPENAI), else NULL */
    enum rk_hparam_type type;
    double lo, hi;
    bool lo_open;
    enum rk_hparam_cap cap;
    unsigned where;               /* RK_HP_* flags */
    const char *const *choices;   /* RK_HP_ENUM: NULL-terminated names */
    size_t off, size;             /* the field in struct rk_tune_params (not for HOST) */
    const char *help;             /* one line */
};
/* The table; *n gets its length. */
RK_API const struct rk_hparam *rk_hparams(size_t *n);
/* The entry called `name` (JSON key), or NULL. */
RK_API const struct rk_hparam *rk_hparam_find(const char *name);
/* The value of a field entry in `p`, as a double (bool: 0/1, enum: index). */
RK_API double rk_hparam_get(const struct rk_hparam *h, const struct rk_tune_params *p);
/* Range check of `x` against [lo, hi'] where hi' = min(hi, cap_hi) (cap_hi
 * <= 0: no cap): RK_ERANGE when outside or not an integer for RK_HP_INT. */
RK_API int rk_hparam_check(const struct rk_hparam *h, double x, double cap_hi);
/* Store `x` (already checked) in `p`'s field. */
RK_API void rk_hparam_set(const struct rk_hparam *h, struct rk_tune_params *p, double x);
/* Parse text (a CLI value; enums by name, bools "true"/"false"/"1"/"0")
 * into *x and range-check it: RK_EINVAL when malformed, RK_ERANGE. */
RK_API int rk_hparam_parse(const struct rk_hparam *h, const char *s, double *x);
/* The range as text: "[1, 100000000]", "(0, 1000]", "cosine|linear|constant". */
RK_API void rk_hparam_range_str(const struct rk_hparam *h, double cap_hi, char *buf, size_t cap);

struct rk_tune_result {
    long steps_done;
    double loss_last;      /* training loss of the last step */
    double val_loss_init;  /* validation loss of the starting state (NAN: no split) */
    double val_loss_best;  /* best validation loss seen (NAN: no split) */
    long best_step;        /* step of the best validation loss */
    bool stopped_early;
    double tokens_per_s;
    size_t tokens;         /* forward+backward tokens, this run (generic text included) */
    double kl_last;        /* mean KL of the last step (NAN unless kl_weight > 0) */
    double score_first, score_last; /* method rl: mean sample score of the run's first
                                       and last step (else NAN) */
};

/*
 * Tune the parameters of p->method (for "standard": an initial state) of
 * `m` on the sequences of `ds`. `init` [rk_state_len] is the starting state
 * (NULL = zero), turned into parameters by the method. On success `out`
 * [rk_tune_params_len] receives the parameters with the best validation
 * loss when a validation split exists, else the final ones. `cancel` is checked between sequences,
 * `progress` is called after every step and after every evaluation; `user`
 * goes to every callback. `res` may be NULL. Errors: RK_EINVAL (bad
 * parameters, empty dataset, token ids >= V), RK_ENOMEM, RK_ECANCELED,
 * RK_ENUMERIC (NaN or Inf in loss or gradient; res->steps_done tells the
 * step), or the checkpoint callback's code. Thread-safe for distinct outputs
 * (the model is shared read-only).
 */
RK_API int rk_tune_run(const struct rk_model *m, const struct rk_tune_params *p,
                       const struct rk_dataset *ds, const float *init, rk_cancel_cb *cancel,
                       rk_tune_progress_cb *progress, void *user, float *out,
                       struct rk_tune_result *res);

/* --- method rl: policy gradient into the state ------------------------------ */

#define RK_RL_K_MAX 64            /* samples per prompt */
#define RK_RL_MAX_TOKENS_MAX 1024 /* tokens per sample */
#define RK_RL_REF_TOPK 32         /* the starting state's tokens kept per position */

/* The host's part of an rl run. score(score_user, ...) gets prompt index `prompt` (of the
 * prompts dataset), sample k and its completion tokens[n] (n may be 0) and
 * writes a finite score (higher is better); a non-RK_OK return stops the
 * run with that code. A sample ends after rl_max_tokens tokens, after the
 * stop sequence (kept in the completion), or, with stop_at_zero, before a
 * sampled token 0 (the World end of text). `cancel` (may be NULL) is
 * checked between samples and tokens; `user` goes to cancel, the progress
 * callback and p->checkpoint_cb. */
struct rk_rl_io {
    int (*score)(void *user, size_t prompt, int k, const uint32_t *tokens, size_t n,
                 double *score);
    void *score_user;
    rk_cancel_cb *cancel;
    void *user;
    const uint32_t *stop; /* borrowed; NULL = none */
    size_t n_stop;
    bool stop_at_zero;
};
/* The prompts of an rl run: count prompts of n[i] >= 1 tokens (borrowed). */
struct rk_rl_prompts {
    const uint32_t *const *tokens;
    const size_t *n;
    size_t count;
};
/* RK_OK when the rl fields of `p` are in range, else RK_EINVAL. */
RK_API int rk_rl_params_check(const struct rk_tune_params *p);
/*
 * Tune the initial state of `m` with the method "rl" (docs/TUNING.md) on
 * `prompts` (RK_EINVAL for an empty prompt or a token id >= V): per step
 * `batch` prompts in a seeded per-epoch order, rl_k samples each from the
 * current state (sampler seed rk_rl_sample_seed), the host's scores,
 * advantages normalised per prompt, and one AdamW step on the token-
 * weighted policy-gradient loss with the KL term (skipped when no prompt's
 * scores differ). Checkpoints and resume as rk_tune_run (no validation:
 * best = current). `out` gets the final parameters. Errors as
 * rk_tune_run, and the score callback's.
 */
RK_API int rk_rl_run(const struct rk_model *m, const struct rk_tune_params *p,
                     const struct rk_rl_prompts *prompts, const float *init,
                     const struct rk_rl_io *io, rk_tune_progress_cb *progress, float *out,
                     struct rk_tune_result *res);
/* The sampler seed of sample k of prompt `prompt` at step `step`. */
RK_API uint64_t rk_rl_sample_seed(uint64_t seed, long step, size_t prompt, int k);
/*
 * The loss's per-sequence data (rk_method_rl.loss finds it in
 * p->method_data by rk_dataset_tag, or by the loss context's seq when its
 * ds is NULL): the advantage, the first completion
 * position t0 (position t predicts token t+1) and n_pos positions, and per
 * position the starting state's k most likely tokens and the rest (set
 * from its logits; without them the KL term is left out).
 */
struct rk_rl_targets;
RK_API int rk_rl_targets_create(size_t n_seq, int k, struct rk_rl_targets **out);
RK_API void rk_rl_targets_free(struct rk_rl_targets *t);
RK_API int rk_rl_targets_set(struct rk_rl_targets *t, size_t seq, double adv, size_t t0,
                             size_t n_pos);
RK_API int rk_rl_targets_set_ref(struct rk_rl_targets *t, size_t seq, size_t p,
                                 const float *logits, int V);
/* One row of the rl loss: -adv log P(target) + kl_w KL_bins(P || start)
 * over the bins "each id of ids[k]" and "the rest" (lq: the start's log-
 * probabilities, lrest the log of its rest, -INFINITY = no rest bin; ids
 * NULL = no KL term). Returns it (*kl_out, may be NULL, gets the KL) and
 * overwrites logits[V] with dloss/dlogits / nsel. */
RK_API double rk_rl_row(float *logits, int V, uint32_t target, double adv, double kl_w,
                        const uint32_t *ids, const float *lq, float lrest, int k, size_t nsel,
                        double *kl_out);

/* --- collateral protection: KL to the base model on generic text ---------- */

/*
 * The base model's next-token distributions over a set of generic
 * sequences, each position reduced to its k most likely tokens (ids in
 * ascending order, probabilities) and the mass of the rest: memory is
 * positions * k * 8 bytes, not positions * V * 4 (with V = 65536, 2.6 MB
 * instead of 1 GB for 5000 positions at k = 32). Immutable once built.
 */
/* Build the reference of every position t >= 1 of every sequence of `ds`
 * (the prediction of token t from tokens[0..t-1]), run from the zero state
 * with `ctx`'s model; k = min(topk, V). RK_EINVAL (empty set, topk < 1),
 * RK_ENOMEM, RK_ENUMERIC. */
RK_API int rk_kl_ref_build(struct rk_ctx *ctx, const struct rk_dataset *ds, int topk,
                           struct rk_kl_ref **out);
/* NULL is a no-op. */
RK_API void rk_kl_ref_free(struct rk_kl_ref *r);
/* Bytes the reference holds (for logs and docs). */
RK_API size_t rk_kl_ref_bytes(const struct rk_kl_ref *r);
/*
 * The loss hook of a generic sequence: `user` is a struct rk_tune_loss_ctx
 * whose `kl` is the reference and `seq` the sequence's index in the set it
 * was built from; t is the position in that sequence (target unused). With
 * S the kept ids, p their base probabilities and r = 1 - sum(p), it returns
 * KL over the k + 1 bins (S and "the rest") of p_base and q = softmax(logits):
 *   sum_S p_i log(p_i / q_i) + r log(r / q_rest),  q_rest = 1 - sum_S q_i,
 * exact when r = 0 and otherwise a lower bound of the full KL, and writes
 * its gradient (q_j - p_j on S, q_j (1 - r / q_rest) elsewhere) / nsel.
 */
RK_API double rk_loss_kl_ref(float *logits, int V, size_t t, uint32_t target, size_t nsel,
                             void *user);
/* The generic text bundled for kl_weight (written for rwkvd: chat answers and
 * short prose in the demo model's formats), *n pieces. */
RK_API const char *const *rk_generic_text(size_t *n);
/* rk_generic_text tokenised with `tok`, one sequence per piece (loss on every
 * position), into a new dataset. */
RK_API int rk_generic_dataset(const struct rk_tokenizer *tok, struct rk_dataset **out);

/* --- evaluation ------------------------------------------------------------ */

struct rk_eval_result {
    double loss;         /* mean CE over selected positions of all sequences */
    double ppl;          /* exp(loss) */
    size_t n_targets;    /* positions scored */
    size_t n_seq;
    size_t n_mc, n_mc_correct;
    double accuracy;     /* n_mc_correct / n_mc (NAN when no mc items) */
};
/*
 * Score `d` with the model of `ctx` from initial state `state` (NULL = zero):
 * loss and perplexity over the sequences, and for mc items the accuracy of
 * picking the choice whose summed log-likelihood (given the prompt) is
 * highest. Uses rk_forward_seq; `cancel` (may be NULL) is checked between
 * sequences.
 */
RK_API int rk_eval_run(struct rk_ctx *ctx, const struct rk_dataset *d, const float *state,
                       rk_cancel_cb *cancel, void *cancel_user, struct rk_eval_result *out);
/* rk_eval_run with a read-out term (`ro` NULL = none; its carry is
 * ignored: each sequence starts from a zero carry of its own). */
RK_API int rk_eval_run_ro(struct rk_ctx *ctx, const struct rk_dataset *d, const float *state,
                          const struct rk_readout *ro, rk_cancel_cb *cancel, void *cancel_user,
                          struct rk_eval_result *out);
/* Summed log-likelihood of each choice of `item` [n_choices] into lls. */
RK_API int rk_eval_mc_item(struct rk_ctx *ctx, const struct rk_mc_item *item, const float *state,
                           double *lls);

/* --- task evaluation: generation, choice and loss metrics ----------------- */

/*
 * Evaluation of a state on a task given as text (docs/EVALUATION.md). A task
 * is one kind of item scored one way; every item starts from its own copy of
 * the given initial state (NULL = the zero state: the base model), so items,
 * tasks and states never influence each other and results do not depend on
 * the order of the calls. Nothing here keeps global state: a host runs
 * several evaluations at once with one rk_ctx each.
 *
 *   RK_EVAL_GENERATE  greedy decoding from the prompt, at most max_tokens,
 *                     cut at the first occurrence of any stop string (the
 *                     stop string excluded); exact_match = the cut output
 *                     equals the completion after stripping ASCII
 *                     whitespace at both ends of both; loss on the gold
 *                     completion.
 *   RK_EVAL_CHOICE    acc_raw: argmax over choices of the summed
 *                     log-likelihood of the choice's tokens given the
 *                     prompt; acc_norm: argmax of that sum divided by the
 *                     choice's length in bytes; loss of the correct choice.
 *                     Ties go to the lower index.
 *   RK_EVAL_LOSS      loss (nats per token) and nats_per_byte of the
 *                     completions given the prompts.
 *
 * Prompt and completion (or choice) are tokenised separately and the
 * completion's tokens follow the prompt's, as the JSONL dataset reader does
 * for tuning. An empty prompt starts from token 0. loss is token-weighted
 * over the whole task: sum of -log p over all scored tokens / their number.
 *
 * Few-shot: with shots = K the prompt of item i becomes
 *     shot_1 + sep + ... + shot_K + sep + prompt_i
 * where shot_j = prompt + completion (choice: prompt + choices[answer]) of K
 * distinct items of the train pool drawn by a generator seeded from
 * (shot_seed, i) alone, never the evaluated item (same index when the pool
 * is the evaluated split) nor an item with the same prompt text.
 */
enum rk_eval_kind { RK_EVAL_GENERATE = 0, RK_EVAL_CHOICE, RK_EVAL_LOSS };

/* "generate", "choice", "loss". */
RK_API const char *rk_eval_kind_name(enum rk_eval_kind k);
/* Parse a kind name; RK_EINVAL when unknown. */
RK_API int rk_eval_kind_parse(const char *s, enum rk_eval_kind *out);

/* One item as text (borrowed, NUL-terminated strings). */
struct rk_eval_item {
    const char *prompt;
    const char *completion;     /* generate and loss (may be "") */
    const char *const *choices; /* choice: [n_choices] */
    size_t n_choices;           /* choice: >= 2 */
    size_t answer;              /* choice: index of the correct choice */
};

#define RK_EVAL_STOPS_MAX 16          /* stop strings per task */
#define RK_EVAL_MAX_TOKENS_MAX 4096   /* generated tokens per item */
#define RK_EVAL_SHOTS_MAX 64          /* few-shot examples per prompt */

struct rk_eval_task {
    enum rk_eval_kind kind;
    long max_tokens;            /* generate: 1 .. RK_EVAL_MAX_TOKENS_MAX */
    const char *const *stops;   /* generate: [n_stops] non-empty strings */
    size_t n_stops;             /* 0 .. RK_EVAL_STOPS_MAX */
    size_t shots;               /* few-shot examples (0 = none) */
    const char *shot_sep;       /* separator (NULL = "\n\n") */
    uint64_t shot_seed;
    const struct rk_eval_item *pool; /* shot pool (the train split) [n_pool] */
    size_t n_pool;
    bool pool_is_items;         /* the pool is the evaluated split itself */
    const struct rk_eval_item *items; /* evaluated items [n_items] */
    size_t n_items;
};

/* Check `t`: kind, ranges, items well formed (choices present and answer in
 * range for choice, completion present otherwise), enough pool items for
 * the shots. RK_EINVAL with the reason in `eb`. */
RK_API int rk_eval_task_check(const struct rk_eval_task *t, struct rk_errbuf *eb);

/* The prompt text of item i with its few-shot examples (malloc'd,
 * NUL-terminated, caller frees; *len its length). RK_EINVAL when the pool
 * has too few eligible items (detail in `eb`), RK_ENOMEM. */
RK_API int rk_eval_prompt_build(const struct rk_eval_task *t, size_t i, char **out, size_t *len,
                                struct rk_errbuf *eb);

/* Metrics of one run; a metric that does not apply to the kind, or has
 * nothing to average over, is NAN. */
struct rk_eval_metrics {
    size_t n;              /* items evaluated */
    double exact_match;    /* generate */
    double acc_raw, acc_norm; /* choice */
    double loss;           /* nats per scored token (all kinds) */
    double nats_per_byte;  /* loss kind (also filled for generate and choice) */
    double collateral_kept; /* rk_eval_collateral only */
    size_t tokens;         /* scored + generated tokens */
    size_t tokens_scored, tokens_generated;
    double seconds;        /* wall time of the call */
};

/* Called after each item with the number done and the total. */
typedef void rk_eval_progress_cb(size_t done, size_t total, void *user);

/* Greedy generation from `prompt` (len bytes) with initial state `state`
 * (NULL = zero; copied, never written): at most max_tokens tokens (World
 * tokenizers also stop at token 0), cut before the first occurrence of any
 * of stops[n_stops]. *out receives the malloc'd NUL-terminated text (raw
 * token bytes), *out_len its length, *n_gen (may be NULL) the tokens
 * generated. Uses the core sampler (temperature 0) and stopper. */
RK_API int rk_eval_generate(struct rk_ctx *ctx, const struct rk_tokenizer *tok, const float *state,
                            const char *prompt, size_t len, long max_tokens,
                            const char *const *stops, size_t n_stops, char **out,
                            size_t *out_len, size_t *n_gen);

/* Sum of log p(completion tokens | prompt) from `state` (NULL = zero) into
 * *ll and the number of completion tokens into *n_tok (0 for an empty
 * completion, then *ll = 0). */
RK_API int rk_eval_loglik(struct rk_ctx *ctx, const struct rk_tokenizer *tok, const float *state,
                          const char *prompt, size_t prompt_len, const char *completion,
                          size_t completion_len, double *ll, size_t *n_tok);

/* Summed log-likelihood of each choice given `prompt` into lls[n_choices]
 * and its token count into n_tok[n_choices] (may be NULL); the prompt is
 * fed once. */
RK_API int rk_eval_choice_lls(struct rk_ctx *ctx, const struct rk_tokenizer *tok,
                              const float *state, const char *prompt, size_t prompt_len,
                              const char *const *choices, size_t n_choices, double *lls,
                              size_t *n_tok);

/* Run task `t` from `state` (NULL = zero) and fill `out`. `cancel` is
 * checked between items (RK_ECANCELED), `progress` called after each.
 * Errors: RK_EINVAL (detail in `eb`), RK_ERANGE (a token id beyond the
 * model), RK_ENOMEM, RK_ECANCELED. */
RK_API int rk_eval_task_run(struct rk_ctx *ctx, const struct rk_tokenizer *tok,
                            const struct rk_eval_task *t, const float *state, rk_cancel_cb *cancel,
                            void *cancel_user, rk_eval_progress_cb *progress, void *progress_user,
                            struct rk_eval_metrics *out, struct rk_errbuf *eb);
/* rk_eval_task_run with a read-out term (a kernel state's; `ro` NULL =
 * none). Its carry is ignored: each item's prompt starts from a zero carry
 * of its own, which goes on through the item's completion, each choice or
 * the generated tokens, as in a served request. */
RK_API int rk_eval_task_run_ro(struct rk_ctx *ctx, const struct rk_tokenizer *tok,
                               const struct rk_eval_task *t, const float *state,
                               const struct rk_readout *ro, rk_cancel_cb *cancel,
                               void *cancel_user, rk_eval_progress_cb *progress,
                               void *progress_user, struct rk_eval_metrics *out,
                               struct rk_errbuf *eb);

/* Greedy outputs of a generate task's items (its own rule: max_tokens,
 * stops, shots). */
struct rk_eval_outputs {
    size_t n;
    char **text;  /* [n] malloc'd, NUL-terminated */
    size_t *len;  /* [n] */
    size_t tokens; /* generated tokens in all */
};
RK_API int rk_eval_outputs_generate(struct rk_ctx *ctx, const struct rk_tokenizer *tok,
                                    const struct rk_eval_task *t, const float *state,
                                    rk_cancel_cb *cancel, void *cancel_user,
                                    rk_eval_progress_cb *progress, void *progress_user,
                                    struct rk_eval_outputs *out, struct rk_errbuf *eb);
/* Free what rk_eval_outputs_generate filled (and zero it). */
RK_API void rk_eval_outputs_fini(struct rk_eval_outputs *o);

/* Collateral: the fraction of the items of generate task `t` on which the
 * greedy output from `state` equals base->text (the outputs of the base
 * model, rk_eval_outputs_generate with state NULL, same task) byte for
 * byte. out->collateral_kept gets it, out->tokens the generated tokens of
 * this call. RK_EINVAL when base->n differs from t->n_items. */
RK_API int rk_eval_collateral(struct rk_ctx *ctx, const struct rk_tokenizer *tok,
                              const struct rk_eval_task *t, const float *state,
                              const struct rk_eval_outputs *base, rk_cancel_cb *cancel,
                              void *cancel_user, rk_eval_progress_cb *progress,
                              void *progress_user, struct rk_eval_metrics *out,
                              struct rk_errbuf *eb);
/* rk_eval_collateral with a read-out term (as rk_eval_task_run_ro). */
RK_API int rk_eval_collateral_ro(struct rk_ctx *ctx, const struct rk_tokenizer *tok,
                                 const struct rk_eval_task *t, const float *state,
                                 const struct rk_readout *ro, const struct rk_eval_outputs *base,
                                 rk_cancel_cb *cancel, void *cancel_user,
                                 rk_eval_progress_cb *progress, void *progress_user,
                                 struct rk_eval_metrics *out, struct rk_errbuf *eb);

/* True when a and b (lengths given) are equal after stripping ASCII
 * whitespace (space, \t, \n, \v, \f, \r) at both ends of both. */
RK_API bool rk_eval_text_match(const char *a, size_t alen, const char *b, size_t blen);

/* === end of tuning, datasets, evaluation ================================== */

#ifdef __cplusplus
}
#endif
#endif /* RK_ADAPTERS_H */

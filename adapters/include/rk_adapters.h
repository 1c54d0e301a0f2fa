/*
 * rk_adapters.h - the public interface of rwkvd's adapters layer: state-adapter
 * files and their store, tuning methods, optimizer, datasets and evaluation.
 * Depends on core only (no JSON, no HTTP, no libuv).
 */
#ifndef RK_ADAPTERS_H
#define RK_ADAPTERS_H

#include "rk_core.h"

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
};

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

/* Serialise `state` [rk_state_len(m)] with `meta` as a safetensors adapter
 * (token-shift parts included). *out receives a malloc'd buffer the caller
 * frees; *len its size. Thread-safe. */
RK_API int rk_state_file_encode(const struct rk_model *m, const float *state,
                                const struct rk_state_meta *meta, void **out, size_t *len);

/* Write `len` bytes to `path` atomically: temp file in the same directory,
 * write, fsync, rename, fsync of the directory. On any error the temp file
 * is removed and the old file (if any) is untouched. */
RK_API int rk_file_write_atomic(const char *path, const void *buf, size_t len,
                                struct rk_errbuf *eb);

/* Read a whole regular file (opened with O_NOFOLLOW) of at most `len_max`
 * bytes into a malloc'd buffer. RK_ENOTFOUND when it does not exist,
 * RK_ERANGE when larger than len_max. */
RK_API int rk_file_read_all(const char *path, size_t len_max, void **out, size_t *len,
                            struct rk_errbuf *eb);

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

/* Save `state` under tenant/id (atomic write), replacing any previous
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
RK_API const struct rk_state_meta *rk_state_ref_meta(const struct rk_state_ref *r);
/* Take another reference (cheap, atomic). */
RK_API struct rk_state_ref *rk_state_ref_retain(struct rk_state_ref *r);
/* Drop a reference; the last one frees the version. NULL is a no-op. Any thread. */
RK_API void rk_state_ref_release(struct rk_state_ref *r);

/* === end of state files and store ========================================= */

/* === tuning, datasets, evaluation ========================================= */

/* === end of tuning, datasets, evaluation ================================== */

#ifdef __cplusplus
}
#endif
#endif /* RK_ADAPTERS_H */

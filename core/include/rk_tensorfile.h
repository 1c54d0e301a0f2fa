/*
 * rk_tensorfile.h - the one reader of tensor containers in rwkvd
 * (core/tensorfile.c), used by the model loaders (core/load_tensorfile.c) and the state files (adapters/state_file.c):
 *
 *   - safetensors: an 8-byte little-endian header length, a JSON header
 *     {name: {dtype, shape, data_offsets}, "__metadata__": {str: str}}, the
 *     data section;
 *   - torch.save checkpoints: a stored (uncompressed) zip holding
 *     <dir>/data.pkl, a pickle of a dict of tensors, and <dir>/data/<key>
 *     storages, read by a restricted pickle machine that executes nothing.
 *
 * Both take the whole file (or, for a safetensors header, its first bytes)
 * as a buffer and treat it as hostile: every length, offset and shape is
 * checked against the real length with overflow-safe arithmetic; JSON is a
 * strict subset (bounded nesting, integers < 2^53 without sign, fraction or
 * leading zero, no NUL, paired surrogates, duplicate names and fields
 * refused); tensors may not overlap; zip entries must be stored, unencrypted,
 * single-disk, with matching local headers; pickles may name only five
 * globals and their tensors must be contiguous and inside their storage.
 * Limits: core/FORMAT.md.
 *
 * For rwkvd's own layers; not a stable API. Thread-safe (no shared state).
 */
#ifndef RK_TENSORFILE_H
#define RK_TENSORFILE_H

#include "rk_core.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define RK_TF_TENSORS_MAX 65536          /* tensors in one file (default) */
#define RK_TF_NAME_MAX 255               /* bytes in a tensor name */
#define RK_TF_DIMS_MAX 8                 /* dimensions of one tensor */
#define RK_TF_HEADER_MAX (100u << 20)    /* safetensors JSON header (default) */
#define RK_TF_META_KEY_MAX 255           /* __metadata__ key, bytes */
#define RK_TF_META_VAL_MAX 511           /* __metadata__ value, bytes */

/* One tensor as the container describes it. `shape` is row-major as stored
 * (the last dimension contiguous). */
struct rk_tf_tensor {
    char name[RK_TF_NAME_MAX + 1];
    char dtype_name[16]; /* as written: "F32", "BF16", "I64", ... */
    enum rk_dtype dtype; /* F32, F16 or BF16; RK_DTYPE_AUTO for any other dtype */
    int ndim;
    int64_t shape[RK_TF_DIMS_MAX];
    uint64_t offset;  /* safetensors: first byte in the data section; .pth: 0 */
    size_t nbytes;    /* elements x element size (checked) */
    const void *data; /* into the caller's buffer; NULL when outside it (a
                         safetensors header read alone) */
};

struct rk_tf_list {
    struct rk_tf_tensor *v;
    size_t n, cap;
};
RK_API void rk_tf_list_free(struct rk_tf_list *l);

/* Called for each __metadata__ entry, in file order; a non-zero return
 * (an RK_E* code, with eb filled) stops the parse with that code. */
typedef int rk_tf_meta_cb(void *user, const char *key, const char *val,
                          struct rk_errbuf *eb);

struct rk_tf_opts {
    const char *file;    /* the name used in messages ("model.pth", "state file") */
    size_t header_max;   /* safetensors header bytes; 0 = RK_TF_HEADER_MAX */
    size_t tensors_max;  /* 0 = RK_TF_TENSORS_MAX */
    /* safetensors: NULL skips __metadata__ (any JSON value); otherwise it
     * must be an object of strings, each entry handed to meta(user, ...) */
    rk_tf_meta_cb *meta;
    void *user;
    /* .pth: also accept a dict whose one entry is the dict of tensors
     * ({"state_dict": {...}}) */
    bool pth_nested;
};

/* The header length of a safetensors file from its first 8 bytes, checked
 * against file_len and the header limit (RK_EFORMAT "... header length"). */
RK_API int rk_tf_safetensors_header_len(const void *first8, uint64_t file_len,
                                 const struct rk_tf_opts *o, uint64_t *hlen,
                                 struct rk_errbuf *eb);

/* Parse the safetensors buf[0..len): the whole file, or at least its 8 + header
 * bytes when file_len (the real size) is larger; offsets are checked against
 * the real data section. Appends to *out (freed by the caller either way). */
RK_API int rk_tf_safetensors_read(const void *buf, size_t len, uint64_t file_len,
                           const struct rk_tf_opts *o, struct rk_tf_list *out,
                           struct rk_errbuf *eb);

/* Parse the torch.save archive buf[0..len): its tensors, in dict order, with
 * `data` pointing at each one's first element in buf. Entries that are not
 * tensors are skipped (logged at debug level). Appends to *out. */
RK_API int rk_tf_pth_read(const void *buf, size_t len, const struct rk_tf_opts *o,
                   struct rk_tf_list *out, struct rk_errbuf *eb);

/* Whether buf starts like a zip archive (a local file header). */
RK_API bool rk_tf_is_zip(const void *buf, size_t len);

/* --- Hugging Face directories: model.safetensors.index.json, config.json --- */

#define RK_TF_SHARDS_MAX 1024           /* shard files of one model */
#define RK_TF_INDEX_MAX (64u << 20)     /* bytes of an index or config.json */

struct rk_tf_index_entry {
    char name[RK_TF_NAME_MAX + 1];
    uint32_t shard; /* into shards[] */
};
/* A shard index: which file holds each tensor. v is sorted by name. */
struct rk_tf_index {
    struct rk_tf_index_entry *v;
    size_t n, cap;
    char (*shards)[RK_TF_NAME_MAX + 1]; /* distinct file names, first-seen order */
    size_t n_shards;
};
RK_API void rk_tf_index_free(struct rk_tf_index *x);
/* Parse an index {"metadata": ..., "weight_map": {tensor: shard file}} with
 * the strict JSON reader. Shard names must be plain "*.safetensors" names
 * (no directory, no leading dot); a tensor listed twice, more than
 * tensors_max (0 = RK_TF_TENSORS_MAX) tensors or RK_TF_SHARDS_MAX shards,
 * and a missing weight_map are RK_EFORMAT. `file` names it in messages. */
RK_API int rk_tf_index_read(const void *buf, size_t len, const char *file, size_t tensors_max,
                            struct rk_tf_index *out, struct rk_errbuf *eb);
/* The entry for `name`, or NULL. */
RK_API const struct rk_tf_index_entry *rk_tf_index_find(const struct rk_tf_index *x,
                                                        const char *name);

/* The top-level members of a JSON object (config.json), read strictly:
 * each string (up to RK_TF_META_VAL_MAX bytes) and each non-negative
 * integer is handed to cb; other values (real numbers, arrays, objects,
 * booleans, null, longer strings) are checked and skipped. A non-zero
 * return of cb stops with that code. */
enum rk_tf_field { RK_TF_FIELD_STR, RK_TF_FIELD_UINT };
typedef int rk_tf_field_cb(void *user, const char *key, enum rk_tf_field kind, const char *s,
                           uint64_t u, struct rk_errbuf *eb);
RK_API int rk_tf_json_fields(const void *buf, size_t len, const char *file, rk_tf_field_cb *cb,
                             void *user, struct rk_errbuf *eb);

#endif /* RK_TENSORFILE_H */

/*
 * gguf.h - the GGUF container (versions 2 and 3) as read by core/gguf.c:
 * the header, the metadata key/value pairs (every value type, arrays
 * included), the tensor infos and the data section. Private to core/ (the
 * model loader, the tokenizer from a file's metadata, the fuzz target and
 * white-box tests). Limits: core/FORMAT.md "GGUF".
 */
#ifndef RK_GGUF_H
#define RK_GGUF_H

#include "rk_core.h"
#include "rk_tensorfile.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Metadata value types (the GGUF numbering). */
enum {
    RK_GGUF_U8 = 0,
    RK_GGUF_I8 = 1,
    RK_GGUF_U16 = 2,
    RK_GGUF_I16 = 3,
    RK_GGUF_U32 = 4,
    RK_GGUF_I32 = 5,
    RK_GGUF_F32 = 6,
    RK_GGUF_BOOL = 7,
    RK_GGUF_STRING = 8,
    RK_GGUF_ARRAY = 9,
    RK_GGUF_U64 = 10,
    RK_GGUF_I64 = 11,
    RK_GGUF_F64 = 12,
};

/* Tensor element types (ggml numbering) the loader reads. */
enum {
    RK_GGML_F32 = 0,
    RK_GGML_F16 = 1,
    RK_GGML_Q4_0 = 2,
    RK_GGML_Q4_1 = 3,
    RK_GGML_Q5_0 = 6,
    RK_GGML_Q5_1 = 7,
    RK_GGML_Q8_0 = 8,
    RK_GGML_Q4_K = 12,
    RK_GGML_Q5_K = 13,
    RK_GGML_Q6_K = 14,
    RK_GGML_BF16 = 30,
};

#define RK_GGUF_KV_MAX 65536           /* metadata pairs */
#define RK_GGUF_KEY_MAX 1024           /* bytes in a key */
#define RK_GGUF_STRING_MAX (64u << 20) /* bytes in one string value */
#define RK_GGUF_ARRAY_MAX (1u << 24)   /* elements in one array */
#define RK_GGUF_DIMS_MAX 4             /* dimensions of one tensor (ggml's) */
#define RK_GGUF_ALIGN_MAX (1u << 20)   /* general.alignment */

struct rk_gguf_kv {
    const char *key; /* into the buffer, not NUL-terminated */
    size_t key_len;
    uint32_t type;     /* RK_GGUF_* */
    uint32_t arr_type; /* arrays: element type */
    uint64_t arr_n;    /* arrays: element count */
    const unsigned char *val; /* the value's bytes (arrays: the first element) */
    size_t val_len;           /* bytes of the whole value (arrays: of the elements) */
};

struct rk_gguf_tensor {
    char name[RK_TF_NAME_MAX + 1];
    uint32_t ndim;
    uint64_t ne[RK_GGUF_DIMS_MAX]; /* ggml order: ne[0] is the contiguous dimension */
    uint32_t type;                 /* RK_GGML_* */
    uint64_t numel;
    const unsigned char *data; /* into the buffer */
    size_t nbytes;
};

struct rk_gguf {
    uint32_t version;
    uint32_t alignment;
    struct rk_gguf_kv *kv;
    size_t n_kv;
    struct rk_gguf_tensor *t;
    size_t n_t;
    size_t data_off; /* where the data section starts */
};

/* Parses and checks the whole container (every count, length, offset and
 * size against the buffer; tensors inside the data section, aligned, not
 * overlapping; supported element types only). `file` names the file in
 * messages. RK_EFORMAT or RK_ENOMEM; *g is empty on failure. */
int rk__gguf_parse(const void *buf, size_t len, const char *file, struct rk_gguf *g,
                   struct rk_errbuf *eb);
void rk__gguf_free(struct rk_gguf *g);
/* The pair with this key, or NULL. */
const struct rk_gguf_kv *rk__gguf_find(const struct rk_gguf *g, const char *key);
/* A scalar integer value of any integer type (negative ones refused):
 * RK_OK, RK_ENOTFOUND when absent, RK_EFORMAT for another type. */
int rk__gguf_uint(const struct rk_gguf *g, const char *key, uint64_t *out, const char *file,
                  struct rk_errbuf *eb);
/* Element i of an array of strings (or the string itself for i = 0 of a
 * string value); no bounds re-checks needed: the parser checked them. */
const char *rk__gguf_str(const struct rk_gguf_kv *kv, uint64_t i, size_t *len);
/* ggml's name of an element type ("Q4_K"), or NULL for an unknown number. */
const char *rk__ggml_type_name(uint32_t type);
/* Dequantize n values (a multiple of the type's block) of a supported type
 * into out: the plain reference of ggml's dequantize_row_* functions. */
void rk__gguf_dequant(uint32_t type, const void *src, float *out, size_t n);
/* Values per block and bytes per block of a supported type (0 otherwise). */
size_t rk__ggml_block(uint32_t type, size_t *bytes);

/* rk_tok_load_gguf on a buffer (the fuzz target). */
int rk__tok_gguf_from_buffer(const void *buf, size_t len, struct rk_tokenizer **out,
                             struct rk_errbuf *eb);

#endif /* RK_GGUF_H */

/*
 * gguf.c - GGUF files (versions 2 and 3): the container, the RWKV-7
 * ("rwkv7") models llama.cpp's converter writes, and the World vocabulary
 * those files carry in their metadata.
 *
 * Container (all little-endian): "GGUF", u32 version, u64 tensor count,
 * u64 metadata count; the metadata pairs (string key, u32 type, value;
 * strings are u64 length + bytes, arrays u32 element type + u64 count +
 * elements); the tensor infos (string name, u32 dimension count, u64 sizes
 * innermost first, u32 ggml type, u64 offset into the data section); padding
 * to `general.alignment` (default 32); the data section. Every count, length
 * and offset is untrusted: each read is checked against the bytes left, sizes
 * are computed with overflow checks, tensors must lie inside the data
 * section, start at aligned offsets and not overlap.
 *
 * Model: llama.cpp names (blk.N.time_mix_*, channel_mix_*, token_embd, ...)
 * are mapped onto the official names and handed to the model builder
 * (model.c) like every other loader's tensors. Relative to the official
 * checkpoint the file holds the LoRA factors in nn.Linear form, the vectors
 * as [C], r_k flattened to [C], the six token-shift mixes fused into
 * time_mix_lerp_fused [6][1][1][C] (order r w k v a g), and copies of a0/a1/a2
 * as layer 0's unused v0/v1/v2 (dropped here). No value is transformed.
 * F32/F16/BF16 tensors are used as they are; Q8_0 blocks hold exactly the
 * engine's 8-bit weights (de-interleaved here); Q4_0, Q4_1, Q5_0, Q5_1,
 * Q4_K, Q5_K and Q6_K are dequantized at load, then requantized to 8 bits for the large
 * matrices (or converted to the requested precision) and kept in fp32 for
 * everything else. The metadata's sizes must agree with the tensors'.
 * Format notes and limits: core/FORMAT.md "GGUF".
 */
#include "core_int.h"
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define GGUF_DEFAULT_ALIGN 32u

/* --- reading the container --- */

struct rd {
    const unsigned char *b;
    size_t len, off;
    const char *file;
    struct rk_errbuf *eb;
};

static int truncated(struct rd *r, const char *what)
{
    return rk_errbuf_set(r->eb, RK_EFORMAT, "%s: GGUF %s at byte %zu runs past the end of the "
                         "file", r->file, what, r->off);
}

static int take(struct rd *r, size_t n, const unsigned char **p, const char *what)
{
    if (r->len - r->off < n)
        return truncated(r, what);
    *p = r->b + r->off;
    r->off += n;
    return RK_OK;
}

static uint32_t le32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const unsigned char *p)
{
    return (uint64_t)le32(p) | (uint64_t)le32(p + 4) << 32;
}

static int rd_u32(struct rd *r, uint32_t *v, const char *what)
{
    const unsigned char *p = NULL;
    int rc = take(r, 4, &p, what);
    if (!rc)
        *v = le32(p);
    return rc;
}

static int rd_u64(struct rd *r, uint64_t *v, const char *what)
{
    const unsigned char *p = NULL;
    int rc = take(r, 8, &p, what);
    if (!rc)
        *v = le64(p);
    return rc;
}

/* A GGUF string: u64 length (at most `max`), then the bytes. */
static int rd_str(struct rd *r, const char **s, size_t *n, uint64_t max, const char *what)
{
    uint64_t l;
    size_t at = r->off;
    int rc = rd_u64(r, &l, what);
    if (rc)
        return rc;
    if (l > max)
        return rk_errbuf_set(r->eb, RK_EFORMAT, "%s: GGUF %s at byte %zu: length %llu exceeds "
                             "the limit %llu", r->file, what, at, (unsigned long long)l,
                             (unsigned long long)max);
    const unsigned char *p = NULL;
    if ((rc = take(r, (size_t)l, &p, what)))
        return rc;
    *s = (const char *)p;
    *n = (size_t)l;
    return RK_OK;
}

static size_t scalar_size(uint32_t t)
{
    switch (t) {
    case RK_GGUF_U8: case RK_GGUF_I8: case RK_GGUF_BOOL: return 1;
    case RK_GGUF_U16: case RK_GGUF_I16: return 2;
    case RK_GGUF_U32: case RK_GGUF_I32: case RK_GGUF_F32: return 4;
    case RK_GGUF_U64: case RK_GGUF_I64: case RK_GGUF_F64: return 8;
    default: return 0;
    }
}

/* One metadata value of type t (not an array) at r->off. */
static int rd_value(struct rd *r, uint32_t t, const char *key)
{
    size_t sz = scalar_size(t);
    const unsigned char *p = NULL;
    if (sz) {
        int rc = take(r, sz, &p, "metadata value");
        if (!rc && t == RK_GGUF_BOOL && *p > 1)
            rc = rk_errbuf_set(r->eb, RK_EFORMAT, "%s: GGUF metadata %s: bool value %u is "
                               "neither 0 nor 1", r->file, key, *p);
        return rc;
    }
    if (t == RK_GGUF_STRING) {
        const char *s = NULL;
        size_t n;
        return rd_str(r, &s, &n, RK_GGUF_STRING_MAX, "metadata string");
    }
    return rk_errbuf_set(r->eb, RK_EFORMAT, "%s: GGUF metadata %s: unknown value type %u",
                         r->file, key, t);
}

static int rd_kv(struct rd *r, struct rk_gguf_kv *kv)
{
    int rc;
    char key[RK_GGUF_KEY_MAX + 1];
    if ((rc = rd_str(r, &kv->key, &kv->key_len, RK_GGUF_KEY_MAX, "metadata key")))
        return rc;
    if (kv->key_len == 0)
        return rk_errbuf_set(r->eb, RK_EFORMAT, "%s: GGUF metadata key at byte %zu is empty",
                             r->file, r->off - 8);
    memcpy(key, kv->key, kv->key_len);
    key[kv->key_len] = '\0';
    if (strlen(key) != kv->key_len)
        return rk_errbuf_set(r->eb, RK_EFORMAT, "%s: GGUF metadata key with a NUL byte",
                             r->file);
    if ((rc = rd_u32(r, &kv->type, "metadata type")))
        return rc;
    if (kv->type != RK_GGUF_ARRAY) {
        size_t at = r->off;
        if ((rc = rd_value(r, kv->type, key)))
            return rc;
        kv->val = r->b + at;
        kv->val_len = r->off - at;
        return RK_OK;
    }
    if ((rc = rd_u32(r, &kv->arr_type, "array type")) ||
        (rc = rd_u64(r, &kv->arr_n, "array length")))
        return rc;
    if (kv->arr_type == RK_GGUF_ARRAY)
        return rk_errbuf_set(r->eb, RK_EFORMAT, "%s: GGUF metadata %s: arrays of arrays are not "
                             "supported", r->file, key);
    if (!scalar_size(kv->arr_type) && kv->arr_type != RK_GGUF_STRING)
        return rk_errbuf_set(r->eb, RK_EFORMAT, "%s: GGUF metadata %s: unknown array element "
                             "type %u", r->file, key, kv->arr_type);
    if (kv->arr_n > RK_GGUF_ARRAY_MAX)
        return rk_errbuf_set(r->eb, RK_EFORMAT, "%s: GGUF metadata %s: array of %llu elements "
                             "exceeds the limit %u", r->file, key,
                             (unsigned long long)kv->arr_n, RK_GGUF_ARRAY_MAX);
    size_t at = r->off;
    size_t sz = scalar_size(kv->arr_type);
    if (sz) { /* n * sz cannot overflow: n < 2^24, sz <= 8 */
        const unsigned char *p = NULL;
        if ((rc = take(r, (size_t)kv->arr_n * sz, &p, "metadata array")))
            return rc;
        if (kv->arr_type == RK_GGUF_BOOL)
            for (uint64_t i = 0; i < kv->arr_n; i++)
                if (p[i] > 1)
                    return rk_errbuf_set(r->eb, RK_EFORMAT, "%s: GGUF metadata %s: bool "
                                         "element %llu is neither 0 nor 1", r->file, key,
                                         (unsigned long long)i);
    } else {
        for (uint64_t i = 0; i < kv->arr_n; i++)
            if ((rc = rd_value(r, RK_GGUF_STRING, key)))
                return rc;
    }
    kv->val = r->b + at;
    kv->val_len = r->off - at;
    return RK_OK;
}

const char *rk__ggml_type_name(uint32_t type)
{
    static const char *const names[40] = {
        [0] = "F32", [1] = "F16", [2] = "Q4_0", [3] = "Q4_1", [6] = "Q5_0", [7] = "Q5_1",
        [8] = "Q8_0", [9] = "Q8_1", [10] = "Q2_K", [11] = "Q3_K", [12] = "Q4_K", [13] = "Q5_K",
        [14] = "Q6_K", [15] = "Q8_K", [16] = "IQ2_XXS", [17] = "IQ2_XS", [18] = "IQ3_XXS",
        [19] = "IQ1_S", [20] = "IQ4_NL", [21] = "IQ3_S", [22] = "IQ2_S", [23] = "IQ4_XS",
        [24] = "I8", [25] = "I16", [26] = "I32", [27] = "I64", [28] = "F64", [29] = "IQ1_M",
        [30] = "BF16", [34] = "TQ1_0", [35] = "TQ2_0", [39] = "MXFP4",
    };
    return type < 40 ? names[type] : NULL;
}

size_t rk__ggml_block(uint32_t type, size_t *bytes)
{
    switch (type) {
    case RK_GGML_F32: *bytes = 4; return 1;
    case RK_GGML_F16: case RK_GGML_BF16: *bytes = 2; return 1;
    case RK_GGML_Q4_0: *bytes = 18; return 32;
    case RK_GGML_Q4_1: *bytes = 20; return 32;
    case RK_GGML_Q5_0: *bytes = 22; return 32;
    case RK_GGML_Q5_1: *bytes = 24; return 32;
    case RK_GGML_Q8_0: *bytes = 34; return 32;
    case RK_GGML_Q4_K: *bytes = 144; return 256;
    case RK_GGML_Q5_K: *bytes = 176; return 256;
    case RK_GGML_Q6_K: *bytes = 210; return 256;
    default: *bytes = 0; return 0;
    }
}

static int rd_tensor(struct rd *r, struct rk_gguf_tensor *t, uint64_t *rel)
{
    const char *s = NULL;
    size_t n, at = r->off;
    int rc;
    if ((rc = rd_str(r, &s, &n, RK_TF_NAME_MAX, "tensor name")))
        return rc;
    if (n == 0 || memchr(s, '\0', n))
        return rk_errbuf_set(r->eb, RK_EFORMAT, "%s: GGUF tensor info at byte %zu: empty name "
                             "or a NUL byte in it", r->file, at);
    memcpy(t->name, s, n);
    t->name[n] = '\0';
    if ((rc = rd_u32(r, &t->ndim, "tensor dimension count")))
        return rc;
    if (t->ndim < 1 || t->ndim > RK_GGUF_DIMS_MAX)
        return rk_errbuf_set(r->eb, RK_EFORMAT, "%s: tensor %s: %u dimensions (1 to %d "
                             "allowed)", r->file, t->name, t->ndim, RK_GGUF_DIMS_MAX);
    t->numel = 1;
    for (uint32_t k = 0; k < t->ndim; k++) {
        if ((rc = rd_u64(r, &t->ne[k], "tensor size")))
            return rc;
        if (t->ne[k] == 0 || t->ne[k] > INT64_MAX ||
            __builtin_mul_overflow(t->numel, t->ne[k], &t->numel))
            return rk_errbuf_set(r->eb, RK_EFORMAT, "%s: tensor %s: size %llu of dimension %u "
                                 "is zero or overflows", r->file, t->name,
                                 (unsigned long long)t->ne[k], k);
    }
    if ((rc = rd_u32(r, &t->type, "tensor type")) || (rc = rd_u64(r, rel, "tensor offset")))
        return rc;
    size_t bytes, blk = rk__ggml_block(t->type, &bytes);
    if (!blk) {
        const char *nm = rk__ggml_type_name(t->type);
        return rk_errbuf_set(r->eb, RK_EFORMAT, "%s: tensor %s: type %s%s%u is not supported "
                             "(F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K, "
                             "Q6_K)", r->file, t->name, nm ? nm : "", nm ? " = " : "", t->type);
    }
    if (t->ne[0] % blk)
        return rk_errbuf_set(r->eb, RK_EFORMAT, "%s: tensor %s: %s rows of %llu values are not "
                             "a whole number of %zu-value blocks", r->file, t->name,
                             rk__ggml_type_name(t->type), (unsigned long long)t->ne[0], blk);
    uint64_t nb;
    if (__builtin_mul_overflow(t->numel / blk, (uint64_t)bytes, &nb) || nb > SIZE_MAX)
        return rk_errbuf_set(r->eb, RK_EFORMAT, "%s: tensor %s: size overflows", r->file,
                             t->name);
    t->nbytes = (size_t)nb;
    return RK_OK;
}

void rk__gguf_free(struct rk_gguf *g)
{
    rk__free(g->kv);
    rk__free(g->t);
    memset(g, 0, sizeof *g);
}

const struct rk_gguf_kv *rk__gguf_find(const struct rk_gguf *g, const char *key)
{
    size_t n = strlen(key);
    for (size_t i = 0; i < g->n_kv; i++)
        if (g->kv[i].key_len == n && !memcmp(g->kv[i].key, key, n))
            return &g->kv[i];
    return NULL;
}

struct span {
    uint64_t begin, end;
    size_t i;
};

static int span_cmp(const void *a, const void *b)
{
    const struct span *x = a, *y = b;
    return (x->begin > y->begin) - (x->begin < y->begin);
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(((const struct rk_gguf_tensor *const *)a)[0]->name,
                  ((const struct rk_gguf_tensor *const *)b)[0]->name);
}

/* Keys are compared with memcmp over (key, len) pairs. */
static int kv_cmp(const void *a, const void *b)
{
    const struct rk_gguf_kv *x = *(const struct rk_gguf_kv *const *)a,
                            *y = *(const struct rk_gguf_kv *const *)b;
    size_t n = x->key_len < y->key_len ? x->key_len : y->key_len;
    int c = memcmp(x->key, y->key, n);
    return c ? c : (x->key_len > y->key_len) - (x->key_len < y->key_len);
}

/* No key twice, no tensor name twice, no overlapping tensor data. */
static int check_unique(struct rk_gguf *g, uint64_t *rel, const char *file,
                        struct rk_errbuf *eb)
{
    size_t n = g->n_kv > g->n_t ? g->n_kv : g->n_t;
    void **v = rk__malloc((n ? n : 1) * sizeof *v);
    struct span *sp = rk__malloc((g->n_t ? g->n_t : 1) * sizeof *sp);
    int rc = RK_OK;
    if (!v || !sp) {
        rc = rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory", file);
        goto out;
    }
    for (size_t i = 0; i < g->n_kv; i++)
        v[i] = &g->kv[i];
    qsort(v, g->n_kv, sizeof *v, kv_cmp);
    for (size_t i = 1; i < g->n_kv; i++)
        if (!kv_cmp(&v[i - 1], &v[i])) {
            const struct rk_gguf_kv *k = v[i];
            rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: GGUF metadata key %.*s appears twice", file,
                               (int)k->key_len, k->key);
            goto out;
        }
    for (size_t i = 0; i < g->n_t; i++)
        v[i] = &g->t[i];
    qsort(v, g->n_t, sizeof *v, name_cmp);
    for (size_t i = 1; i < g->n_t; i++)
        if (!name_cmp(&v[i - 1], &v[i])) {
            rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: tensor %s appears twice", file,
                               ((struct rk_gguf_tensor *)v[i])->name);
            goto out;
        }
    for (size_t i = 0; i < g->n_t; i++)
        sp[i] = (struct span){rel[i], rel[i] + g->t[i].nbytes, i};
    qsort(sp, g->n_t, sizeof *sp, span_cmp);
    for (size_t i = 1; i < g->n_t; i++)
        if (sp[i].begin < sp[i - 1].end) {
            rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: tensor %s overlaps tensor %s", file,
                               g->t[sp[i].i].name, g->t[sp[i - 1].i].name);
            goto out;
        }
out:
    rk__free(v);
    rk__free(sp);
    return rc;
}

int rk__gguf_parse(const void *buf, size_t len, const char *file, struct rk_gguf *g,
                   struct rk_errbuf *eb)
{
    struct rd r = {buf, len, 0, file, eb};
    uint64_t n_t, n_kv, *rel = NULL;
    const unsigned char *p = NULL;
    int rc;
    memset(g, 0, sizeof *g);
    if ((rc = take(&r, 4, &p, "header")))
        return rc;
    if (memcmp(p, "GGUF", 4))
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: not a GGUF file (bad magic)", file);
    if ((rc = rd_u32(&r, &g->version, "header")))
        return rc;
    if (g->version == 1)
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: GGUF version 1 is not supported (2 and 3 are)",
                             file);
    if (g->version != 2 && g->version != 3)
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: GGUF version %u is not supported (2 and 3 "
                             "are; a big-endian file is not supported either)", file,
                             g->version);
    if ((rc = rd_u64(&r, &n_t, "header")) || (rc = rd_u64(&r, &n_kv, "header")))
        return rc;
    if (n_t > RK_TF_TENSORS_MAX)
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: %llu tensors exceed the limit %d", file,
                             (unsigned long long)n_t, RK_TF_TENSORS_MAX);
    if (n_kv > RK_GGUF_KV_MAX)
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: %llu metadata pairs exceed the limit %d", file,
                             (unsigned long long)n_kv, RK_GGUF_KV_MAX);
    g->kv = rk__calloc(n_kv ? (size_t)n_kv : 1, sizeof *g->kv);
    g->t = rk__calloc(n_t ? (size_t)n_t : 1, sizeof *g->t);
    rel = rk__calloc(n_t ? (size_t)n_t : 1, sizeof *rel);
    if (!g->kv || !g->t || !rel) {
        rc = rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory", file);
        goto fail;
    }
    for (g->n_kv = 0; g->n_kv < n_kv; g->n_kv++)
        if ((rc = rd_kv(&r, &g->kv[g->n_kv])))
            goto fail;
    g->alignment = GGUF_DEFAULT_ALIGN;
    const struct rk_gguf_kv *al = rk__gguf_find(g, "general.alignment");
    if (al) {
        uint32_t a = al->type == RK_GGUF_U32 ? le32(al->val) : 0;
        if (!a || (a & (a - 1)) || a > RK_GGUF_ALIGN_MAX) {
            rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: general.alignment must be a u32 power of two "
                               "up to %u", file, RK_GGUF_ALIGN_MAX);
            goto fail;
        }
        g->alignment = a;
    }
    for (g->n_t = 0; g->n_t < n_t; g->n_t++)
        if ((rc = rd_tensor(&r, &g->t[g->n_t], &rel[g->n_t])))
            goto fail;
    size_t pad = (g->alignment - r.off % g->alignment) % g->alignment;
    if (g->n_t && len - r.off < pad) {
        rc = truncated(&r, "data section");
        goto fail;
    }
    g->data_off = r.off + (len - r.off < pad ? len - r.off : pad);
    size_t data_len = len - g->data_off;
    for (size_t i = 0; i < g->n_t; i++) {
        struct rk_gguf_tensor *t = &g->t[i];
        if (rel[i] % g->alignment) {
            rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: tensor %s: offset %llu is not a multiple of "
                               "the alignment %u", file, t->name, (unsigned long long)rel[i],
                               g->alignment);
            goto fail;
        }
        if (rel[i] > data_len || t->nbytes > data_len - rel[i]) {
            rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: tensor %s: %zu bytes at data offset %llu run "
                               "past the end of the file", file, t->name, t->nbytes,
                               (unsigned long long)rel[i]);
            goto fail;
        }
        t->data = r.b + g->data_off + rel[i];
    }
    if ((rc = check_unique(g, rel, file, eb)))
        goto fail;
    rk__free(rel);
    return RK_OK;
fail:
    rk__free(rel);
    rk__gguf_free(g);
    return rc;
}

int rk__gguf_uint(const struct rk_gguf *g, const char *key, uint64_t *out, const char *file,
                  struct rk_errbuf *eb)
{
    const struct rk_gguf_kv *kv = rk__gguf_find(g, key);
    if (!kv)
        return RK_ENOTFOUND;
    const unsigned char *p = kv->val;
    int64_t s = 0;
    switch (kv->type) {
    case RK_GGUF_U8: *out = p[0]; return RK_OK;
    case RK_GGUF_U16: *out = (uint64_t)(p[0] | p[1] << 8); return RK_OK;
    case RK_GGUF_U32: *out = le32(p); return RK_OK;
    case RK_GGUF_U64: *out = le64(p); return RK_OK;
    case RK_GGUF_I8: s = (int8_t)p[0]; break;
    case RK_GGUF_I16: s = (int16_t)(uint16_t)(p[0] | p[1] << 8); break;
    case RK_GGUF_I32: s = (int32_t)le32(p); break;
    case RK_GGUF_I64: s = (int64_t)le64(p); break;
    default:
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: GGUF metadata %s must be an integer", file,
                             key);
    }
    if (s < 0)
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: GGUF metadata %s is negative", file, key);
    *out = (uint64_t)s;
    return RK_OK;
}

const char *rk__gguf_str(const struct rk_gguf_kv *kv, uint64_t i, size_t *len)
{
    const unsigned char *p = kv->val;
    for (uint64_t k = 0; k < i; k++)
        p += 8 + le64(p);
    *len = (size_t)le64(p);
    return (const char *)p + 8;
}

/* --- dequantization (ggml's block layouts) --- */

static float h2f(const unsigned char *p)
{
    return rk__f16_to_f32((uint16_t)(p[0] | p[1] << 8));
}

/* The 6-bit scale and min of sub-block j of a Q4_K / Q5_K super-block. */
static void scale_min_k4(int j, const unsigned char *q, int *sc, int *mn)
{
    if (j < 4) {
        *sc = q[j] & 63;
        *mn = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

void rk__gguf_dequant(uint32_t type, const void *src, float *out, size_t n)
{
    const unsigned char *b = src;
    size_t bytes, blk = rk__ggml_block(type, &bytes);
    RK_ASSERT(blk && n % blk == 0);
    for (size_t i = 0; i < n / blk; i++, b += bytes, out += blk) {
        switch (type) {
        case RK_GGML_F32:
            memcpy(out, b, 4);
            break;
        case RK_GGML_F16:
            out[0] = h2f(b);
            break;
        case RK_GGML_BF16:
            out[0] = rk__bf16_to_f32((uint16_t)(b[0] | b[1] << 8));
            break;
        case RK_GGML_Q8_0: { /* fp16 d, 32 int8 */
            float d = h2f(b);
            for (int k = 0; k < 32; k++)
                out[k] = d * (float)(int8_t)b[2 + k];
            break;
        }
        case RK_GGML_Q4_0: { /* fp16 d, 16 bytes: low nibbles values 0..15, high 16..31 */
            float d = h2f(b);
            for (int k = 0; k < 16; k++) {
                out[k] = d * (float)((b[2 + k] & 0xF) - 8);
                out[k + 16] = d * (float)((b[2 + k] >> 4) - 8);
            }
            break;
        }
        case RK_GGML_Q4_1: { /* fp16 d, fp16 m, nibbles as Q4_0; x = d·q + m */
            float d = h2f(b), mn = h2f(b + 2);
            for (int k = 0; k < 16; k++) {
                out[k] = d * (float)(b[4 + k] & 0xF) + mn;
                out[k + 16] = d * (float)(b[4 + k] >> 4) + mn;
            }
            break;
        }
        case RK_GGML_Q5_0:
        case RK_GGML_Q5_1: { /* fp16 d[, fp16 m], u32 fifth bits, nibbles as Q4_0 */
            bool one = type == RK_GGML_Q5_1;
            float d = h2f(b), mn = one ? h2f(b + 2) : 0.0f;
            const unsigned char *hp = b + (one ? 4 : 2), *qs = hp + 4;
            uint32_t qh = le32(hp);
            for (int k = 0; k < 16; k++) {
                int lo = (qs[k] & 0xF) | (int)((qh >> k) & 1) << 4;
                int hi = (qs[k] >> 4) | (int)((qh >> (k + 16)) & 1) << 4;
                if (one) {
                    out[k] = d * (float)lo + mn;
                    out[k + 16] = d * (float)hi + mn;
                } else {
                    out[k] = d * (float)(lo - 16);
                    out[k + 16] = d * (float)(hi - 16);
                }
            }
            break;
        }
        case RK_GGML_Q4_K:
        case RK_GGML_Q5_K: { /* fp16 d, fp16 dmin, 12 bytes of scales[, 32 bytes qh], qs */
            bool five = type == RK_GGML_Q5_K;
            float d = h2f(b), dmin = h2f(b + 2);
            const unsigned char *sc = b + 4, *qh = b + 16, *qs = five ? b + 48 : b + 16;
            float *y = out;
            for (int j = 0, is = 0; j < 256; j += 64, is += 2, qs += 32) {
                int s1, m1, s2, m2;
                scale_min_k4(is, sc, &s1, &m1);
                scale_min_k4(is + 1, sc, &s2, &m2);
                float d1 = d * (float)s1, n1 = dmin * (float)m1;
                float d2 = d * (float)s2, n2 = dmin * (float)m2;
                int u1 = 1 << is, u2 = 2 << is;
                for (int l = 0; l < 32; l++) {
                    int hi = five && (qh[l] & u1) ? 16 : 0;
                    *y++ = d1 * (float)((qs[l] & 0xF) + hi) - n1;
                }
                for (int l = 0; l < 32; l++) {
                    int hi = five && (qh[l] & u2) ? 16 : 0;
                    *y++ = d2 * (float)((qs[l] >> 4) + hi) - n2;
                }
            }
            break;
        }
        case RK_GGML_Q6_K: { /* ql[128], qh[64], int8 scales[16], fp16 d */
            const unsigned char *ql = b, *qh = b + 128;
            const int8_t *sc = (const int8_t *)(b + 192);
            float d = h2f(b + 208);
            float *y = out;
            for (int half = 0; half < 2; half++, y += 128, ql += 64, qh += 32, sc += 8)
                for (int l = 0; l < 32; l++) {
                    int is = l / 16;
                    int q1 = (int)((ql[l] & 0xF) | ((qh[l] & 3) << 4)) - 32;
                    int q2 = (int)((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                    int q3 = (int)((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                    int q4 = (int)((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                    y[l] = d * (float)sc[is] * (float)q1;
                    y[l + 32] = d * (float)sc[is + 2] * (float)q2;
                    y[l + 64] = d * (float)sc[is + 4] * (float)q3;
                    y[l + 96] = d * (float)sc[is + 6] * (float)q4;
                }
            break;
        }
        default:
            RK_ASSERT(0);
        }
    }
}

/* --- the model --- */

/* llama.cpp's per-layer names (after "blk.N.") -> official suffixes. */
static const struct {
    const char *gguf, *official;
    bool lora;
} layer_names[] = {
    {"attn_norm.weight", "ln1.weight", false},
    {"attn_norm.bias", "ln1.bias", false},
    {"attn_norm_2.weight", "ln2.weight", false},
    {"attn_norm_2.bias", "ln2.bias", false},
    {"time_mix_lerp_fused.weight", "att.x_rwkvag", false},
    {"time_mix_w0.weight", "att.w0", false},
    {"time_mix_w1.weight", "att.w1", true},
    {"time_mix_w2.weight", "att.w2", true},
    {"time_mix_a0.weight", "att.a0", false},
    {"time_mix_a1.weight", "att.a1", true},
    {"time_mix_a2.weight", "att.a2", true},
    {"time_mix_v0.weight", "att.v0", false},
    {"time_mix_v1.weight", "att.v1", true},
    {"time_mix_v2.weight", "att.v2", true},
    {"time_mix_g1.weight", "att.g1", true},
    {"time_mix_g2.weight", "att.g2", true},
    {"time_mix_k_k.weight", "att.k_k", false},
    {"time_mix_k_a.weight", "att.k_a", false},
    {"time_mix_r_k.weight", "att.r_k", false},
    {"time_mix_receptance.weight", "att.receptance.weight", false},
    {"time_mix_key.weight", "att.key.weight", false},
    {"time_mix_value.weight", "att.value.weight", false},
    {"time_mix_output.weight", "att.output.weight", false},
    {"time_mix_ln.weight", "att.ln_x.weight", false},
    {"time_mix_ln.bias", "att.ln_x.bias", false},
    {"channel_mix_lerp_k.weight", "ffn.x_k", false},
    {"channel_mix_key.weight", "ffn.key.weight", false},
    {"channel_mix_value.weight", "ffn.value.weight", false},
};

static const struct {
    const char *gguf, *official;
} global_names[] = {
    {"token_embd.weight", "emb.weight"},
    {"token_embd_norm.weight", "blocks.0.ln0.weight"},
    {"token_embd_norm.bias", "blocks.0.ln0.bias"},
    {"output_norm.weight", "ln_out.weight"},
    {"output_norm.bias", "ln_out.bias"},
    {"output.weight", "head.weight"},
};

/* Official key for a llama.cpp name ("" = not a model tensor, or layer 0's
 * dummy v0/v1/v2); *lora for the LoRA factors (stored in Linear form). */
static void map_name(const char *name, char *key, size_t cap, bool *lora)
{
    key[0] = '\0';
    *lora = false;
    for (size_t i = 0; i < sizeof global_names / sizeof global_names[0]; i++)
        if (!strcmp(name, global_names[i].gguf)) {
            snprintf(key, cap, "%s", global_names[i].official);
            return;
        }
    if (strncmp(name, "blk.", 4))
        return;
    const char *d = name + 4, *e = d;
    unsigned long v = 0;
    while (*e >= '0' && *e <= '9' && e - d < 9)
        v = v * 10 + (unsigned long)(*e++ - '0');
    if (e == d || *e != '.' || (d[0] == '0' && e - d > 1))
        return;
    for (size_t i = 0; i < sizeof layer_names / sizeof layer_names[0]; i++)
        if (!strcmp(e + 1, layer_names[i].gguf)) {
            const char *o = layer_names[i].official;
            if (v == 0 && (!strcmp(o, "att.v0") || !strcmp(o, "att.v1") || !strcmp(o, "att.v2")))
                return; /* llama.cpp's copies of a0/a1/a2: unused */
            snprintf(key, cap, "blocks.%lu.%s", v, layer_names[i].official);
            *lora = layer_names[i].lora;
            return;
        }
}

static bool is_big(const char *key)
{
    static const char *const sfx[] = {".att.receptance.weight", ".att.key.weight",
                                      ".att.value.weight", ".att.output.weight",
                                      ".ffn.key.weight", ".ffn.value.weight"};
    if (!strcmp(key, "emb.weight") || !strcmp(key, "head.weight"))
        return true;
    size_t n = strlen(key);
    for (size_t i = 0; i < sizeof sfx / sizeof sfx[0]; i++) {
        size_t k = strlen(sfx[i]);
        if (n > k && !strcmp(key + n - k, sfx[i]))
            return true;
    }
    return false;
}

/* Temporary buffers (8-bit matrices the builder copies), freed after it. */
struct tmp {
    void **v;
    size_t n, cap;
};

static void *tmp_alloc(struct tmp *t, size_t n)
{
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 64;
        void **v = rk__realloc(t->v, cap * sizeof *v);
        if (!v)
            return NULL;
        t->v = v;
        t->cap = cap;
    }
    void *p = rk__malloc(n ? n : 1);
    if (p)
        t->v[t->n++] = p;
    return p;
}

static void tmp_free(struct tmp *t)
{
    for (size_t i = 0; i < t->n; i++)
        rk__free(t->v[i]);
    rk__free(t->v);
}

/* A quantized large matrix as the builder's Q8 tensor (int8 values, fp16
 * scales): Q8_0 de-interleaved exactly, the other types dequantized row by
 * row and requantized as rk__q8_quantize_row does. */
static int to_q8(struct rk_model *m, const struct rk_gguf_tensor *g, struct rk__tensor *t,
                 struct tmp *tm, struct rk_errbuf *eb)
{
    const char *file = rk__model_file(m);
    size_t cols = (size_t)g->ne[0], rows = (size_t)(g->numel / g->ne[0]), nb = cols / 32;
    size_t bytes, blk = rk__ggml_block(g->type, &bytes);
    size_t row_bytes = cols / blk * bytes;
    if (cols % RK_Q8_BLOCK)
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: tensor %s: input dimension %zu is not a "
                             "multiple of %d, which 8-bit weights need", file, g->name, cols,
                             RK_Q8_BLOCK);
    int8_t *q = tmp_alloc(tm, rows * cols);
    unsigned char *sc = tmp_alloc(tm, rows * nb * 2);
    float *row = g->type == RK_GGML_Q8_0 ? NULL : rk__malloc(cols * sizeof(float));
    uint8_t *uq = g->type == RK_GGML_Q8_0 ? NULL : rk__malloc(cols);
    uint16_t *us = g->type == RK_GGML_Q8_0 ? NULL : rk__malloc(nb * sizeof(uint16_t));
    int rc = RK_OK;
    if (!q || !sc || (g->type != RK_GGML_Q8_0 && (!row || !uq || !us))) {
        rc = rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory", file);
        goto out;
    }
    for (size_t r = 0; r < rows && !rc; r++) {
        const unsigned char *src = g->data + r * row_bytes;
        if (g->type == RK_GGML_Q8_0) {
            for (size_t k = 0; k < nb; k++, src += 34) {
                memcpy(sc + (r * nb + k) * 2, src, 2);
                memcpy(q + r * cols + k * 32, src + 2, 32);
            }
            continue;
        }
        rk__gguf_dequant(g->type, src, row, cols);
        if (rk__q8_quantize_row(uq, us, row, cols))
            rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: tensor %s: row %zu: a value is not finite or "
                               "too large for an 8-bit block scale", file, g->name, r);
        for (size_t k = 0; k < cols; k++)
            q[r * cols + k] = (int8_t)((int)uq[k] - 128);
        for (size_t k = 0; k < nb; k++) {
            sc[(r * nb + k) * 2] = (unsigned char)(us[k] & 0xFF);
            sc[(r * nb + k) * 2 + 1] = (unsigned char)(us[k] >> 8);
        }
    }
    t->dtype = RK_DTYPE_Q8;
    t->data = q;
    t->scale = sc;
    t->nbytes = rows * cols;
out:
    rk__free(row);
    rk__free(uq);
    rk__free(us);
    return rc;
}

/* A quantized tensor dequantized to fp32, in model-owned memory (or a
 * temporary buffer when the builder converts it anyway). */
static int to_f32(struct rk_model *m, const struct rk_gguf_tensor *g, struct rk__tensor *t,
                  struct tmp *tm, bool temporary, struct rk_errbuf *eb)
{
    size_t n = (size_t)g->numel;
    float *dst = temporary ? tmp_alloc(tm, n * sizeof(float))
                           : rk__model_alloc(m, n * sizeof(float));
    if (!dst)
        return rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory", rk__model_file(m));
    rk__gguf_dequant(g->type, g->data, dst, n);
    t->dtype = RK_DTYPE_F32;
    t->data = dst;
    t->nbytes = n * sizeof(float);
    return RK_OK;
}

static bool quantized(uint32_t type)
{
    return type != RK_GGML_F32 && type != RK_GGML_F16 && type != RK_GGML_BF16;
}

/* The metadata's sizes against the model the tensors gave. */
static int check_meta(const struct rk_model *m, const struct rk_gguf *g, struct rk_errbuf *eb)
{
    static const struct {
        const char *key;
        bool required;
    } keys[] = {
        {"rwkv7.block_count", true},
        {"rwkv7.embedding_length", true},
        {"rwkv7.feed_forward_length", false},
        {"rwkv7.wkv.head_size", true},
        {"rwkv7.attention.decay_lora_rank", false},
        {"rwkv7.attention.iclr_lora_rank", false},
        {"rwkv7.attention.value_residual_mix_lora_rank", false},
        {"rwkv7.attention.gate_lora_rank", false},
        {"rwkv7.vocab_size", false},
    };
    const char *file = rk__model_file(m);
    const int64_t got[9] = {m->L, m->C, m->F, m->N, m->Dw, m->Da, m->Dv, m->Dg, m->V};
    for (int k = 0; k < 9; k++) {
        uint64_t v;
        int rc = rk__gguf_uint(g, keys[k].key, &v, file, eb);
        if (rc == RK_ENOTFOUND) {
            if (keys[k].required)
                return rk_errbuf_set(eb, RK_EFORMAT, "%s: GGUF metadata %s is missing", file,
                                     keys[k].key);
            continue;
        }
        if (rc)
            return rc;
        if (k == 6 && m->L < 2) /* no v LoRA in a one-layer model */
            continue;
        if (v != (uint64_t)got[k])
            return rk_errbuf_set(eb, RK_EFORMAT, "%s: GGUF metadata %s is %llu, but the tensors "
                                 "give %lld", file, keys[k].key, (unsigned long long)v,
                                 (long long)got[k]);
    }
    const struct rk_gguf_kv *eps = rk__gguf_find(g, "rwkv7.attention.layer_norm_epsilon");
    if (eps) {
        float e;
        if (eps->type != RK_GGUF_F32)
            return rk_errbuf_set(eb, RK_EFORMAT, "%s: GGUF metadata "
                                 "rwkv7.attention.layer_norm_epsilon must be an f32", file);
        memcpy(&e, eps->val, 4);
        if (!(fabsf(e - 1e-5f) <= 1e-5f * 1e-3f))
            return rk_errbuf_set(eb, RK_EFORMAT, "%s: layer-norm epsilon %g is not RWKV-7's 1e-5 "
                                 "(the only one the engine runs)", file, (double)e);
    }
    const struct rk_gguf_kv *tok = rk__gguf_find(g, "tokenizer.ggml.tokens");
    if (tok && tok->type == RK_GGUF_ARRAY && tok->arr_n != (uint64_t)m->V)
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: tokenizer.ggml.tokens holds %llu tokens, but "
                             "token_embd.weight has %d rows", file,
                             (unsigned long long)tok->arr_n, m->V);
    return RK_OK;
}

static int check_arch(const struct rk_gguf *g, const char *file, struct rk_errbuf *eb)
{
    const struct rk_gguf_kv *a = rk__gguf_find(g, "general.architecture");
    if (!a || a->type != RK_GGUF_STRING)
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: GGUF metadata general.architecture is missing "
                             "or not a string", file);
    size_t n;
    const char *s = rk__gguf_str(a, 0, &n);
    if (n != 5 || memcmp(s, "rwkv7", 5))
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: GGUF architecture '%.*s' is not RWKV-7 "
                             "(\"rwkv7\")", file, n > 64 ? 64 : (int)n, s);
    return RK_OK;
}

int rk__load_gguf(struct rk_model *m, const struct rk_model_params *p, struct rk_errbuf *eb)
{
    const char *file = rk__model_file(m);
    struct rk_gguf g;
    struct rk__tensor_list tl = {0};
    struct tmp tm = {0};
    int rc = rk__gguf_parse(m->map, m->map_len, file, &g, eb);
    if (rc)
        return rc;
    if ((rc = check_arch(&g, file, eb)))
        goto out;
    // The precision the large matrices will be held in: quantized files
    // stay 8-bit when nothing else is asked for.
    enum rk_dtype want = p ? p->wtype : RK_DTYPE_AUTO;
    bool any_quant = false;
    for (size_t i = 0; i < g.n_t; i++) {
        char key[64];
        bool lora;
        map_name(g.t[i].name, key, sizeof key, &lora);
        if (key[0] && is_big(key) && quantized(g.t[i].type))
            any_quant = true;
    }
    if (want == RK_DTYPE_AUTO && any_quant)
        want = RK_DTYPE_Q8;
    for (size_t i = 0; i < g.n_t; i++) {
        const struct rk_gguf_tensor *gt = &g.t[i];
        struct rk__tensor *t;
        if ((rc = rk__tensor_push(&tl, m, &t, eb)))
            goto out;
        memcpy(t->name, gt->name, strlen(gt->name) + 1);
        map_name(gt->name, t->key, sizeof t->key, &t->linear_form);
        if (!t->key[0])
            continue; /* kept for the name, ignored by the builder */
        // Row-major shape: the reverse of ggml's; the fused mixes as [6, C].
        t->ndim = (int)gt->ndim;
        for (uint32_t k = 0; k < gt->ndim; k++)
            t->shape[gt->ndim - 1 - k] = (int64_t)gt->ne[k];
        if (strstr(t->key, "x_rwkvag")) {
            t->ndim = 2;
            t->shape[0] = (int64_t)(gt->numel / gt->ne[0]);
            t->shape[1] = (int64_t)gt->ne[0];
        }
        bool big = is_big(t->key);
        switch (gt->type) {
        case RK_GGML_F32: t->dtype = RK_DTYPE_F32; break;
        case RK_GGML_F16: t->dtype = RK_DTYPE_F16; break;
        case RK_GGML_BF16: t->dtype = RK_DTYPE_BF16; break;
        default: t->dtype = RK_DTYPE_AUTO; break;
        }
        if (t->dtype != RK_DTYPE_AUTO) {
            t->data = gt->data;
            t->nbytes = gt->nbytes;
            continue;
        }
        if (big && gt->ndim == 2 && (want == RK_DTYPE_Q8 || gt->type == RK_GGML_Q8_0) &&
            gt->ne[0] % RK_Q8_BLOCK == 0)
            rc = to_q8(m, gt, t, &tm, eb);
        else
            rc = to_f32(m, gt, t, &tm, big && want != RK_DTYPE_F32, eb);
        if (rc)
            goto out;
    }
    struct rk_model_params pp = p ? *p : (struct rk_model_params){0};
    pp.wtype = want;
    if ((rc = rk__model_build(m, &tl, &pp, eb)))
        goto out;
    rc = check_meta(m, &g, eb);
out:
    tmp_free(&tm);
    rk__tensor_list_free(&tl);
    rk__gguf_free(&g);
    return rc;
}

/* --- the vocabulary in the metadata --- */

/* llama.cpp's escaped token text (Python's repr of the bytes, without the
 * quotes) back to the bytes: \t \n \r \xHH, and a backslash before any
 * other character stands for that character. -1 for a bad escape. */
static long unescape(const char *s, size_t n, uint8_t *out)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '\\') {
            out[o++] = (uint8_t)s[i];
            continue;
        }
        if (++i == n)
            return -1;
        switch (s[i]) {
        case 't': out[o++] = '\t'; break;
        case 'n': out[o++] = '\n'; break;
        case 'r': out[o++] = '\r'; break;
        case 'x': {
            int v = 0;
            if (n - i < 3)
                return -1;
            for (int k = 1; k <= 2; k++) {
                char c = s[i + k];
                int h = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                        : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
                if (h < 0)
                    return -1;
                v = v * 16 + h;
            }
            out[o++] = (uint8_t)v;
            i += 2;
            break;
        }
        default: out[o++] = (uint8_t)s[i]; break;
        }
    }
    return (long)o;
}

/* The World vocabulary from a parsed file's metadata. */
static int vocab_from(const struct rk_gguf *g, const char *file, struct rk_tokenizer **out,
                      struct rk_errbuf *eb)
{
    const struct rk_gguf_kv *model = rk__gguf_find(g, "tokenizer.ggml.model");
    if (!model)
        return rk_errbuf_set(eb, RK_ENOTFOUND, "%s: no tokenizer in the GGUF metadata", file);
    size_t n;
    const char *s = model->type == RK_GGUF_STRING ? rk__gguf_str(model, 0, &n) : NULL;
    if (s && n == 4 && !memcmp(s, "none", 4))
        return rk_errbuf_set(eb, RK_ENOTFOUND, "%s: the GGUF file has no vocabulary "
                             "(tokenizer.ggml.model \"none\")", file);
    if (!s || n != 4 || memcmp(s, "rwkv", 4))
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: tokenizer.ggml.model '%.*s' is not the RWKV "
                             "World tokenizer (\"rwkv\")", file, s ? (n > 64 ? 64 : (int)n) : 0,
                             s ? s : "");
    const struct rk_gguf_kv *tok = rk__gguf_find(g, "tokenizer.ggml.tokens");
    if (!tok || tok->type != RK_GGUF_ARRAY || tok->arr_type != RK_GGUF_STRING || tok->arr_n < 2)
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: tokenizer.ggml.tokens must be an array of at "
                             "least two strings", file);
    const struct rk_gguf_kv *ty = rk__gguf_find(g, "tokenizer.ggml.token_type");
    if (ty && (ty->type != RK_GGUF_ARRAY || ty->arr_type != RK_GGUF_I32 ||
               ty->arr_n != tok->arr_n))
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: tokenizer.ggml.token_type must be an i32 array "
                             "as long as tokenizer.ggml.tokens", file);
    // Id 0 is end-of-text; the vocabulary is ids 1..K, K the last normal
    // (type 1) token; the padding after it is unused.
    uint64_t K = tok->arr_n - 1;
    if (ty) {
        while (K > 0 && (int32_t)le32(ty->val + 4 * K) != 1)
            K--;
        for (uint64_t i = 1; i <= K; i++)
            if ((int32_t)le32(ty->val + 4 * i) != 1)
                return rk_errbuf_set(eb, RK_EFORMAT, "%s: token %llu has type %d inside the "
                                     "vocabulary (normal tokens 1..%llu expected)", file,
                                     (unsigned long long)i, (int32_t)le32(ty->val + 4 * i),
                                     (unsigned long long)K);
    }
    if (K == 0)
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: the GGUF vocabulary has no tokens", file);
    // The unescaped bytes are never longer than the text.
    size_t total = tok->val_len;
    uint8_t *blob = rk__malloc(total ? total : 1);
    uint32_t *off = rk__calloc((size_t)K + 1, sizeof *off);
    uint32_t *len = rk__calloc((size_t)K + 1, sizeof *len);
    int rc = RK_OK;
    if (!blob || !off || !len || total > UINT32_MAX) {
        rc = rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory", file);
        goto out;
    }
    size_t used = 0;
    const unsigned char *p = tok->val;
    for (uint64_t i = 0; i <= K; i++) {
        size_t l = (size_t)le64(p);
        const char *txt = (const char *)p + 8;
        p += 8 + l;
        if (i == 0)
            continue;
        long b = unescape(txt, l, blob + used);
        if (b <= 0) {
            rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: token %llu: %s", file,
                               (unsigned long long)i, b ? "bad escape sequence" : "empty token");
            goto out;
        }
        off[i] = (uint32_t)used;
        len[i] = (uint32_t)b;
        used += (size_t)b;
    }
    rc = rk__tok_world_build(blob, off, len, (size_t)K, file, out, eb);
out:
    rk__free(blob);
    rk__free(off);
    rk__free(len);
    return rc;
}

int rk_tok_load_gguf(const char *path, struct rk_tokenizer **out, struct rk_errbuf *eb)
{
    if (!out || !path)
        return rk_errbuf_set(eb, RK_EINVAL, "rk_tok_load_gguf: NULL argument");
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return rk_errbuf_set(eb, RK_EIO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size <= 0) {
        close(fd);
        return rk_errbuf_set(eb, RK_EIO, "%s: not a readable, non-empty regular file", path);
    }
    void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED)
        return rk_errbuf_set(eb, RK_EIO, "%s: mmap: %s", path, strerror(errno));
    struct rk_gguf g;
    int rc = rk__gguf_parse(map, (size_t)st.st_size, path, &g, eb);
    if (!rc) {
        rc = vocab_from(&g, path, out, eb);
        rk__gguf_free(&g);
    }
    munmap(map, (size_t)st.st_size);
    return rc;
}

int rk__tok_gguf_from_buffer(const void *buf, size_t len, struct rk_tokenizer **out,
                             struct rk_errbuf *eb)
{
    struct rk_gguf g;
    *out = NULL;
    int rc = rk__gguf_parse(buf, len, "fuzz.gguf", &g, eb);
    if (!rc) {
        rc = vocab_from(&g, "fuzz.gguf", out, eb);
        rk__gguf_free(&g);
    }
    return rc;
}

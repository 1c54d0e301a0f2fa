/*
 * load_rwkvcpp.c - rwkv.cpp's .bin model files (FP32 and FP16 only).
 *
 * Layout (all little-endian u32): magic 0x67676d66 ("ggmf"), version 100 or
 * 101, n_vocab, n_embed, n_layer, data_type (0 FP32, 1 FP16, others are
 * quantised); then, until the end of the file, one record per tensor:
 * dim_count (1..3), key_length, data_type, dim_count sizes in ggml order
 * (innermost first, i.e. the reverse of the PyTorch shape), the name bytes,
 * and the elements. Records are packed, so tensors are usually misaligned
 * and get copied.
 *
 * Relative to the official checkpoint an RWKV-7 .bin holds the eight LoRA
 * factors transposed (already in nn.Linear form) and the six token-shift
 * mixes concatenated as blocks.N.att.x_rwkvag [6][1][C] (order r w k v a g);
 * model.c handles both through linear_form and the fused-mix slot.
 */
#include "core_int.h"

#include <string.h>

#define BIN_MAGIC 0x67676d66u

static uint32_t rd32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* rwkv.cpp data type numbers -> ours; quantised types are named for the message. */
static int bin_dtype(uint32_t t, enum rk_dtype *dt, const char **qname)
{
    static const char *const quant[] = {"Q4_0", "Q4_1", "Q4_1_O", "Q4_2", "Q4_3",
                                        "Q5_0", "Q5_1", "Q8_0"};
    *qname = NULL;
    if (t == 0) {
        *dt = RK_DTYPE_F32;
        return 1;
    }
    if (t == 1) {
        *dt = RK_DTYPE_F16;
        return 1;
    }
    if (t >= 2 && t < 10)
        *qname = quant[t - 2];
    return 0;
}

static void type_name(char *out, size_t cap, uint32_t t, const char *q)
{
    if (q)
        snprintf(out, cap, "%s (quantised)", q);
    else
        snprintf(out, cap, "%u", t);
}

static bool is_lora(const char *name)
{
    static const char *const sfx[] = {".att.w1", ".att.w2", ".att.a1", ".att.a2",
                                      ".att.v1", ".att.v2", ".att.g1", ".att.g2"};
    size_t n = strlen(name);
    for (size_t i = 0; i < sizeof sfx / sizeof sfx[0]; i++) {
        size_t k = strlen(sfx[i]);
        if (n > k && !strcmp(name + n - k, sfx[i]))
            return true;
    }
    return false;
}

int rk__load_rwkvcpp(struct rk_model *m, const struct rk_model_params *p, struct rk_errbuf *eb)
{
    const char *file = rk__model_file(m);
    const unsigned char *b = m->map;
    size_t len = m->map_len, off = 24;
    struct rk__tensor_list tl = {0};
    enum rk_dtype dt;
    const char *q;
    int rc = RK_OK;

    if (len < 24)
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: truncated rwkv.cpp header", file);
    uint32_t magic = rd32(b), version = rd32(b + 4), n_vocab = rd32(b + 8),
             n_embed = rd32(b + 12), n_layer = rd32(b + 16), ftype = rd32(b + 20);
    if (magic != BIN_MAGIC)
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: bad rwkv.cpp magic 0x%08x", file, magic);
    if (version != 100 && version != 101)
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: unsupported rwkv.cpp file version %u", file,
                             version);
    if (!bin_dtype(ftype, &dt, &q)) {
        char what[32];
        type_name(what, sizeof what, ftype, q);
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: rwkv.cpp data type %s is not supported (FP32 "
                             "and FP16 only)", file, what);
    }

    while (off < len) {
        if (len - off < 12) {
            rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: truncated tensor header at byte %zu", file,
                               off);
            goto out;
        }
        uint32_t nd = rd32(b + off), klen = rd32(b + off + 4), tt = rd32(b + off + 8);
        size_t at = off;
        off += 12;
        if (nd < 1 || nd > 3) {
            rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: tensor at byte %zu: %u dimensions (1 to 3 "
                               "allowed)", file, at, nd);
            goto out;
        }
        if (klen < 1 || klen > RK_LOAD_MAX_NAME) {
            rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: tensor at byte %zu: name length %u out of "
                               "range", file, at, klen);
            goto out;
        }
        if (len - off < 4 * (size_t)nd + klen) {
            rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: truncated tensor header at byte %zu", file,
                               at);
            goto out;
        }
        struct rk__tensor *t;
        if ((rc = rk__tensor_push(&tl, m, &t, eb)))
            goto out;
        uint64_t numel = 1;
        t->ndim = (int)nd;
        for (uint32_t k = 0; k < nd; k++) {
            uint32_t d = rd32(b + off + 4 * k);
            t->shape[nd - 1 - k] = d; /* ggml order is innermost first */
            if (__builtin_mul_overflow(numel, (uint64_t)d, &numel)) {
                rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: tensor at byte %zu: shape overflows",
                                   file, at);
                goto out;
            }
        }
        off += 4 * (size_t)nd;
        memcpy(t->name, b + off, klen);
        t->name[klen] = '\0';
        off += klen;
        if (strlen(t->name) != klen) {
            rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: tensor at byte %zu: NUL in name", file, at);
            goto out;
        }
        if (!bin_dtype(tt, &t->dtype, &q)) {
            char what[32];
            type_name(what, sizeof what, tt, q);
            rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: tensor %s: data type %s is not supported "
                               "(FP32 and FP16 only)", file, t->name, what);
            goto out;
        }
        uint64_t nbytes;
        if (__builtin_mul_overflow(numel, (uint64_t)rk__dtype_size(t->dtype), &nbytes) ||
            nbytes > len - off) {
            rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: tensor %s: %llu elements run past the end "
                               "of the file", file, t->name, (unsigned long long)numel);
            goto out;
        }
        t->data = b + off;
        t->nbytes = (size_t)nbytes;
        off += (size_t)nbytes;
        rk__tensor_map_name(t);
        if (t->key[0] && is_lora(t->key))
            t->linear_form = true;
    }

    if ((rc = rk__model_build(m, &tl, p, eb)))
        goto out;
    if ((uint32_t)m->L != n_layer || (uint32_t)m->C != n_embed || (uint32_t)m->V != n_vocab)
        rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: header says n_layer %u, n_embed %u, n_vocab %u "
                           "but the tensors give %d, %d, %d", file, n_layer, n_embed, n_vocab,
                           m->L, m->C, m->V);
out:
    rk__tensor_list_free(&tl);
    return rc;
}

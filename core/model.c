/*
 * model.c - the format-independent half of model loading: open and map the
 * file, detect its format from its first bytes, place the tensors that a
 * container parser (load_tensorfile.c, load_rwkvcpp.c) found into
 * struct rk_model (name mapping, shape checks, dtype conversion, LoRA
 * transposition), validate the result, compute the fingerprint, answer the
 * getters, and write a model back as safetensors with the official names.
 *
 * One table (layer_slots below) lists every per-layer tensor with its official
 * name, kind and field; the builder, the validator, the fingerprint, the writer
 * and the tensor views used by tests all walk it. Formats, the in-memory layout
 * and the limits are described in core/FORMAT.md.
 */
#include "core_int.h"
#include "rk_fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the loaders read little-endian tensors in place and need a little-endian host"
#endif

/* Upper bounds on model dimensions (files claiming more are rejected). */
#define MAX_EMBD (1 << 16)
#define MAX_VOCAB (1 << 24)
#define MAX_FFN (1 << 20)
#define MAX_RANK (1 << 16)

/* --- the tensor table ------------------------------------------------------ */

enum tkind {
    TK_VEC,   /* [C] vector, official shape [C] */
    TK_VEC3,  /* [C] vector, official shape [1, 1, C] */
    TK_RK,    /* att.r_k, [H][N] */
    TK_BIG,   /* large matrix, held in the model's wtype */
    TK_LORA1, /* official [C][D]; held transposed, in Linear form [D][C] */
    TK_LORA2, /* official [D][C]; held transposed, in Linear form [C][D] */
};

/* Symbolic dimensions of the held shapes. */
enum tdim { TD_0 = 0, TD_C, TD_F, TD_V, TD_DW, TD_DA, TD_DV, TD_DG };

struct slot {
    const char *name; /* suffix after "blocks.N." (layer slots) or full name */
    enum tkind kind;
    size_t off;       /* offset of the float * or struct rk_weight field */
    enum tdim rows, cols; /* held shape of TK_BIG / TK_LORA* */
    bool opt0;        /* may be absent in layer 0 (ignored there: never used) */
};

#define LF(f) offsetof(struct rk_layer, f)
#define MF(f) offsetof(struct rk_model, f)

static const struct slot layer_slots[] = {
    {"ln1.weight", TK_VEC, LF(ln1_w), TD_0, TD_0, false},
    {"ln1.bias", TK_VEC, LF(ln1_b), TD_0, TD_0, false},
    {"ln2.weight", TK_VEC, LF(ln2_w), TD_0, TD_0, false},
    {"ln2.bias", TK_VEC, LF(ln2_b), TD_0, TD_0, false},
    {"att.x_r", TK_VEC3, LF(x_r), TD_0, TD_0, false},
    {"att.x_w", TK_VEC3, LF(x_w), TD_0, TD_0, false},
    {"att.x_k", TK_VEC3, LF(x_k), TD_0, TD_0, false},
    {"att.x_v", TK_VEC3, LF(x_v), TD_0, TD_0, false},
    {"att.x_a", TK_VEC3, LF(x_a), TD_0, TD_0, false},
    {"att.x_g", TK_VEC3, LF(x_g), TD_0, TD_0, false},
    {"att.w0", TK_VEC3, LF(w0), TD_0, TD_0, false},
    {"att.w1", TK_LORA1, LF(w1), TD_DW, TD_C, false},
    {"att.w2", TK_LORA2, LF(w2), TD_C, TD_DW, false},
    {"att.a0", TK_VEC3, LF(a0), TD_0, TD_0, false},
    {"att.a1", TK_LORA1, LF(a1), TD_DA, TD_C, false},
    {"att.a2", TK_LORA2, LF(a2), TD_C, TD_DA, false},
    {"att.v0", TK_VEC3, LF(v0), TD_0, TD_0, true},
    {"att.v1", TK_LORA1, LF(v1), TD_DV, TD_C, true},
    {"att.v2", TK_LORA2, LF(v2), TD_C, TD_DV, true},
    {"att.g1", TK_LORA1, LF(g1), TD_DG, TD_C, false},
    {"att.g2", TK_LORA2, LF(g2), TD_C, TD_DG, false},
    {"att.k_k", TK_VEC3, LF(k_k), TD_0, TD_0, false},
    {"att.k_a", TK_VEC3, LF(k_a), TD_0, TD_0, false},
    {"att.r_k", TK_RK, LF(r_k), TD_0, TD_0, false},
    {"att.receptance.weight", TK_BIG, LF(wr), TD_C, TD_C, false},
    {"att.key.weight", TK_BIG, LF(wk), TD_C, TD_C, false},
    {"att.value.weight", TK_BIG, LF(wv), TD_C, TD_C, false},
    {"att.output.weight", TK_BIG, LF(wo), TD_C, TD_C, false},
    {"att.ln_x.weight", TK_VEC, LF(lnx_w), TD_0, TD_0, false},
    {"att.ln_x.bias", TK_VEC, LF(lnx_b), TD_0, TD_0, false},
    {"ffn.x_k", TK_VEC3, LF(ffn_x_k), TD_0, TD_0, false},
    {"ffn.key.weight", TK_BIG, LF(ffn_key), TD_F, TD_C, false},
    {"ffn.value.weight", TK_BIG, LF(ffn_value), TD_C, TD_F, false},
};
#define NL ((int)(sizeof layer_slots / sizeof layer_slots[0]))
#define SLOT_X_R 4 /* att.x_r .. att.x_g are slots 4..9, in r w k v a g order */

/* Global tensors: three before the layers, three after (canonical order). */
static const struct slot global_slots[] = {
    {"emb.weight", TK_BIG, MF(emb), TD_V, TD_C, false},
    {"blocks.0.ln0.weight", TK_VEC, MF(ln0_w), TD_0, TD_0, false},
    {"blocks.0.ln0.bias", TK_VEC, MF(ln0_b), TD_0, TD_0, false},
    {"ln_out.weight", TK_VEC, MF(lnout_w), TD_0, TD_0, false},
    {"ln_out.bias", TK_VEC, MF(lnout_b), TD_0, TD_0, false},
    {"head.weight", TK_BIG, MF(head), TD_V, TD_C, false},
};
#define NG 6
#define G_EMB 0
#define G_HEAD 5

/* The fused token-shift mixes (rwkv.cpp's x_rwkvag, some fla exports' x_x):
 * a pseudo slot number one past the layer slots. */
#define SLOT_MIX6 NL

/* Canonical index i -> (layer, slot); layer -1 for the globals. */
static const struct slot *canon_slot(int L, size_t i, int *layer)
{
    if (i < 3) {
        *layer = -1;
        return &global_slots[i];
    }
    i -= 3;
    if (i < (size_t)L * NL) {
        *layer = (int)(i / NL);
        return &layer_slots[i % NL];
    }
    *layer = -1;
    return &global_slots[3 + (i - (size_t)L * NL)];
}

static size_t canon_index(int L, int layer, int slot)
{
    if (layer < 0)
        return slot < 3 ? (size_t)slot : 3 + (size_t)L * NL + (size_t)(slot - 3);
    return 3 + (size_t)layer * NL + (size_t)slot;
}

static int slot_of(const char *suffix)
{
    int s = 0;
    while (s < NL && strcmp(layer_slots[s].name, suffix))
        s++;
    RK_ASSERT(s < NL);
    return s;
}

/* att.x_r .. att.x_g, which a fused x_rwkvag tensor may provide */
static bool is_mix_slot(const struct slot *s)
{
    return s >= &layer_slots[SLOT_X_R] && s < &layer_slots[SLOT_X_R + 6];
}

static void *slot_field(struct rk_model *m, int layer, const struct slot *s)
{
    char *base = layer < 0 ? (char *)m : (char *)&m->layers[layer];
    return base + s->off;
}

static void canon_name(char *out, size_t cap, int layer, const struct slot *s)
{
    if (layer < 0)
        snprintf(out, cap, "%s", s->name);
    else
        snprintf(out, cap, "blocks.%d.%s", layer, s->name);
}

static int dim_value(const struct rk_model *m, enum tdim d)
{
    switch (d) {
    case TD_C: return m->C;
    case TD_F: return m->F;
    case TD_V: return m->V;
    case TD_DW: return m->Dw;
    case TD_DA: return m->Da;
    case TD_DV: return m->Dv;
    case TD_DG: return m->Dg;
    default: return 0;
    }
}

/* --- small helpers ---------------------------------------------------------- */

size_t rk__dtype_size(enum rk_dtype t)
{
    switch (t) {
    case RK_DTYPE_F32: return 4;
    case RK_DTYPE_F16:
    case RK_DTYPE_BF16: return 2;
    default: return 0;
    }
}

const char *rk__model_file(const struct rk_model *m)
{
    if (!m || !m->path)
        return "(model)";
    const char *s = strrchr(m->path, '/');
    return s && s[1] ? s + 1 : m->path;
}

static float elem_f32(const void *src, enum rk_dtype dt, size_t i)
{
    const unsigned char *p = src;
    if (dt == RK_DTYPE_F32) {
        float f;
        memcpy(&f, p + 4 * i, 4);
        return f;
    }
    uint16_t h;
    memcpy(&h, p + 2 * i, 2);
    return dt == RK_DTYPE_F16 ? rk__f16_to_f32(h) : rk__bf16_to_f32(h);
}

/* dst[n] (ddt) = src[n] (sdt); either may be unaligned. */
static void convert(void *dst, enum rk_dtype ddt, const void *src, enum rk_dtype sdt, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;
    if (ddt == sdt) {
        memcpy(dst, src, n * rk__dtype_size(sdt));
        return;
    }
    if (sdt == RK_DTYPE_BF16 && ddt == RK_DTYPE_F32) { /* the common case: a shift */
        for (size_t i = 0; i < n; i++) {
            uint16_t h;
            memcpy(&h, s + 2 * i, 2);
            uint32_t u = (uint32_t)h << 16;
            memcpy(d + 4 * i, &u, 4);
        }
        return;
    }
    if (sdt == RK_DTYPE_F32 && ddt == RK_DTYPE_BF16) {
        for (size_t i = 0; i < n; i++) {
            float f;
            memcpy(&f, s + 4 * i, 4);
            uint16_t h = rk__f32_to_bf16(f);
            memcpy(d + 2 * i, &h, 2);
        }
        return;
    }
    for (size_t i = 0; i < n; i++) {
        float f = elem_f32(src, sdt, i);
        if (ddt == RK_DTYPE_F32) {
            memcpy(d + 4 * i, &f, 4);
        } else {
            uint16_t h = ddt == RK_DTYPE_F16 ? rk__f32_to_f16(f) : rk__f32_to_bf16(f);
            memcpy(d + 2 * i, &h, 2);
        }
    }
}

static int64_t shape_numel(const int64_t *shape, int ndim)
{
    int64_t n = 1;
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0 || __builtin_mul_overflow(n, shape[i], &n))
            return -1;
    return n;
}

static void fmt_shape(char *out, size_t cap, const int64_t *shape, int ndim)
{
    size_t k = 0;
    k += (size_t)snprintf(out + k, cap - k, "[");
    for (int i = 0; i < ndim && k < cap; i++)
        k += (size_t)snprintf(out + k, cap - k, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (k < cap)
        snprintf(out + k, cap - k, "]");
}

static int shape_error(struct rk_errbuf *eb, const char *file, const struct rk__tensor *t,
                       const int64_t *want, int nwant)
{
    char w[96], g[96];
    fmt_shape(w, sizeof w, want, nwant);
    fmt_shape(g, sizeof g, t->shape, t->ndim);
    return rk_errbuf_set(eb, RK_EFORMAT, "%s: tensor %s: expected shape %s, got %s", file,
                         t->name, w, g);
}

/* --- tensor lists and names --------------------------------------------------- */

int rk__tensor_push(struct rk__tensor_list *l, const struct rk_model *m, struct rk__tensor **out,
                    struct rk_errbuf *eb)
{
    if (l->n >= RK_LOAD_MAX_TENSORS)
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: more than %d tensors", rk__model_file(m),
                             RK_LOAD_MAX_TENSORS);
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 256;
        struct rk__tensor *v = rk__realloc(l->v, cap * sizeof *v);
        if (!v)
            return rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory", rk__model_file(m));
        l->v = v;
        l->cap = cap;
    }
    *out = &l->v[l->n++];
    memset(*out, 0, sizeof **out);
    return RK_OK;
}

void rk__tensor_list_free(struct rk__tensor_list *l)
{
    rk__free(l->v);
    l->v = NULL;
    l->n = l->cap = 0;
}

/* Hugging Face (fla) names, after "model.layers.N.", and their official
 * equivalents after "blocks.N.". `lf`: the fla tensor is the transpose of
 * the official one (LoRA factors, stored as nn.Linear weights). */
static const struct {
    const char *hf, *off;
    bool lf;
} hf_layer_names[] = {
    {"attn_norm.weight", "ln1.weight", false},
    {"attn_norm.bias", "ln1.bias", false},
    {"ffn_norm.weight", "ln2.weight", false},
    {"ffn_norm.bias", "ln2.bias", false},
    {"pre_norm.weight", "ln0.weight", false},
    {"pre_norm.bias", "ln0.bias", false},
    {"attn.x_r", "att.x_r", false},
    {"attn.x_w", "att.x_w", false},
    {"attn.x_k", "att.x_k", false},
    {"attn.x_v", "att.x_v", false},
    {"attn.x_a", "att.x_a", false},
    {"attn.x_g", "att.x_g", false},
    {"attn.x_x", "att.x_rwkvag", false},
    {"attn.k_k", "att.k_k", false},
    {"attn.k_a", "att.k_a", false},
    {"attn.r_k", "att.r_k", false},
    {"attn.r_proj.weight", "att.receptance.weight", false},
    {"attn.k_proj.weight", "att.key.weight", false},
    {"attn.v_proj.weight", "att.value.weight", false},
    {"attn.o_proj.weight", "att.output.weight", false},
    {"attn.g_norm.weight", "att.ln_x.weight", false},
    {"attn.g_norm.bias", "att.ln_x.bias", false},
    {"attn.w_lora.lora.0.weight", "att.w1", true},
    {"attn.w_lora.lora.2.weight", "att.w2", true},
    {"attn.w_lora.lora.2.bias", "att.w0", false},
    {"attn.a_lora.lora.0.weight", "att.a1", true},
    {"attn.a_lora.lora.2.weight", "att.a2", true},
    {"attn.a_lora.lora.2.bias", "att.a0", false},
    {"attn.v_lora.lora.0.weight", "att.v1", true},
    {"attn.v_lora.lora.2.weight", "att.v2", true},
    {"attn.v_lora.lora.2.bias", "att.v0", false},
    {"attn.g_lora.lora.0.weight", "att.g1", true},
    {"attn.g_lora.lora.2.weight", "att.g2", true},
    {"ffn.x_k", "ffn.x_k", false},
    {"ffn.key.weight", "ffn.key.weight", false},
    {"ffn.value.weight", "ffn.value.weight", false},
};

void rk__tensor_map_name(struct rk__tensor *t)
{
    static const char *const hf_global[][2] = {
        {"model.embeddings.weight", "emb.weight"},
        {"model.norm.weight", "ln_out.weight"},
        {"model.norm.bias", "ln_out.bias"},
        {"lm_head.weight", "head.weight"},
    };
    const char *n = t->name;
    t->key[0] = '\0';
    t->linear_form = false;
    for (size_t i = 0; i < sizeof hf_global / sizeof hf_global[0]; i++)
        if (!strcmp(n, hf_global[i][0])) {
            snprintf(t->key, sizeof t->key, "%s", hf_global[i][1]);
            return;
        }
    static const char pre[] = "model.layers.";
    if (!strncmp(n, pre, sizeof pre - 1)) {
        const char *d = n + sizeof pre - 1, *e = d;
        while (*e >= '0' && *e <= '9' && e - d < 9)
            e++;
        if (e == d || *e != '.')
            return;
        for (size_t i = 0; i < sizeof hf_layer_names / sizeof hf_layer_names[0]; i++)
            if (!strcmp(e + 1, hf_layer_names[i].hf)) {
                snprintf(t->key, sizeof t->key, "blocks.%.*s.%s", (int)(e - d), d,
                         hf_layer_names[i].off);
                t->linear_form = hf_layer_names[i].lf;
                return;
            }
        return;
    }
    if (strlen(n) < sizeof t->key)
        memcpy(t->key, n, strlen(n) + 1);
}

/* Parse an official name. Returns 1 with *layer (-1 for globals) and *slot
 * (a layer slot, SLOT_MIX6, or a global slot index), 0 for a name the model
 * does not use, -1 for a layer number at or above RK_LOAD_MAX_LAYERS. */
static int parse_key(const char *key, int *layer, int *slot)
{
    for (int g = 0; g < NG; g++)
        if (!strcmp(key, global_slots[g].name)) {
            *layer = -1;
            *slot = g;
            return 1;
        }
    static const char pre[] = "blocks.";
    if (strncmp(key, pre, sizeof pre - 1))
        return 0;
    const char *d = key + sizeof pre - 1, *e = d;
    long v = 0;
    while (*e >= '0' && *e <= '9') {
        if (e - d >= 9)
            return -1;
        v = v * 10 + (*e - '0');
        e++;
    }
    if (e == d || *e != '.' || (d[0] == '0' && e - d > 1))
        return 0;
    if (v >= RK_LOAD_MAX_LAYERS)
        return -1;
    const char *suf = e + 1;
    if (!strcmp(suf, "att.x_rwkvag")) {
        *layer = (int)v;
        *slot = SLOT_MIX6;
        return 1;
    }
    for (int s = 0; s < NL; s++)
        if (!strcmp(suf, layer_slots[s].name)) {
            *layer = (int)v;
            *slot = s;
            return 1;
        }
    return 0; /* includes blocks.N.ln0.* for N > 0 */
}

/* --- model-owned memory ------------------------------------------------------- */

void *rk__model_alloc(struct rk_model *m, size_t n)
{
    if (m->n_owned == m->cap_owned) {
        size_t cap = m->cap_owned ? m->cap_owned * 2 : 64;
        void **v = rk__realloc(m->owned, cap * sizeof *v);
        if (!v)
            return NULL;
        m->owned = v;
        m->cap_owned = cap;
    }
    void *p = rk__malloc_aligned(n);
    if (p)
        m->owned[m->n_owned++] = p;
    return p;
}

/* --- placing tensors ------------------------------------------------------------ */

/* Check a tensor's shape for its slot (in the file's orientation). */
static int check_shape(const struct rk_model *m, const struct slot *s, const struct rk__tensor *t,
                       struct rk_errbuf *eb)
{
    const char *file = rk__model_file(m);
    int64_t C = m->C, numel = shape_numel(t->shape, t->ndim);
    int64_t want[3];
    switch (s->kind) {
    case TK_VEC:
    case TK_VEC3:
        if (t->ndim >= 1 && t->shape[t->ndim - 1] == C && numel == C)
            return RK_OK;
        want[0] = want[1] = 1;
        want[2] = C;
        return s->kind == TK_VEC ? shape_error(eb, file, t, want + 2, 1)
                                 : shape_error(eb, file, t, want, 3);
    case TK_RK:
        if ((t->ndim == 2 && t->shape[0] == m->H && t->shape[1] == m->N) ||
            (t->ndim == 1 && t->shape[0] == C))
            return RK_OK;
        want[0] = m->H;
        want[1] = m->N;
        return shape_error(eb, file, t, want, 2);
    case TK_BIG:
    case TK_LORA1:
    case TK_LORA2: {
        int64_t r = dim_value(m, s->rows), c = dim_value(m, s->cols);
        /* held (Linear) shape is [r][c]; the official layout of a LoRA factor
         * is its transpose, and a file holds one or the other */
        bool swap = s->kind != TK_BIG && !t->linear_form;
        want[0] = swap ? c : r;
        want[1] = swap ? r : c;
        if (t->ndim == 2 && t->shape[0] == want[0] && t->shape[1] == want[1])
            return RK_OK;
        return shape_error(eb, file, t, want, 2);
    }
    }
    return RK_EINTERNAL;
}

/* Read a rank from the first factor of a LoRA pair (official [C][D]). */
static int rank_of(const struct rk_model *m, const struct rk__tensor *t, int *out,
                   struct rk_errbuf *eb)
{
    int ci = t->linear_form ? 1 : 0; /* which dimension is C */
    if (t->ndim != 2 || t->shape[ci] != m->C) {
        char g[96];
        fmt_shape(g, sizeof g, t->shape, t->ndim);
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: tensor %s: expected shape %s%d%s, got %s",
                             rk__model_file(m), t->name, ci ? "[rank, " : "[", m->C,
                             ci ? "]" : ", rank]", g);
    }
    int64_t d = t->shape[1 - ci];
    if (d < 1 || d > MAX_RANK)
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: tensor %s: low-rank size %lld out of range",
                             rk__model_file(m), t->name, (long long)d);
    *out = (int)d;
    return RK_OK;
}

/* LoRA factors stored in 16 bits are held in 16 bits (a decode step reads
 * half the bytes; the values are the file's either way), in Linear form. */
static int place_lora16(struct rk_model *m, const struct slot *s, void *field, const void *src,
                        enum rk_dtype dt, const struct rk__tensor *t, struct rk_errbuf *eb)
{
    size_t rows = (size_t)dim_value(m, s->rows), cols = (size_t)dim_value(m, s->cols);
    size_t n = rows * cols;
    uint16_t *dst = rk__model_alloc(m, n * sizeof(uint16_t));
    if (!dst)
        return rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory", rk__model_file(m));
    const unsigned char *b = src;
    if (!t->linear_form) /* file [cols][rows] (official) -> held [rows][cols] */
        for (size_t i = 0; i < cols; i++)
            for (size_t j = 0; j < rows; j++)
                memcpy(dst + j * cols + i, b + 2 * (i * rows + j), 2);
    else
        memcpy(dst, src, n * sizeof(uint16_t));
    struct rk_weight *w = field;
    *w = (struct rk_weight){dt, dst, (int)rows, (int)cols, false, NULL, NULL};
    m->weight_bytes += n * sizeof(uint16_t);
    return RK_OK;
}

/* Small tensors: fp32, model-owned, LoRA factors transposed into Linear form. */
static int place_small(struct rk_model *m, const struct slot *s, void *field, const void *src,
                       enum rk_dtype dt, const struct rk__tensor *t, struct rk_errbuf *eb)
{
    if ((s->kind == TK_LORA1 || s->kind == TK_LORA2) &&
        (dt == RK_DTYPE_BF16 || dt == RK_DTYPE_F16))
        return place_lora16(m, s, field, src, dt, t, eb);
    size_t rows, cols;
    if (s->kind == TK_LORA1 || s->kind == TK_LORA2) {
        rows = (size_t)dim_value(m, s->rows);
        cols = (size_t)dim_value(m, s->cols);
    } else if (s->kind == TK_RK) {
        rows = (size_t)m->H;
        cols = (size_t)m->N;
    } else {
        rows = 1;
        cols = (size_t)m->C;
    }
    size_t n = rows * cols;
    float *dst = rk__model_alloc(m, n * sizeof(float));
    if (!dst)
        return rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory", rk__model_file(m));
    if ((s->kind == TK_LORA1 || s->kind == TK_LORA2) && !t->linear_form) {
        /* file [cols][rows] (official) -> held [rows][cols] */
        for (size_t i = 0; i < cols; i++)
            for (size_t j = 0; j < rows; j++)
                dst[j * cols + i] = elem_f32(src, dt, i * rows + j);
    } else {
        convert(dst, RK_DTYPE_F32, src, dt, n);
    }
    if (s->kind == TK_LORA1 || s->kind == TK_LORA2) {
        struct rk_weight *w = field;
        *w = (struct rk_weight){RK_DTYPE_F32, dst, (int)rows, (int)cols, false, NULL, NULL};
    } else {
        *(float **)field = dst;
    }
    m->weight_bytes += n * sizeof(float);
    return RK_OK;
}

static const struct rk__map *map_of(const struct rk_model *m, const char *d);

/* Gives back the whole pages of [p, p + len) when they lie in a mapped
 * file: a tensor copied out of the map is not read there again, so resident
 * memory holds one copy of it. */
static void drop_mapped(const struct rk_model *m, const void *p, size_t len)
{
    const char *d = p;
    if (!map_of(m, d)) /* model-owned, or a caller's buffer (the fuzz targets') */
        return;
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = ((uintptr_t)d + page - 1) & ~(page - 1), b = ((uintptr_t)d + len) & ~(page - 1);
    if (b > a)
        madvise((void *)a, b - a, MADV_DONTNEED);
}

/* A large matrix held as Q8 (q8.c): from a Q8 tensor of the file (int8 and
 * fp16 scales, made unsigned) or quantized from fp32/fp16/bf16 rows; in
 * panels for the products, row-major for the embedding table (only looked
 * up by row). */
static int place_q8(struct rk_model *m, struct rk_weight *w, size_t rows, size_t cols,
                    const struct rk__tensor *t, struct rk_errbuf *eb)
{
    bool panels = w != &m->emb;
    const char *file = rk__model_file(m);
    if (cols % RK_Q8_BLOCK)
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: tensor %s: input dimension %zu is not a "
                             "multiple of %d, which 8-bit weights need", file, t->name, cols,
                             RK_Q8_BLOCK);
    size_t nb = cols / RK_Q8_BLOCK, prows = panels ? rk__q8_panel_rows(rows) : rows;
    uint8_t *q = rk__model_alloc(m, prows * cols);
    uint16_t *sc = rk__model_alloc(m, prows * nb * sizeof(uint16_t));
    /* one row as the file or the quantizer gives it, then into its panel */
    float *row = rk__malloc(cols * sizeof(float) + cols + nb * sizeof(uint16_t));
    if (!q || !sc || !row) {
        rk__free(row);
        return rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory", file);
    }
    uint8_t *rq = (uint8_t *)(row + cols);
    uint16_t *rs = (uint16_t *)(void *)(rq + cols);
    if (panels)
        rk__q8_panel_init(q, sc, rows, cols);
    size_t es = t->dtype == RK_DTYPE_Q8 ? 1 : rk__dtype_size(t->dtype);
    for (size_t r = 0; r < rows; r++) {
        int rc;
        const char *src = (const char *)t->data + r * cols * es;
        if (t->dtype == RK_DTYPE_Q8) {
            rc = rk__q8_from_i8(rq, rs, src, (const char *)t->scale + r * nb * 2, cols);
        } else {
            convert(row, RK_DTYPE_F32, src, t->dtype, cols);
            rc = rk__q8_quantize_row(rq, rs, row, cols);
        }
        if (rc) {
            rk__free(row);
            return rk_errbuf_set(eb, RK_EFORMAT, "%s: tensor %s: row %zu: %s", file, t->name, r,
                                 t->dtype == RK_DTYPE_Q8 ? "a block scale is not finite"
                                 : "a value is not finite or too large for an 8-bit block "
                                 "scale");
        }
        if (panels) {
            rk__q8_panel_put(q, sc, cols, r, rq, rs);
        } else {
            memcpy(q + r * cols, rq, cols);
            memcpy(sc + r * nb, rs, nb * sizeof(uint16_t));
        }
    }
    rk__free(row);
    drop_mapped(m, t->data, rows * cols * es);
    if (t->dtype == RK_DTYPE_Q8)
        drop_mapped(m, t->scale, rows * nb * 2);
    *w = (struct rk_weight){RK_DTYPE_Q8, q, (int)rows, (int)cols, panels, sc, NULL};
    m->weight_bytes += prows * cols + prows * nb * sizeof(uint16_t);
    return RK_OK;
}

/* The embedding table of a q8 file, which is only looked up by row: held
 * where it lies in the file's map (struct rk_weight.i8_scales), so that only
 * the rows looked up become resident, instead of a copy of the whole table
 * (128 MiB for V 65536 x C 2048). Its scales are checked here as place_q8
 * checks them. */
static int place_q8_table(struct rk_model *m, struct rk_weight *w, size_t rows, size_t cols,
                          const struct rk__tensor *t, struct rk_errbuf *eb)
{
    size_t nb = cols / RK_Q8_BLOCK;
    const unsigned char *sc = (const unsigned char *)t->scale;
    for (size_t i = 0; i < rows * nb; i++)
        if (!isfinite(rk__f16_to_f32((uint16_t)(sc[2 * i] | sc[2 * i + 1] << 8))))
            return rk_errbuf_set(eb, RK_EFORMAT, "%s: tensor %s: row %zu: a block scale is "
                                 "not finite", rk__model_file(m), t->name, i / nb);
    *w = (struct rk_weight){RK_DTYPE_Q8, t->data, (int)rows, (int)cols, false, NULL, sc};
    m->weight_bytes += rows * cols + rows * nb * sizeof(uint16_t);
    return RK_OK;
}

/* Large matrices: point into the map when the dtype is the wanted one and the
 * address is aligned for the element size; otherwise copy or convert. */
static int place_big(struct rk_model *m, const struct slot *s, void *field,
                     const struct rk__tensor *t, struct rk_errbuf *eb)
{
    size_t rows = (size_t)dim_value(m, s->rows), cols = (size_t)dim_value(m, s->cols);
    if (m->wtype == RK_DTYPE_Q8 && field == (void *)&m->emb && t->dtype == RK_DTYPE_Q8 &&
        cols % RK_Q8_BLOCK == 0 && map_of(m, t->data) && map_of(m, t->scale))
        return place_q8_table(m, field, rows, cols, t, eb);
    if (m->wtype == RK_DTYPE_Q8)
        return place_q8(m, field, rows, cols, t, eb);
    if (t->dtype == RK_DTYPE_Q8) { /* dequantized into the wanted precision */
        size_t es = rk__dtype_size(m->wtype);
        char *dst = rk__model_alloc(m, rows * cols * es);
        float *row = rk__malloc(cols * sizeof(float));
        uint8_t *q = rk__malloc(cols + cols / RK_Q8_BLOCK * sizeof(uint16_t));
        if (!dst || !row || !q) {
            rk__free(row);
            rk__free(q);
            return rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory", rk__model_file(m));
        }
        uint16_t *sc = (uint16_t *)(void *)(q + cols);
        struct rk_weight one = {RK_DTYPE_Q8, q, 1, (int)cols, false, sc, NULL};
        int rc = RK_OK;
        for (size_t r = 0; r < rows && !rc; r++) {
            rc = rk__q8_from_i8(q, sc, (const char *)t->data + r * cols,
                                (const char *)t->scale + r * (cols / RK_Q8_BLOCK) * 2, cols);
            rk__q8_dequant(row, &one, 0, 0, (int)cols);
            convert(dst + r * cols * es, m->wtype, row, RK_DTYPE_F32, cols);
        }
        rk__free(row);
        rk__free(q);
        if (rc)
            return rk_errbuf_set(eb, RK_EFORMAT, "%s: tensor %s: a block scale is not finite",
                                 rk__model_file(m), t->name);
        struct rk_weight *w = field;
        *w = (struct rk_weight){m->wtype, dst, (int)rows, (int)cols, false, NULL, NULL};
        m->weight_bytes += rows * cols * es;
        return RK_OK;
    }
    size_t n = rows * cols, es = rk__dtype_size(m->wtype);
    const void *data = t->data;
    if (t->dtype != m->wtype || ((uintptr_t)data % es) != 0) {
        void *dst = rk__model_alloc(m, n * es);
        if (!dst)
            return rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory", rk__model_file(m));
        convert(dst, m->wtype, t->data, t->dtype, n);
        data = dst;
    }
    struct rk_weight *w = field;
    *w = (struct rk_weight){m->wtype, data, (int)rows, (int)cols, false, NULL, NULL};
    m->weight_bytes += n * es;
    return RK_OK;
}

int rk__model_build(struct rk_model *m, const struct rk__tensor_list *l,
                    const struct rk_model_params *p, struct rk_errbuf *eb)
{
    const char *file = rk__model_file(m);
    const struct rk__tensor **idx = NULL, **mix = NULL;
    int rc = RK_OK, L = 0, layer, slot;
    char name[96];

    /* pass 1: the number of layers */
    for (size_t i = 0; i < l->n; i++) {
        const struct rk__tensor *t = &l->v[i];
        if (!t->key[0])
            continue;
        int r = parse_key(t->key, &layer, &slot);
        if (r < 0)
            return rk_errbuf_set(eb, RK_EFORMAT, "%s: tensor %s: layer number out of range "
                                 "(at most %d layers)", file, t->name, RK_LOAD_MAX_LAYERS);
        if (r > 0 && layer + 1 > L)
            L = layer + 1;
    }
    if (L == 0)
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: no RWKV-7 layer tensors (blocks.N.*) found",
                             file);
    m->L = L;
    size_t n_idx = NG + (size_t)L * NL;
    idx = rk__calloc(n_idx, sizeof *idx);
    mix = rk__calloc((size_t)L, sizeof *mix);
    if (!idx || !mix) {
        rc = rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory", file);
        goto out;
    }

    /* pass 2: index by slot, rejecting duplicates */
    for (size_t i = 0; i < l->n; i++) {
        const struct rk__tensor *t = &l->v[i];
        if (!t->key[0] || parse_key(t->key, &layer, &slot) <= 0) {
            if (t->name[0])
                rk_log(RK_LOG_DEBUG, "%s: ignoring tensor %s", file, t->name);
            continue;
        }
        const struct rk__tensor **dst, *other = NULL;
        if (slot == SLOT_MIX6) {
            dst = &mix[layer];
            for (int k = 0; k < 6 && !other; k++)
                other = idx[canon_index(L, layer, SLOT_X_R + k)];
        } else {
            dst = &idx[canon_index(L, layer, slot)];
            if (layer >= 0 && slot >= SLOT_X_R && slot < SLOT_X_R + 6)
                other = mix[layer];
        }
        if (!other)
            other = *dst;
        if (other) {
            rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: tensor %s: duplicates tensor %s", file,
                               t->name, other->name);
            goto out;
        }
        *dst = t;
    }

    /* every tensor present (layer 0's v0/v1/v2 are ignored: never used) */
    for (size_t i = 0; i < n_idx; i++) {
        const struct slot *s = canon_slot(L, i, &layer);
        if (layer == 0 && s->opt0) {
            idx[i] = NULL;
            continue;
        }
        if (!idx[i] && !(layer >= 0 && mix[layer] && is_mix_slot(s))) {
            canon_name(name, sizeof name, layer, s);
            rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: missing tensor %s", file, name);
            goto out;
        }
    }

    /* dimensions, from emb.weight, layer 0 (and layer 1 for Dv) */
    const struct rk__tensor *t = idx[G_EMB];
    if (t->ndim != 2 || t->shape[0] < 1 || t->shape[0] > MAX_VOCAB || t->shape[1] < 1 ||
        t->shape[1] > MAX_EMBD || t->shape[1] % RK_HEAD_SIZE) {
        char g[96];
        fmt_shape(g, sizeof g, t->shape, t->ndim);
        rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: tensor %s: shape %s is not [vocab, embd] with "
                           "1 <= vocab <= %d and embd a multiple of %d up to %d", file, t->name,
                           g, MAX_VOCAB, RK_HEAD_SIZE, MAX_EMBD);
        goto out;
    }
    m->V = (int)t->shape[0];
    m->C = (int)t->shape[1];
    m->N = RK_HEAD_SIZE;
    m->H = m->C / m->N;
    t = idx[canon_index(L, 0, slot_of("ffn.key.weight"))]; /* [F][C] */
    if (t->ndim != 2 || t->shape[0] < 1 || t->shape[0] > MAX_FFN) {
        int64_t want[2] = {4 * (int64_t)m->C, m->C};
        rc = shape_error(eb, file, t, want, 2);
        goto out;
    }
    m->F = (int)t->shape[0];
    if ((rc = rank_of(m, idx[canon_index(L, 0, slot_of("att.w1"))], &m->Dw, eb)) ||
        (rc = rank_of(m, idx[canon_index(L, 0, slot_of("att.a1"))], &m->Da, eb)) ||
        (rc = rank_of(m, idx[canon_index(L, 0, slot_of("att.g1"))], &m->Dg, eb)))
        goto out;
    m->Dv = 0;
    if (L > 1 && (rc = rank_of(m, idx[canon_index(L, 1, slot_of("att.v1"))], &m->Dv, eb)))
        goto out;

    /* every shape, and the precision of the large matrices */
    enum rk_dtype wt = p ? p->wtype : RK_DTYPE_AUTO;
    bool mixed_big = false;
    for (size_t i = 0; i < n_idx; i++) {
        const struct slot *s = canon_slot(L, i, &layer);
        if (!idx[i])
            continue;
        if ((rc = check_shape(m, s, idx[i], eb)))
            goto out;
        if (s->kind == TK_BIG && idx[i]->dtype != idx[G_EMB]->dtype)
            mixed_big = true;
    }
    for (int i = 0; i < L; i++) {
        t = mix[i];
        if (t && !(t->ndim >= 2 && t->shape[0] == 6 && t->shape[t->ndim - 1] == m->C &&
                   shape_numel(t->shape, t->ndim) == 6 * (int64_t)m->C)) {
            int64_t want[3] = {6, 1, m->C};
            rc = shape_error(eb, file, t, want, 3);
            goto out;
        }
    }
    if (wt == RK_DTYPE_AUTO)
        wt = mixed_big ? RK_DTYPE_F32 : idx[G_EMB]->dtype;
    m->wtype = wt;

    /* place everything */
    m->layers = rk__calloc((size_t)L, sizeof *m->layers);
    if (!m->layers) {
        rc = rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory", file);
        goto out;
    }
    for (size_t i = 0; i < n_idx; i++) {
        const struct slot *s = canon_slot(L, i, &layer);
        void *field = slot_field(m, layer, s);
        t = idx[i];
        const void *src = t ? t->data : NULL;
        if (!t && layer >= 0 && mix[layer] && is_mix_slot(s)) {
            t = mix[layer];
            size_t k = (size_t)(s - &layer_slots[SLOT_X_R]);
            src = (const char *)t->data + k * (size_t)m->C * rk__dtype_size(t->dtype);
        }
        if (!t)
            continue;
        if (t->dtype == RK_DTYPE_Q8 && s->kind != TK_BIG) {
            rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: tensor %s: 8-bit (I8) is only for the large "
                               "matrices", file, t->name);
            goto out;
        }
        if (s->kind == TK_BIG) {
            rc = place_big(m, s, field, t, eb);
        } else {
            rc = place_small(m, s, field, src, t->dtype, t, eb);
            drop_mapped(m, t->data, t->nbytes); /* always copied: one copy resident */
        }
        if (rc)
            goto out;
    }

out:
    rk__free(idx);
    rk__free(mix);
    return rc;
}

/* --- validation and fingerprint ------------------------------------------------- */

size_t rk__model_n_tensors(const struct rk_model *m) { return NG + (size_t)m->L * NL; }

void rk__model_tensor(const struct rk_model *m, size_t i, struct rk__tensor_view *out)
{
    int layer;
    const struct slot *s = canon_slot(m->L, i, &layer);
    const void *field = slot_field((struct rk_model *)m, layer, s);
    canon_name(out->name, sizeof out->name, layer, s);
    out->panel = false;
    out->scale = NULL;
    out->i8_scales = NULL;
    switch (s->kind) {
    case TK_VEC:
    case TK_VEC3:
    case TK_RK:
        out->dtype = RK_DTYPE_F32;
        out->data = *(float *const *)field;
        out->rows = s->kind == TK_RK ? m->H : 1;
        out->cols = s->kind == TK_RK ? m->N : m->C;
        break;
    default: {
        const struct rk_weight *w = field;
        out->dtype = w->dtype;
        out->data = w->data;
        out->rows = w->rows;
        out->cols = w->cols;
        out->panel = w->panel;
        out->scale = w->scale;
        out->i8_scales = w->i8_scales;
        break;
    }
    }
}

static uint64_t fnv1a(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

static uint64_t fnv1a_u32(uint64_t h, uint32_t v)
{
    unsigned char b[4] = {(unsigned char)v, (unsigned char)(v >> 8), (unsigned char)(v >> 16),
                          (unsigned char)(v >> 24)};
    return fnv1a(h, b, 4);
}

/* FNV-1a 64 over L, C, H, V, then for every held tensor in canonical order its
 * held shape (rows, cols) and its first min(rows*cols, 1024) elements as
 * fp32 bits, all as little-endian u32. */
static uint64_t fingerprint(const struct rk_model *m)
{
    uint64_t h = 0xcbf29ce484222325ull;
    h = fnv1a_u32(h, (uint32_t)m->L);
    h = fnv1a_u32(h, (uint32_t)m->C);
    h = fnv1a_u32(h, (uint32_t)m->H);
    h = fnv1a_u32(h, (uint32_t)m->V);
    size_t nt = rk__model_n_tensors(m);
    for (size_t i = 0; i < nt; i++) {
        struct rk__tensor_view v;
        rk__model_tensor(m, i, &v);
        if (!v.data)
            continue;
        h = fnv1a_u32(h, (uint32_t)v.rows);
        h = fnv1a_u32(h, (uint32_t)v.cols);
        size_t n = (size_t)v.rows * (size_t)v.cols;
        if (n > 1024)
            n = 1024;
        struct rk_weight q8 = rk__view_weight(&v);
        for (size_t k = 0; k < n; k++) {
            float f = v.dtype == RK_DTYPE_Q8 ? rk__q8_at(&q8, k) : elem_f32(v.data, v.dtype, k);
            uint32_t u;
            memcpy(&u, &f, 4);
            h = fnv1a_u32(h, u);
        }
    }
    return h;
}

int rk__model_finish(struct rk_model *m, struct rk_errbuf *eb)
{
    const char *file = rk__model_file(m);
    if (m->L < 1 || m->L > RK_LOAD_MAX_LAYERS || m->N != RK_HEAD_SIZE || m->H < 1 ||
        m->C != m->H * m->N || m->C > MAX_EMBD || m->V < 1 || m->V > MAX_VOCAB || m->F < 1 ||
        m->F > MAX_FFN || m->Dw < 1 || m->Da < 1 || m->Dg < 1 || m->Dv < 0 ||
        (m->L > 1 && m->Dv < 1) || !m->layers)
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: inconsistent model dimensions (L %d, C %d, "
                             "H %d, N %d, V %d, F %d, ranks %d/%d/%d/%d)", file, m->L, m->C, m->H,
                             m->N, m->V, m->F, m->Dw, m->Da, m->Dv, m->Dg);
    if (m->wtype != RK_DTYPE_F32 && m->wtype != RK_DTYPE_F16 && m->wtype != RK_DTYPE_BF16 &&
        m->wtype != RK_DTYPE_Q8)
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: unsupported weight precision %d", file,
                             (int)m->wtype);
    size_t nt = rk__model_n_tensors(m);
    for (size_t i = 0; i < nt; i++) {
        int layer;
        const struct slot *s = canon_slot(m->L, i, &layer);
        struct rk__tensor_view v;
        rk__model_tensor(m, i, &v);
        if (!v.data) {
            if (layer == 0 && s->opt0)
                continue;
            return rk_errbuf_set(eb, RK_EFORMAT, "%s: tensor %s is missing", file, v.name);
        }
        int want_r = 1, want_c = m->C;
        enum rk_dtype want_t = RK_DTYPE_F32;
        if (s->kind == TK_RK) {
            want_r = m->H;
            want_c = m->N;
        } else if (s->kind != TK_VEC && s->kind != TK_VEC3) {
            want_r = dim_value(m, s->rows);
            want_c = dim_value(m, s->cols);
            if (s->kind == TK_BIG)
                want_t = m->wtype;
        }
        bool lora16 = (s->kind == TK_LORA1 || s->kind == TK_LORA2) &&
                      (v.dtype == RK_DTYPE_BF16 || v.dtype == RK_DTYPE_F16);
        if (v.rows != want_r || v.cols != want_c || (v.dtype != want_t && !lora16))
            return rk_errbuf_set(eb, RK_EFORMAT, "%s: tensor %s: held as %s [%d, %d], expected "
                                 "%s [%d, %d]", file, v.name, rk_dtype_name(v.dtype), v.rows,
                                 v.cols, rk_dtype_name(want_t), want_r, want_c);
    }
    m->fingerprint = fingerprint(m);
    return RK_OK;
}

/* --- panels ---------------------------------------------------------------------- */

/* Frees a block from the model's owned list (no-op for any other pointer). */
static void release_owned(struct rk_model *m, const void *p)
{
    for (size_t i = 0; i < m->n_owned; i++)
        if (m->owned[i] == p) {
            rk__free_aligned(m->owned[i]);
            m->owned[i] = m->owned[--m->n_owned];
            return;
        }
}

/* The mapping that holds address d, or NULL when d is model-owned. */
static const struct rk__map *map_of(const struct rk_model *m, const char *d)
{
    for (size_t k = 0; k < m->n_maps; k++) {
        const char *lo = m->maps[k].p;
        if (lo && d >= lo && d < lo + m->maps[k].len)
            return &m->maps[k];
    }
    return NULL;
}

static bool panels_disabled(const struct rk_model_params *p)
{
    return (p && p->no_panels) || !rk__cpu()->panels; /* RWKVD_NO_PANELS (cpu.c) */
}

/* Repacks the matrices that the kernels want in panels
 * (rk__weight_wants_panels): the large ones and the fp32 LoRA factors, after
 * the fingerprint was taken on the file's order. The embedding table is
 * looked up by row and stays as it is. A
 * repacked matrix that came from the map gives its pages back (MADV_DONTNEED:
 * it is not read there again, so resident memory holds one copy); a
 * converted copy is freed. */
static int repack_weights(struct rk_model *m, struct rk_errbuf *eb)
{
    size_t nt = rk__model_n_tensors(m), page = (size_t)sysconf(_SC_PAGESIZE);
    for (size_t i = 0; i < nt; i++) {
        int layer;
        const struct slot *s = canon_slot(m->L, i, &layer);
        if (s->kind != TK_BIG && s->kind != TK_LORA1 && s->kind != TK_LORA2)
            continue;
        struct rk_weight *w = slot_field(m, layer, s);
        if (w == &m->emb || !w->data || !rk__weight_wants_panels(w))
            continue;
        size_t bytes = (size_t)w->rows * (size_t)w->cols * rk__dtype_size(w->dtype);
        void *dst = rk__model_alloc(m, bytes);
        if (!dst)
            return rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory", rk__model_file(m));
        const char *d = w->data;
        bool mapped = map_of(m, d) != NULL;
        size_t es = rk__dtype_size(w->dtype), row_bytes = (size_t)w->cols * es;
        uintptr_t dropped = ((uintptr_t)d + page - 1) & ~(uintptr_t)(page - 1);
        /* 64 panels at a time; the source pages already read go at once, so
         * the two copies of a matrix never stand in memory together */
        for (int r0 = 0; r0 < w->rows; r0 += 16 * 64) {
            int n = w->rows - r0 < 16 * 64 ? w->rows - r0 : 16 * 64;
            struct rk_weight part = *w;
            part.data = d + (size_t)r0 * row_bytes;
            part.rows = n;
            rk__weight_pack((char *)dst + (size_t)r0 * row_bytes, &part);
            uintptr_t done = ((uintptr_t)d + (size_t)(r0 + n) * row_bytes) & ~(uintptr_t)(page - 1);
            if (mapped && done > dropped) {
                madvise((void *)dropped, done - dropped, MADV_DONTNEED);
                dropped = done;
            }
        }
        if (!mapped)
            release_owned(m, d);
        w->data = dst;
        w->panel = true;
    }
    return RK_OK;
}

/* --- load and free -------------------------------------------------------------- */

static enum rk_format detect_format(const unsigned char *b, size_t n)
{
    uint32_t magic = 0;
    if (n >= 4)
        memcpy(&magic, b, 4);
    if (n >= 4 && !memcmp(b, "PK\x03\x04", 4))
        return RK_FORMAT_PTH;
    if (n >= 4 && magic == 0x67676d66u)
        return RK_FORMAT_RWKVCPP;
    if (n >= 4 && !memcmp(b, "GGUF", 4))
        return RK_FORMAT_GGUF;
    if (n >= 9 && b[8] == '{')
        return RK_FORMAT_SAFETENSORS;
    return RK_FORMAT_UNKNOWN;
}

/* True when some held tensor still points into the mapping `mp`. */
static bool uses_map(const struct rk_model *m, const struct rk__map *mp)
{
    const char *lo = mp->p, *hi = lo + mp->len;
    size_t nt = rk__model_n_tensors(m);
    for (size_t i = 0; i < nt; i++) {
        struct rk__tensor_view v;
        rk__model_tensor(m, i, &v);
        const char *d = v.data;
        if (d && d >= lo && d < hi)
            return true;
    }
    return false;
}

/* Unmap every file nothing points into any more (everything converted or
 * repacked, or a shard of only unused tensors). */
static void release_unused_maps(struct rk_model *m)
{
    for (size_t k = 0; k < m->n_maps; k++) {
        struct rk__map *mp = &m->maps[k];
        if (mp->p && !uses_map(m, mp)) {
            munmap(mp->p, mp->len);
            if (m->map == mp->p) {
                m->map = NULL;
                m->map_len = 0;
            }
            mp->p = NULL;
            mp->len = 0;
        }
    }
}

int rk__model_map_file(struct rk_model *m, const char *path, const char *name,
                       const void **buf, size_t *len, struct rk_errbuf *eb)
{
    void *mv = rk__realloc(m->maps, (m->n_maps + 1) * sizeof *m->maps);
    if (!mv)
        return rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory", name);
    m->maps = mv;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return rk_errbuf_set(eb, RK_EIO, "%s: %s", name, strerror(errno));
    struct stat st;
    int rc = RK_OK;
    if (fstat(fd, &st) != 0)
        rc = rk_errbuf_set(eb, RK_EIO, "%s: %s", name, strerror(errno));
    else if (!S_ISREG(st.st_mode))
        rc = rk_errbuf_set(eb, RK_EIO, "%s: not a regular file", name);
    else if (st.st_size <= 0)
        rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: empty file", name);
    else if ((uint64_t)st.st_size > SIZE_MAX)
        rc = rk_errbuf_set(eb, RK_EIO, "%s: file too large to map", name);
    void *map = MAP_FAILED;
    if (rc == RK_OK) {
        map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (map == MAP_FAILED)
            rc = rk_errbuf_set(eb, RK_EIO, "%s: mmap: %s", name, strerror(errno));
    }
    close(fd);
    if (rc != RK_OK)
        return rc;
    m->maps[m->n_maps].p = map;
    m->maps[m->n_maps].len = (size_t)st.st_size;
    m->n_maps++;
    *buf = map;
    *len = (size_t)st.st_size;
    return RK_OK;
}

int rk_model_load(const char *path, const struct rk_model_params *p, struct rk_model **out,
                  struct rk_errbuf *eb)
{
    if (out)
        *out = NULL;
    if (!path || !out)
        return rk_errbuf_set(eb, RK_EINVAL, "rk_model_load: NULL argument");
    if (p && (p->wtype < RK_DTYPE_AUTO || p->wtype > RK_DTYPE_Q8))
        return rk_errbuf_set(eb, RK_EINVAL, "%s: invalid weight precision %d", path,
                             (int)p->wtype);
    int rc = RK_OK;
    struct rk_model *m = rk__calloc(1, sizeof *m);
    size_t plen = strlen(path);
    if (!m || !(m->path = rk__malloc(plen + 1))) {
        rk__free(m);
        return rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory", path);
    }
    memcpy(m->path, path, plen + 1);

    // A directory or a comma-separated list of files (a path that exists
    // as given is never split) is a model of several files.
    struct stat st;
    bool exists = stat(path, &st) == 0;
    if ((exists && S_ISDIR(st.st_mode)) || (!exists && strchr(path, ','))) {
        rc = rk__load_multi(m, p, exists, eb);
        if (rc)
            goto fail;
        goto loaded;
    }
    const void *buf;
    size_t len;
    if ((rc = rk__model_map_file(m, path, path, &buf, &len, eb)))
        goto fail;
    m->map = (void *)buf;
    m->map_len = len;

    m->format = detect_format(m->map, m->map_len);
    switch (m->format) {
    case RK_FORMAT_SAFETENSORS: rc = rk__load_safetensors(m, p, eb); break;
    case RK_FORMAT_PTH: rc = rk__load_pth(m, p, eb); break;
    case RK_FORMAT_RWKVCPP: rc = rk__load_rwkvcpp(m, p, eb); break;
    case RK_FORMAT_GGUF: rc = rk__load_gguf(m, p, eb); break;
    default:
        rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: unrecognised file format (expected safetensors, "
                           "a torch .pth zip, an rwkv.cpp .bin or GGUF)", rk__model_file(m));
        break;
    }
    if (rc)
        goto fail;
loaded:
    if ((rc = rk__model_finish(m, eb)))
        goto fail;
    if (!panels_disabled(p) && (rc = repack_weights(m, eb)))
        goto fail;
    release_unused_maps(m); /* everything of a file copied: let it go */
    rk_log(RK_LOG_INFO, "%s: %s, L %d, C %d, H %d, V %d, F %d, weights %s, %zu bytes",
           rk__model_file(m), rk_format_name(m->format), m->L, m->C, m->H, m->V, m->F,
           rk_dtype_name(m->wtype), m->weight_bytes);
    *out = m;
    return RK_OK;

fail:
    if (eb && rc != RK_OK && !eb->msg[0])
        rk_errbuf_set(eb, rc, "%s: %s", path, rk_strerror(rc));
    rk_model_free(m);
    return rc;
}

void rk_model_free(struct rk_model *m)
{
    if (!m)
        return;
    for (size_t k = 0; k < m->n_maps; k++)
        if (m->maps[k].p)
            munmap(m->maps[k].p, m->maps[k].len);
    rk__free(m->maps);
    rk__free(m->vocab_file);
    for (size_t i = 0; i < m->n_owned; i++)
        rk__free_aligned(m->owned[i]);
    rk__free(m->owned);
    rk__free(m->layers);
    rk__free(m->path);
    rk__free(m);
}

/* --- getters ---------------------------------------------------------------------- */

int rk_model_n_layer(const struct rk_model *m) { return m ? m->L : 0; }
int rk_model_n_embd(const struct rk_model *m) { return m ? m->C : 0; }
int rk_model_n_head(const struct rk_model *m) { return m ? m->H : 0; }
int rk_model_head_size(const struct rk_model *m) { return m ? m->N : 0; }
int rk_model_n_vocab(const struct rk_model *m) { return m ? m->V : 0; }
enum rk_format rk_model_format(const struct rk_model *m)
{
    return m ? m->format : RK_FORMAT_UNKNOWN;
}
enum rk_dtype rk_model_wtype(const struct rk_model *m) { return m ? m->wtype : RK_DTYPE_AUTO; }
size_t rk_model_weight_bytes(const struct rk_model *m) { return m ? m->weight_bytes : 0; }
uint64_t rk_model_fingerprint(const struct rk_model *m) { return m ? m->fingerprint : 0; }
const char *rk_model_vocab_file(const struct rk_model *m) { return m ? m->vocab_file : NULL; }
const char *rk_model_path(const struct rk_model *m) { return m ? m->path : NULL; }

void rk_state_layout(const struct rk_model *m, struct rk_state_layout *out)
{
    size_t C = (size_t)m->C, wkv = (size_t)m->H * (size_t)m->N * (size_t)m->N;
    out->att_shift = 0;
    out->wkv = C;
    out->ffn_shift = C + wkv;
    out->layer_stride = 2 * C + wkv;
    out->wkv_len = wkv;
    out->shift_len = C;
}

size_t rk_state_len(const struct rk_model *m)
{
    struct rk_state_layout l;
    rk_state_layout(m, &l);
    return (size_t)m->L * l.layer_stride;
}

/* --- safetensors writer ------------------------------------------------------------ */

static const char *st_dtype_name(enum rk_dtype t)
{
    return t == RK_DTYPE_F32 ? "F32" : t == RK_DTYPE_F16 ? "F16" : t == RK_DTYPE_Q8 ? "I8" : "BF16";
}

/* One row of held tensor v as 8-bit: int8 values into q8[cols] and the
 * fp16 scales into sc[cols / 32], both as the file holds them. */
static int q8_file_row(const struct rk__tensor_view *v, int r, float *row, uint8_t *q8,
                       uint16_t *sc)
{
    size_t cols = (size_t)v->cols;
    int rc = RK_OK;
    if (v->dtype == RK_DTYPE_Q8) {
        struct rk_weight w = rk__view_weight(v);
        rk__q8_row_raw(&w, r, q8, sc);
    } else {
        struct rk_weight w = {v->dtype, v->data, v->rows, v->cols, v->panel, NULL, NULL};
        rk__weight_row(&w, r, row);
        rc = rk__q8_quantize_row(q8, sc, row, cols);
    }
    for (size_t k = 0; k < cols; k++)
        q8[k] ^= 0x80u; /* held + 128, written as int8 */
    return rc;
}

/* Official shape of held tensor i, and the dtype it is written in. */
static int official_shape(const struct rk_model *m, size_t i, const struct rk__tensor_view *v,
                          enum rk_dtype big, int64_t *shape, enum rk_dtype *dt)
{
    int layer;
    const struct slot *s = canon_slot(m->L, i, &layer);
    *dt = RK_DTYPE_F32;
    switch (s->kind) {
    case TK_VEC: shape[0] = m->C; return 1;
    case TK_VEC3: shape[0] = shape[1] = 1; shape[2] = m->C; return 3;
    case TK_RK: shape[0] = m->H; shape[1] = m->N; return 2;
    case TK_BIG: *dt = big; shape[0] = v->rows; shape[1] = v->cols; return 2;
    default: /* LoRA: back to [in][out]; q8 files keep 16-bit ones 16-bit */
        if (big == RK_DTYPE_Q8 && (v->dtype == RK_DTYPE_BF16 || v->dtype == RK_DTYPE_F16))
            *dt = v->dtype;
        shape[0] = v->cols;
        shape[1] = v->rows;
        return 2;
    }
}

int rk_model_save_safetensors(const struct rk_model *m, const char *path, enum rk_dtype wtype,
                              struct rk_errbuf *eb)
{
    if (!m || !path)
        return rk_errbuf_set(eb, RK_EINVAL, "rk_model_save_safetensors: NULL argument");
    if (wtype < RK_DTYPE_AUTO || wtype > RK_DTYPE_Q8)
        return rk_errbuf_set(eb, RK_EINVAL, "%s: invalid precision %d", path, (int)wtype);
    enum rk_dtype big = wtype == RK_DTYPE_AUTO ? m->wtype : wtype;
    size_t nt = rk__model_n_tensors(m), off = 0;
    struct rk_buf hb = {0};
    struct rk_file_tmp tf = {.fd = -1};
    float *stage = NULL;
    int rc = RK_OK;

    /* header: tensors in canonical order, data back to back */
    if (big == RK_DTYPE_Q8) /* every large matrix is split into blocks of 32 columns */
        for (size_t i = 0; i < nt; i++) {
            int layer;
            struct rk__tensor_view v;
            rk__model_tensor(m, i, &v);
            if (canon_slot(m->L, i, &layer)->kind == TK_BIG && v.cols % RK_Q8_BLOCK)
                return rk_errbuf_set(eb, RK_EINVAL, "%s: tensor %s: input dimension %d is not "
                                     "a multiple of %d, which 8-bit weights need", path, v.name,
                                     v.cols, RK_Q8_BLOCK);
        }
    rk_buf_printf(&hb, "{\"__metadata__\":{\"format\":\"pt\"%s}",
                  big == RK_DTYPE_Q8 ? ",\"rwkvd.wtype\":\"q8\",\"rwkvd.q8_block\":\"32\"" : "");
    for (size_t i = 0; i < nt; i++) {
        struct rk__tensor_view v;
        rk__model_tensor(m, i, &v);
        if (!v.data)
            continue;
        int64_t shape[3];
        enum rk_dtype dt;
        int nd = official_shape(m, i, &v, big, shape, &dt);
        size_t nb = (size_t)v.rows * (size_t)v.cols * (dt == RK_DTYPE_Q8 ? 1 : rk__dtype_size(dt));
        rk_buf_printf(&hb, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", v.name, st_dtype_name(dt));
        for (int k = 0; k < nd; k++)
            rk_buf_printf(&hb, "%s%lld", k ? "," : "", (long long)shape[k]);
        rk_buf_printf(&hb, "],\"data_offsets\":[%zu,%zu]}", off, off + nb);
        off += nb;
        if (dt == RK_DTYPE_Q8) { /* the scales follow their matrix */
            size_t sb = (size_t)v.rows * (size_t)(v.cols / RK_Q8_BLOCK) * sizeof(uint16_t);
            rk_buf_printf(&hb, ",\"%s_scale\":{\"dtype\":\"F16\",\"shape\":[%d,%d],"
                          "\"data_offsets\":[%zu,%zu]}", v.name, v.rows, v.cols / RK_Q8_BLOCK,
                          off, off + sb);
            off += sb;
        }
    }
    rk_buf_printf(&hb, "}");
    while (!hb.oom && (8 + hb.len) % 64) /* the data section starts 64-byte aligned */
        rk_buf_printf(&hb, " ");
    stage = rk__malloc(1 << 20);
    if (hb.oom || !stage) {
        rc = rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory", path);
        goto out;
    }

    /* write a temporary file next to the target */
    if ((rc = rk_file_tmp_open(&tf, path, eb)))
        goto out;
    uint64_t hlen = hb.len;
    unsigned char lenb[8];
    for (int k = 0; k < 8; k++)
        lenb[k] = (unsigned char)(hlen >> (8 * k));
    if ((rc = rk_file_tmp_write(&tf, lenb, 8, eb)) ||
        (rc = rk_file_tmp_write(&tf, hb.p, hb.len, eb)))
        goto out;
    size_t cap = (1 << 20) / sizeof(float);
    for (size_t i = 0; i < nt; i++) {
        struct rk__tensor_view v;
        rk__model_tensor(m, i, &v);
        if (!v.data)
            continue;
        int64_t shape[3];
        enum rk_dtype dt;
        int layer;
        official_shape(m, i, &v, big, shape, &dt);
        const struct slot *s = canon_slot(m->L, i, &layer);
        size_t n = (size_t)v.rows * (size_t)v.cols;
        if (dt == RK_DTYPE_Q8) { /* the values, then the scales: two passes over the rows */
            size_t c = (size_t)v.cols, nbk = c / RK_Q8_BLOCK;
            float *row = rk__malloc(c * sizeof(float) + c + nbk * sizeof(uint16_t));
            if (!row) {
                rc = rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory", path);
                goto out;
            }
            uint8_t *q8 = (uint8_t *)(row + c);
            uint16_t *sc = (uint16_t *)(void *)(q8 + c);
            for (int pass = 0; pass < 2 && !rc; pass++)
                for (int r = 0; r < v.rows && !rc; r++) {
                    if ((rc = q8_file_row(&v, r, row, q8, sc))) {
                        rc = rk_errbuf_set(eb, RK_ENUMERIC, "%s: tensor %s: row %d: a value is "
                                           "not finite or too large for an 8-bit block scale",
                                           path, v.name, r);
                        break;
                    }
                    rc = pass == 0 ? rk_file_tmp_write(&tf, q8, c, eb)
                                   : rk_file_tmp_write(&tf, sc, nbk * sizeof(uint16_t), eb);
                }
            rk__free(row);
            if (rc)
                goto out;
        } else if (s->kind == TK_LORA1 || s->kind == TK_LORA2) {
            /* official[a][b] = held[b][a], a = held cols */
            struct rk_weight hw = {v.dtype, v.data, v.rows, v.cols, v.panel, NULL, NULL};
            size_t a = (size_t)v.cols, b = (size_t)v.rows, k = 0;
            for (size_t r = 0; r < a; r++)
                for (size_t c = 0; c < b; c++) {
                    stage[k++] = elem_f32(v.data, v.dtype, rk__weight_index(&hw, c, r));
                    if (k == cap || (r == a - 1 && c == b - 1)) {
                        if (dt != RK_DTYPE_F32) /* in place: element i moves down to 2i */
                            convert(stage, dt, stage, RK_DTYPE_F32, k);
                        if ((rc = rk_file_tmp_write(&tf, stage, k * rk__dtype_size(dt), eb)))
                            goto out;
                        k = 0;
                    }
                }
        } else if (v.panel || v.dtype == RK_DTYPE_Q8) { /* file order, a row at a time */
            struct rk_weight w = rk__view_weight(&v);
            size_t c = (size_t)v.cols;
            float *row = rk__malloc(c * (sizeof(float) + 4));
            if (!row) {
                rc = rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory", path);
                goto out;
            }
            for (int r = 0; r < v.rows && !rc; r++) {
                rk__weight_row(&w, r, row);
                convert(row + c, dt, row, RK_DTYPE_F32, c);
                rc = rk_file_tmp_write(&tf, row + c, c * rk__dtype_size(dt), eb);
            }
            rk__free(row);
            if (rc)
                goto out;
        } else if (dt == v.dtype) {
            if ((rc = rk_file_tmp_write(&tf, v.data, n * rk__dtype_size(dt), eb)))
                goto out;
        } else {
            size_t es = rk__dtype_size(v.dtype);
            for (size_t k = 0; k < n; k += cap) {
                size_t c = n - k < cap ? n - k : cap;
                convert(stage, dt, (const char *)v.data + k * es, v.dtype, c);
                if ((rc = rk_file_tmp_write(&tf, stage, c * rk__dtype_size(dt), eb)))
                    goto out;
            }
        }
    }
    /* fsync, rename over the target, fsync the directory */
    rc = rk_file_tmp_commit(&tf, eb);
out:
    rk_file_tmp_abort(&tf); /* nothing left to do after a commit */
    rk__free(stage);
    rk_buf_free(&hb);
    return rc;
}

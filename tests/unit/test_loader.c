/*
 * test_loader.c - the model loaders (core/model.c, load_tensorfile.c and the
 * tensor-file reader tensorfile.c, load_rwkvcpp.c).
 *
 * Suite loader_fixtures (needs ../shared): the tiny rwkv.cpp model in its
 * three fixture files loads with the same shapes, tensors, fingerprint;
 * safetensors round trips in f32/f16/bf16; truncated and bit-flipped copies
 * fail cleanly.
 *
 * Suite loader_data (self-contained, tests/data): the committed .pth (made by
 * tools/make_pth.py from rand-mh-bf16.safetensors) equals its source; files
 * written here with Hugging Face names and in rwkv.cpp layout load to the same
 * tensors; hand-made hostile safetensors, .bin and .pth files are rejected
 * with RK_EFORMAT and a message; allocation failures give RK_ENOMEM.
 */
#include "check_common.h"
#include "core_int.h"
#include "rk_tensorfile.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define FIX_FP32 "fixtures/models/tiny-rwkv7-834K-FP32.bin"
#define FIX_FP16 "fixtures/models/tiny-rwkv7-834K-FP16.bin"
#define FIX_ST "fixtures/models/tiny-rwkv7-834K.safetensors"
#define DATA_ST "rand-mh-bf16.safetensors"
#define DATA_PTH "rand-mh-bf16.pth"

/* fp16 keeps 11 significant bits, bf16 8 */
#define F16_RTOL (1.0 / 2048)
#define BF16_RTOL (1.0 / 256)

/* --- helpers ----------------------------------------------------------------- */

static char *xstrdup(const char *s)
{
    char *d = strdup(s);
    ck_assert_ptr_nonnull(d);
    return d;
}

static const char *tmp_path(const char *name)
{
    static char bufs[4][512];
    static int slot;
    char *b = bufs[slot++ % 4];
    snprintf(b, 512, "%s/%d-%s", rk_test_tmpdir(), (int)getpid(), name);
    return b;
}

static struct rk_model *load_with(const char *path, enum rk_dtype wt, bool no_panels)
{
    struct rk_model_params p = {.wtype = wt, .no_panels = no_panels};
    struct rk_errbuf eb = {0};
    struct rk_model *m = NULL;
    int rc = rk_model_load(path, &p, &m, &eb);
    ck_assert_msg(rc == RK_OK, "load %s: %s (%s)", path, rk_strerror(rc), eb.msg);
    ck_assert_ptr_nonnull(m);
    return m;
}

static struct rk_model *load_ok(const char *path, enum rk_dtype wt)
{
    return load_with(path, wt, false);
}

/* A load that must fail with RK_EFORMAT or RK_EIO (want 0) or exactly `want`,
 * leave *out NULL and explain itself. Returns the message (static). */
static const char *load_fail(const char *path, int want)
{
    static struct rk_errbuf eb;
    memset(&eb, 0, sizeof eb);
    struct rk_model *m = (struct rk_model *)&eb; /* must be reset to NULL */
    int rc = rk_model_load(path, NULL, &m, &eb);
    if (rc == RK_OK)
        rk_model_free(m);
    ck_assert_msg(rc != RK_OK, "load %s succeeded, expected an error", path);
    if (want)
        ck_assert_msg(rc == want, "load %s: %s (%s), expected %s", path, rk_errname(rc), eb.msg,
                      rk_errname(want));
    else
        ck_assert_msg(rc == RK_EFORMAT || rc == RK_EIO, "load %s: unexpected %s (%s)", path,
                      rk_errname(rc), eb.msg);
    ck_assert_ptr_null(m);
    ck_assert_msg(eb.msg[0] != '\0', "load %s: empty error message", path);
    ck_assert_int_eq(eb.code, rc);
    return eb.msg;
}

static void expect_msg(const char *msg, const char *sub)
{
    ck_assert_msg(strstr(msg, sub) != NULL, "message \"%s\" lacks \"%s\"", msg, sub);
}

/* A held tensor as row-major fp32 (whatever its order in memory). */
static float *view_f32(const struct rk__tensor_view *v)
{
    size_t n = (size_t)v->rows * (size_t)v->cols;
    float *o = malloc((n ? n : 1) * sizeof *o);
    ck_assert_ptr_nonnull(o);
    if (v->panel) {
        struct rk_weight w = rk__view_weight(v);
        for (int r = 0; r < v->rows; r++)
            rk__weight_row(&w, r, o + (size_t)r * (size_t)v->cols);
        return o;
    }
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        switch (v->dtype) {
        case RK_DTYPE_F32: o[i] = ((const float *)v->data)[i]; break;
        case RK_DTYPE_F16:
            memcpy(&h, (const char *)v->data + 2 * i, 2);
            o[i] = rk__f16_to_f32(h);
            break;
        default:
            memcpy(&h, (const char *)v->data + 2 * i, 2);
            o[i] = rk__bf16_to_f32(h);
            break;
        }
    }
    return o;
}

static bool is_big(const char *name)
{
    static const char *const sfx[] = {"emb.weight", "head.weight", "receptance.weight",
                                      "key.weight", "value.weight", "output.weight"};
    size_t n = strlen(name);
    for (size_t i = 0; i < sizeof sfx / sizeof sfx[0]; i++) {
        size_t k = strlen(sfx[i]);
        if (n >= k && !strcmp(name + n - k, sfx[i]))
            return true;
    }
    return false;
}

/* Every held tensor of `a` equals that of `b` within the tolerances
 * (separate ones for the large matrices and for the rest). */
static void compare_models(const struct rk_model *a, const struct rk_model *b, double big_atol,
                           double big_rtol, double small_atol, double small_rtol)
{
    ck_assert_int_eq(a->L, b->L);
    ck_assert_int_eq(a->C, b->C);
    ck_assert_int_eq(a->H, b->H);
    ck_assert_int_eq(a->N, b->N);
    ck_assert_int_eq(a->V, b->V);
    ck_assert_int_eq(a->F, b->F);
    ck_assert_int_eq(a->Dw, b->Dw);
    ck_assert_int_eq(a->Da, b->Da);
    ck_assert_int_eq(a->Dv, b->Dv);
    ck_assert_int_eq(a->Dg, b->Dg);
    size_t nt = rk__model_n_tensors(a);
    ck_assert_uint_eq(nt, rk__model_n_tensors(b));
    for (size_t i = 0; i < nt; i++) {
        struct rk__tensor_view va, vb;
        rk__model_tensor(a, i, &va);
        rk__model_tensor(b, i, &vb);
        ck_assert_str_eq(va.name, vb.name);
        ck_assert_msg(!va.data == !vb.data, "%s present in one model only", va.name);
        if (!va.data)
            continue;
        ck_assert_msg(va.rows == vb.rows && va.cols == vb.cols, "%s: [%d, %d] vs [%d, %d]",
                      va.name, va.rows, va.cols, vb.rows, vb.cols);
        float *x = view_f32(&va), *y = view_f32(&vb);
        bool big = is_big(va.name);
        rk_check_close(x, y, (size_t)va.rows * (size_t)va.cols, big ? big_atol : small_atol,
                       big ? big_rtol : small_rtol, va.name);
        free(x);
        free(y);
    }
}

static void compare_exact(const struct rk_model *a, const struct rk_model *b)
{
    compare_models(a, b, 0, 0, 0, 0);
}

/* A growable byte buffer for hand-made files. */
struct buf {
    unsigned char *p;
    size_t n, cap;
};

static void put(struct buf *b, const void *d, size_t n)
{
    if (b->n + n > b->cap) {
        size_t c = b->cap ? b->cap : 256;
        while (c < b->n + n)
            c *= 2;
        b->p = realloc(b->p, c);
        ck_assert_ptr_nonnull(b->p);
        b->cap = c;
    }
    if (n)
        memcpy(b->p + b->n, d, n);
    b->n += n;
}
static void put_s(struct buf *b, const char *s) { put(b, s, strlen(s)); }
static void put8(struct buf *b, unsigned v)
{
    unsigned char c = (unsigned char)v;
    put(b, &c, 1);
}
static void put16(struct buf *b, unsigned v)
{
    put8(b, v & 0xff);
    put8(b, (v >> 8) & 0xff);
}
static void put32(struct buf *b, uint32_t v)
{
    put16(b, v & 0xffff);
    put16(b, v >> 16);
}
static void put64(struct buf *b, uint64_t v)
{
    put32(b, (uint32_t)v);
    put32(b, (uint32_t)(v >> 32));
}

static void write_buf(const char *path, const struct buf *b)
{
    ck_assert_int_eq(rk_test_write_file(path, b->p, b->n), 0);
}

/* --- safetensors written by the tests ------------------------------------------ */

struct st_tensor {
    char name[128];
    const char *dtype;
    int nd;
    int64_t shape[4];
    const void *data;
    size_t nbytes;
};

static void write_safetensors(const char *path, const struct st_tensor *t, size_t n)
{
    struct buf h = {0}, f = {0};
    char tmp[512];
    size_t off = 0;
    put_s(&h, "{\"__metadata__\":{\"format\":\"pt\"}");
    for (size_t i = 0; i < n; i++) {
        snprintf(tmp, sizeof tmp, ",\"%s\":{\"dtype\":\"%s\",\"shape\":[", t[i].name,
                 t[i].dtype);
        put_s(&h, tmp);
        for (int k = 0; k < t[i].nd; k++) {
            snprintf(tmp, sizeof tmp, "%s%lld", k ? "," : "", (long long)t[i].shape[k]);
            put_s(&h, tmp);
        }
        snprintf(tmp, sizeof tmp, "],\"data_offsets\":[%zu,%zu]}", off, off + t[i].nbytes);
        put_s(&h, tmp);
        off += t[i].nbytes;
    }
    put_s(&h, "}");
    while ((h.n + 8) % 8)
        put_s(&h, " ");
    put64(&f, h.n);
    put(&f, h.p, h.n);
    for (size_t i = 0; i < n; i++)
        put(&f, t[i].data, t[i].nbytes);
    write_buf(path, &f);
    free(h.p);
    free(f.p);
}

/* A raw safetensors file: a header string and `data_len` zero data bytes. */
static void write_raw_st(const char *path, const char *header, size_t data_len)
{
    struct buf f = {0};
    put64(&f, strlen(header));
    put_s(&f, header);
    for (size_t i = 0; i < data_len; i++)
        put8(&f, 0);
    write_buf(path, &f);
    free(f.p);
}

/* Copy a safetensors file replacing `from` by `to` (once) in its header. */
static void edit_st(const char *src, const char *dst, const char *from, const char *to)
{
    size_t len;
    unsigned char *d = rk_test_read_file(src, &len);
    ck_assert_ptr_nonnull(d);
    uint64_t hl = 0;
    memcpy(&hl, d, 8);
    char *h = malloc(hl + 1);
    memcpy(h, d + 8, hl);
    h[hl] = '\0';
    char *at = strstr(h, from);
    ck_assert_msg(at != NULL, "edit_st: \"%s\" not in the header", from);
    struct buf f = {0}, nh = {0};
    put(&nh, h, (size_t)(at - h));
    put_s(&nh, to);
    put_s(&nh, at + strlen(from));
    put64(&f, nh.n);
    put(&f, nh.p, nh.n);
    put(&f, d + 8 + hl, len - 8 - hl);
    write_buf(dst, &f);
    free(f.p);
    free(nh.p);
    free(h);
    free(d);
}

/* --- fixtures -------------------------------------------------------------------- */

START_TEST(fixtures_load_with_expected_shapes)
{
    static const struct {
        const char *rel;
        enum rk_format fmt;
        enum rk_dtype wt;
    } files[] = {
        {FIX_FP32, RK_FORMAT_RWKVCPP, RK_DTYPE_F32},
        {FIX_FP16, RK_FORMAT_RWKVCPP, RK_DTYPE_F16},
        {FIX_ST, RK_FORMAT_SAFETENSORS, RK_DTYPE_F32},
    };
    for (size_t i = 0; i < 3; i++) {
        const char *path = rk_test_shared(files[i].rel);
        ck_assert_ptr_nonnull(path);
        struct rk_model *m = load_ok(path, RK_DTYPE_AUTO);
        ck_assert_int_eq(rk_model_n_layer(m), 12);
        ck_assert_int_eq(rk_model_n_embd(m), 64);
        ck_assert_int_eq(rk_model_n_head(m), 1);
        ck_assert_int_eq(rk_model_head_size(m), 64);
        ck_assert_int_eq(rk_model_n_vocab(m), 256);
        ck_assert_int_eq(m->F, 256);
        ck_assert_int_eq(m->Dw, 32);
        ck_assert_int_eq(m->Da, 32);
        ck_assert_int_eq(m->Dv, 32);
        ck_assert_int_eq(m->Dg, 32);
        ck_assert_int_eq(rk_model_format(m), files[i].fmt);
        ck_assert_int_eq(rk_model_wtype(m), files[i].wt);
        ck_assert_uint_gt(rk_model_weight_bytes(m), 0);
        /* layer 0 has no value-residual tensors */
        ck_assert_ptr_null(m->layers[0].v0);
        ck_assert_ptr_null(m->layers[0].v1.data);
        ck_assert_ptr_nonnull(m->layers[1].v0);
        struct rk_state_layout l;
        rk_state_layout(m, &l);
        ck_assert_uint_eq(l.layer_stride, 2 * 64 + 64 * 64);
        ck_assert_uint_eq(l.att_shift, 0);
        ck_assert_uint_eq(l.wkv, 64);
        ck_assert_uint_eq(l.ffn_shift, 64 + 64 * 64);
        ck_assert_uint_eq(l.wkv_len, 64 * 64);
        ck_assert_uint_eq(l.shift_len, 64);
        ck_assert_uint_eq(rk_state_len(m), 12 * (2 * 64 + 64 * 64));
        rk_model_free(m);
    }
    rk_model_free(NULL);
}
END_TEST

START_TEST(fp32_bin_equals_safetensors)
{
    struct rk_model *a = load_ok(rk_test_shared(FIX_FP32), RK_DTYPE_AUTO);
    struct rk_model *b = load_ok(rk_test_shared(FIX_ST), RK_DTYPE_AUTO);
    compare_exact(a, b);
    ck_assert(rk_model_fingerprint(a) == rk_model_fingerprint(b));
    ck_assert(rk_model_fingerprint(a) != 0);
    ck_assert_uint_eq(rk_model_weight_bytes(a), rk_model_weight_bytes(b));
    /* the safetensors data section holds exactly these weights */
    size_t len;
    unsigned char *d = rk_test_read_file(rk_test_shared(FIX_ST), &len);
    uint64_t hl;
    memcpy(&hl, d, 8);
    ck_assert_uint_eq(rk_model_weight_bytes(b), len - 8 - hl);
    free(d);
    rk_model_free(a);
    rk_model_free(b);
}
END_TEST

START_TEST(fp16_bin_within_rounding)
{
    struct rk_model *a = load_ok(rk_test_shared(FIX_FP16), RK_DTYPE_AUTO);
    struct rk_model *b = load_ok(rk_test_shared(FIX_ST), RK_DTYPE_AUTO);
    /* large matrices and LoRA factors are fp16 in that file, vectors fp32 */
    compare_models(a, b, 1e-7, F16_RTOL, 1e-7, F16_RTOL);
    ck_assert(rk_model_fingerprint(a) != rk_model_fingerprint(b));
    struct rk__tensor_view v;
    rk__model_tensor(a, 0, &v);
    ck_assert_str_eq(v.name, "emb.weight");
    ck_assert_int_eq(v.dtype, RK_DTYPE_F16);
    rk_model_free(a);
    rk_model_free(b);
}
END_TEST

/* Every held tensor is aligned for its element size; aligned F32 safetensors
 * data is used in place. */
START_TEST(weights_aligned_and_mapped)
{
    const char *rels[] = {FIX_FP32, FIX_FP16, FIX_ST};
    for (int f = 0; f < 3; f++) {
        struct rk_model *m = load_ok(rk_test_shared(rels[f]), RK_DTYPE_AUTO);
        for (size_t i = 0; i < rk__model_n_tensors(m); i++) {
            struct rk__tensor_view v;
            rk__model_tensor(m, i, &v);
            if (v.data)
                ck_assert_msg((uintptr_t)v.data % rk__dtype_size(v.dtype) == 0,
                              "%s: %s misaligned", rels[f], v.name);
        }
        if (f == 2) {
            const char *e = m->emb.data, *lo = m->map;
            ck_assert_ptr_nonnull(lo);
            ck_assert_msg(e >= lo && e < lo + m->map_len, "emb.weight was copied");
        }
        rk_model_free(m);
    }
}
END_TEST

/* Held in panels (the AVX-512 kernels' order) or in the file's row order,
 * a model has the same tensors and fingerprint, saves the same file, and
 * its forward pass agrees with the reference loop. */
START_TEST(panels_hold_the_same_model)
{
    static const enum rk_dtype types[] = {RK_DTYPE_BF16, RK_DTYPE_F16};
    for (int i = 0; i < 2; i++) {
        struct rk_model *a = load_with(rk_test_data(DATA_ST), types[i], false);
        struct rk_model *b = load_with(rk_test_data(DATA_ST), types[i], true);
        ck_assert(!b->head.panel && !b->layers[0].wk.panel);
        ck_assert_msg(a->layers[0].wk.panel == rk__use_avx512() &&
                      a->layers[1].ffn_value.panel == rk__use_avx512(),
                      "16-bit matrices are held in panels iff AVX-512 runs");
        ck_assert(!a->emb.panel); /* looked up by row */
        /* 16-bit LoRA factors of the file stay 16-bit (the file's bf16) */
        ck_assert_int_eq(a->layers[1].w1.dtype, RK_DTYPE_BF16);
        ck_assert_int_eq(b->layers[2].g2.dtype, RK_DTYPE_BF16);
        /* fp32 LoRA factors with whole panels of rows: a1 (Da = 16), w2 (C rows) */
        ck_assert(a->layers[1].a1.panel == rk__use_avx512() && a->layers[1].w2.panel ==
                  rk__use_avx512() && !a->layers[1].w1.panel && !b->layers[1].a1.panel);
        ck_assert(a->V % 16 != 0 && !a->head.panel); /* 300 rows: not whole panels */
        compare_exact(a, b);
        ck_assert(rk_model_fingerprint(a) == rk_model_fingerprint(b));
        /* element (r, k) is where rk__weight_index says */
        const struct rk_weight *w = &a->layers[1].ffn_key;
        float *row = malloc(sizeof(float) * (size_t)w->cols);
        rk__weight_row(&b->layers[1].ffn_key, 37, row);
        for (int k = 0; k < w->cols; k++) {
            uint16_t h = ((const uint16_t *)w->data)[rk__weight_index(w, 37, (size_t)k)];
            float f = types[i] == RK_DTYPE_BF16 ? rk__bf16_to_f32(h) : rk__f16_to_f32(h);
            ck_assert_msg(f == row[k], "ffn_key[37][%d]", k);
        }
        free(row);
        /* both save the same bytes */
        const char *pa = tmp_path("panels-a.safetensors"), *pb = tmp_path("panels-b.safetensors");
        struct rk_errbuf eb = {0};
        ck_assert_int_eq(rk_model_save_safetensors(a, pa, RK_DTYPE_AUTO, &eb), RK_OK);
        ck_assert_int_eq(rk_model_save_safetensors(b, pb, RK_DTYPE_AUTO, &eb), RK_OK);
        size_t la, lb;
        unsigned char *da = rk_test_read_file(pa, &la), *db = rk_test_read_file(pb, &lb);
        ck_assert(da && db && la == lb && memcmp(da, db, la) == 0);
        free(da), free(db);
        /* the saved file has fp32 LoRA factors: held as fp32 then, the same
         * values, the same fingerprint (states made for a model held either
         * way fit the other) */
        struct rk_model *c = load_with(pa, types[i], false);
        ck_assert_int_eq(c->layers[1].w1.dtype, RK_DTYPE_F32);
        ck_assert(rk_model_fingerprint(c) == rk_model_fingerprint(a));
        compare_exact(a, c);
        rk_model_free(c);
        unlink(pa), unlink(pb);
        rk_model_free(a);
        rk_model_free(b);
    }
}
END_TEST

START_TEST(save_roundtrip_f32)
{
    struct rk_model *a = load_ok(rk_test_shared(FIX_FP32), RK_DTYPE_AUTO);
    const char *out = tmp_path("rt-f32.safetensors");
    struct rk_errbuf eb = {0};
    ck_assert_int_eq(rk_model_save_safetensors(a, out, RK_DTYPE_AUTO, &eb), RK_OK);
    struct rk_model *b = load_ok(out, RK_DTYPE_AUTO);
    ck_assert_int_eq(rk_model_format(b), RK_FORMAT_SAFETENSORS);
    ck_assert_int_eq(rk_model_wtype(b), RK_DTYPE_F32);
    compare_exact(a, b);
    ck_assert(rk_model_fingerprint(a) == rk_model_fingerprint(b));
    /* official names and shapes, as in the fixture */
    size_t len;
    unsigned char *d = rk_test_read_file(out, &len);
    uint64_t hl;
    memcpy(&hl, d, 8);
    ck_assert_uint_eq((8 + hl) % 64, 0);
    char *h = strndup((const char *)d + 8, hl);
    expect_msg(h, "\"blocks.3.att.w1\":{\"dtype\":\"F32\",\"shape\":[64,32]");
    expect_msg(h, "\"blocks.3.att.w2\":{\"dtype\":\"F32\",\"shape\":[32,64]");
    expect_msg(h, "\"blocks.3.att.x_r\":{\"dtype\":\"F32\",\"shape\":[1,1,64]");
    expect_msg(h, "\"blocks.3.att.r_k\":{\"dtype\":\"F32\",\"shape\":[1,64]");
    expect_msg(h, "\"blocks.3.ln1.weight\":{\"dtype\":\"F32\",\"shape\":[64]");
    ck_assert_ptr_null(strstr(h, "blocks.0.att.v1"));
    free(h);
    free(d);
    /* the f32 file equals the fixture tensor by tensor */
    struct rk_model *c = load_ok(rk_test_shared(FIX_ST), RK_DTYPE_AUTO);
    compare_exact(b, c);
    rk_model_free(a);
    rk_model_free(b);
    rk_model_free(c);
    unlink(out);
}
END_TEST

START_TEST(save_roundtrip_bf16_f16)
{
    struct rk_model *a = load_ok(rk_test_shared(FIX_ST), RK_DTYPE_AUTO);
    const enum rk_dtype types[] = {RK_DTYPE_BF16, RK_DTYPE_F16};
    for (int i = 0; i < 2; i++) {
        const char *out = tmp_path("rt-half.safetensors");
        struct rk_errbuf eb = {0};
        ck_assert_int_eq(rk_model_save_safetensors(a, out, types[i], &eb), RK_OK);
        struct rk_model *b = load_ok(out, RK_DTYPE_AUTO);
        ck_assert_int_eq(rk_model_wtype(b), types[i]);
        double rt = types[i] == RK_DTYPE_BF16 ? BF16_RTOL : F16_RTOL;
        compare_models(b, a, 1e-7, rt, 0, 0);
        /* saving the half model again (AUTO) keeps it bit for bit */
        const char *out2 = tmp_path("rt-half2.safetensors");
        ck_assert_int_eq(rk_model_save_safetensors(b, out2, RK_DTYPE_AUTO, &eb), RK_OK);
        struct rk_model *c = load_ok(out2, RK_DTYPE_AUTO);
        compare_exact(b, c);
        ck_assert(rk_model_fingerprint(b) == rk_model_fingerprint(c));
        rk_model_free(b);
        rk_model_free(c);
        unlink(out);
        unlink(out2);
    }
    rk_model_free(a);
}
END_TEST

START_TEST(load_time_precision)
{
    struct rk_model *a = load_ok(rk_test_shared(FIX_ST), RK_DTYPE_AUTO);
    struct rk_model *b = load_ok(rk_test_shared(FIX_ST), RK_DTYPE_BF16);
    ck_assert_int_eq(rk_model_wtype(b), RK_DTYPE_BF16);
    compare_models(b, a, 1e-38, BF16_RTOL, 0, 0);
    ck_assert_ptr_null(b->map); /* everything converted: the file was let go */
    rk_model_free(b);
    b = load_ok(rk_test_shared(FIX_FP32), RK_DTYPE_F16);
    ck_assert_int_eq(rk_model_wtype(b), RK_DTYPE_F16);
    compare_models(b, a, 1e-7, F16_RTOL, 0, 0);
    rk_model_free(b);
    struct rk_model *h = load_ok(rk_test_shared(FIX_FP16), RK_DTYPE_AUTO);
    b = load_ok(rk_test_shared(FIX_FP16), RK_DTYPE_F32);
    ck_assert_int_eq(rk_model_wtype(b), RK_DTYPE_F32);
    compare_exact(b, h); /* f16 -> f32 is exact */
    ck_assert(rk_model_fingerprint(b) == rk_model_fingerprint(h));
    rk_model_free(b);
    rk_model_free(h);
    rk_model_free(a);

    struct rk_model_params bad = {.wtype = (enum rk_dtype)9};
    struct rk_model *m = NULL;
    struct rk_errbuf eb = {0};
    ck_assert_int_eq(rk_model_load(rk_test_shared(FIX_ST), &bad, &m, &eb), RK_EINVAL);
    ck_assert_ptr_null(m);
}
END_TEST

/* Truncate a copy of `src` at every 997th byte, the first 64 bytes and the
 * given extra points; each load must fail cleanly. */
static void check_truncations(const char *src, const size_t *extra, size_t n_extra)
{
    size_t len;
    void *d = rk_test_read_file(src, &len);
    ck_assert_ptr_nonnull(d);
    const char *path = tmp_path("trunc.bin");
    ck_assert_int_eq(rk_test_write_file(path, d, len), 0);
    free(d);
    size_t cap = len / 997 + 80 + n_extra, n = 0;
    size_t *pts = malloc(cap * sizeof *pts);
    for (size_t p = len - 1; p > 64 && p < len; p -= 997)
        pts[n++] = p;
    for (size_t p = 0; p <= 64 && p < len; p++)
        pts[n++] = p;
    for (size_t i = 0; i < n_extra; i++)
        if (extra[i] < len)
            pts[n++] = extra[i];
    /* descending, so each truncation keeps the earlier bytes intact */
    for (size_t i = 0; i < n; i++)
        for (size_t j = i + 1; j < n; j++)
            if (pts[j] > pts[i]) {
                size_t t = pts[i];
                pts[i] = pts[j];
                pts[j] = t;
            }
    int fd = open(path, O_RDWR);
    ck_assert_int_ge(fd, 0);
    for (size_t i = 0; i < n; i++) {
        if (i && pts[i] == pts[i - 1])
            continue;
        ck_assert_int_eq(ftruncate(fd, (off_t)pts[i]), 0);
        load_fail(path, 0);
    }
    close(fd);
    free(pts);
    unlink(path);
}

START_TEST(truncated_fixtures_fail)
{
    const char *st = rk_test_shared(FIX_ST);
    size_t len;
    unsigned char *d = rk_test_read_file(st, &len);
    uint64_t hl;
    memcpy(&hl, d, 8);
    free(d);
    size_t ex[40], n = 0;
    for (int k = -16; k <= 16; k += 2)
        ex[n++] = (size_t)(8 + (int64_t)hl + k);
    check_truncations(st, ex, n);
    size_t ex2[] = {24, 25, 36, 40, 44, 48, 60};
    check_truncations(rk_test_shared(FIX_FP16), ex2, sizeof ex2 / sizeof ex2[0]);
    check_truncations(rk_test_shared(FIX_FP32), ex2, sizeof ex2 / sizeof ex2[0]);
}
END_TEST

/* Load a copy with byte `pos` XORed by `mask`: anything but a crash, a leak or
 * a silent failure is wrong. Restores the byte. */
static void flip_and_load(int fd, const char *path, size_t pos, unsigned char mask)
{
    unsigned char c, x;
    ck_assert_int_eq(pread(fd, &c, 1, (off_t)pos), 1);
    x = c ^ mask;
    ck_assert_int_eq(pwrite(fd, &x, 1, (off_t)pos), 1);
    struct rk_errbuf eb = {0};
    struct rk_model *m = NULL;
    int rc = rk_model_load(path, NULL, &m, &eb);
    if (rc == RK_OK) {
        ck_assert_ptr_nonnull(m);
        rk_model_free(m);
    } else {
        ck_assert_msg(rc == RK_EFORMAT || rc == RK_EIO, "flip at %zu: %s (%s)", pos,
                      rk_errname(rc), eb.msg);
        ck_assert_ptr_null(m);
        ck_assert_msg(eb.msg[0], "flip at %zu: empty message", pos);
    }
    ck_assert_int_eq(pwrite(fd, &c, 1, (off_t)pos), 1);
}

static int open_copy(const char *src, const char *name, const char **path, size_t *len)
{
    void *d = rk_test_read_file(src, len);
    ck_assert_ptr_nonnull(d);
    *path = tmp_path(name);
    ck_assert_int_eq(rk_test_write_file(*path, d, *len), 0);
    free(d);
    int fd = open(*path, O_RDWR);
    ck_assert_int_ge(fd, 0);
    return fd;
}

START_TEST(flipped_headers_fail_cleanly)
{
    const char *path;
    size_t len;
    /* safetensors: the length prefix with several masks, the JSON header */
    int fd = open_copy(rk_test_shared(FIX_ST), "flip.safetensors", &path, &len);
    uint64_t hl;
    ck_assert_int_eq(pread(fd, &hl, 8, 0), 8);
    static const unsigned char masks[] = {0x01, 0x10, 0x80, 0xff};
    for (size_t i = 0; i < 8; i++)
        for (size_t k = 0; k < sizeof masks; k++)
            flip_and_load(fd, path, i, masks[k]);
    for (size_t i = 8; i < 8 + hl; i += (i < 600 ? 1 : 7))
        flip_and_load(fd, path, i, (unsigned char)(i & 1 ? 0xff : 0x04));
    close(fd);
    unlink(path);

    /* .bin: the file header and the record headers of the first tensors */
    fd = open_copy(rk_test_shared(FIX_FP16), "flip.bin", &path, &len);
    unsigned char *d = rk_test_read_file(path, &len);
    for (size_t i = 0; i < 24; i++)
        for (size_t k = 0; k < sizeof masks; k++)
            flip_and_load(fd, path, i, masks[k]);
    size_t off = 24;
    for (int t = 0; t < 40 && off + 12 <= len; t++) {
        uint32_t nd, kl, ty;
        memcpy(&nd, d + off, 4);
        memcpy(&kl, d + off + 4, 4);
        memcpy(&ty, d + off + 8, 4);
        size_t hdr = 12 + 4 * (size_t)nd + kl, numel = 1;
        for (uint32_t k = 0; k < nd; k++) {
            uint32_t dim;
            memcpy(&dim, d + off + 12 + 4 * k, 4);
            numel *= dim;
        }
        for (size_t i = 0; i < hdr; i++)
            flip_and_load(fd, path, off + i, (unsigned char)(i & 1 ? 0xff : 0x40));
        off += hdr + numel * (ty ? 2 : 4);
    }
    free(d);
    close(fd);
    unlink(path);
}
END_TEST

/* --- self-contained: tests/data ------------------------------------------------------- */

START_TEST(pth_equals_its_safetensors)
{
    struct rk_model *a = load_ok(rk_test_data(DATA_ST), RK_DTYPE_AUTO);
    struct rk_model *b = load_ok(rk_test_data(DATA_PTH), RK_DTYPE_AUTO);
    ck_assert_int_eq(rk_model_format(b), RK_FORMAT_PTH);
    ck_assert_int_eq(rk_model_wtype(b), RK_DTYPE_BF16);
    ck_assert_int_eq(rk_model_n_head(b), 2);
    compare_exact(a, b);
    ck_assert_msg(rk_model_fingerprint(a) == rk_model_fingerprint(b),
                  "rand-mh-bf16.pth no longer matches rand-mh-bf16.safetensors: regenerate it "
                  "with tools/make_pth.py (see its header)");
    /* storages are 64-byte aligned in the archive: used in place */
    const char *e = b->emb.data, *lo = b->map;
    ck_assert_ptr_nonnull(lo);
    ck_assert(e >= lo && e < lo + b->map_len);
    ck_assert_uint_eq((uintptr_t)e % 64, 0);
    /* layer 0's v0/v1/v2 are in both files and ignored */
    ck_assert_ptr_null(b->layers[0].v0);
    rk_model_free(a);
    rk_model_free(b);
    a = load_ok(rk_test_data(DATA_ST), RK_DTYPE_F32);
    b = load_ok(rk_test_data(DATA_PTH), RK_DTYPE_F32);
    ck_assert_int_eq(rk_model_wtype(b), RK_DTYPE_F32);
    compare_exact(a, b);
    rk_model_free(a);
    rk_model_free(b);
}
END_TEST

/* The fla / Hugging Face name of an official tensor name, and whether the
 * tensor is stored transposed there (LoRA factors). Written independently of
 * core/model.c's table. */
static void hf_name(const char *off, char *out, size_t cap)
{
    static const char *const glob[][2] = {{"emb.weight", "model.embeddings.weight"},
                                          {"ln_out.weight", "model.norm.weight"},
                                          {"ln_out.bias", "model.norm.bias"},
                                          {"head.weight", "lm_head.weight"}};
    for (int i = 0; i < 4; i++)
        if (!strcmp(off, glob[i][0])) {
            snprintf(out, cap, "%s", glob[i][1]);
            return;
        }
    int layer, n = 0;
    ck_assert_int_eq(sscanf(off, "blocks.%d.%n", &layer, &n), 1);
    const char *s = off + n;
    static const char *const map[][2] = {
        {"ln0.", "pre_norm."}, {"ln1.", "attn_norm."}, {"ln2.", "ffn_norm."},
        {"att.receptance.", "attn.r_proj."}, {"att.key.", "attn.k_proj."},
        {"att.value.", "attn.v_proj."}, {"att.output.", "attn.o_proj."},
        {"att.ln_x.", "attn.g_norm."}, {"att.", "attn."}, {"ffn.", "ffn."}};
    char rest[96];
    for (int i = 0; i < 10; i++) {
        size_t k = strlen(map[i][0]);
        if (!strncmp(s, map[i][0], k)) {
            snprintf(rest, sizeof rest, "%s%s", map[i][1], s + k);
            break;
        }
    }
    /* LoRA: attn.w1 -> attn.w_lora.lora.0.weight, w2 -> lora.2.weight, w0 -> lora.2.bias */
    size_t rl = strlen(rest);
    if (rl == 7 && !strncmp(rest, "attn.", 5) && strchr("wavg", rest[5]) &&
        strchr("012", rest[6])) {
        const char *tail = rest[6] == '0' ? "2.bias" : rest[6] == '1' ? "0.weight" : "2.weight";
        snprintf(out, cap, "model.layers.%d.attn.%c_lora.lora.%s", layer, rest[5], tail);
        return;
    }
    snprintf(out, cap, "model.layers.%d.%s", layer, rest);
}

START_TEST(hf_names_load_to_same_tensors)
{
    /* the tensors are written out as held: keep the file's row order */
    struct rk_model *a = load_with(rk_test_data(DATA_ST), RK_DTYPE_AUTO, true);
    size_t nt = rk__model_n_tensors(a), n = 0;
    struct st_tensor *t = calloc(nt, sizeof *t);
    size_t C = (size_t)a->C;
    float *fused = calloc(6 * C, sizeof *fused); /* layer 1's mixes as attn.x_x [6, C] */
    for (size_t i = 0; i < nt; i++) {
        struct rk__tensor_view v;
        rk__model_tensor(a, i, &v);
        if (!v.data)
            continue;
        struct st_tensor *o = &t[n];
        hf_name(v.name, o->name, sizeof o->name);
        o->dtype = v.dtype == RK_DTYPE_F32 ? "F32" : v.dtype == RK_DTYPE_F16 ? "F16" : "BF16";
        o->data = v.data;
        o->nbytes = (size_t)v.rows * (size_t)v.cols * rk__dtype_size(v.dtype);
        /* fla shapes: the held (Linear) shapes for matrices, [C] for most
         * vectors, [1, 1, C] for the token-shift mixes */
        o->nd = 2;
        o->shape[0] = v.rows;
        o->shape[1] = v.cols;
        if (v.rows == 1) {
            o->nd = 1;
            o->shape[0] = v.cols;
            if (strstr(o->name, ".attn.x_")) {
                o->nd = 3;
                o->shape[0] = o->shape[1] = 1;
                o->shape[2] = (int64_t)C;
            }
        }
        if (!strncmp(v.name, "blocks.1.att.x_", 15)) {
            int k = (int)(strchr("rwkvag", v.name[15]) - "rwkvag");
            memcpy(fused + (size_t)k * C, v.data, C * sizeof(float));
            if (k != 5)
                continue;
            snprintf(o->name, sizeof o->name, "model.layers.1.attn.x_x");
            o->nd = 2;
            o->shape[0] = 6;
            o->shape[1] = (int64_t)C;
            o->data = fused;
            o->nbytes = 6 * C * sizeof(float);
        }
        n++;
    }
    const char *out = tmp_path("hf.safetensors");
    write_safetensors(out, t, n);
    struct rk_model *b = load_ok(out, RK_DTYPE_AUTO);
    compare_exact(a, b);
    ck_assert(rk_model_fingerprint(a) == rk_model_fingerprint(b));
    rk_model_free(b);

    /* an official and an fla name for the same tensor is a duplicate */
    for (size_t i = 0; i < n; i++)
        if (!strcmp(t[i].name, "model.layers.2.attn_norm.weight"))
            snprintf(t[i].name, sizeof t[i].name, "blocks.2.ln1.weight");
    write_safetensors(out, t, n);
    rk_model_free(load_ok(out, RK_DTYPE_AUTO));
    for (size_t i = 0; i < n; i++)
        if (!strcmp(t[i].name, "model.layers.2.attn_norm.bias")) {
            t[n] = t[i];
            snprintf(t[n].name, sizeof t[n].name, "blocks.2.ln1.bias");
        }
    /* t has room: nt > n since layer 0's v0/v1/v2 were skipped */
    write_safetensors(out, t, n + 1);
    expect_msg(load_fail(out, RK_EFORMAT), "duplicates");
    unlink(out);
    free(fused);
    free(t);
    rk_model_free(a);
}
END_TEST

/* Vectors that rwkv.cpp stores as [1, 1, C] (ggml (C, 1, 1)). */
static bool vec3_name(const char *name)
{
    static const char *const sfx[] = {".w0", ".a0", ".v0", ".k_k", ".k_a", "ffn.x_k"};
    size_t n = strlen(name);
    for (size_t i = 0; i < sizeof sfx / sizeof sfx[0]; i++) {
        size_t k = strlen(sfx[i]);
        if (n >= k && !strcmp(name + n - k, sfx[i]))
            return true;
    }
    return false;
}

/* An rwkv.cpp .bin of `a`: LoRA factors in Linear form, mixes fused as
 * x_rwkvag, everything F32 or (big and LoRA) F16. */
static void write_bin(const struct rk_model *a, const char *path, bool f16, uint32_t n_layer)
{
    struct buf f = {0};
    put32(&f, 0x67676d66);
    put32(&f, 101);
    put32(&f, (uint32_t)a->V);
    put32(&f, (uint32_t)a->C);
    put32(&f, n_layer);
    put32(&f, f16 ? 1 : 0);
    size_t C = (size_t)a->C;
    float *mix = calloc(6 * C, sizeof *mix);
    for (size_t i = 0; i < rk__model_n_tensors(a); i++) {
        struct rk__tensor_view v;
        rk__model_tensor(a, i, &v);
        if (!v.data)
            continue;
        char name[96];
        snprintf(name, sizeof name, "%s", v.name);
        float *x = view_f32(&v);
        size_t n = (size_t)v.rows * (size_t)v.cols;
        int64_t shape[3] = {v.rows, v.cols, 0};
        int nd = 2;
        const char *dot = strrchr(name, '.');
        bool lora = strlen(dot) == 3 && strchr("wavg", dot[1]) && strchr("12", dot[2]);
        bool big = is_big(name);
        if (v.rows == 1) {
            nd = 1;
            shape[0] = v.cols;
            if (vec3_name(name)) {
                nd = 3;
                shape[0] = shape[1] = 1;
                shape[2] = v.cols;
            }
        }
        const char *xm = strstr(name, "att.x_");
        if (xm) {
            int k = (int)(strchr("rwkvag", xm[6]) - "rwkvag");
            memcpy(mix + (size_t)k * C, x, C * sizeof(float));
            free(x);
            if (k != 5)
                continue;
            snprintf((char *)xm, sizeof name - (size_t)(xm - name), "att.x_rwkvag");
            x = malloc(6 * C * sizeof *x);
            memcpy(x, mix, 6 * C * sizeof *x);
            n = 6 * C;
            nd = 3;
            shape[0] = 6;
            shape[1] = 1;
            shape[2] = (int64_t)C;
        }
        bool half = f16 && (big || lora);
        put32(&f, (uint32_t)nd);
        put32(&f, (uint32_t)strlen(name));
        put32(&f, half ? 1 : 0);
        for (int k = nd; k-- > 0;) /* ggml order: innermost first */
            put32(&f, (uint32_t)shape[k]);
        put_s(&f, name);
        for (size_t k = 0; k < n; k++) {
            if (half) {
                put16(&f, rk__f32_to_f16(x[k]));
            } else {
                uint32_t u;
                memcpy(&u, &x[k], 4);
                put32(&f, u);
            }
        }
        free(x);
    }
    write_buf(path, &f);
    free(f.p);
    free(mix);
}

START_TEST(rwkvcpp_multihead_roundtrip)
{
    struct rk_model *a = load_ok(rk_test_data(DATA_ST), RK_DTYPE_AUTO);
    const char *out = tmp_path("mh.bin");
    write_bin(a, out, false, (uint32_t)a->L);
    struct rk_model *b = load_ok(out, RK_DTYPE_AUTO);
    ck_assert_int_eq(rk_model_format(b), RK_FORMAT_RWKVCPP);
    ck_assert_int_eq(rk_model_wtype(b), RK_DTYPE_F32);
    compare_exact(a, b); /* bf16 -> f32 is exact */
    ck_assert(rk_model_fingerprint(a) == rk_model_fingerprint(b));
    rk_model_free(b);

    write_bin(a, out, true, (uint32_t)a->L);
    b = load_ok(out, RK_DTYPE_AUTO);
    ck_assert_int_eq(rk_model_wtype(b), RK_DTYPE_F16);
    compare_models(b, a, 1e-7, F16_RTOL, 1e-7, F16_RTOL);
    rk_model_free(b);

    write_bin(a, out, false, (uint32_t)a->L + 1);
    expect_msg(load_fail(out, RK_EFORMAT), "header says n_layer");
    unlink(out);
    rk_model_free(a);
}
END_TEST

START_TEST(missing_and_odd_files)
{
    const char *miss = "/nonexistent-rwkvd-dir/model.safetensors";
    const char *msg = load_fail(miss, RK_EIO);
    expect_msg(msg, miss);
    /* a directory without model files (the test's scratch directory) */
    expect_msg(load_fail(rk_test_tmpdir(), RK_EFORMAT), "a model directory needs");

    const char *p = tmp_path("odd.bin");
    ck_assert_int_eq(rk_test_write_file(p, "", 0), 0);
    expect_msg(load_fail(p, RK_EFORMAT), "empty");
    ck_assert_int_eq(rk_test_write_file(p, "hello, world\n", 13), 0);
    expect_msg(load_fail(p, RK_EFORMAT), "unrecognised");
    ck_assert_int_eq(rk_test_write_file(p, "GGUF\3\0\0\0\0\0\0\0\0\0\0\0", 16), 0);
    expect_msg(load_fail(p, RK_EFORMAT), "GGUF");
    unlink(p);

    struct rk_model *m = (struct rk_model *)p;
    ck_assert_int_eq(rk_model_load(NULL, NULL, &m, NULL), RK_EINVAL);
    ck_assert_ptr_null(m);
    ck_assert_int_eq(rk_model_load(miss, NULL, NULL, NULL), RK_EINVAL);
}
END_TEST

START_TEST(hostile_safetensors)
{
    static const struct {
        const char *header;
        size_t data;
        const char *msg;
    } cases[] = {
        {"{ ", 16, "expected a string"},
        {"[]", 16, "unrecognised"},
        {"{}", 16, "no RWKV-7 layer tensors"},
        {"{} x", 16, "trailing bytes"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 16, "negative"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 16, "integer"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[01],\"data_offsets\":[0,4]}}", 16, "leading zero"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[9007199254740993],\"data_offsets\":[0,4]}}", 16,
         "too large"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],"
         "\"data_offsets\":[0,4]}}", 16, "overflows"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 16,
         "dimensions"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,0]}}", 16, "data_offsets"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[8],\"data_offsets\":[0,32]}}", 16, "data_offsets"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 16, "data_offsets"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 16, "overlap"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}", 16, "twice"},
        {"{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 16,
         "duplicate field"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2]}}", 16, "lacks data_offsets"},
        {"{\"a\":{\"dtype\":\"Q4\",\"shape\":[2],\"data_offsets\":[0,8]}}", 16, "unknown dtype"},
        {"{\"emb.weight\":{\"dtype\":\"F64\",\"shape\":[2],\"data_offsets\":[0,16]}}", 16,
         "not supported"},
        {"{\"a\":{\"dtype\":\"F\\u0000\",\"shape\":[2],\"data_offsets\":[0,8]}}", 16, "NUL"},
        {"{\"a\\q\":1}", 16, "bad escape"},
        {"{\"a\n\":1}", 16, "control character"},
        {"{\"\\ud800x\":1}", 16, "surrogate"},
        {"{\"blocks.4096.ln1.weight\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
         16, "layer number"},
        {"{\"__metadata__\":{},\"__metadata__\":{}}", 16, "duplicate __metadata__"},
        {"{\"__metadata__\":{\"x\":tru}}", 16, "unexpected"},
    };
    const char *p = tmp_path("hostile.safetensors");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_raw_st(p, cases[i].header, cases[i].data);
        const char *msg = load_fail(p, RK_EFORMAT);
        ck_assert_msg(strstr(msg, cases[i].msg), "case %zu: \"%s\" lacks \"%s\"", i, msg,
                      cases[i].msg);
    }
    /* deep nesting and a long name */
    struct buf h = {0};
    put_s(&h, "{\"__metadata__\":");
    for (int i = 0; i < 10000; i++)
        put_s(&h, "[");
    put8(&h, 0);
    write_raw_st(p, (const char *)h.p, 0);
    expect_msg(load_fail(p, RK_EFORMAT), "too deep");
    h.n = 0;
    put_s(&h, "{\"");
    for (int i = 0; i < 300; i++)
        put_s(&h, "x");
    put_s(&h, "\":{}}");
    put8(&h, 0);
    write_raw_st(p, (const char *)h.p, 0);
    expect_msg(load_fail(p, RK_EFORMAT), "too long");
    free(h.p);
    /* header length beyond the file, and absurd */
    struct buf f = {0};
    put64(&f, 1000);
    put_s(&f, "{}");
    write_buf(p, &f);
    expect_msg(load_fail(p, RK_EFORMAT), "header length");
    f.n = 0;
    put64(&f, UINT64_MAX);
    put_s(&f, "{}");
    write_buf(p, &f);
    expect_msg(load_fail(p, RK_EFORMAT), "header length");
    free(f.p);
    unlink(p);
}
END_TEST

/* Model-level errors, made by editing the header of a valid file. */
START_TEST(wrong_shapes_and_missing_tensors)
{
    struct rk_model *a = load_ok(rk_test_data(DATA_ST), RK_DTYPE_AUTO);
    const char *src = tmp_path("valid.safetensors");
    const char *dst = tmp_path("rand-mh-bf16-edited.safetensors");
    struct rk_errbuf eb = {0};
    ck_assert_int_eq(rk_model_save_safetensors(a, src, RK_DTYPE_F32, &eb), RK_OK);
    rk_model_free(a);
    static const struct {
        const char *from, *to, *msg;
    } cases[] = {
        {"\"blocks.1.att.w1\":{\"dtype\":\"F32\",\"shape\":[128,24]",
         "\"blocks.1.att.w1\":{\"dtype\":\"F32\",\"shape\":[24,128]",
         "rand-mh-bf16-edited.safetensors: tensor blocks.1.att.w1: expected shape [128, 24], "
         "got [24, 128]"},
        {"\"blocks.2.att.a1\":{\"dtype\":\"F32\",\"shape\":[128,16]",
         "\"blocks.2.att.a1\":{\"dtype\":\"F32\",\"shape\":[256,8]",
         "tensor blocks.2.att.a1: expected shape [128, 16], got [256, 8]"},
        {"\"blocks.2.att.k_a\"", "\"blocks.2.att.k_b\"", "missing tensor blocks.2.att.k_a"},
        {"\"head.weight\"", "\"head.weigh\"", "missing tensor head.weight"},
        {"\"blocks.1.att.r_k\":{\"dtype\":\"F32\",\"shape\":[2,64]",
         "\"blocks.1.att.r_k\":{\"dtype\":\"F32\",\"shape\":[4,32]",
         "tensor blocks.1.att.r_k: expected shape [2, 64], got [4, 32]"},
        {"\"blocks.0.att.x_r\":{\"dtype\":\"F32\",\"shape\":[1,1,128]",
         "\"blocks.0.att.x_r\":{\"dtype\":\"F32\",\"shape\":[1,128,1]",
         "tensor blocks.0.att.x_r: expected shape [1, 1, 128], got [1, 128, 1]"},
        {"\"blocks.0.ffn.key.weight\":{\"dtype\":\"F32\",\"shape\":[512,128]",
         "\"blocks.0.ffn.key.weight\":{\"dtype\":\"F32\",\"shape\":[128,512]",
         "tensor blocks.0.ffn.key.weight: expected shape [128, 128], got [128, 512]"},
        {"\"emb.weight\":{\"dtype\":\"F32\",\"shape\":[300,128]",
         "\"emb.weight\":{\"dtype\":\"F32\",\"shape\":[600,64]",
         "tensor blocks.0.att.w1: expected shape [64, rank], got [128, 24]"},
        {"\"emb.weight\":{\"dtype\":\"F32\",\"shape\":[300,128]",
         "\"emb.weight\":{\"dtype\":\"F32\",\"shape\":[400,96]", "multiple of 64"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *d2 = dst;
        edit_st(src, d2, cases[i].from, cases[i].to);
        const char *msg = load_fail(d2, RK_EFORMAT);
        ck_assert_msg(strstr(msg, cases[i].msg), "case %zu: \"%s\" lacks \"%s\"", i, msg,
                      cases[i].msg);
        unlink(d2);
    }
    unlink(src);
}
END_TEST

START_TEST(hostile_rwkvcpp)
{
    const char *p = tmp_path("hostile.bin");
    struct {
        uint32_t hdr[6];
        uint32_t rec[6]; /* nd, klen, type, dims... */
        int nrec;
        char name[12];
        const char *msg;
    } cases[] = {
        {{0x67676d66, 99, 256, 64, 1, 0}, {0}, 0, "", "version"},
        {{0x67676d66, 101, 256, 64, 1, 9}, {0}, 0, "", "Q8_0"},
        {{0x67676d66, 101, 256, 64, 1, 42}, {0}, 0, "", "data type 42"},
        {{0x67676d66, 101, 256, 64, 1, 0}, {0}, 0, "", "no RWKV-7 layer"},
        {{0x67676d66, 101, 256, 64, 1, 0}, {4, 10, 0, 1, 1, 1}, 6, "emb.weight", "dimensions"},
        {{0x67676d66, 101, 256, 64, 1, 0}, {1, 0, 0, 1}, 4, "", "name length"},
        {{0x67676d66, 101, 256, 64, 1, 0}, {1, 100000, 0, 1}, 4, "", "name length"},
        {{0x67676d66, 101, 256, 64, 1, 0}, {1, 10, 7, 1}, 4, "emb.weight", "Q5_0"},
        {{0x67676d66, 101, 256, 64, 1, 0}, {3, 10, 0, 0xffffffff, 0xffffffff, 0xffffffff}, 6,
         "emb.weight", "overflows"},
        {{0x67676d66, 101, 256, 64, 1, 0}, {2, 10, 0, 0xffffffff, 0xffff}, 5, "emb.weight",
         "past the end"},
        {{0x67676d66, 101, 256, 64, 1, 0}, {1, 10, 0, 2}, 4, "emb\0weight", "NUL"},
        {{0x67676d66, 101, 256, 64, 1, 0}, {1, 10, 0}, 3, "", "truncated"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct buf f = {0};
        for (int k = 0; k < 6; k++)
            put32(&f, cases[i].hdr[k]);
        for (int k = 0; k < cases[i].nrec; k++)
            put32(&f, cases[i].rec[k]);
        if (cases[i].nrec > 3)
            put(&f, cases[i].name, cases[i].rec[1] <= 10 ? cases[i].rec[1] : 10);
        write_buf(p, &f);
        free(f.p);
        const char *msg = load_fail(p, RK_EFORMAT);
        ck_assert_msg(strstr(msg, cases[i].msg), "case %zu: \"%s\" lacks \"%s\"", i, msg,
                      cases[i].msg);
    }
    unlink(p);
}
END_TEST

/* --- hand-made .pth archives ------------------------------------------------------------ */

struct zent {
    const char *name;
    const void *data;
    size_t len;
    unsigned method;
};

/* A zip of stored entries; `z64` writes the central directory with zip64
 * fields (saturated 32-bit values, extra field 0x0001, zip64 end records). */
static void write_zip_ex(const char *path, const struct zent *e, size_t n, bool z64)
{
    struct buf f = {0};
    size_t *lho = calloc(n, sizeof *lho);
    for (size_t i = 0; i < n; i++) {
        lho[i] = f.n;
        put32(&f, 0x04034b50);
        put16(&f, 20);
        put16(&f, 0);
        put16(&f, e[i].method);
        put16(&f, 0);
        put16(&f, 0x21);
        put32(&f, 0);
        put32(&f, (uint32_t)e[i].len);
        put32(&f, (uint32_t)e[i].len);
        put16(&f, (unsigned)strlen(e[i].name));
        put16(&f, 0);
        put_s(&f, e[i].name);
        put(&f, e[i].data, e[i].len);
    }
    size_t cd = f.n;
    for (size_t i = 0; i < n; i++) {
        put32(&f, 0x02014b50);
        put16(&f, z64 ? 45 : 20);
        put16(&f, z64 ? 45 : 20);
        put16(&f, 0);
        put16(&f, e[i].method);
        put16(&f, 0);
        put16(&f, 0x21);
        put32(&f, 0);
        put32(&f, z64 ? 0xffffffffu : (uint32_t)e[i].len);
        put32(&f, z64 ? 0xffffffffu : (uint32_t)e[i].len);
        put16(&f, (unsigned)strlen(e[i].name));
        put16(&f, z64 ? 28 : 0);
        put16(&f, 0);
        put16(&f, 0);
        put16(&f, 0);
        put32(&f, 0);
        put32(&f, z64 ? 0xffffffffu : (uint32_t)lho[i]);
        put_s(&f, e[i].name);
        if (z64) {
            put16(&f, 0x0001);
            put16(&f, 24);
            put64(&f, e[i].len); /* uncompressed, compressed, local header offset */
            put64(&f, e[i].len);
            put64(&f, lho[i]);
        }
    }
    size_t cd_size = f.n - cd;
    if (z64) {
        size_t rec = f.n;
        put32(&f, 0x06064b50);
        put64(&f, 44);
        put16(&f, 45);
        put16(&f, 45);
        put32(&f, 0);
        put32(&f, 0);
        put64(&f, n);
        put64(&f, n);
        put64(&f, cd_size);
        put64(&f, cd);
        put32(&f, 0x07064b50);
        put32(&f, 0);
        put64(&f, rec);
        put32(&f, 1);
    }
    put32(&f, 0x06054b50);
    put16(&f, 0);
    put16(&f, 0);
    put16(&f, z64 ? 0xffff : (unsigned)n);
    put16(&f, z64 ? 0xffff : (unsigned)n);
    put32(&f, z64 ? 0xffffffffu : (uint32_t)cd_size);
    put32(&f, z64 ? 0xffffffffu : (uint32_t)cd);
    put16(&f, 0);
    write_buf(path, &f);
    free(f.p);
    free(lho);
}

static void write_zip(const char *path, const struct zent *e, size_t n)
{
    write_zip_ex(path, e, n, false);
}

static void pk_str(struct buf *b, const char *s)
{
    put8(b, 'X');
    put32(b, (uint32_t)strlen(s));
    put_s(b, s);
}
static void pk_int(struct buf *b, int32_t v)
{
    put8(b, 'J');
    put32(b, (uint32_t)v);
}

/* A torch.save-style pickle of {name: tensor} with one tensor. */
static void pk_one_tensor(struct buf *b, const char *name, const char *st_class, const char *key,
                          int numel, int offset, const int *shape, const int *stride, int nd)
{
    put_s(b, "\x80\x02" "ccollections\nOrderedDict\n" ")R(");
    pk_str(b, name);
    put_s(b, "ctorch._utils\n_rebuild_tensor_v2\n((");
    pk_str(b, "storage");
    put_s(b, "ctorch\n");
    put_s(b, st_class);
    put_s(b, "\n");
    pk_str(b, key);
    pk_str(b, "cpu");
    pk_int(b, numel);
    put_s(b, "tQ");
    pk_int(b, offset);
    put8(b, '(');
    for (int i = 0; i < nd; i++)
        pk_int(b, shape[i]);
    put8(b, 't');
    put8(b, '(');
    for (int i = 0; i < nd; i++)
        pk_int(b, stride[i]);
    put_s(b, "t\x89}tRu.");
}

static bool pth_zip64;

static const char *pth_case(const char *path, const void *pkl, size_t pkl_len,
                            const char *key, size_t data_len, unsigned method,
                            const char *byteorder)
{
    static float zeros[64];
    char dname[64];
    snprintf(dname, sizeof dname, "ck/data/%s", key);
    struct zent e[3] = {{"ck/data.pkl", pkl, pkl_len, method}, {dname, zeros, data_len, 0},
                        {"ck/byteorder", byteorder, byteorder ? strlen(byteorder) : 0, 0}};
    write_zip_ex(path, e, byteorder ? 3 : 2, pth_zip64);
    return load_fail(path, RK_EFORMAT);
}

START_TEST(hostile_pth)
{
    const char *p = tmp_path("hostile.pth");
    struct buf b = {0};
    int shape[2] = {2, 4}, stride[2] = {4, 1}, bad_stride[2] = {1, 2};

    /* a well-formed one-tensor archive gets through zip and pickle */
    pk_one_tensor(&b, "emb.weight", "FloatStorage", "0", 8, 0, shape, stride, 2);
    expect_msg(pth_case(p, b.p, b.n, "0", 32, 0, "little"), "no RWKV-7 layer tensors");
    pth_zip64 = true; /* the same through zip64 records */
    expect_msg(pth_case(p, b.p, b.n, "0", 32, 0, "little"), "no RWKV-7 layer tensors");
    expect_msg(pth_case(p, b.p, b.n, "0", 16, 0, NULL), "holds 16 bytes");
    pth_zip64 = false;
    expect_msg(pth_case(p, b.p, b.n, "0", 32, 8, NULL), "compressed");
    expect_msg(pth_case(p, b.p, b.n, "0", 32, 0, "big"), "little-endian");
    expect_msg(pth_case(p, b.p, b.n, "1", 32, 0, NULL), "not in the archive");
    expect_msg(pth_case(p, b.p, b.n, "0", 16, 0, NULL), "holds 16 bytes");
    b.n = 0;
    pk_one_tensor(&b, "emb.weight", "FloatStorage", "0", 8, 0, shape, bad_stride, 2);
    expect_msg(pth_case(p, b.p, b.n, "0", 32, 0, NULL), "not contiguous");
    b.n = 0;
    pk_one_tensor(&b, "emb.weight", "FloatStorage", "0", 8, 1, shape, stride, 2);
    expect_msg(pth_case(p, b.p, b.n, "0", 32, 0, NULL), "past its storage");
    b.n = 0;
    pk_one_tensor(&b, "emb.weight", "DoubleStorage", "0", 8, 0, shape, stride, 2);
    expect_msg(pth_case(p, b.p, b.n, "0", 64, 0, NULL), "storage type torch.DoubleStorage");
    b.n = 0;
    pk_one_tensor(&b, "emb.weight", "FloatStorage", "../../etc", 8, 0, shape, stride, 2);
    expect_msg(pth_case(p, b.p, b.n, "0", 32, 0, NULL), "bad storage key");

#define PK(lit) lit, sizeof(lit) - 1
    static const struct {
        const char *pkl;
        size_t len;
        const char *msg;
    } pk[] = {
        {PK("\x80\x02" "cos\nsystem\nq\x00X\x02\x00\x00\x00lsq\x01\x85q\x02Rq\x03."),
         "global os.system is not allowed"},
        {PK("\x80\x04\x8c\x08" "builtins\x8c\x04" "eval\x93."), "global builtins.eval"},
        {PK("\x80\x02" "c__builtin__\ngetattr\n."), "not allowed"},
        {PK("\x80\x02}"), "without STOP"},
        {PK("\x80\x02R."), "underflow"},
        {PK("\x80\x02K\x01."), "does not hold a state dict"},
        {PK("\x80\x02h\x05."), "memo index not set"},
        {PK("\x80\x02}r\xff\xff\xff\xff."), "memo index out of sequence"},
        {PK("\x80\x02(q\x00."), "memo put of a mark"},
        {PK("\x80\x02iposix\nsystem\n."), "unsupported opcode 0x69"},
        {PK("\x80\x02}(K\x01u."), "bad SETITEMS"},
        {PK("\x80\x02}K\x01s."), "not a dict"},
        {PK("\x80\x02K\x01K\x02s."), "not a dict"},
        {PK("\x80\x02t."), "no mark"},
        {PK("\x80\x09}."), "protocol"},
        {PK("\x80\x02X\xff\xff\xff\x7f"), "truncated"},
        {PK("\x80\x02\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x00\x00."), "integer too large"},
        {PK("\x80\x02" "ccollections\nOrderedDict\nK\x01\x85R."), "OrderedDict with arguments"},
        {PK("\x80\x02" "ctorch\nFloatStorage\n)R."), "cannot be called"},
        {PK("\x80\x02" "ctorch._utils\n_rebuild_tensor_v2\n)R."), "6 or 7 arguments"},
        {PK("\x80\x02)Q."), "5-tuple"},
        {PK("\x80\x02}}b."), "no RWKV-7 layer tensors"}, /* BUILD on a dict is fine */
    };
    for (size_t i = 0; i < sizeof pk / sizeof pk[0]; i++) {
        const char *msg = pth_case(p, pk[i].pkl, pk[i].len, "0", 32, 0, NULL);
        ck_assert_msg(strstr(msg, pk[i].msg), "pickle case %zu: \"%s\" lacks \"%s\"", i, msg,
                      pk[i].msg);
    }

    /* a pickle that only grows its stack hits the object budget */
    struct buf big = {0};
    put_s(&big, "\x80\x02");
    for (size_t i = 0; i < (1u << 23) + 8; i++)
        put8(&big, '(');
    put8(&big, '.');
    expect_msg(pth_case(p, big.p, big.n, "0", 32, 0, NULL), "too many objects");
    free(big.p);

    /* zip-level damage */
    struct zent none[1] = {{"ck/other", "x", 1, 0}};
    write_zip(p, none, 1);
    expect_msg(load_fail(p, RK_EFORMAT), "data.pkl");
    struct buf z = {0};
    put32(&z, 0x04034b50);
    for (int i = 0; i < 26; i++)
        put8(&z, 0);
    write_buf(p, &z);
    expect_msg(load_fail(p, RK_EFORMAT), "end-of-central-directory");
    /* an EOCD claiming 65535 entries in a 0-byte directory */
    z.n = 0;
    put32(&z, 0x04034b50);
    for (int i = 0; i < 26; i++)
        put8(&z, 0);
    put32(&z, 0x06054b50);
    put16(&z, 0);
    put16(&z, 0);
    put16(&z, 0xffff);
    put16(&z, 0xffff);
    put32(&z, 0);
    put32(&z, 30);
    put16(&z, 0);
    write_buf(p, &z);
    expect_msg(load_fail(p, RK_EFORMAT), "entry count");
    /* a central directory beyond the file */
    z.n -= 10;
    put32(&z, 1000);
    put32(&z, 0xfffffff0u);
    put16(&z, 0);
    write_buf(p, &z);
    expect_msg(load_fail(p, RK_EFORMAT), "central directory out of range");
    free(z.p);
    free(b.p);
    unlink(p);
}
END_TEST

START_TEST(pth_truncated_and_flipped)
{
    const char *src = rk_test_data(DATA_PTH);
    check_truncations(src, NULL, 0);
    const char *path;
    size_t len;
    int fd = open_copy(src, "flip.pth", &path, &len);
    unsigned char *d = rk_test_read_file(path, &len);
    /* data.pkl is the first entry: its bytes, then the central directory */
    uint16_t nl, xl;
    uint32_t sz;
    memcpy(&sz, d + 18, 4);
    memcpy(&nl, d + 26, 2);
    memcpy(&xl, d + 28, 2);
    size_t start = 30 + (size_t)nl + xl;
    for (size_t i = 0; i < sz; i++)
        flip_and_load(fd, path, start + i, (unsigned char)(i % 3 ? 0xff : 0x01));
    uint32_t cd;
    memcpy(&cd, d + len - 6, 4);
    for (size_t i = cd; i < len; i += 2)
        flip_and_load(fd, path, i, (unsigned char)(i & 2 ? 0xff : 0x08));
    free(d);
    close(fd);
    unlink(path);
}
END_TEST

START_TEST(allocation_failures)
{
    const char *files[] = {rk_test_data(DATA_PTH), rk_test_data(DATA_ST)};
    for (int f = 0; f < 2; f++) {
        char *path = xstrdup(files[f]);
        bool done = false;
        for (long n = 1; n < 5000 && !done; n++) {
            struct rk_errbuf eb = {0};
            struct rk_model *m = NULL;
            rk__alloc_fail_after(n);
            int rc = rk_model_load(path, NULL, &m, &eb);
            rk__alloc_fail_after(0);
            if (rc == RK_OK) {
                rk_model_free(m);
                done = n > 1;
                ck_assert_msg(done, "no allocation at all?");
                break;
            }
            ck_assert_msg(rc == RK_ENOMEM, "%s, failing allocation %ld: %s (%s)", path, n,
                          rk_errname(rc), eb.msg);
            ck_assert_ptr_null(m);
            ck_assert(eb.msg[0]);
        }
        ck_assert_msg(done, "%s never loaded", path);
        free(path);
    }
    /* saving under allocation failure leaves no file behind */
    struct rk_model *m = load_ok(rk_test_data(DATA_ST), RK_DTYPE_AUTO);
    const char *out = tmp_path("chaos.safetensors");
    for (long n = 1; n < 10; n++) {
        rk__alloc_fail_after(n);
        int rc = rk_model_save_safetensors(m, out, RK_DTYPE_F16, NULL);
        rk__alloc_fail_after(0);
        if (rc == RK_OK)
            break;
        ck_assert_int_eq(rc, RK_ENOMEM);
        ck_assert_int_ne(access(out, F_OK), 0);
    }
    unlink(out);
    rk_model_free(m);
}
END_TEST

START_TEST(save_errors_and_atomicity)
{
    struct rk_model *m = load_ok(rk_test_data(DATA_ST), RK_DTYPE_AUTO);
    struct rk_errbuf eb = {0};
    ck_assert_int_eq(rk_model_save_safetensors(m, "/nonexistent-rwkvd-dir/x.safetensors",
                                               RK_DTYPE_AUTO, &eb), RK_EIO);
    expect_msg(eb.msg, "/nonexistent-rwkvd-dir/x.safetensors");
    ck_assert_int_eq(rk_model_save_safetensors(m, tmp_path("x"), (enum rk_dtype)7, &eb),
                     RK_EINVAL);
    ck_assert_int_eq(rk_model_save_safetensors(NULL, tmp_path("x"), RK_DTYPE_AUTO, &eb),
                     RK_EINVAL);
    /* overwrite an existing file; no temporary files stay behind */
    const char *out = tmp_path("atomic.safetensors");
    ck_assert_int_eq(rk_test_write_file(out, "old", 3), 0);
    ck_assert_int_eq(rk_model_save_safetensors(m, out, RK_DTYPE_AUTO, &eb), RK_OK);
    struct rk_model *b = load_ok(out, RK_DTYPE_AUTO);
    compare_exact(m, b);
    ck_assert(rk_model_fingerprint(m) == rk_model_fingerprint(b));
    rk_model_free(b);
    DIR *dir = opendir(rk_test_tmpdir());
    ck_assert_ptr_nonnull(dir);
    struct dirent *de;
    while ((de = readdir(dir)))
        ck_assert_msg(!strstr(de->d_name, ".tmp."), "temporary file %s left", de->d_name);
    closedir(dir);
    unlink(out);
    rk_model_free(m);
}
END_TEST

RK_TEST_SUITE(loader_fixtures_suite, RK_NEEDS_SHARED)
{
    Suite *s = suite_create("loader_fixtures");
    TCase *tc = tcase_create("fixtures");
    tcase_set_timeout(tc, 240);
    tcase_add_test(tc, fixtures_load_with_expected_shapes);
    tcase_add_test(tc, fp32_bin_equals_safetensors);
    tcase_add_test(tc, fp16_bin_within_rounding);
    tcase_add_test(tc, weights_aligned_and_mapped);
    tcase_add_test(tc, save_roundtrip_f32);
    tcase_add_test(tc, save_roundtrip_bf16_f16);
    tcase_add_test(tc, load_time_precision);
    suite_add_tcase(s, tc);
    // Many truncations and bit flips: the suite unit-slow (check_common.h).
    tc = tcase_create("fixtures_hostile");
    tcase_set_tags(tc, RK_TEST_TAG_SLOW);
    tcase_set_timeout(tc, 240);
    tcase_add_test(tc, truncated_fixtures_fail);
    tcase_add_test(tc, flipped_headers_fail_cleanly);
    suite_add_tcase(s, tc);
    return s;
}

/* The shard index and config.json readers (tensorfile.c) on small hostile
 * texts: every refusal is RK_EFORMAT with a message that says why. */
static int index_of(const char *text, struct rk_tf_index *x, struct rk_errbuf *eb)
{
    memset(eb, 0, sizeof *eb);
    return rk_tf_index_read(text, strlen(text), "idx.json", 0, x, eb);
}

static int count_field(void *user, const char *key, enum rk_tf_field kind, const char *sv,
                       uint64_t u, struct rk_errbuf *eb)
{
    (void)key, (void)sv, (void)eb;
    int *n = user;
    *n += kind == RK_TF_FIELD_UINT ? (int)u : 1000;
    return RK_OK;
}

START_TEST(hf_index_and_config_json)
{
    struct rk_tf_index x;
    struct rk_errbuf eb;
    ck_assert_int_eq(index_of("{\"metadata\":{\"total_size\":10},\"weight_map\":{\"b\":"
                              "\"s2.safetensors\",\"a\":\"s1.safetensors\",\"c\":"
                              "\"s2.safetensors\"}}", &x, &eb), RK_OK);
    ck_assert_uint_eq(x.n, 3);
    ck_assert_uint_eq(x.n_shards, 2);
    ck_assert_str_eq(x.v[0].name, "a"); // sorted
    ck_assert_str_eq(x.shards[rk_tf_index_find(&x, "c")->shard], "s2.safetensors");
    ck_assert_ptr_null(rk_tf_index_find(&x, "d"));
    rk_tf_index_free(&x);
    static const struct {
        const char *text, *why;
    } bad[] = {
        {"{\"metadata\":{}}", "no \"weight_map\""},
        {"{\"weight_map\":{\"a\":\"s.safetensors\",\"a\":\"t.safetensors\"}}", "listed twice"},
        {"{\"weight_map\":{\"a\":\"../s.safetensors\"}}", "not a *.safetensors file name"},
        {"{\"weight_map\":{\"a\":\"sub/s.safetensors\"}}", "not a *.safetensors file name"},
        {"{\"weight_map\":{\"a\":\".safetensors\"}}", "not a *.safetensors file name"},
        {"{\"weight_map\":{\"a\":\"s.bin\"}}", "not a *.safetensors file name"},
        {"{\"weight_map\":{\"a\":7}}", "expected a string"},
        {"{\"weight_map\":{\"\":\"s.safetensors\"}}", "empty tensor name"},
        {"{\"weight_map\":{}} x", "trailing bytes"},
        {"{\"weight_map\":{},\"weight_map\":{}}", "duplicate"},
        {"{\"weight_map\":{\"a\":\"s.safetensors\"", "expected '}'"},
        {"[]", "expected '{'"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        int rc = index_of(bad[i].text, &x, &eb);
        ck_assert_msg(rc == RK_EFORMAT && strstr(eb.msg, bad[i].why), "%s: %s (%s)", bad[i].text,
                      rk_errname(rc), eb.msg);
        ck_assert_ptr_null(x.v);
    }
    // config.json: strings and non-negative integers are handed over, the
    // rest is checked and skipped
    int n = 0;
    const char *cfg = "{\"model_type\":\"rwkv7\",\"hidden_size\":7,\"norm_eps\":1e-05,"
                      "\"architectures\":[\"X\"],\"tie\":false,\"n\":null,\"neg\":-3}";
    memset(&eb, 0, sizeof eb);
    ck_assert_int_eq(rk_tf_json_fields(cfg, strlen(cfg), "config.json", count_field, &n, &eb),
                     RK_OK);
    ck_assert_int_eq(n, 1007);
    const char *bad_cfg[] = {"{\"a\":1,}", "{\"a\":01}", "{\"a\":\"\\ud800\"}", "{\"a\":1} 2", ""};
    for (size_t i = 0; i < sizeof bad_cfg / sizeof bad_cfg[0]; i++) {
        memset(&eb, 0, sizeof eb);
        int rc = rk_tf_json_fields(bad_cfg[i], strlen(bad_cfg[i]), "config.json", count_field, &n,
                                   &eb);
        ck_assert_msg(rc == RK_EFORMAT && strstr(eb.msg, "config.json"), "%s: %s", bad_cfg[i],
                      eb.msg);
    }
}
END_TEST

RK_TEST_SUITE(loader_data_suite, RK_SELF_CONTAINED)
{
    Suite *s = suite_create("loader_data");
    TCase *tc = tcase_create("data");
    tcase_set_timeout(tc, 240);
    tcase_add_test(tc, pth_equals_its_safetensors);
    tcase_add_test(tc, hf_names_load_to_same_tensors);
    tcase_add_test(tc, panels_hold_the_same_model);
    tcase_add_test(tc, rwkvcpp_multihead_roundtrip);
    tcase_add_test(tc, missing_and_odd_files);
    tcase_add_test(tc, hf_index_and_config_json);
    tcase_add_test(tc, hostile_safetensors);
    tcase_add_test(tc, wrong_shapes_and_missing_tensors);
    tcase_add_test(tc, hostile_rwkvcpp);
    tcase_add_test(tc, hostile_pth);
    tcase_add_test(tc, allocation_failures);
    tcase_add_test(tc, save_errors_and_atomicity);
    suite_add_tcase(s, tc);
    tc = tcase_create("data_hostile");
    tcase_set_tags(tc, RK_TEST_TAG_SLOW);
    tcase_set_timeout(tc, 240);
    tcase_add_test(tc, pth_truncated_and_flipped);
    suite_add_tcase(s, tc);
    return s;
}

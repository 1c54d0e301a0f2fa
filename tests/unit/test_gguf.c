/*
 * test_gguf.c - the GGUF reader (core/gguf.c) in process, cheap enough for
 * the unit suite and its sanitizer runs.
 *
 *  - The committed fuzz seeds (tests/fuzz/corpus/gguf, written by
 *    tools/gguf_export.py from tests/fuzz/corpus/safetensors/tiny-f32):
 *    the F32 file gives the safetensors model's fingerprint and logits bit
 *    for bit, the Q8_0 file those of the same model quantized at load
 *    (wtype q8), the BF16 / Q4_0 / K-quant files load as documented.
 *  - The dequantizers on hand-built blocks whose values follow from the
 *    block layouts (core/FORMAT.md "GGUF"), computed here independently.
 *  - Every prefix of a valid file, and single-byte corruptions of its
 *    header, are refused or loaded without a fault (ASan watches).
 *  - The vocabulary in the metadata (vocab.gguf seed) and its absence.
 * tests/cli/test_gguf.py covers the command line and larger files.
 */
#include "check_common.h"
#include "core_int.h"
#include "gguf.h"
#include "rk_config.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *seed(const char *name)
{
    static char b[4][4096];
    static int slot;
    char *p = b[slot++ % 4];
    snprintf(p, sizeof b[0], "%s/tests/fuzz/corpus/%s", RK_SOURCE_ROOT, name);
    return p;
}

static struct rk_model *load(const char *path, enum rk_dtype wtype)
{
    struct rk_model_params p = {.wtype = wtype};
    struct rk_errbuf eb = {0};
    struct rk_model *m = NULL;
    int rc = rk_model_load(path, &p, &m, &eb);
    ck_assert_msg(rc == RK_OK, "%s: %s", path, eb.msg);
    return m;
}

/* Logits after a few tokens from the zero state (malloc'd, V floats). */
static float *run_logits(const struct rk_model *m)
{
    struct rk_ctx_params cp = {.n_threads = 1, .rows_max = 8};
    struct rk_ctx *ctx = NULL;
    ck_assert_int_eq(rk_ctx_create(m, &cp, &ctx), RK_OK);
    float *state = calloc(rk_state_len(m), sizeof(float));
    float *logits = malloc((size_t)rk_model_n_vocab(m) * sizeof(float));
    ck_assert(state && logits);
    const uint32_t toks[5] = {1, 7, 3, 15, 0};
    ck_assert_int_eq(rk_forward_seq(ctx, toks, 5, state, logits, false), RK_OK);
    free(state);
    rk_ctx_free(ctx);
    return logits;
}

START_TEST(gguf_seed_models)
{
    struct rk_model *st = load(seed("safetensors/tiny-f32.safetensors"), RK_DTYPE_AUTO);
    struct rk_model *f32 = load(seed("gguf/tiny-f32.gguf"), RK_DTYPE_AUTO);
    ck_assert_int_eq(rk_model_format(f32), RK_FORMAT_GGUF);
    ck_assert_int_eq(rk_model_wtype(f32), RK_DTYPE_F32);
    ck_assert(rk_model_fingerprint(f32) == rk_model_fingerprint(st));
    float *a = run_logits(st), *b = run_logits(f32);
    size_t V = (size_t)rk_model_n_vocab(st);
    ck_assert_msg(!memcmp(a, b, V * sizeof(float)), "F32 GGUF logits differ");
    free(b);

    // Q8_0 holds what wtype q8 makes of the same weights.
    struct rk_model *stq = load(seed("safetensors/tiny-f32.safetensors"), RK_DTYPE_Q8);
    struct rk_model *q8 = load(seed("gguf/tiny-q8_0.gguf"), RK_DTYPE_AUTO);
    ck_assert_int_eq(rk_model_wtype(q8), RK_DTYPE_Q8);
    ck_assert(rk_model_fingerprint(q8) == rk_model_fingerprint(stq));
    float *c = run_logits(stq), *d = run_logits(q8);
    ck_assert_msg(!memcmp(c, d, V * sizeof(float)), "Q8_0 GGUF logits differ from wtype q8");
    free(c);
    free(d);

    // The others load as documented and stay close to the f32 model.
    static const struct {
        const char *file;
        enum rk_dtype want, held;
        double tol;
    } cases[] = {
        {"gguf/tiny-bf16.gguf", RK_DTYPE_AUTO, RK_DTYPE_BF16, 0.5},
        {"gguf/tiny-q4_0.gguf", RK_DTYPE_AUTO, RK_DTYPE_Q8, 2.0},
        {"gguf/tiny-q4_0.gguf", RK_DTYPE_F32, RK_DTYPE_F32, 2.0},
        {"gguf/tiny-q8_0.gguf", RK_DTYPE_BF16, RK_DTYPE_BF16, 0.5},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct rk_model *m = load(seed(cases[i].file), cases[i].want);
        ck_assert_int_eq(rk_model_wtype(m), cases[i].held);
        float *e = run_logits(m);
        double diff = rk_max_abs_diff(e, a, V);
        ck_assert_msg(diff <= cases[i].tol, "%s: logits differ by %g", cases[i].file, diff);
        free(e);
        rk_model_free(m);
    }
    struct rk_model *k = load(seed("gguf/c256-q4_k_m.gguf"), RK_DTYPE_AUTO);
    ck_assert_int_eq(rk_model_wtype(k), RK_DTYPE_Q8);
    ck_assert_int_eq(rk_model_n_embd(k), 256);
    float *e = run_logits(k);
    for (int i = 0; i < rk_model_n_vocab(k); i++)
        ck_assert(isfinite(e[i]));
    free(e);
    rk_model_free(k);
    free(a);
    rk_model_free(st);
    rk_model_free(f32);
    rk_model_free(stq);
    rk_model_free(q8);
}
END_TEST

static void put_f16(unsigned char *p, float f)
{
    uint16_t h = rk__f32_to_f16(f);
    p[0] = (unsigned char)(h & 0xFF);
    p[1] = (unsigned char)(h >> 8);
}

START_TEST(gguf_dequant_blocks)
{
    unsigned char b[210];
    float y[256];

    // Q8_0: d = 0.25, q_k = k - 16.
    put_f16(b, 0.25f);
    for (int k = 0; k < 32; k++)
        b[2 + k] = (unsigned char)(int8_t)(k - 16);
    rk__gguf_dequant(RK_GGML_Q8_0, b, y, 32);
    for (int k = 0; k < 32; k++)
        ck_assert_float_eq(y[k], 0.25f * (float)(k - 16));

    // Q4_0: d = 0.5; byte j holds value j (low nibble) and value j + 16 (high).
    put_f16(b, 0.5f);
    for (int j = 0; j < 16; j++)
        b[2 + j] = (unsigned char)(j | (15 - j) << 4);
    rk__gguf_dequant(RK_GGML_Q4_0, b, y, 32);
    for (int j = 0; j < 16; j++) {
        ck_assert_float_eq(y[j], 0.5f * (float)(j - 8));
        ck_assert_float_eq(y[j + 16], 0.5f * (float)(7 - j));
    }

    // Q4_1: d = 0.5, m = -2; Q5_0: d = 0.25, fifth bits of values 3 and 20;
    // Q5_1: as Q5_0 with m = 1 and no offset.
    put_f16(b, 0.5f);
    put_f16(b + 2, -2.0f);
    for (int j = 0; j < 16; j++)
        b[4 + j] = (unsigned char)(j | (15 - j) << 4);
    rk__gguf_dequant(RK_GGML_Q4_1, b, y, 32);
    for (int j = 0; j < 16; j++) {
        ck_assert_float_eq(y[j], 0.5f * (float)j - 2.0f);
        ck_assert_float_eq(y[j + 16], 0.5f * (float)(15 - j) - 2.0f);
    }
    for (int one = 0; one < 2; one++) {
        unsigned char *p = b;
        put_f16(p, 0.25f);
        p += 2;
        if (one) {
            put_f16(p, 1.0f);
            p += 2;
        }
        uint32_t qh = 1u << 3 | 1u << 20;
        for (int k = 0; k < 4; k++)
            p[k] = (unsigned char)(qh >> (8 * k));
        for (int j = 0; j < 16; j++)
            p[4 + j] = (unsigned char)(j | (15 - j) << 4);
        rk__gguf_dequant(one ? RK_GGML_Q5_1 : RK_GGML_Q5_0, b, y, 32);
        for (int e = 0; e < 32; e++) {
            int q = (e < 16 ? e : 31 - e) + (e == 3 || e == 20 ? 16 : 0);
            float want = one ? 0.25f * (float)q + 1.0f : 0.25f * (float)(q - 16);
            ck_assert_msg(y[e] == want, "Q5_%d value %d: %g, want %g", one, e, (double)y[e],
                          (double)want);
        }
    }

    // Q4_K / Q5_K: d = 1, dmin = 0.5, sub-block s has scale s + 1 and min 2s
    // (6-bit fields: s < 4 in bytes s and s + 4; s >= 4 split over byte s + 4
    // and the top bits of bytes s - 4 and s, which stay 0 here).
    for (int five = 0; five < 2; five++) {
        memset(b, 0, sizeof b);
        put_f16(b, 1.0f);
        put_f16(b + 2, 0.5f);
        unsigned char *sc = b + 4, *qh = b + 16, *qs = five ? b + 48 : b + 16;
        for (int s = 0; s < 8; s++) {
            if (s < 4) {
                sc[s] = (unsigned char)(s + 1);
                sc[s + 4] = (unsigned char)(2 * s);
            } else {
                sc[s + 4] = (unsigned char)((s + 1) | (2 * s) << 4);
            }
        }
        // value e: nibble e % 16 in sub-blocks of even index, 15 - e % 16 in
        // odd ones; Q5_K: fifth bit set for sub-blocks 1 and 6
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++)
                qs[32 * c + l] = (unsigned char)((l % 16) | (15 - l % 16) << 4);
        if (five)
            for (int l = 0; l < 32; l++)
                qh[l] = (unsigned char)(1 << 1 | 1 << 6);
        rk__gguf_dequant(five ? RK_GGML_Q5_K : RK_GGML_Q4_K, b, y, 256);
        for (int e = 0; e < 256; e++) {
            int s = e / 32, l = e % 32;
            int q = (s % 2 == 0 ? l % 16 : 15 - l % 16) + (five && (s == 1 || s == 6) ? 16 : 0);
            float want = 1.0f * (float)(s + 1) * (float)q - 0.5f * (float)(2 * s);
            ck_assert_msg(y[e] == want, "Q%d_K value %d: %g, want %g", five ? 5 : 4, e,
                          (double)y[e], (double)want);
        }
    }

    // Q6_K: value e holds q(e) = (7e + 3) % 64 (stored as q, read as q - 32),
    // sub-block s of 16 has scale s - 8, d = 0.125.
    memset(b, 0, sizeof b);
    for (int e = 0; e < 256; e++) {
        int q = (7 * e + 3) % 64, h = e / 128, r = e % 128, quarter = r / 32, l = r % 32;
        unsigned char *ql = b + 64 * h, *qh = b + 128 + 32 * h;
        int byte = l + (quarter % 2) * 32, shift = quarter >= 2 ? 4 : 0;
        ql[byte] |= (unsigned char)((q & 0xF) << shift);
        qh[l] |= (unsigned char)((q >> 4) << (2 * quarter));
    }
    for (int s = 0; s < 16; s++)
        b[192 + s] = (unsigned char)(int8_t)(s - 8);
    put_f16(b + 208, 0.125f);
    rk__gguf_dequant(RK_GGML_Q6_K, b, y, 256);
    for (int e = 0; e < 256; e++) {
        float want = 0.125f * (float)(e / 16 - 8) * (float)((7 * e + 3) % 64 - 32);
        ck_assert_msg(y[e] == want, "Q6_K value %d: %g, want %g", e, (double)y[e],
                      (double)want);
    }
}
END_TEST

/* Loads `len` bytes of `buf` as a model file; returns the code. */
static int load_bytes(const void *buf, size_t len)
{
    const char *p = NULL;
    static char path[4096];
    snprintf(path, sizeof path, "%s/cut.gguf", rk_test_tmpdir());
    p = path;
    ck_assert_int_eq(rk_test_write_file(p, buf, len), 0);
    struct rk_model *m = NULL;
    struct rk_errbuf eb = {0};
    struct rk_model_params mp = {.wtype = RK_DTYPE_AUTO};
    int rc = rk_model_load(p, &mp, &m, &eb);
    if (rc == RK_OK)
        rk_model_free(m);
    else
        ck_assert_msg(eb.msg[0], "no message for code %d", rc);
    return rc;
}

START_TEST(gguf_prefixes_and_flips)
{
    size_t len = 0;
    unsigned char *buf = rk_test_read_file(seed("gguf/tiny-q4_0.gguf"), &len);
    ck_assert_ptr_nonnull(buf);
    struct rk_gguf g;
    struct rk_errbuf eb = {0};
    ck_assert_msg(rk__gguf_parse(buf, len, "x", &g, &eb) == RK_OK, "%s", eb.msg);
    size_t hdr = g.data_off, end = 0;
    for (size_t t = 0; t < g.n_t; t++)
        if ((size_t)(g.t[t].data - buf) + g.t[t].nbytes > end)
            end = (size_t)(g.t[t].data - buf) + g.t[t].nbytes;
    rk__gguf_free(&g);
    // Every prefix through the metadata and tensor infos, then a few in the
    // data (a cut in the padding after the last tensor is still a file).
    for (size_t n = 0; n < end; n += n < hdr + 64 ? 1 : 997) {
        int rc = rk__gguf_parse(buf, n, "x", &g, &eb);
        ck_assert_msg(rc == RK_EFORMAT, "prefix of %zu bytes: %d", n, rc);
    }
    // Each byte of the header and the tensor infos, flipped: never a fault;
    // the parse either fails or gives tensors inside the buffer.
    unsigned char *copy = malloc(len);
    ck_assert_ptr_nonnull(copy);
    size_t step = rk_test_slow() ? 7 : 1;
    for (size_t i = 0; i < hdr; i += step) {
        memcpy(copy, buf, len);
        copy[i] ^= (unsigned char)(0x5A + i);
        if (rk__gguf_parse(copy, len, "x", &g, &eb) == RK_OK) {
            for (size_t t = 0; t < g.n_t; t++)
                ck_assert(g.t[t].data >= copy && g.t[t].data + g.t[t].nbytes <= copy + len);
            rk__gguf_free(&g);
        }
    }
    // A few through the whole loader (placement, metadata checks).
    for (size_t i = 8; i < hdr; i += hdr / 24 + 1) {
        memcpy(copy, buf, len);
        copy[i] ^= 0xFF;
        int rc = load_bytes(copy, len);
        ck_assert(rc == RK_OK || rc == RK_EFORMAT || rc == RK_ENOMEM);
    }
    free(copy);
    free(buf);
}
END_TEST

START_TEST(gguf_vocab)
{
    struct rk_tokenizer *t = NULL;
    struct rk_errbuf eb = {0};
    ck_assert_msg(rk_tok_load_gguf(seed("gguf/vocab.gguf"), &t, &eb) == RK_OK, "%s", eb.msg);
    ck_assert_uint_eq(rk_tok_n_vocab(t), 261);
    const char text[] = "Hello\n\n\xe4\xbd\xa0!";
    uint32_t ids[16];
    size_t n = 0;
    ck_assert_int_eq(rk_tok_encode(t, text, sizeof text - 1, ids, 16, &n), RK_OK);
    const uint32_t want[5] = {257, 258, 259, 260, '!' + 1};
    ck_assert_uint_eq(n, 5);
    for (size_t i = 0; i < n; i++)
        ck_assert_uint_eq(ids[i], want[i]);
    rk_tok_free(t);
    // A byte-level model's file has no vocabulary.
    ck_assert_int_eq(rk_tok_load_gguf(seed("gguf/tiny-f32.gguf"), &t, &eb), RK_ENOTFOUND);
    ck_assert_ptr_null(t);
    // Not a GGUF file at all.
    ck_assert_int_eq(rk_tok_load_gguf(seed("safetensors/tiny-f32.safetensors"), &t, &eb),
                     RK_EFORMAT);
}
END_TEST

RK_TEST_SUITE(gguf_suite, RK_SELF_CONTAINED)
{
    Suite *s = suite_create("gguf");
    TCase *tc = tcase_create("gguf");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, gguf_seed_models);
    tcase_add_test(tc, gguf_dequant_blocks);
    tcase_add_test(tc, gguf_prefixes_and_flips);
    tcase_add_test(tc, gguf_vocab);
    suite_add_tcase(s, tc);
    return s;
}

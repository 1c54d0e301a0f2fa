/*
 * test_forward.c - numerical golden tests of the forward pass.
 *
 *  - the real tiny RWKV-7 (../shared/fixtures) in all three files must give
 *    the expected logits within 1e-4, on the reference and the fast kernels;
 *  - the multi-head random-weight fixtures (tests/data, made by
 *    tools/gen_model.py, expected outputs from the independent NumPy
 *    implementation tools/ref_rwkv7.py) must match logits after every token
 *    and the final state, also when starting from a non-zero state;
 *  - token-by-token, whole-sequence, chunked and batched runs must agree, and
 *    the fast kernels must agree with the reference kernels.
 */
#include "check_common.h"
#include "core_int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static struct rk_model *load(const char *path)
{
    struct rk_errbuf eb = {0};
    struct rk_model *m = NULL;
    int rc = rk_model_load(path, NULL, &m, &eb);
    ck_assert_msg(rc == RK_OK, "load %s: %s (%s)", path, rk_strerror(rc), eb.msg);
    return m;
}

static struct rk_ctx *make_ctx(const struct rk_model *m, int threads, int rows, bool ref)
{
    struct rk_ctx *c = NULL;
    struct rk_ctx_params p = {.n_threads = threads, .rows_max = rows};
    ck_assert_int_eq(rk_ctx_create(m, &p, &c), RK_OK);
    rk_ctx_set_reference(c, ref);
    return c;
}

static float *read_f32(const char *rel, size_t n_expect)
{
    size_t len = 0;
    float *v = rk_test_read_file(rk_test_data(rel), &len);
    ck_assert_msg(v != NULL, "cannot read tests/data/%s", rel);
    ck_assert_msg(len == n_expect * sizeof(float), "%s: %zu bytes, expected %zu", rel, len,
                  n_expect * sizeof(float));
    return v;
}

static uint32_t *read_tokens(const char *rel, size_t *n)
{
    size_t len = 0;
    char *txt = rk_test_read_file(rk_test_data(rel), &len);
    ck_assert(txt != NULL);
    uint32_t *ids = malloc((len + 1) * sizeof *ids);
    size_t k = 0;
    char *p = txt, *end;
    while (p < txt + len) {
        unsigned long v = strtoul(p, &end, 10);
        if (end == p)
            break;
        ids[k++] = (uint32_t)v;
        p = end;
        while (p < txt + len && (*p == ',' || *p == ' ' || *p == '\n'))
            p++;
    }
    free(txt);
    *n = k;
    return ids;
}

/* --- the shared tiny model ------------------------------------------------ */

static const char *tiny_files[] = {
    "fixtures/models/tiny-rwkv7-834K-FP32.bin",
    "fixtures/models/tiny-rwkv7-834K-FP16.bin",
    "fixtures/models/tiny-rwkv7-834K.safetensors",
};

START_TEST(test_tiny_expected_logits)
{
    const char *path = rk_test_shared(tiny_files[_i / 2]);
    bool ref = _i % 2;
    ck_assert_msg(path != NULL, "missing %s", tiny_files[_i / 2]);
    const char *exp_path = rk_test_shared("fixtures/models/tiny-rwkv7-834K.expected-logits.f32");
    ck_assert(exp_path != NULL);
    size_t len = 0;
    float *expected = rk_test_read_file(exp_path, &len);
    ck_assert_uint_eq(len, 256 * sizeof(float));

    struct rk_model *m = load(path);
    ck_assert_int_eq(rk_model_n_vocab(m), 256);
    struct rk_ctx *c = make_ctx(m, 2, 64, ref);
    float *state = calloc(rk_state_len(m), sizeof(float));
    float logits[256];
    uint32_t toks[] = {34, 105, 110};
    ck_assert_int_eq(rk_forward_seq(c, toks, 3, state, logits, false), RK_OK);
    char what[256];
    snprintf(what, sizeof what, "%s (%s kernels)", tiny_files[_i / 2], ref ? "reference" : "fast");
    rk_check_close(logits, expected, 256, 1e-4, 0, what);
    free(state);
    free(expected);
    rk_ctx_free(c);
    rk_model_free(m);
}
END_TEST

/* --- the random multi-head fixtures --------------------------------------- */

static const char *rand_models[] = {"rand-mh", "rand-mh-bf16"};

START_TEST(test_rand_reference_outputs)
{
    const char *name = rand_models[_i / 2];
    bool ref = _i % 2;
    char rel[256];
    snprintf(rel, sizeof rel, "%s.safetensors", name);
    struct rk_model *m = load(rk_test_data(rel));
    ck_assert_int_gt(rk_model_n_head(m), 1);
    size_t V = (size_t)rk_model_n_vocab(m), SL = rk_state_len(m), T;
    snprintf(rel, sizeof rel, "%s.tokens.txt", name);
    uint32_t *toks = read_tokens(rel, &T);
    ck_assert_uint_gt(T, 8);
    snprintf(rel, sizeof rel, "%s.logits-all.f32", name);
    float *exp_all = read_f32(rel, T * V);
    snprintf(rel, sizeof rel, "%s.state.f32", name);
    float *exp_state = read_f32(rel, SL);

    struct rk_ctx *c = make_ctx(m, 2, 7, ref); /* odd chunk size: several chunks */
    float *state = calloc(SL, sizeof(float));
    float *logits = malloc(T * V * sizeof(float));
    ck_assert_int_eq(rk_forward_seq(c, toks, T, state, logits, true), RK_OK);
    char what[256];
    snprintf(what, sizeof what, "%s logits after every token (%s)", name, ref ? "ref" : "fast");
    rk_check_close(logits, exp_all, T * V, 2e-4, 2e-4, what);
    snprintf(what, sizeof what, "%s final state (%s)", name, ref ? "ref" : "fast");
    rk_check_close(state, exp_state, SL, 2e-4, 2e-4, what);

    // from a non-zero initial state
    snprintf(rel, sizeof rel, "%s.state-in.f32", name);
    float *sin = read_f32(rel, SL);
    snprintf(rel, sizeof rel, "%s.logits-from-state.f32", name);
    float *exp_lfs = read_f32(rel, V);
    snprintf(rel, sizeof rel, "%s.state-out-from-state.f32", name);
    float *exp_sfs = read_f32(rel, SL);
    ck_assert_int_eq(rk_forward_seq(c, toks, T, sin, logits, false), RK_OK);
    snprintf(what, sizeof what, "%s logits from a given state (%s)", name, ref ? "ref" : "fast");
    rk_check_close(logits, exp_lfs, V, 2e-4, 2e-4, what);
    snprintf(what, sizeof what, "%s state from a given state (%s)", name, ref ? "ref" : "fast");
    rk_check_close(sin, exp_sfs, SL, 2e-4, 2e-4, what);

    free(sin), free(exp_lfs), free(exp_sfs), free(toks), free(exp_all), free(exp_state);
    free(state), free(logits);
    rk_ctx_free(c);
    rk_model_free(m);
}
END_TEST

/* --- agreement between run shapes ----------------------------------------- */

/* Token-by-token, whole sequence (one chunk), chunked (chunk 3) and batched
 * (each step of B different sequences in one call) must agree. */
START_TEST(test_run_shapes_agree)
{
    char rel[256];
    snprintf(rel, sizeof rel, "%s.safetensors", rand_models[_i]);
    struct rk_model *m = load(rk_test_data(rel));
    size_t V = (size_t)rk_model_n_vocab(m), SL = rk_state_len(m);
    enum { T = 13, B = 5 };
    uint32_t toks[B][T];
    uint64_t s = 12345;
    for (int b = 0; b < B; b++)
        for (int t = 0; t < T; t++) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            toks[b][t] = (uint32_t)((s >> 33) % V);
        }
    struct rk_ctx *one = make_ctx(m, 2, 64, false), *chunk3 = make_ctx(m, 2, 3, false);
    float *st_tok = calloc(B * SL, sizeof(float)), *st_seq = calloc(SL, sizeof(float));
    float *st_chk = calloc(SL, sizeof(float)), *st_bat = calloc(B * SL, sizeof(float));
    float *lg_tok = malloc(B * V * sizeof(float)), *lg_seq = malloc(T * V * sizeof(float));
    float *lg_chk = malloc(T * V * sizeof(float)), *lg_bat = malloc(B * V * sizeof(float));
    float *ptrs[B];
    for (int b = 0; b < B; b++)
        ptrs[b] = st_bat + b * SL;
    for (int t = 0; t < T; t++) {
        uint32_t step[B];
        for (int b = 0; b < B; b++) {
            ck_assert_int_eq(rk_forward_token(one, toks[b][t], st_tok + b * SL, lg_tok + b * V),
                             RK_OK);
            step[b] = toks[b][t];
        }
        ck_assert_int_eq(rk_forward_batch(chunk3, B, step, ptrs, lg_bat), RK_OK);
        rk_check_close(lg_bat, lg_tok, B * V, 1e-4, 1e-4, "batched vs token-by-token logits");
    }
    rk_check_close(st_bat, st_tok, B * SL, 1e-4, 1e-4, "batched vs token-by-token state");
    ck_assert_int_eq(rk_forward_seq(one, toks[B - 1], T, st_seq, lg_seq, true), RK_OK);
    ck_assert_int_eq(rk_forward_seq(chunk3, toks[B - 1], T, st_chk, lg_chk, true), RK_OK);
    rk_check_close(lg_seq + (T - 1) * V, lg_tok + (B - 1) * V, V, 1e-4, 1e-4,
                   "sequence vs token-by-token logits");
    rk_check_close(st_seq, st_tok + (B - 1) * SL, SL, 1e-4, 1e-4, "sequence vs token state");
    rk_check_close(lg_chk, lg_seq, T * V, 1e-4, 1e-4, "chunked vs whole-sequence logits");
    rk_check_close(st_chk, st_seq, SL, 1e-4, 1e-4, "chunked vs whole-sequence state");

    // continuing from a saved state equals one longer run
    float *st_a = calloc(SL, sizeof(float)), *lg_a = malloc(V * sizeof(float));
    ck_assert_int_eq(rk_forward_seq(one, toks[0], 6, st_a, NULL, false), RK_OK);
    ck_assert_int_eq(rk_forward_seq(one, toks[0] + 6, T - 6, st_a, lg_a, false), RK_OK);
    float *st_b = calloc(SL, sizeof(float)), *lg_b = malloc(V * sizeof(float));
    ck_assert_int_eq(rk_forward_seq(one, toks[0], T, st_b, lg_b, false), RK_OK);
    rk_check_close(lg_a, lg_b, V, 1e-5, 1e-5, "split run vs one run");

    free(st_a), free(lg_a), free(st_b), free(lg_b);
    free(st_tok), free(st_seq), free(st_chk), free(st_bat);
    free(lg_tok), free(lg_seq), free(lg_chk), free(lg_bat);
    rk_ctx_free(one);
    rk_ctx_free(chunk3);
    rk_model_free(m);
}
END_TEST

/* The fast kernels (AVX-512 dot products, converted-block sgemm, threaded
 * WKV) against the plain reference kernels, for every weight precision and
 * for the row counts that select each matmul path. */
START_TEST(test_fast_matches_reference)
{
    static const enum rk_dtype types[] = {RK_DTYPE_F32, RK_DTYPE_BF16, RK_DTYPE_F16};
    struct rk_model_params p = {.wtype = types[_i]};
    struct rk_model *m = NULL;
    struct rk_errbuf eb = {0};
    ck_assert_int_eq(rk_model_load(rk_test_data("rand-mh.safetensors"), &p, &m, &eb), RK_OK);
    ck_assert_int_eq(rk_model_wtype(m), types[_i]);
    size_t V = (size_t)rk_model_n_vocab(m), SL = rk_state_len(m);
    struct rk_ctx *fast = make_ctx(m, 2, 64, false), *ref = make_ctx(m, 1, 64, true);
    static const size_t lens[] = {1, 2, 3, 4, 5, 17};
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
        size_t T = lens[li];
        uint32_t toks[17];
        for (size_t t = 0; t < T; t++)
            toks[t] = (uint32_t)((t * 97 + 13) % V);
        float *s1 = calloc(SL, sizeof(float)), *s2 = calloc(SL, sizeof(float));
        float *l1 = malloc(T * V * sizeof(float)), *l2 = malloc(T * V * sizeof(float));
        ck_assert_int_eq(rk_forward_seq(fast, toks, T, s1, l1, true), RK_OK);
        ck_assert_int_eq(rk_forward_seq(ref, toks, T, s2, l2, true), RK_OK);
        char what[128];
        snprintf(what, sizeof what, "fast vs reference logits (%s, T=%zu)",
                 rk_dtype_name(types[_i]), T);
        rk_check_close(l1, l2, T * V, 1e-4, 1e-4, what);
        rk_check_close(s1, s2, SL, 1e-4, 1e-4, "fast vs reference state");
        free(s1), free(s2), free(l1), free(l2);
    }
    rk_ctx_free(fast);
    rk_ctx_free(ref);
    rk_model_free(m);
}
END_TEST

/* rk_ctx_copy (the adapter swap) and rk_ctx_run over 1 and 3 threads: every
 * element copied or zeroed, nothing past the end touched, every thread
 * index run once. */
static void mark_thread(void *arg, int ith, int nth)
{
    int *seen = arg;
    seen[ith] += 1;
    if (ith == 0)
        seen[8] = nth;
}

START_TEST(test_ctx_copy_and_run)
{
    struct rk_model *m = load(rk_test_data("rand-mh.safetensors"));
    static const size_t sizes[] = {1, 17, 65535, 65536, 300001};
    for (int threads = 1; threads <= 3; threads += 2) {
        struct rk_ctx *c = make_ctx(m, threads, 8, false);
        for (size_t si = 0; si < sizeof sizes / sizeof sizes[0]; si++) {
            size_t n = sizes[si];
            float *src = malloc((n + 1) * sizeof(float)), *dst = malloc((n + 1) * sizeof(float));
            for (size_t i = 0; i <= n; i++) {
                src[i] = (float)i * 0.5f + 1.0f;
                dst[i] = -7.0f;
            }
            rk_ctx_copy(c, dst, src, n);
            ck_assert_msg(!memcmp(dst, src, n * sizeof(float)) && dst[n] == -7.0f,
                          "copy of %zu floats, %d threads", n, threads);
            rk_ctx_copy(c, dst, NULL, n);
            for (size_t i = 0; i < n; i++)
                ck_assert_msg(dst[i] == 0.0f, "zeroing %zu floats: [%zu]", n, i);
            ck_assert(dst[n] == -7.0f);
            free(src), free(dst);
        }
        int seen[9] = {0};
        rk_ctx_run(c, mark_thread, seen);
        ck_assert_int_eq(seen[8], threads);
        for (int i = 0; i < threads; i++)
            ck_assert_int_eq(seen[i], 1);
        rk_ctx_free(c);
    }
    rk_model_free(m);
}
END_TEST

START_TEST(test_bad_tokens_rejected)
{
    struct rk_model *m = load(rk_test_data("rand-mh.safetensors"));
    struct rk_ctx *c = make_ctx(m, 1, 8, false);
    float *state = calloc(rk_state_len(m), sizeof(float));
    float *copy = calloc(rk_state_len(m), sizeof(float));
    uint32_t toks[] = {1, 2, (uint32_t)rk_model_n_vocab(m)};
    ck_assert_int_eq(rk_forward_seq(c, toks, 3, state, NULL, false), RK_ERANGE);
    ck_assert_msg(memcmp(state, copy, rk_state_len(m) * sizeof(float)) == 0,
                  "a rejected sequence must leave the state untouched");
    ck_assert_int_eq(rk_forward_token(c, 0xffffffffu, state, NULL), RK_ERANGE);
    ck_assert_int_eq(rk_forward_seq(c, toks, 0, state, NULL, false), RK_EINVAL);
    free(state), free(copy);
    rk_ctx_free(c);
    rk_model_free(m);
}
END_TEST

/* With the AVX-512 kernels, a sequence's logits in a batched decode step are
 * bit-identical to its solo step for batches up to the tiled limit, so output
 * does not depend on concurrent load. (The portable kernels are only close.) */
START_TEST(test_batch_invariance)
{
    if (getenv("RWKVD_NO_AVX512") || !__builtin_cpu_supports("avx512f"))
        return;
    struct rk_model *m = load(rk_test_data("rand-mh-bf16.safetensors"));
    size_t V = (size_t)rk_model_n_vocab(m), SL = rk_state_len(m);
    struct rk_ctx *c = make_ctx(m, 2, 64, false);
    enum { B = 11 };
    float *solo_st = calloc(SL, sizeof(float)), *solo_lg = malloc(V * sizeof(float));
    float *st = calloc(B * SL, sizeof(float)), *lg = malloc(B * V * sizeof(float));
    float *ptrs[B];
    uint32_t toks[B];
    for (int b = 0; b < B; b++) {
        ptrs[b] = st + b * SL;
        toks[b] = (uint32_t)(b * 31 + 7) % V;
    }
    // direct comparison: the same inputs through B=1 and B=nb give equal bits
    for (size_t nb = 2; nb <= B; nb++) {
        for (size_t b = 0; b < nb; b++)
            for (size_t i = 0; i < SL; i++)
                st[b * SL + i] = (float)((b + 1) * (i % 13)) * 0.01f;
        memcpy(solo_st, st + (nb - 1) * SL, SL * sizeof(float));
        ck_assert_int_eq(rk_forward_batch(c, nb, toks, ptrs, lg), RK_OK);
        ck_assert_int_eq(rk_forward_token(c, toks[nb - 1], solo_st, solo_lg), RK_OK);
        ck_assert_msg(memcmp(solo_lg, lg + (nb - 1) * V, V * sizeof(float)) == 0,
                      "batch of %zu: logits of its last sequence differ from its solo step", nb);
        ck_assert_msg(memcmp(solo_st, st + (nb - 1) * SL, SL * sizeof(float)) == 0,
                      "batch of %zu: state differs from the solo step", nb);
    }
    free(solo_st), free(solo_lg), free(st), free(lg);
    rk_ctx_free(c);
    rk_model_free(m);
}
END_TEST

RK_TEST_SUITE(forward_tiny_suite, RK_NEEDS_SHARED)
{
    Suite *s = suite_create("forward-tiny");
    TCase *tc = tcase_create("expected-logits");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_tiny_expected_logits, 0, 6);
    suite_add_tcase(s, tc);
    return s;
}

/* rk_forward_multi: prompt chunks and decode tokens of several sequences in
 * one pass give each sequence what rk_forward_seq gives it alone in chunks
 * of at most 48 rows: bit-identical with the AVX-512 kernels (also past 48
 * rows in all, and for a sequence longer than 48), close with the portable
 * ones. */
START_TEST(test_multi_matches_solo)
{
    struct rk_model *m = load(rk_test_data("rand-mh-bf16.safetensors"));
    size_t V = (size_t)rk_model_n_vocab(m), SL = rk_state_len(m);
    bool exact = !getenv("RWKVD_NO_AVX512") && __builtin_cpu_supports("avx512f");
    struct rk_ctx *c = make_ctx(m, 2, 96, false), *solo_c = make_ctx(m, 2, 48, false);
    static const size_t shapes[3][4] = {{5, 1, 7, 1}, {40, 1, 30, 1}, {60, 1, 3, 20}};
    static const bool want[4] = {true, true, false, true};
    for (int sh = 0; sh < 3; sh++) {
        const size_t *n = shapes[sh];
        size_t total = n[0] + n[1] + n[2] + n[3];
        uint32_t *tok = malloc(total * sizeof *tok);
        for (size_t t = 0; t < total; t++)
            tok[t] = (uint32_t)(t * 37 + 11) % V;
        float *st = malloc(4 * SL * sizeof(float)), *solo = malloc(SL * sizeof(float));
        float *lg = malloc(4 * V * sizeof(float)), *slg = malloc(V * sizeof(float));
        float *ptr[4];
        for (int s = 0; s < 4; s++) {
            ptr[s] = st + (size_t)s * SL;
            for (size_t i = 0; i < SL; i++)
                ptr[s][i] = (float)((s + 1) * (int)(i % 11)) * 0.02f - 0.05f;
        }
        float *st0 = malloc(4 * SL * sizeof(float));
        memcpy(st0, st, 4 * SL * sizeof(float));
        ck_assert_int_eq(rk_forward_multi(c, 4, tok, n, ptr, want, lg), RK_OK);
        size_t off = 0;
        for (int s = 0; s < 4; s++) {
            memcpy(solo, st0 + (size_t)s * SL, SL * sizeof(float));
            ck_assert_int_eq(rk_forward_seq(solo_c, tok + off, n[s], solo, slg, false), RK_OK);
            off += n[s];
            bool bits = exact;
            if (bits) {
                ck_assert_msg(!memcmp(solo, ptr[s], SL * sizeof(float)), "shape %d seq %d: state", sh, s);
            } else {
                for (size_t i = 0; i < SL; i++)
                    ck_assert_msg(fabsf(solo[i] - ptr[s][i]) <= 1e-4f * (1 + fabsf(solo[i])),
                                  "shape %d seq %d state[%zu] %g vs %g", sh, s, i, ptr[s][i], solo[i]);
            }
            const float *row = lg + (size_t)s * V;
            if (!want[s]) {
                continue;
            } else if (bits) {
                ck_assert_msg(!memcmp(slg, row, V * sizeof(float)), "shape %d seq %d: logits", sh, s);
            } else {
                for (size_t v = 0; v < V; v++)
                    ck_assert_msg(fabsf(slg[v] - row[v]) <= 1e-4f * (1 + fabsf(slg[v])),
                                  "shape %d seq %d logit %zu %g vs %g", sh, s, v, row[v], slg[v]);
            }
        }
        free(tok), free(st), free(st0), free(solo), free(lg), free(slg);
    }
    // bad calls
    uint32_t t1[2] = {1, 2};
    float *s1 = calloc(SL, sizeof(float));
    float *p1[1] = {s1};
    size_t n0[1] = {0}, n97[1] = {97}, n2[1] = {2};
    ck_assert_int_eq(rk_forward_multi(c, 1, t1, n0, p1, NULL, NULL), RK_EINVAL);
    uint32_t *many = calloc(97, sizeof *many);
    ck_assert_int_eq(rk_forward_multi(c, 1, many, n97, p1, NULL, NULL), RK_EINVAL);
    t1[1] = (uint32_t)V;
    ck_assert_int_eq(rk_forward_multi(c, 1, t1, n2, p1, NULL, NULL), RK_ERANGE);
    free(many), free(s1);
    rk_ctx_free(solo_c);
    rk_ctx_free(c);
    rk_model_free(m);
}
END_TEST

/* The AMX prefill path (rk_ctx_set_amx) on the bf16 fixture: against the
 * independent float64 reference within the error of bf16 inputs, and bit-
 * identical between one pass, chunks of 5 rows on 3 threads, token by token
 * and rk_forward_multi beside another sequence. An fp32 model cannot turn it
 * on. Where the CPU or OS offers no AMX the path must report itself off. */
START_TEST(test_amx_prefill)
{
    struct rk_model *m = load(rk_test_data("rand-mh-bf16.safetensors"));
    struct rk_model *mf = load(rk_test_data("rand-mh.safetensors"));
    struct rk_ctx *a = make_ctx(m, 2, 64, false), *ch = make_ctx(m, 3, 5, false);
    struct rk_ctx *f = make_ctx(mf, 2, 64, false);
    ck_assert(!rk_ctx_set_amx(f, true)); /* fp32 weights never take it */
    bool on = rk_ctx_set_amx(a, true);
    ck_assert_int_eq(on, rk_amx_available());
    if (!on) {
        printf("test_amx_prefill: no AMX here, only the off switch was checked\n");
        goto done;
    }
    ck_assert(rk_ctx_set_amx(ch, true));
    size_t V = (size_t)rk_model_n_vocab(m), SL = rk_state_len(m), T;
    uint32_t *toks = read_tokens("rand-mh-bf16.tokens.txt", &T);
    float *exp_all = read_f32("rand-mh-bf16.logits-all.f32", T * V);
    float *s1 = calloc(SL, sizeof(float)), *s2 = calloc(SL, sizeof(float));
    float *s3 = calloc(SL, sizeof(float)), *s4 = calloc(SL, sizeof(float));
    float *l1 = malloc(T * V * sizeof(float)), *l2 = malloc(T * V * sizeof(float));
    float *l3 = malloc(2 * V * sizeof(float));
    ck_assert_int_eq(rk_forward_seq(a, toks, T, s1, l1, true), RK_OK);
    /* bf16 inputs: about 2^-9 relative per value, 0.03 at most here on
     * logits of spread 2.5 (max 10.3); the fp32 path meets 2e-4 */
    rk_check_close(l1, exp_all, T * V, 5e-2, 1e-2, "AMX prefill vs the float64 reference");
    double d = rk_max_abs_diff(l1, exp_all, T * V);
    ck_assert_msg(d > 0, "the AMX path gave the exact logits: it did not run");
    ck_assert_int_eq(rk_forward_seq(ch, toks, T, s2, l2, true), RK_OK);
    ck_assert_msg(!memcmp(l1, l2, T * V * sizeof(float)), "AMX: chunks of 5 differ");
    ck_assert_msg(!memcmp(s1, s2, SL * sizeof(float)), "AMX: state after chunks differs");
    for (size_t t = 0; t < T; t++) {
        ck_assert_int_eq(rk_forward_token(a, toks[t], s3, l2), RK_OK);
        ck_assert_msg(!memcmp(l1 + t * V, l2, V * sizeof(float)), "AMX: token %zu differs", t);
    }
    ck_assert_msg(!memcmp(s1, s3, SL * sizeof(float)), "AMX: token-by-token state differs");
    /* beside a 3-token sequence in one pass */
    size_t n[2] = {3, T};
    uint32_t *mt = malloc((T + 3) * sizeof *mt);
    mt[0] = 5, mt[1] = 6, mt[2] = 7;
    memcpy(mt + 3, toks, T * sizeof *mt);
    float *other = calloc(SL, sizeof(float)), *sts[2] = {other, s4};
    ck_assert_int_eq(rk_forward_multi(a, 2, mt, n, sts, NULL, l3), RK_OK);
    ck_assert_msg(!memcmp(l3 + V, l1 + (T - 1) * V, V * sizeof(float)), "AMX: multi differs");
    ck_assert_msg(!memcmp(s1, s4, SL * sizeof(float)), "AMX: multi state differs");
    /* switched off, the context is exact again */
    ck_assert(!rk_ctx_set_amx(a, false));
    memset(s2, 0, SL * sizeof(float));
    ck_assert_int_eq(rk_forward_seq(a, toks, T, s2, l2, true), RK_OK);
    rk_check_close(l2, exp_all, T * V, 2e-4, 2e-4, "after rk_ctx_set_amx(false)");
    free(toks), free(exp_all), free(s1), free(s2), free(s3), free(s4), free(l1), free(l2);
    free(l3), free(mt), free(other);
done:
    rk_ctx_free(a), rk_ctx_free(ch), rk_ctx_free(f);
    rk_model_free(m), rk_model_free(mf);
}
END_TEST

/* One thread and every count of rk_test_threads() (RWKVD_TEST_THREADS) give
 * the same bits, logits after every position and the final state, for every
 * weight precision and for lengths that select each matrix path (dot, tiled,
 * panel, converted-block sgemm), on the fast, reference and (where it runs)
 * AMX kernels. docs/TUNING.md promises this on every CPU: how the work is
 * split between threads must never change what is computed. */
START_TEST(test_threads_identical)
{
    static const enum rk_dtype types[] = {RK_DTYPE_F32, RK_DTYPE_BF16, RK_DTYPE_F16};
    static const size_t lens[] = {1, 3, 4, 17, 49, 64};
    int counts[8];
    size_t nc = rk_test_threads(counts, 8);
    for (int ti = 0; ti < 3; ti++) {
        struct rk_model_params p = {.wtype = types[ti]};
        struct rk_model *m = NULL;
        struct rk_errbuf eb = {0};
        ck_assert_int_eq(rk_model_load(rk_test_data("rand-mh.safetensors"), &p, &m, &eb), RK_OK);
        size_t V = (size_t)rk_model_n_vocab(m), SL = rk_state_len(m);
        float *s1 = malloc(SL * sizeof(float)), *s2 = malloc(SL * sizeof(float));
        float *l1 = malloc(64 * V * sizeof(float)), *l2 = malloc(64 * V * sizeof(float));
        uint32_t toks[64];
        for (size_t t = 0; t < 64; t++)
            toks[t] = (uint32_t)((t * 131 + 7) % V);
        for (int mode = 0; mode < 3; mode++) { /* fast, reference, AMX */
            for (size_t ci = 0; ci < nc; ci++) {
                struct rk_ctx *one = make_ctx(m, 1, 64, mode == 1);
                struct rk_ctx *many = make_ctx(m, counts[ci], 64, mode == 1);
                if (mode == 2 && !(rk_ctx_set_amx(one, true) && rk_ctx_set_amx(many, true))) {
                    rk_ctx_free(one), rk_ctx_free(many);
                    continue; /* AMX does not run here or not on these weights */
                }
                for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
                    size_t T = lens[li];
                    if (mode == 1 && T > 4)
                        continue; /* the scalar loops are slow; they split no product */
                    for (size_t i = 0; i < SL; i++)
                        s1[i] = s2[i] = (float)((int)(i % 7) - 3) * 0.05f;
                    ck_assert_int_eq(rk_forward_seq(one, toks, T, s1, l1, true), RK_OK);
                    ck_assert_int_eq(rk_forward_seq(many, toks, T, s2, l2, true), RK_OK);
                    ck_assert_msg(!memcmp(l1, l2, T * V * sizeof(float)),
                                  "%s, kernels %d, T=%zu: logits differ between 1 and %d threads",
                                  rk_dtype_name(types[ti]), mode, T, counts[ci]);
                    ck_assert_msg(!memcmp(s1, s2, SL * sizeof(float)),
                                  "%s, kernels %d, T=%zu: state differs between 1 and %d threads",
                                  rk_dtype_name(types[ti]), mode, T, counts[ci]);
                }
                rk_ctx_free(one), rk_ctx_free(many);
            }
        }
        free(s1), free(s2), free(l1), free(l2);
        rk_model_free(m);
    }
}
END_TEST

RK_TEST_SUITE(forward_rand_suite, RK_SELF_CONTAINED)
{
    Suite *s = suite_create("forward-random");
    TCase *tc = tcase_create("reference-outputs");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_rand_reference_outputs, 0, 4);
    tcase_add_loop_test(tc, test_run_shapes_agree, 0, 2);
    tcase_add_loop_test(tc, test_fast_matches_reference, 0, 3);
    tcase_add_test(tc, test_bad_tokens_rejected);
    tcase_add_test(tc, test_ctx_copy_and_run);
    tcase_add_test(tc, test_batch_invariance);
    tcase_add_test(tc, test_multi_matches_solo);
    tcase_add_test(tc, test_amx_prefill);
    suite_add_tcase(s, tc);
    /* the thread-identity checks alone: CK_RUN_CASE=threads (the matrix suite) */
    tc = tcase_create("threads");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_threads_identical);
    suite_add_tcase(s, tc);
    return s;
}

/* --- the bundled demo model ------------------------------------------------ */

#include "rk_config.h"

static const char *demo_path(const char *name)
{
    static char buf[2][4096];
    static int slot;
    char *b = buf[slot++ % 2];
    snprintf(b, 4096, "%s/models/%s", RK_SOURCE_ROOT, name);
    return b;
}

/* models/README.md: logits after each byte of the prompt below, from the zero
 * state, computed by the PyTorch recipe (tools/pretrain). */
START_TEST(test_demo_reference_logits)
{
    const char *prompt = "User: What color is the sky?\n\nAssistant:";
    size_t T = strlen(prompt);
    ck_assert_uint_eq(T, 40);
    struct rk_model *m = load(demo_path("demo.safetensors"));
    ck_assert_int_eq(rk_model_n_vocab(m), 256);
    float *want = read_f32("../../models/demo.ref-logits.f32", T * 256);
    uint32_t toks[64];
    for (size_t i = 0; i < T; i++)
        toks[i] = (uint8_t)prompt[i];
    struct rk_ctx *c = make_ctx(m, 2, 64, false);
    float *state = calloc(rk_state_len(m), sizeof(float)), *lg = malloc(T * 256 * sizeof(float));
    ck_assert_int_eq(rk_forward_seq(c, toks, T, state, lg, true), RK_OK);
    rk_check_close(lg, want, T * 256, 1e-4, 1e-4, "demo model vs its PyTorch reference logits");
    free(want), free(state), free(lg);
    rk_ctx_free(c);
    rk_model_free(m);
}
END_TEST

/* models/README.md: mean next-byte cross-entropy over models/heldout.txt in 8
 * chunks of 512 bytes, each from the zero state = 0.756815 nats/byte. */
START_TEST(test_demo_heldout_loss)
{
    struct rk_model *m = load(demo_path("demo.safetensors"));
    size_t len = 0;
    unsigned char *txt = rk_test_read_file(demo_path("heldout.txt"), &len);
    ck_assert(txt != NULL);
    ck_assert_uint_eq(len, 4096);
    struct rk_ctx *c = make_ctx(m, 2, 128, false);
    size_t SL = rk_state_len(m), CH = 512;
    float *state = malloc(SL * sizeof(float)), *lg = malloc(CH * 256 * sizeof(float));
    uint32_t toks[512];
    double sum = 0;
    size_t count = 0;
    for (size_t c0 = 0; c0 < len; c0 += CH) {
        memset(state, 0, SL * sizeof(float));
        for (size_t i = 0; i < CH; i++)
            toks[i] = txt[c0 + i];
        ck_assert_int_eq(rk_forward_seq(c, toks, CH, state, lg, true), RK_OK);
        for (size_t t = 0; t + 1 < CH; t++) {
            sum -= rk_logprob(lg + t * 256, 256, toks[t + 1]);
            count++;
        }
    }
    double loss = sum / (double)count;
    ck_assert_uint_eq(count, 4088);
    ck_assert_msg(fabs(loss - 0.756815) < 1e-3, "held-out loss %.6f, the card says 0.756815",
                  loss);
    free(txt), free(state), free(lg);
    rk_ctx_free(c);
    rk_model_free(m);
}
END_TEST

RK_TEST_SUITE(demo_model_suite, RK_SELF_CONTAINED)
{
    Suite *s = suite_create("demo-model");
    TCase *tc = tcase_create("demo");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_demo_reference_logits);
    tcase_add_test(tc, test_demo_heldout_loss);
    suite_add_tcase(s, tc);
    return s;
}

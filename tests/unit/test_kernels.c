/*
 * test_kernels.c - the element-wise and WKV kernels (core/kernels_wkv.c,
 * core/kernels_vec.c) and the CPU decision (core/cpu.c).
 *
 * Each fast kernel against its plain reference (`ref` = true) on random
 * inputs of the model's ranges. With AVX-512 the two are different code and
 * differ by rounding only (FMA, a different summation order or exponential),
 * so they must agree within a few ulps scaled by the magnitudes involved;
 * without it (RWKVD_NO_AVX512=1, or another CPU) both calls take the
 * reference and must agree exactly. The WKV step itself is checked against a
 * double loop in tests/golden/test_backward.c (test_wkv_head), the
 * exponential sum bit for bit in test_sampler.c (exp_sum_paths_agree), and
 * whole passes fast against reference in test_forward.c.
 */
#include "check_common.h"
#include "core_int.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

enum { HN = RK_HEAD_SIZE };

/* A uniform value in [-0.5, 0.5) from a 64-bit LCG. */
static float lcg_unit(uint64_t *seed)
{
    *seed = *seed * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(*seed >> 40) / (double)(1ull << 24) - 0.5);
}

static void fill(float *p, size_t n, uint64_t *seed, float scale, float offset)
{
    for (size_t i = 0; i < n; i++)
        p[i] = offset + scale * lcg_unit(seed);
}

/* |a - b| <= tol (1 + |b|), or both exactly equal without AVX-512. */
static void close_enough(const char *what, const float *a, const float *b, size_t n, double tol)
{
    bool exact = !rk__cpu()->avx512;
    for (size_t i = 0; i < n; i++) {
        if (exact)
            ck_assert_msg(memcmp(&a[i], &b[i], sizeof(float)) == 0,
                          "%s[%zu]: %.9g vs %.9g (the same code must give the same bits)", what,
                          i, a[i], b[i]);
        else
            ck_assert_msg(fabs((double)a[i] - b[i]) <= tol * (1.0 + fabs((double)b[i])),
                          "%s[%zu]: fast %.9g vs reference %.9g", what, i, a[i], b[i]);
    }
}

/* The decision: one struct for the process, consistent with its accessors,
 * and the switches as the environment says. */
START_TEST(cpu_decided_once)
{
    const struct rk__cpu *c = rk__cpu();
    ck_assert_ptr_eq(c, rk__cpu());
    ck_assert(c->avx512 == rk__use_avx512());
    const char *e = getenv("RWKVD_NO_AVX512");
    if (e && *e && *e != '0')
        ck_assert(!c->avx512);
    e = getenv("RWKVD_TILED_ROWS_MAX");
    ck_assert_uint_eq(c->tiled_rows, e && *e ? (size_t)atol(e) : 48u);
    ck_assert_uint_eq(rk__tiled_rows(), c->tiled_rows);
    e = getenv("RWKVD_NO_PANELS");
    ck_assert(c->panels == !(e && *e && *e != '0'));
    e = getenv("RWKVD_NO_AMX");
    if ((e && *e && *e != '0') || !c->avx512)
        ck_assert(!rk__amx_usable());
}
END_TEST

/* rk__wkv_seq: T tokens C floats apart on one head, fast against reference:
 * the state and every y. */
START_TEST(wkv_seq_paths_agree)
{
    enum { T = 9, C = 3 * HN };
    static float S[2][HN * HN], vec[6][T * C], y[2][T * C];
    uint64_t seed = 5;
    fill(S[0], HN * HN, &seed, 2.0f, 0.0f);
    memcpy(S[1], S[0], sizeof S[0]);
    for (int q = 0; q < 6; q++)
        fill(vec[q], T * C, &seed, 1.0f, 0.0f);
    for (int i = 0; i < T * C; i++) {
        vec[1][i] = 0.75f + 0.45f * vec[1][i]; /* decay in (0.5, 1) */
        vec[5][i] += 0.5f;                     /* alpha in (0, 1) */
    }
    size_t o = HN; /* the second head of each token */
    for (int p = 0; p < 2; p++)
        rk__wkv_seq(p == 1, S[p], T, C, vec[0] + o, vec[1] + o, vec[2] + o, vec[3] + o,
                    vec[4] + o, vec[5] + o, y[p] + o);
    close_enough("S", S[0], S[1], HN * HN, 1e-5);
    for (int t = 0; t < T; t++)
        close_enough("y", y[0] + (size_t)t * C + o, y[1] + (size_t)t * C + o, HN, 1e-5);
}
END_TEST

/* rk__wkv_out: GroupNorm, bonus and gate of one head. */
START_TEST(wkv_out_paths_agree)
{
    static float in[8][HN], out[2][HN];
    uint64_t seed = 7;
    for (int round = 0; round < 20; round++) {
        for (int q = 0; q < 8; q++)
            fill(in[q], HN, &seed, 1.0f + (float)(round % 4), 0.0f);
        fill(in[0], HN, &seed, 1.0f, 0.25f * (float)round); /* y: means away from 0 */
        for (int p = 0; p < 2; p++)
            rk__wkv_out(p == 1, out[p], in[0], in[1], in[2], in[3], in[4], in[5], in[6], in[7],
                        64e-5f);
        close_enough("out", out[0], out[1], HN, 1e-4);
    }
}
END_TEST

/* rk__wkv_head_bwd: the reverse step, every output (G, dv and the five
 * column sums, which it accumulates into). */
START_TEST(wkv_bwd_paths_agree)
{
    static float G[2][HN * HN], Sold[HN * HN], Snew[HN * HN], vec[9][HN];
    static float dv[2][HN], cd[2][5][HN];
    uint64_t seed = 9;
    for (int round = 0; round < 10; round++) {
        fill(G[0], HN * HN, &seed, 1.0f, 0.0f);
        memcpy(G[1], G[0], sizeof G[0]);
        fill(Sold, HN * HN, &seed, 2.0f, 0.0f);
        fill(Snew, HN * HN, &seed, 2.0f, 0.0f);
        for (int q = 0; q < 9; q++)
            fill(vec[q], HN, &seed, 1.0f, 0.0f);
        fill(dv[0], HN, &seed, 1.0f, 0.0f);
        memcpy(dv[1], dv[0], sizeof dv[0]);
        fill(&cd[0][0][0], 5 * HN, &seed, 1.0f, 0.0f);
        memcpy(cd[1], cd[0], sizeof cd[0]);
        /* dy, sa, r, w, k, v, aa, bb */
        for (int p = 0; p < 2; p++)
            rk__wkv_head_bwd(p == 1, HN, G[p], Sold, Snew, vec[0], vec[1], vec[2], vec[3],
                             vec[4], vec[5], vec[6], vec[7], dv[p], cd[p][0], cd[p][1], cd[p][2],
                             cd[p][3], cd[p][4]);
        close_enough("G", G[0], G[1], HN * HN, 1e-4);
        close_enough("dv", dv[0], dv[1], HN, 1e-4);
        close_enough("cd", &cd[0][0][0], &cd[1][0][0], 5 * HN, 1e-4);
    }
}
END_TEST

/* rk__layernorm over lengths with and without a vector tail. */
START_TEST(layernorm_paths_agree)
{
    static float x[1000], w[1000], b[1000], out[2][1000];
    const int lens[] = {1, 15, 16, 64, 100, 768, 1000};
    uint64_t seed = 3;
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
        int n = lens[li];
        fill(x, (size_t)n, &seed, 4.0f, 3.0f);
        fill(w, (size_t)n, &seed, 0.2f, 1.0f);
        fill(b, (size_t)n, &seed, 0.1f, 0.0f);
        for (int p = 0; p < 2; p++)
            rk__layernorm(p == 1, out[p], x, w, b, n, 1e-5f);
        close_enough("ln", out[0], out[1], (size_t)n, 1e-6);
    }
}
END_TEST

/* rk__decay_gates and rk__value_residual, lengths with a masked tail,
 * pre-activations across the sigmoid's range. */
START_TEST(gates_paths_agree)
{
    enum { C = 200 };
    static float w[2][C], a[2][C], v[2][C], w0[C], a0[C], v0[C], vf[C], nu[C];
    uint64_t seed = 13;
    const int lens[] = {16, 40, C};
    for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
        int n = lens[li];
        fill(w[0], C, &seed, 16.0f, 0.0f);
        fill(a[0], C, &seed, 16.0f, 0.0f);
        fill(v[0], C, &seed, 2.0f, 0.0f);
        memcpy(w[1], w[0], sizeof w[0]);
        memcpy(a[1], a[0], sizeof a[0]);
        memcpy(v[1], v[0], sizeof v[0]);
        fill(w0, C, &seed, 4.0f, 0.0f);
        fill(a0, C, &seed, 4.0f, 0.0f);
        fill(v0, C, &seed, 4.0f, 0.0f);
        fill(vf, C, &seed, 2.0f, 0.0f);
        fill(nu, C, &seed, 8.0f, 0.0f);
        for (int p = 0; p < 2; p++) {
            rk__decay_gates(p == 1, w[p], a[p], w0, a0, n);
            rk__value_residual(p == 1, v[p], vf, v0, nu, n);
        }
        close_enough("w", w[0], w[1], C, 1e-6);
        close_enough("a", a[0], a[1], C, 1e-6);
        close_enough("v", v[0], v[1], C, 1e-6);
    }
}
END_TEST

RK_TEST_SUITE(kernels_suite, RK_SELF_CONTAINED)
{
    Suite *s = suite_create("kernels");
    TCase *tc = tcase_create("paths");
    tcase_add_test(tc, cpu_decided_once);
    tcase_add_test(tc, wkv_seq_paths_agree);
    tcase_add_test(tc, wkv_out_paths_agree);
    tcase_add_test(tc, wkv_bwd_paths_agree);
    tcase_add_test(tc, layernorm_paths_agree);
    tcase_add_test(tc, gates_paths_agree);
    suite_add_tcase(s, tc);
    return s;
}

/*
 * test_sampler.c - sampler (determinism, greedy, top-k/top-p/min-p,
 * temperature, penalties, bias, parameter checks), log-probabilities and the
 * stop-sequence matcher. Self-contained.
 */
#include "check_common.h"
#include "core_int.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t test_rng(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

/* Uniform in [-1, 1). */
static float test_unit(uint64_t *x) { return (float)((test_rng(x) >> 11) * 0x1.0p-52 - 1.0); }

static struct rk_sampler *make(const struct rk_sampler_params *p, size_t V)
{
    struct rk_sampler *s = NULL;
    ck_assert_int_eq(rk_sampler_create(p, V, &s), RK_OK);
    ck_assert_ptr_nonnull(s);
    return s;
}

/* Sample once from a copy of `logits` (sampling modifies its input). */
static uint32_t draw(struct rk_sampler *s, const float *logits, size_t V, float *scratch)
{
    memcpy(scratch, logits, V * sizeof *scratch);
    uint32_t tok = UINT32_MAX;
    ck_assert_int_eq(rk_sampler_sample(s, scratch, &tok), RK_OK);
    ck_assert_uint_lt(tok, V);
    return tok;
}

/* --- parameters ----------------------------------------------------------- */

START_TEST(params_defaults_and_validation)
{
    struct rk_sampler_params p;
    rk_sampler_params_default(&p);
    ck_assert(p.temperature == 1.0f && p.top_p == 1.0f && p.top_k == 0 && p.min_p == 0.0f);
    ck_assert(p.presence_penalty == 0.0f && p.frequency_penalty == 0.0f);
    ck_assert(p.repetition_penalty == 1.0f && p.penalty_last_n == 0 && p.seed == 0);
    ck_assert(p.bias == NULL && p.n_bias == 0);

    struct rk_sampler *s = make(&p, 10);
    rk_sampler_free(s);
    s = make(NULL, 10);
    rk_sampler_free(s);
    rk_sampler_free(NULL);

    struct rk_logit_bias bad_tok = {10, 1.0f}, bad_val = {3, NAN}, inf_val = {3, INFINITY};
    struct {
        const char *what;
        struct rk_sampler_params p;
    } bad[] = {
        {"temperature < 0", p}, {"temperature nan", p}, {"temperature inf", p}, {"top_k < 0", p},
        {"top_p 0", p},         {"top_p > 1", p},       {"top_p nan", p},       {"min_p < 0", p},
        {"min_p > 1", p},       {"presence > 2", p},    {"frequency < -2", p},  {"presence nan", p},
        {"rep 0", p},           {"rep < 0", p},         {"rep inf", p},         {"last_n < 0", p},
        {"bias token", p},      {"bias nan", p},        {"bias inf", p},        {"bias NULL", p},
        {"min_p nan", p},
    };
    int i = 0;
    bad[i++].p.temperature = -0.1f;
    bad[i++].p.temperature = NAN;
    bad[i++].p.temperature = INFINITY;
    bad[i++].p.top_k = -1;
    bad[i++].p.top_p = 0.0f;
    bad[i++].p.top_p = 1.01f;
    bad[i++].p.top_p = NAN;
    bad[i++].p.min_p = -0.01f;
    bad[i++].p.min_p = 1.5f;
    bad[i++].p.presence_penalty = 2.5f;
    bad[i++].p.frequency_penalty = -2.01f;
    bad[i++].p.presence_penalty = NAN;
    bad[i++].p.repetition_penalty = 0.0f;
    bad[i++].p.repetition_penalty = -1.0f;
    bad[i++].p.repetition_penalty = INFINITY;
    bad[i++].p.penalty_last_n = -1;
    bad[i].p.bias = &bad_tok, bad[i++].p.n_bias = 1;
    bad[i].p.bias = &bad_val, bad[i++].p.n_bias = 1;
    bad[i].p.bias = &inf_val, bad[i++].p.n_bias = 1;
    bad[i].p.bias = NULL, bad[i++].p.n_bias = 1;
    bad[i++].p.min_p = NAN;
    ck_assert_int_eq(i, (int)(sizeof bad / sizeof bad[0]));
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        s = (struct rk_sampler *)1;
        ck_assert_msg(rk_sampler_create(&bad[k].p, 10, &s) == RK_EINVAL, "%s accepted",
                      bad[k].what);
        ck_assert_ptr_null(s);
    }
    ck_assert_int_eq(rk_sampler_create(&p, 0, &s), RK_EINVAL);
    ck_assert_int_eq(rk_sampler_create(&p, 10, NULL), RK_EINVAL);

    /* Boundary values are accepted. */
    struct rk_sampler_params q = p;
    q.temperature = 0.0f;
    q.top_p = 1.0f;
    q.min_p = 1.0f;
    q.presence_penalty = -2.0f;
    q.frequency_penalty = 2.0f;
    q.repetition_penalty = 0.01f;
    q.penalty_last_n = 64;
    struct rk_logit_bias ok = {9, -100.0f};
    q.bias = &ok;
    q.n_bias = 1;
    s = make(&q, 10);
    rk_sampler_free(s);

    /* Allocation failures give RK_ENOMEM and no object. */
    q.temperature = 1.0f;
    bool done = false;
    for (long n = 1; n < 20 && !done; n++) {
        s = NULL;
        rk__alloc_fail_after(n);
        int rc = rk_sampler_create(&q, 1000, &s);
        rk__alloc_fail_after(0);
        if (rc == RK_OK) {
            rk_sampler_free(s);
            done = true;
        } else {
            ck_assert_int_eq(rc, RK_ENOMEM);
            ck_assert_ptr_null(s);
        }
    }
    ck_assert(done);
}
END_TEST

/* --- greedy and filters --------------------------------------------------- */

START_TEST(greedy_is_argmax)
{
    float l[6] = {0.5f, 2.0f, -1.0f, 2.0f, NAN, 1.0f}, tmp[6];
    struct rk_sampler *s = make(NULL, 6);
    ck_assert_uint_eq(draw(s, l, 6, tmp), 1); /* tie 1/3: lowest id, NaN skipped */
    rk_sampler_free(s);

    uint64_t x = 5;
    enum { V = 1000 };
    static float big[V], scratch[V];
    struct rk_sampler_params p;
    rk_sampler_params_default(&p);
    for (int it = 0; it < 50; it++) {
        for (int i = 0; i < V; i++)
            big[i] = 10.0f * test_unit(&x);
        uint32_t best = 0;
        for (uint32_t i = 1; i < V; i++)
            if (big[i] > big[best])
                best = i;
        p.temperature = 0.0f;
        p.top_k = 0;
        p.seed = (uint64_t)it;
        s = make(&p, V);
        ck_assert_uint_eq(draw(s, big, V, scratch), best);
        rk_sampler_free(s);
        /* top_k = 1 and a tiny top_p are greedy at any temperature. */
        p.temperature = 1.5f;
        p.top_k = 1;
        s = make(&p, V);
        ck_assert_uint_eq(draw(s, big, V, scratch), best);
        rk_sampler_free(s);
        p.top_k = 0;
        p.top_p = 1e-6f;
        s = make(&p, V);
        ck_assert_uint_eq(draw(s, big, V, scratch), best);
        rk_sampler_free(s);
        p.top_p = 1.0f;
        p.min_p = 1.0f;
        s = make(&p, V);
        ck_assert_uint_eq(draw(s, big, V, scratch), best);
        rk_sampler_free(s);
        p.min_p = 0.0f;
    }

    /* Every logit NaN: nothing to pick. */
    float nan4[4] = {NAN, NAN, NAN, NAN};
    uint32_t tok;
    s = make(NULL, 4);
    ck_assert_int_eq(rk_sampler_sample(s, nan4, &tok), RK_ENUMERIC);
    rk_sampler_free(s);
    s = make(&p, 4);
    float nan4b[4] = {NAN, NAN, NAN, NAN};
    ck_assert_int_eq(rk_sampler_sample(s, nan4b, &tok), RK_ENUMERIC);
    rk_sampler_free(s);
}
END_TEST

/* Probabilities 0.5, 0.3, 0.15, 0.05 (logits are their logs). */
static const float quad[4] = {-0.693147181f, -1.203972804f, -1.897119985f, -2.995732274f};

/* Draw n times and count tokens. */
static void histogram(const struct rk_sampler_params *p, const float *l, size_t V, int n,
                      int *count)
{
    struct rk_sampler *s = make(p, V);
    float *tmp = malloc(V * sizeof *tmp);
    ck_assert_ptr_nonnull(tmp);
    memset(count, 0, V * sizeof *count);
    for (int i = 0; i < n; i++)
        count[draw(s, l, V, tmp)]++;
    free(tmp);
    rk_sampler_free(s);
}

START_TEST(filters_small_vocab)
{
    struct rk_sampler_params p;
    rk_sampler_params_default(&p);
    p.seed = 99;
    int c[4];
    const int N = 20000;

    /* min_p 0.5 keeps p >= 0.25: tokens 0 and 1, in ratio 5:3. */
    p.min_p = 0.5f;
    histogram(&p, quad, 4, N, c);
    ck_assert(c[2] == 0 && c[3] == 0);
    ck_assert_msg(fabs((double)c[0] / N - 0.625) < 0.02, "min_p ratio %d:%d", c[0], c[1]);
    /* min_p 0.2 keeps p >= 0.1: three tokens. */
    p.min_p = 0.2f;
    histogram(&p, quad, 4, N, c);
    ck_assert(c[2] > 0 && c[3] == 0);
    p.min_p = 0.0f;

    /* top_p 0.7: 0.5 is not enough, 0.5+0.3 is: tokens 0 and 1. */
    p.top_p = 0.7f;
    histogram(&p, quad, 4, N, c);
    ck_assert(c[0] > 0 && c[1] > 0 && c[2] == 0 && c[3] == 0);
    ck_assert(fabs((double)c[0] / N - 0.625) < 0.02);
    /* top_p 0.9: three tokens. */
    p.top_p = 0.9f;
    histogram(&p, quad, 4, N, c);
    ck_assert(c[2] > 0 && c[3] == 0);
    /* top_p with min_p: the stricter wins. */
    p.min_p = 0.5f;
    histogram(&p, quad, 4, N, c);
    ck_assert(c[1] > 0 && c[2] == 0 && c[3] == 0);
    p.min_p = 0.0f;
    p.top_p = 1.0f;

    /* top_k 2. */
    p.top_k = 2;
    histogram(&p, quad, 4, N, c);
    ck_assert(c[0] > 0 && c[1] > 0 && c[2] == 0 && c[3] == 0);
    p.top_k = 0;

    /* No filter: all four with the right frequencies. */
    histogram(&p, quad, 4, N, c);
    static const double want[4] = {0.5, 0.3, 0.15, 0.05};
    for (int i = 0; i < 4; i++)
        ck_assert_msg(fabs((double)c[i] / N - want[i]) < 0.015, "token %d: %d", i, c[i]);
}
END_TEST

/* Temperature reshapes the distribution as softmax(l / T): chi-square over
 * 5 tokens (4 degrees of freedom; 30 is far beyond the 99.99% point 23.5). */
START_TEST(temperature_distribution)
{
    const float l[5] = {1.0f, 0.5f, 0.0f, -0.5f, -1.0f};
    const float temps[] = {0.3f, 0.7f, 1.0f, 2.0f, 10.0f};
    struct rk_sampler_params p;
    rk_sampler_params_default(&p);
    for (size_t k = 0; k < sizeof temps / sizeof temps[0]; k++) {
        p.temperature = temps[k];
        p.seed = 1000 + k;
        int c[5];
        const int N = 40000;
        histogram(&p, l, 5, N, c);
        double z = 0, e[5];
        for (int i = 0; i < 5; i++)
            z += e[i] = exp((double)l[i] / temps[k]);
        double chi2 = 0;
        for (int i = 0; i < 5; i++) {
            double exp_n = e[i] / z * N;
            chi2 += (c[i] - exp_n) * (c[i] - exp_n) / exp_n;
        }
        ck_assert_msg(chi2 < 30.0, "T=%g: chi2 %.2f", temps[k], chi2);
    }
}
END_TEST

/* Large vocabulary: top-k and top-p pick exactly the naive sets. */
static int cmp_desc(const void *a, const void *b)
{
    const float *x = a, *y = b;
    return *x < *y ? 1 : *x > *y ? -1 : 0;
}

/* Size of the top-p nucleus of logits sorted descending, at temperature T. */
static int nucleus_size(const float *sorted, int V, double T, double top_p)
{
    double z = 0, acc = 0;
    for (int i = 0; i < V; i++)
        z += exp(((double)sorted[i] - sorted[0]) / T);
    int m = 0;
    while (acc < top_p * z)
        acc += exp(((double)sorted[m++] - sorted[0]) / T);
    return m;
}

START_TEST(filters_large_vocab)
{
    enum { V = 65536 };
    float *l = malloc(V * sizeof *l), *sorted = malloc(V * sizeof *sorted);
    float *tmp = malloc(V * sizeof *tmp);
    int *c = malloc(V * sizeof *c);
    ck_assert(l && sorted && tmp && c);
    uint64_t x = 31337;
    for (int i = 0; i < V; i++)
        l[i] = 4.0f * test_unit(&x);
    memcpy(sorted, l, V * sizeof *l);
    qsort(sorted, V, sizeof *sorted, cmp_desc);

    /* top_k 50 at a high temperature: nearly uniform over exactly the top 50. */
    struct rk_sampler_params p;
    rk_sampler_params_default(&p);
    p.top_k = 50;
    p.temperature = 100.0f;
    histogram(&p, l, V, 2000, c);
    int hit = 0;
    for (int i = 0; i < V; i++) {
        if (c[i]) {
            ck_assert_msg(l[i] >= sorted[49], "token %d outside the top 50", i);
            hit++;
        }
    }
    ck_assert_int_eq(hit, 50);

    /* top_p on a peaked distribution: 40 strong tokens over a flat
     * background. The nucleus from a full sort (in double) is small, and
     * every member must be drawn. */
    for (int j = 0; j < 40; j++)
        l[(j * 7919 + 11) % V] = 10.0f + 0.1f * (float)j;
    memcpy(sorted, l, V * sizeof *l);
    qsort(sorted, V, sizeof *sorted, cmp_desc);
    p.top_k = 0;
    p.temperature = 1.0f;
    p.top_p = 0.5f;
    int m = nucleus_size(sorted, V, 1.0, 0.5);
    ck_assert(m >= 3 && m <= 40);
    histogram(&p, l, V, 800, c);
    hit = 0;
    for (int i = 0; i < V; i++) {
        if (c[i]) {
            /* allow the boundary token either way (rounding of the sums) */
            ck_assert_msg(l[i] >= sorted[m], "token %d (logit %g) outside the nucleus of %d", i,
                          (double)l[i], m);
            hit++;
        }
    }
    ck_assert_msg(hit >= m - 1 && hit <= m + 1, "nucleus of %d tokens, drew %d", m, hit);

    /* A flat distribution: the nucleus holds thousands of tokens and its
     * boundary falls inside one histogram bin. Draws stay inside it. */
    for (int i = 0; i < V; i++)
        l[i] = 4.0f * test_unit(&x);
    memcpy(sorted, l, V * sizeof *l);
    qsort(sorted, V, sizeof *sorted, cmp_desc);
    p.temperature = 0.5f;
    p.top_p = 0.3f;
    m = nucleus_size(sorted, V, 0.5, 0.3);
    ck_assert(m > 1000);
    histogram(&p, l, V, 300, c);
    hit = 0;
    for (int i = 0; i < V; i++) {
        if (c[i]) {
            ck_assert_msg(l[i] >= sorted[m], "token %d (logit %g) outside the nucleus of %d", i,
                          (double)l[i], m);
            hit++;
        }
    }
    ck_assert_int_gt(hit, 200);

    /* Speed: no full sort per token. */
    p.top_k = 40;
    p.top_p = 0.9f;
    p.temperature = 0.8f;
    struct rk_sampler *s = make(&p, V);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < 200; i++)
        draw(s, l, V, tmp);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    rk_sampler_free(s);
    double us =
        ((double)(t1.tv_sec - t0.tv_sec) * 1e6 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e3) / 200;
    p.top_k = 0;
    s = make(&p, V);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < 200; i++)
        draw(s, l, V, tmp);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    rk_sampler_free(s);
    double us_p =
        ((double)(t1.tv_sec - t0.tv_sec) * 1e6 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e3) / 200;
    fprintf(stderr, "sample V=65536: top_k 40 + top_p 0.9: %.0f us; top_p 0.9 alone: %.0f us\n", us,
            us_p);
    free(l);
    free(sorted);
    free(tmp);
    free(c);
}
END_TEST

/* --- determinism ---------------------------------------------------------- */

START_TEST(determinism)
{
    enum { V = 300 };
    float l[V], tmp[V];
    uint64_t x = 17;
    for (int i = 0; i < V; i++)
        l[i] = 2.0f * test_unit(&x);
    struct rk_sampler_params p;
    rk_sampler_params_default(&p);
    p.top_k = 100;
    p.top_p = 0.95f;
    p.presence_penalty = 0.3f;
    p.seed = 42;
    uint32_t a[200], b[200], c[200];
    struct rk_sampler *s1 = make(&p, V), *s2 = make(&p, V);
    p.seed = 43;
    struct rk_sampler *s3 = make(&p, V);
    for (int i = 0; i < 200; i++) {
        a[i] = draw(s1, l, V, tmp);
        b[i] = draw(s2, l, V, tmp);
        c[i] = draw(s3, l, V, tmp);
    }
    ck_assert_mem_eq(a, b, sizeof a);
    int differ = 0;
    for (int i = 0; i < 200; i++)
        differ += a[i] != c[i];
    ck_assert_int_gt(differ, 100);
    rk_sampler_free(s1);
    rk_sampler_free(s2);
    rk_sampler_free(s3);
}
END_TEST

/* rk_sampler_reset: a reused sampler behaves exactly like a new one made
 * with the new parameters (penalty context emptied, bias and window sized
 * anew, stream reseeded), and bad parameters change nothing. */
START_TEST(reset_equals_create)
{
    enum { V = 300, N = 120 };
    float l[V], tmp[V];
    uint64_t x = 23;
    for (int i = 0; i < V; i++)
        l[i] = 2.0f * test_unit(&x);
    struct rk_logit_bias bias1[1] = {{7, 3.0f}};
    struct rk_logit_bias bias2[3] = {{5, 2.0f}, {9, -100.0f}, {11, 1.5f}};
    struct rk_sampler_params a, b;
    rk_sampler_params_default(&a);
    a.top_k = 50;
    a.frequency_penalty = 0.5f;
    a.penalty_last_n = 4;
    a.bias = bias1;
    a.n_bias = 1;
    a.seed = 1;
    b = a;
    b.top_p = 0.9f;
    b.presence_penalty = 0.7f;
    b.penalty_last_n = 64; /* a larger window and more biases than before */
    b.bias = bias2;
    b.n_bias = 3;
    b.seed = 2;
    struct rk_sampler *used = make(&a, V), *fresh = make(&b, V);
    for (int i = 0; i < N; i++)
        (void)draw(used, l, V, tmp);
    ck_assert_int_eq(rk_sampler_reset(used, &b), RK_OK);
    uint32_t u[N], f[N];
    for (int i = 0; i < N; i++) {
        u[i] = draw(used, l, V, tmp);
        f[i] = draw(fresh, l, V, tmp);
    }
    ck_assert_mem_eq(u, f, sizeof u);
    /* invalid parameters: RK_EINVAL, and the stream goes on untouched */
    struct rk_sampler_params bad = b;
    bad.top_p = 0.0f;
    ck_assert_int_eq(rk_sampler_reset(used, &bad), RK_EINVAL);
    bad = b;
    bias2[1].token = V;
    ck_assert_int_eq(rk_sampler_reset(used, &bad), RK_EINVAL);
    for (int i = 0; i < N; i++)
        ck_assert_uint_eq(draw(used, l, V, tmp), draw(fresh, l, V, tmp));
    /* NULL: greedy, like rk_sampler_create(NULL) */
    ck_assert_int_eq(rk_sampler_reset(used, NULL), RK_OK);
    uint32_t best = 0;
    for (uint32_t i = 1; i < V; i++)
        best = l[i] > l[best] ? i : best;
    ck_assert_uint_eq(draw(used, l, V, tmp), best);
    ck_assert_int_eq(rk_sampler_reset(NULL, &b), RK_EINVAL);
    rk_sampler_free(used);
    rk_sampler_free(fresh);
}
END_TEST

/* The stream is specified (xoshiro256** from splitmix64(seed), one 53-bit
 * uniform per token, cumulative walk in id order when nothing is filtered), so
 * the draws are the same on every machine. Expected values were computed
 * independently (Python, double precision) from that description; the
 * closest draw is 0.7% of the mass away from a boundary. */
START_TEST(determinism_golden)
{
    const float l[8] = {0.5f, 1.0f, -0.3f, 2.0f, 0.0f, 1.5f, -1.0f, 0.7f};
    static const uint32_t want[40] = {
        5, 1, 7, 0, 3, 0, 1, 3, 3, 7, 5, 3, 5, 7, 1, 5, 3, 5, 3, 3,
        1, 3, 1, 3, 0, 0, 0, 3, 5, 7, 5, 3, 3, 7, 3, 1, 3, 5, 1, 5,
    };
    float tmp[8];
    struct rk_sampler_params p;
    rk_sampler_params_default(&p);
    p.seed = 12345;
    struct rk_sampler *s = make(&p, 8);
    for (int i = 0; i < 40; i++)
        ck_assert_msg(draw(s, l, 8, tmp) == want[i], "draw %d differs", i);
    rk_sampler_free(s);
}
END_TEST

/* --- penalties and bias --------------------------------------------------- */

START_TEST(penalties_exact)
{
    enum { V = 10 };
    float l[V] = {1.0f, -1.0f, 0.5f, 2.0f, -0.5f, 3.0f, 0.0f, 1.5f, -2.0f, 0.25f}, x[V];
    struct rk_logit_bias bias[2] = {{3, 0.75f}, {8, -0.5f}};
    struct rk_sampler_params p;
    rk_sampler_params_default(&p);
    p.temperature = 0.0f;
    p.presence_penalty = 0.5f;
    p.frequency_penalty = 0.25f;
    p.repetition_penalty = 1.5f;
    p.bias = bias;
    p.n_bias = 2;
    struct rk_sampler *s = make(&p, V);
    bias[0].bias = 99.0f; /* the sampler keeps its own copy */
    rk_sampler_accept(s, 3);
    rk_sampler_accept(s, 3);
    rk_sampler_accept(s, 4);
    rk_sampler_accept(s, 8);
    rk_sampler_accept(s, V); /* out of range: ignored */
    memcpy(x, l, sizeof l);
    uint32_t tok;
    ck_assert_int_eq(rk_sampler_sample(s, x, &tok), RK_OK);
    float want[V];
    memcpy(want, l, sizeof l);
    want[3] = (l[3] + 0.75f) / 1.5f - (2 * 0.25f + 0.5f);
    want[4] = l[4] * 1.5f - (0.25f + 0.5f);
    want[8] = (l[8] - 0.5f) * 1.5f - (0.25f + 0.5f);
    rk_check_close(x, want, V, 1e-6, 1e-6, "penalised logits");
    ck_assert_uint_eq(tok, 5);
    rk_sampler_free(s);

    /* The picked token is accepted: presence pushes the next pick away. */
    p.repetition_penalty = 1.0f;
    p.frequency_penalty = 0.0f;
    p.n_bias = 0;
    p.bias = NULL;
    s = make(&p, 2);
    float two[2] = {1.0f, 0.9f};
    ck_assert_int_eq(rk_sampler_sample(s, two, &tok), RK_OK);
    ck_assert_uint_eq(tok, 0);
    two[0] = 1.0f;
    two[1] = 0.9f;
    ck_assert_int_eq(rk_sampler_sample(s, two, &tok), RK_OK);
    ck_assert_uint_eq(tok, 1);
    rk_sampler_free(s);

    /* A window of 2: only the last two tokens count. */
    p.presence_penalty = 0.0f;
    p.frequency_penalty = 1.0f;
    p.penalty_last_n = 2;
    s = make(&p, V);
    rk_sampler_accept(s, 3);
    rk_sampler_accept(s, 3);
    rk_sampler_accept(s, 3);
    rk_sampler_accept(s, 5);
    memcpy(x, l, sizeof l);
    ck_assert_int_eq(rk_sampler_sample(s, x, &tok), RK_OK);
    memcpy(want, l, sizeof l);
    want[3] = l[3] - 1.0f;
    want[5] = l[5] - 1.0f;
    rk_check_close(x, want, V, 0, 0, "windowed frequency penalty");
    /* 5 (3.0 - 1) beats 3 (2.0 - 1) and is accepted, evicting one 3. */
    ck_assert_uint_eq(tok, 5);
    memcpy(x, l, sizeof l);
    ck_assert_int_eq(rk_sampler_sample(s, x, &tok), RK_OK);
    want[3] = l[3];
    want[5] = l[5] - 2.0f;
    rk_check_close(x, want, V, 0, 0, "window after eviction");
    rk_sampler_free(s);
}
END_TEST

START_TEST(bias_bans_and_forces)
{
    const float l[4] = {0.0f, 0.2f, 5.0f, 0.1f};
    float tmp[4];
    struct rk_logit_bias ban = {2, -100.0f};
    struct rk_sampler_params p;
    rk_sampler_params_default(&p);
    p.bias = &ban;
    p.n_bias = 1;
    p.seed = 7;
    struct rk_sampler *s = make(&p, 4);
    for (int i = 0; i < 2000; i++)
        ck_assert_uint_ne(draw(s, l, 4, tmp), 2);
    rk_sampler_free(s);
    p.temperature = 0.0f;
    s = make(&p, 4);
    ck_assert_uint_eq(draw(s, l, 4, tmp), 1);
    rk_sampler_free(s);
    struct rk_logit_bias force = {0, 100.0f};
    p.bias = &force;
    p.temperature = 1.0f;
    s = make(&p, 4);
    for (int i = 0; i < 2000; i++)
        ck_assert_uint_eq(draw(s, l, 4, tmp), 0);
    rk_sampler_free(s);
}
END_TEST

/* --- log-probabilities ---------------------------------------------------- */

START_TEST(logprobs)
{
    enum { V = 1000 };
    static float l[V], shifted[V];
    uint64_t x = 4242;
    for (int i = 0; i < V; i++) {
        l[i] = 20.0f * test_unit(&x);
        shifted[i] = l[i] + 1000.0f; /* exp would overflow without the max shift */
    }
    long double z = 0;
    for (int i = 0; i < V; i++)
        z += expl((long double)l[i]);
    for (uint32_t t = 0; t < V; t += 37) {
        double want = (double)((long double)l[t] - logl(z));
        ck_assert_double_eq_tol(rk_logprob(l, V, t), want, 1e-5);
        ck_assert_double_eq_tol(rk_logprob(shifted, V, t), want, 2e-4);
    }
    ck_assert(rk_logprob(l, V, V) == -INFINITY);

    /* Top 10 against a full sort. */
    uint32_t ids[12];
    float lps[12];
    rk_logprobs_top(l, V, 10, ids, lps);
    static float sorted[V];
    memcpy(sorted, l, sizeof l);
    qsort(sorted, V, sizeof *sorted, cmp_desc);
    for (int i = 0; i < 10; i++) {
        ck_assert_msg(l[ids[i]] == sorted[i], "rank %d: id %u", i, ids[i]);
        ck_assert_double_eq_tol(lps[i], (double)((long double)sorted[i] - logl(z)), 1e-5);
        ck_assert_double_eq_tol(lps[i], rk_logprob(l, V, ids[i]), 1e-6);
    }
    /* Ties come out in id order; k beyond the vocabulary is padded. */
    const float flat[5] = {1, 1, 3, 1, 1};
    rk_logprobs_top(flat, 5, 7, ids, lps);
    static const uint32_t order[5] = {2, 0, 1, 3, 4};
    for (int i = 0; i < 5; i++)
        ck_assert_uint_eq(ids[i], order[i]);
    ck_assert_uint_eq(ids[5], UINT32_MAX);
    ck_assert(lps[6] == -INFINITY);
    ck_assert(lps[1] == lps[4]);
    double zf = exp(3.0) + 4 * exp(1.0);
    ck_assert_double_eq_tol(lps[0], 3.0 - log(zf), 1e-6);
    /* k = 1 is the argmax. */
    rk_logprobs_top(l, V, 1, ids, lps);
    ck_assert(l[ids[0]] == sorted[0]);
}
END_TEST

/* --- stop sequences ------------------------------------------------------- */

struct feed_result {
    char text[1024];
    size_t len;
    bool hit;
};

/* Feed pieces (NULL-terminated list), then finish; collect what is emitted. */
static void run_stopper(struct rk_stopper *s, const char *const *pieces, struct feed_result *r)
{
    r->len = 0;
    r->hit = false;
    for (size_t i = 0; pieces[i]; i++) {
        const char *e;
        size_t el;
        bool hit = rk_stopper_feed(s, pieces[i], strlen(pieces[i]), &e, &el);
        ck_assert_uint_lt(r->len + el, sizeof r->text);
        memcpy(r->text + r->len, e, el);
        r->len += el;
        if (hit) {
            r->hit = true;
            break;
        }
    }
    const char *e;
    size_t el;
    rk_stopper_finish(s, &e, &el);
    memcpy(r->text + r->len, e, el);
    r->len += el;
    r->text[r->len] = 0;
}

static void expect_stop(const char *const *stops, size_t n, const char *const *pieces,
                        const char *want, bool want_hit)
{
    struct rk_stopper *s = NULL;
    ck_assert_int_eq(rk_stopper_create(stops, n, &s), RK_OK);
    struct feed_result r;
    run_stopper(s, pieces, &r);
    ck_assert_msg(r.hit == want_hit && !strcmp(r.text, want), "got '%s' (hit %d), want '%s'",
                  r.text, r.hit, want);
    rk_stopper_free(s);
}

START_TEST(stopper_cases)
{
    const char *user[] = {"\n\nUser:"};
    expect_stop(user, 1, (const char *[]){"Hello", " world\n", "\nUs", "er: hi", NULL},
                "Hello world", true);
    /* The stop spread over one byte per piece. */
    expect_stop(user, 1, (const char *[]){"ok", "\n", "\n", "U", "s", "e", "r", ":", "x", NULL},
                "ok", true);
    /* A near miss is released, not swallowed. */
    expect_stop(user, 1, (const char *[]){"a\n", "\nUse", "d it", NULL}, "a\n\nUsed it", false);
    /* No false holdback at the end: finish returns the held suffix. */
    expect_stop(user, 1, (const char *[]){"Hello\n", "\nUs", NULL}, "Hello\n\nUs", false);
    /* Stop at the very start and inside one piece. */
    expect_stop(user, 1, (const char *[]){"\n\nUser: x", NULL}, "", true);
    expect_stop(user, 1, (const char *[]){"abc\n\nUser:def", NULL}, "abc", true);

    /* Overlapping candidates. */
    const char *ab_bc[] = {"ab", "bc"};
    expect_stop(ab_bc, 2, (const char *[]){"xa", "c", NULL}, "xac", false);
    expect_stop(ab_bc, 2, (const char *[]){"xa", "b", NULL}, "x", true);
    expect_stop(ab_bc, 2, (const char *[]){"xb", "c", NULL}, "x", true);
    expect_stop(ab_bc, 2, (const char *[]){"abc", NULL}, "", true);
    expect_stop(ab_bc, 2, (const char *[]){"zzb", NULL}, "zzb", false);
    /* The occurrence that ends first wins, however the text is split. */
    const char *abcd_bc[] = {"abcd", "bc"};
    expect_stop(abcd_bc, 2, (const char *[]){"abcd", NULL}, "a", true);
    expect_stop(abcd_bc, 2, (const char *[]){"a", "b", "c", "d", NULL}, "a", true);
    /* Several stops ending at the same byte: the longest is cut. */
    const char *nested[] = {"c", "abc"};
    expect_stop(nested, 2, (const char *[]){"xab", "cy", NULL}, "x", true);
    /* Repeated prefixes: "aab" with text "aaab". */
    const char *aab[] = {"aab"};
    expect_stop(aab, 1, (const char *[]){"a", "a", "a", "b", NULL}, "a", true);
    expect_stop(aab, 1, (const char *[]){"a", "a", "a", NULL}, "aaa", false);
    /* No stops at all: everything passes through. */
    expect_stop(NULL, 0, (const char *[]){"a", "bc", "", NULL}, "abc", false);

    /* After a hit, feeds report the hit and emit nothing. */
    struct rk_stopper *s = NULL;
    ck_assert_int_eq(rk_stopper_create(user, 1, &s), RK_OK);
    const char *e;
    size_t el;
    ck_assert(rk_stopper_feed(s, "x\n\nUser:y", 9, &e, &el));
    ck_assert_uint_eq(el, 1);
    ck_assert(rk_stopper_feed(s, "more", 4, &e, &el));
    ck_assert_uint_eq(el, 0);
    rk_stopper_finish(s, &e, &el);
    ck_assert_uint_eq(el, 0);
    rk_stopper_free(s);

    /* NUL bytes inside pieces pass through (lengths, not strings). */
    ck_assert_int_eq(rk_stopper_create(user, 1, &s), RK_OK);
    ck_assert(!rk_stopper_feed(s, "a\0b", 3, &e, &el));
    ck_assert_uint_eq(el, 3);
    ck_assert_mem_eq(e, "a\0b", 3);
    rk_stopper_free(s);
}
END_TEST

START_TEST(stopper_invalid)
{
    struct rk_stopper *s = (struct rk_stopper *)1;
    const char *empty[] = {"ok", ""};
    ck_assert_int_eq(rk_stopper_create(empty, 2, &s), RK_EINVAL);
    ck_assert_ptr_null(s);
    const char *null_entry[] = {"ok", NULL};
    ck_assert_int_eq(rk_stopper_create(null_entry, 2, &s), RK_EINVAL);
    ck_assert_int_eq(rk_stopper_create(NULL, 1, &s), RK_EINVAL);
    const char *many[RK_STOPPER_MAX_STOPS + 1];
    for (int i = 0; i <= RK_STOPPER_MAX_STOPS; i++)
        many[i] = "x";
    ck_assert_int_eq(rk_stopper_create(many, RK_STOPPER_MAX_STOPS + 1, &s), RK_EINVAL);
    ck_assert_int_eq(rk_stopper_create(many, RK_STOPPER_MAX_STOPS, &s), RK_OK);
    rk_stopper_free(s);
    char longest[RK_STOPPER_STOP_MAX + 2];
    memset(longest, 'q', sizeof longest);
    longest[RK_STOPPER_STOP_MAX + 1] = 0;
    const char *too_long[] = {longest};
    ck_assert_int_eq(rk_stopper_create(too_long, 1, &s), RK_EINVAL);
    longest[RK_STOPPER_STOP_MAX] = 0;
    ck_assert_int_eq(rk_stopper_create(too_long, 1, &s), RK_OK);
    /* A maximal stop string fed in pieces. */
    struct feed_result r;
    char *half = strndup(longest, 100);
    run_stopper(s, (const char *[]){"pre", half, longest + 100, "post", NULL}, &r);
    ck_assert(r.hit && !strcmp(r.text, "pre"));
    free(half);
    rk_stopper_free(s);
    rk_stopper_free(NULL);
}
END_TEST

/* Random texts and random cuts against a naive search over the whole text. */
START_TEST(stopper_random)
{
    const char *stops[] = {"abca", "bb", "cab", "aaaa"};
    uint64_t x = 2024;
    for (int it = 0; it < 3000; it++) {
        char text[200];
        size_t n = 1 + test_rng(&x) % 60;
        for (size_t i = 0; i < n; i++)
            text[i] = (char)('a' + test_rng(&x) % 3);
        text[n] = 0;
        /* naive: the stop occurrence that ends first, the longest there */
        size_t want_len = n;
        bool want_hit = false;
        for (size_t e = 1; e <= n && !want_hit; e++) {
            for (size_t j = 0; j < 4; j++) {
                size_t L = strlen(stops[j]);
                if (L <= e && !memcmp(text + e - L, stops[j], L) &&
                    (!want_hit || e - L < want_len)) {
                    want_hit = true;
                    want_len = e - L;
                }
            }
        }
        /* random cuts */
        char pieces[200][200];
        const char *list[201];
        size_t np = 0;
        for (size_t pos = 0; pos < n;) {
            size_t k = 1 + test_rng(&x) % 7;
            if (k > n - pos)
                k = n - pos;
            memcpy(pieces[np], text + pos, k);
            pieces[np][k] = 0;
            list[np] = pieces[np];
            np++;
            pos += k;
        }
        list[np] = NULL;
        struct rk_stopper *s = NULL;
        ck_assert_int_eq(rk_stopper_create(stops, 4, &s), RK_OK);
        struct feed_result r;
        run_stopper(s, list, &r);
        ck_assert_msg(r.hit == want_hit && r.len == want_len && !memcmp(r.text, text, want_len),
                      "text %s: got '%s' hit %d, want %zu bytes hit %d", text, r.text, r.hit,
                      want_len, want_hit);
        rk_stopper_free(s);
    }
}
END_TEST

/* The exponential sum behind softmax and log-sum-exp: the vectorised path
 * (AVX-512 where the CPU has it) must give the portable path's bits, terms
 * and sum, for every length and for NaN, -inf and underflowing inputs. */
START_TEST(exp_sum_paths_agree)
{
    uint64_t seed = 99;
    enum { NMAX = 300 };
    float v[NMAX] = {0}, o1[NMAX], o2[NMAX];
    for (size_t n = 0; n <= NMAX; n += (n < 40 ? 1 : 37)) {
        float m = -INFINITY;
        for (size_t i = 0; i < n; i++) {
            float x = 30.0f * test_unit(&seed);
            switch (test_rng(&seed) % 16) {
            case 0: x = NAN; break;
            case 1: x = -INFINITY; break;
            case 2: x = -200.0f; break;
            default: break;
            }
            v[i] = x;
            if (x > m)
                m = x;
        }
        if (!(m > -INFINITY))
            m = 0;
        double s1 = rk__exp_sum(o1, v, n, m), s2 = rk__exp_sum_portable(o2, v, n, m);
        ck_assert_msg(s1 == s2, "n %zu: sum %.17g vs %.17g", n, s1, s2);
        ck_assert_msg(memcmp(o1, o2, n * sizeof(float)) == 0, "n %zu: terms differ", n);
        ck_assert(rk__exp_sum(NULL, v, n, m) == s2);
    }
    /* a vocabulary-sized vector: rounding differences (a fused multiply-add
     * in place of a multiply and an add, say) show up in a few terms only */
    const size_t big = 65536 + 7;
    float *bv = malloc(big * sizeof(float)), *b1 = malloc(big * sizeof(float)),
          *b2 = malloc(big * sizeof(float));
    for (size_t i = 0; i < big; i++)
        bv[i] = 30.0f * (test_unit(&seed) - 1.0f) / 2.0f; /* [-30, 0) */
    bv[17] = NAN;
    bv[1000] = -INFINITY;
    ck_assert(rk__exp_sum(b1, bv, big, 0.0f) == rk__exp_sum_portable(b2, bv, big, 0.0f));
    ck_assert(memcmp(b1, b2, big * sizeof(float)) == 0);
    free(bv), free(b1), free(b2);
    /* exp(0) = 1 exactly, exp(-1) near e^-1 */
    float one[2] = {0.0f, -1.0f};
    ck_assert(fabs(rk__exp_sum(NULL, one, 2, 0.0f) - (1.0 + exp(-1.0))) < 1e-6);
}
END_TEST

RK_TEST_SUITE(sampler_suite, RK_SELF_CONTAINED)
{
    Suite *s = suite_create("sampler");
    TCase *tc = tcase_create("sampler");
    tcase_add_test(tc, params_defaults_and_validation);
    tcase_add_test(tc, greedy_is_argmax);
    tcase_add_test(tc, determinism);
    tcase_add_test(tc, determinism_golden);
    tcase_add_test(tc, reset_equals_create);
    tcase_add_test(tc, penalties_exact);
    tcase_add_test(tc, bias_bans_and_forces);
    tcase_add_test(tc, logprobs);
    tcase_add_test(tc, exp_sum_paths_agree);
    suite_add_tcase(s, tc);
    tc = tcase_create("distributions"); // many draws: the suite unit-slow
    tcase_set_tags(tc, RK_TEST_TAG_SLOW);
    tcase_add_test(tc, filters_small_vocab);
    tcase_add_test(tc, temperature_distribution);
    tcase_add_test(tc, filters_large_vocab);
    suite_add_tcase(s, tc);
    tc = tcase_create("stopper");
    tcase_add_test(tc, stopper_cases);
    tcase_add_test(tc, stopper_invalid);
    tcase_add_test(tc, stopper_random);
    suite_add_tcase(s, tc);
    return s;
}

/*
 * sampler.c - next-token sampling, log-probabilities and stop sequences.
 *
 * rk_sampler_sample applies, in order: logit bias, repetition penalty,
 * presence/frequency penalties, then either argmax (temperature 0) or
 * temperature, top-k, softmax, top-p, min-p and a draw from what is left.
 * Selection never sorts the whole vocabulary: top-k keeps a heap of k
 * entries while scanning the logits; top-p bins the probabilities by their
 * float bits, so only the candidates of one bin need a (weighted) quickselect.
 * Everything ranks by the strict order (value descending, id ascending), so
 * ties are broken towards the lower id.
 *
 * Determinism: the random stream is xoshiro256** seeded through splitmix64
 * from the seed, one 53-bit uniform per sampled token. The softmax uses
 * rk__exp_sum (kernels_vec.c: only IEEE +, *, - and exact scaling) instead
 * of libm's expf, and sums are taken in a fixed order in double, so the same
 * seed and logits give the same tokens on every IEEE-754 machine. This
 * relies on the compiler not contracting a*b+c into FMA; GCC does not under
 * -std=c11.
 */
#include "core_int.h"

#include <math.h>
#include <string.h>

#ifdef __clang__
#pragma STDC FP_CONTRACT OFF
#endif

/* Largest penalty window accepted (tokens). */
#define PENALTY_LAST_N_MAX (1 << 24)
/* Ranges shorter than this are insertion-sorted instead of partitioned. */
#define SMALL_RANGE 16
/* top_k up to this uses a heap over the logits; larger k a quickselect. */
#define HEAP_K_MAX 1024
/* top-p over more candidates than this first narrows them with a histogram. */
#define NUCLEUS_HIST_MIN 256
/* Histogram bins over the bits of a probability in [0, 1]: 0x3F800000 >> 20. */
#define HIST_BINS 1017

/* --- random numbers ------------------------------------------------------- */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

/* xoshiro256** */
static uint64_t rng_next(uint64_t s[4])
{
    uint64_t r = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

/* Uniform in [0, 1) with 53 random bits. */
static double rng_uniform(uint64_t s[4]) { return (double)(rng_next(s) >> 11) * 0x1.0p-53; }

/* GCC/clang vector extensions: plain SSE2 on x86-64, NEON on arm64. */
typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));

/* Sum of v[0..16) in a fixed order. */
static inline double sum16(const float *v)
{
    double a = 0, b = 0, c = 0, d = 0;
    for (int j = 0; j < 16; j += 4) {
        a += v[j];
        b += v[j + 1];
        c += v[j + 2];
        d += v[j + 3];
    }
    return (a + b) + (c + d);
}

/* Sum of v[0..n) in blocks of 16 (the order draw_index walks in). */
static double sum_blocks(const float *v, size_t n)
{
    double acc = 0;
    size_t i = 0;
    for (; i + 16 <= n; i += 16)
        acc += sum16(v + i);
    for (; i < n; i++)
        acc += v[i];
    return acc;
}

/* The first i whose running sum exceeds target; skips whole blocks of 16 by
 * their sums so the dependent chain is n/16 long. If rounding keeps the sum
 * below target, the last element with non-zero weight. */
static size_t draw_index(const float *v, size_t n, double target)
{
    double acc = 0;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        double b = sum16(v + i);
        if (target < acc + b)
            break;
        acc += b;
    }
    for (; i < n; i++) {
        acc += v[i];
        if (target < acc)
            return i;
    }
    size_t last = n - 1;
    while (last > 0 && !(v[last] > 0.0f))
        last--;
    return last;
}

/* --- selection over (id, value) pairs ------------------------------------- */

/* The strict order used for ranking: larger value first, lower id on ties. */
static inline bool before(float va, uint32_t ia, float vb, uint32_t ib)
{
    return va > vb || (va == vb && ia < ib);
}

static inline void swap2(uint32_t *id, float *v, size_t a, size_t b)
{
    uint32_t ti = id[a];
    id[a] = id[b];
    id[b] = ti;
    float tv = v[a];
    v[a] = v[b];
    v[b] = tv;
}

static void insertion_sort(uint32_t *id, float *v, size_t lo, size_t hi)
{
    for (size_t i = lo + 1; i < hi; i++) {
        uint32_t ki = id[i];
        float kv = v[i];
        size_t j = i;
        while (j > lo && before(kv, ki, v[j - 1], id[j - 1])) {
            id[j] = id[j - 1];
            v[j] = v[j - 1];
            j--;
        }
        id[j] = ki;
        v[j] = kv;
    }
}

/* Partition [lo, hi) (hi - lo >= 3) around a median-of-three pivot; returns
 * the pivot's final index j: [lo, j) comes before it, (j, hi) after it. */
static size_t partition(uint32_t *id, float *v, size_t lo, size_t hi)
{
    size_t mid = lo + (hi - lo) / 2, last = hi - 1;
    if (before(v[mid], id[mid], v[lo], id[lo]))
        swap2(id, v, mid, lo);
    if (before(v[last], id[last], v[lo], id[lo]))
        swap2(id, v, last, lo);
    if (before(v[mid], id[mid], v[last], id[last]))
        swap2(id, v, mid, last);
    /* now the median is at `last` */
    float pv = v[last];
    uint32_t pi = id[last];
    size_t store = lo;
    for (size_t i = lo; i < last; i++)
        if (before(v[i], id[i], pv, pi))
            swap2(id, v, i, store++);
    swap2(id, v, store, last);
    return store;
}

/* Min-heap on the ranking order: the root is the worst kept entry. */
static void heap_down(uint32_t *id, float *v, size_t n, size_t i)
{
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, w = i;
        if (l < n && before(v[w], id[w], v[l], id[l]))
            w = l;
        if (r < n && before(v[w], id[w], v[r], id[r]))
            w = r;
        if (w == i)
            return;
        swap2(id, v, i, w);
        i = w;
    }
}

static void heap_up(uint32_t *id, float *v, size_t i)
{
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!before(v[parent], id[parent], v[i], id[i]))
            return;
        swap2(id, v, parent, i);
        i = parent;
    }
}

static inline v4f vload(const float *p)
{
    v4f x;
    memcpy(&x, p, sizeof x);
    return x;
}

static inline void vstore(float *p, v4f x) { memcpy(p, &x, sizeof x); }

/* Lane-wise max that ignores NaN in x (acc never holds NaN). */
static inline v4f vmax(v4f x, v4f acc)
{
    v4i c = x > acc;
    return (v4f)(((v4i)x & c) | ((v4i)acc & ~c));
}

static inline float hmax(v4f x)
{
    float a = x[0] > x[1] ? x[0] : x[1], b = x[2] > x[3] ? x[2] : x[3];
    return a > b ? a : b;
}

/* Scale logits[V] by inv_T in place (skipped when inv_T is 1), copy them to
 * v with id[i] = i, and return their maximum (NaN ignored). */
static float scan_all(float *logits, size_t V, float inv_T, uint32_t *id, float *v)
{
    v4f mx = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
    v4i idx = {0, 1, 2, 3};
    size_t i = 0;
    for (; i + 4 <= V; i += 4) {
        v4f x = vload(logits + i);
        if (inv_T != 1.0f) {
            x *= inv_T;
            vstore(logits + i, x);
        }
        vstore(v + i, x);
        memcpy(id + i, &idx, sizeof idx);
        idx += 4;
        mx = vmax(x, mx);
    }
    float m = hmax(mx);
    for (; i < V; i++) {
        if (inv_T != 1.0f)
            logits[i] *= inv_T;
        v[i] = logits[i];
        id[i] = (uint32_t)i;
        m = v[i] > m ? v[i] : m;
    }
    return m;
}

static inline void heap_offer(uint32_t *id, float *v, size_t *n, size_t k, float l, uint32_t i)
{
    if (!(l > -INFINITY))
        return;
    if (*n < k) {
        id[*n] = i;
        v[*n] = l;
        heap_up(id, v, (*n)++);
    } else if (l > v[0]) { /* a later id never wins a tie */
        id[0] = i;
        v[0] = l;
        heap_down(id, v, *n, 0);
    }
}

/* Scale logits in place as scan_all does and keep the best k above -inf (by
 * the ranking order) in id/v as a heap (unordered); returns how many were
 * kept (<= k). Once the heap is full, blocks of 16 with nothing above its
 * root are skipped after one vector compare, so this is one fast pass. */
static size_t scan_top(float *logits, size_t V, float inv_T, size_t k, uint32_t *id, float *v)
{
    size_t n = 0, i = 0;
    for (; i + 16 <= V; i += 16) {
        v4f x[4];
        for (int j = 0; j < 4; j++) {
            x[j] = vload(logits + i + 4 * j);
            if (inv_T != 1.0f) {
                x[j] *= inv_T;
                vstore(logits + i + 4 * j, x[j]);
            }
        }
        if (n == k) {
            v4f root = {v[0], v[0], v[0], v[0]};
            v4i any = (x[0] > root) | (x[1] > root) | (x[2] > root) | (x[3] > root);
            if (!(any[0] | any[1] | any[2] | any[3]))
                continue;
        }
        for (int j = 0; j < 16; j++)
            heap_offer(id, v, &n, k, logits[i + j], (uint32_t)(i + j));
    }
    for (; i < V; i++) {
        if (inv_T != 1.0f)
            logits[i] *= inv_T;
        heap_offer(id, v, &n, k, logits[i], (uint32_t)i);
    }
    return n;
}

/* Reorder so that [0, k) holds the k first elements of the order (0 < k < n). */
static void select_top(uint32_t *id, float *v, size_t n, size_t k)
{
    size_t lo = 0, hi = n;
    for (;;) {
        if (hi - lo <= SMALL_RANGE) {
            insertion_sort(id, v, lo, hi);
            return;
        }
        size_t j = partition(id, v, lo, hi);
        if (j == k || j + 1 == k)
            return;
        if (j > k)
            hi = j;
        else
            lo = j + 1;
    }
}

/* Reorder so that [0, k) is the shortest prefix of the order whose values
 * (probabilities) sum to at least `target`; returns k (n if none is enough). */
static size_t select_nucleus(uint32_t *id, float *v, size_t n, double target)
{
    size_t lo = 0, hi = n;
    double acc = 0; /* mass of [0, lo), all of which is in the nucleus */
    while (hi - lo > SMALL_RANGE) {
        size_t j = partition(id, v, lo, hi);
        double mass = 0;
        for (size_t i = lo; i < j; i++)
            mass += v[i];
        if (acc + mass >= target) {
            hi = j;
            continue;
        }
        acc += mass + v[j];
        if (acc >= target)
            return j + 1;
        lo = j + 1;
    }
    insertion_sort(id, v, lo, hi);
    for (size_t i = lo; i < hi; i++) {
        acc += v[i];
        if (acc >= target)
            return i + 1;
    }
    return hi;
}

static inline uint32_t prob_bin(float p)
{
    union {
        float f;
        uint32_t u;
    } b = {.f = p};
    return b.u >> 20; /* monotonic in p >= 0: exponent and 3 mantissa bits */
}

/* select_nucleus for many candidates: hist[b] holds the mass of the
 * probabilities in bin b. Bins above the boundary bin are wholly in the
 * nucleus, bins below wholly out; only the boundary bin is selected. */
static size_t nucleus_hist(const double *hist, uint32_t *id, float *v, size_t n, double target)
{
    double acc = 0;
    long B = -1;
    for (long b = HIST_BINS - 1; b >= 0; b--) {
        if (acc + hist[b] >= target) {
            B = b;
            break;
        }
        acc += hist[b];
    }
    if (B < 0)
        return n; /* rounding left the target out of reach: keep everything */
    /* Two branch-free Lomuto passes: bins above B first, then bin B. Both
     * sides of each swap are unchosen when the predicate fails, so always
     * swapping is safe. */
    size_t above = 0;
    for (size_t i = 0; i < n; i++) {
        bool c = prob_bin(v[i]) > (uint32_t)B;
        swap2(id, v, i, above);
        above += c;
    }
    size_t end = above;
    for (size_t i = above; i < n; i++) {
        bool c = prob_bin(v[i]) == (uint32_t)B;
        swap2(id, v, i, end);
        end += c;
    }
    return above + select_nucleus(id + above, v + above, end - above, target - acc);
}

/* --- sampler -------------------------------------------------------------- */

struct rk_sampler {
    struct rk_sampler_params p; /* p.bias points at `bias` below */
    size_t n_vocab;             /* V */
    struct rk_logit_bias *bias; /* [n_bias] */
    /* Penalty context: occurrence counts within the window and the list of
     * tokens with a non-zero count, so penalties cost O(distinct tokens). */
    uint32_t *count;   /* [V] */
    uint32_t *present; /* [V] tokens with count > 0 */
    uint32_t *pos;     /* [V] index of a token in present[] */
    size_t n_present;
    uint32_t *ring; /* [penalty_last_n] last tokens, when the window is finite */
    size_t ring_head, ring_len;
    size_t ring_cap, bias_cap; /* allocated lengths (rk_sampler_reset reuses them) */
    /* Per-call scratch. */
    uint32_t *cand_id; /* [V] */
    float *cand_v;     /* [V] */
    double hist[HIST_BINS];
    uint64_t rng[4];
};

void rk_sampler_params_default(struct rk_sampler_params *p)
{
    if (!p)
        return;
    memset(p, 0, sizeof *p);
    p->temperature = 1.0f;
    p->top_p = 1.0f;
    p->repetition_penalty = 1.0f;
}

static bool penalty_ok(float x) { return isfinite(x) && x >= -2.0f && x <= 2.0f; }

void rk_sampler_free(struct rk_sampler *s)
{
    if (!s)
        return;
    rk__free(s->bias);
    rk__free(s->count);
    rk__free(s->present);
    rk__free(s->pos);
    rk__free(s->ring);
    rk__free(s->cand_id);
    rk__free(s->cand_v);
    rk__free(s);
}

/* `p`, or greedy defaults in *d when p is NULL. */
static const struct rk_sampler_params *params_or_greedy(const struct rk_sampler_params *p,
                                                        struct rk_sampler_params *d)
{
    if (p)
        return p;
    rk_sampler_params_default(d);
    d->temperature = 0.0f;
    return d;
}

/* RK_OK when the parameters are valid for a vocabulary of n_vocab. */
static int params_check(const struct rk_sampler_params *p, size_t n_vocab)
{
    if (n_vocab == 0 || n_vocab > UINT32_MAX)
        return RK_EINVAL;
    if (!isfinite(p->temperature) || p->temperature < 0.0f)
        return RK_EINVAL;
    if (p->top_k < 0)
        return RK_EINVAL;
    if (!(p->top_p > 0.0f && p->top_p <= 1.0f))
        return RK_EINVAL;
    if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
        return RK_EINVAL;
    if (!penalty_ok(p->presence_penalty) || !penalty_ok(p->frequency_penalty))
        return RK_EINVAL;
    if (!isfinite(p->repetition_penalty) || !(p->repetition_penalty > 0.0f))
        return RK_EINVAL;
    if (p->penalty_last_n < 0 || p->penalty_last_n > PENALTY_LAST_N_MAX)
        return RK_EINVAL;
    if (p->n_bias && !p->bias)
        return RK_EINVAL;
    for (size_t i = 0; i < p->n_bias; i++)
        if (p->bias[i].token >= n_vocab || !isfinite(p->bias[i].bias))
            return RK_EINVAL;
    return RK_OK;
}

/* Take on valid parameters `p`: the bias list and the penalty window grow
 * their buffers when needed (on failure nothing changes), then the penalty
 * context is emptied and the random stream reseeded. */
static int configure(struct rk_sampler *s, const struct rk_sampler_params *p)
{
    struct rk_logit_bias *nb = NULL;
    uint32_t *nr = NULL;
    if (p->n_bias > s->bias_cap && !(nb = rk__malloc(p->n_bias * sizeof *nb)))
        return RK_ENOMEM;
    if ((size_t)p->penalty_last_n > s->ring_cap &&
        !(nr = rk__malloc((size_t)p->penalty_last_n * sizeof *nr))) {
        rk__free(nb);
        return RK_ENOMEM;
    }
    if (nb) {
        rk__free(s->bias);
        s->bias = nb;
        s->bias_cap = p->n_bias;
    }
    if (nr) {
        rk__free(s->ring);
        s->ring = nr;
        s->ring_cap = (size_t)p->penalty_last_n;
    }
    if (p->n_bias)
        memcpy(s->bias, p->bias, p->n_bias * sizeof *s->bias);
    s->p = *p;
    s->p.bias = s->bias;
    for (size_t i = 0; i < s->n_present; i++)
        s->count[s->present[i]] = 0;
    s->n_present = 0;
    s->ring_head = s->ring_len = 0;
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++)
        s->rng[i] = splitmix64(&x);
    return RK_OK;
}

int rk_sampler_create(const struct rk_sampler_params *p, size_t n_vocab, struct rk_sampler **out)
{
    if (!out)
        return RK_EINVAL;
    *out = NULL;
    struct rk_sampler_params d;
    p = params_or_greedy(p, &d);
    int rc = params_check(p, n_vocab);
    if (rc != RK_OK)
        return rc;
    struct rk_sampler *s = rk__calloc(1, sizeof *s);
    if (!s)
        return RK_ENOMEM;
    s->n_vocab = n_vocab;
    s->count = rk__calloc(n_vocab, sizeof *s->count);
    s->present = rk__malloc(n_vocab * sizeof *s->present);
    s->pos = rk__malloc(n_vocab * sizeof *s->pos);
    s->cand_id = rk__malloc(n_vocab * sizeof *s->cand_id);
    s->cand_v = rk__malloc(n_vocab * sizeof *s->cand_v);
    if (!s->count || !s->present || !s->pos || !s->cand_id || !s->cand_v ||
        configure(s, p) != RK_OK) {
        rk_sampler_free(s);
        return RK_ENOMEM;
    }
    *out = s;
    return RK_OK;
}

int rk_sampler_reset(struct rk_sampler *s, const struct rk_sampler_params *p)
{
    if (!s)
        return RK_EINVAL;
    struct rk_sampler_params d;
    p = params_or_greedy(p, &d);
    int rc = params_check(p, s->n_vocab);
    return rc != RK_OK ? rc : configure(s, p);
}

static void count_add(struct rk_sampler *s, uint32_t tok)
{
    if (s->count[tok]++ == 0) {
        s->pos[tok] = (uint32_t)s->n_present;
        s->present[s->n_present++] = tok;
    }
}

static void count_remove(struct rk_sampler *s, uint32_t tok)
{
    if (--s->count[tok] == 0) {
        uint32_t last = s->present[--s->n_present];
        s->present[s->pos[tok]] = last;
        s->pos[last] = s->pos[tok];
    }
}

void rk_sampler_accept(struct rk_sampler *s, uint32_t token)
{
    if (!s || token >= s->n_vocab)
        return;
    size_t cap = (size_t)s->p.penalty_last_n;
    if (cap) {
        if (s->ring_len == cap) {
            count_remove(s, s->ring[s->ring_head]);
            s->ring[s->ring_head] = token;
            s->ring_head = (s->ring_head + 1) % cap;
        } else {
            s->ring[(s->ring_head + s->ring_len++) % cap] = token;
        }
    }
    count_add(s, token);
}

/* Bias, then the CTRL repetition penalty, then the OpenAI penalties:
 * logit -= count * frequency + (count > 0) * presence. */
static void apply_penalties(struct rk_sampler *s, float *logits)
{
    for (size_t i = 0; i < s->p.n_bias; i++)
        logits[s->bias[i].token] += s->bias[i].bias;
    const float rp = s->p.repetition_penalty;
    const float fp = s->p.frequency_penalty, pp = s->p.presence_penalty;
    if (rp == 1.0f && fp == 0.0f && pp == 0.0f)
        return;
    for (size_t i = 0; i < s->n_present; i++) {
        uint32_t t = s->present[i];
        float l = logits[t];
        if (rp != 1.0f)
            l = l > 0.0f ? l / rp : l * rp;
        l -= (float)s->count[t] * fp + pp;
        logits[t] = l;
    }
}

/* Index of the largest logit, lowest id on ties, NaN skipped; -1 if all NaN.
 * Four lanes each keep their first maximum; the lanes are merged by value,
 * then by lower index. */
static long argmax(const float *logits, size_t n)
{
    v4f mx = {-INFINITY, -INFINITY, -INFINITY, -INFINITY};
    v4i at = {-1, -1, -1, -1}, idx = {0, 1, 2, 3};
    size_t i = 0;
    for (; n <= INT32_MAX && i + 4 <= n; i += 4) {
        v4f x = vload(logits + i);
        v4i c = x > mx;
        mx = (v4f)(((v4i)x & c) | ((v4i)mx & ~c));
        at = (idx & c) | (at & ~c);
        idx += 4;
    }
    long best = -1;
    float bv = -INFINITY;
    for (int j = 0; j < 4; j++) {
        if (at[j] >= 0 && (best < 0 || mx[j] > bv || (mx[j] == bv && at[j] < best))) {
            best = at[j];
            bv = mx[j];
        }
    }
    /* Lanes only see values above -inf; if they found none, rescan so that
     * the first -inf (lowest id) can win. */
    if (best < 0)
        i = 0;
    for (; i < n; i++) {
        float l = logits[i];
        if (isnan(l))
            continue;
        if (best < 0 || l > bv || (l == bv && (long)i < best)) {
            best = (long)i;
            bv = l;
        }
    }
    return best;
}

static long sample_dist(struct rk_sampler *s, float *logits)
{
    const size_t V = s->n_vocab;
    const float T = s->p.temperature;
    const float top_p = s->p.top_p, min_p = s->p.min_p;
    const size_t top_k = (size_t)s->p.top_k;
    const float inv_T = T == 1.0f ? 1.0f : 1.0f / T;
    double u = rng_uniform(s->rng); /* one draw per call keeps streams aligned */

    /* Candidates, after scaling the logits in place. With top-k: the best k
     * above -inf. Without: every token; -inf and NaN get weight 0 from
     * rk__exp_sum below, so they are never drawn. */
    uint32_t *id = s->cand_id;
    float *v = s->cand_v;
    size_t n;
    float m;
    if (top_k > 0 && top_k <= HEAP_K_MAX && top_k < V) {
        n = scan_top(logits, V, inv_T, top_k, id, v);
        m = -INFINITY;
        for (size_t i = 0; i < n; i++)
            m = v[i] > m ? v[i] : m;
    } else {
        m = scan_all(logits, V, inv_T, id, v);
        n = V;
        if (top_k > 0 && top_k < n) {
            /* large k: drop -inf and NaN, then quickselect */
            size_t w = 0;
            for (size_t i = 0; i < n; i++) {
                id[w] = id[i];
                v[w] = v[i];
                w += v[i] > -INFINITY;
            }
            n = w;
            if (top_k < n) {
                select_top(id, v, n, top_k);
                n = top_k;
            }
        }
    }
    if (n == 0 || !(m > -INFINITY) || m == INFINITY)
        return argmax(logits, V); /* degenerate: nothing or +inf to weigh */

    /* Softmax numerators relative to the best (which becomes exactly 1). */
    double sum = rk__exp_sum(v, v, n, m);
    const size_t n_soft = n;

    /* top-p: the shortest prefix of the ranking with mass >= top_p * sum. */
    if (top_p < 1.0f) {
        double target = (double)top_p * sum;
        if (n > NUCLEUS_HIST_MIN) {
            memset(s->hist, 0, sizeof s->hist);
            for (size_t k = 0; k < n; k++)
                s->hist[prob_bin(v[k])] += v[k];
            n = nucleus_hist(s->hist, id, v, n, target);
        } else {
            n = select_nucleus(id, v, n, target);
        }
    }
    /* min-p: keep p >= min_p * p_max, i.e. numerators >= min_p. The best
     * token (numerator 1) always stays. */
    if (min_p > 0.0f) {
        size_t w = 0;
        for (size_t k = 0; k < n; k++) {
            id[w] = id[k];
            v[w] = v[k];
            w += v[k] >= min_p;
        }
        n = w;
    }

    /* Renormalise over what is left and draw. */
    double total = n == n_soft ? sum : sum_blocks(v, n);
    return id[draw_index(v, n, u * total)];
}

int rk_sampler_sample(struct rk_sampler *s, float *logits, uint32_t *out)
{
    if (!s || !logits || !out)
        return RK_EINVAL;
    apply_penalties(s, logits);
    long tok = s->p.temperature == 0.0f ? argmax(logits, s->n_vocab) : sample_dist(s, logits);
    if (tok < 0)
        return RK_ENUMERIC;
    *out = (uint32_t)tok;
    rk_sampler_accept(s, *out);
    return RK_OK;
}

/* --- log-probabilities ---------------------------------------------------- */

/* log(sum(exp(l))) over the non-NaN logits, computed around the max. */
static double log_sum_exp(const float *logits, size_t n, float *max_out, size_t *n_inf)
{
    float m = -INFINITY;
    for (size_t i = 0; i < n; i++)
        if (logits[i] > m)
            m = logits[i];
    *max_out = m;
    *n_inf = 0;
    if (m == INFINITY) {
        for (size_t i = 0; i < n; i++)
            *n_inf += logits[i] == INFINITY;
        return INFINITY;
    }
    if (m == -INFINITY)
        return -INFINITY;
    /* the sampler's exponential; NaN logits add nothing */
    return (double)m + log(rk__exp_sum(NULL, logits, n, m));
}

/* log-softmax of one logit given the log-sum-exp computed above. */
static float logprob_of(float l, double lse, size_t n_inf)
{
    if (isnan(l))
        return -INFINITY;
    if (n_inf) /* +inf logits share all the mass */
        return l == INFINITY ? (float)-log((double)n_inf) : -INFINITY;
    if (lse == -INFINITY)
        return -INFINITY;
    return (float)((double)l - lse);
}

float rk_logprob(const float *logits, size_t n_vocab, uint32_t token)
{
    if (!logits || token >= n_vocab)
        return -INFINITY;
    float m;
    size_t n_inf;
    double lse = log_sum_exp(logits, n_vocab, &m, &n_inf);
    return logprob_of(logits[token], lse, n_inf);
}

void rk_logprobs_top(const float *logits, size_t n_vocab, size_t k, uint32_t *ids, float *lps)
{
    if (!k || !ids || !lps)
        return;
    size_t n = 0;
    if (logits) {
        /* Keep the best k in a heap built in the output arrays: O(V log k). */
        for (size_t i = 0; i < n_vocab; i++) {
            float l = logits[i];
            if (isnan(l))
                continue;
            if (n < k) {
                ids[n] = (uint32_t)i;
                lps[n] = l;
                heap_up(ids, lps, n++);
            } else if (before(l, (uint32_t)i, lps[0], ids[0])) {
                ids[0] = (uint32_t)i;
                lps[0] = l;
                heap_down(ids, lps, n, 0);
            }
        }
        /* Heap sort: moving the worst to the end leaves the best first. */
        for (size_t end = n; end > 1; end--) {
            swap2(ids, lps, 0, end - 1);
            heap_down(ids, lps, end - 1, 0);
        }
        float m;
        size_t n_inf;
        double lse = log_sum_exp(logits, n_vocab, &m, &n_inf);
        for (size_t i = 0; i < n; i++)
            lps[i] = logprob_of(lps[i], lse, n_inf);
    }
    for (size_t i = n; i < k; i++) {
        ids[i] = UINT32_MAX;
        lps[i] = -INFINITY;
    }
}

/* --- stop sequences ------------------------------------------------------- */

/*
 * The stopper keeps, at the start of buf, the held-back text: the longest
 * suffix of what was fed that is a proper prefix of some stop string (so at
 * most RK_STOPPER_STOP_MAX - 1 bytes). Each feed appends the piece after it
 * and looks for the stop occurrence that ends earliest (the longest one if
 * several end at the same byte); that is what feeding the text one byte at a
 * time would find, so the result does not depend on how the text is cut into
 * pieces. An occurrence cannot start before the held text, and none can end
 * inside it, since earlier feeds already looked there.
 */
struct rk_stopper {
    size_t n_stops;
    char stops[RK_STOPPER_MAX_STOPS][RK_STOPPER_STOP_MAX];
    size_t len[RK_STOPPER_MAX_STOPS];
    size_t len_max; /* longest stop string */
    char *buf;      /* [RK_STOPPER_STOP_MAX + RK_STOPPER_PIECE_MAX] */
    size_t held_off, held_len;
    bool done; /* a stop string was found */
};

int rk_stopper_create(const char *const *stops, size_t n_stops, struct rk_stopper **out)
{
    if (!out)
        return RK_EINVAL;
    *out = NULL;
    if (n_stops > RK_STOPPER_MAX_STOPS || (n_stops && !stops))
        return RK_EINVAL;
    for (size_t i = 0; i < n_stops; i++) {
        if (!stops[i])
            return RK_EINVAL;
        size_t l = strlen(stops[i]);
        if (l == 0 || l > RK_STOPPER_STOP_MAX)
            return RK_EINVAL;
    }
    struct rk_stopper *s = rk__calloc(1, sizeof *s);
    if (!s)
        return RK_ENOMEM;
    s->buf = rk__malloc(RK_STOPPER_STOP_MAX + RK_STOPPER_PIECE_MAX);
    if (!s->buf) {
        rk__free(s);
        return RK_ENOMEM;
    }
    s->n_stops = n_stops;
    for (size_t i = 0; i < n_stops; i++) {
        s->len[i] = strlen(stops[i]);
        memcpy(s->stops[i], stops[i], s->len[i]);
        if (s->len[i] > s->len_max)
            s->len_max = s->len[i];
    }
    *out = s;
    return RK_OK;
}

void rk_stopper_free(struct rk_stopper *s)
{
    if (!s)
        return;
    rk__free(s->buf);
    rk__free(s);
}

bool rk_stopper_feed(struct rk_stopper *s, const char *piece, size_t len, const char **emit,
                     size_t *emit_len)
{
    RK_ASSERT(s && emit && emit_len);
    RK_ASSERT(len <= RK_STOPPER_PIECE_MAX);
    *emit = s->buf;
    *emit_len = 0;
    if (s->done)
        return true;
    if (!piece)
        len = 0;
    char *x = s->buf;
    memmove(x, x + s->held_off, s->held_len);
    memcpy(x + s->held_len, piece, len);
    size_t old = s->held_len, n = old + len;
    s->held_off = s->held_len = 0;

    for (size_t e = old + 1; e <= n; e++) {
        size_t start = SIZE_MAX;
        for (size_t j = 0; j < s->n_stops; j++) {
            size_t L = s->len[j];
            if (L <= e && x[e - 1] == s->stops[j][L - 1] && e - L < start &&
                memcmp(x + e - L, s->stops[j], L) == 0)
                start = e - L;
        }
        if (start != SIZE_MAX) {
            s->done = true;
            *emit_len = start;
            return true;
        }
    }

    /* Hold back the longest suffix that could still grow into a stop. */
    size_t k = n < s->len_max ? n : s->len_max - (s->len_max > 0);
    for (; k > 0; k--) {
        bool prefix = false;
        for (size_t j = 0; j < s->n_stops && !prefix; j++)
            prefix = s->len[j] > k && memcmp(x + n - k, s->stops[j], k) == 0;
        if (prefix)
            break;
    }
    *emit_len = n - k;
    s->held_off = n - k;
    s->held_len = k;
    return false;
}

void rk_stopper_finish(struct rk_stopper *s, const char **emit, size_t *emit_len)
{
    RK_ASSERT(s && emit && emit_len);
    *emit = s->buf + s->held_off;
    *emit_len = s->done ? 0 : s->held_len;
    s->held_off = s->held_len = 0;
}

/*
 * test_backward.c - rk_backward_seq (dLoss/dstate0) checked three ways:
 *
 *   1. central finite differences of an independent double-precision forward
 *      (ref_loss below, written straight from the spec's per-token equations,
 *      sharing no code with core/rwkv7_backward.c) on sampled state elements
 *      of every kind (wkv of every head, both token shifts), on the shared
 *      tiny model (L12 C64 H1) and the multi-head random fixtures;
 *   2. the committed output of tools/ref_backward_torch.py (float64 autograd
 *      in PyTorch) for the same model, tokens and state: loss and the full
 *      gradient, tests/data/grad-*.bin;
 *   3. invariances: the WKV checkpoint interval does not change the result,
 *      masks select positions, cancel stops the pass.
 */
#include "check_common.h"
#include "core_int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- deterministic inputs ------------------------------------------------- */

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static double rng_unif(uint64_t *s) { return (double)(rng_next(s) >> 11) / 9007199254740992.0; }
static double rng_normal(uint64_t *s)
{
    double u1 = rng_unif(s), u2 = rng_unif(s);
    if (u1 < 1e-300)
        u1 = 1e-300;
    return sqrt(-2 * log(u1)) * cos(6.283185307179586 * u2);
}

/* --- independent double forward (loss only) ------------------------------- */

struct dmat {
    int rows, cols;
    double *d;
};
static struct dmat dm_load(const struct rk_weight *w)
{
    struct dmat m = {w->rows, w->cols, malloc(sizeof(double) * (size_t)w->rows * w->cols)};
    float *row = malloc(sizeof(float) * (size_t)w->cols);
    for (int r = 0; r < w->rows; r++) {
        rk__weight_row(w, r, row);
        for (int c = 0; c < w->cols; c++)
            m.d[(size_t)r * w->cols + c] = row[c];
    }
    free(row);
    return m;
}
/* y[rows] = W x[cols] */
static void dm_mv(const struct dmat *m, const double *x, double *y)
{
    for (int r = 0; r < m->rows; r++) {
        const double *w = m->d + (size_t)r * m->cols;
        double s = 0;
        for (int c = 0; c < m->cols; c++)
            s += w[c] * x[c];
        y[r] = s;
    }
}

struct dlayer {
    struct dmat w1, w2, a1, a2, v1, v2, g1, g2, wr, wk, wv, wo, fk, fv;
};
struct dmodel {
    const struct rk_model *m;
    struct dlayer *ly;
    struct dmat emb, head;
};
static void dmodel_init(struct dmodel *d, const struct rk_model *m)
{
    d->m = m;
    d->ly = calloc((size_t)m->L, sizeof *d->ly);
    for (int l = 0; l < m->L; l++) {
        const struct rk_layer *s = &m->layers[l];
        struct dlayer *t = &d->ly[l];
        t->w1 = dm_load(&s->w1), t->w2 = dm_load(&s->w2), t->a1 = dm_load(&s->a1);
        t->a2 = dm_load(&s->a2), t->g1 = dm_load(&s->g1), t->g2 = dm_load(&s->g2);
        t->wr = dm_load(&s->wr), t->wk = dm_load(&s->wk), t->wv = dm_load(&s->wv);
        t->wo = dm_load(&s->wo), t->fk = dm_load(&s->ffn_key), t->fv = dm_load(&s->ffn_value);
        if (l > 0)
            t->v1 = dm_load(&s->v1), t->v2 = dm_load(&s->v2);
    }
    d->emb = dm_load(&m->emb);
    d->head = dm_load(&m->head);
}
static void dmat_free(struct dmat *m) { free(m->d); }
static void dmodel_free(struct dmodel *d)
{
    for (int l = 0; l < d->m->L; l++) {
        struct dlayer *t = &d->ly[l];
        struct dmat *all[] = {&t->w1, &t->w2, &t->a1, &t->a2, &t->v1, &t->v2, &t->g1,
                              &t->g2, &t->wr,  &t->wk, &t->wv, &t->wo, &t->fk, &t->fv};
        for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
            dmat_free(all[i]);
    }
    free(d->ly);
    dmat_free(&d->emb);
    dmat_free(&d->head);
}

static void d_ln(double *o, const double *x, const float *w, const float *b, int n, double eps)
{
    double mu = 0, var = 0;
    for (int i = 0; i < n; i++)
        mu += x[i];
    mu /= n;
    for (int i = 0; i < n; i++)
        var += (x[i] - mu) * (x[i] - mu);
    var /= n;
    double rs = 1 / sqrt(var + eps);
    for (int i = 0; i < n; i++)
        o[i] = (x[i] - mu) * rs * w[i] + b[i];
}
static double d_sig(double x) { return 1 / (1 + exp(-x)); }

/* Mean CE over selected positions, token by token (RNN form), all in double.
 * `st` [rk_state_len] is the initial state (double), consumed (updated). */
static double ref_loss(const struct dmodel *d, const uint32_t *tok, const uint32_t *tgt,
                       const uint8_t *mask, size_t n, double *st)
{
    const struct rk_model *m = d->m;
    const int C = m->C, H = m->H, N = m->N, F = m->F, V = m->V;
    struct rk_state_layout lay;
    rk_state_layout(m, &lay);
    double *x = malloc(sizeof(double) * C), *u = malloc(sizeof(double) * C);
    double *xs[6], *r = malloc(sizeof(double) * C), *kh = malloc(sizeof(double) * C);
    for (int q = 0; q < 6; q++)
        xs[q] = malloc(sizeof(double) * C);
    double *vh = malloc(sizeof(double) * C), *w = malloc(sizeof(double) * C);
    double *al = malloc(sizeof(double) * C), *g = malloc(sizeof(double) * C);
    double *kk = malloc(sizeof(double) * C), *k = malloc(sizeof(double) * C);
    double *v = malloc(sizeof(double) * C), *y = malloc(sizeof(double) * C);
    double *vf = malloc(sizeof(double) * C), *tmp = malloc(sizeof(double) * C);
    double *lr = malloc(sizeof(double) * 1024), *o = malloc(sizeof(double) * C);
    double *hid = malloc(sizeof(double) * F), *lg = malloc(sizeof(double) * V);
    double total = 0;
    size_t nsel = 0;
    for (size_t t = 0; t < n; t++) {
        const double *e = d->emb.d + (size_t)tok[t] * C;
        d_ln(x, e, m->ln0_w, m->ln0_b, C, 1e-5);
        for (int l = 0; l < m->L; l++) {
            const struct rk_layer *ly = &m->layers[l];
            const struct dlayer *dl = &d->ly[l];
            double *pa = st + (size_t)l * lay.layer_stride + lay.att_shift;
            double *S = st + (size_t)l * lay.layer_stride + lay.wkv;
            double *pf = st + (size_t)l * lay.layer_stride + lay.ffn_shift;
            d_ln(u, x, ly->ln1_w, ly->ln1_b, C, 1e-5);
            const float *mus[6] = {ly->x_r, ly->x_w, ly->x_k, ly->x_v, ly->x_a, ly->x_g};
            for (int q = 0; q < 6; q++)
                for (int c = 0; c < C; c++)
                    xs[q][c] = u[c] + (pa[c] - u[c]) * mus[q][c];
            memcpy(pa, u, sizeof(double) * C);
            dm_mv(&dl->wr, xs[0], r);
            dm_mv(&dl->wk, xs[2], kh);
            dm_mv(&dl->wv, xs[3], vh);
            dm_mv(&dl->w1, xs[1], lr);
            for (int i = 0; i < dl->w1.rows; i++)
                lr[i] = tanh(lr[i]);
            dm_mv(&dl->w2, lr, tmp);
            for (int c = 0; c < C; c++)
                w[c] = exp(-exp(-0.5) * d_sig(ly->w0[c] + tmp[c]));
            dm_mv(&dl->a1, xs[4], lr);
            dm_mv(&dl->a2, lr, tmp);
            for (int c = 0; c < C; c++)
                al[c] = d_sig(ly->a0[c] + tmp[c]);
            if (l == 0) {
                memcpy(v, vh, sizeof(double) * C);
                memcpy(vf, vh, sizeof(double) * C);
            } else {
                dm_mv(&dl->v1, xs[3], lr);
                dm_mv(&dl->v2, lr, tmp);
                for (int c = 0; c < C; c++) {
                    double nu = d_sig(ly->v0[c] + tmp[c]);
                    v[c] = vh[c] + (vf[c] - vh[c]) * nu;
                }
            }
            dm_mv(&dl->g1, xs[5], lr);
            for (int i = 0; i < dl->g1.rows; i++)
                lr[i] = d_sig(lr[i]);
            dm_mv(&dl->g2, lr, g);
            for (int h = 0; h < H; h++) {
                double ss = 0;
                for (int j = 0; j < N; j++) {
                    double q = kh[h * N + j] * ly->k_k[h * N + j];
                    ss += q * q;
                }
                double nr = sqrt(ss) > 1e-12 ? sqrt(ss) : 1e-12;
                for (int j = 0; j < N; j++)
                    kk[h * N + j] = kh[h * N + j] * ly->k_k[h * N + j] / nr;
            }
            for (int c = 0; c < C; c++)
                k[c] = kh[c] * (1 + (al[c] - 1) * ly->k_a[c]);
            for (int h = 0; h < H; h++) {
                double *Sh = S + (size_t)h * N * N;
                for (int i = 0; i < N; i++) {
                    double *row = Sh + (size_t)i * N, sa = 0, acc = 0;
                    for (int j = 0; j < N; j++)
                        sa += row[j] * -kk[h * N + j];
                    for (int j = 0; j < N; j++) {
                        int c = h * N + j;
                        row[j] = row[j] * w[c] + sa * kk[c] * al[c] + v[h * N + i] * k[c];
                        acc += row[j] * r[c];
                    }
                    y[h * N + i] = acc;
                }
                double mu = 0, var = 0, bon = 0;
                for (int j = 0; j < N; j++)
                    mu += y[h * N + j];
                mu /= N;
                for (int j = 0; j < N; j++)
                    var += (y[h * N + j] - mu) * (y[h * N + j] - mu);
                var /= N;
                for (int j = 0; j < N; j++)
                    bon += r[h * N + j] * k[h * N + j] * ly->r_k[h * N + j];
                for (int j = 0; j < N; j++) {
                    int c = h * N + j;
                    o[c] = (y[c] - mu) / sqrt(var + 64e-5) * ly->lnx_w[c] + ly->lnx_b[c] +
                           bon * v[c];
                }
            }
            for (int c = 0; c < C; c++)
                o[c] *= g[c];
            dm_mv(&dl->wo, o, tmp);
            for (int c = 0; c < C; c++)
                x[c] += tmp[c];
            d_ln(u, x, ly->ln2_w, ly->ln2_b, C, 1e-5);
            for (int c = 0; c < C; c++) {
                tmp[c] = u[c] + (pf[c] - u[c]) * ly->ffn_x_k[c];
                pf[c] = u[c];
            }
            dm_mv(&dl->fk, tmp, hid);
            for (int i = 0; i < F; i++)
                hid[i] = hid[i] > 0 ? hid[i] * hid[i] : 0;
            dm_mv(&dl->fv, hid, tmp);
            for (int c = 0; c < C; c++)
                x[c] += tmp[c];
        }
        if (mask && !mask[t])
            continue;
        d_ln(u, x, m->lnout_w, m->lnout_b, C, 1e-5);
        dm_mv(&d->head, u, lg);
        double mx = lg[0], se = 0;
        for (int i = 1; i < V; i++)
            mx = lg[i] > mx ? lg[i] : mx;
        for (int i = 0; i < V; i++)
            se += exp(lg[i] - mx);
        total += mx + log(se) - lg[tgt[t]];
        nsel++;
    }
    free(x), free(u), free(r), free(kh), free(vh), free(w), free(al), free(g), free(kk);
    free(k), free(v), free(y), free(vf), free(tmp), free(lr), free(o), free(hid), free(lg);
    for (int q = 0; q < 6; q++)
        free(xs[q]);
    return nsel ? total / (double)nsel : 0;
}

/* --- helpers -------------------------------------------------------------- */

struct fixture {
    struct rk_model *m;
    struct rk_ctx *ctx;
    size_t slen;
};

static bool fixture_open(struct fixture *f, const char *path)
{
    memset(f, 0, sizeof *f);
    if (!path)
        return false;
    struct rk_errbuf eb;
    int rc = rk_model_load(path, NULL, &f->m, &eb);
    ck_assert_msg(rc == RK_OK, "load %s: %s", path, eb.msg);
    struct rk_ctx_params cp = {.n_threads = 2};
    ck_assert_int_eq(rk_ctx_create(f->m, &cp, &f->ctx), RK_OK);
    f->slen = rk_state_len(f->m);
    return true;
}
static void fixture_close(struct fixture *f)
{
    rk_ctx_free(f->ctx);
    rk_model_free(f->m);
}

/* Random state with the scales a tuned state has: shifts are LN outputs
 * (O(1)), wkv entries O(0.1..1). */
static void rand_state(const struct rk_model *m, uint64_t seed, float *st)
{
    struct rk_state_layout lay;
    rk_state_layout(m, &lay);
    for (int l = 0; l < m->L; l++) {
        float *p = st + (size_t)l * lay.layer_stride;
        for (size_t i = 0; i < lay.shift_len; i++) {
            p[lay.att_shift + i] = (float)(0.5 * rng_normal(&seed));
            p[lay.ffn_shift + i] = (float)(0.5 * rng_normal(&seed));
        }
        for (size_t i = 0; i < lay.wkv_len; i++)
            p[lay.wkv + i] = (float)(0.3 * rng_normal(&seed));
    }
}

static void rand_seq(uint32_t V, uint64_t seed, size_t n, uint32_t *tok, uint32_t *tgt,
                     uint8_t *mask)
{
    for (size_t t = 0; t < n; t++)
        tok[t] = (uint32_t)(rng_next(&seed) % V);
    for (size_t t = 0; t < n; t++) {
        tgt[t] = t + 1 < n ? tok[t + 1] : (uint32_t)(rng_next(&seed) % V);
        mask[t] = (t % 5) != 1; /* some unselected positions */
    }
}

/* Central differences of ref_loss at `idx` elements; compares with `g`.
 * Relative error per element: |g - fd| / max(|fd|, floor) with floor =
 * 1e-2 * max|fd| over the samples, so elements whose gradient is tiny next
 * to the others are judged on an absolute scale. Returns the worst. */
static double fd_check(const struct dmodel *dm, const uint32_t *tok, const uint32_t *tgt,
                       const uint8_t *mask, size_t n, const float *st0, const float *g,
                       const size_t *idx, size_t nidx, double step, const char *what)
{
    size_t slen = rk_state_len(dm->m);
    double *base = malloc(sizeof(double) * slen), *work = malloc(sizeof(double) * slen);
    double *fd = malloc(sizeof(double) * nidx);
    for (size_t i = 0; i < slen; i++)
        base[i] = st0[i];
    double fdmax = 0;
    for (size_t s = 0; s < nidx; s++) {
        memcpy(work, base, sizeof(double) * slen);
        work[idx[s]] += step;
        double lp = ref_loss(dm, tok, tgt, mask, n, work);
        memcpy(work, base, sizeof(double) * slen);
        work[idx[s]] -= step;
        double lm = ref_loss(dm, tok, tgt, mask, n, work);
        fd[s] = (lp - lm) / (2 * step);
        if (fabs(fd[s]) > fdmax)
            fdmax = fabs(fd[s]);
    }
    double worst = 0, floor = 1e-2 * fdmax;
    size_t worst_i = 0;
    for (size_t s = 0; s < nidx; s++) {
        double den = fabs(fd[s]) > floor ? fabs(fd[s]) : floor;
        double e = fabs((double)g[idx[s]] - fd[s]) / den;
        if (e > worst || isnan(e))
            worst = isnan(e) ? INFINITY : e, worst_i = s;
    }
    fprintf(stderr, "%s: %zu samples, max |fd| %.3e, max rel err %.2e (elem %zu: %.6e vs fd %.6e)\n",
            what, nidx, fdmax, worst, idx[worst_i], (double)g[idx[worst_i]], fd[worst_i]);
    free(base), free(work), free(fd);
    return worst;
}

/* Sample indices: per layer a few wkv entries of every head, a few of each
 * shift, plus the largest gradients overall. */
static size_t pick_samples(const struct rk_model *m, const float *g, uint64_t seed, size_t *idx,
                           size_t cap)
{
    struct rk_state_layout lay;
    rk_state_layout(m, &lay);
    size_t n = 0;
    for (int l = 0; l < m->L && n + 4 + 2 * m->H <= cap; l++) {
        size_t base = (size_t)l * lay.layer_stride;
        for (int h = 0; h < m->H; h++)
            for (int q = 0; q < 2; q++)
                idx[n++] = base + lay.wkv + (size_t)h * 4096 + rng_next(&seed) % 4096;
        for (int q = 0; q < 2; q++) {
            idx[n++] = base + lay.att_shift + rng_next(&seed) % lay.shift_len;
            idx[n++] = base + lay.ffn_shift + rng_next(&seed) % lay.shift_len;
        }
    }
    /* the largest |g| of the whole state (they exercise the dominant paths) */
    size_t slen = rk_state_len(m);
    for (int q = 0; q < 6 && n < cap; q++) {
        size_t best = 0;
        float bv = -1;
        for (size_t i = 0; i < slen; i++) {
            bool taken = false;
            for (size_t s = 0; s < n; s++)
                taken |= idx[s] == i;
            if (!taken && fabsf(g[i]) > bv)
                bv = fabsf(g[i]), best = i;
        }
        idx[n++] = best;
    }
    return n;
}

static void run_fd(const char *path, size_t T, uint64_t seed, int K)
{
    struct fixture f;
    ck_assert(fixture_open(&f, path));
    const struct rk_model *m = f.m;
    uint32_t *tok = malloc(4 * T), *tgt = malloc(4 * T);
    uint8_t *mask = malloc(T);
    rand_seq((uint32_t)m->V, seed, T, tok, tgt, mask);
    float *st0 = malloc(sizeof(float) * f.slen), *g = malloc(sizeof(float) * f.slen);
    rand_state(m, seed + 1, st0);
    double loss = 0;
    struct rk_backward_params bp = {.checkpoint_every = K};
    int rc = rk_backward_seq(f.ctx, &bp, tok, tgt, mask, T, st0, &loss, g, NULL, NULL);
    ck_assert_msg(rc == RK_OK, "backward: %s", rk_strerror(rc));

    struct dmodel dm;
    dmodel_init(&dm, m);
    double *work = malloc(sizeof(double) * f.slen);
    for (size_t i = 0; i < f.slen; i++)
        work[i] = st0[i];
    double lref = ref_loss(&dm, tok, tgt, mask, T, work);
    fprintf(stderr, "%s T=%zu: loss %.9f, double reference %.9f\n", path, T, loss, lref);
    ck_assert_msg(fabs(loss - lref) <= 1e-5 * fabs(lref), "loss %.9g vs %.9g", loss, lref);

    size_t idx[256];
    size_t nidx = pick_samples(m, g, seed + 2, idx, 256);
    double worst = fd_check(&dm, tok, tgt, mask, T, st0, g, idx, nidx, 1e-4, path);
    ck_assert_msg(worst <= 1e-3, "finite differences: max relative error %.3e", worst);
    dmodel_free(&dm);
    free(work), free(tok), free(tgt), free(mask), free(st0), free(g);
    fixture_close(&f);
}

/* --- tests: finite differences -------------------------------------------- */

START_TEST(test_fd_tiny)
{
    run_fd(rk_test_shared("fixtures/models/tiny-rwkv7-834K.safetensors"), 24, 11, 5);
}
END_TEST

START_TEST(test_fd_rand_mh)
{
    run_fd(rk_test_data("rand-mh.safetensors"), 40, 21, 16);
}
END_TEST

START_TEST(test_fd_rand_mh_bf16)
{
    run_fd(rk_test_data("rand-mh-bf16.safetensors"), 33, 31, 7);
}
END_TEST

/* --- tests: PyTorch autograd reference ------------------------------------ */

/* tests/data/grad-NAME.bin, written by tools/ref_backward_torch.py:
 *   "RKGRAD01", u32 T, u32 state_len, u32 tokens[T], u32 targets[T],
 *   u8 mask[T] (zero-padded to a multiple of 4), f32 state0[state_len],
 *   f64 loss, f32 dstate0[state_len]; little-endian. */
static void run_torch(const char *model_path, const char *grad_name, int K)
{
    size_t len = 0;
    unsigned char *buf = rk_test_read_file(rk_test_data(grad_name), &len);
    ck_assert_msg(buf != NULL, "missing %s", grad_name);
    ck_assert(len >= 16 && memcmp(buf, "RKGRAD01", 8) == 0);
    uint32_t T, slen;
    memcpy(&T, buf + 8, 4);
    memcpy(&slen, buf + 12, 4);
    size_t mpad = (T + 3) & ~3u;
    size_t off = 16;
    ck_assert(len == off + 8 * (size_t)T + mpad + 8 * (size_t)slen + 8);
    uint32_t *tok = malloc(4 * (size_t)T), *tgt = malloc(4 * (size_t)T);
    uint8_t *mask = malloc(T);
    float *st0 = malloc(4 * (size_t)slen), *gref = malloc(4 * (size_t)slen);
    float *g = malloc(4 * (size_t)slen);
    memcpy(tok, buf + off, 4 * (size_t)T), off += 4 * (size_t)T;
    memcpy(tgt, buf + off, 4 * (size_t)T), off += 4 * (size_t)T;
    memcpy(mask, buf + off, T), off += mpad;
    memcpy(st0, buf + off, 4 * (size_t)slen), off += 4 * (size_t)slen;
    double lref;
    memcpy(&lref, buf + off, 8), off += 8;
    memcpy(gref, buf + off, 4 * (size_t)slen);
    free(buf);

    struct fixture f;
    ck_assert(fixture_open(&f, model_path));
    ck_assert_uint_eq(f.slen, slen);
    double loss;
    struct rk_backward_params bp = {.checkpoint_every = K};
    ck_assert_int_eq(rk_backward_seq(f.ctx, &bp, tok, tgt, mask, T, st0, &loss, g, NULL, NULL),
                     RK_OK);
    double gmax = 0, dmax = 0, num = 0, den = 0;
    for (size_t i = 0; i < slen; i++) {
        double d = fabs((double)g[i] - gref[i]);
        gmax = fabs(gref[i]) > gmax ? fabs(gref[i]) : gmax;
        dmax = d > dmax ? d : dmax;
        num += d * d;
        den += (double)gref[i] * gref[i];
    }
    fprintf(stderr,
            "%s vs torch: loss %.9f vs %.9f; gradient max |diff| %.3e (max |g| %.3e), "
            "relative L2 error %.3e\n",
            grad_name, loss, lref, dmax, gmax, sqrt(num / den));
    ck_assert_msg(fabs(loss - lref) <= 1e-5 * fabs(lref), "loss %.9g vs torch %.9g", loss, lref);
    ck_assert_msg(sqrt(num / den) <= 1e-4, "relative L2 error %.3e", sqrt(num / den));
    /* element-wise: within 1e-3 relative, or 1e-4 of the largest gradient */
    rk_check_close(g, gref, slen, 1e-4 * gmax, 1e-3, grad_name);
    free(tok), free(tgt), free(mask), free(st0), free(gref), free(g);
    fixture_close(&f);
}

START_TEST(test_torch_tiny)
{
    run_torch(rk_test_shared("fixtures/models/tiny-rwkv7-834K.safetensors"), "grad-tiny.bin", 16);
}
END_TEST

START_TEST(test_torch_rand_mh)
{
    run_torch(rk_test_data("rand-mh.safetensors"), "grad-rand-mh.bin", 16);
}
END_TEST

START_TEST(test_torch_rand_mh_bf16)
{
    run_torch(rk_test_data("rand-mh-bf16.safetensors"), "grad-rand-mh-bf16.bin", 16);
}
END_TEST

/* --- tests: invariances --------------------------------------------------- */

/* core/rwkv7_backward.c: activation-store budget (bytes); 0 forces the
 * recompute-per-layer path. */

START_TEST(test_checkpoint_interval)
{
    struct fixture f;
    ck_assert(fixture_open(&f, rk_test_data("rand-mh.safetensors")));
    const size_t T = 37;
    uint32_t tok[37], tgt[37];
    uint8_t mask[37];
    rand_seq((uint32_t)f.m->V, 5, T, tok, tgt, mask);
    float *st0 = malloc(sizeof(float) * f.slen);
    rand_state(f.m, 6, st0);
    float *g0 = malloc(sizeof(float) * f.slen), *g1 = malloc(sizeof(float) * f.slen);
    double l0, l1;
    struct rk_backward_params bp = {.checkpoint_every = 1};
    ck_assert_int_eq(rk_backward_seq(f.ctx, &bp, tok, tgt, mask, T, st0, &l0, g0, NULL, NULL),
                     RK_OK);
    const int Ks[] = {3, 16, 37, 100, 1, 7};
    for (size_t i = 0; i < 6; i++) {
        /* the last two recompute each layer instead of keeping all */
        rk__backward_set_store_max(i >= 4 ? 0 : (size_t)1 << 30);
        bp.checkpoint_every = Ks[i];
        ck_assert_int_eq(
            rk_backward_seq(f.ctx, &bp, tok, tgt, mask, T, st0, &l1, g1, NULL, NULL), RK_OK);
        ck_assert(l0 == l1);
        ck_assert_msg(memcmp(g0, g1, sizeof(float) * f.slen) == 0,
                      "gradient differs with checkpoint_every %d", Ks[i]);
    }
    rk__backward_set_store_max((size_t)1 << 30);
    /* NULL state0 means the zero state */
    memset(st0, 0, sizeof(float) * f.slen);
    ck_assert_int_eq(rk_backward_seq(f.ctx, NULL, tok, tgt, mask, T, st0, &l0, g0, NULL, NULL),
                     RK_OK);
    ck_assert_int_eq(rk_backward_seq(f.ctx, NULL, tok, tgt, mask, T, NULL, &l1, g1, NULL, NULL),
                     RK_OK);
    ck_assert(l0 == l1);
    ck_assert(memcmp(g0, g1, sizeof(float) * f.slen) == 0);
    free(st0), free(g0), free(g1);
    fixture_close(&f);
}
END_TEST

/* The element-wise work and the WKV are split over rows and heads between
 * threads, the products over fixed blocks: one thread and every count of
 * rk_test_threads() (RWKVD_TEST_THREADS) must give the same bits, and a NaN
 * in the state must reach the loss (the tuning loop fails the job on it). */
START_TEST(test_backward_threads)
{
    struct fixture f;
    ck_assert(fixture_open(&f, rk_test_data("rand-mh.safetensors")));
    ck_assert_int_ge(f.m->H, 3);
    const size_t T = 45;
    uint32_t tok[45], tgt[45];
    uint8_t mask[45];
    rand_seq((uint32_t)f.m->V, 11, T, tok, tgt, mask);
    float *st0 = malloc(sizeof(float) * f.slen);
    rand_state(f.m, 12, st0);
    float *g[2] = {malloc(sizeof(float) * f.slen), malloc(sizeof(float) * f.slen)};
    double loss[2];
    int counts[8];
    size_t nc = rk_test_threads(counts, 8);
    for (size_t ci = 0; ci <= nc; ci++) {
        int threads = ci == 0 ? 1 : counts[ci - 1], i = ci == 0 ? 0 : 1;
        struct rk_ctx *ctx;
        struct rk_ctx_params cp = {.n_threads = threads};
        ck_assert_int_eq(rk_ctx_create(f.m, &cp, &ctx), RK_OK);
        struct rk_backward_params bp = {.checkpoint_every = 8};
        ck_assert_int_eq(rk_backward_seq(ctx, &bp, tok, tgt, mask, T, st0, &loss[i], g[i], NULL,
                                         NULL),
                         RK_OK);
        rk_ctx_free(ctx);
        if (i == 0)
            continue;
        ck_assert_msg(loss[0] == loss[1], "loss differs between 1 and %d threads: %.17g vs %.17g",
                      threads, loss[0], loss[1]);
        ck_assert_msg(memcmp(g[0], g[1], sizeof(float) * f.slen) == 0,
                      "gradient differs between 1 and %d threads", threads);
    }
    /* a NaN in layer 0's WKV state */
    struct rk_state_layout lay;
    rk_state_layout(f.m, &lay);
    st0[lay.wkv + 5] = NAN;
    ck_assert_int_eq(rk_backward_seq(f.ctx, NULL, tok, tgt, mask, T, st0, &loss[0], g[0], NULL,
                                     NULL),
                     RK_OK);
    ck_assert_msg(isnan(loss[0]), "loss %g with a NaN state", loss[0]);
    free(st0), free(g[0]), free(g[1]);
    fixture_close(&f);
}
END_TEST

static bool cancel_now(void *user)
{
    int *calls = user;
    return ++*calls >= 3;
}

START_TEST(test_mask_and_errors)
{
    struct fixture f;
    ck_assert(fixture_open(&f, rk_test_data("rand-mh.safetensors")));
    const size_t T = 12;
    uint32_t tok[12], tgt[12];
    uint8_t mask[12] = {0};
    rand_seq((uint32_t)f.m->V, 9, T, tok, tgt, mask);
    float *g = malloc(sizeof(float) * f.slen);
    double loss = 1;
    uint8_t none[12] = {0};
    ck_assert_int_eq(rk_backward_seq(f.ctx, NULL, tok, tgt, none, T, NULL, &loss, g, NULL, NULL),
                     RK_OK);
    ck_assert(loss == 0);
    for (size_t i = 0; i < f.slen; i++)
        ck_assert(g[i] == 0);
    /* one selected position: loss equals that position's CE (the last one) */
    uint8_t last[12] = {0};
    last[T - 1] = 1;
    ck_assert_int_eq(rk_backward_seq(f.ctx, NULL, tok, tgt, last, T, NULL, &loss, g, NULL, NULL),
                     RK_OK);
    float *logits = malloc(sizeof(float) * (size_t)f.m->V);
    float *st = calloc(f.slen, sizeof(float));
    ck_assert_int_eq(rk_forward_seq(f.ctx, tok, T, st, logits, false), RK_OK);
    double ce = -rk_logprob(logits, (size_t)f.m->V, tgt[T - 1]);
    ck_assert_msg(fabs(ce - loss) < 1e-4 * fabs(ce), "CE %.7f vs backward loss %.7f", ce, loss);
    /* errors */
    uint32_t bad[12];
    memcpy(bad, tok, sizeof bad);
    bad[3] = (uint32_t)f.m->V;
    ck_assert_int_eq(rk_backward_seq(f.ctx, NULL, bad, tgt, NULL, T, NULL, &loss, g, NULL, NULL),
                     RK_ERANGE);
    ck_assert_int_eq(rk_backward_seq(f.ctx, NULL, tok, bad, NULL, T, NULL, &loss, g, NULL, NULL),
                     RK_ERANGE);
    ck_assert_int_eq(rk_backward_seq(f.ctx, NULL, tok, tgt, NULL, 0, NULL, &loss, g, NULL, NULL),
                     RK_EINVAL);
    int calls = 0;
    ck_assert_int_eq(
        rk_backward_seq(f.ctx, NULL, tok, tgt, NULL, T, NULL, &loss, g, cancel_now, &calls),
        RK_ECANCELED);
    free(g), free(logits), free(st);
    fixture_close(&f);
}
END_TEST

RK_TEST_SUITE(backward_shared_suite, RK_NEEDS_SHARED)
{
    Suite *s = suite_create("backward-tiny");
    TCase *tc = tcase_create("tiny");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_fd_tiny);
    tcase_add_test(tc, test_torch_tiny);
    suite_add_tcase(s, tc);
    return s;
}

/* A uniform value in [-0.5, 0.5) from a 64-bit LCG (the kernel tests' data). */
static float lcg_unit(uint64_t *seed)
{
    *seed = *seed * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(*seed >> 40) / (double)(1ull << 24) - 0.5);
}

/* The transposed product every backward linear map uses, against a double
 * loop: f32, bf16 and f16 weights, odd shapes, a scratch that forces many
 * blocks, accumulation, one and three threads. */
START_TEST(test_matmul_t)
{
    enum { N = 33, ROWS = 301, COLS = 200 }; /* big enough for the threads to split */
    uint64_t seed = 99;
    float *dY = malloc(sizeof(float) * N * ROWS), *w = malloc(sizeof(float) * ROWS * COLS);
    uint16_t *w16 = malloc(sizeof(uint16_t) * ROWS * COLS);
    float *dX = malloc(sizeof(float) * N * COLS), *wbuf = malloc(sizeof(float) * 50 * COLS);
    for (int i = 0; i < N * ROWS; i++) {
        dY[i] = lcg_unit(&seed);
    }
    for (int i = 0; i < ROWS * COLS; i++) {
        w[i] = lcg_unit(&seed);
    }
    for (int threads = 1; threads <= 3; threads += 2) {
        struct rk__pool *pool = NULL;
        ck_assert_int_eq(rk__pool_create(threads, 0, &pool), RK_OK);
        for (int dt = 0; dt < 3; dt++) {
            struct rk_weight W = {.rows = ROWS, .cols = COLS};
            float *wq = malloc(sizeof(float) * ROWS * COLS); /* the weight as stored */
            for (int i = 0; i < ROWS * COLS; i++) {
                if (dt == 0) {
                    wq[i] = w[i];
                } else if (dt == 1) {
                    w16[i] = rk__f32_to_bf16(w[i]);
                    wq[i] = rk__bf16_to_f32(w16[i]);
                } else {
                    w16[i] = rk__f32_to_f16(w[i]);
                    wq[i] = rk__f16_to_f32(w16[i]);
                }
            }
            W.dtype = dt == 0 ? RK_DTYPE_F32 : dt == 1 ? RK_DTYPE_BF16 : RK_DTYPE_F16;
            W.data = dt == 0 ? (void *)w : (void *)w16;
            for (int acc = 0; acc < 2; acc++) {
                for (int i = 0; i < N * COLS; i++)
                    dX[i] = acc ? 0.25f * (float)(i % 5) : 1e30f;
                rk__matmul_t(pool, dX, dY, N, &W, acc, wbuf, 50 * COLS);
                for (int t = 0; t < N; t++)
                    for (int c = 0; c < COLS; c++) {
                        double want = acc ? 0.25 * (double)((t * COLS + c) % 5) : 0;
                        for (int r = 0; r < ROWS; r++)
                            want += (double)dY[t * ROWS + r] * (double)wq[r * COLS + c];
                        ck_assert_msg(fabs(dX[t * COLS + c] - want) < 1e-4,
                                      "dtype %d acc %d threads %d: [%d][%d] %g vs %g", dt, acc,
                                      threads, t, c, dX[t * COLS + c], want);
                    }
            }
            free(wq);
        }
        rk__pool_free(pool);
    }
    free(dY), free(w), free(w16), free(dX), free(wbuf);
}
END_TEST

/* Panel-held weights (rk__weight_pack): the forward product against a double
 * loop for every group size the kernels have (1 to 3 panels, 1 to 8 rows of
 * X and more), one and three threads; each row's result bit-identical to its
 * solo product with the AVX-512 kernels; the transposed product too. */
START_TEST(test_panel_products)
{
    static const int rows_v[] = {16, 48, 80, 112, 304}, cols_v[] = {24, 200};
    static const size_t n_v[] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 17, 33};
    enum { NMAX = 33, RMAX = 304, CMAX = 200 };
    uint64_t seed = 7;
    float *X = malloc(sizeof(float) * NMAX * CMAX), *Y = malloc(sizeof(float) * NMAX * RMAX);
    float *Y1 = malloc(sizeof(float) * RMAX), *wq = malloc(sizeof(float) * RMAX * CMAX);
    float *dX = malloc(sizeof(float) * NMAX * CMAX), *wbuf = malloc(sizeof(float) * 40 * CMAX);
    uint16_t *w16 = malloc(2 * RMAX * CMAX), *p16 = malloc(2 * RMAX * CMAX);
    float *w32 = malloc(4 * RMAX * CMAX), *p32 = malloc(4 * RMAX * CMAX);
    for (int i = 0; i < NMAX * CMAX; i++) {
        X[i] = lcg_unit(&seed);
    }
    bool exact = rk__use_avx512();
    for (int threads = 1; threads <= 3; threads += 2) {
        struct rk__pool *pool = NULL;
        ck_assert_int_eq(rk__pool_create(threads, 0, &pool), RK_OK);
        for (int dt = 0; dt < 3; dt++) /* bf16, f16, f32 */
            for (size_t ri = 0; ri < sizeof rows_v / sizeof rows_v[0]; ri++)
                for (size_t ci = 0; ci < sizeof cols_v / sizeof cols_v[0]; ci++) {
                    int R = rows_v[ri], C = cols_v[ci];
                    for (int i = 0; i < R * C; i++) {
                        float f = lcg_unit(&seed);
                        if (dt == 2) {
                            w32[i] = wq[i] = f;
                            continue;
                        }
                        w16[i] = dt == 0 ? rk__f32_to_bf16(f) : rk__f32_to_f16(f);
                        wq[i] = dt == 0 ? rk__bf16_to_f32(w16[i]) : rk__f16_to_f32(w16[i]);
                    }
                    static const enum rk_dtype dts[] = {RK_DTYPE_BF16, RK_DTYPE_F16,
                                                        RK_DTYPE_F32};
                    struct rk_weight W = {dts[dt], dt == 2 ? (void *)w32 : (void *)w16, R, C,
                                          false, NULL, NULL};
                    rk__weight_pack(dt == 2 ? (void *)p32 : (void *)p16, &W);
                    W.data = dt == 2 ? (void *)p32 : (void *)p16;
                    W.panel = true;
                    for (size_t ni = 0; ni < sizeof n_v / sizeof n_v[0]; ni++) {
                        size_t n = n_v[ni];
                        rk__matmul(pool, false, Y, X, n, &W);
                        for (size_t t = 0; t < n; t++) {
                            for (int r = 0; r < R; r++) {
                                double want = 0;
                                for (int c = 0; c < C; c++)
                                    want += (double)X[t * C + c] * wq[r * C + c];
                                ck_assert_msg(fabs(Y[t * R + r] - want) < 1e-4,
                                              "dt %d R %d C %d n %zu thr %d: [%zu][%d] %g vs %g",
                                              dt, R, C, n, threads, t, r, Y[t * R + r], want);
                            }
                            if (exact) {
                                rk__matmul(pool, false, Y1, X + t * C, 1, &W);
                                ck_assert_msg(!memcmp(Y1, Y + t * R, sizeof(float) * R),
                                              "R %d C %d: row %zu of %zu differs from solo",
                                              R, C, t, n);
                            }
                        }
                    }
                    /* transposed, accumulated: dX[t][c] += sum_r dY[t][r] W[r][c], with
                     * dY = the first 9 * R values of X; a scratch of 40 * CMAX floats
                     * holds 32 rows of 200 columns, so R = 304 takes several blocks */
                    enum { NT = 9 };
                    for (int i = 0; i < NT * C; i++)
                        dX[i] = 0.25f * (float)(i % 5);
                    rk__matmul_t(pool, dX, X, NT, &W, true, wbuf, 40 * CMAX);
                    for (int t = 0; t < NT; t++)
                        for (int c = 0; c < C; c++) {
                            double want = 0.25 * (double)((t * C + c) % 5);
                            for (int r = 0; r < R; r++)
                                want += (double)X[t * R + r] * wq[r * C + c];
                            ck_assert_msg(fabs(dX[t * C + c] - want) < 1e-4,
                                          "transposed dt %d R %d C %d: [%d][%d] %g vs %g", dt, R,
                                          C, t, c, dX[t * C + c], want);
                        }
                }
        rk__pool_free(pool);
    }
    free(X), free(Y), free(Y1), free(wq), free(dX), free(wbuf), free(w16), free(p16);
    free(w32), free(p32);
}
END_TEST

/* One WKV step on one head, the fast kernel against a double-precision
 * loop: y, sa and the new state, over random states and vectors, each of 64
 * rows checked (the fast kernel folds eight rows' sums at once, so a wrong
 * lane shows here as a wrong row). */
START_TEST(test_wkv_head)
{
    enum { HN = 64 };
    static float S[HN * HN], S0[HN * HN], vec[7][HN], y[HN], sa[HN];
    uint64_t seed = 11;
    for (int round = 0; round < 20; round++) {
        for (int i = 0; i < HN * HN + 7 * HN; i++) {
            float f = lcg_unit(&seed);
            if (i < HN * HN)
                S[i] = S0[i] = f * (float)(1 + round % 3);
            else
                vec[(i - HN * HN) / HN][(i - HN * HN) % HN] = f;
        }
        for (int j = 0; j < HN; j++) /* decay in (0, 1) as the model's w */
            vec[1][j] = 0.5f + vec[1][j];
        const float *r = vec[0], *w = vec[1], *k = vec[2], *v = vec[3], *a = vec[4], *b = vec[5];
        rk__wkv_head(false, S, r, w, k, v, a, b, y, round % 2 ? sa : NULL);
        for (int i = 0; i < HN; i++) {
            double sai = 0, yi = 0;
            for (int j = 0; j < HN; j++)
                sai += (double)S0[i * HN + j] * a[j];
            for (int j = 0; j < HN; j++) {
                double s = (double)S0[i * HN + j] * w[j] + sai * b[j] + (double)v[i] * k[j];
                ck_assert_msg(fabs(S[i * HN + j] - s) < 1e-5, "S[%d][%d] %g vs %g", i, j,
                              S[i * HN + j], s);
                yi += s * r[j];
            }
            ck_assert_msg(fabs(y[i] - yi) < 1e-5, "round %d y[%d] %g vs %g", round, i, y[i], yi);
            if (round % 2)
                ck_assert_msg(fabs(sa[i] - sai) < 1e-5, "sa[%d] %g vs %g", i, sa[i], sai);
        }
    }
}
END_TEST

/* AMX products (RK_KERN_AMX) with bf16 panels: every row against a double
 * loop over its bf16-rounded inputs, for 1 to 33 rows of X (whole and
 * partial tiles of 16), odd and even panel counts, 1 and 3 threads; each row
 * bit-identical to its solo product. Weights that do not fit the tiles
 * (columns not a multiple of 32) take the fp32 kernels: exact inputs. */
START_TEST(test_amx_products)
{
    if (!rk__amx_usable()) {
        printf("test_amx_products: no AMX here, nothing to check\n");
        return;
    }
    static const int rows_v[] = {16, 48, 80, 304}, cols_v[] = {32, 224, 200};
    static const size_t n_v[] = {1, 2, 15, 16, 17, 31, 32, 33};
    enum { NMAX = 33, RMAX = 304, CMAX = 224 };
    uint64_t seed = 9;
    float *X = malloc(sizeof(float) * NMAX * CMAX), *Y = malloc(sizeof(float) * NMAX * RMAX);
    float *Y1 = malloc(sizeof(float) * RMAX), *wq = malloc(sizeof(float) * RMAX * CMAX);
    uint16_t *w16 = malloc(2 * RMAX * CMAX), *p16 = malloc(2 * RMAX * CMAX);
    for (int i = 0; i < NMAX * CMAX; i++) {
        X[i] = lcg_unit(&seed);
    }
    for (int threads = 1; threads <= 3; threads += 2) {
        struct rk__pool *pool = NULL;
        ck_assert_int_eq(rk__pool_create(threads, 0, &pool), RK_OK);
        for (size_t ri = 0; ri < sizeof rows_v / sizeof rows_v[0]; ri++)
            for (size_t ci = 0; ci < sizeof cols_v / sizeof cols_v[0]; ci++) {
                int R = rows_v[ri], C = cols_v[ci];
                for (int i = 0; i < R * C; i++) {
                    w16[i] = rk__f32_to_bf16(lcg_unit(&seed));
                    wq[i] = rk__bf16_to_f32(w16[i]);
                }
                struct rk_weight W = {RK_DTYPE_BF16, w16, R, C, false, NULL, NULL};
                rk__weight_pack(p16, &W);
                W.data = p16;
                W.panel = true;
                bool tiles = rk__amx_fits(&W);
                ck_assert_int_eq(tiles, C % 32 == 0);
                for (size_t ni = 0; ni < sizeof n_v / sizeof n_v[0]; ni++) {
                    size_t n = n_v[ni];
                    for (size_t i = 0; i < n * (size_t)R; i++)
                        Y[i] = NAN; /* every output must be written */
                    rk__matmul(pool, RK_KERN_AMX, Y, X, n, &W);
                    for (size_t t = 0; t < n; t++) {
                        for (int r = 0; r < R; r++) {
                            double want = 0;
                            for (int c = 0; c < C; c++) {
                                float x = X[t * C + c];
                                if (tiles)
                                    x = rk__bf16_to_f32(rk__f32_to_bf16(x));
                                want += (double)x * wq[r * C + c];
                            }
                            ck_assert_msg(fabs(Y[t * R + r] - want) < 1e-4,
                                          "R %d C %d n %zu thr %d: [%zu][%d] %g vs %g", R, C,
                                          n, threads, t, r, Y[t * R + r], want);
                        }
                        rk__matmul(pool, RK_KERN_AMX, Y1, X + t * C, 1, &W);
                        ck_assert_msg(!memcmp(Y1, Y + t * R, sizeof(float) * R),
                                      "R %d C %d: row %zu of %zu differs from solo", R, C, t,
                                      n);
                    }
                }
            }
        rk__pool_free(pool);
    }
    free(X), free(Y), free(Y1), free(wq), free(w16), free(p16);
}
END_TEST

/* Every product kernel, one thread against every count of rk_test_threads():
 * the forward product (rk__matmul, _relu2, _many, a row range as the head
 * takes it) and the transposed one (rk__matmul_t, plain and accumulated),
 * f32, bf16 and f16 weights row-major and in panels, on the fast, reference
 * and AMX kernels, for row counts that select every path (dot, tiled, panel,
 * converted-block sgemm). The shapes span several of the fixed blocks the
 * products are split into, with ragged ends. Bit-identical on any CPU. */
START_TEST(test_products_threads)
{
    enum { R = 400, C = 272, NMAX = 64 };
    static const size_t n_v[] = {1, 2, 3, 5, 17, 49, NMAX};
    uint64_t seed = 5;
    float *X = malloc(sizeof(float) * NMAX * R), *w = malloc(sizeof(float) * R * C);
    uint16_t *w16 = malloc(2 * R * C);
    void *pk = malloc(4 * R * C);
    float *Y[2], *Z[2];
    for (int i = 0; i < 2; i++) {
        Y[i] = malloc(sizeof(float) * NMAX * R * 5);
        Z[i] = malloc(sizeof(float) * NMAX * C * 2);
    }
    float *wbuf = malloc(sizeof(float) * 80 * C); /* 80 rows: several blocks of R */
    for (int i = 0; i < NMAX * R; i++)
        X[i] = lcg_unit(&seed);
    for (int i = 0; i < R * C; i++)
        w[i] = lcg_unit(&seed);
    int counts[8];
    size_t nc = rk_test_threads(counts, 8);
    struct rk__pool *pools[9] = {NULL};
    ck_assert_int_eq(rk__pool_create(1, 0, &pools[0]), RK_OK);
    for (size_t ci = 0; ci < nc; ci++)
        ck_assert_int_eq(rk__pool_create(counts[ci], 0, &pools[ci + 1]), RK_OK);
    for (int dt = 0; dt < 3; dt++)
        for (int panel = 0; panel < 2; panel++) {
            static const enum rk_dtype dts[] = {RK_DTYPE_F32, RK_DTYPE_BF16, RK_DTYPE_F16};
            struct rk_weight W = {dts[dt], dt == 0 ? (void *)w : (void *)w16, R, C, false, NULL, NULL};
            for (int i = 0; dt && i < R * C; i++)
                w16[i] = dt == 1 ? rk__f32_to_bf16(w[i]) : rk__f32_to_f16(w[i]);
            if (panel) {
                if (!rk__weight_wants_panels(&W))
                    continue; /* panels are only held while the AVX-512 kernels run */
                rk__weight_pack(pk, &W);
                W.data = pk;
                W.panel = true;
            }
            for (int kern = 0; kern < 3; kern++)
                for (size_t ni = 0; ni < sizeof n_v / sizeof n_v[0]; ni++) {
                    size_t n = n_v[ni];
                    /* the scalar loop runs on one thread; without AMX, AMX is FAST */
                    if ((kern == RK_KERN_REF && n > 5) ||
                        (kern == RK_KERN_AMX && !rk__amx_usable()))
                        continue;
                    for (size_t p = 0; p <= nc; p++) {
                        float *y = Y[p ? 1 : 0], *z = Z[p ? 1 : 0];
                        struct rk__pool *pool = pools[p];
                        rk__matmul(pool, kern, y, X, n, &W);
                        rk__matmul_relu2(pool, kern, y + n * R, X, n, &W);
                        rk__matmul_rows(pool, kern, y + 4 * n * R, X, n, &W, 16, R - 48);
                        const char *what[3] = {"product", "relu2", "rows"};
                        for (int k = 0; p && k < 3; k++) {
                            size_t len = k == 2 ? n * (R - 64) : n * R;
                            size_t off = (size_t)(k == 2 ? 4 : k) * n * R;
                            const float *a = Y[0] + off, *b = Y[1] + off;
                            ck_assert_msg(!memcmp(a, b, sizeof(float) * len),
                                          "%s: dtype %d panel %d kern %d n %zu: 1 vs %d threads",
                                          what[k], dt, panel, kern, n, counts[p - 1]);
                        }
                        /* two products in one pass of the pool */
                        size_t n1 = n - (n > 1);
                        struct rk__mm mm[2] = {{y + 2 * n * R, X, &W},
                                               {y + 3 * n * R, X + C, &W}};
                        rk__matmul_many(pool, kern, mm, 2, n1);
                        for (int k = 2; p && k < 4; k++)
                            ck_assert_msg(!memcmp(Y[0] + k * n * R, Y[1] + k * n * R,
                                                  sizeof(float) * n1 * R),
                                          "many: dtype %d panel %d kern %d n %zu: 1 vs %d",
                                          dt, panel, kern, n, counts[p - 1]);
                        if (kern != 0)
                            continue;
                        /* transposed: dX[n][C] = dY[n][R] W, then += again */
                        rk__matmul_t(pool, z, X, n, &W, false, wbuf, 80 * C);
                        rk__matmul_t(pool, z + n * C, X, n, &W, false, wbuf, 80 * C);
                        rk__matmul_t(pool, z + n * C, X + R, n - (n > 1), &W, true, wbuf,
                                     80 * C);
                        if (p)
                            ck_assert_msg(!memcmp(Z[0], Z[1], sizeof(float) * n * C * 2),
                                          "transposed: dtype %d panel %d n %zu: 1 vs %d threads",
                                          dt, panel, n, counts[p - 1]);
                    }
                }
        }
    for (size_t p = 0; p <= nc; p++)
        rk__pool_free(pools[p]);
    free(X), free(w), free(w16), free(pk), free(wbuf);
    for (int i = 0; i < 2; i++)
        free(Y[i]), free(Z[i]);
}
END_TEST

RK_TEST_SUITE(backward_suite, RK_SELF_CONTAINED)
{
    Suite *s = suite_create("backward");
    TCase *tc = tcase_create("random-fixtures");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_fd_rand_mh);
    tcase_add_test(tc, test_fd_rand_mh_bf16);
    tcase_add_test(tc, test_torch_rand_mh);
    tcase_add_test(tc, test_torch_rand_mh_bf16);
    tcase_add_test(tc, test_checkpoint_interval);
    tcase_add_test(tc, test_mask_and_errors);
    tcase_add_test(tc, test_matmul_t);
    tcase_add_test(tc, test_panel_products);
    tcase_add_test(tc, test_wkv_head);
    tcase_add_test(tc, test_amx_products);
    suite_add_tcase(s, tc);
    /* the thread-identity checks alone: CK_RUN_CASE=threads (the matrix suite) */
    tc = tcase_create("threads");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_backward_threads);
    tcase_add_test(tc, test_products_threads);
    suite_add_tcase(s, tc);
    return s;
}

/*
 * api_ttt.c - test-time training on the generation routes: "ttt" tunes a
 * temporary copy of the request's state on its own prompt with the loss of
 * the "rl" method (rk_rl_run: K samples a step, scored by the judge or by
 * the model's own mean log-probability, advantages, policy gradient with a
 * KL term to the request's state), then the engine answers from the tuned
 * copy. The copy is never stored: a detached state reference that the job
 * drops when it ends.
 *
 * DESIGN. Parsing, limits and the per-tenant budgets run on the loop thread:
 * srv->ttt_budget (samples) and, with a judge, srv->judge_budget (best_of's:
 * steps x k judge calls are reserved, those not made are given back when the
 * work is freed, the tokens are charged as the calls return). The tuning
 * runs on the loop's thread pool (rk_http_offload) with its own one-thread
 * context, so the loop and the engine thread are never held up; the work
 * item owns a reference to the parsed job and writes only its own
 * fields. When it is done the handler runs again (rk_ttt_resume), swaps
 * the job's state for the tuned one and submits the job like any other.
 * The job's deadline and a disconnect stop the tuning between tokens.
 * docs/API.md, "ttt", has the fields, limits and errors.
 */
#include "judge.h"
#include "json_read.h"
#include "srv.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TTT_SELF_FLOOR (-100.0)   /* self score of an empty sample */
#define TTT_CHUNK 16              /* rows of logits the self scorer computes at once */

struct ttt_opts {
    int steps, k, max_tokens;
    double temperature, lr, kl;
    bool self; /* score by the model's own mean log-probability */
};

struct ttt_work {
    struct rk_srv *srv;
    struct rk_job *job; /* one reference */
    struct ttt_opts o;
    struct rk_teacher *judge; /* borrowed srv->judge, or NULL (self) */
    char tenant[RK_STATE_ID_MAX + 1];
    char *prompt_text;        /* for the judge */
    long long judge_calls;    /* made of the steps x k reserved (the rest is refunded) */
    bool ran;                 /* work_run started: the samples are spent */
    /* self scoring: the request's state after prompt[0 .. n-2] */
    struct rk_ctx *sctx;
    float *spre, *sst, *slog;
    /* results */
    struct rk_state_ref *tuned;
    int rc;
    char why[320];
    size_t tokens;
    double score_first, score_last;
};

/* Reserve `samples` of the tenant's ttt budget, or prepare a 429 (or 503). */
static bool samples_take(struct rk_http_req *r, long long samples)
{
    struct rk_srv *srv = r->srv;
    const long long need[RK_TW_COUNTERS] = {samples},
                    limit[RK_TW_COUNTERS] = {srv->cfg.ttt_samples_per_min, LLONG_MAX};
    struct rk_tw_status st;
    int rc = rk_tenant_window_reserve(srv->ttt_budget, r->tenant, need, limit, &st);
    if (rc == RK_EBUSY)
        rk_http_error(r, 429, "ttt_budget_exceeded", "ttt", "ttt needs %lld samples (steps x k) "
                      "and %lld of this minute's %lld are left; the budget renews in %d s",
                      samples, limit[0] - st.used[0] > 0 ? limit[0] - st.used[0] : 0, limit[0],
                      st.renew_s);
    else if (rc != RK_OK)
        rk_http_error(r, 503, "enomem", NULL, "out of memory");
    return rc == RK_OK;
}

/* Give back `samples` of the tenant's ttt budget and, with the judge, `calls`
 * of its judge budget: the one way back for what rk_ttt_parse reserved. */
static void give_back(struct rk_srv *srv, const char *tenant, const struct ttt_opts *o,
                      long long samples, long long calls)
{
    const long long s[RK_TW_COUNTERS] = {samples}, c[RK_TW_COUNTERS] = {[RK_JUDGE_CALLS] = calls};
    if (samples > 0)
        rk_tenant_window_refund(srv->ttt_budget, tenant, s);
    if (!o->self && calls > 0)
        rk_tenant_window_refund(srv->judge_budget, tenant, c);
}

void rk_ttt_drop(struct rk_http_req *r, struct ttt_opts *o)
{
    if (!o)
        return;
    const long long all = (long long)o->steps * o->k;
    give_back(r->srv, r->tenant, o, all, all);
    free(o);
}

/* One number of the "ttt" object, reported as "ttt.<key>": read with the
 * shared readers from a one-field object named so. An integer when `whole`
 * (in [lo, hi]), else a number in [lo, hi] or (lo, hi] when lo_open. */
static bool sub_field(struct rk_http_req *r, json_t *v, const char *key, bool whole, double lo,
                      double hi, bool lo_open, double *out)
{
    json_t *x = json_object_get(v, key);
    if (!x || json_is_null(x))
        return true;
    char name[32];
    snprintf(name, sizeof name, "ttt.%s", key);
    json_t *t = json_pack("{sO}", name, x);
    if (!t) {
        rk_http_error(r, 503, "enomem", NULL, "out of memory");
        return false;
    }
    long long y = (long long)*out;
    bool ok = whole ? rk_json_int(r, t, name, (long long)lo, (long long)hi, &y)
                    : rk_json_num(r, t, name, lo, hi, lo_open, out);
    json_decref(t);
    if (ok && whole)
        *out = (double)y;
    return ok;
}

static bool sub_int(struct rk_http_req *r, json_t *v, const char *key, long long lo,
                    long long hi, int *out)
{
    double y = *out;
    bool ok = sub_field(r, v, key, true, (double)lo, (double)hi, false, &y);
    *out = (int)y;
    return ok;
}

bool rk_ttt_parse(struct rk_http_req *r, json_t *o, struct rk_job *j, struct ttt_opts **out)
{
    struct rk_srv *srv = r->srv;
    const struct rk_srv_config *c = &srv->cfg;
    *out = NULL;
    json_t *v = json_object_get(o, "ttt");
    if (!v || json_is_null(v))
        return true;
    if (!json_is_object(v)) {
        rk_field_fail(r, RK_FIELD_INVALID_TYPE, "ttt", "'ttt' must be an object");
        return false;
    }
    static const char *const keys[] = {"steps", "k", "max_tokens", "temperature", "lr", "kl",
                                       "judge", NULL};
    const char *bad = rk_json_unknown_key(v, keys, NULL);
    if (bad) {
        rk_field_fail(r, RK_FIELD_INVALID_VALUE, "ttt", "ttt.%.40s is not a ttt field "
                      "(steps, k, max_tokens, temperature, lr, kl, judge)", bad);
        return false;
    }
    if (c->ttt_max_steps == 0) {
        rk_field_fail(r, RK_FIELD_UNSUPPORTED, "ttt", "test-time training is off on this "
                      "server (--ttt-max-steps 0)");
        return false;
    }
    struct ttt_opts t = {.steps = 1, .k = 4, .max_tokens = 32, .temperature = 1, .lr = 1,
                         .kl = 0.05, .self = !srv->judge};
    if (t.k > c->ttt_max_k)
        t.k = c->ttt_max_k;
    if (t.max_tokens > c->ttt_max_tokens)
        t.max_tokens = c->ttt_max_tokens;
    if (!sub_int(r, v, "steps", 1, c->ttt_max_steps, &t.steps) ||
        !sub_int(r, v, "k", 2, c->ttt_max_k, &t.k) ||
        !sub_int(r, v, "max_tokens", 1, c->ttt_max_tokens, &t.max_tokens) ||
        !sub_field(r, v, "temperature", false, 0, 10, true, &t.temperature) ||
        !sub_field(r, v, "lr", false, 0, 1000, true, &t.lr) ||
        !sub_field(r, v, "kl", false, 0, 1000, false, &t.kl))
        return false;
    json_t *jv = json_object_get(v, "judge");
    if (jv && !json_is_null(jv)) {
        const char *s = json_string_value(jv);
        if (!s || (strcmp(s, "self") && strcmp(s, "default"))) {
            rk_field_fail(r, json_is_string(jv) ? RK_FIELD_INVALID_VALUE : RK_FIELD_INVALID_TYPE,
                          "ttt.judge", "ttt.judge must be \"default\" (the server's judge, or "
                          "the model's own score without one) or \"self\"");
            return false;
        }
        t.self = !strcmp(s, "self") || !srv->judge;
    }
    if (rk_bestof_wanted(j)) { // the caller gives best_of's reservation back
        rk_field_fail(r, RK_FIELD_UNSUPPORTED, "ttt", "'ttt' cannot be combined with best_of "
                      "above n or return_scores");
        return false;
    }
    if (j->state && rk_state_ref_meta(j->state)->kernel_m > 0) {
        rk_field_fail(r, RK_FIELD_INVALID_VALUE, "ttt", "'ttt' tunes plain states; the "
                      "request's state is a kernel state (method %.32s)",
                      rk_state_ref_meta(j->state)->method);
        return false;
    }
    // The samples, and with a judge as many judge calls from the budget
    // best_of uses: both or neither.
    const long long need[RK_TW_COUNTERS] = {(long long)t.steps * t.k};
    if (!samples_take(r, need[0]))
        return false;
    if (!t.self && !rk_judge_budget_take(r, need[0], "ttt", "ttt (steps x k)")) {
        give_back(srv, r->tenant, &t, need[0], 0);
        return false;
    }
    if (!(*out = malloc(sizeof **out))) {
        give_back(srv, r->tenant, &t, need[0], need[0]);
        rk_http_error(r, 503, "enomem", NULL, "out of memory");
        return false;
    }
    **out = t;
    return true;
}

/* --- the work, on the thread pool ----------------------------------------- */

static void work_free(void *p)
{
    struct ttt_work *w = p;
    if (!w)
        return;
    // The judge calls the tuning did not make; all the samples when it
    // never ran (the work could not be queued).
    const long long all = (long long)w->o.steps * w->o.k;
    give_back(w->srv, w->tenant, &w->o, w->ran ? 0 : all, all - w->judge_calls);
    rk_job_release(w->job);
    rk_state_ref_release(w->tuned);
    rk_ctx_free(w->sctx);
    free(w->spre), free(w->sst), free(w->slog), free(w->prompt_text);
    free(w);
}

static bool w_cancel(void *user)
{
    struct ttt_work *w = user;
    return atomic_load(&w->job->cancel) || rk_now_us() > w->job->deadline_us;
}

static void w_progress(const struct rk_tune_progress *p, void *user)
{
    struct ttt_work *w = user;
    if (p->step == 1)
        w->score_first = p->score;
    w->score_last = p->score;
}

/* The self score: the sample's mean log-probability per token under the
 * request's state (the starting point, not the state being tuned). */
static int self_score(struct ttt_work *w, const uint32_t *y, size_t n, double *score)
{
    const struct rk_job *j = w->job;
    size_t V = (size_t)rk_model_n_vocab(w->srv->model), slen = rk_state_len(w->srv->model);
    if (!n) {
        *score = TTT_SELF_FLOOR;
        return RK_OK;
    }
    memcpy(w->sst, w->spre, slen * sizeof(float));
    double sum = 0;
    for (size_t p0 = 0; p0 < n; p0 += TTT_CHUNK) {
        size_t c = n - p0 < TTT_CHUNK ? n - p0 : TTT_CHUNK;
        uint32_t in[TTT_CHUNK];
        for (size_t i = 0; i < c; i++)
            in[i] = p0 + i == 0 ? j->prompt[j->n_prompt - 1] : y[p0 + i - 1];
        int rc = rk_forward_seq(w->sctx, in, c, w->sst, w->slog, true);
        if (rc != RK_OK)
            return rc;
        for (size_t i = 0; i < c; i++)
            sum += rk_logprob(w->slog + i * V, V, y[p0 + i]);
        w->tokens += c;
    }
    *score = sum / (double)n;
    return RK_OK;
}

static int w_score(void *user, size_t prompt, int k, const uint32_t *y, size_t n, double *score)
{
    struct ttt_work *w = user;
    (void)prompt, (void)k;
    if (w->o.self)
        return self_score(w, y, n, score);
    char *text = malloc(n * 8 + 1);
    if (!text)
        return RK_ENOMEM;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        size_t bl = 0;
        const uint8_t *b = rk_tok_bytes(w->srv->tok, y[i], &bl);
        memcpy(text + o, b, bl);
        o += bl;
    }
    char *clean = malloc(o + 4 + 1);
    if (!clean) {
        free(text);
        return RK_ENOMEM;
    }
    rk_utf8_sanitize((const uint8_t *)text, o, clean, o + 4 + 1);
    free(text);
    long long jt = 0;
    int rc = rk_judge_score(w->judge, false, NULL, w->prompt_text, clean, strlen(clean), NULL,
                            w->job->deadline_us, &w->job->cancel, score, &jt, w->why,
                            sizeof w->why);
    w->judge_calls++;
    atomic_fetch_add(&w->srv->judge_calls, 1);
    if (jt) {
        const long long spent[RK_TW_COUNTERS] = {[RK_JUDGE_TOKENS] = jt};
        rk_tenant_window_charge(w->srv->judge_budget, w->tenant, spent);
        atomic_fetch_add(&w->srv->judge_tokens, (uint64_t)jt);
    }
    if (rc != RK_OK)
        atomic_fetch_add(&w->srv->judge_errors, 1);
    free(clean);
    return rc;
}

static int work_setup(struct ttt_work *w)
{
    const struct rk_job *j = w->job;
    const struct rk_model *m = w->srv->model;
    size_t slen = rk_state_len(m), V = (size_t)rk_model_n_vocab(m);
    if (!w->o.self)
        return (w->prompt_text = rk_judge_prompt_text(w->srv, j)) ? RK_OK : RK_ENOMEM;
    struct rk_ctx_params cp = {.n_threads = 1};
    int rc = rk_ctx_create(m, &cp, &w->sctx);
    if (rc != RK_OK)
        return rc;
    w->spre = malloc(slen * sizeof(float));
    w->sst = malloc(slen * sizeof(float));
    w->slog = malloc(TTT_CHUNK * V * sizeof(float));
    if (!w->spre || !w->sst || !w->slog)
        return RK_ENOMEM;
    if (j->state)
        memcpy(w->spre, rk_state_ref_data(j->state), slen * sizeof(float));
    else
        memset(w->spre, 0, slen * sizeof(float));
    if (j->n_prompt > 1 &&
        (rc = rk_forward_seq(w->sctx, j->prompt, j->n_prompt - 1, w->spre, NULL, false)) != RK_OK)
        return rc;
    w->tokens += j->n_prompt - 1;
    return RK_OK;
}

static void work_run(void *arg)
{
    struct ttt_work *w = arg;
    const struct rk_model *m = w->srv->model;
    const struct rk_job *j = w->job;
    size_t slen = rk_state_len(m);
    w->ran = true;
    w->score_first = w->score_last = NAN;
    if ((w->rc = work_setup(w)) != RK_OK)
        return;
    struct rk_tune_params p;
    rk_tune_params_default(&p);
    p.method = &rk_method_rl;
    p.steps = w->o.steps;
    p.batch = 1;
    p.lr = p.lr_final = w->o.lr;
    p.warmup = 0;
    p.decay = RK_LR_CONSTANT;
    p.val_split = 0;
    p.n_threads = 1;
    p.seed = j->seed_given ? j->sp.seed : 0;
    p.rl_k = w->o.k;
    p.rl_max_tokens = w->o.max_tokens;
    p.rl_temperature = w->o.temperature;
    p.rl_kl = w->o.kl;
    const uint32_t *pt[1] = {j->prompt};
    size_t pn[1] = {j->n_prompt};
    struct rk_rl_prompts pr = {pt, pn, 1};
    uint32_t stop[8];
    size_t n_stop = 0;
    rk_tok_encode(w->srv->tok, "\n\n", 2, stop, 8, &n_stop);
    struct rk_rl_io io = {.score = w_score, .score_user = w, .cancel = w_cancel, .user = w,
                          .stop = stop, .n_stop = n_stop,
                          .stop_at_zero = !rk_tok_is_bytes(w->srv->tok)};
    float *out = malloc(rk_tune_params_len(m, &p) * sizeof(float));
    if (!out) {
        w->rc = RK_ENOMEM;
        return;
    }
    struct rk_tune_result res;
    w->rc = rk_rl_run(m, &p, &pr, j->state ? rk_state_ref_data(j->state) : NULL, &io,
                      w_progress, out, &res);
    w->tokens += res.tokens;
    if (w->rc == RK_OK) {
        struct rk_state_meta meta;
        rk_state_meta_init(&meta, m);
        snprintf(meta.method, sizeof meta.method, "rl");
        float *st = malloc(slen * sizeof(float));
        if (!st) {
            w->rc = RK_ENOMEM;
        } else {
            rk_method_rl.to_state(m, &p, out, st);
            if (!(w->tuned = rk_state_ref_detached(st, &meta, slen))) {
                free(st);
                w->rc = RK_ENOMEM;
            }
        }
    }
    free(out);
}

bool rk_ttt_start(struct rk_http_req *r, struct rk_job *j, struct ttt_opts *o)
{
    struct ttt_work *w = calloc(1, sizeof *w);
    if (!w) {
        rk_ttt_drop(r, o);
        rk_http_error(r, 503, "enomem", NULL, "out of memory");
        return false;
    }
    w->srv = r->srv;
    w->job = rk_job_retain(j);
    w->o = *o;
    free(o);
    w->judge = w->o.self ? NULL : r->srv->judge;
    snprintf(w->tenant, sizeof w->tenant, "%s", r->tenant);
    r->user = w;
    r->user_free = work_free;
    return rk_http_offload(r, work_run, w); // on failure a 503 is prepared
}

int rk_ttt_resume(struct rk_http_req *r, struct rk_job **out)
{
    struct ttt_work *w = r->user_free == work_free ? r->user : NULL;
    *out = NULL;
    if (!w)
        return 0;
    struct rk_job *j = w->job;
    if (w->rc != RK_OK) {
        if (w->rc == RK_ECANCELED || w->rc == RK_ETIMEOUT) {
            if (rk_now_us() > j->deadline_us || w->rc == RK_ETIMEOUT)
                rk_http_error(r, 504, w->why[0] ? "judge_timeout" : "deadline_exceeded", NULL,
                              "test-time training did not finish before the request's deadline");
            else
                rk_http_error(r, 503, "canceled", NULL, "test-time training was cancelled");
        } else if (w->why[0]) {
            rk_http_error(r, 502, "judge_failed", "ttt", "%s", w->why);
        } else {
            rk_http_error_rk(r, w->rc, "ttt", "test-time training failed");
        }
        return -1;
    }
    rk_state_ref_release(j->state);
    j->state = w->tuned; /* taken */
    w->tuned = NULL;
    j->ttt_tokens = w->tokens;
    j->ttt_steps = w->o.steps;
    j->ttt_score_first = w->score_first;
    j->ttt_score_last = w->score_last;
    *out = rk_job_retain(j);
    return 1;
}

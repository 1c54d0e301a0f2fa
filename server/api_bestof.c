/*
 * api_bestof.c - best_of on POST /generate, /v1/completions and
 * /v1/chat/completions: K candidates of one prompt and state, generated as
 * one engine job (the engine batches its K sequences; the prompt is read
 * once, the siblings copy the leader's state), then scored, and the best n
 * returned.
 *
 * Scoring: with a judge (--judge-url, or an allowed judge.url), every
 * candidate is shown to the judge in a verifier prompt; the score is the
 * log-probability the judge gives to "Yes" as its first word (scoring
 * "yes_logprob", from its top_logprobs) or the first number in its answer
 * (scoring "number"). Without a judge (or with "judge": "self") the score
 * is the model's own mean log-probability of the candidate's tokens.
 *
 * DESIGN. Threads: parsing, budgets and the response run on the loop
 * thread; the candidates run on the engine thread like any job; the judge
 * calls run on the loop's thread pool (rk_http_offload), one short-lived
 * thread per candidate inside that work item so that the K calls overlap
 * (the judge client's in-flight limit bounds them across requests). The
 * work item owns a `struct judge_work` (r->user while the request lives; if
 * the client leaves first, http.c frees it when the work ends). It holds a
 * reference to the job, reads the candidates' text (immutable once the job
 * is done) and writes only its own score array. When the work is done the
 * handler runs again (rk_bestof_resume), charges the tenant's token budget
 * and answers. A failing judge fails only its request (502, or 504 for a
 * timeout). The per-tenant budget (calls and tokens per minute) is
 * srv->judge_budget (tenant_window.h), shared with ttt and rl jobs.
 */
#include "gen_format.h"
#include "json_read.h"
#include "srv.h"
#include "judge.h"
#include "teacher.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROMPT_BYTES_MAX 8192     /* of the prompt shown to the judge (the tail is kept) */
#define INSTRUCTIONS_BYTES_MAX 2000
#define YES_FLOOR (-100.0)        /* score when "Yes" is not among the judge's alternatives */
#define JUDGE_TOP 20              /* top_logprobs asked of the judge (OpenAI allows 20) */

enum scorer { SCORE_SELF, SCORE_YES, SCORE_NUMBER };

struct bestof_opts {
    bool return_scores;
    enum scorer scorer;
    struct rk_teacher *own_judge; /* a per-request override (NULL: srv->judge) */
    char *instructions;           /* NULL: the default question */
};

static void opts_free(void *p)
{
    struct bestof_opts *o = p;
    if (!o)
        return;
    rk_teacher_free(o->own_judge);
    free(o->instructions);
    free(o);
}

static struct bestof_opts *opts_of(const struct rk_job *j)
{
    return j->ext_free == opts_free ? j->ext : NULL;
}

bool rk_bestof_wanted(const struct rk_job *j) { return opts_of(j) != NULL; }

/* --- per-tenant budget ------------------------------------------------------ */

/* The 429's Retry-After: when the tenant's minute renews. */
static void retry_after(struct rk_http_req *r, int s)
{
    char v[16];
    if (!r->resp)
        return;
    snprintf(v, sizeof v, "%d", s);
    MHD_del_response_header(r->resp, "Retry-After", "1");
    MHD_add_response_header(r->resp, "Retry-After", v);
}

bool rk_judge_budget_take(struct rk_http_req *r, long long calls, const char *param,
                          const char *what)
{
    struct rk_srv *srv = r->srv;
    const long long need[RK_TW_COUNTERS] = {[RK_JUDGE_CALLS] = calls},
                    limit[RK_TW_COUNTERS] = {[RK_JUDGE_CALLS] = srv->cfg.judge_calls_per_min,
                                             [RK_JUDGE_TOKENS] = srv->cfg.judge_tokens_per_min};
    struct rk_tw_status st;
    int rc = rk_tenant_window_reserve(srv->judge_budget, r->tenant, need, limit, &st);
    if (rc == RK_OK)
        return true;
    if (rc != RK_EBUSY) {
        rk_http_error(r, 503, "enomem", NULL, "out of memory");
        return false;
    }
    if (st.used[RK_JUDGE_TOKENS] >= limit[RK_JUDGE_TOKENS])
        rk_http_error(r, 429, "judge_budget_exceeded", param, "the judge token budget of %lld "
                      "tokens per minute is used up; retry in %d s", limit[RK_JUDGE_TOKENS],
                      st.renew_s);
    else
        rk_http_error(r, 429, "judge_budget_exceeded", param, "%s needs %lld judge calls; %lld "
                      "of %lld per minute are left; retry in %d s", what, calls,
                      limit[RK_JUDGE_CALLS] - st.used[RK_JUDGE_CALLS], limit[RK_JUDGE_CALLS],
                      st.renew_s);
    retry_after(r, st.renew_s);
    return false;
}

void rk_bestof_refund(struct rk_http_req *r, struct rk_job *j)
{
    struct bestof_opts *bo = opts_of(j);
    const long long n[RK_TW_COUNTERS] = {[RK_JUDGE_CALLS] = j->n};
    if (bo && bo->scorer != SCORE_SELF)
        rk_tenant_window_refund(r->srv->judge_budget, r->tenant, n);
}

/* --- request ---------------------------------------------------------------- */

/* Is url one of the comma-separated base URLs in list? */
bool rk_url_in_list(const char *list, const char *url)
{
    if (!list)
        return false;
    size_t ul = strlen(url);
    while (ul && url[ul - 1] == '/')
        ul--;
    for (const char *p = list; *p;) {
        while (*p == ' ' || *p == ',')
            p++;
        size_t n = strcspn(p, ",");
        size_t m = n;
        while (m && (p[m - 1] == ' ' || p[m - 1] == '/'))
            m--;
        if (m && m == ul && !strncmp(p, url, ul))
            return true;
        p += n;
    }
    return false;
}

static bool parse_judge(struct rk_http_req *r, json_t *o, struct bestof_opts *bo)
{
    struct rk_srv *srv = r->srv;
    json_t *v = json_object_get(o, "judge");
    bo->scorer = srv->judge ? SCORE_YES : SCORE_SELF;
    if (!v || json_is_null(v))
        return true;
    if (json_is_string(v)) {
        if (!strcmp(json_string_value(v), "self")) {
            bo->scorer = SCORE_SELF;
            return true;
        }
        if (!strcmp(json_string_value(v), "default"))
            return true;
        rk_field_fail(r, RK_FIELD_INVALID_VALUE, "judge", "'judge' must be \"self\", "
                      "\"default\" or an object");
        return false;
    }
    if (!json_is_object(v)) {
        rk_field_fail(r, RK_FIELD_INVALID_TYPE, "judge", "'judge' must be \"self\", "
                      "\"default\" or an object");
        return false;
    }
    static const char *const keys[] = {"url", "model", "scoring", "instructions", NULL};
    const char *bad = rk_json_unknown_key(v, keys, NULL);
    if (bad) {
        rk_field_fail(r, RK_FIELD_INVALID_VALUE, "judge", "judge.%.40s is not a judge field "
                      "(url, model, scoring, instructions)", bad);
        return false;
    }
    const char *url = NULL, *model = NULL, *scoring = NULL, *instr = NULL;
    if (!rk_json_str(r, v, "url", 1, 1024, &url) || !rk_json_str(r, v, "model", 1, 256, &model) ||
        !rk_json_str(r, v, "scoring", 1, 32, &scoring) ||
        !rk_json_str(r, v, "instructions", 1, INSTRUCTIONS_BYTES_MAX, &instr))
        return false;
    if (url && !rk_url_in_list(srv->cfg.judge.allowed_urls, url)) {
        // The rule: a tenant never makes the server call a URL the operator
        // did not list (--judge-allowed-urls).
        rk_http_error(r, 403, "judge_url_not_allowed", "judge.url", "this server does not let "
                      "requests choose the judge's URL%s", srv->cfg.judge.allowed_urls ?
                      " except those in its --judge-allowed-urls list" : "");
        return false;
    }
    if (!srv->judge && !url) {
        rk_http_error(r, 400, "judge_not_configured", "judge", "no judge is configured on this "
                      "server (--judge-url); use \"judge\": \"self\" or an allowed judge.url");
        return false;
    }
    if (url && !model && !srv->judge) {
        rk_field_fail(r, RK_FIELD_INVALID_VALUE, "judge.model", "judge.model is needed with "
                      "judge.url when the server has no judge of its own");
        return false;
    }
    if (scoring) {
        if (!strcmp(scoring, "yes_logprob")) {
            bo->scorer = SCORE_YES;
        } else if (!strcmp(scoring, "number")) {
            bo->scorer = SCORE_NUMBER;
        } else {
            rk_field_fail(r, RK_FIELD_INVALID_VALUE, "judge.scoring", "judge.scoring must be "
                          "\"yes_logprob\" or \"number\"");
            return false;
        }
    } else {
        bo->scorer = SCORE_YES;
    }
    if (instr && !(bo->instructions = strdup(instr)))
        goto oom;
    if (url || model) {
        struct rk_errbuf eb = {0};
        int rc;
        if (srv->judge) {
            rc = rk_teacher_derive(srv->judge, url, model, &bo->own_judge, &eb);
        } else {
            struct rk_teacher_config tc;
            rk_teacher_config_default(&tc);
            tc.name = "judge";
            tc.base_url = url;
            tc.model = model;
            tc.connect_timeout_ms = srv->cfg.judge.connect_timeout_ms;
            tc.timeout_ms = srv->cfg.judge.timeout_ms;
            tc.retries = srv->cfg.judge.retries;
            tc.inflight_max = srv->cfg.judge.max_inflight;
            tc.response_bytes_max = srv->cfg.judge.response_bytes_max;
            rc = rk_teacher_create(&tc, &bo->own_judge, &eb);
        }
        if (rc == RK_ENOMEM)
            goto oom;
        if (rc != RK_OK) {
            rk_field_fail(r, RK_FIELD_INVALID_VALUE, "judge", "%s", eb.msg);
            return false;
        }
    }
    return true;
oom:
    rk_http_error(r, 503, "enomem", NULL, "out of memory");
    return false;
}

bool rk_bestof_parse(struct rk_http_req *r, json_t *o, struct rk_job *j)
{
    struct rk_srv *srv = r->srv;
    long long best_of = j->n;
    bool scores = false;
    if (!rk_json_int(r, o, "best_of", 1, srv->cfg.best_of_max, &best_of) ||
        !rk_json_bool(r, o, "return_scores", &scores))
        return false;
    json_t *temps = json_object_get(o, "candidate_temperatures");
    bool has_temps = temps && !json_is_null(temps);
    bool has_judge = rk_json_has(o, "judge");
    if (best_of < j->n) {
        rk_field_fail(r, RK_FIELD_INVALID_VALUE, "best_of", "'best_of' (%lld) must be at least "
                      "'n' (%d)", best_of, j->n);
        return false;
    }
    if (best_of == j->n && !scores) {
        // As many candidates as choices: nothing to choose, a plain request.
        if (has_temps || has_judge) {
            rk_field_fail(r, RK_FIELD_INVALID_VALUE, has_temps ? "candidate_temperatures"
                          : "judge", "'%s' needs 'best_of' above 'n' or 'return_scores'",
                          has_temps ? "candidate_temperatures" : "judge");
            return false;
        }
        return true;
    }
    if (j->stream) {
        rk_field_fail(r, RK_FIELD_UNSUPPORTED, "stream", "'stream' is not supported with "
                      "'best_of' above 'n' or 'return_scores': the candidates are scored when "
                      "all are done");
        return false;
    }
    if (has_temps) {
        if (!json_is_array(temps) || json_array_size(temps) != (size_t)best_of) {
            rk_field_fail(r, RK_FIELD_INVALID_VALUE, "candidate_temperatures",
                          "'candidate_temperatures' must be an array of best_of (%lld) numbers",
                          best_of);
            return false;
        }
        if (!(j->temps = calloc((size_t)best_of, sizeof *j->temps))) {
            rk_http_error(r, 503, "enomem", NULL, "out of memory");
            return false;
        }
        for (size_t i = 0; i < (size_t)best_of; i++) {
            json_t *t = json_array_get(temps, i);
            if (!json_is_number(t) || !(json_number_value(t) >= 0 && json_number_value(t) <= 2)) {
                rk_field_fail(r, RK_FIELD_OUT_OF_RANGE, "candidate_temperatures",
                              "candidate_temperatures[%zu] must be a number from 0 to 2", i);
                return false;
            }
            j->temps[i] = (float)json_number_value(t);
        }
    }
    struct bestof_opts *bo = calloc(1, sizeof *bo);
    if (!bo) {
        rk_http_error(r, 503, "enomem", NULL, "out of memory");
        return false;
    }
    j->ext = bo;
    j->ext_free = opts_free;
    bo->return_scores = scores;
    if (!parse_judge(r, o, bo))
        return false;
    char what[32];
    snprintf(what, sizeof what, "best_of %lld", best_of);
    if (bo->scorer != SCORE_SELF && !rk_judge_budget_take(r, best_of, "best_of", what))
        return false;
    j->n_out = j->n;
    j->n = (int)best_of;
    j->want_lp_sum = bo->scorer == SCORE_SELF;
    return true;
}

/* --- judging ---------------------------------------------------------------- */

struct judge_work {
    struct rk_job *job;        /* one reference */
    struct rk_teacher *judge;  /* borrowed: srv->judge (lives until exit) or the opts' own */
    enum scorer scorer;
    const char *instructions;  /* borrowed from the job's opts */
    char *prompt;              /* the prompt as text (tail of PROMPT_BYTES_MAX) */
    int64_t deadline_us;
    double *scores;            /* [n] */
    int *rcs;                  /* [n] */
    char (*msgs)[320];         /* [n] */
    long long *tokens;         /* [n] judge tokens */
};

static void work_free(void *p)
{
    struct judge_work *w = p;
    if (!w)
        return;
    rk_job_release(w->job);
    free(w->prompt);
    free(w->scores);
    free(w->rcs);
    free(w->msgs);
    free(w->tokens);
    free(w);
}

/* "Yes" as the judge's first word: the best log-probability among the first
 * non-blank token's alternatives whose text, leading spaces dropped, begins
 * "Yes" (any case) or is a non-empty beginning of it ("Y" for a byte-level
 * judge). YES_FLOOR when no alternative qualifies. */
static bool yes_prefix(const char *t)
{
    while (*t == ' ' || *t == '\n' || *t == '\t')
        t++;
    if (!*t)
        return false;
    size_t n = strlen(t);
    return !strncasecmp(t, "yes", n < 3 ? n : 3);
}

static bool blank(const char *t) { return !t[strspn(t, " \n\t\r")]; }

static int score_yes(const struct rk_teacher_answer *a, double *score, char *msg, size_t cap)
{
    for (size_t i = 0; i < a->n_toks; i++) {
        const struct rk_teacher_tok *t = &a->toks[i];
        if (blank(t->token))
            continue;
        double best = -INFINITY;
        if (yes_prefix(t->token))
            best = t->lp;
        for (int k = 0; k < t->n_top; k++)
            if (yes_prefix(t->top[k].token) && t->top[k].lp > best)
                best = t->top[k].lp;
        *score = isfinite(best) ? best : YES_FLOOR;
        return RK_OK;
    }
    snprintf(msg, cap, "judge: the answer has no non-blank token to read \"Yes\" from");
    return RK_EFORMAT;
}

static int score_number(const struct rk_teacher_answer *a, double *score, char *msg, size_t cap)
{
    for (const char *p = a->text; *p; p++) {
        if ((*p >= '0' && *p <= '9') || ((*p == '-' || *p == '.') && p[1] >= '0' && p[1] <= '9')) {
            char *end;
            double v = strtod(p, &end);
            if (end != p && isfinite(v)) {
                *score = v;
                return RK_OK;
            }
        }
    }
    snprintf(msg, cap, "judge: the answer holds no number (scoring \"number\")");
    return RK_EFORMAT;
}

struct one_call {
    struct judge_work *w;
    int i;
    pthread_t th;
    bool started;
};

int rk_judge_score(struct rk_teacher *judge, bool number, const char *instructions,
                   const char *prompt, const char *answer, size_t answer_len,
                   struct rk_teacher_cache *cache, int64_t deadline_us,
                   const atomic_bool *cancel, double *score, long long *tokens, char *msg,
                   size_t cap)
{
    char *user = NULL;
    const char *q = instructions ? instructions
                    : number ? "How good is the answer, from 0 (useless or wrong) to 10 (correct "
                               "and helpful)? Reply with the number only."
                             : "Is the answer correct and helpful? Reply with Yes or No.";
    *tokens = 0;
    int len = asprintf(&user, "You are judging an answer to a prompt.\n\nPrompt:\n<<<\n%s\n>>>"
                       "\n\nAnswer:\n<<<\n%.*s\n>>>\n\n%s", prompt, (int)answer_len,
                       answer ? answer : "", q);
    if (len < 0) {
        snprintf(msg, cap, "out of memory");
        return RK_ENOMEM;
    }
    struct rk_teacher_msg m = {"user", user};
    struct rk_teacher_req req = {
        .kind = RK_TEACHER_CHAT, .msgs = &m, .n_msgs = 1, .temperature = 0,
        .max_tokens = number ? 8 : 3,
        .top_logprobs = number ? -1 : JUDGE_TOP,
    };
    struct rk_teacher_answer a;
    struct rk_errbuf eb = {0};
    int rc = rk_teacher_call(judge, &req, cache, deadline_us, cancel, &a, &eb);
    if (rc == RK_OK) {
        long long pt = a.prompt_tokens, ct = a.completion_tokens;
        // An endpoint that reports no usage is charged about 4 bytes a token.
        if (!a.cached)
            *tokens = (pt >= 0 ? pt : (long long)len / 4 + 1) +
                      (ct >= 0 ? ct : (long long)strlen(a.text) / 4 + 1);
        rc = number ? score_number(&a, score, msg, cap) : score_yes(&a, score, msg, cap);
        rk_teacher_answer_fini(&a);
    } else {
        snprintf(msg, cap, "%s", eb.msg);
    }
    free(user);
    return rc;
}

static void *judge_one(void *arg)
{
    struct one_call *c = arg;
    struct judge_work *w = c->w;
    struct rk_choice *ch = &w->job->choices[c->i];
    w->rcs[c->i] = rk_judge_score(w->judge, w->scorer == SCORE_NUMBER, w->instructions,
                                  w->prompt, ch->text.p, ch->text.len, NULL, w->deadline_us,
                                  NULL, &w->scores[c->i], &w->tokens[c->i], w->msgs[c->i],
                                  sizeof w->msgs[c->i]);
    return NULL;
}

/* Thread-pool work: one thread per candidate, all joined here. */
static void judge_all(void *arg)
{
    struct judge_work *w = arg;
    int n = w->job->n;
    struct one_call *calls = calloc((size_t)n, sizeof *calls);
    if (!calls) {
        for (int i = 0; i < n; i++)
            w->rcs[i] = RK_ENOMEM, snprintf(w->msgs[i], sizeof w->msgs[i], "out of memory");
        return;
    }
    for (int i = 0; i < n; i++) {
        calls[i] = (struct one_call){w, i, 0, false};
        calls[i].started = pthread_create(&calls[i].th, NULL, judge_one, &calls[i]) == 0;
        if (!calls[i].started)
            judge_one(&calls[i]); // no thread to spare: run it here
    }
    for (int i = 0; i < n; i++)
        if (calls[i].started)
            pthread_join(calls[i].th, NULL);
    free(calls);
}

char *rk_judge_prompt_text(struct rk_srv *srv, const struct rk_job *j)
{
    struct rk_buf b = {0};
    for (size_t i = 0; i < j->n_prompt; i++) {
        size_t n;
        const uint8_t *p = rk_tok_bytes(srv->tok, j->prompt[i], &n);
        if (p)
            rk_buf_put(&b, (const char *)p, n);
    }
    size_t from = b.len > PROMPT_BYTES_MAX ? b.len - PROMPT_BYTES_MAX : 0;
    while (from < b.len && ((unsigned char)b.p[from] & 0xc0) == 0x80)
        from++;
    char *out = malloc(b.len - from + 4 + 1);
    if (out)
        rk_utf8_sanitize((const uint8_t *)b.p + from, b.len - from, out, b.len - from + 4 + 1);
    rk_buf_free(&b);
    return out;
}

/* --- the response ------------------------------------------------------------ */

/* Put the n_out best candidates first (stable: ties keep candidate order)
 * and answer. `scores` [j->n] in candidate order. */
static void respond(struct rk_http_req *r, struct rk_job *j, const double *scores,
                    const char *scorer, long long judge_tokens)
{
    struct bestof_opts *bo = opts_of(j);
    int n = j->n;
    for (int i = 0; i < n; i++)
        j->choices[i].cand = i;
    // Insertion sort by score, best first (n is at most --max-best-of).
    for (int i = 1; i < n; i++) {
        struct rk_choice c = j->choices[i];
        int k = i;
        while (k > 0 && scores[j->choices[k - 1].cand] < scores[c.cand]) {
            j->choices[k] = j->choices[k - 1];
            k--;
        }
        j->choices[k] = c;
    }
    json_t *body = j->api == RK_API_NATIVE ? rk_gen_body_native(r->srv, j)
                                           : rk_gen_body_openai(r->srv, j);
    if (!body) {
        rk_http_error(r, 503, "enomem", NULL, "out of memory");
        return;
    }
    if (bo->return_scores) {
        json_t *choices = json_object_get(body, "choices");
        for (size_t i = 0; i < json_array_size(choices); i++) {
            json_t *c = json_array_get(choices, i);
            json_object_set_new(c, "score", json_real(scores[j->choices[i].cand]));
            json_object_set_new(c, "candidate", json_integer(j->choices[i].cand));
        }
        json_t *all = json_array();
        for (int i = 0; i < n; i++)
            json_array_append_new(all, json_real(scores[i]));
        json_object_set_new(body, "best_of", json_pack("{s:i,s:s,s:o,s:I}", "candidates", n,
                                                       "scorer", scorer, "scores", all,
                                                       "judge_tokens", (json_int_t)judge_tokens));
    }
    rk_http_json(r, 200, body);
}

static void job_failed(struct rk_http_req *r, struct rk_job *j)
{
    if (j->err == RK_ETIMEOUT)
        rk_http_error(r, 504, "deadline_exceeded", NULL, "%s", j->errmsg);
    else if (j->err == RK_ECANCELED)
        rk_http_error(r, 503, "canceled", NULL, "%s", j->errmsg);
    else
        rk_http_error(r, 500, rk_errname(j->err), NULL, "%s", j->errmsg);
}

void rk_bestof_done(struct rk_http_req *r, struct rk_job *j)
{
    struct rk_srv *srv = r->srv;
    struct bestof_opts *bo = opts_of(j);
    if (j->err != RK_OK) {
        job_failed(r, j);
        return;
    }
    if (bo->scorer == SCORE_SELF) {
        double *s = calloc((size_t)j->n, sizeof *s);
        if (!s) {
            rk_http_error(r, 503, "enomem", NULL, "out of memory");
            return;
        }
        for (int i = 0; i < j->n; i++)
            s[i] = j->choices[i].n_tokens ? j->choices[i].lp_sum / j->choices[i].n_tokens
                                          : YES_FLOOR;
        respond(r, j, s, "self", 0);
        free(s);
        return;
    }
    struct judge_work *w = calloc(1, sizeof *w);
    if (w) {
        w->job = rk_job_retain(j);
        w->judge = bo->own_judge ? bo->own_judge : srv->judge;
        w->scorer = bo->scorer;
        w->instructions = bo->instructions;
        w->deadline_us = j->deadline_us;
        w->prompt = rk_judge_prompt_text(srv, j);
        w->scores = calloc((size_t)j->n, sizeof *w->scores);
        w->rcs = calloc((size_t)j->n, sizeof *w->rcs);
        w->msgs = calloc((size_t)j->n, sizeof *w->msgs);
        w->tokens = calloc((size_t)j->n, sizeof *w->tokens);
    }
    if (!w || !w->prompt || !w->scores || !w->rcs || !w->msgs || !w->tokens) {
        work_free(w);
        rk_http_error(r, 503, "enomem", NULL, "out of memory");
        return;
    }
    // The state-lookup data of this request (if any) is no longer needed.
    if (r->user_free)
        r->user_free(r->user);
    r->user = w;
    r->user_free = work_free;
    atomic_fetch_add(&srv->judge_calls, (uint64_t)j->n);
    rk_http_offload(r, judge_all, w);
}

bool rk_bestof_resume(struct rk_http_req *r)
{
    if (r->user_free != work_free)
        return false;
    struct rk_srv *srv = r->srv;
    struct judge_work *w = r->user;
    struct rk_job *j = w->job;
    long long tokens = 0;
    int bad = -1;
    for (int i = 0; i < j->n; i++) {
        tokens += w->tokens[i];
        if (w->rcs[i] != RK_OK && bad < 0)
            bad = i;
    }
    const long long spent[RK_TW_COUNTERS] = {[RK_JUDGE_TOKENS] = tokens};
    rk_tenant_window_charge(srv->judge_budget, r->tenant, spent);
    atomic_fetch_add(&srv->judge_tokens, (uint64_t)tokens);
    if (bad >= 0) {
        int rc = w->rcs[bad];
        atomic_fetch_add(&srv->judge_errors, 1);
        rk_log(RK_LOG_WARN, "request %s: best_of: candidate %d: %s", j->id, bad, w->msgs[bad]);
        if (rc == RK_ETIMEOUT)
            rk_http_error(r, 504, "judge_timeout", "judge", "%s", w->msgs[bad]);
        else if (rc == RK_ENOMEM)
            rk_http_error(r, 503, "enomem", NULL, "out of memory");
        else
            rk_http_error(r, 502, "judge_failed", "judge", "%s", w->msgs[bad]);
        return true;
    }
    respond(r, j, w->scores,
            w->scorer == SCORE_NUMBER ? "judge_number" : "judge_yes_logprob", tokens);
    return true;
}

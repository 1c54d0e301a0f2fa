/*
 * api_generate.c - POST /generate (native), POST /v1/completions and
 * POST /v1/chat/completions (OpenAI-compatible), GET /v1/models.
 *
 * Every handler runs on the loop thread: it parses and range-checks every
 * field (RELIABILITY.md 5) before any work starts, tokenizes the prompt,
 * resolves the state adapter (taking a reference to one immutable version),
 * builds a struct rk_job and hands it to the engine. Streaming requests
 * answer at once with an SSE response fed by the engine; the others suspend
 * until the job is done and then answer in one piece.
 */
#include "gen_format.h"
#include "json_read.h"
#include "srv.h"

#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* --- request -> job -------------------------------------------------------- */

static bool parse_stop(struct rk_http_req *r, json_t *o, struct rk_job *j, const char *extra)
{
    size_t n = 0, max = (size_t)r->srv->cfg.stops_max;
    j->stops = calloc(max + 1, sizeof *j->stops);
    if (!j->stops)
        goto oom;
    if (!rk_json_str_array(r, o, "stop", true, max, 1, 256, (const char **)j->stops, &n))
        return false;
    // The array held borrowed strings; the job keeps copies.
    for (size_t i = 0; i < n; i++) {
        if (!(j->stops[i] = strdup(j->stops[i])))
            goto oom; // j->n_stops counts the copies release frees
        j->n_stops++;
    }
    if (extra && !(j->stops[j->n_stops++] = strdup(extra)))
        goto oom;
    return true;
oom:
    rk_http_error(r, 503, "enomem", NULL, "out of memory");
    return false;
}

static bool parse_bias(struct rk_http_req *r, json_t *o, struct rk_job *j)
{
    json_t *v = json_object_get(o, "logit_bias");
    if (!v || json_is_null(v))
        return true;
    if (!json_is_object(v) || json_object_size(v) > 1024) {
        rk_field_fail(r, json_is_object(v) ? RK_FIELD_OUT_OF_RANGE : RK_FIELD_INVALID_TYPE,
                      "logit_bias", "'logit_bias' must be an object of at most 1024 token ids");
        return false;
    }
    size_t n = json_object_size(v), i = 0;
    j->bias = calloc(n ? n : 1, sizeof *j->bias);
    if (!j->bias) {
        rk_http_error(r, 503, "enomem", NULL, "out of memory");
        return false;
    }
    const char *k;
    json_t *b;
    size_t V = (size_t)rk_model_n_vocab(r->srv->model);
    json_object_foreach(v, k, b)
    {
        char *end;
        unsigned long id = strtoul(k, &end, 10);
        if (!*k || *end || *k == '-' || id >= V || !json_is_number(b) ||
            !(fabs(json_number_value(b)) <= 100)) {
            rk_field_fail(r, RK_FIELD_INVALID_VALUE, "logit_bias", "logit_bias: keys must be token "
                          "ids below %zu and values numbers in [-100, 100]", V);
            return false;
        }
        j->bias[i++] = (struct rk_logit_bias){(uint32_t)id, (float)json_number_value(b)};
    }
    j->sp.bias = j->bias;
    j->sp.n_bias = i;
    return true;
}

/* Sampling fields shared by every API. */
static bool parse_sampling(struct rk_http_req *r, json_t *o, struct rk_job *j)
{
    const struct rk_srv_config *c = &r->srv->cfg;
    long long x;
    x = c->max_tokens_default;
    if (!rk_json_int(r, o, "max_tokens", 1, c->max_tokens_max, &x))
        return false;
    if (j->api == RK_API_CHAT &&
        !rk_json_int(r, o, "max_completion_tokens", 1, c->max_tokens_max, &x))
        return false;
    j->max_tokens = (int)x;
    x = 1;
    if (!rk_json_int(r, o, "n", 1, c->n_max, &x))
        return false;
    j->n = (int)x;
    struct rk_sampler_params *sp = &j->sp;
    if (!rk_json_float(r, o, "temperature", 0, 2, false, &sp->temperature) ||
        !rk_json_float(r, o, "top_p", 0, 1, true, &sp->top_p) ||
        !rk_json_float(r, o, "min_p", 0, 1, false, &sp->min_p) ||
        !rk_json_float(r, o, "presence_penalty", -2, 2, false, &sp->presence_penalty) ||
        !rk_json_float(r, o, "frequency_penalty", -2, 2, false, &sp->frequency_penalty) ||
        !rk_json_float(r, o, "repetition_penalty", 0, 10, true, &sp->repetition_penalty))
        return false;
    x = 0;
    if (!rk_json_int(r, o, "top_k", 0, rk_model_n_vocab(r->srv->model), &x))
        return false;
    sp->top_k = (int)x;
    x = 0;
    if (!rk_json_int(r, o, "penalty_last_n", 0, 1 << 20, &x))
        return false;
    sp->penalty_last_n = (int)x;
    if (rk_json_has(o, "seed")) {
        long long seed = 0;
        if (!rk_json_int(r, o, "seed", LLONG_MIN, LLONG_MAX, &seed))
            return false;
        sp->seed = (uint64_t)seed;
        j->seed_given = true;
    } else {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        sp->seed = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^
                   atomic_fetch_add(&r->srv->id_seq, 1) * 0xbf58476d1ce4e5b9ull;
    }
    if (!rk_json_bool(r, o, "stream", &j->stream))
        return false;
    json_t *so = NULL;
    if (!rk_json_obj(r, o, "stream_options", &so) ||
        (so && !rk_json_bool(r, so, "include_usage", &j->include_usage)))
        return false;
    if (!parse_bias(r, o, j))
        return false;
    // Check the sampler accepts the combination now rather than in the engine.
    struct rk_sampler *s = NULL;
    int rc = rk_sampler_create(sp, (size_t)rk_model_n_vocab(r->srv->model), &s);
    rk_sampler_free(s);
    if (rc != RK_OK) {
        rk_http_error_rk(r, rc, NULL, "invalid sampling parameters");
        return false;
    }
    return true;
}

/* Resolve "model" ("<base>" or "<base>:<state>") and/or "state". */
static bool parse_model_state(struct rk_http_req *r, json_t *o, struct rk_job *j, bool openai)
{
    struct rk_srv *srv = r->srv;
    const char *model = NULL, *state = NULL, *mstate = NULL;
    if (!rk_json_str(r, o, "model", 0, SIZE_MAX, &model) ||
        !rk_json_str(r, o, "state", 0, SIZE_MAX, &state))
        return false;
    if (model) {
        size_t bl = strlen(srv->model_name);
        if (!strncmp(model, srv->model_name, bl) && (model[bl] == 0 || model[bl] == ':')) {
            mstate = model[bl] ? model + bl + 1 : NULL;
        } else {
            rk_http_error(r, 404, "model_not_found", "model", "the model '%.100s' does not exist "
                          "(use '%s' or '%s:<state>')", model, srv->model_name, srv->model_name);
            return false;
        }
    }
    if (mstate && state && strcmp(mstate, state)) {
        rk_field_fail(r, RK_FIELD_INVALID_VALUE, "state", "'state' disagrees with the state named "
                      "in 'model'");
        return false;
    }
    const char *sid = state && *state ? state : mstate;
    if (sid && *sid) {
        struct rk_errbuf eb = {0};
        int rc = rk_state_fetch(r, sid, &j->state, &eb);
        if (rc == RK_STATE_FETCH_PENDING)
            return false; // read off the loop thread; the handler runs again
        if (rc == RK_ENOTFOUND) {
            rk_http_error(r, 404, openai && !state ? "model_not_found" : "state_not_found",
                          state ? "state" : "model", "state '%.80s' does not exist", sid);
            return false;
        }
        if (rc != RK_OK) {
            rk_http_error_rk(r, rc, "state", eb.msg);
            return false;
        }
        snprintf(j->model, sizeof j->model, "%s:%s", srv->model_name, sid);
    } else {
        snprintf(j->model, sizeof j->model, "%s", srv->model_name);
    }
    return true;
}

static bool tokenize(struct rk_http_req *r, struct rk_job *j, const char *text, size_t len)
{
    size_t lim = (size_t)r->srv->cfg.prompt_tokens_max;
    if (len == 0) {
        rk_field_fail(r, RK_FIELD_INVALID_VALUE, "prompt", "the prompt is empty");
        return false;
    }
    // Each id covers at least one byte, so len ids always suffice; refuse
    // early when even one byte per token would not fit the limit... only
    // after encoding can we tell, but the byte count bounds the work.
    if (len > lim * 64) {
        rk_field_fail(r, RK_FIELD_CONTEXT_LENGTH, "prompt",
                      "the prompt is longer than %zu tokens", lim);
        return false;
    }
    j->prompt = malloc(len * sizeof *j->prompt);
    if (!j->prompt) {
        rk_http_error(r, 503, "enomem", NULL, "out of memory");
        return false;
    }
    size_t n = 0;
    int rc = rk_tok_encode(r->srv->tok, text, len, j->prompt, len, &n);
    if (rc != RK_OK) {
        rk_http_error_rk(r, rc, "prompt", "cannot tokenize the prompt");
        return false;
    }
    if (n > lim) {
        rk_field_fail(r, RK_FIELD_CONTEXT_LENGTH, "prompt",
                      "the prompt is %zu tokens; the limit is %zu", n, lim);
        return false;
    }
    if (n == 0) {
        rk_field_fail(r, RK_FIELD_INVALID_VALUE, "prompt", "the prompt is empty");
        return false;
    }
    j->n_prompt = n;
    return true;
}

/* "prompt" in the forms OpenAI's completions accept: a string, an array of
 * token ids, or a batch (an array of strings or of token-id arrays). A batch
 * of one is its element; a larger batch is refused (400 unsupported): one
 * prompt per request, `n` for several completions of it. */
static bool parse_prompt(struct rk_http_req *r, json_t *o, struct rk_job *j)
{
    json_t *p = json_object_get(o, "prompt");
    if (json_is_array(p) && json_array_size(p) > 0 &&
        (json_is_string(json_array_get(p, 0)) || json_is_array(json_array_get(p, 0)))) {
        size_t nb = json_array_size(p);
        for (size_t i = 0; i < nb; i++) {
            json_t *e = json_array_get(p, i);
            if (!json_is_string(e) && !json_is_array(e)) {
                rk_field_fail(r, RK_FIELD_INVALID_TYPE, "prompt", "prompt[%zu] must be a string "
                              "or an array of token ids, like prompt[0]", i);
                return false;
            }
        }
        if (nb > 1) {
            rk_field_fail(r, RK_FIELD_UNSUPPORTED, "prompt", "a batch of %zu prompts is not "
                          "supported; send one prompt per request (use 'n' for several "
                          "completions of one prompt)", nb);
            return false;
        }
        p = json_array_get(p, 0);
    }
    if (json_is_string(p))
        return tokenize(r, j, json_string_value(p), json_string_length(p));
    if (json_is_array(p)) {
        size_t n = json_array_size(p), V = (size_t)rk_model_n_vocab(r->srv->model);
        if (n == 0) {
            rk_field_fail(r, RK_FIELD_INVALID_VALUE, "prompt", "the prompt is empty");
            return false;
        }
        if (n > (size_t)r->srv->cfg.prompt_tokens_max) {
            rk_field_fail(r, RK_FIELD_CONTEXT_LENGTH, "prompt",
                          "the prompt is %zu tokens; the limit is %d", n,
                          r->srv->cfg.prompt_tokens_max);
            return false;
        }
        j->prompt = malloc(n * sizeof *j->prompt);
        if (!j->prompt) {
            rk_http_error(r, 503, "enomem", NULL, "out of memory");
            return false;
        }
        for (size_t i = 0; i < n; i++) {
            json_t *t = json_array_get(p, i);
            if (!json_is_integer(t)) {
                rk_field_fail(r, RK_FIELD_INVALID_TYPE, "prompt", "a prompt of token ids holds "
                              "integers only; element %zu is a %s", i,
                              json_is_string(t) ? "string" : "non-integer");
                return false;
            }
            if (json_integer_value(t) < 0 || (size_t)json_integer_value(t) >= V) {
                rk_field_fail(r, RK_FIELD_OUT_OF_RANGE, "prompt",
                              "prompt token %zu is %" JSON_INTEGER_FORMAT
                              "; token ids run from 0 to %zu", i, json_integer_value(t), V - 1);
                return false;
            }
            j->prompt[i] = (uint32_t)json_integer_value(t);
        }
        j->n_prompt = n;
        return true;
    }
    rk_field_fail(r, p ? RK_FIELD_INVALID_TYPE : RK_FIELD_INVALID_VALUE, "prompt",
                  "'prompt' must be a string, an array of token ids, or an array of one "
                  "string");
    return false;
}

/* Fields of the OpenAI API whose behaviour rwkvd does not have. Silently
 * ignoring them would return output the client did not ask for (free text
 * instead of JSON, no tool calls), so they are refused until supported;
 * values that ask for the default are accepted. */
static bool refuse_unsupported(struct rk_http_req *r, json_t *o)
{
    json_t *rf = json_object_get(o, "response_format");
    if (rf && !json_is_null(rf)) {
        json_t *t = json_is_object(rf) ? json_object_get(rf, "type") : NULL;
        if (!json_is_string(t)) {
            rk_field_fail(r, RK_FIELD_INVALID_TYPE, "response_format",
                          "'response_format' must be an object with a string 'type'");
            return false;
        }
        if (strcmp(json_string_value(t), "text") != 0) {
            rk_field_fail(r, RK_FIELD_UNSUPPORTED, "response_format", "'response_format' of type "
                          "'%.40s' is not supported; only {\"type\": \"text\"} (the default)",
                          json_string_value(t));
            return false;
        }
    }
    static const char *const lists[] = {"tools", "functions"};
    for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++) {
        json_t *v = json_object_get(o, lists[i]);
        if (v && !json_is_null(v) && !(json_is_array(v) && json_array_size(v) == 0)) {
            rk_field_fail(r, RK_FIELD_UNSUPPORTED, lists[i], "'%s' (tool and function calling) "
                          "is not supported", lists[i]);
            return false;
        }
    }
    static const char *const choices[] = {"tool_choice", "function_call"};
    for (size_t i = 0; i < sizeof choices / sizeof choices[0]; i++) {
        json_t *v = json_object_get(o, choices[i]);
        if (v && !json_is_null(v) &&
            !(json_is_string(v) && !strcmp(json_string_value(v), "none"))) {
            rk_field_fail(r, RK_FIELD_UNSUPPORTED, choices[i], "'%s' is not supported (tool and "
                          "function calling); only \"none\"", choices[i]);
            return false;
        }
    }
    return true;
}

/* Append a chat message's text: CRLF -> LF, blank lines collapsed (a blank
 * line ends a turn in the RWKV chat format), surrounding space trimmed. */
static void chat_text(struct rk_buf *b, const char *s, size_t n)
{
    while (n && (*s == ' ' || *s == '\n' || *s == '\r' || *s == '\t'))
        s++, n--;
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == '\t'))
        n--;
    bool nl = false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '\r')
            continue;
        if (c == '\n') {
            if (nl)
                continue;
            nl = true;
        } else {
            nl = false;
        }
        rk_buf_put(b, &c, 1);
    }
}

static bool parse_messages(struct rk_http_req *r, json_t *o, struct rk_job *j)
{
    json_t *msgs = json_object_get(o, "messages");
    if (!json_is_array(msgs) || json_array_size(msgs) == 0) {
        bool wrong_type = msgs && !json_is_null(msgs) && !json_is_array(msgs);
        rk_field_fail(r, wrong_type ? RK_FIELD_INVALID_TYPE : RK_FIELD_INVALID_VALUE, "messages",
                      "'messages' must be a non-empty array");
        return false;
    }
    struct rk_buf b = {0};
    size_t i;
    json_t *m;
    bool ok = true;
    json_array_foreach(msgs, i, m)
    {
        const char *role = json_string_value(json_object_get(m, "role"));
        json_t *content = json_object_get(m, "content");
        const char *name = !role ? NULL
                           : !strcmp(role, "system") || !strcmp(role, "developer") ? "System"
                           : !strcmp(role, "user") ? "User"
                           : !strcmp(role, "assistant") ? "Assistant"
                                                        : NULL;
        if (!json_is_object(m) || !name) {
            rk_field_fail(r, RK_FIELD_INVALID_VALUE, "messages", "messages[%zu]: role must be "
                          "system, developer, user or assistant", i);
            ok = false;
            break;
        }
        rk_buf_puts(&b, name);
        rk_buf_puts(&b, ": ");
        if (json_is_string(content)) {
            chat_text(&b, json_string_value(content), json_string_length(content));
        } else if (json_is_array(content)) {
            size_t k;
            json_t *part;
            json_array_foreach(content, k, part)
            {
                json_t *t = json_object_get(part, "text");
                if (!json_is_string(t)) {
                    rk_field_fail(r, RK_FIELD_INVALID_VALUE, "messages", "messages[%zu]: only "
                                  "text content parts are supported", i);
                    ok = false;
                    break;
                }
                if (k)
                    rk_buf_put(&b, "\n", 1);
                chat_text(&b, json_string_value(t), json_string_length(t));
            }
            if (!ok)
                break;
        } else if (!json_is_null(content) || strcmp(name, "Assistant")) {
            rk_field_fail(r, RK_FIELD_INVALID_TYPE, "messages", "messages[%zu]: content must be "
                          "a string or an array of text parts", i);
            ok = false;
            break;
        }
        rk_buf_puts(&b, "\n\n");
    }
    if (ok) {
        rk_buf_puts(&b, "Assistant:");
        ok = b.p && tokenize(r, j, b.p, b.len);
        if (!b.p && !r->resp)
            rk_http_error(r, 503, "enomem", NULL, "out of memory");
    }
    rk_buf_free(&b);
    return ok;
}

/* --- responses ------------------------------------------------------------- */

/* A job that failed as a whole (deadline, shutdown, engine error). */
static bool job_error(struct rk_http_req *r, struct rk_job *j)
{
    if (j->err == RK_OK)
        return false;
    if (j->err == RK_ETIMEOUT)
        rk_http_error(r, 504, "deadline_exceeded", NULL, "%s", j->errmsg);
    else if (j->err == RK_ECANCELED)
        rk_http_error(r, 503, "canceled", NULL, "%s", j->errmsg);
    else
        rk_http_error(r, 500, rk_errname(j->err), NULL, "%s", j->errmsg);
    return true;
}

static void done_native(struct rk_http_req *r, struct rk_job *j)
{
    if (!job_error(r, j))
        rk_http_json(r, 200, rk_gen_body_native(r->srv, j));
}

static void done_openai(struct rk_http_req *r, struct rk_job *j)
{
    if (!job_error(r, j))
        rk_http_json(r, 200, rk_gen_body_openai(r->srv, j));
}

#define RK_CHAT_END_OF_TURN "\n\n"

/* --- handlers ---------------------------------------------------------------- */

static void submit(struct rk_http_req *r, struct rk_job *j, enum rk_api api);

static void handle(struct rk_http_req *r, enum rk_api api)
{
    struct rk_srv *srv = r->srv;
    if (rk_bestof_resume(r))
        return; // a best_of request back from its judge calls
    struct rk_job *tj = NULL;
    int tr = rk_ttt_resume(r, &tj);
    if (tr < 0)
        return; // test-time training failed: the error is prepared
    if (tr > 0) { // back from test-time training: the job has its tuned state
        submit(r, tj, api);
        rk_job_release(tj);
        return;
    }
    json_t *o = rk_http_body_json(r);
    if (!o)
        return;
    struct rk_job *j = rk_job_create(srv, api);
    if (!j) {
        json_decref(o);
        rk_http_error(r, 503, "enomem", NULL, "out of memory");
        return;
    }
    j->t_submit_us = rk_now_us();
    j->deadline_us = j->t_submit_us + (int64_t)srv->cfg.request_timeout_s * 1000000;
    j->created_s = (int64_t)time(NULL);
    snprintf(j->id, sizeof j->id, "%s%016" PRIx64 "%04x",
             api == RK_API_CHAT ? "chatcmpl-" : api == RK_API_COMPLETION ? "cmpl-" : "gen-",
             (uint64_t)((uint64_t)j->t_submit_us * 0x9e3779b97f4a7c15ull ^ (uintptr_t)j),
             (unsigned)(atomic_fetch_add(&srv->id_seq, 1) & 0xffff));

    bool ok = parse_model_state(r, o, j, api != RK_API_NATIVE) && parse_sampling(r, o, j);
    long long lp = -1;
    if (ok) {
        if (api == RK_API_CHAT) {
            bool want = false;
            long long top = 0;
            ok = rk_json_bool(r, o, "logprobs", &want) &&
                 rk_json_int(r, o, "top_logprobs", 0, srv->cfg.logprobs_max, &top);
            if (ok && top > 0 && !want) {
                rk_field_fail(r, RK_FIELD_INVALID_VALUE, "top_logprobs",
                              "'top_logprobs' needs 'logprobs': true");
                ok = false;
            }
            lp = want ? top : -1;
        } else {
            ok = rk_json_int(r, o, "logprobs", 0, srv->cfg.logprobs_max, &lp);
        }
        j->top_logprobs = (int)lp;
    }
    if (ok && api == RK_API_COMPLETION) {
        bool echo = false;
        ok = rk_json_bool(r, o, "echo", &echo);
        if (ok && echo) {
            rk_field_fail(r, RK_FIELD_UNSUPPORTED, "echo", "'echo' is not supported");
            ok = false;
        }
        json_t *suffix = json_object_get(o, "suffix");
        if (ok && suffix && !json_is_null(suffix)) {
            rk_field_fail(r, RK_FIELD_UNSUPPORTED, "suffix", "'suffix' is not supported");
            ok = false;
        }
    }
    if (ok && api != RK_API_NATIVE)
        ok = refuse_unsupported(r, o);
    // A chat answer is the assistant's turn, and in the template a turn ends
    // at a blank line (each message's own blank lines are collapsed), so the
    // end of the turn always stops it: a tuned state may never write the
    // "User:" of the next turn.
    if (ok)
        ok = parse_stop(r, o, j, api == RK_API_CHAT ? RK_CHAT_END_OF_TURN : NULL);
    if (ok)
        ok = api == RK_API_CHAT ? parse_messages(r, o, j) : parse_prompt(r, o, j);
    // best_of and ttt last: they reserve from the tenant's budgets, which
    // the one failure path below gives back.
    bool bestof_held = ok && rk_bestof_parse(r, o, j);
    ok = bestof_held;
    struct ttt_opts *topts = NULL;
    if (ok)
        ok = rk_ttt_parse(r, o, j, &topts);
    json_decref(o);
    if (ok) {
        j->choices = calloc((size_t)j->n, sizeof *j->choices);
        ok = j->choices != NULL;
        for (int i = 0; ok && i < j->n && j->top_logprobs >= 0; i++) {
            j->choices[i].lps = malloc((size_t)j->max_tokens * (size_t)(1 + j->top_logprobs) *
                                       sizeof(struct rk_tok_lp));
            ok = j->choices[i].lps != NULL;
        }
        if (!ok)
            rk_http_error(r, 503, "enomem", NULL, "out of memory");
    }
    if (!ok) {
        if (bestof_held)
            rk_bestof_refund(r, j);
        rk_ttt_drop(r, topts);
        rk_job_release(j);
        return;
    }
    if (topts) // tune a copy of the state first, off the loop; then submit
        rk_ttt_start(r, j, topts);
    else
        submit(r, j, api);
    rk_job_release(j);
}

/* Queue the parsed job and answer (streaming, or when it is done). */
static void submit(struct rk_http_req *r, struct rk_job *j, enum rk_api api)
{
    struct rk_srv *srv = r->srv;
    int rc = rk_engine_submit(srv->engine, j);
    if (rc != RK_OK)
        rk_bestof_refund(r, j);
    if (rc == RK_EBUSY) {
        rk_http_error(r, 429, "queue_full", NULL, "the server is busy (%d requests waiting); "
                      "retry later", srv->cfg.queue_max);
    } else if (rc != RK_OK) {
        rk_http_error(r, 503, "unavailable", NULL, "the engine is not accepting requests");
    } else if (j->stream) {
        rk_http_stream(r, j);
    } else {
        rk_http_wait_job(r, j, rk_bestof_wanted(j) ? rk_bestof_done
                               : api == RK_API_NATIVE ? done_native : done_openai);
    }
}

static void h_generate(struct rk_http_req *r) { handle(r, RK_API_NATIVE); }
static void h_completions(struct rk_http_req *r) { handle(r, RK_API_COMPLETION); }
static void h_chat(struct rk_http_req *r) { handle(r, RK_API_CHAT); }

struct models_ctx {
    json_t *arr;
    const char *base;
};

static bool model_entry(const char *id, const struct rk_state_meta *meta, size_t bytes, bool ok,
                        void *user)
{
    struct models_ctx *c = user;
    (void)bytes;
    if (!ok)
        return true;
    char name[256];
    snprintf(name, sizeof name, "%s:%s", c->base, id);
    json_array_append_new(c->arr, json_pack("{s:s,s:s,s:I,s:s,s:s}", "id", name, "object",
                                            "model", "created",
                                            (json_int_t)(meta->created_ms / 1000), "owned_by",
                                            "tenant", "root", c->base));
    return true;
}

/* GET /v1/models reads the header of every state file of the tenant: on
 * the thread pool (rk_http_offload); the handler answers when it is done. */
struct models_list {
    struct rk_state_store *store;
    char tenant[RK_STATE_ID_MAX + 1];
    const char *base; /* srv->model_name: lives as long as the server */
    json_t *arr;      /* built by the worker; read after the completion */
};

static void models_work(void *arg)
{
    struct models_list *l = arg;
    l->arr = json_array();
    if (!l->arr)
        return;
    json_array_append_new(l->arr, json_pack("{s:s,s:s,s:I,s:s}", "id", l->base, "object",
                                            "model", "created", (json_int_t)0, "owned_by",
                                            "rwkvd"));
    struct models_ctx c = {l->arr, l->base};
    rk_store_list(l->store, l->tenant, model_entry, &c);
}

static void models_free(void *arg)
{
    struct models_list *l = arg;
    if (l)
        json_decref(l->arr);
    free(l);
}

static void h_models(struct rk_http_req *r)
{
    struct models_list *l = r->user_free == models_free ? r->user : NULL;
    if (!l) { // first call: list on the pool; the handler runs again then
        if (!(l = calloc(1, sizeof *l))) {
            rk_http_error(r, 503, "enomem", NULL, "out of memory");
            return;
        }
        l->store = r->srv->store;
        l->base = r->srv->model_name;
        snprintf(l->tenant, sizeof l->tenant, "%s", r->tenant);
        r->user = l;
        r->user_free = models_free;
        rk_http_offload(r, models_work, l); // on failure a 503 is prepared
        return;
    }
    if (!l->arr) {
        rk_http_error(r, 503, "enomem", NULL, "out of memory");
        return;
    }
    json_t *arr = l->arr;
    l->arr = NULL;
    rk_http_json(r, 200, json_pack("{s:s,s:o}", "object", "list", "data", arr));
}

static void h_model_one(struct rk_http_req *r)
{
    struct rk_srv *srv = r->srv;
    const char *id = r->params[0];
    size_t bl = strlen(srv->model_name);
    if (!strcmp(id, srv->model_name)) {
        rk_http_json(r, 200, json_pack("{s:s,s:s,s:I,s:s}", "id", id, "object", "model",
                                       "created", (json_int_t)0, "owned_by", "rwkvd"));
        return;
    }
    if (!strncmp(id, srv->model_name, bl) && id[bl] == ':') {
        struct rk_state_ref *ref = NULL;
        int rc = rk_state_fetch(r, id + bl + 1, &ref, NULL);
        if (rc == RK_STATE_FETCH_PENDING)
            return; // read off the loop thread; the handler runs again
        if (rc == RK_OK) {
            json_int_t created = (json_int_t)(rk_state_ref_meta(ref)->created_ms / 1000);
            rk_state_ref_release(ref);
            rk_http_json(r, 200, json_pack("{s:s,s:s,s:I,s:s,s:s}", "id", id, "object", "model",
                                           "created", created, "owned_by", "tenant", "root",
                                           srv->model_name));
            return;
        }
    }
    rk_http_error(r, 404, "model_not_found", "model", "the model '%s' does not exist", id);
}

void rk_api_generate_register(struct rk_srv *srv)
{
    static const struct rk_route routes[] = {
        {"POST", "/generate", h_generate, 0, NULL},
        {"POST", "/v1/completions", h_completions, 0, NULL},
        {"POST", "/v1/chat/completions", h_chat, 0, NULL},
        {"GET", "/v1/models", h_models, 0, NULL},
        {"GET", "/v1/models/{id}", h_model_one, 0, NULL},
    };
    rk_routes_add(srv, routes, sizeof routes / sizeof routes[0]);
}

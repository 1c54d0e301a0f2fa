/*
 * api_tune.c - the native jobs routes: POST /tune, GET /jobs, GET /jobs/{id},
 * POST /jobs/{id}/cancel, and GET /jobs/{id}/events (SSE).
 */
#include "api_jobs_int.h"
#include "json_read.h"
#include "teacher.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

/* --- native routes -------------------------------------------------------------- */

/* teacher.stop: a string or an array of 1..RK_TJOB_TEACHER_STOPS_MAX strings of
 * 1..RK_TJOB_TEACHER_STOP_BYTES bytes, sent with every teacher request. */
static bool teacher_stops(struct rk_http_req *r, json_t *v, struct rk_tjob_teacher *t)
{
    if (!v || json_is_null(v))
        return true;
    size_t n = json_is_array(v) ? json_array_size(v) : 1;
    if ((!json_is_string(v) && !json_is_array(v)) || n < 1 || n > RK_TJOB_TEACHER_STOPS_MAX) {
        rk_field_fail(r, RK_FIELD_INVALID_VALUE, "teacher.stop",
                      "teacher.stop must be a string or an array of 1 to %d strings",
                      RK_TJOB_TEACHER_STOPS_MAX);
        return false;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *s = json_is_array(v) ? json_array_get(v, i) : v;
        size_t len = json_is_string(s) ? json_string_length(s) : 0;
        if (!json_is_string(s) || len < 1 || len > RK_TJOB_TEACHER_STOP_BYTES ||
            memchr(json_string_value(s), 0, len)) {
            rk_field_fail(r, RK_FIELD_INVALID_VALUE, "teacher.stop",
                          "each teacher.stop string must hold 1 to %d bytes and no NUL",
                          RK_TJOB_TEACHER_STOP_BYTES);
            return false;
        }
        memcpy(t->stop[i], json_string_value(s), len + 1);
    }
    t->n_stop = (int)n;
    return true;
}


/* The "teacher" object of an observer job into *t (defaults kept for absent
 * fields). The URL rule is best_of's judge's: a job may name only the
 * configured URL or one of --teacher-allowed-urls, and those carry no key. */
static bool parse_teacher(struct rk_http_req *r, json_t *body, bool observer,
                          struct rk_tjob_teacher *t)
{
    struct rk_srv *srv = r->srv;
    t->n_stop = 0;
    json_t *v = json_object_get(body, "teacher");
    if (!observer) {
        if (v && !json_is_null(v)) {
            rk_field_fail(r, RK_FIELD_INVALID_VALUE, "teacher",
                          "\"teacher\" is only for the method \"observer\"");
            return false;
        }
        return true;
    }
    if (v && !json_is_null(v) && !json_is_object(v)) {
        rk_field_fail(r, RK_FIELD_INVALID_TYPE, "teacher", "\"teacher\" must be an object");
        return false;
    }
    static const char *const keys[] = {"url", "model", "endpoint", "max_tokens", "temperature",
                                       "top_logprobs", "instruction", "stop", NULL};
    const char *url = NULL, *model = NULL, *endpoint = NULL, *instr = NULL;
    long long mt = t->max_tokens, top = t->top_logprobs;
    double temp = t->temperature;
    if (json_is_object(v)) {
        const char *bad = rk_json_unknown_key(v, keys, NULL);
        if (bad) {
            rk_field_fail(r, RK_FIELD_UNKNOWN, "teacher",
                          "unknown field \"teacher.%.64s\" (known: url, model, endpoint, "
                          "max_tokens, temperature, top_logprobs, instruction, stop)", bad);
            return false;
        }
        if (!rk_json_str(r, v, "url", 1, 1024, &url) || !rk_json_str(r, v, "model", 1, 256, &model) ||
            !rk_json_str(r, v, "endpoint", 1, 32, &endpoint) ||
            !rk_json_str(r, v, "instruction", 1, RK_TJOB_INSTRUCTION_MAX, &instr) ||
            !rk_json_int(r, v, "max_tokens", 1, RK_TJOB_TEACHER_TOKENS_MAX, &mt) ||
            !rk_json_num(r, v, "temperature", 0, 2, false, &temp) ||
            !rk_json_int(r, v, "top_logprobs", 0, RK_TEACHER_TOP_MAX, &top) ||
            !teacher_stops(r, json_object_get(v, "stop"), t))
            return false;
    }
    if (endpoint && strcmp(endpoint, "completions") && strcmp(endpoint, "chat")) {
        rk_field_fail(r, RK_FIELD_INVALID_VALUE, "teacher.endpoint",
                      "teacher.endpoint must be \"completions\" or \"chat\"");
        return false;
    }
    if (url && !(srv->teacher && !strcmp(url, rk_teacher_url(srv->teacher))) &&
        !rk_url_in_list(srv->cfg.teacher.allowed_urls, url)) {
        rk_http_error(r, 403, "teacher_url_not_allowed", "teacher.url",
                      "this server does not let jobs choose the teacher's URL%s",
                      srv->cfg.teacher.allowed_urls
                          ? " except those in its --teacher-allowed-urls list" : "");
        return false;
    }
    if (!srv->teacher && !url) {
        rk_http_error(r, 400, "teacher_not_configured", "teacher",
                      "no teacher is configured on this server (--teacher-url); name an allowed "
                      "teacher.url");
        return false;
    }
    if (url && !model && !srv->teacher) {
        rk_field_fail(r, RK_FIELD_INVALID_VALUE, "teacher.model", "teacher.model is needed with "
                      "teacher.url when the server has no teacher of its own");
        return false;
    }
    snprintf(t->url, sizeof t->url, "%s", url ? url : "");
    snprintf(t->model, sizeof t->model, "%s", model ? model : "");
    snprintf(t->instruction, sizeof t->instruction, "%s", instr ? instr : "");
    t->chat = endpoint && !strcmp(endpoint, "chat");
    t->max_tokens = (int)mt;
    t->temperature = temp;
    t->top_logprobs = (int)top;
    return true;
}

void h_tune(struct rk_http_req *r)
{
    struct rk_tjobs *js = api_tjobs_of(r);
    struct job_task *t = api_task_done(r);
    if (t) { // the second call: the job is written (or failed)
        if (api_task_answer_error(r, t))
            return;
        rk_http_json(r, 202, job_native(r->srv, &t->view));
        if (r->resp) {
            char loc[64];
            snprintf(loc, sizeof loc, "/jobs/%s", t->view.id);
            MHD_add_response_header(r->resp, "Location", loc);
        }
        return;
    }
    json_t *body = rk_http_body_json(r);
    if (!body)
        return;
    struct dataset_info di = {0};
    static const char *const top[] = {"dataset", "training_file", "method", "output_state",
                                      "hyperparameters", "eval_task", "teacher", NULL};
    if (!api_only_keys_or(r, body, top, is_job_hparam, "the request"))
        goto out;
    // Hyperparameters may come at the top level or in "hyperparameters".
    json_t *hpo = json_object_get(body, "hyperparameters");
    json_t *merged = json_object();
    if (hpo && !json_is_object(hpo)) {
        json_decref(merged);
        rk_field_fail(r, RK_FIELD_INVALID_TYPE, "hyperparameters",
                      "\"hyperparameters\" must be an object");
        goto out;
    }
    static const char *const none[] = {NULL};
    if (hpo && !api_only_keys_or(r, hpo, none, is_job_hparam, "\"hyperparameters\"")) {
        json_decref(merged);
        goto out;
    }
    size_t n_hp;
    const struct rk_hparam *tab = rk_hparams(&n_hp);
    for (size_t i = 0; i < n_hp; i++) {
        const char *key = tab[i].name;
        if (!(tab[i].where & RK_HP_JOB))
            continue;
        json_t *a = json_object_get(body, key), *b = hpo ? json_object_get(hpo, key) : NULL;
        if (a && b) {
            json_decref(merged);
            rk_field_fail(r, RK_FIELD_INVALID_VALUE, key,
                          "\"%s\" is given twice (top level and \"hyperparameters\")", key);
            goto out;
        }
        if (a || b)
            json_object_set(merged, key, a ? a : b);
    }
    const char *method = "standard", *out_state = NULL;
    if (!api_get_str(r, body, "method", &method) || !api_get_str(r, body, "output_state", &out_state)) {
        json_decref(merged);
        goto out;
    }
    const struct rk_tune_method *tm = method_or_400(r, method, "method");
    if (!tm) {
        json_decref(merged);
        goto out;
    }
    if (!out_state || !rk_state_id_valid(out_state)) {
        json_decref(merged);
        rk_field_fail(r, RK_FIELD_INVALID_VALUE, "output_state",
                      "\"output_state\" is required and must match ^[a-z0-9][a-z0-9_-]{0,63}$");
        goto out;
    }
    struct rk_tjob_hparams hp;
    hparams_default(js, &hp);
    if (!parse_teacher(r, body, tm == &rk_method_observer, &hp.teacher)) {
        json_decref(merged);
        goto out;
    }
    if (!parse_dataset(r, js, body, &di)) {
        json_decref(merged);
        goto out;
    }
    bool steps_given;
    snprintf(hp.method, sizeof hp.method, "%s", tm->name);
    bool ok = parse_hparams(r, js, merged, &hp, &steps_given);
    json_decref(merged);
    if (!ok)
        goto out;
    char *eval_task = NULL;
    json_t *et = json_object_get(body, "eval_task");
    if (et && !json_is_null(et)) {
        if (!api_eval_task_check(r, et))
            goto out;
        if (!(eval_task = json_dumps(et, JSON_COMPACT))) {
            rk_http_error(r, 503, "enomem", NULL, "out of memory");
            goto out;
        }
    }
    // The rest touches the disk: on the thread pool; the handler runs again.
    t = api_task_new(r, TASK_JOB, &di, di.training_file[0] ? "training_file" : "dataset");
    if (!t) {
        free(eval_task);
        goto out;
    }
    t->eval_task = eval_task; // taken
    t->hp = hp;
    t->judge = r->srv->judge != NULL;
    snprintf(t->output_state, sizeof t->output_state, "%s", out_state);
    api_task_start(r, t);
out:
    free(di.jsonl);
    json_decref(body);
}

void h_jobs(struct rk_http_req *r)
{
    struct rk_tjobs *js = api_tjobs_of(r);
    struct rk_tjob_view *vs = NULL;
    size_t n = 0;
    if (rk_tjobs_list(js, r->tenant, false, &vs, &n) != RK_OK) {
        rk_http_error(r, 503, "enomem", NULL, "out of memory");
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, job_native(r->srv, &vs[i]));
    free(vs);
    rk_http_json(r, 200, json_pack("{s:s,s:o}", "object", "list", "data", arr));
}

bool job_or_404(struct rk_http_req *r, struct rk_tjob_view *v)
{
    // The OpenAI fine-tuning routes know tuning jobs only.
    bool openai = !strncmp(r->path, "/v1/", 4);
    if (rk_tjobs_get(api_tjobs_of(r), r->tenant, r->params[0], v) == RK_OK &&
        !(openai && v->eval))
        return true;
    rk_http_error(r, 404, "job_not_found", "id", "job '%s' does not exist", r->params[0]);
    return false;
}

void h_job(struct rk_http_req *r)
{
    struct rk_tjob_view v;
    if (job_or_404(r, &v))
        rk_http_json(r, 200, job_native(r->srv, &v));
}

/* A cancel rewrites the job's record (fsync): on the thread pool. */
struct cancel_work {
    struct rk_tjobs *js;
    char tenant[RK_STATE_ID_MAX + 1];
    char id[RK_STATE_ID_MAX + 8];
    int rc; /* written on the pool, read after the completion */
    struct rk_tjob_view v;
};

static void cancel_run(void *arg)
{
    struct cancel_work *c = arg;
    c->rc = rk_tjobs_cancel(c->js, c->tenant, c->id, &c->v);
}

static void cancel_free(void *arg) { free(arg); }

void cancel_common(struct rk_http_req *r, bool openai)
{
    struct cancel_work *c = r->user_free == cancel_free ? r->user : NULL;
    if (!c) { // first call: cancel on the pool; the handler runs again then
        struct rk_tjob_view v;
        if (openai && !job_or_404(r, &v))
            return;
        if (!(c = calloc(1, sizeof *c))) {
            rk_http_error(r, 503, "enomem", NULL, "out of memory");
            return;
        }
        c->js = api_tjobs_of(r);
        snprintf(c->tenant, sizeof c->tenant, "%s", r->tenant);
        snprintf(c->id, sizeof c->id, "%s", r->params[0]);
        r->user = c;
        r->user_free = cancel_free;
        rk_http_offload(r, cancel_run, c); // on failure a 503 is prepared
        return;
    }
    if (c->rc != RK_OK) {
        rk_http_error(r, 404, "job_not_found", "id", "job '%s' does not exist", r->params[0]);
        return;
    }
    rk_http_json(r, 200, openai ? job_openai(r->srv, &c->v) : job_native(r->srv, &c->v));
}

void h_cancel(struct rk_http_req *r) { cancel_common(r, false); }

/* --- SSE: GET /jobs/{id}/events ------------------------------------------------- */

struct sse {
    struct rk_tjobs *js;
    struct rk_srv *srv;
    struct rk_http_req *r; /* NULL once the request is gone */
    struct rk_tjobs_follower *f;
    char id[32], tenant[RK_STATE_ID_MAX + 1];
    size_t next;
    struct rk_buf out;
    size_t out_pos;
    bool ka, ended;
    int refs;
};

static void sse_release(struct sse *s)
{
    if (--s->refs > 0)
        return;
    if (s->f)
        rk_tjobs_unfollow(s->js, s->f);
    rk_buf_free(&s->out);
    free(s);
}

static void sse_fill(struct sse *s)
{
    struct rk_tjob_ev *ev = NULL;
    size_t n = 0, total = 0;
    bool ended = false;
    if (rk_tjobs_events(s->js, s->tenant, s->id, s->next, 256, &ev, &n, &total, &ended) != RK_OK) {
        s->ended = true;
        return;
    }
    for (size_t i = 0; i < n; i++)
        rk_buf_printf(&s->out, "id: %zu\nevent: %s\ndata: %s\n\n", s->next + i,
                      rk_tjob_ev_name(ev[i].type), ev[i].data);
    s->next += n;
    rk_tjob_evs_free(ev, n);
    if (ended && s->next >= total)
        s->ended = true;
    if (!n && s->ka && !s->ended)
        rk_buf_puts(&s->out, ": keepalive\n\n");
    s->ka = false;
}

static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct sse *s = cls;
    (void)pos;
    if (s->out_pos == s->out.len) {
        s->out.len = s->out_pos = 0;
        sse_fill(s);
    }
    if (s->out_pos < s->out.len) {
        size_t n = s->out.len - s->out_pos;
        if (n > max)
            n = max;
        memcpy(buf, s->out.p + s->out_pos, n);
        s->out_pos += n;
        return (ssize_t)n;
    }
    if (s->ended || rk_tjobs_loop_closed(s->js) || s->srv->draining)
        return MHD_CONTENT_READER_END_OF_STREAM;
    if (!s->r)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    // Nothing new: wait for the worker's next event (the follower resumes).
    MHD_suspend_connection(s->r->conn);
    s->r->suspended = true;
    return 0;
}

static void sse_resp_free(void *cls) { sse_release(cls); }

static void sse_req_free(void *user)
{
    struct sse *s = user;
    s->r = NULL;
    if (s->f) {
        rk_tjobs_unfollow(s->js, s->f);
        s->f = NULL;
    }
    sse_release(s);
}

static void sse_wake(void *user, bool keepalive)
{
    struct sse *s = user;
    if (keepalive)
        s->ka = true;
    if (s->r && s->r->suspended) {
        s->r->suspended = false;
        MHD_resume_connection(s->r->conn);
    }
}

void h_events(struct rk_http_req *r)
{
    struct rk_tjobs *js = api_tjobs_of(r);
    struct rk_tjob_view v;
    if (!job_or_404(r, &v))
        return;
    struct sse *s = calloc(1, sizeof *s);
    if (!s) {
        rk_http_error(r, 503, "enomem", NULL, "out of memory");
        return;
    }
    s->js = js;
    s->srv = r->srv;
    s->r = r;
    snprintf(s->id, sizeof s->id, "%s", v.id);
    snprintf(s->tenant, sizeof s->tenant, "%s", r->tenant);
    const char *last = rk_http_header(r, "Last-Event-ID");
    if (last && *last) {
        char *end;
        unsigned long long k = strtoull(last, &end, 10);
        if (!*end && k < (1ull << 40))
            s->next = (size_t)k + 1;
    }
    s->refs = 2; // the request and the response
    s->f = rk_tjobs_follow(js, sse_wake, s);
    r->user = s;
    r->user_free = sse_req_free;
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, sse_read, s, sse_resp_free);
    if (!resp) {
        s->refs--;
        rk_http_error(r, 503, "enomem", NULL, "out of memory");
        return;
    }
    MHD_add_response_header(resp, "Content-Type", "text/event-stream");
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    rk_http_conn_headers(r->srv, resp);
    MHD_queue_response(r->conn, 200, resp);
    MHD_destroy_response(resp);
    r->status = 200;
    r->stream_queued = true;
}

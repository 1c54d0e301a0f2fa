/*
 * api_eval.c - evaluation over HTTP (docs/API.md, "Evaluation"):
 *   POST /eval       synchronous, for small requests: the body is read into
 *                    tasks on the loop thread, the evaluation runs on
 *                    libuv's thread pool (rk_http_offload) with a context of
 *                    its own, one at a time per server (429 beyond);
 *   POST /eval/jobs  the same request as a job of the jobs table, run by
 *                    the jobs worker (jobs_eval.c), followed like a tuning
 *                    job (GET /jobs/{id}, /events, /cancel).
 * Both take the tenant's own states only, read the fields with json_read.c
 * and answer the JSON document of `rwkvd eval` (eval_tasks.c).
 */
#include "api_jobs_int.h"
#include "eval_tasks.h"
#include "json_read.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Limits of POST /eval (docs/API.md); jobs take RK_EVTASK_ITEMS_MAX items
 * and no work bound. */
#define EVAL_SYNC_ITEMS_MAX 64        /* items in the request (tasks, train, collateral) */
#define EVAL_SYNC_WORK_MAX 65536      /* rk_evreq_work: tokens fed and generated, bound */
#define EVAL_SYNC_MAX_TOKENS_MAX 256  /* max_tokens of a generate task */

/* Read and check the request; false when a 400 is prepared. */
static bool parse_request(struct rk_http_req *r, json_t *body, bool sync, struct rk_evreq *q)
{
    static const char *const top[] = {"tasks", "collateral", "states", "base", "shots",
                                      "shot_seed", "limit", NULL};
    if (!api_only_keys(r, body, top, "the request"))
        return false;
    long long x;
    bool b;
    json_t *o;
    const char *ids[RK_EVREQ_STATES_MAX];
    size_t n_ids;
    if (!rk_json_int(r, body, "shots", 0, RK_EVAL_SHOTS_MAX, &x) ||
        !rk_json_int(r, body, "shot_seed", 0, INT64_MAX, &x) ||
        !rk_json_int(r, body, "limit", 0, RK_EVTASK_ITEMS_MAX, &x) ||
        !rk_json_bool(r, body, "base", &b) || !rk_json_obj(r, body, "collateral", &o) ||
        !rk_json_str_array(r, body, "states", false, RK_EVREQ_STATES_MAX, 1, RK_STATE_ID_MAX,
                           ids, &n_ids))
        return false;
    json_t *tasks = json_object_get(body, "tasks");
    if (tasks && !json_is_null(tasks) && !json_is_array(tasks)) {
        rk_field_fail(r, RK_FIELD_INVALID_TYPE, "tasks", "\"tasks\" must be an array");
        return false;
    }
    if (json_array_size(tasks) > RK_EVREQ_TASKS_MAX) {
        rk_field_fail(r, RK_FIELD_OUT_OF_RANGE, "tasks", "\"tasks\" has %zu tasks; at most %d",
                      json_array_size(tasks), RK_EVREQ_TASKS_MAX);
        return false;
    }
    for (size_t i = 0; i < json_array_size(tasks); i++)
        if (!json_is_object(json_array_get(tasks, i))) {
            rk_field_fail(r, RK_FIELD_INVALID_TYPE, "tasks", "tasks[%zu] must be an object", i);
            return false;
        }
    char param[64];
    struct rk_errbuf eb = {0};
    int rc = rk_evreq_parse(body, q, param, sizeof param, &eb);
    if (rc != RK_OK) {
        rk_field_fail(r, rc == RK_ERANGE ? RK_FIELD_OUT_OF_RANGE : RK_FIELD_INVALID_VALUE,
                      param[0] ? param : NULL, "%s", eb.msg[0] ? eb.msg : rk_strerror(rc));
        return false;
    }
    size_t items = rk_evreq_items_given(q), items_max = sync ? EVAL_SYNC_ITEMS_MAX
                                                             : RK_EVTASK_ITEMS_MAX;
    if (items > items_max) {
        rk_field_fail(r, RK_FIELD_OUT_OF_RANGE, "tasks",
                      "the request holds %zu items; %s takes at most %zu%s", items,
                      sync ? "POST /eval" : "an evaluation job", items_max,
                      sync ? " (submit larger evaluations to POST /eval/jobs)" : "");
        goto bad;
    }
    if (sync) {
        for (size_t i = 0; i <= q->n_tasks; i++) {
            struct rk_evtask *t = i < q->n_tasks ? q->tasks[i] : q->collateral;
            if (t && t->kind == RK_EVAL_GENERATE && t->max_tokens > EVAL_SYNC_MAX_TOKENS_MAX) {
                char p[48];
                if (i < q->n_tasks)
                    snprintf(p, sizeof p, "tasks[%zu].max_tokens", i);
                else
                    snprintf(p, sizeof p, "collateral.max_tokens");
                rk_field_fail(r, RK_FIELD_OUT_OF_RANGE, p,
                              "max_tokens %ld is over %d, the limit of POST /eval (use "
                              "POST /eval/jobs)", t->max_tokens, EVAL_SYNC_MAX_TOKENS_MAX);
                goto bad;
            }
        }
        size_t work = rk_evreq_work(q);
        if (work > EVAL_SYNC_WORK_MAX) {
            rk_field_fail(r, RK_FIELD_OUT_OF_RANGE, "tasks",
                          "the request may feed and generate up to %zu tokens over all its "
                          "states; POST /eval takes at most %d (use POST /eval/jobs)",
                          work, EVAL_SYNC_WORK_MAX);
            goto bad;
        }
    }
    return true;
bad:
    rk_evreq_fini(q);
    return false;
}

/* --- POST /eval -------------------------------------------------------------- */

struct sync_eval {
    struct rk_srv *srv;
    char tenant[RK_STATE_ID_MAX + 1];
    struct rk_evreq q;
    int64_t deadline_us; /* --request-timeout from the request's start */
    /* written by the work; read on the loop thread after its completion */
    int rc;
    int status;
    char code[32], param[64];
    struct rk_errbuf eb;
    json_t *doc;
};

static void sync_free(void *arg)
{
    struct sync_eval *se = arg;
    if (!se)
        return;
    rk_evreq_fini(&se->q);
    json_decref(se->doc);
    free(se);
}

static bool sync_cancel(void *arg)
{
    struct sync_eval *se = arg;
    return rk_now_us() > se->deadline_us;
}

static void sync_work(void *arg)
{
    struct sync_eval *se = arg;
    struct rk_srv *srv = se->srv;
    const struct rk_model *m = srv->model;
    size_t slen = rk_state_len(m);
    float *states[RK_EVREQ_STATES_MAX] = {0};
    struct rk_ctx *ctx = NULL;
    json_t *results = NULL;
    se->rc = RK_OK;
    for (size_t i = 0; i < se->q.n_states; i++) {
        struct rk_state_ref *ref = NULL;
        int rc = rk_store_get(srv->store, se->tenant, se->q.states[i], &ref, &se->eb);
        if (rc == RK_OK && !(states[i] = malloc(slen * sizeof(float))))
            rc = RK_ENOMEM;
        if (rc != RK_OK) {
            rk_state_ref_release(ref);
            se->rc = rc;
            snprintf(se->param, sizeof se->param, "states");
            if (rc == RK_ENOTFOUND)
                rk_errbuf_set(&se->eb, rc, "state '%s' does not exist", se->q.states[i]);
            goto out;
        }
        memcpy(states[i], rk_state_ref_data(ref), slen * sizeof(float));
        rk_state_ref_release(ref);
    }
    // One compute thread: the engine keeps the others.
    struct rk_ctx_params cp = {.n_threads = 1};
    if ((se->rc = rk_ctx_create(m, &cp, &ctx)) != RK_OK)
        goto out;
    struct rk_evrun_state runs[RK_EVREQ_STATES_MAX + 1];
    size_t n_runs = rk_evreq_runs(&se->q, states, runs);
    struct rk_evrun_params p;
    rk_evreq_params(&se->q, runs, n_runs, &p);
    se->rc = rk_evrun(ctx, srv->tok, &p, sync_cancel, se, NULL, NULL, &results, &se->eb);
    if (se->rc == RK_ECANCELED) {
        se->rc = RK_ETIMEOUT;
        rk_errbuf_set(&se->eb, RK_ETIMEOUT, "the evaluation ran past --request-timeout (%d s); "
                                            "submit it to POST /eval/jobs",
                      srv->cfg.request_timeout_s);
    }
    if (se->rc != RK_OK)
        goto out;
    se->doc = rk_evrun_doc("name", srv->model_name, rk_model_fingerprint(m), NULL, se->q.shots,
                           results);
    results = NULL;
    if (!se->doc)
        se->rc = RK_ENOMEM;
out:
    json_decref(results);
    rk_ctx_free(ctx);
    for (size_t i = 0; i < RK_EVREQ_STATES_MAX; i++)
        free(states[i]);
    atomic_fetch_sub(&srv->n_evals, 1);
}

void h_eval(struct rk_http_req *r)
{
    // Called again once the offloaded evaluation is done: its answer.
    struct sync_eval *se = r->user_free == sync_free ? r->user : NULL;
    if (se && !r->offload) {
        if (se->rc == RK_OK) {
            rk_http_json(r, 200, se->doc);
            se->doc = NULL;
        } else if (se->rc == RK_ETIMEOUT) {
            rk_http_error(r, 504, "deadline_exceeded", NULL, "%s", se->eb.msg);
        } else if (se->rc == RK_ENOTFOUND) {
            rk_http_error(r, 404, "state_not_found", "states", "%s", se->eb.msg);
        } else {
            rk_http_error_rk(r, se->rc, se->param[0] ? se->param : NULL,
                             se->eb.msg[0] ? se->eb.msg : rk_strerror(se->rc));
        }
        return;
    }
    json_t *body = rk_http_body_json(r);
    if (!body)
        return;
    se = calloc(1, sizeof *se);
    if (!se) {
        json_decref(body);
        rk_http_error(r, 503, "enomem", NULL, "out of memory");
        return;
    }
    bool ok = parse_request(r, body, true, &se->q);
    json_decref(body);
    if (!ok) {
        free(se);
        return;
    }
    int busy = 0;
    if (!atomic_compare_exchange_strong(&r->srv->n_evals, &busy, 1)) {
        sync_free(se);
        rk_http_error(r, 429, "queue_full", NULL,
                      "another evaluation is running; retry, or submit it to POST /eval/jobs");
        if (r->resp)
            MHD_add_response_header(r->resp, "Retry-After", "1");
        return;
    }
    se->srv = r->srv;
    se->deadline_us = r->t_start_us + (int64_t)r->srv->cfg.request_timeout_s * 1000000;
    snprintf(se->tenant, sizeof se->tenant, "%s", r->tenant);
    r->user = se;
    r->user_free = sync_free;
    if (!rk_http_offload(r, sync_work, se)) // on failure a 503 is prepared
        atomic_fetch_sub(&r->srv->n_evals, 1);
}

/* --- POST /eval/jobs ------------------------------------------------------------ */

/* The submit writes the job's files (fsync): on the thread pool; the
 * handler runs again to answer. */
struct eval_submit {
    struct rk_tjobs *js;
    char tenant[RK_STATE_ID_MAX + 1];
    char *data; /* the request as JSON text */
    size_t items;
    int rc; /* written on the pool, read after the completion */
    struct rk_errbuf eb;
    struct rk_tjob_view v;
};

static void eval_submit_run(void *arg)
{
    struct eval_submit *es = arg;
    struct rk_tjob_new nj = {.tenant = es->tenant, .output_state = "", .data = es->data,
                             .len = strlen(es->data), .n_examples = es->items, .eval = true};
    es->rc = rk_tjobs_submit(es->js, &nj, &es->v, &es->eb);
}

static void eval_submit_free(void *arg)
{
    struct eval_submit *es = arg;
    if (es)
        free(es->data);
    free(es);
}

void h_eval_job(struct rk_http_req *r)
{
    struct eval_submit *es = r->user_free == eval_submit_free ? r->user : NULL;
    if (es && !r->offload) { // the second call: the job is written (or failed)
        if (es->rc != RK_OK) {
            rk_http_error_rk(r, es->rc, NULL, es->eb.msg);
            return;
        }
        rk_http_json(r, 202, job_eval(r->srv, &es->v));
        if (r->resp) {
            char loc[64];
            snprintf(loc, sizeof loc, "/jobs/%s", es->v.id);
            MHD_add_response_header(r->resp, "Location", loc);
        }
        return;
    }
    json_t *body = rk_http_body_json(r);
    if (!body)
        return;
    struct rk_evreq q;
    if (!parse_request(r, body, false, &q)) {
        json_decref(body);
        return;
    }
    size_t items = rk_evreq_items(&q);
    rk_evreq_fini(&q);
    es = calloc(1, sizeof *es);
    char *data = json_dumps(body, JSON_COMPACT);
    json_decref(body);
    if (!es || !data) {
        free(es);
        free(data);
        rk_http_error(r, 503, "enomem", NULL, "out of memory");
        return;
    }
    es->js = api_tjobs_of(r);
    snprintf(es->tenant, sizeof es->tenant, "%s", r->tenant);
    es->data = data;
    es->items = items;
    r->user = es;
    r->user_free = eval_submit_free;
    rk_http_offload(r, eval_submit_run, es); // on failure a 503 is prepared
}

static json_t *ms_or_null(int64_t ms) { return ms ? json_integer((json_int_t)ms) : json_null(); }

json_t *job_eval(struct rk_srv *srv, const struct rk_tjob_view *v)
{
    (void)srv;
    json_t *o = json_pack("{s:s,s:s,s:s,s:I,s:I}", "id", v->id, "object", "eval.job", "status",
                          rk_tjob_status_name(v->status), "created_at",
                          (json_int_t)(v->created_ms / 1000), "created_ms",
                          (json_int_t)v->created_ms);
    if (!o)
        return NULL;
    json_object_set_new(o, "kind", json_string("eval"));
    json_object_set_new(o, "started_ms", ms_or_null(v->started_ms));
    json_object_set_new(o, "finished_ms", ms_or_null(v->finished_ms));
    json_object_set_new(o, "progress", json_pack("{s:I,s:I}", "done", (json_int_t)v->eval_done,
                                                 "total", (json_int_t)v->eval_total));
    json_object_set_new(o, "queue_position", v->queue_pos >= 0 ? json_integer(v->queue_pos)
                                                               : json_null());
    json_object_set_new(o, "attempts", json_integer(v->attempts));
    json_object_set_new(o, "error", v->status == RK_TJOB_FAILED
                                        ? json_pack("{s:s,s:s}", "code", v->err_code, "message",
                                                    v->err_msg)
                                        : json_null());
    json_t *res = v->status == RK_TJOB_SUCCEEDED && v->eval_result
                      ? json_loads(v->eval_result, 0, NULL)
                      : NULL;
    json_object_set_new(o, "result", res ? res : json_null());
    return o;
}

/* --- POST /tune's eval_task ------------------------------------------------------ */

/* "tasks[0]..." -> "eval_task..." in place (param or message). */
static void rename_task0(char *s, size_t cap)
{
    char tmp[512];
    char *p = strstr(s, "tasks[0]");
    if (!p)
        return;
    snprintf(tmp, sizeof tmp, "%.*seval_task%s", (int)(p - s), s, p + 8);
    size_t n = strlen(tmp) < cap ? strlen(tmp) : cap - 1;
    memcpy(s, tmp, n);
    s[n] = '\0';
}

bool api_eval_task_check(struct rk_http_req *r, json_t *task)
{
    if (!json_is_object(task)) {
        rk_field_fail(r, RK_FIELD_INVALID_TYPE, "eval_task", "\"eval_task\" must be an object");
        return false;
    }
    json_t *wrap = json_pack("{s:[O]}", "tasks", task);
    if (!wrap) {
        rk_http_error(r, 503, "enomem", NULL, "out of memory");
        return false;
    }
    struct rk_evreq q;
    char param[64];
    struct rk_errbuf eb = {0};
    int rc = rk_evreq_parse(wrap, &q, param, sizeof param, &eb);
    json_decref(wrap);
    if (rc != RK_OK) {
        rename_task0(param, sizeof param);
        rename_task0(eb.msg, sizeof eb.msg);
        rk_field_fail(r, rc == RK_ERANGE ? RK_FIELD_OUT_OF_RANGE : RK_FIELD_INVALID_VALUE,
                      param[0] ? param : "eval_task", "%s", eb.msg[0] ? eb.msg : rk_strerror(rc));
        return false;
    }
    bool ok = false;
    size_t items = rk_evreq_items_given(&q), work = 2 * rk_evreq_work(&q);
    if (items > EVAL_SYNC_ITEMS_MAX)
        rk_field_fail(r, RK_FIELD_OUT_OF_RANGE, "eval_task",
                      "\"eval_task\" holds %zu items; at most %d", items, EVAL_SYNC_ITEMS_MAX);
    else if (q.tasks[0]->kind == RK_EVAL_GENERATE &&
             q.tasks[0]->max_tokens > EVAL_SYNC_MAX_TOKENS_MAX)
        rk_field_fail(r, RK_FIELD_OUT_OF_RANGE, "eval_task.max_tokens",
                      "max_tokens %ld is over %d", q.tasks[0]->max_tokens,
                      EVAL_SYNC_MAX_TOKENS_MAX);
    else if (work > EVAL_SYNC_WORK_MAX)
        rk_field_fail(r, RK_FIELD_OUT_OF_RANGE, "eval_task",
                      "\"eval_task\" may feed and generate up to %zu tokens on its two runs; "
                      "at most %d", work, EVAL_SYNC_WORK_MAX);
    else
        ok = true;
    rk_evreq_fini(&q);
    return ok;
}

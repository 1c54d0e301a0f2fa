/*
 * jobs_eval.c - evaluation jobs (POST /eval/jobs): the worker side. An
 * evaluation job is a job of the tuning-jobs table (same queue, worker,
 * journal, events, cancel and tenancy; see the DESIGN note in jobs.c) whose
 * <id>.data.jsonl holds the request body; the worker reads it into tasks
 * (eval_tasks.c), loads the tenant's states from the store, and runs the
 * evaluation with a context of its own, reporting "progress" events. The
 * result document is written to <id>.result.json before the job succeeds.
 * An evaluation keeps no checkpoint: interrupted by a shutdown it is queued
 * again and starts over at the next start; found running after a crash it
 * is failed ("interrupted", jobs_journal.c).
 */
#include "eval_tasks.h"
#include "jobs_int.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PROGRESS_EVERY_US 500000 /* at most two progress events a second */

struct erun {
    struct rk_tjobs *js;
    struct rk_tjob *j;
    char id[32];
    int64_t t0_us, last_us;
};

static bool e_cancel(void *user)
{
    struct erun *r = user;
    return tj_cancelled(r->js, r->j);
}

static void e_progress(size_t done, size_t total, const char *task, const char *state,
                       void *user)
{
    struct erun *r = user;
    struct rk_tjobs *js = r->js;
    int64_t now = rk_now_us();
    bool emit = done == total || now - r->last_us >= PROGRESS_EVERY_US;
    char *data = NULL;
    if (emit) {
        r->last_us = now;
        json_t *o = json_pack("{s:I,s:I,s:s,s:s,s:f}", "done", (json_int_t)done, "total",
                              (json_int_t)total, "task", task, "state", state, "elapsed_s",
                              (double)(now - r->t0_us) / 1e6);
        data = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(6)) : NULL;
        json_decref(o);
    }
    int64_t t = tj_wall_ms();
    pthread_mutex_lock(&js->mu);
    bool keep = r->j->v.status == RK_TJOB_RUNNING;
    if (keep) {
        r->j->v.eval_done = done;
        r->j->v.eval_total = total;
        if (data)
            tj_ev_push(r->j, RK_EV_PROGRESS, t, strdup(data));
    }
    pthread_mutex_unlock(&js->mu);
    if (keep && data) {
        tj_ev_persist(js, r->id, RK_EV_PROGRESS, t, data);
        tj_wake_loop(js);
    }
    free(data);
}

void tj_eval_load_result(struct rk_tjobs *js, struct rk_tjob *j)
{
    char path[1100];
    tj_job_path(js, j->v.id, ".result.json", path, sizeof path);
    void *buf = NULL;
    size_t len = 0;
    if (rk_file_read_all(path, (size_t)64 << 20, &buf, &len, NULL) != RK_OK) {
        rk_log(RK_LOG_WARN, "jobs: %s: the evaluation result is missing", j->v.id);
        return;
    }
    char *s = realloc(buf, len + 1);
    if (!s) {
        free(buf);
        return;
    }
    s[len] = '\0';
    j->v.eval_result = s;
}

void tj_eval_run(struct rk_tjobs *js, struct rk_tjob *j)
{
    struct rk_srv *srv = js->srv;
    const struct rk_model *m = srv->model;
    struct erun r = {.js = js, .j = j};
    snprintf(r.id, sizeof r.id, "%s", j->v.id);
    struct rk_evreq q = {0};
    struct rk_ctx *ctx = NULL;
    struct rk_evheld held[RK_EVREQ_STATES_MAX] = {0};
    float *states[RK_EVREQ_STATES_MAX] = {0};
    const struct rk_readout *ros[RK_EVREQ_STATES_MAX] = {0};
    json_t *body = NULL, *results = NULL, *doc = NULL;
    char *text = NULL;
    void *data = NULL;
    size_t len = 0;
    struct rk_errbuf eb = {0};
    char path[1100];
    tj_journal_write(js, j, NULL);

    tj_job_path(js, r.id, ".data.jsonl", path, sizeof path);
    int rc = rk_file_read_all(path, 2 * js->srv->cfg.body_bytes_max + 1024, &data, &len, &eb);
    if (rc != RK_OK) {
        rk_log(RK_LOG_WARN, "jobs: %s: %s", r.id, eb.msg);
        tj_fail(js, j, "dataset_unreadable", "cannot read the evaluation request from the "
                                             "journal: %s",
                eb.msg[0] ? rk_file_error_reason(eb.msg) : rk_strerror(rc));
        goto out;
    }
    json_error_t je;
    body = json_loadb(data, len, JSON_REJECT_DUPLICATES, &je);
    char param[64];
    if (!body || (rc = rk_evreq_parse(body, &q, param, sizeof param, &eb)) != RK_OK) {
        tj_fail(js, j, "invalid_request", "the stored evaluation request is invalid: %s",
                body ? eb.msg : je.text);
        goto out;
    }
    for (size_t i = 0; i < q.n_states; i++) {
        struct rk_state_ref *ref = NULL;
        rc = rk_store_get(srv->store, j->v.tenant, q.states[i], &ref, &eb);
        if (rc == RK_OK && rk_evheld_take(m, ref, &held[i]) != RK_OK)
            rc = RK_ENOMEM, eb.msg[0] = '\0';
        if (rc != RK_OK) {
            rk_state_ref_release(ref);
            tj_fail(js, j, rc == RK_ENOTFOUND ? "state_not_found" : "state_unavailable",
                    "state '%s': %s", q.states[i],
                    rc == RK_ENOTFOUND ? "does not exist"
                                       : eb.msg[0] ? eb.msg : rk_strerror(rc));
            goto out;
        }
        states[i] = held[i].adapter; // a kernel state: its core part, and its term
        ros[i] = rk_evheld_ro(&held[i]);
        rk_state_ref_release(ref);
    }
    struct rk_ctx_params cp = {.n_threads = js->lim.threads ? js->lim.threads : srv->cfg.threads};
    if (rk_ctx_create(m, &cp, &ctx) != RK_OK) {
        tj_fail(js, j, "enomem", "out of memory for the evaluation context");
        goto out;
    }
    struct rk_evrun_state runs[RK_EVREQ_STATES_MAX + 1];
    size_t n_runs = rk_evreq_runs(&q, states, ros, runs);
    struct rk_evrun_params p;
    rk_evreq_params(&q, runs, n_runs, &p);

    pthread_mutex_lock(&js->mu);
    j->v.loading = false;
    j->v.eval_done = 0;
    j->v.eval_total = rk_evrun_items(&p);
    char msg[128];
    snprintf(msg, sizeof msg, "evaluating %zu items", j->v.eval_total);
    struct pending_ev pe = tj_status_event(j, msg);
    pthread_mutex_unlock(&js->mu);
    tj_pending_flush(js, r.id, &pe);
    tj_wake_loop(js);
    rk_log(RK_LOG_INFO, "jobs: %s evaluating (%zu items)", r.id, j->v.eval_total);

    r.t0_us = r.last_us = rk_now_us();
    rc = rk_evrun(ctx, srv->tok, &p, e_cancel, &r, e_progress, &r, &results, &eb);
    if (rc == RK_ECANCELED || (rc != RK_OK && atomic_load(&j->cancel))) {
        if (atomic_load(&j->cancel)) {
            tj_finish(js, j, RK_TJOB_CANCELLED, NULL, NULL);
        } else {
            // Shutdown: queued again; it starts over at the next start.
            pthread_mutex_lock(&js->mu);
            struct pending_ev pe2 = {0};
            if (j->v.status == RK_TJOB_RUNNING) {
                j->v.status = RK_TJOB_QUEUED;
                j->v.eval_done = 0;
                pe2 = tj_status_event(j, "interrupted by shutdown; the evaluation starts over "
                                         "at the next start");
            }
            pthread_mutex_unlock(&js->mu);
            tj_journal_write(js, j, NULL);
            tj_pending_flush(js, r.id, &pe2);
        }
        goto out;
    }
    if (rc != RK_OK) {
        tj_fail(js, j, rc == RK_ENOMEM ? "enomem" : "invalid_request", "%s",
                eb.msg[0] ? eb.msg : rk_strerror(rc));
        goto out;
    }
    doc = rk_evrun_doc("name", srv->model_name, rk_model_fingerprint(m), NULL, q.shots, results);
    results = NULL;
    if (!doc || !(text = json_dumps(doc, JSON_COMPACT | JSON_REAL_PRECISION(9)))) {
        tj_fail(js, j, "enomem", "out of memory for the result");
        goto out;
    }
    tj_job_path(js, r.id, ".result.json", path, sizeof path);
    if ((rc = rk_file_write_atomic(path, text, strlen(text), &eb)) != RK_OK) {
        rk_log(RK_LOG_WARN, "jobs: %s: %s", r.id, eb.msg);
        tj_fail(js, j, "publish_failed", "cannot store the result: %s",
                rk_file_error_reason(eb.msg));
        goto out;
    }
    pthread_mutex_lock(&js->mu);
    bool cancelled = atomic_load(&j->cancel);
    if (!cancelled && !j->v.eval_result) {
        j->v.eval_result = text;
        text = NULL;
    }
    pthread_mutex_unlock(&js->mu);
    tj_finish(js, j, cancelled ? RK_TJOB_CANCELLED : RK_TJOB_SUCCEEDED, NULL, NULL);
out:
    free(text);
    json_decref(doc);
    json_decref(results);
    json_decref(body);
    free(data);
    for (size_t i = 0; i < RK_EVREQ_STATES_MAX; i++)
        rk_evheld_fini(&held[i]);
    rk_ctx_free(ctx);
    rk_evreq_fini(&q);
}

/* --- a tuning job's eval_task ---------------------------------------------- */

void tj_eval_tuned(struct rk_tjobs *js, struct rk_tjob *j, const float *init,
                   const struct rk_readout *init_ro, const float *tuned,
                   const struct rk_readout *tuned_ro, int n_threads)
{
    struct rk_srv *srv = js->srv;
    struct erun r = {.js = js, .j = j};
    snprintf(r.id, sizeof r.id, "%s", j->v.id);
    char path[1100], param[64];
    tj_job_path(js, r.id, ".evaltask.json", path, sizeof path);
    struct rk_errbuf eb = {0};
    struct rk_evreq q = {0};
    struct rk_ctx *ctx = NULL;
    json_t *task = json_load_file(path, JSON_REJECT_DUPLICATES, NULL), *wrap = NULL;
    json_t *results = NULL;
    char *text = NULL;
    int rc = RK_EINVAL;
    if (!task || !(wrap = json_pack("{s:[O]}", "tasks", task)) ||
        (rc = rk_evreq_parse(wrap, &q, param, sizeof param, &eb)) != RK_OK) {
        rk_errbuf_set(&eb, rc, "the stored eval_task is unreadable%s%s", eb.msg[0] ? ": " : "",
                      eb.msg);
        goto out;
    }
    struct rk_ctx_params cp = {.n_threads = n_threads};
    if ((rc = rk_ctx_create(srv->model, &cp, &ctx)) != RK_OK)
        goto out;
    struct rk_evrun_state runs[2] = {{.label = "start", .state = init, .ro = init_ro},
                                     {.label = "end", .state = tuned, .ro = tuned_ro}};
    struct rk_evrun_params p;
    rk_evreq_params(&q, runs, 2, &p);
    rc = rk_evrun(ctx, srv->tok, &p, e_cancel, &r, NULL, NULL, &results, &eb);
    if (rc == RK_OK)
        text = json_dumps(results, JSON_COMPACT | JSON_REAL_PRECISION(9));
out:;
    int64_t t = tj_wall_ms();
    json_t *ev = json_pack("{s:I,s:s}", "step", (json_int_t)j->v.step, "message",
                           "eval_task on the starting and on the tuned state");
    if (ev && text)
        json_object_set_new(ev, "eval_task", json_loads(text, 0, NULL));
    else if (ev && rc != RK_ECANCELED)
        json_object_set_new(ev, "eval_task_error",
                            json_string(eb.msg[0] ? eb.msg : rk_strerror(rc)));
    char *data = ev && rc != RK_ECANCELED ? json_dumps(ev, JSON_COMPACT | JSON_REAL_PRECISION(9))
                                          : NULL;
    json_decref(ev);
    if (rc != RK_OK && rc != RK_ECANCELED)
        rk_log(RK_LOG_WARN, "jobs: %s: eval_task: %s", r.id,
               eb.msg[0] ? eb.msg : rk_strerror(rc));
    pthread_mutex_lock(&js->mu);
    bool keep = j->v.status == RK_TJOB_RUNNING;
    if (keep && text && !j->v.eval_task_results) {
        j->v.eval_task_results = text;
        text = NULL;
    }
    if (keep && data)
        tj_ev_push(j, RK_EV_EVAL, t, strdup(data));
    pthread_mutex_unlock(&js->mu);
    if (keep && data) {
        tj_ev_persist(js, r.id, RK_EV_EVAL, t, data);
        tj_wake_loop(js);
    }
    free(data);
    free(text);
    json_decref(results);
    json_decref(wrap);
    json_decref(task);
    rk_ctx_free(ctx);
    rk_evreq_fini(&q);
}

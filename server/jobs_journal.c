/*
 * jobs_journal.c - the jobs journal (DATA/jobs/<id>.json records, written atomically)
 * and recovery at start-up: records and events loaded, interrupted jobs queued
 * again or failed (see the DESIGN note in jobs.c).
 */
#include "jobs_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

/* --- journal: job records --------------------------------------------------- */

static json_t *num_or_null(double x) { return isfinite(x) ? json_real(x) : json_null(); }

static double num_of(json_t *o, const char *k)
{
    json_t *x = json_object_get(o, k);
    return json_is_number(x) ? json_number_value(x) : NAN;
}

long long tj_int_of(json_t *o, const char *k)
{
    json_t *x = json_object_get(o, k);
    return json_is_integer(x) ? json_integer_value(x) : json_is_real(x) ? (long long)json_real_value(x) : 0;
}

void tj_str_of(json_t *o, const char *k, char *out, size_t cap)
{
    const char *s = json_string_value(json_object_get(o, k));
    snprintf(out, cap, "%s", s ? s : "");
}

static json_t *record_json(const struct rk_tjob_view *v)
{
    json_t *hp = rk_tjob_hparams_json(&v->hp, true);
    json_t *o = json_pack("{s:i,s:s,s:s,s:s,s:s,s:s,s:b,s:s,s:I,s:I,s:I,s:o}", "format", 1, "id",
                          v->id, "tenant", v->tenant, "output_state", v->output_state,
                          "training_file", v->training_file, "suffix", v->suffix, "openai",
                          v->openai, "status", rk_tjob_status_name(v->status), "created_ms",
                          (json_int_t)v->created_ms, "started_ms", (json_int_t)v->started_ms,
                          "finished_ms", (json_int_t)v->finished_ms, "hyperparameters", hp);
    if (!o)
        return NULL;
    json_object_set_new(o, "n_examples", json_integer((json_int_t)v->n_examples));
    json_object_set_new(o, "n_tokens", json_integer((json_int_t)v->n_tokens));
    json_object_set_new(o, "n_targets", json_integer((json_int_t)v->n_targets));
    json_object_set_new(o, "step", json_integer(v->step));
    json_object_set_new(o, "steps", json_integer(v->steps));
    json_object_set_new(o, "resumed_from", json_integer(v->resumed_from));
    json_object_set_new(o, "attempts", json_integer(v->attempts));
    json_object_set_new(o, "loss", num_or_null(v->loss));
    json_object_set_new(o, "val_loss", num_or_null(v->val_loss));
    json_object_set_new(o, "val_loss_init", num_or_null(v->val_loss_init));
    json_object_set_new(o, "val_loss_best", num_or_null(v->val_loss_best));
    json_object_set_new(o, "tokens_per_s", num_or_null(v->tokens_per_s));
    json_object_set_new(o, "trained_tokens", json_integer((json_int_t)v->trained_tokens));
    json_object_set_new(o, "result_version", json_integer((json_int_t)v->result_version));
    json_object_set_new(o, "error_code", json_string(v->err_code));
    json_object_set_new(o, "error", json_string(v->err_msg));
    json_object_set_new(o, "kind", json_string(v->eval ? "eval" : "tune"));
    if (v->has_eval_task)
        json_object_set_new(o, "eval_task", json_true());
    if (v->eval_task_results)
        json_object_set_new(o, "eval_task_results", json_loads(v->eval_task_results, 0, NULL));
    if (v->eval) {
        json_object_set_new(o, "eval_done", json_integer((json_int_t)v->eval_done));
        json_object_set_new(o, "eval_total", json_integer((json_int_t)v->eval_total));
    }
    return o;
}

static bool record_parse(json_t *o, struct rk_tjob_view *v)
{
    memset(v, 0, sizeof *v);
    if (tj_int_of(o, "format") != 1)
        return false;
    tj_str_of(o, "id", v->id, sizeof v->id);
    tj_str_of(o, "tenant", v->tenant, sizeof v->tenant);
    tj_str_of(o, "output_state", v->output_state, sizeof v->output_state);
    tj_str_of(o, "training_file", v->training_file, sizeof v->training_file);
    tj_str_of(o, "suffix", v->suffix, sizeof v->suffix);
    v->openai = json_is_true(json_object_get(o, "openai"));
    if (!rk_tjob_status_parse(json_string_value(json_object_get(o, "status")), &v->status))
        return false;
    v->created_ms = tj_int_of(o, "created_ms");
    v->started_ms = tj_int_of(o, "started_ms");
    v->finished_ms = tj_int_of(o, "finished_ms");
    json_t *hp = json_object_get(o, "hyperparameters");
    if (!json_is_object(hp))
        return false;
    struct rk_tjob_hparams *h = &v->hp;
    rk_tjob_hparams_default(h, 0);
    rk_tjob_hparams_from_json(hp, h);
    v->n_examples = (size_t)tj_int_of(o, "n_examples");
    v->n_tokens = (size_t)tj_int_of(o, "n_tokens");
    v->n_targets = (size_t)tj_int_of(o, "n_targets");
    v->step = (long)tj_int_of(o, "step");
    v->steps = (long)tj_int_of(o, "steps");
    v->resumed_from = (long)tj_int_of(o, "resumed_from");
    v->attempts = (int)tj_int_of(o, "attempts");
    v->loss = num_of(o, "loss");
    v->val_loss = num_of(o, "val_loss");
    v->val_loss_init = num_of(o, "val_loss_init");
    v->val_loss_best = num_of(o, "val_loss_best");
    v->tokens_per_s = num_of(o, "tokens_per_s");
    v->grad_norm = v->lr_now = NAN;
    v->trained_tokens = (uint64_t)tj_int_of(o, "trained_tokens");
    v->result_version = (uint64_t)tj_int_of(o, "result_version");
    tj_str_of(o, "error_code", v->err_code, sizeof v->err_code);
    tj_str_of(o, "error", v->err_msg, sizeof v->err_msg);
    v->queue_pos = -1;
    const char *kind = json_string_value(json_object_get(o, "kind"));
    if (kind && strcmp(kind, "tune") && strcmp(kind, "eval"))
        return false;
    v->eval = kind && !strcmp(kind, "eval");
    v->has_eval_task = json_is_true(json_object_get(o, "eval_task"));
    json_t *etr = json_object_get(o, "eval_task_results");
    if (json_is_array(etr))
        v->eval_task_results = json_dumps(etr, JSON_COMPACT | JSON_REAL_PRECISION(9));
    v->eval_done = (size_t)tj_int_of(o, "eval_done");
    v->eval_total = (size_t)tj_int_of(o, "eval_total");
    return tj_id_ok(v->id, "ftjob-") && rk_state_id_valid(v->tenant) && h->tune.steps >= 1 &&
           h->tune.batch >= 1;
}

/* Write the job's record atomically (any thread; takes jmu, then mu). */
int tj_journal_write(struct rk_tjobs *js, struct rk_tjob *j, struct rk_errbuf *eb)
{
    pthread_mutex_lock(&js->jmu);
    pthread_mutex_lock(&js->mu);
    struct rk_tjob_view v = j->v;
    pthread_mutex_unlock(&js->mu);
    int rc = RK_ENOMEM;
    json_t *o = record_json(&v);
    char *s = o ? json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(17)) : NULL;
    json_decref(o);
    if (s) {
        char path[1100];
        tj_job_path(js, v.id, ".json", path, sizeof path);
        struct rk_errbuf e2 = {0};
        rc = rk_file_write_atomic(path, s, strlen(s), eb ? eb : &e2);
        if (rc != RK_OK)
            rk_log(RK_LOG_ERROR, "jobs: %s: cannot write the journal: %s", v.id,
                   (eb ? eb : &e2)->msg);
        free(s);
    }
    pthread_mutex_unlock(&js->jmu);
    return rc;
}

/* Forget step and eval events after step k: a resumed run does them again. */
void tj_drop_events_after(struct rk_tjob *j, long k)
{
    size_t w = 0;
    for (size_t i = 0; i < j->n_ev; i++) {
        bool drop = j->ev[i].type != RK_EV_STATUS;
        if (drop) {
            json_t *e = json_loads(j->ev[i].data, 0, NULL);
            drop = tj_int_of(e, "step") > k;
            json_decref(e);
        }
        if (drop)
            free(j->ev[i].data);
        else
            j->ev[w++] = j->ev[i];
    }
    j->n_ev = w;
}

/* --- start-up: load and recover ----------------------------------------------- */

static int cmp_created(const void *a, const void *b)
{
    const struct rk_tjob *x = *(struct rk_tjob *const *)a, *y = *(struct rk_tjob *const *)b;
    if (x->v.created_ms != y->v.created_ms)
        return x->v.created_ms < y->v.created_ms ? -1 : 1;
    return strcmp(x->v.id, y->v.id);
}

/* Load <id>.events.jsonl; a "resumed" status event drops the step and eval
 * events after its step (they were redone). */
static void load_events(struct rk_tjobs *js, struct rk_tjob *j)
{
    char path[1100];
    tj_job_path(js, j->v.id, ".events.jsonl", path, sizeof path);
    void *buf = NULL;
    size_t len = 0;
    if (rk_file_read_all(path, (size_t)1 << 30, &buf, &len, NULL) != RK_OK)
        return;
    char *p = buf, *end = p + len;
    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        if (!nl)
            break; // a torn last line
        json_t *o = json_loadb(p, (size_t)(nl - p), 0, NULL);
        p = nl + 1;
        const char *type = json_string_value(json_object_get(o, "type"));
        json_t *d = json_object_get(o, "data");
        if (!type || !json_is_object(d)) {
            json_decref(o);
            continue;
        }
        enum rk_tjob_ev_type t = !strcmp(type, "step")       ? RK_EV_STEP
                                 : !strcmp(type, "eval")     ? RK_EV_EVAL
                                 : !strcmp(type, "progress") ? RK_EV_PROGRESS
                                                             : RK_EV_STATUS;
        const char *msg = json_string_value(json_object_get(d, "message"));
        if (t == RK_EV_STATUS && msg && !strncmp(msg, "resumed from", 12))
            tj_drop_events_after(j, (long)tj_int_of(d, "step"));
        tj_ev_push(j, t, tj_int_of(o, "t"), json_dumps(d, JSON_COMPACT | JSON_REAL_PRECISION(9)));
        json_decref(o);
    }
    free(buf);
}

/* Remove the files of jobs that have no record: a crash (or a failed
 * write) between the dataset and the record of a submit leaves the dataset
 * alone, and a submit that was never acknowledged is no job. */
static void remove_orphans(struct rk_tjobs *js)
{
    static const char *const exts[] = {".data.jsonl", ".evaltask.json", ".result.json", ".ckpt",
                                       ".events.jsonl", ".teacher-cache.jsonl",
                                       ".judge-cache.jsonl"};
    DIR *d = opendir(js->dir);
    if (!d)
        return;
    struct dirent *de;
    bool removed = false;
    while ((de = readdir(d))) {
        char id[32];
        if (strlen(de->d_name) < 22)
            continue;
        memcpy(id, de->d_name, 22);
        id[22] = 0;
        if (!tj_id_ok(id, "ftjob-"))
            continue;
        bool ours = false;
        for (size_t k = 0; k < sizeof exts / sizeof exts[0]; k++)
            ours |= !strcmp(de->d_name + 22, exts[k]);
        char rpath[1100], path[1400];
        tj_job_path(js, id, ".json", rpath, sizeof rpath);
        if (!ours || access(rpath, F_OK) == 0 || errno != ENOENT)
            continue;
        snprintf(path, sizeof path, "%s/%s", js->dir, de->d_name);
        if (unlink(path) == 0) {
            removed = true;
            rk_log(RK_LOG_INFO, "jobs: removed %s (a submit that did not complete)", de->d_name);
        }
    }
    closedir(d);
    if (removed)
        rk_dir_fsync(js->dir);
}

int tj_load_jobs(struct rk_tjobs *js)
{
    remove_orphans(js);
    DIR *d = opendir(js->dir);
    if (!d)
        return RK_EIO;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t n = strlen(de->d_name);
        if (n != 22 + 5 || strcmp(de->d_name + 22, ".json"))
            continue;
        char path[1400];
        snprintf(path, sizeof path, "%s/%s", js->dir, de->d_name);
        json_t *o = json_load_file(path, JSON_REJECT_DUPLICATES, NULL);
        struct rk_tjob *j = calloc(1, sizeof *j);
        if (!j) {
            json_decref(o);
            closedir(d);
            return RK_ENOMEM;
        }
        bool ok = o && record_parse(o, &j->v) && !strncmp(de->d_name, j->v.id, 22);
        json_decref(o);
        if (!ok) {
            rk_log(RK_LOG_WARN, "jobs: ignoring unreadable journal record %s", path);
            free((char *)j->v.eval_task_results);
            free(j);
            continue;
        }
        if (tj_table_add(js, j) != RK_OK) {
            free(j);
            closedir(d);
            return RK_ENOMEM;
        }
    }
    closedir(d);
    if (js->n_jobs > 1)
        qsort(js->jobs, js->n_jobs, sizeof *js->jobs, cmp_created);
    // Recover in creation order: unfinished jobs are queued again.
    for (size_t i = 0; i < js->n_jobs; i++) {
        struct rk_tjob *j = js->jobs[i];
        load_events(js, j);
        char path[1100];
        if (tj_is_final(j->v.status)) {
            tj_job_path(js, j->v.id, ".ckpt", path, sizeof path);
            unlink(path); // left over from a crash between the two writes
            if (j->v.eval && j->v.status == RK_TJOB_SUCCEEDED)
                tj_eval_load_result(js, j);
            continue;
        }
        struct pending_ev pe = {0};
        if (j->v.status == RK_TJOB_RUNNING && j->v.eval) {
            // An evaluation keeps no checkpoint: it fails, and says so.
            j->v.status = RK_TJOB_FAILED;
            j->v.finished_ms = tj_wall_ms();
            snprintf(j->v.err_code, sizeof j->v.err_code, "interrupted");
            snprintf(j->v.err_msg, sizeof j->v.err_msg,
                     "the server stopped while this evaluation ran (%zu of %zu items); "
                     "submit it again",
                     j->v.eval_done, j->v.eval_total);
            pe = tj_status_event(j, j->v.err_msg);
            tj_journal_write(js, j, NULL);
            tj_pending_flush(js, j->v.id, &pe);
            rk_log(RK_LOG_INFO, "jobs: %s (an evaluation) was running at the last stop: failed",
                   j->v.id);
            continue;
        }
        if (j->v.status == RK_TJOB_RUNNING) {
            tj_job_path(js, j->v.id, ".ckpt", path, sizeof path);
            bool has_ckpt = access(path, F_OK) == 0;
            if (j->v.attempts >= ATTEMPTS_MAX) {
                j->v.status = RK_TJOB_FAILED;
                j->v.finished_ms = tj_wall_ms();
                snprintf(j->v.err_code, sizeof j->v.err_code, "interrupted");
                snprintf(j->v.err_msg, sizeof j->v.err_msg,
                         "the server stopped %d times while this job ran; giving up",
                         j->v.attempts);
                pe = tj_status_event(j, j->v.err_msg);
                unlink(path);
            } else {
                j->v.status = RK_TJOB_QUEUED;
                pe = tj_status_event(j, has_ckpt ? "the server restarted while this job ran; it "
                                                "resumes from its last checkpoint"
                                              : "the server restarted before the first "
                                                "checkpoint; the job starts again");
            }
            tj_journal_write(js, j, NULL);
            tj_pending_flush(js, j->v.id, &pe);
            rk_log(RK_LOG_INFO, "jobs: %s was running at the last stop: %s", j->v.id,
                   j->v.status == RK_TJOB_FAILED ? "failed" : "queued again");
        }
        if (j->v.status == RK_TJOB_QUEUED)
            tj_enqueue(js, j);
    }
    return RK_OK;
}

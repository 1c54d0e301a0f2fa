/*
 * jobs_worker.c - the worker thread of tuning jobs: runs each job through rk_tune_run,
 * yields to the inference engine, writes checkpoints and publishes the result
 * (see the DESIGN note in jobs.c).
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

/* --- the worker ---------------------------------------------------------------- */

struct run {
    struct rk_tjobs *js;
    struct rk_tjob *j;
    char id[32];
    int64_t t0_us;
    long step0;
    uint64_t tokens0; /* trained tokens before this run */
    char ckpt_path[1100];
    int ckpt_rc;
    struct rk_errbuf ckpt_eb;
};

/* Sleep while the inference engine is busy: it counts a step in
 * srv->metrics.steps whenever it has sequences to run. The worker resumes
 * once the counter has stood still for yield_idle_ms, or twice the last gap
 * between engine steps when that is longer (slow steps of a large model). */
static void yield_to_engine(struct rk_tjobs *js, struct rk_tjob *j)
{
    for (;;) {
        uint64_t s = atomic_load(&js->srv->metrics.steps);
        int64_t now = rk_now_us();
        if (s != js->eng_steps) {
            if (js->eng_change_us)
                js->eng_gap_us = now - js->eng_change_us;
            js->eng_steps = s;
            js->eng_change_us = now;
        }
        int64_t idle = (int64_t)js->lim.yield_idle_ms * 1000;
        if (js->eng_gap_us < 5000000 && 2 * js->eng_gap_us > idle)
            idle = 2 * js->eng_gap_us;
        if (!js->eng_change_us || now - js->eng_change_us >= idle)
            return;
        if (atomic_load(&j->cancel) || atomic_load(&js->stop_flag))
            return;
        usleep(1000);
    }
}

/* True when job j must stop (cancelled, or the server stops); first
 * yields to the engine while it is busy. Worker thread. */
bool tj_cancelled(struct rk_tjobs *js, struct rk_tjob *j)
{
    if (atomic_load(&j->cancel) || atomic_load(&js->stop_flag))
        return true;
    if (js->lim.yield)
        yield_to_engine(js, j);
    return atomic_load(&j->cancel) || atomic_load(&js->stop_flag);
}

static bool on_cancel(void *user)
{
    struct run *r = user;
    return tj_cancelled(r->js, r->j);
}

static void on_progress(const struct rk_tune_progress *p, void *user)
{
    struct run *r = user;
    struct rk_tjobs *js = r->js;
    struct rk_tjob *j = r->j;
    bool eval = !isnan(p->val_loss);
    char data[512];
    int64_t t = tj_wall_ms();
    double elapsed = (double)(rk_now_us() - r->t0_us) / 1e6;
    long done = p->step - r->step0;
    double eta = done > 0 ? elapsed / (double)done * (double)(p->steps - p->step) : NAN;
    if (eval)
        snprintf(data, sizeof data, "{\"step\":%ld,\"steps\":%ld,\"val_loss\":%.9g}", p->step,
                 p->steps, p->val_loss);
    else {
        // "kl" only with collateral protection on (kl_weight > 0)
        char kl[48] = "";
        if (!isnan(p->kl))
            snprintf(kl, sizeof kl, ",\"kl\":%.9g", p->kl);
        snprintf(data, sizeof data,
                 "{\"step\":%ld,\"steps\":%ld,\"loss\":%.9g%s,\"grad_norm\":%.9g,\"lr\":%.9g,"
                 "\"tokens_per_s\":%.1f,\"elapsed_s\":%.3f,\"eta_s\":%.3f}",
                 p->step, p->steps, p->loss, kl, p->grad_norm, p->lr, p->tokens_per_s, elapsed,
                 isfinite(eta) ? eta : 0.0);
    }
    pthread_mutex_lock(&js->mu);
    bool keep = j->v.status == RK_TJOB_RUNNING;
    if (keep) {
        if (eval) {
            j->v.val_loss = p->val_loss;
            if (!(p->val_loss >= j->v.val_loss_best))
                j->v.val_loss_best = p->val_loss;
        } else {
            j->v.step = p->step;
            j->v.loss = p->loss;
            j->v.grad_norm = p->grad_norm;
            j->v.lr_now = p->lr;
            j->v.tokens_per_s = p->tokens_per_s;
            j->v.run_elapsed_s = elapsed;
            j->v.run_steps = done;
            j->v.trained_tokens = r->tokens0 + p->tokens;
        }
        tj_ev_push(j, eval ? RK_EV_EVAL : RK_EV_STEP, t, strdup(data));
    }
    pthread_mutex_unlock(&js->mu);
    if (keep) {
        tj_ev_persist(js, r->id, eval ? RK_EV_EVAL : RK_EV_STEP, t, data);
        tj_wake_loop(js);
    }
}

static int on_checkpoint(const struct rk_tune_checkpoint *ck, void *user)
{
    struct run *r = user;
    int rc = rk_tune_ckpt_save(r->ckpt_path, ck, &r->ckpt_eb);
    if (rc != RK_OK) {
        r->ckpt_rc = rc;
        return rc;
    }
    tj_journal_write(r->js, r->j, NULL);
    return RK_OK;
}

/* Finish a job with a final status (worker); `code`/`msg` for failures. */
void tj_finish(struct rk_tjobs *js, struct rk_tjob *j, enum rk_tjob_status st,
            const char *code, const char *msg)
{
    pthread_mutex_lock(&js->mu);
    struct pending_ev pe = {0};
    if (!tj_is_final(j->v.status)) {
        j->v.status = st;
        j->v.finished_ms = tj_wall_ms();
        if (code) {
            snprintf(j->v.err_code, sizeof j->v.err_code, "%s", code);
            snprintf(j->v.err_msg, sizeof j->v.err_msg, "%s", msg ? msg : "");
        }
        pe = tj_status_event(j, st == RK_TJOB_FAILED      ? j->v.err_msg
                                : st != RK_TJOB_SUCCEEDED ? "cancelled"
                                : j->v.eval               ? "the evaluation is done"
                                                          : "the state is published");
    }
    j->v.loading = false;
    pthread_mutex_unlock(&js->mu);
    tj_journal_write(js, j, NULL);
    tj_pending_flush(js, j->v.id, &pe);
    char path[1100];
    tj_job_path(js, j->v.id, ".ckpt", path, sizeof path);
    unlink(path);
    tj_wake_loop(js);
    rk_log(RK_LOG_INFO, "jobs: %s %s%s%s", j->v.id, rk_tjob_status_name(st), msg ? ": " : "",
           msg ? msg : "");
}

void tj_fail(struct rk_tjobs *js, struct rk_tjob *j, const char *code, const char *fmt, ...)
{
    char msg[200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    // Clients read job errors: no server paths in them (issue 12).
    char full[sizeof msg];
    memcpy(full, msg, sizeof msg);
    if (rk_scrub_paths(msg, sizeof msg, js->data_dir))
        rk_log(RK_LOG_WARN, "jobs: %s: %s", j->v.id, full);
    tj_finish(js, j, RK_TJOB_FAILED, code, msg);
}

static void run_job(struct rk_tjobs *js, struct rk_tjob *j)
{
    struct rk_srv *srv = js->srv;
    const struct rk_model *m = srv->model;
    size_t slen = rk_state_len(m);
    struct run r = {.js = js, .j = j};
    snprintf(r.id, sizeof r.id, "%s", j->v.id);
    tj_job_path(js, r.id, ".ckpt", r.ckpt_path, sizeof r.ckpt_path);
    struct rk_dataset *ds = NULL, *kds = NULL;
    float *init = NULL, *out = NULL, *ckmem = NULL;
    void *data = NULL;
    size_t len = 0;
    struct rk_errbuf eb = {0};
    struct rk_tune_checkpoint ck = {0};
    char path[1100];
    tj_journal_write(js, j, NULL);

    // The dataset as submit parsed it, or (after a restart, or when the
    // queue held too much) re-read from the journal exactly as submitted and
    // parsed again with the same limits.
    pthread_mutex_lock(&js->mu);
    ds = tj_take_dataset(js, j);
    pthread_mutex_unlock(&js->mu);
    int rc = RK_OK;
    bool reparse = !ds;
    tj_job_path(js, r.id, ".data.jsonl", path, sizeof path);
    if (reparse)
        rc = rk_file_read_all(path, js->lim.dataset_bytes_max, &data, &len, &eb);
    if (rc != RK_OK) {
        rk_log(RK_LOG_WARN, "jobs: %s: %s", r.id, eb.msg);
        tj_fail(js, j, "dataset_unreadable", "cannot read the job's dataset from the journal: %s",
             eb.msg[0] ? rk_file_error_reason(eb.msg) : rk_strerror(rc));
        goto out;
    }
    struct rk_jsonl_limits lim = {js->lim.dataset_bytes_max, js->lim.examples_max,
                                  js->lim.seq_tokens_max};
    if (reparse && ((rc = rk_dataset_create(&ds)) != RK_OK ||
                    (rc = rk_jsonl_parse(data, len, srv->tok, &lim, ds, &eb)) != RK_OK)) {
        tj_fail(js, j, "invalid_dataset", "%s", eb.msg[0] ? eb.msg : rk_strerror(rc));
        goto out;
    }
    free(data);
    data = NULL;
    if (rk_dataset_len(ds) == 0) {
        tj_fail(js, j, "invalid_dataset", "the dataset has no training sequences");
        goto out;
    }
    struct rk_tjob_hparams hp;
    pthread_mutex_lock(&js->mu);
    hp = j->v.hp;
    long steps = j->v.steps;
    pthread_mutex_unlock(&js->mu);
    if (hp.init_state[0]) {
        struct rk_state_ref *ref = NULL;
        rc = rk_store_get(srv->store, j->v.tenant, hp.init_state, &ref, &eb);
        if (rc != RK_OK || !(init = malloc(slen * sizeof(float)))) {
            rk_state_ref_release(ref);
            tj_fail(js, j, "init_state_unavailable", "init_state '%s': %s", hp.init_state,
                 eb.msg[0] ? eb.msg : rk_strerror(rc == RK_OK ? RK_ENOMEM : rc));
            goto out;
        }
        memcpy(init, rk_state_ref_data(ref), slen * sizeof(float));
        rk_state_ref_release(ref);
    }
    const struct rk_tune_method *meth = rk_tune_method_find(hp.method);
    if (!meth) {
        tj_fail(js, j, "unknown_method", "the method '%s' is not known to this server", hp.method);
        goto out;
    }
    hp.tune.method = meth;
    size_t plen = rk_tune_params_len(m, &hp.tune);
    rc = rk_tune_ckpt_load(r.ckpt_path, plen, &ck, &ckmem, NULL);
    if (rc != RK_OK && rc != RK_ENOTFOUND) {
        tj_fail(js, j, "checkpoint_unreadable", "the checkpoint %s.ckpt is unreadable (%s)", r.id,
             rk_strerror(rc));
        goto out;
    }
    bool resumed = rc == RK_OK;
    if (resumed && ck.step > steps) {
        tj_fail(js, j, "checkpoint_unreadable", "the checkpoint is at step %ld of %ld", ck.step,
             steps);
        goto out;
    }
    if (!(out = malloc(plen * sizeof(float)))) {
        tj_fail(js, j, "enomem", "out of memory");
        goto out;
    }

    struct rk_tune_params tp = hp.tune;
    tp.method = meth;
    tp.steps = steps;
    tp.n_threads = js->lim.threads ? js->lim.threads : srv->cfg.threads;
    tp.checkpoint_cb = on_checkpoint;
    tp.resume = resumed ? &ck : NULL;
    // Collateral protection: the KL term runs on the bundled generic text.
    if (tp.kl_weight > 0) {
        if ((rc = rk_generic_dataset(srv->tok, &kds)) != RK_OK) {
            tj_fail(js, j, "enomem", "out of memory");
            goto out;
        }
        tp.kl_data = kds;
    }

    r.step0 = resumed ? ck.step : 0;
    r.t0_us = rk_now_us();
    pthread_mutex_lock(&js->mu);
    j->v.loading = false;
    j->v.resumed_from = r.step0;
    j->v.step = r.step0;
    j->v.run_steps = 0;
    j->v.run_elapsed_s = 0;
    r.tokens0 = j->v.trained_tokens;
    char msg[128];
    if (resumed) {
        tj_drop_events_after(j, ck.step);
        snprintf(msg, sizeof msg, "resumed from the checkpoint at step %ld", ck.step);
    }
    else
        snprintf(msg, sizeof msg, "training on %zu examples", j->v.n_examples);
    struct pending_ev pe = tj_status_event(j, msg);
    bool cancelled = atomic_load(&j->cancel);
    pthread_mutex_unlock(&js->mu);
    tj_pending_flush(js, r.id, &pe);
    tj_wake_loop(js);
    if (cancelled) {
        tj_finish(js, j, RK_TJOB_CANCELLED, NULL, NULL);
        goto out;
    }
    rk_log(RK_LOG_INFO, "jobs: %s running (%ld steps%s)", r.id, steps,
           resumed ? ", resumed" : "");

    struct rk_tune_result res;
    rc = rk_tune_run(m, &tp, ds, init, on_cancel, on_progress, &r, out, &res);
    if (rc == RK_ECANCELED || (rc != RK_OK && atomic_load(&j->cancel))) {
        if (atomic_load(&j->cancel)) {
            tj_finish(js, j, RK_TJOB_CANCELLED, NULL, NULL);
        } else {
            // Shutdown: journaled as queued; the next start resumes it.
            pthread_mutex_lock(&js->mu);
            struct pending_ev pe2 = {0};
            if (j->v.status == RK_TJOB_RUNNING) {
                j->v.status = RK_TJOB_QUEUED;
                pe2 = tj_status_event(j, "interrupted by shutdown; resumes from its last "
                                      "checkpoint at the next start");
            }
            pthread_mutex_unlock(&js->mu);
            tj_journal_write(js, j, NULL);
            tj_pending_flush(js, r.id, &pe2);
        }
        goto out;
    }
    if (rc != RK_OK) {
        if (rc == RK_ENUMERIC)
            tj_fail(js, j, "numeric", "NaN or Inf in the loss or gradient at step %ld",
                 res.steps_done + 1);
        else if (r.ckpt_rc) {
            rk_log(RK_LOG_WARN, "jobs: %s: %s", r.id, r.ckpt_eb.msg);
            tj_fail(js, j, "checkpoint_failed", "cannot write a checkpoint: %s",
                 r.ckpt_eb.msg[0] ? rk_file_error_reason(r.ckpt_eb.msg)
                                  : rk_strerror(r.ckpt_rc));
        } else if (rc == RK_ENOMEM)
            tj_fail(js, j, "enomem", "out of memory for the tuning buffers");
        else
            tj_fail(js, j, rk_errname(rc), "tuning failed: %s", rk_strerror(rc));
        goto out;
    }

    if (j->v.has_eval_task && !atomic_load(&j->cancel)) {
        // The served adapter: a kernel state is evaluated with its term.
        float *tuned = NULL;
        struct rk_state_meta tm;
        rk_state_meta_init(&tm, m);
        tm.has_shift = hp.tune.tune_shift;
        if (rk_tune_export(m, &tp, out, &tuned, &tm) == RK_OK) {
            struct rk_kernel_view kv;
            struct rk_readout kro = {0};
            if (tm.kernel_m > 0) {
                rk_kernel_view_of(m, tm.kernel_m, tm.kernel_fade, tuned, &kv);
                kro = (struct rk_readout){&rk_kernel_readout, &kv, NULL};
            }
            tj_eval_tuned(js, j, init, tuned, kro.ops ? &kro : NULL, tp.n_threads);
            free(tuned);
        }
    }

    // Publish: from here on a cancel is too late.
    pthread_mutex_lock(&js->mu);
    cancelled = atomic_load(&j->cancel);
    if (!cancelled)
        j->publishing = true;
    j->v.val_loss_init = resumed ? j->v.val_loss_init : res.val_loss_init;
    j->v.val_loss_best = res.val_loss_best;
    j->v.loss = res.loss_last;
    j->v.step = res.steps_done;
    pthread_mutex_unlock(&js->mu);
    if (cancelled) {
        tj_finish(js, j, RK_TJOB_CANCELLED, NULL, NULL);
        goto out;
    }
    struct rk_state_meta meta;
    rk_state_meta_init(&meta, m);
    snprintf(meta.note, sizeof meta.note, "job %s: steps=%ld loss=%.6g val_loss=%.6g lr=%g",
             r.id, res.steps_done, res.loss_last, res.val_loss_best, hp.tune.lr);
    meta.has_shift = hp.tune.tune_shift;
    struct rk_state_ref *ref = NULL;
    float *adapter = NULL;
    rc = rk_tune_export(m, &hp.tune, out, &adapter, &meta);
    if (rc == RK_OK)
        rc = rk_store_put(srv->store, j->v.tenant, j->v.output_state, adapter, &meta, &ref, &eb);
    free(adapter);
    if (rc != RK_OK) {
        pthread_mutex_lock(&js->mu);
        j->publishing = false;
        pthread_mutex_unlock(&js->mu);
        tj_fail(js, j, "publish_failed", "cannot store the state '%s': %s", j->v.output_state,
             eb.msg[0] ? eb.msg : rk_strerror(rc));
        goto out;
    }
    pthread_mutex_lock(&js->mu);
    j->v.result_version = rk_state_ref_meta(ref)->version;
    j->publishing = false;
    pthread_mutex_unlock(&js->mu);
    rk_state_ref_release(ref);
    tj_finish(js, j, RK_TJOB_SUCCEEDED, NULL, NULL);
out:
    rk_dataset_free(ds);
    rk_dataset_free(kds);
    free(data), free(init), free(out), free(ckmem);
}

void *tj_worker_main(void *arg)
{
    struct rk_tjobs *js = arg;
    // Lower this thread's priority; the compute threads rk_tune_run starts
    // from it inherit the nice value, so when a tuning layer overlaps with an
    // engine step the scheduler favours the engine.
    if (js->lim.nice > 0 &&
        setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), js->lim.nice) != 0)
        rk_log(RK_LOG_WARN, "jobs: cannot lower the worker's priority: %s", strerror(errno));
    for (;;) {
        pthread_mutex_lock(&js->mu);
        while (!js->stopping && !js->q_head)
            pthread_cond_wait(&js->cv, &js->mu);
        if (js->stopping) {
            pthread_mutex_unlock(&js->mu);
            break;
        }
        struct rk_tjob *j = js->q_head;
        js->q_head = j->q_next;
        if (!js->q_head)
            js->q_tail = NULL;
        j->q_next = NULL;
        j->v.status = RK_TJOB_RUNNING;
        j->v.loading = true;
        if (!j->v.started_ms)
            j->v.started_ms = tj_wall_ms();
        j->v.attempts++;
        bool eval = j->v.eval;
        pthread_mutex_unlock(&js->mu);
        if (eval)
            tj_eval_run(js, j);
        else
            run_job(js, j);
    }
    return NULL;
}

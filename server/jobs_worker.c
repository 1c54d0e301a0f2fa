/*
 * jobs_worker.c - the worker thread of tuning jobs: runs each job through rk_tune_run,
 * yields to the inference engine, writes checkpoints and publishes the result
 * (see the DESIGN note in jobs.c).
 */
#include "jobs_int.h"
#include "judge.h"
#include "rl_data.h"
#include "teacher.h"

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
        // "kl" only with collateral protection on (kl_weight > 0), "score"
        // only for the rl method (the mean score of the step's samples)
        char kl[96] = "";
        if (!isnan(p->kl))
            snprintf(kl, sizeof kl, ",\"kl\":%.9g", p->kl);
        else if (!isnan(p->score))
            snprintf(kl, sizeof kl, ",\"score\":%.9g", p->score);
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
    tj_job_path(js, j->v.id, ".teacher-cache.jsonl", path, sizeof path);
    unlink(path);
    tj_job_path(js, j->v.id, ".judge-cache.jsonl", path, sizeof path);
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

/* --- the observer method: ask the teacher, build the data ------------------------ */

/* A progress message as a status event (worker). */
static void status_note(struct rk_tjobs *js, struct rk_tjob *j, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void status_note(struct rk_tjobs *js, struct rk_tjob *j, const char *fmt, ...)
{
    char msg[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&js->mu);
    struct pending_ev pe = j->v.status == RK_TJOB_RUNNING ? tj_status_event(j, msg)
                                                           : (struct pending_ev){0};
    pthread_mutex_unlock(&js->mu);
    tj_pending_flush(js, j->v.id, &pe);
    tj_wake_loop(js);
}

/* The student's id of one teacher token: its text must be exactly one token
 * of the model's tokenizer. UINT32_MAX when it is not. */
static uint32_t one_token(const struct rk_tokenizer *tok, const char *s)
{
    size_t len = strlen(s), got = 0;
    uint32_t id;
    if (!len || rk_tok_encode(tok, s, len, &id, 1, &got) != RK_OK || got != 1)
        return UINT32_MAX;
    return id;
}

/* Append one teacher answer to ds (and its distributions to `tg`): the
 * prompt's tokens unscored, the answer's scored. *skipped is set for an
 * empty answer. RK_EFORMAT with the reason in eb for a wrong vocabulary or
 * malformed logprobs. */
static int add_answer(struct rk_tjobs *js, const char *prompt, const struct rk_teacher_answer *a,
                      int top, const char *end, struct rk_dataset *ds,
                      struct rk_observer_targets *tg, size_t idx, bool *skipped,
                      struct rk_errbuf *eb)
{
    const struct rk_tokenizer *tok = js->srv->tok;
    size_t cap = js->lim.seq_tokens_max, np = 0, na = 0;
    uint32_t *ids = malloc(cap * sizeof *ids);
    uint8_t *mask = calloc(cap, 1);
    uint32_t *tid = NULL;
    double *tlp = NULL;
    int rc = RK_ENOMEM;
    *skipped = false;
    if (!ids || !mask)
        goto out;
    if ((rc = rk_tok_encode(tok, prompt, strlen(prompt), ids, cap, &np)) != RK_OK) {
        rc = rk_errbuf_set(eb, RK_ERANGE, "prompt %zu is longer than the job's token limit", idx + 1);
        goto out;
    }
    if (top > 0) {
        if (!(tid = malloc((a->n_toks ? a->n_toks : 1) * (size_t)top * sizeof *tid)) ||
            !(tlp = malloc((a->n_toks ? a->n_toks : 1) * (size_t)top * sizeof *tlp)))
            goto out;
        for (size_t i = 0; i < a->n_toks && np + na < cap; i++) {
            const struct rk_teacher_tok *t = &a->toks[i];
            uint32_t id = one_token(tok, t->token);
            if (id == UINT32_MAX) {
                rc = rk_errbuf_set(eb, RK_EFORMAT,
                                   "teacher: answer %zu, token %zu (\"%.24s\") is not one token of "
                                   "this model's vocabulary; logprob distillation needs a teacher "
                                   "with the same tokenizer (or top_logprobs 0)", idx + 1, i + 1,
                                   t->token);
                goto out;
            }
            ids[np + na] = id;
            mask[np + na] = 1;
            for (int k = 0; k < top; k++) {
                size_t o = na * (size_t)top + (size_t)k;
                tid[o] = UINT32_MAX;
                tlp[o] = -INFINITY;
                if (k >= t->n_top)
                    continue;
                uint32_t aid = one_token(tok, t->top[k].token);
                if (aid == UINT32_MAX && !strstr(t->top[k].token, "\xef\xbf\xbd")) {
                    rc = rk_errbuf_set(eb, RK_EFORMAT,
                                       "teacher: answer %zu, token %zu: the alternative \"%.24s\" "
                                       "is not one token of this model's vocabulary", idx + 1,
                                       i + 1, t->top[k].token);
                    goto out;
                }
                tid[o] = aid; /* a lossy U+FFFD alternative goes to the rest bin */
                tlp[o] = aid == UINT32_MAX ? -INFINITY : t->top[k].lp;
            }
            na++;
        }
    } else {
        size_t got = 0, tl = strlen(a->text);
        if (!(tid = malloc((tl ? tl : 1) * sizeof *tid)))
            goto out;
        rk_tok_encode(tok, a->text, tl, tid, tl, &got); /* never more ids than bytes */
        na = got < cap - np ? got : cap - np;           /* cut to the job's token limit */
        memcpy(ids + np, tid, na * sizeof *ids);
        memset(mask + np, 1, na);
    }
    if (na == 0 || np == 0) {
        *skipped = true;
        rc = RK_OK;
        goto out;
    }
    // The stop string the answer ended at, learnt by cross-entropy (no teacher
    // distribution there), so that the student learns where an answer ends.
    size_t ne = 0;
    if (end && end[0] && !strcmp(a->finish, "stop") && np + na < cap) {
        size_t el = strlen(end);
        if (rk_tok_encode(tok, end, el, ids + np + na, cap - np - na, &ne) != RK_OK)
            ne = 0; /* it does not fit in the job's token limit: left out */
        memset(mask + np + na, 1, ne);
    }
    size_t seq = rk_dataset_len(ds);
    if ((rc = rk_dataset_add(ds, ids, mask, np + na + ne)) != RK_OK)
        goto out;
    rc = RK_OK;
    if (top > 0 && (rc = rk_observer_targets_set(tg, seq, np - 1, na, top, tid, tlp, eb)) != RK_OK) {
        char why[sizeof eb->msg];
        snprintf(why, sizeof why, "%s", strncmp(eb->msg, "observer: ", 10) ? eb->msg : eb->msg + 10);
        rk_errbuf_set(eb, rc, "teacher: answer %zu: %s", idx + 1, why);
    }
out:
    free(ids), free(mask), free(tid), free(tlp);
    return rc;
}

/* The teacher calls of one observer job, shared by its asker threads. */
#define ASKERS_MAX 16
struct asking {
    struct rk_tjobs *js;
    struct rk_teacher *t;
    struct rk_teacher_cache *cache;
    const struct rk_tjob_teacher *tc;
    char **prompts;
    size_t n;
    struct rk_teacher_answer *answers; /* [n] */
    atomic_size_t next, done;
    atomic_int exited; /* askers that have returned */
    atomic_bool failed;
    int64_t last_note_us;
    pthread_mutex_t mu; /* the first failure: */
    int rc;
    size_t err_idx;
    struct rk_errbuf eb;
};

/* One prompt's teacher call into ak->answers[i]. */
static int ask_one(struct asking *ak, size_t i, struct rk_errbuf *eb)
{
    struct rk_srv *srv = ak->js->srv;
    const struct rk_tjob_teacher *tc = ak->tc;
    struct rk_teacher_msg msgs[2];
    size_t nm = 0;
    char *cprompt = NULL;
    if (tc->chat) {
        if (tc->instruction[0])
            msgs[nm++] = (struct rk_teacher_msg){"system", tc->instruction};
        msgs[nm++] = (struct rk_teacher_msg){"user", ak->prompts[i]};
    } else if (tc->instruction[0]) {
        size_t l1 = strlen(tc->instruction), l2 = strlen(ak->prompts[i]);
        if (!(cprompt = malloc(l1 + l2 + 3)))
            return rk_errbuf_set(eb, RK_ENOMEM, "out of memory");
        memcpy(cprompt, tc->instruction, l1);
        memcpy(cprompt + l1, "\n\n", 2);
        memcpy(cprompt + l1 + 2, ak->prompts[i], l2 + 1);
    }
    const char *stops[RK_TJOB_TEACHER_STOPS_MAX];
    for (int s = 0; s < tc->n_stop; s++)
        stops[s] = tc->stop[s];
    struct rk_teacher_req q = {
        .kind = tc->chat ? RK_TEACHER_CHAT : RK_TEACHER_COMPLETION,
        .stop = stops,
        .n_stop = tc->n_stop,
        .prompt = cprompt ? cprompt : ak->prompts[i],
        .msgs = msgs,
        .n_msgs = nm,
        .max_tokens = tc->max_tokens,
        .temperature = tc->temperature,
        .top_logprobs = tc->top_logprobs > 0 ? tc->top_logprobs : -1,
    };
    int64_t deadline = rk_now_us() + (int64_t)srv->cfg.teacher.timeout_ms * 1000 *
                                         (srv->cfg.teacher.retries + 2);
    int rc = rk_teacher_call(ak->t, &q, ak->cache, deadline, &ak->js->worker_halt,
                             &ak->answers[i], eb);
    free(cprompt);
    if (rc == RK_OK)
        atomic_fetch_add(ak->answers[i].cached ? &srv->teacher_cached : &srv->teacher_calls, 1);
    else if (rc != RK_ECANCELED)
        atomic_fetch_add(&srv->teacher_errors, 1);
    return rc;
}

static void *asker_main(void *arg)
{
    struct asking *ak = arg;
    struct rk_errbuf eb = {0};
    for (;;) {
        size_t i = atomic_fetch_add(&ak->next, 1);
        if (i >= ak->n || atomic_load(&ak->failed))
            break;
        int rc = ask_one(ak, i, &eb);
        if (rc != RK_OK) {
            pthread_mutex_lock(&ak->mu);
            if (!atomic_load(&ak->failed) || (ak->rc == RK_ECANCELED && rc != RK_ECANCELED)) {
                ak->rc = rc;
                ak->err_idx = i;
                ak->eb = eb;
            }
            atomic_store(&ak->failed, true);
            pthread_mutex_unlock(&ak->mu);
            break;
        }
        atomic_fetch_add(&ak->done, 1);
    }
    atomic_fetch_add(&ak->exited, 1);
    return NULL;
}

/* The observer's data: every prompt of the job's dataset with the teacher's
 * answer (from the job's cache file where a previous run asked already).
 * On failure the job is failed here and RK_EINVAL (or the code) returned. */
static int observer_data(struct rk_tjobs *js, struct rk_tjob *j, const char *data, size_t len,
                         const struct rk_tjob_hparams *hp, struct rk_dataset **ds_out,
                         struct rk_observer_targets **tg_out)
{
    struct rk_srv *srv = js->srv;
    const struct rk_tjob_teacher *tc = &hp->teacher;
    struct rk_jsonl_limits lim = {js->lim.dataset_bytes_max, js->lim.examples_max,
                                  js->lim.seq_tokens_max};
    struct rk_errbuf eb = {0};
    char **prompts = NULL;
    size_t n = 0;
    struct rk_teacher *t = NULL;
    struct rk_teacher_cache *cache = NULL;
    struct rk_dataset *ds = NULL;
    struct rk_observer_targets *tg = NULL;
    char path[1100];
    int rc = rk_jsonl_prompts(data, len, srv->tok, &lim, &prompts, &n, NULL, &eb);
    if (rc != RK_OK) {
        tj_fail(js, j, "invalid_dataset", "%s", eb.msg);
        goto out;
    }
    if (srv->teacher && (tc->url[0] || tc->model[0]))
        rc = rk_teacher_derive(srv->teacher, tc->url[0] ? tc->url : NULL,
                               tc->model[0] ? tc->model : NULL, &t, &eb);
    else if (srv->teacher)
        rc = rk_teacher_derive(srv->teacher, NULL, NULL, &t, &eb);
    else if (tc->url[0] && tc->model[0]) {
        struct rk_teacher_config c;
        rk_teacher_config_default(&c);
        c.name = "teacher";
        c.base_url = tc->url;
        c.model = tc->model;
        c.connect_timeout_ms = srv->cfg.teacher.connect_timeout_ms;
        c.timeout_ms = srv->cfg.teacher.timeout_ms;
        c.retries = srv->cfg.teacher.retries;
        c.inflight_max = srv->cfg.teacher.max_inflight;
        c.response_bytes_max = srv->cfg.teacher.response_bytes_max;
        rc = rk_teacher_create(&c, &t, &eb);
    } else
        rc = rk_errbuf_set(&eb, RK_EINVAL, "no teacher is configured on this server");
    if (rc != RK_OK) {
        tj_fail(js, j, "teacher_not_configured", "%s", eb.msg);
        goto out;
    }
    tj_job_path(js, j->v.id, ".teacher-cache.jsonl", path, sizeof path);
    if ((rc = rk_teacher_cache_open(path, n + 16, (size_t)256 << 20, &cache, &eb)) != RK_OK) {
        rk_log(RK_LOG_WARN, "jobs: %s: %s", j->v.id, eb.msg);
        tj_fail(js, j, "teacher_cache_unreadable", "the job's teacher cache is unreadable: %s",
             eb.msg[0] ? rk_file_error_reason(eb.msg) : rk_strerror(rc));
        goto out;
    }
    if ((rc = rk_dataset_create(&ds)) != RK_OK || (rc = rk_observer_targets_create(n, &tg)) != RK_OK) {
        tj_fail(js, j, "enomem", "out of memory");
        goto out;
    }
    size_t skipped = 0;
    // Ask with up to --teacher-max-inflight threads (at most ASKERS_MAX),
    // then build the data in prompt order.
    struct asking ak = {.js = js, .t = t, .cache = cache, .tc = tc, .prompts = prompts, .n = n,
                        .answers = calloc(n, sizeof *ak.answers)};
    int nth = srv->cfg.teacher.max_inflight < ASKERS_MAX ? srv->cfg.teacher.max_inflight
                                                         : ASKERS_MAX;
    if ((size_t)nth > n)
        nth = (int)n;
    pthread_t th[ASKERS_MAX];
    int started = 0;
    pthread_mutex_init(&ak.mu, NULL);
    if (!ak.answers) {
        tj_fail(js, j, "enomem", "out of memory");
        rc = RK_ENOMEM;
        goto asked;
    }
    status_note(js, j, "asking teacher: 0/%zu", n);
    for (; started < nth; started++)
        if (pthread_create(&th[started], NULL, asker_main, &ak) != 0)
            break;
    if (started == 0)
        asker_main(&ak); /* no thread: ask from here */
    while (started > 0 && atomic_load(&ak.exited) < started) {
        usleep(50000);
        size_t d = atomic_load(&ak.done);
        int64_t now = rk_now_us();
        if (now - ak.last_note_us >= 1000000 && d < n) {
            status_note(js, j, "asking teacher: %zu/%zu", d, n);
            ak.last_note_us = now;
        }
    }
    for (int k = 0; k < started; k++)
        pthread_join(th[k], NULL);
    if (ak.rc == RK_ECANCELED) {
        rc = RK_ECANCELED; /* cancelled or shutdown: the caller decides */
        goto asked;
    }
    if (ak.rc != RK_OK) {
        rc = ak.rc;
        tj_fail(js, j, rc == RK_ETIMEOUT ? "teacher_timeout" : "teacher_failed", "prompt %zu: %s",
             ak.err_idx + 1, ak.eb.msg);
        goto asked;
    }
    for (size_t i = 0; i < n; i++) {
        bool skip = false;
        rc = add_answer(js, prompts[i], &ak.answers[i], tc->top_logprobs,
                        tc->n_stop == 1 ? tc->stop[0] : NULL, ds, tg, i, &skip, &eb);
        if (rc != RK_OK) {
            tj_fail(js, j, rc == RK_ENOMEM ? "enomem" : "teacher_failed", "%s",
                 rc == RK_ENOMEM ? "out of memory" : eb.msg);
            goto asked;
        }
        skipped += skip;
    }
asked:
    for (size_t i = 0; ak.answers && i < n; i++)
        rk_teacher_answer_fini(&ak.answers[i]);
    free(ak.answers);
    pthread_mutex_destroy(&ak.mu);
    if (rc != RK_OK)
        goto out;
    if (rk_dataset_len(ds) == 0) {
        tj_fail(js, j, "teacher_failed", "teacher: every answer was empty (%zu prompts)", n);
        rc = RK_EINVAL;
        goto out;
    }
    status_note(js, j, "asking teacher: %zu/%zu (%zu empty answers left out)", n, n, skipped);
    rk_log(RK_LOG_INFO, "jobs: %s: %zu teacher answers (%zu from the cache file), %zu positions "
           "with logprobs", j->v.id, n, rk_teacher_cache_count(cache), rk_observer_targets_positions(tg));
    *ds_out = ds;
    ds = NULL;
    if (tc->top_logprobs > 0) {
        *tg_out = tg;
        tg = NULL;
    }
    rc = RK_OK;
out:
    rk_jsonl_prompts_free(prompts, n);
    rk_teacher_cache_free(cache);
    rk_teacher_free(t);
    rk_dataset_free(ds);
    rk_observer_targets_free(tg);
    return rc;
}

/* Shutdown: the running job is journaled as queued; the next start resumes it. */
static void requeue_on_shutdown(struct rk_tjobs *js, struct rk_tjob *j)
{
    pthread_mutex_lock(&js->mu);
    struct pending_ev pe = {0};
    if (j->v.status == RK_TJOB_RUNNING) {
        j->v.status = RK_TJOB_QUEUED;
        pe = tj_status_event(j, "interrupted by shutdown; resumes from its last "
                             "checkpoint at the next start");
    }
    pthread_mutex_unlock(&js->mu);
    tj_journal_write(js, j, NULL);
    tj_pending_flush(js, j->v.id, &pe);
}

/* --- the rl method: samples scored by checkers or the judge ------------------- */

#define RL_JUDGE_CACHE_MAX 1000000 /* judge answers kept in a job's cache file */

struct rl_scorer {
    struct rk_rl_data *d;
    struct rk_tjobs *js;
    struct rk_tjob *j;
    struct rk_teacher *judge;       /* NULL: checkers only */
    struct rk_teacher_cache *cache; /* DATA/jobs/<id>.judge-cache.jsonl */
    char why[320];                  /* the last judge failure */
};

/* Reserve one judge call of the job's tenant from the judge budget that
 * best_of and ttt use (--judge-calls-per-min, --judge-tokens-per-min),
 * waiting for the tenant's minute to renew while it is spent. RK_OK,
 * RK_ECANCELED (cancelled or the server stops while waiting), RK_ENOMEM. */
static int rl_judge_budget_wait(struct rl_scorer *s)
{
    struct rk_tjobs *js = s->js;
    struct rk_srv *srv = js->srv;
    const long long need[RK_TW_COUNTERS] = {[RK_JUDGE_CALLS] = 1},
                    limit[RK_TW_COUNTERS] = {[RK_JUDGE_CALLS] = srv->cfg.judge_calls_per_min,
                                             [RK_JUDGE_TOKENS] = srv->cfg.judge_tokens_per_min};
    bool told = false;
    for (;;) {
        struct rk_tw_status st;
        int rc = rk_tenant_window_reserve(srv->judge_budget, s->j->v.tenant, need, limit, &st);
        if (rc != RK_EBUSY)
            return rc;
        if (!told) {
            rk_log(RK_LOG_INFO, "jobs: %s: the tenant's judge budget is spent; waiting %d s "
                   "for it to renew", s->j->v.id, st.renew_s);
            told = true;
        }
        int64_t t0 = rk_now_us();
        while (rk_now_us() - t0 < 100000) {
            if (atomic_load(&s->j->cancel) || atomic_load(&js->stop_flag))
                return RK_ECANCELED;
            usleep(20000);
        }
    }
}

/* A checker where the prompt has one, else the judge's log-probability of
 * "Yes" (best_of's scoring, rk_judge_score), its answer cached. */
static int rl_score(void *user, size_t prompt, int k, const uint32_t *tokens, size_t n,
                    double *score)
{
    struct rl_scorer *s = user;
    struct rk_rl_data *d = s->d;
    if (d->answer[prompt] || d->has_re[prompt])
        return rk_rl_check_score(d, prompt, k, tokens, n, score);
    if (!s->judge)
        return RK_EINVAL;
    char *text = malloc(n * 8 + 1);
    if (!text)
        return RK_ENOMEM;
    rk_rl_completion_text(d->tok, tokens, n, text, n * 8 + 1);
    struct rk_srv *srv = s->js->srv;
    int rc = rl_judge_budget_wait(s);
    if (rc != RK_OK) {
        free(text);
        return rc;
    }
    long long jt = 0;
    rc = rk_judge_score(s->judge, false, NULL, d->prompt[prompt], text, strlen(text), s->cache,
                        0, &s->j->cancel, score, &jt, s->why, sizeof s->why);
    atomic_fetch_add(rc != RK_OK ? &srv->rl_judge_errors
                     : jt ? &srv->rl_judge_calls : &srv->rl_judge_cached, 1);
    // An answer from the job's cache costs no call; the tokens are charged
    // as the judge reports them.
    const long long back[RK_TW_COUNTERS] = {[RK_JUDGE_CALLS] = rc == RK_OK && !jt},
                    spent[RK_TW_COUNTERS] = {[RK_JUDGE_TOKENS] = jt};
    rk_tenant_window_refund(srv->judge_budget, s->j->v.tenant, back);
    rk_tenant_window_charge(srv->judge_budget, s->j->v.tenant, spent);
    free(text);
    return rc;
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
    struct rk_observer_targets *targets = NULL;
    struct rl_scorer rl = {.js = js, .j = j};
    float *init = NULL, *init_k = NULL, *out = NULL, *ckmem = NULL;
    void *data = NULL;
    size_t len = 0;
    struct rk_errbuf eb = {0};
    struct rk_tune_checkpoint ck = {0};
    char path[1100];
    tj_journal_write(js, j, NULL);

    // The dataset as submit parsed it, or (after a restart, or when the
    // queue held too much) re-read from the journal exactly as submitted and
    // parsed again with the same limits.
    // The observer and rl methods parse the submitted text themselves: the
    // prompts come from the journal, and submit keeps no dataset for them.
    pthread_mutex_lock(&js->mu);
    ds = tj_take_dataset(js, j);
    struct rk_tjob_hparams hp = j->v.hp;
    long steps = j->v.steps;
    pthread_mutex_unlock(&js->mu);
    const struct rk_tune_method *meth = rk_tune_method_find(hp.method);
    if (meth == &rk_method_observer || meth == &rk_method_rl) {
        rk_dataset_free(ds);
        ds = NULL;
    }
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
    if (meth == &rk_method_observer) {
        rc = observer_data(js, j, data, len, &hp, &ds, &targets);
        if (rc == RK_OK) { // the scored tokens are the teacher's answers: known only now
            pthread_mutex_lock(&js->mu);
            j->v.n_targets = rk_dataset_n_targets(ds);
            pthread_mutex_unlock(&js->mu);
        }
        if (rc == RK_ECANCELED && atomic_load(&j->cancel))
            tj_finish(js, j, RK_TJOB_CANCELLED, NULL, NULL);
        else if (rc == RK_ECANCELED)
            requeue_on_shutdown(js, j);
        if (rc != RK_OK)
            goto out;
    } else if (meth == &rk_method_rl) {
        if ((rc = rk_rl_data_parse(data, len, srv->tok, &lim, hp.tune.rl_max_tokens, &rl.d,
                                   &eb)) != RK_OK) {
            tj_fail(js, j, "invalid_dataset", "%s", eb.msg[0] ? eb.msg : rk_strerror(rc));
            goto out;
        }
        if (rl.d->n_checked < rl.d->n) {
            if (!srv->judge ||
                (rc = rk_teacher_derive(srv->judge, NULL, NULL, &rl.judge, &eb)) != RK_OK) {
                tj_fail(js, j, "judge_not_configured", "prompts without a checker need a "
                        "judge, and %s", srv->judge ? eb.msg : "none is configured");
                goto out;
            }
            tj_job_path(js, r.id, ".judge-cache.jsonl", path, sizeof path);
            if ((rc = rk_teacher_cache_open(path, RL_JUDGE_CACHE_MAX, (size_t)256 << 20,
                                            &rl.cache, &eb)) != RK_OK) {
                tj_fail(js, j, "judge_cache_unreadable", "the job's judge cache is "
                        "unreadable: %s", eb.msg[0] ? rk_file_error_reason(eb.msg)
                                                    : rk_strerror(rc));
                goto out;
            }
        }
    } else if (reparse && ((rc = rk_dataset_create(&ds)) != RK_OK ||
                           (rc = rk_jsonl_parse(data, len, srv->tok, &lim, ds, &eb)) != RK_OK)) {
        tj_fail(js, j, "invalid_dataset", "%s", eb.msg[0] ? eb.msg : rk_strerror(rc));
        goto out;
    }
    free(data);
    data = NULL;
    if (!rl.d && rk_dataset_len(ds) == 0) {
        tj_fail(js, j, "invalid_dataset", "the dataset has no training sequences");
        goto out;
    }
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
        // A kernel state as the start of a kernel or dbp job: its P,
        // features and phases too, so tuning goes on where it ended.
        const struct rk_state_meta *im = rk_state_ref_meta(ref);
        if ((meth == &rk_method_kernel || meth == &rk_method_dbp) && im->kernel_m > 0) {
            if (im->kernel_m != hp.tune.kernel_m || im->kernel_fade != hp.tune.kernel_fade) {
                tj_fail(js, j, "init_state_mismatch", "init_state '%s' is a kernel state with "
                        "kernel_m %d and kernel_fade %s; this job asks for kernel_m %d and "
                        "kernel_fade %s (give the state's, or start from a plain state)",
                        hp.init_state, im->kernel_m, im->kernel_fade ? "none" : "mean",
                        hp.tune.kernel_m, hp.tune.kernel_fade ? "none" : "mean");
                rk_state_ref_release(ref);
                goto out;
            }
            size_t alen = rk_adapter_len(m, im);
            if (!(init_k = malloc(alen * sizeof(float)))) {
                rk_state_ref_release(ref);
                tj_fail(js, j, "enomem", "out of memory");
                goto out;
            }
            memcpy(init_k, rk_state_ref_data(ref), alen * sizeof(float));
        }
        rk_state_ref_release(ref);
    }
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
    tp.method_data = targets;
    tp.init_kernel = init_k ? init_k + slen : NULL; // the kernel part
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
    if (rl.d) {
        struct rk_rl_prompts pr;
        rk_rl_data_prompts(rl.d, &pr);
        struct rk_rl_io io = {.score = rl_score, .score_user = &rl, .cancel = on_cancel,
                              .user = &r, .stop = rl.d->stop, .n_stop = rl.d->n_stop,
                              .stop_at_zero = !rk_tok_is_bytes(srv->tok)};
        rc = rk_rl_run(m, &tp, &pr, init, &io, on_progress, out, &res);
        if (rl.cache)
            rk_log(RK_LOG_INFO, "jobs: %s: %zu judge answers in the cache", r.id,
                   rk_teacher_cache_count(rl.cache));
    } else {
        rc = rk_tune_run(m, &tp, ds, init, on_cancel, on_progress, &r, out, &res);
    }
    if (rc == RK_ECANCELED || (rc != RK_OK && atomic_load(&j->cancel))) {
        if (atomic_load(&j->cancel)) {
            tj_finish(js, j, RK_TJOB_CANCELLED, NULL, NULL);
        } else {
            requeue_on_shutdown(js, j);
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
        else if (rl.d && rl.why[0])
            tj_fail(js, j, "judge_failed", "scoring a sample: %s", rl.why);
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
            // the start: a kernel init_state (the whole adapter in init_k)
            // with its term too
            struct rk_kernel_view iv;
            struct rk_readout iro = {0};
            if (init_k) {
                rk_kernel_view_of(m, hp.tune.kernel_m, hp.tune.kernel_fade, init_k, &iv);
                iro = (struct rk_readout){&rk_kernel_readout, &iv, NULL};
            }
            tj_eval_tuned(js, j, init, iro.ops ? &iro : NULL, tuned, kro.ops ? &kro : NULL,
                          tp.n_threads);
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
    rk_observer_targets_free(targets);
    rk_dataset_free(kds);
    rk_rl_data_free(rl.d);
    rk_teacher_cache_free(rl.cache);
    rk_teacher_free(rl.judge);
    free(data), free(init), free(init_k), free(out), free(ckmem);
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
        atomic_store(&js->worker_halt, atomic_load(&js->stop_flag));
        bool eval = j->v.eval;
        pthread_mutex_unlock(&js->mu);
        if (eval)
            tj_eval_run(js, j);
        else
            run_job(js, j);
    }
    return NULL;
}

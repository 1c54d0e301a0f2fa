/*
 * jobs.c - state-tuning jobs: the job table (struct rk_tjobs), its FIFO
 * queue, limits, and start-up and shutdown. One worker thread runs jobs in
 * order through rk_tune_run (the code path of `rwkvd tune`). The module's
 * other files: jobs_worker.c (the worker), jobs_events.c (event log and the
 * loop-side wake-ups), jobs_journal.c (journal records and recovery),
 * jobs_files.c (uploaded training files), jobs_int.h (what they share);
 * tjob_hparams.c turns a job's hyperparameters into JSON and back.
 * Checkpoints are adapters/checkpoint.c's RKTCKPT1 files.
 *
 * DESIGN. Threads: the loop thread (handlers in api_*.c, the uv handles
 * of jobs_events.c) and one worker thread. One mutex `mu` guards the job table, the
 * queue, every job's fields and event log, and the file table. Unlike the
 * generation jobs (struct rk_job, handed from owner to owner), a tuning job
 * is shared: handlers read its progress while the worker writes it, so the
 * fields live under `mu` and handlers copy them out (struct rk_tjob_view).
 * What the worker computes with (dataset, state, Adam moments) is private
 * to the worker and never shared. Jobs are never freed before rk_tjobs_free,
 * so pointers to them stay valid for the whole run.
 *
 * Queue: submit appends under `mu` and signals `cv`; the worker pops the
 * head, marks it running and runs it. Cancel of a queued job unlinks it;
 * cancel of a running job sets j->cancel, which the cancel callback of
 * rk_tune_run sees between layers of the backward pass (so it stops within
 * one step). The same callback yields: while the inference engine has done
 * a step within the last `yield_idle_ms` (its step counter in srv->metrics
 * moved), the worker sleeps in 1 ms slices. The counter lives in srv, which
 * outlives the worker, so the worker never touches the engine itself (the
 * engine is freed inside rk_srv_run, before rk_tjobs_stop runs).
 *
 * Journal (DATA/jobs): <id>.json is the job record, rewritten atomically
 * (temp, fsync, rename, fsync dir) at submit, start, every checkpoint and
 * every status change; <id>.data.jsonl is the dataset as submitted;
 * <id>.ckpt the last checkpoint (step, state, Adam moments, best state, in
 * the format of `rwkvd tune --checkpoint`), also atomic; <id>.events.jsonl
 * an append-only event log (a torn last line is ignored on load). Writes of
 * one job's files are serialised by `jmu`, and the record is snapshotted
 * under `mu` after `jmu` is taken, so the newest record always lands last.
 * At start-up a job found "running" is queued again at its place and
 * resumes from its checkpoint (bit-identical to an uninterrupted run with
 * the same thread count), or from step 0 when none was written; after three
 * interrupted attempts, or with an unreadable checkpoint or dataset, it is
 * failed with the reason. No job stays "running" across a restart.
 *
 * Submits: rk_tjobs_submit runs on libuv's thread pool (api_jobs.c), any
 * number at once; it writes without holding `mu` and enters the job in the
 * table, re-checking the tenant's active-job limit under `mu`, only once
 * both files are durable. On any failure it removes what it wrote, record
 * first. A dataset without a record (a crash between the writes) is
 * removed at start-up.
 *
 * Datasets: a job's dataset is tokenised once, at submit (on the pool),
 * and the parsed rk_dataset travels with the queued job (j->ds under `mu`)
 * to the worker, which takes it when the job starts. Why this and not a
 * token file beside the JSONL: the JSONL is already the durable form, and
 * the tokens are a function of it and of the tokenizer the server runs
 * with, which may differ after a restart (another model), so a token file
 * would need its own hostile-input format, a tokenizer fingerprint and up
 * to four times the bytes fsynced at submit, for a saving only after a
 * restart. Instead, after a restart the worker parses the JSONL again (as
 * before), and in memory the queue holds at most HELD_BYTES_MAX of parsed
 * datasets; a job beyond that is parsed again when it starts.
 *
 * Wake-ups: SSE followers (api_jobs.c) wait with their connection
 * suspended. The worker calls uv_async_send (guarded by `amu` and
 * `async_live`), and the loop-side callback calls every follower, which
 * resumes its connection. The uv handles can only be created once the loop
 * exists, so the first jobs handler creates them (rk_tjobs_attach_loop); a
 * uv_check handle closes them as soon as the server starts draining, which
 * also interrupts the running job.
 *
 * Evaluation jobs (POST /eval/jobs) are jobs of the same table, queue and
 * worker with v.eval set: <id>.data.jsonl holds the request, the worker
 * runs them in jobs_eval.c, and their result goes to <id>.result.json.
 *
 * Shutdown order: drain starts -> handles closed, worker told to stop ->
 * rk_srv_run returns -> rk_tjobs_stop joins the worker (the running job is
 * journaled as queued, resumable from its checkpoint) -> rk_tjobs_free.
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

/* --- small helpers ---------------------------------------------------------- */

int64_t tj_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *status_names[] = {"queued", "running", "succeeded", "failed", "cancelled"};

const char *rk_tjob_status_name(enum rk_tjob_status s)
{
    return (unsigned)s < 5 ? status_names[s] : "unknown";
}

bool rk_tjob_status_parse(const char *s, enum rk_tjob_status *out)
{
    for (int i = 0; i < 5; i++)
        if (s && !strcmp(s, status_names[i])) {
            *out = (enum rk_tjob_status)i;
            return true;
        }
    return false;
}

bool tj_is_final(enum rk_tjob_status s)
{
    return s == RK_TJOB_SUCCEEDED || s == RK_TJOB_FAILED || s == RK_TJOB_CANCELLED;
}

const char *rk_tjob_ev_name(enum rk_tjob_ev_type t)
{
    return t == RK_EV_STEP ? "step" : t == RK_EV_EVAL ? "eval"
                                    : t == RK_EV_PROGRESS ? "progress" : "status";
}

void tj_random_id(const char *prefix, char *out, size_t cap)
{
    uint64_t x = 0;
    if (getrandom(&x, sizeof x, 0) != (ssize_t)sizeof x) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        x = (uint64_t)ts.tv_nsec * 0x9e3779b97f4a7c15ull ^ (uint64_t)getpid() << 32 ^
            (uint64_t)ts.tv_sec;
    }
    snprintf(out, cap, "%s%016" PRIx64, prefix, x);
}

/* Ids we issue: prefix + 16 lowercase hex digits. */
bool tj_id_ok(const char *id, const char *prefix)
{
    size_t pl = strlen(prefix);
    if (!id || strncmp(id, prefix, pl) || strlen(id) != pl + 16)
        return false;
    for (const char *p = id + pl; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return false;
    return true;
}

void tj_job_path(const struct rk_tjobs *js, const char *id, const char *ext, char *out,
              size_t cap)
{
    snprintf(out, cap, "%s/%s%s", js->dir, id, ext);
}

/* --- limits ----------------------------------------------------------------- */

void rk_tjobs_limits_default(struct rk_tjobs_limits *l)
{
    memset(l, 0, sizeof *l);
    l->dataset_bytes_max = (size_t)64 << 20;
    l->examples_max = 100000;
    l->seq_tokens_max = 4096;
    l->steps_max = 100000;
    l->batch_max = 256;
    l->active_per_tenant_max = 4;
    l->files_per_tenant_max = 100;
    l->checkpoint_every = 10;
    l->threads = 0;
    l->yield = true;
    l->yield_idle_ms = 50;
    l->nice = 19;
}

/* The tuning-job settings, read from the environment only. */
static const struct job_env_var {
    const char *name;
    long long lo, hi;
    int kind; /* 0 size_t, 1 long, 2 int, 3 bool */
    size_t off;
} vars[] = {
    {"RWKVD_JOB_MAX_DATASET_BYTES", 1024, 1ll << 34, 0,
     offsetof(struct rk_tjobs_limits, dataset_bytes_max)},
    {"RWKVD_JOB_MAX_EXAMPLES", 1, 100000000, 0, offsetof(struct rk_tjobs_limits, examples_max)},
    {"RWKVD_JOB_MAX_SEQ_TOKENS", 2, 1 << 24, 0,
     offsetof(struct rk_tjobs_limits, seq_tokens_max)},
    {"RWKVD_JOB_MAX_STEPS", 1, 100000000, 1, offsetof(struct rk_tjobs_limits, steps_max)},
    {"RWKVD_JOB_MAX_BATCH", 1, 65536, 2, offsetof(struct rk_tjobs_limits, batch_max)},
    {"RWKVD_JOB_MAX_ACTIVE", 1, 1 << 20, 2,
     offsetof(struct rk_tjobs_limits, active_per_tenant_max)},
    {"RWKVD_JOB_MAX_FILES", 1, 1 << 20, 2,
     offsetof(struct rk_tjobs_limits, files_per_tenant_max)},
    {"RWKVD_JOB_CHECKPOINT_EVERY", 0, 100000000, 1,
     offsetof(struct rk_tjobs_limits, checkpoint_every)},
    {"RWKVD_JOB_THREADS", 0, 1024, 2, offsetof(struct rk_tjobs_limits, threads)},
    {"RWKVD_JOB_YIELD", 0, 1, 3, offsetof(struct rk_tjobs_limits, yield)},
    {"RWKVD_JOB_YIELD_IDLE_MS", 1, 60000, 2, offsetof(struct rk_tjobs_limits, yield_idle_ms)},
    {"RWKVD_JOB_NICE", 0, 19, 2, offsetof(struct rk_tjobs_limits, nice)},
};

/* "job-max-steps" for RWKVD_JOB_MAX_STEPS */
static void flag_of(const char *env, char *out, size_t cap)
{
    size_t i = 0;
    for (const char *p = env + 6; *p && i + 1 < cap; p++)
        out[i++] = *p == '_' ? '-' : (char)(*p >= 'A' && *p <= 'Z' ? *p - 'A' + 'a' : *p);
    out[i] = 0;
}

int rk_tjobs_limits_from_env(struct rk_tjobs_limits *l, char *err, size_t cap)
{
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *s = getenv(vars[i].name);
        if (!s || !*s)
            continue;
        char *end;
        errno = 0;
        long long x = strtoll(s, &end, 10);
        if (errno || *end || end == s || x < vars[i].lo || x > vars[i].hi) {
            char flag[64];
            flag_of(vars[i].name, flag, sizeof flag);
            snprintf(err, cap, "%s=%s (--%s): expected an integer in [%lld, %lld]", vars[i].name,
                     s, flag, vars[i].lo, vars[i].hi);
            return -1;
        }
        char *p = (char *)l + vars[i].off;
        switch (vars[i].kind) {
        case 0: *(size_t *)p = (size_t)x; break;
        case 1: *(long *)p = (long)x; break;
        case 2: *(int *)p = (int)x; break;
        default: *(bool *)p = x != 0; break;
        }
    }
    return 0;
}

const char *rk_tjobs_flag_env(const char *flag, size_t len)
{
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        char f[64];
        flag_of(vars[i].name, f, sizeof f);
        if (strlen(f) == len && !strncmp(f, flag, len))
            return vars[i].name;
    }
    return NULL;
}

void rk_tjobs_env_help(FILE *f)
{
    struct rk_tjobs_limits d;
    rk_tjobs_limits_default(&d);
    fprintf(f, "\nTuning jobs (docs/JOBS.md), each by flag or environment variable:\n");
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        const char *p = (const char *)&d + vars[i].off;
        long long v = vars[i].kind == 0   ? (long long)*(const size_t *)p
                      : vars[i].kind == 1 ? (long long)*(const long *)p
                      : vars[i].kind == 2 ? (long long)*(const int *)p
                                          : (long long)*(const bool *)p;
        char flag[64];
        flag_of(vars[i].name, flag, sizeof flag);
        fprintf(f, "  --%-26s default %lld, range %lld..%lld\n  %28s (env %s)\n", flag, v,
                vars[i].lo, vars[i].hi, "", vars[i].name);
    }
}

const struct rk_tjobs_limits *rk_tjobs_limits(const struct rk_tjobs *js) { return &js->lim; }

/* --- table access (loop thread) ------------------------------------------------ */

static struct rk_tjob *find(struct rk_tjobs *js, const char *tenant, const char *id)
{
    if (!tj_id_ok(id, "ftjob-"))
        return NULL;
    for (size_t i = 0; i < js->n_jobs; i++)
        if (!strcmp(js->jobs[i]->v.id, id))
            return strcmp(js->jobs[i]->v.tenant, tenant) ? NULL : js->jobs[i];
    return NULL;
}

static void view_of(struct rk_tjobs *js, struct rk_tjob *j, struct rk_tjob_view *v)
{
    *v = j->v;
    v->cancel_requested = atomic_load(&j->cancel);
    v->queue_pos = -1;
    if (j->v.status == RK_TJOB_QUEUED) {
        int k = 0;
        for (struct rk_tjob *q = js->q_head; q; q = q->q_next, k++)
            if (q == j) {
                v->queue_pos = k;
                break;
            }
    }
}

int tj_table_add(struct rk_tjobs *js, struct rk_tjob *j)
{
    if (js->n_jobs == js->cap_jobs) {
        size_t nc = js->cap_jobs ? js->cap_jobs * 2 : 64;
        void *p = realloc(js->jobs, nc * sizeof *js->jobs);
        if (!p)
            return RK_ENOMEM;
        js->jobs = p;
        js->cap_jobs = nc;
    }
    js->jobs[js->n_jobs++] = j;
    return RK_OK;
}

void tj_enqueue(struct rk_tjobs *js, struct rk_tjob *j)
{
    j->q_next = NULL;
    if (js->q_tail)
        js->q_tail->q_next = j;
    else
        js->q_head = j;
    js->q_tail = j;
    pthread_cond_signal(&js->cv);
}

/* Queued jobs that hold their parsed dataset hold at most this much of it
 * together (docs/JOBS.md); a job beyond it holds none, and the worker parses
 * its JSONL again. */
#define HELD_BYTES_MAX ((size_t)512 << 20)

/* What a parsed dataset costs in memory: a token id and a mask byte per
 * token, plus a sequence record per example. */
static size_t dataset_bytes(const struct rk_tjob_new *nj)
{
    return nj->n_tokens * (sizeof(uint32_t) + 1) + nj->n_examples * 64;
}

struct rk_dataset *tj_take_dataset(struct rk_tjobs *js, struct rk_tjob *j)
{
    struct rk_dataset *ds = j->ds;
    js->held_bytes -= j->ds_bytes;
    j->ds = NULL;
    j->ds_bytes = 0;
    return ds;
}

static int active_of(struct rk_tjobs *js, const char *tenant)
{
    int active = 0;
    for (size_t i = 0; i < js->n_jobs; i++)
        active += !strcmp(js->jobs[i]->v.tenant, tenant) && !tj_is_final(js->jobs[i]->v.status);
    return active;
}

static int busy_error(struct rk_errbuf *eb, int active)
{
    return rk_errbuf_set(eb, RK_EBUSY,
                         "this tenant already has %d queued or running jobs (the limit); "
                         "wait for one to finish or cancel one",
                         active);
}

int rk_tjobs_submit(struct rk_tjobs *js, const struct rk_tjob_new *nj, struct rk_tjob_view *view,
                   struct rk_errbuf *eb)
{
    struct rk_tjob *j = calloc(1, sizeof *j);
    if (!j) {
        rk_dataset_free(nj->ds);
        return RK_ENOMEM;
    }
    struct rk_tjob_view *v = &j->v;
    tj_random_id("ftjob-", v->id, sizeof v->id);
    snprintf(v->tenant, sizeof v->tenant, "%s", nj->tenant);
    snprintf(v->output_state, sizeof v->output_state, "%s", nj->output_state);
    snprintf(v->training_file, sizeof v->training_file, "%s",
             nj->training_file ? nj->training_file : "");
    snprintf(v->suffix, sizeof v->suffix, "%s", nj->suffix ? nj->suffix : "");
    v->openai = nj->openai;
    v->status = RK_TJOB_QUEUED;
    v->created_ms = tj_wall_ms();
    if (nj->hp)
        v->hp = *nj->hp;
    else
        rk_tjob_hparams_default(&v->hp, 0);
    v->eval = nj->eval;
    v->has_eval_task = nj->eval_task != NULL;
    v->eval_total = nj->eval ? nj->n_examples : 0;
    v->steps = nj->eval ? 0 : v->hp.tune.steps;
    v->n_examples = nj->n_examples;
    v->n_tokens = nj->n_tokens;
    v->n_targets = nj->n_targets;
    v->loss = v->val_loss = v->val_loss_init = v->val_loss_best = v->grad_norm = v->lr_now =
        v->tokens_per_s = NAN;
    v->queue_pos = -1;

    // A quick check before the writes; the binding one is below, under the
    // same lock as the insertion (submits run in parallel on the pool).
    pthread_mutex_lock(&js->mu);
    int active = active_of(js, nj->tenant);
    pthread_mutex_unlock(&js->mu);
    if (active >= js->lim.active_per_tenant_max) {
        free(j);
        rk_dataset_free(nj->ds);
        return busy_error(eb, active);
    }
    // The dataset first, then the record: a record on disk always has its
    // data, and a dataset without a record (a crash in between) is removed
    // at the next start (tj_load_jobs). The job enters the table only when
    // both are durable.
    char path[1100], rpath[1100];
    tj_job_path(js, v->id, ".data.jsonl", path, sizeof path);
    tj_job_path(js, v->id, ".json", rpath, sizeof rpath);
    int rc = rk_file_write_atomic(path, nj->data, nj->len, eb);
    char tpath[1100];
    tj_job_path(js, v->id, ".evaltask.json", tpath, sizeof tpath);
    if (rc == RK_OK && nj->eval_task)
        rc = rk_file_write_atomic(tpath, nj->eval_task, strlen(nj->eval_task), eb);
    if (rc == RK_OK)
        rc = tj_journal_write(js, j, eb);
    pthread_mutex_lock(&js->mu);
    if (rc == RK_OK && (active = active_of(js, nj->tenant)) >= js->lim.active_per_tenant_max)
        rc = busy_error(eb, active);
    if (rc == RK_OK)
        rc = tj_table_add(js, j);
    if (rc != RK_OK) {
        pthread_mutex_unlock(&js->mu);
        unlink(rpath); // the record first: a dataset alone is no job
        unlink(path);
        unlink(tpath);
        rk_dir_fsync(js->dir);
        free(j);
        rk_dataset_free(nj->ds);
        return rc;
    }
    size_t bytes = dataset_bytes(nj);
    if (nj->ds && bytes <= HELD_BYTES_MAX - js->held_bytes) {
        j->ds = nj->ds;
        j->ds_bytes = bytes;
        js->held_bytes += bytes;
    } else {
        rk_dataset_free(nj->ds);
    }
    char msg[96];
    if (v->eval)
        snprintf(msg, sizeof msg, "queued: an evaluation of %zu items", v->n_examples);
    else
        snprintf(msg, sizeof msg, "queued: %zu examples, %ld steps", v->n_examples, v->steps);
    struct pending_ev pe = tj_status_event(j, msg);
    tj_enqueue(js, j);
    if (view)
        view_of(js, j, view);
    pthread_mutex_unlock(&js->mu);
    tj_pending_flush(js, v->id, &pe);
    rk_log(RK_LOG_INFO, "jobs: %s queued for tenant %s -> state %s (%ld steps)", v->id,
           v->tenant, v->output_state, v->steps);
    return RK_OK;
}

int rk_tjobs_get(struct rk_tjobs *js, const char *tenant, const char *id, struct rk_tjob_view *view)
{
    pthread_mutex_lock(&js->mu);
    struct rk_tjob *j = find(js, tenant, id);
    if (j)
        view_of(js, j, view);
    pthread_mutex_unlock(&js->mu);
    return j ? RK_OK : RK_ENOTFOUND;
}

int rk_tjobs_list(struct rk_tjobs *js, const char *tenant, bool openai_only,
                 struct rk_tjob_view **out, size_t *n)
{
    pthread_mutex_lock(&js->mu);
    size_t k = 0;
    struct rk_tjob_view *arr = malloc((js->n_jobs ? js->n_jobs : 1) * sizeof *arr);
    if (!arr) {
        pthread_mutex_unlock(&js->mu);
        return RK_ENOMEM;
    }
    for (size_t i = js->n_jobs; i-- > 0;) {
        struct rk_tjob *j = js->jobs[i];
        if (strcmp(j->v.tenant, tenant) || (openai_only && !j->v.openai))
            continue;
        view_of(js, j, &arr[k++]);
    }
    pthread_mutex_unlock(&js->mu);
    *out = arr;
    *n = k;
    return RK_OK;
}

int rk_tjobs_cancel(struct rk_tjobs *js, const char *tenant, const char *id,
                   struct rk_tjob_view *view)
{
    pthread_mutex_lock(&js->mu);
    struct rk_tjob *j = find(js, tenant, id);
    if (!j) {
        pthread_mutex_unlock(&js->mu);
        return RK_ENOTFOUND;
    }
    struct pending_ev pe = {0};
    bool changed = false;
    if (j->v.status == RK_TJOB_QUEUED) {
        for (struct rk_tjob **pp = &js->q_head; *pp; pp = &(*pp)->q_next)
            if (*pp == j) {
                *pp = j->q_next;
                break;
            }
        js->q_tail = NULL;
        for (struct rk_tjob *q = js->q_head; q; q = q->q_next)
            js->q_tail = q;
        j->q_next = NULL;
        rk_dataset_free(tj_take_dataset(js, j));
        changed = true;
    } else if (j->v.status == RK_TJOB_RUNNING && !j->publishing) {
        changed = true; // the worker stops at its next cancel check
        atomic_store(&js->worker_halt, true); // and a teacher call within 100 ms
    }
    if (changed) {
        atomic_store(&j->cancel, true);
        j->v.status = RK_TJOB_CANCELLED;
        j->v.finished_ms = tj_wall_ms();
        pe = tj_status_event(j, "cancelled by request");
    }
    view_of(js, j, view);
    pthread_mutex_unlock(&js->mu);
    if (changed) {
        tj_journal_write(js, j, NULL);
        tj_pending_flush(js, view->id, &pe);
        tj_wake_loop(js);
        rk_log(RK_LOG_INFO, "jobs: %s cancelled", view->id);
    }
    return RK_OK;
}

int rk_tjobs_events(struct rk_tjobs *js, const char *tenant, const char *id, size_t from,
                   size_t max, struct rk_tjob_ev **out, size_t *n, size_t *total, bool *ended)
{
    *out = NULL;
    *n = 0;
    pthread_mutex_lock(&js->mu);
    struct rk_tjob *j = find(js, tenant, id);
    if (!j) {
        pthread_mutex_unlock(&js->mu);
        return RK_ENOTFOUND;
    }
    *total = j->n_ev;
    // A final status ends the stream once the worker no longer writes
    // (a cancelled running job may still be finishing its last layer, but
    // it records nothing more).
    *ended = tj_is_final(j->v.status);
    size_t k = from < j->n_ev ? j->n_ev - from : 0;
    if (k > max)
        k = max;
    int rc = RK_OK;
    if (k) {
        struct rk_tjob_ev *ev = calloc(k, sizeof *ev);
        if (!ev) {
            rc = RK_ENOMEM;
        } else {
            for (size_t i = 0; i < k; i++) {
                ev[i] = j->ev[from + i];
                ev[i].data = strdup(j->ev[from + i].data);
            }
            *out = ev;
            *n = k;
        }
    }
    pthread_mutex_unlock(&js->mu);
    return rc;
}

int rk_tjobs_start(struct rk_srv *srv, const struct rk_tjobs_limits *lim, struct rk_tjobs **out,
                  struct rk_errbuf *eb)
{
    *out = NULL;
    struct rk_tjobs *js = calloc(1, sizeof *js);
    if (!js)
        return RK_ENOMEM;
    js->srv = srv;
    if (lim)
        js->lim = *lim;
    else
        rk_tjobs_limits_default(&js->lim);
    if (strlen(srv->cfg.data_dir) > 400) {
        rk_errbuf_set(eb, RK_EINVAL, "the data directory path is too long for the job journal");
        free(js);
        return RK_EINVAL;
    }
    snprintf(js->data_dir, sizeof js->data_dir, "%s", srv->cfg.data_dir);
    snprintf(js->dir, sizeof js->dir, "%s/jobs", srv->cfg.data_dir);
    pthread_mutex_init(&js->mu, NULL);
    pthread_mutex_init(&js->jmu, NULL);
    pthread_mutex_init(&js->amu, NULL);
    pthread_cond_init(&js->cv, NULL);
    js->eng_steps = atomic_load(&srv->metrics.steps);
    if (rk_mkdirs(js->dir, NULL) != RK_OK) {
        rk_errbuf_set(eb, RK_EIO, "cannot create %s: %s", js->dir, strerror(errno));
        rk_tjobs_free(js);
        return RK_EIO;
    }
    // Temp files of writes that a crash interrupted (RELIABILITY.md 8): the
    // journal here, uploaded files per tenant; the store cleans its states.
    rk_file_clean_temps(js->dir);
    {
        char tdir[1100];
        snprintf(tdir, sizeof tdir, "%s/tenants", js->data_dir);
        rk_file_clean_temps_each(tdir, "files");
    }
    int rc = tj_load_jobs(js);
    if (rc != RK_OK) {
        rk_errbuf_set(eb, rc, "cannot read the job journal in %s", js->dir);
        rk_tjobs_free(js);
        return rc;
    }
    tj_load_files(js);
    /* counted before the worker starts taking jobs off the queue */
    size_t queued = 0;
    for (struct rk_tjob *q = js->q_head; q; q = q->q_next)
        queued++;
    if (pthread_create(&js->th, NULL, tj_worker_main, js) != 0) {
        rk_errbuf_set(eb, RK_ENOMEM, "cannot start the tuning worker thread");
        rk_tjobs_free(js);
        return RK_ENOMEM;
    }
    js->started = true;
    rk_log(RK_LOG_INFO, "jobs: %zu job(s) in the journal, %zu queued, %zu file(s)", js->n_jobs,
           queued, js->n_files);
    *out = js;
    return RK_OK;
}

void rk_tjobs_stop(struct rk_tjobs *js)
{
    if (!js)
        return;
    pthread_mutex_lock(&js->amu);
    js->async_live = false;
    pthread_mutex_unlock(&js->amu);
    pthread_mutex_lock(&js->mu);
    js->stopping = true;
    atomic_store(&js->stop_flag, true);
    atomic_store(&js->worker_halt, true);
    pthread_cond_broadcast(&js->cv);
    pthread_mutex_unlock(&js->mu);
    if (js->started && !js->joined) {
        pthread_join(js->th, NULL);
        js->joined = true;
    }
}

void rk_tjobs_free(struct rk_tjobs *js)
{
    if (!js)
        return;
    rk_tjobs_stop(js);
    for (size_t i = 0; i < js->n_jobs; i++) {
        rk_tjob_evs_free(js->jobs[i]->ev, js->jobs[i]->n_ev);
        free((char *)js->jobs[i]->v.eval_result);
        free((char *)js->jobs[i]->v.eval_task_results);
        rk_dataset_free(js->jobs[i]->ds);
        free(js->jobs[i]);
    }
    free(js->jobs);
    free(js->files);
    struct rk_tjobs_follower *f = js->followers;
    while (f) {
        struct rk_tjobs_follower *n = f->next;
        free(f);
        f = n;
    }
    pthread_mutex_destroy(&js->mu);
    pthread_mutex_destroy(&js->jmu);
    pthread_mutex_destroy(&js->amu);
    pthread_cond_destroy(&js->cv);
    free(js);
}

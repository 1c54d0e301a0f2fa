/*
 * jobs.c - state-tuning jobs: job table, FIFO queue, one worker thread that
 * runs jobs in order through rk_tune_run (the code path of `rwkvd tune`),
 * the journal in the data directory, and uploaded training files.
 *
 * DESIGN. Threads: the loop thread (handlers in api_jobs.c, the uv handles
 * below) and one worker thread. One mutex `mu` guards the job table, the
 * queue, every job's fields and event log, and the file table. Unlike the
 * generation jobs (struct rk_job, handed from owner to owner), a tuning job
 * is shared: handlers read its progress while the worker writes it, so the
 * fields live under `mu` and handlers copy them out (struct rk_tjob_view).
 * What the worker computes with (dataset, state, Adam moments) is private
 * to the worker and never shared. Jobs are never freed before rk_jobs_free,
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
 * engine is freed inside rk_srv_run, before rk_jobs_stop runs).
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
 * Wake-ups: SSE followers (api_jobs.c) wait with their connection
 * suspended. The worker calls uv_async_send (guarded by `amu` and
 * `async_live`), and the loop-side callback calls every follower, which
 * resumes its connection. The uv handles can only be created once the loop
 * exists, so the first jobs handler creates them (rk_jobs_attach_loop); a
 * uv_check handle closes them as soon as the server starts draining, which
 * also interrupts the running job.
 *
 * Shutdown order: drain starts -> handles closed, worker told to stop ->
 * rk_srv_run returns -> rk_jobs_stop joins the worker (the running job is
 * journaled as queued, resumable from its checkpoint) -> rk_jobs_free.
 */
#include "jobs.h"
#include "dataset_jsonl.h"

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

#define ATTEMPTS_MAX 3

struct rk_tjob {
    struct rk_tjob_view v;
    struct rk_tjob_ev *ev; /* event log */
    size_t n_ev, cap_ev;
    atomic_bool cancel;
    bool publishing; /* the worker is storing the result: too late to cancel */
    struct rk_tjob *q_next;
};

struct rk_jobs_follower {
    void (*fn)(void *user, bool keepalive);
    void *user;
    struct rk_jobs_follower *next;
};

struct rk_jobs {
    struct rk_srv *srv;
    struct rk_jobs_limits lim;
    char dir[512];      /* DATA/jobs */
    char data_dir[512]; /* DATA */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct rk_tjob **jobs; /* mu; creation order */
    size_t n_jobs, cap_jobs;
    struct rk_tjob *q_head, *q_tail; /* mu */
    bool stopping;                   /* mu */
    atomic_bool stop_flag;           /* read by the worker's cancel callback */
    pthread_t th;
    bool started, joined;
    pthread_mutex_t jmu; /* journal writes */
    struct rk_tfile *files; /* mu */
    size_t n_files, cap_files;
    /* worker only: engine activity tracking for yielding */
    uint64_t eng_steps;
    int64_t eng_change_us, eng_gap_us;
    /* loop side */
    pthread_mutex_t amu;
    bool async_live; /* amu */
    bool attached, loop_closed;
    uv_async_t async;
    uv_timer_t keepalive;
    uv_check_t check;
    struct rk_jobs_follower *followers; /* loop thread only */
};

/* --- small helpers ---------------------------------------------------------- */

static int64_t wall_ms(void)
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

static bool is_final(enum rk_tjob_status s)
{
    return s == RK_TJOB_SUCCEEDED || s == RK_TJOB_FAILED || s == RK_TJOB_CANCELLED;
}

const char *rk_tjob_ev_name(enum rk_tjob_ev_type t)
{
    return t == RK_EV_STEP ? "step" : t == RK_EV_EVAL ? "eval" : "status";
}

static void random_id(const char *prefix, char *out, size_t cap)
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
static bool id_ok(const char *id, const char *prefix)
{
    size_t pl = strlen(prefix);
    if (!id || strncmp(id, prefix, pl) || strlen(id) != pl + 16)
        return false;
    for (const char *p = id + pl; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return false;
    return true;
}

static void job_path(const struct rk_jobs *js, const char *id, const char *ext, char *out,
                     size_t cap)
{
    snprintf(out, cap, "%s/%s%s", js->dir, id, ext);
}

/* --- limits ----------------------------------------------------------------- */

void rk_jobs_limits_default(struct rk_jobs_limits *l)
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
     offsetof(struct rk_jobs_limits, dataset_bytes_max)},
    {"RWKVD_JOB_MAX_EXAMPLES", 1, 100000000, 0, offsetof(struct rk_jobs_limits, examples_max)},
    {"RWKVD_JOB_MAX_SEQ_TOKENS", 2, 1 << 24, 0,
     offsetof(struct rk_jobs_limits, seq_tokens_max)},
    {"RWKVD_JOB_MAX_STEPS", 1, 100000000, 1, offsetof(struct rk_jobs_limits, steps_max)},
    {"RWKVD_JOB_MAX_BATCH", 1, 65536, 2, offsetof(struct rk_jobs_limits, batch_max)},
    {"RWKVD_JOB_MAX_ACTIVE", 1, 1 << 20, 2,
     offsetof(struct rk_jobs_limits, active_per_tenant_max)},
    {"RWKVD_JOB_MAX_FILES", 1, 1 << 20, 2,
     offsetof(struct rk_jobs_limits, files_per_tenant_max)},
    {"RWKVD_JOB_CHECKPOINT_EVERY", 0, 100000000, 1,
     offsetof(struct rk_jobs_limits, checkpoint_every)},
    {"RWKVD_JOB_THREADS", 0, 1024, 2, offsetof(struct rk_jobs_limits, threads)},
    {"RWKVD_JOB_YIELD", 0, 1, 3, offsetof(struct rk_jobs_limits, yield)},
    {"RWKVD_JOB_YIELD_IDLE_MS", 1, 60000, 2, offsetof(struct rk_jobs_limits, yield_idle_ms)},
    {"RWKVD_JOB_NICE", 0, 19, 2, offsetof(struct rk_jobs_limits, nice)},
};

/* "job-max-steps" for RWKVD_JOB_MAX_STEPS */
static void flag_of(const char *env, char *out, size_t cap)
{
    size_t i = 0;
    for (const char *p = env + 6; *p && i + 1 < cap; p++)
        out[i++] = *p == '_' ? '-' : (char)(*p >= 'A' && *p <= 'Z' ? *p - 'A' + 'a' : *p);
    out[i] = 0;
}

int rk_jobs_limits_from_env(struct rk_jobs_limits *l, char *err, size_t cap)
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

const char *rk_jobs_flag_env(const char *flag, size_t len)
{
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) {
        char f[64];
        flag_of(vars[i].name, f, sizeof f);
        if (strlen(f) == len && !strncmp(f, flag, len))
            return vars[i].name;
    }
    return NULL;
}

void rk_jobs_env_help(FILE *f)
{
    struct rk_jobs_limits d;
    rk_jobs_limits_default(&d);
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

const struct rk_jobs_limits *rk_jobs_limits(const struct rk_jobs *js) { return &js->lim; }

/* --- events ------------------------------------------------------------------ */

/* Append an event to j's log (caller holds mu); takes `data`. */
static void ev_push(struct rk_tjob *j, enum rk_tjob_ev_type type, int64_t t_ms, char *data)
{
    if (!data)
        return;
    if (j->n_ev == j->cap_ev) {
        size_t nc = j->cap_ev ? j->cap_ev * 2 : 64;
        void *p = realloc(j->ev, nc * sizeof *j->ev);
        if (!p) {
            free(data);
            return;
        }
        j->ev = p;
        j->cap_ev = nc;
    }
    j->ev[j->n_ev++] = (struct rk_tjob_ev){type, t_ms, data};
}

/* Append one event line to the job's event file (no fsync: the log is
 * informative; the record and checkpoint carry what recovery needs). */
static void ev_persist(struct rk_jobs *js, const char *id, enum rk_tjob_ev_type type,
                       int64_t t_ms, const char *data)
{
    char path[1100];
    job_path(js, id, ".events.jsonl", path, sizeof path);
    pthread_mutex_lock(&js->jmu);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd >= 0) {
        char *line = NULL;
        int n = asprintf(&line, "{\"t\":%" PRId64 ",\"type\":\"%s\",\"data\":%s}\n", t_ms,
                         rk_tjob_ev_name(type), data);
        if (n > 0 && write(fd, line, (size_t)n) != n)
            rk_log(RK_LOG_WARN, "jobs: %s: cannot append an event", id);
        free(line);
        close(fd);
    }
    pthread_mutex_unlock(&js->jmu);
}

static void wake_loop(struct rk_jobs *js)
{
    pthread_mutex_lock(&js->amu);
    if (js->async_live)
        uv_async_send(&js->async);
    pthread_mutex_unlock(&js->amu);
}

/* A status event: {"status":..,"message":..[,"step":..]} (caller holds mu);
 * returns a copy of the data for ev_persist (caller frees). */
static char *ev_status(struct rk_tjob *j, const char *msg, int64_t t_ms)
{
    json_t *o = json_pack("{s:s,s:s}", "status", rk_tjob_status_name(j->v.status), "message",
                          msg ? msg : "");
    if (!o)
        return NULL;
    if (j->v.step > 0 || j->v.status == RK_TJOB_RUNNING)
        json_object_set_new(o, "step", json_integer(j->v.step));
    json_object_set_new(o, "steps", json_integer(j->v.steps));
    if (j->v.status == RK_TJOB_SUCCEEDED) {
        json_object_set_new(o, "state", json_string(j->v.output_state));
        json_object_set_new(o, "version", json_integer((json_int_t)j->v.result_version));
    }
    if (j->v.status == RK_TJOB_FAILED && j->v.err_code[0]) {
        json_object_set_new(o, "error_code", json_string(j->v.err_code));
        json_object_set_new(o, "error", json_string(j->v.err_msg));
    }
    char *s = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9));
    json_decref(o);
    if (!s)
        return NULL;
    char *copy = strdup(s);
    ev_push(j, RK_EV_STATUS, t_ms, s);
    return copy;
}

/* Record a status event: in memory (caller holds mu) and, after the caller
 * unlocks, on disk via the returned pending write. */
struct pending_ev {
    char *data;
    int64_t t_ms;
};

static struct pending_ev status_event(struct rk_tjob *j, const char *msg)
{
    int64_t t = wall_ms();
    return (struct pending_ev){ev_status(j, msg, t), t};
}

static void pending_flush(struct rk_jobs *js, const char *id, struct pending_ev *p)
{
    if (p->data)
        ev_persist(js, id, RK_EV_STATUS, p->t_ms, p->data);
    free(p->data);
    p->data = NULL;
}

void rk_tjob_evs_free(struct rk_tjob_ev *ev, size_t n)
{
    for (size_t i = 0; ev && i < n; i++)
        free(ev[i].data);
    free(ev);
}

/* --- journal: job records --------------------------------------------------- */

static json_t *num_or_null(double x) { return isfinite(x) ? json_real(x) : json_null(); }

static double num_of(json_t *o, const char *k)
{
    json_t *x = json_object_get(o, k);
    return json_is_number(x) ? json_number_value(x) : NAN;
}

static long long int_of(json_t *o, const char *k)
{
    json_t *x = json_object_get(o, k);
    return json_is_integer(x) ? json_integer_value(x) : json_is_real(x) ? (long long)json_real_value(x) : 0;
}

static void str_of(json_t *o, const char *k, char *out, size_t cap)
{
    const char *s = json_string_value(json_object_get(o, k));
    snprintf(out, cap, "%s", s ? s : "");
}

static json_t *record_json(const struct rk_tjob_view *v)
{
    const struct rk_tjob_hparams *h = &v->hp;
    json_t *hp = json_pack(
        "{s:I,s:o,s:f,s:f,s:I,s:i,s:I,s:f,s:I,s:i,s:b,s:I,s:f,s:s}", "steps", (json_int_t)h->steps,
        "epochs", num_or_null(h->epochs), "lr", h->lr, "lr_final", h->lr_final, "warmup",
        (json_int_t)h->warmup, "batch", h->batch, "seed", (json_int_t)h->seed, "val_split",
        h->val_split, "eval_every", (json_int_t)h->eval_every, "patience", h->patience,
        "tune_shift", h->tune_shift, "checkpoint_every", (json_int_t)h->checkpoint_every,
        "lr_multiplier", h->lr_multiplier, "init_state", h->init_state);
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
    return o;
}

static bool record_parse(json_t *o, struct rk_tjob_view *v)
{
    memset(v, 0, sizeof *v);
    if (int_of(o, "format") != 1)
        return false;
    str_of(o, "id", v->id, sizeof v->id);
    str_of(o, "tenant", v->tenant, sizeof v->tenant);
    str_of(o, "output_state", v->output_state, sizeof v->output_state);
    str_of(o, "training_file", v->training_file, sizeof v->training_file);
    str_of(o, "suffix", v->suffix, sizeof v->suffix);
    v->openai = json_is_true(json_object_get(o, "openai"));
    if (!rk_tjob_status_parse(json_string_value(json_object_get(o, "status")), &v->status))
        return false;
    v->created_ms = int_of(o, "created_ms");
    v->started_ms = int_of(o, "started_ms");
    v->finished_ms = int_of(o, "finished_ms");
    json_t *hp = json_object_get(o, "hyperparameters");
    if (!json_is_object(hp))
        return false;
    struct rk_tjob_hparams *h = &v->hp;
    h->steps = (long)int_of(hp, "steps");
    h->epochs = num_of(hp, "epochs");
    h->lr = num_of(hp, "lr");
    h->lr_final = num_of(hp, "lr_final");
    h->warmup = (long)int_of(hp, "warmup");
    h->batch = (int)int_of(hp, "batch");
    h->seed = (uint64_t)int_of(hp, "seed");
    h->val_split = num_of(hp, "val_split");
    h->eval_every = (long)int_of(hp, "eval_every");
    h->patience = (int)int_of(hp, "patience");
    h->tune_shift = json_is_true(json_object_get(hp, "tune_shift"));
    h->checkpoint_every = (long)int_of(hp, "checkpoint_every");
    h->lr_multiplier = num_of(hp, "lr_multiplier");
    str_of(hp, "init_state", h->init_state, sizeof h->init_state);
    v->n_examples = (size_t)int_of(o, "n_examples");
    v->n_tokens = (size_t)int_of(o, "n_tokens");
    v->n_targets = (size_t)int_of(o, "n_targets");
    v->step = (long)int_of(o, "step");
    v->steps = (long)int_of(o, "steps");
    v->resumed_from = (long)int_of(o, "resumed_from");
    v->attempts = (int)int_of(o, "attempts");
    v->loss = num_of(o, "loss");
    v->val_loss = num_of(o, "val_loss");
    v->val_loss_init = num_of(o, "val_loss_init");
    v->val_loss_best = num_of(o, "val_loss_best");
    v->tokens_per_s = num_of(o, "tokens_per_s");
    v->grad_norm = v->lr_now = NAN;
    v->trained_tokens = (uint64_t)int_of(o, "trained_tokens");
    v->result_version = (uint64_t)int_of(o, "result_version");
    str_of(o, "error_code", v->err_code, sizeof v->err_code);
    str_of(o, "error", v->err_msg, sizeof v->err_msg);
    v->queue_pos = -1;
    return id_ok(v->id, "ftjob-") && rk_state_id_valid(v->tenant) && h->steps >= 1 &&
           h->batch >= 1;
}

/* Write the job's record atomically (any thread; takes jmu, then mu). */
static int journal_write(struct rk_jobs *js, struct rk_tjob *j, struct rk_errbuf *eb)
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
        job_path(js, v.id, ".json", path, sizeof path);
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
static void drop_events_after(struct rk_tjob *j, long k)
{
    size_t w = 0;
    for (size_t i = 0; i < j->n_ev; i++) {
        bool drop = j->ev[i].type != RK_EV_STATUS;
        if (drop) {
            json_t *e = json_loads(j->ev[i].data, 0, NULL);
            drop = int_of(e, "step") > k;
            json_decref(e);
        }
        if (drop)
            free(j->ev[i].data);
        else
            j->ev[w++] = j->ev[i];
    }
    j->n_ev = w;
}

/* --- checkpoints ------------------------------------------------------------ */

/* "RKTCKPT1", u64 step, u64 len, f64 best_val, i64 bad_evals, f32 state, m, v,
 * best [len] each: the `rwkvd tune --checkpoint` format. */
static int ckpt_write(const char *path, const struct rk_tune_checkpoint *ck, struct rk_errbuf *eb)
{
    size_t n = ck->len, len = 40 + 4 * sizeof(float) * n;
    unsigned char *buf = malloc(len), *p = buf;
    if (!buf)
        return RK_ENOMEM;
    uint64_t step = (uint64_t)ck->step, un = n;
    int64_t bad = ck->bad_evals;
    memcpy(p, "RKTCKPT1", 8), p += 8;
    memcpy(p, &step, 8), p += 8;
    memcpy(p, &un, 8), p += 8;
    memcpy(p, &ck->best_val, 8), p += 8;
    memcpy(p, &bad, 8), p += 8;
    const float *parts[4] = {ck->state, ck->m, ck->v, ck->best};
    for (int i = 0; i < 4; i++)
        memcpy(p, parts[i], sizeof(float) * n), p += sizeof(float) * n;
    int rc = rk_file_write_atomic(path, buf, len, eb);
    free(buf);
    return rc;
}

/* RK_ENOTFOUND when absent, RK_EFORMAT when unreadable. *mem holds the
 * arrays the checkpoint points into. */
static int ckpt_read(const char *path, size_t slen, struct rk_tune_checkpoint *ck, float **mem)
{
    void *buf = NULL;
    size_t len = 0;
    struct rk_errbuf eb = {0};
    int rc = rk_file_read_all(path, 40 + 4 * sizeof(float) * slen, &buf, &len, &eb);
    if (rc == RK_ENOTFOUND)
        return rc;
    if (rc != RK_OK)
        return rc == RK_ENOMEM ? rc : RK_EFORMAT;
    const unsigned char *p = buf;
    uint64_t step, n;
    int64_t bad;
    rc = RK_EFORMAT;
    if (len < 40 || memcmp(p, "RKTCKPT1", 8) != 0)
        goto out;
    memcpy(&step, p + 8, 8);
    memcpy(&n, p + 16, 8);
    memcpy(&ck->best_val, p + 24, 8);
    memcpy(&bad, p + 32, 8);
    if (n != slen || len != 40 + 4 * sizeof(float) * n || step > (uint64_t)1 << 40)
        goto out;
    if (!(*mem = malloc(4 * sizeof(float) * n))) {
        rc = RK_ENOMEM;
        goto out;
    }
    memcpy(*mem, p + 40, 4 * sizeof(float) * n);
    ck->step = (long)step;
    ck->len = n;
    ck->bad_evals = (int)bad;
    ck->state = *mem;
    ck->m = *mem + n;
    ck->v = *mem + 2 * n;
    ck->best = *mem + 3 * n;
    rc = RK_OK;
out:
    free(buf);
    return rc;
}

/* --- the worker ---------------------------------------------------------------- */

struct run {
    struct rk_jobs *js;
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
static void yield_to_engine(struct rk_jobs *js, struct rk_tjob *j)
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

static bool on_cancel(void *user)
{
    struct run *r = user;
    struct rk_jobs *js = r->js;
    if (atomic_load(&r->j->cancel) || atomic_load(&js->stop_flag))
        return true;
    if (js->lim.yield)
        yield_to_engine(js, r->j);
    return atomic_load(&r->j->cancel) || atomic_load(&js->stop_flag);
}

static void on_progress(const struct rk_tune_progress *p, void *user)
{
    struct run *r = user;
    struct rk_jobs *js = r->js;
    struct rk_tjob *j = r->j;
    bool eval = !isnan(p->val_loss);
    char data[512];
    int64_t t = wall_ms();
    double elapsed = (double)(rk_now_us() - r->t0_us) / 1e6;
    long done = p->step - r->step0;
    double eta = done > 0 ? elapsed / (double)done * (double)(p->steps - p->step) : NAN;
    if (eval)
        snprintf(data, sizeof data, "{\"step\":%ld,\"steps\":%ld,\"val_loss\":%.9g}", p->step,
                 p->steps, p->val_loss);
    else
        snprintf(data, sizeof data,
                 "{\"step\":%ld,\"steps\":%ld,\"loss\":%.9g,\"grad_norm\":%.9g,\"lr\":%.9g,"
                 "\"tokens_per_s\":%.1f,\"elapsed_s\":%.3f,\"eta_s\":%.3f}",
                 p->step, p->steps, p->loss, p->grad_norm, p->lr, p->tokens_per_s, elapsed,
                 isfinite(eta) ? eta : 0.0);
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
        ev_push(j, eval ? RK_EV_EVAL : RK_EV_STEP, t, strdup(data));
    }
    pthread_mutex_unlock(&js->mu);
    if (keep) {
        ev_persist(js, r->id, eval ? RK_EV_EVAL : RK_EV_STEP, t, data);
        wake_loop(js);
    }
}

static int on_checkpoint(const struct rk_tune_checkpoint *ck, void *user)
{
    struct run *r = user;
    int rc = ckpt_write(r->ckpt_path, ck, &r->ckpt_eb);
    if (rc != RK_OK) {
        r->ckpt_rc = rc;
        return rc;
    }
    journal_write(r->js, r->j, NULL);
    return RK_OK;
}

/* Finish a job with a final status (worker); `code`/`msg` for failures. */
static void finish(struct rk_jobs *js, struct rk_tjob *j, enum rk_tjob_status st,
                   const char *code, const char *msg)
{
    pthread_mutex_lock(&js->mu);
    struct pending_ev pe = {0};
    if (!is_final(j->v.status)) {
        j->v.status = st;
        j->v.finished_ms = wall_ms();
        if (code) {
            snprintf(j->v.err_code, sizeof j->v.err_code, "%s", code);
            snprintf(j->v.err_msg, sizeof j->v.err_msg, "%s", msg ? msg : "");
        }
        pe = status_event(j, st == RK_TJOB_FAILED ? j->v.err_msg
                             : st == RK_TJOB_SUCCEEDED ? "the state is published"
                                                       : "cancelled");
    }
    j->v.loading = false;
    pthread_mutex_unlock(&js->mu);
    journal_write(js, j, NULL);
    pending_flush(js, j->v.id, &pe);
    char path[1100];
    job_path(js, j->v.id, ".ckpt", path, sizeof path);
    unlink(path);
    wake_loop(js);
    rk_log(RK_LOG_INFO, "jobs: %s %s%s%s", j->v.id, rk_tjob_status_name(st), msg ? ": " : "",
           msg ? msg : "");
}

static void fail(struct rk_jobs *js, struct rk_tjob *j, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static void fail(struct rk_jobs *js, struct rk_tjob *j, const char *code, const char *fmt, ...)
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
    finish(js, j, RK_TJOB_FAILED, code, msg);
}

static void run_job(struct rk_jobs *js, struct rk_tjob *j)
{
    struct rk_srv *srv = js->srv;
    const struct rk_model *m = srv->model;
    size_t slen = rk_state_len(m);
    struct run r = {.js = js, .j = j};
    snprintf(r.id, sizeof r.id, "%s", j->v.id);
    job_path(js, r.id, ".ckpt", r.ckpt_path, sizeof r.ckpt_path);
    struct rk_dataset *ds = NULL;
    float *init = NULL, *out = NULL, *ckmem = NULL;
    void *data = NULL;
    size_t len = 0;
    struct rk_errbuf eb = {0};
    struct rk_tune_checkpoint ck = {0};
    char path[1100];
    journal_write(js, j, NULL);

    // The dataset, re-read from the journal exactly as submitted.
    job_path(js, r.id, ".data.jsonl", path, sizeof path);
    int rc = rk_file_read_all(path, js->lim.dataset_bytes_max, &data, &len, &eb);
    if (rc != RK_OK) {
        rk_log(RK_LOG_WARN, "jobs: %s: %s", r.id, eb.msg);
        fail(js, j, "dataset_unreadable", "cannot read the job's dataset from the journal: %s",
             eb.msg[0] ? rk_file_error_reason(eb.msg) : rk_strerror(rc));
        goto out;
    }
    struct rk_jsonl_limits lim = {js->lim.dataset_bytes_max, js->lim.examples_max,
                                  js->lim.seq_tokens_max};
    if ((rc = rk_dataset_create(&ds)) != RK_OK ||
        (rc = rk_jsonl_parse(data, len, srv->tok, &lim, ds, &eb)) != RK_OK) {
        fail(js, j, "invalid_dataset", "%s", eb.msg[0] ? eb.msg : rk_strerror(rc));
        goto out;
    }
    free(data);
    data = NULL;
    if (rk_dataset_len(ds) == 0) {
        fail(js, j, "invalid_dataset", "the dataset has no training sequences");
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
            fail(js, j, "init_state_unavailable", "init_state '%s': %s", hp.init_state,
                 eb.msg[0] ? eb.msg : rk_strerror(rc == RK_OK ? RK_ENOMEM : rc));
            goto out;
        }
        memcpy(init, rk_state_ref_data(ref), slen * sizeof(float));
        rk_state_ref_release(ref);
    }
    rc = ckpt_read(r.ckpt_path, slen, &ck, &ckmem);
    if (rc != RK_OK && rc != RK_ENOTFOUND) {
        fail(js, j, "checkpoint_unreadable", "the checkpoint %s.ckpt is unreadable (%s)", r.id,
             rk_strerror(rc));
        goto out;
    }
    bool resumed = rc == RK_OK;
    if (resumed && ck.step > steps) {
        fail(js, j, "checkpoint_unreadable", "the checkpoint is at step %ld of %ld", ck.step,
             steps);
        goto out;
    }
    if (!(out = malloc(slen * sizeof(float)))) {
        fail(js, j, "enomem", "out of memory");
        goto out;
    }

    struct rk_tune_params tp;
    rk_tune_params_default(&tp);
    tp.steps = steps;
    tp.batch = hp.batch;
    tp.lr = hp.lr;
    tp.lr_final = hp.lr_final;
    tp.warmup = hp.warmup;
    tp.seed = hp.seed;
    tp.val_split = hp.val_split;
    tp.eval_every = hp.eval_every;
    tp.patience = hp.patience;
    tp.tune_shift = hp.tune_shift;
    tp.n_threads = js->lim.threads ? js->lim.threads : srv->cfg.threads;
    tp.checkpoint_every = hp.checkpoint_every;
    tp.checkpoint_cb = on_checkpoint;
    tp.resume = resumed ? &ck : NULL;

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
        drop_events_after(j, ck.step);
        snprintf(msg, sizeof msg, "resumed from the checkpoint at step %ld", ck.step);
    }
    else
        snprintf(msg, sizeof msg, "training on %zu examples", j->v.n_examples);
    struct pending_ev pe = status_event(j, msg);
    bool cancelled = atomic_load(&j->cancel);
    pthread_mutex_unlock(&js->mu);
    pending_flush(js, r.id, &pe);
    wake_loop(js);
    if (cancelled) {
        finish(js, j, RK_TJOB_CANCELLED, NULL, NULL);
        goto out;
    }
    rk_log(RK_LOG_INFO, "jobs: %s running (%ld steps%s)", r.id, steps,
           resumed ? ", resumed" : "");

    struct rk_tune_result res;
    rc = rk_tune_run(m, &tp, ds, init, on_cancel, on_progress, &r, out, &res);
    if (rc == RK_ECANCELED || (rc != RK_OK && atomic_load(&j->cancel))) {
        if (atomic_load(&j->cancel)) {
            finish(js, j, RK_TJOB_CANCELLED, NULL, NULL);
        } else {
            // Shutdown: journaled as queued; the next start resumes it.
            pthread_mutex_lock(&js->mu);
            struct pending_ev pe2 = {0};
            if (j->v.status == RK_TJOB_RUNNING) {
                j->v.status = RK_TJOB_QUEUED;
                pe2 = status_event(j, "interrupted by shutdown; resumes from its last "
                                      "checkpoint at the next start");
            }
            pthread_mutex_unlock(&js->mu);
            journal_write(js, j, NULL);
            pending_flush(js, r.id, &pe2);
        }
        goto out;
    }
    if (rc != RK_OK) {
        if (rc == RK_ENUMERIC)
            fail(js, j, "numeric", "NaN or Inf in the loss or gradient at step %ld",
                 res.steps_done + 1);
        else if (r.ckpt_rc) {
            rk_log(RK_LOG_WARN, "jobs: %s: %s", r.id, r.ckpt_eb.msg);
            fail(js, j, "checkpoint_failed", "cannot write a checkpoint: %s",
                 r.ckpt_eb.msg[0] ? rk_file_error_reason(r.ckpt_eb.msg)
                                  : rk_strerror(r.ckpt_rc));
        } else if (rc == RK_ENOMEM)
            fail(js, j, "enomem", "out of memory for the tuning buffers");
        else
            fail(js, j, rk_errname(rc), "tuning failed: %s", rk_strerror(rc));
        goto out;
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
        finish(js, j, RK_TJOB_CANCELLED, NULL, NULL);
        goto out;
    }
    struct rk_state_meta meta;
    rk_state_meta_init(&meta, m);
    snprintf(meta.method, sizeof meta.method, "standard");
    snprintf(meta.note, sizeof meta.note, "job %s: steps=%ld loss=%.6g val_loss=%.6g lr=%g",
             r.id, res.steps_done, res.loss_last, res.val_loss_best, hp.lr);
    meta.has_shift = hp.tune_shift;
    struct rk_state_ref *ref = NULL;
    rc = rk_store_put(srv->store, j->v.tenant, j->v.output_state, out, &meta, &ref, &eb);
    if (rc != RK_OK) {
        pthread_mutex_lock(&js->mu);
        j->publishing = false;
        pthread_mutex_unlock(&js->mu);
        fail(js, j, "publish_failed", "cannot store the state '%s': %s", j->v.output_state,
             eb.msg[0] ? eb.msg : rk_strerror(rc));
        goto out;
    }
    pthread_mutex_lock(&js->mu);
    j->v.result_version = rk_state_ref_meta(ref)->version;
    j->publishing = false;
    pthread_mutex_unlock(&js->mu);
    rk_state_ref_release(ref);
    finish(js, j, RK_TJOB_SUCCEEDED, NULL, NULL);
out:
    rk_dataset_free(ds);
    free(data), free(init), free(out), free(ckmem);
}

static void *worker_main(void *arg)
{
    struct rk_jobs *js = arg;
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
            j->v.started_ms = wall_ms();
        j->v.attempts++;
        pthread_mutex_unlock(&js->mu);
        run_job(js, j);
    }
    return NULL;
}

/* --- loop side ------------------------------------------------------------------ */

static void call_followers(struct rk_jobs *js, bool keepalive)
{
    for (struct rk_jobs_follower *f = js->followers, *next; f; f = next) {
        next = f->next; // fn may unfollow itself
        f->fn(f->user, keepalive);
    }
}

static void on_async(uv_async_t *a)
{
    struct rk_jobs *js = a->data;
    call_followers(js, false);
    // Resumed connections are picked up by MHD's next run (its inter-thread
    // pipe also wakes the loop; running now saves a loop iteration).
    if (js->srv->mhd)
        MHD_run(js->srv->mhd);
}
static void on_keepalive(uv_timer_t *t) { call_followers(t->data, true); }

static void close_loop(struct rk_jobs *js)
{
    if (!js->attached || js->loop_closed)
        return;
    pthread_mutex_lock(&js->amu);
    js->async_live = false;
    pthread_mutex_unlock(&js->amu);
    js->loop_closed = true;
    uv_timer_stop(&js->keepalive);
    uv_check_stop(&js->check);
    uv_close((uv_handle_t *)&js->async, NULL);
    uv_close((uv_handle_t *)&js->keepalive, NULL);
    uv_close((uv_handle_t *)&js->check, NULL);
    call_followers(js, false); // every follower ends its stream
}

static void on_check(uv_check_t *c)
{
    struct rk_jobs *js = c->data;
    if (!js->srv->draining)
        return;
    // Draining: interrupt the running job (it stays resumable) and let go of
    // the loop before rk_srv_run closes it.
    pthread_mutex_lock(&js->mu);
    js->stopping = true;
    atomic_store(&js->stop_flag, true);
    pthread_cond_broadcast(&js->cv);
    pthread_mutex_unlock(&js->mu);
    close_loop(js);
}

void rk_jobs_attach_loop(struct rk_jobs *js)
{
    uv_loop_t *loop = (uv_loop_t *)js->srv->loop;
    if (js->attached || !loop || js->srv->draining)
        return;
    uv_async_init(loop, &js->async, on_async);
    js->async.data = js;
    uv_unref((uv_handle_t *)&js->async);
    uv_timer_init(loop, &js->keepalive);
    js->keepalive.data = js;
    uv_timer_start(&js->keepalive, on_keepalive, 10000, 10000);
    uv_unref((uv_handle_t *)&js->keepalive);
    uv_check_init(loop, &js->check);
    js->check.data = js;
    uv_check_start(&js->check, on_check);
    uv_unref((uv_handle_t *)&js->check);
    pthread_mutex_lock(&js->amu);
    js->async_live = true;
    pthread_mutex_unlock(&js->amu);
    js->attached = true;
}

bool rk_jobs_loop_closed(const struct rk_jobs *js) { return js->loop_closed; }

struct rk_jobs_follower *rk_jobs_follow(struct rk_jobs *js, void (*fn)(void *user, bool),
                                        void *user)
{
    struct rk_jobs_follower *f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    f->fn = fn;
    f->user = user;
    f->next = js->followers;
    js->followers = f;
    return f;
}

void rk_jobs_unfollow(struct rk_jobs *js, struct rk_jobs_follower *f)
{
    for (struct rk_jobs_follower **pp = &js->followers; *pp; pp = &(*pp)->next)
        if (*pp == f) {
            *pp = f->next;
            free(f);
            return;
        }
}

/* --- table access (loop thread) ------------------------------------------------ */

static struct rk_tjob *find(struct rk_jobs *js, const char *tenant, const char *id)
{
    if (!id_ok(id, "ftjob-"))
        return NULL;
    for (size_t i = 0; i < js->n_jobs; i++)
        if (!strcmp(js->jobs[i]->v.id, id))
            return strcmp(js->jobs[i]->v.tenant, tenant) ? NULL : js->jobs[i];
    return NULL;
}

static void view_of(struct rk_jobs *js, struct rk_tjob *j, struct rk_tjob_view *v)
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

static int table_add(struct rk_jobs *js, struct rk_tjob *j)
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

static void enqueue(struct rk_jobs *js, struct rk_tjob *j)
{
    j->q_next = NULL;
    if (js->q_tail)
        js->q_tail->q_next = j;
    else
        js->q_head = j;
    js->q_tail = j;
    pthread_cond_signal(&js->cv);
}

int rk_jobs_submit(struct rk_jobs *js, const struct rk_tjob_new *nj, struct rk_tjob_view *view,
                   struct rk_errbuf *eb)
{
    struct rk_tjob *j = calloc(1, sizeof *j);
    if (!j)
        return RK_ENOMEM;
    struct rk_tjob_view *v = &j->v;
    random_id("ftjob-", v->id, sizeof v->id);
    snprintf(v->tenant, sizeof v->tenant, "%s", nj->tenant);
    snprintf(v->output_state, sizeof v->output_state, "%s", nj->output_state);
    snprintf(v->training_file, sizeof v->training_file, "%s",
             nj->training_file ? nj->training_file : "");
    snprintf(v->suffix, sizeof v->suffix, "%s", nj->suffix ? nj->suffix : "");
    v->openai = nj->openai;
    v->status = RK_TJOB_QUEUED;
    v->created_ms = wall_ms();
    v->hp = *nj->hp;
    v->steps = nj->hp->steps;
    v->n_examples = nj->n_examples;
    v->n_tokens = nj->n_tokens;
    v->n_targets = nj->n_targets;
    v->loss = v->val_loss = v->val_loss_init = v->val_loss_best = v->grad_norm = v->lr_now =
        v->tokens_per_s = NAN;
    v->queue_pos = -1;

    pthread_mutex_lock(&js->mu);
    int active = 0;
    for (size_t i = 0; i < js->n_jobs; i++)
        active += !strcmp(js->jobs[i]->v.tenant, nj->tenant) && !is_final(js->jobs[i]->v.status);
    pthread_mutex_unlock(&js->mu);
    if (active >= js->lim.active_per_tenant_max) {
        free(j);
        return rk_errbuf_set(eb, RK_EBUSY,
                             "this tenant already has %d queued or running jobs (the limit); "
                             "wait for one to finish or cancel one",
                             active);
    }
    // The dataset first, then the record: a record on disk always has its data.
    char path[1100];
    job_path(js, v->id, ".data.jsonl", path, sizeof path);
    int rc = rk_file_write_atomic(path, nj->data, nj->len, eb);
    if (rc == RK_OK)
        rc = journal_write(js, j, eb);
    if (rc != RK_OK) {
        unlink(path);
        free(j);
        return rc;
    }
    pthread_mutex_lock(&js->mu);
    rc = table_add(js, j);
    if (rc != RK_OK) {
        pthread_mutex_unlock(&js->mu);
        free(j);
        return rc;
    }
    char msg[96];
    snprintf(msg, sizeof msg, "queued: %zu examples, %ld steps", v->n_examples, v->steps);
    struct pending_ev pe = status_event(j, msg);
    enqueue(js, j);
    if (view)
        view_of(js, j, view);
    pthread_mutex_unlock(&js->mu);
    pending_flush(js, v->id, &pe);
    rk_log(RK_LOG_INFO, "jobs: %s queued for tenant %s -> state %s (%ld steps)", v->id,
           v->tenant, v->output_state, v->steps);
    return RK_OK;
}

int rk_jobs_get(struct rk_jobs *js, const char *tenant, const char *id, struct rk_tjob_view *view)
{
    pthread_mutex_lock(&js->mu);
    struct rk_tjob *j = find(js, tenant, id);
    if (j)
        view_of(js, j, view);
    pthread_mutex_unlock(&js->mu);
    return j ? RK_OK : RK_ENOTFOUND;
}

int rk_jobs_list(struct rk_jobs *js, const char *tenant, bool openai_only,
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

int rk_jobs_cancel(struct rk_jobs *js, const char *tenant, const char *id,
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
        changed = true;
    } else if (j->v.status == RK_TJOB_RUNNING && !j->publishing) {
        changed = true; // the worker stops at its next cancel check
    }
    if (changed) {
        atomic_store(&j->cancel, true);
        j->v.status = RK_TJOB_CANCELLED;
        j->v.finished_ms = wall_ms();
        pe = status_event(j, "cancelled by request");
    }
    view_of(js, j, view);
    pthread_mutex_unlock(&js->mu);
    if (changed) {
        journal_write(js, j, NULL);
        pending_flush(js, view->id, &pe);
        wake_loop(js);
        rk_log(RK_LOG_INFO, "jobs: %s cancelled", view->id);
    }
    return RK_OK;
}

int rk_jobs_events(struct rk_jobs *js, const char *tenant, const char *id, size_t from,
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
    *ended = is_final(j->v.status);
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

/* --- files --------------------------------------------------------------------- */

static void file_dir(const struct rk_jobs *js, const char *tenant, char *out, size_t cap)
{
    snprintf(out, cap, "%s/tenants/%s/files", js->data_dir, tenant);
}

static json_t *file_json(const struct rk_tfile *f)
{
    return json_pack("{s:i,s:s,s:s,s:s,s:s,s:I,s:I,s:I}", "format", 1, "id", f->id, "tenant",
                     f->tenant, "filename", f->filename, "purpose", f->purpose, "bytes",
                     (json_int_t)f->bytes, "created_ms", (json_int_t)f->created_ms, "n_examples",
                     (json_int_t)f->n_examples);
}

int rk_files_add(struct rk_jobs *js, const char *tenant, const char *filename,
                 const char *purpose, const void *data, size_t len, size_t n_examples,
                 struct rk_tfile *out, struct rk_errbuf *eb)
{
    struct rk_tfile f = {0};
    random_id("file-", f.id, sizeof f.id);
    snprintf(f.tenant, sizeof f.tenant, "%s", tenant);
    snprintf(f.filename, sizeof f.filename, "%s", filename);
    snprintf(f.purpose, sizeof f.purpose, "%s", purpose);
    f.bytes = len;
    f.created_ms = wall_ms();
    f.n_examples = n_examples;
    pthread_mutex_lock(&js->mu);
    int n = 0;
    for (size_t i = 0; i < js->n_files; i++)
        n += !strcmp(js->files[i].tenant, tenant);
    pthread_mutex_unlock(&js->mu);
    if (n >= js->lim.files_per_tenant_max)
        return rk_errbuf_set(eb, RK_EBUSY, "this tenant already has %d files (the limit); "
                             "delete some first", n);
    char dir[1100], path[1200];
    file_dir(js, tenant, dir, sizeof dir);
    if (rk_mkdirs(dir, NULL) != RK_OK)
        return rk_errbuf_set(eb, RK_EIO, "cannot create %s: %s", dir, strerror(errno));
    snprintf(path, sizeof path, "%s/%s.jsonl", dir, f.id);
    int rc = rk_file_write_atomic(path, data, len, eb);
    if (rc != RK_OK)
        return rc;
    json_t *o = file_json(&f);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    snprintf(path, sizeof path, "%s/%s.json", dir, f.id);
    rc = s ? rk_file_write_atomic(path, s, strlen(s), eb) : RK_ENOMEM;
    free(s);
    if (rc != RK_OK) {
        snprintf(path, sizeof path, "%s/%s.jsonl", dir, f.id);
        unlink(path);
        return rc;
    }
    pthread_mutex_lock(&js->mu);
    if (js->n_files == js->cap_files) {
        size_t nc = js->cap_files ? js->cap_files * 2 : 32;
        void *p = realloc(js->files, nc * sizeof *js->files);
        if (!p) {
            pthread_mutex_unlock(&js->mu);
            return RK_ENOMEM;
        }
        js->files = p;
        js->cap_files = nc;
    }
    js->files[js->n_files++] = f;
    pthread_mutex_unlock(&js->mu);
    if (out)
        *out = f;
    return RK_OK;
}

static struct rk_tfile *file_find(struct rk_jobs *js, const char *tenant, const char *id)
{
    if (!id_ok(id, "file-"))
        return NULL;
    for (size_t i = 0; i < js->n_files; i++)
        if (!strcmp(js->files[i].id, id))
            return strcmp(js->files[i].tenant, tenant) ? NULL : &js->files[i];
    return NULL;
}

int rk_files_get(struct rk_jobs *js, const char *tenant, const char *id, struct rk_tfile *out)
{
    pthread_mutex_lock(&js->mu);
    struct rk_tfile *f = file_find(js, tenant, id);
    if (f)
        *out = *f;
    pthread_mutex_unlock(&js->mu);
    return f ? RK_OK : RK_ENOTFOUND;
}

int rk_files_read(struct rk_jobs *js, const char *tenant, const char *id, void **data,
                  size_t *len, struct rk_errbuf *eb)
{
    struct rk_tfile f;
    if (rk_files_get(js, tenant, id, &f) != RK_OK)
        return RK_ENOTFOUND;
    char dir[1100], path[1200];
    file_dir(js, tenant, dir, sizeof dir);
    snprintf(path, sizeof path, "%s/%s.jsonl", dir, f.id);
    return rk_file_read_all(path, js->lim.dataset_bytes_max, data, len, eb);
}

int rk_files_list(struct rk_jobs *js, const char *tenant, struct rk_tfile **out, size_t *n)
{
    pthread_mutex_lock(&js->mu);
    struct rk_tfile *arr = malloc((js->n_files ? js->n_files : 1) * sizeof *arr);
    size_t k = 0;
    if (arr)
        for (size_t i = js->n_files; i-- > 0;)
            if (!strcmp(js->files[i].tenant, tenant))
                arr[k++] = js->files[i];
    pthread_mutex_unlock(&js->mu);
    *out = arr;
    *n = k;
    return arr ? RK_OK : RK_ENOMEM;
}

int rk_files_delete(struct rk_jobs *js, const char *tenant, const char *id)
{
    pthread_mutex_lock(&js->mu);
    struct rk_tfile *f = file_find(js, tenant, id);
    if (!f) {
        pthread_mutex_unlock(&js->mu);
        return RK_ENOTFOUND;
    }
    char dir[1100], path[1200];
    file_dir(js, tenant, dir, sizeof dir);
    // The metadata goes first: without it the file is no longer listed.
    snprintf(path, sizeof path, "%s/%s.json", dir, f->id);
    unlink(path);
    snprintf(path, sizeof path, "%s/%s.jsonl", dir, f->id);
    unlink(path);
    rk_dir_fsync(dir);
    size_t i = (size_t)(f - js->files);
    memmove(js->files + i, js->files + i + 1, (js->n_files - i - 1) * sizeof *js->files);
    js->n_files--;
    pthread_mutex_unlock(&js->mu);
    return RK_OK;
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
static void load_events(struct rk_jobs *js, struct rk_tjob *j)
{
    char path[1100];
    job_path(js, j->v.id, ".events.jsonl", path, sizeof path);
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
        enum rk_tjob_ev_type t = !strcmp(type, "step") ? RK_EV_STEP
                                 : !strcmp(type, "eval") ? RK_EV_EVAL : RK_EV_STATUS;
        const char *msg = json_string_value(json_object_get(d, "message"));
        if (t == RK_EV_STATUS && msg && !strncmp(msg, "resumed from", 12))
            drop_events_after(j, (long)int_of(d, "step"));
        ev_push(j, t, int_of(o, "t"), json_dumps(d, JSON_COMPACT | JSON_REAL_PRECISION(9)));
        json_decref(o);
    }
    free(buf);
}

static void load_files(struct rk_jobs *js)
{
    char tdir[1100];
    snprintf(tdir, sizeof tdir, "%s/tenants", js->data_dir);
    DIR *d = opendir(tdir);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!rk_state_id_valid(de->d_name))
            continue;
        char fdir[1100];
        file_dir(js, de->d_name, fdir, sizeof fdir);
        DIR *fd = opendir(fdir);
        if (!fd)
            continue;
        struct dirent *fe;
        while ((fe = readdir(fd))) {
            size_t n = strlen(fe->d_name);
            if (n < 6 || strcmp(fe->d_name + n - 5, ".json"))
                continue;
            char path[1400];
            snprintf(path, sizeof path, "%s/%s", fdir, fe->d_name);
            json_t *o = json_load_file(path, JSON_REJECT_DUPLICATES, NULL);
            struct rk_tfile f = {0};
            str_of(o, "id", f.id, sizeof f.id);
            str_of(o, "tenant", f.tenant, sizeof f.tenant);
            str_of(o, "filename", f.filename, sizeof f.filename);
            str_of(o, "purpose", f.purpose, sizeof f.purpose);
            f.bytes = (size_t)int_of(o, "bytes");
            f.created_ms = int_of(o, "created_ms");
            f.n_examples = (size_t)int_of(o, "n_examples");
            json_decref(o);
            if (!id_ok(f.id, "file-") || strcmp(f.tenant, de->d_name)) {
                rk_log(RK_LOG_WARN, "jobs: ignoring unreadable file record %s", path);
                continue;
            }
            if (js->n_files == js->cap_files) {
                size_t nc = js->cap_files ? js->cap_files * 2 : 32;
                void *p = realloc(js->files, nc * sizeof *js->files);
                if (!p)
                    break;
                js->files = p;
                js->cap_files = nc;
            }
            js->files[js->n_files++] = f;
        }
        closedir(fd);
    }
    closedir(d);
    // Newest last, like uploads in this run.
    for (size_t i = 1; i < js->n_files; i++)
        for (size_t k = i; k > 0 && js->files[k - 1].created_ms > js->files[k].created_ms; k--) {
            struct rk_tfile t = js->files[k];
            js->files[k] = js->files[k - 1];
            js->files[k - 1] = t;
        }
}

static int load_jobs(struct rk_jobs *js)
{
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
            free(j);
            continue;
        }
        if (table_add(js, j) != RK_OK) {
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
        if (is_final(j->v.status)) {
            job_path(js, j->v.id, ".ckpt", path, sizeof path);
            unlink(path); // left over from a crash between the two writes
            continue;
        }
        struct pending_ev pe = {0};
        if (j->v.status == RK_TJOB_RUNNING) {
            job_path(js, j->v.id, ".ckpt", path, sizeof path);
            bool has_ckpt = access(path, F_OK) == 0;
            if (j->v.attempts >= ATTEMPTS_MAX) {
                j->v.status = RK_TJOB_FAILED;
                j->v.finished_ms = wall_ms();
                snprintf(j->v.err_code, sizeof j->v.err_code, "interrupted");
                snprintf(j->v.err_msg, sizeof j->v.err_msg,
                         "the server stopped %d times while this job ran; giving up",
                         j->v.attempts);
                pe = status_event(j, j->v.err_msg);
                unlink(path);
            } else {
                j->v.status = RK_TJOB_QUEUED;
                pe = status_event(j, has_ckpt ? "the server restarted while this job ran; it "
                                                "resumes from its last checkpoint"
                                              : "the server restarted before the first "
                                                "checkpoint; the job starts again");
            }
            journal_write(js, j, NULL);
            pending_flush(js, j->v.id, &pe);
            rk_log(RK_LOG_INFO, "jobs: %s was running at the last stop: %s", j->v.id,
                   j->v.status == RK_TJOB_FAILED ? "failed" : "queued again");
        }
        if (j->v.status == RK_TJOB_QUEUED)
            enqueue(js, j);
    }
    return RK_OK;
}

int rk_jobs_start(struct rk_srv *srv, const struct rk_jobs_limits *lim, struct rk_jobs **out,
                  struct rk_errbuf *eb)
{
    *out = NULL;
    struct rk_jobs *js = calloc(1, sizeof *js);
    if (!js)
        return RK_ENOMEM;
    js->srv = srv;
    if (lim)
        js->lim = *lim;
    else
        rk_jobs_limits_default(&js->lim);
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
        rk_jobs_free(js);
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
    int rc = load_jobs(js);
    if (rc != RK_OK) {
        rk_errbuf_set(eb, rc, "cannot read the job journal in %s", js->dir);
        rk_jobs_free(js);
        return rc;
    }
    load_files(js);
    /* counted before the worker starts taking jobs off the queue */
    size_t queued = 0;
    for (struct rk_tjob *q = js->q_head; q; q = q->q_next)
        queued++;
    if (pthread_create(&js->th, NULL, worker_main, js) != 0) {
        rk_errbuf_set(eb, RK_ENOMEM, "cannot start the tuning worker thread");
        rk_jobs_free(js);
        return RK_ENOMEM;
    }
    js->started = true;
    rk_log(RK_LOG_INFO, "jobs: %zu job(s) in the journal, %zu queued, %zu file(s)", js->n_jobs,
           queued, js->n_files);
    *out = js;
    return RK_OK;
}

void rk_jobs_stop(struct rk_jobs *js)
{
    if (!js)
        return;
    pthread_mutex_lock(&js->amu);
    js->async_live = false;
    pthread_mutex_unlock(&js->amu);
    pthread_mutex_lock(&js->mu);
    js->stopping = true;
    atomic_store(&js->stop_flag, true);
    pthread_cond_broadcast(&js->cv);
    pthread_mutex_unlock(&js->mu);
    if (js->started && !js->joined) {
        pthread_join(js->th, NULL);
        js->joined = true;
    }
}

void rk_jobs_free(struct rk_jobs *js)
{
    if (!js)
        return;
    rk_jobs_stop(js);
    for (size_t i = 0; i < js->n_jobs; i++) {
        rk_tjob_evs_free(js->jobs[i]->ev, js->jobs[i]->n_ev);
        free(js->jobs[i]);
    }
    free(js->jobs);
    free(js->files);
    struct rk_jobs_follower *f = js->followers;
    while (f) {
        struct rk_jobs_follower *n = f->next;
        free(f);
        f = n;
    }
    pthread_mutex_destroy(&js->mu);
    pthread_mutex_destroy(&js->jmu);
    pthread_mutex_destroy(&js->amu);
    pthread_cond_destroy(&js->cv);
    free(js);
}

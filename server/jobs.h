/*
 * jobs.h - state-tuning jobs of `rwkvd serve`: the job table, the FIFO queue,
 * the one background worker that runs jobs through rk_tune_run (the code
 * path of `rwkvd tune`), the journal in the data directory, and uploaded
 * training files. The HTTP side (POST /tune, /jobs, /v1/files,
 * /v1/fine_tuning/jobs) is in api_jobs.c and the api_*.c files it names;
 * docs/JOBS.md is the user-facing description. "rk_tjob(s)" (tuning jobs)
 * is not "rk_job" (a generation request of the engine).
 *
 * Threads: every function here is called on the loop thread unless it says
 * otherwise; the worker thread is internal to jobs_worker.c. Jobs are never
 * freed while the table exists, so a `struct rk_tjob *` stays valid until
 * rk_tjobs_free; its fields are read through rk_tjobs_lock/unlock or the
 * snapshot functions.
 */
#ifndef RK_JOBS_H
#define RK_JOBS_H

#include <stdio.h>
#include "srv.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Status as the native API shows it. */
enum rk_tjob_status {
    RK_TJOB_QUEUED = 0,
    RK_TJOB_RUNNING,
    RK_TJOB_SUCCEEDED,
    RK_TJOB_FAILED,
    RK_TJOB_CANCELLED,
};
const char *rk_tjob_status_name(enum rk_tjob_status s);
/* Parse a journal status name; false when unknown. */
bool rk_tjob_status_parse(const char *s, enum rk_tjob_status *out);

/* Limits of the jobs API (docs/JOBS.md). Defaults, then RWKVD_JOB_* environment
 * variables (see rk_tjobs_limits_from_env). */
struct rk_tjobs_limits {
    size_t dataset_bytes_max; /* JSONL bytes per dataset (inline or file) */
    size_t examples_max;      /* lines per dataset */
    size_t seq_tokens_max;    /* tokens per example */
    long steps_max;           /* optimizer steps per job */
    int batch_max;            /* sequences per step */
    int active_per_tenant_max; /* queued + running jobs per tenant (429 beyond) */
    int files_per_tenant_max; /* uploaded files per tenant (429 beyond) */
    long checkpoint_every;    /* default steps between checkpoints (0 = end only) */
    int threads;              /* compute threads of the worker (0 = --threads) */
    bool yield;               /* pause between layers while the engine is busy */
    int yield_idle_ms;        /* engine idle this long before the worker resumes */
    int nice;                 /* nice value of the worker and its compute threads */
};
void rk_tjobs_limits_default(struct rk_tjobs_limits *l);
/* Apply RWKVD_JOB_* variables; on a bad value prints to `err` and returns -1. */
int rk_tjobs_limits_from_env(struct rk_tjobs_limits *l, char *err, size_t cap);
/* List the RWKVD_JOB_* variables with defaults and ranges (for --help). */
void rk_tjobs_env_help(FILE *f);
/* The environment variable behind a `rwkvd serve` job flag ("job-max-steps",
 * without the dashes, `len` bytes), or NULL when there is none. */
const char *rk_tjobs_flag_env(const char *flag, size_t len);

/* Hyperparameters of a job as submitted (after defaults). The fields of
 * `tune` named by the RK_HP_JOB entries of rk_hparams() come from the
 * request; the others keep rk_tune_params_default's values (the worker sets
 * steps, threads and the callbacks). */
/* The teacher settings of an observer job (docs/API.md, "teacher"). */
#define RK_TJOB_TEACHER_TOKENS_MAX 4096
#define RK_TJOB_INSTRUCTION_MAX 2048
#define RK_TJOB_TEACHER_STOPS_MAX 4    /* stop strings sent to the teacher */
#define RK_TJOB_TEACHER_STOP_BYTES 64  /* longest one */
struct rk_tjob_teacher {
    char url[1025];     /* "" = --teacher-url (else one of --teacher-allowed-urls) */
    char model[257];    /* "" = --teacher-model */
    bool chat;          /* the chat/completions endpoint instead of completions */
    int max_tokens;     /* answer tokens asked per prompt (default 128) */
    double temperature; /* default 0 */
    int top_logprobs;   /* 0: text only, cross-entropy; 1..20: KL to the top-k */
    char instruction[RK_TJOB_INSTRUCTION_MAX + 1]; /* for the teacher only; "" = none */
    int n_stop;         /* stop strings sent with every teacher request */
    char stop[RK_TJOB_TEACHER_STOPS_MAX][RK_TJOB_TEACHER_STOP_BYTES + 1];
};

struct rk_tjob_hparams {
    char method[32];            /* a name of rk_tune_methods() */
    struct rk_tune_params tune; /* method/checkpoint_cb/resume unused (NULL) */
    double epochs;              /* > 0 when steps were derived from epochs, else NAN */
    double lr_multiplier;       /* OpenAI learning_rate_multiplier (1 = native lr) */
    char init_state[RK_STATE_ID_MAX + 1]; /* "" = zero state */
    struct rk_tjob_teacher teacher;       /* method "observer" only */
};
/* Defaults: method "standard", rk_tune_params_default, the server's
 * checkpoint interval, epochs NAN, lr_multiplier 1 (tjob_hparams.c). */
void rk_tjob_hparams_default(struct rk_tjob_hparams *hp, long checkpoint_every);
/* The hyperparameters as a JSON object: "method", every RK_HP_JOB entry of
 * rk_hparams(), and with `journal` also lr_multiplier (init_state is then ""
 * rather than null when unset). New reference, NULL when out of memory. */
json_t *rk_tjob_hparams_json(const struct rk_tjob_hparams *hp, bool journal);
/* Read a journal's hyperparameters object over the defaults (lenient: a
 * missing key keeps its default; method missing = "standard"). */
void rk_tjob_hparams_from_json(json_t *o, struct rk_tjob_hparams *hp);

/* One tuning job. Fields are guarded by the table's mutex. */
struct rk_tjob;

/* The read-only view handlers work with (copied under the lock). */
struct rk_tjob_view {
    char id[32];
    char tenant[RK_STATE_ID_MAX + 1];
    char output_state[RK_STATE_ID_MAX + 1];
    char training_file[32]; /* "" for inline datasets */
    char suffix[RK_STATE_ID_MAX + 1];
    bool openai;            /* created through /v1/fine_tuning/jobs */
    enum rk_tjob_status status;
    bool loading;           /* running, still reading its dataset */
    bool cancel_requested;
    int64_t created_ms, started_ms, finished_ms;
    struct rk_tjob_hparams hp;
    size_t n_examples, n_tokens, n_targets;
    long step, steps, resumed_from;
    int attempts;
    double loss, val_loss, val_loss_init, val_loss_best, grad_norm, lr_now, tokens_per_s;
    double run_elapsed_s; /* wall time of the current or last run */
    long run_steps;       /* steps done in the current or last run */
    uint64_t trained_tokens;
    uint64_t result_version;
    int queue_pos;        /* 0-based position in the queue (-1 when not queued) */
    char err_code[32];
    char err_msg[200];
    /* evaluation jobs (POST /eval/jobs, jobs_eval.c) */
    bool eval;              /* an evaluation, not a tuning job */
    size_t eval_done, eval_total; /* items evaluated / to evaluate */
    const char *eval_result; /* the result document (JSON text) once succeeded; owned by
                                the job, immutable once set, valid while the table exists */
    /* tuning jobs with an "eval_task": its results on the starting and on the
     * tuned state (a JSON array as text; owned and immutable as eval_result) */
    bool has_eval_task;
    const char *eval_task_results;
};

struct rk_tjobs;

/* Open the journal at DATA/jobs (creating it), load every job and file, and
 * recover: jobs that were running are resumed from their last checkpoint,
 * re-run from the start when none was written yet, or failed with a
 * reason; queued jobs stay queued. Then start the worker thread. `srv` is
 * kept (it must outlive the table). Main thread, before the loop runs. */
int rk_tjobs_start(struct rk_srv *srv, const struct rk_tjobs_limits *lim, struct rk_tjobs **out,
                  struct rk_errbuf *eb);
/* Interrupt the running job (it stays resumable from its last checkpoint and
 * is journaled as queued) and join the worker. Safe to call twice. */
void rk_tjobs_stop(struct rk_tjobs *js);
/* Stop if needed and free everything. NULL is a no-op. */
void rk_tjobs_free(struct rk_tjobs *js);

const struct rk_tjobs_limits *rk_tjobs_limits(const struct rk_tjobs *js);

/* Loop-thread plumbing for SSE followers: creates the uv handles on first
 * use (the loop exists only once rk_srv_run runs) and closes them when the
 * server starts draining. Called by every jobs handler. */
void rk_tjobs_attach_loop(struct rk_tjobs *js);

/* A new job: `data`/`len` is the validated JSONL (copied to the journal), the
 * counts describe it, and `ds` (may be NULL) is that JSONL already parsed
 * with the server's tokenizer: **taken** (freed on failure too); the job
 * holds it for the worker (see "Datasets" in jobs.c). Writes and fsyncs the
 * job's files, so it runs on the thread pool or the worker, never on the
 * loop thread; thread-safe. The job is in the table (and the answer goes
 * out) only after its dataset and record are durable. RK_EBUSY when the
 * tenant has too many active jobs, RK_EIO when the journal cannot be
 * written (nothing of the job is left then). *view (may be NULL)
 * gets the new job. */
struct rk_tjob_new {
    const char *tenant, *output_state, *training_file, *suffix;
    bool openai;
    const struct rk_tjob_hparams *hp;
    const char *data;
    size_t len;
    size_t n_examples, n_tokens, n_targets;
    /* an evaluation job: `data` is the request (JSON), n_examples its items
     * counted over every state, hp unused (may be NULL) */
    bool eval;
    /* a tuning job's "eval_task" (JSON text, NULL = none): evaluated on the
     * starting and the tuned state before the result is published */
    const char *eval_task;
    /* the parsed dataset (taken by rk_tjobs_submit, even on failure), or NULL */
    struct rk_dataset *ds;
};
int rk_tjobs_submit(struct rk_tjobs *js, const struct rk_tjob_new *nj, struct rk_tjob_view *view,
                   struct rk_errbuf *eb);

/* Copy the job `id` of `tenant` into *view; RK_ENOTFOUND when missing or of
 * another tenant. */
int rk_tjobs_get(struct rk_tjobs *js, const char *tenant, const char *id, struct rk_tjob_view *view);
/* Views of the tenant's jobs, newest first (malloc'd array, caller frees).
 * `openai_only`: only those created through the OpenAI API. */
int rk_tjobs_list(struct rk_tjobs *js, const char *tenant, bool openai_only,
                 struct rk_tjob_view **out, size_t *n);
/* Cancel: a queued job is cancelled at once, a running one stops within one
 * layer of the backward pass; a finished one is left as it is. Idempotent.
 * *view gets the job after the request. */
int rk_tjobs_cancel(struct rk_tjobs *js, const char *tenant, const char *id,
                   struct rk_tjob_view *view);

/* --- events ---------------------------------------------------------------- */

enum rk_tjob_ev_type { RK_EV_STATUS, RK_EV_STEP, RK_EV_EVAL, RK_EV_PROGRESS };
const char *rk_tjob_ev_name(enum rk_tjob_ev_type t);

struct rk_tjob_ev {
    enum rk_tjob_ev_type type;
    int64_t t_ms;
    char *data; /* JSON object text */
};

/* Copy events [from, from+max) of a job (data strings malloc'd; free with
 * rk_tjob_evs_free). *total gets the number of events so far, *ended whether
 * the job has reached a final status (no more events will come).
 * RK_ENOTFOUND as rk_tjobs_get. */
int rk_tjobs_events(struct rk_tjobs *js, const char *tenant, const char *id, size_t from,
                   size_t max, struct rk_tjob_ev **out, size_t *n, size_t *total, bool *ended);
void rk_tjob_evs_free(struct rk_tjob_ev *ev, size_t n);

/* Follow job events from the loop thread: `fn(user, false)` is called on the
 * loop thread whenever any job has new events or ends (and once when the
 * server starts draining), `fn(user, true)` every 10 s (time for an SSE
 * keepalive). Returns a handle for rk_tjobs_unfollow (NULL: out of memory). */
struct rk_tjobs_follower;
struct rk_tjobs_follower *rk_tjobs_follow(struct rk_tjobs *js, void (*fn)(void *user, bool keepalive),
                                        void *user);
void rk_tjobs_unfollow(struct rk_tjobs *js, struct rk_tjobs_follower *f);
/* True once the loop handles are closed (the server is draining). */
bool rk_tjobs_loop_closed(const struct rk_tjobs *js);

/* --- uploaded files (OpenAI /v1/files) -------------------------------------- */

struct rk_tfile {
    char id[32];
    char tenant[RK_STATE_ID_MAX + 1];
    char filename[128];
    char purpose[32];
    size_t bytes;
    int64_t created_ms;
    size_t n_examples;
};

/* Store a validated JSONL file for `tenant` (atomic writes). RK_EBUSY when
 * the tenant has files_per_tenant_max files. */
int rk_files_add(struct rk_tjobs *js, const char *tenant, const char *filename,
                 const char *purpose, const void *data, size_t len, size_t n_examples,
                 struct rk_tfile *out, struct rk_errbuf *eb);
int rk_files_get(struct rk_tjobs *js, const char *tenant, const char *id, struct rk_tfile *out);
/* Read the contents (malloc'd). */
int rk_files_read(struct rk_tjobs *js, const char *tenant, const char *id, void **data,
                  size_t *len, struct rk_errbuf *eb);
/* Newest first; malloc'd array. */
int rk_files_list(struct rk_tjobs *js, const char *tenant, struct rk_tfile **out, size_t *n);
int rk_files_delete(struct rk_tjobs *js, const char *tenant, const char *id);

/* Route registration (api_jobs.c). */
void rk_api_jobs_register(struct rk_srv *srv, struct rk_tjobs *js);

#endif

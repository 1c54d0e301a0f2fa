/*
 * jobs_int.h - what the files of the tuning-jobs module share (jobs.c,
 * jobs_events.c, jobs_journal.c, jobs_worker.c, jobs_files.c): the job,
 * the table, and the functions one file calls in another. Private to them.
 */
#ifndef RK_JOBS_INT_H
#define RK_JOBS_INT_H

#include "jobs.h"
#include "dataset_jsonl.h"

#include <stdatomic.h>
#include <uv.h>

#define ATTEMPTS_MAX 3

struct rk_tjob {
    struct rk_tjob_view v;
    struct rk_tjob_ev *ev; /* event log */
    size_t n_ev, cap_ev;
    atomic_bool cancel;
    bool publishing; /* the worker is storing the result: too late to cancel */
    struct rk_dataset *ds; /* mu: the parsed dataset of a queued job (NULL: parse the JSONL) */
    size_t ds_bytes;       /* mu: what ds counts in held_bytes */
    struct rk_tjob *q_next;
};

struct rk_tjobs_follower {
    void (*fn)(void *user, bool keepalive);
    void *user;
    struct rk_tjobs_follower *next;
};

struct rk_tjobs {
    struct rk_srv *srv;
    struct rk_tjobs_limits lim;
    char dir[512];      /* DATA/jobs */
    char data_dir[512]; /* DATA */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct rk_tjob **jobs; /* mu; creation order */
    size_t n_jobs, cap_jobs;
    struct rk_tjob *q_head, *q_tail; /* mu */
    bool stopping;                   /* mu */
    atomic_bool stop_flag;           /* read by the worker's cancel callback */
    atomic_bool worker_halt;         /* stop_flag, or the running job was cancelled: stops a
                                        teacher call of the worker (reset per job) */
    pthread_t th;
    bool started, joined;
    pthread_mutex_t jmu; /* journal writes */
    size_t held_bytes;      /* mu: memory of the datasets queued jobs hold */
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
    struct rk_tjobs_follower *followers; /* loop thread only */
};

struct pending_ev {
    char *data;
    int64_t t_ms;
};

/* jobs.c */
int64_t tj_wall_ms(void);
bool tj_is_final(enum rk_tjob_status s);
void tj_random_id(const char *prefix, char *out, size_t cap);
bool tj_id_ok(const char *id, const char *prefix);
void tj_job_path(const struct rk_tjobs *js, const char *id, const char *ext, char *out,
              size_t cap);
int tj_table_add(struct rk_tjobs *js, struct rk_tjob *j);
/* Take the job's parsed dataset (NULL when it holds none); under mu. */
struct rk_dataset *tj_take_dataset(struct rk_tjobs *js, struct rk_tjob *j);
void tj_enqueue(struct rk_tjobs *js, struct rk_tjob *j);

/* jobs_events.c */
void tj_ev_push(struct rk_tjob *j, enum rk_tjob_ev_type type, int64_t t_ms, char *data);
void tj_ev_persist(struct rk_tjobs *js, const char *id, enum rk_tjob_ev_type type,
                int64_t t_ms, const char *data);
void tj_wake_loop(struct rk_tjobs *js);
struct pending_ev tj_status_event(struct rk_tjob *j, const char *msg);
void tj_pending_flush(struct rk_tjobs *js, const char *id, struct pending_ev *p);

/* jobs_journal.c */
long long tj_int_of(json_t *o, const char *k);
void tj_str_of(json_t *o, const char *k, char *out, size_t cap);
int tj_journal_write(struct rk_tjobs *js, struct rk_tjob *j, struct rk_errbuf *eb);
void tj_drop_events_after(struct rk_tjob *j, long k);
int tj_load_jobs(struct rk_tjobs *js);

/* jobs_worker.c */
void tj_finish(struct rk_tjobs *js, struct rk_tjob *j, enum rk_tjob_status st,
            const char *code, const char *msg);
void *tj_worker_main(void *arg);

/* jobs_eval.c: evaluation jobs */
void tj_eval_run(struct rk_tjobs *js, struct rk_tjob *j);
void tj_eval_load_result(struct rk_tjobs *js, struct rk_tjob *j);
/* A tuning job's eval_task on the starting state `init` (NULL = zero) and
 * the tuned `tuned` [rk_state_len] with its read-out term `tuned_ro` (a
 * kernel state's; NULL = none; `init_ro` the same for the start), before the result is published: an
 * "eval" event and j->v.eval_task_results. Errors are logged and reported
 * in the event; they do not fail the job. */
void tj_eval_tuned(struct rk_tjobs *js, struct rk_tjob *j, const float *init,
                   const struct rk_readout *init_ro, const float *tuned,
                   const struct rk_readout *tuned_ro, int n_threads);
bool tj_cancelled(struct rk_tjobs *js, struct rk_tjob *j);
void tj_fail(struct rk_tjobs *js, struct rk_tjob *j, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* jobs_files.c */
void tj_load_files(struct rk_tjobs *js);

#endif

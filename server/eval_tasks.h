/*
 * eval_tasks.h - evaluation tasks as the CLI, POST /eval and eval jobs see
 * them (docs/EVALUATION.md): a task directory (task.json plus train / val /
 * test JSONL splits) or inline items read into owned text items, and one
 * runner that evaluates several states on several tasks plus collateral
 * and returns the results as the JSON of `rwkvd eval`. The metrics
 * themselves are the adapters layer's (rk_eval_task_run and friends).
 *
 * Threads: nothing here is tied to a thread; a run uses the rk_ctx it is
 * given (one thread at a time), so the CLI, the HTTP route's worker and
 * the job worker each run with their own context.
 */
#ifndef RK_EVAL_TASKS_H
#define RK_EVAL_TASKS_H

#include "rk_adapters.h"

#include <jansson.h>

#define RK_EVTASK_FILE_BYTES_MAX ((size_t)256 << 20) /* one split file */
#define RK_EVTASK_ITEMS_MAX 1000000                   /* items per split */
#define RK_EVTASK_TEXT_MAX ((size_t)1 << 20)          /* bytes per string of an item */
#define RK_EVTASK_CHOICES_MAX 64                      /* choices per item */

/* Items with owned strings. */
struct rk_evset {
    struct rk_eval_item *items; /* [n] */
    size_t n, cap;
};
void rk_evset_fini(struct rk_evset *s);
/* Append the item in JSON object `o` ({"prompt","completion"} or
 * {"prompt","choices","answer"} with answer an index or the text of a
 * choice) checked for `kind`. RK_EINVAL with the reason in err[cap]
 * (naming the field), RK_ENOMEM. */
int rk_evset_add_json(struct rk_evset *s, enum rk_eval_kind kind, json_t *o, char *err,
                      size_t cap);

struct rk_evtask {
    char *name, *description;
    enum rk_eval_kind kind;
    long max_tokens;
    char *stops[RK_EVAL_STOPS_MAX];
    size_t n_stops;
    long shots; /* default few-shot count */
    char *shot_sep;
    struct rk_evset split; /* the evaluated items */
    struct rk_evset train; /* the shot pool (the train split; may be empty) */
    bool split_is_train;
};
void rk_evtask_free(struct rk_evtask *t);

/* Read the task definition (task.json's object, or the "task" object of a
 * request) into a new task without items. Unknown keys are ignored (kept
 * for later extensions). RK_EINVAL with the reason in eb. `dflt_name`
 * names a task without "name". */
int rk_evtask_from_json(json_t *o, const char *dflt_name, struct rk_evtask **out,
                        struct rk_errbuf *eb);

/* Load the task in directory `dir`: task.json, the split `split` ("test",
 * "val" or "train") and, when it has shots (`shots_needed` > 0 or its own
 * default), train.jsonl. Errors name the file and line. */
int rk_evtask_load_dir(const char *dir, const char *split, long shots_needed,
                       struct rk_evtask **out, struct rk_errbuf *eb);

/* Parse JSONL `buf`[len] into `s` for `kind`; errors are "NAME: line N: ...". */
int rk_evset_parse_jsonl(struct rk_evset *s, enum rk_eval_kind kind, const char *buf, size_t len,
                         const char *name, struct rk_errbuf *eb);

/* What one run evaluates. */
struct rk_evrun_state {
    const char *label;  /* "base" or the state's name / file */
    const float *state; /* NULL = the base model */
};
struct rk_evrun_params {
    struct rk_evtask *const *tasks;
    size_t n_tasks;
    struct rk_evtask *collateral; /* NULL = none */
    const struct rk_evrun_state *states;
    size_t n_states;
    long shots;         /* < 0: each task's default */
    uint64_t shot_seed;
    long limit;         /* items per task (0 = all) */
};
/* Progress: items done / total over the whole run, the current task and state. */
typedef void rk_evrun_progress_cb(size_t done, size_t total, const char *task, const char *state,
                                  void *user);

/* Items the run evaluates (for progress totals and limits). */
size_t rk_evrun_items(const struct rk_evrun_params *p);

/* Run everything: for each state, each task, then collateral (base outputs
 * first, once). *results receives a new JSON array of result objects
 * {"state","task","n","shots","metrics":{...},"tokens","seconds"}. */
int rk_evrun(struct rk_ctx *ctx, const struct rk_tokenizer *tok, const struct rk_evrun_params *p,
             rk_cancel_cb *cancel, void *cancel_user, rk_evrun_progress_cb *progress,
             void *progress_user, json_t **results, struct rk_errbuf *eb);

/* The document `rwkvd eval` prints and the HTTP routes answer:
 * {"model": {model_key: model_val, "fingerprint": 16 hex digits}, "split",
 * "shots" (null: each task's own), "results"}. Takes `results`. NULL when
 * out of memory. */
json_t *rk_evrun_doc(const char *model_key, const char *model_val, uint64_t fingerprint,
                     const char *split, long shots, json_t *results);

/* --- evaluation requests (POST /eval, POST /eval/jobs) ---------------------- */

#define RK_EVREQ_TASKS_MAX 16  /* tasks per request */
#define RK_EVREQ_STATES_MAX 8  /* states per request */

/* A request body, read into tasks. See docs/API.md ("POST /eval"). */
struct rk_evreq {
    struct rk_evtask *tasks[RK_EVREQ_TASKS_MAX];
    size_t n_tasks;
    struct rk_evtask *collateral; /* NULL = none */
    char states[RK_EVREQ_STATES_MAX][RK_STATE_ID_MAX + 1];
    size_t n_states;
    bool base;      /* also the base model when states are given */
    long shots;     /* -1: each task's own */
    uint64_t shot_seed;
    long limit;     /* items per task (0 = all) */
};
void rk_evreq_fini(struct rk_evreq *q);
/* Read "tasks" (each a task definition plus "items" and optional
 * "train"), "collateral" ({"max_tokens","stop","items"}: a generate task
 * whose items need only "prompt"), "states", "base", "shots", "shot_seed"
 * and "limit" from `body`. Types and ranges of the scalar fields are the
 * caller's (the HTTP handler reads them with json_read.c first); this
 * checks them again and the structure. On error, param[pcap] names the
 * field ("tasks[1].items[3]") and eb says what is wrong. */
int rk_evreq_parse(json_t *body, struct rk_evreq *q, char *param, size_t pcap,
                   struct rk_errbuf *eb);
/* Items evaluated over every state (the base model included when it runs),
 * base collateral outputs included: the progress total. */
size_t rk_evreq_items(const struct rk_evreq *q);
/* Items in the request, each counted once. */
size_t rk_evreq_items_given(const struct rk_evreq *q);
/* An upper bound of the tokens fed and generated by the whole run: text
 * bytes (a token holds at least one byte) of every prompt with its
 * few-shot examples, every completion or choice, plus max_tokens per
 * generated answer, over every state. */
size_t rk_evreq_work(const struct rk_evreq *q);
/* The runner's parameters for `q`, with the states' data in states[]
 * (labels point into q; data NULL for the base model); returns the number
 * of runs written to runs[RK_EVREQ_STATES_MAX + 1]. */
size_t rk_evreq_runs(const struct rk_evreq *q, float *const *states,
                     struct rk_evrun_state *runs);
void rk_evreq_params(const struct rk_evreq *q, const struct rk_evrun_state *runs, size_t n_runs,
                     struct rk_evrun_params *p);

#endif

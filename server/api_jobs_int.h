/*
 * api_jobs_int.h - what the files of the jobs HTTP API share (api_jobs.c:
 * request parsing and job objects; api_tune.c, api_files.c, api_multipart.c,
 * api_finetune.c: the routes). Private to them.
 */
#ifndef RK_API_JOBS_INT_H
#define RK_API_JOBS_INT_H

#include "dataset_jsonl.h"
#include "jobs.h"

/* A submit's dataset as the request gives it: the JSONL text, or the id of
 * an uploaded file (read on the thread pool). */
struct dataset_info {
    char *jsonl; /* malloc'd; NULL with a training_file */
    size_t len;
    char training_file[32];
};

struct part {
    char name[64], filename[128];
    const char *data;
    size_t len;
};

/* api_jobs.c */
struct rk_tjobs *api_tjobs_of(struct rk_http_req *r);
bool api_get_num(struct rk_http_req *r, json_t *o, const char *key, double lo, double hi,
             bool lo_open, double *out);
bool api_get_str(struct rk_http_req *r, json_t *o, const char *key, const char **out);
bool api_only_keys(struct rk_http_req *r, json_t *o, const char *const *allowed, const char *where);
bool api_only_keys_or(struct rk_http_req *r, json_t *o, const char *const *allowed,
                  bool (*also)(const char *key), const char *where);
bool is_job_hparam(const char *key);
const struct rk_tune_method *method_or_400(struct rk_http_req *r, const char *name,
                                           const char *param);
/* The dataset of a submit: its text (from "dataset") or the id of an
 * uploaded file (read later, on the thread pool); no disk I/O. On failure
 * prepares the error and returns false. */
bool parse_dataset(struct rk_http_req *r, struct rk_tjobs *js, json_t *body,
                   struct dataset_info *di);
/* Hyperparameters into hp; epochs are kept in hp->epochs and turned into
 * steps on the thread pool, once the dataset is counted. */
bool parse_hparams(struct rk_http_req *r, struct rk_tjobs *js, json_t *o,
                   struct rk_tjob_hparams *hp, bool *steps_given);

/* The disk half of a submit or an upload (see the DESIGN note in api_jobs.c). */
enum job_task_kind { TASK_JOB, TASK_FILE };
struct job_task {
    enum job_task_kind kind;
    struct rk_tjobs *js;
    struct rk_state_store *store;
    const struct rk_tokenizer *tok;
    uint32_t n_vocab;
    const char *param; /* static: the request field that holds the dataset */
    char tenant[RK_STATE_ID_MAX + 1];
    const char *text; /* the JSONL: inside text_mem */
    size_t len;
    char *text_mem;   /* owned: the buffer text lies in (a copy, the file read
                         from training_file on the pool, or an upload's body) */
    char training_file[32];
    /* TASK_JOB: set by the handler */
    struct rk_tjob_hparams hp;
    char output_state[RK_STATE_ID_MAX + 1], suffix[RK_STATE_ID_MAX + 1];
    bool openai;
    bool judge; /* the server has a judge (--judge-url): rl prompts may lack a checker */
    char *eval_task; /* owned: the job's "eval_task" as JSON text, or NULL */
    /* TASK_FILE: set by the handler */
    char filename[128], purpose[32];
    /* results, written on the pool, read on the loop after the completion */
    size_t n_examples;
    size_t n_prompt_tokens; /* an observer job's: its prompts' tokens (no dataset) */
    int rc;         /* RK_OK or the failure */
    int status;     /* 0: answer rc through the error map; else this status and code */
    char code[40];
    const char *err_param;
    struct rk_errbuf eb;
    struct rk_tjob_view view; /* TASK_JOB: the new job */
    struct rk_tfile file;     /* TASK_FILE: the new file */
};
/* A task for this request; takes di->jsonl (may be NULL: no text yet). On
 * failure prepares a 503 and returns NULL. */
struct job_task *api_task_new(struct rk_http_req *r, enum job_task_kind kind,
                              struct dataset_info *di, const char *param);
/* Run the task on the pool (takes it; kept in r->user); the handler is
 * called again when it is done. */
void api_task_start(struct rk_http_req *r, struct job_task *t);
/* The finished task of this request, or NULL on the first call. */
struct job_task *api_task_done(struct rk_http_req *r);
/* Prepare the task's error and return true, or return false when it
 * succeeded. */
bool api_task_answer_error(struct rk_http_req *r, const struct job_task *t);
void hparams_default(struct rk_tjobs *js, struct rk_tjob_hparams *hp);
json_t *job_native(struct rk_srv *srv, const struct rk_tjob_view *v);
json_t *job_openai(struct rk_srv *srv, const struct rk_tjob_view *v);

/* api_tune.c */
void h_tune(struct rk_http_req *r);
void h_jobs(struct rk_http_req *r);
bool job_or_404(struct rk_http_req *r, struct rk_tjob_view *v);
void h_job(struct rk_http_req *r);
void cancel_common(struct rk_http_req *r, bool openai);
void h_cancel(struct rk_http_req *r);
void h_events(struct rk_http_req *r);

/* api_eval.c */
void h_eval(struct rk_http_req *r);
void h_eval_job(struct rk_http_req *r);
json_t *job_eval(struct rk_srv *srv, const struct rk_tjob_view *v);
/* Check the "eval_task" of POST /tune (one task, with the limits of POST
 * /eval over its two runs); false when a 400 is prepared. */
bool api_eval_task_check(struct rk_http_req *r, json_t *task);

/* api_files.c */
void h_file_upload(struct rk_http_req *r);
const char *api_query(struct rk_http_req *r, const char *key);
bool api_query_limit(struct rk_http_req *r, int def, int *out);
void h_files(struct rk_http_req *r);
void h_file(struct rk_http_req *r);
void h_file_content(struct rk_http_req *r);
void h_file_delete(struct rk_http_req *r);

/* api_multipart.c */
int rk_multipart_parse(const char *ctype, const char *body, size_t len, struct part *parts,
              int max);

/* api_finetune.c */
void h_ft_create(struct rk_http_req *r);
void h_ft_list(struct rk_http_req *r);
void h_ft_get(struct rk_http_req *r);
void h_ft_cancel(struct rk_http_req *r);
void h_ft_events(struct rk_http_req *r);

#endif

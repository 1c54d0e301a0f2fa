/*
 * api_jobs_int.h - what the files of the jobs HTTP API share (api_jobs.c:
 * request parsing and job objects; api_tune.c, api_files.c, api_multipart.c,
 * api_finetune.c: the routes). Private to them.
 */
#ifndef RK_API_JOBS_INT_H
#define RK_API_JOBS_INT_H

#include "dataset_jsonl.h"
#include "jobs.h"

struct dataset_info {
    char *jsonl; /* malloc'd */
    size_t len;
    size_t n_examples, n_tokens, n_targets;
    char training_file[32];
    bool prompts; /* set before parse_dataset: an observer job's prompts-only lines */
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
bool validate_jsonl(struct rk_http_req *r, struct rk_tjobs *js, const char *param,
                    const char *text, size_t len, struct dataset_info *di);
bool parse_dataset(struct rk_http_req *r, struct rk_tjobs *js, json_t *body,
                   struct dataset_info *di);
bool parse_hparams(struct rk_http_req *r, struct rk_tjobs *js, json_t *o,
                   const struct dataset_info *di, struct rk_tjob_hparams *hp,
                   bool *steps_given);
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

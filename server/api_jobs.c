/*
 * api_jobs.c - tuning jobs over HTTP (jobs.c does the work). This file holds
 * what the routes share: request parsing (hyperparameters through the
 * rk_hparams() table, methods through the method table), dataset checks and
 * the job objects; the routes are in api_tune.c (native, SSE), api_files.c
 * (+ api_multipart.c) and api_finetune.c:
 *
 *   POST /tune, GET /jobs, GET /jobs/{id}, GET /jobs/{id}/events (SSE),
 *   POST /jobs/{id}/cancel
 *   POST /v1/files (multipart/form-data, purpose "fine-tune"), GET /v1/files,
 *   GET|DELETE /v1/files/{id}, GET /v1/files/{id}/content
 *   POST|GET /v1/fine_tuning/jobs, GET /v1/fine_tuning/jobs/{id},
 *   POST /v1/fine_tuning/jobs/{id}/cancel, GET /v1/fine_tuning/jobs/{id}/events
 *
 * Every handler runs on the loop thread. Datasets are validated before a job
 * exists (JSONL errors name the line), so a queued job can only fail for
 * reasons found while it runs. A job or file of another tenant answers
 * exactly like a missing one (404). docs/JOBS.md is the contract.
 *
 * DESIGN. A submit (POST /tune, POST /v1/fine_tuning/jobs) or an upload
 * (POST /v1/files) runs in two halves. On the loop thread the handler reads
 * the request: fields, types, ranges, the dataset's text (or the training
 * file's id); nothing there touches the disk. It then packs what the rest
 * needs into a struct job_task (which owns its copy of the text) and hands
 * it to libuv's thread pool (rk_http_offload) with the request suspended.
 * There task_run reads the training file, parses and tokenises the dataset
 * once (the checks name the line), resolves what depends on it (epochs to
 * steps, init_state) and writes the job or file with fsyncs
 * (rk_tjobs_submit, rk_files_add, both thread-safe). Back on the loop thread
 * the handler is called again, finds the finished task in r->user and only
 * answers. A job is acknowledged only after its files are durable; a write
 * that fails leaves nothing and answers its error. The parsed dataset goes
 * to the job itself (rk_tjob_new.ds), so the worker does not tokenise it a
 * second time; why in memory and not on disk: see "Datasets" in jobs.c. If
 * the client leaves while the task runs, the task still completes (the job
 * exists, as after a lost answer) and its memory is freed when it is done.
 */
#include "api_jobs_int.h"
#include "rl_data.h"
#include "json_read.h"

#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

/* The table the request's server works on (srv->tjobs). */
struct rk_tjobs *api_tjobs_of(struct rk_http_req *r)
{
    rk_tjobs_attach_loop(r->srv->tjobs);
    return r->srv->tjobs;
}

/* --- request parsing ---------------------------------------------------------- */

/* The jobs API reads its fields with the shared readers (json_read.h), so a
 * bad value earns the same code here as on the generation routes. */
bool api_get_num(struct rk_http_req *r, json_t *o, const char *key, double lo, double hi,
                 bool lo_open, double *out)
{
    return rk_json_num(r, o, key, lo, hi, lo_open, out);
}

bool api_get_str(struct rk_http_req *r, json_t *o, const char *key, const char **out)
{
    return rk_json_str(r, o, key, 0, SIZE_MAX, out);
}

/* Prepare a 400 unknown_parameter naming the first key of `o` not in
 * `allowed` ("... in <where>"); false then. */
bool api_only_keys(struct rk_http_req *r, json_t *o, const char *const *allowed, const char *where)
{
    return api_only_keys_or(r, o, allowed, NULL, where);
}

/* only_keys, where a key is also allowed when `also(key)` is true. */
bool api_only_keys_or(struct rk_http_req *r, json_t *o, const char *const *allowed,
                  bool (*also)(const char *key), const char *where)
{
    const char *k = rk_json_unknown_key(o, allowed, also);
    if (k)
        rk_field_fail(r, RK_FIELD_UNKNOWN, k, "unknown field \"%s\" in %s", k, where);
    return !k;
}

/* True when `key` is a hyperparameter of POST /tune (an RK_HP_JOB entry of
 * rk_hparams(); top level or in "hyperparameters"). */
bool is_job_hparam(const char *key)
{
    const struct rk_hparam *h = rk_hparam_find(key);
    return h && (h->where & RK_HP_JOB);
}

/* The method called `name`, or a 400 that lists the known ones. */
const struct rk_tune_method *method_or_400(struct rk_http_req *r, const char *name,
                                           const char *param)
{
    const struct rk_tune_method *m = rk_tune_method_find(name);
    if (!m) {
        char names[256];
        rk_tune_method_names(names, sizeof names);
        rk_field_fail(r, RK_FIELD_INVALID_VALUE, param, "unknown method '%s' (known: %s)", name,
                      names);
    }
    return m;
}

/* Sequences that train, for an epoch count (mirrors rk_dataset_split). */
static size_t n_train_of(size_t n, double val_split)
{
    if (!(val_split > 0) || n < 2)
        return n;
    size_t v = (size_t)llround(val_split * (double)n);
    if (v < 1)
        v = 1;
    if (v >= n)
        v = n - 1;
    return n - v;
}


/* --- submits and uploads on the thread pool ------------------------------------ */

static void task_fail(struct job_task *t, int status, const char *code, const char *param,
                      const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void task_fail(struct job_task *t, int status, const char *code, const char *param,
                      const char *fmt, ...)
{
    t->rc = RK_EINVAL;
    t->status = status;
    snprintf(t->code, sizeof t->code, "%s", code);
    t->err_param = param;
    char msg[sizeof t->eb.msg]; // the arguments may point into t->eb.msg
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    memcpy(t->eb.msg, msg, sizeof msg);
}

/* An rk error answered through the server's error map. */
static void task_fail_rk(struct job_task *t, int rc, const char *param)
{
    t->rc = rc;
    t->status = 0;
    t->err_param = param;
    if (!t->eb.msg[0])
        snprintf(t->eb.msg, sizeof t->eb.msg, "%s", rk_strerror(rc));
}

/* A dataset reader's failure rc as the task's error (always false): 503 out
 * of memory, else 400 dataset_limit (a limit) or invalid_dataset with the
 * reader's message. */
static bool dataset_fail(struct job_task *t, int rc, const char *param)
{
    if (rc == RK_ENOMEM)
        task_fail(t, 503, "enomem", NULL, "out of memory");
    else
        task_fail(t, 400, rc == RK_ERANGE ? "dataset_limit" : "invalid_dataset", param, "%s",
                  t->eb.msg[0] ? t->eb.msg : rk_strerror(rc));
    return false;
}

/* Parse and check the JSONL exactly as the worker would read it; on success
 * *out holds the dataset. */
static bool task_parse(struct job_task *t, struct rk_dataset **out)
{
    const struct rk_tjobs_limits *lim = rk_tjobs_limits(t->js);
    const char *param = t->param;
    if (t->len > lim->dataset_bytes_max) {
        task_fail(t, 413, "dataset_too_large", param, "the dataset has %zu bytes; the limit is %zu",
                  t->len, lim->dataset_bytes_max);
        return false;
    }
    struct rk_jsonl_limits jl = {lim->dataset_bytes_max, lim->examples_max, lim->seq_tokens_max};
    struct rk_dataset *ds = NULL;
    if (t->kind == TASK_JOB && !strcmp(t->hp.method, rk_method_observer.name)) {
        // Prompts only: the worker asks the teacher for the rest, so submit
        // keeps no dataset (*out stays NULL).
        char **pr = NULL;
        int rc = rk_jsonl_prompts(t->text ? t->text : "", t->len, t->tok, &jl, &pr,
                                  &t->n_examples, &t->n_prompt_tokens, &t->eb);
        rk_jsonl_prompts_free(pr, t->n_examples);
        if (rc != RK_OK)
            return dataset_fail(t, rc, param);
        *out = NULL;
        return true;
    }
    if (t->kind == TASK_JOB && !strcmp(t->hp.method, rk_method_rl.name)) {
        // Prompts with optional checkers; samples are made while tuning.
        struct rk_rl_data *d = NULL;
        int rc = rk_rl_data_parse(t->text ? t->text : "", t->len, t->tok, &jl,
                                  t->hp.tune.rl_max_tokens, &d, &t->eb);
        if (rc != RK_OK)
            return dataset_fail(t, rc, param);
        t->n_examples = d->n;
        t->n_prompt_tokens = 0;
        for (size_t i = 0; i < d->n; i++)
            t->n_prompt_tokens += d->n_tokens[i];
        size_t unchecked = d->n - d->n_checked;
        rk_rl_data_free(d);
        if (unchecked && !t->judge) {
            task_fail(t, 400, "judge_not_configured", param,
                      "%zu prompts have neither \"answer\" nor \"regex\", and no judge is "
                      "configured on this server (--judge-url) to score their samples",
                      unchecked);
            return false;
        }
        *out = NULL;
        return true;
    }
    int rc = rk_dataset_create(&ds);
    if (rc == RK_OK)
        rc = rk_jsonl_parse(t->text ? t->text : "", t->len, t->tok, &jl, ds, &t->eb);
    if (rc != RK_OK) {
        rk_dataset_free(ds);
        return dataset_fail(t, rc, param);
    }
    t->n_examples = rk_dataset_len(ds);
    if (t->n_examples == 0) {
        rk_dataset_free(ds);
        task_fail(t, 400, "invalid_dataset", param,
                  "the dataset has no training examples ({\"text\"}, {\"prompt\","
                  "\"completion\"} or {\"messages\"} lines)");
        return false;
    }
    if (rk_dataset_vocab_used(ds) > t->n_vocab) {
        rk_dataset_free(ds);
        task_fail(t, 400, "invalid_dataset", param, "token ids exceed the model's vocabulary");
        return false;
    }
    *out = ds;
    return true;
}

/* Epochs become steps once the number of examples is known. */
static bool task_resolve_epochs(struct job_task *t)
{
    struct rk_tjob_hparams *hp = &t->hp;
    if (!(hp->epochs > 0))
        return true;
    long steps_max = rk_tjobs_limits(t->js)->steps_max;
    // rl has no validation split: an epoch is a pass over every prompt
    size_t n_train = !strcmp(hp->method, rk_method_rl.name)
                         ? t->n_examples : n_train_of(t->n_examples, hp->tune.val_split);
    double s = ceil(hp->epochs * (double)n_train / (double)hp->tune.batch);
    if (s > (double)steps_max) {
        task_fail(t, 400, "too_many_steps", "epochs",
                  "%g epochs of %zu examples in batches of %d is %.0f steps; the limit is %ld",
                  hp->epochs, t->n_examples, hp->tune.batch, s, steps_max);
        return false;
    }
    hp->tune.steps = s < 1 ? 1 : (long)s;
    return true;
}

/* The whole submit or upload, on a pool thread: read the training file,
 * parse and check the dataset, resolve what depends on it, and write the job
 * or file durably. Touches only the task and thread-safe modules (jobs table,
 * state store). */
static void task_run(void *arg)
{
    struct job_task *t = arg;
    struct rk_dataset *ds = NULL;
    if (t->training_file[0]) {
        void *buf = NULL;
        size_t len = 0;
        int rc = rk_files_read(t->js, t->tenant, t->training_file, &buf, &len, &t->eb);
        if (rc == RK_ENOTFOUND) { // deleted since the handler looked
            task_fail(t, 404, "file_not_found", "training_file", "file '%s' does not exist",
                      t->training_file);
            return;
        }
        if (rc != RK_OK) {
            task_fail_rk(t, rc, "training_file");
            return;
        }
        t->text = t->text_mem = buf;
        t->len = len;
    }
    if (!task_parse(t, &ds))
        return;
    if (t->kind == TASK_FILE) {
        rk_dataset_free(ds);
        int rc = rk_files_add(t->js, t->tenant, t->filename, t->purpose, t->text, t->len,
                              t->n_examples, &t->file, &t->eb);
        if (rc != RK_OK)
            task_fail_rk(t, rc, "file");
        return;
    }
    if (!task_resolve_epochs(t)) {
        rk_dataset_free(ds);
        return;
    }
    if (t->hp.init_state[0]) {
        struct rk_state_ref *ref = NULL;
        if (rk_store_get(t->store, t->tenant, t->hp.init_state, &ref, NULL) != RK_OK) {
            rk_dataset_free(ds);
            task_fail(t, 404, "state_not_found", "init_state", "state '%s' does not exist",
                      t->hp.init_state);
            return;
        }
        rk_state_ref_release(ref);
    }
    struct rk_tjob_new nj = {.tenant = t->tenant, .output_state = t->output_state,
                             .training_file = t->training_file, .suffix = t->suffix,
                             .openai = t->openai, .hp = &t->hp, .data = t->text, .len = t->len,
                             .n_examples = t->n_examples,
                             .n_tokens = ds ? rk_dataset_n_tokens(ds) : t->n_prompt_tokens,
                             .n_targets = rk_dataset_n_targets(ds), .ds = ds,
                             .eval_task = t->eval_task};
    int rc = rk_tjobs_submit(t->js, &nj, &t->view, &t->eb); // takes ds
    if (rc != RK_OK)
        task_fail_rk(t, rc, NULL);
}

static void task_free(void *arg)
{
    struct job_task *t = arg;
    if (t) {
        free(t->text_mem);
        free(t->eval_task);
    }
    free(t);
}

struct job_task *api_task_new(struct rk_http_req *r, enum job_task_kind kind,
                              struct dataset_info *di, const char *param)
{
    struct job_task *t = calloc(1, sizeof *t);
    if (!t) {
        rk_http_error(r, 503, "enomem", NULL, "out of memory");
        return NULL;
    }
    t->kind = kind;
    t->js = api_tjobs_of(r);
    t->store = r->srv->store;
    t->tok = r->srv->tok;
    t->n_vocab = (uint32_t)rk_model_n_vocab(r->srv->model);
    t->param = param;
    snprintf(t->tenant, sizeof t->tenant, "%s", r->tenant);
    if (di) {
        t->text = t->text_mem = di->jsonl; // taken
        t->len = di->len;
        di->jsonl = NULL;
        snprintf(t->training_file, sizeof t->training_file, "%s", di->training_file);
    }
    return t;
}

void api_task_start(struct rk_http_req *r, struct job_task *t)
{
    r->user = t;
    r->user_free = task_free;
    rk_http_offload(r, task_run, t); // on failure a 503 is prepared
}

struct job_task *api_task_done(struct rk_http_req *r)
{
    return r->user_free == task_free && !r->offload ? r->user : NULL;
}

bool api_task_answer_error(struct rk_http_req *r, const struct job_task *t)
{
    if (t->rc == RK_OK)
        return false;
    if (t->status)
        rk_http_error(r, t->status, t->code, t->err_param, "%s", t->eb.msg);
    else
        rk_http_error_rk(r, t->rc, t->err_param, t->eb.msg);
    return true;
}

/* Dataset from "dataset" (array of records or JSONL string) or "training_file". */
bool parse_dataset(struct rk_http_req *r, struct rk_tjobs *js, json_t *body,
                   struct dataset_info *di)
{
    json_t *d = json_object_get(body, "dataset");
    const char *fid = NULL;
    if (!api_get_str(r, body, "training_file", &fid))
        return false;
    if ((d && !json_is_null(d)) == (fid != NULL)) {
        rk_field_fail(r, RK_FIELD_INVALID_VALUE, "dataset",
                      "give exactly one of \"dataset\" (an array of records or a JSONL string) "
                      "and \"training_file\" (an uploaded file id)");
        return false;
    }
    if (fid) {
        // The file is read (and checked) on the thread pool (task_run).
        struct rk_tfile f;
        if (rk_files_get(js, r->tenant, fid, &f) != RK_OK) {
            rk_http_error(r, 404, "file_not_found", "training_file", "file '%s' does not exist",
                          fid);
            return false;
        }
        snprintf(di->training_file, sizeof di->training_file, "%s", fid);
        return true;
    } else if (json_is_string(d)) {
        di->len = json_string_length(d);
        di->jsonl = malloc(di->len + 1);
        if (di->jsonl)
            memcpy(di->jsonl, json_string_value(d), di->len + 1);
    } else if (json_is_array(d)) {
        struct rk_buf b = {0};
        size_t i;
        json_t *rec;
        json_array_foreach(d, i, rec) {
            if (!json_is_object(rec)) {
                rk_buf_free(&b);
                rk_http_error(r, 400, "invalid_dataset", "dataset",
                              "line %zu: each record must be a JSON object", i + 1);
                return false;
            }
            char *s = json_dumps(rec, JSON_COMPACT);
            if (!s) {
                rk_buf_free(&b);
                rk_http_error(r, 503, "enomem", NULL, "out of memory");
                return false;
            }
            rk_buf_puts(&b, s);
            rk_buf_puts(&b, "\n");
            free(s);
        }
        di->jsonl = b.p ? b.p : strdup("");
        di->len = b.len;
    } else {
        rk_http_error(r, 400, "invalid_dataset", "dataset",
                      "\"dataset\" must be an array of records or a JSONL string");
        return false;
    }
    if (!di->jsonl) {
        rk_http_error(r, 503, "enomem", NULL, "out of memory");
        return false;
    }
    const struct rk_tjobs_limits *lim = rk_tjobs_limits(js);
    if (di->len > lim->dataset_bytes_max) {
        rk_http_error(r, 413, "dataset_too_large", "dataset",
                      "the dataset has %zu bytes; the limit is %zu", di->len,
                      lim->dataset_bytes_max);
        return false;
    }
    return true;
}

/* The server limit that lowers an entry's upper bound (0: none). */
static double cap_of(const struct rk_hparam *h, const struct rk_tjobs_limits *lim)
{
    return h->cap == RK_HP_CAP_STEPS   ? (double)lim->steps_max
           : h->cap == RK_HP_CAP_BATCH ? (double)lim->batch_max
                                       : 0;
}

/* One field entry of the table from `o` into hp->tune (absent or null:
 * keep). The codes are those of json_read.h: a wrong JSON type (3.0 for an
 * integer too) is invalid_type, a number outside its range out_of_range. */
static bool get_hparam(struct rk_http_req *r, json_t *o, const struct rk_hparam *h,
                       const struct rk_tjobs_limits *lim, struct rk_tjob_hparams *hp)
{
    json_t *x = json_object_get(o, h->name);
    if (!x || json_is_null(x))
        return true;
    double v = NAN;
    const char *want = h->type == RK_HP_BOOL   ? "true or false"
                       : h->type == RK_HP_ENUM ? "a string"
                       : h->type == RK_HP_INT  ? "an integer"
                                               : "a number";
    bool typed = h->type == RK_HP_BOOL   ? json_is_boolean(x)
                 : h->type == RK_HP_ENUM ? json_is_string(x)
                 : h->type == RK_HP_INT  ? json_is_integer(x)
                                         : json_is_number(x);
    if (!typed) {
        rk_field_fail(r, RK_FIELD_INVALID_TYPE, h->name, "\"%s\" must be %s", h->name, want);
        return false;
    }
    if (h->type == RK_HP_BOOL)
        v = json_is_true(x);
    else if (h->type == RK_HP_ENUM) {
        for (int k = 0; h->choices[k]; k++)
            if (!strcmp(json_string_value(x), h->choices[k]))
                v = k;
    } else
        v = json_number_value(x);
    double cap = cap_of(h, lim);
    if (rk_hparam_check(h, v, cap) != RK_OK) {
        char range[96];
        rk_hparam_range_str(h, cap, range, sizeof range);
        rk_field_fail(r, h->type == RK_HP_ENUM ? RK_FIELD_INVALID_VALUE : RK_FIELD_OUT_OF_RANGE,
                      h->name, "\"%s\" must be %s in %s", h->name,
                      h->type == RK_HP_ENUM ? "one" : want, range);
        return false;
    }
    rk_hparam_set(h, &hp->tune, v);
    return true;
}

/* Hyperparameters from `o` (already checked for unknown keys); `hp` holds the
 * defaults on entry. The field entries of the table first, then the ones the
 * server resolves: giving lr alone sets lr_final = lr / 100; epochs become
 * steps; init_state must name a stored state. */
bool parse_hparams(struct rk_http_req *r, struct rk_tjobs *js, json_t *o,
                   struct rk_tjob_hparams *hp, bool *steps_given)
{
    const struct rk_tjobs_limits *lim = rk_tjobs_limits(js);
    size_t n;
    const struct rk_hparam *t = rk_hparams(&n);
    *steps_given = json_object_get(o, "steps") && !json_is_null(json_object_get(o, "steps"));
    bool lr_given = json_object_get(o, "lr") != NULL;
    bool lr_final_given = json_object_get(o, "lr_final") != NULL;
    double epochs = 0;
    for (size_t i = 0; i < n; i++) {
        const struct rk_hparam *h = &t[i];
        if (!(h->where & RK_HP_JOB))
            continue;
        if (!strcmp(h->name, "epochs")) {
            json_t *x = json_object_get(o, "epochs");
            if (x && !json_is_null(x)) {
                if (!json_is_number(x)) {
                    rk_field_fail(r, RK_FIELD_INVALID_TYPE, "epochs", "\"epochs\" must be a number");
                    return false;
                }
                epochs = json_number_value(x);
                if (rk_hparam_check(h, epochs, 0) != RK_OK) {
                    rk_field_fail(r, RK_FIELD_OUT_OF_RANGE, "epochs",
                                  "\"epochs\" must be a number in (0, 1e+06]");
                    return false;
                }
            }
            if (epochs > 0 && *steps_given) {
                rk_field_fail(r, RK_FIELD_INVALID_VALUE, "epochs",
                              "give \"steps\" or \"epochs\", not both");
                return false;
            }
        } else if (!strcmp(h->name, "init_state")) {
            json_t *x = json_object_get(o, "init_state");
            if (x && !json_is_null(x) && !json_is_string(x)) {
                rk_field_fail(r, RK_FIELD_INVALID_TYPE, "init_state",
                              "\"init_state\" must be a string");
                return false;
            }
            const char *init = json_string_value(x);
            if (init && *init) {
                // Whether it exists is checked with the dataset, off the loop
                // thread (task_run): the state may have to be read from disk.
                if (!rk_state_id_valid(init)) {
                    rk_http_error(r, 404, "state_not_found", "init_state",
                                  "state '%s' does not exist", init);
                    return false;
                }
                snprintf(hp->init_state, sizeof hp->init_state, "%s", init);
            }
        } else if (!get_hparam(r, o, h, lim, hp)) {
            return false;
        }
    }
    if (lr_given && !lr_final_given)
        hp->tune.lr_final = hp->tune.lr * 0.01;
    if (epochs > 0)
        hp->epochs = epochs; // steps follow once the dataset is counted (task_resolve_epochs)
    return true;
}

void hparams_default(struct rk_tjobs *js, struct rk_tjob_hparams *hp)
{
    rk_tjob_hparams_default(hp, rk_tjobs_limits(js)->checkpoint_every);
}

/* --- responses ------------------------------------------------------------------ */

static int64_t wall_s_now(void) { return (int64_t)time(NULL); }

static json_t *num(double x) { return isfinite(x) ? json_real(x) : json_null(); }
static json_t *ms_or_null(int64_t ms) { return ms ? json_integer((json_int_t)ms) : json_null(); }
static json_t *s_or_null(int64_t ms) { return ms ? json_integer((json_int_t)(ms / 1000)) : json_null(); }

static double eta_of(const struct rk_tjob_view *v)
{
    if (v->status != RK_TJOB_RUNNING || v->run_steps <= 0)
        return NAN;
    return v->run_elapsed_s / (double)v->run_steps * (double)(v->steps - v->step);
}

static json_t *hparams_json(const struct rk_tjob_hparams *h)
{
    json_t *o = rk_tjob_hparams_json(h, false);
    if (o)
        json_object_del(o, "method"); /* a field of the job itself */
    return o;
}

json_t *job_native(struct rk_srv *srv, const struct rk_tjob_view *v)
{
    if (v->eval)
        return job_eval(srv, v);
    char model[200];
    snprintf(model, sizeof model, "%s:%s", srv->model_name, v->output_state);
    json_t *o = json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:o,s:I}", "id", v->id, "object", "tune.job",
                          "status", rk_tjob_status_name(v->status), "method", v->hp.method,
                          "output_state", v->output_state, "model", model, "created_at",
                          s_or_null(v->created_ms), "created_ms", (json_int_t)v->created_ms);
    if (!o)
        return NULL;
    json_object_set_new(o, "started_ms", ms_or_null(v->started_ms));
    json_object_set_new(o, "finished_ms", ms_or_null(v->finished_ms));
    json_object_set_new(o, "step", json_integer(v->step));
    json_object_set_new(o, "steps", json_integer(v->steps));
    json_object_set_new(o, "loss", num(v->loss));
    json_object_set_new(o, "val_loss", num(v->val_loss));
    json_object_set_new(o, "val_loss_init", num(v->val_loss_init));
    json_object_set_new(o, "val_loss_best", num(v->val_loss_best));
    json_object_set_new(o, "grad_norm", num(v->grad_norm));
    json_object_set_new(o, "lr", num(v->lr_now));
    json_object_set_new(o, "tokens_per_s", num(v->tokens_per_s));
    json_object_set_new(o, "elapsed_s", num(v->status == RK_TJOB_RUNNING ? v->run_elapsed_s : NAN));
    json_object_set_new(o, "eta_s", num(eta_of(v)));
    json_object_set_new(o, "queue_position", v->queue_pos >= 0 ? json_integer(v->queue_pos)
                                                               : json_null());
    json_object_set_new(o, "resumed_from_step", json_integer(v->resumed_from));
    json_object_set_new(o, "attempts", json_integer(v->attempts));
    json_object_set_new(o, "trained_tokens", json_integer((json_int_t)v->trained_tokens));
    json_object_set_new(o, "dataset",
                        json_pack("{s:I,s:I,s:I,s:o}", "examples", (json_int_t)v->n_examples,
                                  "tokens", (json_int_t)v->n_tokens, "targets",
                                  (json_int_t)v->n_targets, "training_file",
                                  v->training_file[0] ? json_string(v->training_file)
                                                      : json_null()));
    json_object_set_new(o, "hyperparameters", hparams_json(&v->hp));
    if (v->has_eval_task) {
        json_t *etr = v->eval_task_results ? json_loads(v->eval_task_results, 0, NULL) : NULL;
        json_object_set_new(o, "eval_task", etr ? etr : json_null());
    }
    json_object_set_new(o, "error", v->status == RK_TJOB_FAILED
                                        ? json_pack("{s:s,s:s}", "code", v->err_code, "message",
                                                    v->err_msg)
                                        : json_null());
    json_object_set_new(o, "result", v->status == RK_TJOB_SUCCEEDED
                                         ? json_pack("{s:s,s:I,s:s}", "state", v->output_state,
                                                     "version", (json_int_t)v->result_version,
                                                     "model", model)
                                         : json_null());
    return o;
}

static const char *openai_status(const struct rk_tjob_view *v)
{
    if (v->status == RK_TJOB_RUNNING && v->loading)
        return "validating_files";
    return rk_tjob_status_name(v->status);
}

json_t *job_openai(struct rk_srv *srv, const struct rk_tjob_view *v)
{
    char base[200], ft[200], org[96];
    if (v->hp.init_state[0])
        snprintf(base, sizeof base, "%s:%s", srv->model_name, v->hp.init_state);
    else
        snprintf(base, sizeof base, "%s", srv->model_name);
    snprintf(ft, sizeof ft, "%s:%s", srv->model_name, v->output_state);
    snprintf(org, sizeof org, "org-%s", v->tenant);
    json_t *hp = json_pack("{s:o,s:i,s:f}", "n_epochs",
                           isfinite(v->hp.epochs) ? json_real(v->hp.epochs) : json_string("auto"),
                           "batch_size", v->hp.tune.batch, "learning_rate_multiplier",
                           v->hp.lr_multiplier);
    if (isfinite(v->hp.epochs) && v->hp.epochs == floor(v->hp.epochs))
        json_object_set_new(hp, "n_epochs", json_integer((json_int_t)v->hp.epochs));
    double eta = eta_of(v);
    json_t *o = json_pack(
        "{s:s,s:s,s:s,s:I,s:o,s:o,s:s,s:[],s:s,s:n,s:o,s:o,s:o,s:o,s:I,s:o,s:[],s:n}", "object",
        "fine_tuning.job", "id", v->id, "model", base, "created_at",
        (json_int_t)(v->created_ms / 1000), "finished_at", s_or_null(v->finished_ms),
        "fine_tuned_model", v->status == RK_TJOB_SUCCEEDED ? json_string(ft) : json_null(),
        "organization_id", org, "result_files", "status", openai_status(v), "validation_file",
        "training_file", v->training_file[0] ? json_string(v->training_file) : json_null(),
        "hyperparameters", hp, "trained_tokens",
        v->status == RK_TJOB_SUCCEEDED ? json_integer((json_int_t)v->trained_tokens)
                                       : json_null(),
        "error",
        v->status == RK_TJOB_FAILED
            ? json_pack("{s:s,s:s,s:n}", "code", v->err_code, "message", v->err_msg, "param")
            : json_null(),
        "seed", (json_int_t)v->hp.tune.seed, "estimated_finish",
        isfinite(eta) ? json_integer((json_int_t)(wall_s_now() + (int64_t)eta)) : json_null(),
        "integrations", "metadata");
    if (!o)
        return NULL;
    json_object_set_new(o, "user_provided_suffix",
                        v->suffix[0] ? json_string(v->suffix) : json_null());
    // "supervised" is OpenAI's name for standard state tuning.
    const char *type = strcmp(v->hp.method, "standard") ? v->hp.method : "supervised";
    json_object_set_new(o, "method",
                        json_pack("{s:s,s:{s:O}}", "type", type, type, "hyperparameters",
                                  json_object_get(o, "hyperparameters")));
    // Native progress, for clients that want it.
    json_object_set_new(o, "step", json_integer(v->step));
    json_object_set_new(o, "steps", json_integer(v->steps));
    json_object_set_new(o, "output_state", json_string(v->output_state));
    return o;
}


void rk_api_jobs_register(struct rk_srv *srv, struct rk_tjobs *js)
{
    srv->tjobs = js;
    static const struct rk_route routes[] = {
        {"POST", "/tune", h_tune, 0, NULL},
        {"POST", "/eval", h_eval, 0, NULL},
        {"POST", "/eval/jobs", h_eval_job, 0, NULL},
        {"GET", "/jobs", h_jobs, 0, NULL},
        {"GET", "/jobs/{id}", h_job, 0, NULL},
        {"GET", "/jobs/{id}/events", h_events, 0, NULL},
        {"POST", "/jobs/{id}/cancel", h_cancel, 0, NULL},
        {"POST", "/v1/files", h_file_upload, RK_ROUTE_BIG_BODY, NULL},
        {"GET", "/v1/files", h_files, 0, NULL},
        {"GET", "/v1/files/{id}", h_file, 0, NULL},
        {"DELETE", "/v1/files/{id}", h_file_delete, 0, NULL},
        {"GET", "/v1/files/{id}/content", h_file_content, 0, NULL},
        {"POST", "/v1/fine_tuning/jobs", h_ft_create, 0, NULL},
        {"GET", "/v1/fine_tuning/jobs", h_ft_list, 0, NULL},
        {"GET", "/v1/fine_tuning/jobs/{id}", h_ft_get, 0, NULL},
        {"POST", "/v1/fine_tuning/jobs/{id}/cancel", h_ft_cancel, 0, NULL},
        {"GET", "/v1/fine_tuning/jobs/{id}/events", h_ft_events, 0, NULL},
    };
    rk_routes_add(srv, routes, sizeof routes / sizeof routes[0]);
}

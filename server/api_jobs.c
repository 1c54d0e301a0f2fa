/*
 * api_jobs.c - tuning jobs over HTTP (jobs.c does the work):
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
 * reasons found while it runs; a large dataset is validated on the thread
 * pool while the request waits, and its handler then runs a second time. A job or file of another tenant answers
 * exactly like a missing one (404). docs/JOBS.md is the contract.
 */
#include "dataset_jsonl.h"
#include "jobs.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

/* One `rwkvd serve` per process: the table the routes work on. */
static struct rk_jobs *g_jobs;

static struct rk_jobs *jobs_of(struct rk_http_req *r)
{
    rk_jobs_attach_loop(g_jobs);
    (void)r;
    return g_jobs;
}

/* --- request parsing ---------------------------------------------------------- */

static bool get_num(struct rk_http_req *r, json_t *o, const char *key, double lo, double hi,
                    bool lo_open, double *out)
{
    json_t *x = json_object_get(o, key);
    if (!x || json_is_null(x))
        return true;
    double d = json_is_number(x) ? json_number_value(x) : NAN;
    if (!(d >= lo && d <= hi) || (lo_open && d == lo)) {
        rk_http_error(r, 400, "invalid_value", key, "\"%s\" must be a number in %s%g, %g]", key,
                      lo_open ? "(" : "[", lo, hi);
        return false;
    }
    *out = d;
    return true;
}

static bool get_str(struct rk_http_req *r, json_t *o, const char *key, const char **out)
{
    json_t *x = json_object_get(o, key);
    if (!x || json_is_null(x))
        return true;
    if (!json_is_string(x)) {
        rk_http_error(r, 400, "invalid_value", key, "\"%s\" must be a string", key);
        return false;
    }
    *out = json_string_value(x);
    return true;
}

static bool only_keys(struct rk_http_req *r, json_t *o, const char *const *allowed, const char *where)
{
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v) {
        bool ok = false;
        for (int i = 0; allowed[i]; i++)
            ok |= !strcmp(k, allowed[i]);
        if (!ok) {
            rk_http_error(r, 400, "unknown_parameter", k, "unknown field \"%s\" in %s", k, where);
            return false;
        }
    }
    return true;
}

/* only_keys, where a key is also allowed when `also(key)` is true. */
static bool only_keys_or(struct rk_http_req *r, json_t *o, const char *const *allowed,
                         bool (*also)(const char *key), const char *where)
{
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v) {
        bool ok = also(k);
        for (int i = 0; allowed[i]; i++)
            ok |= !strcmp(k, allowed[i]);
        if (!ok) {
            rk_http_error(r, 400, "unknown_parameter", k, "unknown field \"%s\" in %s", k, where);
            return false;
        }
    }
    return true;
}

/* True when `key` is a hyperparameter of POST /tune (an RK_HP_JOB entry of
 * rk_hparams(); top level or in "hyperparameters"). */
static bool is_job_hparam(const char *key)
{
    const struct rk_hparam *h = rk_hparam_find(key);
    return h && (h->where & RK_HP_JOB);
}

/* The method called `name`, or a 400 that lists the known ones. */
static const struct rk_tune_method *method_or_400(struct rk_http_req *r, const char *name,
                                                  const char *param)
{
    const struct rk_tune_method *m = rk_tune_method_find(name);
    if (!m) {
        char names[256];
        rk_tune_method_names(names, sizeof names);
        rk_http_error(r, 400, "invalid_value", param, "unknown method '%s' (known: %s)", name,
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

struct dataset_info {
    char *jsonl; /* malloc'd */
    size_t len;
    size_t n_examples, n_tokens, n_targets;
    char training_file[32];
};

/* One dataset check: the JSONL text, and what parsing it found. */
struct vcheck {
    const char *text;
    char *owned; /* the copy an offloaded check works on */
    size_t len;
    const struct rk_tokenizer *tok;
    struct rk_jsonl_limits jl;
    bool done;
    int rc;
    struct rk_errbuf eb;
    size_t n_examples, n_tokens, n_targets;
    uint32_t vocab;
};

/* Datasets from this size on are checked on the thread pool (tokenising
 * 64 MiB takes about a second, which the loop thread must not spend). */
#define VCHECK_OFFLOAD_BYTES ((size_t)256 << 10)

static void vcheck_run(void *arg)
{
    struct vcheck *vc = arg;
    struct rk_dataset *ds = NULL;
    vc->rc = rk_dataset_create(&ds);
    if (vc->rc == RK_OK)
        vc->rc = rk_jsonl_parse(vc->text, vc->len, vc->tok, &vc->jl, ds, &vc->eb);
    if (vc->rc == RK_OK) {
        vc->n_examples = rk_dataset_len(ds);
        vc->n_tokens = rk_dataset_n_tokens(ds);
        vc->n_targets = rk_dataset_n_targets(ds);
        vc->vocab = rk_dataset_vocab_used(ds);
    }
    rk_dataset_free(ds);
    vc->done = true;
}

static void vcheck_free(void *p)
{
    struct vcheck *vc = p;
    if (vc)
        free(vc->owned);
    free(vc);
}

/* Validate JSONL text exactly as the worker will read it. A large text is
 * checked on the thread pool: then this returns false with the request
 * suspended and no answer yet, and the handler runs again once the check is
 * done, meeting its result here (the handler must rebuild the same text). */
static bool validate_jsonl(struct rk_http_req *r, struct rk_jobs *js, const char *param,
                           const char *text, size_t len, struct dataset_info *di)
{
    const struct rk_jobs_limits *lim = rk_jobs_limits(js);
    if (len > lim->dataset_bytes_max) {
        rk_http_error(r, 413, "dataset_too_large", param,
                      "the dataset has %zu bytes; the limit is %zu", len, lim->dataset_bytes_max);
        return false;
    }
    struct vcheck local = {0}, *vc = r->user_free == vcheck_free ? r->user : NULL;
    if (vc && !(vc->done && vc->len == len && !memcmp(vc->owned, text, len)))
        vc = NULL; /* not this text (changed meanwhile): check it here */
    if (!vc && len >= VCHECK_OFFLOAD_BYTES && !r->user) {
        vc = calloc(1, sizeof *vc);
        char *copy = malloc(len ? len : 1);
        if (!vc || !copy) {
            free(vc), free(copy);
            rk_http_error(r, 503, "enomem", NULL, "out of memory");
            return false;
        }
        memcpy(copy, text, len);
        *vc = (struct vcheck){.text = copy, .owned = copy, .len = len, .tok = r->srv->tok,
                              .jl = {lim->dataset_bytes_max, lim->examples_max,
                                     lim->seq_tokens_max}};
        r->user = vc;
        r->user_free = vcheck_free;
        rk_http_offload(r, vcheck_run, vc); /* answers 503 itself on failure */
        return false;
    }
    if (!vc) {
        local = (struct vcheck){.text = text, .len = len, .tok = r->srv->tok,
                                .jl = {lim->dataset_bytes_max, lim->examples_max,
                                       lim->seq_tokens_max}};
        vcheck_run(&local);
        vc = &local;
    }
    if (vc->rc != RK_OK) {
        if (vc->rc == RK_ENOMEM)
            rk_http_error(r, 503, "enomem", NULL, "out of memory");
        else
            rk_http_error(r, 400, vc->rc == RK_ERANGE ? "dataset_limit" : "invalid_dataset", param,
                          "%s", vc->eb.msg[0] ? vc->eb.msg : rk_strerror(vc->rc));
        return false;
    }
    di->n_examples = vc->n_examples;
    di->n_tokens = vc->n_tokens;
    di->n_targets = vc->n_targets;
    if (di->n_examples == 0) {
        rk_http_error(r, 400, "invalid_dataset", param,
                      "the dataset has no training examples ({\"text\"}, {\"prompt\","
                      "\"completion\"} or {\"messages\"} lines)");
        return false;
    }
    if (vc->vocab > (uint32_t)rk_model_n_vocab(r->srv->model)) {
        rk_http_error(r, 400, "invalid_dataset", param, "token ids exceed the model's vocabulary");
        return false;
    }
    return true;
}

/* Dataset from "dataset" (array of records or JSONL string) or "training_file". */
static bool parse_dataset(struct rk_http_req *r, struct rk_jobs *js, json_t *body,
                          struct dataset_info *di)
{
    json_t *d = json_object_get(body, "dataset");
    const char *fid = NULL;
    if (!get_str(r, body, "training_file", &fid))
        return false;
    if ((d && !json_is_null(d)) == (fid != NULL)) {
        rk_http_error(r, 400, "invalid_request", "dataset",
                      "give exactly one of \"dataset\" (an array of records or a JSONL string) "
                      "and \"training_file\" (an uploaded file id)");
        return false;
    }
    if (fid) {
        struct rk_tfile f;
        if (rk_files_get(js, r->tenant, fid, &f) != RK_OK) {
            rk_http_error(r, 404, "file_not_found", "training_file", "file '%s' does not exist",
                          fid);
            return false;
        }
        void *buf = NULL;
        size_t len = 0;
        struct rk_errbuf eb = {0};
        int rc = rk_files_read(js, r->tenant, fid, &buf, &len, &eb);
        if (rc != RK_OK) {
            rk_http_error_rk(r, rc, "training_file", eb.msg);
            return false;
        }
        snprintf(di->training_file, sizeof di->training_file, "%s", fid);
        di->jsonl = buf;
        di->len = len;
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
    return validate_jsonl(r, js, fid ? "training_file" : "dataset", di->jsonl, di->len, di);
}

/* The server limit that lowers an entry's upper bound (0: none). */
static double cap_of(const struct rk_hparam *h, const struct rk_jobs_limits *lim)
{
    return h->cap == RK_HP_CAP_STEPS   ? (double)lim->steps_max
           : h->cap == RK_HP_CAP_BATCH ? (double)lim->batch_max
                                       : 0;
}

/* One field entry of the table from `o` into hp->tune (absent or null:
 * keep). Integers may be written as reals with an integral value. */
static bool get_hparam(struct rk_http_req *r, json_t *o, const struct rk_hparam *h,
                       const struct rk_jobs_limits *lim, struct rk_tjob_hparams *hp)
{
    json_t *x = json_object_get(o, h->name);
    if (!x || json_is_null(x))
        return true;
    double v = NAN;
    if (h->type == RK_HP_BOOL) {
        if (!json_is_boolean(x)) {
            rk_http_error(r, 400, "invalid_value", h->name, "\"%s\" must be true or false",
                          h->name);
            return false;
        }
        v = json_is_true(x);
    } else if (h->type == RK_HP_ENUM) {
        for (int k = 0; json_is_string(x) && h->choices[k]; k++)
            if (!strcmp(json_string_value(x), h->choices[k]))
                v = k;
    } else if (json_is_number(x)) {
        v = json_number_value(x);
    }
    double cap = cap_of(h, lim);
    if (rk_hparam_check(h, v, cap) != RK_OK) {
        char range[96];
        rk_hparam_range_str(h, cap, range, sizeof range);
        rk_http_error(r, 400, "invalid_value", h->name, "\"%s\" must be %s in %s", h->name,
                      h->type == RK_HP_INT ? "an integer" : h->type == RK_HP_NUM ? "a number"
                                                                                 : "one",
                      range);
        return false;
    }
    rk_hparam_set(h, &hp->tune, v);
    return true;
}

/* Hyperparameters from `o` (already checked for unknown keys); `hp` holds the
 * defaults on entry. The field entries of the table first, then the ones the
 * server resolves: giving lr alone sets lr_final = lr / 100; epochs become
 * steps; init_state must name a stored state. */
static bool parse_hparams(struct rk_http_req *r, struct rk_jobs *js, json_t *o,
                          const struct dataset_info *di, struct rk_tjob_hparams *hp,
                          bool *steps_given)
{
    const struct rk_jobs_limits *lim = rk_jobs_limits(js);
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
                epochs = json_is_number(x) ? json_number_value(x) : NAN;
                if (rk_hparam_check(h, epochs, 0) != RK_OK) {
                    rk_http_error(r, 400, "invalid_value", "epochs",
                                  "\"epochs\" must be a number in (0, 1e+06]");
                    return false;
                }
            }
            if (epochs > 0 && *steps_given) {
                rk_http_error(r, 400, "invalid_request", "epochs",
                              "give \"steps\" or \"epochs\", not both");
                return false;
            }
        } else if (!strcmp(h->name, "init_state")) {
            json_t *x = json_object_get(o, "init_state");
            if (x && !json_is_null(x) && !json_is_string(x)) {
                rk_http_error(r, 400, "invalid_value", "init_state",
                              "\"init_state\" must be a string");
                return false;
            }
            const char *init = json_string_value(x);
            if (init && *init) {
                struct rk_state_ref *ref = NULL;
                if (!rk_state_id_valid(init) ||
                    rk_store_get(r->srv->store, r->tenant, init, &ref, NULL) != RK_OK) {
                    rk_http_error(r, 404, "state_not_found", "init_state",
                                  "state '%s' does not exist", init);
                    return false;
                }
                rk_state_ref_release(ref);
                snprintf(hp->init_state, sizeof hp->init_state, "%s", init);
            }
        } else if (!get_hparam(r, o, h, lim, hp)) {
            return false;
        }
    }
    if (lr_given && !lr_final_given)
        hp->tune.lr_final = hp->tune.lr * 0.01;
    if (epochs > 0) {
        double s = ceil(epochs * (double)n_train_of(di->n_examples, hp->tune.val_split) /
                        (double)hp->tune.batch);
        if (s > (double)lim->steps_max) {
            rk_http_error(r, 400, "too_many_steps", "epochs",
                          "%g epochs of %zu examples in batches of %d is %.0f steps; the limit "
                          "is %ld",
                          epochs, di->n_examples, hp->tune.batch, s, lim->steps_max);
            return false;
        }
        hp->tune.steps = s < 1 ? 1 : (long)s;
        hp->epochs = epochs;
    }
    return true;
}

static void hparams_default(struct rk_jobs *js, struct rk_tjob_hparams *hp)
{
    rk_tjob_hparams_default(hp, rk_jobs_limits(js)->checkpoint_every);
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

static json_t *job_native(struct rk_srv *srv, const struct rk_tjob_view *v)
{
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

static json_t *job_openai(struct rk_srv *srv, const struct rk_tjob_view *v)
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

/* --- native routes -------------------------------------------------------------- */

static void h_tune(struct rk_http_req *r)
{
    struct rk_jobs *js = jobs_of(r);
    json_t *body = rk_http_body_json(r);
    if (!body)
        return;
    struct dataset_info di = {0};
    static const char *const top[] = {"dataset", "training_file", "method", "output_state",
                                      "hyperparameters", NULL};
    if (!only_keys_or(r, body, top, is_job_hparam, "the request"))
        goto out;
    // Hyperparameters may come at the top level or in "hyperparameters".
    json_t *hpo = json_object_get(body, "hyperparameters");
    json_t *merged = json_object();
    if (hpo && !json_is_object(hpo)) {
        json_decref(merged);
        rk_http_error(r, 400, "invalid_value", "hyperparameters",
                      "\"hyperparameters\" must be an object");
        goto out;
    }
    static const char *const none[] = {NULL};
    if (hpo && !only_keys_or(r, hpo, none, is_job_hparam, "\"hyperparameters\"")) {
        json_decref(merged);
        goto out;
    }
    size_t n_hp;
    const struct rk_hparam *tab = rk_hparams(&n_hp);
    for (size_t i = 0; i < n_hp; i++) {
        const char *key = tab[i].name;
        if (!(tab[i].where & RK_HP_JOB))
            continue;
        json_t *a = json_object_get(body, key), *b = hpo ? json_object_get(hpo, key) : NULL;
        if (a && b) {
            json_decref(merged);
            rk_http_error(r, 400, "invalid_request", key,
                          "\"%s\" is given twice (top level and \"hyperparameters\")", key);
            goto out;
        }
        if (a || b)
            json_object_set(merged, key, a ? a : b);
    }
    const char *method = "standard", *out_state = NULL;
    if (!get_str(r, body, "method", &method) || !get_str(r, body, "output_state", &out_state)) {
        json_decref(merged);
        goto out;
    }
    const struct rk_tune_method *tm = method_or_400(r, method, "method");
    if (!tm) {
        json_decref(merged);
        goto out;
    }
    if (!out_state || !rk_state_id_valid(out_state)) {
        json_decref(merged);
        rk_http_error(r, 400, "invalid_value", "output_state",
                      "\"output_state\" is required and must match ^[a-z0-9][a-z0-9_-]{0,63}$");
        goto out;
    }
    if (!parse_dataset(r, js, body, &di)) {
        json_decref(merged);
        goto out;
    }
    struct rk_tjob_hparams hp;
    hparams_default(js, &hp);
    bool steps_given;
    snprintf(hp.method, sizeof hp.method, "%s", tm->name);
    bool ok = parse_hparams(r, js, merged, &di, &hp, &steps_given);
    json_decref(merged);
    if (!ok)
        goto out;
    struct rk_tjob_new nj = {.tenant = r->tenant, .output_state = out_state,
                             .training_file = di.training_file, .hp = &hp, .data = di.jsonl,
                             .len = di.len, .n_examples = di.n_examples, .n_tokens = di.n_tokens,
                             .n_targets = di.n_targets};
    struct rk_tjob_view v;
    struct rk_errbuf eb = {0};
    int rc = rk_jobs_submit(js, &nj, &v, &eb);
    if (rc != RK_OK) {
        rk_http_error_rk(r, rc, NULL, eb.msg);
        goto out;
    }
    rk_http_json(r, 202, job_native(r->srv, &v));
    if (r->resp) {
        char loc[64];
        snprintf(loc, sizeof loc, "/jobs/%s", v.id);
        MHD_add_response_header(r->resp, "Location", loc);
    }
out:
    free(di.jsonl);
    json_decref(body);
}

static void h_jobs(struct rk_http_req *r)
{
    struct rk_jobs *js = jobs_of(r);
    struct rk_tjob_view *vs = NULL;
    size_t n = 0;
    if (rk_jobs_list(js, r->tenant, false, &vs, &n) != RK_OK) {
        rk_http_error(r, 503, "enomem", NULL, "out of memory");
        return;
    }
    json_t *arr = json_array();
    for (size_t i = 0; i < n; i++)
        json_array_append_new(arr, job_native(r->srv, &vs[i]));
    free(vs);
    rk_http_json(r, 200, json_pack("{s:s,s:o}", "object", "list", "data", arr));
}

static bool job_or_404(struct rk_http_req *r, struct rk_tjob_view *v)
{
    if (rk_jobs_get(jobs_of(r), r->tenant, r->params[0], v) == RK_OK)
        return true;
    rk_http_error(r, 404, "job_not_found", "id", "job '%s' does not exist", r->params[0]);
    return false;
}

static void h_job(struct rk_http_req *r)
{
    struct rk_tjob_view v;
    if (job_or_404(r, &v))
        rk_http_json(r, 200, job_native(r->srv, &v));
}

static void cancel_common(struct rk_http_req *r, bool openai)
{
    struct rk_tjob_view v;
    if (rk_jobs_cancel(jobs_of(r), r->tenant, r->params[0], &v) != RK_OK) {
        rk_http_error(r, 404, "job_not_found", "id", "job '%s' does not exist", r->params[0]);
        return;
    }
    rk_http_json(r, 200, openai ? job_openai(r->srv, &v) : job_native(r->srv, &v));
}

static void h_cancel(struct rk_http_req *r) { cancel_common(r, false); }

/* --- SSE: GET /jobs/{id}/events ------------------------------------------------- */

struct sse {
    struct rk_jobs *js;
    struct rk_srv *srv;
    struct rk_http_req *r; /* NULL once the request is gone */
    struct rk_jobs_follower *f;
    char id[32], tenant[RK_STATE_ID_MAX + 1];
    size_t next;
    struct rk_buf out;
    size_t out_pos;
    bool ka, ended;
    int refs;
};

static void sse_release(struct sse *s)
{
    if (--s->refs > 0)
        return;
    if (s->f)
        rk_jobs_unfollow(s->js, s->f);
    rk_buf_free(&s->out);
    free(s);
}

static void sse_fill(struct sse *s)
{
    struct rk_tjob_ev *ev = NULL;
    size_t n = 0, total = 0;
    bool ended = false;
    if (rk_jobs_events(s->js, s->tenant, s->id, s->next, 256, &ev, &n, &total, &ended) != RK_OK) {
        s->ended = true;
        return;
    }
    for (size_t i = 0; i < n; i++)
        rk_buf_printf(&s->out, "id: %zu\nevent: %s\ndata: %s\n\n", s->next + i,
                      rk_tjob_ev_name(ev[i].type), ev[i].data);
    s->next += n;
    rk_tjob_evs_free(ev, n);
    if (ended && s->next >= total)
        s->ended = true;
    if (!n && s->ka && !s->ended)
        rk_buf_puts(&s->out, ": keepalive\n\n");
    s->ka = false;
}

static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct sse *s = cls;
    (void)pos;
    if (s->out_pos == s->out.len) {
        s->out.len = s->out_pos = 0;
        sse_fill(s);
    }
    if (s->out_pos < s->out.len) {
        size_t n = s->out.len - s->out_pos;
        if (n > max)
            n = max;
        memcpy(buf, s->out.p + s->out_pos, n);
        s->out_pos += n;
        return (ssize_t)n;
    }
    if (s->ended || rk_jobs_loop_closed(s->js) || s->srv->draining)
        return MHD_CONTENT_READER_END_OF_STREAM;
    if (!s->r)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    // Nothing new: wait for the worker's next event (the follower resumes).
    MHD_suspend_connection(s->r->conn);
    s->r->suspended = true;
    return 0;
}

static void sse_resp_free(void *cls) { sse_release(cls); }

static void sse_req_free(void *user)
{
    struct sse *s = user;
    s->r = NULL;
    if (s->f) {
        rk_jobs_unfollow(s->js, s->f);
        s->f = NULL;
    }
    sse_release(s);
}

static void sse_wake(void *user, bool keepalive)
{
    struct sse *s = user;
    if (keepalive)
        s->ka = true;
    if (s->r && s->r->suspended) {
        s->r->suspended = false;
        MHD_resume_connection(s->r->conn);
    }
}

static void h_events(struct rk_http_req *r)
{
    struct rk_jobs *js = jobs_of(r);
    struct rk_tjob_view v;
    if (!job_or_404(r, &v))
        return;
    struct sse *s = calloc(1, sizeof *s);
    if (!s) {
        rk_http_error(r, 503, "enomem", NULL, "out of memory");
        return;
    }
    s->js = js;
    s->srv = r->srv;
    s->r = r;
    snprintf(s->id, sizeof s->id, "%s", v.id);
    snprintf(s->tenant, sizeof s->tenant, "%s", r->tenant);
    const char *last = rk_http_header(r, "Last-Event-ID");
    if (last && *last) {
        char *end;
        unsigned long long k = strtoull(last, &end, 10);
        if (!*end && k < (1ull << 40))
            s->next = (size_t)k + 1;
    }
    s->refs = 2; // the request and the response
    s->f = rk_jobs_follow(js, sse_wake, s);
    r->user = s;
    r->user_free = sse_req_free;
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, sse_read, s, sse_resp_free);
    if (!resp) {
        s->refs--;
        rk_http_error(r, 503, "enomem", NULL, "out of memory");
        return;
    }
    MHD_add_response_header(resp, "Content-Type", "text/event-stream");
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    rk_http_conn_headers(r->srv, resp);
    MHD_queue_response(r->conn, 200, resp);
    MHD_destroy_response(resp);
    r->status = 200;
    r->stream_queued = true;
}

/* --- OpenAI: files ----------------------------------------------------------------- */

static json_t *file_openai(const struct rk_tfile *f)
{
    return json_pack("{s:s,s:s,s:I,s:I,s:s,s:s,s:s,s:n,s:n}", "id", f->id, "object", "file",
                     "bytes", (json_int_t)f->bytes, "created_at",
                     (json_int_t)(f->created_ms / 1000), "filename", f->filename, "purpose",
                     f->purpose, "status", "processed", "status_details", "expires_at");
}

struct part {
    char name[64], filename[128];
    const char *data;
    size_t len;
};

/* A quoted or plain parameter value from a header (`key="v"` or `key=v`). */
static bool header_param(const char *h, size_t hn, const char *key, char *out, size_t cap)
{
    size_t kl = strlen(key);
    for (size_t i = 0; i + kl + 1 < hn; i++) {
        if (strncasecmp(h + i, key, kl) || h[i + kl] != '=' ||
            (i > 0 && h[i - 1] != ' ' && h[i - 1] != ';' && h[i - 1] != '\t'))
            continue;
        const char *p = h + i + kl + 1, *e = h + hn;
        size_t n = 0;
        if (p < e && *p == '"') {
            p++;
            while (p < e && *p != '"' && n + 1 < cap) {
                if (*p == '\\' && p + 1 < e)
                    p++;
                out[n++] = *p++;
            }
        } else {
            while (p < e && *p != ';' && *p != ' ' && *p != '\r' && n + 1 < cap)
                out[n++] = *p++;
        }
        out[n] = 0;
        return true;
    }
    return false;
}

/* Split a multipart/form-data body into parts (pointers into `body`). */
static int multipart(const char *ctype, const char *body, size_t len, struct part *parts,
                     int max)
{
    char bnd[80], delim[96];
    if (!ctype || strncasecmp(ctype, "multipart/form-data", 19) ||
        !header_param(ctype, strlen(ctype), "boundary", bnd, sizeof bnd) || !bnd[0])
        return -1;
    int dl = snprintf(delim, sizeof delim, "--%s", bnd);
    const char *end = body + len;
    const char *p = memmem(body, len, delim, (size_t)dl);
    int n = 0;
    while (p) {
        p += dl;
        if (end - p >= 2 && p[0] == '-' && p[1] == '-')
            return n; // closing delimiter
        if (end - p < 2 || p[0] != '\r' || p[1] != '\n')
            return -1;
        p += 2;
        const char *he = memmem(p, (size_t)(end - p), "\r\n\r\n", 4);
        if (!he)
            return -1;
        // The part ends at CRLF + delimiter.
        char nd[100];
        int ndl = snprintf(nd, sizeof nd, "\r\n%s", delim);
        const char *q = memmem(he + 4, (size_t)(end - he - 4), nd, (size_t)ndl);
        if (!q)
            return -1;
        if (n < max) {
            struct part *pt = &parts[n];
            memset(pt, 0, sizeof *pt);
            // Find Content-Disposition among the part's headers.
            for (const char *l = p; l < he;) {
                const char *le = memmem(l, (size_t)(he - l), "\r\n", 2);
                if (!le)
                    le = he;
                if ((size_t)(le - l) > 20 && !strncasecmp(l, "Content-Disposition:", 20)) {
                    header_param(l, (size_t)(le - l), "name", pt->name, sizeof pt->name);
                    header_param(l, (size_t)(le - l), "filename", pt->filename,
                                 sizeof pt->filename);
                }
                l = le + 2;
            }
            pt->data = he + 4;
            pt->len = (size_t)(q - he - 4);
            n++;
        }
        p = q + 2;
    }
    return -1;
}

static void h_file_upload(struct rk_http_req *r)
{
    struct rk_jobs *js = jobs_of(r);
    struct part parts[8];
    int n = multipart(rk_http_header(r, "Content-Type"), r->body.p ? r->body.p : "", r->body.len,
                      parts, 8);
    if (n < 0) {
        rk_http_error(r, 400, "invalid_request", NULL,
                      "the body must be multipart/form-data with fields \"file\" and "
                      "\"purpose\"");
        return;
    }
    const struct part *file = NULL;
    char purpose[32] = "";
    for (int i = 0; i < n && i < 8; i++) {
        if (!strcmp(parts[i].name, "file"))
            file = &parts[i];
        else if (!strcmp(parts[i].name, "purpose"))
            snprintf(purpose, sizeof purpose, "%.*s",
                     (int)(parts[i].len < 31 ? parts[i].len : 31), parts[i].data);
    }
    if (!file) {
        rk_http_error(r, 400, "invalid_request", "file", "missing the \"file\" field");
        return;
    }
    if (strcmp(purpose, "fine-tune")) {
        rk_http_error(r, 400, "invalid_value", "purpose",
                      "purpose must be \"fine-tune\" (the only purpose this server stores)");
        return;
    }
    struct dataset_info di = {0};
    if (!validate_jsonl(r, js, "file", file->data, file->len, &di))
        return;
    const char *fname = file->filename[0] ? file->filename : "upload.jsonl";
    struct rk_tfile f;
    struct rk_errbuf eb = {0};
    int rc = rk_files_add(js, r->tenant, fname, purpose, file->data, file->len, di.n_examples,
                          &f, &eb);
    if (rc != RK_OK) {
        rk_http_error_rk(r, rc, "file", eb.msg);
        return;
    }
    rk_http_json(r, 200, file_openai(&f));
}

static const char *query(struct rk_http_req *r, const char *key)
{
    return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, key);
}

static bool query_limit(struct rk_http_req *r, int def, int *out)
{
    const char *s = query(r, "limit");
    *out = def;
    if (!s)
        return true;
    char *end;
    long v = strtol(s, &end, 10);
    if (*end || end == s || v < 1 || v > 10000) {
        rk_http_error(r, 400, "invalid_value", "limit", "limit must be an integer in [1, 10000]");
        return false;
    }
    *out = (int)v;
    return true;
}

static void h_files(struct rk_http_req *r)
{
    struct rk_jobs *js = jobs_of(r);
    struct rk_tfile *fs = NULL;
    size_t n = 0;
    int limit;
    if (!query_limit(r, 10000, &limit))
        return;
    const char *after = query(r, "after"), *purpose = query(r, "purpose");
    if (rk_files_list(js, r->tenant, &fs, &n) != RK_OK) {
        rk_http_error(r, 503, "enomem", NULL, "out of memory");
        return;
    }
    json_t *arr = json_array();
    size_t i = 0;
    if (after) {
        while (i < n && strcmp(fs[i].id, after))
            i++;
        i = i < n ? i + 1 : n;
    }
    bool more = false;
    for (; i < n; i++) {
        if (purpose && strcmp(purpose, fs[i].purpose))
            continue;
        if (json_array_size(arr) == (size_t)limit) {
            more = true;
            break;
        }
        json_array_append_new(arr, file_openai(&fs[i]));
    }
    free(fs);
    size_t k = json_array_size(arr);
    json_t *o = json_pack("{s:s,s:o,s:b}", "object", "list", "data", arr, "has_more", more);
    json_object_set_new(o, "first_id", k ? json_incref(json_object_get(json_array_get(arr, 0), "id"))
                                         : json_null());
    json_object_set_new(o, "last_id", k ? json_incref(json_object_get(json_array_get(arr, k - 1), "id"))
                                        : json_null());
    rk_http_json(r, 200, o);
}

static bool file_or_404(struct rk_http_req *r, struct rk_tfile *f)
{
    if (rk_files_get(jobs_of(r), r->tenant, r->params[0], f) == RK_OK)
        return true;
    rk_http_error(r, 404, "file_not_found", "id", "file '%s' does not exist", r->params[0]);
    return false;
}

static void h_file(struct rk_http_req *r)
{
    struct rk_tfile f;
    if (file_or_404(r, &f))
        rk_http_json(r, 200, file_openai(&f));
}

static void h_file_content(struct rk_http_req *r)
{
    struct rk_tfile f;
    if (!file_or_404(r, &f))
        return;
    void *buf = NULL;
    size_t len = 0;
    struct rk_errbuf eb = {0};
    int rc = rk_files_read(jobs_of(r), r->tenant, f.id, &buf, &len, &eb);
    if (rc != RK_OK) {
        rk_http_error_rk(r, rc, "id", eb.msg);
        return;
    }
    rk_http_bytes(r, 200, "application/jsonl", buf, len);
    free(buf);
}

static void h_file_delete(struct rk_http_req *r)
{
    struct rk_tfile f;
    if (!file_or_404(r, &f))
        return;
    rk_files_delete(jobs_of(r), r->tenant, f.id);
    rk_http_json(r, 200, json_pack("{s:s,s:s,s:b}", "id", f.id, "object", "file", "deleted", 1));
}

/* --- OpenAI: fine-tuning jobs -------------------------------------------------------- */

/* n_epochs / batch_size / learning_rate_multiplier: a number or "auto". */
static bool oa_param(struct rk_http_req *r, json_t *hpo, const char *key, json_t **out)
{
    json_t *x = json_object_get(hpo, key);
    *out = NULL;
    if (!x || json_is_null(x) || (json_is_string(x) && !strcmp(json_string_value(x), "auto")))
        return true;
    if (!json_is_number(x)) {
        rk_http_error(r, 400, "invalid_value", key, "\"%s\" must be a number or \"auto\"", key);
        return false;
    }
    *out = x;
    return true;
}

static void h_ft_create(struct rk_http_req *r)
{
    struct rk_jobs *js = jobs_of(r);
    struct rk_srv *srv = r->srv;
    json_t *body = rk_http_body_json(r);
    if (!body)
        return;
    struct dataset_info di = {0};
    json_t *merged = json_object();
    static const char *const top[] = {"model", "training_file", "hyperparameters", "suffix",
                                      "seed", "validation_file", "method", "integrations",
                                      "metadata", NULL};
    if (!only_keys(r, body, top, "the request"))
        goto out;
    const char *model = NULL, *suffix = NULL, *tfile = NULL, *vfile = NULL;
    if (!get_str(r, body, "model", &model) || !get_str(r, body, "suffix", &suffix) ||
        !get_str(r, body, "training_file", &tfile) ||
        !get_str(r, body, "validation_file", &vfile))
        goto out;
    if (!model || !tfile) {
        rk_http_error(r, 400, "invalid_request", !model ? "model" : "training_file",
                      "\"model\" and \"training_file\" are required");
        goto out;
    }
    if (vfile) {
        rk_http_error(r, 400, "unsupported", "validation_file",
                      "validation_file is not supported; a held-out split of the training file "
                      "is used");
        goto out;
    }
    // model: the base, or "<base>:<state>" to continue from a tuned state.
    char init[RK_STATE_ID_MAX + 1] = "";
    size_t bl = strlen(srv->model_name);
    if (strncmp(model, srv->model_name, bl) || (model[bl] && model[bl] != ':')) {
        rk_http_error(r, 404, "model_not_found", "model",
                      "model '%s' does not exist (use '%s' or '%s:<state>')", model,
                      srv->model_name, srv->model_name);
        goto out;
    }
    if (model[bl] == ':') {
        snprintf(init, sizeof init, "%s", model + bl + 1);
        struct rk_state_ref *ref = NULL;
        if (!rk_state_id_valid(init) ||
            rk_store_get(srv->store, r->tenant, init, &ref, NULL) != RK_OK) {
            rk_http_error(r, 404, "model_not_found", "model", "model '%s' does not exist", model);
            goto out;
        }
        rk_state_ref_release(ref);
    }
    char state[RK_STATE_ID_MAX + 1];
    if (suffix) {
        if (!rk_state_id_valid(suffix)) {
            rk_http_error(r, 400, "invalid_value", "suffix",
                          "suffix names the output state: it must match "
                          "^[a-z0-9][a-z0-9_-]{0,63}$");
            goto out;
        }
        snprintf(state, sizeof state, "%s", suffix);
    } else {
        uint32_t x = 0;
        if (getrandom(&x, sizeof x, 0) != (ssize_t)sizeof x)
            x = (uint32_t)rk_now_us();
        snprintf(state, sizeof state, "ft-%08" PRIx32, x);
    }
    // Hyperparameters: top level (deprecated in OpenAI's API) or under
    // method.supervised.hyperparameters.
    json_t *hpo = json_object_get(body, "hyperparameters");
    // method.type: "supervised" (OpenAI's name for "standard") or a method of
    // the tuning-method table; its hyperparameters are under method.<type>.
    const struct rk_tune_method *tm = rk_tune_method_default();
    json_t *meth = json_object_get(body, "method");
    if (meth && !json_is_null(meth)) {
        const char *type = json_string_value(json_object_get(meth, "type"));
        if (!json_is_object(meth)) {
            rk_http_error(r, 400, "invalid_value", "method", "\"method\" must be an object");
            goto out;
        }
        if (type && strcmp(type, "supervised") && !(tm = rk_tune_method_find(type))) {
            char names[256];
            rk_tune_method_names(names, sizeof names);
            rk_http_error(r, 400, "unsupported", "method",
                          "unknown method type '%s' (known: supervised, which runs standard "
                          "state tuning; %s)",
                          type, names);
            goto out;
        }
        json_t *sup = json_object_get(meth, type ? type : "supervised");
        json_t *h2 = json_is_object(sup) ? json_object_get(sup, "hyperparameters") : NULL;
        if (h2 && hpo) {
            rk_http_error(r, 400, "invalid_request", "hyperparameters",
                          "give hyperparameters either at the top level or in method");
            goto out;
        }
        if (h2)
            hpo = h2;
    }
    if (hpo && !json_is_object(hpo)) {
        rk_http_error(r, 400, "invalid_value", "hyperparameters", "must be an object");
        goto out;
    }
    static const char *const hkeys[] = {"n_epochs", "batch_size", "learning_rate_multiplier",
                                        NULL};
    if (hpo && !only_keys(r, hpo, hkeys, "\"hyperparameters\""))
        goto out;
    json_t *ne = NULL, *bs = NULL, *lrm = NULL;
    if (hpo && (!oa_param(r, hpo, "n_epochs", &ne) || !oa_param(r, hpo, "batch_size", &bs) ||
                !oa_param(r, hpo, "learning_rate_multiplier", &lrm)))
        goto out;
    json_object_set_new(merged, "training_file", json_string(tfile));
    if (!parse_dataset(r, js, merged, &di))
        goto out;
    struct rk_tjob_hparams hp;
    hparams_default(js, &hp);
    json_t *native = json_object();
    if (ne)
        json_object_set(native, "epochs", ne);
    if (bs)
        json_object_set(native, "batch", bs);
    double mult = 1;
    if (lrm) {
        json_t *tmp = json_pack("{s:O}", "learning_rate_multiplier", lrm);
        bool ok = get_num(r, tmp, "learning_rate_multiplier", 0, 100, true, &mult);
        json_decref(tmp);
        if (!ok) {
            json_decref(native);
            goto out;
        }
        json_object_set_new(native, "lr", json_real(hp.tune.lr * mult));
    }
    json_t *seed = json_object_get(body, "seed");
    if (seed && !json_is_null(seed))
        json_object_set(native, "seed", seed);
    if (init[0])
        json_object_set_new(native, "init_state", json_string(init));
    bool steps_given;
    snprintf(hp.method, sizeof hp.method, "%s", tm->name);
    bool ok = parse_hparams(r, js, native, &di, &hp, &steps_given);
    json_decref(native);
    if (!ok)
        goto out;
    hp.lr_multiplier = mult;
    struct rk_tjob_new nj = {.tenant = r->tenant, .output_state = state,
                             .training_file = di.training_file, .suffix = suffix ? suffix : "",
                             .openai = true, .hp = &hp, .data = di.jsonl, .len = di.len,
                             .n_examples = di.n_examples, .n_tokens = di.n_tokens,
                             .n_targets = di.n_targets};
    struct rk_tjob_view v;
    struct rk_errbuf eb = {0};
    int rc = rk_jobs_submit(js, &nj, &v, &eb);
    if (rc != RK_OK) {
        rk_http_error_rk(r, rc, NULL, eb.msg);
        goto out;
    }
    rk_http_json(r, 200, job_openai(srv, &v));
out:
    free(di.jsonl);
    json_decref(merged);
    json_decref(body);
}

static void h_ft_list(struct rk_http_req *r)
{
    struct rk_jobs *js = jobs_of(r);
    int limit;
    if (!query_limit(r, 20, &limit))
        return;
    const char *after = query(r, "after");
    struct rk_tjob_view *vs = NULL;
    size_t n = 0;
    if (rk_jobs_list(js, r->tenant, true, &vs, &n) != RK_OK) {
        rk_http_error(r, 503, "enomem", NULL, "out of memory");
        return;
    }
    size_t i = 0;
    if (after) {
        while (i < n && strcmp(vs[i].id, after))
            i++;
        i = i < n ? i + 1 : n;
    }
    json_t *arr = json_array();
    for (; i < n && json_array_size(arr) < (size_t)limit; i++)
        json_array_append_new(arr, job_openai(r->srv, &vs[i]));
    bool more = i < n;
    free(vs);
    rk_http_json(r, 200, json_pack("{s:s,s:o,s:b}", "object", "list", "data", arr, "has_more",
                                   more));
}

static void h_ft_get(struct rk_http_req *r)
{
    struct rk_tjob_view v;
    if (job_or_404(r, &v))
        rk_http_json(r, 200, job_openai(r->srv, &v));
}

static void h_ft_cancel(struct rk_http_req *r) { cancel_common(r, true); }

/* OpenAI event objects from the job's log, newest first. */
static json_t *event_openai(const char *job_id, size_t idx, const struct rk_tjob_ev *e)
{
    char id[64];
    snprintf(id, sizeof id, "ftevent-%.16s-%zu", job_id + 6, idx);
    json_t *d = json_loads(e->data, 0, NULL);
    char msg[256];
    const char *level = "info", *type = "message";
    long step = (long)json_integer_value(json_object_get(d, "step"));
    long steps = (long)json_integer_value(json_object_get(d, "steps"));
    json_t *data = json_object();
    if (e->type == RK_EV_STEP) {
        double loss = json_number_value(json_object_get(d, "loss"));
        snprintf(msg, sizeof msg, "Step %ld/%ld: training loss=%.4f", step, steps, loss);
        type = "metrics";
        json_object_set_new(data, "step", json_integer(step));
        json_object_set_new(data, "total_steps", json_integer(steps));
        json_object_set_new(data, "train_loss", json_real(loss));
    } else if (e->type == RK_EV_EVAL) {
        double vl = json_number_value(json_object_get(d, "val_loss"));
        snprintf(msg, sizeof msg, "Step %ld/%ld: validation loss=%.4f", step, steps, vl);
        type = "metrics";
        json_object_set_new(data, "step", json_integer(step));
        json_object_set_new(data, "total_steps", json_integer(steps));
        json_object_set_new(data, "valid_loss", json_real(vl));
    } else {
        const char *st = json_string_value(json_object_get(d, "status"));
        const char *m = json_string_value(json_object_get(d, "message"));
        snprintf(msg, sizeof msg, "%s%s%s", st ? st : "", m && *m ? ": " : "", m ? m : "");
        if (st && !strcmp(st, "failed"))
            level = "error";
        json_object_set_new(data, "status", json_string(st ? st : ""));
    }
    json_decref(d);
    return json_pack("{s:s,s:s,s:I,s:s,s:s,s:s,s:o}", "object", "fine_tuning.job.event", "id", id,
                     "created_at", (json_int_t)(e->t_ms / 1000), "level", level, "message", msg,
                     "type", type, "data", data);
}

static void h_ft_events(struct rk_http_req *r)
{
    struct rk_jobs *js = jobs_of(r);
    struct rk_tjob_view v;
    if (!job_or_404(r, &v))
        return;
    int limit;
    if (!query_limit(r, 20, &limit))
        return;
    struct rk_tjob_ev *ev = NULL;
    size_t n = 0, total = 0;
    bool ended;
    if (rk_jobs_events(js, r->tenant, v.id, 0, (size_t)-1, &ev, &n, &total, &ended) != RK_OK) {
        rk_http_error(r, 503, "enomem", NULL, "out of memory");
        return;
    }
    // Newest first; `after` is the id of the last event of the previous page.
    size_t start = n; // exclusive upper index, walking down
    const char *after = query(r, "after");
    if (after) {
        char pre[40];
        snprintf(pre, sizeof pre, "ftevent-%.16s-", v.id + 6);
        size_t pl = strlen(pre);
        char *end;
        unsigned long long k = strncmp(after, pre, pl) ? 0 : strtoull(after + pl, &end, 10);
        start = !strncmp(after, pre, pl) && k < n ? (size_t)k : 0;
    }
    json_t *arr = json_array();
    size_t i = start;
    while (i > 0 && json_array_size(arr) < (size_t)limit) {
        i--;
        json_array_append_new(arr, event_openai(v.id, i, &ev[i]));
    }
    rk_tjob_evs_free(ev, n);
    rk_http_json(r, 200, json_pack("{s:s,s:o,s:b}", "object", "list", "data", arr, "has_more",
                                   i > 0));
}

void rk_api_jobs_register(struct rk_srv *srv, struct rk_jobs *js)
{
    g_jobs = js;
    static const struct rk_route routes[] = {
        {"POST", "/tune", h_tune, 0, NULL},
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

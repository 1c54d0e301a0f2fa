/*
 * api_finetune.c - the OpenAI fine-tuning routes: POST|GET /v1/fine_tuning/jobs,
 * GET /v1/fine_tuning/jobs/{id}, POST .../cancel, GET .../events.
 */
#include "api_jobs_int.h"
#include "json_read.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

/* --- OpenAI: fine-tuning jobs -------------------------------------------------------- */

/* True when `key` is an OpenAI fine-tuning hyperparameter (RK_HP_OPENAI). */
static bool oa_hparam(const char *key)
{
    size_t n;
    const struct rk_hparam *t = rk_hparams(&n);
    for (size_t i = 0; i < n; i++)
        if ((t[i].where & RK_HP_OPENAI) && !strcmp(t[i].openai, key))
            return true;
    return false;
}

/* An OpenAI hyperparameter: a number or "auto" (*out NULL: the default). */
static bool oa_param(struct rk_http_req *r, json_t *hpo, const char *key, json_t **out)
{
    json_t *x = json_object_get(hpo, key);
    *out = NULL;
    if (!x || json_is_null(x) || (json_is_string(x) && !strcmp(json_string_value(x), "auto")))
        return true;
    if (!json_is_number(x)) {
        rk_field_fail(r, RK_FIELD_INVALID_TYPE, key, "\"%s\" must be a number or \"auto\"", key);
        return false;
    }
    *out = x;
    return true;
}

void h_ft_create(struct rk_http_req *r)
{
    struct rk_tjobs *js = api_tjobs_of(r);
    struct rk_srv *srv = r->srv;
    struct job_task *done = api_task_done(r);
    if (done) { // the second call: the job is written (or failed)
        if (!api_task_answer_error(r, done))
            rk_http_json(r, 200, job_openai(srv, &done->view));
        return;
    }
    json_t *body = rk_http_body_json(r);
    if (!body)
        return;
    struct dataset_info di = {0};
    json_t *merged = json_object();
    static const char *const top[] = {"model", "training_file", "hyperparameters", "suffix",
                                      "seed", "validation_file", "method", "integrations",
                                      "metadata", NULL};
    if (!api_only_keys(r, body, top, "the request"))
        goto out;
    const char *model = NULL, *suffix = NULL, *tfile = NULL, *vfile = NULL;
    if (!api_get_str(r, body, "model", &model) || !api_get_str(r, body, "suffix", &suffix) ||
        !api_get_str(r, body, "training_file", &tfile) ||
        !api_get_str(r, body, "validation_file", &vfile))
        goto out;
    if (!model || !tfile) {
        rk_field_fail(r, RK_FIELD_INVALID_VALUE, !model ? "model" : "training_file",
                      "\"model\" and \"training_file\" are required");
        goto out;
    }
    if (vfile) {
        rk_field_fail(r, RK_FIELD_UNSUPPORTED, "validation_file",
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
            rk_field_fail(r, RK_FIELD_INVALID_VALUE, "suffix",
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
            rk_field_fail(r, RK_FIELD_INVALID_TYPE, "method", "\"method\" must be an object");
            goto out;
        }
        if (type && strcmp(type, "supervised") && !(tm = rk_tune_method_find(type))) {
            char names[256];
            rk_tune_method_names(names, sizeof names);
            rk_field_fail(r, RK_FIELD_UNSUPPORTED, "method",
                          "unknown method type '%s' (known: supervised, which runs standard "
                          "state tuning; %s)",
                          type, names);
            goto out;
        }
        if (tm == &rk_method_observer) {
            rk_field_fail(r, RK_FIELD_UNSUPPORTED, "method",
                          "the observer method needs a teacher and prompts: use POST /tune");
            goto out;
        }
        json_t *sup = json_object_get(meth, type ? type : "supervised");
        json_t *h2 = json_is_object(sup) ? json_object_get(sup, "hyperparameters") : NULL;
        if (h2 && hpo) {
            rk_field_fail(r, RK_FIELD_INVALID_VALUE, "hyperparameters",
                          "give hyperparameters either at the top level or in method");
            goto out;
        }
        if (h2)
            hpo = h2;
    }
    if (hpo && !json_is_object(hpo)) {
        rk_field_fail(r, RK_FIELD_INVALID_TYPE, "hyperparameters", "\"hyperparameters\" must be an object");
        goto out;
    }
    // The OpenAI hyperparameters are the RK_HP_OPENAI entries of rk_hparams(),
    // each a number or "auto" (the default), renamed to their native keys;
    // the learning-rate multiplier scales the native lr.
    if (hpo) {
        const char *k = rk_json_unknown_key(hpo, NULL, oa_hparam);
        if (k) {
            rk_field_fail(r, RK_FIELD_UNKNOWN, k, "unknown field \"%s\" in \"hyperparameters\"",
                          k);
            goto out;
        }
    }
    struct rk_tjob_hparams hp;
    hparams_default(js, &hp);
    json_t *native = json_object();
    double mult = 1;
    size_t n_hp;
    const struct rk_hparam *tab = rk_hparams(&n_hp);
    for (size_t i = 0; hpo && i < n_hp; i++) {
        const struct rk_hparam *h = &tab[i];
        json_t *x;
        if (!(h->where & RK_HP_OPENAI))
            continue;
        if (!oa_param(r, hpo, h->openai, &x)) {
            json_decref(native);
            goto out;
        }
        if (!x)
            continue;
        if (strcmp(h->name, "lr_multiplier")) {
            json_object_set(native, h->name, x);
            continue;
        }
        mult = json_number_value(x);
        if (rk_hparam_check(h, mult, 0) != RK_OK) {
            char range[64];
            rk_hparam_range_str(h, 0, range, sizeof range);
            rk_field_fail(r, RK_FIELD_OUT_OF_RANGE, h->openai, "\"%s\" must be a number in %s",
                          h->openai, range);
            json_decref(native);
            goto out;
        }
        json_object_set_new(native, "lr", json_real(hp.tune.lr * mult));
    }
    json_object_set_new(merged, "training_file", json_string(tfile));
    if (!parse_dataset(r, js, merged, &di)) {
        json_decref(native);
        goto out;
    }
    json_t *seed = json_object_get(body, "seed");
    if (seed && !json_is_null(seed))
        json_object_set(native, "seed", seed);
    if (init[0])
        json_object_set_new(native, "init_state", json_string(init));
    bool steps_given;
    snprintf(hp.method, sizeof hp.method, "%s", tm->name);
    bool ok = parse_hparams(r, js, native, &hp, &steps_given);
    json_decref(native);
    if (!ok)
        goto out;
    hp.lr_multiplier = mult;
    // The rest touches the disk: on the thread pool; the handler runs again.
    struct job_task *t = api_task_new(r, TASK_JOB, &di, "training_file");
    if (!t)
        goto out;
    t->hp = hp;
    t->openai = true;
    t->judge = r->srv->judge != NULL;
    snprintf(t->output_state, sizeof t->output_state, "%s", state);
    snprintf(t->suffix, sizeof t->suffix, "%s", suffix ? suffix : "");
    api_task_start(r, t);
out:
    free(di.jsonl);
    json_decref(merged);
    json_decref(body);
}

void h_ft_list(struct rk_http_req *r)
{
    struct rk_tjobs *js = api_tjobs_of(r);
    int limit;
    if (!api_query_limit(r, 20, &limit))
        return;
    const char *after = api_query(r, "after");
    struct rk_tjob_view *vs = NULL;
    size_t n = 0;
    if (rk_tjobs_list(js, r->tenant, true, &vs, &n) != RK_OK) {
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

void h_ft_get(struct rk_http_req *r)
{
    struct rk_tjob_view v;
    if (job_or_404(r, &v))
        rk_http_json(r, 200, job_openai(r->srv, &v));
}

void h_ft_cancel(struct rk_http_req *r) { cancel_common(r, true); }

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
    } else if (e->type == RK_EV_EVAL && json_object_get(d, "val_loss")) {
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

void h_ft_events(struct rk_http_req *r)
{
    struct rk_tjobs *js = api_tjobs_of(r);
    struct rk_tjob_view v;
    if (!job_or_404(r, &v))
        return;
    int limit;
    if (!api_query_limit(r, 20, &limit))
        return;
    struct rk_tjob_ev *ev = NULL;
    size_t n = 0, total = 0;
    bool ended;
    if (rk_tjobs_events(js, r->tenant, v.id, 0, (size_t)-1, &ev, &n, &total, &ended) != RK_OK) {
        rk_http_error(r, 503, "enomem", NULL, "out of memory");
        return;
    }
    // Newest first; `after` is the id of the last event of the previous page.
    size_t start = n; // exclusive upper index, walking down
    const char *after = api_query(r, "after");
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

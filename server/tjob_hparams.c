/*
 * tjob_hparams.c - a tuning job's hyperparameters as JSON (the journal and
 * the job objects of the APIs), driven by the table of rk_hparams() so that
 * a new hyperparameter needs no code here.
 */
#include "jobs.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

void rk_tjob_hparams_default(struct rk_tjob_hparams *hp, long checkpoint_every)
{
    memset(hp, 0, sizeof *hp);
    rk_tune_params_default(&hp->tune);
    hp->tune.method = NULL;
    hp->tune.checkpoint_every = checkpoint_every;
    snprintf(hp->method, sizeof hp->method, "%s", rk_tune_method_default()->name);
    hp->epochs = NAN;
    hp->lr_multiplier = 1;
    hp->teacher.max_tokens = 128;
    hp->teacher.temperature = 0;
    hp->teacher.top_logprobs = 0;
}

static bool is_observer(const struct rk_tjob_hparams *hp) { return !strcmp(hp->method, "observer"); }

static json_t *value_json(const struct rk_hparam *h, const struct rk_tjob_hparams *hp,
                          bool journal)
{
    if (!strcmp(h->name, "epochs"))
        return isfinite(hp->epochs) ? json_real(hp->epochs) : json_null();
    if (!strcmp(h->name, "init_state"))
        return hp->init_state[0] || journal ? json_string(hp->init_state) : json_null();
    double x = rk_hparam_get(h, &hp->tune);
    switch (h->type) {
    case RK_HP_INT: return json_integer((json_int_t)x);
    case RK_HP_NUM: return json_real(x);
    case RK_HP_BOOL: return json_boolean(x != 0);
    case RK_HP_ENUM: return json_string(h->choices[(int)x]);
    case RK_HP_STR: break;
    }
    return json_null();
}

json_t *rk_tjob_hparams_json(const struct rk_tjob_hparams *hp, bool journal)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    json_object_set_new(o, "method", json_string(hp->method));
    size_t n;
    const struct rk_hparam *t = rk_hparams(&n);
    for (size_t i = 0; i < n; i++)
        if (t[i].where & RK_HP_JOB)
            json_object_set_new(o, t[i].name, value_json(&t[i], hp, journal));
    if (journal)
        json_object_set_new(o, "lr_multiplier", json_real(hp->lr_multiplier));
    if (is_observer(hp)) {
        const struct rk_tjob_teacher *tc = &hp->teacher;
        json_t *to = json_object();
        json_object_set_new(to, "url", tc->url[0] ? json_string(tc->url) : json_null());
        json_object_set_new(to, "model", tc->model[0] ? json_string(tc->model) : json_null());
        json_object_set_new(to, "endpoint", json_string(tc->chat ? "chat" : "completions"));
        json_object_set_new(to, "max_tokens", json_integer(tc->max_tokens));
        json_object_set_new(to, "temperature", json_real(tc->temperature));
        json_object_set_new(to, "top_logprobs", json_integer(tc->top_logprobs));
        json_object_set_new(to, "instruction",
                            tc->instruction[0] ? json_string(tc->instruction) : json_null());
        json_t *stops = json_array();
        for (int i = 0; i < tc->n_stop; i++)
            json_array_append_new(stops, json_string(tc->stop[i]));
        json_object_set_new(to, "stop", stops);
        json_object_set_new(o, "teacher", to);
    }
    return o;
}

void rk_tjob_hparams_from_json(json_t *o, struct rk_tjob_hparams *hp)
{
    const char *meth = json_string_value(json_object_get(o, "method"));
    if (meth)
        snprintf(hp->method, sizeof hp->method, "%s", meth);
    json_t *x = json_object_get(o, "lr_multiplier");
    if (json_is_number(x))
        hp->lr_multiplier = json_number_value(x);
    json_t *to = json_object_get(o, "teacher");
    if (json_is_object(to)) {
        struct rk_tjob_teacher *tt = &hp->teacher;
        const char *s;
        if ((s = json_string_value(json_object_get(to, "url"))))
            snprintf(tt->url, sizeof tt->url, "%s", s);
        if ((s = json_string_value(json_object_get(to, "model"))))
            snprintf(tt->model, sizeof tt->model, "%s", s);
        if ((s = json_string_value(json_object_get(to, "instruction"))))
            snprintf(tt->instruction, sizeof tt->instruction, "%s", s);
        if ((s = json_string_value(json_object_get(to, "endpoint"))))
            tt->chat = !strcmp(s, "chat");
        if (json_is_integer(x = json_object_get(to, "max_tokens")))
            tt->max_tokens = (int)json_integer_value(x);
        if (json_is_number(x = json_object_get(to, "temperature")))
            tt->temperature = json_number_value(x);
        if (json_is_integer(x = json_object_get(to, "top_logprobs")))
            tt->top_logprobs = (int)json_integer_value(x);
        json_t *stops = json_object_get(to, "stop");
        tt->n_stop = 0;
        for (size_t i = 0; json_is_array(stops) && i < json_array_size(stops) &&
                           tt->n_stop < RK_TJOB_TEACHER_STOPS_MAX; i++)
            if ((s = json_string_value(json_array_get(stops, i))) &&
                strlen(s) <= RK_TJOB_TEACHER_STOP_BYTES && s[0])
                snprintf(tt->stop[tt->n_stop++], sizeof tt->stop[0], "%s", s);
    }
    size_t n;
    const struct rk_hparam *t = rk_hparams(&n);
    for (size_t i = 0; i < n; i++) {
        const struct rk_hparam *h = &t[i];
        if (!(h->where & RK_HP_JOB) || !(x = json_object_get(o, h->name)))
            continue;
        if (!strcmp(h->name, "epochs"))
            hp->epochs = json_is_number(x) ? json_number_value(x) : NAN;
        else if (!strcmp(h->name, "init_state"))
            snprintf(hp->init_state, sizeof hp->init_state, "%s",
                     json_is_string(x) ? json_string_value(x) : "");
        else if (h->type == RK_HP_BOOL)
            rk_hparam_set(h, &hp->tune, json_is_true(x));
        else if (h->type == RK_HP_ENUM) {
            for (int k = 0; json_is_string(x) && h->choices[k]; k++)
                if (!strcmp(json_string_value(x), h->choices[k]))
                    rk_hparam_set(h, &hp->tune, k);
        } else if (json_is_number(x))
            rk_hparam_set(h, &hp->tune, json_number_value(x));
    }
}

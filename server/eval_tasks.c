/*
 * eval_tasks.c - evaluation tasks: task.json and JSONL splits read into
 * owned text items, and the runner shared by `rwkvd eval`, POST /eval and
 * eval jobs (see eval_tasks.h). Relies on jansson for the files and on the
 * adapters layer for every metric.
 */
#include "eval_tasks.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --- items ----------------------------------------------------------------- */

static void item_free(struct rk_eval_item *it)
{
    free((char *)it->prompt);
    free((char *)it->completion);
    if (it->choices)
        for (size_t c = 0; c < it->n_choices; c++)
            free((char *)it->choices[c]);
    free((char **)it->choices);
}

void rk_evset_fini(struct rk_evset *s)
{
    for (size_t i = 0; i < s->n; i++)
        item_free(&s->items[i]);
    free(s->items);
    memset(s, 0, sizeof *s);
}

/* A JSON string without NUL bytes of at most RK_EVTASK_TEXT_MAX bytes, copied. */
static int text_dup(json_t *v, const char *what, char **out, char *err, size_t cap)
{
    *out = NULL;
    if (!json_is_string(v)) {
        snprintf(err, cap, "\"%s\" must be a string", what);
        return RK_EINVAL;
    }
    size_t n = json_string_length(v);
    const char *s = json_string_value(v);
    if (n > RK_EVTASK_TEXT_MAX) {
        snprintf(err, cap, "\"%s\" is longer than %zu bytes", what, RK_EVTASK_TEXT_MAX);
        return RK_EINVAL;
    }
    if (memchr(s, '\0', n)) {
        snprintf(err, cap, "\"%s\" contains a NUL character", what);
        return RK_EINVAL;
    }
    if (!(*out = strdup(s))) {
        snprintf(err, cap, "out of memory");
        return RK_ENOMEM;
    }
    return RK_OK;
}

int rk_evset_add_json(struct rk_evset *s, enum rk_eval_kind kind, json_t *o, char *err,
                      size_t cap)
{
    if (!json_is_object(o)) {
        snprintf(err, cap, "an item must be a JSON object");
        return RK_EINVAL;
    }
    if (s->n >= RK_EVTASK_ITEMS_MAX) {
        snprintf(err, cap, "more than %d items", RK_EVTASK_ITEMS_MAX);
        return RK_ERANGE;
    }
    if (s->n == s->cap) {
        size_t nc = s->cap ? 2 * s->cap : 16;
        struct rk_eval_item *p = realloc(s->items, nc * sizeof *p);
        if (!p) {
            snprintf(err, cap, "out of memory");
            return RK_ENOMEM;
        }
        s->items = p;
        s->cap = nc;
    }
    struct rk_eval_item it = {0};
    char *pr = NULL;
    int rc;
    if ((rc = text_dup(json_object_get(o, "prompt"), "prompt", &pr, err, cap)) != RK_OK)
        goto bad;
    it.prompt = pr;
    if (kind == RK_EVAL_CHOICE) {
        json_t *ch = json_object_get(o, "choices"), *ans = json_object_get(o, "answer");
        if (!json_is_array(ch) || json_array_size(ch) < 2) {
            snprintf(err, cap, "\"choices\" must be an array of at least 2 strings");
            rc = RK_EINVAL;
            goto bad;
        }
        size_t nch = json_array_size(ch);
        if (nch > RK_EVTASK_CHOICES_MAX) {
            snprintf(err, cap, "\"choices\" has more than %d entries", RK_EVTASK_CHOICES_MAX);
            rc = RK_EINVAL;
            goto bad;
        }
        char **cs = calloc(nch, sizeof *cs);
        if (!cs) {
            snprintf(err, cap, "out of memory");
            rc = RK_ENOMEM;
            goto bad;
        }
        it.choices = (const char *const *)cs;
        it.n_choices = nch;
        for (size_t c = 0; c < nch; c++) {
            if ((rc = text_dup(json_array_get(ch, c), "choices", &cs[c], err, cap)) != RK_OK)
                goto bad;
            if (!cs[c][0]) {
                snprintf(err, cap, "\"choices\"[%zu] is empty", c);
                rc = RK_EINVAL;
                goto bad;
            }
        }
        if (json_is_integer(ans)) {
            json_int_t a = json_integer_value(ans);
            if (a < 0 || (size_t)a >= nch) {
                snprintf(err, cap, "\"answer\" %lld is not an index of \"choices\" (0..%zu)",
                         (long long)a, nch - 1);
                rc = RK_EINVAL;
                goto bad;
            }
            it.answer = (size_t)a;
        } else if (json_is_string(ans)) {
            size_t c = 0;
            while (c < nch && strcmp(cs[c], json_string_value(ans)) != 0)
                c++;
            if (c == nch) {
                snprintf(err, cap, "\"answer\" is not one of \"choices\"");
                rc = RK_EINVAL;
                goto bad;
            }
            it.answer = c;
        } else {
            snprintf(err, cap, "\"answer\" must be an index or the text of a choice");
            rc = RK_EINVAL;
            goto bad;
        }
    } else {
        char *c = NULL;
        if ((rc = text_dup(json_object_get(o, "completion"), "completion", &c, err, cap)) !=
            RK_OK)
            goto bad;
        it.completion = c;
    }
    s->items[s->n++] = it;
    return RK_OK;
bad:
    item_free(&it);
    return rc;
}

int rk_evset_parse_jsonl(struct rk_evset *s, enum rk_eval_kind kind, const char *buf, size_t len,
                         const char *name, struct rk_errbuf *eb)
{
    size_t line = 0, off = 0;
    while (off < len) {
        const char *nl = memchr(buf + off, '\n', len - off);
        size_t end = nl ? (size_t)(nl - buf) : len;
        line++;
        const char *p = buf + off;
        size_t n = end - off;
        off = end + 1;
        size_t k = 0;
        while (k < n && (p[k] == ' ' || p[k] == '\t' || p[k] == '\r'))
            k++;
        if (k == n)
            continue; /* blank line */
        json_error_t je;
        json_t *o = json_loadb(p, n, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &je);
        if (!o)
            return rk_errbuf_set(eb, RK_EINVAL, "%s: line %zu: invalid JSON: %s", name, line,
                                 je.text);
        char err[256];
        int rc = rk_evset_add_json(s, kind, o, err, sizeof err);
        json_decref(o);
        if (rc != RK_OK)
            return rk_errbuf_set(eb, rc, "%s: line %zu: %s", name, line, err);
    }
    return RK_OK;
}

/* --- tasks ----------------------------------------------------------------- */

void rk_evtask_free(struct rk_evtask *t)
{
    if (!t)
        return;
    free(t->name);
    free(t->description);
    for (size_t i = 0; i < t->n_stops; i++)
        free(t->stops[i]);
    free(t->shot_sep);
    rk_evset_fini(&t->split);
    rk_evset_fini(&t->train);
    free(t);
}

int rk_evtask_from_json(json_t *o, const char *dflt_name, struct rk_evtask **out,
                        struct rk_errbuf *eb)
{
    *out = NULL;
    if (!json_is_object(o))
        return rk_errbuf_set(eb, RK_EINVAL, "the task must be a JSON object");
    struct rk_evtask *t = calloc(1, sizeof *t);
    if (!t)
        return RK_ENOMEM;
    int rc = RK_EINVAL;
    char err[256];
    json_t *v;
    t->max_tokens = 64;
    if ((v = json_object_get(o, "name")) && !json_is_null(v)) {
        if (text_dup(v, "name", &t->name, err, sizeof err) != RK_OK || !t->name[0] ||
            strlen(t->name) > 128) {
            rc = rk_errbuf_set(eb, RK_EINVAL, "\"name\" must be a string of 1..128 bytes");
            goto bad;
        }
    } else if (!(t->name = strdup(dflt_name ? dflt_name : "task"))) {
        rc = RK_ENOMEM;
        goto bad;
    }
    v = json_object_get(o, "kind");
    if (!json_is_string(v) || rk_eval_kind_parse(json_string_value(v), &t->kind) != RK_OK) {
        rc = rk_errbuf_set(eb, RK_EINVAL, "\"kind\" must be \"generate\", \"choice\" or \"loss\"");
        goto bad;
    }
    if ((v = json_object_get(o, "description")) && !json_is_null(v) &&
        text_dup(v, "description", &t->description, err, sizeof err) != RK_OK) {
        rc = rk_errbuf_set(eb, RK_EINVAL, "%s", err);
        goto bad;
    }
    if ((v = json_object_get(o, "max_tokens")) && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 1 ||
            json_integer_value(v) > RK_EVAL_MAX_TOKENS_MAX) {
            rc = rk_errbuf_set(eb, RK_EINVAL, "\"max_tokens\" must be an integer 1..%d",
                               RK_EVAL_MAX_TOKENS_MAX);
            goto bad;
        }
        t->max_tokens = (long)json_integer_value(v);
    }
    if ((v = json_object_get(o, "shots")) && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            json_integer_value(v) > RK_EVAL_SHOTS_MAX) {
            rc = rk_errbuf_set(eb, RK_EINVAL, "\"shots\" must be an integer 0..%d",
                               RK_EVAL_SHOTS_MAX);
            goto bad;
        }
        t->shots = (long)json_integer_value(v);
    }
    if ((v = json_object_get(o, "shot_separator")) && !json_is_null(v)) {
        if (text_dup(v, "shot_separator", &t->shot_sep, err, sizeof err) != RK_OK) {
            rc = rk_errbuf_set(eb, RK_EINVAL, "%s", err);
            goto bad;
        }
    } else if (!(t->shot_sep = strdup("\n\n"))) {
        rc = RK_ENOMEM;
        goto bad;
    }
    if ((v = json_object_get(o, "stop")) && !json_is_null(v)) {
        json_t *arr = v;
        size_t n = json_is_string(v) ? 1 : json_is_array(v) ? json_array_size(v) : SIZE_MAX;
        if (n == SIZE_MAX || n > RK_EVAL_STOPS_MAX) {
            rc = rk_errbuf_set(eb, RK_EINVAL,
                               "\"stop\" must be a string or an array of at most %d strings",
                               RK_EVAL_STOPS_MAX);
            goto bad;
        }
        for (size_t i = 0; i < n; i++) {
            json_t *s = json_is_string(arr) ? arr : json_array_get(arr, i);
            if (text_dup(s, "stop", &t->stops[i], err, sizeof err) != RK_OK ||
                !t->stops[i][0] || strlen(t->stops[i]) > RK_STOPPER_STOP_MAX) {
                t->n_stops = i + (t->stops[i] != NULL);
                rc = rk_errbuf_set(eb, RK_EINVAL, "\"stop\" strings must be 1..%d bytes",
                                   RK_STOPPER_STOP_MAX);
                goto bad;
            }
            t->n_stops = i + 1;
        }
    }
    *out = t;
    return RK_OK;
bad:
    rk_evtask_free(t);
    return rc;
}

static int load_split(const char *dir, const char *split, struct rk_evtask *t,
                      struct rk_evset *s, struct rk_errbuf *eb)
{
    char path[4096];
    if (snprintf(path, sizeof path, "%s/%s.jsonl", dir, split) >= (int)sizeof path)
        return rk_errbuf_set(eb, RK_EINVAL, "%s: path too long", dir);
    void *buf = NULL;
    size_t len = 0;
    int rc = rk_file_read_all(path, RK_EVTASK_FILE_BYTES_MAX, &buf, &len, eb);
    if (rc != RK_OK)
        return rc;
    rc = rk_evset_parse_jsonl(s, t->kind, buf, len, path, eb);
    free(buf);
    return rc;
}

int rk_evtask_load_dir(const char *dir, const char *split, long shots_needed,
                       struct rk_evtask **out, struct rk_errbuf *eb)
{
    *out = NULL;
    if (strcmp(split, "test") && strcmp(split, "val") && strcmp(split, "train"))
        return rk_errbuf_set(eb, RK_EINVAL, "split must be test, val or train");
    char path[4096];
    if (snprintf(path, sizeof path, "%s/task.json", dir) >= (int)sizeof path)
        return rk_errbuf_set(eb, RK_EINVAL, "%s: path too long", dir);
    void *buf = NULL;
    size_t len = 0;
    int rc = rk_file_read_all(path, (size_t)1 << 20, &buf, &len, eb);
    if (rc != RK_OK)
        return rc;
    json_error_t je;
    json_t *o = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &je);
    free(buf);
    if (!o)
        return rk_errbuf_set(eb, RK_EINVAL, "%s: invalid JSON: %s (line %d)", path, je.text,
                             je.line);
    /* default name: the directory's last component */
    const char *base = dir + strlen(dir);
    while (base > dir && base[-1] == '/')
        base--;
    const char *e = base;
    while (base > dir && base[-1] != '/')
        base--;
    char dname[256];
    snprintf(dname, sizeof dname, "%.*s", (int)(e - base), base);
    struct rk_evtask *t = NULL;
    struct rk_errbuf eb2 = {0};
    rc = rk_evtask_from_json(o, dname[0] ? dname : "task", &t, &eb2);
    json_decref(o);
    if (rc != RK_OK)
        return rk_errbuf_set(eb, rc, "%s: %s", path, eb2.msg);
    if ((rc = load_split(dir, split, t, &t->split, eb)) != RK_OK)
        goto bad;
    long shots = shots_needed >= 0 ? shots_needed : t->shots;
    t->split_is_train = strcmp(split, "train") == 0;
    if (shots > 0 && !t->split_is_train && (rc = load_split(dir, "train", t, &t->train, eb)) !=
                                               RK_OK)
        goto bad;
    *out = t;
    return RK_OK;
bad:
    rk_evtask_free(t);
    return rc;
}

/* --- the runner ------------------------------------------------------------ */

static size_t task_items(const struct rk_evtask *t, long limit)
{
    size_t n = t->split.n;
    return limit > 0 && (size_t)limit < n ? (size_t)limit : n;
}

size_t rk_evrun_items(const struct rk_evrun_params *p)
{
    size_t per_state = 0;
    for (size_t i = 0; i < p->n_tasks; i++)
        per_state += task_items(p->tasks[i], p->limit);
    size_t total = per_state * p->n_states;
    if (p->collateral) {
        size_t c = task_items(p->collateral, p->limit);
        total += c; /* the base outputs */
        for (size_t s = 0; s < p->n_states; s++)
            total += p->states[s].state ? c : 0;
    }
    return total;
}

struct prog {
    rk_evrun_progress_cb *cb;
    void *user;
    size_t base, total;
    const char *task, *state;
};

static void item_done(size_t done, size_t total, void *user)
{
    (void)total;
    struct prog *pg = user;
    if (pg->cb)
        pg->cb(pg->base + done, pg->total, pg->task, pg->state, pg->user);
}

static void task_view(const struct rk_evtask *t, const struct rk_evrun_params *p, bool coll,
                      struct rk_eval_task *v)
{
    memset(v, 0, sizeof *v);
    v->kind = t->kind;
    v->max_tokens = t->max_tokens;
    v->stops = (const char *const *)t->stops;
    v->n_stops = t->n_stops;
    v->shots = coll ? 0 : (size_t)(p->shots >= 0 ? p->shots : t->shots);
    v->shot_sep = t->shot_sep;
    v->shot_seed = p->shot_seed;
    v->pool_is_items = t->split_is_train;
    v->pool = t->split_is_train ? t->split.items : t->train.items;
    v->n_pool = t->split_is_train ? t->split.n : t->train.n;
    v->items = t->split.items;
    v->n_items = task_items(t, p->limit);
}

static int put_num(json_t *o, const char *k, double x)
{
    return json_object_set_new(o, k, isfinite(x) ? json_real(x) : json_null());
}

static json_t *result_json(const char *state, const char *task, long shots,
                           const struct rk_eval_metrics *m, enum rk_eval_kind kind, bool coll)
{
    json_t *r = json_object(), *mt = json_object();
    if (!r || !mt) {
        json_decref(r);
        json_decref(mt);
        return NULL;
    }
    int e = 0;
    e |= json_object_set_new(r, "state", json_string(state));
    e |= json_object_set_new(r, "task", json_string(task));
    e |= json_object_set_new(r, "n", json_integer((json_int_t)m->n));
    e |= json_object_set_new(r, "shots", json_integer(shots));
    if (coll) {
        e |= put_num(mt, "collateral_kept", m->collateral_kept);
    } else if (kind == RK_EVAL_GENERATE) {
        e |= put_num(mt, "exact_match", m->exact_match);
        e |= put_num(mt, "loss", m->loss);
    } else if (kind == RK_EVAL_CHOICE) {
        e |= put_num(mt, "acc_raw", m->acc_raw);
        e |= put_num(mt, "acc_norm", m->acc_norm);
        e |= put_num(mt, "loss", m->loss);
    } else {
        e |= put_num(mt, "loss", m->loss);
        e |= put_num(mt, "nats_per_byte", m->nats_per_byte);
    }
    e |= json_object_set_new(r, "metrics", mt);
    e |= json_object_set_new(r, "tokens", json_integer((json_int_t)m->tokens));
    e |= json_object_set_new(r, "seconds", json_real(m->seconds));
    if (e) {
        json_decref(r);
        return NULL;
    }
    return r;
}

int rk_evrun(struct rk_ctx *ctx, const struct rk_tokenizer *tok, const struct rk_evrun_params *p,
             rk_cancel_cb *cancel, void *cancel_user, rk_evrun_progress_cb *progress,
             void *progress_user, json_t **results, struct rk_errbuf *eb)
{
    *results = NULL;
    json_t *arr = json_array();
    if (!arr)
        return RK_ENOMEM;
    struct prog pg = {.cb = progress, .user = progress_user, .total = rk_evrun_items(p)};
    struct rk_eval_outputs base = {0};
    struct rk_eval_task v;
    int rc = RK_OK;
    /* check every task before the first item runs */
    for (size_t i = 0; i < p->n_tasks; i++) {
        task_view(p->tasks[i], p, false, &v);
        struct rk_errbuf e2 = {0};
        if ((rc = rk_eval_task_check(&v, &e2)) != RK_OK) {
            rc = rk_errbuf_set(eb, rc, "task %s: %s", p->tasks[i]->name, e2.msg);
            goto out;
        }
    }
    if (p->collateral) {
        if (p->collateral->kind != RK_EVAL_GENERATE) {
            rc = rk_errbuf_set(eb, RK_EINVAL, "collateral %s: the kind must be generate",
                               p->collateral->name);
            goto out;
        }
        task_view(p->collateral, p, true, &v);
        pg.task = "collateral";
        pg.state = "base";
        struct rk_errbuf e2 = {0};
        rc = rk_eval_outputs_generate(ctx, tok, &v, NULL, cancel, cancel_user, item_done, &pg,
                                      &base, &e2);
        if (rc != RK_OK) {
            if (rc != RK_ECANCELED)
                rk_errbuf_set(eb, rc, "collateral %s: %s", p->collateral->name,
                              e2.msg[0] ? e2.msg : rk_strerror(rc));
            goto out;
        }
        pg.base += v.n_items;
    }
    for (size_t s = 0; s < p->n_states; s++) {
        const struct rk_evrun_state *st = &p->states[s];
        for (size_t i = 0; i < p->n_tasks; i++) {
            struct rk_evtask *t = p->tasks[i];
            task_view(t, p, false, &v);
            pg.task = t->name;
            pg.state = st->label;
            struct rk_eval_metrics m;
            struct rk_errbuf e2 = {0};
            rc = rk_eval_task_run(ctx, tok, &v, st->state, cancel, cancel_user, item_done, &pg,
                                  &m, &e2);
            if (rc != RK_OK) {
                if (rc != RK_ECANCELED)
                    rk_errbuf_set(eb, rc, "task %s, state %s: %s", t->name, st->label,
                                  e2.msg[0] ? e2.msg : rk_strerror(rc));
                goto out;
            }
            pg.base += v.n_items;
            json_t *r = result_json(st->label, t->name, (long)v.shots, &m, t->kind, false);
            if (!r || json_array_append_new(arr, r)) {
                rc = RK_ENOMEM;
                goto out;
            }
        }
        if (p->collateral) {
            task_view(p->collateral, p, true, &v);
            struct rk_eval_metrics m;
            if (st->state) {
                pg.task = "collateral";
                pg.state = st->label;
                struct rk_errbuf e2 = {0};
                rc = rk_eval_collateral(ctx, tok, &v, st->state, &base, cancel, cancel_user,
                                        item_done, &pg, &m, &e2);
                if (rc != RK_OK) {
                    if (rc != RK_ECANCELED)
                        rk_errbuf_set(eb, rc, "collateral, state %s: %s", st->label,
                                      e2.msg[0] ? e2.msg : rk_strerror(rc));
                    goto out;
                }
                pg.base += v.n_items;
            } else {
                /* the base model agrees with itself */
                memset(&m, 0, sizeof m);
                m.n = v.n_items;
                m.collateral_kept = v.n_items ? 1.0 : NAN;
            }
            json_t *r = result_json(st->label, "collateral", 0, &m, RK_EVAL_GENERATE, true);
            if (!r || json_array_append_new(arr, r)) {
                rc = RK_ENOMEM;
                goto out;
            }
        }
    }
    *results = arr;
    arr = NULL;
out:
    json_decref(arr);
    rk_eval_outputs_fini(&base);
    return rc;
}

/* --- evaluation requests -------------------------------------------------- */

void rk_evreq_fini(struct rk_evreq *q)
{
    for (size_t i = 0; i < q->n_tasks; i++)
        rk_evtask_free(q->tasks[i]);
    rk_evtask_free(q->collateral);
    memset(q, 0, sizeof *q);
}

static int items_of(json_t *arr, struct rk_evtask *t, struct rk_evset *s, bool coll,
                    const char *where, char *param, size_t pcap, struct rk_errbuf *eb)
{
    if (!json_is_array(arr)) {
        snprintf(param, pcap, "%s", where);
        return rk_errbuf_set(eb, RK_EINVAL, "\"%s\" must be an array of items", where);
    }
    for (size_t i = 0; i < json_array_size(arr); i++) {
        json_t *o = json_array_get(arr, i), *tmp = NULL;
        if (coll && json_is_object(o) && !json_object_get(o, "completion")) {
            tmp = json_copy(o);
            if (!tmp || json_object_set_new(tmp, "completion", json_string(""))) {
                json_decref(tmp);
                return RK_ENOMEM;
            }
            o = tmp;
        }
        char err[256];
        int rc = rk_evset_add_json(s, t->kind, o, err, sizeof err);
        json_decref(tmp);
        if (rc != RK_OK) {
            snprintf(param, pcap, "%s[%zu]", where, i);
            return rk_errbuf_set(eb, rc, "%s[%zu]: %s", where, i, err);
        }
    }
    return RK_OK;
}

int rk_evreq_parse(json_t *body, struct rk_evreq *q, char *param, size_t pcap,
                   struct rk_errbuf *eb)
{
    memset(q, 0, sizeof *q);
    q->shots = -1;
    param[0] = '\0';
    char where[64];
    int rc = RK_EINVAL;
    json_t *v;
    if ((v = json_object_get(body, "shots")) && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            json_integer_value(v) > RK_EVAL_SHOTS_MAX) {
            snprintf(param, pcap, "shots");
            return rk_errbuf_set(eb, RK_EINVAL, "\"shots\" must be 0..%d", RK_EVAL_SHOTS_MAX);
        }
        q->shots = (long)json_integer_value(v);
    }
    if ((v = json_object_get(body, "shot_seed")) && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 0) {
            snprintf(param, pcap, "shot_seed");
            return rk_errbuf_set(eb, RK_EINVAL, "\"shot_seed\" must be a non-negative integer");
        }
        q->shot_seed = (uint64_t)json_integer_value(v);
    }
    if ((v = json_object_get(body, "limit")) && !json_is_null(v)) {
        if (!json_is_integer(v) || json_integer_value(v) < 0 ||
            json_integer_value(v) > RK_EVTASK_ITEMS_MAX) {
            snprintf(param, pcap, "limit");
            return rk_errbuf_set(eb, RK_EINVAL, "\"limit\" must be 0..%d", RK_EVTASK_ITEMS_MAX);
        }
        q->limit = (long)json_integer_value(v);
    }
    q->base = json_is_true(json_object_get(body, "base"));
    if ((v = json_object_get(body, "states")) && !json_is_null(v)) {
        if (!json_is_array(v) || json_array_size(v) > RK_EVREQ_STATES_MAX) {
            snprintf(param, pcap, "states");
            return rk_errbuf_set(eb, RK_EINVAL, "\"states\" must be an array of at most %d ids",
                                 RK_EVREQ_STATES_MAX);
        }
        for (size_t i = 0; i < json_array_size(v); i++) {
            const char *id = json_string_value(json_array_get(v, i));
            if (!id || !rk_state_id_valid(id)) {
                snprintf(param, pcap, "states");
                return rk_errbuf_set(eb, RK_EINVAL, "\"states\"[%zu] is not a state id", i);
            }
            for (size_t k = 0; k < q->n_states; k++)
                if (!strcmp(q->states[k], id)) {
                    snprintf(param, pcap, "states");
                    return rk_errbuf_set(eb, RK_EINVAL, "\"states\" names '%s' twice", id);
                }
            snprintf(q->states[q->n_states++], RK_STATE_ID_MAX + 1, "%s", id);
        }
    }
    json_t *tasks = json_object_get(body, "tasks"), *coll = json_object_get(body, "collateral");
    if (json_is_null(coll))
        coll = NULL;
    if ((tasks && !json_is_null(tasks) && !json_is_array(tasks)) ||
        (json_array_size(tasks) == 0 && !coll)) {
        snprintf(param, pcap, "tasks");
        return rk_errbuf_set(eb, RK_EINVAL, "\"tasks\" must be a non-empty array of tasks "
                                            "(or give \"collateral\")");
    }
    if (json_array_size(tasks) > RK_EVREQ_TASKS_MAX) {
        snprintf(param, pcap, "tasks");
        return rk_errbuf_set(eb, RK_ERANGE, "\"tasks\" has more than %d tasks",
                             RK_EVREQ_TASKS_MAX);
    }
    for (size_t i = 0; i < json_array_size(tasks); i++) {
        json_t *to = json_array_get(tasks, i);
        snprintf(where, sizeof where, "tasks[%zu]", i);
        char dname[32];
        snprintf(dname, sizeof dname, "task%zu", i + 1);
        struct rk_errbuf e2 = {0};
        if ((rc = rk_evtask_from_json(to, dname, &q->tasks[q->n_tasks], &e2)) != RK_OK) {
            snprintf(param, pcap, "%s", where);
            rc = rk_errbuf_set(eb, rc, "%s: %s", where, e2.msg);
            goto bad;
        }
        struct rk_evtask *t = q->tasks[q->n_tasks++];
        snprintf(where, sizeof where, "tasks[%zu].items", i);
        if ((rc = items_of(json_object_get(to, "items"), t, &t->split, false, where, param,
                           pcap, eb)) != RK_OK)
            goto bad;
        json_t *tr = json_object_get(to, "train");
        snprintf(where, sizeof where, "tasks[%zu].train", i);
        if (tr && !json_is_null(tr) &&
            (rc = items_of(tr, t, &t->train, false, where, param, pcap, eb)) != RK_OK)
            goto bad;
    }
    if (coll) {
        if (!json_is_object(coll)) {
            snprintf(param, pcap, "collateral");
            rc = rk_errbuf_set(eb, RK_EINVAL, "\"collateral\" must be an object");
            goto bad;
        }
        json_t *def = json_copy(coll);
        if (!def || json_object_set_new(def, "kind", json_string("generate")) ||
            json_object_set_new(def, "shots", json_integer(0))) {
            json_decref(def);
            rc = RK_ENOMEM;
            goto bad;
        }
        struct rk_errbuf e2 = {0};
        rc = rk_evtask_from_json(def, "collateral", &q->collateral, &e2);
        json_decref(def);
        if (rc != RK_OK) {
            snprintf(param, pcap, "collateral");
            rc = rk_errbuf_set(eb, rc, "collateral: %s", e2.msg);
            goto bad;
        }
        if ((rc = items_of(json_object_get(coll, "items"), q->collateral, &q->collateral->split,
                           true, "collateral.items", param, pcap, eb)) != RK_OK)
            goto bad;
    }
    /* the shots each task will use must be drawable */
    for (size_t i = 0; i < q->n_tasks; i++) {
        struct rk_evtask *t = q->tasks[i];
        long k = q->shots >= 0 ? q->shots : t->shots;
        if (k > 0 && t->train.n < (size_t)k) {
            snprintf(param, pcap, "tasks[%zu].train", i);
            rc = rk_errbuf_set(eb, RK_EINVAL, "tasks[%zu]: %ld shots need at least %ld items in "
                                              "\"train\"; there are %zu",
                               i, k, k, t->train.n);
            goto bad;
        }
        if (t->split.n == 0) {
            snprintf(param, pcap, "tasks[%zu].items", i);
            rc = rk_errbuf_set(eb, RK_EINVAL, "tasks[%zu]: \"items\" is empty", i);
            goto bad;
        }
    }
    return RK_OK;
bad:
    rk_evreq_fini(q);
    return rc;
}

static size_t n_runs_of(const struct rk_evreq *q)
{
    return q->n_states + (q->n_states == 0 || q->base);
}

size_t rk_evreq_items_given(const struct rk_evreq *q)
{
    size_t n = q->collateral ? q->collateral->split.n : 0;
    for (size_t i = 0; i < q->n_tasks; i++)
        n += q->tasks[i]->split.n + q->tasks[i]->train.n;
    return n;
}

size_t rk_evreq_items(const struct rk_evreq *q)
{
    struct rk_evrun_state runs[RK_EVREQ_STATES_MAX + 1];
    float *fake[RK_EVREQ_STATES_MAX];
    for (size_t i = 0; i < RK_EVREQ_STATES_MAX; i++)
        fake[i] = (float *)runs; /* non-NULL: a state */
    size_t n = rk_evreq_runs(q, fake, runs);
    struct rk_evrun_params p;
    rk_evreq_params(q, runs, n, &p);
    return rk_evrun_items(&p);
}

static size_t item_bytes(const struct rk_evtask *t, const struct rk_eval_item *it)
{
    size_t b = strlen(it->prompt);
    if (t->kind == RK_EVAL_CHOICE)
        for (size_t c = 0; c < it->n_choices; c++)
            b += strlen(it->choices[c]);
    else
        b += strlen(it->completion);
    return b;
}

static size_t task_work(const struct rk_evtask *t, long shots, long limit)
{
    size_t shot_max = 0, w = 0;
    const struct rk_evset *pool = t->split_is_train ? &t->split : &t->train;
    for (size_t i = 0; i < pool->n; i++) {
        size_t b = item_bytes(t, &pool->items[i]);
        shot_max = b > shot_max ? b : shot_max;
    }
    size_t k = (size_t)(shots >= 0 ? shots : t->shots), n = task_items(t, limit);
    for (size_t i = 0; i < n; i++) {
        w += item_bytes(t, &t->split.items[i]) + k * (shot_max + strlen(t->shot_sep)) + 1;
        if (t->kind == RK_EVAL_GENERATE)
            w += (size_t)t->max_tokens;
    }
    return w;
}

size_t rk_evreq_work(const struct rk_evreq *q)
{
    size_t per_run = 0;
    for (size_t i = 0; i < q->n_tasks; i++)
        per_run += task_work(q->tasks[i], q->shots, q->limit);
    size_t w = per_run * n_runs_of(q);
    if (q->collateral)
        w += task_work(q->collateral, 0, q->limit) * (q->n_states + 1);
    return w;
}

size_t rk_evreq_runs(const struct rk_evreq *q, float *const *states, struct rk_evrun_state *runs)
{
    size_t n = 0;
    if (q->n_states == 0 || q->base)
        runs[n++] = (struct rk_evrun_state){.label = "base", .state = NULL};
    for (size_t i = 0; i < q->n_states; i++)
        runs[n++] = (struct rk_evrun_state){.label = q->states[i], .state = states[i]};
    return n;
}

void rk_evreq_params(const struct rk_evreq *q, const struct rk_evrun_state *runs, size_t n_runs,
                     struct rk_evrun_params *p)
{
    *p = (struct rk_evrun_params){
        .tasks = q->tasks, .n_tasks = q->n_tasks, .collateral = q->collateral, .states = runs,
        .n_states = n_runs, .shots = q->shots, .shot_seed = q->shot_seed, .limit = q->limit,
    };
}

json_t *rk_evrun_doc(const char *model_key, const char *model_val, uint64_t fingerprint,
                     const char *split, long shots, json_t *results)
{
    char fp[24];
    snprintf(fp, sizeof fp, "%016" PRIx64, fingerprint);
    return json_pack("{s:{s:s,s:s},s:o,s:o,s:o}", "model", model_key, model_val, "fingerprint",
                     fp, "split", split ? json_string(split) : json_null(), "shots",
                     shots >= 0 ? json_integer(shots) : json_null(), "results", results);
}

/*
 * teacher.c - the outgoing client for teachers and judges (teacher.h):
 * libcurl for HTTP, jansson for the bodies, core/fileio.c for the cache file.
 *
 * DESIGN. A struct rk_teacher is immutable after rk_teacher_create except
 * for its in-flight counter (mu/cv), so any number of threads may call
 * rk_teacher_call at once; each call uses its own curl easy handle (no
 * shared connection state, CURLOPT_NOSIGNAL for threads). A call first
 * takes one of inflight_max slots (waiting at most until its deadline),
 * then runs its attempts, sleeping the backoff between them in slices of
 * 100 ms so that a cancel flag stops it quickly. Redirects are never
 * followed (a redirect could carry the key to another host), only http and
 * https are allowed, and the key travels only in the Authorization header.
 *
 * Callers: the request path runs calls on the HTTP loop's thread pool
 * (api_bestof.c), never on the loop or engine thread. A tuning job (the
 * observer and rl methods) calls rk_teacher_call from its worker thread:
 * it creates one client at job start (rk_teacher_create from teacher
 * options that mirror the judge's: URL, model, key file, timeouts,
 * retries, in-flight limit, answer size; or rk_teacher_derive for a
 * per-job model, or a URL from the operator's allow list, which never
 * carries the key), opens a cache in the job's directory
 * (rk_teacher_cache_open(dir "/<id>.teacher-cache.jsonl", ...)) so that a resumed
 * job asks nothing twice, passes its cancel flag so that cancelling the job
 * stops a call within 100 ms, and a deadline per step. Blocking there is
 * fine: the worker runs one job at a time and yields to the engine anyway.
 * The answer (text, per-token logprobs with alternatives) is plain C data
 * that the worker turns into targets for the method's loss hook in
 * adapters/, which never sees HTTP or JSON.
 */
#include "teacher.h"
#include "srv.h"

#include "rk_fileio.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct rk_teacher {
    char *name, *url, *model, *key;
    struct rk_teacher_config cfg; /* strings above, not these */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int inflight;
};

static int64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void rk_teacher_config_default(struct rk_teacher_config *c)
{
    memset(c, 0, sizeof *c);
    c->name = "teacher";
    c->connect_timeout_ms = 2000;
    c->timeout_ms = 30000;
    c->retries = 2;
    c->backoff_base_ms = 200;
    c->backoff_max_ms = 5000;
    c->inflight_max = 8;
    c->response_bytes_max = (size_t)4 << 20;
}

void rk_teacher_answer_fini(struct rk_teacher_answer *a)
{
    if (!a)
        return;
    free(a->text);
    for (size_t i = 0; i < a->n_toks; i++) {
        free(a->toks[i].token);
        for (int k = 0; k < a->toks[i].n_top; k++)
            free(a->toks[i].top[k].token);
        free(a->toks[i].top);
    }
    free(a->toks);
    memset(a, 0, sizeof *a);
}

int rk_teacher_global_init(void)
{
    return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? RK_OK : RK_EINTERNAL;
}

/* --- configuration ------------------------------------------------------- */

static int check_url(const char *name, const char *url, struct rk_errbuf *eb)
{
    const char *rest = !strncmp(url, "http://", 7) ? url + 7 : !strncmp(url, "https://", 8) ? url + 8
                                                                                          : NULL;
    if (!rest || !*rest)
        return rk_errbuf_set(eb, RK_EINVAL, "%s: the URL must start with http:// or https:// "
                             "and name a host", name);
    size_t host_len = strcspn(rest, "/");
    if (memchr(rest, '@', host_len))
        return rk_errbuf_set(eb, RK_EINVAL, "%s: the URL must not hold a user name or "
                             "password; give the key separately", name);
    if (strpbrk(url, "?# \t\r\n"))
        return rk_errbuf_set(eb, RK_EINVAL, "%s: the URL must not hold a query, a fragment or "
                             "spaces", name);
    if (strlen(url) > 1024)
        return rk_errbuf_set(eb, RK_EINVAL, "%s: the URL is longer than 1024 bytes", name);
    return RK_OK;
}

int rk_teacher_create(const struct rk_teacher_config *c, struct rk_teacher **out,
                      struct rk_errbuf *eb)
{
    *out = NULL;
    const char *name = c->name && *c->name ? c->name : "teacher";
    if (!c->base_url || !*c->base_url)
        return rk_errbuf_set(eb, RK_EINVAL, "%s: no URL configured", name);
    int rc = check_url(name, c->base_url, eb);
    if (rc != RK_OK)
        return rc;
    if (!c->model || !*c->model || strlen(c->model) > 256)
        return rk_errbuf_set(eb, RK_EINVAL, "%s: a model name of 1 to 256 bytes is needed", name);
    if (c->api_key && strpbrk(c->api_key, "\r\n"))
        return rk_errbuf_set(eb, RK_EINVAL, "%s: the key holds a line break", name);
    if (c->connect_timeout_ms < 1 || c->timeout_ms < 1 || c->retries < 0 ||
        c->retries > RK_TEACHER_RETRIES_MAX || c->backoff_base_ms < 0 ||
        c->backoff_max_ms < c->backoff_base_ms || c->inflight_max < 1 ||
        c->response_bytes_max < 256)
        return rk_errbuf_set(eb, RK_EINVAL, "%s: invalid limits (timeouts >= 1 ms, retries "
                             "0..%d, backoff base <= max, in flight >= 1, answers >= 256 bytes)",
                             name, RK_TEACHER_RETRIES_MAX);
    struct rk_teacher *t = calloc(1, sizeof *t);
    if (!t)
        return rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory", name);
    t->cfg = *c;
    t->name = strdup(name);
    t->url = strdup(c->base_url);
    t->model = strdup(c->model);
    t->key = c->api_key && *c->api_key ? strdup(c->api_key) : NULL;
    if (!t->name || !t->url || !t->model || (c->api_key && *c->api_key && !t->key)) {
        rk_teacher_free(t);
        return rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory", name);
    }
    size_t ul = strlen(t->url);
    while (ul > 0 && t->url[ul - 1] == '/')
        t->url[--ul] = 0;
    t->cfg.name = t->name;
    t->cfg.base_url = t->url;
    t->cfg.model = t->model;
    t->cfg.api_key = NULL; // only t->key holds it
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cv, NULL);
    *out = t;
    return RK_OK;
}

void rk_teacher_free(struct rk_teacher *t)
{
    if (!t)
        return;
    if (t->key) {
        volatile char *p = t->key;
        while (*p)
            *p++ = 0;
    }
    free(t->key);
    free(t->name);
    free(t->url);
    free(t->model);
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->cv);
    free(t);
}

const char *rk_teacher_name(const struct rk_teacher *t) { return t->name; }
const char *rk_teacher_url(const struct rk_teacher *t) { return t->url; }
const char *rk_teacher_model(const struct rk_teacher *t) { return t->model; }

int rk_teacher_inflight(struct rk_teacher *t)
{
    pthread_mutex_lock(&t->mu);
    int n = t->inflight;
    pthread_mutex_unlock(&t->mu);
    return n;
}

int rk_teacher_derive(const struct rk_teacher *t, const char *base_url, const char *model,
                      struct rk_teacher **out, struct rk_errbuf *eb)
{
    struct rk_teacher_config c = t->cfg;
    bool same = !base_url || !strcmp(base_url, t->url);
    c.base_url = base_url ? base_url : t->url;
    c.model = model ? model : t->model;
    c.api_key = same ? t->key : NULL;
    return rk_teacher_create(&c, out, eb);
}

/* --- retries ------------------------------------------------------------- */

int rk_teacher_backoff_ms(int attempt, int base_ms, int max_ms, uint64_t *rng)
{
    long long e = base_ms;
    for (int i = 0; i < attempt && e < max_ms; i++)
        e *= 2;
    if (e > max_ms)
        e = max_ms;
    uint64_t x = *rng ? *rng : 0x9e3779b97f4a7c15ull;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *rng = x;
    long long half = e / 2;
    return (int)(half + (long long)(x % (uint64_t)(e - half + 1)));
}

bool rk_teacher_retryable(long status, int curl_code)
{
    if (status == 429 || (status >= 500 && status <= 599))
        return true;
    if (status > 0)
        return false;
    switch (curl_code) {
    case CURLE_COULDNT_CONNECT:
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_GOT_NOTHING:
    case CURLE_PARTIAL_FILE:
        return true;
    default:
        return false;
    }
}

/* --- request body ---------------------------------------------------------- */

/* A JSON string of text that may hold invalid UTF-8 (a byte-level model's
 * sample cut anywhere): invalid bytes become U+FFFD, since jansson refuses
 * them and an empty message would go out instead. */
static json_t *text_json(const char *t)
{
    json_t *j = json_string(t ? t : "");
    if (j)
        return j;
    size_t n = strlen(t), cap = 3 * n + 8;
    char *clean = malloc(cap);
    if (!clean)
        return NULL;
    rk_utf8_sanitize((const uint8_t *)t, n, clean, cap);
    j = json_string(clean);
    free(clean);
    return j;
}

char *rk_teacher_body(const struct rk_teacher *t, const struct rk_teacher_req *q)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    json_object_set_new(o, "model", json_string(q->model ? q->model : t->model));
    json_object_set_new(o, "max_tokens", json_integer(q->max_tokens));
    json_object_set_new(o, "temperature", json_real(q->temperature));
    json_object_set_new(o, "stream", json_false());
    if (q->n_stop > 0) {
        json_t *st = json_array();
        for (int i = 0; i < q->n_stop; i++)
            json_array_append_new(st, text_json(q->stop[i]));
        json_object_set_new(o, "stop", st);
    }
    if (q->seed_given)
        json_object_set_new(o, "seed", json_integer(q->seed));
    if (q->kind == RK_TEACHER_CHAT) {
        json_t *msgs = json_array();
        for (size_t i = 0; i < q->n_msgs; i++)
            json_array_append_new(msgs, json_pack("{s:s,s:o}", "role", q->msgs[i].role,
                                                  "content", text_json(q->msgs[i].content)));
        json_object_set_new(o, "messages", msgs);
        if (q->top_logprobs >= 0) {
            json_object_set_new(o, "logprobs", json_true());
            json_object_set_new(o, "top_logprobs", json_integer(q->top_logprobs));
        }
    } else {
        json_object_set_new(o, "prompt", text_json(q->prompt));
        if (q->top_logprobs >= 0)
            json_object_set_new(o, "logprobs", json_integer(q->top_logprobs));
    }
    char *s = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(o);
    return s;
}

/* --- answer parsing -------------------------------------------------------- */

static int bad(struct rk_errbuf *eb, const char *name, const char *what)
{
    return rk_errbuf_set(eb, RK_EFORMAT, "%s: invalid answer: %s", name, what);
}

static char *dup_str(json_t *s) { return strndup(json_string_value(s), json_string_length(s)); }

static int parse_chat_lps(const char *name, json_t *lp, struct rk_teacher_answer *a,
                          struct rk_errbuf *eb)
{
    json_t *content = json_is_object(lp) ? json_object_get(lp, "content") : NULL;
    if (!json_is_array(content))
        return bad(eb, name, "choices[0].logprobs.content is not an array (logprobs were asked)");
    size_t n = json_array_size(content);
    if (n > RK_TEACHER_TOKENS_MAX)
        return bad(eb, name, "more logprob records than the limit");
    a->toks = calloc(n ? n : 1, sizeof *a->toks);
    if (!a->toks)
        return rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory", name);
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(content, i);
        json_t *tok = json_object_get(e, "token"), *v = json_object_get(e, "logprob");
        json_t *top = json_object_get(e, "top_logprobs");
        if (!json_is_object(e) || !json_is_string(tok) || !json_is_number(v) ||
            (top && !json_is_null(top) && !json_is_array(top)))
            return bad(eb, name, "a logprobs.content record lacks a string 'token' or a "
                       "numeric 'logprob'");
        struct rk_teacher_tok *t = &a->toks[a->n_toks++];
        t->token = dup_str(tok);
        t->lp = json_number_value(v);
        size_t nt = json_is_array(top) ? json_array_size(top) : 0;
        if (nt > 64)
            return bad(eb, name, "more than 64 top_logprobs for one token");
        t->top = calloc(nt ? nt : 1, sizeof *t->top);
        if (!t->token || !t->top)
            return rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory", name);
        for (size_t k = 0; k < nt; k++) {
            json_t *x = json_array_get(top, k);
            json_t *xt = json_object_get(x, "token"), *xv = json_object_get(x, "logprob");
            if (!json_is_object(x) || !json_is_string(xt) || !json_is_number(xv))
                return bad(eb, name, "a top_logprobs entry lacks a string 'token' or a numeric "
                           "'logprob'");
            t->top[t->n_top].token = dup_str(xt);
            t->top[t->n_top].lp = json_number_value(xv);
            if (!t->top[t->n_top++].token)
                return rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory", name);
        }
    }
    return RK_OK;
}

static int parse_completion_lps(const char *name, json_t *lp, struct rk_teacher_answer *a,
                                struct rk_errbuf *eb)
{
    json_t *toks = json_is_object(lp) ? json_object_get(lp, "tokens") : NULL;
    json_t *lps = json_is_object(lp) ? json_object_get(lp, "token_logprobs") : NULL;
    json_t *tops = json_is_object(lp) ? json_object_get(lp, "top_logprobs") : NULL;
    if (!json_is_array(toks) || !json_is_array(lps) ||
        json_array_size(toks) != json_array_size(lps) ||
        (tops && !json_is_null(tops) &&
         (!json_is_array(tops) || json_array_size(tops) != json_array_size(toks))))
        return bad(eb, name, "choices[0].logprobs needs 'tokens' and 'token_logprobs' arrays of "
                   "one length (logprobs were asked)");
    size_t n = json_array_size(toks);
    if (n > RK_TEACHER_TOKENS_MAX)
        return bad(eb, name, "more logprob records than the limit");
    a->toks = calloc(n ? n : 1, sizeof *a->toks);
    if (!a->toks)
        return rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory", name);
    for (size_t i = 0; i < n; i++) {
        json_t *tok = json_array_get(toks, i), *v = json_array_get(lps, i);
        json_t *top = json_is_array(tops) ? json_array_get(tops, i) : NULL;
        // The first token of an echoed prompt has no log-probability (null).
        if (!json_is_string(tok) || !(json_is_number(v) || json_is_null(v)) ||
            (top && !json_is_null(top) && !json_is_object(top)))
            return bad(eb, name, "logprobs.tokens holds a non-string, token_logprobs a "
                       "non-number, or top_logprobs a non-object");
        struct rk_teacher_tok *t = &a->toks[a->n_toks++];
        t->token = dup_str(tok);
        t->lp = json_is_number(v) ? json_number_value(v) : -INFINITY;
        size_t nt = json_is_object(top) ? json_object_size(top) : 0;
        if (nt > 64)
            return bad(eb, name, "more than 64 top_logprobs for one token");
        t->top = calloc(nt ? nt : 1, sizeof *t->top);
        if (!t->token || !t->top)
            return rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory", name);
        const char *k;
        json_t *xv;
        if (json_is_object(top))
            json_object_foreach(top, k, xv)
            {
                if (!json_is_number(xv))
                    return bad(eb, name, "a top_logprobs value is not a number");
                t->top[t->n_top].token = strdup(k);
                t->top[t->n_top].lp = json_number_value(xv);
                if (!t->top[t->n_top++].token)
                    return rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory", name);
            }
    }
    return RK_OK;
}

int rk_teacher_parse(const char *name, enum rk_teacher_kind kind, bool want_lps,
                     const char *body, size_t len, struct rk_teacher_answer *a,
                     struct rk_errbuf *eb)
{
    memset(a, 0, sizeof *a);
    a->prompt_tokens = a->completion_tokens = -1;
    json_error_t je;
    json_t *o = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    int rc = RK_OK;
    if (!o) {
        rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: invalid answer: not JSON (%s at byte %d)", name,
                           je.text, je.position);
        goto out;
    }
    json_t *choices = json_is_object(o) ? json_object_get(o, "choices") : NULL;
    if (!json_is_object(o)) {
        rc = bad(eb, name, "the body is not a JSON object");
        goto out;
    }
    if (!json_is_array(choices) || json_array_size(choices) == 0) {
        rc = bad(eb, name, json_object_get(o, "error") ? "an error object instead of choices"
                                                      : "'choices' is missing or empty");
        goto out;
    }
    json_t *c0 = json_array_get(choices, 0);
    json_t *text = NULL;
    if (!json_is_object(c0)) {
        rc = bad(eb, name, "choices[0] is not an object");
        goto out;
    }
    if (kind == RK_TEACHER_CHAT) {
        json_t *m = json_object_get(c0, "message");
        text = json_is_object(m) ? json_object_get(m, "content") : NULL;
        if (!json_is_string(text)) {
            rc = bad(eb, name, "choices[0].message.content is missing or not a string");
            goto out;
        }
    } else {
        text = json_object_get(c0, "text");
        if (!json_is_string(text)) {
            rc = bad(eb, name, "choices[0].text is missing or not a string");
            goto out;
        }
    }
    json_t *fr = json_object_get(c0, "finish_reason");
    if (fr && !json_is_null(fr) && !json_is_string(fr)) {
        rc = bad(eb, name, "choices[0].finish_reason is not a string");
        goto out;
    }
    if (json_is_string(fr))
        snprintf(a->finish, sizeof a->finish, "%s", json_string_value(fr));
    if (!(a->text = dup_str(text))) {
        rc = rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory", name);
        goto out;
    }
    json_t *usage = json_object_get(o, "usage");
    if (usage && !json_is_null(usage)) {
        json_t *pt = json_object_get(usage, "prompt_tokens");
        json_t *ct = json_object_get(usage, "completion_tokens");
        if (!json_is_object(usage) || (pt && !json_is_integer(pt)) ||
            (ct && !json_is_integer(ct)) || json_integer_value(pt) < 0 ||
            json_integer_value(ct) < 0) {
            rc = bad(eb, name, "'usage' is not an object of non-negative token counts");
            goto out;
        }
        if (pt)
            a->prompt_tokens = json_integer_value(pt);
        if (ct)
            a->completion_tokens = json_integer_value(ct);
    }
    if (want_lps) {
        json_t *lp = json_object_get(c0, "logprobs");
        rc = kind == RK_TEACHER_CHAT ? parse_chat_lps(name, lp, a, eb)
                                     : parse_completion_lps(name, lp, a, eb);
    }
out:
    json_decref(o);
    if (rc != RK_OK)
        rk_teacher_answer_fini(a);
    return rc;
}

/* --- HTTP ------------------------------------------------------------------ */

struct sink {
    char *p;
    size_t len, cap, max;
    bool over;
    long retry_after_s; /* -1: none */
};

static size_t on_body(char *data, size_t size, size_t n, void *user)
{
    struct sink *s = user;
    size_t add = size * n;
    if (add > s->max - s->len) {
        s->over = true;
        return 0; // aborts the transfer
    }
    if (s->len + add + 1 > s->cap) {
        size_t cap = s->cap ? s->cap : 4096;
        while (cap < s->len + add + 1)
            cap *= 2;
        char *p = realloc(s->p, cap);
        if (!p)
            return 0;
        s->p = p;
        s->cap = cap;
    }
    memcpy(s->p + s->len, data, add);
    s->len += add;
    s->p[s->len] = 0;
    return add;
}

static size_t on_header(char *data, size_t size, size_t n, void *user)
{
    struct sink *s = user;
    size_t len = size * n;
    if (len > 12 && !strncasecmp(data, "Retry-After:", 12)) {
        char tmp[32];
        size_t k = len - 12 < sizeof tmp - 1 ? len - 12 : sizeof tmp - 1;
        memcpy(tmp, data + 12, k);
        tmp[k] = 0;
        char *end;
        long v = strtol(tmp, &end, 10);
        if (end != tmp && v >= 0)
            s->retry_after_s = v;
    }
    return len;
}

struct progress {
    const atomic_bool *cancel;
    int64_t deadline_us;
};

static int on_progress(void *user, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    struct progress *p = user;
    (void)dt, (void)dn, (void)ut, (void)un;
    if (p->cancel && atomic_load(p->cancel))
        return 1;
    return 0;
}

/* Sleep ms, in slices, unless cancelled. Returns false when cancelled. */
static bool nap(int ms, const atomic_bool *cancel)
{
    while (ms > 0) {
        if (cancel && atomic_load(cancel))
            return false;
        int s = ms < 100 ? ms : 100;
        struct timespec ts = {s / 1000, (long)(s % 1000) * 1000000};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
        ms -= s;
    }
    return !(cancel && atomic_load(cancel));
}

static int take_slot(struct rk_teacher *t, int64_t deadline_us, const atomic_bool *cancel,
                     struct rk_errbuf *eb)
{
    pthread_mutex_lock(&t->mu);
    while (t->inflight >= t->cfg.inflight_max) {
        if (cancel && atomic_load(cancel)) {
            pthread_mutex_unlock(&t->mu);
            return rk_errbuf_set(eb, RK_ECANCELED, "%s: cancelled", t->name);
        }
        int64_t now = mono_us();
        if (deadline_us && now >= deadline_us) {
            pthread_mutex_unlock(&t->mu);
            return rk_errbuf_set(eb, RK_ETIMEOUT, "%s: the deadline passed while %d requests "
                                 "were in flight (the limit)", t->name, t->cfg.inflight_max);
        }
        // Wake at least every 100 ms to look at cancel and the deadline.
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100000000;
        if (ts.tv_nsec >= 1000000000)
            ts.tv_sec++, ts.tv_nsec -= 1000000000;
        pthread_cond_timedwait(&t->cv, &t->mu, &ts);
    }
    t->inflight++;
    pthread_mutex_unlock(&t->mu);
    return RK_OK;
}

static void give_slot(struct rk_teacher *t)
{
    pthread_mutex_lock(&t->mu);
    t->inflight--;
    pthread_cond_signal(&t->cv);
    pthread_mutex_unlock(&t->mu);
}

/* The endpoint's own reason for a non-2xx answer, when it sent an OpenAI
 * error object: its message, cut to fit `cap`, control bytes and any copy
 * of the key replaced, so that nothing of the key can reach an error. */
static void error_reason(const struct rk_teacher *t, const struct sink *s, char *out, size_t cap)
{
    out[0] = 0;
    if (!s->p || !s->len)
        return;
    json_t *o = json_loadb(s->p, s->len, 0, NULL);
    json_t *e = json_is_object(o) ? json_object_get(o, "error") : NULL;
    json_t *m = json_is_object(e) ? json_object_get(e, "message") : json_is_string(e) ? e : NULL;
    if (json_is_string(m)) {
        char tmp[1024];
        size_t w = 0, kl = t->key ? strlen(t->key) : 0;
        for (const char *p = json_string_value(m); *p && w + 6 < sizeof tmp;) {
            if (kl && !strncmp(p, t->key, kl)) {
                memcpy(tmp + w, "[key]", 5);
                w += 5;
                p += kl;
            } else {
                tmp[w++] = *p++;
            }
        }
        tmp[w] = 0;
        for (char *c = tmp; *c; c++)
            if ((unsigned char)*c < 0x20 || *c == 0x7f)
                *c = ' ';
        snprintf(out, cap, ": \"%.*s\"", (int)(cap > 8 ? cap - 8 : 0), tmp);
    }
    json_decref(o);
}

/* One attempt. Fills *status (0: no response) and *cc. */
static void attempt(struct rk_teacher *t, const char *url, const char *body,
                    struct curl_slist *hdrs, long timeout_ms, struct progress *pg,
                    struct sink *s, long *status, CURLcode *cc)
{
    *status = 0;
    CURL *h = curl_easy_init();
    if (!h) {
        *cc = CURLE_OUT_OF_MEMORY;
        return;
    }
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
#if LIBCURL_VERSION_NUM >= 0x075500
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
#else
    curl_easy_setopt(h, CURLOPT_PROTOCOLS, (long)(CURLPROTO_HTTP | CURLPROTO_HTTPS));
#endif
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 0L);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
    curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, (long)t->cfg.connect_timeout_ms);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, s);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, s);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(h, CURLOPT_XFERINFODATA, pg);
    curl_easy_setopt(h, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)s->max);
    *cc = curl_easy_perform(h);
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
    curl_easy_cleanup(h);
}

int rk_teacher_call(struct rk_teacher *t, const struct rk_teacher_req *q,
                    struct rk_teacher_cache *cache, int64_t deadline_us,
                    const atomic_bool *cancel, struct rk_teacher_answer *a,
                    struct rk_errbuf *eb)
{
    memset(a, 0, sizeof *a);
    if (q->max_tokens < 1 || q->top_logprobs < -1 || q->top_logprobs > RK_TEACHER_TOP_MAX ||
        !(q->temperature >= 0) ||
        (q->kind == RK_TEACHER_CHAT ? q->n_msgs == 0 : !q->prompt))
        return rk_errbuf_set(eb, RK_EINVAL, "%s: invalid request (max_tokens >= 1, "
                             "top_logprobs -1..%d, a prompt or messages)", t->name,
                             RK_TEACHER_TOP_MAX);
    bool want_lps = q->top_logprobs >= 0;
    char *body = rk_teacher_body(t, q);
    char *url = NULL, *key = NULL, auth[64 + 4096];
    struct curl_slist *hdrs = NULL;
    struct sink s = {0};
    int rc = RK_OK;
    if (!body)
        return rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory", t->name);
    const char *path = q->kind == RK_TEACHER_CHAT ? "/chat/completions" : "/completions";
    if (asprintf(&url, "%s%s", t->url, path) < 0)
        url = NULL;
    if (cache && url && asprintf(&key, "%s %s", url, body) < 0)
        key = NULL;
    if (!url || (cache && !key)) {
        rc = rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory", t->name);
        goto out;
    }
    if (cache) {
        size_t len;
        char *hit = rk_teacher_cache_get(cache, key, &len);
        if (hit) {
            rc = rk_teacher_parse(t->name, q->kind, want_lps, hit, len, a, eb);
            free(hit);
            if (rc == RK_OK) {
                a->cached = true;
                goto out;
            }
            rk_log(RK_LOG_WARN, "%s: a cached answer does not parse; asking again", t->name);
        }
    }
    hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
    hdrs = curl_slist_append(hdrs, "Accept: application/json");
    if (t->key) {
        if (strlen(t->key) > 4096) {
            rc = rk_errbuf_set(eb, RK_EINVAL, "%s: the key is longer than 4096 bytes", t->name);
            goto out;
        }
        snprintf(auth, sizeof auth, "Authorization: Bearer %s", t->key);
        hdrs = curl_slist_append(hdrs, auth);
        memset(auth, 0, sizeof auth);
    }
    if (!hdrs) {
        rc = rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory", t->name);
        goto out;
    }
    rc = take_slot(t, deadline_us, cancel, eb);
    if (rc != RK_OK)
        goto out;
    uint64_t rng = (uint64_t)mono_us() * 0x9e3779b97f4a7c15ull ^ (uintptr_t)&s;
    struct progress pg = {cancel, deadline_us};
    char last[220] = "";
    for (int at = 0;; at++) {
        long timeout_ms = t->cfg.timeout_ms;
        if (deadline_us) {
            int64_t left = (deadline_us - mono_us()) / 1000;
            if (left <= 0) {
                rc = rk_errbuf_set(eb, RK_ETIMEOUT, "%s: the deadline passed after %d "
                                   "attempt(s)%s%s", t->name, at, *last ? "; last: " : "", last);
                break;
            }
            if (left < timeout_ms)
                timeout_ms = (long)left;
        }
        s.len = 0;
        s.over = false;
        s.retry_after_s = -1;
        s.max = t->cfg.response_bytes_max;
        long status;
        CURLcode cc;
        attempt(t, url, body, hdrs, timeout_ms, &pg, &s, &status, &cc);
        a->attempts = at + 1;
        a->http_status = status;
        if (cancel && atomic_load(cancel)) {
            rc = rk_errbuf_set(eb, RK_ECANCELED, "%s: cancelled", t->name);
            break;
        }
        if (s.over || cc == CURLE_FILESIZE_EXCEEDED) {
            rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: the answer is larger than %zu bytes",
                               t->name, t->cfg.response_bytes_max);
            break;
        }
        if (cc == CURLE_OPERATION_TIMEDOUT) {
            rc = rk_errbuf_set(eb, RK_ETIMEOUT, "%s: no answer within %ld ms (attempt %d)",
                               t->name, timeout_ms, at + 1);
            break;
        }
        if (cc == CURLE_OK && status >= 200 && status <= 299) {
            rc = rk_teacher_parse(t->name, q->kind, want_lps, s.p ? s.p : "", s.len, a, eb);
            a->attempts = at + 1;
            a->http_status = status;
            if (rc == RK_OK && cache) {
                struct rk_errbuf ceb = {0};
                if (rk_teacher_cache_put(cache, key, s.p, s.len, &ceb) != RK_OK)
                    rk_log(RK_LOG_WARN, "%s: answer not cached: %s", t->name,
                           rk_file_error_reason(ceb.msg));
            }
            break;
        }
        if (cc == CURLE_OK)
            snprintf(last, sizeof last, "HTTP %ld", status);
        else
            snprintf(last, sizeof last, "%s", curl_easy_strerror(cc));
        if (!rk_teacher_retryable(cc == CURLE_OK ? status : 0, (int)cc) ||
            at >= t->cfg.retries) {
            bool refused = cc == CURLE_OK && status >= 400 && status <= 499 && status != 429;
            char why[120] = "";
            if (cc == CURLE_OK)
                error_reason(t, &s, why, sizeof why);
            rc = rk_errbuf_set(eb, refused ? RK_EINVAL : RK_EIO, "%s: %s after %d attempt(s)%s%s",
                               t->name, last, at + 1,
                               refused ? " (refused; not retried)" : "", why);
            break;
        }
        int wait = rk_teacher_backoff_ms(at, t->cfg.backoff_base_ms, t->cfg.backoff_max_ms, &rng);
        if (s.retry_after_s >= 0 && s.retry_after_s * 1000 <= t->cfg.backoff_max_ms &&
            s.retry_after_s * 1000 > wait)
            wait = (int)(s.retry_after_s * 1000);
        if (deadline_us && mono_us() + (int64_t)wait * 1000 >= deadline_us) {
            rc = rk_errbuf_set(eb, RK_ETIMEOUT, "%s: %s; the deadline leaves no time for "
                               "another attempt", t->name, last);
            break;
        }
        rk_log(RK_LOG_INFO, "%s: %s; retry %d of %d in %d ms", t->name, last, at + 1,
               t->cfg.retries, wait);
        if (!nap(wait, cancel)) {
            rc = rk_errbuf_set(eb, RK_ECANCELED, "%s: cancelled", t->name);
            break;
        }
    }
    give_slot(t);
out:
    if (rc != RK_OK) {
        int at = a->attempts;
        long st = a->http_status;
        rk_teacher_answer_fini(a);
        a->attempts = at;
        a->http_status = st;
    }
    curl_slist_free_all(hdrs);
    free(s.p);
    free(key);
    free(url);
    free(body);
    return rc;
}

/* --- cache ------------------------------------------------------------------ */

/*
 * File format: JSON Lines, one answer a line, appended as it arrives:
 *   {"key": "<url> <request body>", "answer": "<body>"}\n
 * A record counts once its newline is on disk (each append is fsynced). At
 * open, a last line without its newline, or one that does not parse, is
 * the torn end of an append cut short by a crash: it is ignored and cut off
 * the file, so that the next append starts a clean line. Any other line that
 * is not such a record is RK_EFORMAT, and the job fails rather than silently
 * asking the teacher everything again.
 */
struct centry {
    uint64_t h;
    char *key, *body;
    size_t body_len;
};

struct rk_teacher_cache {
    pthread_mutex_t mu;
    char *path;
    int fd;    /* the file, open for appending (-1: not yet created, or no path) */
    off_t end; /* its length: the end of the last whole record */
    struct centry *e;
    size_t n, cap, entries_max, bytes, bytes_max;
};

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static int cache_add(struct rk_teacher_cache *c, const char *key, const char *body, size_t len)
{
    size_t add = strlen(key) + len;
    if (c->n >= c->entries_max || add > c->bytes_max - c->bytes)
        return RK_ERANGE;
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 16;
        struct centry *e = realloc(c->e, cap * sizeof *e);
        if (!e)
            return RK_ENOMEM;
        c->e = e;
        c->cap = cap;
    }
    struct centry *e = &c->e[c->n];
    e->key = strdup(key);
    e->body = malloc(len + 1);
    if (!e->key || !e->body) {
        free(e->key);
        free(e->body);
        return RK_ENOMEM;
    }
    memcpy(e->body, body, len);
    e->body[len] = 0;
    e->body_len = len;
    e->h = fnv1a(key);
    c->n++;
    c->bytes += add;
    return RK_OK;
}

static void cache_drop_last(struct rk_teacher_cache *c)
{
    c->n--;
    c->bytes -= strlen(c->e[c->n].key) + c->e[c->n].body_len;
    free(c->e[c->n].key);
    free(c->e[c->n].body);
}

static struct centry *cache_find(struct rk_teacher_cache *c, const char *key)
{
    uint64_t h = fnv1a(key);
    for (size_t i = 0; i < c->n; i++)
        if (c->e[i].h == h && !strcmp(c->e[i].key, key))
            return &c->e[i];
    return NULL;
}

/* One record line s[len] (without its newline): added, or RK_EFORMAT /
 * RK_ERANGE / RK_ENOMEM with eb saying which line. */
static int cache_load_line(struct rk_teacher_cache *c, const char *s, size_t len, size_t line,
                           struct rk_errbuf *eb)
{
    json_error_t je;
    json_t *x = json_loadb(s, len, JSON_REJECT_DUPLICATES, &je);
    json_t *k = json_object_get(x, "key"), *b = json_object_get(x, "answer");
    int rc = RK_OK;
    if (!json_is_object(x) || json_object_size(x) != 2 || !json_is_string(k) ||
        !json_is_string(b) || strlen(json_string_value(k)) != json_string_length(k))
        rc = rk_errbuf_set(eb, RK_EFORMAT, "teacher cache %s: line %zu is not "
                           "{\"key\": string, \"answer\": string}", c->path, line);
    else if (cache_find(c, json_string_value(k)))
        rc = rk_errbuf_set(eb, RK_EFORMAT, "teacher cache %s: line %zu repeats a key", c->path,
                           line);
    else if ((rc = cache_add(c, json_string_value(k), json_string_value(b),
                             json_string_length(b))) != RK_OK)
        rc = rk_errbuf_set(eb, rc, "teacher cache %s: line %zu: %s", c->path, line,
                           rc == RK_ERANGE ? "over the cache's limits" : "out of memory");
    json_decref(x);
    return rc;
}

/* Is s[len] (no newline) a whole JSON value? For telling a torn last line
 * from a bad one. */
static bool json_whole(const char *s, size_t len)
{
    json_error_t je;
    json_t *x = json_loadb(s, len, 0, &je);
    json_decref(x);
    return x != NULL;
}

int rk_teacher_cache_open(const char *path, size_t entries_max, size_t bytes_max,
                          struct rk_teacher_cache **out, struct rk_errbuf *eb)
{
    *out = NULL;
    struct rk_teacher_cache *c = calloc(1, sizeof *c);
    if (!c || (path && !(c->path = strdup(path)))) {
        free(c);
        return rk_errbuf_set(eb, RK_ENOMEM, "teacher cache: out of memory");
    }
    pthread_mutex_init(&c->mu, NULL);
    c->fd = -1;
    c->entries_max = entries_max;
    c->bytes_max = bytes_max;
    if (!path) {
        *out = c;
        return RK_OK;
    }
    void *buf = NULL;
    size_t len = 0;
    // The file holds at most bytes_max of keys and answers plus JSON escaping.
    int rc = rk_file_read_all(path, bytes_max * 6 + 4096, &buf, &len, eb);
    if (rc == RK_ENOTFOUND) {
        *out = c;
        return RK_OK;
    }
    if (rc != RK_OK) {
        rk_teacher_cache_free(c);
        return rc;
    }
    const char *s = buf;
    size_t at = 0, line = 1;
    while (at < len) {
        const char *nl = memchr(s + at, '\n', len - at);
        size_t n = nl ? (size_t)(nl - (s + at)) : len - at;
        bool last = !nl || at + n + 1 == len;
        if (!nl)
            break; // torn: no newline
        rc = cache_load_line(c, s + at, n, line, eb);
        if (rc == RK_EFORMAT && last && !json_whole(s + at, n)) {
            rc = RK_OK; // a torn last record (cut short, then padded by the file system)
            break;
        }
        if (rc != RK_OK)
            break;
        at += n + 1;
        line++;
    }
    free(buf);
    if (rc == RK_OK && (c->fd = open(path, O_WRONLY | O_APPEND | O_NOFOLLOW | O_CLOEXEC)) < 0)
        rc = rk_errbuf_set(eb, RK_EIO, "teacher cache %s: %s", path, strerror(errno));
    if (rc == RK_OK && at < len) {
        rk_log(RK_LOG_WARN, "teacher cache %s: ignoring a torn last record (%zu bytes)", path,
               len - at);
        if (ftruncate(c->fd, (off_t)at) != 0 || fdatasync(c->fd) != 0)
            rc = rk_errbuf_set(eb, RK_EIO, "teacher cache %s: cannot cut off its torn last "
                               "record: %s", path, strerror(errno));
    }
    if (rc != RK_OK) {
        rk_teacher_cache_free(c);
        return rc;
    }
    c->end = (off_t)at;
    *out = c;
    return RK_OK;
}

void rk_teacher_cache_free(struct rk_teacher_cache *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n; i++) {
        free(c->e[i].key);
        free(c->e[i].body);
    }
    if (c->fd >= 0)
        close(c->fd);
    free(c->e);
    free(c->path);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

size_t rk_teacher_cache_count(struct rk_teacher_cache *c)
{
    pthread_mutex_lock(&c->mu);
    size_t n = c->n;
    pthread_mutex_unlock(&c->mu);
    return n;
}

char *rk_teacher_cache_get(struct rk_teacher_cache *c, const char *key, size_t *len)
{
    char *r = NULL;
    pthread_mutex_lock(&c->mu);
    struct centry *e = cache_find(c, key);
    if (e && (r = malloc(e->body_len + 1))) {
        memcpy(r, e->body, e->body_len + 1);
        *len = e->body_len;
    }
    pthread_mutex_unlock(&c->mu);
    return r;
}

/* Append entry e as one line and fsync it; the first append creates the
 * file and makes its directory entry durable too. On failure the file is
 * cut back to its last whole record. */
static int cache_append_locked(struct rk_teacher_cache *c, const struct centry *e,
                               struct rk_errbuf *eb)
{
    json_t *o = json_pack("{s:s,s:s#}", "key", e->key, "answer", e->body, e->body_len);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    if (!s)
        return rk_errbuf_set(eb, RK_ENOMEM, "teacher cache: out of memory");
    size_t n = strlen(s);
    s[n] = '\n'; // json_dumps escapes every newline inside strings: one line
    int rc = RK_OK;
    if (c->fd < 0) {
        c->fd = open(c->path, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
        char *dir = strdup(c->path), *slash = dir ? strrchr(dir, '/') : NULL;
        if (slash)
            *slash = 0;
        if (c->fd < 0)
            rc = rk_errbuf_set(eb, RK_EIO, "teacher cache %s: %s", c->path, strerror(errno));
        else if (dir && rk_dir_fsync(slash ? dir : ".") != RK_OK)
            rc = rk_errbuf_set(eb, RK_EIO, "teacher cache %s: fsync of its directory: %s",
                               c->path, strerror(errno));
        free(dir);
    }
    for (size_t done = 0; rc == RK_OK && done < n + 1;) {
        ssize_t k = write(c->fd, s + done, n + 1 - done);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            rc = rk_errbuf_set(eb, RK_EIO, "teacher cache %s: %s", c->path,
                               k < 0 ? strerror(errno) : "short write");
        else
            done += (size_t)k;
    }
    if (rc == RK_OK && fdatasync(c->fd) != 0)
        rc = rk_errbuf_set(eb, RK_EIO, "teacher cache %s: fsync: %s", c->path, strerror(errno));
    free(s);
    if (rc == RK_OK)
        c->end += (off_t)(n + 1);
    else if (c->fd >= 0 && ftruncate(c->fd, c->end) != 0)
        rk_log(RK_LOG_WARN, "teacher cache %s: cannot cut back a failed append: %s", c->path,
               strerror(errno));
    return rc;
}

int rk_teacher_cache_put(struct rk_teacher_cache *c, const char *key, const char *body,
                         size_t len, struct rk_errbuf *eb)
{
    int rc = RK_OK;
    pthread_mutex_lock(&c->mu);
    if (cache_find(c, key))
        goto out;
    rc = cache_add(c, key, body, len);
    if (rc == RK_ERANGE) {
        rc = RK_OK; // full: the answer is used, not kept
        goto out;
    }
    if (rc != RK_OK) {
        rk_errbuf_set(eb, rc, "teacher cache: out of memory");
        goto out;
    }
    if (c->path && (rc = cache_append_locked(c, &c->e[c->n - 1], eb)) != RK_OK)
        cache_drop_last(c); // not on disk: forget it here too, so memory and file agree
out:
    pthread_mutex_unlock(&c->mu);
    return rc;
}

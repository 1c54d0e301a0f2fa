/*
 * rl_data.c - prompts and local checkers of the "rl" tuning method: the
 * JSONL reader and the checker's score callback (rl_data.h).
 */
#include "rl_data.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

void rk_rl_data_free(struct rk_rl_data *d)
{
    if (!d)
        return;
    for (size_t i = 0; i < d->n; i++) {
        free(d->prompt[i]), free(d->answer[i]), free(d->tokens[i]);
        if (d->has_re[i])
            regfree(&d->re[i]);
    }
    free(d->prompt), free(d->answer), free(d->re), free(d->has_re), free(d->tokens);
    free(d->n_tokens);
    free(d);
}

static int grow(struct rk_rl_data *d, size_t cap)
{
    char **p = realloc(d->prompt, cap * sizeof *p);
    if (p)
        d->prompt = p;
    char **a = realloc(d->answer, cap * sizeof *a);
    if (a)
        d->answer = a;
    regex_t *re = realloc(d->re, cap * sizeof *re);
    if (re)
        d->re = re;
    bool *h = realloc(d->has_re, cap * sizeof *h);
    if (h)
        d->has_re = h;
    uint32_t **t = realloc(d->tokens, cap * sizeof *t);
    if (t)
        d->tokens = t;
    size_t *nt = realloc(d->n_tokens, cap * sizeof *nt);
    if (nt)
        d->n_tokens = nt;
    return p && a && re && h && t && nt ? RK_OK : RK_ENOMEM;
}

/* One line into entry d->n (not yet counted). */
static int parse_line(struct rk_rl_data *d, const char *s, size_t l, size_t line,
                      const struct rk_jsonl_limits *lim, int max_tokens, struct rk_errbuf *eb)
{
    json_error_t je;
    json_t *o = json_loadb(s, l, JSON_REJECT_DUPLICATES, &je);
    int rc = RK_OK;
    const char *key;
    json_t *val;
    size_t i = d->n;
    d->prompt[i] = d->answer[i] = NULL;
    d->tokens[i] = NULL;
    d->has_re[i] = false;
    json_t *p = json_is_object(o) ? json_object_get(o, "prompt") : NULL;
    json_t *a = json_is_object(o) ? json_object_get(o, "answer") : NULL;
    json_t *r = json_is_object(o) ? json_object_get(o, "regex") : NULL;
    if (!json_is_object(o)) {
        rc = rk_errbuf_set(eb, RK_EINVAL, "line %zu: %s", line,
                           o ? "each line must be a JSON object" : je.text);
        goto out;
    }
    json_object_foreach(o, key, val) {
        if (strcmp(key, "prompt") && strcmp(key, "answer") && strcmp(key, "regex")) {
            rc = rk_errbuf_set(eb, RK_EINVAL, "line %zu: unexpected key \"%.40s\" (an rl line "
                               "is {\"prompt\"} with an optional \"answer\" or \"regex\")",
                               line, key);
            goto out;
        }
    }
    if (!json_is_string(p) || json_string_length(p) == 0) {
        rc = rk_errbuf_set(eb, RK_EINVAL, "line %zu: the rl method needs a non-empty string "
                           "\"prompt\" on every line", line);
        goto out;
    }
    if ((a && !json_is_string(a)) || (r && !json_is_string(r)) || (a && r)) {
        rc = rk_errbuf_set(eb, RK_EINVAL, "line %zu: \"answer\" and \"regex\" are strings, and "
                           "a line has at most one of them", line);
        goto out;
    }
    if (r && json_string_length(r) > RK_RL_REGEX_MAX) {
        rc = rk_errbuf_set(eb, RK_ERANGE, "line %zu: \"regex\" longer than %d bytes", line,
                           RK_RL_REGEX_MAX);
        goto out;
    }
    if (r) {
        int e = regcomp(&d->re[i], json_string_value(r), REG_EXTENDED | REG_NOSUB);
        if (e) {
            char why[128];
            regerror(e, &d->re[i], why, sizeof why);
            rc = rk_errbuf_set(eb, RK_EINVAL, "line %zu: \"regex\" is not a POSIX extended "
                               "regular expression: %s", line, why);
            goto out;
        }
        d->has_re[i] = true;
    }
    size_t pl = json_string_length(p), got = 0;
    rk_tok_encode(d->tok, json_string_value(p), pl, NULL, 0, &got);
    if (got + (size_t)max_tokens > lim->seq_len_max) {
        rc = rk_errbuf_set(eb, RK_ERANGE, "line %zu: a prompt of %zu tokens and rl_max_tokens "
                           "%d exceed the limit of %zu tokens", line, got, max_tokens,
                           lim->seq_len_max);
        goto out;
    }
    if (!(d->prompt[i] = strndup(json_string_value(p), pl)) ||
        (a && !(d->answer[i] = strndup(json_string_value(a), json_string_length(a)))) ||
        !(d->tokens[i] = malloc((got ? got : 1) * sizeof(uint32_t)))) {
        rc = RK_ENOMEM;
        goto out;
    }
    rk_tok_encode(d->tok, d->prompt[i], pl, d->tokens[i], got, &got);
    d->n_tokens[i] = got;
    d->n_checked += a || r;
out:
    if (rc != RK_OK) {
        free(d->prompt[i]), free(d->answer[i]), free(d->tokens[i]);
        if (d->has_re[i])
            regfree(&d->re[i]);
        d->has_re[i] = false;
    }
    json_decref(o);
    return rc;
}

int rk_rl_data_parse(const char *buf, size_t len, const struct rk_tokenizer *tok,
                     const struct rk_jsonl_limits *lim, int rl_max_tokens,
                     struct rk_rl_data **out, struct rk_errbuf *eb)
{
    struct rk_jsonl_limits dl;
    if (!lim) {
        rk_jsonl_limits_default(&dl);
        lim = &dl;
    }
    *out = NULL;
    if (len > lim->bytes_max)
        return rk_errbuf_set(eb, RK_ERANGE, "dataset of %zu bytes exceeds the limit %zu", len,
                             lim->bytes_max);
    struct rk_rl_data *d = calloc(1, sizeof *d);
    if (!d)
        return RK_ENOMEM;
    d->tok = tok;
    rk_tok_encode(tok, "\n\n", 2, d->stop, 8, &d->n_stop);
    size_t cap = 0, line = 0, pos = 0;
    int rc = RK_OK;
    while (pos < len && rc == RK_OK) {
        const char *s = buf + pos;
        const char *nl = memchr(s, '\n', len - pos);
        size_t l = nl ? (size_t)(nl - s) : len - pos;
        pos += l + (nl ? 1 : 0);
        line++;
        size_t k = 0;
        while (k < l && (s[k] == ' ' || s[k] == '\t' || s[k] == '\r'))
            k++;
        if (k == l)
            continue;
        if (d->n + 1 > lim->lines_max) {
            rc = rk_errbuf_set(eb, RK_ERANGE, "line %zu: more than %zu examples (the limit)",
                               line, lim->lines_max);
            break;
        }
        if (d->n == cap && (rc = grow(d, cap = cap ? 2 * cap : 16)) != RK_OK)
            break;
        if ((rc = parse_line(d, s, l, line, lim, rl_max_tokens, eb)) == RK_OK)
            d->n++;
    }
    if (rc == RK_OK && d->n == 0)
        rc = rk_errbuf_set(eb, RK_EINVAL, "the dataset holds no prompts");
    if (rc != RK_OK) {
        rk_rl_data_free(d);
        return rc;
    }
    *out = d;
    return RK_OK;
}

void rk_rl_data_prompts(const struct rk_rl_data *d, struct rk_rl_prompts *out)
{
    out->tokens = (const uint32_t *const *)d->tokens;
    out->n = d->n_tokens;
    out->count = d->n;
}

void rk_rl_completion_text(const struct rk_tokenizer *tok, const uint32_t *t, size_t n,
                           char *buf, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n && o + 1 < cap; i++) {
        size_t bl = 0;
        const uint8_t *b = rk_tok_bytes(tok, t[i], &bl);
        if (bl > cap - 1 - o)
            bl = cap - 1 - o;
        memcpy(buf + o, b, bl);
        o += bl;
    }
    buf[o] = 0;
    char *cut = strstr(buf, "\n\n");
    if (cut)
        *cut = 0;
    size_t l = strlen(buf), s = 0;
    while (l && strchr(" \t\r\n", buf[l - 1]))
        buf[--l] = 0;
    while (buf[s] && strchr(" \t\r\n", buf[s]))
        s++;
    memmove(buf, buf + s, l - s + 1);
}

int rk_rl_check_score(void *user, size_t prompt, int k, const uint32_t *tokens, size_t n,
                      double *score)
{
    const struct rk_rl_data *d = user;
    (void)k;
    if (prompt >= d->n || (!d->answer[prompt] && !d->has_re[prompt]))
        return RK_EINVAL;
    char *text = malloc(n * 8 + 1);
    if (!text)
        return RK_ENOMEM;
    rk_rl_completion_text(d->tok, tokens, n, text, n * 8 + 1);
    if (d->answer[prompt])
        *score = strcmp(text, d->answer[prompt]) == 0;
    else
        *score = regexec(&d->re[prompt], text, 0, NULL, 0) == 0;
    free(text);
    return RK_OK;
}

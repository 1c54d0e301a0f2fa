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

/* Room for cap entries in every array of d; RK_ENOMEM leaves the arrays
 * that did grow grown (d->n entries are kept either way). */
static int grow(struct rk_rl_data *d, size_t cap)
{
    bool ok = true;
#define GROW(field)                                                                               \
    do {                                                                                          \
        void *p_ = realloc(d->field, cap * sizeof *d->field);                                    \
        if (p_)                                                                                   \
            d->field = p_;                                                                        \
        ok &= p_ != NULL;                                                                         \
    } while (0)
    GROW(prompt);
    GROW(answer);
    GROW(re);
    GROW(has_re);
    GROW(tokens);
    GROW(n_tokens);
#undef GROW
    return ok ? RK_OK : RK_ENOMEM;
}

struct parse_to {
    struct rk_rl_data *d;
    const struct rk_jsonl_limits *lim;
    int max_tokens;
    size_t cap;
};

/* One line into entry d->n, then counted (an rk_jsonl_line_fn). */
static int parse_line(void *user, const char *s, size_t l, size_t line, struct rk_errbuf *eb)
{
    struct parse_to *to = user;
    struct rk_rl_data *d = to->d;
    const struct rk_jsonl_limits *lim = to->lim;
    int max_tokens = to->max_tokens;
    if (d->n == to->cap && grow(d, to->cap = to->cap ? 2 * to->cap : 16) != RK_OK)
        return RK_ENOMEM;
    static const char *const keys[] = {"answer", "regex", NULL};
    struct rk_jsonl_prompt pr;
    int rc = rk_jsonl_prompt_line(s, l, line, "rl", keys, "{\"prompt\"} with an optional "
                                  "\"answer\" or \"regex\"", &pr, eb);
    if (rc != RK_OK)
        return rc;
    size_t i = d->n;
    d->prompt[i] = d->answer[i] = NULL;
    d->tokens[i] = NULL;
    d->has_re[i] = false;
    json_t *a = json_object_get(pr.obj, "answer"), *r = json_object_get(pr.obj, "regex");
    const char *prompt = pr.text;
    size_t pl = pr.len;
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
    size_t got = 0;
    rk_tok_encode(d->tok, prompt, pl, NULL, 0, &got);
    if (got + (size_t)max_tokens > lim->seq_len_max) {
        rc = rk_errbuf_set(eb, RK_ERANGE, "line %zu: a prompt of %zu tokens and rl_max_tokens "
                           "%d exceed the limit of %zu tokens", line, got, max_tokens,
                           lim->seq_len_max);
        goto out;
    }
    if (!(d->prompt[i] = strndup(prompt, pl)) ||
        (a && !(d->answer[i] = strndup(json_string_value(a), json_string_length(a)))) ||
        !(d->tokens[i] = malloc((got ? got : 1) * sizeof(uint32_t)))) {
        rc = RK_ENOMEM;
        goto out;
    }
    rk_tok_encode(d->tok, d->prompt[i], pl, d->tokens[i], got, &got);
    d->n_tokens[i] = got;
    d->n_checked += a || r;
    d->n++;
out:
    if (rc != RK_OK) {
        free(d->prompt[i]), free(d->answer[i]), free(d->tokens[i]);
        if (d->has_re[i])
            regfree(&d->re[i]);
        d->has_re[i] = false;
    }
    json_decref(pr.obj);
    return rc;
}

int rk_rl_data_parse(const char *buf, size_t len, const struct rk_tokenizer *tok,
                     const struct rk_jsonl_limits *lim, int rl_max_tokens,
                     struct rk_rl_data **out, struct rk_errbuf *eb)
{
    *out = NULL;
    struct rk_rl_data *d = calloc(1, sizeof *d);
    if (!d)
        return RK_ENOMEM;
    d->tok = tok;
    rk_tok_encode(tok, "\n\n", 2, d->stop, 8, &d->n_stop);
    struct parse_to to = {d, rk_jsonl_limits_of(lim), rl_max_tokens, 0};
    size_t lines = 0;
    int rc = rk_jsonl_lines(buf, len, to.lim, parse_line, &to, &lines, eb);
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

/*
 * dataset_jsonl.c - JSONL -> token sequences with loss masks and
 * multiple-choice items (see dataset_jsonl.h for the formats). Each line is
 * parsed with jansson on its own, so an error names its line; the token
 * buffer of one example is built piece by piece with the mask alongside.
 */
#include "dataset_jsonl.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

const struct rk_jsonl_limits *rk_jsonl_limits_of(const struct rk_jsonl_limits *lim)
{
    static const struct rk_jsonl_limits defaults = {(size_t)256 << 20, 1000000, 8192};
    return lim ? lim : &defaults;
}

void rk_jsonl_limits_default(struct rk_jsonl_limits *l) { *l = *rk_jsonl_limits_of(NULL); }

int rk_jsonl_lines(const char *buf, size_t len, const struct rk_jsonl_limits *lim,
                   rk_jsonl_line_fn *fn, void *user, size_t *n_lines, struct rk_errbuf *eb)
{
    lim = rk_jsonl_limits_of(lim);
    *n_lines = 0;
    if (len > lim->bytes_max)
        return rk_errbuf_set(eb, RK_ERANGE, "dataset of %zu bytes exceeds the limit %zu", len,
                             lim->bytes_max);
    size_t line = 0, pos = 0;
    while (pos < len) {
        const char *s = buf + pos;
        const char *nl = memchr(s, '\n', len - pos);
        size_t l = nl ? (size_t)(nl - s) : len - pos;
        pos += l + (nl ? 1 : 0);
        line++;
        size_t k = 0;
        while (k < l && (s[k] == ' ' || s[k] == '\t' || s[k] == '\r'))
            k++;
        if (k == l)
            continue; /* blank */
        if (*n_lines + 1 > lim->lines_max)
            return rk_errbuf_set(eb, RK_ERANGE, "line %zu: more than %zu examples (the limit)",
                                 line, lim->lines_max);
        int rc = fn(user, s, l, line, eb);
        if (rc != RK_OK)
            return rc;
        ++*n_lines;
    }
    return RK_OK;
}

int rk_jsonl_prompt_line(const char *s, size_t len, size_t line, const char *method,
                         const char *const *keys, const char *shape,
                         struct rk_jsonl_prompt *out, struct rk_errbuf *eb)
{
    json_error_t je;
    json_t *o = json_loadb(s, len, JSON_REJECT_DUPLICATES, &je);
    json_t *p = json_is_object(o) ? json_object_get(o, "prompt") : NULL;
    int rc = RK_OK;
    out->obj = NULL;
    if (!json_is_object(o)) {
        rc = rk_errbuf_set(eb, RK_EINVAL, "line %zu: %s", line,
                           o ? "each line must be a JSON object" : je.text);
    } else if (!json_is_string(p) || json_string_length(p) == 0) {
        rc = rk_errbuf_set(eb, RK_EINVAL, "line %zu: the %s method needs a non-empty string "
                           "\"prompt\" on every line", line, method);
    } else {
        const char *key;
        json_t *val;
        json_object_foreach(o, key, val) {
            bool known = !strcmp(key, "prompt");
            for (size_t i = 0; keys && keys[i] && !known; i++)
                known = !strcmp(key, keys[i]);
            if (!known) {
                rc = rk_errbuf_set(eb, RK_EINVAL, "line %zu: unexpected key \"%.40s\" (an %s "
                                   "line is %s)", line, key, method, shape);
                break;
            }
        }
    }
    if (rc != RK_OK) {
        json_decref(o);
        return rc;
    }
    *out = (struct rk_jsonl_prompt){o, json_string_value(p), json_string_length(p)};
    return RK_OK;
}

/* One example under construction. */
struct ex {
    uint32_t *tok;
    uint8_t *mask;
    size_t n, cap;
    size_t limit;
};

/* Append the tokens of `s` with mask value `m`. */
static int ex_add(struct ex *e, const struct rk_tokenizer *tok, const char *s, size_t len,
                  uint8_t m, size_t line, struct rk_errbuf *eb)
{
    if (len == 0) // nothing to add; e->tok may still be NULL (NULL + 0 is undefined)
        return RK_OK;
    /* never more ids than bytes */
    if (e->n + len > e->cap) {
        size_t cap = e->n + len + 64;
        uint32_t *t = realloc(e->tok, cap * sizeof *t);
        if (!t)
            return RK_ENOMEM;
        e->tok = t;
        uint8_t *k = realloc(e->mask, cap);
        if (!k)
            return RK_ENOMEM;
        e->mask = k;
        e->cap = cap;
    }
    size_t got = 0;
    int rc = rk_tok_encode(tok, s, len, e->tok + e->n, e->cap - e->n, &got);
    if (rc != RK_OK)
        return rk_errbuf_set(eb, rc, "line %zu: cannot tokenise text", line);
    memset(e->mask + e->n, m, got);
    e->n += got;
    if (e->n > e->limit)
        return rk_errbuf_set(eb, RK_ERANGE,
                             "line %zu: example of more than %zu tokens (the limit)", line,
                             e->limit);
    return RK_OK;
}

static int ex_addz(struct ex *e, const struct rk_tokenizer *tok, const char *s, uint8_t m,
                   size_t line, struct rk_errbuf *eb)
{
    return ex_add(e, tok, s, strlen(s), m, line, eb);
}

static int need_string(json_t *o, const char *key, size_t line, const char **out, size_t *len,
                       bool allow_empty, struct rk_errbuf *eb)
{
    json_t *v = json_object_get(o, key);
    if (!v)
        return rk_errbuf_set(eb, RK_EINVAL, "line %zu: missing \"%s\"", line, key);
    if (!json_is_string(v))
        return rk_errbuf_set(eb, RK_EINVAL, "line %zu: \"%s\" must be a string", line, key);
    *out = json_string_value(v);
    *len = json_string_length(v);
    if (!allow_empty && *len == 0)
        return rk_errbuf_set(eb, RK_EINVAL, "line %zu: \"%s\" is empty", line, key);
    return RK_OK;
}

static int add_seq(struct rk_dataset *ds, struct ex *e, size_t line, struct rk_errbuf *eb)
{
    if (e->n < 2)
        return rk_errbuf_set(eb, RK_EINVAL, "line %zu: fewer than 2 tokens", line);
    size_t sel = 0;
    for (size_t t = 1; t < e->n; t++)
        sel += e->mask[t];
    if (!sel)
        return rk_errbuf_set(eb, RK_EINVAL, "line %zu: no tokens to learn from", line);
    int rc = rk_dataset_add(ds, e->tok, e->mask, e->n);
    return rc == RK_OK ? rc : rk_errbuf_set(eb, rc, "line %zu: %s", line, rk_strerror(rc));
}

static int parse_chat(json_t *msgs, const struct rk_tokenizer *tok, struct ex *e, size_t line,
                      struct rk_errbuf *eb)
{
    if (!json_is_array(msgs) || json_array_size(msgs) == 0)
        return rk_errbuf_set(eb, RK_EINVAL, "line %zu: \"messages\" must be a non-empty array",
                             line);
    bool any_assistant = false;
    size_t i;
    json_t *msg;
    json_array_foreach(msgs, i, msg) {
        const char *role, *content;
        size_t rlen, clen;
        if (!json_is_object(msg))
            return rk_errbuf_set(eb, RK_EINVAL, "line %zu: messages[%zu] must be an object",
                                 line, i);
        int rc = need_string(msg, "role", line, &role, &rlen, false, eb);
        if (rc == RK_OK)
            rc = need_string(msg, "content", line, &content, &clen, true, eb);
        if (rc != RK_OK)
            return rc;
        if (strcmp(role, "assistant") == 0) {
            any_assistant = true;
            if ((rc = ex_addz(e, tok, "Assistant:", 0, line, eb)) != RK_OK)
                return rc;
            /* the reply and its closing blank line are what is learnt */
            if ((rc = ex_addz(e, tok, " ", 1, line, eb)) != RK_OK ||
                (rc = ex_add(e, tok, content, clen, 1, line, eb)) != RK_OK ||
                (rc = ex_addz(e, tok, "\n\n", 1, line, eb)) != RK_OK)
                return rc;
        } else if (strcmp(role, "user") == 0 || strcmp(role, "system") == 0) {
            const char *head = role[0] == 'u' ? "User: " : "System: ";
            if ((rc = ex_addz(e, tok, head, 0, line, eb)) != RK_OK ||
                (rc = ex_add(e, tok, content, clen, 0, line, eb)) != RK_OK ||
                (rc = ex_addz(e, tok, "\n\n", 0, line, eb)) != RK_OK)
                return rc;
        } else {
            return rk_errbuf_set(eb, RK_EINVAL,
                                 "line %zu: messages[%zu]: unknown role \"%s\" (user, "
                                 "assistant or system)",
                                 line, i, role);
        }
    }
    if (!any_assistant)
        return rk_errbuf_set(eb, RK_EINVAL, "line %zu: no assistant message to learn from",
                             line);
    return RK_OK;
}

static int parse_mc(json_t *o, const struct rk_tokenizer *tok, const struct rk_jsonl_limits *lim,
                    struct rk_dataset *ds, size_t line, struct rk_errbuf *eb)
{
    const char *prompt;
    size_t plen;
    int rc = need_string(o, "prompt", line, &prompt, &plen, false, eb);
    if (rc != RK_OK)
        return rc;
    json_t *ch = json_object_get(o, "choices"), *ans = json_object_get(o, "answer");
    size_t nc = json_array_size(ch);
    if (!json_is_array(ch) || nc < 2)
        return rk_errbuf_set(eb, RK_EINVAL, "line %zu: \"choices\" must be an array of 2 or "
                             "more strings", line);
    if (!ans)
        return rk_errbuf_set(eb, RK_EINVAL, "line %zu: missing \"answer\"", line);
    struct ex *ex = calloc(nc + 1, sizeof *ex);
    uint32_t **cp = calloc(nc, sizeof *cp);
    size_t *cn = calloc(nc, sizeof *cn);
    long answer = -1;
    rc = RK_ENOMEM;
    if (!ex || !cp || !cn)
        goto out;
    for (size_t i = 0; i <= nc; i++)
        ex[i].limit = lim->seq_len_max;
    if ((rc = ex_add(&ex[nc], tok, prompt, plen, 0, line, eb)) != RK_OK)
        goto out;
    for (size_t i = 0; i < nc; i++) {
        json_t *c = json_array_get(ch, i);
        if (!json_is_string(c) || json_string_length(c) == 0) {
            rc = rk_errbuf_set(eb, RK_EINVAL, "line %zu: choices[%zu] must be a non-empty "
                               "string", line, i);
            goto out;
        }
        ex[i].limit = lim->seq_len_max - (ex[nc].n < lim->seq_len_max ? ex[nc].n : 0);
        rc = ex_add(&ex[i], tok, json_string_value(c), json_string_length(c), 1, line, eb);
        if (rc != RK_OK)
            goto out;
        if (ex[i].n == 0) {
            rc = rk_errbuf_set(eb, RK_EINVAL, "line %zu: choices[%zu] has no tokens", line, i);
            goto out;
        }
        cp[i] = ex[i].tok;
        cn[i] = ex[i].n;
        if (json_is_string(ans) && strcmp(json_string_value(ans), json_string_value(c)) == 0)
            answer = (long)i;
    }
    if (json_is_integer(ans) && json_integer_value(ans) >= 0 &&
        json_integer_value(ans) < (json_int_t)nc)
        answer = (long)json_integer_value(ans);
    if (answer < 0) {
        rc = rk_errbuf_set(eb, RK_EINVAL, "line %zu: \"answer\" must be an index below %zu or "
                           "the text of a choice", line, nc);
        goto out;
    }
    struct rk_mc_item it = {ex[nc].tok, ex[nc].n, nc, (const uint32_t *const *)cp, cn,
                            (size_t)answer};
    if (it.n_prompt == 0) {
        rc = rk_errbuf_set(eb, RK_EINVAL, "line %zu: \"prompt\" has no tokens", line);
        goto out;
    }
    rc = rk_dataset_add_mc(ds, &it);
    if (rc != RK_OK)
        rk_errbuf_set(eb, rc, "line %zu: %s", line, rk_strerror(rc));
out:
    for (size_t i = 0; ex && i <= nc; i++) {
        free(ex[i].tok);
        free(ex[i].mask);
    }
    free(ex), free(cp), free(cn);
    return rc == RK_ENOMEM ? rk_errbuf_set(eb, rc, "line %zu: out of memory", line) : rc;
}

struct parse_to {
    const struct rk_tokenizer *tok;
    const struct rk_jsonl_limits *lim;
    struct rk_dataset *ds;
};

/* One example line into the dataset (an rk_jsonl_line_fn). */
static int parse_line(void *user, const char *s, size_t len, size_t line, struct rk_errbuf *eb)
{
    const struct parse_to *to = user;
    const struct rk_tokenizer *tok = to->tok;
    const struct rk_jsonl_limits *lim = to->lim;
    struct rk_dataset *ds = to->ds;
    json_error_t je;
    json_t *o = json_loadb(s, len, JSON_REJECT_DUPLICATES, &je);
    if (!o)
        return rk_errbuf_set(eb, RK_EINVAL, "line %zu: not valid JSON: %s (column %d)", line,
                             je.text, je.column);
    int rc;
    struct ex e = {.limit = lim->seq_len_max};
    const char *a, *b;
    size_t al, bl;
    if (!json_is_object(o)) {
        rc = rk_errbuf_set(eb, RK_EINVAL, "line %zu: must be a JSON object", line);
    } else if (json_object_get(o, "choices")) {
        rc = parse_mc(o, tok, lim, ds, line, eb);
    } else if (json_object_get(o, "messages")) {
        rc = parse_chat(json_object_get(o, "messages"), tok, &e, line, eb);
        if (rc == RK_OK)
            rc = add_seq(ds, &e, line, eb);
    } else if (json_object_get(o, "completion") || json_object_get(o, "prompt")) {
        rc = need_string(o, "prompt", line, &a, &al, true, eb);
        if (rc == RK_OK)
            rc = need_string(o, "completion", line, &b, &bl, false, eb);
        if (rc == RK_OK)
            rc = ex_add(&e, tok, a, al, 0, line, eb);
        if (rc == RK_OK)
            rc = ex_add(&e, tok, b, bl, 1, line, eb);
        if (rc == RK_OK)
            rc = add_seq(ds, &e, line, eb);
    } else if (json_object_get(o, "text")) {
        rc = need_string(o, "text", line, &a, &al, false, eb);
        if (rc == RK_OK)
            rc = ex_add(&e, tok, a, al, 1, line, eb);
        if (rc == RK_OK)
            rc = add_seq(ds, &e, line, eb);
    } else {
        rc = rk_errbuf_set(eb, RK_EINVAL, "line %zu: expected \"text\", \"prompt\" + "
                           "\"completion\", \"messages\" or \"prompt\" + \"choices\" + "
                           "\"answer\"", line);
    }
    if (rc == RK_ENOMEM)
        rk_errbuf_set(eb, rc, "line %zu: out of memory", line);
    free(e.tok);
    free(e.mask);
    json_decref(o);
    return rc;
}

int rk_jsonl_parse(const char *buf, size_t len, const struct rk_tokenizer *tok,
                   const struct rk_jsonl_limits *lim, struct rk_dataset *ds,
                   struct rk_errbuf *eb)
{
    struct parse_to to = {tok, rk_jsonl_limits_of(lim), ds};
    size_t examples = 0;
    int rc = rk_jsonl_lines(buf, len, to.lim, parse_line, &to, &examples, eb);
    if (rc == RK_OK && !examples)
        rc = rk_errbuf_set(eb, RK_EINVAL, "the dataset holds no examples");
    return rc;
}

int rk_jsonl_load(const char *path, const struct rk_tokenizer *tok,
                  const struct rk_jsonl_limits *lim, struct rk_dataset *ds,
                  struct rk_errbuf *eb)
{
    lim = rk_jsonl_limits_of(lim);
    void *buf = NULL;
    size_t len = 0;
    int rc = rk_file_read_all(path, lim->bytes_max, &buf, &len, eb);
    if (rc != RK_OK)
        return rc;
    rc = rk_jsonl_parse(buf, len, tok, lim, ds, eb);
    free(buf);
    return rc;
}

/* --- prompts for the observer method -------------------------------------- */

void rk_jsonl_prompts_free(char **p, size_t n)
{
    for (size_t i = 0; p && i < n; i++)
        free(p[i]);
    free(p);
}

struct prompts_to {
    const struct rk_tokenizer *tok;
    const struct rk_jsonl_limits *lim;
    char **v;
    size_t n, cap, *n_tokens;
};

/* One observer prompt line (an rk_jsonl_line_fn). */
static int prompt_line(void *user, const char *s, size_t l, size_t line, struct rk_errbuf *eb)
{
    struct prompts_to *to = user;
    static const char *const keys[] = {"completion", NULL};
    struct rk_jsonl_prompt pr;
    int rc = rk_jsonl_prompt_line(s, l, line, "observer", keys, "{\"prompt\"} with an optional "
                                  "string \"completion\"", &pr, eb);
    if (rc != RK_OK)
        return rc;
    json_t *c = json_object_get(pr.obj, "completion");
    if (c && !json_is_string(c))
        rc = rk_errbuf_set(eb, RK_EINVAL, "line %zu: \"completion\" must be a string (it is "
                           "ignored)", line);
    if (rc == RK_OK) {
        size_t got = 0;
        rk_tok_encode(to->tok, pr.text, pr.len, NULL, 0, &got);
        if (got + 1 > to->lim->seq_len_max)
            rc = rk_errbuf_set(eb, RK_ERANGE,
                               "line %zu: a prompt of %zu tokens leaves no room for an "
                               "answer (the limit is %zu tokens)", line, got,
                               to->lim->seq_len_max);
        else if (to->n_tokens)
            *to->n_tokens += got;
    }
    if (rc == RK_OK && to->n == to->cap) {
        size_t cap = to->cap ? 2 * to->cap : 16;
        char **nv = realloc(to->v, cap * sizeof *nv);
        if (!nv)
            rc = RK_ENOMEM;
        else
            to->v = nv, to->cap = cap;
    }
    if (rc == RK_OK && !(to->v[to->n] = strndup(pr.text, pr.len)))
        rc = RK_ENOMEM;
    if (rc == RK_OK)
        to->n++;
    json_decref(pr.obj);
    return rc;
}

int rk_jsonl_prompts(const char *buf, size_t len, const struct rk_tokenizer *tok,
                     const struct rk_jsonl_limits *lim, char ***out, size_t *n_out,
                     size_t *n_tokens, struct rk_errbuf *eb)
{
    struct prompts_to to = {tok, rk_jsonl_limits_of(lim), NULL, 0, 0, n_tokens};
    *out = NULL;
    *n_out = 0;
    if (n_tokens)
        *n_tokens = 0;
    size_t lines = 0;
    int rc = rk_jsonl_lines(buf, len, to.lim, prompt_line, &to, &lines, eb);
    if (rc == RK_OK && to.n == 0)
        rc = rk_errbuf_set(eb, RK_EINVAL, "the dataset holds no prompts");
    if (rc != RK_OK) {
        rk_jsonl_prompts_free(to.v, to.n);
        return rc;
    }
    *out = to.v;
    *n_out = to.n;
    return RK_OK;
}

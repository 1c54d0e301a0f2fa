/*
 * dataset_jsonl.h - JSONL datasets for tuning and evaluation: one JSON object
 * per line, tokenised into an rk_dataset (adapters layer). Formats:
 *
 *   {"text": "..."}                          loss on every token after the first
 *   {"prompt": "...", "completion": "..."}   loss on the completion only
 *   {"messages": [{"role": "user"|"assistant"|"system", "content": "..."}]}
 *        chat template "User: ...\n\nAssistant: ...\n\n" ("System: ..." for
 *        system turns); loss on each assistant reply and its closing "\n\n"
 *   {"prompt": "...", "choices": ["...", ...], "answer": 0}
 *        a multiple-choice item (answer: index, or the text of a choice)
 *
 * Text is tokenised piecewise (prompt and completion separately), exactly as
 * the server tokenises a prompt and then continues it. Blank lines are
 * skipped. Errors name the line: "line 7: \"completion\" must be a string".
 */
#ifndef RK_DATASET_JSONL_H
#define RK_DATASET_JSONL_H

#include "rk_adapters.h"

#include <jansson.h>

struct rk_jsonl_limits {
    size_t bytes_max;   /* whole input (default 256 MiB) */
    size_t lines_max;   /* examples (default 1,000,000) */
    size_t seq_len_max; /* tokens per example (default 8192) */
};
void rk_jsonl_limits_default(struct rk_jsonl_limits *l);
/* lim, or the defaults when lim is NULL. */
const struct rk_jsonl_limits *rk_jsonl_limits_of(const struct rk_jsonl_limits *lim);

/* The line reader that every JSONL format here shares: `len` bytes (at most
 * lim->bytes_max; lim may be NULL) split at '\n', blank lines (spaces,
 * tabs, CRs) skipped, at most lim->lines_max others, each given to `fn`
 * with its 1-based line number until fn returns an error. *n_lines gets
 * the non-blank lines passed to fn. Errors: RK_ERANGE (a limit, with the
 * line in eb) or fn's. */
typedef int rk_jsonl_line_fn(void *user, const char *s, size_t len, size_t line,
                             struct rk_errbuf *eb);
int rk_jsonl_lines(const char *buf, size_t len, const struct rk_jsonl_limits *lim,
                   rk_jsonl_line_fn *fn, void *user, size_t *n_lines, struct rk_errbuf *eb);

/* One line of a prompt format (the observer and rl methods): a JSON object
 * with a non-empty string "prompt" and no key but "prompt" and those of
 * `keys` (NULL-terminated). RK_EINVAL with "line N: " and the reason, naming
 * `method` and, for an unexpected key, the line's `shape`. */
struct rk_jsonl_prompt {
    json_t *obj;      /* the line (a new reference) */
    const char *text; /* "prompt", inside obj */
    size_t len;
};
int rk_jsonl_prompt_line(const char *s, size_t len, size_t line, const char *method,
                         const char *const *keys, const char *shape,
                         struct rk_jsonl_prompt *out, struct rk_errbuf *eb);

/* Parse `len` bytes of JSONL into `ds` (appending). `lim` may be NULL
 * (defaults). RK_EINVAL (malformed line, wrong field types, nothing to
 * learn from), RK_ERANGE (a limit exceeded), RK_ENOMEM; `eb` gets the line
 * number and the reason. On error `ds` may hold the lines before the bad
 * one. Thread-safe for distinct datasets. */
int rk_jsonl_parse(const char *buf, size_t len, const struct rk_tokenizer *tok,
                   const struct rk_jsonl_limits *lim, struct rk_dataset *ds,
                   struct rk_errbuf *eb);

/* Read `path` (at most lim->bytes_max bytes) and parse it as above. */
int rk_jsonl_load(const char *path, const struct rk_tokenizer *tok,
                  const struct rk_jsonl_limits *lim, struct rk_dataset *ds,
                  struct rk_errbuf *eb);

/* The prompts of an observer job: every non-blank line an object with a
 * non-empty string "prompt" and at most an optional string "completion"
 * (ignored). *out gets n_out malloc'd strings (free with
 * rk_jsonl_prompts_free); *n_tokens (may be NULL) their token count. A
 * prompt must leave room for one answer token under lim->seq_len_max.
 * RK_EINVAL / RK_ERANGE with the line in eb. */
int rk_jsonl_prompts(const char *buf, size_t len, const struct rk_tokenizer *tok,
                     const struct rk_jsonl_limits *lim, char ***out, size_t *n_out,
                     size_t *n_tokens, struct rk_errbuf *eb);
void rk_jsonl_prompts_free(char **p, size_t n);

#endif

/*
 * rl_data.h - the data of the "rl" tuning method (docs/TUNING.md): prompts,
 * each with an optional local checker (an exact answer or a regular
 * expression), tokenised, and the checker as an rk_rl_io score callback.
 */
#ifndef RK_RL_DATA_H
#define RK_RL_DATA_H

#include "dataset_jsonl.h"
#include "rk_adapters.h"

#include <regex.h>

#define RK_RL_REGEX_MAX 512 /* bytes of a "regex" */

struct rk_rl_data {
    size_t n;
    char **prompt;     /* [n] */
    char **answer;     /* [n], NULL = none */
    regex_t *re;       /* [n], valid where has_re */
    bool *has_re;      /* [n] */
    uint32_t **tokens; /* [n] the prompts' tokens */
    size_t *n_tokens;  /* [n] */
    size_t n_checked;  /* prompts with an answer or a regex */
    uint32_t stop[8];  /* "\n\n" tokenised: the end of a sample */
    size_t n_stop;
    const struct rk_tokenizer *tok;
};

/* Parse rl JSONL: every non-blank line {"prompt": "...", "answer": "..."?,
 * "regex": "..."?} (not both answer and regex). RK_EINVAL / RK_ERANGE with
 * the line in eb; lim bounds the file as for SFT data, and a prompt must
 * leave rl_max_tokens under lim->seq_len_max. */
int rk_rl_data_parse(const char *buf, size_t len, const struct rk_tokenizer *tok,
                     const struct rk_jsonl_limits *lim, int rl_max_tokens,
                     struct rk_rl_data **out, struct rk_errbuf *eb);
void rk_rl_data_free(struct rk_rl_data *d);
/* The prompts for rk_rl_run (pointers into d). */
void rk_rl_data_prompts(const struct rk_rl_data *d, struct rk_rl_prompts *out);
/* The completion's text: decoded, cut before the first "\n\n" and
 * stripped of white space at both ends (buf[cap], NUL-terminated). */
void rk_rl_completion_text(const struct rk_tokenizer *tok, const uint32_t *t, size_t n,
                           char *buf, size_t cap);
/* The local checker: 1 when the completion's text equals the line's
 * "answer" or matches its "regex", else 0; RK_EINVAL for a line without
 * either. `user` is the struct rk_rl_data. */
int rk_rl_check_score(void *user, size_t prompt, int k, const uint32_t *tokens, size_t n,
                      double *score);

#endif

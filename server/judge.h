/*
 * judge.h - one answer scored by a judge endpoint: the verifier prompt and
 * the two scorings of best_of (api_bestof.c), shared with the "rl" tuning
 * jobs and test-time training, which score samples the same way.
 */
#ifndef RK_JUDGE_H
#define RK_JUDGE_H

#include "teacher.h"

/* Ask `judge` about `answer` (answer_len bytes) to `prompt` (text) with the
 * verifier prompt of best_of: number = false reads the log-probability of
 * "Yes" as its first word (floor -100), number = true the first number of
 * its answer. `instructions` (NULL: the default question) replaces the
 * question. `cache` (may be NULL) is asked first and keeps the answer.
 * Writes *score and *tokens (the judge tokens the call cost, 0 when cached);
 * on failure msg[cap] says why. Codes of rk_teacher_call, and RK_EFORMAT
 * for an answer that holds no score. Blocking: a worker thread only. */
int rk_judge_score(struct rk_teacher *judge, bool number, const char *instructions,
                   const char *prompt, const char *answer, size_t answer_len,
                   struct rk_teacher_cache *cache, int64_t deadline_us,
                   const atomic_bool *cancel, double *score, long long *tokens, char *msg,
                   size_t cap);

#endif

/*
 * gen_format.h - the wire format of generations (gen_format.c): SSE frames
 * of the native, completions and chat APIs, per-token logprobs JSON and the
 * whole (non-streaming) response bodies.
 * Private to the server.
 */
#ifndef RK_GEN_FORMAT_H
#define RK_GEN_FORMAT_H

#include "srv.h"

/* The logprobs of one token record (rec[0] the chosen token, rec[1..top]
 * the alternatives) in the API's format: completions {"tokens":[..],
 * "token_logprobs":[..],"top_logprobs":[{..}],"text_offset":[text_off]} or
 * chat {"token","logprob","bytes","top_logprobs"}. Appends to `b`. Also used
 * for the non-streaming response (one call per token, merged there). `tok`
 * and `rec` are borrowed. Any thread. */
void rk_gen_lp_json(const struct rk_tokenizer *tok, enum rk_api api, const struct rk_tok_lp *rec,
                    int top, size_t text_off, struct rk_buf *b);

/* The SSE frames of a streamed job, appended to j->out. The caller holds
 * j->mu; none of them allocates once j->out has grown. */

/* One piece of text for choice `idx` (`len` may be 0 when only logprobs
 * are sent), with the token's logprobs record when requested (else NULL);
 * `text_off` is the choice's text bytes before this piece (completions'
 * text_offset). The chat API's first piece of a choice carries the role. */
void rk_gen_sse_piece(const struct rk_tokenizer *tok, struct rk_job *j, int idx, const char *text,
                      size_t len, const struct rk_tok_lp *rec, size_t text_off);
/* The end of choice `idx` (the OpenAI APIs report cancel and timeout once
 * for the whole job, in rk_gen_sse_end). */
void rk_gen_sse_finish(struct rk_job *j, int idx, enum rk_finish f);
/* The end of the stream: the job's error if any, the usage, [DONE]. */
void rk_gen_sse_end(struct rk_job *j);

/* The whole response body of a finished job that did not fail (j->err is
 * RK_OK): the native /generate object, or the OpenAI text_completion /
 * chat.completion object. New reference (NULL when out of memory). Loop
 * thread, after j->done. */
json_t *rk_gen_body_native(struct rk_srv *srv, struct rk_job *j);
json_t *rk_gen_body_openai(struct rk_srv *srv, struct rk_job *j);

#endif

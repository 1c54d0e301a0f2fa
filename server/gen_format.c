/*
 * gen_format.c - what a generation looks like on the wire: the server-sent
 * event frames of the three generation APIs (native /generate, OpenAI
 * completions and chat completions), chunk heads, usage objects and
 * per-token logprobs.
 *
 * The engine produces tokens, text, logprobs and finish events and calls
 * the rk_gen_sse_* functions with the job's mutex held; they append to the
 * job's reusable output buffer and allocate nothing once it has grown (the
 * per-token path). The non-streaming bodies (rk_gen_body_*) are built here
 * too, on the loop thread, once the job is done.
 */
#include "gen_format.h"

#include <inttypes.h>
#include <math.h>
#include <string.h>

/* Append a token string as valid UTF-8 JSON (invalid bytes become U+FFFD). */
static void json_lossy(struct rk_buf *b, const uint8_t *s, size_t n)
{
    char tmp[512];
    rk_buf_json_str(b, tmp, rk_utf8_sanitize(s, n, tmp, sizeof tmp));
}

static void json_bytes(struct rk_buf *b, const uint8_t *s, size_t n)
{
    rk_buf_put(b, "[", 1);
    for (size_t i = 0; i < n; i++)
        rk_buf_printf(b, i ? ",%u" : "%u", s[i]);
    rk_buf_put(b, "]", 1);
}

static void json_float(struct rk_buf *b, float v)
{
    if (isfinite(v))
        rk_buf_printf(b, "%.6g", (double)v);
    else
        rk_buf_puts(b, "-9999"); // JSON has no -Inf; OpenAI uses -9999 for "impossible"
}

void rk_gen_lp_json(const struct rk_tokenizer *tok, enum rk_api api, const struct rk_tok_lp *rec,
                    int top, size_t text_off, struct rk_buf *b)
{
    size_t tl;
    const uint8_t *tb = rk_tok_bytes(tok, rec[0].token, &tl);
    if (api == RK_API_CHAT) {
        rk_buf_puts(b, "{\"token\":");
        json_lossy(b, tb, tl);
        rk_buf_puts(b, ",\"logprob\":");
        json_float(b, rec[0].lp);
        rk_buf_puts(b, ",\"bytes\":");
        json_bytes(b, tb, tl);
        rk_buf_puts(b, ",\"top_logprobs\":[");
        for (int k = 0; k < top; k++) {
            const uint8_t *ab = rk_tok_bytes(tok, rec[1 + k].token, &tl);
            rk_buf_puts(b, k ? ",{\"token\":" : "{\"token\":");
            json_lossy(b, ab, tl);
            rk_buf_puts(b, ",\"logprob\":");
            json_float(b, rec[1 + k].lp);
            rk_buf_puts(b, ",\"bytes\":");
            json_bytes(b, ab, tl);
            rk_buf_puts(b, "}");
        }
        rk_buf_puts(b, "]}");
    } else {
        // completions: the four parallel arrays for one token
        rk_buf_puts(b, "{\"tokens\":[");
        json_lossy(b, tb, tl);
        rk_buf_puts(b, "],\"token_logprobs\":[");
        json_float(b, rec[0].lp);
        rk_buf_puts(b, "],\"top_logprobs\":[{");
        for (int k = 0; k < top; k++) {
            const uint8_t *ab = rk_tok_bytes(tok, rec[1 + k].token, &tl);
            if (k)
                rk_buf_put(b, ",", 1);
            json_lossy(b, ab, tl);
            rk_buf_put(b, ":", 1);
            json_float(b, rec[1 + k].lp);
        }
        rk_buf_printf(b, "}],\"text_offset\":[%zu]}", text_off);
    }
}

/* Head of an OpenAI chunk up to and including `"choices":[`. */
static void oai_chunk_head(struct rk_buf *o, struct rk_job *j)
{
    rk_buf_puts(o, "data: {\"id\":");
    rk_buf_json_str(o, j->id, strlen(j->id));
    rk_buf_printf(o, ",\"object\":\"%s\",\"created\":%" PRId64 ",\"model\":",
                  j->api == RK_API_CHAT ? "chat.completion.chunk" : "text_completion",
                  j->created_s);
    rk_buf_json_str(o, j->model, strlen(j->model));
    rk_buf_puts(o, j->api == RK_API_CHAT ? ",\"system_fingerprint\":null,\"choices\":["
                                         : ",\"choices\":[");
}

static void usage_json(struct rk_buf *o, struct rk_job *j)
{
    long long c = 0;
    for (int i = 0; i < j->n; i++)
        c += j->choices[i].n_tokens;
    rk_buf_printf(o, "{\"prompt_tokens\":%zu,\"completion_tokens\":%lld,\"total_tokens\":%lld",
                  j->n_prompt, c, (long long)j->n_prompt + c);
    if (j->ttt_steps)
        rk_buf_printf(o, ",\"ttt_steps\":%d,\"ttt_tokens\":%zu", j->ttt_steps, j->ttt_tokens);
    rk_buf_puts(o, "}");
}

void rk_gen_sse_piece(const struct rk_tokenizer *tok, struct rk_job *j, int idx, const char *text,
                      size_t len, const struct rk_tok_lp *rec, size_t text_off)
{
    struct rk_buf *o = &j->out;
    int top = j->top_logprobs;
    if (j->api == RK_API_NATIVE) {
        rk_buf_printf(o, "data: {\"index\":%d,\"text\":", idx);
        rk_buf_json_str(o, text, len);
        if (rec) {
            rk_buf_printf(o, ",\"token\":%u,\"logprob\":", rec[0].token);
            json_float(o, rec[0].lp);
            if (top > 0) {
                rk_buf_puts(o, ",\"top_logprobs\":[");
                for (int k = 0; k < top; k++) {
                    rk_buf_printf(o, k ? ",{\"token\":%u,\"logprob\":" : "{\"token\":%u,\"logprob\":",
                                  rec[1 + k].token);
                    json_float(o, rec[1 + k].lp);
                    rk_buf_puts(o, "}");
                }
                rk_buf_puts(o, "]");
            }
        }
        rk_buf_puts(o, "}\n\n");
        return;
    }
    oai_chunk_head(o, j);
    rk_buf_printf(o, "{\"index\":%d,", idx);
    struct rk_choice *ch = &j->choices[idx];
    if (j->api == RK_API_CHAT) {
        if (!ch->sent_role) {
            rk_buf_puts(o, "\"delta\":{\"role\":\"assistant\",\"content\":");
            ch->sent_role = true;
        } else {
            rk_buf_puts(o, "\"delta\":{\"content\":");
        }
        rk_buf_json_str(o, text, len);
        rk_buf_puts(o, "},\"logprobs\":");
        if (rec) {
            rk_buf_puts(o, "{\"content\":[");
            rk_gen_lp_json(tok, j->api, rec, top, 0, o);
            rk_buf_puts(o, "]}");
        } else {
            rk_buf_puts(o, "null");
        }
    } else {
        rk_buf_puts(o, "\"text\":");
        rk_buf_json_str(o, text, len);
        rk_buf_puts(o, ",\"logprobs\":");
        if (rec)
            rk_gen_lp_json(tok, j->api, rec, top, text_off, o);
        else
            rk_buf_puts(o, "null");
    }
    rk_buf_puts(o, ",\"finish_reason\":null}]}\n\n");
}

void rk_gen_sse_finish(struct rk_job *j, int idx, enum rk_finish f)
{
    struct rk_buf *o = &j->out;
    const char *fr = f == RK_FINISH_LENGTH ? "length" : "stop";
    if (j->api == RK_API_NATIVE) {
        rk_buf_printf(o, "data: {\"index\":%d,\"finish_reason\":\"%s\",\"tokens\":%d}\n\n", idx,
                      rk_finish_name(f), j->choices[idx].n_tokens);
        return;
    }
    if (f == RK_FINISH_CANCEL || f == RK_FINISH_TIMEOUT)
        return; // reported once for the whole job in sse_end
    oai_chunk_head(o, j);
    if (j->api == RK_API_CHAT) {
        struct rk_choice *ch = &j->choices[idx];
        rk_buf_printf(o, "{\"index\":%d,\"delta\":%s,\"logprobs\":null,\"finish_reason\":\"%s\"}]}"
                      "\n\n", idx, ch->sent_role ? "{}" : "{\"role\":\"assistant\",\"content\":\"\"}",
                      fr);
        ch->sent_role = true;
    } else {
        rk_buf_printf(o, "{\"index\":%d,\"text\":\"\",\"logprobs\":null,\"finish_reason\":\"%s\"}]}"
                      "\n\n", idx, fr);
    }
}

void rk_gen_sse_end(struct rk_job *j)
{
    struct rk_buf *o = &j->out;
    if (j->err != RK_OK) {
        bool timeout = j->err == RK_ETIMEOUT;
        rk_buf_puts(o, "data: {\"error\":{\"message\":");
        rk_buf_json_str(o, j->errmsg, strlen(j->errmsg));
        rk_buf_printf(o, ",\"type\":\"%s\",\"param\":null,\"code\":\"%s\"}}\n\n",
                      timeout ? "timeout" : "server_error",
                      timeout ? "deadline_exceeded" : "canceled");
    }
    if (j->api == RK_API_NATIVE) {
        rk_buf_puts(o, "data: {\"done\":true,\"usage\":");
        usage_json(o, j);
        rk_buf_puts(o, "}\n\n");
        return;
    }
    if (j->include_usage) {
        oai_chunk_head(o, j);
        rk_buf_puts(o, "],\"usage\":");
        usage_json(o, j);
        rk_buf_puts(o, "}\n\n");
    }
    rk_buf_puts(o, "data: [DONE]\n\n");
}

/* --- whole responses (non-streaming) ------------------------------------- */

static json_t *usage_obj(struct rk_job *j)
{
    long long c = 0;
    for (int i = 0; i < j->n; i++)
        c += j->choices[i].n_tokens;
    json_t *u = json_pack("{s:I,s:I,s:I}", "prompt_tokens", (json_int_t)j->n_prompt,
                          "completion_tokens", (json_int_t)c, "total_tokens",
                          (json_int_t)(j->n_prompt + (size_t)c));
    // test-time training: its steps, the tokens it processed (sampling,
    // scoring, training) and the mean sample score of its first and last step
    if (u && j->ttt_steps) {
        json_object_set_new(u, "ttt_steps", json_integer(j->ttt_steps));
        json_object_set_new(u, "ttt_tokens", json_integer((json_int_t)j->ttt_tokens));
        json_object_set_new(u, "ttt_score_first", isfinite(j->ttt_score_first)
                                ? json_real(j->ttt_score_first) : json_null());
        json_object_set_new(u, "ttt_score_last", isfinite(j->ttt_score_last)
                                ? json_real(j->ttt_score_last) : json_null());
    }
    return u;
}

static json_t *text_of(const struct rk_buf *b) { return json_stringn(b->p ? b->p : "", b->len); }

static double lp_val(float v) { return isfinite(v) ? (double)v : -9999.0; }

static json_t *tok_str(struct rk_srv *srv, uint32_t id)
{
    size_t n;
    const uint8_t *b = rk_tok_bytes(srv->tok, id, &n);
    char tmp[1024];
    size_t o = rk_utf8_sanitize(b ? b : (const uint8_t *)"", b ? n : 0, tmp, sizeof tmp);
    return json_stringn(tmp, o);
}

/* logprobs of a finished choice, in the API's format, or json null. */
static json_t *choice_logprobs(struct rk_srv *srv, struct rk_job *j, struct rk_choice *ch)
{
    int top = j->top_logprobs;
    if (top < 0 || !ch->lps)
        return json_null();
    if (j->api == RK_API_CHAT) {
        json_t *content = json_array();
        struct rk_buf b = {0};
        for (int t = 0; t < ch->n_tokens; t++) {
            b.len = 0;
            rk_gen_lp_json(srv->tok, j->api, ch->lps + (size_t)t * (size_t)(1 + top), top, 0, &b);
            json_t *x = b.p ? json_loadb(b.p, b.len, 0, NULL) : NULL;
            if (x)
                json_array_append_new(content, x);
        }
        rk_buf_free(&b);
        return json_pack("{s:o}", "content", content);
    }
    json_t *toks = json_array(), *lps = json_array(), *tops = json_array(), *offs = json_array();
    size_t off = 0;
    for (int t = 0; t < ch->n_tokens; t++) {
        const struct rk_tok_lp *rec = ch->lps + (size_t)t * (size_t)(1 + top);
        json_array_append_new(toks, tok_str(srv, rec[0].token));
        json_array_append_new(lps, json_real(lp_val(rec[0].lp)));
        json_t *alt = json_object();
        for (int k = 0; k < top; k++) {
            json_t *ks = tok_str(srv, rec[1 + k].token);
            json_object_set_new(alt, json_string_value(ks), json_real(lp_val(rec[1 + k].lp)));
            json_decref(ks);
        }
        json_array_append_new(tops, alt);
        json_array_append_new(offs, json_integer((json_int_t)off));
        size_t n;
        rk_tok_bytes(srv->tok, rec[0].token, &n);
        off += n;
    }
    return json_pack("{s:o,s:o,s:o,s:o}", "tokens", toks, "token_logprobs", lps, "top_logprobs",
                     tops, "text_offset", offs);
}

json_t *rk_gen_body_native(struct rk_srv *srv, struct rk_job *j)
{
    json_t *choices = json_array();
    for (int i = 0; i < (j->n_out ? j->n_out : j->n); i++) {
        struct rk_choice *ch = &j->choices[i];
        json_t *c = json_pack("{s:i,s:o,s:s,s:i}", "index", i, "text", text_of(&ch->text),
                              "finish_reason", rk_finish_name(ch->finish), "tokens",
                              ch->n_tokens);
        if (j->top_logprobs >= 0 && ch->lps) {
            int top = j->top_logprobs;
            json_t *arr = json_array();
            for (int t = 0; t < ch->n_tokens; t++) {
                const struct rk_tok_lp *rec = ch->lps + (size_t)t * (size_t)(1 + top);
                json_t *alts = json_array();
                for (int k = 0; k < top; k++)
                    json_array_append_new(alts, json_pack("{s:I,s:f}", "token",
                                                          (json_int_t)rec[1 + k].token, "logprob",
                                                          lp_val(rec[1 + k].lp)));
                json_array_append_new(arr, json_pack("{s:I,s:f,s:o}", "token",
                                                     (json_int_t)rec[0].token, "logprob",
                                                     lp_val(rec[0].lp), "top_logprobs", alts));
            }
            json_object_set_new(c, "logprobs", arr);
        }
        json_array_append_new(choices, c);
    }
    const char *colon = strchr(j->model, ':');
    json_t *o = json_pack("{s:s,s:s,s:I,s:s,s:o,s:o,s:o,s:{s:f,s:f}}", "id", j->id, "object",
                          "generation", "created", (json_int_t)j->created_s, "model", j->model,
                          "state", colon ? json_string(colon + 1) : json_null(), "choices",
                          choices, "usage", usage_obj(j), "timings", "ttft_ms",
                          j->t_first_us ? (double)(j->t_first_us - j->t_submit_us) / 1000 : 0.0,
                          "total_ms", (double)(rk_now_us() - j->t_submit_us) / 1000);
    if (o)
        json_object_set_new(o, "text", text_of(&j->choices[0].text));
    return o;
}

json_t *rk_gen_body_openai(struct rk_srv *srv, struct rk_job *j)
{
    bool chat = j->api == RK_API_CHAT;
    json_t *choices = json_array();
    for (int i = 0; i < (j->n_out ? j->n_out : j->n); i++) {
        struct rk_choice *ch = &j->choices[i];
        const char *fr = ch->finish == RK_FINISH_LENGTH ? "length" : "stop";
        json_t *c;
        if (chat)
            c = json_pack("{s:i,s:{s:s,s:o,s:n},s:o,s:s}", "index", i, "message", "role",
                          "assistant", "content", text_of(&ch->text), "refusal", "logprobs",
                          choice_logprobs(srv, j, ch), "finish_reason", fr);
        else
            c = json_pack("{s:o,s:i,s:o,s:s}", "text", text_of(&ch->text), "index", i,
                          "logprobs", choice_logprobs(srv, j, ch), "finish_reason", fr);
        json_array_append_new(choices, c);
    }
    return json_pack("{s:s,s:s,s:I,s:s,s:n,s:o,s:o}", "id", j->id, "object",
                     chat ? "chat.completion" : "text_completion", "created",
                     (json_int_t)j->created_s, "model", j->model, "system_fingerprint", "choices",
                     choices, "usage", usage_obj(j));
}

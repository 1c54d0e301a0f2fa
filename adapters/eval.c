/*
 * eval.c - how a state adapter is judged. Two levels:
 *   - token level (rk_eval_run, rk_eval_mc_item): mean cross-entropy and
 *     perplexity over token sequences, multiple-choice accuracy by summed
 *     log-likelihood; used by the tuning worker's validation;
 *   - task level (rk_eval_task_run and friends, docs/EVALUATION.md): items
 *     as text, few-shot prompt assembly, greedy generation with stop strings
 *     and exact match, choice accuracy raw and length-normalised, loss per
 *     token and per byte, and collateral (agreement with the base model).
 * Everything runs through rk_forward_seq / rk_forward_token from a copy of
 * the initial state; the task level also uses the tokenizer, the greedy
 * sampler and the stopper of core. No global state.
 */
#include "rk_adapters.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define EVAL_CHUNK 32 /* tokens per rk_forward_seq call: bounds logits to [32][V] */

/* Feed tokens[0..n) from `st` (updated); add log p(tokens[t+1] | ..t) for
 * every t with want(t+1) into *ll. `first` (may be NULL) holds the logits
 * before tokens[0]: then tokens[0] is scored too (with want(0)). */
static int score_seq(struct rk_ctx *ctx, const uint32_t *tok, const uint8_t *mask, size_t n,
                     float *st, const float *first, float *logits, size_t V, double *ll,
                     size_t *cnt)
{
    if (first && (!mask || mask[0])) {
        *ll += rk_logprob(first, V, tok[0]);
        (*cnt)++;
    }
    /* the last token's logits are not needed */
    for (size_t t0 = 0; t0 + 1 < n; t0 += EVAL_CHUNK) {
        size_t nc = n - 1 - t0 < EVAL_CHUNK ? n - 1 - t0 : EVAL_CHUNK;
        int rc = rk_forward_seq(ctx, tok + t0, nc, st, logits, true);
        if (rc != RK_OK)
            return rc;
        for (size_t j = 0; j < nc; j++) {
            size_t t = t0 + j + 1;
            if (!mask || mask[t]) {
                *ll += rk_logprob(logits + j * V, V, tok[t]);
                (*cnt)++;
            }
        }
    }
    return RK_OK;
}

int rk_eval_mc_item(struct rk_ctx *ctx, const struct rk_mc_item *it, const float *state,
                    double *lls)
{
    const struct rk_model *m = rk_ctx_model(ctx);
    size_t slen = rk_state_len(m), V = (size_t)rk_model_n_vocab(m);
    float *st = malloc(slen * sizeof(float)), *st2 = malloc(slen * sizeof(float));
    float *last = malloc(V * sizeof(float)), *logits = malloc(EVAL_CHUNK * V * sizeof(float));
    int rc = RK_ENOMEM;
    if (!st || !st2 || !last || !logits)
        goto out;
    if (state)
        memcpy(st, state, slen * sizeof(float));
    else
        memset(st, 0, slen * sizeof(float));
    if ((rc = rk_forward_seq(ctx, it->prompt, it->n_prompt, st, last, false)) != RK_OK)
        goto out;
    for (size_t c = 0; c < it->n_choices; c++) {
        memcpy(st2, st, slen * sizeof(float));
        double ll = 0;
        size_t cnt = 0;
        rc = score_seq(ctx, it->choices[c], NULL, it->n_choice[c], st2, last, logits, V, &ll,
                       &cnt);
        if (rc != RK_OK)
            goto out;
        lls[c] = ll;
    }
out:
    free(st), free(st2), free(last), free(logits);
    return rc;
}

int rk_eval_run(struct rk_ctx *ctx, const struct rk_dataset *d, const float *state,
                rk_cancel_cb *cancel, void *cancel_user, struct rk_eval_result *out)
{
    memset(out, 0, sizeof *out);
    out->loss = out->ppl = out->accuracy = NAN;
    const struct rk_model *m = rk_ctx_model(ctx);
    size_t slen = rk_state_len(m), V = (size_t)rk_model_n_vocab(m);
    if (rk_dataset_vocab_used(d) > V)
        return RK_ERANGE;
    float *st = malloc(slen * sizeof(float)), *logits = malloc(EVAL_CHUNK * V * sizeof(float));
    double *lls = NULL;
    int rc = RK_ENOMEM;
    if (!st || !logits)
        goto out;
    double ll = 0;
    size_t cnt = 0;
    for (size_t i = 0; i < rk_dataset_len(d); i++) {
        if (cancel && cancel(cancel_user)) {
            rc = RK_ECANCELED;
            goto out;
        }
        const uint32_t *tok;
        const uint8_t *mask;
        size_t n;
        rk_dataset_get(d, i, &tok, &mask, &n);
        if (state)
            memcpy(st, state, slen * sizeof(float));
        else
            memset(st, 0, slen * sizeof(float));
        if ((rc = score_seq(ctx, tok, mask, n, st, NULL, logits, V, &ll, &cnt)) != RK_OK)
            goto out;
        out->n_seq++;
    }
    out->n_targets = cnt;
    if (cnt) {
        out->loss = -ll / (double)cnt;
        out->ppl = exp(out->loss);
    }
    for (size_t i = 0; i < rk_dataset_n_mc(d); i++) {
        if (cancel && cancel(cancel_user)) {
            rc = RK_ECANCELED;
            goto out;
        }
        struct rk_mc_item it;
        rk_dataset_get_mc(d, i, &it);
        double *p = realloc(lls, it.n_choices * sizeof *lls);
        if (!p) {
            rc = RK_ENOMEM;
            goto out;
        }
        lls = p;
        if ((rc = rk_eval_mc_item(ctx, &it, state, lls)) != RK_OK)
            goto out;
        size_t best = 0;
        for (size_t c = 1; c < it.n_choices; c++)
            if (lls[c] > lls[best])
                best = c;
        out->n_mc++;
        out->n_mc_correct += best == it.answer;
    }
    if (out->n_mc)
        out->accuracy = (double)out->n_mc_correct / (double)out->n_mc;
    rc = RK_OK;
out:
    free(st), free(logits), free(lls);
    return rc;
}

/* --- task level: helpers --------------------------------------------------- */

const char *rk_eval_kind_name(enum rk_eval_kind k)
{
    switch (k) {
    case RK_EVAL_GENERATE: return "generate";
    case RK_EVAL_CHOICE: return "choice";
    case RK_EVAL_LOSS: return "loss";
    }
    return "?";
}

int rk_eval_kind_parse(const char *s, enum rk_eval_kind *out)
{
    for (int k = RK_EVAL_GENERATE; k <= RK_EVAL_LOSS; k++)
        if (s && strcmp(s, rk_eval_kind_name((enum rk_eval_kind)k)) == 0) {
            *out = (enum rk_eval_kind)k;
            return RK_OK;
        }
    return RK_EINVAL;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static bool is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

static void strip(const char **s, size_t *n)
{
    while (*n && is_ws((*s)[0]))
        (*s)++, (*n)--;
    while (*n && is_ws((*s)[*n - 1]))
        (*n)--;
}

bool rk_eval_text_match(const char *a, size_t alen, const char *b, size_t blen)
{
    strip(&a, &alen);
    strip(&b, &blen);
    return alen == blen && (alen == 0 || memcmp(a, b, alen) == 0);
}

static void metrics_init(struct rk_eval_metrics *m)
{
    memset(m, 0, sizeof *m);
    m->exact_match = m->acc_raw = m->acc_norm = m->loss = m->nats_per_byte = NAN;
    m->collateral_kept = NAN;
}

/* Tokenise text[len] into a malloc'd array; an empty text gives no tokens. */
static int encode(const struct rk_tokenizer *tok, const char *text, size_t len, uint32_t **ids,
                  size_t *n)
{
    *ids = malloc((len + 1) * sizeof **ids);
    if (!*ids)
        return RK_ENOMEM;
    *n = 0;
    int rc = rk_tok_encode(tok, text, len, *ids, len + 1, n);
    if (rc != RK_OK) {
        free(*ids);
        *ids = NULL;
    }
    return rc;
}

/* Feed the prompt from a copy of `state` into st [slen]; `last` [V] gets the
 * logits after it. An empty prompt feeds token 0. */
static int feed_prompt(struct rk_ctx *ctx, const struct rk_tokenizer *tok, const float *state,
                       const char *prompt, size_t len, float *st, float *last)
{
    const struct rk_model *m = rk_ctx_model(ctx);
    size_t slen = rk_state_len(m);
    if (state)
        memcpy(st, state, slen * sizeof(float));
    else
        memset(st, 0, slen * sizeof(float));
    uint32_t *ids;
    size_t n;
    int rc = encode(tok, prompt, len, &ids, &n);
    if (rc != RK_OK)
        return rc;
    if (n == 0)
        ids[n++] = 0;
    rc = rk_forward_seq(ctx, ids, n, st, last, false);
    free(ids);
    return rc;
}

/* --- task level: the three measurements ----------------------------------- */

int rk_eval_generate(struct rk_ctx *ctx, const struct rk_tokenizer *tok, const float *state,
                     const char *prompt, size_t len, long max_tokens, const char *const *stops,
                     size_t n_stops, char **out, size_t *out_len, size_t *n_gen)
{
    *out = NULL;
    *out_len = 0;
    if (n_gen)
        *n_gen = 0;
    if (max_tokens < 0 || max_tokens > RK_EVAL_MAX_TOKENS_MAX)
        return RK_EINVAL;
    const struct rk_model *m = rk_ctx_model(ctx);
    size_t slen = rk_state_len(m), V = (size_t)rk_model_n_vocab(m);
    float *st = malloc(slen * sizeof(float)), *logits = malloc(V * sizeof(float));
    struct rk_sampler *smp = NULL;
    struct rk_stopper *stopper = NULL;
    char *text = NULL;
    size_t cap = 256, n = 0;
    int rc = RK_ENOMEM;
    if (!st || !logits || !(text = malloc(cap)))
        goto out;
    if ((rc = rk_sampler_create(NULL, V, &smp)) != RK_OK)
        goto out;
    if (n_stops && (rc = rk_stopper_create(stops, n_stops, &stopper)) != RK_OK)
        goto out;
    if ((rc = feed_prompt(ctx, tok, state, prompt, len, st, logits)) != RK_OK)
        goto out;
    bool stopped = false;
    const char *emit;
    size_t emit_len;
    for (long i = 0; i < max_tokens && !stopped; i++) {
        uint32_t next;
        if ((rc = rk_sampler_sample(smp, logits, &next)) != RK_OK)
            goto out;
        if (n_gen)
            (*n_gen)++;
        if (next == 0 && !rk_tok_is_bytes(tok))
            break; /* end of text */
        size_t bl = 0;
        const uint8_t *b = rk_tok_bytes(tok, next, &bl);
        if (!bl) {
            emit = NULL; /* an id outside the vocabulary: no bytes */
            emit_len = 0;
        } else if (stopper) {
            stopped = rk_stopper_feed(stopper, (const char *)b, bl, &emit, &emit_len);
        } else {
            emit = (const char *)b;
            emit_len = bl;
        }
        if (n + emit_len + 1 > cap) {
            while (n + emit_len + 1 > cap)
                cap *= 2;
            char *p = realloc(text, cap);
            if (!p) {
                rc = RK_ENOMEM;
                goto out;
            }
            text = p;
        }
        if (emit_len)
            memcpy(text + n, emit, emit_len);
        n += emit_len;
        if (stopped || i + 1 == max_tokens)
            break;
        if ((rc = rk_forward_token(ctx, next, st, logits)) != RK_OK)
            goto out;
    }
    if (stopper && !stopped) {
        rk_stopper_finish(stopper, &emit, &emit_len);
        if (n + emit_len + 1 > cap) {
            char *p = realloc(text, n + emit_len + 1);
            if (!p) {
                rc = RK_ENOMEM;
                goto out;
            }
            text = p;
        }
        if (emit_len)
            memcpy(text + n, emit, emit_len);
        n += emit_len;
    }
    text[n] = '\0';
    *out = text;
    *out_len = n;
    text = NULL;
    rc = RK_OK;
out:
    free(st), free(logits), free(text);
    rk_sampler_free(smp);
    rk_stopper_free(stopper);
    return rc;
}

int rk_eval_choice_lls(struct rk_ctx *ctx, const struct rk_tokenizer *tok, const float *state,
                       const char *prompt, size_t prompt_len, const char *const *choices,
                       size_t n_choices, double *lls, size_t *n_tok)
{
    const struct rk_model *m = rk_ctx_model(ctx);
    size_t slen = rk_state_len(m), V = (size_t)rk_model_n_vocab(m);
    float *st = malloc(slen * sizeof(float)), *st2 = malloc(slen * sizeof(float));
    float *last = malloc(V * sizeof(float)), *logits = malloc(EVAL_CHUNK * V * sizeof(float));
    uint32_t *ids = NULL;
    int rc = RK_ENOMEM;
    if (!st || !st2 || !last || !logits)
        goto out;
    if ((rc = feed_prompt(ctx, tok, state, prompt, prompt_len, st, last)) != RK_OK)
        goto out;
    for (size_t c = 0; c < n_choices; c++) {
        size_t n;
        if ((rc = encode(tok, choices[c], strlen(choices[c]), &ids, &n)) != RK_OK)
            goto out;
        for (size_t t = 0; t < n; t++)
            if (ids[t] >= V) {
                rc = RK_ERANGE;
                goto out;
            }
        double ll = 0;
        size_t cnt = 0;
        if (n) {
            memcpy(st2, st, slen * sizeof(float));
            if ((rc = score_seq(ctx, ids, NULL, n, st2, last, logits, V, &ll, &cnt)) != RK_OK)
                goto out;
        }
        free(ids);
        ids = NULL;
        lls[c] = ll;
        if (n_tok)
            n_tok[c] = cnt;
    }
    rc = RK_OK;
out:
    free(st), free(st2), free(last), free(logits), free(ids);
    return rc;
}

int rk_eval_loglik(struct rk_ctx *ctx, const struct rk_tokenizer *tok, const float *state,
                   const char *prompt, size_t prompt_len, const char *completion,
                   size_t completion_len, double *ll, size_t *n_tok)
{
    *ll = 0;
    *n_tok = 0;
    if (completion_len == 0)
        return RK_OK;
    /* one choice: the same path */
    char *c = malloc(completion_len + 1);
    if (!c)
        return RK_ENOMEM;
    memcpy(c, completion, completion_len);
    c[completion_len] = '\0';
    const char *cs[1] = {c};
    int rc = rk_eval_choice_lls(ctx, tok, state, prompt, prompt_len, cs, 1, ll, n_tok);
    free(c);
    return rc;
}

/* --- task level: few-shot prompts ------------------------------------------ */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static const char *shot_answer(const struct rk_eval_task *t, const struct rk_eval_item *it)
{
    return t->kind == RK_EVAL_CHOICE ? it->choices[it->answer] : it->completion;
}

static bool shot_eligible(const struct rk_eval_task *t, size_t i, size_t j, const size_t *chosen,
                          size_t n_chosen)
{
    if (t->pool_is_items && i == j)
        return false;
    if (strcmp(t->pool[j].prompt, t->items[i].prompt) == 0)
        return false;
    for (size_t k = 0; k < n_chosen; k++)
        if (chosen[k] == j)
            return false;
    return true;
}

int rk_eval_prompt_build(const struct rk_eval_task *t, size_t i, char **out, size_t *len,
                         struct rk_errbuf *eb)
{
    *out = NULL;
    *len = 0;
    const char *sep = t->shot_sep ? t->shot_sep : "\n\n";
    size_t K = t->shots, seplen = strlen(sep);
    size_t *chosen = K ? malloc(K * sizeof *chosen) : NULL;
    if (K && !chosen)
        return RK_ENOMEM;
    /* the generator depends on (seed, i) only */
    uint64_t rng = t->shot_seed ^ (0x2545f4914f6cdd1dull * (uint64_t)(i + 1));
    splitmix64(&rng);
    for (size_t k = 0; k < K; k++) {
        size_t pick = SIZE_MAX;
        for (int a = 0; a < 64 && pick == SIZE_MAX && t->n_pool; a++) {
            size_t j = (size_t)(splitmix64(&rng) % t->n_pool);
            if (shot_eligible(t, i, j, chosen, k))
                pick = j;
        }
        if (pick == SIZE_MAX && t->n_pool) {
            /* rejection failed (a small pool): scan from a random start */
            size_t j0 = (size_t)(splitmix64(&rng) % t->n_pool);
            for (size_t d = 0; d < t->n_pool && pick == SIZE_MAX; d++) {
                size_t j = (j0 + d) % t->n_pool;
                if (shot_eligible(t, i, j, chosen, k))
                    pick = j;
            }
        }
        if (pick == SIZE_MAX) {
            free(chosen);
            return rk_errbuf_set(eb, RK_EINVAL,
                                 "%zu shots need %zu train items other than item %zu (and "
                                 "with another prompt); there are only %zu",
                                 K, K, i + 1, k);
        }
        chosen[k] = pick;
    }
    size_t total = strlen(t->items[i].prompt) + 1;
    for (size_t k = 0; k < K; k++) {
        const struct rk_eval_item *s = &t->pool[chosen[k]];
        total += strlen(s->prompt) + strlen(shot_answer(t, s)) + seplen;
    }
    char *p = malloc(total);
    if (!p) {
        free(chosen);
        return RK_ENOMEM;
    }
    size_t n = 0;
    for (size_t k = 0; k < K; k++) {
        const struct rk_eval_item *s = &t->pool[chosen[k]];
        const char *parts[3] = {s->prompt, shot_answer(t, s), sep};
        for (int q = 0; q < 3; q++) {
            size_t l = strlen(parts[q]);
            memcpy(p + n, parts[q], l);
            n += l;
        }
    }
    size_t l = strlen(t->items[i].prompt);
    memcpy(p + n, t->items[i].prompt, l);
    n += l;
    p[n] = '\0';
    free(chosen);
    *out = p;
    *len = n;
    return RK_OK;
}

int rk_eval_task_check(const struct rk_eval_task *t, struct rk_errbuf *eb)
{
    if (t->kind != RK_EVAL_GENERATE && t->kind != RK_EVAL_CHOICE && t->kind != RK_EVAL_LOSS)
        return rk_errbuf_set(eb, RK_EINVAL, "unknown task kind");
    if (t->kind == RK_EVAL_GENERATE) {
        if (t->max_tokens < 1 || t->max_tokens > RK_EVAL_MAX_TOKENS_MAX)
            return rk_errbuf_set(eb, RK_EINVAL, "max_tokens must be 1..%d",
                                 RK_EVAL_MAX_TOKENS_MAX);
        if (t->n_stops > RK_EVAL_STOPS_MAX || (t->n_stops && !t->stops))
            return rk_errbuf_set(eb, RK_EINVAL, "at most %d stop strings", RK_EVAL_STOPS_MAX);
        for (size_t i = 0; i < t->n_stops; i++)
            if (!t->stops[i] || !t->stops[i][0] || strlen(t->stops[i]) > RK_STOPPER_STOP_MAX)
                return rk_errbuf_set(eb, RK_EINVAL, "stop strings must be 1..%d bytes",
                                     RK_STOPPER_STOP_MAX);
    }
    if (t->shots > RK_EVAL_SHOTS_MAX)
        return rk_errbuf_set(eb, RK_EINVAL, "shots must be 0..%d", RK_EVAL_SHOTS_MAX);
    if (t->n_items && !t->items)
        return rk_errbuf_set(eb, RK_EINVAL, "no items");
    for (int pass = 0; pass < 2; pass++) {
        const struct rk_eval_item *its = pass ? t->pool : t->items;
        size_t n = pass ? t->n_pool : t->n_items;
        if (pass && !t->shots)
            break;
        for (size_t i = 0; i < n; i++) {
            const struct rk_eval_item *it = &its[i];
            const char *what = pass ? "train item" : "item";
            if (!it->prompt)
                return rk_errbuf_set(eb, RK_EINVAL, "%s %zu: no prompt", what, i + 1);
            if (t->kind == RK_EVAL_CHOICE) {
                if (!it->choices || it->n_choices < 2)
                    return rk_errbuf_set(eb, RK_EINVAL, "%s %zu: needs at least 2 choices",
                                         what, i + 1);
                if (it->answer >= it->n_choices)
                    return rk_errbuf_set(eb, RK_EINVAL, "%s %zu: answer out of range", what,
                                         i + 1);
                for (size_t c = 0; c < it->n_choices; c++)
                    if (!it->choices[c] || !it->choices[c][0])
                        return rk_errbuf_set(eb, RK_EINVAL, "%s %zu: choice %zu is empty",
                                             what, i + 1, c);
            } else if (!it->completion) {
                return rk_errbuf_set(eb, RK_EINVAL, "%s %zu: no completion", what, i + 1);
            }
        }
    }
    size_t need = t->shots + (t->pool_is_items ? 1 : 0);
    if (t->shots && t->n_pool < need)
        return rk_errbuf_set(eb, RK_EINVAL,
                             "%zu shots need at least %zu train items; there are %zu", t->shots,
                             need, t->n_pool);
    return RK_OK;
}

/* --- task level: runs ------------------------------------------------------ */

static int run_items(struct rk_ctx *ctx, const struct rk_tokenizer *tok,
                     const struct rk_eval_task *t, const float *state,
                     const struct rk_eval_outputs *base, struct rk_eval_outputs *gen,
                     rk_cancel_cb *cancel, void *cancel_user, rk_eval_progress_cb *progress,
                     void *progress_user, struct rk_eval_metrics *out, struct rk_errbuf *eb)
{
    double t0 = now_s();
    metrics_init(out);
    int rc = rk_eval_task_check(t, eb);
    if (rc != RK_OK)
        return rc;
    if ((base || gen) && t->kind != RK_EVAL_GENERATE)
        return rk_errbuf_set(eb, RK_EINVAL, "collateral needs a task of kind generate");
    if (base && base->n != t->n_items)
        return rk_errbuf_set(eb, RK_EINVAL, "base outputs for %zu items, the task has %zu",
                             base->n, t->n_items);
    if (gen) {
        memset(gen, 0, sizeof *gen);
        gen->text = calloc(t->n_items ? t->n_items : 1, sizeof *gen->text);
        gen->len = calloc(t->n_items ? t->n_items : 1, sizeof *gen->len);
        if (!gen->text || !gen->len) {
            rk_eval_outputs_fini(gen);
            return RK_ENOMEM;
        }
    }
    bool score = !base && !gen; /* a metrics run, not a collateral/output run */
    double *lls = NULL;
    size_t *ntok = NULL;
    char *prompt = NULL, *text = NULL;
    size_t n_em = 0, n_raw = 0, n_norm = 0, kept = 0, tok_scored = 0, tok_gen = 0;
    size_t bytes = 0, ans_tokens = 0;
    double nll = 0;
    for (size_t i = 0; i < t->n_items; i++) {
        if (cancel && cancel(cancel_user)) {
            rc = RK_ECANCELED;
            goto out;
        }
        const struct rk_eval_item *it = &t->items[i];
        size_t plen;
        if ((rc = rk_eval_prompt_build(t, i, &prompt, &plen, eb)) != RK_OK)
            goto out;
        if (t->kind == RK_EVAL_GENERATE) {
            size_t tl, ng;
            rc = rk_eval_generate(ctx, tok, state, prompt, plen, t->max_tokens, t->stops,
                                  t->n_stops, &text, &tl, &ng);
            if (rc != RK_OK)
                goto out;
            tok_gen += ng;
            if (base)
                kept += tl == base->len[i] && memcmp(text, base->text[i], tl) == 0;
            if (score)
                n_em += rk_eval_text_match(text, tl, it->completion, strlen(it->completion));
            if (gen) {
                gen->text[i] = text;
                gen->len[i] = tl;
                gen->n = i + 1;
                text = NULL;
            }
            free(text);
            text = NULL;
        }
        if (score && t->kind != RK_EVAL_CHOICE) {
            double ll;
            size_t nt, cl = strlen(it->completion);
            rc = rk_eval_loglik(ctx, tok, state, prompt, plen, it->completion, cl, &ll, &nt);
            if (rc != RK_OK)
                goto out;
            nll -= ll;
            tok_scored += nt;
            bytes += nt ? cl : 0;
        }
        if (score && t->kind == RK_EVAL_CHOICE) {
            double *p = realloc(lls, it->n_choices * sizeof *lls);
            if (!p) {
                rc = RK_ENOMEM;
                goto out;
            }
            lls = p;
            size_t *q = realloc(ntok, it->n_choices * sizeof *ntok);
            if (!q) {
                rc = RK_ENOMEM;
                goto out;
            }
            ntok = q;
            rc = rk_eval_choice_lls(ctx, tok, state, prompt, plen, it->choices, it->n_choices,
                                    lls, ntok);
            if (rc != RK_OK)
                goto out;
            size_t best_raw = 0, best_norm = 0;
            for (size_t c = 1; c < it->n_choices; c++) {
                if (lls[c] > lls[best_raw])
                    best_raw = c;
                if (lls[c] / (double)strlen(it->choices[c]) >
                    lls[best_norm] / (double)strlen(it->choices[best_norm]))
                    best_norm = c;
            }
            n_raw += best_raw == it->answer;
            n_norm += best_norm == it->answer;
            for (size_t c = 0; c < it->n_choices; c++)
                tok_scored += ntok[c];
            nll -= lls[it->answer];
            bytes += strlen(it->choices[it->answer]);
            /* the loss averages over the correct choices' tokens only */
            ans_tokens += ntok[it->answer];
        }
        free(prompt);
        prompt = NULL;
        out->n++;
        if (progress)
            progress(i + 1, t->n_items, progress_user);
    }
    size_t n = out->n;
    if (score && n) {
        if (t->kind == RK_EVAL_GENERATE)
            out->exact_match = (double)n_em / (double)n;
        if (t->kind == RK_EVAL_CHOICE) {
            out->acc_raw = (double)n_raw / (double)n;
            out->acc_norm = (double)n_norm / (double)n;
        }
    }
    if (score) {
        size_t loss_tokens = t->kind == RK_EVAL_CHOICE ? ans_tokens : tok_scored;
        if (loss_tokens)
            out->loss = nll / (double)loss_tokens;
        if (bytes)
            out->nats_per_byte = nll / (double)bytes;
    }
    if (base && n)
        out->collateral_kept = (double)kept / (double)n;
    if (gen)
        gen->tokens = tok_gen;
    out->tokens_scored = tok_scored;
    out->tokens_generated = tok_gen;
    out->tokens = tok_scored + tok_gen;
    rc = RK_OK;
out:
    free(lls), free(ntok), free(prompt), free(text);
    if (rc != RK_OK && gen)
        rk_eval_outputs_fini(gen);
    out->seconds = now_s() - t0;
    return rc;
}

int rk_eval_task_run(struct rk_ctx *ctx, const struct rk_tokenizer *tok,
                     const struct rk_eval_task *t, const float *state, rk_cancel_cb *cancel,
                     void *cancel_user, rk_eval_progress_cb *progress, void *progress_user,
                     struct rk_eval_metrics *out, struct rk_errbuf *eb)
{
    return run_items(ctx, tok, t, state, NULL, NULL, cancel, cancel_user, progress,
                     progress_user, out, eb);
}

int rk_eval_outputs_generate(struct rk_ctx *ctx, const struct rk_tokenizer *tok,
                             const struct rk_eval_task *t, const float *state,
                             rk_cancel_cb *cancel, void *cancel_user,
                             rk_eval_progress_cb *progress, void *progress_user,
                             struct rk_eval_outputs *out, struct rk_errbuf *eb)
{
    struct rk_eval_metrics m;
    return run_items(ctx, tok, t, state, NULL, out, cancel, cancel_user, progress,
                     progress_user, &m, eb);
}

void rk_eval_outputs_fini(struct rk_eval_outputs *o)
{
    if (!o)
        return;
    if (o->text)
        for (size_t i = 0; i < o->n; i++)
            free(o->text[i]);
    free(o->text);
    free(o->len);
    memset(o, 0, sizeof *o);
}

int rk_eval_collateral(struct rk_ctx *ctx, const struct rk_tokenizer *tok,
                       const struct rk_eval_task *t, const float *state,
                       const struct rk_eval_outputs *base, rk_cancel_cb *cancel,
                       void *cancel_user, rk_eval_progress_cb *progress, void *progress_user,
                       struct rk_eval_metrics *out, struct rk_errbuf *eb)
{
    if (!base) {
        metrics_init(out);
        return rk_errbuf_set(eb, RK_EINVAL, "collateral needs the base outputs");
    }
    return run_items(ctx, tok, t, state, base, NULL, cancel, cancel_user, progress,
                     progress_user, out, eb);
}

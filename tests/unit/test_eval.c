/*
 * test_eval.c - the task-level evaluation metrics of adapters/eval.c on the
 * random-weight model tests/data/rand-mh.safetensors with the byte
 * tokenizer, each checked against an independent computation in this file
 * (token by token through rk_forward_token, argmax and log-softmax by
 * hand): log-likelihoods and loss, acc_raw against acc_norm on a
 * constructed item where they disagree, greedy output cut at a stop
 * string and exact match, few-shot assembly (determinism, the evaluated
 * item never a shot), collateral, cancel and bad tasks.
 */
#include "check_common.h"
#include "rk_adapters.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct rk_model *g_m;
static struct rk_ctx *g_ctx;
static struct rk_tokenizer *g_tok;

static void setup(void)
{
    struct rk_errbuf eb = {0};
    ck_assert_int_eq(rk_model_load(rk_test_data("rand-mh.safetensors"), NULL, &g_m, &eb), RK_OK);
    struct rk_ctx_params cp = {.n_threads = 1};
    ck_assert_int_eq(rk_ctx_create(g_m, &cp, &g_ctx), RK_OK);
    ck_assert_int_eq(rk_tok_create_bytes(&g_tok), RK_OK);
}

static void teardown(void)
{
    rk_tok_free(g_tok);
    rk_ctx_free(g_ctx);
    rk_model_free(g_m);
}

/* log-softmax by hand, in double */
static double ref_logprob(const float *logits, size_t V, uint32_t t)
{
    double mx = logits[0], s = 0;
    for (size_t i = 1; i < V; i++)
        mx = logits[i] > mx ? logits[i] : mx;
    for (size_t i = 0; i < V; i++)
        s += exp((double)logits[i] - mx);
    return (double)logits[t] - mx - log(s);
}

/* Sum of log p(cont bytes | prompt bytes) from the zero state, one token at a time. */
static double ref_ll(const char *prompt, const char *cont)
{
    size_t V = (size_t)rk_model_n_vocab(g_m);
    float *st = calloc(rk_state_len(g_m), sizeof(float)), *lg = malloc(V * sizeof(float));
    ck_assert(st && lg);
    size_t pl = strlen(prompt);
    if (!pl)
        ck_assert_int_eq(rk_forward_token(g_ctx, 0, st, lg), RK_OK);
    for (size_t i = 0; i < pl; i++)
        ck_assert_int_eq(rk_forward_token(g_ctx, (uint8_t)prompt[i], st, lg), RK_OK);
    double ll = 0;
    for (size_t i = 0; cont[i]; i++) {
        ll += ref_logprob(lg, V, (uint8_t)cont[i]);
        ck_assert_int_eq(rk_forward_token(g_ctx, (uint8_t)cont[i], st, lg), RK_OK);
    }
    free(st), free(lg);
    return ll;
}

/* Greedy ids from `prompt`, n of them, by hand (argmax over the whole
 * vocabulary, lowest index on ties; `bytes_only`: over the 256 bytes). */
static void ref_greedy(const char *prompt, size_t n, bool bytes_only, uint32_t *ids)
{
    size_t V = (size_t)rk_model_n_vocab(g_m);
    float *st = calloc(rk_state_len(g_m), sizeof(float)), *lg = malloc(V * sizeof(float));
    ck_assert(st && lg);
    for (size_t i = 0; prompt[i]; i++)
        ck_assert_int_eq(rk_forward_token(g_ctx, (uint8_t)prompt[i], st, lg), RK_OK);
    for (size_t k = 0; k < n; k++) {
        size_t b = 0, lim = bytes_only ? 256 : V;
        for (size_t i = 1; i < lim; i++)
            if (lg[i] > lg[b])
                b = i;
        ids[k] = (uint32_t)b;
        ck_assert_int_eq(rk_forward_token(g_ctx, (uint32_t)b, st, lg), RK_OK);
    }
    free(st), free(lg);
}

START_TEST(test_loglik_and_loss)
{
    const char *p = "The cat sat on", *c = " the mat";
    double ll;
    size_t n;
    ck_assert_int_eq(rk_eval_loglik(g_ctx, g_tok, NULL, p, strlen(p), c, strlen(c), &ll, &n),
                     RK_OK);
    double ref = ref_ll(p, c);
    ck_assert_uint_eq(n, strlen(c));
    ck_assert_msg(fabs(ll - ref) < 1e-3 * fabs(ref), "ll %.6f vs %.6f", ll, ref);
    /* an empty prompt starts from token 0 */
    ck_assert_int_eq(rk_eval_loglik(g_ctx, g_tok, NULL, "", 0, c, strlen(c), &ll, &n), RK_OK);
    ref = ref_ll("", c);
    ck_assert_msg(fabs(ll - ref) < 1e-3 * fabs(ref), "ll %.6f vs %.6f", ll, ref);

    /* the loss task: token-weighted mean, and per byte (bytes = tokens here) */
    struct rk_eval_item its[2] = {{.prompt = p, .completion = c},
                                  {.prompt = "Hello", .completion = ", world"}};
    struct rk_eval_task t = {.kind = RK_EVAL_LOSS, .items = its, .n_items = 2};
    struct rk_eval_metrics m;
    struct rk_errbuf eb = {0};
    ck_assert_int_eq(rk_eval_task_run(g_ctx, g_tok, &t, NULL, NULL, NULL, NULL, NULL, &m, &eb),
                     RK_OK);
    double nll = -(ref_ll(p, c) + ref_ll("Hello", ", world"));
    double ntok = (double)(strlen(c) + strlen(", world"));
    ck_assert_uint_eq(m.n, 2);
    ck_assert_msg(fabs(m.loss - nll / ntok) < 1e-3, "loss %.6f vs %.6f", m.loss, nll / ntok);
    ck_assert(fabs(m.nats_per_byte - m.loss) < 1e-9);
    ck_assert(isnan(m.exact_match) && isnan(m.acc_raw) && isnan(m.collateral_kept));
    ck_assert_uint_eq(m.tokens, (size_t)ntok);
}
END_TEST

START_TEST(test_choice_raw_vs_norm)
{
    /* A constructed item: the long choice is 8 bytes of the byte-restricted
     * greedy continuation (likely per byte), the short one the least likely
     * letter (unlikely, but one byte): summed log-likelihood prefers the
     * short one, per-byte the long one. */
    const char *p = "Q: pick one. A:";
    uint32_t ids[8];
    ref_greedy(p, 8, true, ids);
    char longc[9], shortc[2] = {0, 0};
    for (int i = 0; i < 8; i++)
        longc[i] = (char)ids[i];
    longc[8] = '\0';
    double worst = INFINITY;
    for (char ch = 'a'; ch <= 'z'; ch++) {
        char one[2] = {ch, 0};
        double l = ref_ll(p, one);
        if (l < worst && ch != longc[0]) {
            worst = l;
            shortc[0] = ch;
        }
    }
    double l_long = ref_ll(p, longc), l_short = ref_ll(p, shortc);
    ck_assert_msg(l_short > l_long && l_long / 8 > l_short,
                  "construction failed: short %.3f, long %.3f", l_short, l_long);
    const char *choices[2] = {shortc, longc};
    double lls[2];
    size_t nt[2];
    ck_assert_int_eq(rk_eval_choice_lls(g_ctx, g_tok, NULL, p, strlen(p), choices, 2, lls, nt),
                     RK_OK);
    ck_assert(fabs(lls[0] - ref_ll(p, shortc)) < 1e-3 * fabs(lls[0]));
    ck_assert(fabs(lls[1] - ref_ll(p, longc)) < 1e-3 * fabs(lls[1]));
    ck_assert_uint_eq(nt[1], strlen(longc));

    struct rk_eval_item it = {.prompt = p, .choices = choices, .n_choices = 2, .answer = 1};
    struct rk_eval_task t = {.kind = RK_EVAL_CHOICE, .items = &it, .n_items = 1};
    struct rk_eval_metrics m;
    ck_assert_int_eq(rk_eval_task_run(g_ctx, g_tok, &t, NULL, NULL, NULL, NULL, NULL, &m, NULL),
                     RK_OK);
    ck_assert(m.acc_raw == 0.0 && m.acc_norm == 1.0);
    /* loss: of the correct choice, per its tokens */
    ck_assert(fabs(m.loss + lls[1] / (double)strlen(longc)) < 1e-6);
    it.answer = 0;
    ck_assert_int_eq(rk_eval_task_run(g_ctx, g_tok, &t, NULL, NULL, NULL, NULL, NULL, &m, NULL),
                     RK_OK);
    ck_assert(m.acc_raw == 1.0 && m.acc_norm == 0.0);
    ck_assert(fabs(m.loss + lls[0]) < 1e-6);
}
END_TEST

START_TEST(test_generate_stop_and_exact_match)
{
    const char *p = "Once upon a time";
    uint32_t ids[40];
    ref_greedy(p, 40, false, ids);
    /* the text: the bytes of the ids that are bytes (others have none) */
    char ref[41];
    size_t nref = 0;
    for (int i = 0; i < 40; i++)
        if (ids[i] < 256 && ids[i] != 0)
            ref[nref++] = (char)ids[i];
    ref[nref] = '\0';
    ck_assert_msg(nref >= 12, "only %zu byte tokens in 40", nref);
    /* no stop: max_tokens tokens */
    char *out;
    size_t len, ng;
    ck_assert_int_eq(rk_eval_generate(g_ctx, g_tok, NULL, p, strlen(p), 40, NULL, 0, &out, &len,
                                      &ng), RK_OK);
    ck_assert_uint_eq(ng, 40);
    ck_assert_uint_eq(len, nref);
    ck_assert(memcmp(out, ref, nref) == 0);
    free(out);
    /* a stop string taken from the middle of the text: cut at its first
     * occurrence, the stop excluded */
    char stop[3] = {ref[nref / 2], ref[nref / 2 + 1], 0};
    const char *stops[2] = {"\x01\x02never", stop};
    size_t cut = (size_t)(strstr(ref, stop) - ref);
    /* tokens generated: up to the one that completes the stop */
    size_t want_ng = 0, seen = 0;
    while (seen < cut + 2)
        seen += ids[want_ng] < 256 && ids[want_ng] != 0, want_ng++;
    ck_assert_int_eq(rk_eval_generate(g_ctx, g_tok, NULL, p, strlen(p), 40, stops, 2, &out, &len,
                                      &ng), RK_OK);
    ck_assert_uint_eq(len, cut);
    ck_assert(memcmp(out, ref, cut) == 0 && out[len] == '\0');
    ck_assert_uint_eq(ng, want_ng);
    free(out);

    /* exact match: the cut output equals the completion after stripping */
    char gold[64];
    snprintf(gold, sizeof gold, " \n%.*s\t\n", (int)cut, ref);
    char wrong[64];
    snprintf(wrong, sizeof wrong, "%.*sX", (int)cut, ref);
    struct rk_eval_item its[2] = {{.prompt = p, .completion = gold},
                                  {.prompt = p, .completion = wrong}};
    struct rk_eval_task t = {.kind = RK_EVAL_GENERATE, .max_tokens = 40, .stops = stops,
                             .n_stops = 2, .items = its, .n_items = 2};
    struct rk_eval_metrics m;
    ck_assert_int_eq(rk_eval_task_run(g_ctx, g_tok, &t, NULL, NULL, NULL, NULL, NULL, &m, NULL),
                     RK_OK);
    ck_assert_msg(m.exact_match == 0.5, "exact_match %.3f", m.exact_match);
    ck_assert(isfinite(m.loss) && isnan(m.acc_raw));
    ck_assert(rk_eval_text_match(" a b\n", 5, "a b", 3));
    ck_assert(!rk_eval_text_match("a  b", 4, "a b", 3));
    ck_assert(rk_eval_text_match("", 0, " \n", 2));
}
END_TEST

START_TEST(test_fewshot_assembly)
{
    struct rk_eval_item pool[6];
    char pr[6][16], co[6][16];
    for (int i = 0; i < 6; i++) {
        snprintf(pr[i], sizeof pr[i], "P%d:", i);
        snprintf(co[i], sizeof co[i], " c%d", i);
        pool[i] = (struct rk_eval_item){.prompt = pr[i], .completion = co[i]};
    }
    struct rk_eval_task t = {.kind = RK_EVAL_GENERATE, .max_tokens = 4, .shots = 3,
                             .shot_sep = "|", .shot_seed = 11, .pool = pool, .n_pool = 6,
                             .pool_is_items = true, .items = pool, .n_items = 6};
    ck_assert_int_eq(rk_eval_task_check(&t, NULL), RK_OK);
    char *a, *b;
    size_t la, lb;
    bool differs = false;
    for (size_t i = 0; i < 6; i++) {
        ck_assert_int_eq(rk_eval_prompt_build(&t, i, &a, &la, NULL), RK_OK);
        ck_assert_int_eq(rk_eval_prompt_build(&t, i, &b, &lb, NULL), RK_OK);
        ck_assert_str_eq(a, b); /* deterministic */
        ck_assert_uint_eq(la, strlen(a));
        /* shot + sep, three times, then the item's prompt; never itself */
        int seps = 0, seen[6] = {0};
        for (const char *q = a; *q; q++)
            seps += *q == '|';
        ck_assert_int_eq(seps, 3);
        const char *q = a;
        for (int k = 0; k < 3; k++) {
            int j;
            ck_assert_int_eq(sscanf(q, "P%d:", &j), 1);
            ck_assert(j >= 0 && j < 6 && (size_t)j != i && !seen[j]);
            seen[j] = 1;
            char shot[40];
            snprintf(shot, sizeof shot, "P%d: c%d|", j, j);
            ck_assert(strncmp(q, shot, strlen(shot)) == 0);
            q += strlen(shot);
        }
        ck_assert_str_eq(q, pr[i]);
        /* another seed draws other shots for some item */
        t.shot_seed = 12;
        free(b);
        ck_assert_int_eq(rk_eval_prompt_build(&t, i, &b, &lb, NULL), RK_OK);
        differs |= strcmp(a, b) != 0;
        t.shot_seed = 11;
        free(a), free(b);
    }
    ck_assert(differs);
    /* too few distinct items for the shots */
    t.shots = 6;
    struct rk_errbuf eb = {0};
    ck_assert_int_eq(rk_eval_task_check(&t, &eb), RK_EINVAL);
    ck_assert(strstr(eb.msg, "shots") != NULL);
    /* a choice pool shows the correct choice */
    const char *ch[2] = {" no", " yes"};
    struct rk_eval_item ci[2] = {{.prompt = "A?", .choices = ch, .n_choices = 2, .answer = 1},
                                 {.prompt = "B?", .choices = ch, .n_choices = 2, .answer = 0}};
    struct rk_eval_task tc = {.kind = RK_EVAL_CHOICE, .shots = 1, .pool = ci, .n_pool = 1,
                              .items = ci + 1, .n_items = 1};
    ck_assert_int_eq(rk_eval_prompt_build(&tc, 0, &a, &la, NULL), RK_OK);
    ck_assert_str_eq(a, "A? yes\n\nB?");
    free(a);
}
END_TEST

static bool cancel_now(void *u)
{
    (void)u;
    return true;
}

START_TEST(test_collateral_and_errors)
{
    const char *stops[1] = {"\n"};
    struct rk_eval_item its[2] = {{.prompt = "abc", .completion = ""},
                                  {.prompt = "xyz", .completion = ""}};
    struct rk_eval_task t = {.kind = RK_EVAL_GENERATE, .max_tokens = 12, .stops = stops,
                             .n_stops = 1, .items = its, .n_items = 2};
    struct rk_eval_outputs base = {0};
    ck_assert_int_eq(rk_eval_outputs_generate(g_ctx, g_tok, &t, NULL, NULL, NULL, NULL, NULL,
                                              &base, NULL), RK_OK);
    ck_assert_uint_eq(base.n, 2);
    struct rk_eval_metrics m;
    /* the zero state is the base model: everything kept */
    float *z = calloc(rk_state_len(g_m), sizeof(float));
    ck_assert_int_eq(rk_eval_collateral(g_ctx, g_tok, &t, z, &base, NULL, NULL, NULL, NULL, &m,
                                        NULL), RK_OK);
    ck_assert(m.collateral_kept == 1.0);
    /* a base output changed by hand: that item is no longer kept */
    base.text[1][0] ^= 1;
    ck_assert_int_eq(rk_eval_collateral(g_ctx, g_tok, &t, z, &base, NULL, NULL, NULL, NULL, &m,
                                        NULL), RK_OK);
    ck_assert(m.collateral_kept == 0.5);
    /* cancel between items */
    ck_assert_int_eq(rk_eval_task_run(g_ctx, g_tok, &t, z, cancel_now, NULL, NULL, NULL, &m,
                                      NULL), RK_ECANCELED);
    rk_eval_outputs_fini(&base);
    free(z);
    /* bad tasks */
    struct rk_errbuf eb = {0};
    t.max_tokens = 0;
    ck_assert_int_eq(rk_eval_task_run(g_ctx, g_tok, &t, NULL, NULL, NULL, NULL, NULL, &m, &eb),
                     RK_EINVAL);
    ck_assert(strstr(eb.msg, "max_tokens") != NULL);
    const char *one[1] = {"x"};
    struct rk_eval_item bad = {.prompt = "p", .choices = one, .n_choices = 1};
    struct rk_eval_task tc = {.kind = RK_EVAL_CHOICE, .items = &bad, .n_items = 1};
    ck_assert_int_eq(rk_eval_task_check(&tc, &eb), RK_EINVAL);
    ck_assert(strstr(eb.msg, "2 choices") != NULL);
    enum rk_eval_kind k;
    ck_assert_int_eq(rk_eval_kind_parse("choice", &k), RK_OK);
    ck_assert_int_eq(k, RK_EVAL_CHOICE);
    ck_assert_int_eq(rk_eval_kind_parse("mc", &k), RK_EINVAL);
}
END_TEST

RK_TEST_SUITE(eval_suite, RK_SELF_CONTAINED)
{
    Suite *s = suite_create("eval");
    TCase *tc = tcase_create("metrics");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_loglik_and_loss);
    tcase_add_test(tc, test_choice_raw_vs_norm);
    tcase_add_test(tc, test_generate_stop_and_exact_match);
    tcase_add_test(tc, test_fewshot_assembly);
    tcase_add_test(tc, test_collateral_and_errors);
    suite_add_tcase(s, tc);
    return s;
}

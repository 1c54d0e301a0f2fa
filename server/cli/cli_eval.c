/*
 * cli_eval.c - `rwkvd eval`: tasks (docs/EVALUATION.md) evaluated for the
 * base model and any number of states, with collateral, as one JSON
 * document on stdout or --out; a progress line on stderr. The work is
 * eval_tasks.c's runner, which POST /eval and eval jobs share. The older
 * form `--data FILE.jsonl` (loss, perplexity and summed-likelihood
 * accuracy of one state on one dataset) is kept as it was.
 */
#include "cli_common.h"
#include "cmd.h"
#include "dataset_jsonl.h"
#include "eval_tasks.h"
#include "rk_adapters.h"

#include <getopt.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define EVAL_TASKS_MAX 64
#define EVAL_STATES_MAX 64

enum {
    OPT_MODEL = 256, OPT_DATA, OPT_STATE, OPT_VOCAB, OPT_THREADS, OPT_MAX_TOKENS, OPT_JSON,
    OPT_TASK, OPT_SPLIT, OPT_LIMIT, OPT_SHOTS, OPT_SHOT_SEED, OPT_BASE, OPT_COLLATERAL, OPT_OUT,
    OPT_QUIET,
};

/* --- the older form: --data ------------------------------------------------ */

static int eval_data(const char *model, const char *data, const char *state_path,
                     const char *vocab, long threads, const struct rk_jsonl_limits *lim, bool json)
{
    struct rk_model *m = NULL;
    struct rk_tokenizer *tok = NULL;
    struct rk_dataset *ds = NULL;
    struct rk_ctx *ctx = NULL;
    float *st = NULL;
    struct rk_errbuf eb = {0};
    int rc, status = 1;
    if (!(m = rk_cli_load_model(model, RK_DTYPE_AUTO)) || !(tok = rk_cli_load_tokenizer(vocab, m)))
        goto out;
    if (rk_dataset_create(&ds) != RK_OK)
        goto out;
    if ((rc = rk_jsonl_load(data, tok, lim, ds, &eb)) != RK_OK) {
        fprintf(stderr, "rwkvd eval: %s: %s\n", data, eb.msg[0] ? eb.msg : rk_strerror(rc));
        goto out;
    }
    if (state_path) {
        st = malloc(sizeof(float) * rk_state_len(m));
        if (!st) {
            fprintf(stderr, "rwkvd eval: out of memory\n");
            goto out;
        }
        if (rk_cli_load_state(state_path, m, st, NULL) != RK_OK)
            goto out;
    }
    struct rk_ctx_params cp = {.n_threads = (int)threads};
    if (rk_ctx_create(m, &cp, &ctx) != RK_OK) {
        fprintf(stderr, "rwkvd eval: cannot create a context\n");
        goto out;
    }
    struct rk_eval_result r;
    if ((rc = rk_eval_run(ctx, ds, st, NULL, NULL, &r)) != RK_OK) {
        fprintf(stderr, "rwkvd eval: %s\n", rk_strerror(rc));
        goto out;
    }
    if (json) {
        printf("{\"sequences\": %zu, \"targets\": %zu", r.n_seq, r.n_targets);
        if (r.n_targets)
            printf(", \"loss\": %.9g, \"perplexity\": %.9g", r.loss, r.ppl);
        else
            printf(", \"loss\": null, \"perplexity\": null");
        printf(", \"mc_items\": %zu, \"mc_correct\": %zu, \"accuracy\": ", r.n_mc,
               r.n_mc_correct);
        if (r.n_mc)
            printf("%.9g}\n", r.accuracy);
        else
            printf("null}\n");
    } else {
        if (r.n_targets)
            printf("loss %.6f  perplexity %.4f  (%zu sequences, %zu scored tokens)\n", r.loss,
                   r.ppl, r.n_seq, r.n_targets);
        if (r.n_mc)
            printf("accuracy %.4f  (%zu of %zu multiple-choice items)\n", r.accuracy,
                   r.n_mc_correct, r.n_mc);
    }
    status = 0;
out:
    free(st);
    rk_ctx_free(ctx);
    rk_dataset_free(ds);
    rk_tok_free(tok);
    rk_model_free(m);
    return status;
}

/* --- tasks ------------------------------------------------------------------- */

struct cli_prog {
    double t0, last;
    bool tty, quiet;
};

static void cli_progress(size_t done, size_t total, const char *task, const char *state,
                         void *user)
{
    struct cli_prog *pg = user;
    if (pg->quiet)
        return;
    double now = rk_cli_now();
    /* on a terminal the line is redrawn; elsewhere one line a second at most */
    if (done < total && now - pg->last < (pg->tty ? 0.1 : 1.0))
        return;
    pg->last = now;
    fprintf(stderr, "%seval: %zu/%zu items  task %s  state %s  %.1fs%s", pg->tty ? "\r" : "",
            done, total, task, state, now - pg->t0, pg->tty ? "\033[K" : "\n");
    if (pg->tty && done == total)
        fputc('\n', stderr);
    fflush(stderr);
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: rwkvd eval --model FILE --task DIR [--task DIR ...] [options]\n"
            "       rwkvd eval --model FILE --data FILE.jsonl [--state FILE] [--json]\n\n"
            "Evaluates the base model or tuned states on tasks (docs/EVALUATION.md) and\n"
            "prints one JSON document; a progress line goes to stderr.\n\n"
            "  --task DIR          a task directory (task.json, train/val/test.jsonl);\n"
            "                      repeatable, up to %d\n"
            "  --split S           test (default), val or train\n"
            "  --limit N           the first N items of each split (default all)\n"
            "  --shots K           few-shot examples (default: the task's \"shots\")\n"
            "  --shot-seed S       seed of the few-shot draw (default 0)\n"
            "  --state FILE        a state file; repeatable (up to %d), one result per\n"
            "                      state; without --state: the base model\n"
            "  --base              also the base model when --state is given\n"
            "  --collateral DIR    a generate task whose test prompts measure how often a\n"
            "                      state's greedy output equals the base model's\n"
            "  --threads N         compute threads (default: all CPUs)\n"
            "  --vocab FILE        World vocabulary (byte models need none)\n"
            "  --out FILE.json     write the JSON there instead of stdout\n"
            "  --quiet             no progress line\n\n"
            "The older form --data FILE.jsonl prints loss, perplexity and summed-likelihood\n"
            "accuracy of one state on one JSONL dataset (--json for JSON, --max-tokens N\n"
            "for the longest example, default 8192).\n\n"
            "Exit status: 0 success, 2 usage error, 1 any other error.\n",
            EVAL_TASKS_MAX, EVAL_STATES_MAX);
}

int rk_cmd_eval(int argc, char **argv)
{
    static const struct option opts[] = {
        {"model", required_argument, 0, OPT_MODEL},
        {"data", required_argument, 0, OPT_DATA},
        {"state", required_argument, 0, OPT_STATE},
        {"vocab", required_argument, 0, OPT_VOCAB},
        {"threads", required_argument, 0, OPT_THREADS},
        {"max-tokens", required_argument, 0, OPT_MAX_TOKENS},
        {"json", no_argument, 0, OPT_JSON},
        {"task", required_argument, 0, OPT_TASK},
        {"split", required_argument, 0, OPT_SPLIT},
        {"limit", required_argument, 0, OPT_LIMIT},
        {"shots", required_argument, 0, OPT_SHOTS},
        {"shot-seed", required_argument, 0, OPT_SHOT_SEED},
        {"base", no_argument, 0, OPT_BASE},
        {"collateral", required_argument, 0, OPT_COLLATERAL},
        {"out", required_argument, 0, OPT_OUT},
        {"quiet", no_argument, 0, OPT_QUIET},
        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0},
    };
    const char *model = NULL, *data = NULL, *vocab = NULL, *split = "test", *coll_dir = NULL;
    const char *outp = NULL;
    const char *task_dirs[EVAL_TASKS_MAX], *state_paths[EVAL_STATES_MAX];
    size_t n_tasks = 0, n_states = 0;
    long threads = 0, limit = 0, shots = -1, v;
    uint64_t shot_seed = 0;
    bool json = false, with_base = false, quiet = false, max_tokens_set = false;
    struct rk_jsonl_limits lim;
    rk_jsonl_limits_default(&lim);
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case OPT_MODEL: model = optarg; break;
        case OPT_DATA: data = optarg; break;
        case OPT_VOCAB: vocab = optarg; break;
        case OPT_SPLIT:
            if (strcmp(optarg, "test") && strcmp(optarg, "val") && strcmp(optarg, "train")) {
                fprintf(stderr, "rwkvd eval: --split must be test, val or train\n");
                return 2;
            }
            split = optarg;
            break;
        case OPT_STATE:
            if (n_states == EVAL_STATES_MAX) {
                fprintf(stderr, "rwkvd eval: at most %d --state\n", EVAL_STATES_MAX);
                return 2;
            }
            state_paths[n_states++] = optarg;
            break;
        case OPT_TASK:
            if (n_tasks == EVAL_TASKS_MAX) {
                fprintf(stderr, "rwkvd eval: at most %d --task\n", EVAL_TASKS_MAX);
                return 2;
            }
            task_dirs[n_tasks++] = optarg;
            break;
        case OPT_THREADS:
            if (!rk_cli_parse_long(optarg, 0, 1024, &threads)) {
                fprintf(stderr, "rwkvd eval: bad --threads (0..1024)\n");
                return 2;
            }
            break;
        case OPT_LIMIT:
            if (!rk_cli_parse_long(optarg, 1, RK_EVTASK_ITEMS_MAX, &limit)) {
                fprintf(stderr, "rwkvd eval: bad --limit (1..%d)\n", RK_EVTASK_ITEMS_MAX);
                return 2;
            }
            break;
        case OPT_SHOTS:
            if (!rk_cli_parse_long(optarg, 0, RK_EVAL_SHOTS_MAX, &shots)) {
                fprintf(stderr, "rwkvd eval: bad --shots (0..%d)\n", RK_EVAL_SHOTS_MAX);
                return 2;
            }
            break;
        case OPT_SHOT_SEED:
            if (!rk_cli_parse_long(optarg, 0, __LONG_MAX__, &v)) {
                fprintf(stderr, "rwkvd eval: bad --shot-seed (a non-negative integer)\n");
                return 2;
            }
            shot_seed = (uint64_t)v;
            break;
        case OPT_MAX_TOKENS:
            if (!rk_cli_parse_long(optarg, 2, 1 << 24, &v)) {
                fprintf(stderr, "rwkvd eval: bad --max-tokens\n");
                return 2;
            }
            lim.seq_len_max = (size_t)v;
            max_tokens_set = true;
            break;
        case OPT_JSON: json = true; break;
        case OPT_BASE: with_base = true; break;
        case OPT_COLLATERAL: coll_dir = optarg; break;
        case OPT_OUT: outp = optarg; break;
        case OPT_QUIET: quiet = true; break;
        case 'h': usage(stdout); return 0;
        default: return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "rwkvd eval: unexpected argument '%s' (see --help)\n", argv[optind]);
        return 2;
    }
    if (!model) {
        fprintf(stderr, "rwkvd eval: --model is required; see --help\n");
        return 2;
    }
    if (data) {
        if (n_tasks || coll_dir || n_states > 1 || with_base || outp) {
            fprintf(stderr, "rwkvd eval: --data takes one --state and --json only; tasks use "
                            "--task\n");
            return 2;
        }
        return eval_data(model, data, n_states ? state_paths[0] : NULL, vocab, threads, &lim,
                         json);
    }
    if (!n_tasks && !coll_dir) {
        fprintf(stderr, "rwkvd eval: give --task DIR (or --data FILE.jsonl); see --help\n");
        return 2;
    }
    if (json || max_tokens_set) {
        fprintf(stderr, "rwkvd eval: --json and --max-tokens belong to --data\n");
        return 2;
    }
    if (with_base && !n_states) {
        fprintf(stderr, "rwkvd eval: --base adds the base model to --state runs; without "
                        "--state the base model is evaluated anyway\n");
        return 2;
    }

    int status = 1, rc;
    struct rk_errbuf eb = {0};
    struct rk_model *m = NULL;
    struct rk_tokenizer *tok = NULL;
    struct rk_ctx *ctx = NULL;
    struct rk_evtask *tasks[EVAL_TASKS_MAX] = {0}, *coll = NULL;
    struct rk_evrun_state sts[EVAL_STATES_MAX + 1];
    float *states[EVAL_STATES_MAX] = {0};
    size_t n_runs = 0;
    json_t *results = NULL, *doc = NULL;
    char *text = NULL;

    for (size_t i = 0; i < n_tasks; i++)
        if ((rc = rk_evtask_load_dir(task_dirs[i], split, shots, &tasks[i], &eb)) != RK_OK) {
            fprintf(stderr, "rwkvd eval: %s\n", eb.msg[0] ? eb.msg : rk_strerror(rc));
            goto out;
        }
    if (coll_dir && (rc = rk_evtask_load_dir(coll_dir, "test", 0, &coll, &eb)) != RK_OK) {
        fprintf(stderr, "rwkvd eval: %s\n", eb.msg[0] ? eb.msg : rk_strerror(rc));
        goto out;
    }
    if (coll && coll->kind != RK_EVAL_GENERATE) {
        fprintf(stderr, "rwkvd eval: %s: a collateral task must be of kind generate\n",
                coll_dir);
        goto out;
    }
    if (!(m = rk_cli_load_model(model, RK_DTYPE_AUTO)) || !(tok = rk_cli_load_tokenizer(vocab, m)))
        goto out;
    if (!n_states || with_base)
        sts[n_runs++] = (struct rk_evrun_state){.label = "base", .state = NULL};
    for (size_t i = 0; i < n_states; i++) {
        if (!(states[i] = malloc(sizeof(float) * rk_state_len(m)))) {
            fprintf(stderr, "rwkvd eval: out of memory\n");
            goto out;
        }
        if (rk_cli_load_state(state_paths[i], m, states[i], NULL) != RK_OK)
            goto out;
        sts[n_runs++] = (struct rk_evrun_state){.label = state_paths[i], .state = states[i]};
    }
    struct rk_ctx_params cp = {.n_threads = (int)threads};
    if (rk_ctx_create(m, &cp, &ctx) != RK_OK) {
        fprintf(stderr, "rwkvd eval: cannot create a context\n");
        goto out;
    }
    struct rk_evrun_params ep = {
        .tasks = tasks, .n_tasks = n_tasks, .collateral = coll, .states = sts,
        .n_states = n_runs, .shots = shots, .shot_seed = shot_seed, .limit = limit,
    };
    struct cli_prog pg = {.t0 = rk_cli_now(), .tty = isatty(2), .quiet = quiet};
    rc = rk_evrun(ctx, tok, &ep, NULL, NULL, cli_progress, &pg, &results, &eb);
    if (rc != RK_OK) {
        if (pg.tty && !quiet)
            fputc('\n', stderr);
        fprintf(stderr, "rwkvd eval: %s\n", eb.msg[0] ? eb.msg : rk_strerror(rc));
        goto out;
    }
    doc = rk_evrun_doc("path", model, rk_model_fingerprint(m), split, shots, results);
    results = NULL;
    if (!doc || !(text = json_dumps(doc, JSON_INDENT(2) | JSON_REAL_PRECISION(9)))) {
        fprintf(stderr, "rwkvd eval: out of memory\n");
        goto out;
    }
    if (outp) {
        size_t tl = strlen(text);
        text[tl] = '\n';
        rc = rk_file_write_atomic(outp, text, tl + 1, &eb);
        text[tl] = '\0';
        if (rc != RK_OK) {
            fprintf(stderr, "rwkvd eval: %s\n", eb.msg[0] ? eb.msg : rk_strerror(rc));
            goto out;
        }
    } else {
        printf("%s\n", text);
        fflush(stdout);
    }
    status = 0;
out:
    free(text);
    json_decref(doc);
    json_decref(results);
    for (size_t i = 0; i < n_tasks; i++)
        rk_evtask_free(tasks[i]);
    rk_evtask_free(coll);
    for (size_t i = 0; i < n_states; i++)
        free(states[i]);
    rk_ctx_free(ctx);
    rk_tok_free(tok);
    rk_model_free(m);
    return status;
}

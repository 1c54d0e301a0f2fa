/*
 * cli_tune.c - `rwkvd tune` (a state-tuning job run offline, through the same
 * rk_tune_run the job worker uses). `rwkvd eval` is cli_eval.c.
 *
 * The hyperparameter options come from the table of rk_hparams()
 * (adapters/hparams.c); checkpoint files (--checkpoint, --resume) are
 * RKTCKPT1 files of adapters/checkpoint.c. They resume only with the same
 * model, dataset and options.
 */
#include "cli_common.h"
#include "cmd.h"
#include "dataset_jsonl.h"
#include "datadir_lock.h"
#include "rk_adapters.h"
#include "rl_data.h"
#include "rk_fileio.h"

#include <getopt.h>
#include <limits.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* --- the state store of a running server is not ours to write ------------ */

/* True (error printed) when `out` lies inside the data dir of a running
 * `rwkvd serve` (a directory, or an ancestor, whose rwkvd.lock is held): the
 * server owns that store, and a file written behind its back would be served
 * stale or overwritten. Upload the result with PUT /states/{id} instead. */
static bool out_in_served_store(const char *out)
{
    char dir[PATH_MAX];
    if (snprintf(dir, sizeof dir, "%s", out) >= (int)sizeof dir)
        return false;
    char *slash = strrchr(dir, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == dir)
        dir[1] = 0;
    else
        *slash = 0;
    char real[PATH_MAX];
    if (!realpath(dir, real))
        return false; /* a directory that does not exist holds no store */
    for (;;) {
        long pid = rk_datadir_lock_holder(real);
        if (pid > 0) {
            fprintf(stderr, "rwkvd tune: --out %s is inside the data dir %s of the running "
                            "rwkvd (pid %ld); write the state elsewhere and upload it with "
                            "PUT /states/{id}, or stop that server first\n", out, real, pid);
            return true;
        }
        char *p = strrchr(real, '/');
        if (!p || p == real)
            return false;
        *p = 0;
    }
}

/* --- progress bar and checkpoints ----------------------------------------- */

struct tune_ui {
    bool quiet;
    FILE *log; /* --log: one JSON line per step and per validation */
    bool tty; /* stderr is a terminal: one redrawn progress line, else plain lines */
    const struct rk_model *m;
    const char *ckpt_path;
};

static void fmt_eta(double s, char *buf, size_t cap)
{
    if (!(s >= 0) || s > 1e7)
        snprintf(buf, cap, "?");
    else if (s >= 3600)
        snprintf(buf, cap, "%dh%02dm", (int)(s / 3600), (int)fmod(s / 60, 60));
    else
        snprintf(buf, cap, "%dm%02ds", (int)(s / 60), (int)fmod(s, 60));
}

/* " kl X" when the step has a KL term, else "". */
static const char *kl_text(const struct rk_tune_progress *p, char *buf, size_t cap)
{
    if (isnan(p->kl))
        return "";
    if (!isnan(p->kl))
        snprintf(buf, cap, " kl %.4f", p->kl);
    else
        snprintf(buf, cap, " score %.4f", p->score);
    return buf;
}

static void on_progress(const struct rk_tune_progress *p, void *user)
{
    struct tune_ui *ui = user;
    char klb[32];
    if (ui->log) {
        if (isnan(p->val_loss)) {
            char sc[40] = ""; /* rl only: the step's mean sample score */
            if (!isnan(p->score))
                snprintf(sc, sizeof sc, ", \"score\": %.6g", p->score);
            fprintf(ui->log, "{\"step\": %ld, \"loss\": %.9g, \"grad_norm\": %.6g, "
                             "\"lr\": %.6g%s, \"elapsed_s\": %.6f}\n",
                    p->step, p->loss, p->grad_norm, p->lr, sc, p->elapsed_s);
        } else {
            fprintf(ui->log, "{\"step\": %ld, \"val_loss\": %.9g, \"elapsed_s\": %.6f}\n",
                    p->step, p->val_loss, p->elapsed_s);
        }
        fflush(ui->log);
    }
    if (ui->quiet)
        return;
    if (!isnan(p->val_loss)) {
        fprintf(stderr, "%sstep %ld/%ld: validation loss %.4f (ppl %.2f)\n",
                ui->tty ? "\r\033[K" : "", p->step, p->steps, p->val_loss, exp(p->val_loss));
        return;
    }
    if (!ui->tty) {
        // A log file or pipe: no cursor control, one line every 5% and at the end.
        long every = p->steps >= 20 ? p->steps / 20 : 1;
        if (p->step % every == 0 || p->step == p->steps)
            fprintf(stderr, "rwkvd tune: step %ld/%ld loss %.4f%s |g| %.3g lr %.3g %.0f tok/s\n",
                    p->step, p->steps, p->loss, kl_text(p, klb, sizeof klb), p->grad_norm, p->lr,
                    p->tokens_per_s);
        return;
    }
    enum { W = 24 };
    int fill = (int)((double)W * (double)p->step / (double)p->steps);
    char bar[W + 1];
    for (int i = 0; i < W; i++)
        bar[i] = i < fill ? '=' : ' ';
    bar[W] = 0;
    char eta[32];
    double per = p->step ? p->elapsed_s / (double)p->step : 0;
    fmt_eta(per * (double)(p->steps - p->step), eta, sizeof eta);
    fprintf(stderr, "\r\033[K[%s] %ld/%ld loss %.4f%s |g| %.3g lr %.3g %.0f tok/s ETA %s", bar,
            p->step, p->steps, p->loss, kl_text(p, klb, sizeof klb), p->grad_norm, p->lr,
            p->tokens_per_s, eta);
    fflush(stderr);
}

static int on_checkpoint(const struct rk_tune_checkpoint *ck, void *user)
{
    struct tune_ui *ui = user;
    if (!ui->ckpt_path)
        return RK_OK;
    struct rk_errbuf eb = {0};
    int rc = rk_tune_ckpt_save(ui->ckpt_path, ck, &eb);
    if (rc != RK_OK)
        fprintf(stderr, "\nrwkvd tune: checkpoint: %s\n", eb.msg[0] ? eb.msg : rk_strerror(rc));
    return rc;
}

/* --- rwkvd tune ----------------------------------------------------------- */

/* dLoss/dstate0 at `init` over every sequence of `ds` (token-weighted mean),
 * written like a state file whose tensors hold the gradient. */
static int dump_gradient(const struct rk_model *m, const struct rk_dataset *ds, const float *init,
                         int threads, int bptt, const char *path)
{
    size_t slen = rk_state_len(m);
    struct rk_ctx *ctx = NULL;
    struct rk_ctx_params cp = {.n_threads = threads};
    float *g = malloc(sizeof(float) * slen), *acc = calloc(slen, sizeof(float));
    double *accd = calloc(slen, sizeof(double));
    uint32_t *tgt = NULL;
    uint8_t *msk = NULL;
    int rc = RK_ENOMEM;
    if (!g || !acc || !accd || (rc = rk_ctx_create(m, &cp, &ctx)) != RK_OK)
        goto out;
    double lsum = 0;
    size_t ksum = 0;
    struct rk_backward_params bp = {.checkpoint_every = bptt};
    for (size_t i = 0; i < rk_dataset_len(ds); i++) {
        const uint32_t *tok;
        const uint8_t *mask;
        size_t n, k = 0;
        rk_dataset_get(ds, i, &tok, &mask, &n);
        free(tgt), free(msk);
        tgt = malloc(sizeof(uint32_t) * n);
        msk = malloc(n);
        if (!tgt || !msk) {
            rc = RK_ENOMEM;
            goto out;
        }
        for (size_t t = 0; t + 1 < n; t++) {
            tgt[t] = tok[t + 1];
            msk[t] = mask[t + 1];
            k += mask[t + 1] != 0;
        }
        double l;
        if ((rc = rk_backward_seq(ctx, &bp, tok, tgt, msk, n - 1, init, &l, g, NULL, NULL)) !=
            RK_OK)
            goto out;
        for (size_t j = 0; j < slen; j++)
            accd[j] += (double)k * g[j];
        lsum += l * (double)k;
        ksum += k;
    }
    for (size_t j = 0; j < slen; j++)
        acc[j] = (float)(accd[j] / (double)ksum);
    double loss = lsum / (double)ksum;
    struct rk_state_meta meta;
    rk_state_meta_init(&meta, m);
    snprintf(meta.method, sizeof meta.method, "gradient");
    snprintf(meta.note, sizeof meta.note, "loss=%.17g targets=%zu sequences=%zu", loss, ksum,
             rk_dataset_len(ds));
    struct rk_errbuf eb = {0};
    rc = rk_state_file_save(path, m, acc, &meta, &eb);
    if (rc != RK_OK)
        fprintf(stderr, "rwkvd tune: %s\n", eb.msg[0] ? eb.msg : rk_strerror(rc));
    else
        printf("{\"loss\": %.17g, \"targets\": %zu, \"gradient_norm\": %.9g, \"file\": \"%s\"}\n",
               loss, ksum, rk_grad_norm(acc, slen), path);
out:
    if (rc == RK_ENOMEM)
        fprintf(stderr, "rwkvd tune: out of memory\n");
    rk_ctx_free(ctx);
    free(g), free(acc), free(accd), free(tgt), free(msk);
    return rc;
}

static void tune_usage(void)
{
    struct rk_tune_params d;
    rk_tune_params_default(&d);
    char methods[256];
    rk_tune_method_names(methods, sizeof methods);
    printf("usage: rwkvd tune --model FILE --data FILE.jsonl --out STATE.safetensors [options]\n\n"
           "Tune the initial state of a frozen model on a JSONL dataset ({\"text\"},\n"
           "{\"prompt\",\"completion\"} or {\"messages\"} lines; see docs/TUNING.md).\n"
           "With --method rl the lines are prompts with a checker, {\"prompt\",\"answer\"}\n"
           "or {\"prompt\",\"regex\"}: samples are scored by it (docs/TUNING.md).\n\n"
           "  --vocab FILE          World vocabulary (byte models need none)\n"
           "  --init STATE          start from this state file (default: zero state); a\n"
           "                        kernel state starts a kernel/dbp run from its P too\n"
           "  --method NAME         tuning method: %s (default %s)\n"
           "  --max-tokens N        longest JSONL example in tokens (default 8192)\n"
           "  --checkpoint FILE     save a resumable checkpoint here\n"
           "  --resume FILE         continue from a checkpoint (same options and data)\n"
           "  --kl-data FILE        generic text of --kl-weight (JSONL, usually {\"text\"}\n"
           "                        lines; default: the bundled set, docs/TUNING.md)\n"
           "  --dump-gradient FILE  write the loss and dLoss/dstate at the starting state\n"
           "                        (safetensors, adapter tensor names) and exit\n"
           "  --log FILE            one JSON line per step (step, loss, grad_norm, lr,\n"
           "                        score with method rl, elapsed_s) and per\n"
           "                        validation (step, val_loss,\n"
           "                        elapsed_s)\n"
           "  --quiet               no progress output (on a terminal a redrawn progress\n"
           "                        bar; otherwise, e.g. into a log, a plain line every 5%%)\n\n"
           "Hyperparameters (docs/TUNING.md):\n",
           methods, rk_tune_method_default()->name);
    size_t n;
    const struct rk_hparam *hp = rk_hparams(&n);
    for (size_t i = 0; i < n; i++) {
        const struct rk_hparam *h = &hp[i];
        if (!(h->where & RK_HP_CLI))
            continue;
        char opt[64], range[64], def[64] = "";
        snprintf(opt, sizeof opt, "--%s%s", h->cli, h->type == RK_HP_BOOL ? "" : " X");
        rk_hparam_range_str(h, 0, range, sizeof range);
        double x = rk_hparam_get(h, &d);
        if (h->type == RK_HP_ENUM)
            snprintf(def, sizeof def, "%s", h->choices[(int)x]);
        else if (h->type != RK_HP_BOOL)
            snprintf(def, sizeof def, "%.10g", x);
        printf("  %-21s %s\n  %-21s %s%s%s%s\n", opt, h->help, "", h->type == RK_HP_BOOL ? "" : range,
               def[0] ? ", default " : "", def, h->type == RK_HP_BOOL ? "(a switch)" : "");
    }
}

enum {
    OPT_MODEL = 256, OPT_DATA, OPT_OUT, OPT_VOCAB, OPT_INIT, OPT_CKPT, OPT_RESUME, OPT_DUMP,
    OPT_QUIET, OPT_METHOD, OPT_MAX_TOKENS, OPT_HELP, OPT_JSON, OPT_KL_DATA, OPT_LOG,
    OPT_HPARAM = 512, /* + index in rk_hparams() */
};

/* The fixed options, then one per CLI hyperparameter (*out malloc'd). */
static struct option *tune_options(void)
{
    static const struct option fixed[] = {
        {"model", required_argument, 0, OPT_MODEL},
        {"data", required_argument, 0, OPT_DATA},
        {"out", required_argument, 0, OPT_OUT},
        {"vocab", required_argument, 0, OPT_VOCAB},
        {"init", required_argument, 0, OPT_INIT},
        {"max-tokens", required_argument, 0, OPT_MAX_TOKENS},
        {"checkpoint", required_argument, 0, OPT_CKPT},
        {"resume", required_argument, 0, OPT_RESUME},
        {"dump-gradient", required_argument, 0, OPT_DUMP},
        {"kl-data", required_argument, 0, OPT_KL_DATA},
        {"method", required_argument, 0, OPT_METHOD},
        {"quiet", no_argument, 0, OPT_QUIET},
        {"log", required_argument, 0, OPT_LOG},
        {"help", no_argument, 0, OPT_HELP},
    };
    size_t nf = sizeof fixed / sizeof fixed[0], n, k = nf;
    const struct rk_hparam *hp = rk_hparams(&n);
    struct option *o = calloc(nf + n + 1, sizeof *o);
    if (!o)
        return NULL;
    memcpy(o, fixed, sizeof fixed);
    for (size_t i = 0; i < n; i++)
        if (hp[i].where & RK_HP_CLI)
            o[k++] = (struct option){hp[i].cli,
                                     hp[i].type == RK_HP_BOOL ? no_argument : required_argument,
                                     0, OPT_HPARAM + (int)i};
    return o;
}

/* Method rl: prompts with local checkers (an rl JSONL file), rk_rl_run,
 * the state saved as for the other methods. Returns the exit status. */
static int tune_rl(const struct rk_model *m, const struct rk_tokenizer *tok,
                   struct rk_tune_params *tp, const struct rk_jsonl_limits *lim,
                   const char *data, const char *out, const char *init_path,
                   const char *resume, const char *dump, struct tune_ui *ui)
{
    struct rk_errbuf eb = {0};
    struct rk_rl_data *d = NULL;
    struct rk_tune_checkpoint ck = {0};
    float *init = NULL, *st = NULL, *ckmem = NULL;
    void *buf = NULL;
    size_t len = 0;
    int rc, status = 1;
    if (dump || tp->kl_weight > 0) {
        fprintf(stderr, "rwkvd tune: the rl method takes neither --dump-gradient nor "
                        "--kl-weight (its KL term is --rl-kl)\n");
        return 2;
    }
    if ((rc = rk_file_read_all(data, lim->bytes_max, &buf, &len, &eb)) != RK_OK ||
        (rc = rk_rl_data_parse(buf, len, tok, lim, tp->rl_max_tokens, &d, &eb)) != RK_OK) {
        fprintf(stderr, "rwkvd tune: %s: %s\n", data, eb.msg[0] ? eb.msg : rk_strerror(rc));
        goto out;
    }
    if (d->n_checked < d->n) {
        fprintf(stderr, "rwkvd tune: %s: %zu of %zu prompts have neither \"answer\" nor "
                        "\"regex\"; `rwkvd tune` scores with those local checkers only (a "
                        "judge endpoint scores server jobs)\n", data, d->n - d->n_checked, d->n);
        status = 2;
        goto out;
    }
    size_t slen = rk_state_len(m), plen = rk_tune_params_len(m, tp);
    if (init_path && (!(init = malloc(sizeof(float) * slen)) ||
                      rk_cli_load_state(init_path, m, init, NULL) != RK_OK))
        goto out;
    if (resume) {
        if ((rc = rk_tune_ckpt_load(resume, plen, &ck, &ckmem, &eb)) != RK_OK) {
            fprintf(stderr, "rwkvd tune: %s\n", eb.msg[0] ? eb.msg : rk_strerror(rc));
            goto out;
        }
        tp->resume = &ck;
    }
    ui->m = m;
    ui->tty = isatty(STDERR_FILENO);
    tp->checkpoint_cb = on_checkpoint;
    if (!ui->quiet)
        fprintf(stderr, "rwkvd tune: %zu prompts, method rl, %ld steps of %d prompts x %d "
                        "samples, lr %g -> %g\n",
                d->n, tp->steps, tp->batch, tp->rl_k, tp->lr, tp->lr_final);
    if (!(st = malloc(sizeof(float) * plen)))
        goto out;
    struct rk_rl_prompts pr;
    rk_rl_data_prompts(d, &pr);
    struct rk_rl_io io = {.score = rk_rl_check_score, .score_user = d, .user = ui, .stop = d->stop,
                          .n_stop = d->n_stop, .stop_at_zero = !rk_tok_is_bytes(tok)};
    struct rk_tune_result res;
    rc = rk_rl_run(m, tp, &pr, init, &io, on_progress, st, &res);
    if (!ui->quiet && ui->tty)
        fprintf(stderr, "\n");
    if (rc != RK_OK) {
        fprintf(stderr, "rwkvd tune: %s\n", rk_strerror(rc));
        goto out;
    }
    struct rk_state_meta meta;
    rk_state_meta_init(&meta, m);
    snprintf(meta.note, sizeof meta.note, "steps=%ld loss=%.6g score=%.6g->%.6g lr=%g batch=%d "
             "rl_k=%d", res.steps_done, res.loss_last, res.score_first, res.score_last, tp->lr,
             tp->batch, tp->rl_k);
    meta.has_shift = tp->tune_shift;
    float *adapter = NULL;
    if ((rc = rk_tune_export(m, tp, st, &adapter, &meta)) == RK_OK)
        rc = rk_state_file_save(out, m, adapter, &meta, &eb);
    free(adapter);
    if (rc != RK_OK) {
        fprintf(stderr, "rwkvd tune: %s: %s\n", out, eb.msg[0] ? eb.msg : rk_strerror(rc));
        goto out;
    }
    printf("{\"steps\": %ld, \"loss\": %.6g, \"score_first\": %.6g, \"score_last\": %.6g, "
           "\"tokens_per_s\": %.1f, \"tokens\": %zu, \"out\": \"%s\"}\n",
           res.steps_done, res.loss_last, res.score_first, res.score_last, res.tokens_per_s,
           res.tokens, out);
    status = 0;
out:
    free(buf), free(init), free(st), free(ckmem);
    rk_rl_data_free(d);
    return status;
}

int rk_cmd_tune(int argc, char **argv)
{
    const char *model = NULL, *data = NULL, *out = NULL, *vocab = NULL, *init_path = NULL;
    const char *resume = NULL, *dump = NULL, *kl_data = NULL;
    struct rk_tune_params tp;
    rk_tune_params_default(&tp);
    struct rk_jsonl_limits lim;
    rk_jsonl_limits_default(&lim);
    struct tune_ui ui = {0};
    size_t n_hp;
    const struct rk_hparam *hp = rk_hparams(&n_hp);
    struct option *opts = tune_options();
    if (!opts) {
        fprintf(stderr, "rwkvd tune: out of memory\n");
        return 1;
    }
    long v;
    double x;
    int c, status = 1;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        bool ok = true;
        switch (c) {
        case OPT_MODEL: model = optarg; break;
        case OPT_DATA: data = optarg; break;
        case OPT_OUT: out = optarg; break;
        case OPT_VOCAB: vocab = optarg; break;
        case OPT_INIT: init_path = optarg; break;
        case OPT_MAX_TOKENS: ok = rk_cli_parse_long(optarg, 2, 1 << 24, &v) && ((lim.seq_len_max = (size_t)v), 1); break;
        case OPT_CKPT: ui.ckpt_path = optarg; break;
        case OPT_RESUME: resume = optarg; break;
        case OPT_DUMP: dump = optarg; break;
        case OPT_KL_DATA: kl_data = optarg; break;
        case OPT_METHOD:
            if (!(tp.method = rk_tune_method_find(optarg))) {
                char names[256];
                rk_tune_method_names(names, sizeof names);
                fprintf(stderr, "rwkvd tune: unknown method '%s' (known: %s)\n", optarg, names);
                free(opts);
                return 2;
            }
            if (tp.method == &rk_method_rl)
                break;
            if (tp.method == &rk_method_observer) {
                fprintf(stderr, "rwkvd tune: the observer method asks a teacher endpoint and "
                        "runs as a server job (POST /tune on a server started with "
                        "--teacher-url); `rwkvd tune` has no teacher\n");
                free(opts);
                return 2;
            }
            break;
        case OPT_QUIET: ui.quiet = true; break;
        case OPT_LOG:
            if (ui.log)
                fclose(ui.log);
            if (!(ui.log = fopen(optarg, "w"))) {
                fprintf(stderr, "rwkvd tune: --log %s: %s\n", optarg, strerror(errno));
                free(opts);
                return 2;
            }
            break;
        case 'h':
        case OPT_HELP: tune_usage(); free(opts); return 0;
        default:
            if (c < OPT_HPARAM || c >= OPT_HPARAM + (int)n_hp) {
                free(opts);
                return 2;
            }
            x = 1; /* a switch */
            const struct rk_hparam *h = &hp[c - OPT_HPARAM];
            if (h->type != RK_HP_BOOL && rk_hparam_parse(h, optarg, &x) != RK_OK) {
                char range[96];
                rk_hparam_range_str(h, 0, range, sizeof range);
                fprintf(stderr, "rwkvd tune: bad value '%s' for --%s (%s)\n", optarg, h->cli,
                        range);
                free(opts);
                return 2;
            }
            rk_hparam_set(h, &tp, x);
            break;
        }
        if (!ok) {
            fprintf(stderr, "rwkvd tune: bad value '%s' for %s\n", optarg ? optarg : "",
                    argv[optind - 1]);
            free(opts);
            return 2;
        }
    }
    free(opts);
    if (!model || !data || (!out && !dump)) {
        fprintf(stderr, "rwkvd tune: --model, --data and --out (or --dump-gradient) are "
                        "required; see --help\n");
        return 2;
    }
    if (out && out_in_served_store(out))
        return 1;
    struct rk_model *m = NULL;
    struct rk_tokenizer *tok = NULL;
    struct rk_dataset *ds = NULL, *kds = NULL;
    float *init = NULL, *st = NULL, *ckmem = NULL;
    struct rk_cli_ro iro = {0};
    struct rk_tune_checkpoint ck = {0};
    struct rk_errbuf eb = {0};
    int rc;
    if (!(m = rk_cli_load_model(model, RK_DTYPE_AUTO)) || !(tok = rk_cli_load_tokenizer(vocab, m)))
        goto out;
    size_t slen = rk_state_len(m);
    if (tp.method == &rk_method_rl) {
        status = tune_rl(m, tok, &tp, &lim, data, out, init_path, resume, dump, &ui);
        goto out;
    }
    if (rk_dataset_create(&ds) != RK_OK)
        goto out;
    if ((rc = rk_jsonl_load(data, tok, &lim, ds, &eb)) != RK_OK) {
        fprintf(stderr, "rwkvd tune: %s: %s\n", data, eb.msg[0] ? eb.msg : rk_strerror(rc));
        goto out;
    }
    if (rk_dataset_len(ds) == 0) {
        fprintf(stderr, "rwkvd tune: %s has no training sequences\n", data);
        goto out;
    }
    if (kl_data && !(tp.kl_weight > 0)) {
        fprintf(stderr, "rwkvd tune: --kl-data needs --kl-weight above 0\n");
        status = 2;
        goto out;
    }
    if (tp.kl_weight > 0) {
        if (kl_data) {
            if ((rc = rk_dataset_create(&kds)) != RK_OK ||
                (rc = rk_jsonl_load(kl_data, tok, &lim, kds, &eb)) != RK_OK) {
                fprintf(stderr, "rwkvd tune: %s: %s\n", kl_data,
                        eb.msg[0] ? eb.msg : rk_strerror(rc));
                goto out;
            }
            if (rk_dataset_len(kds) == 0) {
                fprintf(stderr, "rwkvd tune: %s has no sequences\n", kl_data);
                goto out;
            }
        } else if ((rc = rk_generic_dataset(tok, &kds)) != RK_OK) {
            fprintf(stderr, "rwkvd tune: the bundled generic text: %s\n", rk_strerror(rc));
            goto out;
        }
        tp.kl_data = kds;
    }
    if (init_path) {
        init = malloc(sizeof(float) * slen);
        if (!init) {
            fprintf(stderr, "rwkvd tune: out of memory\n");
            goto out;
        }
        if (rk_cli_load_state_ro(init_path, m, init, &iro) != RK_OK)
            goto out;
        // A kernel state as the start of a kernel or dbp run: its P,
        // features and phases too (docs/TUNING.md).
        bool kmeth = tp.method == &rk_method_kernel || tp.method == &rk_method_dbp;
        if (kmeth && iro.on) {
            if (iro.view.M != tp.kernel_m || iro.view.fade != tp.kernel_fade) {
                fprintf(stderr, "rwkvd tune: %s is a kernel state with --kernel-m %d and "
                        "--kernel-fade %s; give the same (or start from a plain state)\n",
                        init_path, iro.view.M, iro.view.fade ? "none" : "mean");
                goto out;
            }
            tp.init_kernel = iro.adapter + slen;
        }
    }
    if (dump) {
        status = dump_gradient(m, ds, init, tp.n_threads, tp.bptt_checkpoint, dump) == RK_OK ? 0
                                                                                              : 1;
        goto out;
    }
    if (resume) {
        if ((rc = rk_tune_ckpt_load(resume, rk_tune_params_len(m, &tp), &ck, &ckmem, &eb)) !=
            RK_OK) {
            fprintf(stderr, "rwkvd tune: %s\n", eb.msg[0] ? eb.msg : rk_strerror(rc));
            goto out;
        }
        tp.resume = &ck;
    }
    ui.m = m;
    ui.tty = isatty(STDERR_FILENO);
    tp.checkpoint_cb = on_checkpoint;
    if (!ui.quiet)
        fprintf(stderr,
                "rwkvd tune: %zu sequences (%zu tokens, %zu scored), method %s, %ld steps of "
                "%d, lr %g -> %g\n",
                rk_dataset_len(ds), rk_dataset_n_tokens(ds), rk_dataset_n_targets(ds),
                rk_tune_params_method(&tp)->name, tp.steps, tp.batch, tp.lr, tp.lr_final);
    st = malloc(sizeof(float) * rk_tune_params_len(m, &tp));
    if (!st)
        goto out;
    struct rk_tune_result res;
    rc = rk_tune_run(m, &tp, ds, init, NULL, on_progress, &ui, st, &res);
    if (!ui.quiet && ui.tty)
        fprintf(stderr, "\n");
    if (rc != RK_OK) {
        if (rc == RK_ENUMERIC)
            fprintf(stderr, "rwkvd tune: NaN or Inf in the loss or gradient at step %ld\n",
                    res.steps_done + 1);
        else
            fprintf(stderr, "rwkvd tune: %s\n", rk_strerror(rc));
        goto out;
    }
    struct rk_state_meta meta;
    rk_state_meta_init(&meta, m);
    snprintf(meta.note, sizeof meta.note, "steps=%ld loss=%.6g val_loss=%.6g lr=%g batch=%d",
             res.steps_done, res.loss_last, res.val_loss_best, tp.lr, tp.batch);
    meta.has_shift = tp.tune_shift;
    float *adapter = NULL;
    if ((rc = rk_tune_export(m, &tp, st, &adapter, &meta)) != RK_OK) {
        fprintf(stderr, "rwkvd tune: %s\n", rk_strerror(rc));
        goto out;
    }
    rc = rk_state_file_save(out, m, adapter, &meta, &eb);
    free(adapter);
    if (rc != RK_OK) {
        fprintf(stderr, "rwkvd tune: %s: %s\n", out, eb.msg[0] ? eb.msg : rk_strerror(rc));
        goto out;
    }
    /* JSON has no NaN: a run without a validation split reports null */
    char vinit[32] = "null", vbest[32] = "null";
    if (isfinite(res.val_loss_init))
        snprintf(vinit, sizeof vinit, "%.6g", res.val_loss_init);
    if (isfinite(res.val_loss_best))
        snprintf(vbest, sizeof vbest, "%.6g", res.val_loss_best);
    char klv[32] = "null";
    if (isfinite(res.kl_last))
        snprintf(klv, sizeof klv, "%.6g", res.kl_last);
    printf("{\"steps\": %ld, \"loss\": %.6g, \"val_loss_init\": %s, \"val_loss_best\": %s, "
           "\"best_step\": %ld, \"stopped_early\": %s, \"tokens_per_s\": %.1f, \"tokens\": %zu, "
           "\"kl\": %s, \"out\": \"%s\"}\n",
           res.steps_done, res.loss_last, vinit, vbest, res.best_step,
           res.stopped_early ? "true" : "false", res.tokens_per_s, res.tokens, klv, out);
    if (isfinite(res.val_loss_init) && res.best_step == 0)
        fprintf(stderr, "rwkvd tune: warning: the validation loss never went below its starting "
                        "value, so the saved state is the starting state; try a lower --lr\n");
    status = 0;
out:
    if (ui.log)
        fclose(ui.log);
    rk_cli_ro_free(&iro);
    free(init), free(st), free(ckmem);
    rk_dataset_free(ds);
    rk_dataset_free(kds);
    rk_tok_free(tok);
    rk_model_free(m);
    return status;
}

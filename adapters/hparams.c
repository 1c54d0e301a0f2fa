/*
 * hparams.c - the hyperparameters of tuning, described once: name, type,
 * range, where each is accepted, the field it fills and one line of help.
 * The server's HTTP parsers, `rwkvd tune`'s options, the jobs journal and
 * the docs test all read this table; the defaults are those of
 * rk_tune_params_default (jobs may override checkpoint_every).
 */
#include "rk_adapters.h"

#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

_Static_assert(sizeof(long) == 8 && sizeof(size_t) == 8 && sizeof(uint64_t) == 8,
               "integer hyperparameters are stored as 8-byte or int fields");
_Static_assert(sizeof(enum rk_lr_decay) == sizeof(int), "enums are stored as int");

static const char *const decay_names[] = {"cosine", "linear", "constant", NULL};
static const char *const fade_names[] = {"mean", "none", NULL}; /* enum rk_kernel_fade */

#define F(field) offsetof(struct rk_tune_params, field), sizeof(((struct rk_tune_params *)0)->field)
#define JC (RK_HP_JOB | RK_HP_CLI)
#define STEPS_MAX 1e8

static const struct rk_hparam table[] = {
    {"steps", "steps", NULL, RK_HP_INT, 1, STEPS_MAX, false, RK_HP_CAP_STEPS, JC, NULL, F(steps),
     "optimizer steps"},
    {"epochs", "epochs", "n_epochs", RK_HP_NUM, 0, 1e6, true, RK_HP_CAP_NONE,
     RK_HP_JOB | RK_HP_HOST | RK_HP_OPENAI, NULL, 0, 0,
     "passes over the training split, instead of steps (steps = ceil(epochs * train / batch))"},
    {"lr", "lr", NULL, RK_HP_NUM, 0, 1e3, true, RK_HP_CAP_NONE, JC, NULL, F(lr),
     "peak learning rate (giving it alone sets lr_final = lr / 100)"},
    {"lr_final", "lr-final", NULL, RK_HP_NUM, 0, 1e3, false, RK_HP_CAP_NONE, JC, NULL, F(lr_final),
     "learning rate at the last step"},
    {"warmup", "warmup", NULL, RK_HP_INT, 0, STEPS_MAX, false, RK_HP_CAP_STEPS, JC, NULL, F(warmup),
     "steps of linear warmup"},
    {"decay", "decay", NULL, RK_HP_ENUM, 0, 2, false, RK_HP_CAP_NONE, RK_HP_CLI, decay_names,
     F(decay), "shape of the learning-rate decay after warmup"},
    {"batch", "batch", "batch_size", RK_HP_INT, 1, 65536, false, RK_HP_CAP_BATCH, JC | RK_HP_OPENAI,
     NULL, F(batch), "sequences per step (gradients are token-weighted means)"},
    {"beta1", "beta1", NULL, RK_HP_NUM, 0, 0.999999, false, RK_HP_CAP_NONE, RK_HP_CLI, NULL,
     F(beta1), "Adam first-moment decay"},
    {"beta2", "beta2", NULL, RK_HP_NUM, 0, 0.999999, false, RK_HP_CAP_NONE, RK_HP_CLI, NULL,
     F(beta2), "Adam second-moment decay"},
    {"eps", "eps", NULL, RK_HP_NUM, 1e-30, 1, false, RK_HP_CAP_NONE, RK_HP_CLI, NULL, F(eps),
     "Adam epsilon"},
    {"weight_decay", "weight-decay", NULL, RK_HP_NUM, 0, 10, false, RK_HP_CAP_NONE, RK_HP_CLI, NULL,
     F(weight_decay), "decoupled weight decay (AdamW; 0 = Adam)"},
    {"clip_norm", "clip", NULL, RK_HP_NUM, 0, 1e12, false, RK_HP_CAP_NONE, RK_HP_CLI, NULL,
     F(clip_norm), "clip the gradient norm to this (0 = off)"},
    {"tune_shift", "tune-shift", NULL, RK_HP_BOOL, 0, 1, false, RK_HP_CAP_NONE, JC, NULL,
     F(tune_shift), "also tune both token-shift vectors"},
    {"seed", "seed", NULL, RK_HP_INT, 0, 9007199254740992.0, false, RK_HP_CAP_NONE, JC, NULL,
     F(seed), "seed of the shuffling and the validation split"},
    {"val_split", "val-split", NULL, RK_HP_NUM, 0, 0.9, false, RK_HP_CAP_NONE, JC, NULL,
     F(val_split), "fraction of the sequences held out for validation (0 = none)"},
    {"eval_every", "eval-every", NULL, RK_HP_INT, 0, STEPS_MAX, false, RK_HP_CAP_STEPS, JC, NULL,
     F(eval_every), "steps between validations (0 = never)"},
    {"patience", "patience", NULL, RK_HP_INT, 0, 1e6, false, RK_HP_CAP_NONE, JC, NULL, F(patience),
     "stop after this many validations without a new best (0 = never)"},
    {"seq_len_max", "seq-len-max", NULL, RK_HP_INT, 2, 16777216, false, RK_HP_CAP_NONE, RK_HP_CLI,
     NULL, F(seq_len_max), "cut longer sequences to this many tokens (default: no cut)"},
    {"bptt_checkpoint", "bptt-checkpoint", NULL, RK_HP_INT, 1, 4096, false, RK_HP_CAP_NONE,
     RK_HP_CLI, NULL, F(bptt_checkpoint), "WKV checkpoint interval of the backward pass"},
    {"threads", "threads", NULL, RK_HP_INT, 0, 1024, false, RK_HP_CAP_NONE, RK_HP_CLI, NULL,
     F(n_threads), "compute threads (0 = all CPUs)"},
    {"checkpoint_every", "checkpoint-every", NULL, RK_HP_INT, 0, STEPS_MAX, false, RK_HP_CAP_STEPS,
     JC, NULL, F(checkpoint_every), "steps between checkpoints (0 = at the end only)"},
    {"kl_weight", "kl-weight", NULL, RK_HP_NUM, 0, 1000, false, RK_HP_CAP_NONE, JC, NULL,
     F(kl_weight),
     "collateral protection: weight of KL(base || state) on generic text (0 = off)"},
    {"kl_topk", "kl-topk", NULL, RK_HP_INT, 1, 65536, false, RK_HP_CAP_NONE, JC, NULL, F(kl_topk),
     "base-model probabilities kept per generic-text position for the KL term"},
    {"kl_batch", "kl-batch", NULL, RK_HP_INT, 1, 64, false, RK_HP_CAP_NONE, JC, NULL, F(kl_batch),
     "generic-text sequences per step for the KL term"},
    {"lr_multiplier", "lr-multiplier", "learning_rate_multiplier", RK_HP_NUM, 0, 100, true,
     RK_HP_CAP_NONE, RK_HP_HOST | RK_HP_OPENAI, NULL, 0, 0,
     "OpenAI fine-tuning only: the native lr (1) times this"},
    {"kernel_m", "kernel-m", "kernel_m", RK_HP_INT, 1, RK_KERNEL_M_MAX, false, RK_HP_CAP_NONE,
     JC | RK_HP_OPENAI, NULL, F(kernel_m),
     "methods kernel and dbp: random features per head, M (the memory P is [N][M])"},
    {"kernel_sigma", "kernel-sigma", "kernel_sigma", RK_HP_NUM, 0, 100, true, RK_HP_CAP_NONE,
     JC | RK_HP_OPENAI, NULL, F(kernel_sigma),
     "methods kernel and dbp: width of the Gaussian kernel on the unit receptance"},
    {"kernel_seed", "kernel-seed", "kernel_seed", RK_HP_INT, 0, 9007199254740992.0, false,
     RK_HP_CAP_NONE, JC | RK_HP_OPENAI, NULL, F(kernel_seed),
     "methods kernel and dbp: seed of the random features (stored with the state)"},
    {"kernel_fade", "kernel-fade", NULL, RK_HP_ENUM, 0, 1, false, RK_HP_CAP_NONE, JC, fade_names, F(kernel_fade),
     "methods kernel and dbp: how the memory fades (mean: the head's mean decay; none)"},
    {"dbp_lr", "dbp-lr", "dbp_lr", RK_HP_NUM, 0, 1, false, RK_HP_CAP_NONE, JC | RK_HP_OPENAI,
     NULL, F(dbp_lr), "method dbp: step of the decorrelating matrix per optimizer step"},
    {"rl_k", "rl-k", "rl_k", RK_HP_INT, 2, RK_RL_K_MAX, false, RK_HP_CAP_NONE,
     JC | RK_HP_OPENAI, NULL, F(rl_k), "method rl: samples per prompt and step"},
    {"rl_temperature", "rl-temperature", "rl_temperature", RK_HP_NUM, 0, 10, true,
     RK_HP_CAP_NONE, JC | RK_HP_OPENAI, NULL, F(rl_temperature),
     "method rl: sampling temperature of the samples"},
    {"rl_max_tokens", "rl-max-tokens", "rl_max_tokens", RK_HP_INT, 1, RK_RL_MAX_TOKENS_MAX,
     false, RK_HP_CAP_NONE, JC | RK_HP_OPENAI, NULL, F(rl_max_tokens),
     "method rl: tokens per sample at most"},
    {"rl_kl", "rl-kl", "rl_kl", RK_HP_NUM, 0, 1000, false, RK_HP_CAP_NONE, JC | RK_HP_OPENAI,
     NULL, F(rl_kl), "method rl: weight of KL(current || starting state) on the sampled positions"},
    {"init_state", "init-state", NULL, RK_HP_STR, 0, 0, false, RK_HP_CAP_NONE,
     RK_HP_JOB | RK_HP_HOST, NULL, 0, 0,
     "a stored state of the tenant to start from (default: the zero state)"},
};
#define N_HP (sizeof table / sizeof table[0])

const struct rk_hparam *rk_hparams(size_t *n)
{
    *n = N_HP;
    return table;
}

const struct rk_hparam *rk_hparam_find(const char *name)
{
    for (size_t i = 0; name && i < N_HP; i++)
        if (strcmp(table[i].name, name) == 0)
            return &table[i];
    return NULL;
}

double rk_hparam_get(const struct rk_hparam *h, const struct rk_tune_params *p)
{
    const char *f = (const char *)p + h->off;
    if (h->where & RK_HP_HOST)
        return NAN;
    if (h->type == RK_HP_BOOL)
        return *(const bool *)(const void *)f ? 1 : 0;
    if (h->type == RK_HP_NUM)
        return *(const double *)(const void *)f;
    if (h->size == sizeof(int))
        return (double)*(const int *)(const void *)f;
    if (h->off == offsetof(struct rk_tune_params, seed) ||
        h->off == offsetof(struct rk_tune_params, kernel_seed) ||
        h->off == offsetof(struct rk_tune_params, seq_len_max))
        return (double)*(const uint64_t *)(const void *)f;
    return (double)*(const long *)(const void *)f;
}

void rk_hparam_set(const struct rk_hparam *h, struct rk_tune_params *p, double x)
{
    char *f = (char *)p + h->off;
    if (h->where & RK_HP_HOST)
        return;
    if (h->type == RK_HP_BOOL)
        *(bool *)(void *)f = x != 0;
    else if (h->type == RK_HP_NUM)
        *(double *)(void *)f = x;
    else if (h->size == sizeof(int))
        *(int *)(void *)f = (int)x;
    else if (h->off == offsetof(struct rk_tune_params, seed) ||
             h->off == offsetof(struct rk_tune_params, kernel_seed) ||
             h->off == offsetof(struct rk_tune_params, seq_len_max))
        *(uint64_t *)(void *)f = (uint64_t)x;
    else
        *(long *)(void *)f = (long)x;
}

int rk_hparam_check(const struct rk_hparam *h, double x, double cap_hi)
{
    double hi = cap_hi > 0 && cap_hi < h->hi ? cap_hi : h->hi;
    if (h->type == RK_HP_STR)
        return RK_OK;
    if (!(x >= h->lo && x <= hi) || (h->lo_open && x == h->lo))
        return RK_ERANGE;
    if (h->type != RK_HP_NUM && x != floor(x))
        return RK_ERANGE;
    return RK_OK;
}

int rk_hparam_parse(const struct rk_hparam *h, const char *s, double *x)
{
    char *end = NULL;
    if (!s || !*s)
        return RK_EINVAL;
    switch (h->type) {
    case RK_HP_BOOL:
        if (!strcmp(s, "true") || !strcmp(s, "1"))
            *x = 1;
        else if (!strcmp(s, "false") || !strcmp(s, "0"))
            *x = 0;
        else
            return RK_EINVAL;
        return RK_OK;
    case RK_HP_ENUM:
        for (int i = 0; h->choices[i]; i++)
            if (!strcmp(s, h->choices[i])) {
                *x = i;
                return RK_OK;
            }
        return RK_EINVAL;
    case RK_HP_INT: {
        errno = 0;
        long long v = strtoll(s, &end, 10);
        if (errno || *end)
            return RK_EINVAL;
        *x = (double)v;
        break;
    }
    case RK_HP_NUM:
        errno = 0;
        *x = strtod(s, &end);
        if (errno || *end || !isfinite(*x))
            return RK_EINVAL;
        break;
    case RK_HP_STR:
        return RK_EINVAL;
    }
    return rk_hparam_check(h, *x, 0);
}

void rk_hparam_range_str(const struct rk_hparam *h, double cap_hi, char *buf, size_t cap)
{
    double hi = cap_hi > 0 && cap_hi < h->hi ? cap_hi : h->hi;
    switch (h->type) {
    case RK_HP_BOOL:
        snprintf(buf, cap, "true|false");
        break;
    case RK_HP_ENUM: {
        size_t o = 0;
        buf[0] = 0;
        for (int i = 0; h->choices[i] && o < cap; i++)
            o += (size_t)snprintf(buf + o, cap - o, "%s%s", i ? "|" : "", h->choices[i]);
        break;
    }
    case RK_HP_INT:
        snprintf(buf, cap, "[%.0f, %.0f]", h->lo, hi);
        break;
    case RK_HP_NUM:
        snprintf(buf, cap, "%s%g, %g]", h->lo_open ? "(" : "[", h->lo, hi);
        break;
    case RK_HP_STR:
        snprintf(buf, cap, "string");
        break;
    }
}

/*
 * dataset.c - token sequences with loss masks and multiple-choice items held
 * in memory, a seeded shuffle and a train/validation split. Parsing files
 * into tokens is the server's job (server/dataset_jsonl.c); this file only
 * stores what it is given.
 */
#include "rk_adapters.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct seq {
    uint32_t *tokens; /* [n] */
    uint8_t *mask;    /* [n] */
    size_t n;
    uint64_t tag;     /* index in the first dataset it was added to */
};

struct mc {
    uint32_t *prompt;
    size_t n_prompt;
    size_t n_choices, answer;
    uint32_t **choices;
    size_t *n_choice;
};

struct rk_dataset {
    struct seq *seqs;
    size_t n_seq, cap_seq;
    struct mc *mcs;
    size_t n_mc, cap_mc;
    size_t n_tokens, n_targets;
    uint32_t vocab_used;
};

int rk_dataset_create(struct rk_dataset **out)
{
    *out = calloc(1, sizeof **out);
    return *out ? RK_OK : RK_ENOMEM;
}

static void mc_free(struct mc *q)
{
    for (size_t i = 0; q->choices && i < q->n_choices; i++)
        free(q->choices[i]);
    free(q->choices);
    free(q->n_choice);
    free(q->prompt);
}

void rk_dataset_free(struct rk_dataset *d)
{
    if (!d)
        return;
    for (size_t i = 0; i < d->n_seq; i++) {
        free(d->seqs[i].tokens);
        free(d->seqs[i].mask);
    }
    for (size_t i = 0; i < d->n_mc; i++)
        mc_free(&d->mcs[i]);
    free(d->seqs);
    free(d->mcs);
    free(d);
}

static void note_vocab(struct rk_dataset *d, const uint32_t *t, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (t[i] + 1 > d->vocab_used)
            d->vocab_used = t[i] + 1;
}

int rk_dataset_add(struct rk_dataset *d, const uint32_t *tokens, const uint8_t *loss_mask,
                   size_t n)
{
    if (!d || !tokens || n < 2)
        return RK_EINVAL;
    size_t sel = 0;
    for (size_t t = 1; t < n; t++)
        sel += !loss_mask || loss_mask[t];
    if (!sel)
        return RK_EINVAL;
    if (d->n_seq == d->cap_seq) {
        size_t cap = d->cap_seq ? 2 * d->cap_seq : 16;
        struct seq *s = realloc(d->seqs, cap * sizeof *s);
        if (!s)
            return RK_ENOMEM;
        d->seqs = s;
        d->cap_seq = cap;
    }
    struct seq q = {malloc(n * sizeof(uint32_t)), malloc(n), n, d->n_seq};
    if (!q.tokens || !q.mask) {
        free(q.tokens);
        free(q.mask);
        return RK_ENOMEM;
    }
    memcpy(q.tokens, tokens, n * sizeof(uint32_t));
    q.mask[0] = 0;
    for (size_t t = 1; t < n; t++)
        q.mask[t] = (!loss_mask || loss_mask[t]) ? 1 : 0;
    d->seqs[d->n_seq++] = q;
    d->n_tokens += n;
    d->n_targets += sel;
    note_vocab(d, tokens, n);
    return RK_OK;
}

int rk_dataset_add_mc(struct rk_dataset *d, const struct rk_mc_item *it)
{
    if (!d || !it || !it->prompt || it->n_prompt < 1 || it->n_choices < 2 ||
        it->answer >= it->n_choices || !it->choices || !it->n_choice)
        return RK_EINVAL;
    for (size_t i = 0; i < it->n_choices; i++)
        if (!it->choices[i] || it->n_choice[i] < 1)
            return RK_EINVAL;
    if (d->n_mc == d->cap_mc) {
        size_t cap = d->cap_mc ? 2 * d->cap_mc : 16;
        struct mc *s = realloc(d->mcs, cap * sizeof *s);
        if (!s)
            return RK_ENOMEM;
        d->mcs = s;
        d->cap_mc = cap;
    }
    struct mc q = {0};
    q.n_prompt = it->n_prompt;
    q.n_choices = it->n_choices;
    q.answer = it->answer;
    q.prompt = malloc(it->n_prompt * sizeof(uint32_t));
    q.choices = calloc(it->n_choices, sizeof *q.choices);
    q.n_choice = malloc(it->n_choices * sizeof *q.n_choice);
    if (!q.prompt || !q.choices || !q.n_choice)
        goto nomem;
    memcpy(q.prompt, it->prompt, it->n_prompt * sizeof(uint32_t));
    for (size_t i = 0; i < it->n_choices; i++) {
        q.n_choice[i] = it->n_choice[i];
        q.choices[i] = malloc(it->n_choice[i] * sizeof(uint32_t));
        if (!q.choices[i])
            goto nomem;
        memcpy(q.choices[i], it->choices[i], it->n_choice[i] * sizeof(uint32_t));
        note_vocab(d, it->choices[i], it->n_choice[i]);
    }
    note_vocab(d, it->prompt, it->n_prompt);
    d->mcs[d->n_mc++] = q;
    return RK_OK;
nomem:
    mc_free(&q);
    return RK_ENOMEM;
}

size_t rk_dataset_len(const struct rk_dataset *d) { return d ? d->n_seq : 0; }
size_t rk_dataset_n_mc(const struct rk_dataset *d) { return d ? d->n_mc : 0; }
size_t rk_dataset_n_tokens(const struct rk_dataset *d) { return d ? d->n_tokens : 0; }
size_t rk_dataset_n_targets(const struct rk_dataset *d) { return d ? d->n_targets : 0; }
uint32_t rk_dataset_vocab_used(const struct rk_dataset *d) { return d ? d->vocab_used : 0; }

void rk_dataset_get(const struct rk_dataset *d, size_t i, const uint32_t **tokens,
                    const uint8_t **loss_mask, size_t *n)
{
    const struct seq *q = &d->seqs[i];
    if (tokens)
        *tokens = q->tokens;
    if (loss_mask)
        *loss_mask = q->mask;
    if (n)
        *n = q->n;
}

uint64_t rk_dataset_tag(const struct rk_dataset *d, size_t i) { return d->seqs[i].tag; }

void rk_dataset_get_mc(const struct rk_dataset *d, size_t i, struct rk_mc_item *out)
{
    const struct mc *q = &d->mcs[i];
    out->prompt = q->prompt;
    out->n_prompt = q->n_prompt;
    out->n_choices = q->n_choices;
    out->choices = (const uint32_t *const *)q->choices;
    out->n_choice = q->n_choice;
    out->answer = q->answer;
}

static uint64_t splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void rk_shuffle(size_t *idx, size_t n, uint64_t *rng)
{
    for (size_t i = n; i > 1; i--) {
        /* unbiased index in [0, i) by rejection */
        uint64_t lim = UINT64_MAX - UINT64_MAX % i, r;
        do
            r = splitmix64(rng);
        while (r >= lim);
        size_t j = (size_t)(r % i);
        size_t t = idx[i - 1];
        idx[i - 1] = idx[j];
        idx[j] = t;
    }
}

static int copy_seq(struct rk_dataset *dst, const struct rk_dataset *src, size_t i)
{
    const struct seq *q = &src->seqs[i];
    int rc = rk_dataset_add(dst, q->tokens, q->mask, q->n);
    if (rc == RK_OK)
        dst->seqs[dst->n_seq - 1].tag = q->tag;
    return rc;
}

static int cmp_size(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x < y ? -1 : x > y;
}

int rk_dataset_split(const struct rk_dataset *d, double val_frac, uint64_t seed,
                     struct rk_dataset **train, struct rk_dataset **val)
{
    *train = *val = NULL;
    if (!d || !(val_frac >= 0 && val_frac < 1))
        return RK_EINVAL;
    size_t n = d->n_seq, nv = (size_t)llround(val_frac * (double)n);
    if (val_frac > 0 && nv == 0 && n >= 2)
        nv = 1;
    if (nv >= n && n > 0)
        nv = n - 1;
    size_t *idx = malloc((n ? n : 1) * sizeof *idx);
    int rc = RK_ENOMEM;
    if (!idx || rk_dataset_create(train) != RK_OK || rk_dataset_create(val) != RK_OK)
        goto fail;
    for (size_t i = 0; i < n; i++)
        idx[i] = i;
    uint64_t rng = seed ^ 0x5eed5eed5eed5eedull;
    rk_shuffle(idx, n, &rng);
    /* keep the original order inside each part */
    qsort(idx, nv, sizeof *idx, cmp_size);
    qsort(idx + nv, n - nv, sizeof *idx, cmp_size);
    for (size_t i = 0; i < n; i++)
        if ((rc = copy_seq(i < nv ? *val : *train, d, idx[i])) != RK_OK)
            goto fail;
    free(idx);
    return RK_OK;
fail:
    free(idx);
    rk_dataset_free(*train);
    rk_dataset_free(*val);
    *train = *val = NULL;
    return rc;
}

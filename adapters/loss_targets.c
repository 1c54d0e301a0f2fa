/*
 * loss_targets.c - what the methods with their own loss ("observer", "rl")
 * share (method_standard.h): the table of per-sequence targets their loss
 * hook reads, the lookup of the target of a logits row, and the row's
 * log-sum-exp.
 */
#include "method_standard.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void *rk_loss_table_new(size_t size, size_t n_seq, size_t elem)
{
    struct rk_loss_table *t = calloc(1, size);
    if (!t || !(t->s = calloc(n_seq ? n_seq : 1, elem))) {
        free(t);
        return NULL;
    }
    t->n = n_seq;
    t->elem = elem;
    return t;
}

void rk_loss_table_free(void *obj, void (*clear)(void *entry))
{
    struct rk_loss_table *t = obj;
    if (!t)
        return;
    for (size_t i = 0; i < t->n; i++)
        clear((char *)t->s + i * t->elem);
    free(t->s);
    free(t);
}

void *rk_loss_table_entry(const struct rk_loss_table *t, size_t seq)
{
    return seq < t->n ? (char *)t->s + seq * t->elem : NULL;
}

const void *rk_loss_table_at(const struct rk_loss_table *t, const struct rk_tune_loss_ctx *lc,
                             size_t pos, size_t *p)
{
    uint64_t tag = lc->ds ? rk_dataset_tag(lc->ds, lc->seq) : lc->seq;
    const struct rk_loss_span *s = tag < t->n ? rk_loss_table_entry(t, (size_t)tag) : NULL;
    if (!s || !s->n_pos || pos < s->t0 || pos - s->t0 >= s->n_pos)
        return NULL;
    *p = pos - s->t0;
    return s;
}

double rk_row_lse(const float *lg, int V, bool *nan)
{
    float mx = lg[0];
    bool bad = false;
    for (int v = 0; v < V; v++) {
        mx = lg[v] > mx ? lg[v] : mx;
        bad |= lg[v] != lg[v];
    }
    double se = 0;
    for (int v = 0; v < V; v++)
        se += exp((double)lg[v] - (double)mx);
    *nan = bad;
    return (double)mx + log(se);
}

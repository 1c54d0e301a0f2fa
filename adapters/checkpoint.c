/*
 * checkpoint.c - RKTCKPT1 files: a tuning run's parameters, Adam moments
 * and best parameters, enough to resume it bit-identically. One writer and
 * one reader for `rwkvd tune --checkpoint/--resume` and the jobs journal.
 * The format is in rk_adapters.h (rk_tune_ckpt_save).
 */
#include "rk_adapters.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CKPT_MAGIC "RKTCKPT1"
#define CKPT_HEAD 40 /* magic, step, len, best_val, bad_evals */

int rk_tune_ckpt_save(const char *path, const struct rk_tune_checkpoint *ck, struct rk_errbuf *eb)
{
    size_t n = ck->len, len = CKPT_HEAD + 4 * sizeof(float) * n;
    unsigned char *buf = malloc(len), *p = buf;
    if (!buf)
        return RK_ENOMEM;
    uint64_t step = (uint64_t)ck->step, un = n;
    int64_t bad = ck->bad_evals;
    memcpy(p, CKPT_MAGIC, 8), p += 8;
    memcpy(p, &step, 8), p += 8;
    memcpy(p, &un, 8), p += 8;
    memcpy(p, &ck->best_val, 8), p += 8;
    memcpy(p, &bad, 8), p += 8;
    const float *parts[4] = {ck->state, ck->m, ck->v, ck->best};
    for (int i = 0; i < 4; i++)
        memcpy(p, parts[i], sizeof(float) * n), p += sizeof(float) * n;
    int rc = rk_file_write_atomic(path, buf, len, eb);
    free(buf);
    return rc;
}

int rk_tune_ckpt_load(const char *path, size_t len_want, struct rk_tune_checkpoint *ck,
                      float **mem, struct rk_errbuf *eb)
{
    struct rk_errbuf e2 = {0};
    if (!eb)
        eb = &e2;
    void *buf = NULL;
    size_t len = 0;
    *mem = NULL;
    int rc = rk_file_read_all(path, CKPT_HEAD + 4 * sizeof(float) * len_want, &buf, &len, eb);
    if (rc == RK_ENOTFOUND || rc == RK_ENOMEM)
        return rc;
    if (rc != RK_OK) {
        // Too long for this model, or unreadable.
        rk_errbuf_set(eb, RK_EFORMAT, "%s is not a checkpoint of this model", path);
        return RK_EFORMAT;
    }
    const unsigned char *p = buf;
    uint64_t step, n;
    int64_t bad;
    rc = RK_EFORMAT;
    if (len < CKPT_HEAD || memcmp(p, CKPT_MAGIC, 8) != 0)
        goto out;
    memcpy(&step, p + 8, 8);
    memcpy(&n, p + 16, 8);
    memcpy(&ck->best_val, p + 24, 8);
    memcpy(&bad, p + 32, 8);
    if (n != len_want || len != CKPT_HEAD + 4 * sizeof(float) * n || step > (uint64_t)1 << 40)
        goto out;
    if (!(*mem = malloc(4 * sizeof(float) * n))) {
        rc = RK_ENOMEM;
        goto out;
    }
    memcpy(*mem, p + CKPT_HEAD, 4 * sizeof(float) * n);
    ck->step = (long)step;
    ck->len = n;
    ck->bad_evals = (int)bad;
    ck->state = *mem;
    ck->m = *mem + n;
    ck->v = *mem + 2 * n;
    ck->best = *mem + 3 * n;
    rc = RK_OK;
out:
    if (rc == RK_EFORMAT)
        rk_errbuf_set(eb, RK_EFORMAT, "%s is not a checkpoint of this model", path);
    free(buf);
    return rc;
}

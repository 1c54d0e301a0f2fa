/*
 * methods.c - the table of tuning methods (struct rk_tune_method in
 * rk_adapters.h). Adding a method: write adapters/method_<name>.c with its
 * entry, declare the entry in rk_adapters.h, list it here and in
 * meson.build. Everything else (the CLI's --method, the APIs' "method",
 * the journal, checkpoints, state files' metadata) goes through this table.
 */
#include "rk_adapters.h"

#include <stdio.h>
#include <string.h>

static const struct rk_tune_method *const methods[] = {
    &rk_method_standard,
    &rk_method_kernel,
    &rk_method_dbp,
    &rk_method_observer,
    &rk_method_rl,
};
#define N_METHODS (sizeof methods / sizeof methods[0])

const struct rk_tune_method *const *rk_tune_methods(size_t *n)
{
    *n = N_METHODS;
    return methods;
}

const struct rk_tune_method *rk_tune_method_default(void) { return &rk_method_standard; }

const struct rk_tune_method *rk_tune_method_find(const char *name)
{
    for (size_t i = 0; name && i < N_METHODS; i++)
        if (strcmp(methods[i]->name, name) == 0)
            return methods[i];
    return NULL;
}

void rk_tune_method_names(char *buf, size_t cap)
{
    size_t o = 0;
    if (cap)
        buf[0] = 0;
    for (size_t i = 0; i < N_METHODS && o < cap; i++) {
        int k = snprintf(buf + o, cap - o, "%s%s", i ? ", " : "", methods[i]->name);
        if (k < 0)
            break;
        o += (size_t)k;
    }
}

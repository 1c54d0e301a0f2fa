/*
 * method_standard.h - the "standard" method's hooks (method_standard.c), for
 * the method entries that differ from it in a few hooks only.
 *
 * Such an entry starts from RK_METHOD_STANDARD_HOOKS and names after it only
 * the hooks it changes: a later designated initializer overrides an earlier
 * one for the same member (C11 6.7.9), so the entry is a copy of "standard"
 * with those hooks replaced. The compilers warn about exactly that
 * override; RK_METHOD_OVERRIDES_BEGIN / _END around the entries silence it
 * there and nowhere else:
 *
 *     RK_METHOD_OVERRIDES_BEGIN
 *     const struct rk_tune_method rk_method_x = {
 *         RK_METHOD_STANDARD_HOOKS,
 *         .name = "x",
 *         .help = "...",
 *         .loss = x_loss,
 *     };
 *     RK_METHOD_OVERRIDES_END
 *
 * RK_METHOD_STANDARD_WITH_LOSS writes that entry for a method that changes
 * the loss hook only.
 */
#ifndef RK_METHOD_STANDARD_H
#define RK_METHOD_STANDARD_H

#include "rk_adapters.h"

size_t rk_std_params_len(const struct rk_model *m, const struct rk_tune_params *p);
void rk_std_params_init(const struct rk_model *m, const struct rk_tune_params *p,
                        const float *state, float *params);
void rk_std_to_state(const struct rk_model *m, const struct rk_tune_params *p,
                     const float *params, float *state);
void rk_std_grad_to_params(const struct rk_model *m, const struct rk_tune_params *p,
                           const float *params, const float *dstate, float *dparams);
size_t rk_std_trainable(const struct rk_model *m, const struct rk_tune_params *p,
                        struct rk_span *spans, size_t cap);

/* --- for methods with their own loss (loss_targets.c) ----------------------
 *
 * Their per-sequence targets live in a table indexed by the dataset tag of
 * a sequence (rk_dataset_tag; the sequence's index when the loss runs
 * without a dataset). Each entry starts with a struct rk_loss_span: the
 * positions t0 .. t0 + n_pos - 1 of the sequence that have a target. A
 * method's targets object begins with the table. */
struct rk_loss_span {
    size_t t0, n_pos;
};
struct rk_loss_table {
    size_t n;    /* entries */
    size_t elem; /* bytes per entry */
    void *s;     /* [n] entries, zeroed when made */
};
/* A targets object of `size` bytes, zeroed, that begins with a struct
 * rk_loss_table of n_seq zeroed entries of `elem` bytes; NULL when out of
 * memory. */
void *rk_loss_table_new(size_t size, size_t n_seq, size_t elem);
/* `clear` every entry of the object's table, then free both (NULL: no-op). */
void rk_loss_table_free(void *obj, void (*clear)(void *entry));
/* Entry seq, or NULL past the end. */
void *rk_loss_table_entry(const struct rk_loss_table *t, size_t seq);
/* The entry whose span holds logits row `pos` of the sequence the loss is
 * at (lc), with *p its position in the span; NULL where it has no target. */
const void *rk_loss_table_at(const struct rk_loss_table *t, const struct rk_tune_loss_ctx *lc,
                             size_t pos, size_t *p);
/* The log-sum-exp of a row of V logits; *nan tells whether one is NaN. */
double rk_row_lse(const float *lg, int V, bool *nan);

#define RK_METHOD_STANDARD_HOOKS                                                                  \
    .params_len = rk_std_params_len, .params_init = rk_std_params_init,                           \
    .to_state = rk_std_to_state, .grad_to_params = rk_std_grad_to_params,                         \
    .trainable = rk_std_trainable, .loss = NULL, .extra = NULL, .to_adapter = NULL

/* The entry of a method that is "standard" but for its loss hook. */
#define RK_METHOD_STANDARD_WITH_LOSS(var, name_, help_, loss_)                                   \
    RK_METHOD_OVERRIDES_BEGIN                                                                     \
    const struct rk_tune_method var = {                                                           \
        RK_METHOD_STANDARD_HOOKS, .name = name_, .help = help_, .loss = loss_,                    \
    };                                                                                            \
    RK_METHOD_OVERRIDES_END

#define RK_METHOD_OVERRIDES_BEGIN                                                                 \
    _Pragma("GCC diagnostic push") _Pragma("GCC diagnostic ignored \"-Woverride-init\"")
#define RK_METHOD_OVERRIDES_END _Pragma("GCC diagnostic pop")

#endif

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

#define RK_METHOD_STANDARD_HOOKS                                                                  \
    .params_len = rk_std_params_len, .params_init = rk_std_params_init,                           \
    .to_state = rk_std_to_state, .grad_to_params = rk_std_grad_to_params,                         \
    .trainable = rk_std_trainable, .loss = NULL, .extra = NULL, .to_adapter = NULL

#define RK_METHOD_OVERRIDES_BEGIN                                                                 \
    _Pragma("GCC diagnostic push") _Pragma("GCC diagnostic ignored \"-Woverride-init\"")
#define RK_METHOD_OVERRIDES_END _Pragma("GCC diagnostic pop")

#endif

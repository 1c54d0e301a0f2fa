/*
 * method_standard.c - the "standard" tuning method: the parameters are the
 * initial state itself, in the core state layout (rk_state_layout), so
 * to_state and the gradient are copies. The optimizer updates the WKV
 * parts of every layer, and the two token-shift vectors only with
 * p->tune_shift (their gradient is zeroed otherwise, so the norm and the
 * clipping see only what is trained).
 */
#include "method_standard.h"

#include <string.h>

size_t rk_std_params_len(const struct rk_model *m, const struct rk_tune_params *p)
{
    (void)p;
    return rk_state_len(m);
}

void rk_std_params_init(const struct rk_model *m, const struct rk_tune_params *p,
                        const float *state, float *params)
{
    (void)p;
    if (state)
        memcpy(params, state, rk_state_len(m) * sizeof(float));
    else
        memset(params, 0, rk_state_len(m) * sizeof(float));
}

void rk_std_to_state(const struct rk_model *m, const struct rk_tune_params *p,
                     const float *params, float *state)
{
    (void)p;
    memcpy(state, params, rk_state_len(m) * sizeof(float));
}

void rk_std_grad_to_params(const struct rk_model *m, const struct rk_tune_params *p,
                           const float *params, const float *dstate, float *dparams)
{
    (void)params;
    memcpy(dparams, dstate, rk_state_len(m) * sizeof(float));
    if (p->tune_shift)
        return;
    struct rk_state_layout lay;
    rk_state_layout(m, &lay);
    for (int l = 0; l < rk_model_n_layer(m); l++) {
        float *g = dparams + (size_t)l * lay.layer_stride;
        memset(g + lay.att_shift, 0, lay.shift_len * sizeof(float));
        memset(g + lay.ffn_shift, 0, lay.shift_len * sizeof(float));
    }
}

/* All of it with tune_shift, else each layer's WKV part. */
size_t rk_std_trainable(const struct rk_model *m, const struct rk_tune_params *p,
                        struct rk_span *spans, size_t cap)
{
    if (p->tune_shift) {
        if (cap >= 1)
            spans[0] = (struct rk_span){0, rk_state_len(m)};
        return 1;
    }
    struct rk_state_layout lay;
    rk_state_layout(m, &lay);
    size_t L = (size_t)rk_model_n_layer(m);
    for (size_t l = 0; l < L && l < cap; l++)
        spans[l] = (struct rk_span){l * lay.layer_stride + lay.wkv, lay.wkv_len};
    return L;
}

const struct rk_tune_method rk_method_standard = {
    .name = "standard",
    .help = "Adam on the initial state (WKV parts; token shifts with tune_shift)",
    RK_METHOD_STANDARD_HOOKS,
};

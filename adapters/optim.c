/*
 * optim.c - AdamW over flat float buffers (the shape of llm.c's gpt2_update),
 * learning-rate schedules and gradient-norm clipping. Everything is
 * element-wise or a fixed-order reduction, so results are bit-identical for
 * the same inputs.
 */
#include "rk_adapters.h"

#include <math.h>

double rk_lr_at(const struct rk_lr_schedule *s, long step)
{
    if (step < 0)
        step = 0;
    if (s->warmup > 0 && step < s->warmup)
        return s->lr_init * (double)(step + 1) / (double)s->warmup;
    long span = s->total - s->warmup;
    if (s->decay == RK_LR_CONSTANT || span <= 1)
        return s->lr_init;
    double f = (double)(step - s->warmup) / (double)(span - 1); /* 0 .. 1 */
    if (f > 1)
        f = 1;
    if (s->decay == RK_LR_LINEAR)
        return s->lr_init + (s->lr_final - s->lr_init) * f;
    /* cosine */
    return s->lr_final + 0.5 * (s->lr_init - s->lr_final) * (1 + cos(M_PI * f));
}

void rk_adamw_update(float *param, const float *grad, float *m, float *v, size_t n, long t,
                     const struct rk_adamw_params *p, double grad_scale)
{
    const double b1 = p->beta1, b2 = p->beta2;
    /* bias corrections for step t (1-based) */
    const double c1 = 1.0 - pow(b1, (double)t), c2 = 1.0 - pow(b2, (double)t);
    const float lr = (float)p->lr, wd = (float)p->weight_decay, eps = (float)p->eps;
    const float fb1 = (float)b1, fb2 = (float)b2, gs = (float)grad_scale;
    const float ic1 = (float)(1.0 / c1), ic2 = (float)(1.0 / c2);
    for (size_t i = 0; i < n; i++) {
        float g = grad[i] * gs;
        float mi = fb1 * m[i] + (1.0f - fb1) * g;
        float vi = fb2 * v[i] + (1.0f - fb2) * g * g;
        m[i] = mi;
        v[i] = vi;
        float mh = mi * ic1, vh = vi * ic2;
        param[i] -= lr * (mh / (sqrtf(vh) + eps) + wd * param[i]);
    }
}

double rk_grad_norm(const float *g, size_t n)
{
    double s = 0;
    for (size_t i = 0; i < n; i++)
        s += (double)g[i] * g[i];
    return sqrt(s);
}

double rk_clip_scale(double norm, double max_norm)
{
    if (max_norm <= 0 || !(norm > max_norm))
        return 1.0;
    return max_norm / norm;
}

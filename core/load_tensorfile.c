/*
 * load_tensorfile.c - models in safetensors files and in PyTorch checkpoints
 * as written by torch.save (a stored zip holding <dir>/data.pkl, the pickled
 * state dict, and <dir>/data/<key> storages). The containers are read by
 * tensorfile.c (strict JSON header; stored zip and a restricted pickle
 * machine that executes nothing); this file maps the tensors' names
 * (official or Hugging Face / fla ones) and hands them to the model builder
 * (model.c). The tensors are used in place from the mapped file. Limits:
 * core/FORMAT.md.
 */
#include "core_int.h"
#include "rk_tensorfile.h"

#include <string.h>

/* The scale tensor of an 8-bit matrix: "<name>_scale" (core/FORMAT.md). */
#define Q8_SCALE_SUFFIX "_scale"

/* The F16 scales [rows, cols / 32] of the I8 tensor f [rows, cols], checked. */
static int q8_scales(struct rk_model *m, const struct rk_tf_list *fl,
                     const struct rk_tf_tensor *f, const struct rk_tf_tensor **out,
                     struct rk_errbuf *eb)
{
    const char *file = rk__model_file(m);
    char want[RK_LOAD_MAX_NAME + sizeof Q8_SCALE_SUFFIX];
    snprintf(want, sizeof want, "%s%s", f->name, Q8_SCALE_SUFFIX);
    const struct rk_tf_tensor *sc = NULL;
    for (size_t k = 0; k < fl->n && !sc; k++)
        if (!strcmp(fl->v[k].name, want))
            sc = &fl->v[k];
    if (!sc)
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: tensor %s: I8 needs its block scales, "
                             "tensor %s (F16)", file, f->name, want);
    if (f->ndim != 2 || f->shape[1] % RK_Q8_BLOCK)
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: tensor %s: an 8-bit matrix must be 2-D with "
                             "a multiple of %d columns", file, f->name, RK_Q8_BLOCK);
    if (strcmp(sc->dtype_name, "F16") || sc->ndim != 2 || sc->shape[0] != f->shape[0] ||
        sc->shape[1] != f->shape[1] / RK_Q8_BLOCK)
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: tensor %s: expected F16 [%lld, %lld] (the "
                             "scales of %s)", file, sc->name, (long long)f->shape[0],
                             (long long)(f->shape[1] / RK_Q8_BLOCK), f->name);
    *out = sc;
    return RK_OK;
}

/* Move the container's tensors into the loader's list, names mapped; a
 * model tensor of a dtype the model cannot hold is RK_EFORMAT. An I8 model
 * tensor and its "_scale" tensor become one Q8 tensor. */
static int tensors_from_file(struct rk_model *m, const struct rk_tf_list *fl,
                          struct rk__tensor_list *tl, struct rk_errbuf *eb)
{
    const char *file = rk__model_file(m);
    int rc;
    for (size_t i = 0; i < fl->n; i++) {
        const struct rk_tf_tensor *f = &fl->v[i];
        struct rk__tensor *t;
        if ((rc = rk__tensor_push(tl, m, &t, eb)))
            return rc;
        memcpy(t->name, f->name, strlen(f->name) + 1);
        rk__tensor_map_name(t);
        if (f->dtype == RK_DTYPE_AUTO && t->key[0] && !strcmp(f->dtype_name, "I8")) {
            const struct rk_tf_tensor *sc = NULL;
            if ((rc = q8_scales(m, fl, f, &sc, eb)))
                return rc;
            t->dtype = RK_DTYPE_Q8;
            t->ndim = f->ndim;
            memcpy(t->shape, f->shape, sizeof t->shape);
            t->data = f->data;
            t->scale = sc->data;
            t->nbytes = f->nbytes;
            continue;
        }
        if (f->dtype == RK_DTYPE_AUTO) { /* a dtype the model cannot use */
            if (t->key[0])
                return rk_errbuf_set(eb, RK_EFORMAT, "%s: tensor %s: dtype %s is not "
                                     "supported (F32, F16, BF16, or I8 with F16 scales)", file,
                                     f->name, f->dtype_name);
            continue; /* kept only for the name checks */
        }
        t->dtype = f->dtype;
        t->ndim = f->ndim;
        memcpy(t->shape, f->shape, sizeof t->shape);
        t->data = f->data;
        t->nbytes = f->nbytes;
    }
    return RK_OK;
}

static int load(struct rk_model *m, const struct rk_model_params *p, bool pth,
                struct rk_errbuf *eb)
{
    struct rk_tf_opts o = {.file = rk__model_file(m), .tensors_max = RK_LOAD_MAX_TENSORS};
    struct rk_tf_list fl = {0};
    struct rk__tensor_list tl = {0};
    int rc = pth ? rk_tf_pth_read(m->map, m->map_len, &o, &fl, eb)
                 : rk_tf_safetensors_read(m->map, m->map_len, m->map_len, &o, &fl, eb);
    if (!rc)
        rc = tensors_from_file(m, &fl, &tl, eb);
    rk_tf_list_free(&fl);
    if (!rc)
        rc = rk__model_build(m, &tl, p, eb);
    rk__tensor_list_free(&tl);
    return rc;
}

int rk__load_safetensors(struct rk_model *m, const struct rk_model_params *p,
                         struct rk_errbuf *eb)
{
    return load(m, p, false, eb);
}

int rk__load_pth(struct rk_model *m, const struct rk_model_params *p, struct rk_errbuf *eb)
{
    return load(m, p, true, eb);
}

/*
 * load_pth.c - models in PyTorch checkpoints as written by torch.save: a zip
 * archive (stored entries) holding <dir>/data.pkl, a pickle of the state
 * dict, and one entry <dir>/data/<key> per tensor storage. The archive and
 * the pickle are read by tensorfile.c (a restricted pickle machine that
 * executes nothing); the tensors are used in place from the mapped file.
 * Limits: core/FORMAT.md.
 */
#include "core_int.h"
#include "rk_tensorfile.h"

int rk__load_pth(struct rk_model *m, const struct rk_model_params *p, struct rk_errbuf *eb)
{
    struct rk_tf_opts o = {.file = rk__model_file(m), .tensors_max = RK_LOAD_MAX_TENSORS};
    struct rk_tf_list fl = {0};
    struct rk__tensor_list tl = {0};
    int rc = rk_tf_pth_read(m->map, m->map_len, &o, &fl, eb);
    if (!rc)
        rc = rk__tensors_from_file(m, &fl, &tl, eb);
    rk_tf_list_free(&fl);
    if (!rc)
        rc = rk__model_build(m, &tl, p, eb);
    rk__tensor_list_free(&tl);
    return rc;
}

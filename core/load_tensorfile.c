/*
 * load_tensorfile.c - models in safetensors files and in PyTorch checkpoints
 * as written by torch.save (a stored zip holding <dir>/data.pkl, the pickled
 * state dict, and <dir>/data/<key> storages). The containers are read by
 * tensorfile.c (strict JSON header; stored zip and a restricted pickle
 * machine that executes nothing); this file maps the tensors' names
 * (official or Hugging Face / fla ones) and hands them to the model builder
 * (model.c). The tensors are used in place from the mapped file. Limits:
 * core/FORMAT.md.
 *
 * Models of several files (rk__load_multi): a Hugging Face directory
 * (config.json, model.safetensors or model-0000k-of-0000n.safetensors
 * shards with model.safetensors.index.json, a vocabulary file), a directory
 * of .pth shards, or a comma-separated list of files. Every file is mapped
 * and parsed by the same container readers into one tensor list; then the
 * shards are checked against each other (no tensor in two files) and
 * against the index (each tensor in the shard the index names, every
 * indexed tensor present), and config.json against the shapes the weights
 * have. Only then is the list handed to the model builder, so a sharded
 * model is placed exactly like the single file it was cut from.
 */
#include "core_int.h"
#include "rk_fileio.h"
#include "rk_tensorfile.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

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

/* --- models of several files ------------------------------------------------ */

#define DIR_FILES_MAX RK_TF_SHARDS_MAX /* .pth shards in one directory */

/* The files of one model, and which entries of the tensor list each gave. */
struct shardset {
    char (*path)[PATH_MAX];
    const char **name; /* into path: the base name, for messages */
    size_t n;
    size_t *first; /* [n + 1]: tensors of file k are fl.v[first[k] .. first[k + 1]) */
};

static void shardset_free(struct shardset *ss)
{
    rk__free(ss->path);
    rk__free(ss->name);
    rk__free(ss->first);
    memset(ss, 0, sizeof *ss);
}

static int shardset_add(struct shardset *ss, const char *dir, const char *file,
                        struct rk_errbuf *eb)
{
    if (ss->n >= RK_TF_SHARDS_MAX)
        return rk_errbuf_set(eb, RK_EFORMAT, "more than %d model files", RK_TF_SHARDS_MAX);
    void *p = rk__realloc(ss->path, (ss->n + 1) * sizeof *ss->path);
    if (!p)
        return rk_errbuf_set(eb, RK_ENOMEM, "out of memory");
    ss->path = p;
    int w = dir ? snprintf(ss->path[ss->n], PATH_MAX, "%s/%s", dir, file)
                : snprintf(ss->path[ss->n], PATH_MAX, "%s", file);
    if (w < 0 || w >= PATH_MAX)
        return rk_errbuf_set(eb, RK_EINVAL, "%s: path too long", file);
    ss->n++;
    return RK_OK;
}

static bool exists_in(const char *dir, const char *file, char *out, size_t cap)
{
    struct stat st;
    int w = snprintf(out, cap, "%s/%s", dir, file);
    return w > 0 && (size_t)w < cap && stat(out, &st) == 0 && S_ISREG(st.st_mode);
}

static int str_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The .pth files of a directory, sorted by name. */
static int scan_pth(const char *dir, struct shardset *ss, struct rk_errbuf *eb)
{
    DIR *d = opendir(dir);
    if (!d)
        return rk_errbuf_set(eb, RK_EIO, "%s: %s", dir, strerror(errno));
    char **names = NULL;
    size_t n = 0;
    int rc = RK_OK;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t l = strlen(de->d_name);
        if (l <= 4 || de->d_name[0] == '.' || strcmp(de->d_name + l - 4, ".pth"))
            continue;
        if (n >= DIR_FILES_MAX) {
            rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: more than %d .pth files", dir,
                               DIR_FILES_MAX);
            break;
        }
        char **nv = rk__realloc(names, (n + 1) * sizeof *names);
        char *copy = rk__malloc(l + 1);
        if (nv)
            names = nv;
        if (!nv || !copy) {
            rk__free(copy);
            rc = rk_errbuf_set(eb, RK_ENOMEM, "out of memory");
            break;
        }
        memcpy(copy, de->d_name, l + 1);
        names[n++] = copy;
    }
    closedir(d);
    if (rc == RK_OK && n > 1)
        qsort(names, n, sizeof *names, str_cmp);
    for (size_t i = 0; rc == RK_OK && i < n; i++)
        rc = shardset_add(ss, dir, names[i], eb);
    for (size_t i = 0; i < n; i++)
        rk__free(names[i]);
    rk__free(names);
    return rc;
}

/* One entry per tensor for the cross-file checks. */
struct owner {
    const char *name;
    size_t file;
};

static int owner_cmp(const void *a, const void *b)
{
    const struct owner *x = a, *y = b;
    int c = strcmp(x->name, y->name);
    return c ? c : (x->file > y->file) - (x->file < y->file);
}

/* No tensor in two files; with an index, each tensor where the index puts
 * it and every indexed tensor present. */
static int check_shards(const struct rk_tf_list *fl, const struct shardset *ss,
                        const struct rk_tf_index *ix, const char *ixname, struct rk_errbuf *eb)
{
    struct owner *ow = rk__malloc((fl->n ? fl->n : 1) * sizeof *ow);
    if (!ow)
        return rk_errbuf_set(eb, RK_ENOMEM, "out of memory");
    for (size_t k = 0; k < ss->n; k++)
        for (size_t i = ss->first[k]; i < ss->first[k + 1]; i++)
            ow[i] = (struct owner){fl->v[i].name, k};
    int rc = RK_OK;
    if (fl->n > 1)
        qsort(ow, fl->n, sizeof *ow, owner_cmp);
    for (size_t i = 1; i < fl->n && !rc; i++)
        if (!strcmp(ow[i - 1].name, ow[i].name))
            rc = rk_errbuf_set(eb, RK_EFORMAT, "tensor %s is in two files: %s and %s",
                               ow[i].name, ss->name[ow[i - 1].file], ss->name[ow[i].file]);
    for (size_t i = 0; ix && i < fl->n && !rc; i++) {
        const struct rk_tf_index_entry *e = rk_tf_index_find(ix, ow[i].name);
        if (!e)
            rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: tensor %s is not in %s", ss->name[ow[i].file],
                               ow[i].name, ixname);
        else if (strcmp(ix->shards[e->shard], ss->name[ow[i].file]))
            rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: tensor %s is in %s, but %s puts it in %s",
                               ss->name[ow[i].file], ow[i].name, ss->name[ow[i].file], ixname,
                               ix->shards[e->shard]);
    }
    // Every indexed tensor was found: all are in distinct (name, file) pairs
    // checked above, so equal counts mean the sets are equal.
    if (ix && !rc && ix->n != fl->n) {
        for (size_t i = 0; i < ix->n; i++) {
            size_t lo = 0, hi = fl->n;
            while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                if (strcmp(ow[mid].name, ix->v[i].name) < 0)
                    lo = mid + 1;
                else
                    hi = mid;
            }
            if (lo == fl->n || strcmp(ow[lo].name, ix->v[i].name)) {
                rc = rk_errbuf_set(eb, RK_EFORMAT, "%s lists tensor %s in %s, which does not "
                                   "hold it", ixname, ix->v[i].name, ix->shards[ix->v[i].shard]);
                break;
            }
        }
    }
    rk__free(ow);
    return rc;
}

/* --- config.json --- */

struct config {
    char model_type[64];
    bool have_type;
    uint64_t v[9];
    bool have[9];
};

static const char *const config_keys[9] = {
    "num_hidden_layers", "hidden_size", "vocab_size", "head_dim", "intermediate_size",
    "decay_low_rank_dim", "a_low_rank_dim", "v_low_rank_dim", "gate_low_rank_dim",
};

static int on_config(void *user, const char *key, enum rk_tf_field kind, const char *sv,
                     uint64_t u, struct rk_errbuf *eb)
{
    struct config *c = user;
    if (!strcmp(key, "model_type")) {
        if (kind != RK_TF_FIELD_STR || c->have_type)
            return rk_errbuf_set(eb, RK_EFORMAT, "config.json: \"model_type\" must be given "
                                 "once, as a string");
        c->have_type = true;
        snprintf(c->model_type, sizeof c->model_type, "%s", sv);
        return RK_OK;
    }
    for (int k = 0; k < 9; k++)
        if (!strcmp(key, config_keys[k])) {
            if (kind != RK_TF_FIELD_UINT || c->have[k])
                return rk_errbuf_set(eb, RK_EFORMAT, "config.json: \"%s\" must be given once, "
                                     "as an integer", key);
            c->have[k] = true;
            c->v[k] = u;
        }
    return RK_OK;
}

/* config.json against what the weights say. */
static int check_config(const struct rk_model *m, const struct config *c, struct rk_errbuf *eb)
{
    const int64_t got[9] = {m->L, m->C, m->V, m->N, m->F, m->Dw, m->Da, m->Dv, m->Dg};
    for (int k = 0; k < 9; k++) {
        if (!c->have[k] || (k == 7 && m->L < 2)) // no v LoRA in a one-layer model
            continue;
        if (c->v[k] != (uint64_t)got[k])
            return rk_errbuf_set(eb, RK_EFORMAT, "config.json: \"%s\" is %llu, but the weights "
                                 "have %lld", config_keys[k], (unsigned long long)c->v[k],
                                 (long long)got[k]);
    }
    return RK_OK;
}

/* A vocabulary beside the weights (the World vocabulary file fla-hub
 * directories carry). */
static int find_vocab(struct rk_model *m, const char *dir, struct rk_errbuf *eb)
{
    char path[PATH_MAX];
    if (!exists_in(dir, "rwkv_vocab_v20230424.txt", path, sizeof path))
        return RK_OK;
    size_t n = strlen(path);
    if (!(m->vocab_file = rk__malloc(n + 1)))
        return rk_errbuf_set(eb, RK_ENOMEM, "out of memory");
    memcpy(m->vocab_file, path, n + 1);
    return RK_OK;
}

int rk__load_multi(struct rk_model *m, const struct rk_model_params *p, bool dir,
                   struct rk_errbuf *eb)
{
    struct shardset ss = {0};
    struct rk_tf_index ix = {0};
    struct rk_tf_list fl = {0};
    struct rk__tensor_list tl = {0};
    struct config cfg = {0};
    bool have_ix = false, have_cfg = false;
    char ixname[] = "model.safetensors.index.json", path[PATH_MAX];
    const void *buf;
    size_t len;
    int rc = RK_OK;
    const char *where = rk__model_file(m);
    if (dir) {
        const char *d = m->path;
        if (exists_in(d, "config.json", path, sizeof path)) {
            have_cfg = true;
            if ((rc = rk__model_map_file(m, path, "config.json", &buf, &len, eb)) ||
                (rc = rk_tf_json_fields(buf, len, "config.json", on_config, &cfg, eb)))
                goto out;
            if (cfg.have_type && strcmp(cfg.model_type, "rwkv7")) {
                rc = rk_errbuf_set(eb, RK_EFORMAT, "config.json: model_type '%s' is not an "
                                   "RWKV-7 model (\"rwkv7\")", cfg.model_type);
                goto out;
            }
        }
        if (exists_in(d, ixname, path, sizeof path)) {
            have_ix = true;
            if ((rc = rk__model_map_file(m, path, ixname, &buf, &len, eb)) ||
                (rc = rk_tf_index_read(buf, len, ixname, RK_LOAD_MAX_TENSORS, &ix, eb)))
                goto out;
            for (size_t k = 0; k < ix.n_shards && !rc; k++)
                rc = shardset_add(&ss, d, ix.shards[k], eb);
        } else if (exists_in(d, "model.safetensors", path, sizeof path)) {
            rc = shardset_add(&ss, d, "model.safetensors", eb);
        } else {
            rc = scan_pth(d, &ss, eb);
        }
        if (rc)
            goto out;
        if (!ss.n) {
            rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: a model directory needs model.safetensors, "
                               "%s with its shards, or .pth files", where, ixname);
            goto out;
        }
        if ((rc = find_vocab(m, d, eb)))
            goto out;
    } else { // a comma-separated list; empty items are refused
        const char *s = m->path;
        for (;;) {
            const char *e = strchr(s, ',');
            size_t n = e ? (size_t)(e - s) : strlen(s);
            if (!n || n >= PATH_MAX) {
                rc = rk_errbuf_set(eb, RK_EINVAL, "%s: %s", m->path,
                                   n ? "a file name is too long"
                                     : "an empty file name in the list");
                goto out;
            }
            char item[PATH_MAX];
            memcpy(item, s, n);
            item[n] = '\0';
            if ((rc = shardset_add(&ss, NULL, item, eb)))
                goto out;
            if (!e)
                break;
            s = e + 1;
        }
    }
    if (!(ss.name = rk__calloc(ss.n, sizeof *ss.name)) ||
        !(ss.first = rk__calloc(ss.n + 1, sizeof *ss.first))) {
        rc = rk_errbuf_set(eb, RK_ENOMEM, "out of memory");
        goto out;
    }
    enum rk_format fmt = RK_FORMAT_UNKNOWN;
    for (size_t k = 0; k < ss.n; k++) {
        const char *slash = strrchr(ss.path[k], '/');
        ss.name[k] = slash ? slash + 1 : ss.path[k];
        ss.first[k] = fl.n;
        if ((rc = rk__model_map_file(m, ss.path[k], ss.name[k], &buf, &len, eb))) {
            if (have_ix && rc == RK_EIO) { // say who wanted the file
                char why[256];
                snprintf(why, sizeof why, "%s", eb ? rk_file_error_reason(eb->msg) : "");
                rc = rk_errbuf_set(eb, RK_EFORMAT, "shard %s named by %s: %s", ss.name[k],
                                   ixname, why);
            }
            goto out;
        }
        bool pth = rk_tf_is_zip(buf, len);
        if (!pth && !(len >= 9 && ((const char *)buf)[8] == '{')) {
            rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: neither safetensors nor a torch .pth zip",
                               ss.name[k]);
            goto out;
        }
        enum rk_format f = pth ? RK_FORMAT_PTH : RK_FORMAT_SAFETENSORS;
        if (fmt != RK_FORMAT_UNKNOWN && f != fmt) {
            rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: the model files mix safetensors and .pth",
                               ss.name[k]);
            goto out;
        }
        fmt = f;
        struct rk_tf_opts o = {.file = ss.name[k], .tensors_max = RK_LOAD_MAX_TENSORS};
        rc = pth ? rk_tf_pth_read(buf, len, &o, &fl, eb)
                 : rk_tf_safetensors_read(buf, len, len, &o, &fl, eb);
        if (rc)
            goto out;
    }
    ss.first[ss.n] = fl.n;
    m->format = fmt;
    if ((rc = check_shards(&fl, &ss, have_ix ? &ix : NULL, ixname, eb)) ||
        (rc = tensors_from_file(m, &fl, &tl, eb)))
        goto out;
    rk_tf_list_free(&fl);
    if ((rc = rk__model_build(m, &tl, p, eb)))
        goto out;
    if (have_cfg && (rc = check_config(m, &cfg, eb)))
        goto out;
    rk_log(RK_LOG_INFO, "%s: %zu file(s)%s%s%s", where, ss.n, have_ix ? ", sharded by " : "",
           have_ix ? ixname : "", m->vocab_file ? ", vocabulary beside the weights" : "");
out:
    rk_tf_list_free(&fl);
    rk__tensor_list_free(&tl);
    rk_tf_index_free(&ix);
    shardset_free(&ss);
    return rc;
}

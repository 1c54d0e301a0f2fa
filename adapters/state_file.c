/*
 * state_file.c - state-adapter files: safetensors encode/parse, import of
 * RWKV-PEFT .pth state checkpoints, the store's temp-file clean-up.
 *
 * Every input is treated as hostile. The containers are read by core's one
 * tensor-file reader (rk_tensorfile.h: strict safetensors header, stored zip,
 * restricted pickle), which checks sizes, offsets and shapes against the
 * real buffer length before any tensor byte is read; this file checks the
 * tensors against the model (fingerprint, names, shapes) and converts them.
 * Files are written and read through rk_fileio.h. The file format is
 * documented in adapters/FORMAT.md.
 */
#include "state_int.h"

#include <errno.h>
#include <fcntl.h>
#include <dirent.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define HEADER_BYTES_MAX (64u << 20)
#define TENSORS_MAX 16384

/* --- small helpers ------------------------------------------------------- */

bool rk_state_id_valid(const char *id)
{
    if (!id || !*id)
        return false;
    size_t n = 0;
    for (const char *p = id; *p; p++, n++) {
        char c = *p;
        bool alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
        if (n == 0 ? !alnum : !(alnum || c == '_' || c == '-'))
            return false;
        if (n >= RK_STATE_ID_MAX)
            return false;
    }
    return true;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void rk_state_meta_init(struct rk_state_meta *meta, const struct rk_model *m)
{
    memset(meta, 0, sizeof *meta);
    meta->fingerprint = rk_model_fingerprint(m);
    meta->n_layer = rk_model_n_layer(m);
    meta->n_embd = rk_model_n_embd(m);
    meta->n_head = rk_model_n_head(m);
    meta->head_size = rk_model_head_size(m);
    meta->n_vocab = rk_model_n_vocab(m);
    meta->has_shift = true;
    snprintf(meta->method, sizeof meta->method, "upload");
    meta->created_ms = now_ms();
}

/* Which state part a tensor name denotes: blocks.{i}.att.time_state etc. */
enum part { PART_NONE, PART_WKV, PART_ATT_SHIFT, PART_FFN_SHIFT };
static enum part name_part(const char *name, size_t len, long *layer)
{
    char buf[96];
    if (len >= sizeof buf || len < 8 || memcmp(name, "blocks.", 7))
        return PART_NONE;
    memcpy(buf, name, len);
    buf[len] = 0;
    char *end;
    errno = 0;
    long i = strtol(buf + 7, &end, 10);
    if (end == buf + 7 || errno || i < 0 || i > 100000 || buf[7] == '+' || buf[7] == '-')
        return PART_NONE;
    *layer = i;
    if (!strcmp(end, ".att.time_state"))
        return PART_WKV;
    if (!strcmp(end, ".att.shift_state"))
        return PART_ATT_SHIFT;
    if (!strcmp(end, ".ffn.shift_state"))
        return PART_FFN_SHIFT;
    return PART_NONE;
}

/* --- safetensors: parse -------------------------------------------------- */

/* The `format` and `format_version` metadata as read (FORMAT.md). */
struct fmt_seen {
    bool fmt, ver;
    char f[41], v[21];
};

/* Tags that safetensors writers of other frameworks put in `format`
 * (torch's save_file writes "pt"): a foreign file, accepted as an upload
 * only (rk_state_file_parse without require_fingerprint), where it is
 * stamped with our metadata before it is stored. */
static bool foreign_format(const char *f)
{
    static const char *const tags[] = {"pt", "tf", "flax", "np", "mlx", "paddle"};
    for (size_t i = 0; i < sizeof tags / sizeof tags[0]; i++)
        if (!strcmp(f, tags[i]))
            return true;
    return false;
}

/* Unknown formats and versions are refused, never guessed at: a newer
 * rwkvd may lay a state out differently under the same tensor names. */
static int check_format(const struct fmt_seen *fs, bool require_fp, struct rk_errbuf *eb)
{
    if (fs->fmt && !strcmp(fs->f, "rwkvd-state")) {
        if (!fs->ver)
            return rk_errbuf_set(eb, RK_EFORMAT, "state file: format rwkvd-state without "
                                 "format_version");
        if (strcmp(fs->v, "1"))
            return rk_errbuf_set(eb, RK_EFORMAT, "state file: format_version '%s' is not "
                                 "supported (this rwkvd reads version 1)", fs->v);
        return RK_OK;
    }
    if (fs->fmt && !foreign_format(fs->f))
        return rk_errbuf_set(eb, RK_EFORMAT, "state file: unknown format '%s' (expected "
                             "rwkvd-state)", fs->f);
    if (fs->ver)
        return rk_errbuf_set(eb, RK_EFORMAT, "state file: format_version '%s' without format "
                             "rwkvd-state", fs->v);
    if (fs->fmt && require_fp)
        return rk_errbuf_set(eb, RK_EFORMAT, "state file: format '%s' is not rwkvd-state",
                             fs->f);
    return RK_OK;
}

static int meta_set(struct rk_state_meta *meta, const char *key, const char *val, bool *have_fp,
                    struct fmt_seen *fs, struct rk_errbuf *eb)
{
    char *end;
    if (!strcmp(key, "format") || !strcmp(key, "format_version")) {
        bool f = key[6] == 0;
        char *dst = f ? fs->f : fs->v;
        size_t cap = f ? sizeof fs->f : sizeof fs->v;
        if (strlen(val) >= cap)
            return rk_errbuf_set(eb, RK_EFORMAT, "state file: metadata %s is too long", key);
        memcpy(dst, val, strlen(val) + 1);
        *(f ? &fs->fmt : &fs->ver) = true;
        return RK_OK;
    }
    if (!strcmp(key, "fingerprint")) {
        errno = 0;
        unsigned long long v = strtoull(val, &end, 16);
        if (errno || *end || !*val || strlen(val) > 16)
            return rk_errbuf_set(eb, RK_EFORMAT, "state file: bad fingerprint '%.40s'", val);
        meta->fingerprint = v;
        *have_fp = true;
        return RK_OK;
    }
    long long *tgt = NULL;
    long long v;
    int *ip = NULL;
    if (!strcmp(key, "n_layer")) ip = &meta->n_layer;
    else if (!strcmp(key, "n_embd")) ip = &meta->n_embd;
    else if (!strcmp(key, "n_head")) ip = &meta->n_head;
    else if (!strcmp(key, "head_size")) ip = &meta->head_size;
    else if (!strcmp(key, "vocab")) ip = &meta->n_vocab;
    if (ip || !strcmp(key, "created") || !strcmp(key, "version")) {
        errno = 0;
        v = strtoll(val, &end, 10);
        if (errno || *end || !*val || v < 0 || (ip && v > 1 << 30))
            return rk_errbuf_set(eb, RK_EFORMAT, "state file: metadata %s is not a number", key);
        if (ip)
            *ip = (int)v;
        else if (!strcmp(key, "created"))
            meta->created_ms = v;
        else
            meta->version = (uint64_t)v;
        (void)tgt;
        return RK_OK;
    }
    if (!strcmp(key, "method"))
        snprintf(meta->method, sizeof meta->method, "%.31s", val);
    else if (!strcmp(key, "note"))
        snprintf(meta->note, sizeof meta->note, "%.127s", val);
    return RK_OK;
}

/* What a header's __metadata__ says, gathered by on_meta. */
struct meta_read {
    struct rk_state_meta md;
    bool have_fp;
    struct fmt_seen fs;
};

static int on_meta(void *user, const char *key, const char *val, struct rk_errbuf *eb)
{
    struct meta_read *mr = user;
    return meta_set(&mr->md, key, val, &mr->have_fp, &mr->fs, eb);
}

/* The container limits of a state file (adapters/FORMAT.md). */
static const struct rk_tf_opts st_opts = {
    .file = "state file",
    .header_max = HEADER_BYTES_MAX,
    .tensors_max = TENSORS_MAX,
    .meta = on_meta,
    .pth_nested = true,
};

/* Check the tensors a container holds against `m` and, when `state` is not
 * NULL, convert the state parts into it (the rest zero). A layer without its
 * time_state is `missing_rc` (RK_EFORMAT for safetensors, RK_EMISMATCH for
 * .pth, as before). `what` starts the messages. */
static int place_tensors(const struct rk_tf_list *tl, const struct rk_model *m, float *state,
                         const char *what, int missing_rc, bool key_rows, bool *any_shift,
                         struct rk_errbuf *eb)
{
    const int L = rk_model_n_layer(m), C = rk_model_n_embd(m), H = rk_model_n_head(m),
              N = rk_model_head_size(m);
    struct rk_state_layout lay;
    rk_state_layout(m, &lay);
    if (state)
        memset(state, 0, rk_state_len(m) * sizeof(float));
    unsigned char *seen = calloc((size_t)L, 1);
    if (!seen)
        return RK_ENOMEM;
    int rc = RK_OK;
    *any_shift = false;
    for (size_t i = 0; i < tl->n; i++) {
        const struct rk_tf_tensor *t = &tl->v[i];
        long li;
        enum part pt = name_part(t->name, strlen(t->name), &li);
        if (pt == PART_NONE)
            continue; // extra tensors (kernel methods) are carried but not used here
        if (li >= L) {
            rc = rk_errbuf_set(eb, RK_EMISMATCH, "%s: state has tensor %s, model has %d layers",
                               what, t->name, L);
            goto out;
        }
        if (t->dtype == RK_DTYPE_AUTO) {
            rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: tensor %s: dtype must be F32, F16 or BF16",
                               what, t->name);
            goto out;
        }
        bool shape_ok = pt == PART_WKV
                            ? (t->ndim == 3 && t->shape[0] == H && t->shape[1] == N &&
                               t->shape[2] == N)
                            : (t->ndim == 1 && t->shape[0] == C);
        if (!shape_ok) {
            rc = rk_errbuf_set(eb, RK_EMISMATCH, "%s: state tensor %s: shape does not match "
                               "the model (H=%d N=%d C=%d)", what, t->name, H, N, C);
            goto out;
        }
        size_t numel = pt == PART_WKV ? (size_t)H * N * N : (size_t)C;
        float *dst = !state ? NULL : state + (size_t)li * lay.layer_stride +
                     (pt == PART_WKV ? lay.wkv : pt == PART_ATT_SHIFT ? lay.att_shift : lay.ffn_shift);
        if (state)
            rk_elems_to_f32(dst, t->data, numel, t->dtype);
        if (state && key_rows && pt == PART_WKV) // [H][key][value] -> [H][value][key]
            for (int h = 0; h < H; h++) {
                float *S = dst + (size_t)h * N * N; // [N][N]
                for (int r = 0; r < N; r++)
                    for (int c = r + 1; c < N; c++) {
                        float x = S[(size_t)r * N + c];
                        S[(size_t)r * N + c] = S[(size_t)c * N + r];
                        S[(size_t)c * N + r] = x;
                    }
            }
        if (pt == PART_WKV)
            seen[li] = 1;
        else
            *any_shift = true;
    }
    for (int i = 0; i < L; i++)
        if (!seen[i]) {
            rc = rk_errbuf_set(eb, missing_rc, "%s: missing blocks.%d.att.time_state", what, i);
            goto out;
        }
out:
    free(seen);
    return rc;
}

/* A safetensors state: buf holds the whole file of file_len bytes, or (with
 * state NULL) at least its header. */
static int parse_safetensors(const uint8_t *buf, size_t len, size_t file_len,
                             const struct rk_model *m,
                             bool require_fp, float *state, struct rk_state_meta *meta,
                             struct rk_errbuf *eb)
{
    struct meta_read mr;
    memset(&mr, 0, sizeof mr);
    struct rk_tf_opts o = st_opts;
    o.user = &mr;
    struct rk_tf_list tl = {0};
    bool any_shift = false;
    int rc = rk_tf_safetensors_read(buf, len, file_len, &o, &tl, eb);
    if (rc != RK_OK)
        goto out;
    if ((rc = check_format(&mr.fs, require_fp, eb)) != RK_OK)
        goto out;
    // Fingerprint and shape checks against the model.
    const int L = rk_model_n_layer(m), C = rk_model_n_embd(m), H = rk_model_n_head(m);
    if (mr.have_fp && mr.md.fingerprint != rk_model_fingerprint(m)) {
        rc = rk_errbuf_set(eb, RK_EMISMATCH, "state was made for model %016" PRIx64
                           ", this model is %016" PRIx64, mr.md.fingerprint,
                           rk_model_fingerprint(m));
        goto out;
    }
    if (!mr.have_fp && require_fp) {
        rc = rk_errbuf_set(eb, RK_EFORMAT, "state file has no model fingerprint");
        goto out;
    }
    if ((mr.md.n_layer && mr.md.n_layer != L) || (mr.md.n_embd && mr.md.n_embd != C) ||
        (mr.md.n_head && mr.md.n_head != H)) {
        rc = rk_errbuf_set(eb, RK_EMISMATCH, "state is for L=%d C=%d H=%d, model has L=%d C=%d "
                           "H=%d", mr.md.n_layer, mr.md.n_embd, mr.md.n_head, L, C, H);
        goto out;
    }
    if ((rc = place_tensors(&tl, m, state, "state file", RK_EFORMAT, false, &any_shift, eb)) !=
        RK_OK)
        goto out;
    if (meta) {
        *meta = mr.md;
        meta->fingerprint = rk_model_fingerprint(m);
        meta->n_layer = L;
        meta->n_embd = C;
        meta->n_head = H;
        meta->head_size = rk_model_head_size(m);
        meta->n_vocab = rk_model_n_vocab(m);
        meta->has_shift = any_shift;
        if (!meta->method[0])
            snprintf(meta->method, sizeof meta->method, "upload");
    }
out:
    rk_tf_list_free(&tl);
    return rc;
}

/* --- .pth: RWKV-PEFT state checkpoints ---------------------------------- */

static int parse_pth(const uint8_t *buf, size_t len, const struct rk_model *m, float *state,
                     struct rk_state_meta *meta, struct rk_errbuf *eb)
{
    struct rk_tf_opts o = st_opts;
    o.file = "pth";
    o.meta = NULL;
    struct rk_tf_list tl = {0};
    bool any_shift;
    int rc = rk_tf_pth_read(buf, len, &o, &tl, eb);
    if (rc == RK_OK)
        rc = place_tensors(&tl, m, state, "pth", RK_EMISMATCH, false, &any_shift, eb);
    rk_tf_list_free(&tl);
    if (rc != RK_OK)
        return rc;
    if (meta) {
        rk_state_meta_init(meta, m);
        meta->has_shift = false;
        snprintf(meta->method, sizeof meta->method, "import-pth");
    }
    return RK_OK;
}

/* --- ai00 state files --------------------------------------------------- */

/* ai00_server's state files are safetensors written by its converter from
 * an RWKV-PEFT .pth: the same blocks.{i}.att.time_state tensors, in F16,
 * with the last two dimensions swapped ([H, key, value]) and
 * __metadata__ {"format": "pt"}; nothing else. Nothing in the bytes tells
 * them from a file in the native orientation, so the caller says which it
 * has (adapters/FORMAT.md). */
static int ai00_meta(void *user, const char *key, const char *val, struct rk_errbuf *eb)
{
    (void)user;
    if (!strcmp(key, "format") && strcmp(val, "pt"))
        return rk_errbuf_set(eb, RK_EFORMAT, "ai00 state: __metadata__ format is '%s'; an ai00 "
                             "state file says 'pt'", val);
    return RK_OK;
}

static int parse_ai00(const uint8_t *buf, size_t len, const struct rk_model *m, float *state,
                      struct rk_state_meta *meta, struct rk_errbuf *eb)
{
    if (rk_tf_is_zip(buf, len))
        return rk_errbuf_set(eb, RK_EFORMAT, "ai00 state: this is a .pth archive; an ai00 state "
                             "file is safetensors");
    struct rk_tf_opts o = st_opts;
    o.file = "ai00 state";
    o.meta = ai00_meta;
    o.user = NULL;
    struct rk_tf_list tl = {0};
    bool any_shift = false;
    int rc = rk_tf_safetensors_read(buf, len, len, &o, &tl, eb);
    if (rc == RK_OK)
        rc = place_tensors(&tl, m, state, "ai00 state", RK_EMISMATCH, true, &any_shift, eb);
    if (rc == RK_OK && any_shift)
        rc = rk_errbuf_set(eb, RK_EFORMAT, "ai00 state: token-shift tensors are not part of an "
                           "ai00 state file");
    rk_tf_list_free(&tl);
    if (rc != RK_OK)
        return rc;
    if (meta) {
        rk_state_meta_init(meta, m);
        meta->has_shift = false;
        snprintf(meta->method, sizeof meta->method, "import-ai00");
    }
    return RK_OK;
}

int rk_state_file_parse(const void *buf, size_t len, const struct rk_model *m,
                        bool require_fingerprint, float *state, struct rk_state_meta *meta,
                        struct rk_errbuf *eb)
{
    return rk_state_file_import(buf, len, m, require_fingerprint ? RK_STATE_FROM_STORE :
                                RK_STATE_FROM_AUTO, state, meta, eb);
}

int rk_state_file_import(const void *buf, size_t len, const struct rk_model *m,
                         enum rk_state_from from, float *state, struct rk_state_meta *meta,
                         struct rk_errbuf *eb)
{
    bool require_fingerprint = from == RK_STATE_FROM_STORE;
    if (!buf || !m || !state)
        return rk_errbuf_set(eb, RK_EINVAL, "state file: NULL argument");
    const uint8_t *b = buf;
    int rc = from == RK_STATE_FROM_AI00 ? parse_ai00(b, len, m, state, meta, eb)
             : rk_tf_is_zip(b, len)
                 ? parse_pth(b, len, m, state, meta, eb)
                 : parse_safetensors(b, len, len, m, require_fingerprint, state, meta, eb);
    // A NaN or Inf in a state would poison every token generated from it.
    if (rc == RK_OK) {
        size_t n = rk_state_len(m);
        for (size_t i = 0; i < n; i++)
            if (!(state[i] - state[i] == 0.0f))
                return rk_errbuf_set(eb, RK_ENUMERIC, "state file: element %zu is NaN or Inf", i);
    }
    return rc;
}

/* --- safetensors: encode ------------------------------------------------- */

/* Metadata strings go into the header as ASCII: other bytes become '?'
 * (the reader has always seen them so). */
static void put_ascii(struct rk_buf *b, const char *s)
{
    char tmp[256];
    size_t n = 0;
    for (; *s && n < sizeof tmp; s++)
        tmp[n++] = (unsigned char)*s >= 0x7f ? '?' : *s;
    rk_buf_json_str(b, tmp, n);
}

int rk_state_file_encode(const struct rk_model *m, const float *state,
                         const struct rk_state_meta *meta, void **out, size_t *len)
{
    *out = NULL;
    *len = 0;
    const int L = rk_model_n_layer(m), C = rk_model_n_embd(m), H = rk_model_n_head(m),
              N = rk_model_head_size(m);
    struct rk_state_layout lay;
    rk_state_layout(m, &lay);
    struct rk_state_meta md;
    if (meta)
        md = *meta;
    else
        rk_state_meta_init(&md, m);
    struct rk_buf h = {0};
    rk_buf_puts(&h, "{\"__metadata__\":{");
    rk_buf_printf(&h, "\"format\":\"rwkvd-state\",\"format_version\":\"1\",\"fingerprint\":\"%016" PRIx64
              "\",\"n_layer\":\"%d\",\"n_embd\":\"%d\",\"n_head\":\"%d\",\"head_size\":\"%d\","
              "\"vocab\":\"%d\",\"created\":\"%" PRId64 "\",\"version\":\"%" PRIu64 "\",",
              rk_model_fingerprint(m), L, C, H, N, rk_model_n_vocab(m), md.created_ms, md.version);
    rk_buf_puts(&h, "\"method\":");
    put_ascii(&h, md.method);
    rk_buf_puts(&h, ",\"note\":");
    put_ascii(&h, md.note);
    rk_buf_puts(&h, "}");
    size_t off = 0, wkv_bytes = (size_t)H * N * N * 4, sh_bytes = (size_t)C * 4;
    for (int i = 0; i < L; i++) {
        rk_buf_printf(&h, ",\"blocks.%d.att.time_state\":{\"dtype\":\"F32\",\"shape\":[%d,%d,%d],"
                  "\"data_offsets\":[%zu,%zu]}", i, H, N, N, off, off + wkv_bytes);
        off += wkv_bytes;
        rk_buf_printf(&h, ",\"blocks.%d.att.shift_state\":{\"dtype\":\"F32\",\"shape\":[%d],"
                  "\"data_offsets\":[%zu,%zu]}", i, C, off, off + sh_bytes);
        off += sh_bytes;
        rk_buf_printf(&h, ",\"blocks.%d.ffn.shift_state\":{\"dtype\":\"F32\",\"shape\":[%d],"
                  "\"data_offsets\":[%zu,%zu]}", i, C, off, off + sh_bytes);
        off += sh_bytes;
    }
    rk_buf_puts(&h, "}");
    while (!h.oom && h.len % 8)
        rk_buf_puts(&h, " ");
    if (h.oom) {
        rk_buf_free(&h);
        return RK_ENOMEM;
    }
    size_t total = 8 + h.len + off;
    uint8_t *b = malloc(total);
    if (!b) {
        rk_buf_free(&h);
        return RK_ENOMEM;
    }
    uint64_t hl = h.len;
    for (int i = 0; i < 8; i++)
        b[i] = (uint8_t)(hl >> (8 * i));
    memcpy(b + 8, h.p, h.len);
    rk_buf_free(&h);
    uint8_t *d = b + 8 + hl;
    // Little-endian hosts only (x86-64, aarch64), like the rest of rwkvd.
    for (int i = 0; i < L; i++) {
        const float *ls = state + (size_t)i * lay.layer_stride;
        memcpy(d, ls + lay.wkv, wkv_bytes);
        d += wkv_bytes;
        memcpy(d, ls + lay.att_shift, sh_bytes);
        d += sh_bytes;
        memcpy(d, ls + lay.ffn_shift, sh_bytes);
        d += sh_bytes;
    }
    *out = b;
    *len = total;
    return RK_OK;
}

/* --- files --------------------------------------------------------------- */

int rk_file_clean_temps_each(const char *parent, const char *sub)
{
    int tfd = open(parent, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (tfd < 0)
        return 0;
    int dup_fd = fcntl(tfd, F_DUPFD_CLOEXEC, 0);
    DIR *d = dup_fd >= 0 ? fdopendir(dup_fd) : NULL;
    if (!d) {
        if (dup_fd >= 0)
            close(dup_fd);
        close(tfd);
        return 0;
    }
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!rk_state_id_valid(e->d_name))
            continue;
        int t = openat(tfd, e->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        int sd = t >= 0 ? openat(t, sub, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC)
                        : -1;
        if (sd >= 0) {
            char what[300];
            snprintf(what, sizeof what, "%s/%s/%s", parent, e->d_name, sub);
            int k = rk_file_clean_temps_at(sd, what);
            n += k > 0 ? k : 0;
            close(sd);
        }
        if (t >= 0)
            close(t);
    }
    closedir(d);
    close(tfd);
    return n;
}

int rk_state_file_save(const char *path, const struct rk_model *m, const float *state,
                       const struct rk_state_meta *meta, struct rk_errbuf *eb)
{
    void *b;
    size_t n;
    int rc = rk_state_file_encode(m, state, meta, &b, &n);
    if (rc != RK_OK)
        return rk_errbuf_set(eb, rc, "encode state: %s", rk_strerror(rc));
    rc = rk_file_write_atomic(path, b, n, eb);
    free(b);
    return rc;
}

int rk__state_file_head(const char *path, const struct rk_model *m, struct rk_state_meta *meta,
                        size_t *file_len, struct rk_errbuf *eb)
{
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return rk_errbuf_set(eb, errno == ENOENT ? RK_ENOTFOUND : RK_EIO, "open %s: %s", path,
                             strerror(errno));
    struct stat st;
    uint8_t h8[8];
    int rc = RK_EFORMAT;
    uint8_t *b = NULL;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size < 8 ||
        pread(fd, h8, 8, 0) != 8) {
        rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: not a state file", path);
        goto out;
    }
    *file_len = (size_t)st.st_size;
    uint64_t hl;
    if (rk_tf_safetensors_header_len(h8, (uint64_t)st.st_size, &st_opts, &hl, NULL) != RK_OK) {
        rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: bad header length", path);
        goto out;
    }
    if (!(b = malloc(8 + hl))) {
        rc = RK_ENOMEM;
        goto out;
    }
    memcpy(b, h8, 8);
    if (pread(fd, b + 8, hl, 8) != (ssize_t)hl) {
        rc = rk_errbuf_set(eb, RK_EIO, "%s: short read", path);
        goto out;
    }
    rc = parse_safetensors(b, 8 + hl, (size_t)st.st_size, m, true, NULL, meta, eb);
out:
    free(b);
    close(fd);
    return rc;
}

int rk_state_file_load(const char *path, const struct rk_model *m, float *state,
                       struct rk_state_meta *meta, struct rk_errbuf *eb)
{
    void *b;
    size_t n;
    int rc = rk_file_read_all(path, (size_t)1 << 32, &b, &n, eb);
    if (rc != RK_OK)
        return rc;
    rc = rk_state_file_parse(b, n, m, true, state, meta, eb);
    free(b);
    return rc;
}

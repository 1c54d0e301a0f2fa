/*
 * state_file.c - state-adapter files: safetensors encode/parse, import of
 * RWKV-PEFT .pth state checkpoints, atomic file writes.
 *
 * Every input is treated as hostile: sizes, offsets and shapes are checked
 * against the real buffer length with overflow-safe arithmetic before any
 * tensor byte is read. The safetensors header is parsed by a small JSON
 * reader written for exactly that header (objects, strings, integer arrays);
 * the .pth reader understands the stored (uncompressed) zip layout torch.save
 * writes and the subset of the pickle protocol a state dict of tensors uses.
 * The file format is documented in adapters/FORMAT.md.
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

static uint64_t rd_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}
static uint32_t rd_le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint16_t rd_le16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }

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

/* --- a minimal JSON reader for the safetensors header -------------------- */

struct jr {
    const char *p, *end;
    bool bad;
};

static void jr_ws(struct jr *r)
{
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r'))
        r->p++;
}
static bool jr_lit(struct jr *r, char c)
{
    jr_ws(r);
    if (r->p < r->end && *r->p == c) {
        r->p++;
        return true;
    }
    return false;
}
/* A string into out (cap bytes incl. NUL; longer strings are an error). */
static bool jr_str(struct jr *r, char *out, size_t cap)
{
    size_t n = 0;
    if (!jr_lit(r, '"'))
        return false;
    while (r->p < r->end && *r->p != '"') {
        char c = *r->p++;
        if ((unsigned char)c < 0x20)
            return false;
        if (c == '\\') {
            if (r->p >= r->end)
                return false;
            char e = *r->p++;
            switch (e) {
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case 'r': c = '\r'; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case '"': case '\\': case '/': c = e; break;
            case 'u': {
                if (r->end - r->p < 4)
                    return false;
                unsigned v = 0;
                for (int i = 0; i < 4; i++) {
                    char h = *r->p++;
                    v <<= 4;
                    if (h >= '0' && h <= '9') v |= (unsigned)(h - '0');
                    else if (h >= 'a' && h <= 'f') v |= (unsigned)(h - 'a' + 10);
                    else if (h >= 'A' && h <= 'F') v |= (unsigned)(h - 'A' + 10);
                    else return false;
                }
                c = v < 0x80 && v > 0 ? (char)v : '?'; // metadata is ASCII in practice
                break;
            }
            default:
                return false;
            }
        }
        if (n + 1 >= cap)
            return false;
        out[n++] = c;
    }
    if (r->p >= r->end)
        return false;
    r->p++;
    out[n] = 0;
    return true;
}
static bool jr_uint(struct jr *r, uint64_t *v)
{
    jr_ws(r);
    uint64_t x = 0;
    const char *s = r->p;
    while (r->p < r->end && *r->p >= '0' && *r->p <= '9') {
        if (x > (UINT64_MAX - 9) / 10)
            return false;
        x = x * 10 + (uint64_t)(*r->p++ - '0');
    }
    *v = x;
    return r->p > s && r->p - s <= 19;
}
/* An array of up to cap unsigned integers. */
static bool jr_uints(struct jr *r, uint64_t *v, int cap, int *n)
{
    *n = 0;
    if (!jr_lit(r, '['))
        return false;
    if (jr_lit(r, ']'))
        return true;
    do {
        if (*n >= cap || !jr_uint(r, &v[*n]))
            return false;
        (*n)++;
    } while (jr_lit(r, ','));
    return jr_lit(r, ']');
}
/* Skip any JSON value (bounded depth). */
static bool jr_skip(struct jr *r, int depth)
{
    char tmp[4096];
    jr_ws(r);
    if (r->p >= r->end || depth > 32)
        return false;
    char c = *r->p;
    if (c == '"')
        return jr_str(r, tmp, sizeof tmp);
    if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        r->p++;
        if (jr_lit(r, close))
            return true;
        do {
            if (c == '{') {
                if (!jr_str(r, tmp, sizeof tmp) || !jr_lit(r, ':'))
                    return false;
            }
            if (!jr_skip(r, depth + 1))
                return false;
        } while (jr_lit(r, ','));
        return jr_lit(r, close);
    }
    const char *s = r->p;
    while (r->p < r->end && (strchr("0123456789+-.eE", *r->p) || (*r->p >= 'a' && *r->p <= 'z')))
        r->p++;
    return r->p > s;
}

/* --- safetensors: parse -------------------------------------------------- */

struct st_tensor {
    char name[96];
    enum rk_dtype dtype;
    bool dtype_ok;
    uint64_t shape[4];
    int n_shape;
    uint64_t begin, end; /* offsets into the data section */
};

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

static int parse_safetensors(const uint8_t *buf, size_t len, size_t file_len,
                             const struct rk_model *m,
                             bool require_fp, float *state, struct rk_state_meta *meta,
                             struct rk_errbuf *eb)
{
    int rc = RK_EFORMAT;
    struct st_tensor *ts = NULL;
    size_t n_ts = 0, cap_ts = 0;
    bool have_fp = false;
    struct fmt_seen fs = {0};
    struct rk_state_meta md;
    memset(&md, 0, sizeof md);

    if (len < 8)
        return rk_errbuf_set(eb, RK_EFORMAT, "state file: truncated (%zu bytes)", len);
    uint64_t hlen = rd_le64(buf);
    if (hlen < 2 || hlen > HEADER_BYTES_MAX || hlen > len - 8 || file_len < len)
        return rk_errbuf_set(eb, RK_EFORMAT, "state file: header length %" PRIu64
                             " does not fit a %zu-byte file", hlen, file_len);
    const uint8_t *data = buf + 8 + hlen;
    uint64_t data_len = file_len - 8 - hlen; // with state == NULL only the header is in buf
    struct jr r = {(const char *)buf + 8, (const char *)buf + 8 + hlen, false};
    char key[256], val[512];

    if (!jr_lit(&r, '{'))
        goto bad_json;
    if (!jr_lit(&r, '}')) {
        do {
            if (!jr_str(&r, key, sizeof key) || !jr_lit(&r, ':'))
                goto bad_json;
            if (!strcmp(key, "__metadata__")) {
                if (!jr_lit(&r, '{'))
                    goto bad_json;
                if (!jr_lit(&r, '}')) {
                    do {
                        if (!jr_str(&r, key, sizeof key) || !jr_lit(&r, ':'))
                            goto bad_json;
                        if (!jr_str(&r, val, sizeof val))
                            goto bad_json;
                        if ((rc = meta_set(&md, key, val, &have_fp, &fs, eb)) != RK_OK)
                            goto out;
                    } while (jr_lit(&r, ','));
                    if (!jr_lit(&r, '}'))
                        goto bad_json;
                }
                continue;
            }
            if (n_ts >= TENSORS_MAX) {
                rc = rk_errbuf_set(eb, RK_EFORMAT, "state file: more than %d tensors", TENSORS_MAX);
                goto out;
            }
            if (n_ts == cap_ts) {
                size_t nc = cap_ts ? cap_ts * 2 : 64;
                void *p = realloc(ts, nc * sizeof *ts);
                if (!p) {
                    rc = RK_ENOMEM;
                    goto out;
                }
                ts = p;
                cap_ts = nc;
            }
            struct st_tensor *t = &ts[n_ts++];
            memset(t, 0, sizeof *t);
            snprintf(t->name, sizeof t->name, "%.95s", key);
            bool got_dtype = false, got_shape = false, got_off = false;
            if (!jr_lit(&r, '{'))
                goto bad_json;
            if (!jr_lit(&r, '}')) {
                do {
                    if (!jr_str(&r, key, sizeof key) || !jr_lit(&r, ':'))
                        goto bad_json;
                    if (!strcmp(key, "dtype")) {
                        if (!jr_str(&r, val, sizeof val))
                            goto bad_json;
                        got_dtype = true;
                        t->dtype_ok = true;
                        if (!strcmp(val, "F32")) t->dtype = RK_DTYPE_F32;
                        else if (!strcmp(val, "F16")) t->dtype = RK_DTYPE_F16;
                        else if (!strcmp(val, "BF16")) t->dtype = RK_DTYPE_BF16;
                        else t->dtype_ok = false;
                    } else if (!strcmp(key, "shape")) {
                        if (!jr_uints(&r, t->shape, 4, &t->n_shape))
                            goto bad_json;
                        got_shape = true;
                    } else if (!strcmp(key, "data_offsets")) {
                        uint64_t o[2];
                        int n;
                        if (!jr_uints(&r, o, 2, &n) || n != 2)
                            goto bad_json;
                        t->begin = o[0];
                        t->end = o[1];
                        got_off = true;
                    } else if (!jr_skip(&r, 0)) {
                        goto bad_json;
                    }
                } while (jr_lit(&r, ','));
                if (!jr_lit(&r, '}'))
                    goto bad_json;
            }
            if (!got_dtype || !got_shape || !got_off) {
                rc = rk_errbuf_set(eb, RK_EFORMAT, "state file: tensor %s lacks dtype, shape or "
                                   "data_offsets", t->name);
                goto out;
            }
            if (t->begin > t->end || t->end > data_len) {
                rc = rk_errbuf_set(eb, RK_EFORMAT, "state file: tensor %s: data [%" PRIu64
                                   ", %" PRIu64 ") outside the %" PRIu64 "-byte data section",
                                   t->name, t->begin, t->end, data_len);
                goto out;
            }
        } while (jr_lit(&r, ','));
        if (!jr_lit(&r, '}'))
            goto bad_json;
    }
    jr_ws(&r);
    if (r.p != r.end)
        goto bad_json;
    // Overlapping tensors are a sign of a crafted file.
    for (size_t i = 0; i < n_ts; i++)
        for (size_t j = i + 1; j < n_ts; j++)
            if (ts[i].begin < ts[j].end && ts[j].begin < ts[i].end) {
                rc = rk_errbuf_set(eb, RK_EFORMAT, "state file: tensors %s and %s overlap",
                                   ts[i].name, ts[j].name);
                goto out;
            }

    if ((rc = check_format(&fs, require_fp, eb)) != RK_OK)
        goto out;
    rc = RK_EFORMAT;
    // Fingerprint and shape checks against the model.
    const int L = rk_model_n_layer(m), C = rk_model_n_embd(m), H = rk_model_n_head(m),
              N = rk_model_head_size(m);
    if (have_fp && md.fingerprint != rk_model_fingerprint(m)) {
        rc = rk_errbuf_set(eb, RK_EMISMATCH, "state was made for model %016" PRIx64
                           ", this model is %016" PRIx64, md.fingerprint, rk_model_fingerprint(m));
        goto out;
    }
    if (!have_fp && require_fp) {
        rc = rk_errbuf_set(eb, RK_EFORMAT, "state file has no model fingerprint");
        goto out;
    }
    if ((md.n_layer && md.n_layer != L) || (md.n_embd && md.n_embd != C) ||
        (md.n_head && md.n_head != H)) {
        rc = rk_errbuf_set(eb, RK_EMISMATCH, "state is for L=%d C=%d H=%d, model has L=%d C=%d "
                           "H=%d", md.n_layer, md.n_embd, md.n_head, L, C, H);
        goto out;
    }

    struct rk_state_layout lay;
    rk_state_layout(m, &lay);
    if (state)
        memset(state, 0, rk_state_len(m) * sizeof(float));
    unsigned char *seen = calloc((size_t)L, 1);
    if (!seen) {
        rc = RK_ENOMEM;
        goto out;
    }
    bool any_shift = false;
    for (size_t i = 0; i < n_ts; i++) {
        struct st_tensor *t = &ts[i];
        long li;
        enum part pt = name_part(t->name, strlen(t->name), &li);
        if (pt == PART_NONE)
            continue; // extra tensors (kernel methods) are carried but not used here
        if (li >= L) {
            free(seen);
            rc = rk_errbuf_set(eb, RK_EMISMATCH, "state has tensor %s, model has %d layers",
                               t->name, L);
            goto out;
        }
        if (!t->dtype_ok) {
            free(seen);
            rc = rk_errbuf_set(eb, RK_EFORMAT, "state file: tensor %s: dtype must be F32, F16 "
                               "or BF16", t->name);
            goto out;
        }
        uint64_t numel = 1;
        for (int d = 0; d < t->n_shape; d++)
            numel = t->shape[d] > (1ull << 40) ? (1ull << 62) : numel * t->shape[d];
        bool shape_ok = pt == PART_WKV
                            ? (t->n_shape == 3 && t->shape[0] == (uint64_t)H &&
                               t->shape[1] == (uint64_t)N && t->shape[2] == (uint64_t)N)
                            : (t->n_shape == 1 && t->shape[0] == (uint64_t)C);
        if (!shape_ok) {
            free(seen);
            rc = rk_errbuf_set(eb, RK_EMISMATCH, "state tensor %s: shape does not match the "
                               "model (H=%d N=%d C=%d)", t->name, H, N, C);
            goto out;
        }
        if (t->end - t->begin != numel * (t->dtype == RK_DTYPE_F32 ? 4 : 2)) {
            free(seen);
            rc = rk_errbuf_set(eb, RK_EFORMAT, "state file: tensor %s: %" PRIu64 " bytes for %"
                               PRIu64 " elements", t->name, t->end - t->begin, numel);
            goto out;
        }
        float *dst = !state ? NULL : state + (size_t)li * lay.layer_stride +
                     (pt == PART_WKV ? lay.wkv : pt == PART_ATT_SHIFT ? lay.att_shift : lay.ffn_shift);
        if (state)
            rk_elems_to_f32(dst, data + t->begin, (size_t)numel, t->dtype);
        if (pt == PART_WKV)
            seen[li] = 1;
        else
            any_shift = true;
    }
    for (int i = 0; i < L; i++)
        if (!seen[i]) {
            free(seen);
            rc = rk_errbuf_set(eb, RK_EFORMAT, "state file: missing blocks.%d.att.time_state", i);
            goto out;
        }
    free(seen);
    if (meta) {
        *meta = md;
        meta->fingerprint = rk_model_fingerprint(m);
        meta->n_layer = L;
        meta->n_embd = C;
        meta->n_head = H;
        meta->head_size = N;
        meta->n_vocab = rk_model_n_vocab(m);
        meta->has_shift = any_shift;
        if (!meta->method[0])
            snprintf(meta->method, sizeof meta->method, "upload");
    }
    rc = RK_OK;
    goto out;
bad_json:
    rc = rk_errbuf_set(eb, RK_EFORMAT, "state file: malformed safetensors header near byte %zu",
                       (size_t)(r.p - (const char *)buf));
out:
    free(ts);
    return rc;
}

/* --- .pth: stored zip + pickle ------------------------------------------- */

struct zent {
    const char *name;
    size_t name_len;
    const uint8_t *data;
    size_t len;
};

/* List the entries of a stored (uncompressed) zip. */
static int zip_list(const uint8_t *b, size_t len, struct zent **out, size_t *n_out,
                    struct rk_errbuf *eb)
{
    *out = NULL;
    *n_out = 0;
    if (len < 22)
        return rk_errbuf_set(eb, RK_EFORMAT, "pth: too short for a zip");
    size_t eocd = SIZE_MAX;
    size_t lo = len > 22 + 65535 ? len - 22 - 65535 : 0;
    for (size_t i = len - 22 + 1; i-- > lo;)
        if (rd_le32(b + i) == 0x06054b50u) {
            eocd = i;
            break;
        }
    if (eocd == SIZE_MAX)
        return rk_errbuf_set(eb, RK_EFORMAT, "pth: no zip end-of-directory record");
    size_t n = rd_le16(b + eocd + 10);
    uint64_t cd_size = rd_le32(b + eocd + 12), cd_off = rd_le32(b + eocd + 16);
    if (n == 0xffff || cd_off == 0xffffffffu) {
        // zip64: find the zip64 end record through its locator
        if (eocd < 20 || rd_le32(b + eocd - 20) != 0x07064b50u)
            return rk_errbuf_set(eb, RK_EFORMAT, "pth: bad zip64 locator");
        uint64_t z = rd_le64(b + eocd - 20 + 8);
        if (z > len - 56 || rd_le32(b + z) != 0x06064b50u)
            return rk_errbuf_set(eb, RK_EFORMAT, "pth: bad zip64 end record");
        uint64_t n64 = rd_le64(b + z + 32);
        if (n64 > 1000000)
            return rk_errbuf_set(eb, RK_EFORMAT, "pth: too many zip entries");
        n = (size_t)n64;
        cd_size = rd_le64(b + z + 40);
        cd_off = rd_le64(b + z + 48);
    }
    if (cd_off > len || cd_size > len - cd_off)
        return rk_errbuf_set(eb, RK_EFORMAT, "pth: central directory outside the file");
    struct zent *es = calloc(n ? n : 1, sizeof *es);
    if (!es)
        return RK_ENOMEM;
    size_t p = (size_t)cd_off, end = (size_t)(cd_off + cd_size);
    for (size_t i = 0; i < n; i++) {
        if (end - p < 46 || rd_le32(b + p) != 0x02014b50u)
            goto bad;
        unsigned method = rd_le16(b + p + 10);
        uint64_t csize = rd_le32(b + p + 20), usize = rd_le32(b + p + 24);
        size_t nlen = rd_le16(b + p + 28), xlen = rd_le16(b + p + 30), clen = rd_le16(b + p + 32);
        uint64_t loff = rd_le32(b + p + 42);
        if (end - p - 46 < nlen + xlen + clen)
            goto bad;
        const uint8_t *x = b + p + 46 + nlen;
        // zip64 extra field: sizes/offset replaced by 0xffffffff come from it, in order
        for (size_t q = 0; q + 4 <= xlen;) {
            unsigned id = rd_le16(x + q), sz = rd_le16(x + q + 2);
            if (q + 4 + sz > xlen)
                break;
            if (id == 1) {
                size_t k = q + 4;
                if (usize == 0xffffffffu && k + 8 <= q + 4 + sz) { usize = rd_le64(x + k); k += 8; }
                if (csize == 0xffffffffu && k + 8 <= q + 4 + sz) { csize = rd_le64(x + k); k += 8; }
                if (loff == 0xffffffffu && k + 8 <= q + 4 + sz) { loff = rd_le64(x + k); }
            }
            q += 4 + sz;
        }
        if (method != 0 || csize != usize) {
            free(es);
            return rk_errbuf_set(eb, RK_EFORMAT, "pth: entry %.*s is compressed (only stored "
                                 "entries are supported)", (int)(nlen > 80 ? 80 : nlen), b + p + 46);
        }
        if (loff > len || len - loff < 30 || rd_le32(b + loff) != 0x04034b50u)
            goto bad;
        size_t lnl = rd_le16(b + loff + 26), lxl = rd_le16(b + loff + 28);
        uint64_t doff = loff + 30 + lnl + lxl;
        if (doff > len || csize > len - doff)
            goto bad;
        es[i].name = (const char *)b + p + 46;
        es[i].name_len = nlen;
        es[i].data = b + doff;
        es[i].len = (size_t)csize;
        p += 46 + nlen + xlen + clen;
    }
    *out = es;
    *n_out = n;
    return RK_OK;
bad:
    free(es);
    return rk_errbuf_set(eb, RK_EFORMAT, "pth: corrupt zip directory");
}

enum pk_kind { PK_NONE, PK_MARK, PK_INT, PK_FLOAT, PK_STR, PK_SEQ, PK_DICT, PK_GLOBAL,
               PK_STORAGE, PK_TENSOR, PK_OTHER };

struct pk {
    enum pk_kind kind;
    int64_t i;
    const char *s; /* PK_STR: points into the pickle; PK_GLOBAL: "module.name" (owned) */
    size_t slen;
    struct pk **items; /* PK_SEQ: items; PK_DICT: key, value pairs */
    size_t n, cap;
    /* PK_STORAGE / PK_TENSOR */
    enum rk_dtype dtype;
    bool dtype_ok;
    const char *key;
    size_t key_len;
    int64_t offset, shape[4], stride[4];
    int n_dim;
};

struct pkvm {
    struct pk **all; /* every allocated value, freed at the end */
    size_t n_all, cap_all;
    struct pk **stack;
    size_t sp, cap_stack;
    struct pk **memo;
    size_t cap_memo;
};

static struct pk *pk_new(struct pkvm *vm, enum pk_kind k)
{
    if (vm->n_all == vm->cap_all) {
        size_t nc = vm->cap_all ? vm->cap_all * 2 : 256;
        if (nc > (1u << 22))
            return NULL;
        void *p = realloc(vm->all, nc * sizeof *vm->all);
        if (!p)
            return NULL;
        vm->all = p;
        vm->cap_all = nc;
    }
    struct pk *v = calloc(1, sizeof *v);
    if (!v)
        return NULL;
    v->kind = k;
    vm->all[vm->n_all++] = v;
    return v;
}
static bool pk_push(struct pkvm *vm, struct pk *v)
{
    if (!v)
        return false;
    if (vm->sp == vm->cap_stack) {
        size_t nc = vm->cap_stack ? vm->cap_stack * 2 : 64;
        if (nc > (1u << 20))
            return false;
        void *p = realloc(vm->stack, nc * sizeof *vm->stack);
        if (!p)
            return false;
        vm->stack = p;
        vm->cap_stack = nc;
    }
    vm->stack[vm->sp++] = v;
    return true;
}
static bool pk_append(struct pk *seq, struct pk *v)
{
    if (seq->n == seq->cap) {
        size_t nc = seq->cap ? seq->cap * 2 : 8;
        if (nc > (1u << 22))
            return false;
        void *p = realloc(seq->items, nc * sizeof *seq->items);
        if (!p)
            return false;
        seq->items = p;
        seq->cap = nc;
    }
    seq->items[seq->n++] = v;
    return true;
}
/* Index of the topmost MARK, or SIZE_MAX. */
static size_t pk_mark(struct pkvm *vm)
{
    for (size_t i = vm->sp; i-- > 0;)
        if (vm->stack[i]->kind == PK_MARK)
            return i;
    return SIZE_MAX;
}
static bool pk_is_global(const struct pk *v, const char *name)
{
    return v && v->kind == PK_GLOBAL && !strcmp(v->s, name);
}
static bool pk_int_arr(const struct pk *t, int64_t *out, int cap, int *n)
{
    if (!t || t->kind != PK_SEQ || t->n > (size_t)cap)
        return false;
    for (size_t i = 0; i < t->n; i++) {
        if (t->items[i]->kind != PK_INT)
            return false;
        out[i] = t->items[i]->i;
    }
    *n = (int)t->n;
    return true;
}

/* Apply a callable to an argument tuple: the few torch functions a state
 * dict needs; anything else becomes an opaque value. */
static struct pk *pk_call(struct pkvm *vm, struct pk *fn, struct pk *args)
{
    if (args->kind != PK_SEQ)
        return pk_new(vm, PK_OTHER);
    if (pk_is_global(fn, "collections.OrderedDict") && args->n == 0)
        return pk_new(vm, PK_DICT);
    if (pk_is_global(fn, "torch._utils._rebuild_parameter") && args->n >= 1)
        return args->items[0];
    if (pk_is_global(fn, "torch._utils._rebuild_tensor_v2") && args->n >= 4) {
        struct pk *st = args->items[0];
        struct pk *t = pk_new(vm, PK_TENSOR);
        if (!t)
            return NULL;
        if (st->kind != PK_STORAGE || args->items[1]->kind != PK_INT)
            return t; // left with key NULL: rejected when used
        int nd, ns;
        if (!pk_int_arr(args->items[2], t->shape, 4, &nd) ||
            !pk_int_arr(args->items[3], t->stride, 4, &ns) || nd != ns)
            return t;
        t->n_dim = nd;
        t->offset = args->items[1]->i;
        t->dtype = st->dtype;
        t->dtype_ok = st->dtype_ok;
        t->key = st->key;
        t->key_len = st->key_len;
        return t;
    }
    return pk_new(vm, PK_OTHER);
}

static int pickle_run(struct pkvm *vm, const uint8_t *b, size_t len, struct pk **result,
                      struct rk_errbuf *eb)
{
    size_t p = 0;
#define NEED(k)                                                                                  \
    do {                                                                                         \
        if (len - p < (size_t)(k))                                                               \
            goto bad;                                                                            \
    } while (0)
#define POP(v)                                                                                   \
    do {                                                                                         \
        if (vm->sp == 0)                                                                         \
            goto bad;                                                                            \
        (v) = vm->stack[--vm->sp];                                                               \
    } while (0)
    while (p < len) {
        uint8_t op = b[p++];
        struct pk *v = NULL, *a = NULL, *c = NULL;
        size_t n, mk;
        switch (op) {
        case 0x80: NEED(1); p++; break;                      // PROTO
        case 0x95: NEED(8); p += 8; break;                   // FRAME
        case '}': if (!pk_push(vm, pk_new(vm, PK_DICT))) goto bad; break;
        case ']': case ')': if (!pk_push(vm, pk_new(vm, PK_SEQ))) goto bad; break;
        case '(': if (!pk_push(vm, pk_new(vm, PK_MARK))) goto bad; break;
        case 'N': if (!pk_push(vm, pk_new(vm, PK_NONE))) goto bad; break;
        case 0x88: case 0x89:                                // NEWTRUE / NEWFALSE
            if (!(v = pk_new(vm, PK_INT))) goto bad;
            v->i = op == 0x88;
            if (!pk_push(vm, v)) goto bad;
            break;
        case 'X': case 0x8c: case 0x8d: case 'T': case 'U': // strings
            if (op == 'X' || op == 'T') { NEED(4); n = rd_le32(b + p); p += 4; }
            else if (op == 0x8d) {
                NEED(8);
                uint64_t n64 = rd_le64(b + p);
                p += 8;
                if (n64 > len)
                    goto bad;
                n = (size_t)n64;
            }
            else { NEED(1); n = b[p++]; }
            NEED(n);
            if (!(v = pk_new(vm, PK_STR))) goto bad;
            v->s = (const char *)b + p;
            v->slen = n;
            p += n;
            if (!pk_push(vm, v)) goto bad;
            break;
        case 'J': case 'K': case 'M': case 0x8a:             // integers
            if (!(v = pk_new(vm, PK_INT))) goto bad;
            if (op == 'J') { NEED(4); v->i = (int32_t)rd_le32(b + p); p += 4; }
            else if (op == 'K') { NEED(1); v->i = b[p++]; }
            else if (op == 'M') { NEED(2); v->i = rd_le16(b + p); p += 2; }
            else {
                NEED(1); n = b[p++]; NEED(n);
                if (n > 8) goto bad;
                uint64_t u = 0;
                for (size_t k = 0; k < n; k++) u |= (uint64_t)b[p + k] << (8 * k);
                if (n > 0 && n < 8 && (b[p + n - 1] & 0x80)) u |= ~0ull << (8 * n);
                v->i = (int64_t)u;
                p += n;
            }
            if (!pk_push(vm, v)) goto bad;
            break;
        case 'G': NEED(8); p += 8; if (!pk_push(vm, pk_new(vm, PK_FLOAT))) goto bad; break;
        case 'c': case 0x93: {                               // GLOBAL / STACK_GLOBAL
            const char *mod, *name;
            size_t ml, nl;
            if (op == 'c') {
                const uint8_t *e1 = memchr(b + p, '\n', len - p);
                if (!e1) goto bad;
                const uint8_t *e2 = memchr(e1 + 1, '\n', len - (size_t)(e1 + 1 - b));
                if (!e2) goto bad;
                mod = (const char *)b + p; ml = (size_t)(e1 - (b + p));
                name = (const char *)e1 + 1; nl = (size_t)(e2 - e1 - 1);
                p = (size_t)(e2 + 1 - b);
            } else {
                POP(c); POP(a);
                if (a->kind != PK_STR || c->kind != PK_STR) goto bad;
                mod = a->s; ml = a->slen; name = c->s; nl = c->slen;
            }
            if (ml + nl > 200) goto bad;
            if (!(v = pk_new(vm, PK_GLOBAL))) goto bad;
            char *s = malloc(ml + nl + 2);
            if (!s) goto bad;
            memcpy(s, mod, ml); s[ml] = '.'; memcpy(s + ml + 1, name, nl); s[ml + nl + 1] = 0;
            v->s = s;
            v->slen = ml + nl + 1;
            if (!pk_push(vm, v)) goto bad;
            break;
        }
        case 'q': case 'r': case 0x94: {                     // BINPUT / LONG_BINPUT / MEMOIZE
            size_t idx;
            if (op == 'q') { NEED(1); idx = b[p++]; }
            else if (op == 'r') { NEED(4); idx = rd_le32(b + p); p += 4; }
            else {
                idx = 0;
                for (size_t k = 0; k < vm->cap_memo; k++)
                    if (vm->memo[k])
                        idx = k + 1;
            }
            if (vm->sp == 0 || idx > (1u << 20)) goto bad;
            if (idx >= vm->cap_memo) {
                size_t nc = idx + 64;
                void *q = realloc(vm->memo, nc * sizeof *vm->memo);
                if (!q) goto bad;
                vm->memo = q;
                memset(vm->memo + vm->cap_memo, 0, (nc - vm->cap_memo) * sizeof *vm->memo);
                vm->cap_memo = nc;
            }
            vm->memo[idx] = vm->stack[vm->sp - 1];
            break;
        }
        case 'h': case 'j': {                                // BINGET / LONG_BINGET
            size_t idx;
            if (op == 'h') { NEED(1); idx = b[p++]; }
            else { NEED(4); idx = rd_le32(b + p); p += 4; }
            if (idx >= vm->cap_memo || !vm->memo[idx]) goto bad;
            if (!pk_push(vm, vm->memo[idx])) goto bad;
            break;
        }
        case 't': case 0x85: case 0x86: case 0x87: {         // tuples
            if (op == 't') {
                if ((mk = pk_mark(vm)) == SIZE_MAX) goto bad;
            } else {
                n = (size_t)(op - 0x84);
                if (vm->sp < n) goto bad;
                mk = SIZE_MAX;
            }
            if (!(v = pk_new(vm, PK_SEQ))) goto bad;
            size_t from = op == 't' ? mk + 1 : vm->sp - (size_t)(op - 0x84);
            for (size_t k = from; k < vm->sp; k++)
                if (!pk_append(v, vm->stack[k])) goto bad;
            vm->sp = op == 't' ? mk : from;
            if (!pk_push(vm, v)) goto bad;
            break;
        }
        case 'Q': {                                          // BINPERSID: torch storage
            POP(a);
            v = pk_new(vm, PK_STORAGE);
            if (!v) goto bad;
            if (a->kind == PK_SEQ && a->n >= 5 && a->items[1]->kind == PK_GLOBAL &&
                a->items[2]->kind == PK_STR) {
                const char *cls = a->items[1]->s;
                v->dtype_ok = true;
                if (!strcmp(cls, "torch.FloatStorage")) v->dtype = RK_DTYPE_F32;
                else if (!strcmp(cls, "torch.HalfStorage")) v->dtype = RK_DTYPE_F16;
                else if (!strcmp(cls, "torch.BFloat16Storage")) v->dtype = RK_DTYPE_BF16;
                else v->dtype_ok = false;
                v->key = a->items[2]->s;
                v->key_len = a->items[2]->slen;
            }
            if (!pk_push(vm, v)) goto bad;
            break;
        }
        case 'R': case 0x81:                                 // REDUCE / NEWOBJ
            POP(a); POP(c);
            if (!pk_push(vm, pk_call(vm, c, a))) goto bad;
            break;
        case 'b': POP(a); break;                             // BUILD: ignore the state
        case 's':                                            // SETITEM
            POP(c); POP(a);
            if (vm->sp == 0) goto bad;
            v = vm->stack[vm->sp - 1];
            if (v->kind == PK_DICT && (!pk_append(v, a) || !pk_append(v, c))) goto bad;
            break;
        case 'u': case 'a': case 'e':                        // SETITEMS / APPEND / APPENDS
            if (op == 'a') {
                POP(a);
                if (vm->sp == 0) goto bad;
                v = vm->stack[vm->sp - 1];
                if (v->kind == PK_SEQ && !pk_append(v, a)) goto bad;
                break;
            }
            if ((mk = pk_mark(vm)) == SIZE_MAX || mk == 0) goto bad;
            v = vm->stack[mk - 1];
            if (op == 'u' && (vm->sp - mk - 1) % 2) goto bad;
            if (v->kind == (op == 'u' ? PK_DICT : PK_SEQ))
                for (size_t k = mk + 1; k < vm->sp; k++)
                    if (!pk_append(v, vm->stack[k])) goto bad;
            vm->sp = mk;
            break;
        case '.':                                            // STOP
            if (vm->sp == 0) goto bad;
            *result = vm->stack[vm->sp - 1];
            return RK_OK;
        default:
            return rk_errbuf_set(eb, RK_EFORMAT, "pth: unsupported pickle opcode 0x%02x at "
                                 "byte %zu", op, p - 1);
        }
    }
bad:
    return rk_errbuf_set(eb, RK_EFORMAT, "pth: malformed pickle near byte %zu", p);
#undef NEED
#undef POP
}

static void pkvm_free(struct pkvm *vm)
{
    for (size_t i = 0; i < vm->n_all; i++) {
        if (vm->all[i]->kind == PK_GLOBAL)
            free((void *)vm->all[i]->s);
        free(vm->all[i]->items);
        free(vm->all[i]);
    }
    free(vm->all);
    free(vm->stack);
    free(vm->memo);
}

static int parse_pth(const uint8_t *buf, size_t len, const struct rk_model *m, float *state,
                     struct rk_state_meta *meta, struct rk_errbuf *eb)
{
    struct zent *es = NULL;
    size_t n_es = 0;
    struct pkvm vm;
    memset(&vm, 0, sizeof vm);
    unsigned char *seen = NULL;
    int rc = zip_list(buf, len, &es, &n_es, eb);
    if (rc != RK_OK)
        return rc;
    // The pickle is "<prefix>/data.pkl"; storages are "<prefix>/data/<key>".
    const struct zent *pkl = NULL;
    for (size_t i = 0; i < n_es; i++)
        if (es[i].name_len >= 9 && !memcmp(es[i].name + es[i].name_len - 9, "/data.pkl", 9)) {
            pkl = &es[i];
            break;
        }
    if (!pkl) {
        rc = rk_errbuf_set(eb, RK_EFORMAT, "pth: no data.pkl in the archive");
        goto out;
    }
    size_t prefix_len = pkl->name_len - 8; // keeps the trailing '/'
    struct pk *root = NULL;
    if ((rc = pickle_run(&vm, pkl->data, pkl->len, &root, eb)) != RK_OK)
        goto out;
    // Accept the state dict itself or one nested under "state_dict" / "model".
    if (root->kind == PK_DICT && root->n == 2 && root->items[0]->kind == PK_STR &&
        root->items[1]->kind == PK_DICT)
        root = root->items[1];
    if (root->kind != PK_DICT) {
        rc = rk_errbuf_set(eb, RK_EFORMAT, "pth: the pickle does not hold a dict of tensors");
        goto out;
    }
    const int L = rk_model_n_layer(m), H = rk_model_n_head(m), N = rk_model_head_size(m);
    struct rk_state_layout lay;
    rk_state_layout(m, &lay);
    memset(state, 0, rk_state_len(m) * sizeof(float));
    seen = calloc((size_t)L, 1);
    if (!seen) {
        rc = RK_ENOMEM;
        goto out;
    }
    for (size_t i = 0; i + 1 < root->n; i += 2) {
        struct pk *k = root->items[i], *t = root->items[i + 1];
        long li;
        if (k->kind != PK_STR)
            continue;
        enum part pt = name_part(k->s, k->slen, &li);
        if (pt == PART_NONE)
            continue;
        int kn = (int)(k->slen > 80 ? 80 : k->slen);
        if (li >= L) {
            rc = rk_errbuf_set(eb, RK_EMISMATCH, "pth: tensor %.*s, model has %d layers", kn,
                               k->s, L);
            goto out;
        }
        if (t->kind != PK_TENSOR || !t->key || !t->dtype_ok) {
            rc = rk_errbuf_set(eb, RK_EFORMAT, "pth: %.*s is not an fp32/fp16/bf16 tensor", kn,
                               k->s);
            goto out;
        }
        int64_t want[3] = {H, N, N};
        int want_nd = pt == PART_WKV ? 3 : 1;
        if (pt != PART_WKV)
            want[0] = rk_model_n_embd(m);
        bool ok = t->n_dim == want_nd && t->offset >= 0;
        int64_t st = 1;
        for (int d = want_nd - 1; ok && d >= 0; d--) {
            ok = t->shape[d] == want[d] && (t->stride[d] == st || t->shape[d] == 1);
            st *= want[d];
        }
        if (!ok) {
            rc = rk_errbuf_set(eb, RK_EMISMATCH, "pth: %.*s: shape or strides do not match "
                               "the model (H=%d N=%d)", kn, k->s, H, N);
            goto out;
        }
        const struct zent *se = NULL;
        for (size_t j = 0; j < n_es; j++)
            if (es[j].name_len == prefix_len + 5 + t->key_len &&
                !memcmp(es[j].name, pkl->name, prefix_len) &&
                !memcmp(es[j].name + prefix_len, "data/", 5) &&
                !memcmp(es[j].name + prefix_len + 5, t->key, t->key_len)) {
                se = &es[j];
                break;
            }
        size_t es_sz = t->dtype == RK_DTYPE_F32 ? 4 : 2;
        uint64_t need = ((uint64_t)t->offset + (uint64_t)st) * es_sz;
        if (!se || (uint64_t)t->offset > (1ull << 40) || need > se->len) {
            rc = rk_errbuf_set(eb, RK_EFORMAT, "pth: storage of %.*s is missing or too short",
                               kn, k->s);
            goto out;
        }
        float *dst = state + (size_t)li * lay.layer_stride +
                     (pt == PART_WKV ? lay.wkv : pt == PART_ATT_SHIFT ? lay.att_shift : lay.ffn_shift);
        rk_elems_to_f32(dst, se->data + (size_t)t->offset * es_sz, (size_t)st, t->dtype);
        if (pt == PART_WKV)
            seen[li] = 1;
    }
    for (int i = 0; i < L; i++)
        if (!seen[i]) {
            rc = rk_errbuf_set(eb, RK_EMISMATCH, "pth: missing blocks.%d.att.time_state", i);
            goto out;
        }
    if (meta) {
        rk_state_meta_init(meta, m);
        meta->has_shift = false;
        snprintf(meta->method, sizeof meta->method, "import-pth");
    }
    rc = RK_OK;
out:
    free(seen);
    pkvm_free(&vm);
    free(es);
    return rc;
}

int rk_state_file_parse(const void *buf, size_t len, const struct rk_model *m,
                        bool require_fingerprint, float *state, struct rk_state_meta *meta,
                        struct rk_errbuf *eb)
{
    if (!buf || !m || !state)
        return rk_errbuf_set(eb, RK_EINVAL, "state file: NULL argument");
    const uint8_t *b = buf;
    int rc = len >= 4 && rd_le32(b) == 0x04034b50u
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
    uint64_t hl = rd_le64(h8);
    if (hl < 2 || hl > HEADER_BYTES_MAX || hl > (uint64_t)st.st_size - 8) {
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

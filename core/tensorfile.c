/*
 * tensorfile.c - the one reader of tensor containers (rk_tensorfile.h): the
 * safetensors header and the torch.save archive (stored zip + restricted
 * pickle). The model loaders (load_tensorfile.c) and the state
 * files (adapters/state_file.c) all read through here, so a check added here
 * guards every file rwkvd opens.
 *
 * safetensors: the JSON header is parsed by a small strict parser (no
 * library): bounded length, bounded nesting, integers only where numbers are
 * expected, duplicate names and fields rejected. Offsets are checked against
 * the real file length with overflow-safe arithmetic and overlapping tensors
 * are rejected.
 *
 * .pth: the pickle is read by a small stack machine that knows only the
 * opcodes a state dict needs (containers, strings, integers, memo, persistent
 * ids, REDUCE/BUILD) and only five globals: collections.OrderedDict,
 * torch._utils._rebuild_tensor_v2 and torch.{Float,Half,BFloat16}Storage.
 * Nothing is ever executed: a "call" is one of two fixed constructions, and
 * any other global or opcode is refused. Every storage reference is checked
 * against its zip entry (size, stored, inside the file), every tensor for
 * contiguous strides and offset + size within its storage. Limits:
 * core/FORMAT.md.
 */
#include "core_int.h"
#include "rk_tensorfile.h"

#include <string.h>

#define JSON_DEPTH_MAX 64          /* nesting inside __metadata__ / unknown fields */
#define ZIP_MAX_ENTRIES (2 * RK_TF_TENSORS_MAX + 64)
#define PKL_MAX_BYTES (64u << 20) /* size of data.pkl */
#define PKL_MAX_LINE 256          /* GLOBAL module / name lines */
#define PKL_MAX_CELLS (1u << 23)  /* objects + stack + tuple, dict and memo entries */

static uint16_t rd16(const unsigned char *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t rd32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static uint64_t rd64(const unsigned char *p) { return rd32(p) | (uint64_t)rd32(p + 4) << 32; }

/* --- tensor lists ------------------------------------------------------------ */

void rk_tf_list_free(struct rk_tf_list *l)
{
    rk__free(l->v);
    l->v = NULL;
    l->n = l->cap = 0;
}

static size_t tensors_max(const struct rk_tf_opts *o)
{
    return o->tensors_max ? o->tensors_max : RK_TF_TENSORS_MAX;
}

/* Append a zeroed entry; RK_ENOMEM, or RK_EFORMAT past the tensor limit. */
static int tf_push(struct rk_tf_list *l, const struct rk_tf_opts *o, struct rk_tf_tensor **out,
                   struct rk_errbuf *eb)
{
    if (l->n >= tensors_max(o))
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: more than %zu tensors", o->file,
                             tensors_max(o));
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 64;
        struct rk_tf_tensor *v = rk__realloc(l->v, cap * sizeof *v);
        if (!v)
            return rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory", o->file);
        l->v = v;
        l->cap = cap;
    }
    *out = &l->v[l->n++];
    memset(*out, 0, sizeof **out);
    return RK_OK;
}

static const char *dtype_str(enum rk_dtype t)
{
    return t == RK_DTYPE_F32 ? "F32" : t == RK_DTYPE_F16 ? "F16" : "BF16";
}

/* --- safetensors: JSON ------------------------------------------------------- */

struct jp {
    const char *s; /* the header text */
    size_t i, n;
    const char *file;
    struct rk_errbuf *eb;
    const char *doc; /* what the text is, for messages (NULL: "safetensors header") */
};

static int jerr(struct jp *j, const char *what)
{
    return rk_errbuf_set(j->eb, RK_EFORMAT, "%s: %s: %s at byte %zu", j->file,
                         j->doc ? j->doc : "safetensors header", what, j->i);
}

static void ws(struct jp *j)
{
    while (j->i < j->n && (j->s[j->i] == ' ' || j->s[j->i] == '\t' || j->s[j->i] == '\n' ||
                           j->s[j->i] == '\r'))
        j->i++;
}

static int expect(struct jp *j, char c)
{
    ws(j);
    if (j->i >= j->n || j->s[j->i] != c) {
        char msg[32];
        snprintf(msg, sizeof msg, "expected '%c'", c);
        return jerr(j, msg);
    }
    j->i++;
    return RK_OK;
}

static int hex4(struct jp *j, unsigned *out)
{
    unsigned v = 0;
    if (j->n - j->i < 4)
        return jerr(j, "truncated \\u escape");
    for (int k = 0; k < 4; k++) {
        char c = j->s[j->i++];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            v |= (unsigned)(c - 'A' + 10);
        else
            return jerr(j, "bad \\u escape");
    }
    *out = v;
    return RK_OK;
}

/* A JSON string, decoded to UTF-8 into out[cap] (NUL-terminated) when out is
 * not NULL; longer strings are an error. */
static int jstring(struct jp *j, char *out, size_t cap)
{
    size_t k = 0;
    int rc;
    ws(j);
    if (j->i >= j->n || j->s[j->i] != '"')
        return jerr(j, "expected a string");
    j->i++;
    for (;;) {
        if (j->i >= j->n)
            return jerr(j, "unterminated string");
        unsigned char c = (unsigned char)j->s[j->i++];
        unsigned cp;
        if (c == '"')
            break;
        if (c < 0x20)
            return jerr(j, "control character in string");
        if (c != '\\') {
            if (out) {
                if (k + 1 >= cap)
                    return jerr(j, "string too long");
                out[k++] = (char)c;
            }
            continue;
        }
        if (j->i >= j->n)
            return jerr(j, "unterminated string");
        char e = j->s[j->i++];
        switch (e) {
        case '"': cp = '"'; break;
        case '\\': cp = '\\'; break;
        case '/': cp = '/'; break;
        case 'b': cp = '\b'; break;
        case 'f': cp = '\f'; break;
        case 'n': cp = '\n'; break;
        case 'r': cp = '\r'; break;
        case 't': cp = '\t'; break;
        case 'u':
            if ((rc = hex4(j, &cp)))
                return rc;
            if (cp >= 0xd800 && cp < 0xdc00) { /* surrogate pair */
                unsigned lo;
                if (j->n - j->i < 2 || j->s[j->i] != '\\' || j->s[j->i + 1] != 'u')
                    return jerr(j, "unpaired surrogate");
                j->i += 2;
                if ((rc = hex4(j, &lo)))
                    return rc;
                if (lo < 0xdc00 || lo >= 0xe000)
                    return jerr(j, "unpaired surrogate");
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            } else if (cp >= 0xdc00 && cp < 0xe000) {
                return jerr(j, "unpaired surrogate");
            }
            if (cp == 0)
                return jerr(j, "NUL in string");
            break;
        default: return jerr(j, "bad escape");
        }
        if (!out)
            continue;
        char u[4];
        int nu;
        if (cp < 0x80) {
            u[0] = (char)cp;
            nu = 1;
        } else if (cp < 0x800) {
            u[0] = (char)(0xc0 | (cp >> 6));
            u[1] = (char)(0x80 | (cp & 0x3f));
            nu = 2;
        } else if (cp < 0x10000) {
            u[0] = (char)(0xe0 | (cp >> 12));
            u[1] = (char)(0x80 | ((cp >> 6) & 0x3f));
            u[2] = (char)(0x80 | (cp & 0x3f));
            nu = 3;
        } else {
            u[0] = (char)(0xf0 | (cp >> 18));
            u[1] = (char)(0x80 | ((cp >> 12) & 0x3f));
            u[2] = (char)(0x80 | ((cp >> 6) & 0x3f));
            u[3] = (char)(0x80 | (cp & 0x3f));
            nu = 4;
        }
        if (k + (size_t)nu >= cap)
            return jerr(j, "string too long");
        memcpy(out + k, u, (size_t)nu);
        k += (size_t)nu;
    }
    if (out)
        out[k] = '\0';
    return RK_OK;
}

/* A non-negative integer without sign, fraction or exponent, < 2^53. */
static int juint(struct jp *j, uint64_t *out)
{
    ws(j);
    if (j->i < j->n && j->s[j->i] == '-')
        return jerr(j, "negative number");
    size_t start = j->i;
    uint64_t v = 0;
    while (j->i < j->n && j->s[j->i] >= '0' && j->s[j->i] <= '9') {
        v = v * 10 + (uint64_t)(j->s[j->i] - '0');
        if (v >= (1ull << 53))
            return jerr(j, "number too large");
        j->i++;
    }
    if (j->i == start)
        return jerr(j, "expected a number");
    if (j->i - start > 1 && j->s[start] == '0')
        return jerr(j, "number with a leading zero");
    if (j->i < j->n && (j->s[j->i] == '.' || j->s[j->i] == 'e' || j->s[j->i] == 'E'))
        return jerr(j, "expected an integer");
    *out = v;
    return RK_OK;
}

/* Skip any JSON value (used for __metadata__ and unknown fields). */
static int jskip(struct jp *j, int depth)
{
    int rc;
    if (depth > JSON_DEPTH_MAX)
        return jerr(j, "nesting too deep");
    ws(j);
    if (j->i >= j->n)
        return jerr(j, "unexpected end");
    char c = j->s[j->i];
    if (c == '"')
        return jstring(j, NULL, 0);
    if (c == '{' || c == '[') {
        char close = c == '{' ? '}' : ']';
        j->i++;
        ws(j);
        if (j->i < j->n && j->s[j->i] == close) {
            j->i++;
            return RK_OK;
        }
        for (;;) {
            if (c == '{') {
                if ((rc = jstring(j, NULL, 0)) || (rc = expect(j, ':')))
                    return rc;
            }
            if ((rc = jskip(j, depth + 1)))
                return rc;
            ws(j);
            if (j->i < j->n && j->s[j->i] == ',') {
                j->i++;
                continue;
            }
            return expect(j, close);
        }
    }
    static const char *const words[] = {"true", "false", "null"};
    for (int k = 0; k < 3; k++) {
        size_t len = strlen(words[k]);
        if (j->n - j->i >= len && !memcmp(j->s + j->i, words[k], len)) {
            j->i += len;
            return RK_OK;
        }
    }
    if (c == '-' || (c >= '0' && c <= '9')) { /* any number, loosely */
        j->i++;
        while (j->i < j->n && strchr("0123456789.eE+-", j->s[j->i]))
            j->i++;
        return RK_OK;
    }
    return jerr(j, "unexpected character");
}

/* The members of one JSON object, in order: jobj_open reads the '{';
 * each jobj_key reads the separator before a member (none before the first),
 * its key into key[cap] and the ':', and leaves the value to the caller,
 * who must read or skip it before the next jobj_key. At the closing '}'
 * jobj_key sets o->done instead. Every object reader below walks its
 * members with these two. */
struct jobj {
    bool started, done;
};

static int jobj_open(struct jp *j, struct jobj *o)
{
    *o = (struct jobj){0};
    return expect(j, '{');
}

static int jobj_key(struct jp *j, struct jobj *o, char *key, size_t cap)
{
    ws(j);
    if (!o->started && j->i < j->n && j->s[j->i] == '}') {
        j->i++;
        o->done = true;
        return RK_OK;
    }
    if (o->started) {
        if (j->i < j->n && j->s[j->i] == ',') {
            j->i++;
        } else {
            o->done = true;
            return expect(j, '}');
        }
    }
    o->started = true;
    int rc = jstring(j, key, cap);
    return rc ? rc : expect(j, ':');
}

/* --- safetensors: header ----------------------------------------------------- */

/* Element sizes of the safetensors dtypes, for offset checks; only F32, F16
 * and BF16 can be model tensors. */
static size_t st_dtype(const char *s, enum rk_dtype *dt)
{
    static const struct {
        const char *name;
        size_t size;
        enum rk_dtype dt;
    } tab[] = {
        {"F32", 4, RK_DTYPE_F32},   {"F16", 2, RK_DTYPE_F16},   {"BF16", 2, RK_DTYPE_BF16},
        {"F64", 8, RK_DTYPE_AUTO},  {"I64", 8, RK_DTYPE_AUTO},  {"U64", 8, RK_DTYPE_AUTO},
        {"I32", 4, RK_DTYPE_AUTO},  {"U32", 4, RK_DTYPE_AUTO},  {"I16", 2, RK_DTYPE_AUTO},
        {"U16", 2, RK_DTYPE_AUTO},  {"I8", 1, RK_DTYPE_AUTO},   {"U8", 1, RK_DTYPE_AUTO},
        {"BOOL", 1, RK_DTYPE_AUTO}, {"F8_E4M3", 1, RK_DTYPE_AUTO}, {"F8_E5M2", 1, RK_DTYPE_AUTO},
    };
    for (size_t i = 0; i < sizeof tab / sizeof tab[0]; i++)
        if (!strcmp(s, tab[i].name)) {
            *dt = tab[i].dt;
            return tab[i].size;
        }
    return 0;
}

/* Offsets of one tensor, kept for the overlap check. */
struct span {
    uint64_t begin, end;
    size_t t; /* index in the tensor list */
};

static int span_cmp(const void *a, const void *b)
{
    const struct span *x = a, *y = b;
    return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : 0;
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The value of one tensor entry: {"dtype":..., "shape":[...], "data_offsets":[b, e]}. */
struct entry {
    char dtype[16];
    int ndim;
    int64_t shape[RK_TF_DIMS_MAX];
    uint64_t begin, end;
};

static int parse_entry(struct jp *j, const char *name, struct entry *e)
{
    int rc, have = 0;
    char field[64];
    struct jobj it;
    if ((rc = jobj_open(j, &it)))
        return rc;
    ws(j);
    if (j->i < j->n && j->s[j->i] == '}')
        return jerr(j, "empty tensor entry");
    for (;;) {
        if ((rc = jobj_key(j, &it, field, sizeof field)))
            return rc;
        if (it.done)
            break;
        if (!strcmp(field, "dtype")) {
            if (have & 1)
                return jerr(j, "duplicate field dtype");
            have |= 1;
            if ((rc = jstring(j, e->dtype, sizeof e->dtype)))
                return rc;
        } else if (!strcmp(field, "shape")) {
            if (have & 2)
                return jerr(j, "duplicate field shape");
            have |= 2;
            if ((rc = expect(j, '[')))
                return rc;
            e->ndim = 0;
            ws(j);
            if (j->i < j->n && j->s[j->i] == ']') {
                j->i++;
            } else {
                for (;;) {
                    uint64_t d;
                    if (e->ndim == RK_TF_DIMS_MAX)
                        return rk_errbuf_set(j->eb, RK_EFORMAT, "%s: tensor %s: more than %d "
                                             "dimensions", j->file, name, RK_TF_DIMS_MAX);
                    if ((rc = juint(j, &d)))
                        return rc;
                    e->shape[e->ndim++] = (int64_t)d;
                    ws(j);
                    if (j->i < j->n && j->s[j->i] == ',') {
                        j->i++;
                        continue;
                    }
                    if ((rc = expect(j, ']')))
                        return rc;
                    break;
                }
            }
        } else if (!strcmp(field, "data_offsets")) {
            if (have & 4)
                return jerr(j, "duplicate field data_offsets");
            have |= 4;
            if ((rc = expect(j, '[')) || (rc = juint(j, &e->begin)) || (rc = expect(j, ',')) ||
                (rc = juint(j, &e->end)) || (rc = expect(j, ']')))
                return rc;
        } else if ((rc = jskip(j, 1))) {
            return rc;
        }
    }
    if (have != 7)
        return rk_errbuf_set(j->eb, RK_EFORMAT, "%s: tensor %s: entry lacks %s", j->file, name,
                             !(have & 1) ? "dtype" : !(have & 2) ? "shape" : "data_offsets");
    return RK_OK;
}

int rk_tf_safetensors_header_len(const void *first8, uint64_t file_len,
                                 const struct rk_tf_opts *o, uint64_t *hlen,
                                 struct rk_errbuf *eb)
{
    size_t hmax = o->header_max ? o->header_max : RK_TF_HEADER_MAX;
    if (file_len < 8)
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: truncated safetensors header", o->file);
    uint64_t h = rd64(first8);
    if (h < 2 || h > hmax || h > file_len - 8)
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: safetensors header length %llu is invalid "
                             "(file has %llu bytes, limit %zu)", o->file, (unsigned long long)h,
                             (unsigned long long)file_len, hmax);
    *hlen = h;
    return RK_OK;
}

/* __metadata__ as an object of strings, each entry handed to o->meta. */
static int read_meta(struct jp *j, const struct rk_tf_opts *o)
{
    char key[RK_TF_META_KEY_MAX + 1], val[RK_TF_META_VAL_MAX + 1];
    struct jobj it;
    int rc = jobj_open(j, &it);
    while (!rc && !(rc = jobj_key(j, &it, key, sizeof key)) && !it.done)
        if (!(rc = jstring(j, val, sizeof val)))
            rc = o->meta(o->user, key, val, j->eb);
    return rc;
}

int rk_tf_safetensors_read(const void *buf, size_t len, uint64_t file_len,
                           const struct rk_tf_opts *o, struct rk_tf_list *out,
                           struct rk_errbuf *eb)
{
    const char *file = o->file;
    const unsigned char *b = buf;
    struct span *spans = NULL;
    char **names = NULL;
    size_t n_spans = 0, cap_spans = 0, first = out->n;
    uint64_t hlen;
    int rc = RK_OK;

    if (len > file_len)
        return rk_errbuf_set(eb, RK_EINVAL, "%s: buffer longer than the file", file);
    if (len < 8)
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: truncated safetensors header", file);
    if ((rc = rk_tf_safetensors_header_len(b, file_len, o, &hlen, eb)))
        return rc;
    if (hlen > len - 8)
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: safetensors header length %llu is invalid "
                             "(only %zu bytes read)", file, (unsigned long long)hlen, len);
    const unsigned char *data = b + 8 + hlen;
    uint64_t data_len = file_len - 8 - hlen, data_in_buf = len - 8 - hlen;
    struct jp j = {(const char *)b + 8, 0, (size_t)hlen, file, eb, NULL};
    char name[RK_TF_NAME_MAX + 1];
    bool seen_meta = false;

    struct jobj it;
    if ((rc = jobj_open(&j, &it)))
        goto out;
    for (;;) {
        if ((rc = jobj_key(&j, &it, name, sizeof name)))
            goto out;
        if (it.done)
            break;
        if (!strcmp(name, "__metadata__")) {
            if (seen_meta) {
                rc = jerr(&j, "duplicate __metadata__");
                goto out;
            }
            seen_meta = true;
            if ((rc = o->meta ? read_meta(&j, o) : jskip(&j, 1)))
                goto out;
        } else {
            struct entry e;
            memset(&e, 0, sizeof e);
            if ((rc = parse_entry(&j, name, &e)))
                goto out;
            enum rk_dtype dt;
            size_t es = st_dtype(e.dtype, &dt);
            if (!es) {
                rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: tensor %s: unknown dtype \"%s\"",
                                   file, name, e.dtype);
                goto out;
            }
            uint64_t numel = 1, nbytes;
            for (int k = 0; k < e.ndim; k++)
                if (__builtin_mul_overflow(numel, (uint64_t)e.shape[k], &numel)) {
                    rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: tensor %s: shape overflows",
                                       file, name);
                    goto out;
                }
            if (__builtin_mul_overflow(numel, (uint64_t)es, &nbytes) || e.begin > e.end ||
                e.end > data_len || e.end - e.begin != nbytes) {
                rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: tensor %s: data_offsets [%llu, %llu] "
                                   "do not hold %s of that shape within the %llu data bytes",
                                   file, name, (unsigned long long)e.begin,
                                   (unsigned long long)e.end, e.dtype,
                                   (unsigned long long)data_len);
                goto out;
            }
            if (n_spans == cap_spans) {
                size_t cap = cap_spans ? cap_spans * 2 : 256;
                struct span *ns = rk__realloc(spans, cap * sizeof *ns);
                if (!ns) {
                    rc = rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory", file);
                    goto out;
                }
                spans = ns;
                cap_spans = cap;
            }
            struct rk_tf_tensor *t;
            if ((rc = tf_push(out, o, &t, eb)))
                goto out;
            memcpy(t->name, name, strlen(name) + 1);
            memcpy(t->dtype_name, e.dtype, sizeof t->dtype_name);
            t->dtype = dt;
            t->ndim = e.ndim;
            memcpy(t->shape, e.shape, sizeof e.shape);
            t->offset = e.begin;
            t->nbytes = (size_t)nbytes;
            t->data = e.end <= data_in_buf ? data + e.begin : NULL;
            spans[n_spans++] = (struct span){e.begin, e.end, out->n - 1};
        }
    }
    ws(&j);
    if (j.i != j.n) {
        rc = jerr(&j, "trailing bytes after the JSON object");
        goto out;
    }

    /* No two tensors share a byte: in order of their first byte, each
     * non-empty one starts at or after the furthest end before it. */
    if (n_spans > 1)
        qsort(spans, n_spans, sizeof *spans, span_cmp);
    uint64_t end_max = 0;
    size_t who = SIZE_MAX;
    for (size_t i = 0; i < n_spans; i++) {
        if (spans[i].begin == spans[i].end)
            continue;
        if (who != SIZE_MAX && spans[i].begin < end_max) {
            rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: tensors %s and %s overlap", file,
                               out->v[who].name, out->v[spans[i].t].name);
            goto out;
        }
        end_max = spans[i].end;
        who = spans[i].t;
    }
    /* no two tensors share a name */
    size_t nn = out->n - first;
    names = rk__malloc((nn ? nn : 1) * sizeof *names);
    if (!names) {
        rc = rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory", file);
        goto out;
    }
    for (size_t i = 0; i < nn; i++)
        names[i] = out->v[first + i].name;
    if (nn > 1)
        qsort(names, nn, sizeof *names, name_cmp);
    for (size_t i = 1; i < nn; i++)
        if (!strcmp(names[i], names[i - 1])) {
            rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: tensor %s appears twice", file, names[i]);
            goto out;
        }
out:
    rk__free(names);
    rk__free(spans);
    return rc;
}


/* --- Hugging Face JSON files: the shard index and config.json --------------------- */

void rk_tf_index_free(struct rk_tf_index *x)
{
    if (!x)
        return;
    rk__free(x->v);
    rk__free(x->shards);
    memset(x, 0, sizeof *x);
}

/* A shard's file name: a plain name in the model's directory. */
static bool shard_name_ok(const char *s)
{
    size_t n = strlen(s), ext = strlen(".safetensors");
    if (n <= ext || s[0] == '.' || strcmp(s + n - ext, ".safetensors"))
        return false;
    for (const char *p = s; *p; p++)
        if (*p == '/' || *p == '\\' || (unsigned char)*p < 0x20)
            return false;
    return true;
}

static int index_entry_cmp(const void *a, const void *b)
{
    return strcmp(((const struct rk_tf_index_entry *)a)->name,
                  ((const struct rk_tf_index_entry *)b)->name);
}

/* "weight_map": {tensor name: shard file name, ...} */
static int read_weight_map(struct jp *j, struct rk_tf_index *x, size_t tensors_max)
{
    int rc;
    char name[RK_TF_NAME_MAX + 1], shard[RK_TF_NAME_MAX + 1];
    struct jobj it;
    if ((rc = jobj_open(j, &it)))
        return rc;
    for (;;) {
        if ((rc = jobj_key(j, &it, name, sizeof name)))
            return rc;
        if (it.done)
            return RK_OK;
        if ((rc = jstring(j, shard, sizeof shard)))
            return rc;
        if (!name[0])
            return jerr(j, "empty tensor name");
        if (!shard_name_ok(shard))
            return rk_errbuf_set(j->eb, RK_EFORMAT, "%s: tensor %s: shard '%s' is not a "
                                 "*.safetensors file name in the model's directory", j->file,
                                 name, shard);
        size_t k = 0;
        while (k < x->n_shards && strcmp(x->shards[k], shard))
            k++;
        if (k == x->n_shards) {
            if (x->n_shards >= RK_TF_SHARDS_MAX)
                return rk_errbuf_set(j->eb, RK_EFORMAT, "%s: more than %d shards", j->file,
                                     RK_TF_SHARDS_MAX);
            void *p = rk__realloc(x->shards, (x->n_shards + 1) * sizeof *x->shards);
            if (!p)
                return rk_errbuf_set(j->eb, RK_ENOMEM, "%s: out of memory", j->file);
            x->shards = p;
            memcpy(x->shards[x->n_shards++], shard, strlen(shard) + 1);
        }
        if (x->n >= tensors_max)
            return rk_errbuf_set(j->eb, RK_EFORMAT, "%s: more than %zu tensors", j->file,
                                 tensors_max);
        if (x->n == x->cap) {
            size_t cap = x->cap ? x->cap * 2 : 256;
            void *p = rk__realloc(x->v, cap * sizeof *x->v);
            if (!p)
                return rk_errbuf_set(j->eb, RK_ENOMEM, "%s: out of memory", j->file);
            x->v = p;
            x->cap = cap;
        }
        memcpy(x->v[x->n].name, name, strlen(name) + 1);
        x->v[x->n++].shard = (uint32_t)k;
    }
}

int rk_tf_index_read(const void *buf, size_t len, const char *file, size_t tensors_max,
                     struct rk_tf_index *out, struct rk_errbuf *eb)
{
    memset(out, 0, sizeof *out);
    if (!tensors_max)
        tensors_max = RK_TF_TENSORS_MAX;
    if (len > RK_TF_INDEX_MAX)
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: %zu bytes; the limit is %u", file, len,
                             RK_TF_INDEX_MAX);
    struct jp j = {buf, 0, len, file, eb, "shard index"};
    bool have_map = false;
    char key[64];
    struct jobj it;
    int rc = jobj_open(&j, &it);
    while (!rc && !(rc = jobj_key(&j, &it, key, sizeof key)) && !it.done) {
        if (strcmp(key, "weight_map")) {
            rc = jskip(&j, 1); // "metadata" (total_size) and anything else
        } else if (have_map) {
            rc = jerr(&j, "duplicate \"weight_map\"");
        } else {
            have_map = true;
            rc = read_weight_map(&j, out, tensors_max);
        }
    }
    if (!rc) {
        ws(&j);
        if (j.i != j.n)
            rc = jerr(&j, "trailing bytes");
    }
    if (!rc && !have_map)
        rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: no \"weight_map\"", file);
    if (!rc && out->n > 1) { // a tensor named twice (in one shard or two)
        qsort(out->v, out->n, sizeof *out->v, index_entry_cmp);
        for (size_t i = 1; i < out->n; i++)
            if (!strcmp(out->v[i - 1].name, out->v[i].name)) {
                rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: tensor %s is listed twice (shards %s "
                                   "and %s)", file, out->v[i].name,
                                   out->shards[out->v[i - 1].shard], out->shards[out->v[i].shard]);
                break;
            }
    }
    if (rc)
        rk_tf_index_free(out);
    return rc;
}

const struct rk_tf_index_entry *rk_tf_index_find(const struct rk_tf_index *x, const char *name)
{
    size_t lo = 0, hi = x->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(x->v[mid].name, name);
        if (!c)
            return &x->v[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

int rk_tf_json_fields(const void *buf, size_t len, const char *file, rk_tf_field_cb *cb,
                      void *user, struct rk_errbuf *eb)
{
    if (len > RK_TF_INDEX_MAX)
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: %zu bytes; the limit is %u", file, len,
                             RK_TF_INDEX_MAX);
    struct jp j = {buf, 0, len, file, eb, "JSON"};
    char key[RK_TF_NAME_MAX + 1], val[RK_TF_META_VAL_MAX + 1];
    struct jobj it;
    int rc = jobj_open(&j, &it);
    while (!rc && !(rc = jobj_key(&j, &it, key, sizeof key)) && !it.done) {
        ws(&j);
        size_t at = j.i;
        char c = j.i < j.n ? j.s[j.i] : 0;
        if (c == '"') {
            if ((rc = jstring(&j, NULL, 0)) || j.i - at > RK_TF_META_VAL_MAX)
                continue; // an error, or too long to hand over
            j.i = at;
            if (!(rc = jstring(&j, val, sizeof val)))
                rc = cb(user, key, RK_TF_FIELD_STR, val, 0, eb);
        } else if (c >= '0' && c <= '9') {
            uint64_t v;
            size_t e = j.i;
            while (e < j.n && j.s[e] >= '0' && j.s[e] <= '9')
                e++;
            if (e < j.n && (j.s[e] == '.' || j.s[e] == 'e' || j.s[e] == 'E'))
                rc = jskip(&j, 1); // a real number: not handed over
            else if (!(rc = juint(&j, &v)))
                rc = cb(user, key, RK_TF_FIELD_UINT, NULL, v, eb);
        } else {
            rc = jskip(&j, 1);
        }
    }
    if (!rc) {
        ws(&j);
        if (j.i != j.n)
            rc = jerr(&j, "trailing bytes");
    }
    return rc;
}

/* --- .pth: zip ------------------------------------------------------------------ */

struct zentry {
    const char *name; /* not NUL-terminated */
    size_t nlen;
    uint16_t method, flags;
    uint64_t csize, usize, lho; /* sizes and local header offset */
};

struct zip {
    const unsigned char *b;
    size_t len;
    uint64_t cd_off; /* entry data must lie before the central directory */
    struct zentry *e;
    size_t n;
};

static int zname_cmp(const char *a, size_t an, const char *b, size_t bn)
{
    int c = memcmp(a, b, an < bn ? an : bn);
    return c ? c : an < bn ? -1 : an > bn ? 1 : 0;
}

static int zentry_cmp(const void *x, const void *y)
{
    const struct zentry *a = x, *b = y;
    return zname_cmp(a->name, a->nlen, b->name, b->nlen);
}

static const struct zentry *zip_find(const struct zip *z, const char *name, size_t nlen)
{
    size_t lo = 0, hi = z->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = zname_cmp(z->e[mid].name, z->e[mid].nlen, name, nlen);
        if (c == 0)
            return &z->e[mid];
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

static int zip_open(struct zip *z, const char *file, struct rk_errbuf *eb)
{
    const unsigned char *b = z->b;
    size_t len = z->len, eocd = SIZE_MAX;
    if (len < 22)
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: truncated zip archive", file);
    size_t lo = len - 22 > 65535 ? len - 22 - 65535 : 0;
    for (size_t i = len - 22 + 1; i-- > lo;)
        if (rd32(b + i) == 0x06054b50u && rd16(b + i + 20) == len - i - 22) {
            eocd = i;
            break;
        }
    if (eocd == SIZE_MAX)
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: zip end-of-central-directory record not found "
                             "(truncated file?)", file);
    uint64_t n_ent = rd16(b + eocd + 10), cd_size = rd32(b + eocd + 12),
             cd_off = rd32(b + eocd + 16), cd_limit = eocd;
    uint16_t disk = rd16(b + eocd + 4), cd_disk = rd16(b + eocd + 6);
    if (eocd >= 20 && rd32(b + eocd - 20) == 0x07064b50u) { /* zip64 locator */
        uint64_t z64 = rd64(b + eocd - 20 + 8);
        if (z64 > eocd - 20 || eocd - 20 - z64 < 56 || rd32(b + z64) != 0x06064b50u)
            return rk_errbuf_set(eb, RK_EFORMAT, "%s: bad zip64 end-of-central-directory",
                                 file);
        disk = (uint16_t)rd32(b + z64 + 16);
        cd_disk = (uint16_t)rd32(b + z64 + 20);
        n_ent = rd64(b + z64 + 32);
        cd_size = rd64(b + z64 + 40);
        cd_off = rd64(b + z64 + 48);
        cd_limit = z64;
    }
    if (disk != 0 || cd_disk != 0)
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: multi-part zip archives are not supported",
                             file);
    if (cd_off > cd_limit || cd_size > cd_limit - cd_off)
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: zip central directory out of range", file);
    if (n_ent > ZIP_MAX_ENTRIES || n_ent * 46 > cd_size)
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: zip entry count %llu is invalid", file,
                             (unsigned long long)n_ent);
    z->cd_off = cd_off;
    z->e = rk__calloc(n_ent ? (size_t)n_ent : 1, sizeof *z->e);
    if (!z->e)
        return rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory", file);
    size_t p = (size_t)cd_off, end = (size_t)(cd_off + cd_size);
    for (uint64_t i = 0; i < n_ent; i++) {
        if (end - p < 46 || rd32(b + p) != 0x02014b50u)
            return rk_errbuf_set(eb, RK_EFORMAT, "%s: bad zip central directory entry %llu",
                                 file, (unsigned long long)i);
        const unsigned char *c = b + p;
        struct zentry *e = &z->e[z->n];
        e->flags = rd16(c + 8);
        e->method = rd16(c + 10);
        e->csize = rd32(c + 20);
        e->usize = rd32(c + 24);
        size_t nlen = rd16(c + 28), xlen = rd16(c + 30), clen = rd16(c + 32);
        e->lho = rd32(c + 42);
        if (46 + nlen + xlen + clen > end - p)
            return rk_errbuf_set(eb, RK_EFORMAT, "%s: bad zip central directory entry %llu",
                                 file, (unsigned long long)i);
        e->name = (const char *)c + 46;
        e->nlen = nlen;
        /* zip64 extra field: 64-bit values for the fields saturated above */
        const unsigned char *x = c + 46 + nlen;
        size_t xl = xlen;
        while (xl >= 4) {
            uint16_t id = rd16(x), sz = rd16(x + 2);
            if (sz > xl - 4)
                return rk_errbuf_set(eb, RK_EFORMAT, "%s: bad zip extra field", file);
            if (id == 0x0001) {
                const unsigned char *q = x + 4;
                size_t ql = sz;
                uint64_t *fields[3] = {&e->usize, &e->csize, &e->lho};
                for (int k = 0; k < 3; k++) {
                    if (*fields[k] != 0xffffffffu)
                        continue;
                    if (ql < 8)
                        return rk_errbuf_set(eb, RK_EFORMAT, "%s: bad zip64 extra field", file);
                    *fields[k] = rd64(q);
                    q += 8;
                    ql -= 8;
                }
            }
            x += 4 + sz;
            xl -= 4 + (size_t)sz;
        }
        z->n++;
        p += 46 + nlen + xlen + clen;
    }
    qsort(z->e, z->n, sizeof *z->e, zentry_cmp);
    for (size_t i = 1; i < z->n; i++)
        if (!zentry_cmp(&z->e[i - 1], &z->e[i]))
            return rk_errbuf_set(eb, RK_EFORMAT, "%s: zip entry %.*s appears twice", file,
                                 (int)(z->e[i].nlen > 200 ? 200 : z->e[i].nlen), z->e[i].name);
    return RK_OK;
}

/* The bytes of a stored entry. */
static int zip_data(const struct zip *z, const struct zentry *e, const unsigned char **out,
                    const char *file, struct rk_errbuf *eb)
{
    int nl = (int)(e->nlen > 200 ? 200 : e->nlen);
    if (e->flags & 1)
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: zip entry %.*s is encrypted", file, nl,
                             e->name);
    if (e->method != 0 || e->csize != e->usize)
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: zip entry %.*s is compressed (method %u); "
                             "only stored entries, as torch.save writes them, are supported",
                             file, nl, e->name, e->method);
    if (e->lho > z->cd_off || z->cd_off - e->lho < 30 || rd32(z->b + e->lho) != 0x04034b50u)
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: zip entry %.*s: bad local header", file, nl,
                             e->name);
    const unsigned char *h = z->b + e->lho;
    uint64_t data = e->lho + 30 + (uint64_t)rd16(h + 26) + rd16(h + 28);
    if (rd16(h + 26) != e->nlen || data > z->cd_off || e->csize > z->cd_off - data ||
        memcmp(h + 30, e->name, e->nlen))
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: zip entry %.*s: local header does not match "
                             "or data out of range", file, nl, e->name);
    *out = z->b + data;
    return RK_OK;
}

/* --- .pth: pickle ---------------------------------------------------------------- */

enum pk_type { PK_MARK, PK_NONE, PK_BOOL, PK_INT, PK_STR, PK_TUPLE, PK_DICT, PK_LIST, PK_GLOBAL,
               PK_STORAGE, PK_TENSOR };
enum pk_global { GL_ODICT, GL_REBUILD, GL_ST_F32, GL_ST_F16, GL_ST_BF16 };

struct pobj {
    enum pk_type type;
    union {
        int64_t i; /* PK_INT, PK_BOOL */
        struct {
            const char *p;
            size_t n;
        } s;
        struct {
            size_t first, n; /* kids[first .. first+n) */
        } tup;
        struct {
            size_t head, tail; /* 1-based indices into items; 0 = none */
        } dict;
        enum pk_global g;
        struct {
            enum rk_dtype dt;
            const char *key;
            size_t klen;
            uint64_t numel;
        } st;
        struct {
            size_t storage, shape; /* objects */
            uint64_t offset;
        } ten;
    } u;
};

struct pitem {
    size_t key, val, next;
};

struct pvm {
    const unsigned char *s;
    size_t n, i;
    struct pobj *obj;
    size_t n_obj, cap_obj;
    size_t *stack;
    size_t sp, cap_stack;
    size_t *memo;
    size_t n_memo, cap_memo;
    size_t *kids;
    size_t n_kids, cap_kids;
    struct pitem *items;
    size_t n_items, cap_items;
    const char *file;
    struct rk_errbuf *eb;
};

static int perr(struct pvm *vm, const char *what)
{
    return rk_errbuf_set(vm->eb, RK_EFORMAT, "%s: data.pkl: %s at byte %zu", vm->file, what,
                         vm->i);
}

static int grow(struct pvm *vm, void **p, size_t *cap, size_t need, size_t esz)
{
    if (vm->n_obj + vm->sp + vm->n_kids + vm->n_items + vm->n_memo >= PKL_MAX_CELLS)
        return perr(vm, "pickle holds too many objects");
    if (need <= *cap)
        return RK_OK;
    size_t c = *cap ? *cap : 64;
    while (c < need)
        c *= 2;
    void *q = rk__realloc(*p, c * esz);
    if (!q)
        return rk_errbuf_set(vm->eb, RK_ENOMEM, "%s: out of memory", vm->file);
    *p = q;
    *cap = c;
    return RK_OK;
}

static int new_obj(struct pvm *vm, enum pk_type t, size_t *out)
{
    int rc = grow(vm, (void **)&vm->obj, &vm->cap_obj, vm->n_obj + 1, sizeof *vm->obj);
    if (rc)
        return rc;
    memset(&vm->obj[vm->n_obj], 0, sizeof *vm->obj);
    vm->obj[vm->n_obj].type = t;
    *out = vm->n_obj++;
    return RK_OK;
}

static int push(struct pvm *vm, size_t o)
{
    int rc = grow(vm, (void **)&vm->stack, &vm->cap_stack, vm->sp + 1, sizeof *vm->stack);
    if (rc)
        return rc;
    vm->stack[vm->sp++] = o;
    return RK_OK;
}

static int push_new(struct pvm *vm, enum pk_type t, struct pobj **out)
{
    size_t o;
    int rc = new_obj(vm, t, &o);
    if (rc || (rc = push(vm, o)))
        return rc;
    *out = &vm->obj[o];
    return RK_OK;
}

/* Pop one value (not a mark). */
static int pop(struct pvm *vm, size_t *out)
{
    if (!vm->sp)
        return perr(vm, "stack underflow");
    size_t o = vm->stack[--vm->sp];
    if (vm->obj[o].type == PK_MARK)
        return perr(vm, "unexpected mark");
    *out = o;
    return RK_OK;
}

/* The values above the topmost mark: stack[*first .. sp); the mark is removed
 * by the caller setting sp = *first - 1. */
static int to_mark(struct pvm *vm, size_t *first)
{
    for (size_t k = vm->sp; k-- > 0;)
        if (vm->obj[vm->stack[k]].type == PK_MARK) {
            *first = k + 1;
            return RK_OK;
        }
    return perr(vm, "no mark on the stack");
}

static int make_tuple(struct pvm *vm, const size_t *vals, size_t n)
{
    int rc = grow(vm, (void **)&vm->kids, &vm->cap_kids, vm->n_kids + n + 1, sizeof *vm->kids);
    if (rc)
        return rc;
    size_t first = vm->n_kids;
    if (n)
        memcpy(vm->kids + first, vals, n * sizeof *vals); /* vals may alias the stack */
    vm->n_kids += n;
    struct pobj *t;
    if ((rc = push_new(vm, PK_TUPLE, &t)))
        return rc;
    t->u.tup.first = first;
    t->u.tup.n = n;
    return RK_OK;
}

static int dict_add(struct pvm *vm, size_t d, size_t k, size_t v)
{
    int rc = grow(vm, (void **)&vm->items, &vm->cap_items, vm->n_items + 1, sizeof *vm->items);
    if (rc)
        return rc;
    vm->items[vm->n_items] = (struct pitem){k, v, 0};
    size_t id = ++vm->n_items;
    struct pobj *o = &vm->obj[d];
    if (o->u.dict.tail)
        vm->items[o->u.dict.tail - 1].next = id;
    else
        o->u.dict.head = id;
    o->u.dict.tail = id;
    return RK_OK;
}

static bool str_is(const struct pobj *o, const char *s)
{
    return o->type == PK_STR && o->u.s.n == strlen(s) && !memcmp(o->u.s.p, s, o->u.s.n);
}

static int find_global(struct pvm *vm, const char *mod, size_t ml, const char *name, size_t nl,
                       enum pk_global *g)
{
    static const struct {
        const char *mod, *name;
        enum pk_global g;
    } allowed[] = {
        {"collections", "OrderedDict", GL_ODICT},
        {"torch._utils", "_rebuild_tensor_v2", GL_REBUILD},
        {"torch", "FloatStorage", GL_ST_F32},
        {"torch", "HalfStorage", GL_ST_F16},
        {"torch", "BFloat16Storage", GL_ST_BF16},
    };
    for (size_t k = 0; k < sizeof allowed / sizeof allowed[0]; k++)
        if (strlen(allowed[k].mod) == ml && !memcmp(allowed[k].mod, mod, ml) &&
            strlen(allowed[k].name) == nl && !memcmp(allowed[k].name, name, nl)) {
            *g = allowed[k].g;
            return RK_OK;
        }
    int pm = (int)(ml > 80 ? 80 : ml), pn = (int)(nl > 80 ? 80 : nl);
    if (ml == 5 && !memcmp(mod, "torch", 5) && nl > 7 && !memcmp(name + nl - 7, "Storage", 7))
        return rk_errbuf_set(vm->eb, RK_EFORMAT, "%s: data.pkl: storage type torch.%.*s is not "
                             "supported (float32, float16 and bfloat16 only)", vm->file, pn, name);
    return rk_errbuf_set(vm->eb, RK_EFORMAT, "%s: data.pkl: global %.*s.%.*s is not allowed "
                         "(only a plain state dict of tensors is accepted)", vm->file, pm, mod,
                         pn, name);
}

static int read_line(struct pvm *vm, const char **p, size_t *n)
{
    size_t start = vm->i;
    while (vm->i < vm->n && vm->s[vm->i] != '\n') {
        if (vm->i - start >= PKL_MAX_LINE)
            return perr(vm, "GLOBAL name too long");
        vm->i++;
    }
    if (vm->i >= vm->n)
        return perr(vm, "truncated GLOBAL");
    *p = (const char *)vm->s + start;
    *n = vm->i - start;
    vm->i++;
    return RK_OK;
}

static int need(struct pvm *vm, uint64_t k)
{
    return k <= vm->n - vm->i ? RK_OK : perr(vm, "truncated pickle");
}

static int memo_put(struct pvm *vm, uint64_t idx)
{
    if (!vm->sp)
        return perr(vm, "memo put on an empty stack");
    size_t o = vm->stack[vm->sp - 1];
    if (vm->obj[o].type == PK_MARK)
        return perr(vm, "memo put of a mark");
    if (idx > vm->n_memo) /* writers number memo slots 0, 1, 2, ... */
        return perr(vm, "memo index out of sequence");
    if (idx == vm->n_memo) {
        int rc = grow(vm, (void **)&vm->memo, &vm->cap_memo, vm->n_memo + 1, sizeof *vm->memo);
        if (rc)
            return rc;
        vm->n_memo++;
    }
    vm->memo[idx] = o;
    return RK_OK;
}

static int memo_get(struct pvm *vm, uint64_t idx)
{
    if (idx >= vm->n_memo)
        return perr(vm, "memo index not set");
    return push(vm, vm->memo[idx]);
}

/* ('storage', <storage class>, key, location, numel) -> a storage reference */
static int persistent_load(struct pvm *vm, size_t pid)
{
    const struct pobj *t = &vm->obj[pid];
    if (t->type != PK_TUPLE || t->u.tup.n != 5)
        return perr(vm, "persistent id is not a 5-tuple");
    const size_t *k = vm->kids + t->u.tup.first;
    const struct pobj *tag = &vm->obj[k[0]], *cls = &vm->obj[k[1]], *key = &vm->obj[k[2]],
                      *loc = &vm->obj[k[3]], *num = &vm->obj[k[4]];
    if (!str_is(tag, "storage") || cls->type != PK_GLOBAL || key->type != PK_STR ||
        loc->type != PK_STR || num->type != PK_INT || num->u.i < 0)
        return perr(vm, "persistent id is not ('storage', class, key, location, numel)");
    enum rk_dtype dt;
    switch (cls->u.g) {
    case GL_ST_F32: dt = RK_DTYPE_F32; break;
    case GL_ST_F16: dt = RK_DTYPE_F16; break;
    case GL_ST_BF16: dt = RK_DTYPE_BF16; break;
    default: return perr(vm, "persistent id names a class that is not a storage");
    }
    if (key->u.s.n < 1 || key->u.s.n > 64 || memchr(key->u.s.p, '/', key->u.s.n) ||
        memchr(key->u.s.p, '\0', key->u.s.n))
        return perr(vm, "bad storage key");
    struct pobj *st;
    int rc = push_new(vm, PK_STORAGE, &st);
    if (rc)
        return rc;
    t = &vm->obj[pid]; /* push_new may have moved the array */
    k = vm->kids + t->u.tup.first;
    st->u.st.dt = dt;
    st->u.st.key = vm->obj[k[2]].u.s.p;
    st->u.st.klen = vm->obj[k[2]].u.s.n;
    st->u.st.numel = (uint64_t)vm->obj[k[4]].u.i;
    return RK_OK;
}

/* _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata]) */
static int rebuild_tensor(struct pvm *vm, size_t args)
{
    const struct pobj *a = &vm->obj[args];
    if (a->type != PK_TUPLE || a->u.tup.n < 6 || a->u.tup.n > 7)
        return perr(vm, "_rebuild_tensor_v2 expects 6 or 7 arguments");
    const size_t *k = vm->kids + a->u.tup.first;
    const struct pobj *st = &vm->obj[k[0]], *off = &vm->obj[k[1]], *size = &vm->obj[k[2]],
                      *stride = &vm->obj[k[3]];
    if (st->type != PK_STORAGE || off->type != PK_INT || off->u.i < 0 ||
        size->type != PK_TUPLE || stride->type != PK_TUPLE || size->u.tup.n != stride->u.tup.n)
        return perr(vm, "bad _rebuild_tensor_v2 arguments");
    size_t nd = size->u.tup.n;
    if (nd > RK_TF_DIMS_MAX)
        return perr(vm, "tensor has too many dimensions");
    uint64_t numel = 1, expect = 1;
    for (size_t d = nd; d-- > 0;) {
        const struct pobj *sz = &vm->obj[vm->kids[size->u.tup.first + d]];
        const struct pobj *sd = &vm->obj[vm->kids[stride->u.tup.first + d]];
        if (sz->type != PK_INT || sd->type != PK_INT || sz->u.i < 0)
            return perr(vm, "bad tensor size or stride");
        if (sz->u.i != 1 && sd->u.i != (int64_t)expect)
            return perr(vm, "tensor is not contiguous");
        if (__builtin_mul_overflow(numel, (uint64_t)sz->u.i, &numel) ||
            __builtin_mul_overflow(expect, (uint64_t)sz->u.i, &expect) || expect > INT64_MAX)
            return perr(vm, "tensor size overflows");
    }
    uint64_t end;
    if (__builtin_add_overflow((uint64_t)off->u.i, numel, &end) ||
        (numel && end > st->u.st.numel))
        return perr(vm, "tensor extends past its storage");
    size_t sto = k[0], shp = k[2];
    uint64_t o = (uint64_t)off->u.i;
    struct pobj *t;
    int rc = push_new(vm, PK_TENSOR, &t);
    if (rc)
        return rc;
    t->u.ten.storage = sto;
    t->u.ten.shape = shp;
    t->u.ten.offset = o;
    return RK_OK;
}

static int reduce(struct pvm *vm)
{
    size_t args, fn;
    int rc;
    if ((rc = pop(vm, &args)) || (rc = pop(vm, &fn)))
        return rc;
    const struct pobj *f = &vm->obj[fn];
    if (f->type != PK_GLOBAL || vm->obj[args].type != PK_TUPLE)
        return perr(vm, "REDUCE of something that is not an allowed global");
    if (f->u.g == GL_ODICT) {
        if (vm->obj[args].u.tup.n != 0)
            return perr(vm, "OrderedDict with arguments");
        struct pobj *d;
        return push_new(vm, PK_DICT, &d);
    }
    if (f->u.g == GL_REBUILD)
        return rebuild_tensor(vm, args);
    return perr(vm, "a storage class cannot be called");
}

/* Run the pickle; *result is the object STOP returns. */
static int run_pickle(struct pvm *vm, size_t *result)
{
    int rc = RK_OK;
    size_t o, o2, first = 0;
    struct pobj *p;
    if ((rc = new_obj(vm, PK_MARK, &o))) /* object 0: the mark */
        return rc;
    for (;;) {
        if (vm->i >= vm->n)
            return perr(vm, "pickle ends without STOP");
        unsigned char op = vm->s[vm->i++];
        const unsigned char *a = vm->s + vm->i;
        switch (op) {
        case 0x80: /* PROTO */
            if ((rc = need(vm, 1)))
                return rc;
            if (a[0] < 2 || a[0] > 5)
                return perr(vm, "unsupported pickle protocol");
            vm->i++;
            break;
        case 0x95: /* FRAME */
            if ((rc = need(vm, 8)))
                return rc;
            vm->i += 8;
            break;
        case '(': rc = push(vm, 0); break; /* MARK */
        case '}': rc = push_new(vm, PK_DICT, &p); break;
        case ']': rc = push_new(vm, PK_LIST, &p); break;
        case ')': rc = make_tuple(vm, NULL, 0); break;
        case 't': /* TUPLE */
            if ((rc = to_mark(vm, &first)))
                return rc;
            o = vm->sp - first;
            vm->sp = first - 1;
            rc = make_tuple(vm, vm->stack + first, o);
            break;
        case 0x85: /* TUPLE1..3 */
        case 0x86:
        case 0x87: {
            size_t n = (size_t)(op - 0x84), v[3];
            for (size_t k = n; k-- > 0;)
                if ((rc = pop(vm, &v[k])))
                    return rc;
            rc = make_tuple(vm, v, n);
            break;
        }
        case 'X':    /* BINUNICODE */
        case 0x8c:   /* SHORT_BINUNICODE */
        case 0x8d: { /* BINUNICODE8 */
            size_t w = op == 'X' ? 4 : op == 0x8c ? 1 : 8;
            if ((rc = need(vm, w)))
                return rc;
            uint64_t n = w == 4 ? rd32(a) : w == 1 ? a[0] : rd64(a);
            vm->i += w;
            if ((rc = need(vm, n)) || (rc = push_new(vm, PK_STR, &p)))
                return rc;
            p->u.s.p = (const char *)vm->s + vm->i;
            p->u.s.n = (size_t)n;
            vm->i += (size_t)n;
            break;
        }
        case 'K': /* BININT1, BININT2, BININT */
        case 'M':
        case 'J': {
            size_t w = op == 'K' ? 1 : op == 'M' ? 2 : 4;
            if ((rc = need(vm, w)) || (rc = push_new(vm, PK_INT, &p)))
                return rc;
            p->u.i = w == 1 ? a[0] : w == 2 ? rd16(a) : (int32_t)rd32(a);
            vm->i += w;
            break;
        }
        case 0x8a: { /* LONG1: little-endian two's complement */
            if ((rc = need(vm, 1)))
                return rc;
            size_t n = a[0];
            vm->i++;
            if (n > 8)
                return perr(vm, "integer too large");
            if ((rc = need(vm, n)) || (rc = push_new(vm, PK_INT, &p)))
                return rc;
            uint64_t v = 0;
            for (size_t k = 0; k < n; k++)
                v |= (uint64_t)a[1 + k] << (8 * k);
            if (n && n < 8 && (a[n] & 0x80))
                v |= ~0ull << (8 * n);
            p->u.i = (int64_t)v;
            vm->i += n;
            break;
        }
        case 'G': /* BINFLOAT: only ever metadata; kept as None */
            if ((rc = need(vm, 8)))
                return rc;
            vm->i += 8;
            rc = push_new(vm, PK_NONE, &p);
            break;
        case 'N': rc = push_new(vm, PK_NONE, &p); break;
        case 0x88: /* NEWTRUE, NEWFALSE */
        case 0x89:
            if (!(rc = push_new(vm, PK_BOOL, &p)))
                p->u.i = op == 0x88;
            break;
        case 'c': { /* GLOBAL module\nname\n */
            const char *mod, *name;
            size_t ml, nl;
            enum pk_global g;
            if ((rc = read_line(vm, &mod, &ml)) || (rc = read_line(vm, &name, &nl)) ||
                (rc = find_global(vm, mod, ml, name, nl, &g)) ||
                (rc = push_new(vm, PK_GLOBAL, &p)))
                return rc;
            p->u.g = g;
            break;
        }
        case 0x93: { /* STACK_GLOBAL */
            enum pk_global g;
            if ((rc = pop(vm, &o2)) || (rc = pop(vm, &o)))
                return rc;
            if (vm->obj[o].type != PK_STR || vm->obj[o2].type != PK_STR)
                return perr(vm, "STACK_GLOBAL of non-strings");
            if ((rc = find_global(vm, vm->obj[o].u.s.p, vm->obj[o].u.s.n, vm->obj[o2].u.s.p,
                                  vm->obj[o2].u.s.n, &g)) ||
                (rc = push_new(vm, PK_GLOBAL, &p)))
                return rc;
            p->u.g = g;
            break;
        }
        case 'q': /* BINPUT, LONG_BINPUT, MEMOIZE */
            if (!(rc = need(vm, 1))) {
                vm->i += 1;
                rc = memo_put(vm, a[0]);
            }
            break;
        case 'r':
            if (!(rc = need(vm, 4))) {
                vm->i += 4;
                rc = memo_put(vm, rd32(a));
            }
            break;
        case 0x94: rc = memo_put(vm, vm->n_memo); break;
        case 'h': /* BINGET, LONG_BINGET */
            if (!(rc = need(vm, 1))) {
                vm->i += 1;
                rc = memo_get(vm, a[0]);
            }
            break;
        case 'j':
            if (!(rc = need(vm, 4))) {
                vm->i += 4;
                rc = memo_get(vm, rd32(a));
            }
            break;
        case 'Q': /* BINPERSID */
            if (!(rc = pop(vm, &o)))
                rc = persistent_load(vm, o);
            break;
        case 'R': rc = reduce(vm); break;
        case 'b': /* BUILD: only the OrderedDict's _metadata, which is ignored */
            if ((rc = pop(vm, &o)))
                return rc;
            if (!vm->sp || vm->obj[vm->stack[vm->sp - 1]].type != PK_DICT)
                return perr(vm, "BUILD of something that is not a dict");
            break;
        case 'a': /* APPEND, APPENDS: lists only appear in metadata; contents dropped */
            if ((rc = pop(vm, &o)))
                return rc;
            if (!vm->sp || vm->obj[vm->stack[vm->sp - 1]].type != PK_LIST)
                return perr(vm, "APPEND to something that is not a list");
            break;
        case 'e':
            if ((rc = to_mark(vm, &first)))
                return rc;
            vm->sp = first - 1;
            if (!vm->sp || vm->obj[vm->stack[vm->sp - 1]].type != PK_LIST)
                return perr(vm, "APPENDS to something that is not a list");
            break;
        case 's': /* SETITEM */
            if ((rc = pop(vm, &o2)) || (rc = pop(vm, &o)))
                return rc;
            if (!vm->sp || vm->obj[vm->stack[vm->sp - 1]].type != PK_DICT)
                return perr(vm, "SETITEM on something that is not a dict");
            rc = dict_add(vm, vm->stack[vm->sp - 1], o, o2);
            break;
        case 'u': { /* SETITEMS */
            if ((rc = to_mark(vm, &first)))
                return rc;
            size_t n = vm->sp - first;
            if (n % 2 || first < 2 || vm->obj[vm->stack[first - 2]].type != PK_DICT)
                return perr(vm, "bad SETITEMS");
            size_t d = vm->stack[first - 2];
            for (size_t k = 0; k < n && !rc; k += 2)
                rc = dict_add(vm, d, vm->stack[first + k], vm->stack[first + k + 1]);
            vm->sp = first - 1;
            break;
        }
        case '.': /* STOP */
            return pop(vm, result);
        default: {
            char msg[48];
            vm->i--;
            snprintf(msg, sizeof msg, "unsupported opcode 0x%02x", op);
            return perr(vm, msg);
        }
        }
        if (rc)
            return rc;
    }
}

static void pvm_free(struct pvm *vm)
{
    rk__free(vm->obj);
    rk__free(vm->stack);
    rk__free(vm->memo);
    rk__free(vm->kids);
    rk__free(vm->items);
}

/* --- .pth: the archive --------------------------------------------------------------- */

bool rk_tf_is_zip(const void *buf, size_t len)
{
    return len >= 4 && rd32(buf) == 0x04034b50u;
}

int rk_tf_pth_read(const void *buf, size_t len, const struct rk_tf_opts *o,
                   struct rk_tf_list *out, struct rk_errbuf *eb)
{
    const char *file = o->file;
    struct zip z = {.b = buf, .len = len};
    struct pvm vm = {.file = file, .eb = eb};
    char *ename = NULL;
    int rc;

    if ((rc = zip_open(&z, file, eb)))
        goto out;

    /* the archive's top folder: the one holding data.pkl */
    const struct zentry *pkl = NULL;
    for (size_t i = 0; i < z.n; i++) {
        const struct zentry *e = &z.e[i];
        if (e->nlen < 10 || memcmp(e->name + e->nlen - 9, "/data.pkl", 9) ||
            memchr(e->name, '/', e->nlen - 9))
            continue;
        if (pkl) {
            rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: more than one data.pkl in the archive", file);
            goto out;
        }
        pkl = e;
    }
    if (!pkl) {
        rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: no <dir>/data.pkl in the zip archive (not a "
                           "torch.save checkpoint)", file);
        goto out;
    }
    size_t plen = pkl->nlen - 9; /* prefix without the slash */
    ename = rk__malloc(plen + 80);
    if (!ename) {
        rc = rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory", file);
        goto out;
    }
    memcpy(ename, pkl->name, plen);

    /* a big-endian checkpoint would need byte swapping */
    memcpy(ename + plen, "/byteorder", 10);
    const struct zentry *bo = zip_find(&z, ename, plen + 10);
    if (bo) {
        const unsigned char *d;
        if ((rc = zip_data(&z, bo, &d, file, eb)))
            goto out;
        if (bo->usize != 6 || memcmp(d, "little", 6)) {
            rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: only little-endian checkpoints are "
                               "supported", file);
            goto out;
        }
    }

    const unsigned char *pk;
    if ((rc = zip_data(&z, pkl, &pk, file, eb)))
        goto out;
    if (pkl->usize > PKL_MAX_BYTES) {
        rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: data.pkl is larger than %u bytes", file,
                           PKL_MAX_BYTES);
        goto out;
    }
    vm.s = pk;
    vm.n = (size_t)pkl->usize;
    size_t res;
    if ((rc = run_pickle(&vm, &res)))
        goto out;
    /* {"state_dict": {...}} and the like, where the caller allows it */
    if (o->pth_nested && vm.obj[res].type == PK_DICT) {
        size_t it = vm.obj[res].u.dict.head;
        if (it && it == vm.obj[res].u.dict.tail &&
            vm.obj[vm.items[it - 1].key].type == PK_STR &&
            vm.obj[vm.items[it - 1].val].type == PK_DICT)
            res = vm.items[it - 1].val;
    }
    if (vm.obj[res].type != PK_DICT) {
        rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: data.pkl does not hold a state dict", file);
        goto out;
    }

    /* one tensor per dict entry */
    for (size_t it = vm.obj[res].u.dict.head; it; it = vm.items[it - 1].next) {
        const struct pobj *k = &vm.obj[vm.items[it - 1].key], *v = &vm.obj[vm.items[it - 1].val];
        if (k->type != PK_STR || k->u.s.n < 1 || k->u.s.n > RK_TF_NAME_MAX ||
            memchr(k->u.s.p, '\0', k->u.s.n)) {
            rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: state dict key is not a valid name", file);
            goto out;
        }
        if (v->type != PK_TENSOR) {
            rk_log(RK_LOG_DEBUG, "%s: ignoring non-tensor entry %.*s", file, (int)k->u.s.n,
                   k->u.s.p);
            continue;
        }
        struct rk_tf_tensor *t;
        if ((rc = tf_push(out, o, &t, eb)))
            goto out;
        memcpy(t->name, k->u.s.p, k->u.s.n);
        t->name[k->u.s.n] = '\0';
        const struct pobj *st = &vm.obj[v->u.ten.storage], *sh = &vm.obj[v->u.ten.shape];
        t->dtype = st->u.st.dt;
        snprintf(t->dtype_name, sizeof t->dtype_name, "%s", dtype_str(t->dtype));
        t->ndim = (int)sh->u.tup.n;
        uint64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) {
            t->shape[d] = vm.obj[vm.kids[sh->u.tup.first + (size_t)d]].u.i;
            numel *= (uint64_t)t->shape[d]; /* bounded by the storage check */
        }
        size_t es = rk__dtype_size(t->dtype);
        memcpy(ename + plen, "/data/", 6);
        memcpy(ename + plen + 6, st->u.st.key, st->u.st.klen);
        const struct zentry *e = zip_find(&z, ename, plen + 6 + st->u.st.klen);
        if (!e) {
            rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: tensor %s: storage %.*s is not in the "
                               "archive", file, t->name, (int)st->u.st.klen, st->u.st.key);
            goto out;
        }
        const unsigned char *d;
        uint64_t sbytes;
        if ((rc = zip_data(&z, e, &d, file, eb)))
            goto out;
        if (__builtin_mul_overflow(st->u.st.numel, (uint64_t)es, &sbytes) || sbytes > e->usize) {
            rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: tensor %s: storage %.*s holds %llu bytes, "
                               "less than its %llu elements", file, t->name,
                               (int)st->u.st.klen, st->u.st.key,
                               (unsigned long long)e->usize,
                               (unsigned long long)st->u.st.numel);
            goto out;
        }
        t->data = d + v->u.ten.offset * es;
        t->nbytes = (size_t)(numel * es);
    }
out:
    rk__free(ename);
    rk__free(z.e);
    pvm_free(&vm);
    return rc;
}


/*
 * load_safetensors.c - the safetensors container: an 8-byte little-endian
 * header length, a JSON object mapping tensor names to {dtype, shape,
 * data_offsets} (plus an optional "__metadata__" object, ignored), then the
 * data section. The JSON is parsed here by a small strict parser (no library):
 * bounded length, bounded nesting, integers only where numbers are expected,
 * duplicate names and fields rejected. Offsets are checked against the real
 * file length with overflow-safe arithmetic and overlapping tensors are
 * rejected. Names may be official or Hugging Face (fla) ones; model.c maps
 * them. Limits: core/FORMAT.md.
 */
#include "core_int.h"

#include <string.h>

#define ST_HEADER_MAX (100u << 20) /* bytes of JSON header */
#define JSON_DEPTH_MAX 64          /* nesting inside __metadata__ / unknown fields */

struct jp {
    const char *s; /* the header text */
    size_t i, n;
    const char *file;
    struct rk_errbuf *eb;
};

static int jerr(struct jp *j, const char *what)
{
    return rk_errbuf_set(j->eb, RK_EFORMAT, "%s: safetensors header: %s at byte %zu", j->file,
                         what, j->i);
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
    int64_t shape[RK_LOAD_MAX_DIMS];
    uint64_t begin, end;
};

static int parse_entry(struct jp *j, const char *name, struct entry *e)
{
    int rc, have = 0;
    char field[64];
    if ((rc = expect(j, '{')))
        return rc;
    ws(j);
    if (j->i < j->n && j->s[j->i] == '}')
        return jerr(j, "empty tensor entry");
    for (;;) {
        if ((rc = jstring(j, field, sizeof field)) || (rc = expect(j, ':')))
            return rc;
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
                    if (e->ndim == RK_LOAD_MAX_DIMS)
                        return rk_errbuf_set(j->eb, RK_EFORMAT, "%s: tensor %s: more than %d "
                                             "dimensions", j->file, name, RK_LOAD_MAX_DIMS);
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
        ws(j);
        if (j->i < j->n && j->s[j->i] == ',') {
            j->i++;
            continue;
        }
        if ((rc = expect(j, '}')))
            return rc;
        break;
    }
    if (have != 7)
        return rk_errbuf_set(j->eb, RK_EFORMAT, "%s: tensor %s: entry lacks %s", j->file, name,
                             !(have & 1) ? "dtype" : !(have & 2) ? "shape" : "data_offsets");
    return RK_OK;
}

int rk__load_safetensors(struct rk_model *m, const struct rk_model_params *p,
                         struct rk_errbuf *eb)
{
    const char *file = rk__model_file(m);
    const unsigned char *b = m->map;
    size_t len = m->map_len;
    struct rk__tensor_list tl = {0};
    struct span *spans = NULL;
    char **names = NULL;
    size_t n_spans = 0, cap_spans = 0;
    int rc = RK_OK;

    if (len < 8)
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: truncated safetensors header", file);
    uint64_t hlen = 0;
    for (int k = 0; k < 8; k++)
        hlen |= (uint64_t)b[k] << (8 * k);
    if (hlen < 2 || hlen > ST_HEADER_MAX || hlen > len - 8)
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: safetensors header length %llu is invalid "
                             "(file has %zu bytes, limit %u)", file, (unsigned long long)hlen,
                             len, ST_HEADER_MAX);
    const unsigned char *data = b + 8 + hlen;
    uint64_t data_len = len - 8 - hlen;
    struct jp j = {(const char *)b + 8, 0, (size_t)hlen, file, eb};
    char name[RK_LOAD_MAX_NAME + 1];
    bool seen_meta = false;

    if ((rc = expect(&j, '{')))
        goto out;
    ws(&j);
    if (j.i < j.n && j.s[j.i] == '}') {
        j.i++;
    } else {
        for (;;) {
            if ((rc = jstring(&j, name, sizeof name)) || (rc = expect(&j, ':')))
                goto out;
            if (!strcmp(name, "__metadata__")) {
                if (seen_meta) {
                    rc = jerr(&j, "duplicate __metadata__");
                    goto out;
                }
                seen_meta = true;
                if ((rc = jskip(&j, 1)))
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
                struct rk__tensor *t;
                if ((rc = rk__tensor_push(&tl, m, &t, eb)))
                    goto out;
                memcpy(t->name, name, strlen(name) + 1);
                rk__tensor_map_name(t);
                spans[n_spans++] = (struct span){e.begin, e.end, tl.n - 1};
                if (dt == RK_DTYPE_AUTO) { /* a dtype the model cannot use */
                    if (t->key[0]) {
                        rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: tensor %s: dtype %s is not "
                                           "supported (F32, F16 or BF16 only)", file, name,
                                           e.dtype);
                        goto out;
                    }
                    t->key[0] = '\0'; /* kept only for the overlap and name checks */
                    continue;
                }
                t->dtype = dt;
                t->ndim = e.ndim;
                memcpy(t->shape, e.shape, sizeof e.shape);
                t->data = data + e.begin;
                t->nbytes = (size_t)nbytes;
            }
            ws(&j);
            if (j.i < j.n && j.s[j.i] == ',') {
                j.i++;
                continue;
            }
            if ((rc = expect(&j, '}')))
                goto out;
            break;
        }
    }
    ws(&j);
    if (j.i != j.n) {
        rc = jerr(&j, "trailing bytes after the JSON object");
        goto out;
    }

    /* no two tensors share a byte */
    if (n_spans > 1)
        qsort(spans, n_spans, sizeof *spans, span_cmp);
    for (size_t i = 1; i < n_spans; i++)
        if (spans[i].begin < spans[i - 1].end && spans[i].begin < spans[i].end) {
            rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: tensors %s and %s overlap", file,
                               tl.v[spans[i - 1].t].name, tl.v[spans[i].t].name);
            goto out;
        }
    /* no two tensors share a name */
    names = rk__malloc((tl.n ? tl.n : 1) * sizeof *names);
    if (!names) {
        rc = rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory", file);
        goto out;
    }
    size_t nn = 0;
    for (size_t i = 0; i < tl.n; i++)
        names[nn++] = tl.v[i].name;
    if (nn > 1)
        qsort(names, nn, sizeof *names, name_cmp);
    for (size_t i = 1; i < nn; i++)
        if (!strcmp(names[i], names[i - 1])) {
            rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: tensor %s appears twice", file, names[i]);
            goto out;
        }

    rc = rk__model_build(m, &tl, p, eb);
out:
    rk__free(names);
    rk__free(spans);
    rk__tensor_list_free(&tl);
    return rc;
}

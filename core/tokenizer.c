/*
 * tokenizer.c - the RWKV World tokenizer, the byte tokenizer and the streaming
 * UTF-8 decoder.
 *
 * World (spec section 2.8): the vocabulary file lists one token per line as
 * `<id> <python literal> <byte length>`. The literal is decoded to bytes, the
 * ids are checked to be 1..N, and a byte trie is built over all tokens. Encoding
 * is greedy longest match over the UTF-8 bytes of the text: from each position
 * walk the trie as far as it goes, emit the longest complete token seen, and
 * continue after it. Id 0 is end-of-text and has no bytes. rk_tok_n_vocab()
 * reports the file's max id + 1 (65530 for rwkv_vocab_v20230424.txt); the
 * model's V is usually padded further (65536).
 *
 * Trie layout: nodes are numbered in breadth-first order, so the children of a
 * node are consecutive and their edge bytes (label[]) can be scanned as one
 * small array. Nodes with many children (the root, " ", ...) also get a dense
 * 256-entry table so the hot first steps are one load each.
 */
#include "core_int.h"

#include <errno.h>
#include <string.h>

/* Longest token the loader accepts, in bytes. The World file's longest is 128. */
#define TOK_LEN_MAX 65535u
/* Nodes with at least this many children get a dense child table. */
#define DENSE_MIN 12u
#define NO_DENSE UINT32_MAX

enum tok_kind { TOK_BYTES, TOK_WORLD };

struct tnode {
    uint32_t first; /* index of the first child; children are consecutive */
    uint32_t tok;   /* token id ending at this node, 0 = none */
    uint32_t dense; /* index of the dense table, or NO_DENSE */
    uint32_t n;     /* number of children (0..256) */
};

struct rk_tokenizer {
    enum tok_kind kind;
    size_t n_vocab; /* max id + 1 */
    uint8_t *blob;  /* token bytes */
    uint32_t *off;  /* [n_vocab] offset of each token in blob */
    uint32_t *len;  /* [n_vocab] byte length of each token (0 for id 0) */
    /* World only: the trie. */
    struct tnode *nodes; /* [n_node] */
    uint8_t *label;      /* [n_node] byte on the edge into each node */
    uint32_t *dense;     /* [n_dense][256] child node, 0 = none (the root is never a child) */
    uint32_t n_node;
};

void rk_tok_free(struct rk_tokenizer *t)
{
    if (!t)
        return;
    rk__free(t->blob);
    rk__free(t->off);
    rk__free(t->len);
    rk__free(t->nodes);
    rk__free(t->label);
    rk__free(t->dense);
    rk__free(t);
}

/* --- byte tokenizer ------------------------------------------------------- */

int rk_tok_create_bytes(struct rk_tokenizer **out)
{
    if (!out)
        return RK_EINVAL;
    *out = NULL;
    struct rk_tokenizer *t = rk__calloc(1, sizeof *t);
    if (!t)
        return RK_ENOMEM;
    t->kind = TOK_BYTES;
    t->n_vocab = 256;
    t->blob = rk__malloc(256);
    t->off = rk__malloc(256 * sizeof *t->off);
    t->len = rk__malloc(256 * sizeof *t->len);
    if (!t->blob || !t->off || !t->len) {
        rk_tok_free(t);
        return RK_ENOMEM;
    }
    for (uint32_t i = 0; i < 256; i++) {
        t->blob[i] = (uint8_t)i;
        t->off[i] = i;
        t->len[i] = 1;
    }
    *out = t;
    return RK_OK;
}

/* --- UTF-8 helpers -------------------------------------------------------- */

/* Length of the sequence a lead byte starts (1..4), or 0 for a byte that can
 * never start a well-formed sequence (continuation bytes, C0, C1, F5..FF). */
static int utf8_need(uint8_t b)
{
    if (b < 0x80)
        return 1;
    if (b >= 0xC2 && b <= 0xDF)
        return 2;
    if (b >= 0xE0 && b <= 0xEF)
        return 3;
    if (b >= 0xF0 && b <= 0xF4)
        return 4;
    return 0;
}

/* Whether `b` may follow at position `pos` (1..3) of a sequence led by `lead`.
 * The second byte's range excludes overlongs (E0, F0), surrogates (ED) and
 * code points above U+10FFFF (F4), as in Unicode's table of well-formed
 * byte sequences. */
static bool utf8_cont_ok(uint8_t lead, int pos, uint8_t b)
{
    if (b < 0x80 || b > 0xBF)
        return false;
    if (pos == 1) {
        switch (lead) {
        case 0xE0: return b >= 0xA0;
        case 0xED: return b <= 0x9F;
        case 0xF0: return b >= 0x90;
        case 0xF4: return b <= 0x8F;
        default: break;
        }
    }
    return true;
}

/* Length of the well-formed sequence at p (avail bytes), or 0. */
static int utf8_valid_at(const uint8_t *p, size_t avail)
{
    int need = utf8_need(p[0]);
    if (!need || (size_t)need > avail)
        return 0;
    for (int i = 1; i < need; i++)
        if (!utf8_cont_ok(p[0], i, p[i]))
            return 0;
    return need;
}

/* Encode code point cp (must be a scalar value) into out; returns 1..4. */
static int utf8_put(uint32_t cp, uint8_t *out)
{
    if (cp < 0x80) {
        out[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (uint8_t)(0xC0 | (cp >> 6));
        out[1] = (uint8_t)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (uint8_t)(0xE0 | (cp >> 12));
        out[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (uint8_t)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (uint8_t)(0xF0 | (cp >> 18));
    out[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (uint8_t)(0x80 | (cp & 0x3F));
    return 4;
}

/* --- World: parsing the vocabulary file ----------------------------------- */

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Read exactly n hex digits at s (n <= 8); -1 if any is missing or not hex. */
static long read_hex(const char *s, const char *e, int n)
{
    if (e - s < n)
        return -1;
    long v = 0;
    for (int i = 0; i < n; i++) {
        int h = hexval(s[i]);
        if (h < 0)
            return -1;
        v = v * 16 + h;
    }
    return v;
}

/*
 * Decode the Python literal [s, e): a str ('...' or "...", UTF-8 encoded) or a
 * bytes literal (b'...' or b"..."). In a str, \xHH, \ooo, \uHHHH and
 * \UHHHHHHHH name code points (so '\x80' is U+0080, two bytes); in bytes, \xHH
 * and \ooo are raw bytes. Writes at most e - s bytes to out. Returns the byte
 * count, or -1 with *why set.
 */
static long parse_literal(const char *s, const char *e, uint8_t *out, const char **why)
{
    bool bytes = false;
    if (s < e && (*s == 'b' || *s == 'B')) {
        bytes = true;
        s++;
    }
    if (e - s < 2 || (*s != '\'' && *s != '"') || e[-1] != *s) {
        *why = "token is not a quoted str or bytes literal";
        return -1;
    }
    const char quote = *s;
    const char *q = s + 1, *end = e - 1;
    long n = 0;
    while (q < end) {
        uint8_t c = (uint8_t)*q;
        if (c == (uint8_t)quote) {
            *why = "unescaped quote inside the literal";
            return -1;
        }
        if (c != '\\') {
            if (bytes) {
                if (c >= 0x80) {
                    *why = "non-ASCII character in a bytes literal";
                    return -1;
                }
                out[n++] = c;
                q++;
                continue;
            }
            int k = utf8_valid_at((const uint8_t *)q, (size_t)(end - q));
            if (!k) {
                *why = "invalid UTF-8 in a str literal";
                return -1;
            }
            memcpy(out + n, q, (size_t)k);
            n += k;
            q += k;
            continue;
        }
        if (q + 1 >= end) {
            *why = "backslash at the end of the literal";
            return -1;
        }
        char esc = q[1];
        q += 2;
        long v;
        switch (esc) {
        case '\\': v = '\\'; break;
        case '\'': v = '\''; break;
        case '"': v = '"'; break;
        case 'n': v = '\n'; break;
        case 't': v = '\t'; break;
        case 'r': v = '\r'; break;
        case 'a': v = '\a'; break;
        case 'b': v = '\b'; break;
        case 'f': v = '\f'; break;
        case 'v': v = '\v'; break;
        case 'x':
            v = read_hex(q, end, 2);
            q += 2;
            break;
        case 'u':
        case 'U':
            if (bytes) {
                *why = "\\u escape in a bytes literal";
                return -1;
            }
            v = read_hex(q, end, esc == 'u' ? 4 : 8);
            q += esc == 'u' ? 4 : 8;
            break;
        default:
            if (esc >= '0' && esc <= '7') {
                /* Octal: one to three digits. */
                v = esc - '0';
                for (int i = 0; i < 2 && q < end && *q >= '0' && *q <= '7'; i++)
                    v = v * 8 + (*q++ - '0');
                break;
            }
            *why = "unknown escape sequence";
            return -1;
        }
        if (v < 0) {
            *why = "malformed hex escape";
            return -1;
        }
        if (bytes) {
            if (v > 0xFF) {
                *why = "escape value above 0xff in a bytes literal";
                return -1;
            }
            out[n++] = (uint8_t)v;
        } else {
            if (v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) {
                *why = "escape is not a Unicode scalar value";
                return -1;
            }
            n += utf8_put((uint32_t)v, out + n);
        }
    }
    return n;
}

/* Parse an unsigned decimal [s, e) of at most 10 digits; -1 if malformed. */
static long long parse_uint(const char *s, const char *e)
{
    if (s >= e || e - s > 10)
        return -1;
    long long v = 0;
    for (; s < e; s++) {
        if (*s < '0' || *s > '9')
            return -1;
        v = v * 10 + (*s - '0');
    }
    return v;
}

/* Build-time data: tokens in file order are decoded into one blob. */
struct build {
    uint8_t *blob;
    uint32_t *off, *len; /* [n_vocab] by id */
    uint32_t *line;      /* [n_vocab] line on which each id was defined, 0 = not yet */
};

static int tok_cmp(const struct build *b, uint32_t x, uint32_t y)
{
    uint32_t lx = b->len[x], ly = b->len[y];
    int c = memcmp(b->blob + b->off[x], b->blob + b->off[y], lx < ly ? lx : ly);
    if (c)
        return c;
    return lx < ly ? -1 : lx > ly;
}

/* Stable bottom-up merge sort of ids[n] by token bytes; tmp has room for n. */
static void sort_ids(const struct build *b, uint32_t *ids, uint32_t *tmp, size_t n)
{
    uint32_t *src = ids, *dst = tmp;
    for (size_t w = 1; w < n; w *= 2) {
        for (size_t lo = 0; lo < n; lo += 2 * w) {
            size_t mid = lo + w < n ? lo + w : n;
            size_t hi = lo + 2 * w < n ? lo + 2 * w : n;
            size_t i = lo, j = mid, k = lo;
            while (i < mid && j < hi)
                dst[k++] = tok_cmp(b, src[j], src[i]) < 0 ? src[j++] : src[i++];
            while (i < mid)
                dst[k++] = src[i++];
            while (j < hi)
                dst[k++] = src[j++];
        }
        uint32_t *x = src;
        src = dst;
        dst = x;
    }
    if (src != ids)
        memcpy(ids, src, n * sizeof *ids);
}

/*
 * Build the trie from ids sorted by bytes. Node i covers the sorted range
 * [rlo[i], rhi[i]) of tokens sharing its depth-byte prefix; because a prefix
 * sorts before its extensions, the token ending exactly at node i (if any) is
 * the first of its range. Children are created in breadth-first order.
 */
static int build_trie(struct rk_tokenizer *t, const struct build *b, const uint32_t *sorted,
                      size_t n_tok, size_t total_bytes)
{
    int rc = RK_ENOMEM;
    size_t cap = total_bytes + 1;
    uint32_t *rlo = rk__malloc(cap * sizeof *rlo);
    uint32_t *rhi = rk__malloc(cap * sizeof *rhi);
    uint32_t *depth = rk__malloc(cap * sizeof *depth);
    t->nodes = rk__malloc(cap * sizeof *t->nodes);
    t->label = rk__malloc(cap);
    if (!rlo || !rhi || !depth || !t->nodes || !t->label)
        goto out;

    uint32_t n_node = 1, n_dense = 0;
    rlo[0] = 0;
    rhi[0] = (uint32_t)n_tok;
    depth[0] = 0;
    t->label[0] = 0;
    for (uint32_t i = 0; i < n_node; i++) {
        uint32_t lo = rlo[i], hi = rhi[i], d = depth[i];
        struct tnode *nd = &t->nodes[i];
        nd->tok = 0;
        nd->dense = NO_DENSE;
        if (lo < hi && b->len[sorted[lo]] == d)
            nd->tok = sorted[lo++];
        nd->first = n_node;
        nd->n = 0;
        while (lo < hi) {
            uint8_t c = b->blob[b->off[sorted[lo]] + d];
            uint32_t j = lo + 1;
            while (j < hi && b->blob[b->off[sorted[j]] + d] == c)
                j++;
            RK_ASSERT(n_node < cap);
            t->label[n_node] = c;
            rlo[n_node] = lo;
            rhi[n_node] = j;
            depth[n_node] = d + 1;
            n_node++;
            nd->n++;
            lo = j;
        }
        if (nd->n >= DENSE_MIN)
            nd->dense = n_dense++;
    }
    t->n_node = n_node;

    t->dense = rk__calloc((size_t)n_dense * 256, sizeof *t->dense);
    if (!t->dense)
        goto out;
    for (uint32_t i = 0; i < n_node; i++) {
        const struct tnode *nd = &t->nodes[i];
        if (nd->dense == NO_DENSE)
            continue;
        for (uint32_t k = 0; k < nd->n; k++)
            t->dense[(size_t)nd->dense * 256 + t->label[nd->first + k]] = nd->first + k;
    }
    rc = RK_OK;
out:
    rk__free(rlo);
    rk__free(rhi);
    rk__free(depth);
    return rc;
}

static inline uint32_t trie_child(const struct rk_tokenizer *t, uint32_t node, uint8_t c)
{
    const struct tnode *nd = &t->nodes[node];
    if (nd->dense != NO_DENSE)
        return t->dense[(size_t)nd->dense * 256 + c];
    const uint8_t *lab = t->label + nd->first;
    for (uint32_t i = 0; i < nd->n; i++) {
        if (lab[i] == c)
            return nd->first + i;
        if (lab[i] > c) /* labels are sorted */
            break;
    }
    return 0;
}

static int read_whole_file(const char *path, char **buf, size_t *len, struct rk_errbuf *eb)
{
    *buf = NULL;
    FILE *f = fopen(path, "rb");
    if (!f)
        return rk_errbuf_set(eb, RK_EIO, "%s: %s", path, strerror(errno));
    int rc = RK_OK;
    long n = -1;
    if (fseek(f, 0, SEEK_END) == 0)
        n = ftell(f);
    if (n < 0 || fseek(f, 0, SEEK_SET) != 0) {
        rc = rk_errbuf_set(eb, RK_EIO, "%s: cannot determine the file size", path);
        goto out;
    }
    *buf = rk__malloc((size_t)n + 1);
    if (!*buf) {
        rc = rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory reading the file", path);
        goto out;
    }
    if (fread(*buf, 1, (size_t)n, f) != (size_t)n) {
        rc = rk_errbuf_set(eb, RK_EIO, "%s: read error", path);
        rk__free(*buf);
        *buf = NULL;
        goto out;
    }
    (*buf)[n] = '\0';
    *len = (size_t)n;
out:
    fclose(f);
    return rc;
}

/* The checks and the trie shared by the vocabulary file and the GGUF
 * metadata: ids 1..max_id all defined (n_tok of them), no two tokens with the
 * same bytes, every single byte a token. Takes b's arrays (freed on failure);
 * `gguf` words the messages by token index instead of file line. */
static int world_finish(struct build *bp, size_t n_tok, uint32_t max_id, size_t blob_len,
                        const char *path, bool gguf, struct rk_tokenizer **out,
                        struct rk_errbuf *eb)
{
    struct build b = *bp;
    struct rk_tokenizer *t = NULL;
    uint32_t *sorted = NULL, *tmp = NULL;
    int rc;
    if (n_tok == 0) {
        rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: no tokens", path);
        goto fail;
    }
    if (max_id != n_tok) {
        uint32_t missing = 1;
        while (b.line[missing])
            missing++;
        rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: id %u is missing (ids must be 1..%u)", path,
                           missing, max_id);
        goto fail;
    }

    /* Sort the ids by their bytes; equal neighbours are duplicate tokens. */
    rc = RK_ENOMEM;
    sorted = rk__malloc(n_tok * sizeof *sorted);
    tmp = rk__malloc(n_tok * sizeof *tmp);
    t = rk__calloc(1, sizeof *t);
    if (!sorted || !tmp || !t) {
        rk_errbuf_set(eb, rc, "%s: out of memory", path);
        goto fail;
    }
    for (size_t i = 0; i < n_tok; i++)
        sorted[i] = (uint32_t)(i + 1);
    sort_ids(&b, sorted, tmp, n_tok);
    for (size_t i = 1; i < n_tok; i++) {
        if (tok_cmp(&b, sorted[i - 1], sorted[i]) == 0) {
            uint32_t x = sorted[i - 1], y = sorted[i];
            uint32_t later = b.line[x] > b.line[y] ? x : y, earlier = later == x ? y : x;
            if (gguf)
                rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: token %u has the same bytes as token "
                                   "%u", path, later, earlier);
            else
                rc = rk_errbuf_set(eb, RK_EFORMAT,
                                   "%s:%u: token %u has the same bytes as token %u (line %u)",
                                   path, b.line[later], later, earlier, b.line[earlier]);
            goto fail;
        }
    }

    t->kind = TOK_WORLD;
    t->n_vocab = (size_t)max_id + 1;
    rc = build_trie(t, &b, sorted, n_tok, blob_len);
    if (rc) {
        rk_errbuf_set(eb, rc, "%s: out of memory", path);
        goto fail;
    }
    /* Greedy matching needs every single byte as a token (World: ids 1..256). */
    for (int c = 0; c < 256; c++) {
        uint32_t node = trie_child(t, 0, (uint8_t)c);
        if (!node || !t->nodes[node].tok) {
            rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: no token for the single byte 0x%02x", path, c);
            goto fail;
        }
    }

    /* Keep the decoded bytes; shrink the blob to what was used. */
    uint8_t *shrunk = rk__realloc(b.blob, blob_len ? blob_len : 1);
    if (shrunk)
        b.blob = shrunk;
    t->blob = b.blob;
    t->off = b.off;
    t->len = b.len;
    b.blob = NULL;
    b.off = b.len = NULL;
    rk__free(b.line);
    rk__free(sorted);
    rk__free(tmp);
    *out = t;
    return RK_OK;

fail:
    rk_tok_free(t);
    rk__free(b.blob);
    rk__free(b.off);
    rk__free(b.len);
    rk__free(b.line);
    rk__free(sorted);
    rk__free(tmp);
    return rc;
}

int rk__tok_world_build(const uint8_t *blob, const uint32_t *off, const uint32_t *len,
                        size_t n_tok, const char *what, struct rk_tokenizer **out,
                        struct rk_errbuf *eb)
{
    *out = NULL;
    struct build b = {0};
    size_t blob_len = 0;
    if (n_tok == 0 || n_tok >= UINT32_MAX / 2)
        return rk_errbuf_set(eb, RK_EFORMAT, "%s: %zu tokens", what, n_tok);
    for (size_t i = 1; i <= n_tok; i++) {
        if (len[i] == 0 || len[i] > TOK_LEN_MAX)
            return rk_errbuf_set(eb, RK_EFORMAT, "%s: token %zu is empty or longer than %u "
                                 "bytes", what, i, TOK_LEN_MAX);
        blob_len += len[i];
    }
    b.blob = rk__malloc(blob_len + 1);
    b.off = rk__calloc(n_tok + 1, sizeof *b.off);
    b.len = rk__calloc(n_tok + 1, sizeof *b.len);
    b.line = rk__calloc(n_tok + 1, sizeof *b.line);
    if (!b.blob || !b.off || !b.len || !b.line || blob_len > UINT32_MAX) {
        rk__free(b.blob);
        rk__free(b.off);
        rk__free(b.len);
        rk__free(b.line);
        return rk_errbuf_set(eb, RK_ENOMEM, "%s: out of memory", what);
    }
    size_t at = 0;
    for (size_t i = 1; i <= n_tok; i++) {
        memcpy(b.blob + at, blob + off[i], len[i]);
        b.off[i] = (uint32_t)at;
        b.len[i] = len[i];
        b.line[i] = (uint32_t)i;
        at += len[i];
    }
    return world_finish(&b, n_tok, (uint32_t)n_tok, blob_len, what, true, out, eb);
}

int rk_tok_load_world(const char *path, struct rk_tokenizer **out, struct rk_errbuf *eb)
{
    if (!out)
        return rk_errbuf_set(eb, RK_EINVAL, "rk_tok_load_world: out is NULL");
    *out = NULL;
    if (!path)
        return rk_errbuf_set(eb, RK_EINVAL, "rk_tok_load_world: path is NULL");

    char *text = NULL;
    size_t text_len = 0;
    int rc = read_whole_file(path, &text, &text_len, eb);
    if (rc)
        return rc;

    struct build b = {0};

    /* Ids are unique and at most the number of lines, so per-id arrays sized
     * by the line count are enough; every id > n_lines implies a gap. */
    size_t n_lines = 1;
    for (size_t i = 0; i < text_len; i++)
        n_lines += text[i] == '\n';
    if (n_lines >= UINT32_MAX / 2) {
        rc = rk_errbuf_set(eb, RK_EFORMAT, "%s: too many lines", path);
        goto fail;
    }
    rc = RK_ENOMEM;
    b.blob = rk__malloc(text_len + 1);
    b.off = rk__calloc(n_lines + 1, sizeof *b.off);
    b.len = rk__calloc(n_lines + 1, sizeof *b.len);
    b.line = rk__calloc(n_lines + 1, sizeof *b.line);
    if (!b.blob || !b.off || !b.len || !b.line) {
        rk_errbuf_set(eb, rc, "%s: out of memory", path);
        goto fail;
    }

    size_t blob_len = 0, n_tok = 0;
    uint32_t max_id = 0;
    const char *p = text, *end = text + text_len;
    for (size_t line_no = 1; p < end; line_no++) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol)
            eol = end;
        const char *ls = p, *le = eol;
        p = eol + 1;
        if (le > ls && le[-1] == '\r')
            le--;
        if (le == ls)
            continue; /* blank lines (e.g. after the final newline) are ignored */

        const char *why = NULL;
        const char *sp1 = memchr(ls, ' ', (size_t)(le - ls));
        const char *sp2 = le - 1;
        while (sp2 > ls && *sp2 != ' ')
            sp2--;
        if (!sp1 || sp1 == sp2) {
            why = "expected `<id> <literal> <byte length>`";
            goto bad_line;
        }
        long long id = parse_uint(ls, sp1);
        long long declared = parse_uint(sp2 + 1, le);
        if (id < 0) {
            why = "the id is not a decimal number";
            goto bad_line;
        }
        if (declared < 0) {
            why = "the byte length is not a decimal number";
            goto bad_line;
        }
        if (id == 0) {
            why = "id 0 is reserved for end-of-text";
            goto bad_line;
        }
        if ((size_t)id > n_lines) {
            rc = rk_errbuf_set(eb, RK_EFORMAT,
                               "%s:%zu: id %lld is larger than the number of lines (ids must "
                               "be 1..N without gaps)",
                               path, line_no, id);
            goto fail;
        }
        if (b.line[id]) {
            rc = rk_errbuf_set(eb, RK_EFORMAT, "%s:%zu: id %lld was already defined on line %u",
                               path, line_no, id, b.line[id]);
            goto fail;
        }
        long n = parse_literal(sp1 + 1, sp2, b.blob + blob_len, &why);
        if (n < 0)
            goto bad_line;
        if (n == 0) {
            why = "empty token";
            goto bad_line;
        }
        if (n > (long)TOK_LEN_MAX) {
            why = "token longer than 65535 bytes";
            goto bad_line;
        }
        if (n != declared) {
            rc = rk_errbuf_set(eb, RK_EFORMAT,
                               "%s:%zu: the literal decodes to %ld bytes but the line says %lld",
                               path, line_no, n, declared);
            goto fail;
        }
        b.off[id] = (uint32_t)blob_len;
        b.len[id] = (uint32_t)n;
        b.line[id] = (uint32_t)line_no;
        blob_len += (size_t)n;
        n_tok++;
        if ((uint32_t)id > max_id)
            max_id = (uint32_t)id;
        continue;
    bad_line:
        rc = rk_errbuf_set(eb, RK_EFORMAT, "%s:%zu: %s", path, line_no, why);
        goto fail;
    }
    rk__free(text);
    text = NULL;
    return world_finish(&b, n_tok, max_id, blob_len, path, false, out, eb);

fail:
    rk__free(b.blob);
    rk__free(b.off);
    rk__free(b.len);
    rk__free(b.line);
    rk__free(text);
    return rc;
}

/* --- queries and encoding ------------------------------------------------- */

size_t rk_tok_n_vocab(const struct rk_tokenizer *t) { return t ? t->n_vocab : 0; }

bool rk_tok_is_bytes(const struct rk_tokenizer *t) { return t && t->kind == TOK_BYTES; }

const uint8_t *rk_tok_bytes(const struct rk_tokenizer *t, uint32_t id, size_t *len)
{
    if (!t || id >= t->n_vocab || t->len[id] == 0) {
        if (len)
            *len = 0;
        return NULL;
    }
    if (len)
        *len = t->len[id];
    return t->blob + t->off[id];
}

int rk_tok_encode(const struct rk_tokenizer *t, const char *text, size_t len, uint32_t *ids,
                  size_t cap, size_t *n_out)
{
    if (n_out)
        *n_out = 0;
    if (!t || (!text && len) || (!ids && cap))
        return RK_EINVAL;
    const uint8_t *s = (const uint8_t *)text;
    size_t n = 0;
    if (t->kind == TOK_BYTES) {
        for (size_t i = 0; i < len && i < cap; i++)
            ids[i] = s[i];
        n = len;
    } else {
        size_t p = 0;
        while (p < len) {
            uint32_t node = 0, best = 0;
            size_t best_len = 0;
            for (size_t q = p; q < len; q++) {
                node = trie_child(t, node, s[q]);
                if (!node)
                    break;
                if (t->nodes[node].tok) {
                    best = t->nodes[node].tok;
                    best_len = q - p + 1;
                }
            }
            /* The loader checked that every single byte is a token. */
            RK_ASSERT(best_len > 0);
            if (n < cap)
                ids[n] = best;
            n++;
            p += best_len;
        }
    }
    if (n_out)
        *n_out = n;
    return n > cap ? RK_ERANGE : RK_OK;
}

/* --- streaming decoder ---------------------------------------------------- */

struct outbuf {
    char *p;
    size_t n, cap;
    bool over;
};

static void put(struct outbuf *o, const void *s, size_t n)
{
    if (o->over || n > o->cap - o->n) {
        o->over = true;
        return;
    }
    memcpy(o->p + o->n, s, n);
    o->n += n;
}

static const uint8_t REPLACEMENT[3] = {0xEF, 0xBF, 0xBD}; /* U+FFFD */

/*
 * One byte through the decoder. pend holds a valid but incomplete prefix of a
 * sequence. A byte that cannot continue it ends the prefix (one U+FFFD for
 * the whole maximal prefix) and is then looked at again as a new start.
 */
static void stream_byte(struct rk_utf8_stream *s, uint8_t b, struct outbuf *o)
{
    if (s->n_pend > 0) {
        if (utf8_cont_ok(s->pend[0], s->n_pend, b)) {
            s->pend[s->n_pend++] = b;
            if (s->n_pend == utf8_need(s->pend[0])) {
                put(o, s->pend, (size_t)s->n_pend);
                s->n_pend = 0;
            }
            return;
        }
        put(o, REPLACEMENT, 3);
        s->n_pend = 0;
    }
    int need = utf8_need(b);
    if (need == 1)
        put(o, &b, 1);
    else if (need == 0)
        put(o, REPLACEMENT, 3);
    else {
        s->pend[0] = b;
        s->n_pend = 1;
    }
}

void rk_utf8_stream_init(struct rk_utf8_stream *s)
{
    if (s)
        memset(s, 0, sizeof *s);
}

/* A state that was not produced by this decoder is rejected. */
static bool stream_state_ok(const struct rk_utf8_stream *s)
{
    if (s->n_pend < 0 || s->n_pend > 3)
        return false;
    if (s->n_pend == 0)
        return true;
    int need = utf8_need(s->pend[0]);
    if (need < 2 || s->n_pend >= need)
        return false;
    for (int i = 1; i < s->n_pend; i++)
        if (!utf8_cont_ok(s->pend[0], i, s->pend[i]))
            return false;
    return true;
}

int rk_tok_decode_stream(const struct rk_tokenizer *t, struct rk_utf8_stream *s, uint32_t id,
                         char *out, size_t cap)
{
    if (!t || !s || (!out && cap) || !stream_state_ok(s))
        return RK_EINVAL;
    size_t len = 0;
    const uint8_t *bytes = rk_tok_bytes(t, id, &len);
    /* Work on a copy so that RK_ERANGE leaves the stream as it was. */
    struct rk_utf8_stream tmp = *s;
    struct outbuf o = {out, 0, cap, false};
    for (size_t i = 0; i < len; i++)
        stream_byte(&tmp, bytes[i], &o);
    if (o.over)
        return RK_ERANGE;
    *s = tmp;
    return (int)o.n;
}

int rk_utf8_stream_flush(struct rk_utf8_stream *s, char *out, size_t cap)
{
    if (!s || (!out && cap) || !stream_state_ok(s))
        return RK_EINVAL;
    if (s->n_pend == 0)
        return 0;
    if (cap < 3)
        return RK_ERANGE;
    memcpy(out, REPLACEMENT, 3);
    s->n_pend = 0;
    return 3;
}

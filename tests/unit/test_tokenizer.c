/*
 * test_tokenizer.c - the World and byte tokenizers and the streaming UTF-8
 * decoder. The self-contained suite uses the byte tokenizer and small
 * vocabulary files written to a temporary directory; the World suite reads
 * ../shared/fixtures/tokenizer (the real vocabulary and its public case).
 */
#include "check_common.h"
#include "core_int.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* --- helpers -------------------------------------------------------------- */

/* An independent UTF-8 validator: decode each sequence to a code point and
 * reject overlongs, surrogates, values above U+10FFFF and truncation. */
static bool valid_utf8(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint32_t c = s[i], cp, min;
        size_t k;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            k = 1, cp = c & 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            k = 2, cp = c & 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            k = 3, cp = c & 0x07, min = 0x10000;
        } else {
            return false;
        }
        for (size_t j = 1; j <= k; j++) {
            if (i + j >= n || (s[i + j] & 0xC0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + j] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += k + 1;
    }
    return true;
}

static uint64_t test_rng(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

/* Append code point cp as UTF-8. */
static size_t put_cp(uint8_t *o, uint32_t cp)
{
    if (cp < 0x80) {
        o[0] = (uint8_t)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (uint8_t)(0xC0 | cp >> 6);
        o[1] = (uint8_t)(0x80 | (cp & 63));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (uint8_t)(0xE0 | cp >> 12);
        o[1] = (uint8_t)(0x80 | ((cp >> 6) & 63));
        o[2] = (uint8_t)(0x80 | (cp & 63));
        return 3;
    }
    o[0] = (uint8_t)(0xF0 | cp >> 18);
    o[1] = (uint8_t)(0x80 | ((cp >> 12) & 63));
    o[2] = (uint8_t)(0x80 | ((cp >> 6) & 63));
    o[3] = (uint8_t)(0x80 | (cp & 63));
    return 4;
}

/* Stream-decode ids[n] (with the final flush) into a malloc'd buffer. */
static char *decode_stream_all(const struct rk_tokenizer *t, const uint32_t *ids, size_t n,
                               size_t *out_len)
{
    size_t cap = 16, len = 0;
    for (size_t i = 0; i < n; i++) {
        size_t tl = 0;
        rk_tok_bytes(t, ids[i], &tl);
        cap += tl * 3 + 8;
    }
    char *out = malloc(cap);
    ck_assert_ptr_nonnull(out);
    struct rk_utf8_stream st;
    rk_utf8_stream_init(&st);
    for (size_t i = 0; i < n; i++) {
        int w = rk_tok_decode_stream(t, &st, ids[i], out + len, cap - len);
        ck_assert_int_ge(w, 0);
        len += (size_t)w;
    }
    int w = rk_utf8_stream_flush(&st, out + len, cap - len);
    ck_assert_int_ge(w, 0);
    len += (size_t)w;
    *out_len = len;
    return out;
}

/* Concatenate the raw bytes of ids[n] into a malloc'd buffer. */
static uint8_t *concat_bytes(const struct rk_tokenizer *t, const uint32_t *ids, size_t n,
                             size_t *out_len)
{
    size_t cap = 1;
    for (size_t i = 0; i < n; i++) {
        size_t tl = 0;
        rk_tok_bytes(t, ids[i], &tl);
        cap += tl;
    }
    uint8_t *out = malloc(cap);
    ck_assert_ptr_nonnull(out);
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        size_t tl = 0;
        const uint8_t *b = rk_tok_bytes(t, ids[i], &tl);
        if (tl)
            memcpy(out + len, b, tl);
        len += tl;
    }
    *out_len = len;
    return out;
}

/* Encode, sizing the output from a first call with cap 0. */
static uint32_t *encode_all(const struct rk_tokenizer *t, const void *text, size_t len,
                            size_t *n_out)
{
    size_t need = 0;
    int rc = rk_tok_encode(t, text, len, NULL, 0, &need);
    ck_assert_int_eq(rc, len ? RK_ERANGE : RK_OK);
    ck_assert_uint_le(need, len);
    uint32_t *ids = malloc((need + 1) * sizeof *ids);
    ck_assert_ptr_nonnull(ids);
    size_t n = 0;
    ck_assert_int_eq(rk_tok_encode(t, text, len, ids, need, &n), RK_OK);
    ck_assert_uint_eq(n, need);
    *n_out = n;
    return ids;
}

/* The World-format line of single byte b as a bytes literal (id b + 1). */
static int byte_line(char *o, size_t cap, int b)
{
    return snprintf(o, cap, "%d b'\\x%02x' 1\n", b + 1, b);
}

/* Write a vocabulary: the 256 single bytes (ids 1..256) followed by `extra`. */
static const char *write_vocab(const char *name, const char *extra)
{
    static char path[512];
    snprintf(path, sizeof path, "%s/%s", rk_test_tmpdir(), name);
    size_t cap = 256 * 24 + strlen(extra) + 1, n = 0;
    char *buf = malloc(cap);
    ck_assert_ptr_nonnull(buf);
    for (int b = 0; b < 256; b++)
        n += (size_t)byte_line(buf + n, cap - n, b);
    memcpy(buf + n, extra, strlen(extra));
    n += strlen(extra);
    ck_assert_int_eq(rk_test_write_file(path, buf, n), 0);
    free(buf);
    return path;
}

/* --- byte tokenizer and streaming decoder --------------------------------- */

START_TEST(bytes_basic)
{
    struct rk_tokenizer *t = NULL;
    ck_assert_int_eq(rk_tok_create_bytes(&t), RK_OK);
    ck_assert(rk_tok_is_bytes(t));
    ck_assert_uint_eq(rk_tok_n_vocab(t), 256);
    const char text[] = "a\0b\xff\x80 z";
    size_t n = 0;
    uint32_t ids[16];
    ck_assert_int_eq(rk_tok_encode(t, text, sizeof text - 1, ids, 16, &n), RK_OK);
    ck_assert_uint_eq(n, sizeof text - 1);
    for (size_t i = 0; i < n; i++)
        ck_assert_uint_eq(ids[i], (uint8_t)text[i]);
    /* Id 0 is the NUL byte here, not end-of-text. */
    size_t len = 0;
    const uint8_t *b = rk_tok_bytes(t, 0, &len);
    ck_assert_ptr_nonnull(b);
    ck_assert_uint_eq(len, 1);
    ck_assert_uint_eq(b[0], 0);
    ck_assert_ptr_null(rk_tok_bytes(t, 256, &len));
    ck_assert_uint_eq(len, 0);
    /* Too small a cap: RK_ERANGE with the needed count. */
    ck_assert_int_eq(rk_tok_encode(t, text, sizeof text - 1, ids, 3, &n), RK_ERANGE);
    ck_assert_uint_eq(n, sizeof text - 1);
    ck_assert_int_eq(rk_tok_encode(t, "", 0, NULL, 0, &n), RK_OK);
    ck_assert_uint_eq(n, 0);
    /* NUL passes through the streaming decoder. */
    struct rk_utf8_stream st;
    rk_utf8_stream_init(&st);
    char out[16];
    ck_assert_int_eq(rk_tok_decode_stream(t, &st, 0, out, sizeof out), 1);
    ck_assert_int_eq(out[0], 0);
    ck_assert_int_eq(rk_tok_decode_stream(t, &st, 300, out, sizeof out), 0);
    rk_tok_free(t);
    rk_tok_free(NULL);
}
END_TEST

/* A 4-byte character split over four tokens comes out only when complete. */
START_TEST(stream_split_char)
{
    struct rk_tokenizer *t = NULL;
    ck_assert_int_eq(rk_tok_create_bytes(&t), RK_OK);
    const uint8_t emoji[4] = {0xF0, 0x9F, 0x98, 0x80}; /* U+1F600 */
    struct rk_utf8_stream st;
    rk_utf8_stream_init(&st);
    char out[32];
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(rk_tok_decode_stream(t, &st, emoji[i], out, sizeof out), 0);
    ck_assert_int_eq(rk_tok_decode_stream(t, &st, emoji[3], out, sizeof out), 4);
    ck_assert_mem_eq(out, emoji, 4);
    ck_assert_int_eq(rk_utf8_stream_flush(&st, out, sizeof out), 0);

    /* RK_ERANGE leaves the stream as it was. */
    ck_assert_int_eq(rk_tok_decode_stream(t, &st, 0xE4, out, sizeof out), 0);
    ck_assert_int_eq(rk_tok_decode_stream(t, &st, 0xBB, out, sizeof out), 0);
    ck_assert_int_eq(rk_tok_decode_stream(t, &st, 0xA5, out, 2), RK_ERANGE);
    ck_assert_int_eq(rk_tok_decode_stream(t, &st, 0xA5, out, 3), 3);
    ck_assert_mem_eq(out, "\xE4\xBB\xA5", 3);

    /* An incomplete tail is flushed as one U+FFFD. */
    ck_assert_int_eq(rk_tok_decode_stream(t, &st, 0xF0, out, sizeof out), 0);
    ck_assert_int_eq(rk_tok_decode_stream(t, &st, 0x9F, out, sizeof out), 0);
    ck_assert_int_eq(rk_utf8_stream_flush(&st, out, 2), RK_ERANGE);
    ck_assert_int_eq(rk_utf8_stream_flush(&st, out, sizeof out), 3);
    ck_assert_mem_eq(out, "\xEF\xBF\xBD", 3);
    ck_assert_int_eq(rk_utf8_stream_flush(&st, out, sizeof out), 0);

    /* A corrupted stream state is rejected. */
    st.n_pend = 7;
    ck_assert_int_eq(rk_tok_decode_stream(t, &st, 'a', out, sizeof out), RK_EINVAL);
    rk_tok_free(t);
}
END_TEST

/* Replacement of ill-formed input, one U+FFFD per maximal ill-formed part. */
START_TEST(stream_replacement)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        {"\xC0\xAF", "\xEF\xBF\xBD\xEF\xBF\xBD"},                                 /* overlong '/' */
        {"\xE0\x80\x80", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"},                 /* overlong */
        {"\xED\xA0\x80", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"},                 /* surrogate */
        {"\xF4\x90\x80\x80", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"}, /* >10FFFF */
        {"\xF8\x88\x80\x80\x80", "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"},
        {"a\x80"
         "b",
         "a\xEF\xBF\xBD"
         "b"}, /* stray */
        {"\xF0\x9F\x98"
         "A",
         "\xEF\xBF\xBD"
         "A"},                                                /* truncated */
        {"\xE2\x82\xE2\x82\xAC", "\xEF\xBF\xBD\xE2\x82\xAC"}, /* restart */
        {"\xF4\x8F\xBF\xBF", "\xF4\x8F\xBF\xBF"},             /* U+10FFFF */
        {"\xED\x9F\xBF", "\xED\x9F\xBF"},                     /* U+D7FF */
        {"\xFF\xFE", "\xEF\xBF\xBD\xEF\xBF\xBD"},
        {"\xC2", "\xEF\xBF\xBD"}, /* flushed at the end */
    };
    struct rk_tokenizer *t = NULL;
    ck_assert_int_eq(rk_tok_create_bytes(&t), RK_OK);
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        size_t n = strlen(cases[c].in);
        uint32_t ids[16];
        for (size_t i = 0; i < n; i++)
            ids[i] = (uint8_t)cases[c].in[i];
        size_t len = 0;
        char *out = decode_stream_all(t, ids, n, &len);
        ck_assert_msg(len == strlen(cases[c].out) && !memcmp(out, cases[c].out, len),
                      "case %zu: wrong replacement (%zu bytes)", c, len);
        ck_assert(valid_utf8((const uint8_t *)out, len));
        free(out);
    }
    rk_tok_free(t);
}
END_TEST

/* Random bytes fed in random groupings always decode to valid UTF-8, the same
 * however they are grouped; valid UTF-8 comes back unchanged. */
START_TEST(stream_random)
{
    struct rk_tokenizer *t = NULL;
    ck_assert_int_eq(rk_tok_create_bytes(&t), RK_OK);
    uint64_t x = 0x1234567;
    uint8_t in[512];
    uint32_t ids[512];
    for (int it = 0; it < 2000; it++) {
        size_t n = test_rng(&x) % 64;
        bool valid = it % 2;
        if (valid) {
            size_t k = 0;
            while (k + 4 < sizeof in && k < n) {
                uint32_t cp;
                do
                    cp = (uint32_t)(test_rng(&x) % 0x110000);
                while (cp >= 0xD800 && cp <= 0xDFFF);
                k += put_cp(in + k, cp);
            }
            n = k;
        } else {
            for (size_t i = 0; i < n; i++) {
                uint64_t r = test_rng(&x);
                /* bias towards bytes that make near-valid sequences */
                in[i] = (uint8_t)(r % 3 == 0 ? 0x80 | (r >> 8) % 64 : (r >> 8) % 256);
            }
        }
        for (size_t i = 0; i < n; i++)
            ids[i] = in[i];
        size_t len = 0;
        char *out = decode_stream_all(t, ids, n, &len);
        ck_assert(valid_utf8((const uint8_t *)out, len));
        if (valid)
            ck_assert(len == n && !memcmp(out, in, n));
        free(out);
    }
    rk_tok_free(t);
}
END_TEST

/* --- World format: small vocabulary files --------------------------------- */

START_TEST(vocab_escapes_and_greedy)
{
    /* Lines out of order, CRLF endings, spaces inside literals, every escape. */
    const char *extra = "257 '\\x80' 2\r\n"
                        "259 '\\u3000' 3\n"
                        "258 b'\\x80\\x81' 2\n"
                        "260 '\\n\\t\\r\\\\\\'\"' 6\n"
                        "262 'a b c' 5\n"
                        "261 \"it's\" 4\n"
                        "263 '\\U0001f600' 4\n"
                        "264 '\xc3\xa9' 2\n"
                        "265 '\\101\\102' 2\n"
                        "266 'ab' 2\n"
                        "267 'abcde' 5\n"
                        "268 'abc' 3\n"
                        "\n";
    const char *path = write_vocab("good.txt", extra);
    struct rk_tokenizer *t = NULL;
    struct rk_errbuf eb = {0};
    ck_assert_msg(rk_tok_load_world(path, &t, &eb) == RK_OK, "%s", eb.msg);
    ck_assert(!rk_tok_is_bytes(t));
    ck_assert_uint_eq(rk_tok_n_vocab(t), 269);
    static const struct {
        uint32_t id;
        const char *bytes;
        size_t len;
    } want[] = {
        {257, "\xC2\x80", 2},
        {258, "\x80\x81", 2},
        {259, "\xE3\x80\x80", 3},
        {260, "\n\t\r\\'\"", 6},
        {261, "it's", 4},
        {262, "a b c", 5},
        {263, "\xF0\x9F\x98\x80", 4},
        {264, "\xC3\xA9", 2},
        {265, "AB", 2},
        {1, "\0", 1},
        {256, "\xFF", 1},
        {'a' + 1, "a", 1},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        size_t len = 0;
        const uint8_t *b = rk_tok_bytes(t, want[i].id, &len);
        ck_assert_msg(b && len == want[i].len && !memcmp(b, want[i].bytes, len),
                      "token %u has the wrong bytes", want[i].id);
    }
    size_t len = 99;
    ck_assert_ptr_null(rk_tok_bytes(t, 0, &len)); /* end-of-text */
    ck_assert_uint_eq(len, 0);
    ck_assert_ptr_null(rk_tok_bytes(t, 269, &len));

    /* Greedy longest match falls back to the last complete token on the path. */
    uint32_t ids[16];
    size_t n = 0;
    ck_assert_int_eq(rk_tok_encode(t, "abcdx", 5, ids, 16, &n), RK_OK);
    ck_assert_uint_eq(n, 3);
    ck_assert_uint_eq(ids[0], 268);
    ck_assert_uint_eq(ids[1], 'd' + 1);
    ck_assert_uint_eq(ids[2], 'x' + 1);
    ck_assert_int_eq(rk_tok_encode(t, "abcdeab", 7, ids, 16, &n), RK_OK);
    ck_assert_uint_eq(n, 2);
    ck_assert_uint_eq(ids[0], 267);
    ck_assert_uint_eq(ids[1], 266);
    ck_assert_int_eq(rk_tok_encode(t, "abcdeab", 7, ids, 1, &n), RK_ERANGE);
    ck_assert_uint_eq(n, 2);
    ck_assert_uint_eq(ids[0], 267);
    ck_assert_int_eq(rk_tok_encode(t, "\xC2\x80\xC2", 3, ids, 16, &n), RK_OK);
    ck_assert_uint_eq(n, 2);
    ck_assert_uint_eq(ids[0], 257);
    ck_assert_uint_eq(ids[1], 0xC2 + 1);

    /* World: id 0 and unknown ids decode to nothing and keep the held prefix. */
    struct rk_utf8_stream st;
    rk_utf8_stream_init(&st);
    char out[64];
    ck_assert_int_eq(rk_tok_decode_stream(t, &st, 0xF0 + 1, out, sizeof out), 0);
    ck_assert_int_eq(rk_tok_decode_stream(t, &st, 0, out, sizeof out), 0);
    ck_assert_int_eq(rk_tok_decode_stream(t, &st, 100000, out, sizeof out), 0);
    ck_assert_int_eq(rk_tok_decode_stream(t, &st, 0x9F + 1, out, sizeof out), 0);
    ck_assert_int_eq(rk_tok_decode_stream(t, &st, 0x98 + 1, out, sizeof out), 0);
    ck_assert_int_eq(rk_tok_decode_stream(t, &st, 0x80 + 1, out, sizeof out), 4);
    ck_assert_mem_eq(out, "\xF0\x9F\x98\x80", 4);
    ck_assert_int_eq(rk_tok_decode_stream(t, &st, 263, out, sizeof out), 4);
    ck_assert_mem_eq(out, "\xF0\x9F\x98\x80", 4);
    rk_tok_free(t);
}
END_TEST

static void expect_bad(const char *name, const char *extra, int code, const char *needle)
{
    const char *path = write_vocab(name, extra);
    struct rk_tokenizer *t = (struct rk_tokenizer *)1;
    struct rk_errbuf eb = {0};
    int rc = rk_tok_load_world(path, &t, &eb);
    ck_assert_msg(rc == code, "%s: got %d (%s), want %d", name, rc, eb.msg, code);
    ck_assert_ptr_null(t);
    ck_assert_int_eq(eb.code, code);
    ck_assert_msg(strstr(eb.msg, name) != NULL, "%s: message lacks the file: %s", name, eb.msg);
    ck_assert_msg(strstr(eb.msg, needle) != NULL, "%s: message lacks '%s': %s", name, needle,
                  eb.msg);
}

START_TEST(vocab_malformed)
{
    expect_bad("len.txt", "257 'ab' 3\n", RK_EFORMAT, ":257:");
    expect_bad("unterminated.txt", "257 'ab 2\n", RK_EFORMAT, ":257:");
    expect_bad("unquoted.txt", "257 ab 2\n", RK_EFORMAT, ":257:");
    expect_bad("escape.txt", "257 'a\\q' 2\n", RK_EFORMAT, ":257:");
    expect_bad("hex.txt", "257 '\\x4' 1\n", RK_EFORMAT, ":257:");
    expect_bad("ubytes.txt", "257 b'\\u1234' 1\n", RK_EFORMAT, ":257:");
    expect_bad("surrogate.txt", "257 '\\ud800' 3\n", RK_EFORMAT, ":257:");
    expect_bad("bigcp.txt", "257 '\\U00110000' 4\n", RK_EFORMAT, ":257:");
    expect_bad("quote.txt", "257 'a'b' 3\n", RK_EFORMAT, ":257:");
    expect_bad("nonascii.txt", "257 b'\xc3\xa9' 2\n", RK_EFORMAT, ":257:");
    expect_bad("badutf8.txt", "257 '\xff' 1\n", RK_EFORMAT, ":257:");
    expect_bad("id.txt", "x7 'ab' 2\n", RK_EFORMAT, ":257:");
    expect_bad("declared.txt", "257 'ab' 2x\n", RK_EFORMAT, ":257:");
    expect_bad("fields.txt", "257'ab' 2\n", RK_EFORMAT, ":257:");
    expect_bad("nolen.txt", "257 'ab'\n", RK_EFORMAT, ":257:");
    expect_bad("zero.txt", "0 'ab' 2\n", RK_EFORMAT, ":257:");
    expect_bad("empty.txt", "257 '' 0\n", RK_EFORMAT, ":257:");
    expect_bad("dupid.txt", "257 'ab' 2\n5 'cd' 2\n", RK_EFORMAT, ":258:");
    expect_bad("dupbytes.txt", "257 'ab' 2\n258 'cd' 2\n259 'ab' 2\n", RK_EFORMAT, ":259:");
    expect_bad("dupbyte1.txt", "257 'a' 1\n", RK_EFORMAT, ":257:");
    expect_bad("far.txt", "257 'ab' 2\n9999 'cd' 2\n", RK_EFORMAT, ":258:");
    expect_bad("gap.txt", "257 'ab' 2\n259 'cd' 2\n", RK_EFORMAT, "id 258 is missing");
    expect_bad("octal.txt", "257 b'\\777' 1\n", RK_EFORMAT, ":257:");
    expect_bad("backslash.txt", "257 'a\\' 2\n", RK_EFORMAT, ":257:");

    /* A vocabulary without some single byte cannot encode everything. */
    char path[512];
    snprintf(path, sizeof path, "%s/nobyte.txt", rk_test_tmpdir());
    char buf[256 * 24];
    size_t n = 0;
    for (int b = 0; b < 255; b++)
        n += (size_t)byte_line(buf + n, sizeof buf - n, b);
    ck_assert_int_eq(rk_test_write_file(path, buf, n), 0);
    struct rk_tokenizer *t = NULL;
    struct rk_errbuf eb = {0};
    ck_assert_int_eq(rk_tok_load_world(path, &t, &eb), RK_EFORMAT);
    ck_assert_ptr_nonnull(strstr(eb.msg, "0xff"));

    /* Missing and empty files. */
    snprintf(path, sizeof path, "%s/does-not-exist.txt", rk_test_tmpdir());
    ck_assert_int_eq(rk_tok_load_world(path, &t, &eb), RK_EIO);
    ck_assert_ptr_nonnull(strstr(eb.msg, "does-not-exist.txt"));
    snprintf(path, sizeof path, "%s/zero-bytes.txt", rk_test_tmpdir());
    ck_assert_int_eq(rk_test_write_file(path, "", 0), 0);
    ck_assert_int_eq(rk_tok_load_world(path, &t, &eb), RK_EFORMAT);
    ck_assert_ptr_null(t);
    ck_assert_int_eq(rk_tok_load_world(path, NULL, NULL), RK_EINVAL);
}
END_TEST

/* Every allocation failure during a load gives RK_ENOMEM and no object. */
START_TEST(vocab_alloc_failure)
{
    const char *path = write_vocab("alloc.txt", "257 'ab' 2\n258 'abc' 3\n");
    int ok_at = 0;
    for (long n = 1; n < 100; n++) {
        struct rk_tokenizer *t = NULL;
        rk__alloc_fail_after(n);
        int rc = rk_tok_load_world(path, &t, NULL);
        rk__alloc_fail_after(0);
        if (rc == RK_OK) {
            ck_assert_ptr_nonnull(t);
            rk_tok_free(t);
            ok_at = (int)n;
            break;
        }
        ck_assert_int_eq(rc, RK_ENOMEM);
        ck_assert_ptr_null(t);
    }
    ck_assert_int_gt(ok_at, 1);
    for (long n = 1; n < 5; n++) {
        struct rk_tokenizer *t = NULL;
        rk__alloc_fail_after(n);
        int rc = rk_tok_create_bytes(&t);
        rk__alloc_fail_after(0);
        ck_assert_int_eq(rc, RK_ENOMEM);
        ck_assert_ptr_null(t);
    }
}
END_TEST

/* --- World: the real vocabulary ------------------------------------------- */

static struct rk_tokenizer *world;

static void world_setup(void)
{
    const char *path = rk_test_shared("fixtures/tokenizer/rwkv_vocab_v20230424.txt");
    ck_assert_ptr_nonnull(path);
    struct rk_errbuf eb = {0};
    ck_assert_msg(rk_tok_load_world(path, &world, &eb) == RK_OK, "%s", eb.msg);
}

static void world_teardown(void)
{
    rk_tok_free(world);
    world = NULL;
}

/* Minimal JSON string reader for the cases file: *p points after the opening
 * quote; handles the standard escapes including \u surrogate pairs. */
static size_t json_string(const char **p, char *out, size_t cap)
{
    const char *s = *p;
    size_t n = 0;
    while (*s && *s != '"') {
        ck_assert_uint_lt(n + 4, cap);
        if (*s != '\\') {
            out[n++] = *s++;
            continue;
        }
        s++;
        char e = *s++;
        switch (e) {
        case 'n': out[n++] = '\n'; break;
        case 't': out[n++] = '\t'; break;
        case 'r': out[n++] = '\r'; break;
        case 'b': out[n++] = '\b'; break;
        case 'f': out[n++] = '\f'; break;
        case 'u': {
            uint32_t cp = (uint32_t)strtoul((char[5]){s[0], s[1], s[2], s[3], 0}, NULL, 16);
            s += 4;
            if (cp >= 0xD800 && cp < 0xDC00 && s[0] == '\\' && s[1] == 'u') {
                uint32_t lo = (uint32_t)strtoul((char[5]){s[2], s[3], s[4], s[5], 0}, NULL, 16);
                s += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            }
            n += put_cp((uint8_t *)out + n, cp);
            break;
        }
        default: out[n++] = e; break;
        }
    }
    ck_assert_int_eq(*s, '"');
    *p = s + 1;
    return n;
}

START_TEST(world_public_cases)
{
    ck_assert_uint_eq(rk_tok_n_vocab(world), 65530);
    ck_assert(!rk_tok_is_bytes(world));
    const char *path = rk_test_shared("fixtures/tokenizer/world_tokenizer_cases.json");
    ck_assert_ptr_nonnull(path);
    size_t flen = 0;
    char *json = rk_test_read_file(path, &flen);
    ck_assert_ptr_nonnull(json);
    json = realloc(json, flen + 1);
    json[flen] = 0;
    int n_cases = 0;
    for (const char *p = json; (p = strstr(p, "\"text\"")) != NULL; n_cases++) {
        p = strchr(p + 6, '"');
        ck_assert_ptr_nonnull(p);
        p++;
        char text[4096];
        size_t tlen = json_string(&p, text, sizeof text);
        p = strstr(p, "\"tokens\"");
        ck_assert_ptr_nonnull(p);
        p = strchr(p, '[');
        ck_assert_ptr_nonnull(p);
        uint32_t want[1024];
        size_t nw = 0;
        for (p++; *p != ']';) {
            char *e;
            unsigned long v = strtoul(p, &e, 10);
            if (e == p) {
                p++;
                continue;
            }
            ck_assert_uint_lt(nw, 1024);
            want[nw++] = (uint32_t)v;
            p = e;
        }
        size_t n = 0;
        uint32_t *ids = encode_all(world, text, tlen, &n);
        ck_assert_uint_eq(n, nw);
        for (size_t i = 0; i < n; i++)
            ck_assert_msg(ids[i] == want[i], "case %d token %zu: got %u want %u", n_cases, i,
                          ids[i], want[i]);
        size_t dlen = 0;
        char *dec = decode_stream_all(world, ids, n, &dlen);
        ck_assert(dlen == tlen && !memcmp(dec, text, tlen));
        free(dec);
        free(ids);
    }
    ck_assert_int_ge(n_cases, 1);
    free(json);
}
END_TEST

static void check_round_trip(const void *text, size_t len, bool is_utf8)
{
    size_t n = 0;
    uint32_t *ids = encode_all(world, text, len, &n);
    for (size_t i = 0; i < n; i++)
        ck_assert(ids[i] >= 1 && ids[i] < 65530);
    size_t blen = 0;
    uint8_t *raw = concat_bytes(world, ids, n, &blen);
    ck_assert_msg(blen == len && !memcmp(raw, text, len), "token bytes do not rebuild the input");
    size_t dlen = 0;
    char *dec = decode_stream_all(world, ids, n, &dlen);
    ck_assert(valid_utf8((const uint8_t *)dec, dlen));
    if (is_utf8)
        ck_assert_msg(dlen == len && !memcmp(dec, text, len), "decoded text differs");
    free(dec);
    free(raw);
    free(ids);
}

START_TEST(world_round_trip_texts)
{
    static const char *texts[] = {
        "Hello, world! The quick brown fox jumps over the lazy dog.",
        "\xF0\x9F\x98\x80\xF0\x9F\x91\x8D\xF0\x9F\x8F\xBD \xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F"
        "\x91\xA9\xE2\x80\x8D\xF0\x9F\x91\xA7", /* emoji, skin tone, ZWJ */
        "e\xCC\x81\xCC\x88 a\xCC\x8A\xCC\xA3\xCD\x9C\xCD\xA1 Z\xCD\x91\xCD\x97\xCD\x8E", /* marks */
        "\xE4\xBB\xA5\xE4\xB8\x8B\xE3\x81\xAF\xE3\x80\x81\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E"
        "\xE4\xB8\xAD\xE6\x96\x87\xED\x95\x9C\xEA\xB5\xAD\xEC\x96\xB4", /* CJK, Hangul */
        "\xD0\xB1\xD0\xBB\xD0\xB0 \xD8\xB9\xD8\xB1\xD8\xA8\xD9\x8A \xE0\xA4\xB9\xE0\xA4\xBF",
        "<|endoftext|><|padding|>\r\n\t\x7f\x01",
        "\xF4\x8F\xBF\xBF\xEF\xBF\xBF\xEF\xBB\xBF\xE2\x80\xAE", /* U+10FFFF, U+FFFF, BOM, RLO */
    };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
        check_round_trip(texts[i], strlen(texts[i]), true);
    /* NUL bytes inside text. */
    check_round_trip("a\0b\0\0c\0", 8, true);
    /* Long runs: spaces (the 128-space token), letters, emoji, newlines. */
    size_t cap = 40000;
    char *buf = malloc(cap);
    ck_assert_ptr_nonnull(buf);
    memset(buf, ' ', 10000);
    check_round_trip(buf, 10000, true);
    memset(buf, 'a', 5000);
    check_round_trip(buf, 5000, true);
    memset(buf, '\n', 3000);
    check_round_trip(buf, 3000, true);
    memset(buf, 0, 3000);
    check_round_trip(buf, 3000, true);
    for (size_t i = 0; i < 3000; i++)
        memcpy(buf + 4 * i, "\xF0\x9F\x98\x80", 4);
    check_round_trip(buf, 12000, true);
    for (size_t i = 0; i < 4000; i++)
        memcpy(buf + 3 * i, "\xE4\xBB\xA5", 3);
    check_round_trip(buf, 12000, true);
    free(buf);

    /* 128 spaces are one token; 129 are that token and a space. */
    char sp[129];
    memset(sp, ' ', sizeof sp);
    uint32_t ids[4];
    size_t n = 0;
    ck_assert_int_eq(rk_tok_encode(world, sp, 128, ids, 4, &n), RK_OK);
    ck_assert_uint_eq(n, 1);
    ck_assert_uint_eq(ids[0], 65529);
    ck_assert_int_eq(rk_tok_encode(world, sp, 129, ids, 4, &n), RK_OK);
    ck_assert_uint_eq(n, 2);
    ck_assert_uint_eq(ids[0], 65529);
    ck_assert_uint_eq(ids[1], ' ' + 1);
    /* Id 0 (end-of-text) has no bytes and decodes to nothing. */
    size_t len = 1;
    ck_assert_ptr_null(rk_tok_bytes(world, 0, &len));
    ck_assert_uint_eq(len, 0);
}
END_TEST

START_TEST(world_round_trip_random)
{
    uint64_t x = 0x9E3779B97F4A7C15ull;
    uint8_t buf[1024];
    for (int it = 0; it < 3000; it++) {
        size_t n = test_rng(&x) % 300;
        bool utf8 = it % 3 == 0;
        if (utf8) {
            size_t k = 0;
            while (k + 4 < sizeof buf && k < n) {
                uint64_t r = test_rng(&x);
                uint32_t cp;
                switch (r % 4) {
                case 0: cp = (uint32_t)(0x20 + (r >> 8) % 0x5F); break;     /* ASCII */
                case 1: cp = (uint32_t)(0x4E00 + (r >> 8) % 0x5000); break; /* CJK */
                case 2: cp = (uint32_t)(0x300 + (r >> 8) % 0x70); break;    /* combining */
                default:
                    do
                        cp = (uint32_t)((r >> 8) % 0x110000), r = test_rng(&x);
                    while (cp >= 0xD800 && cp <= 0xDFFF);
                }
                k += put_cp(buf + k, cp);
            }
            n = k;
        } else {
            for (size_t i = 0; i < n; i++)
                buf[i] = (uint8_t)test_rng(&x);
        }
        check_round_trip(buf, n, utf8);
    }
}
END_TEST

/* Streaming over World tokens gives the same text as decoding the same bytes
 * one by one: holding back never depends on where the token boundaries are. */
START_TEST(world_stream_matches_bytes)
{
    struct rk_tokenizer *bt = NULL;
    ck_assert_int_eq(rk_tok_create_bytes(&bt), RK_OK);
    uint64_t x = 77;
    uint8_t buf[400];
    for (int it = 0; it < 1000; it++) {
        size_t n = test_rng(&x) % sizeof buf;
        for (size_t i = 0; i < n; i++) {
            uint64_t r = test_rng(&x);
            buf[i] = (uint8_t)(r % 4 == 0   ? 0xC0 | (r >> 8) % 64
                               : r % 4 == 1 ? 0x80 | (r >> 8) % 64
                                            : (r >> 8) % 128);
        }
        size_t nw = 0, nb = 0;
        uint32_t *w = encode_all(world, buf, n, &nw);
        uint32_t *b = encode_all(bt, buf, n, &nb);
        size_t lw = 0, lb = 0;
        char *dw = decode_stream_all(world, w, nw, &lw);
        char *db = decode_stream_all(bt, b, nb, &lb);
        ck_assert(lw == lb && !memcmp(dw, db, lw));
        ck_assert(valid_utf8((const uint8_t *)dw, lw));
        free(dw);
        free(db);
        free(w);
        free(b);
    }
    rk_tok_free(bt);
}
END_TEST

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

START_TEST(world_encode_speed)
{
    static const char *parts[] = {
        "The quick brown fox jumps over the lazy dog. ",
        "def main():\n    return [x * 2 for x in range(10)]\n",
        ("\xE4\xBB\xA5\xE4\xB8\x8B\xE3\x81\xAF\xE3\x80\x81\xE6\x97\xA5\xE6\x9C\xAC\xE8\xAA\x9E\xE3"
         "\x81\xAE\xE6\x96\x87\xE7\xAB\xA0\xE3\x81\xA7\xE3\x81\x99\xE3\x80\x82"),
        "\xD0\x9F\xD1\x80\xD0\xB8\xD0\xB2\xD0\xB5\xD1\x82, \xD0\xBC\xD0\xB8\xD1\x80! ",
        "User: What is the capital of France?\n\nAssistant: Paris.\n\n",
    };
    const size_t len = 8u << 20;
    char *text = malloc(len);
    ck_assert_ptr_nonnull(text);
    size_t n = 0;
    for (size_t i = 0; n < len; i++) {
        const char *p = parts[i % 5];
        size_t l = strlen(p);
        if (l > len - n)
            l = len - n;
        memcpy(text + n, p, l);
        n += l;
    }
    uint32_t *ids = malloc(len * sizeof *ids);
    ck_assert_ptr_nonnull(ids);
    size_t n_ids = 0;
    double t0 = now_s();
    ck_assert_int_eq(rk_tok_encode(world, text, len, ids, len, &n_ids), RK_OK);
    double dt = now_s() - t0;
    double mbs = (double)len / 1e6 / dt;
    fprintf(stderr, "world encode: %.1f MB in %.3f s = %.1f MB/s, %.2f bytes/token\n",
            (double)len / 1e6, dt, mbs, (double)len / (double)n_ids);
    /* Generous floor so that sanitizer builds pass; optimised builds do far more. */
    ck_assert_msg(mbs > 1.0, "encoding is too slow: %.2f MB/s", mbs);
    free(ids);
    free(text);
}
END_TEST

RK_TEST_SUITE(tokenizer_bytes_suite, RK_SELF_CONTAINED)
{
    Suite *s = suite_create("tokenizer_bytes");
    TCase *tc = tcase_create("bytes");
    tcase_add_test(tc, bytes_basic);
    tcase_add_test(tc, stream_split_char);
    tcase_add_test(tc, stream_replacement);
    tcase_add_test(tc, stream_random);
    suite_add_tcase(s, tc);
    tc = tcase_create("vocab_files");
    tcase_add_test(tc, vocab_escapes_and_greedy);
    tcase_add_test(tc, vocab_malformed);
    tcase_add_test(tc, vocab_alloc_failure);
    suite_add_tcase(s, tc);
    return s;
}

RK_TEST_SUITE(tokenizer_world_suite, RK_NEEDS_SHARED)
{
    Suite *s = suite_create("tokenizer_world");
    TCase *tc = tcase_create("world");
    tcase_add_checked_fixture(tc, world_setup, world_teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, world_public_cases);
    tcase_add_test(tc, world_round_trip_texts);
    suite_add_tcase(s, tc);
    tc = tcase_create("world_bulk"); // megabytes of text: the suite unit-slow
    tcase_set_tags(tc, RK_TEST_TAG_SLOW);
    tcase_add_checked_fixture(tc, world_setup, world_teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, world_round_trip_random);
    tcase_add_test(tc, world_stream_matches_bytes);
    tcase_add_test(tc, world_encode_speed);
    suite_add_tcase(s, tc);
    return s;
}

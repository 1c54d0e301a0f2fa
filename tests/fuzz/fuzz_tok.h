/*
 * fuzz_tok.h - checks shared by the tokenizer targets (fuzz_vocab.c,
 * fuzz_tokenize.c): encoding is lossless, and streaming decoding always
 * yields valid UTF-8 whatever ids arrive.
 */
#ifndef RK_FUZZ_TOK_H
#define RK_FUZZ_TOK_H

#include "fuzz_common.h"

#include <string.h>

/* Encode text[0..len) and check that the tokens' bytes give the text back
 * and that a buffer one id short is refused with RK_ERANGE. */
static inline void fuzz_tok_roundtrip(const struct rk_tokenizer *t, const char *text, size_t len)
{
    size_t n = 0;
    if (rk_tok_encode(t, text, len, NULL, 0, &n) != (len ? RK_ERANGE : RK_OK) || n > len)
        abort();
    uint32_t *ids = malloc((n ? n : 1) * sizeof *ids);
    if (!ids)
        return;
    size_t got = 0;
    if (n && rk_tok_encode(t, text, len, ids, n - 1, &got) != RK_ERANGE)
        abort();
    if (rk_tok_encode(t, text, len, ids, n, &got) != RK_OK || got != n)
        abort();
    size_t pos = 0, V = rk_tok_n_vocab(t);
    for (size_t i = 0; i < n; i++) {
        size_t bl = 0;
        const uint8_t *b = rk_tok_bytes(t, ids[i], &bl);
        if (ids[i] >= V || !b || bl == 0 || bl > len - pos || memcmp(b, text + pos, bl))
            abort();
        pos += bl;
    }
    if (pos != len)
        abort();
    free(ids);
}

/* Feed ids through the streaming decoder into a buffer sized by the
 * documented bound (token length * 3 + 8) and check the output. */
static inline void fuzz_tok_stream(const struct rk_tokenizer *t, const uint32_t *ids, size_t n)
{
    struct rk_utf8_stream s;
    rk_utf8_stream_init(&s);
    for (size_t i = 0; i < n; i++) {
        size_t bl = 0;
        rk_tok_bytes(t, ids[i], &bl);
        size_t cap = bl * 3 + 8;
        char *out = malloc(cap);
        if (!out)
            return;
        int k = rk_tok_decode_stream(t, &s, ids[i], out, cap);
        if (k < 0 || (size_t)k > cap || !fuzz_utf8_valid((const uint8_t *)out, (size_t)k))
            abort();
        free(out);
    }
    char tail[8];
    int k = rk_utf8_stream_flush(&s, tail, sizeof tail);
    if (k < 0 || !fuzz_utf8_valid((const uint8_t *)tail, (size_t)k))
        abort();
}

#endif

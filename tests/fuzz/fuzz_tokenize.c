/*
 * fuzz_tokenize.c - encoding and decoding with fixed tokenizers (the byte
 * tokenizer and the small World vocabulary of tests/fuzz/data/): the input
 * is encoded as text (lossless round trip), read as a stream of 16-bit ids
 * (in and out of range) for the streaming UTF-8 decoder, and passed through
 * the server's rk_utf8_sanitize, whose output must be valid UTF-8.
 */
#include "fuzz_tok.h"
#include "srv.h"

static struct rk_tokenizer *tok_bytes, *tok_world;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    rk_log_set(fuzz_log_quiet, NULL);
    fuzz_load_tokenizers(&tok_bytes, &tok_world);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size ? size : 1); // exact size: no NUL after the input
    if (!text)
        return 0;
    memcpy(text, data, size);
    fuzz_tok_roundtrip(tok_bytes, text, size);
    fuzz_tok_roundtrip(tok_world, text, size);

    size_t n = size / 2;
    uint32_t *ids = malloc((n ? n : 1) * sizeof *ids);
    if (ids) {
        for (size_t i = 0; i < n; i++)
            ids[i] = (uint32_t)data[2 * i] | (uint32_t)data[2 * i + 1] << 8;
        fuzz_tok_stream(tok_world, ids, n);
        for (size_t i = 0; i < n; i++)
            ids[i] &= 0x1ff; // mostly inside the byte vocabulary
        fuzz_tok_stream(tok_bytes, ids, n);
        free(ids);
    }

    size_t cap = size * 3 + 1;
    char *out = malloc(cap);
    if (out) {
        size_t k = rk_utf8_sanitize(data, size, out, cap);
        if (k >= cap || out[k] || !fuzz_utf8_valid((const uint8_t *)out, k))
            abort();
        free(out);
    }
    free(text);
    return 0;
}

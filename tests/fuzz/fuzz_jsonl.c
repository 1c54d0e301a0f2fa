/*
 * fuzz_jsonl.c - the JSONL dataset parser (server/dataset_jsonl.c) that
 * /tune, the OpenAI files route and `rwkvd tune` feed: every line format
 * (text, prompt/completion, chat messages, multiple choice), with the byte
 * tokenizer and with a small World vocabulary (tests/fuzz/data/
 * vocab-small.txt), under small limits so the limit checks are reached.
 *
 * Whatever a successful parse returns must be self-consistent: every token
 * id below the tokenizer's vocabulary, every sequence non-empty.
 */
#include "dataset_jsonl.h"
#include "fuzz_common.h"

#include <string.h>

static struct rk_tokenizer *tok_bytes, *tok_world;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    rk_log_set(fuzz_log_quiet, NULL);
    fuzz_load_tokenizers(&tok_bytes, &tok_world);
    return 0;
}

static void check(const struct rk_dataset *ds, const struct rk_tokenizer *tok)
{
    size_t V = rk_tok_n_vocab(tok);
    if (rk_dataset_vocab_used(ds) > V) // multiple-choice items included
        abort();
    for (size_t i = 0; i < rk_dataset_len(ds); i++) {
        const uint32_t *t;
        const uint8_t *mask;
        size_t n;
        rk_dataset_get(ds, i, &t, &mask, &n);
        if (n == 0)
            abort();
        for (size_t k = 0; k < n; k++)
            if (t[k] >= V)
                abort();
    }
}

static void parse(const char *buf, size_t len, const struct rk_tokenizer *tok)
{
    struct rk_jsonl_limits lim = {.bytes_max = 1 << 20, .lines_max = 64, .seq_len_max = 256};
    struct rk_dataset *ds = NULL;
    if (rk_dataset_create(&ds) != RK_OK)
        return;
    struct rk_errbuf eb = {0};
    if (rk_jsonl_parse(buf, len, tok, &lim, ds, &eb) == RK_OK)
        check(ds, tok);
    rk_dataset_free(ds);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *buf = malloc(size ? size : 1); // exact size: no NUL after the input
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    parse(buf, size, tok_bytes);
    parse(buf, size, tok_world);
    free(buf);
    return 0;
}

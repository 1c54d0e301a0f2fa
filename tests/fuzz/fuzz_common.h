/*
 * fuzz_common.h - shared bits of the libFuzzer targets in tests/fuzz/.
 *
 * Each target is one file defining LLVMFuzzerTestOneInput (and, where it
 * needs set-up, LLVMFuzzerInitialize); meson links it with
 * -fsanitize=fuzzer,address,undefined when configured with -Dfuzz=true
 * (clang only). Files the targets read at start-up (the server model, the
 * small vocabulary) live in tests/fuzz/data/ and are found through
 * RK_SOURCE_ROOT, or RWKVD_FUZZ_DATA when set (a copied build).
 */
#ifndef RK_FUZZ_COMMON_H
#define RK_FUZZ_COMMON_H

#include "rk_config.h"
#include "rk_core.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* Core and adapters log every rejected file at WARN or ERROR; thousands of
 * lines a second would drown libFuzzer's own output. */
static inline void fuzz_log_quiet(enum rk_log_level level, const char *msg, void *user)
{
    (void)level;
    (void)msg;
    (void)user;
}

/* tests/fuzz/data/<name>, in a static buffer. */
static inline const char *fuzz_data_path(const char *name)
{
    static char path[4096];
    const char *dir = getenv("RWKVD_FUZZ_DATA");
    if (dir && *dir)
        snprintf(path, sizeof path, "%s/%s", dir, name);
    else
        snprintf(path, sizeof path, "%s/tests/fuzz/data/%s", RK_SOURCE_ROOT, name);
    return path;
}

/* Load a model the target needs, or stop the process: without it the
 * target would fuzz nothing. */
static inline struct rk_model *fuzz_load_model(const char *name)
{
    struct rk_errbuf eb = {0};
    struct rk_model *m = NULL;
    if (rk_model_load(fuzz_data_path(name), NULL, &m, &eb) != RK_OK) {
        fprintf(stderr, "fuzz: %s\n", eb.msg);
        exit(1);
    }
    return m;
}

/* The byte tokenizer and the small World vocabulary of tests/fuzz/data/
 * (the tokenizers the text targets run with), or stop the process. */
static inline void fuzz_load_tokenizers(struct rk_tokenizer **bytes, struct rk_tokenizer **world)
{
    struct rk_errbuf eb = {0};
    if (rk_tok_create_bytes(bytes) != RK_OK ||
        rk_tok_load_world(fuzz_data_path("vocab-small.txt"), world, &eb) != RK_OK) {
        fprintf(stderr, "fuzz: %s\n", eb.msg);
        exit(1);
    }
}

/* Whether s[0..n) is valid UTF-8 (no overlongs, surrogates or code points
 * past U+10FFFF), written independently of core/tokenizer.c's decoder. */
static inline int fuzz_utf8_valid(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t b = s[i];
        size_t need;
        uint32_t cp, min;
        if (b < 0x80) {
            i++;
            continue;
        } else if ((b & 0xe0) == 0xc0) {
            need = 1, cp = b & 0x1f, min = 0x80;
        } else if ((b & 0xf0) == 0xe0) {
            need = 2, cp = b & 0x0f, min = 0x800;
        } else if ((b & 0xf8) == 0xf0) {
            need = 3, cp = b & 0x07, min = 0x10000;
        } else {
            return 0;
        }
        if (n - i - 1 < need)
            return 0;
        for (size_t k = 1; k <= need; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += need + 1;
    }
    return 1;
}

#endif

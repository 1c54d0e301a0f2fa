/*
 * fuzz_hfjson.c - the two JSON files of a Hugging Face model directory on
 * hostile bytes (core/tensorfile.c): the shard index
 * (rk_tf_index_read: model.safetensors.index.json) and config.json
 * (rk_tf_json_fields). The first byte picks the reader; the rest is the
 * file.
 *
 * Extra checks on an index that parses: its entries are sorted by name
 * without repeats, every shard number is in range, every shard name is a
 * plain "*.safetensors" name (no '/', no leading dot), and rk_tf_index_find
 * finds each entry itself and no name that is not listed.
 */
#include "fuzz_common.h"
#include "rk_tensorfile.h"

#include <string.h>

static int on_field(void *user, const char *key, enum rk_tf_field kind, const char *s,
                    uint64_t u, struct rk_errbuf *eb)
{
    (void)user;
    (void)eb;
    if (!key || (kind == RK_TF_FIELD_STR && (!s || strlen(s) > RK_TF_META_VAL_MAX)) ||
        (kind == RK_TF_FIELD_UINT && u >= (1ull << 53)))
        abort();
    return RK_OK;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    rk_log_set(fuzz_log_quiet, NULL);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    // Sized to the byte, so a read past the end is a heap overflow.
    size_t n = size - 1;
    char *buf = malloc(n ? n : 1);
    if (!buf)
        return 0;
    memcpy(buf, data + 1, n);
    struct rk_errbuf eb = {0};
    if (data[0] & 1) {
        (void)rk_tf_json_fields(buf, n, "config.json", on_field, NULL, &eb);
        free(buf);
        return 0;
    }
    struct rk_tf_index ix;
    if (rk_tf_index_read(buf, n, "index", 4096, &ix, &eb) == RK_OK) {
        for (size_t i = 0; i < ix.n; i++) {
            if (ix.v[i].shard >= ix.n_shards || (i && strcmp(ix.v[i - 1].name, ix.v[i].name) >= 0))
                abort();
            if (rk_tf_index_find(&ix, ix.v[i].name) != &ix.v[i])
                abort();
        }
        for (size_t k = 0; k < ix.n_shards; k++) {
            const char *s = ix.shards[k];
            size_t l = strlen(s);
            if (!l || s[0] == '.' || strchr(s, '/') || l < 13 ||
                strcmp(s + l - 12, ".safetensors"))
                abort();
        }
        if (rk_tf_index_find(&ix, "\x01not-a-name"))
            abort();
        rk_tf_index_free(&ix);
    } else if (!eb.msg[0]) {
        abort(); // every refusal explains itself
    }
    free(buf);
    return 0;
}

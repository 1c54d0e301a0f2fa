/*
 * fuzz_state.c - state-adapter files (adapters/state_file.c): the
 * safetensors reader with its own JSON header parser, and the RWKV-PEFT .pth
 * import (zip directory + pickle subset), through rk_state_file_parse as
 * PUT /states/{id} calls it (fingerprint optional), against the server's
 * test model (tests/fuzz/data/server-bf16.safetensors).
 *
 * A file that parses must survive the round trip: encoded again with
 * rk_state_file_encode, it parses with the fingerprint required (as the
 * store reads its own files) to the same bits and metadata (metadata
 * strings up to the writer's ASCII mapping, see ascii_only).
 */
#include "fuzz_common.h"
#include "rk_adapters.h"

#include <string.h>

static struct rk_model *model;
static float *state, *again; /* [rk_state_len] */

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    rk_log_set(fuzz_log_quiet, NULL);
    model = fuzz_load_model("server-bf16.safetensors");
    state = malloc(rk_state_len(model) * sizeof(float));
    again = malloc(rk_state_len(model) * sizeof(float));
    if (!state || !again)
        exit(1);
    return 0;
}

/* The writer stores metadata strings as ASCII: bytes from 0x7f up become
 * '?' (state_file.c: "metadata is ASCII in practice"), so a note read with
 * such bytes comes back changed. That is the documented behaviour, not a
 * bug; compare after the same mapping. */
static void ascii_only(char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s >= 0x7f)
            *s = '?';
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    // An exact-size copy: `data` itself may be followed by readable bytes.
    uint8_t *buf = malloc(size ? size : 1);
    if (!buf)
        return 0;
    memcpy(buf, data, size);
    struct rk_state_meta meta;
    struct rk_errbuf eb = {0};
    int rc = rk_state_file_parse(buf, size, model, false, state, &meta, &eb);
    free(buf);
    if (rc != RK_OK)
        return 0;

    void *enc = NULL;
    size_t len = 0;
    if (rk_state_file_encode(model, state, &meta, &enc, &len) != RK_OK)
        return 0;
    struct rk_state_meta meta2;
    rc = rk_state_file_parse(enc, len, model, true, again, &meta2, &eb);
    free(enc);
    if (rc != RK_OK) {
        fprintf(stderr, "fuzz-state: re-encoded state does not parse: %s\n", eb.msg);
        abort();
    }
    ascii_only(meta.method);
    ascii_only(meta.note);
    if (memcmp(state, again, rk_state_len(model) * sizeof(float)) ||
        meta.fingerprint != meta2.fingerprint || strcmp(meta.method, meta2.method) ||
        strcmp(meta.note, meta2.note)) {
        fprintf(stderr, "fuzz-state: round trip changed the state or its metadata\n");
        abort();
    }
    return 0;
}

/*
 * fuzz_model.c - the model loaders (core/load_safetensors.c, load_pth.c,
 * load_rwkvcpp.c, gguf.c, and model.c's placement and shape checks) on
 * hostile bytes; for GGUF also the vocabulary in the metadata. Built four
 * times, with RK_FUZZ_FORMAT naming the loader, so each
 * target reaches its parser without having to keep the magic bytes that
 * rk_model_load's format detection looks for.
 *
 * The input is copied into a heap buffer that stands for the mapped file,
 * exactly as rk_model_load hands it to the loaders (m->map, m->map_len),
 * but sized to the byte: AddressSanitizer then sees a read one past the end
 * of the "file", which a page-rounded mmap would hide. The buffer is
 * page-aligned like a mapping, so alignment-dependent paths behave as in
 * production. A model that loads and is small gets one forward pass (two
 * prompt tokens and one decode step): a loader that accepts inconsistent
 * shapes shows up there as an out-of-bounds access.
 *
 * The input length modulo 5 picks the load precision (auto, f32, f16,
 * bf16, q8), so conversions (and quantization) are covered too.
 */
#include "core_int.h"
#include "fuzz_common.h"
#include "gguf.h"

#include <string.h>

#ifndef RK_FUZZ_FORMAT
#error "define RK_FUZZ_FORMAT to RK_FORMAT_SAFETENSORS, _PTH, _RWKVCPP or _GGUF"
#endif

/* Forward passes only on models this small (weights in bytes). */
#define FORWARD_BYTES_MAX ((size_t)8 << 20)

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    rk_log_set(fuzz_log_quiet, NULL);
    return 0;
}

static void forward(const struct rk_model *m)
{
    if (rk_model_weight_bytes(m) > FORWARD_BYTES_MAX || m->L > 8 || m->V > 4096)
        return;
    struct rk_ctx_params cp = {.n_threads = 1, .rows_max = 4};
    struct rk_ctx *ctx = NULL;
    if (rk_ctx_create(m, &cp, &ctx) != RK_OK)
        return;
    float *state = calloc(rk_state_len(m), sizeof(float));
    float *logits = malloc((size_t)m->V * sizeof(float));
    if (state && logits) {
        uint32_t prompt[2] = {0, (uint32_t)m->V - 1};
        if (rk_forward_seq(ctx, prompt, 2, state, logits, false) == RK_OK)
            rk_forward_token(ctx, 1 % (uint32_t)m->V, state, logits);
    }
    free(logits);
    free(state);
    rk_ctx_free(ctx);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    void *buf = NULL;
    if (posix_memalign(&buf, 4096, size) != 0)
        return 0;
    memcpy(buf, data, size);

    struct rk_model *m = rk__calloc(1, sizeof *m);
    if (!m || !(m->path = rk__malloc(16))) {
        rk__free(m);
        free(buf);
        return 0;
    }
    memcpy(m->path, "fuzz.model", 11);
    m->map = buf;
    m->map_len = size;
    m->format = RK_FUZZ_FORMAT;

    static const enum rk_dtype wtypes[5] = {RK_DTYPE_AUTO, RK_DTYPE_F32, RK_DTYPE_F16,
                                            RK_DTYPE_BF16, RK_DTYPE_Q8};
    struct rk_model_params p = {.wtype = wtypes[size % 5], .no_panels = true};
    struct rk_errbuf eb = {0};
    int rc;
    switch (RK_FUZZ_FORMAT) {
    case RK_FORMAT_SAFETENSORS: rc = rk__load_safetensors(m, &p, &eb); break;
    case RK_FORMAT_PTH: rc = rk__load_pth(m, &p, &eb); break;
    case RK_FORMAT_GGUF: rc = rk__load_gguf(m, &p, &eb); break;
    default: rc = rk__load_rwkvcpp(m, &p, &eb); break;
    }
    if (rc == RK_OK)
        rc = rk__model_finish(m, &eb);
    if (rc == RK_OK)
        forward(m);
    m->map = NULL; // the buffer is ours, not a mapping for rk_model_free
    m->map_len = 0;
    rk_model_free(m);
    if (RK_FUZZ_FORMAT == RK_FORMAT_GGUF) { /* the vocabulary in the metadata too */
        struct rk_tokenizer *t = NULL;
        if (rk__tok_gguf_from_buffer(buf, size, &t, &eb) == RK_OK) {
            static const char text[] = "Hello, world!\n\n\xe4\xbd\xa0";
            uint32_t ids[sizeof text];
            size_t n;
            if (rk_tok_encode(t, text, sizeof text - 1, ids, sizeof text, &n) != RK_OK)
                abort(); /* greedy matching never needs more ids than bytes */
            for (size_t i = 0; i < n; i++)
                if (ids[i] == 0 || ids[i] >= rk_tok_n_vocab(t))
                    abort();
            rk_tok_free(t);
        }
    }
    free(buf);
    return 0;
}

/*
 * fuzz_vocab.c - loading a World vocabulary (core/tokenizer.c:
 * rk_tok_load_world: line parser, Python str/bytes literal decoder, id and
 * duplicate checks, trie build) from hostile bytes. The input is the file
 * (an in-memory memfd, read through /proc/self/fd); a vocabulary that loads
 * then encodes the input itself losslessly and decodes every id it holds
 * (and a few past the end) to valid UTF-8.
 */
#include "fuzz_tok.h"

#include <sys/mman.h>
#include <unistd.h>

static int fd = -1;
static char path[64];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    rk_log_set(fuzz_log_quiet, NULL);
    fd = memfd_create("fuzz-vocab", MFD_CLOEXEC);
    if (fd < 0) {
        perror("fuzz-vocab: memfd_create");
        exit(1);
    }
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != (ssize_t)size)
        abort();
    struct rk_tokenizer *t = NULL;
    struct rk_errbuf eb = {0};
    if (rk_tok_load_world(path, &t, &eb) != RK_OK)
        return 0;
    fuzz_tok_roundtrip(t, (const char *)data, size);
    size_t V = rk_tok_n_vocab(t);
    uint32_t ids[64];
    size_t n = 0;
    for (uint32_t id = 0; id < V + 2; id++) {
        ids[n++] = id;
        if (n == 64 || id == V + 1) {
            fuzz_tok_stream(t, ids, n);
            n = 0;
        }
    }
    rk_tok_free(t);
    return 0;
}

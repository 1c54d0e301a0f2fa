/* main.c - the rwkvd command-line entry point: dispatches to a subcommand. */
#include "cmd.h"
#include "rk_config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#if defined(__linux__)
#include <sys/prctl.h>
#endif

struct subcmd {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *help;
};

static const struct subcmd subcmds[] = {
    {"serve", rk_cmd_serve, "run the HTTP server"},
    {"generate", rk_cmd_generate, "generate text from a prompt, streaming to stdout"},
    {"tune", rk_cmd_tune, "run a state-tuning job offline"},
    {"eval", rk_cmd_eval, "report loss, perplexity and accuracy on a dataset"},
    {"bench", rk_cmd_bench, "measure prefill, decode, batched decode and tuning speed"},
    {"convert", rk_cmd_convert, "convert a model to safetensors with official names"},
    {"logits", rk_cmd_logits, "print the logits after a token sequence as JSON"},
    {"tokenize", rk_cmd_tokenize, "print the token ids of a text as JSON"},
};

static void usage(FILE *f)
{
    fprintf(f, "rwkvd %s - RWKV-7 inference server with per-request state adapters\n\n"
               "usage: rwkvd <command> [options]   (rwkvd <command> --help for details)\n\n"
               "commands:\n",
            RK_VERSION);
    for (size_t i = 0; i < sizeof subcmds / sizeof subcmds[0]; i++)
        fprintf(f, "  %-10s %s\n", subcmds[i].name, subcmds[i].help);
}

/*
 * OpenBLAS picks its kernels from the CPU model at library load. Inside some
 * virtual machines it does not recognise the CPU and falls back to its oldest
 * x86-64 kernels (about 8x slower sgemm here). When the user has not chosen a
 * core type, choose one from the CPU's feature flags and restart the process
 * once so that the library starts with it. RWKVD_BLAS_AUTO=0 disables this.
 */
static void choose_blas_core(char **argv)
{
#if defined(__x86_64__)
    const char *off = getenv("RWKVD_BLAS_AUTO");
    if (getenv("OPENBLAS_CORETYPE") || (off && !strcmp(off, "0")))
        return;
    /* rwkvd parallelises around single-threaded sgemm calls itself; OpenBLAS's
     * own worker threads would only spin next to ours. */
    if (!getenv("OPENBLAS_NUM_THREADS"))
        setenv("OPENBLAS_NUM_THREADS", "1", 1);
    __builtin_cpu_init();
    const char *core = NULL;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
        core = "SkylakeX";
    else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))
        core = "Haswell";
    if (!core)
        return;
    setenv("OPENBLAS_CORETYPE", core, 1);
    /* exec the binary by its real path, not /proc/self/exe: the kernel names
     * the process after the path's last component, and a process called
     * "exe" is invisible to pidof, pkill and top's command column. argv[0]
     * stays as the user typed it. */
    char self[4096];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0 || (size_t)n >= sizeof self - 1)
        return;
    self[n] = 0;
    execv(self, argv);
    /* exec failed: carry on with the library's own choice */
#else
    (void)argv;
#endif
}

/* The process name in ps/top/pidof (/proc/self/comm): the base name of
 * argv[0], so a binary started through a symlink or a wrapper still shows as
 * what the user ran. */
static void set_process_name(const char *argv0)
{
#if defined(__linux__)
    if (!argv0 || !*argv0)
        return;
    const char *b = strrchr(argv0, '/');
    b = b ? b + 1 : argv0;
    if (*b)
        prctl(PR_SET_NAME, (unsigned long)b, 0, 0, 0);
#else
    (void)argv0;
#endif
}

int main(int argc, char **argv)
{
    choose_blas_core(argv);
    set_process_name(argv[0]);
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("rwkvd %s\n", RK_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof subcmds / sizeof subcmds[0]; i++)
        if (!strcmp(argv[1], subcmds[i].name))
            return subcmds[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "rwkvd: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}

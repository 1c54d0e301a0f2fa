/* main.c - the rwkvd command-line entry point: dispatches to a subcommand. */
#include "cmd.h"
#include "rk_config.h"

#include <stdio.h>
#include <string.h>

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
    {"bench", rk_cmd_bench, "measure prefill, decode and batched decode speed"},
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

int main(int argc, char **argv)
{
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

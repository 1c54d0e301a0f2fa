/* cli_tune.c: work in progress (rwkvd tune, rwkvd eval). */
#include "cmd.h"
#include <stdio.h>
int rk_cmd_tune(int argc, char **argv) { (void)argc; (void)argv; fprintf(stderr, "rwkvd tune: not built yet\n"); return 1; }
int rk_cmd_eval(int argc, char **argv) { (void)argc; (void)argv; fprintf(stderr, "rwkvd eval: not built yet\n"); return 1; }

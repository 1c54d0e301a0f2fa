/* serve.c: work in progress (rwkvd serve). */
#include "cmd.h"
#include <stdio.h>
int rk_cmd_serve(int argc, char **argv) { (void)argc; (void)argv; fprintf(stderr, "rwkvd serve: not built yet\n"); return 1; }

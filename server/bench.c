/* bench.c: work in progress. */
#include "cmd.h"
int rk_cmd_bench(int argc, char **argv) { (void)argc; (void)argv; return 1; }

/* cli.c: work in progress. */
#include "cmd.h"
int rk_cmd_generate(int argc, char **argv) { (void)argc; (void)argv; return 1; }
int rk_cmd_logits(int argc, char **argv) { (void)argc; (void)argv; return 1; }
int rk_cmd_tokenize(int argc, char **argv) { (void)argc; (void)argv; return 1; }
int rk_cmd_convert(int argc, char **argv) { (void)argc; (void)argv; return 1; }

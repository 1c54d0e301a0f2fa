/* cmd.h - the rwkvd subcommands; each returns the process exit status. */
#ifndef RK_CMD_H
#define RK_CMD_H

int rk_cmd_generate(int argc, char **argv);
int rk_cmd_logits(int argc, char **argv);
int rk_cmd_tokenize(int argc, char **argv);
int rk_cmd_convert(int argc, char **argv);
int rk_cmd_bench(int argc, char **argv);
int rk_cmd_serve(int argc, char **argv);
int rk_cmd_tune(int argc, char **argv);
int rk_cmd_eval(int argc, char **argv);

#endif

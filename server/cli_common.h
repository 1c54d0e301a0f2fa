/* cli_common.h - helpers shared by the offline subcommands (generate, bench, ...). */
#ifndef RK_CLI_COMMON_H
#define RK_CLI_COMMON_H

#include "rk_core.h"

#include <stdbool.h>
#include <stddef.h>

/* Load a model, printing the error to stderr; NULL on failure. */
struct rk_model *rk_cli_load_model(const char *path, enum rk_dtype wtype);
/* The vocabulary for a model: a World vocab file when `vocab` is given, the
 * byte tokenizer for a 256-token model otherwise. NULL (error printed) if
 * neither applies. */
struct rk_tokenizer *rk_cli_load_tokenizer(const char *vocab, const struct rk_model *m);
/* Parse "1,2,3" into a malloc'd array. Returns false on a malformed list. */
bool rk_cli_parse_ids(const char *s, uint32_t **out, size_t *n);
/* Strict integer / float parsing with range checks; false on error. */
bool rk_cli_parse_long(const char *s, long lo, long hi, long *out);
bool rk_cli_parse_float(const char *s, double lo, double hi, double *out);
/* Monotonic time in seconds. */
double rk_cli_now(void);

#endif

/* cli_common.h - helpers shared by the offline subcommands (generate, bench, ...). */
#ifndef RK_CLI_COMMON_H
#define RK_CLI_COMMON_H

#include "rk_adapters.h"
#include "rk_core.h"

#include <stdbool.h>
#include <stddef.h>

/* Load a model, printing the error to stderr; NULL on failure. */
struct rk_model *rk_cli_load_model(const char *path, enum rk_dtype wtype);
/* The vocabulary for a model: a World vocab file when `vocab` is given, the
 * byte tokenizer otherwise when the model has 256..65535 tokens (a warning
 * unless exactly 256). NULL (error printed) if neither applies. One rule for
 * every subcommand and serve. */
struct rk_tokenizer *rk_cli_load_tokenizer(const char *vocab, const struct rk_model *m);
/* Read a state file into `state` [rk_state_len(m)] with the validation of
 * PUT /states: safetensors with or without a fingerprint, or an RWKV-PEFT
 * .pth; shapes must match `m`. `meta` may be NULL. Prints the error. */
int rk_cli_load_state(const char *path, const struct rk_model *m, float *state,
                      struct rk_state_meta *meta);
/* The read-out term of a kernel state (methods kernel and dbp) for offline
 * use: `on` when the file was one. */
struct rk_cli_ro {
    bool on;
    float *adapter, *carry;
    struct rk_kernel_view view;
    struct rk_readout ro;
};
/* rk_cli_load_state that also keeps a kernel state's term in *ro (release
 * with rk_cli_ro_free; a plain state leaves ro->on false). A kernel state
 * given to rk_cli_load_state gives its core state alone. */
int rk_cli_load_state_ro(const char *path, const struct rk_model *m, float *state,
                         struct rk_cli_ro *ro);
void rk_cli_ro_free(struct rk_cli_ro *ro);
/* The term, or NULL (ro NULL or not on); resets its fade carry. */
const struct rk_readout *rk_cli_ro_start(struct rk_cli_ro *ro);
/* Parse "1,2,3" into a malloc'd array. Returns false on a malformed list. */
bool rk_cli_parse_ids(const char *s, uint32_t **out, size_t *n);
/* Strict integer / float parsing with range checks; false on error. */
bool rk_cli_parse_long(const char *s, long lo, long hi, long *out);
bool rk_cli_parse_float(const char *s, double lo, double hi, double *out);
/* Monotonic time in seconds. */
double rk_cli_now(void);

#endif

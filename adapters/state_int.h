/* state_int.h - private helpers shared by state_file.c and state_store.c. */
#ifndef RK_STATE_INT_H
#define RK_STATE_INT_H

#include "rk_adapters.h"
#include "rk_tensorfile.h"

/* Read only the header of the safetensors state file at `path` and check it
 * against `m` (fingerprint required, shapes, offsets within the file) without
 * reading tensor data. *file_len receives the file size. */
int rk__state_file_head(const char *path, const struct rk_model *m, struct rk_state_meta *meta,
                        size_t *file_len, struct rk_errbuf *eb);

#endif

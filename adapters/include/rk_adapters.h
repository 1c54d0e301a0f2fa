/*
 * rk_adapters.h - the public interface of rwkvd's adapters layer: state-adapter
 * files and their store, tuning methods, optimizer, datasets and evaluation.
 * Depends on core only (no JSON, no HTTP, no libuv).
 */
#ifndef RK_ADAPTERS_H
#define RK_ADAPTERS_H

#include "rk_core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* === state files and store ================================================ */

/* === end of state files and store ========================================= */

/* === tuning, datasets, evaluation ========================================= */

/* === end of tuning, datasets, evaluation ================================== */

#ifdef __cplusplus
}
#endif
#endif /* RK_ADAPTERS_H */

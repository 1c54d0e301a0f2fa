/* state_store.c: work in progress. */
#include "rk_adapters.h"

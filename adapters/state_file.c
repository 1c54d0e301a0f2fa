/* state_file.c: work in progress. */
#include "rk_adapters.h"

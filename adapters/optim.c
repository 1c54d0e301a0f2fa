/* optim.c: work in progress. */
#include "rk_adapters.h"

/* load_rwkvcpp.c: work in progress. */
#include "core_int.h"

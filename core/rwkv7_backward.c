/* rwkv7_backward.c: work in progress. */
#include "core_int.h"

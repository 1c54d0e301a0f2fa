/* rwkv7.c: work in progress. */
#include "core_int.h"

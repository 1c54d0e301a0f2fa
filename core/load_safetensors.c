/* load_safetensors.c: work in progress. */
#include "core_int.h"

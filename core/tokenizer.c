/* tokenizer.c: work in progress. */
#include "core_int.h"

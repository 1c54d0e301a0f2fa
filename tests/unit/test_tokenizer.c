/* test_tokenizer.c: work in progress. */
#include "check_common.h"

/* test_tune.c: work in progress. */
#include "check_common.h"

/* test_forward.c: work in progress. */
#include "check_common.h"

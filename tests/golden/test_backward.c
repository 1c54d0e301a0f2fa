/* test_backward.c: work in progress. */
#include "check_common.h"

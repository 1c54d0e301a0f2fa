/* test_sampler.c: work in progress. */
#include "check_common.h"

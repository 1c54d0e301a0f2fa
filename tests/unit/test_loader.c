/* test_loader.c: work in progress. */
#include "check_common.h"

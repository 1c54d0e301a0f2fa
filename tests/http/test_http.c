/* test_http.c: work in progress. */
#include "check_common.h"

/* test_state_store.c: work in progress. */
#include "check_common.h"

/* dataset_jsonl.c: work in progress. */
#include "cmd.h"

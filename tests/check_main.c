/*
 * check_main.c - the shared main() of every Check test binary. It walks the
 * "rk_suites" linker section (filled by RK_TEST_SUITE) into one SRunner.
 * Suites that need ../shared are skipped when it is absent; if every suite was
 * skipped the binary exits 77, which meson reports as SKIP.
 * Environment: CK_FORK (Check's own), RK_TEST_TAP=1 for TAP output.
 */
#include "check_common.h"

#include <stdio.h>
#include <stdlib.h>

extern const struct rk_test_suite __start_rk_suites[] __attribute__((weak));
extern const struct rk_test_suite __stop_rk_suites[] __attribute__((weak));

int main(void)
{
    SRunner *sr = NULL;
    int n_run = 0, n_skip = 0;
    bool have_shared = rk_test_shared("fixtures/README.md") != NULL;
    for (const struct rk_test_suite *t = __start_rk_suites; t < __stop_rk_suites; t++) {
        if (t->needs_shared && !have_shared) {
            fprintf(stderr, "SKIP suite %s: ../shared/fixtures is not present\n", t->name);
            n_skip++;
            continue;
        }
        Suite *s = t->make();
        if (!sr)
            sr = srunner_create(s);
        else
            srunner_add_suite(sr, s);
        n_run++;
    }
    if (!n_run)
        return n_skip ? 77 : 0;
    if (getenv("RK_TEST_TAP"))
        srunner_set_tap(sr, "-");
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}

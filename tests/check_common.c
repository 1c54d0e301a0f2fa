/* check_common.c - helpers shared by the test binaries (see check_common.h). */
#include "check_common.h"
#include "rk_config.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char *shared_root(void)
{
    static char root[4096];
    if (!root[0]) {
        const char *env = getenv("RK_SHARED_DIR");
        if (env && *env)
            snprintf(root, sizeof root, "%s", env);
        else
            snprintf(root, sizeof root, "%s/../shared", RK_SOURCE_ROOT);
    }
    return root;
}

const char *rk_test_shared(const char *rel)
{
    static char bufs[8][8192];
    static int slot;
    char *b = bufs[slot++ % 8];
    int n = snprintf(b, 8192, "%s/%s", shared_root(), rel);
    if (n < 0 || n >= 8192)
        return NULL;
    return access(b, R_OK) == 0 ? b : NULL;
}

const char *rk_test_data(const char *rel)
{
    static char bufs[8][4096];
    static int slot;
    char *b = bufs[slot++ % 8];
    snprintf(b, 4096, "%s/tests/data/%s", RK_SOURCE_ROOT, rel);
    return b;
}

const char *rk_test_tmpdir(void)
{
    static char dir[256];
    if (!dir[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(dir, sizeof dir, "%s/rk-test-XXXXXX", base && *base ? base : "/tmp");
        if (!mkdtemp(dir)) {
            fprintf(stderr, "mkdtemp: %s\n", strerror(errno));
            abort();
        }
    }
    return dir;
}

size_t rk_test_threads(int *out, size_t max)
{
    const char *env = getenv("RWKVD_TEST_THREADS");
    if (!env || !*env) {
        out[0] = 3;
        return 1;
    }
    size_t n = 0;
    for (const char *p = env; *p;) {
        char *end;
        long v = strtol(p, &end, 10);
        ck_assert_msg(end != p && v >= 2 && v <= 64 && n < max && (*end == ',' || !*end),
                      "RWKVD_TEST_THREADS=\"%s\": want thread counts 2..64, comma-separated", env);
        out[n++] = (int)v;
        p = *end ? end + 1 : end;
    }
    return n;
}

double rk_max_abs_diff(const float *a, const float *b, size_t n)
{
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (d > m || isnan(d))
            m = isnan(d) ? INFINITY : d;
    }
    return m;
}

void rk_check_close(const float *a, const float *b, size_t n, double atol, double rtol,
                    const char *what)
{
    size_t bad = n;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= atol + rtol * fabs((double)b[i]))) {
            bad = i;
            break;
        }
    }
    if (bad < n)
        ck_abort_msg("%s: element %zu differs: got %.9g, want %.9g (max |diff| %.3g, n %zu)", what,
                     bad, (double)a[bad], (double)b[bad], rk_max_abs_diff(a, b, n), n);
}

void *rk_test_read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *buf = malloc(n > 0 ? (size_t)n : 1);
    if (buf && n > 0 && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf && len)
        *len = (size_t)n;
    return buf;
}

int rk_test_write_file(const char *path, const void *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    if (!f)
        return -1;
    size_t w = fwrite(data, 1, len, f);
    int rc = fclose(f);
    return (w == len && rc == 0) ? 0 : -1;
}

bool rk_test_slow(void)
{
    const char *v = getenv("RWKVD_TEST_SLOW");
    return v && *v && strcmp(v, "0") != 0;
}

double rk_fd_along(rk_fd_loss *loss, void *user, float *x, const float *u, size_t n, double h)
{
    float *save = malloc((n ? n : 1) * sizeof(float));
    ck_assert_ptr_nonnull(save);
    memcpy(save, x, n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        x[i] = save[i] + (float)h * u[i];
    double lp = loss(user);
    for (size_t i = 0; i < n; i++)
        x[i] = save[i] - (float)h * u[i];
    double lm = loss(user);
    memcpy(x, save, n * sizeof(float));
    free(save);
    return (lp - lm) / (2 * h);
}

double rk_fd_row(rk_fd_row_loss *loss, void *user, const float *x, size_t n, size_t i, double h)
{
    float *a = malloc((n ? n : 1) * sizeof(float));
    ck_assert_ptr_nonnull(a);
    memcpy(a, x, n * sizeof(float));
    a[i] = x[i] + (float)h;
    double lp = loss(a, n, user);
    memcpy(a, x, n * sizeof(float));
    a[i] = x[i] - (float)h;
    double lm = loss(a, n, user);
    free(a);
    return (lp - lm) / (2 * h);
}

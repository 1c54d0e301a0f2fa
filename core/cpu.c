/*
 * cpu.c - which kernels this process runs: the CPU's features and the
 * RWKVD_* kernel switches, decided in this one place.
 *
 * rk__cpu() reads CPUID and the environment once per process (pthread_once)
 * and every kernel consults the struct it returns, so every thread takes the
 * same path: a product split between threads never mixes kernels whose
 * scratch needs or summation orders differ.
 *
 *   RWKVD_NO_AVX512=1       the portable kernels (the tests' portable runs)
 *   RWKVD_NO_PANELS=1       keep row-major weights (no repacking at load)
 *   RWKVD_TILED_ROWS_MAX=N  rows of X up to which the tiled AVX-512 path
 *                           runs before sgemm (default 48; for measurements)
 *   RWKVD_NO_AMX=1          no AMX tiles
 *   RWKVD_NO_AVX2=1         the 8-bit products' portable kernel (with
 *                           RWKVD_NO_AVX512 also set: that one alone would
 *                           leave them the AVX2 kernel)
 *
 * AMX is decided apart, on the first rk__amx_usable() call, because deciding
 * it asks the OS for the tile state and runs a probe product: the CPU must
 * report AMX-BF16 and AMX-TILE, the OS must enable the tile state in XCR0
 * and grant it to the process (Linux arch_prctl ARCH_REQ_XCOMP_PERM), and a
 * probe product (amx.c) must run and give the right answer with SIGILL and
 * SIGSEGV caught, since some virtual machines advertise AMX but fault on it.
 */
#include "core_int.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__linux__)
#include <cpuid.h>
#include <setjmp.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>
#define RK_AMX_OS 1
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18
#endif

/* Rows of X up to which the tiled AVX-512 path beats converted-block sgemm;
 * measured in BENCHMARKS.md. */
#define TILED_ROWS_MAX 48

static struct rk__cpu cpu;
static pthread_once_t cpu_once = PTHREAD_ONCE_INIT;

/* A switch is on when set to anything but "" or "0". */
static bool env_on(const char *name)
{
    const char *env = getenv(name);
    return env && *env && *env != '0';
}

static void cpu_decide(void)
{
#if defined(__x86_64__)
    __builtin_cpu_init();
    cpu.avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
#endif
    if (env_on("RWKVD_NO_AVX512"))
        cpu.avx512 = false;
    cpu.panels = !env_on("RWKVD_NO_PANELS");
    cpu.tiled_rows = TILED_ROWS_MAX;
    const char *env = getenv("RWKVD_TILED_ROWS_MAX");
    if (env && *env)
        cpu.tiled_rows = (size_t)atol(env);
    cpu.no_amx = env_on("RWKVD_NO_AMX");
    cpu.q8 = RK_Q8_REF;
    if (cpu.avx512 && rk__q8_kern_runs(RK_Q8_VNNI))
        cpu.q8 = RK_Q8_VNNI;
    else if (!env_on("RWKVD_NO_AVX2") && rk__q8_kern_runs(RK_Q8_AVX2))
        cpu.q8 = RK_Q8_AVX2;
}

const struct rk__cpu *rk__cpu(void)
{
    pthread_once(&cpu_once, cpu_decide);
    return &cpu;
}

bool rk__use_avx512(void) { return rk__cpu()->avx512; }

bool rk_cpu_avx512(void) { return rk__cpu()->avx512; }

/* --- AMX ------------------------------------------------------------------ */

static bool amx_on;
static pthread_once_t amx_once = PTHREAD_ONCE_INIT;

#ifdef RK_AMX_OS
static sigjmp_buf probe_jmp;
static void probe_trap(int sig)
{
    (void)sig;
    siglongjmp(probe_jmp, 1);
}
#endif

static void amx_decide(void)
{
#ifdef RK_AMX_OS
    const struct rk__cpu *c = rk__cpu();
    if (c->no_amx || !c->avx512)
        return;
    unsigned a, b, cx, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &cx, &d) || !(d & (1u << 22)) || !(d & (1u << 24)))
        return; /* AMX-BF16, AMX-TILE */
    if (!__get_cpuid(1, &a, &b, &cx, &d) || !(cx & (1u << 27)))
        return; /* OSXSAVE: xgetbv is allowed */
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & (3u << 17)) != (3u << 17))
        return; /* XTILECFG and XTILEDATA enabled by the OS */
    if (syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0)
        return;
    struct sigaction sa, old_ill, old_segv;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = probe_trap;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGILL, &sa, &old_ill);
    sigaction(SIGSEGV, &sa, &old_segv);
    volatile bool ok = false;
    if (sigsetjmp(probe_jmp, 1) == 0)
        ok = rk__amx_probe();
    sigaction(SIGILL, &old_ill, NULL);
    sigaction(SIGSEGV, &old_segv, NULL);
    amx_on = ok;
#endif
}

bool rk__amx_usable(void)
{
    pthread_once(&amx_once, amx_decide);
    return amx_on;
}

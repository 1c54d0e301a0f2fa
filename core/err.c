/*
 * err.c - error codes and messages, the logging hook, the allocation wrapper
 * (with a failure-injection hook for tests) and fp16 conversion helpers.
 */
#include "core_int.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <math.h>

/* --- errors --------------------------------------------------------------- */

static const struct {
    int code;
    const char *name;
    const char *msg;
} errs[] = {
    {RK_OK, "ok", "success"},
    {RK_ENOMEM, "enomem", "out of memory"},
    {RK_EINVAL, "einval", "invalid argument"},
    {RK_EIO, "eio", "input/output error"},
    {RK_EFORMAT, "eformat", "bad or truncated file"},
    {RK_EMISMATCH, "emismatch", "state and model do not match"},
    {RK_ERANGE, "erange", "value out of range"},
    {RK_ENOTFOUND, "enotfound", "not found"},
    {RK_EEXIST, "eexist", "already exists"},
    {RK_EBUSY, "ebusy", "busy"},
    {RK_ECANCELED, "ecanceled", "canceled"},
    {RK_ENUMERIC, "enumeric", "numerical error (NaN or Inf)"},
    {RK_EINTERNAL, "einternal", "internal error"},
    {RK_ETIMEOUT, "etimeout", "deadline exceeded"},
};

const char *rk_strerror(int code)
{
    for (size_t i = 0; i < sizeof errs / sizeof errs[0]; i++)
        if (errs[i].code == code)
            return errs[i].msg;
    return "unknown error";
}

const char *rk_errname(int code)
{
    for (size_t i = 0; i < sizeof errs / sizeof errs[0]; i++)
        if (errs[i].code == code)
            return errs[i].name;
    return "eunknown";
}

int rk_errbuf_set(struct rk_errbuf *eb, int code, const char *fmt, ...)
{
    if (eb) {
        va_list ap;
        va_start(ap, fmt);
        eb->code = code;
        vsnprintf(eb->msg, sizeof eb->msg, fmt, ap);
        va_end(ap);
    }
    return code;
}

/* --- logging -------------------------------------------------------------- */

static rk_log_cb *log_fn;
static void *log_user;

void rk_log_set(rk_log_cb *fn, void *user)
{
    log_fn = fn;
    log_user = user;
}

void rk_log(enum rk_log_level level, const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (log_fn) {
        log_fn(level, buf, log_user);
        return;
    }
    static const char *names[] = {"debug", "info", "warn", "error"};
    if (level >= RK_LOG_WARN)
        fprintf(stderr, "rwkvd %s: %s\n", names[level & 3], buf);
}

/* --- allocation ----------------------------------------------------------- */

static atomic_long fail_countdown;

void rk__alloc_fail_after(long n) { atomic_store(&fail_countdown, n); }

static bool should_fail(void)
{
    long c = atomic_load(&fail_countdown);
    if (c <= 0)
        return false;
    c = atomic_fetch_sub(&fail_countdown, 1);
    return c == 1;
}

void *rk__malloc(size_t n) { return should_fail() ? NULL : malloc(n ? n : 1); }
void *rk__calloc(size_t n, size_t sz) { return should_fail() ? NULL : calloc(n ? n : 1, sz ? sz : 1); }
void *rk__realloc(void *p, size_t n) { return should_fail() ? NULL : realloc(p, n ? n : 1); }
void rk__free(void *p) { free(p); }

void *rk__malloc_aligned(size_t n)
{
    if (should_fail())
        return NULL;
    void *p = NULL;
    if (posix_memalign(&p, 64, n ? (n + 63) / 64 * 64 : 64) != 0)
        return NULL;
    return p;
}
void rk__free_aligned(void *p) { free(p); }

/* --- dtypes and formats --------------------------------------------------- */

const char *rk_dtype_name(enum rk_dtype t)
{
    switch (t) {
    case RK_DTYPE_F32: return "f32";
    case RK_DTYPE_F16: return "f16";
    case RK_DTYPE_BF16: return "bf16";
    case RK_DTYPE_Q8: return "q8";
    default: return "auto";
    }
}

int rk_dtype_parse(const char *s, enum rk_dtype *out)
{
    static const struct {
        const char *n;
        enum rk_dtype t;
    } names[] = {{"auto", RK_DTYPE_AUTO}, {"f32", RK_DTYPE_F32},   {"fp32", RK_DTYPE_F32},
                 {"f16", RK_DTYPE_F16},   {"fp16", RK_DTYPE_F16},  {"bf16", RK_DTYPE_BF16},
                 {"q8", RK_DTYPE_Q8}};
    for (size_t i = 0; s && i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(s, names[i].n)) {
            *out = names[i].t;
            return RK_OK;
        }
    return RK_EINVAL;
}

const char *rk_format_name(enum rk_format f)
{
    switch (f) {
    case RK_FORMAT_SAFETENSORS: return "safetensors";
    case RK_FORMAT_PTH: return "pth";
    case RK_FORMAT_RWKVCPP: return "rwkv.cpp";
    case RK_FORMAT_GGUF: return "gguf";
    default: return "unknown";
    }
}

/* --- IEEE half precision --------------------------------------------------- */

float rk__f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t man = h & 0x3ff;
    uint32_t u;
    if (exp == 0) {
        if (man == 0) {
            u = sign;
        } else { /* subnormal: renormalise */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) {
                man <<= 1;
                exp--;
            }
            man &= 0x3ff;
            u = sign | (exp << 23) | (man << 13);
        }
    } else if (exp == 31) {
        u = sign | 0x7f800000u | (man << 13);
    } else {
        u = sign | ((exp - 15 + 127) << 23) | (man << 13);
    }
    union {
        uint32_t u;
        float f;
    } v = {.u = u};
    return v.f;
}

uint16_t rk__f32_to_f16(float f)
{
    union {
        float f;
        uint32_t u;
    } v = {.f = f};
    uint32_t u = v.u;
    uint16_t sign = (uint16_t)((u >> 16) & 0x8000);
    uint32_t absu = u & 0x7fffffffu;
    if (absu > 0x7f800000u) /* NaN */
        return sign | 0x7e00;
    if (absu >= 0x477ff000u) /* overflows to Inf after rounding */
        return sign | 0x7c00;
    if (absu < 0x38800000u) { /* subnormal or zero in half: value * 2^24, rounded */
        union {
            uint32_t u;
            float f;
        } a = {.u = absu};
        return sign | (uint16_t)lrintf(a.f * 16777216.0f);
    }
    uint32_t r = absu + 0xfffu + ((absu >> 13) & 1u); /* round to nearest even */
    return sign | (uint16_t)(((r >> 13) - ((127 - 15) << 10)) & 0xffff);
}

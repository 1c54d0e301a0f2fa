/*
 * json_read.c - typed readers of JSON request fields, each failure a 400
 * with a code from one list (json_read.h, docs/API.md "Field errors").
 */
#include "json_read.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *rk_field_err_code(enum rk_field_err e)
{
    switch (e) {
    case RK_FIELD_INVALID_JSON: return "invalid_json";
    case RK_FIELD_INVALID_TYPE: return "invalid_type";
    case RK_FIELD_OUT_OF_RANGE: return "out_of_range";
    case RK_FIELD_INVALID_VALUE: return "invalid_value";
    case RK_FIELD_UNSUPPORTED: return "unsupported";
    case RK_FIELD_CONTEXT_LENGTH: return "context_length_exceeded";
    case RK_FIELD_UNKNOWN: return "unknown_parameter";
    }
    return "invalid_value";
}

void rk_field_fail(struct rk_http_req *r, enum rk_field_err e, const char *param,
                   const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    rk_http_error(r, 400, rk_field_err_code(e), param, "%s", msg);
}

/* The field, or NULL when absent or null. */
static json_t *field(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    return v && !json_is_null(v) ? v : NULL;
}

bool rk_json_has(json_t *o, const char *key) { return field(o, key) != NULL; }

const char *rk_json_unknown_key(json_t *o, const char *const *known,
                                bool (*also)(const char *key))
{
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v) {
        bool ok = also && also(k);
        for (size_t i = 0; !ok && known && known[i]; i++)
            ok = !strcmp(k, known[i]);
        if (!ok)
            return k;
    }
    return NULL;
}

bool rk_json_int(struct rk_http_req *r, json_t *o, const char *key, long long lo, long long hi,
                 long long *out)
{
    json_t *v = field(o, key);
    if (!v)
        return true;
    if (!json_is_integer(v)) {
        rk_field_fail(r, RK_FIELD_INVALID_TYPE, key, "'%s' must be an integer", key);
        return false;
    }
    long long x = json_integer_value(v);
    if (x < lo || x > hi) {
        rk_field_fail(r, RK_FIELD_OUT_OF_RANGE, key,
                      "'%s' must be between %lld and %lld, got %lld", key, lo, hi, x);
        return false;
    }
    *out = x;
    return true;
}

bool rk_json_num(struct rk_http_req *r, json_t *o, const char *key, double lo, double hi,
                 bool lo_open, double *out)
{
    json_t *v = field(o, key);
    if (!v)
        return true;
    if (!json_is_number(v)) {
        rk_field_fail(r, RK_FIELD_INVALID_TYPE, key, "'%s' must be a number", key);
        return false;
    }
    double x = json_number_value(v);
    if (!isfinite(x) || x < lo || x > hi || (lo_open && x == lo)) {
        rk_field_fail(r, RK_FIELD_OUT_OF_RANGE, key, "'%s' must be in %s%g, %g], got %g", key,
                      lo_open ? "(" : "[", lo, hi, x);
        return false;
    }
    *out = x;
    return true;
}

bool rk_json_float(struct rk_http_req *r, json_t *o, const char *key, double lo, double hi,
                   bool lo_open, float *out)
{
    double x = *out;
    if (!rk_json_num(r, o, key, lo, hi, lo_open, &x))
        return false;
    *out = (float)x;
    return true;
}

bool rk_json_bool(struct rk_http_req *r, json_t *o, const char *key, bool *out)
{
    json_t *v = field(o, key);
    if (!v)
        return true;
    if (!json_is_boolean(v)) {
        rk_field_fail(r, RK_FIELD_INVALID_TYPE, key, "'%s' must be true or false", key);
        return false;
    }
    *out = json_is_true(v);
    return true;
}

bool rk_json_str(struct rk_http_req *r, json_t *o, const char *key, size_t len_min,
                 size_t len_max, const char **out)
{
    json_t *v = field(o, key);
    if (!v)
        return true;
    if (!json_is_string(v)) {
        rk_field_fail(r, RK_FIELD_INVALID_TYPE, key, "'%s' must be a string", key);
        return false;
    }
    size_t n = json_string_length(v);
    if (n < len_min || n > len_max) {
        rk_field_fail(r, RK_FIELD_INVALID_VALUE, key, "'%s' must be a string of %zu to %zu bytes",
                      key, len_min, len_max);
        return false;
    }
    *out = json_string_value(v);
    return true;
}

bool rk_json_obj(struct rk_http_req *r, json_t *o, const char *key, json_t **out)
{
    json_t *v = field(o, key);
    if (!v)
        return true;
    if (!json_is_object(v)) {
        rk_field_fail(r, RK_FIELD_INVALID_TYPE, key, "'%s' must be an object", key);
        return false;
    }
    *out = v;
    return true;
}

bool rk_json_str_array(struct rk_http_req *r, json_t *o, const char *key, bool one_ok,
                       size_t n_max, size_t len_min, size_t len_max, const char **out,
                       size_t *n)
{
    *n = 0;
    json_t *v = field(o, key);
    if (!v)
        return true;
    size_t count;
    if (one_ok && json_is_string(v)) {
        count = 1;
    } else if (json_is_array(v)) {
        count = json_array_size(v);
    } else {
        rk_field_fail(r, RK_FIELD_INVALID_TYPE, key, one_ok ? "'%s' must be a string or an "
                      "array of strings" : "'%s' must be an array of strings", key);
        return false;
    }
    if (count > n_max) {
        rk_field_fail(r, RK_FIELD_OUT_OF_RANGE, key, "'%s' holds at most %zu strings", key, n_max);
        return false;
    }
    for (size_t i = 0; i < count; i++) {
        json_t *s = json_is_string(v) ? v : json_array_get(v, i);
        if (!json_is_string(s)) {
            rk_field_fail(r, RK_FIELD_INVALID_TYPE, key, "%s[%zu] must be a string", key, i);
            return false;
        }
        if (json_string_length(s) < len_min || json_string_length(s) > len_max) {
            rk_field_fail(r, RK_FIELD_INVALID_VALUE, key, "each element of '%s' must be a "
                          "string of %zu to %zu bytes", key, len_min, len_max);
            return false;
        }
        out[i] = json_string_value(s);
    }
    *n = count;
    return true;
}

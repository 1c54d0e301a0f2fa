/*
 * json_read.h - the typed readers of JSON request fields and the one list of
 * error codes a request's fields can earn (json_read.c). Every handler that
 * reads a JSON body uses these, so one bad value gets the same answer on
 * every route. docs/API.md ("Field errors") documents the list.
 *
 * Each reader looks up `key` in the object `o` (borrowed):
 *   - absent or JSON null: returns true and leaves *out unchanged (the
 *     caller sets the default first);
 *   - valid: stores the value and returns true;
 *   - otherwise: prepares a 400 response whose error.param is `key` and
 *     whose error.code comes from enum rk_field_err, and returns false.
 * Strings stored in *out are borrowed from `o`. Loop thread.
 */
#ifndef RK_JSON_READ_H
#define RK_JSON_READ_H

#include "srv.h"

/* The field-error vocabulary (error.code of a 400), in one list. */
enum rk_field_err {
    RK_FIELD_INVALID_JSON,   /* "invalid_json": the body is not a JSON object, or has a
                                repeated key */
    RK_FIELD_INVALID_TYPE,   /* "invalid_type": the field has the wrong JSON type (a string
                                for a number, 3.0 or 3.5 for an integer, 1 for a boolean) */
    RK_FIELD_OUT_OF_RANGE,   /* "out_of_range": a number outside its range, or an array
                                with more elements than allowed */
    RK_FIELD_INVALID_VALUE,  /* "invalid_value": the type is right but the value is not
                                accepted (empty or too long a string, an unknown name,
                                a value that contradicts another field) */
    RK_FIELD_UNSUPPORTED,    /* "unsupported": a known field (OpenAI's) whose behaviour
                                rwkvd does not have, with a value other than the default */
    RK_FIELD_CONTEXT_LENGTH, /* "context_length_exceeded": the prompt is longer than
                                --max-prompt-tokens */
    RK_FIELD_UNKNOWN,        /* "unknown_parameter": a field the route does not know, on
                                routes that refuse unknown fields (the tuning routes) */
};

/* The code string of `e` ("invalid_type", ...). */
const char *rk_field_err_code(enum rk_field_err e);

/* Prepare the 400 for field `param` (may be NULL) with code `e`. */
void rk_field_fail(struct rk_http_req *r, enum rk_field_err e, const char *param,
                   const char *fmt, ...) __attribute__((format(printf, 4, 5)));

/* True when `key` is present and not null. */
bool rk_json_has(json_t *o, const char *key);

/* The first key of object `o` that is neither in `known` (NULL-terminated;
 * NULL: none) nor accepted by `also` (may be NULL); NULL when every key is
 * known. Borrowed from `o`. The caller words the error: routes differ in
 * code and param (unknown_parameter on the tuning routes, invalid_value
 * inside a generation field). */
const char *rk_json_unknown_key(json_t *o, const char *const *known,
                                bool (*also)(const char *key));

/* An integer in [lo, hi]. Only JSON integers: 3.0 is invalid_type, like
 * 3.5 and "3". */
bool rk_json_int(struct rk_http_req *r, json_t *o, const char *key, long long lo, long long hi,
                 long long *out);
/* A finite number in [lo, hi], or (lo, hi] when lo_open. Integers count. */
bool rk_json_num(struct rk_http_req *r, json_t *o, const char *key, double lo, double hi,
                 bool lo_open, double *out);
/* The same, stored as a float. */
bool rk_json_float(struct rk_http_req *r, json_t *o, const char *key, double lo, double hi,
                   bool lo_open, float *out);
bool rk_json_bool(struct rk_http_req *r, json_t *o, const char *key, bool *out);
/* A string of len_min to len_max bytes (invalid_value outside). */
bool rk_json_str(struct rk_http_req *r, json_t *o, const char *key, size_t len_min,
                 size_t len_max, const char **out);
/* An object (invalid_type otherwise); *out is borrowed. */
bool rk_json_obj(struct rk_http_req *r, json_t *o, const char *key, json_t **out);
/* An array of at most n_max strings (out_of_range beyond), each a string
 * (invalid_type otherwise) of len_min to len_max bytes (invalid_value);
 * with `one_ok` a lone string counts as an array of one. The strings go to out[0 .. *n) (the caller's
 * array of n_max entries); *n is 0 when the field is absent. */
bool rk_json_str_array(struct rk_http_req *r, json_t *o, const char *key, bool one_ok,
                       size_t n_max, size_t len_min, size_t len_max, const char **out,
                       size_t *n);

#endif

/*
 * test_state_store.c - state-adapter files and the state store: encode/parse
 * round trip, .pth import (fp32 and bf16), fingerprint and shape mismatch
 * (RK_EMISMATCH), hostile files (every truncation and bit flips of a valid
 * file must fail cleanly), atomic writes, ids, tenant isolation, versioning
 * with references held across a replace, and the LRU byte bound.
 */
#include "check_common.h"
#include "http/state_fixture.h"
#include "rk_adapters.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static struct rk_model *model;
static size_t slen;

static void setup(void)
{
    struct rk_errbuf eb = {0};
    int rc = rk_model_load(rk_test_data("rand-mh.safetensors"), NULL, &model, &eb);
    ck_assert_msg(rc == RK_OK, "load: %s", eb.msg);
    slen = rk_state_len(model);
}

static void teardown(void)
{
    rk_model_free(model);
    model = NULL;
}

static char *fresh_dir(const char *name)
{
    static char buf[512];
    snprintf(buf, sizeof buf, "%s/%s-%d", rk_test_tmpdir(), name, (int)getpid());
    mkdir(buf, 0755);
    return buf;
}

START_TEST(test_ids)
{
    ck_assert(rk_state_id_valid("a"));
    ck_assert(rk_state_id_valid("0abc_d-e"));
    ck_assert(!rk_state_id_valid(""));
    ck_assert(!rk_state_id_valid(NULL));
    ck_assert(!rk_state_id_valid("_a"));
    ck_assert(!rk_state_id_valid("-a"));
    ck_assert(!rk_state_id_valid("A"));
    ck_assert(!rk_state_id_valid("a/b"));
    ck_assert(!rk_state_id_valid(".."));
    ck_assert(!rk_state_id_valid("a.b"));
    char s[80];
    memset(s, 'a', 64);
    s[64] = 0;
    ck_assert(rk_state_id_valid(s));
    s[64] = 'a';
    s[65] = 0;
    ck_assert(!rk_state_id_valid(s));
}
END_TEST

START_TEST(test_roundtrip)
{
    float *a = malloc(slen * 4), *b = malloc(slen * 4);
    fx_random_state(model, 1, a);
    struct rk_state_meta meta;
    rk_state_meta_init(&meta, model);
    snprintf(meta.method, sizeof meta.method, "standard");
    snprintf(meta.note, sizeof meta.note, "a \"quoted\" note\n");
    void *buf;
    size_t len;
    ck_assert_int_eq(rk_state_file_encode(model, a, &meta, &buf, &len), RK_OK);
    struct rk_state_meta got;
    struct rk_errbuf eb = {0};
    ck_assert_msg(rk_state_file_parse(buf, len, model, true, b, &got, &eb) == RK_OK, "%s", eb.msg);
    ck_assert(memcmp(a, b, slen * 4) == 0);
    ck_assert_str_eq(got.method, "standard");
    ck_assert_str_eq(got.note, "a \"quoted\" note\n");
    ck_assert(got.fingerprint == rk_model_fingerprint(model));
    ck_assert(got.has_shift);

    // Every truncation fails cleanly, never crashes.
    for (size_t n = 0; n < len; n += (n < 4096 ? 1 : 997))
        ck_assert_int_ne(rk_state_file_parse(buf, n, model, true, b, NULL, NULL), RK_OK);
    // Bit flips in the header: parse or fail, but no crash and no garbage read.
    uint8_t *p = buf;
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--)
        hl = hl << 8 | p[i];
    for (size_t i = 0; i < 8 + hl; i += 3) {
        for (int bit = 0; bit < 8; bit += 3) {
            p[i] ^= (uint8_t)(1 << bit);
            (void)rk_state_file_parse(buf, len, model, true, b, NULL, NULL);
            p[i] ^= (uint8_t)(1 << bit);
        }
    }
    free(buf);
    free(a);
    free(b);
}
END_TEST

START_TEST(test_mismatch)
{
    float *a = malloc(slen * 4), *b = malloc(slen * 4);
    fx_random_state(model, 2, a);
    struct rk_state_meta meta;
    rk_state_meta_init(&meta, model);
    void *buf;
    size_t len;
    ck_assert_int_eq(rk_state_file_encode(model, a, &meta, &buf, &len), RK_OK);
    // Change the fingerprint digits in the header: another model's state.
    char *h = memmem(buf, len, "\"fingerprint\":\"", 15);
    ck_assert_ptr_nonnull(h);
    h[15] = h[15] == '0' ? '1' : '0';
    struct rk_errbuf eb = {0};
    ck_assert_int_eq(rk_state_file_parse(buf, len, model, true, b, NULL, &eb), RK_EMISMATCH);
    free(buf);

    // A state of the other fixture model (different shapes) is refused too.
    struct rk_model *m2 = NULL;
    ck_assert_int_eq(rk_model_load(rk_test_data("rand-mh-bf16.safetensors"), NULL, &m2, NULL),
                     RK_OK);
    float *c = calloc(rk_state_len(m2), 4);
    ck_assert_int_eq(rk_state_file_encode(m2, c, NULL, &buf, &len), RK_OK);
    ck_assert_int_eq(rk_state_file_parse(buf, len, model, true, b, NULL, &eb), RK_EMISMATCH);
    free(buf);
    free(c);
    rk_model_free(m2);
    free(a);
    free(b);
}
END_TEST

START_TEST(test_pth_import)
{
    float *a = malloc(slen * 4), *b = malloc(slen * 4);
    fx_random_state(model, 3, a);
    struct rk_state_layout lay;
    rk_state_layout(model, &lay);
    for (int bf16 = 0; bf16 < 2; bf16++) {
        void *buf;
        size_t len;
        fx_build_pth(model, a, bf16, &buf, &len);
        struct rk_state_meta meta;
        struct rk_errbuf eb = {0};
        int rc = rk_state_file_parse(buf, len, model, false, b, &meta, &eb);
        ck_assert_msg(rc == RK_OK, "pth (bf16=%d): %s", bf16, eb.msg);
        ck_assert_str_eq(meta.method, "import-pth");
        for (int l = 0; l < rk_model_n_layer(model); l++) {
            const float *wa = a + l * lay.layer_stride + lay.wkv, *wb = b + l * lay.layer_stride + lay.wkv;
            for (size_t k = 0; k < lay.wkv_len; k++)
                ck_assert_msg(wb[k] == (bf16 ? fx_bf16_trunc(wa[k]) : wa[k]), "bf16=%d l=%d k=%zu got %g want %g", bf16, l, k, wb[k], wa[k]);
            for (size_t k = 0; k < lay.shift_len; k++)
                ck_assert(b[l * lay.layer_stride + lay.att_shift + k] == 0.0f);
        }
        for (size_t n = 0; n < len; n += 7)
            ck_assert_int_ne(rk_state_file_parse(buf, n, model, false, b, NULL, NULL), RK_OK);
        free(buf);
    }
    free(a);
    free(b);
}
END_TEST

/* An ai00_server-style state file: safetensors of blocks.{i}.att.time_state
 * only, F16, each [H][N][N] matrix stored [key][value] (the transpose of
 * rwkvd's [value][key]), __metadata__ {"format": `fmt`}. `extra` adds a
 * token-shift tensor; `h_bad` writes H + 1 heads. Values are halves of
 * small integers, exact in F16. */
static void *ai00_file(const float *st, const char *fmt, bool extra, bool h_bad, size_t *len)
{
    const int L = rk_model_n_layer(model), H = rk_model_n_head(model) + (h_bad ? 1 : 0),
              N = rk_model_head_size(model), C = rk_model_n_embd(model);
    struct rk_state_layout lay;
    rk_state_layout(model, &lay);
    size_t mat = (size_t)H * N * N * 2, off = 0;
    char head[16384];
    int w = snprintf(head, sizeof head, "{\"__metadata__\":{\"format\":\"%s\"}", fmt);
    for (int l = 0; l < L; l++) {
        w += snprintf(head + w, sizeof head - (size_t)w, ",\"blocks.%d.att.time_state\":{\"dtype\":"
                      "\"F16\",\"shape\":[%d,%d,%d],\"data_offsets\":[%zu,%zu]}", l, H, N, N, off,
                      off + mat);
        off += mat;
    }
    if (extra) {
        w += snprintf(head + w, sizeof head - (size_t)w, ",\"blocks.0.att.shift_state\":{\"dtype\":"
                      "\"F16\",\"shape\":[%d],\"data_offsets\":[%zu,%zu]}", C, off, off + 2 * C);
        off += 2 * (size_t)C;
    }
    w += snprintf(head + w, sizeof head - (size_t)w, "}");
    ck_assert_int_lt(w, (int)sizeof head);
    *len = 8 + (size_t)w + off;
    unsigned char *b = calloc(1, *len);
    ck_assert_ptr_nonnull(b);
    uint64_t hl = (uint64_t)w;
    memcpy(b, &hl, 8);
    memcpy(b + 8, head, (size_t)w);
    unsigned char *d = b + 8 + w;
    for (int l = 0; l < L; l++)
        for (int h = 0; h < H; h++)
            for (int k = 0; k < N; k++)     // rows of the file: key
                for (int v = 0; v < N; v++) { // columns: value
                    int hh = h < rk_model_n_head(model) ? h : 0;
                    const float *S = st + (size_t)l * lay.layer_stride + lay.wkv; // [H][N][N]
                    float x = S[((size_t)hh * N + v) * N + k];
                    // x is a multiple of 0.5 in [-8, 8]: build its F16 bits by hand
                    uint16_t bits = 0;
                    if (x != 0.0f) {
                        float ax = x < 0 ? -x : x;
                        int e = 0;
                        while (ax >= 2.0f) {
                            ax /= 2;
                            e++;
                        }
                        while (ax < 1.0f) {
                            ax *= 2;
                            e--;
                        }
                        bits = (uint16_t)((x < 0 ? 0x8000 : 0) | (uint16_t)((e + 15) << 10) |
                                          (uint16_t)((ax - 1.0f) * 1024.0f));
                    }
                    size_t at = (((size_t)l * H + h) * N + k) * N + v;
                    memcpy(d + at * 2, &bits, 2);
                }
    return b;
}

START_TEST(test_ai00_import)
{
    struct rk_state_layout lay;
    rk_state_layout(model, &lay);
    float *a = calloc(slen, 4), *b = malloc(slen * 4);
    // WKV values k/2 for small k, different in every position (so a
    // transpose that went wrong is seen); shift parts zero.
    for (int l = 0; l < rk_model_n_layer(model); l++)
        for (size_t k = 0; k < lay.wkv_len; k++)
            a[(size_t)l * lay.layer_stride + lay.wkv + k] =
                (float)((int)((k * 7 + (size_t)l) % 33) - 16) * 0.5f;
    size_t len;
    void *buf = ai00_file(a, "pt", false, false, &len);
    struct rk_state_meta meta;
    struct rk_errbuf eb = {0};
    int rc = rk_state_file_import(buf, len, model, RK_STATE_FROM_AI00, b, &meta, &eb);
    ck_assert_msg(rc == RK_OK, "ai00: %s", eb.msg);
    ck_assert_str_eq(meta.method, "import-ai00");
    ck_assert(!meta.has_shift);
    for (size_t k = 0; k < slen; k++)
        ck_assert_msg(b[k] == a[k], "element %zu: got %g want %g", k, b[k], a[k]);
    // The same bytes read as a native file give the transpose: the caller's
    // word is what decides.
    ck_assert_int_eq(rk_state_file_import(buf, len, model, RK_STATE_FROM_AUTO, b, NULL, NULL),
                     RK_OK);
    size_t N = (size_t)rk_model_head_size(model), off = lay.wkv;
    ck_assert(b[off + 1] == a[off + N] && b[off + N] == a[off + 1]);
    free(buf);

    buf = ai00_file(a, "pt", false, true, &len); // a model with another head count
    memset(&eb, 0, sizeof eb);
    ck_assert_int_eq(rk_state_file_import(buf, len, model, RK_STATE_FROM_AI00, b, NULL, &eb),
                     RK_EMISMATCH);
    ck_assert_msg(strstr(eb.msg, "shape does not match the model"), "%s", eb.msg);
    free(buf);
    buf = ai00_file(a, "pt", true, false, &len); // token-shift tensors: not ai00's
    memset(&eb, 0, sizeof eb);
    ck_assert_int_eq(rk_state_file_import(buf, len, model, RK_STATE_FROM_AI00, b, NULL, &eb),
                     RK_EFORMAT);
    ck_assert_msg(strstr(eb.msg, "token-shift"), "%s", eb.msg);
    free(buf);
    buf = ai00_file(a, "rwkvd-state", false, false, &len); // rwkvd's own file
    memset(&eb, 0, sizeof eb);
    ck_assert_int_eq(rk_state_file_import(buf, len, model, RK_STATE_FROM_AI00, b, NULL, &eb),
                     RK_EFORMAT);
    ck_assert_msg(strstr(eb.msg, "format is 'rwkvd-state'"), "%s", eb.msg);
    free(buf);
    void *pth;
    fx_build_pth(model, a, false, &pth, &len); // a .pth is not an ai00 file
    memset(&eb, 0, sizeof eb);
    ck_assert_int_eq(rk_state_file_import(pth, len, model, RK_STATE_FROM_AI00, b, NULL, &eb),
                     RK_EFORMAT);
    ck_assert_msg(strstr(eb.msg, ".pth archive"), "%s", eb.msg);
    free(pth);
    free(a);
    free(b);
}
END_TEST

START_TEST(test_store_versions)
{
    struct rk_state_store *s = NULL;
    struct rk_errbuf eb = {0};
    ck_assert_int_eq(rk_store_open(fresh_dir("store"), model, NULL, &s, &eb), RK_OK);
    float *a = malloc(slen * 4), *b = malloc(slen * 4);
    fx_random_state(model, 4, a);
    fx_random_state(model, 5, b);
    struct rk_state_ref *r1 = NULL, *r2 = NULL, *g = NULL;
    ck_assert_int_eq(rk_store_put(s, "t1", "x", a, NULL, &r1, &eb), RK_OK);
    ck_assert_int_eq((int)rk_state_ref_meta(r1)->version, 1);
    ck_assert_int_eq(rk_store_get(s, "t1", "x", &g, &eb), RK_OK);
    ck_assert(memcmp(rk_state_ref_data(g), a, slen * 4) == 0);
    // Replace while a reference to version 1 is held: it must not change.
    ck_assert_int_eq(rk_store_put(s, "t1", "x", b, NULL, &r2, &eb), RK_OK);
    ck_assert_int_eq((int)rk_state_ref_meta(r2)->version, 2);
    ck_assert(memcmp(rk_state_ref_data(g), a, slen * 4) == 0);
    rk_state_ref_release(g);
    ck_assert_int_eq(rk_store_get(s, "t1", "x", &g, &eb), RK_OK);
    ck_assert(memcmp(rk_state_ref_data(g), b, slen * 4) == 0);
    rk_state_ref_release(g);
    // Another tenant does not see it.
    ck_assert_int_eq(rk_store_get(s, "t2", "x", &g, &eb), RK_ENOTFOUND);
    ck_assert_int_eq(rk_store_get(s, "t1", "../t2", &g, &eb), RK_ENOTFOUND);
    ck_assert_int_ne(rk_store_put(s, "t1", "Bad", a, NULL, NULL, &eb), RK_OK);
    // A fresh store (a restart) reads version 2 from disk and continues at 3.
    rk_state_ref_release(r1);
    rk_state_ref_release(r2);
    rk_store_free(s);
    ck_assert_int_eq(rk_store_open(fresh_dir("store"), model, NULL, &s, &eb), RK_OK);
    ck_assert_int_eq(rk_store_get(s, "t1", "x", &g, &eb), RK_OK);
    ck_assert_int_eq((int)rk_state_ref_meta(g)->version, 2);
    ck_assert(memcmp(rk_state_ref_data(g), b, slen * 4) == 0);
    rk_state_ref_release(g);
    ck_assert_int_eq(rk_store_put(s, "t1", "x", a, NULL, NULL, &eb), RK_OK);
    ck_assert_int_eq(rk_store_get(s, "t1", "x", &g, &eb), RK_OK);
    ck_assert_int_eq((int)rk_state_ref_meta(g)->version, 3);
    // Delete: gone from disk and cache, the held reference still readable.
    ck_assert_int_eq(rk_store_delete(s, "t1", "x", &eb), RK_OK);
    ck_assert(memcmp(rk_state_ref_data(g), a, slen * 4) == 0);
    rk_state_ref_release(g);
    ck_assert_int_eq(rk_store_get(s, "t1", "x", &g, &eb), RK_ENOTFOUND);
    ck_assert_int_eq(rk_store_delete(s, "t1", "x", &eb), RK_ENOTFOUND);
    // No temp files left behind.
    char path[600];
    snprintf(path, sizeof path, "%s/tenants/t1/states", fresh_dir("store"));
    DIR *d = opendir(path);
    ck_assert_ptr_nonnull(d);
    struct dirent *e;
    while ((e = readdir(d)))
        ck_assert_msg(!strstr(e->d_name, ".tmp"), "left over: %s", e->d_name);
    closedir(d);
    rk_store_free(s);
    free(a);
    free(b);
}
END_TEST

static bool count_cb(const char *id, const struct rk_state_meta *m, size_t bytes, bool ok,
                     void *user)
{
    (void)id;
    (void)m;
    (void)bytes;
    *(int *)user += ok ? 1 : 100;
    return true;
}

START_TEST(test_store_lru_and_list)
{
    size_t one = slen * 4;
    struct rk_store_params p = {.cache_bytes_max = one * 3};
    struct rk_state_store *s = NULL;
    ck_assert_int_eq(rk_store_open(fresh_dir("lru"), model, &p, &s, NULL), RK_OK);
    float *a = malloc(one);
    char id[16];
    for (int i = 0; i < 6; i++) {
        fx_random_state(model, 10 + (uint64_t)i, a);
        snprintf(id, sizeof id, "s%d", i);
        ck_assert_int_eq(rk_store_put(s, "t", id, a, NULL, NULL, NULL), RK_OK);
    }
    struct rk_store_stats st;
    rk_store_stats(s, &st);
    ck_assert_msg(st.bytes <= one * 3, "cache holds %zu bytes", st.bytes);
    ck_assert_uint_ge(st.evictions, 3);
    // Evicted entries load again from disk (a miss), with the right data.
    struct rk_state_ref *g = NULL;
    // The loop thread's lookup never reads a file: an evicted entry is a
    // miss there, counted nowhere (rk_store_get counts it when it loads).
    ck_assert_int_eq(rk_store_get_cached(s, "t", "s0", &g), RK_ENOTFOUND);
    ck_assert_ptr_null(g);
    ck_assert_int_eq(rk_store_get_cached(s, "t", "../s0", &g), RK_ENOTFOUND);
    ck_assert_int_eq(rk_store_get(s, "t", "s0", &g, NULL), RK_OK);
    fx_random_state(model, 10, a);
    ck_assert(memcmp(rk_state_ref_data(g), a, one) == 0);
    struct rk_store_stats st2;
    rk_store_stats(s, &st2);
    ck_assert_uint_eq(st2.misses, st.misses + 1);
    // Now cached: the same version, counted as a hit.
    struct rk_state_ref *c = NULL;
    ck_assert_int_eq(rk_store_get_cached(s, "t", "s0", &c), RK_OK);
    ck_assert_ptr_eq(c, g);
    rk_state_ref_release(c);
    rk_state_ref_release(g);
    struct rk_store_stats st3;
    rk_store_stats(s, &st3);
    ck_assert_uint_eq(st3.hits, st2.hits + 1);
    ck_assert_uint_eq(st3.misses, st2.misses);
    int n = 0;
    ck_assert_int_eq(rk_store_list(s, "t", count_cb, &n), RK_OK);
    ck_assert_int_eq(n, 6);
    n = 0;
    ck_assert_int_eq(rk_store_list(s, "nobody", count_cb, &n), RK_OK);
    ck_assert_int_eq(n, 0);
    rk_store_free(s);
    free(a);
}
END_TEST

START_TEST(test_atomic_write)
{
    char path[600];
    snprintf(path, sizeof path, "%s/atomic.bin", fresh_dir("atomic"));
    ck_assert_int_eq(rk_file_write_atomic(path, "hello", 5, NULL), RK_OK);
    ck_assert_int_eq(rk_file_write_atomic(path, "bye", 3, NULL), RK_OK);
    void *b;
    size_t n;
    ck_assert_int_eq(rk_file_read_all(path, 100, &b, &n, NULL), RK_OK);
    ck_assert_uint_eq(n, 3);
    ck_assert(!memcmp(b, "bye", 3));
    free(b);
    ck_assert_int_eq(rk_file_read_all(path, 2, &b, &n, NULL), RK_ERANGE);
    char bad[700];
    snprintf(bad, sizeof bad, "%s/no/such/dir/x", fresh_dir("atomic"));
    ck_assert_int_eq(rk_file_write_atomic(bad, "x", 1, NULL), RK_EIO);
    // Symlinks are not followed.
    char link[700];
    snprintf(link, sizeof link, "%s/link", fresh_dir("atomic"));
    ck_assert_int_eq(symlink(path, link), 0);
    ck_assert_int_ne(rk_file_read_all(link, 100, &b, &n, NULL), RK_OK);
}
END_TEST

/* State files are read by core's container reader (rk_tensorfile.h), so they
 * get every check model files get, including on tensors the state does not
 * use. */
START_TEST(test_container_checks)
{
    static const struct {
        const char *header, *msg;
    } cases[] = {
        {"{\"blocks.0.att.time_state\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"blocks.0.att.time_state\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
         "twice"},
        {"{\"x\":{\"dtype\":\"Q4\",\"shape\":[1],\"data_offsets\":[0,4]}}", "unknown dtype"},
        {"{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,4]}}", "data_offsets"},
        {"{\"x\":{\"dtype\":\"F32\",\"shape\":[01],\"data_offsets\":[0,4]}}", "leading zero"},
        {"{\"x\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
         "duplicate field"},
        {"{\"__metadata__\":{\"note\":\"\\u0000\"}}", "NUL"},
    };
    float *st = malloc(slen * 4);
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t h = strlen(cases[i].header), len = 8 + h + 8;
        unsigned char *b = calloc(1, len);
        for (int k = 0; k < 8; k++)
            b[k] = (unsigned char)((uint64_t)h >> (8 * k));
        memcpy(b + 8, cases[i].header, h);
        struct rk_errbuf eb = {0};
        int rc = rk_state_file_parse(b, len, model, false, st, NULL, &eb);
        ck_assert_msg(rc == RK_EFORMAT && strstr(eb.msg, cases[i].msg),
                      "case %zu: %s \"%s\" lacks \"%s\"", i, rk_errname(rc), eb.msg,
                      cases[i].msg);
        free(b);
    }
    free(st);
}
END_TEST

RK_TEST_SUITE(state_store_suite, RK_SELF_CONTAINED)
{
    Suite *s = suite_create("state_store");
    TCase *tc = tcase_create("files");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_ids);
    tcase_add_test(tc, test_roundtrip);
    tcase_add_test(tc, test_mismatch);
    tcase_add_test(tc, test_pth_import);
    tcase_add_test(tc, test_ai00_import);
    tcase_add_test(tc, test_container_checks);
    tcase_add_test(tc, test_atomic_write);
    suite_add_tcase(s, tc);
    tc = tcase_create("store");
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_store_versions);
    tcase_add_test(tc, test_store_lru_and_list);
    suite_add_tcase(s, tc);
    return s;
}

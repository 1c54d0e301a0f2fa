/*
 * test_fileio.c - core's shared file helpers (rk_fileio.h) and tensor-file
 * reader (rk_tensorfile.h) called directly: the temp-file name pattern that
 * start-up clean-up relies on, abort and commit, mkdir -p, capped reads that
 * refuse symlinks, fp16/bf16 elements, the string buffer; the safetensors
 * reader's metadata callback, header-only reads, the overlap check behind an
 * empty tensor, and the nested state dict of .pth files. The hostile-file
 * cases of both containers run through the model loader in test_loader.c.
 */
#include "check_common.h"
#include "core_int.h"
#include "rk_fileio.h"
#include "rk_tensorfile.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *dir_for(const char *name)
{
    static char buf[512];
    snprintf(buf, sizeof buf, "%s/fileio-%s-%d", rk_test_tmpdir(), name, (int)getpid());
    return buf;
}

static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(d);
    return n;
}

START_TEST(temp_names_abort_commit)
{
    char dir[600], path[700];
    snprintf(dir, sizeof dir, "%s/a/b/c", dir_for("tmp"));
    ck_assert_int_eq(rk_mkdirs(dir, NULL), RK_OK);
    ck_assert_int_eq(rk_mkdirs(dir, NULL), RK_OK); /* existing: fine */
    snprintf(path, sizeof path, "%s/x.json", dir);

    /* the temp name is <path>.tmp.<pid>.<n>, which clean-up recognises */
    struct rk_file_tmp t;
    ck_assert_int_eq(rk_file_tmp_open(&t, path, NULL), RK_OK);
    char want[720];
    snprintf(want, sizeof want, "%s.tmp.%ld.", path, (long)getpid());
    ck_assert_msg(!strncmp(t.tmp, want, strlen(want)), "temp name %s", t.tmp);
    ck_assert_int_eq(rk_file_tmp_write(&t, "abc", 3, NULL), RK_OK);
    rk_file_tmp_abort(&t);
    rk_file_tmp_abort(&t); /* released: no-op */
    ck_assert_int_eq(count_entries(dir), 0);

    /* a writer that "crashes" leaves its temp file; clean-up removes it */
    ck_assert_int_eq(rk_file_tmp_open(&t, path, NULL), RK_OK);
    close(t.fd);
    free(t.tmp);
    free(t.path);
    ck_assert_int_eq(count_entries(dir), 1);
    ck_assert_int_eq(rk_file_clean_temps(dir), 1);
    ck_assert_int_eq(count_entries(dir), 0);

    /* commit */
    ck_assert_int_eq(rk_file_write_atomic(path, "{}", 2, NULL), RK_OK);
    void *b;
    size_t n;
    ck_assert_int_eq(rk_file_read_all(path, 2, &b, &n, NULL), RK_OK);
    ck_assert(n == 2 && !memcmp(b, "{}", 2));
    free(b);
    ck_assert_int_eq(rk_file_read_all(path, 1, &b, &n, NULL), RK_ERANGE);
    ck_assert_int_eq(count_entries(dir), 1);

    /* a path under a file cannot be made */
    char bad[720];
    struct rk_errbuf eb = {0};
    snprintf(bad, sizeof bad, "%s/sub", path);
    ck_assert_int_eq(rk_mkdirs(bad, &eb), RK_EIO);
    ck_assert_msg(strstr(eb.msg, "mkdir"), "%s", eb.msg);
    ck_assert_int_eq(rk_dir_fsync(dir), RK_OK);
    ck_assert_int_eq(rk_dir_fsync(bad), RK_EIO);
}
END_TEST

START_TEST(half_elements)
{
    /* f16: 1, -2, smallest subnormal, +inf, NaN; unaligned source */
    unsigned char h[1 + 10] = {0, 0x00, 0x3c, 0x00, 0xc0, 0x01, 0x00, 0x00, 0x7c, 0x00, 0x7e};
    float f[5];
    rk_elems_to_f32(f, h + 1, 5, RK_DTYPE_F16);
    ck_assert(f[0] == 1.0f && f[1] == -2.0f);
    ck_assert(f[2] == ldexpf(1.0f, -24));
    ck_assert(isinf(f[3]) && f[3] > 0 && isnan(f[4]));
    unsigned char bf[4] = {0x80, 0x3f, 0x40, 0xc0}; /* 1.0, -3.0 */
    rk_elems_to_f32(f, bf, 2, RK_DTYPE_BF16);
    ck_assert(f[0] == 1.0f && f[1] == -3.0f);
    unsigned char f32[1 + 4] = {0, 0x00, 0x00, 0x20, 0x41}; /* 10.0 */
    rk_elems_to_f32(f, f32 + 1, 1, RK_DTYPE_F32);
    ck_assert(f[0] == 10.0f);
}
END_TEST

START_TEST(string_buffer)
{
    struct rk_buf b = {0};
    char big[1000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0;
    rk_buf_printf(&b, "%s|%d", big, 42); /* longer than the stack buffer */
    ck_assert_uint_eq(b.len, 999 + 3);
    ck_assert_str_eq(b.p + 999, "|42");
    b.len = 0;
    rk_buf_json_str(&b, "a\"\\\n\x01\x7f\xc3\xa9", 8);
    ck_assert_str_eq(b.p, "\"a\\\"\\\\\\n\\u0001\\u007f\xc3\xa9\"");
    ck_assert(!b.oom);
    rk_buf_free(&b);
    rk__alloc_fail_after(1);
    rk_buf_puts(&b, "abc");
    rk__alloc_fail_after(0);
    ck_assert(b.oom && b.len == 0);
    rk_buf_puts(&b, "abc"); /* a later append may succeed; oom stays set */
    ck_assert(b.oom && b.len == 3);
    rk_buf_free(&b);
}
END_TEST

/* --- tensor files ----------------------------------------------------------- */

/* A safetensors file of `header` followed by `data` zero bytes. */
static unsigned char *st_file(const char *header, size_t data, size_t *len)
{
    size_t h = strlen(header);
    *len = 8 + h + data;
    unsigned char *b = calloc(1, *len);
    for (int k = 0; k < 8; k++)
        b[k] = (unsigned char)((uint64_t)h >> (8 * k));
    memcpy(b + 8, header, h);
    return b;
}

struct meta_seen {
    int n;
    char last[64];
};

static int on_meta(void *user, const char *key, const char *val, struct rk_errbuf *eb)
{
    struct meta_seen *m = user;
    m->n++;
    snprintf(m->last, sizeof m->last, "%s=%s", key, val);
    if (!strcmp(key, "bad"))
        return rk_errbuf_set(eb, RK_EMISMATCH, "refused %s", val);
    return RK_OK;
}

static int st_read(const char *header, size_t data, size_t keep, const struct rk_tf_opts *o,
                   struct rk_tf_list *l, struct rk_errbuf *eb)
{
    size_t len;
    unsigned char *b = st_file(header, data, &len);
    int rc = rk_tf_safetensors_read(b, keep ? keep : len, len, o, l, eb);
    free(b);
    return rc;
}

START_TEST(safetensors_reader)
{
    struct meta_seen ms = {0};
    struct rk_tf_opts o = {.file = "t", .meta = on_meta, .user = &ms};
    struct rk_tf_list l = {0};
    struct rk_errbuf eb = {0};

    /* metadata entries reach the callback, decoded */
    ck_assert_int_eq(st_read("{\"__metadata__\":{\"a\":\"1\",\"n\":\"\\u00e9\"},"
                             "\"w\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[0,16]}}",
                             16, 0, &o, &l, &eb),
                     RK_OK);
    ck_assert_int_eq(ms.n, 2);
    ck_assert_str_eq(ms.last, "n=\xc3\xa9");
    ck_assert_uint_eq(l.n, 1);
    ck_assert(l.v[0].dtype == RK_DTYPE_AUTO && !strcmp(l.v[0].dtype_name, "I64"));
    ck_assert(l.v[0].data != NULL && l.v[0].nbytes == 16);
    rk_tf_list_free(&l);
    /* with a callback, metadata must be an object of strings */
    ck_assert_int_eq(st_read("{\"__metadata__\":{\"a\":1}}", 0, 0, &o, &l, &eb), RK_EFORMAT);
    ck_assert_int_eq(st_read("{\"__metadata__\":[]}", 0, 0, &o, &l, &eb), RK_EFORMAT);
    /* the callback's code stops the parse */
    ck_assert_int_eq(st_read("{\"__metadata__\":{\"bad\":\"x\"}}", 0, 0, &o, &l, &eb),
                     RK_EMISMATCH);
    ck_assert_str_eq(eb.msg, "refused x");
    rk_tf_list_free(&l);

    /* header only: data outside the buffer are NULL, offsets still checked */
    const char *h = "{\"w\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}";
    ck_assert_int_eq(st_read(h, 16, 8 + strlen(h), &o, &l, &eb), RK_OK);
    ck_assert(l.n == 1 && l.v[0].data == NULL && l.v[0].offset == 0);
    rk_tf_list_free(&l);
    ck_assert_int_eq(st_read(h, 8, 8 + strlen(h), &o, &l, &eb), RK_EFORMAT);
    rk_tf_list_free(&l);

    /* an overlap hidden behind an empty tensor: a [0,64), e [8,8), c [16,24) */
    ck_assert_int_eq(st_read("{\"a\":{\"dtype\":\"F32\",\"shape\":[16],\"data_offsets\":[0,64]},"
                             "\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,8]},"
                             "\"c\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[16,24]}}",
                             64, 0, &o, &l, &eb),
                     RK_EFORMAT);
    ck_assert_msg(strstr(eb.msg, "tensors a and c overlap"), "%s", eb.msg);
    rk_tf_list_free(&l);

    /* the tensor limit */
    o.tensors_max = 1;
    ck_assert_int_eq(st_read("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                             "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                             8, 0, &o, &l, &eb),
                     RK_EFORMAT);
    ck_assert_msg(strstr(eb.msg, "more than 1 tensors"), "%s", eb.msg);
    rk_tf_list_free(&l);
}
END_TEST

/* --- .pth: a stored zip around a pickle ---------------------------------------- */

struct zb {
    unsigned char *p;
    size_t n;
};
static void zput(struct zb *b, const void *s, size_t n)
{
    b->p = realloc(b->p, b->n + n);
    memcpy(b->p + b->n, s, n);
    b->n += n;
}
static void z16(struct zb *b, unsigned v)
{
    unsigned char c[2] = {(unsigned char)v, (unsigned char)(v >> 8)};
    zput(b, c, 2);
}
static void z32(struct zb *b, uint32_t v)
{
    z16(b, v & 0xffff);
    z16(b, v >> 16);
}

static void zip_of(struct zb *z, const char *const *names, const struct zb *data, int n)
{
    struct zb cd = {0};
    for (int i = 0; i < n; i++) {
        uint32_t off = (uint32_t)z->n;
        size_t nl = strlen(names[i]);
        z32(z, 0x04034b50u);
        z16(z, 20), z16(z, 0), z16(z, 0), z16(z, 0), z16(z, 0);
        z32(z, 0), z32(z, (uint32_t)data[i].n), z32(z, (uint32_t)data[i].n);
        z16(z, (unsigned)nl), z16(z, 0);
        zput(z, names[i], nl);
        zput(z, data[i].p, data[i].n);
        z32(&cd, 0x02014b50u);
        z16(&cd, 20), z16(&cd, 20), z16(&cd, 0), z16(&cd, 0), z16(&cd, 0), z16(&cd, 0);
        z32(&cd, 0), z32(&cd, (uint32_t)data[i].n), z32(&cd, (uint32_t)data[i].n);
        z16(&cd, (unsigned)nl), z16(&cd, 0), z16(&cd, 0), z16(&cd, 0), z16(&cd, 0);
        z32(&cd, 0), z32(&cd, off);
        zput(&cd, names[i], nl);
    }
    uint32_t cd_off = (uint32_t)z->n;
    zput(z, cd.p, cd.n);
    z32(z, 0x06054b50u);
    z16(z, 0), z16(z, 0), z16(z, (unsigned)n), z16(z, (unsigned)n);
    z32(z, (uint32_t)cd.n), z32(z, cd_off), z16(z, 0);
    free(cd.p);
}

#define PKS(b, lit) zput(b, lit, sizeof(lit) - 1)

START_TEST(pth_nested)
{
    /* {"state_dict": {"w": tensor float32 [2] in storage "0"}} */
    struct zb pk = {0};
    PKS(&pk, "\x80\x02}X\x0a\x00\x00\x00state_dict}X\x01\x00\x00\x00w"
             "ctorch._utils\n_rebuild_tensor_v2\n("
             "(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x00" "0"
             "X\x03\x00\x00\x00" "cpuK\x02tQ"
             "K\x00K\x02\x85K\x01\x85\x89" "ccollections\nOrderedDict\n)RtRss.");
    float w[2] = {1.5f, -2.0f};
    struct zb data[2] = {pk, {(unsigned char *)w, sizeof w}};
    static const char *const names[2] = {"ck/data.pkl", "ck/data/0"};
    struct zb z = {0};
    zip_of(&z, names, data, 2);

    struct rk_tf_opts o = {.file = "n.pth"};
    struct rk_tf_list l = {0};
    struct rk_errbuf eb = {0};
    /* not allowed: the outer dict holds no tensor */
    ck_assert_msg(rk_tf_pth_read(z.p, z.n, &o, &l, &eb) == RK_OK, "%s", eb.msg);
    ck_assert_uint_eq(l.n, 0);
    rk_tf_list_free(&l);
    o.pth_nested = true;
    ck_assert_msg(rk_tf_pth_read(z.p, z.n, &o, &l, &eb) == RK_OK, "%s", eb.msg);
    ck_assert_uint_eq(l.n, 1);
    ck_assert_str_eq(l.v[0].name, "w");
    ck_assert(l.v[0].dtype == RK_DTYPE_F32 && l.v[0].ndim == 1 && l.v[0].shape[0] == 2);
    float got[2];
    rk_elems_to_f32(got, l.v[0].data, 2, l.v[0].dtype);
    ck_assert(got[0] == 1.5f && got[1] == -2.0f);
    ck_assert(rk_tf_is_zip(z.p, z.n) && !rk_tf_is_zip("{}", 2));
    rk_tf_list_free(&l);
    free(z.p);
    free(pk.p);
}
END_TEST

RK_TEST_SUITE(fileio_suite, RK_SELF_CONTAINED)
{
    Suite *s = suite_create("fileio");
    TCase *tc = tcase_create("files");
    tcase_add_test(tc, temp_names_abort_commit);
    tcase_add_test(tc, half_elements);
    tcase_add_test(tc, string_buffer);
    suite_add_tcase(s, tc);
    tc = tcase_create("tensorfile");
    tcase_add_test(tc, safetensors_reader);
    tcase_add_test(tc, pth_nested);
    suite_add_tcase(s, tc);
    return s;
}

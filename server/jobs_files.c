/*
 * jobs_files.c - uploaded training files (the OpenAI /v1/files store) under
 * DATA/jobs/files/<tenant>: add, get, read, list, delete, and loading them at
 * start-up.
 */
#include "jobs_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

/* --- files --------------------------------------------------------------------- */

static void file_dir(const struct rk_tjobs *js, const char *tenant, char *out, size_t cap)
{
    snprintf(out, cap, "%s/tenants/%s/files", js->data_dir, tenant);
}

static json_t *file_json(const struct rk_tfile *f)
{
    return json_pack("{s:i,s:s,s:s,s:s,s:s,s:I,s:I,s:I}", "format", 1, "id", f->id, "tenant",
                     f->tenant, "filename", f->filename, "purpose", f->purpose, "bytes",
                     (json_int_t)f->bytes, "created_ms", (json_int_t)f->created_ms, "n_examples",
                     (json_int_t)f->n_examples);
}

int rk_files_add(struct rk_tjobs *js, const char *tenant, const char *filename,
                 const char *purpose, const void *data, size_t len, size_t n_examples,
                 struct rk_tfile *out, struct rk_errbuf *eb)
{
    struct rk_tfile f = {0};
    tj_random_id("file-", f.id, sizeof f.id);
    snprintf(f.tenant, sizeof f.tenant, "%s", tenant);
    snprintf(f.filename, sizeof f.filename, "%s", filename);
    snprintf(f.purpose, sizeof f.purpose, "%s", purpose);
    f.bytes = len;
    f.created_ms = tj_wall_ms();
    f.n_examples = n_examples;
    pthread_mutex_lock(&js->mu);
    int n = 0;
    for (size_t i = 0; i < js->n_files; i++)
        n += !strcmp(js->files[i].tenant, tenant);
    pthread_mutex_unlock(&js->mu);
    if (n >= js->lim.files_per_tenant_max)
        return rk_errbuf_set(eb, RK_EBUSY, "this tenant already has %d files (the limit); "
                             "delete some first", n);
    char dir[1100], path[1200];
    file_dir(js, tenant, dir, sizeof dir);
    if (rk_mkdirs(dir, NULL) != RK_OK)
        return rk_errbuf_set(eb, RK_EIO, "cannot create %s: %s", dir, strerror(errno));
    snprintf(path, sizeof path, "%s/%s.jsonl", dir, f.id);
    int rc = rk_file_write_atomic(path, data, len, eb);
    if (rc != RK_OK)
        return rc;
    json_t *o = file_json(&f);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    snprintf(path, sizeof path, "%s/%s.json", dir, f.id);
    rc = s ? rk_file_write_atomic(path, s, strlen(s), eb) : RK_ENOMEM;
    free(s);
    if (rc != RK_OK) {
        snprintf(path, sizeof path, "%s/%s.jsonl", dir, f.id);
        unlink(path);
        return rc;
    }
    // Uploads run in parallel on the thread pool: the count is checked again
    // under the lock that inserts, and a file that cannot enter the table
    // leaves nothing on disk.
    pthread_mutex_lock(&js->mu);
    n = 0;
    for (size_t i = 0; i < js->n_files; i++)
        n += !strcmp(js->files[i].tenant, tenant);
    if (n >= js->lim.files_per_tenant_max)
        rc = rk_errbuf_set(eb, RK_EBUSY, "this tenant already has %d files (the limit); "
                           "delete some first", n);
    if (rc == RK_OK && js->n_files == js->cap_files) {
        size_t nc = js->cap_files ? js->cap_files * 2 : 32;
        void *p = realloc(js->files, nc * sizeof *js->files);
        if (p) {
            js->files = p;
            js->cap_files = nc;
        } else {
            rc = rk_errbuf_set(eb, RK_ENOMEM, "out of memory");
        }
    }
    if (rc == RK_OK)
        js->files[js->n_files++] = f;
    pthread_mutex_unlock(&js->mu);
    if (rc != RK_OK) {
        unlink(path); // the record first: without it the data is no file
        snprintf(path, sizeof path, "%s/%s.jsonl", dir, f.id);
        unlink(path);
        rk_dir_fsync(dir);
        return rc;
    }
    if (out)
        *out = f;
    return RK_OK;
}

static struct rk_tfile *file_find(struct rk_tjobs *js, const char *tenant, const char *id)
{
    if (!tj_id_ok(id, "file-"))
        return NULL;
    for (size_t i = 0; i < js->n_files; i++)
        if (!strcmp(js->files[i].id, id))
            return strcmp(js->files[i].tenant, tenant) ? NULL : &js->files[i];
    return NULL;
}

int rk_files_get(struct rk_tjobs *js, const char *tenant, const char *id, struct rk_tfile *out)
{
    pthread_mutex_lock(&js->mu);
    struct rk_tfile *f = file_find(js, tenant, id);
    if (f)
        *out = *f;
    pthread_mutex_unlock(&js->mu);
    return f ? RK_OK : RK_ENOTFOUND;
}

int rk_files_read(struct rk_tjobs *js, const char *tenant, const char *id, void **data,
                  size_t *len, struct rk_errbuf *eb)
{
    struct rk_tfile f;
    if (rk_files_get(js, tenant, id, &f) != RK_OK)
        return RK_ENOTFOUND;
    char dir[1100], path[1200];
    file_dir(js, tenant, dir, sizeof dir);
    snprintf(path, sizeof path, "%s/%s.jsonl", dir, f.id);
    return rk_file_read_all(path, js->lim.dataset_bytes_max, data, len, eb);
}

int rk_files_list(struct rk_tjobs *js, const char *tenant, struct rk_tfile **out, size_t *n)
{
    pthread_mutex_lock(&js->mu);
    struct rk_tfile *arr = malloc((js->n_files ? js->n_files : 1) * sizeof *arr);
    size_t k = 0;
    if (arr)
        for (size_t i = js->n_files; i-- > 0;)
            if (!strcmp(js->files[i].tenant, tenant))
                arr[k++] = js->files[i];
    pthread_mutex_unlock(&js->mu);
    *out = arr;
    *n = k;
    return arr ? RK_OK : RK_ENOMEM;
}

int rk_files_delete(struct rk_tjobs *js, const char *tenant, const char *id)
{
    pthread_mutex_lock(&js->mu);
    struct rk_tfile *f = file_find(js, tenant, id);
    if (!f) {
        pthread_mutex_unlock(&js->mu);
        return RK_ENOTFOUND;
    }
    char dir[1100], path[1200];
    file_dir(js, tenant, dir, sizeof dir);
    // The metadata goes first: without it the file is no longer listed.
    snprintf(path, sizeof path, "%s/%s.json", dir, f->id);
    unlink(path);
    snprintf(path, sizeof path, "%s/%s.jsonl", dir, f->id);
    unlink(path);
    rk_dir_fsync(dir);
    size_t i = (size_t)(f - js->files);
    memmove(js->files + i, js->files + i + 1, (js->n_files - i - 1) * sizeof *js->files);
    js->n_files--;
    pthread_mutex_unlock(&js->mu);
    return RK_OK;
}

void tj_load_files(struct rk_tjobs *js)
{
    char tdir[1100];
    snprintf(tdir, sizeof tdir, "%s/tenants", js->data_dir);
    DIR *d = opendir(tdir);
    if (!d)
        return;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (!rk_state_id_valid(de->d_name))
            continue;
        char fdir[1100];
        file_dir(js, de->d_name, fdir, sizeof fdir);
        DIR *fd = opendir(fdir);
        if (!fd)
            continue;
        struct dirent *fe;
        while ((fe = readdir(fd))) {
            size_t n = strlen(fe->d_name);
            if (n < 6 || strcmp(fe->d_name + n - 5, ".json"))
                continue;
            char path[1400];
            snprintf(path, sizeof path, "%s/%s", fdir, fe->d_name);
            json_t *o = json_load_file(path, JSON_REJECT_DUPLICATES, NULL);
            struct rk_tfile f = {0};
            tj_str_of(o, "id", f.id, sizeof f.id);
            tj_str_of(o, "tenant", f.tenant, sizeof f.tenant);
            tj_str_of(o, "filename", f.filename, sizeof f.filename);
            tj_str_of(o, "purpose", f.purpose, sizeof f.purpose);
            f.bytes = (size_t)tj_int_of(o, "bytes");
            f.created_ms = tj_int_of(o, "created_ms");
            f.n_examples = (size_t)tj_int_of(o, "n_examples");
            json_decref(o);
            if (!tj_id_ok(f.id, "file-") || strcmp(f.tenant, de->d_name)) {
                rk_log(RK_LOG_WARN, "jobs: ignoring unreadable file record %s", path);
                continue;
            }
            if (js->n_files == js->cap_files) {
                size_t nc = js->cap_files ? js->cap_files * 2 : 32;
                void *p = realloc(js->files, nc * sizeof *js->files);
                if (!p)
                    break;
                js->files = p;
                js->cap_files = nc;
            }
            js->files[js->n_files++] = f;
        }
        closedir(fd);
    }
    closedir(d);
    // Newest last, like uploads in this run.
    for (size_t i = 1; i < js->n_files; i++)
        for (size_t k = i; k > 0 && js->files[k - 1].created_ms > js->files[k].created_ms; k--) {
            struct rk_tfile t = js->files[k];
            js->files[k] = js->files[k - 1];
            js->files[k - 1] = t;
        }
}

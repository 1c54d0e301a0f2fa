/*
 * api_files.c - the OpenAI files routes: POST /v1/files (multipart/form-data,
 * purpose "fine-tune"), GET /v1/files, GET|DELETE /v1/files/{id},
 * GET /v1/files/{id}/content.
 */
#include "api_jobs_int.h"
#include "json_read.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>

/* --- OpenAI: files ----------------------------------------------------------------- */

static json_t *file_openai(const struct rk_tfile *f)
{
    return json_pack("{s:s,s:s,s:I,s:I,s:s,s:s,s:s,s:n,s:n}", "id", f->id, "object", "file",
                     "bytes", (json_int_t)f->bytes, "created_at",
                     (json_int_t)(f->created_ms / 1000), "filename", f->filename, "purpose",
                     f->purpose, "status", "processed", "status_details", "expires_at");
}


void h_file_upload(struct rk_http_req *r)
{
    struct job_task *t = api_task_done(r);
    if (t) { // the second call: the file is checked and written (or failed)
        if (!api_task_answer_error(r, t))
            rk_http_json(r, 200, file_openai(&t->file));
        return;
    }
    struct rk_tjobs *js = api_tjobs_of(r);
    struct part parts[8];
    int n = rk_multipart_parse(rk_http_header(r, "Content-Type"), r->body.p ? r->body.p : "", r->body.len,
                      parts, 8);
    if (n < 0) {
        rk_field_fail(r, RK_FIELD_INVALID_VALUE, NULL,
                      "the body must be multipart/form-data with fields \"file\" and "
                      "\"purpose\"");
        return;
    }
    const struct part *file = NULL;
    char purpose[32] = "";
    for (int i = 0; i < n && i < 8; i++) {
        if (!strcmp(parts[i].name, "file"))
            file = &parts[i];
        else if (!strcmp(parts[i].name, "purpose"))
            snprintf(purpose, sizeof purpose, "%.*s",
                     (int)(parts[i].len < 31 ? parts[i].len : 31), parts[i].data);
    }
    if (!file) {
        rk_field_fail(r, RK_FIELD_INVALID_VALUE, "file", "missing the \"file\" field");
        return;
    }
    if (strcmp(purpose, "fine-tune")) {
        rk_field_fail(r, RK_FIELD_INVALID_VALUE, "purpose",
                      "purpose must be \"fine-tune\" (the only purpose this server stores)");
        return;
    }
    const struct rk_tjobs_limits *lim = rk_tjobs_limits(js);
    if (file->len > lim->dataset_bytes_max) {
        rk_http_error(r, 413, "dataset_too_large", "file",
                      "the dataset has %zu bytes; the limit is %zu", file->len,
                      lim->dataset_bytes_max);
        return;
    }
    // Checking and writing the file run on the thread pool; the handler runs
    // again then. The task takes the request's body, which the part lies in
    // (no copy of up to 64 MiB on the loop thread).
    t = api_task_new(r, TASK_FILE, NULL, "file");
    if (!t)
        return;
    t->text = file->data;
    t->len = file->len;
    t->text_mem = r->body.p;
    r->body = (struct rk_buf){0};
    snprintf(t->filename, sizeof t->filename, "%s",
             file->filename[0] ? file->filename : "upload.jsonl");
    snprintf(t->purpose, sizeof t->purpose, "%s", purpose);
    api_task_start(r, t);
}

const char *api_query(struct rk_http_req *r, const char *key)
{
    return MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, key);
}

bool api_query_limit(struct rk_http_req *r, int def, int *out)
{
    const char *s = api_query(r, "limit");
    *out = def;
    if (!s)
        return true;
    char *end;
    long v = strtol(s, &end, 10);
    if (*end || end == s || v < 1 || v > 10000) {
        rk_field_fail(r, *end || end == s ? RK_FIELD_INVALID_TYPE : RK_FIELD_OUT_OF_RANGE, "limit",
                      "limit must be an integer in [1, 10000]");
        return false;
    }
    *out = (int)v;
    return true;
}

void h_files(struct rk_http_req *r)
{
    struct rk_tjobs *js = api_tjobs_of(r);
    struct rk_tfile *fs = NULL;
    size_t n = 0;
    int limit;
    if (!api_query_limit(r, 10000, &limit))
        return;
    const char *after = api_query(r, "after"), *purpose = api_query(r, "purpose");
    if (rk_files_list(js, r->tenant, &fs, &n) != RK_OK) {
        rk_http_error(r, 503, "enomem", NULL, "out of memory");
        return;
    }
    json_t *arr = json_array();
    size_t i = 0;
    if (after) {
        while (i < n && strcmp(fs[i].id, after))
            i++;
        i = i < n ? i + 1 : n;
    }
    bool more = false;
    for (; i < n; i++) {
        if (purpose && strcmp(purpose, fs[i].purpose))
            continue;
        if (json_array_size(arr) == (size_t)limit) {
            more = true;
            break;
        }
        json_array_append_new(arr, file_openai(&fs[i]));
    }
    free(fs);
    size_t k = json_array_size(arr);
    json_t *o = json_pack("{s:s,s:o,s:b}", "object", "list", "data", arr, "has_more", more);
    json_object_set_new(o, "first_id", k ? json_incref(json_object_get(json_array_get(arr, 0), "id"))
                                         : json_null());
    json_object_set_new(o, "last_id", k ? json_incref(json_object_get(json_array_get(arr, k - 1), "id"))
                                        : json_null());
    rk_http_json(r, 200, o);
}

static bool file_or_404(struct rk_http_req *r, struct rk_tfile *f)
{
    if (rk_files_get(api_tjobs_of(r), r->tenant, r->params[0], f) == RK_OK)
        return true;
    rk_http_error(r, 404, "file_not_found", "id", "file '%s' does not exist", r->params[0]);
    return false;
}

void h_file(struct rk_http_req *r)
{
    struct rk_tfile f;
    if (file_or_404(r, &f))
        rk_http_json(r, 200, file_openai(&f));
}

/* GET /v1/files/{id}/content reads up to 64 MiB: on the thread pool. */
struct file_get {
    struct rk_tjobs *js;
    char tenant[RK_STATE_ID_MAX + 1];
    char id[32];
    /* written on the pool, read after the completion */
    int rc;
    void *buf;
    size_t len;
    struct rk_errbuf eb;
};

static void file_get_run(void *arg)
{
    struct file_get *g = arg;
    g->rc = rk_files_read(g->js, g->tenant, g->id, &g->buf, &g->len, &g->eb);
}

static void file_get_free(void *arg)
{
    struct file_get *g = arg;
    if (g)
        free(g->buf);
    free(g);
}

void h_file_content(struct rk_http_req *r)
{
    struct file_get *g = r->user_free == file_get_free ? r->user : NULL;
    if (g) { // the second call: the contents (or why not)
        if (g->rc == RK_ENOTFOUND)
            rk_http_error(r, 404, "file_not_found", "id", "file '%s' does not exist", g->id);
        else if (g->rc != RK_OK)
            rk_http_error_rk(r, g->rc, "id", g->eb.msg);
        else
            rk_http_bytes(r, 200, "application/jsonl", g->buf, g->len);
        return;
    }
    struct rk_tfile f;
    if (!file_or_404(r, &f))
        return;
    if (!(g = calloc(1, sizeof *g))) {
        rk_http_error(r, 503, "enomem", NULL, "out of memory");
        return;
    }
    g->js = api_tjobs_of(r);
    snprintf(g->tenant, sizeof g->tenant, "%s", r->tenant);
    snprintf(g->id, sizeof g->id, "%s", f.id);
    r->user = g;
    r->user_free = file_get_free;
    rk_http_offload(r, file_get_run, g); // on failure a 503 is prepared
}

/* A delete unlinks and fsyncs the directory: on the thread pool. */
struct file_del {
    struct rk_tjobs *js;
    char tenant[RK_STATE_ID_MAX + 1];
    char id[32];
    int rc; /* written on the pool, read after the completion */
};

static void file_del_run(void *arg)
{
    struct file_del *d = arg;
    d->rc = rk_files_delete(d->js, d->tenant, d->id);
}

static void file_del_free(void *arg) { free(arg); }

void h_file_delete(struct rk_http_req *r)
{
    struct file_del *d = r->user_free == file_del_free ? r->user : NULL;
    if (d) { // the second call: deleted (or gone meanwhile)
        if (d->rc != RK_OK)
            rk_http_error(r, 404, "file_not_found", "id", "file '%s' does not exist", d->id);
        else
            rk_http_json(r, 200, json_pack("{s:s,s:s,s:b}", "id", d->id, "object", "file",
                                           "deleted", 1));
        return;
    }
    struct rk_tfile f;
    if (!file_or_404(r, &f))
        return;
    if (!(d = calloc(1, sizeof *d))) {
        rk_http_error(r, 503, "enomem", NULL, "out of memory");
        return;
    }
    d->js = api_tjobs_of(r);
    snprintf(d->tenant, sizeof d->tenant, "%s", r->tenant);
    snprintf(d->id, sizeof d->id, "%s", f.id);
    r->user = d;
    r->user_free = file_del_free;
    rk_http_offload(r, file_del_run, d); // on failure a 503 is prepared
}

/*
 * api_states.c - the state store over HTTP: GET /states, GET/PUT/DELETE
 * /states/{id}, GET /states/{id}/file. Every lookup is scoped to the
 * caller's tenant; a state of another tenant and a missing one give the same
 * 404. PUT accepts a safetensors state file (adapters/FORMAT.md) or an
 * RWKV-PEFT .pth state checkpoint, which is converted, or with ?from=ai00
 * an ai00_server state file (transposed on import).
 *
 * Disk work stays off the loop thread: a state that is not cached is loaded
 * on the thread pool (rk_state_fetch); GET /states/{id}/file reads its file
 * there, PUT parses the upload and writes it there (temp file, fsync,
 * rename, directory fsync) and DELETE unlinks and fsyncs there, each through
 * rk_http_offload with the request suspended. The answer is prepared only
 * after the store's call has returned, so a 200/201 always means the file
 * is durable, and a failed write answers its error with the old version
 * still in place (rk_store_put's contract).
 * GET /states, which reads every file's header, runs there too.
 */
#include "srv.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static json_t *meta_json(const char *id, const struct rk_state_meta *m, size_t bytes, bool ok)
{
    char fp[24];
    snprintf(fp, sizeof fp, "%016" PRIx64, m->fingerprint);
    json_t *o = json_pack("{s:s,s:s,s:b}", "id", id, "object", "state", "ok", ok);
    if (!o || !ok)
        return o;
    json_object_set_new(o, "version", json_integer((json_int_t)m->version));
    json_object_set_new(o, "method", json_string(m->method));
    json_object_set_new(o, "note", json_string(m->note));
    json_object_set_new(o, "created", json_integer((json_int_t)(m->created_ms / 1000)));
    json_object_set_new(o, "created_ms", json_integer((json_int_t)m->created_ms));
    json_object_set_new(o, "fingerprint", json_string(fp));
    json_object_set_new(o, "n_layer", json_integer(m->n_layer));
    json_object_set_new(o, "n_embd", json_integer(m->n_embd));
    json_object_set_new(o, "n_head", json_integer(m->n_head));
    json_object_set_new(o, "has_shift", json_boolean(m->has_shift));
    if (bytes)
        json_object_set_new(o, "bytes", json_integer((json_int_t)bytes));
    return o;
}

static bool list_entry(const char *id, const struct rk_state_meta *meta, size_t bytes, bool ok,
                       void *user)
{
    json_array_append_new(user, meta_json(id, meta, bytes, ok));
    return true;
}

/* GET /states reads every state file's header: on the thread pool. The
 * array is built there (a jansson value of its own, handed to the loop
 * thread only after the work is done). */
struct state_list {
    struct rk_state_store *store;
    char tenant[RK_STATE_ID_MAX + 1];
    json_t *arr; /* written by the worker; read after the completion */
    int rc;
};

static void list_work(void *arg)
{
    struct state_list *l = arg;
    l->arr = json_array();
    l->rc = l->arr ? rk_store_list(l->store, l->tenant, list_entry, l->arr) : RK_ENOMEM;
}

static void list_free(void *arg)
{
    struct state_list *l = arg;
    if (l)
        json_decref(l->arr);
    free(l);
}

static void h_list(struct rk_http_req *r)
{
    struct state_list *l = r->user_free == list_free ? r->user : NULL;
    if (!l) { // first call: list on the pool; the handler runs again then
        if (!(l = calloc(1, sizeof *l))) {
            rk_http_error(r, 503, "enomem", NULL, "out of memory");
            return;
        }
        l->store = r->srv->store;
        snprintf(l->tenant, sizeof l->tenant, "%s", r->tenant);
        r->user = l;
        r->user_free = list_free;
        rk_http_offload(r, list_work, l); // on failure a 503 is prepared
        return;
    }
    if (l->rc != RK_OK) {
        rk_http_error_rk(r, l->rc, NULL, "cannot list states");
        return;
    }
    json_t *arr = l->arr;
    l->arr = NULL;
    rk_http_json(r, 200, json_pack("{s:s,s:o}", "object", "list", "data", arr));
}

static bool id_or_404(struct rk_http_req *r)
{
    if (rk_state_id_valid(r->params[0]))
        return true;
    rk_http_error(r, 404, "state_not_found", "id", "state '%s' does not exist", r->params[0]);
    return false;
}

static void h_get(struct rk_http_req *r)
{
    if (!id_or_404(r))
        return;
    struct rk_state_ref *ref = NULL;
    struct rk_errbuf eb = {0};
    int rc = rk_state_fetch(r, r->params[0], &ref, &eb);
    if (rc == RK_STATE_FETCH_PENDING)
        return; // read off the loop thread; the handler runs again
    if (rc == RK_ENOTFOUND) {
        rk_http_error(r, 404, "state_not_found", "id", "state '%s' does not exist", r->params[0]);
        return;
    }
    if (rc != RK_OK) {
        rk_http_error_rk(r, rc, "id", eb.msg);
        return;
    }
    size_t bytes = rk_state_len(r->srv->model) * sizeof(float);
    rk_http_json(r, 200, meta_json(r->params[0], rk_state_ref_meta(ref), bytes, true));
    rk_state_ref_release(ref);
}

/* GET /states/{id}/file reads a whole file: always on the thread pool. */
struct file_read {
    struct rk_state_store *store;
    char tenant[RK_STATE_ID_MAX + 1];
    char id[RK_STATE_ID_MAX + 8]; /* r->params[0], checked by id_or_404 */
    /* written by the worker; read after the offload's completion */
    void *buf;
    size_t len;
    int rc;
    struct rk_errbuf eb;
};

static void file_work(void *arg)
{
    struct file_read *f = arg;
    f->rc = rk_store_read_file(f->store, f->tenant, f->id, &f->buf, &f->len, &f->eb);
}

static void file_free(void *arg)
{
    struct file_read *f = arg;
    if (f) {
        free(f->buf);
        free(f);
    }
}

static void h_file(struct rk_http_req *r)
{
    if (!id_or_404(r))
        return;
    struct file_read *f = r->user;
    if (!f) { // first call: read it on the pool; the handler runs again then
        if (!(f = calloc(1, sizeof *f))) {
            rk_http_error(r, 503, "enomem", NULL, "out of memory");
            return;
        }
        f->store = r->srv->store;
        snprintf(f->tenant, sizeof f->tenant, "%s", r->tenant);
        snprintf(f->id, sizeof f->id, "%s", r->params[0]);
        r->user = f;
        r->user_free = file_free;
        rk_http_offload(r, file_work, f); // on failure a 503 is prepared
        return;
    }
    if (f->rc == RK_ENOTFOUND) {
        rk_http_error(r, 404, "state_not_found", "id", "state '%s' does not exist", r->params[0]);
        return;
    }
    if (f->rc != RK_OK) {
        rk_http_error_rk(r, f->rc, "id", f->eb.msg);
        return;
    }
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(f->len, f->buf, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        rk_http_error(r, 503, "enomem", NULL, "out of memory");
        return;
    }
    f->buf = NULL; // the response frees it
    char cd[128];
    snprintf(cd, sizeof cd, "attachment; filename=\"%s.safetensors\"", r->params[0]);
    MHD_add_response_header(resp, "Content-Type", "application/octet-stream");
    MHD_add_response_header(resp, "Content-Disposition", cd);
    r->resp = resp;
    r->status = 200;
}

/* PUT and DELETE run their store call on the thread pool. */
struct state_write {
    struct rk_state_store *store;
    const struct rk_model *model;
    bool del;
    char tenant[RK_STATE_ID_MAX + 1];
    char id[RK_STATE_ID_MAX + 8];
    char note[sizeof(((struct rk_state_meta *)0)->note)];
    bool has_note;
    enum rk_state_from from; /* ?from=ai00: an ai00_server state file */
    struct rk_buf body; /* the upload, moved out of the request */
    /* written by the worker; read on the loop thread after the completion */
    bool parse_failed;
    int rc;
    struct rk_errbuf eb;
    struct rk_state_ref *ref;
};

static void write_work(void *arg)
{
    struct state_write *w = arg;
    if (w->del) {
        w->rc = rk_store_delete(w->store, w->tenant, w->id, &w->eb);
        return;
    }
    float *state = malloc(rk_state_len(w->model) * sizeof(float));
    if (!state) {
        w->rc = rk_errbuf_set(&w->eb, RK_ENOMEM, "out of memory");
        return;
    }
    struct rk_state_meta meta;
    w->rc = rk_state_file_import(w->body.p, w->body.len, w->model, w->from, state, &meta,
                                 &w->eb);
    if (w->rc != RK_OK) {
        w->parse_failed = true;
    } else {
        if (w->has_note)
            snprintf(meta.note, sizeof meta.note, "%s", w->note);
        w->rc = rk_store_put(w->store, w->tenant, w->id, state, &meta, &w->ref, &w->eb);
    }
    free(state);
}

static void write_free(void *arg)
{
    struct state_write *w = arg;
    if (w) {
        rk_state_ref_release(w->ref);
        rk_buf_free(&w->body);
        free(w);
    }
}

/* First call: start the work and return NULL (the handler runs again when it
 * is done, or a 503 is prepared). Second call: the finished work. */
static struct state_write *write_start_or_result(struct rk_http_req *r, bool del,
                                                 enum rk_state_from from)
{
    if (r->user_free == write_free)
        return r->user;
    struct state_write *w = calloc(1, sizeof *w);
    if (!w) {
        rk_http_error(r, 503, "enomem", NULL, "out of memory");
        return NULL;
    }
    w->store = r->srv->store;
    w->model = r->srv->model;
    w->del = del;
    w->from = from;
    snprintf(w->tenant, sizeof w->tenant, "%s", r->tenant);
    snprintf(w->id, sizeof w->id, "%s", r->params[0]);
    if (!del) {
        // The work owns the upload: a client that leaves frees its request
        // at once, and the work's data only when the work is done.
        w->body = r->body;
        r->body = (struct rk_buf){0};
        const char *note = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "note");
        if (note) {
            w->has_note = true;
            snprintf(w->note, sizeof w->note, "%s", note);
        }
    }
    r->user = w;
    r->user_free = write_free;
    rk_http_offload(r, write_work, w); // on failure a 503 is prepared
    return NULL;
}

static void h_put(struct rk_http_req *r)
{
    struct rk_srv *srv = r->srv;
    const char *id = r->params[0];
    if (!rk_state_id_valid(id)) {
        rk_http_error(r, 400, "invalid_id", "id", "state ids must match "
                      "^[a-z0-9][a-z0-9_-]{0,63}$");
        return;
    }
    if (r->user_free != write_free && !r->body.len) {
        rk_http_error(r, 400, "empty_body", NULL, "the body must be a state file "
                      "(safetensors or RWKV-PEFT .pth)");
        return;
    }
    // ?from=ai00 names an ai00_server state file (its matrices are stored
    // transposed, which the bytes cannot show; adapters/FORMAT.md).
    const char *from_s = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "from");
    enum rk_state_from from = RK_STATE_FROM_AUTO;
    if (from_s && !strcmp(from_s, "ai00")) {
        from = RK_STATE_FROM_AI00;
    } else if (from_s && strcmp(from_s, "rwkvd") && strcmp(from_s, "peft")) {
        rk_http_error(r, 400, "invalid_value", "from", "\"from\" must be rwkvd, peft or ai00");
        return;
    }
    struct state_write *w = write_start_or_result(r, false, from);
    if (!w)
        return;
    if (w->rc != RK_OK) {
        rk_http_error_rk(r, w->rc, w->parse_failed ? "body" : NULL, w->eb.msg);
        return;
    }
    const struct rk_state_meta *m = rk_state_ref_meta(w->ref);
    rk_http_json(r, m->version == 1 ? 201 : 200,
                 meta_json(id, m, rk_state_len(srv->model) * sizeof(float), true));
}

static void h_delete(struct rk_http_req *r)
{
    if (!id_or_404(r))
        return;
    struct state_write *w = write_start_or_result(r, true, RK_STATE_FROM_AUTO);
    if (!w)
        return;
    if (w->rc == RK_ENOTFOUND) {
        rk_http_error(r, 404, "state_not_found", "id", "state '%s' does not exist", r->params[0]);
        return;
    }
    if (w->rc != RK_OK) {
        rk_http_error_rk(r, w->rc, NULL, w->eb.msg);
        return;
    }
    rk_http_json(r, 200, json_pack("{s:s,s:s,s:b}", "id", r->params[0], "object", "state",
                                   "deleted", 1));
}

void rk_api_states_register(struct rk_srv *srv)
{
    static const struct rk_route routes[] = {
        {"GET", "/states", h_list, 0, NULL},
        {"GET", "/states/{id}", h_get, 0, NULL},
        {"PUT", "/states/{id}", h_put, RK_ROUTE_BIG_BODY, NULL},
        {"DELETE", "/states/{id}", h_delete, 0, NULL},
        {"GET", "/states/{id}/file", h_file, 0, NULL},
    };
    rk_routes_add(srv, routes, sizeof routes / sizeof routes[0]);
}

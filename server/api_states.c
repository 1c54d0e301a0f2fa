/*
 * api_states.c - the state store over HTTP: GET /states, GET/PUT/DELETE
 * /states/{id}, GET /states/{id}/file. Every lookup is scoped to the
 * caller's tenant; a state of another tenant and a missing one give the same
 * 404. PUT accepts a safetensors state file (adapters/FORMAT.md) or an
 * RWKV-PEFT .pth state checkpoint, which is converted.
 *
 * Reads stay off the loop thread: a state that is not cached is loaded on
 * the thread pool (rk_state_fetch), and GET /states/{id}/file reads its
 * file there too (rk_http_offload).
 * TODO: PUT and DELETE write and fsync on the loop thread (a few ms for a
 * typical state), and GET /states lists the directory there (reading each
 * file's header); move them to the pool the same way if uploads of very
 * large states or long listings under load show up in /health latency.
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
    if (m->kernel_m > 0) {
        json_object_set_new(o, "kernel_m", json_integer(m->kernel_m));
        json_object_set_new(o, "kernel_fade",
                            json_string(m->kernel_fade == RK_FADE_NONE ? "none" : "mean"));
    }
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

static void h_list(struct rk_http_req *r)
{
    json_t *arr = json_array();
    int rc = rk_store_list(r->srv->store, r->tenant, list_entry, arr);
    if (rc != RK_OK) {
        json_decref(arr);
        rk_http_error_rk(r, rc, NULL, "cannot list states");
        return;
    }
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
    size_t bytes = rk_adapter_len(r->srv->model, rk_state_ref_meta(ref)) * sizeof(float);
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

static void h_put(struct rk_http_req *r)
{
    struct rk_srv *srv = r->srv;
    const char *id = r->params[0];
    if (!rk_state_id_valid(id)) {
        rk_http_error(r, 400, "invalid_id", "id", "state ids must match "
                      "^[a-z0-9][a-z0-9_-]{0,63}$");
        return;
    }
    if (!r->body.len) {
        rk_http_error(r, 400, "empty_body", NULL, "the body must be a state file "
                      "(safetensors or RWKV-PEFT .pth)");
        return;
    }
    float *state = NULL; /* a kernel state is longer than rk_state_len */
    struct rk_state_meta meta;
    struct rk_errbuf eb = {0};
    int rc = rk_state_file_parse_alloc(r->body.p, r->body.len, srv->model, false, &state, &meta,
                                       &eb);
    if (rc != RK_OK) {
        rk_http_error_rk(r, rc, "body", eb.msg);
        return;
    }
    const char *note = MHD_lookup_connection_value(r->conn, MHD_GET_ARGUMENT_KIND, "note");
    if (note)
        snprintf(meta.note, sizeof meta.note, "%s", note);
    struct rk_state_ref *ref = NULL;
    rc = rk_store_put(srv->store, r->tenant, id, state, &meta, &ref, &eb);
    free(state);
    if (rc != RK_OK) {
        rk_http_error_rk(r, rc, NULL, eb.msg);
        return;
    }
    const struct rk_state_meta *m = rk_state_ref_meta(ref);
    rk_http_json(r, m->version == 1 ? 201 : 200,
                 meta_json(id, m, rk_adapter_len(srv->model, m) * sizeof(float), true));
    rk_state_ref_release(ref);
}

static void h_delete(struct rk_http_req *r)
{
    if (!id_or_404(r))
        return;
    struct rk_errbuf eb = {0};
    int rc = rk_store_delete(r->srv->store, r->tenant, r->params[0], &eb);
    if (rc == RK_ENOTFOUND) {
        rk_http_error(r, 404, "state_not_found", "id", "state '%s' does not exist", r->params[0]);
        return;
    }
    if (rc != RK_OK) {
        rk_http_error_rk(r, rc, NULL, eb.msg);
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

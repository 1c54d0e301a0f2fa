/*
 * http.c - the HTTP glue on the loop thread: per-request state, hostile
 * request checks (framing, transfer codings, NUL bytes), body limits,
 * authentication, routing, responses, SSE streaming, suspend/resume and
 * work offloaded to the thread pool. The loop that drives MHD (libuv
 * handles, accept path, signals, drain) is loop.c; http_int.h is the seam.
 *
 * A request that waits for the engine is suspended (MHD_suspend_connection)
 * and resumed from the loop's wake-up; while suspended MHD does not notice a
 * client going away, so a uv_poll on the connection's socket watches for
 * EOF and cancels the job (the engine stops it within one step).
 *
 * Streaming responses read from job->out under job->mu; when it is empty
 * the content reader suspends the connection and returns 0, and the next
 * wake resumes it.
 */
#include "http_int.h"
#include "json_read.h"

/* Oversized bodies up to this size (by Content-Length) are read and dropped
 * before the 413 is sent; larger ones get the 413 at once and the connection
 * is closed. */
#define RK_HTTP_DRAIN_MAX ((size_t)16 << 20)

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <uv.h>

struct rk_disconnect_watch {
    uv_poll_t poll;
    struct rk_http_req *r; /* NULL once the request is gone */
    int fd;
    bool active;
};

/* --- responses ----------------------------------------------------------- */

static void set_resp(struct rk_http_req *r, int status, struct MHD_Response *resp)
{
    if (r->resp)
        MHD_destroy_response(r->resp);
    r->resp = resp;
    r->status = status;
}

void rk_http_bytes(struct rk_http_req *r, int status, const char *ctype, const void *buf,
                   size_t len)
{
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(len, (void *)buf, MHD_RESPMEM_MUST_COPY);
    if (!resp)
        return;
    MHD_add_response_header(resp, "Content-Type", ctype);
    set_resp(r, status, resp);
}

void rk_http_json(struct rk_http_req *r, int status, json_t *body)
{
    char *s = body ? json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(9)) : NULL;
    json_decref(body);
    if (!s) {
        static const char oom[] = "{\"error\":{\"message\":\"out of memory\",\"type\":"
                                  "\"server_error\",\"param\":null,\"code\":\"enomem\"}}";
        rk_http_bytes(r, 500, "application/json", oom, sizeof oom - 1);
        return;
    }
    size_t n = strlen(s);
    struct MHD_Response *resp = MHD_create_response_from_buffer(n, s, MHD_RESPMEM_MUST_FREE);
    if (!resp) {
        free(s);
        return;
    }
    MHD_add_response_header(resp, "Content-Type", "application/json");
    set_resp(r, status, resp);
}

static const char *error_type(int status)
{
    switch (status) {
    case 401: return "authentication_error";
    case 403: return "permission_error";
    case 404: return "not_found_error";
    case 429: return "rate_limit_error";
    case 501: return "invalid_request_error"; // a request feature we do not implement
    case 504: return "timeout";
    default: return status >= 500 ? "server_error" : "invalid_request_error";
    }
}

void rk_http_error(struct rk_http_req *r, int status, const char *code, const char *param,
                   const char *fmt, ...)
{
    // Messages quote client input (ids, paths, field names), which may be
    // any bytes: cut at a character boundary, then replace every byte that
    // is not well-formed UTF-8 with U+FFFD, so the JSON encoder never fails.
    char msg[512], clean[3 * sizeof msg + 4], pbuf[3 * 64 + 4];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    char orig[sizeof msg];
    memcpy(orig, msg, sizeof msg);
    if (n > 0 && rk_scrub_paths(msg, sizeof msg, r->srv->cfg.data_dir)) {
        rk_log(RK_LOG_WARN, "%s %s: %d %s: %s", r->method, r->path ? r->path : "", status, code,
               orig);
        n = (int)strlen(msg);
    }
    size_t len = n < 0 ? 0 : (size_t)n < sizeof msg ? (size_t)n : rk_utf8_cut(msg, sizeof msg - 1);
    rk_utf8_sanitize((const uint8_t *)msg, len, clean, sizeof clean);
    if (param) {
        size_t pl = strlen(param);
        pl = pl < 64 ? pl : rk_utf8_cut(param, 64);
        rk_utf8_sanitize((const uint8_t *)param, pl, pbuf, sizeof pbuf);
        param = pbuf;
    }
    json_t *e = json_pack("{s:{s:s,s:s,s:s?,s:s?}}", "error", "message", clean, "type",
                          error_type(status), "param", param, "code", code);
    rk_http_json(r, status, e);
    if (r->resp) {
        if (status == 429 || status == 503)
            MHD_add_response_header(r->resp, "Retry-After", "1");
        if (status == 401)
            MHD_add_response_header(r->resp, "WWW-Authenticate", "Bearer");
    }
}

/* The one table from rk error codes to HTTP. */
int rk_http_status_of(int rc)
{
    switch (rc) {
    case RK_OK: return 200;
    case RK_EINVAL: case RK_ERANGE: return 400;
    case RK_ENOTFOUND: return 404;
    case RK_EEXIST: return 409;
    case RK_EMISMATCH: case RK_EFORMAT: case RK_ENUMERIC: return 422;
    case RK_EBUSY: return 429;
    case RK_ETIMEOUT: return 504;
    case RK_ENOMEM: case RK_ECANCELED: return 503;
    default: return 500;
    }
}

void rk_http_error_rk(struct rk_http_req *r, int rc, const char *param, const char *msg)
{
    rk_http_error(r, rk_http_status_of(rc), rk_errname(rc), param, "%s",
                  msg && *msg ? msg : rk_strerror(rc));
}

const char *rk_http_header(struct rk_http_req *r, const char *name)
{
    return MHD_lookup_connection_value(r->conn, MHD_HEADER_KIND, name);
}

json_t *rk_http_body_json(struct rk_http_req *r)
{
    json_error_t je;
    if (!r->body.len) {
        rk_field_fail(r, RK_FIELD_INVALID_JSON, NULL, "request body must be a JSON object");
        return NULL;
    }
    json_t *j = json_loadb(r->body.p, r->body.len, JSON_REJECT_DUPLICATES, &je);
    if (!j) {
        rk_field_fail(r, RK_FIELD_INVALID_JSON, NULL, "invalid JSON: %s (line %d, column %d)",
                      je.text, je.line, je.column);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        rk_field_fail(r, RK_FIELD_INVALID_JSON, NULL, "request body must be a JSON object");
        return NULL;
    }
    return j;
}

/* --- disconnect watch ---------------------------------------------------- */

static void watch_closed(uv_handle_t *h) { free(h->data); }

static void watch_stop(struct rk_http_req *r)
{
    if (r->watch && r->watch->active) {
        uv_poll_stop(&r->watch->poll);
        r->watch->active = false;
    }
}

void rk__http_resume(struct rk_http_req *r)
{
    if (!r->suspended)
        return;
    watch_stop(r);
    r->suspended = false;
    MHD_resume_connection(r->conn);
}

static void on_watch(uv_poll_t *h, int status, int events)
{
    struct rk_disconnect_watch *w = h->data;
    struct rk_http_req *r = w->r;
    if (!r)
        return;
    char c;
    ssize_t n = recv(w->fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n > 0 && status == 0 && !(events & UV_DISCONNECT)) {
        // Pipelined bytes, not a disconnect: stop watching (MHD reads them later).
        watch_stop(r);
        return;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && !(events & UV_DISCONNECT))
        return;
    // The client is gone: stop its generation and let MHD close the connection.
    if (r->job)
        atomic_store(&r->job->cancel, true);
    rk__http_resume(r);
    rk__loop_kick(r->srv);
}

static void watch_start(struct rk_http_req *r)
{
    if (!r->watch) {
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(r->conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (!ci)
            return;
        struct rk_disconnect_watch *w = calloc(1, sizeof *w);
        if (!w)
            return;
        w->fd = ci->connect_fd;
        w->r = r;
        if (uv_poll_init_socket((uv_loop_t *)r->srv->loop, &w->poll, w->fd) != 0) {
            free(w);
            return;
        }
        w->poll.data = w;
        r->watch = w;
    }
    if (!r->watch->active && uv_poll_start(&r->watch->poll, UV_READABLE | UV_DISCONNECT,
                                           on_watch) == 0)
        r->watch->active = true;
}

static void suspend(struct rk_http_req *r)
{
    if (r->suspended)
        return;
    MHD_suspend_connection(r->conn);
    r->suspended = true;
    watch_start(r);
}

/* --- streaming ----------------------------------------------------------- */

static ssize_t sse_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    struct rk_job *j = cls;
    (void)pos;
    pthread_mutex_lock(&j->mu);
    size_t avail = j->out.len - j->out_pos;
    if (avail) {
        size_t n = avail < max ? avail : max;
        memcpy(buf, j->out.p + j->out_pos, n);
        j->out_pos += n;
        if (j->out_pos == j->out.len)
            j->out_pos = j->out.len = 0;
        pthread_mutex_unlock(&j->mu);
        return (ssize_t)n;
    }
    bool done = j->done;
    pthread_mutex_unlock(&j->mu);
    if (done)
        return MHD_CONTENT_READER_END_OF_STREAM;
    if (!j->req)
        return MHD_CONTENT_READER_END_WITH_ERROR;
    suspend(j->req); // the engine's next wake resumes us
    return 0;
}

static void sse_free(void *cls) { rk_job_release(cls); }

void rk_http_stream(struct rk_http_req *r, struct rk_job *job)
{
    struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, sse_read,
                                                                  rk_job_retain(job), sse_free);
    if (!resp) {
        rk_job_release(job);
        rk_http_error(r, 503, "enomem", NULL, "out of memory");
        return;
    }
    MHD_add_response_header(resp, "Content-Type", "text/event-stream");
    MHD_add_response_header(resp, "Cache-Control", "no-cache");
    MHD_add_response_header(resp, "X-Accel-Buffering", "no");
    rk_http_conn_headers(r->srv, resp);
    r->job = rk_job_retain(job);
    job->req = r;
    job->conn = r->conn;
    r->srv->n_jobs_inflight++;
    if (MHD_queue_response(r->conn, 200, resp) != MHD_YES)
        atomic_store(&job->cancel, true);
    MHD_destroy_response(resp);
    r->status = 200;
    r->stream_queued = true;
}

void rk_http_wait_job(struct rk_http_req *r, struct rk_job *job,
                      void (*done_fn)(struct rk_http_req *r, struct rk_job *job))
{
    r->job = rk_job_retain(job);
    r->done_fn = done_fn;
    job->req = r;
    job->conn = r->conn;
    r->srv->n_jobs_inflight++;
    suspend(r);
}

/* --- request lifecycle --------------------------------------------------- */

struct hdr_scan {
    int n_cl, n_te;
    bool bad;
};

static enum MHD_Result scan_header(void *cls, enum MHD_ValueKind kind, const char *key,
                                   const char *value)
{
    struct hdr_scan *h = cls;
    (void)kind;
    if (!strcasecmp(key, "Content-Length"))
        h->n_cl++;
    else if (!strcasecmp(key, "Transfer-Encoding"))
        h->n_te++;
    for (const char *p = value ? value : ""; *p; p++)
        if ((unsigned char)*p < 0x20 && *p != '\t')
            h->bad = true;
    return MHD_YES;
}

/* --- offloaded work ------------------------------------------------------- */

struct rk_offload {
    uv_work_t w;
    struct rk_http_req *r; /* NULL once the request is gone */
    void (*work)(void *arg);
    void *arg;
    /* the request's user data, kept here when the request ends first */
    void *orphan;
    void (*orphan_free)(void *);
};

static void offload_run(uv_work_t *w)
{
    struct rk_offload *o = w->data;
    o->work(o->arg);
}

static void offload_done(uv_work_t *w, int status)
{
    struct rk_offload *o = w->data;
    (void)status;
    struct rk_http_req *r = o->r;
    if (r) {
        struct rk_srv *srv = r->srv;
        r->offload = NULL;
        r->redispatch = true;
        srv->n_jobs_inflight--;
        rk__http_resume(r);
        rk__loop_kick(srv);
    } else {
        if (o->orphan_free)
            o->orphan_free(o->orphan);
    }
    free(o);
}

bool rk_http_offload(struct rk_http_req *r, void (*work)(void *arg), void *arg)
{
    struct rk_offload *o = calloc(1, sizeof *o);
    if (!o) {
        rk_http_error(r, 503, "enomem", NULL, "out of memory");
        return false;
    }
    o->r = r;
    o->work = work;
    o->arg = arg;
    o->w.data = o;
    if (uv_queue_work((uv_loop_t *)r->srv->loop, &o->w, offload_run, offload_done) != 0) {
        free(o);
        rk_http_error(r, 503, "unavailable", NULL, "cannot queue the work");
        return false;
    }
    r->offload = o;
    r->srv->n_jobs_inflight++;
    suspend(r);
    return true;
}

static void req_free(struct rk_http_req *r)
{
    struct rk_srv *srv = r->srv;
    if (r->offload) { /* still running: its completion frees the user data */
        r->offload->r = NULL;
        r->offload->orphan = r->user;
        r->offload->orphan_free = r->user_free;
        r->user = NULL;
        r->user_free = NULL;
        srv->n_jobs_inflight--;
    }
    if (r->watch) {
        watch_stop(r);
        r->watch->r = NULL;
        uv_close((uv_handle_t *)&r->watch->poll, watch_closed);
    }
    if (r->job) {
        pthread_mutex_lock(&r->job->mu); // `done` is written by the engine under mu
        bool done = r->job->done;
        pthread_mutex_unlock(&r->job->mu);
        if (!done)
            atomic_store(&r->job->cancel, true); // client gone: stop within one step
        r->job->req = NULL;
        r->job->conn = NULL;
        rk_job_release(r->job);
        srv->n_jobs_inflight--;
    }
    if (r->cc) // the connection is idle from now: youngest in the eviction order
        rk__loop_conn_idle(srv, r->cc);
    if (r->resp)
        MHD_destroy_response(r->resp);
    if (r->user_free)
        r->user_free(r->user);
    if (r->all_prev)
        r->all_prev->all_next = r->all_next;
    else
        srv->reqs = r->all_next;
    if (r->all_next)
        r->all_next->all_prev = r->all_prev;
    rk_buf_free(&r->body);
    free(r->path);
    free(r);
}

static struct rk_http_req *req_new(struct rk_srv *srv, struct MHD_Connection *conn);

void rk_http_conn_headers(const struct rk_srv *srv, struct MHD_Response *resp)
{
    if (srv->draining) {
        MHD_add_response_header(resp, "Connection", "close");
        return;
    }
    /* Tell keep-alive clients when an idle connection will be closed, so
     * they stop reusing it before then instead of racing the close (a
     * request sent on a socket the server is closing is lost). */
    char ka[32];
    snprintf(ka, sizeof ka, "timeout=%d", srv->cfg.conn_timeout_s);
    MHD_add_response_header(resp, "Keep-Alive", ka);
}

static enum MHD_Result queue_prepared(struct rk_http_req *r)
{
    struct MHD_Response *resp = r->resp;
    r->resp = NULL;
    if (!resp)
        return MHD_NO;
    if (r->close_after)
        MHD_add_response_header(resp, "Connection", "close");
    else
        rk_http_conn_headers(r->srv, resp);
    enum MHD_Result ok = MHD_queue_response(r->conn, (unsigned)r->status, resp);
    MHD_destroy_response(resp);
    return ok;
}

/* Transfer-Encoding of a request (RFC 9112 6.1 and 6.3). Only "chunked"
 * alone is understood. A list whose last coding is not chunked leaves the
 * body length unknown: 400 (a MUST). A list that ends with chunked after
 * other codings ("gzip, chunked"): 501, the answer for a coding the server
 * does not implement. MHD 0.9.75 would wait for such a body until the
 * connection closed. Either way the body is not read and the connection is
 * closed after the answer. Returns true when the header is acceptable. */
static bool transfer_coding_ok(struct rk_http_req *r, const char *te)
{
    char last[32] = "", other[32] = "";
    int n = 0, n_chunked = 0;
    for (const char *p = te;;) {
        p += strspn(p, " \t");
        size_t len = strcspn(p, ",;");
        while (len && (p[len - 1] == ' ' || p[len - 1] == '\t'))
            len--;
        char name[32];
        snprintf(name, sizeof name, "%.*s", (int)(len < 31 ? len : 31), p);
        if (!len) {
            snprintf(last, sizeof last, "(empty)");
        } else {
            snprintf(last, sizeof last, "%s", name);
            if (!strcasecmp(name, "chunked"))
                n_chunked++;
            else if (!other[0])
                snprintf(other, sizeof other, "%s", name);
        }
        n++;
        p = strchr(p, ',');
        if (!p)
            break;
        p++;
    }
    r->close_after = true;
    if (strcasecmp(last, "chunked") || n_chunked > 1) {
        rk_http_error(r, 400, "bad_request", NULL,
                      "Transfer-Encoding '%s' does not end with a single chunked; send the body "
                      "with Content-Length or Transfer-Encoding: chunked", te);
        return false;
    }
    if (n > 1) {
        rk_http_error(r, 501, "not_implemented", NULL,
                      "transfer coding '%s' is not supported; send the body with Content-Length "
                      "or Transfer-Encoding: chunked", other);
        return false;
    }
    r->close_after = false;
    return true;
}

/* Checks made once the headers are in; prepares an error response or
 * decides the body limit. */
static void first_call(struct rk_http_req *r, const char *version)
{
    struct rk_srv *srv = r->srv;
    if (strcmp(version, "HTTP/1.1") && strcmp(version, "HTTP/1.0")) {
        rk_http_error(r, 400, "bad_request", NULL, "unsupported HTTP version");
        return;
    }
    // The version follows the target after one space in MHD's buffer; a
    // shorter target string means a NUL byte inside it.
    if (r->raw_uri && version > r->raw_uri && version - r->raw_uri < 65536 &&
        (size_t)(version - r->raw_uri - 1) != r->raw_uri_len) {
        rk_http_error(r, 400, "bad_request", NULL, "NUL byte in the request target");
        return;
    }
    struct hdr_scan hs = {0};
    MHD_get_connection_values(r->conn, MHD_HEADER_KIND, scan_header, &hs);
    if (hs.n_cl > 1 || (hs.n_cl && hs.n_te) || hs.n_te > 1 || hs.bad) {
        rk_http_error(r, 400, "bad_request", NULL, "ambiguous request framing (repeated "
                      "Content-Length, or Content-Length with Transfer-Encoding)");
        return;
    }
    const char *te = rk_http_header(r, "Transfer-Encoding");
    if (te && !transfer_coding_ok(r, te))
        return;
    for (const char *p = r->path; *p; p++)
        if ((unsigned char)*p < 0x20 || *p == 0x7f) {
            rk_http_error(r, 400, "bad_request", NULL, "control character in the path");
            return;
        }
    if (srv->draining) {
        rk_http_error(r, 503, "shutting_down", NULL, "server is shutting down");
        return;
    }
    int status;
    char allow[64];
    r->route = rk_routes_match(srv, r, &status, allow, sizeof allow);
    if (!r->route) {
        if (status == 405) {
            rk_http_error(r, 405, "method_not_allowed", NULL, "method %s is not allowed on %s",
                          r->method, r->path);
            if (r->resp)
                MHD_add_response_header(r->resp, "Allow", allow);
        } else {
            rk_http_error(r, 404, "not_found", NULL, "no route for %s %s", r->method, r->path);
        }
        return;
    }
    // Authentication: every route unless explicitly public.
    if (srv->auth) {
        bool pub = ((r->route->flags & RK_ROUTE_PUBLIC) && srv->cfg.health_public) ||
                   (r->route->flags & RK_ROUTE_STATIC);
        const char *h = rk_http_header(r, "Authorization");
        const char *key = NULL;
        if (h && !strncasecmp(h, "Bearer ", 7))
            key = h + 7;
        else
            key = rk_http_header(r, "X-Api-Key");
        if (!key || !rk_auth_check(srv->auth, key, strlen(key), r->tenant, sizeof r->tenant)) {
            if (!pub) {
                rk_http_error(r, 401, "invalid_api_key", NULL,
                              "missing or invalid API key (use Authorization: Bearer KEY)");
                return;
            }
            snprintf(r->tenant, sizeof r->tenant, "public");
        }
    } else {
        snprintf(r->tenant, sizeof r->tenant, "default");
    }
    r->body_max = (r->route->flags & RK_ROUTE_BIG_BODY) ? srv->cfg.state_bytes_max
                                                        : srv->cfg.body_bytes_max;
    const char *cl = rk_http_header(r, "Content-Length");
    if (cl) {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(cl, &end, 10);
        if (errno || *end || end == cl || *cl == '-') {
            rk_http_error(r, 400, "bad_request", NULL, "invalid Content-Length");
            return;
        }
        if (v > r->body_max) {
            if (v <= RK_HTTP_DRAIN_MAX) {
                // Read and drop the body, then answer 413: a client that is
                // still sending would otherwise see the connection reset
                // before it reads the answer.
                r->body_too_large = true;
                r->body_drain_max = (size_t)v;
                return;
            }
            rk_http_error(r, 413, "request_too_large", NULL,
                          "request body of %llu bytes exceeds the limit of %zu bytes", v,
                          r->body_max);
            return;
        }
    }
}

static struct rk_http_req *req_new(struct rk_srv *srv, struct MHD_Connection *conn)
{
    struct rk_http_req *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->srv = srv;
    r->conn = conn;
    r->t_start_us = rk_now_us();
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(conn, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    if (ci && ci->socket_context) {
        r->cc = ci->socket_context;
        r->cc->req = r;
    }
    r->all_next = srv->reqs;
    if (srv->reqs)
        srv->reqs->all_prev = r;
    srv->reqs = r;
    return r;
}

/* Called by MHD with the raw request target, before any other callback of
 * the request; its result becomes *req_cls. The raw pointer and length let
 * first_call() notice a NUL byte inside the target (MHD would silently cut
 * the path there). */
void *rk__http_on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
    struct rk_http_req *r = req_new(cls, conn);
    if (r) {
        r->raw_uri = uri;
        r->raw_uri_len = strlen(uri);
    }
    return r;
}

enum MHD_Result rk__http_on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                   const char *method, const char *version,
                                   const char *upload_data, size_t *upload_data_size,
                                   void **req_cls)
{
    struct rk_srv *srv = cls;
    struct rk_http_req *r = *req_cls;
    if (!r) {
        if (!(r = req_new(srv, conn)))
            return MHD_NO;
        *req_cls = r;
    }
    if (!r->started) {
        r->started = true;
        snprintf(r->method, sizeof r->method, "%s", method);
        r->path = strdup(url ? url : "/");
        if (!r->path)
            return MHD_NO;
        first_call(r, version);
        if (r->resp)
            return queue_prepared(r);
        return MHD_YES;
    }
    if (*upload_data_size) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (r->body_too_large || r->body.len + n > r->body_max) {
            // A chunked upload past the cap: discard a little (so the 413 can
            // be sent), then drop the connection.
            r->body_too_large = true;
            r->body_discarded += n;
            size_t lim = r->body_drain_max ? r->body_drain_max : ((size_t)1 << 20);
            return r->body_discarded > lim ? MHD_NO : MHD_YES;
        }
        if (!rk_buf_reserve(&r->body, n))
            return MHD_NO;
        rk_buf_put(&r->body, upload_data, n);
        return MHD_YES;
    }
    (void)upload_data;
    if (r->resp)
        return queue_prepared(r);
    if (!r->dispatched) {
        r->dispatched = true;
        if (r->body_too_large) {
            rk_http_error(r, 413, "request_too_large", NULL,
                          "request body exceeds the limit of %zu bytes", r->body_max);
            return queue_prepared(r);
        }
        r->route->fn(r);
    } else if (r->redispatch) {
        r->redispatch = false;
        r->route->fn(r);
    } else if (r->offload) {
        suspend(r); // woken early: wait on
        return MHD_YES;
    } else if (r->job && r->done_fn) {
        bool done;
        pthread_mutex_lock(&r->job->mu);
        done = r->job->done;
        pthread_mutex_unlock(&r->job->mu);
        if (done) {
            void (*fn)(struct rk_http_req *, struct rk_job *) = r->done_fn;
            r->done_fn = NULL;
            fn(r, r->job);
        } else if (atomic_load(&r->job->cancel)) {
            return MHD_NO; // the client left; close
        } else {
            suspend(r); // woken early: wait on
            return MHD_YES;
        }
    }
    if (r->resp)
        return queue_prepared(r);
    if (r->stream_queued || r->suspended)
        return MHD_YES;
    // A handler that prepared nothing is a bug; answer rather than hang.
    rk_http_error(r, 500, "einternal", NULL, "handler produced no response");
    return queue_prepared(r);
}

void rk__http_on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                           enum MHD_RequestTerminationCode toe)
{
    struct rk_srv *srv = cls;
    struct rk_http_req *r = *req_cls;
    (void)conn;
    if (!r)
        return;
    *req_cls = NULL;
    int status = r->status ? r->status : 499;
    if (r->stream_queued && toe != MHD_REQUEST_TERMINATED_COMPLETED_OK)
        status = 499; // client went away mid-stream
    rk_metrics_count_request(&srv->metrics, r->route ? (r->route->name ? r->route->name
                                                                         : r->route->pattern)
                                                     : "other",
                             status);
    req_free(r);
}

/* Percent-decoding that refuses to produce NUL or control bytes: such
 * escapes stay literal, so they can never match a route or an id. */
size_t rk__http_unescape(void *cls, struct MHD_Connection *c, char *s)
{
    (void)cls;
    (void)c;
    char *w = s;
    for (char *p = s; *p; p++) {
        if (p[0] == '%' && p[1] && p[2]) {
            char hx[3] = {p[1], p[2], 0}, *end;
            long v = strtol(hx, &end, 16);
            if (!*end && v >= 0x20 && v != 0x7f) {
                *w++ = (char)v;
                p += 2;
                continue;
            }
        }
        *w++ = *p;
    }
    *w = 0;
    return (size_t)(w - s);
}

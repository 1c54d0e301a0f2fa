/*
 * http.c - the loop thread: libuv drives libmicrohttpd in external-epoll
 * mode, plus the per-request glue (body limits, hostile-request checks,
 * auth, routing, responses, SSE streaming, suspend/resume, drain).
 *
 * DESIGN. MHD runs with MHD_USE_EPOLL and no thread of its own: its epoll fd
 * is watched by a uv_poll and its timeout by a uv_timer, and every MHD call
 * happens on this thread. A request that waits for the engine is suspended
 * (MHD_suspend_connection) and resumed from the uv_async callback that
 * drains the engine's wake list; after any resume we call MHD_run so MHD
 * picks the connection up again. While suspended MHD does not notice a
 * client going away, so a uv_poll on the connection's socket watches for
 * EOF and cancels the job (the engine stops it within one step).
 *
 * ACCEPT PATH. The server owns its listening socket and accepts itself (a
 * uv_poll on it), handing each connection to MHD with MHD_add_connection;
 * MHD runs with MHD_USE_NO_LISTEN_SOCKET. Two reasons, both measured with
 * bench/flood.py (docs/ARCHITECTURE.md, "Connection limit"): MHD 0.9.75 in
 * epoll mode takes its listening socket out of the set at the connection
 * limit, so the kernel's backlog fills; and its edge-triggered reads treat a
 * short read as "drained", so a client whose data and FIN arrive together
 * (every client that closed while waiting in that backlog) stays in
 * CLOSE-WAIT until the idle timeout. A burst of half-header clients over
 * the limit that then close made the server unreachable for minutes. Now:
 * at --conn-limit a new connection evicts the connection idle longest (no
 * request in progress: between keep-alive requests, or still sending its
 * headers), as nginx reuses idle keep-alive connections; with nothing to
 * evict it gets a canned 503 and is closed, so the backlog never fills.
 * Once a second the reaper closes idle connections whose peer has gone
 * (MSG_PEEK reads EOF), which MHD would otherwise keep until the timeout.
 * Eviction and reaping shutdown() the socket, which gives MHD a fresh epoll
 * event; MHD then reads EOF and closes the connection itself.
 *
 * Streaming responses read from job->out under job->mu; when it is empty
 * the content reader suspends the connection and returns 0, and the next
 * wake resumes it.
 *
 * Shutdown (SIGTERM/SIGINT): stop accepting (MHD_quiesce_daemon), answer new
 * requests on open connections with 503, wait for in-flight generations up
 * to --drain-timeout, then cancel the rest; finally join the engine, resume
 * every connection so it is answered or closed, stop MHD, close handles.
 */
#include "srv.h"

/* Oversized bodies up to this size (by Content-Length) are read and dropped
 * before the 413 is sent; larger ones get the 413 at once and the connection
 * is closed. */
#define RK_HTTP_DRAIN_MAX ((size_t)16 << 20)
/* Connections accepted per wake-up of the listening socket, so a flood does
 * not hold the loop thread for long. */
#define RK_ACCEPT_BATCH 64
/* How often idle connections are checked for a peer that went away. */
#define RK_REAP_INTERVAL_MS 1000

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

/* One accepted connection (MHD's socket context for it). Loop thread only. */
struct rk_conn {
    int fd;
    struct rk_http_req *req; /* the request being read or served, or NULL */
    bool shed;               /* shutdown() sent; MHD closes it on its next run */
    struct rk_conn *prev, *next; /* loopctx.conns: longest idle first */
};

struct loopctx {
    uv_loop_t loop;
    uv_poll_t mhd_poll;
    uv_poll_t listen_poll;
    int listen_fd;         /* -1 once closed (draining) */
    uv_timer_t accept_timer; /* resumes accepting after EMFILE */
    uv_timer_t reap_timer;
    struct rk_conn *conns_head, *conns_tail;
    uv_timer_t mhd_timer;
    uv_async_t wake;
    uv_signal_t sigterm, sigint;
    uv_timer_t drain_timer;
    int64_t drain_deadline_us;
    bool drain_cancelled;
    bool stopping;
    struct rk_srv *srv;
};

struct rk_disconnect_watch {
    uv_poll_t poll;
    struct rk_http_req *r; /* NULL once the request is gone */
    int fd;
    bool active;
};

static void mhd_kick(struct loopctx *lc);
static void conn_unlink(struct loopctx *lc, struct rk_conn *c);
static void conn_append(struct loopctx *lc, struct rk_conn *c);

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
        rk_http_error(r, 400, "invalid_json", NULL, "request body must be a JSON object");
        return NULL;
    }
    json_t *j = json_loadb(r->body.p, r->body.len, JSON_REJECT_DUPLICATES, &je);
    if (!j) {
        rk_http_error(r, 400, "invalid_json", NULL, "invalid JSON: %s (line %d, column %d)",
                      je.text, je.line, je.column);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        rk_http_error(r, 400, "invalid_json", NULL, "request body must be a JSON object");
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

static void resume(struct rk_http_req *r)
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
    resume(r);
    mhd_kick(r->srv->loop_priv);
}

static void watch_start(struct rk_http_req *r)
{
    struct loopctx *lc = r->srv->loop_priv;
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
        if (uv_poll_init_socket(&lc->loop, &w->poll, w->fd) != 0) {
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
        resume(r);
        mhd_kick(srv->loop_priv);
    } else {
        if (o->orphan_free)
            o->orphan_free(o->orphan);
    }
    free(o);
}

bool rk_http_offload(struct rk_http_req *r, void (*work)(void *arg), void *arg)
{
    struct loopctx *lc = r->srv->loop_priv;
    struct rk_offload *o = calloc(1, sizeof *o);
    if (!o) {
        rk_http_error(r, 503, "enomem", NULL, "out of memory");
        return false;
    }
    o->r = r;
    o->work = work;
    o->arg = arg;
    o->w.data = o;
    if (uv_queue_work(&lc->loop, &o->w, offload_run, offload_done) != 0) {
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
    if (r->cc) { // the connection is idle from now: youngest in the eviction order
        struct loopctx *lc = srv->loop_priv;
        r->cc->req = NULL;
        conn_unlink(lc, r->cc);
        conn_append(lc, r->cc);
    }
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
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *conn)
{
    struct rk_http_req *r = req_new(cls, conn);
    if (r) {
        r->raw_uri = uri;
        r->raw_uri_len = strlen(uri);
    }
    return r;
}

static enum MHD_Result on_access(void *cls, struct MHD_Connection *conn, const char *url,
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

static void on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
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

/* --- accept path: connections, eviction, reaping ------------------------ */

static void conn_unlink(struct loopctx *lc, struct rk_conn *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        lc->conns_head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        lc->conns_tail = c->prev;
    c->prev = c->next = NULL;
}

static void conn_append(struct loopctx *lc, struct rk_conn *c)
{
    c->prev = lc->conns_tail;
    c->next = NULL;
    if (lc->conns_tail)
        lc->conns_tail->next = c;
    else
        lc->conns_head = c;
    lc->conns_tail = c;
}

/* Busy: its request's headers are in (the handler runs, waits on a job,
 * reads the body or sends the answer). Such a connection is never evicted
 * or reaped here; MHD, the disconnect watch and the deadlines handle it. */
static bool conn_busy(const struct rk_conn *c) { return c->req && c->req->started; }

/* Make MHD close an idle connection: shutdown() wakes MHD's epoll entry for
 * the socket, MHD reads EOF and closes it on its next run. */
static void conn_shed(struct rk_conn *c)
{
    c->shed = true;
    shutdown(c->fd, SHUT_RDWR);
}

static void on_connection(void *cls, struct MHD_Connection *conn, void **socket_ctx,
                          enum MHD_ConnectionNotificationCode toe)
{
    struct rk_srv *srv = cls;
    struct loopctx *lc = srv->loop_priv;
    if (toe == MHD_CONNECTION_NOTIFY_STARTED) {
        srv->n_conns++;
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
        struct rk_conn *c = ci ? calloc(1, sizeof *c) : NULL;
        if (c) { // untracked on failure: then only MHD's timeout closes it
            c->fd = ci->connect_fd;
            conn_append(lc, c);
        }
        *socket_ctx = c;
        return;
    }
    srv->n_conns--;
    struct rk_conn *c = *socket_ctx;
    if (c) {
        if (c->req)
            c->req->cc = NULL;
        conn_unlink(lc, c);
        free(c);
        *socket_ctx = NULL;
    }
}

/* True when the socket has bytes MHD has not read yet. */
static bool conn_has_input(int fd)
{
    char b;
    return recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) > 0;
}

/* At the limit: evict the connection idle longest, unless it has unread
 * input (a request MHD is about to read). If every idle one has, let MHD
 * read first (connections accepted in this batch have not been read yet)
 * and look once more. Returns true when there is room. */
static bool make_room(struct loopctx *lc)
{
    struct rk_srv *srv = lc->srv;
    for (int pass = 0; pass < 2 && srv->n_conns >= srv->cfg.conn_limit; pass++) {
        struct rk_conn *c = lc->conns_head;
        while (c && (c->shed || conn_busy(c) || conn_has_input(c->fd)))
            c = c->next;
        if (c) {
            conn_shed(c);
            srv->n_conns_evicted++;
        }
        MHD_run(srv->mhd); // closes the evicted one now: the shutdown queued an epoll event
        if (c)
            break;
    }
    return srv->n_conns < srv->cfg.conn_limit;
}

/* Answer a connection we cannot take with 503 and close it. The socket is
 * fresh, so the short answer fits its send buffer. */
static void refuse(int fd, int limit)
{
    char body[256], msg[512], junk[4096];
    int bn = snprintf(body, sizeof body,
                      "{\"error\":{\"message\":\"too many open connections (limit %d); try "
                      "again\",\"type\":\"server_error\",\"param\":null,\"code\":"
                      "\"connection_limit\"}}",
                      limit);
    int n = snprintf(msg, sizeof msg,
                     "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                     "Content-Length: %d\r\nRetry-After: 1\r\nConnection: close\r\n\r\n%s",
                     bn, body);
    // Read what the client already sent: closing with unread input would
    // reset the connection and could discard the answer.
    while (recv(fd, junk, sizeof junk, MSG_DONTWAIT) > 0)
        ;
    if (send(fd, msg, (size_t)n, MSG_DONTWAIT | MSG_NOSIGNAL) == n)
        shutdown(fd, SHUT_WR);
    close(fd);
}

static void on_listen(uv_poll_t *h, int status, int events);

static void on_accept_timer(uv_timer_t *t)
{
    struct loopctx *lc = t->data;
    if (lc->listen_fd >= 0)
        uv_poll_start(&lc->listen_poll, UV_READABLE, on_listen);
}

static void on_listen(uv_poll_t *h, int status, int events)
{
    struct loopctx *lc = h->data;
    struct rk_srv *srv = lc->srv;
    (void)status;
    (void)events;
    for (int i = 0; i < RK_ACCEPT_BATCH && lc->listen_fd >= 0; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(lc->listen_fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                // Out of descriptors: the connection stays in the backlog;
                // pause instead of spinning on a readable socket.
                fprintf(stderr, "rwkvd: accept: %s; pausing 100 ms\n", strerror(errno));
                uv_poll_stop(&lc->listen_poll);
                uv_timer_start(&lc->accept_timer, on_accept_timer, 100, 0);
            }
            break;
        }
        if (srv->n_conns >= srv->cfg.conn_limit && !make_room(lc)) {
            srv->n_conns_refused++;
            refuse(fd, srv->cfg.conn_limit);
            continue;
        }
        if (ss.ss_family == AF_INET || ss.ss_family == AF_INET6) {
            int one = 1; // small answers and SSE events go out at once
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        }
        // On failure MHD has closed the socket already.
        if (MHD_add_connection(srv->mhd, fd, (struct sockaddr *)&ss, sl) != MHD_YES)
            srv->n_conns_refused++;
    }
    mhd_kick(lc);
}

/* Once a second: close idle connections whose client has gone. */
static void on_reap_timer(uv_timer_t *t)
{
    struct loopctx *lc = t->data;
    struct rk_srv *srv = lc->srv;
    bool any = false;
    char b;
    for (struct rk_conn *c = lc->conns_head; c; c = c->next) {
        if (c->shed || conn_busy(c) || recv(c->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) != 0)
            continue;
        conn_shed(c);
        srv->n_conns_reaped++;
        any = true;
    }
    if (any)
        mhd_kick(lc);
}

static void stop_listening(struct loopctx *lc)
{
    if (lc->listen_fd < 0)
        return;
    uv_poll_stop(&lc->listen_poll);
    uv_timer_stop(&lc->accept_timer);
    close(lc->listen_fd);
    lc->listen_fd = -1;
}

/* Bind and listen; returns the socket or -1 with errno set. */
static int listen_on(const struct sockaddr_storage *ss, socklen_t sl)
{
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ss->ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, (const struct sockaddr *)ss, sl) != 0 || listen(fd, RK_LISTEN_BACKLOG) != 0) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

/* Percent-decoding that refuses to produce NUL or control bytes: such
 * escapes stay literal, so they can never match a route or an id. */
static size_t unescape(void *cls, struct MHD_Connection *c, char *s)
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

/* --- loop ---------------------------------------------------------------- */

static void on_mhd_timer(uv_timer_t *t) { mhd_kick(t->data); }

static void mhd_kick(struct loopctx *lc)
{
    struct rk_srv *srv = lc->srv;
    if (!srv->mhd)
        return;
    MHD_run(srv->mhd);
    MHD_UNSIGNED_LONG_LONG to;
    if (MHD_get_timeout(srv->mhd, &to) == MHD_YES)
        uv_timer_start(&lc->mhd_timer, on_mhd_timer, to > 60000 ? 60000 : to, 0);
    else
        uv_timer_start(&lc->mhd_timer, on_mhd_timer, 1000, 0);
}

static void on_mhd_poll(uv_poll_t *h, int status, int events)
{
    (void)status;
    (void)events;
    mhd_kick(h->data);
}

static void wake_one(struct rk_job *j, void *u)
{
    (void)u;
    if (j->req)
        resume(j->req);
    rk_job_release(j);
}

static void on_wake(uv_async_t *a)
{
    struct loopctx *lc = a->data;
    rk_engine_drain_wakes(lc->srv->engine, wake_one, NULL);
    mhd_kick(lc);
}

static void engine_wake(void *user) { uv_async_send(user); }

static void on_drain_timer(uv_timer_t *t)
{
    struct loopctx *lc = t->data;
    struct rk_srv *srv = lc->srv;
    int64_t now = rk_now_us();
    if (srv->n_jobs_inflight == 0 || now > lc->drain_deadline_us + 5000000) {
        uv_stop(&lc->loop);
        return;
    }
    if (now > lc->drain_deadline_us && !lc->drain_cancelled) {
        fprintf(stderr, "rwkvd: drain deadline passed; cancelling %d request(s)\n",
                srv->n_jobs_inflight);
        lc->drain_cancelled = true;
        rk_engine_cancel_all(srv->engine);
    }
}

static void on_signal(uv_signal_t *s, int signum)
{
    struct loopctx *lc = s->data;
    struct rk_srv *srv = lc->srv;
    if (srv->draining) {
        // A second signal: stop waiting.
        lc->drain_deadline_us = 0;
        return;
    }
    fprintf(stderr, "rwkvd: %s received; draining %d in-flight request(s) (up to %d s)\n",
            signum == SIGTERM ? "SIGTERM" : "SIGINT", srv->n_jobs_inflight,
            srv->cfg.drain_timeout_s);
    srv->draining = true;
    stop_listening(lc);
    lc->drain_deadline_us = rk_now_us() + (int64_t)srv->cfg.drain_timeout_s * 1000000;
    uv_timer_start(&lc->drain_timer, on_drain_timer, 0, 20);
}

static int parse_addr(const char *host, int port, struct sockaddr_storage *ss, socklen_t *len,
                      bool *loopback)
{
    memset(ss, 0, sizeof *ss);
    if (!strcmp(host, "localhost"))
        host = "127.0.0.1";
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        *len = sizeof *a4;
        *loopback = (ntohl(a4->sin_addr.s_addr) >> 24) == 127;
        return 0;
    }
    if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        *len = sizeof *a6;
        *loopback = IN6_IS_ADDR_LOOPBACK(&a6->sin6_addr);
        return 0;
    }
    return -1;
}

int rk_srv_run(struct rk_srv *srv)
{
    struct loopctx *lc = calloc(1, sizeof *lc);
    if (!lc)
        return 1;
    lc->srv = srv;
    srv->loop_priv = lc;
    srv->loop = (struct uv_loop_s *)&lc->loop;
    int rc = 1;

    if (srv->listen_fd >= 0) {
        // serve.c bound the port before loading anything; the socket is ours now
        lc->listen_fd = srv->listen_fd;
        srv->listen_fd = -1;
    } else {
        struct sockaddr_storage ss;
        socklen_t sl;
        bool loopback;
        if (parse_addr(srv->cfg.host, srv->cfg.port, &ss, &sl, &loopback) != 0) {
            fprintf(stderr, "rwkvd serve: --host '%s' is not an IPv4/IPv6 address\n",
                    srv->cfg.host);
            free(lc);
            return 1;
        }
        if (!loopback && !srv->auth) {
            fprintf(stderr, "rwkvd serve: refusing to bind %s without --api-keys (only "
                    "loopback addresses may be served without keys)\n", srv->cfg.host);
            free(lc);
            return 1;
        }
        lc->listen_fd = listen_on(&ss, sl);
    }
    if (lc->listen_fd < 0) {
        fprintf(stderr, "rwkvd serve: cannot listen on %s:%d: %s\n", srv->cfg.host,
                srv->cfg.port, strerror(errno));
        free(lc);
        return 1;
    }
    struct sockaddr_storage bound;
    socklen_t bl = sizeof bound;
    srv->port = srv->cfg.port;
    if (getsockname(lc->listen_fd, (struct sockaddr *)&bound, &bl) == 0)
        srv->port = ntohs(bound.ss_family == AF_INET6
                              ? ((struct sockaddr_in6 *)&bound)->sin6_port
                              : ((struct sockaddr_in *)&bound)->sin_port);
    // No listening socket of MHD's own: the accept path above feeds it.
    unsigned flags = MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG |
                     MHD_USE_NO_LISTEN_SOCKET;
    srv->mhd = MHD_start_daemon(
        flags, 0, NULL, NULL, on_access, srv, MHD_OPTION_NOTIFY_COMPLETED, on_completed, srv,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, srv, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)srv->cfg.conn_timeout_s, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)srv->cfg.conn_limit, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)64 * 1024,
        MHD_OPTION_URI_LOG_CALLBACK, on_uri, srv, MHD_OPTION_UNESCAPE_CALLBACK, unescape, NULL,
        MHD_OPTION_END);
    const union MHD_DaemonInfo *di =
        srv->mhd ? MHD_get_daemon_info(srv->mhd, MHD_DAEMON_INFO_EPOLL_FD) : NULL;
    if (!di) {
        fprintf(stderr, "rwkvd serve: cannot start libmicrohttpd (epoll mode)\n");
        if (srv->mhd)
            MHD_stop_daemon(srv->mhd);
        srv->mhd = NULL;
        close(lc->listen_fd);
        free(lc);
        return 1;
    }

    uv_loop_init(&lc->loop);
    uv_poll_init(&lc->loop, &lc->mhd_poll, di->epoll_fd);
    lc->mhd_poll.data = lc;
    uv_poll_start(&lc->mhd_poll, UV_READABLE, on_mhd_poll);
    uv_timer_init(&lc->loop, &lc->mhd_timer);
    lc->mhd_timer.data = lc;
    uv_timer_init(&lc->loop, &lc->drain_timer);
    lc->drain_timer.data = lc;
    uv_poll_init_socket(&lc->loop, &lc->listen_poll, lc->listen_fd);
    lc->listen_poll.data = lc;
    uv_poll_start(&lc->listen_poll, UV_READABLE, on_listen);
    uv_timer_init(&lc->loop, &lc->accept_timer);
    lc->accept_timer.data = lc;
    uv_timer_init(&lc->loop, &lc->reap_timer);
    lc->reap_timer.data = lc;
    uv_timer_start(&lc->reap_timer, on_reap_timer, RK_REAP_INTERVAL_MS, RK_REAP_INTERVAL_MS);
    uv_async_init(&lc->loop, &lc->wake, on_wake);
    lc->wake.data = lc;
    uv_signal_init(&lc->loop, &lc->sigterm);
    uv_signal_init(&lc->loop, &lc->sigint);
    lc->sigterm.data = lc->sigint.data = lc;
    uv_signal_start(&lc->sigterm, on_signal, SIGTERM);
    uv_signal_start(&lc->sigint, on_signal, SIGINT);

    struct rk_errbuf eb = {0};
    if (rk_engine_start(srv, engine_wake, &lc->wake, &srv->engine, &eb) != RK_OK) {
        fprintf(stderr, "rwkvd serve: %s\n", eb.msg);
        goto shutdown;
    }

    char hostbuf[64];
    if (bound.ss_family == AF_INET6)
        snprintf(hostbuf, sizeof hostbuf, "[%s]", srv->cfg.host);
    else
        snprintf(hostbuf, sizeof hostbuf, "%s", srv->cfg.host);
    printf("listening on http://%s:%d\n", hostbuf, srv->port);
    fflush(stdout);
    fprintf(stderr, "rwkvd: listening on http://%s:%d\n", hostbuf, srv->port);

    mhd_kick(lc);
    uv_run(&lc->loop, UV_RUN_DEFAULT);
    rc = 0;

shutdown:
    // Stop the engine (every job ends), answer or close every connection.
    if (srv->engine) {
        rk_engine_join(srv->engine);
        rk_engine_drain_wakes(srv->engine, wake_one, NULL);
    }
    for (struct rk_http_req *r = srv->reqs; r; r = r->all_next)
        resume(r);
    for (int i = 0; i < 20 && srv->mhd; i++) {
        MHD_run(srv->mhd);
        uv_run(&lc->loop, UV_RUN_NOWAIT);
        bool any = false;
        for (struct rk_http_req *r = srv->reqs; r; r = r->all_next)
            any = true;
        if (!any)
            break;
        usleep(10000);
    }
    for (struct rk_http_req *r = srv->reqs; r; r = r->all_next)
        resume(r);
    stop_listening(lc);
    MHD_stop_daemon(srv->mhd);
    srv->mhd = NULL;
    uv_close((uv_handle_t *)&lc->listen_poll, NULL);
    uv_close((uv_handle_t *)&lc->accept_timer, NULL);
    uv_close((uv_handle_t *)&lc->reap_timer, NULL);
    uv_close((uv_handle_t *)&lc->mhd_poll, NULL);
    uv_close((uv_handle_t *)&lc->mhd_timer, NULL);
    uv_close((uv_handle_t *)&lc->drain_timer, NULL);
    uv_close((uv_handle_t *)&lc->wake, NULL);
    uv_close((uv_handle_t *)&lc->sigterm, NULL);
    uv_close((uv_handle_t *)&lc->sigint, NULL);
    uv_run(&lc->loop, UV_RUN_DEFAULT);
    uv_loop_close(&lc->loop);
    rk_engine_stop(srv->engine);
    srv->engine = NULL;
    free(lc);
    srv->loop_priv = NULL;
    srv->loop = NULL;
    return rc;
}

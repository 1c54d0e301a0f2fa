/*
 * loop.c - the loop thread: libuv drives libmicrohttpd in external-epoll
 * mode; the accept path, engine wake-ups, signals and the drain. The
 * per-request HTTP glue is http.c (http_int.h is the seam).
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
 * Shutdown (SIGTERM/SIGINT): stop accepting (MHD_quiesce_daemon), answer new
 * requests on open connections with 503, wait for in-flight generations up
 * to --drain-timeout, then cancel the rest; finally join the engine, resume
 * every connection so it is answered or closed, stop MHD, close handles.
 */
#include "http_int.h"

/* Connections accepted per wake-up of the listening socket, so a flood does
 * not hold the loop thread for long. */
#define RK_ACCEPT_BATCH 64
/* How often idle connections are checked for a peer that went away. */
#define RK_REAP_INTERVAL_MS 1000

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

/* The loop's handles (srv->loop_priv). */
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

static void mhd_kick(struct loopctx *lc);

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
        rk__http_resume(j->req);
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
        flags, 0, NULL, NULL, rk__http_on_access, srv, MHD_OPTION_NOTIFY_COMPLETED, rk__http_on_completed, srv,
        MHD_OPTION_NOTIFY_CONNECTION, on_connection, srv, MHD_OPTION_CONNECTION_TIMEOUT,
        (unsigned)srv->cfg.conn_timeout_s, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)srv->cfg.conn_limit, MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)64 * 1024,
        MHD_OPTION_URI_LOG_CALLBACK, rk__http_on_uri, srv, MHD_OPTION_UNESCAPE_CALLBACK,
        rk__http_unescape, NULL,
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
        rk__http_resume(r);
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
        rk__http_resume(r);
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

/* --- the seam with http.c ------------------------------------------------- */

void rk__loop_kick(struct rk_srv *srv) { mhd_kick(srv->loop_priv); }

void rk__loop_conn_idle(struct rk_srv *srv, struct rk_conn *c)
{
    struct loopctx *lc = srv->loop_priv;
    c->req = NULL;
    conn_unlink(lc, c);
    conn_append(lc, c);
}

/*
 * http_int.h - the seam between the loop (loop.c: libuv handles, the accept
 * path, MHD driving, engine wake-ups, signals and the drain) and the HTTP
 * glue (http.c: request framing, body limits, routing, responses, SSE,
 * suspend/resume). Private to those two files; everything here runs on the
 * loop thread.
 */
#ifndef RK_HTTP_INT_H
#define RK_HTTP_INT_H

#include "srv.h"

/* One accepted connection (MHD's socket context for it). Created and freed
 * by loop.c; http.c links its current request to it. */
struct rk_conn {
    int fd;
    struct rk_http_req *req; /* the request being read or served, or NULL */
    bool shed;               /* shutdown() sent; MHD closes it on its next run */
    struct rk_conn *prev, *next; /* the loop's list: longest idle first */
};

/* --- loop.c, called by http.c ---------------------------------------------- */

/* Run MHD now and re-arm its timer (after a resume or anything else that
 * gives MHD work outside its own epoll events). */
void rk__loop_kick(struct rk_srv *srv);
/* The request on `c` ended: the connection is idle from now on, the
 * youngest in the eviction order. */
void rk__loop_conn_idle(struct rk_srv *srv, struct rk_conn *c);

/* --- http.c, called by loop.c ---------------------------------------------- */

/* MHD's callbacks (MHD_start_daemon options). */
enum MHD_Result rk__http_on_access(void *cls, struct MHD_Connection *conn, const char *url,
                                   const char *method, const char *version,
                                   const char *upload_data, size_t *upload_data_size,
                                   void **req_cls);
void rk__http_on_completed(void *cls, struct MHD_Connection *conn, void **req_cls,
                           enum MHD_RequestTerminationCode toe);
void *rk__http_on_uri(void *cls, const char *uri, struct MHD_Connection *conn);
size_t rk__http_unescape(void *cls, struct MHD_Connection *c, char *s);
/* Resume a suspended request (a job has news, work finished, shutdown). */
void rk__http_resume(struct rk_http_req *r);

#endif

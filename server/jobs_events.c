/*
 * jobs_events.c - the event log of tuning jobs and its loop side: events kept per job and
 * appended to <id>.events.jsonl, status events, and the uv handles that wake
 * SSE followers on the loop thread (see the DESIGN note in jobs.c).
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

/* --- events ------------------------------------------------------------------ */

/* Append an event to j's log (caller holds mu); takes `data`. */
void tj_ev_push(struct rk_tjob *j, enum rk_tjob_ev_type type, int64_t t_ms, char *data)
{
    if (!data)
        return;
    if (j->n_ev == j->cap_ev) {
        size_t nc = j->cap_ev ? j->cap_ev * 2 : 64;
        void *p = realloc(j->ev, nc * sizeof *j->ev);
        if (!p) {
            free(data);
            return;
        }
        j->ev = p;
        j->cap_ev = nc;
    }
    j->ev[j->n_ev++] = (struct rk_tjob_ev){type, t_ms, data};
}

/* Append one event line to the job's event file (no fsync: the log is
 * informative; the record and checkpoint carry what recovery needs). */
void tj_ev_persist(struct rk_tjobs *js, const char *id, enum rk_tjob_ev_type type,
                int64_t t_ms, const char *data)
{
    char path[1100];
    tj_job_path(js, id, ".events.jsonl", path, sizeof path);
    pthread_mutex_lock(&js->jmu);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_NOFOLLOW | O_CLOEXEC, 0644);
    if (fd >= 0) {
        char *line = NULL;
        int n = asprintf(&line, "{\"t\":%" PRId64 ",\"type\":\"%s\",\"data\":%s}\n", t_ms,
                         rk_tjob_ev_name(type), data);
        if (n > 0 && write(fd, line, (size_t)n) != n)
            rk_log(RK_LOG_WARN, "jobs: %s: cannot append an event", id);
        free(line);
        close(fd);
    }
    pthread_mutex_unlock(&js->jmu);
}

void tj_wake_loop(struct rk_tjobs *js)
{
    pthread_mutex_lock(&js->amu);
    if (js->async_live)
        uv_async_send(&js->async);
    pthread_mutex_unlock(&js->amu);
}

/* A status event: {"status":..,"message":..[,"step":..]} (caller holds mu);
 * returns a copy of the data for tj_ev_persist (caller frees). */
static char *ev_status(struct rk_tjob *j, const char *msg, int64_t t_ms)
{
    json_t *o = json_pack("{s:s,s:s}", "status", rk_tjob_status_name(j->v.status), "message",
                          msg ? msg : "");
    if (!o)
        return NULL;
    if (j->v.eval) {
        json_object_set_new(o, "done", json_integer((json_int_t)j->v.eval_done));
        json_object_set_new(o, "total", json_integer((json_int_t)j->v.eval_total));
        if (j->v.status == RK_TJOB_SUCCEEDED && j->v.eval_result)
            json_object_set_new(o, "result", json_loads(j->v.eval_result, 0, NULL));
    } else {
        if (j->v.step > 0 || j->v.status == RK_TJOB_RUNNING)
            json_object_set_new(o, "step", json_integer(j->v.step));
        json_object_set_new(o, "steps", json_integer(j->v.steps));
    }
    if (j->v.status == RK_TJOB_SUCCEEDED && !j->v.eval) {
        json_object_set_new(o, "state", json_string(j->v.output_state));
        json_object_set_new(o, "version", json_integer((json_int_t)j->v.result_version));
    }
    if (j->v.status == RK_TJOB_FAILED && j->v.err_code[0]) {
        json_object_set_new(o, "error_code", json_string(j->v.err_code));
        json_object_set_new(o, "error", json_string(j->v.err_msg));
    }
    char *s = json_dumps(o, JSON_COMPACT | JSON_REAL_PRECISION(9));
    json_decref(o);
    if (!s)
        return NULL;
    char *copy = strdup(s);
    tj_ev_push(j, RK_EV_STATUS, t_ms, s);
    return copy;
}

/* Record a status event: in memory (caller holds mu) and, after the caller
 * unlocks, on disk via the returned pending write. */

struct pending_ev tj_status_event(struct rk_tjob *j, const char *msg)
{
    int64_t t = tj_wall_ms();
    return (struct pending_ev){ev_status(j, msg, t), t};
}

void tj_pending_flush(struct rk_tjobs *js, const char *id, struct pending_ev *p)
{
    if (p->data)
        tj_ev_persist(js, id, RK_EV_STATUS, p->t_ms, p->data);
    free(p->data);
    p->data = NULL;
}

void rk_tjob_evs_free(struct rk_tjob_ev *ev, size_t n)
{
    for (size_t i = 0; ev && i < n; i++)
        free(ev[i].data);
    free(ev);
}

/* --- loop side ------------------------------------------------------------------ */

static void call_followers(struct rk_tjobs *js, bool keepalive)
{
    for (struct rk_tjobs_follower *f = js->followers, *next; f; f = next) {
        next = f->next; // fn may unfollow itself
        f->fn(f->user, keepalive);
    }
}

static void on_async(uv_async_t *a)
{
    struct rk_tjobs *js = a->data;
    call_followers(js, false);
    // Resumed connections are picked up by MHD's next run (its inter-thread
    // pipe also wakes the loop; running now saves a loop iteration).
    if (js->srv->mhd)
        MHD_run(js->srv->mhd);
}
static void on_keepalive(uv_timer_t *t) { call_followers(t->data, true); }

static void close_loop(struct rk_tjobs *js)
{
    if (!js->attached || js->loop_closed)
        return;
    pthread_mutex_lock(&js->amu);
    js->async_live = false;
    pthread_mutex_unlock(&js->amu);
    js->loop_closed = true;
    uv_timer_stop(&js->keepalive);
    uv_check_stop(&js->check);
    uv_close((uv_handle_t *)&js->async, NULL);
    uv_close((uv_handle_t *)&js->keepalive, NULL);
    uv_close((uv_handle_t *)&js->check, NULL);
    call_followers(js, false); // every follower ends its stream
}

static void on_check(uv_check_t *c)
{
    struct rk_tjobs *js = c->data;
    if (!js->srv->draining)
        return;
    // Draining: interrupt the running job (it stays resumable) and let go of
    // the loop before rk_srv_run closes it.
    pthread_mutex_lock(&js->mu);
    js->stopping = true;
    atomic_store(&js->stop_flag, true);
    atomic_store(&js->worker_halt, true);
    pthread_cond_broadcast(&js->cv);
    pthread_mutex_unlock(&js->mu);
    close_loop(js);
}

void rk_tjobs_attach_loop(struct rk_tjobs *js)
{
    uv_loop_t *loop = (uv_loop_t *)js->srv->loop;
    if (js->attached || !loop || js->srv->draining)
        return;
    uv_async_init(loop, &js->async, on_async);
    js->async.data = js;
    uv_unref((uv_handle_t *)&js->async);
    uv_timer_init(loop, &js->keepalive);
    js->keepalive.data = js;
    uv_timer_start(&js->keepalive, on_keepalive, 10000, 10000);
    uv_unref((uv_handle_t *)&js->keepalive);
    uv_check_init(loop, &js->check);
    js->check.data = js;
    uv_check_start(&js->check, on_check);
    uv_unref((uv_handle_t *)&js->check);
    pthread_mutex_lock(&js->amu);
    js->async_live = true;
    pthread_mutex_unlock(&js->amu);
    js->attached = true;
}

bool rk_tjobs_loop_closed(const struct rk_tjobs *js) { return js->loop_closed; }

struct rk_tjobs_follower *rk_tjobs_follow(struct rk_tjobs *js, void (*fn)(void *user, bool),
                                        void *user)
{
    struct rk_tjobs_follower *f = calloc(1, sizeof *f);
    if (!f)
        return NULL;
    f->fn = fn;
    f->user = user;
    f->next = js->followers;
    js->followers = f;
    return f;
}

void rk_tjobs_unfollow(struct rk_tjobs *js, struct rk_tjobs_follower *f)
{
    for (struct rk_tjobs_follower **pp = &js->followers; *pp; pp = &(*pp)->next)
        if (*pp == f) {
            *pp = f->next;
            free(f);
            return;
        }
}

/*
 * srv.h - private declarations shared by the files of `rwkvd serve`.
 *
 * Threads: the loop thread (libuv + libmicrohttpd, every handler in api_*.c,
 * routes, auth, metrics rendering), the engine thread (engine.c) and
 * libuv's thread pool, which runs the disk work of handlers
 * (rk_http_offload: state reads and writes, job submits, file uploads)
 * while their requests are suspended. They share only struct rk_job
 * (refcounted, fields documented below), the engine's queue (engine mutex),
 * the state store (its own mutex), the jobs table (its mutex) and the
 * metrics atomics; offloaded work touches only its own argument besides
 * those. Nothing outside server/ includes this header except the
 * HTTP tests.
 */
#ifndef RK_SRV_H
#define RK_SRV_H

#include "rk_adapters.h"
#include "rk_core.h"
#include "rk_fileio.h"
#include "tenant_window.h"

#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct rk_srv;
struct rk_http_req;

/* --- configuration (config.c) ------------------------------------------ */

/* The settings of one OpenAI-compatible client (teacher.h): best_of's judge
 * and the observer jobs' teacher, set by the same --judge-* / --teacher-*
 * options (config.c). */
struct rk_client_cfg {
    const char *url, *model, *key_file;
    const char *allowed_urls; /* comma-separated base URLs a request or job may pick */
    int connect_timeout_ms, timeout_ms, retries, max_inflight;
    size_t response_bytes_max;
};

struct rk_srv_config {
    const char *model, *vocab, *model_name, *host, *data_dir, *api_keys;
    int port;
    int threads;
    int compute_nice;            /* nice value of the engine's compute threads */
    size_t body_bytes_max;       /* JSON request bodies (413 beyond) */
    size_t state_bytes_max;      /* PUT /states/{id} bodies */
    int prompt_tokens_max;
    int max_tokens_max;          /* cap on max_tokens */
    int max_tokens_default;      /* when a request gives none */
    int n_max;                   /* choices per request */
    int logprobs_max;            /* top logprobs per token */
    int stops_max;               /* stop sequences per request */
    int seqs_max;                /* concurrent sequences in the engine */
    int queue_max;               /* waiting requests before 429 */
    size_t stream_buffer_max;    /* unsent SSE bytes per stream before its sequences pause */
    int conn_limit;              /* open connections */
    int conn_timeout_s;          /* idle connection timeout */
    int request_timeout_s;       /* per-request deadline */
    int drain_timeout_s;         /* SIGTERM drain deadline */
    int prefill_chunk;           /* prefill tokens per engine step */
    bool amx_prefill;            /* prompt passes on AMX tiles (bf16 inputs) */
    bool amx_decode;             /* decode passes on AMX tiles too */
    size_t cache_bytes;          /* adapter LRU bound */
    int health_stall_ms;         /* engine heartbeat age that fails /health */
    bool health_public;          /* /health without an API key */
    /* best_of and its judge (api_bestof.c, teacher.c) */
    int best_of_max;             /* candidates per request */
    struct rk_client_cfg judge;  /* --judge-* */
    int judge_calls_per_min;     /* per tenant */
    int judge_tokens_per_min;    /* per tenant, as the judge reports them */
    /* the teacher of observer tuning jobs (jobs_worker.c, teacher.c) */
    struct rk_client_cfg teacher; /* --teacher-* */
    /* test-time training on the generation routes (api_ttt.c) */
    int ttt_max_steps;           /* 0 = off */
    int ttt_max_k, ttt_max_tokens;
    int ttt_samples_per_min;     /* per tenant: steps x k */
};

/* Is `url` one of the comma-separated base URLs in `list` (trailing slashes
 * ignored)? NULL list: no. (api_bestof.c) */
bool rk_url_in_list(const char *list, const char *url);

/* Fill defaults, then environment (RWKVD_*), then argv. Returns 0 to run,
 * 1 after printing --help (exit 0), -1 on a bad option (message printed). */
int rk_srv_config_parse(struct rk_srv_config *c, int argc, char **argv);
void rk_srv_config_print(const struct rk_srv_config *c, FILE *f);

/* --- JSON and UTF-8 helpers (json_util.c); the byte buffer struct rk_buf is
 * core's (rk_fileio.h) ------------------------------------------------------ */

/* Copy s[0..n) to out as valid UTF-8 (invalid bytes become U+FFFD); out is
 * NUL-terminated; returns the bytes written (stops early if cap is short). */
size_t rk_utf8_sanitize(const uint8_t *s, size_t n, char *out, size_t cap);
/* Replace every path under the directory `root` in msg (NUL-terminated,
 * `cap` bytes) by "[server path]": a path token runs from root + "/" to the
 * next space, colon, quote or comma. Returns true when something was
 * replaced (the caller logs the original). The last guard against error
 * messages that would show a client where the server keeps its files. */
bool rk_scrub_paths(char *msg, size_t cap, const char *root);
/* The largest length <= n that does not end inside a multi-byte sequence:
 * where to cut s[0..n) so that no character is split. */
size_t rk_utf8_cut(const char *s, size_t n);

/* --- metrics (metrics.c) ------------------------------------------------ */

#define RK_HIST_BUCKETS 16
struct rk_hist {
    atomic_uint_fast64_t count, sum_us;
    atomic_uint_fast64_t le[RK_HIST_BUCKETS]; /* cumulative counts are computed on render */
};
void rk_hist_observe(struct rk_hist *h, double seconds);

struct rk_metrics {
    atomic_uint_fast64_t tokens_in, tokens_out, steps, seqs_started, seqs_canceled;
    atomic_uint_fast64_t copy_us_sum, copy_count; /* adapter swap (state copy) cost */
    struct rk_hist ttft, token_latency, step_time, request_time;
    /* requests by route and status: written and read on the loop thread only */
    struct rk_route_count {
        const char *route;
        int status;
        uint64_t n;
    } * by_route;
    size_t n_by_route, cap_by_route;
};
void rk_metrics_count_request(struct rk_metrics *m, const char *route, int status);
void rk_metrics_render(struct rk_srv *srv, struct rk_buf *out);
void rk_metrics_free(struct rk_metrics *m);

/* --- generation jobs and the engine (engine.c) -------------------------- */

enum rk_api { RK_API_NATIVE, RK_API_COMPLETION, RK_API_CHAT };

enum rk_finish { RK_FINISH_NONE, RK_FINISH_STOP, RK_FINISH_LENGTH, RK_FINISH_CANCEL,
                 RK_FINISH_TIMEOUT };
const char *rk_finish_name(enum rk_finish f);

/* One generated token's log-probabilities (only when requested). */
struct rk_tok_lp {
    uint32_t token;
    float lp;
};

/* Result of one choice (sequence). Written by the engine; read by the loop
 * only after job->done. */
struct rk_choice {
    struct rk_buf text;
    int n_tokens;
    enum rk_finish finish;
    /* logprobs: n_tokens entries of (1 + top) records: the chosen token then
     * the top alternatives; allocated at admission when top >= 0 */
    struct rk_tok_lp *lps;
    double lp_sum;  /* sum of the chosen tokens' log-probabilities (job->want_lp_sum) */
    int cand;       /* candidate index before best_of reordering */
    bool sent_role; /* chat streaming: the role chunk went out */
};

/*
 * A generation request: n sequences sharing a prompt and an initial state.
 * Ownership: reference-counted. The loop thread creates it (1 ref for the
 * HTTP request), the engine takes 1 at submit, a streaming response takes 1,
 * and the wake list takes 1 while queued. Fields above `mu` are immutable
 * after submit; fields below are guarded by `mu` except where noted.
 */
struct rk_job {
    atomic_int refs;
    struct rk_srv *srv;
    enum rk_api api;
    bool stream, include_usage, echo_state;
    char id[48];
    char model[160]; /* the model string echoed in responses */
    int64_t created_s;
    uint32_t *prompt; /* [n_prompt] */
    size_t n_prompt;
    struct rk_state_ref *state; /* NULL = the zero state */
    struct rk_sampler_params sp;
    struct rk_logit_bias *bias;
    char **stops;
    size_t n_stops;
    int max_tokens, n;
    int top_logprobs; /* -1 = no logprobs; else number of alternatives */
    bool seed_given;
    /* best_of: n is the number of candidates, n_out (0: n) the choices the
     * response shows (the best, first after api_bestof.c reorders them);
     * temps[n] (NULL: sp.temperature) a temperature per candidate; want_lp_sum
     * makes the engine add up each choice's chosen-token log-probabilities */
    int n_out;
    float *temps;
    bool want_lp_sum;
    void *ext;                  /* api_bestof.c's options, freed with the job */
    /* test-time training (api_ttt.c): set before submit, shown in usage */
    size_t ttt_tokens;          /* tokens it sampled, scored and trained on */
    int ttt_steps;              /* 0 = none */
    double ttt_score_first, ttt_score_last;
    void (*ext_free)(void *ext);
    int64_t t_submit_us, deadline_us;

    atomic_bool cancel; /* set by the loop (disconnect, shutdown) */

    pthread_mutex_t mu;
    struct rk_buf out;  /* SSE bytes not yet sent */
    size_t out_pos;
    bool done;
    int err;            /* RK_OK, or why the job failed as a whole */
    char errmsg[160];
    struct rk_choice *choices; /* [n] */
    int n_finished;
    int64_t t_first_us;

    /* loop thread only */
    struct rk_http_req *req;
    struct MHD_Connection *conn;
    /* engine: wake list (guarded by the engine's wake mutex) and queue link */
    bool wake_queued;
    struct rk_job *wake_next, *q_next;
};

struct rk_job *rk_job_create(struct rk_srv *srv, enum rk_api api);
struct rk_job *rk_job_retain(struct rk_job *j);
void rk_job_release(struct rk_job *j); /* any thread */
/* Jobs allocated by rk_job_create and not yet freed (whole process). */
long rk_jobs_live(void);

struct rk_engine;
/* Start the engine thread. `wake(user)` is called from the engine thread
 * whenever jobs have news (the loop passes a uv_async_send wrapper). */
int rk_engine_start(struct rk_srv *srv, void (*wake)(void *user), void *user,
                    struct rk_engine **out, struct rk_errbuf *eb);
/* Stop the thread, cancelling whatever runs (every job ends up done and on
 * the wake list), and wait for it. */
void rk_engine_join(struct rk_engine *e);
/* Join if needed, release what is left on the wake list, free. */
void rk_engine_stop(struct rk_engine *e);
/* Queue a job (takes a reference on success). RK_EBUSY when the queue is
 * full, RK_ECANCELED when the engine is shutting down. Loop thread. */
int rk_engine_submit(struct rk_engine *e, struct rk_job *j);
/* Waiting requests (for /metrics and for a tuning worker that should yield
 * while inference is waiting). Any thread. */
int rk_engine_queued(const struct rk_engine *e);
int rk_engine_active(const struct rk_engine *e);
/* True when the engine has requests waiting or running: the signal a
 * background tuning worker polls between steps to yield compute. */
bool rk_engine_busy(const struct rk_engine *e);
/* Engine health: false when the thread died or its heartbeat is older than
 * `stall_ms`. */
bool rk_engine_healthy(const struct rk_engine *e, int stall_ms, char *why, size_t cap);
/* Cancel every queued and running job (shutdown after the drain deadline). */
void rk_engine_cancel_all(struct rk_engine *e);
/* Loop side of the wake-up: called from the uv_async callback, hands every
 * job with news to `fn` (reference passed: fn must release it). */
void rk_engine_drain_wakes(struct rk_engine *e, void (*fn)(struct rk_job *j, void *u), void *u);

/* --- HTTP request (http.c) ---------------------------------------------- */

struct rk_route;

struct rk_http_req {
    struct rk_srv *srv;
    struct MHD_Connection *conn;
    const struct rk_route *route;
    bool started;            /* first access-handler call done */
    const char *raw_uri;     /* MHD's buffer; valid until the first call */
    size_t raw_uri_len;
    char method[16];
    char *path;              /* decoded request path (no query) */
    char params[2][RK_STATE_ID_MAX + 8]; /* {id} captures */
    int n_params;
    char tenant[RK_STATE_ID_MAX + 1];
    struct rk_buf body;
    size_t body_max;
    bool body_too_large;
    size_t body_discarded;
    size_t body_drain_max; /* drop up to this many body bytes before the 413 */
    bool dispatched;
    bool close_after;        /* answer with Connection: close (body left unread) */
    bool suspended;
    int64_t t_start_us;
    /* prepared response, queued by the next access-handler call */
    struct MHD_Response *resp;
    int status;
    bool stream_queued;
    struct rk_job *job;      /* a generation in flight (reference held) */
    struct rk_disconnect_watch *watch;
    void (*done_fn)(struct rk_http_req *r, struct rk_job *job);
    struct rk_offload *offload; /* work on the thread pool for this request */
    bool redispatch;         /* offloaded work done: call the handler again */
    /* handlers may keep a pointer to per-route data */
    void *user;
    void (*user_free)(void *user);
    struct rk_http_req *all_next, *all_prev; /* srv->reqs list */
    struct rk_conn *cc;      /* its connection (loop.c), NULL if untracked */
};

/* Response helpers (loop thread). Each prepares the response that the
 * access handler queues. */
void rk_http_json(struct rk_http_req *r, int status, json_t *body); /* takes body */
void rk_http_bytes(struct rk_http_req *r, int status, const char *ctype, const void *buf,
                   size_t len);
/* OpenAI-style error object {"error":{"message","type","param","code"}}. */
void rk_http_error(struct rk_http_req *r, int status, const char *code, const char *param,
                   const char *fmt, ...) __attribute__((format(printf, 5, 6)));
/* Map an rk error code to an HTTP error response (errmap table). */
void rk_http_error_rk(struct rk_http_req *r, int rc, const char *param, const char *msg);
int rk_http_status_of(int rc);
/* Start streaming `job` as server-sent events (the engine writes job->out). */
void rk_http_stream(struct rk_http_req *r, struct rk_job *job);
/* Connection headers every response carries: "Connection: close" while
 * draining, else "Keep-Alive: timeout=<conn-timeout>". */
struct MHD_Response;
void rk_http_conn_headers(const struct rk_srv *srv, struct MHD_Response *resp);
/* Run work(arg) on libuv's thread pool with the request suspended, so slow
 * work (disk writes and fsyncs, tokenizing a dataset) does not hold up the
 * loop thread. When
 * it is done the route handler is called again, on the loop thread, and
 * finds its result in `arg`, which it keeps in r->user (with r->user_free):
 * the handler sets those before calling this. If the client leaves first,
 * the request's user data is freed only after the work has finished. Counts
 * as in flight for the SIGTERM drain. Returns false (and answers 503) when
 * the work cannot be queued. */
bool rk_http_offload(struct rk_http_req *r, void (*work)(void *arg), void *arg);
/* Look up the caller's state `id` (r->tenant) without file I/O on the loop
 * thread (state_fetch.c). Returns RK_OK with *out holding one reference (a
 * cache hit, or the result of an earlier lookup of this request), another
 * rk code (eb filled; RK_ENOTFOUND when absent), or RK_STATE_FETCH_PENDING:
 * the state must be read from disk, which now runs on the thread pool with
 * the request suspended; the handler must return at once, preparing
 * nothing, and is called again when the lookup is done (it then parses the
 * request again and gets the answer here). Uses r->user; a handler that
 * keeps its own data there gets a synchronous lookup. */
#define RK_STATE_FETCH_PENDING 1
int rk_state_fetch(struct rk_http_req *r, const char *id, struct rk_state_ref **out,
                   struct rk_errbuf *eb);
/* Suspend until the job finishes; `done_fn` then builds the response. */
void rk_http_wait_job(struct rk_http_req *r, struct rk_job *job,
                      void (*done_fn)(struct rk_http_req *r, struct rk_job *job));
/* Header value or NULL. */
const char *rk_http_header(struct rk_http_req *r, const char *name);
/* Parse the body as a JSON object with duplicate keys rejected; on failure
 * prepares a 400 and returns NULL. */
json_t *rk_http_body_json(struct rk_http_req *r);

/* --- routes (routes.c) ---------------------------------------------------- */

enum {
    RK_ROUTE_BIG_BODY = 1 << 0, /* body cap is state_bytes_max, not body_bytes_max */
    RK_ROUTE_PUBLIC = 1 << 1,   /* no API key needed (only /health with --health-public) */
    RK_ROUTE_STATIC = 1 << 2,   /* the web UI's static files: no API key, no data */
};

typedef void rk_route_fn(struct rk_http_req *r);

struct rk_route {
    const char *method;  /* "GET", "POST", ... */
    const char *pattern; /* "/states/{id}/file": {x} matches one id-like segment */
    rk_route_fn *fn;
    unsigned flags;
    const char *name;    /* metrics label; defaults to pattern */
};

/* Add routes to the server's table (copied). Other parts of the server (the
 * tuning jobs API) register theirs with this at start-up. */
int rk_routes_add(struct rk_srv *srv, const struct rk_route *routes, size_t n);
/* Find the route for method+path. Returns the route, or NULL with *status
 * 404 (no such path) or 405 (path exists, method does not; *allow lists
 * the methods). Fills r->params. */
const struct rk_route *rk_routes_match(struct rk_srv *srv, struct rk_http_req *r, int *status,
                                       char *allow, size_t allow_cap);

/* best_of (api_bestof.c). Parse best_of, n's meaning with it,
 * return_scores, candidate_temperatures and judge from a request `o` into
 * job j (after parse_sampling): on success j->n holds the candidates and
 * j->n_out the choices to return; false when a response (an error) is
 * prepared. Loop thread. */
bool rk_bestof_parse(struct rk_http_req *r, json_t *o, struct rk_job *j);
/* Whether j needs best_of scoring when it is done. */
bool rk_bestof_wanted(const struct rk_job *j);
/* The done callback of a best_of job (rk_http_wait_job). */
void rk_bestof_done(struct rk_http_req *r, struct rk_job *j);
/* Called first by the generation handlers: true when r is a best_of request
 * coming back from its judge calls (the response is then prepared). */
bool rk_bestof_resume(struct rk_http_req *r);
/* Give back the judge calls rk_bestof_parse reserved, for a job that fails
 * after it (a later field, out of memory) or could not be queued. */
void rk_bestof_refund(struct rk_http_req *r, struct rk_job *j);
/* The prompt of j as a judge sees it: its tokens as text, the last 8192
 * bytes when longer, valid UTF-8; NULL when out of memory. Any thread. */
char *rk_judge_prompt_text(struct rk_srv *srv, const struct rk_job *j);
/* The counters of srv->judge_budget. */
enum { RK_JUDGE_CALLS, RK_JUDGE_TOKENS };
/* Reserve `calls` judge calls of r's tenant's judge budget (calls and
 * tokens per minute), or prepare a 429 judge_budget_exceeded with
 * Retry-After (or a 503) that names `param` and says "<what> needs N judge
 * calls". Loop thread. */
bool rk_judge_budget_take(struct rk_http_req *r, long long calls, const char *param,
                          const char *what);

/* Test-time training (api_ttt.c). Parse "ttt" of a request `o` (after
 * best_of and the prompt): limits, the tenant's sample budget (reserved
 * here); *out gets the options (NULL: none asked); false when an error is
 * prepared. Loop thread. */
struct ttt_opts;
bool rk_ttt_parse(struct rk_http_req *r, json_t *o, struct rk_job *j, struct ttt_opts **out);
/* Give back what rk_ttt_parse reserved and free `o` (NULL: nothing), for a
 * request that fails before rk_ttt_start. Loop thread. */
void rk_ttt_drop(struct rk_http_req *r, struct ttt_opts *o);
/* Tune a copy of j's state on its prompt on the thread pool (takes `o`);
 * the handler runs again when it is done. false: a 503 is prepared. */
bool rk_ttt_start(struct rk_http_req *r, struct rk_job *j, struct ttt_opts *o);
/* Called first by the generation handlers: 0 when r is not back from ttt;
 * 1 with *out (one reference) the job, its state now the tuned copy, ready
 * to submit; -1 when the error response is prepared. */
int rk_ttt_resume(struct rk_http_req *r, struct rk_job **out);

/* The built-in route sets. */
void rk_api_generate_register(struct rk_srv *srv);
void rk_api_states_register(struct rk_srv *srv);
void rk_api_health_register(struct rk_srv *srv);
void rk_api_web_register(struct rk_srv *srv);

/* --- auth (auth.c) ------------------------------------------------------- */

struct rk_auth;
int rk_auth_load(const char *path, struct rk_auth **out, char *err, size_t cap);
void rk_auth_free(struct rk_auth *a);
/* Constant-time lookup of a key: copies the tenant and returns true. */
bool rk_auth_check(const struct rk_auth *a, const char *key, size_t key_len, char *tenant,
                   size_t cap);
size_t rk_auth_n_keys(const struct rk_auth *a);

/* --- the server ---------------------------------------------------------- */

struct uv_loop_s;

struct rk_srv {
    struct rk_srv_config cfg;
    struct rk_model *model;
    struct rk_tokenizer *tok;
    struct rk_state_store *store;
    struct rk_engine *engine;
    struct rk_auth *auth;
    struct rk_tjobs *tjobs; /* the tuning jobs (jobs.h); NULL until their routes are added */
    struct rk_teacher *judge; /* best_of's judge (teacher.h); NULL: none configured */
    /* Per-tenant budgets (tenant_window.h), made at start-up: judge calls
     * and tokens (best_of, ttt with a judge, rl jobs scored by the judge;
     * counters RK_JUDGE_CALLS, RK_JUDGE_TOKENS) and ttt samples (counter 0). */
    struct rk_tenant_window *judge_budget, *ttt_budget;
    atomic_uint_fast64_t judge_calls, judge_errors, judge_tokens; /* metrics */
    struct rk_teacher *teacher; /* observer jobs' teacher (teacher.h); NULL: none configured */
    atomic_uint_fast64_t teacher_calls, teacher_cached, teacher_errors; /* metrics */
    atomic_uint_fast64_t rl_judge_calls, rl_judge_cached, rl_judge_errors; /* rl jobs */
    char model_name[128];
    struct rk_metrics metrics;
    struct rk_route *routes;
    size_t n_routes, cap_routes;
    /* loop thread */
    struct MHD_Daemon *mhd;
    struct uv_loop_s *loop;
    void *loop_priv; /* loop.c's handles */
    int port;        /* bound port */
    int listen_fd;   /* socket serve.c bound and listens on before loading the
                        model (rk_srv_run takes it and closes it); -1: rk_srv_run
                        binds */
    bool draining;
    int n_jobs_inflight; /* HTTP requests waiting on a job */
    int n_conns;
    /* connections closed by the accept path (loop.c): evicted at the limit
     * to make room, refused with 503 when nothing could be evicted, reaped
     * after the peer left */
    uint64_t n_conns_evicted, n_conns_refused, n_conns_reaped;
    struct rk_http_req *reqs; /* live requests */
    atomic_uint_fast64_t id_seq;
    atomic_int n_evals; /* POST /eval requests running on the thread pool (api_eval.c) */
};

/* Kernel backlog of the listening socket (connections not yet accepted). */
#define RK_LISTEN_BACKLOG 1024

/* Start-up and run (loop.c): bind (or take srv->listen_fd), print "listening on http://HOST:PORT",
 * run the loop until SIGTERM/SIGINT and the drain finish. */
int rk_srv_run(struct rk_srv *srv);

int64_t rk_now_us(void); /* monotonic */

#endif

/*
 * teacher.h - an outgoing client for OpenAI-compatible endpoints (another
 * rwkvd, llama.cpp's server, vLLM, a hosted API) that act as teachers or
 * judges: chat/completions and completions, with logprobs when asked,
 * timeouts, retries with backoff, a limit on requests in flight, response
 * size limits, strict validation of answers, and a cache of answers that a
 * tuning job keeps in its directory (teacher.c).
 *
 * Everything here is blocking and thread-safe: call it from a worker
 * thread (the thread pool of the HTTP loop, a tuning worker), never from
 * the loop or the engine thread. It does not know struct rk_srv, so the
 * tuning worker can use it as well as the request path.
 *
 * Keys: the API key is sent in the Authorization header only; it never
 * appears in a URL, a log line, an error message or the cache.
 */
#ifndef RK_TEACHER_H
#define RK_TEACHER_H

#include "rk_core.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Limits of the client (documented in docs/API.md, "Judges and teachers"). */
#define RK_TEACHER_RETRIES_MAX 10
#define RK_TEACHER_TOP_MAX 20          /* top_logprobs asked of an endpoint */
#define RK_TEACHER_TOKENS_MAX 65536    /* logprob records accepted in one answer */

struct rk_teacher_config {
    const char *name;           /* label in errors and logs: "judge", "teacher" */
    const char *base_url;       /* http(s)://host[:port]/prefix, e.g. .../v1 */
    const char *model;          /* the endpoint's model name */
    const char *api_key;        /* NULL or "": no Authorization header */
    int connect_timeout_ms;     /* TCP/TLS connect, per attempt */
    int timeout_ms;             /* one attempt, connect included */
    int retries;                /* attempts after the first (0..RK_TEACHER_RETRIES_MAX) */
    int backoff_base_ms, backoff_max_ms;
    int inflight_max;           /* requests in flight at once (>= 1) */
    size_t response_bytes_max;  /* larger answers are refused */
};

/* Fill c with the defaults: 2 s connect, 30 s per attempt, 2 retries,
 * backoff 200 ms doubling to 5 s, 8 in flight, 4 MiB answers. */
void rk_teacher_config_default(struct rk_teacher_config *c);

enum rk_teacher_kind { RK_TEACHER_CHAT, RK_TEACHER_COMPLETION };

struct rk_teacher_msg {
    const char *role, *content;
};

/* One request. Strings are borrowed for the call. */
struct rk_teacher_req {
    enum rk_teacher_kind kind;
    const char *model;                  /* NULL: the configured model */
    const char *prompt;                 /* RK_TEACHER_COMPLETION */
    const struct rk_teacher_msg *msgs;  /* RK_TEACHER_CHAT */
    size_t n_msgs;
    int max_tokens;                     /* >= 1 */
    double temperature;                 /* >= 0 */
    int top_logprobs;                   /* -1: no logprobs; 0..RK_TEACHER_TOP_MAX */
    const char *const *stop;            /* n_stop stop strings (OpenAI "stop"), or none */
    int n_stop;
    bool seed_given;
    long long seed;
};

struct rk_teacher_alt {
    char *token;
    double lp;
};

/* One generated token with its log-probability and the alternatives. */
struct rk_teacher_tok {
    char *token;
    double lp;
    struct rk_teacher_alt *top;
    int n_top;
};

struct rk_teacher_answer {
    char *text;                   /* the first choice's text (never NULL on success) */
    char finish[24];              /* finish_reason, "" when null */
    struct rk_teacher_tok *toks;  /* [n_toks] when logprobs were asked */
    size_t n_toks;
    long long prompt_tokens, completion_tokens; /* usage; -1 when not reported */
    int attempts;                 /* HTTP attempts made (0 when cached) */
    long http_status;             /* of the last attempt (0: none reached the server) */
    bool cached;
};
void rk_teacher_answer_fini(struct rk_teacher_answer *a);

struct rk_teacher;
struct rk_teacher_cache;

/* Once per process, before any thread starts (libcurl's global init). */
int rk_teacher_global_init(void);

/* Check the configuration and make a client. The URL must be http or https,
 * hold no user name or password (the key goes in api_key) and no query;
 * a trailing slash is dropped. Strings are copied. RK_EINVAL with the reason
 * in eb. */
int rk_teacher_create(const struct rk_teacher_config *c, struct rk_teacher **out,
                      struct rk_errbuf *eb);
void rk_teacher_free(struct rk_teacher *t);
const char *rk_teacher_name(const struct rk_teacher *t);
const char *rk_teacher_url(const struct rk_teacher *t);
const char *rk_teacher_model(const struct rk_teacher *t);
/* Requests in flight now (for metrics and tests). */
int rk_teacher_inflight(struct rk_teacher *t);
/* The same endpoint with another base URL and model (NULL: keep), sending
 * the key only when the URL is unchanged. Used for per-request overrides
 * that the operator allowed. */
int rk_teacher_derive(const struct rk_teacher *t, const char *base_url, const char *model,
                      struct rk_teacher **out, struct rk_errbuf *eb);

/*
 * Send one request and wait for its answer (blocking; any thread).
 *
 * Waits for a free slot (inflight_max), then tries up to 1 + retries times:
 * connection errors, 429 and 5xx are retried after rk_teacher_backoff_ms
 * (a Retry-After of at most backoff_max_ms is honoured); other 4xx are not.
 * `deadline_us` (rk monotonic µs; 0: none) bounds the whole call, waits
 * included. `cancel` (NULL allowed) stops it within about 100 ms.
 * `cache` (NULL allowed) is asked first and given each valid answer.
 *
 * Returns RK_OK and fills `a`, or: RK_ETIMEOUT (a timeout or the deadline),
 * RK_EIO (no connection, or 429/5xx after the last retry), RK_EINVAL (the
 * endpoint refused the request: 4xx), RK_EFORMAT (the answer is not valid
 * JSON of the expected shape, or too large), RK_ECANCELED, RK_ENOMEM. eb
 * names the client ("judge: ...") and the reason, never the key.
 */
int rk_teacher_call(struct rk_teacher *t, const struct rk_teacher_req *q,
                    struct rk_teacher_cache *cache, int64_t deadline_us,
                    const atomic_bool *cancel, struct rk_teacher_answer *a,
                    struct rk_errbuf *eb);

/* --- pieces exposed for the unit tests ----------------------------------- */

/* The wait before retry number `attempt` (0 = the first retry): the
 * exponential step e = min(max, base * 2^attempt) with equal jitter, a value
 * in [e/2, e]. `rng` is an xorshift64 state (non-zero), advanced. */
int rk_teacher_backoff_ms(int attempt, int base_ms, int max_ms, uint64_t *rng);
/* Whether an attempt that ended with HTTP `status` (0: no response) and
 * libcurl code `curl_code` is worth retrying. */
bool rk_teacher_retryable(long status, int curl_code);
/* Parse and validate an answer body of `kind`; `want_lps` makes the
 * logprobs part required. RK_EFORMAT with the reason (naming `name`). */
int rk_teacher_parse(const char *name, enum rk_teacher_kind kind, bool want_lps,
                     const char *body, size_t len, struct rk_teacher_answer *a,
                     struct rk_errbuf *eb);
/* The request body that rk_teacher_call sends (malloc'd, compact JSON with
 * sorted keys: also the cache key with the URL in front). */
char *rk_teacher_body(const struct rk_teacher *t, const struct rk_teacher_req *q);

/* --- cache ------------------------------------------------------------------ */

/*
 * Answers keyed by endpoint URL and request body (the key is not part of
 * it). With a path (a file in a tuning job's directory), an existing file is
 * loaded and validated at open (a torn last record, from a crash during an
 * append, is ignored and cut off), and every new answer is appended to it
 * as one JSON line and fsynced, so a resumed job asks nothing twice; the
 * cost of an answer does not grow with the answers before it.
 * At most `entries_max` answers and `bytes_max` bytes: beyond, new answers
 * are not kept (the oldest stay, for a job that resumes). Thread-safe.
 */
int rk_teacher_cache_open(const char *path, size_t entries_max, size_t bytes_max,
                          struct rk_teacher_cache **out, struct rk_errbuf *eb);
void rk_teacher_cache_free(struct rk_teacher_cache *c);
size_t rk_teacher_cache_count(struct rk_teacher_cache *c);
/* A copy of the answer body stored for key (malloc'd) or NULL. */
char *rk_teacher_cache_get(struct rk_teacher_cache *c, const char *key, size_t *len);
/* Keep body for key (copied) and, with a path, write the file. */
int rk_teacher_cache_put(struct rk_teacher_cache *c, const char *key, const char *body,
                         size_t len, struct rk_errbuf *eb);

#endif

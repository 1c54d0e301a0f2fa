/*
 * config.c - `rwkvd serve` configuration: defaults, then RWKVD_* environment
 * variables, then command-line flags (the later wins). Two tables describe
 * every option (opts: the server's own; client_opts: the settings the judge
 * and the teacher share, one row for both), so --help, the start-up print
 * and docs/API.md stay in step.
 */
#include "srv.h"
#include "jobs.h"

#include <errno.h>
#include <limits.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum opt_type { OPT_STR, OPT_INT, OPT_SIZE, OPT_BOOL };

struct opt {
    const char *flag; /* without the leading -- */
    const char *env;
    enum opt_type type;
    size_t off;
    long long lo, hi; /* range for numbers */
    const char *help;
};

#define F(x) offsetof(struct rk_srv_config, x)
static const struct opt opts[] = {
    {"model", "RWKVD_MODEL", OPT_STR, F(model), 0, 0,
     "model file (safetensors, .pth, rwkv.cpp .bin, GGUF), Hugging Face directory, or shards "
     "(a directory of .pth, or FILE,FILE,...); required"},
    {"vocab", "RWKVD_VOCAB", OPT_STR, F(vocab), 0, 0, "World vocabulary file (or a GGUF file holding one); default: a GGUF model's own vocabulary, else the byte tokenizer when the model has 256..65535 tokens"},
    {"model-name", "RWKVD_MODEL_NAME", OPT_STR, F(model_name), 0, 0, "base model id in the API (default: model file name without extension)"},
    {"host", "RWKVD_HOST", OPT_STR, F(host), 0, 0, "address to bind (default 127.0.0.1; without --api-keys only loopback is allowed)"},
    {"port", "RWKVD_PORT", OPT_INT, F(port), 0, 65535, "port (0 = pick a free port and print it)"},
    {"data-dir", "RWKVD_DATA_DIR", OPT_STR, F(data_dir), 0, 0, "state store directory (default ./rwkvd-data)"},
    {"api-keys", "RWKVD_API_KEYS", OPT_STR, F(api_keys), 0, 0, "file of 'KEY TENANT' lines; every route then needs a key"},
    {"threads", "RWKVD_THREADS", OPT_INT, F(threads), 0, 1024, "compute threads (0 = all CPUs)"},
    {"compute-nice", "RWKVD_COMPUTE_NICE", OPT_INT, F(compute_nice), 0, 19, "nice value of the engine's compute threads, so the HTTP loop stays responsive on busy cores (0 = unchanged)"},
    {"max-body-bytes", "RWKVD_MAX_BODY_BYTES", OPT_SIZE, F(body_bytes_max), 1024, 1ll << 30, "largest JSON request body (413 beyond)"},
    {"max-state-bytes", "RWKVD_MAX_STATE_BYTES", OPT_SIZE, F(state_bytes_max), 1024, 1ll << 34, "largest state upload (PUT /states/{id}; 413 beyond)"},
    {"max-prompt-tokens", "RWKVD_MAX_PROMPT_TOKENS", OPT_INT, F(prompt_tokens_max), 1, 1 << 24, "longest prompt in tokens (400 beyond)"},
    {"max-tokens", "RWKVD_MAX_TOKENS", OPT_INT, F(max_tokens_max), 1, 1 << 24, "largest max_tokens a request may ask for"},
    {"default-max-tokens", "RWKVD_DEFAULT_MAX_TOKENS", OPT_INT, F(max_tokens_default), 1, 1 << 24, "max_tokens when a request gives none"},
    {"max-n", "RWKVD_MAX_N", OPT_INT, F(n_max), 1, 128, "largest n (choices per request)"},
    {"max-logprobs", "RWKVD_MAX_LOGPROBS", OPT_INT, F(logprobs_max), 0, 100, "largest logprobs / top_logprobs"},
    {"max-stops", "RWKVD_MAX_STOPS", OPT_INT, F(stops_max), 0, 64, "most stop sequences per request"},
    {"max-seqs", "RWKVD_MAX_SEQS", OPT_INT, F(seqs_max), 1, 4096, "concurrent sequences in the engine (continuous batch size)"},
    {"max-queue", "RWKVD_MAX_QUEUE", OPT_INT, F(queue_max), 0, 1 << 20, "requests waiting for a slot before 429 + Retry-After"},
    {"max-stream-buffer", "RWKVD_MAX_STREAM_BUFFER", OPT_SIZE, F(stream_buffer_max), 4096, 1ll << 30, "unsent bytes a stream may hold; beyond it the request's sequences pause until the client reads"},
    {"conn-limit", "RWKVD_CONN_LIMIT", OPT_INT, F(conn_limit), 1, 1 << 20, "open connections"},
    {"conn-timeout", "RWKVD_CONN_TIMEOUT", OPT_INT, F(conn_timeout_s), 1, 86400, "idle connection timeout in seconds"},
    {"request-timeout", "RWKVD_REQUEST_TIMEOUT", OPT_INT, F(request_timeout_s), 1, 86400, "per-request deadline in seconds (queue wait included)"},
    {"drain-timeout", "RWKVD_DRAIN_TIMEOUT", OPT_INT, F(drain_timeout_s), 0, 3600, "seconds SIGTERM/SIGINT waits for in-flight requests"},
    {"prefill-chunk", "RWKVD_PREFILL_CHUNK", OPT_INT, F(prefill_chunk), 1, 65536, "prompt tokens processed per engine step (bounds decode stalls)"},
    {"amx-prefill", "RWKVD_AMX_PREFILL", OPT_BOOL, F(amx_prefill), 0, 1, "prompt tokens of bf16 models on AMX tiles, inputs rounded to bf16, where the CPU offers AMX; generated tokens keep the fp32 path (0 = fp32 everywhere)"},
    {"amx-decode", "RWKVD_AMX_DECODE", OPT_BOOL, F(amx_decode), 0, 1, "generated tokens of bf16 models on AMX tiles too, inputs rounded to bf16 (faster batches of 8 or more, a little slower alone); off by default"},
    {"cache-bytes", "RWKVD_CACHE_BYTES", OPT_SIZE, F(cache_bytes), 1 << 16, 1ll << 40, "adapter LRU cache bound in bytes"},
    {"health-stall-ms", "RWKVD_HEALTH_STALL_MS", OPT_INT, F(health_stall_ms), 100, 3600000, "engine heartbeat age at which /health reports not ready"},
    {"health-public", "RWKVD_HEALTH_PUBLIC", OPT_BOOL, F(health_public), 0, 1, "serve GET /health without an API key (for probes)"},
    {"max-best-of", "RWKVD_MAX_BEST_OF", OPT_INT, F(best_of_max), 1, 128, "largest best_of (candidates per request; lowered to --max-seqs when larger)"},
    {"judge-calls-per-min", "RWKVD_JUDGE_CALLS_PER_MIN", OPT_INT, F(judge_calls_per_min), 1, 1 << 24, "judge calls per tenant per minute: best_of, ttt and rl jobs together (429 beyond; jobs wait)"},
    {"ttt-max-steps", "RWKVD_TTT_MAX_STEPS", OPT_INT, F(ttt_max_steps), 0, 64, "largest ttt.steps of a generation request (0: test-time training off)"},
    {"ttt-max-k", "RWKVD_TTT_MAX_K", OPT_INT, F(ttt_max_k), 2, 64, "largest ttt.k (samples per ttt step)"},
    {"ttt-max-tokens", "RWKVD_TTT_MAX_TOKENS", OPT_INT, F(ttt_max_tokens), 1, 1024, "largest ttt.max_tokens (tokens per ttt sample)"},
    {"ttt-samples-per-min", "RWKVD_TTT_SAMPLES_PER_MIN", OPT_INT, F(ttt_samples_per_min), 1, 1 << 24, "ttt samples (steps x k) per tenant per minute (429 beyond)"},
    {"judge-tokens-per-min", "RWKVD_JUDGE_TOKENS_PER_MIN", OPT_INT, F(judge_tokens_per_min), 1, 1 << 30, "judge tokens (as it reports them) per tenant per minute (429 beyond)"},
};
#undef F
#define N_OPTS (sizeof opts / sizeof opts[0])

/* The two OpenAI-compatible clients (best_of's judge, the observer jobs'
 * teacher) take the same settings: one row each in client_opts, which
 * becomes --judge-NAME (RWKVD_JUDGE_NAME) and --teacher-NAME
 * (RWKVD_TEACHER_NAME), with the client's own help text and default. */
enum { CLIENT_JUDGE, CLIENT_TEACHER, N_CLIENTS };

static const struct {
    const char *prefix;
    size_t off; /* of its struct rk_client_cfg in struct rk_srv_config */
} clients[N_CLIENTS] = {
    {"judge", offsetof(struct rk_srv_config, judge)},
    {"teacher", offsetof(struct rk_srv_config, teacher)},
};

struct client_opt {
    const char *name; /* the flag after "--judge-" or "--teacher-" */
    enum opt_type type;
    size_t off; /* in struct rk_client_cfg */
    long long lo, hi;
    long long def[N_CLIENTS]; /* numbers only; strings start unset */
    const char *help[N_CLIENTS];
};

#define F(x) offsetof(struct rk_client_cfg, x)
static const struct client_opt client_opts[] = {
    {"url", OPT_STR, F(url), 0, 0, {0, 0},
     {"base URL of an OpenAI-compatible judge for best_of, e.g. http://host:8081/v1 (unset: candidates are scored by the model's own mean log-probability)",
      "base URL of an OpenAI-compatible teacher for observer tuning jobs, e.g. http://host:8081/v1 (unset: observer jobs are refused)"}},
    {"model", OPT_STR, F(model), 0, 0, {0, 0},
     {"the judge's model name (required with --judge-url)",
      "the teacher's model name (required with --teacher-url; a job may name another)"}},
    {"key-file", OPT_STR, F(key_file), 0, 0, {0, 0},
     {"file holding the judge's API key (else the environment variable RWKVD_JUDGE_API_KEY; never logged)",
      "file holding the teacher's API key (else the environment variable RWKVD_TEACHER_API_KEY; never logged)"}},
    {"allowed-urls", OPT_STR, F(allowed_urls), 0, 0, {0, 0},
     {"comma-separated judge base URLs a request may choose with judge.url (default: none; such calls carry no key)",
      "comma-separated teacher base URLs a job may choose with teacher.url (default: none; such calls carry no key)"}},
    {"connect-timeout-ms", OPT_INT, F(connect_timeout_ms), 1, 600000, {2000, 2000},
     {"judge connect timeout per attempt", "teacher connect timeout per attempt"}},
    {"timeout-ms", OPT_INT, F(timeout_ms), 1, 3600000, {30000, 60000},
     {"judge timeout per attempt (the request deadline bounds all attempts)",
      "teacher timeout per attempt"}},
    {"retries", OPT_INT, F(retries), 0, 10, {2, 2},
     {"judge retries after the first attempt (on connection errors, 429 and 5xx only)",
      "teacher retries after the first attempt (on connection errors, 429 and 5xx only)"}},
    {"max-inflight", OPT_INT, F(max_inflight), 1, 1024, {8, 8},
     {"judge requests in flight at once (all requests together)",
      "teacher requests in flight at once"}},
    {"max-response-bytes", OPT_SIZE, F(response_bytes_max), 1024, 1ll << 30,
     {1ll << 20, 4ll << 20}, {"largest judge answer", "largest teacher answer"}},
};
#undef F
#define N_CLIENT_OPTS (sizeof client_opts / sizeof client_opts[0])
#define N_ALL_OPTS (N_OPTS + N_CLIENTS * N_CLIENT_OPTS)

/* Option i of all of them: opts[] first, then the judge's rows, then the
 * teacher's. A client row is spelled out into *b, with its flag and
 * environment variable written to flag[] and env[]. */
struct opt_buf {
    struct opt o;
    char flag[48], env[48];
};

static const struct opt *opt_at(size_t i, struct opt_buf *b)
{
    if (i < N_OPTS)
        return &opts[i];
    i -= N_OPTS;
    size_t who = i / N_CLIENT_OPTS;
    const struct client_opt *co = &client_opts[i % N_CLIENT_OPTS];
    snprintf(b->flag, sizeof b->flag, "%s-%s", clients[who].prefix, co->name);
    // RWKVD_ and the flag in capitals, '-' as '_'
    size_t n = (size_t)snprintf(b->env, sizeof b->env, "RWKVD_");
    for (const char *p = b->flag; *p && n + 1 < sizeof b->env; p++)
        b->env[n++] = *p == '-' ? '_' : (char)(*p >= 'a' && *p <= 'z' ? *p - 'a' + 'A' : *p);
    b->env[n] = 0;
    b->o = (struct opt){b->flag, b->env, co->type, clients[who].off + co->off, co->lo, co->hi,
                        co->help[who]};
    return &b->o;
}

static void defaults(struct rk_srv_config *c)
{
    memset(c, 0, sizeof *c);
    c->host = "127.0.0.1";
    c->port = 8080;
    c->data_dir = "./rwkvd-data";
    c->body_bytes_max = (size_t)1 << 20;
    c->state_bytes_max = (size_t)256 << 20;
    c->prompt_tokens_max = 16384;
    c->max_tokens_max = 4096;
    c->max_tokens_default = 256;
    c->n_max = 8;
    c->logprobs_max = 20;
    c->stops_max = 8;
    c->seqs_max = 64;
    c->queue_max = 256;
    c->stream_buffer_max = (size_t)256 << 10;
    c->conn_limit = 1024;
    c->conn_timeout_s = 30;
    c->request_timeout_s = 600;
    c->drain_timeout_s = 30;
    c->prefill_chunk = 256;
    c->amx_prefill = true;
    c->cache_bytes = (size_t)512 << 20;
    c->health_stall_ms = 15000;
    c->best_of_max = 8;
    c->judge_calls_per_min = 600;
    c->ttt_max_steps = 8;
    c->ttt_max_k = 8;
    c->ttt_max_tokens = 64;
    c->ttt_samples_per_min = 256;
    c->judge_tokens_per_min = 1000000;
    for (size_t who = 0; who < N_CLIENTS; who++)
        for (size_t i = 0; i < N_CLIENT_OPTS; i++) {
            const struct client_opt *co = &client_opts[i];
            char *p = (char *)c + clients[who].off + co->off;
            if (co->type == OPT_INT)
                *(int *)p = (int)co->def[who];
            else if (co->type == OPT_SIZE)
                *(size_t *)p = (size_t)co->def[who];
        }
}

/* Numbers accept an optional K/M/G suffix for sizes. */
static int set_opt(struct rk_srv_config *c, const struct opt *o, const char *v, const char *src)
{
    char *p = (char *)c + o->off;
    if (o->type == OPT_STR) {
        *(const char **)p = v;
        return 0;
    }
    if (o->type == OPT_BOOL) {
        if (!v || !strcmp(v, "1") || !strcmp(v, "true") || !strcmp(v, "yes"))
            *(bool *)p = true;
        else if (!strcmp(v, "0") || !strcmp(v, "false") || !strcmp(v, "no"))
            *(bool *)p = false;
        else
            goto bad;
        return 0;
    }
    errno = 0;
    char *end;
    long long x = strtoll(v, &end, 10);
    if (errno || end == v)
        goto bad;
    if (o->type == OPT_SIZE && *end) {
        long long mul = *end == 'K' || *end == 'k' ? 1ll << 10
                        : *end == 'M' || *end == 'm' ? 1ll << 20
                        : *end == 'G' || *end == 'g' ? 1ll << 30 : 0;
        if (!mul || end[1] || x > LLONG_MAX / mul)
            goto bad;
        x *= mul;
        end++;
    }
    if (*end || x < o->lo || x > o->hi)
        goto bad;
    if (o->type == OPT_INT)
        *(int *)p = (int)x;
    else
        *(size_t *)p = (size_t)x;
    return 0;
bad:
    fprintf(stderr, "rwkvd serve: %s: invalid value '%s' for --%s (range %lld..%lld)\n", src,
            v ? v : "", o->flag, o->lo, o->hi);
    return -1;
}

static void help(FILE *f)
{
    fprintf(f, "usage: rwkvd serve --model FILE [options]\n\n"
               "Serve the model over HTTP (native API, OpenAI-compatible API, state store).\n"
               "Every option can also be set by its environment variable; flags win.\n\n");
    for (size_t i = 0; i < N_ALL_OPTS; i++) {
        struct opt_buf b;
        const struct opt *o = opt_at(i, &b);
        fprintf(f, "  --%-20s %s\n  %22s (env %s)\n", o->flag, o->help, "", o->env);
    }
    fprintf(f, "  --%-20s %s\n", "print-config",
            "print the effective configuration (defaults, environment, flags) and exit");
    fprintf(f, "  --%-20s %s\n", "help", "show this help");
    rk_tjobs_env_help(f);
}

int rk_srv_config_parse(struct rk_srv_config *c, int argc, char **argv)
{
    defaults(c);
    bool print_only = false;
    for (size_t i = 0; i < N_ALL_OPTS; i++) {
        struct opt_buf b;
        const struct opt *o = opt_at(i, &b);
        const char *v = getenv(o->env);
        if (v && *v && set_opt(c, o, v, o->env) != 0)
            return -1;
    }
    for (int a = 1; a < argc; a++) {
        const char *arg = argv[a];
        if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) {
            help(stdout);
            return 1;
        }
        if (!strcmp(arg, "--print-config")) {
            print_only = true;
            continue;
        }
        if (strncmp(arg, "--", 2) != 0) {
            fprintf(stderr, "rwkvd serve: unexpected argument '%s' (see --help)\n", arg);
            return -1;
        }
        const char *name = arg + 2, *val = NULL;
        const char *eq = strchr(name, '=');
        size_t nl = eq ? (size_t)(eq - name) : strlen(name);
        const struct opt *o = NULL;
        struct opt_buf ob;
        for (size_t i = 0; i < N_ALL_OPTS && !o; i++) {
            const struct opt *x = opt_at(i, &ob);
            if (strlen(x->flag) == nl && !strncmp(x->flag, name, nl))
                o = x;
        }
        const char *job_env = o ? NULL : rk_tjobs_flag_env(name, nl);
        if (job_env) {
            // A tuning-job flag: it overrides its environment variable, which
            // the jobs layer reads (and range-checks) at start-up.
            if (!eq && a + 1 >= argc) {
                fprintf(stderr, "rwkvd serve: --%.*s needs a value\n", (int)nl, name);
                return -1;
            }
            if (setenv(job_env, eq ? eq + 1 : argv[++a], 1) != 0)
                return -1;
            continue;
        }
        if (!o) {
            fprintf(stderr, "rwkvd serve: unknown option '%s' (see --help)\n", arg);
            return -1;
        }
        if (eq) {
            val = eq + 1;
        } else if (o->type != OPT_BOOL) {
            if (a + 1 >= argc) {
                fprintf(stderr, "rwkvd serve: --%s needs a value\n", o->flag);
                return -1;
            }
            val = argv[++a];
        }
        if (set_opt(c, o, val, "command line") != 0)
            return -1;
    }
    if (print_only) {
        rk_srv_config_print(c, stdout);
        return 1;
    }
    if (!c->model) {
        fprintf(stderr, "rwkvd serve: --model is required (see --help)\n");
        return -1;
    }
    if (c->max_tokens_default > c->max_tokens_max)
        c->max_tokens_default = c->max_tokens_max;
    // The candidates of one request need as many sequence slots.
    if (c->best_of_max > c->seqs_max)
        c->best_of_max = c->seqs_max;
    if (c->teacher.url && !c->teacher.model) {
        fprintf(stderr, "rwkvd serve: --teacher-url needs --teacher-model\n");
        return -1;
    }
    if (c->judge.url && !c->judge.model) {
        fprintf(stderr, "rwkvd serve: --judge-url needs --judge-model\n");
        return -1;
    }
    if (c->n_max > c->seqs_max) {
        fprintf(stderr, "rwkvd serve: --max-n (%d) must not exceed --max-seqs (%d)\n", c->n_max,
                c->seqs_max);
        return -1;
    }
    return 0;
}

void rk_srv_config_print(const struct rk_srv_config *c, FILE *f)
{
    fprintf(f, "rwkvd serve configuration:\n");
    for (size_t i = 0; i < N_ALL_OPTS; i++) {
        struct opt_buf b;
        const struct opt *o = opt_at(i, &b);
        const char *p = (const char *)c + o->off;
        switch (o->type) {
        case OPT_STR: {
            const char *s = *(const char *const *)p;
            fprintf(f, "  %-20s %s\n", o->flag, s ? s : "(unset)");
            break;
        }
        case OPT_INT: fprintf(f, "  %-20s %d\n", o->flag, *(const int *)p); break;
        case OPT_SIZE: fprintf(f, "  %-20s %zu\n", o->flag, *(const size_t *)p); break;
        case OPT_BOOL: fprintf(f, "  %-20s %s\n", o->flag, *(const bool *)p ? "true" : "false"); break;
        }
    }
}

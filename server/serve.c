/*
 * serve.c - `rwkvd serve`: configuration, start-up order, shutdown order.
 *
 * Start-up: seed jansson's hash (before any thread), parse the config; then
 * the quick checks that fail for a reason the user can fix: the model file
 * opens, the API keys load, the data dir lock (one server per data dir,
 * datadir_lock.c), the port binds. Then the slow part: the model and
 * tokenizer, the state store, the jobs journal, the routes; the configuration
 * is printed, and the loop (loop.c) starts the engine and prints
 * "listening on http://HOST:PORT". Shutdown runs in reverse once the
 * loop returns after SIGTERM/SIGINT and the drain.
 */
#include "cli_common.h"
#include "cmd.h"
#include "datadir_lock.h"
#include "jobs.h" /* tuning jobs (jobs.c, api_jobs.c) */
#include "rk_config.h"
#include "srv.h"
#include "teacher.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static void log_line(enum rk_log_level level, const char *msg, void *user)
{
    static const char *names[] = {"debug", "info", "warn", "error"};
    (void)user;
    if (level < RK_LOG_INFO)
        return;
    fprintf(stderr, "rwkvd: %s: %s\n", names[level], msg);
}

/* Model id for the API: the file name without directory and extension,
 * with characters outside [A-Za-z0-9._-] replaced by '-'. */
static void default_model_name(const char *path, char *out, size_t cap)
{
    const char *b = strrchr(path, '/');
    b = b ? b + 1 : path;
    snprintf(out, cap, "%s", b);
    char *dot = strrchr(out, '.');
    if (dot && dot != out)
        *dot = 0;
    for (char *p = out; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
              *p == '.' || *p == '_' || *p == '-'))
            *p = '-';
}

/* Bind and listen on --host/--port before anything slow, so a port in use
 * (or a host that may not be served) is reported at once. The socket goes to
 * the HTTP loop (srv->listen_fd), which then takes it over. */
static int listen_early(struct rk_srv *srv)
{
    const struct rk_srv_config *c = &srv->cfg;
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *a4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&ss;
    socklen_t sl;
    bool loopback;
    if (inet_pton(AF_INET, c->host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)c->port);
        sl = sizeof *a4;
        loopback = (ntohl(a4->sin_addr.s_addr) >> 24) == 127;
    } else if (inet_pton(AF_INET6, c->host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)c->port);
        sl = sizeof *a6;
        loopback = IN6_IS_ADDR_LOOPBACK(&a6->sin6_addr);
    } else {
        fprintf(stderr, "rwkvd serve: --host '%s' is not an IPv4/IPv6 address\n", c->host);
        return -1;
    }
    if (!loopback && !srv->auth) {
        fprintf(stderr, "rwkvd serve: refusing to bind %s without --api-keys (only loopback "
                "addresses may be served without keys)\n", c->host);
        return -1;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) {
        fprintf(stderr, "rwkvd serve: socket: %s\n", strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (ss.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&ss, sl) != 0 || listen(fd, RK_LISTEN_BACKLOG) != 0) {
        int e = errno;
        fprintf(stderr, "rwkvd serve: cannot listen on %s:%d: %s%s\n", c->host, c->port,
                strerror(e), e == EADDRINUSE ? " (another server has this port; stop it or "
                                               "give another --port, 0 picks a free one)" : "");
        close(fd);
        return -1;
    }
    srv->listen_fd = fd;
    return 0;
}

/* The best_of judge and the observer jobs' teacher (teacher.h): the key comes
 * from --judge-key-file / --teacher-key-file (first line, surrounding space
 * trimmed) or RWKVD_JUDGE_API_KEY / RWKVD_TEACHER_API_KEY, and is never
 * printed. */
static int open_client(const char *name, const struct rk_client_cfg *cc, const char *key_env,
                       struct rk_teacher **out)
{
    const char *key_file = cc->key_file;
    struct rk_teacher_config tc;
    struct rk_errbuf eb = {0};
    char *key = NULL;
    rk_teacher_config_default(&tc);
    if (key_file) {
        void *buf = NULL;
        size_t len = 0;
        if (rk_file_read_all(key_file, 8192, &buf, &len, &eb) != RK_OK) {
            fprintf(stderr, "rwkvd serve: %s key: %s\n", name, eb.msg);
            return -1;
        }
        char *k0 = malloc(len + 1), *k = k0;
        if (k0) {
            memcpy(k0, buf, len);
            k0[len] = 0;
        }
        memset(buf, 0, len);
        free(buf);
        if (!k0) {
            fprintf(stderr, "rwkvd serve: out of memory\n");
            return -1;
        }
        k[strcspn(k, "\r\n")] = 0;
        while (*k == ' ' || *k == '\t')
            k++;
        size_t n = strlen(k);
        while (n && (k[n - 1] == ' ' || k[n - 1] == '\t'))
            k[--n] = 0;
        key = strdup(k);
        memset(k0, 0, strlen(k0));
        free(k0);
        if (!key || !*key) {
            fprintf(stderr, "rwkvd serve: %s key file %s: %s\n", name, key_file,
                    key ? "empty" : "out of memory");
            free(key);
            return -1;
        }
    } else if (getenv(key_env) && *getenv(key_env)) {
        key = strdup(getenv(key_env));
    }
    tc.name = name;
    tc.base_url = cc->url;
    tc.model = cc->model;
    tc.api_key = key;
    tc.connect_timeout_ms = cc->connect_timeout_ms;
    tc.timeout_ms = cc->timeout_ms;
    tc.retries = cc->retries;
    tc.inflight_max = cc->max_inflight;
    tc.response_bytes_max = cc->response_bytes_max;
    int rc = rk_teacher_create(&tc, out, &eb);
    if (key) {
        memset(key, 0, strlen(key));
        free(key);
    }
    if (rc != RK_OK) {
        fprintf(stderr, "rwkvd serve: %s\n", eb.msg);
        return -1;
    }
    return 0;
}

static int open_judge(struct rk_srv *srv)
{
    return open_client("judge", &srv->cfg.judge, "RWKVD_JUDGE_API_KEY", &srv->judge);
}

static int open_teacher(struct rk_srv *srv)
{
    return open_client("teacher", &srv->cfg.teacher, "RWKVD_TEACHER_API_KEY", &srv->teacher);
}

int rk_cmd_serve(int argc, char **argv)
{
    json_object_seed(0); // before any thread exists (RELIABILITY.md 4)
    if (rk_teacher_global_init() != RK_OK) { // libcurl's, also before any thread
        fprintf(stderr, "rwkvd serve: cannot initialise libcurl\n");
        return 1;
    }
    struct rk_srv *srv = calloc(1, sizeof *srv);
    if (!srv)
        return 1;
    int rc = rk_srv_config_parse(&srv->cfg, argc, argv);
    if (rc != 0) {
        free(srv);
        return rc > 0 ? 0 : 2;
    }
    int status = 1, lock_fd = -1;
    struct rk_errbuf eb = {0};
    struct rk_tjobs *jobs = NULL; /* tuning jobs: worker + journal (jobs.c) */
    srv->listen_fd = -1;
    signal(SIGPIPE, SIG_IGN);
    rk_log_set(log_line, NULL);

    /* Start-up order: what fails fast and for a reason the user can fix comes
     * before what takes time (loading the model, recovering the journal), so
     * a missing model, a bad key file, a data dir in use or a port in use is
     * the first thing printed; the configuration follows once it all worked. */
    struct rk_srv_config *c = &srv->cfg;
    const char *files[2][2] = {{"model", c->model}, {"vocabulary", c->vocab}};
    for (int i = 0; i < 2; i++) {
        if (!files[i][1])
            continue;
        int fd = open(files[i][1], O_RDONLY | O_CLOEXEC);
        if (fd < 0 && i == 0 && errno == ENOENT && strchr(files[i][1], ','))
            continue; // a list of model files: the loader checks each one
        if (fd < 0) {
            fprintf(stderr, "rwkvd serve: cannot open the %s %s: %s\n", files[i][0], files[i][1],
                    strerror(errno));
            goto out;
        }
        close(fd);
    }
    if (c->api_keys) {
        char err[512] = "";
        if (rk_auth_load(c->api_keys, &srv->auth, err, sizeof err) != RK_OK) {
            fprintf(stderr, "rwkvd serve: %s\n", err[0] ? err : "cannot load the API keys");
            goto out;
        }
    }
    {
        char err[PATH_MAX + 256];
        if (rk_datadir_lock(c->data_dir, &lock_fd, err, sizeof err) != 0) {
            fprintf(stderr, "rwkvd serve: %s\n", err);
            goto out;
        }
    }
    if (!(srv->judge_budget = rk_tenant_window_new()) ||
        !(srv->ttt_budget = rk_tenant_window_new())) {
        fprintf(stderr, "rwkvd serve: out of memory\n");
        goto out;
    }
    if (c->judge.url && open_judge(srv) != 0)
        goto out;
    if (c->teacher.url && open_teacher(srv) != 0)
        goto out;
    if (listen_early(srv) != 0)
        goto out;

    if (rk_model_load(c->model, NULL, &srv->model, &eb) != RK_OK) {
        fprintf(stderr, "rwkvd serve: %s\n", eb.msg[0] ? eb.msg : "cannot load the model");
        goto out;
    }
    int V = rk_model_n_vocab(srv->model);
    // The rule every subcommand follows (cli.c): --vocab, else the model
    // directory's vocabulary, else bytes for 256..65535 tokens, else
    // refused with the reason.
    if (!(srv->tok = rk_cli_load_tokenizer(c->vocab, srv->model)))
        goto out;
    if (rk_tok_n_vocab(srv->tok) > (size_t)V) {
        fprintf(stderr, "rwkvd serve: the tokenizer has more tokens than the model (%d)\n", V);
        goto out;
    }
    if (c->model_name) {
        if (!*c->model_name || strchr(c->model_name, ':') || strlen(c->model_name) > 100) {
            fprintf(stderr, "rwkvd serve: --model-name must be 1-100 characters without ':'\n");
            goto out;
        }
        snprintf(srv->model_name, sizeof srv->model_name, "%s", c->model_name);
    } else {
        default_model_name(c->model, srv->model_name, sizeof srv->model_name);
    }
    struct rk_store_params sp = {.cache_bytes_max = c->cache_bytes,
                                 .file_bytes_max = c->state_bytes_max};
    if (rk_store_open(c->data_dir, srv->model, &sp, &srv->store, &eb) != RK_OK) {
        fprintf(stderr, "rwkvd serve: %s\n", eb.msg);
        goto out;
    }
    fprintf(stderr, "rwkvd: model %s: L=%d C=%d H=%d V=%d, fingerprint %016llx, %s, %zu key(s)\n",
            srv->model_name, rk_model_n_layer(srv->model), rk_model_n_embd(srv->model),
            rk_model_n_head(srv->model), V, (unsigned long long)rk_model_fingerprint(srv->model),
            rk_tok_is_bytes(srv->tok) ? "byte tokenizer" : "World tokenizer",
            rk_auth_n_keys(srv->auth));
    rk_api_health_register(srv);
    rk_api_web_register(srv);
    rk_api_generate_register(srv);
    rk_api_states_register(srv);
    /* --- tuning jobs (jobs.c, api_jobs.c): recover the journal, start the
     * worker, register the routes; stopped right after the loop returns. */
    {
        struct rk_tjobs_limits jl;
        char jerr[256];
        rk_tjobs_limits_default(&jl);
        if (rk_tjobs_limits_from_env(&jl, jerr, sizeof jerr) != 0) {
            fprintf(stderr, "rwkvd serve: %s\n", jerr);
            goto out;
        }
        if (rk_tjobs_start(srv, &jl, &jobs, &eb) != RK_OK) {
            fprintf(stderr, "rwkvd serve: %s\n", eb.msg);
            goto out;
        }
        rk_api_jobs_register(srv, jobs);
    }
    /* --- end of tuning jobs start-up */
    rk_srv_config_print(&srv->cfg, stderr);
    status = rk_srv_run(srv);
    srv->listen_fd = -1; /* rk_srv_run took it and closed it */
    rk_tjobs_stop(jobs); /* tuning jobs: interrupt (resumable) and join the worker */
    if (status == 0)
        fprintf(stderr, "rwkvd: stopped\n");
out:
    if (srv->listen_fd >= 0)
        close(srv->listen_fd); /* still ours: rk_srv_run never ran */
    rk_tjobs_free(jobs); /* tuning jobs */
    rk_store_free(srv->store);
    rk_auth_free(srv->auth);
    rk_teacher_free(srv->judge);
    rk_teacher_free(srv->teacher);
    rk_tenant_window_free(srv->judge_budget);
    rk_tenant_window_free(srv->ttt_budget);
    rk_tok_free(srv->tok);
    rk_model_free(srv->model);
    rk_metrics_free(&srv->metrics);
    free(srv->routes);
    free(srv);
    if (lock_fd >= 0)
        close(lock_fd); /* the process ends next; this is for the tests that fork */
    return status;
}

/*
 * serve.c - `rwkvd serve`: configuration, start-up order, shutdown order.
 *
 * Start-up: seed jansson's hash (before any thread), parse the config, load
 * the model and tokenizer, the API keys and the state store, register the
 * routes, then hand over to the loop (http.c), which starts the engine and
 * prints "listening on http://HOST:PORT". Shutdown runs in reverse once the
 * loop returns after SIGTERM/SIGINT and the drain.
 */
#include "cmd.h"
#include "jobs.h" /* tuning jobs (jobs.c, api_jobs.c) */
#include "rk_config.h"
#include "srv.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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

int rk_cmd_serve(int argc, char **argv)
{
    json_object_seed(0); // before any thread exists (RELIABILITY.md 4)
    struct rk_srv *srv = calloc(1, sizeof *srv);
    if (!srv)
        return 1;
    int rc = rk_srv_config_parse(&srv->cfg, argc, argv);
    if (rc != 0) {
        free(srv);
        return rc > 0 ? 0 : 2;
    }
    int status = 1;
    struct rk_errbuf eb = {0};
    struct rk_jobs *jobs = NULL; /* tuning jobs: worker + journal (jobs.c) */
    signal(SIGPIPE, SIG_IGN);
    rk_log_set(log_line, NULL);
    rk_srv_config_print(&srv->cfg, stderr);

    struct rk_srv_config *c = &srv->cfg;
    if (rk_model_load(c->model, NULL, &srv->model, &eb) != RK_OK) {
        fprintf(stderr, "rwkvd serve: %s\n", eb.msg[0] ? eb.msg : "cannot load the model");
        goto out;
    }
    int V = rk_model_n_vocab(srv->model);
    if (c->vocab) {
        if (rk_tok_load_world(c->vocab, &srv->tok, &eb) != RK_OK) {
            fprintf(stderr, "rwkvd serve: %s\n", eb.msg);
            goto out;
        }
    } else if (V >= 256 && V < 65536) {
        // Too small for the World vocabulary: bytes are the only sensible
        // reading (ids >= 256 then decode to nothing).
        if (V != 256)
            fprintf(stderr, "rwkvd: warning: no --vocab; using the byte tokenizer for a model "
                    "with %d tokens\n", V);
        rk_tok_create_bytes(&srv->tok);
    } else {
        fprintf(stderr, "rwkvd serve: the model has %d tokens; give its vocabulary with "
                "--vocab\n", V);
        goto out;
    }
    if (!srv->tok || rk_tok_n_vocab(srv->tok) > (size_t)V) {
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
    if (c->api_keys) {
        char err[512] = "";
        if (rk_auth_load(c->api_keys, &srv->auth, err, sizeof err) != RK_OK) {
            fprintf(stderr, "rwkvd serve: %s\n", err);
            goto out;
        }
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
        struct rk_jobs_limits jl;
        char jerr[256];
        rk_jobs_limits_default(&jl);
        if (rk_jobs_limits_from_env(&jl, jerr, sizeof jerr) != 0) {
            fprintf(stderr, "rwkvd serve: %s\n", jerr);
            goto out;
        }
        if (rk_jobs_start(srv, &jl, &jobs, &eb) != RK_OK) {
            fprintf(stderr, "rwkvd serve: %s\n", eb.msg);
            goto out;
        }
        rk_api_jobs_register(srv, jobs);
    }
    /* --- end of tuning jobs start-up */
    status = rk_srv_run(srv);
    rk_jobs_stop(jobs); /* tuning jobs: interrupt (resumable) and join the worker */
    if (status == 0)
        fprintf(stderr, "rwkvd: stopped\n");
out:
    rk_jobs_free(jobs); /* tuning jobs */
    rk_store_free(srv->store);
    rk_auth_free(srv->auth);
    rk_tok_free(srv->tok);
    rk_model_free(srv->model);
    rk_metrics_free(&srv->metrics);
    free(srv->routes);
    free(srv);
    return status;
}

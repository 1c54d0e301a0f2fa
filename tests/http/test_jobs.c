/*
 * test_jobs.c - end-to-end tests of tuning jobs over HTTP (server/jobs.c,
 * server/api_jobs.c): submit -> poll -> succeeded -> the published state
 * equals an offline rk_tune_run with the same data and parameters and
 * changes generation; dataset and parameter validation; cancel while
 * queued, running and finished; SSE event streams; kill -9 and restart
 * (resume from the checkpoint, bit-identical to an uninterrupted run; start
 * again without one; fail after repeated interruptions); inference latency
 * while a job runs; tenant isolation; uploaded files.
 *
 * Each test runs `rwkvd serve` (rk_cmd_serve from server_lib) in a forked
 * child process on 127.0.0.1, port 0, like test_http.c, so kill -9 is a
 * real crash of the server process. Model: tests/data/rand-mh.safetensors
 * (byte tokenizer). The task: after 4-9 random letters and " -> " the
 * answer is "kiwi" (tests/unit/test_tune.c); 20-30 steps learn it.
 */
#include "check_common.h"
#include "http_client.h"
#include "cmd.h"
#include "dataset_jsonl.h"
#include "rk_adapters.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* --- server process ------------------------------------------------------------ */

struct server {
    pid_t pid;
    int port;
    char dir[512];
};

static void new_dir(char *out, size_t cap)
{
    static int seq;
    snprintf(out, cap, "%s/jobs-%d-%d", rk_test_tmpdir(), (int)getpid(), seq++);
}

/* Start rwkvd serve on data directory `dir` with extra arguments and
 * environment assignments ("NAME=VALUE", applied in the child only). */
static struct server start_in(const char *dir, const char *const *extra, const char *const *env)
{
    struct server s = {0};
    snprintf(s.dir, sizeof s.dir, "%s", dir);
    const char *argv[64];
    int argc = 0;
    argv[argc++] = "serve";
    argv[argc++] = "--model";
    argv[argc++] = rk_test_data("rand-mh.safetensors");
    argv[argc++] = "--port";
    argv[argc++] = "0";
    argv[argc++] = "--threads";
    argv[argc++] = "1";
    argv[argc++] = "--data-dir";
    argv[argc++] = s.dir;
    for (int i = 0; extra && extra[i] && argc < 62; i++)
        argv[argc++] = extra[i];
    argv[argc] = NULL;
    int p[2];
    ck_assert_int_eq(pipe(p), 0);
    fflush(NULL);
    s.pid = fork();
    ck_assert_int_ge(s.pid, 0);
    if (s.pid == 0) {
        dup2(p[1], 1);
        close(p[0]);
        close(p[1]);
        for (int i = 0; env && env[i]; i++)
            putenv((char *)env[i]);
        if (!getenv("RK_TEST_SERVER_LOG")) {
            char log[600];
            snprintf(log, sizeof log, "%s.log", s.dir);
            FILE *f = freopen(log, "a", stderr);
            (void)f;
        }
        _exit(rk_cmd_serve(argc, (char **)argv));
    }
    close(p[1]);
    char line[256];
    size_t n = 0;
    int64_t t0 = now_ms();
    while (n < sizeof line - 1 && now_ms() - t0 < 20000) {
        struct pollfd pf = {p[0], POLLIN, 0};
        if (poll(&pf, 1, 200) <= 0)
            continue;
        ssize_t r = read(p[0], line + n, 1);
        if (r <= 0)
            break;
        if (line[n] == '\n')
            break;
        n++;
    }
    line[n] = 0;
    close(p[0]);
    const char *colon = strrchr(line, ':');
    ck_assert_msg(strstr(line, "listening on http://127.0.0.1:") && colon,
                  "server did not start: '%s'", line);
    s.port = atoi(colon + 1);
    return s;
}

#define ARGS(...) ((const char *const[]){__VA_ARGS__, NULL})

static struct server start_server(const char *const *extra, const char *const *env)
{
    char dir[512];
    new_dir(dir, sizeof dir);
    return start_in(dir, extra, env);
}

static int stop_server(struct server *s)
{
    if (s->pid <= 0)
        return 0;
    kill(s->pid, SIGTERM);
    int st = 0;
    for (int i = 0; i < 600; i++) {
        pid_t r = waitpid(s->pid, &st, WNOHANG);
        if (r == s->pid) {
            s->pid = 0;
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        }
        usleep(50000);
    }
    kill(s->pid, SIGKILL);
    waitpid(s->pid, &st, 0);
    s->pid = 0;
    return -1;
}

static void crash_server(struct server *s)
{
    kill(s->pid, SIGKILL);
    int st;
    waitpid(s->pid, &st, 0);
    s->pid = 0;
}

/* --- a small HTTP client -------------------------------------------------------- */

/* --- jobs helpers ------------------------------------------------------------------ */

/* The kiwi task as JSONL (n records, seeded). */
static char *kiwi_jsonl(uint64_t seed, int n)
{
    size_t cap = (size_t)n * 80 + 1, len = 0;
    char *out = malloc(cap);
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 7;
    for (int i = 0; i < n; i++) {
        char pre[16];
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        int k = 4 + (int)(x % 6);
        for (int c = 0; c < k; c++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            pre[c] = (char)('a' + x % 26);
        }
        pre[k] = 0;
        len += (size_t)snprintf(out + len, cap - len,
                                "{\"prompt\":\"\\n%s -> \",\"completion\":\"kiwi\"}\n", pre);
    }
    return out;
}

/* A JSON string literal of `s`. */
static char *json_quote(const char *s)
{
    json_t *j = json_string(s);
    char *out = json_dumps(j, JSON_ENCODE_ANY);
    json_decref(j);
    return out;
}

/* POST /tune with the kiwi data; extra is more JSON fields (",\"steps\":20"). */
static struct resp tune(int port, const char *hdrs, const char *state, const char *extra)
{
    char *data = kiwi_jsonl(1, 40);
    char *q = json_quote(data);
    size_t cap = strlen(q) + 512;
    char *body = malloc(cap);
    snprintf(body, cap, "{\"dataset\":%s,\"output_state\":\"%s\",\"seed\":3%s}", q, state,
             extra ? extra : "");
    struct resp r = post(port, "/tune", hdrs, body);
    free(body), free(q), free(data);
    return r;
}

static json_t *body_json(const struct resp *r)
{
    json_t *j = json_loads(r->body, 0, NULL);
    ck_assert_msg(j != NULL, "not JSON (%d): %s", r->status, r->body);
    return j;
}

/* Submit and return the job id (static buffer per call slot). */
static const char *submit(int port, const char *hdrs, const char *state, const char *extra)
{
    static char ids[8][32];
    static int slot;
    struct resp r = tune(port, hdrs, state, extra);
    ck_assert_msg(r.status == 202, "POST /tune: %d %s", r.status, r.body);
    json_t *j = body_json(&r);
    char *id = ids[slot++ % 8];
    snprintf(id, 32, "%s", json_string_value(json_object_get(j, "id")));
    ck_assert(!strncmp(id, "ftjob-", 6));
    ck_assert_str_eq(json_string_value(json_object_get(j, "status")), "queued");
    ck_assert_str_eq(json_string_value(json_object_get(j, "method")), "standard");
    json_decref(j);
    resp_free(&r);
    return id;
}

static json_t *job_get(int port, const char *hdrs, const char *id)
{
    char path[96];
    snprintf(path, sizeof path, "/jobs/%s", id);
    struct resp r = get(port, path, hdrs);
    ck_assert_msg(r.status == 200, "GET %s: %d %s", path, r.status, r.body);
    json_t *j = body_json(&r);
    resp_free(&r);
    return j;
}

static const char *jstr(json_t *j, const char *k)
{
    const char *s = json_string_value(json_object_get(j, k));
    return s ? s : "";
}

static double jnum(json_t *j, const char *k) { return json_number_value(json_object_get(j, k)); }

/* Poll until the job's status is `want` (or a final status); returns the job. */
static json_t *wait_status(int port, const char *hdrs, const char *id, const char *want,
                           int timeout_ms)
{
    int64_t t0 = now_ms();
    for (;;) {
        json_t *j = job_get(port, hdrs, id);
        const char *st = jstr(j, "status");
        if (!strcmp(st, want))
            return j;
        bool final = !strcmp(st, "succeeded") || !strcmp(st, "failed") ||
                     !strcmp(st, "cancelled");
        ck_assert_msg(!final && now_ms() - t0 < timeout_ms, "job %s: status %s (waiting for %s)",
                      id, st, want);
        json_decref(j);
        usleep(50000);
    }
}

static long wait_step(int port, const char *hdrs, const char *id, long step, int timeout_ms)
{
    int64_t t0 = now_ms();
    for (;;) {
        json_t *j = job_get(port, hdrs, id);
        long s = (long)jnum(j, "step");
        const char *st = jstr(j, "status");
        bool running = !strcmp(st, "running");
        json_decref(j);
        if (running && s >= step)
            return s;
        ck_assert_msg(now_ms() - t0 < timeout_ms, "job %s: step %ld, status %s", id, s, st);
        usleep(20000);
    }
}

static struct rk_model *test_model(void)
{
    static struct rk_model *m;
    if (!m)
        ck_assert_int_eq(rk_model_load(rk_test_data("rand-mh.safetensors"), NULL, &m, NULL),
                         RK_OK);
    return m;
}

/* The offline result: the kiwi data through rk_jsonl_parse and rk_tune_run
 * with the server's defaults, `steps` and seed 3, on one thread. */
static float *offline_tune(long steps)
{
    struct rk_model *m = test_model();
    struct rk_tokenizer *tok = NULL;
    ck_assert_int_eq(rk_tok_create_bytes(&tok), RK_OK);
    struct rk_dataset *ds = NULL;
    ck_assert_int_eq(rk_dataset_create(&ds), RK_OK);
    char *data = kiwi_jsonl(1, 40);
    ck_assert_int_eq(rk_jsonl_parse(data, strlen(data), tok, NULL, ds, NULL), RK_OK);
    struct rk_tune_params tp;
    rk_tune_params_default(&tp);
    tp.steps = steps;
    tp.seed = 3;
    tp.n_threads = 1;
    float *st = malloc(rk_state_len(m) * sizeof(float));
    ck_assert_int_eq(rk_tune_run(m, &tp, ds, NULL, NULL, NULL, NULL, st, NULL), RK_OK);
    free(data);
    rk_dataset_free(ds);
    rk_tok_free(tok);
    return st;
}

static float *served_state(int port, const char *hdrs, const char *id)
{
    char path[128];
    snprintf(path, sizeof path, "/states/%s/file", id);
    struct resp r = get(port, path, hdrs);
    ck_assert_int_eq(r.status, 200);
    struct rk_model *m = test_model();
    float *st = malloc(rk_state_len(m) * sizeof(float));
    struct rk_state_meta meta;
    ck_assert_int_eq(rk_state_file_parse(r.body, r.body_len, m, true, st, &meta, NULL), RK_OK);
    ck_assert_str_eq(meta.method, "standard");
    resp_free(&r);
    return st;
}

static void assert_same_state(const float *a, const float *b)
{
    size_t n = rk_state_len(test_model());
    size_t bad = 0;
    for (size_t i = 0; i < n; i++)
        bad += memcmp(&a[i], &b[i], sizeof(float)) != 0;
    ck_assert_msg(bad == 0, "%zu of %zu state elements differ (max diff %g)", bad, n,
                  rk_max_abs_diff(a, b, n));
}

static char *gen(int port, const char *hdrs, const char *state)
{
    char body[256];
    snprintf(body, sizeof body,
             "{\"prompt\":\"\\nqwzrt -> \",\"max_tokens\":4,\"temperature\":0%s%s%s}",
             state ? ",\"state\":\"" : "", state ? state : "", state ? "\"" : "");
    struct resp r = post(port, "/generate", hdrs, body);
    ck_assert_msg(r.status == 200, "%d %s", r.status, r.body);
    json_t *j = body_json(&r);
    char *text = strdup(jstr(j, "text"));
    json_decref(j);
    resp_free(&r);
    return text;
}

static bool file_exists(const char *dir, const char *id, const char *ext)
{
    char p[700];
    snprintf(p, sizeof p, "%s/jobs/%s%s", dir, id, ext);
    return access(p, F_OK) == 0;
}

/* --- tests -------------------------------------------------------------------- */

START_TEST(test_submit_poll_publish)
{
    struct server s = start_server(NULL, NULL);
    char *base = gen(s.port, NULL, NULL);
    const char *id = submit(s.port, NULL, "kiwi", ",\"steps\":24");
    json_t *j = wait_status(s.port, NULL, id, "succeeded", 60000);
    ck_assert_int_eq((int)jnum(j, "step"), 24);
    ck_assert_int_eq((int)jnum(j, "steps"), 24);
    ck_assert(json_is_null(json_object_get(j, "error")));
    json_t *res = json_object_get(j, "result");
    ck_assert_str_eq(jstr(res, "state"), "kiwi");
    ck_assert_int_eq((int)json_integer_value(json_object_get(res, "version")), 1);
    ck_assert_str_eq(jstr(res, "model"), "rand-mh:kiwi");
    double v0 = jnum(j, "val_loss_init"), v1 = jnum(j, "val_loss_best");
    // Held-out loss must fall a lot on this task (9 nats -> well under 1).
    ck_assert_msg(v0 > 5 && v1 < 1.0, "val loss %g -> %g", v0, v1);
    ck_assert(jnum(j, "tokens_per_s") > 0);
    json_decref(j);

    // The published state is exactly the offline run's (same code path).
    float *got = served_state(s.port, NULL, "kiwi"), *want = offline_tune(24);
    assert_same_state(got, want);
    free(got), free(want);

    // It is servable at once and changes generation: the task's answer.
    char *tuned = gen(s.port, NULL, "kiwi");
    ck_assert_msg(strcmp(tuned, base) != 0, "tuned and base both gave '%s'", base);
    ck_assert_msg(!strncmp(tuned, "kiwi", 4), "tuned state generated '%s'", tuned);
    free(tuned);
    struct resp r = post(s.port, "/v1/completions", NULL,
                         "{\"model\":\"rand-mh:kiwi\",\"prompt\":\"\\nabcde -> \","
                         "\"max_tokens\":4,\"temperature\":0}");
    ck_assert_msg(r.status == 200 && strstr(r.body, "\"text\":\"kiwi\""), "%d %s", r.status,
                  r.body);
    resp_free(&r);

    // A second job to the same id publishes version 2; GET /jobs lists both.
    const char *id2 = submit(s.port, NULL, "kiwi", ",\"steps\":3,\"val_split\":0");
    j = wait_status(s.port, NULL, id2, "succeeded", 60000);
    ck_assert_int_eq((int)json_integer_value(json_object_get(json_object_get(j, "result"),
                                                             "version")), 2);
    json_decref(j);
    r = get(s.port, "/jobs", NULL);
    ck_assert_int_eq(r.status, 200);
    j = body_json(&r);
    ck_assert_int_eq((int)json_array_size(json_object_get(j, "data")), 2);
    ck_assert_str_eq(jstr(json_array_get(json_object_get(j, "data"), 0), "id"), id2);
    json_decref(j);
    resp_free(&r);
    // Finished jobs leave no checkpoint behind.
    ck_assert(!file_exists(s.dir, id, ".ckpt") && file_exists(s.dir, id, ".json"));
    free(base);
    ck_assert_int_eq(stop_server(&s), 0);
}
END_TEST

static void expect_400(int port, const char *body, const char *needle, int status)
{
    struct resp r = post(port, "/tune", NULL, body);
    ck_assert_msg(r.status == status && strstr(r.body, needle), "%s -> %d %s (want %d, '%s')",
                  body, r.status, r.body, status, needle);
    resp_free(&r);
}

START_TEST(test_validation)
{
    struct server s = start_server(
        NULL, ARGS("RWKVD_JOB_MAX_SEQ_TOKENS=64", "RWKVD_JOB_MAX_EXAMPLES=50",
                   "RWKVD_JOB_MAX_STEPS=1000", "RWKVD_JOB_MAX_ACTIVE=2",
                   "RWKVD_JOB_MAX_DATASET_BYTES=4096"));
    const char *ok_data = "\"{\\\"text\\\":\\\"hello world\\\"}\\n{\\\"text\\\":\\\"again\\\"}\"";
    char b[8192];
    // JSONL errors name the line.
    expect_400(s.port,
               "{\"output_state\":\"x\",\"dataset\":\"{\\\"text\\\":\\\"a b\\\"}\\n\\n"
               "{\\\"prompt\\\":\\\"p\\\",\\\"completion\\\":7}\"}",
               "line 3", 400);
    expect_400(s.port, "{\"output_state\":\"x\",\"dataset\":\"{\\\"text\\\":\\\"ab\\\"}\\n{oops\"}",
               "line 2", 400);
    expect_400(s.port,
               "{\"output_state\":\"x\",\"dataset\":[{\"text\":\"ok\"},[1,2],{\"text\":\"x\"}]}",
               "line 2", 400);
    expect_400(s.port, "{\"output_state\":\"x\",\"dataset\":[{\"text\":\"ok ok\"},{\"prompt\":1}]}",
               "line 2", 400);
    // Limits: tokens per example, examples, bytes.
    char longtext[200];
    memset(longtext, 'a', 100);
    longtext[100] = 0;
    snprintf(b, sizeof b, "{\"output_state\":\"x\",\"dataset\":[{\"text\":\"ok\"},{\"text\":\"%s\"}]}",
             longtext);
    expect_400(s.port, b, "line 2", 400);
    int n = snprintf(b, sizeof b, "{\"output_state\":\"x\",\"dataset\":[");
    for (int i = 0; i < 51; i++)
        n += snprintf(b + n, sizeof b - (size_t)n, "%s{\"text\":\"ab\"}", i ? "," : "");
    snprintf(b + n, sizeof b - (size_t)n, "]}");
    expect_400(s.port, b, "line 51", 400);
    n = snprintf(b, sizeof b, "{\"output_state\":\"x\",\"dataset\":\"");
    for (int i = 0; i < 300; i++)
        n += snprintf(b + n, sizeof b - (size_t)n, "{\\\"text\\\":\\\"ab\\\"}\\n");
    snprintf(b + n, sizeof b - (size_t)n, "\"}");
    expect_400(s.port, b, "dataset_too_large", 413);
    // Fields.
    snprintf(b, sizeof b, "{\"dataset\":%s}", ok_data);
    expect_400(s.port, b, "output_state", 400);
    snprintf(b, sizeof b, "{\"output_state\":\"../x\",\"dataset\":%s}", ok_data);
    expect_400(s.port, b, "output_state", 400);
    expect_400(s.port, "{\"output_state\":\"x\"}", "exactly one", 400);
    snprintf(b, sizeof b, "{\"output_state\":\"x\",\"dataset\":%s,\"training_file\":\"file-1\"}",
             ok_data);
    expect_400(s.port, b, "exactly one", 400);
    snprintf(b, sizeof b, "{\"output_state\":\"x\",\"dataset\":%s,\"stepz\":3}", ok_data);
    expect_400(s.port, b, "unknown field", 400);
    snprintf(b, sizeof b, "{\"output_state\":\"x\",\"dataset\":%s,\"steps\":1001}", ok_data);
    expect_400(s.port, b, "\\\"steps\\\" must be an integer in [1, 1000]", 400);
    snprintf(b, sizeof b, "{\"output_state\":\"x\",\"dataset\":%s,\"steps\":2.5}", ok_data);
    expect_400(s.port, b, "steps", 400);
    snprintf(b, sizeof b, "{\"output_state\":\"x\",\"dataset\":%s,\"batch\":0}", ok_data);
    expect_400(s.port, b, "batch", 400);
    snprintf(b, sizeof b, "{\"output_state\":\"x\",\"dataset\":%s,\"lr\":-1}", ok_data);
    expect_400(s.port, b, "lr", 400);
    snprintf(b, sizeof b, "{\"output_state\":\"x\",\"dataset\":%s,\"val_split\":0.95}", ok_data);
    expect_400(s.port, b, "val_split", 400);
    snprintf(b, sizeof b, "{\"output_state\":\"x\",\"dataset\":%s,\"epochs\":2,\"steps\":3}",
             ok_data);
    expect_400(s.port, b, "not both", 400);
    snprintf(b, sizeof b, "{\"output_state\":\"x\",\"dataset\":%s,\"epochs\":100000}", ok_data);
    expect_400(s.port, b, "too_many_steps", 400);
    snprintf(b, sizeof b, "{\"output_state\":\"x\",\"dataset\":%s,\"method\":\"kernel9\"}", ok_data);
    expect_400(s.port, b, "unknown method 'kernel9' (known: standard, kernel, dbp, observer, rl)", 400);
    snprintf(b, sizeof b, "{\"output_state\":\"x\",\"dataset\":%s,\"tune_shift\":1}", ok_data);
    expect_400(s.port, b, "\\\"tune_shift\\\" must be true or false", 400);
    snprintf(b, sizeof b, "{\"output_state\":\"x\",\"dataset\":%s,\"beta1\":0.5}", ok_data);
    expect_400(s.port, b, "unknown field \\\"beta1\\\"", 400); /* a CLI-only hyperparameter */
    snprintf(b, sizeof b, "{\"output_state\":\"x\",\"dataset\":%s,\"steps\":3,"
             "\"hyperparameters\":{\"steps\":4}}", ok_data);
    expect_400(s.port, b, "given twice", 400);
    snprintf(b, sizeof b, "{\"output_state\":\"x\",\"dataset\":%s,\"init_state\":\"nope\"}", ok_data);
    expect_400(s.port, b, "state_not_found", 404);
    expect_400(s.port, "{\"output_state\":\"x\",\"dataset\":[{\"prompt\":\"p\",\"choices\":"
               "[\"a\",\"b\"],\"answer\":0}]}", "no training examples", 400);
    expect_400(s.port, "{\"output_state\":\"x\",\"training_file\":\"file-0000000000000000\"}",
               "file_not_found", 404);
    expect_400(s.port, "{\"output_state\":\"x\",\"dataset\":[], \"dataset\":[]}", "invalid_json",
               400);

    // Epochs become steps: 2 epochs of 40 examples, 4 held out, batch 4 -> 18.
    struct resp r = tune(s.port, NULL, "e", ",\"epochs\":2,\"hyperparameters\":{\"batch\":4}");
    ck_assert_msg(r.status == 202, "%d %s", r.status, r.body);
    json_t *j = body_json(&r);
    ck_assert_int_eq((int)jnum(j, "steps"), 18);
    const char *eid = jstr(j, "id");
    char path[96];
    snprintf(path, sizeof path, "/jobs/%s/cancel", eid);
    resp_free(&r);
    r = post(s.port, path, NULL, "");
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    json_decref(j);

    // Active jobs per tenant: 2, then 429 until one ends.
    const char *a = submit(s.port, NULL, "a", ",\"steps\":1000");
    submit(s.port, NULL, "b", ",\"steps\":1000");
    r = tune(s.port, NULL, "c", ",\"steps\":5");
    ck_assert_msg(r.status == 429 && strstr(r.body, "rate_limit_error"), "%d %s", r.status,
                  r.body);
    ck_assert(strcasestr(r.head, "Retry-After:"));
    resp_free(&r);
    snprintf(path, sizeof path, "/jobs/%s/cancel", a);
    r = post(s.port, path, NULL, "");
    resp_free(&r);
    r = tune(s.port, NULL, "c", ",\"steps\":5");
    ck_assert_msg(r.status == 202, "%d %s", r.status, r.body);
    resp_free(&r);
    ck_assert_int_eq(stop_server(&s), 0);
}
END_TEST

START_TEST(test_cancel_phases)
{
    struct server s = start_server(NULL, NULL);
    char path[96];
    const char *run = submit(s.port, NULL, "run", ",\"steps\":5000");
    const char *queued = submit(s.port, NULL, "queued", ",\"steps\":5");
    wait_step(s.port, NULL, run, 2, 30000);

    // Queued: cancelled at once, never starts.
    json_t *j = job_get(s.port, NULL, queued);
    ck_assert_str_eq(jstr(j, "status"), "queued");
    ck_assert_int_eq((int)jnum(j, "queue_position"), 0);
    json_decref(j);
    snprintf(path, sizeof path, "/jobs/%s/cancel", queued);
    struct resp r = post(s.port, path, NULL, "");
    ck_assert_int_eq(r.status, 200);
    j = body_json(&r);
    ck_assert_str_eq(jstr(j, "status"), "cancelled");
    ck_assert(json_is_null(json_object_get(j, "started_ms")));
    json_decref(j);
    resp_free(&r);

    // Running: stops within one step.
    snprintf(path, sizeof path, "/jobs/%s/cancel", run);
    r = post(s.port, path, NULL, "");
    ck_assert_int_eq(r.status, 200);
    j = body_json(&r);
    ck_assert_str_eq(jstr(j, "status"), "cancelled");
    long at = (long)jnum(j, "step");
    json_decref(j);
    resp_free(&r);
    usleep(500000);
    j = job_get(s.port, NULL, run);
    ck_assert_str_eq(jstr(j, "status"), "cancelled");
    ck_assert_msg((long)jnum(j, "step") <= at + 1, "step %ld after cancel at %ld",
                  (long)jnum(j, "step"), at);
    json_decref(j);
    // Idempotent.
    r = post(s.port, path, NULL, "");
    ck_assert_int_eq(r.status, 200);
    ck_assert(strstr(r.body, "\"status\":\"cancelled\""));
    resp_free(&r);
    // The worker is free for the next job; the queued one never ran.
    const char *next = submit(s.port, NULL, "next", ",\"steps\":3,\"val_split\":0");
    json_decref(wait_status(s.port, NULL, next, "succeeded", 30000));
    j = job_get(s.port, NULL, queued);
    ck_assert_str_eq(jstr(j, "status"), "cancelled");
    ck_assert_int_eq((int)jnum(j, "step"), 0);
    json_decref(j);
    r = get(s.port, "/states/queued", NULL);
    ck_assert_int_eq(r.status, 404);
    resp_free(&r);
    r = get(s.port, "/states/run", NULL);
    ck_assert_int_eq(r.status, 404);
    resp_free(&r);
    // After the end: nothing changes.
    snprintf(path, sizeof path, "/jobs/%s/cancel", next);
    r = post(s.port, path, NULL, "");
    ck_assert_int_eq(r.status, 200);
    ck_assert(strstr(r.body, "\"status\":\"succeeded\""));
    resp_free(&r);
    r = post(s.port, "/jobs/ftjob-0123456789abcdef/cancel", NULL, "");
    ck_assert_int_eq(r.status, 404);
    resp_free(&r);
    ck_assert(!file_exists(s.dir, run, ".ckpt"));
    ck_assert_int_eq(stop_server(&s), 0);
}
END_TEST

static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

/* A copy of an SSE body without its ": keepalive" comments. */
static char *strip_keepalives(const char *body)
{
    char *out = strdup(body), *w = out;
    const char *ka = ": keepalive\n\n";
    for (const char *p = body; *p;) {
        if (!strncmp(p, ka, strlen(ka))) {
            p += strlen(ka);
            continue;
        }
        *w++ = *p++;
    }
    *w = 0;
    return out;
}

START_TEST(test_sse_events)
{
    struct server s = start_server(NULL, NULL);
    // Follow live from before the job starts: the stream ends with the job.
    const char *block = submit(s.port, NULL, "block", ",\"steps\":40,\"val_split\":0");
    const char *id = submit(s.port, NULL, "sse", ",\"steps\":15,\"eval_every\":5");
    char path[96];
    snprintf(path, sizeof path, "/jobs/%s/events", id);
    int64_t t0 = now_ms();
    struct resp r = request_t(s.port, "GET", path, NULL, NULL, 0, 60000);
    ck_assert_int_eq(r.status, 200);
    ck_assert(strcasestr(r.head, "Content-Type: text/event-stream"));
    ck_assert_msg(now_ms() - t0 < 55000, "the stream did not end with the job");
    ck_assert_int_eq(count(r.body, "event: step\n"), 15);
    ck_assert_int_eq(count(r.body, "event: eval\n"), 3);
    ck_assert(strstr(r.body, "event: status\ndata: {\"status\":\"queued\""));
    ck_assert(strstr(r.body, "\"status\":\"running\""));
    ck_assert(strstr(r.body, "\"status\":\"succeeded\""));
    ck_assert(strstr(r.body, "data: {\"step\":15,\"steps\":15,\"loss\":"));
    ck_assert(strstr(r.body, "id: 0\n"));
    const char *last = strstr(r.body, "\"status\":\"succeeded\"");
    ck_assert_msg(!strstr(last, "event:"), "events after the final status");
    char *first = strip_keepalives(r.body);
    resp_free(&r);
    // Replay after the end: the same events, then the stream closes.
    r = request_t(s.port, "GET", path, NULL, NULL, 0, 10000);
    ck_assert_msg(!strcmp(r.body, first), "the replay differs from the live stream");
    resp_free(&r);
    // Last-Event-ID resumes after that event.
    r = request_t(s.port, "GET", path, "Last-Event-ID: 3\r\n", NULL, 0, 10000);
    ck_assert(!strstr(r.body, "id: 3\n") && strstr(r.body, "id: 4\n"));
    resp_free(&r);
    free(first);
    json_t *j = job_get(s.port, NULL, block);
    ck_assert_str_eq(jstr(j, "status"), "succeeded");
    json_decref(j);
    r = get(s.port, "/jobs/ftjob-0123456789abcdef/events", NULL);
    ck_assert_int_eq(r.status, 404);
    resp_free(&r);
    // A follower of a long job does not hold up shutdown.
    const char *lng = submit(s.port, NULL, "long", ",\"steps\":5000");
    wait_step(s.port, NULL, lng, 1, 30000);
    snprintf(path, sizeof path, "GET /jobs/%s/events HTTP/1.1\r\nHost: x\r\n\r\n", lng);
    int fd = dial(s.port);
    send_all(fd, path, strlen(path));
    usleep(300000);
    t0 = now_ms();
    ck_assert_int_eq(stop_server(&s), 0);
    ck_assert_msg(now_ms() - t0 < 15000, "shutdown took %lld ms", (long long)(now_ms() - t0));
    close(fd);
}
END_TEST

START_TEST(test_restart_recovery)
{
    char dir[512];
    new_dir(dir, sizeof dir);
    struct server s = start_in(dir, NULL, NULL);
    // 1. Killed mid-run with checkpoints: resumes and ends bit-identical to an
    //    uninterrupted run.
    const char *id = submit(s.port, NULL, "resumed", ",\"steps\":60,\"checkpoint_every\":5");
    char idc[32];
    snprintf(idc, sizeof idc, "%s", id);
    wait_step(s.port, NULL, idc, 12, 60000);
    crash_server(&s);
    ck_assert(file_exists(dir, idc, ".ckpt"));
    char rec[700];
    snprintf(rec, sizeof rec, "%s/jobs/%s.json", dir, idc);
    json_t *on_disk = json_load_file(rec, 0, NULL);
    ck_assert_str_eq(jstr(on_disk, "status"), "running");
    ck_assert_str_eq(jstr(json_object_get(on_disk, "hyperparameters"), "method"), "standard");
    long ck_step = (long)json_integer_value(json_object_get(on_disk, "step"));
    json_decref(on_disk);
    ck_assert_msg(ck_step >= 10 && ck_step % 5 == 0, "journal at step %ld", ck_step);

    s = start_in(dir, NULL, NULL);
    json_t *j = job_get(s.port, NULL, idc);
    const char *st = jstr(j, "status");
    ck_assert_msg(!strcmp(st, "queued") || !strcmp(st, "running") || !strcmp(st, "succeeded"),
                  "after restart: %s", st);
    json_decref(j);
    j = wait_status(s.port, NULL, idc, "succeeded", 60000);
    ck_assert_int_eq((int)jnum(j, "attempts"), 2);
    long from = (long)jnum(j, "resumed_from_step");
    ck_assert_msg(from >= ck_step && from % 5 == 0, "resumed from %ld", from);
    json_decref(j);
    float *got = served_state(s.port, NULL, "resumed"), *want = offline_tune(60);
    assert_same_state(got, want);
    free(got), free(want);
    // The event log says so, and no step appears twice.
    char path[96];
    snprintf(path, sizeof path, "/jobs/%s/events", idc);
    struct resp r = request_t(s.port, "GET", path, NULL, NULL, 0, 10000);
    ck_assert(strstr(r.body, "resumed from the checkpoint at step"));
    ck_assert_int_eq(count(r.body, "event: step\n"), 60);
    resp_free(&r);

    // 2. Killed before its first checkpoint: starts again from step 0.
    id = submit(s.port, NULL, "again", ",\"steps\":400,\"checkpoint_every\":0");
    snprintf(idc, sizeof idc, "%s", id);
    wait_step(s.port, NULL, idc, 3, 60000);
    crash_server(&s);
    ck_assert(!file_exists(dir, idc, ".ckpt"));
    s = start_in(dir, NULL, NULL);
    wait_step(s.port, NULL, idc, 1, 60000);
    j = job_get(s.port, NULL, idc);
    ck_assert_int_eq((int)jnum(j, "resumed_from_step"), 0);
    ck_assert_int_eq((int)jnum(j, "attempts"), 2);
    json_decref(j);
    // 3. A graceful stop leaves it queued (resumable), not running.
    ck_assert_int_eq(stop_server(&s), 0);
    snprintf(rec, sizeof rec, "%s/jobs/%s.json", dir, idc);
    on_disk = json_load_file(rec, 0, NULL);
    ck_assert_str_eq(jstr(on_disk, "status"), "queued");
    // 4. Interrupted too often: failed with a reason, never stuck running.
    json_object_set_new(on_disk, "status", json_string("running"));
    json_object_set_new(on_disk, "attempts", json_integer(3));
    ck_assert_int_eq(json_dump_file(on_disk, rec, 0), 0);
    json_decref(on_disk);
    s = start_in(dir, NULL, NULL);
    j = job_get(s.port, NULL, idc);
    ck_assert_str_eq(jstr(j, "status"), "failed");
    json_t *err = json_object_get(j, "error");
    ck_assert_str_eq(jstr(err, "code"), "interrupted");
    ck_assert(strstr(jstr(err, "message"), "stopped 3 times"));
    json_decref(j);
    // 5. A checkpoint that cannot be read fails the job with the reason.
    id = submit(s.port, NULL, "badck", ",\"steps\":400,\"checkpoint_every\":2");
    snprintf(idc, sizeof idc, "%s", id);
    wait_step(s.port, NULL, idc, 4, 60000);
    crash_server(&s);
    char ck[700];
    snprintf(ck, sizeof ck, "%s/jobs/%s.ckpt", dir, idc);
    FILE *f = fopen(ck, "r+b");
    ck_assert(f != NULL);
    fputs("garbage!", f);
    fclose(f);
    s = start_in(dir, NULL, NULL);
    int64_t t0 = now_ms();
    for (;;) {
        j = job_get(s.port, NULL, idc);
        if (!strcmp(jstr(j, "status"), "failed"))
            break;
        ck_assert_msg(now_ms() - t0 < 20000, "status %s", jstr(j, "status"));
        json_decref(j);
        usleep(50000);
    }
    ck_assert_str_eq(jstr(json_object_get(j, "error"), "code"), "checkpoint_unreadable");
    json_decref(j);
    // Every job of this data directory is final or queued: none is running.
    r = get(s.port, "/jobs", NULL);
    j = body_json(&r);
    ck_assert_int_eq((int)json_array_size(json_object_get(j, "data")), 3);
    json_decref(j);
    resp_free(&r);
    ck_assert_int_eq(stop_server(&s), 0);
}
END_TEST

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* p50 of the total time of `n` sequential /generate requests. */
static int64_t p50_generate(int port, int n)
{
    int64_t t[64];
    for (int i = 0; i < n; i++) {
        int64_t t0 = now_ms();
        struct resp r = post(port, "/generate", NULL,
                             "{\"prompt\":\"Hello there\",\"max_tokens\":48,\"temperature\":0}");
        t[i] = now_ms() - t0;
        ck_assert_msg(r.status == 200, "%d %s", r.status, r.body);
        resp_free(&r);
    }
    qsort(t, (size_t)n, sizeof t[0], cmp_i64);
    return t[n / 2];
}

START_TEST(test_inference_while_tuning)
{
    struct server s = start_server(NULL, NULL);
    p50_generate(s.port, 3); // warm up
    int64_t base = p50_generate(s.port, 15);
    const char *id = submit(s.port, NULL, "busy", ",\"steps\":100000");
    long before = wait_step(s.port, NULL, id, 2, 30000);
    int64_t busy = p50_generate(s.port, 15);
    fprintf(stderr, "test_jobs: p50 /generate (48 tokens) %lld ms idle, %lld ms with a job\n",
            (long long)base, (long long)busy);
    // The worker yields while the engine has work: the bound is +30% with a
    // few ms of slack for timer granularity on a loaded machine.
    if (!rk_test_slow()) // no latency bound holds under sanitizers
        ck_assert_msg(busy <= base * 13 / 10 + 8, "p50 %lld ms with a job vs %lld ms idle",
                      (long long)busy, (long long)base);
    // ...and still makes progress between requests.
    long after = wait_step(s.port, NULL, id, before + 2, 30000);
    ck_assert(after >= before + 2);
    ck_assert_int_eq(stop_server(&s), 0);
}
END_TEST

static const char *write_keys(void)
{
    static char path[600];
    snprintf(path, sizeof path, "%s/jobs-keys.txt", rk_test_tmpdir());
    FILE *f = fopen(path, "w");
    fputs("key-aaaaaaaa alice\nkey-bbbbbbbb bob\n", f);
    fclose(f);
    return path;
}

/* multipart/form-data with a purpose and a file. */
static struct resp upload(int port, const char *hdrs, const char *purpose, const char *content)
{
    const char *bnd = "----rkTestBoundary7MA4YWxk";
    size_t cap = strlen(content) + 1024;
    char *body = malloc(cap);
    int n = snprintf(body, cap,
                     "--%s\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n%s\r\n"
                     "--%s\r\nContent-Disposition: form-data; name=\"file\"; "
                     "filename=\"train.jsonl\"\r\nContent-Type: application/jsonl\r\n\r\n%s\r\n"
                     "--%s--\r\n",
                     bnd, purpose, bnd, content, bnd);
    char h[512];
    snprintf(h, sizeof h, "%sContent-Type: multipart/form-data; boundary=%s\r\n",
             hdrs ? hdrs : "", bnd);
    struct resp r = request(port, "POST", "/v1/files", h, body, (size_t)n);
    free(body);
    return r;
}

START_TEST(test_tenants_and_files)
{
    struct server s = start_server(ARGS("--api-keys", write_keys()), NULL);
    const char *A = "Authorization: Bearer key-aaaaaaaa\r\n", *B = "X-Api-Key: key-bbbbbbbb\r\n";
    struct resp r = get(s.port, "/jobs", NULL);
    ck_assert_int_eq(r.status, 401);
    resp_free(&r);

    // Files: upload (validated), list, get, content.
    r = upload(s.port, A, "fine-tune", "{\"text\":\"ok\"}\n{\"prompt\":\"p\"}\n");
    ck_assert_msg(r.status == 400 && strstr(r.body, "line 2"), "%d %s", r.status, r.body);
    resp_free(&r);
    r = upload(s.port, A, "assistants", "{\"text\":\"ok\"}\n");
    ck_assert_msg(r.status == 400 && strstr(r.body, "purpose"), "%d %s", r.status, r.body);
    resp_free(&r);
    r = request(s.port, "POST", "/v1/files", A, "{}", 2);
    ck_assert_int_eq(r.status, 400);
    resp_free(&r);
    char *data = kiwi_jsonl(1, 40);
    r = upload(s.port, A, "fine-tune", data);
    ck_assert_msg(r.status == 200, "%d %s", r.status, r.body);
    json_t *f = body_json(&r);
    char fid[32];
    snprintf(fid, sizeof fid, "%s", jstr(f, "id"));
    ck_assert_str_eq(jstr(f, "object"), "file");
    ck_assert_str_eq(jstr(f, "purpose"), "fine-tune");
    ck_assert_str_eq(jstr(f, "filename"), "train.jsonl");
    ck_assert_int_eq((int)jnum(f, "bytes"), (int)strlen(data));
    json_decref(f);
    resp_free(&r);
    char path[128];
    snprintf(path, sizeof path, "/v1/files/%s/content", fid);
    r = get(s.port, path, A);
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(r.body, data);
    resp_free(&r);
    r = get(s.port, "/v1/files", A);
    ck_assert(strstr(r.body, fid));
    resp_free(&r);

    // A job from the file (native API), by alice.
    char body[256];
    snprintf(body, sizeof body, "{\"training_file\":\"%s\",\"output_state\":\"mine\","
             "\"steps\":2000}", fid);
    r = post(s.port, "/tune", A, body);
    ck_assert_msg(r.status == 202, "%d %s", r.status, r.body);
    json_t *j = body_json(&r);
    char jid[32];
    snprintf(jid, sizeof jid, "%s", jstr(j, "id"));
    ck_assert_str_eq(jstr(json_object_get(j, "dataset"), "training_file"), fid);
    json_decref(j);
    resp_free(&r);

    // Bob sees none of it: the same 404 as for a missing id.
    r = get(s.port, "/jobs", B);
    ck_assert_int_eq(r.status, 200);
    ck_assert(strstr(r.body, "\"data\":[]"));
    resp_free(&r);
    r = get(s.port, "/v1/fine_tuning/jobs", B);
    ck_assert(strstr(r.body, "\"data\":[]"));
    resp_free(&r);
    r = get(s.port, "/v1/files", B);
    ck_assert(strstr(r.body, "\"data\":[]"));
    resp_free(&r);
    const char *fmts[] = {"/jobs/%s", "/jobs/%s/events", "/v1/fine_tuning/jobs/%s",
                          "/v1/fine_tuning/jobs/%s/events"};
    for (int i = 0; i < 4; i++) {
        snprintf(path, sizeof path, fmts[i], jid);
        r = get(s.port, path, B);
        ck_assert_msg(r.status == 404, "%s: %d", path, r.status);
        resp_free(&r);
        snprintf(path, sizeof path, fmts[i], "ftjob-0000000000000000");
        r = get(s.port, path, A);
        ck_assert_msg(r.status == 404, "%s: %d", path, r.status);
        resp_free(&r);
    }
    snprintf(path, sizeof path, "/jobs/%s/cancel", jid);
    r = post(s.port, path, B, "");
    ck_assert_int_eq(r.status, 404);
    resp_free(&r);
    snprintf(path, sizeof path, "/v1/fine_tuning/jobs/%s/cancel", jid);
    r = post(s.port, path, B, "");
    ck_assert_int_eq(r.status, 404);
    resp_free(&r);
    snprintf(path, sizeof path, "/v1/files/%s", fid);
    r = get(s.port, path, B);
    ck_assert_int_eq(r.status, 404);
    resp_free(&r);
    r = request(s.port, "DELETE", path, B, NULL, 0);
    ck_assert_int_eq(r.status, 404);
    resp_free(&r);
    r = post(s.port, "/tune", B, body); // alice's file id
    ck_assert_msg(r.status == 404 && strstr(r.body, "file_not_found"), "%d %s", r.status, r.body);
    resp_free(&r);
    snprintf(body, sizeof body, "{\"training_file\":\"%s\",\"model\":\"rand-mh\"}", fid);
    r = post(s.port, "/v1/fine_tuning/jobs", B, body);
    ck_assert_int_eq(r.status, 404);
    resp_free(&r);
    // Alice's job is still running; she cancels it and deletes the file.
    j = job_get(s.port, A, jid);
    ck_assert(strcmp(jstr(j, "status"), "cancelled"));
    json_decref(j);
    snprintf(path, sizeof path, "/jobs/%s/cancel", jid);
    r = post(s.port, path, A, "");
    ck_assert(strstr(r.body, "\"status\":\"cancelled\""));
    resp_free(&r);
    snprintf(path, sizeof path, "/v1/files/%s", fid);
    r = request(s.port, "DELETE", path, A, NULL, 0);
    ck_assert_msg(r.status == 200 && strstr(r.body, "\"deleted\":true"), "%d %s", r.status,
                  r.body);
    resp_free(&r);
    r = get(s.port, path, A);
    ck_assert_int_eq(r.status, 404);
    resp_free(&r);

    // OpenAI job shape, from a new upload.
    r = upload(s.port, A, "fine-tune", data);
    f = body_json(&r);
    snprintf(fid, sizeof fid, "%s", jstr(f, "id"));
    json_decref(f);
    resp_free(&r);
    // method.type: supervised or a tuning method; anything else lists them.
    snprintf(body, sizeof body, "{\"training_file\":\"%s\",\"model\":\"rand-mh\","
             "\"method\":{\"type\":\"dpo\"}}", fid);
    r = post(s.port, "/v1/fine_tuning/jobs", A, body);
    ck_assert_msg(r.status == 400 && strstr(r.body, "unknown method type 'dpo'") &&
                      strstr(r.body, "standard"),
                  "%d %s", r.status, r.body);
    resp_free(&r);
    // The OpenAI hyperparameters come from the same table as the native ones.
    static const char *const bad_hp[][2] = {
        {"{\"n_epochs\":\"x\"}", "must be a number or \\\"auto\\\""},
        {"{\"learning_rate_multiplier\":0}", "must be a number in (0, 100]"},
        {"{\"batch_size\":0}", "\\\"batch\\\" must be an integer in [1, "},
        {"{\"lr\":1}", "unknown field \\\"lr\\\""},
    };
    for (size_t i = 0; i < sizeof bad_hp / sizeof bad_hp[0]; i++) {
        snprintf(body, sizeof body, "{\"training_file\":\"%s\",\"model\":\"rand-mh\","
                 "\"hyperparameters\":%s}", fid, bad_hp[i][0]);
        r = post(s.port, "/v1/fine_tuning/jobs", A, body);
        ck_assert_msg(r.status == 400 && strstr(r.body, bad_hp[i][1]), "%s -> %d %s",
                      bad_hp[i][0], r.status, r.body);
        resp_free(&r);
    }
    snprintf(body, sizeof body, "{\"training_file\":\"%s\",\"model\":\"rand-mh\",\"suffix\":"
             "\"oa\",\"seed\":3,\"hyperparameters\":{\"n_epochs\":1,\"batch_size\":4}}", fid);
    r = post(s.port, "/v1/fine_tuning/jobs", A, body);
    ck_assert_msg(r.status == 200, "%d %s", r.status, r.body);
    j = body_json(&r);
    ck_assert_str_eq(jstr(j, "object"), "fine_tuning.job");
    ck_assert_str_eq(jstr(j, "model"), "rand-mh");
    ck_assert(json_is_null(json_object_get(j, "fine_tuned_model")));
    snprintf(jid, sizeof jid, "%s", jstr(j, "id"));
    json_decref(j);
    resp_free(&r);
    int64_t t0 = now_ms();
    for (;;) {
        snprintf(path, sizeof path, "/v1/fine_tuning/jobs/%s", jid);
        r = get(s.port, path, A);
        j = body_json(&r);
        resp_free(&r);
        if (!strcmp(jstr(j, "status"), "succeeded"))
            break;
        ck_assert_msg(now_ms() - t0 < 60000, "status %s", jstr(j, "status"));
        json_decref(j);
        usleep(50000);
    }
    ck_assert_str_eq(jstr(j, "fine_tuned_model"), "rand-mh:oa");
    ck_assert(json_integer_value(json_object_get(j, "trained_tokens")) > 0);
    ck_assert_int_eq((int)json_integer_value(json_object_get(json_object_get(j, "hyperparameters"),
                                                             "n_epochs")), 1);
    json_decref(j);
    snprintf(path, sizeof path, "/v1/fine_tuning/jobs/%s/events?limit=3", jid);
    r = get(s.port, path, A);
    ck_assert_msg(strstr(r.body, "\"object\":\"fine_tuning.job.event\"") &&
                      strstr(r.body, "\"has_more\":true") && strstr(r.body, "succeeded"),
                  "%s", r.body);
    resp_free(&r);
    // The state is alice's only.
    r = post(s.port, "/v1/completions", B, "{\"model\":\"rand-mh:oa\",\"prompt\":\"x\","
             "\"max_tokens\":2}");
    ck_assert_int_eq(r.status, 404);
    resp_free(&r);
    r = post(s.port, "/v1/completions", A, "{\"model\":\"rand-mh:oa\",\"prompt\":\"x\","
             "\"max_tokens\":2}");
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    free(data);
    ck_assert_int_eq(stop_server(&s), 0);
}
END_TEST

/* Datasets from 256 KiB on are validated on the thread pool while the
 * request waits; the answers must be the same as for small ones, and a
 * client that leaves meanwhile must not disturb the server. */
START_TEST(test_large_dataset)
{
    // (--job-max-steps also shows that a job flag wins over its variable)
    struct server s = start_server(ARGS("--max-body-bytes", "4194304", "--job-max-steps", "2000"),
                                   ARGS("RWKVD_JOB_MAX_STEPS=1000"));
    struct resp r0 = tune(s.port, NULL, "flagged", ",\"steps\":2001");
    ck_assert_msg(r0.status == 400 && strstr(r0.body, "[1, 2000]"), "%d %s", r0.status, r0.body);
    resp_free(&r0);
    enum { N = 8000 }; /* about 360 KB of JSONL */
    char *data = kiwi_jsonl(5, N);
    ck_assert_uint_gt(strlen(data), (size_t)300000);
    // A bad last line: 400 naming it.
    size_t dl = strlen(data);
    char *bad = malloc(dl + 64);
    snprintf(bad, dl + 64, "%s{\"prompt\":\"p\",\"completion\":7}\n", data);
    char *q = json_quote(bad);
    size_t cap = strlen(q) + 256;
    char *body = malloc(cap);
    snprintf(body, cap, "{\"dataset\":%s,\"output_state\":\"big\",\"steps\":1}", q);
    struct resp r = post(s.port, "/tune", NULL, body);
    ck_assert_msg(r.status == 400 && strstr(r.body, "line 8001"), "%d %s", r.status, r.body);
    resp_free(&r);
    free(q);
    // Valid: accepted, with every example counted.
    q = json_quote(data);
    snprintf(body, cap, "{\"dataset\":%s,\"output_state\":\"big\",\"steps\":1}", q);
    r = post(s.port, "/tune", NULL, body);
    ck_assert_msg(r.status == 202, "%d %s", r.status, r.body);
    json_t *j = body_json(&r);
    json_t *ds = json_object_get(j, "dataset");
    ck_assert_msg(ds && (int)json_integer_value(json_object_get(ds, "examples")) == N, "%s",
                  r.body);
    json_decref(j);
    resp_free(&r);
    // The same through /v1/files and a fine-tuning job from the file.
    r = upload(s.port, NULL, "fine-tune", data);
    ck_assert_msg(r.status == 200, "%d %s", r.status, r.body);
    j = body_json(&r);
    char fb[256];
    snprintf(fb, sizeof fb, "{\"training_file\":\"%s\",\"model\":\"rand-mh\",\"hyperparameters\":"
             "{\"n_epochs\":1}}", jstr(j, "id"));
    json_decref(j);
    resp_free(&r);
    r = post(s.port, "/v1/fine_tuning/jobs", NULL, fb);
    ck_assert_msg(r.status == 200, "%d %s", r.status, r.body);
    resp_free(&r);
    // Clients that send a large dataset and leave at once, several times:
    // the server stays up and answers.
    char head[256];
    size_t bl = strlen(body);
    snprintf(head, sizeof head, "POST /tune HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
             "\r\nContent-Length: %zu\r\n\r\n", bl);
    for (int i = 0; i < 5; i++) {
        int fd = dial(s.port);
        send_all(fd, head, strlen(head));
        send_all(fd, body, bl);
        close(fd);
    }
    ck_assert_int_eq(get_status(s.port, "/health", NULL), 200);
    ck_assert_int_eq(get_status(s.port, "/jobs", NULL), 200);
    free(q), free(body), free(bad), free(data);
    ck_assert_int_eq(stop_server(&s), 0);
}
END_TEST

/* Collateral protection over HTTP: a job with kl_weight runs, journals its KL
 * settings, and publishes exactly what rk_tune_run gives offline with the
 * bundled generic text; out-of-range values are 400s of the usual vocabulary. */
START_TEST(test_kl_job)
{
    struct server s = start_server(NULL, NULL);
    expect_400(s.port, "{\"output_state\":\"k\",\"kl_weight\":-1,\"dataset\":[{\"text\":\"ab\"}]}",
               "out_of_range", 400);
    expect_400(s.port, "{\"output_state\":\"k\",\"kl_batch\":0,\"dataset\":[{\"text\":\"ab\"}]}",
               "out_of_range", 400);
    const char *id = submit(s.port, NULL, "kiwi", ",\"steps\":5,\"kl_weight\":0.5,\"kl_topk\":16");
    json_t *j = wait_status(s.port, NULL, id, "succeeded", 60000);
    json_t *hp = json_object_get(j, "hyperparameters");
    ck_assert_msg(hp && jnum(hp, "kl_weight") == 0.5 && jnum(hp, "kl_topk") == 16 &&
                      jnum(hp, "kl_batch") == 1, "hyperparameters of the job");
    json_decref(j);
    char path[96];
    snprintf(path, sizeof path, "/jobs/%s/events", id);
    struct resp ev = get(s.port, path, NULL);
    ck_assert_msg(ev.status == 200 && strstr(ev.body, "\"kl\":"), "events: %d %s", ev.status,
                  ev.body);
    resp_free(&ev);
    float *got = served_state(s.port, NULL, "kiwi");

    struct rk_model *m = test_model();
    struct rk_tokenizer *tok = NULL;
    ck_assert_int_eq(rk_tok_create_bytes(&tok), RK_OK);
    struct rk_dataset *ds = NULL, *kds = NULL;
    ck_assert_int_eq(rk_dataset_create(&ds), RK_OK);
    char *data = kiwi_jsonl(1, 40);
    ck_assert_int_eq(rk_jsonl_parse(data, strlen(data), tok, NULL, ds, NULL), RK_OK);
    ck_assert_int_eq(rk_generic_dataset(tok, &kds), RK_OK);
    struct rk_tune_params tp;
    rk_tune_params_default(&tp);
    tp.steps = 5;
    tp.seed = 3;
    tp.n_threads = 1;
    tp.kl_weight = 0.5;
    tp.kl_topk = 16;
    tp.kl_data = kds;
    float *want = malloc(rk_state_len(m) * sizeof(float)), *plain = offline_tune(5);
    ck_assert_int_eq(rk_tune_run(m, &tp, ds, NULL, NULL, NULL, NULL, want, NULL), RK_OK);
    assert_same_state(got, want);
    // and the KL term did something: the state differs from the run without it
    ck_assert(rk_max_abs_diff(want, plain, rk_state_len(m)) > 0);
    free(got), free(want), free(plain), free(data);
    rk_dataset_free(ds);
    rk_dataset_free(kds);
    rk_tok_free(tok);
    ck_assert_int_eq(stop_server(&s), 0);
}
END_TEST

RK_TEST_SUITE(jobs_suite, RK_SELF_CONTAINED)
{
    signal(SIGPIPE, SIG_IGN);
    Suite *s = suite_create("jobs");
    TCase *tc = tcase_create("jobs");
    tcase_set_timeout(tc, 240);
    const char *only = getenv("RK_JOBS_ONLY"); // run one test by name while debugging
#define ADD(t)                                                                                     \
    if (!only || !strcmp(only, #t))                                                                \
        tcase_add_test(tc, t);
    ADD(test_submit_poll_publish)
    ADD(test_validation)
    ADD(test_cancel_phases)
    ADD(test_sse_events)
    ADD(test_restart_recovery)
    ADD(test_inference_while_tuning)
    ADD(test_tenants_and_files)
    ADD(test_large_dataset)
    ADD(test_kl_job)
#undef ADD
    suite_add_tcase(s, tc);
    return s;
}

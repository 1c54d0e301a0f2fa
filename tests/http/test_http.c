/*
 * test_http.c - end-to-end tests of `rwkvd serve` over real sockets.
 *
 * Each test starts the real server (rk_cmd_serve from server_lib) in a
 * forked child on 127.0.0.1 with port 0, reads "listening on http://...:PORT"
 * from its stdout, talks HTTP through a small blocking client written for
 * these tests (so that malformed requests can be sent byte for byte), and
 * stops it with SIGTERM, checking the exit status. Model: tests/data/
 * rand-mh.safetensors (V=384, served with the byte tokenizer).
 */
#include "check_common.h"
#include "http_client.h"
#include "cmd.h"
#include "http/state_fixture.h"
#include "rk_adapters.h"
#include "srv.h" /* rk_http_status_of */

#include <arpa/inet.h>
#include <jansson.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* --- server process -------------------------------------------------------- */

struct server {
    pid_t pid;
    int port;
    char dir[512];
};

/* Start rwkvd serve with the given extra arguments (NULL-terminated). */
static struct server start_server_v(const char *const *extra)
{
    struct server s = {0};
    static int seq;
    snprintf(s.dir, sizeof s.dir, "%s/data-%d-%d", rk_test_tmpdir(), (int)getpid(), seq++);
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
        if (!getenv("RK_TEST_SERVER_LOG")) {
            char log[600];
            snprintf(log, sizeof log, "%s.log", s.dir);
            FILE *f = freopen(log, "w", stderr);
            (void)f;
            setvbuf(stderr, NULL, _IOLBF, 0); // the child ends with _exit: no flush

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

#define START(...) start_server_v((const char *const[]){__VA_ARGS__, NULL})

/* SIGTERM and wait; returns the exit status (or -1 after a timeout). */
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

/* --- a small HTTP client ----------------------------------------------------- */

/* Send raw bytes, return the response. */
static struct resp raw(int port, const char *bytes, size_t n)
{
    int fd = dial(port);
    ck_assert_int_ge(fd, 0);
    send_all(fd, bytes, n);
    struct resp r = read_resp(fd, 10000);
    close(fd);
    return r;
}

/* Extract the token ids from a native response with "logprobs": 0, in
 * order (both the non-streaming JSON and the SSE events carry "token":N). */
static int tokens_of(const char *body, uint32_t *out, int cap)
{
    int n = 0;
    for (const char *p = body; (p = strstr(p, "\"token\":")) && n < cap; p += 8)
        out[n++] = (uint32_t)strtoul(p + 8, NULL, 10);
    return n;
}

/* All "logprob":V values of a response, concatenated (a signature that
 * changes with the initial state even where greedy tokens do not). */
static char *lp_sig(const char *body)
{
    size_t cap = strlen(body) + 1, n = 0;
    char *out = malloc(cap);
    out[0] = 0;
    for (const char *p = body; (p = strstr(p, "\"logprob\":")); p += 10) {
        size_t k = strcspn(p + 10, ",}]");
        memcpy(out + n, p + 10, k);
        n += k;
        out[n++] = ' ';
        out[n] = 0;
    }
    return out;
}

/* --- states helpers ---------------------------------------------------------- */

static struct rk_model *test_model(void)
{
    static struct rk_model *m;
    if (!m)
        ck_assert_int_eq(rk_model_load(rk_test_data("rand-mh.safetensors"), NULL, &m, NULL),
                         RK_OK);
    return m;
}

static void put_state(int port, const char *hdrs, const char *id, uint64_t seed, int want)
{
    struct rk_model *m = test_model();
    float *st = malloc(rk_state_len(m) * 4);
    fx_random_state(m, seed, st);
    void *buf;
    size_t len;
    ck_assert_int_eq(rk_state_file_encode(m, st, NULL, &buf, &len), RK_OK);
    char path[128];
    snprintf(path, sizeof path, "/states/%s", id);
    struct resp r = request(port, "PUT", path, hdrs, buf, len);
    ck_assert_msg(r.status == want, "PUT %s: %d %s", id, r.status, r.body);
    resp_free(&r);
    free(buf);
    free(st);
}

static const char *GEN_FMT = "{\"prompt\":\"Hello there\",\"max_tokens\":%d,\"temperature\":0,"
                             "\"logprobs\":0%s%s%s}";

static char *gen_body(int max_tokens, const char *state, bool stream)
{
    static char b[512];
    char st[128] = "";
    if (state)
        snprintf(st, sizeof st, ",\"state\":\"%s\"", state);
    snprintf(b, sizeof b, GEN_FMT, max_tokens, st, stream ? ",\"stream\":true" : "", "");
    return b;
}

/* --- tests ----------------------------------------------------------------- */

START_TEST(test_basic_routes)
{
    struct server s = START("--health-public");
    struct resp r = get(s.port, "/health", NULL);
    ck_assert_int_eq(r.status, 200);
    ck_assert(strstr(r.body, "\"status\":\"ok\""));
    resp_free(&r);

    r = post(s.port, "/generate", NULL, gen_body(8, NULL, false));
    ck_assert_msg(r.status == 200, "%d %s", r.status, r.body);
    ck_assert(strstr(r.body, "\"finish_reason\":\"length\""));
    ck_assert(strstr(r.body, "\"completion_tokens\":8"));
    resp_free(&r);

    r = post(s.port, "/generate", NULL, gen_body(5, NULL, true));
    ck_assert_int_eq(r.status, 200);
    ck_assert(strcasestr(r.head, "Content-Type: text/event-stream"));
    ck_assert(strstr(r.body, "data: {\"index\":0,"));
    ck_assert(strstr(r.body, "\"done\":true"));
    resp_free(&r);

    // OpenAI completions, streaming with usage and [DONE]
    r = post(s.port, "/v1/completions", NULL,
             "{\"model\":\"rand-mh\",\"prompt\":\"abc\",\"max_tokens\":4,\"stream\":true,"
             "\"stream_options\":{\"include_usage\":true}}");
    ck_assert_int_eq(r.status, 200);
    ck_assert(strstr(r.body, "\"object\":\"text_completion\""));
    ck_assert(strstr(r.body, "\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4"));
    ck_assert(strstr(r.body, "data: [DONE]\n\n"));
    ck_assert_msg(strlen(strstr(r.body, "data: [DONE]")) == 14, "[DONE] must be last");
    resp_free(&r);

    // chat, n=2, logprobs
    r = post(s.port, "/v1/chat/completions", NULL,
             "{\"model\":\"rand-mh\",\"messages\":[{\"role\":\"system\",\"content\":\"x\"},"
             "{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":3,\"n\":2,\"logprobs\":true,"
             "\"top_logprobs\":2,\"seed\":1}");
    ck_assert_msg(r.status == 200, "%d %s", r.status, r.body);
    ck_assert(strstr(r.body, "\"object\":\"chat.completion\""));
    ck_assert(strstr(r.body, "\"index\":1"));
    ck_assert(strstr(r.body, "\"top_logprobs\":[{"));
    // "System: x\n\nUser: hi\n\nAssistant:" is 31 bytes = 31 byte tokens
    ck_assert_msg(strstr(r.body, "\"prompt_tokens\":31"), "%s", r.body);
    resp_free(&r);

    r = post(s.port, "/v1/chat/completions", NULL,
             "{\"model\":\"rand-mh\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
             "\"max_tokens\":3,\"stream\":true}");
    ck_assert_int_eq(r.status, 200);
    ck_assert(strstr(r.body, "\"object\":\"chat.completion.chunk\""));
    ck_assert(strstr(r.body, "\"delta\":{\"role\":\"assistant\""));
    ck_assert(strstr(r.body, "\"finish_reason\":\"length\""));
    ck_assert(strstr(r.body, "data: [DONE]"));
    resp_free(&r);

    r = get(s.port, "/v1/models", NULL);
    ck_assert_int_eq(r.status, 200);
    ck_assert(strstr(r.body, "\"id\":\"rand-mh\""));
    resp_free(&r);
    r = get(s.port, "/v1/models/rand-mh", NULL);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);

    r = get(s.port, "/metrics", NULL);
    ck_assert_int_eq(r.status, 200);
    ck_assert(strstr(r.body, "rwkvd_http_requests_total{route=\"/generate\",code=\"200\"} 2"));
    ck_assert(strstr(r.body, "rwkvd_time_to_first_token_seconds_bucket"));
    ck_assert(strstr(r.body, "rwkvd_token_latency_seconds_count"));
    ck_assert(strstr(r.body, "rwkvd_adapter_cache_hits_total"));
    ck_assert(strstr(r.body, "rwkvd_queue_depth 0"));
    resp_free(&r);

    r = get(s.port, "/nope", NULL);
    ck_assert_int_eq(r.status, 404);
    ck_assert(strstr(r.body, "\"error\":{\"message\""));
    resp_free(&r);
    r = request(s.port, "DELETE", "/generate", NULL, NULL, 0);
    ck_assert_int_eq(r.status, 405);
    ck_assert(strcasestr(r.head, "Allow: POST"));
    resp_free(&r);
    ck_assert_int_eq(stop_server(&s), 0);
}
END_TEST

START_TEST(test_states_crud)
{
    struct server s = START("--max-state-bytes", "64M");
    put_state(s.port, NULL, "alpha", 1, 201);
    put_state(s.port, NULL, "alpha", 2, 200); // replace -> version 2
    struct resp r = get(s.port, "/states/alpha", NULL);
    ck_assert_int_eq(r.status, 200);
    ck_assert_msg(strstr(r.body, "\"version\":2"), "%s", r.body);
    resp_free(&r);
    r = get(s.port, "/states", NULL);
    ck_assert(strstr(r.body, "\"id\":\"alpha\""));
    resp_free(&r);

    // the file comes back byte for byte as the store wrote it, and parses
    r = get(s.port, "/states/alpha/file", NULL);
    ck_assert_int_eq(r.status, 200);
    struct rk_model *m = test_model();
    float *a = malloc(rk_state_len(m) * 4), *b = malloc(rk_state_len(m) * 4);
    ck_assert_int_eq(rk_state_file_parse(r.body, r.body_len, m, true, a, NULL, NULL), RK_OK);
    fx_random_state(m, 2, b);
    ck_assert(memcmp(a, b, rk_state_len(m) * 4) == 0);
    resp_free(&r);

    // .pth import (RWKV-PEFT layout, bf16)
    void *pth;
    size_t plen;
    fx_build_pth(m, b, true, &pth, &plen);
    r = request(s.port, "PUT", "/states/peft", NULL, pth, plen);
    ck_assert_msg(r.status == 201, "%d %s", r.status, r.body);
    ck_assert(strstr(r.body, "\"method\":\"import-pth\""));
    resp_free(&r);
    // ?from names the source: an ai00 state file is safetensors, not a .pth
    // (the import itself: test_state_store.c); an unknown source is a 400
    r = request(s.port, "PUT", "/states/peft2?from=ai00", NULL, pth, plen);
    ck_assert_msg(r.status == 422 && strstr(r.body, ".pth archive"), "%d %s", r.status, r.body);
    resp_free(&r);
    r = request(s.port, "PUT", "/states/peft2?from=gguf", NULL, pth, plen);
    ck_assert_msg(r.status == 400 && strstr(r.body, "\"param\":\"from\""), "%d %s", r.status,
                  r.body);
    resp_free(&r);
    free(pth);

    // a state made for another model is refused with 422
    struct rk_model *m2 = NULL;
    ck_assert_int_eq(rk_model_load(rk_test_data("rand-mh-bf16.safetensors"), NULL, &m2, NULL),
                     RK_OK);
    float *z = calloc(rk_state_len(m2), 4);
    void *other;
    size_t olen;
    ck_assert_int_eq(rk_state_file_encode(m2, z, NULL, &other, &olen), RK_OK);
    r = request(s.port, "PUT", "/states/other", NULL, other, olen);
    ck_assert_msg(r.status == 422, "%d %s", r.status, r.body);
    resp_free(&r);
    free(other);
    free(z);
    rk_model_free(m2);

    // garbage and bad ids
    r = request(s.port, "PUT", "/states/junk", NULL, "not a state file", 16);
    ck_assert_int_eq(r.status, 422);
    resp_free(&r);
    r = request(s.port, "PUT", "/states/Bad.Id", NULL, "x", 1);
    ck_assert_int_eq(r.status, 400);
    resp_free(&r);
    r = get(s.port, "/states/..", NULL);
    ck_assert_int_eq(r.status, 404);
    resp_free(&r);

    // generate with the state; OpenAI model "<base>:<state>" too
    r = post(s.port, "/generate", NULL, gen_body(4, "alpha", false));
    ck_assert_int_eq(r.status, 200);
    ck_assert(strstr(r.body, "\"state\":\"alpha\""));
    resp_free(&r);
    r = post(s.port, "/v1/completions", NULL,
             "{\"model\":\"rand-mh:alpha\",\"prompt\":\"x\",\"max_tokens\":2}");
    ck_assert_int_eq(r.status, 200);
    ck_assert(strstr(r.body, "\"model\":\"rand-mh:alpha\""));
    resp_free(&r);
    r = get(s.port, "/v1/models", NULL);
    ck_assert(strstr(r.body, "\"id\":\"rand-mh:alpha\""));
    ck_assert(strstr(r.body, "\"id\":\"rand-mh:peft\""));
    resp_free(&r);
    r = post(s.port, "/v1/completions", NULL,
             "{\"model\":\"rand-mh:missing\",\"prompt\":\"x\",\"max_tokens\":2}");
    ck_assert_int_eq(r.status, 404);
    ck_assert(strstr(r.body, "\"code\":\"model_not_found\""));
    resp_free(&r);
    r = post(s.port, "/v1/completions", NULL,
             "{\"model\":\"gpt-4\",\"prompt\":\"x\",\"max_tokens\":2}");
    ck_assert_int_eq(r.status, 404);
    resp_free(&r);

    r = request(s.port, "DELETE", "/states/alpha", NULL, NULL, 0);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    r = get(s.port, "/states/alpha", NULL);
    ck_assert_int_eq(r.status, 404);
    resp_free(&r);
    r = request(s.port, "DELETE", "/states/alpha", NULL, NULL, 0);
    ck_assert_int_eq(r.status, 404);
    resp_free(&r);
    free(a);
    free(b);
    ck_assert_int_eq(stop_server(&s), 0);
}
END_TEST

struct gen_arg {
    int port;
    const char *hdrs;
    const char *body;
    struct resp r;
};

static void *gen_thread(void *p)
{
    struct gen_arg *g = p;
    g->r = post(g->port, "/generate", g->hdrs, g->body);
    return NULL;
}

static char *write_keys(void)
{
    static char path[600];
    snprintf(path, sizeof path, "%s/keys-%d.txt", rk_test_tmpdir(), (int)getpid());
    const char *k = "# test keys\nkey-aaaaaaaa alice\nkey-bbbbbbbb bob\n";
    ck_assert_int_eq(rk_test_write_file(path, k, strlen(k)), 0);
    return path;
}

START_TEST(test_tenants_concurrent)
{
    /* two compute threads: batches of 4 or more are sampled in parallel */
    struct server s = START("--api-keys", write_keys(), "--threads", "2");
    const char *A = "Authorization: Bearer key-aaaaaaaa\r\n", *B = "X-Api-Key: key-bbbbbbbb\r\n";
    // No key / wrong key: 401 on every route.
    struct resp r = get(s.port, "/health", NULL);
    ck_assert_int_eq(r.status, 401);
    resp_free(&r);
    r = post(s.port, "/generate", "Authorization: Bearer key-aaaaaaab\r\n", gen_body(2, NULL, 0));
    ck_assert_int_eq(r.status, 401);
    resp_free(&r);
    r = get(s.port, "/metrics", NULL);
    ck_assert_int_eq(r.status, 401);
    resp_free(&r);

    // Same id, different content per tenant; a private id of bob's.
    put_state(s.port, A, "s", 101, 201);
    put_state(s.port, B, "s", 202, 201);
    put_state(s.port, B, "bobonly", 303, 201);
    r = get(s.port, "/states/bobonly", A);
    ck_assert_int_eq(r.status, 404);
    char *b404 = strdup(r.body);
    resp_free(&r);
    r = get(s.port, "/states/nosuch", A);
    ck_assert_int_eq(r.status, 404);
    resp_free(&r);
    free(b404);
    r = post(s.port, "/generate", A, gen_body(2, "bobonly", false));
    ck_assert_int_eq(r.status, 404);
    resp_free(&r);
    r = get(s.port, "/states", A);
    ck_assert(!strstr(r.body, "bobonly"));
    resp_free(&r);

    // Solo greedy runs.
    uint32_t solo_a[64], solo_b[64], ta[64], tb[64];
    char body_a[512], body_b[512];
    snprintf(body_a, sizeof body_a, "%s", gen_body(48, "s", false));
    snprintf(body_b, sizeof body_b, "%s", gen_body(48, "s", false));
    r = post(s.port, "/generate", A, body_a);
    ck_assert_int_eq(r.status, 200);
    int na = tokens_of(r.body, solo_a, 64);
    char *sig_a = lp_sig(r.body);
    resp_free(&r);
    r = post(s.port, "/generate", B, body_b);
    int nb = tokens_of(r.body, solo_b, 64);
    char *sig_b = lp_sig(r.body);
    resp_free(&r);
    ck_assert_int_eq(na, 48);
    ck_assert_int_eq(nb, 48);
    ck_assert_msg(strcmp(sig_a, sig_b), "different states must give different distributions");

    // Concurrently, several times, 2 and then 6 requests at once (3 per
    // tenant): each equals its solo run, tokens and logprobs.
    for (int round = 0; round < 4; round++) {
        enum { MAXG = 6 };
        int ng = round < 2 ? 2 : MAXG;
        struct gen_arg g[MAXG];
        pthread_t t[MAXG];
        for (int i = 0; i < ng; i++) {
            g[i] = (struct gen_arg){s.port, i % 2 ? B : A, i % 2 ? body_b : body_a, {0}};
            pthread_create(&t[i], NULL, gen_thread, &g[i]);
        }
        for (int i = 0; i < ng; i++)
            pthread_join(t[i], NULL);
        for (int i = 0; i < ng; i++) {
            uint32_t *tt = i % 2 ? tb : ta, *solo = i % 2 ? solo_b : solo_a;
            ck_assert_int_eq(g[i].r.status, 200);
            ck_assert_int_eq(tokens_of(g[i].r.body, tt, 64), 48);
            int d = 0;
            while (d < 48 && tt[d] == solo[d])
                d++;
            ck_assert_msg(d == 48, "tenant %c differs from its solo run at %d (round %d): %s",
                          i % 2 ? 'b' : 'a', d, round, g[i].r.body);
            char *c = lp_sig(g[i].r.body);
            ck_assert_msg(!strcmp(c, i % 2 ? sig_b : sig_a),
                          "batched logprobs differ from the solo run (round %d)", round);
            free(c);
            resp_free(&g[i].r);
        }
    }
    free(sig_a);
    free(sig_b);
    ck_assert_int_eq(stop_server(&s), 0);
}
END_TEST

START_TEST(test_state_replaced_during_generation)
{
    struct server s = START("--max-tokens", "100000");
    put_state(s.port, NULL, "v", 11, 201);
    // Solo run with version 1, long enough to overlap the replace.
    const int T = 1500;
    char body[512];
    snprintf(body, sizeof body, "%s", gen_body(T, "v", true));
    struct resp r = post(s.port, "/generate", NULL, body);
    ck_assert_int_eq(r.status, 200);
    uint32_t *solo = malloc(T * 4), *got = malloc(T * 4);
    ck_assert_int_eq(tokens_of(r.body, solo, T), T);
    char *solo_sig = lp_sig(r.body);
    resp_free(&r);

    // Stream with version 1; replace the state after the first event.
    int fd = dial(s.port);
    char head[1024];
    int hn = snprintf(head, sizeof head, "POST /generate HTTP/1.1\r\nHost: x\r\nConnection: "
                      "close\r\nContent-Length: %zu\r\n\r\n%s", strlen(body), body);
    send_all(fd, head, (size_t)hn);
    char first[256];
    ssize_t k = recv(fd, first, sizeof first, 0);
    ck_assert_int_gt(k, 0);
    put_state(s.port, NULL, "v", 12, 200);
    // the whole response: the bytes already read, then the rest, with the
    // chunked framing removed over the whole (a chunk may end inside an event)
    struct resp rest = read_resp_after(fd, first, (size_t)k, 60000);
    close(fd);
    ck_assert_int_eq(rest.status, 200);
    const char *all = rest.body;
    int n = tokens_of(all, got, T);
    ck_assert_int_eq(n, T);
    ck_assert_msg(!memcmp(got, solo, (size_t)T * 4), "a replace changed a running generation");
    char *sig = lp_sig(all);
    ck_assert_msg(!strcmp(sig, solo_sig), "a replace changed a running generation's logprobs");
    free(sig);
    resp_free(&rest);
    // A new request sees version 2.
    snprintf(body, sizeof body, "%s", gen_body(T, "v", true));
    r = post(s.port, "/generate", NULL, body);
    sig = lp_sig(r.body);
    ck_assert_msg(strcmp(sig, solo_sig), "new requests must use the new version");
    free(sig);
    free(solo_sig);
    resp_free(&r);
    free(solo);
    free(got);
    ck_assert_int_eq(stop_server(&s), 0);
}
END_TEST

START_TEST(test_hostile_requests)
{
    struct server s = START("--max-body-bytes", "4096", "--max-n", "4", "--max-logprobs", "5",
                            "--max-tokens", "100", "--max-prompt-tokens", "64");
    const struct {
        const char *body;
        int status;
    } cases[] = {
        {"{\"prompt\":\"a\",\"max_tokens\":1,\"max_tokens\":99999}", 400}, // duplicate key
        {"{\"prompt\":\"a\",\"max_tokens\":1e30}", 400},
        {"{\"prompt\":\"a\",\"max_tokens\":99999999999999999999999}", 400},
        {"{\"prompt\":\"a\",\"max_tokens\":101}", 400},
        {"{\"prompt\":\"a\",\"max_tokens\":0}", 400},
        {"{\"prompt\":\"a\",\"n\":-1}", 400},
        {"{\"prompt\":\"a\",\"n\":5}", 400},
        {"{\"prompt\":\"a\",\"logprobs\":6}", 400},
        {"{\"prompt\":\"a\",\"temperature\":-0.5}", 400},
        {"{\"prompt\":\"a\",\"temperature\":\"hot\"}", 400},
        {"{\"prompt\":\"a\",\"top_p\":0}", 400},
        {"{\"prompt\":\"a\",\"top_k\":-3}", 400},
        {"{\"prompt\":\"a\",\"logit_bias\":{\"999\":1}}", 400},
        {"{\"prompt\":\"a\",\"logit_bias\":{\"-1\":1}}", 400},
        {"{\"prompt\":\"a\",\"stop\":[1,2]}", 400},
        {"{\"prompt\":\"\"}", 400},
        {"{\"prompt\":12}", 400},
        {"{\"prompt\":[1,2,99999]}", 400},
        {"{\"prompt\":\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"}",
         400}, // 74 tokens > 64
        {"{\"prompt\":\"a\",\"state\":\"../../etc\"}", 404},
        {"{\"prompt\":\"a\"", 400},
        {"[1,2,3]", 400},
        {"", 400},
        {"{\"prompt\":\"a\",\"max_tokens\":2}", 200},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct resp r = post(s.port, "/generate", NULL, cases[i].body);
        ck_assert_msg(r.status == cases[i].status, "case %zu (%s): got %d %s", i, cases[i].body,
                      r.status, r.body);
        if (r.status >= 400)
            ck_assert_msg(strstr(r.body, "\"error\":{\"message\":") &&
                              strstr(r.body, "\"type\":"),
                          "case %zu: not an error object: %s", i, r.body);
        resp_free(&r);
    }
    // Oversized body: 413 from Content-Length alone.
    char *big = malloc(8192);
    memset(big, ' ', 8192);
    big[0] = '{';
    big[8191] = '}';
    struct resp r = request(s.port, "POST", "/generate", NULL, big, 8192);
    ck_assert_int_eq(r.status, 413);
    resp_free(&r);
    // Chunked upload past the cap: 413 or a closed connection, never accepted.
    {
        int fd = dial(s.port);
        const char *h = "POST /generate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
        send_all(fd, h, strlen(h));
        for (int c = 0; c < 4; c++) {
            char ch[16];
            int n = snprintf(ch, sizeof ch, "%x\r\n", 2048);
            send_all(fd, ch, (size_t)n);
            send_all(fd, big, 2048);
            send_all(fd, "\r\n", 2);
        }
        send_all(fd, "0\r\n\r\n", 5);
        struct resp cr = read_resp(fd, 5000);
        close(fd);
        ck_assert_msg(cr.status == 413 || cr.status == 0, "chunked over cap: %d", cr.status);
        resp_free(&cr);
    }
    free(big);
    // Smuggling-prone framing.
    const char *dup_cl = "POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                         "Content-Length: 40\r\nConnection: close\r\n\r\n{}";
    r = raw(s.port, dup_cl, strlen(dup_cl));
    ck_assert_msg(r.status == 400, "two Content-Length: %d", r.status);
    resp_free(&r);
    const char *cl_te = "POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
                        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n";
    r = raw(s.port, cl_te, strlen(cl_te));
    ck_assert_msg(r.status == 400, "CL + TE: %d", r.status);
    resp_free(&r);
    const char nul_path[] = "GET /hea\0lth HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    r = raw(s.port, nul_path, sizeof nul_path - 1);
    ck_assert_msg(r.status == 400 || r.status == 0, "raw NUL in path: %d", r.status);
    resp_free(&r);
    r = get(s.port, "/states/a%00b", NULL);
    ck_assert_int_eq(r.status, 404);
    resp_free(&r);
    // The server is still fine.
    r = get(s.port, "/health", NULL);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    ck_assert_int_eq(stop_server(&s), 0);
}
END_TEST

static long metric(int port, const char *name)
{
    struct resp r = get(port, "/metrics", NULL);
    char key[128];
    snprintf(key, sizeof key, "\n%s ", name);
    const char *p = r.body ? strstr(r.body, key) : NULL;
    long v = p ? strtol(p + strlen(key), NULL, 10) : -1;
    resp_free(&r);
    return v;
}

START_TEST(test_disconnect_mid_stream)
{
    struct server s = START("--max-tokens", "1000000");
    const char *body = "{\"prompt\":\"abc\",\"max_tokens\":1000000,\"stream\":true}";
    int fd = dial(s.port);
    char head[512];
    int hn = snprintf(head, sizeof head, "POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: "
                      "%zu\r\n\r\n%s", strlen(body), body);
    send_all(fd, head, (size_t)hn);
    char buf[4096];
    ck_assert_int_gt(recv(fd, buf, sizeof buf, 0), 0);
    // The response head can go out before the engine admits the job (a busy
    // machine): wait for the sequence to run before hanging up.
    int64_t t0 = now_ms();
    while (metric(s.port, "rwkvd_active_sequences") != 1 && now_ms() - t0 < 5000)
        usleep(5000);
    ck_assert_int_eq(metric(s.port, "rwkvd_active_sequences"), 1);
    close(fd);
    t0 = now_ms();
    while (metric(s.port, "rwkvd_active_sequences") != 0 && now_ms() - t0 < 5000)
        usleep(10000);
    ck_assert_int_eq(metric(s.port, "rwkvd_active_sequences"), 0);
    ck_assert_int_eq(metric(s.port, "rwkvd_sequences_canceled_total"), 1);

    // Same for a non-streaming request (suspended while the client leaves).
    body = "{\"prompt\":\"abc\",\"max_tokens\":1000000}";
    fd = dial(s.port);
    hn = snprintf(head, sizeof head, "POST /generate HTTP/1.1\r\nHost: x\r\nContent-Length: "
                  "%zu\r\n\r\n%s", strlen(body), body);
    send_all(fd, head, (size_t)hn);
    t0 = now_ms();
    while (metric(s.port, "rwkvd_active_sequences") != 1 && now_ms() - t0 < 5000)
        usleep(5000);
    close(fd);
    t0 = now_ms();
    while (metric(s.port, "rwkvd_active_sequences") != 0 && now_ms() - t0 < 5000)
        usleep(10000);
    ck_assert_int_eq(metric(s.port, "rwkvd_active_sequences"), 0);
    ck_assert_int_eq(metric(s.port, "rwkvd_sequences_canceled_total"), 2);
    ck_assert_int_eq(stop_server(&s), 0);
}
END_TEST

START_TEST(test_sigterm_drain)
{
    struct server s = START("--max-tokens", "100000", "--drain-timeout", "30");
    /* long enough to be in flight at the signal, short enough to finish
     * within the drain timeout (instrumented builds run it 5-10x slower) */
    int n_tok = rk_test_slow() ? 300 : 3000;
    char body[128];
    snprintf(body, sizeof body, "{\"prompt\":\"abc\",\"max_tokens\":%d,\"logprobs\":0}", n_tok);
    struct gen_arg g = {s.port, NULL, body, {0}};
    pthread_t t;
    pthread_create(&t, NULL, gen_thread, &g);
    int64_t t0 = now_ms();
    while (metric(s.port, "rwkvd_active_sequences") != 1 && now_ms() - t0 < 5000)
        usleep(2000);
    kill(s.pid, SIGTERM);
    usleep(100000);
    // No new connections once draining.
    int fd = dial(s.port);
    if (fd >= 0) {
        const char *h = "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
        send_all(fd, h, strlen(h));
        struct resp r = read_resp(fd, 2000);
        ck_assert_msg(r.status == 0 || r.status == 503, "accepted while draining: %d", r.status);
        resp_free(&r);
        close(fd);
    }
    pthread_join(t, NULL);
    ck_assert_msg(g.r.status == 200, "in-flight request: %d %s", g.r.status, g.r.body);
    uint32_t *toks = malloc(3000 * 4);
    ck_assert_int_eq(tokens_of(g.r.body, toks, 3000), n_tok);
    free(toks);
    resp_free(&g.r);
    int st = 0;
    for (int i = 0; i < 200 && waitpid(s.pid, &st, WNOHANG) == 0; i++)
        usleep(50000);
    ck_assert(WIFEXITED(st));
    ck_assert_int_eq(WEXITSTATUS(st), 0);
    s.pid = 0;
}
END_TEST

START_TEST(test_connection_burst)
{
    // RELIABILITY.md 1: a burst of half-open clients over the limit, all
    // closing, must not lock the server up.
    struct server s = START("--conn-limit", "8", "--conn-timeout", "2");
    int fds[64];
    for (int i = 0; i < 64; i++) {
        fds[i] = dial(s.port);
        if (fds[i] >= 0)
            send_all(fds[i], "GET /health HTTP/1.1\r\nHost: x\r\n", 30);
    }
    usleep(200000);
    for (int i = 0; i < 64; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    int64_t t0 = now_ms();
    int status = 0;
    while (now_ms() - t0 < 10000) {
        struct resp r = get(s.port, "/health", NULL);
        status = r.status;
        resp_free(&r);
        if (status == 200)
            break;
        usleep(100000);
    }
    ck_assert_int_eq(status, 200);
    // Half-open clients that stay are timed out; the server keeps answering.
    for (int i = 0; i < 16; i++) {
        fds[i] = dial(s.port);
        if (fds[i] >= 0)
            send_all(fds[i], "GET /health HTTP/1.1\r\n", 22);
    }
    t0 = now_ms();
    status = 0;
    while (now_ms() - t0 < 15000) {
        struct resp r = get(s.port, "/health", NULL);
        status = r.status;
        resp_free(&r);
        if (status == 200)
            break;
        usleep(200000);
    }
    ck_assert_int_eq(status, 200);
    for (int i = 0; i < 16; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    // Responses announce the idle timeout, so keep-alive clients stop
    // reusing a connection before the server closes it, and it does close
    // an idle one about then.
    int fd = dial(s.port);
    ck_assert_int_ge(fd, 0);
    const char *get_health = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
    send_all(fd, get_health, strlen(get_health));
    t0 = now_ms();
    struct resp r = read_resp(fd, 6000); /* returns at EOF or after 6 s */
    int64_t idle = now_ms() - t0;
    close(fd);
    ck_assert_int_eq(r.status, 200);
    ck_assert_msg(strcasestr(r.head, "Keep-Alive: timeout=2") != NULL, "head: %s", r.head);
    ck_assert_msg(idle >= 1500 && idle < 5000, "idle connection closed after %lld ms",
                  (long long)idle);
    resp_free(&r);
    ck_assert_int_eq(stop_server(&s), 0);
}
END_TEST

/* /health through a fresh connection within `ms`; returns the status (0 if
 * no answer came in time). */
static int health_within(int port, int ms)
{
    struct resp r = request_t(port, "GET", "/health", NULL, NULL, 0, ms);
    int st = r.status;
    resp_free(&r);
    return st;
}

START_TEST(test_connection_flood)
{
    // Issue 12 item 2: a burst of half-header clients far over --conn-limit,
    // held and then all closed, with the idle timeout left at its default
    // (30 s), so only the accept path (eviction, reaping) can keep /health
    // answering. Before it, the server stayed silent until the timeout.
    struct server s = START("--conn-limit", "16");
    enum { N = 300 };
    static int fds[N];
    const char *half = "GET /health HTTP/1.1\r\nHost: flood\r\n";
    for (int i = 0; i < N; i++) {
        fds[i] = dial(s.port);
        if (fds[i] >= 0)
            send_all(fds[i], half, strlen(half));
    }
    // During the flood: every probe answered within 2 s.
    for (int k = 0; k < 3; k++)
        ck_assert_int_eq(health_within(s.port, 2000), 200);
    for (int i = 0; i < N; i++)
        if (fds[i] >= 0)
            close(fds[i]);
    // After everyone closed: at once, and again a little later.
    for (int k = 0; k < 5; k++) {
        ck_assert_int_eq(health_within(s.port, 2000), 200);
        usleep(100000);
    }
    long evicted = metric(s.port, "rwkvd_connections_evicted_total"),
         refused = metric(s.port, "rwkvd_connections_refused_total"),
         reaped = metric(s.port, "rwkvd_connections_reaped_total");
    fprintf(stderr, "flood: evicted %ld refused %ld reaped %ld\n", evicted, refused, reaped);
    ck_assert_int_gt(evicted, N - 16 - 5);
    ck_assert_int_eq(refused, 0);

    // Data and FIN arriving together (clients that closed before the server
    // read them; here while the server is stopped) are invisible to MHD's
    // edge-triggered reads; the reaper closes them within about a second.
    kill(s.pid, SIGSTOP);
    for (int i = 0; i < 12; i++) {
        int fd = dial(s.port);
        if (fd >= 0) {
            send_all(fd, half, strlen(half));
            close(fd);
        }
    }
    kill(s.pid, SIGCONT);
    int64_t t0 = now_ms();
    long open = -1;
    while (now_ms() - t0 < 3000) {
        open = metric(s.port, "rwkvd_open_connections"); // counts its own connection
        if (open == 1)
            break;
        usleep(100000);
    }
    ck_assert_msg(open == 1, "%ld connections still open 3 s after their clients left", open);
    ck_assert_int_ge(metric(s.port, "rwkvd_connections_reaped_total"), 1);

    ck_assert_int_eq(stop_server(&s), 0);

    // Busy connections are never evicted: with both slots streaming a
    // generation, a new client gets 503 at once (not a wait in the backlog).
    s = START("--conn-limit", "2", "--max-tokens", "1000000");
    const char *body = "{\"prompt\":\"abc\",\"max_tokens\":1000000,\"stream\":true}";
    char head[512];
    int hn = snprintf(head, sizeof head, "POST /generate HTTP/1.1\r\nHost: x\r\n"
                      "Content-Length: %zu\r\n\r\n%s", strlen(body), body);
    int busy[2];
    for (int i = 0; i < 2; i++) {
        busy[i] = dial(s.port);
        ck_assert_int_ge(busy[i], 0);
        send_all(busy[i], head, (size_t)hn);
        char buf[256];
        ck_assert_int_gt(recv(busy[i], buf, sizeof buf, 0), 0); // streaming has begun
    }
    struct resp r = request_t(s.port, "GET", "/health", NULL, NULL, 0, 2000);
    ck_assert_msg(r.status == 503 && r.body && strstr(r.body, "\"code\":\"connection_limit\""),
                  "at the limit with busy connections: %d %s", r.status, r.body);
    resp_free(&r);
    for (int i = 0; i < 2; i++)
        close(busy[i]);
    t0 = now_ms();
    int st = 0;
    while (now_ms() - t0 < 3000 && (st = health_within(s.port, 2000)) != 200)
        usleep(50000);
    ck_assert_int_eq(st, 200);
    ck_assert_int_eq(stop_server(&s), 0);
}
END_TEST

/* An error answer: valid JSON (jansson is strict about UTF-8) in the OpenAI
 * shape {"error":{"message":str,"type":str,"param":str|null,"code":str}},
 * and no server path in it (the data directory is the test's tmpdir). */
static void check_error_body(const struct resp *r, const char *what)
{
    ck_assert_msg(r->status >= 400, "%s: status %d", what, r->status);
    ck_assert_msg(r->body && r->body_len, "%s: %d without a body", what, r->status);
    json_error_t je;
    json_t *j = json_loadb(r->body, r->body_len, JSON_REJECT_DUPLICATES, &je);
    ck_assert_msg(j, "%s: %d body is not JSON (%s): %.*s", what, r->status, je.text,
                  (int)r->body_len, r->body);
    json_t *e = json_object_get(j, "error");
    ck_assert_msg(json_is_object(e) && json_object_size(j) == 1, "%s: no error object: %s", what,
                  r->body);
    json_t *param = json_object_get(e, "param");
    ck_assert_msg(json_is_string(json_object_get(e, "message")) &&
                      json_is_string(json_object_get(e, "type")) &&
                      json_is_string(json_object_get(e, "code")) &&
                      (json_is_string(param) || json_is_null(param)),
                  "%s: not the OpenAI error shape: %s", what, r->body);
    ck_assert_msg(!strstr(r->body, rk_test_tmpdir()), "%s: server path in the body: %s", what,
                  r->body);
    json_decref(j);
}

START_TEST(test_error_bodies)
{
    // Issue 12 items 3 and 4: error messages quote client bytes (ids,
    // paths) that may be any bytes; each answer must still be JSON, cut at
    // a character boundary.
    struct server s = START("--max-body-bytes", "4096");
    const struct {
        const char *method, *path;
        int status;
    } cases[] = {
        {"GET", "/states/%ff", 404},
        {"GET", "/jobs/%ff", 404},
        {"GET", "/v1/files/%ff", 404},
        {"GET", "/v1/models/%ff", 404},
        {"GET", "/v1/fine_tuning/jobs/%ff", 404},
        {"PUT", "/states/a%ffb", 0},
        {"GET", "/states/%c3", 404},            // truncated sequence
        {"GET", "/states/%c0%af", 404},         // overlong '/'
        {"GET", "/states/%ed%a0%80", 404},      // UTF-16 surrogate
        {"GET", "/states/%f4%90%80%80", 404},   // above U+10FFFF
        {"DELETE", "/nope/%fe%ff", 404},
        {"PATCH", "/states/%ff", 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct resp r = request(s.port, cases[i].method, cases[i].path, NULL, "x", 1);
        char what[128];
        snprintf(what, sizeof what, "%s %s", cases[i].method, cases[i].path);
        ck_assert_msg(!cases[i].status || r.status == cases[i].status, "%s: %d %s", what,
                      r.status, r.body);
        check_error_body(&r, what);
        resp_free(&r);
    }
    // A message longer than 512 bytes of two-byte characters: cut between
    // characters, for each of the two alignments.
    for (int shift = 0; shift < 2; shift++) {
        char path[1400] = "/x";
        size_t n = strlen(path);
        if (shift)
            path[n++] = 'y';
        for (int k = 0; k < 200; k++)
            n += (size_t)snprintf(path + n, sizeof path - n, "%%c3%%a9");
        path[n] = 0;
        struct resp r = get(s.port, path, NULL);
        ck_assert_int_eq(r.status, 404);
        check_error_body(&r, "long path of two-byte characters");
        resp_free(&r);
    }
    // Transfer codings other than chunked alone (RFC 9112 6.1, 6.3): an
    // answer at once (MHD would wait for the body until the connection
    // closed), and the connection closed.
    const struct {
        const char *te;
        int status;
    } tes[] = {{"gzip", 400}, {"identity", 400}, {"chunked, gzip", 400},
               {"chunked, chunked", 400}, {"gzip, chunked", 501}, {"deflate ,Chunked", 501},
               {"chunked", 400 /* the body below is not JSON */}};
    for (size_t i = 0; i < sizeof tes / sizeof tes[0]; i++) {
        char req[256];
        int n = snprintf(req, sizeof req, "POST /generate HTTP/1.1\r\nHost: x\r\n"
                         "Connection: close\r\nTransfer-Encoding: %s\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                         tes[i].te);
        int64_t t0 = now_ms();
        int fd = dial(s.port);
        send_all(fd, req, (size_t)n);
        struct resp r = read_resp(fd, 5000); // returns at EOF
        close(fd);
        int64_t ms = now_ms() - t0;
        ck_assert_msg(r.status == tes[i].status, "TE %s: %d %s", tes[i].te, r.status, r.body);
        ck_assert_msg(ms < 2000, "TE %s: answered and closed after %lld ms", tes[i].te,
                      (long long)ms);
        check_error_body(&r, tes[i].te);
        resp_free(&r);
    }
    ck_assert_int_eq(get_status(s.port, "/health", NULL), 200);
    ck_assert_int_eq(stop_server(&s), 0);
}
END_TEST

/* Replace the first `from` in buf[0..len) by `to` of the same length. */
static void patch_bytes(void *buf, size_t len, const char *from, const char *to)
{
    size_t fl = strlen(from);
    ck_assert_uint_eq(fl, strlen(to));
    for (char *p = buf; p + fl <= (char *)buf + len; p++)
        if (!memcmp(p, from, fl)) {
            memcpy(p, to, fl);
            return;
        }
    ck_abort_msg("'%s' not in the file", from);
}

START_TEST(test_state_format_checked)
{
    // Issue 12 item 6: unknown `format` or `format_version` metadata is
    // refused on PUT (RK_EFORMAT, 422 like every malformed state file) and
    // logged and not served when found in the store at start-up.
    struct rk_model *m = test_model();
    float *st = malloc(rk_state_len(m) * 4);
    fx_random_state(m, 7, st);
    const struct {
        const char *from, *to, *why;
    } cases[] = {
        {"\"format_version\":\"1\"", "\"format_version\":\"3\"", "format_version '3'"},
        /* version 2 is a kernel state: it needs kernel_m and the kernel tensors */
        {"\"format_version\":\"1\"", "\"format_version\":\"2\"", "version 2 without kernel_m"},
        {"\"rwkvd-state\"", "\"rwkvd-stat3\"", "unknown format 'rwkvd-stat3'"},
        {"\"format\":\"rwkvd-state\"", "\"format\":\"pt\"         ", "without format rwkvd-state"},
        {"\"format_version\":\"1\"", "\"format_versioX\":\"1\"", "without format_version"},
    };
    struct server s = START("--max-state-bytes", "64M");
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        void *buf;
        size_t len;
        ck_assert_int_eq(rk_state_file_encode(m, st, NULL, &buf, &len), RK_OK);
        patch_bytes(buf, len, cases[i].from, cases[i].to);
        struct resp r = request(s.port, "PUT", "/states/odd", NULL, buf, len);
        ck_assert_msg(r.status == 422 && strstr(r.body, "\"code\":\"eformat\"") &&
                          strstr(r.body, cases[i].why),
                      "case %zu: %d %s", i, r.status, r.body);
        check_error_body(&r, cases[i].why);
        resp_free(&r);
        free(buf);
    }
    put_state(s.port, NULL, "good", 7, 201);
    ck_assert_int_eq(stop_server(&s), 0);

    // A file with an unknown version put straight into the store.
    void *buf;
    size_t len;
    ck_assert_int_eq(rk_state_file_encode(m, st, NULL, &buf, &len), RK_OK);
    patch_bytes(buf, len, "\"format_version\":\"1\"", "\"format_version\":\"9\"");
    char path[700];
    snprintf(path, sizeof path, "%s/tenants/default/states/future.safetensors", s.dir);
    ck_assert_int_eq(rk_file_write_atomic(path, buf, len, NULL), RK_OK);
    free(buf);
    struct server s2 = START("--data-dir", s.dir);
    struct resp r = get(s2.port, "/states/future", NULL);
    ck_assert_msg(r.status == 422 && strstr(r.body, "format_version '9'"), "%d %s", r.status,
                  r.body);
    check_error_body(&r, "GET a future state");
    resp_free(&r);
    r = post(s2.port, "/generate", NULL, "{\"prompt\":\"a\",\"max_tokens\":1,\"state\":\"future\"}");
    ck_assert_msg(r.status == 422, "generate with it: %d %s", r.status, r.body);
    resp_free(&r);
    r = get(s2.port, "/v1/models", NULL);
    ck_assert_msg(r.status == 200 && !strstr(r.body, "future") && strstr(r.body, ":good\""),
                  "%s", r.body);
    resp_free(&r);
    ck_assert_int_eq(get_status(s2.port, "/states/good", NULL), 200);
    ck_assert_int_eq(stop_server(&s2), 0);
    char log[700], line[1024];
    snprintf(log, sizeof log, "%s.log", s2.dir);
    FILE *f = fopen(log, "r");
    bool logged = false;
    while (f && fgets(line, sizeof line, f))
        logged |= strstr(line, "state default/future is not served") != NULL;
    if (f)
        fclose(f);
    ck_assert_msg(logged || getenv("RK_TEST_SERVER_LOG"), "no start-up warning in %s", log);
    free(st);
}
END_TEST

START_TEST(test_limits_queue_deadline)
{
    struct server s = START("--max-seqs", "1", "--max-queue", "1", "--max-n", "1",
                            "--max-tokens", "1000000", "--request-timeout", "2");
    // One running, one queued, the third gets 429 with Retry-After.
    const char *longb = "{\"prompt\":\"abc\",\"max_tokens\":1000000}";
    struct gen_arg g1 = {s.port, NULL, longb, {0}}, g2 = {s.port, NULL, longb, {0}};
    pthread_t t1, t2;
    pthread_create(&t1, NULL, gen_thread, &g1);
    int64_t t0 = now_ms();
    while (metric(s.port, "rwkvd_active_sequences") != 1 && now_ms() - t0 < 5000)
        usleep(2000);
    pthread_create(&t2, NULL, gen_thread, &g2);
    while (metric(s.port, "rwkvd_queue_depth") != 1 && now_ms() - t0 < 5000)
        usleep(2000);
    struct resp r = post(s.port, "/generate", NULL, "{\"prompt\":\"a\",\"max_tokens\":1}");
    ck_assert_int_eq(r.status, 429);
    ck_assert(strcasestr(r.head, "Retry-After: 1"));
    ck_assert(strstr(r.body, "\"type\":\"rate_limit_error\""));
    resp_free(&r);
    // Both long requests hit the 2 s deadline: 504.
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    ck_assert_msg(g1.r.status == 504, "%d %s", g1.r.status, g1.r.body);
    ck_assert_msg(g2.r.status == 504, "%d %s", g2.r.status, g2.r.body);
    ck_assert_msg(strstr(g1.r.body, "\"code\":\"deadline_exceeded\"") &&
                      strstr(g2.r.body, "\"code\":\"deadline_exceeded\""),
                  "%s %s", g1.r.body, g2.r.body);
    // The deadline has its own error code, not RK_ERANGE's.
    ck_assert_int_eq(rk_http_status_of(RK_ETIMEOUT), 504);
    ck_assert_str_eq(rk_errname(RK_ETIMEOUT), "etimeout");
    ck_assert_str_eq(rk_strerror(RK_ETIMEOUT), "deadline exceeded");
    ck_assert_int_eq(rk_http_status_of(RK_ERANGE), 400);
    ck_assert(now_ms() - t0 < 10000);
    resp_free(&g1.r);
    resp_free(&g2.r);
    r = post(s.port, "/generate", NULL, "{\"prompt\":\"a\",\"max_tokens\":1}");
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    ck_assert_int_eq(stop_server(&s), 0);
}
END_TEST

START_TEST(test_config_errors)
{
    // Without keys only loopback may be bound; bad values are refused.
    const char *argv1[] = {"serve", "--model", rk_test_data("rand-mh.safetensors"), "--host",
                           "0.0.0.0", "--port", "0", NULL};
    pid_t p = fork();
    if (p == 0) {
        FILE *f = freopen("/dev/null", "w", stderr);
        (void)f;
        _exit(rk_cmd_serve(7, (char **)argv1));
    }
    int st;
    waitpid(p, &st, 0);
    ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 1);
    const char *argv2[] = {"serve", "--model", "x", "--max-n", "-3", NULL};
    p = fork();
    if (p == 0) {
        FILE *f = freopen("/dev/null", "w", stderr);
        (void)f;
        _exit(rk_cmd_serve(5, (char **)argv2));
    }
    waitpid(p, &st, 0);
    ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 2);
}
END_TEST

/* Prompts on AMX tiles (--amx-prefill, the default) with the bf16 fixture:
 * prompts of different lengths, alone and then six at once with a prefill
 * chunk of 7 tokens (so how a prompt is cut into passes depends on what else
 * is running), give the same tokens and logprobs; so do they with generated
 * tokens on AMX too (--amx-decode), where prompt and decode rows may share
 * passes. With AMX off, or on for decode too, the logprobs differ, which
 * shows each setting took effect. Without AMX all three settings agree. */
static void amx_bodies(char bodies[6][256])
{
    static const char *prompts[] = {"Hi", "The quick brown fox jumps over", "a",
                                    "Once upon a time, in a land far away, there lived",
                                    "0123456789", "State tuning of RWKV-7 models"};
    for (int i = 0; i < 6; i++)
        snprintf(bodies[i], 256,
                 "{\"prompt\":\"%s\",\"max_tokens\":12,\"temperature\":0,\"logprobs\":0}",
                 prompts[i]);
}

START_TEST(test_amx_prompts_traffic_independent)
{
    char bodies[6][256];
    amx_bodies(bodies);
    char *solo[6], *exact[6], *alldec[6];
    /* pass 0: prompts on AMX; 1: nothing on AMX; 2: decode on AMX too */
    static const char *const flags[3][2] = {{"--amx-prefill=1", "--amx-decode=0"},
                                            {"--amx-prefill=0", "--amx-decode=0"},
                                            {"--amx-prefill=1", "--amx-decode=1"}};
    for (int pass = 0; pass < 3; pass++) {
        struct server s = START("--model", rk_test_data("rand-mh-bf16.safetensors"), "--threads",
                                "2", "--prefill-chunk", "7", flags[pass][0], flags[pass][1]);
        char **sig = pass == 0 ? solo : pass == 1 ? exact : alldec;
        for (int i = 0; i < 6; i++) {
            struct resp r = post(s.port, "/generate", NULL, bodies[i]);
            ck_assert_int_eq(r.status, 200);
            sig[i] = lp_sig(r.body);
            resp_free(&r);
        }
        if (pass != 1)
            for (int round = 0; round < 2; round++) {
                struct gen_arg g[6];
                pthread_t t[6];
                for (int i = 0; i < 6; i++) {
                    g[i] = (struct gen_arg){s.port, NULL, bodies[i], {0}};
                    pthread_create(&t[i], NULL, gen_thread, &g[i]);
                }
                for (int i = 0; i < 6; i++)
                    pthread_join(t[i], NULL);
                for (int i = 0; i < 6; i++) {
                    ck_assert_int_eq(g[i].r.status, 200);
                    char *c = lp_sig(g[i].r.body);
                    ck_assert_msg(!strcmp(c, sig[i]),
                                  "prompt %d: concurrent run differs from solo (round %d, "
                                  "pass %d)", i, round, pass);
                    free(c);
                    resp_free(&g[i].r);
                }
            }
        ck_assert_int_eq(stop_server(&s), 0);
    }
    int differ = 0, differ_dec = 0;
    for (int i = 0; i < 6; i++) {
        differ += strcmp(solo[i], exact[i]) != 0;
        differ_dec += strcmp(solo[i], alldec[i]) != 0;
    }
    if (rk_amx_available()) {
        ck_assert_msg(differ > 0, "--amx-prefill 1 and 0 gave the same logprobs: AMX did not run");
        ck_assert_msg(differ_dec > 0, "--amx-decode 1 changed nothing: AMX did not run");
    } else {
        ck_assert_int_eq(differ + differ_dec, 0);
    }
    for (int i = 0; i < 6; i++)
        free(solo[i]), free(exact[i]), free(alldec[i]);
}
END_TEST

/* Kernel states are served in mixed passes: two prompts, each with no state,
 * a standard state and a kernel state (tests/data/kernel-mh.safetensors,
 * uploaded; the standard one is its core state alone), give the same tokens
 * and logprobs solo and six at once (prefill chunk 7, so passes mix prompt
 * and decode rows of all three kinds); the kernel term changes the output. */
START_TEST(test_kernel_state_mixed)
{
    struct server s = START("--model", rk_test_data("rand-mh.safetensors"), "--threads", "2",
                            "--prefill-chunk", "7");
    struct rk_model *m = NULL;
    ck_assert_int_eq(rk_model_load(rk_test_data("rand-mh.safetensors"), NULL, &m, NULL), RK_OK);
    void *kbuf, *sbuf;
    size_t klen, slen;
    ck_assert_int_eq(rk_file_read_all(rk_test_data("kernel-mh.safetensors"), 1 << 24, &kbuf, &klen,
                                      NULL), RK_OK);
    float *ad = NULL;
    ck_assert_int_eq(rk_state_file_parse_alloc(kbuf, klen, m, false, &ad, NULL, NULL), RK_OK);
    ck_assert_int_eq(rk_state_file_encode(m, ad, NULL, &sbuf, &slen), RK_OK);
    struct resp r = request(s.port, "PUT", "/states/kst", NULL, kbuf, klen);
    ck_assert_msg(r.status == 201 && strstr(r.body, "\"kernel_m\":16"), "%d %s", r.status, r.body);
    resp_free(&r);
    r = request(s.port, "PUT", "/states/sst", NULL, sbuf, slen);
    ck_assert_int_eq(r.status, 201);
    resp_free(&r);
    free(kbuf), free(sbuf), free(ad);
    rk_model_free(m);
    char bodies[6][256];
    static const char *prompts[] = {"Once upon a time, in a land", "ab"};
    static const char *states[] = {"", ",\"state\":\"sst\"", ",\"state\":\"kst\""};
    for (int i = 0; i < 6; i++)
        snprintf(bodies[i], sizeof bodies[i],
                 "{\"prompt\":\"%s\",\"max_tokens\":10,\"temperature\":0,\"logprobs\":0%s}",
                 prompts[i / 3], states[i % 3]);
    char *solo[6];
    for (int i = 0; i < 6; i++) {
        r = post(s.port, "/generate", NULL, bodies[i]);
        ck_assert_msg(r.status == 200, "%d %s", r.status, r.body);
        solo[i] = lp_sig(r.body);
        resp_free(&r);
    }
    for (int round = 0; round < 2; round++) {
        struct gen_arg g[6];
        pthread_t t[6];
        for (int i = 0; i < 6; i++) {
            g[i] = (struct gen_arg){s.port, NULL, bodies[i], {0}};
            pthread_create(&t[i], NULL, gen_thread, &g[i]);
        }
        for (int i = 0; i < 6; i++)
            pthread_join(t[i], NULL);
        for (int i = 0; i < 6; i++) {
            ck_assert_int_eq(g[i].r.status, 200);
            char *c = lp_sig(g[i].r.body);
            ck_assert_msg(!strcmp(c, solo[i]), "request %d: concurrent differs from solo", i);
            free(c);
            resp_free(&g[i].r);
        }
    }
    for (int p = 0; p < 2; p++)
        ck_assert_msg(strcmp(solo[3 * p + 1], solo[3 * p + 2]) != 0,
                      "prompt %d: the kernel term changed nothing", p);
    for (int i = 0; i < 6; i++)
        free(solo[i]);
    ck_assert_int_eq(stop_server(&s), 0);
}
END_TEST

/* The OpenAI request forms: every prompt form of /v1/completions answers
 * clearly (a batch is refused as unsupported, not misread as token ids);
 * fields whose behaviour rwkvd lacks (response_format other than text, tools,
 * tool_choice, functions) are 400 unsupported, not ignored; a chat answer
 * ends at the end of the assistant's turn (a blank line) with no 'stop'. */
START_TEST(test_openai_request_forms)
{
    struct server s = START("--max-tokens", "50");
    const struct {
        const char *path, *body;
        int status;
        const char *want; /* in the body */
    } cases[] = {
        {"/v1/completions", "{\"prompt\":\"ab\",\"max_tokens\":1}", 200, "\"prompt_tokens\":2"},
        {"/v1/completions", "{\"prompt\":[\"ab\"],\"max_tokens\":1}", 200, "\"prompt_tokens\":2"},
        {"/v1/completions", "{\"prompt\":[97,98,99],\"max_tokens\":1}", 200,
         "\"prompt_tokens\":3"},
        {"/v1/completions", "{\"prompt\":[[97,98,99,100]],\"max_tokens\":1}", 200,
         "\"prompt_tokens\":4"},
        {"/v1/completions", "{\"prompt\":[\"a\",\"b\"]}", 400, "a batch of 2 prompts"},
        {"/v1/completions", "{\"prompt\":[[1],[2],[3]]}", 400, "\"code\":\"unsupported\""},
        {"/v1/completions", "{\"prompt\":[\"a\",3]}", 400, "prompt[1] must be a string"},
        {"/v1/completions", "{\"prompt\":[1,\"b\"]}", 400, "element 1 is a string"},
        {"/v1/completions", "{\"prompt\":[1,384]}", 400, "token ids run from 0 to 383"},
        {"/v1/completions", "{\"prompt\":[]}", 400, "the prompt is empty"},
        {"/v1/completions", "{\"prompt\":{}}", 400, "'prompt' must be a string"},
        {"/v1/completions", "{\"prompt\":\"a\",\"response_format\":{\"type\":\"json_object\"}}",
         400, "\"param\":\"response_format\",\"code\":\"unsupported\""},
        {"/v1/completions",
         "{\"prompt\":\"a\",\"max_tokens\":1,\"response_format\":{\"type\":\"text\"}}", 200,
         "text_completion"},
        {"/v1/chat/completions",
         "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"response_format\":"
         "{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"x\"}}}",
         400, "\"code\":\"unsupported\""},
        {"/v1/chat/completions",
         "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"response_format\":\"json\"}",
         400, "\"code\":\"invalid_type\""},
        {"/v1/chat/completions",
         "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"tools\":[{\"type\":"
         "\"function\",\"function\":{\"name\":\"f\"}}]}",
         400, "\"param\":\"tools\",\"code\":\"unsupported\""},
        {"/v1/chat/completions",
         "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"tool_choice\":\"required\"}",
         400, "\"param\":\"tool_choice\""},
        {"/v1/chat/completions",
         "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"functions\":[{\"name\":\"f\"}]}",
         400, "\"param\":\"functions\""},
        {"/v1/chat/completions",
         "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":1,\"tools\":[],"
         "\"tool_choice\":\"none\"}",
         200, "chat.completion"},
        // A blank line ends the assistant's turn: token 10 ('\n') forced by
        // logit_bias ends the answer after two tokens, with no 'stop' given.
        {"/v1/chat/completions",
         "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":40,"
         "\"logit_bias\":{\"10\":100}}",
         200, "\"content\":\"\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":\"stop\""},
        {"/v1/chat/completions",
         "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"max_tokens\":40,"
         "\"logit_bias\":{\"10\":100},\"stop\":[\"zz\"]}",
         200, "\"finish_reason\":\"stop\""},
        // Completions have no turns: the same bias runs to max_tokens.
        {"/v1/completions", "{\"prompt\":\"hi\",\"max_tokens\":5,\"logit_bias\":{\"10\":100}}",
         200, "\"finish_reason\":\"length\""},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct resp r = post(s.port, cases[i].path, NULL, cases[i].body);
        ck_assert_msg(r.status == cases[i].status && strstr(r.body, cases[i].want),
                      "case %zu (%s %s): got %d %s, want %d with %s", i, cases[i].path,
                      cases[i].body, r.status, r.body, cases[i].status, cases[i].want);
        resp_free(&r);
    }
    ck_assert_int_eq(stop_server(&s), 0);
}
END_TEST

/* One vocabulary of field errors (docs/API.md "Field errors"): the same bad
 * value of a shared field earns the same status, param and code on the
 * three generation routes. When POST /tune reads its fields through
 * json_read.c too (the tuning-method seam branch), add it here with its own
 * base body. */
START_TEST(test_field_errors_same_code)
{
    struct server s = START("--max-tokens", "50");
    static const char *const routes[][2] = {
        {"/generate", "{\"prompt\":\"ab\","},
        {"/v1/completions", "{\"prompt\":\"ab\","},
        {"/v1/chat/completions", "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"},
    };
    static const struct {
        const char *field, *param, *code;
    } cases[] = {
        {"\"max_tokens\":3.0", "max_tokens", "invalid_type"},
        {"\"max_tokens\":3.5", "max_tokens", "invalid_type"},
        {"\"max_tokens\":\"3\"", "max_tokens", "invalid_type"},
        {"\"max_tokens\":-1", "max_tokens", "out_of_range"},
        {"\"max_tokens\":51", "max_tokens", "out_of_range"},
        {"\"n\":true", "n", "invalid_type"},
        {"\"temperature\":\"hot\"", "temperature", "invalid_type"},
        {"\"temperature\":9", "temperature", "out_of_range"},
        {"\"top_p\":0", "top_p", "out_of_range"},
        {"\"top_k\":2.0", "top_k", "invalid_type"},
        {"\"stream\":1", "stream", "invalid_type"},
        {"\"seed\":1.5", "seed", "invalid_type"},
        {"\"stop\":[\"\"]", "stop", "invalid_value"},
        {"\"stop\":[3]", "stop", "invalid_type"},
        {"\"stop\":{}", "stop", "invalid_type"},
        {"\"stop\":[\"a\",\"b\",\"c\",\"d\",\"e\",\"f\",\"g\",\"h\",\"i\"]", "stop",
         "out_of_range"},
        {"\"logit_bias\":[1]", "logit_bias", "invalid_type"},
        {"\"logit_bias\":{\"x\":1}", "logit_bias", "invalid_value"},
        {"\"stream_options\":true", "stream_options", "invalid_type"},
        {"\"stream_options\":{\"include_usage\":1}", "include_usage", "invalid_type"},
        {"\"state\":5", "state", "invalid_type"},
        {"\"model\":5", "model", "invalid_type"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        for (size_t k = 0; k < 3; k++) {
            char body[512], want[128];
            snprintf(body, sizeof body, "%s%s}", routes[k][1], cases[i].field);
            snprintf(want, sizeof want, "\"param\":\"%s\",\"code\":\"%s\"", cases[i].param,
                     cases[i].code);
            struct resp r = post(s.port, routes[k][0], NULL, body);
            ck_assert_msg(r.status == 400 && strstr(r.body, want),
                          "%s %s: got %d %s, want 400 with %s", routes[k][0], body, r.status,
                          r.body, want);
            resp_free(&r);
        }
    /* The tuning routes read their fields with the same readers: the same
     * kind of bad value earns the same code on POST /tune and on the OpenAI
     * fine-tuning route. */
    static const struct {
        const char *route, *body, *param, *code;
    } tune[] = {
        {"/tune", "{\"output_state\":\"t\",\"steps\":3.0,\"dataset\":[{\"prompt\":\"Hi\",\"completion\":\" there\"}]}", "steps",
         "invalid_type"},
        {"/tune", "{\"output_state\":\"t\",\"steps\":-1,\"dataset\":[{\"prompt\":\"Hi\",\"completion\":\" there\"}]}", "steps",
         "out_of_range"},
        {"/tune", "{\"output_state\":\"t\",\"lr\":\"big\",\"dataset\":[{\"prompt\":\"Hi\",\"completion\":\" there\"}]}", "lr",
         "invalid_type"},
        {"/tune", "{\"output_state\":\"t\",\"tune_shift\":1,\"dataset\":[{\"prompt\":\"Hi\",\"completion\":\" there\"}]}", "tune_shift",
         "invalid_type"},
        {"/tune", "{\"output_state\":\"t\",\"method\":5,\"dataset\":[{\"prompt\":\"Hi\",\"completion\":\" there\"}]}", "method",
         "invalid_type"},
        {"/tune", "{\"output_state\":\"t\",\"method\":\"nope\",\"dataset\":[{\"prompt\":\"Hi\",\"completion\":\" there\"}]}", "method",
         "invalid_value"},
        {"/tune", "{\"output_state\":\"t\",\"bogus\":1,\"dataset\":[{\"prompt\":\"Hi\",\"completion\":\" there\"}]}", "bogus",
         "unknown_parameter"},
        {"/v1/fine_tuning/jobs", "{\"model\":5,\"training_file\":\"file-x\"}", "model",
         "invalid_type"},
    };
    for (size_t i = 0; i < sizeof tune / sizeof tune[0]; i++) {
        char want[128];
        snprintf(want, sizeof want, "\"param\":\"%s\",\"code\":\"%s\"", tune[i].param,
                 tune[i].code);
        struct resp r = post(s.port, tune[i].route, NULL, tune[i].body);
        ck_assert_msg(r.status == 400 && strstr(r.body, want), "%s %s: got %d %s, want 400 with %s",
                      tune[i].route, tune[i].body, r.status, r.body, want);
        resp_free(&r);
    }
    ck_assert_int_eq(stop_server(&s), 0);
}
END_TEST

/* A state that is not in the cache is read from disk on the thread pool
 * (state_fetch.c), with the request suspended, not on the loop thread: after
 * a restart (empty cache) every route that names a state answers as before
 * the restart, the first lookup counts one miss and the next ones hits (the
 * LRU keeps what the worker loaded), and a missing state is still a 404.
 * GET /states/{id}/file reads its file on the pool as well. */
START_TEST(test_state_miss_off_loop)
{
    struct server s = START("--max-tokens", "50");
    put_state(s.port, NULL, "warm", 5, 201);
    struct resp a = post(s.port, "/generate", NULL, gen_body(6, "warm", false));
    ck_assert_msg(a.status == 200, "%d %s", a.status, a.body);
    char *sig_a = lp_sig(a.body);
    resp_free(&a);
    ck_assert_int_eq(stop_server(&s), 0);

    struct server s2 = START("--data-dir", s.dir, "--max-tokens", "50");
    long miss0 = metric(s2.port, "rwkvd_adapter_cache_misses_total");
    long hit0 = metric(s2.port, "rwkvd_adapter_cache_hits_total");
    struct resp b = post(s2.port, "/generate", NULL, gen_body(6, "warm", false));
    ck_assert_msg(b.status == 200, "%d %s", b.status, b.body);
    char *sig_b = lp_sig(b.body);
    ck_assert_str_eq(sig_a, sig_b); // the same state, read by the worker
    resp_free(&b);
    ck_assert_int_eq(metric(s2.port, "rwkvd_adapter_cache_misses_total"), miss0 + 1);
    struct resp c = post(s2.port, "/generate", NULL, gen_body(6, "warm", true));
    ck_assert_msg(c.status == 200 && strstr(c.body, "\"done\":true"), "%d %s", c.status, c.body);
    resp_free(&c);
    ck_assert_int_eq(get_status(s2.port, "/states/warm", NULL), 200);
    ck_assert_int_eq(get_status(s2.port, "/v1/models/rand-mh:warm", NULL), 200);
    ck_assert_int_eq(metric(s2.port, "rwkvd_adapter_cache_misses_total"), miss0 + 1);
    ck_assert_int_eq(metric(s2.port, "rwkvd_adapter_cache_hits_total"), hit0 + 3);
    // Missing states: a lookup on the pool that finds nothing.
    ck_assert_int_eq(get_status(s2.port, "/states/nope", NULL), 404);
    ck_assert_int_eq(get_status(s2.port, "/v1/models/rand-mh:nope", NULL), 404);
    // The raw file, read on the pool every time.
    struct resp f = get(s2.port, "/states/warm/file", NULL);
    ck_assert_msg(f.status == 200 && f.body_len > 8 &&
                      strstr(f.head, "application/octet-stream"),
                  "%d %s", f.status, f.head);
    resp_free(&f);
    ck_assert_int_eq(get_status(s2.port, "/states/nope/file", NULL), 404);
    struct resp d = post(s2.port, "/generate", NULL, gen_body(2, "nope", false));
    ck_assert_msg(d.status == 404 && strstr(d.body, "state_not_found"), "%d %s", d.status, d.body);
    resp_free(&d);
    ck_assert_int_eq(stop_server(&s2), 0);
    free(sig_a);
    free(sig_b);
}
END_TEST

RK_TEST_SUITE(http_suite, RK_SELF_CONTAINED)
{
    signal(SIGPIPE, SIG_IGN);
    Suite *s = suite_create("http");
    TCase *tc = tcase_create("serve");
    tcase_set_timeout(tc, 120);
    const char *only = getenv("RK_HTTP_ONLY"); // run one test by name while debugging
#define ADD(t)                                                                                     \
    if (!only || !strcmp(only, #t))                                                                \
        tcase_add_test(tc, t);
    ADD(test_basic_routes)
    ADD(test_states_crud)
    ADD(test_tenants_concurrent)
    ADD(test_amx_prompts_traffic_independent)
    ADD(test_kernel_state_mixed)
    ADD(test_state_replaced_during_generation)
    ADD(test_hostile_requests)
    ADD(test_disconnect_mid_stream)
    ADD(test_sigterm_drain)
    ADD(test_connection_burst)
    ADD(test_connection_flood)
    ADD(test_error_bodies)
    ADD(test_state_format_checked)
    ADD(test_field_errors_same_code)
    ADD(test_state_miss_off_loop)
    ADD(test_limits_queue_deadline)
    ADD(test_config_errors)
    ADD(test_openai_request_forms)
    suite_add_tcase(s, tc);
    return s;
}

/*
 * fuzz_http.c - the request path end to end: the real `rwkvd serve`
 * (rk_cmd_serve, on a thread of this process) on a loopback port, serving
 * tests/fuzz/data/server-bf16.safetensors with API keys, and every input
 * sent to it as one HTTP request on a fresh connection. This reaches what no
 * pure function does on its own: http.c's framing checks (version, NUL in
 * the target, repeated Content-Length / Transfer-Encoding, control bytes,
 * the percent-decoder, body limits and 413s), routing and auth, and every
 * handler's JSON parsing and validation (/generate, /v1/completions,
 * /v1/chat/completions, /tune, PUT /states, /v1/files multipart,
 * /v1/fine_tuning/jobs, the GET/DELETE routes with fuzzed ids and queries),
 * down to the engine and the tuning worker for requests that pass.
 *
 * Input format: a first byte below 0x80 picks an entry of `routes` (byte %
 * count); a POST/PUT route gets the rest of the input as its body (with a
 * valid key, Content-Length and "Connection: close"), a GET/DELETE route
 * gets it appended to the path, bytes outside printable ASCII
 * percent-encoded. A first byte of 0x80 or more sends the rest as it is (a
 * raw request, which must carry its own key to get past auth; the seeds
 * do), then half-closes the connection.
 *
 * A crash or sanitizer report in the server thread ends the process like one
 * in the target itself. A request left unanswered for REPLY_TIMEOUT_S is
 * dropped; if /health then does not answer either, the server is stuck and
 * the target aborts.
 *
 * Limits are small (max_tokens 8, tuning jobs of at most 4 steps) so each
 * request costs milliseconds; the data directory is a fresh directory under
 * $TMPDIR (tests/fuzz/run.sh points that into the build directory).
 */
#include "cmd.h"
#include "fuzz_common.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define KEY "fuzz-key-0123"
#define REPLY_TIMEOUT_S 30
#define RAW_IDLE_MS 100
#define RAW_WAIT_MS 50

struct route {
    const char *method, *path;
    const char *ctype; /* the body's Content-Type; NULL: the input goes in the path */
};
static const struct route routes[] = {
    {"POST", "/generate", "application/json"},
    {"POST", "/v1/completions", "application/json"},
    {"POST", "/v1/chat/completions", "application/json"},
    {"POST", "/tune", "application/json"},
    {"POST", "/v1/fine_tuning/jobs", "application/json"},
    {"POST", "/v1/files", "multipart/form-data; boundary=XyZ"},
    {"PUT", "/states/fz", "application/octet-stream"},
    {"GET", "/states", NULL},
    {"GET", "/jobs", NULL},
    {"GET", "/v1/files", NULL},
    {"GET", "/v1/fine_tuning/jobs", NULL},
    {"GET", "/v1/models", NULL},
    {"DELETE", "/states/", NULL},
    {"DELETE", "/v1/files/", NULL},
    {"POST", "/jobs/", NULL},
    {"POST", "/v1/fine_tuning/jobs/", NULL},
    {"GET", "/metrics", NULL},
};
#define N_ROUTES (sizeof routes / sizeof routes[0])

static int port;

static void *serve_thread(void *arg)
{
    (void)arg;
    char *argv[] = {"serve", NULL};
    int rc = rk_cmd_serve(1, argv);
    fprintf(stderr, "fuzz-http: rwkvd serve returned %d\n", rc);
    abort(); // the server must not stop while we fuzz it
    return NULL;
}

static int free_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) ||
        getsockname(s, (struct sockaddr *)&a, &len)) {
        perror("fuzz-http: picking a port");
        exit(1);
    }
    close(s);
    return ntohs(a.sin_port);
}

static int connect_server(void)
{
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (s >= 0 && connect(s, (struct sockaddr *)&a, sizeof a) == 0)
        return s;
    if (s >= 0)
        close(s);
    return -1;
}

static bool send_all(int s, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t k = send(s, c, n, MSG_NOSIGNAL);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return false; // the server closed early (e.g. a 413): fine
        c += k;
        n -= (size_t)k;
    }
    return true;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Read until the server closes, or (idle_ms > 0) until part of a reply has
 * come and then nothing for idle_ms, or nothing at all for RAW_WAIT_MS;
 * false on timeout. `first` receives the
 * start of the reply (NUL-terminated). */
static bool read_reply(int s, int idle_ms, char *first, size_t cap)
{
    int64_t end = now_ms() + (int64_t)REPLY_TIMEOUT_S * 1000;
    size_t have = 0;
    char buf[4096];
    first[0] = 0;
    for (;;) {
        int64_t left = end - now_ms();
        if (left <= 0)
            return false;
        if (idle_ms > 0 && left > (have ? idle_ms : RAW_WAIT_MS))
            left = have ? idle_ms : RAW_WAIT_MS;
        struct pollfd p = {.fd = s, .events = POLLIN};
        int r = poll(&p, 1, (int)left);
        if (r < 0 && errno == EINTR)
            continue;
        if (r == 0 && idle_ms > 0)
            return true;
        if (r <= 0)
            return false;
        ssize_t k = recv(s, buf, sizeof buf, 0);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return true; // EOF or reset: answered (or refused) and closed
        if (have + 1 < cap) {
            size_t c = (size_t)k < cap - 1 - have ? (size_t)k : cap - 1 - have;
            memcpy(first + have, buf, c);
            first[have + c] = 0;
        }
        have += (size_t)k;
    }
}

/* One request on a fresh connection; false if no reply came in time. A raw
 * request is followed by a half-close, and its reply is taken as complete
 * after RAW_IDLE_MS of silence (or RAW_WAIT_MS without any reply): after a
 * half-close libmicrohttpd often keeps the connection, with or without a
 * reply sent, until the idle timeout, and waiting for that would make
 * every such input cost seconds. Leaving early is itself a case worth
 * covering (the client goes away mid-request). */
static bool exchange(const void *req, size_t len, bool raw, char *first, size_t cap)
{
    int s = connect_server();
    if (s < 0) {
        fprintf(stderr, "fuzz-http: cannot connect to the server: %s\n", strerror(errno));
        abort();
    }
    send_all(s, req, len);
    if (raw)
        shutdown(s, SHUT_WR);
    bool ok = read_reply(s, raw ? RAW_IDLE_MS : 0, first, cap);
    close(s);
    return ok;
}

static void check_alive(void)
{
    static const char health[] = "GET /health HTTP/1.1\r\nHost: fuzz\r\nConnection: close\r\n\r\n";
    char first[64];
    if (!exchange(health, sizeof health - 1, false, first, sizeof first) ||
        strncmp(first, "HTTP/1.1 ", 9)) {
        fprintf(stderr, "fuzz-http: the server no longer answers /health\n");
        abort();
    }
}

static char tmpdir[4096];
static bool slow_report;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    slow_report = getenv("RWKVD_FUZZ_HTTP_SLOW") != NULL;
    const char *t = getenv("TMPDIR");
    snprintf(tmpdir, sizeof tmpdir, "%s/rwkvd-fuzz-http-XXXXXX", t && *t ? t : "/tmp");
    if (!mkdtemp(tmpdir)) {
        perror("fuzz-http: mkdtemp");
        exit(1);
    }
    char keys[4200], data[4200], ports[16];
    snprintf(keys, sizeof keys, "%s/api-keys", tmpdir);
    snprintf(data, sizeof data, "%s/data", tmpdir);
    FILE *f = fopen(keys, "w");
    if (!f || fprintf(f, "%s default\nfuzz-key-other other\n", KEY) < 0 || fclose(f)) {
        perror("fuzz-http: api keys");
        exit(1);
    }
    port = free_port();
    snprintf(ports, sizeof ports, "%d", port);
    static const char *const env[][2] = {
        {"RWKVD_HOST", "127.0.0.1"},    {"RWKVD_THREADS", "1"},
        {"RWKVD_MAX_TOKENS", "8"},      {"RWKVD_DEFAULT_MAX_TOKENS", "4"},
        {"RWKVD_MAX_N", "2"},           {"RWKVD_MAX_LOGPROBS", "3"},
        {"RWKVD_MAX_STOPS", "4"},       {"RWKVD_MAX_QUEUE", "16"},
        {"RWKVD_MAX_PROMPT_TOKENS", "256"}, {"RWKVD_MAX_BODY_BYTES", "65536"},
        {"RWKVD_MAX_STATE_BYTES", "262144"}, {"RWKVD_CACHE_BYTES", "1048576"},
        {"RWKVD_REQUEST_TIMEOUT", "10"}, {"RWKVD_CONN_TIMEOUT", "2"},
        {"RWKVD_DRAIN_TIMEOUT", "0"},   {"RWKVD_HEALTH_PUBLIC", "1"},
        {"RWKVD_JOB_MAX_STEPS", "4"},   {"RWKVD_JOB_MAX_EXAMPLES", "64"},
        {"RWKVD_JOB_MAX_SEQ_TOKENS", "128"}, {"RWKVD_JOB_MAX_BATCH", "2"},
        {"RWKVD_JOB_MAX_ACTIVE", "2"},  {"RWKVD_JOB_MAX_FILES", "16"},
        {"RWKVD_JOB_THREADS", "1"},     {"RWKVD_JOB_NICE", "0"},
        {"RWKVD_JOB_MAX_DATASET_BYTES", "65536"},
    };
    for (size_t i = 0; i < sizeof env / sizeof env[0]; i++)
        setenv(env[i][0], env[i][1], 1);
    setenv("RWKVD_MODEL", fuzz_data_path("server-bf16.safetensors"), 1);
    setenv("RWKVD_DATA_DIR", data, 1);
    setenv("RWKVD_API_KEYS", keys, 1);
    setenv("RWKVD_PORT", ports, 1);

    pthread_t th;
    if (pthread_create(&th, NULL, serve_thread, NULL)) {
        perror("fuzz-http: pthread_create");
        exit(1);
    }
    pthread_detach(th);
    for (int i = 0; i < 600; i++) { // up to a minute for the model and store
        int s = connect_server();
        if (s >= 0) {
            close(s);
            check_alive();
            return 0;
        }
        usleep(100 * 1000);
    }
    fprintf(stderr, "fuzz-http: the server did not start listening on port %d\n", port);
    exit(1);
}

/* Append s[0..n) to the request target, percent-encoding what is not
 * printable ASCII (space included) so the request line stays one line. */
static size_t put_target(char *out, const uint8_t *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] > 0x20 && s[i] < 0x7f) {
            out[o++] = (char)s[i];
        } else {
            out[o++] = '%';
            out[o++] = hex[s[i] >> 4];
            out[o++] = hex[s[i] & 15];
        }
    }
    return o;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    int64_t t0 = now_ms();
    const uint8_t *rest = data + 1;
    size_t n = size - 1;
    char first[64];
    bool ok;
    if (data[0] >= 0x80) {
        ok = exchange(rest, n, true, first, sizeof first);
    } else {
        const struct route *rt = &routes[data[0] % N_ROUTES];
        bool body = rt->ctype != NULL;
        size_t cap = 512 + 3 * n;
        char *req = malloc(cap);
        if (!req)
            return 0;
        size_t len = (size_t)snprintf(req, cap, "%s %s", rt->method, rt->path);
        if (!body)
            len += put_target(req + len, rest, n);
        len += (size_t)snprintf(req + len, cap - len,
                                " HTTP/1.1\r\nHost: fuzz\r\nAuthorization: Bearer " KEY "\r\n"
                                "Connection: close\r\n");
        if (body) {
            len += (size_t)snprintf(req + len, cap - len,
                                    "Content-Type: %s\r\nContent-Length: %zu\r\n\r\n", rt->ctype,
                                    n);
            memcpy(req + len, rest, n);
            len += n;
        } else {
            len += (size_t)snprintf(req + len, cap - len, "\r\n");
        }
        ok = exchange(req, len, false, first, sizeof first);
        free(req);
    }
    if (slow_report && now_ms() - t0 > 250) // RWKVD_FUZZ_HTTP_SLOW=1: where the time goes
        fprintf(stderr, "fuzz-http: slow (%lld ms): first byte %u, reply \"%.40s\"\n",
                (long long)(now_ms() - t0), data[0], first);
    if (!ok)
        check_alive(); // slow is allowed (a queue, a job stream); stuck is not
    return 0;
}

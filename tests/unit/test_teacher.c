/*
 * test_teacher.c - the teacher/judge client (server/teacher.c) without a
 * server: the retry schedule and which failures are retried, the answer
 * parser on valid and malformed bodies, the request body, configuration
 * checks, the answer cache (memory, file, reload, hostile files, limits),
 * and a call to a closed loopback port (retried, then a clear error that
 * never shows the key).
 */
#include "check_common.h"
#include "teacher.h"

#include <curl/curl.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

START_TEST(backoff_schedule)
{
    uint64_t rng = 12345;
    // Each retry's wait lies in [e/2, e] for e = min(max, base * 2^attempt).
    for (int rep = 0; rep < 200; rep++) {
        for (int at = 0; at < 8; at++) {
            long long e = 200LL << at;
            if (e > 5000)
                e = 5000;
            int w = rk_teacher_backoff_ms(at, 200, 5000, &rng);
            ck_assert_int_ge(w, e / 2);
            ck_assert_int_le(w, e);
        }
    }
    // Jitter: the waits of one attempt are not all the same.
    int seen_lo = 0, seen_hi = 0;
    for (int rep = 0; rep < 200; rep++) {
        int w = rk_teacher_backoff_ms(2, 200, 5000, &rng);
        seen_lo |= w < 600;
        seen_hi |= w >= 600;
    }
    ck_assert(seen_lo && seen_hi);
    // Large attempt numbers stay at the cap, without overflow.
    ck_assert_int_le(rk_teacher_backoff_ms(60, 200, 5000, &rng), 5000);
    ck_assert_int_eq(rk_teacher_backoff_ms(3, 0, 0, &rng), 0);
}
END_TEST

START_TEST(retry_classes)
{
    ck_assert(rk_teacher_retryable(429, CURLE_OK));
    ck_assert(rk_teacher_retryable(500, CURLE_OK));
    ck_assert(rk_teacher_retryable(503, CURLE_OK));
    ck_assert(!rk_teacher_retryable(400, CURLE_OK));
    ck_assert(!rk_teacher_retryable(401, CURLE_OK));
    ck_assert(!rk_teacher_retryable(404, CURLE_OK));
    ck_assert(!rk_teacher_retryable(200, CURLE_OK));
    ck_assert(rk_teacher_retryable(0, CURLE_COULDNT_CONNECT));
    ck_assert(rk_teacher_retryable(0, CURLE_RECV_ERROR));
    ck_assert(rk_teacher_retryable(0, CURLE_GOT_NOTHING));
    ck_assert(!rk_teacher_retryable(0, CURLE_OPERATION_TIMEDOUT));
    ck_assert(!rk_teacher_retryable(0, CURLE_URL_MALFORMAT));
}
END_TEST

static int parse(enum rk_teacher_kind k, bool lps, const char *body, struct rk_teacher_answer *a,
                 struct rk_errbuf *eb)
{
    return rk_teacher_parse("judge", k, lps, body, strlen(body), a, eb);
}

START_TEST(parse_valid)
{
    struct rk_teacher_answer a;
    struct rk_errbuf eb = {0};
    const char *chat =
        "{\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\" Yes\"},"
        "\"finish_reason\":\"stop\",\"logprobs\":{\"content\":[{\"token\":\" Yes\",\"logprob\":"
        "-0.5,\"top_logprobs\":[{\"token\":\" Yes\",\"logprob\":-0.5},{\"token\":\" No\","
        "\"logprob\":-1.25}]}]}}],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":1}}";
    ck_assert_int_eq(parse(RK_TEACHER_CHAT, true, chat, &a, &eb), RK_OK);
    ck_assert_str_eq(a.text, " Yes");
    ck_assert_str_eq(a.finish, "stop");
    ck_assert_uint_eq(a.n_toks, 1);
    ck_assert_int_eq(a.toks[0].n_top, 2);
    ck_assert_str_eq(a.toks[0].top[1].token, " No");
    ck_assert(fabs(a.toks[0].top[1].lp + 1.25) < 1e-12);
    ck_assert_int_eq(a.prompt_tokens, 12);
    rk_teacher_answer_fini(&a);

    const char *cmpl = "{\"choices\":[{\"text\":\"ab\",\"finish_reason\":null,\"logprobs\":{"
                       "\"tokens\":[\"a\",\"b\"],\"token_logprobs\":[-0.1,-0.2],"
                       "\"top_logprobs\":[{\"a\":-0.1,\"c\":-3},{\"b\":-0.2}]}}]}";
    ck_assert_int_eq(parse(RK_TEACHER_COMPLETION, true, cmpl, &a, &eb), RK_OK);
    ck_assert_str_eq(a.text, "ab");
    ck_assert_str_eq(a.finish, "");
    ck_assert_uint_eq(a.n_toks, 2);
    ck_assert_int_eq(a.toks[0].n_top, 2);
    ck_assert_int_eq(a.prompt_tokens, -1);
    rk_teacher_answer_fini(&a);
    // Without logprobs asked, none are needed.
    ck_assert_int_eq(parse(RK_TEACHER_COMPLETION, false, "{\"choices\":[{\"text\":\"x\"}]}", &a,
                           &eb), RK_OK);
    rk_teacher_answer_fini(&a);
}
END_TEST

START_TEST(parse_malformed)
{
    static const struct {
        enum rk_teacher_kind k;
        bool lps;
        const char *body, *msg;
    } cases[] = {
        {RK_TEACHER_CHAT, false, "not json{", "not JSON"},
        {RK_TEACHER_CHAT, false, "", "not JSON"},
        {RK_TEACHER_CHAT, false, "[1,2]", "not a JSON object"},
        {RK_TEACHER_CHAT, false, "{\"error\":{\"message\":\"x\"}}", "error object"},
        {RK_TEACHER_CHAT, false, "{\"choices\":[]}", "'choices' is missing or empty"},
        {RK_TEACHER_CHAT, false, "{\"choices\":[3]}", "choices[0] is not an object"},
        {RK_TEACHER_CHAT, false, "{\"choices\":[{\"message\":{\"content\":5}}]}",
         "message.content"},
        {RK_TEACHER_CHAT, false, "{\"choices\":[{\"message\":{\"content\":\"a\"},"
         "\"finish_reason\":1}]}", "finish_reason"},
        {RK_TEACHER_COMPLETION, false, "{\"choices\":[{\"message\":{\"content\":\"a\"}}]}",
         "choices[0].text"},
        {RK_TEACHER_CHAT, true, "{\"choices\":[{\"message\":{\"content\":\"a\"}}]}",
         "logprobs.content is not an array"},
        {RK_TEACHER_CHAT, true, "{\"choices\":[{\"message\":{\"content\":\"a\"},\"logprobs\":"
         "{\"content\":[{\"token\":1,\"logprob\":0}]}}]}", "lacks a string 'token'"},
        {RK_TEACHER_COMPLETION, true, "{\"choices\":[{\"text\":\"a\",\"logprobs\":{\"tokens\":"
         "[\"a\"],\"token_logprobs\":[]}}]}", "of one length"},
        {RK_TEACHER_CHAT, false, "{\"choices\":[{\"message\":{\"content\":\"a\"}}],"
         "\"usage\":{\"prompt_tokens\":-4}}", "usage"},
        {RK_TEACHER_CHAT, false, "{\"choices\":[{\"message\":{\"content\":\"a\"}}],"
         "\"choices\":[]}", "not JSON"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct rk_teacher_answer a;
        struct rk_errbuf eb = {0};
        ck_assert_msg(parse(cases[i].k, cases[i].lps, cases[i].body, &a, &eb) == RK_EFORMAT,
                      "case %zu accepted", i);
        ck_assert_msg(strstr(eb.msg, cases[i].msg) && !strncmp(eb.msg, "judge: ", 7),
                      "case %zu: message '%s' lacks '%s'", i, eb.msg, cases[i].msg);
        ck_assert_ptr_null(a.text);
    }
}
END_TEST

static struct rk_teacher *client(const char *url, const char *key, int retries)
{
    struct rk_teacher_config c;
    rk_teacher_config_default(&c);
    c.name = "judge";
    c.base_url = url;
    c.model = "m";
    c.api_key = key;
    c.retries = retries;
    c.backoff_base_ms = 10;
    c.backoff_max_ms = 40;
    c.connect_timeout_ms = 1000;
    c.timeout_ms = 2000;
    struct rk_teacher *t = NULL;
    struct rk_errbuf eb = {0};
    ck_assert_msg(rk_teacher_create(&c, &t, &eb) == RK_OK, "%s", eb.msg);
    return t;
}

START_TEST(config_and_body)
{
    struct rk_teacher_config c;
    rk_teacher_config_default(&c);
    c.model = "m";
    static const char *bad[] = {"ftp://x/v1", "file:///etc/passwd", "http://user:pw@host/v1",
                                "http://host/v1?x=1", "http://", "host:8080/v1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct rk_teacher *t = NULL;
        struct rk_errbuf eb = {0};
        c.base_url = bad[i];
        ck_assert_msg(rk_teacher_create(&c, &t, &eb) == RK_EINVAL, "%s accepted", bad[i]);
        ck_assert_ptr_null(t);
    }
    struct rk_teacher *t = client("http://127.0.0.1:1/v1/", "sk-secret", 0);
    ck_assert_str_eq(rk_teacher_url(t), "http://127.0.0.1:1/v1");
    struct rk_teacher_msg m = {"user", "hi"};
    struct rk_teacher_req q = {.kind = RK_TEACHER_CHAT, .msgs = &m, .n_msgs = 1,
                               .max_tokens = 3, .top_logprobs = 5};
    char *body = rk_teacher_body(t, &q);
    ck_assert_str_eq(body, "{\"logprobs\":true,\"max_tokens\":3,\"messages\":[{\"content\":\"hi\","
                           "\"role\":\"user\"}],\"model\":\"m\",\"stream\":false,\"temperature\":"
                           "0.0,\"top_logprobs\":5}");
    ck_assert_ptr_null(strstr(body, "sk-secret"));
    free(body);
    // A byte-level sample cut inside a character: the bad bytes become U+FFFD
    // (jansson refuses invalid UTF-8, which once sent an empty message list),
    // in chat messages, the prompt and stop strings alike.
    struct rk_teacher_msg bm = {"user", "a\xe2\x82 b\xff"};
    q.msgs = &bm;
    body = rk_teacher_body(t, &q);
    ck_assert_msg(strstr(body, "\"messages\":[{\"content\":\"a\xef\xbf\xbd\xef\xbf\xbd b\xef\xbf\xbd\""),
                  "%s", body);
    free(body);
    const char *stops[1] = {"\xc3"};
    struct rk_teacher_req qc = {.kind = RK_TEACHER_COMPLETION, .prompt = "x\xc3", .max_tokens = 3,
                                .top_logprobs = -1, .stop = stops, .n_stop = 1};
    body = rk_teacher_body(t, &qc);
    ck_assert_msg(strstr(body, "\"prompt\":\"x\xef\xbf\xbd\"") &&
                  strstr(body, "\"stop\":[\"\xef\xbf\xbd\"]"), "%s", body);
    free(body);
    // A derived client with another URL does not carry the key; the same URL does.
    struct rk_teacher *d = NULL;
    ck_assert_int_eq(rk_teacher_derive(t, NULL, "other", &d, NULL), RK_OK);
    ck_assert_str_eq(rk_teacher_model(d), "other");
    rk_teacher_free(d);
    rk_teacher_free(t);
}
END_TEST

/* A loopback port with nothing listening. */
static int closed_port(void)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert_int_eq(bind(s, (struct sockaddr *)&a, sizeof a), 0);
    socklen_t l = sizeof a;
    getsockname(s, (struct sockaddr *)&a, &l);
    close(s);
    return ntohs(a.sin_port);
}

START_TEST(call_refused_retries)
{
    ck_assert_int_eq(rk_teacher_global_init(), RK_OK);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1", closed_port());
    struct rk_teacher *t = client(url, "sk-do-not-show", 2);
    struct rk_teacher_msg m = {"user", "hi"};
    struct rk_teacher_req q = {.kind = RK_TEACHER_CHAT, .msgs = &m, .n_msgs = 1,
                               .max_tokens = 1, .top_logprobs = -1};
    struct rk_teacher_answer a;
    struct rk_errbuf eb = {0};
    ck_assert_int_eq(rk_teacher_call(t, &q, NULL, 0, NULL, &a, &eb), RK_EIO);
    ck_assert_int_eq(a.attempts, 3); // the first and two retries
    ck_assert_msg(strstr(eb.msg, "judge: ") == eb.msg && strstr(eb.msg, "3 attempt"), "%s",
                  eb.msg);
    ck_assert_ptr_null(strstr(eb.msg, "sk-do-not-show"));
    // A bad request is refused before any attempt.
    q.max_tokens = 0;
    ck_assert_int_eq(rk_teacher_call(t, &q, NULL, 0, NULL, &a, &eb), RK_EINVAL);
    // A cancelled call stops.
    atomic_bool cancel = true;
    q.max_tokens = 1;
    ck_assert_int_eq(rk_teacher_call(t, &q, NULL, 0, &cancel, &a, &eb), RK_ECANCELED);
    rk_teacher_free(t);
}
END_TEST

struct held_call {
    struct rk_teacher *t;
    int rc;
};

static void *call_thread(void *arg)
{
    struct held_call *h = arg;
    struct rk_teacher_msg m = {"user", "hi"};
    struct rk_teacher_req q = {.kind = RK_TEACHER_CHAT, .msgs = &m, .n_msgs = 1,
                               .max_tokens = 1, .top_logprobs = -1};
    struct rk_teacher_answer a;
    h->rc = rk_teacher_call(h->t, &q, NULL, 0, NULL, &a, NULL);
    return NULL;
}

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

START_TEST(call_inflight_limit)
{
    // A listener that never answers holds the one slot; a second call waits
    // for it and gives up at its deadline without making an attempt.
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert_int_eq(bind(ls, (struct sockaddr *)&sa, sizeof sa), 0);
    ck_assert_int_eq(listen(ls, 8), 0);
    socklen_t l = sizeof sa;
    getsockname(ls, (struct sockaddr *)&sa, &l);
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1", ntohs(sa.sin_port));
    struct rk_teacher_config c;
    rk_teacher_config_default(&c);
    c.name = "judge";
    c.base_url = url;
    c.model = "m";
    c.retries = 0;
    c.inflight_max = 1;
    c.timeout_ms = 600;
    struct rk_teacher *t = NULL;
    ck_assert_int_eq(rk_teacher_create(&c, &t, NULL), RK_OK);
    struct held_call h = {t, 0};
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, call_thread, &h), 0);
    while (rk_teacher_inflight(t) < 1)
        usleep(1000);
    struct rk_teacher_msg m = {"user", "hi"};
    struct rk_teacher_req q = {.kind = RK_TEACHER_CHAT, .msgs = &m, .n_msgs = 1,
                               .max_tokens = 1, .top_logprobs = -1};
    struct rk_teacher_answer a;
    struct rk_errbuf eb = {0};
    ck_assert_int_eq(rk_teacher_call(t, &q, NULL, now_us() + 100000, NULL, &a, &eb),
                     RK_ETIMEOUT);
    ck_assert_int_eq(a.attempts, 0);
    ck_assert_msg(strstr(eb.msg, "in flight"), "%s", eb.msg);
    pthread_join(th, NULL);
    ck_assert_int_eq(h.rc, RK_ETIMEOUT); // the held call: no answer within its timeout
    ck_assert_int_eq(rk_teacher_inflight(t), 0);
    close(ls);
    rk_teacher_free(t);
}
END_TEST

START_TEST(call_cached)
{
    // A cached answer is used without any connection (the port is closed).
    char url[64];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1", closed_port());
    struct rk_teacher *t = client(url, NULL, 0);
    struct rk_teacher_cache *c = NULL;
    ck_assert_int_eq(rk_teacher_cache_open(NULL, 16, 1 << 20, &c, NULL), RK_OK);
    struct rk_teacher_req q = {.kind = RK_TEACHER_COMPLETION, .prompt = "2+2=", .max_tokens = 2,
                               .top_logprobs = -1};
    char *body = rk_teacher_body(t, &q), key[512];
    snprintf(key, sizeof key, "%s/completions %s", url, body);
    free(body);
    const char *ans = "{\"choices\":[{\"text\":\" 4\"}]}";
    ck_assert_int_eq(rk_teacher_cache_put(c, key, ans, strlen(ans), NULL), RK_OK);
    struct rk_teacher_answer a;
    struct rk_errbuf eb = {0};
    ck_assert_int_eq(rk_teacher_call(t, &q, c, 0, NULL, &a, &eb), RK_OK);
    ck_assert(a.cached);
    ck_assert_int_eq(a.attempts, 0);
    ck_assert_str_eq(a.text, " 4");
    rk_teacher_answer_fini(&a);
    rk_teacher_cache_free(c);
    rk_teacher_free(t);
}
END_TEST

static char *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    char *b = malloc(1 << 16);
    *len = fread(b, 1, 1 << 16, f);
    fclose(f);
    return b;
}

static void spit(const char *path, const char *mode, const char *s)
{
    FILE *f = fopen(path, mode);
    ck_assert_ptr_nonnull(f);
    fputs(s, f);
    fclose(f);
}

START_TEST(cache_file)
{
    char dir[] = "/tmp/rk-teacher-XXXXXX", path[256];
    ck_assert_ptr_nonnull(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/teacher-cache.jsonl", dir);
    struct rk_teacher_cache *c = NULL;
    struct rk_errbuf eb = {0};
    ck_assert_int_eq(rk_teacher_cache_open(path, 3, 1 << 20, &c, &eb), RK_OK);
    ck_assert_uint_eq(rk_teacher_cache_count(c), 0);
    ck_assert_int_eq(access(path, F_OK), -1); // created by the first answer
    ck_assert_int_eq(rk_teacher_cache_put(c, "k1", "a\"1\n", 4, &eb), RK_OK);
    // Append-only: the second answer leaves the first line's bytes alone.
    size_t len1, len2, len;
    char *f1 = slurp(path, &len1);
    static const char line1[] = "{\"key\":\"k1\",\"answer\":\"a\\\"1\\n\"}\n";
    ck_assert_uint_eq(len1, sizeof line1 - 1);
    ck_assert_mem_eq(f1, line1, len1);
    ck_assert_int_eq(rk_teacher_cache_put(c, "k2", "b2", 2, &eb), RK_OK);
    char *f2 = slurp(path, &len2);
    ck_assert_uint_gt(len2, len1);
    ck_assert_mem_eq(f2, f1, len1);
    ck_assert_mem_eq(f2 + len1, "{\"key\":\"k2\",\"answer\":\"b2\"}\n", len2 - len1);
    ck_assert_int_eq(rk_teacher_cache_put(c, "k2", "zz", 2, &eb), RK_OK); // known: no line
    ck_assert_int_eq(rk_teacher_cache_put(c, "k3", "c3", 2, &eb), RK_OK);
    ck_assert_int_eq(rk_teacher_cache_put(c, "k4", "d4", 2, &eb), RK_OK); // over: not kept
    ck_assert_uint_eq(rk_teacher_cache_count(c), 3);
    free(slurp(path, &len));
    rk_teacher_cache_free(c);
    // Reopened (a resumed job): the answers are there, byte for byte.
    ck_assert_int_eq(rk_teacher_cache_open(path, 3, 1 << 20, &c, &eb), RK_OK);
    char *v = rk_teacher_cache_get(c, "k1", &len);
    ck_assert_ptr_nonnull(v);
    ck_assert_uint_eq(len, 4);
    ck_assert_mem_eq(v, "a\"1\n", 4);
    free(v);
    ck_assert_ptr_null(rk_teacher_cache_get(c, "k4", &len));
    rk_teacher_cache_free(c);
    // A crash in the middle of an append: the torn last record (no newline,
    // or a line that is no whole JSON value) is ignored and cut off, and the
    // next answer starts a clean line.
    static const char *torn[] = {"{\"key\":\"k4\",\"ans", "{\"key\":\"k4\",\"answer\":\"d4\"}",
                                 "{\"key\":\"k4\",\"answ\n", "\0\0\0\0"};
    for (size_t i = 0; i < sizeof torn / sizeof torn[0]; i++) {
        size_t keep;
        free(slurp(path, &keep));
        spit(path, "a", torn[i][0] ? torn[i] : "\n");
        if (!torn[i][0]) { // zeros, then a newline
            FILE *f = fopen(path, "r+b");
            fseek(f, (long)keep, SEEK_SET);
            fwrite("\0\0\0\0\n", 1, 5, f);
            fclose(f);
        }
        c = NULL;
        ck_assert_msg(rk_teacher_cache_open(path, 16, 1 << 20, &c, &eb) == RK_OK,
                      "torn record %zu: %s", i, eb.msg);
        ck_assert_uint_eq(rk_teacher_cache_count(c), 3);
        free(slurp(path, &len));
        ck_assert_uint_eq(len, keep);
        ck_assert_int_eq(rk_teacher_cache_put(c, "k5", "e5", 2, &eb), RK_OK);
        rk_teacher_cache_free(c);
        ck_assert_int_eq(rk_teacher_cache_open(path, 16, 1 << 20, &c, &eb), RK_OK);
        ck_assert_uint_eq(rk_teacher_cache_count(c), 4);
        v = rk_teacher_cache_get(c, "k5", &len);
        ck_assert(v && len == 2 && !memcmp(v, "e5", 2));
        free(v);
        rk_teacher_cache_free(c);
        // back to the three answers for the next case
        FILE *f = fopen(path, "r+b");
        ck_assert_int_eq(ftruncate(fileno(f), (off_t)keep), 0);
        fclose(f);
    }
    // Hostile files are refused with the reason: a bad line before the
    // last, a whole last line that is no record, repeated keys, limits.
    static const char *bad[] = {
        "garbage\n{\"key\":\"a\",\"answer\":\"x\"}\n", "[]\n",
        "{\"key\":\"a\"}\n{\"key\":\"b\",\"answer\":\"x\"}\n",
        "{\"key\":\"a\",\"answer\":\"x\",\"more\":1}\n",
        "{\"key\":\"a\",\"answer\":\"x\"}\n{\"key\":\"a\",\"answer\":\"y\"}\n",
        "{\"key\":\"a\",\"answer\":\"x\"}\n{\"key\":\"b\",\"answer\":\"y\"}\n"
        "{\"key\":\"c\",\"answer\":\"z\"}\n{\"key\":\"d\",\"answer\":\"w\"}\n"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        spit(path, "w", bad[i]);
        c = NULL;
        ck_assert_msg(rk_teacher_cache_open(path, 3, 1 << 20, &c, &eb) != RK_OK,
                      "file %zu accepted", i);
        ck_assert_ptr_null(c);
        ck_assert_ptr_nonnull(strstr(eb.msg, "teacher cache"));
    }
    free(f1), free(f2);
    unlink(path);
    rmdir(dir);
}
END_TEST

RK_TEST_SUITE(teacher_suite, RK_SELF_CONTAINED)
{
    Suite *s = suite_create("teacher");
    TCase *tc = tcase_create("client");
    tcase_add_test(tc, backoff_schedule);
    tcase_add_test(tc, retry_classes);
    tcase_add_test(tc, parse_valid);
    tcase_add_test(tc, parse_malformed);
    tcase_add_test(tc, config_and_body);
    tcase_add_test(tc, call_refused_retries);
    tcase_add_test(tc, call_inflight_limit);
    tcase_add_test(tc, call_cached);
    suite_add_tcase(s, tc);
    tc = tcase_create("cache");
    tcase_add_test(tc, cache_file);
    suite_add_tcase(s, tc);
    return s;
}

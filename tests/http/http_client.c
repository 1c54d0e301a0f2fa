/* http_client.c - the tests' blocking HTTP client (see http_client.h). */
#include "http_client.h"

#include <check.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int dial(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) {
        close(fd);
        return -1;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

void send_all(int fd, const void *b, size_t n)
{
    const char *p = b;
    while (n) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0)
            return;
        p += w;
        n -= (size_t)w;
    }
}

void resp_free(struct resp *r)
{
    free(r->head);
    free(r->body);
    memset(r, 0, sizeof *r);
}

/* Appends what fd gives until EOF or timeout_ms to buf[*n] (capacity *cap,
 * grown as needed); buf stays NUL-terminated. */
static char *read_more(int fd, int timeout_ms, char *buf, size_t *n, size_t *cap)
{
    int64_t t0 = now_ms();
    for (;;) {
        struct pollfd pf = {fd, POLLIN, 0};
        int left = timeout_ms - (int)(now_ms() - t0);
        if (left <= 0 || poll(&pf, 1, left) <= 0)
            break;
        if (*n + 4096 > *cap)
            buf = realloc(buf, *cap *= 2);
        ssize_t k = recv(fd, buf + *n, *cap - *n - 1, 0);
        if (k <= 0)
            break;
        *n += (size_t)k;
    }
    buf[*n] = 0;
    return buf;
}

/* A whole response as received (head, blank line, body, chunked or not) in
 * buf[n] (NUL-terminated); takes buf. */
static struct resp parse_resp(char *buf, size_t n)
{
    struct resp r = {0};
    char *sep = strstr(buf, "\r\n\r\n");
    if (!sep) {
        r.head = buf;
        r.body = strdup("");
        return r;
    }
    *sep = 0;
    r.head = strdup(buf);
    sscanf(buf, "HTTP/1.%*d %d", &r.status);
    char *body = sep + 4;
    size_t blen = n - (size_t)(body - buf);
    char *out = malloc(blen + 1);
    size_t o = 0;
    if (strcasestr(r.head, "Transfer-Encoding: chunked")) {
        char *p = body, *end = body + blen;
        while (p < end) {
            unsigned long sz = strtoul(p, NULL, 16);
            char *nl = strstr(p, "\r\n");
            if (!nl || sz == 0)
                break;
            p = nl + 2;
            if (p + sz > end)
                sz = (unsigned long)(end - p);
            memcpy(out + o, p, sz);
            o += sz;
            p += sz + 2;
        }
    } else {
        memcpy(out, body, blen);
        o = blen;
    }
    out[o] = 0;
    r.body = out;
    r.body_len = o;
    free(buf);
    return r;
}

struct resp read_resp(int fd, int timeout_ms)
{
    size_t cap = 65536, n = 0;
    char *buf = read_more(fd, timeout_ms, malloc(cap), &n, &cap);
    return parse_resp(buf, n);
}

struct resp read_resp_after(int fd, const void *start, size_t len, int timeout_ms)
{
    size_t cap = len + 65536, n = len;
    char *buf = malloc(cap);
    memcpy(buf, start, len);
    buf = read_more(fd, timeout_ms, buf, &n, &cap);
    return parse_resp(buf, n);
}

struct resp request_t(int port, const char *method, const char *path, const char *hdrs,
                             const void *body, size_t blen, int timeout_ms)
{
    int fd = dial(port);
    ck_assert_int_ge(fd, 0);
    char head[2048];
    int hn = snprintf(head, sizeof head,
                      "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s"
                      "Content-Length: %zu\r\n\r\n",
                      method, path, hdrs ? hdrs : "", blen);
    send_all(fd, head, (size_t)hn);
    if (blen)
        send_all(fd, body, blen);
    struct resp r = read_resp(fd, timeout_ms);
    close(fd);
    return r;
}

struct resp request(int port, const char *method, const char *path, const char *hdrs,
                           const void *body, size_t blen)
{
    return request_t(port, method, path, hdrs, body, blen, 30000);
}

struct resp get(int port, const char *path, const char *hdrs)
{
    return request(port, "GET", path, hdrs, NULL, 0);
}

struct resp post(int port, const char *path, const char *hdrs, const char *body)
{
    return request(port, "POST", path, hdrs, body, strlen(body));
}

int get_status(int port, const char *path, const char *hdrs)
{
    struct resp r = get(port, path, hdrs);
    int status = r.status;
    resp_free(&r);
    return status;
}

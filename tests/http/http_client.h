/*
 * http_client.h - a small blocking HTTP/1.1 client for the end-to-end tests:
 * one request per connection (Connection: close), chunked bodies decoded.
 */
#ifndef RK_TEST_HTTP_CLIENT_H
#define RK_TEST_HTTP_CLIENT_H

#include <stddef.h>
#include <stdint.h>

struct resp {
    int status;
    char *head;
    char *body; /* de-chunked */
    size_t body_len;
};

int64_t now_ms(void);
int dial(int port);
void send_all(int fd, const void *b, size_t n);
void resp_free(struct resp *r);
/* Read a whole response until the server closes; timeout_ms bounds the wait. */
struct resp read_resp(int fd, int timeout_ms);
/* The same for a response whose first len bytes (start) were already
 * received from fd: head and chunks are decoded over the whole. */
struct resp read_resp_after(int fd, const void *start, size_t len, int timeout_ms);
struct resp request_t(int port, const char *method, const char *path, const char *hdrs,
                      const void *body, size_t blen, int timeout_ms);
/* request_t with a 30 s timeout */
struct resp request(int port, const char *method, const char *path, const char *hdrs,
                    const void *body, size_t blen);
struct resp get(int port, const char *path, const char *hdrs);
/* GET and return only the status (0 when no answer came) */
int get_status(int port, const char *path, const char *hdrs);
struct resp post(int port, const char *path, const char *hdrs, const char *body);

#endif

/*
 * json_util.c - UTF-8 and path-scrubbing helpers for JSON bodies, plus time
 * helpers. The byte buffer they write into (struct rk_buf, with JSON string
 * escaping) is core's, rk_fileio.h.
 */
#include "srv.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int64_t rk_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Length of the well-formed UTF-8 sequence at s[0..n) (RFC 3629, Table 3-7
 * of Unicode: no overlong forms, no surrogates, nothing above U+10FFFF), or
 * 0 if the bytes there are not one. */
static size_t utf8_seq_len(const uint8_t *s, size_t n)
{
    uint8_t c = s[0];
    if (c < 0x80)
        return 1;
    size_t l;
    uint8_t lo = 0x80, hi = 0xbf; // allowed range of the second byte
    if (c >= 0xc2 && c <= 0xdf)
        l = 2;
    else if (c >= 0xe0 && c <= 0xef) {
        l = 3;
        if (c == 0xe0)
            lo = 0xa0;
        else if (c == 0xed)
            hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        l = 4;
        if (c == 0xf0)
            lo = 0x90;
        else if (c == 0xf4)
            hi = 0x8f;
    } else
        return 0;
    if (n < l || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t k = 2; k < l; k++)
        if ((s[k] & 0xc0) != 0x80)
            return 0;
    return l;
}

size_t rk_utf8_sanitize(const uint8_t *s, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n && o + 4 < cap;) {
        size_t l = utf8_seq_len(s + i, n - i);
        if (l) {
            memcpy(out + o, s + i, l);
            o += l;
            i += l;
        } else {
            memcpy(out + o, "\xef\xbf\xbd", 3);
            o += 3;
            i++;
        }
    }
    out[o] = 0;
    return o;
}

size_t rk_utf8_cut(const char *s, size_t n)
{
    const uint8_t *u = (const uint8_t *)s;
    size_t i = n;
    // Back over at most three continuation bytes to the sequence's lead.
    while (i > 0 && n - i < 3 && (u[i - 1] & 0xc0) == 0x80)
        i--;
    if (i == 0 || u[i - 1] < 0xc0)
        return n; // ends in ASCII or in stray continuation bytes: nothing to split
    size_t need = u[i - 1] >= 0xf0 ? 4 : u[i - 1] >= 0xe0 ? 3 : 2;
    return n - (i - 1) < need ? i - 1 : n;
}

bool rk_scrub_paths(char *msg, size_t cap, const char *root)
{
    static const char mark[] = "[server path]";
    char needle[1024];
    size_t rl = root ? strlen(root) : 0;
    if (!rl || rl + 2 > sizeof needle)
        return false;
    // Paths are built as root + "/" + ...; requiring the slash keeps a
    // short root ("data") from matching ordinary words.
    snprintf(needle, sizeof needle, "%s%s", root, root[rl - 1] == '/' ? "" : "/");
    bool any = false;
    char *p;
    while ((p = strstr(msg, needle))) {
        size_t tok = strcspn(p, " \t\n:'\",");
        size_t tail = strlen(p + tok);
        size_t ml = sizeof mark - 1;
        if ((size_t)(p - msg) + ml + tail + 1 > cap)
            tail = cap - 1 - (size_t)(p - msg) - ml; // cannot grow past cap: cut the tail
        memmove(p + ml, p + tok, tail);
        memcpy(p, mark, ml);
        p[ml + tail] = 0;
        any = true;
    }
    return any;
}

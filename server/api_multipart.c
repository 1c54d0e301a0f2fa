/*
 * api_multipart.c - a multipart/form-data parser for POST /v1/files: parts split
 * by the boundary of the Content-Type header, with their name and filename.
 */
#include "api_jobs_int.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <time.h>


/* A quoted or plain parameter value from a header (`key="v"` or `key=v`). */
static bool header_param(const char *h, size_t hn, const char *key, char *out, size_t cap)
{
    size_t kl = strlen(key);
    for (size_t i = 0; i + kl + 1 < hn; i++) {
        if (strncasecmp(h + i, key, kl) || h[i + kl] != '=' ||
            (i > 0 && h[i - 1] != ' ' && h[i - 1] != ';' && h[i - 1] != '\t'))
            continue;
        const char *p = h + i + kl + 1, *e = h + hn;
        size_t n = 0;
        if (p < e && *p == '"') {
            p++;
            while (p < e && *p != '"' && n + 1 < cap) {
                if (*p == '\\' && p + 1 < e)
                    p++;
                out[n++] = *p++;
            }
        } else {
            while (p < e && *p != ';' && *p != ' ' && *p != '\r' && n + 1 < cap)
                out[n++] = *p++;
        }
        out[n] = 0;
        return true;
    }
    return false;
}

/* Split a multipart/form-data body into parts (pointers into `body`). */
int rk_multipart_parse(const char *ctype, const char *body, size_t len, struct part *parts,
              int max)
{
    char bnd[80], delim[96];
    if (!ctype || strncasecmp(ctype, "multipart/form-data", 19) ||
        !header_param(ctype, strlen(ctype), "boundary", bnd, sizeof bnd) || !bnd[0])
        return -1;
    int dl = snprintf(delim, sizeof delim, "--%s", bnd);
    const char *end = body + len;
    const char *p = memmem(body, len, delim, (size_t)dl);
    int n = 0;
    while (p) {
        p += dl;
        if (end - p >= 2 && p[0] == '-' && p[1] == '-')
            return n; // closing delimiter
        if (end - p < 2 || p[0] != '\r' || p[1] != '\n')
            return -1;
        p += 2;
        const char *he = memmem(p, (size_t)(end - p), "\r\n\r\n", 4);
        if (!he)
            return -1;
        // The part ends at CRLF + delimiter.
        char nd[100];
        int ndl = snprintf(nd, sizeof nd, "\r\n%s", delim);
        const char *q = memmem(he + 4, (size_t)(end - he - 4), nd, (size_t)ndl);
        if (!q)
            return -1;
        if (n < max) {
            struct part *pt = &parts[n];
            memset(pt, 0, sizeof *pt);
            // Find Content-Disposition among the part's headers.
            for (const char *l = p; l < he;) {
                const char *le = memmem(l, (size_t)(he - l), "\r\n", 2);
                if (!le)
                    le = he;
                if ((size_t)(le - l) > 20 && !strncasecmp(l, "Content-Disposition:", 20)) {
                    header_param(l, (size_t)(le - l), "name", pt->name, sizeof pt->name);
                    header_param(l, (size_t)(le - l), "filename", pt->filename,
                                 sizeof pt->filename);
                }
                l = le + 2;
            }
            pt->data = he + 4;
            pt->len = (size_t)(q - he - 4);
            n++;
        }
        p = q + 2;
    }
    return -1;
}

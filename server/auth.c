/*
 * auth.c - API keys: a file of "KEY TENANT" lines (blank lines and lines
 * starting with '#' ignored). Keys are compared in constant time against
 * every configured key, so neither the position of a matching key nor the
 * length of a common prefix shows in the response time.
 */
#include "srv.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define KEY_MAX 256

struct key {
    char key[KEY_MAX];
    size_t len;
    char tenant[RK_STATE_ID_MAX + 1];
};

struct rk_auth {
    struct key *keys;
    size_t n;
};

int rk_auth_load(const char *path, struct rk_auth **out, char *err, size_t cap)
{
    *out = NULL;
    FILE *f = fopen(path, "r");
    if (!f) {
        int e = errno;
        const char *hint = "";
        if (e == EACCES)
            hint = "; make it readable by that uid (chmod 0644 the file, or chown it to the "
                   "uid; the container runs as uid 10001)";
        else if (e == ENOENT)
            hint = "; create it with 'KEY TENANT' lines";
        snprintf(err, cap, "cannot open API key file %s: %s (uid %ld)%s", path, strerror(e),
                 (long)getuid(), hint);
        return RK_EIO;
    }
    struct rk_auth *a = calloc(1, sizeof *a);
    if (!a) {
        fclose(f);
        return RK_ENOMEM;
    }
    char line[1024];
    int ln = 0, rc = RK_OK;
    size_t cap_k = 0;
    while (fgets(line, sizeof line, f)) {
        ln++;
        char *p = line;
        while (*p == ' ' || *p == '\t')
            p++;
        if (!*p || *p == '#' || *p == '\n' || *p == '\r')
            continue;
        char k[KEY_MAX + 2], t[RK_STATE_ID_MAX + 2], extra[8];
        int nf = sscanf(p, "%257s %65s %7s", k, t, extra);
        if (nf != 2 || strlen(k) >= KEY_MAX || strlen(k) < 8 || !rk_state_id_valid(t)) {
            snprintf(err, cap, "%s:%d: expected 'KEY TENANT' (key 8-255 characters, tenant "
                     "[a-z0-9][a-z0-9_-]{0,63})", path, ln);
            rc = RK_EINVAL;
            break;
        }
        if (a->n == cap_k) {
            size_t nc = cap_k ? cap_k * 2 : 16;
            void *q = realloc(a->keys, nc * sizeof *a->keys);
            if (!q) {
                rc = RK_ENOMEM;
                break;
            }
            a->keys = q;
            cap_k = nc;
        }
        struct key *e = &a->keys[a->n++];
        memset(e, 0, sizeof *e);
        e->len = strlen(k);
        memcpy(e->key, k, e->len);
        snprintf(e->tenant, sizeof e->tenant, "%.64s", t);
    }
    fclose(f);
    if (rc == RK_OK && a->n == 0) {
        snprintf(err, cap, "%s: no keys", path);
        rc = RK_EINVAL;
    }
    if (rc != RK_OK) {
        rk_auth_free(a);
        return rc;
    }
    *out = a;
    return RK_OK;
}

void rk_auth_free(struct rk_auth *a)
{
    if (!a)
        return;
    // Do not leave keys behind in freed memory.
    if (a->keys)
        memset(a->keys, 0, a->n * sizeof *a->keys);
    free(a->keys);
    free(a);
}

size_t rk_auth_n_keys(const struct rk_auth *a) { return a ? a->n : 0; }

bool rk_auth_check(const struct rk_auth *a, const char *key, size_t key_len, char *tenant,
                   size_t cap)
{
    if (!a || !key)
        return false;
    size_t found = SIZE_MAX;
    // Every configured key is compared over KEY_MAX bytes, whatever matches.
    for (size_t i = 0; i < a->n; i++) {
        const struct key *e = &a->keys[i];
        volatile unsigned char diff = (unsigned char)(e->len != key_len);
        for (size_t j = 0; j < KEY_MAX; j++) {
            unsigned char g = j < key_len ? (unsigned char)key[j] : 0;
            diff |= (unsigned char)(e->key[j] ^ g);
        }
        size_t mask = (size_t)0 - (size_t)(diff == 0);
        found = (found & ~mask) | (i & mask);
    }
    if (found == SIZE_MAX || key_len >= KEY_MAX)
        return false;
    snprintf(tenant, cap, "%s", a->keys[found].tenant);
    return true;
}

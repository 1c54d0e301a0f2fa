/*
 * routes.c - the route table: {method, pattern, handler}. Patterns are
 * literal segments and "{name}" captures; a capture matches one segment of
 * 1..64 characters of [A-Za-z0-9_.:-] (handlers validate ids strictly and
 * answer 404 for anything else). 404 and 405 are decided here, in one place.
 * Other parts of the server add their routes with rk_routes_add at start-up.
 */
#include "srv.h"

#include <stdlib.h>
#include <string.h>

int rk_routes_add(struct rk_srv *srv, const struct rk_route *routes, size_t n)
{
    if (srv->n_routes + n > srv->cap_routes) {
        size_t nc = srv->cap_routes ? srv->cap_routes : 32;
        while (nc < srv->n_routes + n)
            nc *= 2;
        void *p = realloc(srv->routes, nc * sizeof *srv->routes);
        if (!p)
            return RK_ENOMEM;
        srv->routes = p;
        srv->cap_routes = nc;
    }
    memcpy(srv->routes + srv->n_routes, routes, n * sizeof *routes);
    srv->n_routes += n;
    return RK_OK;
}

static bool seg_char_ok(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '-' || c == '.' || c == ':';
}

/* Match path against pattern; fills captures. */
static bool match(const char *pat, const char *path, struct rk_http_req *r)
{
    int np = 0;
    while (*pat && *path) {
        if (*pat == '{') {
            const char *pe = strchr(pat, '}');
            if (!pe)
                return false;
            size_t n = 0;
            while (path[n] && path[n] != '/')
                n++;
            if (n == 0 || n > RK_STATE_ID_MAX || np >= 2)
                return false;
            for (size_t i = 0; i < n; i++)
                if (!seg_char_ok(path[i]))
                    return false;
            memcpy(r->params[np], path, n);
            r->params[np][n] = 0;
            np++;
            pat = pe + 1;
            path += n;
            continue;
        }
        if (*pat != *path)
            return false;
        pat++;
        path++;
    }
    // A single trailing slash is tolerated.
    if (!*pat && path[0] == '/' && !path[1])
        path++;
    if (*pat || *path)
        return false;
    r->n_params = np;
    return true;
}

const struct rk_route *rk_routes_match(struct rk_srv *srv, struct rk_http_req *r, int *status,
                                       char *allow, size_t allow_cap)
{
    bool path_found = false;
    allow[0] = 0;
    for (size_t i = 0; i < srv->n_routes; i++) {
        const struct rk_route *rt = &srv->routes[i];
        if (!match(rt->pattern, r->path, r))
            continue;
        if (!strcmp(rt->method, r->method))
            return rt;
        if (!strstr(allow, rt->method) && strlen(allow) + strlen(rt->method) + 3 < allow_cap) {
            if (allow[0])
                strcat(allow, ", ");
            strcat(allow, rt->method);
        }
        path_found = true;
    }
    *status = path_found ? 405 : 404;
    return NULL;
}

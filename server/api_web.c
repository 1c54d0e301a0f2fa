/*
 * api_web.c - the browser UI: GET / (index.html), /app.js and /style.css,
 * embedded into the binary at build time from web/ (tools/embed.py). The
 * pages hold no data and need no API key; everything they show comes from the
 * authenticated API, with the key the user types into the page.
 */
#include "srv.h"

#include <string.h>

struct rk_web_asset {
    const char *name;
    const unsigned char *data;
    size_t len;
    const char *type;
};
extern const struct rk_web_asset rk_web_assets[];

static void h_asset(struct rk_http_req *r)
{
    const char *want = strcmp(r->path, "/") == 0 ? "/index.html" : r->path;
    for (const struct rk_web_asset *a = rk_web_assets; a->name; a++)
        if (!strcmp(a->name, want)) {
            rk_http_bytes(r, 200, a->type, a->data, a->len);
            return;
        }
    rk_http_error(r, 404, "not_found", NULL, "no such file: %s", r->path);
}

void rk_api_web_register(struct rk_srv *srv)
{
    static const struct rk_route routes[] = {
        {"GET", "/", h_asset, RK_ROUTE_STATIC, "/ui"},
        {"GET", "/index.html", h_asset, RK_ROUTE_STATIC, "/ui"},
        {"GET", "/app.js", h_asset, RK_ROUTE_STATIC, "/ui"},
        {"GET", "/style.css", h_asset, RK_ROUTE_STATIC, "/ui"},
    };
    rk_routes_add(srv, routes, sizeof routes / sizeof routes[0]);
}

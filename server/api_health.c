/*
 * api_health.c - GET /health (ready only while the engine thread is alive
 * and its heartbeat is fresh, and the server is not draining) and
 * GET /metrics (Prometheus text format 0.0.4).
 */
#include "srv.h"

#include <stdlib.h>
#include <string.h>

static void h_health(struct rk_http_req *r)
{
    struct rk_srv *srv = r->srv;
    char why[128] = "";
    bool ok = srv->engine && rk_engine_healthy(srv->engine, srv->cfg.health_stall_ms, why,
                                               sizeof why);
    if (ok && srv->draining) {
        ok = false;
        snprintf(why, sizeof why, "draining");
    }
    json_t *o = json_pack("{s:s,s:s,s:i,s:i}", "status", ok ? "ok" : "unavailable", "model",
                          srv->model_name, "active",
                          srv->engine ? rk_engine_active(srv->engine) : 0, "queued",
                          srv->engine ? rk_engine_queued(srv->engine) : 0);
    if (!ok && o)
        json_object_set_new(o, "reason", json_string(why));
    rk_http_json(r, ok ? 200 : 503, o);
}

static void h_metrics(struct rk_http_req *r)
{
    struct rk_buf b = {0};
    rk_metrics_render(r->srv, &b);
    rk_http_bytes(r, 200, "text/plain; version=0.0.4", b.p ? b.p : "", b.len);
    rk_buf_free(&b);
}

void rk_api_health_register(struct rk_srv *srv)
{
    static const struct rk_route routes[] = {
        {"GET", "/health", h_health, RK_ROUTE_PUBLIC, NULL},
        {"GET", "/metrics", h_metrics, 0, NULL},
    };
    rk_routes_add(srv, routes, sizeof routes / sizeof routes[0]);
}

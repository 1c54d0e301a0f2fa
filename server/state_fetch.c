/*
 * state_fetch.c - state lookups for request handlers without disk I/O on
 * the loop thread. A cache hit answers at once; a miss (the file must be
 * read, checked and parsed) runs rk_store_get on libuv's thread pool through
 * rk_http_offload, with the request suspended, and the handler is called
 * again when it is done. The store's LRU sees exactly what a synchronous
 * rk_store_get would: the hit, or the miss and the load that inserts it.
 */
#include "srv.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct state_fetch {
    struct rk_state_store *store;
    char tenant[RK_STATE_ID_MAX + 1];
    char id[RK_STATE_ID_MAX + 1];
    /* written by the worker; read on the loop thread after the offload's
     * completion */
    struct rk_state_ref *ref;
    int rc;
    struct rk_errbuf eb;
};

static void fetch_work(void *arg)
{
    struct state_fetch *f = arg;
    f->rc = rk_store_get(f->store, f->tenant, f->id, &f->ref, &f->eb);
}

static void fetch_free(void *arg)
{
    struct state_fetch *f = arg;
    if (f) {
        rk_state_ref_release(f->ref);
        free(f);
    }
}

int rk_state_fetch(struct rk_http_req *r, const char *id, struct rk_state_ref **out,
                   struct rk_errbuf *eb)
{
    struct rk_srv *srv = r->srv;
    *out = NULL;
    // The handler called again after an offloaded lookup: its answer.
    struct state_fetch *f = r->user_free == fetch_free ? r->user : NULL;
    if (f && !r->offload && !strcmp(f->id, id) && !strcmp(f->tenant, r->tenant)) {
        int rc = f->rc;
        *out = f->ref;
        f->ref = NULL;
        if (eb)
            *eb = f->eb;
        r->user = NULL;
        r->user_free = NULL;
        fetch_free(f);
        return rc;
    }
    if (rk_store_get_cached(srv->store, r->tenant, id, out) == RK_OK)
        return RK_OK;
    // Invalid names never reach the disk; a handler that keeps other data
    // in r->user cannot be suspended for the lookup (none does today).
    if (!rk_state_id_valid(r->tenant) || !rk_state_id_valid(id) || r->user || r->offload)
        return rk_store_get(srv->store, r->tenant, id, out, eb);
    f = calloc(1, sizeof *f);
    if (!f)
        return rk_errbuf_set(eb, RK_ENOMEM, "out of memory");
    f->store = srv->store;
    snprintf(f->tenant, sizeof f->tenant, "%s", r->tenant);
    snprintf(f->id, sizeof f->id, "%s", id);
    r->user = f;
    r->user_free = fetch_free;
    rk_http_offload(r, fetch_work, f); // on failure a 503 is prepared
    return RK_STATE_FETCH_PENDING;
}

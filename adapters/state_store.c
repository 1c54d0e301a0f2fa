/*
 * state_store.c - the directory-backed store of state adapters, with
 * per-tenant namespaces, immutable reference-counted versions and an LRU
 * cache bounded in bytes.
 *
 * DESIGN. One mutex (`mu`) guards the cache: a hash table of the current
 * version of each cached tenant/id plus an LRU list. A version
 * (struct rk_state_ref) is immutable once made; the cache holds one
 * reference to it and every user (a request, a job) holds its own, so
 * replacing, deleting or evicting an id only drops the cache's reference and
 * the old version lives until its last user releases it. Writers (put,
 * delete) are serialised by a second mutex (`wmu`) so that version numbers
 * increase by one per replace; readers load files outside `mu` and insert the
 * result only if no writer ran meanwhile (the `gen` counter), so a reader
 * can never re-insert a version that a concurrent delete or put removed.
 */
#include "state_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define N_BUCKETS 1024

struct rk_state_ref {
    atomic_int refs;
    float *data; /* [rk_adapter_len]: the state, then a kernel state's part */
    struct rk_state_meta meta;
    size_t bytes;
    char tenant[RK_STATE_ID_MAX + 1];
    char id[RK_STATE_ID_MAX + 1];
    /* cache links, guarded by the store's mu */
    bool in_cache;
    struct rk_state_ref *hnext;            /* hash chain */
    struct rk_state_ref *lru_prev, *lru_next; /* most recent at head */
};

struct rk_state_store {
    char *dir;
    const struct rk_model *m;
    struct rk_store_params p;
    size_t state_len;
    pthread_mutex_t mu, wmu;
    struct rk_state_ref *buckets[N_BUCKETS];
    struct rk_state_ref *lru_head, *lru_tail;
    uint64_t gen; /* bumped by every put and delete (under mu) */
    struct rk_store_stats st;
};

/* --- references ---------------------------------------------------------- */

const float *rk_state_ref_data(const struct rk_state_ref *r) { return r->data; }

bool rk_state_ref_kernel(const struct rk_state_ref *r, const struct rk_model *m,
                         struct rk_kernel_view *out)
{
    if (r->meta.kernel_m <= 0)
        return false;
    rk_kernel_view_of(m, r->meta.kernel_m, r->meta.kernel_fade, r->data, out);
    return true;
}
const struct rk_state_meta *rk_state_ref_meta(const struct rk_state_ref *r) { return &r->meta; }

struct rk_state_ref *rk_state_ref_retain(struct rk_state_ref *r)
{
    atomic_fetch_add_explicit(&r->refs, 1, memory_order_relaxed);
    return r;
}

void rk_state_ref_release(struct rk_state_ref *r)
{
    if (!r)
        return;
    if (atomic_fetch_sub_explicit(&r->refs, 1, memory_order_acq_rel) == 1) {
        free(r->data);
        free(r);
    }
}

struct rk_state_ref *rk_state_ref_detached(float *data, const struct rk_state_meta *meta,
                                          size_t len)
{
    struct rk_state_ref *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    atomic_init(&r->refs, 1);
    r->data = data;
    r->meta = *meta;
    r->bytes = len * sizeof(float);
    return r;
}

static struct rk_state_ref *ref_new(struct rk_state_store *s, const char *tenant, const char *id)
{
    struct rk_state_ref *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->bytes = s->state_len * sizeof(float);
    r->data = NULL; /* set by the caller (an adapter may be longer than a state) */
    atomic_init(&r->refs, 1);
    snprintf(r->tenant, sizeof r->tenant, "%s", tenant);
    snprintf(r->id, sizeof r->id, "%s", id);
    return r;
}

/* --- cache (callers hold mu) --------------------------------------------- */

static unsigned bucket_of(const char *tenant, const char *id)
{
    uint32_t h = 2166136261u;
    for (const char *p = tenant; *p; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    h = (h ^ '/') * 16777619u;
    for (const char *p = id; *p; p++)
        h = (h ^ (uint8_t)*p) * 16777619u;
    return h % N_BUCKETS;
}

static struct rk_state_ref *cache_find(struct rk_state_store *s, const char *tenant,
                                       const char *id)
{
    for (struct rk_state_ref *r = s->buckets[bucket_of(tenant, id)]; r; r = r->hnext)
        if (!strcmp(r->tenant, tenant) && !strcmp(r->id, id))
            return r;
    return NULL;
}

static void lru_unlink(struct rk_state_store *s, struct rk_state_ref *r)
{
    if (r->lru_prev)
        r->lru_prev->lru_next = r->lru_next;
    else
        s->lru_head = r->lru_next;
    if (r->lru_next)
        r->lru_next->lru_prev = r->lru_prev;
    else
        s->lru_tail = r->lru_prev;
    r->lru_prev = r->lru_next = NULL;
}

static void lru_push_head(struct rk_state_store *s, struct rk_state_ref *r)
{
    r->lru_prev = NULL;
    r->lru_next = s->lru_head;
    if (s->lru_head)
        s->lru_head->lru_prev = r;
    s->lru_head = r;
    if (!s->lru_tail)
        s->lru_tail = r;
}

/* Remove r from the cache and drop the cache's reference. */
static void cache_remove(struct rk_state_store *s, struct rk_state_ref *r)
{
    struct rk_state_ref **pp = &s->buckets[bucket_of(r->tenant, r->id)];
    while (*pp && *pp != r)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = r->hnext;
    r->hnext = NULL;
    lru_unlink(s, r);
    r->in_cache = false;
    s->st.bytes -= r->bytes;
    s->st.entries--;
    rk_state_ref_release(r);
}

/* Insert r (taking one reference for the cache), replacing any entry for
 * the same id, then evict from the tail while over the byte bound (never r
 * itself). */
static void cache_insert(struct rk_state_store *s, struct rk_state_ref *r)
{
    struct rk_state_ref *old = cache_find(s, r->tenant, r->id);
    if (old)
        cache_remove(s, old);
    unsigned b = bucket_of(r->tenant, r->id);
    rk_state_ref_retain(r);
    r->hnext = s->buckets[b];
    s->buckets[b] = r;
    r->in_cache = true;
    lru_push_head(s, r);
    s->st.bytes += r->bytes;
    s->st.entries++;
    while (s->st.bytes > s->p.cache_bytes_max && s->lru_tail && s->lru_tail != r) {
        cache_remove(s, s->lru_tail);
        s->st.evictions++;
    }
}

/* --- paths --------------------------------------------------------------- */

static int tenant_dir(struct rk_state_store *s, const char *tenant, char *out, size_t cap)
{
    int n = snprintf(out, cap, "%s/tenants/%s/states", s->dir, tenant);
    return n > 0 && (size_t)n < cap ? RK_OK : RK_EINVAL;
}

static int state_path(struct rk_state_store *s, const char *tenant, const char *id, char *out,
                      size_t cap)
{
    int n = snprintf(out, cap, "%s/tenants/%s/states/%s.safetensors", s->dir, tenant, id);
    return n > 0 && (size_t)n < cap ? RK_OK : RK_EINVAL;
}

/* File errors name the server's paths, which callers must not show to a
 * client (issue 12): when eb's message contains the store's directory, log
 * it whole and leave "state <id>: <reason>" in its place. */
static int client_err(const struct rk_state_store *s, int rc, const char *tenant, const char *id,
                      struct rk_errbuf *eb)
{
    if (!eb || rc == RK_OK || !strstr(eb->msg, s->dir))
        return rc;
    rk_log(RK_LOG_WARN, "state %s/%s: %s", tenant, id, eb->msg);
    char why[160];
    snprintf(why, sizeof why, "%s", rk_file_error_reason(eb->msg));
    if (why[0] >= 'A' && why[0] <= 'Z' && (why[1] < 'A' || why[1] > 'Z'))
        why[0] = (char)(why[0] - 'A' + 'a'); // "No space left" -> "no space left"
    return rk_errbuf_set(eb, rc, "state %s: %s", id, why);
}

/* --- store --------------------------------------------------------------- */

static void check_all(struct rk_state_store *s);

int rk_store_open(const char *dir, const struct rk_model *m, const struct rk_store_params *p,
                  struct rk_state_store **out, struct rk_errbuf *eb)
{
    *out = NULL;
    if (!dir || !*dir || !m)
        return rk_errbuf_set(eb, RK_EINVAL, "store: no directory");
    if (strlen(dir) > 3000)
        return rk_errbuf_set(eb, RK_EINVAL, "store: directory path too long");
    char tdir[4096];
    snprintf(tdir, sizeof tdir, "%s/tenants", dir);
    int rc = rk_mkdirs(tdir, eb);
    if (rc != RK_OK)
        return rc;
    rk_file_clean_temps_each(tdir, "states"); // interrupted writes (RELIABILITY.md 8)
    struct rk_state_store *s = calloc(1, sizeof *s);
    if (!s || !(s->dir = strdup(dir))) {
        free(s);
        return RK_ENOMEM;
    }
    s->m = m;
    if (p)
        s->p = *p;
    if (!s->p.cache_bytes_max)
        s->p.cache_bytes_max = (size_t)256 << 20;
    if (!s->p.file_bytes_max)
        s->p.file_bytes_max = (size_t)1 << 30;
    s->state_len = rk_state_len(m);
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->wmu, NULL);
    check_all(s);
    *out = s;
    return RK_OK;
}

void rk_store_free(struct rk_state_store *s)
{
    if (!s)
        return;
    while (s->lru_head)
        cache_remove(s, s->lru_head);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->wmu);
    free(s->dir);
    free(s);
}

/* A cached state: moved to the LRU head, counted as a hit, returned with a
 * reference for the caller; NULL when not cached. s->mu held. */
static struct rk_state_ref *cache_hit_locked(struct rk_state_store *s, const char *tenant,
                                             const char *id)
{
    struct rk_state_ref *r = cache_find(s, tenant, id);
    if (!r)
        return NULL;
    lru_unlink(s, r);
    lru_push_head(s, r);
    s->st.hits++;
    return rk_state_ref_retain(r);
}

int rk_store_get(struct rk_state_store *s, const char *tenant, const char *id,
                 struct rk_state_ref **out, struct rk_errbuf *eb)
{
    *out = NULL;
    if (!rk_state_id_valid(tenant) || !rk_state_id_valid(id))
        return rk_errbuf_set(eb, RK_ENOTFOUND, "state not found");
    for (int attempt = 0; attempt < 4; attempt++) {
        pthread_mutex_lock(&s->mu);
        struct rk_state_ref *r = cache_hit_locked(s, tenant, id);
        if (r) {
            *out = r;
            pthread_mutex_unlock(&s->mu);
            return RK_OK;
        }
        s->st.misses++;
        uint64_t gen = s->gen;
        pthread_mutex_unlock(&s->mu);

        char path[4096];
        if (state_path(s, tenant, id, path, sizeof path) != RK_OK)
            return rk_errbuf_set(eb, RK_ENOTFOUND, "state not found");
        r = ref_new(s, tenant, id);
        if (!r)
            return rk_errbuf_set(eb, RK_ENOMEM, "out of memory loading a state");
        void *buf;
        size_t len;
        int rc = rk_file_read_all(path, s->p.file_bytes_max, &buf, &len, eb);
        if (rc == RK_OK) {
            rc = rk_state_file_parse_alloc(buf, len, s->m, true, &r->data, &r->meta, eb);
            free(buf);
            if (rc == RK_OK)
                r->bytes = rk_adapter_len(s->m, &r->meta) * sizeof(float);
        }
        if (rc != RK_OK) {
            rk_state_ref_release(r);
            if (rc == RK_ENOTFOUND)
                rk_errbuf_set(eb, RK_ENOTFOUND, "state not found");
            return client_err(s, rc, tenant, id, eb);
        }
        pthread_mutex_lock(&s->mu);
        if (s->gen != gen) {
            // A writer changed the store while we read: start over.
            pthread_mutex_unlock(&s->mu);
            rk_state_ref_release(r);
            continue;
        }
        cache_insert(s, r);
        pthread_mutex_unlock(&s->mu);
        *out = r; // the caller's reference (the cache took its own)
        return RK_OK;
    }
    return rk_errbuf_set(eb, RK_EBUSY, "state %s is being replaced; retry", id);
}

int rk_store_get_cached(struct rk_state_store *s, const char *tenant, const char *id,
                        struct rk_state_ref **out)
{
    *out = NULL;
    if (!rk_state_id_valid(tenant) || !rk_state_id_valid(id))
        return RK_ENOTFOUND;
    pthread_mutex_lock(&s->mu);
    *out = cache_hit_locked(s, tenant, id);
    pthread_mutex_unlock(&s->mu);
    return *out ? RK_OK : RK_ENOTFOUND;
}

static uint64_t previous_version(struct rk_state_store *s, const char *tenant, const char *id,
                                 const char *path)
{
    pthread_mutex_lock(&s->mu);
    struct rk_state_ref *r = cache_find(s, tenant, id);
    uint64_t v = r ? r->meta.version : 0;
    pthread_mutex_unlock(&s->mu);
    if (r)
        return v;
    struct rk_state_meta meta;
    size_t flen;
    if (rk__state_file_head(path, s->m, &meta, &flen, NULL) == RK_OK)
        return meta.version;
    return 0;
}

int rk_store_put(struct rk_state_store *s, const char *tenant, const char *id,
                 const float *state, const struct rk_state_meta *meta,
                 struct rk_state_ref **out, struct rk_errbuf *eb)
{
    if (out)
        *out = NULL;
    if (!rk_state_id_valid(tenant))
        return rk_errbuf_set(eb, RK_EINVAL, "invalid tenant name");
    if (!rk_state_id_valid(id))
        return rk_errbuf_set(eb, RK_EINVAL, "invalid state id '%.80s': use 1-64 characters of "
                             "[a-z0-9_-], starting with a letter or digit", id ? id : "");
    char dir[4096], path[4096];
    if (tenant_dir(s, tenant, dir, sizeof dir) != RK_OK ||
        state_path(s, tenant, id, path, sizeof path) != RK_OK)
        return rk_errbuf_set(eb, RK_EINVAL, "path too long");
    struct rk_state_ref *r = ref_new(s, tenant, id);
    if (!r)
        return rk_errbuf_set(eb, RK_ENOMEM, "out of memory");
    rk_state_meta_init(&r->meta, s->m);
    if (meta) { // keep the caller's descriptive fields, stamp the model's identity
        snprintf(r->meta.method, sizeof r->meta.method, "%s", meta->method[0] ? meta->method : "upload");
        snprintf(r->meta.note, sizeof r->meta.note, "%s", meta->note);
        if (meta->created_ms)
            r->meta.created_ms = meta->created_ms;
        r->meta.has_shift = meta->has_shift;
        r->meta.kernel_m = meta->kernel_m > 0 ? meta->kernel_m : 0;
        r->meta.kernel_fade = meta->kernel_fade;
    }
    r->bytes = rk_adapter_len(s->m, &r->meta) * sizeof(float);
    if (!(r->data = malloc(r->bytes))) {
        rk_state_ref_release(r);
        return rk_errbuf_set(eb, RK_ENOMEM, "out of memory");
    }
    memcpy(r->data, state, r->bytes);

    pthread_mutex_lock(&s->wmu);
    int rc = rk_mkdirs(dir, eb);
    if (rc == RK_OK) {
        r->meta.version = previous_version(s, tenant, id, path) + 1;
        rc = rk_state_file_save(path, s->m, r->data, &r->meta, eb);
    }
    if (rc == RK_OK) {
        pthread_mutex_lock(&s->mu);
        s->gen++;
        cache_insert(s, r);
        pthread_mutex_unlock(&s->mu);
    }
    pthread_mutex_unlock(&s->wmu);
    if (rc != RK_OK) {
        rk_state_ref_release(r);
        return client_err(s, rc, tenant, id, eb);
    }
    if (out)
        *out = r;
    else
        rk_state_ref_release(r);
    return RK_OK;
}

int rk_store_delete(struct rk_state_store *s, const char *tenant, const char *id,
                    struct rk_errbuf *eb)
{
    char path[4096], dir[4096];
    if (!rk_state_id_valid(tenant) || !rk_state_id_valid(id) ||
        state_path(s, tenant, id, path, sizeof path) != RK_OK ||
        tenant_dir(s, tenant, dir, sizeof dir) != RK_OK)
        return rk_errbuf_set(eb, RK_ENOTFOUND, "state not found");
    pthread_mutex_lock(&s->wmu);
    int rc = RK_OK;
    if (unlink(path) != 0)
        rc = errno == ENOENT ? rk_errbuf_set(eb, RK_ENOTFOUND, "state not found")
                             : rk_errbuf_set(eb, RK_EIO, "unlink %s: %s", path, strerror(errno));
    if (rc == RK_OK) {
        rk_dir_fsync(dir);
    }
    pthread_mutex_lock(&s->mu);
    s->gen++;
    struct rk_state_ref *r = cache_find(s, tenant, id);
    if (r)
        cache_remove(s, r);
    pthread_mutex_unlock(&s->mu);
    pthread_mutex_unlock(&s->wmu);
    return client_err(s, rc, tenant, id, eb);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int rk_store_list(struct rk_state_store *s, const char *tenant, rk_store_list_cb *fn, void *user)
{
    char dir[4096];
    if (!rk_state_id_valid(tenant) || tenant_dir(s, tenant, dir, sizeof dir) != RK_OK)
        return RK_OK; // an unknown tenant simply has no states
    DIR *d = opendir(dir);
    if (!d)
        return errno == ENOENT ? RK_OK : RK_EIO;
    char **names = NULL;
    size_t n = 0, cap = 0;
    int rc = RK_OK;
    struct dirent *e;
    while ((e = readdir(d))) {
        size_t l = strlen(e->d_name);
        const char *ext = ".safetensors";
        size_t el = strlen(ext);
        if (l <= el || strcmp(e->d_name + l - el, ext))
            continue;
        char id[RK_STATE_ID_MAX + 16];
        if (l - el > RK_STATE_ID_MAX)
            continue;
        memcpy(id, e->d_name, l - el);
        id[l - el] = 0;
        if (!rk_state_id_valid(id))
            continue;
        if (n == cap) {
            size_t nc = cap ? cap * 2 : 32;
            void *p = realloc(names, nc * sizeof *names);
            if (!p) {
                rc = RK_ENOMEM;
                break;
            }
            names = p;
            cap = nc;
        }
        if (!(names[n] = strdup(id))) {
            rc = RK_ENOMEM;
            break;
        }
        n++;
    }
    closedir(d);
    if (rc == RK_OK && n)
        qsort(names, n, sizeof *names, cmp_str);
    bool go = true;
    for (size_t i = 0; i < n; i++) {
        if (rc == RK_OK && go) {
            char path[4096];
            struct rk_state_meta meta;
            memset(&meta, 0, sizeof meta);
            size_t flen = 0;
            bool ok = state_path(s, tenant, names[i], path, sizeof path) == RK_OK &&
                      rk__state_file_head(path, s->m, &meta, &flen, NULL) == RK_OK;
            if (!ok)
                meta.version = 0;
            go = fn(names[i], &meta, flen, ok, user);
        }
        free(names[i]);
    }
    free(names);
    return rc;
}

/* Start-up: log every stored state that cannot be served (unknown format or
 * version, another model, a damaged header). Only headers are read. Such a
 * state stays on disk for the operator; the store answers RK_EFORMAT or
 * RK_EMISMATCH for it and lists it with ok = false. */
struct check_ctx {
    struct rk_state_store *s;
    const char *tenant;
    int bad;
};

static bool check_entry(const char *id, const struct rk_state_meta *meta, size_t bytes, bool ok,
                        void *user)
{
    struct check_ctx *c = user;
    (void)meta;
    (void)bytes;
    if (ok)
        return true;
    char path[4096];
    struct rk_state_meta m2;
    size_t flen;
    struct rk_errbuf eb = {0};
    if (state_path(c->s, c->tenant, id, path, sizeof path) == RK_OK)
        rk__state_file_head(path, c->s->m, &m2, &flen, &eb);
    rk_log(RK_LOG_WARN, "state %s/%s is not served: %s", c->tenant, id,
           eb.msg[0] ? eb.msg : "unreadable");
    c->bad++;
    return true;
}

static void check_all(struct rk_state_store *s)
{
    char tdir[4096];
    snprintf(tdir, sizeof tdir, "%s/tenants", s->dir);
    DIR *d = opendir(tdir);
    if (!d)
        return;
    struct dirent *e;
    while ((e = readdir(d)))
        if (rk_state_id_valid(e->d_name)) {
            struct check_ctx c = {s, e->d_name, 0};
            rk_store_list(s, e->d_name, check_entry, &c);
        }
    closedir(d);
}

int rk_store_read_file(struct rk_state_store *s, const char *tenant, const char *id, void **out,
                       size_t *len, struct rk_errbuf *eb)
{
    char path[4096];
    *out = NULL;
    *len = 0;
    if (!rk_state_id_valid(tenant) || !rk_state_id_valid(id) ||
        state_path(s, tenant, id, path, sizeof path) != RK_OK)
        return rk_errbuf_set(eb, RK_ENOTFOUND, "state not found");
    int rc = rk_file_read_all(path, s->p.file_bytes_max, out, len, eb);
    if (rc == RK_ENOTFOUND)
        rk_errbuf_set(eb, RK_ENOTFOUND, "state not found");
    return client_err(s, rc, tenant, id, eb);
}

void rk_store_stats(struct rk_state_store *s, struct rk_store_stats *out)
{
    pthread_mutex_lock(&s->mu);
    *out = s->st;
    pthread_mutex_unlock(&s->mu);
}

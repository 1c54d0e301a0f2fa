/*
 * pool.c - a small fork-join thread pool for the compute kernels.
 *
 * rk__pool_run() hands one function to every thread (the caller is thread 0)
 * and returns when all have finished. Decode calls it several hundred times
 * per token, so wake-ups must be cheap: idle workers spin on a generation
 * counter for a short while before sleeping on a condition variable, and the
 * caller only takes the mutex when a worker is actually asleep.
 *
 * Correctness of the sleep/wake handshake: a worker increments n_sleeping and
 * re-checks `gen` under the mutex before waiting; the caller bumps `gen` and
 * then reads n_sleeping (both sequentially consistent), so either the worker
 * sees the new generation or the caller sees the sleeper and broadcasts.
 */
#include "core_int.h"

#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/resource.h>
#include <sys/syscall.h>
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

#define SPIN_ITERS 20000

/* --- per-thread scratch ---------------------------------------------------- */

/* Grown on first use and kept for the thread's lifetime (pool threads live
 * as long as their context). */
static _Thread_local float *tl_buf[RK_TL_N];
static _Thread_local size_t tl_cap[RK_TL_N];
/* Frees a thread's buffers when the thread exits, whichever thread it is
 * (pool workers, but also callers such as the server's engine thread). */
static pthread_key_t tl_key[RK_TL_N];
static pthread_once_t tl_once = PTHREAD_ONCE_INIT;
static bool tl_key_ok[RK_TL_N];

static void tl_destroy(void *p) { rk__free_aligned(p); }
static void tl_key_init(void)
{
    for (int k = 0; k < RK_TL_N; k++)
        tl_key_ok[k] = pthread_key_create(&tl_key[k], tl_destroy) == 0;
}

/* Frees the calling thread's buffers (pool workers, on exit). */
static void thread_bufs_free(void)
{
    for (int k = 0; k < RK_TL_N; k++) {
        if (tl_key_ok[k])
            pthread_setspecific(tl_key[k], NULL);
        rk__free_aligned(tl_buf[k]);
        tl_buf[k] = NULL;
        tl_cap[k] = 0;
    }
}

float *rk__thread_buf(int slot, size_t n)
{
    if (n > tl_cap[slot]) {
        pthread_once(&tl_once, tl_key_init);
        float *nb = rk__malloc_aligned(n * sizeof(float));
        if (!nb)
            return NULL;
        rk__free_aligned(tl_buf[slot]);
        tl_buf[slot] = nb;
        tl_cap[slot] = n;
        if (tl_key_ok[slot])
            pthread_setspecific(tl_key[slot], nb);
    }
    return tl_buf[slot];
}

/* --- the pool --------------------------------------------------------------- */

struct rk__pool {
    int n_threads;
    pthread_t *threads; /* [n_threads - 1] */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_uint gen;
    atomic_int pending;
    atomic_int n_sleeping;
    atomic_bool stop;
    rk__pool_fn *fn;
    void *arg;
};

struct worker_arg {
    struct rk__pool *pool;
    int ith;
    int nice;
};

static void *worker_main(void *p)
{
    struct worker_arg wa = *(struct worker_arg *)p;
    rk__free(p);
    struct rk__pool *pool = wa.pool;
    unsigned seen = 0;
#ifdef __linux__
    /* best effort: a failure leaves the inherited priority */
    if (wa.nice > 0)
        (void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), wa.nice);
#endif
    for (;;) {
        int spins = 0;
        while (atomic_load(&pool->gen) == seen && !atomic_load(&pool->stop) &&
               spins < SPIN_ITERS) {
            cpu_relax();
            spins++;
        }
        if (atomic_load(&pool->gen) == seen && !atomic_load(&pool->stop)) {
            pthread_mutex_lock(&pool->mu);
            atomic_fetch_add(&pool->n_sleeping, 1);
            while (atomic_load(&pool->gen) == seen && !atomic_load(&pool->stop))
                pthread_cond_wait(&pool->cv, &pool->mu);
            atomic_fetch_sub(&pool->n_sleeping, 1);
            pthread_mutex_unlock(&pool->mu);
        }
        if (atomic_load(&pool->stop))
            break;
        seen = atomic_load(&pool->gen);
        pool->fn(wa.ith, pool->n_threads, pool->arg);
        atomic_fetch_sub(&pool->pending, 1);
    }
    thread_bufs_free();
    return NULL;
}

int rk__pool_create(int n_threads, int nice, struct rk__pool **out)
{
    *out = NULL;
    if (n_threads <= 0) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);
        n_threads = n > 0 ? (int)n : 1;
    }
    if (n_threads > 256)
        n_threads = 256;
    struct rk__pool *p = rk__calloc(1, sizeof *p);
    if (!p)
        return RK_ENOMEM;
    p->n_threads = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    if (n_threads > 1) {
        p->threads = rk__calloc((size_t)n_threads - 1, sizeof *p->threads);
        if (!p->threads)
            goto fail;
    }
    for (int i = 1; i < n_threads; i++) {
        struct worker_arg *wa = rk__malloc(sizeof *wa);
        if (!wa)
            goto fail;
        wa->pool = p;
        wa->ith = i;
        wa->nice = nice;
        if (pthread_create(&p->threads[i - 1], NULL, worker_main, wa) != 0) {
            rk__free(wa);
            goto fail;
        }
        p->n_threads = i + 1; /* threads started so far, for cleanup */
    }
    p->n_threads = n_threads;
    *out = p;
    return RK_OK;
fail:
    rk__pool_free(p);
    return RK_ENOMEM;
}

void rk__pool_free(struct rk__pool *p)
{
    if (!p)
        return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, true);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 1; i < p->n_threads && p->threads; i++)
        if (p->threads[i - 1])
            pthread_join(p->threads[i - 1], NULL);
    rk__free(p->threads);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    rk__free(p);
}

int rk__pool_n_threads(const struct rk__pool *p) { return p ? p->n_threads : 1; }

void rk__pool_run(struct rk__pool *p, rk__pool_fn *fn, void *arg)
{
    if (!p || p->n_threads == 1) {
        fn(0, 1, arg);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    atomic_store(&p->pending, p->n_threads - 1);
    atomic_fetch_add(&p->gen, 1);
    if (atomic_load(&p->n_sleeping) > 0) {
        pthread_mutex_lock(&p->mu);
        pthread_cond_broadcast(&p->cv);
        pthread_mutex_unlock(&p->mu);
    }
    fn(0, p->n_threads, arg);
    while (atomic_load(&p->pending) > 0)
        cpu_relax();
}

struct pool_for {
    rk__range_fn *fn;
    void *arg;
    size_t n;
};

static void pool_for_worker(int ith, int nth, void *p)
{
    const struct pool_for *j = p;
    size_t i0 = j->n * (size_t)ith / (size_t)nth, i1 = j->n * (size_t)(ith + 1) / (size_t)nth;
    if (i0 < i1)
        j->fn(j->arg, i0, i1);
}

void rk__pool_for(struct rk__pool *p, size_t n, rk__range_fn *fn, void *arg)
{
    if (!p || p->n_threads < 2 || n < 2) {
        if (n)
            fn(arg, 0, n);
        return;
    }
    struct pool_for j = {fn, arg, n};
    rk__pool_run(p, pool_for_worker, &j);
}

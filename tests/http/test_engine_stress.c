/*
 * test_engine_stress.c - the engine's hand-over paths under load, in process:
 * the wake list (engine thread -> loop thread) and the reference counts of
 * generation jobs.
 *
 * A "loop" thread drains the wake list the way http.c does, pausing a few
 * microseconds inside the hand-over so that the engine keeps listing jobs
 * while a drain is half way through its list. Many short streaming jobs
 * (1-2 choices, a few tokens, some cancelled) keep every job on the list
 * again and again. Each job carries a serial in its id; the drain checks that
 * no job is handed over while its previous hand-over is still being
 * processed and that a handed-over job is still alive, and at the end every
 * job must have been freed (no reference lost or released twice).
 *
 * The run lasts half of RWKVD_STRESS_SECONDS (default 8 s); the asan and
 * tsan setups set it longer. Before the drain read each link under the wake
 * mutex, this test aborted or leaked jobs within seconds.
 */
#include "check_common.h"
#include "srv.h"

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct loop {
    struct rk_engine *e;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool pending, stop;
    atomic_long handed, bad;
    unsigned rng;
};

static void on_wake(void *user)
{
    struct loop *l = user;
    pthread_mutex_lock(&l->mu);
    l->pending = true;
    pthread_cond_signal(&l->cv);
    pthread_mutex_unlock(&l->mu);
}

static unsigned lcg(unsigned *s) { return (*s = *s * 1103515245u + 12345u) >> 16; }

static void hand_over(struct rk_job *j, void *u)
{
    struct loop *l = u;
    /* a live job has a reference for this hand-over and a well-formed id */
    if (atomic_load(&j->refs) < 1 || strncmp(j->id, "stress-", 7) != 0)
        atomic_fetch_add(&l->bad, 1);
    atomic_fetch_add(&l->handed, 1);
    /* widen the window in which the engine lists jobs during a drain */
    unsigned r = lcg(&l->rng) % 8;
    if (r == 0)
        usleep(20);
    else if (r < 3)
        for (volatile int k = 0; k < 2000; k++)
            ;
    pthread_mutex_lock(&j->mu);
    j->out.len = 0; // what a streaming response would have sent
    pthread_mutex_unlock(&j->mu);
    rk_job_release(j);
}

static void *loop_main(void *p)
{
    struct loop *l = p;
    for (;;) {
        pthread_mutex_lock(&l->mu);
        while (!l->pending && !l->stop)
            pthread_cond_wait(&l->cv, &l->mu);
        bool stop = l->stop;
        l->pending = false;
        pthread_mutex_unlock(&l->mu);
        rk_engine_drain_wakes(l->e, hand_over, l);
        if (stop)
            return NULL;
    }
}

static const uint32_t PROMPT[] = {'H', 'e', 'l', 'l', 'o', ' ', 't', 'h', 'e', 'r', 'e'};

static struct rk_job *make_job(struct rk_srv *srv, unsigned *rng, long serial)
{
    struct rk_job *j = rk_job_create(srv, RK_API_COMPLETION);
    ck_assert_ptr_nonnull(j);
    snprintf(j->id, sizeof j->id, "stress-%ld", serial);
    snprintf(j->model, sizeof j->model, "m");
    size_t np = 1 + lcg(rng) % (sizeof PROMPT / sizeof PROMPT[0]);
    j->prompt = malloc(np * sizeof *j->prompt);
    ck_assert_ptr_nonnull(j->prompt);
    memcpy(j->prompt, PROMPT, np * sizeof *j->prompt);
    j->n_prompt = np;
    j->stream = true;
    j->n = 1 + (int)(lcg(rng) % 2);
    j->max_tokens = 1 + (int)(lcg(rng) % 6);
    j->choices = calloc((size_t)j->n, sizeof *j->choices);
    ck_assert_ptr_nonnull(j->choices);
    j->sp.temperature = 1.0f;
    j->sp.seed = lcg(rng);
    j->seed_given = true;
    j->t_submit_us = rk_now_us();
    j->deadline_us = j->t_submit_us + 60 * 1000000LL;
    return j;
}

static bool job_done(struct rk_job *j)
{
    pthread_mutex_lock(&j->mu);
    bool d = j->done;
    pthread_mutex_unlock(&j->mu);
    return d;
}

START_TEST(test_wake_list_churn)
{
    const char *env = getenv("RWKVD_STRESS_SECONDS");
    double seconds = env ? atof(env) / 2 : 8.0;
    long live0 = rk_jobs_live();

    struct rk_srv *srv = calloc(1, sizeof *srv);
    ck_assert_ptr_nonnull(srv);
    char *argv[] = {"serve", "--model", (char *)rk_test_data("rand-mh.safetensors"), NULL};
    ck_assert_int_eq(rk_srv_config_parse(&srv->cfg, 3, argv), 0);
    srv->cfg.threads = 1;
    srv->cfg.seqs_max = 8;
    srv->cfg.queue_max = 64;
    srv->cfg.amx_prefill = srv->cfg.amx_decode = false;
    struct rk_errbuf eb = {0};
    ck_assert_msg(rk_model_load(rk_test_data("rand-mh.safetensors"), NULL, &srv->model, &eb) ==
                      RK_OK,
                  "%s", eb.msg);
    ck_assert_int_eq(rk_tok_create_bytes(&srv->tok), RK_OK);

    struct loop l = {.rng = 7};
    pthread_mutex_init(&l.mu, NULL);
    pthread_cond_init(&l.cv, NULL);
    ck_assert_int_eq(rk_engine_start(srv, on_wake, &l, &srv->engine, &eb), RK_OK);
    l.e = srv->engine;
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, loop_main, &l), 0);

    enum { INFLIGHT = 24 };
    struct rk_job *fl[INFLIGHT] = {0};
    unsigned rng = 12345;
    long serial = 0, finished = 0, cancelled = 0;
    int64_t t_end = rk_now_us() + (int64_t)(seconds * 1e6);
    while (rk_now_us() < t_end) {
        for (int i = 0; i < INFLIGHT; i++) {
            if (fl[i] && job_done(fl[i])) {
                rk_job_release(fl[i]);
                fl[i] = NULL;
                finished++;
            }
            if (!fl[i]) {
                struct rk_job *j = make_job(srv, &rng, serial++);
                int rc = rk_engine_submit(srv->engine, j);
                if (rc != RK_OK) {
                    ck_assert_int_eq(rc, RK_EBUSY);
                    rk_job_release(j);
                    continue;
                }
                fl[i] = j;
            } else if (lcg(&rng) % 64 == 0) {
                atomic_store(&fl[i]->cancel, true); // a client that went away
                cancelled++;
            }
        }
        usleep(100);
    }
    /* let the rest finish */
    for (int i = 0; i < INFLIGHT; i++) {
        int64_t t0 = rk_now_us();
        while (fl[i] && !job_done(fl[i]) && rk_now_us() - t0 < 30 * 1000000LL)
            usleep(1000);
        ck_assert_msg(!fl[i] || job_done(fl[i]), "job %d never finished", i);
        rk_job_release(fl[i]);
        fl[i] = NULL;
    }
    rk_engine_join(srv->engine);
    pthread_mutex_lock(&l.mu);
    l.stop = true;
    pthread_cond_signal(&l.cv);
    pthread_mutex_unlock(&l.mu);
    pthread_join(th, NULL);
    rk_engine_stop(srv->engine);

    fprintf(stderr, "wake churn: %ld jobs (%ld finished, %ld cancel requests), %ld hand-overs\n",
            serial, finished, cancelled, atomic_load(&l.handed));
    ck_assert_int_eq(atomic_load(&l.bad), 0);
    ck_assert_msg(serial > 100, "only %ld jobs ran", serial);
    ck_assert_msg(rk_jobs_live() == live0, "%ld jobs were never freed (a lost reference)",
                  rk_jobs_live() - live0);

    rk_tok_free(srv->tok);
    rk_model_free(srv->model);
    free(srv);
}
END_TEST

RK_TEST_SUITE(engine_stress_suite, RK_SELF_CONTAINED)
{
    Suite *s = suite_create("engine-stress");
    TCase *tc = tcase_create("wake");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_wake_list_churn);
    suite_add_tcase(s, tc);
    return s;
}

/*
 * engine.c - the inference engine thread: continuous batching over one
 * frozen model, each sequence with its own state.
 *
 * DESIGN. The loop thread submits jobs (rk_engine_submit) into a bounded
 * FIFO guarded by `mu`. The engine thread owns every sequence slot, the
 * compute context and all scratch buffers; one step is:
 *
 *   1. drop sequences whose job was cancelled (client gone, shutdown) or
 *      whose deadline passed, and expire queued jobs the same way;
 *   2. admit queued jobs while enough slots are free (a job with n choices
 *      needs n slots): copy the adapter state into the slot (the "swap":
 *      one memcpy), create its sampler and stop matcher;
 *   3. prefill: feed prompt chunks (rk_forward_seq) to sequences still in
 *      their prompt, at most `prefill_chunk` tokens per step in admission
 *      order; a finished prompt samples its first token (the n-1 sibling
 *      choices copy the leader's state and logits instead of re-reading the
 *      prompt);
 *   4. decode: ONE rk_forward_batch over every sequence holding a pending
 *      token, then sample each and append its text to its job.
 *   When this step's prompt tokens and decode tokens fit in 48 rows, or
 *   are short prompts, 3 and 4 are one rk_forward_multi pass instead
 *   (step_one_pass; where prompts run on AMX tiles and decode does not,
 *   the prompts get one such pass of their own and 4 follows): the
 *   weights are read once per pass (per 48 rows for row-major weights),
 *   and every sequence gets the same bits as in separate passes.
 *   Sampling a batch (sample_batch): the token and log-probabilities of
 *   each sequence are picked on the compute threads at once, then applied
 *   (text, stops, output) in slot order on this thread.
 *
 * Output reaches the loop through struct rk_job: text/SSE bytes are appended
 * under job->mu, the job is put on the wake list (wmu) and `wake` (a
 * uv_async_send) is called once per step; the loop drains the whole list.
 * The engine only produces tokens, text, logprobs and finish events; the
 * wire format of each API is gen_format.c's (rk_gen_sse_*).
 * The per-token path allocates nothing once buffers have grown: logits,
 * batch arrays and the decode scratch are made at start, SSE chunks are
 * formatted into the job's reusable buffer.
 *
 * Shutdown: rk_engine_stop sets `stop`, wakes the thread, which cancels what
 * is left, finishes every job (so the loop can answer or close) and exits.
 * A heartbeat (monotonic µs) is updated at every iteration for /health.
 */
#include "gen_format.h"
#include "srv.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

enum phase { SEQ_FREE, SEQ_PREFILL, SEQ_WAIT, SEQ_DECODE };

struct seq {
    enum phase phase;
    struct rk_job *job;
    int idx;        /* choice index within the job */
    uint64_t order; /* admission order (prefill FIFO) */
    float *state;   /* [state_len] */
    float *logits;  /* [V] prefill logits */
    struct rk_sampler *smp;
    struct rk_stopper *stop;
    struct rk_utf8_stream u8;
    size_t pos;       /* prompt tokens fed */
    uint32_t pending; /* sampled, not yet fed */
    int64_t t_last_us;
    size_t text_off;  /* bytes of text emitted (completions logprobs text_offset) */
    bool held;        /* this step: a decode sequence whose client is behind */
    /* a kernel state's read-out term (rk_readout); ro.ops NULL otherwise */
    struct rk_kernel_view kv;
    struct rk_readout ro;
    float *carry;     /* [L*H] its running fade */
};

struct rk_engine {
    struct rk_srv *srv;
    pthread_t th;
    bool started;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct rk_job *q_head, *q_tail; /* mu */
    int q_len;                      /* mu */
    bool stop, cancel_all;          /* mu */
    atomic_int n_queued, n_active;
    atomic_int_fast64_t heartbeat_us;
    atomic_bool alive;

    pthread_mutex_t wmu;
    struct rk_job *w_head; /* jobs with news for the loop */
    void (*wake)(void *);
    void *wake_user;

    struct rk_ctx *ctx;
    size_t state_len;
    size_t carry_len; /* floats of a kernel state's running fade: L*H */
    int V;
    bool bytes_tok;
    struct seq *seqs;
    int n_seqs;
    uint64_t order_seq;
    uint32_t *btok;  /* [n_seqs] */
    float **bstate;  /* [n_seqs] */
    const struct rk_readout **bro; /* [n_seqs] each one's read-out term or NULL */
    int *bidx;       /* [n_seqs] */
    float *blogits;  /* [n_seqs][V] */
    /* one-pass steps (prompt chunks with the decode tokens) */
    int mix_rows;    /* most rows of such a pass (the context's rows_max) */
    bool amx;        /* prompt passes run on AMX tiles (--amx-prefill) */
    bool amx_dec;    /* decode passes too (--amx-decode) */
    uint32_t *mtok;  /* [mix_rows] */
    size_t *mn;      /* [n_seqs] tokens per sequence */
    bool *mwant;     /* [n_seqs] */
    int *pidx;       /* [n_seqs] sequences in their prompt, by admission */
    /* sampling scratch, one row per compute thread: the batch's sequences
     * are sampled in parallel (rk_ctx_run), then applied in order */
    int n_threads;
    float *raw;      /* [n_threads][V] logits before sampling (logprobs) */
    uint32_t *top_ids; /* [n_threads][logprobs_max + 1] */
    float *top_lps;
    struct pick *picks; /* [n_seqs] */
    struct rk_job **touched; /* jobs with output this step */
    int n_touched;
    char piece[1024];
};

/* --- jobs ---------------------------------------------------------------- */

const char *rk_finish_name(enum rk_finish f)
{
    switch (f) {
    case RK_FINISH_STOP: return "stop";
    case RK_FINISH_LENGTH: return "length";
    case RK_FINISH_CANCEL: return "cancelled";
    case RK_FINISH_TIMEOUT: return "timeout";
    default: return "null";
    }
}

/* Generation jobs allocated and not yet freed, in this process (a leak and
 * lifetime check for tests; also exported as a gauge). */
static atomic_long g_jobs_live;

struct rk_job *rk_job_create(struct rk_srv *srv, enum rk_api api)
{
    struct rk_job *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    atomic_init(&j->refs, 1);
    atomic_init(&j->cancel, false);
    atomic_fetch_add_explicit(&g_jobs_live, 1, memory_order_relaxed);
    j->srv = srv;
    j->api = api;
    j->top_logprobs = -1;
    j->n = 1;
    pthread_mutex_init(&j->mu, NULL);
    rk_sampler_params_default(&j->sp);
    return j;
}

struct rk_job *rk_job_retain(struct rk_job *j)
{
    atomic_fetch_add_explicit(&j->refs, 1, memory_order_relaxed);
    return j;
}

void rk_job_release(struct rk_job *j)
{
    if (!j)
        return;
    int old = atomic_fetch_sub_explicit(&j->refs, 1, memory_order_acq_rel);
    // One release too many means another holder is using freed memory: stop
    // here, where it shows, rather than in malloc later.
    if (old < 1) {
        fprintf(stderr, "rwkvd: internal error: generation job %p released once too often\n",
                (void *)j);
        abort();
    }
    if (old != 1)
        return;
    rk_state_ref_release(j->state);
    free(j->prompt);
    free(j->bias);
    for (size_t i = 0; i < j->n_stops; i++)
        free(j->stops[i]);
    free(j->stops);
    if (j->choices)
        for (int i = 0; i < j->n; i++) {
            rk_buf_free(&j->choices[i].text);
            free(j->choices[i].lps);
        }
    free(j->choices);
    free(j->temps);
    if (j->ext_free)
        j->ext_free(j->ext);
    rk_buf_free(&j->out);
    pthread_mutex_destroy(&j->mu);
    free(j);
    atomic_fetch_sub_explicit(&g_jobs_live, 1, memory_order_relaxed);
}

long rk_jobs_live(void) { return atomic_load(&g_jobs_live); }

/* --- queue (loop side) --------------------------------------------------- */

int rk_engine_submit(struct rk_engine *e, struct rk_job *j)
{
    int rc = RK_OK;
    pthread_mutex_lock(&e->mu);
    if (e->stop || !atomic_load(&e->alive))
        rc = RK_ECANCELED;
    else if (e->q_len >= e->srv->cfg.queue_max)
        rc = RK_EBUSY;
    if (rc == RK_OK) {
        rk_job_retain(j);
        j->q_next = NULL;
        if (e->q_tail)
            e->q_tail->q_next = j;
        else
            e->q_head = j;
        e->q_tail = j;
        e->q_len++;
        atomic_store(&e->n_queued, e->q_len);
        pthread_cond_signal(&e->cv);
    }
    pthread_mutex_unlock(&e->mu);
    return rc;
}

int rk_engine_queued(const struct rk_engine *e) { return atomic_load(&e->n_queued); }
int rk_engine_active(const struct rk_engine *e) { return atomic_load(&e->n_active); }
bool rk_engine_busy(const struct rk_engine *e)
{
    return atomic_load(&e->n_queued) > 0 || atomic_load(&e->n_active) > 0;
}

bool rk_engine_healthy(const struct rk_engine *e, int stall_ms, char *why, size_t cap)
{
    if (!atomic_load(&e->alive)) {
        snprintf(why, cap, "engine thread is not running");
        return false;
    }
    int64_t age = rk_now_us() - atomic_load(&e->heartbeat_us);
    if (age > (int64_t)stall_ms * 1000) {
        snprintf(why, cap, "engine heartbeat is %" PRId64 " ms old", age / 1000);
        return false;
    }
    return true;
}

void rk_engine_cancel_all(struct rk_engine *e)
{
    pthread_mutex_lock(&e->mu);
    e->cancel_all = true;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
}

/*
 * The detached list is walked one job at a time, and each job's link is read
 * and its `wake_queued` cleared under wmu just before the job is handed on.
 * While `wake_queued` is set, flush_wakes never writes the job's `wake_next`,
 * so every link read here is the one the list was built with. (Clearing all
 * the flags first and walking the links unlocked let the engine queue a job
 * that was still ahead in this walk: its `wake_next` then pointed into the
 * new list, this walk went on into that list and handed its jobs over twice
 * while the rest of the old list was never handed over; each double hand-over
 * released one reference too many: a use after free.)
 */
void rk_engine_drain_wakes(struct rk_engine *e, void (*fn)(struct rk_job *j, void *u), void *u)
{
    pthread_mutex_lock(&e->wmu);
    struct rk_job *list = e->w_head;
    e->w_head = NULL;
    while (list) {
        struct rk_job *j = list;
        list = j->wake_next;
        j->wake_next = NULL;
        j->wake_queued = false; // from here on the engine may list j again
        pthread_mutex_unlock(&e->wmu);
        fn(j, u); // takes the wake list's reference
        pthread_mutex_lock(&e->wmu);
    }
    pthread_mutex_unlock(&e->wmu);
}

/* --- engine side: output ------------------------------------------------- */

static void flush_wakes(struct rk_engine *e);

static void touch(struct rk_engine *e, struct rk_job *j)
{
    for (int i = 0; i < e->n_touched; i++)
        if (e->touched[i] == j)
            return;
    if (e->n_touched == e->n_seqs * 2)
        flush_wakes(e);
    e->touched[e->n_touched++] = rk_job_retain(j);
}

/* Hand the touched jobs to the loop and wake it once. */
static void flush_wakes(struct rk_engine *e)
{
    if (!e->n_touched)
        return;
    pthread_mutex_lock(&e->wmu);
    for (int i = 0; i < e->n_touched; i++) {
        struct rk_job *j = e->touched[i];
        if (j->wake_queued) {
            rk_job_release(j); // already listed; that entry carries a reference
            continue;
        }
        j->wake_queued = true;
        j->wake_next = e->w_head;
        e->w_head = j; // the list keeps the reference taken in touch()
    }
    pthread_mutex_unlock(&e->wmu);
    e->n_touched = 0;
    if (e->wake)
        e->wake(e->wake_user);
}

/* --- engine side: sequences ---------------------------------------------- */

static void finish_job_if_done(struct rk_engine *e, struct rk_job *j)
{
    if (j->n_finished < j->n)
        return;
    pthread_mutex_lock(&j->mu);
    if (j->stream)
        rk_gen_sse_end(j);
    j->done = true;
    pthread_mutex_unlock(&j->mu);
    rk_hist_observe(&e->srv->metrics.request_time, (double)(rk_now_us() - j->t_submit_us) / 1e6);
    touch(e, j);
    rk_job_release(j); // the engine's reference
}

/* Emit text (and the token's logprobs) for a sequence. */
static void emit(struct rk_engine *e, struct seq *s, const char *text, size_t len,
                 const struct rk_tok_lp *rec)
{
    struct rk_job *j = s->job;
    struct rk_choice *ch = &j->choices[s->idx];
    rk_buf_put(&ch->text, text, len);
    if (j->stream && (len || rec)) {
        pthread_mutex_lock(&j->mu);
        rk_gen_sse_piece(e->srv->tok, j, s->idx, text, len, rec, s->text_off);
        pthread_mutex_unlock(&j->mu);
        touch(e, j);
    }
    s->text_off += len;
}

static void seq_release(struct rk_engine *e, struct seq *s)
{
    /* the sampler stays with the slot (rk_sampler_reset on the next
     * admission): its vocabulary-sized buffers are not allocated per request */
    rk_stopper_free(s->stop);
    s->stop = NULL;
    s->phase = SEQ_FREE;
    s->job = NULL;
    atomic_fetch_sub(&e->n_active, 1);
}

static void seq_finish(struct rk_engine *e, struct seq *s, enum rk_finish f)
{
    struct rk_job *j = s->job;
    if (f == RK_FINISH_STOP || f == RK_FINISH_LENGTH) {
        // Whatever the UTF-8 decoder and the stop matcher still hold is text.
        const char *t;
        size_t tl;
        int n = rk_utf8_stream_flush(&s->u8, e->piece, sizeof e->piece);
        bool hit = false;
        if (n > 0)
            hit = rk_stopper_feed(s->stop, e->piece, (size_t)n, &t, &tl), emit(e, s, t, tl, NULL);
        if (!hit) {
            rk_stopper_finish(s->stop, &t, &tl);
            emit(e, s, t, tl, NULL);
        }
    } else {
        atomic_fetch_add(&e->srv->metrics.seqs_canceled, 1);
    }
    j->choices[s->idx].finish = f;
    if (f == RK_FINISH_TIMEOUT && j->err == RK_OK) {
        j->err = RK_ETIMEOUT;
        snprintf(j->errmsg, sizeof j->errmsg, "request deadline of %d s exceeded",
                 e->srv->cfg.request_timeout_s);
    } else if (f == RK_FINISH_CANCEL && j->err == RK_OK) {
        j->err = RK_ECANCELED;
        snprintf(j->errmsg, sizeof j->errmsg, "generation was cancelled (client gone or server "
                 "shutting down)");
    }
    if (j->stream) {
        pthread_mutex_lock(&j->mu);
        rk_gen_sse_finish(j, s->idx, f);
        pthread_mutex_unlock(&j->mu);
        touch(e, j);
    }
    j->n_finished++;
    seq_release(e, s);
    finish_job_if_done(e, j);
}

/* A sampled token, before it is applied to its sequence. */
struct pick {
    bool valid;
    int rc;
    uint32_t tok;
};

/* The numeric half of sampling `s` from `logits` [V] (modified in place):
 * the token and, when asked, its log-probabilities, written into the
 * choice's next record. Touches nothing shared but its scratch (raw [V],
 * ids and lps [logprobs_max + 1]), so several sequences may be picked at
 * once on different threads. */
static void seq_pick(struct rk_engine *e, struct seq *s, float *logits, float *raw,
                     uint32_t *ids, float *lps, struct pick *pk)
{
    struct rk_job *j = s->job;
    struct rk_choice *ch = &j->choices[s->idx];
    int top = j->top_logprobs;
    if (top >= 0 || j->want_lp_sum)
        memcpy(raw, logits, (size_t)e->V * sizeof(float));
    pk->valid = true;
    pk->tok = 0;
    pk->rc = rk_sampler_sample(s->smp, logits, &pk->tok);
    if (pk->rc == RK_OK && j->want_lp_sum)
        ch->lp_sum += rk_logprob(raw, (size_t)e->V, pk->tok);
    if (pk->rc != RK_OK || top < 0)
        return;
    struct rk_tok_lp *rec = ch->lps + (size_t)ch->n_tokens * (size_t)(1 + top);
    rec[0].token = pk->tok;
    rec[0].lp = rk_logprob(raw, (size_t)e->V, pk->tok);
    if (top > 0) {
        rk_logprobs_top(raw, (size_t)e->V, (size_t)top, ids, lps);
        for (int k = 0; k < top; k++)
            rec[1 + k] = (struct rk_tok_lp){ids[k], lps[k]};
    }
}

/* The sequential half: metrics, text, stop sequences, limits. */
static void seq_apply(struct rk_engine *e, struct seq *s, const struct pick *pk)
{
    struct rk_job *j = s->job;
    struct rk_choice *ch = &j->choices[s->idx];
    int top = j->top_logprobs;
    uint32_t tok = pk->tok;
    if (pk->rc != RK_OK) {
        seq_finish(e, s, RK_FINISH_STOP);
        return;
    }
    int64_t now = rk_now_us();
    struct rk_metrics *m = &e->srv->metrics;
    if (!j->t_first_us) {
        j->t_first_us = now;
        rk_hist_observe(&m->ttft, (double)(now - j->t_submit_us) / 1e6);
    } else if (s->t_last_us) {
        rk_hist_observe(&m->token_latency, (double)(now - s->t_last_us) / 1e6);
    }
    s->t_last_us = now;
    atomic_fetch_add_explicit(&m->tokens_out, 1, memory_order_relaxed);

    struct rk_tok_lp *rec = top >= 0 ? ch->lps + (size_t)ch->n_tokens * (size_t)(1 + top) : NULL;
    ch->n_tokens++;
    // End of text: id 0 of the World vocabulary (the byte vocabulary has none).
    if (!e->bytes_tok && tok == 0) {
        if (rec)
            emit(e, s, "", 0, rec);
        seq_finish(e, s, RK_FINISH_STOP);
        return;
    }
    int n = rk_tok_decode_stream(e->srv->tok, &s->u8, tok, e->piece, sizeof e->piece);
    const char *t = "";
    size_t tl = 0;
    bool hit = false;
    if (n > 0)
        hit = rk_stopper_feed(s->stop, e->piece, (size_t)n, &t, &tl);
    emit(e, s, t, tl, rec);
    if (hit) {
        j->choices[s->idx].finish = RK_FINISH_STOP;
        if (j->stream) {
            pthread_mutex_lock(&j->mu);
            rk_gen_sse_finish(j, s->idx, RK_FINISH_STOP);
            pthread_mutex_unlock(&j->mu);
        }
        j->n_finished++;
        seq_release(e, s);
        finish_job_if_done(e, j);
        return;
    }
    if (ch->n_tokens >= j->max_tokens) {
        seq_finish(e, s, RK_FINISH_LENGTH);
        return;
    }
    s->pending = tok;
    s->phase = SEQ_DECODE;
}

/* Sample the next token of `s` from `logits` [V] (modified in place). */
static void seq_sample(struct rk_engine *e, struct seq *s, float *logits)
{
    struct pick pk;
    seq_pick(e, s, logits, e->raw, e->top_ids, e->top_lps, &pk);
    seq_apply(e, s, &pk);
}

struct pick_job {
    struct rk_engine *e;
    int n;
};

static void pick_worker(void *arg, int ith, int nth)
{
    const struct pick_job *pj = arg;
    struct rk_engine *e = pj->e;
    size_t lpn = (size_t)e->srv->cfg.logprobs_max + 1;
    for (int i = ith; i < pj->n; i += nth) {
        struct seq *s = &e->seqs[e->bidx[i]];
        e->picks[i].valid = false;
        if (s->phase == SEQ_DECODE)
            seq_pick(e, s, e->blogits + (size_t)i * (size_t)e->V, e->raw + (size_t)ith * e->V,
                     e->top_ids + (size_t)ith * lpn, e->top_lps + (size_t)ith * lpn,
                     &e->picks[i]);
    }
}

/* Samples the decode sequences bidx[0 .. n) from blogits: picked in
 * parallel, then applied in order (the output is the same as one by one). */
static void sample_batch(struct rk_engine *e, int n)
{
    struct pick_job pj = {e, n};
    if (n >= 4 && e->n_threads > 1)
        rk_ctx_run(e->ctx, pick_worker, &pj);
    else
        pick_worker(&pj, 0, 1);
    for (int i = 0; i < n; i++) {
        struct seq *s = &e->seqs[e->bidx[i]];
        if (e->picks[i].valid && s->phase == SEQ_DECODE)
            seq_apply(e, s, &e->picks[i]);
    }
}

/* A job that never got a slot: finish it without sequences. */
static void job_fail_unstarted(struct rk_engine *e, struct rk_job *j, enum rk_finish f)
{
    j->err = f == RK_FINISH_TIMEOUT ? RK_ETIMEOUT : RK_ECANCELED;
    snprintf(j->errmsg, sizeof j->errmsg, "%s",
             f == RK_FINISH_TIMEOUT ? "request deadline exceeded while queued"
                                    : "request cancelled before it started");
    for (int i = 0; i < j->n; i++)
        j->choices[i].finish = f;
    j->n_finished = j->n;
    finish_job_if_done(e, j);
}

/* The read-out term of a kernel state (job j's), with a fresh carry; none
 * for a plain state. The view points into j->state, held by the job. */
static void seq_readout(struct rk_engine *e, struct seq *s, const struct rk_job *j)
{
    s->ro.ops = NULL;
    if (!j->state || !rk_state_ref_kernel(j->state, e->srv->model, &s->kv))
        return;
    memset(s->carry, 0, e->carry_len * sizeof(float));
    s->ro = (struct rk_readout){&rk_kernel_readout, &s->kv, s->carry};
}

static const struct rk_readout *seq_ro(const struct seq *s) { return s->ro.ops ? &s->ro : NULL; }

static int admit(struct rk_engine *e, struct rk_job *j)
{
    struct rk_metrics *m = &e->srv->metrics;
    int leader = -1;
    for (int i = 0; i < j->n; i++) {
        struct seq *s = NULL;
        for (int k = 0; k < e->n_seqs; k++)
            if (e->seqs[k].phase == SEQ_FREE) {
                s = &e->seqs[k];
                break;
            }
        if (!s)
            return RK_EINTERNAL; // admission checked the free count
        struct rk_sampler_params sp = j->sp;
        sp.seed = j->sp.seed + (uint64_t)i * 0x9e3779b97f4a7c15ull;
        if (j->temps)
            sp.temperature = j->temps[i];
        int src = s->smp ? rk_sampler_reset(s->smp, &sp)
                         : rk_sampler_create(&sp, (size_t)e->V, &s->smp);
        if (src != RK_OK ||
            rk_stopper_create((const char *const *)j->stops, j->n_stops, &s->stop) != RK_OK)
            return RK_ENOMEM;
        s->job = j;
        s->idx = i;
        s->order = e->order_seq++;
        s->pos = 0;
        s->t_last_us = 0;
        s->text_off = 0;
        rk_utf8_stream_init(&s->u8);
        atomic_fetch_add(&e->n_active, 1);
        atomic_fetch_add(&m->seqs_started, 1);
        if (i == 0) {
            // The adapter swap: one copy of the tuned initial state.
            int64_t t0 = rk_now_us();
            rk_ctx_copy(e->ctx, s->state, j->state ? rk_state_ref_data(j->state) : NULL,
                        e->state_len);
            seq_readout(e, s, j);
            atomic_fetch_add(&m->copy_us_sum, (uint64_t)(rk_now_us() - t0));
            atomic_fetch_add(&m->copy_count, 1);
            s->phase = SEQ_PREFILL;
            leader = (int)(s - e->seqs);
        } else {
            s->phase = SEQ_WAIT;
        }
        (void)leader;
    }
    return RK_OK;
}

/* Prefill of the leader finished: its logits are in s->logits. */
static void prefill_done(struct rk_engine *e, struct seq *lead)
{
    struct rk_job *j = lead->job;
    atomic_fetch_add(&e->srv->metrics.tokens_in, j->n_prompt);
    for (int k = 0; k < e->n_seqs; k++) {
        struct seq *s = &e->seqs[k];
        if (s->phase == SEQ_WAIT && s->job == j) {
            memcpy(s->state, lead->state, e->state_len * sizeof(float));
            memcpy(s->logits, lead->logits, (size_t)e->V * sizeof(float));
            seq_readout(e, s, j);
            if (s->ro.ops)
                memcpy(s->carry, lead->carry, e->carry_len * sizeof(float));
            seq_sample(e, s, s->logits);
        }
    }
    seq_sample(e, lead, lead->logits);
}

static int cmp_order(const void *a, const void *b, void *u)
{
    const struct rk_engine *e = u;
    uint64_t x = e->seqs[*(const int *)a].order, y = e->seqs[*(const int *)b].order;
    return x < y ? -1 : x > y;
}

/* Steps 2 and 3 as ONE rk_forward_multi pass, when this step's prompt
 * tokens (FIFO, within --prefill-chunk) and decode tokens fit in the
 * context and either fit in 48 rows or are short prompts (48 rows or fewer
 * per prompt on average, e.g. many new chat requests at once): the weights
 * are then read once per pass (per 48 rows for row-major weights, which
 * rk_forward_multi slices there) instead of once per prompt plus once for
 * the batch, and every sequence gets the same bits as alone. Long prompts
 * keep their own prefill passes. A prompt that finishes here
 * samples its first token, decoded next step. Returns false (nothing done)
 * when the step does not qualify. */
/* Prompt passes on AMX tiles or not (--amx-prefill), decode passes on
 * them or not (--amx-decode): every prompt token and every generated token
 * takes the same kernels whatever shares its pass, so a request's output
 * does not depend on the traffic. */
static void use_amx(struct rk_engine *e, bool prompt)
{
    if (e->amx || e->amx_dec)
        rk_ctx_set_amx(e->ctx, prompt ? e->amx : e->amx_dec);
}

/* A decode sequence takes part in this step unless it is held back. */
static bool runnable(const struct seq *s) { return s->phase == SEQ_DECODE && !s->held; }

/*
 * Back-pressure for streams: a stream whose unsent bytes exceed
 * --max-stream-buffer has its sequences held (they keep their pending token
 * and state, and skip decode steps) until the client has read enough. So a
 * client that never reads costs at most that many bytes of output, not the
 * whole generation; its request deadline and the idle timeout still end it.
 * Returns how many decode sequences run this step.
 */
static int hold_slow_streams(struct rk_engine *e)
{
    size_t cap = e->srv->cfg.stream_buffer_max;
    int n = 0;
    for (int k = 0; k < e->n_seqs; k++) {
        struct seq *s = &e->seqs[k];
        s->held = false;
        if (s->phase != SEQ_DECODE)
            continue;
        struct rk_job *j = s->job;
        if (j->stream) {
            pthread_mutex_lock(&j->mu);
            s->held = j->out.len - j->out_pos > cap;
            pthread_mutex_unlock(&j->mu);
        }
        n += !s->held;
    }
    return n;
}

enum { ONE_PASS_NO, ONE_PASS_ALL, ONE_PASS_PROMPTS };

static int step_one_pass(struct rk_engine *e)
{
    int np = 0, B = 0;
    for (int k = 0; k < e->n_seqs; k++) {
        if (e->seqs[k].phase == SEQ_PREFILL)
            e->pidx[np++] = k;
        B += runnable(&e->seqs[k]);
    }
    /* prompt rows and decode rows share a pass only where both kinds take
     * the same kernels; otherwise the prompts share one pass of their own
     * and the decode step follows (ONE_PASS_PROMPTS) */
    bool mix = e->amx == e->amx_dec;
    if (!mix)
        B = 0;
    if (np == 0 || B + 1 > e->mix_rows)
        return ONE_PASS_NO;
    qsort_r(e->pidx, (size_t)np, sizeof *e->pidx, cmp_order, e);
    long budget = e->srv->cfg.prefill_chunk;
    int rows = B, nseg = 0;
    for (int k = 0; k < e->n_seqs && mix; k++) {
        struct seq *s = &e->seqs[k];
        if (!runnable(s))
            continue;
        e->mtok[nseg] = s->pending;
        e->mn[nseg] = 1;
        e->mwant[nseg] = true;
        e->bstate[nseg] = s->state;
        e->bro[nseg] = seq_ro(s);
        e->bidx[nseg] = k;
        nseg++;
    }
    int ndec = nseg;
    for (int i = 0; i < np && budget > 0; i++) {
        struct seq *s = &e->seqs[e->pidx[i]];
        size_t take = s->job->n_prompt - s->pos;
        if (take > (size_t)budget)
            take = (size_t)budget;
        if (rows + (long)take > e->mix_rows)
            break; /* the rest waits for the next step */
        memcpy(e->mtok + rows, s->job->prompt + s->pos, take * sizeof *e->mtok);
        e->mn[nseg] = take;
        e->mwant[nseg] = s->pos + take == s->job->n_prompt;
        e->bstate[nseg] = s->state;
        e->bro[nseg] = seq_ro(s);
        e->bidx[nseg] = e->pidx[i];
        nseg++;
        rows += (int)take;
        budget -= (long)take;
    }
    int nprompt = nseg - ndec, prows = rows - ndec;
    if (nprompt == 0 || (rows > 48 && prows > 48 * nprompt))
        return ONE_PASS_NO;
    use_amx(e, true);
    int rc = rk_forward_multi_ro(e->ctx, (size_t)nseg, e->mtok, e->mn, e->bstate, e->bro,
                                 e->mwant, e->blogits);
    if (rc != RK_OK) {
        rk_log(RK_LOG_ERROR, "engine: step failed: %s", rk_strerror(rc));
        for (int i = 0; i < nseg; i++) {
            struct seq *s = &e->seqs[e->bidx[i]];
            if (s->phase == SEQ_FREE)
                continue;
            s->job->err = rc;
            snprintf(s->job->errmsg, sizeof s->job->errmsg, "%s failed: %s",
                     i < ndec ? "decode" : "prefill", rk_strerror(rc));
            seq_finish(e, s, RK_FINISH_CANCEL);
        }
        return ONE_PASS_ALL;
    }
    sample_batch(e, ndec);
    for (int i = ndec; i < nseg; i++) {
        struct seq *s = &e->seqs[e->bidx[i]];
        float *lg = e->blogits + (size_t)i * (size_t)e->V;
        s->pos += e->mn[i];
        if (e->mwant[i]) {
            memcpy(s->logits, lg, (size_t)e->V * sizeof(float));
            prefill_done(e, s);
        }
    }
    return mix ? ONE_PASS_ALL : ONE_PASS_PROMPTS;
}

/* One engine step; false when every live sequence is held back (nothing
 * was computed). */
static bool step(struct rk_engine *e)
{
    int64_t t0 = rk_now_us();
    const struct rk_srv_config *cfg = &e->srv->cfg;

    // 1. cancellations and deadlines of running sequences
    bool prompts = false;
    for (int k = 0; k < e->n_seqs; k++) {
        struct seq *s = &e->seqs[k];
        if (s->phase == SEQ_FREE)
            continue;
        if (atomic_load_explicit(&s->job->cancel, memory_order_relaxed))
            seq_finish(e, s, RK_FINISH_CANCEL);
        else if (t0 > s->job->deadline_us)
            seq_finish(e, s, RK_FINISH_TIMEOUT);
        else
            prompts |= s->phase == SEQ_PREFILL;
    }
    if (hold_slow_streams(e) == 0 && !prompts) {
        flush_wakes(e);
        return false;
    }

    int one = step_one_pass(e);
    if (one == ONE_PASS_ALL)
        goto done;

    // 2. prefill, FIFO by admission, bounded per step (done above when the
    // prompts had a pass of their own)
    long budget = one == ONE_PASS_PROMPTS ? 0 : cfg->prefill_chunk;
    use_amx(e, true);
    while (budget > 0) {
        struct seq *s = NULL;
        for (int k = 0; k < e->n_seqs; k++)
            if (e->seqs[k].phase == SEQ_PREFILL && (!s || e->seqs[k].order < s->order))
                s = &e->seqs[k];
        if (!s)
            break;
        struct rk_job *j = s->job;
        size_t take = j->n_prompt - s->pos;
        if (take > (size_t)budget)
            take = (size_t)budget;
        bool last = s->pos + take == j->n_prompt;
        int rc = rk_forward_seq_ro(e->ctx, j->prompt + s->pos, take, s->state, seq_ro(s),
                                   last ? s->logits : NULL, false);
        budget -= (long)take;
        s->pos += take;
        if (rc != RK_OK) {
            rk_log(RK_LOG_ERROR, "engine: prefill failed: %s", rk_strerror(rc));
            j->err = rc;
            snprintf(j->errmsg, sizeof j->errmsg, "prefill failed: %s", rk_strerror(rc));
            for (int k = 0; k < e->n_seqs; k++)
                if (e->seqs[k].phase != SEQ_FREE && e->seqs[k].job == j)
                    seq_finish(e, &e->seqs[k], RK_FINISH_CANCEL);
            continue;
        }
        if (last)
            prefill_done(e, s);
    }

    // 3. one batched decode step over every sequence with a pending token
    int B = 0;
    for (int k = 0; k < e->n_seqs; k++)
        if (runnable(&e->seqs[k])) {
            e->btok[B] = e->seqs[k].pending;
            e->bstate[B] = e->seqs[k].state;
            e->bro[B] = seq_ro(&e->seqs[k]);
            e->bidx[B] = k;
            B++;
        }
    if (B) {
        use_amx(e, false);
        int rc = rk_forward_batch_ro(e->ctx, (size_t)B, e->btok, e->bstate, e->bro, e->blogits);
        if (rc == RK_OK)
            sample_batch(e, B);
        for (int b = 0; rc != RK_OK && b < B; b++) {
            struct seq *s = &e->seqs[e->bidx[b]];
            if (s->phase != SEQ_FREE) {
                s->job->err = rc;
                snprintf(s->job->errmsg, sizeof s->job->errmsg, "decode failed: %s",
                         rk_strerror(rc));
                seq_finish(e, s, RK_FINISH_CANCEL);
            }
        }
        if (rc != RK_OK)
            rk_log(RK_LOG_ERROR, "engine: batched decode failed: %s", rk_strerror(rc));
    }
done:
    atomic_fetch_add(&e->srv->metrics.steps, 1);
    rk_hist_observe(&e->srv->metrics.step_time, (double)(rk_now_us() - t0) / 1e6);
    flush_wakes(e);
    return true;
}

static int n_free(struct rk_engine *e)
{
    int n = 0;
    for (int k = 0; k < e->n_seqs; k++)
        n += e->seqs[k].phase == SEQ_FREE;
    return n;
}

static void *engine_main(void *arg)
{
    struct rk_engine *e = arg;
    // The engine's own thread computes too: same priority as its helpers.
    if (e->srv->cfg.compute_nice > 0 &&
        setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), e->srv->cfg.compute_nice) != 0)
        rk_log(RK_LOG_WARN, "engine: cannot lower the compute threads' priority: %s",
               strerror(errno));
    for (;;) {
        atomic_store(&e->heartbeat_us, rk_now_us());
        // Take admissible jobs and expired/cancelled ones off the queue.
        struct rk_job *admitted = NULL, **atail = &admitted, *dropped = NULL;
        int64_t now = rk_now_us();
        pthread_mutex_lock(&e->mu);
        bool stop = e->stop, cancel_all = e->cancel_all;
        int free_slots = n_free(e);
        for (struct rk_job **pp = &e->q_head; *pp;) {
            struct rk_job *j = *pp;
            bool drop = stop || cancel_all || atomic_load(&j->cancel) || now > j->deadline_us;
            bool take = !drop && j == e->q_head && j->n <= free_slots;
            if (drop || take) {
                *pp = j->q_next;
                if (e->q_tail == j) {
                    e->q_tail = NULL;
                    for (struct rk_job *x = e->q_head; x; x = x->q_next)
                        e->q_tail = x;
                }
                e->q_len--;
                j->q_next = NULL;
                if (drop) {
                    j->q_next = dropped;
                    dropped = j;
                } else {
                    free_slots -= j->n;
                    *atail = j;
                    atail = &j->q_next;
                }
                continue;
            }
            pp = &j->q_next;
        }
        atomic_store(&e->n_queued, e->q_len);
        if (!admitted && !dropped && atomic_load(&e->n_active) == 0 && !stop && !cancel_all) {
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 200 * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&e->cv, &e->mu, &ts);
            pthread_mutex_unlock(&e->mu);
            continue;
        }
        e->cancel_all = false;
        pthread_mutex_unlock(&e->mu);

        while (dropped) {
            struct rk_job *j = dropped;
            dropped = j->q_next;
            bool expired = !stop && !cancel_all && !atomic_load(&j->cancel);
            job_fail_unstarted(e, j, expired ? RK_FINISH_TIMEOUT : RK_FINISH_CANCEL);
        }
        while (admitted) {
            struct rk_job *j = admitted;
            admitted = j->q_next;
            j->q_next = NULL;
            int rc = admit(e, j);
            if (rc != RK_OK) {
                j->err = rc;
                snprintf(j->errmsg, sizeof j->errmsg, "admission failed: %s", rk_strerror(rc));
                for (int k = 0; k < e->n_seqs; k++)
                    if (e->seqs[k].phase != SEQ_FREE && e->seqs[k].job == j)
                        seq_finish(e, &e->seqs[k], RK_FINISH_CANCEL);
                if (j->n_finished < j->n) {
                    j->n_finished = j->n;
                    finish_job_if_done(e, j);
                }
            }
        }
        if (stop || cancel_all)
            for (int k = 0; k < e->n_seqs; k++)
                if (e->seqs[k].phase != SEQ_FREE)
                    seq_finish(e, &e->seqs[k], RK_FINISH_CANCEL);
        bool idle = atomic_load(&e->n_active) > 0 && !step(e);
        flush_wakes(e);
        if (idle && !stop) {
            // Every sequence waits for its client to read: nap briefly (a
            // new request's signal ends the nap at once).
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 2 * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_mutex_lock(&e->mu);
            if (!e->stop && !e->cancel_all)
                pthread_cond_timedwait(&e->cv, &e->mu, &ts);
            pthread_mutex_unlock(&e->mu);
        }
        if (stop)
            break;
    }
    atomic_store(&e->alive, false);
    return NULL;
}

/* --- start / stop -------------------------------------------------------- */

static void engine_free(struct rk_engine *e)
{
    if (e->seqs)
        for (int k = 0; k < e->n_seqs; k++) {
            free(e->seqs[k].state);
            free(e->seqs[k].logits);
            free(e->seqs[k].carry);
            rk_sampler_free(e->seqs[k].smp);
            rk_stopper_free(e->seqs[k].stop);
        }
    free(e->seqs);
    free(e->btok);
    free(e->bstate);
    free(e->bro);
    free(e->bidx);
    free(e->blogits);
    free(e->mtok);
    free(e->mn);
    free(e->mwant);
    free(e->pidx);
    free(e->raw);
    free(e->top_ids);
    free(e->top_lps);
    free(e->picks);
    free(e->touched);
    rk_ctx_free(e->ctx);
    pthread_mutex_destroy(&e->mu);
    pthread_mutex_destroy(&e->wmu);
    pthread_cond_destroy(&e->cv);
    free(e);
}

int rk_engine_start(struct rk_srv *srv, void (*wake)(void *user), void *user,
                    struct rk_engine **out, struct rk_errbuf *eb)
{
    *out = NULL;
    struct rk_engine *e = calloc(1, sizeof *e);
    if (!e)
        return rk_errbuf_set(eb, RK_ENOMEM, "engine: out of memory");
    pthread_mutex_init(&e->mu, NULL);
    pthread_mutex_init(&e->wmu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_cond_init(&e->cv, &ca);
    pthread_condattr_destroy(&ca);
    e->srv = srv;
    e->wake = wake;
    e->wake_user = user;
    e->state_len = rk_state_len(srv->model);
    e->carry_len = (size_t)rk_model_n_layer(srv->model) * (size_t)rk_model_n_head(srv->model);
    e->V = rk_model_n_vocab(srv->model);
    e->bytes_tok = rk_tok_is_bytes(srv->tok);
    e->n_seqs = srv->cfg.seqs_max;
    size_t V = (size_t)e->V, S = (size_t)e->n_seqs;
    struct rk_ctx_params cp = {.n_threads = srv->cfg.threads,
                               .nice = srv->cfg.compute_nice,
                               .rows_max = srv->cfg.prefill_chunk > e->n_seqs
                                               ? (srv->cfg.prefill_chunk > 512 ? 512 : srv->cfg.prefill_chunk)
                                               : (e->n_seqs > 512 ? 512 : e->n_seqs)};
    int rc = rk_ctx_create(srv->model, &cp, &e->ctx);
    if (rc != RK_OK) {
        engine_free(e);
        return rk_errbuf_set(eb, rc, "engine: cannot create a compute context: %s",
                             rk_strerror(rc));
    }
    e->seqs = calloc(S, sizeof *e->seqs);
    e->btok = calloc(S, sizeof *e->btok);
    e->bstate = calloc(S, sizeof *e->bstate);
    e->bro = calloc(S, sizeof *e->bro);
    e->bidx = calloc(S, sizeof *e->bidx);
    e->blogits = malloc(S * V * sizeof(float));
    e->mix_rows = cp.rows_max;
    bool amx_ok = rk_ctx_set_amx(e->ctx, true);
    rk_ctx_set_amx(e->ctx, false);
    e->amx = srv->cfg.amx_prefill && amx_ok;
    e->amx_dec = srv->cfg.amx_decode && amx_ok;
    rk_log(RK_LOG_INFO, "engine: %d compute threads; prompts on %s, generated tokens on %s",
           rk_ctx_n_threads(e->ctx), e->amx ? "AMX tiles (bf16 inputs)" : "the fp32 kernels",
           e->amx_dec ? "AMX tiles (bf16 inputs)" : "the fp32 kernels");
    e->mtok = malloc((size_t)e->mix_rows * sizeof *e->mtok);
    e->mn = malloc(S * sizeof *e->mn);
    e->mwant = malloc(S * sizeof *e->mwant);
    e->pidx = malloc(S * sizeof *e->pidx);
    e->n_threads = rk_ctx_n_threads(e->ctx);
    size_t nt = (size_t)e->n_threads, lpn = (size_t)srv->cfg.logprobs_max + 1;
    e->raw = malloc(nt * V * sizeof(float));
    e->top_ids = calloc(nt * lpn, sizeof *e->top_ids);
    e->top_lps = calloc(nt * lpn, sizeof *e->top_lps);
    e->picks = calloc(S, sizeof *e->picks);
    e->touched = calloc(S * 2, sizeof *e->touched);
    bool ok = e->seqs && e->btok && e->bstate && e->bro && e->bidx && e->blogits && e->raw && e->top_ids &&
              e->top_lps && e->picks && e->touched && e->mtok && e->mn && e->mwant && e->pidx;
    for (size_t k = 0; ok && k < S; k++) {
        e->seqs[k].state = malloc(e->state_len * sizeof(float));
        e->seqs[k].logits = malloc(V * sizeof(float));
        e->seqs[k].carry = calloc(e->carry_len, sizeof(float));
        ok = e->seqs[k].state && e->seqs[k].logits && e->seqs[k].carry;
    }
    if (!ok) {
        engine_free(e);
        return rk_errbuf_set(eb, RK_ENOMEM, "engine: out of memory for %zu sequences", S);
    }
    atomic_store(&e->heartbeat_us, rk_now_us());
    atomic_store(&e->alive, true);
    if (pthread_create(&e->th, NULL, engine_main, e) != 0) {
        engine_free(e);
        return rk_errbuf_set(eb, RK_EINTERNAL, "engine: cannot start the thread");
    }
    e->started = true;
    *out = e;
    return RK_OK;
}

void rk_engine_join(struct rk_engine *e)
{
    if (!e)
        return;
    pthread_mutex_lock(&e->mu);
    e->stop = true;
    pthread_cond_signal(&e->cv);
    pthread_mutex_unlock(&e->mu);
    if (e->started)
        pthread_join(e->th, NULL);
    e->started = false;
}

void rk_engine_stop(struct rk_engine *e)
{
    if (!e)
        return;
    rk_engine_join(e);
    // Jobs nobody drained from the wake list.
    while (e->w_head) {
        struct rk_job *j = e->w_head;
        e->w_head = j->wake_next;
        rk_job_release(j);
    }
    engine_free(e);
}

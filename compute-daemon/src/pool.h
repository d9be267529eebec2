/*
 * pool.h -- the worker pool of one wc_serve call (pool.c).
 *
 * `nworkers` threads take jobs from `queue`, run the op (ops.c) and put the
 * finished job on `done`, then wake the I/O thread through the eventfd
 * `efd` (once per batch: `wake_pending`). `mu` guards queue, running, done,
 * quit and wake_pending, and is the lock of `cancel_cv`, which running ops
 * sleep on. The I/O thread polls `efd` and takes finished jobs with
 * wc_pool_collect; everything else it does goes through the calls below.
 */
#ifndef WC_POOL_H
#define WC_POOL_H

#include <pthread.h>

#include "job.h"

struct wc_pool {
    uint32_t nworkers;
    uint32_t pid;  /* for the info op */
    int efd;       /* eventfd: workers -> I/O thread; -1 until created */
    pthread_t *threads;
    uint32_t nthreads; /* started */

    /* Shared with the workers, guarded by mu. */
    pthread_mutex_t mu;
    pthread_cond_t work_cv;        /* queue gained a job, or quit */
    pthread_cond_t cancel_cv;      /* a running job was cancelled (CLOCK_MONOTONIC) */
    struct wc_job_list queue;      /* accepted, waiting for a worker */
    struct wc_job_list running;    /* on a worker now */
    struct wc_job_list done;       /* finished, for the I/O thread */
    int quit;
    int wake_pending; /* an eventfd wake is on its way */
    int sync_ready;   /* mu and both condition variables exist */
};

/** Create the lock, condition variables and eventfd of a pool of `workers`
 *  threads (no thread yet). 0, or -1 with a reason in `err`; either way
 *  wc_pool_free undoes it. */
int wc_pool_init(struct wc_pool *p, uint32_t workers, uint32_t pid, char *err, size_t err_len);
/** Start the threads. 0, or -1 with a reason in `err` (the threads already
 *  started are counted in nthreads and joined by wc_pool_stop). */
int wc_pool_start(struct wc_pool *p, char *err, size_t err_len);
/** Queue an accepted request for the workers. */
void wc_pool_submit(struct wc_pool *p, struct wc_job *j);
/** CANCEL of `id`: a queued job is unlinked and returned for the caller to
 *  answer; a running one gets its cancel flag set (NULL returned); other
 *  ids are ignored (NULL). */
struct wc_job *wc_pool_cancel(struct wc_pool *p, uint64_t id);
/** Stop: queued jobs move to `queued` for the caller to answer, running
 *  ones are told to stop, and every thread is joined (within milliseconds:
 *  sleep waits on cancel_cv, render checks its flag per pixel). Their
 *  replies are then on `done` (wc_pool_collect). Needs sync_ready. */
void wc_pool_stop(struct wc_pool *p, struct wc_job_list *queued);
/** Consume the eventfd wake and move the finished jobs to the end of
 *  `done`, in completion order. Needs sync_ready. */
void wc_pool_collect(struct wc_pool *p, struct wc_job_list *done);
/** Free the jobs still held, the threads array, the eventfd and the
 *  synchronisation objects (the threads must be joined). */
void wc_pool_free(struct wc_pool *p);

#endif /* WC_POOL_H */

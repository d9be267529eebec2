/*
 * pool.c -- the worker threads of one wc_serve call: the queue they take
 * requests from, running each op through the op table, the done list and
 * the eventfd that wakes the I/O thread, cancelling, and stopping.
 *
 * Locking: p->mu guards the three lists, quit and wake_pending; a cancel
 * flag is set under it and announced on cancel_cv, which sleeping ops wait
 * on (their struct wc_call names both). The job being run is only touched by
 * its worker until it is back on `done`.
 */
#define _GNU_SOURCE

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "ops.h"
#include "pool.h"

static void run_job(struct wc_pool *p, struct wc_job *j)
{
    const struct wc_op_entry *op = wc_op_find(j->op);
    struct wc_call call = {
        .request_id = j->id,
        .op = j->op,
        .payload = j->payload,
        .payload_len = j->payload_len,
        .in_fd = j->in_fd,
        .in_size = j->in_size,
        .out_fd = -1,
        .cancel = &j->cancel,
        .cancel_mu = &p->mu,
        .cancel_cv = &p->cancel_cv,
        .pid = p->pid,
        .workers = p->nworkers,
        .status = WC_STATUS_INTERNAL,
    };
    if (op != NULL)
        op->handler(&call);
    else
        wc_call_fail(&call, WC_STATUS_UNKNOWN_OP, "unknown op %u", j->op);
    free(call.payload); /* NULL when the handler took it */
    if (call.in_fd >= 0)
        close(call.in_fd); /* -1 when the handler took it */
    j->in_fd = -1;
    j->payload = NULL;
    j->payload_len = 0;
    j->kind = WC_FRAME_RESPONSE;
    j->code = call.status;
    j->out = call.out;
    j->out_len = call.out_len;
    if (call.out_fd >= 0 && call.status == WC_STATUS_OK) {
        /* A RESPONSE_FD: its inline payload is the size. */
        uint8_t *size = malloc(WC_FD_INFO_SIZE);
        if (size == NULL) {
            close(call.out_fd);
            wc_job_set_message(j, WC_STATUS_INTERNAL, "%s: out of memory for a reply", wc_op_name(j->op));
            return;
        }
        free(j->out);
        wc_put_u64le(size, call.out_size);
        j->kind = WC_FRAME_RESPONSE_FD;
        j->out = size;
        j->out_len = WC_FD_INFO_SIZE;
        j->out_fd = call.out_fd;
        j->out_size = call.out_size;
        j->out_fd_passed = call.out_fd_passed;
    } else if (call.out_fd >= 0) {
        close(call.out_fd);
    }
}

static void wake_io(struct wc_pool *p)
{
    uint64_t one = 1;
    while (write(p->efd, &one, sizeof one) < 0 && errno == EINTR)
        ;
}

static void *worker_main(void *arg)
{
    struct wc_pool *p = arg;
    pthread_mutex_lock(&p->mu);
    for (;;) {
        while (!p->quit && p->queue.head == NULL)
            pthread_cond_wait(&p->work_cv, &p->mu);
        if (p->quit)
            break; /* queued jobs are answered by the one who stops the pool */
        struct wc_job *j = wc_jobs_pop(&p->queue);
        wc_jobs_push(&p->running, j);
        pthread_mutex_unlock(&p->mu);

        run_job(p, j);

        pthread_mutex_lock(&p->mu);
        wc_jobs_remove(&p->running, j);
        wc_jobs_push(&p->done, j);
        int need_wake = !p->wake_pending;
        p->wake_pending = 1;
        if (need_wake) {
            pthread_mutex_unlock(&p->mu);
            wake_io(p);
            pthread_mutex_lock(&p->mu);
        }
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}

int wc_pool_init(struct wc_pool *p, uint32_t workers, uint32_t pid, char *err, size_t err_len)
{
    p->nworkers = workers;
    p->pid = pid;
    p->efd = -1;

    pthread_condattr_t attr;
    if (pthread_condattr_init(&attr) != 0) {
        wc_errf(err, err_len, "could not create condition variable attributes");
        return -1;
    }
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    int ok_mu = pthread_mutex_init(&p->mu, NULL) == 0;
    int ok_work = pthread_cond_init(&p->work_cv, NULL) == 0;
    int ok_cancel = pthread_cond_init(&p->cancel_cv, &attr) == 0;
    pthread_condattr_destroy(&attr);
    if (!(ok_mu && ok_work && ok_cancel)) {
        if (ok_mu)
            pthread_mutex_destroy(&p->mu);
        if (ok_work)
            pthread_cond_destroy(&p->work_cv);
        if (ok_cancel)
            pthread_cond_destroy(&p->cancel_cv);
        wc_errf(err, err_len, "could not create a mutex or condition variable");
        return -1;
    }
    p->sync_ready = 1;
    p->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (p->efd < 0) {
        wc_errf(err, err_len, "could not create an eventfd: %s", strerror(errno));
        return -1;
    }
    return 0;
}

int wc_pool_start(struct wc_pool *p, char *err, size_t err_len)
{
    p->threads = calloc(p->nworkers, sizeof *p->threads);
    if (p->threads == NULL) {
        wc_errf(err, err_len, "out of memory for %u worker threads", p->nworkers);
        return -1;
    }
    for (uint32_t i = 0; i < p->nworkers; i++) {
        int e = pthread_create(&p->threads[i], NULL, worker_main, p);
        if (e != 0) {
            wc_errf(err, err_len, "could not start worker thread %u of %u: %s", i + 1, p->nworkers, strerror(e));
            return -1;
        }
        p->nthreads++;
    }
    return 0;
}

void wc_pool_submit(struct wc_pool *p, struct wc_job *j)
{
    pthread_mutex_lock(&p->mu);
    wc_jobs_push(&p->queue, j);
    pthread_cond_signal(&p->work_cv);
    pthread_mutex_unlock(&p->mu);
}

struct wc_job *wc_pool_cancel(struct wc_pool *p, uint64_t id)
{
    struct wc_job *queued = NULL;
    pthread_mutex_lock(&p->mu);
    for (struct wc_job *j = p->queue.head; j; j = j->next) {
        if (j->id == id) {
            wc_jobs_remove(&p->queue, j);
            queued = j;
            break;
        }
    }
    if (queued == NULL) {
        for (struct wc_job *j = p->running.head; j; j = j->next) {
            if (j->id == id) {
                atomic_store(&j->cancel, 1);
                pthread_cond_broadcast(&p->cancel_cv);
                break;
            }
        }
    }
    pthread_mutex_unlock(&p->mu);
    return queued;
}

void wc_pool_stop(struct wc_pool *p, struct wc_job_list *queued)
{
    pthread_mutex_lock(&p->mu);
    p->quit = 1;
    wc_jobs_splice(queued, &p->queue);
    for (struct wc_job *j = p->running.head; j; j = j->next)
        atomic_store(&j->cancel, 1);
    pthread_cond_broadcast(&p->work_cv);
    pthread_cond_broadcast(&p->cancel_cv);
    pthread_mutex_unlock(&p->mu);

    for (uint32_t i = 0; i < p->nthreads; i++)
        pthread_join(p->threads[i], NULL);
    p->nthreads = 0;
}

void wc_pool_collect(struct wc_pool *p, struct wc_job_list *done)
{
    uint64_t v;
    while (read(p->efd, &v, sizeof v) < 0 && errno == EINTR)
        ;
    pthread_mutex_lock(&p->mu);
    wc_jobs_splice(done, &p->done);
    p->wake_pending = 0;
    pthread_mutex_unlock(&p->mu);
}

void wc_pool_free(struct wc_pool *p)
{
    wc_jobs_free(&p->queue);
    wc_jobs_free(&p->running);
    wc_jobs_free(&p->done);
    free(p->threads);
    p->threads = NULL;
    if (p->efd >= 0)
        close(p->efd);
    p->efd = -1;
    if (p->sync_ready) {
        pthread_cond_destroy(&p->cancel_cv);
        pthread_cond_destroy(&p->work_cv);
        pthread_mutex_destroy(&p->mu);
        p->sync_ready = 0;
    }
}

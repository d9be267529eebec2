/*
 * job.c -- jobs and job lists: allocation, the reply message of a job, and
 * the FIFO operations the pool and the loop move jobs with. No locking: the
 * caller guards a list that is shared (see pool.h).
 */
#define _GNU_SOURCE

#include <stdarg.h>
#include <stdlib.h>

#include <unistd.h>

#include "job.h"

struct wc_job *wc_job_new(uint64_t id, uint16_t kind, uint32_t code)
{
    struct wc_job *j = calloc(1, sizeof *j);
    if (j == NULL)
        return NULL;
    j->id = id;
    j->kind = kind;
    j->code = code;
    j->in_fd = -1;
    j->out_fd = -1;
    atomic_init(&j->cancel, 0);
    return j;
}

void wc_job_free(struct wc_job *j)
{
    free(j->payload);
    free(j->out);
    if (j->in_fd >= 0)
        close(j->in_fd);
    if (j->out_fd >= 0)
        close(j->out_fd);
    free(j);
}

void wc_job_set_message(struct wc_job *j, uint32_t status, const char *fmt, ...)
{
    j->kind = WC_FRAME_RESPONSE;
    j->code = status;
    if (j->out_fd >= 0) {
        close(j->out_fd);
        j->out_fd = -1;
    }
    va_list ap;
    va_start(ap, fmt);
    wc_vmessage(&j->out, &j->out_len, fmt, ap);
    va_end(ap);
}

void wc_jobs_push(struct wc_job_list *l, struct wc_job *j)
{
    j->next = NULL;
    j->prev = l->tail;
    if (l->tail)
        l->tail->next = j;
    else
        l->head = j;
    l->tail = j;
    l->len++;
}

void wc_jobs_remove(struct wc_job_list *l, struct wc_job *j)
{
    if (j->prev)
        j->prev->next = j->next;
    else
        l->head = j->next;
    if (j->next)
        j->next->prev = j->prev;
    else
        l->tail = j->prev;
    j->prev = j->next = NULL;
    l->len--;
}

struct wc_job *wc_jobs_pop(struct wc_job_list *l)
{
    struct wc_job *j = l->head;
    if (j)
        wc_jobs_remove(l, j);
    return j;
}

void wc_jobs_splice(struct wc_job_list *dst, struct wc_job_list *src)
{
    if (src->head == NULL)
        return;
    if (dst->tail) {
        dst->tail->next = src->head;
        src->head->prev = dst->tail;
    } else {
        dst->head = src->head;
    }
    dst->tail = src->tail;
    dst->len += src->len;
    src->head = src->tail = NULL;
    src->len = 0;
}

void wc_jobs_free(struct wc_job_list *l)
{
    struct wc_job *j;
    while ((j = wc_jobs_pop(l)) != NULL)
        wc_job_free(j);
}

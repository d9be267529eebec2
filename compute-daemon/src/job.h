/*
 * job.h -- one request, or one frame to send, and the lists that hold it
 * (job.c).
 *
 * A request is one struct wc_job from the moment its header is read until
 * its RESPONSE is fully written: queue -> running -> done (pool.c) -> out
 * (loop.c) -> freed. A job is on at most one list at a time; a list does no
 * locking of its own (the pool's lists are guarded by the pool's mutex).
 */
#ifndef WC_JOB_H
#define WC_JOB_H

#include <stdatomic.h>

#include "wc_internal.h"

struct wc_job {
    struct wc_job *prev, *next; /* links in the one list that holds it */
    uint64_t id;
    uint32_t op;
    uint8_t *payload; /* request payload (owned), NULL once consumed */
    size_t payload_len;
    atomic_int cancel; /* set by CANCEL/teardown while running */
    /* The frame to send. */
    uint16_t kind;
    uint32_t code;
    uint8_t *out; /* reply payload (owned) */
    size_t out_len;
    uint8_t hdr[WC_HEADER_SIZE];
    /* Payloads by fd (-1: none). in_fd: a REQUEST_FD's checked memfd of
     * in_size bytes; out_fd: the sealed memfd a RESPONSE_FD sends (its
     * `out` is then the 8 size bytes), closed once sent. */
    int in_fd, out_fd;
    uint64_t in_size, out_size;
    int out_fd_passed; /* out_fd is the request's own memfd, passed back */
    int is_request; /* counts against WC_QUEUE_MAX_REQUESTS until written */
    size_t held;    /* bytes counted against WC_QUEUE_MAX_BYTES now */
};

/** A doubly linked FIFO of jobs; {0} is empty. */
struct wc_job_list {
    struct wc_job *head, *tail;
    size_t len;
};

/** A zeroed job for frame `kind` with `code`, or NULL (out of memory). */
struct wc_job *wc_job_new(uint64_t id, uint16_t kind, uint32_t code);
/** Free the job, its payload and its reply, and close its fds. */
void wc_job_free(struct wc_job *j);
/** Make `j` a RESPONSE with `status` and a formatted message (its previous
 *  reply freed, its reply fd closed). */
void wc_job_set_message(struct wc_job *j, uint32_t status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/** Append `j` at the tail. */
void wc_jobs_push(struct wc_job_list *l, struct wc_job *j);
/** Unlink `j`, which is on `l`. */
void wc_jobs_remove(struct wc_job_list *l, struct wc_job *j);
/** Unlink and return the head, or NULL when empty. */
struct wc_job *wc_jobs_pop(struct wc_job_list *l);
/** Move all of `src` to the end of `dst`; `src` ends empty. */
void wc_jobs_splice(struct wc_job_list *dst, struct wc_job_list *src);
/** Free every job on `l`; `l` ends empty. */
void wc_jobs_free(struct wc_job_list *l);

#endif /* WC_JOB_H */

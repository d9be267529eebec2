/*
 * ops.h -- the op table and one call of an op (ops.c).
 *
 * Whoever runs an op (the worker pool) fills a struct wc_call and calls the
 * handler from the table. Nothing here refers to the pool or the loop: the
 * call carries its cancel flag and the mutex and condition variable that a
 * sleeping op waits on.
 */
#ifndef WC_OPS_H
#define WC_OPS_H

#include <pthread.h>
#include <stdatomic.h>

#include "wc_internal.h"

/** One request as a handler sees it. The handler fills status/out. */
struct wc_call {
    uint64_t request_id;
    uint32_t op;
    /** Request payload, owned by the call (not NUL-terminated). A handler
     *  may take it (set to NULL) to reply with the same buffer. */
    uint8_t *payload;
    size_t payload_len;
    /** A REQUEST_FD's input: a checked, sealed memfd of in_size bytes
     *  (owned by the call; a handler may take it, setting -1), else -1. */
    int in_fd;
    uint64_t in_size;
    /** Non-zero once CANCEL or SHUTDOWN reached this request. Whoever sets
     *  it does so holding *cancel_mu and then broadcasts *cancel_cv. */
    atomic_int *cancel;
    /** Where wc_call_sleep_ms waits (cancel_cv counts CLOCK_MONOTONIC);
     *  NULL makes sleeps plain (tests of ops only). */
    pthread_mutex_t *cancel_mu;
    pthread_cond_t *cancel_cv;
    /** Facts for the info op. */
    uint32_t pid;
    uint32_t workers;
    /** Result: a WC_STATUS_* and its payload (malloc'd, or NULL), or, for
     *  a large one, a sealed memfd of out_size bytes in out_fd (else -1). */
    uint32_t status;
    uint8_t *out;
    size_t out_len;
    int out_fd;
    uint64_t out_size;
    /** out_fd is the request's own memfd passed back (echo): it holds
     *  none of compute's memory, so it is not counted as held. */
    int out_fd_passed;
};

typedef void (*wc_op_handler)(struct wc_call *call);

/** One row of the op table. */
struct wc_op_entry {
    uint32_t id;          /**< enum wc_op */
    const char *name;     /**< as sent in HELLO and info */
    wc_op_handler handler;
};

/** The ops this daemon serves, in HELLO order: the one place an op's id,
 *  name and handler are written down (HELLO, info, wc_op_name, messages and
 *  --help all read it). */
extern const struct wc_op_entry wc_ops[];
extern const size_t wc_ops_count;
/** The table row for `op`, or NULL. */
const struct wc_op_entry *wc_op_find(uint32_t op);

/** Non-zero once the call was cancelled. */
int wc_call_cancelled(const struct wc_call *call);
/** Finish the call with a non-OK status and a formatted message payload. */
void wc_call_fail(struct wc_call *call, uint32_t status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/** Wait `ms` milliseconds unless the call is cancelled first.
 *  Returns 0 after the full wait, 1 when cancelled. */
int wc_call_sleep_ms(struct wc_call *call, uint64_t ms);

#endif /* WC_OPS_H */

/*
 * loop.c -- wc_serve(): the request loop of one compute connection.
 *
 * Threads and ownership:
 *   - The calling thread is the I/O thread. It alone reads and writes the
 *     socket, polls the watch and stop fds, decodes frames, answers PING,
 *     CANCEL and requests it can refuse at once (unknown op, BUSY), and
 *     keeps the outbound list (`out`) with the partial-write offset.
 *   - `workers` threads take jobs from `queue`, run the op (ops.c) and put
 *     the finished job on `done`, then wake the I/O thread through an
 *     eventfd (once per batch: `wake_pending`).
 *   - `mu` guards queue, running, done, quit and wake_pending, and is the
 *     lock of `cancel_cv`, which a running op sleeps on (its struct wc_call
 *     names both). Everything else is I/O-thread only.
 *
 * A request is one struct wc_job from the moment its header is read until
 * its RESPONSE is fully written: queue -> running -> done -> out -> freed.
 * Each path through that list ends in exactly one RESPONSE.
 *
 * Bounds: WC_QUEUE_MAX_REQUESTS accepted requests and WC_QUEUE_MAX_BYTES of
 * payload/reply bytes (over either, BUSY); the socket is not read while
 * more than WC_OUT_HIGH_WATER bytes wait to be written; one frame's payload
 * is read incrementally into a buffer that grows up to its payload_len.
 */
#define _GNU_SOURCE

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "ops.h"

/* Bytes read from the socket into the staging buffer at once. */
#define STAGE_SIZE (64u * 1024u)
/* Bytes read per poll wake-up before writes and other fds get a turn. */
#define READ_BUDGET (4u * 1024u * 1024u)
/* iovecs per sendmsg. */
#define MAX_IOV 64

/* ---- Jobs and job lists ------------------------------------------------ */

/* One outbound frame, and for a request everything from its header to its
 * reply. */
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
    int is_request; /* counts against WC_QUEUE_MAX_REQUESTS until written */
    size_t held;    /* bytes counted against WC_QUEUE_MAX_BYTES now */
};

struct job_list {
    struct wc_job *head, *tail;
    size_t len;
};

static void list_push(struct job_list *l, struct wc_job *j)
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

static void list_remove(struct job_list *l, struct wc_job *j)
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

static struct wc_job *list_pop(struct job_list *l)
{
    struct wc_job *j = l->head;
    if (j)
        list_remove(l, j);
    return j;
}

/* Move all of `src` to the end of `dst`. */
static void list_splice(struct job_list *dst, struct job_list *src)
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

static void job_free(struct wc_job *j)
{
    free(j->payload);
    free(j->out);
    free(j);
}

static void list_free(struct job_list *l)
{
    struct wc_job *j;
    while ((j = list_pop(l)) != NULL)
        job_free(j);
}

static struct wc_job *job_new(uint64_t id, uint16_t kind, uint32_t code)
{
    struct wc_job *j = calloc(1, sizeof *j);
    if (j == NULL)
        return NULL;
    j->id = id;
    j->kind = kind;
    j->code = code;
    atomic_init(&j->cancel, 0);
    return j;
}

/* Replace the reply of `j` by a status and a formatted message. */
static void job_set_message(struct wc_job *j, uint32_t status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void job_set_message(struct wc_job *j, uint32_t status, const char *fmt, ...)
{
    j->kind = WC_FRAME_RESPONSE;
    j->code = status;
    va_list ap;
    va_start(ap, fmt);
    wc_vmessage(&j->out, &j->out_len, fmt, ap);
    va_end(ap);
}

/* ---- The server -------------------------------------------------------- */

/* Incremental frame reader state (I/O thread). */
struct reader {
    uint8_t hdr[WC_HEADER_SIZE];
    size_t hdr_fill;
    int in_payload;      /* header decoded, payload bytes pending */
    struct wc_header h;  /* the frame being read */
    int discard;         /* payload is counted, not stored */
    uint32_t verdict;    /* REQUEST: WC_STATUS_OK to queue, else reply code */
    uint8_t *buf;        /* payload so far */
    size_t cap, fill;
    uint8_t *stage;      /* STAGE_SIZE bytes */
};

struct wc_server {
    int fd;
    int watch_fd;
    int stop_fd;
    int efd; /* eventfd: workers -> I/O thread */
    uint32_t nworkers;
    uint32_t pid;
    char *err;
    size_t err_len;

    pthread_t *threads;
    uint32_t nthreads; /* started */

    /* Shared with workers, guarded by mu. */
    pthread_mutex_t mu;
    pthread_cond_t work_cv;   /* queue gained a job, or quit */
    pthread_cond_t cancel_cv; /* a running job was cancelled */
    struct job_list queue;    /* accepted, waiting for a worker */
    struct job_list running;  /* on a worker now */
    struct job_list done;     /* finished, for the I/O thread */
    int quit;
    int wake_pending; /* an eventfd wake is on its way */
    int sync_ready;   /* mu and both condition variables exist */

    /* I/O thread only. */
    struct job_list out; /* frames to write, in order */
    size_t out_off;      /* bytes of out.head already written */
    size_t out_bytes;    /* bytes in `out` not yet written */
    uint32_t inflight;   /* accepted requests not yet written */
    size_t held_bytes;   /* bytes counted against WC_QUEUE_MAX_BYTES */
    int reading;         /* still reading frames (not after SHUTDOWN) */
    struct reader rd;
};

/* Outcome of one step of the I/O loop: go on, or return `result`. */
#define GO_ON (-1)

static void encode_frame_header(struct wc_job *j)
{
    struct wc_header h = {
        .magic = WC_MAGIC,
        .version = WC_PROTOCOL_VERSION,
        .kind = j->kind,
        .request_id = j->id,
        .code = j->code,
        .payload_len = (uint32_t)j->out_len,
    };
    wc_header_encode(&h, j->hdr);
}

/* Queue a finished frame for writing (I/O thread). A reply over the frame
 * limit becomes TOO_LARGE. */
static void out_push(struct wc_server *s, struct wc_job *j)
{
    if (j->out_len > WC_MAX_PAYLOAD) {
        size_t len = j->out_len;
        job_set_message(j, WC_STATUS_TOO_LARGE, "%s: reply of %zu bytes is over the %u-byte payload limit",
                        wc_op_name(j->op), len, (unsigned)WC_MAX_PAYLOAD);
    }
    encode_frame_header(j);
    if (j->is_request) {
        s->held_bytes -= j->held;
        j->held = j->out_len;
        s->held_bytes += j->held;
    }
    s->out_bytes += WC_HEADER_SIZE + j->out_len;
    list_push(&s->out, j);
}

/* A written (or dropped) frame leaves the accounting. */
static void out_finish(struct wc_server *s, struct wc_job *j)
{
    s->out_bytes -= WC_HEADER_SIZE + j->out_len;
    if (j->is_request) {
        s->inflight--;
        s->held_bytes -= j->held;
    }
    job_free(j);
}

/* A frame the I/O thread answers itself (HELLO, PONG, refusals). */
static int out_control(struct wc_server *s, struct wc_job *j)
{
    if (j == NULL) {
        wc_errf(s->err, s->err_len, "out of memory for a reply frame");
        return WC_SERVE_ERROR;
    }
    out_push(s, j);
    return GO_ON;
}

/* ---- Workers ----------------------------------------------------------- */

static void run_job(struct wc_server *s, struct wc_job *j)
{
    const struct wc_op_entry *op = wc_op_find(j->op);
    struct wc_call call = {
        .request_id = j->id,
        .op = j->op,
        .payload = j->payload,
        .payload_len = j->payload_len,
        .cancel = &j->cancel,
        .cancel_mu = &s->mu,
        .cancel_cv = &s->cancel_cv,
        .pid = s->pid,
        .workers = s->nworkers,
        .status = WC_STATUS_INTERNAL,
    };
    if (op != NULL)
        op->handler(&call);
    else
        wc_call_fail(&call, WC_STATUS_UNKNOWN_OP, "unknown op %u", j->op);
    free(call.payload); /* NULL when the handler took it */
    j->payload = NULL;
    j->payload_len = 0;
    j->kind = WC_FRAME_RESPONSE;
    j->code = call.status;
    j->out = call.out;
    j->out_len = call.out_len;
}

static void wake_io(struct wc_server *s)
{
    uint64_t one = 1;
    while (write(s->efd, &one, sizeof one) < 0 && errno == EINTR)
        ;
}

static void *worker_main(void *arg)
{
    struct wc_server *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->quit && s->queue.head == NULL)
            pthread_cond_wait(&s->work_cv, &s->mu);
        if (s->quit)
            break; /* queued jobs are answered by the teardown */
        struct wc_job *j = list_pop(&s->queue);
        list_push(&s->running, j);
        pthread_mutex_unlock(&s->mu);

        run_job(s, j);

        pthread_mutex_lock(&s->mu);
        list_remove(&s->running, j);
        list_push(&s->done, j);
        int need_wake = !s->wake_pending;
        s->wake_pending = 1;
        if (need_wake) {
            pthread_mutex_unlock(&s->mu);
            wake_io(s);
            pthread_mutex_lock(&s->mu);
        }
    }
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* Move finished jobs from the workers to the outbound list (I/O thread). */
static void collect_done(struct wc_server *s)
{
    uint64_t v;
    while (read(s->efd, &v, sizeof v) < 0 && errno == EINTR)
        ;
    struct job_list done = {0};
    pthread_mutex_lock(&s->mu);
    list_splice(&done, &s->done);
    s->wake_pending = 0;
    pthread_mutex_unlock(&s->mu);
    struct wc_job *j;
    while ((j = list_pop(&done)) != NULL)
        out_push(s, j);
}

/* ---- Cancelling -------------------------------------------------------- */

static void cancel_one(struct wc_server *s, uint64_t id)
{
    struct wc_job *queued = NULL;
    pthread_mutex_lock(&s->mu);
    for (struct wc_job *j = s->queue.head; j; j = j->next) {
        if (j->id == id) {
            list_remove(&s->queue, j);
            queued = j;
            break;
        }
    }
    if (queued == NULL) {
        for (struct wc_job *j = s->running.head; j; j = j->next) {
            if (j->id == id) {
                atomic_store(&j->cancel, 1);
                pthread_cond_broadcast(&s->cancel_cv);
                break;
            }
        }
    }
    pthread_mutex_unlock(&s->mu);
    /* Finished or unknown ids are ignored: their one RESPONSE is sent. */
    if (queued != NULL) {
        free(queued->payload);
        queued->payload = NULL;
        job_set_message(queued, WC_STATUS_CANCELLED, "request %llu (%s) cancelled before it started",
                        (unsigned long long)id, wc_op_name(queued->op));
        out_push(s, queued);
    }
}

/* Stop the workers: queued jobs are answered CANCELLED at once, running ones
 * are told to stop. Then join every thread (they stop within milliseconds:
 * sleep waits on cancel_cv, render checks its flag per pixel). */
static void stop_workers(struct wc_server *s, const char *why)
{
    struct job_list queued = {0};
    pthread_mutex_lock(&s->mu);
    s->quit = 1;
    list_splice(&queued, &s->queue);
    for (struct wc_job *j = s->running.head; j; j = j->next)
        atomic_store(&j->cancel, 1);
    pthread_cond_broadcast(&s->work_cv);
    pthread_cond_broadcast(&s->cancel_cv);
    pthread_mutex_unlock(&s->mu);

    struct wc_job *j;
    while ((j = list_pop(&queued)) != NULL) {
        free(j->payload);
        j->payload = NULL;
        job_set_message(j, WC_STATUS_CANCELLED, "request %llu (%s) cancelled before it started: %s",
                        (unsigned long long)j->id, wc_op_name(j->op), why);
        out_push(s, j);
    }
    for (uint32_t i = 0; i < s->nthreads; i++)
        pthread_join(s->threads[i], NULL);
    s->nthreads = 0;
    collect_done(s);
}

/* ---- Writing ----------------------------------------------------------- */

/* Write as much of `out` as the socket takes. 0, or -errno. */
static int flush_some(struct wc_server *s)
{
    while (s->out.head != NULL) {
        struct iovec iov[MAX_IOV];
        int n = 0;
        size_t off = s->out_off;
        for (struct wc_job *j = s->out.head; j != NULL && n < MAX_IOV - 1; j = j->next) {
            size_t body_off = 0;
            if (off < WC_HEADER_SIZE) {
                iov[n].iov_base = j->hdr + off;
                iov[n].iov_len = WC_HEADER_SIZE - off;
                n++;
            } else {
                body_off = off - WC_HEADER_SIZE;
            }
            if (j->out_len > body_off) {
                iov[n].iov_base = j->out + body_off;
                iov[n].iov_len = j->out_len - body_off;
                n++;
            }
            off = 0;
        }
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)n};
        ssize_t w = sendmsg(s->fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            return -errno;
        }
        size_t left = (size_t)w;
        while (left > 0 && s->out.head != NULL) {
            struct wc_job *j = s->out.head;
            size_t rest = WC_HEADER_SIZE + j->out_len - s->out_off;
            if (left >= rest) {
                left -= rest;
                s->out_off = 0;
                list_remove(&s->out, j);
                out_finish(s, j);
            } else {
                s->out_off += left;
                left = 0;
            }
        }
    }
    return 0;
}

static int write_error(struct wc_server *s, int neg_errno)
{
    int e = -neg_errno;
    char name_buf[24];
    if (e == EPIPE || e == ECONNRESET) {
        wc_errf(s->err, s->err_len, "peer closed the connection while replies were being written (%s)",
                wc_errno_name(e, name_buf));
        return WC_SERVE_PEER_CLOSED;
    }
    wc_errf(s->err, s->err_len, "writing to the socket failed: %s (%s)", strerror(e), wc_errno_name(e, name_buf));
    return WC_SERVE_ERROR;
}

/* Write the last replies for at most WC_FLUSH_MS. */
static void flush_bounded(struct wc_server *s)
{
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    while (s->out.head != NULL) {
        if (flush_some(s) < 0)
            return;
        if (s->out.head == NULL)
            return;
        clock_gettime(CLOCK_MONOTONIC, &now);
        long elapsed = (long)(now.tv_sec - start.tv_sec) * 1000L + (now.tv_nsec - start.tv_nsec) / 1000000L;
        if (elapsed >= WC_FLUSH_MS)
            return;
        struct pollfd p = {.fd = s->fd, .events = POLLOUT};
        if (poll(&p, 1, (int)(WC_FLUSH_MS - elapsed)) < 0 && errno != EINTR)
            return;
        if (p.revents & (POLLERR | POLLHUP | POLLNVAL))
            return;
    }
}

/* ---- Reading ----------------------------------------------------------- */

static int protocol_error(struct wc_server *s, enum wc_decode_result r)
{
    const struct wc_header *h = &s->rd.h;
    switch (r) {
    case WC_DECODE_BAD_MAGIC:
        wc_errf(s->err, s->err_len,
                "protocol error: bad magic 0x%08x (expected 0x%08x, \"WVRC\"); the connection cannot be resynced",
                h->magic, (unsigned)WC_MAGIC);
        break;
    case WC_DECODE_BAD_VERSION:
        wc_errf(s->err, s->err_len,
                "protocol error: peer speaks protocol version %u, this daemon speaks %u; upgrade one side",
                h->version, (unsigned)WC_PROTOCOL_VERSION);
        break;
    case WC_DECODE_BAD_KIND:
        wc_errf(s->err, s->err_len, "protocol error: unknown frame kind %u; the connection cannot be resynced",
                h->kind);
        break;
    case WC_DECODE_TOO_LARGE:
        wc_errf(s->err, s->err_len,
                "protocol error: frame payload_len %u is over the maximum %u (16 MiB frame); the connection "
                "cannot be resynced",
                h->payload_len, (unsigned)WC_MAX_PAYLOAD);
        break;
    default:
        wc_errf(s->err, s->err_len, "protocol error: %s", wc_decode_result_str(r));
        break;
    }
    return WC_SERVE_PROTOCOL;
}

/* A header was read: decide what to do with the payload that follows. */
static int begin_frame(struct wc_server *s)
{
    struct reader *rd = &s->rd;
    enum wc_decode_result r = wc_header_decode(rd->hdr, WC_HEADER_SIZE, &rd->h);
    if (r != WC_DECODE_OK)
        return protocol_error(s, r);
    rd->in_payload = 1;
    rd->fill = 0;
    rd->discard = 1;
    rd->verdict = WC_STATUS_OK;
    switch (rd->h.kind) {
    case WC_FRAME_REQUEST:
        if (wc_op_find(rd->h.code) == NULL)
            rd->verdict = WC_STATUS_UNKNOWN_OP;
        else if (s->inflight >= WC_QUEUE_MAX_REQUESTS ||
                 s->held_bytes + rd->h.payload_len > (size_t)WC_QUEUE_MAX_BYTES)
            rd->verdict = WC_STATUS_BUSY;
        else
            rd->discard = 0;
        break;
    case WC_FRAME_PING:
        rd->discard = 0;
        break;
    default:
        break; /* CANCEL, SHUTDOWN and frames meant for weaver: payload unused */
    }
    return GO_ON;
}

/* Make room for `need` payload bytes (need <= payload_len). */
static int reserve(struct reader *rd, size_t need)
{
    if (need <= rd->cap)
        return 0;
    size_t cap = rd->cap ? rd->cap : STAGE_SIZE;
    while (cap < need)
        cap *= 2;
    if (cap > rd->h.payload_len)
        cap = rd->h.payload_len;
    uint8_t *b = realloc(rd->buf, cap);
    if (b == NULL)
        return -1;
    rd->buf = b;
    rd->cap = cap;
    return 0;
}

/* A whole frame is in: act on it. */
static int end_frame(struct wc_server *s)
{
    struct reader *rd = &s->rd;
    const struct wc_header h = rd->h;
    uint8_t *payload = rd->discard ? NULL : rd->buf;
    size_t len = rd->discard ? 0 : rd->fill;
    if (!rd->discard) {
        rd->buf = NULL; /* ownership moves to the job */
        rd->cap = 0;
    }
    rd->in_payload = 0;
    rd->hdr_fill = 0;
    rd->fill = 0;

    struct wc_job *j;
    switch (h.kind) {
    case WC_FRAME_REQUEST:
        if (rd->verdict == WC_STATUS_UNKNOWN_OP) {
            char ops[96];
            size_t o = 0;
            ops[0] = '\0';
            for (size_t i = 0; i < wc_ops_count; i++)
                wc_appendf(ops, sizeof ops, &o, "%s%s (%u)", i ? ", " : "", wc_ops[i].name, wc_ops[i].id);
            j = job_new(h.request_id, WC_FRAME_RESPONSE, 0);
            if (j)
                job_set_message(j, WC_STATUS_UNKNOWN_OP, "unknown op %u: this compute daemon serves %s", h.code,
                                ops);
            return out_control(s, j);
        }
        if (rd->verdict == WC_STATUS_BUSY) {
            j = job_new(h.request_id, WC_FRAME_RESPONSE, 0);
            if (j)
                job_set_message(j, WC_STATUS_BUSY,
                                "compute daemon is busy: %u requests or %u MiB already waiting; retry later",
                                (unsigned)WC_QUEUE_MAX_REQUESTS, (unsigned)(WC_QUEUE_MAX_BYTES >> 20));
            return out_control(s, j);
        }
        j = job_new(h.request_id, WC_FRAME_RESPONSE, 0);
        if (j == NULL) {
            free(payload);
            wc_errf(s->err, s->err_len, "out of memory for a request");
            return WC_SERVE_ERROR;
        }
        j->op = h.code;
        j->payload = payload;
        j->payload_len = len;
        j->is_request = 1;
        j->held = len;
        s->inflight++;
        s->held_bytes += len;
        pthread_mutex_lock(&s->mu);
        list_push(&s->queue, j);
        pthread_cond_signal(&s->work_cv);
        pthread_mutex_unlock(&s->mu);
        return GO_ON;
    case WC_FRAME_PING:
        j = job_new(h.request_id, WC_FRAME_PONG, 0);
        if (j == NULL) {
            free(payload);
        } else {
            j->out = payload;
            j->out_len = len;
        }
        return out_control(s, j);
    case WC_FRAME_CANCEL:
        cancel_one(s, h.request_id);
        return GO_ON;
    case WC_FRAME_SHUTDOWN:
        s->reading = 0;
        wc_errf(s->err, s->err_len, "SHUTDOWN received");
        return WC_SERVE_SHUTDOWN;
    default:
        return GO_ON; /* HELLO, RESPONSE, PONG are weaver's to receive: ignored */
    }
}

/* Consume `len` staged bytes. */
static int consume(struct wc_server *s, const uint8_t *p, size_t len)
{
    struct reader *rd = &s->rd;
    while (len > 0) {
        if (!rd->in_payload) {
            size_t take = WC_HEADER_SIZE - rd->hdr_fill;
            if (take > len)
                take = len;
            memcpy(rd->hdr + rd->hdr_fill, p, take);
            rd->hdr_fill += take;
            p += take;
            len -= take;
            if (rd->hdr_fill < WC_HEADER_SIZE)
                break;
            int r = begin_frame(s);
            if (r != GO_ON)
                return r;
        } else {
            size_t take = rd->h.payload_len - rd->fill;
            if (take > len)
                take = len;
            if (!rd->discard) {
                if (reserve(rd, rd->fill + take) != 0) {
                    wc_errf(s->err, s->err_len, "out of memory reading a %u-byte payload", rd->h.payload_len);
                    return WC_SERVE_ERROR;
                }
                memcpy(rd->buf + rd->fill, p, take);
            }
            rd->fill += take;
            p += take;
            len -= take;
        }
        if (rd->in_payload && rd->fill == rd->h.payload_len) {
            int r = end_frame(s);
            if (r != GO_ON)
                return r;
        }
    }
    return GO_ON;
}

static int read_eof(struct wc_server *s)
{
    const struct reader *rd = &s->rd;
    if (rd->in_payload)
        wc_errf(s->err, s->err_len, "peer closed the connection in the middle of a %s frame (payload %zu of %u bytes)",
                wc_kind_str(rd->h.kind), rd->fill, rd->h.payload_len);
    else if (rd->hdr_fill > 0)
        wc_errf(s->err, s->err_len, "peer closed the connection in the middle of a frame header (%zu of %u bytes)",
                rd->hdr_fill, (unsigned)WC_HEADER_SIZE);
    else
        wc_errf(s->err, s->err_len, "peer closed the connection");
    return WC_SERVE_PEER_CLOSED;
}

static int read_error(struct wc_server *s, int e)
{
    char name_buf[24];
    if (e == ECONNRESET) {
        wc_errf(s->err, s->err_len, "peer reset the connection (ECONNRESET)");
        return WC_SERVE_PEER_CLOSED;
    }
    wc_errf(s->err, s->err_len, "reading the socket failed: %s (%s)", strerror(e), wc_errno_name(e, name_buf));
    return WC_SERVE_ERROR;
}

/* The socket is readable: read until EAGAIN or the per-wake budget. */
static int on_readable(struct wc_server *s)
{
    struct reader *rd = &s->rd;
    size_t total = 0;
    while (s->reading && total < READ_BUDGET && s->out_bytes <= WC_OUT_HIGH_WATER) {
        ssize_t n;
        size_t remaining = rd->in_payload ? rd->h.payload_len - rd->fill : 0;
        if (rd->in_payload && !rd->discard && remaining >= STAGE_SIZE) {
            /* Large payload: read straight into its buffer, growing it. */
            if (reserve(rd, rd->fill + (remaining < STAGE_SIZE * 4 ? remaining : STAGE_SIZE * 4)) != 0) {
                wc_errf(s->err, s->err_len, "out of memory reading a %u-byte payload", rd->h.payload_len);
                return WC_SERVE_ERROR;
            }
            size_t room = rd->cap - rd->fill;
            n = recv(s->fd, rd->buf + rd->fill, room < remaining ? room : remaining, MSG_DONTWAIT);
            if (n > 0) {
                rd->fill += (size_t)n;
                total += (size_t)n;
                if (rd->fill == rd->h.payload_len) {
                    int r = end_frame(s);
                    if (r != GO_ON)
                        return r;
                }
                continue;
            }
        } else {
            n = recv(s->fd, rd->stage, STAGE_SIZE, MSG_DONTWAIT);
            if (n > 0) {
                total += (size_t)n;
                int r = consume(s, rd->stage, (size_t)n);
                if (r != GO_ON)
                    return r;
                continue;
            }
        }
        if (n == 0)
            return read_eof(s);
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            break;
        return read_error(s, errno);
    }
    return GO_ON;
}

/* The watch fd (stdin) polled readable or hung up: closed? */
static int watch_closed(int fd, short revents)
{
    if (revents & (POLLHUP | POLLERR | POLLNVAL))
        return 1;
    if (!(revents & POLLIN))
        return 0;
    char buf[256];
    int avail = 0;
    if (ioctl(fd, FIONREAD, &avail) == 0) {
        if (avail <= 0)
            return 1; /* readable with nothing to read: end of file */
        /* Data on the lifeline is not a command: drop it, read only what
         * is there so the read cannot block. */
        size_t want = (size_t)avail < sizeof buf ? (size_t)avail : sizeof buf;
        return read(fd, buf, want) == 0;
    }
    ssize_t r = read(fd, buf, sizeof buf);
    return r == 0;
}

/* ---- Setup and teardown ------------------------------------------------ */

static int hello_frame(struct wc_server *s)
{
    size_t len = 2 + 2 + 4 + 4 + 4 + 4;
    for (size_t i = 0; i < wc_ops_count; i++)
        len += 4 + 1 + strlen(wc_ops[i].name);
    struct wc_job *j = job_new(0, WC_FRAME_HELLO, 0);
    uint8_t *p = malloc(len);
    if (j == NULL || p == NULL) {
        free(j);
        free(p);
        return out_control(s, NULL);
    }
    j->out = p;
    j->out_len = len;
    wc_put_u16le(p, WC_PROTOCOL_VERSION);
    wc_put_u16le(p + 2, 0);
    wc_put_u32le(p + 4, s->pid);
    wc_put_u32le(p + 8, WC_MAX_FRAME);
    wc_put_u32le(p + 12, s->nworkers);
    wc_put_u32le(p + 16, (uint32_t)wc_ops_count);
    p += 20;
    for (size_t i = 0; i < wc_ops_count; i++) {
        size_t n = strlen(wc_ops[i].name);
        wc_put_u32le(p, wc_ops[i].id);
        p[4] = (uint8_t)n;
        memcpy(p + 5, wc_ops[i].name, n);
        p += 5 + n;
    }
    return out_control(s, j);
}

static int start_workers(struct wc_server *s)
{
    s->threads = calloc(s->nworkers, sizeof *s->threads);
    if (s->threads == NULL) {
        wc_errf(s->err, s->err_len, "out of memory for %u worker threads", s->nworkers);
        return WC_SERVE_ERROR;
    }
    for (uint32_t i = 0; i < s->nworkers; i++) {
        int e = pthread_create(&s->threads[i], NULL, worker_main, s);
        if (e != 0) {
            wc_errf(s->err, s->err_len, "could not start worker thread %u of %u: %s", i + 1, s->nworkers,
                    strerror(e));
            return WC_SERVE_ERROR;
        }
        s->nthreads++;
    }
    return GO_ON;
}

/* Everything wc_serve allocated, once the workers are joined. */
static void server_free(struct wc_server *s)
{
    list_free(&s->out);
    list_free(&s->queue);
    list_free(&s->running);
    list_free(&s->done);
    free(s->rd.buf);
    free(s->rd.stage);
    free(s->threads);
    if (s->efd >= 0)
        close(s->efd);
    if (s->sync_ready) {
        pthread_cond_destroy(&s->cancel_cv);
        pthread_cond_destroy(&s->work_cv);
        pthread_mutex_destroy(&s->mu);
    }
}

static int server_init(struct wc_server *s)
{
    pthread_condattr_t attr;
    if (pthread_condattr_init(&attr) != 0) {
        wc_errf(s->err, s->err_len, "could not create condition variable attributes");
        return WC_SERVE_ERROR;
    }
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
    int ok_mu = pthread_mutex_init(&s->mu, NULL) == 0;
    int ok_work = pthread_cond_init(&s->work_cv, NULL) == 0;
    int ok_cancel = pthread_cond_init(&s->cancel_cv, &attr) == 0;
    pthread_condattr_destroy(&attr);
    if (!(ok_mu && ok_work && ok_cancel)) {
        if (ok_mu)
            pthread_mutex_destroy(&s->mu);
        if (ok_work)
            pthread_cond_destroy(&s->work_cv);
        if (ok_cancel)
            pthread_cond_destroy(&s->cancel_cv);
        wc_errf(s->err, s->err_len, "could not create a mutex or condition variable");
        return WC_SERVE_ERROR;
    }
    s->sync_ready = 1;
    s->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (s->efd < 0) {
        wc_errf(s->err, s->err_len, "could not create an eventfd: %s", strerror(errno));
        return WC_SERVE_ERROR;
    }
    s->rd.stage = malloc(STAGE_SIZE);
    if (s->rd.stage == NULL) {
        wc_errf(s->err, s->err_len, "out of memory for the read buffer");
        return WC_SERVE_ERROR;
    }
    return GO_ON;
}

/* ---- The loop ---------------------------------------------------------- */

static int serve_loop(struct wc_server *s)
{
    for (;;) {
        if (s->out.head != NULL) {
            int w = flush_some(s);
            if (w < 0)
                return write_error(s, w);
        }

        struct pollfd pf[4];
        nfds_t n = 0;
        pf[n].fd = s->fd;
        pf[n].events = (short)((s->reading && s->out_bytes <= WC_OUT_HIGH_WATER ? POLLIN : 0) |
                               (s->out.head != NULL ? POLLOUT : 0));
        pf[n++].revents = 0;
        pf[n].fd = s->efd;
        pf[n].events = POLLIN;
        pf[n++].revents = 0;
        int watch_i = -1, stop_i = -1;
        if (s->watch_fd >= 0) {
            watch_i = (int)n;
            pf[n].fd = s->watch_fd;
            pf[n].events = POLLIN;
            pf[n++].revents = 0;
        }
        if (s->stop_fd >= 0) {
            stop_i = (int)n;
            pf[n].fd = s->stop_fd;
            pf[n].events = POLLIN;
            pf[n++].revents = 0;
        }

        if (poll(pf, n, -1) < 0) {
            if (errno == EINTR)
                continue;
            wc_errf(s->err, s->err_len, "poll failed: %s", strerror(errno));
            return WC_SERVE_ERROR;
        }

        if (stop_i >= 0 && pf[stop_i].revents) {
            if (pf[stop_i].revents & POLLNVAL) {
                wc_errf(s->err, s->err_len, "stop fd %d is not open", s->stop_fd);
                return WC_SERVE_ERROR;
            }
            wc_errf(s->err, s->err_len, "stop requested");
            return WC_SERVE_STOPPED;
        }
        if (watch_i >= 0 && pf[watch_i].revents && watch_closed(s->watch_fd, pf[watch_i].revents)) {
            wc_errf(s->err, s->err_len, "watched fd %d reached end of file (weaver is gone)", s->watch_fd);
            return WC_SERVE_WATCH_CLOSED;
        }
        if (pf[0].revents & POLLNVAL) {
            wc_errf(s->err, s->err_len, "socket fd %d is not open", s->fd);
            return WC_SERVE_ERROR;
        }
        if (pf[1].revents)
            collect_done(s);
        if (pf[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            if (s->reading && s->out_bytes <= WC_OUT_HIGH_WATER) {
                int r = on_readable(s);
                if (r != GO_ON)
                    return r;
            } else if (pf[0].revents & (POLLHUP | POLLERR)) {
                wc_errf(s->err, s->err_len, "peer closed the connection");
                return WC_SERVE_PEER_CLOSED;
            }
        }
    }
}

enum wc_serve_result wc_serve(int fd, const struct wc_serve_opts *opts, char *err, size_t err_len)
{
    if (err != NULL && err_len > 0)
        err[0] = '\0';
    struct wc_serve_opts defaults = {.workers = 0, .watch_fd = -1, .stop_fd = -1, .send_hello = 0};
    if (opts == NULL)
        opts = &defaults;
    if (fd < 0) {
        wc_errf(err, err_len, "wc_serve: invalid socket fd %d", fd);
        return WC_SERVE_ERROR;
    }
    uint32_t workers = opts->workers;
    if (workers == 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        workers = cpus < 1 ? 1 : (cpus > (long)WC_MAX_WORKERS ? WC_MAX_WORKERS : (uint32_t)cpus);
    }
    if (workers > WC_MAX_WORKERS) {
        wc_errf(err, err_len, "%u worker threads asked for, the most is %u", workers, (unsigned)WC_MAX_WORKERS);
        return WC_SERVE_ERROR;
    }

    struct wc_server *s = calloc(1, sizeof *s);
    if (s == NULL) {
        wc_errf(err, err_len, "out of memory");
        return WC_SERVE_ERROR;
    }
    s->fd = fd;
    s->watch_fd = opts->watch_fd;
    s->stop_fd = opts->stop_fd;
    s->efd = -1;
    s->nworkers = workers;
    s->pid = (uint32_t)getpid();
    s->err = err;
    s->err_len = err_len;
    s->reading = 1;

    int result = server_init(s);
    if (result == GO_ON && opts->send_hello)
        result = hello_frame(s);
    if (result == GO_ON)
        result = start_workers(s);
    if (result == GO_ON)
        result = serve_loop(s);

    /* Teardown: every request ends; after SHUTDOWN or a stop request the
     * peer is still there, so its CANCELLED replies are flushed (bounded). */
    if (s->sync_ready)
        stop_workers(s, result == WC_SERVE_SHUTDOWN ? "compute daemon shutting down" : "compute daemon stopping");
    if (result == WC_SERVE_SHUTDOWN || result == WC_SERVE_STOPPED)
        flush_bounded(s);
    server_free(s);
    free(s);
    return (enum wc_serve_result)result;
}

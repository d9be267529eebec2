/*
 * loop.c -- wc_serve(): the poll loop of one compute connection, what it
 * does with each frame, and the writer.
 *
 * The calling thread is the I/O thread. It alone reads and writes the
 * socket and polls the socket, the pool's eventfd, the watch fd and the
 * stop fd. It reads frames through the reader (reader.c), acts on each one
 * (queue a request on the pool, answer PING, CANCEL, refuse what it can
 * refuse at once: unknown op, BUSY), takes finished jobs from the pool
 * (pool.c), and writes the outbound list (`out`) with sendmsg, keeping the
 * partial-write offset. Everything in struct wc_server is I/O-thread only;
 * what is shared with the workers lives in the pool behind its mutex.
 *
 * A request is one struct wc_job (job.h) from the moment its header is read
 * until its RESPONSE is fully written: pool (queue -> running -> done) ->
 * out -> freed. Each path through that list ends in exactly one RESPONSE.
 *
 * Bounds: WC_QUEUE_MAX_REQUESTS accepted requests and WC_QUEUE_MAX_BYTES of
 * payload/reply bytes (over either, BUSY); the socket is not read while
 * more than WC_OUT_HIGH_WATER bytes wait to be written.
 */
#define _GNU_SOURCE

#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "job.h"
#include "ops.h"
#include "pool.h"
#include "reader.h"

/* Bytes read per poll wake-up before writes and other fds get a turn. */
#define READ_BUDGET (4u * 1024u * 1024u)
/* iovecs per sendmsg. */
#define MAX_IOV 64

struct wc_server {
    int fd;
    int watch_fd;
    int stop_fd;
    char *err;
    size_t err_len;

    struct wc_pool pool;
    struct wc_reader rd;
    uint32_t verdict;    /* REQUEST being read: WC_STATUS_OK to queue, else reply code */

    struct wc_job_list out; /* frames to write, in order */
    size_t out_off;      /* bytes of out.head already written */
    size_t out_bytes;    /* bytes in `out` not yet written */
    uint32_t inflight;   /* accepted requests not yet written */
    size_t held_bytes;   /* bytes counted against WC_QUEUE_MAX_BYTES */
    int reading;         /* still reading frames (not after SHUTDOWN) */
};

/* ---- The outbound list ------------------------------------------------- */

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

/* Queue a finished frame for writing. A reply over the frame limit becomes
 * TOO_LARGE. */
static void out_push(struct wc_server *s, struct wc_job *j)
{
    if (j->out_len > WC_MAX_PAYLOAD) {
        size_t len = j->out_len;
        wc_job_set_message(j, WC_STATUS_TOO_LARGE, "%s: reply of %zu bytes is over the %u-byte payload limit",
                           wc_op_name(j->op), len, (unsigned)WC_MAX_PAYLOAD);
    }
    encode_frame_header(j);
    if (j->is_request) {
        /* A reply memfd compute made counts until it is sent: renders
         * waiting to be written are memory too. A request's own memfd
         * passed back (echo) is the client's memory, not compute's. */
        s->held_bytes -= j->held;
        int ours = j->out_fd >= 0 && !j->out_fd_passed;
        j->held = j->out_len + (ours ? (size_t)j->out_size : 0);
        s->held_bytes += j->held;
    }
    s->out_bytes += WC_HEADER_SIZE + j->out_len;
    wc_jobs_push(&s->out, j);
}

/* A written (or dropped) frame leaves the accounting. */
static void out_finish(struct wc_server *s, struct wc_job *j)
{
    s->out_bytes -= WC_HEADER_SIZE + j->out_len;
    if (j->is_request) {
        s->inflight--;
        s->held_bytes -= j->held;
    }
    wc_job_free(j);
}

/* A frame the I/O thread answers itself (HELLO, PONG, refusals). */
static int out_control(struct wc_server *s, struct wc_job *j)
{
    if (j == NULL) {
        wc_errf(s->err, s->err_len, "out of memory for a reply frame");
        return WC_SERVE_ERROR;
    }
    out_push(s, j);
    return WC_GO_ON;
}

/* Answer a request that never reached a worker with CANCELLED. */
static void out_cancelled(struct wc_server *s, struct wc_job *j, const char *why)
{
    free(j->payload);
    j->payload = NULL;
    j->payload_len = 0;
    wc_job_set_message(j, WC_STATUS_CANCELLED, "request %llu (%s) cancelled before it started%s%s",
                       (unsigned long long)j->id, wc_op_name(j->op), why ? ": " : "", why ? why : "");
    out_push(s, j);
}

/* Move finished jobs from the workers to the outbound list. */
static void collect_done(struct wc_server *s)
{
    struct wc_job_list done = {0};
    wc_pool_collect(&s->pool, &done);
    struct wc_job *j;
    while ((j = wc_jobs_pop(&done)) != NULL)
        out_push(s, j);
}

/* Stop the workers: queued jobs are answered CANCELLED, running ones are
 * told to stop and answer for themselves once joined. */
static void stop_workers(struct wc_server *s, const char *why)
{
    struct wc_job_list queued = {0};
    wc_pool_stop(&s->pool, &queued);
    struct wc_job *j;
    while ((j = wc_jobs_pop(&queued)) != NULL)
        out_cancelled(s, j, why);
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
        /* A reply fd rides on its frame's first byte: such a frame starts
         * a sendmsg of its own, and the fd is attached only there. */
        int attach = s->out_off == 0 && s->out.head->out_fd >= 0 ? s->out.head->out_fd : -1;
        for (struct wc_job *j = s->out.head; j != NULL && n < MAX_IOV - 1; j = j->next) {
            if (j != s->out.head && j->out_fd >= 0)
                break;
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
        union wc_fd_control control;
        if (attach >= 0)
            wc_attach_fd(&mh, &control, attach);
        ssize_t w = sendmsg(s->fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            return -errno;
        }
        size_t left = (size_t)w;
        if (attach >= 0 && w > 0) {
            /* The peer has its own reference now. */
            close(s->out.head->out_fd);
            s->out.head->out_fd = -1;
        }
        while (left > 0 && s->out.head != NULL) {
            struct wc_job *j = s->out.head;
            size_t rest = WC_HEADER_SIZE + j->out_len - s->out_off;
            if (left >= rest) {
                left -= rest;
                s->out_off = 0;
                wc_jobs_remove(&s->out, j);
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

/* ---- Frames read (the reader's sink) ----------------------------------- */

/* A header is in: keep the payload of a REQUEST that will be queued and of
 * a PING; a REQUEST that is refused (unknown op, BUSY) is only counted. */
static int on_header(void *ctx, const struct wc_header *h)
{
    struct wc_server *s = ctx;
    s->verdict = WC_STATUS_OK;
    switch (h->kind) {
    case WC_FRAME_REQUEST:
    case WC_FRAME_REQUEST_FD:
        if (wc_op_find(h->code) == NULL)
            s->verdict = WC_STATUS_UNKNOWN_OP;
        else if (s->inflight >= WC_QUEUE_MAX_REQUESTS || s->held_bytes + h->payload_len > (size_t)WC_QUEUE_MAX_BYTES)
            s->verdict = WC_STATUS_BUSY;
        return s->verdict == WC_STATUS_OK;
    case WC_FRAME_PING:
        return 1;
    default:
        return 0; /* CANCEL, SHUTDOWN and frames meant for weaver: payload unused */
    }
}

static int refuse_request(struct wc_server *s, const struct wc_header *h)
{
    struct wc_job *j = wc_job_new(h->request_id, WC_FRAME_RESPONSE, 0);
    if (j != NULL && s->verdict == WC_STATUS_UNKNOWN_OP) {
        char ops[96];
        size_t o = 0;
        ops[0] = '\0';
        for (size_t i = 0; i < wc_ops_count; i++)
            wc_appendf(ops, sizeof ops, &o, "%s%s (%u)", i ? ", " : "", wc_ops[i].name, wc_ops[i].id);
        wc_job_set_message(j, WC_STATUS_UNKNOWN_OP, "unknown op %u: this compute daemon serves %s", h->code, ops);
    } else if (j != NULL) {
        wc_job_set_message(j, WC_STATUS_BUSY,
                           "compute daemon is busy: %u requests or %u MiB already waiting; retry later",
                           (unsigned)WC_QUEUE_MAX_REQUESTS, (unsigned)(WC_QUEUE_MAX_BYTES >> 20));
    }
    return out_control(s, j);
}

static int queue_request(struct wc_server *s, const struct wc_header *h, uint8_t *payload, size_t len)
{
    struct wc_job *j = wc_job_new(h->request_id, WC_FRAME_RESPONSE, 0);
    if (j == NULL) {
        free(payload);
        wc_errf(s->err, s->err_len, "out of memory for a request");
        return WC_SERVE_ERROR;
    }
    j->op = h->code;
    j->payload = payload;
    j->payload_len = len;
    j->is_request = 1;
    j->held = len;
    s->inflight++;
    s->held_bytes += len;
    wc_pool_submit(&s->pool, j);
    return WC_GO_ON;
}

/* A REQUEST_FD is in with the fd that came along (-1: none): check the fd
 * (closed on every refusal) and queue the request with it. */
static int request_by_fd(struct wc_server *s, const struct wc_header *h, uint8_t *payload, size_t len, int fd)
{
    if (s->verdict != WC_STATUS_OK) {
        free(payload);
        if (fd >= 0)
            close(fd);
        return refuse_request(s, h);
    }
    char why[256];
    enum wc_fd_result r = WC_FD_MISSING;
    uint64_t size = len == WC_FD_INFO_SIZE ? wc_get_u64le(payload) : 0;
    free(payload);
    if (len != WC_FD_INFO_SIZE)
        snprintf(why, sizeof why, "a REQUEST_FD has a %zu-byte payload, not the %u size bytes", len,
                 (unsigned)WC_FD_INFO_SIZE);
    else if (fd < 0)
        snprintf(why, sizeof why, "a REQUEST_FD announced a %llu-byte payload fd but none came with it",
                 (unsigned long long)size);
    else
        r = wc_fd_check(fd, size, why, sizeof why);
    if (len != WC_FD_INFO_SIZE || r != WC_FD_OK) {
        if (fd >= 0)
            close(fd);
        struct wc_job *j = wc_job_new(h->request_id, WC_FRAME_RESPONSE, 0);
        if (j != NULL)
            wc_job_set_message(j, WC_STATUS_BAD_FD, "%s", why);
        return out_control(s, j);
    }
    struct wc_job *j = wc_job_new(h->request_id, WC_FRAME_RESPONSE, 0);
    if (j == NULL) {
        close(fd);
        wc_errf(s->err, s->err_len, "out of memory for a request");
        return WC_SERVE_ERROR;
    }
    j->op = h->code;
    j->in_fd = fd;
    j->in_size = size;
    j->is_request = 1;
    s->inflight++;
    wc_pool_submit(&s->pool, j);
    return WC_GO_ON;
}

/* A whole frame is in: act on it. */
static int on_frame(void *ctx, const struct wc_header *h, uint8_t *payload, size_t len, int fd)
{
    struct wc_server *s = ctx;
    struct wc_job *j;
    switch (h->kind) {
    case WC_FRAME_REQUEST:
        if (s->verdict != WC_STATUS_OK)
            return refuse_request(s, h);
        return queue_request(s, h, payload, len);
    case WC_FRAME_PING:
        j = wc_job_new(h->request_id, WC_FRAME_PONG, 0);
        if (j == NULL) {
            free(payload);
        } else {
            j->out = payload;
            j->out_len = len;
        }
        return out_control(s, j);
    case WC_FRAME_REQUEST_FD:
        return request_by_fd(s, h, payload, len, fd);
    case WC_FRAME_CANCEL:
        /* Finished or unknown ids are ignored: their one RESPONSE is sent. */
        j = wc_pool_cancel(&s->pool, h->request_id);
        if (j != NULL)
            out_cancelled(s, j, NULL);
        return WC_GO_ON;
    case WC_FRAME_SHUTDOWN:
        s->reading = 0;
        wc_errf(s->err, s->err_len, "SHUTDOWN received");
        return WC_SERVE_SHUTDOWN;
    default:
        free(payload);
        if (fd >= 0)
            close(fd); /* a RESPONSE_FD is weaver's to receive */
        return WC_GO_ON; /* HELLO, RESPONSE, PONG are weaver's to receive: ignored */
    }
}

/* ---- The loop ---------------------------------------------------------- */

/* The socket is readable: read until EAGAIN, the per-wake budget, or too
 * many reply bytes waiting. */
static int on_readable(struct wc_server *s)
{
    size_t total = 0;
    while (s->reading && total < READ_BUDGET && s->out_bytes <= WC_OUT_HIGH_WATER) {
        size_t got;
        int r = wc_reader_recv(&s->rd, s->fd, &got);
        if (r != WC_GO_ON)
            return r;
        if (got == 0)
            break;
        total += got;
    }
    return WC_GO_ON;
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

static int hello_frame(struct wc_server *s)
{
    size_t len = 2 + 2 + 4 + 4 + 4 + 4;
    for (size_t i = 0; i < wc_ops_count; i++)
        len += 4 + 1 + strlen(wc_ops[i].name);
    struct wc_job *j = wc_job_new(0, WC_FRAME_HELLO, 0);
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
    wc_put_u32le(p + 4, s->pool.pid);
    wc_put_u32le(p + 8, WC_MAX_FRAME);
    wc_put_u32le(p + 12, s->pool.nworkers);
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
        pf[n].fd = s->pool.efd;
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
                if (r != WC_GO_ON)
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
    s->err = err;
    s->err_len = err_len;
    s->reading = 1;
    const struct wc_reader_sink sink = {.ctx = s, .begin = on_header, .frame = on_frame};

    int result = WC_GO_ON;
    if (wc_pool_init(&s->pool, workers, (uint32_t)getpid(), err, err_len) != 0 ||
        wc_reader_init(&s->rd, &sink, err, err_len) != 0)
        result = WC_SERVE_ERROR;
    if (result == WC_GO_ON && opts->send_hello)
        result = hello_frame(s);
    if (result == WC_GO_ON && wc_pool_start(&s->pool, err, err_len) != 0)
        result = WC_SERVE_ERROR;
    if (result == WC_GO_ON)
        result = serve_loop(s);

    /* Teardown: every request ends; after SHUTDOWN or a stop request the
     * peer is still there, so its CANCELLED replies are flushed (bounded). */
    if (s->pool.sync_ready)
        stop_workers(s, result == WC_SERVE_SHUTDOWN ? "compute daemon shutting down" : "compute daemon stopping");
    if (result == WC_SERVE_SHUTDOWN || result == WC_SERVE_STOPPED)
        flush_bounded(s);
    wc_jobs_free(&s->out);
    wc_reader_free(&s->rd);
    wc_pool_free(&s->pool);
    free(s);
    return (enum wc_serve_result)result;
}

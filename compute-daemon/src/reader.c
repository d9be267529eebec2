/*
 * reader.c -- frame reassembly from the socket: headers decoded as they
 * complete, payloads read incrementally, whole frames handed to the sink.
 *
 * Small reads go through the staging buffer (STAGE_SIZE bytes per recv, as
 * many frames as it holds). Once a kept payload has STAGE_SIZE or more bytes
 * to come it is read straight into its own buffer, which grows by doubling
 * from STAGE_SIZE up to payload_len, so a 16 MiB frame never needs 16 MiB
 * up front nor a second copy. I/O-thread only; no locking.
 *
 * wc_read_frames (weaver_compute.h) runs the same reader over bytes in
 * memory: each pass copies into the buffer a recv() would fill, so
 * everything but the recv() call itself is the code wc_serve runs.
 */
#define _GNU_SOURCE

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "reader.h"

/* Bytes read from the socket into the staging buffer at once. */
#define STAGE_SIZE (64u * 1024u)

static int protocol_error(struct wc_reader *rd, enum wc_decode_result r)
{
    const struct wc_header *h = &rd->h;
    switch (r) {
    case WC_DECODE_BAD_MAGIC:
        wc_errf(rd->err, rd->err_len,
                "protocol error: bad magic 0x%08x (expected 0x%08x, \"WVRC\"); the connection cannot be resynced",
                h->magic, (unsigned)WC_MAGIC);
        break;
    case WC_DECODE_BAD_VERSION:
        wc_errf(rd->err, rd->err_len,
                "protocol error: peer speaks protocol version %u, this daemon speaks %u; upgrade one side",
                h->version, (unsigned)WC_PROTOCOL_VERSION);
        break;
    case WC_DECODE_BAD_KIND:
        wc_errf(rd->err, rd->err_len, "protocol error: unknown frame kind %u; the connection cannot be resynced",
                h->kind);
        break;
    case WC_DECODE_TOO_LARGE:
        wc_errf(rd->err, rd->err_len,
                "protocol error: frame payload_len %u is over the maximum %u (16 MiB frame); the connection "
                "cannot be resynced",
                h->payload_len, (unsigned)WC_MAX_PAYLOAD);
        break;
    default:
        wc_errf(rd->err, rd->err_len, "protocol error: %s", wc_decode_result_str(r));
        break;
    }
    return WC_SERVE_PROTOCOL;
}

/* A header was read: decode it and ask the sink whether to keep the
 * payload that follows. */
static int begin_frame(struct wc_reader *rd)
{
    enum wc_decode_result r = wc_header_decode(rd->hdr, WC_HEADER_SIZE, &rd->h);
    if (r != WC_DECODE_OK)
        return protocol_error(rd, r);
    rd->in_payload = 1;
    rd->fill = 0;
    rd->discard = !rd->sink.begin(rd->sink.ctx, &rd->h);
    return WC_GO_ON;
}

/* Make room for `need` payload bytes (need <= payload_len). 0, or -1 with a
 * reason in err. */
static int reserve(struct wc_reader *rd, size_t need)
{
    if (need <= rd->cap)
        return 0;
    size_t cap = rd->cap ? rd->cap : STAGE_SIZE;
    while (cap < need)
        cap *= 2;
    if (cap > rd->h.payload_len)
        cap = rd->h.payload_len;
    uint8_t *b = realloc(rd->buf, cap);
    if (b == NULL) {
        wc_errf(rd->err, rd->err_len, "out of memory reading a %u-byte payload", rd->h.payload_len);
        return -1;
    }
    rd->buf = b;
    rd->cap = cap;
    return 0;
}

/* The oldest fd received, for a frame that carries one; -1 when none. */
static int take_fd(struct wc_reader *rd)
{
    if (rd->h.kind != WC_FRAME_REQUEST_FD && rd->h.kind != WC_FRAME_RESPONSE_FD)
        return -1;
    if (rd->nfds == 0)
        return -1;
    int fd = rd->fds[0];
    memmove(rd->fds, rd->fds + 1, (rd->nfds - 1) * sizeof rd->fds[0]);
    rd->nfds--;
    return fd;
}

/* A whole frame is in: reset for the next header and hand it over. */
static int end_frame(struct wc_reader *rd)
{
    const struct wc_header h = rd->h;
    int fd = take_fd(rd);
    uint8_t *payload = rd->discard ? NULL : rd->buf;
    size_t len = rd->discard ? 0 : rd->fill;
    if (!rd->discard) {
        rd->buf = NULL; /* ownership moves to the sink */
        rd->cap = 0;
    }
    rd->in_payload = 0;
    rd->hdr_fill = 0;
    rd->fill = 0;
    return rd->sink.frame(rd->sink.ctx, &h, payload, len, fd);
}

/* Consume `len` staged bytes. */
static int consume(struct wc_reader *rd, const uint8_t *p, size_t len)
{
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
            int r = begin_frame(rd);
            if (r != WC_GO_ON)
                return r;
        } else {
            size_t take = rd->h.payload_len - rd->fill;
            if (take > len)
                take = len;
            if (!rd->discard) {
                if (reserve(rd, rd->fill + take) != 0)
                    return WC_SERVE_ERROR;
                memcpy(rd->buf + rd->fill, p, take);
            }
            rd->fill += take;
            p += take;
            len -= take;
        }
        if (rd->in_payload && rd->fill == rd->h.payload_len) {
            int r = end_frame(rd);
            if (r != WC_GO_ON)
                return r;
        }
    }
    return WC_GO_ON;
}

static int read_eof(struct wc_reader *rd)
{
    if (rd->in_payload)
        wc_errf(rd->err, rd->err_len,
                "peer closed the connection in the middle of a %s frame (payload %zu of %u bytes)",
                wc_kind_str(rd->h.kind), rd->fill, rd->h.payload_len);
    else if (rd->hdr_fill > 0)
        wc_errf(rd->err, rd->err_len,
                "peer closed the connection in the middle of a frame header (%zu of %u bytes)", rd->hdr_fill,
                (unsigned)WC_HEADER_SIZE);
    else
        wc_errf(rd->err, rd->err_len, "peer closed the connection");
    return WC_SERVE_PEER_CLOSED;
}

static int read_error(struct wc_reader *rd, int e)
{
    char name_buf[24];
    if (e == ECONNRESET) {
        wc_errf(rd->err, rd->err_len, "peer reset the connection (ECONNRESET)");
        return WC_SERVE_PEER_CLOSED;
    }
    wc_errf(rd->err, rd->err_len, "reading the socket failed: %s (%s)", strerror(e), wc_errno_name(e, name_buf));
    return WC_SERVE_ERROR;
}

/* Where the next read goes: straight into a large kept payload's buffer
 * (grown first; *direct = 1), or the staging buffer. 0, or -1 with a reason
 * in err. */
static int read_target(struct wc_reader *rd, uint8_t **dst, size_t *room, int *direct)
{
    size_t remaining = rd->in_payload ? rd->h.payload_len - rd->fill : 0;
    if (rd->in_payload && !rd->discard && remaining >= STAGE_SIZE) {
        if (reserve(rd, rd->fill + (remaining < STAGE_SIZE * 4 ? remaining : STAGE_SIZE * 4)) != 0)
            return -1;
        size_t room_left = rd->cap - rd->fill;
        *dst = rd->buf + rd->fill;
        *room = room_left < remaining ? room_left : remaining;
        *direct = 1;
    } else {
        *dst = rd->stage;
        *room = STAGE_SIZE;
        *direct = 0;
    }
    return 0;
}

/* `n` > 0 bytes were read into the target read_target gave. */
static int read_done(struct wc_reader *rd, int direct, size_t n)
{
    if (!direct)
        return consume(rd, rd->stage, n);
    rd->fill += n;
    return rd->fill == rd->h.payload_len ? end_frame(rd) : WC_GO_ON;
}

static void close_fds(struct wc_reader *rd)
{
    for (size_t i = 0; i < rd->nfds; i++)
        close(rd->fds[i]);
    rd->nfds = 0;
}

/* Keep the fds of one recvmsg; 0, or -1 (every fd closed) when there were
 * more than can be held or the ancillary data was cut short. */
static int take_control(struct wc_reader *rd, struct msghdr *msg)
{
    int over = wc_take_fds(msg, rd->fds, &rd->nfds, WC_MAX_FDS_IN_FLIGHT);
    if (msg->msg_flags & MSG_CTRUNC) {
        wc_errf(rd->err, rd->err_len,
                "protocol error: ancillary data cut short (MSG_CTRUNC): fds were lost, which fd belongs to "
                "which frame is no longer known");
        close_fds(rd);
        return -1;
    }
    if (over) {
        wc_errf(rd->err, rd->err_len, "protocol error: more than %u fds in flight on one connection",
                (unsigned)WC_MAX_FDS_IN_FLIGHT);
        close_fds(rd);
        return -1;
    }
    return 0;
}

/* After a read: an fd still held must belong to the frame being read, and
 * only one may. */
static int check_stray_fds(struct wc_reader *rd)
{
    int mid_frame = rd->in_payload || rd->hdr_fill > 0;
    if (rd->nfds > (mid_frame ? 1u : 0u)) {
        wc_errf(rd->err, rd->err_len,
                "protocol error: %zu fd(s) came with frames that carry none (only REQUEST_FD and RESPONSE_FD "
                "carry one, on their first byte)",
                rd->nfds);
        close_fds(rd);
        return WC_SERVE_PROTOCOL;
    }
    return WC_GO_ON;
}

int wc_reader_recv(struct wc_reader *rd, int fd, size_t *got)
{
    *got = 0;
    for (;;) {
        uint8_t *dst;
        size_t room;
        int direct;
        if (read_target(rd, &dst, &room, &direct) != 0)
            return WC_SERVE_ERROR;
        union {
            struct cmsghdr align;
            char buf[CMSG_SPACE(4 * sizeof(int))];
        } control;
        struct iovec iov = {.iov_base = dst, .iov_len = room};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                             .msg_controllen = sizeof control.buf};
        ssize_t n = recvmsg(fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n >= 0 && take_control(rd, &msg) != 0)
            return WC_SERVE_PROTOCOL;
        if (n > 0) {
            *got = (size_t)n;
            int r = read_done(rd, direct, (size_t)n);
            return r == WC_GO_ON ? check_stray_fds(rd) : r;
        }
        if (n == 0)
            return read_eof(rd);
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return WC_GO_ON;
        return read_error(rd, errno);
    }
}

int wc_reader_init(struct wc_reader *rd, const struct wc_reader_sink *sink, char *err, size_t err_len)
{
    memset(rd, 0, sizeof *rd);
    rd->sink = *sink;
    rd->err = err;
    rd->err_len = err_len;
    rd->stage = malloc(STAGE_SIZE);
    if (rd->stage == NULL) {
        wc_errf(err, err_len, "out of memory for the read buffer");
        return -1;
    }
    return 0;
}

void wc_reader_free(struct wc_reader *rd)
{
    close_fds(rd);
    free(rd->buf);
    free(rd->stage);
    rd->buf = NULL;
    rd->stage = NULL;
    rd->cap = rd->fill = 0;
}

/* ---- Bytes from memory (wc_read_frames) -------------------------------- */

struct memory_sink {
    int keep;
    wc_frame_fn on_frame;
    void *ctx;
};

static int memory_begin(void *ctx, const struct wc_header *h)
{
    (void)h;
    return ((const struct memory_sink *)ctx)->keep;
}

static int memory_frame(void *ctx, const struct wc_header *h, uint8_t *payload, size_t len, int fd)
{
    const struct memory_sink *s = ctx;
    (void)fd; /* bytes from memory carry no fds: always -1 */
    if (s->on_frame != NULL)
        s->on_frame(s->ctx, h, payload, len);
    free(payload);
    return WC_GO_ON;
}

enum wc_serve_result wc_read_frames(const uint8_t *in, size_t len, size_t chunk, int keep, wc_frame_fn on_frame,
                                    void *ctx, size_t *partial, char *err, size_t err_len)
{
    struct memory_sink ms = {.keep = keep != 0, .on_frame = on_frame, .ctx = ctx};
    const struct wc_reader_sink sink = {.ctx = &ms, .begin = memory_begin, .frame = memory_frame};
    struct wc_reader rd;
    int r = WC_GO_ON;
    if (wc_reader_init(&rd, &sink, err, err_len) != 0)
        r = WC_SERVE_ERROR;
    size_t used = 0;
    /* Each pass is one recv() that returned min(room, chunk, rest) bytes. */
    while (r == WC_GO_ON && used < len) {
        uint8_t *dst;
        size_t room;
        int direct;
        if (read_target(&rd, &dst, &room, &direct) != 0) {
            r = WC_SERVE_ERROR;
            break;
        }
        size_t n = len - used;
        if (chunk > 0 && n > chunk)
            n = chunk;
        if (n > room)
            n = room;
        memcpy(dst, in + used, n);
        used += n;
        r = read_done(&rd, direct, n);
    }
    if (r == WC_GO_ON)
        r = read_eof(&rd);
    if (partial != NULL)
        *partial = rd.in_payload ? WC_HEADER_SIZE + rd.fill : rd.hdr_fill;
    wc_reader_free(&rd);
    return (enum wc_serve_result)r;
}

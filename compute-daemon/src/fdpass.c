/*
 * fdpass.c -- payloads by file descriptor: sealed memfds made, checked,
 * sent with SCM_RIGHTS and received with recvmsg, as the PAYLOAD BY FILE
 * DESCRIPTOR section of include/weaver_compute.h says.
 *
 * Every received fd is close-on-exec (MSG_CMSG_CLOEXEC) and closed on every
 * path that refuses it; the caller owns exactly the one fd a WC_FD_OK
 * returns. No globals: each call stands alone.
 */
#define _GNU_SOURCE

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "wc_internal.h"

_Static_assert(WC_FD_SEALS == (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE),
               "WC_FD_SEALS must be the Linux seal bits it names");

/* Room for this many fds in one receive: more than one frame may carry, so
 * that a peer sending several is seen (and refused) rather than cut short. */
#define RECV_FDS 8

const char *wc_fd_result_str(enum wc_fd_result r)
{
    switch (r) {
    case WC_FD_OK:
        return "ok";
    case WC_FD_MISSING:
        return "payload fd missing";
    case WC_FD_EXTRA:
        return "unexpected extra fd";
    case WC_FD_NOT_MEMFD:
        return "payload fd is not a memfd";
    case WC_FD_UNSEALED:
        return "payload memfd is not sealed";
    case WC_FD_BAD_SIZE:
        return "payload memfd has the wrong size";
    case WC_FD_TRUNCATED:
        return "ancillary data cut short";
    case WC_FD_IO:
        return "socket error";
    case WC_FD_BAD_HEADER:
        return "untrustworthy header";
    }
    return "unknown fd result";
}

int wc_memfd_create(const char *name, uint64_t size, char *err, size_t err_len)
{
    char ebuf[24];
    if (size > WC_MAX_FD_PAYLOAD) {
        wc_errf(err, err_len, "a payload of %llu bytes is over the %llu-byte limit of a payload memfd",
                (unsigned long long)size, (unsigned long long)WC_MAX_FD_PAYLOAD);
        return -EFBIG;
    }
    int fd = memfd_create(name != NULL ? name : "weaver-payload", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) {
        int e = errno;
        wc_errf(err, err_len, "memfd_create failed: %s (%s)", strerror(e), wc_errno_name(e, ebuf));
        return -e;
    }
    if (ftruncate(fd, (off_t)size) < 0) {
        int e = errno;
        wc_errf(err, err_len, "could not size a payload memfd to %llu bytes: %s (%s)", (unsigned long long)size,
                strerror(e), wc_errno_name(e, ebuf));
        close(fd);
        return -e;
    }
    return fd;
}

int wc_memfd_seal(int fd, char *err, size_t err_len)
{
    if (fcntl(fd, F_ADD_SEALS, (int)WC_FD_SEALS | F_SEAL_SEAL) < 0) {
        int e = errno;
        char ebuf[24];
        wc_errf(err, err_len,
                "could not seal payload fd %d: %s (%s); it must come from wc_memfd_create and have "
                "no writable mapping left",
                fd, strerror(e), wc_errno_name(e, ebuf));
        return -e;
    }
    return 0;
}

enum wc_fd_result wc_fd_check(int fd, uint64_t size, char *err, size_t err_len)
{
    int seals = fcntl(fd, F_GET_SEALS);
    if (seals < 0) {
        struct stat st;
        const char *what = "a file that cannot be sealed";
        if (fstat(fd, &st) == 0) {
            if (S_ISREG(st.st_mode))
                what = "a regular file";
            else if (S_ISFIFO(st.st_mode))
                what = "a pipe";
            else if (S_ISSOCK(st.st_mode))
                what = "a socket";
            else if (S_ISCHR(st.st_mode))
                what = "a character device";
        }
        wc_errf(err, err_len, "the payload fd is %s, not a memfd: send payloads in a sealed memfd", what);
        return WC_FD_NOT_MEMFD;
    }
    if ((seals & (int)WC_FD_SEALS) != (int)WC_FD_SEALS) {
        wc_errf(err, err_len,
                "the payload memfd is not sealed (seals 0x%x, need 0x%x: no shrink, no grow, no write); "
                "seal it before sending",
                (unsigned)seals, (unsigned)WC_FD_SEALS);
        return WC_FD_UNSEALED;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        wc_errf(err, err_len, "could not stat the payload memfd: %s", strerror(errno));
        return WC_FD_NOT_MEMFD;
    }
    if (size > WC_MAX_FD_PAYLOAD) {
        wc_errf(err, err_len, "a payload of %llu bytes is over the %llu-byte limit of a payload memfd",
                (unsigned long long)size, (unsigned long long)WC_MAX_FD_PAYLOAD);
        return WC_FD_BAD_SIZE;
    }
    if ((uint64_t)st.st_size != size) {
        wc_errf(err, err_len, "the payload memfd holds %llu bytes, the frame announced %llu",
                (unsigned long long)st.st_size, (unsigned long long)size);
        return WC_FD_BAD_SIZE;
    }
    return WC_FD_OK;
}

int wc_send_fd_frame(int sock, const struct wc_header *h, uint64_t size, int fd, char *err, size_t err_len)
{
    uint8_t buf[WC_HEADER_SIZE + WC_FD_INFO_SIZE];
    struct wc_header hh = *h;
    hh.magic = WC_MAGIC;
    hh.version = WC_PROTOCOL_VERSION;
    hh.payload_len = WC_FD_INFO_SIZE;
    wc_header_encode(&hh, buf);
    wc_put_u64le(buf + WC_HEADER_SIZE, size);

    union wc_fd_control control;
    size_t done = 0;
    while (done < sizeof buf) {
        struct iovec iov = {.iov_base = buf + done, .iov_len = sizeof buf - done};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
        /* The fd rides on the frame's first byte, and only once. */
        if (done == 0)
            wc_attach_fd(&msg, &control, fd);
        ssize_t n = sendmsg(sock, &msg, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            char ebuf[24];
            wc_errf(err, err_len, "could not send a payload fd: %s (%s)", strerror(e), wc_errno_name(e, ebuf));
            return -e;
        }
        done += (size_t)n;
    }
    return 0;
}

void wc_attach_fd(struct msghdr *msg, union wc_fd_control *control, int fd)
{
    memset(control, 0, sizeof *control);
    msg->msg_control = control->buf;
    msg->msg_controllen = sizeof control->buf;
    struct cmsghdr *c = CMSG_FIRSTHDR(msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof fd);
}

int wc_take_fds(struct msghdr *msg, int *fds, size_t *nfds, size_t cap)
{
    int over = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(msg); c != NULL; c = CMSG_NXTHDR(msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
            continue;
        size_t k = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        for (size_t i = 0; i < k; i++) {
            int f;
            memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof f);
            if (*nfds < cap)
                fds[(*nfds)++] = f;
            else {
                close(f);
                over = 1;
            }
        }
    }
    return over;
}

static void close_all(const int *fds, size_t n)
{
    for (size_t i = 0; i < n; i++)
        close(fds[i]);
}

/* Receive exactly `len` bytes into `buf`, collecting the fds that come with
 * them into fds[*nfds...] (at most RECV_FDS in all). Returns WC_FD_OK, or
 * WC_FD_TRUNCATED / WC_FD_EXTRA / WC_FD_IO with every fd taken closed. */
static enum wc_fd_result recv_exact(int sock, uint8_t *buf, size_t len, int *fds, size_t *nfds, char *err,
                                    size_t err_len)
{
    size_t done = 0;
    while (done < len) {
        union {
            struct cmsghdr align;
            char buf[CMSG_SPACE(RECV_FDS * sizeof(int))];
        } control;
        struct iovec iov = {.iov_base = buf + done, .iov_len = len - done};
        struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.buf,
                             .msg_controllen = sizeof control.buf};
        ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int e = errno;
            char ebuf[24];
            wc_errf(err, err_len, "could not read a frame: %s (%s)", strerror(e), wc_errno_name(e, ebuf));
            close_all(fds, *nfds);
            *nfds = 0;
            return WC_FD_IO;
        }
        /* Take every fd that did arrive first, so that none leaks below. */
        int overflow = wc_take_fds(&msg, fds, nfds, RECV_FDS);
        if (msg.msg_flags & MSG_CTRUNC) {
            wc_errf(err, err_len,
                    "the peer sent more ancillary data than fits (MSG_CTRUNC): fds were lost, the "
                    "connection cannot go on");
            close_all(fds, *nfds);
            *nfds = 0;
            return WC_FD_TRUNCATED;
        }
        if (overflow) {
            wc_errf(err, err_len, "the peer sent more than %d fds with one frame", RECV_FDS);
            close_all(fds, *nfds);
            *nfds = 0;
            return WC_FD_EXTRA;
        }
        if (n == 0) {
            wc_errf(err, err_len, "the peer closed the connection %s",
                    done == 0 ? "between frames" : "in the middle of a frame");
            close_all(fds, *nfds);
            *nfds = 0;
            return WC_FD_IO;
        }
        done += (size_t)n;
    }
    return WC_FD_OK;
}

enum wc_fd_result wc_recv_fd_frame(int sock, struct wc_header *h, uint64_t *size, int *fd, char *err,
                                   size_t err_len)
{
    int fds[RECV_FDS];
    size_t nfds = 0;
    uint8_t buf[WC_HEADER_SIZE + WC_FD_INFO_SIZE];
    *fd = -1;
    *size = 0;
    if (err != NULL && err_len > 0)
        err[0] = '\0';
    memset(h, 0, sizeof *h);

    /* Only the header: the payload of an inline frame is the caller's. */
    enum wc_fd_result r = recv_exact(sock, buf, WC_HEADER_SIZE, fds, &nfds, err, err_len);
    if (r != WC_FD_OK)
        return r;
    enum wc_decode_result d = wc_header_decode(buf, WC_HEADER_SIZE, h);
    if (d != WC_DECODE_OK) {
        wc_errf(err, err_len, "frame header cannot be trusted: %s", wc_decode_result_str(d));
        close_all(fds, nfds);
        return WC_FD_BAD_HEADER;
    }
    int by_fd = h->kind == WC_FRAME_REQUEST_FD || h->kind == WC_FRAME_RESPONSE_FD;
    if (!by_fd) {
        if (nfds > 0) {
            wc_errf(err, err_len, "%zu fd(s) came with a %s frame, which carries none", nfds,
                    wc_kind_str(h->kind));
            close_all(fds, nfds);
            return WC_FD_EXTRA;
        }
        return WC_FD_OK;
    }
    if (h->payload_len != WC_FD_INFO_SIZE) {
        wc_errf(err, err_len, "a %s frame has a %u-byte payload, not %u", wc_kind_str(h->kind), h->payload_len,
                WC_FD_INFO_SIZE);
        close_all(fds, nfds);
        return WC_FD_BAD_HEADER;
    }
    r = recv_exact(sock, buf + WC_HEADER_SIZE, WC_FD_INFO_SIZE, fds, &nfds, err, err_len);
    if (r != WC_FD_OK)
        return r;
    *size = wc_get_u64le(buf + WC_HEADER_SIZE);
    if (nfds > 1) {
        wc_errf(err, err_len, "%zu fds came with one %s frame, which carries exactly one", nfds,
                wc_kind_str(h->kind));
        close_all(fds, nfds);
        return WC_FD_EXTRA;
    }
    if (nfds == 0) {
        wc_errf(err, err_len, "a %s frame announced a %llu-byte payload fd but none came with it",
                wc_kind_str(h->kind), (unsigned long long)*size);
        return WC_FD_MISSING;
    }
    r = wc_fd_check(fds[0], *size, err, err_len);
    if (r != WC_FD_OK) {
        close(fds[0]);
        return r;
    }
    *fd = fds[0];
    return WC_FD_OK;
}

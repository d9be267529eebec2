/*
 * socket.c -- connect to the Unix socket weaver already listens on.
 *
 * Never creates, binds or removes a socket: weaver owns the path. One helper
 * handles CLOEXEC and EINTR; failures come back as -errno plus a sentence in
 * the caller's buffer that names the path and says what to do.
 */
#define _GNU_SOURCE

#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "wc_internal.h"

/* Wait for a connect still in progress to finish; 0 or an errno. */
static int finish_pending_connect(int fd)
{
    for (;;) {
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        int r = poll(&p, 1, -1);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            return errno;
        int so_error = 0;
        socklen_t n = sizeof so_error;
        if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &so_error, &n) < 0)
            return errno;
        return so_error;
    }
}

static void explain(int e, const char *path, char *err, size_t err_len)
{
    char name_buf[24];
    const char *name = wc_errno_name(e, name_buf);
    switch (e) {
    case ENOENT:
        wc_errf(err, err_len,
                "compute socket %s does not exist (%s): start it through weaver, "
                "or pass --socket-path of a listening socket",
                path, name);
        break;
    case ECONNREFUSED:
        wc_errf(err, err_len,
                "nothing listens on compute socket %s (%s): the socket is stale or not a socket; "
                "start it through weaver, or pass --socket-path of a listening socket",
                path, name);
        break;
    case EACCES:
    case EPERM:
        wc_errf(err, err_len,
                "permission denied connecting to compute socket %s (%s): the socket and its "
                "directory must belong to the user running weaver",
                path, name);
        break;
    case ENOTDIR:
        wc_errf(err, err_len,
                "a directory in compute socket path %s is not a directory (%s): check --socket-path",
                path, name);
        break;
    case EPROTOTYPE:
        wc_errf(err, err_len,
                "compute socket %s is not a stream socket (%s): pass --socket-path of the socket "
                "weaver created",
                path, name);
        break;
    default:
        wc_errf(err, err_len, "could not connect to compute socket %s: %s (%s)", path, strerror(e), name);
        break;
    }
}

int socket_connect(const char *path, char *err, size_t err_len)
{
    if (err != NULL && err_len > 0)
        err[0] = '\0';
    if (path == NULL || path[0] == '\0') {
        wc_errf(err, err_len, "compute socket path is empty: pass --socket-path PATH");
        return -EINVAL;
    }

    struct sockaddr_un addr;
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    size_t len = strlen(path);
    if (len >= sizeof addr.sun_path) {
        wc_errf(err, err_len,
                "compute socket path %s is %zu bytes, over the %zu-byte limit of a Unix socket "
                "address (ENAMETOOLONG): use a shorter path, e.g. a shorter $XDG_RUNTIME_DIR",
                path, len, sizeof addr.sun_path - 1);
        return -ENAMETOOLONG;
    }
    memcpy(addr.sun_path, path, len + 1);

    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        int e = errno;
        char name_buf[24];
        wc_errf(err, err_len, "could not create a socket to reach %s: %s (%s)", path, strerror(e),
                wc_errno_name(e, name_buf));
        return -e;
    }

    int e = 0;
    for (;;) {
        if (connect(fd, (const struct sockaddr *)&addr, sizeof addr) == 0) {
            e = 0;
            break;
        }
        e = errno;
        if (e == EINTR)
            continue; /* a Unix connect interrupted while waiting is undone: retry */
        if (e == EISCONN)
            e = 0; /* an earlier, interrupted attempt completed after all */
        else if (e == EALREADY || e == EINPROGRESS)
            e = finish_pending_connect(fd);
        break;
    }
    if (e != 0) {
        explain(e, path, err, err_len);
        close(fd);
        return -e;
    }
    return fd;
}

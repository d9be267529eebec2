/*
 * main.c -- wc_daemon_main(): the compute-daemon program around wc_serve.
 *
 * Order: parse argv; self-pipe and SIGTERM/SIGINT handlers; parent-death
 * signal (and the race check against the parent recorded before it); pick
 * the lifeline on stdin; connect; serve; map the outcome to a WC_EXIT_*.
 * Messages go to stderr prefixed "compute-daemon: ". Returns instead of
 * calling exit(), and restores the signal dispositions it changed, so the
 * function can be called more than once in a process.
 */
#define _GNU_SOURCE

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ops.h"

#define PROG "compute-daemon"

/*
 * The write end of the signal self-pipe while wc_daemon_main runs, else -1.
 * The one piece of static state in the library: a signal handler has no
 * other way to find its pipe. It is set and cleared by wc_daemon_main only.
 */
static volatile sig_atomic_t signal_pipe_fd = -1;

static void on_stop_signal(int sig)
{
    int saved = errno;
    int fd = signal_pipe_fd;
    if (fd >= 0) {
        unsigned char c = (unsigned char)sig;
        ssize_t r = write(fd, &c, 1); /* full pipe: a byte is already there */
        (void)r;
    }
    errno = saved;
}

static void usage(FILE *to)
{
    char ops[128];
    size_t o = 0;
    ops[0] = '\0';
    for (size_t i = 0; i < wc_ops_count; i++)
        wc_appendf(ops, sizeof ops, &o, "%s%s", i ? ", " : "", wc_ops[i].name);
    fprintf(to,
            "Usage: " PROG " [--socket-path PATH] [--workers N]\n"
            "\n"
            "The weaver compute daemon. It connects to a Unix socket that weaver already\n"
            "listens on (it never creates one), sends HELLO, and serves compute requests\n"
            "(%s) on a pool of worker threads. weaver starts it;\n"
            "running it by hand is for testing.\n"
            "\n"
            "Options:\n"
            "  --socket-path PATH  socket to connect to; it must exist and be listening\n"
            "                      (default: $XDG_RUNTIME_DIR/weaver/compute.sock)\n"
            "  --workers N         worker threads, 0..%u (default 0: one per online CPU)\n"
            "  -h, --help          print this help and exit\n"
            "  -V, --version       print the version and exit\n"
            "\n"
            "It stops when any one of these happens:\n"
            "  - the socket reaches end of file or hangs up (weaver closed it);\n"
            "  - stdin reaches end of file, but only when stdin is a pipe, FIFO or socket\n"
            "    (weaver holds the other end); a terminal, /dev/null or a file on stdin is\n"
            "    not watched;\n"
            "  - weaver sends SHUTDOWN, or SIGTERM or SIGINT arrives;\n"
            "  - its parent process dies (the parent-death signal is SIGTERM).\n"
            "\n"
            "Exit status:\n"
            "  %d  stopped normally (end of file, SHUTDOWN, SIGTERM/SIGINT, parent gone)\n"
            "  %d  bad command line, or no --socket-path and XDG_RUNTIME_DIR unset\n"
            "  %d  could not connect to the socket\n"
            "  %d  the peer broke the protocol\n"
            "  %d  internal error (out of memory, thread creation failed, I/O error)\n",
            ops, (unsigned)WC_MAX_WORKERS, WC_EXIT_OK, WC_EXIT_USAGE, WC_EXIT_CONNECT, WC_EXIT_PROTOCOL,
            WC_EXIT_INTERNAL);
}

/* One line on stderr: "compute-daemon: " and the message. */
static void vcomplain(const char *fmt, va_list ap) __attribute__((format(printf, 1, 0)));
static void vcomplain(const char *fmt, va_list ap)
{
    fprintf(stderr, PROG ": ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
}

static void complain(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void complain(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vcomplain(fmt, ap);
    va_end(ap);
}

static int usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int usage_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vcomplain(fmt, ap);
    va_end(ap);
    fprintf(stderr, "Try '" PROG " --help' for more information.\n");
    return WC_EXIT_USAGE;
}

/* stdin is a lifeline only when weaver can hold its other end. */
static int lifeline_fd(void)
{
    struct stat st;
    if (fstat(STDIN_FILENO, &st) != 0)
        return -1;
    if (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode))
        return STDIN_FILENO;
    return -1;
}

struct signals {
    int pipe[2];
    struct sigaction old_term, old_int, old_pipe;
    int installed;
};

static int signals_install(struct signals *sg)
{
    sg->installed = 0;
    if (pipe2(sg->pipe, O_CLOEXEC | O_NONBLOCK) != 0) {
        complain("could not create the signal pipe: %s", strerror(errno));
        return -1;
    }
    signal_pipe_fd = sg->pipe[1];

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;
    sigaction(SIGTERM, &sa, &sg->old_term);
    sigaction(SIGINT, &sa, &sg->old_int);

    struct sigaction ign;
    memset(&ign, 0, sizeof ign);
    ign.sa_handler = SIG_IGN;
    sigemptyset(&ign.sa_mask);
    sigaction(SIGPIPE, &ign, &sg->old_pipe);
    sg->installed = 1;
    return 0;
}

static void signals_restore(struct signals *sg)
{
    if (!sg->installed)
        return;
    sigaction(SIGTERM, &sg->old_term, NULL);
    sigaction(SIGINT, &sg->old_int, NULL);
    sigaction(SIGPIPE, &sg->old_pipe, NULL);
    signal_pipe_fd = -1;
    close(sg->pipe[0]);
    close(sg->pipe[1]);
    sg->installed = 0;
}

/*
 * Die with the parent. The compute daemon owns its parent-death signal (this
 * is the one place it is set), so it holds whoever spawns it and a spawner
 * need not arm one. SIGTERM reaches the self-pipe like any other stop, so
 * the loop ends the normal way. The parent is read before prctl: if it died
 * in between, getppid() already names the reaper and the signal will never
 * come. Returns 0 when armed, 1 when the parent is already gone, -1 when
 * prctl failed (both with a message on stderr).
 */
static int arm_parent_death(void)
{
    pid_t parent = getppid();
    if (prctl(PR_SET_PDEATHSIG, SIGTERM) != 0) {
        complain("could not set the parent-death signal: %s", strerror(errno));
        return -1;
    }
    if (getppid() != parent) {
        complain("parent process %ld exited before start-up finished; exiting", (long)parent);
        return 1;
    }
    return 0;
}

static int run(const char *socket_path, uint32_t workers)
{
    struct signals sg;
    if (signals_install(&sg) != 0)
        return WC_EXIT_INTERNAL;

    int code = WC_EXIT_OK;
    int armed = arm_parent_death();
    if (armed != 0) {
        code = armed < 0 ? WC_EXIT_INTERNAL : WC_EXIT_OK;
        goto out_restore_signals;
    }

    char err[512];
    int fd = socket_connect(socket_path, err, sizeof err);
    if (fd < 0) {
        complain("%s", err);
        code = WC_EXIT_CONNECT;
        goto out_restore_signals;
    }

    struct wc_serve_opts opts = {
        .workers = workers,
        .watch_fd = lifeline_fd(),
        .stop_fd = sg.pipe[0],
        .send_hello = 1,
    };
    enum wc_serve_result r = wc_serve(fd, &opts, err, sizeof err);
    switch (r) {
    case WC_SERVE_PEER_CLOSED:
    case WC_SERVE_WATCH_CLOSED:
    case WC_SERVE_SHUTDOWN:
    case WC_SERVE_STOPPED:
        code = WC_EXIT_OK;
        break;
    case WC_SERVE_PROTOCOL:
        complain("%s", err);
        code = WC_EXIT_PROTOCOL;
        break;
    case WC_SERVE_ERROR:
    default:
        complain("%s", err);
        code = WC_EXIT_INTERNAL;
        break;
    }
    close(fd);

out_restore_signals:
    signals_restore(&sg);
    return code;
}

int wc_daemon_main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"socket-path", required_argument, NULL, 's'},
        {"workers", required_argument, NULL, 'w'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    const char *socket_path = NULL;
    uint32_t workers = 0;

    /* getopt keeps its position in globals: start from scratch each call. */
    optind = 0;
    opterr = 0;
    for (;;) {
        int prev = optind ? optind : 1;
        int c = getopt_long(argc, argv, ":hV", longopts, NULL);
        if (c == -1)
            break;
        switch (c) {
        case 's':
            socket_path = optarg;
            break;
        case 'w':
            if (wc_parse_u32(optarg, 0, WC_MAX_WORKERS, &workers) != 0)
                return usage_error("--workers: '%s' is not a number of threads from 0 to %u", optarg,
                                   (unsigned)WC_MAX_WORKERS);
            break;
        case 'h':
            usage(stdout);
            return WC_EXIT_OK;
        case 'V':
            printf(PROG " " WC_DAEMON_VERSION " (protocol %u)\n", (unsigned)WC_PROTOCOL_VERSION);
            return WC_EXIT_OK;
        case ':':
            return usage_error("option '%s' needs a value", prev < argc ? argv[prev] : "?");
        default:
            return usage_error("unknown option '%s'", prev < argc ? argv[prev] : "?");
        }
    }
    if (optind < argc)
        return usage_error("unexpected argument '%s'", argv[optind]);

    char *default_path = NULL;
    if (socket_path == NULL) {
        const char *rt = getenv("XDG_RUNTIME_DIR");
        if (rt == NULL || rt[0] == '\0') {
            complain("XDG_RUNTIME_DIR is not set, so there is no default socket: pass --socket-path PATH");
            return WC_EXIT_USAGE;
        }
        if (asprintf(&default_path, "%s/weaver/compute.sock", rt) < 0) {
            complain("out of memory");
            return WC_EXIT_INTERNAL;
        }
        socket_path = default_path;
    }
    int code = run(socket_path, workers);
    free(default_path);
    return code;
}

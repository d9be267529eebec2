/*
 * weaver_compute.h -- the wire contract between weaver and a compute daemon.
 *
 * This header is the single source of truth for the protocol. The C compute
 * daemon is built from it and the Rust side reads it through bindgen. A peer
 * written from this file alone must interoperate with weaver.
 *
 * TRANSPORT
 *   weaver creates and listens on a Unix stream socket (mode 0600, in a 0700
 *   directory) *before* it spawns the compute daemon, and passes its path as
 *   `--socket-path PATH`. The compute daemon connects to it (it never creates
 *   or removes the socket) and keeps that one connection for its whole life.
 *   weaver checks the peer with SO_PEERCRED (same uid, the pid it spawned).
 *
 * FRAMES
 *   Every message is one frame: a fixed 24-byte header followed by
 *   `payload_len` payload bytes. All integers are little-endian, whatever the
 *   host byte order; never write a C struct to the wire, use the explicit
 *   encode/decode helpers (wc_header_encode / wc_header_decode).
 *
 *     offset size field
 *          0    4 magic        WC_MAGIC ("WVRC" on the wire)
 *          4    2 version      WC_PROTOCOL_VERSION
 *          6    2 kind         enum wc_frame_kind
 *          8    8 request_id   chosen by weaver, echoed by compute; 0 when
 *                              the frame is about the connection itself
 *         16    4 code         REQUEST/CANCEL: enum wc_op;
 *                              RESPONSE: enum wc_status; otherwise 0
 *         20    4 payload_len  bytes that follow; header + payload never
 *                              exceeds WC_MAX_FRAME
 *
 * CONVERSATION
 *   1. compute -> weaver  HELLO (request_id 0) right after connecting.
 *      Payload (little-endian):
 *        u16 protocol version, u16 reserved (0), u32 pid, u32 max frame size,
 *        u32 worker threads, u32 op count, then per op:
 *        u32 op id, u8 name length, name bytes (ASCII, no NUL).
 *   2. weaver -> compute  REQUEST(id, op, payload). compute answers every
 *      REQUEST with exactly one RESPONSE(id, status, payload), in any order:
 *      requests run concurrently on a pool of worker threads. On a non-OK
 *      status the payload is a human-readable UTF-8 message.
 *   3. weaver -> compute  CANCEL(id): the request, if queued or running,
 *      ends with RESPONSE(id, WC_STATUS_CANCELLED). Cancelling an id that
 *      already answered (or never existed) is ignored: the one RESPONSE has
 *      been or will be sent, never a second one.
 *   4. either side -> PING(id, payload); the other answers PONG(same id, same
 *      payload). Used for liveness and for measuring the link.
 *   5. weaver -> compute  SHUTDOWN: stop taking requests, cancel what is
 *      queued and running (each gets its CANCELLED response), close, exit 0.
 *
 *   6. either way -> REQUEST_FD / RESPONSE_FD: a REQUEST or RESPONSE whose
 *      payload travels in a sealed memfd (see PAYLOAD BY FILE DESCRIPTOR).
 *
 *   A frame whose header cannot be trusted (bad magic or version, unknown
 *   kind, payload_len over the maximum) ends the connection: the receiver
 *   cannot know where the next frame starts. A REQUEST for an unknown op, or
 *   with parameters that do not parse, is answered with an error status and
 *   the connection goes on.
 *
 * PAYLOAD BY FILE DESCRIPTOR
 *   Payloads over WC_MAX_PAYLOAD (and large ones below it, from
 *   WC_FD_THRESHOLD on) need not cross the socket as bytes: the sender
 *   writes them into a memfd, seals it and passes the fd itself.
 *   - The frame is REQUEST_FD (code = op) or RESPONSE_FD (code = status).
 *     Its payload_len is WC_FD_INFO_SIZE and its 8 inline payload bytes are
 *     the u64 LE size of the fd payload, at most WC_MAX_FD_PAYLOAD.
 *   - Exactly one fd travels with the frame, as SCM_RIGHTS ancillary data
 *     on the sendmsg whose data begins with the frame's first header byte
 *     (wc_send_fd_frame does this). No other frame carries an fd.
 *   - The fd is a memfd created with MFD_ALLOW_SEALING, its size is
 *     exactly the announced size, and its seals include WC_FD_SEALS
 *     (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE): what the receiver
 *     checked can no longer change under it. The receiver only reads it
 *     (or passes the same fd on); the payload's bytes start at offset 0.
 *   - The receiver checks with F_GET_SEALS and fstat (wc_fd_check). A
 *     REQUEST_FD whose fd is missing, is not a memfd (a regular file, a
 *     pipe), is unsealed or has another size is answered with a
 *     RESPONSE(WC_STATUS_BAD_FD) whose message says which; a RESPONSE_FD
 *     like that fails its request with the same message. Either way the
 *     connection goes on.
 *   - A second fd with one frame, an fd with a frame of another kind, or
 *     ancillary data cut short (MSG_CTRUNC) end the connection: the
 *     receiver can no longer tell which fd belongs to which frame.
 *   - Every fd received is close-on-exec (MSG_CMSG_CLOEXEC) and closed on
 *     every path that refuses it; no fd leaks. A receiver holds at most
 *     WC_MAX_FDS_IN_FLIGHT received fds per connection.
 *
 * OPS AND THEIR PAYLOADS
 *   Parameters are ASCII `key=value` pairs separated by spaces, tabs or
 *   newlines (the same text the `weaver compute OP KEY=VALUE...` command line
 *   sends). Unknown keys, duplicate keys and values that do not parse are
 *   WC_STATUS_BAD_REQUEST.
 *   echo    payload: any bytes. Reply: the same bytes.
 *   render  Mandelbrot fractal as a binary PPM ("P6\n<w> <h>\n255\n" then
 *           w*h RGB bytes). Keys: width (1..4096, default 256), height
 *           (1..4096, default 256), iterations (1..100000, default 256),
 *           x_min (default -2.5), x_max (1.0), y_min (-1.25), y_max (1.25).
 *           Deterministic: pixel (px, py) samples
 *             cx = x_min + (px + 0.5) * (x_max - x_min) / width
 *             cy = y_max - (py + 0.5) * (y_max - y_min) / height
 *           and iterates from zx = zy = 0, n = 0:
 *             while (n < iterations && zx*zx + zy*zy <= 4.0) {
 *                 nx = (zx*zx - zy*zy) + cx;  zy = ((2.0*zx)*zy) + cy;
 *                 zx = nx;  n++;
 *             }
 *           in IEEE double, evaluated in exactly that order, no fused
 *           multiply-add. If zx*zx + zy*zy <= 4.0 still holds the point is
 *           black (0,0,0); otherwise it escaped after n steps and gets
 *           t = n * 255 / iterations (integer division) and colour
 *           (t, (t * 7) & 255, 255 - t).
 *   sleep   Keys: ms (0..3600000, required). Holds a worker for that long, then
 *           replies with an empty payload. Cancellable while it sleeps.
 *   info    No parameters. Reply: one line of JSON with pid, version,
 *           protocol, workers, max_frame and ops.
 */
#ifndef WEAVER_COMPUTE_H
#define WEAVER_COMPUTE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Wire constants ---------------------------------------------------- */

/** "WVRC" as it appears on the wire (bytes 'W','V','R','C'). */
#define WC_MAGIC 0x43525657u
/** Bumped on any incompatible change to this file (2: payloads by fd). */
#define WC_PROTOCOL_VERSION 2u
/** Size of the encoded frame header in bytes. */
#define WC_HEADER_SIZE 24u
/** Hard upper bound on one frame, header included: 16 MiB. */
#define WC_MAX_FRAME (16u * 1024u * 1024u)
/** Largest payload one frame can carry. */
#define WC_MAX_PAYLOAD (WC_MAX_FRAME - WC_HEADER_SIZE)
/** Longest op name in a HELLO. */
#define WC_MAX_OP_NAME 32u

/** Inline payload of a REQUEST_FD / RESPONSE_FD: the u64 LE size of the
 *  payload in its memfd. */
#define WC_FD_INFO_SIZE 8u
/** Largest payload one memfd may carry: 16 GiB. */
#define WC_MAX_FD_PAYLOAD (16ull * 1024u * 1024u * 1024u)
/** Payloads of at least this many bytes go by memfd when the peer can take
 *  one (see docs/performance.md for the measurements behind it); smaller
 *  ones go inline, where one copy costs less than a memfd's set-up. */
#define WC_FD_THRESHOLD (1u * 1024u * 1024u)
/** Seals a payload memfd must carry: F_SEAL_SHRINK (0x2) | F_SEAL_GROW
 *  (0x4) | F_SEAL_WRITE (0x8), as <fcntl.h> numbers them on Linux. */
#define WC_FD_SEALS 0x000eu
/** Most received payload fds one connection holds at a time. */
#define WC_MAX_FDS_IN_FLIGHT 64u

/** What a frame is. */
enum wc_frame_kind {
    WC_FRAME_HELLO = 1,    /**< compute -> weaver, once, first */
    WC_FRAME_REQUEST = 2,  /**< weaver -> compute: code = op */
    WC_FRAME_RESPONSE = 3, /**< compute -> weaver: code = status */
    WC_FRAME_CANCEL = 4,   /**< weaver -> compute: cancel request_id */
    WC_FRAME_PING = 5,     /**< either way; answered with PONG */
    WC_FRAME_PONG = 6,     /**< answer to PING, same id and payload */
    WC_FRAME_SHUTDOWN = 7, /**< weaver -> compute: finish and exit 0 */
    WC_FRAME_REQUEST_FD = 8,  /**< REQUEST, payload in the fd sent with it */
    WC_FRAME_RESPONSE_FD = 9, /**< RESPONSE, payload in the fd sent with it */
};

/** Operations a compute daemon serves (REQUEST.code). */
enum wc_op {
    WC_OP_ECHO = 1,
    WC_OP_RENDER = 2,
    WC_OP_SLEEP = 3,
    WC_OP_INFO = 4,
};

/** Outcome of a request (RESPONSE.code). */
enum wc_status {
    WC_STATUS_OK = 0,
    WC_STATUS_UNKNOWN_OP = 1,  /**< op not served by this compute daemon */
    WC_STATUS_BAD_REQUEST = 2, /**< parameters missing or malformed */
    WC_STATUS_TOO_LARGE = 3,   /**< result or input over WC_MAX_PAYLOAD */
    WC_STATUS_CANCELLED = 4,   /**< cancelled by CANCEL or SHUTDOWN */
    WC_STATUS_BUSY = 5,        /**< queue full, try again later */
    WC_STATUS_INTERNAL = 6,    /**< the op failed (out of memory, ...) */
    WC_STATUS_BAD_FD = 7,      /**< the payload fd is missing, not a sealed
                                    memfd, or not of the announced size */
};

/** A decoded frame header (host byte order). */
struct wc_header {
    uint32_t magic;
    uint16_t version;
    uint16_t kind;
    uint64_t request_id;
    uint32_t code;
    uint32_t payload_len;
};

/** Result of wc_header_decode. */
enum wc_decode_result {
    WC_DECODE_OK = 0,
    WC_DECODE_SHORT = 1,        /**< fewer than WC_HEADER_SIZE bytes given */
    WC_DECODE_BAD_MAGIC = 2,    /**< not a weaver compute frame */
    WC_DECODE_BAD_VERSION = 3,  /**< other protocol version */
    WC_DECODE_BAD_KIND = 4,     /**< kind outside enum wc_frame_kind */
    WC_DECODE_TOO_LARGE = 5,    /**< header + payload over WC_MAX_FRAME */
};

/* ---- Library API (compute-daemon/src, callable from Rust via FFI) ------ */

/** Exit codes of the compute-daemon executable. */
#define WC_EXIT_OK 0       /**< stopped by EOF, SHUTDOWN or SIGTERM */
#define WC_EXIT_USAGE 2    /**< bad command line */
#define WC_EXIT_CONNECT 3  /**< could not connect to the socket */
#define WC_EXIT_PROTOCOL 4 /**< the peer broke the protocol */
#define WC_EXIT_INTERNAL 5 /**< out of memory, thread creation failed, ... */

/** Encode `h` into exactly WC_HEADER_SIZE bytes at `out` (little-endian). */
void wc_header_encode(const struct wc_header *h, uint8_t out[WC_HEADER_SIZE]);

/**
 * Decode `len` bytes at `in` into `*h`. Checks magic, version, kind and
 * size; on any result other than WC_DECODE_OK `*h` holds what was read.
 */
enum wc_decode_result wc_header_decode(const uint8_t *in, size_t len, struct wc_header *h);

/** Static English text for a decode result, status, op or frame kind. */
const char *wc_decode_result_str(enum wc_decode_result r);
const char *wc_status_str(uint32_t status);
const char *wc_op_name(uint32_t op);

/**
 * Connect to an existing Unix stream socket at `path`; never creates one.
 * The fd is blocking and close-on-exec; EINTR is retried.
 * Returns the fd (>= 0), or -errno with a readable message (naming the
 * path and what to do) written into `err` (always NUL-terminated when
 * err_len > 0).
 */
int socket_connect(const char *path, char *err, size_t err_len);

/* ---- Payloads by file descriptor (fdpass.c) ---------------------------- */

/** What wc_fd_check and wc_recv_fd_frame found. */
enum wc_fd_result {
    WC_FD_OK = 0,
    WC_FD_MISSING = 1,    /**< a *_FD frame arrived without its fd */
    WC_FD_EXTRA = 2,      /**< more than one fd, or an fd with another kind */
    WC_FD_NOT_MEMFD = 3,  /**< a regular file, a pipe, a socket, ... */
    WC_FD_UNSEALED = 4,   /**< a memfd without all of WC_FD_SEALS */
    WC_FD_BAD_SIZE = 5,   /**< size differs from the announced one, or is
                               over WC_MAX_FD_PAYLOAD */
    WC_FD_TRUNCATED = 6,  /**< ancillary data cut short (MSG_CTRUNC) */
    WC_FD_IO = 7,         /**< the socket failed or reached end of file */
    WC_FD_BAD_HEADER = 8, /**< the header cannot be trusted */
};

/** Static English text for an enum wc_fd_result. */
const char *wc_fd_result_str(enum wc_fd_result r);

/**
 * A close-on-exec memfd that can be sealed, `size` bytes long (sparse: no
 * memory is used until written). Returns the fd, or -errno with a message
 * in `err`.
 */
int wc_memfd_create(const char *name, uint64_t size, char *err, size_t err_len);

/** Add WC_FD_SEALS and F_SEAL_SEAL to a memfd from wc_memfd_create (no
 *  writable mapping of it may remain). Returns 0 or -errno with a message. */
int wc_memfd_seal(int fd, char *err, size_t err_len);

/**
 * Check that `fd` may carry a payload of `size` bytes: a memfd
 * (F_GET_SEALS works), sealed with WC_FD_SEALS, exactly `size` bytes,
 * `size` <= WC_MAX_FD_PAYLOAD. Never closes `fd`. The reason for anything
 * but WC_FD_OK is written into `err`.
 */
enum wc_fd_result wc_fd_check(int fd, uint64_t size, char *err, size_t err_len);

/**
 * Send a REQUEST_FD or RESPONSE_FD frame (h->kind; h->payload_len is set
 * to WC_FD_INFO_SIZE) announcing `size` bytes, with `fd` attached to its
 * first byte. Blocking; EINTR and short writes are handled (the fd is sent
 * once). Does not close `fd`. Returns 0 or -errno with a message.
 */
int wc_send_fd_frame(int sock, const struct wc_header *h, uint64_t size, int fd, char *err, size_t err_len);

/**
 * Read one frame header from the blocking socket `sock` with recvmsg,
 * taking the fds that travel with it (close-on-exec), and for a *_FD frame
 * its 8 size bytes too. On WC_FD_OK, `*h` is the header; for a *_FD frame
 * `*size` is the payload size and `*fd` the checked memfd (the caller owns
 * it), else `*fd` is -1 and the caller reads h->payload_len payload bytes
 * itself. On any other result no fd is left open; `*h` holds what was
 * read (the caller can answer by its request id), and the reason is in
 * `err`. WC_FD_EXTRA, WC_FD_TRUNCATED, WC_FD_IO and WC_FD_BAD_HEADER end
 * the connection; the others refuse only this frame.
 */
enum wc_fd_result wc_recv_fd_frame(int sock, struct wc_header *h, uint64_t *size, int *fd, char *err,
                                   size_t err_len);

/** Options for wc_serve. */
struct wc_serve_opts {
    /** Worker threads; 0 means the number of online CPUs. */
    uint32_t workers;
    /** Extra fd to watch (the daemon's stdin); -1 for none. When it reaches
     *  EOF or hangs up, the loop stops as if the socket had closed. */
    int watch_fd;
    /** Fd whose readability means "stop now" (a signal self-pipe); -1 for
     *  none. */
    int stop_fd;
    /** Send HELLO first (1) or not (0). */
    int send_hello;
};

/** Why wc_serve returned. */
enum wc_serve_result {
    WC_SERVE_PEER_CLOSED = 0, /**< the socket reached EOF or hung up */
    WC_SERVE_WATCH_CLOSED = 1,/**< watch_fd reached EOF or hung up */
    WC_SERVE_SHUTDOWN = 2,    /**< a SHUTDOWN frame arrived */
    WC_SERVE_STOPPED = 3,     /**< stop_fd became readable */
    WC_SERVE_PROTOCOL = 4,    /**< the peer sent an untrustworthy header */
    WC_SERVE_ERROR = 5,       /**< I/O or resource failure */
};

/**
 * Serve requests on the connected socket `fd` until one of enum
 * wc_serve_result happens. Queued and running requests are cancelled and
 * all worker threads joined before it returns, so it is safe to call again
 * (no global state). Does not close `fd`. A one-line reason is written into
 * `err` (NUL-terminated when err_len > 0).
 */
enum wc_serve_result wc_serve(int fd, const struct wc_serve_opts *opts, char *err, size_t err_len);

/** A whole frame from wc_read_frames: `payload` (`len` bytes; NULL and 0
 *  when empty or not kept) is valid only during the call. */
typedef void (*wc_frame_fn)(void *ctx, const struct wc_header *h, const uint8_t *payload, size_t len);

/**
 * Run `len` bytes at `in` through the frame reader wc_serve reads its socket
 * with, as if each read had returned at most `chunk` of them (0: as many as
 * the reader takes at once), then end of file. Each whole frame goes to
 * `on_frame` (may be NULL) with `ctx`, its payload kept (`keep` != 0) or
 * only counted (0). Pure: no I/O, no threads, nothing kept after it
 * returns. Returns WC_SERVE_PEER_CLOSED once every byte is read,
 * WC_SERVE_PROTOCOL at a header that cannot be trusted (nothing after it is
 * read), WC_SERVE_ERROR when out of memory. *partial (if not NULL) is set to
 * the bytes of the frame being read when reading stopped (header included;
 * 0 when it stopped between frames). A one-line reason is written into
 * `err` (NUL-terminated when err_len > 0).
 */
enum wc_serve_result wc_read_frames(const uint8_t *in, size_t len, size_t chunk, int keep, wc_frame_fn on_frame,
                                    void *ctx, size_t *partial, char *err, size_t err_len);

/**
 * The compute-daemon program: parses argv (--socket-path, --workers, --help),
 * arms the parent-death signal, connects, sends HELLO and serves until EOF on
 * the socket or stdin, SHUTDOWN or SIGTERM. Returns a WC_EXIT_* code. The
 * Rust `compute-daemon` binary and the plain C build both call this.
 */
int wc_daemon_main(int argc, char **argv);

#ifdef __cplusplus
}
#endif

#endif /* WEAVER_COMPUTE_H */

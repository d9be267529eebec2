/*
 * wc_internal.h -- the base layer of the compute daemon's C files: the
 * version, the resource bounds, the little-endian helpers, the static texts
 * of frame.c and the text helpers of text.c. Every file may include it; it
 * includes no other internal header.
 *
 * Each other internal header declares what one .c file offers. Who uses
 * whom (one way only; nothing on the left is used by what it uses):
 *
 *   loop.c   -> pool.h, job.h, reader.h, ops.h
 *   pool.c   -> pool.h, job.h, ops.h
 *   main.c   -> ops.h
 *   ops.c    -> ops.h, render.h
 *   reader.c -> reader.h;  job.c -> job.h;  render.c -> render.h
 *   fdpass.c (payloads by fd) uses only this header
 *
 * ops.c knows nothing of the pool or the loop: a call carries its own
 * cancel flag and the lock a sleep waits on. Not part of the wire contract
 * (that is include/weaver_compute.h). Nothing here is global mutable state.
 */
#ifndef WC_INTERNAL_H
#define WC_INTERNAL_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "weaver_compute.h"

/* Version reported by --version and the info op: the crate's version, passed
 * by build.rs (CARGO_PKG_VERSION) and by the Makefile (read from Cargo.toml). */
#ifndef WC_DAEMON_VERSION
#error "WC_DAEMON_VERSION is not defined: build with cargo or make -C compute-daemon (both pass it from Cargo.toml)"
#endif

/* ---- Resource bounds of one wc_serve call ------------------------------ */

/** Most requests accepted and not yet fully answered (queued, running, or
 *  reply waiting to be written). One more is answered WC_STATUS_BUSY. */
#define WC_QUEUE_MAX_REQUESTS 1024u
/** Most bytes held for accepted requests (their payloads, then their
 *  replies until written). A request that would go over gets BUSY. */
#define WC_QUEUE_MAX_BYTES (256u * 1024u * 1024u)
/** While more reply bytes than this wait to be written, the socket is not
 *  read: a peer that does not read its replies stops being read. */
#define WC_OUT_HIGH_WATER (32u * 1024u * 1024u)
/** Most worker threads of one wc_serve call. */
#define WC_MAX_WORKERS 256u
/** How long SHUTDOWN and a stop request spend flushing the last replies. */
#define WC_FLUSH_MS 500

/* ---- Little-endian helpers (the only way bytes reach the wire) --------- */

static inline void wc_put_u16le(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v & 0xffu);
    p[1] = (uint8_t)(v >> 8);
}

static inline void wc_put_u32le(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v & 0xffu);
    p[1] = (uint8_t)((v >> 8) & 0xffu);
    p[2] = (uint8_t)((v >> 16) & 0xffu);
    p[3] = (uint8_t)(v >> 24);
}

static inline void wc_put_u64le(uint8_t *p, uint64_t v)
{
    wc_put_u32le(p, (uint32_t)(v & 0xffffffffu));
    wc_put_u32le(p + 4, (uint32_t)(v >> 32));
}

static inline uint16_t wc_get_u16le(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static inline uint32_t wc_get_u32le(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static inline uint64_t wc_get_u64le(const uint8_t *p)
{
    return (uint64_t)wc_get_u32le(p) | ((uint64_t)wc_get_u32le(p + 4) << 32);
}

/* ---- frame.c: static texts --------------------------------------------- */

/** Static name of a frame kind ("REQUEST", ...), "unknown kind" otherwise. */
const char *wc_kind_str(uint32_t kind);

/* ---- text.c: text helpers ---------------------------------------------- */

/** Symbolic name of an errno value ("ENOENT"), "errno N" style otherwise
 *  (written into `buf`, which must hold 24 bytes). */
const char *wc_errno_name(int e, char buf[24]);
/** snprintf into a caller's error buffer; does nothing when err_len is 0. */
void wc_errf(char *err, size_t err_len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/** snprintf at `buf + *used` (`buf` holds `len` bytes) and advance *used; once
 *  the text was cut short, *used >= len and later calls do nothing. */
void wc_appendf(char *buf, size_t len, size_t *used, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
/** Replace the buffer *out (freed) with the formatted message (not
 *  NUL-terminated in *out_len); on allocation failure, empty. */
void wc_vmessage(uint8_t **out, size_t *out_len, const char *fmt, va_list ap) __attribute__((format(printf, 3, 0)));
/** Copy `len` untrusted bytes into `out` (size `out_len` > 4) as printable
 *  ASCII: other bytes become '?', a cut-off ends in "...". Returns `out`. */
const char *wc_sanitize(char *out, size_t out_len, const uint8_t *in, size_t len);
/** Parse decimal digits only (no sign, no space) in min..max into *out.
 *  Returns 0, -1 when `text` is not all digits, -2 when out of range. */
int wc_parse_u32(const char *text, uint32_t min, uint32_t max, uint32_t *out);
/** Room for the one fd a frame carries (SCM_RIGHTS), aligned for it. */
union wc_fd_control {
    struct cmsghdr align;
    char buf[CMSG_SPACE(sizeof(int))];
};
/** Attach `fd` to `msg` as its one SCM_RIGHTS message, held in `control`
 *  (which must live until the sendmsg). */
void wc_attach_fd(struct msghdr *msg, union wc_fd_control *control, int fd);
/** Take every fd a recvmsg brought (SCM_RIGHTS) into fds[*nfds...], at
 *  most `cap` in all; those past it are closed. Returns 1 when some were
 *  (too many), else 0. Every receiver takes its fds with this first, so
 *  none leaks whatever it decides next. */
int wc_take_fds(struct msghdr *msg, int *fds, size_t *nfds, size_t cap);

/* ---- Steps of the serve loop ------------------------------------------- */

/** What a step of wc_serve's parts (reader.c, loop.c) returns to go on;
 *  any other value is the enum wc_serve_result to return. */
#define WC_GO_ON (-1)

#endif /* WC_INTERNAL_H */

/*
 * reader.h -- the incremental frame reader of one connection (reader.c).
 *
 * Reassembles frames from a non-blocking socket one recv() at a time: the
 * 24-byte header (possibly split over reads), then the payload, staged in a
 * 64 KiB buffer or, for a large kept payload, read straight into its own
 * buffer, which grows geometrically up to payload_len. The owner (the loop)
 * decides per header whether the payload is kept or only counted, and gets
 * each whole frame with its payload. A header that cannot be trusted, a cut
 * short frame at end of file and a failed read end reading with a
 * wc_serve_result and a reason in the owner's error buffer.
 */
#ifndef WC_READER_H
#define WC_READER_H

#include "wc_internal.h"

/** What the reader hands its owner. */
struct wc_reader_sink {
    void *ctx;
    /** A valid header was read: return 1 to keep its payload, 0 to drop it
     *  (read and counted only). */
    int (*begin)(void *ctx, const struct wc_header *h);
    /** The whole frame: `payload` (malloc'd, `len` bytes) now belongs to
     *  the callee; NULL and 0 when dropped or empty. `fd` is the fd that
     *  came with a REQUEST_FD / RESPONSE_FD frame (the callee owns it and
     *  checks it), -1 for other kinds or when none came. Returns WC_GO_ON
     *  to read on, or the wc_serve_result that ends the loop. */
    int (*frame)(void *ctx, const struct wc_header *h, uint8_t *payload, size_t len, int fd);
};

struct wc_reader {
    uint8_t hdr[WC_HEADER_SIZE];
    size_t hdr_fill;
    int in_payload;     /* header decoded, payload bytes pending */
    struct wc_header h; /* the frame being read */
    int discard;        /* payload is counted, not stored */
    uint8_t *buf;       /* payload so far */
    size_t cap, fill;
    uint8_t *stage;     /* staging buffer for headers and small payloads */
    struct wc_reader_sink sink;
    /* Fds received and not yet handed over with their frame, oldest first:
     * one at most between reads (it belongs to the frame being read). */
    int fds[WC_MAX_FDS_IN_FLIGHT];
    size_t nfds;
    char *err;
    size_t err_len;
};

/** Set up `rd` to hand frames to `sink` and reasons to `err`. 0, or -1 with
 *  a reason in `err`; either way wc_reader_free undoes it. */
int wc_reader_init(struct wc_reader *rd, const struct wc_reader_sink *sink, char *err, size_t err_len);
/** One non-blocking read from `fd` (EINTR retried) with recvmsg, taking the
 *  fds that come along (close-on-exec), and every frame it completes handed
 *  to the sink. Ancillary data cut short, or an fd that no frame claims,
 *  ends the loop (WC_SERVE_PROTOCOL): which fd belongs to which frame is no
 *  longer known. *got is the bytes read: 0 when nothing
 *  was there. Returns WC_GO_ON, or the wc_serve_result that ends the loop
 *  (the sink's, or PEER_CLOSED, PROTOCOL, ERROR with a reason in err). */
int wc_reader_recv(struct wc_reader *rd, int fd, size_t *got);
/** Free the buffers and close the fds held (a frame being read is dropped). */
void wc_reader_free(struct wc_reader *rd);

#endif /* WC_READER_H */

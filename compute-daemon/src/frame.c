/*
 * frame.c -- the 24-byte frame header, encoded and decoded byte by byte
 * (little-endian whatever the host), and the static texts for its decode
 * results, statuses and kinds (op names come from the op table, ops.c).
 * Pure: no I/O, no allocation, no state.
 */
#define _GNU_SOURCE

#include <string.h>

#include "wc_internal.h"

void wc_header_encode(const struct wc_header *h, uint8_t out[WC_HEADER_SIZE])
{
    wc_put_u32le(out + 0, h->magic);
    wc_put_u16le(out + 4, h->version);
    wc_put_u16le(out + 6, h->kind);
    wc_put_u64le(out + 8, h->request_id);
    wc_put_u32le(out + 16, h->code);
    wc_put_u32le(out + 20, h->payload_len);
}

enum wc_decode_result wc_header_decode(const uint8_t *in, size_t len, struct wc_header *h)
{
    memset(h, 0, sizeof *h);
    if (in == NULL || len < WC_HEADER_SIZE)
        return WC_DECODE_SHORT;
    h->magic = wc_get_u32le(in + 0);
    h->version = wc_get_u16le(in + 4);
    h->kind = wc_get_u16le(in + 6);
    h->request_id = wc_get_u64le(in + 8);
    h->code = wc_get_u32le(in + 16);
    h->payload_len = wc_get_u32le(in + 20);
    if (h->magic != WC_MAGIC)
        return WC_DECODE_BAD_MAGIC;
    if (h->version != WC_PROTOCOL_VERSION)
        return WC_DECODE_BAD_VERSION;
    if (h->kind < WC_FRAME_HELLO || h->kind > WC_FRAME_RESPONSE_FD)
        return WC_DECODE_BAD_KIND;
    if (h->payload_len > WC_MAX_PAYLOAD)
        return WC_DECODE_TOO_LARGE;
    return WC_DECODE_OK;
}

const char *wc_decode_result_str(enum wc_decode_result r)
{
    switch (r) {
    case WC_DECODE_OK:
        return "ok";
    case WC_DECODE_SHORT:
        return "fewer than 24 header bytes";
    case WC_DECODE_BAD_MAGIC:
        return "bad magic (not a weaver compute frame)";
    case WC_DECODE_BAD_VERSION:
        return "unsupported protocol version";
    case WC_DECODE_BAD_KIND:
        return "unknown frame kind";
    case WC_DECODE_TOO_LARGE:
        return "frame larger than the 16 MiB maximum";
    }
    return "unknown decode result";
}

const char *wc_status_str(uint32_t status)
{
    switch (status) {
    case WC_STATUS_OK:
        return "ok";
    case WC_STATUS_UNKNOWN_OP:
        return "unknown op";
    case WC_STATUS_BAD_REQUEST:
        return "bad request";
    case WC_STATUS_TOO_LARGE:
        return "too large";
    case WC_STATUS_CANCELLED:
        return "cancelled";
    case WC_STATUS_BUSY:
        return "busy";
    case WC_STATUS_INTERNAL:
        return "internal error";
    case WC_STATUS_BAD_FD:
        return "bad payload fd";
    default:
        return "unknown status";
    }
}

const char *wc_kind_str(uint32_t kind)
{
    switch (kind) {
    case WC_FRAME_HELLO:
        return "HELLO";
    case WC_FRAME_REQUEST:
        return "REQUEST";
    case WC_FRAME_RESPONSE:
        return "RESPONSE";
    case WC_FRAME_CANCEL:
        return "CANCEL";
    case WC_FRAME_PING:
        return "PING";
    case WC_FRAME_PONG:
        return "PONG";
    case WC_FRAME_SHUTDOWN:
        return "SHUTDOWN";
    case WC_FRAME_REQUEST_FD:
        return "REQUEST_FD";
    case WC_FRAME_RESPONSE_FD:
        return "RESPONSE_FD";
    default:
        return "unknown kind";
    }
}

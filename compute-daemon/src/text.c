/*
 * text.c -- text helpers shared by every file: messages into a caller's
 * buffer (wc_errf, wc_appendf) or into a malloc'd payload (wc_vmessage),
 * errno names, untrusted bytes made printable, and the one decimal parser.
 * No state.
 */
#define _GNU_SOURCE

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wc_internal.h"

const char *wc_errno_name(int e, char buf[24])
{
    switch (e) {
    case ENOENT:
        return "ENOENT";
    case EACCES:
        return "EACCES";
    case EPERM:
        return "EPERM";
    case ECONNREFUSED:
        return "ECONNREFUSED";
    case ENOTDIR:
        return "ENOTDIR";
    case ENAMETOOLONG:
        return "ENAMETOOLONG";
    case EPROTOTYPE:
        return "EPROTOTYPE";
    case ENOTSOCK:
        return "ENOTSOCK";
    case ELOOP:
        return "ELOOP";
    case EAGAIN:
        return "EAGAIN";
    case EINVAL:
        return "EINVAL";
    case EMFILE:
        return "EMFILE";
    case ENFILE:
        return "ENFILE";
    case ENOMEM:
        return "ENOMEM";
    case ECONNRESET:
        return "ECONNRESET";
    case EPIPE:
        return "EPIPE";
    case ETIMEDOUT:
        return "ETIMEDOUT";
    default:
        snprintf(buf, 24, "errno %d", e);
        return buf;
    }
}

void wc_errf(char *err, size_t err_len, const char *fmt, ...)
{
    if (err == NULL || err_len == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, err_len, fmt, ap);
    va_end(ap);
}

void wc_appendf(char *buf, size_t len, size_t *used, const char *fmt, ...)
{
    if (*used >= len)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf + *used, len - *used, fmt, ap);
    va_end(ap);
    if (n < 0) {
        buf[*used] = '\0';
        *used = len;
        return;
    }
    *used += (size_t)n; /* past len when cut short: later calls do nothing */
}

void wc_vmessage(uint8_t **out, size_t *out_len, const char *fmt, va_list ap)
{
    free(*out);
    *out = NULL;
    *out_len = 0;
    char *msg = NULL;
    int n = vasprintf(&msg, fmt, ap);
    if (n >= 0) {
        *out = (uint8_t *)msg;
        *out_len = (size_t)n;
    }
}

const char *wc_sanitize(char *out, size_t out_len, const uint8_t *in, size_t len)
{
    size_t o = 0;
    size_t room = out_len - 4; /* keep space for "..." and the NUL */
    for (size_t i = 0; i < len; i++) {
        if (o >= room) {
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        uint8_t c = in[i];
        out[o++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    out[o] = '\0';
    return out;
}

int wc_parse_u32(const char *text, uint32_t min, uint32_t max, uint32_t *out)
{
    if (text[0] < '0' || text[0] > '9')
        return -1;
    for (const char *c = text; *c; c++)
        if (*c < '0' || *c > '9')
            return -1;
    errno = 0;
    unsigned long long v = strtoull(text, NULL, 10);
    if (errno == ERANGE || v < min || v > max)
        return -2;
    *out = (uint32_t)v;
    return 0;
}

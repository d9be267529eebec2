/*
 * ops.c -- the table of ops { id, name, handler } and their parameters.
 * The table is the only place an op's name is spelled: wc_op_name, HELLO,
 * the info op, error messages and --help derive from it.
 *
 * A handler runs on a worker thread with one struct wc_call (ops.h): it
 * reads the request payload (bounded, never NUL-terminated), and sets status
 * and out. A sleep waits on the lock the call names, so this file needs
 * nothing from the pool or the loop.
 *
 * Parameters are `key=value` tokens separated by spaces, tabs, CR or LF;
 * unknown, duplicate, empty, unparsable or out-of-range values give
 * WC_STATUS_BAD_REQUEST with a message that names the key.
 */
#define _GNU_SOURCE

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "ops.h"
#include "render.h"

/* ---- Call helpers ------------------------------------------------------ */

int wc_call_cancelled(const struct wc_call *call)
{
    return call->cancel != NULL && atomic_load(call->cancel) != 0;
}

void wc_call_fail(struct wc_call *call, uint32_t status, const char *fmt, ...)
{
    call->status = status;
    va_list ap;
    va_start(ap, fmt);
    wc_vmessage(&call->out, &call->out_len, fmt, ap);
    va_end(ap);
}

int wc_call_sleep_ms(struct wc_call *call, uint64_t ms)
{
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += (time_t)(ms / 1000u);
    deadline.tv_nsec += (long)(ms % 1000u) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    if (call->cancel_mu == NULL) {
        /* Nothing to wait on (an op tested on its own): a plain wait. */
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &deadline, NULL) == EINTR)
            ;
        return 0;
    }
    pthread_mutex_lock(call->cancel_mu);
    while (!wc_call_cancelled(call)) {
        if (pthread_cond_timedwait(call->cancel_cv, call->cancel_mu, &deadline) == ETIMEDOUT)
            break;
    }
    int cancelled = wc_call_cancelled(call);
    pthread_mutex_unlock(call->cancel_mu);
    return cancelled;
}

static void call_cancelled(struct wc_call *call)
{
    wc_call_fail(call, WC_STATUS_CANCELLED, "request %llu (%s) cancelled while running",
                 (unsigned long long)call->request_id, wc_op_name(call->op));
}

/* ---- Parameter parsing ------------------------------------------------- */

enum param_type { PARAM_U32, PARAM_F64 };

struct param {
    const char *key;
    enum param_type type;
    uint32_t min, max; /* PARAM_U32 only */
    void *dst;         /* uint32_t * or double * */
    int required;
    int seen;
};

/* Longest value text accepted (a double needs far less). */
#define PARAM_VALUE_MAX 64

static int is_sep(uint8_t c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r';
}

static void list_keys(const struct param *ps, size_t np, char *buf, size_t len)
{
    size_t o = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < np; i++)
        wc_appendf(buf, len, &o, "%s%s", i ? ", " : "", ps[i].key);
}

static int parse_f64(const char *text, double *out)
{
    char *end = NULL;
    double v = strtod(text, &end);
    if (end == text || *end != '\0')
        return -1;
    if (!isfinite(v))
        return -2;
    *out = v;
    return 0;
}

/* Parse call->payload against `ps`. Returns 0, or -1 after failing the call
 * with BAD_REQUEST. */
static int parse_params(struct wc_call *call, struct param *ps, size_t np)
{
    const char *op = wc_op_name(call->op);
    const uint8_t *p = call->payload;
    const uint8_t *end = p + call->payload_len;
    char keys[128];
    char shown[48];
    list_keys(ps, np, keys, sizeof keys);
    if (call->in_fd >= 0) {
        wc_call_fail(call, WC_STATUS_BAD_REQUEST,
                     "%s: parameters come inline (key=value text), not in a payload fd", op);
        return -1;
    }

    while (p < end) {
        while (p < end && is_sep(*p))
            p++;
        if (p == end)
            break;
        const uint8_t *tok = p;
        while (p < end && !is_sep(*p))
            p++;
        size_t tok_len = (size_t)(p - tok);
        const uint8_t *eq = memchr(tok, '=', tok_len);
        if (eq == NULL) {
            wc_call_fail(call, WC_STATUS_BAD_REQUEST, "%s: parameter '%s' has no '=': expected key=value (keys: %s)",
                         op, wc_sanitize(shown, sizeof shown, tok, tok_len), keys);
            return -1;
        }
        size_t key_len = (size_t)(eq - tok);
        const uint8_t *val = eq + 1;
        size_t val_len = tok_len - key_len - 1;

        struct param *hit = NULL;
        for (size_t i = 0; i < np; i++)
            if (strlen(ps[i].key) == key_len && memcmp(ps[i].key, tok, key_len) == 0)
                hit = &ps[i];
        if (hit == NULL) {
            wc_call_fail(call, WC_STATUS_BAD_REQUEST, "%s: unknown key '%s' (keys: %s)", op,
                         wc_sanitize(shown, sizeof shown, tok, key_len), keys);
            return -1;
        }
        if (hit->seen) {
            wc_call_fail(call, WC_STATUS_BAD_REQUEST, "%s: duplicate key '%s'", op, hit->key);
            return -1;
        }
        hit->seen = 1;
        if (val_len == 0) {
            wc_call_fail(call, WC_STATUS_BAD_REQUEST, "%s: empty value for key '%s'", op, hit->key);
            return -1;
        }
        if (val_len >= PARAM_VALUE_MAX) {
            wc_call_fail(call, WC_STATUS_BAD_REQUEST, "%s: value for key '%s' is too long (%zu bytes)", op, hit->key,
                         val_len);
            return -1;
        }
        char text[PARAM_VALUE_MAX];
        memcpy(text, val, val_len);
        text[val_len] = '\0';
        if (memchr(text, '\0', val_len) != NULL) {
            wc_call_fail(call, WC_STATUS_BAD_REQUEST, "%s: value for key '%s' contains a NUL byte", op, hit->key);
            return -1;
        }

        int r;
        if (hit->type == PARAM_U32) {
            r = wc_parse_u32(text, hit->min, hit->max, hit->dst);
            if (r == -1) {
                wc_call_fail(call, WC_STATUS_BAD_REQUEST, "%s: %s='%s' is not a whole number", op, hit->key,
                             wc_sanitize(shown, sizeof shown, val, val_len));
                return -1;
            }
            if (r == -2) {
                wc_call_fail(call, WC_STATUS_BAD_REQUEST, "%s: %s=%s is out of range (%u..%u)", op, hit->key,
                             wc_sanitize(shown, sizeof shown, val, val_len), hit->min, hit->max);
                return -1;
            }
        } else {
            r = parse_f64(text, hit->dst);
            if (r == -1) {
                wc_call_fail(call, WC_STATUS_BAD_REQUEST, "%s: %s='%s' is not a number", op, hit->key,
                             wc_sanitize(shown, sizeof shown, val, val_len));
                return -1;
            }
            if (r == -2) {
                wc_call_fail(call, WC_STATUS_BAD_REQUEST, "%s: %s=%s is out of range (must be finite)", op,
                             hit->key, wc_sanitize(shown, sizeof shown, val, val_len));
                return -1;
            }
        }
    }
    for (size_t i = 0; i < np; i++) {
        if (ps[i].required && !ps[i].seen) {
            wc_call_fail(call, WC_STATUS_BAD_REQUEST, "%s: missing key '%s'", op, ps[i].key);
            return -1;
        }
    }
    return 0;
}

/* ---- The ops ----------------------------------------------------------- */

static void op_echo(struct wc_call *call)
{
    call->status = WC_STATUS_OK;
    if (call->in_fd >= 0) {
        /* A sealed memfd cannot change: the reply is the same fd. */
        call->out_fd = call->in_fd;
        call->out_size = call->in_size;
        call->out_fd_passed = 1;
        call->in_fd = -1;
        return;
    }
    /* Reply with the request's own buffer: no copy. */
    call->out = call->payload;
    call->out_len = call->payload_len;
    call->payload = NULL;
    call->payload_len = 0;
}

/* A large image is rendered straight into a memfd, sealed and sent as
 * the fd: no copy on this side, none through weaver. */
static void render_to_memfd(struct wc_call *call, const struct wc_render_params *rp, size_t size)
{
    const char *op = wc_op_name(call->op);
    char err[160];
    int fd = wc_memfd_create("weaver-render", size, err, sizeof err);
    if (fd < 0) {
        wc_call_fail(call, WC_STATUS_INTERNAL, "%s: %s", op, err);
        return;
    }
    uint8_t *img = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (img == MAP_FAILED) {
        wc_call_fail(call, WC_STATUS_INTERNAL, "%s: could not map %zu bytes: %s", op, size, strerror(errno));
        close(fd);
        return;
    }
    int cancelled = wc_render(rp, img, size, call->cancel) != 0;
    munmap(img, size);
    if (cancelled) {
        close(fd);
        call_cancelled(call);
        return;
    }
    if (wc_memfd_seal(fd, err, sizeof err) != 0) {
        wc_call_fail(call, WC_STATUS_INTERNAL, "%s: %s", op, err);
        close(fd);
        return;
    }
    call->status = WC_STATUS_OK;
    call->out_fd = fd;
    call->out_size = size;
}

static void op_render(struct wc_call *call)
{
    struct wc_render_params rp = {
        .width = 256,
        .height = 256,
        .iterations = 256,
        .x_min = -2.5,
        .x_max = 1.0,
        .y_min = -1.25,
        .y_max = 1.25,
    };
    struct param ps[] = {
        {"width", PARAM_U32, 1, 4096, &rp.width, 0, 0},
        {"height", PARAM_U32, 1, 4096, &rp.height, 0, 0},
        {"iterations", PARAM_U32, 1, 100000, &rp.iterations, 0, 0},
        {"x_min", PARAM_F64, 0, 0, &rp.x_min, 0, 0},
        {"x_max", PARAM_F64, 0, 0, &rp.x_max, 0, 0},
        {"y_min", PARAM_F64, 0, 0, &rp.y_min, 0, 0},
        {"y_max", PARAM_F64, 0, 0, &rp.y_max, 0, 0},
    };
    if (parse_params(call, ps, sizeof ps / sizeof ps[0]) != 0)
        return;

    const char *op = wc_op_name(call->op);
    size_t size = wc_render_size(&rp);
    if (size >= WC_FD_THRESHOLD) {
        render_to_memfd(call, &rp, size);
        return;
    }
    uint8_t *img = malloc(size);
    if (img == NULL) {
        wc_call_fail(call, WC_STATUS_INTERNAL, "%s: out of memory for %zu bytes", op, size);
        return;
    }
    if (wc_render(&rp, img, size, call->cancel) != 0) {
        free(img);
        call_cancelled(call);
        return;
    }
    call->status = WC_STATUS_OK;
    call->out = img;
    call->out_len = size;
}

static void op_sleep(struct wc_call *call)
{
    uint32_t ms = 0;
    struct param ps[] = {
        {"ms", PARAM_U32, 0, 3600000, &ms, 1, 0},
    };
    if (parse_params(call, ps, sizeof ps / sizeof ps[0]) != 0)
        return;
    if (wc_call_sleep_ms(call, ms) != 0) {
        call_cancelled(call);
        return;
    }
    call->status = WC_STATUS_OK;
}

static void op_info(struct wc_call *call)
{
    const char *op = wc_op_name(call->op);
    for (size_t i = 0; i < call->payload_len; i++) {
        if (!is_sep(call->payload[i])) {
            wc_call_fail(call, WC_STATUS_BAD_REQUEST, "%s: takes no parameters", op);
            return;
        }
    }
    char ops[128];
    size_t o = 0;
    ops[0] = '\0';
    for (size_t i = 0; i < wc_ops_count; i++)
        wc_appendf(ops, sizeof ops, &o, "%s\"%s\"", i ? "," : "", wc_ops[i].name);
    char *json = NULL;
    int n = asprintf(&json,
                     "{\"pid\":%u,\"version\":\"%s\",\"protocol\":%u,\"workers\":%u,\"max_frame\":%u,"
                     "\"ops\":[%s]}\n",
                     call->pid, WC_DAEMON_VERSION, (unsigned)WC_PROTOCOL_VERSION, call->workers,
                     (unsigned)WC_MAX_FRAME, ops);
    if (n < 0) {
        wc_call_fail(call, WC_STATUS_INTERNAL, "%s: out of memory", op);
        return;
    }
    call->status = WC_STATUS_OK;
    call->out = (uint8_t *)json;
    call->out_len = (size_t)n;
}

/* ---- The table --------------------------------------------------------- */

/* The one list of ops: everything that names or numbers an op reads it. */
const struct wc_op_entry wc_ops[] = {
    {WC_OP_ECHO, "echo", op_echo},
    {WC_OP_RENDER, "render", op_render},
    {WC_OP_SLEEP, "sleep", op_sleep},
    {WC_OP_INFO, "info", op_info},
};

const size_t wc_ops_count = sizeof wc_ops / sizeof wc_ops[0];

const struct wc_op_entry *wc_op_find(uint32_t op)
{
    for (size_t i = 0; i < wc_ops_count; i++)
        if (wc_ops[i].id == op)
            return &wc_ops[i];
    return NULL;
}

const char *wc_op_name(uint32_t op)
{
    const struct wc_op_entry *e = wc_op_find(op);
    return e != NULL ? e->name : "unknown op";
}

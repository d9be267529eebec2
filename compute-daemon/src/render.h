/*
 * render.h -- the render op's pixels (render.c).
 */
#ifndef WC_RENDER_H
#define WC_RENDER_H

#include <stdatomic.h>

#include "wc_internal.h"

struct wc_render_params {
    uint32_t width;      /**< 1..4096 */
    uint32_t height;     /**< 1..4096 */
    uint32_t iterations; /**< 1..100000 */
    double x_min, x_max, y_min, y_max;
};

/** Bytes of the PPM image for `p` (header + pixels). */
size_t wc_render_size(const struct wc_render_params *p);
/** Write the PPM image into `out` (exactly wc_render_size bytes).
 *  Returns 0 when complete, 1 when `cancel` became non-zero first. */
int wc_render(const struct wc_render_params *p, uint8_t *out, size_t out_len, const atomic_int *cancel);

#endif /* WC_RENDER_H */

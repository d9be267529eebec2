/*
 * render.c -- the render op's image: a Mandelbrot set as a binary PPM.
 *
 * Bit-for-bit reproducible from include/weaver_compute.h alone. The exact
 * IEEE-double evaluation order (the build uses -ffp-contract=off, so no
 * multiply-add is ever fused):
 *
 *   cx = x_min + ((px + 0.5) * (x_max - x_min)) / width
 *   cy = y_max - ((py + 0.5) * (y_max - y_min)) / height
 *   zx = zy = 0, n = 0
 *   while (n < iterations && zx*zx + zy*zy <= 4.0):
 *       zx, zy = (zx*zx - zy*zy) + cx, ((2.0*zx) * zy) + cy
 *       n += 1
 *   escaped = !(zx*zx + zy*zy <= 4.0)
 *
 * A point that escaped after n steps (n may equal `iterations`) gets
 * t = n * 255 / iterations (integer division) and colour (t, (t*7) & 255,
 * 255 - t); one that did not is black.
 */
#define _GNU_SOURCE

#include <stdio.h>
#include <string.h>

#include "render.h"

/* "P6\n<w> <h>\n255\n" for w, h <= 4096 fits easily. */
static int ppm_header(const struct wc_render_params *p, char buf[32])
{
    return snprintf(buf, 32, "P6\n%u %u\n255\n", p->width, p->height);
}

size_t wc_render_size(const struct wc_render_params *p)
{
    char hdr[32];
    int n = ppm_header(p, hdr);
    return (size_t)n + (size_t)p->width * (size_t)p->height * 3u;
}

static void shade(uint32_t escaped, uint32_t n, uint32_t iterations, uint8_t rgb[3])
{
    if (!escaped) {
        rgb[0] = rgb[1] = rgb[2] = 0;
        return;
    }
    uint32_t t = (uint32_t)(((uint64_t)n * 255u) / iterations);
    rgb[0] = (uint8_t)t;
    rgb[1] = (uint8_t)((t * 7u) & 255u);
    rgb[2] = (uint8_t)(255u - t);
}

int wc_render(const struct wc_render_params *p, uint8_t *out, size_t out_len, const atomic_int *cancel)
{
    char hdr[32];
    int hn = ppm_header(p, hdr);
    if (out_len < wc_render_size(p))
        return 1;
    memcpy(out, hdr, (size_t)hn);
    uint8_t *px_out = out + hn;

    const double w = (double)p->width;
    const double h = (double)p->height;
    const double dx = p->x_max - p->x_min;
    const double dy = p->y_max - p->y_min;

    for (uint32_t py = 0; py < p->height; py++) {
        const double cy = p->y_max - (((double)py + 0.5) * dy) / h;
        for (uint32_t px = 0; px < p->width; px++) {
            /* Checked per pixel: a pixel is at most `iterations` steps, so a
             * cancel is noticed within a fraction of a millisecond. */
            if (cancel != NULL && atomic_load_explicit(cancel, memory_order_relaxed))
                return 1;
            const double cx = p->x_min + (((double)px + 0.5) * dx) / w;
            double zx = 0.0, zy = 0.0;
            uint32_t n = 0;
            while (n < p->iterations && zx * zx + zy * zy <= 4.0) {
                const double nx = (zx * zx - zy * zy) + cx;
                const double ny = ((2.0 * zx) * zy) + cy;
                zx = nx;
                zy = ny;
                n++;
            }
            const uint32_t escaped = !(zx * zx + zy * zy <= 4.0);
            shade(escaped, n, p->iterations, px_out);
            px_out += 3;
        }
    }
    return 0;
}

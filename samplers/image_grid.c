/* image_grid.c - PNG grids of sampled images; see image_grid.h. */
#include "sd/image_grid.h"

#include <math.h>
#include <string.h>

#include "sd/data.h"

static uint8_t to_u8(float v)
{
    if (!(v > 0.0f)) return 0; /* also NaN */
    if (v >= 1.0f) return 255;
    return (uint8_t)lrintf(v * 255.0f);
}

void sd_image_to_u8(const float *x, int C, int H, int W, uint8_t *out)
{
    size_t HW = (size_t)H * W;
    for (size_t p = 0; p < HW; p++)
        for (int c = 0; c < C; c++) out[p * C + c] = to_u8(x[c * HW + p]);
}

void sd_image_grid_size(size_t n, int cols, int H, int W, int *out_cols, int *out_rows,
                        int *out_w, int *out_h)
{
    size_t c = cols > 0 ? (size_t)cols : 1;
    if (cols <= 0)
        while (c * c < n) c++;
    if (n && c > n) c = n;
    size_t r = n ? (n + c - 1) / c : 0;
    *out_cols = (int)c;
    *out_rows = (int)r;
    *out_w = (int)(c * ((size_t)W + 1) + 1);
    *out_h = (int)(r * ((size_t)H + 1) + 1);
}

sd_status sd_image_grid_write(const char *path, const float *x, size_t n, int C, int H, int W,
                              int cols)
{
    if (n == 0 || (C != 1 && C != 3) || H < 1 || W < 1 || H > 4096 || W > 4096 || n > 1000000)
        return sd_error(SD_ERR_INVALID, "%s: cannot tile %zu images of %dx%dx%d", path, n, C, H,
                        W);
    int gc, gr, gw, gh;
    sd_image_grid_size(n, cols, H, W, &gc, &gr, &gw, &gh);
    size_t bytes;
    if (sd_mul_size((size_t)gw * (size_t)gh, (size_t)C, &bytes) || bytes > SD_IMAGE_MAX_PIXELS * 3u)
        return sd_error(SD_ERR_INVALID, "%s: a grid of %d x %d pixels is too large", path, gw, gh);
    uint8_t *img = sd_malloc(bytes), *tile = sd_malloc((size_t)H * W * C);
    if (!img || !tile) {
        sd_free(img);
        sd_free(tile);
        return SD_ERR_NOMEM;
    }
    memset(img, 255, bytes);
    size_t D = (size_t)C * H * W;
    for (size_t i = 0; i < n; i++) {
        sd_image_to_u8(x + i * D, C, H, W, tile);
        size_t r = i / (size_t)gc, c = i % (size_t)gc;
        size_t y0 = 1 + r * ((size_t)H + 1), x0 = 1 + c * ((size_t)W + 1);
        for (int y = 0; y < H; y++)
            memcpy(img + (((y0 + y) * (size_t)gw) + x0) * C, tile + (size_t)y * W * C,
                   (size_t)W * C);
    }
    sd_status st = sd_image_write_png(path, gw, gh, C, img);
    sd_free(img);
    sd_free(tile);
    return st;
}

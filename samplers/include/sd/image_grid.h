/* image_grid.h - write a batch of images as one PNG grid.
 *
 * Images x [n, C, H, W] (C = 1 gray or 3 RGB, planar float in [0, 1]; values
 * outside are clamped, then rounded to uint8) are tiled row-major into
 * `cols` columns (0: near-square, ceil(sqrt(n))) and ceil(n / cols) rows,
 * with a 1-pixel white border around and between the tiles. The file is
 * written atomically through sd_image_write_png.
 *
 * Errors: SD_ERR_INVALID (bad shape), SD_ERR_NOMEM, SD_ERR_IO.
 */
#ifndef SD_IMAGE_GRID_H
#define SD_IMAGE_GRID_H

#include <stddef.h>
#include <stdint.h>

#include "sd/status.h"

/* Grid geometry for n tiles of H x W: columns, rows, and the pixel size. */
void sd_image_grid_size(size_t n, int cols, int H, int W, int *out_cols, int *out_rows,
                        int *out_w, int *out_h);
sd_status sd_image_grid_write(const char *path, const float *x, size_t n, int C, int H, int W,
                              int cols);
/* One image [C, H, W] in [0, 1] to interleaved uint8 [H, W, C] (clamped). */
void sd_image_to_u8(const float *x, int C, int H, int W, uint8_t *out);

#endif

/* fuzz_image.c - libFuzzer harness for the image loader (sd_image_decode +
 * sd_image_prepare), i.e. our hardened stb_image build and everything we do
 * with its output.
 *
 * Build (clang, Debian libclang-rt-14-dev), from the repository root:
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -Ilib/include \
 *     -D_POSIX_C_SOURCE=200809L -D_DEFAULT_SOURCE \
 *     tests/fuzz/fuzz_image.c lib/io/stb_image_impl.c lib/io/data_image.c \
 *     lib/io/data_csv.c lib/core/status.c lib/core/mem_budget.c -lm -o fuzz_image
 *   ./fuzz_image -max_len=65536 -max_total_time=60 CORPUS_DIR tests/fuzz/corpus/image
 * (tools/fuzz.sh image does this.) Seeds: tiny valid PNG (gray 1/8-bit,
 * palette + tRNS, 16-bit RGB, RGBA, Adam7 interlaced), JPEG (baseline,
 * 4:2:0, progressive), BMP (8/24/32-bit, top-down) and PNM (P5, P6, 16-bit)
 * files, each under 2 KB.
 *
 * Invariants checked beyond "no crash / no sanitizer report": a decoded image
 * respects the header limits, and preparing it at native size reproduces a
 * gray input exactly.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sd/data.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    sd_image img;
    if (sd_image_decode(data, size, &img) != SD_OK) {
        if (img.pixels) abort(); /* a failure must leave nothing behind */
        return 0;
    }
    if (img.w < 1 || img.h < 1 || img.w > SD_IMAGE_MAX_SIDE || img.h > SD_IMAGE_MAX_SIDE ||
        (size_t)img.w * (size_t)img.h > SD_IMAGE_MAX_PIXELS || img.comp < 1 || img.comp > 4)
        abort();

    /* Resize + crop to a small square in both channel layouts (the path every
     * training image takes). */
    uint8_t small[3 * 8 * 8];
    if (sd_image_prepare(&img, 1, 8, small) != SD_OK) abort();
    if (sd_image_prepare(&img, 3, 8, small) != SD_OK) abort();

    /* Native size (identity weights) only for small images, to keep each run
     * fast: a gray image must come back unchanged. */
    size_t n = (size_t)img.w * (size_t)img.h;
    if (n <= 4096) {
        uint8_t *full = malloc(3 * n);
        if (!full) abort();
        if (sd_image_prepare(&img, 3, 0, full) != SD_OK) abort();
        if (img.comp == 1 && memcmp(full, img.pixels, n) != 0) abort();
        free(full);
    }
    sd_image_free(&img);
    return 0;
}

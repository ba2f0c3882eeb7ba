/* data.h - training data: image folders, CSV point clouds, IDX files, and the
 * batch loader that feeds `scorediff train --data PATH`.
 *
 * Overview
 *   A data set (sd_dataset) is decoded once into memory and then sampled in
 *   mini-batches by a loader (sd_loader):
 *
 *   - An image folder: every PNG, JPEG, BMP or PNM (binary P5/P6) file below
 *     the directory, recursively, in byte-wise sorted path order. Each image
 *     is converted to 1 or 3 channels, area-resized so that its shorter side
 *     is S and centre-cropped to S x S (or kept at its native size, which must
 *     then be the same for all), and stored in one uint8 cache [N, C, H, W].
 *   - A CSV file: N points of dimension D, one per line, stored as float
 *     [N, D]. Fields are separated by commas and/or blanks; '#' starts a
 *     comment; blank lines are skipped; line 1 may be a header of names.
 *
 *   The loader turns the cache into float batches: images become
 *   (k + u) / 256 with k the stored byte and u ~ U[0, 1) (uniform
 *   dequantisation, Theis et al. 2016 "A note on the evaluation of generative
 *   models"), optionally flipped left-right at random; points are copied.
 *
 *       sd_image_opts io = { .channels = 1, .size = 28 };
 *       sd_dataset ds;
 *       if (sd_data_load(path, &io, &ds) != SD_OK) { puts(sd_error_message()); ... }
 *       sd_loader_opts lo = { .batch = 128, .seed = seed, .dequant = 1, .threaded = 1 };
 *       sd_loader *ld;
 *       if (sd_loader_new(&ds, &lo, &ld) != SD_OK) ...
 *       sd_loader_seek(ld, resumed_step);            // optional
 *       for (...) { const float *x = sd_loader_next(ld); ... }  // x is (B, C, H, W)
 *       sd_loader_free(ld);
 *       sd_dataset_free(&ds);
 *
 * Reproducibility
 *   Batch k is a pure function of (data set, options, seed, k): the order is
 *   an endless concatenation of per-epoch permutations, permutation e drawn
 *   from sd_rng_split(seed/SD_STREAM_DATA, e), and batch k takes stream
 *   positions [k B, (k + 1) B), so a batch may straddle two epochs and B may
 *   exceed N. Dequantisation noise and flips of batch k come from
 *   sd_rng_split of the SD_STREAM_DEQUANT / SD_STREAM_FLIP streams by k. The
 *   background thread computes exactly the same function one step ahead, so
 *   batches are identical with or without it, and sd_loader_seek(k) resumes
 *   a run at step k with the batches it would have seen.
 *
 * Bad input
 *   A file that cannot be read or decoded is skipped: one warning "path:
 *   reason" goes to the warn callback (default: stderr) and it is counted in
 *   sd_dataset.summary; loading fails only if no image remains. Headers are
 *   checked with stbi_info before any pixel is decoded; dimensions over
 *   SD_IMAGE_MAX_SIDE per side or SD_IMAGE_MAX_PIXELS in total, or files over
 *   SD_IMAGE_MAX_FILE_BYTES, are rejected, and so is a header that claims
 *   more pixels than its file can hold (sd_image_probe: a JPEG needs at least
 *   1 bit per 8x8 block, i.e. w * h / 512 bytes; a PNG at least 1/1032 of its
 *   filtered rows, deflate's limit; BMP and PNM their whole pixel array).
 *   Decisions on odd files: top-down BMPs load; RLE BMPs are refused as
 *   unsupported; a PNG with a bad CRC on a critical chunk, or with palette
 *   indices past its PLTE, is refused (as libpng does).
 *   Without a target size, every header is probed first and the size most
 *   images share (ties: the first file's in path order) is the data set's,
 *   so a corrupt header neither sets it nor gets a good file blamed. The
 *   cache's size is then checked with sd_mem_check (sd/membudget.h) before
 *   it is allocated (SD_ERR_NOMEM, naming the folder and the figure).
 *   Errors (the caller should exit with status 2): the path is neither a
 *   directory nor a .csv file, a directory cannot be read, no usable image
 *   was found, native sizes differ without a target size (naming the first
 *   file, in path order, whose size is not the majority's), a malformed CSV
 *   line ("f.csv:17: expected 2 values, got 3").
 *
 * Threading and ownership
 *   Loading functions are reentrant. A loader is used by one thread at a time
 *   (plus its own worker); it borrows the data set, which must outlive it.
 *   Batches returned by sd_loader_next stay valid until the next call to
 *   sd_loader_next / sd_loader_seek / sd_loader_free.
 *
 * Errors: SD_ERR_INVALID (bad options), SD_ERR_IO (unreadable path),
 * SD_ERR_FORMAT (no usable image, size mismatch, malformed CSV or IDX),
 * SD_ERR_NOMEM.
 */
#ifndef SD_DATA_H
#define SD_DATA_H

#include <stddef.h>
#include <stdint.h>

#include "sd/status.h"

/* Limits applied to every image file before it is decoded. The side limit is
 * also compiled into stb_image as STBI_MAX_DIMENSIONS. */
#define SD_IMAGE_MAX_SIDE 16384
#define SD_IMAGE_MAX_PIXELS ((size_t)1 << 24)
#define SD_IMAGE_MAX_FILE_BYTES ((size_t)64 << 20)

/* ---- Decoded images (lib/io/stb_image_impl.c) ---- */

/* One decoded image, interleaved: pixels[(y * w + x) * comp + c]. comp is the
 * file's own channel count: 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA. */
typedef struct sd_image {
    int w, h, comp;
    uint8_t *pixels; /* [h, w, comp] */
} sd_image;

/* Decode a PNG, JPEG, BMP or PNM image held in memory. The format is chosen
 * by its magic bytes, the header is validated with stbi_info and the limits
 * above before any decoding. On failure *out is zeroed and the message is the
 * reason alone (no path), e.g. "PNG header claims 100000 x 100000 pixels
 * (limit 16384 per side, 16777216 in total)". */
sd_status sd_image_decode(const uint8_t *buf, size_t len, sd_image *out);
/* Every check sd_image_decode makes before decoding a pixel: magic, limits,
 * the structure checks against stb's known bugs, stbi_info, and plausibility
 * (a file cannot hold more pixels than its compression allows: JPEG at least
 * 1 bit per 8x8 block, PNG deflate at most 1032:1, BMP and PNM uncompressed
 * need their whole pixel array). Critical PNG chunks must have valid CRCs and
 * indexed PNG pixels must lie inside the palette. On success *w, *h, *comp
 * are the image's size and channels; on failure the message is the reason. */
sd_status sd_image_probe(const uint8_t *buf, size_t len, int *w, int *h, int *comp);
void sd_image_free(sd_image *img);

/* Encode pixels [h, w, comp] (comp 1..4) as PNG and write it to `path`
 * atomically through sd/file.h (a temporary file in the same directory,
 * fsync, rename(), fsync of the directory). */
sd_status sd_image_write_png(const char *path, int w, int h, int comp,
                             const uint8_t *pixels);

/* ---- Image preparation (lib/io/data_image.c) ---- */

/* Convert `img` to `channels` (1 or 3) and resample it into out [channels,
 * oh, ow] (planar). size > 0: area-resize the centred min(w,h)^2 square to
 * size x size (oh = ow = size); size == 0: keep the native w x h. RGB -> gray
 * uses the ITU-R BT.601 luma Y = 0.299 R + 0.587 G + 0.114 B; gray -> RGB
 * replicates; alpha is dropped. Values are rounded to nearest once, at the
 * end. */
sd_status sd_image_prepare(const sd_image *img, int channels, int size,
                           uint8_t *out);

/* ---- Data sets ---- */

typedef enum sd_data_kind {
    SD_DATA_IMAGES = 1, /* pixels [n, c, h, w] uint8 */
    SD_DATA_POINTS = 2  /* points [n, c] float (h = w = 1) */
} sd_data_kind;

typedef struct sd_data_summary {
    size_t candidates; /* files with an image extension */
    size_t loaded;     /* decoded into the cache */
    size_t skipped;    /* unreadable or undecodable: one warning each */
    size_t ignored;    /* other files and hidden (dot) entries */
} sd_data_summary;

typedef struct sd_dataset {
    sd_data_kind kind;
    size_t n;           /* number of items */
    int c, h, w;        /* item shape; points: c = D, h = w = 1 */
    uint8_t *pixels;    /* images: [n, c, h, w], else NULL */
    float *points;      /* points: [n, c], else NULL */
    sd_data_summary summary;
} sd_dataset;

/* Called once per skipped file; `reason` has no path and no newline. */
typedef void (*sd_data_warn_fn)(void *ctx, const char *path, const char *reason);

typedef struct sd_image_opts {
    int channels;         /* 1 or 3 */
    int size;             /* S > 0: resize + centre crop to S x S; 0: native */
    sd_data_warn_fn warn; /* NULL: print "warning: path: reason" to stderr */
    void *warn_ctx;
} sd_image_opts;

/* All images below `dir` (see the overview). */
sd_status sd_data_load_images(const char *dir, const sd_image_opts *opts,
                              sd_dataset *out);

/* Points from a CSV file (see the overview). */
sd_status sd_data_load_csv(const char *path, sd_dataset *out);

/* A directory -> sd_data_load_images; a file named *.csv -> sd_data_load_csv
 * (opts may then be NULL); anything else is an error. */
sd_status sd_data_load(const char *path, const sd_image_opts *opts,
                       sd_dataset *out);

/* Floats per item: c * h * w. */
static inline size_t sd_dataset_item_size(const sd_dataset *ds)
{
    return (size_t)ds->c * (size_t)ds->h * (size_t)ds->w;
}

void sd_dataset_free(sd_dataset *ds);

/* ---- Batch loader (lib/io/data_loader.c) ---- */

typedef struct sd_loader sd_loader;

typedef struct sd_loader_opts {
    size_t batch;  /* B >= 1 (may exceed n: batches wrap into the next epoch) */
    uint64_t seed; /* the run's seed */
    int dequant;   /* images: 1 -> (k + u) / 256, 0 -> (k + 0.5) / 256 */
    int hflip;     /* images: flip each item left-right with probability 1/2 */
    int threaded;  /* 1: a background thread prepares the next batch */
} sd_loader_opts;

/* Its two batch buffers and permutations are checked with sd_mem_check
 * before they are allocated (SD_ERR_NOMEM with the figure). */
sd_status sd_loader_new(const sd_dataset *ds, const sd_loader_opts *opts,
                        sd_loader **out);

/* The batch of the current step, as float (B, C, H, W) (points: (B, D));
 * then advances the step by one. Cannot fail. */
const float *sd_loader_next(sd_loader *ld);

/* Make `step` the next batch sd_loader_next returns. */
void sd_loader_seek(sd_loader *ld, uint64_t step);

/* The step the next sd_loader_next returns, and its (fractional) epoch. */
uint64_t sd_loader_step(const sd_loader *ld);
double sd_loader_epoch(const sd_loader *ld);

void sd_loader_free(sd_loader *ld);

/* ---- IDX files (lib/io/idx.c) ---- */

/* An IDX file of unsigned bytes (LeCun's MNIST format, also Fashion-MNIST):
 * magic 00 00 08 ndim, ndim big-endian uint32 sizes, then the data. */
typedef struct sd_idx {
    int ndim;          /* 1..4 */
    uint32_t dims[4];
    uint8_t *data;     /* dims[0] * ... * dims[ndim-1] bytes */
    size_t size;
} sd_idx;

/* Read an IDX file, gzip-compressed or plain (detected from the content).
 * Validates the magic, the dimensions and that the data length matches them
 * exactly (no trailing bytes). */
sd_status sd_idx_read(const char *path, sd_idx *out);
void sd_idx_free(sd_idx *idx);

/* Write the images of a 3-D IDX [N, H, W] as OUT_DIR/00000.png, ...: gray
 * 8-bit PNGs, names zero-padded to max(5, digits of N - 1). Creates out_dir
 * if needed (one level). Each file is written atomically. */
sd_status sd_idx_write_png_folder(const sd_idx *idx, const char *out_dir);

/* sd_idx_read + sd_idx_write_png_folder; *written (may be NULL) gets N. */
sd_status sd_idx_convert(const char *idx_path, const char *out_dir,
                         size_t *written);

#endif

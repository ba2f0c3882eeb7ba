/* test_data.c - image folders, CSV points, the batch loader and IDX files
 * (sd/data.h).
 *
 * Every test writes its own small inputs into a fresh mkdtemp directory:
 * PNGs through sd_image_write_png, BMP and PNM byte by byte, JPEGs from the
 * byte arrays below, so that the expected numbers are computed by hand from
 * inputs we chose, never copied from a run. Bad-input tests check both the status and
 * the message a user would see.
 */
#define _XOPEN_SOURCE 700
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include "sd/data.h"
#include "sd/rng.h"
#include "sd/status.h"

/* Made with libjpeg-turbo (an encoder independent of stb): an 8x6 gray
 * baseline JPEG, quality 95, every pixel 128; and a 12x10 gray progressive
 * JPEG, quality 80, pixel (x, y) = (16 x + 8 y) mod 256. */
static const uint8_t jpeg_flat_8x6[159] = {
    0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, 0x4a, 0x46, 0x49, 0x46, 0x00, 0x01,
    0x01, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0xff, 0xdb, 0x00, 0x43,
    0x00, 0x02, 0x01, 0x01, 0x01, 0x01, 0x01, 0x02, 0x01, 0x01, 0x01, 0x02,
    0x02, 0x02, 0x02, 0x02, 0x04, 0x03, 0x02, 0x02, 0x02, 0x02, 0x05, 0x04,
    0x04, 0x03, 0x04, 0x06, 0x05, 0x06, 0x06, 0x06, 0x05, 0x06, 0x06, 0x06,
    0x07, 0x09, 0x08, 0x06, 0x07, 0x09, 0x07, 0x06, 0x06, 0x08, 0x0b, 0x08,
    0x09, 0x0a, 0x0a, 0x0a, 0x0a, 0x0a, 0x06, 0x08, 0x0b, 0x0c, 0x0b, 0x0a,
    0x0c, 0x09, 0x0a, 0x0a, 0x0a, 0xff, 0xc0, 0x00, 0x0b, 0x08, 0x00, 0x06,
    0x00, 0x08, 0x01, 0x01, 0x11, 0x00, 0xff, 0xc4, 0x00, 0x14, 0x00, 0x01,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0xff, 0xc4, 0x00, 0x14, 0x10, 0x01, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0xff, 0xda, 0x00, 0x08, 0x01, 0x01, 0x00, 0x00, 0x3f, 0x00,
    0x3f, 0xff, 0xd9,
};
static const uint8_t jpeg_prog_12x10[318] = {
    0xff, 0xd8, 0xff, 0xe0, 0x00, 0x10, 0x4a, 0x46, 0x49, 0x46, 0x00, 0x01,
    0x01, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, 0xff, 0xdb, 0x00, 0x43,
    0x00, 0x06, 0x04, 0x05, 0x06, 0x05, 0x04, 0x06, 0x06, 0x05, 0x06, 0x07,
    0x07, 0x06, 0x08, 0x0a, 0x10, 0x0a, 0x0a, 0x09, 0x09, 0x0a, 0x14, 0x0e,
    0x0f, 0x0c, 0x10, 0x17, 0x14, 0x18, 0x18, 0x17, 0x14, 0x16, 0x16, 0x1a,
    0x1d, 0x25, 0x1f, 0x1a, 0x1b, 0x23, 0x1c, 0x16, 0x16, 0x20, 0x2c, 0x20,
    0x23, 0x26, 0x27, 0x29, 0x2a, 0x29, 0x19, 0x1f, 0x2d, 0x30, 0x2d, 0x28,
    0x30, 0x25, 0x28, 0x29, 0x28, 0xff, 0xc2, 0x00, 0x0b, 0x08, 0x00, 0x0a,
    0x00, 0x0c, 0x01, 0x01, 0x11, 0x00, 0xff, 0xc4, 0x00, 0x16, 0x00, 0x01,
    0x01, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x07, 0x05, 0x06, 0xff, 0xda, 0x00, 0x08, 0x01, 0x01,
    0x00, 0x00, 0x00, 0x01, 0x82, 0x91, 0x94, 0x48, 0xff, 0xc4, 0x00, 0x18,
    0x10, 0x01, 0x00, 0x03, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x03, 0x00, 0x05, 0x23, 0x33, 0xff, 0xda,
    0x00, 0x08, 0x01, 0x01, 0x00, 0x01, 0x05, 0x02, 0xad, 0x08, 0x01, 0x9d,
    0x6c, 0x0e, 0x7f, 0xff, 0xc4, 0x00, 0x15, 0x10, 0x01, 0x01, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x01, 0xff, 0xda, 0x00, 0x08, 0x01, 0x01, 0x00, 0x06, 0x3f, 0x02,
    0x88, 0x88, 0xff, 0xc4, 0x00, 0x18, 0x10, 0x00, 0x03, 0x01, 0x01, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x01, 0x41, 0x31, 0x51, 0xff, 0xda, 0x00, 0x08, 0x01, 0x01, 0x00, 0x01,
    0x3f, 0x21, 0xe0, 0x21, 0x08, 0xa0, 0x45, 0x91, 0xff, 0xda, 0x00, 0x08,
    0x01, 0x01, 0x00, 0x00, 0x00, 0x10, 0xff, 0x00, 0xff, 0xc4, 0x00, 0x19,
    0x10, 0x00, 0x02, 0x03, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x41, 0x10, 0x31, 0x91, 0xa1, 0xff,
    0xda, 0x00, 0x08, 0x01, 0x01, 0x00, 0x01, 0x3f, 0x10, 0xe7, 0xc6, 0x54,
    0x92, 0x2a, 0x0c, 0x3f, 0xff, 0xd9,
};

/* ---- helpers ---- */

static char g_root[64];

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static void setup_tmp(void)
{
    strcpy(g_root, "/tmp/sd_test_data_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(g_root));
}

static void teardown_tmp(void)
{
    nftw(g_root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* g_root/rel in a static rotating buffer (a few may be live at once). */
static const char *P(const char *rel)
{
    static char bufs[8][512];
    static int k;
    char *b = bufs[k++ & 7];
    snprintf(b, 512, "%s/%s", g_root, rel);
    return b;
}

static void mkdir_rel(const char *rel)
{
    ck_assert_int_eq(mkdir(P(rel), 0755), 0);
}

static void write_bytes(const char *path, const void *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(buf, 1, len, f), len);
    ck_assert_int_eq(fclose(f), 0);
}

static uint8_t *read_bytes(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)n + 1);
    ck_assert_uint_eq(fread(b, 1, (size_t)n, f), (size_t)n);
    fclose(f);
    *len = (size_t)n;
    return b;
}

static void write_text(const char *path, const char *text)
{
    write_bytes(path, text, strlen(text));
}

/* A gray image whose pixels are all `v`. */
static void write_gray_png(const char *path, int w, int h, uint8_t v)
{
    uint8_t px[64 * 64];
    memset(px, v, sizeof px);
    ck_assert_int_eq(sd_image_write_png(path, w, h, 1, px), SD_OK);
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* A PNG with a valid signature and a valid IHDR (correct CRC32) claiming
 * w x h 8-bit gray pixels, then IEND: no pixel data at all, so only a header
 * check can reject it cleanly. 8 + 25 + 12 = 45 bytes. */
static size_t make_png_header_only(uint8_t *b, uint32_t w, uint32_t h)
{
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
    memcpy(b, sig, 8);
    put_be32(b + 8, 13);
    memcpy(b + 12, "IHDR", 4);
    put_be32(b + 16, w);
    put_be32(b + 20, h);
    b[24] = 8; /* bit depth */
    b[25] = 0; /* colour type gray */
    b[26] = b[27] = b[28] = 0;
    put_be32(b + 29, (uint32_t)crc32(0, b + 12, 17)); /* CRC of type + data */
    put_be32(b + 33, 0);
    memcpy(b + 37, "IEND", 4);
    put_be32(b + 41, (uint32_t)crc32(0, b + 37, 4));
    return 45;
}

/* A 24-bit bottom-up BMP of w x h pixels, all (r, g, b); rows padded to
 * 4 bytes (BITMAPINFOHEADER layout, little-endian). */
static void write_bmp_rgb(const char *path, int w, int h, uint8_t r, uint8_t g, uint8_t b)
{
    int stride = (3 * w + 3) & ~3;
    size_t size = 54 + (size_t)stride * (size_t)h;
    uint8_t *buf = calloc(1, size);
    buf[0] = 'B';
    buf[1] = 'M';
    const uint32_t fields[][2] = {{2, (uint32_t)size}, {10, 54}, {14, 40}, {18, (uint32_t)w},
                                  {22, (uint32_t)h}, {34, (uint32_t)(size - 54)}};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        for (int k = 0; k < 4; k++) buf[fields[i][0] + (uint32_t)k] = (uint8_t)(fields[i][1] >> (8 * k));
    buf[26] = 1;  /* planes */
    buf[28] = 24; /* bits per pixel */
    for (int y = 0; y < h; y++)
        for (int x = 0; x < w; x++) {
            uint8_t *p = buf + 54 + (size_t)y * (size_t)stride + 3 * (size_t)x;
            p[0] = b;
            p[1] = g;
            p[2] = r;
        }
    write_bytes(path, buf, size);
    free(buf);
}

typedef struct warn_log {
    int count;
    char last[512];
} warn_log;

static void capture_warn(void *ctx, const char *path, const char *reason)
{
    warn_log *w = ctx;
    w->count++;
    snprintf(w->last, sizeof w->last, "%s: %s", path, reason);
}

#define ASSERT_MSG_HAS(sub)                                                             \
    ck_assert_msg(strstr(sd_error_message(), (sub)) != NULL, "message '%s' lacks '%s'", \
                  sd_error_message(), (sub))

/* ---- image preparation: numbers worked out by hand ---- */

static void prep(const uint8_t *px, int w, int h, int comp, int C, int S, uint8_t *out)
{
    sd_image img = {w, h, comp, (uint8_t *)px};
    ck_assert_int_eq(sd_image_prepare(&img, C, S, out), SD_OK);
}

START_TEST(test_resize_area_values)
{
    uint8_t out[64];
    /* 2x2 -> 1x1: the mean (0 + 100 + 200 + 40) / 4 = 85. */
    const uint8_t a[] = {0, 100, 200, 40};
    prep(a, 2, 2, 1, 1, 1, out);
    ck_assert_uint_eq(out[0], 85);
    /* 2x2 -> 4x4: each output footprint is half a source pixel, so every
     * source pixel becomes a 2x2 block. */
    prep(a, 2, 2, 1, 1, 4, out);
    for (int y = 0; y < 4; y++)
        for (int x = 0; x < 4; x++) ck_assert_uint_eq(out[y * 4 + x], a[(y / 2) * 2 + x / 2]);
    /* 2 -> 3 along a row [0, 100]: footprints [0,2/3), [2/3,4/3), [4/3,2)
     * give 0, (100 * 1/3 + 0 * 1/3) / (2/3) = 50, 100. */
    const uint8_t r2[] = {0, 100, 0, 100};
    prep(r2, 2, 2, 1, 1, 3, out);
    for (int y = 0; y < 3; y++) {
        ck_assert_uint_eq(out[y * 3 + 0], 0);
        ck_assert_uint_eq(out[y * 3 + 1], 50);
        ck_assert_uint_eq(out[y * 3 + 2], 100);
    }
    /* 3 -> 2 along rows [0, 30, 90]: [0, 1.5) -> (0 + 0.5 * 30) / 1.5 = 10,
     * [1.5, 3) -> (0.5 * 30 + 90) / 1.5 = 70. */
    const uint8_t r3[] = {0, 30, 90, 0, 30, 90, 0, 30, 90};
    prep(r3, 3, 3, 1, 1, 2, out);
    const uint8_t e3[] = {10, 70, 10, 70};
    ck_assert_mem_eq(out, e3, 4);
}
END_TEST

START_TEST(test_centre_crop_values)
{
    uint8_t out[64];
    /* 4x2 (w=4, h=2): shorter side 2, centre square = columns 1..2. */
    const uint8_t a[] = {10, 20, 30, 40, 50, 60, 70, 80};
    prep(a, 4, 2, 1, 1, 2, out);
    const uint8_t e2[] = {20, 30, 60, 70};
    ck_assert_mem_eq(out, e2, 4);
    prep(a, 4, 2, 1, 1, 1, out);
    ck_assert_uint_eq(out[0], (20 + 30 + 60 + 70) / 4);
    /* Portrait 2x4 (w=2, h=4): centre square = rows 1..2. */
    const uint8_t b[] = {1, 2, 3, 4, 5, 6, 7, 8};
    prep(b, 2, 4, 1, 1, 2, out);
    const uint8_t eb[] = {3, 4, 5, 6};
    ck_assert_mem_eq(out, eb, 4);
    /* 5x4: the crop starts half a pixel in, so output x = mean of source
     * columns x and x + 1; with column j = 10 j that is 10 x + 5. */
    uint8_t c[20];
    for (int y = 0; y < 4; y++)
        for (int x = 0; x < 5; x++) c[y * 5 + x] = (uint8_t)(10 * x);
    prep(c, 5, 4, 1, 1, 4, out);
    for (int y = 0; y < 4; y++)
        for (int x = 0; x < 4; x++) ck_assert_uint_eq(out[y * 4 + x], 10 * x + 5);
    /* size 0 keeps the native, non-square size untouched. */
    prep(a, 4, 2, 1, 1, 0, out);
    ck_assert_mem_eq(out, a, 8);
}
END_TEST

START_TEST(test_channel_conversion)
{
    uint8_t out[16];
    /* BT.601 luma: 0.299 * 10 + 0.587 * 200 + 0.114 * 30 = 123.81 -> 124. */
    const uint8_t rgb[] = {10, 200, 30};
    prep(rgb, 1, 1, 3, 1, 0, out);
    ck_assert_uint_eq(out[0], 124);
    /* White stays 255 (weights sum to 1). */
    const uint8_t white[] = {255, 255, 255, 255};
    prep(white, 1, 1, 4, 1, 0, out);
    ck_assert_uint_eq(out[0], 255);
    /* Gray -> RGB replicates. */
    const uint8_t g[] = {77};
    prep(g, 1, 1, 1, 3, 0, out);
    ck_assert_uint_eq(out[0], 77);
    ck_assert_uint_eq(out[1], 77);
    ck_assert_uint_eq(out[2], 77);
    /* Gray + alpha -> gray drops alpha. */
    const uint8_t ga[] = {33, 0};
    prep(ga, 1, 1, 2, 1, 0, out);
    ck_assert_uint_eq(out[0], 33);
    /* RGBA -> RGB, planar output [C, H, W]: two pixels (1,2,3,a), (4,5,6,a). */
    const uint8_t rgba[] = {1, 2, 3, 9, 4, 5, 6, 9};
    prep(rgba, 2, 1, 4, 3, 0, out);
    const uint8_t planar[] = {1, 4, 2, 5, 3, 6};
    ck_assert_mem_eq(out, planar, 6);
    /* Bad arguments. */
    sd_image img = {1, 1, 3, (uint8_t *)rgb};
    ck_assert_int_eq(sd_image_prepare(&img, 2, 0, out), SD_ERR_INVALID);
    ASSERT_MSG_HAS("channels");
}
END_TEST

/* ---- image folders ---- */

START_TEST(test_folder_all_formats)
{
    /* One constant-colour image per format; the sort order of the paths fixes
     * the item order: a/1.png < a/2.bmp < b/c/3.jpg < b/c/4.pgm < b/c/5.ppm. */
    mkdir_rel("a");
    mkdir_rel("b");
    mkdir_rel("b/c");
    write_gray_png(P("a/1.png"), 8, 6, 10);
    write_bmp_rgb(P("a/2.bmp"), 7, 6, 200, 100, 50); /* odd width: row padding */
    write_bytes(P("b/c/3.jpg"), jpeg_flat_8x6, sizeof jpeg_flat_8x6);
    /* Binary PGM (P5) and PPM (P6) written by hand. */
    uint8_t pgm[64] = "P5\n8 6\n255\n";
    size_t hl = strlen((char *)pgm);
    memset(pgm + hl, 60, 48);
    write_bytes(P("b/c/4.pgm"), pgm, hl + 48);
    uint8_t ppm[256] = "P6\n8 6\n255\n";
    hl = strlen((char *)ppm);
    for (int i = 0; i < 48; i++) {
        ppm[hl + 3 * i] = 0;
        ppm[hl + 3 * i + 1] = 255;
        ppm[hl + 3 * i + 2] = 0;
    }
    write_bytes(P("b/c/5.ppm"), ppm, hl + 144);
    write_text(P("b/readme.txt"), "not an image");
    write_text(P(".hidden.png"), "ignored");

    warn_log wl = {0};
    sd_image_opts o = {.channels = 3, .size = 4, .warn = capture_warn, .warn_ctx = &wl};
    sd_dataset ds;
    ck_assert_int_eq(sd_data_load_images(g_root, &o, &ds), SD_OK);
    ck_assert_int_eq(wl.count, 0);
    ck_assert_int_eq(ds.kind, SD_DATA_IMAGES);
    ck_assert_uint_eq(ds.n, 5);
    ck_assert_int_eq(ds.c, 3);
    ck_assert_int_eq(ds.h, 4);
    ck_assert_int_eq(ds.w, 4);
    ck_assert_uint_eq(ds.summary.candidates, 5);
    ck_assert_uint_eq(ds.summary.loaded, 5);
    ck_assert_uint_eq(ds.summary.skipped, 0);
    ck_assert_uint_eq(ds.summary.ignored, 2);
    /* Expected (R, G, B) of each item; constant images stay constant under
     * the area filter. JPEG is lossy: a flat 128 block decodes within +-2. */
    const int expect[5][3] = {{10, 10, 10}, {200, 100, 50}, {128, 128, 128}, {60, 60, 60}, {0, 255, 0}};
    for (int i = 0; i < 5; i++)
        for (int c = 0; c < 3; c++)
            for (int p = 0; p < 16; p++) {
                int v = ds.pixels[((size_t)i * 3 + (size_t)c) * 16 + (size_t)p];
                int tol = i == 2 ? 2 : 0;
                ck_assert_msg(abs(v - expect[i][c]) <= tol, "item %d channel %d: %d vs %d", i, c,
                              v, expect[i][c]);
            }
    sd_dataset_free(&ds);

    /* Gray conversion of the same folder: the BMP (200, 100, 50) becomes
     * 0.299 * 200 + 0.587 * 100 + 0.114 * 50 = 124.2 -> 124. */
    o.channels = 1;
    ck_assert_int_eq(sd_data_load(g_root, &o, &ds), SD_OK);
    ck_assert_uint_eq(ds.n, 5);
    ck_assert_uint_eq(ds.pixels[16], 124);
    ck_assert_uint_eq(ds.pixels[4 * 16], 150); /* 0.587 * 255 = 149.7 */
    sd_dataset_free(&ds);
}
END_TEST

START_TEST(test_native_size_and_mismatch)
{
    uint8_t px[6 * 4];
    for (int i = 0; i < 24; i++) px[i] = (uint8_t)(i * 10);
    ck_assert_int_eq(sd_image_write_png(P("a.png"), 6, 4, 1, px), SD_OK);
    ck_assert_int_eq(sd_image_write_png(P("b.png"), 6, 4, 1, px), SD_OK);
    sd_image_opts o = {.channels = 1, .size = 0};
    sd_dataset ds;
    ck_assert_int_eq(sd_data_load_images(g_root, &o, &ds), SD_OK);
    ck_assert_uint_eq(ds.n, 2);
    ck_assert_int_eq(ds.h, 4);
    ck_assert_int_eq(ds.w, 6);
    ck_assert_mem_eq(ds.pixels, px, 24);
    ck_assert_mem_eq(ds.pixels + 24, px, 24);
    sd_dataset_free(&ds);

    /* A third image of another size: a clear error naming it and a.png. */
    write_gray_png(P("c.png"), 5, 4, 7);
    ck_assert_int_eq(sd_data_load_images(g_root, &o, &ds), SD_ERR_FORMAT);
    ASSERT_MSG_HAS("c.png: size 5x4 differs from 6x4");
    ASSERT_MSG_HAS("a.png");
    ASSERT_MSG_HAS("--size");
    ck_assert_ptr_null(ds.pixels);
    /* With a target size they all load. */
    o.size = 3;
    ck_assert_int_eq(sd_data_load_images(g_root, &o, &ds), SD_OK);
    ck_assert_uint_eq(ds.n, 3);
    sd_dataset_free(&ds);
}
END_TEST

START_TEST(test_empty_and_imageless_folders)
{
    sd_image_opts o = {.channels = 1, .size = 8};
    sd_dataset ds;
    mkdir_rel("empty");
    ck_assert_int_eq(sd_data_load_images(P("empty"), &o, &ds), SD_ERR_FORMAT);
    ASSERT_MSG_HAS("no PNG, JPEG, BMP or PNM image found");
    ck_assert_ptr_null(ds.pixels);

    mkdir_rel("text");
    write_text(P("text/a.txt"), "hello");
    write_text(P("text/b.txt"), "world");
    ck_assert_int_eq(sd_data_load(P("text"), &o, &ds), SD_ERR_FORMAT);
    ASSERT_MSG_HAS("no PNG, JPEG, BMP or PNM image found (2 other files ignored)");

    /* Only a zero-byte image: a warning, then "none could be decoded". */
    mkdir_rel("zero");
    write_bytes(P("zero/z.png"), "", 0);
    warn_log wl = {0};
    o.warn = capture_warn;
    o.warn_ctx = &wl;
    ck_assert_int_eq(sd_data_load_images(P("zero"), &o, &ds), SD_ERR_FORMAT);
    ASSERT_MSG_HAS("none of the 1 image files could be decoded");
    ck_assert_int_eq(wl.count, 1);
    ck_assert_msg(strstr(wl.last, "z.png: empty file") != NULL, "%s", wl.last);
    ck_assert_uint_eq(ds.summary.skipped, 1);

    /* Missing paths and non-directories. */
    ck_assert_int_eq(sd_data_load_images(P("nope"), &o, &ds), SD_ERR_IO);
    ASSERT_MSG_HAS("nope");
    ck_assert_int_eq(sd_data_load(P("text/a.txt"), &o, &ds), SD_ERR_INVALID);
    ASSERT_MSG_HAS("not a directory of images or a .csv file");
    o.channels = 2;
    ck_assert_int_eq(sd_data_load_images(P("text"), &o, &ds), SD_ERR_INVALID);
}
END_TEST

/* In a child running as uid/gid 65534: load g_root, which holds a chmod 000
 * "locked" directory. 0 if the load failed with SD_ERR_IO naming it, 1 if it
 * did not, 2 if the privileges could not be dropped (a failure too: the case
 * must run). No ck_assert in the child: it only exits with the verdict. */
static int as_nobody_load_locked(const sd_image_opts *o)
{
    fflush(NULL);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        if (setgid(65534) != 0 || setuid(65534) != 0) _exit(2);
        sd_dataset ds;
        sd_status st = sd_data_load_images(g_root, o, &ds);
        if (st == SD_OK) sd_dataset_free(&ds);
        _exit(st == SD_ERR_IO && strstr(sd_error_message(), "locked: cannot read directory")
                  ? 0 : 1);
    }
    int status = 0;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    ck_assert(WIFEXITED(status));
    return WEXITSTATUS(status);
}

/* A subdirectory that cannot be read is an error naming it, not a silent
 * skip. As root (CI) permissions do not stop opendir, so the unreadable
 * directory is one whose path exceeds PATH_MAX (ENAMETOOLONG), built with
 * mkdirat; as another user, also a chmod 000 directory. */
START_TEST(test_unreadable_directory)
{
    write_gray_png(P("ok.png"), 4, 4, 1);
    enum { LEVELS = 17 };
    char name[256];
    memset(name, 'd', 255);
    name[255] = '\0';
    int fds[LEVELS + 1];
    fds[0] = open(g_root, O_RDONLY | O_DIRECTORY);
    ck_assert_int_ge(fds[0], 0);
    for (int i = 0; i < LEVELS; i++) {
        ck_assert_int_eq(mkdirat(fds[i], name, 0755), 0);
        fds[i + 1] = openat(fds[i], name, O_RDONLY | O_DIRECTORY);
        ck_assert_int_ge(fds[i + 1], 0);
    }
    sd_image_opts o = {.channels = 1, .size = 4};
    sd_dataset ds;
    ck_assert_int_eq(sd_data_load_images(g_root, &o, &ds), SD_ERR_IO);
    ASSERT_MSG_HAS("cannot read directory");
    ck_assert_ptr_null(ds.pixels);
    for (int i = LEVELS - 1; i >= 0; i--) {
        close(fds[i + 1]);
        ck_assert_int_eq(unlinkat(fds[i], name, AT_REMOVEDIR), 0);
    }
    close(fds[0]);
    ck_assert_int_eq(sd_data_load_images(g_root, &o, &ds), SD_OK);
    sd_dataset_free(&ds);

    /* A chmod 000 directory. Root reads it regardless, so as root the load
     * runs in a child that has dropped to uid/gid 65534 ("nobody"). */
    mkdir_rel("locked");
    ck_assert_int_eq(chmod(P("locked"), 0), 0);
    if (geteuid() != 0) {
        ck_assert_int_eq(sd_data_load_images(g_root, &o, &ds), SD_ERR_IO);
        ASSERT_MSG_HAS("locked: cannot read directory");
    } else {
        ck_assert_int_eq(chmod(g_root, 0755), 0); /* mkdtemp's 0700 would stop nobody at once */
        ck_assert_int_eq(as_nobody_load_locked(&o), 0);
    }
    chmod(P("locked"), 0755);
}
END_TEST

START_TEST(test_bad_files_skipped)
{
    /* Three good images, then: a truncated PNG, a zero-byte file, a PNG
     * header claiming 100000 x 100000, text named .jpg, an unsupported P2 PGM
     * and a dangling symlink. Each is skipped with one warning and counted. */
    write_gray_png(P("g1.png"), 8, 8, 11);
    write_gray_png(P("g2.png"), 8, 8, 22);
    write_gray_png(P("g3.png"), 8, 8, 33);
    uint8_t noise[16 * 16];
    sd_rng r;
    sd_rng_init(&r, 5, 1);
    for (size_t i = 0; i < sizeof noise; i++) noise[i] = (uint8_t)sd_rng_u64(&r);
    ck_assert_int_eq(sd_image_write_png(P("full.png"), 16, 16, 1, noise), SD_OK);
    size_t len;
    uint8_t *full = read_bytes(P("full.png"), &len);
    write_bytes(P("t_trunc.png"), full, len / 2);
    free(full);
    ck_assert_int_eq(remove(P("full.png")), 0);
    write_bytes(P("t_zero.png"), "", 0);
    uint8_t hdr[64];
    size_t hl = make_png_header_only(hdr, 100000, 100000);
    write_bytes(P("t_huge.png"), hdr, hl);
    write_text(P("t_text.jpg"), "this is not a JPEG\n");
    write_text(P("t_ascii.pgm"), "P2\n2 2\n255\n0 1 2 3\n");
    ck_assert_int_eq(symlink(P("missing.png"), P("t_dangling.png")), 0);

    warn_log wl = {0};
    sd_image_opts o = {.channels = 1, .size = 4, .warn = capture_warn, .warn_ctx = &wl};
    sd_dataset ds;
    ck_assert_int_eq(sd_data_load_images(g_root, &o, &ds), SD_OK);
    ck_assert_uint_eq(ds.n, 3);
    ck_assert_uint_eq(ds.summary.candidates, 9);
    ck_assert_uint_eq(ds.summary.loaded, 3);
    ck_assert_uint_eq(ds.summary.skipped, 6);
    ck_assert_int_eq(wl.count, 6);
    ck_assert_uint_eq(ds.pixels[0], 11);
    ck_assert_uint_eq(ds.pixels[16], 22);
    ck_assert_uint_eq(ds.pixels[32], 33);
    /* The last warning (sorted order) is for t_zero.png. */
    ck_assert_msg(strstr(wl.last, "t_zero.png: empty file") != NULL, "%s", wl.last);
    sd_dataset_free(&ds);
}
END_TEST

START_TEST(test_decode_rejects)
{
    sd_image img;
    uint8_t hdr[64];
    /* Absurd header: rejected by the header check, before any decoding. */
    size_t hl = make_png_header_only(hdr, 100000, 100000);
    ck_assert_int_eq(sd_image_decode(hdr, hl, &img), SD_ERR_FORMAT);
    ASSERT_MSG_HAS("PNG header claims 100000 x 100000 pixels");
    ck_assert_ptr_null(img.pixels);
    /* Within the side limit but over the pixel budget (16384^2 > 2^24). */
    hl = make_png_header_only(hdr, 16384, 16384);
    ck_assert_int_eq(sd_image_decode(hdr, hl, &img), SD_ERR_FORMAT);
    ASSERT_MSG_HAS("16384 x 16384");
    /* Sane header, no image data: stb's decoder reports the failure. */
    hl = make_png_header_only(hdr, 4, 4);
    ck_assert_int_eq(sd_image_decode(hdr, hl, &img), SD_ERR_FORMAT);
    ASSERT_MSG_HAS("cannot decode PNG");
    /* A BMP header claiming 100000 x 100000 (no IHDR shortcut: stbi_info and
     * the pixel budget reject it). */
    uint8_t bmp[54] = {'B', 'M'};
    bmp[10] = 54;        /* pixel data offset */
    bmp[14] = 40;        /* BITMAPINFOHEADER */
    bmp[18] = 0xA0;      /* width 100000 = 0x186A0 */
    bmp[19] = 0x86;
    bmp[20] = 0x01;
    bmp[22] = 0xA0;      /* height 100000 */
    bmp[23] = 0x86;
    bmp[24] = 0x01;
    bmp[26] = 1;         /* planes */
    bmp[28] = 24;        /* bpp */
    ck_assert_int_eq(sd_image_decode(bmp, sizeof bmp, &img), SD_ERR_FORMAT);
    ck_assert_msg(strstr(sd_error_message(), "100000 x 100000") ||
                      strstr(sd_error_message(), "corrupt BMP header"),
                  "%s", sd_error_message());
    ck_assert_int_eq(sd_image_decode(hdr, 0, &img), SD_ERR_FORMAT);
    ASSERT_MSG_HAS("empty file");
    /* A valid progressive JPEG decodes; the same bytes cut short do not
     * crash (stb may then return a partial image or an error). */
    ck_assert_int_eq(sd_image_decode(jpeg_prog_12x10, sizeof jpeg_prog_12x10, &img), SD_OK);
    ck_assert_int_eq(img.w, 12);
    ck_assert_int_eq(img.h, 10);
    ck_assert_int_eq(img.comp, 1);
    /* Smooth region away from the mod-256 wrap: pixel (2, 1) = 40 +- 8. */
    ck_assert_int_le(abs((int)img.pixels[1 * 12 + 2] - 40), 8);
    sd_image_free(&img);
    ck_assert_ptr_null(img.pixels);
    for (size_t cut = 1; cut < sizeof jpeg_prog_12x10; cut += 7) {
        if (sd_image_decode(jpeg_prog_12x10, cut, &img) == SD_OK) sd_image_free(&img);
    }
    ck_assert_int_eq(sd_image_decode((const uint8_t *)"GIF89a", 6, &img), SD_ERR_FORMAT);
    ASSERT_MSG_HAS("not a PNG, JPEG, BMP or PNM image");
}
END_TEST

/* PNG chunk: length, type, data, CRC32 over type + data. */
static size_t put_chunk(uint8_t *b, const char *type, const uint8_t *data, uint32_t len)
{
    put_be32(b, len);
    memcpy(b + 4, type, 4);
    if (len) memcpy(b + 8, data, len);
    /* Over b + 4, not (type, data): zlib's crc32(crc, NULL, 0) returns 0,
     * not crc, so an empty IEND got CRC 0, which the decoder now refuses. */
    put_be32(b + 8 + len, (uint32_t)crc32(0, b + 4, len + 4));
    return 12 + len;
}

/* A w x h 8-bit gray PNG whose IDAT carries `raw` (already filtered rows),
 * deflated by zlib. Returns the file size. */
static size_t make_png_raw(uint8_t *b, uint32_t w, uint32_t h, const uint8_t *raw, size_t raw_len)
{
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
    uint8_t ihdr[13] = {0};
    put_be32(ihdr, w);
    put_be32(ihdr + 4, h);
    ihdr[8] = 8;
    memcpy(b, sig, 8);
    size_t n = 8 + put_chunk(b + 8, "IHDR", ihdr, 13);
    uLongf zlen = compressBound(raw_len);
    uint8_t *z = malloc(zlen);
    ck_assert_int_eq(compress2(z, &zlen, raw, raw_len, 9), Z_OK);
    n += put_chunk(b + n, "IDAT", z, (uint32_t)zlen);
    free(z);
    n += put_chunk(b + n, "IEND", NULL, 0);
    return n;
}

/* Inputs that reach known bugs of Debian's stb_image 2.27 are refused by our
 * structure checks before stb sees them (see lib/io/stb_image_impl.c). */
START_TEST(test_decode_stb_screens)
{
    sd_image img;
    static uint8_t b[1 << 16];
    /* JPEG: a DHT whose counts sum to 510 codes (stb would overflow its
     * 256-entry tables). The flat JPEG's first DHT is at offset 0x66. */
    memcpy(b, jpeg_flat_8x6, sizeof jpeg_flat_8x6);
    ck_assert_uint_eq(b[0x66], 0xFF);
    ck_assert_uint_eq(b[0x67], 0xC4);
    b[0x6B] = 0xFF; /* counts[0] (after the length and the class/id byte) */
    b[0x6C] = 0xFF; /* counts[1] */
    ck_assert_int_eq(sd_image_decode(b, sizeof jpeg_flat_8x6, &img), SD_ERR_FORMAT);
    ASSERT_MSG_HAS("DHT defines more than 256 codes");
    /* Headers but no scan: SOI ... DHT, then EOI instead of SOS. */
    size_t sos = 0;
    for (size_t i = 0; i + 1 < sizeof jpeg_flat_8x6; i++)
        if (jpeg_flat_8x6[i] == 0xFF && jpeg_flat_8x6[i + 1] == 0xDA) sos = i;
    ck_assert_uint_gt(sos, 0);
    memcpy(b, jpeg_flat_8x6, sos);
    b[sos] = 0xFF;
    b[sos + 1] = 0xD9;
    ck_assert_int_eq(sd_image_decode(b, sos + 2, &img), SD_ERR_FORMAT);
    ASSERT_MSG_HAS("no scan");
    /* The unmodified file decodes to its flat 128 (+-2). */
    ck_assert_int_eq(sd_image_decode(jpeg_flat_8x6, sizeof jpeg_flat_8x6, &img), SD_OK);
    ck_assert_int_le(abs((int)img.pixels[0] - 128), 2);
    sd_image_free(&img);

    /* PNM: a width whose digits overflow int, and short pixel data. */
    const char *pnm_big = "P5\n99999999999 1\n255\n";
    ck_assert_int_eq(sd_image_decode((const uint8_t *)pnm_big, strlen(pnm_big), &img), SD_ERR_FORMAT);
    ASSERT_MSG_HAS("number too large");
    const char *pnm_short = "P6\n4 4\n255\n0123456789";
    ck_assert_int_eq(sd_image_decode((const uint8_t *)pnm_short, strlen(pnm_short), &img), SD_ERR_FORMAT);
    ASSERT_MSG_HAS("truncated PNM");
    const char *pnm_ok = "P5 # c\n2 1\n255\n\x10\x20";
    ck_assert_int_eq(sd_image_decode((const uint8_t *)pnm_ok, strlen(pnm_ok) + 0, &img), SD_OK);
    ck_assert_uint_eq(img.pixels[0], 0x10);
    ck_assert_uint_eq(img.pixels[1], 0x20);
    sd_image_free(&img);

    /* PNG: a 4x4 gray image, as reference. */
    uint8_t raw[4 * 5] = {0};
    for (int y = 0; y < 4; y++)
        for (int x = 0; x < 4; x++) raw[y * 5 + 1 + x] = (uint8_t)(16 * y + x);
    size_t n = make_png_raw(b, 4, 4, raw, sizeof raw);
    ck_assert_int_eq(sd_image_decode(b, n, &img), SD_OK);
    ck_assert_uint_eq(img.pixels[15], 16 * 3 + 3);
    sd_image_free(&img);
    /* A zip bomb: 4x4 declared, 1 MiB of zeros deflated to ~1 KiB. */
    size_t bomb_len = 1 << 20;
    uint8_t *bomb = calloc(1, bomb_len);
    n = make_png_raw(b, 4, 4, bomb, bomb_len);
    free(bomb);
    ck_assert_uint_lt(n, 4096);
    ck_assert_int_eq(sd_image_decode(b, n, &img), SD_ERR_FORMAT);
    ASSERT_MSG_HAS("inflates beyond");
    /* An IDAT claiming 1 GiB in a tiny file (stb would allocate first). */
    n = make_png_raw(b, 4, 4, raw, sizeof raw);
    put_be32(b + 33, 1u << 30);
    ck_assert_int_eq(sd_image_decode(b, n, &img), SD_ERR_FORMAT);
    ASSERT_MSG_HAS("runs past the end");
    /* A zero-length first IDAT. */
    n = make_png_header_only(b, 4, 4) - 12; /* drop IEND */
    n += put_chunk(b + n, "IDAT", NULL, 0);
    n += put_chunk(b + n, "IEND", NULL, 0);
    ck_assert_int_eq(sd_image_decode(b, n, &img), SD_ERR_FORMAT);
    ASSERT_MSG_HAS("empty first IDAT");
}
END_TEST

/* ---- CSV ---- */

START_TEST(test_csv_good)
{
    write_text(P("pts.csv"),
               "\xEF\xBB\xBFx,y\r\n"
               "# a comment line\n"
               "1.5, -2\r\n"
               "\n"
               "   3e2\t4   # trailing comment\n"
               "-0.25,0x1p-2\n");
    sd_dataset ds;
    ck_assert_int_eq(sd_data_load(P("pts.csv"), NULL, &ds), SD_OK);
    ck_assert_int_eq(ds.kind, SD_DATA_POINTS);
    ck_assert_uint_eq(ds.n, 3);
    ck_assert_int_eq(ds.c, 2);
    ck_assert_uint_eq(sd_dataset_item_size(&ds), 2);
    const float e[] = {1.5f, -2.0f, 300.0f, 4.0f, -0.25f, 0.25f};
    for (int i = 0; i < 6; i++) ck_assert_float_eq(ds.points[i], e[i]);
    sd_dataset_free(&ds);
    /* No header, one column. */
    write_text(P("one.csv"), "1\n2\n3\n");
    ck_assert_int_eq(sd_data_load_csv(P("one.csv"), &ds), SD_OK);
    ck_assert_uint_eq(ds.n, 3);
    ck_assert_int_eq(ds.c, 1);
    ck_assert_float_eq(ds.points[2], 3.0f);
    sd_dataset_free(&ds);
}
END_TEST

static void csv_fails(const char *name, const char *text, const char *msg)
{
    write_text(P(name), text);
    sd_dataset ds;
    ck_assert_int_eq(sd_data_load_csv(P(name), &ds), SD_ERR_FORMAT);
    ASSERT_MSG_HAS(msg);
    ck_assert_ptr_null(ds.points);
}

START_TEST(test_csv_malformed)
{
    csv_fails("count.csv", "x,y\n1,2\n3,4\n5,6,7\n", "count.csv:4: expected 2 values, got 3");
    csv_fails("few.csv", "1,2\n3\n", "few.csv:2: expected 2 values, got 1");
    csv_fails("word.csv", "1,2\n3,abc\n", "word.csv:2: field 2 'abc' is not a number");
    csv_fails("suffix.csv", "1,2\n3,4kg\n", "suffix.csv:2: field 2 '4kg' is not a number");
    csv_fails("late_header.csv", "# c\nx,y\n1,2\n", "late_header.csv:2: field 1 'x' is not a number");
    csv_fails("nan.csv", "1,nan\n", "nan.csv:1: field 2 'nan' is not a finite float");
    csv_fails("big.csv", "1,1e39\n", "big.csv:1: field 2 '1e39' is not a finite float");
    csv_fails("empty_field.csv", "1,,2\n", "empty_field.csv:1: field 2 is empty");
    csv_fails("trailing.csv", "1,2,\n", "trailing.csv:1: field 3 is empty");
    csv_fails("empty.csv", "", "empty.csv: no data points");
    csv_fails("header_only.csv", "a,b\n# nothing\n", "header_only.csv: no data points");
    write_bytes(P("nul.csv"), "1,2\n3\0,4\n", 9);
    sd_dataset ds;
    ck_assert_int_eq(sd_data_load_csv(P("nul.csv"), &ds), SD_ERR_FORMAT);
    ASSERT_MSG_HAS("nul.csv:2: line contains a NUL byte");
    ck_assert_int_eq(sd_data_load_csv(P("missing.csv"), &ds), SD_ERR_IO);
    ASSERT_MSG_HAS("missing.csv: cannot open");
}
END_TEST

/* ---- loader ---- */

/* n images of 1 x 3 x 5: item i has pixel p = 30 i + p (all distinct per
 * item, so an item and its orientation can be recognised from its bytes). */
static void make_image_ds(sd_dataset *ds, size_t n)
{
    memset(ds, 0, sizeof *ds);
    ds->kind = SD_DATA_IMAGES;
    ds->n = n;
    ds->c = 1;
    ds->h = 3;
    ds->w = 5;
    ds->pixels = sd_malloc(n * 15);
    ck_assert_ptr_nonnull(ds->pixels);
    for (size_t i = 0; i < n; i++)
        for (int p = 0; p < 15; p++) ds->pixels[i * 15 + (size_t)p] = (uint8_t)(30 * i + (size_t)p);
}

/* Copies of batches 0..steps-1 of a fresh loader. */
static float *run_loader(const sd_dataset *ds, sd_loader_opts o, int steps)
{
    sd_loader *ld;
    ck_assert_int_eq(sd_loader_new(ds, &o, &ld), SD_OK);
    size_t F = sd_dataset_item_size(ds) * o.batch;
    float *all = malloc(F * (size_t)steps * sizeof *all);
    for (int s = 0; s < steps; s++) {
        ck_assert_uint_eq(sd_loader_step(ld), (uint64_t)s);
        memcpy(all + F * (size_t)s, sd_loader_next(ld), F * sizeof *all);
    }
    sd_loader_free(ld);
    return all;
}

START_TEST(test_loader_deterministic)
{
    sd_dataset ds;
    make_image_ds(&ds, 7);
    sd_loader_opts o = {.batch = 3, .seed = 42, .dequant = 1, .hflip = 1, .threaded = 0};
    const int steps = 25;
    const size_t F = 15 * 3;
    float *a = run_loader(&ds, o, steps);
    float *b = run_loader(&ds, o, steps);
    ck_assert_mem_eq(a, b, F * steps * sizeof *a);
    o.threaded = 1;
    float *t = run_loader(&ds, o, steps);
    ck_assert_mem_eq(a, t, F * steps * sizeof *a);
    o.seed = 43;
    float *c = run_loader(&ds, o, steps);
    ck_assert(memcmp(a, c, F * steps * sizeof *a) != 0);

    /* seek(k) reproduces batch k, threaded or not, forwards and backwards. */
    for (int threaded = 0; threaded <= 1; threaded++) {
        o.seed = 42;
        o.threaded = threaded;
        sd_loader *ld;
        ck_assert_int_eq(sd_loader_new(&ds, &o, &ld), SD_OK);
        const int order[] = {13, 14, 3, 24, 0, 1, 2, 20};
        for (int i = 0; i < 8; i++) {
            if (i == 0 || order[i] != order[i - 1] + 1) sd_loader_seek(ld, (uint64_t)order[i]);
            const float *x = sd_loader_next(ld);
            ck_assert_mem_eq(x, a + F * (size_t)order[i], F * sizeof *x);
            ck_assert_uint_eq(sd_loader_step(ld), (uint64_t)order[i] + 1);
        }
        ck_assert_double_eq_tol(sd_loader_epoch(ld), 21.0 * 3 / 7, 1e-12);
        sd_loader_free(ld);
    }
    free(a);
    free(b);
    free(t);
    free(c);
    sd_dataset_free(&ds);
}
END_TEST

START_TEST(test_loader_values_and_flips)
{
    sd_dataset ds;
    make_image_ds(&ds, 5);
    sd_loader_opts o = {.batch = 8, .seed = 7, .dequant = 1, .hflip = 1, .threaded = 1};
    const int steps = 50;
    float *a = run_loader(&ds, o, steps);
    int flipped = 0;
    double frac_sum = 0.0;
    size_t nvals = 0;
    for (int item = 0; item < steps * 8; item++) {
        const float *x = a + (size_t)item * 15;
        /* Each value lies in its byte's bin [k/256, (k+1)/256). */
        int k0 = (int)floorf(x[0] * 256.0f);
        /* Identify item and orientation: pixel (0,0) is 30 i (plain) or
         * 30 i + 4 (mirrored). */
        int idx = k0 / 30;
        int fl = (k0 % 30) == 4;
        ck_assert_msg((k0 % 30) == 0 || (k0 % 30) == 4, "unexpected first byte %d", k0);
        flipped += fl;
        for (int y = 0; y < 3; y++)
            for (int xx = 0; xx < 5; xx++) {
                int src = fl ? 4 - xx : xx;
                int k = 30 * idx + y * 5 + src;
                float v = x[y * 5 + xx];
                ck_assert_msg(v >= k / 256.0f && v < (k + 1) / 256.0f, "value %g not in bin %d", v, k);
                frac_sum += v * 256.0 - k;
                nvals++;
            }
    }
    /* Flips ~ Binomial(400, 1/2): mean 200, sd 10; 5 sd bounds. */
    ck_assert_int_gt(flipped, 150);
    ck_assert_int_lt(flipped, 250);
    /* u ~ U[0,1): mean 1/2, sd of the mean sqrt(1/12 / 6000) ~ 0.0037. */
    ck_assert_double_eq_tol(frac_sum / (double)nvals, 0.5, 0.02);
    free(a);

    /* Without dequantisation or flips: exactly the bin centres, unflipped. */
    o.dequant = 0;
    o.hflip = 0;
    a = run_loader(&ds, o, 3);
    for (int item = 0; item < 24; item++) {
        const float *x = a + item * 15;
        int k0 = (int)floorf(x[0] * 256.0f);
        ck_assert_int_eq(k0 % 30, 0);
        for (int p = 0; p < 15; p++) ck_assert_float_eq(x[p], (k0 + p + 0.5f) / 256.0f);
    }
    free(a);
    sd_dataset_free(&ds);
}
END_TEST

START_TEST(test_loader_epochs_are_permutations)
{
    /* Points whose single value is their index; B = 4 does not divide N = 10,
     * so batches straddle epochs. Each run of 10 stream positions must be a
     * permutation, and the epochs must not all share one order. */
    sd_dataset ds = {0};
    ds.kind = SD_DATA_POINTS;
    ds.n = 10;
    ds.c = 1;
    ds.h = ds.w = 1;
    ds.points = sd_malloc(10 * sizeof(float));
    for (int i = 0; i < 10; i++) ds.points[i] = (float)i;
    for (int threaded = 0; threaded <= 1; threaded++) {
        sd_loader_opts o = {.batch = 4, .seed = 1, .threaded = threaded};
        float *a = run_loader(&ds, o, 25); /* 100 positions = 10 epochs */
        int differs = 0;
        for (int e = 0; e < 10; e++) {
            int seen[10] = {0};
            for (int i = 0; i < 10; i++) seen[(int)a[e * 10 + i]]++;
            for (int i = 0; i < 10; i++) ck_assert_int_eq(seen[i], 1);
            if (e > 0) differs |= memcmp(a + e * 10, a, 10 * sizeof *a) != 0;
        }
        ck_assert(differs);
        free(a);
    }
    /* A batch larger than the data set spans several epochs. */
    sd_loader_opts o = {.batch = 25, .seed = 3};
    float *a = run_loader(&ds, o, 2);
    for (int e = 0; e < 5; e++) {
        int seen[10] = {0};
        for (int i = 0; i < 10; i++) seen[(int)a[e * 10 + i]]++;
        for (int i = 0; i < 10; i++) ck_assert_int_eq(seen[i], 1);
    }
    free(a);
    /* Bad options. */
    sd_loader *ld;
    o.batch = 0;
    ck_assert_int_eq(sd_loader_new(&ds, &o, &ld), SD_ERR_INVALID);
    ASSERT_MSG_HAS("batch size");
    ck_assert_ptr_null(ld);
    sd_dataset_free(&ds);
}
END_TEST

/* ---- IDX ---- */

static void write_idx_gz(const char *path, const uint8_t *buf, size_t len)
{
    gzFile gz = gzopen(path, "wb");
    ck_assert_ptr_nonnull(gz);
    ck_assert_int_eq(gzwrite(gz, buf, (unsigned)len), (int)len);
    ck_assert_int_eq(gzclose(gz), Z_OK);
}

START_TEST(test_idx_round_trip)
{
    /* 3 images of 2 x 4: header 00 00 08 03, then 3, 2, 4 big-endian. */
    uint8_t f[16 + 24];
    memset(f, 0, 16);
    f[2] = 0x08;
    f[3] = 3;
    put_be32(f + 4, 3);
    put_be32(f + 8, 2);
    put_be32(f + 12, 4);
    for (int i = 0; i < 24; i++) f[16 + i] = (uint8_t)(i * 11);
    write_bytes(P("plain-idx3-ubyte"), f, sizeof f);
    write_idx_gz(P("gz-idx3-ubyte.gz"), f, sizeof f);
    const char *names[2] = {"plain-idx3-ubyte", "gz-idx3-ubyte.gz"};
    for (int k = 0; k < 2; k++) {
        sd_idx idx;
        ck_assert_int_eq(sd_idx_read(P(names[k]), &idx), SD_OK);
        ck_assert_int_eq(idx.ndim, 3);
        ck_assert_uint_eq(idx.dims[0], 3);
        ck_assert_uint_eq(idx.dims[1], 2);
        ck_assert_uint_eq(idx.dims[2], 4);
        ck_assert_uint_eq(idx.size, 24);
        ck_assert_mem_eq(idx.data, f + 16, 24);
        sd_idx_free(&idx);
    }
    size_t written = 0;
    ck_assert_int_eq(sd_idx_convert(P("gz-idx3-ubyte.gz"), P("png"), &written), SD_OK);
    ck_assert_uint_eq(written, 3);
    ck_assert_int_eq(access(P("png/00000.png"), F_OK), 0);
    ck_assert_int_eq(access(P("png/00002.png"), F_OK), 0);
    /* Converting again overwrites in place (the directory may exist). */
    ck_assert_int_eq(sd_idx_convert(P("plain-idx3-ubyte"), P("png"), NULL), SD_OK);
    /* The folder loads back, in order, bit-exact at native size. */
    sd_image_opts o = {.channels = 1, .size = 0};
    sd_dataset ds;
    ck_assert_int_eq(sd_data_load_images(P("png"), &o, &ds), SD_OK);
    ck_assert_uint_eq(ds.n, 3);
    ck_assert_int_eq(ds.h, 2);
    ck_assert_int_eq(ds.w, 4);
    ck_assert_uint_eq(ds.summary.ignored, 0); /* no temporary files left */
    ck_assert_mem_eq(ds.pixels, f + 16, 24);
    sd_dataset_free(&ds);

    /* Labels (1-D) are readable but not convertible to images. */
    uint8_t lab[8 + 3] = {0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9};
    write_bytes(P("labels"), lab, sizeof lab);
    ck_assert_int_eq(sd_idx_convert(P("labels"), P("png2"), NULL), SD_ERR_FORMAT);
    ASSERT_MSG_HAS("expected an IDX image file");
}
END_TEST

START_TEST(test_idx_malformed)
{
    uint8_t f[16 + 24];
    memset(f, 0, 16);
    f[2] = 0x08;
    f[3] = 3;
    put_be32(f + 4, 3);
    put_be32(f + 8, 2);
    put_be32(f + 12, 4);
    memset(f + 16, 5, 24);
    sd_idx idx;
    write_bytes(P("trunc"), f, sizeof f - 1);
    ck_assert_int_eq(sd_idx_read(P("trunc"), &idx), SD_ERR_FORMAT);
    ASSERT_MSG_HAS("truncated: header says 24 bytes, file has 23");
    ck_assert_ptr_null(idx.data);
    uint8_t g[sizeof f + 1];
    memcpy(g, f, sizeof f);
    g[sizeof f] = 1;
    write_bytes(P("trailing"), g, sizeof g);
    ck_assert_int_eq(sd_idx_read(P("trailing"), &idx), SD_ERR_FORMAT);
    ASSERT_MSG_HAS("trailing bytes");
    memcpy(g, f, sizeof f);
    g[0] = 0x1F; /* neither gzip (1F 8B) nor IDX */
    write_bytes(P("magic"), g, sizeof f);
    ck_assert_int_eq(sd_idx_read(P("magic"), &idx), SD_ERR_FORMAT);
    ASSERT_MSG_HAS("bad magic");
    memcpy(g, f, sizeof f);
    g[2] = 0x0D; /* float */
    write_bytes(P("type"), g, sizeof f);
    ck_assert_int_eq(sd_idx_read(P("type"), &idx), SD_ERR_FORMAT);
    ASSERT_MSG_HAS("0x0d not supported");
    memcpy(g, f, sizeof f);
    put_be32(g + 4, 0xFFFFFFFFu);
    put_be32(g + 8, 0xFFFFFFFFu);
    write_bytes(P("huge"), g, sizeof f);
    ck_assert_int_eq(sd_idx_read(P("huge"), &idx), SD_ERR_FORMAT);
    ASSERT_MSG_HAS("claim more than");
    memcpy(g, f, sizeof f);
    g[3] = 9;
    write_bytes(P("ndim"), g, sizeof f);
    ck_assert_int_eq(sd_idx_read(P("ndim"), &idx), SD_ERR_FORMAT);
    ASSERT_MSG_HAS("9 dimensions");
    write_bytes(P("short"), f, 10);
    ck_assert_int_eq(sd_idx_read(P("short"), &idx), SD_ERR_FORMAT);
    ASSERT_MSG_HAS("header truncated");
    /* A gzip stream cut in half. */
    uint8_t big[16 + 4096];
    memcpy(big, f, 16);
    put_be32(big + 4, 64);
    put_be32(big + 8, 8);
    put_be32(big + 12, 8);
    sd_rng r;
    sd_rng_init(&r, 9, 1);
    for (int i = 0; i < 4096; i++) big[16 + i] = (uint8_t)sd_rng_u64(&r);
    write_idx_gz(P("whole.gz"), big, sizeof big);
    size_t len;
    uint8_t *gz = read_bytes(P("whole.gz"), &len);
    write_bytes(P("cut.gz"), gz, len / 2);
    free(gz);
    ck_assert_int_eq(sd_idx_read(P("cut.gz"), &idx), SD_ERR_FORMAT);
    ck_assert_ptr_null(idx.data);
    ck_assert_int_eq(sd_idx_read(P("absent"), &idx), SD_ERR_IO);
}
END_TEST

/* Debian's dataset-fashion-mnist (tools/install-deps.sh --with-data, which
 * tools/test-all.sh runs). Without it this case is not added and main()
 * reports the suite as skipped (77) naming the file, never as passed. */
static const char fashion_mnist_t10k[] =
    "/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz";

START_TEST(test_idx_fashion_mnist_header)
{
    sd_idx idx;
    ck_assert_int_eq(sd_idx_read(fashion_mnist_t10k, &idx), SD_OK);
    ck_assert_int_eq(idx.ndim, 3);
    ck_assert_uint_eq(idx.dims[0], 10000);
    ck_assert_uint_eq(idx.dims[1], 28);
    ck_assert_uint_eq(idx.dims[2], 28);
    ck_assert_uint_eq(idx.size, 10000u * 28 * 28);
    sd_idx_free(&idx);
}
END_TEST

static Suite *data_suite(bool fashion_mnist)
{
    Suite *s = suite_create("data");
    TCase *tc = tcase_create("prepare");
    tcase_add_test(tc, test_resize_area_values);
    tcase_add_test(tc, test_centre_crop_values);
    tcase_add_test(tc, test_channel_conversion);
    suite_add_tcase(s, tc);

    tc = tcase_create("files");
    tcase_set_timeout(tc, 60);
    tcase_add_checked_fixture(tc, setup_tmp, teardown_tmp);
    tcase_add_test(tc, test_folder_all_formats);
    tcase_add_test(tc, test_native_size_and_mismatch);
    tcase_add_test(tc, test_empty_and_imageless_folders);
    tcase_add_test(tc, test_bad_files_skipped);
    tcase_add_test(tc, test_unreadable_directory);
    tcase_add_test(tc, test_decode_rejects);
    tcase_add_test(tc, test_decode_stb_screens);
    tcase_add_test(tc, test_csv_good);
    tcase_add_test(tc, test_csv_malformed);
    tcase_add_test(tc, test_idx_round_trip);
    tcase_add_test(tc, test_idx_malformed);
    if (fashion_mnist) tcase_add_test(tc, test_idx_fashion_mnist_header);
    suite_add_tcase(s, tc);

    tc = tcase_create("loader");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_loader_deterministic);
    tcase_add_test(tc, test_loader_values_and_flips);
    tcase_add_test(tc, test_loader_epochs_are_permutations);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    bool fashion_mnist = access(fashion_mnist_t10k, R_OK) == 0;
    SRunner *sr = srunner_create(data_suite(fashion_mnist));
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    if (failed) return 1;
    if (!fashion_mnist) {
        /* 77: meson's SKIP. Every other case ran and passed, but the suite
         * as a whole did not run: say what is missing. */
        printf("SKIP test_idx_fashion_mnist_header: %s not readable (install the Debian "
               "package dataset-fashion-mnist: tools/install-deps.sh --with-data)\n",
               fashion_mnist_t10k);
        return 77;
    }
    return 0;
}

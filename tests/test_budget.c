/* test_budget.c - bad input that used to get through (issue 12 items 4, 7, 8):
 * memory budgets before allocation (sd/membudget.h), image plausibility and
 * the decisions on odd BMP/PNG files (lib/io/stb_image_impl.c), one bad image in
 * a folder (lib/io/data_image.c), checkpoints validated against their config
 * before the model is built and by `info` exactly as by the loaders
 * (models/checkpoint.c), and exp_vec on NaN / Inf (lib/ops/ops_norm.c).
 *
 * Every input is made here: images byte by byte (PNG chunks with zlib),
 * checkpoints through the library and then rewritten with a small
 * safetensors writer of our own (cJSON header), so a test can plant a NaN,
 * an F64 dtype or a renamed tensor exactly where it wants.
 */
#define _XOPEN_SOURCE 700
#include <check.h>
#include <cjson/cJSON.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include "sd/checkpoint.h"
#include "sd/score_model.h"
#include "sd/data.h"
#include "sd/membudget.h"
#include "sd/ops.h"
#include "sd/safetensors.h"
#include "sd/status.h"

#define ASSERT_MSG_HAS(sub)                                                             \
    ck_assert_msg(strstr(sd_error_message(), (sub)) != NULL, "message '%s' lacks '%s'", \
                  sd_error_message(), (sub))

/* ---- temp directory ---- */

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
    strcpy(g_root, "/tmp/sd_test_budget_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(g_root));
    sd_mem_set_budget(0);
}

static void teardown_tmp(void)
{
    sd_mem_set_budget(0);
    nftw(g_root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

static const char *P(const char *rel)
{
    static char bufs[8][512];
    static int k;
    char *b = bufs[k++ & 7];
    snprintf(b, 512, "%s/%s", g_root, rel);
    return b;
}

static void write_bytes(const char *path, const void *buf, size_t len)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(buf, 1, len, f), len);
    ck_assert_int_eq(fclose(f), 0);
}

/* ---- image makers ---- */

static void put_be32(uint8_t *b, uint32_t v)
{
    b[0] = (uint8_t)(v >> 24);
    b[1] = (uint8_t)(v >> 16);
    b[2] = (uint8_t)(v >> 8);
    b[3] = (uint8_t)v;
}

static void put_le32(uint8_t *b, uint32_t v)
{
    b[0] = (uint8_t)v;
    b[1] = (uint8_t)(v >> 8);
    b[2] = (uint8_t)(v >> 16);
    b[3] = (uint8_t)(v >> 24);
}

static void put_le16(uint8_t *b, uint16_t v)
{
    b[0] = (uint8_t)v;
    b[1] = (uint8_t)(v >> 8);
}

/* PNG chunk: length, type, data, CRC32 over type + data. */
static size_t put_chunk(uint8_t *b, const char *type, const uint8_t *data, uint32_t len)
{
    put_be32(b, len);
    memcpy(b + 4, type, 4);
    if (len) memcpy(b + 8, data, len);
    put_be32(b + 8 + len, (uint32_t)crc32(0, b + 4, len + 4));
    return 12 + len;
}

/* A PNG of w x h, colour type `ct`, 8 bits, interlace `il`, whose IDAT is
 * `raw` (filter bytes included) deflated; an optional PLTE of npal gray
 * entries (entry i = 10 i) and an optional tEXt chunk before IDAT. Returns
 * the file size; the offsets of the IDAT and tEXt chunks go to *idat_at,
 * *text_at when not NULL. */
static size_t make_png(uint8_t *b, uint32_t w, uint32_t h, int ct, int il, const uint8_t *raw,
                       size_t raw_len, int npal, int text, size_t *idat_at, size_t *text_at)
{
    static const uint8_t sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
    uint8_t ihdr[13] = {0};
    put_be32(ihdr, w);
    put_be32(ihdr + 4, h);
    ihdr[8] = 8;
    ihdr[9] = (uint8_t)ct;
    ihdr[12] = (uint8_t)il;
    memcpy(b, sig, 8);
    size_t n = 8 + put_chunk(b + 8, "IHDR", ihdr, 13);
    if (npal > 0) {
        uint8_t pal[768];
        for (int i = 0; i < npal; i++) pal[3 * i] = pal[3 * i + 1] = pal[3 * i + 2] = (uint8_t)(10 * i);
        n += put_chunk(b + n, "PLTE", pal, (uint32_t)(3 * npal));
    }
    if (text) {
        if (text_at) *text_at = n;
        n += put_chunk(b + n, "tEXt", (const uint8_t *)"Comment\0hi", 10);
    }
    uLongf zlen = compressBound(raw_len);
    uint8_t *z = malloc(zlen);
    ck_assert_int_eq(compress2(z, &zlen, raw, raw_len, 9), Z_OK);
    if (idat_at) *idat_at = n;
    n += put_chunk(b + n, "IDAT", z, (uint32_t)zlen);
    free(z);
    n += put_chunk(b + n, "IEND", NULL, 0);
    return n;
}

/* A w x h gray PNG of value v through the library's writer. */
static void write_gray_png(const char *path, int w, int h, uint8_t v)
{
    uint8_t *px = malloc((size_t)w * (size_t)h);
    memset(px, v, (size_t)w * (size_t)h);
    ck_assert_int_eq(sd_image_write_png(path, w, h, 1, px), SD_OK);
    free(px);
}

/* An 8x6 gray baseline JPEG, every pixel 128 (libjpeg-turbo, quality 95;
 * the same file as test_data.c's). Its SOF0 marker is at 0x59: the height
 * is at 0x5E..0x5F and the width at 0x60..0x61. */
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

/* The flat JPEG with its frame header edited to claim w x h, made `len`
 * bytes long by a comment segment, with no entropy-coded data at all after
 * its scan header (then EOI). stb's bit reader pads a missing stream with
 * zeros, which in this file's one-code Huffman tables decode as "DC
 * difference 0, end of block": before the plausibility rule such a file
 * "decoded successfully" into w x h flat pixels (the probe's 1 KB JPEG). */
static size_t make_big_jpeg(uint8_t *b, int w, int h, size_t len)
{
    size_t sos = 0;
    for (size_t i = 0; i + 1 < sizeof jpeg_flat_8x6; i++)
        if (jpeg_flat_8x6[i] == 0xFF && jpeg_flat_8x6[i + 1] == 0xDA) sos = i;
    ck_assert_uint_gt(sos, 0);
    ck_assert_uint_ge(len, sos + 16);
    size_t L = len - sos - 14; /* COM length field, counting itself */
    ck_assert_uint_le(L, 65535);
    memcpy(b, jpeg_flat_8x6, sos);
    b[0x5E] = (uint8_t)(h >> 8);
    b[0x5F] = (uint8_t)h;
    b[0x60] = (uint8_t)(w >> 8);
    b[0x61] = (uint8_t)w;
    b[sos] = 0xFF;
    b[sos + 1] = 0xFE;
    b[sos + 2] = (uint8_t)(L >> 8);
    b[sos + 3] = (uint8_t)L;
    memset(b + sos + 4, 'c', L - 2);
    memcpy(b + sos + 2 + L, jpeg_flat_8x6 + sos, 10); /* the SOS segment */
    b[len - 2] = 0xFF;
    b[len - 1] = 0xD9;
    return len;
}

/* A 24-bit BMP of w x h (BITMAPINFOHEADER), pixel (x, y) (y = 0 the top
 * row) = gray 10 * (y * w + x) + 5; top_down writes a negative height and the
 * rows top first. */
static size_t make_bmp(uint8_t *b, int w, int h, int top_down)
{
    size_t row = ((size_t)w * 3 + 3) / 4 * 4, off = 54, n = off + row * (size_t)h;
    memset(b, 0, n);
    b[0] = 'B';
    b[1] = 'M';
    put_le32(b + 2, (uint32_t)n);
    put_le32(b + 10, (uint32_t)off);
    put_le32(b + 14, 40);
    put_le32(b + 18, (uint32_t)w);
    put_le32(b + 22, (uint32_t)(top_down ? -h : h));
    put_le16(b + 26, 1);
    put_le16(b + 28, 24);
    put_le32(b + 30, 0);
    put_le32(b + 34, (uint32_t)(row * (size_t)h));
    for (int y = 0; y < h; y++) {
        int file_row = top_down ? y : h - 1 - y;
        for (int x = 0; x < w; x++) {
            uint8_t v = (uint8_t)(10 * (y * w + x) + 5);
            uint8_t *p = b + off + (size_t)file_row * row + (size_t)x * 3;
            p[0] = p[1] = p[2] = v;
        }
    }
    return n;
}

/* ---- items 7: exp_vec on NaN and +-Inf ---- */

/* The fused GroupNorm+SiLU evaluates exp_vec(-z). With gamma = 0 the
 * pre-activation z of channel c is beta[c] exactly, so z takes the values
 * NaN, +Inf, -Inf and 1. (int32_t)NaN was undefined behaviour: under UBSan
 * (halt_on_error) this test failed before the fix. */
START_TEST(test_exp_vec_nan_inf)
{
    sd_graph *g = sd_graph_new();
    ck_assert_ptr_nonnull(g);
    float x[4 * 3], gamma[4] = {0, 0, 0, 0};
    float beta[4] = {NAN, INFINITY, -INFINITY, 1.0f};
    for (int i = 0; i < 12; i++) x[i] = (float)i;
    sd_tensor *tx = sd_tensor_wrap(g, 3, (int[]){1, 4, 3}, x, NULL);
    sd_tensor *tg = sd_tensor_wrap(g, 1, (int[]){4}, gamma, NULL);
    sd_tensor *tb = sd_tensor_wrap(g, 1, (int[]){4}, beta, NULL);
    sd_tensor *y = sd_group_norm_silu(g, tx, 4, tg, tb, 1e-5f);
    ck_assert_ptr_nonnull(y);
    for (int s = 0; s < 3; s++) {
        ck_assert_msg(isnan(y->data[0 * 3 + s]), "SiLU(NaN) = %g, expected NaN", y->data[s]);
        ck_assert_msg(isinf(y->data[1 * 3 + s]) && y->data[3 + s] > 0, "SiLU(+Inf) = %g",
                      y->data[3 + s]);
        ck_assert_msg(!isnan(y->data[2 * 3 + s]) && y->data[6 + s] <= 0, "SiLU(-Inf) = %g",
                      y->data[6 + s]);
        ck_assert_float_eq_tol(y->data[3 * 3 + s], 1.0f / (1.0f + expf(-1.0f)), 1e-6f);
    }
    sd_graph_free(g);
}
END_TEST

/* ---- item 4: the memory budget ---- */

START_TEST(test_mem_parse_and_check)
{
    uint64_t v;
    ck_assert_int_eq(sd_mem_parse_size("4G", &v), 0);
    ck_assert_uint_eq(v, (uint64_t)4 << 30);
    ck_assert_int_eq(sd_mem_parse_size("512MiB", &v), 0);
    ck_assert_uint_eq(v, (uint64_t)512 << 20);
    ck_assert_int_eq(sd_mem_parse_size("1.5k", &v), 0);
    ck_assert_uint_eq(v, 1536);
    ck_assert_int_eq(sd_mem_parse_size("100000", &v), 0);
    ck_assert_uint_eq(v, 100000);
    const char *bad[] = {"", "0", "-1G", "4X", "G", "1e30T", " 4G", "4G ", "nan"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
        ck_assert_msg(sd_mem_parse_size(bad[i], &v) == -1, "'%s' accepted", bad[i]);

    ck_assert_uint_gt(sd_mem_machine(), 0);
    sd_mem_set_budget((uint64_t)1 << 20);
    ck_assert_int_eq(sd_mem_check("thing", 1000), SD_OK);
    ck_assert_int_eq(sd_mem_check("thing", (uint64_t)2 << 20), SD_ERR_NOMEM);
    ASSERT_MSG_HAS("thing needs 2.0 MiB, more than the 1.0 MiB allowed by --max-memory");
    sd_mem_set_budget(0);
    /* Without a budget the machine is the limit: 2^62 bytes fits nowhere. */
    ck_assert_int_eq(sd_mem_check("thing", (uint64_t)1 << 62), SD_ERR_NOMEM);
    ASSERT_MSG_HAS("this machine has available");
}
END_TEST

/* The image cache is checked before it is allocated, naming the folder and
 * the figure. */
START_TEST(test_budget_image_cache)
{
    ck_assert_int_eq(mkdir(P("imgs"), 0755), 0);
    write_gray_png(P("imgs/a.png"), 8, 8, 1);
    write_gray_png(P("imgs/b.png"), 8, 8, 2);
    write_gray_png(P("imgs/c.png"), 8, 8, 3);
    sd_image_opts o = {.channels = 1, .size = 0};
    sd_dataset ds;
    sd_mem_set_budget(100);
    ck_assert_int_eq(sd_data_load_images(P("imgs"), &o, &ds), SD_ERR_NOMEM);
    ASSERT_MSG_HAS("imgs: the image cache (3 images of 1x8x8) needs 192 bytes, more than the "
                   "100 bytes allowed by --max-memory");
    ck_assert_ptr_null(ds.pixels);
    /* With a target size the same figure comes from the size. */
    o.size = 16;
    ck_assert_int_eq(sd_data_load_images(P("imgs"), &o, &ds), SD_ERR_NOMEM);
    ASSERT_MSG_HAS("(3 images of 1x16x16) needs 768 bytes");
    sd_mem_set_budget(1000);
    ck_assert_int_eq(sd_data_load_images(P("imgs"), &o, &ds), SD_OK);
    ck_assert_uint_eq(ds.n, 3);
    /* The loader's batch buffers: 2 x 64 x 256 floats + 2 x 3 permutation
     * entries = 131096 bytes. */
    sd_loader *ld = NULL;
    sd_loader_opts lo = {.batch = 64, .seed = 1};
    sd_mem_set_budget(100000);
    ck_assert_int_eq(sd_loader_new(&ds, &lo, &ld), SD_ERR_NOMEM);
    ASSERT_MSG_HAS("loader: a batch of 64 items of 256 values needs 128.0 KiB");
    ck_assert_ptr_null(ld);
    sd_mem_set_budget(0);
    ck_assert_int_eq(sd_loader_new(&ds, &lo, &ld), SD_OK);
    sd_loader_free(ld);
    sd_dataset_free(&ds);
}
END_TEST

/* A model's parameters are checked before they are allocated. */
/* A checkpoint is read whole into memory: the read is within the budget. */
START_TEST(test_budget_checkpoint_read)
{
    static float w[4096];
    int64_t shape[1] = {4096};
    sd_st_entry e[1] = {{"w", 1, shape, w}};
    ck_assert_int_eq(sd_safetensors_write(P("big.safetensors"), e, 1, NULL, NULL, 0), SD_OK);
    sd_safetensors *st = NULL;
    sd_mem_set_budget(4096); /* the file is 16 KiB + header */
    ck_assert_int_eq(sd_safetensors_open(P("big.safetensors"), &st), SD_ERR_NOMEM);
    ck_assert_ptr_null(st);
    ASSERT_MSG_HAS("big.safetensors needs");
    ASSERT_MSG_HAS("allowed by --max-memory");
    sd_mem_set_budget(0);
    ck_assert_int_eq(sd_safetensors_open(P("big.safetensors"), &st), SD_OK);
    sd_safetensors_close(st);
}
END_TEST

START_TEST(test_budget_model)
{
    sd_sde sde;
    ck_assert_int_eq(sd_sde_parse("ve", &sde), SD_OK);
    sd_model *m = NULL;
    sd_mem_set_budget((uint64_t)1 << 20);
    ck_assert_int_eq(sd_model_new_network("unet-28", NULL, 1, 28, 28, &sde, &m), SD_ERR_NOMEM);
    ASSERT_MSG_HAS("unet-28: the model's ");
    ASSERT_MSG_HAS("MiB, more than the 1.0 MiB allowed by --max-memory");
    ck_assert_ptr_null(m);
    sd_mem_set_budget(0);
    ck_assert_int_eq(sd_model_new_network("unet-28", NULL, 1, 28, 28, &sde, &m), SD_OK);
    sd_model_free(m);
    /* Caps on the configuration, whatever the memory. */
    sd_unet_config c = {.channels = 1, .resolution = 8, .ch = 8192, .n_levels = 1, .mult = {1},
                        .num_res_blocks = 1, .groups = 8};
    ck_assert_int_eq(sd_model_new_network("unet", &c, 1, 8, 8, &sde, &m), SD_ERR_INVALID);
    ASSERT_MSG_HAS("ch = 8192 must be in [1, 4096]");
    c.ch = 1024;
    c.mult[0] = 8;
    ck_assert_int_eq(sd_model_new_network("unet", &c, 1, 8, 8, &sde, &m), SD_ERR_INVALID);
    ASSERT_MSG_HAS("level width ch * mult[0] = 1024 * 8 must be in [1, 4096]");
}
END_TEST

/* The CLI's --max-memory: a dry run refuses the data set with exit 2. */
static int run_cli(const char *out_path, char *const args[])
{
    const char *bin = getenv("SCOREDIFF_BIN");
    if (!bin || !*bin) return -77;
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        int fd = open(out_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dup2(fd, 1);
        dup2(fd, 2);
        char *argv[16];
        int k = 0;
        argv[k++] = (char *)bin;
        for (int i = 0; args[i] && k < 15; i++) argv[k++] = args[i];
        argv[k] = NULL;
        execv(bin, argv);
        _exit(127);
    }
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static char *slurp(const char *path)
{
    FILE *f = fopen(path, "rb");
    ck_assert_ptr_nonnull(f);
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

START_TEST(test_cli_max_memory)
{
    ck_assert_int_eq(mkdir(P("imgs"), 0755), 0);
    for (int i = 0; i < 4; i++) {
        char rel[32];
        snprintf(rel, sizeof rel, "imgs/%d.png", i);
        write_gray_png(P(rel), 28, 28, (uint8_t)(i * 40));
    }
    char *args[] = {"train", "--data", (char *)P("imgs"), "--dry-run", "--max-memory", "1K",
                    NULL};
    int rc = run_cli(P("out.txt"), args);
    if (rc == -77) {
        fprintf(stderr, "SCOREDIFF_BIN not set: skipping the CLI test\n");
        exit(77);
    }
    const char *out = slurp(P("out.txt"));
    ck_assert_msg(rc != 0, "exit %d: %s", rc, out);
    ck_assert_msg(strstr(out, "imgs: the image cache (4 images of 1x28x28) needs 3.1 KiB, more "
                              "than the 1.0 KiB allowed by --max-memory"), "got: %s", out);
    char *bad[] = {"train", "--data", (char *)P("imgs"), "--dry-run", "--max-memory", "lots",
                   NULL};
    ck_assert_int_eq(run_cli(P("out.txt"), bad), 2);
    ck_assert_ptr_nonnull(strstr(slurp(P("out.txt")), "--max-memory lots: expected a size"));
    char *ok[] = {"train", "--data", (char *)P("imgs"), "--dry-run", "--max-memory", "1G", NULL};
    ck_assert_int_eq(run_cli(P("out.txt"), ok), 0);
}
END_TEST

/* ---- item 4: images whose header claims more than the file can hold ---- */

START_TEST(test_jpeg_claims_absurd_size)
{
    static uint8_t b[1 << 16];
    sd_image img;
    /* The probe's file: 1 KB claiming 4000 x 4000. stb "decoded" it by
     * padding the missing data with zeros (a 16 M-pixel image). */
    size_t n = make_big_jpeg(b, 4000, 4000, 1024);
    ck_assert_int_eq(sd_image_decode(b, n, &img), SD_ERR_FORMAT);
    ASSERT_MSG_HAS("JPEG header claims more pixels than a file of this size can hold");
    ASSERT_MSG_HAS("4000 x 4000 in 1024 bytes");
    ck_assert_ptr_null(img.pixels);
    int w, h, c;
    ck_assert_int_eq(sd_image_probe(b, n, &w, &h, &c), SD_ERR_FORMAT);
    /* The rule is 1 bit per 8x8 block: 500 x 500 blocks need 31250 bytes. */
    n = make_big_jpeg(b, 4000, 4000, 31249);
    ck_assert_int_eq(sd_image_probe(b, n, &w, &h, &c), SD_ERR_FORMAT);
    n = make_big_jpeg(b, 4000, 4000, 31250);
    ck_assert_int_eq(sd_image_probe(b, n, &w, &h, &c), SD_OK);
    ck_assert_int_eq(w, 4000);
    ck_assert_int_eq(h, 4000);
    /* The real file is far above the rule and still decodes. */
    ck_assert_int_eq(sd_image_decode(jpeg_flat_8x6, sizeof jpeg_flat_8x6, &img), SD_OK);
    ck_assert_int_le(abs((int)img.pixels[0] - 128), 2);
    sd_image_free(&img);
}
END_TEST

/* PNG: deflate compresses at most 1032:1. An IHDR claiming 4000 x 4000
 * RGBA (64 MB of rows) in a file of a few hundred bytes is refused before
 * anything is inflated. */
START_TEST(test_png_claims_absurd_size)
{
    static uint8_t b[1 << 16];
    uint8_t raw[2 * 3] = {0};
    size_t n = make_png(b, 2, 2, 0, 0, raw, sizeof raw, 0, 0, NULL, NULL);
    sd_image img;
    ck_assert_int_eq(sd_image_decode(b, n, &img), SD_OK);
    sd_image_free(&img);
    put_be32(b + 16, 4000);
    put_be32(b + 20, 4000);
    b[25] = 6;                                                   /* RGBA */
    put_be32(b + 29, (uint32_t)crc32(0, b + 12, 17));            /* fix IHDR's CRC */
    ck_assert_int_eq(sd_image_decode(b, n, &img), SD_ERR_FORMAT);
    ASSERT_MSG_HAS("PNG header claims more pixels than a file of this size can hold");
}
END_TEST

/* ---- item 8: one bad image does not abort or mislead a folder ---- */

static char g_warned[8][256];
static int g_nwarn;

static void capture_warn(void *ctx, const char *path, const char *reason)
{
    (void)ctx;
    if (g_nwarn < 8) snprintf(g_warned[g_nwarn], sizeof g_warned[0], "%s: %s", path, reason);
    g_nwarn++;
}

START_TEST(test_corrupt_image_skipped_not_blamed)
{
    static uint8_t b[4096];
    ck_assert_int_eq(mkdir(P("d"), 0755), 0);
    /* "bad.jpg" sorts first: before, its 4000x4000 set the native size and
     * the good files were blamed ("good0.png: size 28x28 differs from
     * 4000x4000 of bad.jpg"). */
    write_bytes(P("d/bad.jpg"), b, make_big_jpeg(b, 4000, 4000, 1024));
    write_gray_png(P("d/good0.png"), 28, 28, 10);
    write_gray_png(P("d/good1.png"), 28, 28, 20);
    sd_image_opts o = {.channels = 1, .size = 0, .warn = capture_warn};
    sd_dataset ds;
    g_nwarn = 0;
    ck_assert_int_eq(sd_data_load_images(P("d"), &o, &ds), SD_OK);
    ck_assert_uint_eq(ds.n, 2);
    ck_assert_int_eq(ds.h, 28);
    ck_assert_int_eq(ds.w, 28);
    ck_assert_uint_eq(ds.summary.skipped, 1);
    ck_assert_int_eq(g_nwarn, 1); /* one warning line, naming the bad file */
    ck_assert_msg(strstr(g_warned[0], "bad.jpg: JPEG header claims more pixels"), "%s",
                  g_warned[0]);
    ck_assert_uint_eq(ds.pixels[0], 10);
    ck_assert_uint_eq(ds.pixels[28 * 28], 20);
    sd_dataset_free(&ds);
}
END_TEST

/* Without a target size, the size most images share wins; the odd one is
 * named, not the first good file. */
START_TEST(test_native_size_majority)
{
    ck_assert_int_eq(mkdir(P("d"), 0755), 0);
    write_gray_png(P("d/a.png"), 10, 10, 1); /* sorts first, the odd one */
    write_gray_png(P("d/b.png"), 8, 8, 2);
    write_gray_png(P("d/c.png"), 8, 8, 3);
    sd_image_opts o = {.channels = 1, .size = 0, .warn = capture_warn};
    sd_dataset ds;
    ck_assert_int_eq(sd_data_load_images(P("d"), &o, &ds), SD_ERR_FORMAT);
    ASSERT_MSG_HAS("a.png: size 10x10 differs from 8x8 of ");
    ASSERT_MSG_HAS("b.png and 1 other image(s)");
    ASSERT_MSG_HAS("--size 8");
    /* A tie goes to the size of the first file in path order. */
    write_gray_png(P("d/d.png"), 10, 10, 4);
    ck_assert_int_eq(sd_data_load_images(P("d"), &o, &ds), SD_ERR_FORMAT);
    ASSERT_MSG_HAS("b.png: size 8x8 differs from 10x10 of ");
}
END_TEST

/* ---- item 8: BMP and PNG decisions ---- */

/* Top-down BMPs (negative height) are valid and stb decodes them; only its
 * stbi_info reported the negative height, which we refused. Decision:
 * accept, same pixels as the bottom-up file. */
START_TEST(test_bmp_top_down)
{
    static uint8_t b[4096], t[4096];
    size_t n = make_bmp(b, 3, 2, 0), m = make_bmp(t, 3, 2, 1);
    sd_image bi, ti;
    ck_assert_int_eq(sd_image_decode(b, n, &bi), SD_OK);
    ck_assert_int_eq(sd_image_decode(t, m, &ti), SD_OK);
    ck_assert_int_eq(ti.w, 3);
    ck_assert_int_eq(ti.h, 2);
    ck_assert_int_eq(ti.comp, bi.comp);
    ck_assert_mem_eq(ti.pixels, bi.pixels, (size_t)3 * 2 * (size_t)bi.comp);
    ck_assert_uint_eq(ti.pixels[0], 5);                             /* (0, 0) */
    ck_assert_uint_eq(ti.pixels[(size_t)(1 * 3 + 2) * (size_t)ti.comp], 55); /* (2, 1) */
    sd_image_free(&bi);
    sd_image_free(&ti);
}
END_TEST

/* RLE8: stb cannot decode it. Decision: refuse with that reason, not as
 * "corrupt". A truncated uncompressed BMP: stb padded the missing rows with
 * zeros; refuse it. */
START_TEST(test_bmp_rle_and_truncated)
{
    static uint8_t b[4096];
    /* 2x2 8-bit RLE8: palette of 256, data "2 x 7, end of line" twice,
     * end of bitmap. */
    size_t off = 54 + 1024;
    memset(b, 0, sizeof b);
    b[0] = 'B';
    b[1] = 'M';
    put_le32(b + 10, (uint32_t)off);
    put_le32(b + 14, 40);
    put_le32(b + 18, 2);
    put_le32(b + 22, 2);
    put_le16(b + 26, 1);
    put_le16(b + 28, 8);
    put_le32(b + 30, 1); /* BI_RLE8 */
    put_le32(b + 46, 256);
    for (int i = 0; i < 256; i++) b[54 + 4 * i] = b[55 + 4 * i] = b[56 + 4 * i] = (uint8_t)i;
    const uint8_t rle[] = {2, 7, 0, 0, 2, 9, 0, 0, 0, 1};
    memcpy(b + off, rle, sizeof rle);
    size_t n = off + sizeof rle;
    put_le32(b + 2, (uint32_t)n);
    put_le32(b + 34, sizeof rle);
    sd_image img;
    ck_assert_int_eq(sd_image_decode(b, n, &img), SD_ERR_FORMAT);
    ASSERT_MSG_HAS("BMP with RLE8 compression is not supported");

    n = make_bmp(b, 3, 2, 0);
    ck_assert_int_eq(sd_image_decode(b, n - 4, &img), SD_ERR_FORMAT);
    ASSERT_MSG_HAS("truncated BMP pixel data");
}
END_TEST

/* PNG CRCs: stb ignores them. Decision (libpng's): a bad CRC on a critical
 * chunk is an error; on an ancillary chunk (stb skips those) it is not. */
START_TEST(test_png_crc)
{
    static uint8_t b[4096];
    uint8_t raw[2 * 3] = {0, 1, 2, 0, 3, 4};
    size_t idat, text;
    size_t n = make_png(b, 2, 2, 0, 0, raw, sizeof raw, 0, 1, &idat, &text);
    sd_image img;
    ck_assert_int_eq(sd_image_decode(b, n, &img), SD_OK);
    ck_assert_uint_eq(img.pixels[3], 4);
    sd_image_free(&img);
    /* Ancillary tEXt with a wrong CRC: still decodes. */
    b[text + 8 + 10] ^= 0xFF;
    ck_assert_int_eq(sd_image_decode(b, n, &img), SD_OK);
    sd_image_free(&img);
    b[text + 8 + 10] ^= 0xFF;
    /* One flipped bit in IDAT's CRC: refused. */
    uint32_t len = ((uint32_t)b[idat] << 24) | ((uint32_t)b[idat + 1] << 16) |
                   ((uint32_t)b[idat + 2] << 8) | b[idat + 3];
    b[idat + 8 + len + 3] ^= 1;
    ck_assert_int_eq(sd_image_decode(b, n, &img), SD_ERR_FORMAT);
    ASSERT_MSG_HAS("CRC mismatch in chunk IDAT");
}
END_TEST

/* Palette indices past the PLTE: stb read them from an uninitialised stack
 * array (pixels differing from run to run). Decision: refuse, as libpng
 * does. Checked through the row filters and Adam7 interlacing. */
START_TEST(test_png_palette_index)
{
    static uint8_t b[4096];
    sd_image img;
    /* 4x2, filter 0 on row 0 and filter 1 (Sub) on row 1: row 1's bytes
     * 1, 1, 0, 0 are the indices 1, 2, 2, 2 (2 is out of range for a
     * 2-entry palette). */
    uint8_t raw[2 * 5] = {0, 0, 1, 0, 1, 1, 1, 1, 0, 0};
    size_t n = make_png(b, 4, 2, 3, 0, raw, sizeof raw, 2, 0, NULL, NULL);
    ck_assert_int_eq(sd_image_decode(b, n, &img), SD_ERR_FORMAT);
    ASSERT_MSG_HAS("palette index is past the end of the palette");
    /* The same rows with a 3-entry palette are fine: gray 10 * index. */
    n = make_png(b, 4, 2, 3, 0, raw, sizeof raw, 3, 0, NULL, NULL);
    ck_assert_int_eq(sd_image_decode(b, n, &img), SD_OK);
    ck_assert_int_eq(img.comp, 3);
    const uint8_t want[8] = {0, 10, 0, 10, 10, 20, 20, 20};
    for (int i = 0; i < 8; i++) ck_assert_uint_eq(img.pixels[3 * i], want[i]);
    sd_image_free(&img);

    /* Adam7, 3x3, 8-bit: passes 1 (0,0), 4 (2,0), 5 (0,2),(2,2), 6 (1,0),
     * (1,2), 7 (0..2, 1); one filter byte per row. Index 2 only at (1, 1),
     * in pass 7. */
    uint8_t il[] = {0, 0,  0, 1,  0, 0, 1,  0, 1, 0, 0,  0, 1, 2, 0};
    n = make_png(b, 3, 3, 3, 1, il, sizeof il, 2, 0, NULL, NULL);
    ck_assert_int_eq(sd_image_decode(b, n, &img), SD_ERR_FORMAT);
    ASSERT_MSG_HAS("palette index");
    n = make_png(b, 3, 3, 3, 1, il, sizeof il, 3, 0, NULL, NULL);
    ck_assert_int_eq(sd_image_decode(b, n, &img), SD_OK);
    ck_assert_uint_eq(img.pixels[3 * 4], 20); /* (1, 1) */
    ck_assert_uint_eq(img.pixels[3 * 2], 10); /* (2, 0) */
    sd_image_free(&img);
}
END_TEST

/* ---- items 4 and 8: checkpoints ---- */

/* A tiny U-Net under ve: 1x8x8, ch 8, mult 1,2, one block per level. */
static sd_model *tiny_model(void)
{
    sd_sde sde;
    ck_assert_int_eq(sd_sde_parse("ve", &sde), SD_OK);
    sd_unet_config c = {.channels = 1, .resolution = 8, .ch = 8, .n_levels = 2, .mult = {1, 2},
                        .num_res_blocks = 1, .groups = 8};
    sd_model *m;
    ck_assert_int_eq(sd_model_new_network("unet", &c, 1, 8, 8, &sde, &m), SD_OK);
    sd_model_init(m, 3);
    return m;
}

static const char *const META_KEYS[] = {"format", "version", "model_config", "sde",
                                        "data_shape", "data_transform", "step", "seed", "batch",
                                        "optimizer", "train", "score_param"};

enum { MUT_NONE, MUT_NAN_OPT_V, MUT_F64_MODEL, MUT_RENAME_OPT_M, MUT_CONFIG };

/* Rewrite the weights-only checkpoint `src` as a full training checkpoint
 * (model, ema, opt.m, opt.v: copies of the weights, moments 0.01) at
 * `dst`, with one mutation. Our own writer: dtype and names are free. */
static void rewrite_ckpt(const char *src, const char *dst, int mut, const char *config)
{
    sd_safetensors *f;
    ck_assert_int_eq(sd_safetensors_open(src, &f), SD_OK);
    static const char *const prefix[4] = {"model.", "ema.", "opt.m.", "opt.v."};
    size_t n = sd_safetensors_count(f);
    cJSON *hdr = cJSON_CreateObject(), *meta = cJSON_AddObjectToObject(hdr, "__metadata__");
    for (size_t k = 0; k < sizeof META_KEYS / sizeof *META_KEYS; k++) {
        const char *v = sd_safetensors_meta(f, META_KEYS[k]);
        if (mut == MUT_CONFIG && !strcmp(META_KEYS[k], "model_config")) v = config;
        if (v) cJSON_AddStringToObject(meta, META_KEYS[k], v);
    }
    size_t cap = 0;
    for (size_t i = 0; i < n; i++) cap += sd_safetensors_at(f, i)->numel * 8 * 4;
    uint8_t *data = malloc(cap + 8);
    size_t off = 0;
    for (int s = 0; s < 4; s++) {
        for (size_t i = 0; i < n; i++) {
            const sd_st_tensor *t = sd_safetensors_at(f, i);
            char name[256];
            snprintf(name, sizeof name, "%s%s", prefix[s], t->name + strlen("model."));
            bool first = i == 0;
            if (mut == MUT_RENAME_OPT_M && s == 2 && first) snprintf(name, sizeof name, "opt.m.renamed");
            bool f64 = mut == MUT_F64_MODEL && s == 0 && first;
            size_t begin = off;
            for (size_t k = 0; k < t->numel; k++) {
                float v;
                memcpy(&v, (const uint8_t *)t->data + 4 * k, 4);
                if (s >= 2) v = 0.01f;
                if (mut == MUT_NAN_OPT_V && s == 3 && first && k == 1) v = NAN;
                if (f64) {
                    double d = v;
                    memcpy(data + off, &d, 8);
                    off += 8;
                } else {
                    memcpy(data + off, &v, 4);
                    off += 4;
                }
            }
            cJSON *o = cJSON_AddObjectToObject(hdr, name);
            cJSON_AddStringToObject(o, "dtype", f64 ? "F64" : "F32");
            cJSON *shape = cJSON_AddArrayToObject(o, "shape");
            for (int d = 0; d < t->ndim; d++)
                cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->shape[d]));
            cJSON *offs = cJSON_AddArrayToObject(o, "data_offsets");
            cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)begin));
            cJSON_AddItemToArray(offs, cJSON_CreateNumber((double)off));
        }
    }
    char *js = cJSON_PrintUnformatted(hdr);
    size_t hl = strlen(js), padded = (hl + 7) / 8 * 8;
    FILE *o = fopen(dst, "wb");
    ck_assert_ptr_nonnull(o);
    uint8_t len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    fwrite(len8, 1, 8, o);
    fwrite(js, 1, hl, o);
    for (size_t i = hl; i < padded; i++) fputc(' ', o);
    fwrite(data, 1, off, o);
    ck_assert_int_eq(fclose(o), 0);
    free(js);
    free(data);
    cJSON_Delete(hdr);
    sd_safetensors_close(f);
}

static void save_tiny(const char *path)
{
    sd_model *m = tiny_model();
    sd_ckpt_meta meta = {.step = 5, .seed = 1, .batch = 4};
    snprintf(meta.data_transform, sizeof meta.data_transform, "unit");
    ck_assert_int_eq(sd_checkpoint_save(path, m, NULL, &meta), SD_OK);
    sd_model_free(m);
}

/* model_config edited to ch = 512: before, the loader built the (2 GB for
 * unet-28) model and only then saw the tensors differ. Now the shapes are
 * compared with the declared, unallocated parameters: with a 16 MiB budget
 * (the ch = 512 model needs far more) the refusal is the shape mismatch, not
 * the memory. ch = 65536 is over the cap. */
START_TEST(test_ckpt_config_checked_before_building)
{
    save_tiny(P("w.safetensors"));
    const char *big = "{\"model\":\"unet\",\"channels\":1,\"resolution\":8,\"ch\":512,"
                      "\"mult\":[1,2],\"num_res_blocks\":1,\"groups\":8}";
    rewrite_ckpt(P("w.safetensors"), P("big.safetensors"), MUT_CONFIG, big);
    sd_mem_set_budget((uint64_t)16 << 20);
    sd_model *m = NULL;
    sd_ckpt_meta meta;
    ck_assert_int_eq(sd_checkpoint_load_model(P("big.safetensors"), true, &m, &meta),
                     SD_ERR_FORMAT);
    ASSERT_MSG_HAS("big.safetensors: tensor ");
    ASSERT_MSG_HAS("has a shape that does not match the model");
    ck_assert_ptr_null(m);
    /* The original config loads under the same budget. */
    rewrite_ckpt(P("w.safetensors"), P("ok.safetensors"), MUT_NONE, NULL);
    ck_assert_int_eq(sd_checkpoint_load_model(P("ok.safetensors"), true, &m, &meta), SD_OK);
    sd_model_free(m);
    const char *huge = "{\"model\":\"unet\",\"channels\":1,\"resolution\":8,\"ch\":65536,"
                       "\"mult\":[1,2],\"num_res_blocks\":1,\"groups\":8}";
    rewrite_ckpt(P("w.safetensors"), P("huge.safetensors"), MUT_CONFIG, huge);
    ck_assert_int_eq(sd_checkpoint_load_model(P("huge.safetensors"), true, &m, &meta),
                     SD_ERR_FORMAT);
    ASSERT_MSG_HAS("ch = 65536 must be in [1, 4096]");
    const char *mult = "{\"model\":\"unet\",\"channels\":1,\"resolution\":8,\"ch\":8,"
                       "\"mult\":[1,1e300],\"num_res_blocks\":1,\"groups\":8}";
    rewrite_ckpt(P("w.safetensors"), P("mult.safetensors"), MUT_CONFIG, mult);
    ck_assert_int_eq(sd_checkpoint_load_model(P("mult.safetensors"), true, &m, &meta),
                     SD_ERR_FORMAT);
    ASSERT_MSG_HAS("mult[1] must be an integer in [1, 4096]");
}
END_TEST

/* Each mutation is refused by sample's loader (EMA weights), by --resume's
 * loader and by `info` (exit 2, the same reason); before, the model loader
 * read only the section it used and info said "loadable". */
START_TEST(test_ckpt_info_tells_the_truth)
{
    save_tiny(P("w.safetensors"));
    struct {
        int mut;
        const char *needle;
    } cases[] = {
        {MUT_NAN_OPT_V, "element 1 is NaN"},
        {MUT_F64_MODEL, "has dtype F64, expected F32"},
        {MUT_RENAME_OPT_M, "is missing"},
    };
    rewrite_ckpt(P("w.safetensors"), P("good.safetensors"), MUT_NONE, NULL);
    char *good_args[] = {"info", (char *)P("good.safetensors"), NULL};
    int rc = run_cli(P("out.txt"), good_args);
    bool have_cli = rc != -77;
    if (have_cli) {
        ck_assert_msg(rc == 0, "info on a good checkpoint: exit %d: %s", rc, slurp(P("out.txt")));
        ck_assert_ptr_nonnull(strstr(slurp(P("out.txt")), "resumable:      yes"));
    }
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        rewrite_ckpt(P("w.safetensors"), P("bad.safetensors"), cases[i].mut, NULL);
        sd_model *m = NULL;
        sd_ckpt_meta meta;
        ck_assert_int_ne(sd_checkpoint_load_model(P("bad.safetensors"), true, &m, &meta), SD_OK);
        ASSERT_MSG_HAS(cases[i].needle);
        ck_assert_ptr_null(m);
        if (!have_cli) continue;
        char *args[] = {"info", (char *)P("bad.safetensors"), NULL};
        rc = run_cli(P("out.txt"), args);
        const char *out = slurp(P("out.txt"));
        ck_assert_msg(rc == 2, "case %zu: info exit %d: %s", i, rc, out);
        ck_assert_msg(strstr(out, cases[i].needle) && strstr(out, "loads:          no"),
                      "case %zu: %s", i, out);
    }
    if (!have_cli) {
        fprintf(stderr, "SCOREDIFF_BIN not set: the info half of this test was skipped\n");
        exit(77);
    }
}
END_TEST

static Suite *budget_suite(void)
{
    Suite *s = suite_create("budget");
    TCase *tc = tcase_create("budget");
    tcase_set_timeout(tc, 120);
    tcase_add_checked_fixture(tc, setup_tmp, teardown_tmp);
    tcase_add_test(tc, test_exp_vec_nan_inf);
    tcase_add_test(tc, test_mem_parse_and_check);
    tcase_add_test(tc, test_budget_image_cache);
    tcase_add_test(tc, test_budget_model);
    tcase_add_test(tc, test_budget_checkpoint_read);
    tcase_add_test(tc, test_cli_max_memory);
    tcase_add_test(tc, test_jpeg_claims_absurd_size);
    tcase_add_test(tc, test_png_claims_absurd_size);
    tcase_add_test(tc, test_corrupt_image_skipped_not_blamed);
    tcase_add_test(tc, test_native_size_majority);
    tcase_add_test(tc, test_bmp_top_down);
    tcase_add_test(tc, test_bmp_rle_and_truncated);
    tcase_add_test(tc, test_png_crc);
    tcase_add_test(tc, test_png_palette_index);
    tcase_add_test(tc, test_ckpt_config_checked_before_building);
    tcase_add_test(tc, test_ckpt_info_tells_the_truth);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(budget_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}

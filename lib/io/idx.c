/* idx.c - IDX files (MNIST / Fashion-MNIST) and their conversion to a PNG
 * folder, for `scorediff convert-idx IDX_IMAGES OUT_DIR` (sd/data.h).
 *
 * Format (LeCun et al., "THE MNIST DATABASE of handwritten digits"): a 4-byte
 * magic 0x00 0x00 TYPE NDIM, then NDIM big-endian uint32 sizes, then the data
 * in row-major order. Only TYPE 0x08 (unsigned byte) is supported, which is
 * what MNIST and Fashion-MNIST use for both images and labels.
 *
 * Files may be gzip-compressed (as distributed, and as Debian's
 * dataset-fashion-mnist ships them) or plain: zlib's gzread reads both
 * transparently. Everything a header claims is checked before it is trusted:
 * sizes are overflow-checked and capped, and the data must be exactly as long
 * as the sizes say (a truncated file and trailing bytes are both errors).
 */
#include "sd/data.h"
#include "sd/file.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

/* 2 GiB: ~35x the Fashion-MNIST training images; anything bigger in an IDX
 * header is corruption, not data. */
#define SD_IDX_MAX_BYTES ((size_t)1 << 31)

/* Read exactly len bytes unless the stream ends; returns the count read or
 * -1 on a zlib error. gzread takes an unsigned int length, so read in chunks. */
static long long gz_read_full(gzFile gz, uint8_t *buf, size_t len)
{
    size_t got = 0;
    while (got < len) {
        size_t want = len - got;
        if (want > (1u << 30)) want = 1u << 30;
        int k = gzread(gz, buf + got, (unsigned)want);
        if (k < 0) return -1;
        if (k == 0) break;
        got += (size_t)k;
    }
    return (long long)got;
}

static sd_status gz_fail(const char *path, gzFile gz)
{
    int code = 0;
    const char *msg = gzerror(gz, &code);
    if (code == Z_ERRNO) msg = strerror(errno);
    return sd_error(SD_ERR_FORMAT, "%s: %s", path, msg && *msg ? msg : "gzip error");
}

sd_status sd_idx_read(const char *path, sd_idx *out)
{
    memset(out, 0, sizeof *out);
    if (!path) return sd_error(SD_ERR_INVALID, "idx: NULL path");
    int fd; /* sd/file.h: a FIFO or directory is refused at once */
    sd_status ost = sd_file_open_read(path, &fd, NULL);
    if (ost != SD_OK) return ost;
    gzFile gz = gzdopen(fd, "rb");
    if (!gz) {
        close(fd);
        return sd_error(SD_ERR_NOMEM, "%s: cannot start gzip reader", path);
    }

    sd_status st = SD_OK;
    uint8_t *data = NULL;
    uint8_t head[4 + 4 * 4];
    long long k = gz_read_full(gz, head, 4);
    if (k < 0) {
        st = gz_fail(path, gz);
        goto done;
    }
    if (k < 4 || head[0] != 0 || head[1] != 0) {
        st = sd_error(SD_ERR_FORMAT, "%s: not an IDX file (bad magic)", path);
        goto done;
    }
    if (head[2] != 0x08) {
        st = sd_error(SD_ERR_FORMAT, "%s: IDX element type 0x%02x not supported (only 0x08, unsigned byte)",
                      path, head[2]);
        goto done;
    }
    int ndim = head[3];
    if (ndim < 1 || ndim > 4) {
        st = sd_error(SD_ERR_FORMAT, "%s: IDX with %d dimensions not supported (1 to 4)", path, ndim);
        goto done;
    }
    k = gz_read_full(gz, head + 4, (size_t)ndim * 4);
    if (k < 0) {
        st = gz_fail(path, gz);
        goto done;
    }
    if (k < ndim * 4) {
        st = sd_error(SD_ERR_FORMAT, "%s: IDX header truncated", path);
        goto done;
    }
    size_t total = 1;
    for (int i = 0; i < ndim; i++) {
        const uint8_t *p = head + 4 + 4 * i;
        out->dims[i] = ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
        if (sd_mul_size(total, out->dims[i], &total) || total > SD_IDX_MAX_BYTES) {
            st = sd_error(SD_ERR_FORMAT, "%s: IDX sizes claim more than %zu bytes", path,
                          SD_IDX_MAX_BYTES);
            goto done;
        }
    }
    data = sd_malloc(total);
    if (!data) {
        st = SD_ERR_NOMEM;
        goto done;
    }
    k = gz_read_full(gz, data, total);
    if (k < 0) {
        st = gz_fail(path, gz);
        goto done;
    }
    if ((size_t)k != total) {
        st = sd_error(SD_ERR_FORMAT, "%s: IDX data truncated: header says %zu bytes, file has %lld",
                      path, total, k);
        goto done;
    }
    uint8_t extra;
    k = gz_read_full(gz, &extra, 1);
    if (k < 0) {
        st = gz_fail(path, gz);
        goto done;
    }
    if (k != 0) {
        st = sd_error(SD_ERR_FORMAT, "%s: trailing bytes after the %zu bytes of IDX data", path, total);
        goto done;
    }
    out->ndim = ndim;
    out->data = data;
    out->size = total;
    data = NULL;
done:
    gzclose(gz); /* also closes fd */
    sd_free(data);
    if (st != SD_OK) memset(out->dims, 0, sizeof out->dims);
    return st;
}

void sd_idx_free(sd_idx *idx)
{
    if (!idx) return;
    sd_free(idx->data);
    memset(idx, 0, sizeof *idx);
}

sd_status sd_idx_write_png_folder(const sd_idx *idx, const char *out_dir)
{
    if (!idx || !idx->data || !out_dir) return sd_error(SD_ERR_INVALID, "idx to png: NULL argument");
    if (idx->ndim != 3)
        return sd_error(SD_ERR_INVALID, "idx to png: expected images [N, H, W], got %d dimensions",
                        idx->ndim);
    uint32_t N = idx->dims[0], H = idx->dims[1], W = idx->dims[2];
    if (N == 0 || H == 0 || W == 0 || H > SD_IMAGE_MAX_SIDE || W > SD_IMAGE_MAX_SIDE)
        return sd_error(SD_ERR_INVALID, "idx to png: cannot write %u images of %ux%u", N, H, W);
    if (mkdir(out_dir, 0755) != 0 && errno != EEXIST)
        return sd_error(SD_ERR_IO, "%s: cannot create directory: %s", out_dir, strerror(errno));
    struct stat sb;
    if (stat(out_dir, &sb) != 0 || !S_ISDIR(sb.st_mode))
        return sd_error(SD_ERR_IO, "%s: not a directory", out_dir);

    int digits = 1;
    for (uint32_t v = N - 1; v >= 10; v /= 10) digits++;
    if (digits < 5) digits = 5;
    size_t cap = strlen(out_dir) + (size_t)digits + 16;
    char *path = sd_malloc(cap);
    if (!path) return SD_ERR_NOMEM;
    sd_status st = SD_OK;
    const size_t item = (size_t)H * W;
    for (uint32_t i = 0; i < N && st == SD_OK; i++) {
        char num[16]; /* i zero-padded to `digits` (5..10) characters */
        uint32_t v = i;
        num[digits] = '\0';
        for (int d = digits - 1; d >= 0; d--, v /= 10) num[d] = (char)('0' + v % 10);
        snprintf(path, cap, "%s/%s.png", out_dir, num);
        st = sd_image_write_png(path, (int)W, (int)H, 1, idx->data + (size_t)i * item);
    }
    sd_free(path);
    return st;
}

sd_status sd_idx_convert(const char *idx_path, const char *out_dir, size_t *written)
{
    if (written) *written = 0;
    sd_idx idx;
    sd_status st = sd_idx_read(idx_path, &idx);
    if (st != SD_OK) return st;
    if (idx.ndim != 3) {
        sd_idx_free(&idx);
        return sd_error(SD_ERR_FORMAT, "%s: expected an IDX image file [N, H, W], got %d dimensions",
                        idx_path, idx.ndim);
    }
    st = sd_idx_write_png_folder(&idx, out_dir);
    if (st == SD_OK && written) *written = idx.dims[0];
    sd_idx_free(&idx);
    return st;
}

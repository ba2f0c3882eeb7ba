/* stb_image_impl.c - the one translation unit that compiles stb_image and
 * stb_image_write (Debian's libstb-dev headers), hardened, behind sd/data.h.
 *
 * Why this file exists: stb_image has a long record of crashes on malformed
 * files (e.g. CVE-2023-45661..45667, mostly in the GIF, TGA, HDR and PSD
 * decoders). We therefore compile it ourselves with
 *   - only the PNG, JPEG, BMP and PNM decoders (STBI_ONLY_*), no HDR/linear
 *     float paths, no stdio (we read files ourselves with a size cap);
 *   - STBI_MAX_DIMENSIONS = SD_IMAGE_MAX_SIDE so stb itself refuses huge
 *     headers;
 *   - all stb symbols static (STB_IMAGE_STATIC), so nothing else can call an
 *     unhardened entry point or flip images on load;
 * and we sniff the format from its magic bytes and validate the header with
 * stbi_info plus our own pixel budget before a single pixel is decoded. The
 * fuzz harness tests/fuzz/fuzz_image.c exercises sd_image_decode.
 *
 * Non-goals: animated images, 16-bit output (16-bit PNGs are reduced to 8
 * bits by stb), colour management.
 */
#include "sd/data.h"
#include "sd/file.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_STATIC
#define STBI_ONLY_PNG
#define STBI_ONLY_JPEG
#define STBI_ONLY_BMP
#define STBI_ONLY_PNM
#define STBI_NO_STDIO
#define STBI_NO_LINEAR
#define STBI_NO_HDR
#define STBI_MAX_DIMENSIONS SD_IMAGE_MAX_SIDE
/* Zeroed allocations. stb v2.27 mallocs its JPEG decoder state without
 * clearing it, so a scan that uses a Huffman table the file never defined
 * decodes through garbage tables (garbage symbol indices: out-of-bounds
 * reads); it also fills component planes and progressive coefficients only
 * where scans reach, so a corrupt file whose scans stop early would yield
 * pixels computed from stale heap contents (different on every run, and a
 * leak of memory into the data set). With calloc an undefined table is all
 * zeros (every lookup stays in bounds) and such files decode
 * deterministically. */
#define STBI_MALLOC(sz) calloc(1, (sz))
#define STBI_REALLOC(p, newsz) realloc((p), (newsz))
#define STBI_FREE(p) free(p)

#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#define STBI_WRITE_NO_STDIO

/* PNG encoding deflates with zlib (which we link anyway) instead of
 * stb_image_write's own compressor: several times faster and smaller files,
 * which matters when converting 70000 Fashion-MNIST images. The result must
 * be malloc()ed, since stb_image_write frees it with STBIW_FREE = free. */
static unsigned char *sd__zlib_compress(unsigned char *data, int data_len, int *out_len,
                                        int quality)
{
    (void)quality;
    if (data_len < 0) return NULL;
    uLongf cap = compressBound((uLong)data_len);
    unsigned char *out = malloc(cap);
    if (!out) return NULL;
    if (compress2(out, &cap, data, (uLong)data_len, 6) != Z_OK || cap > INT_MAX) {
        free(out);
        return NULL;
    }
    *out_len = (int)cap;
    return out;
}
#define STBIW_ZLIB_COMPRESS sd__zlib_compress
#define STBIW_CRC32(buf, len) ((unsigned int)crc32(0, (buf), (uInt)(len)))

/* stb is third-party code: silence its warnings here only, so that our own
 * code keeps -Wall -Wextra -Wpedantic. -Wunused-function stays off for the
 * whole file: GCC reports the static stb functions we never call (and a few
 * declared but not defined in this configuration) at the end of the unit. */
#if defined(__GNUC__)
#pragma GCC diagnostic ignored "-Wunused-function"
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wunused-but-set-variable"
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"
#pragma GCC diagnostic ignored "-Wimplicit-fallthrough"
#pragma GCC diagnostic ignored "-Wpedantic"
#pragma GCC diagnostic ignored "-Wdouble-promotion"
#pragma GCC diagnostic ignored "-Wconversion"
#pragma GCC diagnostic ignored "-Wshadow"
#pragma GCC diagnostic ignored "-Wcast-qual"
#endif
/* Two classes of undefined behaviour remain in stb v2.27's JPEG decoder on
 * crafted files (v2.28 added checks for both), found by our fuzzer:
 *   - DC predictors and dequantised coefficients overflow int. Harmless when
 *     it wraps: the values only ever become pixel intensities, never sizes or
 *     indices. GCC: this unit is compiled with wrapping signed arithmetic
 *     (-fwrapv semantics), so it is defined.
 *   - After a marker ends the entropy data early, code_bits goes negative and
 *     stbi__grow_buffer_unsafe shifts by 32 or more. The value shifted is
 *     then always the 0 it substitutes for missing data (nomore is set), so
 *     the intended result is 0 whatever the shift does.
 * Clang (fuzz builds) has no per-function -fwrapv: there stb's functions are
 * exempted from exactly these two checks; every other sanitizer check still
 * applies to them. */
#if defined(__clang__)
#pragma clang attribute push(__attribute__((no_sanitize("signed-integer-overflow", "shift-exponent"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC optimize("wrapv")
#endif
#include <stb/stb_image.h>
#include <stb/stb_image_write.h>
#if defined(__clang__)
#pragma clang attribute pop
#endif
#if defined(__GNUC__)
#pragma GCC diagnostic pop
#endif

typedef enum { FMT_NONE, FMT_PNG, FMT_JPEG, FMT_BMP, FMT_PNM } image_format;

static const char *format_name(image_format f)
{
    switch (f) {
    case FMT_PNG: return "PNG";
    case FMT_JPEG: return "JPEG";
    case FMT_BMP: return "BMP";
    case FMT_PNM: return "PNM";
    case FMT_NONE: break;
    }
    return "unknown";
}

/* The format from the magic bytes. stb picks its decoder by the same bytes
 * (each other decoder rejects the file at its first bytes), so the structure
 * check we run below is the one for the decoder stb will use. */
static image_format sniff(const uint8_t *b, size_t len)
{
    static const uint8_t png_sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
    if (len >= 8 && memcmp(b, png_sig, 8) == 0) return FMT_PNG;
    if (len >= 3 && b[0] == 0xFF && b[1] == 0xD8 && b[2] == 0xFF) return FMT_JPEG;
    if (len >= 2 && b[0] == 'B' && b[1] == 'M') return FMT_BMP;
    if (len >= 2 && b[0] == 'P' && (b[1] == '5' || b[1] == '6')) return FMT_PNM;
    return FMT_NONE;
}

static uint32_t be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static int dims_ok(uint64_t w, uint64_t h)
{
    return w >= 1 && h >= 1 && w <= SD_IMAGE_MAX_SIDE && h <= SD_IMAGE_MAX_SIDE &&
           w * h <= SD_IMAGE_MAX_PIXELS;
}

static sd_status too_large(image_format f, uint64_t w, uint64_t h)
{
    return sd_error(SD_ERR_FORMAT,
                    "%s header claims %llu x %llu pixels (limit %d per side, %zu in total)",
                    format_name(f), (unsigned long long)w, (unsigned long long)h,
                    SD_IMAGE_MAX_SIDE, SD_IMAGE_MAX_PIXELS);
}

/* ---- Pre-decode structure checks ----
 *
 * Debian's stb_image is v2.27; fuzzing it (tests/fuzz/fuzz_image.c) finds
 * bugs that v2.28 later fixed. We cannot patch the system header, so each
 * check below walks the file exactly as stb's own parser would and rejects
 * the inputs that reach a known bug, before stb sees them. Each walker is
 * conservative: where it cannot follow stb precisely it inspects a superset
 * of what stb would read, so it may reject an odd file stb would accept, but
 * never accepts one that reaches the bug. */

/* JPEG. stbi__build_huffman (v2.27) writes one code length per symbol into
 * size[257] and DHT values into values[256] without checking that the 16
 * counts sum to at most 256: a crafted DHT overflows the decoder struct
 * (found by our fuzzer at once). We visit every marker stb could process:
 * segments are skipped by their length, as stb consumes them (a length stb
 * would not consume exactly makes stb fail at that segment); junk between
 * segments is scanned for the next 0xFF, which is where stb resynchronises;
 * entropy-coded data ends at the first 0xFF followed by neither 0x00 (byte
 * stuffing), 0xFF (fill) nor RST0-7, and stb's bit reader never reads past
 * that marker. A DHT is checked table by table like stbi__process_marker
 * reads it. A file without any scan (SOS) is refused as well: stb would
 * return an image that no data ever wrote. */
static const char *jpeg_check(const uint8_t *b, size_t len)
{
    static const char *no_scan = "JPEG has no image data (no scan before its end)";
    size_t pos = 2; /* after SOI */
    int scans = 0;
    for (;;) {
        while (pos < len && b[pos] != 0xFF) pos++;
        while (pos < len && b[pos] == 0xFF) pos++;
        if (pos >= len) return scans ? NULL : no_scan; /* stb reads zeros at EOF */
        uint8_t m = b[pos++];
        if (m == 0xD9) return scans ? NULL : no_scan; /* EOI: stb stops */
        if (m == 0x00 || m == 0x01 || m == 0xD8 || (m >= 0xD0 && m <= 0xD7))
            continue;               /* no length; stb fails or stops here */
        if (pos + 2 > len) return NULL;
        size_t L = ((size_t)b[pos] << 8) | b[pos + 1];
        if (L < 2) return "corrupt JPEG (segment length < 2)";
        if (m == 0xC4) {
            size_t p = pos + 2, rem = L - 2;
            while (rem > 0) {
                if (p + 17 > len || rem < 17) return "corrupt JPEG (truncated DHT)";
                if ((b[p] >> 4) > 1 || (b[p] & 15) > 3) return "corrupt JPEG (bad DHT table id)";
                size_t n = 0;
                for (int i = 1; i <= 16; i++) n += b[p + (size_t)i];
                if (n > 256) return "corrupt JPEG (DHT defines more than 256 codes)";
                if (rem < 17 + n) return "corrupt JPEG (DHT longer than its segment)";
                p += 17 + n;
                rem -= 17 + n;
            }
        }
        pos += L;
        scans += m == 0xDA;
        if (m == 0xDA) {
            /* Entropy-coded data after the scan header. */
            while (pos < len) {
                if (b[pos] != 0xFF) {
                    pos++;
                    continue;
                }
                size_t q = pos + 1;
                while (q < len && b[q] == 0xFF) q++;
                if (q >= len) return NULL;
                if (b[q] == 0x00 || (b[q] >= 0xD0 && b[q] <= 0xD7)) {
                    pos = q + 1;
                    continue;
                }
                break; /* a marker: the outer loop reads it from this 0xFF */
            }
        }
    }
}

/* PNG. Three problems of stb v2.27 are screened here, visiting the chunks
 * exactly as stbi__parse_png_file does (4-byte length, type, data, CRC):
 *   - a zero-length first IDAT makes it compute idata + 0 on a NULL pointer
 *     (undefined behaviour);
 *   - it grows its IDAT buffer to the length a chunk *claims* before reading
 *     it, so a 100-byte file can make it allocate 2 GiB: every chunk must fit
 *     in the file (stb fails on any PNG truncated before IEND anyway);
 *   - its inflater grows the output until 4 GiB, whatever the header says:
 *     a small "zip bomb" PNG exhausts memory. We inflate the IDAT stream with
 *     zlib first, discarding the output, and refuse more than twice the size
 *     the IHDR implies (filter bytes and Adam7 passes add far less).
 * Apple's CgBI variant (raw deflate) is refused rather than special-cased. */
static const char *png_inflate_check(const uint8_t *b, size_t len, uint64_t limit)
{
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (inflateInit(&zs) != Z_OK) return "out of memory (zlib)";
    static _Thread_local uint8_t sink[1 << 16];
    uint64_t total = 0;
    const char *bad = NULL;
    int done = 0;
    for (size_t pos = 8; !done && !bad && pos + 12 <= len;) {
        uint32_t clen = be32(b + pos);
        if (memcmp(b + pos + 4, "IDAT", 4) == 0) {
            zs.next_in = (Bytef *)(uintptr_t)(b + pos + 8);
            zs.avail_in = clen;
            while (zs.avail_in > 0) {
                zs.next_out = sink;
                zs.avail_out = sizeof sink;
                int zr = inflate(&zs, Z_NO_FLUSH);
                total += sizeof sink - zs.avail_out;
                if (total > limit) {
                    bad = "PNG image data inflates beyond the size its header declares";
                    break;
                }
                if (zr == Z_STREAM_END) {
                    done = 1;
                    break;
                }
                if (zr != Z_OK) {
                    done = 1; /* corrupt stream: stb's own error will say so */
                    break;
                }
            }
        }
        pos += (size_t)clen + 12;
    }
    inflateEnd(&zs);
    return bad;
}

/* Palette indices. stb v2.27 expands an indexed PNG through a 256-entry
 * palette array on its stack of which only the PLTE entries are set: an
 * index at or past the PLTE's entry count reads uninitialised memory (pixels
 * that differ from run to run). libpng reports such files as errors too. So
 * when the PLTE has fewer than 2^depth entries we inflate the image data,
 * undo the row filters (bytes, bpp = 1 for depth <= 8) pass by pass and
 * check every index. The output size is exactly what the header implies
 * (stb refuses a shorter stream), at most 2^24 pixels at 8 bits. */
static const char *png_palette_check(const uint8_t *b, size_t len, uint32_t w, uint32_t h,
                                     int depth, int interlace, unsigned npal)
{
    /* Adam7 passes (x0, y0, dx, dy); a non-interlaced image is one pass. */
    static const int a7[7][4] = {{0, 0, 8, 8}, {4, 0, 8, 8}, {0, 4, 4, 8}, {2, 0, 4, 4},
                                 {0, 2, 2, 4}, {1, 0, 2, 2}, {0, 1, 1, 2}};
    static const int one[1][4] = {{0, 0, 1, 1}};
    const int (*pass)[4] = interlace ? a7 : one;
    int npass = interlace ? 7 : 1;
    size_t total = 0, maxrow = 0;
    for (int k = 0; k < npass; k++) {
        size_t pw = (w - (uint32_t)pass[k][0] + (uint32_t)pass[k][2] - 1) / (uint32_t)pass[k][2];
        size_t ph = (h - (uint32_t)pass[k][1] + (uint32_t)pass[k][3] - 1) / (uint32_t)pass[k][3];
        if (w <= (uint32_t)pass[k][0] || h <= (uint32_t)pass[k][1]) continue;
        size_t rb = (pw * (size_t)depth + 7) / 8;
        total += ph * (rb + 1);
        if (rb > maxrow) maxrow = rb;
    }
    uint8_t *raw = malloc(total + 1), *prev = calloc(maxrow + 1, 1);
    if (!raw || !prev) {
        free(raw);
        free(prev);
        return "out of memory (PNG palette check)";
    }
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    const char *bad = NULL;
    if (inflateInit(&zs) != Z_OK) bad = "out of memory (zlib)";
    zs.next_out = raw;
    zs.avail_out = (uInt)total;
    int done = 0;
    for (size_t pos = 8; !bad && !done && pos + 12 <= len;) {
        uint32_t clen = be32(b + pos);
        if (memcmp(b + pos + 4, "IDAT", 4) == 0 && zs.avail_out > 0) {
            zs.next_in = (Bytef *)(uintptr_t)(b + pos + 8);
            zs.avail_in = clen;
            int zr = inflate(&zs, Z_NO_FLUSH);
            if (zr == Z_STREAM_END || zs.avail_out == 0) done = 1;
            else if (zr != Z_OK && zr != Z_BUF_ERROR) done = 1;
        }
        pos += (size_t)clen + 12;
    }
    inflateEnd(&zs);
    /* A short or corrupt stream is left to stb, which refuses it ("not
     * enough pixels"); only a complete image is checked. */
    if (!bad && zs.avail_out == 0) {
        uint8_t *p = raw;
        for (int k = 0; k < npass && !bad; k++) {
            if (w <= (uint32_t)pass[k][0] || h <= (uint32_t)pass[k][1]) continue;
            size_t pw = (w - (uint32_t)pass[k][0] + (uint32_t)pass[k][2] - 1) / (uint32_t)pass[k][2];
            size_t ph = (h - (uint32_t)pass[k][1] + (uint32_t)pass[k][3] - 1) / (uint32_t)pass[k][3];
            size_t rb = (pw * (size_t)depth + 7) / 8;
            memset(prev, 0, maxrow + 1);
            for (size_t y = 0; y < ph && !bad; y++, p += rb + 1) {
                uint8_t f = p[0], *cur = p + 1;
                if (f > 4) goto out; /* stb refuses it: "invalid filter" */
                for (size_t i = 0; i < rb; i++) {
                    int a = i ? cur[i - 1] : 0, up = prev[i], c = i ? prev[i - 1] : 0;
                    int v = cur[i];
                    if (f == 1) v += a;
                    else if (f == 2) v += up;
                    else if (f == 3) v += (a + up) >> 1;
                    else if (f == 4) {
                        int pp = a + up - c, pa = abs(pp - a), pb = abs(pp - up), pc = abs(pp - c);
                        v += pa <= pb && pa <= pc ? a : pb <= pc ? up : c;
                    }
                    cur[i] = (uint8_t)v;
                }
                for (size_t x = 0; x < pw; x++) {
                    unsigned idx;
                    if (depth == 8) idx = cur[x];
                    else {
                        size_t bit = x * (size_t)depth;
                        idx = (cur[bit / 8] >> (8 - depth - (int)(bit % 8))) & ((1u << depth) - 1);
                    }
                    if (idx >= npal) {
                        bad = "corrupt PNG (a pixel's palette index is past the end of the palette)";
                        break;
                    }
                }
                memcpy(prev, cur, rb);
            }
        }
    }
out:
    free(raw);
    free(prev);
    return bad;
}

/* Deflate cannot compress by more than 1032:1 (a 258-byte match, the
 * longest, costs at least 2 bits), so a PNG whose file is smaller than
 * 1/1032 of the filtered image data its IHDR declares cannot hold that
 * image: it is corrupt, or crafted to make a decoder allocate for it. */
#define PNG_MAX_DEFLATE_RATIO 1032u

static const char *png_check(const uint8_t *b, size_t len)
{
    size_t pos = 8;
    int have_idat = 0, palette = 0, depth = 0, interlace = 0;
    uint32_t w = 0, h = 0;
    unsigned npal = 0;
    uint64_t raw = 0;
    while (pos + 8 <= len) {
        uint32_t clen = be32(b + pos);
        const uint8_t *type = b + pos + 4;
        if ((uint64_t)clen + 12 > (uint64_t)(len - pos))
            return "truncated PNG (a chunk runs past the end of the file)";
        /* CRCs: stb ignores them, so a flipped bit in the image data decoded
         * into wrong pixels silently. As libpng does, a critical chunk
         * (upper-case first letter: IHDR, PLTE, IDAT, IEND) with a bad CRC
         * is an error; stb skips ancillary chunks, so theirs do not matter. */
        if (!(type[0] & 0x20) &&
            (uint32_t)crc32(0, type, (uInt)clen + 4) != be32(b + pos + 8 + clen)) {
            static _Thread_local char msg[64];
            snprintf(msg, sizeof msg, "corrupt PNG (CRC mismatch in chunk %c%c%c%c)",
                     type[0] & 0x7f, type[1] & 0x7f, type[2] & 0x7f, type[3] & 0x7f);
            return msg;
        }
        if (pos == 8) {
            /* stb requires IHDR first; 13 bytes: w, h, depth, colour, ... */
            if (memcmp(type, "IHDR", 4) != 0 || clen != 13) return "corrupt PNG (no IHDR first)";
            const uint8_t *d = b + pos + 8;
            static const int channels[7] = {1, 0, 3, 1, 2, 0, 4};
            w = be32(d);
            h = be32(d + 4);
            depth = d[8];
            int ch = d[9] <= 6 ? channels[d[9]] : 0;
            if (!dims_ok(w, h) || ch == 0 || depth == 0 || depth > 16)
                return NULL; /* stb_info / our dims check give the reason */
            raw = (uint64_t)h * (1 + ((uint64_t)w * (uint64_t)depth * (uint64_t)ch + 7) / 8);
            if (raw / PNG_MAX_DEFLATE_RATIO > len)
                return "PNG header claims more pixels than a file of this size can hold "
                       "(deflate compresses at most 1032:1)";
            /* Only the depths PNG allows for indexed colour (stb refuses others;
             * and the bit extraction below assumes a divisor of 8). */
            palette = d[9] == 3 && (depth == 1 || depth == 2 || depth == 4 || depth == 8);
            interlace = d[12];
        }
        if (memcmp(type, "CgBI", 4) == 0) return "Apple CgBI PNG not supported";
        if (memcmp(type, "IEND", 4) == 0) break;
        if (memcmp(type, "PLTE", 4) == 0) npal = clen / 3;
        if (memcmp(type, "IDAT", 4) == 0) {
            if (clen == 0 && !have_idat) return "corrupt PNG (empty first IDAT chunk)";
            have_idat |= clen > 0;
        }
        pos += (size_t)clen + 12;
    }
    if (!have_idat) return NULL;
    const char *bad = png_inflate_check(b, len, 2 * raw + 65536);
    if (!bad && palette && npal > 0 && npal < (1u << depth) && interlace <= 1)
        bad = png_palette_check(b, len, w, h, depth, interlace, npal);
    return bad;
}

/* BMP. Three differences from what stb v2.27 reports:
 *   - stbi__bmp_info returns the header's height as is, negative for a
 *     top-down BMP (a valid layout, which stb's loader decodes): the height
 *     is its absolute value;
 *   - RLE8/RLE4 compression: stb cannot decode it; say so instead of
 *     "corrupt";
 *   - a file shorter than its uncompressed pixel array: stb reads zeros past
 *     the end and returns a partly black image; refuse it.
 * Header (little-endian): "BM", size, reserved, pixel offset at 10, info
 * header size at 14; OS/2 (size 12): w, h as u16 at 18, 20, bpp at 24;
 * otherwise w, h as i32 at 18, 22, bpp at 28, compression at 30. */
static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static const char *bmp_check(const uint8_t *b, size_t len, int *h_abs)
{
    *h_abs = 0;
    if (len < 26) return NULL; /* stb: corrupt header */
    uint32_t off = le32(b + 10), hsz = le32(b + 14);
    int64_t w, h;
    unsigned bpp, comp = 0;
    if (hsz == 12) {
        w = b[18] | (b[19] << 8);
        h = b[20] | (b[21] << 8);
        bpp = (unsigned)(b[24] | (b[25] << 8));
    } else {
        if (len < 34) return NULL;
        w = (int32_t)le32(b + 18);
        h = (int32_t)le32(b + 22);
        bpp = (unsigned)(b[28] | (b[29] << 8));
        comp = le32(b + 30);
    }
    if (comp == 1 || comp == 2)
        return comp == 1 ? "BMP with RLE8 compression is not supported (convert it to PNG)"
                         : "BMP with RLE4 compression is not supported (convert it to PNG)";
    if (h < 0) h = -h;
    if (w < 1 || h < 1 || !dims_ok((uint64_t)w, (uint64_t)h)) return NULL; /* caller reports */
    *h_abs = (int)h;
    if ((comp == 0 || comp == 3) && bpp >= 1 && bpp <= 32) {
        uint64_t row = (((uint64_t)w * bpp + 31) / 32) * 4;
        if ((uint64_t)off + row * (uint64_t)h > len)
            return "truncated BMP pixel data (the file is shorter than its header's image)";
    }
    return NULL;
}

/* JPEG. Every 8x8 block of the first component is coded in some scan with
 * at least its DC difference, a Huffman code of at least 1 bit (stb decodes
 * Huffman-coded JPEGs only, baseline or progressive; an EOB run can skip AC
 * coefficients, never a DC). So a JPEG holds at least one bit per 8x8 block:
 * a 4000 x 4000 frame needs >= 31250 bytes. A smaller file claiming it is
 * corrupt; stb would "decode" it by padding the missing data with zeros.
 * Real images use far more (a uniform grey image ~4 bits per block). */
static const char *jpeg_size_check(size_t len, int w, int h)
{
    uint64_t blocks = ((uint64_t)w + 7) / 8 * (((uint64_t)h + 7) / 8);
    if ((blocks + 7) / 8 > len)
        return "JPEG header claims more pixels than a file of this size can hold "
               "(at least 1 bit per 8x8 block)";
    return NULL;
}

/* PNM. stbi__pnm_getinteger (v2.27) overflows int on long digit runs, and
 * stbi__pnm_load returns an uninitialised buffer when the pixel data is
 * short (stbi__getn copies nothing). This replays stbi__pnm_info byte for
 * byte (get8 yields 0 at EOF, as stb's does) and checks both. */
typedef struct pnm_reader {
    const uint8_t *b;
    size_t len, pos;
} pnm_reader;

static int pnm_eof(const pnm_reader *r) { return r->pos >= r->len; }
static char pnm_get8(pnm_reader *r) { return r->pos < r->len ? (char)r->b[r->pos++] : 0; }

static int pnm_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r';
}

static void pnm_skip(pnm_reader *r, char *c)
{
    for (;;) {
        while (!pnm_eof(r) && pnm_space(*c)) *c = pnm_get8(r);
        if (pnm_eof(r) || *c != '#') break;
        while (!pnm_eof(r) && *c != '\n' && *c != '\r') *c = pnm_get8(r);
    }
}

/* -1 if stb's int accumulator would overflow. */
static long pnm_int(pnm_reader *r, char *c)
{
    long v = 0;
    while (!pnm_eof(r) && *c >= '0' && *c <= '9') {
        v = v * 10 + (*c - '0');
        if (v > INT_MAX) return -1;
        *c = pnm_get8(r);
    }
    return v;
}

static const char *pnm_check(const uint8_t *b, size_t len)
{
    pnm_reader r = {b, len, 2};
    int comp = b[1] == '6' ? 3 : 1;
    char c = pnm_get8(&r);
    pnm_skip(&r, &c);
    long w = pnm_int(&r, &c);
    pnm_skip(&r, &c);
    long h = pnm_int(&r, &c);
    pnm_skip(&r, &c);
    long maxv = pnm_int(&r, &c);
    if (w < 0 || h < 0 || maxv < 0) return "corrupt PNM header (number too large)";
    if (maxv > 65535) return NULL; /* stb rejects it */
    if (!dims_ok((uint64_t)w, (uint64_t)h)) return NULL; /* reported by the caller */
    uint64_t need = (uint64_t)w * (uint64_t)h * (uint64_t)comp * (maxv > 255 ? 2u : 1u);
    if (need > (uint64_t)(len - r.pos)) return "truncated PNM pixel data";
    return NULL;
}

sd_status sd_image_probe(const uint8_t *buf, size_t len, int *pw, int *ph, int *pcomp)
{
    *pw = *ph = *pcomp = 0;
    if (len == 0) return sd_error(SD_ERR_FORMAT, "empty file");
    if (len > SD_IMAGE_MAX_FILE_BYTES || len > INT_MAX)
        return sd_error(SD_ERR_FORMAT, "file of %zu bytes exceeds the %zu-byte limit",
                        len, SD_IMAGE_MAX_FILE_BYTES);
    image_format fmt = sniff(buf, len);
    if (fmt == FMT_NONE) {
        if (len >= 2 && buf[0] == 'P' && buf[1] >= '1' && buf[1] <= '7')
            return sd_error(SD_ERR_FORMAT, "PNM variant P%c not supported (only binary P5/P6)",
                            buf[1]);
        return sd_error(SD_ERR_FORMAT, "not a PNG, JPEG, BMP or PNM image");
    }

    /* PNG: the IHDR chunk must come first (PNG spec 5.6), with the size at
     * bytes 16..23. Reading it here gives a precise message for absurd
     * headers; stb would reject them too (STBI_MAX_DIMENSIONS). */
    if (fmt == FMT_PNG && len >= 24 && memcmp(buf + 12, "IHDR", 4) == 0) {
        uint32_t pw32 = be32(buf + 16), ph32 = be32(buf + 20);
        if (!dims_ok(pw32, ph32)) return too_large(fmt, pw32, ph32);
    }

    int bmp_h = 0;
    const char *bad = fmt == FMT_JPEG  ? jpeg_check(buf, len)
                      : fmt == FMT_PNG ? png_check(buf, len)
                      : fmt == FMT_PNM ? pnm_check(buf, len)
                                       : bmp_check(buf, len, &bmp_h);
    if (bad) return sd_error(SD_ERR_FORMAT, "%s", bad);

    int w = 0, h = 0, comp = 0;
    if (!stbi_info_from_memory(buf, (int)len, &w, &h, &comp))
        return sd_error(SD_ERR_FORMAT, "corrupt %s header (or over %d pixels per side)",
                        format_name(fmt), SD_IMAGE_MAX_SIDE);
    if (fmt == FMT_BMP && bmp_h > 0) h = bmp_h; /* top-down: stb_info gives -h */
    if (w <= 0 || h <= 0 || !dims_ok((uint64_t)w, (uint64_t)h))
        return too_large(fmt, (uint64_t)(w < 0 ? 0 : w), (uint64_t)(h < 0 ? 0 : h));
    if (comp < 1 || comp > 4)
        return sd_error(SD_ERR_FORMAT, "%s header has %d channels", format_name(fmt), comp);
    if (fmt == FMT_JPEG && (bad = jpeg_size_check(len, w, h)) != NULL)
        return sd_error(SD_ERR_FORMAT, "%s (%d x %d in %zu bytes)", bad, w, h, len);
    *pw = w;
    *ph = h;
    *pcomp = comp;
    return SD_OK;
}

sd_status sd_image_decode(const uint8_t *buf, size_t len, sd_image *out)
{
    memset(out, 0, sizeof *out);
    int w = 0, h = 0, comp = 0;
    sd_status st = sd_image_probe(buf, len, &w, &h, &comp);
    if (st != SD_OK) return st;
    image_format fmt = sniff(buf, len);

    int dw = 0, dh = 0, dcomp = 0;
    uint8_t *px = stbi_load_from_memory(buf, (int)len, &dw, &dh, &dcomp, 0);
    if (!px)
        return sd_error(SD_ERR_FORMAT, "cannot decode %s: %s", format_name(fmt),
                        stbi_failure_reason() ? stbi_failure_reason() : "unknown reason");
    /* The decoder re-parses the header; insist it agrees with what we checked. */
    if (dw != w || dh != h || dcomp < 1 || dcomp > 4) {
        stbi_image_free(px);
        return sd_error(SD_ERR_FORMAT, "%s decoder disagrees with its header (%dx%dx%d vs %dx%dx%d)",
                        format_name(fmt), dw, dh, dcomp, w, h, comp);
    }
    out->w = dw;
    out->h = dh;
    out->comp = dcomp;
    out->pixels = px;
    return SD_OK;
}

void sd_image_free(sd_image *img)
{
    if (!img) return;
    stbi_image_free(img->pixels);
    memset(img, 0, sizeof *img);
}

/* stb's output callback: streams the encoded PNG into the atomic writer and
 * keeps the first error. */
typedef struct png_sink {
    sd_file_writer *w;
    sd_status st;
} png_sink;

static void png_to_writer(void *ctx, void *data, int size)
{
    png_sink *s = ctx;
    if (s->st == SD_OK && size > 0) s->st = sd_file_writer_write(s->w, data, (size_t)size);
}

sd_status sd_image_write_png(const char *path, int w, int h, int comp,
                             const uint8_t *pixels)
{
    if (w < 1 || h < 1 || comp < 1 || comp > 4 || w > SD_IMAGE_MAX_SIDE ||
        h > SD_IMAGE_MAX_SIDE || !pixels)
        return sd_error(SD_ERR_INVALID, "%s: cannot write a %dx%dx%d image as PNG",
                        path, w, h, comp);
    /* sd/file.h: a temporary file beside path ("<path>.tmp.<pid>.<n>": no
     * image extension, so a crash leaves nothing the image loader would pick
     * up), fsync, rename, directory fsync. */
    png_sink sink = {NULL, SD_OK};
    sd_status st = sd_file_writer_open(path, &sink.w);
    if (st != SD_OK) return st;
    if (!stbi_write_png_to_func(png_to_writer, &sink, w, h, comp, pixels, w * comp)) {
        sd_file_writer_abort(sink.w);
        return sink.st != SD_OK ? sink.st : sd_error(SD_ERR_NOMEM, "%s: PNG encoding failed", path);
    }
    if (sink.st != SD_OK) {
        sd_file_writer_abort(sink.w);
        return sink.st;
    }
    return sd_file_writer_commit(sink.w);
}

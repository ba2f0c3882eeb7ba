/* data_image.c - image folders -> one uint8 cache [N, C, H, W] (sd/data.h).
 *
 * Pipeline per file: read (size-capped) -> sd_image_decode (magic sniff,
 * header check, stb decode) -> sd_image_prepare (channel conversion, area
 * resize of the centred square, rounding) -> cache slot. Files are visited in
 * byte-wise sorted path order so that item i is the same file on every run and
 * every machine, whatever order readdir() returns.
 *
 * Dimension vocabulary: w, h, comp = source width, height, channels; C =
 * target channels; ow, oh = output width, height (S x S with a target size).
 *
 * Non-goals: EXIF orientation, gamma/colour management (the area average is
 * taken on the stored 8-bit values, as most training pipelines do).
 */
#include "sd/data.h"
#include "sd/file.h"
#include "sd/membudget.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

/* Deeper trees are almost certainly a mistake (or a bind-mount loop). */
#define SD_WALK_MAX_DEPTH 64

/* ---- Resampling ---- */

/* The source pixels contributing to one output pixel along one axis:
 * src[first .. first + count) with weights wt[at .. at + count). */
typedef struct taps {
    int first, count;
    size_t at;
} taps;

/* Area (box) filter along one axis. Output pixel o covers the source interval
 *     [a, b) = [off + o * len / m, off + (o + 1) * len / m)
 * of a piecewise-constant source; its value is the exact mean of the source
 * over that interval, i.e. weight_j = |[a, b) n [j, j + 1)| / (b - a). This
 * is the same formula for down- and up-sampling; at len == m with an integer
 * offset it is the identity (one tap of weight exactly 1). */
static sd_status make_taps(int n, double off, double len, int m, taps **out_t, double **out_w)
{
    double scale = len / m;
    size_t per = (size_t)ceil(scale) + 2; /* taps an interval of length scale can touch */
    size_t total;
    if (sd_mul_size(per, (size_t)m, &total)) return sd_error(SD_ERR_NOMEM, "resize: tap table overflows");
    taps *t = sd_calloc((size_t)m, sizeof *t);
    double *wt = sd_calloc(total, sizeof *wt);
    if (!t || !wt) {
        sd_free(t);
        sd_free(wt);
        return SD_ERR_NOMEM;
    }
    size_t at = 0;
    for (int o = 0; o < m; o++) {
        double a = off + (double)o * len / m;
        double b = off + (double)(o + 1) * len / m;
        int j0 = (int)floor(a), j1 = (int)ceil(b) - 1;
        if (j0 < 0) j0 = 0;
        if (j1 > n - 1) j1 = n - 1;
        if (j1 < j0) j1 = j0;
        t[o].first = j0;
        t[o].count = j1 - j0 + 1;
        t[o].at = at;
        for (int j = j0; j <= j1; j++) {
            double lo = a > j ? a : j, hi = b < j + 1 ? b : j + 1;
            wt[at++] = hi > lo ? (hi - lo) / (b - a) : 0.0;
        }
    }
    *out_t = t;
    *out_w = wt;
    return SD_OK;
}

/* One source row converted to C channels: row[x * C + c] (w x C floats).
 * ITU-R BT.601 luma for RGB -> gray, replication for gray -> RGB, alpha
 * (comp 2 and 4) dropped. */
static void convert_row(const sd_image *img, int y, int C, float *row)
{
    const uint8_t *p = img->pixels + (size_t)y * (size_t)img->w * (size_t)img->comp;
    int comp = img->comp;
    for (int x = 0; x < img->w; x++, p += comp) {
        if (comp <= 2) {
            for (int c = 0; c < C; c++) row[x * C + c] = p[0];
        } else if (C == 1) {
            row[x] = 0.299f * p[0] + 0.587f * p[1] + 0.114f * p[2];
        } else {
            row[x * 3 + 0] = p[0];
            row[x * 3 + 1] = p[1];
            row[x * 3 + 2] = p[2];
        }
    }
}

sd_status sd_image_prepare(const sd_image *img, int channels, int size, uint8_t *out)
{
    if (!img || !img->pixels || img->w < 1 || img->h < 1 || img->comp < 1 || img->comp > 4)
        return sd_error(SD_ERR_INVALID, "image prepare: empty or invalid image");
    if (channels != 1 && channels != 3)
        return sd_error(SD_ERR_INVALID, "image prepare: channels must be 1 or 3, got %d", channels);
    if (size < 0 || size > SD_IMAGE_MAX_SIDE)
        return sd_error(SD_ERR_INVALID, "image prepare: size must be in [0, %d], got %d",
                        SD_IMAGE_MAX_SIDE, size);
    const int C = channels, w = img->w, h = img->h;
    int ow = w, oh = h;
    double offx = 0.0, offy = 0.0, lenx = w, leny = h;
    if (size > 0) {
        /* Centre crop of the resized image == area resize of the centred
         * min(w, h)^2 source square: the crop offset (w - m) / 2 may be a
         * half pixel, which the area filter handles exactly. */
        int m = w < h ? w : h;
        ow = oh = size;
        lenx = leny = m;
        offx = (w - m) / 2.0;
        offy = (h - m) / 2.0;
    }

    taps *tx = NULL, *ty = NULL;
    double *wx = NULL, *wy = NULL;
    float *row = NULL, *tmp = NULL;
    sd_status st = make_taps(w, offx, lenx, ow, &tx, &wx);
    if (st == SD_OK) st = make_taps(h, offy, leny, oh, &ty, &wy);
    if (st != SD_OK) goto done;

    /* Horizontal pass over the source rows the vertical taps need:
     * tmp[(y - y0) * ow * C + x * C + c]. */
    int y0 = ty[0].first, y1 = ty[oh - 1].first + ty[oh - 1].count; /* [y0, y1) */
    size_t tmp_n;
    if (sd_mul_size((size_t)(y1 - y0), (size_t)ow * (size_t)C, &tmp_n)) {
        st = sd_error(SD_ERR_NOMEM, "image prepare: buffer size overflows");
        goto done;
    }
    row = sd_malloc((size_t)w * (size_t)C * sizeof *row);
    tmp = sd_malloc(tmp_n * sizeof *tmp);
    if (!row || !tmp) {
        st = SD_ERR_NOMEM;
        goto done;
    }
    for (int y = y0; y < y1; y++) {
        convert_row(img, y, C, row);
        float *t = tmp + (size_t)(y - y0) * (size_t)ow * (size_t)C;
        for (int x = 0; x < ow; x++) {
            const double *wt = wx + tx[x].at;
            for (int c = 0; c < C; c++) {
                double acc = 0.0;
                for (int k = 0; k < tx[x].count; k++)
                    acc += wt[k] * row[(size_t)(tx[x].first + k) * (size_t)C + (size_t)c];
                t[x * C + c] = (float)acc;
            }
        }
    }
    /* Vertical pass, planar output out[c][y][x], rounded once to nearest. */
    for (int y = 0; y < oh; y++) {
        const double *wt = wy + ty[y].at;
        for (int x = 0; x < ow; x++) {
            for (int c = 0; c < C; c++) {
                double acc = 0.0;
                for (int k = 0; k < ty[y].count; k++)
                    acc += wt[k] * tmp[((size_t)(ty[y].first + k - y0) * (size_t)ow + (size_t)x) * (size_t)C + (size_t)c];
                double v = floor(acc + 0.5);
                v = v < 0.0 ? 0.0 : (v > 255.0 ? 255.0 : v);
                out[((size_t)c * (size_t)oh + (size_t)y) * (size_t)ow + (size_t)x] = (uint8_t)v;
            }
        }
    }
done:
    sd_free(tx);
    sd_free(ty);
    sd_free(wx);
    sd_free(wy);
    sd_free(row);
    sd_free(tmp);
    return st;
}

/* ---- Files ---- */

/* Read a whole regular file of at most max_bytes (sd/file.h: a FIFO never
 * blocks). The message is the reason only; the caller prefixes the path. */
static sd_status read_file(const char *path, size_t max_bytes, uint8_t **data, size_t *len)
{
    char *buf;
    sd_status st = sd_file_read_all(path, max_bytes, &buf, len);
    *data = (uint8_t *)buf;
    if (st != SD_OK) {
        /* sd_file_read_all's message starts with "<path>: " */
        const char *m = sd_error_message();
        size_t pl = strlen(path);
        if (strncmp(m, path, pl) == 0 && strncmp(m + pl, ": ", 2) == 0) m += pl + 2;
        char reason[256];
        snprintf(reason, sizeof reason, "%s", m);
        st = sd_error(st, "%s", reason);
    }
    return st;
}

static int has_image_ext(const char *name)
{
    static const char *const exts[] = {".png", ".jpg", ".jpeg", ".bmp", ".pnm",
                                       ".pgm", ".ppm", ".pbm"};
    const char *dot = strrchr(name, '.');
    if (!dot) return 0;
    for (size_t i = 0; i < sizeof exts / sizeof exts[0]; i++)
        if (strcasecmp(dot, exts[i]) == 0) return 1;
    return 0;
}

typedef struct path_list {
    char **items;
    size_t n, cap;
} path_list;

static sd_status list_push(path_list *l, char *p)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 256;
        char **items = sd_calloc(cap, sizeof *items);
        if (!items) return SD_ERR_NOMEM;
        if (l->n) memcpy(items, l->items, l->n * sizeof *items);
        sd_free(l->items);
        l->items = items;
        l->cap = cap;
    }
    l->items[l->n++] = p;
    return SD_OK;
}

static void list_free(path_list *l)
{
    for (size_t i = 0; i < l->n; i++) sd_free(l->items[i]);
    sd_free(l->items);
    memset(l, 0, sizeof *l);
}

static char *join_path(const char *dir, const char *name)
{
    size_t a = strlen(dir), b = strlen(name);
    int slash = a > 0 && dir[a - 1] != '/';
    char *p = sd_malloc(a + (size_t)slash + b + 1);
    if (!p) return NULL;
    memcpy(p, dir, a);
    if (slash) p[a] = '/';
    memcpy(p + a + (size_t)slash, name, b + 1);
    return p;
}

/* Directories on the current walk path, to refuse symlink loops. */
typedef struct dir_id {
    dev_t dev;
    ino_t ino;
} dir_id;

/* Error messages are capped at 512 bytes: show the tail of a long path so
 * that the reason after it survives. */
static sd_status dir_error(const char *path, int err)
{
    size_t n = strlen(path);
    return sd_error(SD_ERR_IO, "%s%s: cannot read directory: %s", n > 300 ? "..." : "",
                    n > 300 ? path + n - 300 : path, strerror(err));
}

/* Collect image candidates below `dir`. Any directory that cannot be read is
 * an error: silently training on part of a data set is worse than stopping. */
static sd_status walk(const char *dir, int depth, dir_id *stack, path_list *out,
                      sd_data_summary *sum)
{
    DIR *d = opendir(dir);
    if (!d) return dir_error(dir, errno);
    sd_status st = SD_OK;
    for (;;) {
        errno = 0;
        struct dirent *e = readdir(d);
        if (!e) {
            if (errno) st = dir_error(dir, errno);
            break;
        }
        if (e->d_name[0] == '.') {
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) sum->ignored++;
            continue;
        }
        char *p = join_path(dir, e->d_name);
        if (!p) {
            st = SD_ERR_NOMEM;
            break;
        }
        struct stat sb;
        if (stat(p, &sb) != 0) {
            /* A directory we cannot even stat (e.g. a path over PATH_MAX) is
             * an unreadable directory. Otherwise, e.g. a dangling symlink: an
             * image name is reported as skipped by the decode step with its
             * reason, anything else ignored. */
            if (e->d_type == DT_DIR) {
                st = dir_error(p, errno);
                sd_free(p);
                break;
            }
            if (has_image_ext(e->d_name)) {
                if ((st = list_push(out, p)) != SD_OK) { sd_free(p); break; }
            } else {
                sum->ignored++;
                sd_free(p);
            }
            continue;
        }
        if (S_ISDIR(sb.st_mode)) {
            int loop = 0;
            for (int i = 0; i < depth; i++)
                loop |= stack[i].dev == sb.st_dev && stack[i].ino == sb.st_ino;
            if (loop || depth + 1 >= SD_WALK_MAX_DEPTH) {
                sum->ignored++;
            } else {
                stack[depth].dev = sb.st_dev;
                stack[depth].ino = sb.st_ino;
                st = walk(p, depth + 1, stack, out, sum);
            }
            sd_free(p);
            if (st != SD_OK) break;
        } else if (S_ISREG(sb.st_mode) && has_image_ext(e->d_name)) {
            if ((st = list_push(out, p)) != SD_OK) { sd_free(p); break; }
        } else {
            sum->ignored++;
            sd_free(p);
        }
    }
    closedir(d);
    return st;
}

static int cmp_paths(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void default_warn(void *ctx, const char *path, const char *reason)
{
    (void)ctx;
    fprintf(stderr, "warning: %s: %s\n", path, reason);
}

/* ---- Data sets ---- */

/* One file's header size in the native-size pass (w = 0: skipped). */
typedef struct probed {
    int w, h;
    size_t index; /* into the sorted file list */
} probed;

static int cmp_probed(const void *a, const void *b)
{
    const probed *x = a, *y = b;
    if (x->w != y->w) return x->w < y->w ? -1 : 1;
    if (x->h != y->h) return x->h < y->h ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

/* Read and decode (or only probe, img == NULL) one file. SD_ERR_NOMEM is
 * fatal; any other failure is the file's own (the caller warns and skips). */
static sd_status load_one(const char *path, sd_image *img, int *w, int *h)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    int comp;
    sd_status st = read_file(path, SD_IMAGE_MAX_FILE_BYTES, &buf, &len);
    if (st == SD_OK) {
        if (img) {
            st = sd_image_decode(buf, len, img);
            *w = img->w;
            *h = img->h;
        } else {
            st = sd_image_probe(buf, len, w, h, &comp);
        }
    }
    sd_free(buf);
    return st;
}

/* Native size (no target size): every file's header is probed first and the
 * size most files share (ties: the first in path order) is the data set's.
 * A file whose header cannot be read is skipped with its warning here; one
 * of another size is an error that names it, not the first file: a single
 * corrupt header must neither set the size nor blame the good files.
 * ok[i] = 1 for the files to decode. */
static sd_status native_size(const char *dir, const path_list *files, sd_data_warn_fn warn,
                             void *warn_ctx, sd_data_summary *sum, uint8_t *ok, int *H, int *W,
                             size_t *n_ok)
{
    probed *pr = sd_calloc(files->n ? files->n : 1, sizeof *pr);
    if (!pr) return SD_ERR_NOMEM;
    size_t n = 0;
    sd_status st = SD_OK;
    for (size_t i = 0; i < files->n; i++) {
        int w = 0, h = 0;
        sd_status fs = load_one(files->items[i], NULL, &w, &h);
        if (fs == SD_ERR_NOMEM) {
            st = fs;
            goto done;
        }
        ok[i] = fs == SD_OK;
        if (fs != SD_OK) {
            warn(warn_ctx, files->items[i], sd_error_message());
            sum->skipped++;
            continue;
        }
        pr[n++] = (probed){w, h, i};
    }
    *n_ok = n;
    if (n == 0) goto done;
    qsort(pr, n, sizeof *pr, cmp_probed);
    /* Runs of equal sizes, each sorted by path index: the longest run wins,
     * on a tie the one whose first file comes first. */
    size_t best = 0, best_len = 0;
    for (size_t a = 0; a < n;) {
        size_t b = a;
        while (b < n && pr[b].w == pr[a].w && pr[b].h == pr[a].h) b++;
        if (b - a > best_len || (b - a == best_len && pr[a].index < pr[best].index)) {
            best = a;
            best_len = b - a;
        }
        a = b;
    }
    *W = pr[best].w;
    *H = pr[best].h;
    if (best_len < n) {
        size_t odd = SIZE_MAX; /* the first file, in path order, of another size */
        int ow = 0, oh = 0;
        for (size_t k = 0; k < n; k++)
            if ((pr[k].w != *W || pr[k].h != *H) && pr[k].index < odd) {
                odd = pr[k].index;
                ow = pr[k].w;
                oh = pr[k].h;
            }
        st = sd_error(SD_ERR_FORMAT,
                      "%s: size %dx%d differs from %dx%d of %s and %zu other image(s) of %s "
                      "(give a target size, e.g. --size %d, to resize)",
                      files->items[odd], ow, oh, *W, *H, files->items[pr[best].index],
                      best_len - 1, dir, *H < *W ? *H : *W);
    }
done:
    sd_free(pr);
    return st;
}

sd_status sd_data_load_images(const char *dir, const sd_image_opts *opts, sd_dataset *out)
{
    memset(out, 0, sizeof *out);
    if (!dir || !opts) return sd_error(SD_ERR_INVALID, "load images: NULL argument");
    if (opts->channels != 1 && opts->channels != 3)
        return sd_error(SD_ERR_INVALID, "load images: channels must be 1 or 3, got %d", opts->channels);
    if (opts->size < 0 || opts->size > SD_IMAGE_MAX_SIDE)
        return sd_error(SD_ERR_INVALID, "load images: size must be in [0, %d] (0 = native), got %d",
                        SD_IMAGE_MAX_SIDE, opts->size);
    sd_data_warn_fn warn = opts->warn ? opts->warn : default_warn;
    const int C = opts->channels;

    path_list files = {0};
    sd_data_summary sum = {0};
    dir_id stack[SD_WALK_MAX_DEPTH];
    uint8_t *ok = NULL, *cache = NULL;
    struct stat sb;
    if (stat(dir, &sb) != 0) return sd_error(SD_ERR_IO, "%s: %s", dir, strerror(errno));
    if (!S_ISDIR(sb.st_mode)) return sd_error(SD_ERR_INVALID, "%s: not a directory", dir);
    stack[0].dev = sb.st_dev;
    stack[0].ino = sb.st_ino;
    sd_status st = walk(dir, 1, stack, &files, &sum);
    if (st != SD_OK) goto fail;
    if (files.n > 1) qsort(files.items, files.n, sizeof *files.items, cmp_paths);
    sum.candidates = files.n;

    ok = sd_malloc(files.n ? files.n : 1);
    if (!ok) {
        st = SD_ERR_NOMEM;
        goto fail;
    }
    memset(ok, 1, files.n);
    int H = opts->size, W = opts->size;
    size_t to_load = files.n;
    if (opts->size == 0 && files.n > 0) {
        st = native_size(dir, &files, warn, opts->warn_ctx, &sum, ok, &H, &W, &to_load);
        if (st != SD_OK) goto fail;
    }
    /* The cache is sized before any pixel is decoded, so its size is checked
     * against the memory budget (sd/membudget.h) first. */
    size_t item = (size_t)C * (size_t)H * (size_t)W, total = 0;
    if (to_load > 0) {
        if (sd_mul_size(item, to_load, &total)) {
            st = sd_error(SD_ERR_NOMEM, "%s: image cache size overflows", dir);
            goto fail;
        }
        char what[600];
        snprintf(what, sizeof what, "%s: the image cache (%zu images of %dx%dx%d)", dir, to_load,
                 C, H, W);
        if ((st = sd_mem_check(what, total)) != SD_OK) goto fail;
        cache = sd_malloc(total);
        if (!cache) {
            st = SD_ERR_NOMEM;
            goto fail;
        }
    }
    size_t n = 0;
    for (size_t i = 0; i < files.n; i++) {
        if (!ok[i]) continue;
        const char *path = files.items[i];
        sd_image img;
        int w = 0, h = 0;
        memset(&img, 0, sizeof img);
        sd_status fs = load_one(path, &img, &w, &h);
        if (fs == SD_ERR_NOMEM) {
            st = fs;
            goto fail;
        }
        if (fs == SD_OK && opts->size == 0 && (w != W || h != H)) {
            /* The file changed between the two passes. */
            fs = sd_error(SD_ERR_FORMAT, "size %dx%d differs from %dx%d (file changed while "
                                         "loading?)", w, h, W, H);
            sd_image_free(&img);
        }
        if (fs != SD_OK) {
            warn(opts->warn_ctx, path, sd_error_message());
            sum.skipped++;
            continue;
        }
        st = sd_image_prepare(&img, C, opts->size, cache + n * item);
        sd_image_free(&img);
        if (st != SD_OK) goto fail;
        n++;
    }
    sum.loaded = n;
    if (n == 0) {
        if (sum.candidates == 0)
            st = sd_error(SD_ERR_FORMAT,
                          "%s: no PNG, JPEG, BMP or PNM image found (%zu other files ignored)",
                          dir, sum.ignored);
        else
            st = sd_error(SD_ERR_FORMAT, "%s: none of the %zu image files could be decoded",
                          dir, sum.candidates);
        goto fail;
    }
    list_free(&files);
    sd_free(ok);
    out->kind = SD_DATA_IMAGES;
    out->n = n;
    out->c = C;
    out->h = H;
    out->w = W;
    out->pixels = cache;
    out->summary = sum;
    return SD_OK;

fail:
    sd_free(cache);
    sd_free(ok);
    list_free(&files);
    out->summary = sum;
    return st;
}

static int ends_with_csv(const char *p)
{
    size_t n = strlen(p);
    return n >= 4 && strcasecmp(p + n - 4, ".csv") == 0;
}

sd_status sd_data_load(const char *path, const sd_image_opts *opts, sd_dataset *out)
{
    memset(out, 0, sizeof *out);
    if (!path) return sd_error(SD_ERR_INVALID, "load data: NULL path");
    struct stat sb;
    if (stat(path, &sb) != 0) return sd_error(SD_ERR_IO, "%s: %s", path, strerror(errno));
    if (S_ISDIR(sb.st_mode)) {
        if (!opts) return sd_error(SD_ERR_INVALID, "%s: image options required for a folder", path);
        return sd_data_load_images(path, opts, out);
    }
    if (ends_with_csv(path)) return sd_data_load_csv(path, out);
    return sd_error(SD_ERR_INVALID, "%s: not a directory of images or a .csv file", path);
}

void sd_dataset_free(sd_dataset *ds)
{
    if (!ds) return;
    sd_free(ds->pixels);
    sd_free(ds->points);
    memset(ds, 0, sizeof *ds);
}

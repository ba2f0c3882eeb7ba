/* data_csv.c - low-dimensional point clouds from CSV -> float [N, D].
 *
 * Format (one point per line):
 *   - fields are decimal (or C99 hex) floats separated by one comma and/or
 *     blanks: "1.5,-2", "1.5, -2" and "1.5 -2" are the same point;
 *   - '#' starts a comment that runs to the end of the line; blank lines and
 *     comment-only lines are skipped; CRLF line ends and a UTF-8 BOM are fine;
 *   - line 1 may be a header (its first field is not a number): it is skipped;
 *   - every point has the same number of values D, fixed by the first point;
 *   - values must be finite as float (no nan, inf, or |x| > FLT_MAX).
 * Any other line is an error naming the file and line, e.g.
 *   "moons.csv:17: expected 2 values, got 3".
 *
 * Non-goals: quoted fields, labels, locales with a decimal comma (strtod uses
 * the C locale unless the program calls setlocale, which scorediff does not).
 */
#include "sd/data.h"
#include "sd/file.h"

#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct float_vec {
    float *v;
    size_t n, cap;
} float_vec;

static sd_status vec_push(float_vec *a, float x)
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? 2 * a->cap : 1024;
        float *v = sd_calloc(cap, sizeof *v);
        if (!v) return SD_ERR_NOMEM;
        if (a->n) memcpy(v, a->v, a->n * sizeof *v);
        sd_free(a->v);
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = x;
    return SD_OK;
}

static char *skip_blanks(char *p)
{
    while (*p == ' ' || *p == '\t') p++;
    return p;
}

static int ends_field(char c)
{
    return c == '\0' || c == ',' || c == ' ' || c == '\t';
}

/* Copy of the field starting at p for a message (at most 24 characters). */
static void field_text(const char *p, char *buf, size_t size)
{
    size_t k = 0;
    while (k + 1 < size && k < 24 && !ends_field(p[k])) {
        buf[k] = p[k];
        k++;
    }
    buf[k] = '\0';
}

/* Parse one data line (comments already cut) into `vals`. Returns the number
 * of values, 0 for a line that is the header, or -1 with *st and the message
 * set. */
static long parse_line(const char *path, size_t lineno, char *line, float_vec *vals,
                       sd_status *st)
{
    *st = SD_ERR_FORMAT;
    char *p = skip_blanks(line);
    long count = 0;
    for (;;) {
        if (*p == ',' || *p == '\0') {
            sd_error(SD_ERR_FORMAT, "%s:%zu: field %ld is empty", path, lineno, count + 1);
            return -1;
        }
        char *end;
        errno = 0;
        double d = strtod(p, &end);
        if (end == p || !ends_field(*end)) {
            if (lineno == 1 && count == 0) { /* a header of names */
                *st = SD_OK;
                return 0;
            }
            char tok[32];
            field_text(p, tok, sizeof tok);
            sd_error(SD_ERR_FORMAT, "%s:%zu: field %ld '%s' is not a number", path, lineno,
                     count + 1, tok);
            return -1;
        }
        if (!isfinite(d) || fabs(d) > FLT_MAX) {
            char tok[32];
            field_text(p, tok, sizeof tok);
            sd_error(SD_ERR_FORMAT, "%s:%zu: field %ld '%s' is not a finite float", path, lineno,
                     count + 1, tok);
            return -1;
        }
        if (vec_push(vals, (float)d) != SD_OK) {
            *st = SD_ERR_NOMEM;
            return -1;
        }
        if (++count == INT_MAX) {
            sd_error(SD_ERR_FORMAT, "%s:%zu: too many values", path, lineno);
            return -1;
        }
        p = skip_blanks(end);
        if (*p == ',') {
            p = skip_blanks(p + 1);
            if (*p == '\0') {
                sd_error(SD_ERR_FORMAT, "%s:%zu: field %ld is empty (trailing comma)", path,
                         lineno, count + 1);
                return -1;
            }
        } else if (*p == '\0') {
            *st = SD_OK;
            return count;
        }
    }
}

sd_status sd_data_load_csv(const char *path, sd_dataset *out)
{
    memset(out, 0, sizeof *out);
    if (!path) return sd_error(SD_ERR_INVALID, "load csv: NULL path");
    FILE *f; /* sd/file.h: a FIFO or directory is refused at once */
    sd_status ost = sd_file_fopen_read(path, &f);
    if (ost != SD_OK) return ost;

    sd_status st = SD_OK;
    float_vec vals = {0};
    char *line = NULL;
    size_t line_cap = 0, lineno = 0, n = 0;
    long dim = 0;
    ssize_t len;
    while ((len = getline(&line, &line_cap, f)) >= 0) {
        lineno++;
        if ((size_t)len != strlen(line)) {
            st = sd_error(SD_ERR_FORMAT, "%s:%zu: line contains a NUL byte", path, lineno);
            goto done;
        }
        /* Strip the line end (LF or CRLF), then cut a comment. */
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) line[--len] = '\0';
        char *p = line;
        if (lineno == 1 && (unsigned char)p[0] == 0xEF && (unsigned char)p[1] == 0xBB &&
            (unsigned char)p[2] == 0xBF)
            p += 3; /* UTF-8 byte order mark */
        char *hash = strchr(p, '#');
        if (hash) *hash = '\0';
        if (*skip_blanks(p) == '\0') continue; /* blank or comment-only */
        long count = parse_line(path, lineno, p, &vals, &st);
        if (count < 0) goto done;
        if (count == 0) continue; /* header */
        if (dim == 0) {
            dim = count;
        } else if (count != dim) {
            st = sd_error(SD_ERR_FORMAT, "%s:%zu: expected %ld value%s, got %ld", path, lineno,
                          dim, dim == 1 ? "" : "s", count);
            goto done;
        }
        n++;
    }
    if (ferror(f)) {
        st = sd_error(SD_ERR_IO, "%s: read error: %s", path, strerror(errno));
        goto done;
    }
    if (n == 0) {
        st = sd_error(SD_ERR_FORMAT, "%s: no data points", path);
        goto done;
    }
    out->kind = SD_DATA_POINTS;
    out->n = n;
    out->c = (int)dim;
    out->h = out->w = 1;
    out->points = vals.v;
    vals.v = NULL;
done:
    free(line);
    fclose(f);
    sd_free(vals.v);
    return st;
}

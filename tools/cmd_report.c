/* cmd_report.c - `scorediff report RUN_DIR`: write RUN_DIR/report.html, the
 * page of a training run (report.h). The page is built in memory
 * (open_memstream) and then written to a temporary file and renamed into
 * place. */
#define _POSIX_C_SOURCE 200809L
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "cli.h"
#include "report.h"
#include "svg_plot.h"

#define CMD "report"
#define PATH_LEN 4096
/* Inputs larger than this are named on the page instead of read. */
#define REPORT_MAX_INPUT ((size_t)256 << 20)
enum { MAX_COLS = 64, PLOT_W = 560, PLOT_H = 270, GRID_DISPLAY_W = 380 };

static void usage(FILE *f)
{
    fprintf(f,
"usage: scorediff report RUN_DIR\n"
"\n"
"Writes RUN_DIR/report.html, one self-contained page (no network, no scripts)\n"
"to open in a browser:\n"
"  - the training curves of RUN_DIR/metrics.csv against the step: loss, running\n"
"    loss, gradient norm, learning rate, images per second (and any other column);\n"
"    loss-like curves on a log scale when they span more than a decade; long runs\n"
"    drawn as the min and max of each pixel column (the caption says so)\n"
"  - the sample grids of `train --sample-every` (RUN_DIR/samples/step_NNNNNN.png)\n"
"    in step order\n"
"  - the likelihood summaries of `scorediff loglik` found in RUN_DIR (*.csv, *.txt)\n"
"    and in its parent directory (files named loglik*, as the quick start writes)\n"
"  - RUN_DIR/config.json as a table\n"
"Missing or malformed files are named on the page. The page is replaced\n"
"atomically; `train` can refresh it while it runs.\n"
"Exit codes: 0 written, 2 RUN_DIR is not a run directory or cannot be written.\n");
}

/* ---- small helpers --------------------------------------------------------- */

static bool path_join(char *buf, const char *dir, const char *name)
{
    int k = snprintf(buf, PATH_LEN, "%s/%s", dir, name);
    return k > 0 && k < PATH_LEN;
}

/* The whole file, NUL-terminated (sd_malloc'd), or NULL with *why set to a
 * short reason ("missing", "too large", ...). */
static char *slurp(const char *path, size_t *len, const char **why)
{
    *len = 0;
    *why = "cannot be read";
    FILE *f = fopen(path, "rb");
    if (!f) {
        *why = errno == ENOENT ? "missing" : "cannot be opened";
        return NULL;
    }
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fclose(f);
        *why = "not a regular file";
        return NULL;
    }
    if ((uint64_t)sb.st_size > REPORT_MAX_INPUT) {
        fclose(f);
        *why = "too large to read";
        return NULL;
    }
    /* the file may grow while we read it (train appends to metrics.csv):
     * read what was there at fstat time */
    size_t n = (size_t)sb.st_size;
    char *buf = sd_malloc(n + 1);
    if (!buf) {
        fclose(f);
        *why = "too large for memory";
        return NULL;
    }
    size_t got = fread(buf, 1, n, f);
    bool bad = ferror(f) != 0;
    fclose(f);
    if (bad) {
        sd_free(buf);
        return NULL;
    }
    buf[got] = '\0';
    *len = got;
    return buf;
}

typedef struct page {
    FILE *f;
    sd_report_stats st;
    char notes[32][320]; /* problems with the inputs, shown at the top */
} page;

static void note(page *pg, const char *fmt, const char *a, const char *b)
{
    if (pg->st.problems < 32)
        snprintf(pg->notes[pg->st.problems], sizeof pg->notes[0], fmt, a, b ? b : "");
    pg->st.problems++;
}

static void base64(FILE *f, const unsigned char *p, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        fputc(tab[v >> 18], f);
        fputc(tab[(v >> 12) & 63], f);
        fputc(tab[(v >> 6) & 63], f);
        fputc(tab[v & 63], f);
    }
    if (i < n) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < n ? (uint32_t)p[i + 1] << 8 : 0);
        fputc(tab[v >> 18], f);
        fputc(tab[(v >> 12) & 63], f);
        fputc(i + 1 < n ? tab[(v >> 6) & 63] : '=', f);
        fputc('=', f);
    }
}

/* ---- metrics.csv ------------------------------------------------------------ */

typedef struct metrics {
    int ncols, step_col;
    char names[MAX_COLS][48];
    size_t rows, cap;
    double *v; /* column c at v + c * cap */
    size_t bad_rows, first_bad_line;
} metrics;

static const struct {
    const char *col, *title;
    int scale;
} known[] = {
    {"loss", "loss", SD_PLOT_AUTO},
    {"running_loss", "running loss", SD_PLOT_AUTO},
    {"grad_norm", "gradient norm", SD_PLOT_AUTO},
    {"lr", "learning rate", SD_PLOT_LINEAR},
    {"images_per_s", "images per second", SD_PLOT_LINEAR},
};

static int find_col(const metrics *M, const char *name)
{
    for (int c = 0; c < M->ncols; c++)
        if (strcmp(M->names[c], name) == 0) return c;
    return -1;
}

/* Splits text into lines in place (\n, \r\n); returns the next line or NULL. */
static char *next_line(char **s, bool *complete)
{
    if (!*s || !**s) return NULL;
    char *line = *s, *nl = strchr(line, '\n');
    *complete = nl != NULL;
    if (nl) {
        *nl = '\0';
        *s = nl + 1;
    } else {
        *s = line + strlen(line);
    }
    size_t k = strlen(line);
    if (k && line[k - 1] == '\r') line[k - 1] = '\0';
    return line;
}

/* Reads metrics.csv into M; a problem with the file becomes a note. */
static void read_metrics(page *pg, const char *dir, metrics *M)
{
    memset(M, 0, sizeof *M);
    M->step_col = -1;
    char path[PATH_LEN];
    if (!path_join(path, dir, "metrics.csv")) return;
    size_t len;
    const char *why;
    char *text = slurp(path, &len, &why);
    if (!text) {
        note(pg, "metrics.csv: %s; no training curves", why, NULL);
        return;
    }
    char *s = text;
    bool complete;
    char *line = next_line(&s, &complete);
    if (!line) {
        note(pg, "metrics.csv: empty; no training curves%s", "", NULL);
        goto done;
    }
    for (char *tok = line;; M->ncols++) {
        char *comma = strchr(tok, ',');
        if (comma) *comma = '\0';
        if (M->ncols == MAX_COLS) {
            note(pg, "metrics.csv: more than 64 columns in the header%s", "", NULL);
            goto done;
        }
        while (isspace((unsigned char)*tok)) tok++;
        snprintf(M->names[M->ncols], sizeof M->names[0], "%s", tok);
        for (char *e = M->names[M->ncols] + strlen(M->names[M->ncols]);
             e > M->names[M->ncols] && isspace((unsigned char)e[-1]);)
            *--e = '\0';
        if (!comma) {
            M->ncols++;
            break;
        }
        tok = comma + 1;
    }
    M->step_col = find_col(M, "step");
    if (M->step_col < 0) {
        note(pg, "metrics.csv: the header has no 'step' column (its first column is '%.200s'); "
                 "no training curves", M->names[0], NULL);
        goto done;
    }
    size_t lines = 1;
    for (const char *c = s; *c; c++) lines += *c == '\n';
    size_t cells;
    if (sd_mul_size(lines, (size_t)M->ncols, &cells) != 0 ||
        sd_mul_size(cells, sizeof(double), &cells) != 0 || !(M->v = sd_malloc(cells))) {
        note(pg, "metrics.csv: too many rows for memory%s", "", NULL);
        goto done;
    }
    M->cap = lines;
    for (size_t lineno = 2; (line = next_line(&s, &complete)); lineno++) {
        if (!line[0]) continue;
        /* an unterminated last row is one that train is writing right now */
        bool ok = complete;
        const char *p = line;
        for (int c = 0; ok && c < M->ncols; c++) {
            char *end;
            double v = strtod(p, &end);
            ok = end != p && (*end == (c + 1 < M->ncols ? ',' : '\0'));
            M->v[(size_t)c * M->cap + M->rows] = v;
            p = end + 1;
        }
        if (ok) M->rows++;
        else if (complete && !M->bad_rows++) M->first_bad_line = lineno;
    }
    if (M->bad_rows) {
        char a[64], b[32];
        snprintf(a, sizeof a, "%zu", M->bad_rows);
        snprintf(b, sizeof b, "%zu", M->first_bad_line);
        note(pg, "metrics.csv: %s malformed rows left out (the first at line %s)", a, b);
    }
done:
    sd_free(text);
}

static void plot_metrics(page *pg, const metrics *M)
{
    FILE *f = pg->f;
    fputs("<h2 id=\"curves\">Training curves</h2>\n<div class=\"plots\">\n", f);
    if (M->step_col < 0 || !M->rows) {
        fputs("<p class=\"missing\">No metrics rows to draw.</p>\n", f);
        fputs("</div>\n", f);
        return;
    }
    const double *x = M->v + (size_t)M->step_col * M->cap;
    bool drawn[MAX_COLS] = {false};
    /* the known columns first, in their order, then any others */
    for (size_t k = 0; k < sizeof known / sizeof *known + (size_t)M->ncols; k++) {
        int c;
        const char *title;
        int scale = SD_PLOT_AUTO;
        if (k < sizeof known / sizeof *known) {
            c = find_col(M, known[k].col);
            if (c < 0) {
                note(pg, "metrics.csv: no column '%s'; its plot is left out", known[k].col, NULL);
                continue;
            }
            title = known[k].title;
            scale = known[k].scale;
        } else {
            c = (int)(k - sizeof known / sizeof *known);
            title = M->names[c];
            if (c == M->step_col || strcmp(title, "elapsed_s") == 0 || drawn[c]) continue;
        }
        if (drawn[c]) continue;
        drawn[c] = true;
        char id[80] = "plot-";
        size_t o = strlen(id);
        for (const char *q = M->names[c]; *q && o + 1 < sizeof id; q++)
            id[o++] = isalnum((unsigned char)*q) || *q == '_' ? *q : '-';
        id[o] = '\0';
        sd_plot p = {.id = id, .title = title, .x = x, .y = M->v + (size_t)c * M->cap,
                     .n = M->rows, .yscale = scale, .width = PLOT_W, .height = PLOT_H};
        if (sd_svg_plot(f, &p) >= 0) pg->st.plots++;
    }
    fputs("</div>\n", f);
}

/* ---- config.json ------------------------------------------------------------ */

static void config_rows(FILE *f, const cJSON *obj, const char *prefix)
{
    for (const cJSON *it = obj->child; it; it = it->next) {
        char key[256];
        snprintf(key, sizeof key, "%s%s%s", prefix, prefix[0] ? "." : "",
                 it->string ? it->string : "?");
        if (cJSON_IsObject(it)) {
            config_rows(f, it, key);
            continue;
        }
        fputs("<tr><th>", f);
        sd_html_escape(f, key);
        fputs("</th><td>", f);
        if (cJSON_IsString(it)) {
            sd_html_escape(f, it->valuestring);
        } else {
            char *s = cJSON_PrintUnformatted(it);
            sd_html_escape(f, s ? s : "?");
            cJSON_free(s);
        }
        fputs("</td></tr>\n", f);
    }
}

/* Writes the table; returns the parsed config (caller frees) or NULL. */
static cJSON *read_config(page *pg, const char *dir)
{
    char path[PATH_LEN];
    if (!path_join(path, dir, "config.json")) return NULL;
    size_t len;
    const char *why;
    char *text = slurp(path, &len, &why);
    if (!text) {
        note(pg, "config.json: %s; no configuration table", why, NULL);
        return NULL;
    }
    cJSON *cfg = cJSON_ParseWithLength(text, len);
    sd_free(text);
    if (!cJSON_IsObject(cfg)) {
        note(pg, "config.json: not a JSON object (malformed); no configuration table%s", "",
             NULL);
        cJSON_Delete(cfg);
        return NULL;
    }
    return cfg;
}

/* ---- sample grids ----------------------------------------------------------- */

typedef struct grid_file {
    long long step;
    char name[64];
} grid_file;

static int grid_cmp(const void *a, const void *b)
{
    long long x = ((const grid_file *)a)->step, y = ((const grid_file *)b)->step;
    return (x > y) - (x < y);
}

/* "step_<digits>.png" -> its step */
static bool grid_step(const char *name, long long *step)
{
    if (strncmp(name, "step_", 5) != 0) return false;
    const char *d = name + 5;
    size_t k = 0;
    while (isdigit((unsigned char)d[k])) k++;
    if (k == 0 || k > 15 || strcmp(d + k, ".png") != 0) return false;
    *step = strtoll(d, NULL, 10);
    return true;
}

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void sample_grids(page *pg, const char *dir)
{
    FILE *f = pg->f;
    fputs("<h2 id=\"grids\">Sample grids</h2>\n", f);
    char sdir[PATH_LEN];
    DIR *d = path_join(sdir, dir, "samples") ? opendir(sdir) : NULL;
    grid_file *g = NULL;
    size_t n = 0, cap = 0;
    for (struct dirent *e; d && (e = readdir(d));) {
        long long step;
        if (!grid_step(e->d_name, &step) || strlen(e->d_name) >= sizeof g->name) continue;
        if (n == cap) {
            size_t bytes;
            cap = cap ? 2 * cap : 64;
            grid_file *ng = sd_mul_size(cap, sizeof *g, &bytes) ? NULL : sd_malloc(bytes);
            if (!ng) break;
            if (n) memcpy(ng, g, n * sizeof *g);
            sd_free(g);
            g = ng;
        }
        g[n].step = step;
        snprintf(g[n].name, sizeof g[n].name, "%s", e->d_name);
        n++;
    }
    if (d) closedir(d);
    if (!n) {
        fputs("<p class=\"missing\">No sample grids (samples/step_NNNNNN.png; "
              "<code>train --sample-every N</code> writes them for image data).</p>\n", f);
        sd_free(g);
        return;
    }
    qsort(g, n, sizeof *g, grid_cmp);
    fputs("<div class=\"grids\">\n", f);
    for (size_t i = 0; i < n; i++) {
        char path[PATH_LEN];
        size_t len;
        const char *why = "path too long";
        unsigned char *png = path_join(path, sdir, g[i].name)
                                 ? (unsigned char *)slurp(path, &len, &why) : NULL;
        static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
        if (png && (len < 24 || memcmp(png, sig, 8) != 0 || memcmp(png + 12, "IHDR", 4) != 0))
            why = "not a PNG file";
        else if (png)
            why = NULL;
        if (why) {
            note(pg, "samples/%s: %s; left out", g[i].name, why);
            sd_free(png);
            continue;
        }
        uint32_t w = be32(png + 16), h = be32(png + 20);
        uint32_t scale = w && w < GRID_DISPLAY_W ? GRID_DISPLAY_W / w : 1;
        if (scale > 8) scale = 8;
        fprintf(f, "<figure class=\"grid\" id=\"grid-%lld\"><img alt=\"samples at step %lld\" "
                   "width=\"%lu\" height=\"%lu\" data-png-width=\"%lu\" data-png-height=\"%lu\" "
                   "src=\"data:image/png;base64,", g[i].step, g[i].step,
                (unsigned long)w * scale, (unsigned long)h * scale, (unsigned long)w,
                (unsigned long)h);
        base64(f, png, len);
        fprintf(f, "\"/><figcaption>step %lld</figcaption></figure>\n", g[i].step);
        pg->st.grids++;
        sd_free(png);
    }
    fputs("</div>\n", f);
    sd_free(g);
}

/* ---- likelihood summaries ------------------------------------------------------ */

/* The summary lines `scorediff loglik` prints (tools/cmd_loglik.c): on stdout
 * as they are with --out, with "# " before them without --out (so they also
 * appear in a CSV that is stdout redirected). */
static const char *const lik_keys[] = {"scorediff loglik:", "method:", "items:", "log p:",
                                       "bits/dim:", "NFE:", "time:"};
#define LIK_HEADER "index,logp_nats,bits_per_dim,nfe,probe_se"

/* Shows the file's summary if it has one (summary lines with a "log p:", or
 * the rows of a loglik CSV); returns whether it did. */
static bool lik_file(page *pg, const char *path, const char *label)
{
    size_t len;
    const char *why;
    char *text = slurp(path, &len, &why);
    if (!text) return false;
    FILE *f = pg->f;
    enum { MAX_LINES = 32 };
    const char *key[MAX_LINES], *val[MAX_LINES];
    int nk = 0;
    bool header = false, has_logp = false, complete;
    double n = 0, s1 = 0, s2 = 0, b1 = 0;
    size_t nb = 0;
    /* progress lines redrawn with \r: treat \r as a line end too */
    for (char *c = text; *c; c++)
        if (*c == '\r') *c = '\n';
    char *s = text;
    for (char *line; (line = next_line(&s, &complete));) {
        const char *l = line[0] == '#' ? line + 1 + (line[1] == ' ') : line;
        for (size_t k = 0; k < sizeof lik_keys / sizeof *lik_keys && nk < MAX_LINES; k++) {
            size_t kl = strlen(lik_keys[k]);
            if (strncmp(l, lik_keys[k], kl) != 0) continue;
            const char *v = l + kl;
            while (*v == ' ') v++;
            key[nk] = lik_keys[k];
            val[nk++] = v;
            has_logp |= k == 3;
            break;
        }
        if (strcmp(l, LIK_HEADER) == 0) {
            header = true;
        } else if (header && isdigit((unsigned char)l[0])) {
            /* index,logp,bits,... : the summary of the rows themselves */
            char *e;
            strtod(l, &e);
            if (*e != ',') continue;
            double lp = strtod(e + 1, &e);
            if (*e != ',' || !isfinite(lp)) continue;
            n++;
            s1 += lp;
            s2 += lp * lp;
            char *e2;
            double b = strtod(e + 1, &e2);
            if (e2 != e + 1 && isfinite(b)) {
                b1 += b;
                nb++;
            }
        }
    }
    bool shown = has_logp || (header && n > 0);
    if (shown) {
        fputs("<h3>", f);
        sd_html_escape(f, label);
        fputs("</h3>\n<table class=\"kv\">\n", f);
    }
    if (has_logp) {
        for (int i = 0; i < nk; i++) {
            fputs("<tr><th>", f);
            sd_html_escape(f, key[i]);
            fputs("</th><td>", f);
            sd_html_escape(f, val[i]);
            fputs("</td></tr>\n", f);
        }
    } else if (shown) {
        double mean = s1 / n, var = n > 1 ? (s2 - n * mean * mean) / (n - 1) : 0.0;
        fprintf(f, "<tr><th>items:</th><td>%.0f (summary of the rows, computed by report)</td>"
                   "</tr>\n<tr><th>log p:</th><td>%.4f +- %.4f nats (mean +- standard error)"
                   "</td></tr>\n", n, mean, sqrt(fmax(var, 0.0) / n));
        if (nb) fprintf(f, "<tr><th>bits/dim:</th><td>%.4f (mean)</td></tr>\n", b1 / (double)nb);
    }
    if (shown) {
        fputs("</table>\n", f);
        pg->st.likelihoods++;
    }
    sd_free(text);
    return shown;
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool has_suffix(const char *s, const char *suf)
{
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

/* Files of dir whose names pass `want`, sorted, shown under prefix + name. */
static void lik_dir(page *pg, const char *dir, const char *prefix, bool parent)
{
    DIR *d = opendir(dir);
    if (!d) return;
    char *names[256];
    size_t n = 0;
    for (struct dirent *e; n < 256 && (e = readdir(d));) {
        const char *nm = e->d_name;
        bool want = has_suffix(nm, ".csv") || has_suffix(nm, ".txt");
        if (!parent && strcmp(nm, "metrics.csv") == 0) want = false;
        if (parent && strncmp(nm, "loglik", 6) != 0) want = false;
        if (want && (names[n] = sd_malloc(strlen(nm) + 1))) strcpy(names[n++], nm);
    }
    closedir(d);
    qsort(names, n, sizeof *names, name_cmp);
    for (size_t i = 0; i < n; i++) {
        char path[PATH_LEN], label[PATH_LEN + 8];
        snprintf(label, sizeof label, "%s%s", prefix, names[i]);
        if (path_join(path, dir, names[i])) lik_file(pg, path, label);
        sd_free(names[i]);
    }
}

static void likelihoods(page *pg, const char *dir)
{
    fputs("<h2 id=\"likelihood\">Likelihood</h2>\n<div class=\"lik\">\n", pg->f);
    int before = pg->st.likelihoods;
    lik_dir(pg, dir, "", false);
    char parent[PATH_LEN];
    if (path_join(parent, dir, "..")) lik_dir(pg, parent, "../", true);
    if (pg->st.likelihoods == before)
        fputs("<p class=\"missing\">No likelihood summaries (<code>scorediff loglik --ckpt RUN_DIR "
              "... --out RUN_DIR/loglik.csv &gt; RUN_DIR/loglik.txt</code> writes one).</p>\n",
              pg->f);
    fputs("</div>\n", pg->f);
}

/* ---- the page -------------------------------------------------------------------- */

static const char *const css =
    "body{font-family:sans-serif;margin:24px;color:#222;background:#fff;max-width:1240px}\n"
    "h1{font-size:22px;margin:0 0 6px}h2{font-size:18px;border-bottom:1px solid #ccc;"
    "padding-bottom:3px;margin-top:26px}h3{font-size:14px;margin:12px 0 4px}\n"
    ".notes{background:#fff4e0;border:1px solid #e0a040;padding:6px 12px}\n"
    ".plots,.grids{display:flex;flex-wrap:wrap;gap:12px}\n"
    "figure{margin:0}figcaption{font-size:12px;color:#555;max-width:560px;margin-bottom:6px}\n"
    ".grid img{image-rendering:pixelated;border:1px solid #ccc}\n"
    "svg text{font-family:sans-serif;fill:#333}svg .tick{font-size:11px}"
    "svg .title{font-size:14px;font-weight:bold}svg .label{font-size:12px}\n"
    "svg .grid{stroke:#ddd;stroke-width:1}svg .minor{stroke:#f0f0f0;stroke-width:1}\n"
    "svg .frame{fill:none;stroke:#666;stroke-width:1}\n"
    "svg .series{fill:none;stroke:#1f5fbf;stroke-width:1.4;stroke-linejoin:round;"
    "stroke-linecap:round}\n"
    "table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ddd;padding:2px 8px;"
    "text-align:left;vertical-align:top}th{background:#f6f6f6;font-weight:normal}\n"
    ".missing{color:#777}code{font-size:12px}\n";

/* TODO(file layer): replace with sd_file_write_atomic (lib/file.c) when it
 * lands. Temporary name with our pid (train and a `scorediff report` may
 * refresh the page at the same time), fsync, rename. */
static sd_status write_atomic(const char *path, const char *data, size_t len)
{
    char tmp[PATH_LEN + 32];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return sd_error(SD_ERR_IO, "%s: cannot create: %s", tmp, strerror(errno));
    size_t off = 0;
    int err = 0;
    while (off < len) {
        ssize_t w = write(fd, data + off, len - off);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) {
            err = w < 0 ? errno : EIO;
            break;
        }
        off += (size_t)w;
    }
    if (!err && fsync(fd) != 0) err = errno;
    if (close(fd) != 0 && !err) err = errno;
    if (!err && rename(tmp, path) != 0) err = errno;
    if (err) {
        unlink(tmp);
        return sd_error(SD_ERR_IO, "%s: cannot write: %s", path, strerror(err));
    }
    return SD_OK;
}

static bool exists(const char *dir, const char *name)
{
    char path[PATH_LEN];
    struct stat sb;
    return path_join(path, dir, name) && stat(path, &sb) == 0;
}

sd_status sd_report_write(const char *dir, sd_report_stats *stats)
{
    struct stat sb;
    if (stat(dir, &sb) != 0)
        return sd_error(SD_ERR_INVALID, "%s: %s", dir, strerror(errno));
    if (!S_ISDIR(sb.st_mode)) return sd_error(SD_ERR_INVALID, "%s: not a directory", dir);
    if (!exists(dir, "config.json") && !exists(dir, "metrics.csv") &&
        !exists(dir, "checkpoint.safetensors"))
        return sd_error(SD_ERR_INVALID, "%s: not a run directory (no config.json, metrics.csv or "
                                        "checkpoint.safetensors)", dir);
    char out[PATH_LEN];
    if (!path_join(out, dir, "report.html")) return sd_error(SD_ERR_INVALID, "%s: path too long", dir);

    /* the sections are built first (they add notes), then the page around them */
    page *pg = sd_calloc(1, sizeof *pg);
    char *body = NULL, *html = NULL;
    size_t body_len = 0, html_len = 0;
    metrics M;
    memset(&M, 0, sizeof M);
    cJSON *cfg = NULL;
    sd_status st = SD_OK;
    if (!pg || !(pg->f = open_memstream(&body, &body_len))) {
        st = sd_error(SD_ERR_NOMEM, "out of memory");
        goto done;
    }
    read_metrics(pg, dir, &M);
    cfg = read_config(pg, dir);
    plot_metrics(pg, &M);
    sample_grids(pg, dir);
    likelihoods(pg, dir);
    fputs("<h2 id=\"config\">Configuration</h2>\n", pg->f);
    if (cfg) {
        fputs("<table class=\"kv\" id=\"config-table\">\n", pg->f);
        config_rows(pg->f, cfg, "");
        fputs("</table>\n", pg->f);
    } else {
        fputs("<p class=\"missing\">No configuration (config.json).</p>\n", pg->f);
    }
    bool bad = ferror(pg->f) != 0;
    if (fclose(pg->f) != 0 || bad) {
        pg->f = NULL;
        st = sd_error(SD_ERR_NOMEM, "out of memory while building the page");
        goto done;
    }
    pg->f = NULL;

    FILE *f = open_memstream(&html, &html_len);
    if (!f) {
        st = sd_error(SD_ERR_NOMEM, "out of memory");
        goto done;
    }
    fputs("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\"/>\n<title>"
          "scorediff run ", f);
    sd_html_escape(f, dir);
    fprintf(f, "</title>\n<style>\n%s</style>\n</head>\n<body>\n<h1>scorediff run <code>", css);
    sd_html_escape(f, dir);
    fputs("</code></h1>\n<p class=\"summary\">", f);
    int sc = find_col(&M, "step"), lc = find_col(&M, "loss"), ec = find_col(&M, "elapsed_s");
    const cJSON *steps = cfg ? cJSON_GetObjectItemCaseSensitive(cfg, "steps") : NULL;
    if (M.rows && sc >= 0) {
        size_t r = M.rows - 1;
        fprintf(f, "step %.0f", M.v[(size_t)sc * M.cap + r]);
        if (cJSON_IsNumber(steps)) fprintf(f, " of %.0f", steps->valuedouble);
        if (lc >= 0) fprintf(f, ", loss %.5g", M.v[(size_t)lc * M.cap + r]);
        if (ec >= 0) {
            double e = M.v[(size_t)ec * M.cap + r];
            if (isfinite(e) && e >= 0 && e < 1e9)
                fprintf(f, ", %.0f:%02.0f:%02.0f elapsed", floor(e / 3600),
                        floor(fmod(e, 3600) / 60), floor(fmod(e, 60)));
        }
        fprintf(f, "; %zu metrics rows, ", M.rows);
    }
    fprintf(f, "%d sample grids, %d likelihood summaries. Written by <code>scorediff report"
               "</code>; self-contained (no network, no scripts).</p>\n",
            pg->st.grids, pg->st.likelihoods);
    if (pg->st.problems) {
        fputs("<div class=\"notes\" id=\"notes\"><p>Missing or malformed inputs:</p><ul>\n", f);
        for (int i = 0; i < pg->st.problems && i < 32; i++) {
            fputs("<li>", f);
            sd_html_escape(f, pg->notes[i]);
            fputs("</li>\n", f);
        }
        if (pg->st.problems > 32) fprintf(f, "<li>and %d more</li>\n", pg->st.problems - 32);
        fputs("</ul></div>\n", f);
    }
    fwrite(body, 1, body_len, f);
    fputs("</body>\n</html>\n", f);
    bad = ferror(f) != 0;
    if (fclose(f) != 0 || bad) {
        st = sd_error(SD_ERR_NOMEM, "out of memory while building the page");
        goto done;
    }
    st = write_atomic(out, html, html_len);
    if (stats) {
        *stats = pg->st;
        stats->rows = M.rows;
    }
done:
    if (pg && pg->f) fclose(pg->f);
    free(body); /* open_memstream buffers come from malloc */
    free(html);
    sd_free(M.v);
    cJSON_Delete(cfg);
    sd_free(pg);
    return st;
}

int sd_cmd_report(int argc, char **argv)
{
    const char *dir = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        }
        if (argv[i][0] == '-' && argv[i][1])
            return cli_fail(CMD, 2, "unknown option %s (see scorediff report --help)", argv[i]);
        if (dir) return cli_fail(CMD, 2, "one RUN_DIR only (got %s and %s)", dir, argv[i]);
        dir = argv[i];
    }
    if (!dir) {
        usage(stderr);
        return 2;
    }
    sd_report_stats s;
    sd_status st = sd_report_write(dir, &s);
    if (st != SD_OK) return cli_fail(CMD, cli_exit_code(st), "%s", sd_error_message());
    printf("%s/report.html: %d plots (%zu metrics rows), %d sample grids, %d likelihood "
           "summaries%s\n", dir, s.plots, s.rows, s.grids, s.likelihoods,
           s.problems ? "; some inputs missing or malformed (listed on the page)" : "");
    return 0;
}

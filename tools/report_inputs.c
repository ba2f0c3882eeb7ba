/* report_inputs.c - the inputs of `scorediff report` that are parsed
 * rather than copied: metrics.csv (and its plots) and the likelihood
 * summaries of `scorediff loglik`; shared file helpers (report_internal.h). */
#define _POSIX_C_SOURCE 200809L
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "sd/file.h"
#include "report_internal.h"
#include "svg_plot.h"

enum { PLOT_W = 560, PLOT_H = 270 };

/* ---- file helpers ------------------------------------------------------------ */

bool report_path_join(char *buf, const char *dir, const char *name)
{
    int k = snprintf(buf, REPORT_PATH_LEN, "%s/%s", dir, name);
    return k > 0 && k < REPORT_PATH_LEN;
}

/* The whole file, NUL-terminated (sd_malloc'd), or NULL with *why set to a
 * short reason ("missing", "too large", ...). */
char *report_slurp(const char *path, size_t *len, const char **why)
{
    *len = 0;
    *why = "cannot be read";
    /* sd/file.h: regular files only, a FIFO never blocks */
    FILE *f = NULL;
    if (sd_file_fopen_read(path, &f) != SD_OK) {
        struct stat lb;
        *why = stat(path, &lb) != 0 ? "missing"
               : !S_ISREG(lb.st_mode) ? "not a regular file" : "cannot be opened";
        return NULL;
    }
    struct stat sb;
    if (fstat(fileno(f), &sb) != 0) {
        fclose(f);
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

void report_note(report_page *pg, const char *fmt, const char *a, const char *b)
{
    if (pg->st.problems < REPORT_MAX_NOTES)
        snprintf(pg->notes[pg->st.problems], sizeof pg->notes[0], fmt, a, b ? b : "");
    pg->st.problems++;
}

/* ---- metrics.csv ------------------------------------------------------------ */



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

int report_find_col(const report_metrics *M, const char *name)
{
    for (int c = 0; c < M->ncols; c++)
        if (strcmp(M->names[c], name) == 0) return c;
    return -1;
}

/* Splits text into lines in place (\n, \r\n); returns the next line or NULL. */
char *report_next_line(char **s, bool *complete)
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
void report_read_metrics(report_page *pg, const char *dir, report_metrics *M)
{
    memset(M, 0, sizeof *M);
    M->step_col = -1;
    char path[REPORT_PATH_LEN];
    if (!report_path_join(path, dir, "metrics.csv")) return;
    size_t len;
    const char *why;
    char *text = report_slurp(path, &len, &why);
    if (!text) {
        report_note(pg, "metrics.csv: %s; no training curves", why, NULL);
        return;
    }
    char *s = text;
    bool complete;
    char *line = report_next_line(&s, &complete);
    if (!line) {
        report_note(pg, "metrics.csv: empty; no training curves%s", "", NULL);
        goto done;
    }
    for (char *tok = line;; M->ncols++) {
        char *comma = strchr(tok, ',');
        if (comma) *comma = '\0';
        if (M->ncols == REPORT_MAX_COLS) {
            report_note(pg, "metrics.csv: more than 64 columns in the header%s", "", NULL);
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
    M->step_col = report_find_col(M, "step");
    if (M->step_col < 0) {
        report_note(pg, "metrics.csv: the header has no 'step' column (its first column is '%.200s'); "
                 "no training curves", M->names[0], NULL);
        goto done;
    }
    size_t lines = 1;
    for (const char *c = s; *c; c++) lines += *c == '\n';
    size_t cells;
    if (sd_mul_size(lines, (size_t)M->ncols, &cells) != 0 ||
        sd_mul_size(cells, sizeof(double), &cells) != 0 || !(M->v = sd_malloc(cells))) {
        report_note(pg, "metrics.csv: too many rows for memory%s", "", NULL);
        goto done;
    }
    M->cap = lines;
    for (size_t lineno = 2; (line = report_next_line(&s, &complete)); lineno++) {
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
        report_note(pg, "metrics.csv: %s malformed rows left out (the first at line %s)", a, b);
    }
done:
    sd_free(text);
}

void report_plot_metrics(report_page *pg, const report_metrics *M)
{
    FILE *f = pg->f;
    fputs("<h2 id=\"curves\">Training curves</h2>\n<div class=\"plots\">\n", f);
    if (M->step_col < 0 || !M->rows) {
        fputs("<p class=\"missing\">No metrics rows to draw.</p>\n", f);
        fputs("</div>\n", f);
        return;
    }
    const double *x = M->v + (size_t)M->step_col * M->cap;
    bool drawn[REPORT_MAX_COLS] = {false};
    /* the known columns first, in their order, then any others */
    for (size_t k = 0; k < sizeof known / sizeof *known + (size_t)M->ncols; k++) {
        int c;
        const char *title;
        int scale = SD_PLOT_AUTO;
        if (k < sizeof known / sizeof *known) {
            c = report_find_col(M, known[k].col);
            if (c < 0) {
                report_note(pg, "metrics.csv: no column '%s'; its plot is left out", known[k].col, NULL);
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

/* ---- likelihood summaries ------------------------------------------------------ */

/* The summary lines `scorediff loglik` prints (tools/cmd_loglik.c): on stdout
 * as they are with --out, with "# " before them without --out (so they also
 * appear in a CSV that is stdout redirected). */
static const char *const lik_keys[] = {"scorediff loglik:", "method:", "items:", "log p:",
                                       "bits/dim:", "NFE:", "time:"};
#define LIK_HEADER "index,logp_nats,bits_per_dim,nfe,probe_se"

/* Shows the file's summary if it has one (summary lines with a "log p:", or
 * the rows of a loglik CSV); returns whether it did. */
static bool lik_file(report_page *pg, const char *path, const char *label)
{
    size_t len;
    const char *why;
    char *text = report_slurp(path, &len, &why);
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
    for (char *line; (line = report_next_line(&s, &complete));) {
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
static void lik_dir(report_page *pg, const char *dir, const char *prefix, bool parent)
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
        char path[REPORT_PATH_LEN], label[REPORT_PATH_LEN + 8];
        snprintf(label, sizeof label, "%s%s", prefix, names[i]);
        if (report_path_join(path, dir, names[i])) lik_file(pg, path, label);
        sd_free(names[i]);
    }
}

void report_likelihoods(report_page *pg, const char *dir)
{
    fputs("<h2 id=\"likelihood\">Likelihood</h2>\n<div class=\"lik\">\n", pg->f);
    int before = pg->st.likelihoods;
    lik_dir(pg, dir, "", false);
    char parent[REPORT_PATH_LEN];
    if (report_path_join(parent, dir, "..")) lik_dir(pg, parent, "../", true);
    if (pg->st.likelihoods == before)
        fputs("<p class=\"missing\">No likelihood summaries (<code>scorediff loglik --ckpt RUN_DIR "
              "... --out RUN_DIR/loglik.csv &gt; RUN_DIR/loglik.txt</code> writes one).</p>\n",
              pg->f);
    fputs("</div>\n", pg->f);
}


/* test_report.c - `scorediff report RUN_DIR` (issue 17, item 3): the page
 * of a small run made here with the CLI is well-formed, each SVG plot's path
 * has one point per metrics row, the sample grids are the grid files byte
 * for byte (and decode to their size), the likelihood summaries and the
 * configuration are on it; long runs are downsampled deterministically and
 * keep their spikes; missing and garbled inputs are named on the page, a
 * directory that is not a run is exit 2 with one line; and headless
 * Chromium renders it (screenshot of the right size, plots and grids drawn).
 *
 * The well-formedness check is done here in C (tags balanced, void elements
 * closed with "/>", entities well-formed), so that no Python is needed.
 * Without chromium the other tests still run, and the suite then exits 77
 * (SKIP) saying so: tools/install-deps.sh --with-browser installs it, and
 * tools/test-all.sh passes that flag.
 */
#define _XOPEN_SOURCE 700
#include <check.h>
#include <ctype.h>
#include <fcntl.h>
#include <ftw.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "report.h"
#include "sd/data.h"
#include "sd/rng.h"
#include "test_tmp.h"

/* ---- helpers ---------------------------------------------------------------- */

static bool chromium_missing;

static void write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

static size_t count(const char *hay, const char *needle)
{
    size_t n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle)) n++;
    return n;
}

/* Runs argv (NULL-terminated; argv[0] a path) with stdout and stderr into
 * tu_tmpdir/out.txt and err.txt, which cap_out / cap_err then hold. */
static char *cap_out, *cap_err;

static int run_argv(char *const argv[])
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    ck_assert_int_ge(pid, 0);
    if (pid == 0) {
        int fo = open(tu_at("out.txt"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        int fe = open(tu_at("err.txt"), O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fo < 0 || fe < 0) _exit(126);
        dup2(fo, 1);
        dup2(fe, 2);
        setenv("HOME", tu_tmpdir, 1); /* chromium's profile and caches stay in tu_tmpdir */
        execv(argv[0], argv);
        _exit(127);
    }
    int status;
    ck_assert_int_eq(waitpid(pid, &status, 0), pid);
    free(cap_out);
    free(cap_err);
    cap_out = tu_read_all(tu_at("out.txt"), NULL);
    cap_err = tu_read_all(tu_at("err.txt"), NULL);
    ck_assert(cap_out && cap_err);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* The scorediff program (tests/meson.build sets SCOREDIFF_BIN) with args. */
static int sd_run(const char *first, ...)
{
    const char *bin = getenv("SCOREDIFF_BIN");
    ck_assert_msg(bin != NULL, "SCOREDIFF_BIN is not set (run the suite through meson test)");
    char *argv[40];
    int argc = 0;
    argv[argc++] = (char *)bin;
    va_list ap;
    va_start(ap, first);
    for (const char *a = first; a && argc < 39; a = va_arg(ap, const char *)) argv[argc++] = (char *)a;
    va_end(ap);
    argv[argc] = NULL;
    return run_argv(argv);
}

/* n 2-D points: 4 Gaussian blobs at (+-2, +-2), fixed seed. */
static void write_points(const char *path, int n)
{
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fprintf(f, "x,y\n");
    sd_rng r;
    sd_rng_init(&r, 5, SD_STREAM_DATA);
    for (int i = 0; i < n; i++) {
        int k = (int)sd_rng_below(&r, 4);
        fprintf(f, "%.6g,%.6g\n", (k & 1 ? 2.0 : -2.0) + 0.3 * sd_rng_normal(&r),
                (k & 2 ? 2.0 : -2.0) + 0.3 * sd_rng_normal(&r));
    }
    fclose(f);
}

/* n gray 8x8 PNGs with a bright square at a position that depends on i. */
static void write_pngs(const char *dir, int n)
{
    mkdir(dir, 0755);
    uint8_t px[64];
    for (int i = 0; i < n; i++) {
        for (int y = 0; y < 8; y++)
            for (int x = 0; x < 8; x++)
                px[y * 8 + x] = (uint8_t)((abs(x - i % 8) < 2 && abs(y - (i / 2) % 8) < 2) ? 230
                                                                                       : 20 + 3 * x);
        char path[600];
        snprintf(path, sizeof path, "%s/img%03d.png", dir, i);
        ck_assert_int_eq(sd_image_write_png(path, 8, 8, 1, px), SD_OK);
    }
}

/* Data rows of a CSV file (lines after the header), counted here. */
static int csv_rows(const char *path)
{
    char *t = tu_read_all(path, NULL);
    ck_assert_msg(t != NULL, "no %s", path);
    int n = (int)count(t, "\n") - 1;
    free(t);
    return n;
}

/* ---- a small XML-style checker for the page ----------------------------------- */

/* Every tag closed in order, void elements written "<x .../>", attribute
 * values quoted, entities "&name;" / "&#n;", <style> raw; returns NULL or
 * what is wrong. Also counts elements by name for the caller. */
static const char *check_wellformed(const char *s, int *n_svg, int *n_img, int *n_path)
{
    static char why[256];
    char stack[256][32];
    int depth = 0;
    *n_svg = *n_img = *n_path = 0;
    if (strncmp(s, "<!DOCTYPE html>", 15) != 0) return "no <!DOCTYPE html>";
    s += 15;
    while (*s) {
        if (*s == '&') {
            const char *p = s + 1;
            if (*p == '#') p++;
            while (isalnum((unsigned char)*p)) p++;
            if (*p != ';' || p == s + 1) {
                snprintf(why, sizeof why, "bare '&' at ...%.40s", s);
                return why;
            }
            s = p + 1;
            continue;
        }
        if (*s == '>') {
            snprintf(why, sizeof why, "stray '>' at ...%.40s", s);
            return why;
        }
        if (*s != '<') {
            s++;
            continue;
        }
        if (s[1] == '/') {
            char name[32];
            int k = 0;
            for (s += 2; isalnum((unsigned char)*s) && k < 31; s++) name[k++] = *s;
            name[k] = '\0';
            if (*s != '>') return "malformed end tag";
            s++;
            if (depth == 0 || strcmp(stack[depth - 1], name) != 0) {
                snprintf(why, sizeof why, "</%s> closes <%s>", name, depth ? stack[depth - 1] : "");
                return why;
            }
            depth--;
            continue;
        }
        char name[32];
        int k = 0;
        for (s++; (isalnum((unsigned char)*s) || *s == '-') && k < 31; s++) name[k++] = *s;
        name[k] = '\0';
        if (!k) return "'<' without a tag name";
        /* attributes: name="value" */
        for (;;) {
            while (isspace((unsigned char)*s)) s++;
            if (*s == '>' || (s[0] == '/' && s[1] == '>')) break;
            const char *a = s;
            while (isalnum((unsigned char)*s) || *s == '-' || *s == ':') s++;
            if (s == a || *s != '=' || s[1] != '"') {
                snprintf(why, sizeof why, "<%s>: bad attribute at %.40s", name, a);
                return why;
            }
            const char *end = strchr(s + 2, '"');
            if (!end) return "unterminated attribute value";
            for (const char *c = s + 2; c < end; c++)
                if (*c == '<') return "'<' in an attribute value";
            s = end + 1;
        }
        bool self = *s == '/';
        s += self ? 2 : 1;
        bool is_void = !strcmp(name, "meta") || !strcmp(name, "img") || !strcmp(name, "br") ||
                       !strcmp(name, "link") || !strcmp(name, "hr") || !strcmp(name, "input");
        if (is_void && !self) {
            snprintf(why, sizeof why, "<%s> not closed with />", name);
            return why;
        }
        *n_svg += !strcmp(name, "svg");
        *n_img += !strcmp(name, "img");
        *n_path += !strcmp(name, "path");
        if (self) continue;
        if (depth == 256) return "too deep";
        snprintf(stack[depth++], sizeof stack[0], "%s", name);
        if (!strcmp(name, "style")) { /* raw text up to its end tag */
            const char *e = strstr(s, "</style>");
            if (!e) return "unterminated <style>";
            s = e;
        }
    }
    if (depth) {
        snprintf(why, sizeof why, "<%s> never closed", stack[depth - 1]);
        return why;
    }
    return NULL;
}

/* The value of attribute `name` in the tag that starts at tag. */
static bool attr(const char *tag, const char *name, char *out, size_t len)
{
    const char *end = strchr(tag, '>');
    char pat[64];
    snprintf(pat, sizeof pat, " %s=\"", name);
    const char *p = strstr(tag, pat);
    if (!p || p > end) return false;
    p += strlen(pat);
    const char *q = strchr(p, '"');
    size_t n = (size_t)(q - p);
    if (n >= len) return false;
    memcpy(out, p, n);
    out[n] = '\0';
    return true;
}

typedef struct series {
    long rows, points; /* data-rows, data-points */
    long cmds;         /* M and L commands counted in d */
    double ymin;       /* smallest y pixel (the top of the drawn line) */
    bool x_increasing;
} series;

/* The path of the plot figure with id `id`. */
static bool plot_series(const char *html, const char *id, series *s)
{
    char pat[96];
    snprintf(pat, sizeof pat, "<figure id=\"%s\"", id);
    const char *fig = strstr(html, pat);
    if (!fig) return false;
    const char *end = strstr(fig, "</figure>");
    const char *path = strstr(fig, "<path class=\"series\"");
    if (!path || path > end) return false;
    char v[32];
    ck_assert(attr(path, "data-rows", v, sizeof v));
    s->rows = atol(v);
    ck_assert(attr(path, "data-points", v, sizeof v));
    s->points = atol(v);
    const char *d = strstr(path, " d=\"") + 4;
    s->cmds = 0;
    s->ymin = INFINITY;
    s->x_increasing = true;
    double last_x = -INFINITY;
    while (*d != '"') {
        ck_assert_msg(*d == 'M' || *d == 'L', "path command '%c'", *d);
        char *e;
        double x = strtod(d + 1, &e);
        ck_assert(*e == ',');
        double y = strtod(e + 1, &e);
        if (x < last_x) s->x_increasing = false;
        last_x = x;
        s->ymin = fmin(s->ymin, y);
        s->cmds++;
        d = e;
        while (*d == ' ') d++;
    }
    return true;
}

static const char *const plot_ids[] = {"plot-loss", "plot-running_loss", "plot-grad_norm", "plot-lr",
                                       "plot-images_per_s"};

/* Well-formed, self-contained, and every plot has one point per row. */
static char *check_page(const char *run_dir, int rows, int grids)
{
    char path[600];
    snprintf(path, sizeof path, "%s/report.html", run_dir);
    char *html = tu_read_all(path, NULL);
    ck_assert_msg(html != NULL, "no %s", path);
    int n_svg, n_img, n_path;
    const char *bad = check_wellformed(html, &n_svg, &n_img, &n_path);
    ck_assert_msg(bad == NULL, "report.html is not well-formed: %s", bad);
    ck_assert_int_eq(n_svg, 5);
    ck_assert_int_eq(n_path, 5);
    ck_assert_int_eq(n_img, grids);
    /* nothing fetched: no scripts, stylesheets or remote sources */
    ck_assert(!strstr(html, "<script") && !strstr(html, "<link") && !strstr(html, "src=\"http") &&
              !strstr(html, "url("));
    for (size_t k = 0; k < sizeof plot_ids / sizeof *plot_ids; k++) {
        series s;
        ck_assert_msg(plot_series(html, plot_ids[k], &s), "no plot %s", plot_ids[k]);
        ck_assert_int_eq(s.rows, rows);
        ck_assert_int_eq(s.points, rows);
        ck_assert_int_eq(s.cmds, rows);
        ck_assert(s.x_increasing);
    }
    return html;
}

static const unsigned char *b64_decode(const char *s, size_t *n)
{
    static unsigned char *buf;
    free(buf);
    size_t len = strcspn(s, "\"");
    buf = malloc(len);
    ck_assert_ptr_nonnull(buf);
    uint32_t acc = 0;
    int bits = 0;
    *n = 0;
    for (size_t i = 0; i < len && s[i] != '='; i++) {
        const char *tab = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        const char *c = strchr(tab, s[i]);
        ck_assert_msg(c && s[i], "bad base64 character");
        acc = acc << 6 | (uint32_t)(c - tab);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            buf[(*n)++] = (unsigned char)(acc >> bits);
        }
    }
    return buf;
}

/* ---- tests -------------------------------------------------------------------------- */

START_TEST(test_points_run)
{
    tu_make_tmpdir("sd_report");
    write_points(tu_at("pts.csv"), 200);
    ck_assert_int_eq(sd_run("train", "--data", tu_at("pts.csv"), "--model", "mlp", "--steps", "30",
                            "--threads", "1", "--quiet", "--out", tu_at("R"), NULL), 0);
    /* a loglik summary as stdout redirected into a CSV ('#' lines) */
    ck_assert_int_eq(sd_run("loglik", "--ckpt", tu_at("R"), "--data", tu_at("pts.csv"), "--method",
                            "elbo", "--K", "1", "--steps", "10", "--limit", "8", "--quiet", NULL),
                     0);
    ck_assert(strstr(cap_out, "# log p:"));
    write_text(tu_at("R/loglik_points.csv"), cap_out);
    const char *lp = strstr(cap_out, "# log p:") + 8;
    while (*lp == ' ') lp++;
    char logp[32];
    snprintf(logp, sizeof logp, "%.*s", (int)strcspn(lp, " "), lp);

    ck_assert_int_eq(sd_run("report", tu_at("R"), NULL), 0);
    ck_assert_msg(strstr(cap_out, "report.html: 5 plots (30 metrics rows), 0 sample grids, 1 "
                                  "likelihood"), "%s", cap_out);
    int rows = csv_rows(tu_at("R/metrics.csv"));
    ck_assert_int_eq(rows, 30);
    char *html = check_page(tu_at("R"), rows, 0);
    ck_assert_msg(strstr(html, "<h3>loglik_points.csv</h3>") && strstr(html, logp),
                  "likelihood summary %s missing", logp);
    ck_assert(strstr(html, "<tr><th>model</th><td>mlp</td></tr>"));
    ck_assert(strstr(html, "<tr><th>ncsnv2.levels</th>"));
    ck_assert(strstr(html, "step 30 of 30"));
    ck_assert(!strstr(html, "id=\"notes\"")); /* nothing missing */
    free(html);
    tu_remove_tmpdir();
}
END_TEST

/* train refreshes RUN_DIR/report.html at every checkpoint (issue 17 item 3),
 * with the metrics rows written so far; --no-report leaves it alone. */
START_TEST(test_train_refreshes_report)
{
    tu_make_tmpdir("sd_report");
    write_points(tu_at("pts.csv"), 200);
    ck_assert_int_eq(sd_run("train", "--data", tu_at("pts.csv"), "--model", "mlp", "--steps", "12",
                            "--ckpt-every", "5", "--threads", "1", "--quiet", "--out", tu_at("R"),
                            NULL), 0);
    /* the last refresh followed the final checkpoint (step 12): all rows */
    char *html = check_page(tu_at("R"), 12, 0);
    ck_assert(strstr(html, "step 12 of 12"));
    free(html);
    ck_assert_int_eq(sd_run("train", "--data", tu_at("pts.csv"), "--model", "mlp", "--steps", "6",
                            "--threads", "1", "--quiet", "--no-report", "--out", tu_at("N"), NULL),
                     0);
    ck_assert_int_eq(access(tu_at("N/report.html"), F_OK), -1);
    ck_assert_int_eq(access(tu_at("N/checkpoint.safetensors"), F_OK), 0);
    tu_remove_tmpdir();
}
END_TEST

START_TEST(test_image_run_grids)
{
    tu_make_tmpdir("sd_report");
    write_pngs(tu_at("imgs"), 10);
    ck_assert_int_eq(sd_run("train", "--data", tu_at("imgs"), "--out", tu_at("I"), "--model", "unet",
                            "--ch", "8", "--mult", "1,2", "--num-res-blocks", "1", "--steps", "6",
                            "--batch", "4", "--ckpt-every", "3", "--threads", "1", "--sde", "ncsn",
                            "--sample-every", "2", "--quiet", NULL), 0);
    /* the quick start's layout: loglik.txt (stdout and stderr through tee)
     * one level up from the run directory */
    ck_assert_int_eq(sd_run("loglik", "--ckpt", tu_at("I"), "--data", tu_at("imgs"), "--method", "elbo",
                            "--K", "1", "--steps", "5", "--limit", "2", "--out", tu_at("loglik.csv"),
                            NULL), 0);
    char *txt = malloc(strlen(cap_err) + strlen(cap_out) + 1);
    strcpy(txt, cap_err);
    strcat(txt, cap_out);
    write_text(tu_at("loglik.txt"), txt);
    free(txt);
    /* in process: the call train makes at a checkpoint */
    sd_report_stats st;
    ck_assert_int_eq(sd_report_write(tu_at("I"), &st), SD_OK);
    ck_assert_int_eq(st.grids, 3);
    ck_assert_int_eq(st.plots, 5);
    ck_assert_int_eq(st.likelihoods, 2); /* ../loglik.csv (rows), ../loglik.txt */
    ck_assert_int_eq(st.problems, 0);
    char *html = check_page(tu_at("I"), csv_rows(tu_at("I/metrics.csv")), 3);
    ck_assert(strstr(html, "<h3>../loglik.txt</h3>") && strstr(html, "<h3>../loglik.csv</h3>"));
    ck_assert(strstr(html, "<th>bits/dim:</th>"));
    /* grids in step order, each the grid file byte for byte, decoding to its size */
    const char *p = html;
    for (int step = 2; step <= 6; step += 2) {
        char id[32], name[64];
        snprintf(id, sizeof id, "id=\"grid-%d\"", step);
        const char *fig = strstr(html, id);
        ck_assert_msg(fig != NULL && fig > p, "grid of step %d missing or out of order", step);
        p = fig;
        const char *img = strstr(fig, "<img");
        const char *uri = strstr(img, "src=\"data:image/png;base64,");
        ck_assert_ptr_nonnull(uri);
        size_t n;
        const unsigned char *png = b64_decode(uri + 27, &n);
        snprintf(name, sizeof name, "I/samples/step_%06d.png", step);
        size_t flen;
        char *file = tu_read_all(tu_at(name), &flen);
        ck_assert_ptr_nonnull(file);
        ck_assert_int_eq(n, flen);
        ck_assert(memcmp(png, file, n) == 0);
        ck_assert(memcmp(png, "\x89PNG\r\n\x1a\n", 8) == 0 && memcmp(png + 12, "IHDR", 4) == 0);
        sd_image a, b;
        ck_assert_int_eq(sd_image_decode(png, n, &a), SD_OK);
        ck_assert_int_eq(sd_image_decode((const uint8_t *)file, flen, &b), SD_OK);
        ck_assert(a.w == b.w && a.h == b.h && a.w == 4 * 8 + 5);
        char v[32];
        ck_assert(attr(img, "data-png-width", v, sizeof v) && atoi(v) == a.w);
        ck_assert(attr(img, "data-png-height", v, sizeof v) && atoi(v) == a.h);
        sd_image_free(&a);
        sd_image_free(&b);
        free(file);
    }
    free(html);
    tu_remove_tmpdir();
}
END_TEST

/* 5000 rows: drawn as min/max per pixel column, the spike kept, the loss on a
 * log scale, non-finite rows left out, the same page twice. */
START_TEST(test_long_run_downsampled)
{
    tu_make_tmpdir("sd_report");
    mkdir(tu_at("L"), 0755);
    FILE *f = fopen(tu_at("L/metrics.csv"), "w");
    ck_assert_ptr_nonnull(f);
    fprintf(f, "step,loss,running_loss,grad_norm,lr,images_per_s,elapsed_s,extra_col\n");
    for (int s = 1; s <= 5000; s++) {
        double loss = s == 2500 ? 1e4 : 100.0 * exp(-s / 500.0);
        if (s == 1234)
            fprintf(f, "%d,nan,1,1,0.001,100,%d,%d\n", s, s, s % 7);
        else
            fprintf(f, "%d,%.6g,%.6g,%.6g,%g,100,%d,%d\n", s, loss, loss, 1.0 + s % 3, 1e-3, s,
                    s % 7);
    }
    fclose(f);
    ck_assert_int_eq(sd_run("report", tu_at("L"), NULL), 0);
    char *html = tu_read_all(tu_at("L/report.html"), NULL);
    ck_assert_ptr_nonnull(html);
    int n_svg, n_img, n_path;
    const char *bad = check_wellformed(html, &n_svg, &n_img, &n_path);
    ck_assert_msg(bad == NULL, "%s", bad);
    ck_assert_int_eq(n_svg, 6); /* the five and extra_col, not elapsed_s */
    ck_assert(strstr(html, "id=\"plot-extra_col\"") && !strstr(html, "id=\"plot-elapsed_s\""));
    series s;
    ck_assert(plot_series(html, "plot-loss", &s));
    ck_assert_int_eq(s.rows, 4999);
    ck_assert_int_eq(s.cmds, s.points);
    ck_assert(s.points > 100 && s.points <= 2 * 560);
    ck_assert(s.x_increasing);
    /* the spike 1e4 is the top of the log axis (10^4): the plot area's top, y = 26 */
    ck_assert_msg(fabs(s.ymin - 26.0) < 0.05, "top of the loss line at %g", s.ymin);
    const char *fig = strstr(html, "<figure id=\"plot-loss\"");
    const char *cap = strstr(fig, "<figcaption>");
    ck_assert(strstr(fig, "(log scale)") < cap);
    ck_assert(strstr(cap, "downsampled to") && strstr(cap, "1 non-finite rows left out"));
    ck_assert(plot_series(html, "plot-lr", &s));
    ck_assert_int_eq(s.rows, 5000);
    fig = strstr(html, "<figure id=\"plot-lr\"");
    ck_assert(strstr(fig, "(log scale)") > strstr(fig, "</figure>") || !strstr(fig, "(log scale)"));
    /* deterministic */
    ck_assert_int_eq(sd_run("report", tu_at("L"), NULL), 0);
    char *again = tu_read_all(tu_at("L/report.html"), NULL);
    ck_assert_str_eq(html, again);
    free(again);
    free(html);
    tu_remove_tmpdir();
}
END_TEST

START_TEST(test_bad_input)
{
    tu_make_tmpdir("sd_report");
    ck_assert_int_eq(sd_run("report", "--help", NULL), 0);
    ck_assert(strstr(cap_out, "usage: scorediff report RUN_DIR"));
    ck_assert_int_eq(sd_run("--help", NULL), 0);
    ck_assert(strstr(cap_out, "report "));
    /* not a run directory: exit 2, one line naming it */
    mkdir(tu_at("empty"), 0755);
    const char *cases[][2] = {{"empty", "not a run directory"},
                              {"nonexistent", "No such file"},
                              {"empty", NULL}};
    write_text(tu_at("file"), "x");
    cases[2][0] = "file";
    cases[2][1] = "not a directory";
    for (int k = 0; k < 3; k++) {
        ck_assert_int_eq(sd_run("report", tu_at(cases[k][0]), NULL), 2);
        ck_assert_msg(strstr(cap_err, "scorediff report: ") && strstr(cap_err, cases[k][1]) &&
                          strstr(cap_err, tu_at(cases[k][0])) && count(cap_err, "\n") == 1,
                      "%s", cap_err);
    }
    ck_assert_int_eq(sd_run("report", NULL), 2);
    ck_assert_int_eq(sd_run("report", tu_at("empty"), "--bogus", NULL), 2);
    ck_assert_int_eq(count(cap_err, "\n"), 1);

    /* garbled config.json and metrics.csv: a page that says so */
    mkdir(tu_at("G"), 0755);
    write_text(tu_at("G/config.json"), "{\"steps\": 30, oops");
    write_text(tu_at("G/metrics.csv"), "hello,world\n1,2\n");
    ck_assert_int_eq(sd_run("report", tu_at("G"), NULL), 0);
    ck_assert(strstr(cap_out, "some inputs missing or malformed"));
    char *html = tu_read_all(tu_at("G/report.html"), NULL);
    int n_svg, n_img, n_path;
    const char *bad = check_wellformed(html, &n_svg, &n_img, &n_path);
    ck_assert_msg(bad == NULL, "%s", bad);
    ck_assert_int_eq(n_svg, 0);
    ck_assert(strstr(html, "config.json: not a JSON object (malformed)"));
    ck_assert(strstr(html, "metrics.csv: the header has no &#39;step&#39; column"));
    free(html);

    /* a checkpoint only; then metrics with bad rows and a row being written */
    mkdir(tu_at("C"), 0755);
    write_text(tu_at("C/checkpoint.safetensors"), "");
    ck_assert_int_eq(sd_run("report", tu_at("C"), NULL), 0);
    html = tu_read_all(tu_at("C/report.html"), NULL);
    ck_assert(strstr(html, "metrics.csv: missing") && strstr(html, "config.json: missing"));
    free(html);
    write_text(tu_at("C/metrics.csv"),
               "step,loss,running_loss,grad_norm,lr,images_per_s,elapsed_s\n"
               "1,1,1,1,0.1,10,0.1\n2,0.5,0.7,1,0.1,10,0.2\n3,x,1,1,0.1,10,0.3\n"
               "4,0.4,0.6\n5,0.3,0.5,1,0.1,10,0.5\n6,0.2,0.4,1,0.");
    ck_assert_int_eq(sd_run("report", tu_at("C"), NULL), 0);
    html = tu_read_all(tu_at("C/report.html"), NULL);
    bad = check_wellformed(html, &n_svg, &n_img, &n_path);
    ck_assert_msg(bad == NULL, "%s", bad);
    ck_assert(strstr(html, "metrics.csv: 2 malformed rows left out (the first at line 4)"));
    series s;
    ck_assert(plot_series(html, "plot-loss", &s));
    ck_assert_int_eq(s.rows, 3);
    ck_assert_int_eq(s.cmds, 3);
    free(html);
    /* a header without the usual columns: the missing plots are named */
    write_text(tu_at("C/metrics.csv"), "step,loss\n1,2\n2,1\n");
    ck_assert_int_eq(sd_run("report", tu_at("C"), NULL), 0);
    html = tu_read_all(tu_at("C/report.html"), NULL);
    ck_assert(strstr(html, "metrics.csv: no column &#39;grad_norm&#39;"));
    ck_assert_int_eq(count(html, "<svg"), 1);
    free(html);
    tu_remove_tmpdir();
}
END_TEST

/* ---- headless Chromium -------------------------------------------------------------- */

static const char *find_chromium(void)
{
    static char found[512];
    const char *names[] = {"chromium", "chromium-browser", "google-chrome"};
    const char *path = getenv("PATH");
    char dirs[4096];
    snprintf(dirs, sizeof dirs, "%s", path ? path : "/usr/bin:/bin");
    for (size_t k = 0; k < 3; k++) {
        char copy[4096];
        snprintf(copy, sizeof copy, "%s", dirs);
        for (char *d = strtok(copy, ":"); d; d = strtok(NULL, ":")) {
            snprintf(found, sizeof found, "%s/%s", d, names[k]);
            if (access(found, X_OK) == 0) return found;
        }
    }
    return NULL;
}

START_TEST(test_chromium_renders)
{
    const char *chromium = find_chromium();
    if (!chromium) {
        chromium_missing = true;
        return;
    }
    tu_make_tmpdir("sd_report");
    write_pngs(tu_at("imgs"), 10);
    ck_assert_int_eq(sd_run("train", "--data", tu_at("imgs"), "--out", tu_at("I"), "--model", "unet",
                            "--ch", "8", "--mult", "1,2", "--num-res-blocks", "1", "--steps", "6",
                            "--batch", "4", "--ckpt-every", "3", "--threads", "1", "--sde", "ncsn",
                            "--sample-every", "3", "--quiet", NULL), 0);
    ck_assert_int_eq(sd_run("report", tu_at("I"), NULL), 0);
    char url[600], shot[600], profile[600];
    snprintf(url, sizeof url, "file://%s", tu_at("I/report.html"));
    snprintf(shot, sizeof shot, "--screenshot=%s", tu_at("shot.png"));
    snprintf(profile, sizeof profile, "--user-data-dir=%s", tu_at("chrome"));
    /* --no-sandbox: CI runs as root; --disable-dev-shm-usage: containers with a small /dev/shm */
    char *common[] = {(char *)chromium, "--headless", "--no-sandbox", "--disable-gpu",
                      "--disable-dev-shm-usage",
                      "--hide-scrollbars", profile, "--window-size=1200,2000"};
    enum { NC = sizeof common / sizeof *common };
    char *argv[NC + 3];
    memcpy(argv, common, sizeof common);
    argv[NC] = shot;
    argv[NC + 1] = url;
    argv[NC + 2] = NULL;
    ck_assert_msg(run_argv(argv) == 0, "chromium failed: %s", cap_err);
    /* the DOM the browser built: every plot and grid is in it */
    argv[NC] = "--dump-dom";
    ck_assert_msg(run_argv(argv) == 0, "chromium --dump-dom failed: %s", cap_err);
    ck_assert_int_eq(count(cap_out, "<svg"), 5);
    ck_assert_int_eq(count(cap_out, "<path class=\"series\""), 5);
    ck_assert_int_eq(count(cap_out, "src=\"data:image/png;base64,"), 2);
    /* the screenshot: its size, and not blank: plot lines (blue) and grids */
    size_t n;
    char *png = tu_read_all(tu_at("shot.png"), &n);
    ck_assert_msg(png != NULL, "no screenshot: %s", cap_err);
    sd_image img;
    ck_assert_int_eq(sd_image_decode((const uint8_t *)png, n, &img), SD_OK);
    ck_assert_int_eq(img.w, 1200);
    ck_assert_int_eq(img.h, 2000);
    ck_assert_int_ge(img.comp, 3);
    size_t nonwhite = 0, blue = 0, gray = 0;
    for (size_t i = 0; i < (size_t)img.w * img.h; i++) {
        const uint8_t *q = img.pixels + i * (size_t)img.comp;
        int r = q[0], g = q[1], b = q[2];
        nonwhite += r < 245 || g < 245 || b < 245;
        blue += b - r > 60 && b > 120;
        gray += r == g && g == b && r < 200;
    }
    sd_image_free(&img);
    free(png);
    size_t total = (size_t)1200 * 2000;
    ck_assert_msg(nonwhite > total / 50, "only %zu non-white pixels", nonwhite);
    ck_assert_msg(blue > 2000, "only %zu plot-line pixels", blue);
    ck_assert_msg(gray > 20000, "only %zu gray pixels (grids, text)", gray);
    tu_remove_tmpdir();
}
END_TEST

static Suite *report_suite(void)
{
    Suite *s = suite_create("report");
    TCase *tc = tcase_create("report");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_points_run);
    tcase_add_test(tc, test_train_refreshes_report);
    tcase_add_test(tc, test_image_run_grids);
    tcase_add_test(tc, test_long_run_downsampled);
    tcase_add_test(tc, test_bad_input);
    tcase_add_test(tc, test_chromium_renders);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(report_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    free(cap_out);
    free(cap_err);
    if (failed) return 1;
    if (chromium_missing) {
        fprintf(stderr, "test_report: SKIP: chromium is not installed, so the page was not "
                        "rendered (bash tools/install-deps.sh --with-browser installs it); the "
                        "other checks passed\n");
        return 77;
    }
    return 0;
}

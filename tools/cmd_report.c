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
#include "sd/file.h"
#include "report_internal.h"
#include "svg_plot.h"

#define CMD "report"
enum { GRID_DISPLAY_W = 380 };

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

/* RFC 4648 base64 (for data: URIs), written straight into the page. */
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
static cJSON *read_config(report_page *pg, const char *dir)
{
    char path[REPORT_PATH_LEN];
    if (!report_path_join(path, dir, "config.json")) return NULL;
    size_t len;
    const char *why;
    char *text = report_slurp(path, &len, &why);
    if (!text) {
        report_note(pg, "config.json: %s; no configuration table", why, NULL);
        return NULL;
    }
    cJSON *cfg = cJSON_ParseWithLength(text, len);
    sd_free(text);
    if (!cJSON_IsObject(cfg)) {
        report_note(pg, "config.json: not a JSON object (malformed); no configuration table%s", "",
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

static void sample_grids(report_page *pg, const char *dir)
{
    FILE *f = pg->f;
    fputs("<h2 id=\"grids\">Sample grids</h2>\n", f);
    char sdir[REPORT_PATH_LEN];
    DIR *d = report_path_join(sdir, dir, "samples") ? opendir(sdir) : NULL;
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
        char path[REPORT_PATH_LEN];
        size_t len;
        const char *why = "path too long";
        unsigned char *png = report_path_join(path, sdir, g[i].name)
                                 ? (unsigned char *)report_slurp(path, &len, &why) : NULL;
        static const unsigned char sig[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
        if (png && (len < 24 || memcmp(png, sig, 8) != 0 || memcmp(png + 12, "IHDR", 4) != 0))
            why = "not a PNG file";
        else if (png)
            why = NULL;
        if (why) {
            report_note(pg, "samples/%s: %s; left out", g[i].name, why);
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

static bool exists(const char *dir, const char *name)
{
    char path[REPORT_PATH_LEN];
    struct stat sb;
    return report_path_join(path, dir, name) && stat(path, &sb) == 0;
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
    char out[REPORT_PATH_LEN];
    if (!report_path_join(out, dir, "report.html"))
        return sd_error(SD_ERR_INVALID, "%s: path too long", dir);

    /* the sections are built first (they add notes), then the page around them */
    report_page *pg = sd_calloc(1, sizeof *pg);
    char *body = NULL, *html = NULL;
    size_t body_len = 0, html_len = 0;
    report_metrics M;
    memset(&M, 0, sizeof M);
    cJSON *cfg = NULL;
    sd_status st = SD_OK;
    if (!pg || !(pg->f = open_memstream(&body, &body_len))) {
        st = sd_error(SD_ERR_NOMEM, "out of memory");
        goto done;
    }
    report_read_metrics(pg, dir, &M);
    cfg = read_config(pg, dir);
    report_plot_metrics(pg, &M);
    sample_grids(pg, dir);
    report_likelihoods(pg, dir);
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
    int sc = report_find_col(&M, "step"), lc = report_find_col(&M, "loss"),
        ec = report_find_col(&M, "elapsed_s");
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
        for (int i = 0; i < pg->st.problems && i < REPORT_MAX_NOTES; i++) {
            fputs("<li>", f);
            sd_html_escape(f, pg->notes[i]);
            fputs("</li>\n", f);
        }
        if (pg->st.problems > REPORT_MAX_NOTES)
            fprintf(f, "<li>and %d more</li>\n", pg->st.problems - REPORT_MAX_NOTES);
        fputs("</ul></div>\n", f);
    }
    fwrite(body, 1, body_len, f);
    fputs("</body>\n</html>\n", f);
    bad = ferror(f) != 0;
    if (fclose(f) != 0 || bad) {
        st = sd_error(SD_ERR_NOMEM, "out of memory while building the page");
        goto done;
    }
    st = sd_file_write_atomic(out, html, html_len);
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

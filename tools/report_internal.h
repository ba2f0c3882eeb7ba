/* report_internal.h - pieces shared by cmd_report.c (the page, the
 * configuration and the sample grids) and report_inputs.c (metrics.csv and
 * the likelihood summaries). Not a public interface: see report.h. */
#ifndef SD_REPORT_INTERNAL_H
#define SD_REPORT_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>

#include "report.h"

#define REPORT_PATH_LEN 4096
/* Inputs larger than this are named on the page instead of read. */
#define REPORT_MAX_INPUT ((size_t)256 << 20)
enum { REPORT_MAX_COLS = 64, REPORT_MAX_NOTES = 32 };

typedef struct report_page {
    FILE *f; /* the sections are written here */
    sd_report_stats st;
    char notes[REPORT_MAX_NOTES][320]; /* problems with the inputs, shown at the top */
} report_page;

/* Adds a note: fmt with up to two %s (b may be NULL). */
void report_note(report_page *pg, const char *fmt, const char *a, const char *b);
/* buf [REPORT_PATH_LEN] = dir/name; false if too long. */
bool report_path_join(char *buf, const char *dir, const char *name);
/* The whole file, NUL-terminated (sd_malloc'd), or NULL with *why set to a
 * short reason ("missing", "too large to read", ...). */
char *report_slurp(const char *path, size_t *len, const char **why);
/* Splits text into lines in place (\n, \r\n): the next line or NULL;
 * *complete tells whether it ended with a newline. */
char *report_next_line(char **s, bool *complete);

typedef struct report_metrics {
    int ncols, step_col;
    char names[REPORT_MAX_COLS][48];
    size_t rows, cap;
    double *v; /* column c at v + c * cap (sd_malloc'd) */
    size_t bad_rows, first_bad_line;
} report_metrics;

/* dir/metrics.csv into M (problems become notes); its plots section; -1 if
 * there is no such column. */
void report_read_metrics(report_page *pg, const char *dir, report_metrics *M);
void report_plot_metrics(report_page *pg, const report_metrics *M);
int report_find_col(const report_metrics *M, const char *name);
/* The likelihood section: summaries in dir and loglik* files in dir/.. */
void report_likelihoods(report_page *pg, const char *dir);

#endif

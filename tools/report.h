/* report.h - RUN_DIR/report.html, the page of a training run (`scorediff
 * report`, tools/cmd_report.c).
 *
 * One self-contained file (no network, no scripts): a summary, the
 * training curves of metrics.csv as inline SVG (tools/svg_plot.h), the sample
 * grids samples/step_NNNNNN.png in step order as data: URIs, the likelihood
 * summaries of `scorediff loglik` found in the run directory (and files
 * loglik* in its parent, where the quick start writes them), and
 * config.json as a table. Missing or malformed inputs are named on the page;
 * the page itself is replaced atomically, so a browser or a concurrent
 * reader sees the old page or the new one.
 */
#ifndef SD_REPORT_H
#define SD_REPORT_H

#include <stddef.h>

#include "sd/status.h"

typedef struct sd_report_stats {
    int plots;       /* SVG plots on the page */
    size_t rows;     /* metrics rows read */
    int grids;       /* sample grids embedded */
    int likelihoods; /* likelihood summaries shown */
    int problems;    /* missing / malformed inputs named on the page */
} sd_report_stats;

/* Write run_dir/report.html. SD_ERR_INVALID (message set) when run_dir is
 * not a run directory (none of config.json, metrics.csv,
 * checkpoint.safetensors), SD_ERR_IO / SD_ERR_NOMEM when the page cannot be
 * written; bad contents are not errors. stats may be NULL. Safe to call while
 * `train` appends to metrics.csv (an incomplete last row is left out). */
sd_status sd_report_write(const char *run_dir, sd_report_stats *stats);

#endif

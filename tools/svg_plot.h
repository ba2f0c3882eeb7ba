/* svg_plot.h - line plots as inline SVG for `scorediff report` (cmd_report.c).
 *
 * One series y(x) per plot, drawn as a single <path class="series"> whose
 * `d` is "M x,y L x,y ..." (one M or L per point) and which carries
 * data-rows (finite rows drawn, before downsampling) and data-points (points
 * in the path), so that a reader can check the drawing against the data.
 * Output is well-formed XML (it is embedded in report.html) and a function of
 * the input only: no clock, no randomness.
 */
#ifndef SD_SVG_PLOT_H
#define SD_SVG_PLOT_H

#include <stddef.h>
#include <stdio.h>

enum { SD_PLOT_LINEAR = 0, SD_PLOT_LOG = 1, SD_PLOT_AUTO = -1 };

typedef struct sd_plot {
    const char *id;       /* element id (ASCII, no quotes) */
    const char *title;    /* shown above the plot (escaped) */
    const double *x, *y;  /* n points in row order; non-finite y (and y <= 0 on a
                           * log axis) are left out and counted in the caption */
    size_t n;
    int yscale;           /* SD_PLOT_LINEAR, SD_PLOT_LOG or SD_PLOT_AUTO: log when
                           * every drawn y > 0 and they span more than a decade */
    int width, height;    /* of the whole SVG, px */
} sd_plot;

/* Rows at most this multiple of the plot area's pixel columns are drawn as
 * they are; longer series keep the first-occurring min and max of each pixel
 * column (in row order), so spikes survive and the path stays small. */
#define SD_PLOT_DOWNSAMPLE_FACTOR 2

/* Writes <figure id=...><svg>...</svg><figcaption>...</figcaption></figure>.
 * Returns the number of points in the path, or -1 on a write or allocation
 * error. */
long sd_svg_plot(FILE *f, const sd_plot *p);

/* Text with &, <, >, " and ' escaped for HTML/XML text and attributes;
 * bytes below 0x20 other than tab and newline become '?'. */
void sd_html_escape(FILE *f, const char *s);

#endif

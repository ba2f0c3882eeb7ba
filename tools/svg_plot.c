/* svg_plot.c - line plots as inline SVG; see svg_plot.h. */
#include "svg_plot.h"

#include <math.h>
#include <stdbool.h>
#include <stdlib.h>

#include "sd/status.h"

/* plot area inside the SVG: room for tick labels left, the title on top and
 * the x ticks and label below */
enum { MARGIN_L = 64, MARGIN_R = 18, MARGIN_T = 26, MARGIN_B = 40 };

void sd_html_escape(FILE *f, const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        switch (c) {
        case '&': fputs("&amp;", f); break;
        case '<': fputs("&lt;", f); break;
        case '>': fputs("&gt;", f); break;
        case '"': fputs("&quot;", f); break;
        case '\'': fputs("&#39;", f); break;
        default: fputc(c < 0x20 && c != '\t' && c != '\n' ? '?' : c, f);
        }
    }
}

/* 1, 2 or 5 times a power of ten, about range / target. */
static double nice_step(double range, int target)
{
    double raw = range / target;
    double mag = pow(10.0, floor(log10(raw)));
    double f = raw / mag;
    return (f < 1.5 ? 1.0 : f < 3.0 ? 2.0 : f < 7.0 ? 5.0 : 10.0) * mag;
}

typedef struct axis {
    double lo, hi; /* in axis units: the value, or log10 of it on a log axis */
    bool log;
    double pix0, pix1; /* pixel of lo and hi */
} axis;

static double axis_pix(const axis *a, double v)
{
    double t = a->log ? log10(v) : v;
    return a->pix0 + (t - a->lo) / (a->hi - a->lo) * (a->pix1 - a->pix0);
}

/* Short labels: 20k and 1.5M rather than 2e+04 and 1.5e+06. */
static void fmt_tick(char *buf, size_t len, double v)
{
    double a = fabs(v);
    if (a >= 1e6 && a < 1e12) snprintf(buf, len, "%.4gM", v / 1e6);
    else if (a >= 1e4 && a < 1e6) snprintf(buf, len, "%.4gk", v / 1e3);
    else snprintf(buf, len, "%.4g", v);
}

/* Grid lines and labels of a linear axis: multiples of a nice step. */
static void linear_ticks(FILE *f, const axis *a, bool vertical, double other0, double other1,
                         bool integer)
{
    double s = nice_step(a->hi - a->lo, vertical ? 5 : 6);
    if (integer && s < 1.0) s = 1.0;
    for (double k = ceil(a->lo / s - 1e-9); k * s <= a->hi + s * 1e-9; k++) {
        double v = k * s;
        if (fabs(v) < s * 1e-9) v = 0.0;
        double p = axis_pix(a, v);
        char lab[32];
        fmt_tick(lab, sizeof lab, v);
        if (vertical) {
            fprintf(f, "<line class=\"grid\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>",
                    other0, p, other1, p);
            fprintf(f, "<text class=\"tick\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n",
                    other0 - 5, p + 4, lab);
        } else {
            fprintf(f, "<line class=\"grid\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>", p,
                    other0, p, other1);
            fprintf(f, "<text class=\"tick\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n",
                    p, other1 + 15, lab);
        }
    }
}

/* Decades of a log (y) axis, with 2 and 5 labelled when there are few of
 * them and the other multiples as unlabelled grid lines. */
static void log_ticks(FILE *f, const axis *a, double x0, double x1)
{
    int d0 = (int)a->lo, d1 = (int)a->hi, decades = d1 - d0;
    int every = decades > 8 ? (decades + 7) / 8 : 1;
    for (int d = d0; d <= d1; d++)
        for (int m = 1; m <= 9; m++) {
            if (d == d1 && m > 1) break;
            if (m > 1 && decades > 6) break;
            double v = m * pow(10.0, d);
            double p = axis_pix(a, v);
            bool major = m == 1 && (d - d0) % every == 0;
            bool label = major || (decades <= 2 && (m == 2 || m == 5));
            fprintf(f, "<line class=\"%s\" x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\"/>",
                    major ? "grid" : "minor", x0, p, x1, p);
            if (label) {
                char lab[32];
                fmt_tick(lab, sizeof lab, v);
                fprintf(f, "<text class=\"tick\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%s</text>",
                        x0 - 5, p + 4, lab);
            }
            fputc('\n', f);
        }
}

long sd_svg_plot(FILE *f, const sd_plot *p)
{
    const size_t n = p->n;
    size_t *keep = n ? sd_malloc(n * sizeof *keep) : NULL;
    if (n && !keep) return -1;
    /* which rows can be drawn, and the scale */
    size_t nonfinite = 0, nonpos = 0, m = 0;
    double ymin = INFINITY, ymax = -INFINITY, pmin = INFINITY;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(p->y[i]) || !isfinite(p->x[i])) {
            nonfinite++;
            continue;
        }
        ymin = fmin(ymin, p->y[i]);
        ymax = fmax(ymax, p->y[i]);
        if (p->y[i] > 0) pmin = fmin(pmin, p->y[i]);
    }
    bool log_y = p->yscale == SD_PLOT_LOG ||
                 (p->yscale == SD_PLOT_AUTO && ymin > 0 && isfinite(ymin) && ymax > 10.0 * ymin);
    if (log_y && !isfinite(pmin)) log_y = false; /* nothing positive to draw */
    double xmin = INFINITY, xmax = -INFINITY;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(p->y[i]) || !isfinite(p->x[i])) continue;
        if (log_y && !(p->y[i] > 0)) {
            nonpos++;
            continue;
        }
        keep[m++] = i;
        xmin = fmin(xmin, p->x[i]);
        xmax = fmax(xmax, p->x[i]);
    }
    if (log_y) ymin = pmin;

    const int W = p->width, H = p->height;
    const double L = MARGIN_L, R = W - MARGIN_R, T = MARGIN_T, B = H - MARGIN_B;
    axis ax = {.pix0 = L, .pix1 = R}, ay = {.pix0 = B, .pix1 = T, .log = log_y};
    if (m) {
        ax.lo = xmin;
        ax.hi = xmax;
        if (ax.hi <= ax.lo) {
            ax.lo -= 1.0;
            ax.hi += 1.0;
        }
        if (log_y) {
            ay.lo = floor(log10(ymin));
            ay.hi = ceil(log10(ymax));
            if (ay.hi <= ay.lo) ay.hi = ay.lo + 1.0;
        } else {
            double lo = ymin, hi = ymax;
            if (hi <= lo) {
                double pad = lo != 0.0 ? fabs(lo) * 0.1 : 1.0;
                lo -= pad;
                hi += pad;
            }
            double s = nice_step(hi - lo, 5);
            ay.lo = floor(lo / s) * s;
            ay.hi = ceil(hi / s) * s;
        }
    } else {
        ax.lo = ay.lo = 0.0;
        ax.hi = ay.hi = 1.0;
    }

    fprintf(f, "<figure id=\"%s\" class=\"plot\" data-rows=\"%zu\">\n", p->id, m);
    fprintf(f, "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
               "viewBox=\"0 0 %d %d\" role=\"img\">\n", W, H, W, H);
    fprintf(f, "<rect x=\"0\" y=\"0\" width=\"%d\" height=\"%d\" fill=\"#fff\"/>\n", W, H);
    fprintf(f, "<text class=\"title\" x=\"%.1f\" y=\"17\">", L);
    sd_html_escape(f, p->title);
    fprintf(f, "%s</text>\n", log_y ? " (log scale)" : "");
    if (m) {
        if (log_y) log_ticks(f, &ay, L, R);
        else linear_ticks(f, &ay, true, L, R, false);
        linear_ticks(f, &ax, false, T, B, true);
    }
    fprintf(f, "<rect class=\"frame\" x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\"/>\n", L, T,
            R - L, B - T);
    fprintf(f, "<text class=\"label\" x=\"%.1f\" y=\"%d\" text-anchor=\"middle\">step</text>\n",
            (L + R) / 2, H - 6);

    /* the path, downsampled to min/max per pixel column when long */
    long pts = 0;
    const int cols = (int)(R - L);
    const bool down = m > (size_t)SD_PLOT_DOWNSAMPLE_FACTOR * (size_t)cols;
    if (m) {
        fprintf(f, "<path class=\"series\" data-rows=\"%zu\" d=\"", m);
        size_t i = 0;
        while (i < m) {
            size_t j = i + 1, lo = i, hi = i;
            if (down) {
                /* the run of rows in the same pixel column as row i */
                int c = (int)floor((p->x[keep[i]] - ax.lo) / (ax.hi - ax.lo) * cols);
                while (j < m &&
                       (int)floor((p->x[keep[j]] - ax.lo) / (ax.hi - ax.lo) * cols) == c) {
                    if (p->y[keep[j]] < p->y[keep[lo]]) lo = j;
                    if (p->y[keep[j]] > p->y[keep[hi]]) hi = j;
                    j++;
                }
            }
            size_t first = lo < hi ? lo : hi, second = lo < hi ? hi : lo;
            for (int k = 0; k < (first == second ? 1 : 2); k++) {
                size_t r = keep[k ? second : first];
                fprintf(f, "%s%.1f,%.1f", pts ? " L" : "M", axis_pix(&ax, p->x[r]),
                        axis_pix(&ay, p->y[r]));
                pts++;
            }
            i = j;
        }
        fprintf(f, "\" data-points=\"%ld\"/>\n", pts);
    } else {
        fprintf(f, "<text class=\"label\" x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">no values "
                   "to draw</text>\n", (L + R) / 2, (T + B) / 2);
    }
    fprintf(f, "</svg>\n<figcaption>");
    if (m) {
        size_t last = keep[m - 1];
        fprintf(f, "%zu rows; last %.4g at step %.0f", m, p->y[last], p->x[last]);
        if (down)
            fprintf(f, "; downsampled to %ld points: the min and max of each of %d pixel columns",
                    pts, cols);
    } else {
        fputs("no rows", f);
    }
    if (nonfinite) fprintf(f, "; %zu non-finite rows left out", nonfinite);
    if (nonpos) fprintf(f, "; %zu rows &lt;= 0 left out of the log scale", nonpos);
    fprintf(f, "</figcaption>\n</figure>\n");
    sd_free(keep);
    return ferror(f) ? -1 : pts;
}

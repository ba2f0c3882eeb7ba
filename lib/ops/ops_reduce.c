/* ops_reduce.c - sums and means (full or along one axis), the squared norm
 * and the mean squared error.
 *
 * Accumulation is in double. Full reductions are deterministic for any
 * thread count: the input is cut into fixed blocks of RD_BLOCK elements
 * (independent of the number of threads), each block is summed by one thread,
 * and the block sums are added in block order. Axis reductions give each
 * output element to exactly one thread.
 *
 * Axis reductions view the input as [outer, len, inner], len being the reduced
 * axis: out[o, j] = sum_k a[o, k, j].
 */
#include "sd/ops.h"
#include "core/graph_internal.h"

#include <stdio.h>

#define RD_PAR_MIN 32768 /* elements below which threading costs more than it saves */
#define RD_BLOCK 8192    /* fixed summation block of full reductions */
#define RD_COLS 64       /* output columns per task of an axis reduction */

typedef enum { RD_SUM, RD_MEAN, RD_SQ_NORM, RD_MSE } rd_kind;
static const char *const rd_names[] = {"sum", "mean", "sq_norm", "mse"};

/* Sum over i in [lo, hi) of a[i] (SUM, MEAN), a[i]^2 (SQ_NORM) or
 * (a[i] - b[i])^2 (MSE), in double. */
static double rd_block(rd_kind k, const float *a, const float *b, size_t lo, size_t hi)
{
    double acc = 0.0;
    switch (k) {
    case RD_SUM:
    case RD_MEAN:
        for (size_t i = lo; i < hi; i++) acc += a[i];
        break;
    case RD_SQ_NORM:
        for (size_t i = lo; i < hi; i++) acc += (double)a[i] * a[i];
        break;
    case RD_MSE:
        for (size_t i = lo; i < hi; i++) {
            double d = (double)a[i] - b[i];
            acc += d * d;
        }
        break;
    }
    return acc;
}

/* Deterministic blocked total of n terms (see the file comment). part: one
 * double per block, from the arena. */
static double rd_total(rd_kind k, const float *a, const float *b, size_t n, double *part)
{
    size_t nb = (n + RD_BLOCK - 1) / RD_BLOCK;
#pragma omp parallel for schedule(static) if (n > RD_PAR_MIN)
    for (size_t j = 0; j < nb; j++) {
        size_t hi = (j + 1) * RD_BLOCK < n ? (j + 1) * RD_BLOCK : n;
        part[j] = rd_block(k, a, b, j * RD_BLOCK, hi);
    }
    double s = 0.0;
    for (size_t j = 0; j < nb; j++) s += part[j];
    return s;
}

/* Backward of the full reductions, with gy = out->grad[0] and n = numel:
 *   sum(a):            ga += gy
 *   mean(a) = sum/n:   ga += gy / n
 *   sq_norm = sum a^2: ga += 2 gy a
 *   mse = mean (a-b)^2: ga += 2 gy (a - b) / n, gb -= 2 gy (a - b) / n */
static sd_status rd_backward(sd_graph *g, sd_tensor *out)
{
    (void)g;
    rd_kind k = (rd_kind)out->params.i[0];
    sd_tensor *A = out->src[0], *B = out->src[1];
    size_t n = A->numel;
    const float *a = A->data;
    float *ga = A->grad;
    double gy = out->grad[0];
    switch (k) {
    case RD_SUM:
    case RD_MEAN: {
        float d = (float)(k == RD_MEAN ? gy / (double)n : gy);
        if (ga) {
#pragma omp parallel for schedule(static) if (n > RD_PAR_MIN)
            for (size_t i = 0; i < n; i++) ga[i] += d;
        }
        break;
    }
    case RD_SQ_NORM: {
        float c = (float)(2.0 * gy);
        if (ga) {
#pragma omp parallel for schedule(static) if (n > RD_PAR_MIN)
            for (size_t i = 0; i < n; i++) ga[i] += c * a[i];
        }
        break;
    }
    case RD_MSE: {
        float c = (float)(2.0 * gy / (double)n);
        const float *b = B->data;
        float *gb = B->grad;
        if (ga) {
#pragma omp parallel for schedule(static) if (n > RD_PAR_MIN)
            for (size_t i = 0; i < n; i++) ga[i] += c * (a[i] - b[i]);
        }
        if (gb) {
#pragma omp parallel for schedule(static) if (n > RD_PAR_MIN)
            for (size_t i = 0; i < n; i++) gb[i] -= c * (a[i] - b[i]);
        }
        break;
    }
    }
    return SD_OK;
}

static sd_tensor *rd_full(sd_graph *g, rd_kind k, sd_tensor *a, sd_tensor *b)
{
    if (!a || (k == RD_MSE && !b)) return NULL;
    if (k == RD_MSE && !sd_same_shape(a, b)) {
        char sa[64], sb[64];
        return sd_graph_fail(g, SD_ERR_INVALID, "mse: shapes %s and %s differ",
                           sd_shape_str(a, sa, sizeof sa), sd_shape_str(b, sb, sizeof sb));
    }
    sd_tensor *srcs[2] = {a, b};
    sd_tensor *out =
        sd__op_output(g, rd_names[k], 1, (int[]){1}, rd_backward, k == RD_MSE ? 2 : 1, srcs);
    if (!out) return NULL;
    out->params.i[0] = (int)k;
    size_t n = a->numel;
    double *part = sd_graph_alloc(g, ((n + RD_BLOCK - 1) / RD_BLOCK) * sizeof(double));
    if (!part) return sd_graph_fail(g, SD_ERR_NOMEM, "%s: out of memory", rd_names[k]);
    double s = rd_total(k, a->data, b ? b->data : NULL, n, part);
    if (k == RD_MEAN || k == RD_MSE) s /= (double)n;
    out->data[0] = (float)s;
    return out;
}

sd_tensor *sd_sum(sd_graph *g, sd_tensor *a) { return rd_full(g, RD_SUM, a, NULL); }
sd_tensor *sd_mean(sd_graph *g, sd_tensor *a) { return rd_full(g, RD_MEAN, a, NULL); }
sd_tensor *sd_sq_norm(sd_graph *g, sd_tensor *a) { return rd_full(g, RD_SQ_NORM, a, NULL); }
sd_tensor *sd_mse(sd_graph *g, sd_tensor *a, sd_tensor *b) { return rd_full(g, RD_MSE, a, b); }

/* ---- along one axis ----------------------------------------------------- */

static void axis_view(const sd_tensor *a, int axis, size_t *outer, size_t *len, size_t *inner)
{
    *outer = *inner = 1;
    for (int d = 0; d < axis; d++) *outer *= (size_t)a->shape[d];
    *len = (size_t)a->shape[axis];
    for (int d = axis + 1; d < a->ndim; d++) *inner *= (size_t)a->shape[d];
}

/* Backward of out[o, j] = c * sum_k a[o, k, j] (c = 1 or 1/len):
 * ga[o, k, j] += c * gy[o, j]. */
static sd_status axis_backward(sd_graph *g, sd_tensor *out)
{
    (void)g;
    sd_tensor *A = out->src[0];
    if (!A->grad) return SD_OK;
    size_t outer, len, inner;
    axis_view(A, out->params.i[0], &outer, &len, &inner);
    float c = out->params.i[1] ? (float)(1.0 / (double)len) : 1.0f;
    const float *gy = out->grad;
    float *ga = A->grad;
    size_t rows = outer * len;
#pragma omp parallel for schedule(static) if (A->numel > RD_PAR_MIN)
    for (size_t r = 0; r < rows; r++) {
        const float *gr = gy + (r / len) * inner;
        float *dst = ga + r * inner;
        for (size_t j = 0; j < inner; j++) dst[j] += c * gr[j];
    }
    return SD_OK;
}

static sd_tensor *rd_axis(sd_graph *g, const char *name, bool mean, sd_tensor *a, int axis,
                          bool keepdim)
{
    if (!a) return NULL;
    /* Python-style negative axes count from the end. */
    int ax = axis < 0 ? axis + a->ndim : axis;
    if (ax < 0 || ax >= a->ndim) {
        char sa[64];
        return sd_graph_fail(g, SD_ERR_INVALID, "%s: axis %d out of range for %s", name, axis,
                           sd_shape_str(a, sa, sizeof sa));
    }
    int shape[SD_MAX_DIMS], nd = 0;
    for (int d = 0; d < a->ndim; d++) {
        if (d != ax) shape[nd++] = a->shape[d];
        else if (keepdim) shape[nd++] = 1;
    }
    if (nd == 0) shape[nd++] = 1; /* a 1-D input reduces to [1] */
    sd_tensor *out = sd__op_output(g, name, nd, shape, axis_backward, 1, &a);
    if (!out) return NULL;
    out->params.i[0] = ax;
    out->params.i[1] = mean;

    size_t outer, len, inner;
    axis_view(a, ax, &outer, &len, &inner);
    double c = mean ? 1.0 / (double)len : 1.0;
    size_t ncol = (inner + RD_COLS - 1) / RD_COLS, ntask = outer * ncol;
    const float *x = a->data;
    float *y = out->data;
    /* Task t: columns [j0, j0 + w) of outer row o, summed over k with a
     * stack accumulator, reading contiguous runs of w floats. */
#pragma omp parallel for schedule(static) if (a->numel > RD_PAR_MIN)
    for (size_t t = 0; t < ntask; t++) {
        size_t o = t / ncol, j0 = (t % ncol) * RD_COLS;
        size_t w = inner - j0 < RD_COLS ? inner - j0 : RD_COLS;
        double acc[RD_COLS] = {0};
        for (size_t k = 0; k < len; k++) {
            const float *row = x + (o * len + k) * inner + j0;
            for (size_t j = 0; j < w; j++) acc[j] += row[j];
        }
        for (size_t j = 0; j < w; j++) y[o * inner + j0 + j] = (float)(acc[j] * c);
    }
    return out;
}

sd_tensor *sd_sum_axis(sd_graph *g, sd_tensor *a, int axis, bool keepdim)
{
    return rd_axis(g, "sum_axis", false, a, axis, keepdim);
}

sd_tensor *sd_mean_axis(sd_graph *g, sd_tensor *a, int axis, bool keepdim)
{
    return rd_axis(g, "mean_axis", true, a, axis, keepdim);
}

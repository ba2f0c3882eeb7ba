/* ops_shape.c - reshape, channel concatenation, and the 2x resampling pair
 * of the U-Net (nearest upsampling, 2x2 average pooling).
 *
 * Dimension vocabulary: N batch, C channels, H x W spatial; layout NCHW.
 *
 * Reshape shares its source's data: tensors are immutable once made, so the
 * view can never observe a change. It is a header made by sd__op_view (no
 * data allocated), recorded on the tape only when a gradient is needed.
 */
#include "sd/ops.h"
#include "core/graph_internal.h"

#include <limits.h>
#include <stdio.h>
#include <string.h>

#define SH_PAR_MIN 32768 /* elements below which threading costs more than it saves */

/* ---- reshape ------------------------------------------------------------ */

/* Backward of y = reshape(a): same elements in the same order, ga += gy. */
static sd_status reshape_backward(sd_graph *g, sd_tensor *out)
{
    (void)g;
    sd_tensor *A = out->src[0];
    if (!A->grad) return SD_OK;
    const float *gy = out->grad;
    float *ga = A->grad;
    size_t n = out->numel;
#pragma omp parallel for schedule(static) if (n > SH_PAR_MIN)
    for (size_t i = 0; i < n; i++) ga[i] += gy[i];
    return SD_OK;
}

/* Writes "[2, -1, 3]" for a requested shape (which may hold -1 or junk). */
static const char *shape_req_str(int ndim, const int *shape, char *buf, size_t len)
{
    size_t off = (size_t)snprintf(buf, len, "[");
    for (int i = 0; i < ndim && off < len; i++)
        off += (size_t)snprintf(buf + off, len - off, i ? ", %d" : "%d", shape[i]);
    if (off < len) snprintf(buf + off, len - off, "]");
    return buf;
}

sd_tensor *sd_reshape(sd_graph *g, sd_tensor *a, int ndim, const int *shape)
{
    if (!a) return NULL;
    char sa[64], sr[96];
    if (!shape || ndim < 1 || ndim > SD_MAX_DIMS)
        return sd_graph_fail(g, SD_ERR_INVALID, "reshape: %d dimensions (1 to %d allowed)", ndim,
                           SD_MAX_DIMS);
    int s[SD_MAX_DIMS], infer = -1;
    size_t known = 1;
    for (int d = 0; d < ndim; d++) {
        s[d] = shape[d];
        if (shape[d] == -1 && infer < 0) {
            infer = d;
        } else if (shape[d] < 1) {
            return sd_graph_fail(g, SD_ERR_INVALID,
                               "reshape: bad target %s for %s (sizes >= 1, at most one -1)",
                               shape_req_str(ndim, shape, sr, sizeof sr),
                               sd_shape_str(a, sa, sizeof sa));
        } else if (sd_mul_size(known, (size_t)shape[d], &known)) {
            known = SIZE_MAX; /* saturate: reported as a count mismatch below */
        }
    }
    if (infer >= 0 && known <= a->numel && a->numel % known == 0 &&
        a->numel / known <= (size_t)INT_MAX) {
        s[infer] = (int)(a->numel / known);
        known *= (size_t)s[infer];
    }
    if (known != a->numel)
        return sd_graph_fail(g, SD_ERR_INVALID, "reshape: cannot reshape %s (%zu elements) to %s",
                           sd_shape_str(a, sa, sizeof sa), a->numel,
                           shape_req_str(ndim, shape, sr, sizeof sr));

    /* A view: shares a's data; recorded (with backward) only when needed. */
    return sd__op_view(g, "reshape", ndim, s, a->data, reshape_backward, 1, &a);
}

/* ---- concat along channels ---------------------------------------------- */

/* Backward of y[n] = (a[n], b[n]) along C: each source gets its slice of gy.
 * gy: [N, Ca+Cb, H, W]; ga: [N, Ca, H, W]; gb: [N, Cb, H, W]. */
static sd_status concat_backward(sd_graph *g, sd_tensor *out)
{
    (void)g;
    sd_tensor *A = out->src[0], *B = out->src[1];
    size_t N = (size_t)out->shape[0], hw = (size_t)out->shape[2] * (size_t)out->shape[3];
    size_t ra = (size_t)A->shape[1] * hw, rb = (size_t)B->shape[1] * hw; /* per-sample sizes */
    const float *gy = out->grad;
    float *ga = A->grad, *gb = B->grad;
    size_t n = out->numel;
#pragma omp parallel for schedule(static) if (n > SH_PAR_MIN)
    for (size_t i = 0; i < N; i++) {
        const float *src = gy + i * (ra + rb);
        if (ga)
            for (size_t j = 0; j < ra; j++) ga[i * ra + j] += src[j];
        if (gb)
            for (size_t j = 0; j < rb; j++) gb[i * rb + j] += src[ra + j];
    }
    return SD_OK;
}

sd_tensor *sd_concat_channels(sd_graph *g, sd_tensor *a, sd_tensor *b)
{
    if (!a || !b) return NULL;
    if (a->ndim != 4 || b->ndim != 4 || a->shape[0] != b->shape[0] ||
        a->shape[2] != b->shape[2] || a->shape[3] != b->shape[3] ||
        a->shape[1] > INT_MAX - b->shape[1]) {
        char sa[64], sb[64];
        return sd_graph_fail(g, SD_ERR_INVALID,
                           "concat_channels: %s and %s must be 4-D NCHW with equal N, H, W",
                           sd_shape_str(a, sa, sizeof sa), sd_shape_str(b, sb, sizeof sb));
    }
    int shape[4] = {a->shape[0], a->shape[1] + b->shape[1], a->shape[2], a->shape[3]};
    sd_tensor *srcs[2] = {a, b};
    sd_tensor *out = sd__op_output(g, "concat_channels", 4, shape, concat_backward, 2, srcs);
    if (!out) return NULL;
    size_t N = (size_t)shape[0], hw = (size_t)shape[2] * (size_t)shape[3];
    size_t ra = (size_t)a->shape[1] * hw, rb = (size_t)b->shape[1] * hw;
    const float *xa = a->data, *xb = b->data;
    float *y = out->data;
#pragma omp parallel for schedule(static) if (out->numel > SH_PAR_MIN)
    for (size_t i = 0; i < N; i++) {
        memcpy(y + i * (ra + rb), xa + i * ra, ra * sizeof(float));
        memcpy(y + i * (ra + rb) + ra, xb + i * rb, rb * sizeof(float));
    }
    return out;
}

/* ---- 2x nearest upsampling ---------------------------------------------- */

/* Backward of y[p, 2h+u, 2w+v] = x[p, h, w] (u, v in {0, 1}; p = n*C + c):
 * gx[p, h, w] += sum over u, v of gy[p, 2h+u, 2w+v]. One thread per input
 * row r = p*H + h. */
static sd_status upsample_backward(sd_graph *g, sd_tensor *out)
{
    (void)g;
    sd_tensor *X = out->src[0];
    if (!X->grad) return SD_OK;
    size_t W = (size_t)X->shape[3], rows = X->numel / W, W2 = 2 * W;
    const float *gy = out->grad;
    float *gx = X->grad;
#pragma omp parallel for schedule(static) if (out->numel > SH_PAR_MIN)
    for (size_t r = 0; r < rows; r++) {
        /* Input row r (plane p, row h) maps to output rows 2r and 2r+1, since
         * output row index p*2H + 2h = 2r. */
        const float *g0 = gy + 2 * r * W2, *g1 = g0 + W2;
        float *dst = gx + r * W;
        for (size_t w = 0; w < W; w++)
            dst[w] += (g0[2 * w] + g0[2 * w + 1]) + (g1[2 * w] + g1[2 * w + 1]);
    }
    return SD_OK;
}

sd_tensor *sd_upsample2x(sd_graph *g, sd_tensor *x)
{
    if (!x) return NULL;
    if (x->ndim != 4 || x->shape[2] > INT_MAX / 2 || x->shape[3] > INT_MAX / 2) {
        char sx[64];
        return sd_graph_fail(g, SD_ERR_INVALID, "upsample2x: input %s must be 4-D NCHW",
                           sd_shape_str(x, sx, sizeof sx));
    }
    int shape[4] = {x->shape[0], x->shape[1], 2 * x->shape[2], 2 * x->shape[3]};
    sd_tensor *out = sd__op_output(g, "upsample2x", 4, shape, upsample_backward, 1, &x);
    if (!out) return NULL;
    size_t W = (size_t)x->shape[3], rows = x->numel / W, W2 = 2 * W;
    const float *xs = x->data;
    float *y = out->data;
#pragma omp parallel for schedule(static) if (out->numel > SH_PAR_MIN)
    for (size_t r = 0; r < rows; r++) {
        const float *src = xs + r * W;
        float *d0 = y + 2 * r * W2; /* output rows 2r and 2r+1 (see backward) */
        for (size_t w = 0; w < W; w++) d0[2 * w] = d0[2 * w + 1] = src[w];
        memcpy(d0 + W2, d0, W2 * sizeof(float));
    }
    return out;
}

/* ---- 2x2 average pooling ------------------------------------------------ */

/* Backward of y[p, h, w] = (x[p,2h,2w] + x[p,2h,2w+1] + x[p,2h+1,2w] +
 * x[p,2h+1,2w+1]) / 4: each of the four inputs gets gy[p, h, w] / 4. One
 * thread per output row r = p*(H/2) + h, which owns input rows 2r, 2r+1. */
static sd_status avgpool_backward(sd_graph *g, sd_tensor *out)
{
    (void)g;
    sd_tensor *X = out->src[0];
    if (!X->grad) return SD_OK;
    size_t Wo = (size_t)out->shape[3], rows = out->numel / Wo, W = 2 * Wo;
    const float *gy = out->grad;
    float *gx = X->grad;
#pragma omp parallel for schedule(static) if (X->numel > SH_PAR_MIN)
    for (size_t r = 0; r < rows; r++) {
        const float *src = gy + r * Wo;
        float *x0 = gx + 2 * r * W, *x1 = x0 + W;
        for (size_t w = 0; w < Wo; w++) {
            float d = 0.25f * src[w];
            x0[2 * w] += d;
            x0[2 * w + 1] += d;
            x1[2 * w] += d;
            x1[2 * w + 1] += d;
        }
    }
    return SD_OK;
}

sd_tensor *sd_avgpool2x(sd_graph *g, sd_tensor *x)
{
    if (!x) return NULL;
    if (x->ndim != 4 || x->shape[2] % 2 || x->shape[3] % 2) {
        char sx[64];
        return sd_graph_fail(g, SD_ERR_INVALID,
                           "avgpool2x: input %s must be 4-D NCHW with even H and W",
                           sd_shape_str(x, sx, sizeof sx));
    }
    int shape[4] = {x->shape[0], x->shape[1], x->shape[2] / 2, x->shape[3] / 2};
    sd_tensor *out = sd__op_output(g, "avgpool2x", 4, shape, avgpool_backward, 1, &x);
    if (!out) return NULL;
    size_t Wo = (size_t)shape[3], rows = out->numel / Wo, W = 2 * Wo;
    const float *xs = x->data;
    float *y = out->data;
#pragma omp parallel for schedule(static) if (x->numel > SH_PAR_MIN)
    for (size_t r = 0; r < rows; r++) {
        const float *x0 = xs + 2 * r * W, *x1 = x0 + W;
        float *dst = y + r * Wo;
        for (size_t w = 0; w < Wo; w++)
            dst[w] = 0.25f * ((x0[2 * w] + x0[2 * w + 1]) + (x1[2 * w] + x1[2 * w + 1]));
    }
    return out;
}

/* ops_fft.c - Fourier and cosine transforms over the H x W planes of a tensor
 * (sd_rfft2, sd_irfft2, sd_dct2, sd_idct2; declared in sd/ops.h).
 *
 * Every transform acts on the last two axes; the leading axes (N, C, or
 * fewer) only count independent planes. Plans come from the cache in
 * fft_plan.c (planning is not thread-safe, executing is) and each plane is
 * executed with FFTW's new-array functions, one plane per OpenMP iteration,
 * so every output element is written by exactly one thread (deterministic).
 *
 * Dimension vocabulary: H x W real plane; Wh = W/2 + 1 complex columns of the
 * half spectrum, stored as 2*Wh floats per row (re, im interleaved); P planes.
 *
 * Conventions (numpy.fft / scipy.fft):
 *   rfft2:  Y[k] = sum_n x[n] e^{-i theta(k,n)}, theta = 2 pi (k1 n1/H + k2 n2/W),
 *           k2 = 0 .. W/2 (numpy.fft.rfft2, unnormalised).
 *   irfft2: numpy.fft.irfft2(Y, s=(H, W)): 1/(HW) times the inverse DFT of the
 *           Hermitian extension, where only the Hermitian part of the
 *           self-conjugate columns (k2 = 0, and k2 = W/2 for even W) is used.
 *   dct2 / idct2: scipy.fft.dctn(x, type=2 / 3, norm='ortho') on both axes.
 *
 * "Self-conjugate" columns: the partner -k = (-k1 mod H, -k2 mod W) of an entry
 * lies in the same column for k2 = 0 and (W even) k2 = W/2; every other stored
 * column k2 stands for itself and its unstored mirror W - k2.
 */
#include "sd/fft.h"
#include "sd/ops.h"
#include "core/graph_internal.h"

#include <limits.h>
#include <string.h>

#define SD_FFT_PAR_MIN 32768

/* Planes, H and W of x (the last two axes). False with the error set. */
static bool plane_geom(sd_graph *g, const char *op, const sd_tensor *x, int *P, int *H, int *W)
{
    char buf[64];
    if (x->ndim < 2) {
        sd_graph_fail(g, SD_ERR_INVALID, "%s: needs at least 2 dims [.., H, W], got %s", op,
                    sd_shape_str(x, buf, sizeof buf));
        return false;
    }
    *H = x->shape[x->ndim - 2];
    *W = x->shape[x->ndim - 1];
    size_t planes = x->numel / ((size_t)*H * (size_t)*W);
    if (planes > (size_t)INT_MAX) {
        sd_graph_fail(g, SD_ERR_INVALID, "%s: too many planes in %s", op,
                    sd_shape_str(x, buf, sizeof buf));
        return false;
    }
    *P = (int)planes;
    return true;
}

/* Copy one half-spectrum plane src [H][Wh] (complex) to dst, replacing the
 * self-conjugate columns by their Hermitian part (Z_k + conj Z_{-k}) / 2 times
 * self_scale and multiplying the other columns by mid_scale. The result is a
 * valid input for FFTW's c2r, which assumes those columns are Hermitian. */
static void herm_fill(const float *src, float *dst, int H, int W, float self_scale,
                      float mid_scale)
{
    int Wh = W / 2 + 1;
    size_t row = 2 * (size_t)Wh;
    for (int k1 = 0; k1 < H; k1++) {
        int m1 = (H - k1) % H; /* row of the partner -k1 */
        const float *a = src + (size_t)k1 * row;
        const float *b = src + (size_t)m1 * row;
        float *d = dst + (size_t)k1 * row;
        for (int k2 = 0; k2 < Wh; k2++) {
            bool self = k2 == 0 || (W % 2 == 0 && k2 == W / 2);
            if (self) {
                d[2 * k2] = 0.5f * (a[2 * k2] + b[2 * k2]) * self_scale;
                d[2 * k2 + 1] = 0.5f * (a[2 * k2 + 1] - b[2 * k2 + 1]) * self_scale;
            } else {
                d[2 * k2] = a[2 * k2] * mid_scale;
                d[2 * k2 + 1] = a[2 * k2 + 1] * mid_scale;
            }
        }
    }
}

/* ---- rfft2 -------------------------------------------------------------- */

/* Forward: Y[k] = sum_n x[n] e^{-i theta(k,n)} over the stored half spectrum,
 * a real-linear map x -> (Re Y, Im Y). With Ybar = a + i b the cotangent,
 *   <Y, Ybar> = sum_k Re(Y_k conj Ybar_k) = sum_n x[n] Re sum_k Ybar_k e^{+i theta},
 * so  xbar[n] = Re sum_{k in half} Ybar_k e^{+i theta(k,n)}.
 * FFTW's c2r computes, for Z Hermitian on the self-conjugate columns,
 *   c2r(Z)[n] = sum_{self cols} Z_k e^{i theta} + 2 Re sum_{other cols} Z_k e^{i theta}
 * (the unstored mirror columns contribute the conjugate). Taking
 *   Z = (Ybar_k + conj Ybar_{-k}) / 2 on self-conjugate columns (pairing k with
 *       -k turns the column sum into Re sum Ybar_k e^{i theta}),
 *   Z = Ybar_k / 2 on the other columns,
 * gives c2r(Z) = xbar exactly, with scale 1. */
static sd_status rfft2_backward(sd_graph *g, sd_tensor *out)
{
    sd_tensor *x = out->src[0];
    if (!x->grad) return SD_OK;
    int H = x->shape[x->ndim - 2], W = x->shape[x->ndim - 1];
    size_t hw = (size_t)H * (size_t)W, ch = (size_t)H * (size_t)(2 * (W / 2 + 1));
    int P = (int)(x->numel / hw);
    fftwf_plan plan = sd_fft_plan_get(SD_FFT_C2R, H, W);
    if (!plan) return sd_error(SD_ERR_NOMEM, "rfft2 backward: %s", sd_error_message());
    float *z = sd_graph_alloc_floats(g, out->numel); /* [P][H][Wh] complex */
    float *t = sd_graph_alloc_floats(g, x->numel);   /* [P][H][W] real */
    if (!z || !t) return sd_error(SD_ERR_NOMEM, "rfft2 backward: out of memory");
    size_t total = out->numel;
#pragma omp parallel for schedule(static) if (total > SD_FFT_PAR_MIN)
    for (int p = 0; p < P; p++) {
        float *zp = z + (size_t)p * ch, *tp = t + (size_t)p * hw;
        float *gx = x->grad + (size_t)p * hw;
        herm_fill(out->grad + (size_t)p * ch, zp, H, W, 1.0f, 0.5f);
        fftwf_execute_dft_c2r(plan, (fftwf_complex *)zp, tp); /* destroys zp */
        for (size_t i = 0; i < hw; i++) gx[i] += tp[i];
    }
    return SD_OK;
}

sd_tensor *sd_rfft2(sd_graph *g, sd_tensor *x)
{
    if (!x) return NULL;
    int P, H, W;
    if (!plane_geom(g, "rfft2", x, &P, &H, &W)) return NULL;
    if (W > INT_MAX - 2) return sd_graph_fail(g, SD_ERR_INVALID, "rfft2: width %d too large", W);
    fftwf_plan plan = sd_fft_plan_get(SD_FFT_R2C, H, W);
    if (!plan) return sd_graph_fail(g, SD_ERR_NOMEM, "rfft2: %s", sd_error_message());
    int shape[SD_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[x->ndim - 1] = 2 * (W / 2 + 1);
    sd_tensor *out = sd__op_output(g, "rfft2", x->ndim, shape, rfft2_backward, 1, &x);
    if (!out) return NULL;
    /* x is [P][H][W] real, out is [P][H][W/2+1] complex (re, im interleaved).
     * Out-of-place r2c preserves its input (FFTW default). */
    size_t hw = (size_t)H * (size_t)W, ch = (size_t)H * (size_t)shape[x->ndim - 1];
    size_t total = out->numel;
#pragma omp parallel for schedule(static) if (total > SD_FFT_PAR_MIN)
    for (int p = 0; p < P; p++)
        fftwf_execute_dft_r2c(plan, x->data + (size_t)p * hw,
                              (fftwf_complex *)(out->data + (size_t)p * ch));
    return out;
}

/* ---- irfft2 ------------------------------------------------------------- */

/* Forward: x = c2r(herm_fill(Y, 1, 1)) / (HW). On self-conjugate columns the
 * Hermitian part sums to Re sum Y_k e^{i theta}, so as a real-linear map
 *   x[n] = 1/(HW) Re sum_{k in half} w_{k2} Y_k e^{+i theta(k,n)},
 *   w = 1 on self-conjugate columns, 2 on the others (their mirror's share).
 * Then <x, xbar> = 1/(HW) Re sum_k w_{k2} Y_k sum_n xbar[n] e^{+i theta}
 *                = sum_k Re(Y_k conj(w_{k2}/(HW) R_k)),  R = r2c(xbar),
 * so  Ybar_k = w_{k2} / (HW) * R_k  (one unnormalised r2c of the cotangent). */
static sd_status irfft2_backward(sd_graph *g, sd_tensor *out)
{
    sd_tensor *X = out->src[0];
    if (!X->grad) return SD_OK;
    int H = out->shape[out->ndim - 2], W = out->shape[out->ndim - 1];
    int Wh = W / 2 + 1;
    size_t hw = (size_t)H * (size_t)W, ch = (size_t)H * (size_t)(2 * Wh);
    int P = (int)(out->numel / hw);
    fftwf_plan plan = sd_fft_plan_get(SD_FFT_R2C, H, W);
    if (!plan) return sd_error(SD_ERR_NOMEM, "irfft2 backward: %s", sd_error_message());
    float *r = sd_graph_alloc_floats(g, X->numel); /* [P][H][Wh] complex */
    if (!r) return sd_error(SD_ERR_NOMEM, "irfft2 backward: out of memory");
    float inv = (float)(1.0 / ((double)H * (double)W));
    size_t total = X->numel;
#pragma omp parallel for schedule(static) if (total > SD_FFT_PAR_MIN)
    for (int p = 0; p < P; p++) {
        float *rp = r + (size_t)p * ch, *gX = X->grad + (size_t)p * ch;
        fftwf_execute_dft_r2c(plan, out->grad + (size_t)p * hw, (fftwf_complex *)rp);
        for (int k1 = 0; k1 < H; k1++) {
            for (int k2 = 0; k2 < Wh; k2++) {
                bool self = k2 == 0 || (W % 2 == 0 && k2 == W / 2);
                float s = self ? inv : 2.0f * inv;
                size_t i = (size_t)k1 * (size_t)(2 * Wh) + 2 * (size_t)k2;
                gX[i] += s * rp[i];
                gX[i + 1] += s * rp[i + 1];
            }
        }
    }
    return SD_OK;
}

sd_tensor *sd_irfft2(sd_graph *g, sd_tensor *X, int W)
{
    if (!X) return NULL;
    char buf[64];
    int P, H, Wc;
    if (!plane_geom(g, "irfft2", X, &P, &H, &Wc)) return NULL;
    if (W < 1 || 2 * ((long long)W / 2 + 1) != Wc)
        return sd_graph_fail(g, SD_ERR_INVALID,
                           "irfft2: X %s has a last dimension of %d, but width W = %d needs "
                           "2*(W/2+1) = %lld (W must be >= 1)",
                           sd_shape_str(X, buf, sizeof buf), Wc, W, 2 * ((long long)W / 2 + 1));
    fftwf_plan plan = sd_fft_plan_get(SD_FFT_C2R, H, W);
    if (!plan) return sd_graph_fail(g, SD_ERR_NOMEM, "irfft2: %s", sd_error_message());
    int shape[SD_MAX_DIMS];
    memcpy(shape, X->shape, sizeof shape);
    shape[X->ndim - 1] = W;
    sd_tensor *out = sd__op_output(g, "irfft2", X->ndim, shape, irfft2_backward, 1, &X);
    if (!out) return NULL;
    /* c2r destroys its input and needs Hermitian self-conjugate columns: work
     * on a projected copy [P][H][Wh] complex, with 1/(HW) folded in. */
    float *z = sd_graph_alloc_floats(g, X->numel);
    if (!z) return sd_graph_fail(g, SD_ERR_NOMEM, "irfft2: out of memory for scratch");
    float inv = (float)(1.0 / ((double)H * (double)W));
    size_t hw = (size_t)H * (size_t)W, ch = (size_t)H * (size_t)Wc;
    size_t total = X->numel;
#pragma omp parallel for schedule(static) if (total > SD_FFT_PAR_MIN)
    for (int p = 0; p < P; p++) {
        float *zp = z + (size_t)p * ch;
        herm_fill(X->data + (size_t)p * ch, zp, H, W, inv, inv);
        fftwf_execute_dft_c2r(plan, (fftwf_complex *)zp, out->data + (size_t)p * hw);
    }
    return out;
}

/* ---- orthonormal DCT ---------------------------------------------------- */

/* Forward y = D x (D = dct2 or idct2 on each plane). Both are orthonormal, so
 * D^T = D^{-1}: xbar += D^{-1} ybar, i.e. the other transform of out->grad. */
static sd_status dct_backward(sd_graph *g, sd_tensor *out, bool forward_was_inverse)
{
    sd_tensor *x = out->src[0];
    if (!x->grad) return SD_OK;
    int H = x->shape[x->ndim - 2], W = x->shape[x->ndim - 1];
    int P = (int)(x->numel / ((size_t)H * (size_t)W));
    float *t = sd_graph_alloc_floats(g, x->numel); /* [P][H][W] */
    if (!t) return sd_error(SD_ERR_NOMEM, "%s backward: out of memory", out->op);
    sd_status st = sd_dct2_planes(out->grad, t, P, H, W, !forward_was_inverse);
    if (st != SD_OK) return st;
    size_t n = x->numel;
    float *gx = x->grad;
#pragma omp parallel for simd schedule(static) if (n > SD_FFT_PAR_MIN)
    for (size_t i = 0; i < n; i++) gx[i] += t[i];
    return SD_OK;
}

static sd_status dct2_backward(sd_graph *g, sd_tensor *out) { return dct_backward(g, out, false); }
static sd_status idct2_backward(sd_graph *g, sd_tensor *out) { return dct_backward(g, out, true); }

static sd_tensor *dct_op(sd_graph *g, sd_tensor *x, bool inverse)
{
    if (!x) return NULL;
    const char *op = inverse ? "idct2" : "dct2";
    int P, H, W;
    if (!plane_geom(g, op, x, &P, &H, &W)) return NULL;
    /* Plan first so that a planner failure leaves no half-made output. */
    if (!sd_fft_plan_get(inverse ? SD_FFT_DCT3 : SD_FFT_DCT2, H, W))
        return sd_graph_fail(g, SD_ERR_NOMEM, "%s: %s", op, sd_error_message());
    sd_tensor *out = sd__op_output(g, op, x->ndim, x->shape,
                                   inverse ? idct2_backward : dct2_backward, 1, &x);
    if (!out) return NULL;
    sd_status st = sd_dct2_planes(x->data, out->data, P, H, W, inverse);
    if (st != SD_OK) return sd_graph_fail(g, st, "%s: %s", op, sd_error_message());
    return out;
}

sd_tensor *sd_dct2(sd_graph *g, sd_tensor *x) { return dct_op(g, x, false); }
sd_tensor *sd_idct2(sd_graph *g, sd_tensor *x) { return dct_op(g, x, true); }

/* family_dct.c - the dct noise family: blurring diffusion (Hoogeboom &
 * Salimans 2022) / heat dissipation (Rissanen et al. 2023) with VE noise,
 * diagonal in the orthonormal 2-D DCT basis of each channel plane (sd/sde.h
 * has the formulas). Operators apply per-frequency diagonals between a
 * forward and an inverse orthonormal DCT (sd_dct2_planes, FFTW). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sd/fft.h"
#include "sd/rng.h"
#include "sd/sde_family.h"
#include "sd/tensor.h"

static sd_status dct_check(const sd_sde *s, size_t D, const char *op)
{
    if (s->shape_c < 1)
        return sd_error(SD_ERR_INVALID, "sde dct (%s): the image shape is not bound (give "
                                        "shape=CxHxW or build a model from image data)", op);
    if ((size_t)s->shape_c * s->shape_h * s->shape_w != D)
        return sd_error(SD_ERR_INVALID, "sde dct (%s): shape %dx%dx%d does not hold D = %zu "
                                        "values", op, s->shape_c, s->shape_h, s->shape_w, D);
    return SD_OK;
}

/* lambda_k = pi^2 (k1^2 / H^2 + k2^2 / W^2): eigenvalue of the Neumann
 * Laplacian on an H x W grid of unit spacing whose eigenvector is DCT-II
 * basis function k (Rissanen et al. 2023, Sec. 2). */
static double dct_lambda(const sd_sde *s, int k1, int k2)
{
    double a = (double)k1 / s->shape_h, b = (double)k2 / s->shape_w;
    return M_PI * M_PI * (a * a + b * b);
}

typedef enum { DCT_MEAN, DCT_MEAN_INV, DCT_DRIFT, DCT_G, DCT_GGT, DCT_NONE } dct_diag;

/* Per-frequency value of diagonal `which` at t (sd/sde.h's formulas). */
static double dct_value(const sd_sde *s, dct_diag which, double t, double lambda)
{
    double b2 = s->blur_max * s->blur_max, tau = 0.5 * b2 * t * t;
    double sig2 = pow(sd_sde_sigma(s, t), 2), lr = log(s->sigma_max / s->sigma_min);
    switch (which) {
    case DCT_MEAN: return exp(-lambda * tau);
    case DCT_MEAN_INV: return exp(lambda * tau);
    case DCT_DRIFT: return -lambda * b2 * t;
    case DCT_G: return sqrt(sig2 * (2.0 * lr + 2.0 * lambda * b2 * t));
    case DCT_GGT: return sig2 * (2.0 * lr + 2.0 * lambda * b2 * t);
    case DCT_NONE: return 1.0;
    }
    return NAN;
}

/* out = B diag(d) B^T in for n images (inverse == false), or the DCT
 * coefficients diag(d) B^T in (modes_only). */
static sd_status dct_apply(const sd_sde *s, dct_diag which, double t, const float *in, float *out,
                           size_t n, size_t D, bool modes_only, const char *op)
{
    sd_status st = dct_check(s, D, op);
    if (st != SD_OK) return st;
    int H = s->shape_h, W = s->shape_w;
    size_t HW = (size_t)H * W, planes = n * (size_t)s->shape_c;
    if (planes > (size_t)INT32_MAX)
        return sd_error(SD_ERR_INVALID, "sde dct (%s): %zu planes are too many", op, planes);
    float *d = sd_malloc(HW * sizeof(float));
    if (!d) return sd_error(SD_ERR_NOMEM, "sde dct (%s): out of memory", op);
    for (int k1 = 0; k1 < H; k1++)
        for (int k2 = 0; k2 < W; k2++)
            d[(size_t)k1 * W + k2] = (float)dct_value(s, which, t, dct_lambda(s, k1, k2));
    st = sd_dct2_planes(in, out, (int)planes, H, W, false);
    if (st == SD_OK) {
        for (size_t p = 0; p < planes; p++) {
            float *pl = out + p * HW;
            for (size_t k = 0; k < HW; k++) pl[k] *= d[k];
        }
        if (!modes_only) st = sd_dct2_planes(out, out, (int)planes, H, W, true);
    }
    sd_free(d);
    return st;
}

/* ---- spec --------------------------------------------------------------------------- */

static void dct_defaults(sd_sde *s)
{
    s->sigma_min = 0.01;
    s->sigma_max = 50.0;
    s->blur_max = 2.0;
}

/* "CxHxW" or "HxW" (one channel). */
static sd_status parse_shape(const char *spec, const char *val, sd_sde *s)
{
    long v[3];
    int k = 0;
    const char *p = val;
    while (k < 3) {
        char *end;
        errno = 0;
        v[k] = strtol(p, &end, 10);
        if (end == p || errno || v[k] < 1 || v[k] > 65536) break;
        k++;
        if (*end == '\0') {
            p = end;
            break;
        }
        if (*end != 'x') {
            k = 0;
            break;
        }
        p = end + 1;
    }
    if (*p != '\0' || k < 2)
        return sd_error(SD_ERR_INVALID, "sde %s: shape=%s: expected CxHxW or HxW (positive "
                                        "integers)", spec, val);
    s->shape_c = k == 3 ? (int)v[0] : 1;
    s->shape_h = (int)v[k - 2];
    s->shape_w = (int)v[k - 1];
    return SD_OK;
}

static sd_status dct_key(sd_sde *s, const char *spec, const char *key, const char *val,
                         bool *known)
{
    if (strcmp(key, "shape") == 0) {
        *known = true;
        return parse_shape(spec, val, s);
    }
    if (strcmp(key, "blur_max") != 0) return sd_sde_ve_key(s, spec, key, val, known);
    *known = true;
    double v = 0.0;
    sd_status st = sd_sde_parse_number(spec, key, val, &v);
    if (st != SD_OK) return st;
    if (!(v >= 0 && v <= 1e4))
        return sd_error(SD_ERR_INVALID, "sde %s: blur_max must be in [0, 1e4] pixels", spec);
    s->blur_max = v;
    return SD_OK;
}

static void dct_string(const sd_sde *s, char *buf, size_t len)
{
    if (s->shape_c)
        snprintf(buf, len, "dct:sigma_min=%.9g,sigma_max=%.9g,blur_max=%.9g,shape=%dx%dx%d",
                 s->sigma_min, s->sigma_max, s->blur_max, s->shape_c, s->shape_h, s->shape_w);
    else
        snprintf(buf, len, "dct:sigma_min=%.9g,sigma_max=%.9g,blur_max=%.9g", s->sigma_min,
                 s->sigma_max, s->blur_max);
}

static sd_status dct_bind_shape(sd_sde *s, int C, int H, int W)
{
    long D = (long)C * H * W;
    if (s->shape_c == 0) {
        s->shape_c = C;
        s->shape_h = H;
        s->shape_w = W;
    } else if ((long)s->shape_c * s->shape_h * s->shape_w != D ||
               (H * W > 1 && (s->shape_c != C || s->shape_h != H || s->shape_w != W))) {
        return sd_error(SD_ERR_INVALID, "sde dct: shape=%dx%dx%d does not fit the data "
                                        "(%dx%dx%d)", s->shape_c, s->shape_h, s->shape_w, C, H,
                        W);
    }
    return SD_OK;
}

/* ---- operators ------------------------------------------------------------------------- */

static sd_status dct_mean(const sd_sde *s, double t, const float *x0, float *out, size_t n,
                          size_t D)
{
    return dct_apply(s, DCT_MEAN, t, x0, out, n, D, false, "mean");
}

/* Sigma = sigma(t)^2 I: white noise. */
static sd_status dct_std(const sd_sde *s, double t, const float *z, float *out, size_t n,
                         size_t D)
{
    sd_sde_scale_batch(sd_sde_sigma(s, t), z, out, n, D);
    return SD_OK;
}

static sd_status dct_inv_cov(const sd_sde *s, double t, const float *v, float *out, size_t n,
                             size_t D)
{
    double sig = sd_sde_sigma(s, t);
    sd_sde_scale_batch(1.0 / (sig * sig), v, out, n, D);
    return SD_OK;
}

static sd_status dct_drift(const sd_sde *s, double t, const float *x, float *out, size_t n,
                           size_t D)
{
    return dct_apply(s, DCT_DRIFT, t, x, out, n, D, false, "drift");
}

static sd_status dct_G(const sd_sde *s, double t, const float *x, const float *z, float *out,
                       size_t n, size_t D)
{
    (void)x;
    return dct_apply(s, DCT_G, t, z, out, n, D, false, "G");
}

static sd_status dct_GGT(const sd_sde *s, double t, const float *x, const float *v, float *out,
                         size_t n, size_t D)
{
    (void)x;
    return dct_apply(s, DCT_GGT, t, v, out, n, D, false, "GGT");
}

static double dct_drift_divergence(const sd_sde *s, double t, size_t D)
{
    if (s->shape_c < 1 || (size_t)s->shape_c * s->shape_h * s->shape_w != D) return NAN;
    double acc = 0.0;
    for (int k1 = 0; k1 < s->shape_h; k1++)
        for (int k2 = 0; k2 < s->shape_w; k2++)
            acc += dct_value(s, DCT_DRIFT, t, dct_lambda(s, k1, k2));
    return acc * s->shape_c;
}

static sd_status dct_flow_divergence(const sd_sde *s, double t, const float *x, double *out,
                                     size_t n, size_t D)
{
    (void)x;
    double tr = dct_drift_divergence(s, t, D);
    if (isnan(tr)) return dct_check(s, D, "flow divergence");
    for (size_t p = 0; p < n; p++) out[p] = tr;
    return SD_OK;
}

static sd_status dct_tweedie(const sd_sde *s, double t, const float *x, const float *score,
                             float *out, size_t n, size_t D)
{
    double sig = sd_sde_sigma(s, t), s2 = sig * sig;
    float fs = (float)s2;
    for (size_t i = 0; i < n * D; i++) out[i] = x[i] + fs * score[i];
    return dct_apply(s, DCT_MEAN_INV, t, out, out, n, D, false, "tweedie");
}

static sd_status dct_modes(const sd_sde *s, double t, size_t D, double *a, double *var,
                           double *f, double *gg)
{
    double sig = sd_sde_sigma(s, t), s2 = sig * sig;
    sd_status st = dct_check(s, D, "modes");
    if (st != SD_OK) return st;
    for (size_t k = 0; k < D; k++) {
        size_t HW = (size_t)s->shape_h * s->shape_w, r = k % HW;
        double lam = dct_lambda(s, (int)(r / s->shape_w), (int)(r % s->shape_w));
        if (a) a[k] = dct_value(s, DCT_MEAN, t, lam);
        if (var) var[k] = s2;
        if (f) f[k] = dct_value(s, DCT_DRIFT, t, lam);
        if (gg) gg[k] = dct_value(s, DCT_GGT, t, lam);
    }
    return SD_OK;
}

static sd_status dct_to_modes(const sd_sde *s, const float *v, float *out, size_t n, size_t D)
{
    return dct_apply(s, DCT_NONE, 0.0, v, out, n, D, true, "to_modes");
}

static sd_status dct_prior_sample(const sd_sde *s, sd_rng *rng, float *x, size_t n, size_t D)
{
    sd_rng_fill_normal(rng, x, n * D, 0.0f, (float)s->sigma_max);
    return SD_OK;
}

static double dct_prior_logp(const sd_sde *s, const float *x, size_t D)
{
    return sd_sde_iso_normal_logp(x, D, s->sigma_max);
}

/* Orthonormal DCT-II matrix entry B[k][n] of one N-point axis. */
static double dct_basis(int N, int k, int n)
{
    double s = k == 0 ? sqrt(1.0 / N) : sqrt(2.0 / N);
    return s * cos(M_PI * k * (2.0 * n + 1.0) / (2.0 * N));
}

/* A = B diag(a_k) B^T in double, block-diagonal over channels:
 * A[(c,i1,i2)][(c,j1,j2)] = sum_k a_k B_H[k1][i1] B_W[k2][i2] B_H[k1][j1] B_W[k2][j2]. */
static sd_status dct_kernel_dense(const sd_sde *s, double t, size_t D, double *A, double *Sigma)
{
    double sig = sd_sde_sigma(s, t);
    sd_status st = dct_check(s, D, "kernel");
    if (st != SD_OK) return st;
    int H = s->shape_h, W = s->shape_w;
    size_t HW = (size_t)H * W;
    for (size_t i = 0; i < D * D; i++) {
        A[i] = 0.0;
        Sigma[i] = i / D == i % D ? sig * sig : 0.0;
    }
    for (int k1 = 0; k1 < H; k1++)
        for (int k2 = 0; k2 < W; k2++) {
            double ak = dct_value(s, DCT_MEAN, t, dct_lambda(s, k1, k2));
            for (size_t i = 0; i < HW; i++) {
                double bi = dct_basis(H, k1, (int)(i / W)) * dct_basis(W, k2, (int)(i % W));
                for (size_t j = 0; j < HW; j++) {
                    double bj = dct_basis(H, k1, (int)(j / W)) * dct_basis(W, k2, (int)(j % W));
                    for (int c = 0; c < s->shape_c; c++)
                        A[(c * HW + i) * D + c * HW + j] += ak * bi * bj;
                }
            }
        }
    return SD_OK;
}

const sd_sde_family sd_sde_family_dct = {
    .name = "dct", .keys = "sigma_min, sigma_max, blur_max, shape",
    .flags = SD_SDE_NEEDS_SHAPE | SD_SDE_TWEEDIE_SCORE,
    .defaults = dct_defaults, .set_key = dct_key, .finish = sd_sde_ve_finish,
    .to_string = dct_string, .bind_shape = dct_bind_shape,
    .sigma = sd_sde_ve_sigma, .g2 = sd_sde_ve_g2,
    .apply_mean = dct_mean, .apply_std = dct_std, .apply_inv_cov = dct_inv_cov,
    .drift = dct_drift, .apply_G = dct_G, .apply_GGT = dct_GGT,
    .drift_divergence = dct_drift_divergence, .flow_divergence = dct_flow_divergence,
    .tweedie = dct_tweedie, .modes = dct_modes, .to_modes = dct_to_modes,
    .prior_sample = dct_prior_sample, .prior_logp = dct_prior_logp,
    .kernel_dense = dct_kernel_dense,
};

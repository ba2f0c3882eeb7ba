/* test_matrix_sde.c - the matrix-valued noise families of models/sde/ (dct,
 * dense, state) at the operator level:
 *   - dct's closed-form kernel against Monte Carlo simulation of its forward
 *     SDE by Euler-Maruyama (means and covariances per frequency, within
 *     sampling error);
 *   - dct's operators (FFTW) against an independent double-precision DCT
 *     basis, and its per-frequency coefficients against the kernel ODEs;
 *   - dense: parsing C from JSON, refusal of asymmetric and non-SPD C with
 *     the right message, operators against C, checkpoint round trip without
 *     the JSON file;
 *   - state: div[G G^T] by autodiff against the analytic formula, the
 *     score-free flow divergence, the DSM target, the prior;
 *   - the analytic gmm under all three: score = gradient of log p, Hessian =
 *     Jacobian of the score (finite differences).
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sd/checkpoint.h"
#include "sd/gmm.h"
#include "mixture_check.h"
#include "sd/score_model.h"
#include "sd/rng.h"
#include "sd/sde.h"

static char tmpdir[256];

static void make_tmpdir(void)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/sd_matrix_sde_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

/* Orthonormal DCT-II of an N-point axis, B[k][n], in double. */
static double dct_b(int N, int k, int n)
{
    double s = k == 0 ? sqrt(1.0 / N) : sqrt(2.0 / N);
    return s * cos(M_PI * k * (2.0 * n + 1.0) / (2.0 * N));
}

/* u = B^T-basis coefficients of one H x W plane (u_k = sum_n B_k[n] x[n]). */
static void dct_coeffs(int H, int W, const float *x, double *u)
{
    for (int k1 = 0; k1 < H; k1++)
        for (int k2 = 0; k2 < W; k2++) {
            double acc = 0;
            for (int n1 = 0; n1 < H; n1++)
                for (int n2 = 0; n2 < W; n2++)
                    acc += dct_b(H, k1, n1) * dct_b(W, k2, n2) * x[n1 * W + n2];
            u[k1 * W + k2] = acc;
        }
}

/* ---- dct: kernel against Monte Carlo ----------------------------------------- */

/* The SDE du_k = f_k u_k dt + g_k dw_k of every frequency (sde.h) is simulated
 * in pixel space with the family's own operators (sd_sde_drift, sd_sde_apply_G:
 * FFTW DCT -> diagonal -> inverse DCT) by Euler-Maruyama with dt = T / STEPS,
 * started as the kernel's t = 0 convention says: x(0) = x0 + sigma_min z
 * (sigma(0) = sigma_min, as ve). At T the frequency coefficients u = B^T x
 * (independent double DCT) must have mean a_k(T) u0_k and covariance
 * sigma(T)^2 I.
 * Tolerances from n paths: a mean coefficient's standard error is
 * sigma(T)/sqrt(n); a covariance entry's is sigma^2 sqrt(2/n) on the diagonal
 * and sigma^2 / sqrt(n) off it (Gaussian fourth moments). The worst of the 16
 * means may deviate by 4.5 standard errors and the worst of the 136 entries by
 * 5 (two-sided tail probabilities 16 x 6.8e-6 and 136 x 5.7e-7). Euler's
 * bias: per frequency the mean factor is prod (1 + f dt) against exp(int f),
 * a relative error <= dt/2 int f^2 = dt/2 (lambda b^2)^2 T^3/3 = 1.1e-4 at the
 * highest frequency (3.4e-4 at the 500 used; 5.6e-4 at 300
 * under ASan), and the same order for the variance: far below the sampling
 * error (2% for the variances at n = 5000). */
START_TEST(test_dct_kernel_monte_carlo)
{
    sd_sde s;
    ck_assert_int_eq(sd_sde_parse("dct:sigma_min=0.05,sigma_max=2,blur_max=1.5,shape=1x4x4", &s),
                     SD_OK);
    enum { H = 4, W = 4, D = 16 };
    const double T = 0.3;
    const int STEPS = SD_TEST_ASAN ? 300 : 500;
    const size_t n = SD_TEST_ASAN ? 2000 : 5000;
    float x0[D];
    for (int i = 0; i < D; i++) x0[i] = (float)(1.0 + sin(0.9 * i) + 0.5 * (i / W));
    float *x = malloc(n * D * sizeof(float)), *f = malloc(n * D * sizeof(float));
    float *z = malloc(n * D * sizeof(float));
    sd_rng r;
    sd_rng_init(&r, 7, SD_STREAM_SAMPLER);
    sd_rng_fill_normal(&r, x, n * D, 0.0f, (float)s.sigma_min);
    for (size_t p = 0; p < n; p++)
        for (int i = 0; i < D; i++) x[p * D + i] += x0[i];
    double dt = T / STEPS;
    for (int k = 0; k < STEPS; k++) {
        double t = k * dt;
        ck_assert_int_eq(sd_sde_drift(&s, t, x, f, n, D), SD_OK);
        sd_rng_fill_normal(&r, z, n * D, 0.0f, 1.0f);
        ck_assert_int_eq(sd_sde_apply_G(&s, t, NULL, z, z, n, D), SD_OK);
        float fdt = (float)dt, fs = (float)sqrt(dt);
        for (size_t i = 0; i < n * D; i++) x[i] += fdt * f[i] + fs * z[i];
    }
    /* sample moments of the frequency coefficients */
    double u0[D], a[D], var[D], mean[D] = {0}, C[D * D] = {0}, u[D];
    dct_coeffs(H, W, x0, u0);
    ck_assert_int_eq(sd_sde_modes(&s, T, D, a, var, NULL, NULL), SD_OK);
    double *U = malloc(n * D * sizeof(double));
    for (size_t p = 0; p < n; p++) {
        dct_coeffs(H, W, x + p * D, U + p * D);
        for (int i = 0; i < D; i++) mean[i] += U[p * D + i] / n;
    }
    for (size_t p = 0; p < n; p++) {
        for (int i = 0; i < D; i++) u[i] = U[p * D + i] - mean[i];
        for (int i = 0; i < D; i++)
            for (int j = 0; j <= i; j++) C[i * D + j] += u[i] * u[j] / (n - 1);
    }
    double sig2 = pow(sd_sde_sigma(&s, T), 2), worst_mean = 0, worst_cov = 0;
    int wm = -1, wi = -1, wj = -1;
    for (int i = 0; i < D; i++) {
        /* closed form: mean a_k u0_k with a_k = exp(-lambda_k blur^2 T^2 / 2) */
        int k1 = i / W, k2 = i % W;
        double lam = M_PI * M_PI * ((double)k1 * k1 / (H * H) + (double)k2 * k2 / (W * W));
        ck_assert_double_eq_tol(a[i], exp(-lam * 1.5 * 1.5 * T * T / 2), 1e-12);
        ck_assert_double_eq_tol(var[i], sig2, 1e-12 * sig2);
        double zm = fabs(mean[i] - a[i] * u0[i]) / sqrt(sig2 / n);
        if (zm > worst_mean) worst_mean = zm, wm = i;
        for (int j = 0; j <= i; j++) {
            double truth = i == j ? sig2 : 0.0;
            double se = i == j ? sig2 * sqrt(2.0 / n) : sig2 / sqrt((double)n);
            double zc = fabs(C[i * D + j] - truth) / se;
            if (zc > worst_cov) worst_cov = zc, wi = i, wj = j;
        }
    }
    printf("dct kernel vs Monte Carlo (n = %zu, %d EM steps to t = %g): worst mean %.2f SE "
           "(frequency %d), worst covariance entry %.2f SE ([%d][%d])\n",
           n, STEPS, T, worst_mean, wm, worst_cov, wi, wj);
    ck_assert_msg(worst_mean <= 4.5, "mean of frequency %d off by %.2f standard errors", wm,
                  worst_mean);
    ck_assert_msg(worst_cov <= 5.0, "covariance [%d][%d] off by %.2f standard errors", wi, wj,
                  worst_cov);
    free(x);
    free(f);
    free(z);
    free(U);
}
END_TEST

/* ---- dct: operators ----------------------------------------------------------------- */

/* Every operator against the double basis: out = B^T diag(d) B v per plane.
 * Float operators on O(1) data: 2e-5 relative to the largest entry. Per-mode
 * coefficients against the kernel ODEs by central differences (h = 1e-5:
 * truncation 1e-10, rounding 1e-11 relative). */
START_TEST(test_dct_operators)
{
    sd_sde s;
    ck_assert_int_eq(sd_sde_parse("dct:sigma_min=0.01,sigma_max=50,blur_max=2,shape=2x3x5", &s),
                     SD_OK);
    enum { C = 2, H = 3, W = 5, HW = 15, D = 30, N = 3 };
    float v[N * D], out[N * D], g1[N * D], g2[N * D];
    sd_rng r;
    sd_rng_init(&r, 3, SD_STREAM_DATA);
    sd_rng_fill_normal(&r, v, N * D, 0.0f, 1.0f);
    double A[D * D], Sig[D * D], a[D], var[D], f[D], gg[D];
    double worst = 0;
    for (double t = 0.05; t < 1.0; t += 0.3) {
        ck_assert_int_eq(sd_sde_modes(&s, t, D, a, var, f, gg), SD_OK);
        /* apply_mean / drift / GGT against B^T diag B in double */
        for (int which = 0; which < 3; which++) {
            const double *d = which == 0 ? a : which == 1 ? f : gg;
            sd_status st = which == 0   ? sd_sde_apply_mean(&s, t, v, out, N, D)
                           : which == 1 ? sd_sde_drift(&s, t, v, out, N, D)
                                        : sd_sde_apply_GGT(&s, t, NULL, v, out, N, D);
            ck_assert_int_eq(st, SD_OK);
            double scale = 0;
            for (int k = 0; k < D; k++) scale = fmax(scale, fabs(d[k]));
            for (int p = 0; p < N; p++)
                for (int c = 0; c < C; c++) {
                    double uc[HW];
                    dct_coeffs(H, W, v + p * D + c * HW, uc);
                    for (int n1 = 0; n1 < H; n1++)
                        for (int n2 = 0; n2 < W; n2++) {
                            double acc = 0;
                            for (int k = 0; k < HW; k++)
                                acc += dct_b(H, k / W, n1) * dct_b(W, k % W, n2) * d[c * HW + k] *
                                       uc[k];
                            double e = fabs(out[p * D + c * HW + n1 * W + n2] - acc) / scale;
                            worst = fmax(worst, e);
                        }
                }
        }
        /* G G = G G^T (G is symmetric) */
        ck_assert_int_eq(sd_sde_apply_G(&s, t, NULL, v, g1, N, D), SD_OK);
        ck_assert_int_eq(sd_sde_apply_G(&s, t, NULL, g1, g1, N, D), SD_OK);
        ck_assert_int_eq(sd_sde_apply_GGT(&s, t, NULL, v, g2, N, D), SD_OK);
        for (int i = 0; i < N * D; i++) worst = fmax(worst, fabs(g1[i] - g2[i]) / fabs(gg[D - 1]));
        /* kernel_dense's A (double basis) applied to v = apply_mean (FFTW) */
        ck_assert_int_eq(sd_sde_kernel_dense(&s, t, D, A, Sig), SD_OK);
        ck_assert_int_eq(sd_sde_apply_mean(&s, t, v, out, N, D), SD_OK);
        for (int p = 0; p < N; p++)
            for (int i = 0; i < D; i++) {
                double acc = 0;
                for (int j = 0; j < D; j++) acc += A[i * D + j] * v[p * D + j];
                worst = fmax(worst, fabs(acc - out[p * D + i]));
                ck_assert_double_eq_tol(Sig[i * D + i], var[i], 1e-12 * var[i]);
            }
        /* Tweedie inverts the mean: A^-1 (A v + Sigma 0) = v */
        float zero[N * D] = {0};
        ck_assert_int_eq(sd_sde_apply_mean(&s, t, v, out, N, D), SD_OK);
        ck_assert_int_eq(sd_sde_tweedie(&s, t, out, zero, out, N, D), SD_OK);
        double inv_scale = 0;
        for (int k = 0; k < D; k++) inv_scale = fmax(inv_scale, 1.0 / a[k]);
        for (int i = 0; i < N * D; i++)
            worst = fmax(worst, fabs(out[i] - v[i]) / (t < 0.5 ? 1.0 : inv_scale));
        /* the kernel ODEs per mode: a' = f a, var' = 2 f var + gg */
        const double h = 1e-5;
        double ap[D], am[D], vp[D], vm[D];
        sd_sde_modes(&s, t + h, D, ap, vp, NULL, NULL);
        sd_sde_modes(&s, t - h, D, am, vm, NULL, NULL);
        for (int k = 0; k < D; k++) {
            double da = (ap[k] - am[k]) / (2 * h), dv = (vp[k] - vm[k]) / (2 * h);
            ck_assert_msg(fabs(da - f[k] * a[k]) <= 1e-6 * (fabs(da) + 1e-3), "a' at t=%g k=%d",
                          t, k);
            double rhs = 2 * f[k] * var[k] + gg[k];
            ck_assert_msg(fabs(dv - rhs) <= 1e-6 * fabs(dv), "var' at t=%g k=%d: %g vs %g", t, k,
                          dv, rhs);
        }
        double trf = 0;
        for (int k = 0; k < D; k++) trf += f[k];
        ck_assert_double_eq_tol(sd_sde_drift_divergence(&s, t, D), trf, 1e-9 * fabs(trf));
    }
    ck_assert_msg(worst <= 2e-5, "dct operators off by %g (relative)", worst);
    /* to_modes = B^T v */
    ck_assert_int_eq(sd_sde_to_modes(&s, v, out, N, D), SD_OK);
    double um[HW], wm = 0;
    for (int p = 0; p < N; p++)
        for (int c = 0; c < C; c++) {
            dct_coeffs(H, W, v + p * D + c * HW, um);
            for (int k = 0; k < HW; k++) wm = fmax(wm, fabs(um[k] - out[p * D + c * HW + k]));
        }
    ck_assert_msg(wm <= 1e-5, "to_modes off by %g", wm);
    /* spec round trip and shape binding */
    char spec[256];
    sd_sde_to_string(&s, spec, sizeof spec);
    ck_assert_str_eq(spec, "dct:sigma_min=0.01,sigma_max=50,blur_max=2,shape=2x3x5");
    sd_sde u;
    ck_assert_int_eq(sd_sde_parse("dct:blur_max=1", &u), SD_OK);
    ck_assert_int_eq(sd_sde_apply_mean(&u, 0.5, v, out, 1, D), SD_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "not bound"));
    ck_assert_int_eq(sd_sde_bind_shape(&u, 1, 28, 28), SD_OK);
    ck_assert_int_eq(u.shape_h, 28);
    ck_assert_int_eq(sd_sde_bind_shape(&s, 1, 28, 28), SD_ERR_INVALID);
    ck_assert_int_eq(sd_sde_parse("dct:shape=3x", &u), SD_ERR_INVALID);
    ck_assert_int_eq(sd_sde_parse("dct:shape=0x4x4", &u), SD_ERR_INVALID);
    ck_assert_int_eq(sd_sde_parse("dct:shape=4x4", &u), SD_OK);
    ck_assert_int_eq(u.shape_c, 1);
    ck_assert_int_eq(sd_sde_parse("dct:L=3", &u), SD_ERR_INVALID);
}
END_TEST

/* ---- dense ---------------------------------------------------------------------- */

START_TEST(test_dense_family)
{
    make_tmpdir();
    char path[512], spec[700];
    snprintf(path, sizeof path, "%s/c.json", tmpdir);
    write_file(path, "{\"C\": [[2.0, 0.6, 0.1], [0.6, 1.0, -0.2], [0.1, -0.2, 0.5]]}");
    snprintf(spec, sizeof spec, "dense:sigma_min=0.02,sigma_max=10,C=%s", path);
    sd_sde s;
    ck_assert_int_eq(sd_sde_parse(spec, &s), SD_OK);
    ck_assert_int_eq(s.dim, 3);
    const double Cm[9] = {2.0, 0.6, 0.1, 0.6, 1.0, -0.2, 0.1, -0.2, 0.5};
    /* operators: std = sigma L (L L^T = C), inv_cov = C^-1 / sigma^2, GGT = g2 C */
    enum { D = 3 };
    double t = 0.4, sig = sd_sde_sigma(&s, t), g2 = sd_sde_g2(&s, t), worst = 0;
    float e[D * D] = {1, 0, 0, 0, 1, 0, 0, 0, 1}, Lc[D * D], back[D * D], M[D * D];
    ck_assert_int_eq(sd_sde_apply_std(&s, t, e, Lc, D, D), SD_OK); /* rows: sigma L e_j */
    for (int i = 0; i < D; i++)
        for (int j = 0; j < D; j++) {
            double acc = 0; /* (sigma L)(sigma L)^T = sum_k row_k[i] row_k[j] */
            for (int k = 0; k < D; k++) acc += (double)Lc[k * D + i] * Lc[k * D + j];
            worst = fmax(worst, fabs(acc / (sig * sig) - Cm[i * D + j]) / 2.0);
        }
    ck_assert_int_eq(sd_sde_apply_GGT(&s, t, NULL, e, M, D, D), SD_OK);
    for (int i = 0; i < D * D; i++) worst = fmax(worst, fabs(M[i] / g2 - Cm[i]) / 2.0);
    ck_assert_int_eq(sd_sde_apply_inv_cov(&s, t, M, back, D, D), SD_OK); /* g2 C -> g2/sig^2 I */
    for (int i = 0; i < D * D; i++)
        worst = fmax(worst, fabs(back[i] * sig * sig / g2 - (i % (D + 1) == 0)));
    ck_assert_int_eq(sd_sde_apply_G(&s, t, NULL, e, M, D, D), SD_OK);
    for (int i = 0; i < D * D; i++)
        worst = fmax(worst, fabs(M[i] / sqrt(g2) - Lc[i] / sig) / 2.0);
    ck_assert_msg(worst <= 1e-6, "dense operators off by %g", worst);
    double A[D * D], Sig[D * D];
    ck_assert_int_eq(sd_sde_kernel_dense(&s, t, D, A, Sig), SD_OK);
    for (int i = 0; i < D * D; i++) {
        ck_assert_double_eq_tol(A[i], (i % (D + 1) == 0 ? 1.0 : 0.0), 1e-15);
        ck_assert_double_eq_tol(Sig[i], sig * sig * Cm[i], 1e-12);
    }
    /* modes: Q diag(eig) Q^T = C */
    double ev[D], var[D];
    ck_assert_int_eq(sd_sde_modes(&s, t, D, NULL, var, NULL, ev), SD_OK);
    float qv[D * D];
    ck_assert_int_eq(sd_sde_to_modes(&s, e, qv, D, D), SD_OK); /* row j: Q^T e_j = Q[j][.] */
    for (int i = 0; i < D; i++)
        for (int j = 0; j < D; j++) {
            double acc = 0;
            for (int k = 0; k < D; k++) acc += qv[i * D + k] * (ev[k] / g2) * qv[j * D + k];
            ck_assert_double_eq_tol(acc, Cm[i * D + j], 1e-6);
        }
    /* prior log-density: N(0, smax^2 C) from the inverse by hand (det C = 0.818 - ...) */
    float xp[D] = {1.0f, -2.0f, 0.5f};
    double Ci[9], Cc[9];
    memcpy(Cc, Cm, sizeof Cc);
    double det = Cc[0] * (Cc[4] * Cc[8] - Cc[5] * Cc[7]) - Cc[1] * (Cc[3] * Cc[8] - Cc[5] * Cc[6]) +
                 Cc[2] * (Cc[3] * Cc[7] - Cc[4] * Cc[6]);
    Ci[0] = (Cc[4] * Cc[8] - Cc[5] * Cc[7]) / det, Ci[1] = (Cc[2] * Cc[7] - Cc[1] * Cc[8]) / det;
    Ci[2] = (Cc[1] * Cc[5] - Cc[2] * Cc[4]) / det, Ci[3] = Ci[1];
    Ci[4] = (Cc[0] * Cc[8] - Cc[2] * Cc[6]) / det, Ci[5] = (Cc[2] * Cc[3] - Cc[0] * Cc[5]) / det;
    Ci[6] = Ci[2], Ci[7] = Ci[5], Ci[8] = (Cc[0] * Cc[4] - Cc[1] * Cc[3]) / det;
    double q = 0;
    for (int i = 0; i < D; i++)
        for (int j = 0; j < D; j++) q += xp[i] * Ci[i * D + j] * xp[j];
    double lp = -0.5 * q / 100 - 0.5 * log(det) - 3 * log(10.0) - 1.5 * log(2 * M_PI);
    ck_assert_double_eq_tol(sd_sde_prior_logp(&s, xp, D), lp, 1e-10);
    /* spec round trip; the stored-matrix parse needs no file */
    char canon[512], json[2048];
    sd_sde_to_string(&s, canon, sizeof canon);
    ck_assert_str_eq(canon, spec);
    ck_assert_int_eq(sd_sde_cov_json(&s, json, sizeof json), SD_OK);
    sd_sde u;
    ck_assert_int_eq(sd_sde_parse_with_cov("dense:sigma_min=0.02,sigma_max=10,C=/nonexistent.json",
                                           json, &u), SD_OK);
    ck_assert_int_eq(memcmp(u.cov, s.cov, sizeof u.cov), 0);
    /* refusals: missing C, missing file, asymmetric, not positive definite, too big */
    ck_assert_int_eq(sd_sde_parse("dense:sigma_max=3", &u), SD_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "C=FILE.json"));
    ck_assert_int_eq(sd_sde_parse("dense:C=/nonexistent/c.json", &u), SD_ERR_IO);
    write_file(path, "{\"C\": [[1.0, 0.5], [0.4, 1.0]]}");
    ck_assert_int_eq(sd_sde_parse(spec, &u), SD_ERR_INVALID);
    printf("asymmetric C: %s\n", sd_error_message());
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "not symmetric"));
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "C[1][0] = 0.4"));
    ck_assert_ptr_nonnull(strstr(sd_error_message(), path));
    /* eigenvalues 3, 1, -1: the 2x2 minor 1 - 4 < 0 fails at pivot 2 */
    write_file(path, "{\"C\": [[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0]]}");
    ck_assert_int_eq(sd_sde_parse(spec, &u), SD_ERR_INVALID);
    printf("non-SPD C: %s\n", sd_error_message());
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "not positive definite"));
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "pivot 2"));
    write_file(path, "{\"C\": [[1.0, 0.0], [0.0, 0.0]]}"); /* semidefinite: pivot 2 */
    ck_assert_int_eq(sd_sde_parse(spec, &u), SD_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "pivot 2"));
    write_file(path, "{\"C\": [[1.0, 0.0], [0.0]]}");
    ck_assert_int_eq(sd_sde_parse(spec, &u), SD_ERR_FORMAT);
    write_file(path, "{\"C\": [[2.0]]}");
    ck_assert_int_eq(sd_sde_parse(spec, &u), SD_OK);
    float one = 1.0f, y[2] = {0};
    ck_assert_int_eq(sd_sde_apply_std(&u, 0.5, y, y, 1, 2), SD_ERR_INVALID); /* D = 2 != 1 */
    ck_assert_int_eq(sd_sde_bind_shape(&u, 2, 1, 1), SD_ERR_INVALID);
    ck_assert_int_eq(sd_sde_apply_std(&u, 0.0, &one, &one, 1, 1), SD_OK);
    ck_assert_float_eq_tol(one, (float)(0.02 * sqrt(2.0)), 1e-7f);
    unlink(path);
    rmdir(tmpdir);
}
END_TEST

/* A checkpoint of a dense model holds C: sampling and likelihoods from the
 * checkpoint need no JSON file. */
START_TEST(test_dense_checkpoint)
{
    make_tmpdir();
    char path[512], spec[700], ck[512];
    snprintf(path, sizeof path, "%s/c.json", tmpdir);
    snprintf(ck, sizeof ck, "%s/m.safetensors", tmpdir);
    write_file(path, "{\"C\": [[1.5, 0.25], [0.25, 0.75]]}");
    snprintf(spec, sizeof spec, "dense:sigma_max=5,C=%s", path);
    sd_sde s;
    ck_assert_int_eq(sd_sde_parse(spec, &s), SD_OK);
    sd_model *m, *back;
    ck_assert_int_eq(sd_model_new_network("mlp", NULL, 3, 1, 1, &s, &m), SD_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "2x2"));
    ck_assert_int_eq(sd_model_new_network("mlp", NULL, 2, 1, 1, &s, &m), SD_OK);
    sd_model_init(m, 1);
    ck_assert_int_eq(sd_checkpoint_save(ck, m, NULL, NULL), SD_OK);
    unlink(path);
    ck_assert_int_eq(sd_checkpoint_load_model(ck, false, &back, NULL), SD_OK);
    ck_assert_str_eq(sd_sde_name(&back->sde), "dense");
    ck_assert_int_eq(memcmp(back->sde.cov, s.cov, sizeof s.cov), 0);
    ck_assert_int_eq(memcmp(back->sde.chol, s.chol, sizeof s.chol), 0);
    sd_model_free(m);
    sd_model_free(back);
    unlink(ck);
    rmdir(tmpdir);
}
END_TEST

/* ---- state -------------------------------------------------------------------- */

/* div[G G^T] by autodiff against d/dx (g2 sech^2 x) = -2 g2 sech^2 x tanh x,
 * relative to the size g2 sech^2 x of the diagonal (float graph: 1e-5). The
 * score-free flow divergence against central differences of the analytic
 * b(x) = f - 1/2 div M = 1/2 g2 tanh sech^2 (h = 1e-5, double). */
START_TEST(test_state_family)
{
    sd_sde s;
    ck_assert_int_eq(sd_sde_parse("state:sigma_min=0.01,sigma_max=50", &s), SD_OK);
    ck_assert(sd_sde_state_dependent(&s));
    ck_assert(!sd_sde_is_isotropic(&s));
    enum { N = 141, D = 2 };
    float x[N * D], dm[N * D], drift[N * D], ggt[N * D], one[N * D], gz[N * D];
    for (int i = 0; i < N * D; i++) {
        x[i] = (float)(-7.0 + 14.0 * (i / 2) / (N - 1) + (i % 2) * 0.013);
        one[i] = 1.0f;
    }
    double worst = 0, worst_b = 0;
    for (double t = 0.0; t <= 1.0; t += 0.25) {
        double g2 = sd_sde_g2(&s, t);
        ck_assert_int_eq(sd_sde_div_GGT(&s, t, x, dm, N, D), SD_OK);
        ck_assert_int_eq(sd_sde_drift(&s, t, x, drift, N, D), SD_OK);
        ck_assert_int_eq(sd_sde_apply_GGT(&s, t, x, one, ggt, N, D), SD_OK);
        ck_assert_int_eq(sd_sde_apply_G(&s, t, x, one, gz, N, D), SD_OK);
        double cf[N];
        ck_assert_int_eq(sd_sde_flow_divergence(&s, t, x, cf, N, D), SD_OK);
        for (int p = 0; p < N; p++) {
            double acc = 0;
            for (int i = 0; i < D; i++) {
                double xi = x[p * D + i], c = cosh(xi), se2 = 1 / (c * c), th = tanh(xi);
                double exact = -2 * g2 * se2 * th;
                worst = fmax(worst, fabs(dm[p * D + i] - exact) / (g2 * se2));
                ck_assert_double_eq_tol(drift[p * D + i], -0.5 * g2 * th * se2,
                                        1e-6 * g2 * se2);
                ck_assert_double_eq_tol(ggt[p * D + i], g2 * se2, 1e-6 * g2 * se2);
                ck_assert_double_eq_tol(gz[p * D + i], sqrt(g2) / c, 1e-6 * sqrt(g2) / c);
                const double h = 1e-5;
                double bp = 0.5 * g2 * tanh(xi + h) / pow(cosh(xi + h), 2);
                double bm = 0.5 * g2 * tanh(xi - h) / pow(cosh(xi - h), 2);
                acc += (bp - bm) / (2 * h);
            }
            worst_b = fmax(worst_b, fabs(cf[p] - acc) / (g2 + 1e-30));
        }
    }
    printf("state: div[G G^T] by autodiff vs -2 g2 sech^2 tanh: worst %.2e (relative to g2 "
           "sech^2); flow divergence vs finite differences %.2e\n", worst, worst_b);
    ck_assert_msg(worst <= 1e-5, "autodiff div[G G^T] off by %g", worst);
    ck_assert_msg(worst_b <= 1e-8, "flow divergence off by %g", worst_b);
    ck_assert_int_eq(sd_sde_div_GGT(&s, 0.5, NULL, dm, 1, D), SD_ERR_INVALID);
    /* linear-only operators are refused with a clear message */
    ck_assert_int_eq(sd_sde_apply_mean(&s, 0.5, x, dm, 1, D), SD_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "state"));
    double A[4], Sg[4];
    ck_assert_int_eq(sd_sde_kernel_dense(&s, 0.5, D, A, Sg), SD_ERR_INVALID);
    ck_assert_int_eq(sd_sde_tweedie(&s, 0.5, x, x, dm, 1, D), SD_ERR_INVALID);
    /* DSM target = d/dx log p(x_t | x0) by central differences of the
     * change-of-variables density log N(sinh x; sinh x0, sigma^2) + log cosh x */
    float x0[D] = {0.7f, -1.3f}, z[D] = {0.4f, -1.1f}, xt[D], tg[D], mt[D];
    for (double t = 0.1; t < 1.0; t += 0.4) {
        double sig = sd_sde_sigma(&s, t);
        ck_assert_int_eq(sd_sde_perturb(&s, t, x0, z, xt, tg, mt, 1, D), SD_OK);
        for (int i = 0; i < D; i++) {
            double y0 = sinh((double)x0[i]), h = 1e-6 * (1 + fabs(xt[i]));
            ck_assert_double_eq_tol(sinh((double)xt[i]), y0 + sig * z[i],
                                    1e-6 * fabs(y0 + sig * z[i]) + 1e-7);
            double lp = 0, lm = 0, xi = xt[i];
            lp = -0.5 * pow((sinh(xi + h) - y0) / sig, 2) + log(cosh(xi + h));
            lm = -0.5 * pow((sinh(xi - h) - y0) / sig, 2) + log(cosh(xi - h));
            double fd = (lp - lm) / (2 * h);
            ck_assert_msg(fabs(tg[i] - fd) <= 1e-4 * fabs(fd) + 1e-3, "target %g vs %g", tg[i],
                          fd);
            ck_assert_double_eq_tol(mt[i], 1.0 / cosh(xi), 1e-6);
        }
    }
    /* prior: asinh of N(0, smax^2); sinh of the samples has std smax (n =
     * 20000: standard error smax / sqrt(2n) = 0.25, tolerance 5 of them) */
    enum { NP = 20000 };
    static float pz[NP];
    sd_rng r;
    sd_rng_init(&r, 5, SD_STREAM_SAMPLER);
    ck_assert_int_eq(sd_sde_prior_sample(&s, &r, pz, NP, 1), SD_OK);
    double ss = 0;
    for (int i = 0; i < NP; i++) ss += sinh((double)pz[i]) * sinh((double)pz[i]);
    ck_assert_double_eq_tol(sqrt(ss / NP), 50.0, 5 * 0.25);
    float xq[2] = {1.5f, -0.25f};
    double lp = 0;
    for (int i = 0; i < 2; i++) {
        double y = sinh((double)xq[i]);
        lp += -0.5 * y * y / 2500 - log(50.0) - 0.5 * log(2 * M_PI) + log(cosh((double)xq[i]));
    }
    ck_assert_double_eq_tol(sd_sde_prior_logp(&s, xq, 2), lp, 1e-10);
}
END_TEST

/* ---- the gmm under the matrix families --------------------------------------- */

/* Points on the 2^-14 grid and steps 2^-14 (log p) and 2^-10 (score) keep
 * x +- h exact in float, so the central differences of log p (double) have
 * truncation O(h^2 f''') ~ 1e-8 relative; score (float) differences carry
 * rounding 6e-8 |s| / h, so the Hessian is checked to 2e-3 relative to its
 * largest entry. Under state the gmm evaluates the mixture at y = sinh x
 * rounded to float (as the points themselves are), so log p carries a
 * rounding error |s_y| 6e-8 |y| that its differences divide by h: there the
 * log-p step is 2^-10 and the score tolerance 1e-4 (measured 2.6e-5). */
static void check_gmm_derivatives(const char *what, sd_gmm *g, const sd_sde *sde, int D)
{
    bool state = sd_sde_state_dependent(sde);
    const float h = 1.0f / 1024, hl = state ? 1.0f / 1024 : 1.0f / 16384;
    const double tol_s = state ? 1e-4 : 1e-5;
    enum { NP = 6 };
    float *x = malloc(NP * D * sizeof(float)), *s = malloc(NP * D * sizeof(float));
    float *xp = malloc(D * sizeof(float)), *sp = malloc(D * sizeof(float));
    float *sm = malloc(D * sizeof(float)), *v = malloc(2 * NP * D * sizeof(float));
    double *H = malloc(NP * D * D * sizeof(double)), *hv = malloc(2 * NP * D * sizeof(double));
    sd_rng r;
    sd_rng_init(&r, 11, SD_STREAM_DATA);
    sd_gmm_sample(g, &r, x, NULL, NP);
    for (int i = 0; i < NP * D; i++) {
        if (sd_sde_state_dependent(sde)) x[i] = (float)asinh(x[i]);
        x[i] = roundf(x[i] * 16384.0f) / 16384.0f;
    }
    sd_rng_fill_normal(&r, v, 2 * NP * D, 0, 1);
    double worst_s = 0, worst_h = 0, worst_hv = 0;
    for (double t = 0.2; t < 1.0; t += 0.3) {
        ck_assert_int_eq(sd_gmm_score(g, sde, t, x, s, NP), SD_OK);
        float *s2 = malloc(NP * D * sizeof(float));
        ck_assert_int_eq(sd_gmm_score_hessian(g, sde, t, x, s2, H, NP), SD_OK);
        ck_assert_int_eq(sd_gmm_score_hvp(g, sde, t, x, NP, v, 2, NULL, hv), SD_OK);
        for (int p = 0; p < NP; p++) {
            double smax = 0, hmax = 0;
            for (int i = 0; i < D; i++) smax = fmax(smax, fabs(s[p * D + i]));
            for (int i = 0; i < D * D; i++) hmax = fmax(hmax, fabs(H[(size_t)p * D * D + i]));
            for (int i = 0; i < D; i++) {
                ck_assert_float_eq_tol(s2[p * D + i], s[p * D + i], 1e-6f * (float)smax);
                memcpy(xp, x + p * D, D * sizeof(float));
                double lp, lm;
                xp[i] += hl;
                ck_assert_int_eq(sd_gmm_logp(g, sde, t, xp, &lp, 1), SD_OK);
                xp[i] -= 2 * hl;
                ck_assert_int_eq(sd_gmm_logp(g, sde, t, xp, &lm, 1), SD_OK);
                worst_s = fmax(worst_s, fabs((lp - lm) / (2 * hl) - s[p * D + i]) / (smax + 1));
                xp[i] = x[p * D + i] + h;
                ck_assert_int_eq(sd_gmm_score(g, sde, t, xp, sp, 1), SD_OK);
                xp[i] -= 2 * h;
                ck_assert_int_eq(sd_gmm_score(g, sde, t, xp, sm, 1), SD_OK);
                for (int j = 0; j < D; j++) {
                    double fd = ((double)sp[j] - sm[j]) / (2 * h);
                    worst_h = fmax(worst_h, fabs(fd - H[((size_t)p * D + j) * D + i]) / (hmax + 1));
                }
            }
            for (int m = 0; m < 2; m++)
                for (int i = 0; i < D; i++) {
                    double acc = 0;
                    for (int j = 0; j < D; j++)
                        acc += H[((size_t)p * D + i) * D + j] * v[((size_t)p * 2 + m) * D + j];
                    worst_hv = fmax(worst_hv,
                                    fabs(acc - hv[((size_t)p * 2 + m) * D + i]) / (hmax + 1));
                }
        }
        free(s2);
    }
    printf("gmm under %-6s: score vs d log p %.2e, Hessian vs d score %.2e, hvp %.2e\n", what,
           worst_s, worst_h, worst_hv);
    ck_assert_msg(worst_s <= tol_s, "%s: score vs gradient of log p: %g", what, worst_s);
    ck_assert_msg(worst_h <= 2e-3, "%s: Hessian vs Jacobian of the score: %g", what, worst_h);
    ck_assert_msg(worst_hv <= 1e-6, "%s: Hessian-vector products: %g", what, worst_hv);
    free(x);
    free(s);
    free(xp);
    free(sp);
    free(sm);
    free(v);
    free(H);
    free(hv);
}

START_TEST(test_gmm_under_matrix_families)
{
    make_tmpdir();
    char path[512], spec[700];
    snprintf(path, sizeof path, "%s/c.json", tmpdir);
    write_file(path, "{\"C\": [[1.0, 0.3, 0.0], [0.3, 0.5, 0.1], [0.0, 0.1, 0.8]]}");
    const double w3[3] = {0.5, 0.3, 0.2};
    mixture m9 = mixture_random("mix9", 3, 9, w3, 1.5, 10.0, 5);
    mixture m3 = mixture_random("mix3", 3, 3, w3, 1.5, 10.0, 6);
    mixture m2 = mixture_ring8();
    sd_gmm *g9 = mixture_gmm(&m9), *g3 = mixture_gmm(&m3), *g2 = mixture_gmm(&m2);
    ck_assert(g9 && g3 && g2);
    sd_sde dct, dense, state;
    ck_assert_int_eq(sd_sde_parse("dct:sigma_min=0.01,sigma_max=5,blur_max=1.5,shape=1x3x3",
                                  &dct), SD_OK);
    snprintf(spec, sizeof spec, "dense:sigma_min=0.01,sigma_max=5,C=%s", path);
    ck_assert_int_eq(sd_sde_parse(spec, &dense), SD_OK);
    ck_assert_int_eq(sd_sde_parse("state:sigma_min=0.01,sigma_max=5", &state), SD_OK);
    check_gmm_derivatives("dct", g9, &dct, 9);
    check_gmm_derivatives("dense", g3, &dense, 3);
    check_gmm_derivatives("state", g2, &state, 2);
    /* the model wrapper takes dct's image shape; without one it refuses */
    sd_model *mod;
    ck_assert_int_eq(sd_model_new_gmm(g9, &dct, &mod), SD_OK);
    ck_assert_int_eq(mod->H, 3);
    ck_assert_int_eq(mod->C, 1);
    sd_sde noshape;
    ck_assert_int_eq(sd_sde_parse("dct", &noshape), SD_OK);
    sd_model *bad;
    ck_assert_int_eq(sd_model_new_gmm(g3, &noshape, &bad), SD_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "shape="));
    ck_assert_int_eq(sd_model_new_gmm(g2, &dense, &bad), SD_ERR_INVALID); /* 2-D vs 3x3 C */
    sd_model_free(mod); /* owns g9 */
    sd_gmm_free(g3);
    sd_gmm_free(g2);
    mixture_free(&m9);
    mixture_free(&m3);
    mixture_free(&m2);
    unlink(path);
    rmdir(tmpdir);
}
END_TEST

int main(void)
{
    Suite *su = suite_create("matrix_sde");
    TCase *tc = tcase_create("matrix_sde");
    tcase_set_timeout(tc, 300);
    tcase_add_test(tc, test_dct_operators);
    tcase_add_test(tc, test_dense_family);
    tcase_add_test(tc, test_dense_checkpoint);
    tcase_add_test(tc, test_state_family);
    tcase_add_test(tc, test_gmm_under_matrix_families);
    tcase_add_test(tc, test_dct_kernel_monte_carlo);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

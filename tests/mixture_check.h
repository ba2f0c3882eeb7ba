/* mixture_check.h - Gaussian mixtures with exact scores under any linear
 * noise family (and the state family), and the statistics that compare
 * samples with them. Shared by the sampler suites (test_samplers.c,
 * test_matrix_sde.c, test_matrix_samplers.c).
 *
 * fastmix evaluates the same exact score as models/gmm.c (checked against it
 * in test_samplers.c and test_matrix_samplers.c) but with the precisions
 * P_k = S_k^{-1} of the perturbed components S_k = A C_k A^T + Sigma formed
 * once per call and one matrix product per component and chunk of points,
 * which is what makes 10^7 point evaluations per sampler affordable. Two ways
 * to form P_k: fastmix_new, any family, from sd_sde_kernel_dense and a
 * Cholesky inverse; fastmix_new_iso, the isotropic families only (A = a I,
 * Sigma = s^2 I), from the eigen-decomposition C_k = U diag(lambda) U^T as
 * P_k = U diag(1 / (a^2 lambda + s^2)) U^T. Both are exact; they differ in
 * float rounding, so each suite keeps the one its figures were measured with.
 * Under the state family the mixture describes y = sinh x and the score
 * follows by the change of variables (gmm.h).
 *
 * Statistics (tests/test_samplers.c's file comment derives the tolerances):
 * soft-assignment moments with the clean responsibilities r_k(x), unbiased on
 * exact samples; an energy-distance two-sample test (Szekely & Rizzo 2004)
 * with 199 permutations.
 */
#ifndef SD_TEST_MIXTURE_CHECK_H
#define SD_TEST_MIXTURE_CHECK_H

#include <stddef.h>
#include <stdint.h>

#include "sd/gmm.h"
#include "test_util.h"
#include "sd/sde.h"

typedef struct mixture {
    const char *name;
    int K, D;
    double *w, *mu, *cov; /* [K], [K, D], [K, D, D] */
} mixture;

void mixture_free(mixture *m);
/* 8 components on a circle of radius 4 with tangential anisotropic
 * covariances (test_samplers.c's ring8). */
mixture mixture_ring8(void);
/* K components in D dimensions: means mean_scale * N(0, I), covariances
 * R diag(lambda) R^T with lambda geometric from 1 down to 1/cond and random
 * rotations R; weights w (K values). */
mixture mixture_random(const char *name, int K, int D, const double *w, double mean_scale,
                       double cond, uint64_t seed);
/* Shift the means so that the mixture's mean is 0 (see test_matrix_samplers.c). */
void mixture_center(mixture *m);
/* test_samplers.c's aniso16: mixture_random("aniso16", 3, 16, {0.45, 0.30,
 * 0.25}, 2.0, 20.0, 2024), except that each covariance is mirrored from its
 * upper triangle (mixture_random: lower), as that suite always built it; the
 * two differ in the last bits, and each suite's samples stay bit-for-bit. */
mixture mixture_aniso16(void);
/* NULL if sd_gmm_new fails. */
sd_gmm *mixture_gmm(const mixture *m);
/* sqrt(tr Cov / D) of the whole mixture. */
double mixture_scale(const mixture *m);

typedef struct fastmix fastmix;
/* NULL if out of memory. */
fastmix *fastmix_new(const mixture *m, const sd_sde *sde);
/* NULL (with a message) unless sd_sde_is_isotropic(sde), or if an
 * eigen-decomposition or allocation fails. */
fastmix *fastmix_new_iso(const mixture *m, const sd_sde *sde);
/* Calls with n >= par_min points split their chunks over the OpenMP threads
 * (default 8192; the result does not depend on it). */
void fastmix_set_par_min(fastmix *f, size_t par_min);
void fastmix_free(fastmix *f);
/* sd_score_fn: exact score of p_t at x [n, D] into out. */
sd_status fastmix_score(void *ctx, const float *x, size_t n, double t, float *out);

typedef struct moments {
    double w_err, mean_err, cov_err, cov_noise; /* worst over components */
} moments;
/* Soft-assignment moments of x [n, D] (mixture space) against the mixture. */
void compare_moments(const mixture *mx, const float *x, size_t n, moments *out);
/* p-value of the energy-distance test of x against y (m points each). */
double energy_test(const float *x, const float *y, size_t m, int D, uint64_t seed);

#endif

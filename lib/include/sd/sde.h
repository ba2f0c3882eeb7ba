/* sde.h - noise families: the forward processes that diffusion models invert.
 *
 * Every family is a linear SDE dx = F(t) x dt + G(t) dw (Song et al. 2021,
 * "Score-Based Generative Modeling through SDEs", eq. 5) whose perturbation
 * kernel is Gaussian, x_t | x_0 = N(A(t) x_0, Sigma(t)) (their App. B), with
 * a Gaussian prior at T = 1. Drift and diffusion are linear OPERATORS applied
 * through functions (apply A, Sigma^{1/2}, Sigma^{-1}, F x, G z, G G^T v), never
 * exposed as scalars, so families that are diagonal in another basis or dense
 * plug in without changing training or samplers.
 *
 *   ncsn  discrete geometric ladder sigma_1 > ... > sigma_L (Song & Ermon
 *         2019), keys sigma_min (0.01), sigma_max (50), L (10). Level i sits at
 *         time t_i = 1 - (i-1)/(L-1) of the matching VE process, so the
 *         operator view below is VE's.
 *   ve    sigma(t) = sigma_min (sigma_max/sigma_min)^t, A = I, Sigma = sigma(t)^2 I,
 *         F = 0, G = sigma(t) sqrt(2 log(sigma_max/sigma_min)) I, prior N(0, sigma_max^2 I).
 *   vp    beta(t) = beta_min + t (beta_max - beta_min) (0.1, 20), A = alpha(t) I with
 *         log alpha = -t^2 (beta_max-beta_min)/4 - t beta_min/2, Sigma = (1 - alpha^2) I,
 *         F = -beta/2 I, G = sqrt(beta) I, prior N(0, I).
 *   subvp same A and F as vp, Sigma = (1 - alpha^2)^2 I,
 *         G = sqrt(beta (1 - alpha^4)) I (Song et al. eq. 29), prior N(0, I).
 *
 * Spec strings: "NAME[:key=value,...]", e.g. "ve:sigma_min=0.01,sigma_max=50".
 *
 * Data layout: a batch of n points of dimension D = C*H*W, row-major [n, D];
 * one time t for the whole batch (callers loop for per-sample times).
 * Ownership: sd_sde_parse allocates; sd_sde_free releases. All functions
 * other than parse are pure and thread-safe.
 */
#ifndef SD_SDE_H
#define SD_SDE_H

#include <stdbool.h>
#include <stddef.h>

#include "sd/status.h"

typedef struct sd_rng sd_rng;

typedef enum sd_sde_kind {
    SD_SDE_NCSN,
    SD_SDE_VE,
    SD_SDE_VP,
    SD_SDE_SUBVP
} sd_sde_kind;

typedef struct sd_sde {
    sd_sde_kind kind;
    double sigma_min, sigma_max; /* ncsn, ve */
    int levels;                  /* ncsn */
    double beta_min, beta_max;   /* vp, subvp */
} sd_sde;

/* Parse a spec; unknown names or keys, bad numbers and inconsistent values
 * (sigma_min >= sigma_max, L < 2, ...) are SD_ERR_INVALID with a message. */
sd_status sd_sde_parse(const char *spec, sd_sde *out);
/* Canonical spec with every key ("ve:sigma_min=0.01,sigma_max=50"). */
void sd_sde_to_string(const sd_sde *s, char *buf, size_t len);
const char *sd_sde_name(const sd_sde *s);

/* ---- scalar summaries ---------------------------------------------------- */
/* Marginal standard deviation of the kernel at t (the U-Net's output divisor
 * and the default DSM weight's square root). */
double sd_sde_sigma(const sd_sde *s, double t);
/* The network's conditioning input: log sigma(t) for ncsn/ve, t for vp/subvp
 * (reference-model.md). */
double sd_sde_cond(const sd_sde *s, double t);
/* Mean coefficient a(t) of the isotropic families (A = a I). */
double sd_sde_mean_coef(const sd_sde *s, double t);
/* g(t)^2 for likelihood weighting (isotropic families). */
double sd_sde_g2(const sd_sde *s, double t);
/* Smallest time the family is used at by default (1e-5 for ve/vp/subvp as in
 * Song et al.; 0 for ncsn whose last level is sigma_min). */
double sd_sde_default_eps(const sd_sde *s);
/* ncsn: the L levels, t of level i (0-based, i = 0 is sigma_max). */
int sd_sde_levels(const sd_sde *s);
double sd_sde_level_time(const sd_sde *s, int i);

/* ---- operators on a batch x [n, D] at time t ---------------------------- */
void sd_sde_apply_mean(const sd_sde *s, double t, const float *x0, float *out, size_t n, size_t D);
void sd_sde_apply_std(const sd_sde *s, double t, const float *z, float *out, size_t n, size_t D);
void sd_sde_apply_inv_cov(const sd_sde *s, double t, const float *v, float *out, size_t n, size_t D);
void sd_sde_drift(const sd_sde *s, double t, const float *x, float *out, size_t n, size_t D);
void sd_sde_apply_G(const sd_sde *s, double t, const float *z, float *out, size_t n, size_t D);
void sd_sde_apply_GGT(const sd_sde *s, double t, const float *v, float *out, size_t n, size_t D);
/* Divergence of the drift (trace of F(t)) for D dimensions. */
double sd_sde_drift_divergence(const sd_sde *s, double t, size_t D);
/* Prior at T = 1. */
void sd_sde_prior_sample(const sd_sde *s, sd_rng *rng, float *x, size_t n, size_t D);
double sd_sde_prior_logp(const sd_sde *s, const float *x, size_t D);

/* Dense D x D kernel matrices A(t) and Sigma(t) (row-major, double) for
 * analytic models in low dimension. */
sd_status sd_sde_kernel_dense(const sd_sde *s, double t, size_t D, double *A, double *Sigma);

#endif

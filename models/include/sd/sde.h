/* sde.h - noise families: the forward processes that diffusion models invert.
 *
 * A family is an SDE dx = f(x, t) dt + G(x, t) dw (Song et al. 2021,
 * "Score-Based Generative Modeling through SDEs", eq. 5 and App. D) with a
 * prior at T = 1. All but `state` are linear, dx = F(t) x dt + G(t) dw, with
 * the Gaussian perturbation kernel x_t | x_0 = N(A(t) x_0, Sigma(t)) (their
 * App. B). Drift and diffusion are OPERATORS applied through functions (apply
 * A, Sigma^{1/2}, Sigma^{-1}, F x, G z, G G^T v), never exposed as scalars to
 * the samplers, so families that are diagonal in another basis or dense plug
 * in without changing training or samplers.
 *
 * Isotropic families (A, Sigma, F, G multiples of I):
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
 * Matrix-valued families (all on VE's schedule sigma(t) above, g2(t) =
 * d sigma^2/dt = 2 sigma^2 log(sigma_max/sigma_min); keys sigma_min, sigma_max):
 *   dct   images, diagonal in the orthonormal 2-D DCT basis B of each channel
 *         plane (FFTW REDFT10/01, lib/fft/fft_plan.c): blurring diffusion
 *         (Hoogeboom & Salimans 2022) / heat dissipation (Rissanen et al. 2023)
 *         with VE noise. Frequency k = (k1, k2) of an H x W plane has the
 *         Neumann Laplacian eigenvalue lambda_k = pi^2 (k1^2/H^2 + k2^2/W^2);
 *         the heat equation runs for tau(t) = blur_max^2 t^2 / 2 (a Gaussian
 *         blur of std blur_max t pixels). Per frequency:
 *             a_k(t) = exp(-lambda_k tau(t)),       f_k(t) = -lambda_k blur_max^2 t,
 *             Sigma = sigma(t)^2 I (white noise),   g_k(t)^2 = d sigma^2/dt - 2 f_k sigma^2
 *                                                            = sigma^2 (2 log(smax/smin) + 2 lambda_k blur_max^2 t),
 *         A = B diag(a_k) B^T, F = B diag(f_k) B^T, G = B diag(g_k) B^T; the
 *         last line is what makes the kernel exact: d(sigma^2 / a_k^2)/dt =
 *         g_k^2 / a_k^2 (Saerkkae & Solin 2019, eq. 5.51). Keys blur_max (2)
 *         and shape=CxHxW (bound from the data when absent; an analytic gmm,
 *         whose points are flat, needs it). Prior N(0, sigma_max^2 I).
 *   dense low-dimensional data (D <= SD_SDE_DENSE_MAX), a user covariance C:
 *         dx = sqrt(g2(t)) L dw, L L^T = C (Cholesky, LAPACKE_dpotrf), so
 *         A = I, Sigma = sigma(t)^2 C, F = 0, G G^T = g2(t) C, prior
 *         N(0, sigma_max^2 C). Key C=FILE.json with {"C": [[..], ..]}; a C that
 *         is not symmetric or not positive definite is refused (the message
 *         names the asymmetric entry or the failing pivot).
 *   state a state-dependent G(x, t) (low-dimensional data): the image of a ve
 *         diffusion y under the fixed elementwise map x = h(y) = asinh(y)
 *         (h^-1 = sinh stays finite at sigma_max = 50). By Ito's lemma
 *             dx = 1/2 h''(y) g2 dt + h'(y) sqrt(g2) dw,  h'(y) = sech x,
 *             h''(y) = -tanh x sech^2 x,
 *         so f(x, t) = -1/2 g2 tanh x sech^2 x and G = diag(sqrt(g2) sech x).
 *         The data are x_0 = h(y_0); densities follow by change of variables,
 *         p_t(x) = p^ve_t(sinh x) prod_i cosh x_i. Not linear: no A, Sigma
 *         (apply_mean/std/inv_cov and kernel_dense refuse it); DSM uses
 *         sd_sde_perturb. Prior: asinh of N(0, sigma_max^2 I).
 *
 * Time zero (all VE-schedule families, as ve itself): sigma(0) = sigma_min, so
 * the kernel at t is exactly the solution of the SDE started at t = 0 from
 * x(0) ~ N(x_0, sigma_min^2 I) (dense: N(x_0, sigma_min^2 C); state: y(0) ~
 * N(y_0, sigma_min^2 I)), which is what "data" at t = 0 means for VE.
 *
 * Spec strings: "NAME[:key=value,...]", e.g. "ve:sigma_min=0.01,sigma_max=50",
 * "dct:blur_max=3,shape=1x28x28", "dense:sigma_max=20,C=cov.json".
 *
 * Data layout: a batch of n points of dimension D = C*H*W, row-major [n, D];
 * one time t for the whole batch (callers loop for per-sample times).
 * Families are tables of operators (sd/sde_family.h; one file each under
 * models/sde/) in a registry that parse walks: callers test capability
 * flags (sd_sde_has) and call the functions below, never the family's name.
 *
 * An sd_sde is a plain value (copy it freely; no allocation, nothing to
 * free): dense keeps C, its Cholesky factor and eigenvectors inline, which is
 * why its dimension is capped. Every function other than parse and
 * sd_sde_register is pure and thread-safe (parse only reads the registry).
 */
#ifndef SD_SDE_H
#define SD_SDE_H

#include <stdbool.h>
#include <stddef.h>

#include "sd/status.h"

typedef struct sd_rng sd_rng;

/* A family's table of operators and capability flags (sd/sde_family.h,
 * which also tells how to add a family). */
typedef struct sd_sde_family sd_sde_family;

/* Capability flags of a family; test them with sd_sde_has, never the name. */
enum {
    /* A, Sigma, F, G multiples of I: the exact scalar transitions of reverse
     * diffusion, ancestral sampling, the ELBO and inpainting exist (ncsn, ve,
     * vp, subvp). */
    SD_SDE_ISOTROPIC = 1u << 0,
    /* Discrete noise levels (ncsn): samplers walk sd_sde_levels / level_time
     * instead of a time grid, and the smallest time is 0. */
    SD_SDE_DISCRETE_LEVELS = 1u << 1,
    /* G depends on x (state): no Gaussian kernel, no Tweedie step, modes or
     * dense kernel; the flow carries div[G G^T]. */
    SD_SDE_STATE_DEPENDENT = 1u << 2,
    /* The operators need the data's C x H x W (dct): bound by
     * sd_sde_bind_shape or a shape= key. */
    SD_SDE_NEEDS_SHAPE = 1u << 3,
    /* The prior is N(0, I)-scaled and the data are best centred in [-1, 1]
     * (vp, subvp): the "auto" image transform is "centered", not "unit". */
    SD_SDE_CENTERED_DATA = 1u << 4,
    /* The network is conditioned on t rather than log sigma(t) (vp, subvp). */
    SD_SDE_COND_TIME = 1u << 5,
    /* sigma(0) = 0, the kernel is degenerate at t = 0 (vp, subvp): the
     * smallest time of Langevin and of the likelihood must be > 0. */
    SD_SDE_DEGENERATE_AT_ZERO = 1u << 6,
    /* A U-Net under this family predicts through Tweedie's formula in the
     * family's modes (dct; the checkpoint's score_param "dct-tweedie"). */
    SD_SDE_TWEEDIE_SCORE = 1u << 7,
    /* sigma_max (and, with discrete levels, L) follow NCSNv2's rules from the
     * data when the spec leaves them out (ncsn, ve). */
    SD_SDE_NCSNV2_SIGMA = 1u << 8,
    /* A matrix is part of the family (dense): checkpoints store it as
     * "sde_cov" (sd_sde_cov_json) and parse it back with
     * sd_sde_parse_with_cov. */
    SD_SDE_STORED_COV = 1u << 9,
};

/* Largest dimension of the dense family (its matrices live in the struct). */
#define SD_SDE_DENSE_MAX 16
/* Longest C=FILE path a dense spec may carry. */
#define SD_SDE_PATH_MAX 192

typedef struct sd_sde {
    const sd_sde_family *family; /* set by parse; never NULL in a parsed value */
    double sigma_min, sigma_max; /* ncsn, ve, dct, dense, state */
    int levels;                  /* ncsn */
    double beta_min, beta_max;   /* vp, subvp */
    /* dct */
    double blur_max;
    int shape_c, shape_h, shape_w; /* 0 until bound (spec key shape= or the data) */
    /* dense: C [dim, dim] row-major, its lower Cholesky factor, and C = Q diag(eig) Q^T */
    int dim;
    double cov[SD_SDE_DENSE_MAX * SD_SDE_DENSE_MAX];
    double chol[SD_SDE_DENSE_MAX * SD_SDE_DENSE_MAX];
    double eigvec[SD_SDE_DENSE_MAX * SD_SDE_DENSE_MAX]; /* Q, eigenvectors in columns */
    double eigval[SD_SDE_DENSE_MAX];
    char cov_path[SD_SDE_PATH_MAX]; /* as given in the spec */
    /* Free for a family's own numbers (a family registered outside the
     * library, e.g. tests/test_sde_family.c's per-dimension scales). */
    int n_extra;
    double extra[SD_SDE_DENSE_MAX];
} sd_sde;

/* Parse a spec; unknown names or keys, bad numbers and inconsistent values
 * (sigma_min >= sigma_max, L < 2, ...) are SD_ERR_INVALID with a message.
 * dense reads its C=FILE.json (SD_ERR_IO / SD_ERR_FORMAT name the file). */
sd_status sd_sde_parse(const char *spec, sd_sde *out);
/* As sd_sde_parse, but a dense family takes C from the JSON text cov_json
 * ({"C": [[..], ..]}, e.g. stored in a checkpoint) instead of its file;
 * cov_json == NULL behaves as sd_sde_parse. */
sd_status sd_sde_parse_with_cov(const char *spec, const char *cov_json, sd_sde *out);
/* Set a dense family's covariance (dim x dim, row-major): checks symmetry
 * (relative 1e-12) and positive definiteness (dpotrf), factorises and
 * eigendecomposes. Messages name the asymmetric entry or the failing pivot. */
sd_status sd_sde_set_cov(sd_sde *s, int dim, const double *C);
/* {"C": [[..], ..]} of a dense family into buf (SD_ERR_INVALID if too small). */
sd_status sd_sde_cov_json(const sd_sde *s, char *buf, size_t len);
/* Canonical spec with every key ("ve:sigma_min=0.01,sigma_max=50"). */
void sd_sde_to_string(const sd_sde *s, char *buf, size_t len);
const char *sd_sde_name(const sd_sde *s);
/* Whether the family has every capability in flags (SD_SDE_* above). */
bool sd_sde_has(const sd_sde *s, unsigned flags);
/* sd_sde_has(s, SD_SDE_ISOTROPIC). */
bool sd_sde_is_isotropic(const sd_sde *s);
/* sd_sde_has(s, SD_SDE_STATE_DEPENDENT): the probability flow and the
 * reverse SDE carry a div[G G^T] term and the operators G, G G^T need x. */
bool sd_sde_state_dependent(const sd_sde *s);
/* A state-dependent family that is the image x = h(y) of a linear family's
 * diffusion y (state: asinh of ve): that linear family into *out (densities
 * follow by change of variables). SD_ERR_INVALID for other families. */
sd_status sd_sde_latent(const sd_sde *s, sd_sde *out);
/* Add a family to the registry that sd_sde_parse walks (after the built-in
 * ones), by its table; see sd/sde_family.h. Not thread-safe: call it before
 * any parse, e.g. at the start of main. SD_ERR_INVALID for a table without
 * a name or a required operator, or a name already registered;
 * SD_ERR_NOMEM when the registry is full (SD_SDE_MAX_FAMILIES). */
sd_status sd_sde_register(const sd_sde_family *f);
/* Bind a family to the data shape: dct takes C x H x W (or checks a shape
 * given in its spec), dense checks D == its dimension; others accept any.
 * SD_ERR_INVALID with a message on a mismatch. */
sd_status sd_sde_bind_shape(sd_sde *s, int C, int H, int W);

/* ---- scalar summaries ---------------------------------------------------- */
/* Marginal standard deviation of the kernel at t (the U-Net's output divisor
 * and the default DSM weight's square root). dct, dense and state: VE's
 * sigma(t) (dct's white noise; dense's scale of C; state's y-space noise). */
double sd_sde_sigma(const sd_sde *s, double t);
/* The network's conditioning input: log sigma(t), or t for the families
 * with SD_SDE_COND_TIME (vp, subvp; reference-model.md). */
double sd_sde_cond(const sd_sde *s, double t);
/* Mean coefficient a(t) of the isotropic families (A = a I); 1 for dct (its
 * DC coefficient), dense and state. */
double sd_sde_mean_coef(const sd_sde *s, double t);
/* g(t)^2 for likelihood weighting (isotropic families; VE's for the others). */
double sd_sde_g2(const sd_sde *s, double t);
/* Smallest time the family is used at by default (1e-5 for the continuous
 * families as in Song et al.; 0 with SD_SDE_DISCRETE_LEVELS: ncsn, whose last
 * level is sigma_min). */
double sd_sde_default_eps(const sd_sde *s);
/* Families with SD_SDE_DISCRETE_LEVELS (ncsn): the L levels (0 for the
 * others), t of level i (0-based, i = 0 is sigma_max). */
int sd_sde_levels(const sd_sde *s);
double sd_sde_level_time(const sd_sde *s, int i);

/* ---- operators on a batch [n, D] at time t -------------------------------
 * out may equal the input (in place). x is the state at which an
 * x-dependent operator is evaluated ([n, D], one row per row of the input);
 * it may be NULL unless sd_sde_state_dependent. Errors: SD_ERR_INVALID (the
 * operator does not exist for the family, or D does not fit its shape),
 * SD_ERR_NOMEM (FFTW planning, autodiff graph). */
sd_status sd_sde_apply_mean(const sd_sde *s, double t, const float *x0, float *out, size_t n,
                            size_t D);
sd_status sd_sde_apply_std(const sd_sde *s, double t, const float *z, float *out, size_t n,
                           size_t D);
sd_status sd_sde_apply_inv_cov(const sd_sde *s, double t, const float *v, float *out, size_t n,
                               size_t D);
sd_status sd_sde_drift(const sd_sde *s, double t, const float *x, float *out, size_t n, size_t D);
sd_status sd_sde_apply_G(const sd_sde *s, double t, const float *x, const float *z, float *out,
                         size_t n, size_t D);
sd_status sd_sde_apply_GGT(const sd_sde *s, double t, const float *x, const float *v, float *out,
                           size_t n, size_t D);
/* div[G G^T](x), the vector with components sum_j d(G G^T)_ij / dx_j (Song
 * et al. 2021, App. D, eq. 37): zero for linear families; for state computed
 * by reverse-mode autodiff (lib graph ops) of the diagonal of G G^T(x). */
sd_status sd_sde_div_GGT(const sd_sde *s, double t, const float *x, float *out, size_t n,
                         size_t D);
/* Divergence of the score-free part of the probability flow,
 * div[f - 1/2 div(G G^T)](x) per point (out [n], double): tr F(t) for linear
 * families; for state the closed form 1/2 g2 sum_i (sech^4 - 2 tanh^2 sech^2)(x_i). */
sd_status sd_sde_flow_divergence(const sd_sde *s, double t, const float *x, double *out,
                                 size_t n, size_t D);
/* Tweedie's posterior mean E[x_0 | x_t] = A^-1 (x + Sigma s) (Efron 2011) for
 * linear families; SD_ERR_INVALID for state. */
sd_status sd_sde_tweedie(const sd_sde *s, double t, const float *x, const float *score,
                         float *out, size_t n, size_t D);
/* One draw of the perturbation kernel for denoising score matching: from
 * clean x0 and z ~ N(0, I), xt ~ p(x_t | x_0) and target = grad log p(x_t |
 * x_0) (linear: A x0 + Sigma^{1/2} z and -Sigma^{-1} Sigma^{1/2} z). metric
 * (may be NULL) receives per-coordinate factors m with which the loss
 * lambda(t) ||m (s - target)||^2 stays balanced across t: 1 for linear
 * families, h'(y) = sech x_t for state (the y-space variance weighting, since
 * s_y - target_y = h'(y) (s_x - target_x)). target may be NULL. */
sd_status sd_sde_perturb(const sd_sde *s, double t, const float *x0, const float *z, float *xt,
                         float *target, float *metric, size_t n, size_t D);
/* Trace of F(t) for D dimensions (linear families; NAN for state). */
double sd_sde_drift_divergence(const sd_sde *s, double t, size_t D);

/* ---- modes of linear families ---------------------------------------------
 * Every linear family is diagonal in an orthonormal basis B (identity for
 * the isotropic ones, the 2-D DCT for dct, the eigenvectors of C for dense):
 * A = B diag(a) B^T, Sigma = B diag(var) B^T, G G^T = B diag(gg) B^T, F =
 * B diag(f) B^T. sd_sde_modes fills the D per-mode values at t (each array
 * may be NULL); sd_sde_to_modes computes B^T v for n rows. SD_ERR_INVALID for
 * state. */
sd_status sd_sde_modes(const sd_sde *s, double t, size_t D, double *a, double *var, double *f,
                       double *gg);
sd_status sd_sde_to_modes(const sd_sde *s, const float *v, float *out, size_t n, size_t D);

/* Prior at T = 1. */
sd_status sd_sde_prior_sample(const sd_sde *s, sd_rng *rng, float *x, size_t n, size_t D);
double sd_sde_prior_logp(const sd_sde *s, const float *x, size_t D);

/* Dense D x D kernel matrices A(t) and Sigma(t) (row-major, double) for
 * analytic models in low dimension (linear families; SD_ERR_INVALID for
 * state, whose kernel is not Gaussian in x). */
sd_status sd_sde_kernel_dense(const sd_sde *s, double t, size_t D, double *A, double *Sigma);

/* The state family's map x = h(y) = asinh(y) and its inverse, elementwise. */
double sd_sde_state_h(double y);
double sd_sde_state_hinv(double x);

#endif

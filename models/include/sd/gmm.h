/* gmm.h - analytic score model: a Gaussian mixture with full covariances.
 *
 * For data x_0 ~ sum_k w_k N(mu_k, C_k) and a noise family with kernel
 * x_t | x_0 = N(A(t) x_0, Sigma(t)), the perturbed marginal is again a mixture,
 *     p_t(x) = sum_k w_k N(x; A mu_k, A C_k A^T + Sigma(t)),
 * so its score and log-density are known exactly:
 *     grad log p_t(x) = -sum_k r_k(x) S_k^{-1} (x - A mu_k),  S_k = A C_k A^T + Sigma,
 * with responsibilities r_k = softmax_k(log w_k + log N(x; A mu_k, S_k)).
 * This is the ground truth for sampler and likelihood tests. Every linear
 * family (sde.h: the isotropic ones, dct, dense) enters through
 * sd_sde_kernel_dense. Under the state family the mixture describes y_0 and
 * the data are x_0 = asinh(y_0); scores, densities and Hessians follow by the
 * change of variables y = sinh x (gmm.c), and sd_gmm_sample still returns y_0.
 *
 * JSON: {"weights": [..K], "means": [[..D], ..K], "covs": [[[..D]..D], ..K]}.
 * Weights must be positive and sum to 1 (within 1e-6 relative), covariances
 * symmetric positive definite.
 *
 * Threading: a gmm caches the factorised components of the last time t, so one
 * sd_gmm must not be used from two threads at once.
 */
#ifndef SD_GMM_H
#define SD_GMM_H

#include <stddef.h>

#include "sd/sde.h"
#include "sd/status.h"

typedef struct sd_rng sd_rng;
typedef struct sd_gmm sd_gmm;

sd_status sd_gmm_new(int K, int D, const double *weights, const double *means, const double *covs,
                     sd_gmm **out);
/* Load from a JSON file (messages name the file and the problem). */
sd_status sd_gmm_load_json(const char *path, sd_gmm **out);
/* Parse JSON text; `what` names the source in messages. */
sd_status sd_gmm_parse_json(const char *text, const char *what, sd_gmm **out);
void sd_gmm_free(sd_gmm *g);
int sd_gmm_dim(const sd_gmm *g);
int sd_gmm_components(const sd_gmm *g);
const double *sd_gmm_weights(const sd_gmm *g);
const double *sd_gmm_means(const sd_gmm *g); /* [K, D] */
const double *sd_gmm_covs(const sd_gmm *g);  /* [K, D, D] */

/* Exact score of p_t at n points x [n, D] into score [n, D]. */
sd_status sd_gmm_score(sd_gmm *g, const sd_sde *sde, double t, const float *x, float *score,
                       size_t n);
/* Exact log p_t(x) for n points. */
sd_status sd_gmm_logp(sd_gmm *g, const sd_sde *sde, double t, const float *x, double *logp,
                      size_t n);
/* Hessian of log p_t (= the Jacobian of the score, symmetric) at n points:
 * H [n, D, D] in double; score [n, D] (may be NULL) receives the score as
 * sd_gmm_score would. Cost O(K D^2) per point plus O(K D^3) once per t. */
sd_status sd_gmm_score_hessian(sd_gmm *g, const sd_sde *sde, double t, const float *x,
                               float *score, double *H, size_t n);
/* Hessian-vector products for m vectors per point: v [n, m, D] -> hv [n, m, D]
 * (double), hv[p][j] = H(x_p) v[p][j]; score as above (may be NULL). Cost
 * O(K D^2) per product, no D x D matrix formed (Hutchinson probes). */
sd_status sd_gmm_score_hvp(sd_gmm *g, const sd_sde *sde, double t, const float *x, size_t n,
                           const float *v, int m, float *score, double *hv);
/* Exact samples of the unperturbed mixture (t = 0 without any noise);
 * component[i] receives each sample's component if non-NULL. */
void sd_gmm_sample(const sd_gmm *g, sd_rng *rng, float *x, int *component, size_t n);

#endif

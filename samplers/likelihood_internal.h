/* likelihood_internal.h - what likelihood.c and elbo.c share (not installed,
 * not a public interface: sd/likelihood.h is). */
#ifndef SD_LIKELIHOOD_INTERNAL_H
#define SD_LIKELIHOOD_INTERNAL_H

#include "sd/likelihood.h"

struct sd_lik;
/* Score s [n, D] at float points x and time t, and quadratic forms
 * q[p * m + j] = u_pj^T (grad s)(x_p) v_pj for m probes per point, where
 * u = G G^T v if weighted else u = v. With probes == NULL it computes the
 * exact traces q[p] = tr(G G^T grad s) (or tr grad s), m ignored. */
sd_status sd__lik_score_quad(struct sd_lik *lk, const float *x, size_t n, double t,
                             const float *probes, int m, int weighted, float *s, double *q);
/* Score s [n, D] and the symmetrised score Jacobian J [n, D, D] (double). */
sd_status sd__lik_score_jacobian(struct sd_lik *lk, const float *x, size_t n, double t, float *s,
                                 double *J);
/* Score only (no gradients). */
sd_status sd__lik_score(struct sd_lik *lk, const float *x, size_t n, double t, float *s);
/* Grow-only scratch buffer #slot of lk (slots 0..SD__LIK_SLOTS-1; 0-9 and
 * 16-19 likelihood.c, 10-15 elbo.c). */
#define SD__LIK_SLOTS 20
void *sd__lik_scratch(struct sd_lik *lk, int slot, size_t bytes);
/* log of the prior density at x_N [D] (the configured prior). */
sd_status sd__lik_prior_logp(struct sd_lik *lk, const float *x, size_t n, double *out);
sd_model *sd__lik_model(struct sd_lik *lk);

#endif

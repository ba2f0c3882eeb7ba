/* objective.h - score-matching training objectives.
 *
 * Denoising score matching over many noise levels (Vincent 2011; Song & Ermon
 * 2019 eq. 2; Song et al. 2021 eq. 7): per sample a time t (ncsn: a level
 * drawn uniformly; continuous families: t ~ U[eps, 1]), noise z ~ N(0, I),
 *     x_t = A(t) x_0 + Sigma(t)^{1/2} z,
 *     target = grad log p(x_t | x_0) = -Sigma^{-1} (x_t - A x_0) = -Sigma^{-1/2} z,
 *     loss = mean_i 0.5 lambda(t_i) || s(x_t, t_i) - target_i ||^2,
 * with lambda = sigma(t)^2 (the kernel variance: "variance" weighting, the
 * default) or lambda = g(t)^2 ("likelihood" weighting, Song et al. 2021b).
 * Matrix-valued families (sde.h) use the same code through sd_sde_perturb:
 * dct has Sigma = sigma^2 I, so sigma^2 ||target||^2 = ||z||^2 at every t;
 * dense has target = -L^{-T} z / sigma, so sigma^2 ||target||^2 has the
 * constant mean tr C^{-1}: both keep the levels balanced with lambda =
 * sigma^2. state weights each coordinate by h'(y)^2 as well (sd_sde_perturb's
 * metric), the y-space variance weighting, since there s_y - target_y =
 * h'(y) (s_x - target_x).
 *
 * Sliced score matching (Song et al. 2019, "Sliced Score Matching") needs no
 * perturbation kernel score: with projections v (Rademacher or Gaussian),
 *     J = E[ v^T grad_x s(x) v + 0.5 (v^T s(x))^2 ],
 * and the Jacobian-vector term by the central finite difference of Pang et al.
 * 2020 ("Efficient Learning of Generative Models via Finite-Difference Score
 * Matching", eq. 8): v^T grad s v ~ (v.s(x + h v) - v.s(x - h v)) / (2h), and
 * v.s(x) ~ v.(s(x + h v) + s(x - h v)) / 2, so one batched forward pass of
 * first-order autodiff suffices. Applied at every noise level to x_t with the
 * same lambda weighting.
 */
#ifndef SD_OBJECTIVE_H
#define SD_OBJECTIVE_H

#include "sd/score_model.h"

typedef struct sd_rng sd_rng;

typedef enum sd_objective_kind { SD_OBJECTIVE_DSM, SD_OBJECTIVE_SSM } sd_objective_kind;
typedef enum sd_weighting { SD_WEIGHT_VARIANCE, SD_WEIGHT_LIKELIHOOD } sd_weighting;
typedef enum sd_projection { SD_PROJ_RADEMACHER, SD_PROJ_GAUSSIAN } sd_projection;

typedef struct sd_objective {
    sd_objective_kind kind;
    sd_weighting weighting;
    double eps;              /* smallest t for continuous families */
    sd_projection projection; /* ssm */
    double fd_step;          /* ssm finite-difference h (relative to sigma(t)) */
} sd_objective;

sd_objective sd_objective_default(const sd_sde *sde);

/* The loss (shape [1]) of a batch x0 [B, D] on graph g; the times and noise
 * come from the two rng streams. t_out[B] receives the drawn times if non-NULL. */
sd_tensor *sd_objective_loss(const sd_objective *obj, sd_model *m, sd_graph *g, const float *x0,
                             int B, sd_rng *time_rng, sd_rng *noise_rng, double *t_out);

#endif

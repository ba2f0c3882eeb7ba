/* ncsnv2.h - NCSNv2's data-driven choices for the ncsn and ve noise families
 * (Song & Ermon 2020, "Improved techniques for training score-based
 * generative models", Sec. 3 and 4): sigma_max from the data (Technique 1),
 * the number of levels L (Technique 2) and the step size of annealed Langevin
 * dynamics (Technique 4). Score-model mathematics, used by the training run
 * (train_run.h) to resolve a family's defaults and to report the step size.
 */
#ifndef SD_NCSNV2_H
#define SD_NCSNV2_H

#include <stddef.h>

#include "sd/status.h"

/* Technique 1: the largest Euclidean distance between two of the n points
 * x [n, D] (exact pairs, Gram-matrix computation with the winner recomputed
 * in double). */
sd_status sd_ncsnv2_max_distance(const float *x, size_t n, size_t D, double *out);
/* Technique 2: the ratio gamma = sigma_{i-1} / sigma_i > 1 that solves
 *   Phi(sqrt(2D)(gamma - 1) + 3 gamma) - Phi(sqrt(2D)(gamma - 1) - 3 gamma) = 0.5;
 * 0 if no gamma does (D < 5: the left side then stays above 0.5). */
double sd_ncsnv2_gamma(size_t D);
double sd_ncsnv2_criterion(size_t D, double gamma); /* the left side above */
/* Levels of a geometric ladder from sigma_max down to sigma_min with ratio
 * at most gamma: 1 + ceil(log(sigma_max / sigma_min) / log gamma). */
int sd_ncsnv2_levels(double sigma_max, double sigma_min, double gamma);
/* Technique 4: the step size eps of annealed Langevin dynamics (step
 * alpha_i = eps sigma_i^2 / sigma_L^2, T steps per level) that brings
 *   f(eps) = (1 - eps/sL^2)^(2T) (gamma^2 - 2 eps / (sL^2 - sL^2 (1 - eps/sL^2)^2))
 *            + 2 eps / (sL^2 - sL^2 (1 - eps/sL^2)^2)
 * closest to 1 (f > 1 for all eps in (0, sL^2), so: its minimiser). */
double sd_ncsnv2_step_size(double gamma, double sigma_min, int T);
double sd_ncsnv2_step_criterion(double gamma, double sigma_min, int T, double eps);

#endif

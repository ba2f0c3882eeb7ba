/* langevin.c - annealed Langevin dynamics (Song & Ermon 2019, "Generative
 * Modeling by Estimating Gradients of the Data Distribution", Alg. 1), with
 * the final denoising step of NCSNv2 (Song & Ermon 2020, "Improved Techniques
 * for Training Score-Based Generative Models", Sec. 3 / App. B).
 *
 * For levels i = 1..L (sigma_1 > ... > sigma_L) and T steps per level:
 *     alpha_i = eps sigma_i^2 / sigma_L^2
 *     x <- x + alpha_i s(x, sigma_i) + sqrt(2 alpha_i) z,   z ~ N(0, I)
 * which is the unadjusted Langevin algorithm with step alpha_i targeting
 * p_{sigma_i}; the ratio alpha_i / sigma_i^2 = eps / sigma_L^2 is the same at
 * every level, so each level mixes in a comparable number of steps. Its
 * stationary law is biased by O(alpha_i / sigma_i^2) relative to the target
 * (for a Gaussian of variance v the chain's variance is v / (1 - alpha/(2v))),
 * so eps / sigma_L^2 must be small; the default 0.1 is Song & Ermon's 2e-5 at
 * sigma_L = 0.01 in this alpha convention (their Alg. 1 writes alpha/2).
 *
 * Levels: ncsn's own ladder, or for continuous families L times whose
 * noise-to-signal ratio sigma(t) / a(t) is geometric between its values at
 * t = 1 and t_eps. sigma / a is the VE-equivalent noise level (x_t / a = x_0
 * + (sigma / a) z), so this is Song & Ermon's geometric ladder for ve and the
 * same spacing of difficulty for vp / subvp (a ladder geometric in sigma
 * alone puts almost every vp level where the modes are already apart: a
 * 16-D mixture then came out with weights off by 0.2). NFE = L T, plus 1 for
 * denoising.
 *
 * Between levels the state is carried over as the VE-equivalent variable
 * x / a(t): moving from t_i to t_{i+1} multiplies x by a(t_{i+1}) / a(t_i)
 * (the deterministic part of the forward transition, 1 for ncsn/ve). Without
 * it a vp chain starts each level with its modes shrunk towards 0 by
 * a(t_i)/a(t_{i+1}) (0.75 per level at a 30-level ladder's mode-splitting
 * levels), which the frozen inter-mode dynamics cannot undo: weights of a 16-D
 * mixture came out 0.03 off, against 0.002 for the equivalent ve ladder.
 */
#include <math.h>

#include "sd/sampler.h"

static double noise_ratio(const sd_sde *sde, double t)
{
    return sd_sde_sigma(sde, t) / sd_sde_mean_coef(sde, t);
}

/* Time at which sigma(t) / a(t) equals `target` (increasing in t for every
 * family): bisection to double precision on [lo, hi]. */
static double time_of_ratio(const sd_sde *sde, double target, double lo, double hi)
{
    for (int it = 0; it < 200 && hi - lo > 1e-15; it++) {
        double mid = 0.5 * (lo + hi);
        if (noise_ratio(sde, mid) < target) lo = mid;
        else hi = mid;
    }
    return 0.5 * (lo + hi);
}

static double level_time(const sd_sde *sde, const sd_sampler_opts *o, int i, int L)
{
    if (sd_sde_has(sde, SD_SDE_DISCRETE_LEVELS)) return sd_sde_level_time(sde, i);
    double eps = sd__t_eps(sde, o);
    if (L == 1) return eps;
    if (i == 0) return 1.0;
    if (i == L - 1) return eps;
    double r_hi = noise_ratio(sde, 1.0), r_lo = noise_ratio(sde, eps);
    double target = r_hi * pow(r_lo / r_hi, (double)i / (L - 1));
    return time_of_ratio(sde, target, eps, 1.0);
}

sd_status sd__langevin_batch(sd__batch *b)
{
    const sd_sde *sde = &b->sc->sde;
    const sd_sampler_opts *o = b->o;
    int L = sd_sde_has(sde, SD_SDE_DISCRETE_LEVELS) ? sd_sde_levels(sde) : o->levels;
    int T = o->steps_per_level;
    double t_last = level_time(sde, o, L - 1, L);
    double sig_last = sd_sde_sigma(sde, t_last);
    double eps = o->step_eps > 0 ? o->step_eps : 0.1 * sig_last * sig_last;
    size_t total = b->n * b->D;
    int64_t steps = (int64_t)L * T, done = 0;
    sd_status st = SD_OK;
    for (int i = 0; i < L; i++) {
        double t = level_time(sde, o, i, L), sig = sd_sde_sigma(sde, t);
        if (i > 0) {
            double a, v;
            sd__transition(sde, level_time(sde, o, i - 1, L), t, &a, &v, NULL, NULL);
            if (a != 1.0) {
                float c = (float)(1.0 / a);
                for (size_t j = 0; j < total; j++) b->x[j] *= c;
            }
        }
        double alpha = eps * (sig * sig) / (sig_last * sig_last);
        float fa = (float)alpha, fz = (float)sqrt(2.0 * alpha);
        for (int k = 0; k < T; k++) {
            if ((st = sd__score(b, b->x, t, b->s)) != SD_OK) return st;
            sd__noise(b, b->z);
            for (size_t j = 0; j < total; j++) b->x[j] += fa * b->s[j] + fz * b->z[j];
            if ((st = sd__constrain(b, t)) != SD_OK) return st;
            done++;
            if ((st = sd__observe(b, t, (double)done / (double)(steps + 1), false)) != SD_OK)
                return st;
        }
        if ((st = sd__check_finite(b, t)) != SD_OK) return st;
    }
    if (o->denoise && (st = sd__denoise(b, t_last)) != SD_OK) return st;
    return sd__constrain(b, -1.0);
}

/* schedule.c - noise-level grids for the few-step samplers (edm.c,
 * dpm_solver.c) and the probability flow's fixed-step methods (flow.c), in
 * the scaled sigma^ = sigma(t)/a(t) of Karras et al. 2022 (Table 1; see
 * sampler.h). The grids:
 *   karras     sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho,
 *              their eq. 5: rho = 7 spends the steps near smin, where the
 *              solution curves most (rho = 3 would equalise the local
 *              truncation error of Heun's method, they find 7 better).
 *   loglinear  geometric: equal steps in lambda = -log sigma (DPM-Solver's
 *              "logSNR" grid).
 *   uniform    equal steps in the family's own time t between t(smax) and
 *              t(smin): with the default range, the grid the ODE and PC
 *              always used (linspace(1, eps, N)).
 * Only sd_sde_sigma and sd_sde_mean_coef are used, so every family has a
 * time <-> sigma^ map; whether a sampler may run on it is the sampler's
 * business (the few-step samplers need an isotropic family).
 */
#include <math.h>
#include <string.h>

#include "sd/sampler.h"

int sd_schedule_parse(const char *name, sd_schedule *out)
{
    if (strcmp(name, "karras") == 0) *out = SD_SCHEDULE_KARRAS;
    else if (strcmp(name, "loglinear") == 0) *out = SD_SCHEDULE_LOGLINEAR;
    else if (strcmp(name, "uniform") == 0) *out = SD_SCHEDULE_UNIFORM;
    else return 0;
    return 1;
}

const char *sd_schedule_name(sd_schedule s)
{
    switch (s) {
    case SD_SCHEDULE_DEFAULT: return "default";
    case SD_SCHEDULE_KARRAS: return "karras";
    case SD_SCHEDULE_LOGLINEAR: return "loglinear";
    case SD_SCHEDULE_UNIFORM: return "uniform";
    }
    return "?";
}

double sd_schedule_sigma(const sd_sde *sde, double t)
{
    return sd_sde_sigma(sde, t) / sd_sde_mean_coef(sde, t);
}

double sd_schedule_time(const sd_sde *sde, double sigma)
{
    double lo = 0.0, hi = 1.0;
    if (!(sigma > sd_schedule_sigma(sde, lo))) return lo;
    if (!(sigma < sd_schedule_sigma(sde, hi))) return hi;
    /* sigma^ is increasing in t for every family (the noise-to-signal ratio
     * grows along the forward process); bisection to the last bit of t: the
     * score model then sees sigma(t)/a(t) = sigma to ~1e-16 relative. */
    for (int it = 0; it < 200; it++) {
        double mid = 0.5 * (lo + hi);
        if (mid <= lo || mid >= hi) break;
        if (sd_schedule_sigma(sde, mid) < sigma) lo = mid;
        else hi = mid;
    }
    return 0.5 * (lo + hi);
}

sd_status sd_schedule_range(const sd_sde *sde, const sd_sampler_opts *o, double *smin,
                            double *smax)
{
    double s0 = sd_schedule_sigma(sde, 0.0), s1 = sd_schedule_sigma(sde, 1.0);
    /* The low end by default: sigma^ at the run's smallest time, except for the
     * families that are degenerate at t = 0 (vp, subvp) when no smallest time
     * was asked for: there the few-step samplers stop at t = 1e-3, as Karras
     * et al. 2022 (Table 1, eps_s) and Lu et al. 2022 do for VP models
     * (sigma^ = 0.0105 instead of 0.001 at t = 1e-5: the grid's steps go
     * where the data are resolved, and the final Tweedie step removes the
     * remaining noise). Measured on tests/test_fewstep.c's aniso16 at 35
     * NFE: RMS deviation from the exact flow 0.064 -> 0.036. */
    double t_lo = sd__t_eps(sde, o);
    if (o->t_eps < 0 && sd_sde_has(sde, SD_SDE_DEGENERATE_AT_ZERO) &&
        (o->kind == SD_SAMPLER_HEUN || o->kind == SD_SAMPLER_DPM2M))
        t_lo = SD_FEWSTEP_VP_EPS;
    double lo = o->sigma_min > 0 ? o->sigma_min : sd_schedule_sigma(sde, t_lo);
    double hi = o->sigma_max > 0 ? o->sigma_max : s1;
    /* the model knows sigma^ only on [sigma^(0), sigma^(1)] (its training range) */
    const double slack = 1e-9;
    if (!isfinite(lo) || !isfinite(hi) || lo < s0 * (1 - slack) || hi > s1 * (1 + slack))
        return sd_error(SD_ERR_INVALID, "schedule: sigma range [%g, %g] is outside the range "
                                        "[%g, %g] of %s (sigma/a over t in [0, 1])",
                        lo, hi, s0, s1, sd_sde_name(sde));
    if (!(lo > 0) || !(lo < hi))
        return sd_error(SD_ERR_INVALID, "schedule: need 0 < sigma_min < sigma_max (got %g, %g)",
                        lo, hi);
    *smin = lo;
    *smax = hi;
    return SD_OK;
}

sd_status sd_schedule_sigmas(const sd_sde *sde, const sd_sampler_opts *o, int n, double *sig)
{
    if (n < 1) return sd_error(SD_ERR_INVALID, "schedule: need >= 1 steps (got %d)", n);
    double smin, smax;
    sd_status st = sd_schedule_range(sde, o, &smin, &smax);
    if (st != SD_OK) return st;
    sd_schedule kind = o->schedule == SD_SCHEDULE_DEFAULT ? SD_SCHEDULE_KARRAS : o->schedule;
    if (kind == SD_SCHEDULE_KARRAS && !(o->rho > 0 && isfinite(o->rho)))
        return sd_error(SD_ERR_INVALID, "schedule: rho must be > 0 (got %g)", o->rho);
    if (kind < SD_SCHEDULE_KARRAS || kind > SD_SCHEDULE_UNIFORM)
        return sd_error(SD_ERR_INVALID, "schedule: unknown schedule %d", (int)kind);
    double t_hi = sd_schedule_time(sde, smax), t_lo = sd_schedule_time(sde, smin);
    for (int i = 0; i < n; i++) {
        double f = n == 1 ? 0.0 : (double)i / (n - 1);
        if (i == 0) sig[i] = smax; /* the ends exactly, not through pow/exp */
        else if (i == n - 1) sig[i] = smin;
        else if (kind == SD_SCHEDULE_KARRAS) {
            double a = pow(smax, 1.0 / o->rho), b = pow(smin, 1.0 / o->rho);
            sig[i] = pow(a + f * (b - a), o->rho);
        } else if (kind == SD_SCHEDULE_LOGLINEAR) {
            sig[i] = exp(log(smax) + f * (log(smin) - log(smax)));
        } else {
            sig[i] = sd_schedule_sigma(sde, t_hi + f * (t_lo - t_hi));
        }
    }
    return SD_OK;
}

/* dpm_solver.c - DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++: Fast Solver
 * for Guided Sampling of Diffusion Probabilistic Models", Alg. 2), on the
 * scaled form of edm.c (x^ = x / a, sigma^ = sigma / a; isotropic families
 * only, the others are refused there).
 *
 * The probability flow in lambda = -log sigma^ on the data prediction D
 * is solved exactly for its linear part (an exponential integrator):
 *     x_{i+1} = (sigma_{i+1}/sigma_i) x_i - expm1(-h_i) D~_i,   h_i = lambda_{i+1} - lambda_i
 * with D~_i = D_i (first order: the first step, which has no history, and the
 * last, to sigma = 0, where lambda is infinite and the step is D_i itself,
 * Tweedie's denoising) or, in between, the 2nd-order multistep correction
 *     D~_i = (1 + 1/(2 r)) D_i - 1/(2 r) D_{i-1},   r = h_{i-1} / h_i.
 * One evaluation per step: N steps cost N NFE. The grid is the same as
 * heun's (sigma_0 = smax ... sigma_{N-1} = smin, sigma_N = 0); the prior draw
 * is rescaled as there.
 */
#include <math.h>
#include <string.h>

#include "sd/sampler.h"

sd_status sd__dpm2m_batch(sd__batch *b)
{
    const sd_sampler_opts *o = b->o;
    const sd_sde *sde = &b->sc->sde;
    int N = o->steps;
    size_t total = b->n * b->D;
    double *sig = sd_malloc((size_t)(N + 1) * sizeof *sig);
    float *den = sd_malloc(total * sizeof(float)), *old = sd_malloc(total * sizeof(float));
    sd_status st = SD_OK;
    if (!sig || !den || !old) {
        st = SD_ERR_NOMEM;
        goto done;
    }
    if ((st = sd__fewstep_grid(b, sig)) != SD_OK) goto done;
    {
        double c = sig[0] / sd_sde_sigma(sde, 1.0);
        for (size_t j = 0; j < total; j++) b->x[j] = (float)(c * b->x[j]);
    }
    float *x = b->x;
    double h_last = 0.0;
    for (int i = 0; i < N && st == SD_OK; i++) {
        double si = sig[i], sn = sig[i + 1];
        if ((st = sd__denoiser(b, x, si, den)) != SD_OK) break;
        if (sn == 0.0) {
            memcpy(x, den, total * sizeof(float));
        } else {
            double h = log(si / sn), ratio = sn / si, em = -expm1(-h); /* 1 - sn/si */
            if (i == 0) {
                for (size_t j = 0; j < total; j++)
                    x[j] = (float)(ratio * x[j] + em * (double)den[j]);
            } else {
                double r = h_last / h, c1 = 1.0 + 0.5 / r, c0 = 0.5 / r;
                for (size_t j = 0; j < total; j++)
                    x[j] = (float)(ratio * x[j] + em * (c1 * (double)den[j] - c0 * (double)old[j]));
            }
            h_last = h;
            float *tmp = old;
            old = den;
            den = tmp;
        }
        double t = sn > 0 ? sd_schedule_time(sde, sn) : 0.0;
        if ((st = sd__check_finite(b, t)) != SD_OK) break;
        st = sd__observe(b, t, (double)(i + 1) / N, false);
    }
done:
    sd_free(sig);
    sd_free(den);
    sd_free(old);
    return st;
}

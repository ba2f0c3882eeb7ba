/* edm.c - Heun's 2nd-order sampler of Karras et al. 2022, "Elucidating the
 * Design Space of Diffusion-Based Generative Models" (EDM), Algorithm 2, and
 * the pieces the few-step samplers share (the scaled form's denoiser and the
 * grid).
 *
 * Scaled form (sampler.h, schedule.c): an isotropic family's x_t = a(t) x_0 +
 * sigma(t) z is x = a x^ with x^ = x_0 + sigma^ z, sigma^ = sigma/a, a VE
 * process whose probability flow is dx^/dsigma^ = (x^ - D(x^, sigma^))/sigma^
 * with the denoiser D(x^, sigma^) = x^ + sigma^2 grad log p(x^) = x^ + sigma^2 a
 * s(a x^, t(sigma^)) (Tweedie; the score of x^ is a times that of x). ncsn and
 * ve have a = 1 and sigma^ = sigma; vp and subvp reach the same equation
 * through a(t). The matrix-valued families (dct, dense, state) have no scalar
 * a and sigma (their noise is not a multiple of I), so heun and dpm2m refuse
 * them with SD_ERR_INVALID (use pc or ode there).
 *
 * Algorithm 2 on the grid sigma_0 = smax > ... > sigma_{N-1} = smin >
 * sigma_N = 0, N = o->steps:
 *     gamma_i = min(S_churn / N, sqrt 2 - 1) if S_tmin <= sigma_i <= S_tmax, else 0
 *     s = sigma_i (1 + gamma_i);  x += sqrt(s^2 - sigma_i^2) S_noise z   (churn)
 *     d = (x - D(x, s)) / s;  x' = x + (sigma_{i+1} - s) d                  (Euler)
 *     if sigma_{i+1} > 0:  x' = x + (sigma_{i+1} - s) (d + d') / 2,
 *                          d' = (x' - D(x', sigma_{i+1})) / sigma_{i+1}    (Heun)
 * so N steps cost 2N - 1 evaluations; the last step, Euler to sigma = 0, is
 * D(x, smin): Tweedie's denoising step. Churn noise comes from each sample's
 * own stream (sd__noise), and s is capped at sigma^(1), the largest level the
 * model knows. The prior draw x_1 is rescaled to x^ = sigma_0 x_1 / sigma(1)
 * (the family's priors are N(0, sigma(1)^2 I)), which with the default range
 * is exactly x_1 / a(1).
 */
#include <math.h>

#include "sd/sampler.h"

sd_status sd__fewstep_grid(sd__batch *b, double *sig)
{
    const sd_sde *sde = &b->sc->sde;
    if (!sd_sde_is_isotropic(sde))
        return sd_error(SD_ERR_INVALID, "%s: needs an isotropic noise family (ncsn, ve, vp, "
                                        "subvp), not %s, whose noise is not a multiple of I; use "
                                        "pc or ode", sd_sampler_kind_name(b->o->kind),
                        sd_sde_name(sde));
    sd_status st = sd_schedule_sigmas(sde, b->o, b->o->steps, sig);
    sig[b->o->steps] = 0.0;
    return st;
}

sd_status sd__denoiser(sd__batch *b, const float *xh, double sigma, float *out)
{
    const sd_sde *sde = &b->sc->sde;
    double t = sd_schedule_time(sde, sigma), a = sd_sde_mean_coef(sde, t);
    size_t total = b->n * b->D;
    for (size_t i = 0; i < total; i++) b->tmp[i] = (float)(a * xh[i]);
    sd_status st = sd__score(b, b->tmp, t, b->s);
    if (st != SD_OK) return st;
    double c = sigma * sigma * a;
    for (size_t i = 0; i < total; i++) out[i] = (float)((double)xh[i] + c * (double)b->s[i]);
    return SD_OK;
}

/* x^ from the prior draw in b->x (see the file comment). */
static void scale_prior(sd__batch *b, double sigma0)
{
    double c = sigma0 / sd_sde_sigma(&b->sc->sde, 1.0);
    size_t total = b->n * b->D;
    for (size_t i = 0; i < total; i++) b->x[i] = (float)(c * b->x[i]);
}

sd_status sd__heun_batch(sd__batch *b)
{
    const sd_sampler_opts *o = b->o;
    const sd_sde *sde = &b->sc->sde;
    int N = o->steps;
    size_t total = b->n * b->D;
    double *sig = sd_malloc((size_t)(N + 1) * sizeof *sig);
    float *d = sd_malloc(total * sizeof(float)), *xn = sd_malloc(total * sizeof(float));
    sd_status st = SD_OK;
    if (!sig || !d || !xn) {
        st = SD_ERR_NOMEM;
        goto done;
    }
    if ((st = sd__fewstep_grid(b, sig)) != SD_OK) goto done;
    scale_prior(b, sig[0]);
    double s_top = sd_schedule_sigma(sde, 1.0), gmax = sqrt(2.0) - 1.0;
    float *x = b->x;
    for (int i = 0; i < N && st == SD_OK; i++) {
        double si = sig[i], sn = sig[i + 1], s = si;
        if (o->churn > 0 && si >= o->s_tmin && si <= o->s_tmax) {
            double gamma = fmin(o->churn / N, gmax);
            s = fmin(si * (1.0 + gamma), s_top > si ? s_top : si);
            double c = sqrt(s * s - si * si) * o->s_noise;
            if (c > 0) {
                sd__noise(b, b->z);
                for (size_t j = 0; j < total; j++) x[j] = (float)(x[j] + c * b->z[j]);
            }
        }
        if ((st = sd__denoiser(b, x, s, d)) != SD_OK) break;
        double h = sn - s;
        for (size_t j = 0; j < total; j++) {
            double dj = ((double)x[j] - d[j]) / s;
            d[j] = (float)dj;
            xn[j] = (float)(x[j] + h * dj);
        }
        if (sn > 0) {
            if ((st = sd__denoiser(b, xn, sn, b->z)) != SD_OK) break;
            for (size_t j = 0; j < total; j++) {
                double d2 = ((double)xn[j] - b->z[j]) / sn;
                x[j] = (float)(x[j] + 0.5 * h * ((double)d[j] + d2));
            }
        } else {
            for (size_t j = 0; j < total; j++) x[j] = xn[j];
        }
        double t = sn > 0 ? sd_schedule_time(sde, sn) : 0.0;
        if ((st = sd__check_finite(b, t)) != SD_OK) break;
        st = sd__observe(b, t, (double)(i + 1) / N, false);
    }
done:
    sd_free(sig);
    sd_free(d);
    sd_free(xn);
    return st;
}

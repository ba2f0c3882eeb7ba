/* pc.c - predictor-corrector sampling of the reverse-time SDE (Song et al.
 * 2021, "Score-Based Generative Modeling through SDEs", Sec. 4.2, Alg. 1-3,
 * App. E-G).
 *
 * Grid: t_0 = 1 > t_1 > ... > t_{N-1} (ncsn: its L levels; continuous
 * families: N equally spaced times down to t_eps, as the reference code's
 * linspace(T, eps, N)). At each t_i the corrector runs M Langevin steps at
 * t_i, then the predictor moves from t_i to t_{i+1}; the last one moves from
 * t_{N-1} to clean data (a = 1, sigma = 0). With denoising on, the last
 * predictor step adds no noise (the reference code's x_mean).
 *
 * Predictors, with dt = t_i - t_{i+1} > 0 and the exact transition of the
 * forward process from t_{i+1} to t_i, x_i = a x_{i+1} + sqrt(v) z
 * (sd__transition):
 *   Euler-Maruyama (eq. 6 discretised, Alg. 2 with the SDE's own operators):
 *       x <- x + [G G^T s(x, t_i) + div[G G^T] - f(x)] dt + G sqrt(dt) z
 *     (the divergence term only for the state-dependent family; App. D)
 *   reverse diffusion (App. E, eq. 46-47: the forward step x_{i} = x_{i+1} +
 *   f_{i+1} + G_{i+1} z with f = (a - 1) x, G G^T = v, run backwards):
 *       x <- (2 - a) x + v s + sqrt(v) z
 *     for ncsn/ve this is x + (sigma_i^2 - sigma_{i+1}^2) s + ..., for vp
 *     DDPM's (2 - sqrt(1 - beta)) x + beta s + sqrt(beta) z.
 *   ancestral sampling (App. F): the Gaussian posterior q(x_{i+1} | x_i, x_0)
 *   with x_0 replaced by Tweedie's E[x_0 | x_i] = (x + sigma_i^2 s)/a_i:
 *       x <- [a sigma_{i+1}^2 + v / a] / sigma_i^2 x + (v / a) s
 *            + sqrt(sigma_{i+1}^2 v / sigma_i^2) z
 *     which for ncsn/ve is exactly eq. 47's x + (sigma_i^2 - sigma_{i+1}^2) s
 *     + sqrt(sigma_{i+1}^2 (sigma_i^2 - sigma_{i+1}^2) / sigma_i^2) z, and for
 *     vp DDPM's step (x + beta s) / sqrt(1 - beta) + sqrt(beta~) z with the
 *     posterior variance beta~ (Ho et al. 2020, Sec. 3.2).
 * Corrector (Alg. 4-5): M steps of
 *       eps = 2 alpha (r ||z|| / ||s||)^2,  x <- x + eps s + sqrt(2 eps) z
 * with alpha = a^2 (1 for ve, 1 - beta_i for vp) and the norms averaged over
 * the batch, as in the reference implementation.
 *
 * NFE = N (M + 1) with the corrector, N without; a predictor "none" costs 0.
 */
#include <math.h>

#include "sd/sampler.h"

static double grid_time(const sd_sde *sde, double eps, int i, int N)
{
    if (i >= N) return -1.0; /* clean data */
    if (sd_sde_has(sde, SD_SDE_DISCRETE_LEVELS)) return sd_sde_level_time(sde, i);
    if (N == 1) return 1.0;
    return 1.0 - (1.0 - eps) * ((double)i / (N - 1));
}

/* Mean over the batch of the per-sample Euclidean norm of v [n, D]. */
static double mean_norm(const float *v, size_t n, size_t D)
{
    double acc = 0.0;
    for (size_t i = 0; i < n; i++) {
        double ss = 0.0;
        for (size_t j = 0; j < D; j++) ss += (double)v[i * D + j] * v[i * D + j];
        acc += sqrt(ss);
    }
    return n ? acc / (double)n : 0.0;
}

static sd_status corrector(sd__batch *b, double t, double alpha)
{
    size_t total = b->n * b->D;
    sd_status st;
    for (int m = 0; m < b->o->corrector_steps; m++) {
        if ((st = sd__score(b, b->x, t, b->s)) != SD_OK) return st;
        sd__noise(b, b->z);
        double gn = mean_norm(b->s, b->n, b->D), zn = mean_norm(b->z, b->n, b->D);
        /* a zero score (exactly at a mode of every sample) leaves x as is */
        double r = gn > 0 ? b->o->snr * zn / gn : 0.0;
        double eps = 2.0 * alpha * r * r;
        float fe = (float)eps, fz = (float)sqrt(2.0 * eps);
        for (size_t j = 0; j < total; j++) b->x[j] += fe * b->s[j] + fz * b->z[j];
        if ((st = sd__constrain(b, t)) != SD_OK) return st;
    }
    return SD_OK;
}

static sd_status predictor(sd__batch *b, double t, double t_next, double dt, bool noise)
{
    const sd_sde *sde = &b->sc->sde;
    size_t total = b->n * b->D;
    double a, v, sig_t2, sig_s2;
    sd__transition(sde, t, t_next, &a, &v, &sig_t2, &sig_s2);
    sd_status st = sd__score(b, b->x, t, b->s);
    if (st != SD_OK) return st;
    if (noise) sd__noise(b, b->z);
    float *x = b->x, *s = b->s, *z = b->z, *tmp = b->tmp;
    switch (b->o->predictor) {
    case SD_PRED_EULER_MARUYAMA: {
        /* x += dt (G G^T s + div[G G^T] - f); then + sqrt(dt) G z, with G,
         * G G^T and div[G G^T] (zero unless G depends on x) all at the
         * current x (Song et al. 2021, App. D, eq. 37, run backwards). */
        float fdt = (float)dt;
        if ((st = sd_sde_apply_GGT(sde, t, x, s, tmp, b->n, b->D)) != SD_OK) return st;
        for (size_t j = 0; j < total; j++) tmp[j] *= fdt;
        if (sd_sde_state_dependent(sde)) {
            if ((st = sd_sde_div_GGT(sde, t, x, s, b->n, b->D)) != SD_OK) return st;
            for (size_t j = 0; j < total; j++) tmp[j] += fdt * s[j];
        }
        if (noise && (st = sd_sde_apply_G(sde, t, x, z, z, b->n, b->D)) != SD_OK) return st;
        /* s is free now: f(x) */
        if ((st = sd_sde_drift(sde, t, x, s, b->n, b->D)) != SD_OK) return st;
        for (size_t j = 0; j < total; j++) x[j] += tmp[j] - fdt * s[j];
        if (noise) {
            float fs = (float)sqrt(dt);
            for (size_t j = 0; j < total; j++) x[j] += fs * z[j];
        }
        break;
    }
    case SD_PRED_REVERSE_DIFFUSION: {
        float c1 = (float)(2.0 - a), c2 = (float)v, c3 = (float)sqrt(v);
        for (size_t j = 0; j < total; j++)
            x[j] = c1 * x[j] + c2 * s[j] + (noise ? c3 * z[j] : 0.0f);
        break;
    }
    case SD_PRED_ANCESTRAL: {
        float c1 = (float)((a * sig_s2 + v / a) / sig_t2), c2 = (float)(v / a);
        float c3 = (float)sqrt(sig_s2 * v / sig_t2);
        for (size_t j = 0; j < total; j++)
            x[j] = c1 * x[j] + c2 * s[j] + (noise ? c3 * z[j] : 0.0f);
        break;
    }
    case SD_PRED_NONE: break;
    }
    return SD_OK;
}

sd_status sd__pc_batch(sd__batch *b)
{
    const sd_sde *sde = &b->sc->sde;
    const sd_sampler_opts *o = b->o;
    double eps = sd__t_eps(sde, o);
    int N = sd_sde_has(sde, SD_SDE_DISCRETE_LEVELS) ? sd_sde_levels(sde) : o->steps;
    sd_status st = SD_OK;
    for (int i = 0; i < N; i++) {
        double t = grid_time(sde, eps, i, N), t_next = grid_time(sde, eps, i + 1, N);
        double a, v;
        sd__transition(sde, t, t_next, &a, &v, NULL, NULL);
        if (o->corrector && (st = corrector(b, t, a * a)) != SD_OK) return st;
        bool last = i == N - 1;
        /* Euler-Maruyama's dt: to t_{i+1}; the last step ends at t = 0, or
         * (ncsn, whose last level already sits at t = 0) repeats the spacing. */
        double dt = last ? (t > 0 ? t : (N > 1 ? grid_time(sde, eps, N - 2, N) - t : 1.0))
                         : t - t_next;
        if (o->predictor != SD_PRED_NONE) {
            if ((st = predictor(b, t, t_next, dt, !(last && o->denoise))) != SD_OK) return st;
        } else if (last && o->denoise) {
            if ((st = sd__denoise(b, t)) != SD_OK) return st;
        }
        if ((st = sd__constrain(b, t_next)) != SD_OK) return st;
        if ((st = sd__check_finite(b, t_next < 0 ? 0.0 : t_next)) != SD_OK) return st;
        if ((st = sd__observe(b, t_next < 0 ? 0.0 : t_next, (double)(i + 1) / N, false)) != SD_OK)
            return st;
    }
    return SD_OK;
}

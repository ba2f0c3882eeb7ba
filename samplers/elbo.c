/* elbo.c - ELBO and IWAE bounds on log p_eps(x) through the discretised
 * diffusion (likelihood.h, "ELBO / IWAE").
 *
 * Vocabulary: n items, K chains per item, R = items x K rows, N steps,
 * D dimensions; step i goes from t_{i-1} to t_i = eps + (T - eps) i / N.
 *
 * Encoder. For the isotropic families the forward transition between two
 * times is exactly Gaussian (Song et al. 2021, App. B):
 *     x_i | x_{i-1} ~ N(al x_{i-1}, be I),  al = a(t_i) / a(t_{i-1}),
 *                                            be = sigma_i^2 - al^2 sigma_{i-1}^2,
 * i.e. N(x_{i-1}, sigma_i^2 - sigma_{i-1}^2) for VE and N(al x, 1 - al^2)
 * for VP. The chain is carried in double so that log q is evaluated at the
 * exact sample.
 *
 * Decoder. Let p_t be the model's marginals. Because p_{t_i} is p_{t_{i-1}}
 * pushed through this Gaussian transition, Tweedie's formula (Efron 2011,
 * "Tweedie's formula and selection bias", JASA, eq. 2.8) and its second-order
 * form (Meng et al. 2021, "Estimating high order gradients of the data
 * distribution by denoising", NeurIPS, Thm. 1) give the exact first two
 * moments of the true reverse conditional q(x_{i-1} | x_i):
 *     E  [x_{i-1} | x_i] = (x_i + be s(x_i)) / al,
 *     Cov[x_{i-1} | x_i] = (be I + be^2 grad s(x_i)) / al^2.
 * (The same mean is Ho et al. 2020's eq. 7 / Kingma et al. 2021's VDM eq. 26
 * posterior mean with x_0 replaced by its Tweedie estimate; the variance is
 * what Bao et al. 2022, "Analytic-DPM", optimise over in the isotropic case.)
 *   full  N(mean, Cov) with the full (symmetrised) Jacobian: the moment-
 *         matched Gaussian, i.e. the Gaussian closest to the true conditional
 *         in KL(q || p). For Gaussian data the conditional is exactly this
 *         Gaussian, so with the exact score and prior every weight equals
 *         p_eps(x_0) and ELBO = IWAE = log p_eps for any N. For mixtures the
 *         gap shrinks as the steps shrink and the conditional turns Gaussian.
 *   iso   the same mean, variance tr(Cov)/D (the KL-optimal isotropic one for
 *         that mean), the trace exact or by fixed shared Hutchinson probes
 *         (drawn once from the seed, so the decoder is one fixed function of
 *         x_i). Floored at 1e-3 be / al^2 in case a learned Jacobian is wild.
 *   em    Euler-Maruyama step of the reverse SDE (Song et al. 2021, eq. 6):
 *         N(x_i - (f(x_i, t_i) - G G^T s) dt, g^2(t_i) dt I). Its variance
 *         follows g^2 at t_i only, which for VE (sigma^2 growing by a factor
 *         (sigma_max/sigma_min)^(2 dt) per step) is far from be, so its ELBO
 *         is loose: kept as the baseline the note compares against.
 * We use full (D <= 64) or iso by default: with the exact gmm score they give
 * the tight bounds (table in the note).
 */
#include <lapacke.h>
#include <math.h>
#include <string.h>

#include "likelihood_internal.h"
#include "sd/rng.h"

static const double LOG_2PI = 1.8378770664093453;

/* Scratch slots 10-15 (likelihood.c uses 0-9). */
enum { SL_XA = 10, SL_XB, SL_XF, SL_JAC, SL_RNG, SL_MISC };

/* Squared variance-weighted residual: log N(y; mu, var I) for D values. */
static double log_normal_iso(const double *y, const double *mu, double var, size_t D)
{
    double ss = 0.0;
    for (size_t i = 0; i < D; i++) ss += (y[i] - mu[i]) * (y[i] - mu[i]);
    return -0.5 * ss / var - 0.5 * (double)D * (log(var) + LOG_2PI);
}

/* log N(y; mu, M) with M [D, D] overwritten by its Cholesky factor and r [D]
 * as work; returns NAN if M is not positive definite. */
static double log_normal_full(const double *y, const double *mu, double *M, double *r, size_t D)
{
    /* M is symmetric, so its row-major lower triangle is the column-major
     * upper one: factor M = U^T U in place without LAPACKE's row-major copy
     * (an allocation per call), then read U^T as the row-major lower L. */
    if (LAPACKE_dpotrf_work(LAPACK_COL_MAJOR, 'U', (lapack_int)D, M, (lapack_int)D) != 0)
        return NAN;
    double ss = 0.0, logdet = 0.0;
    for (size_t i = 0; i < D; i++) { /* forward substitution L r = y - mu */
        double a = y[i] - mu[i];
        for (size_t j = 0; j < i; j++) a -= M[i * D + j] * r[j];
        r[i] = a / M[i * D + i];
        ss += r[i] * r[i];
        logdet += 2.0 * log(M[i * D + i]);
    }
    return -0.5 * ss - 0.5 * logdet - 0.5 * (double)D * LOG_2PI;
}

/* One chunk of nc items, K chains each (rows r = item * K + k). */
static sd_status elbo_chunk(sd_lik *lk, const float *x, size_t nc, uint64_t index0, int K,
                            double *logw)
{
    const sd_lik_config *cf = sd_lik_get_config(lk);
    sd_model *m = sd__lik_model(lk);
    const sd_sde *sde = &m->sde;
    size_t D = m->D, R = nc * (size_t)K;
    int dec = cf->decoder, N = cf->steps;
    int exact = cf->div == SD_LIK_DIV_EXACT, P = exact ? 1 : cf->probes;
    double *xa = sd__lik_scratch(lk, SL_XA, R * D * sizeof(double));
    double *xb = sd__lik_scratch(lk, SL_XB, R * D * sizeof(double));
    float *xf = sd__lik_scratch(lk, SL_XF, 3 * R * D * sizeof(float));
    sd_rng *rng = sd__lik_scratch(lk, SL_RNG, R * sizeof(sd_rng));
    /* misc: acc [R], q [R P], mu [D], r [D], (iso + Hutchinson) probes [R P D] */
    size_t nprobe = dec == SD_LIK_DEC_ISO && !exact ? R * (size_t)P * D : 0;
    double *acc = sd__lik_scratch(lk, SL_MISC, (R + R * (size_t)P + 2 * D) * sizeof(double) +
                                                   nprobe * sizeof(float));
    size_t jac_n = dec == SD_LIK_DEC_FULL ? R * D * D + D * D : 1;
    double *J = sd__lik_scratch(lk, SL_JAC, jac_n * sizeof(double));
    if (!xa || !xb || !xf || !rng || !acc || !J) return SD_ERR_NOMEM;
    double *q = acc + R, *mu = q + R * P, *rw = mu + D;
    float *probes = nprobe ? (float *)(rw + D) : NULL;
    float *s = xf + R * D, *aux = s + R * D;
    double *M = J + R * D * D;

    sd_rng base;
    sd_rng_init(&base, cf->seed, SD_STREAM_SAMPLER);
    for (size_t it = 0; it < nc; it++) {
        sd_rng item;
        sd_rng_split(&base, index0 + it, &item);
        for (int k = 0; k < K; k++) {
            size_t r = it * (size_t)K + k;
            sd_rng_split(&item, (uint64_t)k, &rng[r]);
            for (size_t i = 0; i < D; i++) xa[r * D + i] = x[it * D + i];
            acc[r] = 0.0;
        }
    }
    if (probes) { /* shared by every row and item: one fixed decoder */
        sd_rng pbase, pr;
        sd_rng_init(&pbase, cf->seed, SD_STREAM_PROBE);
        sd_rng_split(&pbase, UINT64_C(1) << 63, &pr); /* apart from the ODE's per-item probes */
        if (cf->probe == SD_LIK_PROBE_GAUSSIAN)
            sd_rng_fill_normal(&pr, probes, (size_t)P * D, 0, 1);
        else
            sd_rng_fill_rademacher(&pr, probes, (size_t)P * D);
        for (size_t r = 1; r < R; r++)
            memcpy(probes + r * P * D, probes, (size_t)P * D * sizeof(float));
    }

    for (int i = 1; i <= N; i++) {
        double t0 = cf->eps + (cf->T - cf->eps) * (i - 1) / N;
        double t1 = i == N ? cf->T : cf->eps + (cf->T - cf->eps) * i / N;
        double al = sd_sde_mean_coef(sde, t1) / sd_sde_mean_coef(sde, t0);
        double s0 = sd_sde_sigma(sde, t0), s1 = sd_sde_sigma(sde, t1);
        double be = s1 * s1 - al * al * s0 * s0;
        if (!(be > 0))
            return sd_error(SD_ERR_NUMERIC, "elbo: transition variance %g <= 0 at t = %g (too "
                                            "many steps for double precision?)", be, t1);
        /* encoder: x_i = al x_{i-1} + sqrt(be) z, log q from z itself */
        double lq0 = -0.5 * (double)D * (log(be) + LOG_2PI), sb = sqrt(be);
        for (size_t r = 0; r < R; r++) {
            double zz = 0.0;
            for (size_t j = 0; j < D; j++) {
                double z = sd_rng_normal(&rng[r]);
                zz += z * z;
                xb[r * D + j] = al * xa[r * D + j] + sb * z;
                xf[r * D + j] = (float)xb[r * D + j];
            }
            acc[r] -= lq0 - 0.5 * zz;
        }
        /* decoder p(x_{i-1} | x_i): needs s(x_i, t_i) and, for iso/full, grad s */
        sd_status st;
        if (dec == SD_LIK_DEC_FULL) st = sd__lik_score_jacobian(lk, xf, R, t1, s, J);
        else if (dec == SD_LIK_DEC_ISO) st = sd__lik_score_quad(lk, xf, R, t1, probes, P, 0, s, q);
        else st = sd__lik_score(lk, xf, R, t1, s);
        if (st != SD_OK) return st;
        if (dec == SD_LIK_DEC_EM) {
            double dt = t1 - t0, var = sd_sde_g2(sde, t1) * dt;
            float *drift = aux;
            if ((st = sd_sde_drift(sde, t1, xf, drift, R, D)) != SD_OK ||
                (st = sd_sde_apply_GGT(sde, t1, NULL, s, xf, R, D)) != SD_OK) /* xf now free */
                return st;
            for (size_t r = 0; r < R; r++) {
                for (size_t j = 0; j < D; j++)
                    mu[j] = xb[r * D + j] - ((double)drift[r * D + j] - xf[r * D + j]) * dt;
                acc[r] += log_normal_iso(xa + r * D, mu, var, D);
            }
        } else {
            double ia = 1.0 / al, floor_var = 1e-3 * be * ia * ia;
            for (size_t r = 0; r < R; r++) {
                for (size_t j = 0; j < D; j++) mu[j] = (xb[r * D + j] + be * s[r * D + j]) * ia;
                double lp = NAN, tr = 0.0;
                if (dec == SD_LIK_DEC_FULL) {
                    const double *Jr = J + r * D * D;
                    for (size_t a = 0; a < D; a++) {
                        tr += Jr[a * D + a];
                        for (size_t b = 0; b < D; b++)
                            M[a * D + b] =
                                (be * be * Jr[a * D + b] + (a == b ? be : 0.0)) * ia * ia;
                    }
                    lp = log_normal_full(xa + r * D, mu, M, rw, D);
                } else {
                    for (int j = 0; j < P; j++) tr += q[r * P + j];
                    tr /= P;
                }
                if (isnan(lp)) { /* iso, or a learned Jacobian without a PD covariance */
                    double var = (be + be * be * tr / (double)D) * ia * ia;
                    lp = log_normal_iso(xa + r * D, mu, var > floor_var ? var : floor_var, D);
                }
                acc[r] += lp;
            }
        }
        double *tmp = xa;
        xa = xb;
        xb = tmp;
        if (cf->progress) cf->progress(cf->progress_ctx, (double)i / N);
    }
    /* prior p(x_N) */
    for (size_t r = 0; r < R * D; r++) xf[r] = (float)xa[r];
    sd_status st = sd__lik_prior_logp(lk, xf, R, q);
    if (st != SD_OK) return st;
    for (size_t r = 0; r < R; r++) {
        logw[r] = acc[r] + q[r];
        if (isnan(logw[r]))
            return sd_error(SD_ERR_NUMERIC, "elbo: log-weight is NaN (item %llu)",
                            (unsigned long long)(index0 + r / (size_t)K));
    }
    return SD_OK;
}

sd_status sd_lik_elbo(sd_lik *lk, const float *x, size_t n, uint64_t index0, int K, double *logw,
                      int64_t *nfe)
{
    if (K < 1 || K > 1000000) return sd_error(SD_ERR_INVALID, "elbo: K must be in [1, 1e6]");
    const sd_sde *sde = &sd__lik_model(lk)->sde;
    /* The encoder's one-step kernels and the decoders below are written with
     * the scalars a(t), sigma(t) of the isotropic families. */
    if (!sd_sde_is_isotropic(sde))
        return sd_error(SD_ERR_INVALID, "elbo: the ELBO/IWAE chains use the scalar transitions of "
                                        "an isotropic family (ncsn, ve, vp, subvp), not %s; use "
                                        "the ode method", sd_sde_name(sde));
    const sd_lik_config *cf = sd_lik_get_config(lk);
    size_t D = sd__lik_model(lk)->D;
    /* Rows alive at once: as many as ~64 MiB of chain state and Jacobians
     * allow (the oracles split model calls into `batch` rows themselves, and
     * the gmm refactors its components once per time, so bigger is faster),
     * but at least `batch` rows and at least one item. */
    size_t row_bytes = D * (2 * sizeof(double) + 3 * sizeof(float)) + 4 * sizeof(double) +
                       (cf->decoder == SD_LIK_DEC_FULL ? D * D * sizeof(double) : 0) +
                       (size_t)cf->probes * (D * sizeof(float) + sizeof(double));
    size_t rows = ((size_t)64 << 20) / row_bytes;
    if (rows < (size_t)cf->batch) rows = (size_t)cf->batch;
    if (rows > 65536) rows = 65536;
    size_t per = rows / (size_t)K;
    if (per < 1) per = 1;
    for (size_t i0 = 0; i0 < n; i0 += per) {
        size_t nc = n - i0 < per ? n - i0 : per;
        sd_status st = elbo_chunk(lk, x + i0 * D, nc, index0 + i0, K, logw + i0 * (size_t)K);
        if (st != SD_OK) return st;
    }
    if (nfe) *nfe = (int64_t)cf->steps * K;
    return SD_OK;
}

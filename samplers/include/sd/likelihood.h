/* likelihood.h - log-likelihoods of score models: two independent estimators
 * of log p_eps(x), the model's density at the small time eps where sampling
 * ends, plus the bookkeeping that turns them into bits per dimension.
 *
 * 1. Probability-flow ODE (Song et al. 2021, "Score-Based Generative Modeling
 *    through SDEs", Sec. 4.3 and App. D.2). The ODE
 *        dx/dt = f~(x, t) = f(x, t) - 1/2 G G^T s(x, t)
 *    moves p_eps to p_T, and by the instantaneous change of variables (Chen et
 *    al. 2018, "Neural ODEs", Thm. 1)
 *        log p_eps(x) = log p_T(x_T) + int_eps^T div f~(x_t, t) dt.
 *    [x, accumulated divergence] is solved with adaptive RK45 (samplers/include/sd/ode.h).
 *    div f~ = div f - 1/2 tr(G G^T grad s) is exact (one vector-Jacobian
 *    product per dimension; the analytic Hessian for the gmm) or Hutchinson's
 *    estimator v^T (grad f~) v = v^T F v - 1/2 v^T G G^T (grad s) v with
 *    Rademacher or Gaussian probes v, each fixed along its trajectory
 *    (Grathwohl et al. 2019, FFJORD, Sec. 3.1; one VJP per probe).
 *    Every probe has its own accumulator, so one solve yields P unbiased
 *    estimates whose spread is the probe standard error.
 *
 * 2. ELBO / IWAE (Burda et al. 2016, "Importance Weighted Autoencoders").
 *    [eps, T] is split into N equal steps t_0 = eps < ... < t_N = T. The
 *    encoder q(x_1..x_N | x_0) is the forward process's exact Gaussian
 *    transitions, the decoder p(x_{i-1} | x_i) a Gaussian reverse step built
 *    from the score, p(x_N) the prior;
 *        log w = log p(x_N) + sum_i log p(x_{i-1}|x_i) - sum_i log q(x_i|x_{i-1}),
 *    ELBO = E log w, IWAE_K = E log (1/K) sum_k w_k (log-sum-exp).
 *    Decoders (see elbo.c for the derivations). With the one-step kernel
 *    x_i = al x_{i-1} + sqrt(be) z, Tweedie's formula gives the exact mean
 *    (x_i + be s) / al and covariance (be I + be^2 grad s) / al^2 of the true
 *    reverse conditional q(x_{i-1} | x_i) (Efron 2011; Meng et al. 2021):
 *      full  N(mean, that covariance), grad s the symmetrised score Jacobian
 *            (D VJPs; the gmm's Hessian): moment matched, and exact for
 *            Gaussian data, where ELBO = IWAE = log p_eps for any N.
 *      iso   the same mean, variance tr(Cov) / D, the trace exact or by
 *            Hutchinson probes shared by all items (one VJP each per step).
 *      em    Euler-Maruyama step of the reverse SDE (Song et al. 2021, eq. 6):
 *            mean x_i - (f - G G^T s) dt, covariance G G^T dt: the loose
 *            baseline.
 *    With the exact gmm score `full` is tight (gap 0.007 nats at N = 100 in
 *    16-D VE) where `iso` leaves 0.24 and `em` 12 nats.
 *
 * Matrix-valued families (sde.h): the ODE estimator works with all of them
 * (G G^T through the family's operators; for state the divergence also holds
 * the div[G G^T] terms, see likelihood.c); ELBO/IWAE need the isotropic
 * families' scalar transitions and refuse the others (SD_ERR_INVALID).
 *
 * Priors: the family's N(0, sigma_max^2 I) / N(0, I) (sd_sde_prior_logp), or
 * for the analytic gmm its own exact p_T (SD_LIK_PRIOR_MODEL, the AUTO choice
 * for gmm), which makes the reported log p exactly the model's p_eps.
 *
 * Images: the data x in [0, 1]^D is the dequantised (k + u)/256; the model
 * may see y = T(x) (data_transform "centred": y = 2x - 1). Then
 *     log p(x) = log p_model(y) + log|det dy/dx|,
 *     bits/dim = -(log p(x) - D log 256) / (D ln 2).
 *
 *     sd_lik_config cfg = sd_lik_config_default();
 *     cfg.div = SD_LIK_DIV_HUTCHINSON; cfg.probes = 4;
 *     sd_lik *lk;
 *     if (sd_lik_new(model, &cfg, &lk) != SD_OK) puts(sd_error_message());
 *     double logp[16], se[16]; int64_t nfe;
 *     sd_lik_ode(lk, x, 16, first_index, logp, se, &nfe);   // x [16, D]
 *     double logw[16 * 50];
 *     sd_lik_elbo(lk, x, 16, first_index, 50, logw, &nfe);  // K = 50 each
 *     double iwae5 = sd_lik_iwae(logw, 50, 5);               // item 0
 *     sd_lik_free(lk);
 *
 * Randomness: item i (global index index0 + i) draws its probes from
 * sd_rng_split(seed/SD_STREAM_PROBE, i) and its chains from
 * sd_rng_split(seed/SD_STREAM_SAMPLER, i), so results do not depend on how
 * items are batched (except the ODE's shared adaptive steps, within rtol).
 *
 * Ownership and threading: an sd_lik borrows the model (which must outlive
 * it) and owns its graph and buffers; one thread at a time. For networks the
 * parameters are marked non-trainable during each call (restored after), so
 * vector-Jacobian products compute input gradients only.
 *
 * Errors: SD_ERR_INVALID (bad config: eps outside (0, T), tolerances <= 0,
 * K < 1, ...), SD_ERR_NOMEM, SD_ERR_NUMERIC (non-finite score or a failed
 * integration), and whatever the model returns.
 */
#ifndef SD_LIKELIHOOD_H
#define SD_LIKELIHOOD_H

#include <stdint.h>

#include "sd/score_model.h"

typedef enum sd_lik_div {
    SD_LIK_DIV_AUTO = 0,   /* exact if D <= 64, else Hutchinson */
    SD_LIK_DIV_EXACT,      /* D vector-Jacobian products (gmm: Hessian) */
    SD_LIK_DIV_HUTCHINSON  /* `probes` probes, one VJP each */
} sd_lik_div;

typedef enum sd_lik_probe { SD_LIK_PROBE_RADEMACHER = 0, SD_LIK_PROBE_GAUSSIAN } sd_lik_probe;

typedef enum sd_lik_prior {
    SD_LIK_PRIOR_AUTO = 0, /* MODEL for gmm, FAMILY for networks */
    SD_LIK_PRIOR_FAMILY,   /* sd_sde_prior_logp */
    SD_LIK_PRIOR_MODEL     /* the gmm's exact p_T (gmm only) */
} sd_lik_prior;

typedef enum sd_lik_decoder {
    SD_LIK_DEC_AUTO = 0, /* full if D <= 64, else iso */
    SD_LIK_DEC_EM,
    SD_LIK_DEC_ISO,
    SD_LIK_DEC_FULL
} sd_lik_decoder;

typedef struct sd_lik_config {
    double eps;          /* start time; < 0: sd_sde_default_eps (1e-5 ve/vp) */
    double T;            /* end time (1) */
    /* probability-flow ODE */
    double rtol, atol;   /* RK45 tolerances (1e-5, 1e-5) */
    sd_lik_div div;
    sd_lik_probe probe;
    int probes;          /* Hutchinson probes per item (1) */
    double ref_var;      /* control variate: data variance c of the Gaussian
                            whose divergence integral is subtracted and added
                            back in closed form (1; any c > 0 is unbiased) */
    /* ELBO / IWAE */
    int steps;           /* N (100) */
    sd_lik_decoder decoder;
    /* both */
    sd_lik_prior prior;
    int batch;           /* rows per model evaluation (64) */
    uint64_t seed;
    /* optional: called after every accepted ODE step / chain step with the
     * fraction of [eps, T] done in the current call (progress displays) */
    void (*progress)(void *ctx, double frac);
    void *progress_ctx;
} sd_lik_config;

sd_lik_config sd_lik_config_default(void);

typedef struct sd_lik sd_lik;

sd_status sd_lik_new(sd_model *m, const sd_lik_config *cfg, sd_lik **out);
void sd_lik_free(sd_lik *lk);
/* The configuration with AUTO choices resolved (eps, div, decoder, prior). */
const sd_lik_config *sd_lik_get_config(const sd_lik *lk);

/* log p_eps (nats) of n points x [n, D] (model space) by the probability-flow
 * ODE, all n points in one adaptive solve. logp [n] is the mean over probes;
 * probe_se [n] (may be NULL) its standard error over the probes (0 for exact
 * divergence or one probe); *nfe (may be NULL) the number of drift
 * evaluations. */
sd_status sd_lik_ode(sd_lik *lk, const float *x, size_t n, uint64_t index0, double *logp,
                     double *probe_se, int64_t *nfe);

/* K importance weights per point: logw [n, K] (log w of each chain, see the
 * overview). *nfe (may be NULL): score evaluations per point (N K). */
sd_status sd_lik_elbo(sd_lik *lk, const float *x, size_t n, uint64_t index0, int K, double *logw,
                      int64_t *nfe);

/* From K log-weights of one point: the mean over the floor(K/k) disjoint
 * groups of k of log (1/k) sum exp(log w) (max-subtracted log-sum-exp).
 * k = 1 is the ELBO estimate, k = K the IWAE_K estimate. */
double sd_lik_iwae(const double *logw, int K, int k);

/* ---- data transform and bits per dimension ------------------------------ */
typedef enum sd_lik_xform {
    SD_LIK_XFORM_IDENTITY = 0, /* points, or images modelled in [0, 1] */
    SD_LIK_XFORM_UNIT,         /* checkpoint "unit": [0, 1] images, y = x */
    SD_LIK_XFORM_CENTRED       /* "centred"/"centered"/"symmetric": y = 2x - 1 */
} sd_lik_xform;

/* Checkpoint metadata name -> transform; unknown names are SD_ERR_INVALID. */
sd_status sd_lik_xform_parse(const char *name, sd_lik_xform *out);
/* y = T(x) for count values. */
void sd_lik_xform_apply(sd_lik_xform xf, const float *x, float *y, size_t count);
/* log |det dy/dx| for D dimensions (D log 2 for centred). */
double sd_lik_xform_logdet(sd_lik_xform xf, size_t D);
/* bits/dim of a dequantised image in [0, 1]^D with 256 bins per value, from
 * its data-space log-density (nats): -(logp - D log 256) / (D ln 2). */
double sd_lik_bits_per_dim(double logp_data, size_t D);

/* ---- running mean and standard error (Welford) -------------------------- */
typedef struct sd_lik_stats {
    size_t n;
    double mean, m2;
} sd_lik_stats;
void sd_lik_stats_add(sd_lik_stats *s, double v);
/* Standard error of the mean, sqrt(var / n) with the unbiased variance (0 for n < 2). */
double sd_lik_stats_se(const sd_lik_stats *s);

#endif

/* family_isotropic.c - the isotropic noise families ncsn, ve, vp and subvp
 * (sd/sde.h has the formulas: Song & Ermon 2019; Song et al. 2021, App. B
 * and eq. 29). A, Sigma, F and G are multiples of I, so every operator is a
 * scaling by a(t), sigma(t), f(t) or g(t); the four tables share the
 * operators and differ in their schedules (iso_sched, the table's impl). */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "sd/rng.h"
#include "sd/sde_family.h"

/* f(t) of F = f I and the prior's standard deviation. */
typedef struct {
    double (*drift_coef)(const sd_sde *s, double t);
    double prior_std; /* 0: sigma_max */
} iso_sched;

static const iso_sched *sched(const sd_sde *s) { return s->family->impl; }

static double drift_coef(const sd_sde *s, double t) { return sched(s)->drift_coef(s, t); }

static double prior_std(const sd_sde *s)
{
    return sched(s)->prior_std > 0 ? sched(s)->prior_std : s->sigma_max;
}

/* ---- schedules --------------------------------------------------------------------- */

static double zero_drift(const sd_sde *s, double t)
{
    (void)s, (void)t;
    return 0.0;
}

/* log alpha(t) = -t^2 (b1 - b0)/4 - t b0/2: the integral of -beta/2 (Song App. B). */
static double vp_log_alpha(const sd_sde *s, double t)
{
    return -0.25 * t * t * (s->beta_max - s->beta_min) - 0.5 * t * s->beta_min;
}

static double vp_beta(const sd_sde *s, double t)
{
    return s->beta_min + t * (s->beta_max - s->beta_min);
}

static double vp_mean_coef(const sd_sde *s, double t) { return exp(vp_log_alpha(s, t)); }
static double vp_drift(const sd_sde *s, double t) { return -0.5 * vp_beta(s, t); }
static double vp_sigma(const sd_sde *s, double t) { return sqrt(-expm1(2.0 * vp_log_alpha(s, t))); }
static double vp_g2(const sd_sde *s, double t) { return vp_beta(s, t); }
static double subvp_sigma(const sd_sde *s, double t) { return -expm1(2.0 * vp_log_alpha(s, t)); }

/* beta(t) (1 - exp(-2 int_0^t beta)), Song et al. eq. 29 */
static double subvp_g2(const sd_sde *s, double t)
{
    return vp_beta(s, t) * -expm1(4.0 * vp_log_alpha(s, t));
}

/* ---- spec ------------------------------------------------------------------------------ */

static void ve_defaults(sd_sde *s)
{
    s->sigma_min = 0.01;
    s->sigma_max = 50.0;
}

static void ncsn_defaults(sd_sde *s)
{
    ve_defaults(s);
    s->levels = 10;
}

static void vp_defaults(sd_sde *s)
{
    s->beta_min = 0.1;
    s->beta_max = 20.0;
}

static sd_status ncsn_key(sd_sde *s, const char *spec, const char *key, const char *val,
                          bool *known)
{
    if (strcmp(key, "L") != 0) return sd_sde_ve_key(s, spec, key, val, known);
    *known = true;
    double v = 0.0;
    sd_status st = sd_sde_parse_number(spec, key, val, &v);
    if (st != SD_OK) return st;
    if (v != floor(v) || v < 2 || v > 100000)
        return sd_error(SD_ERR_INVALID, "sde %s: L must be an integer >= 2", spec);
    s->levels = (int)v;
    return SD_OK;
}

static sd_status vp_key(sd_sde *s, const char *spec, const char *key, const char *val,
                        bool *known)
{
    *known = strcmp(key, "beta_min") == 0 || strcmp(key, "beta_max") == 0;
    if (!*known) return SD_OK;
    double v = 0.0;
    sd_status st = sd_sde_parse_number(spec, key, val, &v);
    if (st != SD_OK) return st;
    if (strcmp(key, "beta_min") == 0) s->beta_min = v;
    else s->beta_max = v;
    return SD_OK;
}

static sd_status vp_finish(sd_sde *s, const char *spec, const char *cov_json)
{
    (void)cov_json;
    if (!(s->beta_min > 0 && s->beta_max >= s->beta_min))
        return sd_error(SD_ERR_INVALID, "sde %s: need 0 < beta_min <= beta_max", spec);
    return SD_OK;
}

static void ncsn_string(const sd_sde *s, char *buf, size_t len)
{
    snprintf(buf, len, "ncsn:sigma_min=%.9g,sigma_max=%.9g,L=%d", s->sigma_min, s->sigma_max,
             s->levels);
}

static void ve_string(const sd_sde *s, char *buf, size_t len)
{
    snprintf(buf, len, "%s:sigma_min=%.9g,sigma_max=%.9g", sd_sde_name(s), s->sigma_min,
             s->sigma_max);
}

static void vp_string(const sd_sde *s, char *buf, size_t len)
{
    snprintf(buf, len, "%s:beta_min=%.9g,beta_max=%.9g", sd_sde_name(s), s->beta_min,
             s->beta_max);
}

/* ---- operators: scalings ---------------------------------------------------------------- */

static sd_status iso_mean(const sd_sde *s, double t, const float *x0, float *out, size_t n,
                          size_t D)
{
    sd_sde_scale_batch(sd_sde_mean_coef(s, t), x0, out, n, D);
    return SD_OK;
}

static sd_status iso_std(const sd_sde *s, double t, const float *z, float *out, size_t n,
                         size_t D)
{
    sd_sde_scale_batch(sd_sde_sigma(s, t), z, out, n, D);
    return SD_OK;
}

static sd_status iso_inv_cov(const sd_sde *s, double t, const float *v, float *out, size_t n,
                             size_t D)
{
    double sig = sd_sde_sigma(s, t);
    sd_sde_scale_batch(1.0 / (sig * sig), v, out, n, D);
    return SD_OK;
}

static sd_status iso_drift(const sd_sde *s, double t, const float *x, float *out, size_t n,
                           size_t D)
{
    sd_sde_scale_batch(drift_coef(s, t), x, out, n, D);
    return SD_OK;
}

static sd_status iso_G(const sd_sde *s, double t, const float *x, const float *z, float *out,
                       size_t n, size_t D)
{
    (void)x;
    sd_sde_scale_batch(sqrt(sd_sde_g2(s, t)), z, out, n, D);
    return SD_OK;
}

static sd_status iso_GGT(const sd_sde *s, double t, const float *x, const float *v, float *out,
                         size_t n, size_t D)
{
    (void)x;
    sd_sde_scale_batch(sd_sde_g2(s, t), v, out, n, D);
    return SD_OK;
}

static double iso_drift_divergence(const sd_sde *s, double t, size_t D)
{
    return drift_coef(s, t) * (double)D;
}

static sd_status iso_tweedie(const sd_sde *s, double t, const float *x, const float *score,
                             float *out, size_t n, size_t D)
{
    double sig = sd_sde_sigma(s, t), s2 = sig * sig;
    double a = sd_sde_mean_coef(s, t);
    float c1 = (float)(1.0 / a), c2 = (float)(s2 / a);
    for (size_t i = 0; i < n * D; i++) out[i] = c1 * x[i] + c2 * score[i];
    return SD_OK;
}

static sd_status iso_modes(const sd_sde *s, double t, size_t D, double *a, double *var,
                           double *f, double *gg)
{
    double sig = sd_sde_sigma(s, t), s2 = sig * sig;
    for (size_t k = 0; k < D; k++) {
        double ac = sd_sde_mean_coef(s, t);
        if (a) a[k] = ac;
        if (var) var[k] = s2;
        if (f) f[k] = drift_coef(s, t);
        if (gg) gg[k] = sd_sde_g2(s, t);
    }
    return SD_OK;
}

static sd_status iso_to_modes(const sd_sde *s, const float *v, float *out, size_t n, size_t D)
{
    (void)s;
    if (out != v) memcpy(out, v, n * D * sizeof(float));
    return SD_OK;
}

static sd_status iso_prior_sample(const sd_sde *s, sd_rng *rng, float *x, size_t n, size_t D)
{
    sd_rng_fill_normal(rng, x, n * D, 0.0f, (float)prior_std(s));
    return SD_OK;
}

static double iso_prior_logp(const sd_sde *s, const float *x, size_t D)
{
    return sd_sde_iso_normal_logp(x, D, prior_std(s));
}

static sd_status iso_kernel_dense(const sd_sde *s, double t, size_t D, double *A, double *Sigma)
{
    double a = sd_sde_mean_coef(s, t), sig = sd_sde_sigma(s, t);
    for (size_t i = 0; i < D; i++)
        for (size_t j = 0; j < D; j++) {
            A[i * D + j] = i == j ? a : 0.0;
            Sigma[i * D + j] = i == j ? sig * sig : 0.0;
        }
    return SD_OK;
}

/* ---- the tables --------------------------------------------------------------------------- */

static const iso_sched ve_sched = {zero_drift, 0.0};
static const iso_sched vp_sched = {vp_drift, 1.0};

#define ISO_OPERATORS                                                                         \
    .apply_mean = iso_mean, .apply_std = iso_std, .apply_inv_cov = iso_inv_cov,               \
    .drift = iso_drift, .apply_G = iso_G, .apply_GGT = iso_GGT,                               \
    .drift_divergence = iso_drift_divergence, .tweedie = iso_tweedie, .modes = iso_modes,     \
    .to_modes = iso_to_modes, .prior_sample = iso_prior_sample, .prior_logp = iso_prior_logp, \
    .kernel_dense = iso_kernel_dense

const sd_sde_family sd_sde_family_ncsn = {
    .name = "ncsn", .keys = "sigma_min, sigma_max, L",
    .flags = SD_SDE_ISOTROPIC | SD_SDE_DISCRETE_LEVELS | SD_SDE_NCSNV2_SIGMA,
    .impl = &ve_sched, .defaults = ncsn_defaults, .set_key = ncsn_key,
    .finish = sd_sde_ve_finish, .to_string = ncsn_string,
    .sigma = sd_sde_ve_sigma, .g2 = sd_sde_ve_g2, ISO_OPERATORS,
};

const sd_sde_family sd_sde_family_ve = {
    .name = "ve", .keys = "sigma_min, sigma_max",
    .flags = SD_SDE_ISOTROPIC | SD_SDE_NCSNV2_SIGMA,
    .impl = &ve_sched, .defaults = ve_defaults, .set_key = sd_sde_ve_key,
    .finish = sd_sde_ve_finish, .to_string = ve_string,
    .sigma = sd_sde_ve_sigma, .g2 = sd_sde_ve_g2, ISO_OPERATORS,
};

#define VP_FLAGS \
    (SD_SDE_ISOTROPIC | SD_SDE_CENTERED_DATA | SD_SDE_COND_TIME | SD_SDE_DEGENERATE_AT_ZERO)

const sd_sde_family sd_sde_family_vp = {
    .name = "vp", .keys = "beta_min, beta_max", .flags = VP_FLAGS,
    .impl = &vp_sched, .defaults = vp_defaults, .set_key = vp_key,
    .finish = vp_finish, .to_string = vp_string,
    .sigma = vp_sigma, .mean_coef = vp_mean_coef, .g2 = vp_g2, ISO_OPERATORS,
};

const sd_sde_family sd_sde_family_subvp = {
    .name = "subvp", .keys = "beta_min, beta_max", .flags = VP_FLAGS,
    .impl = &vp_sched, .defaults = vp_defaults, .set_key = vp_key,
    .finish = vp_finish, .to_string = vp_string,
    .sigma = subvp_sigma, .mean_coef = vp_mean_coef, .g2 = subvp_g2, ISO_OPERATORS,
};

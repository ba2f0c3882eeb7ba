/* sde.c - the isotropic noise families (ncsn, ve, vp, subvp); see sde.h for
 * the formulas (Song et al. 2021, App. B; Song & Ermon 2019). */
#include "sd/sde.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sd/rng.h"

static const double SD_LOG_2PI = 1.8378770664093453;

static sd_status parse_number(const char *spec, const char *key, const char *val, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(val, &end);
    if (end == val || *end != '\0' || errno == ERANGE || !isfinite(v))
        return sd_error(SD_ERR_INVALID, "--sde %s: %s=%s is not a number", spec, key, val);
    *out = v;
    return SD_OK;
}

sd_status sd_sde_parse(const char *spec, sd_sde *out)
{
    char buf[256];
    if (!spec || strlen(spec) >= sizeof buf)
        return sd_error(SD_ERR_INVALID, "--sde: missing or over-long spec");
    memcpy(buf, spec, strlen(spec) + 1);
    char *colon = strchr(buf, ':');
    if (colon) *colon = '\0';
    sd_sde s = {0};
    if (strcmp(buf, "ncsn") == 0) {
        s = (sd_sde){.kind = SD_SDE_NCSN, .sigma_min = 0.01, .sigma_max = 50.0, .levels = 10};
    } else if (strcmp(buf, "ve") == 0) {
        s = (sd_sde){.kind = SD_SDE_VE, .sigma_min = 0.01, .sigma_max = 50.0};
    } else if (strcmp(buf, "vp") == 0) {
        s = (sd_sde){.kind = SD_SDE_VP, .beta_min = 0.1, .beta_max = 20.0};
    } else if (strcmp(buf, "subvp") == 0) {
        s = (sd_sde){.kind = SD_SDE_SUBVP, .beta_min = 0.1, .beta_max = 20.0};
    } else {
        return sd_error(SD_ERR_INVALID, "--sde %s: unknown family '%s' (ncsn, ve, vp, subvp)", spec,
                        buf);
    }
    bool sigma_family = s.kind == SD_SDE_NCSN || s.kind == SD_SDE_VE;
    for (char *kv = colon ? colon + 1 : NULL; kv && *kv;) {
        char *next = strchr(kv, ',');
        if (next) *next++ = '\0';
        char *eq = strchr(kv, '=');
        if (!eq) return sd_error(SD_ERR_INVALID, "--sde %s: expected key=value, got '%s'", spec, kv);
        *eq = '\0';
        const char *key = kv, *val = eq + 1;
        double v = 0.0;
        sd_status st = parse_number(spec, key, val, &v);
        if (st != SD_OK) return st;
        if (sigma_family && strcmp(key, "sigma_min") == 0) s.sigma_min = v;
        else if (sigma_family && strcmp(key, "sigma_max") == 0) s.sigma_max = v;
        else if (s.kind == SD_SDE_NCSN && strcmp(key, "L") == 0) {
            if (v != floor(v) || v < 2 || v > 100000)
                return sd_error(SD_ERR_INVALID, "--sde %s: L must be an integer >= 2", spec);
            s.levels = (int)v;
        } else if (!sigma_family && strcmp(key, "beta_min") == 0) s.beta_min = v;
        else if (!sigma_family && strcmp(key, "beta_max") == 0) s.beta_max = v;
        else
            return sd_error(SD_ERR_INVALID, "--sde %s: key '%s' does not apply to %s", spec, key,
                            buf);
        kv = next;
    }
    if (sigma_family && !(s.sigma_min > 0 && s.sigma_max > s.sigma_min))
        return sd_error(SD_ERR_INVALID, "--sde %s: need 0 < sigma_min < sigma_max", spec);
    if (!sigma_family && !(s.beta_min > 0 && s.beta_max >= s.beta_min))
        return sd_error(SD_ERR_INVALID, "--sde %s: need 0 < beta_min <= beta_max", spec);
    *out = s;
    return SD_OK;
}

const char *sd_sde_name(const sd_sde *s)
{
    switch (s->kind) {
    case SD_SDE_NCSN: return "ncsn";
    case SD_SDE_VE: return "ve";
    case SD_SDE_VP: return "vp";
    case SD_SDE_SUBVP: return "subvp";
    }
    return "?";
}

void sd_sde_to_string(const sd_sde *s, char *buf, size_t len)
{
    switch (s->kind) {
    case SD_SDE_NCSN:
        snprintf(buf, len, "ncsn:sigma_min=%.9g,sigma_max=%.9g,L=%d", s->sigma_min, s->sigma_max,
                 s->levels);
        break;
    case SD_SDE_VE:
        snprintf(buf, len, "ve:sigma_min=%.9g,sigma_max=%.9g", s->sigma_min, s->sigma_max);
        break;
    case SD_SDE_VP:
    case SD_SDE_SUBVP:
        snprintf(buf, len, "%s:beta_min=%.9g,beta_max=%.9g", sd_sde_name(s), s->beta_min,
                 s->beta_max);
        break;
    }
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

double sd_sde_mean_coef(const sd_sde *s, double t)
{
    if (s->kind == SD_SDE_VP || s->kind == SD_SDE_SUBVP) return exp(vp_log_alpha(s, t));
    return 1.0;
}

double sd_sde_sigma(const sd_sde *s, double t)
{
    switch (s->kind) {
    case SD_SDE_NCSN:
    case SD_SDE_VE: return s->sigma_min * pow(s->sigma_max / s->sigma_min, t);
    case SD_SDE_VP: return sqrt(-expm1(2.0 * vp_log_alpha(s, t)));
    case SD_SDE_SUBVP: return -expm1(2.0 * vp_log_alpha(s, t));
    }
    return NAN;
}

double sd_sde_cond(const sd_sde *s, double t)
{
    if (s->kind == SD_SDE_NCSN || s->kind == SD_SDE_VE) return log(sd_sde_sigma(s, t));
    return t;
}

double sd_sde_g2(const sd_sde *s, double t)
{
    switch (s->kind) {
    case SD_SDE_NCSN:
    case SD_SDE_VE: {
        /* d sigma(t)^2 / dt = 2 sigma^2 log(sigma_max / sigma_min) */
        double sig = sd_sde_sigma(s, t);
        return 2.0 * sig * sig * log(s->sigma_max / s->sigma_min);
    }
    case SD_SDE_VP: return vp_beta(s, t);
    case SD_SDE_SUBVP:
        /* beta(t) (1 - exp(-2 int_0^t beta)), Song et al. eq. 29 */
        return vp_beta(s, t) * -expm1(4.0 * vp_log_alpha(s, t));
    }
    return NAN;
}

double sd_sde_default_eps(const sd_sde *s)
{
    return s->kind == SD_SDE_NCSN ? 0.0 : 1e-5;
}

int sd_sde_levels(const sd_sde *s)
{
    return s->kind == SD_SDE_NCSN ? s->levels : 0;
}

double sd_sde_level_time(const sd_sde *s, int i)
{
    if (s->kind != SD_SDE_NCSN || s->levels < 2) return 1.0;
    return 1.0 - (double)i / (double)(s->levels - 1);
}

static double drift_coef(const sd_sde *s, double t)
{
    if (s->kind == SD_SDE_VP || s->kind == SD_SDE_SUBVP) return -0.5 * vp_beta(s, t);
    return 0.0;
}

static void scale_batch(double c, const float *in, float *out, size_t n, size_t D)
{
    size_t total = n * D;
    float cf = (float)c;
    for (size_t i = 0; i < total; i++) out[i] = cf * in[i];
}

void sd_sde_apply_mean(const sd_sde *s, double t, const float *x0, float *out, size_t n, size_t D)
{
    scale_batch(sd_sde_mean_coef(s, t), x0, out, n, D);
}

void sd_sde_apply_std(const sd_sde *s, double t, const float *z, float *out, size_t n, size_t D)
{
    scale_batch(sd_sde_sigma(s, t), z, out, n, D);
}

void sd_sde_apply_inv_cov(const sd_sde *s, double t, const float *v, float *out, size_t n, size_t D)
{
    double sig = sd_sde_sigma(s, t);
    scale_batch(1.0 / (sig * sig), v, out, n, D);
}

void sd_sde_drift(const sd_sde *s, double t, const float *x, float *out, size_t n, size_t D)
{
    scale_batch(drift_coef(s, t), x, out, n, D);
}

void sd_sde_apply_G(const sd_sde *s, double t, const float *z, float *out, size_t n, size_t D)
{
    scale_batch(sqrt(sd_sde_g2(s, t)), z, out, n, D);
}

void sd_sde_apply_GGT(const sd_sde *s, double t, const float *v, float *out, size_t n, size_t D)
{
    scale_batch(sd_sde_g2(s, t), v, out, n, D);
}

double sd_sde_drift_divergence(const sd_sde *s, double t, size_t D)
{
    return drift_coef(s, t) * (double)D;
}

static double prior_std(const sd_sde *s)
{
    return (s->kind == SD_SDE_NCSN || s->kind == SD_SDE_VE) ? s->sigma_max : 1.0;
}

void sd_sde_prior_sample(const sd_sde *s, sd_rng *rng, float *x, size_t n, size_t D)
{
    sd_rng_fill_normal(rng, x, n * D, 0.0f, (float)prior_std(s));
}

double sd_sde_prior_logp(const sd_sde *s, const float *x, size_t D)
{
    double std = prior_std(s), ss = 0.0;
    for (size_t i = 0; i < D; i++) ss += (double)x[i] * x[i];
    return -0.5 * ss / (std * std) - (double)D * (log(std) + 0.5 * SD_LOG_2PI);
}

sd_status sd_sde_kernel_dense(const sd_sde *s, double t, size_t D, double *A, double *Sigma)
{
    double a = sd_sde_mean_coef(s, t), sig = sd_sde_sigma(s, t);
    for (size_t i = 0; i < D; i++)
        for (size_t j = 0; j < D; j++) {
            A[i * D + j] = i == j ? a : 0.0;
            Sigma[i * D + j] = i == j ? sig * sig : 0.0;
        }
    return SD_OK;
}

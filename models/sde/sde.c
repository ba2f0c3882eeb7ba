/* sde.c - the noise families' public entry points (sd/sde.h): the registry
 * that parse walks, and every operator dispatched through the family's table
 * (sd/sde_family.h), with the defaults for optional entries and the helpers
 * the family files share (the VE schedule, key parsing). The families
 * themselves: family_isotropic.c (ncsn, ve, vp, subvp), family_dct.c,
 * family_dense.c, family_state.c. */
#include "sd/sde.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sd/sde_family.h"
#include "sd/tensor.h"

static const double SD_LOG_2PI = 1.8378770664093453;

/* ---- registry ------------------------------------------------------------------ */

static const sd_sde_family *const builtin[] = {
    &sd_sde_family_ncsn, &sd_sde_family_ve,    &sd_sde_family_vp,    &sd_sde_family_subvp,
    &sd_sde_family_dct,  &sd_sde_family_dense, &sd_sde_family_state,
};
enum { N_BUILTIN = sizeof builtin / sizeof builtin[0] };
static const sd_sde_family *registered[SD_SDE_MAX_FAMILIES];
static int n_registered;

static const sd_sde_family *family_at(int i)
{
    return i < N_BUILTIN ? builtin[i] : registered[i - N_BUILTIN];
}

static const sd_sde_family *find_family(const char *name)
{
    for (int i = 0; i < N_BUILTIN + n_registered; i++)
        if (strcmp(family_at(i)->name, name) == 0) return family_at(i);
    return NULL;
}

sd_status sd_sde_register(const sd_sde_family *f)
{
    if (!f || !f->name || !*f->name || strchr(f->name, ':') || !f->defaults || !f->set_key ||
        !f->to_string || !f->sigma || !f->g2 || !f->apply_mean || !f->apply_std ||
        !f->apply_inv_cov || !f->drift || !f->apply_G || !f->apply_GGT || !f->prior_sample ||
        !f->prior_logp || (!f->drift_divergence && !f->flow_divergence))
        return sd_error(SD_ERR_INVALID, "sde: a family needs a name and every required entry "
                                        "(sd/sde_family.h)");
    if (find_family(f->name))
        return sd_error(SD_ERR_INVALID, "sde %s: a family of that name is already registered",
                        f->name);
    if (n_registered >= SD_SDE_MAX_FAMILIES)
        return sd_error(SD_ERR_NOMEM, "sde %s: the registry holds %d added families", f->name,
                        SD_SDE_MAX_FAMILIES);
    registered[n_registered++] = f;
    return SD_OK;
}

/* ---- helpers for family files ------------------------------------------------------ */

sd_status sd_sde_parse_number(const char *spec, const char *key, const char *val, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(val, &end);
    if (end == val || *end != '\0' || errno == ERANGE || !isfinite(v))
        return sd_error(SD_ERR_INVALID, "sde %s: %s=%s is not a number", spec, key, val);
    *out = v;
    return SD_OK;
}

sd_status sd_sde_ve_key(sd_sde *s, const char *spec, const char *key, const char *val,
                        bool *known)
{
    *known = strcmp(key, "sigma_min") == 0 || strcmp(key, "sigma_max") == 0;
    if (!*known) return SD_OK;
    double v = 0.0;
    sd_status st = sd_sde_parse_number(spec, key, val, &v);
    if (st != SD_OK) return st;
    if (strcmp(key, "sigma_min") == 0) s->sigma_min = v;
    else s->sigma_max = v;
    return SD_OK;
}

sd_status sd_sde_ve_finish(sd_sde *s, const char *spec, const char *cov_json)
{
    (void)cov_json;
    if (!(s->sigma_min > 0 && s->sigma_max > s->sigma_min))
        return sd_error(SD_ERR_INVALID, "sde %s: need 0 < sigma_min < sigma_max", spec);
    return SD_OK;
}

double sd_sde_ve_sigma(const sd_sde *s, double t)
{
    return s->sigma_min * pow(s->sigma_max / s->sigma_min, t);
}

double sd_sde_ve_g2(const sd_sde *s, double t)
{
    /* d sigma(t)^2 / dt = 2 sigma^2 log(sigma_max / sigma_min) */
    double sig = sd_sde_sigma(s, t);
    return 2.0 * sig * sig * log(s->sigma_max / s->sigma_min);
}

void sd_sde_scale_batch(double c, const float *in, float *out, size_t n, size_t D)
{
    size_t total = n * D;
    float cf = (float)c;
    for (size_t i = 0; i < total; i++) out[i] = cf * in[i];
}

double sd_sde_iso_normal_logp(const float *x, size_t D, double std)
{
    double ss = 0.0;
    for (size_t i = 0; i < D; i++) ss += (double)x[i] * x[i];
    return -0.5 * ss / (std * std) - (double)D * (log(std) + 0.5 * SD_LOG_2PI);
}

/* ---- parsing --------------------------------------------------------------------- */

sd_status sd_sde_parse_with_cov(const char *spec, const char *cov_json, sd_sde *out)
{
    char buf[256];
    if (!spec || strlen(spec) >= sizeof buf)
        return sd_error(SD_ERR_INVALID, "sde: missing or over-long spec");
    memcpy(buf, spec, strlen(spec) + 1);
    char *colon = strchr(buf, ':');
    if (colon) *colon = '\0';
    const sd_sde_family *f = find_family(buf);
    if (!f) {
        char names[256] = "";
        size_t off = 0;
        for (int i = 0; i < N_BUILTIN + n_registered && off < sizeof names; i++)
            off += (size_t)snprintf(names + off, sizeof names - off, "%s%s", i ? ", " : "",
                                    family_at(i)->name);
        return sd_error(SD_ERR_INVALID, "sde %s: unknown family '%s' (%s)", spec, buf, names);
    }
    sd_sde s;
    memset(&s, 0, sizeof s);
    s.family = f;
    f->defaults(&s);
    for (char *kv = colon ? colon + 1 : NULL; kv && *kv;) {
        char *next = strchr(kv, ',');
        if (next) *next++ = '\0';
        char *eq = strchr(kv, '=');
        if (!eq) return sd_error(SD_ERR_INVALID, "sde %s: expected key=value, got '%s'", spec, kv);
        *eq = '\0';
        const char *key = kv, *val = eq + 1;
        bool known = false;
        sd_status st = f->set_key(&s, spec, key, val, &known);
        if (st != SD_OK) return st;
        if (!known) {
            double v;
            if ((st = sd_sde_parse_number(spec, key, val, &v)) != SD_OK) return st;
            return sd_error(SD_ERR_INVALID, "sde %s: key '%s' does not apply to %s", spec, key,
                            f->name);
        }
        kv = next;
    }
    if (f->finish) {
        sd_status st = f->finish(&s, spec, cov_json);
        if (st != SD_OK) return st;
    }
    *out = s;
    return SD_OK;
}

sd_status sd_sde_parse(const char *spec, sd_sde *out)
{
    return sd_sde_parse_with_cov(spec, NULL, out);
}

/* ---- identity and capabilities ------------------------------------------------------ */

const char *sd_sde_name(const sd_sde *s) { return s->family ? s->family->name : "?"; }

bool sd_sde_has(const sd_sde *s, unsigned flags)
{
    return s->family && (s->family->flags & flags) == flags;
}

bool sd_sde_is_isotropic(const sd_sde *s) { return sd_sde_has(s, SD_SDE_ISOTROPIC); }

bool sd_sde_state_dependent(const sd_sde *s) { return sd_sde_has(s, SD_SDE_STATE_DEPENDENT); }

void sd_sde_to_string(const sd_sde *s, char *buf, size_t len) { s->family->to_string(s, buf, len); }

sd_status sd_sde_bind_shape(sd_sde *s, int C, int H, int W)
{
    return s->family->bind_shape ? s->family->bind_shape(s, C, H, W) : SD_OK;
}

sd_status sd_sde_cov_json(const sd_sde *s, char *buf, size_t len)
{
    if (!s->family->cov_json)
        return sd_error(SD_ERR_INVALID, "sde %s: the family has no covariance matrix",
                        sd_sde_name(s));
    return s->family->cov_json(s, buf, len);
}

sd_status sd_sde_latent(const sd_sde *s, sd_sde *out)
{
    if (!s->family->latent)
        return sd_error(SD_ERR_INVALID, "sde %s: not the image of another family",
                        sd_sde_name(s));
    return s->family->latent(s, out);
}

/* ---- scalar summaries ------------------------------------------------------------------ */

double sd_sde_sigma(const sd_sde *s, double t) { return s->family->sigma(s, t); }

double sd_sde_cond(const sd_sde *s, double t)
{
    if (sd_sde_has(s, SD_SDE_COND_TIME)) return t;
    return log(sd_sde_sigma(s, t));
}

double sd_sde_mean_coef(const sd_sde *s, double t)
{
    return s->family->mean_coef ? s->family->mean_coef(s, t) : 1.0;
}

double sd_sde_g2(const sd_sde *s, double t) { return s->family->g2(s, t); }

double sd_sde_default_eps(const sd_sde *s)
{
    return sd_sde_has(s, SD_SDE_DISCRETE_LEVELS) ? 0.0 : 1e-5;
}

int sd_sde_levels(const sd_sde *s)
{
    return sd_sde_has(s, SD_SDE_DISCRETE_LEVELS) ? s->levels : 0;
}

double sd_sde_level_time(const sd_sde *s, int i)
{
    if (!sd_sde_has(s, SD_SDE_DISCRETE_LEVELS) || s->levels < 2) return 1.0;
    return 1.0 - (double)i / (double)(s->levels - 1);
}

/* ---- operators ---------------------------------------------------------------------------- */

static sd_status missing(const sd_sde *s, const char *op)
{
    return sd_error(SD_ERR_INVALID, "sde %s: %s does not exist for this family", sd_sde_name(s),
                    op);
}

sd_status sd_sde_apply_mean(const sd_sde *s, double t, const float *x0, float *out, size_t n,
                            size_t D)
{
    return s->family->apply_mean(s, t, x0, out, n, D);
}

sd_status sd_sde_apply_std(const sd_sde *s, double t, const float *z, float *out, size_t n,
                           size_t D)
{
    return s->family->apply_std(s, t, z, out, n, D);
}

sd_status sd_sde_apply_inv_cov(const sd_sde *s, double t, const float *v, float *out, size_t n,
                               size_t D)
{
    return s->family->apply_inv_cov(s, t, v, out, n, D);
}

sd_status sd_sde_drift(const sd_sde *s, double t, const float *x, float *out, size_t n, size_t D)
{
    return s->family->drift(s, t, x, out, n, D);
}

sd_status sd_sde_apply_G(const sd_sde *s, double t, const float *x, const float *z, float *out,
                         size_t n, size_t D)
{
    return s->family->apply_G(s, t, x, z, out, n, D);
}

sd_status sd_sde_apply_GGT(const sd_sde *s, double t, const float *x, const float *v, float *out,
                           size_t n, size_t D)
{
    return s->family->apply_GGT(s, t, x, v, out, n, D);
}

sd_status sd_sde_div_GGT(const sd_sde *s, double t, const float *x, float *out, size_t n,
                         size_t D)
{
    if (!s->family->div_GGT) {
        memset(out, 0, n * D * sizeof(float));
        return SD_OK;
    }
    return s->family->div_GGT(s, t, x, out, n, D);
}

double sd_sde_drift_divergence(const sd_sde *s, double t, size_t D)
{
    return s->family->drift_divergence ? s->family->drift_divergence(s, t, D) : NAN;
}

sd_status sd_sde_flow_divergence(const sd_sde *s, double t, const float *x, double *out,
                                 size_t n, size_t D)
{
    if (s->family->flow_divergence) return s->family->flow_divergence(s, t, x, out, n, D);
    double tr = sd_sde_drift_divergence(s, t, D);
    if (isnan(tr))
        return sd_error(SD_ERR_INVALID, "sde %s (flow divergence): tr F is not defined for D = "
                                        "%zu", sd_sde_name(s), D);
    for (size_t p = 0; p < n; p++) out[p] = tr;
    return SD_OK;
}

sd_status sd_sde_tweedie(const sd_sde *s, double t, const float *x, const float *score,
                         float *out, size_t n, size_t D)
{
    if (!s->family->tweedie) return missing(s, "Tweedie denoising");
    return s->family->tweedie(s, t, x, score, out, n, D);
}

/* The linear kernel: x_t = A x0 + Sigma^{1/2} z; target = -Sigma^{-1}
 * (Sigma^{1/2} z). The noise goes through target's memory (or a temporary)
 * first. */
static sd_status linear_perturb(const sd_sde *s, double t, const float *x0, const float *z,
                                float *xt, float *target, float *metric, size_t n, size_t D)
{
    size_t total = n * D;
    float *noise = target, *own = NULL;
    if (!noise && !(noise = own = sd_malloc((total ? total : 1) * sizeof(float))))
        return SD_ERR_NOMEM;
    sd_status st = sd_sde_apply_mean(s, t, x0, xt, n, D);
    if (st == SD_OK) st = sd_sde_apply_std(s, t, z, noise, n, D);
    if (st == SD_OK) {
        for (size_t j = 0; j < total; j++) xt[j] += noise[j];
        if (target) {
            st = sd_sde_apply_inv_cov(s, t, noise, target, n, D);
            for (size_t j = 0; j < total && st == SD_OK; j++) target[j] = -target[j];
        }
    }
    if (metric && st == SD_OK)
        for (size_t j = 0; j < total; j++) metric[j] = 1.0f;
    sd_free(own);
    return st;
}

sd_status sd_sde_perturb(const sd_sde *s, double t, const float *x0, const float *z, float *xt,
                         float *target, float *metric, size_t n, size_t D)
{
    if (s->family->perturb) return s->family->perturb(s, t, x0, z, xt, target, metric, n, D);
    return linear_perturb(s, t, x0, z, xt, target, metric, n, D);
}

sd_status sd_sde_modes(const sd_sde *s, double t, size_t D, double *a, double *var, double *f,
                       double *gg)
{
    if (!s->family->modes) return missing(s, "a mode decomposition");
    return s->family->modes(s, t, D, a, var, f, gg);
}

sd_status sd_sde_to_modes(const sd_sde *s, const float *v, float *out, size_t n, size_t D)
{
    if (!s->family->to_modes) return missing(s, "a mode decomposition");
    return s->family->to_modes(s, v, out, n, D);
}

sd_status sd_sde_prior_sample(const sd_sde *s, sd_rng *rng, float *x, size_t n, size_t D)
{
    return s->family->prior_sample(s, rng, x, n, D);
}

double sd_sde_prior_logp(const sd_sde *s, const float *x, size_t D)
{
    return s->family->prior_logp(s, x, D);
}

sd_status sd_sde_kernel_dense(const sd_sde *s, double t, size_t D, double *A, double *Sigma)
{
    if (!s->family->kernel_dense) return missing(s, "a dense Gaussian kernel");
    return s->family->kernel_dense(s, t, D, A, Sigma);
}

/* sde_family.h - what a noise family is to the rest of scorediff: one table
 * of operators and capability flags (sd/sde.h documents the operators).
 *
 * Adding a family is one file that fills one const sd_sde_family, plus one
 * entry: in the built-in registry (models/sde/sde.c, `builtin[]`) or, from
 * outside the library, a call to sd_sde_register(&table) before parsing
 * (tests/test_sde_family.c adds a diagonal VE family that way). sd_sde_parse
 * then finds it by name; samplers, models and the CLI reach it only through
 * sd/sde.h's functions, which dispatch through the table and test flags.
 *
 * The public functions of sd/sde.h check nothing about the table: they call
 * the entry, or do the documented default when an optional entry is NULL.
 * An entry receives the parsed value (s->family is the table itself).
 * Error messages name the family ("sde NAME: ..." or "sde NAME (op): ..."),
 * never a command-line flag.
 */
#ifndef SD_SDE_FAMILY_H
#define SD_SDE_FAMILY_H

#include "sd/sde.h"

struct sd_sde_family {
    const char *name; /* the spec's NAME */
    const char *keys; /* its keys, for documentation ("sigma_min, sigma_max") */
    unsigned flags;   /* SD_SDE_* capability flags of sd/sde.h */
    const void *impl; /* constants private to the family's file (may be NULL) */

    /* ---- spec (required: defaults, set_key, to_string) ---- */
    void (*defaults)(sd_sde *s);
    /* One key=value of the spec: *known = false (return SD_OK) if the key does
     * not apply; otherwise parse val (sd_sde_parse_number) and store it. */
    sd_status (*set_key)(sd_sde *s, const char *spec, const char *key, const char *val,
                         bool *known);
    /* After the keys: check consistency, load data (may be NULL). cov_json as
     * in sd_sde_parse_with_cov. */
    sd_status (*finish)(sd_sde *s, const char *spec, const char *cov_json);
    void (*to_string)(const sd_sde *s, char *buf, size_t len);
    sd_status (*bind_shape)(sd_sde *s, int C, int H, int W); /* NULL: any shape */
    sd_status (*cov_json)(const sd_sde *s, char *buf, size_t len); /* NULL: refused */
    sd_status (*latent)(const sd_sde *s, sd_sde *out);             /* NULL: refused */

    /* ---- scalars (required: sigma, g2) ---- */
    double (*sigma)(const sd_sde *s, double t);
    double (*mean_coef)(const sd_sde *s, double t); /* NULL: 1 */
    double (*g2)(const sd_sde *s, double t);

    /* ---- operators on [n, D] (required: the first six, prior_sample and
     * prior_logp; a family without one returns SD_ERR_INVALID from it) ---- */
    sd_status (*apply_mean)(const sd_sde *s, double t, const float *x0, float *out, size_t n,
                            size_t D);
    sd_status (*apply_std)(const sd_sde *s, double t, const float *z, float *out, size_t n,
                           size_t D);
    sd_status (*apply_inv_cov)(const sd_sde *s, double t, const float *v, float *out, size_t n,
                               size_t D);
    sd_status (*drift)(const sd_sde *s, double t, const float *x, float *out, size_t n, size_t D);
    sd_status (*apply_G)(const sd_sde *s, double t, const float *x, const float *z, float *out,
                         size_t n, size_t D);
    sd_status (*apply_GGT)(const sd_sde *s, double t, const float *x, const float *v, float *out,
                           size_t n, size_t D);
    /* NULL: zero (linear families) */
    sd_status (*div_GGT)(const sd_sde *s, double t, const float *x, float *out, size_t n,
                         size_t D);
    /* tr F(t); required unless flow_divergence is given (NAN: not defined) */
    double (*drift_divergence)(const sd_sde *s, double t, size_t D);
    /* NULL: tr F(t) for every point */
    sd_status (*flow_divergence)(const sd_sde *s, double t, const float *x, double *out,
                                 size_t n, size_t D);
    sd_status (*tweedie)(const sd_sde *s, double t, const float *x, const float *score,
                         float *out, size_t n, size_t D); /* NULL: refused */
    /* NULL: the linear kernel, A x0 + Sigma^1/2 z and -Sigma^-1 Sigma^1/2 z */
    sd_status (*perturb)(const sd_sde *s, double t, const float *x0, const float *z, float *xt,
                         float *target, float *metric, size_t n, size_t D);
    sd_status (*modes)(const sd_sde *s, double t, size_t D, double *a, double *var, double *f,
                       double *gg); /* NULL: refused */
    sd_status (*to_modes)(const sd_sde *s, const float *v, float *out, size_t n,
                          size_t D); /* NULL: refused */
    sd_status (*prior_sample)(const sd_sde *s, sd_rng *rng, float *x, size_t n, size_t D);
    double (*prior_logp)(const sd_sde *s, const float *x, size_t D);
    sd_status (*kernel_dense)(const sd_sde *s, double t, size_t D, double *A,
                              double *Sigma); /* NULL: refused */
};

/* Most families sd_sde_register accepts besides the built-in ones. */
#define SD_SDE_MAX_FAMILIES 8

/* The built-in families (models/sde/family_*.c). */
extern const sd_sde_family sd_sde_family_ncsn, sd_sde_family_ve, sd_sde_family_vp,
    sd_sde_family_subvp, sd_sde_family_dct, sd_sde_family_dense, sd_sde_family_state;

/* ---- helpers for family files ---------------------------------------------- */
/* val as a finite double; SD_ERR_INVALID "sde SPEC: KEY=VAL is not a number". */
sd_status sd_sde_parse_number(const char *spec, const char *key, const char *val, double *out);
/* The VE schedule's keys: sigma_min and sigma_max (*known tells whether key was
 * one of them), and its check 0 < sigma_min < sigma_max. */
sd_status sd_sde_ve_key(sd_sde *s, const char *spec, const char *key, const char *val,
                        bool *known);
sd_status sd_sde_ve_finish(sd_sde *s, const char *spec, const char *cov_json);
/* VE's sigma(t) = sigma_min (sigma_max/sigma_min)^t and g2(t) = d sigma^2/dt. */
double sd_sde_ve_sigma(const sd_sde *s, double t);
double sd_sde_ve_g2(const sd_sde *s, double t);
/* out = c in for n*D floats (c rounded to float once). */
void sd_sde_scale_batch(double c, const float *in, float *out, size_t n, size_t D);
/* log N(x; 0, std^2 I) of one point of D values. */
double sd_sde_iso_normal_logp(const float *x, size_t D, double std);

#endif

/* family_dense.c - the dense noise family: VE noise shaped by a user
 * covariance C in low dimension (sd/sde.h: A = I, Sigma = sigma(t)^2 C,
 * G G^T = g2(t) C). C, its lower Cholesky factor L (LAPACKE_dpotrf) and its
 * eigenvectors (dsyev, the family's modes) live in the sd_sde value; every
 * operator works on them in double. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sd/file.h"
#include "sd/rng.h"
#include "sd/sde_family.h"
#include "sd/tensor.h"

static const double SD_LOG_2PI = 1.8378770664093453;

/* ---- covariance --------------------------------------------------------------------- */

sd_status sd_sde_set_cov(sd_sde *s, int dim, const double *C)
{
    if (dim < 1 || dim > SD_SDE_DENSE_MAX)
        return sd_error(SD_ERR_INVALID, "sde dense: C is %dx%d; the dense family takes 1 to %d "
                                        "dimensions", dim, dim, SD_SDE_DENSE_MAX);
    double scale = 0.0;
    for (int i = 0; i < dim * dim; i++) {
        if (!isfinite(C[i]))
            return sd_error(SD_ERR_INVALID, "sde dense: C[%d][%d] is not finite", i / dim,
                            i % dim);
        scale = fmax(scale, fabs(C[i]));
    }
    for (int i = 0; i < dim; i++)
        for (int j = 0; j < i; j++)
            if (fabs(C[i * dim + j] - C[j * dim + i]) > 1e-12 * scale)
                return sd_error(SD_ERR_INVALID,
                                "sde dense: C is not symmetric: C[%d][%d] = %.17g but "
                                "C[%d][%d] = %.17g", i, j, C[i * dim + j], j, i, C[j * dim + i]);
    double L[SD_SDE_DENSE_MAX * SD_SDE_DENSE_MAX], Q[SD_SDE_DENSE_MAX * SD_SDE_DENSE_MAX];
    double ev[SD_SDE_DENSE_MAX];
    memcpy(L, C, (size_t)dim * dim * sizeof(double));
    lapack_int info = LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'L', dim, L, dim);
    if (info > 0)
        return sd_error(SD_ERR_INVALID,
                        "sde dense: C is not positive definite (Cholesky pivot %d: the leading "
                        "%dx%d minor is not positive)", (int)info, (int)info, (int)info);
    if (info < 0) return sd_error(SD_ERR_INTERNAL, "sde dense: dpotrf argument %d", (int)-info);
    for (int i = 0; i < dim; i++)
        for (int j = i + 1; j < dim; j++) L[i * dim + j] = 0.0;
    memcpy(Q, C, (size_t)dim * dim * sizeof(double));
    info = LAPACKE_dsyev(LAPACK_ROW_MAJOR, 'V', 'U', dim, Q, dim, ev);
    if (info != 0)
        return sd_error(SD_ERR_NUMERIC, "sde dense: eigendecomposition of C failed (dsyev %d)",
                        (int)info);
    memset(s->cov, 0, sizeof s->cov);
    memset(s->chol, 0, sizeof s->chol);
    memset(s->eigvec, 0, sizeof s->eigvec);
    memset(s->eigval, 0, sizeof s->eigval);
    s->dim = dim;
    memcpy(s->cov, C, (size_t)dim * dim * sizeof(double));
    memcpy(s->chol, L, (size_t)dim * dim * sizeof(double));
    memcpy(s->eigvec, Q, (size_t)dim * dim * sizeof(double));
    memcpy(s->eigval, ev, (size_t)dim * sizeof(double));
    return SD_OK;
}

/* {"C": [[..], ..]} -> s (what names the source in messages). */
static sd_status cov_from_json(const char *text, const char *what, sd_sde *s)
{
    cJSON *root = cJSON_Parse(text);
    if (!root) return sd_error(SD_ERR_FORMAT, "%s: not valid JSON", what);
    sd_status st = SD_OK;
    double C[SD_SDE_DENSE_MAX * SD_SDE_DENSE_MAX];
    const cJSON *jc = cJSON_GetObjectItemCaseSensitive(root, "C");
    int dim = cJSON_IsArray(jc) ? cJSON_GetArraySize(jc) : -1;
    if (dim < 1 || dim > SD_SDE_DENSE_MAX) {
        st = sd_error(SD_ERR_FORMAT, "%s: needs \"C\": a square matrix (array of rows) of 1 to %d "
                                     "rows", what, SD_SDE_DENSE_MAX);
        goto done;
    }
    for (int i = 0; i < dim && st == SD_OK; i++) {
        const cJSON *row = cJSON_GetArrayItem(jc, i);
        if (!cJSON_IsArray(row) || cJSON_GetArraySize(row) != dim) {
            st = sd_error(SD_ERR_FORMAT, "%s: row %d of \"C\" must hold %d numbers (C is square)",
                          what, i, dim);
            break;
        }
        for (int j = 0; j < dim; j++) {
            const cJSON *v = cJSON_GetArrayItem(row, j);
            if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) {
                st = sd_error(SD_ERR_FORMAT, "%s: C[%d][%d] is not a finite number", what, i, j);
                break;
            }
            C[i * dim + j] = v->valuedouble;
        }
    }
    if (st == SD_OK && (st = sd_sde_set_cov(s, dim, C)) != SD_OK) {
        char msg[512];
        const char *m = sd_error_message(), *prefix = "sde dense: ";
        if (strncmp(m, prefix, strlen(prefix)) == 0) m += strlen(prefix); /* what has it */
        snprintf(msg, sizeof msg, "%s", m);
        st = sd_error(st, "%s: %s", what, msg);
    }
done:
    cJSON_Delete(root);
    return st;
}

static sd_status cov_from_file(const char *path, sd_sde *s)
{
    /* sd/file.h: at most 1 MiB, regular files only (a FIFO never blocks) */
    char *text = NULL;
    size_t len;
    sd_status st = sd_file_read_all(path, (size_t)1 << 20, &text, &len);
    if (st != SD_OK) {
        char why[512];
        snprintf(why, sizeof why, "%s", sd_error_message());
        return sd_error(st, "sde dense: %s", why);
    }
    char what[SD_SDE_PATH_MAX + 16];
    snprintf(what, sizeof what, "sde dense: %s", path);
    st = cov_from_json(text, what, s);
    sd_free(text);
    return st;
}

static sd_status dense_cov_json(const sd_sde *s, char *buf, size_t len)
{
    if (s->dim < 1) return sd_error(SD_ERR_INVALID, "sde dense: no covariance set");
    size_t off = 0;
    int w = snprintf(buf, len, "{\"C\": [");
    for (int i = 0; i < s->dim && w >= 0 && (off += (size_t)w) < len; i++) {
        w = snprintf(buf + off, len - off, "%s[", i ? ", " : "");
        for (int j = 0; j < s->dim && w >= 0 && (off += (size_t)w) < len; j++)
            w = snprintf(buf + off, len - off, "%s%.17g", j ? ", " : "", s->cov[i * s->dim + j]);
        if (w >= 0 && (off += (size_t)w) < len) w = snprintf(buf + off, len - off, "]");
    }
    if (w >= 0 && (off += (size_t)w) < len) w = snprintf(buf + off, len - off, "]}");
    if (w < 0 || off + (size_t)w >= len)
        return sd_error(SD_ERR_INVALID, "sde dense: covariance JSON does not fit %zu bytes", len);
    return SD_OK;
}

/* ---- spec --------------------------------------------------------------------------- */

static void dense_defaults(sd_sde *s)
{
    s->sigma_min = 0.01;
    s->sigma_max = 50.0;
}

static sd_status dense_key(sd_sde *s, const char *spec, const char *key, const char *val,
                           bool *known)
{
    if (strcmp(key, "C") != 0) return sd_sde_ve_key(s, spec, key, val, known);
    *known = true;
    if (!*val || strlen(val) >= SD_SDE_PATH_MAX)
        return sd_error(SD_ERR_INVALID, "sde %s: C= needs a JSON file path (under %d "
                                        "characters)", spec, SD_SDE_PATH_MAX);
    snprintf(s->cov_path, sizeof s->cov_path, "%s", val);
    return SD_OK;
}

static sd_status dense_finish(sd_sde *s, const char *spec, const char *cov_json)
{
    sd_status st = sd_sde_ve_finish(s, spec, cov_json);
    if (st != SD_OK) return st;
    if (!s->cov_path[0])
        return sd_error(SD_ERR_INVALID, "sde %s: dense needs C=FILE.json ({\"C\": [[..], "
                                        "..]})", spec);
    return cov_json ? cov_from_json(cov_json, "sde dense: stored C", s)
                    : cov_from_file(s->cov_path, s);
}

static void dense_string(const sd_sde *s, char *buf, size_t len)
{
    snprintf(buf, len, "dense:sigma_min=%.9g,sigma_max=%.9g,C=%s", s->sigma_min, s->sigma_max,
             s->cov_path);
}

static sd_status dense_bind_shape(sd_sde *s, int C, int H, int W)
{
    long D = (long)C * H * W;
    if (s->dim != D)
        return sd_error(SD_ERR_INVALID, "sde dense: C is %dx%d but the data has %ld dimensions",
                        s->dim, s->dim, D);
    return SD_OK;
}

/* ---- operators ------------------------------------------------------------------------ */

static sd_status dense_check(const sd_sde *s, size_t D, const char *op)
{
    if (s->dim < 1 || (size_t)s->dim != D)
        return sd_error(SD_ERR_INVALID, "sde dense (%s): C is %dx%d but the data has %zu "
                                        "dimensions", op, s->dim, s->dim, D);
    return SD_OK;
}

typedef enum { DENSE_L, DENSE_C, DENSE_CINV, DENSE_QT } dense_op;

/* out_row = c M in_row per row with M = L, C, C^-1 (two triangular solves)
 * or Q^T; accumulation in double, in place allowed. */
static void dense_apply(const sd_sde *s, dense_op op, double c, const float *in, float *out,
                        size_t n)
{
    int D = s->dim;
    const double *L = s->chol;
    for (size_t p = 0; p < n; p++) {
        const float *v = in + p * D;
        double u[SD_SDE_DENSE_MAX], y[SD_SDE_DENSE_MAX];
        for (int i = 0; i < D; i++) u[i] = v[i];
        switch (op) {
        case DENSE_L:
            for (int i = 0; i < D; i++) {
                double a = 0.0;
                for (int j = 0; j <= i; j++) a += L[i * D + j] * u[j];
                y[i] = a;
            }
            break;
        case DENSE_C:
            for (int i = 0; i < D; i++) {
                double a = 0.0;
                for (int j = 0; j < D; j++) a += s->cov[i * D + j] * u[j];
                y[i] = a;
            }
            break;
        case DENSE_CINV: /* L w = u, then L^T y = w */
            for (int i = 0; i < D; i++) {
                double a = u[i];
                for (int j = 0; j < i; j++) a -= L[i * D + j] * y[j];
                y[i] = a / L[i * D + i];
            }
            for (int i = D - 1; i >= 0; i--) {
                double a = y[i];
                for (int j = i + 1; j < D; j++) a -= L[j * D + i] * y[j];
                y[i] = a / L[i * D + i];
            }
            break;
        case DENSE_QT:
            for (int k = 0; k < D; k++) {
                double a = 0.0;
                for (int i = 0; i < D; i++) a += s->eigvec[i * D + k] * u[i];
                y[k] = a;
            }
            break;
        }
        for (int i = 0; i < D; i++) out[p * D + i] = (float)(c * y[i]);
    }
}

/* c M v after the dimension check. */
static sd_status checked(const sd_sde *s, size_t D, const char *op, dense_op M, double c,
                         const float *in, float *out, size_t n)
{
    sd_status st = dense_check(s, D, op);
    if (st == SD_OK) dense_apply(s, M, c, in, out, n);
    return st;
}

static sd_status dense_mean(const sd_sde *s, double t, const float *x0, float *out, size_t n,
                            size_t D)
{
    (void)t;
    sd_status st = dense_check(s, D, "mean");
    if (st == SD_OK && out != x0) memcpy(out, x0, n * D * sizeof(float));
    return st;
}

static sd_status dense_std(const sd_sde *s, double t, const float *z, float *out, size_t n,
                           size_t D)
{
    return checked(s, D, "std", DENSE_L, sd_sde_sigma(s, t), z, out, n);
}

static sd_status dense_inv_cov(const sd_sde *s, double t, const float *v, float *out, size_t n,
                               size_t D)
{
    double sig = sd_sde_sigma(s, t);
    return checked(s, D, "inv_cov", DENSE_CINV, 1.0 / (sig * sig), v, out, n);
}

static sd_status dense_drift(const sd_sde *s, double t, const float *x, float *out, size_t n,
                             size_t D)
{
    (void)t, (void)x;
    sd_status st = dense_check(s, D, "drift");
    if (st == SD_OK) memset(out, 0, n * D * sizeof(float));
    return st;
}

static sd_status dense_G(const sd_sde *s, double t, const float *x, const float *z, float *out,
                         size_t n, size_t D)
{
    (void)x;
    return checked(s, D, "G", DENSE_L, sqrt(sd_sde_g2(s, t)), z, out, n);
}

static sd_status dense_GGT(const sd_sde *s, double t, const float *x, const float *v, float *out,
                           size_t n, size_t D)
{
    (void)x;
    return checked(s, D, "GGT", DENSE_C, sd_sde_g2(s, t), v, out, n);
}

static double dense_drift_divergence(const sd_sde *s, double t, size_t D)
{
    (void)s, (void)t;
    return 0.0 * (double)D; /* F = 0 */
}

/* A = I: x + sigma^2 C s */
static sd_status dense_tweedie(const sd_sde *s, double t, const float *x, const float *score,
                               float *out, size_t n, size_t D)
{
    double sig = sd_sde_sigma(s, t), s2 = sig * sig;
    sd_status st = dense_check(s, D, "tweedie");
    if (st != SD_OK) return st;
    float *tmp = sd_malloc((n * D > 0 ? n * D : 1) * sizeof(float));
    if (!tmp) return SD_ERR_NOMEM;
    dense_apply(s, DENSE_C, s2, score, tmp, n);
    for (size_t i = 0; i < n * D; i++) out[i] = x[i] + tmp[i];
    sd_free(tmp);
    return SD_OK;
}

static sd_status dense_modes(const sd_sde *s, double t, size_t D, double *a, double *var,
                             double *f, double *gg)
{
    double sig = sd_sde_sigma(s, t), s2 = sig * sig;
    sd_status st = dense_check(s, D, "modes");
    if (st != SD_OK) return st;
    for (size_t k = 0; k < D; k++) {
        if (a) a[k] = 1.0;
        if (var) var[k] = s2 * s->eigval[k];
        if (f) f[k] = 0.0;
        if (gg) gg[k] = sd_sde_g2(s, t) * s->eigval[k];
    }
    return SD_OK;
}

static sd_status dense_to_modes(const sd_sde *s, const float *v, float *out, size_t n, size_t D)
{
    return checked(s, D, "to_modes", DENSE_QT, 1.0, v, out, n);
}

static sd_status dense_prior_sample(const sd_sde *s, sd_rng *rng, float *x, size_t n, size_t D)
{
    sd_status st = dense_check(s, D, "prior");
    if (st != SD_OK) return st;
    sd_rng_fill_normal(rng, x, n * D, 0.0f, 1.0f);
    dense_apply(s, DENSE_L, s->sigma_max, x, x, n);
    return SD_OK;
}

/* N(0, smax^2 C): |L^-1 x|^2 / smax^2 + log det = 2 sum log L_ii + D log smax^2 */
static double dense_prior_logp(const sd_sde *s, const float *x, size_t D)
{
    double std = s->sigma_max, ss = 0.0;
    if (dense_check(s, D, "prior") != SD_OK) return NAN;
    const double *L = s->chol;
    double y[SD_SDE_DENSE_MAX], logdet = 0.0;
    for (size_t i = 0; i < D; i++) {
        double a = x[i];
        for (size_t j = 0; j < i; j++) a -= L[i * D + j] * y[j];
        y[i] = a / L[i * D + i];
        ss += y[i] * y[i];
        logdet += log(L[i * D + i]);
    }
    return -0.5 * ss / (std * std) - logdet - (double)D * (log(std) + 0.5 * SD_LOG_2PI);
}

static sd_status dense_kernel_dense(const sd_sde *s, double t, size_t D, double *A,
                                    double *Sigma)
{
    double sig = sd_sde_sigma(s, t);
    sd_status st = dense_check(s, D, "kernel");
    if (st != SD_OK) return st;
    for (size_t i = 0; i < D * D; i++) {
        A[i] = i / D == i % D ? 1.0 : 0.0;
        Sigma[i] = sig * sig * s->cov[i];
    }
    return SD_OK;
}

const sd_sde_family sd_sde_family_dense = {
    .name = "dense", .keys = "sigma_min, sigma_max, C",
    .flags = SD_SDE_STORED_COV,
    .defaults = dense_defaults, .set_key = dense_key, .finish = dense_finish,
    .to_string = dense_string, .bind_shape = dense_bind_shape, .cov_json = dense_cov_json,
    .sigma = sd_sde_ve_sigma, .g2 = sd_sde_ve_g2,
    .apply_mean = dense_mean, .apply_std = dense_std, .apply_inv_cov = dense_inv_cov,
    .drift = dense_drift, .apply_G = dense_G, .apply_GGT = dense_GGT,
    .drift_divergence = dense_drift_divergence, .tweedie = dense_tweedie,
    .modes = dense_modes, .to_modes = dense_to_modes,
    .prior_sample = dense_prior_sample, .prior_logp = dense_prior_logp,
    .kernel_dense = dense_kernel_dense,
};

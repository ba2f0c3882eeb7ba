/* sde.c - the noise families; see sde.h for the formulas (Song et al. 2021,
 * App. B and D; Song & Ermon 2019; Hoogeboom & Salimans 2022; Rissanen et al.
 * 2023). The isotropic families (ncsn, ve, vp, subvp) are scalar multiples of
 * I; dct applies its per-frequency diagonals between a forward and an inverse
 * orthonormal DCT (sd_dct2_planes, FFTW); dense works with its Cholesky factor
 * in double; state is elementwise, with div[G G^T] by reverse-mode autodiff. */
#include "sd/sde.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sd/fft.h"
#include "sd/file.h"
#include "sd/ops.h"
#include "sd/rng.h"
#include "sd/tensor.h"

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

/* ---- dense covariance --------------------------------------------------------- */

sd_status sd_sde_set_cov(sd_sde *s, int dim, const double *C)
{
    if (dim < 1 || dim > SD_SDE_DENSE_MAX)
        return sd_error(SD_ERR_INVALID, "--sde dense: C is %dx%d; the dense family takes 1 to %d "
                                        "dimensions", dim, dim, SD_SDE_DENSE_MAX);
    double scale = 0.0;
    for (int i = 0; i < dim * dim; i++) {
        if (!isfinite(C[i]))
            return sd_error(SD_ERR_INVALID, "--sde dense: C[%d][%d] is not finite", i / dim,
                            i % dim);
        scale = fmax(scale, fabs(C[i]));
    }
    for (int i = 0; i < dim; i++)
        for (int j = 0; j < i; j++)
            if (fabs(C[i * dim + j] - C[j * dim + i]) > 1e-12 * scale)
                return sd_error(SD_ERR_INVALID,
                                "--sde dense: C is not symmetric: C[%d][%d] = %.17g but "
                                "C[%d][%d] = %.17g", i, j, C[i * dim + j], j, i, C[j * dim + i]);
    double L[SD_SDE_DENSE_MAX * SD_SDE_DENSE_MAX], Q[SD_SDE_DENSE_MAX * SD_SDE_DENSE_MAX];
    double ev[SD_SDE_DENSE_MAX];
    memcpy(L, C, (size_t)dim * dim * sizeof(double));
    lapack_int info = LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'L', dim, L, dim);
    if (info > 0)
        return sd_error(SD_ERR_INVALID,
                        "--sde dense: C is not positive definite (Cholesky pivot %d: the leading "
                        "%dx%d minor is not positive)", (int)info, (int)info, (int)info);
    if (info < 0) return sd_error(SD_ERR_INTERNAL, "--sde dense: dpotrf argument %d", (int)-info);
    for (int i = 0; i < dim; i++)
        for (int j = i + 1; j < dim; j++) L[i * dim + j] = 0.0;
    memcpy(Q, C, (size_t)dim * dim * sizeof(double));
    info = LAPACKE_dsyev(LAPACK_ROW_MAJOR, 'V', 'U', dim, Q, dim, ev);
    if (info != 0)
        return sd_error(SD_ERR_NUMERIC, "--sde dense: eigendecomposition of C failed (dsyev %d)",
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
        const char *m = sd_error_message(), *prefix = "--sde dense: ";
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
        return sd_error(st, "--sde dense: %s", why);
    }
    char what[SD_SDE_PATH_MAX + 16];
    snprintf(what, sizeof what, "--sde dense: %s", path);
    st = cov_from_json(text, what, s);
    sd_free(text);
    return st;
}

sd_status sd_sde_cov_json(const sd_sde *s, char *buf, size_t len)
{
    if (s->kind != SD_SDE_DENSE || s->dim < 1)
        return sd_error(SD_ERR_INVALID, "sde: only the dense family has a covariance");
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
        return sd_error(SD_ERR_INVALID, "sde: covariance JSON does not fit %zu bytes", len);
    return SD_OK;
}

/* ---- parsing ------------------------------------------------------------------ */

static bool ve_schedule(sd_sde_kind k)
{
    return k == SD_SDE_NCSN || k == SD_SDE_VE || k == SD_SDE_DCT || k == SD_SDE_DENSE ||
           k == SD_SDE_STATE;
}

/* "CxHxW" or "HxW" (one channel). */
static sd_status parse_shape(const char *spec, const char *val, sd_sde *s)
{
    long v[3];
    int k = 0;
    const char *p = val;
    while (k < 3) {
        char *end;
        errno = 0;
        v[k] = strtol(p, &end, 10);
        if (end == p || errno || v[k] < 1 || v[k] > 65536) break;
        k++;
        if (*end == '\0') {
            p = end;
            break;
        }
        if (*end != 'x') {
            k = 0;
            break;
        }
        p = end + 1;
    }
    if (*p != '\0' || k < 2)
        return sd_error(SD_ERR_INVALID, "--sde %s: shape=%s: expected CxHxW or HxW (positive "
                                        "integers)", spec, val);
    s->shape_c = k == 3 ? (int)v[0] : 1;
    s->shape_h = (int)v[k - 2];
    s->shape_w = (int)v[k - 1];
    return SD_OK;
}

sd_status sd_sde_parse_with_cov(const char *spec, const char *cov_json, sd_sde *out)
{
    char buf[256];
    if (!spec || strlen(spec) >= sizeof buf)
        return sd_error(SD_ERR_INVALID, "--sde: missing or over-long spec");
    memcpy(buf, spec, strlen(spec) + 1);
    char *colon = strchr(buf, ':');
    if (colon) *colon = '\0';
    sd_sde s;
    memset(&s, 0, sizeof s);
    if (strcmp(buf, "ncsn") == 0) {
        s.kind = SD_SDE_NCSN, s.sigma_min = 0.01, s.sigma_max = 50.0, s.levels = 10;
    } else if (strcmp(buf, "ve") == 0) {
        s.kind = SD_SDE_VE, s.sigma_min = 0.01, s.sigma_max = 50.0;
    } else if (strcmp(buf, "vp") == 0) {
        s.kind = SD_SDE_VP, s.beta_min = 0.1, s.beta_max = 20.0;
    } else if (strcmp(buf, "subvp") == 0) {
        s.kind = SD_SDE_SUBVP, s.beta_min = 0.1, s.beta_max = 20.0;
    } else if (strcmp(buf, "dct") == 0) {
        s.kind = SD_SDE_DCT, s.sigma_min = 0.01, s.sigma_max = 50.0, s.blur_max = 2.0;
    } else if (strcmp(buf, "dense") == 0) {
        s.kind = SD_SDE_DENSE, s.sigma_min = 0.01, s.sigma_max = 50.0;
    } else if (strcmp(buf, "state") == 0) {
        s.kind = SD_SDE_STATE, s.sigma_min = 0.01, s.sigma_max = 50.0;
    } else {
        return sd_error(SD_ERR_INVALID, "--sde %s: unknown family '%s' (ncsn, ve, vp, subvp, dct, "
                                        "dense, state)", spec, buf);
    }
    bool sigma_family = ve_schedule(s.kind);
    bool have_cov = false;
    for (char *kv = colon ? colon + 1 : NULL; kv && *kv;) {
        char *next = strchr(kv, ',');
        if (next) *next++ = '\0';
        char *eq = strchr(kv, '=');
        if (!eq) return sd_error(SD_ERR_INVALID, "--sde %s: expected key=value, got '%s'", spec, kv);
        *eq = '\0';
        const char *key = kv, *val = eq + 1;
        if (s.kind == SD_SDE_DCT && strcmp(key, "shape") == 0) {
            sd_status st = parse_shape(spec, val, &s);
            if (st != SD_OK) return st;
            kv = next;
            continue;
        }
        if (s.kind == SD_SDE_DENSE && strcmp(key, "C") == 0) {
            if (!*val || strlen(val) >= SD_SDE_PATH_MAX)
                return sd_error(SD_ERR_INVALID, "--sde %s: C= needs a JSON file path (under %d "
                                                "characters)", spec, SD_SDE_PATH_MAX);
            snprintf(s.cov_path, sizeof s.cov_path, "%s", val);
            have_cov = true;
            kv = next;
            continue;
        }
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
        else if (s.kind == SD_SDE_DCT && strcmp(key, "blur_max") == 0) {
            if (!(v >= 0 && v <= 1e4))
                return sd_error(SD_ERR_INVALID, "--sde %s: blur_max must be in [0, 1e4] pixels",
                                spec);
            s.blur_max = v;
        } else
            return sd_error(SD_ERR_INVALID, "--sde %s: key '%s' does not apply to %s", spec, key,
                            buf);
        kv = next;
    }
    if (sigma_family && !(s.sigma_min > 0 && s.sigma_max > s.sigma_min))
        return sd_error(SD_ERR_INVALID, "--sde %s: need 0 < sigma_min < sigma_max", spec);
    if (!sigma_family && !(s.beta_min > 0 && s.beta_max >= s.beta_min))
        return sd_error(SD_ERR_INVALID, "--sde %s: need 0 < beta_min <= beta_max", spec);
    if (s.kind == SD_SDE_DENSE) {
        if (!have_cov)
            return sd_error(SD_ERR_INVALID, "--sde %s: dense needs C=FILE.json ({\"C\": [[..], "
                                            "..]})", spec);
        sd_status st = cov_json ? cov_from_json(cov_json, "--sde dense: stored C", &s)
                                : cov_from_file(s.cov_path, &s);
        if (st != SD_OK) return st;
    }
    *out = s;
    return SD_OK;
}

sd_status sd_sde_parse(const char *spec, sd_sde *out)
{
    return sd_sde_parse_with_cov(spec, NULL, out);
}

const char *sd_sde_name(const sd_sde *s)
{
    switch (s->kind) {
    case SD_SDE_NCSN: return "ncsn";
    case SD_SDE_VE: return "ve";
    case SD_SDE_VP: return "vp";
    case SD_SDE_SUBVP: return "subvp";
    case SD_SDE_DCT: return "dct";
    case SD_SDE_DENSE: return "dense";
    case SD_SDE_STATE: return "state";
    }
    return "?";
}

bool sd_sde_is_isotropic(const sd_sde *s)
{
    return s->kind == SD_SDE_NCSN || s->kind == SD_SDE_VE || s->kind == SD_SDE_VP ||
           s->kind == SD_SDE_SUBVP;
}

bool sd_sde_state_dependent(const sd_sde *s) { return s->kind == SD_SDE_STATE; }

sd_status sd_sde_bind_shape(sd_sde *s, int C, int H, int W)
{
    long D = (long)C * H * W;
    if (s->kind == SD_SDE_DCT) {
        if (s->shape_c == 0) {
            s->shape_c = C;
            s->shape_h = H;
            s->shape_w = W;
        } else if ((long)s->shape_c * s->shape_h * s->shape_w != D ||
                   (H * W > 1 && (s->shape_c != C || s->shape_h != H || s->shape_w != W))) {
            return sd_error(SD_ERR_INVALID, "--sde dct: shape=%dx%dx%d does not fit the data "
                                            "(%dx%dx%d)", s->shape_c, s->shape_h, s->shape_w, C,
                            H, W);
        }
    } else if (s->kind == SD_SDE_DENSE && s->dim != D) {
        return sd_error(SD_ERR_INVALID, "--sde dense: C is %dx%d but the data has %ld dimensions",
                        s->dim, s->dim, D);
    }
    return SD_OK;
}

void sd_sde_to_string(const sd_sde *s, char *buf, size_t len)
{
    switch (s->kind) {
    case SD_SDE_NCSN:
        snprintf(buf, len, "ncsn:sigma_min=%.9g,sigma_max=%.9g,L=%d", s->sigma_min, s->sigma_max,
                 s->levels);
        break;
    case SD_SDE_VE:
    case SD_SDE_STATE:
        snprintf(buf, len, "%s:sigma_min=%.9g,sigma_max=%.9g", sd_sde_name(s), s->sigma_min,
                 s->sigma_max);
        break;
    case SD_SDE_VP:
    case SD_SDE_SUBVP:
        snprintf(buf, len, "%s:beta_min=%.9g,beta_max=%.9g", sd_sde_name(s), s->beta_min,
                 s->beta_max);
        break;
    case SD_SDE_DCT:
        if (s->shape_c)
            snprintf(buf, len, "dct:sigma_min=%.9g,sigma_max=%.9g,blur_max=%.9g,shape=%dx%dx%d",
                     s->sigma_min, s->sigma_max, s->blur_max, s->shape_c, s->shape_h, s->shape_w);
        else
            snprintf(buf, len, "dct:sigma_min=%.9g,sigma_max=%.9g,blur_max=%.9g", s->sigma_min,
                     s->sigma_max, s->blur_max);
        break;
    case SD_SDE_DENSE:
        snprintf(buf, len, "dense:sigma_min=%.9g,sigma_max=%.9g,C=%s", s->sigma_min, s->sigma_max,
                 s->cov_path);
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
    case SD_SDE_VE:
    case SD_SDE_DCT:
    case SD_SDE_DENSE:
    case SD_SDE_STATE: return s->sigma_min * pow(s->sigma_max / s->sigma_min, t);
    case SD_SDE_VP: return sqrt(-expm1(2.0 * vp_log_alpha(s, t)));
    case SD_SDE_SUBVP: return -expm1(2.0 * vp_log_alpha(s, t));
    }
    return NAN;
}

double sd_sde_cond(const sd_sde *s, double t)
{
    if (ve_schedule(s->kind)) return log(sd_sde_sigma(s, t));
    return t;
}

double sd_sde_g2(const sd_sde *s, double t)
{
    switch (s->kind) {
    case SD_SDE_NCSN:
    case SD_SDE_VE:
    case SD_SDE_DCT:
    case SD_SDE_DENSE:
    case SD_SDE_STATE: {
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

/* ---- dct: per-frequency diagonals between orthonormal DCTs ------------------- */

static sd_status dct_check(const sd_sde *s, size_t D, const char *op)
{
    if (s->shape_c < 1)
        return sd_error(SD_ERR_INVALID, "sde dct (%s): the image shape is not bound (give "
                                        "shape=CxHxW or build a model from image data)", op);
    if ((size_t)s->shape_c * s->shape_h * s->shape_w != D)
        return sd_error(SD_ERR_INVALID, "sde dct (%s): shape %dx%dx%d does not hold D = %zu "
                                        "values", op, s->shape_c, s->shape_h, s->shape_w, D);
    return SD_OK;
}

/* lambda_k = pi^2 (k1^2 / H^2 + k2^2 / W^2): eigenvalue of the Neumann
 * Laplacian on an H x W grid of unit spacing whose eigenvector is DCT-II
 * basis function k (Rissanen et al. 2023, Sec. 2). */
static double dct_lambda(const sd_sde *s, int k1, int k2)
{
    double a = (double)k1 / s->shape_h, b = (double)k2 / s->shape_w;
    return M_PI * M_PI * (a * a + b * b);
}

typedef enum { DCT_MEAN, DCT_MEAN_INV, DCT_DRIFT, DCT_G, DCT_GGT, DCT_NONE } dct_diag;

/* Per-frequency value of diagonal `which` at t (sde.h's formulas). */
static double dct_value(const sd_sde *s, dct_diag which, double t, double lambda)
{
    double b2 = s->blur_max * s->blur_max, tau = 0.5 * b2 * t * t;
    double sig2 = pow(sd_sde_sigma(s, t), 2), lr = log(s->sigma_max / s->sigma_min);
    switch (which) {
    case DCT_MEAN: return exp(-lambda * tau);
    case DCT_MEAN_INV: return exp(lambda * tau);
    case DCT_DRIFT: return -lambda * b2 * t;
    case DCT_G: return sqrt(sig2 * (2.0 * lr + 2.0 * lambda * b2 * t));
    case DCT_GGT: return sig2 * (2.0 * lr + 2.0 * lambda * b2 * t);
    case DCT_NONE: return 1.0;
    }
    return NAN;
}

/* out = B diag(d) B^T in for n images (inverse == false), or the DCT
 * coefficients diag(d) B^T in (modes_only). */
static sd_status dct_apply(const sd_sde *s, dct_diag which, double t, const float *in, float *out,
                           size_t n, size_t D, bool modes_only, const char *op)
{
    sd_status st = dct_check(s, D, op);
    if (st != SD_OK) return st;
    int H = s->shape_h, W = s->shape_w;
    size_t HW = (size_t)H * W, planes = n * (size_t)s->shape_c;
    if (planes > (size_t)INT32_MAX)
        return sd_error(SD_ERR_INVALID, "sde dct (%s): %zu planes are too many", op, planes);
    float *d = sd_malloc(HW * sizeof(float));
    if (!d) return sd_error(SD_ERR_NOMEM, "sde dct (%s): out of memory", op);
    for (int k1 = 0; k1 < H; k1++)
        for (int k2 = 0; k2 < W; k2++)
            d[(size_t)k1 * W + k2] = (float)dct_value(s, which, t, dct_lambda(s, k1, k2));
    st = sd_dct2_planes(in, out, (int)planes, H, W, false);
    if (st == SD_OK) {
        for (size_t p = 0; p < planes; p++) {
            float *pl = out + p * HW;
            for (size_t k = 0; k < HW; k++) pl[k] *= d[k];
        }
        if (!modes_only) st = sd_dct2_planes(out, out, (int)planes, H, W, true);
    }
    sd_free(d);
    return st;
}

/* ---- dense: Cholesky factor in double ------------------------------------------ */

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

/* ---- state: x = asinh(y) of a ve diffusion -------------------------------------- */

double sd_sde_state_h(double y) { return asinh(y); }
double sd_sde_state_hinv(double x) { return sinh(x); }

static sd_status state_invalid(const char *op)
{
    return sd_error(SD_ERR_INVALID, "sde state: %s does not exist for a state-dependent family "
                                    "(its kernel is not Gaussian in x)", op);
}

static sd_status need_x(const float *x, const char *op)
{
    if (!x) return sd_error(SD_ERR_INVALID, "sde state (%s): needs the state x", op);
    return SD_OK;
}

/* ---- operators -------------------------------------------------------------------- */

sd_status sd_sde_apply_mean(const sd_sde *s, double t, const float *x0, float *out, size_t n,
                            size_t D)
{
    switch (s->kind) {
    case SD_SDE_DCT: return dct_apply(s, DCT_MEAN, t, x0, out, n, D, false, "mean");
    case SD_SDE_STATE: return state_invalid("the kernel mean A(t)");
    case SD_SDE_DENSE: {
        sd_status st = dense_check(s, D, "mean");
        if (st == SD_OK && out != x0) memcpy(out, x0, n * D * sizeof(float));
        return st;
    }
    default: scale_batch(sd_sde_mean_coef(s, t), x0, out, n, D); return SD_OK;
    }
}

sd_status sd_sde_apply_std(const sd_sde *s, double t, const float *z, float *out, size_t n,
                           size_t D)
{
    if (s->kind == SD_SDE_STATE) return state_invalid("the kernel's Sigma^1/2");
    if (s->kind == SD_SDE_DENSE) {
        sd_status st = dense_check(s, D, "std");
        if (st == SD_OK) dense_apply(s, DENSE_L, sd_sde_sigma(s, t), z, out, n);
        return st;
    }
    scale_batch(sd_sde_sigma(s, t), z, out, n, D); /* dct: white noise */
    return SD_OK;
}

sd_status sd_sde_apply_inv_cov(const sd_sde *s, double t, const float *v, float *out, size_t n,
                               size_t D)
{
    if (s->kind == SD_SDE_STATE) return state_invalid("the kernel's Sigma^-1");
    double sig = sd_sde_sigma(s, t);
    if (s->kind == SD_SDE_DENSE) {
        sd_status st = dense_check(s, D, "inv_cov");
        if (st == SD_OK) dense_apply(s, DENSE_CINV, 1.0 / (sig * sig), v, out, n);
        return st;
    }
    scale_batch(1.0 / (sig * sig), v, out, n, D);
    return SD_OK;
}

sd_status sd_sde_drift(const sd_sde *s, double t, const float *x, float *out, size_t n, size_t D)
{
    switch (s->kind) {
    case SD_SDE_DCT: return dct_apply(s, DCT_DRIFT, t, x, out, n, D, false, "drift");
    case SD_SDE_DENSE: {
        sd_status st = dense_check(s, D, "drift");
        if (st == SD_OK) memset(out, 0, n * D * sizeof(float));
        return st;
    }
    case SD_SDE_STATE: {
        /* f = 1/2 h''(y) g2 = -1/2 g2 tanh x sech^2 x (Ito's lemma) */
        double g2 = sd_sde_g2(s, t);
        for (size_t i = 0; i < n * D; i++) {
            double c = cosh((double)x[i]);
            out[i] = (float)(-0.5 * g2 * tanh((double)x[i]) / (c * c));
        }
        return SD_OK;
    }
    default: scale_batch(drift_coef(s, t), x, out, n, D); return SD_OK;
    }
}

sd_status sd_sde_apply_G(const sd_sde *s, double t, const float *x, const float *z, float *out,
                         size_t n, size_t D)
{
    switch (s->kind) {
    case SD_SDE_DCT: return dct_apply(s, DCT_G, t, z, out, n, D, false, "G");
    case SD_SDE_DENSE: {
        sd_status st = dense_check(s, D, "G");
        if (st == SD_OK) dense_apply(s, DENSE_L, sqrt(sd_sde_g2(s, t)), z, out, n);
        return st;
    }
    case SD_SDE_STATE: {
        sd_status st = need_x(x, "G");
        if (st != SD_OK) return st;
        double g = sqrt(sd_sde_g2(s, t)); /* G = diag(g h'(y)), h'(y) = sech x */
        for (size_t i = 0; i < n * D; i++) out[i] = (float)(g / cosh((double)x[i]) * z[i]);
        return SD_OK;
    }
    default: scale_batch(sqrt(sd_sde_g2(s, t)), z, out, n, D); return SD_OK;
    }
}

sd_status sd_sde_apply_GGT(const sd_sde *s, double t, const float *x, const float *v, float *out,
                           size_t n, size_t D)
{
    switch (s->kind) {
    case SD_SDE_DCT: return dct_apply(s, DCT_GGT, t, v, out, n, D, false, "GGT");
    case SD_SDE_DENSE: {
        sd_status st = dense_check(s, D, "GGT");
        if (st == SD_OK) dense_apply(s, DENSE_C, sd_sde_g2(s, t), v, out, n);
        return st;
    }
    case SD_SDE_STATE: {
        sd_status st = need_x(x, "GGT");
        if (st != SD_OK) return st;
        double g2 = sd_sde_g2(s, t);
        for (size_t i = 0; i < n * D; i++) {
            double c = cosh((double)x[i]);
            out[i] = (float)(g2 / (c * c) * v[i]);
        }
        return SD_OK;
    }
    default: scale_batch(sd_sde_g2(s, t), v, out, n, D); return SD_OK;
    }
}

/* div[G G^T] of the state family by reverse-mode autodiff: the diagonal
 * m(x) = g2 sech^2 x of G G^T is built from graph ops as 4 g2 / (e^x + e^-x)^2
 * (every op's backward is then accurate to float relative precision: the
 * forms 1 - tanh^2 or sigmoid(2x) sigmoid(-2x) lose it to cancellation for
 * |x| of a few units, where sech^2 x << 1), and for a diagonal matrix field
 * (div M)_i = d m_i / dx_i, the i-th component of the vector-Jacobian product
 * with cotangent e_i (one backward pass per coordinate; row p depends on x_p
 * only, so every row is done in the same pass). Valid for |x| < 44 (e^2x
 * finite in float), i.e. |y| < 6e18. */
static sd_status state_div_ggt(const sd_sde *s, double t, const float *x, float *out, size_t n,
                               size_t D)
{
    if (n == 0) return SD_OK;
    if (n > (size_t)INT32_MAX / (D ? D : 1))
        return sd_error(SD_ERR_INVALID, "sde state (div GGT): batch too large");
    sd_graph *g = sd_graph_new();
    if (!g) return sd_error(SD_ERR_NOMEM, "sde state (div GGT): cannot create a graph");
    sd_status st = SD_OK;
    sd_tensor *xt = sd_tensor_new(g, 2, (int[]){(int)n, (int)D});
    sd_tensor *k = sd_tensor_new(g, 1, (int[]){1});
    float *cot = sd_graph_alloc_floats(g, n * D);
    if (!xt || !k || !cot) {
        st = sd_graph_status(g) != SD_OK ? sd_graph_status(g) : SD_ERR_NOMEM;
        goto done;
    }
    memcpy(xt->data, x, n * D * sizeof(float));
    sd_tensor_requires_grad(xt);
    k->data[0] = (float)(4.0 * sd_sde_g2(s, t));
    sd_tensor *c = sd_add(g, sd_exp(g, xt), sd_exp(g, sd_scale(g, xt, -1.0f))); /* 2 cosh x */
    sd_tensor *m = sd_div(g, k, sd_square(g, c));
    if (!m) {
        st = sd_graph_status(g) != SD_OK ? sd_graph_status(g) : SD_ERR_INTERNAL;
        goto done;
    }
    for (size_t i = 0; i < D && st == SD_OK; i++) {
        memset(cot, 0, n * D * sizeof(float));
        for (size_t p = 0; p < n; p++) cot[p * D + i] = 1.0f;
        st = sd_graph_backward(g, m, cot);
        for (size_t p = 0; p < n && st == SD_OK; p++) out[p * D + i] = xt->grad[p * D + i];
    }
done:
    sd_graph_free(g);
    return st;
}

sd_status sd_sde_div_GGT(const sd_sde *s, double t, const float *x, float *out, size_t n,
                         size_t D)
{
    if (s->kind != SD_SDE_STATE) {
        memset(out, 0, n * D * sizeof(float));
        return SD_OK;
    }
    sd_status st = need_x(x, "div GGT");
    return st != SD_OK ? st : state_div_ggt(s, t, x, out, n, D);
}

double sd_sde_drift_divergence(const sd_sde *s, double t, size_t D)
{
    if (s->kind == SD_SDE_STATE) return NAN;
    if (s->kind == SD_SDE_DCT) {
        if (s->shape_c < 1 || (size_t)s->shape_c * s->shape_h * s->shape_w != D) return NAN;
        double acc = 0.0;
        for (int k1 = 0; k1 < s->shape_h; k1++)
            for (int k2 = 0; k2 < s->shape_w; k2++)
                acc += dct_value(s, DCT_DRIFT, t, dct_lambda(s, k1, k2));
        return acc * s->shape_c;
    }
    return drift_coef(s, t) * (double)D;
}

sd_status sd_sde_flow_divergence(const sd_sde *s, double t, const float *x, double *out,
                                 size_t n, size_t D)
{
    if (s->kind != SD_SDE_STATE) {
        double tr = sd_sde_drift_divergence(s, t, D);
        if (isnan(tr)) return dct_check(s, D, "flow divergence");
        for (size_t p = 0; p < n; p++) out[p] = tr;
        return SD_OK;
    }
    sd_status st = need_x(x, "flow divergence");
    if (st != SD_OK) return st;
    /* f - 1/2 div M = -1/2 g2 tanh sech^2 + g2 tanh sech^2 = 1/2 g2 tanh x sech^2 x
     * per coordinate; d/dx (tanh sech^2) = sech^4 - 2 tanh^2 sech^2. */
    double g2 = sd_sde_g2(s, t);
    for (size_t p = 0; p < n; p++) {
        double acc = 0.0;
        for (size_t i = 0; i < D; i++) {
            double xi = x[p * D + i], c = cosh(xi), th = tanh(xi), se2 = 1.0 / (c * c);
            acc += se2 * se2 - 2.0 * th * th * se2;
        }
        out[p] = 0.5 * g2 * acc;
    }
    return SD_OK;
}

sd_status sd_sde_tweedie(const sd_sde *s, double t, const float *x, const float *score,
                         float *out, size_t n, size_t D)
{
    if (s->kind == SD_SDE_STATE) return state_invalid("Tweedie denoising");
    double sig = sd_sde_sigma(s, t), s2 = sig * sig;
    if (s->kind == SD_SDE_DENSE) {
        /* A = I: x + sigma^2 C s */
        sd_status st = dense_check(s, D, "tweedie");
        if (st != SD_OK) return st;
        float *tmp = sd_malloc((n * D > 0 ? n * D : 1) * sizeof(float));
        if (!tmp) return SD_ERR_NOMEM;
        dense_apply(s, DENSE_C, s2, score, tmp, n);
        for (size_t i = 0; i < n * D; i++) out[i] = x[i] + tmp[i];
        sd_free(tmp);
        return SD_OK;
    }
    if (s->kind == SD_SDE_DCT) {
        float fs = (float)s2;
        for (size_t i = 0; i < n * D; i++) out[i] = x[i] + fs * score[i];
        return dct_apply(s, DCT_MEAN_INV, t, out, out, n, D, false, "tweedie");
    }
    double a = sd_sde_mean_coef(s, t);
    float c1 = (float)(1.0 / a), c2 = (float)(s2 / a);
    for (size_t i = 0; i < n * D; i++) out[i] = c1 * x[i] + c2 * score[i];
    return SD_OK;
}

sd_status sd_sde_perturb(const sd_sde *s, double t, const float *x0, const float *z, float *xt,
                         float *target, float *metric, size_t n, size_t D)
{
    size_t total = n * D;
    if (s->kind == SD_SDE_STATE) {
        /* y0 = sinh x0, y = y0 + sigma z, x_t = asinh y; log p(x | x0) =
         * log N(sinh x; y0, sigma^2) + log cosh x, so the target is
         * -(y - y0)/sigma^2 cosh x_t + tanh x_t = -z cosh(x_t)/sigma + tanh x_t. */
        double sig = sd_sde_sigma(s, t);
        for (size_t i = 0; i < total; i++) {
            double y = sinh((double)x0[i]) + sig * z[i], xi = asinh(y);
            xt[i] = (float)xi;
            if (target) target[i] = (float)(-(double)z[i] * cosh(xi) / sig + tanh(xi));
            if (metric) metric[i] = (float)(1.0 / cosh(xi));
        }
        return SD_OK;
    }
    /* x_t = A x0 + Sigma^{1/2} z; target = -Sigma^{-1} (Sigma^{1/2} z).
     * The noise goes through target's memory (or a temporary) first. */
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

/* ---- modes ------------------------------------------------------------------------ */

sd_status sd_sde_modes(const sd_sde *s, double t, size_t D, double *a, double *var, double *f,
                       double *gg)
{
    if (s->kind == SD_SDE_STATE) return state_invalid("a mode decomposition");
    double sig = sd_sde_sigma(s, t), s2 = sig * sig;
    sd_status st = SD_OK;
    if (s->kind == SD_SDE_DCT && (st = dct_check(s, D, "modes")) != SD_OK) return st;
    if (s->kind == SD_SDE_DENSE && (st = dense_check(s, D, "modes")) != SD_OK) return st;
    for (size_t k = 0; k < D; k++) {
        if (s->kind == SD_SDE_DCT) {
            size_t HW = (size_t)s->shape_h * s->shape_w, r = k % HW;
            double lam = dct_lambda(s, (int)(r / s->shape_w), (int)(r % s->shape_w));
            if (a) a[k] = dct_value(s, DCT_MEAN, t, lam);
            if (var) var[k] = s2;
            if (f) f[k] = dct_value(s, DCT_DRIFT, t, lam);
            if (gg) gg[k] = dct_value(s, DCT_GGT, t, lam);
        } else if (s->kind == SD_SDE_DENSE) {
            if (a) a[k] = 1.0;
            if (var) var[k] = s2 * s->eigval[k];
            if (f) f[k] = 0.0;
            if (gg) gg[k] = sd_sde_g2(s, t) * s->eigval[k];
        } else {
            double ac = sd_sde_mean_coef(s, t);
            if (a) a[k] = ac;
            if (var) var[k] = s2;
            if (f) f[k] = drift_coef(s, t);
            if (gg) gg[k] = sd_sde_g2(s, t);
        }
    }
    return SD_OK;
}

sd_status sd_sde_to_modes(const sd_sde *s, const float *v, float *out, size_t n, size_t D)
{
    switch (s->kind) {
    case SD_SDE_STATE: return state_invalid("a mode decomposition");
    case SD_SDE_DCT: return dct_apply(s, DCT_NONE, 0.0, v, out, n, D, true, "to_modes");
    case SD_SDE_DENSE: {
        sd_status st = dense_check(s, D, "to_modes");
        if (st == SD_OK) dense_apply(s, DENSE_QT, 1.0, v, out, n);
        return st;
    }
    default:
        if (out != v) memcpy(out, v, n * D * sizeof(float));
        return SD_OK;
    }
}

/* ---- prior ---------------------------------------------------------------------------- */

static double prior_std(const sd_sde *s)
{
    return ve_schedule(s->kind) ? s->sigma_max : 1.0;
}

sd_status sd_sde_prior_sample(const sd_sde *s, sd_rng *rng, float *x, size_t n, size_t D)
{
    if (s->kind == SD_SDE_DENSE) {
        sd_status st = dense_check(s, D, "prior");
        if (st != SD_OK) return st;
        sd_rng_fill_normal(rng, x, n * D, 0.0f, 1.0f);
        dense_apply(s, DENSE_L, s->sigma_max, x, x, n);
        return SD_OK;
    }
    sd_rng_fill_normal(rng, x, n * D, 0.0f, (float)prior_std(s));
    if (s->kind == SD_SDE_STATE)
        for (size_t i = 0; i < n * D; i++) x[i] = (float)asinh((double)x[i]);
    return SD_OK;
}

double sd_sde_prior_logp(const sd_sde *s, const float *x, size_t D)
{
    double std = prior_std(s), ss = 0.0;
    if (s->kind == SD_SDE_DENSE) {
        if (dense_check(s, D, "prior") != SD_OK) return NAN;
        /* N(0, smax^2 C): |L^-1 x|^2 / smax^2 + log det = 2 sum log L_ii + D log smax^2 */
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
    if (s->kind == SD_SDE_STATE) {
        /* y = sinh x ~ N(0, smax^2 I); |dy/dx| = prod cosh x_i */
        double lj = 0.0;
        for (size_t i = 0; i < D; i++) {
            double y = sinh((double)x[i]);
            ss += y * y;
            lj += log(cosh((double)x[i]));
        }
        return -0.5 * ss / (std * std) - (double)D * (log(std) + 0.5 * SD_LOG_2PI) + lj;
    }
    for (size_t i = 0; i < D; i++) ss += (double)x[i] * x[i];
    return -0.5 * ss / (std * std) - (double)D * (log(std) + 0.5 * SD_LOG_2PI);
}

/* Orthonormal DCT-II matrix entry B[k][n] of one N-point axis. */
static double dct_basis(int N, int k, int n)
{
    double s = k == 0 ? sqrt(1.0 / N) : sqrt(2.0 / N);
    return s * cos(M_PI * k * (2.0 * n + 1.0) / (2.0 * N));
}

sd_status sd_sde_kernel_dense(const sd_sde *s, double t, size_t D, double *A, double *Sigma)
{
    if (s->kind == SD_SDE_STATE) return state_invalid("a dense Gaussian kernel");
    double a = sd_sde_mean_coef(s, t), sig = sd_sde_sigma(s, t);
    if (s->kind == SD_SDE_DENSE) {
        sd_status st = dense_check(s, D, "kernel");
        if (st != SD_OK) return st;
        for (size_t i = 0; i < D * D; i++) {
            A[i] = i / D == i % D ? 1.0 : 0.0;
            Sigma[i] = sig * sig * s->cov[i];
        }
        return SD_OK;
    }
    if (s->kind == SD_SDE_DCT) {
        /* A = B diag(a_k) B^T in double, block-diagonal over channels:
         * A[(c,i1,i2)][(c,j1,j2)] = sum_k a_k B_H[k1][i1] B_W[k2][i2] B_H[k1][j1] B_W[k2][j2]. */
        sd_status st = dct_check(s, D, "kernel");
        if (st != SD_OK) return st;
        int H = s->shape_h, W = s->shape_w;
        size_t HW = (size_t)H * W;
        for (size_t i = 0; i < D * D; i++) {
            A[i] = 0.0;
            Sigma[i] = i / D == i % D ? sig * sig : 0.0;
        }
        for (int k1 = 0; k1 < H; k1++)
            for (int k2 = 0; k2 < W; k2++) {
                double ak = dct_value(s, DCT_MEAN, t, dct_lambda(s, k1, k2));
                for (size_t i = 0; i < HW; i++) {
                    double bi = dct_basis(H, k1, (int)(i / W)) * dct_basis(W, k2, (int)(i % W));
                    for (size_t j = 0; j < HW; j++) {
                        double bj = dct_basis(H, k1, (int)(j / W)) * dct_basis(W, k2, (int)(j % W));
                        for (int c = 0; c < s->shape_c; c++)
                            A[(c * HW + i) * D + c * HW + j] += ak * bi * bj;
                    }
                }
            }
        return SD_OK;
    }
    for (size_t i = 0; i < D; i++)
        for (size_t j = 0; j < D; j++) {
            A[i * D + j] = i == j ? a : 0.0;
            Sigma[i * D + j] = i == j ? sig * sig : 0.0;
        }
    return SD_OK;
}

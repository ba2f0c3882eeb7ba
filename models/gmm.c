/* gmm.c - exact scores and densities of Gaussian mixtures under any noise
 * family's Gaussian kernel; see gmm.h for the formulas. */
#include "sd/gmm.h"

#include <cjson/cJSON.h>
#include <lapacke.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sd/rng.h"
#include "sd/file.h"

static const double LOG_2PI = 1.8378770664093453;

struct sd_gmm {
    int K, D;
    double *weights, *means, *covs;
    double *chol0;   /* Cholesky factors of C_k, for sampling */
    /* Perturbed components at cache_t: means A mu_k, Cholesky of S_k, log det */
    double cache_t;
    int cache_valid;
    sd_sde cache_sde;
    double *pmean, *pchol, *plogdet;
    double *A, *Sigma, *tmp; /* D x D work */
    double *work;           /* per point: K*D + K + 2*D */
    /* Second derivatives (sd_gmm_score_hessian / _hvp), allocated on first
     * use: S_k^{-1} of the perturbed components at hinv_t, and per-point work
     * d_k = S_k^{-1}(m_k - x) - s [K*D], r [K], u [D]. */
    double *hinv, *hwork;
    double hinv_t;
    sd_sde hinv_sde;
    int hinv_valid;
};

/* Lower Cholesky in place (row-major); on failure, message names the pivot. */
static sd_status cholesky(double *M, int D, const char *what, int k)
{
    lapack_int info = LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'L', D, M, D);
    if (info > 0)
        return sd_error(SD_ERR_NUMERIC,
                        "%s: covariance of component %d is not positive definite (pivot %d)",
                        what, k, (int)info);
    if (info < 0) return sd_error(SD_ERR_INTERNAL, "%s: dpotrf argument %d", what, (int)-info);
    for (int i = 0; i < D; i++)
        for (int j = i + 1; j < D; j++) M[i * D + j] = 0.0;
    return SD_OK;
}

void sd_gmm_free(sd_gmm *g)
{
    if (!g) return;
    sd_free(g->weights);
    sd_free(g->means);
    sd_free(g->covs);
    sd_free(g->chol0);
    sd_free(g->pmean);
    sd_free(g->pchol);
    sd_free(g->plogdet);
    sd_free(g->A);
    sd_free(g->Sigma);
    sd_free(g->tmp);
    sd_free(g->work);
    sd_free(g->hinv);
    sd_free(g->hwork);
    sd_free(g);
}

sd_status sd_gmm_new(int K, int D, const double *weights, const double *means, const double *covs,
                     sd_gmm **out)
{
    *out = NULL;
    if (K < 1 || D < 1 || K > 100000 || D > 4096)
        return sd_error(SD_ERR_INVALID, "gmm: need 1 <= K <= 100000 components and 1 <= D <= 4096 "
                                        "dimensions (got K=%d, D=%d)", K, D);
    double wsum = 0.0;
    for (int k = 0; k < K; k++) {
        if (!(weights[k] > 0.0) || !isfinite(weights[k]))
            return sd_error(SD_ERR_INVALID, "gmm: weight %d is %g (must be positive)", k, weights[k]);
        wsum += weights[k];
    }
    if (fabs(wsum - 1.0) > 1e-6)
        return sd_error(SD_ERR_INVALID, "gmm: weights sum to %.9g, not 1", wsum);
    size_t KD = (size_t)K * D, KDD = KD * (size_t)D, DD = (size_t)D * D;
    sd_gmm *g = sd_calloc(1, sizeof *g);
    if (!g) return SD_ERR_NOMEM;
    g->K = K;
    g->D = D;
    g->weights = sd_malloc(K * sizeof(double));
    g->means = sd_malloc(KD * sizeof(double));
    g->covs = sd_malloc(KDD * sizeof(double));
    g->chol0 = sd_malloc(KDD * sizeof(double));
    g->pmean = sd_malloc(KD * sizeof(double));
    g->pchol = sd_malloc(KDD * sizeof(double));
    g->plogdet = sd_malloc(K * sizeof(double));
    g->A = sd_malloc(DD * sizeof(double));
    g->Sigma = sd_malloc(DD * sizeof(double));
    g->tmp = sd_malloc(DD * sizeof(double));
    g->work = sd_malloc((KD + K + 2 * (size_t)D) * sizeof(double));
    if (!g->weights || !g->means || !g->covs || !g->chol0 || !g->pmean || !g->pchol ||
        !g->plogdet || !g->A || !g->Sigma || !g->tmp || !g->work) {
        sd_gmm_free(g);
        return SD_ERR_NOMEM;
    }
    memcpy(g->weights, weights, K * sizeof(double));
    memcpy(g->means, means, KD * sizeof(double));
    memcpy(g->covs, covs, KDD * sizeof(double));
    for (int k = 0; k < K; k++) {
        const double *C = covs + (size_t)k * DD;
        for (int i = 0; i < D; i++)
            for (int j = 0; j < i; j++)
                if (fabs(C[i * D + j] - C[j * D + i]) > 1e-9 * (fabs(C[i * D + j]) + 1.0)) {
                    sd_gmm_free(g);
                    return sd_error(SD_ERR_INVALID,
                                    "gmm: covariance of component %d is not symmetric "
                                    "(entry [%d][%d] = %g but [%d][%d] = %g)",
                                    k, i, j, C[i * D + j], j, i, C[j * D + i]);
                }
        memcpy(g->chol0 + (size_t)k * DD, C, DD * sizeof(double));
        sd_status st = cholesky(g->chol0 + (size_t)k * DD, D, "gmm", k);
        if (st != SD_OK) {
            sd_gmm_free(g);
            return st;
        }
    }
    *out = g;
    return SD_OK;
}

int sd_gmm_dim(const sd_gmm *g) { return g->D; }
int sd_gmm_components(const sd_gmm *g) { return g->K; }
const double *sd_gmm_weights(const sd_gmm *g) { return g->weights; }
const double *sd_gmm_means(const sd_gmm *g) { return g->means; }
const double *sd_gmm_covs(const sd_gmm *g) { return g->covs; }

/* S_k = A C_k A^T + Sigma, factorised; means A mu_k. */
static sd_status prepare(sd_gmm *g, const sd_sde *sde, double t)
{
    if (g->cache_valid && g->cache_t == t && memcmp(&g->cache_sde, sde, sizeof *sde) == 0)
        return SD_OK;
    int D = g->D;
    size_t DD = (size_t)D * D;
    sd_status st = sd_sde_kernel_dense(sde, t, (size_t)D, g->A, g->Sigma);
    if (st != SD_OK) return st;
    for (int k = 0; k < g->K; k++) {
        const double *C = g->covs + k * DD, *mu = g->means + (size_t)k * D;
        double *S = g->pchol + k * DD, *m = g->pmean + (size_t)k * D;
        for (int i = 0; i < D; i++) {
            double acc = 0.0;
            for (int j = 0; j < D; j++) acc += g->A[i * D + j] * mu[j];
            m[i] = acc;
        }
        /* tmp = A C */
        for (int i = 0; i < D; i++)
            for (int j = 0; j < D; j++) {
                double acc = 0.0;
                for (int l = 0; l < D; l++) acc += g->A[i * D + l] * C[l * D + j];
                g->tmp[i * D + j] = acc;
            }
        /* S = tmp A^T + Sigma */
        for (int i = 0; i < D; i++)
            for (int j = 0; j < D; j++) {
                double acc = g->Sigma[i * D + j];
                for (int l = 0; l < D; l++) acc += g->tmp[i * D + l] * g->A[j * D + l];
                S[i * D + j] = acc;
            }
        st = cholesky(S, D, "gmm (perturbed)", k);
        if (st != SD_OK) return st;
        double logdet = 0.0;
        for (int i = 0; i < D; i++) logdet += 2.0 * log(S[i * D + i]);
        g->plogdet[k] = logdet;
    }
    g->cache_t = t;
    g->cache_sde = *sde;
    g->cache_valid = 1;
    return SD_OK;
}

/* For one point: y_k = L_k^{-1} (x - m_k) into work, log-weights into lw;
 * returns log p(x) by log-sum-exp (max subtracted for stability). */
static double point_terms(const sd_gmm *g, const float *x, double *y, double *lw)
{
    int D = g->D;
    size_t DD = (size_t)D * D;
    double lmax = -INFINITY;
    for (int k = 0; k < g->K; k++) {
        const double *L = g->pchol + k * DD, *m = g->pmean + (size_t)k * D;
        double *yk = y + (size_t)k * D, ss = 0.0;
        for (int i = 0; i < D; i++) { /* forward substitution L y = x - m */
            double acc = (double)x[i] - m[i];
            for (int j = 0; j < i; j++) acc -= L[i * D + j] * yk[j];
            yk[i] = acc / L[i * D + i];
            ss += yk[i] * yk[i];
        }
        lw[k] = log(g->weights[k]) - 0.5 * ss - 0.5 * g->plogdet[k] - 0.5 * D * LOG_2PI;
        if (lw[k] > lmax) lmax = lw[k];
    }
    double sum = 0.0;
    for (int k = 0; k < g->K; k++) sum += exp(lw[k] - lmax);
    return lmax + log(sum);
}

static sd_status lin_gmm_score(sd_gmm *g, const sd_sde *sde, double t, const float *x,
                               float *score, size_t n)
{
    sd_status st = prepare(g, sde, t);
    if (st != SD_OK) return st;
    int D = g->D;
    size_t DD = (size_t)D * D;
    double *y = g->work, *lw = y + (size_t)g->K * D, *acc = lw + g->K, *z = acc + D;
    for (size_t p = 0; p < n; p++) {
        const float *xp = x + p * D;
        double logp = point_terms(g, xp, y, lw);
        for (int i = 0; i < D; i++) acc[i] = 0.0;
        for (int k = 0; k < g->K; k++) {
            double r = exp(lw[k] - logp);
            if (r == 0.0) continue;
            /* S^{-1}(x - m) = L^{-T} y: backward substitution */
            const double *L = g->pchol + k * DD, *yk = y + (size_t)k * D;
            for (int i = D - 1; i >= 0; i--) {
                double a = yk[i];
                for (int j = i + 1; j < D; j++) a -= L[j * D + i] * z[j];
                z[i] = a / L[i * D + i];
            }
            for (int i = 0; i < D; i++) acc[i] -= r * z[i];
        }
        for (int i = 0; i < D; i++) score[p * D + i] = (float)acc[i];
    }
    return SD_OK;
}

static sd_status lin_gmm_logp(sd_gmm *g, const sd_sde *sde, double t, const float *x,
                              double *logp, size_t n)
{
    sd_status st = prepare(g, sde, t);
    if (st != SD_OK) return st;
    double *y = g->work, *lw = y + (size_t)g->K * g->D;
    for (size_t p = 0; p < n; p++) logp[p] = point_terms(g, x + p * g->D, y, lw);
    return SD_OK;
}

void sd_gmm_sample(const sd_gmm *g, sd_rng *rng, float *x, int *component, size_t n)
{
    int D = g->D;
    size_t DD = (size_t)D * D;
    for (size_t p = 0; p < n; p++) {
        double u = sd_rng_uniform_double(rng), c = 0.0;
        int k = g->K - 1;
        for (int j = 0; j < g->K; j++) {
            c += g->weights[j];
            if (u < c) {
                k = j;
                break;
            }
        }
        if (component) component[p] = k;
        double z[4096];
        for (int i = 0; i < D; i++) z[i] = sd_rng_normal(rng);
        const double *L = g->chol0 + k * DD, *mu = g->means + (size_t)k * D;
        for (int i = 0; i < D; i++) {
            double acc = mu[i];
            for (int j = 0; j <= i; j++) acc += L[i * D + j] * z[j];
            x[p * D + i] = (float)acc;
        }
    }
}

/* ---- JSON ---------------------------------------------------------------- */

static sd_status json_numbers(const cJSON *arr, double *out, int n, const char *what,
                              const char *field)
{
    if (!cJSON_IsArray(arr) || cJSON_GetArraySize(arr) != n)
        return sd_error(SD_ERR_FORMAT, "%s: \"%s\" must be an array of %d numbers", what, field, n);
    int i = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, arr)
    {
        if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
            return sd_error(SD_ERR_FORMAT, "%s: \"%s\" entry %d is not a finite number", what,
                            field, i);
        out[i++] = v->valuedouble;
    }
    return SD_OK;
}

sd_status sd_gmm_parse_json(const char *text, const char *what, sd_gmm **out)
{
    *out = NULL;
    cJSON *root = cJSON_Parse(text);
    if (!root) return sd_error(SD_ERR_FORMAT, "%s: not valid JSON", what);
    sd_status st = SD_OK;
    double *w = NULL, *mu = NULL, *cov = NULL;
    const cJSON *jw = cJSON_GetObjectItemCaseSensitive(root, "weights");
    const cJSON *jm = cJSON_GetObjectItemCaseSensitive(root, "means");
    const cJSON *jc = cJSON_GetObjectItemCaseSensitive(root, "covs");
    if (!cJSON_IsArray(jw) || !cJSON_IsArray(jm) || !cJSON_IsArray(jc)) {
        st = sd_error(SD_ERR_FORMAT, "%s: needs arrays \"weights\", \"means\" and \"covs\"", what);
        goto done;
    }
    int K = cJSON_GetArraySize(jw);
    const cJSON *m0 = cJSON_GetArrayItem(jm, 0);
    int D = m0 ? cJSON_GetArraySize(m0) : 0;
    if (K < 1 || D < 1 || K > 100000 || D > 4096 || cJSON_GetArraySize(jm) != K ||
        cJSON_GetArraySize(jc) != K) {
        st = sd_error(SD_ERR_FORMAT,
                      "%s: %d weights, %d means and %d covs: counts must agree and be >= 1", what,
                      K, cJSON_GetArraySize(jm), cJSON_GetArraySize(jc));
        goto done;
    }
    w = sd_malloc(K * sizeof(double));
    mu = sd_malloc((size_t)K * D * sizeof(double));
    cov = sd_malloc((size_t)K * D * D * sizeof(double));
    if (!w || !mu || !cov) {
        st = SD_ERR_NOMEM;
        goto done;
    }
    if ((st = json_numbers(jw, w, K, what, "weights")) != SD_OK) goto done;
    for (int k = 0; k < K; k++) {
        if ((st = json_numbers(cJSON_GetArrayItem(jm, k), mu + (size_t)k * D, D, what, "means")) !=
            SD_OK)
            goto done;
        const cJSON *ck = cJSON_GetArrayItem(jc, k);
        if (!cJSON_IsArray(ck) || cJSON_GetArraySize(ck) != D) {
            st = sd_error(SD_ERR_FORMAT, "%s: covs[%d] must be a %d x %d matrix", what, k, D, D);
            goto done;
        }
        for (int i = 0; i < D; i++)
            if ((st = json_numbers(cJSON_GetArrayItem(ck, i), cov + ((size_t)k * D + i) * D, D,
                                   what, "covs")) != SD_OK)
                goto done;
    }
    st = sd_gmm_new(K, D, w, mu, cov, out);
    if (st != SD_OK) {
        char msg[512];
        snprintf(msg, sizeof msg, "%s", sd_error_message());
        st = sd_error(st, "%s: %s", what, msg);
    }
done:
    sd_free(w);
    sd_free(mu);
    sd_free(cov);
    cJSON_Delete(root);
    return st;
}

sd_status sd_gmm_load_json(const char *path, sd_gmm **out)
{
    *out = NULL;
    /* sd/file.h: at most 64 MiB, regular files only (a FIFO never blocks) */
    char *text = NULL;
    size_t len;
    sd_status st = sd_file_read_all(path, (size_t)64 << 20, &text, &len);
    if (st != SD_OK) return st;
    st = sd_gmm_parse_json(text, path, out);
    sd_free(text);
    return st;
}

/* ---- second derivatives (likelihood estimators) -------------------------- */

/* Differentiating the score of gmm.h once more gives the Hessian of log p_t,
 * i.e. the Jacobian of the score:
 *     H = sum_k r_k (g_k g_k^T - S_k^{-1}) - s s^T,   g_k = -S_k^{-1}(x - A mu_k),
 * with s = sum_k r_k g_k. Because sum_k r_k = 1 this equals the centred form
 *     H = sum_k r_k (d_k d_k^T - S_k^{-1}),           d_k = g_k - s,
 * which we use: it has no cancellation between g g^T and s s^T when one
 * component dominates (a single Gaussian gives exactly -S^{-1}). */
static sd_status hess_prepare(sd_gmm *g, const sd_sde *sde, double t, int need_inv)
{
    sd_status st = prepare(g, sde, t);
    if (st != SD_OK) return st;
    size_t K = (size_t)g->K, D = (size_t)g->D, DD = D * D;
    if (!g->hwork) {
        g->hwork = sd_malloc((K * D + K + 2 * D) * sizeof(double));
        if (!g->hwork) return SD_ERR_NOMEM;
    }
    if (!need_inv ||
        (g->hinv_valid && g->hinv_t == t && memcmp(&g->hinv_sde, sde, sizeof *sde) == 0))
        return SD_OK;
    if (!g->hinv) {
        g->hinv = sd_malloc(K * DD * sizeof(double));
        if (!g->hinv) return SD_ERR_NOMEM;
    }
    g->hinv_valid = 0;
    for (size_t k = 0; k < K; k++) {
        double *M = g->hinv + k * DD;
        memcpy(M, g->pchol + k * DD, DD * sizeof(double));
        /* S^{-1} from its Cholesky factor (lower triangle), then mirror. */
        lapack_int info = LAPACKE_dpotri(LAPACK_ROW_MAJOR, 'L', g->D, M, g->D);
        if (info != 0)
            return sd_error(SD_ERR_NUMERIC, "gmm: inverting component %zu failed (dpotri %d)", k,
                            (int)info);
        for (size_t i = 0; i < D; i++)
            for (size_t j = i + 1; j < D; j++) M[i * D + j] = M[j * D + i];
    }
    g->hinv_t = t;
    g->hinv_sde = *sde;
    g->hinv_valid = 1;
    return SD_OK;
}

/* One point: responsibilities r [K], score s [D] and centred directions
 * d_k = g_k - s [K, D] (rows with r_k == 0 are left unset and skipped). */
static void point_dirs(sd_gmm *g, const float *x, double *r, double *s, double *d)
{
    int K = g->K, D = g->D;
    size_t DD = (size_t)D * D;
    double *y = g->work, *lw = y + (size_t)K * D;
    double logp = point_terms(g, x, y, lw);
    for (int i = 0; i < D; i++) s[i] = 0.0;
    for (int k = 0; k < K; k++) {
        r[k] = exp(lw[k] - logp);
        if (r[k] == 0.0) continue;
        /* g_k = -S_k^{-1}(x - m_k) = -L^{-T} y_k: backward substitution */
        const double *L = g->pchol + k * DD, *yk = y + (size_t)k * D;
        double *dk = d + (size_t)k * D;
        for (int i = D - 1; i >= 0; i--) {
            double a = yk[i];
            for (int j = i + 1; j < D; j++) a -= L[j * D + i] * dk[j];
            dk[i] = a / L[i * D + i];
        }
        for (int i = 0; i < D; i++) {
            dk[i] = -dk[i];
            s[i] += r[k] * dk[i];
        }
    }
    for (int k = 0; k < K; k++)
        if (r[k] != 0.0)
            for (int i = 0; i < D; i++) d[(size_t)k * D + i] -= s[i];
}

static sd_status lin_gmm_score_hessian(sd_gmm *g, const sd_sde *sde, double t, const float *x,
                                       float *score, double *H, size_t n)
{
    sd_status st = hess_prepare(g, sde, t, 1);
    if (st != SD_OK) return st;
    int K = g->K, D = g->D;
    size_t DD = (size_t)D * D;
    double *d = g->hwork, *r = d + (size_t)K * D, *s = r + K;
    for (size_t p = 0; p < n; p++) {
        point_dirs(g, x + p * D, r, s, d);
        double *Hp = H + p * DD;
        for (size_t e = 0; e < DD; e++) Hp[e] = 0.0;
        for (int k = 0; k < K; k++) {
            if (r[k] == 0.0) continue;
            const double *dk = d + (size_t)k * D, *Si = g->hinv + k * DD;
            for (int i = 0; i < D; i++) {
                double ri = r[k] * dk[i];
                for (int j = 0; j < D; j++) Hp[i * D + j] += ri * dk[j] - r[k] * Si[i * D + j];
            }
        }
        if (score)
            for (int i = 0; i < D; i++) score[p * D + i] = (float)s[i];
    }
    return SD_OK;
}

static sd_status lin_gmm_score_hvp(sd_gmm *g, const sd_sde *sde, double t, const float *x,
                                   size_t n, const float *v, int m, float *score, double *hv)
{
    sd_status st = hess_prepare(g, sde, t, 0);
    if (st != SD_OK) return st;
    int K = g->K, D = g->D;
    size_t DD = (size_t)D * D;
    double *d = g->hwork, *r = d + (size_t)K * D, *s = r + K, *u = s + D;
    for (size_t p = 0; p < n; p++) {
        point_dirs(g, x + p * D, r, s, d);
        for (int j = 0; j < m; j++) {
            const float *vj = v + (p * (size_t)m + j) * D;
            double *out = hv + (p * (size_t)m + j) * D;
            for (int i = 0; i < D; i++) out[i] = 0.0;
            for (int k = 0; k < K; k++) {
                if (r[k] == 0.0) continue;
                const double *L = g->pchol + k * DD, *dk = d + (size_t)k * D;
                double dv = 0.0;
                for (int i = 0; i < D; i++) dv += dk[i] * vj[i];
                /* u = S_k^{-1} v = L^{-T} L^{-1} v: two triangular solves */
                for (int i = 0; i < D; i++) {
                    double a = vj[i];
                    for (int l = 0; l < i; l++) a -= L[i * D + l] * u[l];
                    u[i] = a / L[i * D + i];
                }
                for (int i = D - 1; i >= 0; i--) {
                    double a = u[i];
                    for (int l = i + 1; l < D; l++) a -= L[l * D + i] * u[l];
                    u[i] = a / L[i * D + i];
                }
                for (int i = 0; i < D; i++) out[i] += r[k] * (dk[i] * dv - u[i]);
            }
        }
        if (score)
            for (int i = 0; i < D; i++) score[p * D + i] = (float)s[i];
    }
    return SD_OK;
}

/* ---- the state family: change of variables x = asinh(y) ------------------ */

/* Under sde.h's `state` family the data are x_0 = asinh(y_0) with y_0 from
 * the mixture, and x_t = asinh(y_t) with y_t the ve diffusion of y_0, so
 *     p_t(x) = p^ve_t(y) prod_i cosh x_i,    y = sinh x,
 *     s_x = cosh(x) s_y(y) + tanh x,
 *     H_x = diag(cosh x) H_y diag(cosh x) + diag(sinh(x) s_y + sech^2 x),
 * with p^ve_t, s_y, H_y the mixture's under ve (the formulas above). */
static sd_sde state_base(const sd_sde *sde)
{
    sd_sde ve;
    memset(&ve, 0, sizeof ve);
    sd_sde_latent(sde, &ve); /* cannot fail: only called for state-dependent families */
    return ve;
}

/* y = sinh x as floats, and s_y (if sy) into a buffer of the same size. */
static sd_status state_points(const float *x, size_t count, float **y, float **sy)
{
    size_t bytes = (count ? count : 1) * sizeof(float); /* n = 0 is a valid call */
    *y = sd_malloc(bytes);
    if (sy) *sy = sd_malloc(bytes);
    if (!*y || (sy && !*sy)) {
        sd_free(*y);
        if (sy) sd_free(*sy);
        return SD_ERR_NOMEM;
    }
    for (size_t i = 0; i < count; i++) (*y)[i] = (float)sinh((double)x[i]);
    return SD_OK;
}

sd_status sd_gmm_score(sd_gmm *g, const sd_sde *sde, double t, const float *x, float *score,
                       size_t n)
{
    if (!sd_sde_state_dependent(sde)) return lin_gmm_score(g, sde, t, x, score, n);
    sd_sde ve = state_base(sde);
    size_t count = n * (size_t)g->D;
    float *y;
    sd_status st = state_points(x, count, &y, NULL);
    if (st != SD_OK) return st;
    st = lin_gmm_score(g, &ve, t, y, score, n);
    for (size_t i = 0; i < count && st == SD_OK; i++) {
        double xi = x[i];
        score[i] = (float)(cosh(xi) * score[i] + tanh(xi));
    }
    sd_free(y);
    return st;
}

sd_status sd_gmm_logp(sd_gmm *g, const sd_sde *sde, double t, const float *x, double *logp,
                      size_t n)
{
    if (!sd_sde_state_dependent(sde)) return lin_gmm_logp(g, sde, t, x, logp, n);
    sd_sde ve = state_base(sde);
    size_t D = (size_t)g->D;
    float *y;
    sd_status st = state_points(x, n * D, &y, NULL);
    if (st != SD_OK) return st;
    st = lin_gmm_logp(g, &ve, t, y, logp, n);
    for (size_t p = 0; p < n && st == SD_OK; p++)
        for (size_t i = 0; i < D; i++) logp[p] += log(cosh((double)x[p * D + i]));
    sd_free(y);
    return st;
}

sd_status sd_gmm_score_hessian(sd_gmm *g, const sd_sde *sde, double t, const float *x,
                               float *score, double *H, size_t n)
{
    if (!sd_sde_state_dependent(sde)) return lin_gmm_score_hessian(g, sde, t, x, score, H, n);
    sd_sde ve = state_base(sde);
    size_t D = (size_t)g->D;
    float *y, *sy;
    sd_status st = state_points(x, n * D, &y, &sy);
    if (st != SD_OK) return st;
    st = lin_gmm_score_hessian(g, &ve, t, y, sy, H, n);
    for (size_t p = 0; p < n && st == SD_OK; p++) {
        const float *xp = x + p * D;
        double *Hp = H + p * D * D;
        for (size_t i = 0; i < D; i++)
            for (size_t j = 0; j < D; j++)
                Hp[i * D + j] *= cosh((double)xp[i]) * cosh((double)xp[j]);
        for (size_t i = 0; i < D; i++) {
            double xi = xp[i], c = cosh(xi);
            Hp[i * D + i] += sinh(xi) * sy[p * D + i] + 1.0 / (c * c);
            if (score) score[p * D + i] = (float)(c * sy[p * D + i] + tanh(xi));
        }
    }
    sd_free(y);
    sd_free(sy);
    return st;
}

sd_status sd_gmm_score_hvp(sd_gmm *g, const sd_sde *sde, double t, const float *x, size_t n,
                           const float *v, int m, float *score, double *hv)
{
    if (!sd_sde_state_dependent(sde)) return lin_gmm_score_hvp(g, sde, t, x, n, v, m, score, hv);
    sd_sde ve = state_base(sde);
    size_t D = (size_t)g->D, rows = n * (size_t)m;
    float *y, *sy, *cv = sd_malloc((rows ? rows : 1) * D * sizeof(float));
    sd_status st = cv ? state_points(x, n * D, &y, &sy) : SD_ERR_NOMEM;
    if (st != SD_OK) {
        sd_free(cv);
        return st;
    }
    /* H_x v = cosh . H_y (cosh . v) + (sinh s_y + sech^2) . v */
    for (size_t p = 0; p < n; p++)
        for (int j = 0; j < m; j++)
            for (size_t i = 0; i < D; i++) {
                size_t r = (p * (size_t)m + j) * D + i;
                cv[r] = (float)(cosh((double)x[p * D + i]) * v[r]);
            }
    st = lin_gmm_score_hvp(g, &ve, t, y, n, cv, m, sy, hv);
    for (size_t p = 0; p < n && st == SD_OK; p++) {
        for (size_t i = 0; i < D; i++) {
            double xi = x[p * D + i], c = cosh(xi), d = sinh(xi) * sy[p * D + i] + 1.0 / (c * c);
            for (int j = 0; j < m; j++) {
                size_t r = (p * (size_t)m + j) * D + i;
                hv[r] = c * hv[r] + d * v[r];
            }
            if (score) score[p * D + i] = (float)(c * sy[p * D + i] + tanh(xi));
        }
    }
    sd_free(cv);
    sd_free(y);
    sd_free(sy);
    return st;
}

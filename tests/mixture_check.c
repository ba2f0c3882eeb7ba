/* mixture_check.c - see mixture_check.h. */
#include "mixture_check.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "sd/rng.h"

void mixture_free(mixture *m)
{
    free(m->w);
    free(m->mu);
    free(m->cov);
    m->w = m->mu = m->cov = NULL;
}

mixture mixture_ring8(void)
{
    mixture m = {"ring8", 8, 2, malloc(8 * sizeof(double)), malloc(16 * sizeof(double)),
                 malloc(32 * sizeof(double))};
    for (int k = 0; k < 8; k++) {
        double a = 2 * M_PI * k / 8, c = cos(a), s = sin(a);
        m.w[k] = k % 2 ? 0.15 : 0.10;
        m.mu[2 * k] = 4 * c;
        m.mu[2 * k + 1] = 4 * s;
        double l1 = 0.3, l2 = 0.05; /* R diag(l1, l2) R^T, long axis tangential */
        m.cov[4 * k + 0] = l2 * c * c + l1 * s * s;
        m.cov[4 * k + 1] = m.cov[4 * k + 2] = (l2 - l1) * c * s;
        m.cov[4 * k + 3] = l2 * s * s + l1 * c * c;
    }
    return m;
}

/* Random rotation by Gram-Schmidt on Gaussian columns. */
static void random_rotation(sd_rng *r, int D, double *R)
{
    for (int i = 0; i < D * D; i++) R[i] = sd_rng_normal(r);
    for (int j = 0; j < D; j++) {
        for (int p = 0; p < j; p++) {
            double dot = 0;
            for (int i = 0; i < D; i++) dot += R[i * D + j] * R[i * D + p];
            for (int i = 0; i < D; i++) R[i * D + j] -= dot * R[i * D + p];
        }
        double nn = 0;
        for (int i = 0; i < D; i++) nn += R[i * D + j] * R[i * D + j];
        for (int i = 0; i < D; i++) R[i * D + j] /= sqrt(nn);
    }
}

/* The covariance of component k is R diag(lambda) R^T, evaluated for j <= i
 * as sum_l (R_il lambda_l) R_jl and mirrored to (j, i) (mirror_upper: as
 * sum_l (R_jl lambda_l) R_il, the value at (j, i), mirrored to (i, j)). */
static mixture random_mixture(const char *name, int K, int D, const double *w,
                              double mean_scale, double cond, uint64_t seed, bool mirror_upper)
{
    mixture m = {name, K, D, malloc((size_t)K * sizeof(double)),
                 malloc((size_t)K * D * sizeof(double)), malloc((size_t)K * D * D * sizeof(double))};
    sd_rng r;
    sd_rng_init(&r, seed, SD_STREAM_INIT);
    double *R = malloc((size_t)D * D * sizeof(double));
    for (int k = 0; k < K; k++) {
        m.w[k] = w[k];
        for (int i = 0; i < D; i++) m.mu[k * D + i] = mean_scale * sd_rng_normal(&r);
        random_rotation(&r, D, R);
        for (int i = 0; i < D; i++)
            for (int j = 0; j <= i; j++) {
                const double *ra = R + (size_t)(mirror_upper ? j : i) * D;
                const double *rb = R + (size_t)(mirror_upper ? i : j) * D;
                double acc = 0;
                for (int l = 0; l < D; l++) {
                    double lam = D > 1 ? pow(1.0 / cond, (double)l / (D - 1)) : 1.0;
                    acc += ra[l] * lam * rb[l];
                }
                m.cov[((size_t)k * D + i) * D + j] = m.cov[((size_t)k * D + j) * D + i] = acc;
            }
    }
    free(R);
    return m;
}

mixture mixture_random(const char *name, int K, int D, const double *w, double mean_scale,
                       double cond, uint64_t seed)
{
    return random_mixture(name, K, D, w, mean_scale, cond, seed, false);
}

mixture mixture_aniso16(void)
{
    /* lambda from 1 down to 1 / 20 = 0.05 (1.0 / 20.0 rounds to the double 0.05) */
    static const double w[3] = {0.45, 0.30, 0.25};
    return random_mixture("aniso16", 3, 16, w, 2.0, 20.0, 2024, true);
}

void mixture_center(mixture *m)
{
    for (int i = 0; i < m->D; i++) {
        double mean = 0;
        for (int k = 0; k < m->K; k++) mean += m->w[k] * m->mu[k * m->D + i];
        for (int k = 0; k < m->K; k++) m->mu[k * m->D + i] -= mean;
    }
}

sd_gmm *mixture_gmm(const mixture *m)
{
    sd_gmm *g = NULL;
    if (sd_gmm_new(m->K, m->D, m->w, m->mu, m->cov, &g) != SD_OK) return NULL;
    return g;
}

double mixture_scale(const mixture *m)
{
    int D = m->D;
    double tr = 0, *mean = calloc((size_t)D, sizeof(double));
    for (int k = 0; k < m->K; k++)
        for (int i = 0; i < D; i++) mean[i] += m->w[k] * m->mu[k * D + i];
    for (int k = 0; k < m->K; k++)
        for (int i = 0; i < D; i++) {
            double d = m->mu[k * D + i] - mean[i];
            tr += m->w[k] * (m->cov[((size_t)k * D + i) * D + i] + d * d);
        }
    free(mean);
    return sqrt(tr / D);
}

/* ---- fast exact score --------------------------------------------------------- */

#define FM_CHUNK 256

struct fastmix {
    const mixture *m;
    sd_sde sde;       /* the linear family of the mixture's space (state: its ve) */
    bool state;       /* points are x = asinh(y), the mixture describes y */
    bool iso;         /* precisions from U, lam (fastmix_new_iso) */
    size_t par_min;   /* points from which a call splits its chunks over threads */
    int n_ws;
    float **ws;       /* per thread: X [CHUNK, D], Y [CHUNK, D], Z [K, CHUNK, D], lw [CHUNK, K] */
    float *P;         /* [K, D, D] precisions at the current call's time */
    float *mk;        /* [K, D] perturbed means */
    double *logdet, *A, *Sig, *S, *T;
    float *U;         /* iso: [K, D, D] eigenvectors of C_k in columns */
    double *lam;      /* iso: [K, D] eigenvalues */
};

void fastmix_free(fastmix *f)
{
    if (!f) return;
    for (int i = 0; i < f->n_ws; i++) free(f->ws[i]);
    free(f->ws);
    free(f->P);
    free(f->mk);
    free(f->logdet);
    free(f->A);
    free(f->Sig);
    free(f->S);
    free(f->T);
    free(f->U);
    free(f->lam);
    free(f);
}

fastmix *fastmix_new(const mixture *m, const sd_sde *sde)
{
    fastmix *f = calloc(1, sizeof *f);
    if (!f) return NULL;
    int K = m->K, D = m->D;
    f->m = m;
    f->par_min = 8192;
    f->state = sd_sde_state_dependent(sde);
    if (f->state) {
        if (sd_sde_latent(sde, &f->sde) != SD_OK) {
            free(f);
            return NULL;
        }
    } else {
        f->sde = *sde;
    }
    int n_ws = omp_get_max_threads();
    f->ws = calloc((size_t)n_ws, sizeof(float *));
    bool ok = f->ws != NULL;
    if (ok) f->n_ws = n_ws;
    for (int i = 0; ok && i < f->n_ws; i++) {
        f->ws[i] = malloc(((size_t)(2 + K) * FM_CHUNK * D + (size_t)FM_CHUNK * K) * sizeof(float));
        ok = f->ws[i] != NULL;
    }
    f->P = malloc((size_t)K * D * D * sizeof(float));
    f->mk = malloc((size_t)K * D * sizeof(float));
    f->logdet = malloc((size_t)K * sizeof(double));
    size_t DD = (size_t)D * D * sizeof(double);
    f->A = malloc(DD);
    f->Sig = malloc(DD);
    f->S = malloc(DD);
    f->T = malloc(DD);
    if (!ok || !f->P || !f->mk || !f->logdet || !f->A || !f->Sig || !f->S || !f->T) {
        fastmix_free(f);
        return NULL;
    }
    return f;
}

fastmix *fastmix_new_iso(const mixture *m, const sd_sde *sde)
{
    if (!sd_sde_is_isotropic(sde)) {
        sd_error(SD_ERR_INVALID, "fastmix_new_iso: %s is not an isotropic family",
                 sd_sde_name(sde));
        return NULL;
    }
    fastmix *f = fastmix_new(m, sde);
    if (!f) return NULL;
    int K = m->K, D = m->D;
    f->iso = true;
    f->U = malloc((size_t)K * D * D * sizeof(float));
    f->lam = malloc((size_t)K * D * sizeof(double));
    if (!f->U || !f->lam) {
        fastmix_free(f);
        return NULL;
    }
    for (int k = 0; k < K; k++) { /* f->S as scratch: dsyev overwrites C_k with U */
        memcpy(f->S, m->cov + (size_t)k * D * D, (size_t)D * D * sizeof(double));
        if (LAPACKE_dsyev(LAPACK_ROW_MAJOR, 'V', 'U', D, f->S, D, f->lam + (size_t)k * D) != 0) {
            sd_error(SD_ERR_NUMERIC, "fastmix_new_iso: eigen-decomposition of C_%d failed", k);
            fastmix_free(f);
            return NULL;
        }
        for (int i = 0; i < D * D; i++) f->U[(size_t)k * D * D + i] = (float)f->S[i];
    }
    return f;
}

void fastmix_set_par_min(fastmix *f, size_t par_min) { f->par_min = par_min; }

/* Precisions and means of the components N(A mu_k, A C_k A^T + Sigma). */
static sd_status fm_prepare(fastmix *f, double t)
{
    int K = f->m->K, D = f->m->D;
    sd_status st = sd_sde_kernel_dense(&f->sde, t, (size_t)D, f->A, f->Sig);
    if (st != SD_OK) return st;
    for (int k = 0; k < K; k++) {
        const double *C = f->m->cov + (size_t)k * D * D, *mu = f->m->mu + (size_t)k * D;
        for (int i = 0; i < D; i++) {
            double acc = 0;
            for (int j = 0; j < D; j++) acc += f->A[i * D + j] * mu[j];
            f->mk[k * D + i] = (float)acc;
        }
        for (int i = 0; i < D; i++)
            for (int j = 0; j < D; j++) {
                double acc = 0;
                for (int l = 0; l < D; l++) acc += f->A[i * D + l] * C[l * D + j];
                f->T[i * D + j] = acc;
            }
        for (int i = 0; i < D; i++)
            for (int j = 0; j < D; j++) {
                double acc = f->Sig[i * D + j];
                for (int l = 0; l < D; l++) acc += f->T[i * D + l] * f->A[j * D + l];
                f->S[i * D + j] = acc;
            }
        if (LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'L', D, f->S, D) != 0)
            return sd_error(SD_ERR_NUMERIC, "fastmix: component %d not positive definite", k);
        f->logdet[k] = 0;
        for (int i = 0; i < D; i++) f->logdet[k] += 2 * log(f->S[i * D + i]);
        if (LAPACKE_dpotri(LAPACK_ROW_MAJOR, 'L', D, f->S, D) != 0)
            return sd_error(SD_ERR_NUMERIC, "fastmix: inverting component %d failed", k);
        for (int i = 0; i < D; i++)
            for (int j = 0; j < D; j++)
                f->P[((size_t)k * D + i) * D + j] = (float)(j <= i ? f->S[i * D + j] : f->S[j * D + i]);
    }
    return SD_OK;
}

/* Isotropic families: S_k = a^2 C_k + s^2 I, P_k = U diag(1 / (a^2 lam + s^2))
 * U^T (in double from the float U, then rounded), log det S_k = sum log(a^2
 * lam + s^2), means a mu_k. */
static void fm_prepare_iso(fastmix *f, double t)
{
    int K = f->m->K, D = f->m->D;
    double a = sd_sde_mean_coef(&f->sde, t), s = sd_sde_sigma(&f->sde, t), s2 = s * s;
    for (int k = 0; k < K; k++) {
        const double *lam = f->lam + (size_t)k * D, *mu = f->m->mu + (size_t)k * D;
        const float *U = f->U + (size_t)k * D * D;
        for (int i = 0; i < D; i++) f->mk[k * D + i] = (float)(a * mu[i]);
        f->logdet[k] = 0;
        for (int l = 0; l < D; l++) f->logdet[k] += log(a * a * lam[l] + s2);
        for (int i = 0; i < D; i++)
            for (int j = 0; j < D; j++) {
                double acc = 0;
                for (int l = 0; l < D; l++)
                    acc += (double)U[i * D + l] * U[j * D + l] / (a * a * lam[l] + s2);
                f->P[((size_t)k * D + i) * D + j] = (float)acc;
            }
    }
}

/* Score of m <= CHUNK points: z_k = P_k (x - m_k), log N = -1/2 (x - m_k).z_k
 * - 1/2 log det S_k, score = -sum_k r_k z_k. */
static void fm_chunk(const fastmix *f, float *ws, const float *xin, size_t m, float *out)
{
    int K = f->m->K, D = f->m->D;
    float *X = ws, *Y = X + (size_t)FM_CHUNK * D, *Z = Y + (size_t)FM_CHUNK * D;
    float *lw = Z + (size_t)K * FM_CHUNK * D;
    const float *x = xin;
    if (f->state) { /* the mixture lives in y = sinh x */
        for (size_t i = 0; i < m * D; i++) Y[i] = (float)sinh((double)xin[i]);
        x = Y;
    }
    for (int k = 0; k < K; k++) {
        const float *Pk = f->P + (size_t)k * D * D, *mk = f->mk + (size_t)k * D;
        float *Zk = Z + (size_t)k * FM_CHUNK * D;
        for (size_t p = 0; p < m; p++)
            for (int i = 0; i < D; i++) X[p * D + i] = x[p * D + i] - mk[i];
        if (f->iso && D <= 4) { /* tiny: direct loops beat sgemm's call overhead */
            for (size_t p = 0; p < m; p++)
                for (int j = 0; j < D; j++) {
                    float acc = 0;
                    for (int i = 0; i < D; i++) acc += X[p * D + i] * Pk[i * D + j];
                    Zk[p * D + j] = acc;
                }
        } else {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)m, D, D, 1.0f, X, D, Pk,
                        D, 0.0f, Zk, D);
        }
        float c0 = (float)(log(f->m->w[k]) - 0.5 * f->logdet[k]);
        for (size_t p = 0; p < m; p++) {
            float q = 0;
            for (int i = 0; i < D; i++) q += X[p * D + i] * Zk[p * D + i];
            lw[p * K + k] = c0 - 0.5f * q;
        }
    }
    for (size_t p = 0; p < m; p++) {
        float mx = -INFINITY, sum = 0;
        for (int k = 0; k < K; k++) mx = fmaxf(mx, lw[p * K + k]);
        for (int k = 0; k < K; k++) sum += (lw[p * K + k] = expf(lw[p * K + k] - mx));
        for (int k = 0; k < K; k++) lw[p * K + k] /= sum;
    }
    for (size_t p = 0; p < m; p++)
        for (int i = 0; i < D; i++) {
            float acc = 0;
            for (int k = 0; k < K; k++)
                acc += lw[p * K + k] * Z[((size_t)k * FM_CHUNK + p) * D + i];
            float sy = -acc;
            if (f->state) { /* s_x = cosh(x) s_y + tanh x */
                double xi = xin[p * D + i];
                out[p * D + i] = (float)(cosh(xi) * sy + tanh(xi));
            } else {
                out[p * D + i] = sy;
            }
        }
}

sd_status fastmix_score(void *ctx, const float *x, size_t n, double t, float *out)
{
    fastmix *f = ctx;
    if (f->iso) {
        fm_prepare_iso(f, t);
    } else {
        sd_status st = fm_prepare(f, t);
        if (st != SD_OK) return st;
    }
    int D = f->m->D;
    long n_chunks = (long)((n + FM_CHUNK - 1) / FM_CHUNK);
#pragma omp parallel for schedule(static) num_threads(f->n_ws) if (n >= f->par_min)
    for (long c = 0; c < n_chunks; c++) {
        size_t lo = (size_t)c * FM_CHUNK, m = lo + FM_CHUNK <= n ? FM_CHUNK : n - lo;
        fm_chunk(f, f->ws[omp_get_thread_num()], x + lo * D, m, out + lo * D);
    }
    return SD_OK;
}

/* ---- statistics ----------------------------------------------------------------- */

void compare_moments(const mixture *mx, const float *x, size_t n, moments *out)
{
    int K = mx->K, D = mx->D;
    size_t DD = (size_t)D * D;
    /* clean responsibilities r_k(x) from the Cholesky factors of C_k */
    double *L = malloc((size_t)K * DD * sizeof(double)), *ld = malloc((size_t)K * sizeof(double));
    double *r = malloc(n * K * sizeof(double)), *y = malloc((size_t)D * sizeof(double));
    for (int k = 0; k < K; k++) {
        memcpy(L + k * DD, mx->cov + k * DD, DD * sizeof(double));
        LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'L', D, L + k * DD, D);
        ld[k] = 0;
        for (int i = 0; i < D; i++) ld[k] += 2 * log(L[k * DD + (size_t)i * D + i]);
    }
    for (size_t p = 0; p < n; p++) {
        double mxl = -INFINITY, sum = 0;
        for (int k = 0; k < K; k++) {
            const double *Lk = L + k * DD, *mu = mx->mu + (size_t)k * D;
            double ss = 0;
            for (int i = 0; i < D; i++) {
                double a = x[p * D + i] - mu[i];
                for (int j = 0; j < i; j++) a -= Lk[i * D + j] * y[j];
                y[i] = a / Lk[i * D + i];
                ss += y[i] * y[i];
            }
            r[p * K + k] = log(mx->w[k]) - 0.5 * ss - 0.5 * ld[k];
            mxl = fmax(mxl, r[p * K + k]);
        }
        for (int k = 0; k < K; k++) sum += (r[p * K + k] = exp(r[p * K + k] - mxl));
        for (int k = 0; k < K; k++) r[p * K + k] /= sum;
    }
    double s = mixture_scale(mx);
    double *m = malloc((size_t)D * sizeof(double)), *C = malloc(DD * sizeof(double));
    out->w_err = out->mean_err = out->cov_err = out->cov_noise = 0;
    for (int k = 0; k < K; k++) {
        double W = 0;
        memset(m, 0, (size_t)D * sizeof(double));
        memset(C, 0, DD * sizeof(double));
        for (size_t p = 0; p < n; p++) {
            W += r[p * K + k];
            for (int i = 0; i < D; i++) m[i] += r[p * K + k] * x[p * D + i];
        }
        for (int i = 0; i < D; i++) m[i] /= W;
        for (size_t p = 0; p < n; p++) {
            double rk = r[p * K + k];
            for (int i = 0; i < D; i++)
                for (int j = 0; j <= i; j++)
                    C[i * D + j] += rk * (x[p * D + i] - m[i]) * (x[p * D + j] - m[j]);
        }
        double diff2 = 0, norm2 = 0, tr = 0, mean_dev = 0;
        for (int i = 0; i < D; i++) {
            mean_dev = fmax(mean_dev, fabs(m[i] - mx->mu[k * D + i]));
            tr += mx->cov[((size_t)k * D + i) * D + i];
            for (int j = 0; j < D; j++) {
                double c = (j <= i ? C[i * D + j] : C[j * D + i]) / W;
                double truth = mx->cov[((size_t)k * D + i) * D + j];
                diff2 += (c - truth) * (c - truth);
                norm2 += truth * truth;
            }
        }
        double nk = mx->w[k] * (double)n;
        out->w_err = fmax(out->w_err, fabs(W / (double)n - mx->w[k]));
        out->mean_err = fmax(out->mean_err, mean_dev / s);
        out->cov_err = fmax(out->cov_err, sqrt(diff2 / norm2));
        out->cov_noise = fmax(out->cov_noise, sqrt((tr * tr + norm2) / nk / norm2));
    }
    free(L);
    free(ld);
    free(r);
    free(y);
    free(m);
    free(C);
}

/* E = 2 E|X-Y| - E|X-X'| - E|Y-Y'|; with labels l = +-1 (m each), E m^2 =
 * -l^T Dist l, so all permutations are one sgemm. p = (1 + #{perm >= obs}) /
 * (P + 1), P = 199. */
#define ENERGY_PERMS 199
double energy_test(const float *x, const float *y, size_t m, int D, uint64_t seed)
{
    size_t N = 2 * m, P = ENERGY_PERMS + 1;
    float *Dm = malloc(N * N * sizeof(float)), *L = malloc(N * P * sizeof(float));
    float *DL = malloc(N * P * sizeof(float));
#pragma omp parallel for schedule(dynamic, 16)
    for (long i = 0; i < (long)N; i++) {
        const float *a = i < (long)m ? x + i * D : y + (i - m) * D;
        for (size_t j = 0; j < N; j++) {
            const float *b = j < m ? x + j * D : y + (j - m) * D;
            double ss = 0;
            for (int d = 0; d < D; d++) ss += (double)(a[d] - b[d]) * (a[d] - b[d]);
            Dm[i * N + j] = (float)sqrt(ss);
        }
    }
    sd_rng r;
    sd_rng_init(&r, seed, SD_STREAM_PROBE);
    uint32_t *perm = malloc(N * sizeof(uint32_t));
    for (size_t p = 0; p < P; p++) {
        for (size_t i = 0; i < N; i++) perm[i] = (uint32_t)i;
        if (p > 0) sd_rng_shuffle_indices(&r, perm, N);
        for (size_t i = 0; i < N; i++) L[perm[i] * P + p] = i < m ? 1.0f : -1.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)N, (int)P, (int)N, 1.0f, Dm,
                (int)N, L, (int)P, 0.0f, DL, (int)P);
    double q[ENERGY_PERMS + 1] = {0};
    for (size_t i = 0; i < N; i++)
        for (size_t p = 0; p < P; p++) q[p] += (double)L[i * P + p] * DL[i * P + p];
    int ge = 0;
    for (size_t p = 1; p < P; p++) ge += -q[p] >= -q[0];
    free(Dm);
    free(L);
    free(DL);
    free(perm);
    return (1.0 + ge) / (double)P;
}

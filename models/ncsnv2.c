/* ncsnv2.c - NCSNv2's data-driven noise settings (Song & Ermon 2020,
 * "Improved techniques for training score-based generative models"); see
 * ncsnv2.h. */
#include "sd/ncsnv2.h"

#include <math.h>

#include "sd/gemm.h"

sd_status sd_ncsnv2_max_distance(const float *x, size_t n, size_t D, double *out)
{
    *out = 0.0;
    if (n < 2 || D == 0) return SD_OK;
    enum { ROWS = 256 };
    double *norm = sd_malloc(n * sizeof *norm);
    float *g = sd_malloc(ROWS * n * sizeof *g);
    if (!norm || !g) {
        sd_free(norm);
        sd_free(g);
        return SD_ERR_NOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        double s = 0.0;
        for (size_t k = 0; k < D; k++) s += (double)x[i * D + k] * x[i * D + k];
        norm[i] = s;
    }
    /* ||a - b||^2 = |a|^2 + |b|^2 - 2 a.b, with a.b from one GEMM per block of
     * rows; the winning pair is then recomputed directly in double, so the
     * float Gram matrix only has to rank the pairs. */
    double best = -1.0;
    size_t bi = 0, bj = 1;
    for (size_t i0 = 0; i0 < n; i0 += ROWS) {
        int rows = (int)(n - i0 < ROWS ? n - i0 : ROWS);
        sd_gemm(false, true, rows, (int)n, (int)D, 1.0f, x + i0 * D, (int)D, x, (int)D, 0.0f, g,
                (int)n);
        for (int r = 0; r < rows; r++)
            for (size_t j = i0 + (size_t)r + 1; j < n; j++) {
                double d2 = norm[i0 + r] + norm[j] - 2.0 * g[(size_t)r * n + j];
                if (d2 > best) {
                    best = d2;
                    bi = i0 + (size_t)r;
                    bj = j;
                }
            }
    }
    double s = 0.0;
    for (size_t k = 0; k < D; k++) {
        double d = (double)x[bi * D + k] - x[bj * D + k];
        s += d * d;
    }
    *out = sqrt(s);
    sd_free(norm);
    sd_free(g);
    return SD_OK;
}

static double phi(double x) { return 0.5 * erfc(-x / sqrt(2.0)); }

/* Technique 2: with x ~ N(0, sigma_i^2 I), ||x|| is close to
 * N(sqrt(D) sigma_i, sigma_i^2 / 2); the criterion is the probability that it
 * falls within 3 standard deviations of the next larger shell,
 * sqrt(D) sigma_{i-1} +- 3 sigma_{i-1} / sqrt(2). */
double sd_ncsnv2_criterion(size_t D, double gamma)
{
    double r = sqrt(2.0 * (double)D) * (gamma - 1.0);
    return phi(r + 3.0 * gamma) - phi(r - 3.0 * gamma);
}

double sd_ncsnv2_gamma(size_t D)
{
    /* For sqrt(2D) <= 3 both arguments' slopes allow the criterion to stay
     * above 0.5 for every gamma: Technique 2 gives no answer. */
    if (sqrt(2.0 * (double)D) <= 3.0) return 0.0;
    double lo = 1.0, hi = 2.0;
    while (sd_ncsnv2_criterion(D, hi) > 0.5) {
        lo = hi;
        hi *= 2.0;
        if (hi > 1e6) return 0.0;
    }
    for (int it = 0; it < 200 && hi - lo > 1e-15 * hi; it++) {
        double mid = 0.5 * (lo + hi);
        if (sd_ncsnv2_criterion(D, mid) > 0.5) lo = mid;
        else hi = mid;
    }
    return 0.5 * (lo + hi);
}

int sd_ncsnv2_levels(double sigma_max, double sigma_min, double gamma)
{
    if (!(gamma > 1.0) || !(sigma_max > sigma_min) || !(sigma_min > 0)) return 0;
    double L = 1.0 + ceil(log(sigma_max / sigma_min) / log(gamma) - 1e-9);
    return L > 100000 ? 100000 : (int)L;
}

/* Technique 4, the paper's eq. for s_T^2 / sigma_i^2 after T steps of
 * annealed Langevin dynamics at level i started from N(0, sigma_{i-1}^2 I). */
double sd_ncsnv2_step_criterion(double gamma, double sigma_min, int T, double eps)
{
    double s2 = sigma_min * sigma_min, a = 1.0 - eps / s2;
    double c = 2.0 * eps / (s2 - s2 * a * a);
    return pow(a, 2.0 * T) * (gamma * gamma - c) + c;
}

double sd_ncsnv2_step_size(double gamma, double sigma_min, int T)
{
    if (!(gamma > 1.0) || !(sigma_min > 0) || T < 1) return 0.0;
    /* A log grid of eps in (0, sigma_min^2), then golden-section refinement
     * of |f - 1| between the best point's neighbours. */
    enum { N = 4000 };
    double s2 = sigma_min * sigma_min, lo_e = log(1e-9 * s2), hi_e = log(s2 * (1.0 - 1e-9));
    int best = 0;
    double bv = INFINITY;
    for (int k = 0; k <= N; k++) {
        double e = exp(lo_e + (hi_e - lo_e) * k / N);
        double v = fabs(sd_ncsnv2_step_criterion(gamma, sigma_min, T, e) - 1.0);
        if (v < bv) {
            bv = v;
            best = k;
        }
    }
    double a = lo_e + (hi_e - lo_e) * (best > 0 ? best - 1 : 0) / N;
    double b = lo_e + (hi_e - lo_e) * (best < N ? best + 1 : N) / N;
    const double gr = (sqrt(5.0) - 1.0) / 2.0;
    for (int it = 0; it < 100; it++) {
        double c = b - gr * (b - a), d = a + gr * (b - a);
        if (fabs(sd_ncsnv2_step_criterion(gamma, sigma_min, T, exp(c)) - 1.0) <
            fabs(sd_ncsnv2_step_criterion(gamma, sigma_min, T, exp(d)) - 1.0))
            b = d;
        else
            a = c;
    }
    return exp(0.5 * (a + b));
}

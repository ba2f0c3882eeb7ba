/* test_gmm.c - the analytic Gaussian-mixture score model (models/gmm.c):
 * log-densities against closed forms and normalisation, scores against the
 * gradient of the log-density, sampling statistics, and JSON validation. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sd/gmm.h"
#include "sd/rng.h"
#include "mixture_check.h"

/* mixture_check's ring8 as an analytic model. */
static sd_gmm *ring8(void)
{
    mixture m = mixture_ring8();
    sd_gmm *g = mixture_gmm(&m);
    mixture_free(&m);
    ck_assert_ptr_nonnull(g);
    return g;
}

/* 16-D, 3 components, covariances B B^T + 0.1 I with random B. */
static sd_gmm *random16(void)
{
    enum { K = 3, D = 16 };
    static double w[K] = {0.5, 0.3, 0.2}, mu[K * D], cov[K * D * D];
    sd_rng r;
    sd_rng_init(&r, 11, SD_STREAM_INIT);
    for (int i = 0; i < K * D; i++) mu[i] = 3.0 * sd_rng_normal(&r);
    for (int k = 0; k < K; k++) {
        double B[D * D];
        for (int i = 0; i < D * D; i++) B[i] = 0.3 * sd_rng_normal(&r);
        for (int i = 0; i < D; i++)
            for (int j = 0; j < D; j++) {
                double acc = i == j ? 0.1 : 0.0;
                for (int l = 0; l < D; l++) acc += B[i * D + l] * B[j * D + l];
                cov[(k * D + i) * D + j] = acc;
            }
    }
    sd_gmm *g;
    ck_assert_int_eq(sd_gmm_new(K, D, w, mu, cov, &g), SD_OK);
    return g;
}

START_TEST(test_logp_single_gaussian_closed_form)
{
    /* N(mu, C) under VE at t: N(mu, C + sigma^2 I); 2x2 inverse by hand. */
    double w = 1.0, mu[2] = {1.0, -2.0}, C[4] = {2.0, 0.6, 0.6, 1.0};
    sd_gmm *g;
    ck_assert_int_eq(sd_gmm_new(1, 2, &w, mu, C, &g), SD_OK);
    sd_sde ve;
    sd_sde_parse("ve:sigma_min=0.1,sigma_max=10", &ve);
    double t = 0.4, s2 = pow(sd_sde_sigma(&ve, t), 2);
    double a = C[0] + s2, b = C[1], d = C[3] + s2, det = a * d - b * b;
    float x[2] = {0.3f, 0.7f};
    double dx = x[0] - mu[0], dy = x[1] - mu[1];
    double q = (d * dx * dx - 2 * b * dx * dy + a * dy * dy) / det;
    double expect = -0.5 * q - 0.5 * log(det) - log(2 * M_PI);
    double got;
    ck_assert_int_eq(sd_gmm_logp(g, &ve, t, x, &got, 1), SD_OK);
    ck_assert_double_eq_tol(got, expect, 1e-10);
    /* VP: N(alpha mu, alpha^2 C + sigma^2 I) */
    sd_sde vp;
    sd_sde_parse("vp", &vp);
    double al = sd_sde_mean_coef(&vp, t), sg2 = pow(sd_sde_sigma(&vp, t), 2);
    a = al * al * C[0] + sg2, b = al * al * C[1], d = al * al * C[3] + sg2, det = a * d - b * b;
    dx = x[0] - al * mu[0], dy = x[1] - al * mu[1];
    q = (d * dx * dx - 2 * b * dx * dy + a * dy * dy) / det;
    expect = -0.5 * q - 0.5 * log(det) - log(2 * M_PI);
    ck_assert_int_eq(sd_gmm_logp(g, &vp, t, x, &got, 1), SD_OK);
    ck_assert_double_eq_tol(got, expect, 1e-10);
    sd_gmm_free(g);
}
END_TEST

START_TEST(test_density_normalised)
{
    /* Midpoint rule on [-8, 8]^2 with h = 0.02 for a density whose narrowest
     * width is sqrt(0.05 + 0.0025) ~ 0.23: error O(h^2 / width^2) ~ 1e-3 of
     * which most cancels; tolerance 2e-3. */
    sd_gmm *g = ring8();
    sd_sde ve;
    sd_sde_parse("ve:sigma_min=0.05,sigma_max=10", &ve);
    const double h = 0.02;
    int n = (int)(16.0 / h);
    double total = 0.0;
    float *row = malloc(2 * n * sizeof(float));
    double *lp = malloc(n * sizeof(double));
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) {
            row[2 * j] = (float)(-8.0 + (i + 0.5) * h);
            row[2 * j + 1] = (float)(-8.0 + (j + 0.5) * h);
        }
        ck_assert_int_eq(sd_gmm_logp(g, &ve, 0.0, row, lp, n), SD_OK);
        for (int j = 0; j < n; j++) total += exp(lp[j]) * h * h;
    }
    ck_assert_double_eq_tol(total, 1.0, 2e-3);
    free(row);
    free(lp);
    sd_gmm_free(g);
}
END_TEST

/* Score against central differences of log p (double), h = 1e-3 on float
 * inputs: truncation O(h^2 |d3 log p|) and float input rounding (~1e-7
 * relative of x, over 2h) keep the error below 1e-3 of the score scale. */
static void check_score_fd(sd_gmm *g, const char *spec, double t, int npts)
{
    sd_sde s;
    ck_assert_int_eq(sd_sde_parse(spec, &s), SD_OK);
    int D = sd_gmm_dim(g);
    float *x = malloc(npts * D * sizeof(float)), *sc = malloc(npts * D * sizeof(float));
    sd_rng r;
    sd_rng_init(&r, 3, SD_STREAM_SAMPLER);
    sd_gmm_sample(g, &r, x, NULL, npts);
    for (int i = 0; i < npts * D; i++) {
        x[i] = (float)(sd_sde_mean_coef(&s, t) * x[i] + sd_sde_sigma(&s, t) * sd_rng_normal(&r));
    }
    ck_assert_int_eq(sd_gmm_score(g, &s, t, x, sc, npts), SD_OK);
    for (int p = 0; p < npts; p++) {
        double smax = 1e-3;
        for (int i = 0; i < D; i++) smax = fmax(smax, fabs(sc[p * D + i]));
        for (int i = 0; i < D; i++) {
            float *xp = x + p * D, keep = xp[i];
            double lp1, lp2;
            xp[i] = keep + 1e-3f;
            double h1 = (double)xp[i] - keep;
            sd_gmm_logp(g, &s, t, xp, &lp1, 1);
            xp[i] = keep - 1e-3f;
            double h2 = keep - (double)xp[i];
            sd_gmm_logp(g, &s, t, xp, &lp2, 1);
            xp[i] = keep;
            double fd = (lp1 - lp2) / (h1 + h2);
            ck_assert_msg(fabs(fd - sc[p * D + i]) < 2e-3 * smax + 1e-4,
                          "%s t=%g point %d dim %d: score %g, d logp %g", spec, t, p, i,
                          sc[p * D + i], fd);
        }
    }
    free(x);
    free(sc);
}

START_TEST(test_score_is_grad_logp)
{
    sd_gmm *g2 = ring8(), *g16 = random16();
    const char *specs[] = {"ve:sigma_min=0.01,sigma_max=10", "vp", "subvp", "ncsn"};
    for (int k = 0; k < 4; k++) {
        for (double t = 0.1; t < 1.0; t += 0.4) {
            check_score_fd(g2, specs[k], t, 10);
            check_score_fd(g16, specs[k], t, 3);
        }
    }
    sd_gmm_free(g2);
    sd_gmm_free(g16);
}
END_TEST

START_TEST(test_sampling_statistics)
{
    /* n = 40000 draws: a weight p has standard error sqrt(p(1-p)/n) <= 0.0025;
     * a coordinate mean of a component with variance <= 0.3 and n_k >= 4000
     * draws has standard error <= 0.0087. Tolerances: 5 standard errors. */
    enum { N = 40000 };
    sd_gmm *g = ring8();
    static float x[2 * N];
    static int comp[N];
    sd_rng r;
    sd_rng_init(&r, 9, SD_STREAM_SAMPLER);
    sd_gmm_sample(g, &r, x, comp, N);
    for (int k = 0; k < 8; k++) {
        int cnt = 0;
        double m0 = 0, m1 = 0;
        for (int i = 0; i < N; i++)
            if (comp[i] == k) {
                cnt++;
                m0 += x[2 * i];
                m1 += x[2 * i + 1];
            }
        double p = sd_gmm_weights(g)[k];
        ck_assert_double_eq_tol((double)cnt / N, p, 5 * sqrt(p * (1 - p) / N));
        ck_assert_double_eq_tol(m0 / cnt, sd_gmm_means(g)[2 * k], 5 * 0.0087);
        ck_assert_double_eq_tol(m1 / cnt, sd_gmm_means(g)[2 * k + 1], 5 * 0.0087);
    }
    sd_gmm_free(g);
}
END_TEST

START_TEST(test_json_and_errors)
{
    sd_gmm *g = NULL;
    const char *ok = "{\"weights\": [0.25, 0.75], \"means\": [[0, 1], [2, 3]],"
                     " \"covs\": [[[1, 0], [0, 1]], [[2, 0.5], [0.5, 1]]]}";
    ck_assert_int_eq(sd_gmm_parse_json(ok, "spec.json", &g), SD_OK);
    ck_assert_int_eq(sd_gmm_components(g), 2);
    ck_assert_int_eq(sd_gmm_dim(g), 2);
    ck_assert_double_eq(sd_gmm_covs(g)[4 + 1], 0.5);
    sd_gmm_free(g);

    ck_assert_int_eq(sd_gmm_parse_json("{\"weights\": [1]", "a.json", &g), SD_ERR_FORMAT);
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "a.json"));
    ck_assert_int_eq(sd_gmm_parse_json("{\"weights\": [0.5, 0.6], \"means\": [[0], [1]], "
                                       "\"covs\": [[[1]], [[1]]]}", "w.json", &g),
                     SD_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "sum"));
    ck_assert_int_eq(sd_gmm_parse_json("{\"weights\": [1], \"means\": [[0, 0]], "
                                       "\"covs\": [[[1, 0.5], [0.4, 1]]]}", "s.json", &g),
                     SD_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "not symmetric"));
    ck_assert_int_eq(sd_gmm_parse_json("{\"weights\": [1], \"means\": [[0, 0]], "
                                       "\"covs\": [[[1, 2], [2, 1]]]}", "pd.json", &g),
                     SD_ERR_NUMERIC);
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "positive definite"));
    ck_assert_int_eq(sd_gmm_parse_json("{\"weights\": [1], \"means\": [[0, \"x\"]], "
                                       "\"covs\": [[[1, 0], [0, 1]]]}", "m.json", &g),
                     SD_ERR_FORMAT);
    ck_assert_int_eq(sd_gmm_parse_json("{\"weights\": [1], \"means\": [[0, 1]], "
                                       "\"covs\": [[[1, 0]]]}", "c.json", &g),
                     SD_ERR_FORMAT);
    ck_assert_int_eq(sd_gmm_load_json("/nonexistent/x.json", &g), SD_ERR_IO);
    ck_assert_ptr_null(g);
}
END_TEST

int main(void)
{
    Suite *su = suite_create("gmm");
    TCase *tc = tcase_create("gmm");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_logp_single_gaussian_closed_form);
    tcase_add_test(tc, test_density_normalised);
    tcase_add_test(tc, test_score_is_grad_logp);
    tcase_add_test(tc, test_sampling_statistics);
    tcase_add_test(tc, test_json_and_errors);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

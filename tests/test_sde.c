/* test_sde.c - noise families: spec parsing, closed forms, and the
 * consistency of each kernel with its SDE (Song et al. 2021, App. B):
 * for dx = f(t) x dt + g(t) dw the kernel mean coefficient obeys
 * da/dt = f a and the kernel variance dV/dt = 2 f V + g^2. Checking those by
 * central differences ties sigma(t), drift and g(t)^2 together, so a wrong
 * formula in any one of them fails. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sd/rng.h"
#include "sd/sde.h"

static const char *families[] = {"ncsn", "ve:sigma_min=0.02,sigma_max=20", "vp",
                                 "subvp:beta_min=0.2,beta_max=15"};

START_TEST(test_parse)
{
    sd_sde s;
    ck_assert_int_eq(sd_sde_parse("ve:sigma_min=0.01,sigma_max=50", &s), SD_OK);
    ck_assert_str_eq(sd_sde_name(&s), "ve");
    ck_assert_double_eq(s.sigma_max, 50.0);
    ck_assert_int_eq(sd_sde_parse("ncsn:L=232,sigma_max=90", &s), SD_OK);
    ck_assert_int_eq(s.levels, 232);
    ck_assert_int_eq(sd_sde_parse("vp", &s), SD_OK);
    ck_assert_double_eq(s.beta_min, 0.1);
    ck_assert_double_eq(s.beta_max, 20.0);
    char buf[128];
    sd_sde_to_string(&s, buf, sizeof buf);
    sd_sde back;
    ck_assert_int_eq(sd_sde_parse(buf, &back), SD_OK);
    ck_assert_ptr_eq(back.family, s.family);
    ck_assert_double_eq(back.beta_min, s.beta_min);
    ck_assert_double_eq(back.beta_max, s.beta_max);

    ck_assert_int_eq(sd_sde_parse("foo", &s), SD_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "unknown family"));
    ck_assert_int_eq(sd_sde_parse("ve:beta_min=1", &s), SD_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "does not apply"));
    ck_assert_int_eq(sd_sde_parse("ve:sigma_min=abc", &s), SD_ERR_INVALID);
    ck_assert_int_eq(sd_sde_parse("ve:sigma_min=5,sigma_max=1", &s), SD_ERR_INVALID);
    ck_assert_int_eq(sd_sde_parse("ncsn:L=1.5", &s), SD_ERR_INVALID);
    ck_assert_int_eq(sd_sde_parse("vp:beta_min", &s), SD_ERR_INVALID);
}
END_TEST

START_TEST(test_closed_forms)
{
    sd_sde ve, vp;
    sd_sde_parse("ve:sigma_min=0.01,sigma_max=50", &ve);
    sd_sde_parse("vp", &vp);
    ck_assert_double_eq_tol(sd_sde_sigma(&ve, 0.0), 0.01, 1e-12);
    ck_assert_double_eq_tol(sd_sde_sigma(&ve, 1.0), 50.0, 1e-9);
    ck_assert_double_eq_tol(sd_sde_sigma(&ve, 0.5), sqrt(0.01 * 50.0), 1e-9);
    ck_assert_double_eq_tol(sd_sde_cond(&ve, 0.5), log(sqrt(0.5)), 1e-9);
    /* VP: alpha(1) = exp(-(20 - 0.1)/4 - 0.1/2) and alpha^2 + sigma^2 = 1. */
    double a1 = exp(-19.9 / 4.0 - 0.05);
    ck_assert_double_eq_tol(sd_sde_mean_coef(&vp, 1.0), a1, 1e-12);
    for (double t = 0.01; t <= 1.0; t += 0.07) {
        double a = sd_sde_mean_coef(&vp, t), sg = sd_sde_sigma(&vp, t);
        ck_assert_double_eq_tol(a * a + sg * sg, 1.0, 1e-12);
    }
    ck_assert_double_eq(sd_sde_cond(&vp, 0.3), 0.3);
    /* ncsn ladder: geometric from sigma_max to sigma_min. */
    sd_sde nc;
    sd_sde_parse("ncsn:sigma_min=0.01,sigma_max=1,L=3", &nc);
    ck_assert_double_eq_tol(sd_sde_sigma(&nc, sd_sde_level_time(&nc, 0)), 1.0, 1e-12);
    ck_assert_double_eq_tol(sd_sde_sigma(&nc, sd_sde_level_time(&nc, 1)), 0.1, 1e-12);
    ck_assert_double_eq_tol(sd_sde_sigma(&nc, sd_sde_level_time(&nc, 2)), 0.01, 1e-12);
}
END_TEST

/* Central differences with h = 1e-5 in double: truncation O(h^2) ~ 1e-10
 * relative, rounding ~ 1e-16 / 1e-5 = 1e-11; tolerance 1e-6 relative. */
START_TEST(test_kernel_matches_sde)
{
    sd_sde s;
    ck_assert_int_eq(sd_sde_parse(families[_i], &s), SD_OK);
    const double h = 1e-5;
    for (double t = 0.05; t < 0.99; t += 0.1) {
        /* f(t) in double from the drift's divergence in one dimension; the
         * float operator must agree with it. */
        double f = sd_sde_drift_divergence(&s, t, 1);
        float one = 1.0f, f32;
        sd_sde_drift(&s, t, &one, &f32, 1, 1);
        ck_assert_float_eq_tol(f32, (float)f, 1e-6f * fabsf((float)f) + 1e-12f);
        double a = sd_sde_mean_coef(&s, t);
        double da = (sd_sde_mean_coef(&s, t + h) - sd_sde_mean_coef(&s, t - h)) / (2 * h);
        ck_assert_double_eq_tol(da, f * a, 1e-6 * (fabs(da) + 1e-3));
        double V = pow(sd_sde_sigma(&s, t), 2);
        double dV = (pow(sd_sde_sigma(&s, t + h), 2) - pow(sd_sde_sigma(&s, t - h), 2)) / (2 * h);
        double rhs = 2.0 * f * V + sd_sde_g2(&s, t);
        ck_assert_msg(fabs(dV - rhs) <= 1e-6 * fabs(dV) + 1e-9, "%s t=%g: dV/dt %g vs %g",
                      families[_i], t, dV, rhs);
        /* operators agree with the scalar summaries */
        float x[3] = {1.0f, -2.0f, 0.5f}, y[3];
        sd_sde_apply_GGT(&s, t, NULL, x, y, 1, 3);
        ck_assert_float_eq_tol(y[1], (float)(-2.0 * sd_sde_g2(&s, t)), 1e-5f * fabsf(y[1]) + 1e-6f);
        sd_sde_apply_inv_cov(&s, t, x, y, 1, 3);
        ck_assert_float_eq_tol(y[2], (float)(0.5 / V), 1e-5f * fabsf(y[2]));
        ck_assert_double_eq_tol(sd_sde_drift_divergence(&s, t, 3), 3.0 * f, 1e-6 * fabs(3.0 * f) + 1e-12);
    }
}
END_TEST

START_TEST(test_prior)
{
    sd_sde s;
    sd_sde_parse("ve:sigma_min=0.01,sigma_max=3", &s);
    float x[2] = {1.0f, -1.0f};
    /* log N(x; 0, 9 I) in 2-D = -|x|^2/18 - 2 log 3 - log(2 pi) */
    ck_assert_double_eq_tol(sd_sde_prior_logp(&s, x, 2), -2.0 / 18.0 - 2.0 * log(3.0) - log(2 * M_PI),
                            1e-9);
    /* Prior samples: n = 20000 normals with std 3: the sample std has
     * standard error 3 / sqrt(2n) = 0.015; tolerance 5 standard errors. */
    enum { N = 20000 };
    static float z[N];
    sd_rng r;
    sd_rng_init(&r, 1, SD_STREAM_SAMPLER);
    sd_sde_prior_sample(&s, &r, z, N, 1);
    double ss = 0.0;
    for (int i = 0; i < N; i++) ss += (double)z[i] * z[i];
    ck_assert_double_eq_tol(sqrt(ss / N), 3.0, 5 * 0.015);
}
END_TEST

int main(void)
{
    Suite *su = suite_create("sde");
    TCase *tc = tcase_create("sde");
    tcase_add_test(tc, test_parse);
    tcase_add_test(tc, test_closed_forms);
    tcase_add_loop_test(tc, test_kernel_matches_sde, 0, 4);
    tcase_add_test(tc, test_prior);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

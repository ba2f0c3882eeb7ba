/* test_sde_family.c - a noise family added from outside the library, the
 * way sd/sde_family.h describes: one table (`diagve` below) and one call,
 * sd_sde_register, before anything parses a spec. Nothing else in the
 * library, the samplers or the likelihoods knows about it; they reach it
 * through the table's operators and flags. That it then passes the same
 * checks as the built-in families is the proof that adding a family is one
 * file plus one table entry.
 *
 * diagve: a diagonal VE family with a per-dimension scale b (key
 * scale=b1/b2/..., up to SD_SDE_DENSE_MAX values, kept in sd_sde.extra):
 *     A = I, Sigma(t) = sigma(t)^2 diag(b^2), F = 0, G G^T = g2(t) diag(b^2),
 * with VE's sigma(t) = sigma_min (sigma_max/sigma_min)^t and g2 = d sigma^2/dt,
 * prior N(0, sigma_max^2 diag(b^2)). It is dense's family with C = diag(b^2),
 * but written separately; not isotropic, so the samplers use Euler-Maruyama
 * and the likelihood its mode path (modes = coordinates).
 *
 * Checks (tests/test_matrix_samplers.c's criteria and mixture_check.h's
 * statistics): PC Euler-Maruyama + Langevin corrector (N = 500), ODE RK45
 * (rtol = atol = 1e-5) and ODE Heun (100 steps) on ring8 (2-D, b = 1/0.5) and
 * a centred 3-component 4-D mixture (b = 1/0.5/2/0.7), 10,000 samples each:
 * weights within 0.02, means within 0.05 of the data scale, covariances within
 * 10% relative Frobenius, energy test on 1,500 samples not rejecting at 1%.
 * The ODE likelihood (exact divergence) equals the closed-form log p_eps of
 * the perturbed mixture (models/gmm.c through sd_sde_kernel_dense) within
 * 1e-3 nats on 100 points. Under ASan: the 2-D case only, 25 points.
 */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sd/likelihood.h"
#include "mixture_check.h"
#include "sd/sampler.h"
#include "sd/rng.h"
#include "sd/sde.h"
#include "sd/sde_family.h"
#include "sd/tensor.h"

/* ==== the test-only family: everything a family file holds ==================== */

static sd_status dv_check(const sd_sde *s, size_t D, const char *op)
{
    if (s->n_extra < 1 || (size_t)s->n_extra != D)
        return sd_error(SD_ERR_INVALID, "sde diagve (%s): scale has %d values but the data has "
                                        "%zu dimensions", op, s->n_extra, D);
    return SD_OK;
}

static void dv_defaults(sd_sde *s)
{
    s->sigma_min = 0.01;
    s->sigma_max = 50.0;
}

static sd_status dv_key(sd_sde *s, const char *spec, const char *key, const char *val,
                        bool *known)
{
    if (strcmp(key, "scale") != 0) return sd_sde_ve_key(s, spec, key, val, known);
    *known = true;
    s->n_extra = 0;
    for (const char *p = val; *p;) {
        char *end;
        double b = strtod(p, &end);
        if (end == p || !(b > 0 && isfinite(b)) || s->n_extra >= SD_SDE_DENSE_MAX ||
            (*end != '/' && *end != '\0'))
            return sd_error(SD_ERR_INVALID, "sde %s: scale= takes 1 to %d positive numbers "
                                            "separated by /", spec, SD_SDE_DENSE_MAX);
        s->extra[s->n_extra++] = b;
        p = *end ? end + 1 : end;
    }
    return SD_OK;
}

static sd_status dv_finish(sd_sde *s, const char *spec, const char *cov_json)
{
    sd_status st = sd_sde_ve_finish(s, spec, cov_json);
    if (st == SD_OK && s->n_extra < 1)
        st = sd_error(SD_ERR_INVALID, "sde %s: diagve needs scale=b1/b2/...", spec);
    return st;
}

static void dv_string(const sd_sde *s, char *buf, size_t len)
{
    int w = snprintf(buf, len, "diagve:sigma_min=%.9g,sigma_max=%.9g,scale=", s->sigma_min,
                     s->sigma_max);
    for (int i = 0; i < s->n_extra && w >= 0 && (size_t)w < len; i++)
        w += snprintf(buf + w, len - (size_t)w, "%s%.17g", i ? "/" : "", s->extra[i]);
}

static sd_status dv_bind_shape(sd_sde *s, int C, int H, int W)
{
    return dv_check(s, (size_t)C * H * W, "shape");
}

/* out = c b^p v per coordinate (p = 0, 1, 2, -2). */
static sd_status dv_scale(const sd_sde *s, double c, int p, const float *v, float *out,
                          size_t n, size_t D, const char *op)
{
    sd_status st = dv_check(s, D, op);
    if (st != SD_OK) return st;
    for (size_t r = 0; r < n; r++)
        for (size_t i = 0; i < D; i++) {
            double b = s->extra[i];
            double f = p == 0 ? 1.0 : p == 1 ? b : p == 2 ? b * b : 1.0 / (b * b);
            out[r * D + i] = (float)(c * f * v[r * D + i]);
        }
    return SD_OK;
}

static sd_status dv_mean(const sd_sde *s, double t, const float *x0, float *out, size_t n,
                         size_t D)
{
    (void)t;
    return dv_scale(s, 1.0, 0, x0, out, n, D, "mean");
}

static sd_status dv_std(const sd_sde *s, double t, const float *z, float *out, size_t n,
                        size_t D)
{
    return dv_scale(s, sd_sde_sigma(s, t), 1, z, out, n, D, "std");
}

static sd_status dv_inv_cov(const sd_sde *s, double t, const float *v, float *out, size_t n,
                            size_t D)
{
    double sig = sd_sde_sigma(s, t);
    return dv_scale(s, 1.0 / (sig * sig), -2, v, out, n, D, "inv_cov");
}

static sd_status dv_drift(const sd_sde *s, double t, const float *x, float *out, size_t n,
                          size_t D)
{
    (void)t;
    return dv_scale(s, 0.0, 0, x, out, n, D, "drift");
}

static sd_status dv_G(const sd_sde *s, double t, const float *x, const float *z, float *out,
                      size_t n, size_t D)
{
    (void)x;
    return dv_scale(s, sqrt(sd_sde_g2(s, t)), 1, z, out, n, D, "G");
}

static sd_status dv_GGT(const sd_sde *s, double t, const float *x, const float *v, float *out,
                        size_t n, size_t D)
{
    (void)x;
    return dv_scale(s, sd_sde_g2(s, t), 2, v, out, n, D, "GGT");
}

static double dv_drift_divergence(const sd_sde *s, double t, size_t D)
{
    (void)s, (void)t, (void)D;
    return 0.0;
}

/* A = I: x + Sigma s */
static sd_status dv_tweedie(const sd_sde *s, double t, const float *x, const float *score,
                            float *out, size_t n, size_t D)
{
    double sig = sd_sde_sigma(s, t);
    sd_status st = dv_scale(s, sig * sig, 2, score, out, n, D, "tweedie");
    for (size_t i = 0; i < n * D && st == SD_OK; i++) out[i] += x[i];
    return st;
}

static sd_status dv_modes(const sd_sde *s, double t, size_t D, double *a, double *var,
                          double *f, double *gg)
{
    sd_status st = dv_check(s, D, "modes");
    if (st != SD_OK) return st;
    double sig = sd_sde_sigma(s, t), g2 = sd_sde_g2(s, t);
    for (size_t k = 0; k < D; k++) {
        double b2 = s->extra[k] * s->extra[k];
        if (a) a[k] = 1.0;
        if (var) var[k] = sig * sig * b2;
        if (f) f[k] = 0.0;
        if (gg) gg[k] = g2 * b2;
    }
    return SD_OK;
}

static sd_status dv_to_modes(const sd_sde *s, const float *v, float *out, size_t n, size_t D)
{
    return dv_scale(s, 1.0, 0, v, out, n, D, "to_modes");
}

static sd_status dv_prior_sample(const sd_sde *s, sd_rng *rng, float *x, size_t n, size_t D)
{
    sd_status st = dv_check(s, D, "prior");
    if (st != SD_OK) return st;
    sd_rng_fill_normal(rng, x, n * D, 0.0f, 1.0f);
    return dv_scale(s, s->sigma_max, 1, x, x, n, D, "prior");
}

static double dv_prior_logp(const sd_sde *s, const float *x, size_t D)
{
    if (dv_check(s, D, "prior") != SD_OK) return NAN;
    double acc = 0.0;
    for (size_t i = 0; i < D; i++) {
        double sd = s->sigma_max * s->extra[i], u = x[i] / sd;
        acc += -0.5 * u * u - log(sd) - 0.5 * log(2.0 * M_PI);
    }
    return acc;
}

static sd_status dv_kernel_dense(const sd_sde *s, double t, size_t D, double *A, double *Sigma)
{
    sd_status st = dv_check(s, D, "kernel");
    if (st != SD_OK) return st;
    double sig = sd_sde_sigma(s, t);
    for (size_t i = 0; i < D; i++)
        for (size_t j = 0; j < D; j++) {
            A[i * D + j] = i == j ? 1.0 : 0.0;
            Sigma[i * D + j] = i == j ? sig * sig * s->extra[i] * s->extra[i] : 0.0;
        }
    return SD_OK;
}

/* The table entry (README "Extending scorediff: a noise family"). */
static const sd_sde_family diagve_family = {
    .name = "diagve", .keys = "sigma_min, sigma_max, scale", .flags = 0,
    .defaults = dv_defaults, .set_key = dv_key, .finish = dv_finish,
    .to_string = dv_string, .bind_shape = dv_bind_shape,
    .sigma = sd_sde_ve_sigma, .g2 = sd_sde_ve_g2,
    .apply_mean = dv_mean, .apply_std = dv_std, .apply_inv_cov = dv_inv_cov,
    .drift = dv_drift, .apply_G = dv_G, .apply_GGT = dv_GGT,
    .drift_divergence = dv_drift_divergence, .tweedie = dv_tweedie,
    .modes = dv_modes, .to_modes = dv_to_modes,
    .prior_sample = dv_prior_sample, .prior_logp = dv_prior_logp,
    .kernel_dense = dv_kernel_dense,
};

/* ==== the checks ================================================================ */

enum { C_RING2, C_MIX4, N_CASES };
static const char *case_names[N_CASES] = {"ring8/2", "mix4/4"};
static const char *case_specs[N_CASES] = {
    "diagve:sigma_min=0.01,sigma_max=50,scale=1/0.5",
    "diagve:sigma_min=0.01,sigma_max=50,scale=1/0.5/2/0.7",
};

static mixture case_mixture(int c)
{
    static const double w3[3] = {0.45, 0.30, 0.25};
    if (c == C_RING2) return mixture_ring8();
    mixture m = mixture_random("mix4", 3, 4, w3, 2.0, 10.0, 41);
    mixture_center(&m); /* as test_matrix_samplers.c: the VE prior ignores the mean */
    return m;
}

START_TEST(test_registry)
{
    sd_sde s;
    ck_assert_int_eq(sd_sde_parse(case_specs[C_MIX4], &s), SD_OK);
    ck_assert_str_eq(sd_sde_name(&s), "diagve");
    ck_assert_ptr_eq(s.family, &diagve_family);
    ck_assert(!sd_sde_is_isotropic(&s) && !sd_sde_state_dependent(&s));
    ck_assert_int_eq(s.n_extra, 4);
    char spec[256];
    sd_sde_to_string(&s, spec, sizeof spec);
    ck_assert_str_eq(spec, "diagve:sigma_min=0.01,sigma_max=50,scale=1/0.5/2/0.69999999999999996");
    sd_sde back;
    ck_assert_int_eq(sd_sde_parse(spec, &back), SD_OK);
    ck_assert_int_eq(memcmp(back.extra, s.extra, sizeof s.extra), 0);
    /* the registry refuses a second family of a known name, and an incomplete table */
    ck_assert_int_eq(sd_sde_register(&diagve_family), SD_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "already registered"));
    sd_sde_family ve_again = diagve_family;
    ve_again.name = "ve";
    ck_assert_int_eq(sd_sde_register(&ve_again), SD_ERR_INVALID);
    sd_sde_family partial = diagve_family;
    partial.name = "partial";
    partial.apply_G = NULL;
    ck_assert_int_eq(sd_sde_register(&partial), SD_ERR_INVALID);
    /* its own key errors name the family; unknown names list it */
    ck_assert_int_eq(sd_sde_parse("diagve:scale=1/-2", &s), SD_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "sde diagve:scale=1/-2: scale="));
    ck_assert_int_eq(sd_sde_parse("diagve:L=3,scale=1", &s), SD_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "does not apply to diagve"));
    ck_assert_int_eq(sd_sde_parse("nosuch", &s), SD_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "state, diagve)"));
    ck_assert_int_eq(sd_sde_parse(case_specs[C_RING2], &s), SD_OK);
    ck_assert_int_eq(sd_sde_bind_shape(&s, 3, 1, 1), SD_ERR_INVALID);
    ck_assert_int_eq(sd_sde_bind_shape(&s, 2, 1, 1), SD_OK);
}
END_TEST

/* The generic linear perturbation (no perturb entry) draws from N(x0,
 * Sigma): E[sigma^2 |target|^2 weighted by b^2] = D, and x_t - x0 has the
 * per-coordinate variance sigma^2 b_i^2 (4000 draws, 5 standard errors). */
START_TEST(test_perturb_kernel)
{
    sd_sde s;
    ck_assert_int_eq(sd_sde_parse(case_specs[C_MIX4], &s), SD_OK);
    enum { N = 4000, D = 4 };
    float *x0 = calloc(N * D, sizeof(float)), *z = malloc(N * D * sizeof(float));
    float *xt = malloc(N * D * sizeof(float)), *tg = malloc(N * D * sizeof(float));
    sd_rng r;
    sd_rng_init(&r, 11, SD_STREAM_DATA);
    sd_rng_fill_normal(&r, z, N * D, 0, 1);
    double t = 0.3, sig = sd_sde_sigma(&s, t);
    ck_assert_int_eq(sd_sde_perturb(&s, t, x0, z, xt, tg, NULL, N, D), SD_OK);
    for (int i = 0; i < D; i++) {
        double v = 0, want = sig * sig * s.extra[i] * s.extra[i];
        for (int p = 0; p < N; p++) v += (double)xt[p * D + i] * xt[p * D + i] / N;
        ck_assert_msg(fabs(v / want - 1) < 5 * sqrt(2.0 / N), "coordinate %d: var %g vs %g", i,
                      v, want);
        for (int p = 0; p < N; p++) /* target = -Sigma^-1 (x_t - x0) */
            ck_assert(fabs(tg[p * D + i] + xt[p * D + i] / want) <=
                      1e-5 * (1 + fabs(xt[p * D + i] / want)));
    }
    free(x0);
    free(z);
    free(xt);
    free(tg);
}
END_TEST

enum { S_PC_EM_LANGEVIN, S_ODE_RK45, S_ODE_HEUN, N_SAMPLERS };
static const char *sampler_names[N_SAMPLERS] = {"pc em+langevin", "ode rk45", "ode heun"};

static sd_sampler_opts case_opts(int which)
{
    sd_sampler_opts o;
    if (which == S_PC_EM_LANGEVIN) {
        o = sd_sampler_defaults(SD_SAMPLER_PC);
        o.predictor = SD_PRED_EULER_MARUYAMA; /* the CLI's default for a non-isotropic family */
        o.steps = 500;
    } else {
        o = sd_sampler_defaults(SD_SAMPLER_ODE);
        o.denoise = false;
        if (which == S_ODE_HEUN) {
            o.ode_method = SD_ODE_HEUN;
            o.steps = 100;
        }
    }
    o.batch = 2500;
    o.seed = 700 + (uint64_t)which;
    return o;
}

START_TEST(test_sampler_accuracy)
{
    int c = _i / N_SAMPLERS, which = _i % N_SAMPLERS;
    if (SD_TEST_ASAN && c != C_RING2) return;
    sd_sde sde;
    ck_assert_int_eq(sd_sde_parse(case_specs[c], &sde), SD_OK);
    mixture mx = case_mixture(c);
    int D = mx.D;
    size_t n = 10000, m_energy = 1500;
    float *x = malloc(n * D * sizeof(float)), *ref = malloc(m_energy * D * sizeof(float));
    fastmix *f = fastmix_new(&mx, &sde);
    ck_assert_ptr_nonnull(f);
    sd_scorer sc;
    sd_scorer_from_fn(&sc, fastmix_score, f, &sde, D, 1, 1);
    sd_sampler_opts o = case_opts(which);
    sd_sample_stats st;
    ck_assert_msg(sd_sample(&sc, &o, n, x, &st) == SD_OK, "%s", sd_error_message());
    moments mo;
    compare_moments(&mx, x, n, &mo);
    sd_gmm *g = mixture_gmm(&mx);
    sd_rng r;
    sd_rng_init(&r, 910 + (uint64_t)c, SD_STREAM_DATA);
    sd_gmm_sample(g, &r, ref, NULL, m_energy);
    sd_gmm_free(g);
    double p = energy_test(x, ref, m_energy, D, 41 + (uint64_t)_i);
    printf("diagve %-8s %-15s NFE %5lld  w %.4f  mean %.4f  cov %.4f (noise %.3f)  energy p "
           "%.3f\n", case_names[c], sampler_names[which], (long long)st.nfe_max, mo.w_err,
           mo.mean_err, mo.cov_err, mo.cov_noise, p);
    fflush(stdout);
    ck_assert_msg(mo.w_err <= 0.02 && mo.mean_err <= 0.05 && mo.cov_err <= 0.10 && p > 0.01,
                  "diagve %s %s: w %.4f mean %.4f cov %.4f p %.3f", case_names[c],
                  sampler_names[which], mo.w_err, mo.mean_err, mo.cov_err, p);
    fastmix_free(f);
    free(x);
    free(ref);
    mixture_free(&mx);
}
END_TEST

/* ODE likelihood with exact divergence against the closed form. */
START_TEST(test_likelihood_closed_form)
{
    const int NP = SD_TEST_ASAN ? 25 : 100;
    int c = _i;
    if (SD_TEST_ASAN && c != C_RING2) return;
    sd_sde sde;
    ck_assert_int_eq(sd_sde_parse(case_specs[c], &sde), SD_OK);
    mixture mx = case_mixture(c);
    sd_model *m;
    ck_assert_int_eq(sd_model_new_gmm(mixture_gmm(&mx), &sde, &m), SD_OK);
    size_t D = m->D;
    sd_lik_config cfg = sd_lik_config_default();
    cfg.div = SD_LIK_DIV_EXACT;
    sd_lik *lk;
    ck_assert_int_eq(sd_lik_new(m, &cfg, &lk), SD_OK);
    double eps = sd_lik_get_config(lk)->eps;
    /* points of p_eps: mixture draws through the family's kernel */
    float *x0 = malloc(NP * D * sizeof(float)), *z = malloc(NP * D * sizeof(float));
    float *x = malloc(NP * D * sizeof(float));
    double *logp = malloc(NP * sizeof(double)), *truth = malloc(NP * sizeof(double));
    sd_rng r;
    sd_rng_init(&r, 60 + (uint64_t)c, SD_STREAM_DATA);
    sd_gmm_sample(m->gmm, &r, x0, NULL, NP);
    sd_rng_fill_normal(&r, z, NP * D, 0, 1);
    ck_assert_int_eq(sd_sde_perturb(&m->sde, eps, x0, z, x, NULL, NULL, NP, D), SD_OK);
    int64_t nfe = 0;
    ck_assert_msg(sd_lik_ode(lk, x, NP, 0, logp, NULL, &nfe) == SD_OK, "%s", sd_error_message());
    ck_assert_int_eq(sd_gmm_logp(m->gmm, &m->sde, eps, x, truth, NP), SD_OK);
    double worst = 0;
    int bad = 0;
    for (int p = 0; p < NP; p++) {
        double err = fabs(logp[p] - truth[p]);
        worst = fmax(worst, err);
        bad += !(err < 1e-3);
    }
    printf("diagve %-8s loglik: max |err| %.2e nats over %d points (nfe %lld)\n", case_names[c],
           worst, NP, (long long)nfe);
    ck_assert_msg(bad == 0, "%s: %d of %d points off the closed form by > 1e-3 (worst %.3e)",
                  case_names[c], bad, NP, worst);
    sd_lik_free(lk);
    free(x0);
    free(z);
    free(x);
    free(logp);
    free(truth);
    sd_model_free(m);
    mixture_free(&mx);
}
END_TEST

int main(void)
{
    /* the one call that adds the family */
    if (sd_sde_register(&diagve_family) != SD_OK) {
        fprintf(stderr, "%s\n", sd_error_message());
        return EXIT_FAILURE;
    }
    Suite *su = suite_create("sde_family");
    TCase *unit = tcase_create("unit");
    tcase_set_timeout(unit, 300);
    tcase_add_test(unit, test_registry);
    tcase_add_test(unit, test_perturb_kernel);
    tcase_add_loop_test(unit, test_likelihood_closed_form, 0, N_CASES);
    suite_add_tcase(su, unit);
    TCase *acc = tcase_create("accuracy");
    tcase_set_timeout(acc, 600);
    tcase_add_loop_test(acc, test_sampler_accuracy, 0, N_CASES * N_SAMPLERS);
    suite_add_tcase(su, acc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

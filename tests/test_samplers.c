/* test_samplers.c - every sampler against distributions known exactly.
 *
 * The score is the exact score of a Gaussian mixture under the noise family
 * (models/include/sd/gmm.h). Two mixtures: ring8, 8 components on a circle in 2-D with
 * rotated anisotropic covariances; and aniso16, 3 components in 16-D with full
 * covariances R diag(lambda) R^T, lambda geometric from 1 down to 0.05
 * (condition number 20) and random rotations R.
 *
 * For each family (ncsn, ve, vp) and sampler (annealed Langevin; PC
 * Euler-Maruyama + Langevin corrector; PC reverse diffusion; ODE RK45; ODE
 * Heun) we draw N = 10,000 samples
 * and check, with the components' clean
 * responsibilities r_k(x) as soft assignments (E[r_k(x) f(x)] = w_k E_k[f]
 * exactly, so these statistics are unbiased on exact samples):
 *   - weights       |w^_k - w_k| <= 0.02
 *   - means         max_i |m^_ki - mu_ki| <= 0.05 s, s = the data scale
 *                   sqrt(tr Cov / D) of the whole mixture
 *   - covariances   ||C^_k - C_k||_F / ||C_k||_F <= 0.10
 *   - an energy-distance two-sample test (Szekely & Rizzo 2004) against exact
 *     mixture draws, permutation null, not rejecting at the 1% level.
 * Tolerances against the sample size (stated at each check below): the
 * weight's standard error is sqrt(w (1 - w) / N) <= 0.005, so 0.02 is >= 4
 * standard errors; a mean coordinate's is sqrt(lambda / (w N)) <= 0.02 while
 * 0.05 s >= 0.14; the relative Frobenius error of a sample covariance from
 * n_k = w_k N points is about sqrt(((tr C)^2 + ||C||_F^2) / n_k) / ||C||_F,
 * which the test computes and prints beside each measured error (<= 0.065 for
 * these mixtures, so 0.10 leaves ~0.075 for discretisation bias). Step counts
 * were chosen so that each sampler's bias fits inside what remains; the
 * printed table shows the measured errors. The energy test compares the
 * first 1,500 samples with 1,500 exact draws (O(m^2) distances; 199
 * permutations): the full 10,000 would cost 44x more per case.
 *
 * Also: ODE round trip data -> latent -> data (RK45, rtol 1e-5, each point
 * back within 1e-3), exact NFE counts of every sampler, reproducibility
 * (seed, batch size, thread count), inpainting and colorization on mixtures
 * whose known and unknown parts are independent (so the exact answer is the
 * unknown part's marginal), option errors and the grid PNG writer.
 *
 * Time: ~80 s of CPU in release (the 16-D cases dominate), run as parallel
 * tasks on the OpenMP threads; under ASan the accuracy test runs the 2-D
 * mixture only.
 *
 * Speed. A 16-D score costs ~8 us per point through sd_gmm_score (per-point
 * triangular solves); these runs need ~10^7 point evaluations each, so the
 * test evaluates the same exact score from an eigen-decomposition, S_k^-1 =
 * U_k diag(1 / (a^2 lambda + sigma^2)) U_k^T prepared per call and one sgemm
 * per component and chunk, valid for the isotropic families
 * (fastmix_new_iso), and first checks it against sd_gmm_score at many times
 * (test_fast_score_matches_gmm). The model adapter (sd_scorer_from_model over
 * a gmm) is checked separately. Mixtures, the fast score and the statistics
 * are tests/mixture_check.c's, shared with the matrix-family suites.
 */
#include <check.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sd/gmm.h"
#include "sd/image_grid.h"
#include "mixture_check.h"
#include "sd/sampler.h"
#include "sd/data.h"
#include "sd/rng.h"
#include "sd/sde.h"
#include "sd/tensor.h"

/* Sample size per sampler. Under ASan the accuracy test keeps N and the
 * tolerances but runs the 2-D mixture only (the sampler code is the same for
 * any D; the 16-D cases would take minutes instrumented). */
static const size_t N_SAMPLES = 10000;

/* The fast exact score of mixture_check.h in its isotropic-family mode
 * (see the file comment); fails the test if it cannot be set up. */
static fastmix *fast_new(const mixture *m, const sd_sde *sde)
{
    fastmix *f = fastmix_new_iso(m, sde);
    ck_assert_msg(f != NULL, "fastmix_new_iso: %s", sd_error_message());
    return f;
}

/* The suite's gmm of a mixture (sd_gmm_new must accept it). */
static sd_gmm *gmm_of(const mixture *m)
{
    sd_gmm *g = mixture_gmm(m);
    ck_assert_msg(g != NULL, "sd_gmm_new: %s", sd_error_message());
    return g;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- accuracy of every sampler ------------------------------------------------- */

/* The five samplers (ancestral sampling: test_ancestral_gaussian). */
enum { S_LANGEVIN, S_PC_EM_LANGEVIN, S_PC_RD, S_ODE_RK45, S_ODE_HEUN, N_SAMPLERS, S_PC_ANCESTRAL };
static const char *sampler_names[N_SAMPLERS] = {"langevin", "pc em+langevin", "pc rd",
                                                "ode rk45", "ode heun"};
static const char *family_names[3] = {"ncsn", "ve", "vp"};

/* Step counts (see the printed table for the resulting errors):
 *   langevin: L = 30 levels (ncsn: the family "ncsn:L=30", 50 -> 0.01; ve/vp:
 *             sigma/a geometric from t = 1 to t = 1e-5), T = 50 steps each,
 *             eps / sigma_L^2 = 0.3, + the denoising step. Measured: with
 *             NCSN's 10 levels and the default eps / sigma_L^2 = 0.1 at
 *             T = 100 (NFE 1001) the covariances are off by 0.17-0.20 (the
 *             chain cannot re-equilibrate the broad directions once sigma <<
 *             their scale) and 16-D weights by 0.015-0.03 (too few levels
 *             where the modes split); 30 levels at 0.3 fix both;
 *   pc:       N time points (ncsn: the family "ncsn:L=N"), M = 1 corrector
 *             step at snr 0.16; denoising on;
 *   ode:      RK45 at rtol = atol = 1e-5; Heun with H steps; no denoising. */
static const int LANGEVIN_L = 30, LANGEVIN_T = 50, PC_N = 500, HEUN_STEPS = 100;
static const int ANCESTRAL_N = 500;
static const double LANGEVIN_RATIO = 0.3;

static sd_sampler_opts case_opts(int which, const sd_sde *sde)
{
    sd_sampler_opts o;
    switch (which) {
    case S_LANGEVIN: {
        o = sd_sampler_defaults(SD_SAMPLER_LANGEVIN);
        o.steps_per_level = LANGEVIN_T;
        o.levels = LANGEVIN_L;
        double sl = sd_sde_sigma(sde, sd_sde_has(sde, SD_SDE_DISCRETE_LEVELS) ? 0.0 : sd_sde_default_eps(sde));
        o.step_eps = LANGEVIN_RATIO * sl * sl;
        break;
    }
    case S_PC_EM_LANGEVIN:
        o = sd_sampler_defaults(SD_SAMPLER_PC);
        o.predictor = SD_PRED_EULER_MARUYAMA;
        o.steps = PC_N;
        break;
    case S_PC_RD:
    case S_PC_ANCESTRAL:
        o = sd_sampler_defaults(SD_SAMPLER_PC);
        o.predictor = which == S_PC_RD ? SD_PRED_REVERSE_DIFFUSION : SD_PRED_ANCESTRAL;
        o.corrector = false;
        o.steps = which == S_PC_RD ? PC_N : ANCESTRAL_N;
        break;
    case S_ODE_RK45:
        o = sd_sampler_defaults(SD_SAMPLER_ODE);
        o.denoise = false;
        break;
    case S_ODE_HEUN:
    default:
        o = sd_sampler_defaults(SD_SAMPLER_ODE);
        o.ode_method = SD_ODE_HEUN;
        o.steps = HEUN_STEPS;
        o.denoise = false;
        break;
    }
    o.batch = 2500;
    o.seed = 1000 + (uint64_t)which;
    return o;
}

static void family_spec(int fam, int which, char *buf, size_t len)
{
    if (fam == 0 && (which == S_PC_EM_LANGEVIN || which == S_PC_RD))
        snprintf(buf, len, "ncsn:L=%d", PC_N);
    else if (fam == 0 && which == S_PC_ANCESTRAL)
        snprintf(buf, len, "ncsn:L=%d", ANCESTRAL_N);
    else if (fam == 0 && which == S_LANGEVIN)
        snprintf(buf, len, "ncsn:L=%d", LANGEVIN_L);
    else snprintf(buf, len, "%s", family_names[fam]);
}

typedef struct case_result {
    char spec[64];
    int which;
    sd_status status;
    char err[256];
    int64_t nfe;
    moments mo;
    double energy_p, secs;
    bool ok;
} case_result;

/* One (family, sampler) case on N samples: sampling, moments, energy test. */
static void run_case(const mixture *mx, int fam, int which, const float *ref, size_t m_energy,
                     uint64_t energy_seed, case_result *cr)
{
    memset(cr, 0, sizeof *cr);
    cr->which = which;
    family_spec(fam, which, cr->spec, sizeof cr->spec);
    sd_sde sde;
    if (sd_sde_parse(cr->spec, &sde) != SD_OK) {
        cr->status = SD_ERR_INTERNAL;
        return;
    }
    size_t n = N_SAMPLES;
    float *x = malloc(n * mx->D * sizeof(float));
    fastmix *f = fast_new(mx, &sde);
    sd_scorer sc;
    sd_scorer_from_fn(&sc, fastmix_score, f, &sde, mx->D, 1, 1);
    sd_sampler_opts o = case_opts(which, &sde);
    sd_sample_stats st;
    double t0 = now_s();
    cr->status = sd_sample(&sc, &o, n, x, &st);
    cr->secs = now_s() - t0;
    if (cr->status != SD_OK) {
        snprintf(cr->err, sizeof cr->err, "%s", sd_error_message());
    } else {
        cr->nfe = st.nfe_max;
        compare_moments(mx, x, n, &cr->mo);
        cr->energy_p = energy_test(x, ref, m_energy, mx->D, energy_seed);
        cr->ok = cr->mo.w_err <= 0.02 && cr->mo.mean_err <= 0.05 && cr->mo.cov_err <= 0.10 &&
                 cr->energy_p > 0.01;
    }
    fastmix_free(f);
    free(x);
}

/* All (family, sampler) cases of one mixture. They run as independent
 * tasks on the OpenMP threads (each sampler's own parallel loops are then
 * nested and serial): one fork/join per task instead of one per step keeps
 * the test fast when the cores are shared. Results do not depend on which
 * thread runs what. */
START_TEST(test_sampler_accuracy)
{
    mixture mx = _i == 0 ? mixture_ring8() : mixture_aniso16();
    size_t m_energy = 1500;
    float *ref = malloc(m_energy * mx.D * sizeof(float));
    sd_gmm *g = gmm_of(&mx);
    sd_rng r;
    sd_rng_init(&r, 77 + (uint64_t)_i, SD_STREAM_DATA);
    sd_gmm_sample(g, &r, ref, NULL, m_energy);
    int n_samplers = N_SAMPLERS, n_cases = 3 * n_samplers;
    case_result res[3 * N_SAMPLERS];
    double t0 = now_s();
    /* most expensive first (Langevin, then PC) for a balanced schedule */
#pragma omp parallel for schedule(dynamic, 1)
    for (int c = 0; c < n_cases; c++)
        run_case(&mx, c % 3, c / 3, ref, m_energy, 99 + (uint64_t)(_i * 3 * N_SAMPLERS + c),
                 &res[c]);
    char msg[16384] = "";
    int bad = 0;
    for (int fam = 0; fam < 3; fam++)
        for (int which = 0; which < n_samplers; which++) {
            case_result *cr = &res[which * 3 + fam];
            if (cr->status != SD_OK) {
                bad++;
                snprintf(msg + strlen(msg), sizeof msg - strlen(msg), "[%s %s: %s] ", cr->spec,
                         sampler_names[which], cr->err);
                continue;
            }
            const moments *mo = &cr->mo;
            printf("%-7s %-10s %-15s NFE %5lld  w %.4f  mean %.4f  cov %.4f (noise %.3f)  "
                   "energy p %.3f  %5.1fs %s\n",
                   mx.name, cr->spec, sampler_names[which], (long long)cr->nfe, mo->w_err,
                   mo->mean_err, mo->cov_err, mo->cov_noise, cr->energy_p, cr->secs,
                   cr->ok ? "" : "FAIL");
            if (!cr->ok) {
                bad++;
                snprintf(msg + strlen(msg), sizeof msg - strlen(msg),
                         "[%s %s %s: w %.4f mean %.4f cov %.4f p %.3f] ", mx.name, cr->spec,
                         sampler_names[which], mo->w_err, mo->mean_err, mo->cov_err,
                         cr->energy_p);
            }
        }
    printf("%s: %d cases in %.1f s\n", mx.name, n_cases, now_s() - t0);
    fflush(stdout);
    sd_gmm_free(g);
    free(ref);
    mixture_free(&mx);
    ck_assert_msg(bad == 0, "%s", msg);
}
END_TEST

/* Ancestral sampling (not one of the five) on one anisotropic
 * Gaussian, component 0 of ring8, where discretisation is the only error and
 * the statistics are sharp (covariance noise ~0.015 at N = 10,000; on the
 * 8-component ring the worst-component metric fluctuates by +-0.03 with a few
 * samples left between modes, for every sampler). Same tolerances, ve and vp. */
START_TEST(test_ancestral_gaussian)
{
    mixture mx = mixture_ring8();
    mx.K = 1;
    mx.w[0] = 1.0;
    const char *fams[2] = {"ve", "vp"};
    char msg[512] = "";
    for (int fi = 0; fi < 2; fi++) {
        sd_sde sde;
        ck_assert_int_eq(sd_sde_parse(fams[fi], &sde), SD_OK);
        fastmix *f = fast_new(&mx, &sde);
        sd_scorer sc;
        sd_scorer_from_fn(&sc, fastmix_score, f, &sde, 2, 1, 1);
        sd_sampler_opts o = case_opts(S_PC_ANCESTRAL, &sde);
        size_t n = N_SAMPLES;
        float *x = malloc(n * 2 * sizeof(float));
        ck_assert_int_eq(sd_sample(&sc, &o, n, x, NULL), SD_OK);
        moments mo;
        compare_moments(&mx, x, n, &mo);
        printf("ancestral %s (1 Gaussian, N = %d): mean %.4f cov %.4f (noise %.3f)\n", fams[fi],
               ANCESTRAL_N, mo.mean_err, mo.cov_err, mo.cov_noise);
        if (!(mo.mean_err <= 0.05 && mo.cov_err <= 0.10))
            snprintf(msg + strlen(msg), sizeof msg - strlen(msg), "[%s: mean %.4f cov %.4f] ",
                     fams[fi], mo.mean_err, mo.cov_err);
        free(x);
        fastmix_free(f);
    }
    mixture_free(&mx);
    ck_assert_msg(msg[0] == 0, "%s", msg);
}
END_TEST

/* ---- the fast score and the model adapter ------------------------------------------ */

START_TEST(test_fast_score_matches_gmm)
{
    /* The test's batched score against sd_gmm_score (Cholesky, double) at
     * perturbed points over the whole time range of every family used. */
    const char *fams[] = {"ncsn", "ve", "vp"};
    const double ts[] = {0.0, 1e-5, 1e-3, 0.05, 0.2, 0.5, 0.8, 1.0};
    double worst = 0;
    for (int mi = 0; mi < 2; mi++) {
        mixture mx = mi == 0 ? mixture_ring8() : mixture_aniso16();
        sd_gmm *g = gmm_of(&mx);
        size_t n = 600;
        float *x = malloc(n * mx.D * sizeof(float)), *a = malloc(n * mx.D * sizeof(float));
        float *b = malloc(n * mx.D * sizeof(float));
        for (int fi = 0; fi < 3; fi++) {
            sd_sde sde;
            ck_assert_int_eq(sd_sde_parse(fams[fi], &sde), SD_OK);
            fastmix *f = fast_new(&mx, &sde);
            for (int k = 0; k < 8; k++) {
                sd_rng r;
                sd_rng_init(&r, (uint64_t)k, SD_STREAM_DATA);
                sd_gmm_sample(g, &r, x, NULL, n);
                double am = sd_sde_mean_coef(&sde, ts[k]), sg = sd_sde_sigma(&sde, ts[k]);
                for (size_t i = 0; i < n * mx.D; i++)
                    x[i] = (float)(am * x[i] + sg * sd_rng_normal(&r));
                ck_assert_int_eq(fastmix_score(f, x, n, ts[k], a), SD_OK);
                ck_assert_int_eq(sd_gmm_score(g, &sde, ts[k], x, b, n), SD_OK);
                for (size_t i = 0; i < n * mx.D; i++)
                    worst = fmax(worst, fabs(a[i] - b[i]) / (1.0 + fabs(b[i])));
            }
            fastmix_free(f);
        }
        free(x);
        free(a);
        free(b);
        sd_gmm_free(g);
        mixture_free(&mx);
    }
    /* float32 arithmetic on O(100) intermediate values: 1e-4 relative */
    ck_assert_msg(worst < 1e-4, "fast score differs from sd_gmm_score by %g", worst);
}
END_TEST

START_TEST(test_model_adapter)
{
    /* sd_scorer_from_model over a gmm: per-thread copies, same numbers as
     * sd_gmm_score, counted; and a whole ODE run through it agrees with the
     * fast score. */
    mixture mx = mixture_ring8();
    sd_sde sde;
    ck_assert_int_eq(sd_sde_parse("ve", &sde), SD_OK);
    sd_model *m;
    ck_assert_int_eq(sd_model_new_gmm(gmm_of(&mx), &sde, &m), SD_OK);
    sd_scorer sc;
    ck_assert_int_eq(sd_scorer_from_model(m, &sc), SD_OK);
    ck_assert_int_eq((int)sc.D, 2);
    size_t n = 3000; /* above the adapter's threshold: split across threads */
    float *x = malloc(n * 2 * sizeof(float)), *a = malloc(n * 2 * sizeof(float));
    float *b = malloc(n * 2 * sizeof(float));
    sd_rng r;
    sd_rng_init(&r, 3, SD_STREAM_DATA);
    sd_rng_fill_normal(&r, x, n * 2, 0.0f, 4.0f);
    ck_assert_int_eq(sd_scorer_eval(&sc, x, n, 0.3, a), SD_OK);
    ck_assert_int_eq(sd_gmm_score(m->gmm, &sde, 0.3, x, b, n), SD_OK);
    ck_assert_int_eq(memcmp(a, b, n * 2 * sizeof(float)), 0);
    ck_assert_int_eq(sc.nfe, 1);
    ck_assert_int_eq(sc.points, (int64_t)n);

    sd_sampler_opts o = sd_sampler_defaults(SD_SAMPLER_ODE);
    o.ode_method = SD_ODE_HEUN;
    o.steps = 20;
    o.seed = 4;
    o.batch = 100;
    size_t ns = 500;
    sd_sample_stats st;
    ck_assert_int_eq(sd_sample(&sc, &o, ns, a, &st), SD_OK);
    fastmix *f = fast_new(&mx, &sde);
    sd_scorer fs;
    sd_scorer_from_fn(&fs, fastmix_score, f, &sde, 2, 1, 1);
    ck_assert_int_eq(sd_sample(&fs, &o, ns, b, &st), SD_OK);
    double md = 0;
    for (size_t i = 0; i < ns * 2; i++) md = fmax(md, fabs(a[i] - b[i]));
    ck_assert_msg(md < 1e-3, "adapter vs fast score: %g", md);
    fastmix_free(f);
    sd_scorer_release(&sc);
    sd_model_free(m);
    free(x);
    free(a);
    free(b);
    mixture_free(&mx);
}
END_TEST

/* ---- exact NFE ------------------------------------------------------------------------- */

typedef struct counting {
    fastmix *f;
    long calls;
    long nan_at;
} counting;

static sd_status count_score(void *ctx, const float *x, size_t n, double t, float *out)
{
    counting *c = ctx;
    c->calls++;
    sd_status st = fastmix_score(c->f, x, n, t, out);
    if (c->nan_at && c->calls >= c->nan_at) out[0] = NAN;
    return st;
}

static int64_t count_run(const char *spec, sd_sampler_opts o, size_t n, long *calls,
                         sd_sample_stats *st)
{
    mixture mx = mixture_ring8();
    sd_sde sde;
    ck_assert_int_eq(sd_sde_parse(spec, &sde), SD_OK);
    counting c = {fast_new(&mx, &sde), 0, 0};
    sd_scorer sc;
    sd_scorer_from_fn(&sc, count_score, &c, &sde, 2, 1, 1);
    float *x = malloc(n * 2 * sizeof(float));
    sd_status s = sd_sample(&sc, &o, n, x, st);
    ck_assert_msg(s == SD_OK, "%s", sd_error_message());
    ck_assert_int_eq(sc.nfe, c.calls);
    ck_assert_int_eq(st->nfe, c.calls);
    ck_assert_int_eq(st->points, sc.points);
    *calls = c.calls;
    fastmix_free(c.f);
    free(x);
    mixture_free(&mx);
    return st->nfe_max;
}

START_TEST(test_nfe_exact)
{
    struct {
        const char *spec;
        sd_sampler_kind kind;
        int a, b, c; /* langevin: levels, T, -; pc: steps, corrector steps (0 off), predictor;
                        ode: method, steps */
        bool denoise;
        int64_t expect;
    } cases[] = {
        {"ve", SD_SAMPLER_LANGEVIN, 4, 3, 0, true, 4 * 3 + 1},
        {"vp", SD_SAMPLER_LANGEVIN, 4, 3, 0, false, 4 * 3},
        {"ncsn", SD_SAMPLER_LANGEVIN, 0, 2, 0, true, 10 * 2 + 1}, /* ncsn: its 10 levels */
        {"ve", SD_SAMPLER_PC, 5, 2, SD_PRED_REVERSE_DIFFUSION, true, 5 * 3},
        {"vp", SD_SAMPLER_PC, 5, 0, SD_PRED_EULER_MARUYAMA, true, 5},
        {"ve", SD_SAMPLER_PC, 5, 0, SD_PRED_ANCESTRAL, false, 5},
        {"ncsn:L=7", SD_SAMPLER_PC, 99, 1, SD_PRED_ANCESTRAL, true, 7 * 2},
        {"ve", SD_SAMPLER_PC, 5, 2, SD_PRED_NONE, true, 5 * 2 + 1},
        {"ve", SD_SAMPLER_PC, 5, 2, SD_PRED_NONE, false, 5 * 2},
        {"ve", SD_SAMPLER_ODE, SD_ODE_EULER, 7, 0, false, 7},
        {"vp", SD_SAMPLER_ODE, SD_ODE_HEUN, 7, 0, false, 14},
        {"ncsn", SD_SAMPLER_ODE, SD_ODE_RK4, 7, 0, true, 28 + 1},
    };
    char msg[1024] = "";
    int bad = 0;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        sd_sampler_opts o = sd_sampler_defaults(cases[i].kind);
        o.denoise = cases[i].denoise;
        o.batch = 30;
        if (cases[i].kind == SD_SAMPLER_LANGEVIN) {
            o.levels = cases[i].a;
            o.steps_per_level = cases[i].b;
        } else if (cases[i].kind == SD_SAMPLER_PC) {
            o.steps = cases[i].a;
            o.corrector = cases[i].b > 0;
            o.corrector_steps = cases[i].b > 0 ? cases[i].b : 1;
            o.predictor = (sd_predictor)cases[i].c;
        } else {
            o.ode_method = (sd_ode_method)cases[i].a;
            o.steps = cases[i].b;
        }
        long calls;
        sd_sample_stats st;
        int64_t nfe = count_run(cases[i].spec, o, 100, &calls, &st); /* 4 batches */
        if (nfe != cases[i].expect || st.nfe_min != nfe || st.batches != 4 || calls != 4 * nfe ||
            st.points != 100 * nfe) {
            bad++;
            snprintf(msg + strlen(msg), sizeof msg - strlen(msg), "[case %zu: NFE %lld want %lld] ",
                     i, (long long)nfe, (long long)cases[i].expect);
        }
    }
    /* RK45: adaptive, but still counted exactly: the counts agree (checked in
     * count_run) and each batch's NFE is 2 + 6 (accepted + rejected steps). */
    sd_sampler_opts o = sd_sampler_defaults(SD_SAMPLER_ODE);
    o.denoise = false;
    o.batch = 100;
    long calls;
    sd_sample_stats st;
    int64_t nfe = count_run("ve", o, 100, &calls, &st);
    ck_assert_int_eq(nfe, 2 + 6 * (st.ode_accepted + st.ode_rejected));
    ck_assert_msg(bad == 0, "%s", msg);
}
END_TEST

/* ---- ODE round trip ------------------------------------------------------------------- */

START_TEST(test_ode_round_trip)
{
    /* data -> latent -> data with RK45 at rtol = atol = 1e-5: each point
     * back within 1e-3 (max over coordinates). */
    const char *fams[] = {"ncsn", "ve", "vp"};
    size_t n = SD_TEST_ASAN ? 100 : 500;
    double worst = 0;
    char msg[512] = "";
    for (int mi = 0; mi < 2; mi++) {
        mixture mx = mi == 0 ? mixture_ring8() : mixture_aniso16();
        sd_gmm *g = gmm_of(&mx);
        float *x0 = malloc(n * mx.D * sizeof(float)), *x = malloc(n * mx.D * sizeof(float));
        sd_rng r;
        sd_rng_init(&r, 8, SD_STREAM_DATA);
        sd_gmm_sample(g, &r, x0, NULL, n);
        for (int fi = 0; fi < 3; fi++) {
            sd_sde sde;
            ck_assert_int_eq(sd_sde_parse(fams[fi], &sde), SD_OK);
            fastmix *f = fast_new(&mx, &sde);
            sd_scorer sc;
            sd_scorer_from_fn(&sc, fastmix_score, f, &sde, mx.D, 1, 1);
            sd_sampler_opts o = sd_sampler_defaults(SD_SAMPLER_ODE);
            o.batch = 100;
            memcpy(x, x0, n * mx.D * sizeof(float));
            sd_sample_stats se, sdec;
            ck_assert_int_eq(sd_flow_encode(&sc, &o, x, n, &se), SD_OK);
            /* the latents must look like the prior, not like the data */
            double ss = 0;
            for (size_t i = 0; i < n * mx.D; i++) ss += (double)x[i] * x[i];
            double prior_std = fi == 2 ? 1.0 : 50.0, rms = sqrt(ss / (double)(n * mx.D));
            ck_assert_msg(fabs(rms / prior_std - 1) < 0.2, "latent rms %g", rms);
            ck_assert_int_eq(sd_flow_decode(&sc, &o, x, n, &sdec), SD_OK);
            double md = 0;
            for (size_t i = 0; i < n * mx.D; i++) md = fmax(md, fabs(x[i] - x0[i]));
            worst = fmax(worst, md);
            printf("round trip %-7s %-4s: max error %.2e, NFE encode %lld decode %lld per "
                   "sample (batches of 100)\n", mx.name, fams[fi], md, (long long)se.nfe_max,
                   (long long)sdec.nfe_max);
            if (md > 1e-3)
                snprintf(msg + strlen(msg), sizeof msg - strlen(msg), "[%s %s: %g] ", mx.name,
                         fams[fi], md);
            fastmix_free(f);
        }
        free(x0);
        free(x);
        sd_gmm_free(g);
        mixture_free(&mx);
    }
    fflush(stdout);
    ck_assert_msg(worst <= 1e-3, "%s", msg);
}
END_TEST

/* ---- reproducibility ------------------------------------------------------------------ */

static void sample_with(const mixture *mx, const char *spec, sd_sampler_opts o, size_t n,
                        float *x)
{
    sd_sde sde;
    ck_assert_int_eq(sd_sde_parse(spec, &sde), SD_OK);
    fastmix *f = fast_new(mx, &sde);
    fastmix_set_par_min(f, 1); /* exercise the split score in the thread-count test */
    sd_scorer sc;
    sd_scorer_from_fn(&sc, fastmix_score, f, &sde, mx->D, 1, 1);
    ck_assert_int_eq(sd_sample(&sc, &o, n, x, NULL), SD_OK);
    fastmix_free(f);
}

START_TEST(test_deterministic)
{
    mixture mx = mixture_ring8();
    size_t n = 60;
    float *a = malloc(n * 2 * sizeof(float)), *b = malloc(n * 2 * sizeof(float));
    /* same seed, different batch sizes: identical for the samplers that do
     * not couple samples */
    sd_sampler_opts os[3] = {sd_sampler_defaults(SD_SAMPLER_LANGEVIN),
                             sd_sampler_defaults(SD_SAMPLER_PC),
                             sd_sampler_defaults(SD_SAMPLER_ODE)};
    os[0].levels = 5;
    os[0].steps_per_level = 4;
    os[1].steps = 20;
    os[1].corrector = false;
    os[2].ode_method = SD_ODE_HEUN;
    os[2].steps = 10;
    for (int k = 0; k < 3; k++) {
        os[k].seed = 11;
        os[k].batch = 60;
        sample_with(&mx, "vp", os[k], n, a);
        os[k].batch = 7;
        sample_with(&mx, "vp", os[k], n, b);
        ck_assert_msg(memcmp(a, b, n * 2 * sizeof(float)) == 0, "sampler %d depends on batch", k);
        os[k].seed = 12;
        sample_with(&mx, "vp", os[k], n, b);
        ck_assert_msg(memcmp(a, b, n * 2 * sizeof(float)) != 0, "sampler %d ignores seed", k);
    }
    free(a);
    free(b);
    mixture_free(&mx);

    /* thread count: 1 vs 2 threads give identical samples, also for the
     * batch-coupled corrector and RK45; large enough (4096 x 16) that the
     * noise and score loops are split */
    mixture m16 = mixture_aniso16();
    n = 4096;
    a = malloc(n * 16 * sizeof(float));
    b = malloc(n * 16 * sizeof(float));
    sd_sampler_opts pc = sd_sampler_defaults(SD_SAMPLER_PC);
    pc.predictor = SD_PRED_EULER_MARUYAMA;
    pc.steps = 3;
    pc.batch = n;
    sd_sampler_opts ode = sd_sampler_defaults(SD_SAMPLER_ODE);
    ode.batch = n;
    ode.rtol = ode.atol = 1e-2;
    int saved = omp_get_max_threads();
    for (int k = 0; k < 2; k++) {
        omp_set_num_threads(1);
        sample_with(&m16, "ve", k ? ode : pc, n, a);
        omp_set_num_threads(2);
        sample_with(&m16, "ve", k ? ode : pc, n, b);
        ck_assert_msg(memcmp(a, b, n * 16 * sizeof(float)) == 0, "threads change %s",
                      k ? "rk45" : "pc");
    }
    omp_set_num_threads(saved);
    free(a);
    free(b);
    mixture_free(&m16);
}
END_TEST

/* ---- inpainting and colorization -------------------------------------------------------- */

/* x0 in {-2, 2} (0.3, 0.7), std 0.5, independent of x1 in {-1.5, 1.5} (0.6,
 * 0.4), std 0.4: a 4-component product mixture, for which sampling x1 with
 * x0 held is exactly sampling x1's marginal. */
static mixture product4(void)
{
    mixture m = {"product4", 4, 2, malloc(4 * sizeof(double)), malloc(8 * sizeof(double)),
                 calloc(16, sizeof(double))};
    const double a[2] = {-2, 2}, wa[2] = {0.3, 0.7}, b[2] = {-1.5, 1.5}, wb[2] = {0.6, 0.4};
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2; j++) {
            int k = 2 * i + j;
            m.w[k] = wa[i] * wb[j];
            m.mu[2 * k] = a[i];
            m.mu[2 * k + 1] = b[j];
            m.cov[4 * k] = 0.25;
            m.cov[4 * k + 3] = 0.16;
        }
    return m;
}

typedef struct known_probe {
    double t_target, t_seen;
    double mean, sd; /* of the known coordinate over the batch, at t_seen */
    int coord;
    size_t D;
} known_probe;

/* Records the known coordinate's mean and std the first time t <= t_target. */
static sd_status probe_known(void *ctx, const sd_sample_progress *p)
{
    known_probe *k = ctx;
    if (p->batch != 0 || k->t_seen >= 0 || p->t > k->t_target || p->frac == 0) return SD_OK;
    double s1 = 0, s2 = 0;
    for (size_t i = 0; i < p->n; i++) {
        double v = p->x[i * k->D + k->coord];
        s1 += v;
        s2 += v * v;
    }
    k->t_seen = p->t;
    k->mean = s1 / p->n;
    k->sd = sqrt(s2 / p->n - k->mean * k->mean);
    return SD_OK;
}

START_TEST(test_inpaint_product)
{
    mixture mx = product4();
    size_t n = SD_TEST_ASAN ? 1000 : 4000;
    const char *specs[2] = {"vp", "ve"};
    float *data = malloc(n * 2 * sizeof(float)), *mask = malloc(n * 2 * sizeof(float));
    float *x = malloc(n * 2 * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        data[2 * i] = 2.0f;
        data[2 * i + 1] = 0.0f; /* ignored: not known */
        mask[2 * i] = 1.0f;
        mask[2 * i + 1] = 0.0f;
    }
    char msg[1024] = "";
    for (int k = 0; k < 2; k++) {
        sd_sde sde;
        ck_assert_int_eq(sd_sde_parse(specs[k], &sde), SD_OK);
        fastmix *f = fast_new(&mx, &sde);
        sd_scorer sc;
        sd_scorer_from_fn(&sc, fastmix_score, f, &sde, 2, 1, 1);
        sd_sampler_opts o;
        if (k == 0) { /* pc on vp */
            o = sd_sampler_defaults(SD_SAMPLER_PC);
            o.steps = 300;
        } else { /* langevin on ve */
            o = sd_sampler_defaults(SD_SAMPLER_LANGEVIN);
            o.levels = 20;
            o.steps_per_level = 30;
            double sl = sd_sde_sigma(&sde, sd_sde_default_eps(&sde));
            o.step_eps = 0.3 * sl * sl;
        }
        o.batch = n;
        o.seed = 21;
        known_probe kp = {.t_target = 0.5, .t_seen = -1, .coord = 0, .D = 2};
        o.observer = probe_known;
        o.observer_ctx = &kp;
        ck_assert_int_eq(sd_inpaint(&sc, &o, data, mask, n, x, NULL), SD_OK);
        /* the known part is the data itself at the end */
        int moved = 0;
        for (size_t i = 0; i < n; i++) moved += x[2 * i] != 2.0f;
        /* ... and a forward draw a(t) y + sigma(t) z on the way: mean within
         * 4 standard errors sigma/sqrt(n), std within 4 sigma/sqrt(2n) */
        double a = sd_sde_mean_coef(&sde, kp.t_seen), sg = sd_sde_sigma(&sde, kp.t_seen);
        bool fwd_ok = kp.t_seen > 0 && fabs(kp.mean - 2.0 * a) < 4 * sg / sqrt((double)n) &&
                      fabs(kp.sd - sg) < 4 * sg / sqrt(2.0 * n);
        /* x1 follows its marginal: P(x1 > 0) = 0.4 (SE sqrt(.24/n) = 0.008 at
         * n = 4000; 4 SE), E x1 = -0.3 (SE sqrt(2.32/n) = 0.024; 4 SE) */
        double pos = 0, s1 = 0;
        for (size_t i = 0; i < n; i++) {
            pos += x[2 * i + 1] > 0;
            s1 += x[2 * i + 1];
        }
        pos /= n;
        s1 /= n;
        bool marg_ok = fabs(pos - 0.4) < 4 * sqrt(0.24 / n) && fabs(s1 + 0.3) < 4 * sqrt(2.32 / n);
        if (moved || !fwd_ok || !marg_ok)
            snprintf(msg + strlen(msg), sizeof msg - strlen(msg),
                     "[%s: %d known values changed; at t=%.3f known mean %.4f (want %.4f) sd "
                     "%.4f (want %.4f); P(x1>0) %.4f, E x1 %.4f] ", specs[k], moved, kp.t_seen,
                     kp.mean, 2.0 * a, kp.sd, sg, pos, s1);
        fastmix_free(f);
    }
    free(data);
    free(mask);
    free(x);
    mixture_free(&mx);
    ck_assert_msg(msg[0] == 0, "%s", msg);
}
END_TEST

START_TEST(test_colorize)
{
    /* 1-pixel RGB "images" (C = 3, H = W = 1). In the orthogonal colour basis
     * d = M^T x, M = [u0 u1 u2], u0 = (1,1,1)/sqrt(3), the luminance d0 is
     * independent of the chroma (d1, d2), a 2-component mixture: (0.3, 0) w.p.
     * 0.3 and (-0.2, 0.1) w.p. 0.7, covariance 0.01 I; d0 ~ N(sqrt(3) 0.5,
     * 0.05). Colorizing gray g must keep the channel mean at g exactly and
     * draw the chroma from its marginal. */
    const double M[9] = {1 / sqrt(3.0), -2 / sqrt(6.0), 0,          1 / sqrt(3.0), 1 / sqrt(6.0),
                         1 / sqrt(2.0), 1 / sqrt(3.0),  1 / sqrt(6.0), -1 / sqrt(2.0)};
    const double c1[2] = {0.3, -0.2}, c2[2] = {0.0, 0.1}, w[2] = {0.3, 0.7};
    const double dv[3] = {0.05, 0.01, 0.01};
    mixture mx = {"color2", 2, 3, malloc(2 * sizeof(double)), malloc(6 * sizeof(double)),
                  malloc(18 * sizeof(double))};
    for (int k = 0; k < 2; k++) {
        double d[3] = {sqrt(3.0) * 0.5, c1[k], c2[k]};
        mx.w[k] = w[k];
        for (int i = 0; i < 3; i++) {
            mx.mu[3 * k + i] = M[3 * i] * d[0] + M[3 * i + 1] * d[1] + M[3 * i + 2] * d[2];
            for (int j = 0; j < 3; j++) {
                double acc = 0;
                for (int l = 0; l < 3; l++) acc += M[3 * i + l] * dv[l] * M[3 * j + l];
                mx.cov[9 * k + 3 * i + j] = acc;
            }
        }
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < i; j++) mx.cov[9 * k + 3 * i + j] = mx.cov[9 * k + 3 * j + i];
    }
    size_t n = SD_TEST_ASAN ? 1000 : 3000;
    sd_sde sde;
    ck_assert_int_eq(sd_sde_parse("ve", &sde), SD_OK);
    fastmix *f = fast_new(&mx, &sde);
    sd_scorer sc;
    sd_scorer_from_fn(&sc, fastmix_score, f, &sde, 3, 1, 1);
    float *gray = malloc(n * sizeof(float)), *x = malloc(n * 3 * sizeof(float));
    for (size_t i = 0; i < n; i++) gray[i] = 0.62f; /* off the luminance mean on purpose */
    sd_sampler_opts o = sd_sampler_defaults(SD_SAMPLER_PC);
    o.steps = 300;
    o.batch = 1000;
    o.seed = 5;
    ck_assert_int_eq(sd_colorize(&sc, &o, gray, n, x, NULL), SD_OK);
    double worst_gray = 0, frac1 = 0;
    for (size_t i = 0; i < n; i++) {
        const float *p = x + 3 * i;
        worst_gray = fmax(worst_gray, fabs((p[0] + p[1] + p[2]) / 3.0 - 0.62));
        double d1 = M[1] * p[0] + M[4] * p[1] + M[7] * p[2];
        frac1 += d1 > 0.05; /* component 1 has d1 = 0.3, component 2 d1 = -0.2 */
    }
    frac1 /= n;
    ck_assert_msg(worst_gray < 1e-6, "channel mean moved by %g", worst_gray);
    /* 4 standard errors sqrt(0.21 / n) = 0.033 at n = 3000 */
    ck_assert_msg(fabs(frac1 - 0.3) < 4 * sqrt(0.21 / n), "chroma component 1: %.4f", frac1);
    /* only 3-channel models */
    sd_scorer s2;
    sd_scorer_from_fn(&s2, fastmix_score, f, &sde, 1, 3, 1);
    ck_assert_int_eq(sd_colorize(&s2, &o, gray, 10, x, NULL), SD_ERR_INVALID);
    fastmix_free(f);
    free(gray);
    free(x);
    mixture_free(&mx);
}
END_TEST

/* ---- errors ---------------------------------------------------------------------------- */

static sd_status failing_observer(void *ctx, const sd_sample_progress *p)
{
    int *calls = ctx;
    (void)p;
    return ++*calls == 3 ? sd_error(SD_ERR_IO, "observer stops") : SD_OK;
}

START_TEST(test_errors)
{
    mixture mx = mixture_ring8();
    sd_sde ve, vp;
    ck_assert_int_eq(sd_sde_parse("ve", &ve), SD_OK);
    ck_assert_int_eq(sd_sde_parse("vp", &vp), SD_OK);
    counting c = {fast_new(&mx, &ve), 0, 0};
    sd_scorer sc;
    sd_scorer_from_fn(&sc, count_score, &c, &ve, 2, 1, 1);
    float x[40], mask[40] = {0};
    sd_sampler_opts o = sd_sampler_defaults(SD_SAMPLER_PC);
    o.predictor = SD_PRED_NONE;
    o.corrector = false;
    ck_assert_int_eq(sd_sample(&sc, &o, 20, x, NULL), SD_ERR_INVALID);
    o = sd_sampler_defaults(SD_SAMPLER_PC);
    o.steps = 0;
    ck_assert_int_eq(sd_sample(&sc, &o, 20, x, NULL), SD_ERR_INVALID);
    o = sd_sampler_defaults(SD_SAMPLER_PC);
    o.snr = 0;
    ck_assert_int_eq(sd_sample(&sc, &o, 20, x, NULL), SD_ERR_INVALID);
    o = sd_sampler_defaults(SD_SAMPLER_LANGEVIN);
    o.steps_per_level = 0;
    ck_assert_int_eq(sd_sample(&sc, &o, 20, x, NULL), SD_ERR_INVALID);
    o = sd_sampler_defaults(SD_SAMPLER_ODE);
    o.ode_method = SD_ODE_HEUN;
    o.steps = 0;
    ck_assert_int_eq(sd_sample(&sc, &o, 20, x, NULL), SD_ERR_INVALID);
    o = sd_sampler_defaults(SD_SAMPLER_ODE);
    o.rtol = 0;
    ck_assert_int_eq(sd_sample(&sc, &o, 20, x, NULL), SD_ERR_INVALID);
    o.rtol = 1e-5;
    o.batch = 0;
    ck_assert_int_eq(sd_sample(&sc, &o, 20, x, NULL), SD_ERR_INVALID);
    o.batch = 10;
    o.t_eps = 1.0;
    ck_assert_int_eq(sd_sample(&sc, &o, 20, x, NULL), SD_ERR_INVALID);
    /* ODE inpainting is refused */
    ck_assert_int_eq(sd_inpaint(&sc, &o, x, mask, 20, x, NULL), SD_ERR_INVALID);
    /* vp Langevin needs sigma(t_eps) > 0 */
    sd_scorer svp;
    sd_scorer_from_fn(&svp, count_score, &c, &vp, 2, 1, 1);
    o = sd_sampler_defaults(SD_SAMPLER_LANGEVIN);
    o.t_eps = 0.0;
    ck_assert_int_eq(sd_sample(&svp, &o, 20, x, NULL), SD_ERR_INVALID);
    ck_assert_int_eq(c.calls, 0); /* nothing evaluated so far */
    /* a score that turns NaN is reported, not propagated */
    c.nan_at = 5;
    o = sd_sampler_defaults(SD_SAMPLER_PC);
    o.steps = 20;
    ck_assert_int_eq(sd_sample(&sc, &o, 20, x, NULL), SD_ERR_NUMERIC);
    ck_assert_int_eq(c.calls, 5);
    /* an observer's error stops the run */
    c.nan_at = 0;
    int calls = 0;
    o.observer = failing_observer;
    o.observer_ctx = &calls;
    ck_assert_int_eq(sd_sample(&sc, &o, 20, x, NULL), SD_ERR_IO);
    ck_assert_int_eq(calls, 3);
    /* n = 0 is a no-op */
    ck_assert_int_eq(sd_sample(&sc, &o, 0, NULL, NULL), SD_OK);
    sd_sampler_kind k;
    sd_predictor p;
    ck_assert(sd_sampler_kind_parse("ode", &k) && k == SD_SAMPLER_ODE);
    ck_assert(!sd_sampler_kind_parse("ddim", &k));
    ck_assert(sd_predictor_parse("em", &p) && p == SD_PRED_EULER_MARUYAMA);
    ck_assert(sd_predictor_parse("ancestral", &p) && p == SD_PRED_ANCESTRAL);
    ck_assert(!sd_predictor_parse("heun", &p));
    fastmix_free(c.f);
    mixture_free(&mx);
}
END_TEST

/* ---- grid PNG ----------------------------------------------------------------------------- */

START_TEST(test_image_grid)
{
    /* 5 gray 4x3 tiles: 3 columns x 2 rows, 1-pixel white borders, so 13 x 11
     * pixels; tile i has value i/4, and clamping maps -0.5 -> 0, 2 -> 255. */
    enum { N = 5, H = 4, W = 3 };
    float x[N * H * W];
    for (int i = 0; i < N; i++)
        for (int p = 0; p < H * W; p++) x[i * H * W + p] = i / 4.0f;
    x[1 * H * W + 5] = -0.5f;
    x[2 * H * W + 0] = 2.0f;
    char path[] = "/tmp/sd_test_grid_XXXXXX.png";
    int fd = mkstemps(path, 4);
    ck_assert_int_ge(fd, 0);
    close(fd);
    ck_assert_int_eq(sd_image_grid_write(path, x, N, 1, H, W, 0), SD_OK);
    FILE *f = fopen(path, "rb"); /* written anew: a temporary file renamed over it */
    ck_assert_ptr_nonnull(f);
    unsigned char buf[4096];
    size_t len = fread(buf, 1, sizeof buf, f);
    fclose(f);
    remove(path);
    sd_image img;
    ck_assert_int_eq(sd_image_decode(buf, len, &img), SD_OK);
    ck_assert_int_eq(img.w, 13);
    ck_assert_int_eq(img.h, 11);
    ck_assert_int_eq(img.comp, 1);
    int bad = 0;
    for (int y = 0; y < img.h; y++)
        for (int xx = 0; xx < img.w; xx++) {
            int v = img.pixels[y * img.w + xx];
            bool border = y % (H + 1) == 0 || xx % (W + 1) == 0;
            int tile = (y / (H + 1)) * 3 + xx / (W + 1), p = (y % (H + 1) - 1) * W + xx % (W + 1) - 1;
            int want = border || tile >= N ? 255 : (int)lrintf(x[tile * H * W + p] < 0 ? 0
                                                               : x[tile * H * W + p] > 1
                                                                   ? 255
                                                                   : x[tile * H * W + p] * 255);
            bad += v != want;
        }
    ck_assert_int_eq(bad, 0);
    sd_image_free(&img);
    int gc, gr, gw, gh;
    sd_image_grid_size(64, 0, 28, 28, &gc, &gr, &gw, &gh);
    ck_assert(gc == 8 && gr == 8 && gw == 8 * 29 + 1 && gh == 8 * 29 + 1);
    ck_assert_int_eq(sd_image_grid_write(path, x, N, 2, H, W, 0), SD_ERR_INVALID);
}
END_TEST

static double t_case;
static void case_setup(void) { t_case = now_s(); }
static void case_teardown(void)
{
    if (getenv("SD_TEST_TIMES")) printf("  (%.1f s)\n", now_s() - t_case);
}

int main(void)
{
    sd_threads_init(0); /* OpenBLAS single-threaded under our OpenMP loops */
    Suite *su = suite_create("samplers");
    TCase *unit = tcase_create("unit");
    tcase_set_timeout(unit, 0);
    tcase_add_checked_fixture(unit, case_setup, case_teardown);
    tcase_add_test(unit, test_fast_score_matches_gmm);
    tcase_add_test(unit, test_model_adapter);
    tcase_add_test(unit, test_nfe_exact);
    tcase_add_test(unit, test_deterministic);
    tcase_add_test(unit, test_errors);
    tcase_add_test(unit, test_image_grid);
    tcase_add_test(unit, test_inpaint_product);
    tcase_add_test(unit, test_colorize);
    tcase_add_test(unit, test_ode_round_trip);
    tcase_add_test(unit, test_ancestral_gaussian);
    suite_add_tcase(su, unit);
    TCase *acc = tcase_create("accuracy");
    tcase_set_timeout(acc, 0);
    tcase_add_loop_test(acc, test_sampler_accuracy, 0, SD_TEST_ASAN ? 1 : 2);
    suite_add_tcase(su, acc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed != 0;
}

/* test_train_toy.c - denoising score matching end to end: the reference mlp
 * trained on samples of a 2-D mixture of 8 Gaussians learns the mixture's
 * perturbed score, measured against the exact score of the analytic gmm
 * model (issue #3, "Done when" 2). Also: sliced score matching lowers its
 * objective and moves the score towards the truth. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sd/objective.h"
#include "sd/rng.h"
#include "sd/trainer.h"
#include "test_util.h"

enum { N_DATA = 8192, BATCH = 256 };

/* 8 isotropic components (std 0.25) on a circle of radius 2, equal weights. */
static sd_gmm *ring(void)
{
    double w[8], mu[16], cov[32];
    for (int k = 0; k < 8; k++) {
        w[k] = 1.0 / 8;
        mu[2 * k] = 2.0 * cos(2 * M_PI * k / 8);
        mu[2 * k + 1] = 2.0 * sin(2 * M_PI * k / 8);
        cov[4 * k] = cov[4 * k + 3] = 0.0625;
        cov[4 * k + 1] = cov[4 * k + 2] = 0.0;
    }
    sd_gmm *g;
    ck_assert_int_eq(sd_gmm_new(8, 2, w, mu, cov, &g), SD_OK);
    return g;
}

/* Relative error of the score field on data perturbed at t:
 * mean ||s_net - s_true|| / mean ||s_true|| over 1000 points. (The mean of
 * per-point ratios is also printed; it is dominated by the few points where
 * the true score nearly vanishes, between components.) */
static double score_rel_error(sd_model *net, sd_gmm *truth, const sd_sde *sde, double t,
                              const float *data)
{
    enum { N = 1000 };
    static float x[2 * N], s_net[2 * N], s_true[2 * N];
    sd_rng r;
    sd_rng_init(&r, 77, SD_STREAM_SAMPLER);
    double a = sd_sde_mean_coef(sde, t), sig = sd_sde_sigma(sde, t);
    for (int i = 0; i < 2 * N; i++) x[i] = (float)(a * data[i] + sig * sd_rng_normal(&r));
    sd_graph *g = sd_graph_new();
    ck_assert_int_eq(sd_model_score(net, g, x, N, t, s_net), SD_OK);
    ck_assert_int_eq(sd_gmm_score(truth, sde, t, x, s_true, N), SD_OK);
    sd_graph_free(g);
    double err = 0.0, norm = 0.0, per_point = 0.0;
    for (int i = 0; i < N; i++) {
        double dx = s_net[2 * i] - s_true[2 * i], dy = s_net[2 * i + 1] - s_true[2 * i + 1];
        double n = hypot(s_true[2 * i], s_true[2 * i + 1]);
        err += hypot(dx, dy);
        norm += n;
        per_point += hypot(dx, dy) / fmax(n, 1e-6);
    }
    fprintf(stderr, "  t=%.3f sigma=%.3f: field error %.4f, mean per-point error %.4f\n", t, sig,
            err / norm, per_point / N);
    return err / norm;
}

static void train(sd_model *m, const float *data, sd_train_config *cfg, int steps)
{
    sd_trainer *tr;
    ck_assert_int_eq(sd_trainer_new(m, cfg, &tr), SD_OK);
    sd_rng order;
    sd_rng_init(&order, cfg->seed, SD_STREAM_DATA);
    static float batch[2 * BATCH];
    for (int s = 0; s < steps; s++) {
        for (int i = 0; i < BATCH; i++) {
            uint64_t j = sd_rng_below(&order, N_DATA);
            batch[2 * i] = data[2 * j];
            batch[2 * i + 1] = data[2 * j + 1];
        }
        ck_assert_msg(sd_trainer_step(tr, batch, BATCH) == SD_OK, "%s", sd_error_message());
    }
    /* evaluate the EMA weights, as sampling would */
    memcpy(m->params->data, tr->ema, m->params->total * sizeof(float));
    sd_trainer_free(tr);
}

/* ~5x slower under ASan: train briefly, check the loss machinery only */
#define SANITIZED SD_TEST_ASAN

START_TEST(test_dsm_learns_mixture_score)
{
    sd_gmm *truth = ring();
    sd_sde sde;
    /* The NCSN ladder of 10 levels from sigma_max = 5 (about the largest
     * pairwise distance, 4.5, as NCSNv2 suggests) down to 0.01. */
    ck_assert_int_eq(sd_sde_parse("ncsn:sigma_min=0.01,sigma_max=5,L=10", &sde), SD_OK);
    static float data[2 * N_DATA];
    sd_rng r;
    sd_rng_init(&r, 1, SD_STREAM_DATA);
    sd_gmm_sample(truth, &r, data, NULL, N_DATA);
    sd_model *m;
    ck_assert_int_eq(sd_model_new_network("mlp", NULL, 2, 1, 1, &sde, &m), SD_OK);
    sd_model_init(m, 1);
    /* Middle levels of the ladder: 4 and 5 (sigma 0.32 and 0.16), between the
     * component width (0.25) and the spacing of the ring (1.5). */
    double before = score_rel_error(m, truth, &sde, sd_sde_level_time(&sde, 4), data);
    int steps = SANITIZED ? 1500 : 12000;
    sd_train_config cfg = sd_train_config_default(&sde, steps, 1);
    cfg.lr = 3e-3f;
    cfg.warmup = SANITIZED ? 100 : 200;
    cfg.cosine = true;
    cfg.ema_decay = SANITIZED ? 0.9f : 0.999f;
    train(m, data, &cfg, steps);
    ck_assert(before > 0.5); /* untrained: ~1 */
    for (int level = 4; level <= 5; level++) {
        double err = score_rel_error(m, truth, &sde, sd_sde_level_time(&sde, level), data);
        /* The threshold: 0.1. Under sanitizers, 1500 steps: the error
         * must at least have fallen well below the untrained ~1 (measured
         * 0.52 / 0.62 in release with these settings). */
        double limit = SANITIZED ? 0.8 * before : 0.1;
        ck_assert_msg(err < limit, "level %d: relative score error %g >= %g", level, err, limit);
    }
    sd_model_free(m);
    sd_gmm_free(truth);
}
END_TEST

/* Data-parallel step (trainer.h): with T threads the step's loss and
 * gradient are sum_k (B_k / B) loss_k and the sum of the shards' gradients,
 * shard k = rows [B k / T, B (k+1) / T) with streams split(step stream, k).
 * Recomputed here serially from that formula; the shards run the same
 * single-threaded kernels in both, so agreement is to float rounding of the
 * final sums (1e-6 relative). Also run for an uneven split (B = 11). */
START_TEST(test_sharded_step_matches_formula)
{
    const int T = 2;
    for (int B = 10; B <= 11; B++) {
        sd_sde sde;
        ck_assert_int_eq(sd_sde_parse("ve:sigma_min=0.01,sigma_max=5", &sde), SD_OK);
        sd_model *m, *ref;
        ck_assert_int_eq(sd_model_new_network("mlp", NULL, 2, 1, 1, &sde, &m), SD_OK);
        ck_assert_int_eq(sd_model_new_network("mlp", NULL, 2, 1, 1, &sde, &ref), SD_OK);
        sd_model_init(m, 3);
        sd_model_init(ref, 3);
        float x0[22];
        for (int i = 0; i < 2 * B; i++) x0[i] = (float)sin(1.7 * i) * 2.0f;
        sd_train_config cfg = sd_train_config_default(&sde, 10, 5);
        cfg.clip = 0.0f; /* p->grad keeps the raw gradient */
        sd_trainer *tr;
        ck_assert_int_eq(sd_trainer_new(m, &cfg, &tr), SD_OK);
        sd_threads_init(T);
        ck_assert_int_eq(sd_trainer_step(tr, x0, B), SD_OK);
        sd_threads_init(1);
        ck_assert_int_eq(tr->n_shards, T);

        sd_params *rp = ref->params;
        size_t n = rp->total;
        double *want = calloc(n, sizeof *want);
        ck_assert_ptr_nonnull(want);
        sd_rng tbase, nbase, trng, nrng;
        sd_rng_init(&tbase, 5, SD_STREAM_TIME);
        sd_rng_init(&nbase, 5, SD_STREAM_NOISE);
        sd_rng_split(&tbase, 0, &trng);
        sd_rng_split(&nbase, 0, &nrng);
        double loss = 0.0;
        sd_graph *g = sd_graph_new();
        for (int k = 0; k < T; k++) {
            int i0 = B * k / T, i1 = B * (k + 1) / T;
            sd_rng tk, nk;
            sd_rng_split(&trng, (uint64_t)k, &tk);
            sd_rng_split(&nrng, (uint64_t)k, &nk);
            sd_graph_reset(g);
            sd_params_zero_grad(rp);
            sd_tensor *l = sd_objective_loss(&cfg.objective, ref, g, x0 + 2 * i0, i1 - i0, &tk, &nk,
                                             NULL);
            ck_assert_ptr_nonnull(l);
            float w = (float)(i1 - i0) / (float)B;
            loss += (double)w * l->data[0];
            ck_assert_int_eq(sd_graph_backward(g, l, &w), SD_OK);
            for (size_t i = 0; i < n; i++) want[i] += rp->grad[i];
        }
        double worst = 0.0, gmax = 0.0;
        for (size_t i = 0; i < n; i++) {
            worst = fmax(worst, fabs(m->params->grad[i] - want[i]));
            gmax = fmax(gmax, fabs(want[i]));
        }
        ck_assert_msg(gmax > 0.0, "zero gradient");
        ck_assert_msg(worst <= 1e-6 * gmax, "B=%d: gradient differs by %g (max %g)", B, worst, gmax);
        ck_assert_msg(fabs(tr->last_loss - loss) <= 1e-6 * fabs(loss), "B=%d: loss %g, formula %g", B,
                      (double)tr->last_loss, loss);
        free(want);
        sd_graph_free(g);
        sd_trainer_free(tr);
        sd_model_free(m);
        sd_model_free(ref);
    }
}
END_TEST

int main(void)
{
    /* One thread: the mlp's ops are too small for a second one to pay, and the
     * numbers are then independent of the machine's core count. */
    sd_threads_init(1);
    Suite *su = suite_create("train_toy");
    TCase *tc = tcase_create("train");
    tcase_set_timeout(tc, 600);
    tcase_add_test(tc, test_dsm_learns_mixture_score);
    tcase_add_test(tc, test_sharded_step_matches_formula);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    if (SANITIZED) /* the reduced part, said rather than passed silently */
        printf("SKIPPED PART: sanitizer build: test_dsm_learns_mixture_score trained 1500 steps "
               "and checked a relative score error below 0.8x the untrained one instead of 0.1 "
               "(the release build checks 0.1)\n");
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

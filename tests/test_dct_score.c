/* test_dct_score.c - the U-Net's score under the dct family
 * (models/score_model.c, dct_tweedie_score): s = A (u + x/sigma^2) - x/sigma^2
 * with u the network's sigma-scaled output. Checked: the formula against
 * the family's own A(t) operator, the input gradient against finite
 * differences, that damped frequencies get the exact Gaussian score whatever
 * the weights, and the checkpoint marker that refuses older dct checkpoints. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sd/checkpoint.h"
#include "gradcheck.h"
#include "sd/score_model.h"
#include "sd/ops.h"
#include "sd/rng.h"

#define D 64 /* 1 x 8 x 8 */
#define N 2

static const sd_unet_config TINY = {.channels = 1, .resolution = 8, .ch = 8, .n_levels = 2,
                                    .mult = {1, 2}, .num_res_blocks = 1, .groups = 2};

static sd_model *dct_model(uint64_t seed)
{
    sd_sde sde;
    ck_assert_int_eq(sd_sde_parse("dct:sigma_min=0.01,sigma_max=5,blur_max=2", &sde), SD_OK);
    sd_model *m = NULL;
    sd_status st = sd_model_new_network("unet", &TINY, 1, 8, 8, &sde, &m);
    ck_assert_msg(st == SD_OK, "%s", sd_error_message());
    sd_model_init(m, seed);
    return m;
}

static void random_x(float *x, uint64_t seed)
{
    sd_rng r;
    sd_rng_init(&r, seed, SD_STREAM_NOISE);
    sd_rng_fill_normal(&r, x, (size_t)N * D, 0.0f, 1.0f);
}

/* s = model score of x [N, D] at times t. */
static void model_score(sd_model *m, sd_graph *g, float *x, const double *t, float *s)
{
    sd_graph_reset(g);
    sd_tensor *xt = sd_tensor_wrap(g, 4, (int[]){N, 1, 8, 8}, x, NULL);
    sd_tensor *out = sd_model_forward(m, g, xt, t);
    ck_assert_msg(out != NULL, "%s", sd_error_message());
    memcpy(s, out->data, sizeof(float) * N * D);
}

START_TEST(test_formula)
{
    sd_model *m = dct_model(7);
    sd_graph *g = sd_graph_new();
    float x[N * D], s[N * D], u[N * D];
    random_x(x, 3);
    const double t[N] = {0.2, 0.9};
    model_score(m, g, x, t, s);

    /* u: the bare network, as the VE parameterisation would return it. */
    float cond[N], sigma[N];
    for (int i = 0; i < N; i++) {
        cond[i] = (float)sd_sde_cond(&m->sde, t[i]);
        sigma[i] = (float)sd_sde_sigma(&m->sde, t[i]);
    }
    sd_graph_reset(g);
    sd_tensor *xt = sd_tensor_wrap(g, 4, (int[]){N, 1, 8, 8}, x, NULL);
    sd_tensor *ut = sd_unet_forward(&m->unet, m->params, g, xt, cond, sigma);
    ck_assert_ptr_nonnull(ut);
    memcpy(u, ut->data, sizeof u);

    for (int i = 0; i < N; i++) {
        double iv = 1.0 / ((double)sigma[i] * sigma[i]);
        float v[D], Av[D];
        double scale = 0.0;
        for (int k = 0; k < D; k++) {
            v[k] = (float)(u[i * D + k] + x[i * D + k] * iv);
            if (fabs(x[i * D + k] * iv) > scale) scale = fabs(x[i * D + k] * iv);
        }
        ck_assert_int_eq(sd_sde_apply_mean(&m->sde, t[i], v, Av, 1, D), SD_OK);
        /* Float DCTs of values up to |x|/sigma^2: relative rounding ~1e-7
         * per pass, a few passes, so 1e-5 of that scale. */
        for (int k = 0; k < D; k++) {
            double ref = Av[k] - x[i * D + k] * iv;
            ck_assert_msg(fabs(s[i * D + k] - ref) <= 1e-5 * scale,
                          "sample %d mode %d: %g vs %g (scale %g)", i, k, (double)s[i * D + k],
                          ref, scale);
        }
    }
    sd_graph_free(g);
    sd_model_free(m);
}
END_TEST

/* Two different networks agree where the heat equation has damped the
 * frequency away (a_k ~ 4e-6 at the top mode of an 8x8 plane at t = 0.9,
 * blur_max 2): there both give -x_k / sigma^2. At the DC mode (a = 1) they
 * differ by whatever their outputs differ by. */
START_TEST(test_damped_modes_exact)
{
    sd_model *m1 = dct_model(7), *m2 = dct_model(8);
    sd_graph *g = sd_graph_new();
    float x[N * D], s1[N * D], s2[N * D], c1[N * D], c2[N * D], cx[N * D];
    random_x(x, 5);
    const double t[N] = {0.9, 0.9};
    model_score(m1, g, x, t, s1);
    model_score(m2, g, x, t, s2);
    ck_assert_int_eq(sd_sde_to_modes(&m1->sde, s1, c1, N, D), SD_OK);
    ck_assert_int_eq(sd_sde_to_modes(&m1->sde, s2, c2, N, D), SD_OK);
    ck_assert_int_eq(sd_sde_to_modes(&m1->sde, x, cx, N, D), SD_OK);
    double a[D];
    ck_assert_int_eq(sd_sde_modes(&m1->sde, 0.9, D, a, NULL, NULL, NULL), SD_OK);
    int top = 0;
    for (int k = 1; k < D; k++)
        if (a[k] < a[top]) top = k;
    ck_assert_msg(a[top] < 1e-5 && a[0] > 0.999, "a_top %g a_0 %g", a[top], a[0]);
    double sig = sd_sde_sigma(&m1->sde, 0.9), iv = 1.0 / (sig * sig);
    for (int i = 0; i < N; i++) {
        double exact = -cx[i * D + top] * iv;
        /* What is left of the networks there is a_top times their outputs
         * (|u| < 10 / sigma here), plus float rounding of x/sigma^2. */
        double tol = a[top] * 10.0 / sig + 1e-5 * fabs(cx[i * D + top]) * iv + 1e-6;
        ck_assert_msg(fabs(c1[i * D + top] - exact) <= tol && fabs(c2[i * D + top] - exact) <= tol,
                      "sample %d top mode: %g, %g vs exact %g (tol %g)", i, c1[i * D + top],
                      c2[i * D + top], exact, tol);
        ck_assert_msg(fabs(c1[i * D] - c2[i * D]) > 100.0 * tol,
                      "sample %d DC mode: the two networks agree (%g, %g): not a test", i,
                      c1[i * D], c2[i * D]);
    }
    sd_graph_free(g);
    sd_model_free(m1);
    sd_model_free(m2);
}
END_TEST

typedef struct score_ctx {
    sd_model *m;
    const double *t;
} score_ctx;

static sd_tensor *build_score(sd_graph *g, sd_tensor **in, void *ctx)
{
    score_ctx *c = ctx;
    return sd_model_forward(c->m, g, in[0], c->t);
}

/* The likelihood's divergence and the samplers' VJPs differentiate the
 * score with respect to x: through the network and through A and x/sigma^2.
 * Times where sigma ~ 0.4 and 2 keep x/sigma^2 of order 1-6, so that float
 * central differences with eps 1e-2 resolve the gradient (gradcheck.h). */
START_TEST(test_input_gradient)
{
    sd_model *m = dct_model(11);
    const double t[N] = {0.6, 0.85};
    score_ctx ctx = {m, t};
    gc_input in = {.ndim = 4, .shape = {N, 1, 8, 8}, .lo = -1.0f, .hi = 1.0f};
    gc_options opt = {.max_probe = 24};
    gc_result res = gc_check(build_score, &ctx, 1, &in, &opt);
    GC_ASSERT(res);
    sd_model_free(m);
}
END_TEST

/* A dct checkpoint records score_param=dct-tweedie; one without it (written
 * before this parameterisation) is refused with a message saying so. */
START_TEST(test_checkpoint_marker)
{
    sd_model *m = dct_model(7);
    char path[] = "/tmp/sd_dct_ckpt_XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    close(fd);
    ck_assert_msg(sd_checkpoint_save(path, m, NULL, NULL) == SD_OK, "%s", sd_error_message());
    sd_model *back = NULL;
    ck_assert_msg(sd_checkpoint_load_model(path, false, &back, NULL) == SD_OK, "%s",
                  sd_error_message());
    sd_model_free(back);

    /* Rename the key in place (same length, so the header stays valid). */
    FILE *f = fopen(path, "r+b");
    ck_assert_ptr_nonnull(f);
    static char buf[1 << 20];
    size_t n = fread(buf, 1, sizeof buf, f);
    ck_assert_uint_gt(n, 8);
    char *key = NULL;
    for (size_t i = 0; i + 13 <= n && !key; i++)
        if (memcmp(buf + i, "\"score_param\"", 13) == 0) key = buf + i;
    ck_assert_ptr_nonnull(key);
    key[11] = 'X';
    ck_assert_int_eq(fseek(f, 0, SEEK_SET), 0);
    ck_assert_uint_eq(fwrite(buf, 1, n, f), n);
    fclose(f);
    back = NULL;
    sd_status st = sd_checkpoint_load_model(path, false, &back, NULL);
    ck_assert_int_eq(st, SD_ERR_FORMAT);
    ck_assert_ptr_null(back);
    ck_assert_msg(strstr(sd_error_message(), "dct-tweedie") != NULL, "%s", sd_error_message());
    unlink(path);
    sd_model_free(m);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("dct_score");
    TCase *tc = tcase_create("core");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_formula);
    tcase_add_test(tc, test_damped_modes_exact);
    tcase_add_test(tc, test_input_gradient);
    tcase_add_test(tc, test_checkpoint_marker);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

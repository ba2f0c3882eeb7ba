/* test_unary.c - pointwise activations and maths functions, and dropout
 * (ops_unary.c): values against double references (including extreme inputs
 * for the overflow-safe forms), finite-difference gradient checks, dropout's
 * statistics, mask reuse in backward, determinism and error paths. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "sd/ops.h"
#include "sd/rng.h"
#include "test_util.h"

/* Per-element assertion that only talks to Check on failure (every
 * ck_assert call costs a pipe write, far too slow inside element loops). */
#define LEAKY_SLOPE 0.1f
#define ELU_ALPHA 1.3f

static sd_tensor *op_leaky(sd_graph *g, sd_tensor *a) { return sd_leaky_relu(g, a, LEAKY_SLOPE); }
static sd_tensor *op_elu(sd_graph *g, sd_tensor *a) { return sd_elu(g, a, ELU_ALPHA); }

static double r_relu(double x) { return x > 0 ? x : 0; }
static double r_leaky(double x) { return x > 0 ? x : LEAKY_SLOPE * x; }
static double r_elu(double x) { return x > 0 ? x : ELU_ALPHA * (exp(x) - 1.0); }
static double r_gelu(double x) { return x * 0.5 * (1.0 + erf(x / sqrt(2.0))); }
static double r_sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }
static double r_silu(double x) { return x * r_sigmoid(x); }
static double r_softplus(double x) { return log1p(exp(x)); }
static double r_square(double x) { return x * x; }

typedef struct unary_case {
    const char *name;
    sd_tensor *(*fn)(sd_graph *, sd_tensor *);
    double (*ref)(double);
    float lo, hi;    /* input range for values and gradients */
    float min_abs;   /* keep gradient-check inputs off the kink at 0 */
    bool extremes;   /* also evaluate at +-20, +-30, +-100 (must stay finite) */
} unary_case;

static const unary_case cases[] = {
    {"relu", sd_relu, r_relu, -4, 4, 0.05f, true},
    {"leaky_relu", op_leaky, r_leaky, -4, 4, 0.05f, true},
    {"elu", op_elu, r_elu, -4, 4, 0.05f, true},
    {"gelu", sd_gelu, r_gelu, -4, 4, 0, true},
    {"silu", sd_silu, r_silu, -6, 6, 0, true},
    {"tanh", sd_tanh, tanh, -3, 3, 0, true},
    {"sigmoid", sd_sigmoid, r_sigmoid, -6, 6, 0, true},
    {"softplus", sd_softplus, r_softplus, -6, 6, 0, true},
    {"sin", sd_sin, sin, -4, 4, 0, false},
    {"cos", sd_cos, cos, -4, 4, 0, false},
    {"exp", sd_exp, exp, -3, 3, 0, false},
    {"log", sd_log, log, 0.2f, 4, 0, false},
    {"square", sd_square, r_square, -3, 3, 0, false},
    {"sqrt", sd_sqrt, sqrt, 0.2f, 4, 0, false},
};
#define N_CASES ((int)(sizeof cases / sizeof cases[0]))

static unsigned rng_state = 4242u;
START_TEST(test_values)
{
    const unary_case *uc = &cases[_i];
    static const float extremes[] = {-100, -30, -20.5f, -19.5f, -1e-3f, 0,
                                     1e-3f, 19.5f, 20.5f, 30, 100};
    int n_ext = uc->extremes ? (int)(sizeof extremes / sizeof extremes[0]) : 0;
    int n = 3 * 5 * 7 * 9;
    sd_graph *g = sd_graph_new();
    sd_tensor *x = sd_tensor_new(g, 4, (int[]){3, 5, 7, 9});
    /* Twice the gradient-check range; log and sqrt stay in their domain. */
    float lo = uc->lo > 0 ? 1e-3f : 2 * uc->lo, hi = uc->lo > 0 ? 50.0f : 2 * uc->hi;
    for (int i = 0; i < n; i++) x->data[i] = i < n_ext ? extremes[i] : tu_urand(&rng_state, lo, hi);
    sd_tensor *y = uc->fn(g, x);
    ck_assert_msg(y != NULL, "%s: %s", uc->name, sd_error_message());
    ck_assert_int_eq(y->ndim, 4);
    ck_assert_uint_eq(y->numel, (size_t)n);
    ck_assert_str_eq(y->op, uc->name);
    for (int i = 0; i < n; i++) {
        double want = uc->ref(x->data[i]);
        EXPECT(isfinite(y->data[i]), "%s(%g) = %g", uc->name, (double)x->data[i],
               (double)y->data[i]);
        EXPECT(fabs(y->data[i] - want) <= 2e-6 * fabs(want) + 2e-7, "%s(%g) = %.9g, want %.9g",
               uc->name, (double)x->data[i], (double)y->data[i], want);
    }
    ck_assert_ptr_null(uc->fn(g, NULL));
    sd_graph_free(g);
}
END_TEST

static sd_tensor *build_unary(sd_graph *g, sd_tensor **in, void *ctx)
{
    return ((const unary_case *)ctx)->fn(g, in[0]);
}

START_TEST(test_gradcheck)
{
    const unary_case *uc = &cases[_i];
    gc_input spec = {.ndim = 4, .shape = {3, 5, 7, 9}, .lo = uc->lo, .hi = uc->hi,
                     .min_abs = uc->min_abs};
    /* Every element is probed; the default eps (1e-2) is below min_abs, so
     * no probe crosses a kink. */
    gc_options opt = {.max_probe = 3 * 5 * 7 * 9};
    gc_result res = gc_check(build_unary, (void *)uc, 1, &spec, &opt);
    ck_assert_msg(res.ok, "%s: %s", uc->name, res.message);
}
END_TEST

/* Large input: the threaded loops give the same values as the reference. */
START_TEST(test_large_threaded)
{
    sd_graph *g = sd_graph_new();
    sd_tensor *x = sd_tensor_new(g, 2, (int[]){301, 257});
    for (size_t i = 0; i < x->numel; i++) x->data[i] = tu_urand(&rng_state, -5.0f, 5.0f);
    sd_tensor_requires_grad(x);
    sd_tensor *y = sd_silu(g, x);
    ck_assert_ptr_nonnull(y);
    ck_assert_int_eq(sd_graph_backward(g, y, NULL), SD_OK);
    for (size_t i = 0; i < x->numel; i++) {
        double v = x->data[i], s = r_sigmoid(v);
        EXPECT(fabs(y->data[i] - v * s) <= 1e-5, "silu at %zu", i);
        EXPECT(fabs(x->grad[i] - s * (1 + v * (1 - s))) <= 1e-5, "silu' at %zu", i);
    }
    sd_graph_free(g);
}
END_TEST

/* ---- dropout ---------------------------------------------------------------- */

START_TEST(test_dropout_identity_and_errors)
{
    sd_graph *g = sd_graph_new();
    sd_tensor *x = sd_tensor_new(g, 2, (int[]){7, 9});
    for (size_t i = 0; i < x->numel; i++) x->data[i] = tu_urand(&rng_state, -1.0f, 1.0f);
    sd_rng rng;
    sd_rng_init(&rng, 1, SD_STREAM_DROPOUT);
    ck_assert_ptr_eq(sd_dropout(g, x, 0.5f, &rng, false), x);
    ck_assert_ptr_eq(sd_dropout(g, x, 0.0f, &rng, true), x);
    ck_assert_ptr_eq(sd_dropout(g, x, 0.5f, NULL, false), x); /* no rng needed */
    ck_assert_ptr_null(sd_dropout(g, NULL, 0.5f, &rng, true));
    ck_assert_ptr_null(sd_dropout(g, x, 1.5f, &rng, true));
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "dropout"));
    ck_assert_int_eq(sd_graph_status(g), SD_ERR_INVALID);
    ck_assert_ptr_null(sd_dropout(g, x, -0.1f, &rng, true));
    ck_assert_ptr_null(sd_dropout(g, x, NAN, &rng, true));
    ck_assert_ptr_null(sd_dropout(g, x, 0.5f, NULL, true));
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "dropout"));
    /* p = 1 drops everything. */
    sd_graph_reset(g);
    x = sd_tensor_new(g, 2, (int[]){7, 9});
    for (size_t i = 0; i < x->numel; i++) x->data[i] = 1.0f;
    sd_tensor *y = sd_dropout(g, x, 1.0f, &rng, true);
    ck_assert_ptr_nonnull(y);
    for (size_t i = 0; i < y->numel; i++) ck_assert_float_eq(y->data[i], 0.0f);
    sd_graph_free(g);
}
END_TEST

START_TEST(test_dropout_statistics_and_backward)
{
    const float p = 0.3f;
    const int n = 200003;
    sd_graph *g = sd_graph_new();
    sd_tensor *x = sd_tensor_new(g, 1, (int[]){n});
    for (int i = 0; i < n; i++) x->data[i] = tu_urand(&rng_state, 0.5f, 1.5f); /* never zero */
    sd_tensor_requires_grad(x);
    sd_rng rng, rng2;
    sd_rng_init(&rng, 99, SD_STREAM_DROPOUT);
    rng2 = rng;
    sd_tensor *y = sd_dropout(g, x, p, &rng, true);
    ck_assert_ptr_nonnull(y);
    ck_assert_int_eq(sd_graph_backward(g, y, NULL), SD_OK);
    int dropped = 0;
    for (int i = 0; i < n; i++) {
        bool kept = y->data[i] != 0.0f;
        dropped += !kept;
        /* Replay the documented rule: keep where uniform >= p. */
        bool want = sd_rng_uniform(&rng2) >= p;
        EXPECT(kept == want, "mask differs from the rng rule at %d", i);
        if (kept)
            EXPECT(fabs(y->data[i] - x->data[i] / (1.0 - p)) <= 1e-6 * fabs(y->data[i]),
                   "kept value at %d", i);
        /* d y / d x = 1/(1-p) where kept, 0 where dropped. */
        EXPECT(fabs(x->grad[i] - (kept ? 1.0 / (1.0 - p) : 0.0)) <= 1e-6, "grad at %d", i);
    }
    /* Binomial(n, 0.3): sd = sqrt(n p (1-p)) ~ 205; allow 6 sd. */
    ck_assert_int_lt(abs(dropped - (int)(n * p)), 1230);
    /* The generator advanced: a second call draws a different mask. */
    sd_tensor *y2 = sd_dropout(g, x, p, &rng, true);
    ck_assert_ptr_nonnull(y2);
    ck_assert(memcmp(y->data, y2->data, (size_t)n * sizeof(float)) != 0);
    sd_graph_free(g);
}
END_TEST

typedef struct dropout_ctx {
    uint64_t seed;
    float p;
} dropout_ctx;

/* The same seed on every build, so every perturbed forward uses one mask. */
static sd_tensor *build_dropout(sd_graph *g, sd_tensor **in, void *ctx)
{
    const dropout_ctx *dc = ctx;
    sd_rng rng;
    sd_rng_init(&rng, dc->seed, SD_STREAM_DROPOUT);
    return sd_dropout(g, in[0], dc->p, &rng, true);
}

START_TEST(test_dropout_gradcheck)
{
    dropout_ctx dc = {7, 0.4f};
    gc_input spec = {.ndim = 4, .shape = {3, 5, 7, 9}, .lo = -2.0f, .hi = 2.0f};
    gc_options opt = {.max_probe = 128};
    gc_result res = gc_check(build_dropout, &dc, 1, &spec, &opt);
    GC_ASSERT(res);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("unary");
    TCase *tc = tcase_create("unary");
    tcase_set_timeout(tc, 120);
    tcase_add_loop_test(tc, test_values, 0, N_CASES);
    tcase_add_loop_test(tc, test_gradcheck, 0, N_CASES);
    tcase_add_test(tc, test_large_threaded);
    tcase_add_test(tc, test_dropout_identity_and_errors);
    tcase_add_test(tc, test_dropout_statistics_and_backward);
    tcase_add_test(tc, test_dropout_gradcheck);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

/* test_reduce.c - sum, mean, sum_axis, mean_axis, sq_norm and mse
 * (ops_reduce.c): values against double references, shapes of axis
 * reductions, finite-difference gradient checks, thread-count determinism and
 * error paths. */
#include <check.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "sd/ops.h"
#include "test_util.h"

/* Per-element assertion that only talks to Check on failure (every
 * ck_assert call costs a pipe write, far too slow inside element loops). */
static unsigned rng_state = 2024u;
static sd_tensor *rand_tensor(sd_graph *g, int nd, const int *shape, float lo, float hi)
{
    sd_tensor *t = sd_tensor_new(g, nd, shape);
    ck_assert_ptr_nonnull(t);
    for (size_t i = 0; i < t->numel; i++) t->data[i] = tu_urand(&rng_state, lo, hi);
    return t;
}

static void expect_close(const char *what, double got, double want, double rtol)
{
    EXPECT(fabs(got - want) <= rtol * (1.0 + fabs(want)), "%s = %.9g, want %.9g", what, got, want);
}

/* ---- full reductions ------------------------------------------------------ */

static void check_full(int nd, const int *shape)
{
    sd_graph *g = sd_graph_new();
    sd_tensor *a = rand_tensor(g, nd, shape, -1.0f, 2.0f);
    sd_tensor *b = rand_tensor(g, nd, shape, -2.0f, 1.0f);
    size_t n = a->numel;
    double s = 0, sq = 0, d2 = 0;
    for (size_t i = 0; i < n; i++) {
        s += a->data[i];
        sq += (double)a->data[i] * a->data[i];
        double d = (double)a->data[i] - b->data[i];
        d2 += d * d;
    }
    sd_tensor *r[4] = {sd_sum(g, a), sd_mean(g, a), sd_sq_norm(g, a), sd_mse(g, a, b)};
    double want[4] = {s, s / (double)n, sq, d2 / (double)n};
    const char *names[4] = {"sum", "mean", "sq_norm", "mse"};
    for (int k = 0; k < 4; k++) {
        ck_assert_msg(r[k] != NULL, "%s: %s", names[k], sd_error_message());
        ck_assert_int_eq(r[k]->ndim, 1);
        ck_assert_int_eq(r[k]->shape[0], 1);
        ck_assert_str_eq(r[k]->op, names[k]);
        /* Double accumulation: only the final rounding to float remains. */
        expect_close(names[k], r[k]->data[0], want[k], 2e-7);
    }
    sd_graph_free(g);
}

START_TEST(test_full_values)
{
    check_full(4, (int[]){3, 5, 7, 9});
    check_full(1, (int[]){1});
    check_full(2, (int[]){301, 1009}); /* many blocks, threaded */
}
END_TEST

/* The same bits for 1 and 2 threads, forward and backward. */
START_TEST(test_full_thread_determinism)
{
    int saved = omp_get_max_threads();
    float vals[2][4], grads[2][3];
    for (int t = 0; t < 2; t++) {
        omp_set_num_threads(t + 1);
        rng_state = 99u;
        sd_graph *g = sd_graph_new();
        sd_tensor *a = rand_tensor(g, 1, (int[]){250001}, -1.0f, 1.0f);
        sd_tensor *b = rand_tensor(g, 1, (int[]){250001}, -1.0f, 1.0f);
        sd_tensor_requires_grad(a);
        sd_tensor *r[4] = {sd_sum(g, a), sd_mean(g, a), sd_sq_norm(g, a), sd_mse(g, a, b)};
        for (int k = 0; k < 4; k++) vals[t][k] = r[k]->data[0];
        ck_assert_int_eq(sd_graph_backward(g, r[3], NULL), SD_OK);
        grads[t][0] = a->grad[0];
        grads[t][1] = a->grad[123456];
        grads[t][2] = a->grad[250000];
        sd_graph_free(g);
    }
    omp_set_num_threads(saved);
    ck_assert(memcmp(vals[0], vals[1], sizeof vals[0]) == 0);
    ck_assert(memcmp(grads[0], grads[1], sizeof grads[0]) == 0);
}
END_TEST

typedef sd_tensor *(*full1_fn)(sd_graph *, sd_tensor *);
static const full1_fn full1[3] = {sd_sum, sd_mean, sd_sq_norm};

static sd_tensor *build_full1(sd_graph *g, sd_tensor **in, void *ctx)
{
    return full1[*(int *)ctx](g, in[0]);
}

static sd_tensor *build_mse(sd_graph *g, sd_tensor **in, void *ctx)
{
    (void)ctx;
    return sd_mse(g, in[0], in[1]);
}

START_TEST(test_full_gradcheck)
{
    gc_input spec[2] = {{.ndim = 4, .shape = {3, 5, 7, 9}, .lo = -2.0f, .hi = 2.0f},
                        {.ndim = 4, .shape = {3, 5, 7, 9}, .lo = -2.0f, .hi = 2.0f}};
    for (int k = 0; k < 3; k++) {
        gc_result res = gc_check(build_full1, &k, 1, spec, NULL);
        ck_assert_msg(res.ok, "op %d: %s", k, res.message);
    }
    gc_result res = gc_check(build_mse, NULL, 2, spec, NULL);
    GC_ASSERT(res);
}
END_TEST

/* ---- axis reductions ------------------------------------------------------ */

/* Reference: out[o, j] = c * sum_k a[o, k, j] over the [outer, len, inner]
 * view, and the shape rule. */
static void check_axis(sd_graph *g, int nd, const int *shape, int axis, bool keepdim, bool mean)
{
    sd_graph_reset(g);
    sd_tensor *a = rand_tensor(g, nd, shape, -1.0f, 1.0f);
    sd_tensor *y = mean ? sd_mean_axis(g, a, axis, keepdim) : sd_sum_axis(g, a, axis, keepdim);
    ck_assert_msg(y != NULL, "axis %d: %s", axis, sd_error_message());
    int ax = axis < 0 ? axis + nd : axis;
    int want_nd = keepdim ? nd : (nd > 1 ? nd - 1 : 1);
    ck_assert_int_eq(y->ndim, want_nd);
    for (int d = 0, e = 0; d < nd; d++) {
        if (d == ax && !keepdim) continue;
        ck_assert_int_eq(y->shape[e++], d == ax ? 1 : shape[d]);
    }
    if (nd == 1 && !keepdim) ck_assert_int_eq(y->shape[0], 1);
    size_t outer = 1, inner = 1, len = (size_t)shape[ax];
    for (int d = 0; d < ax; d++) outer *= (size_t)shape[d];
    for (int d = ax + 1; d < nd; d++) inner *= (size_t)shape[d];
    ck_assert_uint_eq(y->numel, outer * inner);
    for (size_t o = 0; o < outer; o++)
        for (size_t j = 0; j < inner; j++) {
            double s = 0;
            for (size_t k = 0; k < len; k++) s += a->data[(o * len + k) * inner + j];
            if (mean) s /= (double)len;
            expect_close(mean ? "mean_axis" : "sum_axis", y->data[o * inner + j], s, 2e-7);
        }
}

START_TEST(test_axis_values_and_shapes)
{
    sd_graph *g = sd_graph_new();
    const int s4[4] = {3, 5, 7, 9};
    for (int mean = 0; mean < 2; mean++)
        for (int keep = 0; keep < 2; keep++) {
            for (int ax = -4; ax < 4; ax++) check_axis(g, 4, s4, ax, keep, mean);
            check_axis(g, 1, (int[]){11}, 0, keep, mean);
            check_axis(g, 2, (int[]){5, 1}, 1, keep, mean);
            /* Threaded, with more than one 64-column task per row. */
            check_axis(g, 3, (int[]){7, 37, 211}, 1, keep, mean);
            check_axis(g, 2, (int[]){400, 301}, 0, keep, mean);
            check_axis(g, 2, (int[]){301, 400}, 1, keep, mean);
        }
    sd_graph_free(g);
}
END_TEST

typedef struct axis_ctx {
    int axis;
    bool keepdim, mean;
} axis_ctx;

static sd_tensor *build_axis(sd_graph *g, sd_tensor **in, void *ctx)
{
    const axis_ctx *c = ctx;
    return c->mean ? sd_mean_axis(g, in[0], c->axis, c->keepdim)
                   : sd_sum_axis(g, in[0], c->axis, c->keepdim);
}

START_TEST(test_axis_gradcheck)
{
    gc_input spec = {.ndim = 4, .shape = {3, 5, 7, 9}, .lo = -2.0f, .hi = 2.0f};
    for (int mean = 0; mean < 2; mean++)
        for (int ax = 0; ax < 4; ax++) {
            axis_ctx c = {ax, ax % 2 == 0, mean};
            gc_result res = gc_check(build_axis, &c, 1, &spec, NULL);
            ck_assert_msg(res.ok, "%s axis %d: %s", mean ? "mean" : "sum", ax, res.message);
        }
    gc_input spec1 = {.ndim = 1, .shape = {13}, .lo = -2.0f, .hi = 2.0f};
    axis_ctx c = {0, false, true};
    gc_result res = gc_check(build_axis, &c, 1, &spec1, NULL);
    GC_ASSERT(res);
}
END_TEST

/* ---- errors ----------------------------------------------------------------- */

START_TEST(test_errors)
{
    sd_graph *g = sd_graph_new();
    sd_tensor *a = sd_tensor_zeros(g, 2, (int[]){2, 3});
    sd_tensor *b = sd_tensor_zeros(g, 2, (int[]){3, 2});
    ck_assert_ptr_null(sd_sum_axis(g, a, 2, false));
    ck_assert_int_eq(sd_graph_status(g), SD_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "sum_axis"));
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "[2, 3]"));
    ck_assert_ptr_null(sd_mean_axis(g, a, -3, true));
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "mean_axis"));
    ck_assert_ptr_null(sd_mse(g, a, b));
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "mse"));
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "[3, 2]"));
    ck_assert_ptr_null(sd_sum(g, NULL));
    ck_assert_ptr_null(sd_mean(g, NULL));
    ck_assert_ptr_null(sd_sq_norm(g, NULL));
    ck_assert_ptr_null(sd_mse(g, NULL, b));
    ck_assert_ptr_null(sd_mse(g, a, NULL));
    ck_assert_ptr_null(sd_sum_axis(g, NULL, 0, false));
    ck_assert_ptr_null(sd_mean_axis(g, NULL, 0, true));
    sd_graph_free(g);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("reduce");
    TCase *tc = tcase_create("reduce");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_full_values);
    tcase_add_test(tc, test_full_thread_determinism);
    tcase_add_test(tc, test_full_gradcheck);
    tcase_add_test(tc, test_axis_values_and_shapes);
    tcase_add_test(tc, test_axis_gradcheck);
    tcase_add_test(tc, test_errors);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

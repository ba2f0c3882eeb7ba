/* test_params.c - named parameters in one flat buffer (lib/core/params.c).
 *
 * Every promise of sd/params.h: declaration order and contiguous offsets,
 * zeroed data after finalize, lookups by name, buffers that live in the flat
 * array but never get a gradient, parameter tensors that borrow their slice
 * (values and gradients), gradients that accumulate until zero_grad, the
 * trainable count, the three initialisers (each touches its own slice only;
 * the random ones checked by moments with tolerances from the sample size),
 * and every refusal: duplicate and over-long names, bad shapes, a total
 * that overflows, declaring after finalize, and tensors of unknown indices
 * or unfinalized sets. A refusal returns -1 (or NULL) with a message naming
 * the parameter and leaves the set as it was.
 */
#include <check.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sd/ops.h"
#include "sd/params.h"
#include "sd/rng.h"

#define ASSERT_MSG_HAS(s)                                                                  \
    ck_assert_msg(strstr(sd_error_message(), (s)) != NULL, "message '%s' lacks '%s'",     \
                  sd_error_message(), (s))

START_TEST(test_layout_and_lookup)
{
    sd_params *p = sd_params_new();
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(sd_params_add(p, "fc.weight", 2, (int[]){3, 4}), 0);
    ck_assert_int_eq(sd_params_add_buffer(p, "fourier.w", 1, (int[]){5}), 1);
    ck_assert_int_eq(sd_params_add(p, "conv.weight", 4, (int[]){2, 3, 3, 3}), 2);
    ck_assert_int_eq(sd_params_add(p, "fc.bias", 1, (int[]){3}), 3);
    ck_assert_uint_eq(p->count, 4);
    /* Declaration order, contiguous, shapes and sizes as declared. */
    const size_t numel[] = {12, 5, 54, 3};
    size_t off = 0;
    for (int i = 0; i < 4; i++) {
        ck_assert_uint_eq(p->items[i].numel, numel[i]);
        ck_assert_uint_eq(p->items[i].offset, off);
        off += numel[i];
    }
    ck_assert_uint_eq(p->total, off);
    ck_assert_int_eq(p->items[2].ndim, 4);
    ck_assert_int_eq(p->items[2].shape[0], 2);
    ck_assert_int_eq(p->items[2].shape[3], 3);
    ck_assert(p->items[0].trainable && !p->items[1].trainable && p->items[3].trainable);
    ck_assert_str_eq(p->items[1].name, "fourier.w");
    ck_assert_uint_eq(sd_params_trainable_count(p), 12 + 54 + 3);

    ck_assert_int_eq(sd_params_find(p, "conv.weight"), 2);
    ck_assert_int_eq(sd_params_find(p, "fourier.w"), 1);
    ck_assert_int_eq(sd_params_find(p, "fc"), -1);
    ck_assert_int_eq(sd_params_find(p, "fc.weight.x"), -1);

    /* finalize: data zeroed, gradient buffer present, accessors on slices. */
    ck_assert(!p->finalized);
    ck_assert_int_eq(sd_params_finalize(p), SD_OK);
    ck_assert(p->finalized);
    ck_assert_ptr_nonnull(p->data);
    ck_assert_ptr_nonnull(p->grad);
    for (size_t i = 0; i < p->total; i++) ck_assert(p->data[i] == 0.0f);
    for (int i = 0; i < 4; i++) {
        ck_assert_ptr_eq(sd_params_data(p, i), p->data + p->items[i].offset);
        ck_assert_ptr_eq(sd_params_grad(p, i), p->grad + p->items[i].offset);
    }
    /* A second finalize keeps the values (it is a no-op). */
    p->data[7] = 3.0f;
    float *data = p->data;
    ck_assert_int_eq(sd_params_finalize(p), SD_OK);
    ck_assert_ptr_eq(p->data, data);
    ck_assert(p->data[7] == 3.0f);
    sd_params_free(p);
    sd_params_free(NULL); /* a no-op */
}
END_TEST

/* More parameters than the first allocation of the table (64). */
START_TEST(test_many_parameters)
{
    sd_params *p = sd_params_new();
    char name[32];
    for (int i = 0; i < 300; i++) {
        snprintf(name, sizeof name, "layer.%d.weight", i);
        ck_assert_int_eq(sd_params_add(p, name, 1, (int[]){i + 1}), i);
    }
    ck_assert_uint_eq(p->total, 300u * 301u / 2u);
    ck_assert_int_eq(sd_params_finalize(p), SD_OK);
    for (int i = 0; i < 300; i++) {
        snprintf(name, sizeof name, "layer.%d.weight", i);
        ck_assert_int_eq(sd_params_find(p, name), i);
        ck_assert_uint_eq(p->items[i].offset, (size_t)i * (size_t)(i + 1) / 2u);
    }
    sd_params_free(p);
}
END_TEST

/* Each refusal: -1, a message naming the parameter, nothing declared. */
static void refused(int idx, const char *what)
{
    ck_assert_int_eq(idx, -1);
    ASSERT_MSG_HAS("params: ");
    ASSERT_MSG_HAS(what);
}

START_TEST(test_refusals)
{
    sd_params *p = sd_params_new();
    ck_assert_int_eq(sd_params_add(p, "w", 2, (int[]){2, 2}), 0);
    size_t count = p->count, total = p->total;

    refused(sd_params_add(p, "w", 1, (int[]){3}), "duplicate name 'w'");
    refused(sd_params_add_buffer(p, "w", 1, (int[]){3}), "duplicate name 'w'");

    /* Names up to SD_PARAM_NAME_MAX - 1 bytes; one more is refused. */
    char name[SD_PARAM_NAME_MAX + 1];
    memset(name, 'n', SD_PARAM_NAME_MAX);
    name[SD_PARAM_NAME_MAX] = '\0';
    refused(sd_params_add(p, name, 1, (int[]){1}), "longer than 95 bytes");
    name[SD_PARAM_NAME_MAX - 1] = '\0';
    ck_assert_int_eq(sd_params_add(p, name, 1, (int[]){1}), 1);
    ck_assert_str_eq(p->items[1].name, name);
    count = p->count, total = p->total;

    /* Bad shapes: no dimensions, too many, zero or negative sizes, and a
     * size that overflows size_t. */
    refused(sd_params_add(p, "a", 0, (int[]){1}), "'a' has 0 dimensions");
    refused(sd_params_add(p, "a", SD_MAX_DIMS + 1, (int[]){1, 1, 1, 1, 1}),
            "'a' has 5 dimensions");
    refused(sd_params_add(p, "a", -1, (int[]){1}), "'a' has -1 dimensions");
    refused(sd_params_add(p, "a", 2, (int[]){3, 0}), "'a' has a bad dimension 0");
    refused(sd_params_add(p, "a", 2, (int[]){-4, 3}), "'a' has a bad dimension -4");
    refused(sd_params_add(p, "a", 4, (int[]){1 << 16, 1 << 16, 1 << 16, 1 << 16}),
            "'a' has a bad dimension");
    refused(sd_params_add_buffer(p, "a", 1, (int[]){0}), "'a' has a bad dimension 0");
    ck_assert_uint_eq(p->count, count);
    ck_assert_uint_eq(p->total, total);
    ck_assert_int_eq(sd_params_find(p, "a"), -1);

    ck_assert_int_eq(sd_params_finalize(p), SD_OK);
    refused(sd_params_add(p, "late", 1, (int[]){1}), "'late' declared after finalize");
    refused(sd_params_add_buffer(p, "late", 1, (int[]){1}), "'late' declared after finalize");
    ck_assert_uint_eq(p->count, count);
    sd_params_free(p);
}
END_TEST

/* Each parameter's size fits size_t but their sum does not: the total (the
 * flat array's length) would wrap around and later parameters would point
 * outside it. Refused at declaration. */
START_TEST(test_total_overflow)
{
    sd_params *p = sd_params_new();
    int huge[4] = {1 << 16, 1 << 16, 1 << 16, 1 << 15}; /* 2^63 floats */
    ck_assert_int_eq(sd_params_add(p, "first", 4, huge), 0);
    refused(sd_params_add(p, "second", 4, huge), "'second'");
    ASSERT_MSG_HAS("overflow");
    ck_assert_uint_eq(p->count, 1);
    ck_assert_uint_eq(p->total, (size_t)1 << 63);
    /* And finalize cannot allocate 2^63 floats: an error, not a crash. */
    ck_assert_int_eq(sd_params_finalize(p), SD_ERR_NOMEM);
    ck_assert(!p->finalized);
    sd_params_free(p);
}
END_TEST

START_TEST(test_tensors_borrow_slices)
{
    sd_params *p = sd_params_new();
    int w = sd_params_add(p, "w", 2, (int[]){2, 3});
    int buf = sd_params_add_buffer(p, "buf", 2, (int[]){2, 3});
    ck_assert_int_eq(sd_params_finalize(p), SD_OK);
    for (int i = 0; i < 6; i++) {
        sd_params_data(p, w)[i] = (float)(i + 1);
        sd_params_data(p, buf)[i] = (float)(10 * i - 20);
    }
    sd_graph *g = sd_graph_new();
    sd_tensor *tw = sd_params_tensor(g, p, w), *tb = sd_params_tensor(g, p, buf);
    ck_assert_ptr_nonnull(tw);
    ck_assert_ptr_nonnull(tb);
    ck_assert_ptr_eq(tw->data, sd_params_data(p, w));
    ck_assert_ptr_eq(tw->grad, sd_params_grad(p, w));
    ck_assert_ptr_eq(tb->data, sd_params_data(p, buf));
    ck_assert_ptr_null(tb->grad); /* a buffer never gets a gradient */
    ck_assert_str_eq(tw->name, "w");
    ck_assert_str_eq(tb->name, "buf");
    ck_assert_int_eq(tw->ndim, 2);
    ck_assert_int_eq(tw->shape[0], 2);
    ck_assert_int_eq(tw->shape[1], 3);

    /* L = sum(w * buf): dL/dw = buf; the buffer's slice of grad stays 0.
     * Gradients accumulate over backward calls until zero_grad. */
    sd_params_zero_grad(p);
    for (int rep = 1; rep <= 2; rep++) {
        sd_graph_reset(g);
        tw = sd_params_tensor(g, p, w);
        tb = sd_params_tensor(g, p, buf);
        sd_tensor *loss = sd_sum(g, sd_mul(g, tw, tb));
        ck_assert_ptr_nonnull(loss);
        ck_assert(loss->data[0] == 10.0f * (0 + 2 + 6 + 12 + 20 + 30) - 20.0f * 21);
        ck_assert_int_eq(sd_graph_backward(g, loss, NULL), SD_OK);
        for (int i = 0; i < 6; i++) {
            ck_assert(sd_params_grad(p, w)[i] == (float)rep * (float)(10 * i - 20));
            ck_assert(sd_params_grad(p, buf)[i] == 0.0f);
        }
    }
    sd_params_zero_grad(p);
    for (size_t i = 0; i < p->total; i++) ck_assert(p->grad[i] == 0.0f);
    /* The values were only read. */
    for (int i = 0; i < 6; i++) ck_assert(sd_params_data(p, w)[i] == (float)(i + 1));
    sd_graph_free(g);
    sd_params_free(p);
}
END_TEST

START_TEST(test_tensor_refusals)
{
    sd_params *p = sd_params_new();
    int w = sd_params_add(p, "w", 1, (int[]){4});
    sd_graph *g = sd_graph_new();
    /* Not finalized yet: there is no data to wrap. */
    ck_assert_ptr_null(sd_params_tensor(g, p, w));
    ck_assert_int_eq(sd_graph_status(g), SD_ERR_INVALID);
    ASSERT_MSG_HAS("params: no parameter 0 (or not finalized)");
    ck_assert_int_eq(sd_params_finalize(p), SD_OK);
    sd_graph_reset(g);
    ck_assert_ptr_null(sd_params_tensor(g, p, 1));
    ASSERT_MSG_HAS("params: no parameter 1");
    sd_graph_reset(g);
    ck_assert_ptr_null(sd_params_tensor(g, p, -1));
    ASSERT_MSG_HAS("params: no parameter -1");
    sd_graph_reset(g);
    ck_assert_ptr_nonnull(sd_params_tensor(g, p, w));
    ck_assert_int_eq(sd_graph_status(g), SD_OK);
    sd_graph_free(g);
    sd_params_free(p);
}
END_TEST

/* Initialisers fill their own slice only. Moments over n values with
 * tolerances of 5 standard errors: U(-b, b) has mean 0, variance b^2/3;
 * N(0, s^2) has variance s^2, and the sample variance's standard error is
 * about s^2 sqrt(2/n) (for the uniform, sqrt(4/45) b^2 / sqrt(n)). */
START_TEST(test_initialisers)
{
    enum { N = 100000 };
    sd_params *p = sd_params_new();
    int before = sd_params_add(p, "before", 1, (int[]){7});
    int u = sd_params_add(p, "u", 2, (int[]){N / 100, 100});
    int nrm = sd_params_add(p, "n", 1, (int[]){N});
    int c = sd_params_add(p, "c", 1, (int[]){9});
    int after = sd_params_add(p, "after", 1, (int[]){7});
    ck_assert_int_eq(sd_params_finalize(p), SD_OK);
    sd_rng rng;
    sd_rng_init(&rng, 1234, SD_STREAM_INIT);
    const float bound = 0.25f, sd = 2.0f;
    sd_params_init_uniform(p, u, &rng, bound);
    sd_params_init_normal(p, nrm, &rng, sd);
    sd_params_init_const(p, c, -1.5f);

    double s1 = 0, s2 = 0;
    const float *x = sd_params_data(p, u);
    for (int i = 0; i < N; i++) {
        ck_assert_msg(x[i] >= -bound && x[i] <= bound, "uniform value %g outside +-%g",
                      (double)x[i], (double)bound);
        s1 += x[i];
        s2 += (double)x[i] * x[i];
    }
    double b2 = (double)bound * bound;
    ck_assert_double_le(fabs(s1 / N), 5.0 * sqrt(b2 / 3.0 / N));
    ck_assert_double_le(fabs(s2 / N - b2 / 3.0), 5.0 * sqrt(4.0 / 45.0) * b2 / sqrt(N));

    s1 = s2 = 0;
    x = sd_params_data(p, nrm);
    for (int i = 0; i < N; i++) {
        s1 += x[i];
        s2 += (double)x[i] * x[i];
    }
    double v = (double)sd * sd;
    ck_assert_double_le(fabs(s1 / N), 5.0 * sd / sqrt(N));
    ck_assert_double_le(fabs(s2 / N - v), 5.0 * v * sqrt(2.0 / N));

    for (int i = 0; i < 9; i++) ck_assert(sd_params_data(p, c)[i] == -1.5f);
    for (int i = 0; i < 7; i++) {
        ck_assert(sd_params_data(p, before)[i] == 0.0f);
        ck_assert(sd_params_data(p, after)[i] == 0.0f);
    }
    /* The same seed gives the same values. */
    float first = sd_params_data(p, u)[0];
    sd_rng_init(&rng, 1234, SD_STREAM_INIT);
    sd_params_init_uniform(p, u, &rng, bound);
    ck_assert(sd_params_data(p, u)[0] == first);
    sd_params_free(p);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("params");
    TCase *tc = tcase_create("params");
    tcase_add_test(tc, test_layout_and_lookup);
    tcase_add_test(tc, test_many_parameters);
    tcase_add_test(tc, test_refusals);
    tcase_add_test(tc, test_total_overflow);
    tcase_add_test(tc, test_tensors_borrow_slices);
    tcase_add_test(tc, test_tensor_refusals);
    tcase_add_test(tc, test_initialisers);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

/* test_core.c - the arena, tape and backward machinery (graph.c). */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sd/ops.h"
#include "sd/tensor.h"
#include "core/graph_internal.h"

START_TEST(test_shapes_and_errors)
{
    sd_graph *g = sd_graph_new();
    ck_assert_ptr_nonnull(g);
    sd_tensor *t = sd_tensor_zeros(g, 3, (int[]){2, 3, 5});
    ck_assert_ptr_nonnull(t);
    ck_assert_uint_eq(t->numel, 30);
    ck_assert_float_eq(t->data[29], 0.0f);
    ck_assert_ptr_null(sd_tensor_new(g, 5, (int[]){1, 1, 1, 1, 1}));
    ck_assert_int_eq(sd_graph_status(g), SD_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "dimensions"));
    ck_assert_ptr_null(sd_tensor_new(g, 2, (int[]){4, 0}));
    /* 2^120 elements: the element count overflows size_t and is refused. */
    ck_assert_ptr_null(sd_tensor_new(g, 4, (int[]){1 << 30, 1 << 30, 1 << 30, 1 << 30}));
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "overflows"));
    sd_graph_reset(g);
    ck_assert_int_eq(sd_graph_status(g), SD_OK);
    sd_graph_free(g);
}
END_TEST

START_TEST(test_arena_reuse)
{
    sd_graph *g = sd_graph_new();
    /* First pass grows the arena past its first chunk. */
    for (int i = 0; i < 10; i++) ck_assert_ptr_nonnull(sd_tensor_new(g, 1, (int[]){200000}));
    size_t grown = sd_graph_arena_bytes(g);
    sd_graph_reset(g);
    uint64_t before = sd_alloc_count();
    for (int rep = 0; rep < 3; rep++) {
        for (int i = 0; i < 10; i++) ck_assert_ptr_nonnull(sd_tensor_new(g, 1, (int[]){200000}));
        sd_graph_reset(g);
    }
    ck_assert_uint_eq(sd_alloc_count(), before); /* consolidated chunk is reused */
    ck_assert_uint_ge(sd_graph_arena_bytes(g), 10 * 200000 * sizeof(float));
    ck_assert_uint_le(sd_graph_arena_bytes(g), grown);
    sd_graph_free(g);
}
END_TEST

/* Scratch rewound to a mark is reused by the next allocation. */
START_TEST(test_arena_mark_rewind)
{
    sd_graph *g = sd_graph_new();
    ck_assert_ptr_nonnull(g);
    sd_arena_mark m = sd__arena_mark(g);
    float *a = sd_graph_alloc_floats(g, 1000);
    sd__arena_rewind(g, m);
    float *b = sd_graph_alloc_floats(g, 1000);
    ck_assert_ptr_eq(a, b);
    sd_graph_free(g);
}
END_TEST

/* Gradients of intermediate nodes are recycled during backward: a chain of
 * L unary ops on an n-float input needs L outputs plus a few live gradients,
 * not L gradients. Without recycling the peak would be >= 2 L n floats. */
START_TEST(test_backward_recycles_gradients)
{
    enum { L = 16, n = 100000 };
    sd_graph *g = sd_graph_new();
    ck_assert_ptr_nonnull(g);
    sd_tensor *x = sd_tensor_new(g, 1, (int[]){n});
    ck_assert_ptr_nonnull(x);
    for (int i = 0; i < n; i++) x->data[i] = 0.001f * (float)(i % 1000);
    sd_tensor_requires_grad(x);
    sd_tensor *y = x;
    for (int k = 0; k < L; k++) y = sd_tanh(g, y);
    sd_tensor *loss = sd_sum(g, y);
    ck_assert_ptr_nonnull(loss);
    ck_assert_int_eq(sd_graph_backward(g, loss, NULL), SD_OK);
    size_t floats = sd_graph_arena_peak(g) / sizeof(float);
    /* input + its gradient + L outputs + at most 3 live gradients, plus slack */
    ck_assert_msg(floats < (size_t)(L + 6) * n, "arena peak %zu floats for L=%d n=%d", floats, L, n);
    /* d/dx of tanh^L: product of (1 - y_k^2); check one element by the chain rule. */
    double v = x->data[777], d = 1.0;
    for (int k = 0; k < L; k++) {
        v = tanh(v);
        d *= 1.0 - v * v;
    }
    ck_assert_double_eq_tol(x->grad[777], d, 1e-5);
    sd_graph_free(g);
}
END_TEST

START_TEST(test_backward_requires_record)
{
    sd_graph *g = sd_graph_new();
    sd_tensor *t = sd_tensor_zeros(g, 1, (int[]){3});
    ck_assert_int_eq(sd_graph_backward(g, t, NULL), SD_ERR_INVALID);
    ck_assert_int_eq(sd_graph_backward(g, NULL, NULL), SD_ERR_INVALID);
    sd_graph_free(g);
}
END_TEST

/* Issue 12 item 7: a message that wraps the previous one (the common
 * `sd_error(st, "%s: %s", path, sd_error_message())`) must read its argument
 * before overwriting the buffer; formatting in place garbled it. */
START_TEST(test_error_wraps_previous_message)
{
    sd_error(SD_ERR_IO, "inner problem %d", 42);
    ck_assert_int_eq(sd_error(SD_ERR_FORMAT, "%s: %s", "file.png", sd_error_message()),
                     SD_ERR_FORMAT);
    ck_assert_str_eq(sd_error_message(), "file.png: inner problem 42");
    sd_error(SD_ERR_IO, "x");
    sd_error(SD_ERR_IO, "%s%s%s", sd_error_message(), sd_error_message(), sd_error_message());
    ck_assert_str_eq(sd_error_message(), "xxx");
}
END_TEST

START_TEST(test_alloc_errors)
{
    ck_assert_ptr_null(sd_calloc(SIZE_MAX / 2, 4));
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "overflows"));
    void *p = sd_malloc(0);
    ck_assert_ptr_nonnull(p);
    sd_free(p);
    ck_assert_str_eq(sd_status_str(SD_ERR_FORMAT), "malformed input");
}
END_TEST

int main(void)
{
    Suite *s = suite_create("core");
    TCase *tc = tcase_create("graph");
    tcase_add_test(tc, test_shapes_and_errors);
    tcase_add_test(tc, test_arena_reuse);
    tcase_add_test(tc, test_arena_mark_rewind);
    tcase_add_test(tc, test_backward_recycles_gradients);
    tcase_add_test(tc, test_backward_requires_record);
    tcase_add_test(tc, test_alloc_errors);
    tcase_add_test(tc, test_error_wraps_previous_message);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

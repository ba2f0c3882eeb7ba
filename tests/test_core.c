/* test_core.c - the arena, tape and backward machinery (graph.c). */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "sd/tensor.h"

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

START_TEST(test_backward_requires_record)
{
    sd_graph *g = sd_graph_new();
    sd_tensor *t = sd_tensor_zeros(g, 1, (int[]){3});
    ck_assert_int_eq(sd_graph_backward(g, t, NULL), SD_ERR_INVALID);
    ck_assert_int_eq(sd_graph_backward(g, NULL, NULL), SD_ERR_INVALID);
    sd_graph_free(g);
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
    tcase_add_test(tc, test_backward_requires_record);
    tcase_add_test(tc, test_alloc_errors);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

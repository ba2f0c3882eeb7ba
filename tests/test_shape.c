/* test_shape.c - reshape, concat_channels, upsample2x and avgpool2x
 * (ops_shape.c): values against naive index references, data sharing of
 * reshape, finite-difference gradient checks and error paths. */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "sd/ops.h"
#include "test_util.h"
#include "core/graph_internal.h"

/* Per-element assertion that only talks to Check on failure (every
 * ck_assert call costs a pipe write, far too slow inside element loops). */
static unsigned rng_state = 31337u;
static sd_tensor *rand_tensor(sd_graph *g, int nd, const int *shape)
{
    sd_tensor *t = sd_tensor_new(g, nd, shape);
    ck_assert_ptr_nonnull(t);
    for (size_t i = 0; i < t->numel; i++) t->data[i] = tu_urand(&rng_state, -2.0f, 2.0f);
    return t;
}

/* x[n, c, h, w] of an NCHW tensor. */
static float at(const sd_tensor *x, int n, int c, int h, int w)
{
    const int *s = x->shape;
    return x->data[(((size_t)n * s[1] + c) * s[2] + h) * s[3] + w];
}

/* ---- reshape ------------------------------------------------------------ */

START_TEST(test_reshape)
{
    sd_graph *g = sd_graph_new();
    sd_tensor *a = rand_tensor(g, 4, (int[]){3, 5, 7, 9});
    /* Not recorded: a header over the same data. */
    sd_tensor *r = sd_reshape(g, a, 2, (int[]){15, -1});
    ck_assert_ptr_nonnull(r);
    ck_assert_int_eq(r->ndim, 2);
    ck_assert_int_eq(r->shape[0], 15);
    ck_assert_int_eq(r->shape[1], 63);
    ck_assert_ptr_eq(r->data, a->data);
    ck_assert(!sd__recorded(r));
    ck_assert_str_eq(r->op, "reshape");
    r = sd_reshape(g, a, 1, (int[]){-1});
    ck_assert_ptr_nonnull(r);
    ck_assert_int_eq(r->shape[0], 945);
    r = sd_reshape(g, a, 4, (int[]){9, 7, 5, 3});
    ck_assert_ptr_nonnull(r);
    ck_assert_uint_eq(r->numel, 945);
    /* Recorded: still shares the data, and backward passes gradients through. */
    sd_tensor_requires_grad(a);
    r = sd_reshape(g, a, 3, (int[]){-1, 7, 9});
    ck_assert_ptr_nonnull(r);
    ck_assert(sd__recorded(r));
    ck_assert_int_eq(r->shape[0], 15);
    ck_assert_ptr_eq(r->data, a->data);
    float *cot = malloc(945 * sizeof(float));
    for (int i = 0; i < 945; i++) cot[i] = tu_urand(&rng_state, -1.0f, 1.0f);
    ck_assert_int_eq(sd_graph_backward(g, r, cot), SD_OK);
    ck_assert(memcmp(a->grad, cot, 945 * sizeof(float)) == 0);
    free(cot);
    sd_graph_free(g);
}
END_TEST

START_TEST(test_reshape_errors)
{
    sd_graph *g = sd_graph_new();
    sd_tensor *a = sd_tensor_zeros(g, 2, (int[]){6, 5});
    ck_assert_ptr_null(sd_reshape(g, a, 2, (int[]){4, 8}));
    ck_assert_int_eq(sd_graph_status(g), SD_ERR_INVALID);
    const char *msg = sd_error_message();
    ck_assert_msg(strstr(msg, "reshape") && strstr(msg, "[6, 5]") && strstr(msg, "[4, 8]"),
                  "message: %s", msg);
    ck_assert_ptr_null(sd_reshape(g, a, 2, (int[]){-1, -1}));
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "reshape"));
    ck_assert_ptr_null(sd_reshape(g, a, 2, (int[]){0, 30}));
    ck_assert_ptr_null(sd_reshape(g, a, 2, (int[]){-1, 7})); /* 30 not divisible by 7 */
    ck_assert_ptr_null(sd_reshape(g, a, 2, (int[]){-2, 15}));
    ck_assert_ptr_null(sd_reshape(g, a, 5, (int[]){1, 1, 1, 5, 6}));
    ck_assert_ptr_null(sd_reshape(g, a, 0, (int[]){30}));
    /* 2^16 * 2^16 * 641 * 6700417 = 2^32 (2^32 + 1) wraps around to 2^32 in
     * 64-bit arithmetic, the element count of `big`: the size product must be
     * overflow-checked by reshape itself. `big` is a header over one float;
     * reshape never reads the data. */
    float one = 0.0f;
    sd_tensor *big = sd_tensor_wrap(g, 2, (int[]){1 << 16, 1 << 16}, &one, NULL);
    ck_assert_ptr_nonnull(big);
    ck_assert_ptr_null(sd_reshape(g, big, 4, (int[]){1 << 16, 1 << 16, 641, 6700417}));
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "reshape: cannot reshape"));
    ck_assert_ptr_null(sd_reshape(g, big, 1, (int[]){-1})); /* 2^32 > INT_MAX */
    sd_tensor *view = sd_reshape(g, big, 3, (int[]){1 << 8, -1, 1 << 16});
    ck_assert_ptr_nonnull(view);
    ck_assert_int_eq(view->shape[1], 1 << 8);
    ck_assert_ptr_null(sd_reshape(g, NULL, 1, (int[]){30}));
    sd_graph_free(g);
}
END_TEST

static sd_tensor *build_reshape(sd_graph *g, sd_tensor **in, void *ctx)
{
    (void)ctx;
    /* Reshape then a shape-sensitive op, so a wrong layout would show. */
    sd_tensor *r = sd_reshape(g, in[0], 2, (int[]){15, 63});
    return sd_mul(g, r, in[1]);
}

START_TEST(test_reshape_gradcheck)
{
    gc_input spec[2] = {{.ndim = 4, .shape = {3, 5, 7, 9}, .lo = -2.0f, .hi = 2.0f},
                        {.ndim = 2, .shape = {15, 1}, .lo = -2.0f, .hi = 2.0f}};
    gc_result res = gc_check(build_reshape, NULL, 2, spec, NULL);
    GC_ASSERT(res);
}
END_TEST

/* ---- concat_channels ---------------------------------------------------- */

START_TEST(test_concat_values)
{
    sd_graph *g = sd_graph_new();
    for (int big = 0; big < 2; big++) {
        int N = big ? 4 : 3, H = big ? 30 : 7, W = big ? 41 : 9, Ca = 5, Cb = big ? 11 : 2;
        sd_tensor *a = rand_tensor(g, 4, (int[]){N, Ca, H, W});
        sd_tensor *b = rand_tensor(g, 4, (int[]){N, Cb, H, W});
        sd_tensor *y = sd_concat_channels(g, a, b);
        ck_assert_ptr_nonnull(y);
        ck_assert_int_eq(y->shape[0], N);
        ck_assert_int_eq(y->shape[1], Ca + Cb);
        ck_assert_int_eq(y->shape[2], H);
        ck_assert_int_eq(y->shape[3], W);
        for (int n = 0; n < N; n++)
            for (int c = 0; c < Ca + Cb; c++)
                for (int h = 0; h < H; h++)
                    for (int w = 0; w < W; w++) {
                        float want = c < Ca ? at(a, n, c, h, w) : at(b, n, c - Ca, h, w);
                        EXPECT(at(y, n, c, h, w) == want, "concat at %d %d %d %d", n, c, h, w);
                    }
    }
    sd_graph_free(g);
}
END_TEST

static sd_tensor *build_concat(sd_graph *g, sd_tensor **in, void *ctx)
{
    (void)ctx;
    return sd_concat_channels(g, in[0], in[1]);
}

START_TEST(test_concat_gradcheck)
{
    gc_input spec[2] = {{.ndim = 4, .shape = {3, 5, 7, 9}, .lo = -2.0f, .hi = 2.0f},
                        {.ndim = 4, .shape = {3, 3, 7, 9}, .lo = -2.0f, .hi = 2.0f}};
    gc_result res = gc_check(build_concat, NULL, 2, spec, NULL);
    GC_ASSERT(res);
    spec[1].no_grad = true; /* only one source differentiated */
    res = gc_check(build_concat, NULL, 2, spec, NULL);
    GC_ASSERT(res);
}
END_TEST

/* ---- upsample2x / avgpool2x ------------------------------------------------ */

static void check_resample(int N, int C, int H, int W)
{
    sd_graph *g = sd_graph_new();
    sd_tensor *x = rand_tensor(g, 4, (int[]){N, C, H, W});
    sd_tensor *u = sd_upsample2x(g, x);
    ck_assert_ptr_nonnull(u);
    ck_assert_int_eq(u->shape[2], 2 * H);
    ck_assert_int_eq(u->shape[3], 2 * W);
    for (int n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            for (int h = 0; h < 2 * H; h++)
                for (int w = 0; w < 2 * W; w++)
                    EXPECT(at(u, n, c, h, w) == at(x, n, c, h / 2, w / 2), "upsample at %d %d",
                           h, w);
    if (H % 2 == 0 && W % 2 == 0) {
        sd_tensor *p = sd_avgpool2x(g, x);
        ck_assert_ptr_nonnull(p);
        ck_assert_int_eq(p->shape[0], N);
        ck_assert_int_eq(p->shape[1], C);
        ck_assert_int_eq(p->shape[2], H / 2);
        ck_assert_int_eq(p->shape[3], W / 2);
        for (int n = 0; n < N; n++)
            for (int c = 0; c < C; c++)
                for (int h = 0; h < H / 2; h++)
                    for (int w = 0; w < W / 2; w++) {
                        double want = ((double)at(x, n, c, 2 * h, 2 * w) +
                                       at(x, n, c, 2 * h, 2 * w + 1) +
                                       at(x, n, c, 2 * h + 1, 2 * w) +
                                       at(x, n, c, 2 * h + 1, 2 * w + 1)) / 4;
                        EXPECT(fabs(at(p, n, c, h, w) - want) <= 1e-6, "avgpool at %d %d", h, w);
                    }
    }
    /* avgpool of upsample is the identity. */
    sd_tensor *back = sd_avgpool2x(g, u);
    ck_assert_ptr_nonnull(back);
    for (size_t i = 0; i < x->numel; i++) EXPECT(back->data[i] == x->data[i], "round trip %zu", i);
    sd_graph_free(g);
}

START_TEST(test_resample_values)
{
    check_resample(3, 5, 7, 9);
    check_resample(3, 5, 8, 10);
    check_resample(2, 7, 34, 62); /* threaded */
}
END_TEST

static sd_tensor *build_up(sd_graph *g, sd_tensor **in, void *ctx)
{
    (void)ctx;
    return sd_upsample2x(g, in[0]);
}

static sd_tensor *build_pool(sd_graph *g, sd_tensor **in, void *ctx)
{
    (void)ctx;
    return sd_avgpool2x(g, in[0]);
}

START_TEST(test_resample_gradcheck)
{
    gc_input spec = {.ndim = 4, .shape = {3, 5, 7, 9}, .lo = -2.0f, .hi = 2.0f};
    gc_result res = gc_check(build_up, NULL, 1, &spec, NULL);
    GC_ASSERT(res);
    /* avgpool needs even H and W; N and C stay odd. */
    gc_input spec2 = {.ndim = 4, .shape = {3, 5, 6, 10}, .lo = -2.0f, .hi = 2.0f};
    res = gc_check(build_pool, NULL, 1, &spec2, NULL);
    GC_ASSERT(res);
}
END_TEST

/* Backward on sizes above the threading threshold against the reference
 * adjoints: upsample sums 2x2 blocks, avgpool spreads a quarter. */
START_TEST(test_resample_backward_large)
{
    sd_graph *g = sd_graph_new();
    sd_tensor *x = rand_tensor(g, 4, (int[]){2, 7, 34, 62});
    sd_tensor_requires_grad(x);
    sd_tensor *u = sd_upsample2x(g, x);
    ck_assert_ptr_nonnull(u);
    float *cot = malloc(u->numel * sizeof(float));
    for (size_t i = 0; i < u->numel; i++) cot[i] = tu_urand(&rng_state, -1.0f, 1.0f);
    ck_assert_int_eq(sd_graph_backward(g, u, cot), SD_OK);
    size_t W2 = 124;
    for (size_t r = 0; r < 2 * 7 * 34; r++)
        for (size_t w = 0; w < 62; w++) {
            const float *c0 = cot + 2 * r * W2, *c1 = c0 + W2;
            double want = (double)c0[2 * w] + c0[2 * w + 1] + c1[2 * w] + c1[2 * w + 1];
            EXPECT(fabs(x->grad[r * 62 + w] - want) <= 1e-5, "upsample grad %zu %zu", r, w);
        }
    sd_tensor *p = sd_avgpool2x(g, x);
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(sd_graph_backward(g, p, cot), SD_OK); /* first p->numel entries */
    for (size_t r = 0; r < 2 * 7 * 34; r++)
        for (size_t w = 0; w < 62; w++) {
            float want = 0.25f * cot[(r / 2) * 31 + w / 2];
            EXPECT(x->grad[r * 62 + w] == want, "avgpool grad %zu %zu", r, w);
        }
    free(cot);
    sd_graph_free(g);
}
END_TEST

START_TEST(test_errors)
{
    sd_graph *g = sd_graph_new();
    sd_tensor *a = sd_tensor_zeros(g, 4, (int[]){2, 3, 4, 4});
    sd_tensor *b = sd_tensor_zeros(g, 4, (int[]){2, 3, 4, 5});
    sd_tensor *c3 = sd_tensor_zeros(g, 3, (int[]){3, 4, 4});
    sd_tensor *odd = sd_tensor_zeros(g, 4, (int[]){1, 1, 5, 4});
    ck_assert_ptr_null(sd_concat_channels(g, a, b));
    ck_assert_int_eq(sd_graph_status(g), SD_ERR_INVALID);
    const char *msg = sd_error_message();
    ck_assert_msg(strstr(msg, "concat_channels") && strstr(msg, "[2, 3, 4, 5]"), "message: %s",
                  msg);
    ck_assert_ptr_null(sd_concat_channels(g, a, c3));
    ck_assert_ptr_null(sd_concat_channels(g, NULL, a));
    ck_assert_ptr_null(sd_concat_channels(g, a, NULL));
    ck_assert_ptr_null(sd_upsample2x(g, c3));
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "upsample2x"));
    ck_assert_ptr_null(sd_upsample2x(g, NULL));
    ck_assert_ptr_null(sd_avgpool2x(g, odd));
    msg = sd_error_message();
    ck_assert_msg(strstr(msg, "avgpool2x") && strstr(msg, "[1, 1, 5, 4]"), "message: %s", msg);
    ck_assert_ptr_null(sd_avgpool2x(g, c3));
    ck_assert_ptr_null(sd_avgpool2x(g, NULL));
    sd_graph_free(g);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("shape");
    TCase *tc = tcase_create("shape");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_reshape);
    tcase_add_test(tc, test_reshape_errors);
    tcase_add_test(tc, test_reshape_gradcheck);
    tcase_add_test(tc, test_concat_values);
    tcase_add_test(tc, test_concat_gradcheck);
    tcase_add_test(tc, test_resample_values);
    tcase_add_test(tc, test_resample_gradcheck);
    tcase_add_test(tc, test_resample_backward_large);
    tcase_add_test(tc, test_errors);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

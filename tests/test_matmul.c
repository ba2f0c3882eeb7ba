/* test_matmul.c - sd_gemm (lib/gemm/gemm.c), sd_matmul and sd_linear (lib/gemm/ops_matmul.c). */
#include <check.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "sd/blas_core.h"
#include "sd/gemm.h"
#include "sd/ops.h"

static unsigned lcg(unsigned *s)
{
    *s = *s * 1664525u + 1013904223u;
    return *s >> 8;
}

static void fill(float *p, size_t n, unsigned *s)
{
    for (size_t i = 0; i < n; i++) p[i] = 2.0f * (float)lcg(s) / (float)(1u << 24) - 1.0f;
}

/* ---- sd_gemm against a naive double reference ---------------------------- */

/* C = alpha op(A) op(B) + beta C0 in double, with the same storage rules. */
static void naive_gemm(bool ta, bool tb, int M, int N, int K, double alpha, const float *A, int lda,
                       const float *B, int ldb, double beta, const float *C0, int ldc, double *C)
{
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double acc = 0.0;
            for (int k = 0; k < K; k++) {
                double a = ta ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                double b = tb ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
                acc += a * b;
            }
            C[(size_t)i * ldc + j] =
                alpha * acc + (beta != 0.0 ? beta * C0[(size_t)i * ldc + j] : 0.0);
        }
}

typedef struct gemm_case {
    int M, N, K;
} gemm_case;

/* Small (serial), wide (column split), tall (row split), odd sizes. */
static const gemm_case gemm_cases[] = {
    {5, 7, 3}, {33, 301, 129}, {517, 31, 97}, {128, 128, 128}, {1, 2000, 700}, {64, 63, 1},
};

START_TEST(test_gemm_reference)
{
    const gemm_case *c = &gemm_cases[_i];
    unsigned seed = 11u + (unsigned)_i;
    for (int variant = 0; variant < 4; variant++) {
        bool ta = variant & 1, tb = variant & 2;
        /* Leading dimensions larger than the rows: sub-matrices of wider arrays. */
        int lda = (ta ? c->M : c->K) + 3, ldb = (tb ? c->K : c->N) + 5, ldc = c->N + 2;
        size_t na = (size_t)(ta ? c->K : c->M) * lda, nb = (size_t)(tb ? c->N : c->K) * ldb;
        size_t nc = (size_t)c->M * ldc;
        float *A = malloc(na * sizeof *A), *B = malloc(nb * sizeof *B), *C = malloc(nc * sizeof *C);
        float *C0 = malloc(nc * sizeof *C0);
        double *R = malloc(nc * sizeof *R);
        fill(A, na, &seed);
        fill(B, nb, &seed);
        fill(C0, nc, &seed);
        memcpy(C, C0, nc * sizeof *C);
        float alpha = 0.75f, beta = variant == 3 ? 0.0f : -0.5f;
        naive_gemm(ta, tb, c->M, c->N, c->K, alpha, A, lda, B, ldb, beta, C0, ldc, R);
        sd_gemm(ta, tb, c->M, c->N, c->K, alpha, A, lda, B, ldb, beta, C, ldc);
        for (int i = 0; i < c->M; i++) {
            for (int j = 0; j < c->N; j++) {
                double r = R[(size_t)i * ldc + j], got = C[(size_t)i * ldc + j];
                ck_assert_msg(fabs(got - r) <= 1e-4 * (fabs(r) + sqrt((double)c->K)),
                              "case %d ta %d tb %d (%d,%d): %g vs %g", _i, ta, tb, i, j, got, r);
            }
            /* Padding columns of C beyond N are never touched. */
            for (int j = c->N; j < ldc; j++)
                ck_assert(C[(size_t)i * ldc + j] == C0[(size_t)i * ldc + j]);
        }
        free(A), free(B), free(C), free(C0), free(R);
    }
}
END_TEST

START_TEST(test_gemm_edge)
{
    /* K = 0: C = beta C (beta = 0 clears, even NaN). */
    float C[6] = {1, 2, 3, 4, NAN, 6}, A[1] = {0}, B[1] = {0};
    sd_gemm(false, false, 2, 3, 0, 1.0f, A, 1, B, 3, 2.0f, C, 3);
    ck_assert_float_eq(C[0], 2.0f);
    ck_assert_float_eq(C[5], 12.0f);
    sd_gemm(false, false, 2, 3, 0, 1.0f, A, 1, B, 3, 0.0f, C, 3);
    for (int i = 0; i < 6; i++) ck_assert_float_eq(C[i], 0.0f);
    /* M = 0 or N = 0: nothing happens. */
    C[0] = 5.0f;
    sd_gemm(false, false, 0, 3, 2, 1.0f, A, 2, B, 3, 0.0f, C, 3);
    sd_gemm(false, false, 2, 0, 2, 1.0f, A, 2, B, 1, 0.0f, C, 1);
    ck_assert_float_eq(C[0], 5.0f);
    /* beta = 0 does not propagate NaN already in C. */
    float a2[4] = {1, 2, 3, 4}, b2[4] = {1, 0, 0, 1}, c2[4] = {NAN, NAN, NAN, NAN};
    sd_gemm_serial(false, false, 2, 2, 2, 1.0f, a2, 2, b2, 2, 0.0f, c2, 2);
    for (int i = 0; i < 4; i++) ck_assert_float_eq(c2[i], a2[i]);
}
END_TEST

START_TEST(test_gemm_deterministic)
{
    /* Same thread count, same bits; with 2 threads the split path runs. */
    int M = 40, N = 700, K = 300;
    unsigned seed = 5;
    float *A = malloc((size_t)M * K * sizeof *A), *B = malloc((size_t)K * N * sizeof *B);
    float *C1 = malloc((size_t)M * N * sizeof *C1), *C2 = malloc((size_t)M * N * sizeof *C2);
    fill(A, (size_t)M * K, &seed);
    fill(B, (size_t)K * N, &seed);
    int saved = omp_get_max_threads();
    omp_set_num_threads(2);
    sd_gemm(false, false, M, N, K, 1.0f, A, K, B, N, 0.0f, C1, N);
    sd_gemm(false, false, M, N, K, 1.0f, A, K, B, N, 0.0f, C2, N);
    omp_set_num_threads(saved);
    ck_assert(memcmp(C1, C2, (size_t)M * N * sizeof *C1) == 0);
    free(A), free(B), free(C1), free(C2);
}
END_TEST

/* ---- gradients ------------------------------------------------------------ */

static sd_tensor *build_matmul(sd_graph *g, sd_tensor **in, void *ctx)
{
    (void)ctx;
    return sd_matmul(g, in[0], in[1]);
}

static sd_tensor *build_linear(sd_graph *g, sd_tensor **in, void *ctx)
{
    bool bias = *(const bool *)ctx;
    return sd_linear(g, in[0], in[1], bias ? in[2] : NULL);
}

START_TEST(test_grad_matmul)
{
    gc_input in[2] = {
        {2, {5, 7}, -1.0f, 1.0f, 0.0f, false},
        {2, {7, 3}, -1.0f, 1.0f, 0.0f, false},
    };
    gc_result r = gc_check(build_matmul, NULL, 2, in, NULL);
    GC_ASSERT(r);
    /* Large enough for sd_gemm's threaded split in forward and backward. */
    gc_input big[2] = {
        {2, {67, 131}, -1.0f, 1.0f, 0.0f, false},
        {2, {131, 129}, -1.0f, 1.0f, 0.0f, false},
    };
    gc_options opt = {.max_probe = 12};
    r = gc_check(build_matmul, NULL, 2, big, &opt);
    GC_ASSERT(r);
}
END_TEST

START_TEST(test_grad_linear)
{
    bool bias = true;
    gc_input in[3] = {
        {2, {5, 7}, -1.0f, 1.0f, 0.0f, false},
        {2, {3, 7}, -1.0f, 1.0f, 0.0f, false},
        {1, {3}, -1.0f, 1.0f, 0.0f, false},
    };
    gc_result r = gc_check(build_linear, &bias, 3, in, NULL);
    GC_ASSERT(r);
    bias = false;
    r = gc_check(build_linear, &bias, 2, in, NULL);
    GC_ASSERT(r);
    /* x of rank 3: every leading index is a row. */
    bias = true;
    gc_input in3[3] = {
        {3, {3, 5, 7}, -1.0f, 1.0f, 0.0f, false},
        {2, {9, 7}, -1.0f, 1.0f, 0.0f, false},
        {1, {9}, -1.0f, 1.0f, 0.0f, false},
    };
    r = gc_check(build_linear, &bias, 3, in3, NULL);
    GC_ASSERT(r);
}
END_TEST

/* ---- forward values --------------------------------------------------------- */

START_TEST(test_linear_values)
{
    enum { R = 9, DI = 13, DO = 5 };
    float x[R * DI], w[DO * DI], b[DO];
    unsigned seed = 21;
    fill(x, R * DI, &seed);
    fill(w, DO * DI, &seed);
    fill(b, DO, &seed);
    sd_graph *g = sd_graph_new();
    sd_tensor *tx = sd_tensor_wrap(g, 2, (int[]){R, DI}, x, NULL);
    sd_tensor *tw = sd_tensor_wrap(g, 2, (int[]){DO, DI}, w, NULL);
    sd_tensor *tb = sd_tensor_wrap(g, 1, (int[]){DO}, b, NULL);
    sd_tensor *y = sd_linear(g, tx, tw, tb), *y0 = sd_linear(g, tx, tw, NULL);
    sd_tensor *wt = sd_tensor_new(g, 2, (int[]){DI, DO});
    for (int i = 0; i < DO; i++)
        for (int k = 0; k < DI; k++) wt->data[k * DO + i] = w[i * DI + k];
    sd_tensor *m = sd_matmul(g, tx, wt);
    ck_assert_ptr_nonnull(y);
    ck_assert_ptr_nonnull(m);
    ck_assert_int_eq(y->shape[0], R);
    ck_assert_int_eq(y->shape[1], DO);
    for (int r = 0; r < R; r++)
        for (int o = 0; o < DO; o++) {
            double acc = 0.0;
            for (int k = 0; k < DI; k++) acc += (double)x[r * DI + k] * w[o * DI + k];
            ck_assert_double_eq_tol(y->data[r * DO + o], acc + b[o], 1e-5);
            ck_assert_double_eq_tol(y0->data[r * DO + o], acc, 1e-5);
            ck_assert_double_eq_tol(m->data[r * DO + o], acc, 1e-5);
        }
    sd_graph_free(g);
}
END_TEST

/* ---- error paths ------------------------------------------------------------ */

static void expect_fail(sd_tensor *t, const char *op)
{
    ck_assert_ptr_null(t);
    ck_assert_msg(strstr(sd_error_message(), op) != NULL, "message '%s' lacks '%s'",
                  sd_error_message(), op);
}

/* The kernel report names the running core; a set OPENBLAS_CORETYPE is
 * never second-guessed (so the restart never loops), and the restart is a
 * no-op when SCOREDIFF_BLAS_AUTO=0 (as in this suite's environment). */
START_TEST(test_blas_core)
{
    const char *core = sd_blas_core();
    ck_assert_ptr_nonnull(core);
    ck_assert_int_gt((int)strlen(core), 0);
    char line[256];
    sd_blas_describe(line, sizeof line);
    ck_assert_msg(strstr(line, core) != NULL, "'%s' does not name core %s", line, core);
    ck_assert_msg(strncmp(line, "OpenBLAS", 8) == 0, "'%s'", line);
    char tiny[4];
    sd_blas_describe(tiny, sizeof tiny); /* truncates, terminates */
    ck_assert_int_eq((int)strlen(tiny), 3);

    const char *old = getenv("OPENBLAS_CORETYPE");
    char *saved = old ? strdup(old) : NULL;
    ck_assert_int_eq(setenv("OPENBLAS_CORETYPE", core, 1), 0);
    ck_assert_ptr_null(sd_blas_better_core());
    sd_blas_describe(line, sizeof line);
    ck_assert_msg(strstr(line, "OPENBLAS_CORETYPE=") != NULL, "'%s'", line);
    if (saved) {
        setenv("OPENBLAS_CORETYPE", saved, 1);
        free(saved);
    } else {
        unsetenv("OPENBLAS_CORETYPE");
    }
    /* With SCOREDIFF_BLAS_AUTO=0 it must return (not exec). */
    ck_assert_int_eq(setenv("SCOREDIFF_BLAS_AUTO", "0", 1), 0);
    char *argv[] = {(char *)"test_matmul", NULL};
    sd_blas_restart_if_generic(argv);
}
END_TEST

START_TEST(test_errors)
{
    sd_graph *g = sd_graph_new();
    sd_tensor *a = sd_tensor_zeros(g, 2, (int[]){3, 4});
    sd_tensor *b = sd_tensor_zeros(g, 2, (int[]){5, 2});
    sd_tensor *v = sd_tensor_zeros(g, 1, (int[]){4});
    sd_tensor *w = sd_tensor_zeros(g, 2, (int[]){6, 4});
    sd_tensor *bias = sd_tensor_zeros(g, 1, (int[]){5});
    expect_fail(sd_matmul(g, a, b), "matmul");
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "[3, 4]"));
    expect_fail(sd_matmul(g, v, a), "matmul");
    expect_fail(sd_linear(g, a, b, NULL), "linear");
    expect_fail(sd_linear(g, a, w, bias), "linear: bias");
    expect_fail(sd_linear(g, a, v, NULL), "linear");
    ck_assert_int_eq(sd_graph_status(g), SD_ERR_INVALID);
    ck_assert_ptr_null(sd_matmul(g, NULL, a));
    ck_assert_ptr_null(sd_linear(g, a, NULL, NULL));
    ck_assert_ptr_nonnull(sd_linear(g, v, w, NULL)); /* a single row [in] */
    sd_graph_free(g);
}
END_TEST

int main(void)
{
    sd_threads_init(0); /* OMP_NUM_THREADS, and OpenBLAS pinned to one thread */
    Suite *s = suite_create("matmul");
    TCase *tc = tcase_create("matmul");
    tcase_add_loop_test(tc, test_gemm_reference, 0,
                        (int)(sizeof gemm_cases / sizeof gemm_cases[0]));
    tcase_add_test(tc, test_gemm_edge);
    tcase_add_test(tc, test_gemm_deterministic);
    tcase_add_test(tc, test_grad_matmul);
    tcase_add_test(tc, test_grad_linear);
    tcase_add_test(tc, test_linear_values);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_blas_core);
    tcase_set_timeout(tc, 60);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

/* test_elementwise.c - broadcasting add/sub/mul/div and the scalar affine
 * ops (ops_elementwise.c): forward and backward against naive double
 * references, finite-difference gradient checks, thread-count determinism
 * and error paths. */
#include <check.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "sd/ops.h"
#include "test_util.h"
#include "core/graph_internal.h"

/* Per-element assertion that only talks to Check on failure (every
 * ck_assert call costs a pipe write, far too slow inside element loops). */
typedef sd_tensor *(*binop_fn)(sd_graph *, sd_tensor *, sd_tensor *);
static const binop_fn binops[4] = {sd_add, sd_sub, sd_mul, sd_div};
static const char *const binop_names[4] = {"add", "sub", "mul", "div"};
enum { OP_ADD, OP_SUB, OP_MUL, OP_DIV };

typedef struct shape_pair {
    int na, sa[4], nb, sb[4];
} shape_pair;

/* Broadcast pairs exercising every plan: same shape, per-sample,
 * per-(sample, channel), per-channel, lower rank, scalar, each both ways, and
 * general patterns where neither or only the other operand is full. */
static const shape_pair pairs[] = {
    {4, {3, 5, 7, 9}, 4, {3, 5, 7, 9}},
    {4, {3, 5, 7, 9}, 4, {3, 1, 1, 1}},
    {4, {3, 1, 1, 1}, 4, {3, 5, 7, 9}},
    {4, {3, 5, 7, 9}, 4, {3, 5, 1, 1}},
    {4, {3, 5, 1, 1}, 4, {3, 5, 7, 9}},
    {4, {3, 5, 7, 9}, 4, {1, 5, 1, 1}},
    {4, {1, 5, 1, 1}, 4, {3, 5, 7, 9}},
    {4, {3, 5, 7, 9}, 3, {5, 1, 1}},
    {1, {9}, 4, {3, 5, 7, 9}},
    {4, {3, 5, 7, 9}, 1, {1}},
    {1, {1}, 4, {3, 5, 7, 9}},
    {4, {3, 5, 7, 9}, 4, {3, 1, 7, 1}},
    {4, {1, 5, 7, 1}, 4, {3, 5, 7, 9}},
    {4, {3, 1, 7, 1}, 4, {1, 5, 1, 9}},
    {2, {5, 1}, 3, {3, 1, 9}},
    {2, {7, 9}, 2, {7, 1}},
};
#define N_PAIRS ((int)(sizeof pairs / sizeof pairs[0]))

static unsigned rng_state = 12345u;
static sd_tensor *rand_tensor(sd_graph *g, int nd, const int *shape, float lo, float hi)
{
    sd_tensor *t = sd_tensor_new(g, nd, shape);
    ck_assert_ptr_nonnull(t);
    for (size_t i = 0; i < t->numel; i++) t->data[i] = tu_urand(&rng_state, lo, hi);
    return t;
}

static void pad4(int nd, const int *s, int p[4])
{
    for (int d = 0; d < 4; d++) p[d] = d < 4 - nd ? 1 : s[d - (4 - nd)];
}

/* Flat index into a tensor of padded shape p for output multi-index idx. */
static size_t bidx(const int p[4], const int idx[4])
{
    size_t k = 0;
    for (int d = 0; d < 4; d++) k = k * (size_t)p[d] + (size_t)(p[d] == 1 ? 0 : idx[d]);
    return k;
}

static double ref_apply(int op, double x, double y)
{
    switch (op) {
    case OP_ADD: return x + y;
    case OP_SUB: return x - y;
    case OP_MUL: return x * y;
    default: return x / y;
    }
}

/* Checks out = a op b and, with cotangent r, the gradients ga, gb against a
 * naive double reference that loops over every output element. */
static void check_against_reference(int op, const sd_tensor *a, const sd_tensor *b,
                                    const sd_tensor *out, const float *r, const float *ga,
                                    const float *gb)
{
    int pa[4], pb[4], po[4];
    pad4(a->ndim, a->shape, pa);
    pad4(b->ndim, b->shape, pb);
    for (int d = 0; d < 4; d++) po[d] = pa[d] > pb[d] ? pa[d] : pb[d];
    int pout[4]; /* the output has the broadcast shape */
    pad4(out->ndim, out->shape, pout);
    for (int d = 0; d < 4; d++) ck_assert_int_eq(pout[d], po[d]);
    ck_assert_int_eq(out->ndim, a->ndim > b->ndim ? a->ndim : b->ndim);
    double *ra = calloc(a->numel, sizeof(double)), *rb = calloc(b->numel, sizeof(double));
    int idx[4];
    size_t o = 0;
    for (idx[0] = 0; idx[0] < po[0]; idx[0]++)
        for (idx[1] = 0; idx[1] < po[1]; idx[1]++)
            for (idx[2] = 0; idx[2] < po[2]; idx[2]++)
                for (idx[3] = 0; idx[3] < po[3]; idx[3]++, o++) {
                    size_t ia = bidx(pa, idx), ib = bidx(pb, idx);
                    double x = a->data[ia], y = b->data[ib];
                    double want = ref_apply(op, x, y);
                    EXPECT(fabs(out->data[o] - want) <= 1e-6 * (1.0 + fabs(want)),
                                  "%s out[%zu] = %g, want %g", binop_names[op], o,
                                  (double)out->data[o], want);
                    if (!r) continue;
                    double dx = op == OP_MUL ? y : op == OP_DIV ? 1.0 / y : 1.0;
                    double dy = op == OP_MUL   ? x
                                : op == OP_DIV ? -x / (y * y)
                                : op == OP_SUB ? -1.0
                                               : 1.0;
                    ra[ia] += r[o] * dx;
                    rb[ib] += r[o] * dy;
                }
    for (size_t i = 0; r && ga && i < a->numel; i++)
        EXPECT(fabs(ga[i] - ra[i]) <= 1e-4 * (1.0 + fabs(ra[i])),
                      "%s ga[%zu] = %g, want %g", binop_names[op], i, (double)ga[i], ra[i]);
    for (size_t i = 0; r && gb && i < b->numel; i++)
        EXPECT(fabs(gb[i] - rb[i]) <= 1e-4 * (1.0 + fabs(rb[i])),
                      "%s gb[%zu] = %g, want %g", binop_names[op], i, (double)gb[i], rb[i]);
    free(ra);
    free(rb);
}

/* Forward + backward of every op on one pair; a and b require grad. */
static void run_pair(sd_graph *g, int op, const shape_pair *p)
{
    sd_graph_reset(g);
    /* Denominators of div stay positive and away from zero. */
    sd_tensor *a = rand_tensor(g, p->na, p->sa, -2.0f, 2.0f);
    sd_tensor *b = rand_tensor(g, p->nb, p->sb, op == OP_DIV ? 0.5f : -2.0f, 2.0f);
    sd_tensor_requires_grad(a);
    sd_tensor_requires_grad(b);
    sd_tensor *out = binops[op](g, a, b);
    ck_assert_msg(out != NULL, "%s failed: %s", binop_names[op], sd_error_message());
    float *r = malloc(out->numel * sizeof(float));
    for (size_t i = 0; i < out->numel; i++) r[i] = tu_urand(&rng_state, -1.0f, 1.0f);
    ck_assert_int_eq(sd_graph_backward(g, out, r), SD_OK);
    check_against_reference(op, a, b, out, r, a->grad, b->grad);
    free(r);
}

START_TEST(test_forward_backward_reference)
{
    sd_graph *g = sd_graph_new();
    for (int op = 0; op < 4; op++)
        for (int k = 0; k < N_PAIRS; k++) run_pair(g, op, &pairs[k]);
    sd_graph_free(g);
}
END_TEST

/* Sizes above the threading threshold, including a per-sample broadcast with
 * few samples and long runs (split into several tasks per run). */
START_TEST(test_large_parallel_paths)
{
    static const shape_pair big[] = {
        {4, {2, 16, 48, 48}, 4, {2, 1, 1, 1}},
        {4, {2, 1, 1, 1}, 4, {2, 16, 48, 48}},
        {4, {2, 16, 48, 48}, 4, {2, 16, 1, 1}},
        {4, {2, 16, 48, 48}, 4, {2, 16, 48, 48}},
        {4, {2, 1, 48, 48}, 4, {1, 16, 1, 48}},
    };
    sd_graph *g = sd_graph_new();
    for (int op = 0; op < 4; op++)
        for (int k = 0; k < 5; k++) run_pair(g, op, &big[k]);
    sd_graph_free(g);
}
END_TEST

/* Gradients of broadcast operands are the same bits for 1 and 2 threads. */
START_TEST(test_thread_determinism)
{
    static const shape_pair big[] = {
        {4, {3, 16, 40, 40}, 4, {3, 1, 1, 1}},
        {4, {3, 16, 1, 40}, 4, {1, 16, 40, 1}},
    };
    int saved = omp_get_max_threads();
    for (int k = 0; k < 2; k++) {
        float *grads[2][2];
        for (int t = 0; t < 2; t++) {
            omp_set_num_threads(t + 1);
            sd_graph *g = sd_graph_new();
            rng_state = 777u;
            sd_tensor *a = rand_tensor(g, 4, big[k].sa, -1.0f, 1.0f);
            sd_tensor *b = rand_tensor(g, 4, big[k].sb, 0.5f, 2.0f);
            sd_tensor_requires_grad(a);
            sd_tensor_requires_grad(b);
            sd_tensor *out = sd_div(g, a, b);
            ck_assert_ptr_nonnull(out);
            ck_assert_int_eq(sd_graph_backward(g, out, NULL), SD_OK);
            grads[t][0] = malloc(a->numel * sizeof(float));
            grads[t][1] = malloc(b->numel * sizeof(float));
            memcpy(grads[t][0], a->grad, a->numel * sizeof(float));
            memcpy(grads[t][1], b->grad, b->numel * sizeof(float));
            size_t na = a->numel, nb = b->numel;
            sd_graph_free(g);
            if (t == 1) {
                ck_assert(memcmp(grads[0][0], grads[1][0], na * sizeof(float)) == 0);
                ck_assert(memcmp(grads[0][1], grads[1][1], nb * sizeof(float)) == 0);
            }
        }
        for (int t = 0; t < 2; t++) {
            free(grads[t][0]);
            free(grads[t][1]);
        }
    }
    omp_set_num_threads(saved);
}
END_TEST

/* ---- finite-difference checks -------------------------------------------- */

static sd_tensor *build_binop(sd_graph *g, sd_tensor **in, void *ctx)
{
    return binops[*(int *)ctx](g, in[0], in[1]);
}

static void gc_pair(int op, int na, const int *sa, int nb, const int *sb)
{
    gc_input spec[2] = {{.ndim = na, .lo = -2.0f, .hi = 2.0f},
                        {.ndim = nb, .lo = op == OP_DIV ? 0.5f : -2.0f, .hi = 2.0f}};
    memcpy(spec[0].shape, sa, (size_t)na * sizeof(int));
    memcpy(spec[1].shape, sb, (size_t)nb * sizeof(int));
    gc_result res = gc_check(build_binop, &op, 2, spec, NULL);
    ck_assert_msg(res.ok, "%s pair %d-D/%d-D: %s", binop_names[op], na, nb, res.message);
}

START_TEST(test_gradcheck_broadcast)
{
    int op = _i; /* loop test over the four ops */
    for (int k = 0; k < N_PAIRS; k++)
        gc_pair(op, pairs[k].na, pairs[k].sa, pairs[k].nb, pairs[k].sb);
}
END_TEST

static sd_tensor *build_square_by_mul(sd_graph *g, sd_tensor **in, void *ctx)
{
    (void)ctx;
    return sd_mul(g, in[0], in[0]); /* both operands are one tensor: grad 2x */
}

START_TEST(test_gradcheck_same_operand)
{
    gc_input spec = {.ndim = 3, .shape = {5, 7, 9}, .lo = -2.0f, .hi = 2.0f};
    gc_result res = gc_check(build_square_by_mul, NULL, 1, &spec, NULL);
    GC_ASSERT(res);
}
END_TEST

/* ---- in-place scaled add ----------------------------------------------------- */

/* add_into overwrites its target, so the target is an op output here:
 * t = 1.5 x (scale reads no data in backward), then (t + b) * 0.7 in t. */
static sd_tensor *build_add_into(sd_graph *g, sd_tensor **in, void *ctx)
{
    (void)ctx;
    return sd_add_into(g, sd_scale(g, in[0], 1.5f), in[1], 0.7f);
}

START_TEST(test_add_into)
{
    /* Gradients for the same-shape and the per-(n, c) broadcast forms. */
    const int sb_same[4] = {3, 4, 5, 7}, sb_bc[4] = {3, 4, 1, 1};
    const int *sbs[2] = {sb_same, sb_bc};
    for (int k = 0; k < 2; k++) {
        gc_input spec[2] = {{.ndim = 4, .shape = {3, 4, 5, 7}, .lo = -2.0f, .hi = 2.0f},
                            {.ndim = 4, .lo = -2.0f, .hi = 2.0f}};
        memcpy(spec[1].shape, sbs[k], sizeof sb_same);
        gc_result res = gc_check(build_add_into, NULL, 2, spec, NULL);
        ck_assert_msg(res.ok, "add_into form %d: %s", k, res.message);
    }
    /* Bit-identical to scale(add(a, b)) and written over a's buffer. */
    sd_graph *g = sd_graph_new();
    sd_tensor *x = sd_tensor_new(g, 4, (int[]){2, 3, 4, 5});
    sd_tensor *b = sd_tensor_new(g, 4, (int[]){2, 3, 1, 1});
    for (size_t i = 0; i < x->numel; i++) x->data[i] = 0.37f * (float)i - 11.0f;
    for (size_t i = 0; i < b->numel; i++) b->data[i] = 0.11f * (float)i + 0.3f;
    sd_tensor *ref = sd_scale(g, sd_add(g, sd_shift(g, x, 0.25f), b), 0.7071f);
    sd_tensor *a = sd_shift(g, x, 0.25f);
    sd_tensor *y = sd_add_into(g, a, b, 0.7071f);
    ck_assert_ptr_nonnull(y);
    ck_assert_ptr_eq(y->data, a->data);
    ck_assert_int_eq(memcmp(y->data, ref->data, y->numel * sizeof(float)), 0);
    /* A leaf target and a target smaller than b are refused. */
    ck_assert_ptr_null(sd_add_into(g, x, b, 1.0f));
    ck_assert_ptr_null(sd_add_into(g, sd_shift(g, b, 0.0f), x, 1.0f));
    sd_graph_free(g);
}
END_TEST

/* ---- scalar affine ---------------------------------------------------------- */

typedef struct affine_case {
    int kind; /* 0 affine_scalar, 1 scale, 2 shift */
    float s, c;
} affine_case;

static sd_tensor *build_affine(sd_graph *g, sd_tensor **in, void *ctx)
{
    const affine_case *ac = ctx;
    if (ac->kind == 0) return sd_affine_scalar(g, in[0], ac->s, ac->c);
    if (ac->kind == 1) return sd_scale(g, in[0], ac->s);
    return sd_shift(g, in[0], ac->c);
}

START_TEST(test_affine)
{
    const affine_case cases[3] = {{0, -1.7f, 0.3f}, {1, 2.5f, 0.0f}, {2, 1.0f, -0.75f}};
    sd_graph *g = sd_graph_new();
    for (int k = 0; k < 3; k++) {
        sd_graph_reset(g);
        sd_tensor *x = rand_tensor(g, 4, (int[]){3, 5, 7, 9}, -3.0f, 3.0f);
        sd_tensor *y = build_affine(g, &x, (void *)&cases[k]);
        ck_assert_ptr_nonnull(y);
        ck_assert_int_eq(y->ndim, 4);
        ck_assert_uint_eq(y->numel, x->numel);
        double s = cases[k].kind == 2 ? 1.0 : cases[k].s, c = cases[k].kind == 1 ? 0.0 : cases[k].c;
        for (size_t i = 0; i < x->numel; i++) {
            double want = (double)x->data[i] * s + c;
            EXPECT(fabs(y->data[i] - want) <= 1e-6 * (1.0 + fabs(want)), "affine %d", k);
        }
        gc_input spec = {.ndim = 4, .shape = {3, 5, 7, 9}, .lo = -3.0f, .hi = 3.0f};
        gc_result res = gc_check(build_affine, (void *)&cases[k], 1, &spec, NULL);
        GC_ASSERT(res);
    }
    sd_graph_free(g);
}
END_TEST

/* ---- errors ----------------------------------------------------------------- */

START_TEST(test_errors)
{
    sd_graph *g = sd_graph_new();
    sd_tensor *a = sd_tensor_zeros(g, 2, (int[]){2, 3});
    sd_tensor *b = sd_tensor_zeros(g, 1, (int[]){4});
    sd_tensor *c = sd_tensor_zeros(g, 4, (int[]){3, 5, 7, 9});
    sd_tensor *d = sd_tensor_zeros(g, 4, (int[]){3, 2, 1, 1});
    for (int op = 0; op < 4; op++) {
        sd_graph_reset(g);
        ck_assert_ptr_null(binops[op](g, a, b));
        ck_assert_int_eq(sd_graph_status(g), SD_ERR_INVALID);
        const char *msg = sd_error_message();
        ck_assert_msg(strstr(msg, binop_names[op]) && strstr(msg, "[2, 3]") && strstr(msg, "[4]"),
                      "message: %s", msg);
        ck_assert_ptr_null(binops[op](g, c, d)); /* channel 5 vs 2 */
        ck_assert_ptr_nonnull(strstr(sd_error_message(), "[3, 2, 1, 1]"));
        ck_assert_ptr_null(binops[op](g, NULL, a));
        ck_assert_ptr_null(binops[op](g, a, NULL));
        ck_assert_ptr_null(binops[op](g, NULL, NULL));
    }
    ck_assert_ptr_null(sd_affine_scalar(g, NULL, 2.0f, 1.0f));
    ck_assert_ptr_null(sd_scale(g, NULL, 2.0f));
    ck_assert_ptr_null(sd_shift(g, NULL, 2.0f));
    sd_graph_free(g);
}
END_TEST

/* Without any source requiring grad, nothing is recorded. */
START_TEST(test_no_grad_not_recorded)
{
    sd_graph *g = sd_graph_new();
    sd_tensor *a = rand_tensor(g, 4, (int[]){3, 5, 7, 9}, -1.0f, 1.0f);
    sd_tensor *b = rand_tensor(g, 4, (int[]){3, 1, 1, 1}, -1.0f, 1.0f);
    sd_tensor *y = sd_mul(g, a, b);
    ck_assert_ptr_nonnull(y);
    ck_assert(!sd__recorded(y));
    check_against_reference(OP_MUL, a, b, y, NULL, NULL, NULL);
    sd_graph_free(g);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("elementwise");
    TCase *tc = tcase_create("elementwise");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_forward_backward_reference);
    tcase_add_test(tc, test_large_parallel_paths);
    tcase_add_test(tc, test_thread_determinism);
    tcase_add_loop_test(tc, test_gradcheck_broadcast, 0, 4);
    tcase_add_test(tc, test_gradcheck_same_operand);
    tcase_add_test(tc, test_affine);
    tcase_add_test(tc, test_add_into);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_no_grad_not_recorded);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

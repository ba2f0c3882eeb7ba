/* test_gradcheck.c - the gradient-check harness (gradcheck.c) catches wrong
 * backward rules.
 *
 * Every op suite trusts gc_check to fail on a wrong gradient, so the harness
 * itself is tested here on an op with a known derivative, built with the
 * op-implementation API (sd__op_output): out = a * b^2 + 0.5 * roll(a), i.e.
 *
 *     out[i] = a[i] * b[i]^2 + 0.5 * a[(i + 1) mod n]
 *
 * (the roll couples neighbours, so a rule that only handles the diagonal
 * is wrong). Its backward comes in a correct version, which must pass, and
 * deliberately wrong ones, each of which must fail with the worst element
 * on the input that carries the error:
 *   scaled by 1.02 (2%: the harness resolves ~1.1% with its defaults
 *   rtol 1e-2 + atol 1e-3 * max|grad|; see gradcheck.h), the wrong sign,
 *   a dropped term, the last element's gradient sent to its neighbour,
 *   the error on the second input only, no gradient at all, a NaN.
 * Checked against mutants of gradcheck.c (a looser tolerance, a numeric
 * derivative that echoes the analytic one, no finiteness check, half the
 * elements probed, the second input skipped): each makes this suite fail.
 */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "core/graph_internal.h"

enum fault {
    GOOD,          /* the correct rule */
    SCALED,        /* da and db times 1.02 */
    WRONG_SIGN,    /* da negated */
    DROPPED_TERM,  /* da lacks the roll's 0.5 * dy[i - 1] */
    WRONG_ELEMENT, /* db[n-1]'s contribution added to db[n-2] instead */
    ONLY_B,        /* da right, db times 1.5 */
    NO_GRADIENT,   /* backward does nothing */
    NAN_GRADIENT,  /* db[1] = NaN */
};

static sd_status mix_backward(sd_graph *g, sd_tensor *out)
{
    (void)g;
    const sd_tensor *a = out->src[0], *b = out->src[1];
    const float *dy = out->grad;
    int n = (int)out->numel;
    enum fault f = (enum fault)out->params.i[0];
    if (f == NO_GRADIENT) return SD_OK;
    float scale = f == SCALED ? 1.02f : 1.0f;
    if (a->grad)
        for (int i = 0; i < n; i++) {
            float d = dy[i] * b->data[i] * b->data[i];
            if (f != DROPPED_TERM) d += 0.5f * dy[(i - 1 + n) % n];
            a->grad[i] += (f == WRONG_SIGN ? -d : d) * scale;
        }
    if (b->grad)
        for (int i = 0; i < n; i++) {
            float d = dy[i] * 2.0f * a->data[i] * b->data[i] * scale;
            if (f == ONLY_B) d *= 1.5f;
            int at = f == WRONG_ELEMENT && i == n - 1 ? n - 2 : i;
            b->grad[at] += d;
        }
    if (f == NAN_GRADIENT && b->grad) b->grad[1] = NAN;
    return SD_OK;
}

static sd_tensor *build_mix(sd_graph *g, sd_tensor **in, void *ctx)
{
    const enum fault *f = ctx;
    sd_tensor *a = in[0], *b = in[1];
    sd_tensor *out = sd__op_output(g, "test_mix", a->ndim, a->shape, mix_backward, 2,
                                   (sd_tensor *const[]){a, b});
    if (!out) return NULL;
    out->params.i[0] = (int)*f;
    int n = (int)a->numel;
    for (int i = 0; i < n; i++)
        out->data[i] = a->data[i] * b->data[i] * b->data[i] + 0.5f * a->data[(i + 1) % n];
    return out;
}

/* 3 x 7 inputs in [0.5, 1.5] (gradients of order 1, none near zero, so the
 * 2% scale error is 2% of a gradient of size ~max|grad| somewhere); 21
 * elements <= max_probe 64, so every element is probed. */
static gc_result run(enum fault f)
{
    gc_input in[2] = {
        {2, {3, 7}, 0.5f, 1.5f, 0.0f, false},
        {2, {3, 7}, 0.5f, 1.5f, 0.0f, false},
    };
    return gc_check(build_mix, &f, 2, in, NULL);
}

START_TEST(test_correct_backward_passes)
{
    gc_result r = run(GOOD);
    ck_assert_msg(r.ok, "%s", r.message);
    /* Well inside the tolerance, not just under it: error model of gradcheck.h. */
    ck_assert_msg(r.max_rel_err < 0.1, "%s", r.message);
    ck_assert_ptr_nonnull(strstr(r.message, "gradcheck ok"));
}
END_TEST

/* Each wrong rule fails, blaming the input that carries the error. */
static const struct {
    enum fault f;
    int input; /* expected worst input, -1: not checked */
    const char *message;
} wrong[] = {
    {SCALED, -1, "FAILED"},
    {WRONG_SIGN, 0, "FAILED"},
    {DROPPED_TERM, 0, "FAILED"},
    {WRONG_ELEMENT, 1, "FAILED"},
    {ONLY_B, 1, "FAILED"},
    {NO_GRADIENT, -1, "FAILED"},
    {NAN_GRADIENT, -1, "input 1: non-finite analytic gradient at 1"},
};

START_TEST(test_wrong_backward_fails)
{
    gc_result r = run(wrong[_i].f);
    ck_assert_msg(!r.ok, "fault %d passed: %s", (int)wrong[_i].f, r.message);
    ck_assert_msg(strstr(r.message, wrong[_i].message) != NULL, "fault %d: message '%s'",
                  (int)wrong[_i].f, r.message);
    if (wrong[_i].input >= 0)
        ck_assert_msg(r.worst_input == wrong[_i].input, "fault %d blamed input %d: %s",
                      (int)wrong[_i].f, r.worst_input, r.message);
}
END_TEST

/* The element sent to the wrong place is the one reported (b[n-2] or
 * b[n-1]: the last two, so a harness that probes only some elements of a
 * small input misses them). */
START_TEST(test_wrong_element_located)
{
    gc_result r = run(WRONG_ELEMENT);
    ck_assert(!r.ok);
    ck_assert_msg(r.worst_index == 19 || r.worst_index == 20, "%s", r.message);
}
END_TEST

/* An input held constant (no_grad) is not checked: a wrong da does not
 * matter when only b is differentiated, and a wrong db still does. */
START_TEST(test_no_grad_input_skipped)
{
    gc_input in[2] = {
        {2, {3, 7}, 0.5f, 1.5f, 0.0f, true},
        {2, {3, 7}, 0.5f, 1.5f, 0.0f, false},
    };
    enum fault f = WRONG_SIGN;
    gc_result r = gc_check(build_mix, &f, 2, in, NULL);
    ck_assert_msg(r.ok, "%s", r.message);
    f = ONLY_B;
    r = gc_check(build_mix, &f, 2, in, NULL);
    ck_assert_msg(!r.ok && r.worst_input == 1, "%s", r.message);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("gradcheck");
    TCase *tc = tcase_create("harness");
    tcase_add_test(tc, test_correct_backward_passes);
    tcase_add_loop_test(tc, test_wrong_backward_fails, 0, (int)(sizeof wrong / sizeof wrong[0]));
    tcase_add_test(tc, test_wrong_element_located);
    tcase_add_test(tc, test_no_grad_input_skipped);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

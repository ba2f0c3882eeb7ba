/* test_ode.c - the generic ODE integrators (samplers/ode.c) on problems with
 * known solutions: observed order of convergence of Euler / Heun / RK4, RK45
 * global error against its tolerance, step rejection, exact evaluation
 * counts, integration backwards in time, per-group error norms, the step
 * observer, allocation-free stepping and error reporting. */
#include <check.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sd/ode.h"

/* ---- test problems -------------------------------------------------------- */

typedef struct prob {
    long calls;
    int fail_at;      /* return an error on this call (0: never) */
    int nan_at;       /* write NaN on this call (0: never) */
    double lambda;
} prob;

/* y' = -2 t y^2, y(0) = 1: y(t) = 1 / (1 + t^2). */
static sd_status rhs_rational(void *ctx, double t, const float *y, float *dy)
{
    prob *p = ctx;
    p->calls++;
    dy[0] = (float)(-2.0 * t * (double)y[0] * (double)y[0]);
    return SD_OK;
}
static double sol_rational(double t) { return 1.0 / (1.0 + t * t); }

/* Harmonic oscillator y0' = y1, y1' = -y0 (and a second, identical copy
 * scaled by lambda in time when n = 4): exact rotation. */
static sd_status rhs_osc(void *ctx, double t, const float *y, float *dy)
{
    prob *p = ctx;
    (void)t;
    p->calls++;
    if (p->fail_at && p->calls == p->fail_at) return sd_error(SD_ERR_IO, "rhs failed on purpose");
    dy[0] = y[1];
    dy[1] = -y[0];
    if (p->nan_at && p->calls >= p->nan_at) dy[0] = NAN;
    return SD_OK;
}

/* 16 independent systems in one state: y' = -2 t y^2 (hard), then 15 z' = 0. */
static sd_status rhs_pair(void *ctx, double t, const float *y, float *dy)
{
    prob *p = ctx;
    p->calls++;
    dy[0] = (float)(-2.0 * t * (double)y[0] * (double)y[0]);
    for (int i = 1; i < 16; i++) dy[i] = 0.0f;
    return SD_OK;
}

/* y' = lambda y. */
static sd_status rhs_exp(void *ctx, double t, const float *y, float *dy)
{
    prob *p = ctx;
    (void)t;
    p->calls++;
    dy[0] = (float)(p->lambda * y[0]);
    return SD_OK;
}

static double solve_rational_err(sd_ode_method m, int steps, long *calls, sd_ode_stats *st)
{
    sd_ode_opts o = sd_ode_defaults(m);
    o.steps = steps;
    prob p = {0};
    float y = 1.0f;
    ck_assert_int_eq(sd_ode_solve(&o, rhs_rational, &p, 0.0, 2.0, &y, 1, NULL, st), SD_OK);
    if (calls) *calls = p.calls;
    return fabs((double)y - sol_rational(2.0));
}

/* ---- fixed-step methods --------------------------------------------------- */

START_TEST(test_fixed_order)
{
    /* Observed order p = log2(e(N) / e(2N)). Step counts are chosen so that
     * the errors stay far above float rounding (~1e-7): Euler 1e-2..1e-3,
     * Heun 1e-3..1e-4, RK4 1e-4..1e-6. The bands (+-0.2) leave room for the
     * pre-asymptotic terms and reject any method one order off. */
    struct { sd_ode_method m; int n; double p; } cases[] = {
        {SD_ODE_EULER, 40, 1.0}, {SD_ODE_HEUN, 20, 2.0}, {SD_ODE_RK4, 10, 4.0}};
    char msg[512] = "";
    int bad = 0;
    for (int c = 0; c < 3; c++) {
        sd_ode_stats s1, s2;
        double e1 = solve_rational_err(cases[c].m, cases[c].n, NULL, &s1);
        double e2 = solve_rational_err(cases[c].m, 2 * cases[c].n, NULL, &s2);
        double p = log2(e1 / e2);
        if (!(fabs(p - cases[c].p) < 0.2)) {
            bad++;
            snprintf(msg + strlen(msg), sizeof msg - strlen(msg), "%s: order %.3f (e %.3g, %.3g) ",
                     sd_ode_method_name(cases[c].m), p, e1, e2);
        }
    }
    ck_assert_msg(bad == 0, "%s", msg);
}
END_TEST

START_TEST(test_fixed_nfe_exact)
{
    int per[] = {1, 2, 4};
    sd_ode_method ms[] = {SD_ODE_EULER, SD_ODE_HEUN, SD_ODE_RK4};
    int bad = 0;
    for (int c = 0; c < 3; c++) {
        for (int n = 1; n <= 33; n += 8) {
            long calls;
            sd_ode_stats st;
            solve_rational_err(ms[c], n, &calls, &st);
            if (st.nfe != (int64_t)per[c] * n || calls != st.nfe || st.accepted != n) bad++;
        }
    }
    ck_assert_int_eq(bad, 0);
}
END_TEST

/* ---- RK45 ------------------------------------------------------------------- */

START_TEST(test_rk45_error_tracks_tolerance)
{
    /* Oscillator over 3 periods: the global error of a tolerance-controlled
     * method is not bounded by tol, but for a non-stiff problem over a few
     * periods it stays within a small multiple of it; we require < 20 tol,
     * and strictly smaller errors and more steps as tol drops 100-fold. */
    double tols[] = {1e-3, 1e-5};
    double err[2];
    int64_t steps[2];
    for (int i = 0; i < 2; i++) {
        sd_ode_opts o = sd_ode_defaults(SD_ODE_RK45);
        o.rtol = o.atol = tols[i];
        prob p = {0};
        float y[2] = {1.0f, 0.0f};
        double T = 6 * M_PI;
        sd_ode_stats st;
        ck_assert_int_eq(sd_ode_solve(&o, rhs_osc, &p, 0.0, T, y, 2, NULL, &st), SD_OK);
        err[i] = hypot(y[0] - cos(T), y[1] + sin(T));
        steps[i] = st.accepted;
        ck_assert_msg(err[i] < 20 * tols[i], "tol %g: error %g", tols[i], err[i]);
        ck_assert_int_eq(p.calls, st.nfe);
    }
    ck_assert_msg(err[1] < err[0] / 10, "errors %g, %g", err[0], err[1]);
    ck_assert_int_gt(steps[1], 2 * steps[0]);
}
END_TEST

START_TEST(test_rk45_nfe_and_rejections)
{
    /* A first step of 1 on y' = -20 y is far too large: it must be rejected
     * (more than once: the factor per rejection is at least 0.2), and the
     * solution must still meet the tolerance. Counting: 1 first stage + 6 per
     * attempt, exactly; +1 for the automatic initial step. */
    sd_ode_opts o = sd_ode_defaults(SD_ODE_RK45);
    o.h0 = 1.0;
    prob p = {.lambda = -20.0};
    float y = 1.0f;
    sd_ode_stats st;
    ck_assert_int_eq(sd_ode_solve(&o, rhs_exp, &p, 0.0, 1.0, &y, 1, NULL, &st), SD_OK);
    ck_assert_int_ge(st.rejected, 2);
    ck_assert_int_eq(st.nfe, 1 + 6 * (st.accepted + st.rejected));
    ck_assert_int_eq(p.calls, st.nfe);
    ck_assert_msg(fabs(y - exp(-20.0)) < 1e-5 + 1e-5 * exp(-20.0) * 50, "y = %g", y);

    o.h0 = 0.0;
    p.calls = 0;
    y = 1.0f;
    ck_assert_int_eq(sd_ode_solve(&o, rhs_exp, &p, 0.0, 1.0, &y, 1, NULL, &st), SD_OK);
    ck_assert_int_eq(st.nfe, 2 + 6 * (st.accepted + st.rejected));
    ck_assert_int_eq(p.calls, st.nfe);
    /* Hairer's initial step for y' = -20 y, y0 = 1, tol 1e-5: d0 = d1/20 so
     * h0 = 0.01 / 20; the selected step must be well below 1 and above 1e-6. */
    ck_assert(fabs(st.h_first) > 1e-6 && fabs(st.h_first) < 0.1);
}
END_TEST

START_TEST(test_rk45_backward_and_round_trip)
{
    /* y' = y from t = 1 (y = e) back to t = 0 must give 1; and oscillator
     * forward 0 -> 5 then back 5 -> 0 returns to the start. */
    sd_ode_opts o = sd_ode_defaults(SD_ODE_RK45);
    o.rtol = o.atol = 1e-6;
    prob p = {.lambda = 1.0};
    float y = (float)M_E;
    sd_ode_stats st;
    ck_assert_int_eq(sd_ode_solve(&o, rhs_exp, &p, 1.0, 0.0, &y, 1, NULL, &st), SD_OK);
    ck_assert_msg(fabs(y - 1.0) < 2e-5, "y(0) = %.8f", y);
    ck_assert(st.h_last < 0);
    float z[2] = {0.3f, -0.7f};
    prob q = {0};
    ck_assert_int_eq(sd_ode_solve(&o, rhs_osc, &q, 0.0, 5.0, z, 2, NULL, NULL), SD_OK);
    ck_assert_int_eq(sd_ode_solve(&o, rhs_osc, &q, 5.0, 0.0, z, 2, NULL, NULL), SD_OK);
    ck_assert_msg(fabs(z[0] - 0.3) < 2e-5 && fabs(z[1] + 0.7) < 2e-5, "%g %g", z[0], z[1]);
    /* fixed-step backwards too: RK4 on y' = y */
    sd_ode_opts r = sd_ode_defaults(SD_ODE_RK4);
    r.steps = 50;
    y = (float)M_E;
    ck_assert_int_eq(sd_ode_solve(&r, rhs_exp, &p, 1.0, 0.0, &y, 1, NULL, NULL), SD_OK);
    ck_assert_msg(fabs(y - 1.0) < 1e-6, "rk4 y(0) = %.8f", y);
}
END_TEST

START_TEST(test_rk45_groups_take_worst_member)
{
    /* State [hard, 15 trivial]: with 16 groups the norm is the hard member's
     * own, so the step sequence equals solving it alone; one RMS over all 16
     * divides the error by 4 (steps ~4^(1/5) longer) and takes fewer steps. */
    sd_ode_opts o = sd_ode_defaults(SD_ODE_RK45);
    o.rtol = o.atol = 1e-6;
    prob p = {0};
    float alone = 1.0f, pair[16], pair1[16];
    for (int i = 0; i < 16; i++) pair[i] = pair1[i] = 1.0f;
    sd_ode_stats sa, sg, s1;
    ck_assert_int_eq(sd_ode_solve(&o, rhs_rational, &p, 0.0, 3.0, &alone, 1, NULL, &sa), SD_OK);
    o.n_groups = 16;
    ck_assert_int_eq(sd_ode_solve(&o, rhs_pair, &p, 0.0, 3.0, pair, 16, NULL, &sg), SD_OK);
    o.n_groups = 1;
    ck_assert_int_eq(sd_ode_solve(&o, rhs_pair, &p, 0.0, 3.0, pair1, 16, NULL, &s1), SD_OK);
    ck_assert_int_eq(sg.accepted, sa.accepted);
    ck_assert_int_eq(sg.rejected, sa.rejected);
    ck_assert_float_eq(pair[0], alone);
    ck_assert_int_le(s1.accepted, sa.accepted);
    ck_assert_int_lt(s1.nfe, sg.nfe);
}
END_TEST

/* ---- observer, memory and errors ------------------------------------------- */

typedef struct obs {
    int calls;
    double last_t;
    int stop_at;
} obs;

static sd_status on_step(void *ctx, double t, const float *y)
{
    obs *o = ctx;
    (void)y;
    o->calls++;
    o->last_t = t;
    if (o->stop_at && o->calls == o->stop_at) return sd_error(SD_ERR_INVALID, "stop");
    return SD_OK;
}

START_TEST(test_observer_and_no_alloc)
{
    sd_ode_work *w;
    ck_assert_int_eq(sd_ode_work_new(2, &w), SD_OK);
    sd_ode_method ms[] = {SD_ODE_EULER, SD_ODE_HEUN, SD_ODE_RK4, SD_ODE_RK45};
    for (int i = 0; i < 4; i++) {
        sd_ode_opts o = sd_ode_defaults(ms[i]);
        o.steps = 7;
        obs ob = {0};
        o.on_step = on_step;
        o.on_step_ctx = &ob;
        prob p = {0};
        float y[2] = {1.0f, 0.0f};
        sd_ode_stats st;
        uint64_t before = sd_alloc_count();
        ck_assert_int_eq(sd_ode_solve(&o, rhs_osc, &p, 0.0, 2.0, y, 2, w, &st), SD_OK);
        ck_assert_int_eq(sd_alloc_count() - before, 0);
        ck_assert_int_eq(ob.calls, st.accepted);
        ck_assert(ob.last_t == 2.0);
        /* an observer error stops the run and is passed through */
        ob = (obs){.stop_at = 2};
        y[0] = 1.0f;
        y[1] = 0.0f;
        ck_assert_int_eq(sd_ode_solve(&o, rhs_osc, &p, 0.0, 2.0, y, 2, w, &st), SD_ERR_INVALID);
        ck_assert_int_eq(ob.calls, 2);
    }
    sd_ode_work_free(w);
}
END_TEST

START_TEST(test_errors)
{
    float y[2] = {1.0f, 0.0f};
    prob p = {0};
    sd_ode_opts o = sd_ode_defaults(SD_ODE_HEUN);
    o.steps = 0;
    ck_assert_int_eq(sd_ode_solve(&o, rhs_osc, &p, 0, 1, y, 2, NULL, NULL), SD_ERR_INVALID);
    o = sd_ode_defaults(SD_ODE_RK45);
    o.rtol = 0;
    ck_assert_int_eq(sd_ode_solve(&o, rhs_osc, &p, 0, 1, y, 2, NULL, NULL), SD_ERR_INVALID);
    o = sd_ode_defaults(SD_ODE_RK45);
    o.n_groups = 3;
    ck_assert_int_eq(sd_ode_solve(&o, rhs_osc, &p, 0, 1, y, 2, NULL, NULL), SD_ERR_INVALID);
    ck_assert_int_eq(sd_ode_solve(&o, rhs_osc, &p, 0, NAN, y, 2, NULL, NULL), SD_ERR_INVALID);
    /* t0 == t1: nothing to do, no evaluation */
    o = sd_ode_defaults(SD_ODE_RK45);
    sd_ode_stats st;
    ck_assert_int_eq(sd_ode_solve(&o, rhs_osc, &p, 0.5, 0.5, y, 2, NULL, &st), SD_OK);
    ck_assert_int_eq(st.nfe, 0);
    /* a failing right-hand side: its status comes back; y keeps the last
     * accepted state (finite) */
    p = (prob){.fail_at = 20};
    ck_assert_int_eq(sd_ode_solve(&o, rhs_osc, &p, 0, 10, y, 2, NULL, NULL), SD_ERR_IO);
    ck_assert(isfinite(y[0]) && isfinite(y[1]));
    /* NaN in the derivative: numeric error, for both kinds of method */
    p = (prob){.nan_at = 5};
    ck_assert_int_eq(sd_ode_solve(&o, rhs_osc, &p, 0, 10, y, 2, NULL, NULL), SD_ERR_NUMERIC);
    sd_ode_opts e = sd_ode_defaults(SD_ODE_EULER);
    p = (prob){.nan_at = 5};
    y[0] = 1.0f;
    y[1] = 0.0f;
    ck_assert_int_eq(sd_ode_solve(&e, rhs_osc, &p, 0, 10, y, 2, NULL, NULL), SD_ERR_NUMERIC);
    /* evaluation budget */
    o.max_nfe = 30;
    p = (prob){0};
    y[0] = 1.0f;
    y[1] = 0.0f;
    ck_assert_int_eq(sd_ode_solve(&o, rhs_osc, &p, 0, 100, y, 2, NULL, &st), SD_ERR_NUMERIC);
    ck_assert_int_le(p.calls, 30);
    /* work of the wrong size */
    sd_ode_work *w;
    ck_assert_int_eq(sd_ode_work_new(3, &w), SD_OK);
    ck_assert_int_eq(sd_ode_solve(&e, rhs_osc, &p, 0, 1, y, 2, w, NULL), SD_ERR_INVALID);
    sd_ode_work_free(w);
    sd_ode_method m;
    ck_assert(sd_ode_method_parse("dopri5", &m) && m == SD_ODE_RK45);
    ck_assert(!sd_ode_method_parse("rk23", &m));
}
END_TEST

/* Issue 12: tolerances below what a float32 state can meet are refused
 * before any evaluation, and RK45's default budget stops a solve that would
 * run on, saying so with the time reached; fixed-step methods do the work
 * they are asked for. */
START_TEST(test_rk45_floor_and_budget)
{
    sd_ode_opts o = sd_ode_defaults(SD_ODE_RK45);
    o.rtol = o.atol = 1e-12;
    float y[2] = {1.0f, 0.0f};
    prob p = {0};
    ck_assert_int_eq(sd_ode_solve(&o, rhs_osc, &p, 0, 1, y, 2, NULL, NULL), SD_ERR_INVALID);
    ck_assert_msg(strstr(sd_error_message(), "float32"), "%s", sd_error_message());
    ck_assert_int_eq(p.calls, 0);
    o.rtol = 1e-6;
    o.atol = 1e-13;
    ck_assert_int_eq(sd_ode_solve(&o, rhs_osc, &p, 0, 1, y, 2, NULL, NULL), SD_ERR_INVALID);
    ck_assert_int_eq(p.calls, 0);
    /* at the floor a solve works */
    o.atol = 1e-12;
    ck_assert_int_eq(sd_ode_solve(&o, rhs_osc, &p, 0, 1, y, 2, NULL, NULL), SD_OK);
    /* ~160000 periods need millions of evaluations: the default budget of
     * 100000 stops it */
    sd_ode_stats st;
    p = (prob){0};
    y[0] = 1.0f;
    y[1] = 0.0f;
    ck_assert_int_eq(sd_ode_solve(&o, rhs_osc, &p, 0, 1e6, y, 2, NULL, &st), SD_ERR_NUMERIC);
    ck_assert_int_le(st.nfe, 100000);
    ck_assert_int_ge(st.nfe, 100000 - 7);
    ck_assert_msg(strstr(sd_error_message(), "budget of 100000") &&
                  strstr(sd_error_message(), "at t = "), "%s", sd_error_message());
    ck_assert(isfinite(y[0]) && isfinite(y[1]));
    /* a fixed-step method has no default budget: 200000 Euler steps run */
    sd_ode_opts e = sd_ode_defaults(SD_ODE_EULER);
    e.steps = 200000;
    p = (prob){0};
    ck_assert_int_eq(sd_ode_solve(&e, rhs_osc, &p, 0, 1, y, 2, NULL, &st), SD_OK);
    ck_assert_int_eq(st.nfe, 200000);
}
END_TEST

int main(void)
{
    Suite *su = suite_create("ode");
    TCase *tc = tcase_create("ode");
    tcase_add_test(tc, test_fixed_order);
    tcase_add_test(tc, test_fixed_nfe_exact);
    tcase_add_test(tc, test_rk45_error_tracks_tolerance);
    tcase_add_test(tc, test_rk45_nfe_and_rejections);
    tcase_add_test(tc, test_rk45_backward_and_round_trip);
    tcase_add_test(tc, test_rk45_groups_take_worst_member);
    tcase_add_test(tc, test_observer_and_no_alloc);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_rk45_floor_and_budget);
    suite_add_tcase(su, tc);
    SRunner *sr = srunner_create(su);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed != 0;
}

/* ode.c - fixed-step Euler / Heun / RK4 and adaptive Dormand-Prince RK45 over
 * a flat float state; see ode.h for the contract. The RK45 step control
 * follows scipy.integrate.solve_ivp (scipy/integrate/_ivp/rk.py) so that
 * tolerances mean the same thing as in Song et al.'s reference sampler, which
 * calls solve_ivp(method="RK45", rtol=atol=1e-5).
 *
 * Vocabulary: n state size, G number of error groups, k[j] stage derivatives.
 */
#include "sd/ode.h"

#include <math.h>
#include <stdbool.h>
#include <string.h>

struct sd_ode_work {
    size_t n;
    float *k[7];   /* stage derivatives */
    float *ys;     /* stage state */
    float *ynew;   /* candidate state */
};

sd_ode_opts sd_ode_defaults(sd_ode_method method)
{
    sd_ode_opts o;
    memset(&o, 0, sizeof o);
    o.method = method;
    o.steps = 100;
    o.rtol = 1e-5;
    o.atol = 1e-5;
    return o;
}

int sd_ode_method_parse(const char *name, sd_ode_method *out)
{
    static const struct { const char *s; sd_ode_method m; } tab[] = {
        {"euler", SD_ODE_EULER}, {"heun", SD_ODE_HEUN}, {"rk4", SD_ODE_RK4},
        {"rk45", SD_ODE_RK45},   {"dopri5", SD_ODE_RK45},
    };
    for (size_t i = 0; i < sizeof tab / sizeof *tab; i++)
        if (strcmp(name, tab[i].s) == 0) {
            *out = tab[i].m;
            return 1;
        }
    return 0;
}

const char *sd_ode_method_name(sd_ode_method m)
{
    switch (m) {
    case SD_ODE_EULER: return "euler";
    case SD_ODE_HEUN: return "heun";
    case SD_ODE_RK4: return "rk4";
    case SD_ODE_RK45: return "rk45";
    }
    return "?";
}

void sd_ode_work_free(sd_ode_work *w)
{
    if (!w) return;
    for (int j = 0; j < 7; j++) sd_free(w->k[j]);
    sd_free(w->ys);
    sd_free(w->ynew);
    sd_free(w);
}

sd_status sd_ode_work_new(size_t n, sd_ode_work **out)
{
    *out = NULL;
    size_t bytes;
    if (sd_mul_size(n ? n : 1, sizeof(float), &bytes))
        return sd_error(SD_ERR_NOMEM, "ode: state of %zu floats overflows", n);
    sd_ode_work *w = sd_calloc(1, sizeof *w);
    if (!w) return SD_ERR_NOMEM;
    w->n = n;
    bool ok = true;
    for (int j = 0; j < 7; j++) ok = (w->k[j] = sd_malloc(bytes)) && ok;
    ok = (w->ys = sd_malloc(bytes)) && ok;
    ok = (w->ynew = sd_malloc(bytes)) && ok;
    if (!ok) {
        sd_ode_work_free(w);
        return SD_ERR_NOMEM;
    }
    *out = w;
    return SD_OK;
}

/* Elementwise loops are split across threads only when the state is large
 * enough to pay for it; every element is computed the same way either way. */
#define SD_ODE_PAR_MIN 65536

/* out = y + h * sum_j c[j] k[j] (m terms), accumulated in double. */
static void combine(float *out, const float *y, double h, const double *c, float *const *k, int m,
                    size_t n)
{
    long nn = (long)n;
#pragma omp parallel for schedule(static) if (n >= SD_ODE_PAR_MIN)
    for (long i = 0; i < nn; i++) {
        double acc = 0.0;
        for (int j = 0; j < m; j++) acc += c[j] * (double)k[j][i];
        out[i] = (float)((double)y[i] + h * acc);
    }
}

static bool all_finite(const float *y, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isfinite(y[i])) return false;
    return true;
}

/* Error norm: RMS of v_i / scale_i within each of G groups, max over groups.
 * v = h * sum_j e[j] k[j] (or, when k == NULL, v = a directly); scale_i =
 * atol + rtol * max(|y_i|, |y2_i|) (y2 may be NULL). Each group is summed by
 * one thread in index order, so the value does not depend on the thread count. */
static double err_norm(const float *y, const float *y2, const float *a, double h, const double *e,
                       float *const *k, int m, double rtol, double atol, size_t n, size_t G)
{
    size_t gs = n / G;
    double worst = 0.0;
    long GG = (long)G;
#pragma omp parallel for schedule(static) reduction(max : worst) if (n >= SD_ODE_PAR_MIN && G > 1)
    for (long g = 0; g < GG; g++) {
        double ss = 0.0;
        for (size_t i = (size_t)g * gs; i < (size_t)(g + 1) * gs; i++) {
            double v;
            if (k) {
                double acc = 0.0;
                for (int j = 0; j < m; j++) acc += e[j] * (double)k[j][i];
                v = h * acc;
            } else {
                v = a[i];
            }
            double mag = fabs((double)y[i]);
            if (y2 && fabs((double)y2[i]) > mag) mag = fabs((double)y2[i]);
            double r = v / (atol + rtol * mag);
            ss += r * r;
        }
        double rms = gs ? sqrt(ss / (double)gs) : 0.0;
        if (!(rms <= worst)) worst = isnan(rms) ? INFINITY : rms;
    }
    return worst;
}

static sd_status call(sd_ode_rhs f, void *ctx, double t, const float *y, float *dy,
                      sd_ode_stats *st, int64_t max_nfe)
{
    if (st->nfe >= max_nfe)
        return sd_error(SD_ERR_NUMERIC, "ode: evaluation budget of %lld (max_nfe) used up at "
                        "t = %.9g after %lld steps and %lld rejections; the solve was abandoned "
                        "(loosen rtol/atol)", (long long)max_nfe, t, (long long)st->accepted,
                        (long long)st->rejected);
    st->nfe++;
    return f(ctx, t, y, dy);
}

/* ---- fixed-step methods ------------------------------------------------ */

static sd_status solve_fixed(const sd_ode_opts *o, sd_ode_rhs f, void *ctx, double t0, double t1,
                             float *y, size_t n, sd_ode_work *w, sd_ode_stats *st, int64_t max_nfe)
{
    double h = (t1 - t0) / o->steps;
    float **k = w->k;
    sd_status s = SD_OK;
    st->h_first = h;
    for (int i = 0; i < o->steps; i++) {
        /* t from the step index, not by accumulation, so the last step ends at t1. */
        double t = t0 + (t1 - t0) * ((double)i / o->steps);
        double tn = i + 1 == o->steps ? t1 : t0 + (t1 - t0) * ((double)(i + 1) / o->steps);
        if (o->times) { /* a caller's grid (samplers/schedule.c) */
            t = o->times[i];
            tn = o->times[i + 1];
        }
        double hh = tn - t;
        if ((s = call(f, ctx, t, y, k[0], st, max_nfe)) != SD_OK) return s;
        if (o->method == SD_ODE_EULER) {
            combine(y, y, hh, (const double[]){1.0}, k, 1, n);
        } else if (o->method == SD_ODE_HEUN) {
            /* y' = y + h/2 (f(t, y) + f(t + h, y + h f(t, y))) */
            combine(w->ys, y, hh, (const double[]){1.0}, k, 1, n);
            if ((s = call(f, ctx, tn, w->ys, k[1], st, max_nfe)) != SD_OK) return s;
            combine(y, y, hh, (const double[]){0.5, 0.5}, k, 2, n);
        } else {
            /* classical RK4: stages at t, t + h/2, t + h/2, t + h */
            combine(w->ys, y, hh, (const double[]){0.5}, k, 1, n);
            if ((s = call(f, ctx, t + 0.5 * hh, w->ys, k[1], st, max_nfe)) != SD_OK) return s;
            combine(w->ys, y, hh, (const double[]){0.0, 0.5}, k, 2, n);
            if ((s = call(f, ctx, t + 0.5 * hh, w->ys, k[2], st, max_nfe)) != SD_OK) return s;
            combine(w->ys, y, hh, (const double[]){0.0, 0.0, 1.0}, k, 3, n);
            if ((s = call(f, ctx, tn, w->ys, k[3], st, max_nfe)) != SD_OK) return s;
            combine(y, y, hh, (const double[]){1.0 / 6, 1.0 / 3, 1.0 / 3, 1.0 / 6}, k, 4, n);
        }
        if (!all_finite(y, n))
            return sd_error(SD_ERR_NUMERIC, "ode (%s): state is not finite at t = %.9g",
                            sd_ode_method_name(o->method), tn);
        st->accepted++;
        st->h_last = hh;
        if (o->on_step && (s = o->on_step(o->on_step_ctx, tn, y)) != SD_OK) return s;
    }
    return SD_OK;
}

/* ---- Dormand-Prince 5(4) ------------------------------------------------ */

/* Butcher tableau (Dormand & Prince 1980, Table 2; Hairer et al. II.5). */
static const double DP_C[7] = {0.0, 1.0 / 5, 3.0 / 10, 4.0 / 5, 8.0 / 9, 1.0, 1.0};
static const double DP_A[5][5] = {
    {1.0 / 5},
    {3.0 / 40, 9.0 / 40},
    {44.0 / 45, -56.0 / 15, 32.0 / 9},
    {19372.0 / 6561, -25360.0 / 2187, 64448.0 / 6561, -212.0 / 729},
    {9017.0 / 3168, -355.0 / 33, 46732.0 / 5247, 49.0 / 176, -5103.0 / 18656},
};
/* 5th-order weights (= the last row of A: FSAL) and the difference between
 * the 5th- and embedded 4th-order solutions over the 7 stages. */
static const double DP_B[6] = {35.0 / 384, 0.0, 500.0 / 1113, 125.0 / 192, -2187.0 / 6784,
                               11.0 / 84};
static const double DP_E[7] = {-71.0 / 57600, 0.0, 71.0 / 16695, -71.0 / 1920,
                               17253.0 / 339200, -22.0 / 525, 1.0 / 40};

enum { DP_ORDER_ERR = 4 };
static const double SAFETY = 0.9, MIN_FACTOR = 0.2, MAX_FACTOR = 10.0;

/* Hairer, Norsett & Wanner, "Solving ODEs I", II.4 "Automatic step size
 * control", starting step: h0 = 0.01 ||y0|| / ||f0||, one Euler step to
 * estimate the second derivative, h1 = (0.01 / max(d1, d2))^(1/(p+1)). */
static sd_status initial_step(const sd_ode_opts *o, sd_ode_rhs f, void *ctx, double t0, double t1,
                              const float *y, size_t n, size_t G, sd_ode_work *w, sd_ode_stats *st,
                              int64_t max_nfe, double *h_out)
{
    double span = fabs(t1 - t0), dir = t1 > t0 ? 1.0 : -1.0;
    float *f0 = w->k[0], *f1 = w->k[1], *y1 = w->ys;
    double d0 = err_norm(y, NULL, y, 1.0, NULL, NULL, 0, o->rtol, o->atol, n, G);
    double d1 = err_norm(y, NULL, f0, 1.0, NULL, NULL, 0, o->rtol, o->atol, n, G);
    double h0 = (d0 < 1e-5 || d1 < 1e-5) ? 1e-6 : 0.01 * d0 / d1;
    if (h0 > span) h0 = span;
    combine(y1, y, dir * h0, (const double[]){1.0}, w->k, 1, n);
    sd_status s = call(f, ctx, t0 + dir * h0, y1, f1, st, max_nfe);
    if (s != SD_OK) return s;
    /* d2 = ||f1 - f0|| / h0, reusing ys for the difference */
    for (size_t i = 0; i < n; i++) y1[i] = f1[i] - f0[i];
    double d2 = err_norm(y, NULL, y1, 1.0, NULL, NULL, 0, o->rtol, o->atol, n, G) / h0;
    double dm = d1 > d2 ? d1 : d2, h1;
    if (d1 <= 1e-15 && d2 <= 1e-15) h1 = fmax(1e-6, h0 * 1e-3);
    else h1 = pow(0.01 / dm, 1.0 / (DP_ORDER_ERR + 1));
    double h = 100 * h0;
    if (h1 < h) h = h1;
    if (span < h) h = span;
    if (!isfinite(h))
        return sd_error(SD_ERR_NUMERIC, "ode (rk45): initial step is not finite (f not finite?)");
    *h_out = h;
    return SD_OK;
}

static sd_status solve_rk45(const sd_ode_opts *o, sd_ode_rhs f, void *ctx, double t0, double t1,
                            float *y, size_t n, sd_ode_work *w, sd_ode_stats *st, int64_t max_nfe)
{
    size_t G = o->n_groups > 1 ? o->n_groups : 1;
    double dir = t1 > t0 ? 1.0 : -1.0, t = t0, habs = 0.0;
    float **k = w->k;
    sd_status s = call(f, ctx, t, y, k[0], st, max_nfe);
    if (s != SD_OK) return s;
    if (o->h0 > 0) habs = fmin(o->h0, fabs(t1 - t0));
    else if ((s = initial_step(o, f, ctx, t0, t1, y, n, G, w, st, max_nfe, &habs)) != SD_OK)
        return s;
    double hmax = o->max_step > 0 ? o->max_step : INFINITY;
    if (habs > hmax) habs = hmax;
    st->h_first = dir * habs;
    const double exponent = -1.0 / (DP_ORDER_ERR + 1);
    while (dir * (t1 - t) > 0) {
        double min_step = 10.0 * fabs(nextafter(t, dir * INFINITY) - t);
        bool rejected = false;
        for (;;) {
            if (habs > hmax) habs = hmax;
            if (habs < min_step)
                return sd_error(SD_ERR_NUMERIC, "ode (rk45): step size %.3g underflows at t = %.9g",
                                habs, t);
            double tn = t + dir * habs;
            if (dir * (tn - t1) > 0) tn = t1;
            double h = tn - t;
            habs = fabs(h);
            /* stages 2..6 */
            for (int j = 1; j < 6; j++) {
                combine(w->ys, y, h, DP_A[j - 1], k, j, n);
                if ((s = call(f, ctx, t + DP_C[j] * h, w->ys, k[j], st, max_nfe)) != SD_OK)
                    return s;
            }
            combine(w->ynew, y, h, DP_B, k, 6, n);
            /* 7th stage at the new point: the FSAL derivative */
            if ((s = call(f, ctx, tn, w->ynew, k[6], st, max_nfe)) != SD_OK) return s;
            double en = err_norm(y, w->ynew, NULL, h, DP_E, k, 7, o->rtol, o->atol, n, G);
            if (!isfinite(en))
                return sd_error(SD_ERR_NUMERIC, "ode (rk45): error estimate is not finite at "
                                                "t = %.9g (h = %.3g)", t, h);
            if (en < 1.0) {
                double factor = en == 0.0 ? MAX_FACTOR : fmin(MAX_FACTOR, SAFETY * pow(en, exponent));
                if (rejected && factor > 1.0) factor = 1.0;
                memcpy(y, w->ynew, n * sizeof(float));
                float *tmp = k[0]; /* FSAL: the new first stage is the old seventh */
                k[0] = k[6];
                k[6] = tmp;
                t = tn;
                st->accepted++;
                st->h_last = h;
                habs *= factor;
                break;
            }
            habs *= fmax(MIN_FACTOR, SAFETY * pow(en, exponent));
            rejected = true;
            st->rejected++;
        }
        if (o->on_step && (s = o->on_step(o->on_step_ctx, t, y)) != SD_OK) return s;
    }
    return SD_OK;
}

sd_status sd_ode_solve(const sd_ode_opts *o, sd_ode_rhs f, void *ctx, double t0, double t1,
                       float *y, size_t n, sd_ode_work *work, sd_ode_stats *stats)
{
    sd_ode_stats local;
    sd_ode_stats *st = stats ? stats : &local;
    memset(st, 0, sizeof *st);
    if (!o || !f || (!y && n))
        return sd_error(SD_ERR_INVALID, "ode: missing options, right-hand side or state");
    if (!isfinite(t0) || !isfinite(t1))
        return sd_error(SD_ERR_INVALID, "ode: times must be finite (t0 = %g, t1 = %g)", t0, t1);
    if (o->method == SD_ODE_RK45) {
        if (!(o->rtol > 0) || !(o->atol > 0) || !isfinite(o->rtol) || !isfinite(o->atol))
            return sd_error(SD_ERR_INVALID, "ode (rk45): rtol and atol must be > 0 (got %g, %g)",
                            o->rtol, o->atol);
        if (o->rtol < SD_ODE_RTOL_MIN)
            return sd_error(SD_ERR_INVALID, "ode (rk45): rtol %g is below %g, the floor for a "
                            "float32 state (epsilon 1.2e-7: smaller errors are rounding noise)",
                            o->rtol, SD_ODE_RTOL_MIN);
        if (o->atol < SD_ODE_ATOL_MIN)
            return sd_error(SD_ERR_INVALID, "ode (rk45): atol %g is below the floor %g", o->atol,
                            SD_ODE_ATOL_MIN);
        if (o->h0 < 0 || o->max_step < 0)
            return sd_error(SD_ERR_INVALID, "ode (rk45): h0 and max_step must be >= 0");
    } else if (o->method == SD_ODE_EULER || o->method == SD_ODE_HEUN || o->method == SD_ODE_RK4) {
        if (o->steps < 1)
            return sd_error(SD_ERR_INVALID, "ode (%s): steps must be >= 1 (got %d)",
                            sd_ode_method_name(o->method), o->steps);
        if (o->times) {
            if (o->times[0] != t0 || o->times[o->steps] != t1)
                return sd_error(SD_ERR_INVALID, "ode: the time grid runs from %g to %g, not "
                                "from t0 = %g to t1 = %g", o->times[0], o->times[o->steps], t0, t1);
            for (int i = 0; i < o->steps; i++)
                if (!((o->times[i + 1] - o->times[i]) * (t1 - t0) > 0))
                    return sd_error(SD_ERR_INVALID, "ode: the time grid is not monotone at "
                                    "step %d", i);
        }
    } else {
        return sd_error(SD_ERR_INVALID, "ode: unknown method %d", (int)o->method);
    }
    if (o->n_groups > 1 && n % o->n_groups != 0)
        return sd_error(SD_ERR_INVALID, "ode: state size %zu is not a multiple of %zu groups", n,
                        o->n_groups);
    if (t0 == t1 || n == 0) return SD_OK;
    if (work && work->n != n)
        return sd_error(SD_ERR_INVALID, "ode: work made for %zu floats, state has %zu", work->n, n);
    sd_ode_work *w = work;
    sd_status s = SD_OK;
    if (!w && (s = sd_ode_work_new(n, &w)) != SD_OK) return s;
    /* The default budget bounds RK45, whose work depends on the problem; a
     * fixed-step method's work is its steps times its stages, chosen by the
     * caller, and has a budget only when one is given. */
    int64_t max_nfe = o->max_nfe > 0                ? o->max_nfe
                      : o->method == SD_ODE_RK45 ? SD_ODE_MAX_NFE_DEFAULT
                                                 : INT64_MAX;
    if (o->method == SD_ODE_RK45) s = solve_rk45(o, f, ctx, t0, t1, y, n, w, st, max_nfe);
    else s = solve_fixed(o, f, ctx, t0, t1, y, n, w, st, max_nfe);
    if (!work) sd_ode_work_free(w);
    return s;
}

/* ode.h - initial-value ODE integrators over a flat float state.
 *
 * Solves dy/dt = f(t, y), y(t0) = y0, from t0 to t1 (t1 < t0 is allowed: the
 * integration then runs backwards in time), for a state of n floats. The
 * right-hand side is a callback, so the same code integrates the probability
 * flow ODE of a batch of samples (samplers/flow.c) and augmented states such as
 * [x, log det] for likelihoods:
 *
 *     static sd_status rhs(void *ctx, double t, const float *y, float *dydt) { ... }
 *
 *     sd_ode_opts o = sd_ode_defaults(SD_ODE_RK45);   // rtol = atol = 1e-5
 *     sd_ode_stats st;
 *     if (sd_ode_solve(&o, rhs, ctx, 1.0, 1e-5, y, n, NULL, &st) != SD_OK) ...
 *     printf("%lld evaluations, %lld rejected steps\n", st.nfe, st.rejected);
 *
 * Methods
 *   SD_ODE_EULER  fixed step, order 1, 1 evaluation per step
 *   SD_ODE_HEUN   fixed step, order 2 (explicit trapezoidal rule), 2 per step
 *   SD_ODE_RK4    fixed step, classical Runge-Kutta, order 4, 4 per step
 *   SD_ODE_RK45   adaptive Dormand-Prince 5(4) (Dormand & Prince 1980, "A
 *                 family of embedded Runge-Kutta formulae", J. Comp. Appl.
 *                 Math. 6), the tableau and step control of scipy's
 *                 solve_ivp(method="RK45"): local extrapolation (the 5th-order
 *                 solution is propagated), FSAL (the last stage of an accepted
 *                 step is the first of the next), error norm
 *                     ||err||, err_i / (atol + rtol * max(|y_i|, |y_new_i|))
 *                 as an RMS, accept when the norm is < 1, new step
 *                     h * min(10, max(0.2, 0.9 * norm^(-1/5)))
 *                 (never growing right after a rejection), and the initial
 *                 step of Hairer, Norsett & Wanner, "Solving ODEs I", II.4
 *                 (one extra evaluation), unless opts.h0 is given.
 *   Fixed-step methods take `steps` equal steps of (t1 - t0) / steps.
 *
 * Groups. The state may be a batch of independent systems of equal size (a
 * batch of samples): with n_groups = G > 1 the error norm is the largest of the
 * G per-group RMS norms, so every member meets the tolerance on its own (a
 * plain RMS over the batch would let one bad member hide among good ones).
 * G = 0 or 1 is scipy's norm exactly. n must be a multiple of G.
 *
 * Precision. The state is float (the score models work in float32); times,
 * step sizes, tableau weights and the error norm are double, and each stage
 * combination is accumulated in double before it is rounded once.
 *
 * Counting. stats->nfe counts calls of f, exactly: Euler N, Heun 2N, RK4 4N;
 * RK45 1 (first stage) + 1 (initial step selection, if automatic) + 6 per
 * attempted step, accepted or rejected.
 *
 * Memory. sd_ode_solve allocates its stage buffers once per call, or uses a
 * caller-provided sd_ode_work (reusable across calls of the same n). It never
 * allocates inside the step loop.
 *
 * Tolerances. The state is float32, whose relative resolution is 1.2e-7
 * (FLT_EPSILON): an error estimate cannot tell a relative error below a few
 * epsilons from rounding noise, so RK45 asked for rtol = 1e-12 shrinks its
 * step until the budget is gone. rtol below SD_ODE_RTOL_MIN (1e-6, ~8
 * epsilons) and atol below SD_ODE_ATOL_MIN (1e-12) are refused.
 *
 * Budget. At most max_nfe evaluations of f per solve (RK45's default
 * SD_ODE_MAX_NFE_DEFAULT = 100000, some 100 times what RK45 needs on the
 * probability flow at rtol = 1e-6); when it is used up the solve fails with
 * SD_ERR_NUMERIC and a message giving the budget and the time reached (the
 * state is the last accepted one, never returned as a result). Fixed-step
 * methods do steps x stages evaluations and have no default budget.
 *
 * Errors. SD_ERR_INVALID for bad options; SD_ERR_NUMERIC if a stage or the
 * error norm is not finite, the step size underflows (10 ulps of t) or
 * max_nfe is exhausted; any status returned by f is passed through. On error y
 * holds the last accepted state. Thread safety: the solver keeps no global
 * state; one sd_ode_work must not be shared by concurrent solves.
 */
#ifndef SD_ODE_H
#define SD_ODE_H

#include <stddef.h>
#include <stdint.h>

#include "sd/status.h"

/* dy/dt at (t, y): y and dydt are n floats each (n as given to sd_ode_solve);
 * dydt never aliases y. */
typedef sd_status (*sd_ode_rhs)(void *ctx, double t, const float *y, float *dydt);

/* Called after every accepted step with the new time and state (read only);
 * may be NULL. A non-OK status stops the integration and is returned. */
typedef sd_status (*sd_ode_step_fn)(void *ctx, double t, const float *y);

typedef enum sd_ode_method {
    SD_ODE_EULER,
    SD_ODE_HEUN,
    SD_ODE_RK4,
    SD_ODE_RK45
} sd_ode_method;

#define SD_ODE_RTOL_MIN 1e-6
#define SD_ODE_ATOL_MIN 1e-12
#define SD_ODE_MAX_NFE_DEFAULT 100000

typedef struct sd_ode_opts {
    sd_ode_method method;
    int steps;          /* fixed-step methods: number of steps, >= 1 */
    const double *times; /* fixed-step methods: steps + 1 times from t0 to t1
                            (monotone) to step between; NULL: equal steps */
    double rtol, atol;  /* RK45 tolerances, > 0 (defaults 1e-5) */
    double h0;          /* RK45 first step size; 0 = automatic (Hairer) */
    double max_step;    /* RK45 largest |h|; 0 = unbounded (|t1 - t0|) */
    int64_t max_nfe;    /* give up after this many evaluations; 0 = the default */
    size_t n_groups;    /* error norm: max over groups of group RMS (see above) */
    sd_ode_step_fn on_step; /* optional per-step observer */
    void *on_step_ctx;
} sd_ode_opts;

typedef struct sd_ode_stats {
    int64_t nfe;        /* evaluations of f */
    int64_t accepted;   /* steps taken */
    int64_t rejected;   /* RK45 step attempts rejected */
    double h_first;     /* first step size tried (signed) */
    double h_last;      /* last accepted step size (signed) */
} sd_ode_stats;

/* Defaults for a method: steps 100, rtol = atol = 1e-5, automatic h0. */
sd_ode_opts sd_ode_defaults(sd_ode_method method);

/* "euler", "heun", "rk4", "rk45" (also "dopri5"); returns false if unknown. */
int sd_ode_method_parse(const char *name, sd_ode_method *out);
const char *sd_ode_method_name(sd_ode_method m);

/* Scratch buffers for a state of n floats (enough for any method). */
typedef struct sd_ode_work sd_ode_work;
sd_status sd_ode_work_new(size_t n, sd_ode_work **out);
void sd_ode_work_free(sd_ode_work *w);

/* Integrate y (n floats, in/out) from t0 to t1. work may be NULL (allocated
 * and freed inside) or made by sd_ode_work_new with the same n. stats may be
 * NULL. t0 == t1 returns y unchanged with zero evaluations. */
sd_status sd_ode_solve(const sd_ode_opts *opts, sd_ode_rhs f, void *ctx, double t0, double t1,
                       float *y, size_t n, sd_ode_work *work, sd_ode_stats *stats);

#endif

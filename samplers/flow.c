/* flow.c - the probability flow ODE (Song et al. 2021, "Score-Based
 * Generative Modeling through SDEs", Sec. 4.3, eq. 13; App. D.1 for the
 * general form):
 *     dx/dt = f(x, t) - 1/2 div[G G^T](x, t) - 1/2 G G^T(x, t) s(x, t)
 * where the divergence term (sd_sde_div_GGT, by autodiff) exists only for the
 * state-dependent family; for linear families this is F(t) x - 1/2 G G^T s,
 * written with the family's operators (sd_sde_drift for F x and
 * sd_sde_apply_GGT for G G^T v), so a family whose G is a dense or
 * basis-changing operator needs no change here. Its solutions carry p_t to
 * p_s for any s, t: integrating from t = 1 down to t_eps samples (prior ->
 * data), integrating up encodes data into latents.
 *
 * The batch is one flat state [n, D] integrated by samplers/ode.c; the error
 * norm of RK45 is taken per sample (n groups) and the worst sample decides the
 * step, so each sample is within the tolerance on its own.
 */
#include <math.h>

#include "sd/sampler.h"

static sd_status flow_rhs(void *ctx, double t, const float *y, float *dydt)
{
    sd__batch *b = ctx;
    sd_status st = sd__score(b, y, t, b->s);
    if (st != SD_OK) return st;
    const sd_sde *sde = &b->sc->sde;
    if ((st = sd_sde_drift(sde, t, y, dydt, b->n, b->D)) != SD_OK) return st;
    if ((st = sd_sde_apply_GGT(sde, t, y, b->s, b->tmp, b->n, b->D)) != SD_OK) return st;
    size_t total = b->n * b->D;
    for (size_t j = 0; j < total; j++) dydt[j] -= 0.5f * b->tmp[j];
    if (sd_sde_state_dependent(sde)) {
        /* - 1/2 div[G G^T](x) (App. D, eq. 38); b->z is unused by the ODE */
        if ((st = sd_sde_div_GGT(sde, t, y, b->z, b->n, b->D)) != SD_OK) return st;
        for (size_t j = 0; j < total; j++) dydt[j] -= 0.5f * b->z[j];
    }
    return SD_OK;
}

typedef struct flow_obs {
    sd__batch *b;
    double t0, t1;
} flow_obs;

static sd_status flow_step(void *ctx, double t, const float *y)
{
    flow_obs *f = ctx;
    (void)y; /* the observer sees b->x, which the solver updates in place */
    double frac = (t - f->t0) / (f->t1 - f->t0);
    return sd__observe(f->b, t, frac < 1.0 ? frac : 1.0, false);
}

sd_status sd__flow_batch(sd__batch *b, double t0, double t1)
{
    const sd_sampler_opts *o = b->o;
    sd_ode_opts oo = sd_ode_defaults(o->ode_method);
    oo.steps = o->steps;
    oo.rtol = o->rtol;
    oo.atol = o->atol;
    oo.n_groups = b->n;
    flow_obs fo = {b, t0, t1};
    oo.on_step = flow_step;
    oo.on_step_ctx = &fo;
    double *grid = NULL;
    if (o->schedule != SD_SCHEDULE_DEFAULT && o->ode_method != SD_ODE_RK45) {
        /* the schedule's noise levels as times; the ends are the run's own */
        int N = o->steps;
        double *sig = sd_malloc((size_t)(N + 1) * sizeof *sig);
        grid = sd_malloc((size_t)(N + 1) * sizeof *grid);
        sd_status gs = sig && grid ? sd_schedule_sigmas(&b->sc->sde, o, N + 1, sig) : SD_ERR_NOMEM;
        if (gs != SD_OK) {
            sd_free(sig);
            sd_free(grid);
            return gs;
        }
        for (int i = 0; i <= N; i++) {
            double t = i == 0 ? fmax(t0, t1) : i == N ? fmin(t0, t1)
                                                      : sd_schedule_time(&b->sc->sde, sig[i]);
            grid[t1 < t0 ? i : N - i] = t; /* decreasing for sampling, increasing to encode */
        }
        sd_free(sig);
        oo.times = grid;
    }
    sd_ode_stats os;
    sd_status st = sd_ode_solve(&oo, flow_rhs, b, t0, t1, b->x, b->n * b->D, NULL, &os);
    sd_free(grid);
    b->ode_accepted += o->ode_method == SD_ODE_RK45 ? os.accepted : 0;
    b->ode_rejected += os.rejected;
    return st;
}

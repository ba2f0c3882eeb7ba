/* objective.c - denoising and sliced score matching; see objective.h. */
#include "sd/objective.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "sd/ops.h"
#include "sd/rng.h"

sd_objective sd_objective_default(const sd_sde *sde)
{
    return (sd_objective){.kind = SD_OBJECTIVE_DSM,
                          .weighting = SD_WEIGHT_VARIANCE,
                          .eps = sd_sde_default_eps(sde),
                          .projection = SD_PROJ_RADEMACHER,
                          .fd_step = 1e-2};
}

static double draw_time(const sd_objective *obj, const sd_sde *sde, sd_rng *r)
{
    int L = sd_sde_levels(sde);
    if (L > 0) return sd_sde_level_time(sde, (int)sd_rng_below(r, (uint64_t)L));
    return obj->eps + (1.0 - obj->eps) * sd_rng_uniform_double(r);
}

static double weight(const sd_objective *obj, const sd_sde *sde, double t)
{
    if (obj->weighting == SD_WEIGHT_LIKELIHOOD) return sd_sde_g2(sde, t);
    double s = sd_sde_sigma(sde, t);
    return s * s;
}

/* Shape of a batch of n items of the model's data. */
static sd_tensor *batch_tensor(sd_model *m, sd_graph *g, int n)
{
    if (m->H == 1 && m->W == 1) return sd_tensor_new(g, 2, (int[]){n, (int)m->D});
    return sd_tensor_new(g, 4, (int[]){n, m->C, m->H, m->W});
}

static sd_tensor *dsm_loss(const sd_objective *obj, sd_model *m, sd_graph *g, const float *x0,
                           int B, sd_rng *noise_rng, double *t)
{
    size_t D = m->D;
    /* state: per-coordinate metric h'(y) (sd_sde_perturb); linear families: none */
    bool metric = sd_sde_state_dependent(&m->sde);
    sd_tensor *xt = batch_tensor(m, g, B), *target = batch_tensor(m, g, B);
    sd_tensor *mt = metric ? batch_tensor(m, g, B) : NULL;
    sd_tensor *w = sd_tensor_new(g, xt ? xt->ndim : 2,
                                 (m->H == 1 && m->W == 1) ? (int[]){B, 1} : (int[]){B, 1, 1, 1});
    float *z = sd_graph_alloc_floats(g, D);
    if (!xt || !target || !w || !z || (metric && !mt)) return NULL;
    for (int i = 0; i < B; i++) {
        float *xi = xt->data + (size_t)i * D, *ti = target->data + (size_t)i * D;
        sd_rng_fill_normal(noise_rng, z, D, 0.0f, 1.0f);
        /* x_t = A x0 + Sigma^{1/2} z, target = -Sigma^{-1} (Sigma^{1/2} z)
         * (state: the change-of-variables kernel; see sde.h) */
        sd_status st = sd_sde_perturb(&m->sde, t[i], x0 + (size_t)i * D, z, xi, ti,
                                      metric ? mt->data + (size_t)i * D : NULL, 1, D);
        if (st != SD_OK) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", sd_error_message());
            return sd_graph_fail(g, st, "dsm: %s", msg);
        }
        /* sum_i 0.5 lambda_i ||.||^2 / B as a squared norm of w_i * diff_i */
        w->data[i] = (float)sqrt(0.5 * weight(obj, &m->sde, t[i]) / B);
    }
    sd_tensor *s = sd_model_forward(m, g, xt, t);
    sd_tensor *diff = sd_mul(g, sd_sub(g, s, target), w);
    if (metric) diff = sd_mul(g, diff, mt);
    return sd_sq_norm(g, diff);
}

static sd_tensor *ssm_loss(const sd_objective *obj, sd_model *m, sd_graph *g, const float *x0,
                           int B, sd_rng *noise_rng, double *t)
{
    size_t D = m->D;
    /* x_t + h v and x_t - h v with h = fd_step * sigma(t), so the difference
     * step scales with the noise level. */
    sd_tensor *xp = batch_tensor(m, g, B), *xm = batch_tensor(m, g, B);
    sd_tensor *v = sd_tensor_new(g, 2, (int[]){B, (int)D});
    sd_tensor *wj = sd_tensor_new(g, 2, (int[]){B, 1}), *wq = sd_tensor_new(g, 2, (int[]){B, 1});
    float *z = sd_graph_alloc_floats(g, D), *xt = sd_graph_alloc_floats(g, D);
    float *tg = sd_graph_alloc_floats(g, D); /* the DSM target, unused here */
    if (!xp || !xm || !v || !wj || !wq || !z || !xt || !tg) return NULL;
    for (int i = 0; i < B; i++) {
        sd_rng_fill_normal(noise_rng, z, D, 0.0f, 1.0f);
        sd_status st = sd_sde_perturb(&m->sde, t[i], x0 + (size_t)i * D, z, xt, tg, NULL, 1, D);
        if (st != SD_OK) {
            char msg[512];
            snprintf(msg, sizeof msg, "%s", sd_error_message());
            return sd_graph_fail(g, st, "ssm: %s", msg);
        }
        float *vi = v->data + (size_t)i * D;
        if (obj->projection == SD_PROJ_RADEMACHER) sd_rng_fill_rademacher(noise_rng, vi, D);
        else sd_rng_fill_normal(noise_rng, vi, D, 0.0f, 1.0f);
        double h = obj->fd_step * sd_sde_sigma(&m->sde, t[i]);
        for (size_t j = 0; j < D; j++) {
            float base = xt[j];
            xp->data[(size_t)i * D + j] = base + (float)h * vi[j];
            xm->data[(size_t)i * D + j] = base - (float)h * vi[j];
        }
        double lam = weight(obj, &m->sde, t[i]);
        wj->data[i] = (float)(lam / (2.0 * h * B)); /* lambda (v.s+ - v.s-) / (2h) / B */
        wq->data[i] = (float)(lam * 0.125 / B);     /* lambda 0.5 (v.(s+ + s-) / 2)^2 / B */
    }
    int flat[2] = {B, (int)D};
    sd_tensor *sp = sd_reshape(g, sd_model_forward(m, g, xp, t), 2, flat);
    sd_tensor *sm = sd_reshape(g, sd_model_forward(m, g, xm, t), 2, flat);
    sd_tensor *a = sd_sum_axis(g, sd_mul(g, sp, v), 1, true); /* v.s(x + h v), [B, 1] */
    sd_tensor *b = sd_sum_axis(g, sd_mul(g, sm, v), 1, true); /* v.s(x - h v) */
    sd_tensor *jvp = sd_sum(g, sd_mul(g, sd_sub(g, a, b), wj));
    sd_tensor *quad = sd_sum(g, sd_mul(g, sd_square(g, sd_add(g, a, b)), wq));
    return sd_add(g, jvp, quad);
}

sd_tensor *sd_objective_loss(const sd_objective *obj, sd_model *m, sd_graph *g, const float *x0,
                             int B, sd_rng *time_rng, sd_rng *noise_rng, double *t_out)
{
    if (B < 1) return sd_graph_fail(g, SD_ERR_INVALID, "objective: empty batch");
    double *t = sd_graph_alloc(g, (size_t)B * sizeof(double));
    if (!t) return NULL;
    for (int i = 0; i < B; i++) t[i] = draw_time(obj, &m->sde, time_rng);
    if (t_out) memcpy(t_out, t, (size_t)B * sizeof(double));
    if (obj->kind == SD_OBJECTIVE_SSM) return ssm_loss(obj, m, g, x0, B, noise_rng, t);
    return dsm_loss(obj, m, g, x0, B, noise_rng, t);
}

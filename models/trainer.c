/* trainer.c - the training step; see trainer.h. */
#include "trainer.h"

#include <math.h>
#include <string.h>

sd_train_config sd_train_config_default(const sd_sde *sde, int64_t steps, uint64_t seed)
{
    int64_t warmup = steps / 10 < 5000 ? steps / 10 : 5000;
    return (sd_train_config){.steps = steps,
                             .lr = 2e-4f,
                             .warmup = warmup,
                             .cosine = false,
                             .clip = 1.0f,
                             .ema_decay = 0.999f,
                             .seed = seed,
                             .objective = sd_objective_default(sde)};
}

sd_status sd_trainer_new(sd_model *m, const sd_train_config *cfg, sd_trainer **out)
{
    *out = NULL;
    if (!m->params) return sd_error(SD_ERR_INVALID, "train: the model has no parameters");
    sd_trainer *t = sd_calloc(1, sizeof *t);
    if (!t) return SD_ERR_NOMEM;
    t->model = m;
    t->cfg = *cfg;
    sd_opt_config oc = sd_opt_defaults(SD_OPT_ADAM);
    oc.lr = cfg->lr;
    t->opt = sd_optimizer_new(&oc, m->params->total);
    t->ema = sd_malloc(m->params->total * sizeof(float));
    t->graph = sd_graph_new();
    if (!t->opt || !t->ema || !t->graph) {
        sd_trainer_free(t);
        return SD_ERR_NOMEM;
    }
    memcpy(t->ema, m->params->data, m->params->total * sizeof(float));
    sd_rng_init(&t->time_base, cfg->seed, SD_STREAM_TIME);
    sd_rng_init(&t->noise_base, cfg->seed, SD_STREAM_NOISE);
    *out = t;
    return SD_OK;
}

void sd_trainer_free(sd_trainer *t)
{
    if (!t) return;
    sd_optimizer_free(t->opt);
    sd_free(t->ema);
    sd_graph_free(t->graph);
    sd_free(t);
}

sd_status sd_trainer_step(sd_trainer *t, const float *x0, int B)
{
    sd_params *p = t->model->params;
    sd_rng time_rng, noise_rng;
    sd_rng_split(&t->time_base, (uint64_t)t->step, &time_rng);
    sd_rng_split(&t->noise_base, (uint64_t)t->step, &noise_rng);
    sd_graph_reset(t->graph);
    sd_params_zero_grad(p);
    sd_tensor *loss = sd_objective_loss(&t->cfg.objective, t->model, t->graph, x0, B, &time_rng,
                                        &noise_rng, NULL);
    if (!loss) return sd_graph_status(t->graph) != SD_OK ? sd_graph_status(t->graph) : SD_ERR_INTERNAL;
    float value = loss->data[0];
    if (!isfinite(value))
        return sd_error(SD_ERR_NUMERIC, "loss is %g at step %lld; parameters left unchanged", value,
                        (long long)t->step + 1);
    sd_status st = sd_graph_backward(t->graph, loss, NULL);
    if (st != SD_OK) return st;
    float norm = t->cfg.clip > 0 ? sd_clip_grad_norm(p->grad, p->total, t->cfg.clip)
                                 : sd_clip_grad_norm(p->grad, p->total, INFINITY);
    if (!isfinite(norm))
        return sd_error(SD_ERR_NUMERIC, "gradient norm is %g at step %lld; parameters left "
                                        "unchanged", norm, (long long)t->step + 1);
    sd_lr_schedule sched = {.base_lr = t->cfg.lr, .warmup_steps = t->cfg.warmup,
                            .total_steps = t->cfg.steps, .cosine = t->cfg.cosine, .min_lr = 0.0f};
    float lr = sd_lr_at(&sched, t->step);
    /* Fixed buffers (e.g. Fourier features) have zero gradients and, with
     * Adam, zero updates: m = v = 0 gives 0 / (0 + eps). */
    st = sd_optimizer_step(t->opt, p->data, p->grad, lr);
    if (st != SD_OK) return st;
    sd_ema_update(t->ema, p->data, p->total, t->cfg.ema_decay);
    t->step++;
    t->last_loss = value;
    t->last_grad_norm = norm;
    t->last_lr = lr;
    return SD_OK;
}

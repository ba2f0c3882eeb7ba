/* trainer.c - the training step; see trainer.h. */
#include "sd/trainer.h"

#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <string.h>

#include "sd/ops.h"

#define SD_MAX_SHARDS 64


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

static void shards_free(sd_trainer *t)
{
    for (int k = 0; k < t->n_shards; k++) {
        if (t->shard_graph) sd_graph_free(t->shard_graph[k]);
        if (t->shard_grad) sd_free(t->shard_grad[k]);
    }
    sd_free(t->shard_graph);
    sd_free(t->shard_grad);
    sd_free(t->shard_params);
    sd_free(t->shard_model);
    t->shard_graph = NULL;
    t->shard_grad = NULL;
    t->shard_params = NULL;
    t->shard_model = NULL;
    t->n_shards = 0;
}

/* Graphs, gradient buffers and shallow model copies for T shards (kept
 * across steps: the arenas then allocate nothing after the first step). */
static sd_status shards_ensure(sd_trainer *t, int T)
{
    if (t->n_shards == T) return SD_OK;
    shards_free(t);
    sd_params *p = t->model->params;
    t->shard_graph = sd_calloc((size_t)T, sizeof *t->shard_graph);
    t->shard_grad = sd_calloc((size_t)T, sizeof *t->shard_grad);
    t->shard_params = sd_calloc((size_t)T, sizeof *t->shard_params);
    t->shard_model = sd_calloc((size_t)T, sizeof *t->shard_model);
    if (!t->shard_graph || !t->shard_grad || !t->shard_params || !t->shard_model) {
        shards_free(t);
        return sd_error(SD_ERR_NOMEM, "train: out of memory for %d shards", T);
    }
    t->n_shards = T;
    for (int k = 0; k < T; k++) {
        t->shard_graph[k] = sd_graph_new();
        t->shard_grad[k] = sd_malloc(p->total * sizeof(float));
        if (!t->shard_graph[k] || !t->shard_grad[k]) {
            shards_free(t);
            return sd_error(SD_ERR_NOMEM, "train: out of memory for %d shards", T);
        }
        t->shard_params[k] = *p;
        t->shard_params[k].grad = t->shard_grad[k];
        t->shard_model[k] = *t->model;
        t->shard_model[k].params = &t->shard_params[k];
    }
    return SD_OK;
}

/* Loss and parameter gradients (into p->grad) of the batch, sharded over
 * T threads (trainer.h); returns the loss in *value. */
static sd_status sharded_loss_and_grad(sd_trainer *t, const float *x0, int B, int T,
                                       sd_rng *time_rng, sd_rng *noise_rng, float *value)
{
    sd_status st = shards_ensure(t, T);
    if (st != SD_OK) return st;
    sd_params *p = t->model->params;
    const size_t D = t->model->D;
    sd_status shard_st[SD_MAX_SHARDS];
    char shard_msg[SD_MAX_SHARDS][256];
    double shard_loss[SD_MAX_SHARDS];
#pragma omp parallel for schedule(static, 1) num_threads(T)
    for (int k = 0; k < T; k++) {
        const int i0 = (int)((int64_t)B * k / T), i1 = (int)((int64_t)B * (k + 1) / T);
        sd_graph *g = t->shard_graph[k];
        sd_rng tr, nr;
        sd_rng_split(time_rng, (uint64_t)k, &tr);
        sd_rng_split(noise_rng, (uint64_t)k, &nr);
        sd_graph_reset(g);
        memset(t->shard_grad[k], 0, p->total * sizeof(float));
        sd_tensor *loss = sd_objective_loss(&t->cfg.objective, &t->shard_model[k], g,
                                            x0 + (size_t)i0 * D, i1 - i0, &tr, &nr, NULL);
        sd_status s = SD_OK;
        if (!loss) {
            s = sd_graph_status(g) != SD_OK ? sd_graph_status(g) : SD_ERR_INTERNAL;
        } else {
            /* d total / d loss_k = B_k / B */
            float w = (float)(i1 - i0) / (float)B;
            shard_loss[k] = (double)w * (double)loss->data[0];
            if (isfinite(loss->data[0])) s = sd_graph_backward(g, loss, &w);
        }
        shard_st[k] = s;
        if (s != SD_OK) snprintf(shard_msg[k], sizeof shard_msg[k], "%s", sd_error_message());
    }
    double total = 0.0;
    for (int k = 0; k < T; k++) {
        if (shard_st[k] != SD_OK) return sd_error(shard_st[k], "%s", shard_msg[k]);
        total += shard_loss[k];
    }
    *value = (float)total;
    /* Sum the shards' gradients in shard order (parallel over elements). */
    float *grad = p->grad;
    const size_t n = p->total;
#pragma omp parallel for schedule(static) num_threads(T)
    for (size_t i = 0; i < n; i++) {
        float s = 0.0f;
        for (int k = 0; k < T; k++) s += t->shard_grad[k][i];
        grad[i] = s;
    }
    return SD_OK;
}

void sd_trainer_free(sd_trainer *t)
{
    if (!t) return;
    shards_free(t);
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
    float value;
    sd_status st;
    const int T = sd_threads_get() < SD_MAX_SHARDS ? sd_threads_get() : SD_MAX_SHARDS;
    if (T > 1 && B >= 2 * T) {
        st = sharded_loss_and_grad(t, x0, B, T, &time_rng, &noise_rng, &value);
        if (st != SD_OK) return st;
        if (!isfinite(value))
            return sd_error(SD_ERR_NUMERIC, "loss is %g at step %lld; parameters left unchanged",
                            value, (long long)t->step + 1);
    } else {
        sd_graph_reset(t->graph);
        sd_params_zero_grad(p);
        sd_tensor *loss = sd_objective_loss(&t->cfg.objective, t->model, t->graph, x0, B,
                                            &time_rng, &noise_rng, NULL);
        if (!loss)
            return sd_graph_status(t->graph) != SD_OK ? sd_graph_status(t->graph) : SD_ERR_INTERNAL;
        value = loss->data[0];
        if (!isfinite(value))
            return sd_error(SD_ERR_NUMERIC, "loss is %g at step %lld; parameters left unchanged",
                            value, (long long)t->step + 1);
        st = sd_graph_backward(t->graph, loss, NULL);
        if (st != SD_OK) return st;
    }
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
    /* Warm-up (sd_ema_decay_warmup, score_sde's models/ema.py): with a fixed
     * 0.999 the EMA of a 2000-step run still holds 0.999^2000 = 13% of the
     * random init, and its samples are noise. */
    sd_ema_update(t->ema, p->data, p->total, sd_ema_decay_warmup(t->cfg.ema_decay, t->step));
    t->step++;
    t->last_loss = value;
    t->last_grad_norm = norm;
    t->last_lr = lr;
    return SD_OK;
}

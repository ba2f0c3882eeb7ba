/* trainer.h - one training step of a score network: objective, backward,
 * clipping, Adam, EMA, on reused buffers.
 *
 * Randomness: every step draws its times and noise from child streams
 * sd_rng_split(base, step) of the run's SD_STREAM_TIME / SD_STREAM_NOISE
 * generators, so a run resumed at step k draws exactly what the uninterrupted
 * run drew at step k; the only state to checkpoint is the seed, the step, the
 * parameters, the EMA and the optimizer moments.
 *
 * Numerics: a step whose loss or gradient norm is not finite is refused
 * (SD_ERR_NUMERIC, message names the step) before anything is updated.
 *
 * Threads: with T = sd_threads_get() > 1 threads and a batch of at least 2T
 * items, the batch is cut into T fixed shards of consecutive rows, one per
 * thread, each with its own graph and gradient buffer, run single-threaded
 * inside (data parallelism: no barrier inside ops, each core at its
 * one-thread efficiency); the loss is sum_k (B_k / B) loss_k and the
 * gradients are summed in shard order. Shard k draws its times and noise from
 * sd_rng_split(step stream, k), so results are reproducible for a given
 * thread count (and differ between thread counts, as OpenMP reductions would).
 */
#ifndef SD_TRAINER_H
#define SD_TRAINER_H

#include "sd/objective.h"
#include "sd/optim.h"
#include "sd/rng.h"

typedef struct sd_train_config {
    int64_t steps;      /* total steps (for the schedule and progress) */
    float lr;           /* 2e-4 */
    int64_t warmup;     /* linear warm-up steps (5000 in score_sde; default min(5000, steps/10)) */
    bool cosine;        /* cosine decay after warm-up (default constant) */
    float clip;         /* global gradient-norm clip (1.0); <= 0 disables */
    float ema_decay;    /* 0.999, warmed up: min(decay, (1 + step) / (10 + step)) */
    uint64_t seed;
    sd_objective objective;
} sd_train_config;

typedef struct sd_trainer {
    sd_model *model;  /* borrowed */
    sd_train_config cfg;
    sd_optimizer *opt;
    float *ema;       /* EMA of the parameters, same flat layout */
    sd_graph *graph;
    /* data-parallel shards (see above); n_shards = 0 until first needed */
    int n_shards;
    sd_graph **shard_graph;
    float **shard_grad;    /* [n_shards][total] */
    sd_params *shard_params; /* shallow copies whose grad is shard_grad[k] */
    sd_model *shard_model;   /* shallow copies using shard_params[k] */
    sd_rng time_base, noise_base;
    int64_t step;     /* steps completed */
    float last_loss, last_grad_norm, last_lr;
} sd_trainer;

sd_train_config sd_train_config_default(const sd_sde *sde, int64_t steps, uint64_t seed);
sd_status sd_trainer_new(sd_model *m, const sd_train_config *cfg, sd_trainer **out);
void sd_trainer_free(sd_trainer *t);
/* One step on a batch x0 [B, D]; on success t->step is incremented. */
sd_status sd_trainer_step(sd_trainer *t, const float *x0, int B);

#endif

/* checkpoint.h - score-model checkpoints in the safetensors format.
 *
 * Tensors (all F32, names as the model declares them):
 *   model.<param>   the parameters (including fixed buffers)
 *   ema.<param>     their exponential moving average (training checkpoints)
 *   opt.m.<param>   Adam's first moments, opt.v.<param> its second moments
 * __metadata__ (strings only): format "scorediff-checkpoint", version "1",
 * model_config (JSON), sde (canonical spec), data_shape "C,H,W",
 * data_transform, step, seed, optimizer ("adam lr=.. beta1=.. ..."), train
 * (JSON of the training settings: batch, steps, warmup, clip, ema, objective),
 * and for the dense noise family sde_cov, its matrix C as {"C": [[..], ..]}
 * (the spec only names the JSON file it was read from; loading uses the
 * stored matrix, so the checkpoint stands alone).
 * The RNG state is (seed, step): every step's randomness is a child stream of
 * the seed indexed by the step (trainer.h), and the data order is a function
 * of (seed, epoch).
 *
 * Saving goes through sd_safetensors_write: temp file, fsync, rename — an
 * interrupted save leaves the previous checkpoint intact.
 * Loading checks every expected tensor's presence, dtype and shape, rejects
 * extra tensors and non-finite values, and names the file in every message.
 * Every section the file holds is checked (also the EMA and Adam moments a
 * sampler does not load), by the one function both loaders and `scorediff
 * info` use, and before the model's parameters are allocated: the config is
 * only declared, the tensor list and shapes compared with it, and then the
 * parameters' memory is checked (sd/membudget.h) and allocated. Config
 * values are capped (score_model.h: SD_MODEL_MAX_WIDTH, ...).
 */
#ifndef SD_CHECKPOINT_H
#define SD_CHECKPOINT_H

#include "sd/trainer.h"

typedef struct sd_ckpt_meta {
    int64_t step;
    uint64_t seed;
    int batch;
    char data_transform[32]; /* "unit" ([0,1] images), "identity" (CSV) */
    char train_json[512];
} sd_ckpt_meta;

/* Save model parameters, and the trainer's EMA and moments if t != NULL. */
sd_status sd_checkpoint_save(const char *path, const sd_model *m, const sd_trainer *t,
                             const sd_ckpt_meta *meta);
/* Build the model described by the checkpoint and load its weights: the EMA
 * weights if use_ema and present, else the raw parameters. meta may be NULL. */
sd_status sd_checkpoint_load_model(const char *path, bool use_ema, sd_model **out,
                                   sd_ckpt_meta *meta);
/* Restore a training run: parameters, EMA, Adam moments and step into an
 * existing model + trainer built with the same configuration. */
sd_status sd_checkpoint_load_trainer(const char *path, sd_model *m, sd_trainer *t,
                                     sd_ckpt_meta *meta);

#endif

/* optim.h - first-order optimizers, gradient clipping, LR schedules and EMA.
 *
 * All parameters of a model live in ONE flat contiguous float buffer (as in
 * llm.c), with the gradients in a second buffer of the same length n. An
 * optimizer owns its state buffers (n floats each) and updates p in place.
 *
 * Update rules follow the pseudo-code of the torch.optim documentation
 * (PyTorch 2.x) exactly, with dampening = 0, no AMSGrad, no centred RMSProp,
 * no RMSProp momentum and no Adagrad lr_decay / initial accumulator. Scalar
 * factors (bias corrections) are computed in double; per-element arithmetic is
 * float. Every element is updated independently, so results are bit-identical
 * for any number of OpenMP threads.
 *
 * weight_decay means, as in PyTorch: the coupled L2 term g += wd * p for every
 * kind except SD_OPT_ADAMW, where it is the decoupled decay
 * p *= 1 - lr * wd applied before the Adam step (Loshchilov & Hutter,
 * "Decoupled weight decay regularization", ICLR 2019, Alg. 2).
 *
 * The learning rate is passed to every step, so schedules (sd_lr_at) live
 * outside the optimizer; sd_opt_config.lr only records the base rate.
 */
#ifndef SD_OPTIM_H
#define SD_OPTIM_H

#include <stddef.h>
#include <stdint.h>

#include "sd/status.h"

typedef enum sd_opt_kind {
    SD_OPT_SGD,      /* p -= lr g */
    SD_OPT_MOMENTUM, /* heavy ball: b = mu b + g; p -= lr b */
    SD_OPT_NESTEROV, /* b = mu b + g; p -= lr (g + mu b) (Sutskever et al. 2013 form) */
    SD_OPT_ADAGRAD,  /* Duchi, Hazan & Singer 2011 */
    SD_OPT_RMSPROP,  /* Tieleman & Hinton 2012 */
    SD_OPT_ADAM,     /* Kingma & Ba 2015 */
    SD_OPT_ADAMW     /* Loshchilov & Hutter 2019 */
} sd_opt_kind;

typedef struct sd_opt_config {
    sd_opt_kind kind;
    float lr;            /* base learning rate (informational; steps take lr) */
    float momentum;      /* mu for MOMENTUM / NESTEROV, in [0, 1) */
    float beta1, beta2;  /* Adam(W) moment decay rates, in [0, 1) */
    float eps;           /* denominator guard (Adagrad, RMSProp, Adam(W)), >= 0 */
    float weight_decay;  /* >= 0; see the file comment for coupled vs decoupled */
    float rmsprop_alpha; /* RMSProp smoothing constant, in [0, 1] */
} sd_opt_config;

/* PyTorch's defaults for `kind`: lr 1e-3 (SGD, momentum, Nesterov, Adam,
 * AdamW) or 1e-2 (Adagrad, RMSProp); momentum 0.9 for MOMENTUM / NESTEROV
 * (PyTorch's own default is 0, which would make them plain SGD); betas
 * 0.9 / 0.999; eps 1e-8 (Adam, AdamW, RMSProp) or 1e-10 (Adagrad);
 * weight_decay 0.01 for AdamW and 0 otherwise; rmsprop_alpha 0.99.
 * Unused fields hold the same values so a config can be switched by kind. */
sd_opt_config sd_opt_defaults(sd_opt_kind kind);

typedef struct sd_optimizer sd_optimizer;

/* Optimizer for n parameters with zero-initialised state. Returns NULL and
 * sets the error message on an invalid config or allocation failure. */
sd_optimizer *sd_optimizer_new(const sd_opt_config *cfg, size_t n);
void sd_optimizer_free(sd_optimizer *opt); /* NULL is a no-op */

/* One update of p[0..n) from g[0..n) with learning rate lr (finite, >= 0).
 * Increments the step count first, so the first step uses t = 1 in Adam's
 * bias corrections. p and g must not overlap. */
sd_status sd_optimizer_step(sd_optimizer *opt, float *p, const float *g, float lr);

/* Steps taken so far (0 for a new optimizer). */
int64_t sd_optimizer_step_count(const sd_optimizer *opt);
/* Restore the step count from a checkpoint; t must be >= 0. A count of 0 makes
 * the next MOMENTUM / NESTEROV step re-initialise the buffer to g. */
sd_status sd_optimizer_set_step_count(sd_optimizer *opt, int64_t t);

/* Number of n-float state buffers: 0 (SGD), 1 (MOMENTUM, NESTEROV, ADAGRAD,
 * RMSPROP) or 2 (ADAM, ADAMW). */
size_t sd_optimizer_n_state(const sd_optimizer *opt);
/* State buffer k (n floats, writable for checkpoint restore): k = 0 is the
 * momentum buffer / Adagrad sum of squares / RMSProp square average / Adam
 * first moment; k = 1 is Adam's second moment. NULL if k is out of range. */
float *sd_optimizer_state(sd_optimizer *opt, int k);
/* Number of parameters n the optimizer was created for. */
size_t sd_optimizer_size(const sd_optimizer *opt);
/* The configuration the optimizer was created with (all zero for NULL). */
sd_opt_config sd_optimizer_config(const sd_optimizer *opt);

/* Global L2 gradient clipping as torch.nn.utils.clip_grad_norm_: computes
 * norm = ||g||_2 (accumulated in double, deterministically for any thread
 * count) and, if norm > max_norm, scales g by max_norm / (norm + 1e-6).
 * Returns the pre-clip norm. A non-finite norm is returned without touching g
 * (so the caller can skip the step); a negative or NaN max_norm disables
 * clipping. */
float sd_clip_grad_norm(float *g, size_t n, float max_norm);

/* Learning-rate schedule. For step < warmup_steps: linear warm-up
 * base_lr * (step + 1) / warmup_steps. Afterwards base_lr if cosine == 0, else
 * cosine decay (Loshchilov & Hutter, "SGDR", ICLR 2017, Eq. 5 with one cycle)
 * from base_lr at step = warmup_steps to min_lr at step = total_steps, and
 * min_lr beyond. Negative steps are treated as 0. */
typedef struct sd_lr_schedule {
    float base_lr;
    int64_t warmup_steps;
    int64_t total_steps;
    int cosine;
    float min_lr;
} sd_lr_schedule;

float sd_lr_at(const sd_lr_schedule *s, int64_t step);

/* Exponential moving average of the parameters (Polyak averaging, as used by
 * NCSN v2 / DDPM / score SDE): ema = decay * ema + (1 - decay) * p. */
void sd_ema_update(float *ema, const float *p, size_t n, float decay);

/* min(decay, (1 + step) / (10 + step)): the EMA warm-up of TensorFlow's
 * ExponentialMovingAverage(num_updates=...) and of the score_sde code base
 * (models/ema.py, Song et al. ICLR 2021), so that early averages are not dominated by the random init.
 * Negative steps are treated as 0. */
float sd_ema_decay_warmup(float decay, int64_t step);

#endif

/* params.h - named parameters in one flat buffer (llm.c layout).
 *
 * A model declares its parameters by name and shape (e.g.
 * "down.0.block.1.conv1.weight", [64, 32, 3, 3]), then finalises: all values
 * live in one contiguous float array `data`, all gradients in `grad`, in
 * declaration order. Optimizers, EMA, gradient clipping and checkpoints work
 * on the flat arrays; the graph sees each parameter as a leaf tensor wrapped
 * around its slice (sd_params_tensor).
 *
 *     sd_params *p = sd_params_new();
 *     int w = sd_params_add(p, "fc.weight", 2, (int[]){out, in});
 *     int b = sd_params_add(p, "fc.bias", 1, (int[]){out});
 *     sd_params_finalize(p);                  // allocates data + grad
 *     sd_params_init_uniform(p, w, &rng, 1.0f / sqrtf(in));
 *     ... sd_linear(g, x, sd_params_tensor(g, p, w), sd_params_tensor(g, p, b));
 *
 * Ownership: the sd_params owns data and grad; wrapped tensors borrow them.
 * Gradients accumulate across backward calls: call sd_params_zero_grad per step.
 */
#ifndef SD_PARAMS_H
#define SD_PARAMS_H

#include "sd/tensor.h"

typedef struct sd_rng sd_rng;

#define SD_PARAM_NAME_MAX 96

typedef struct sd_param {
    char name[SD_PARAM_NAME_MAX];
    int ndim;
    int shape[SD_MAX_DIMS];
    size_t numel;
    size_t offset; /* into data / grad, in floats */
    bool trainable; /* false for fixed buffers (e.g. Fourier feature weights) */
} sd_param;

typedef struct sd_params {
    sd_param *items;
    size_t count, cap;
    float *data;  /* total floats, after finalize */
    float *grad;  /* total floats, after finalize */
    size_t total;
    bool finalized;
} sd_params;

sd_params *sd_params_new(void);
void sd_params_free(sd_params *p);
/* Declare a parameter (before finalize). Returns its index, or -1 with the
 * message set (duplicate or over-long name, bad shape, finalized already). */
int sd_params_add(sd_params *p, const char *name, int ndim, const int *shape);
/* Declare a fixed, non-trained buffer that still lives in the flat array (and
 * so in checkpoints); its gradient is never computed. */
int sd_params_add_buffer(sd_params *p, const char *name, int ndim, const int *shape);
/* Allocate data (zeroed) and grad. */
sd_status sd_params_finalize(sd_params *p);
int sd_params_find(const sd_params *p, const char *name);
static inline float *sd_params_data(sd_params *p, int idx) { return p->data + p->items[idx].offset; }
static inline float *sd_params_grad(sd_params *p, int idx) { return p->grad + p->items[idx].offset; }
/* The parameter as a graph leaf (grad accumulates into p->grad unless it is a
 * buffer). NULL on error. */
sd_tensor *sd_params_tensor(sd_graph *g, sd_params *p, int idx);
void sd_params_zero_grad(sd_params *p);
/* Number of trainable floats. */
size_t sd_params_trainable_count(const sd_params *p);

/* Initialisers (PyTorch defaults for Linear/Conv: weights and biases
 * U(-1/sqrt(fan_in), 1/sqrt(fan_in)), i.e. kaiming_uniform with a = sqrt(5)). */
void sd_params_init_uniform(sd_params *p, int idx, sd_rng *rng, float bound);
void sd_params_init_normal(sd_params *p, int idx, sd_rng *rng, float std);
void sd_params_init_const(sd_params *p, int idx, float value);

#endif

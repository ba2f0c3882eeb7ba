/* mlp.h - the reference score network `mlp` for low-dimensional data (2-D
 * toys, tabular), as in ../shared/reference-model.md:
 *
 *     s(x, sigma) = MLP([x, e0(c)]) / sigma      x [N, D], e0 [N, 32]
 *
 * with e0 the Fourier features of c (fourier.h), n_hidden_layers hidden
 * layers of `hidden` units with SiLU (3 x 128 in the reference), and a
 * linear output of width D.
 *
 * Parameter names (the PyTorch mirror's state_dict keys, in order):
 *   fourier.W (buffer), layers.<i>.weight/bias (i < n_hidden_layers),
 *   out.weight/bias.
 */
#ifndef SD_MODELS_MLP_H
#define SD_MODELS_MLP_H

#include "sd/fourier.h"
#include "sd/params.h"
#include "sd/tensor.h"

#define SD_MLP_MAX_LAYERS 16

typedef struct sd_mlp_config {
    int dim;             /* D, the data dimension */
    int hidden;          /* hidden width (128) */
    int n_hidden_layers; /* number of hidden layers (3) */
} sd_mlp_config;

typedef struct sd_mlp {
    sd_mlp_config cfg;
    sd_fourier fourier;
    int w[SD_MLP_MAX_LAYERS], b[SD_MLP_MAX_LAYERS]; /* hidden layers */
    int out_w, out_b;
} sd_mlp;

/* The reference configuration for data of dimension dim: {dim, 128, 3}. */
sd_mlp_config sd_mlp_reference(int dim);
/* SD_OK, or SD_ERR_INVALID with a message naming the offending field. */
sd_status sd_mlp_config_check(const sd_mlp_config *cfg);
/* Validate cfg and declare the parameters (caller then finalizes p). */
sd_status sd_mlp_declare(const sd_mlp_config *cfg, sd_params *p, sd_mlp *net);
/* PyTorch default initialisation (Linear: U(+-1/sqrt(fan_in)) for weight and
 * bias; Fourier W ~ N(0, 16^2)), drawn in declaration order. */
void sd_mlp_init(const sd_mlp *net, sd_params *p, sd_rng *rng);
/* Score [N, D] of x [N, D]; cond[N] (log sigma or t) and sigma[N] > 0 as in
 * sd_unet_forward (not differentiated). NULL on error. */
sd_tensor *sd_mlp_forward(const sd_mlp *net, sd_params *p, sd_graph *g, sd_tensor *x,
                          const float *cond, const float *sigma);

#endif

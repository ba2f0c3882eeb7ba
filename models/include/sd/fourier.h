/* fourier.h - Gaussian Fourier features of the noise level (shared by the
 * reference score networks, see ../shared/reference-model.md).
 *
 *     e0 = [sin(2 pi W c), cos(2 pi W c)]      W [16] ~ N(0, 16^2), fixed
 *
 * c is log(sigma) for VE-type families and t for VP-type ones. W is drawn
 * once at initialisation and stored as a non-trainable buffer of the model's
 * sd_params (named "<prefix>.W"), so it is saved in checkpoints but never
 * trained. c is plain per-sample data, not differentiated: the embedding is
 * a graph leaf computed directly, with no backward.
 *
 * Paper: Tancik et al., "Fourier features let networks learn high frequency
 * functions in low dimensional domains", NeurIPS 2020; Song et al.,
 * "Score-based generative modeling through stochastic differential
 * equations", ICLR 2021 (GaussianFourierProjection, scale 16).
 */
#ifndef SD_MODELS_FOURIER_H
#define SD_MODELS_FOURIER_H

#include "sd/params.h"
#include "sd/tensor.h"

#define SD_FOURIER_HALF 16               /* number of frequencies */
#define SD_FOURIER_DIM (2 * SD_FOURIER_HALF) /* embedding width: sin and cos */
#define SD_FOURIER_SCALE 16.0f           /* std of the frequencies W */

typedef struct sd_fourier {
    int w; /* index of the [16] buffer in sd_params */
} sd_fourier;

/* Declare the buffer "<prefix>.W" (prefix e.g. "fourier"). */
sd_status sd_fourier_declare(sd_params *p, const char *prefix, sd_fourier *f);
/* W ~ N(0, 16^2), drawn from rng (after sd_params_finalize). */
void sd_fourier_init(const sd_fourier *f, sd_params *p, sd_rng *rng);
/* The [N, 32] embedding of c[N] as a leaf of g (no gradient). The argument
 * is formed in float32 as c * (W * 2pi), the same rounding sequence as the
 * PyTorch mirror (tools/bench/torch_mirror.py). NULL on error. */
sd_tensor *sd_fourier_embed(const sd_fourier *f, sd_params *p, sd_graph *g, const float *c,
                            int n);

#endif

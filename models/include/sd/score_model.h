/* score_model.h - one interface over every score model: the trained networks
 * (unet, mlp) and the analytic Gaussian mixture (gmm).
 *
 * A model knows its data shape (C, H, W; low-dimensional data is C = D,
 * H = W = 1), its noise family, and how to evaluate s(x, t) ~ grad log p_t(x):
 *
 *   - sd_model_forward: differentiable, on the graph (training, and
 *     vector-Jacobian products w.r.t. x for likelihoods). Networks only.
 *   - sd_model_score: plain arrays in and out, no gradients recorded (samplers).
 *
 * The networks are conditioned as reference-model.md says: the embedding gets
 * c = sd_sde_cond(t) (log sigma or t) and the output is divided by
 * sigma = sd_sde_sigma(t), the kernel's marginal standard deviation (for the
 * matrix-valued families VE's unblurred sigma(t)). Building a model binds the
 * family to the data shape (sd_sde_bind_shape: dct's image shape, dense's
 * dimension).
 *
 * The model config round-trips through a JSON string (sd_model_config_json /
 * sd_model_from_config_json) stored in checkpoints.
 */
#ifndef SD_SCORE_MODEL_H
#define SD_SCORE_MODEL_H

#include "sd/gmm.h"
#include "sd/mlp.h"
#include "sd/params.h"
#include "sd/sde.h"
#include "sd/unet.h"

typedef enum sd_model_kind { SD_MODEL_UNET, SD_MODEL_MLP, SD_MODEL_GMM } sd_model_kind;

typedef struct sd_model {
    sd_model_kind kind;
    int C, H, W;
    size_t D; /* C * H * W */
    sd_sde sde;
    sd_params *params; /* networks; NULL for gmm */
    sd_unet unet;
    sd_mlp mlp;
    sd_gmm *gmm; /* owned */
} sd_model;

/* Build a network by name: "unet-28", "unet-32", "unet" (with *ucfg), or
 * "mlp" (dimension C). Parameters are declared and finalised but not
 * initialised (call sd_model_init, or load a checkpoint). */
sd_status sd_model_new_network(const char *name, const sd_unet_config *ucfg, int C, int H, int W,
                               const sd_sde *sde, sd_model **out);
/* Wrap an analytic mixture (takes ownership of gmm on success; on failure the
 * caller still owns it). Under dct the model takes the spec's image shape
 * (shape=CxHxW, required: the mixture's points are flat); under dense the
 * mixture's dimension must be C's. */
sd_status sd_model_new_gmm(sd_gmm *gmm, const sd_sde *sde, sd_model **out);
void sd_model_free(sd_model *m);
/* PyTorch-default initialisation from (seed, SD_STREAM_INIT). */
void sd_model_init(sd_model *m, uint64_t seed);

/* x [n, C, H, W] (or [n, D]); t[n] per-sample times. Networks only. */
sd_tensor *sd_model_forward(sd_model *m, sd_graph *g, sd_tensor *x, const double *t);
/* Score at n points of x (flat [n, D]) at one time t into out [n, D]. The
 * graph is reset and used in no-grad mode for networks. */
sd_status sd_model_score(sd_model *m, sd_graph *g, const float *x, size_t n, double t, float *out);

/* Configuration caps, whatever asks (train's options or a checkpoint's
 * metadata): a U-Net's level widths ch * mult[i] are at most
 * SD_MODEL_MAX_WIDTH (so ch too), with 1..SD_UNET_MAX_LEVELS levels and
 * 1..SD_UNET_MAX_RES_BLOCKS blocks per level; an mlp's dimension is at most
 * SD_MODEL_MAX_DIM. Beyond the caps, the parameters' memory (values +
 * gradients) is checked against sd_mem_check before it is allocated. */
#define SD_MODEL_MAX_WIDTH 4096
#define SD_MODEL_MAX_DIM (1 << 20)

/* Two-step construction, so that a caller can inspect the declared
 * parameters (names, shapes, m->params->total) before any value is
 * allocated: sd_model_declare_from_config_json declares them, then
 * sd_model_finalize checks the memory (label `what` in its message) and
 * allocates. sd_model_new_network and sd_model_from_config_json do both. */
sd_status sd_model_declare_from_config_json(const char *json, const sd_sde *sde, sd_model **out);
sd_status sd_model_finalize(sd_model *m, const char *what);
/* Bytes of one copy of the parameters (values; gradients, EMA and each Adam
 * moment are as large again). */
uint64_t sd_model_param_bytes(const sd_model *m);

/* Config as a JSON object string into buf; returns SD_OK or SD_ERR_INVALID if
 * the buffer is too small. */
sd_status sd_model_config_json(const sd_model *m, char *buf, size_t len);
/* Rebuild a network from the JSON written above (checkpoints). */
sd_status sd_model_from_config_json(const char *json, const sd_sde *sde, sd_model **out);

#endif

/* unet.h - the reference image score network `unet` (NCSN++-style U-Net
 * without attention), built exactly as ../shared/reference-model.md says so
 * that it matches the PyTorch mirror (tools/bench/torch_mirror.py) number
 * for number.
 *
 *   e0   = Fourier(c)                                   [N, 32]  (fourier.h)
 *   temb = fc2(SiLU(fc1(e0)))                           [N, 4 ch]
 *   ResBlock(x): h = conv1(SiLU(GN(x))) + temb_proj(SiLU(temb))[:, :, None, None]
 *                h = conv2(SiLU(GN(h)));  return (skip(x) + h) / sqrt(2)
 *   encoder: conv_in, per level num_res_blocks ResBlocks (+ stride-2 conv
 *   downsample except at the last level), every output pushed on a stack;
 *   middle: two ResBlocks; decoder: per level (reversed) num_res_blocks + 1
 *   ResBlocks on concat(h, stack.pop()), then nearest x2 + conv upsample
 *   except at level 0; out = conv_out(SiLU(GN(h))) / sigma per sample.
 *
 * Parameter names (the PyTorch mirror's state_dict keys, in the same order):
 *   fourier.W (buffer), temb.fc1.*, temb.fc2.*, conv_in.*,
 *   down.<level>.block.<j>.{norm1,conv1,temb_proj,norm2,conv2[,skip]}.*,
 *   down.<level>.downsample.*, mid.<0|1>.*, up.<level>.block.<j>.*,
 *   up.<level>.upsample.*, norm_out.*, conv_out.*  (each .weight and .bias).
 *
 * Usage:
 *     bool ok; sd_unet_config cfg = sd_unet_preset("unet-28", &ok);
 *     sd_unet net; sd_params *p = sd_params_new();
 *     sd_unet_declare(&cfg, p, &net); sd_params_finalize(p);
 *     sd_unet_init(&net, p, &rng);
 *     sd_tensor *s = sd_unet_forward(&net, p, g, x, cond, sigma);
 */
#ifndef SD_MODELS_UNET_H
#define SD_MODELS_UNET_H

#include <stdbool.h>

#include "sd/fourier.h"
#include "sd/params.h"
#include "sd/tensor.h"

#define SD_UNET_MAX_LEVELS 8
#define SD_UNET_MAX_RES_BLOCKS 8
/* encoder + middle + decoder blocks at the limits above */
#define SD_UNET_MAX_BLOCKS \
    (SD_UNET_MAX_LEVELS * SD_UNET_MAX_RES_BLOCKS + 2 + SD_UNET_MAX_LEVELS * (SD_UNET_MAX_RES_BLOCKS + 1))
#define SD_UNET_GN_EPS 1e-5f /* torch.nn.GroupNorm default */

typedef struct sd_unet_config {
    int channels;       /* C of the data */
    int resolution;     /* H = W of the data */
    int ch;             /* base width */
    int n_levels;       /* entries used in mult */
    int mult[SD_UNET_MAX_LEVELS]; /* level widths are ch * mult[i] */
    int num_res_blocks; /* ResBlocks per encoder level (decoder: + 1) */
    int groups;         /* GroupNorm groups (8 in the reference) */
} sd_unet_config;

/* Parameter indices of one ResBlock; skip_w/skip_b are -1 when cin == cout. */
typedef struct sd_unet_block {
    int cin, cout;
    int norm1_w, norm1_b, conv1_w, conv1_b, temb_w, temb_b;
    int norm2_w, norm2_b, conv2_w, conv2_b, skip_w, skip_b;
} sd_unet_block;

typedef struct sd_unet {
    sd_unet_config cfg;
    sd_fourier fourier;
    int fc1_w, fc1_b, fc2_w, fc2_b;
    int conv_in_w, conv_in_b;
    /* blocks in forward order: encoder (level-major), middle (2), decoder
     * (levels reversed, num_res_blocks + 1 each) */
    int n_blocks;
    sd_unet_block blocks[SD_UNET_MAX_BLOCKS];
    int down_w[SD_UNET_MAX_LEVELS], down_b[SD_UNET_MAX_LEVELS]; /* -1 at the last level */
    int up_w[SD_UNET_MAX_LEVELS], up_b[SD_UNET_MAX_LEVELS];     /* -1 at level 0 */
    int norm_out_w, norm_out_b, conv_out_w, conv_out_b;
} sd_unet;

/* Preset "unet-28" (1x28x28, ch 32, mult 1,2,2, 2 blocks) or "unet-32"
 * (3x32x32, ch 64, mult 1,2,2,2, 2 blocks), both with 8 groups. Unknown
 * names set *ok = false and the error message. */
sd_unet_config sd_unet_preset(const char *name, bool *ok);
/* SD_OK, or SD_ERR_INVALID with a message naming the offending field. */
sd_status sd_unet_config_check(const sd_unet_config *cfg);
/* Validate cfg and declare every parameter in p (not yet finalized). The
 * caller then calls sd_params_finalize(p) and sd_unet_init. */
sd_status sd_unet_declare(const sd_unet_config *cfg, sd_params *p, sd_unet *net);
/* PyTorch default initialisation: Linear/Conv2d weight and bias
 * U(-1/sqrt(fan_in), 1/sqrt(fan_in)); GroupNorm weight 1, bias 0; Fourier
 * W ~ N(0, 16^2). Draws in declaration order. */
void sd_unet_init(const sd_unet *net, sd_params *p, sd_rng *rng);
/* Score s(x, sigma) [N, C, H, W]. x [N, C, H, W] with C, H, W as configured;
 * cond[N] the Fourier embedding's input (log sigma or t), sigma[N] > 0 the
 * per-sample divisor of the output. cond and sigma are not differentiated;
 * x (if it requires grad) and the parameters are. NULL on error. */
sd_tensor *sd_unet_forward(const sd_unet *net, sd_params *p, sd_graph *g, sd_tensor *x,
                           const float *cond, const float *sigma);

#endif

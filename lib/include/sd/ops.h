/* ops.h - differentiable operations on sd_tensor (see tensor.h for the rules).
 *
 * Every op: computes its result eagerly into a new arena tensor, records a
 * backward when gradients are needed, returns NULL on failure with the
 * message set (and returns NULL at once if any required source is NULL).
 *
 * Dimension vocabulary: N batch, C channels, H x W spatial, K kernel size,
 * D features. Layout is row-major NCHW.
 *
 * Broadcasting (add/sub/mul/div): numpy rules on right-aligned shapes; a
 * dimension of size 1 (or a missing leading one) is repeated. This covers
 * per-sample ([N,1,1,1]) and per-channel ([1,C,1,1] or [N,C,1,1]) operands.
 * Backward sums the cotangent back to each operand's own shape.
 */
#ifndef SD_OPS_H
#define SD_OPS_H

#include "sd/tensor.h"

typedef struct sd_rng sd_rng;

/* ---- elementwise binary, broadcasting (lib/ops/ops_elementwise.c) ---------- */
sd_tensor *sd_add(sd_graph *g, sd_tensor *a, sd_tensor *b);
/* In place: out = (a + b) * s written over a's buffer (b the same shape as a,
 * or broadcast along whole runs, e.g. [N, C, 1, 1] onto [N, C, H, W]); equal
 * to sd_scale(sd_add(a, b), s) bit for bit. Saves one activation of memory,
 * so a must be an op output whose value no backward reads and that is not
 * used again (conv2d and linear outputs qualify, their backward reads only
 * their inputs); a leaf is refused. */
sd_tensor *sd_add_into(sd_graph *g, sd_tensor *a, sd_tensor *b, float s);
sd_tensor *sd_sub(sd_graph *g, sd_tensor *a, sd_tensor *b);
sd_tensor *sd_mul(sd_graph *g, sd_tensor *a, sd_tensor *b);
sd_tensor *sd_div(sd_graph *g, sd_tensor *a, sd_tensor *b);
/* a * s + c with scalar s, c (scale: c = 0; shift: s = 1). */
sd_tensor *sd_affine_scalar(sd_graph *g, sd_tensor *a, float s, float c);
sd_tensor *sd_scale(sd_graph *g, sd_tensor *a, float s);
sd_tensor *sd_shift(sd_graph *g, sd_tensor *a, float c);

/* ---- elementwise unary (lib/ops/ops_unary.c) -------------------------------- */
sd_tensor *sd_relu(sd_graph *g, sd_tensor *a);
sd_tensor *sd_leaky_relu(sd_graph *g, sd_tensor *a, float negative_slope);
sd_tensor *sd_elu(sd_graph *g, sd_tensor *a, float alpha);
sd_tensor *sd_gelu(sd_graph *g, sd_tensor *a);      /* exact, x * Phi(x) */
sd_tensor *sd_silu(sd_graph *g, sd_tensor *a);      /* x * sigmoid(x) */
sd_tensor *sd_tanh(sd_graph *g, sd_tensor *a);
sd_tensor *sd_sigmoid(sd_graph *g, sd_tensor *a);
sd_tensor *sd_softplus(sd_graph *g, sd_tensor *a);  /* log(1 + e^x), stable */
sd_tensor *sd_sin(sd_graph *g, sd_tensor *a);
sd_tensor *sd_cos(sd_graph *g, sd_tensor *a);
sd_tensor *sd_exp(sd_graph *g, sd_tensor *a);
sd_tensor *sd_log(sd_graph *g, sd_tensor *a);
sd_tensor *sd_square(sd_graph *g, sd_tensor *a);
sd_tensor *sd_sqrt(sd_graph *g, sd_tensor *a);

/* ---- reductions (lib/ops/ops_reduce.c) ------------------------------------- */
/* Results of full reductions have shape [1]. Accumulation is in double. */
sd_tensor *sd_sum(sd_graph *g, sd_tensor *a);
sd_tensor *sd_mean(sd_graph *g, sd_tensor *a);
/* Along one axis; keepdim keeps it with size 1, otherwise it is removed
 * (a 1-D input reduces to shape [1]). */
sd_tensor *sd_sum_axis(sd_graph *g, sd_tensor *a, int axis, bool keepdim);
sd_tensor *sd_mean_axis(sd_graph *g, sd_tensor *a, int axis, bool keepdim);
/* sum(a^2), shape [1]. */
sd_tensor *sd_sq_norm(sd_graph *g, sd_tensor *a);
/* mean((a - b)^2), shape [1]; a and b have the same shape. */
sd_tensor *sd_mse(sd_graph *g, sd_tensor *a, sd_tensor *b);

/* ---- shape ops (lib/ops/ops_shape.c) --------------------------------------- */
/* Same data, new shape with equal numel; one entry may be -1 (inferred). */
sd_tensor *sd_reshape(sd_graph *g, sd_tensor *a, int ndim, const int *shape);
/* Concatenate two 4-D NCHW tensors along C. */
sd_tensor *sd_concat_channels(sd_graph *g, sd_tensor *a, sd_tensor *b);
/* Nearest-neighbour upsampling x2 of NCHW: [N,C,H,W] -> [N,C,2H,2W]. */
sd_tensor *sd_upsample2x(sd_graph *g, sd_tensor *x);
/* 2x2 average pooling, stride 2, of NCHW with even H, W. */
sd_tensor *sd_avgpool2x(sd_graph *g, sd_tensor *x);

/* ---- dense (lib/gemm/ops_matmul.c) ------------------------------------------ */
/* [M,K] x [K,N] -> [M,N] through cblas_sgemm. */
sd_tensor *sd_matmul(sd_graph *g, sd_tensor *a, sd_tensor *b);
/* y = x w^T + b: x [N,in], w [out,in] (PyTorch layout), b [out] or NULL. */
sd_tensor *sd_linear(sd_graph *g, sd_tensor *x, sd_tensor *w, sd_tensor *b);

/* ---- convolution (lib/conv/ops_conv.c) -------------------------------------- */
/* x [N,Cin,H,W], w [Cout,Cin,K,K], b [Cout] or NULL; square kernel, zero
 * padding `pad` on every side, `stride` >= 1.
 * Output [N,Cout,(H+2p-K)/s+1,(W+2p-K)/s+1]. */
sd_tensor *sd_conv2d(sd_graph *g, sd_tensor *x, sd_tensor *w, sd_tensor *b, int stride, int pad);

/* ---- normalisation (lib/ops/ops_norm.c) ------------------------------------ */
/* x [N,C,...]; statistics per (sample, group) over C/groups x spatial;
 * gamma, beta [C] (either may be NULL: then 1 / 0). */
sd_tensor *sd_group_norm(sd_graph *g, sd_tensor *x, int groups, sd_tensor *gamma,
                         sd_tensor *beta, float eps);
/* Fused SiLU(GroupNorm(x)) in one pass (the U-Net's hot path); same numbers
 * as sd_silu(sd_group_norm(...)). */
sd_tensor *sd_group_norm_silu(sd_graph *g, sd_tensor *x, int groups, sd_tensor *gamma,
                              sd_tensor *beta, float eps);
/* sd_conv2d(sd_group_norm_silu(h, ...), w, b, stride, pad) as one node that
 * recomputes the activation in backward instead of storing it (ops_fused.c):
 * same numbers, one activation less memory. */
sd_tensor *sd_group_norm_silu_conv2d(sd_graph *g, sd_tensor *h, int groups, sd_tensor *gamma,
                                     sd_tensor *beta, float eps, sd_tensor *w, sd_tensor *b,
                                     int stride, int pad);
/* Instance norm: group norm with one channel per group. */
sd_tensor *sd_instance_norm(sd_graph *g, sd_tensor *x, sd_tensor *gamma, sd_tensor *beta,
                            float eps);
/* Layer norm over the last dimension D: x [..., D], gamma, beta [D] or NULL. */
sd_tensor *sd_layer_norm(sd_graph *g, sd_tensor *x, sd_tensor *gamma, sd_tensor *beta,
                         float eps);
/* Batch norm over N (and H, W) per channel of x [N,C] or [N,C,H,W].
 * training: normalise with the batch statistics (biased variance) and update
 * running_mean/var (unbiased variance) with `momentum` as PyTorch does;
 * otherwise normalise with the running statistics. running_* are [C] arrays
 * owned by the caller (may be NULL in training mode). */
sd_tensor *sd_batch_norm(sd_graph *g, sd_tensor *x, sd_tensor *gamma, sd_tensor *beta,
                         float *running_mean, float *running_var, float momentum,
                         float eps, bool training);

/* ---- stochastic (lib/ops/ops_unary.c) -------------------------------------- */
/* Inverted dropout: zero with probability p, scale kept values by 1/(1-p).
 * Identity when !training or p == 0. Draws from rng. */
sd_tensor *sd_dropout(sd_graph *g, sd_tensor *x, float p, sd_rng *rng, bool training);

/* ---- Fourier and cosine transforms over H x W (lib/fft/ops_fft.c) ----------- */
/* Real 2-D FFT of each H x W plane of x [N,C,H,W] (unnormalised, FFTW sign
 * -1). Output [N,C,H,2*(W/2+1)]: the half spectrum, real and imaginary parts
 * interleaved along the last axis. */
sd_tensor *sd_rfft2(sd_graph *g, sd_tensor *x);
/* Inverse of sd_rfft2 (normalised by 1/(H W)); W is the real width. Only the
 * Hermitian part of the input is used, as in numpy.fft.irfft2. */
sd_tensor *sd_irfft2(sd_graph *g, sd_tensor *X, int W);
/* Orthonormal 2-D DCT-II of each plane (scipy dct(type=2, norm='ortho') along
 * both axes) and its inverse, the orthonormal DCT-III. */
sd_tensor *sd_dct2(sd_graph *g, sd_tensor *x);
sd_tensor *sd_idct2(sd_graph *g, sd_tensor *x);

#endif

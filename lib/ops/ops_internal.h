/* ops_internal.h - pieces of ops shared between op files (not public API).
 *
 * The fused ops of ops_fused.c run a GroupNorm+SiLU and a convolution as one
 * graph node that recomputes the normalised activation in backward instead of
 * storing it; they need the two ops' kernels without their graph nodes. */
#ifndef SD_OPS_INTERNAL_H
#define SD_OPS_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>

#include "sd/tensor.h"

/* SD_VECTOR_CLONES before a function compiles it for AVX-512, AVX2 and the
 * baseline (SSE2), and picks one at load time from cpuid (GCC/Clang
 * target_clones, resolved through an ifunc): the build stays portable while
 * elementwise loops run 16 lanes wide where the CPU has them. Measured on
 * GroupNorm+SiLU (tools/bench/bench_train): the baseline build is 4 lanes.
 * Results are deterministic on one machine; across instruction sets the
 * lane partial sums of reductions differ in rounding. Only for functions
 * without OpenMP regions inside (the outlined region would not be cloned):
 * call them from the parallel loop instead. */
#if defined(__x86_64__) && defined(__ELF__) && !defined(SD_NO_VECTOR_CLONES) && \
    ((defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 8) ||                 \
     (defined(__clang__) && __clang_major__ >= 14))
#define SD_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define SD_VECTOR_CLONES
#endif

/* ---- conv2d (ops_conv.c) ---- */
bool sd__conv2d_check(sd_graph *gr, const sd_tensor *x, const sd_tensor *w, const sd_tensor *b,
                      int stride, int pad);
void sd__conv2d_out_shape(const sd_tensor *x, const sd_tensor *w, int stride, int pad,
                          int shape[4]);
sd_status sd__conv2d_forward_into(sd_graph *gr, const sd_tensor *x, const sd_tensor *w,
                                  const sd_tensor *b, int stride, int pad, float *y);
/* Accumulates dx into x->grad (if non-NULL), dw, db given dy. */
sd_status sd__conv2d_backward_from(sd_graph *gr, sd_tensor *x, sd_tensor *w, sd_tensor *b,
                                   int stride, int pad, float *dy);

/* ---- group norm + SiLU (ops_norm.c), x [N, C, ...] ---- */
bool sd__gn_check(sd_graph *g, const char *op, sd_tensor *x, int groups, sd_tensor *gamma,
                  sd_tensor *beta, float eps);
/* Bytes of the per-(sample, group) statistics saved for backward. */
size_t sd__gn_stats_bytes(const sd_tensor *x, int groups);
/* y = SiLU(GroupNorm(x)); stats (or NULL) receives the statistics. */
void sd__gn_silu_forward_into(const sd_tensor *x, int groups, const sd_tensor *gamma,
                              const sd_tensor *beta, float eps, float *y, void *stats);
/* Accumulates dx, dgamma, dbeta given dy = d out / d SiLU(GroupNorm(x)). */
sd_status sd__gn_silu_backward_from(sd_graph *g, sd_tensor *x, sd_tensor *gamma, sd_tensor *beta,
                                    int groups, void *stats, float *dy);

#endif

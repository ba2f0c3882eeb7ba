/* conv_igemm.h - implicit-GEMM kernels for convolutions (internal, not API).
 *
 * The implicit matrix B [K, n_img * npix] is never stored: column (i, q), for
 * image i and pixel q = y * grid_w + x of a grid_h x grid_w grid, is
 *
 *     B[k][(i, q)] = src[i * src_img + row_off[k] + q]   if (y, x) lies in
 *                    rect[row_tap[k]] = {y0, y1, x0, x1} (half-open), else 0.
 *
 * or, with src_xs = 2 (stride-2 convolutions read straight from x), for
 * every valid (y, x): src[i * src_img + row_off[k] + y * src_ys + 2 * x].
 *
 * That is im2col of a convolution whose taps are shifted copies of planes
 * (Wo == Wp: "same" stride-1 convolutions, stride 2 on phase planes, and
 * the transposed convolutions of their backward, see ops_conv.c). The
 * kernels pack B straight from src, the packing a BLAS would do on a stored
 * column matrix anyway, so im2col's extra pass over a column buffer
 * disappears.
 *
 *   sd__igemm_run:    C = A B, A [M, K];  out[i*out_img + m*out_ch + q]
 *                     = C + bias[m] (or += C when accumulate)
 *   sd__igemm_dw_run: dw [M, K] += D B^T, D [M, columns] the cotangent
 *                     dy[i*dy_img + m*dy_ch + q]   (the weight gradient)
 *
 * Every output element is computed by one thread in an order fixed by the
 * shapes, so results do not depend on the thread count. The kernels need
 * AVX-512F (checked at run time): call them only if sd__igemm_available().
 */
#ifndef SD_CONV_IGEMM_H
#define SD_CONV_IGEMM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Forward: columns per strip (three 16-float vectors), rows per micro-tile. */
#define SD_IGEMM_NR 48
#define SD_IGEMM_MR 8

typedef struct sd_igemm_b {
    int K;
    const float *src;
    size_t src_img;
    int grid_h, grid_w, n_img;
    const ptrdiff_t *row_off; /* [K] */
    const int *row_tap;       /* [K], index into rect */
    const int (*rect)[4];     /* [ntaps] {y0, y1, x0, x1} */
    int ntaps;
    int src_xs, src_ys; /* 0: pixel q at offset q; 2: pixel (y, x) at y*src_ys + 2x */
} sd_igemm_b;

typedef struct sd_igemm {
    sd_igemm_b b;
    int M;
    const float *A; /* [M, K], row stride lda */
    int lda;
    float *out;
    size_t out_img, out_ch;
    const float *bias; /* [M] or NULL (only when !accumulate) */
    bool accumulate;
} sd_igemm;

typedef struct sd_igemm_dw {
    sd_igemm_b b;
    int M;
    const float *dy;
    size_t dy_img, dy_ch;
    float *dw; /* [M, K], accumulated into */
} sd_igemm_dw;

/* True if the CPU runs the kernels and they are enabled (sd__igemm_enable). */
bool sd__igemm_available(void);
/* Tests switch the kernels off and on to compare against the BLAS path. */
void sd__igemm_enable(bool on);
/* Whether the kernels take M rows: forward (multiple of 8), dw (of 16). */
bool sd__igemm_fits(int M);
bool sd__igemm_dw_fits(int M);
/* Scratch floats for `threads` threads, and the runs (threads 1: the
 * calling thread; more: an OpenMP team). */
size_t sd__igemm_scratch_floats(const sd_igemm *p, int threads);
void sd__igemm_run(const sd_igemm *p, float *scratch, int threads);
size_t sd__igemm_dw_scratch_floats(const sd_igemm_dw *p, int threads);
void sd__igemm_dw_run(const sd_igemm_dw *p, float *scratch, int threads);

/* Which path each conv2d product took (ops_conv.c), so that tests can
 * assert that the kernels ran rather than infer it: counts of forward, dx
 * and dw products by path, for products started on the calling thread since
 * its last reset. A product is counted once per op call when its path is
 * chosen (one thread-local increment; nothing in the loops). The fused
 * GroupNorm+SiLU+conv op counts as a convolution. */
typedef enum sd_conv_dir { SD_CONV_FORWARD, SD_CONV_DX, SD_CONV_DW, SD_CONV_NDIR } sd_conv_dir;
typedef enum sd_conv_path { SD_CONV_IM2COL, SD_CONV_IGEMM, SD_CONV_NPATH } sd_conv_path;
typedef struct sd_conv_paths {
    uint64_t n[SD_CONV_NDIR][SD_CONV_NPATH];
} sd_conv_paths;
sd_conv_paths sd__conv_paths(void);
void sd__conv_paths_reset(void);

/* Stride-2 phase helpers (AVX-512 when sd__igemm_available): split n
 * floats into even[(n+1)/2] and odd[n/2], and the adjoint, dst[j] +=
 * (j even ? even : odd)[j/2]. */
void sd__split2(const float *src, int n, float *even, float *odd);
void sd__merge2_add(float *dst, int n, const float *even, const float *odd);

#endif

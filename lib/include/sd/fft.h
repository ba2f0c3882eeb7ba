/* fft.h - cached FFTW (single precision) plans and raw-array 2-D transforms.
 *
 * Overview
 *   FFTW splits its work into planning (slow, NOT thread-safe) and executing
 *   (fast, thread-safe with the new-array functions fftwf_execute_dft_r2c /
 *   _dft_c2r / _r2r). This module owns every plan scorediff makes: a plan is
 *   created once per (kind, H, W) under a process-wide mutex and reused for
 *   the rest of the process, so ops running on worker threads only execute.
 *
 *       fftwf_plan p = sd_fft_plan_get(SD_FFT_DCT2, H, W);
 *       if (!p) { puts(sd_error_message()); return; }
 *       fftwf_execute_r2r(p, buf, buf);          // any thread, any buffer
 *
 *   The graph ops built on these plans (sd_rfft2, sd_irfft2, sd_dct2,
 *   sd_idct2) are declared in sd/ops.h. sd_dct2_planes applies the
 *   orthonormal 2-D DCT to raw arrays, for code outside the graph (the
 *   matrix-diffusion samplers diagonalise the heat equation with it).
 *
 * Plans
 *   All plans are made with FFTW_ESTIMATE | FFTW_UNALIGNED:
 *   - ESTIMATE: planning is instantaneous, touches no data, and picks the same
 *     algorithm every run, so results are reproducible run to run (MEASURE
 *     times candidates and may pick differently, changing the rounding).
 *   - UNALIGNED: a plan may be executed on any pointer, in particular on the
 *     planes of arena tensors, whose offsets are not multiples of 16 bytes
 *     when H*W is odd.
 *   Layouts (row-major planes, H rows of W reals / W/2+1 complex numbers):
 *     SD_FFT_R2C   out-of-place, real [H][W] -> complex [H][W/2+1],
 *                  X[k] = sum_n x[n] exp(-2 pi i (k1 n1/H + k2 n2/W)), unnormalised.
 *     SD_FFT_C2R   out-of-place, complex [H][W/2+1] -> real [H][W], the
 *                  unnormalised inverse (sign +1). DESTROYS its input and
 *                  assumes columns 0 (and W/2, W even) are Hermitian.
 *     SD_FFT_DCT2  IN-PLACE r2r [H][W], FFTW REDFT10 along both axes:
 *                  Y[k] = 4 sum_n x[n] cos(pi k1 (2 n1 + 1) / 2H) cos(pi k2 (2 n2 + 1) / 2W).
 *     SD_FFT_DCT3  IN-PLACE r2r [H][W], FFTW REDFT01 along both axes (per axis
 *                  X[n] = Y[0] + 2 sum_{k>0} Y[k] cos(pi k (2n + 1) / 2N)).
 *   Execute a plan only with the same in-place / out-of-place choice.
 *
 * Ownership and threading
 *   Plans belong to the cache: never destroy them. sd_fft_plan_get and
 *   sd_dct2_planes may be called from any thread at any time.
 *   sd_fft_cache_clear destroys every plan and frees FFTW's global state (for
 *   tests and valgrind); it must not run while another thread uses a plan.
 *
 * Errors
 *   SD_ERR_INVALID for bad sizes or kinds, SD_ERR_NOMEM when memory or FFTW
 *   planning fails (FFTW returns a NULL plan).
 */
#ifndef SD_FFT_H
#define SD_FFT_H

#include <stdbool.h>
#include <stddef.h>

#include <fftw3.h>

#include "sd/status.h"

typedef enum sd_fft_kind {
    SD_FFT_R2C,  /* real -> half spectrum, sign -1 */
    SD_FFT_C2R,  /* half spectrum -> real, sign +1, unnormalised */
    SD_FFT_DCT2, /* REDFT10 x REDFT10, in place */
    SD_FFT_DCT3  /* REDFT01 x REDFT01, in place */
} sd_fft_kind;

/* The cached plan of `kind` for one H x W plane, created on first use.
 * Returns NULL with the message set on bad arguments or planner failure. */
fftwf_plan sd_fft_plan_get(sd_fft_kind kind, int H, int W);

/* Number of plans currently cached (for tests). */
size_t sd_fft_cache_size(void);

/* Destroy every cached plan and call fftwf_cleanup(). Later calls replan. */
void sd_fft_cache_clear(void);

/* Orthonormal 2-D DCT of `planes` consecutive H x W planes.
 *   in, out: [planes, H, W] floats; out == in (in place) is allowed, other
 *            overlaps are not.
 *   inverse == false: DCT-II ortho along both axes (scipy.fft.dctn(x, type=2,
 *            norm='ortho')): y[k] = s_H(k1) s_W(k2) sum_n x[n] cos(pi k1 (2 n1 + 1) / 2H)
 *            cos(pi k2 (2 n2 + 1) / 2W), s_N(0) = sqrt(1/N), s_N(k>0) = sqrt(2/N).
 *   inverse == true:  DCT-III ortho, the inverse and the transpose of the above.
 * Planes are processed in parallel (OpenMP) when the arrays are large. */
sd_status sd_dct2_planes(const float *in, float *out, int planes, int H, int W, bool inverse);

#endif

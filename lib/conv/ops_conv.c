/* ops_conv.c - 2-D convolution (sd_conv2d): implicit GEMM, or im2col + sgemm.
 *
 * Two paths. On CPUs with AVX-512F the planar geometries (below: "same" 3x3
 * and 5x5, 3x3 stride 2, 1x1 on small planes) with channel counts that are
 * multiples of 8 (16 for dw) run on the implicit-GEMM kernels of
 * conv_igemm.c, which gather B straight from x / dy (glue in
 * ops_conv_igemm.c; shared geometry in conv_geom.h). Everything else, and every CPU without AVX-512, takes the
 * im2col + sgemm path described here; tests run both.
 *
 * Dimensions: N batch, Cin/Cout channels, H x W input, Ho x Wo output, K
 * square kernel, s stride, p zero padding; CKK = Cin*K*K, HoWo = Ho*Wo.
 *
 * Forward, per image n (x_n [Cin,H,W], y_n [Cout,HoWo], w [Cout,CKK]):
 *
 *     col_n[(c*K+ki)*K+kj, oy*Wo+ox] = x_n[c, oy*s-p+ki, ox*s-p+kj]  (0 outside)
 *     y_n = w col_n + b
 *
 * Cache (issue #2): one sgemm over the whole batch streams a column matrix
 * of tens of MB through L3 (70-90 GFLOP/s on unet-28); per-image column
 * buffers (<= ~1 MB) stay in L2. So the batch is cut into chunks of nb
 * images, OpenMP runs the chunks in parallel (static schedule), each thread
 * owns one set of scratch buffers taken from the arena once per call, and
 * each chunk is one single-threaded sgemm. nb = 1 where one image already
 * makes a wide GEMM (28x28, 14x14); at 7x7 (HoWo = 49, too thin for the
 * sgemm micro-kernels) several images share a GEMM, col [CKK, nb*HoWo], and
 * the result is scattered back to NCHW. 1x1 stride-1 convolutions of single
 * images use x_n itself as col_n.
 *
 * im2col speed: for the usual geometries (Wo == ceil(W/s): "same" 3x3 and
 * 5x5, 1x1, 3x3 stride 2 pad 1) each col row is ONE shifted contiguous copy
 * of a zero-bordered (phase) plane plus a few zeroed padding columns, not Ho
 * short row copies (see "Phase planes" below); at 7x7 that halved the cost.
 *
 * Backward recomputes col_n instead of storing N column buffers (memory).
 * dx is computed as a transposed convolution (one forward-shaped GEMM per
 * phase plane, inner dimension Cout*K*K) where the geometry allows, else as
 * w^T dy followed by col2im. dw is a sum over images: it is accumulated into
 * SD_CONV_SLOTS fixed partial buffers (each a fixed range of chunks) that
 * are summed in slot order.
 *
 * Determinism: the chunking depends on the shape only, a chunk's GEMM is
 * never split (sd_gemm_serial), and the dw slots do not depend on the
 * thread count, so every result is bit-identical for any thread count. The
 * price: a batch that is a single chunk (one 28x28 image, a few at 7x7) runs
 * on one core; batches are what feed the cores.
 */
#include "conv/conv_geom.h"
#include "conv/conv_igemm.h"
#include "ops/ops_internal.h"
#include "sd/gemm.h"
#include "sd/ops.h"
#include "core/graph_internal.h"

#include <limits.h>
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* Tuning (measured with tools/bench/bench_conv; -D overrides for experiments).
 * Aim for GEMMs at least this many output columns wide (8 images at 7x7: a
 * batch of 64 is 8 chunks, which also splits evenly over 2 threads) ... */
#ifndef SD_CONV_MIN_COLS
#define SD_CONV_MIN_COLS 392
#endif
/* ... as long as a chunk's column buffer stays within one core's L2. */
#ifndef SD_CONV_COL_BYTES
#define SD_CONV_COL_BYTES (1u << 20)
#endif
/* For 1x1 convolutions a single image needs no im2col and no scatter at all
 * (col_n = x_n, y_n written in place), which beats wider GEMMs down to ~128
 * columns (one 14x14 image); below that (7x7) chunks follow SD_CONV_MIN_COLS
 * like other convolutions (8 images at 7x7: 1x1 128->64 forward +9% over 3). */
#ifndef SD_CONV_MIN_COLS_1X1
#define SD_CONV_MIN_COLS_1X1 128
#endif
/* dx as a transposed convolution when SD_CONV_TR_RATIO * Cin >= Cout, else
 * w^T dy + col2im. The transposed GEMM's output has Cin rows: at Cout = 2 Cin
 * (unet-28's 32->64 @14) that was the thinner GEMM, and w^T dy measured 18%
 * faster over the whole backward (bench_conv shape RB(32,64) conv1). */
#ifndef SD_CONV_TR_RATIO
#define SD_CONV_TR_RATIO 1
#endif
/* Fixed number of dw partial sums (see the file comment). */
#define SD_CONV_SLOTS 8

static void geom_init(conv_geom *g, const sd_tensor *x, const sd_tensor *w, int s, int p)
{
    g->N = x->shape[0];
    g->Cin = x->shape[1];
    g->H = x->shape[2];
    g->W = x->shape[3];
    g->Cout = w->shape[0];
    g->K = w->shape[2];
    g->s = s;
    g->p = p;
    g->Ho = (g->H + 2 * p - g->K) / s + 1;
    g->Wo = (g->W + 2 * p - g->K) / s + 1;
    g->HW = g->H * g->W;
    g->HoWo = g->Ho * g->Wo;
    g->CKK = g->Cin * g->K * g->K;
    g->Hp = (g->H + s - 1) / s;
    g->Wp = (g->W + s - 1) / s;
    g->planar = g->Wo == g->Wp;
    /* A tap reads plane index q + dy*Wp + dx for every output q in [0, HoWo):
     * add zero rows around the data so that even the taps in the padding
     * read inside the buffer (and read zeros, except for the padding columns,
     * which are zeroed explicitly). */
    int lo = floor_div(-p, s) * (g->Wp + 1);
    int hi = (g->HoWo - 1) + floor_div(g->K - 1 - p, s) * (g->Wp + 1);
    g->PT = lo < 0 ? (-lo + g->Wp - 1) / g->Wp : 0;
    int pb = hi >= g->Hp * g->Wp ? (hi + 1 - g->Hp * g->Wp + g->Wp - 1) / g->Wp : 0;
    g->Rp = g->PT + g->Hp + pb;
    g->use_ph = g->planar && (s > 1 || g->PT > 0 || pb > 0);
    /* The transposed columns read dy index q - shift for q in [0, Hp*Wp). */
    int smin = floor_div(-p, s) * (g->Wp + 1), smax = floor_div(g->K - 1 - p, s) * (g->Wp + 1);
    int over = g->Hp * g->Wp - smin - g->HoWo;
    g->PTy = smax > 0 ? (smax + g->Wo - 1) / g->Wo : 0;
    g->Ry = g->PTy + g->Ho + (over > 0 ? (over + g->Wo - 1) / g->Wo : 0);
    g->direct = g->K == 1 && s == 1 && p == 0;
    g->colmask = g->ctmask = NULL;
    /* Smallest nb reaching SD_CONV_MIN_COLS columns, shrunk while the column
     * buffer exceeds SD_CONV_COL_BYTES. Depends on the shape only. */
    int min_cols = g->direct && g->HoWo >= SD_CONV_MIN_COLS_1X1 ? SD_CONV_MIN_COLS_1X1 : SD_CONV_MIN_COLS;
    int nb = (min_cols + g->HoWo - 1) / g->HoWo;
    if (nb > g->N) nb = g->N;
    while (nb > 1 && (double)g->CKK * nb * g->HoWo * sizeof(float) > SD_CONV_COL_BYTES) nb--;
    g->nb = nb;
    g->chunks = (g->N + nb - 1) / nb;
}

/* Images [n0, n0+cnt) of chunk c. */
static int chunk_images(const conv_geom *g, int c, int *n0)
{
    *n0 = c * g->nb;
    return g->N - *n0 < g->nb ? g->N - *n0 : g->nb;
}

/* ph [Cin, s*s, Rp, Wp]: phase plane (ry, rx) of channel c holds
 * x_n[c, i*s+ry, j*s+rx] at row PT+i, column j; all other cells are zero
 * (border rows, and cells past the input edge when s does not divide H, W). */
static size_t ph_plane(const conv_geom *g) { return (size_t)g->Rp * (size_t)g->Wp; }

SD_VECTOR_CLONES
static void to_phases(const conv_geom *g, const float *x, float *ph)
{
    const int s = g->s;
    size_t plane = ph_plane(g), data = (size_t)g->PT * (size_t)g->Wp;
    size_t n_planes = (size_t)g->Cin * (size_t)(s * s);
    if (g->H % s || g->W % s) {
        memset(ph, 0, n_planes * plane * sizeof(float));
    } else {
        size_t tail = plane - data - (size_t)g->Hp * (size_t)g->Wp;
        for (size_t k = 0; k < n_planes; k++) {
            memset(ph + k * plane, 0, data * sizeof(float));
            memset(ph + (k + 1) * plane - tail, 0, tail * sizeof(float));
        }
    }
    if (s == 1) {
        for (int c = 0; c < g->Cin; c++)
            memcpy(ph + (size_t)c * plane + data, x + (size_t)c * (size_t)g->HW,
                   (size_t)g->HW * sizeof(float));
        return;
    }
    for (int c = 0; c < g->Cin; c++)
        for (int iy = 0; iy < g->H; iy++) {
            const float *xr = x + ((size_t)c * g->H + iy) * (size_t)g->W;
            float *base = ph + ((size_t)c * s * s + (size_t)(iy % s) * s) * plane + data +
                          (size_t)(iy / s) * (size_t)g->Wp;
            if (s == 2 && g->W % 2 == 0) {
                /* The common Down layer: split even/odd columns in one pass. */
                float *d0 = base, *d1 = base + plane;
                for (int j = 0; j < g->W / 2; j++) {
                    d0[j] = xr[2 * j];
                    d1[j] = xr[2 * j + 1];
                }
                continue;
            }
            for (int rx = 0; rx < s; rx++) {
                float *d = base + (size_t)rx * plane;
                for (int j = 0, ix = rx; ix < g->W; j++, ix += s) d[j] = xr[ix];
            }
        }
}

/* Adjoint of to_phases: dx_n [Cin,H,W] += the data cells of dph. */
static void from_phases_add(const conv_geom *g, const float *dph, float *dx)
{
    const int s = g->s;
    size_t plane = ph_plane(g), data = (size_t)g->PT * (size_t)g->Wp;
    if (s == 1) {
        for (int c = 0; c < g->Cin; c++) {
            float *d = dx + (size_t)c * (size_t)g->HW;
            const float *src = dph + (size_t)c * plane + data;
            for (int q = 0; q < g->HW; q++) d[q] += src[q];
        }
        return;
    }
    for (int c = 0; c < g->Cin; c++)
        for (int iy = 0; iy < g->H; iy++) {
            float *xr = dx + ((size_t)c * g->H + iy) * (size_t)g->W;
            const float *base = dph + ((size_t)c * s * s + (size_t)(iy % s) * s) * plane + data +
                                (size_t)(iy / s) * (size_t)g->Wp;
            for (int rx = 0; rx < s; rx++) {
                const float *d = base + (size_t)rx * plane;
                for (int j = 0, ix = rx; ix < g->W; j++, ix += s) xr[ix] += d[j];
            }
        }
}

/* Zero the padding columns (ox < ox0 or ox >= ox1) of every row of r
 * [Ho, Wo]. Column by column: there are at most about p/s of them, and a
 * strided loop does not become one tiny memset call per row. */
static void zero_pad_cols(const conv_geom *g, const conv_tap *t, float *r)
{
    const size_t Wo = (size_t)g->Wo;
    for (int ox = 0; ox < g->Wo; ox++) {
        if (ox == t->ox0) ox = t->ox1;
        if (ox >= g->Wo) break;
        for (int oy = 0; oy < g->Ho; oy++) r[(size_t)oy * Wo + (size_t)ox] = 0.0f;
    }
}

/* Where, in the phase planes (ph, or x itself when !use_ph), tap t of
 * channel c reads for output q = 0: output q reads element q from here. */
static ptrdiff_t tap_offset(const conv_geom *g, const conv_tap *t, int c)
{
    size_t plane = g->use_ph ? ph_plane(g) : (size_t)g->HW;
    return (ptrdiff_t)(((size_t)c * (size_t)(g->s * g->s) + (size_t)t->plane) * plane) +
           (ptrdiff_t)g->PT * g->Wp + t->shift; /* >= 0 by the choice of PT */
}

/* Masked row copies. A planar tap row is one shifted copy whose padding
 * columns (which read the neighbouring row) must then be zeroed. For small
 * planes (7x7: 49 floats) the cost was the per-row memcpy call and the
 * strided zeroing loop, not the bytes: 15% of a 7x7 backward. So each row is
 * copied by an inline loop that ANDs every float's bits with a per-column
 * mask (all ones, or zero in a padding column): exact for every value (NaN
 * and Inf included, unlike multiplying by 0/1), vectorised, and not a pure
 * copy, so the compiler does not turn it back into a memcpy call. The masks
 * depend only on the tap's column kj: colmask[kj][q] for im2col rows,
 * ctmask[kj][q] for the transposed-dx columns. Used while K*HoWo stays
 * small (SD_CONV_MASK_MAX); larger planes amortise the call anyway. */
#ifndef SD_CONV_MASK_MAX
#define SD_CONV_MASK_MAX 16384
#endif

static inline void masked_copy(float *restrict dst, const float *restrict src,
                               const uint32_t *restrict mask, size_t n)
{
#pragma omp simd
    for (size_t q = 0; q < n; q++) {
        union {
            float f;
            uint32_t u;
        } v = {.f = src[q]};
        v.u &= mask[q];
        dst[q] = v.f;
    }
}

/* mask[kj][q] for q = row*width + col over rows x width cells: ~0 where
 * lo[kj] <= col < hi[kj]. */
static void build_masks(int K, int rows, int width, const int *lo, const int *hi, uint32_t *mask)
{
    size_t n = (size_t)rows * (size_t)width;
    for (int kj = 0; kj < K; kj++)
        for (int r = 0; r < rows; r++)
            for (int c = 0; c < width; c++)
                mask[(size_t)kj * n + (size_t)r * (size_t)width + (size_t)c] =
                    c >= lo[kj] && c < hi[kj] ? ~(uint32_t)0 : 0;
}

static size_t colmask_words(const conv_geom *g)
{
    return g->planar && (size_t)g->K * (size_t)g->HoWo <= SD_CONV_MASK_MAX
               ? (size_t)g->K * (size_t)g->HoWo
               : 0;
}
static size_t ctmask_words(const conv_geom *g)
{
    size_t n = (size_t)g->K * (size_t)g->Hp * (size_t)g->Wp;
    return g->planar && n <= SD_CONV_MASK_MAX ? n : 0;
}

/* Fill the masks in mem (colmask_words + ctmask_words, each rounded up to
 * 16 words) and point g at them; with mem == NULL leave the plain path. */
static void geom_set_masks(conv_geom *g, float *mem)
{
    size_t nc = colmask_words(g), nt = ctmask_words(g);
    if (!mem || (!nc && !nt)) return;
    uint32_t *m = (uint32_t *)(void *)mem;
    int lo[64], hi[64]; /* K <= 64 here: K * HoWo <= SD_CONV_MASK_MAX */
    if (g->K > 64) return;
    if (nc) {
        for (int kj = 0; kj < g->K; kj++) valid_range(g, kj, g->W, g->Wo, &lo[kj], &hi[kj]);
        build_masks(g->K, g->Ho, g->Wo, lo, hi, m);
        g->colmask = m;
        m += (nc + 15) & ~(size_t)15;
    }
    if (nt) {
        /* Transposed columns: column j reads dy column j - dxo (dx_transposed). */
        for (int kj = 0; kj < g->K; kj++) {
            lo[kj] = floor_div(kj - g->p, g->s);
            hi[kj] = lo[kj] + g->Wo;
        }
        build_masks(g->K, g->Hp, g->Wp, lo, hi, m);
        g->ctmask = m;
    }
}

static size_t mask_floats(const conv_geom *g)
{
    return ((colmask_words(g) + 15) & ~(size_t)15) + ((ctmask_words(g) + 15) & ~(size_t)15);
}

/* col [CKK, ld] (columns 0..HoWo-1 written) from x_n [Cin,H,W]:
 *   col[(c*K+ki)*K+kj, oy*Wo+ox] = x_n[c, oy*s-p+ki, ox*s-p+kj] or 0.
 * ph: scratch [Cin, s*s, Rp, Wp] when use_ph. */
SD_VECTOR_CLONES
static void im2col(const conv_geom *g, const float *x, float *col, int ld, float *ph)
{
    const int K = g->K, s = g->s, Wo = g->Wo;
    const float *planes = x;
    if (g->use_ph) {
        to_phases(g, x, ph);
        planes = ph;
    }
    for (int ki = 0; ki < K; ki++)
        for (int kj = 0; kj < K; kj++) {
            conv_tap t = tap_init(g, ki, kj);
            for (int c = 0; c < g->Cin; c++) {
                float *r = col + (size_t)((c * K + ki) * K + kj) * (size_t)ld;
                if (t.oy1 == t.oy0) {
                    memset(r, 0, (size_t)g->HoWo * sizeof(float));
                } else if (g->planar) {
                    /* One shifted copy: rows in the padding read zero border
                     * rows; padding columns read the neighbouring row and are
                     * zeroed (by the mask, or after the copy). */
                    const float *src = planes + tap_offset(g, &t, c);
                    if (g->colmask) {
                        masked_copy(r, src, g->colmask + (size_t)kj * (size_t)g->HoWo,
                                    (size_t)g->HoWo);
                    } else {
                        memcpy(r, src, (size_t)g->HoWo * sizeof(float));
                        zero_pad_cols(g, &t, r);
                    }
                } else {
                    const float *xc = x + (size_t)c * (size_t)g->HW;
                    memset(r, 0, (size_t)t.oy0 * (size_t)Wo * sizeof(float));
                    for (int oy = t.oy0; oy < t.oy1; oy++) {
                        float *ro = r + (size_t)oy * (size_t)Wo;
                        /* xr[(ox-ox0)*s] = x_n[c, oy*s-p+ki, ox*s-p+kj] for ox in [ox0, ox1) */
                        const float *xr = xc + (size_t)(oy * s - g->p + ki) * (size_t)g->W +
                                          (size_t)(t.ox0 * s - g->p + kj);
                        for (int ox = 0; ox < t.ox0; ox++) ro[ox] = 0.0f;
                        for (int ox = t.ox0; ox < t.ox1; ox++) ro[ox] = xr[(ox - t.ox0) * s];
                        for (int ox = t.ox1; ox < Wo; ox++) ro[ox] = 0.0f;
                    }
                    memset(r + (size_t)t.oy1 * (size_t)Wo, 0,
                           (size_t)(g->Ho - t.oy1) * (size_t)Wo * sizeof(float));
                }
            }
        }
}

/* Adjoint of im2col: dx_n [Cin,H,W] += scatter of dcol [CKK, ld]:
 *   dx_n[c, oy*s-p+ki, ox*s-p+kj] += dcol[(c*K+ki)*K+kj, oy*Wo+ox] (valid taps).
 * dcol is scratch: the planar path zeroes its padding columns, then adds each
 * row to the phase planes with one shifted add; padding rows land in the
 * border rows (or edge cells) of dph, which from_phases_add ignores. */
static void col2im(const conv_geom *g, float *dcol, int ld, float *dx, float *dph)
{
    const int K = g->K, s = g->s, Wo = g->Wo;
    float *planes = dx;
    if (g->use_ph) {
        memset(dph, 0, (size_t)g->Cin * (size_t)(s * s) * ph_plane(g) * sizeof(float));
        planes = dph;
    }
    for (int ki = 0; ki < K; ki++)
        for (int kj = 0; kj < K; kj++) {
            conv_tap t = tap_init(g, ki, kj);
            if (t.oy1 == t.oy0) continue;
            for (int c = 0; c < g->Cin; c++) {
                float *r = dcol + (size_t)((c * K + ki) * K + kj) * (size_t)ld;
                if (g->planar) {
                    zero_pad_cols(g, &t, r);
                    float *d = planes + tap_offset(g, &t, c);
                    for (int q = 0; q < g->HoWo; q++) d[q] += r[q];
                } else {
                    float *xc = dx + (size_t)c * (size_t)g->HW;
                    for (int oy = t.oy0; oy < t.oy1; oy++) {
                        const float *ro = r + (size_t)oy * (size_t)Wo;
                        float *xr = xc + (size_t)(oy * s - g->p + ki) * (size_t)g->W +
                                    (size_t)(t.ox0 * s - g->p + kj);
                        for (int ox = t.ox0; ox < t.ox1; ox++) xr[(ox - t.ox0) * s] += ro[ox];
                    }
                }
            }
        }
    if (g->use_ph) from_phases_add(g, dph, dx);
}

/* ---- dx as a transposed convolution (planar geometry) --------------------
 * dx_n[ci, iy, ix] = sum over taps (ki,kj) and co of w[co,ci,ki,kj] *
 * dy_n[co, oy, ox] with (iy, ix) = (oy*s-p+ki, ox*s-p+kj). In the phase
 * planes of dx (see above) that is, for the taps t of phase plane P,
 *     dxP[ci, i*Wp+j] = sum_{co, t in P} wt_P[ci, co*nt_P+t] *
 *                       dy_n[co, (i-dy_t)*Wo + (j-dx_t)]       (0 off the grid)
 * and since Wo == Wp the dy index is q - shift_t: the "transposed columns"
 * colT_P[co*nt_P+t, q] are again shifted copies, of zero-bordered dy planes.
 * So dx is one GEMM per phase plane (one in all for stride 1) whose inner
 * dimension is Cout*nt_P (Cout*K*K for stride 1) and whose output is the
 * small [Cin, Hp*Wp] - the shape the forward GEMM runs fast at - instead of
 * w^T dy ([CKK, HoWo] output, inner dimension Cout) plus a col2im pass. */

/* dx of the chunk's images [n0, n0+cnt) by the transposed convolution.
 * dyp [cnt, Cout, Ry, Wo]: zero-bordered dy planes; ct: colT of one phase;
 * ob [Cin, cnt*Hp*Wp]: GEMM output unless it can go straight into dx. */
SD_VECTOR_CLONES
static void dx_transposed(const conv_geom *g, const float *dy, const float *wt, int n0, int cnt,
                          float *dyp, float *ct, float *ob, float *dx)
{
    const int s = g->s, Wo = g->Wo, Wp = g->Wp;
    size_t HpWp = (size_t)g->Hp * (size_t)Wp, yplane = (size_t)g->Ry * (size_t)Wo;
    size_t top = (size_t)g->PTy * (size_t)Wo, HoWo = (size_t)g->HoWo;
    size_t img_y = (size_t)g->Cout * HoWo, img_x = (size_t)g->Cin * (size_t)g->HW;
    int ld = cnt * (int)HpWp;
    for (int i = 0; i < cnt; i++)
        for (int co = 0; co < g->Cout; co++) {
            float *d = dyp + ((size_t)i * g->Cout + co) * yplane;
            memset(d, 0, top * sizeof(float));
            memcpy(d + top, dy + (size_t)(n0 + i) * img_y + (size_t)co * HoWo,
                   HoWo * sizeof(float));
            memset(d + top + HoWo, 0, (yplane - top - HoWo) * sizeof(float));
        }
    const float *wt_p = wt;
    for (int P = 0; P < s * s; P++) {
        int ntp = phase_taps(g, P), t = 0;
        if (ntp == 0) continue;
        for (int ki = 0; ki < g->K; ki++)
            for (int kj = 0; kj < g->K; kj++) {
                conv_tap tp = tap_init(g, ki, kj);
                if (tp.plane != P) continue;
                int dxo = floor_div(kj - g->p, s); /* column j reads dy column j - dxo */
                for (int co = 0; co < g->Cout; co++)
                    for (int i = 0; i < cnt; i++) {
                        float *r = ct + (size_t)(co * ntp + t) * (size_t)ld + (size_t)i * HpWp;
                        const float *src = dyp + ((size_t)i * g->Cout + co) * yplane + top;
                        /* r[q] = dy[q - shift]: rows off the dy grid read the
                         * zero border; columns off it wrap and are zeroed. */
                        if (g->ctmask) {
                            masked_copy(r, src - tp.shift, g->ctmask + (size_t)kj * HpWp, HpWp);
                            continue;
                        }
                        memcpy(r, src - tp.shift, HpWp * sizeof(float));
                        for (int j = 0; j < Wp; j++) {
                            if (j >= dxo && j < dxo + Wo) continue;
                            for (int pi = 0; pi < g->Hp; pi++)
                                r[(size_t)pi * (size_t)Wp + (size_t)j] = 0.0f;
                        }
                    }
                t++;
            }
        int kdim = g->Cout * ntp;
        if (s == 1 && cnt == 1) {
            /* The only phase plane is dx_n itself: accumulate into it. */
            sd_gemm_serial(false, false, g->Cin, ld, kdim, 1.0f, wt_p, kdim, ct, ld, 1.0f,
                           dx + (size_t)n0 * img_x, ld);
        } else {
            sd_gemm_serial(false, false, g->Cin, ld, kdim, 1.0f, wt_p, kdim, ct, ld, 0.0f, ob, ld);
            int ry = P / s, rx = P % s;
            for (int i = 0; i < cnt; i++)
                for (int ci = 0; ci < g->Cin; ci++) {
                    const float *o = ob + (size_t)ci * (size_t)ld + (size_t)i * HpWp;
                    float *d = dx + (size_t)(n0 + i) * img_x + (size_t)ci * (size_t)g->HW;
                    if (s == 1) {
                        for (int q = 0; q < g->HW; q++) d[q] += o[q];
                        continue;
                    }
                    for (int pi = 0, iy = ry; iy < g->H; pi++, iy += s)
                        for (int pj = 0, ix = rx; ix < g->W; pj++, ix += s)
                            d[(size_t)iy * (size_t)g->W + (size_t)ix] +=
                                o[(size_t)pi * (size_t)Wp + (size_t)pj];
                }
        }
        wt_p += (size_t)g->Cin * (size_t)kdim;
    }
}

/* Per-thread scratch, from the arena once per op call. */
enum { SC_COL, SC_YC, SC_PH, SC_DYP, SC_CT, SC_OB, SC_N };
typedef struct conv_scratch {
    float *col; /* [CKK, nb*HoWo] columns (or dcol), unless direct with nb = 1 */
    float *yc;  /* [Cout, nb*HoWo] chunk output (or dy), when nb > 1 */
    float *ph;  /* [Cin, s*s, Rp, Wp] phase planes, when use_ph */
    float *dyp; /* transposed dx: [nb, Cout, Ry, Wo] bordered dy planes */
    float *ct;  /* transposed dx: [Cout*max nt_P, nb*Hp*Wp] columns of one phase
                 * (the same memory as col when both are needed) */
    float *ob;  /* transposed dx: [Cin, nb*Hp*Wp] GEMM output */
} conv_scratch;

/* Buffer sizes in floats (each rounded up to a 64-byte line); returns the
 * per-thread total. need_col: forward columns; tr: transposed-dx buffers. */
static size_t scratch_sizes(const conv_geom *g, bool need_col, bool tr, size_t sz[SC_N])
{
    size_t L = (size_t)g->nb * (size_t)g->HoWo, LP = (size_t)g->nb * (size_t)g->Hp * (size_t)g->Wp;
    int max_nt = 0;
    for (int P = 0; tr && P < g->s * g->s; P++) {
        int n = phase_taps(g, P);
        if (n > max_nt) max_nt = n;
    }
    sz[SC_COL] = need_col ? (size_t)g->CKK * L : 0;
    /* The transposed-dx columns reuse the forward columns' buffer (a chunk's
     * dw GEMM is done with col before dx_transposed writes ct): one buffer
     * instead of two keeps a backward chunk's working set inside L2, where
     * two (900 KB each at 64 channels, 7x7, 8 images) spilled to L3. */
    size_t ct = tr ? (size_t)g->Cout * (size_t)max_nt * LP : 0;
    bool share = need_col && tr;
    if (share && ct > sz[SC_COL]) sz[SC_COL] = ct;
    sz[SC_YC] = g->nb > 1 ? (size_t)g->Cout * L : 0;
    sz[SC_PH] = g->use_ph ? (size_t)g->Cin * (size_t)(g->s * g->s) * ph_plane(g) : 0;
    sz[SC_DYP] = tr ? (size_t)g->nb * (size_t)g->Cout * (size_t)g->Ry * (size_t)g->Wo : 0;
    sz[SC_CT] = share ? 0 : ct;
    sz[SC_OB] = tr && (g->s > 1 || g->nb > 1) ? (size_t)g->Cin * LP : 0;
    size_t total = 0;
    for (int i = 0; i < SC_N; i++) total += sz[i] = (sz[i] + 15) & ~(size_t)15;
    return total;
}

static conv_scratch scratch_of(float *base, int t, const size_t sz[SC_N])
{
    size_t total = 0;
    for (int i = 0; i < SC_N; i++) total += sz[i];
    float *p[SC_N];
    p[0] = base + (size_t)t * total;
    for (int i = 1; i < SC_N; i++) p[i] = p[i - 1] + sz[i - 1];
    conv_scratch sc = {p[SC_COL], p[SC_YC], p[SC_PH], p[SC_DYP], p[SC_CT], p[SC_OB]};
    if (sz[SC_CT] == 0) sc.ct = sc.col; /* shared (scratch_sizes) */
    return sc;
}

/* B operand [CKK, cnt*HoWo] of a chunk: x_n itself on the direct path with
 * one image, otherwise the images' columns side by side in sc->col. */
static const float *chunk_columns(const conv_geom *g, const float *x, int n0, int cnt,
                                  const conv_scratch *sc)
{
    size_t img = (size_t)g->Cin * (size_t)g->HW;
    if (g->direct && cnt == 1) return x + (size_t)n0 * img;
    int ld = cnt * g->HoWo;
    for (int i = 0; i < cnt; i++)
        im2col(g, x + (size_t)(n0 + i) * img, sc->col + (size_t)i * g->HoWo, ld, sc->ph);
    return sc->col;
}

static int thread_id(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* Chunk range [*c0, *c1) of dw slot `slot` out of `slots`. */
static void slot_chunks(const conv_geom *g, int slot, int slots, int *c0, int *c1)
{
    *c0 = (int)((long)g->chunks * slot / slots);
    *c1 = (int)((long)g->chunks * (slot + 1) / slots);
}

/* sum of d[0..n) for db: float partial sums in vector lanes over blocks of
 * at most 1024 elements (each lane adds <= 1024/lanes terms, relative error
 * ~1e-6), the blocks added in double. A double accumulator per element did
 * not vectorise and took 13% of a 1x1 convolution's backward. The lane
 * order is fixed at compile time, so the sum is deterministic. */
SD_VECTOR_CLONES
static double row_sum(const float *d, size_t n)
{
    double total = 0.0;
    for (size_t b0 = 0; b0 < n; b0 += 1024) {
        size_t b1 = n - b0 < 1024 ? n : b0 + 1024;
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (size_t q = b0; q < b1; q++) s += d[q];
        total += s;
    }
    return total;
}

/* Path counts of this thread (conv_igemm.h): one increment per product. */
static _Thread_local sd_conv_paths conv_paths;

sd_conv_paths sd__conv_paths(void) { return conv_paths; }
void sd__conv_paths_reset(void) { memset(&conv_paths, 0, sizeof conv_paths); }
static inline void note_path(sd_conv_dir d, sd_conv_path p) { conv_paths.n[d][p]++; }

/* Forward expression being differentiated, per image n:
 *     y_n[Cout,HoWo] = w[Cout,CKK] col_n[CKK,HoWo] + b[Cout]
 * Given dy_n = dL/dy_n:
 *     db     += sum_{n, pixel} dy_n
 *     dw     += sum_n dy_n col_n^T                 ([Cout,HoWo] x [HoWo,CKK])
 *     dcol_n  = w^T dy_n,  dx_n += col2im(dcol_n)   ([CKK,Cout] x [Cout,HoWo])
 * where the last line is evaluated, on planar geometry with Cin >= Cout,
 * as the equivalent transposed convolution (dx_transposed: per phase plane
 * [Cin, Cout*nt_P] x [Cout*nt_P, Hp*Wp]). A chunk of cnt images is handled
 * as one GEMM with HoWo -> cnt*HoWo. */
static sd_status conv2d_backward(sd_graph *gr, sd_tensor *out)
{
    sd_tensor *x = out->src[0], *w = out->src[1], *b = out->src[2];
    conv_geom g;
    geom_init(&g, x, w, out->params.i[0], out->params.i[1]);
    const float *dy = out->grad;
    size_t img_y = (size_t)g.Cout * (size_t)g.HoWo, img_x = (size_t)g.Cin * (size_t)g.HW;

    if (b && b->grad) {
        /* db[co] += sum over n and pixels of dy[n, co, :] (double, per channel). */
        float *db = b->grad;
        size_t n_el = (size_t)g.N * img_y;
#pragma omp parallel for schedule(static) if (n_el >= 32768)
        for (int co = 0; co < g.Cout; co++) {
            double acc = 0.0;
            for (int n = 0; n < g.N; n++)
                acc += row_sum(dy + (size_t)n * img_y + (size_t)co * (size_t)g.HoWo,
                               (size_t)g.HoWo);
            db[co] += (float)acc;
        }
    }
    bool need_dx = x->grad != NULL, need_dw = w->grad != NULL;
    if (!need_dx && !need_dw) return SD_OK;

    if (need_dx && sd__conv_igemm_ok(&g, g.Cin)) {
        note_path(SD_CONV_DX, SD_CONV_IGEMM);
        sd_arena_mark mark = sd__arena_mark(gr);
        sd_status st = sd__conv_igemm_dx(gr, &g, dy, w->data, x->grad);
        sd__arena_rewind(gr, mark);
        if (st != SD_OK) return st;
        need_dx = false;
    }
    if (need_dw && sd__conv_igemm_dw_ok(&g)) {
        note_path(SD_CONV_DW, SD_CONV_IGEMM);
        sd_arena_mark mark = sd__arena_mark(gr);
        sd_status st = sd__conv_igemm_dw(gr, &g, x->data, dy, w->grad);
        sd__arena_rewind(gr, mark);
        if (st != SD_OK) return st;
        need_dw = false;
    }
    if (!need_dx && !need_dw) return SD_OK;
    if (need_dx) note_path(SD_CONV_DX, SD_CONV_IM2COL);
    if (need_dw) note_path(SD_CONV_DW, SD_CONV_IM2COL);
    int slots = g.chunks < SD_CONV_SLOTS ? g.chunks : SD_CONV_SLOTS;
    double macs = (double)g.N * g.Cout * g.HoWo * g.CKK * (need_dx + need_dw);
    int nt = conv_threads(macs, slots);
    /* dx: transposed convolution on planar geometry, else w^T dy + col2im. */
    bool tr = need_dx && g.planar && !g.direct && SD_CONV_TR_RATIO * g.Cin >= g.Cout;
    size_t sz[SC_N], per_thread = scratch_sizes(&g, need_dw || !tr, tr, sz);
    size_t dw_n = need_dw ? (size_t)g.Cout * (size_t)g.CKK : 0;
    size_t wt_n = tr ? (size_t)g.Cout * (size_t)g.CKK : 0;
    size_t masks = mask_floats(&g);
    float *scratch = sd_graph_alloc_floats(
        gr, (size_t)nt * per_thread + (size_t)slots * dw_n + wt_n + masks);
    if (!scratch) return sd_error(SD_ERR_NOMEM, "conv2d backward: out of memory for scratch");
    float *dwp = scratch + (size_t)nt * per_thread, *wt = dwp + (size_t)slots * dw_n;
    if (masks) geom_set_masks(&g, wt + wt_n);
    if (tr) build_wt(&g, w->data, wt);

#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int slot = 0; slot < slots; slot++) {
        conv_scratch sc = scratch_of(scratch, thread_id(), sz);
        float *dw_s = dwp + (size_t)slot * dw_n;
        int c0, c1;
        slot_chunks(&g, slot, slots, &c0, &c1);
        for (int c = c0; c < c1; c++) {
            int n0, cnt = chunk_images(&g, c, &n0);
            int ld = cnt * g.HoWo;
            /* dY of the chunk as [Cout, cnt*HoWo]: the images side by side. */
            const float *dY = dy + (size_t)n0 * img_y;
            if (cnt > 1 && (need_dw || !tr)) {
                for (int i = 0; i < cnt; i++)
                    for (int co = 0; co < g.Cout; co++)
                        memcpy(sc.yc + (size_t)co * (size_t)ld + (size_t)i * (size_t)g.HoWo,
                               dY + (size_t)i * img_y + (size_t)co * (size_t)g.HoWo,
                               (size_t)g.HoWo * sizeof(float));
                dY = sc.yc;
            }
            if (need_dw) {
                const float *colp = chunk_columns(&g, x->data, n0, cnt, &sc);
                sd_gemm_serial(false, true, g.Cout, g.CKK, ld, 1.0f, dY, ld, colp, ld,
                               c == c0 ? 0.0f : 1.0f, dw_s, g.CKK);
            }
            if (tr) {
                dx_transposed(&g, dy, wt, n0, cnt, sc.dyp, sc.ct, sc.ob, x->grad);
            } else if (need_dx) {
                float *dx = x->grad + (size_t)n0 * img_x;
                if (g.direct && cnt == 1) {
                    /* col2im is the identity: accumulate w^T dy_n into dx_n. */
                    sd_gemm_serial(true, false, g.CKK, ld, g.Cout, 1.0f, w->data, g.CKK, dY, ld,
                                   1.0f, dx, ld);
                } else {
                    sd_gemm_serial(true, false, g.CKK, ld, g.Cout, 1.0f, w->data, g.CKK, dY, ld,
                                   0.0f, sc.col, ld);
                    for (int i = 0; i < cnt; i++)
                        col2im(&g, sc.col + (size_t)i * g.HoWo, ld, dx + (size_t)i * img_x, sc.ph);
                }
            }
        }
    }
    if (need_dw) {
        /* dw += slot partials, summed in slot order. */
        float *dw = w->grad;
        size_t n = dw_n;
#pragma omp parallel for schedule(static) if (n * (size_t)slots >= 32768)
        for (size_t j = 0; j < n; j++) {
            float acc = 0.0f;
            for (int sl = 0; sl < slots; sl++) acc += dwp[(size_t)sl * n + j];
            dw[j] += acc;
        }
    }
    return SD_OK;
}

/* Shapes, stride and padding of a convolution; false (message and sticky
 * status set) if they are not usable. */
bool sd__conv2d_check(sd_graph *gr, const sd_tensor *x, const sd_tensor *w, const sd_tensor *b,
                      int stride, int pad)
{
    char sx[64], sw[64], sb[64];
    sd_shape_str(x, sx, sizeof sx);
    sd_shape_str(w, sw, sizeof sw);
    if (x->ndim != 4 || w->ndim != 4 || w->shape[2] != w->shape[3])
        return sd_graph_fail(gr, SD_ERR_INVALID,
                           "conv2d: need x [N,Cin,H,W] and a square kernel w [Cout,Cin,K,K], "
                           "got x %s, w %s",
                           sx, sw) != NULL;
    if (x->shape[1] != w->shape[1])
        return sd_graph_fail(gr, SD_ERR_INVALID, "conv2d: x %s has %d channels but w %s expects %d",
                           sx, x->shape[1], sw, w->shape[1]) != NULL;
    if (b && (b->ndim != 1 || b->shape[0] != w->shape[0]))
        return sd_graph_fail(gr, SD_ERR_INVALID, "conv2d: bias %s does not match w %s (need [%d])",
                           sd_shape_str(b, sb, sizeof sb), sw, w->shape[0]) != NULL;
    if (stride < 1 || pad < 0)
        return sd_graph_fail(gr, SD_ERR_INVALID, "conv2d: stride %d must be >= 1 and padding %d >= 0",
                           stride, pad) != NULL;
    int K = w->shape[2];
    long long hpad = (long long)x->shape[2] + 2LL * pad, wpad = (long long)x->shape[3] + 2LL * pad;
    if (K > hpad || K > wpad)
        return sd_graph_fail(gr, SD_ERR_INVALID,
                           "conv2d: kernel %dx%d larger than the padded input of x %s (pad %d)", K,
                           K, sx, pad) != NULL;
    /* Keep every GEMM dimension and buffer index comfortably inside int. */
    if (hpad * wpad > INT_MAX / 8 || (long long)w->shape[0] * K * K > INT_MAX / 64 ||
        (long long)w->shape[1] * K * K > INT_MAX / 64 || x->numel / (size_t)x->shape[0] > INT_MAX)
        return sd_graph_fail(gr, SD_ERR_INVALID, "conv2d: x %s, w %s (pad %d) too large", sx, sw,
                           pad) != NULL;

    return true;
}

void sd__conv2d_out_shape(const sd_tensor *x, const sd_tensor *w, int stride, int pad, int shape[4])
{
    conv_geom g;
    geom_init(&g, x, w, stride, pad);
    shape[0] = g.N;
    shape[1] = g.Cout;
    shape[2] = g.Ho;
    shape[3] = g.Wo;
}

/* The forward of a checked convolution into y [N, Cout, Ho, Wo]. */
sd_status sd__conv2d_forward_into(sd_graph *gr, const sd_tensor *x, const sd_tensor *w,
                                  const sd_tensor *b, int stride, int pad, float *y_out)
{
    conv_geom g;
    geom_init(&g, x, w, stride, pad);
    if (sd__conv_igemm_ok(&g, g.Cout)) {
        note_path(SD_CONV_FORWARD, SD_CONV_IGEMM);
        sd_arena_mark mark = sd__arena_mark(gr);
        sd_status st = sd__conv_igemm_forward(gr, &g, x->data, w->data, b ? b->data : NULL, y_out);
        sd__arena_rewind(gr, mark);
        return st;
    }
    note_path(SD_CONV_FORWARD, SD_CONV_IM2COL);
    size_t img_y = (size_t)g.Cout * (size_t)g.HoWo;
    size_t sz[SC_N], per_thread = scratch_sizes(&g, !(g.direct && g.nb == 1), false, sz);
    int nt = conv_threads((double)g.N * g.Cout * g.HoWo * g.CKK, g.chunks);
    float *scratch = NULL;
    sd_arena_mark scratch_mark = sd__arena_mark(gr);
    if (per_thread > 0) {
        size_t masks = mask_floats(&g);
        scratch = sd_graph_alloc_floats(gr, (size_t)nt * per_thread + masks);
        if (!scratch) return sd_error(SD_ERR_NOMEM, "conv2d: out of memory for scratch");
        if (masks) geom_set_masks(&g, scratch + (size_t)nt * per_thread);
    }
    const float *bias = b ? b->data : NULL;

#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int c = 0; c < g.chunks; c++) {
        conv_scratch sc = {NULL, NULL, NULL, NULL, NULL, NULL};
        if (scratch) sc = scratch_of(scratch, thread_id(), sz);
        int n0, cnt = chunk_images(&g, c, &n0);
        int ld = cnt * g.HoWo;
        const float *colp = chunk_columns(&g, x->data, n0, cnt, &sc);
        float *y = y_out + (size_t)n0 * img_y;
        if (cnt == 1) {
            /* y_n [Cout,HoWo] = w [Cout,CKK] col_n [CKK,HoWo] (+ b, pre-filled) */
            if (bias)
                for (int co = 0; co < g.Cout; co++)
                    for (int q = 0; q < g.HoWo; q++) y[(size_t)co * (size_t)g.HoWo + q] = bias[co];
            sd_gemm_serial(false, false, g.Cout, ld, g.CKK, 1.0f, w->data, g.CKK, colp, ld,
                           bias ? 1.0f : 0.0f, y, ld);
        } else {
            /* yc [Cout, cnt*HoWo] = w col, then scatter image i's columns to y_i. */
            sd_gemm_serial(false, false, g.Cout, ld, g.CKK, 1.0f, w->data, g.CKK, colp, ld, 0.0f,
                           sc.yc, ld);
            for (int i = 0; i < cnt; i++)
                for (int co = 0; co < g.Cout; co++) {
                    const float *src = sc.yc + (size_t)co * (size_t)ld + (size_t)i * g.HoWo;
                    float *dst = y + (size_t)i * img_y + (size_t)co * (size_t)g.HoWo;
                    float bv = bias ? bias[co] : 0.0f;
                    for (int q = 0; q < g.HoWo; q++) dst[q] = src[q] + bv;
                }
        }
    }
    sd__arena_rewind(gr, scratch_mark);
    return SD_OK;
}

/* Backward of a convolution of x (x->grad receives dx if non-NULL) given
 * dy; the fused ops (ops_fused.c) call it with an x they recomputed. */
sd_status sd__conv2d_backward_from(sd_graph *gr, sd_tensor *x, sd_tensor *w, sd_tensor *b,
                                   int stride, int pad, float *dy)
{
    sd_tensor out = {.ndim = 0, .grad = dy, .src = {x, w, b}, .op = "conv2d"};
    out.params.i[0] = stride;
    out.params.i[1] = pad;
    return conv2d_backward(gr, &out);
}

sd_tensor *sd_conv2d(sd_graph *gr, sd_tensor *x, sd_tensor *w, sd_tensor *b, int stride, int pad)
{
    if (!x || !w) return NULL;
    if (!sd__conv2d_check(gr, x, w, b, stride, pad)) return NULL;
    conv_geom g;
    geom_init(&g, x, w, stride, pad);
    sd_tensor *out = sd__op_output(gr, "conv2d", 4, (int[]){g.N, g.Cout, g.Ho, g.Wo},
                                   conv2d_backward, 3, (sd_tensor *[]){x, w, b});
    if (!out) return NULL;
    /* Geometry is recomputed from the sources in backward. */
    out->params.i[0] = stride;
    out->params.i[1] = pad;
    if (sd__conv2d_forward_into(gr, x, w, b, stride, pad, out->data) != SD_OK)
        return sd_graph_fail(gr, SD_ERR_NOMEM, "%s", sd_error_message());
    return out;
}

/* conv_geom.h - convolution geometry shared by ops_conv.c (im2col + sgemm)
 * and ops_conv_igemm.c (the implicit-GEMM path). Internal, not API.
 *
 * Dimensions: N batch, Cin/Cout channels, H x W input, Ho x Wo output, K
 * square kernel, s stride, p zero padding; CKK = Cin*K*K, HoWo = Ho*Wo. See
 * ops_conv.c for the phase planes and the transposed-convolution dx. */
#ifndef SD_CONV_GEOM_H
#define SD_CONV_GEOM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "sd/status.h"
#include "sd/tensor.h"

/* Parallelise only above this many multiply-adds (fork/join ~ a few us). */
#define SD_CONV_PAR_MACS ((double)(1 << 20))

typedef struct conv_geom {
    int N, Cin, H, W, Cout, K, s, p, Ho, Wo;
    int HW, HoWo, CKK;
    int Hp, Wp;  /* phase plane size, ceil(H/s) x ceil(W/s) */
    bool planar; /* Wo == Wp: taps are shifted copies of phase planes */
    int PT;      /* zero rows above each phase plane's data in ph */
    int Rp;      /* rows per phase plane in ph: PT + Hp + bottom zero rows */
    bool use_ph; /* planar, and x itself cannot serve as the phase planes */
    int PTy, Ry; /* zero rows above dy planes, rows per bordered dy plane */
    int nb;      /* images per chunk (GEMM) */
    int chunks;  /* ceil(N / nb) */
    bool direct; /* 1x1, stride 1, pad 0: col_n == x_n */
    /* Optional (NULL: memcpy + explicit zeroing), from the op's scratch:
     * colmask [K, HoWo], ctmask [K, Hp*Wp]; see "Masked row copies". */
    const uint32_t *colmask, *ctmask;
} conv_geom;

static inline int floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

/* Valid outputs [*o0, *o1) along one axis for kernel offset k: those whose
 * input index i = o*s - p + k lies in [0, n) (n = H or W, n_out = Ho or Wo). */
static inline void valid_range(const conv_geom *g, int k, int n, int n_out, int *o0, int *o1)
{
    int lo = g->p - k, hi = n - 1 + g->p - k; /* need lo <= o*s <= hi */
    int a = lo > 0 ? (lo + g->s - 1) / g->s : 0;
    int b = hi < 0 ? 0 : hi / g->s + 1;
    if (b > n_out) b = n_out;
    if (a > b) a = b;
    *o0 = a;
    *o1 = b;
}

/* Phase planes. Input pixel (iy, ix) = (i*s + ry, j*s + rx) is pixel (i, j)
 * of phase plane (ry, rx), a ceil(H/s) x ceil(W/s) grid; for s = 1 the only
 * phase plane is the channel plane itself. Tap (ki, kj) of output (oy, ox)
 * reads iy = oy*s + (ki-p) = (oy + dy)*s + ry with dy = floor((ki-p)/s),
 * ry = (ki-p) - dy*s, and likewise along x. So when Wo == Wp (stride 1 with
 * K = 2p+1, 1x1 pad 0, stride 2 with K = 3, p = 1, ...), output pixel
 * q = oy*Wo + ox reads pixel q + dy*Wp + dx of one phase plane: a col row is
 * one contiguous shifted copy instead of Ho short strided row copies (7
 * floats each at 7x7, where the per-row overhead cost as much as the GEMM). */
typedef struct conv_tap {
    int oy0, oy1, ox0, ox1; /* valid outputs: the tap reads a real pixel */
    int plane;              /* phase plane index ry*s + rx */
    ptrdiff_t shift;        /* dy*Wp + dx */
} conv_tap;

static inline conv_tap tap_init(const conv_geom *g, int ki, int kj)
{
    conv_tap t;
    valid_range(g, ki, g->H, g->Ho, &t.oy0, &t.oy1);
    valid_range(g, kj, g->W, g->Wo, &t.ox0, &t.ox1);
    if (t.oy0 == t.oy1 || t.ox0 == t.ox1) t.oy0 = t.oy1 = t.ox0 = t.ox1 = 0;
    int dy = floor_div(ki - g->p, g->s), dx = floor_div(kj - g->p, g->s);
    t.plane = (ki - g->p - dy * g->s) * g->s + (kj - g->p - dx * g->s);
    t.shift = (ptrdiff_t)dy * g->Wp + dx;
    return t;
}

/* Number of taps (ki, kj) whose phase plane is P. */
static inline int phase_taps(const conv_geom *g, int P)
{
    int n = 0;
    for (int ki = 0; ki < g->K; ki++)
        for (int kj = 0; kj < g->K; kj++) n += tap_init(g, ki, kj).plane == P;
    return n;
}

/* wt [Cin*Cout*K*K]: for each phase plane P in order, the block
 * wt_P [Cin, Cout*nt_P] with wt_P[ci, co*nt_P+t] = w[co, ci, ki_t, kj_t]. */
static inline void build_wt(const conv_geom *g, const float *w, float *wt)
{
    const int K = g->K, KK = K * K;
    float *blk = wt;
    for (int P = 0; P < g->s * g->s; P++) {
        int ntp = phase_taps(g, P), t = 0;
        if (ntp == 0) continue;
        for (int ki = 0; ki < K; ki++)
            for (int kj = 0; kj < K; kj++) {
                if (tap_init(g, ki, kj).plane != P) continue;
                for (int ci = 0; ci < g->Cin; ci++)
                    for (int co = 0; co < g->Cout; co++)
                        blk[(size_t)ci * (size_t)(g->Cout * ntp) + (size_t)(co * ntp + t)] =
                            w[((size_t)co * g->Cin + ci) * (size_t)KK + (size_t)(ki * K + kj)];
                t++;
            }
        blk += (size_t)g->Cin * (size_t)g->Cout * (size_t)ntp;
    }
}

static inline int conv_threads(double macs, int units)
{
    int nt = 1;
#ifdef _OPENMP
    if (macs >= SD_CONV_PAR_MACS && !omp_in_parallel()) nt = omp_get_max_threads();
#else
    (void)macs;
#endif
    return nt < units ? nt : units;
}


/* ---- the implicit-GEMM path (ops_conv_igemm.c) ---- */
/* Whether the kernels take the forward (M = Cout) or dx (M = Cin) product. */
bool sd__conv_igemm_ok(const conv_geom *g, int M);
/* Whether the dw kernel takes the weight gradient. */
bool sd__conv_igemm_dw_ok(const conv_geom *g);
/* y = conv(x, w) + bias; dw += dy (x)^T; dx += the transposed convolution.
 * Scratch from the graph's arena (the caller rewinds it). */
sd_status sd__conv_igemm_forward(sd_graph *gr, const conv_geom *g, const float *x,
                                 const float *w, const float *bias, float *y);
sd_status sd__conv_igemm_dw(sd_graph *gr, const conv_geom *g, const float *x, const float *dy,
                            float *dw);
sd_status sd__conv_igemm_dx(sd_graph *gr, const conv_geom *g, const float *dy, const float *w,
                            float *dx);

#endif

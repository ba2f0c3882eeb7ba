/* conv_igemm.c - implicit-GEMM convolution kernels (see conv_igemm.h).
 *
 * Why: with im2col + sgemm, a convolution writes its column matrix once
 * (im2col) and OpenBLAS then copies it again into packed panels
 * (sgemm_itcopy); at unet-28's widths (M = Cout = 32..64) that copy alone
 * took 60% as long as the multiply (perf, bench_conv "Down 32"). Here the
 * packing IS the im2col: B is gathered from the planes with masked 16-float
 * loads (lanes outside a tap's rectangle read nothing and are zero) into
 * panels that stay in L2 while the micro-kernels run over them. Masked
 * loads may name addresses outside src for lanes that are masked off;
 * AVX-512 suppresses the access (and any fault) for those lanes.
 *
 * Packing walks the source row by row over a whole block of columns: each
 * row is then one contiguous run. Packing one short strip at a time made K
 * interleaved streams of 3 cache lines each, more than the hardware
 * prefetchers follow, and the packing waited on memory; a software prefetch
 * of the next channel's rows covers the jumps between rows.
 *
 * Forward micro-kernel: an 8 x 48 tile of C in 24 AVX-512 accumulators; per
 * k one panel row (three loads) and eight broadcasts of packed A ([M/8][K]
 * [8], packed once per call) feed 24 FMAs. dw micro-kernel: a TK x (16 MV)
 * tile of dw^T (dw^T[k][m], vectors along m) over a block of columns; per
 * column MV loads of the transposed cotangent and TK broadcasts of B feed
 * TK * MV FMAs (TK * MV = 24). The K rows of dw are split between threads
 * (no reduction across threads), in 24-row units so that the tiles, and
 * hence every sum, are the same for any thread count. */
#include "conv/conv_igemm.h"

#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SD_IGEMM_X86 1
#include <immintrin.h>
#define SD_AVX512 __attribute__((target("avx512f,fma")))
#else
#define SD_IGEMM_X86 0
#endif

/* Forward: strips per block, for panels of about this many bytes (L2). */
#ifndef SD_IGEMM_BLOCK_BYTES
#define SD_IGEMM_BLOCK_BYTES (512u << 10)
#endif
/* dw: columns per block, and the unit of the thread split of K. */
#define SD_IGEMM_DW_J 256
#define SD_IGEMM_DW_KU 24

/* A run of columns (i, q .. q+len) of one image: packed from src (image i,
 * pixel q; add row_off[k]) to dst (row 0; add k * row stride). */
typedef struct piece {
    const float *src;
    float *dst;
    size_t q;
    int len, o; /* o: first column within the block */
} piece;

static bool igemm_enabled = true;

void sd__igemm_enable(bool on) { igemm_enabled = on; }

bool sd__igemm_available(void)
{
#if SD_IGEMM_X86
    /* reads cpuid results libgcc saved at start-up: cheap, and no shared cache to race on */
    return igemm_enabled && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
#else
    return false;
#endif
}

bool sd__igemm_fits(int M) { return M > 0 && M % SD_IGEMM_MR == 0; }
bool sd__igemm_dw_fits(int M) { return M > 0 && M % 16 == 0; }

static size_t round16(size_t n) { return (n + 15) & ~(size_t)15; }
static size_t b_columns(const sd_igemm_b *b)
{
    return (size_t)b->n_img * (size_t)b->grid_h * (size_t)b->grid_w;
}
/* One bit per pixel and tap, rows padded so that a 32-bit read at any pixel
 * stays inside the row. */
static size_t mask_bytes_per_tap(const sd_igemm_b *b)
{
    return ((size_t)b->grid_h * (size_t)b->grid_w + 7) / 8 + 8;
}
static size_t mask_floats(const sd_igemm_b *b)
{
    return round16(((size_t)b->ntaps * mask_bytes_per_tap(b) + 3) / 4);
}
static size_t piece_floats(size_t n) { return round16(n * (sizeof(piece) + 3) / 4); }
/* Segments of a block of `cols` columns (pieces <= cols + 1) and their
 * per-tap masks (segment is defined with the kernels; 32 bytes). */
#define SEGMENT_BYTES 32
static size_t segment_count(size_t cols) { return 2 * cols + 2; }
static size_t segment_floats(const sd_igemm_b *b, size_t cols)
{
    return round16(segment_count(cols) * SEGMENT_BYTES / 4) +
           round16(segment_count(cols) * (size_t)b->ntaps);
}

/* Bit masks of the tap rectangles over the grid. */
static void build_masks(const sd_igemm_b *b, uint8_t *masks)
{
    size_t row = mask_bytes_per_tap(b);
    memset(masks, 0, (size_t)b->ntaps * row);
    for (int t = 0; t < b->ntaps; t++) {
        const int *r = b->rect[t];
        for (int y = r[0]; y < r[1]; y++)
            for (int x = r[2]; x < r[3]; x++) {
                size_t q = (size_t)y * (size_t)b->grid_w + (size_t)x;
                masks[(size_t)t * row + q / 8] |= (uint8_t)(1u << (q % 8));
            }
    }
}

/* Cut columns [j0, j0 + nj) into pieces that stay within one image and
 * (cut > 0) within one `cut`-column strip. dst is filled by the caller. */
static int cut_pieces(const sd_igemm_b *b, size_t j0, int nj, int cut, piece *pc)
{
    const size_t npix = (size_t)b->grid_h * (size_t)b->grid_w;
    int n = 0;
    for (int o = 0; o < nj;) {
        size_t j = j0 + (size_t)o, i = j / npix, q = j % npix;
        int len = nj - o;
        if ((size_t)len > npix - q) len = (int)(npix - q);
        if (cut > 0 && len > cut - o % cut) len = cut - o % cut;
        /* strided sources address (y, x) from the image base */
        const float *src = b->src + i * b->src_img + (b->src_xs ? 0 : q);
        pc[n++] = (piece){src, NULL, q, len, o};
        o += len;
    }
    return n;
}

#if SD_IGEMM_X86
/* 16 mask bits starting at pixel q of tap t's row. */
static inline uint32_t mask16(const uint8_t *masks, size_t mask_row, int t, size_t q)
{
    uint32_t w;
    memcpy(&w, masks + (size_t)t * mask_row + q / 8, sizeof w);
    return (w >> (q % 8)) & 0xFFFFu;
}

/* Stride-2 sources are packed output row by output row: a segment is a run
 * of n <= 16 pixels (y, x .. x+n) of one output row of one piece, loaded as
 * the 2n source floats from src (two masked vectors) and permuted to the
 * even ones. The segments and, per tap, their source-lane masks depend only
 * on the block, so they are worked out once per block, not per row of B. */
typedef struct segment {
    const float *src; /* image base + y * src_ys + 2x (add row_off[k]) */
    float *dst;       /* row 0 (add (k - k0) * ld) */
    int n, y, x; /* planar segments: y = piece, x = first column in the piece */
} segment;

_Static_assert(sizeof(segment) <= SEGMENT_BYTES, "segment scratch too small");

/* Segments of the pieces: at most one per column plus one per piece. */
static int stride2_segments(const sd_igemm_b *b, const piece *pc, int npc, segment *sg)
{
    const int gw = b->grid_w;
    int nseg = 0;
    for (int e = 0; e < npc; e++) {
        int y = (int)(pc[e].q / (size_t)gw), x = (int)(pc[e].q % (size_t)gw);
        for (int o = 0; o < pc[e].len;) {
            int n = pc[e].len - o;
            if (n > gw - x) n = gw - x;
            if (n > 16) n = 16;
            sg[nseg++] = (segment){pc[e].src + (ptrdiff_t)y * b->src_ys + 2 * x, pc[e].dst + o,
                                   n, y, x};
            o += n;
            x += n;
            if (x == gw) x = 0, y++;
        }
    }
    return nseg;
}

/* smask[t * nseg + g]: the source floats (of 32) segment g needs for tap t:
 * [2 l0, 2 l1 - 1) for its pixels inside rect[t], lanes [l0, l1); 0 if none. */
static void stride2_masks(const sd_igemm_b *b, const segment *sg, int nseg, uint32_t *smask)
{
    for (int t = 0; t < b->ntaps; t++) {
        const int *r = b->rect[t];
        for (int g = 0; g < nseg; g++) {
            int l0 = r[2] - sg[g].x, l1 = r[3] - sg[g].x;
            if (l0 < 0) l0 = 0;
            if (l1 > sg[g].n) l1 = sg[g].n;
            uint32_t m = 0;
            if (sg[g].y >= r[0] && sg[g].y < r[1] && l0 < l1)
                m = (2 * l1 - 1 >= 32 ? 0xFFFFFFFFu : (1u << (2 * l1 - 1)) - 1u) &
                    ~((1u << (2 * l0)) - 1u);
            smask[(size_t)t * (size_t)nseg + (size_t)g] = m;
        }
    }
}

SD_AVX512
static void pack_rows_stride2(const sd_igemm_b *b, int k0, int k1, const segment *sg, int nseg,
                              const uint32_t *smask, size_t ld)
{
    const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    for (int k = k0; k < k1; k++) {
        const ptrdiff_t off = b->row_off[k];
        const uint32_t *tm = smask + (size_t)b->row_tap[k] * (size_t)nseg;
        const size_t row = (size_t)(k - k0) * ld;
        for (int g = 0; g < nseg; g++) {
            const float *src = sg[g].src + off;
            __m512 a = _mm512_maskz_loadu_ps((__mmask16)(tm[g] & 0xFFFFu), src);
            __m512 c = _mm512_maskz_loadu_ps((__mmask16)(tm[g] >> 16), src + 16);
            _mm512_mask_storeu_ps(sg[g].dst + row, (__mmask16)((1u << sg[g].n) - 1u),
                                  _mm512_permutex2var_ps(a, even, c));
        }
    }
}

/* Rows [k0, k1) of B for every piece: row k of piece e to e.dst + (k-k0)*ld. */
SD_AVX512
static void pack_rows(const sd_igemm_b *b, const uint8_t *masks, int k0, int k1, const piece *pc,
                      int npc, size_t ld, segment *seg, uint32_t *smask)
{
    const size_t mrow = mask_bytes_per_tap(b);
    if (b->src_xs == 2) {
        int nseg = stride2_segments(b, pc, npc, seg);
        stride2_masks(b, seg, nseg, smask);
        pack_rows_stride2(b, k0, k1, seg, nseg, smask, ld);
        return;
    }
    /* Planar: the pieces' 16-float vectors, and per tap their lane masks,
     * worked out once per block (a row of B then costs a mask load, a
     * masked load and a masked store per vector). */
    int nseg = 0;
    for (int e = 0; e < npc; e++)
        for (int v = 0; v < pc[e].len; v += 16) {
            int n = pc[e].len - v < 16 ? pc[e].len - v : 16;
            seg[nseg++] = (segment){pc[e].src + v, pc[e].dst + v, n, (int)e, v};
        }
    for (int t = 0; t < b->ntaps; t++)
        for (int g = 0; g < nseg; g++)
            smask[(size_t)t * (size_t)nseg + (size_t)g] =
                ((1u << seg[g].n) - 1u) & mask16(masks, mrow, t, pc[seg[g].y].q + (size_t)seg[g].x);
    for (int k = k0; k < k1; k++) {
        const ptrdiff_t off = b->row_off[k];
        const uint32_t *tm = smask + (size_t)b->row_tap[k] * (size_t)nseg;
        const size_t row = (size_t)(k - k0) * ld;
        /* The same tap of the next channel (rows are channel-major, taps
         * fastest; the taps of one channel share their lines): fetch its
         * runs while this row is copied. */
        if (k + b->ntaps < k1)
            for (int e = 0; e < npc; e++) {
                const char *a = (const char *)(pc[e].src + b->row_off[k + b->ntaps]);
                for (int c = 0; c < pc[e].len * 4; c += 64) _mm_prefetch(a + c, _MM_HINT_T0);
            }
        for (int g = 0; g < nseg; g++)
            _mm512_mask_storeu_ps(seg[g].dst + row, (__mmask16)((1u << seg[g].n) - 1u),
                                  _mm512_maskz_loadu_ps((__mmask16)tm[g], seg[g].src + off));
    }
}

/* ---- forward: C = A B ---------------------------------------------------- */

/* ct [MR][NR] = Ap [K][MR] (one 8-row block of packed A) x panel [K][NR]. */
SD_AVX512
static void micro_kernel(int K, const float *restrict ap, const float *restrict panel,
                         float *restrict ct)
{
    __m512 c0[SD_IGEMM_MR], c1[SD_IGEMM_MR], c2[SD_IGEMM_MR];
    for (int r = 0; r < SD_IGEMM_MR; r++) c0[r] = c1[r] = c2[r] = _mm512_setzero_ps();
    for (int k = 0; k < K; k++) {
        const float *b = panel + (size_t)k * SD_IGEMM_NR;
        __m512 b0 = _mm512_loadu_ps(b), b1 = _mm512_loadu_ps(b + 16), b2 = _mm512_loadu_ps(b + 32);
        const float *a = ap + (size_t)k * SD_IGEMM_MR;
#pragma GCC unroll 8
        for (int r = 0; r < SD_IGEMM_MR; r++) {
            __m512 av = _mm512_set1_ps(a[r]);
            c0[r] = _mm512_fmadd_ps(av, b0, c0[r]);
            c1[r] = _mm512_fmadd_ps(av, b1, c1[r]);
            c2[r] = _mm512_fmadd_ps(av, b2, c2[r]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < SD_IGEMM_MR; r++) {
        _mm512_storeu_ps(ct + r * SD_IGEMM_NR, c0[r]);
        _mm512_storeu_ps(ct + r * SD_IGEMM_NR + 16, c1[r]);
        _mm512_storeu_ps(ct + r * SD_IGEMM_NR + 32, c2[r]);
    }
}

/* Columns [j0, j0 + nj) of C: pack the block's strips (panel s [K][NR] at
 * panels + s*K*NR), then per strip run every 8-row block of A and store. */
SD_AVX512
static void fwd_block(const sd_igemm *p, const float *ap, const uint8_t *masks, size_t j0, int nj,
                      float *panels, float *ct, piece *pc, segment *seg, uint32_t *smask)
{
    const sd_igemm_b *b = &p->b;
    const size_t panel = (size_t)b->K * SD_IGEMM_NR;
    int npc = cut_pieces(b, j0, nj, SD_IGEMM_NR, pc);
    for (int e = 0; e < npc; e++)
        pc[e].dst = panels + (size_t)(pc[e].o / SD_IGEMM_NR) * panel + pc[e].o % SD_IGEMM_NR;
    int nstrips = (nj + SD_IGEMM_NR - 1) / SD_IGEMM_NR;
    int tail = nj - (nstrips - 1) * SD_IGEMM_NR;
    if (tail < SD_IGEMM_NR) /* zero the unused columns (their results are dropped) */
        for (int k = 0; k < b->K; k++)
            memset(panels + (size_t)(nstrips - 1) * panel + (size_t)k * SD_IGEMM_NR + tail, 0,
                   (size_t)(SD_IGEMM_NR - tail) * sizeof(float));
    pack_rows(b, masks, 0, b->K, pc, npc, SD_IGEMM_NR, seg, smask);
    const size_t npix = (size_t)b->grid_h * (size_t)b->grid_w;
    for (int sn = 0, e0 = 0; sn < nstrips; sn++) {
        int e1 = e0;
        while (e1 < npc && pc[e1].o / SD_IGEMM_NR == sn) e1++;
        for (int m0 = 0; m0 < p->M; m0 += SD_IGEMM_MR) {
            /* The tile's output lines, fetched while the micro-kernel runs
             * (adding into dx missed the cache on every line). */
            for (int e = e0; e < e1; e++) {
                size_t i = (j0 + (size_t)pc[e].o) / npix;
                const char *d = (const char *)(p->out + i * p->out_img + (size_t)m0 * p->out_ch + pc[e].q);
                for (int r = 0; r < SD_IGEMM_MR; r++, d += p->out_ch * sizeof(float))
                    for (int c = 0; c < pc[e].len * 4; c += 64) __builtin_prefetch(d + c, 1, 3);
            }
            micro_kernel(b->K, ap + (size_t)m0 * (size_t)b->K, panels + (size_t)sn * panel, ct);
            for (int e = e0; e < e1; e++) {
                size_t i = (j0 + (size_t)pc[e].o) / npix;
                const float *cr = ct + pc[e].o % SD_IGEMM_NR;
                float *d = p->out + i * p->out_img + (size_t)m0 * p->out_ch + pc[e].q;
                for (int r = 0; r < SD_IGEMM_MR; r++, cr += SD_IGEMM_NR, d += p->out_ch) {
                    __m512 bv = _mm512_set1_ps(p->bias && !p->accumulate ? p->bias[m0 + r] : 0.0f);
                    for (int c = 0; c < pc[e].len; c += 16) {
                        int n = pc[e].len - c < 16 ? pc[e].len - c : 16;
                        __mmask16 lanes = (__mmask16)((1u << n) - 1u);
                        __m512 v = _mm512_maskz_loadu_ps(lanes, cr + c);
                        v = _mm512_add_ps(v, p->accumulate ? _mm512_maskz_loadu_ps(lanes, d + c) : bv);
                        _mm512_mask_storeu_ps(d + c, lanes, v);
                    }
                }
            }
        }
        e0 = e1;
    }
}

/* ---- dw += D B^T ----------------------------------------------------------- */

/* dwt [TK][ldw] (+=) over J columns: dwt[r][v*16 ..] += sum_j panel[r*ldp + j]
 * * dyt[j*ldm + v*16 ..]. One function per tile shape, all in registers. */
#define SD_DW_TILE(MV, TK)                                                                       \
    SD_AVX512 static void dw_tile_##MV##x##TK(int J, const float *restrict dyt, size_t ldm,     \
                                              const float *restrict panel, size_t ldp,           \
                                              float *restrict dwt, size_t ldw)                   \
    {                                                                                            \
        __m512 acc[TK][MV];                                                                      \
        for (int r = 0; r < TK; r++)                                                             \
            for (int v = 0; v < MV; v++) acc[r][v] = _mm512_setzero_ps();                        \
        for (int j = 0; j < J; j++) {                                                            \
            __m512 d[MV];                                                                        \
            for (int v = 0; v < MV; v++) d[v] = _mm512_loadu_ps(dyt + (size_t)j * ldm + 16 * v); \
            _Pragma("GCC unroll 12") for (int r = 0; r < TK; r++)                                \
            {                                                                                    \
                __m512 a = _mm512_set1_ps(panel[(size_t)r * ldp + (size_t)j]);                   \
                for (int v = 0; v < MV; v++) acc[r][v] = _mm512_fmadd_ps(a, d[v], acc[r][v]);    \
            }                                                                                    \
        }                                                                                        \
        for (int r = 0; r < TK; r++)                                                             \
            for (int v = 0; v < MV; v++) {                                                       \
                float *o = dwt + (size_t)r * ldw + 16 * v;                                       \
                _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), acc[r][v]));              \
            }                                                                                    \
    }
SD_DW_TILE(1, 12)
SD_DW_TILE(2, 12)
SD_DW_TILE(3, 8)
SD_DW_TILE(4, 6)

/* dst [16][ld_d] = src [16][ld_s] transposed (a 16 x 16 block), by the usual
 * unpack / shuffle / 128-bit-lane shuffle stages. */
SD_AVX512
static void transpose16(const float *src, size_t ld_s, float *dst, size_t ld_d)
{
    __m512 r[16], t[16];
    for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(src + (size_t)i * ld_s);
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    /* r[4g + c]: rows 4g..4g+3, column c of each 128-bit lane */
    for (int g = 0; g < 4; g++) {
        r[4 * g + 0] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0x44);
        r[4 * g + 1] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0xEE);
        r[4 * g + 2] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
        r[4 * g + 3] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xEE);
    }
    for (int c = 0; c < 4; c++) {
        __m512 v0 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0x44);
        __m512 v1 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0x44);
        __m512 v2 = _mm512_shuffle_f32x4(r[c], r[4 + c], 0xEE);
        __m512 v3 = _mm512_shuffle_f32x4(r[8 + c], r[12 + c], 0xEE);
        _mm512_storeu_ps(dst + (size_t)(0 + c) * ld_d, _mm512_shuffle_f32x4(v0, v1, 0x88));
        _mm512_storeu_ps(dst + (size_t)(4 + c) * ld_d, _mm512_shuffle_f32x4(v0, v1, 0xDD));
        _mm512_storeu_ps(dst + (size_t)(8 + c) * ld_d, _mm512_shuffle_f32x4(v2, v3, 0x88));
        _mm512_storeu_ps(dst + (size_t)(12 + c) * ld_d, _mm512_shuffle_f32x4(v2, v3, 0xDD));
    }
}

/* Rows [k0, k1) of dw^T over the column blocks [c0, c1) (J columns each):
 * dwt [k1p - k0][M] (k1p = k1 rounded up to the unit) is set to their sum. */
SD_AVX512
static void dw_rows(const sd_igemm_dw *p, const uint8_t *masks, int k0, int k1, size_t c0,
                    size_t c1, float *panel, float *dyb, float *dyt, float *dwt, piece *pc,
                    segment *seg, uint32_t *smask)
{
    const sd_igemm_b *b = &p->b;
    const int J = SD_IGEMM_DW_J, M = p->M;
    const int k1p = k0 + (k1 - k0 + SD_IGEMM_DW_KU - 1) / SD_IGEMM_DW_KU * SD_IGEMM_DW_KU;
    const size_t npix = (size_t)b->grid_h * (size_t)b->grid_w, ncols = b_columns(b);
    memset(dwt, 0, (size_t)(k1p - k0) * (size_t)M * sizeof(float));
    /* Rows past K stay zero in the panel (their dw^T rows are dropped). */
    memset(panel + (size_t)(k1 - k0) * J, 0, (size_t)(k1p - k1) * J * sizeof(float));
    for (size_t j0 = c0 * (size_t)J; j0 < c1 * (size_t)J && j0 < ncols; j0 += (size_t)J) {
        int nj = ncols - j0 < (size_t)J ? (int)(ncols - j0) : J;
        int npc = cut_pieces(b, j0, nj, 0, pc);
        for (int e = 0; e < npc; e++) pc[e].dst = panel + pc[e].o;
        if (nj < J) { /* zero the columns past the end in every row */
            for (int k = 0; k < k1 - k0; k++)
                memset(panel + (size_t)k * J + nj, 0, (size_t)(J - nj) * sizeof(float));
            for (int m = 0; m < M; m++)
                memset(dyb + (size_t)m * J + nj, 0, (size_t)(J - nj) * sizeof(float));
        }
        pack_rows(b, masks, k0, k1, pc, npc, (size_t)J, seg, smask);
        /* dyb [M][J]: the block's cotangent columns; dyt [J][M] its transpose. */
        for (int e = 0; e < npc; e++) {
            size_t i = (j0 + (size_t)pc[e].o) / npix;
            const float *src = p->dy + i * p->dy_img + pc[e].q;
            for (int m = 0; m < M; m++)
                memcpy(dyb + (size_t)m * J + pc[e].o, src + (size_t)m * p->dy_ch,
                       (size_t)pc[e].len * sizeof(float));
        }
        int jn = (nj + 15) & ~15;
        for (int m = 0; m < M; m += 16)
            for (int j = 0; j < jn; j += 16)
                transpose16(dyb + (size_t)m * J + j, (size_t)J, dyt + (size_t)j * M + m, (size_t)M);
        for (int m0 = 0; m0 < M; m0 += 64) {
            int mv = (M - m0) / 16 < 4 ? (M - m0) / 16 : 4;
            int tk = mv == 4 ? 6 : mv == 3 ? 8 : 12;
            for (int k = k0; k < k1p; k += tk) {
                const float *pr = panel + (size_t)(k - k0) * J;
                float *o = dwt + (size_t)(k - k0) * M + m0;
                if (mv == 4) dw_tile_4x6(jn, dyt + m0, (size_t)M, pr, (size_t)J, o, (size_t)M);
                else if (mv == 3) dw_tile_3x8(jn, dyt + m0, (size_t)M, pr, (size_t)J, o, (size_t)M);
                else if (mv == 2) dw_tile_2x12(jn, dyt + m0, (size_t)M, pr, (size_t)J, o, (size_t)M);
                else dw_tile_1x12(jn, dyt + m0, (size_t)M, pr, (size_t)J, o, (size_t)M);
            }
        }
    }
}

SD_AVX512
static void split2_avx512(const float *src, int n, float *even, float *odd)
{
    const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    for (int j = 0; j < n; j += 32) {
        int m = n - j < 32 ? n - j : 32; /* inputs in this chunk */
        __mmask16 l0 = (__mmask16)(m >= 16 ? 0xFFFFu : (1u << m) - 1u);
        __mmask16 l1 = (__mmask16)(m >= 32 ? 0xFFFFu : m > 16 ? (1u << (m - 16)) - 1u : 0u);
        __m512 a = _mm512_maskz_loadu_ps(l0, src + j), b = _mm512_maskz_loadu_ps(l1, src + j + 16);
        int ne = (m + 1) / 2, no = m / 2;
        _mm512_mask_storeu_ps(even + j / 2, (__mmask16)((1u << ne) - 1u),
                              _mm512_permutex2var_ps(a, ie, b));
        _mm512_mask_storeu_ps(odd + j / 2, (__mmask16)((1u << no) - 1u),
                              _mm512_permutex2var_ps(a, io, b));
    }
}

SD_AVX512
static void merge2_add_avx512(float *dst, int n, const float *even, const float *odd)
{
    const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    for (int j = 0; j < n; j += 32) {
        int m = n - j < 32 ? n - j : 32;
        int ne = (m + 1) / 2, no = m / 2;
        __m512 e = _mm512_maskz_loadu_ps((__mmask16)((1u << ne) - 1u), even + j / 2);
        __m512 o = _mm512_maskz_loadu_ps((__mmask16)((1u << no) - 1u), odd + j / 2);
        __mmask16 l0 = (__mmask16)(m >= 16 ? 0xFFFFu : (1u << m) - 1u);
        __mmask16 l1 = (__mmask16)(m >= 32 ? 0xFFFFu : m > 16 ? (1u << (m - 16)) - 1u : 0u);
        __m512 d0 = _mm512_maskz_loadu_ps(l0, dst + j), d1 = _mm512_maskz_loadu_ps(l1, dst + j + 16);
        _mm512_mask_storeu_ps(dst + j, l0, _mm512_add_ps(d0, _mm512_permutex2var_ps(e, lo, o)));
        _mm512_mask_storeu_ps(dst + j + 16, l1, _mm512_add_ps(d1, _mm512_permutex2var_ps(e, hi, o)));
    }
}
#endif /* SD_IGEMM_X86 */

static int thread_num(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

/* ---- forward driver ---------------------------------------------------------- */

static int block_strips(const sd_igemm *p)
{
    size_t per = (size_t)p->b.K * SD_IGEMM_NR * sizeof(float);
    size_t n = SD_IGEMM_BLOCK_BYTES / (per ? per : 1);
    return n < 1 ? 1 : n > 16 ? 16 : (int)n;
}
/* Per thread: panels, C tile, pieces (at most one per column, + 1). */
static size_t fwd_thread_floats(const sd_igemm *p)
{
    size_t cols = (size_t)block_strips(p) * SD_IGEMM_NR;
    return round16(cols * (size_t)p->b.K) + SD_IGEMM_MR * SD_IGEMM_NR + piece_floats(cols + 1) +
           segment_floats(&p->b, cols);
}
static size_t packed_a_floats(const sd_igemm *p) { return round16((size_t)p->M * (size_t)p->b.K); }

size_t sd__igemm_scratch_floats(const sd_igemm *p, int threads)
{
    return packed_a_floats(p) + mask_floats(&p->b) + (size_t)threads * fwd_thread_floats(p);
}

void sd__igemm_run(const sd_igemm *p, float *scratch, int threads)
{
#if SD_IGEMM_X86
    const sd_igemm_b *b = &p->b;
    float *ap = scratch;
    /* Packed A: block b holds rows 8b..8b+7 as [K][8]. */
    for (int m0 = 0; m0 < p->M; m0 += SD_IGEMM_MR)
        for (int k = 0; k < b->K; k++)
            for (int r = 0; r < SD_IGEMM_MR; r++)
                ap[(size_t)m0 * (size_t)b->K + (size_t)k * SD_IGEMM_MR + (size_t)r] =
                    p->A[(size_t)(m0 + r) * (size_t)p->lda + (size_t)k];
    uint8_t *masks = (uint8_t *)(void *)(ap + packed_a_floats(p));
    build_masks(b, masks);
    float *per_thread = ap + packed_a_floats(p) + mask_floats(b);
    size_t ncols = b_columns(b);
    /* Blocks of at most block_strips strips, but at least 8 per thread: the
     * 7x7 and 1x1 products have only a few blocks, and 5 blocks on 2
     * threads ran at 3/5 of the 2-thread speed (9 blocks: 5/4 imbalance). (Blocks only group columns:
     * every result is the same for any block size.) */
    size_t strips = (ncols + SD_IGEMM_NR - 1) / SD_IGEMM_NR, bs = (size_t)block_strips(p);
    if (threads > 1 && bs * 8 * (size_t)threads > strips) {
        bs = strips / (8 * (size_t)threads);
        if (bs < 1) bs = 1;
    }
    const size_t bcols = bs * SD_IGEMM_NR;
    long blocks = (long)((ncols + bcols - 1) / bcols);
    if (threads > blocks) threads = (int)blocks;
    if (threads < 1) threads = 1;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (long bl = 0; bl < blocks; bl++) {
        float *panels = per_thread + (size_t)thread_num() * fwd_thread_floats(p);
        float *ct = panels + round16(bcols * (size_t)b->K);
        piece *pc = (piece *)(void *)(ct + SD_IGEMM_MR * SD_IGEMM_NR);
        segment *seg = (segment *)(void *)((float *)(void *)pc + piece_floats(bcols + 1));
        uint32_t *smask = (uint32_t *)(void *)((float *)(void *)seg +
                                               round16(segment_count(bcols) * SEGMENT_BYTES / 4));
        size_t j0 = (size_t)bl * bcols;
        int nj = ncols - j0 < bcols ? (int)(ncols - j0) : (int)bcols;
        fwd_block(p, ap, masks, j0, nj, panels, ct, pc, seg, smask);
    }
#else
    (void)p, (void)scratch, (void)threads;
#endif
}

/* ---- dw driver ------------------------------------------------------------- */

/* dw is summed over the columns in SD_IGEMM_DW_SLOTS fixed halves (slots),
 * each a partial dw^T, added in slot order at the end: with 2 threads each
 * takes a slot with all of K, instead of both packing and transposing the
 * whole cotangent for half of K each (at 1x1 128 -> 64 on 7x7 planes that
 * duplicated work was 45% of a thread's time). The slots, not the threads,
 * fix the order of every sum, so results do not depend on the thread count;
 * more threads also split K between them. */
#define SD_IGEMM_DW_SLOTS 2

static int dw_units(const sd_igemm_dw *p) { return (p->b.K + SD_IGEMM_DW_KU - 1) / SD_IGEMM_DW_KU; }
static size_t dw_kp(const sd_igemm_dw *p) { return (size_t)dw_units(p) * SD_IGEMM_DW_KU; }
/* Per thread (sized for all of K): panel, dy block and its transpose, pieces, segments. */
static size_t dw_thread_floats(const sd_igemm_dw *p)
{
    size_t J = SD_IGEMM_DW_J, M = (size_t)p->M;
    return dw_kp(p) * J + 2 * M * J + piece_floats(J + 1) + segment_floats(&p->b, J);
}

size_t sd__igemm_dw_scratch_floats(const sd_igemm_dw *p, int threads)
{
    return mask_floats(&p->b) + SD_IGEMM_DW_SLOTS * dw_kp(p) * (size_t)p->M +
           (size_t)threads * dw_thread_floats(p);
}

void sd__igemm_dw_run(const sd_igemm_dw *p, float *scratch, int threads)
{
#if SD_IGEMM_X86
    uint8_t *masks = (uint8_t *)(void *)scratch;
    build_masks(&p->b, masks);
    const size_t J = SD_IGEMM_DW_J, M = (size_t)p->M, kp = dw_kp(p), K = (size_t)p->b.K;
    float *slots = scratch + mask_floats(&p->b);
    float *per_thread = slots + SD_IGEMM_DW_SLOTS * kp * M;
    const int units = dw_units(p);
    const size_t nblocks = (b_columns(&p->b) + J - 1) / J;
    /* Work items: (slot, group of K units); groups = threads per slot. */
    int groups = threads / SD_IGEMM_DW_SLOTS;
    if (groups < 1) groups = 1;
    if (groups > units) groups = units;
    const int items = SD_IGEMM_DW_SLOTS * groups;
    if (threads > items) threads = items;
    if (threads < 1) threads = 1;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (int it = 0; it < items; it++) {
        int sl = it % SD_IGEMM_DW_SLOTS, gi = it / SD_IGEMM_DW_SLOTS;
        int k0 = (int)((long)units * gi / groups) * SD_IGEMM_DW_KU;
        int k1 = (int)((long)units * (gi + 1) / groups) * SD_IGEMM_DW_KU;
        if (k1 > (int)K) k1 = (int)K;
        size_t c0 = nblocks * (size_t)sl / SD_IGEMM_DW_SLOTS;
        size_t c1 = nblocks * (size_t)(sl + 1) / SD_IGEMM_DW_SLOTS;
        float *dwt = slots + (size_t)sl * kp * M + (size_t)k0 * M;
        if (k0 >= k1) continue;
        if (c0 >= c1) { /* an empty slot adds nothing */
            memset(dwt, 0, (size_t)(k1 - k0) * M * sizeof(float));
            continue;
        }
        float *panel = per_thread + (size_t)thread_num() * dw_thread_floats(p);
        float *dyb = panel + kp * J, *dyt = dyb + M * J;
        piece *pc = (piece *)(void *)(dyt + M * J);
        segment *seg = (segment *)(void *)((float *)(void *)pc + piece_floats(J + 1));
        uint32_t *smask = (uint32_t *)(void *)((float *)(void *)seg +
                                               round16(segment_count(J) * SEGMENT_BYTES / 4));
        dw_rows(p, masks, k0, k1, c0, c1, panel, dyb, dyt, dwt, pc, seg, smask);
    }
    /* dw[m][k] += (slot 0 + slot 1)[k][m], in slot order */
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
    for (size_t k = 0; k < K; k++)
        for (size_t m = 0; m < M; m++) {
            float acc = 0.0f;
            for (int sl = 0; sl < SD_IGEMM_DW_SLOTS; sl++) acc += slots[(size_t)sl * kp * M + k * M + m];
            p->dw[m * K + k] += acc;
        }
#else
    (void)p, (void)scratch, (void)threads;
#endif
}

/* ---- stride-2 phase helpers ------------------------------------------------ */

void sd__split2(const float *src, int n, float *even, float *odd)
{
#if SD_IGEMM_X86
    if (sd__igemm_available()) {
        split2_avx512(src, n, even, odd);
        return;
    }
#endif
    for (int j = 0; j < n; j++) (j % 2 ? odd : even)[j / 2] = src[j];
}

void sd__merge2_add(float *dst, int n, const float *even, const float *odd)
{
#if SD_IGEMM_X86
    if (sd__igemm_available()) {
        merge2_add_avx512(dst, n, even, odd);
        return;
    }
#endif
    for (int j = 0; j < n; j++) dst[j] += (j % 2 ? odd : even)[j / 2];
}

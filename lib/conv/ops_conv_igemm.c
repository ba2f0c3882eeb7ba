/* ops_conv_igemm.c - conv2d on the implicit-GEMM kernels (conv_igemm.c).
 *
 * On planar geometry every GEMM of a convolution has B rows that are shifted,
 * rectangle-masked copies of planes, which is what the kernels pack
 * directly (no column matrix, no second copy inside the BLAS):
 *   forward:  rows (c, ki, kj) of x (stride 1; stride 2 read with stride 2,
 *             other strides from tight phase planes) over the Ho x Wo outputs;
 *   dx:       the transposed convolution (ops_conv.c, dx_transposed), one
 *             product per phase plane P with rows (co, t in P) of dy reading
 *             q - shift_t, its [Cin, Hp*Wp] result added into dx;
 *   dw:       dy B^T with the forward's B.
 * ops_conv.c decides per call (sd__conv_igemm_ok) and falls back to im2col +
 * sgemm; tests/test_conv.c runs both against a double reference. */
#include <string.h>

#include "conv/conv_geom.h"
#include "conv/conv_igemm.h"

/* Tight phase planes for the implicit GEMM: ph [Cin, s*s, Hp*Wp] with
 * ph[c, ry*s+rx, i*Wp+j] = x_n[c, i*s+ry, j*s+rx]. No border rows and no
 * zeroing: the tap rectangles never read a cell past the image edge. */
static void to_phases_tight(const conv_geom *g, const float *x, float *ph)
{
    const int s = g->s, W = g->W;
    const size_t HpWp = (size_t)g->Hp * (size_t)g->Wp;
    for (int c = 0; c < g->Cin; c++) {
        float *pc = ph + (size_t)c * (size_t)(s * s) * HpWp;
        const float *xc = x + (size_t)c * (size_t)g->HW;
        for (int iy = 0; iy < g->H; iy++) {
            const float *xr = xc + (size_t)iy * (size_t)W;
            float *base = pc + (size_t)(iy % s) * (size_t)s * HpWp + (size_t)(iy / s) * (size_t)g->Wp;
            if (s == 2) {
                sd__split2(xr, W, base, base + HpWp);
                continue;
            }
            for (int rx = 0; rx < s; rx++) {
                float *d = base + (size_t)rx * HpWp;
                for (int j = 0, ix = rx; ix < W; j++, ix += s) d[j] = xr[ix];
            }
        }
    }
}

/* dx_n [Cin,H,W] += the phase planes dph [Cin, s*s, Hp*Wp] (no border rows),
 * interleaved back: dx_n[c, i*s+ry, j*s+rx] += dph[c, ry*s+rx, i*Wp+j]. */
static void phases_add(const conv_geom *g, const float *dph, float *dx)
{
    const int s = g->s, W = g->W;
    const size_t HpWp = (size_t)g->Hp * (size_t)g->Wp;
    for (int c = 0; c < g->Cin; c++) {
        const float *pc = dph + (size_t)c * (size_t)(s * s) * HpWp;
        float *xc = dx + (size_t)c * (size_t)g->HW;
        for (int iy = 0; iy < g->H; iy++) {
            float *xr = xc + (size_t)iy * (size_t)W;
            const float *base = pc + (size_t)(iy % s) * (size_t)s * HpWp + (size_t)(iy / s) * (size_t)g->Wp;
            if (s == 2) {
                sd__merge2_add(xr, W, base, base + HpWp);
                continue;
            }
            for (int rx = 0; rx < s; rx++) {
                const float *d = base + (size_t)rx * HpWp;
                for (int j = 0, ix = rx; ix < W; j++, ix += s) xr[ix] += d[j];
            }
        }
    }
}

/* ---- glue -----------------------------------------------------------------
 * On planar geometry every GEMM of a convolution has B rows that are shifted,
 * rectangle-masked copies of planes, which is what sd__igemm_run packs
 * directly (no column matrix, no second copy inside the BLAS):
 *   forward:  rows (c, ki, kj) of x (stride 1) or of its phase planes,
 *             reading plane index q + shift over the Ho x Wo outputs;
 *   dx:       the transposed convolution above, one product per phase plane
 *             P with rows (co, t in P) of dy reading q - shift_t, its
 *             [Cin, Hp*Wp] result added into dx through the phase's pixels.
 * dw keeps im2col + sgemm (its inner dimension is the pixels). */
#ifndef SD_CONV_IGEMM
#define SD_CONV_IGEMM 1
#endif

/* 1x1 stride-1 convolutions of planes of >= SD_CONV_IGEMM_1X1_MAX pixels
 * keep sgemm on x itself (no im2col there), measured faster than packing
 * through the kernel (bench_conv "skip"); smaller planes (7x7) gain. */
#ifndef SD_CONV_IGEMM_1X1_MAX
#define SD_CONV_IGEMM_1X1_MAX 128
#endif
bool sd__conv_igemm_ok(const conv_geom *g, int M)
{
    return SD_CONV_IGEMM && g->planar && !(g->direct && g->HoWo >= SD_CONV_IGEMM_1X1_MAX) &&
           sd__igemm_fits(M) && sd__igemm_available();
}

/* The dw kernel splits the Cin*K*K rows between threads in 24-row units and
 * transposes dy for every block of columns, which only pays with enough
 * rows: conv_in (1 -> 32, 9 rows) ran at half its sgemm speed through it. */
#define SD_CONV_IGEMM_DW_MIN_ROWS 64
bool sd__conv_igemm_dw_ok(const conv_geom *g)
{
    return sd__conv_igemm_ok(g, g->Cout) && sd__igemm_dw_fits(g->Cout) &&
           g->CKK >= SD_CONV_IGEMM_DW_MIN_ROWS;
}

/* Row descriptors of one implicit product: offsets, taps, tap rectangles. */
typedef struct ig_rows {
    ptrdiff_t *off;
    int *tap;
    int (*rect)[4];
} ig_rows;

static size_t ig_rows_floats(int K, int ntaps)
{
    size_t bytes = (size_t)K * (sizeof(ptrdiff_t) + sizeof(int)) + (size_t)ntaps * 4 * sizeof(int);
    return (bytes / sizeof(float) + 31) & ~(size_t)15;
}

static ig_rows ig_rows_at(float *mem, int K)
{
    ig_rows r;
    r.off = (ptrdiff_t *)(void *)mem;
    r.tap = (int *)(void *)(r.off + K);
    r.rect = (int(*)[4])(void *)(r.tap + K + (K & 1));
    return r;
}

/* B of the forward product: rows (c, ki, kj) of x (stride 1) or of its
 * tight phase planes ph (to_phases_tight), over the Ho x Wo outputs. */
static void forward_rows(const conv_geom *g, ig_rows r)
{
    const int K = g->K;
    const size_t HpWp = (size_t)g->Hp * (size_t)g->Wp;
    for (int ki = 0; ki < K; ki++)
        for (int kj = 0; kj < K; kj++) {
            conv_tap t = tap_init(g, ki, kj);
            int tap = ki * K + kj;
            r.rect[tap][0] = t.oy0, r.rect[tap][1] = t.oy1;
            r.rect[tap][2] = t.ox0, r.rect[tap][3] = t.ox1;
            for (int c = 0; c < g->Cin; c++) {
                int k = (c * K + ki) * K + kj;
                r.tap[k] = tap;
                if (g->s == 2) /* x itself, read with stride 2 */
                    r.off[k] = (ptrdiff_t)c * g->HW + (ptrdiff_t)(ki - g->p) * g->W + (kj - g->p);
                else if (g->s > 1)
                    r.off[k] = (ptrdiff_t)(((size_t)c * (size_t)(g->s * g->s) + (size_t)t.plane) *
                                           HpWp) + t.shift;
                else
                    r.off[k] = (ptrdiff_t)c * g->HW + t.shift;
            }
        }
}

/* Floats of the phase planes of every image (strides > 2 only). */
static size_t ph_floats(const conv_geom *g)
{
    return g->s > 2 ? (size_t)g->N * (size_t)g->Cin * (size_t)(g->s * g->s) * (size_t)g->Hp *
                          (size_t)g->Wp
                    : 0;
}

/* The forward product's B without its rows and source (enough to size
 * scratch), and the whole of it: rows, and for stride > 2 the phase planes
 * of every image in ph (ph_floats(g) floats). */
static sd_igemm_b forward_b_dims(const conv_geom *g)
{
    return (sd_igemm_b){.K = g->CKK, .grid_h = g->Ho, .grid_w = g->Wo, .n_img = g->N,
                        .ntaps = g->K * g->K};
}

static sd_igemm_b forward_b(const conv_geom *g, const float *x, ig_rows r, float *ph, int nt)
{
    sd_igemm_b b = forward_b_dims(g);
    b.row_off = r.off, b.row_tap = r.tap, b.rect = (const int(*)[4])r.rect;
    forward_rows(g, r);
    if (g->s == 2) {
        /* Stride 2 reads x directly (two loads and a permute per output
         * row): splitting x into phase planes first cost a pass over all of
         * x and a 7 MB buffer for unet-28's Down 32 (a quarter of its time). */
        b.src = x, b.src_img = (size_t)g->Cin * (size_t)g->HW;
        b.src_xs = 2, b.src_ys = 2 * g->W;
    } else if (g->s > 1) {
        size_t img = (size_t)g->Cin * (size_t)g->HW, ph_img = ph_floats(g) / (size_t)g->N;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
        for (int n = 0; n < g->N; n++)
            to_phases_tight(g, x + (size_t)n * img, ph + (size_t)n * ph_img);
        b.src = ph, b.src_img = ph_img;
    } else {
        b.src = x, b.src_img = (size_t)g->Cin * (size_t)g->HW;
    }
    return b;
}

static int igemm_threads(const conv_geom *g)
{
    return conv_threads((double)g->N * g->Cout * g->HoWo * g->CKK, 1 << 20);
}

sd_status sd__conv_igemm_forward(sd_graph *gr, const conv_geom *g, const float *x,
                                    const float *w, const float *bias, float *y)
{
    int nt = igemm_threads(g);
    sd_igemm p = {.b = forward_b_dims(g), .M = g->Cout, .A = w, .lda = g->CKK, .out = y,
                  .out_img = (size_t)g->Cout * (size_t)g->HoWo, .out_ch = (size_t)g->HoWo,
                  .bias = bias, .accumulate = false};
    size_t rows_n = ig_rows_floats(g->CKK, g->K * g->K), ph_n = ph_floats(g);
    float *mem = sd_graph_alloc_floats(gr, rows_n + ph_n + sd__igemm_scratch_floats(&p, nt));
    if (!mem) return sd_error(SD_ERR_NOMEM, "conv2d: out of memory for scratch");
    p.b = forward_b(g, x, ig_rows_at(mem, g->CKK), mem + rows_n, nt);
    sd__igemm_run(&p, mem + rows_n + ph_n, nt);
    return SD_OK;
}

/* dw += dy B^T with the forward's B (recomputing the phase planes). */
sd_status sd__conv_igemm_dw(sd_graph *gr, const conv_geom *g, const float *x, const float *dy,
                               float *dw)
{
    int nt = igemm_threads(g);
    sd_igemm_dw p = {.b = forward_b_dims(g), .M = g->Cout, .dy = dy,
                     .dy_img = (size_t)g->Cout * (size_t)g->HoWo,
                     .dy_ch = (size_t)g->HoWo, .dw = dw};
    size_t rows_n = ig_rows_floats(g->CKK, g->K * g->K), ph_n = ph_floats(g);
    float *mem = sd_graph_alloc_floats(gr, rows_n + ph_n + sd__igemm_dw_scratch_floats(&p, nt));
    if (!mem) return sd_error(SD_ERR_NOMEM, "conv2d backward: out of memory for scratch");
    p.b = forward_b(g, x, ig_rows_at(mem, g->CKK), mem + rows_n, nt);
    sd__igemm_dw_run(&p, mem + rows_n + ph_n, nt);
    return SD_OK;
}

/* dx += the transposed convolution of dy (see dx_transposed), by phase.
 * Stride 1: one product adding straight into dx. Stride s > 1: images are
 * taken in chunks whose phase planes dph [cnt, Cin, s*s, Hp*Wp] fit in L2;
 * per chunk (one thread each) every phase's product is written
 * contiguously into its plane, then one pass interleaves the planes into
 * dx. (Adding each phase into dx through a pixel map was a strided scalar
 * read-modify-write of all of dx per phase; planes for the whole batch made
 * two more passes through memory: a fifth of the stride-2 backward.) */
#ifndef SD_CONV_DPH_BYTES
#define SD_CONV_DPH_BYTES (768u << 10)
#endif
typedef struct dx_phases {
    const conv_geom *g;
    const sd_igemm *p; /* common fields */
    const float *wt;   /* build_wt blocks, phase by phase */
    float *rows;       /* ig_rows of phase P at rows + P * rows_n */
    size_t rows_n;
    const int *ntp; /* taps per phase */
    const float *dy;
} dx_phases;

/* Product of phase P over images [n0, n0 + cnt) into out. */
static void phase_product(const dx_phases *d, int P, int n0, int cnt, float *out, int threads,
                          float *scratch)
{
    const conv_geom *g = d->g;
    sd_igemm q = *d->p;
    ig_rows r = ig_rows_at(d->rows + (size_t)P * d->rows_n, q.b.K);
    size_t wt_off = 0;
    for (int Q = 0; Q < P; Q++) wt_off += (size_t)g->Cin * (size_t)g->Cout * (size_t)d->ntp[Q];
    q.b.K = g->Cout * d->ntp[P], q.A = d->wt + wt_off, q.lda = q.b.K, q.b.ntaps = d->ntp[P];
    q.b.row_off = r.off, q.b.row_tap = r.tap, q.b.rect = (const int(*)[4])r.rect;
    q.b.n_img = cnt, q.b.src = d->dy + (size_t)n0 * q.b.src_img, q.out = out;
    sd__igemm_run(&q, scratch, threads);
}
sd_status sd__conv_igemm_dx(sd_graph *gr, const conv_geom *g, const float *dy, const float *w,
                               float *dx)
{
    const int K = g->K, s = g->s, ss = s * s;
    const size_t HpWp = (size_t)g->Hp * (size_t)g->Wp, img_x = (size_t)g->Cin * (size_t)g->HW;
    int ntp[64], max_nt = 0; /* ss <= K*K <= 64 on planar geometry here */
    if (ss > 64) return sd_error(SD_ERR_INVALID, "conv2d: stride %d too large", s);
    for (int P = 0; P < ss; P++) {
        ntp[P] = phase_taps(g, P);
        if (ntp[P] > max_nt) max_nt = ntp[P];
    }
    sd_igemm p = {.b = {.K = g->Cout * max_nt, .grid_h = g->Hp, .grid_w = g->Wp, .n_img = g->N,
                        .ntaps = max_nt, .src = dy,
                        .src_img = (size_t)g->Cout * (size_t)g->HoWo},
                  .M = g->Cin, .out = dx, .out_img = img_x, .out_ch = (size_t)g->HW,
                  .accumulate = true};
    int nt = igemm_threads(g), nbp = g->N, chunks = 1;
    if (s > 1) {
        p.out_ch = (size_t)ss * HpWp;
        p.out_img = (size_t)g->Cin * p.out_ch;
        p.accumulate = false;
        size_t per_img = p.out_img * sizeof(float);
        /* at most N/8 images per chunk, so that 2 threads share the chunks evenly */
        nbp = (int)(SD_CONV_DPH_BYTES / per_img);
        if (nbp > (g->N + 7) / 8) nbp = (g->N + 7) / 8;
        if (nbp < 1) nbp = 1;
        if (nbp > g->N) nbp = g->N;
        chunks = (g->N + nbp - 1) / nbp;
        if (nt > chunks) nt = chunks;
    }
    size_t wt_n = ((size_t)g->Cout * (size_t)g->CKK + 15) & ~(size_t)15;
    size_t rows_n = ig_rows_floats(p.b.K, max_nt);
    size_t dph_n = s > 1 ? (size_t)nbp * p.out_img : 0;
    size_t per_thread = dph_n + sd__igemm_scratch_floats(&p, s > 1 ? 1 : nt);
    float *mem = sd_graph_alloc_floats(gr, wt_n + (size_t)ss * rows_n +
                                               (s > 1 ? (size_t)nt : 1) * per_thread);
    if (!mem) return sd_error(SD_ERR_NOMEM, "conv2d backward: out of memory for scratch");
    float *wt = mem, *work = mem + wt_n + (size_t)ss * rows_n;
    build_wt(g, w, wt);
    /* Rows of each phase's B: (co, t) reads dy at q - shift_t, in the rectangle
     * of phase pixels (i, j) whose dy pixel (i - dyt, j - dxt) exists. */
    for (int P = 0; P < ss; P++) {
        ig_rows r = ig_rows_at(mem + wt_n + (size_t)P * rows_n, p.b.K);
        for (int ki = 0, t = 0; ki < K; ki++)
            for (int kj = 0; kj < K; kj++) {
                if (tap_init(g, ki, kj).plane != P) continue;
                int dyt = floor_div(ki - g->p, s), dxt = floor_div(kj - g->p, s);
                int y0 = dyt > 0 ? dyt : 0, y1 = g->Ho + dyt < g->Hp ? g->Ho + dyt : g->Hp;
                int x0 = dxt > 0 ? dxt : 0, x1 = g->Wo + dxt < g->Wp ? g->Wo + dxt : g->Wp;
                if (y1 < y0) y1 = y0;
                if (x1 < x0) x1 = x0;
                r.rect[t][0] = y0, r.rect[t][1] = y1, r.rect[t][2] = x0, r.rect[t][3] = x1;
                for (int co = 0; co < g->Cout; co++) {
                    r.tap[co * ntp[P] + t] = t;
                    r.off[co * ntp[P] + t] =
                        (ptrdiff_t)co * g->HoWo - ((ptrdiff_t)dyt * g->Wo + dxt);
                }
                t++;
            }
    }
    dx_phases ph = {g, &p, wt, mem + wt_n, rows_n, ntp, dy};
    if (s == 1) {
        phase_product(&ph, 0, 0, g->N, dx, nt, work);
        return SD_OK;
    }
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int c = 0; c < chunks; c++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *dph = work + (size_t)tid * per_thread, *scratch = dph + dph_n;
        int n0 = c * nbp, cnt = g->N - n0 < nbp ? g->N - n0 : nbp;
        for (int P = 0; P < ss; P++) {
            if (ntp[P] == 0) { /* no tap lands on this phase: its plane gets nothing */
                for (int i = 0; i < cnt; i++)
                    for (int ci = 0; ci < g->Cin; ci++)
                        memset(dph + (size_t)i * p.out_img + (size_t)ci * p.out_ch + P * HpWp, 0,
                               HpWp * sizeof(float));
                continue;
            }
            phase_product(&ph, P, n0, cnt, dph + (size_t)P * HpWp, 1, scratch);
        }
        for (int i = 0; i < cnt; i++)
            phases_add(g, dph + (size_t)i * p.out_img, dx + (size_t)(n0 + i) * img_x);
    }
    return SD_OK;
}


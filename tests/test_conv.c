/* test_conv.c - sd_conv2d (lib/conv/ops_conv.c): gradients, values, threads, errors.
 *
 * Shapes are chosen to reach every code path of the im2col kernel: one image
 * per GEMM (Ho*Wo >= 256), several images per GEMM (small outputs, including
 * a short last chunk), the 1x1 direct path (no im2col) and its gathered
 * variant, stride 2 with padding on odd sizes, 5x5 kernels, Cin = 1; and
 * the implicit-GEMM kernel (lib/conv/conv_igemm.c, channel counts that are
 * multiples of 8), forward and backward against a double reference with
 * the kernel on and off.
 */
#include <check.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conv/conv_igemm.h"
#include "gradcheck.h"
#include "sd/ops.h"

typedef struct conv_case {
    int N, Cin, Cout, H, W, K, stride, pad;
    bool bias;
} conv_case;

static sd_tensor *build_conv(sd_graph *g, sd_tensor **in, void *ctx)
{
    const conv_case *c = ctx;
    return sd_conv2d(g, in[0], in[1], c->bias ? in[2] : NULL, c->stride, c->pad);
}

/* Gradient check of x, w (and b) for one case; x_grad false holds x fixed
 * (the backward then skips dx entirely). */
static gc_result check_case(const conv_case *c, bool x_grad)
{
    gc_input in[3] = {
        {4, {c->N, c->Cin, c->H, c->W}, -1.0f, 1.0f, 0.0f, !x_grad},
        {4, {c->Cout, c->Cin, c->K, c->K}, -0.5f, 0.5f, 0.0f, false},
        {1, {c->Cout}, -0.5f, 0.5f, 0.0f, false},
    };
    gc_options opt = {.max_probe = 48};
    return gc_check(build_conv, (void *)c, c->bias ? 3 : 2, in, &opt);
}

START_TEST(test_grad_3x3_s1)
{
    conv_case c = {3, 5, 4, 7, 9, 3, 1, 1, true};
    gc_result r = check_case(&c, true);
    GC_ASSERT(r);
}
END_TEST

START_TEST(test_grad_3x3_s2_odd)
{
    conv_case c = {3, 5, 4, 7, 9, 3, 2, 1, true};
    gc_result r = check_case(&c, true);
    GC_ASSERT(r);
    conv_case even = {2, 5, 4, 8, 10, 3, 2, 1, true}; /* the Down layer shape */
    r = check_case(&even, true);
    GC_ASSERT(r);
}
END_TEST

START_TEST(test_grad_1x1)
{
    /* 17x19 = 323 outputs: one image per GEMM, the direct path (col = x). */
    conv_case direct = {3, 5, 4, 17, 19, 1, 1, 0, true};
    gc_result r = check_case(&direct, true);
    GC_ASSERT(r);
    /* 7x9: the images are gathered side by side into one GEMM. */
    conv_case gathered = {3, 5, 4, 7, 9, 1, 1, 0, true};
    r = check_case(&gathered, true);
    GC_ASSERT(r);
}
END_TEST

START_TEST(test_grad_5x5_pad2)
{
    conv_case c = {3, 3, 5, 9, 7, 5, 1, 2, true};
    gc_result r = check_case(&c, true);
    GC_ASSERT(r);
}
END_TEST

START_TEST(test_grad_no_bias)
{
    conv_case c = {3, 5, 4, 7, 9, 3, 1, 1, false};
    gc_result r = check_case(&c, true);
    GC_ASSERT(r);
}
END_TEST

START_TEST(test_grad_cin1)
{
    /* Cin << Cout: dx goes through w^T dy and col2im (stride 1 and 2). */
    conv_case c = {3, 1, 5, 9, 7, 3, 1, 1, true};
    gc_result r = check_case(&c, true);
    GC_ASSERT(r);
    conv_case s2 = {3, 1, 4, 7, 9, 3, 2, 1, true};
    r = check_case(&s2, true);
    GC_ASSERT(r);
}
END_TEST

START_TEST(test_grad_several_chunks)
{
    /* 7x7 outputs: 8 images per GEMM (SD_CONV_MIN_COLS = 392), so N = 9 is
     * a full and a 1-image chunk; 17x17 stride 2 pad 0 (8x8 = 64 outputs, 7
     * images per GEMM): 7 + 2. */
    conv_case c = {9, 3, 4, 7, 7, 3, 1, 1, true};
    gc_result r = check_case(&c, true);
    GC_ASSERT(r);
    conv_case s2 = {9, 2, 3, 17, 17, 3, 2, 0, true};
    r = check_case(&s2, true);
    GC_ASSERT(r);
    /* Stride 3 and a 5x5 stride 2 kernel on phase planes of odd sizes. */
    conv_case s3 = {2, 3, 4, 10, 11, 3, 3, 1, true};
    r = check_case(&s3, true);
    GC_ASSERT(r);
    conv_case k5s2 = {2, 3, 2, 9, 7, 5, 2, 2, true};
    r = check_case(&k5s2, true);
    GC_ASSERT(r);
}
END_TEST

START_TEST(test_grad_x_constant)
{
    /* x without a gradient: only dw and db are computed. */
    conv_case c = {3, 5, 4, 7, 9, 3, 2, 1, true};
    gc_result r = check_case(&c, false);
    GC_ASSERT(r);
}
END_TEST

/* ---- forward values against a naive 7-loop reference in double --------- */

static unsigned lcg(unsigned *s)
{
    *s = *s * 1664525u + 1013904223u;
    return *s >> 8;
}

static void fill(float *p, size_t n, unsigned *s)
{
    for (size_t i = 0; i < n; i++) p[i] = 2.0f * (float)lcg(s) / (float)(1u << 24) - 1.0f;
}

/* The convolution naively in double: y (if non-NULL) and, for cotangent dy
 * (if non-NULL), dx, dw, db. One loop nest over every (output, tap) pair. */
static void naive_conv_all(const conv_case *c, const float *x, const float *w, const float *b,
                           const float *dy, double *y, double *dx, double *dw, double *db, int Ho,
                           int Wo)
{
    if (dy) {
        memset(dx, 0, (size_t)c->N * c->Cin * c->H * c->W * sizeof *dx);
        memset(dw, 0, (size_t)c->Cout * c->Cin * c->K * c->K * sizeof *dw);
        memset(db, 0, (size_t)c->Cout * sizeof *db);
    }
    for (int n = 0; n < c->N; n++)
        for (int co = 0; co < c->Cout; co++)
            for (int oy = 0; oy < Ho; oy++)
                for (int ox = 0; ox < Wo; ox++) {
                    size_t yi = ((size_t)(n * c->Cout + co) * Ho + oy) * Wo + ox;
                    double acc = b ? b[co] : 0.0, g = dy ? dy[yi] : 0.0;
                    if (dy) db[co] += g;
                    for (int ci = 0; ci < c->Cin; ci++)
                        for (int ki = 0; ki < c->K; ki++)
                            for (int kj = 0; kj < c->K; kj++) {
                                int iy = oy * c->stride - c->pad + ki;
                                int ix = ox * c->stride - c->pad + kj;
                                if (iy < 0 || iy >= c->H || ix < 0 || ix >= c->W) continue;
                                size_t xi = ((size_t)(n * c->Cin + ci) * c->H + iy) * c->W + ix;
                                size_t wi = ((size_t)(co * c->Cin + ci) * c->K + ki) * c->K + kj;
                                acc += (double)x[xi] * w[wi];
                                if (dy) {
                                    dx[xi] += g * w[wi];
                                    dw[wi] += g * x[xi];
                                }
                            }
                    if (y) y[yi] = acc;
                }
}

static void naive_conv(const conv_case *c, const float *x, const float *w, const float *b,
                       double *y, int Ho, int Wo)
{
    naive_conv_all(c, x, w, b, NULL, y, NULL, NULL, NULL, Ho, Wo);
}

static const conv_case forward_cases[] = {
    {3, 5, 4, 7, 9, 3, 1, 1, true},     {3, 5, 4, 7, 9, 3, 2, 1, true},
    {2, 6, 3, 17, 19, 1, 1, 0, false},  {3, 6, 3, 7, 9, 1, 1, 0, true},
    {2, 3, 5, 9, 7, 5, 1, 2, true},     {4, 1, 6, 9, 11, 3, 1, 1, true},
    {9, 8, 7, 7, 7, 3, 1, 1, false},    {3, 4, 4, 20, 20, 3, 2, 1, true},
    {2, 3, 2, 6, 5, 4, 3, 0, true},     {2, 2, 3, 5, 5, 3, 1, 3, true},
    {2, 16, 12, 28, 28, 3, 1, 1, true}, {2, 3, 4, 10, 11, 3, 3, 1, true},
    {2, 3, 4, 9, 10, 5, 2, 2, true},    {2, 3, 4, 8, 8, 2, 2, 0, true},
};

/* ---- fused GroupNorm + SiLU + conv2d (ops_fused.c) ------------------------ */

typedef struct fused_case {
    int stride, pad;
    bool fused;
} fused_case;

static sd_tensor *build_fused(sd_graph *g, sd_tensor **in, void *ctx)
{
    const fused_case *c = ctx;
    if (c->fused)
        return sd_group_norm_silu_conv2d(g, in[0], 3, in[1], in[2], 1e-5f, in[3], in[4], c->stride,
                                         c->pad);
    return sd_conv2d(g, sd_group_norm_silu(g, in[0], 3, in[1], in[2], 1e-5f), in[3], in[4],
                     c->stride, c->pad);
}

/* Gradients against finite differences for every input, stride 1 and 2. */
START_TEST(test_fused_gn_silu_conv_grad)
{
    for (int s = 1; s <= 2; s++) {
        fused_case c = {.stride = s, .pad = 1, .fused = true};
        gc_input in[5] = {{.ndim = 4, .shape = {2, 6, 5, 7}, .lo = -2.0f, .hi = 2.0f},
                          {.ndim = 1, .shape = {6}, .lo = 0.5f, .hi = 1.5f},
                          {.ndim = 1, .shape = {6}, .lo = -0.5f, .hi = 0.5f},
                          {.ndim = 4, .shape = {4, 6, 3, 3}, .lo = -0.5f, .hi = 0.5f},
                          {.ndim = 1, .shape = {4}, .lo = -0.5f, .hi = 0.5f}};
        gc_result r = gc_check(build_fused, &c, 5, in, NULL);
        ck_assert_msg(r.ok, "stride %d: %s", s, r.message);
    }
}
END_TEST

/* The fused node equals the two-node composition bit for bit: output and
 * every gradient (same kernels, same statistics). */
START_TEST(test_fused_gn_silu_conv_matches_unfused)
{
    enum { N = 3, C = 6, H = 9, W = 8, CO = 5 };
    static float x[N * C * H * W], gm[C], bt[C], w[CO * C * 9], b[CO];
    static float gx[2][N * C * H * W], ggm[2][C], gbt[2][C], gw[2][CO * C * 9], gb[2][CO];
    static float y[2][N * CO * H * W], r[N * CO * H * W];
    unsigned seed = 7;
    for (size_t i = 0; i < sizeof x / sizeof *x; i++) x[i] = 2.0f * sinf(0.37f * (float)i + 0.1f);
    for (int i = 0; i < C; i++) gm[i] = 1.0f + 0.1f * (float)i, bt[i] = 0.05f * (float)i - 0.1f;
    for (size_t i = 0; i < sizeof w / sizeof *w; i++) w[i] = 0.3f * cosf(1.3f * (float)i);
    for (int i = 0; i < CO; i++) b[i] = 0.1f * (float)i;
    for (size_t i = 0; i < sizeof r / sizeof *r; i++) r[i] = (float)((seed = seed * 1103515245u + 12345u) >> 16) / 65536.0f - 0.5f;
    memset(gx, 0, sizeof gx), memset(ggm, 0, sizeof ggm), memset(gbt, 0, sizeof gbt);
    memset(gw, 0, sizeof gw), memset(gb, 0, sizeof gb);
    sd_graph *g = sd_graph_new();
    for (int k = 0; k < 2; k++) {
        sd_graph_reset(g);
        sd_tensor *in[5] = {sd_tensor_wrap(g, 4, (int[]){N, C, H, W}, x, gx[k]),
                            sd_tensor_wrap(g, 1, (int[]){C}, gm, ggm[k]),
                            sd_tensor_wrap(g, 1, (int[]){C}, bt, gbt[k]),
                            sd_tensor_wrap(g, 4, (int[]){CO, C, 3, 3}, w, gw[k]),
                            sd_tensor_wrap(g, 1, (int[]){CO}, b, gb[k])};
        fused_case c = {.stride = 1, .pad = 1, .fused = k == 0};
        sd_tensor *out = build_fused(g, in, &c);
        ck_assert_ptr_nonnull(out);
        memcpy(y[k], out->data, sizeof y[k]);
        ck_assert_int_eq(sd_graph_backward(g, out, r), SD_OK);
    }
    sd_graph_free(g);
    ck_assert_msg(memcmp(y[0], y[1], sizeof y[0]) == 0, "outputs differ");
    ck_assert_msg(memcmp(gx[0], gx[1], sizeof gx[0]) == 0, "dL/dx differ");
    ck_assert_msg(memcmp(ggm[0], ggm[1], sizeof ggm[0]) == 0, "dL/dgamma differ");
    ck_assert_msg(memcmp(gbt[0], gbt[1], sizeof gbt[0]) == 0, "dL/dbeta differ");
    ck_assert_msg(memcmp(gw[0], gw[1], sizeof gw[0]) == 0, "dL/dw differ");
    ck_assert_msg(memcmp(gb[0], gb[1], sizeof gb[0]) == 0, "dL/db differ");
    double gmax = 0.0;
    for (size_t i = 0; i < sizeof gx[0] / sizeof(float); i++) gmax = fmax(gmax, fabs(gx[0][i]));
    ck_assert_msg(gmax > 1e-3, "dL/dx vanishes (%g)", gmax);
}
END_TEST

START_TEST(test_forward_reference)
{
    const conv_case *c = &forward_cases[_i];
    unsigned seed = 7u + (unsigned)_i;
    int Ho = (c->H + 2 * c->pad - c->K) / c->stride + 1,
        Wo = (c->W + 2 * c->pad - c->K) / c->stride + 1;
    size_t nx = (size_t)c->N * c->Cin * c->H * c->W, nw = (size_t)c->Cout * c->Cin * c->K * c->K;
    size_t ny = (size_t)c->N * c->Cout * Ho * Wo;
    float *x = malloc(nx * sizeof *x), *w = malloc(nw * sizeof *w),
          *b = malloc(c->Cout * sizeof *b);
    double *ref = malloc(ny * sizeof *ref);
    fill(x, nx, &seed);
    fill(w, nw, &seed);
    fill(b, (size_t)c->Cout, &seed);
    naive_conv(c, x, w, c->bias ? b : NULL, ref, Ho, Wo);

    sd_graph *g = sd_graph_new();
    sd_tensor *tx = sd_tensor_wrap(g, 4, (int[]){c->N, c->Cin, c->H, c->W}, x, NULL);
    sd_tensor *tw = sd_tensor_wrap(g, 4, (int[]){c->Cout, c->Cin, c->K, c->K}, w, NULL);
    sd_tensor *tb = sd_tensor_wrap(g, 1, (int[]){c->Cout}, b, NULL);
    sd_tensor *y = sd_conv2d(g, tx, tw, c->bias ? tb : NULL, c->stride, c->pad);
    ck_assert_msg(y != NULL, "%s", sd_error_message());
    ck_assert_int_eq(y->ndim, 4);
    ck_assert_int_eq(y->shape[0], c->N);
    ck_assert_int_eq(y->shape[1], c->Cout);
    ck_assert_int_eq(y->shape[2], Ho);
    ck_assert_int_eq(y->shape[3], Wo);
    ck_assert(y->backward == NULL); /* nothing requires grad: not recorded */
    for (size_t i = 0; i < ny; i++)
        ck_assert_msg(fabs(y->data[i] - ref[i]) <= 1e-4 * (fabs(ref[i]) + 1.0),
                      "case %d elem %zu: %g vs %g", _i, i, (double)y->data[i], ref[i]);
    sd_graph_free(g);
    free(x), free(w), free(b), free(ref);
}
END_TEST

/* ---- the implicit-GEMM kernel against the reference, on and off ---------- */

/* The kernel runs where the CPU has AVX-512F and FMA (lib/conv/conv_igemm.h,
 * internal: sd__igemm_enable, sd__igemm_available, sd__conv_paths). Decided
 * here from the CPU itself, so that a library that never takes the kernel
 * cannot pass by agreeing with itself. */
static bool cpu_has_kernel(void)
{
#if defined(__x86_64__) || defined(__i386__)
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma");
#else
    return false;
#endif
}

static const char *path_name(sd_conv_path p) { return p == SD_CONV_IGEMM ? "kernel" : "im2col"; }

/* Since the last sd__conv_paths_reset: direction d ran `runs` times, all on
 * path p (runs 0: not at all). */
static void expect_path(sd_conv_dir d, sd_conv_path p, uint64_t runs, const char *what)
{
    static const char *dir_name[] = {"forward", "dx", "dw"};
    sd_conv_paths got = sd__conv_paths();
    sd_conv_path other = p == SD_CONV_IGEMM ? SD_CONV_IM2COL : SD_CONV_IGEMM;
    ck_assert_msg(got.n[d][p] == runs && got.n[d][other] == 0,
                  "%s: %s expected %llu run(s) on the %s path, got %llu %s and %llu %s", what,
                  dir_name[d], (unsigned long long)runs, path_name(p),
                  (unsigned long long)got.n[d][p], path_name(p),
                  (unsigned long long)got.n[d][other], path_name(other));
}

/* Channel counts that are multiples of 8, so that the kernel takes them:
 * every planar geometry it handles, strips crossing image boundaries (tiny
 * planes), 1-pixel planes, and several column blocks per call. With the
 * kernel on and an AVX-512F CPU, every forward runs on the kernel, dx where
 * Cin is a multiple of 8 and dw where Cout is a multiple of 16 and
 * Cin*K*K >= 64 (ops_conv_igemm.c); kernel_case asserts exactly that. */
static const conv_case kernel_cases[] = {
    {3, 8, 16, 7, 9, 3, 1, 1, true},   /* stride 1, odd sizes */
    {2, 16, 8, 5, 5, 1, 1, 0, true},   /* 1x1 */
    {2, 8, 8, 9, 7, 5, 1, 2, true},    /* 5x5 pad 2 */
    {3, 8, 16, 14, 14, 3, 2, 1, true}, /* stride 2 (Down) */
    {3, 16, 8, 9, 11, 3, 2, 1, true},  /* stride 2, odd sizes */
    {2, 8, 8, 9, 7, 5, 2, 2, true},    /* 5x5 stride 2 */
    {2, 8, 8, 10, 11, 3, 3, 1, true},  /* stride 3 */
    {2, 8, 8, 8, 8, 2, 2, 0, true},    /* 2x2 stride 2: one tap per phase */
    {20, 8, 16, 3, 3, 3, 1, 1, true},  /* 9-pixel planes: strips span images */
    {4, 8, 8, 1, 1, 1, 1, 0, true},    /* 1-pixel planes */
    {5, 24, 32, 28, 28, 3, 1, 1, false}, /* unet-28 sized: several blocks */
    /* dw kernel: Cout 48 and 64 (3 and 4 vectors), 80 (64 + 16), and
     * Cin*K*K = 27 (not a multiple of the 24-row unit; dx by the BLAS path) */
    {2, 8, 64, 7, 7, 3, 1, 1, true},
    {2, 8, 48, 6, 6, 3, 2, 1, true},
    {2, 16, 80, 5, 5, 3, 1, 1, true},
    {3, 3, 16, 9, 9, 3, 1, 1, true},
    {2, 3, 64, 8, 8, 3, 2, 1, true},
};

/* Forward and backward of case c with the kernel on or off, against the
 * double reference. Tolerance: float32 sums of at most Cin*K*K (forward,
 * dx) or N*Ho*Wo (dw, db) products of values in [-1, 1]; rounding error of
 * such a sum is well under 1e-6 relative per term for these sizes, so
 * 1e-4 * (|ref| + 1) only fails on a wrong term, never on rounding. */
static void kernel_case(const conv_case *c, bool kernel_on, int index)
{
    unsigned seed = 31u + (unsigned)index;
    int Ho = (c->H + 2 * c->pad - c->K) / c->stride + 1,
        Wo = (c->W + 2 * c->pad - c->K) / c->stride + 1;
    size_t nx = (size_t)c->N * c->Cin * c->H * c->W, nw = (size_t)c->Cout * c->Cin * c->K * c->K;
    size_t ny = (size_t)c->N * c->Cout * Ho * Wo;
    float *x = malloc(nx * sizeof *x), *w = malloc(nw * sizeof *w), *b = malloc(c->Cout * sizeof *b);
    float *dy = malloc(ny * sizeof *dy), *dx = calloc(nx, sizeof *dx), *dw = calloc(nw, sizeof *dw),
          *db = calloc((size_t)c->Cout, sizeof *db);
    double *ry = malloc(ny * sizeof *ry), *rdx = malloc(nx * sizeof *rdx),
           *rdw = malloc(nw * sizeof *rdw), *rdb = malloc(c->Cout * sizeof *rdb);
    ck_assert(x && w && b && dy && dx && dw && db && ry && rdx && rdw && rdb);
    fill(x, nx, &seed);
    fill(w, nw, &seed);
    fill(b, (size_t)c->Cout, &seed);
    fill(dy, ny, &seed);
    naive_conv_all(c, x, w, c->bias ? b : NULL, dy, ry, rdx, rdw, rdb, Ho, Wo);

    sd__igemm_enable(kernel_on);
    sd__conv_paths_reset();
    sd_graph *g = sd_graph_new();
    sd_tensor *tx = sd_tensor_wrap(g, 4, (int[]){c->N, c->Cin, c->H, c->W}, x, dx);
    sd_tensor *tw = sd_tensor_wrap(g, 4, (int[]){c->Cout, c->Cin, c->K, c->K}, w, dw);
    sd_tensor *tb = sd_tensor_wrap(g, 1, (int[]){c->Cout}, b, db);
    sd_tensor *y = sd_conv2d(g, tx, tw, c->bias ? tb : NULL, c->stride, c->pad);
    ck_assert_msg(y != NULL, "%s", sd_error_message());
    ck_assert_int_eq(sd_graph_backward(g, y, dy), SD_OK);
    sd__igemm_enable(true);
    /* The path each product took: the kernel where it is on and the CPU
     * runs it (the rule above kernel_cases), im2col otherwise. */
    bool kernel = kernel_on && cpu_has_kernel();
    char what[64];
    snprintf(what, sizeof what, "case %d (kernel %s)", index, kernel_on ? "on" : "off");
    expect_path(SD_CONV_FORWARD, kernel ? SD_CONV_IGEMM : SD_CONV_IM2COL, 1, what);
    expect_path(SD_CONV_DX, kernel && c->Cin % 8 == 0 ? SD_CONV_IGEMM : SD_CONV_IM2COL, 1, what);
    expect_path(SD_CONV_DW,
                kernel && c->Cout % 16 == 0 && c->Cin * c->K * c->K >= 64 ? SD_CONV_IGEMM
                                                                          : SD_CONV_IM2COL,
                1, what);
    const char *path = kernel ? "kernel" : "im2col";
    for (size_t i = 0; i < ny; i++)
        ck_assert_msg(fabs(y->data[i] - ry[i]) <= 1e-4 * (fabs(ry[i]) + 1.0),
                      "case %d (%s) y[%zu]: %g vs %g", index, path, i, (double)y->data[i], ry[i]);
    for (size_t i = 0; i < nx; i++)
        ck_assert_msg(fabs(dx[i] - rdx[i]) <= 1e-4 * (fabs(rdx[i]) + 1.0),
                      "case %d (%s) dx[%zu]: %g vs %g", index, path, i, (double)dx[i], rdx[i]);
    for (size_t i = 0; i < nw; i++)
        ck_assert_msg(fabs(dw[i] - rdw[i]) <= 1e-4 * (fabs(rdw[i]) + 1.0),
                      "case %d (%s) dw[%zu]: %g vs %g", index, path, i, (double)dw[i], rdw[i]);
    for (int i = 0; c->bias && i < c->Cout; i++)
        ck_assert_msg(fabs(db[i] - rdb[i]) <= 1e-4 * (fabs(rdb[i]) + 1.0),
                      "case %d (%s) db[%d]: %g vs %g", index, path, i, (double)db[i], rdb[i]);
    sd_graph_free(g);
    free(x), free(w), free(b), free(dy), free(dx), free(dw), free(db);
    free(ry), free(rdx), free(rdw), free(rdb);
}

START_TEST(test_kernel_reference)
{
    /* The library agrees with the CPU about the kernel being usable. */
    ck_assert_int_eq(sd__igemm_available(), cpu_has_kernel());
    kernel_case(&kernel_cases[_i], true, _i);
    kernel_case(&kernel_cases[_i], false, _i);
}
END_TEST

/* ---- identical results with 1 and 2 threads ------------------------------ */

typedef struct run_out {
    float *y, *dx, *dw, *db;
    size_t ny, nx, nw;
} run_out;

static run_out run_threads(const conv_case *c, int threads)
{
    unsigned seed = 99;
    int Ho = (c->H + 2 * c->pad - c->K) / c->stride + 1,
        Wo = (c->W + 2 * c->pad - c->K) / c->stride + 1;
    run_out r;
    r.nx = (size_t)c->N * c->Cin * c->H * c->W;
    r.nw = (size_t)c->Cout * c->Cin * c->K * c->K;
    r.ny = (size_t)c->N * c->Cout * Ho * Wo;
    float *x = malloc(r.nx * sizeof *x), *w = malloc(r.nw * sizeof *w),
          *b = malloc(c->Cout * sizeof *b);
    float *cot = malloc(r.ny * sizeof *cot);
    fill(x, r.nx, &seed);
    fill(w, r.nw, &seed);
    fill(b, (size_t)c->Cout, &seed);
    fill(cot, r.ny, &seed);
    r.y = malloc(r.ny * sizeof *r.y);
    r.dx = calloc(r.nx, sizeof *r.dx);
    r.dw = calloc(r.nw, sizeof *r.dw);
    r.db = calloc((size_t)c->Cout, sizeof *r.db);

    int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    sd_graph *g = sd_graph_new();
    sd_tensor *tx = sd_tensor_wrap(g, 4, (int[]){c->N, c->Cin, c->H, c->W}, x, r.dx);
    sd_tensor *tw = sd_tensor_wrap(g, 4, (int[]){c->Cout, c->Cin, c->K, c->K}, w, r.dw);
    sd_tensor *tb = sd_tensor_wrap(g, 1, (int[]){c->Cout}, b, r.db);
    sd_tensor *y = sd_conv2d(g, tx, tw, tb, c->stride, c->pad);
    ck_assert_msg(y != NULL, "%s", sd_error_message());
    memcpy(r.y, y->data, r.ny * sizeof *r.y);
    ck_assert_int_eq(sd_graph_backward(g, y, cot), SD_OK);
    sd_graph_free(g);
    omp_set_num_threads(saved);
    free(x), free(w), free(b), free(cot);
    return r;
}

static void run_free(run_out *r) { free(r->y), free(r->dx), free(r->dw), free(r->db); }

static const conv_case thread_cases[] = {
    {8, 16, 16, 17, 15, 3, 1, 1, true},  /* one image per GEMM, transposed dx */
    {16, 32, 32, 7, 7, 3, 1, 1, true},   /* several images per GEMM */
    {20, 24, 16, 14, 14, 3, 2, 1, true}, /* stride 2 on phase planes, chunks 8+8+4 */
    {12, 32, 16, 16, 16, 1, 1, 0, true}, /* 1x1 direct */
    {9, 4, 24, 15, 15, 3, 1, 1, true},   /* Cin << Cout: dx by w^T dy and col2im */
    {7, 16, 16, 15, 13, 3, 1, 0, true},  /* no padding: the generic (row) im2col */
    {1, 32, 32, 28, 28, 3, 1, 1, true},  /* a single image: one chunk, one thread */
};

START_TEST(test_threads_identical)
{
    const conv_case *c = &thread_cases[_i];
    run_out a = run_threads(c, 1), b = run_threads(c, 2);
    ck_assert_msg(memcmp(a.y, b.y, a.ny * sizeof(float)) == 0, "case %d: y differs", _i);
    ck_assert_msg(memcmp(a.dx, b.dx, a.nx * sizeof(float)) == 0, "case %d: dx differs", _i);
    ck_assert_msg(memcmp(a.dw, b.dw, a.nw * sizeof(float)) == 0, "case %d: dw differs", _i);
    ck_assert_msg(memcmp(a.db, b.db, (size_t)c->Cout * sizeof(float)) == 0, "case %d: db differs",
                  _i);
    run_free(&a);
    run_free(&b);
}
END_TEST

/* ---- a repeated training step allocates nothing ------------------------- */

START_TEST(test_arena_reuse)
{
    float x[2 * 3 * 9 * 9], w[4 * 3 * 3 * 3], dw[4 * 3 * 3 * 3] = {0};
    unsigned seed = 3;
    fill(x, sizeof x / sizeof *x, &seed);
    fill(w, sizeof w / sizeof *w, &seed);
    sd_graph *g = sd_graph_new();
    uint64_t before = 0;
    for (int step = 0; step < 3; step++) {
        if (step == 1) before = sd_alloc_count();
        sd_graph_reset(g);
        sd_tensor *tx = sd_tensor_wrap(g, 4, (int[]){2, 3, 9, 9}, x, NULL);
        sd_tensor_requires_grad(tx);
        sd_tensor *tw = sd_tensor_wrap(g, 4, (int[]){4, 3, 3, 3}, w, dw);
        sd_tensor *y = sd_conv2d(g, tx, tw, NULL, 2, 1);
        ck_assert_int_eq(sd_graph_backward(g, y, NULL), SD_OK);
    }
    ck_assert_uint_eq(sd_alloc_count(), before);
    sd_graph_free(g);
}
END_TEST

/* The same for the implicit-GEMM path (8 -> 16 channels, stride 1 and 2):
 * its scratch comes from the arena too. */
START_TEST(test_arena_reuse_kernel)
{
    static float x[2 * 8 * 10 * 10], w[16 * 8 * 3 * 3], dw[16 * 8 * 3 * 3], dx[2 * 8 * 10 * 10];
    unsigned seed = 5;
    fill(x, sizeof x / sizeof *x, &seed);
    fill(w, sizeof w / sizeof *w, &seed);
    for (int stride = 1; stride <= 2; stride++) {
        sd_graph *g = sd_graph_new();
        uint64_t before = 0;
        sd__conv_paths_reset();
        for (int step = 0; step < 3; step++) {
            if (step == 1) before = sd_alloc_count();
            sd_graph_reset(g);
            sd_tensor *tx = sd_tensor_wrap(g, 4, (int[]){2, 8, 10, 10}, x, dx);
            sd_tensor *tw = sd_tensor_wrap(g, 4, (int[]){16, 8, 3, 3}, w, dw);
            sd_tensor *y = sd_conv2d(g, tx, tw, NULL, stride, 1);
            ck_assert_int_eq(sd_graph_backward(g, y, NULL), SD_OK);
        }
        ck_assert_uint_eq(sd_alloc_count(), before);
        /* ... and it was the kernel path that allocated nothing. */
        sd_conv_path p = cpu_has_kernel() ? SD_CONV_IGEMM : SD_CONV_IM2COL;
        expect_path(SD_CONV_FORWARD, p, 3, "arena reuse");
        expect_path(SD_CONV_DX, p, 3, "arena reuse");
        expect_path(SD_CONV_DW, p, 3, "arena reuse");
        sd_graph_free(g);
    }
}
END_TEST

/* ---- error paths ---------------------------------------------------------- */

static void expect_fail(sd_tensor *t, const char *what)
{
    ck_assert_ptr_null(t);
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "conv2d"));
    ck_assert_msg(strstr(sd_error_message(), what) != NULL, "message '%s' lacks '%s'",
                  sd_error_message(), what);
}

START_TEST(test_errors)
{
    sd_graph *g = sd_graph_new();
    sd_tensor *x = sd_tensor_zeros(g, 4, (int[]){2, 3, 5, 5});
    sd_tensor *w = sd_tensor_zeros(g, 4, (int[]){4, 3, 3, 3});
    sd_tensor *w2 = sd_tensor_zeros(g, 4, (int[]){4, 2, 3, 3});
    sd_tensor *big = sd_tensor_zeros(g, 4, (int[]){4, 3, 9, 9});
    sd_tensor *rect = sd_tensor_zeros(g, 4, (int[]){4, 3, 3, 2});
    sd_tensor *b5 = sd_tensor_zeros(g, 1, (int[]){5});
    sd_tensor *x3 = sd_tensor_zeros(g, 3, (int[]){3, 5, 5});
    expect_fail(sd_conv2d(g, x, w2, NULL, 1, 1), "channels");
    ck_assert_int_eq(sd_graph_status(g), SD_ERR_INVALID);
    expect_fail(sd_conv2d(g, x, big, NULL, 1, 1), "larger than the padded input");
    expect_fail(sd_conv2d(g, x, w, NULL, 0, 1), "stride 0");
    expect_fail(sd_conv2d(g, x, w, NULL, 1, -1), "padding -1");
    expect_fail(sd_conv2d(g, x, w, b5, 1, 1), "bias");
    expect_fail(sd_conv2d(g, x3, w, NULL, 1, 1), "[3, 5, 5]");
    expect_fail(sd_conv2d(g, x, rect, NULL, 1, 1), "square");
    expect_fail(sd_conv2d(g, x, w, NULL, 1, 1 << 28), "too large");
    /* The kernel fits once padded: 9 <= 5 + 2*2. */
    ck_assert_ptr_nonnull(sd_conv2d(g, x, big, NULL, 1, 2));
    /* NULL sources: NULL at once. */
    ck_assert_ptr_null(sd_conv2d(g, NULL, w, NULL, 1, 1));
    ck_assert_ptr_null(sd_conv2d(g, x, NULL, NULL, 1, 1));
    sd_graph_free(g);
}
END_TEST

int main(void)
{
    sd_threads_init(0); /* OMP_NUM_THREADS, and OpenBLAS pinned to one thread */
    Suite *s = suite_create("conv");
    TCase *tg = tcase_create("grad");
    tcase_add_test(tg, test_grad_3x3_s1);
    tcase_add_test(tg, test_grad_3x3_s2_odd);
    tcase_add_test(tg, test_grad_1x1);
    tcase_add_test(tg, test_grad_5x5_pad2);
    tcase_add_test(tg, test_grad_no_bias);
    tcase_add_test(tg, test_grad_cin1);
    tcase_add_test(tg, test_grad_several_chunks);
    tcase_add_test(tg, test_grad_x_constant);
    tcase_add_test(tg, test_fused_gn_silu_conv_grad);
    tcase_add_test(tg, test_fused_gn_silu_conv_matches_unfused);
    tcase_set_timeout(tg, 240);
    suite_add_tcase(s, tg);
    TCase *tv = tcase_create("values");
    tcase_add_loop_test(tv, test_forward_reference, 0,
                        (int)(sizeof forward_cases / sizeof forward_cases[0]));
    tcase_add_loop_test(tv, test_threads_identical, 0,
                        (int)(sizeof thread_cases / sizeof thread_cases[0]));
    tcase_add_loop_test(tv, test_kernel_reference, 0,
                        (int)(sizeof kernel_cases / sizeof kernel_cases[0]));
    tcase_add_test(tv, test_arena_reuse);
    tcase_add_test(tv, test_arena_reuse_kernel);
    tcase_add_test(tv, test_errors);
    tcase_set_timeout(tv, 240);
    suite_add_tcase(s, tv);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    /* Everything else ran; only the kernel itself could not. */
    if (!cpu_has_kernel())
        printf("SKIPPED PART: this CPU lacks AVX-512F/FMA, so the implicit-GEMM kernel did not "
               "run; its \"kernel on\" cases checked the im2col path only\n");
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

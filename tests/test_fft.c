/* test_fft.c - FFT / DCT ops (ops_fft.c) and the FFTW plan cache (fft_plan.c).
 *
 * Forward values are compared with naive O(n^2) double-precision DFT / DCT
 * sums written from the numpy / scipy definitions; backward passes with the
 * adjoint identity <A x, y> = <x, A^T y> (A^T y from sd_graph_backward with
 * cotangent y) and with finite differences (gc_check).
 */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "sd/fft.h"
#include "sd/ops.h"
#include "test_util.h"
#include "core/graph_internal.h"

#define PI 3.14159265358979323846

typedef struct shape4 {
    int n, c, h, w;
} shape4;

/* Odd, even, mixed and degenerate planes. */
static const shape4 SHAPES[] = {
    {1, 1, 7, 9}, {2, 1, 8, 6}, {1, 2, 28, 28}, {1, 1, 1, 5}, {1, 1, 4, 1}, {1, 1, 5, 2},
};
#define N_SHAPES ((int)(sizeof SHAPES / sizeof SHAPES[0]))

static unsigned rng_state = 12345u;

/* uniform in [-1, 1): the same floats as r / 2^23 - 1 (r < 2^24, exact) */
static float urand(void) { return tu_urand(&rng_state, -1.0f, 1.0f); }

static float *rand_array(size_t n)
{
    float *a = malloc(n * sizeof *a);
    for (size_t i = 0; i < n; i++) a[i] = urand();
    return a;
}

static size_t numel4(shape4 s) { return (size_t)s.n * s.c * s.h * s.w; }

static double max_abs(const double *a, size_t n)
{
    double m = 0.0;
    for (size_t i = 0; i < n; i++) m = fmax(m, fabs(a[i]));
    return m;
}

/* ---- naive references (one plane, double) ---------------------------------- */

/* numpy.fft.rfft2: Y[k1][k2] = sum_n x[n] e^{-2 pi i (k1 n1/H + k2 n2/W)}, k2 <= W/2.
 * y is [H][W/2+1] complex, interleaved. */
static void ref_rfft2(const float *x, int H, int W, double *y)
{
    int Wh = W / 2 + 1;
    for (int k1 = 0; k1 < H; k1++)
        for (int k2 = 0; k2 < Wh; k2++) {
            double re = 0.0, im = 0.0;
            for (int n1 = 0; n1 < H; n1++)
                for (int n2 = 0; n2 < W; n2++) {
                    double th = 2.0 * PI * ((double)k1 * n1 / H + (double)k2 * n2 / W);
                    re += x[n1 * W + n2] * cos(th);
                    im -= x[n1 * W + n2] * sin(th);
                }
            y[2 * (k1 * Wh + k2)] = re;
            y[2 * (k1 * Wh + k2) + 1] = im;
        }
}

/* numpy.fft.irfft2(Y, s=(H, W)) as numpy computes it: a full complex inverse
 * DFT along axis 0, c[n1][k2] = 1/H sum_k1 Y[k1][k2] e^{+2 pi i k1 n1/H}, then
 * a 1-D irfft along axis 1 which ignores the imaginary parts of c[.][0] and
 * (W even) c[.][W/2]:
 *   x[n1][n2] = 1/W (Re c_0 + (-1)^n2 Re c_{W/2} [W even]
 *                    + 2 sum_{0<k2<W/2} Re(c_k2 e^{+2 pi i k2 n2/W})). */
static void ref_irfft2(const float *Y, int H, int W, double *x)
{
    int Wh = W / 2 + 1;
    double *cre = malloc(sizeof(double) * (size_t)(H * Wh));
    double *cim = malloc(sizeof(double) * (size_t)(H * Wh));
    for (int n1 = 0; n1 < H; n1++)
        for (int k2 = 0; k2 < Wh; k2++) {
            double re = 0.0, im = 0.0;
            for (int k1 = 0; k1 < H; k1++) {
                double th = 2.0 * PI * k1 * n1 / H;
                double a = Y[2 * (k1 * Wh + k2)], b = Y[2 * (k1 * Wh + k2) + 1];
                re += a * cos(th) - b * sin(th);
                im += a * sin(th) + b * cos(th);
            }
            cre[n1 * Wh + k2] = re / H;
            cim[n1 * Wh + k2] = im / H;
        }
    for (int n1 = 0; n1 < H; n1++)
        for (int n2 = 0; n2 < W; n2++) {
            double s = cre[n1 * Wh];
            for (int k2 = 1; k2 < Wh; k2++) {
                double th = 2.0 * PI * k2 * n2 / W;
                double re = cre[n1 * Wh + k2], im = cim[n1 * Wh + k2];
                if (W % 2 == 0 && k2 == W / 2)
                    s += re * cos(th); /* Nyquist: Re c only; cos(pi n2) = (-1)^n2 */
                else
                    s += 2.0 * (re * cos(th) - im * sin(th));
            }
            x[n1 * W + n2] = s / W;
        }
    free(cre);
    free(cim);
}

/* scipy orthonormal weights s_N(0) = sqrt(1/N), s_N(k) = sqrt(2/N). */
static double ortho_w(int k, int N) { return k ? sqrt(2.0 / N) : sqrt(1.0 / N); }

/* dctn(type=2, norm='ortho'):  y[k] = s(k1) s(k2) sum_n x[n] cos(pi k1 (2n1+1)/2H) cos(pi k2 (2n2+1)/2W)
 * dctn(type=3, norm='ortho'):  x[n] = sum_k s(k1) s(k2) y[k] cos(...) cos(...) */
static void ref_dct2(const float *in, int H, int W, bool inverse, double *out)
{
    for (int a1 = 0; a1 < H; a1++)
        for (int a2 = 0; a2 < W; a2++) {
            double s = 0.0;
            for (int b1 = 0; b1 < H; b1++)
                for (int b2 = 0; b2 < W; b2++) {
                    int k1 = inverse ? b1 : a1, n1 = inverse ? a1 : b1;
                    int k2 = inverse ? b2 : a2, n2 = inverse ? a2 : b2;
                    s += ortho_w(k1, H) * ortho_w(k2, W) * in[b1 * W + b2] *
                         cos(PI * k1 * (2 * n1 + 1) / (2.0 * H)) *
                         cos(PI * k2 * (2 * n2 + 1) / (2.0 * W));
                }
            out[a1 * W + a2] = s;
        }
}

/* ---- forward values ------------------------------------------------------- */

START_TEST(test_rfft2_values)
{
    for (int si = 0; si < N_SHAPES; si++) {
        shape4 s = SHAPES[si];
        int Wc = 2 * (s.w / 2 + 1);
        sd_graph *g = sd_graph_new();
        float *xd = rand_array(numel4(s));
        sd_tensor *x = sd_tensor_wrap(g, 4, (int[]){s.n, s.c, s.h, s.w}, xd, NULL);
        sd_tensor *y = sd_rfft2(g, x);
        ck_assert_ptr_nonnull(y);
        ck_assert_int_eq(y->ndim, 4);
        ck_assert_int_eq(y->shape[2], s.h);
        ck_assert_int_eq(y->shape[3], Wc);
        size_t hw = (size_t)s.h * s.w, ch = (size_t)s.h * Wc;
        double *ref = malloc(ch * sizeof *ref);
        for (int p = 0; p < s.n * s.c; p++) {
            ref_rfft2(xd + p * hw, s.h, s.w, ref);
            double tol = 1e-5 * fmax(1.0, max_abs(ref, ch));
            for (size_t i = 0; i < ch; i++)
                ck_assert_msg(fabs(y->data[p * ch + i] - ref[i]) <= tol,
                              "rfft2 %dx%d plane %d elem %zu: %g vs %g", s.h, s.w, p, i,
                              (double)y->data[p * ch + i], ref[i]);
        }
        free(ref);
        free(xd);
        sd_graph_free(g);
    }
}
END_TEST

START_TEST(test_irfft2_values_and_round_trip)
{
    for (int si = 0; si < N_SHAPES; si++) {
        shape4 s = SHAPES[si];
        int Wc = 2 * (s.w / 2 + 1);
        sd_graph *g = sd_graph_new();
        /* A generic (non-Hermitian) half spectrum: only its Hermitian part
         * may matter, exactly as in numpy. */
        size_t nX = (size_t)s.n * s.c * s.h * Wc, hw = (size_t)s.h * s.w;
        float *Xd = rand_array(nX);
        sd_tensor *X = sd_tensor_wrap(g, 4, (int[]){s.n, s.c, s.h, Wc}, Xd, NULL);
        sd_tensor *x = sd_irfft2(g, X, s.w);
        ck_assert_ptr_nonnull(x);
        ck_assert_int_eq(x->shape[3], s.w);
        double *ref = malloc(hw * sizeof *ref);
        for (int p = 0; p < s.n * s.c; p++) {
            ref_irfft2(Xd + p * (size_t)s.h * Wc, s.h, s.w, ref);
            for (size_t i = 0; i < hw; i++)
                ck_assert_msg(fabs(x->data[p * hw + i] - ref[i]) <= 1e-5,
                              "irfft2 %dx%d plane %d elem %zu: %g vs %g", s.h, s.w, p, i,
                              (double)x->data[p * hw + i], ref[i]);
        }
        /* Round trip irfft2(rfft2(x)) = x. */
        float *xd = rand_array(numel4(s));
        sd_tensor *x0 = sd_tensor_wrap(g, 4, (int[]){s.n, s.c, s.h, s.w}, xd, NULL);
        sd_tensor *back = sd_irfft2(g, sd_rfft2(g, x0), s.w);
        ck_assert_ptr_nonnull(back);
        for (size_t i = 0; i < numel4(s); i++)
            ck_assert_msg(fabsf(back->data[i] - xd[i]) <= 1e-5f, "round trip %dx%d elem %zu",
                          s.h, s.w, i);
        free(ref);
        free(Xd);
        free(xd);
        sd_graph_free(g);
    }
}
END_TEST

START_TEST(test_dct_values_round_trip_energy)
{
    for (int si = 0; si < N_SHAPES; si++) {
        shape4 s = SHAPES[si];
        sd_graph *g = sd_graph_new();
        size_t n = numel4(s), hw = (size_t)s.h * s.w;
        float *xd = rand_array(n);
        sd_tensor *x = sd_tensor_wrap(g, 4, (int[]){s.n, s.c, s.h, s.w}, xd, NULL);
        sd_tensor *y = sd_dct2(g, x);
        sd_tensor *z = sd_idct2(g, x);
        ck_assert_ptr_nonnull(y);
        ck_assert_ptr_nonnull(z);
        double *ref = malloc(hw * sizeof *ref);
        for (int inv = 0; inv < 2; inv++) {
            const float *got = inv ? z->data : y->data;
            for (int p = 0; p < s.n * s.c; p++) {
                ref_dct2(xd + p * hw, s.h, s.w, inv, ref);
                for (size_t i = 0; i < hw; i++)
                    ck_assert_msg(fabs(got[p * hw + i] - ref[i]) <= 1e-5,
                                  "%s %dx%d plane %d elem %zu: %g vs %g", inv ? "idct2" : "dct2",
                                  s.h, s.w, p, i, (double)got[p * hw + i], ref[i]);
            }
        }
        /* Round trips in both orders, and Parseval for the orthonormal DCT. */
        sd_tensor *a = sd_idct2(g, y), *b = sd_dct2(g, z);
        ck_assert_ptr_nonnull(a);
        ck_assert_ptr_nonnull(b);
        double ex = 0.0, ey = 0.0;
        for (size_t i = 0; i < n; i++) {
            ck_assert_msg(fabsf(a->data[i] - xd[i]) <= 1e-5f, "idct2(dct2) %dx%d", s.h, s.w);
            ck_assert_msg(fabsf(b->data[i] - xd[i]) <= 1e-5f, "dct2(idct2) %dx%d", s.h, s.w);
            ex += (double)xd[i] * xd[i];
            ey += (double)y->data[i] * y->data[i];
        }
        ck_assert_msg(fabs(sqrt(ey) - sqrt(ex)) <= 1e-5 * sqrt(ex), "energy %g vs %g", ey, ex);
        free(ref);
        free(xd);
        sd_graph_free(g);
    }
}
END_TEST

START_TEST(test_dct2_planes_raw)
{
    /* Raw API vs the graph op, out of place and in place; a 2-D tensor also
     * works (one plane). */
    int H = 6, W = 11, P = 3;
    size_t n = (size_t)P * H * W;
    float *x = rand_array(n), *y = malloc(n * sizeof *y), *z = malloc(n * sizeof *z);
    ck_assert_int_eq(sd_dct2_planes(x, y, P, H, W, false), SD_OK);
    memcpy(z, x, n * sizeof *z);
    ck_assert_int_eq(sd_dct2_planes(z, z, P, H, W, false), SD_OK);
    sd_graph *g = sd_graph_new();
    sd_tensor *t = sd_dct2(g, sd_tensor_wrap(g, 3, (int[]){P, H, W}, x, NULL));
    ck_assert_ptr_nonnull(t);
    for (size_t i = 0; i < n; i++) {
        ck_assert_float_eq(y[i], t->data[i]);
        ck_assert_float_eq(y[i], z[i]);
    }
    ck_assert_int_eq(sd_dct2_planes(z, z, P, H, W, true), SD_OK);
    for (size_t i = 0; i < n; i++) ck_assert_float_eq_tol(z[i], x[i], 1e-5f);
    sd_tensor *t2 = sd_dct2(g, sd_tensor_wrap(g, 2, (int[]){H, W}, x, NULL));
    ck_assert_ptr_nonnull(t2);
    for (size_t i = 0; i < (size_t)H * W; i++) ck_assert_float_eq(t2->data[i], y[i]);
    ck_assert_int_eq(sd_dct2_planes(x, y, 0, H, W, false), SD_OK); /* nothing to do */
    sd_graph_free(g);
    free(x);
    free(y);
    free(z);
}
END_TEST

/* ---- adjoints ---------------------------------------------------------------- */

enum { OP_RFFT2, OP_IRFFT2, OP_DCT2, OP_IDCT2, N_OPS };
static const char *OP_NAMES[] = {"rfft2", "irfft2", "dct2", "idct2"};

/* Input shape of op k for a real plane shape s (irfft2 takes a half spectrum). */
static void op_in_shape(int k, shape4 s, int *shape)
{
    shape[0] = s.n;
    shape[1] = s.c;
    shape[2] = s.h;
    shape[3] = k == OP_IRFFT2 ? 2 * (s.w / 2 + 1) : s.w;
}

static sd_tensor *apply_op(sd_graph *g, int k, sd_tensor *x, int W)
{
    switch (k) {
    case OP_RFFT2: return sd_rfft2(g, x);
    case OP_IRFFT2: return sd_irfft2(g, x, W);
    case OP_DCT2: return sd_dct2(g, x);
    default: return sd_idct2(g, x);
    }
}

START_TEST(test_adjoints)
{
    for (int k = 0; k < N_OPS; k++)
        for (int si = 0; si < N_SHAPES; si++) {
            shape4 s = SHAPES[si];
            int shape[4];
            op_in_shape(k, s, shape);
            size_t nx = (size_t)shape[0] * shape[1] * shape[2] * shape[3];
            float *xd = rand_array(nx), *xg = calloc(nx, sizeof *xg);
            sd_graph *g = sd_graph_new();
            sd_tensor *x = sd_tensor_wrap(g, 4, shape, xd, xg);
            sd_tensor *y = apply_op(g, k, x, s.w);
            ck_assert_ptr_nonnull(y);
            float *yb = rand_array(y->numel);
            ck_assert_int_eq(sd_graph_backward(g, y, yb), SD_OK);
            /* <A x, ybar> vs <x, A^T ybar>, relative to |A x| |ybar| (Cauchy-
             * Schwarz bound of both sides), accumulated in double. */
            double lhs = 0.0, rhs = 0.0, nAx = 0.0, ny = 0.0;
            for (size_t i = 0; i < y->numel; i++) {
                lhs += (double)y->data[i] * yb[i];
                nAx += (double)y->data[i] * y->data[i];
                ny += (double)yb[i] * yb[i];
            }
            for (size_t i = 0; i < nx; i++) rhs += (double)xd[i] * xg[i];
            double rel = fabs(lhs - rhs) / (sqrt(nAx) * sqrt(ny));
            ck_assert_msg(rel <= 1e-5, "%s %dx%d: <Ax,y> = %.9g, <x,A^T y> = %.9g (rel %.3g)",
                          OP_NAMES[k], s.h, s.w, lhs, rhs, rel);
            free(yb);
            free(xd);
            free(xg);
            sd_graph_free(g);
        }
}
END_TEST

/* ---- gradient checks ------------------------------------------------------- */

typedef struct gc_ctx {
    int op, W;
} gc_ctx;

static sd_tensor *gc_fn(sd_graph *g, sd_tensor **in, void *ctx)
{
    gc_ctx *c = ctx;
    return apply_op(g, c->op, in[0], c->W);
}

START_TEST(test_gradcheck)
{
    static const shape4 gshapes[] = {{3, 5, 7, 9}, {2, 3, 6, 8}, {1, 2, 1, 4}};
    for (int k = 0; k < N_OPS; k++)
        for (int si = 0; si < 3; si++) {
            shape4 s = gshapes[si];
            gc_input in = {.ndim = 4, .lo = -1.0f, .hi = 1.0f};
            op_in_shape(k, s, in.shape);
            gc_ctx ctx = {k, s.w};
            gc_result res = gc_check(gc_fn, &ctx, 1, &in, NULL);
            ck_assert_msg(res.ok, "%s [%d,%d,%d,%d]: %s", OP_NAMES[k], s.n, s.c, s.h, s.w,
                          res.message);
        }
}
END_TEST

/* ---- errors, recording, allocation -------------------------------------------- */

START_TEST(test_errors)
{
    sd_graph *g = sd_graph_new();
    sd_tensor *v = sd_tensor_zeros(g, 1, (int[]){5});
    ck_assert_ptr_null(sd_rfft2(g, v));
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "rfft2"));
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "[5]"));
    ck_assert_int_eq(sd_graph_status(g), SD_ERR_INVALID);
    ck_assert_ptr_null(sd_dct2(g, v));
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "dct2"));
    ck_assert_ptr_null(sd_idct2(g, v));
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "idct2"));
    sd_tensor *X = sd_tensor_zeros(g, 4, (int[]){1, 1, 4, 6}); /* W = 4 or 5 */
    ck_assert_ptr_null(sd_irfft2(g, X, 6));
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "irfft2"));
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "[1, 1, 4, 6]"));
    ck_assert_ptr_null(sd_irfft2(g, X, 0));
    ck_assert_ptr_null(sd_irfft2(g, X, 3));
    ck_assert_ptr_null(sd_irfft2(g, v, 8));
    sd_graph_reset(g);
    X = sd_tensor_zeros(g, 4, (int[]){1, 1, 4, 6});
    ck_assert_ptr_nonnull(sd_irfft2(g, X, 4));
    ck_assert_ptr_nonnull(sd_irfft2(g, X, 5));
    /* NULL sources propagate silently. */
    ck_assert_ptr_null(sd_rfft2(g, NULL));
    ck_assert_ptr_null(sd_irfft2(g, NULL, 4));
    ck_assert_ptr_null(sd_dct2(g, NULL));
    ck_assert_ptr_null(sd_idct2(g, NULL));
    ck_assert_int_eq(sd_graph_status(g), SD_OK);
    /* Raw API and planner. */
    float buf[4] = {0};
    ck_assert_int_eq(sd_dct2_planes(NULL, buf, 1, 2, 2, false), SD_ERR_INVALID);
    ck_assert_int_eq(sd_dct2_planes(buf, buf, 1, 0, 2, false), SD_ERR_INVALID);
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "dct2_planes"));
    ck_assert_int_eq(sd_dct2_planes(buf, buf, -1, 2, 2, true), SD_ERR_INVALID);
    ck_assert_ptr_null(sd_fft_plan_get(SD_FFT_R2C, 0, 4));
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "fft_plan"));
    ck_assert_ptr_null(sd_fft_plan_get((sd_fft_kind)42, 4, 4));
    ck_assert_ptr_nonnull(strstr(sd_error_message(), "kind"));
    sd_graph_free(g);
}
END_TEST

START_TEST(test_no_grad_and_no_alloc)
{
    sd_graph *g = sd_graph_new();
    int shape[4] = {2, 3, 7, 9};
    size_t n = 2 * 3 * 7 * 9;
    float *xd = rand_array(n), *xg = calloc(n, sizeof *xg);
    /* Inputs without grad: nothing is recorded. */
    sd_tensor *x = sd_tensor_wrap(g, 4, shape, xd, NULL);
    ck_assert(!sd__recorded(sd_rfft2(g, x)));
    ck_assert(!sd__recorded(sd_dct2(g, x)));
    /* A repeated training-like step allocates nothing after the first. */
    uint64_t before = 0;
    for (int step = 0; step < 3; step++) {
        sd_graph_reset(g);
        if (step == 1) before = sd_alloc_count();
        x = sd_tensor_wrap(g, 4, shape, xd, xg);
        sd_tensor *y = sd_irfft2(g, sd_rfft2(g, sd_idct2(g, sd_dct2(g, x))), 9);
        ck_assert_ptr_nonnull(y);
        ck_assert_int_eq(sd_graph_backward(g, y, NULL), SD_OK);
    }
    ck_assert_uint_eq(sd_alloc_count(), before);
    /* y = x (a chain of inverse pairs), so d sum(y) / dx = 1, three times. */
    for (size_t i = 0; i < n; i++) ck_assert_float_eq_tol(xg[i], 3.0f, 1e-4f);
    free(xd);
    free(xg);
    sd_graph_free(g);
}
END_TEST

/* ---- plan cache and threads --------------------------------------------------- */

START_TEST(test_large_parallel_matches_serial)
{
    /* 40 planes of 32 x 32 = 40960 floats: the parallel path. Each plane
     * must equal a single-plane (serial) transform exactly. */
    int P = 40, H = 32, W = 32;
    size_t hw = (size_t)H * W, n = (size_t)P * hw;
    float *x = rand_array(n), *y = malloc(n * sizeof *y), *one = malloc(hw * sizeof *one);
    for (int inv = 0; inv < 2; inv++) {
        ck_assert_int_eq(sd_dct2_planes(x, y, P, H, W, inv), SD_OK);
        for (int p = 0; p < P; p++) {
            ck_assert_int_eq(sd_dct2_planes(x + p * hw, one, 1, H, W, inv), SD_OK);
            ck_assert_int_eq(memcmp(one, y + p * hw, hw * sizeof *one), 0);
        }
    }
    sd_graph *g = sd_graph_new();
    sd_tensor *X = sd_rfft2(g, sd_tensor_wrap(g, 4, (int[]){4, 10, H, W}, x, NULL));
    ck_assert_ptr_nonnull(X);
    sd_tensor *back = sd_irfft2(g, X, W);
    for (size_t i = 0; i < n; i++) ck_assert_float_eq_tol(back->data[i], x[i], 1e-5f);
    sd_graph_free(g);
    free(x);
    free(y);
    free(one);
}
END_TEST

START_TEST(test_plan_cache_threads)
{
    sd_fft_cache_clear();
    ck_assert_uint_eq(sd_fft_cache_size(), 0);
    fftwf_plan p1 = sd_fft_plan_get(SD_FFT_DCT2, 7, 9);
    fftwf_plan p2 = sd_fft_plan_get(SD_FFT_DCT2, 7, 9);
    ck_assert_ptr_nonnull(p1);
    ck_assert_ptr_eq(p1, p2);
    ck_assert_ptr_ne(sd_fft_plan_get(SD_FFT_DCT3, 7, 9), p1);
    ck_assert_ptr_ne(sd_fft_plan_get(SD_FFT_DCT2, 9, 7), p1);
    ck_assert_uint_eq(sd_fft_cache_size(), 3);

    /* Two threads plan and execute concurrently: 24 jobs over 6 shapes (most
     * not cached yet), each checked against the naive DCT afterwards. */
    sd_fft_cache_clear();
    enum { JOBS = 24 };
    static const int hs[6] = {3, 5, 8, 4, 9, 6}, ws[6] = {7, 5, 4, 11, 2, 6};
    float *in[JOBS], *out[JOBS];
    sd_status st[JOBS];
    for (int j = 0; j < JOBS; j++) {
        size_t n = 2 * (size_t)hs[j % 6] * ws[j % 6];
        in[j] = rand_array(n);
        out[j] = malloc(n * sizeof(float));
    }
#pragma omp parallel for schedule(static, 1) num_threads(2)
    for (int j = 0; j < JOBS; j++)
        st[j] = sd_dct2_planes(in[j], out[j], 2, hs[j % 6], ws[j % 6], (j / 6) % 2 == 1);
    ck_assert_uint_eq(sd_fft_cache_size(), 12); /* 6 shapes x (DCT-II, DCT-III) */
    for (int j = 0; j < JOBS; j++) {
        int H = hs[j % 6], W = ws[j % 6];
        size_t hw = (size_t)H * W;
        double *ref = malloc(hw * sizeof *ref);
        ck_assert_int_eq(st[j], SD_OK);
        for (int p = 0; p < 2; p++) {
            ref_dct2(in[j] + p * hw, H, W, (j / 6) % 2 == 1, ref);
            for (size_t i = 0; i < hw; i++)
                ck_assert_msg(fabs(out[j][p * hw + i] - ref[i]) <= 1e-5, "job %d elem %zu", j, i);
        }
        free(ref);
        free(in[j]);
        free(out[j]);
    }
    /* After a clear, ops replan transparently; leave the cache empty. */
    sd_fft_cache_clear();
    float x[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
    float y[12];
    ck_assert_int_eq(sd_dct2_planes(x, y, 1, 3, 4, false), SD_OK);
    ck_assert_float_eq_tol(y[0], 78.0f / sqrtf(12.0f), 1e-5f); /* DC = sum / sqrt(HW) */
    ck_assert_uint_eq(sd_fft_cache_size(), 1);
    sd_fft_cache_clear();
    ck_assert_uint_eq(sd_fft_cache_size(), 0);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("fft");
    TCase *tc = tcase_create("fft");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_rfft2_values);
    tcase_add_test(tc, test_irfft2_values_and_round_trip);
    tcase_add_test(tc, test_dct_values_round_trip_energy);
    tcase_add_test(tc, test_dct2_planes_raw);
    tcase_add_test(tc, test_adjoints);
    tcase_add_test(tc, test_gradcheck);
    tcase_add_test(tc, test_errors);
    tcase_add_test(tc, test_no_grad_and_no_alloc);
    tcase_add_test(tc, test_large_parallel_matches_serial);
    tcase_add_test(tc, test_plan_cache_threads);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    sd_fft_cache_clear();
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

/* test_norm.c - normalisation ops (lib/ops/ops_norm.c): group / instance / layer /
 * batch norm and the fused SiLU(GroupNorm(x)).
 *
 * Forward values are compared with naive double-precision references written
 * here; gradients with the finite-difference harness (gradcheck.h) on odd
 * shapes; the fused op against SiLU applied (naively, in this file) to
 * sd_group_norm, forward and backward; batch norm's running statistics against
 * the PyTorch update formula; and the error paths.
 */
#include <check.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "sd/ops.h"
#include "test_util.h"

/* ---- helpers --------------------------------------------------------------- */

static unsigned test_seed = 12345u;

static float *rand_array(size_t n, float lo, float hi)
{
    float *a = malloc(n * sizeof *a);
    ck_assert_ptr_nonnull(a);
    for (size_t i = 0; i < n; i++) a[i] = tu_urand(&test_seed, lo, hi);
    return a;
}

static size_t prod(int ndim, const int *shape)
{
    size_t n = 1;
    for (int i = 0; i < ndim; i++) n *= (size_t)shape[i];
    return n;
}

/* Naive group norm of x viewed as [N, C, S] with G groups, in double:
 * out = (x - mean) / sqrt(var + eps) * gamma[c] + beta[c], biased variance. */
static void ref_group_norm(const float *x, int N, int C, size_t S, int G, const float *gamma,
                           const float *beta, double eps, double *out)
{
    int Cg = C / G;
    for (int n = 0; n < N; n++)
        for (int gi = 0; gi < G; gi++) {
            double sum = 0.0, sq = 0.0, M = (double)Cg * (double)S;
            for (int c = gi * Cg; c < (gi + 1) * Cg; c++)
                for (size_t s = 0; s < S; s++) sum += x[((size_t)n * C + c) * S + s];
            double mean = sum / M;
            for (int c = gi * Cg; c < (gi + 1) * Cg; c++)
                for (size_t s = 0; s < S; s++) {
                    double d = x[((size_t)n * C + c) * S + s] - mean;
                    sq += d * d;
                }
            double sd = sqrt(sq / M + eps);
            for (int c = gi * Cg; c < (gi + 1) * Cg; c++)
                for (size_t s = 0; s < S; s++) {
                    size_t i = ((size_t)n * C + c) * S + s;
                    out[i] = (x[i] - mean) / sd * (gamma ? gamma[c] : 1.0) + (beta ? beta[c] : 0.0);
                }
        }
}

/* Naive batch norm of x [N, C, S]: per-channel mean/var over N*S (training) or
 * the given running stats (eval). Also returns the biased batch variance. */
static void ref_batch_norm(const float *x, int N, int C, size_t S, const float *gamma,
                           const float *beta, const float *rm, const float *rv, double eps,
                           double *out, double *mean_out, double *var_out)
{
    for (int c = 0; c < C; c++) {
        double sum = 0.0, sq = 0.0, M = (double)N * (double)S;
        for (int n = 0; n < N; n++)
            for (size_t s = 0; s < S; s++) sum += x[((size_t)n * C + c) * S + s];
        double mean = sum / M;
        for (int n = 0; n < N; n++)
            for (size_t s = 0; s < S; s++) {
                double d = x[((size_t)n * C + c) * S + s] - mean;
                sq += d * d;
            }
        double var = sq / M;
        if (mean_out) mean_out[c] = mean;
        if (var_out) var_out[c] = var;
        double mu = rm ? rm[c] : mean, v = rv ? rv[c] : var;
        for (int n = 0; n < N; n++)
            for (size_t s = 0; s < S; s++) {
                size_t i = ((size_t)n * C + c) * S + s;
                out[i] = (x[i] - mu) / sqrt(v + eps) * (gamma ? gamma[c] : 1.0) +
                         (beta ? beta[c] : 0.0);
            }
    }
}

static double naive_sigmoid(double z) { return 1.0 / (1.0 + exp(-z)); }

static void assert_close(const float *got, const double *want, size_t n, double tol,
                         const char *what)
{
    for (size_t i = 0; i < n; i++) {
        double err = fabs((double)got[i] - want[i]);
        ck_assert_msg(err <= tol * (1.0 + fabs(want[i])), "%s: element %zu got %.8g want %.8g",
                      what, i, (double)got[i], want[i]);
    }
}

static sd_tensor *wrap(sd_graph *g, int ndim, const int *shape, float *data, float *grad)
{
    sd_tensor *t = sd_tensor_wrap(g, ndim, shape, data, grad);
    ck_assert_ptr_nonnull(t);
    return t;
}

/* ---- gradient checks --------------------------------------------------------- */

enum { K_GROUP, K_GROUP_SILU, K_INSTANCE, K_LAYER, K_BATCH_TRAIN, K_BATCH_EVAL };

typedef struct norm_ctx {
    int kind;
    int groups;
    float eps;
    const float *rm, *rv; /* eval-mode running stats */
} norm_ctx;

/* inputs: x, gamma, beta */
static sd_tensor *build_norm(sd_graph *g, sd_tensor **in, void *vctx)
{
    const norm_ctx *c = vctx;
    switch (c->kind) {
    case K_GROUP: return sd_group_norm(g, in[0], c->groups, in[1], in[2], c->eps);
    case K_GROUP_SILU: return sd_group_norm_silu(g, in[0], c->groups, in[1], in[2], c->eps);
    case K_INSTANCE: return sd_instance_norm(g, in[0], in[1], in[2], c->eps);
    case K_LAYER: return sd_layer_norm(g, in[0], in[1], in[2], c->eps);
    case K_BATCH_TRAIN:
        return sd_batch_norm(g, in[0], in[1], in[2], NULL, NULL, 0.1f, c->eps, true);
    case K_BATCH_EVAL: {
        /* Copies: the op must not write the running stats in eval mode. */
        float rm[16], rv[16];
        int C = in[0]->shape[1];
        memcpy(rm, c->rm, (size_t)C * sizeof(float));
        memcpy(rv, c->rv, (size_t)C * sizeof(float));
        sd_tensor *y = sd_batch_norm(g, in[0], in[1], in[2], rm, rv, 0.1f, c->eps, false);
        ck_assert_mem_eq(rm, c->rm, (size_t)C * sizeof(float));
        ck_assert_mem_eq(rv, c->rv, (size_t)C * sizeof(float));
        return y;
    }
    default: return NULL;
    }
}

/* Check x, gamma and beta of one op on x of the given shape; the affine
 * parameters have `C` elements. */
static void gradcheck_norm(norm_ctx ctx, int ndim, const int *shape, int C)
{
    gc_input in[3] = {
        {.ndim = ndim, .lo = -2.0f, .hi = 2.0f},
        {.ndim = 1, .shape = {C}, .lo = -1.5f, .hi = 1.5f},
        {.ndim = 1, .shape = {C}, .lo = -1.0f, .hi = 1.0f},
    };
    memcpy(in[0].shape, shape, (size_t)ndim * sizeof(int));
    gc_result res = gc_check(build_norm, &ctx, 3, in, NULL);
    GC_ASSERT(res);
}

START_TEST(test_grad_group_norm)
{
    gradcheck_norm((norm_ctx){K_GROUP, 3, 1e-5f, NULL, NULL}, 4, (int[]){3, 6, 5, 7}, 6);
    /* 2-D [N, C], and 3-D with one trailing dim. */
    gradcheck_norm((norm_ctx){K_GROUP, 3, 1e-5f, NULL, NULL}, 2, (int[]){5, 9}, 9);
    gradcheck_norm((norm_ctx){K_GROUP, 2, 1e-5f, NULL, NULL}, 3, (int[]){3, 4, 5}, 4);
}
END_TEST

START_TEST(test_grad_group_norm_silu)
{
    gradcheck_norm((norm_ctx){K_GROUP_SILU, 3, 1e-5f, NULL, NULL}, 4, (int[]){3, 6, 5, 7}, 6);
    gradcheck_norm((norm_ctx){K_GROUP_SILU, 1, 1e-5f, NULL, NULL}, 2, (int[]){3, 5}, 5);
}
END_TEST

START_TEST(test_grad_instance_layer)
{
    gradcheck_norm((norm_ctx){K_INSTANCE, 0, 1e-5f, NULL, NULL}, 4, (int[]){3, 5, 4, 3}, 5);
    gradcheck_norm((norm_ctx){K_LAYER, 0, 1e-5f, NULL, NULL}, 2, (int[]){3, 5}, 5);
    gradcheck_norm((norm_ctx){K_LAYER, 0, 1e-5f, NULL, NULL}, 3, (int[]){2, 3, 7}, 7);
    gradcheck_norm((norm_ctx){K_LAYER, 0, 1e-5f, NULL, NULL}, 1, (int[]){9}, 9);
}
END_TEST

START_TEST(test_grad_batch_norm)
{
    /* Training: the batch statistics are recomputed on every perturbed
     * forward, so the check covers their dependence on x. */
    gradcheck_norm((norm_ctx){K_BATCH_TRAIN, 0, 1e-5f, NULL, NULL}, 2, (int[]){3, 5}, 5);
    gradcheck_norm((norm_ctx){K_BATCH_TRAIN, 0, 1e-5f, NULL, NULL}, 4, (int[]){3, 4, 5, 3}, 4);
    const float rm[5] = {0.3f, -0.5f, 0.0f, 1.2f, -0.1f};
    const float rv[5] = {0.7f, 1.5f, 0.2f, 2.0f, 1.0f};
    gradcheck_norm((norm_ctx){K_BATCH_EVAL, 0, 1e-5f, rm, rv}, 2, (int[]){3, 5}, 5);
    gradcheck_norm((norm_ctx){K_BATCH_EVAL, 0, 1e-5f, rm, rv}, 4, (int[]){3, 4, 5, 3}, 4);
}
END_TEST

/* Training-mode dx is orthogonal to 1 and to x_hat in every channel (the mean
 * and variance terms of the backward). The eval-mode rule dx = dy gamma rstd,
 * i.e. forgetting that the statistics depend on x, violates this. */
START_TEST(test_batch_norm_train_dx_projection)
{
    const int N = 4, C = 3, S = 6;
    int shape[3] = {N, C, S};
    size_t n = prod(3, shape);
    float *x = rand_array(n, -2.0f, 3.0f), *dy = rand_array(n, -1.0f, 1.0f);
    float *dx = calloc(n, sizeof *dx);
    float gam[3] = {0.7f, -1.3f, 2.0f}, bet[3] = {0.1f, 0.2f, 0.3f};
    sd_graph *g = sd_graph_new();
    sd_tensor *tx = wrap(g, 3, shape, x, dx);
    sd_tensor *y = sd_batch_norm(g, tx, wrap(g, 1, &shape[1], gam, NULL),
                                 wrap(g, 1, &shape[1], bet, NULL), NULL, NULL, 0.1f, 1e-5f, true);
    ck_assert_ptr_nonnull(y);
    ck_assert_int_eq(sd_graph_backward(g, y, dy), SD_OK);
    double *yref = malloc(n * sizeof *yref);
    ref_batch_norm(x, N, C, (size_t)S, NULL, NULL, NULL, NULL, 1e-5, yref, NULL, NULL);
    for (int c = 0; c < C; c++) {
        double s1 = 0.0, s2 = 0.0, mag = 0.0;
        for (int b = 0; b < N; b++)
            for (int s = 0; s < S; s++) {
                size_t i = ((size_t)b * C + c) * S + s;
                s1 += dx[i];
                s2 += dx[i] * yref[i]; /* yref = x_hat without affine */
                mag += fabs(dx[i]);
            }
        ck_assert_msg(mag > 0.1, "channel %d: dx vanished", c);
        ck_assert_msg(fabs(s1) < 1e-5 * mag && fabs(s2) < 1e-5 * mag,
                      "channel %d: sum dx %g, sum dx x_hat %g", c, s1, s2);
    }
    sd_graph_free(g);
    free(x), free(dy), free(dx), free(yref);
}
END_TEST

/* ---- forward values --------------------------------------------------------- */

START_TEST(test_forward_group_instance_layer)
{
    int shape[4] = {3, 6, 5, 7};
    size_t n = prod(4, shape), S = 35;
    float *x = rand_array(n, -3.0f, 2.0f), *gam = rand_array(6, -2.0f, 2.0f);
    float *bet = rand_array(6, -1.0f, 1.0f);
    double *ref = malloc(n * sizeof *ref);
    sd_graph *g = sd_graph_new();
    sd_tensor *tx = wrap(g, 4, shape, x, NULL), *tg = wrap(g, 1, &shape[1], gam, NULL);
    sd_tensor *tb = wrap(g, 1, &shape[1], bet, NULL);

    ref_group_norm(x, 3, 6, S, 3, gam, bet, 1e-5, ref);
    sd_tensor *y = sd_group_norm(g, tx, 3, tg, tb, 1e-5f);
    ck_assert_ptr_nonnull(y);
    ck_assert_int_eq(y->ndim, 4);
    ck_assert_mem_eq(y->shape, shape, sizeof shape);
    assert_close(y->data, ref, n, 2e-6, "group_norm");

    /* gamma, beta NULL mean 1, 0; a large eps shows it sits inside the sqrt. */
    ref_group_norm(x, 3, 6, S, 2, NULL, NULL, 0.5, ref);
    y = sd_group_norm(g, tx, 2, NULL, NULL, 0.5f);
    ck_assert_ptr_nonnull(y);
    assert_close(y->data, ref, n, 2e-6, "group_norm no affine");

    ref_group_norm(x, 3, 6, S, 6, gam, bet, 1e-5, ref);
    y = sd_instance_norm(g, tx, tg, tb, 1e-5f);
    ck_assert_ptr_nonnull(y);
    assert_close(y->data, ref, n, 2e-6, "instance_norm");

    /* 2-D group norm [N, C] and layer norm over the last dim (= group norm of
     * the [rows, D] view with one group) of a 3-D tensor. */
    float gam10[10], bet7[7];
    for (int i = 0; i < 10; i++) gam10[i] = tu_urand(&test_seed, -2.0f, 2.0f);
    for (int i = 0; i < 7; i++) bet7[i] = tu_urand(&test_seed, -1.0f, 1.0f);
    ref_group_norm(x, 9, 10, 1, 5, gam10, NULL, 1e-5, ref);
    y = sd_group_norm(g, wrap(g, 2, (int[]){9, 10}, x, NULL), 5, wrap(g, 1, (int[]){10}, gam10, NULL),
                      NULL, 1e-5f);
    ck_assert_ptr_nonnull(y);
    assert_close(y->data, ref, 90, 2e-6, "group_norm 2-D");

    ref_group_norm(x, 30, 7, 1, 1, NULL, bet7, 1e-5, ref);
    y = sd_layer_norm(g, wrap(g, 3, (int[]){5, 6, 7}, x, NULL), NULL, wrap(g, 1, (int[]){7}, bet7, NULL),
                      1e-5f);
    ck_assert_ptr_nonnull(y);
    ck_assert_int_eq(y->ndim, 3);
    assert_close(y->data, ref, 210, 2e-6, "layer_norm");

    sd_graph_free(g);
    free(x), free(gam), free(bet), free(ref);
}
END_TEST

/* |mean| >> std: a one-pass float E[x^2] - E[x]^2 would lose every digit here. */
START_TEST(test_forward_large_mean)
{
    int shape[4] = {2, 4, 3, 5};
    size_t n = prod(4, shape);
    float *x = rand_array(n, 999.0f, 1001.0f);
    double *ref = malloc(n * sizeof *ref);
    sd_graph *g = sd_graph_new();
    ref_group_norm(x, 2, 4, 15, 2, NULL, NULL, 1e-5, ref);
    sd_tensor *y = sd_group_norm(g, wrap(g, 4, shape, x, NULL), 2, NULL, NULL, 1e-5f);
    ck_assert_ptr_nonnull(y);
    assert_close(y->data, ref, n, 2e-6, "group_norm large mean");
    ref_batch_norm(x, 2, 4, 15, NULL, NULL, NULL, NULL, 1e-5, ref, NULL, NULL);
    y = sd_batch_norm(g, wrap(g, 4, shape, x, NULL), NULL, NULL, NULL, NULL, 0.1f, 1e-5f, true);
    ck_assert_ptr_nonnull(y);
    assert_close(y->data, ref, n, 2e-6, "batch_norm large mean");
    sd_graph_free(g);
    free(x), free(ref);
}
END_TEST

/* Fused op == SiLU(group_norm) with a naive SiLU, forward and backward (the
 * unfused backward is group_norm's with cotangent r * SiLU'(z)). */
START_TEST(test_group_norm_silu_matches_unfused)
{
    int shape[4] = {3, 6, 5, 7};
    size_t n = prod(4, shape);
    float *x = rand_array(n, -3.0f, 3.0f), *gam = rand_array(6, -2.0f, 2.0f);
    float *bet = rand_array(6, -1.0f, 1.0f), *r = rand_array(n, -1.0f, 1.0f);
    float *r2 = malloc(n * sizeof *r2);
    float *gx[2], gg[2][6], gb[2][6];
    float *fused = malloc(n * sizeof *fused);
    sd_graph *g = sd_graph_new();
    for (int pass = 0; pass < 2; pass++) {
        gx[pass] = calloc(n, sizeof(float));
        memset(gg[pass], 0, sizeof gg[pass]);
        memset(gb[pass], 0, sizeof gb[pass]);
        sd_graph_reset(g);
        sd_tensor *tx = wrap(g, 4, shape, x, gx[pass]);
        sd_tensor *tg = wrap(g, 1, &shape[1], gam, gg[pass]);
        sd_tensor *tb = wrap(g, 1, &shape[1], bet, gb[pass]);
        if (pass == 0) {
            sd_tensor *y = sd_group_norm_silu(g, tx, 3, tg, tb, 1e-5f);
            ck_assert_ptr_nonnull(y);
            ck_assert_str_eq(y->op, "group_norm_silu");
            memcpy(fused, y->data, n * sizeof(float));
            ck_assert_int_eq(sd_graph_backward(g, y, r), SD_OK);
        } else {
            sd_tensor *z = sd_group_norm(g, tx, 3, tg, tb, 1e-5f);
            ck_assert_ptr_nonnull(z);
            for (size_t i = 0; i < n; i++) {
                double zi = z->data[i], s = naive_sigmoid(zi);
                double want = zi * s;
                ck_assert_msg(fabs(fused[i] - want) <= 1e-6 * (1.0 + fabs(want)),
                              "forward %zu: fused %.9g, silu(group_norm) %.9g", i,
                              (double)fused[i], want);
                r2[i] = (float)(r[i] * (s * (1.0 + zi * (1.0 - s))));
            }
            ck_assert_int_eq(sd_graph_backward(g, z, r2), SD_OK);
        }
    }
    double gmax = 0.0;
    for (size_t i = 0; i < n; i++) gmax = fmax(gmax, fabs(gx[1][i]));
    ck_assert(gmax > 0.1);
    for (size_t i = 0; i < n; i++)
        ck_assert_msg(fabs(gx[0][i] - gx[1][i]) <= 1e-5 * gmax, "dx %zu: fused %.9g unfused %.9g",
                      i, (double)gx[0][i], (double)gx[1][i]);
    for (int c = 0; c < 6; c++) {
        ck_assert_msg(fabs(gg[0][c] - gg[1][c]) <= 1e-5 * (1.0 + fabs(gg[1][c])), "dgamma %d", c);
        ck_assert_msg(fabs(gb[0][c] - gb[1][c]) <= 1e-5 * (1.0 + fabs(gb[1][c])), "dbeta %d", c);
    }
    /* Only gamma and beta need gradients (no dx pass): same sums. */
    float gg3[6] = {0}, gb3[6] = {0};
    sd_graph_reset(g);
    sd_tensor *y = sd_group_norm_silu(g, wrap(g, 4, shape, x, NULL), 3,
                                      wrap(g, 1, &shape[1], gam, gg3),
                                      wrap(g, 1, &shape[1], bet, gb3), 1e-5f);
    ck_assert_int_eq(sd_graph_backward(g, y, r), SD_OK);
    ck_assert_mem_eq(gg3, gg[0], sizeof gg3);
    ck_assert_mem_eq(gb3, gb[0], sizeof gb3);
    sd_graph_free(g);
    free(x), free(gam), free(bet), free(r), free(r2), free(fused), free(gx[0]), free(gx[1]);
}
END_TEST

/* Running stats: running = (1 - m) running + m stat with the unbiased batch
 * variance; eval mode then normalises with them. */
START_TEST(test_batch_norm_running_stats)
{
    int shape[4] = {4, 3, 2, 3};
    const int N = 4, C = 3;
    const size_t S = 6, n = prod(4, shape);
    const double M = (double)N * (double)S, mom = 0.1;
    float *x = rand_array(n, -1.0f, 3.0f);
    float gam[3] = {1.5f, -0.5f, 0.8f}, bet[3] = {0.0f, 1.0f, -2.0f};
    float rm[3] = {0.5f, -0.2f, 1.0f}, rv[3] = {1.0f, 2.0f, 0.5f};
    float rm0[3], rv0[3];
    memcpy(rm0, rm, sizeof rm);
    memcpy(rv0, rv, sizeof rv);
    double *ref = malloc(n * sizeof *ref), bmean[3], bvar[3];
    sd_graph *g = sd_graph_new();
    sd_tensor *tx = wrap(g, 4, shape, x, NULL), *tg = wrap(g, 1, &shape[1], gam, NULL);
    sd_tensor *tb = wrap(g, 1, &shape[1], bet, NULL);

    sd_tensor *y = sd_batch_norm(g, tx, tg, tb, rm, rv, (float)mom, 1e-5f, true);
    ck_assert_ptr_nonnull(y);
    ref_batch_norm(x, N, C, S, gam, bet, NULL, NULL, 1e-5, ref, bmean, bvar);
    assert_close(y->data, ref, n, 2e-6, "batch_norm training");
    for (int c = 0; c < C; c++) {
        double want_m = (1.0 - mom) * rm0[c] + mom * bmean[c];
        double want_v = (1.0 - mom) * rv0[c] + mom * bvar[c] * M / (M - 1.0);
        ck_assert_msg(fabs(rm[c] - want_m) <= 1e-6 * (1.0 + fabs(want_m)), "running_mean[%d]", c);
        ck_assert_msg(fabs(rv[c] - want_v) <= 1e-6 * (1.0 + fabs(want_v)), "running_var[%d]", c);
    }

    /* Only one of the two arrays given: the other is simply not tracked. */
    float rv_only[3] = {1.0f, 1.0f, 1.0f};
    ck_assert_ptr_nonnull(sd_batch_norm(g, tx, tg, tb, NULL, rv_only, 1.0f, 1e-5f, true));
    for (int c = 0; c < C; c++)
        ck_assert_double_eq_tol(rv_only[c], bvar[c] * M / (M - 1.0), 1e-5);

    /* Eval mode uses (and does not change) the running stats. */
    float rm1[3], rv1[3];
    memcpy(rm1, rm, sizeof rm);
    memcpy(rv1, rv, sizeof rv);
    y = sd_batch_norm(g, tx, tg, tb, rm, rv, (float)mom, 1e-3f, false);
    ck_assert_ptr_nonnull(y);
    ck_assert_mem_eq(rm, rm1, sizeof rm);
    ck_assert_mem_eq(rv, rv1, sizeof rv);
    ref_batch_norm(x, N, C, S, gam, bet, rm, rv, 1e-3, ref, NULL, NULL);
    assert_close(y->data, ref, n, 2e-6, "batch_norm eval");

    /* 2-D [N, C] training forward. */
    ref_batch_norm(x, 5, 7, 1, NULL, NULL, NULL, NULL, 1e-5, ref, NULL, NULL);
    y = sd_batch_norm(g, wrap(g, 2, (int[]){5, 7}, x, NULL), NULL, NULL, NULL, NULL, 0.1f, 1e-5f,
                      true);
    ck_assert_ptr_nonnull(y);
    assert_close(y->data, ref, 35, 2e-6, "batch_norm 2-D");
    sd_graph_free(g);
    free(x), free(ref);
}
END_TEST

/* ---- recording, memory, threads ---------------------------------------------- */

START_TEST(test_no_grad_and_no_alloc)
{
    int shape[4] = {3, 6, 5, 7};
    size_t n = prod(4, shape);
    float *x = rand_array(n, -1.0f, 1.0f), gam[6] = {1, 2, 3, 4, 5, 6}, bet[6] = {0};
    float ggrad[6] = {0}, rm[6] = {0}, rv[6] = {1, 1, 1, 1, 1, 1};
    sd_graph *g = sd_graph_new();

    /* No-grad: nothing recorded, nothing saved, same numbers. */
    sd_graph_set_grad_enabled(g, false);
    sd_tensor *a = sd_group_norm_silu(g, wrap(g, 4, shape, x, NULL), 3,
                                      wrap(g, 1, &shape[1], gam, ggrad), NULL, 1e-5f);
    ck_assert_ptr_nonnull(a);
    ck_assert(a->backward == NULL);
    ck_assert_ptr_null(a->saved);
    sd_graph_set_grad_enabled(g, true);
    sd_tensor *b = sd_group_norm_silu(g, wrap(g, 4, shape, x, NULL), 3,
                                      wrap(g, 1, &shape[1], gam, ggrad), NULL, 1e-5f);
    ck_assert(b->backward != NULL);
    ck_assert_mem_eq(a->data, b->data, n * sizeof(float));

    /* A repeated training step allocates nothing after warm-up. */
    uint64_t before = 0;
    for (int step = 0; step < 5; step++) {
        if (step == 2) before = sd_alloc_count();
        sd_graph_reset(g);
        sd_tensor *tx = wrap(g, 4, shape, x, NULL);
        sd_tensor_requires_grad(tx);
        sd_tensor *tg = wrap(g, 1, &shape[1], gam, ggrad), *tb = wrap(g, 1, &shape[1], bet, NULL);
        sd_tensor *h = sd_group_norm_silu(g, tx, 3, tg, tb, 1e-5f);
        h = sd_batch_norm(g, h, tg, tb, rm, rv, 0.1f, 1e-5f, true);
        h = sd_layer_norm(g, h, NULL, NULL, 1e-5f);
        h = sd_instance_norm(g, h, NULL, tb, 1e-5f);
        ck_assert_ptr_nonnull(h);
        ck_assert_int_eq(sd_graph_backward(g, h, NULL), SD_OK);
    }
    ck_assert_uint_eq(sd_alloc_count(), before);
    sd_graph_free(g);
    free(x);
}
END_TEST

/* Results (forward and gradients) are bitwise identical on 1 and 2 threads,
 * on tensors large enough to take the parallel paths. res holds, in order:
 * forward and dx of group_norm_silu -> batch_norm on [2,32,32,32], forward
 * and dx of layer_norm on the [2048, 32] view, and the three dgammas. */
static void run_big(const float *x, float *gam, float *res, size_t n)
{
    int shape[4] = {2, 32, 32, 32}, rows[2] = {2048, 32};
    float *gx = res + n, *gg = res + 4 * n;
    sd_graph *g = sd_graph_new();
    memset(res, 0, (4 * n + 96) * sizeof(float));
    sd_tensor *tx = wrap(g, 4, shape, (float *)x, gx);
    sd_tensor *h = sd_group_norm_silu(g, tx, 8, wrap(g, 1, &shape[1], gam, gg), NULL, 1e-5f);
    h = sd_batch_norm(g, h, wrap(g, 1, &shape[1], gam, gg + 32), NULL, NULL, NULL, 0.1f, 1e-5f,
                      true);
    ck_assert_ptr_nonnull(h);
    memcpy(res, h->data, n * sizeof(float));
    ck_assert_int_eq(sd_graph_backward(g, h, x), SD_OK);

    sd_graph_reset(g);
    tx = wrap(g, 2, rows, (float *)x, NULL);
    sd_tensor_requires_grad(tx);
    h = sd_layer_norm(g, tx, wrap(g, 1, &rows[1], gam, gg + 64), NULL, 1e-5f);
    ck_assert_ptr_nonnull(h);
    memcpy(res + 2 * n, h->data, n * sizeof(float));
    ck_assert_int_eq(sd_graph_backward(g, h, x), SD_OK);
    memcpy(res + 3 * n, tx->grad, n * sizeof(float));
    sd_graph_free(g);
}

START_TEST(test_thread_determinism)
{
    const size_t n = 2 * 32 * 32 * 32, total = 4 * n + 96;
    float *x = rand_array(n, -2.0f, 2.0f), *gam = rand_array(32, 0.5f, 1.5f);
    float *res[2];
    for (int t = 0; t < 2; t++) {
        res[t] = malloc(total * sizeof(float));
        ck_assert_ptr_nonnull(res[t]);
        sd_threads_init(t + 1);
        run_big(x, gam, res[t], n);
    }
    sd_threads_init(2);
    ck_assert_mem_eq(res[0], res[1], total * sizeof(float));
    free(res[0]), free(res[1]), free(x), free(gam);
}
END_TEST

/* ---- error paths ---------------------------------------------------------- */

static void expect_fail(sd_graph *g, sd_tensor *y, const char *needle)
{
    ck_assert_ptr_null(y);
    ck_assert_int_eq(sd_graph_status(g), SD_ERR_INVALID);
    ck_assert_msg(strstr(sd_error_message(), needle) != NULL, "message '%s' lacks '%s'",
                  sd_error_message(), needle);
    sd_graph_reset(g);
}

START_TEST(test_errors)
{
    float buf[3 * 6 * 5 * 7] = {0};
    float rv[6] = {1, 1, 1, 1, 1, 1};
    sd_graph *g = sd_graph_new();
    int shape[4] = {3, 6, 5, 7};
#define X wrap(g, 4, shape, buf, NULL)
#define VEC(n) wrap(g, 1, (int[]){n}, buf, NULL)
    expect_fail(g, sd_group_norm(g, X, 4, NULL, NULL, 1e-5f), "group_norm: 4 groups");
    expect_fail(g, sd_group_norm(g, X, 0, NULL, NULL, 1e-5f), "group_norm");
    expect_fail(g, sd_group_norm_silu(g, X, 4, NULL, NULL, 1e-5f), "group_norm_silu");
    expect_fail(g, sd_group_norm(g, X, 3, VEC(5), NULL, 1e-5f), "group_norm: gamma");
    expect_fail(g, sd_group_norm_silu(g, X, 3, NULL, VEC(7), 1e-5f), "group_norm_silu: beta");
    expect_fail(g, sd_group_norm(g, VEC(6), 1, NULL, NULL, 1e-5f), "group_norm: x must be");
    expect_fail(g, sd_group_norm(g, X, 3, NULL, NULL, -1.0f), "group_norm: eps");
    expect_fail(g, sd_instance_norm(g, X, VEC(3), NULL, 1e-5f), "instance_norm: gamma");
    expect_fail(g, sd_instance_norm(g, wrap(g, 2, (int[]){3, 6}, buf, NULL), NULL, NULL, 1e-5f),
                "instance_norm");
    expect_fail(g, sd_layer_norm(g, X, VEC(6), NULL, 1e-5f), "layer_norm: gamma");
    expect_fail(g, sd_layer_norm(g, X, NULL, VEC(5), 1e-5f), "layer_norm: beta");
    expect_fail(g, sd_batch_norm(g, X, VEC(7), NULL, NULL, NULL, 0.1f, 1e-5f, true),
                "batch_norm: gamma");
    expect_fail(g, sd_batch_norm(g, X, NULL, NULL, NULL, rv, 0.1f, 1e-5f, false),
                "batch_norm: eval mode");
    expect_fail(g, sd_batch_norm(g, X, NULL, NULL, rv, NULL, 0.1f, 1e-5f, false),
                "batch_norm: eval mode");
    expect_fail(g, sd_batch_norm(g, wrap(g, 2, (int[]){1, 6}, buf, NULL), NULL, NULL, NULL, NULL,
                                 0.1f, 1e-5f, true),
                "batch_norm: training needs");
    expect_fail(g, sd_batch_norm(g, VEC(6), NULL, NULL, NULL, NULL, 0.1f, 1e-5f, true),
                "batch_norm: x must be");
    expect_fail(g, sd_batch_norm(g, X, NULL, NULL, NULL, NULL, 1.5f, 1e-5f, true),
                "batch_norm: momentum");
#undef X
#undef VEC
    /* A failed earlier op (NULL x) propagates as NULL. */
    ck_assert_ptr_null(sd_group_norm(g, NULL, 1, NULL, NULL, 1e-5f));
    ck_assert_ptr_null(sd_group_norm_silu(g, NULL, 1, NULL, NULL, 1e-5f));
    ck_assert_ptr_null(sd_instance_norm(g, NULL, NULL, NULL, 1e-5f));
    ck_assert_ptr_null(sd_layer_norm(g, NULL, NULL, NULL, 1e-5f));
    ck_assert_ptr_null(sd_batch_norm(g, NULL, NULL, NULL, NULL, NULL, 0.1f, 1e-5f, true));
    /* One sample per channel in eval mode is fine (running stats). */
    ck_assert_ptr_nonnull(sd_batch_norm(g, wrap(g, 2, (int[]){1, 6}, buf, NULL), NULL, NULL, rv,
                                        rv, 0.1f, 1e-5f, false));
    sd_graph_free(g);
}
END_TEST

int main(void)
{
    Suite *s = suite_create("norm");
    TCase *tc = tcase_create("norm");
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_forward_group_instance_layer);
    tcase_add_test(tc, test_forward_large_mean);
    tcase_add_test(tc, test_group_norm_silu_matches_unfused);
    tcase_add_test(tc, test_batch_norm_running_stats);
    tcase_add_test(tc, test_grad_group_norm);
    tcase_add_test(tc, test_grad_group_norm_silu);
    tcase_add_test(tc, test_grad_instance_layer);
    tcase_add_test(tc, test_grad_batch_norm);
    tcase_add_test(tc, test_batch_norm_train_dx_projection);
    tcase_add_test(tc, test_no_grad_and_no_alloc);
    tcase_add_test(tc, test_thread_determinism);
    tcase_add_test(tc, test_errors);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}

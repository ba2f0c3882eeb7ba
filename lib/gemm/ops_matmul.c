/* ops_matmul.c - dense layers: sd_matmul and sd_linear over sd_gemm.
 *
 * Dimensions: M, K, N for matmul ([M,K] x [K,N]); for linear, R rows of x
 * (the batch, or every leading index of an [..., in] input), D_in, D_out.
 * All products go through sd_gemm (row-major cblas_sgemm, split across the
 * OpenMP threads when large), so every output element is computed by one
 * thread and results are deterministic for a given thread count.
 */
#include "sd/gemm.h"
#include "sd/ops.h"
#include "core/graph_internal.h"

#include <limits.h>

/* ---- matmul -------------------------------------------------------------- */

/* Forward: C[M,N] = A[M,K] B[K,N]. Then, for L with dL/dC = G:
 *   dA[M,K] += G[M,N] B^T[N,K],   dB[K,N] += A^T[K,M] G[M,N]. */
static sd_status matmul_backward(sd_graph *g, sd_tensor *out)
{
    (void)g;
    sd_tensor *a = out->src[0], *b = out->src[1];
    int M = a->shape[0], K = a->shape[1], N = b->shape[1];
    const float *G = out->grad;
    if (a->grad) sd_gemm(false, true, M, K, N, 1.0f, G, N, b->data, N, 1.0f, a->grad, K);
    if (b->grad) sd_gemm(true, false, K, N, M, 1.0f, a->data, K, G, N, 1.0f, b->grad, N);
    return SD_OK;
}

sd_tensor *sd_matmul(sd_graph *g, sd_tensor *a, sd_tensor *b)
{
    if (!a || !b) return NULL;
    char sa[64], sb[64];
    if (a->ndim != 2 || b->ndim != 2 || a->shape[1] != b->shape[0])
        return sd_graph_fail(g, SD_ERR_INVALID,
                           "matmul: cannot multiply %s by %s (need [M,K] x [K,N])",
                           sd_shape_str(a, sa, sizeof sa), sd_shape_str(b, sb, sizeof sb));
    int M = a->shape[0], K = a->shape[1], N = b->shape[1];
    sd_tensor *out =
        sd__op_output(g, "matmul", 2, (int[]){M, N}, matmul_backward, 2, (sd_tensor *[]){a, b});
    if (!out) return NULL;
    /* out [M,N] = a [M,K] b [K,N] */
    sd_gemm(false, false, M, N, K, 1.0f, a->data, K, b->data, N, 0.0f, out->data, N);
    return out;
}

/* ---- linear -------------------------------------------------------------- */

/* Forward: y[R,Do] = x[R,Di] w[Do,Di]^T + b[Do] (b broadcast over rows).
 *   dx[R,Di]  += dy[R,Do] w[Do,Di]
 *   dw[Do,Di] += dy^T[Do,R] x[R,Di]
 *   db[Do]    += sum_r dy[r,:]  (summed in double, one output per thread) */
static sd_status linear_backward(sd_graph *g, sd_tensor *out)
{
    (void)g;
    sd_tensor *x = out->src[0], *w = out->src[1], *b = out->src[2];
    int Do = w->shape[0], Di = w->shape[1];
    int R = (int)(x->numel / (size_t)Di);
    const float *dy = out->grad;
    if (x->grad) sd_gemm(false, false, R, Di, Do, 1.0f, dy, Do, w->data, Di, 1.0f, x->grad, Di);
    if (w->grad) sd_gemm(true, false, Do, Di, R, 1.0f, dy, Do, x->data, Di, 1.0f, w->grad, Di);
    if (b && b->grad) {
        float *db = b->grad;
        size_t n = (size_t)R * (size_t)Do;
#pragma omp parallel for schedule(static) if (n >= 32768)
        for (int j = 0; j < Do; j++) {
            double s = 0.0;
            for (int r = 0; r < R; r++) s += dy[(size_t)r * (size_t)Do + (size_t)j];
            db[j] += (float)s;
        }
    }
    return SD_OK;
}

sd_tensor *sd_linear(sd_graph *g, sd_tensor *x, sd_tensor *w, sd_tensor *b)
{
    if (!x || !w) return NULL;
    char sx[64], sw[64], sb[64];
    if (w->ndim != 2 || x->shape[x->ndim - 1] != w->shape[1])
        return sd_graph_fail(g, SD_ERR_INVALID,
                           "linear: x %s does not match w %s (need x [..., in], w [out, in])",
                           sd_shape_str(x, sx, sizeof sx), sd_shape_str(w, sw, sizeof sw));
    int Do = w->shape[0], Di = w->shape[1];
    if (x->numel / (size_t)Di > (size_t)INT_MAX)
        return sd_graph_fail(g, SD_ERR_INVALID, "linear: x %s has more than INT_MAX rows",
                           sd_shape_str(x, sx, sizeof sx));
    if (b && (b->ndim != 1 || b->shape[0] != Do))
        return sd_graph_fail(g, SD_ERR_INVALID, "linear: bias %s does not match w %s (need [%d])",
                           sd_shape_str(b, sb, sizeof sb), sd_shape_str(w, sw, sizeof sw), Do);
    int shape[SD_MAX_DIMS];
    for (int i = 0; i < x->ndim; i++) shape[i] = x->shape[i];
    shape[x->ndim - 1] = Do;
    sd_tensor *out =
        sd__op_output(g, "linear", x->ndim, shape, linear_backward, 3, (sd_tensor *[]){x, w, b});
    if (!out) return NULL;
    int R = (int)(x->numel / (size_t)Di);
    float *y = out->data;
    float beta = 0.0f;
    if (b) {
        /* Start from the broadcast bias and let the GEMM add x w^T to it. */
        for (int r = 0; r < R; r++)
            for (int j = 0; j < Do; j++) y[(size_t)r * (size_t)Do + (size_t)j] = b->data[j];
        beta = 1.0f;
    }
    /* y [R,Do] (+)= x [R,Di] w^T [Di,Do] */
    sd_gemm(false, true, R, Do, Di, 1.0f, x->data, Di, w->data, Di, beta, y, Do);
    return out;
}

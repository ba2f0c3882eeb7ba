/* gemm.c - row-major sgemm over cblas, split across OpenMP threads (gemm.h).
 *
 * OpenBLAS runs single-threaded (sd_threads_init) because most of our GEMMs
 * are issued from inside OpenMP loops (per image in conv2d). A lone large GEMM
 * outside any parallel region would then use one core only, so sd_gemm cuts C
 * into one block per thread itself:
 *
 *   N >= M: column blocks  C[:, j0:j1] = op(A) * op(B)[:, j0:j1]
 *   N <  M: row blocks     C[i0:i1, :] = op(A)[i0:i1, :] * op(B)
 *
 * Each block is an independent cblas_sgemm, so each element of C is written
 * by exactly one thread and there is no reduction across threads.
 */
#include "sd/gemm.h"

#include <cblas.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* Below ~1M multiply-adds (~12 us at one core's sgemm speed) the fork/join
 * and the thinner blocks cost more than the second core gains. */
#define SD_GEMM_PAR_MIN_MACS ((double)(1 << 20))
/* Column blocks are multiples of 16 floats (one 64-byte cache line, and the
 * OpenBLAS micro-kernel width) so threads do not share lines of C. */
#define SD_GEMM_COL_ALIGN 16
#define SD_GEMM_ROW_ALIGN 4

static void gemm_block(bool ta, bool tb, int M, int N, int K, float alpha, const float *A, int lda,
                       const float *B, int ldb, float beta, float *C, int ldc)
{
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N,
                K, alpha, A, lda, B, ldb, beta, C, ldc);
}

/* C[M,N] = beta * C: what a GEMM with an empty inner dimension leaves. */
static void scale_c(int M, int N, float beta, float *C, int ldc)
{
    for (int i = 0; i < M; i++) {
        float *c = C + (size_t)i * (size_t)ldc;
        if (beta == 0.0f) {
            memset(c, 0, (size_t)N * sizeof(float));
        } else if (beta != 1.0f) {
            for (int j = 0; j < N; j++) c[j] *= beta;
        }
    }
}

void sd_gemm_serial(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float *A,
                    int lda, const float *B, int ldb, float beta, float *C, int ldc)
{
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        scale_c(M, N, beta, C, ldc);
        return;
    }
    gemm_block(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void sd_gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float *A, int lda,
             const float *B, int ldb, float beta, float *C, int ldc)
{
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        scale_c(M, N, beta, C, ldc);
        return;
    }
    int nt = 1;
#ifdef _OPENMP
    if (!omp_in_parallel() && (double)M * N * K >= SD_GEMM_PAR_MIN_MACS) nt = omp_get_max_threads();
#endif
    bool by_cols = N >= M;
    int extent = by_cols ? N : M;
    int align = by_cols ? SD_GEMM_COL_ALIGN : SD_GEMM_ROW_ALIGN;
    /* At least two aligned units per block, or the split is not worth it. */
    if (nt > extent / (2 * align)) nt = extent / (2 * align);
    if (nt <= 1) {
        gemm_block(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
#ifdef _OPENMP
    /* Blocks of `chunk` units of `align`; the last block takes the rest. */
    int units = (extent + align - 1) / align;
#pragma omp parallel num_threads(nt)
    {
        int t = omp_get_thread_num(), nth = omp_get_num_threads();
        int u0 = (int)((long)units * t / nth), u1 = (int)((long)units * (t + 1) / nth);
        int lo = u0 * align, hi = u1 * align;
        if (hi > extent) hi = extent;
        if (hi > lo) {
            if (by_cols) {
                /* op(B)[:, lo:hi]: columns of B, or rows of the stored B^T. */
                const float *Bb = trans_b ? B + (size_t)lo * (size_t)ldb : B + lo;
                gemm_block(trans_a, trans_b, M, hi - lo, K, alpha, A, lda, Bb, ldb, beta, C + lo,
                           ldc);
            } else {
                /* op(A)[lo:hi, :]: rows of A, or columns of the stored A^T. */
                const float *Ab = trans_a ? A + lo : A + (size_t)lo * (size_t)lda;
                gemm_block(trans_a, trans_b, hi - lo, N, K, alpha, Ab, lda, B, ldb, beta,
                           C + (size_t)lo * (size_t)ldc, ldc);
            }
        }
    }
#endif
}

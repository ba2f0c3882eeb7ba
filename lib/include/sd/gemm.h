/* gemm.h - the one matrix-multiply entry point of scorediff's kernels.
 *
 * sd_gemm computes, row-major (as cblas_sgemm with CblasRowMajor):
 *
 *     C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C[M,N]
 *
 * op(A) = A ([M,K], leading dimension lda) or A^T (A stored [K,M]) when
 * trans_a; likewise op(B) = B ([K,N]) or B^T (B stored [N,K]) when trans_b.
 *
 *     // y[N,out] = x[N,in] w[out,in]^T
 *     sd_gemm(false, true, N, out, in, 1.0f, x, in, w, in, 0.0f, y, out);
 *
 * Threading: OpenBLAS is pinned to one thread (sd_threads_init), so that ops
 * may call sd_gemm from inside their own OpenMP loops without oversubscribing
 * the cores. Called inside a parallel region (omp_in_parallel()) it is a plain
 * single-threaded cblas_sgemm. Called outside one with enough work it splits C
 * into per-thread column blocks (or row blocks when M is the larger side), so
 * each output element is computed by exactly one thread: the result is
 * deterministic for a given thread count. (Not necessarily bit-identical
 * across thread counts: OpenBLAS may pick other kernels for narrower blocks.)
 * sd_gemm_serial never splits; callers that parallelise over independent
 * GEMMs themselves, and want results independent of the thread count, use it.
 *
 * beta == 0 ignores the previous contents of C (NaN in C does not propagate),
 * as BLAS specifies. M, N <= 0 is a no-op; K <= 0 only scales C by beta.
 */
#ifndef SD_GEMM_H
#define SD_GEMM_H

#include <stdbool.h>

void sd_gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float *A, int lda,
             const float *B, int ldb, float beta, float *C, int ldc);
void sd_gemm_serial(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float *A,
                    int lda, const float *B, int ldb, float beta, float *C, int ldc);

#endif

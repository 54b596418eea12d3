// The one BLAS wrapper of lrpfast: every matrix product of the CPU engine goes through gemm(),
// except the fully connected layers' where the CPU has AVX-512 (streamed.hpp; they fall back here).
#pragma once
#include <string>

namespace lrpfast {

// C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C, row-major, float32.
// op(X) = X^T when the trans flag is set. lda/ldb/ldc are row strides of the stored matrices.
// Large products are split into column (or row) slices computed concurrently on lrpfast's thread
// pool, each by a single-threaded BLAS call (see parallel.hpp). The slices depend on the shape and
// the settings only: called from inside a pool task, or while the pool is busy, the same slices
// run on the calling thread. threaded = false: one BLAS call.
void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
          const float* B, int ldb, float beta, float* C, int ldc, bool threaded = true);

// Deterministic mode (process-wide; default off, or on with $LRPFAST_DETERMINISTIC=1). Every
// product is cut into calls whose shapes depend on the problem and one image alone, never on the
// batch or the thread count, so an image's result is bit-identical alone, in any batch, on any
// number of threads. Off (the default), products may span several images and are sliced by the
// number of threads set: results then depend on the batch's composition and on set_num_threads at
// float32 rounding level with BLAS kernels that are not shape-invariant (OpenBLAS's Haswell and
// small-matrix kernels), but never on whether other threads are using lrpfast at the same time.
void set_deterministic(bool on);
bool deterministic();

std::string blas_name();    // e.g. "scipy-openblas32 0.3.34 (OpenBLAS) core=Haswell"
std::string blas_config();  // the library's own configuration string

}  // namespace lrpfast

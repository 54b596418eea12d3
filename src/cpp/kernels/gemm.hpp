// The one BLAS wrapper of lrpfast: every matrix product of the CPU engine goes through gemm(),
// except the fully connected layers' where the CPU has AVX-512 (streamed.hpp; they fall back here).
#pragma once
#include <string>

namespace lrpfast {

// C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C, row-major, float32.
// op(X) = X^T when the trans flag is set. lda/ldb/ldc are row strides of the stored matrices.
// Large products are split into column (or row) slices computed concurrently on lrpfast's thread
// pool, each by a single-threaded BLAS call (see parallel.hpp); called from inside a pool task it
// runs on the calling thread only, as it does with threaded = false.
void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
          const float* B, int ldb, float beta, float* C, int ldc, bool threaded = true);

std::string blas_name();    // e.g. "scipy-openblas32 0.3.34 (OpenBLAS) core=Haswell"
std::string blas_config();  // the library's own configuration string

}  // namespace lrpfast

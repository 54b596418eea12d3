#include "kernels/gemm.hpp"

#include <cblas.h>

#ifdef LRPFAST_BLAS_PREFIX_SCIPY
#define LRPFAST_SGEMM scipy_cblas_sgemm
#define LRPFAST_BLAS_SET_THREADS scipy_openblas_set_num_threads
#define LRPFAST_BLAS_GET_THREADS scipy_openblas_get_num_threads
#define LRPFAST_BLAS_CONFIG scipy_openblas_get_config
#define LRPFAST_BLAS_CORE scipy_openblas_get_corename
#else
#define LRPFAST_SGEMM cblas_sgemm
#define LRPFAST_BLAS_SET_THREADS openblas_set_num_threads
#define LRPFAST_BLAS_GET_THREADS openblas_get_num_threads
#define LRPFAST_BLAS_CONFIG openblas_get_config
#define LRPFAST_BLAS_CORE openblas_get_corename
#endif

#ifndef LRPFAST_BLAS_NAME
#define LRPFAST_BLAS_NAME "unknown BLAS"
#endif

namespace lrpfast {

void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
          const float* B, int ldb, float beta, float* C, int ldc) {
  if (M <= 0 || N <= 0) return;
  LRPFAST_SGEMM(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

std::string blas_name() {
  return std::string(LRPFAST_BLAS_NAME) + " core=" + LRPFAST_BLAS_CORE();
}
std::string blas_config() { return LRPFAST_BLAS_CONFIG(); }
void blas_set_num_threads(int n) { LRPFAST_BLAS_SET_THREADS(n); }
int blas_get_num_threads() { return LRPFAST_BLAS_GET_THREADS(); }

}  // namespace lrpfast

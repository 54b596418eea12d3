#include "kernels/gemm.hpp"

#include <cblas.h>

#include <algorithm>
#include <cstdint>

#include "kernels/parallel.hpp"

#ifdef LRPFAST_BLAS_PREFIX_SCIPY
#define LRPFAST_SGEMM scipy_cblas_sgemm
#define LRPFAST_BLAS_SET_THREADS scipy_openblas_set_num_threads
#define LRPFAST_BLAS_CONFIG scipy_openblas_get_config
#define LRPFAST_BLAS_CORE scipy_openblas_get_corename
#else
#define LRPFAST_SGEMM cblas_sgemm
#define LRPFAST_BLAS_SET_THREADS openblas_set_num_threads
#define LRPFAST_BLAS_CONFIG openblas_get_config
#define LRPFAST_BLAS_CORE openblas_get_corename
#endif

#ifndef LRPFAST_BLAS_NAME
#define LRPFAST_BLAS_NAME "unknown BLAS"
#endif

namespace lrpfast {
namespace {

// BLAS runs single-threaded inside each slice; its own thread pool would compete with ours.
const bool g_blas_single_threaded = [] {
  LRPFAST_BLAS_SET_THREADS(1);
  return true;
}();

// Products smaller than this (M*N*K multiply-adds, ~40 us on one core) run on one thread.
constexpr double kParallelGemmWork = double(1 << 21);
// Slices are multiples of the BLAS micro-kernel's width (OpenBLAS sgemm: 16 x 4 for Haswell-class
// cores; row-major N maps onto its M) and never thinner than kMinSlice.
constexpr int kAlignN = 16, kAlignM = 8, kMinSlice = 32;

void gemm_serial(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda,
                 const float* B, int ldb, float beta, float* C, int ldc) {
  LRPFAST_SGEMM(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N,
                K, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace

void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
          const float* B, int ldb, float beta, float* C, int ldc, bool threaded) {
  (void)g_blas_single_threaded;
  if (M <= 0 || N <= 0) return;
  const int T = threaded ? num_threads() : 1;
  const bool split_n = N >= M;  // slice the longer side of C
  const int len = split_n ? N : M, align = split_n ? kAlignN : kAlignM;
  const int parts = std::min(T, std::max(1, len / kMinSlice));
  if (parts <= 1 || double(M) * N * K < kParallelGemmWork) {
    gemm_serial(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  auto task = [&](int t, int nt) {
    const int per = ((len + nt - 1) / nt + align - 1) / align * align;
    const int i0 = std::min(len, t * per), i1 = std::min(len, i0 + per);
    if (i0 >= i1) return;
    const std::int64_t i = i0;
    if (split_n)
      gemm_serial(trans_a, trans_b, M, i1 - i0, K, alpha, A, lda, trans_b ? B + i * ldb : B + i,
                  ldb, beta, C + i, ldc);
    else
      gemm_serial(trans_a, trans_b, i1 - i0, N, K, alpha, trans_a ? A + i : A + i * lda, lda, B,
                  ldb, beta, C + i * ldc, ldc);
  };
  parallel_run(parts, TaskRef(task));
}

std::string blas_name() { return std::string(LRPFAST_BLAS_NAME) + " core=" + LRPFAST_BLAS_CORE(); }
std::string blas_config() { return LRPFAST_BLAS_CONFIG(); }

}  // namespace lrpfast

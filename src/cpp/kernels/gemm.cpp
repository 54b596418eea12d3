#include "kernels/gemm.hpp"

#include <cblas.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "kernels/parallel.hpp"
#include "kernels/setting.hpp"

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

// Slices are multiples of the BLAS micro-kernel's width (OpenBLAS sgemm: 16 x 4 for Haswell-class
// cores; row-major N maps onto its M) and never thinner than kMinSlice.
constexpr int kAlignN = 16, kAlignM = 8, kMinSlice = 32;
// Products smaller than this (M*N*K multiply-adds, ~40 us on one core) are one call.
constexpr double kParallelGemmWork = double(1 << 21);
// Deterministic mode cuts the sliced side into this many slices (at most), whatever the threads.
constexpr int kFixedSlices = 8;

enum class Determinism { Off = 0, On = 1 };

Determinism determinism_from_env() {
  const char* s = std::getenv("LRPFAST_DETERMINISTIC");
  const bool on = s && *s && std::strcmp(s, "0") != 0 && std::strcmp(s, "false") != 0 &&
                  std::strcmp(s, "off") != 0;
  return on ? Determinism::On : Determinism::Off;
}
Setting<Determinism> g_determinism(determinism_from_env);

void gemm_serial(bool ta, bool tb, int M, int N, int K, float alpha, const float* A, int lda,
                 const float* B, int ldb, float beta, float* C, int ldc) {
  LRPFAST_SGEMM(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, M, N,
                K, alpha, A, lda, B, ldb, beta, C, ldc);
}

}  // namespace

void set_deterministic(bool on) { g_determinism.set(on ? Determinism::On : Determinism::Off); }

bool deterministic() { return g_determinism.get() == Determinism::On; }

// The slices are a function of the product's shape and of the *settings* (threads, or the fixed
// count in deterministic mode) and of the caller (inside a pooled unit of parallel_units: one
// slice) -- never of whether the pool is free: a call made while another Python thread holds
// the pool runs the same slices one after another, so concurrent calls give the serial results
// bit for bit.
void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
          const float* B, int ldb, float beta, float* C, int ldc, bool threaded) {
  (void)g_blas_single_threaded;
  if (M <= 0 || N <= 0) return;
  const bool split_n = N >= M;  // slice the longer side of C
  const int len = split_n ? N : M, align = split_n ? kAlignN : kAlignM;
  // one call inside a unit that parallel_units spreads over the pool (the units already use
  // the threads), except in deterministic mode, where whether units are spread depends on the
  // batch
  const int want = !threaded                ? 1
                   : deterministic()        ? kFixedSlices
                   : in_pooled_unit()       ? 1
                                            : num_threads();
  const int parts = std::min(want, std::max(1, len / kMinSlice));
  if (parts <= 1 || double(M) * N * K < kParallelGemmWork) {
    gemm_serial(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
  const int per = ((len + parts - 1) / parts + align - 1) / align * align;
  const int slices = (len + per - 1) / per;
  auto slice = [&](std::int64_t s) {
    const int i0 = int(s) * per, i1 = std::min(len, i0 + per);
    const std::int64_t i = i0;
    if (split_n)
      gemm_serial(trans_a, trans_b, M, i1 - i0, K, alpha, A, lda, trans_b ? B + i * ldb : B + i,
                  ldb, beta, C + i, ldc);
    else
      gemm_serial(trans_a, trans_b, i1 - i0, N, K, alpha, trans_a ? A + i : A + i * lda, lda, B,
                  ldb, beta, C + i * ldc, ldc);
  };
  // whole slices per thread (serially when the pool is busy or this is a pool task)
  parallel_for(slices, kParallelGrain, [&](std::int64_t s0, std::int64_t s1) {
    for (std::int64_t s = s0; s < s1; ++s) slice(s);
  });
}

std::string blas_name() { return std::string(LRPFAST_BLAS_NAME) + " core=" + LRPFAST_BLAS_CORE(); }
std::string blas_config() { return LRPFAST_BLAS_CONFIG(); }

}  // namespace lrpfast

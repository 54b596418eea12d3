// The one cuBLAS wrapper: row-major products as in src/cpp/kernels/gemm.hpp. cuBLAS is
// column-major, so C = op(A) op(B) (row-major) is computed as C^T = op(B)^T op(A)^T.
#include <cublas_v2.h>

#include <mutex>
#include <sstream>
#include <stdexcept>

#include "kernels/common.cuh"
#include "kernels/kernels.hpp"

namespace lrpfast {
namespace cuda {
namespace {

void check_cublas(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) {
    std::ostringstream os;
    os << "cuBLAS error in " << what << ": status " << int(s);
    throw std::runtime_error(os.str());
  }
}

cublasHandle_t handle() {
  static std::once_flag once;
  static cublasHandle_t h = nullptr;
  std::call_once(once, [] {
    check_cublas(cublasCreate(&h), "cublasCreate");
    // exact fp32 products (no TF32): results must match the CPU engine to 1e-6 normalised MSE
    check_cublas(cublasSetMathMode(h, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
  });
  return h;
}

}  // namespace

void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
          const float* B, int ldb, float beta, float* C, int ldc) {
  if (M == 0 || N == 0) return;
  check_cublas(cublasSgemm(handle(), trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                           trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha, B, ldb, A, lda,
                           &beta, C, ldc),
               "cublasSgemm");
}

void gemm_batched(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
                  int lda, long long stride_a, const float* B, int ldb, long long stride_b,
                  float beta, float* C, int ldc, long long stride_c, int batch) {
  if (M == 0 || N == 0 || batch == 0) return;
  check_cublas(cublasSgemmStridedBatched(handle(), trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                                         trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha, B,
                                         ldb, stride_b, A, lda, stride_a, &beta, C, ldc, stride_c,
                                         batch),
               "cublasSgemmStridedBatched");
}

std::string blas_name() {
  int v = 0;
  cublasGetProperty(MAJOR_VERSION, &v);
  int mi = 0, pa = 0;
  cublasGetProperty(MINOR_VERSION, &mi);
  cublasGetProperty(PATCH_LEVEL, &pa);
  return "cuBLAS " + std::to_string(v) + "." + std::to_string(mi) + "." + std::to_string(pa);
}

}  // namespace cuda
}  // namespace lrpfast

// The one cuBLAS wrapper: row-major products as in src/cpp/kernels/gemm.hpp. cuBLAS is
// column-major, so C = op(A) op(B) (row-major) is computed as C^T = op(B)^T op(A)^T.
//
// Handles: a pool per device. A call leases a handle of the current device that no other thread
// holds, and gives it back afterwards, so threads never share a handle at the same time (cuBLAS
// requires that) and a thread never uses another device's handle. A lease costs one uncontended
// mutex lock next to a product of microseconds or more; handles are created on first need (one per
// device and concurrently calling thread) and kept for the life of the process.
#include <cublas_v2.h>

#include <map>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <vector>

#include "kernels/common.cuh"
#include "kernels/kernels.hpp"

namespace lrpfast {
namespace cuda {
namespace {

// Exact FP32: the pedantic mode excludes TF32 tensor cores and the BF16x9 emulation, whatever the
// environment (NVIDIA_TF32_OVERRIDE, CUBLAS_EMULATE_SINGLE_PRECISION) asks for.
constexpr cublasMath_t kMathMode = CUBLAS_PEDANTIC_MATH;

// "cuBLAS error in <call>: <CUBLAS_STATUS_NAME> (<description>)"
void check_cublas(cublasStatus_t s, const std::string& what) {
  if (s != CUBLAS_STATUS_SUCCESS) {
    std::ostringstream os;
    os << "cuBLAS error in " << what << ": " << cublasGetStatusName(s) << " ("
       << cublasGetStatusString(s) << ")";
    throw std::runtime_error(os.str());
  }
}

struct Pool {
  std::mutex mu;
  std::map<int, std::vector<cublasHandle_t>> idle;  // device -> handles nobody holds
};
Pool& pool() {
  static Pool* p = new Pool();  // leaked on purpose, as the allocator's cache
  return *p;
}

class Lease {  // a handle of the current device, held by this call alone
 public:
  Lease() : device_(current_device()) {
    {
      std::lock_guard<std::mutex> lock(pool().mu);
      auto& v = pool().idle[device_];
      if (!v.empty()) {
        h_ = v.back();
        v.pop_back();
        return;
      }
    }
    check_cublas(cublasCreate(&h_), "cublasCreate");
    cublasMath_t got = CUBLAS_DEFAULT_MATH;
    cublasStatus_t s = cublasSetMathMode(h_, kMathMode);
    if (s == CUBLAS_STATUS_SUCCESS) s = cublasGetMathMode(h_, &got);
    if (s != CUBLAS_STATUS_SUCCESS || got != kMathMode) {
      cublasDestroy(h_);
      check_cublas(s, "cublasSetMathMode(CUBLAS_PEDANTIC_MATH)");
      throw std::runtime_error("cuBLAS did not keep CUBLAS_PEDANTIC_MATH (exact FP32)");
    }
  }
  ~Lease() {
    std::lock_guard<std::mutex> lock(pool().mu);
    pool().idle[device_].push_back(h_);
  }
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  cublasHandle_t get() const { return h_; }

 private:
  int device_;
  cublasHandle_t h_ = nullptr;
};

std::string dims(const char* call, int m, int n, int k, int batch) {
  std::ostringstream os;
  os << call << " (m=" << m << ", n=" << n << ", k=" << k;
  if (batch >= 0) os << ", batch=" << batch;
  os << ")";
  return os.str();
}

void after_blas(const char* call) {
  if (sync_launches())
    check_cuda(cudaDeviceSynchronize(), (std::string(call) + " (LRPFAST_CUDA_SYNC=1)").c_str());
}

}  // namespace

void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
          const float* B, int ldb, float beta, float* C, int ldc) {
  if (M == 0 || N == 0) return;
  Lease h;
  check_cublas(cublasSgemm(h.get(), trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                           trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha, B, ldb, A, lda,
                           &beta, C, ldc),
               dims("cublasSgemm", N, M, K, -1));
  after_blas("cublasSgemm");
}

void gemm_batched(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
                  int lda, long long stride_a, const float* B, int ldb, long long stride_b,
                  float beta, float* C, int ldc, long long stride_c, int batch) {
  if (M == 0 || N == 0 || batch == 0) return;
  Lease h;
  check_cublas(cublasSgemmStridedBatched(h.get(), trans_b ? CUBLAS_OP_T : CUBLAS_OP_N,
                                         trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha, B,
                                         ldb, stride_b, A, lda, stride_a, &beta, C, ldc, stride_c,
                                         batch),
               dims("cublasSgemmStridedBatched", N, M, K, batch));
  after_blas("cublasSgemmStridedBatched");
}

std::string blas_name() {
  int v[3] = {0, 0, 0};
  const libraryPropertyType t[3] = {MAJOR_VERSION, MINOR_VERSION, PATCH_LEVEL};
  for (int i = 0; i < 3; ++i) check_cublas(cublasGetProperty(t[i], &v[i]), "cublasGetProperty");
  return "cuBLAS " + std::to_string(v[0]) + "." + std::to_string(v[1]) + "." +
         std::to_string(v[2]);
}

int blas_math_mode() {
  Lease h;
  cublasMath_t m = CUBLAS_DEFAULT_MATH;
  check_cublas(cublasGetMathMode(h.get(), &m), "cublasGetMathMode");
  return int(m);
}

}  // namespace cuda
}  // namespace lrpfast

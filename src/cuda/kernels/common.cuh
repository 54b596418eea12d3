// Shared by the .cu files: error checks that throw, grid-stride launch sizes.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <sstream>
#include <stdexcept>

namespace lrpfast {
namespace cuda {

inline void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::ostringstream os;
    os << "CUDA error in " << what << ": " << cudaGetErrorName(e) << " (" << cudaGetErrorString(e)
       << ")";
    throw std::runtime_error(os.str());
  }
}
#define LRPFAST_CUDA_CHECK(call) ::lrpfast::cuda::check_cuda((call), #call)
// After a kernel launch: launch-configuration errors surface here, execution errors at sync.
#define LRPFAST_CUDA_LAUNCHED(name) ::lrpfast::cuda::check_cuda(cudaGetLastError(), name)

constexpr int kThreads = 256;
inline unsigned blocks_for(std::int64_t n) {
  std::int64_t b = (n + kThreads - 1) / kThreads;
  if (b < 1) b = 1;
  if (b > 65535LL * 16) b = 65535LL * 16;  // grid-stride loops cover the rest
  return unsigned(b);
}
#define LRPFAST_GRID_LOOP(i, n)                                                          \
  for (std::int64_t i = std::int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < (n); \
       i += std::int64_t(blockDim.x) * gridDim.x)

}  // namespace cuda
}  // namespace lrpfast

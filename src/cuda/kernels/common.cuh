// Shared by the .cu files: the launch macro, error checks that throw, grid-stride launch sizes.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>
#include <sstream>
#include <stdexcept>

namespace lrpfast {
namespace cuda {

// "CUDA error in <what>: <cudaErrorName> (<description>)"
inline void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) {
    std::ostringstream os;
    os << "CUDA error in " << what << ": " << cudaGetErrorName(e) << " (" << cudaGetErrorString(e)
       << ")";
    if (e == cudaErrorMemoryAllocation) os << "; the GPU is out of memory";
    throw std::runtime_error(os.str());
  }
}
// A call that waits for queued work reports the faults of earlier kernels as its own; the message
// says so and names the switch that makes every launch wait (memory.cu: sync_launches).
void check_sync(cudaError_t e, const char* what);
// After a kernel launch: a launch error names the kernel; with the debug switch on (environment
// variable LRPFAST_CUDA_SYNC=1, or lrpfast._cuda.set_sync_launches) it also waits for the kernel,
// so an execution fault is reported under the kernel that caused it.
void after_launch(const char* kernel);

#define LRPFAST_CUDA_CHECK(call) ::lrpfast::cuda::check_cuda((call), #call)
#define LRPFAST_CUDA_LAUNCHED(name) ::lrpfast::cuda::after_launch(name)

// The one launch form of every kernel, on the legacy default stream: <<<grid, block>>> under
// nvcc; a host build of the sources (src/cuda/host) runs every (block, thread) in turn instead.
#if defined(__CUDACC__)
#define LRPFAST_LAUNCH(kernel, grid, block, ...) kernel<<<(grid), (block)>>>(__VA_ARGS__)
#else
#define LRPFAST_LAUNCH(kernel, grid, block, ...) \
  ::lrpfast_host::launch((grid), (block), [&] { kernel(__VA_ARGS__); })
#endif

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

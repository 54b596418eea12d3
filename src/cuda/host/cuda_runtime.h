// Host stand-in for the CUDA runtime, so that the real .cu kernels and the real bindings compile as
// plain C++ and run on the CPU (the CI build of src/cuda/host/CMakeLists.txt, never shipped):
//  * the CUDA keywords expand to nothing; blockIdx/threadIdx are thread-locals and a launch
//    (LRPFAST_LAUNCH in kernels/common.cuh) runs every (block, thread) of the grid in turn, which
//    is valid because no lrpfast kernel synchronises its threads (no __syncthreads, no __shared__);
//  * cudaMalloc'd blocks are filled with NaN bytes, so an output a kernel forgets to write shows;
//  * several devices (LRPFAST_HOST_DEVICES, default 2): a per-thread current device, every
//    allocation tagged with its device, and copies/memsets that must name memory of the current
//    device (stricter than CUDA, so a missing device switch fails loudly);
//  * streams: the legacy default stream runs work at once; streams made by the test API
//    (host::stream_create) queue their work until an event, a wait or a synchronisation needs it,
//    so stream-ordering bugs (a missing wait) give wrong values here as on a GPU;
//  * errors can be injected into the next launch (host::fail_next_launch) to test reporting.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevice = 101,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorNotReady = 600,
  cudaErrorIllegalAddress = 700,
  cudaErrorLaunchFailure = 719,
};
typedef struct CUstream_st* cudaStream_t;
typedef struct CUevent_st* cudaEvent_t;
#define cudaStreamLegacy ((cudaStream_t)0x1)
#define cudaStreamPerThread ((cudaStream_t)0x2)
#define cudaEventDisableTiming 0x02
enum cudaMemcpyKind {
  cudaMemcpyHostToHost,
  cudaMemcpyHostToDevice,
  cudaMemcpyDeviceToHost,
  cudaMemcpyDeviceToDevice,
  cudaMemcpyDefault
};
enum cudaMemoryType {
  cudaMemoryTypeUnregistered = 0,
  cudaMemoryTypeHost = 1,
  cudaMemoryTypeDevice = 2,
  cudaMemoryTypeManaged = 3
};
struct cudaPointerAttributes {
  cudaMemoryType type;
  int device;
  void* devicePointer;
  void* hostPointer;
};
struct cudaDeviceProp {
  char name[256];
  int major, minor;
  std::size_t totalGlobalMem;
};

namespace lrpfast_host {
extern thread_local dim3 t_block, t_thread;
extern thread_local dim3 t_grid_dim, t_block_dim;
// Runs f once per (block, thread) of a 1-D grid on the calling thread; records a launch error
// (bad configuration, or one injected by the test API) the way cudaGetLastError reports it.
void launch(unsigned grid, unsigned block, const std::function<void()>& f);
}  // namespace lrpfast_host

#define blockIdx (::lrpfast_host::t_block)
#define threadIdx (::lrpfast_host::t_thread)
#define blockDim (::lrpfast_host::t_block_dim)
#define gridDim (::lrpfast_host::t_grid_dim)

inline float __fmul_rn(float a, float b) {
  volatile float r = a * b;  // no contraction into an FMA with a neighbouring add
  return r;
}
inline float __fadd_rn(float a, float b) {
  volatile float r = a + b;
  return r;
}
template <class T>
inline T atomicAdd(T* p, T v) {  // launches are sequential: a plain read-modify-write
  T old = *p;
  *p = old + v;
  return old;
}

const char* cudaGetErrorName(cudaError_t e);
const char* cudaGetErrorString(cudaError_t e);
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
cudaError_t cudaGetDeviceCount(int* n);
cudaError_t cudaGetDevice(int* d);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d);
cudaError_t cudaMalloc(void** p, std::size_t n);
cudaError_t cudaFree(void* p);
cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* a, const void* p);
cudaError_t cudaMemcpy(void* d, const void* s, std::size_t n, cudaMemcpyKind k);
cudaError_t cudaMemcpyAsync(void* d, const void* s, std::size_t n, cudaMemcpyKind k,
                            cudaStream_t st = 0);
cudaError_t cudaMemsetAsync(void* p, int v, std::size_t n, cudaStream_t st = 0);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned flags);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = 0);
cudaError_t cudaEventQuery(cudaEvent_t e);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags = 0);
cudaError_t cudaEventDestroy(cudaEvent_t e);

// Device runtime: device discovery that never throws, a caching allocator keyed by size, copies.
#include <map>
#include <mutex>
#include <string>

#include "kernels/common.cuh"
#include "kernels/kernels.hpp"

namespace lrpfast {
namespace cuda {

int device_count(std::string* why) {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    if (why) *why = std::string(cudaGetErrorName(e)) + ": " + cudaGetErrorString(e);
    cudaGetLastError();  // clear the sticky-free error
    return 0;
  }
  if (n == 0 && why) *why = "the driver reports no CUDA device";
  return n;
}

std::string device_name(int device) {
  cudaDeviceProp prop;
  LRPFAST_CUDA_CHECK(cudaGetDeviceProperties(&prop, device));
  return std::string(prop.name) + " (sm_" + std::to_string(prop.major) +
         std::to_string(prop.minor) + ")";
}

namespace {
struct Cache {
  std::mutex mu;
  std::multimap<std::size_t, void*> free_blocks;  // rounded size -> block
  std::size_t in_use = 0, cached = 0;
};
Cache& cache() {
  static Cache* c = new Cache();  // leaked on purpose: no cudaFree after the driver unloads
  return *c;
}
std::size_t rounded(std::size_t bytes) {
  const std::size_t q = bytes < (std::size_t(1) << 20) ? 512 : (std::size_t(1) << 20);
  return bytes == 0 ? q : (bytes + q - 1) / q * q;
}
}  // namespace

void* alloc(std::size_t bytes) {
  const std::size_t r = rounded(bytes);
  Cache& c = cache();
  {
    std::lock_guard<std::mutex> lock(c.mu);
    auto it = c.free_blocks.find(r);
    if (it != c.free_blocks.end()) {
      void* p = it->second;
      c.free_blocks.erase(it);
      c.cached -= r;
      c.in_use += r;
      return p;
    }
  }
  void* p = nullptr;
  cudaError_t e = cudaMalloc(&p, r);
  if (e == cudaErrorMemoryAllocation) {  // give the cache back and retry once
    cudaGetLastError();
    empty_cache();
    e = cudaMalloc(&p, r);
  }
  check_cuda(e, "cudaMalloc");
  std::lock_guard<std::mutex> lock(c.mu);
  c.in_use += r;
  return p;
}

void release(void* p, std::size_t bytes) {
  if (!p) return;
  const std::size_t r = rounded(bytes);
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  c.free_blocks.emplace(r, p);
  c.in_use -= r;
  c.cached += r;
}

void empty_cache() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  cudaDeviceSynchronize();
  for (auto& kv : c.free_blocks) cudaFree(kv.second);
  c.free_blocks.clear();
  c.cached = 0;
}

void memory_stats(std::size_t* in_use, std::size_t* cached) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  *in_use = c.in_use;
  *cached = c.cached;
}

void copy_to_device(void* dst, const void* src, std::size_t bytes) {
  if (bytes) LRPFAST_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice));
}
void copy_to_host(void* dst, const void* src, std::size_t bytes) {
  if (bytes) LRPFAST_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost));
}
void copy_device(void* dst, const void* src, std::size_t bytes) {
  if (bytes) LRPFAST_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice));
}
void memset0(void* p, std::size_t bytes) {
  if (bytes) LRPFAST_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes));
}
void synchronize() { LRPFAST_CUDA_CHECK(cudaDeviceSynchronize()); }

int current_device() {
  int d = 0;
  LRPFAST_CUDA_CHECK(cudaGetDevice(&d));
  return d;
}

void stream_wait(std::uintptr_t stream) {
  cudaEvent_t ev;
  LRPFAST_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
  cudaError_t e = cudaEventRecord(ev, 0);  // the legacy default stream of our kernels
  if (e == cudaSuccess) e = cudaStreamWaitEvent(reinterpret_cast<cudaStream_t>(stream), ev, 0);
  cudaEventDestroy(ev);  // released once the wait has been satisfied
  check_cuda(e, "stream_wait");
}

}  // namespace cuda
}  // namespace lrpfast

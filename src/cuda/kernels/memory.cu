// Device runtime: device discovery that never throws, device selection, a caching allocator per
// device with stream-ordered reuse, copies, stream hand-over and the debug switch.
#include <atomic>
#include <iterator>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "kernels/common.cuh"
#include "kernels/kernels.hpp"

namespace lrpfast {
namespace cuda {

namespace {
std::atomic<bool>& sync_flag() {
  static std::atomic<bool> on{[] {
    const char* e = std::getenv("LRPFAST_CUDA_SYNC");
    return e && e[0] == '1';
  }()};
  return on;
}
}  // namespace

bool sync_launches() { return sync_flag().load(); }
void set_sync_launches(bool on) { sync_flag().store(on); }

void check_sync(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return;
  std::string w = what;
  if (!sync_launches())
    w += " (the fault may come from an earlier asynchronous kernel: set LRPFAST_CUDA_SYNC=1 to "
         "report it under the kernel that caused it)";
  check_cuda(e, w.c_str());
}

void after_launch(const char* kernel) {
  const std::string k = std::string("kernel ") + kernel;
  check_cuda(cudaGetLastError(), k.c_str());
  if (sync_launches()) check_cuda(cudaDeviceSynchronize(), (k + " (LRPFAST_CUDA_SYNC=1)").c_str());
}

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

int current_device() {
  int d = 0;
  LRPFAST_CUDA_CHECK(cudaGetDevice(&d));
  return d;
}

void set_device(int device) {
  const int n = device_count(nullptr);
  if (device < 0 || device >= n)
    throw std::invalid_argument("CUDA device " + std::to_string(device) + " does not exist (" +
                                std::to_string(n) + " device" + (n == 1 ? "" : "s") + ")");
  LRPFAST_CUDA_CHECK(cudaSetDevice(device));
}

int pointer_device(const void* ptr) {
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, ptr) == cudaSuccess && attr.type == cudaMemoryTypeDevice)
    return attr.device;
  cudaGetLastError();
  return current_device();
}

DeviceGuard::DeviceGuard(int device) : prev_(current_device()) {
  if (device != prev_) set_device(device);
}
DeviceGuard::~DeviceGuard() {
  int now = prev_;
  cudaGetDevice(&now);
  if (now != prev_) cudaSetDevice(prev_);
}

namespace {
struct FreeBlock {
  void* p;
  std::vector<cudaEvent_t> after;  // events recorded on consumer streams (record_use)
};
struct Cache {
  std::mutex mu;
  std::map<int, std::multimap<std::size_t, FreeBlock>> free_blocks;  // device -> size -> block
  std::map<void*, std::vector<cudaEvent_t>> uses;                    // live block -> events
  std::map<int, std::size_t> in_use, cached;
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
  const int dev = current_device();
  Cache& c = cache();
  std::vector<cudaEvent_t> after;
  void* p = nullptr;
  {
    std::lock_guard<std::mutex> lock(c.mu);
    auto& fb = c.free_blocks[dev];
    auto range = fb.equal_range(r);  // the most recently freed block first (warm in L2)
    if (range.first != range.second) {
      auto it = std::prev(range.second);
      p = it->second.p;
      after = std::move(it->second.after);
      fb.erase(it);
      c.cached[dev] -= r;
      c.in_use[dev] += r;
    }
  }
  if (p) {
    // the consumers' streams finish with the block before lrpfast's stream touches it again
    cudaError_t e = cudaSuccess;
    for (cudaEvent_t ev : after) {
      if (e == cudaSuccess) e = cudaStreamWaitEvent(cudaStreamLegacy, ev, 0);
      cudaEventDestroy(ev);
    }
    if (e != cudaSuccess) {
      release(p, bytes);
      check_cuda(e, "cudaStreamWaitEvent (reuse of a block exported through DLPack)");
    }
    return p;
  }
  cudaError_t e = cudaMalloc(&p, r);
  if (e == cudaErrorMemoryAllocation) {  // give the cache back and retry once
    cudaGetLastError();
    empty_cache();
    e = cudaMalloc(&p, r);
  }
  if (e != cudaSuccess) {
    cudaGetLastError();  // out of memory is not sticky: the engine stays usable
    const std::string what = "cudaMalloc of " + std::to_string(r) + " bytes on device " +
                             std::to_string(dev);
    check_cuda(e, what.c_str());
  }
  std::lock_guard<std::mutex> lock(c.mu);
  c.in_use[dev] += r;
  return p;
}

void release(void* p, std::size_t bytes, int device) {
  if (!p) return;
  const std::size_t r = rounded(bytes);
  int dev = device;
  if (dev < 0) cudaGetDevice(&dev);
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  FreeBlock fb{p, {}};
  auto u = c.uses.find(p);
  if (u != c.uses.end()) {
    fb.after = std::move(u->second);
    c.uses.erase(u);
  }
  c.free_blocks[dev].emplace(r, std::move(fb));
  c.in_use[dev] -= r;
  c.cached[dev] += r;
}

void record_use(void* p, std::uintptr_t stream) {
  cudaEvent_t ev;
  LRPFAST_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
  const cudaError_t e = cudaEventRecord(ev, reinterpret_cast<cudaStream_t>(stream));
  if (e != cudaSuccess) {
    cudaEventDestroy(ev);
    check_cuda(e, "cudaEventRecord on the DLPack consumer's stream");
  }
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  c.uses[p].push_back(ev);
}

void empty_cache() {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  for (auto& [dev, blocks] : c.free_blocks) {
    if (blocks.empty()) continue;
    DeviceGuard on(dev);
    cudaDeviceSynchronize();
    for (auto& kv : blocks) {
      for (cudaEvent_t ev : kv.second.after) cudaEventDestroy(ev);
      cudaFree(kv.second.p);
    }
    blocks.clear();
    c.cached[dev] = 0;
  }
}

void memory_stats(int device, std::size_t* in_use, std::size_t* cached) {
  Cache& c = cache();
  std::lock_guard<std::mutex> lock(c.mu);
  *in_use = c.in_use[device];
  *cached = c.cached[device];
}

void copy_to_device(void* dst, const void* src, std::size_t bytes) {
  if (bytes) check_sync(cudaMemcpy(dst, src, bytes, cudaMemcpyHostToDevice), "cudaMemcpy to the device");
}
void copy_to_host(void* dst, const void* src, std::size_t bytes) {
  if (bytes) check_sync(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy to the host");
}
void copy_device(void* dst, const void* src, std::size_t bytes) {
  if (bytes) LRPFAST_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice));
}
void memset0(void* p, std::size_t bytes) {
  if (bytes) LRPFAST_CUDA_CHECK(cudaMemsetAsync(p, 0, bytes));
}
void synchronize() { check_sync(cudaDeviceSynchronize(), "cudaDeviceSynchronize"); }

namespace {
// `to` waits for the work queued so far on `from` (an event, no host synchronisation).
void order(cudaStream_t from, cudaStream_t to, const char* what) {
  cudaEvent_t ev;
  LRPFAST_CUDA_CHECK(cudaEventCreateWithFlags(&ev, cudaEventDisableTiming));
  cudaError_t e = cudaEventRecord(ev, from);
  if (e == cudaSuccess) e = cudaStreamWaitEvent(to, ev, 0);
  cudaEventDestroy(ev);  // released once the wait has been satisfied
  check_cuda(e, what);
}
}  // namespace

void stream_wait(std::uintptr_t stream) {
  order(cudaStreamLegacy, reinterpret_cast<cudaStream_t>(stream),
        "stream hand-over to the DLPack consumer's stream");
}
void wait_for_stream(std::uintptr_t stream) {
  order(reinterpret_cast<cudaStream_t>(stream), cudaStreamLegacy,
        "stream hand-over from the producer's stream (__cuda_array_interface__ 'stream')");
}

}  // namespace cuda
}  // namespace lrpfast

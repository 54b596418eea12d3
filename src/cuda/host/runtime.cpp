// The host stand-in for the CUDA runtime and cuBLAS declared in cuda_runtime.h and cublas_v2.h.
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "cublas_v2.h"
#include "cuda_runtime.h"
#include "host_api.hpp"

namespace lrpfast_host {
thread_local dim3 t_block, t_thread, t_grid_dim, t_block_dim;

namespace {
struct Alloc {
  std::size_t bytes;
  int device;
};
struct Stream {
  bool blocking;  // synchronises implicitly with the legacy default stream, as cudaStreamCreate's
  int device;
  std::deque<std::pair<std::uint64_t, std::function<void()>>> queue;
  std::uint64_t enqueued = 0, done = 0;
};
struct Event {
  Stream* stream = nullptr;  // null: recorded on an immediate stream (complete at once)
  std::uint64_t seq = 0;
};

std::recursive_mutex mu;                 // everything below
std::map<std::uintptr_t, Alloc> allocs;  // start address -> allocation
std::vector<Stream*> streams;            // deferred streams of the test API
std::vector<std::size_t> used(16, 0), limit(16, std::size_t(1) << 40);
Stats stats;
bool force_tf32 = false;
cudaError_t next_launch_error = cudaSuccess;
bool next_launch_async = false;
int next_gemm_status = 0;  // cublasStatus_t of the next product (0: success)
cudaError_t pending_async = cudaSuccess;  // reported by the next synchronising call
thread_local cudaError_t last_error = cudaSuccess;
thread_local int current = 0;

int devices() {
  static const int n = [] {
    const char* e = std::getenv("LRPFAST_HOST_DEVICES");
    const int v = e ? std::atoi(e) : 2;
    return v < 0 ? 0 : (v > 16 ? 16 : v);
  }();
  return n;
}

const Alloc* find(const void* p) {  // the allocation holding p, null for other memory
  const auto a = reinterpret_cast<std::uintptr_t>(p);
  auto it = allocs.upper_bound(a);
  if (it == allocs.begin()) return nullptr;
  --it;
  return a < it->first + it->second.bytes ? &it->second : nullptr;
}

// Device memory must belong to the current device (CUDA would accept peer memory; lrpfast never
// means to use it, so a missing device switch shows here).
cudaError_t check_device(const void* p, const char* what) {
  std::lock_guard<std::recursive_mutex> lock(mu);
  const Alloc* a = find(p);
  if (a && a->device != current) {
    std::fprintf(stderr, "host CUDA: %s touches memory of device %d while device %d is current\n",
                 what, a->device, current);
    return cudaErrorInvalidDevice;
  }
  return cudaSuccess;
}

bool immediate(cudaStream_t s) {
  return s == nullptr || s == cudaStreamLegacy || s == cudaStreamPerThread;
}
Stream* as_stream(cudaStream_t s) { return immediate(s) ? nullptr : reinterpret_cast<Stream*>(s); }

void flush(Stream* s, std::uint64_t upto) {  // runs s's queued work up to sequence number upto
  for (;;) {
    std::function<void()> f;
    {
      std::lock_guard<std::recursive_mutex> lock(mu);
      if (s->queue.empty() || s->queue.front().first > upto) return;
      f = std::move(s->queue.front().second);
      s->done = s->queue.front().first;
      s->queue.pop_front();
    }
    f();
  }
}

void flush_all(bool blocking_only) {
  std::vector<Stream*> ss;
  {
    std::lock_guard<std::recursive_mutex> lock(mu);
    for (Stream* s : streams)
      if (!blocking_only || s->blocking) ss.push_back(s);
  }
  for (Stream* s : ss) flush(s, ~std::uint64_t(0));
}

// Work on the legacy default stream: first everything queued on blocking streams (the implicit
// synchronisation of the legacy stream), then f at once. Work on a test stream is queued.
void submit(cudaStream_t st, std::function<void()> f) {
  if (immediate(st)) {
    flush_all(true);
    f();
    return;
  }
  std::lock_guard<std::recursive_mutex> lock(mu);
  Stream* s = as_stream(st);
  s->queue.emplace_back(++s->enqueued, std::move(f));
}

cudaError_t take_async() {
  std::lock_guard<std::recursive_mutex> lock(mu);
  const cudaError_t e = pending_async;
  pending_async = cudaSuccess;
  return e;
}
}  // namespace

void launch(unsigned grid, unsigned block, const std::function<void()>& f) {
  {
    std::lock_guard<std::recursive_mutex> lock(mu);
    ++stats.launches;
    if (next_launch_error != cudaSuccess) {
      (next_launch_async ? pending_async : last_error) = next_launch_error;
      next_launch_error = cudaSuccess;
      return;
    }
  }
  if (grid == 0 || block == 0 || block > 1024 || grid > 2147483647u) {
    last_error = cudaErrorInvalidConfiguration;
    return;
  }
  submit(nullptr, [&] {
    t_grid_dim.x = grid;
    t_block_dim.x = block;
    for (unsigned b = 0; b < grid; ++b) {
      t_block.x = b;
      for (unsigned t = 0; t < block; ++t) {
        t_thread.x = t;
        f();
      }
    }
  });
}

std::uintptr_t stream_create(bool blocking) {
  std::lock_guard<std::recursive_mutex> lock(mu);
  Stream* s = new Stream{blocking, current, {}, 0, 0};
  streams.push_back(s);
  return reinterpret_cast<std::uintptr_t>(s);
}
std::size_t stream_pending(std::uintptr_t s) {
  std::lock_guard<std::recursive_mutex> lock(mu);
  return reinterpret_cast<Stream*>(s)->queue.size();
}
void enqueue_copy(std::uintptr_t s, void* dst, const void* src, std::size_t bytes) {
  submit(reinterpret_cast<cudaStream_t>(s), [=] { std::memmove(dst, src, bytes); });
}
void enqueue_fill(std::uintptr_t s, float* p, float v, std::size_t n) {
  submit(reinterpret_cast<cudaStream_t>(s), [=] {
    for (std::size_t i = 0; i < n; ++i) p[i] = v;
  });
}
void fail_next_launch(int code, bool asynchronous) {
  std::lock_guard<std::recursive_mutex> lock(mu);
  next_launch_error = cudaError_t(code);
  next_launch_async = asynchronous;
}
void fail_next_gemm(int status) {
  std::lock_guard<std::recursive_mutex> lock(mu);
  next_gemm_status = status;
}
int take_gemm_failure() {
  std::lock_guard<std::recursive_mutex> lock(mu);
  const int s = next_gemm_status;
  next_gemm_status = 0;
  return s;
}
void set_force_tf32(bool on) { force_tf32 = on; }
void set_memory_limit(std::size_t bytes) {
  std::lock_guard<std::recursive_mutex> lock(mu);
  for (auto& l : limit) l = bytes;
}
Stats get_stats() {
  std::lock_guard<std::recursive_mutex> lock(mu);
  return stats;
}
int device_of(const void* p) {
  std::lock_guard<std::recursive_mutex> lock(mu);
  const Alloc* a = find(p);
  return a ? a->device : -1;
}
std::size_t device_bytes(int device) {
  std::lock_guard<std::recursive_mutex> lock(mu);
  return device >= 0 && device < 16 ? used[std::size_t(device)] : 0;
}
void count_gemm() {
  std::lock_guard<std::recursive_mutex> lock(mu);
  ++stats.gemms;
}
bool tf32_forced() { return force_tf32; }
int current_device() { return current; }
}  // namespace lrpfast_host

using namespace lrpfast_host;

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
  }
  return "cudaErrorUnknown";
}
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    default: return "host emulation error";
  }
}
cudaError_t cudaGetLastError() {
  const cudaError_t e = last_error;
  last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return last_error; }
cudaError_t cudaGetDeviceCount(int* n) {
  *n = devices();
  return devices() ? cudaSuccess : cudaErrorNoDevice;
}
cudaError_t cudaGetDevice(int* d) {
  *d = current;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) {
  if (d < 0 || d >= devices()) return cudaErrorInvalidDevice;
  current = d;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d) {
  if (d < 0 || d >= devices()) return cudaErrorInvalidDevice;
  std::snprintf(p->name, sizeof p->name, "lrpfast host emulation, device %d", d);
  p->major = 9;
  p->minor = 0;
  p->totalGlobalMem = limit[std::size_t(d)];
  return cudaSuccess;
}
cudaError_t cudaMalloc(void** p, std::size_t n) {
  std::lock_guard<std::recursive_mutex> lock(mu);
  *p = nullptr;
  if (used[std::size_t(current)] + n > limit[std::size_t(current)]) return cudaErrorMemoryAllocation;
  void* q = std::malloc(n ? n : 1);
  if (!q) return cudaErrorMemoryAllocation;
  std::memset(q, 0xFF, n);  // cudaMalloc does not clear memory: NaN bytes show unwritten outputs
  allocs[reinterpret_cast<std::uintptr_t>(q)] = Alloc{n ? n : 1, current};
  used[std::size_t(current)] += n ? n : 1;
  ++stats.mallocs;
  *p = q;
  return cudaSuccess;
}
cudaError_t cudaFree(void* p) {
  if (!p) return cudaSuccess;
  std::lock_guard<std::recursive_mutex> lock(mu);
  auto it = allocs.find(reinterpret_cast<std::uintptr_t>(p));
  if (it == allocs.end()) return cudaErrorInvalidValue;
  used[std::size_t(it->second.device)] -= it->second.bytes;
  allocs.erase(it);
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaPointerGetAttributes(cudaPointerAttributes* a, const void* p) {
  std::lock_guard<std::recursive_mutex> lock(mu);
  const Alloc* al = find(p);
  a->type = al ? cudaMemoryTypeDevice : cudaMemoryTypeUnregistered;
  a->device = al ? al->device : -2;
  a->devicePointer = al ? const_cast<void*>(p) : nullptr;
  a->hostPointer = al ? nullptr : const_cast<void*>(p);
  return cudaSuccess;
}
cudaError_t cudaMemcpyAsync(void* d, const void* s, std::size_t n, cudaMemcpyKind, cudaStream_t st) {
  cudaError_t e = check_device(d, "cudaMemcpy (destination)");
  if (e == cudaSuccess) e = check_device(s, "cudaMemcpy (source)");
  if (e != cudaSuccess) return e;
  submit(st, [=] { std::memmove(d, s, n); });
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* d, const void* s, std::size_t n, cudaMemcpyKind k) {
  const cudaError_t e = cudaMemcpyAsync(d, s, n, k, nullptr);
  return e != cudaSuccess ? e : take_async();  // synchronous: reports earlier asynchronous errors
}
cudaError_t cudaMemsetAsync(void* p, int v, std::size_t n, cudaStream_t st) {
  const cudaError_t e = check_device(p, "cudaMemset");
  if (e != cudaSuccess) return e;
  submit(st, [=] { std::memset(p, v, n); });
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() {
  flush_all(false);
  return take_async();
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  if (immediate(s))
    flush_all(true);
  else
    flush(as_stream(s), ~std::uint64_t(0));
  return take_async();
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) {
  *e = reinterpret_cast<cudaEvent_t>(new Event());
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  std::lock_guard<std::recursive_mutex> lock(mu);
  auto* ev = reinterpret_cast<Event*>(e);
  ev->stream = as_stream(s);
  ev->seq = ev->stream ? ev->stream->enqueued : 0;
  return cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t e) {
  std::lock_guard<std::recursive_mutex> lock(mu);
  auto* ev = reinterpret_cast<Event*>(e);
  return !ev->stream || ev->stream->done >= ev->seq ? cudaSuccess : cudaErrorNotReady;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  auto* ev = reinterpret_cast<Event*>(e);
  if (ev->stream) flush(ev->stream, ev->seq);
  return take_async();
}
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned) {
  auto* ev = reinterpret_cast<Event*>(e);
  Stream* src = ev->stream;
  const std::uint64_t seq = ev->seq;  // captured now: the event may be re-recorded or destroyed
  if (!src) return cudaSuccess;
  if (immediate(s))
    flush(src, seq);
  else
    submit(s, [=] { flush(src, seq); });
  return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  delete reinterpret_cast<Event*>(e);
  return cudaSuccess;
}

// ---- cuBLAS ---------------------------------------------------------------------------------
struct cublasContext {
  int device;
  cublasMath_t mode;
};

const char* cublasGetStatusName(cublasStatus_t s) {
  switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
  }
  return "CUBLAS_STATUS_UNKNOWN";
}
const char* cublasGetStatusString(cublasStatus_t s) {
  return s == CUBLAS_STATUS_INVALID_VALUE ? "an invalid numeric value was used as an argument"
                                          : "host emulation status";
}
cublasStatus_t cublasCreate(cublasHandle_t* h) {
  *h = new cublasContext{current, CUBLAS_DEFAULT_MATH};
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasDestroy(cublasHandle_t h) {
  delete h;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasSetMathMode(cublasHandle_t h, cublasMath_t m) {
  h->mode = m;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasGetMathMode(cublasHandle_t h, cublasMath_t* m) {
  *m = h->mode;
  return CUBLAS_STATUS_SUCCESS;
}
cublasStatus_t cublasGetProperty(libraryPropertyType t, int* v) {
  *v = t == MAJOR_VERSION ? 13 : 0;
  return CUBLAS_STATUS_SUCCESS;
}

namespace {
float tf32(float v) {  // round to nearest on 10 mantissa bits, as a TF32 tensor core reads
  std::uint32_t u;
  std::memcpy(&u, &v, 4);
  if ((u & 0x7f800000u) != 0x7f800000u) u = (u + 0x1000u) & 0xffffe000u;
  std::memcpy(&v, &u, 4);
  return v;
}

// C (m x n) = alpha op(A) op(B) + beta C, column-major, float64 accumulation.
cublasStatus_t gemm1(const cublasContext* h, cublasOperation_t ta, cublasOperation_t tb, int m,
                     int n, int k, float alpha, const float* A, int lda, const float* B, int ldb,
                     float beta, float* C, int ldc) {
  const int arows = ta == CUBLAS_OP_N ? m : k, brows = tb == CUBLAS_OP_N ? k : n;
  auto at_least = [](int ld, int rows) { return ld >= (rows > 1 ? rows : 1); };
  if (m < 0 || n < 0 || k < 0 || !at_least(lda, arows) || !at_least(ldb, brows) ||
      !at_least(ldc, m)) {
    std::fprintf(stderr, "host cuBLAS: invalid value m=%d n=%d k=%d lda=%d ldb=%d ldc=%d\n", m, n,
                 k, lda, ldb, ldc);
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  const bool round = force_tf32 || (h->mode & 0xF) == CUBLAS_TF32_TENSOR_OP_MATH;
  for (int j = 0; j < n; ++j)
    for (int i = 0; i < m; ++i) {
      double acc = 0;
      for (int p = 0; p < k; ++p) {
        float a = ta == CUBLAS_OP_N ? A[i + (long long)p * lda] : A[p + (long long)i * lda];
        float b = tb == CUBLAS_OP_N ? B[p + (long long)j * ldb] : B[j + (long long)p * ldb];
        if (round) a = tf32(a), b = tf32(b);
        acc += double(a) * double(b);
      }
      float& c = C[i + (long long)j * ldc];
      c = beta == 0.f ? float(alpha * acc) : float(alpha * acc + beta * double(c));
    }
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t check_handle(const cublasContext* h) {
  if (!h) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (h->device != current) {
    std::fprintf(stderr, "host cuBLAS: a handle of device %d used while device %d is current\n",
                 h->device, current);
    return CUBLAS_STATUS_EXECUTION_FAILED;
  }
  count_gemm();
  return cublasStatus_t(take_gemm_failure());
}
}  // namespace

cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m,
                           int n, int k, const float* alpha, const float* A, int lda,
                           const float* B, int ldb, const float* beta, float* C, int ldc) {
  cublasStatus_t s = check_handle(h);
  if (s == CUBLAS_STATUS_SUCCESS)
    submit(nullptr, [&] { s = gemm1(h, ta, tb, m, n, k, *alpha, A, lda, B, ldb, *beta, C, ldc); });
  return s;
}
cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t h, cublasOperation_t ta,
                                         cublasOperation_t tb, int m, int n, int k,
                                         const float* alpha, const float* A, int lda,
                                         long long sa, const float* B, int ldb, long long sb,
                                         const float* beta, float* C, int ldc, long long sc,
                                         int batch) {
  cublasStatus_t s = check_handle(h);
  if (s != CUBLAS_STATUS_SUCCESS) return s;
  if (batch < 0) return CUBLAS_STATUS_INVALID_VALUE;
  submit(nullptr, [&] {
    for (int b = 0; b < batch && s == CUBLAS_STATUS_SUCCESS; ++b)
      s = gemm1(h, ta, tb, m, n, k, *alpha, A + b * sa, lda, B + b * sb, ldb, *beta, C + b * sc,
                ldc);
  });
  return s;
}

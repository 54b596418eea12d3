// The test controls of the host CUDA stand-in (runtime.cpp), exposed to Python as
// lrpfast._cuda_host.host by api.cpp (host build only).
#pragma once
#include <cstddef>
#include <cstdint>

namespace lrpfast_host {
struct Stats {
  long long launches = 0, gemms = 0, mallocs = 0;
};
// A stream whose work waits until an event, a wait or a synchronisation needs it (blocking: it
// also synchronises implicitly with the legacy default stream, as cudaStreamCreate's streams do).
std::uintptr_t stream_create(bool blocking);
std::size_t stream_pending(std::uintptr_t s);        // queued operations not yet run
void enqueue_copy(std::uintptr_t s, void* dst, const void* src, std::size_t bytes);
void enqueue_fill(std::uintptr_t s, float* p, float v, std::size_t n);
// The next kernel launch fails with `code`: at once (cudaGetLastError) or, asynchronous, at the
// next synchronising call, as an execution fault does on a GPU.
void fail_next_launch(int code, bool asynchronous);
void fail_next_gemm(int status);  // the next cuBLAS product returns this cublasStatus_t
int take_gemm_failure();
void set_force_tf32(bool on);         // every product rounds its inputs to TF32
void set_memory_limit(std::size_t bytes);  // per device; cudaMalloc beyond it: out of memory
Stats get_stats();
int device_of(const void* p);         // -1: not device memory
std::size_t device_bytes(int device);  // cudaMalloc'd bytes alive on the device
void count_gemm();
bool tf32_forced();
int current_device();
}  // namespace lrpfast_host

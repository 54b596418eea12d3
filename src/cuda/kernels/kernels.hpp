// The CUDA twins of the CPU kernels (src/cpp/kernels/*.hpp): same stems, same signatures, in
// namespace lrpfast::cuda instead of lrpfast::cpu. Every pointer is a DEVICE pointer; geometry
// structs (ConvGeom, PoolGeom, LinearGeom, LrnParams) are the validated host structs of the CPU
// headers, and all index arithmetic goes through the LRPFAST_HD helpers of geometry.hpp.
// Errors (CUDA or cuBLAS failures) throw std::runtime_error naming the kernel or cuBLAS call and
// the status; calls are asynchronous on the legacy default stream except where noted. This
// header is plain C++ (the bindings are compiled by g++).
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "kernels/conv.hpp"
#include "kernels/elementwise.hpp"
#include "kernels/linear.hpp"
#include "kernels/lrn.hpp"
#include "kernels/pool.hpp"

namespace lrpfast {
namespace cuda {

// ---- runtime (memory.cu) ----------------------------------------------------------------------
// Every call works on the CURRENT device of the calling thread (CUDA's per-thread setting); the
// bindings select the device of the arrays with DeviceGuard first.
// Number of usable devices; 0 with `why` set when there is no driver or GPU (never throws).
int device_count(std::string* why);
std::string device_name(int device);
int current_device();
void set_device(int device);  // throws naming the device when it does not exist
// The device holding ptr, or the current device for memory CUDA does not know as device memory.
int pointer_device(const void* ptr);
class DeviceGuard {           // makes `device` current for a scope, then restores the previous one
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_;
};
// Caching allocator per device, keyed by size: freed blocks are kept for reuse by the next request
// of the same (rounded) size on the same device, so a net that runs the same shapes again
// allocates nothing. Thread-safe. alloc acts on the current device, release on `device` (-1: the
// current one; it never switches devices, so it is safe in destructors on any thread).
void* alloc(std::size_t bytes);
void release(void* p, std::size_t bytes, int device = -1);
// Stream-ordered reuse: `stream` (a cudaStream_t as an integer, e.g. a DLPack consumer's) may
// still read or write block p (allocated on the current device) through work queued on it so
// far. An event is recorded on it now; when p is next handed out, lrpfast's stream first waits
// for that event, so the block is never reused under the consumer.
void record_use(void* p, std::uintptr_t stream);
void empty_cache();                                           // cudaFree every cached block
void memory_stats(int device, std::size_t* in_use, std::size_t* cached);  // bytes
// Copies and memset on the legacy default stream (copy_to_host waits for it).
void copy_to_device(void* dst, const void* src, std::size_t bytes);
void copy_to_host(void* dst, const void* src, std::size_t bytes);
void copy_device(void* dst, const void* src, std::size_t bytes);
void memset0(void* p, std::size_t bytes);
void synchronize();  // waits and throws on an asynchronous kernel error
// Makes `stream` wait for all work queued so far on the legacy default stream, where every
// lrpfast kernel runs (DLPack export to a consumer's stream; no host synchronisation).
void stream_wait(std::uintptr_t stream);
// The reverse: the legacy default stream waits for the work queued so far on `stream` (a
// producer's, e.g. the `stream` of __cuda_array_interface__).
void wait_for_stream(std::uintptr_t stream);
// The debug switch: every kernel launch and cuBLAS call waits for its work and reports its fault
// under its own name. Initially on when the environment variable LRPFAST_CUDA_SYNC is 1.
bool sync_launches();
void set_sync_launches(bool on);

// Device scratch from the caching allocator for the scope of a call (n elements of T).
template <class T>
struct Scratch {
  T* p;
  std::size_t bytes;
  explicit Scratch(std::size_t n) : bytes(n * sizeof(T)) { p = static_cast<T*>(alloc(bytes)); }
  ~Scratch() { release(p, bytes); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
};

// ---- gemm (gemm.cu): the one cuBLAS wrapper, same row-major contract as lrpfast::gemm ---------
void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
          const float* B, int ldb, float beta, float* C, int ldc);
// `batch` products with A/B/C advanced by the given strides (stride 0: shared operand).
void gemm_batched(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
                  int lda, long long stride_a, const float* B, int ldb, long long stride_b,
                  float beta, float* C, int ldc, long long stride_c, int batch);
std::string blas_name();
// cuBLAS's math mode on lrpfast's handles: CUBLAS_PEDANTIC_MATH (exact FP32: no TF32 tensor cores,
// no BF16x9 emulation, whatever NVIDIA_TF32_OVERRIDE or CUBLAS_EMULATE_SINGLE_PRECISION say).
int blas_math_mode();

// ---- im2col / col2im (im2col.cu) --------------------------------------------------------------
void im2col(const ConvGeom& g, const float* x, int oh0, int oh1, float* col, std::int64_t ldcol);
// Accumulates into dx like the CPU twin.
void col2im(const ConvGeom& g, const float* col, std::int64_t ldcol, int oh0, int oh1, float* dx);
// Batched helpers used by conv.cu: nb images, col (nb, K, Ho*Wo); col2im_batched overwrites dx.
void im2col_batched(const ConvGeom& g, int nb, const float* x, float* col);
void col2im_batched(const ConvGeom& g, int nb, const float* col, float* dx);

// ---- conv (conv.cu), linear (linear.cu) -------------------------------------------------------
void conv_forward(const ConvGeom& g, const float* x, const float* w, const float* b, float* y);
// Twin of cpu::conv_forward_pair: g the stacked convolution, each group's rows [W_g; V_g] in w;
// y, y2 (N, O/2, Ho, Wo). One im2col per chunk, two products per group.
void conv_forward_pair(const ConvGeom& g, const float* x, const float* w, const float* b, float* y,
                       float* y2);
void conv_backward_data(const ConvGeom& g, const float* dy, const float* w, float* dx);
void linear_forward(const LinearGeom& g, const float* x, const float* w, const float* b, float* y);
void linear_backward_data(const LinearGeom& g, const float* dy, const float* w, float* dx);

// ---- pool (pool.cu), lrn (lrn.cu) -------------------------------------------------------------
void pool_max_forward(const PoolGeom& g, const float* x, float* y, std::int32_t* argmax);
void pool_ave_forward(const PoolGeom& g, const float* x, float* y);
// argmax values outside [0, H*W) contribute nothing (no check: checking would need a host copy).
void pool_max_backward(const PoolGeom& g, const float* dy, const std::int32_t* argmax, float* dx);
void pool_ave_backward(const PoolGeom& g, const float* dy, float* dx);
void lrn_forward(const LrnParams& p, int N, int C, int H, int W, const float* x, float* y,
                 float* scale);

// ---- element-wise rule arithmetic (elementwise.cu) --------------------------------------------
// Twin of cpu::relu_forward: x > 0 ? x : slope * x (slope 0: +0 where x <= 0, NaN kept).
void relu_forward(std::int64_t n, const float* x, float slope, float* y);
void stabilized_divide(std::int64_t n, const float* r, const float* z, float eps, bool zero_to_zero,
                       float* out);
// Twins of cpu::eltwise_forward and cpu::channel_affine (kernels/elementwise.hpp): same arguments,
// the same float32 operations in the same order without FMA contraction (__fmul_rn/__fadd_rn), so
// the results are bit-identical to the CPU's. xs and coeffs are HOST arrays (of K device pointers
// and K values); the inputs are consumed up to 8 per launch.
void eltwise_forward(EltwiseOp op, int K, const float* const* xs, const float* coeffs,
                     std::int64_t n, float* y, std::int32_t* argmax);
void channel_affine(std::int64_t N, std::int64_t C, std::int64_t P, const float* x,
                    const float* scale, const float* bias, float* y);

enum class BinaryOp : int { Add, Sub, Mul, Div, Max, Min, Greater, Less, GreaterEq, LessEq, Equal,
                            First };
constexpr int kMaxDims = 8;
// out[i] = op(a[ia], b[ib]) over an output of `ndim` <= kMaxDims dims with broadcast strides (in
// elements, 0 on broadcast axes) for a and b; comparisons give 1.0f / 0.0f. First copies a.
void binary(BinaryOp op, int ndim, const std::int64_t* shape, const float* a,
            const std::int64_t* sa, const float* b, const std::int64_t* sb, float* out);
// out[i] = op(a[i], s) (scalar_left: op(s, a[i])), contiguous.
void binary_scalar(BinaryOp op, std::int64_t n, const float* a, float s, bool scalar_left,
                   float* out);
enum class UnaryOp : int { Neg, Abs, Square, PosPart, NegPart, Sqrt, Exp, Log };
void unary(UnaryOp op, std::int64_t n, const float* a, float* out);
// Reductions (synchronous): number of non-zero elements; sum in double, deterministic (the same
// bits on every run: a fixed-order tree, no floating-point atomics).
std::int64_t count_nonzero(std::int64_t n, const float* a);
double sum(std::int64_t n, const float* a);

}  // namespace cuda
}  // namespace lrpfast

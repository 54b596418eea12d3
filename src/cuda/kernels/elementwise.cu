// CUDA twin of src/cpp/kernels/elementwise.cpp (stabilized_divide, relu_forward, eltwise_forward,
// channel_affine: the same float32 operations in the same order, never contracted to FMA) plus the element-wise arithmetic the rules do in
// numpy (lrpfast.cuda.DeviceArray maps numpy ufuncs onto these): broadcasting binary operations,
// positive/negative parts, squares, and two reductions.
#include "kernels/common.cuh"
#include "kernels/kernels.hpp"

namespace lrpfast {
namespace cuda {
namespace {

__global__ void stab_div(long long n, const float* __restrict__ r, const float* __restrict__ z,
                         float eps, bool zero_to_zero, float* out) {
  LRPFAST_GRID_LOOP(i, n) {
    const float d = z[i] >= 0.f ? z[i] + eps : z[i] - eps;  // sign(0) = +1, as the CPU twin
    out[i] = (zero_to_zero && d == 0.f) ? 0.f : r[i] / d;
  }
}

__global__ void relu_kernel(long long n, const float* __restrict__ x, float slope,
                            float* __restrict__ y) {
  LRPFAST_GRID_LOOP(i, n) {
    const float v = x[i];
    if (slope == 0.f)
      y[i] = (v > 0.f || v != v) ? v : 0.f;  // +0 for v <= 0, NaN kept (as np.maximum(x, 0))
    else
      y[i] = v > 0.f ? v : __fmul_rn(slope, v);
  }
}

constexpr int kEltwiseChunk = 8;  // inputs per launch, passed by value
struct EltwiseChunk {
  const float* x[kEltwiseChunk];
  float c[kEltwiseChunk];
  int count;  // inputs in this chunk
  int base;   // index of its first input among all K
};

// One chunk of inputs folded into y (and argmax): the first chunk starts from input 0, later
// ones continue from the partial result in y, so the order of operations is the CPU's.
__global__ void eltwise_kernel(EltwiseOp op, long long n, EltwiseChunk ch, float* __restrict__ y,
                               std::int32_t* __restrict__ argmax) {
  LRPFAST_GRID_LOOP(i, n) {
    int k = 0, idx = 0;
    float acc;
    if (ch.base == 0) {
      acc = op == EltwiseOp::Sum ? __fadd_rn(0.f, __fmul_rn(ch.c[0], ch.x[0][i])) : ch.x[0][i];
      k = 1;
    } else {
      acc = y[i];
      if (argmax) idx = argmax[i];
    }
    for (; k < ch.count; ++k) {
      const float v = ch.x[k][i];
      if (op == EltwiseOp::Sum) {
        acc = __fadd_rn(acc, __fmul_rn(ch.c[k], v));
      } else if (op == EltwiseOp::Prod) {
        acc = __fmul_rn(acc, v);
      } else if (v > acc || (v != v && acc == acc)) {  // first maximum wins; NaN propagates
        acc = v;
        idx = ch.base + k;
      }
    }
    y[i] = acc;
    if (argmax) argmax[i] = idx;
  }
}

__global__ void affine_kernel(long long n, long long C, long long P, const float* __restrict__ x,
                              const float* __restrict__ scale, const float* __restrict__ bias,
                              float* y) {
  LRPFAST_GRID_LOOP(i, n) {
    const long long c = (i / P) % C;
    const float p = __fmul_rn(x[i], scale[c]);
    y[i] = bias ? __fadd_rn(p, bias[c]) : p;
  }
}

__device__ __forceinline__ float apply(BinaryOp op, float a, float b) {
  switch (op) {
    case BinaryOp::Add: return a + b;
    case BinaryOp::Sub: return a - b;
    case BinaryOp::Mul: return a * b;
    case BinaryOp::Div: return a / b;
    case BinaryOp::Max: return (a != a || b != b) ? a + b : (a > b ? a : b);  // NaN propagates
    case BinaryOp::Min: return (a != a || b != b) ? a + b : (a < b ? a : b);
    case BinaryOp::Greater: return a > b ? 1.f : 0.f;
    case BinaryOp::Less: return a < b ? 1.f : 0.f;
    case BinaryOp::GreaterEq: return a >= b ? 1.f : 0.f;
    case BinaryOp::LessEq: return a <= b ? 1.f : 0.f;
    case BinaryOp::Equal: return a == b ? 1.f : 0.f;
    case BinaryOp::First: return a;
  }
  return 0.f;
}

struct Strides {
  int ndim;
  long long shape[kMaxDims], sa[kMaxDims], sb[kMaxDims];
};

// out may be a or b (the fused `times` product of conv_backward_data writes in place), so none of
// the three pointers is __restrict__.
__global__ void binary_kernel(BinaryOp op, long long n, Strides s, const float* a, const float* b,
                              float* out) {
  LRPFAST_GRID_LOOP(i, n) {
    long long rem = i, ia = 0, ib = 0;
    for (int d = s.ndim - 1; d >= 0; --d) {
      const long long k = rem % s.shape[d];
      rem /= s.shape[d];
      ia += k * s.sa[d];
      ib += k * s.sb[d];
    }
    out[i] = apply(op, a[ia], b ? b[ib] : 0.f);
  }
}

__global__ void scalar_kernel(BinaryOp op, long long n, const float* __restrict__ a, float s,
                              bool left, float* out) {
  LRPFAST_GRID_LOOP(i, n) { out[i] = left ? apply(op, s, a[i]) : apply(op, a[i], s); }
}

__global__ void unary_kernel(UnaryOp op, long long n, const float* __restrict__ a, float* out) {
  LRPFAST_GRID_LOOP(i, n) {
    const float v = a[i];
    float r = v;
    switch (op) {
      case UnaryOp::Neg: r = -v; break;
      case UnaryOp::Abs: r = fabsf(v); break;
      case UnaryOp::Square: r = v * v; break;
      case UnaryOp::PosPart: r = v > 0.f ? v : 0.f; break;
      case UnaryOp::NegPart: r = v < 0.f ? v : 0.f; break;
      case UnaryOp::Sqrt: r = sqrtf(v); break;
      case UnaryOp::Exp: r = expf(v); break;
      case UnaryOp::Log: r = logf(v); break;
    }
    out[i] = r;
  }
}

__global__ void count_kernel(long long n, const float* __restrict__ a,
                             unsigned long long* count) {
  unsigned long long local = 0;
  LRPFAST_GRID_LOOP(i, n) { local += a[i] != 0.f; }
  if (local) atomicAdd(count, local);
}

// Deterministic sum in double: thread t of the T = blocks * kThreads threads adds its grid-stride
// elements in a fixed order into partial[t]; fold_kernel then adds fixed runs of partials in
// order. The grid depends on n only, so the result is the same on every run and GPU (no atomics,
// whose order varies).
__global__ void partial_sum_kernel(long long n, const float* __restrict__ a,
                                   double* __restrict__ partial) {
  double local = 0.0;
  LRPFAST_GRID_LOOP(i, n) { local += a[i]; }
  partial[(long long)blockIdx.x * blockDim.x + threadIdx.x] = local;
}

// out[j] = in[j*run] + ... + in[j*run + run-1], left to right, for j < groups.
__global__ void fold_kernel(long long groups, int run, const double* __restrict__ in,
                            double* __restrict__ out) {
  LRPFAST_GRID_LOOP(j, groups) {
    double s = 0.0;
    for (int k = 0; k < run; ++k) s += in[j * run + k];
    out[j] = s;
  }
}

}  // namespace

void stabilized_divide(std::int64_t n, const float* r, const float* z, float eps, bool zero_to_zero,
                       float* out) {
  if (n <= 0) return;
  LRPFAST_LAUNCH(stab_div, blocks_for(n), kThreads, n, r, z, eps, zero_to_zero, out);
  LRPFAST_CUDA_LAUNCHED("stabilized_divide");
}

void eltwise_forward(EltwiseOp op, int K, const float* const* xs, const float* coeffs,
                     std::int64_t n, float* y, std::int32_t* argmax) {
  if (n <= 0 || K <= 0) return;
  if (op != EltwiseOp::Max) argmax = nullptr;
  for (int base = 0; base < K; base += kEltwiseChunk) {
    EltwiseChunk ch{};
    ch.base = base;
    ch.count = K - base < kEltwiseChunk ? K - base : kEltwiseChunk;
    for (int k = 0; k < ch.count; ++k) {
      ch.x[k] = xs[base + k];
      ch.c[k] = coeffs ? coeffs[base + k] : 1.f;
    }
    LRPFAST_LAUNCH(eltwise_kernel, blocks_for(n), kThreads, op, n, ch, y, argmax);
    LRPFAST_CUDA_LAUNCHED("eltwise_forward");
  }
}

void relu_forward(std::int64_t n, const float* x, float slope, float* y) {
  if (n <= 0) return;
  LRPFAST_LAUNCH(relu_kernel, blocks_for(n), kThreads, n, x, slope, y);
  LRPFAST_CUDA_LAUNCHED("relu_forward");
}

void channel_affine(std::int64_t N, std::int64_t C, std::int64_t P, const float* x,
                    const float* scale, const float* bias, float* y) {
  const std::int64_t n = N * C * P;
  if (n <= 0) return;
  LRPFAST_LAUNCH(affine_kernel, blocks_for(n), kThreads, n, C, P, x, scale, bias, y);
  LRPFAST_CUDA_LAUNCHED("channel_affine");
}

void binary(BinaryOp op, int ndim, const std::int64_t* shape, const float* a,
            const std::int64_t* sa, const float* b, const std::int64_t* sb, float* out) {
  if (ndim > kMaxDims) throw std::invalid_argument("binary: too many dimensions (max 8)");
  Strides s{};
  s.ndim = ndim;
  long long n = 1;
  for (int d = 0; d < ndim; ++d) {
    s.shape[d] = shape[d];
    s.sa[d] = sa[d];
    s.sb[d] = sb ? sb[d] : 0;
    n *= shape[d];
  }
  if (n <= 0) return;
  LRPFAST_LAUNCH(binary_kernel, blocks_for(n), kThreads, op, n, s, a, b, out);
  LRPFAST_CUDA_LAUNCHED("binary");
}

void binary_scalar(BinaryOp op, std::int64_t n, const float* a, float s, bool scalar_left,
                   float* out) {
  if (n <= 0) return;
  LRPFAST_LAUNCH(scalar_kernel, blocks_for(n), kThreads, op, n, a, s, scalar_left, out);
  LRPFAST_CUDA_LAUNCHED("binary_scalar");
}

void unary(UnaryOp op, std::int64_t n, const float* a, float* out) {
  if (n <= 0) return;
  LRPFAST_LAUNCH(unary_kernel, blocks_for(n), kThreads, op, n, a, out);
  LRPFAST_CUDA_LAUNCHED("unary");
}

std::int64_t count_nonzero(std::int64_t n, const float* a) {
  if (n <= 0) return 0;
  Scratch<unsigned long long> c(1);  // integer atomics: exact in any order
  memset0(c.p, sizeof(unsigned long long));
  LRPFAST_LAUNCH(count_kernel, blocks_for(n), kThreads, n, a, c.p);
  LRPFAST_CUDA_LAUNCHED("count_nonzero");
  unsigned long long h = 0;
  copy_to_host(&h, c.p, sizeof h);
  return std::int64_t(h);
}

double sum(std::int64_t n, const float* a) {
  if (n <= 0) return 0.0;
  const unsigned b = blocks_for(n) > 1024 ? 1024 : blocks_for(n);
  const long long T = (long long)b * kThreads;
  Scratch<double> part(std::size_t(T) + b + 1);  // T partials, b block sums, the total
  LRPFAST_LAUNCH(partial_sum_kernel, b, kThreads, n, a, part.p);
  LRPFAST_CUDA_LAUNCHED("sum (partial_sum_kernel)");
  LRPFAST_LAUNCH(fold_kernel, blocks_for(b), kThreads, (long long)b, kThreads, part.p, part.p + T);
  LRPFAST_CUDA_LAUNCHED("sum (fold_kernel)");
  LRPFAST_LAUNCH(fold_kernel, 1, kThreads, 1LL, int(b), part.p + T, part.p + T + b);
  LRPFAST_CUDA_LAUNCHED("sum (fold_kernel)");
  double h = 0.0;
  copy_to_host(&h, part.p + T + b, sizeof h);
  return h;
}

}  // namespace cuda
}  // namespace lrpfast

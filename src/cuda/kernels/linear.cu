// CUDA twin of src/cpp/kernels/linear.cpp: one cuBLAS product each way.
#include "kernels/common.cuh"
#include "kernels/kernels.hpp"

namespace lrpfast {
namespace cuda {

void add_bias(long long n, int O, long long P, const float* b, float* y);  // conv.cu

void linear_forward(const LinearGeom& g, const float* x, const float* w, const float* b, float* y) {
  if (g.N == 0) return;
  // y (N,O) = x (N,K) w(O,K)^T
  gemm(false, true, g.N, g.O, g.K, 1.f, x, g.K, w, g.K, 0.f, y, g.O);
  add_bias((long long)g.N * g.O, g.O, 1, b, y);
}

void linear_backward_data(const LinearGeom& g, const float* dy, const float* w, float* dx) {
  if (g.N == 0) return;
  // dx (N,K) = dy (N,O) w (O,K)
  gemm(false, false, g.N, g.K, g.O, 1.f, dy, g.O, w, g.K, 0.f, dx, g.K);
}

}  // namespace cuda
}  // namespace lrpfast

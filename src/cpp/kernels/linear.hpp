// Fully connected (Caffe InnerProduct) layer, float32, row-major.
//   forward:       y (N,O) = x (N,K) w(O,K)^T + b (O)
//   backward_data: dx (N,K) = dy (N,O) w (O,K)
#pragma once
#include <cstdint>

namespace lrpfast {

struct LinearGeom {
  int N, K, O;
};

// Checks x (N,K) against w (O, w_k): w_k == K, sizes fit BLAS ints; throws std::invalid_argument.
LinearGeom make_linear_geom(std::int64_t N, std::int64_t K, std::int64_t O, std::int64_t w_k);

namespace cpu {
void linear_forward(const LinearGeom& g, const float* x, const float* w, const float* b, float* y);
void linear_backward_data(const LinearGeom& g, const float* dy, const float* w, float* dx);
}  // namespace cpu
}  // namespace lrpfast

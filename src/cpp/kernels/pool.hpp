// 2-D pooling with Caffe's semantics, float32, NCHW, C-contiguous.
//   MAX: y = max over the window clipped to the image; argmax = h*W + w (flat index inside the
//        input plane) of the FIRST maximum in row-major order.
//   AVE: y = (sum over the window clipped to the image) / pool_size, where pool_size counts the
//        window clipped to the padded image [-pad, in + pad) (Caffe's rule: padding cells count,
//        cells past the padding do not).
// Output size: Caffe's ceil rule (geometry.hpp: pool_out_size). Global pooling = kernel (H,W),
// stride 1, pad 0.
#pragma once
#include <cstdint>

#include "kernels/geometry.hpp"

namespace lrpfast {

enum class PoolMethod { Max, Ave };

struct PoolGeom {
  int N, C, H, W;
  int kh, kw, sh, sw, ph, pw;
  int Ho, Wo;
  LRPFAST_HD std::int64_t in_plane() const { return std::int64_t(H) * W; }
  LRPFAST_HD std::int64_t out_plane() const { return std::int64_t(Ho) * Wo; }
  LRPFAST_HD std::int64_t planes() const { return std::int64_t(N) * C; }
};

// Checked output size of one axis: kernel, stride >= 1, 0 <= pad < kernel (as Caffe), output >= 1,
// and no window may lie entirely outside the input (possible only with stride > kernel and no pad
// in ceil mode, where Caffe computes garbage).
int pool_out_size_checked(std::int64_t in, std::int64_t kernel, std::int64_t stride,
                          std::int64_t pad, bool ceil_mode);

PoolGeom make_pool_geom(std::int64_t N, std::int64_t C, std::int64_t H, std::int64_t W,
                        std::int64_t kh, std::int64_t kw, std::int64_t sh, std::int64_t sw,
                        std::int64_t ph, std::int64_t pw, bool ceil_mode);

// Parses "max" / "ave" (also "avg", "average", any case); throws naming the known methods.
PoolMethod parse_pool_method(const char* name);

namespace cpu {
// x (N,C,H,W) -> y (N,C,Ho,Wo), argmax (N,C,Ho,Wo) int32
void pool_max_forward(const PoolGeom& g, const float* x, float* y, std::int32_t* argmax);
void pool_ave_forward(const PoolGeom& g, const float* x, float* y);
// dx (N,C,H,W) is overwritten: dx[n,c,argmax] += dy. Every argmax must lie in [0, H*W) (checked:
// throws std::invalid_argument before writing anything).
void pool_max_backward(const PoolGeom& g, const float* dy, const std::int32_t* argmax, float* dx);
// dx (N,C,H,W) is overwritten with the adjoint of pool_ave_forward applied to dy.
void pool_ave_backward(const PoolGeom& g, const float* dy, float* dx);
}  // namespace cpu
}  // namespace lrpfast

// 2-D convolution (Caffe semantics: pad, stride, dilation, group), float32, NCHW, C-contiguous.
//   forward:       y[n, o] = b[o] + sum_{c in group(o), ki, kj} w[o, c', ki, kj] * x[n, c, ih, iw]
//   backward_data: dx = the adjoint (transposed convolution) of the forward's linear part.
// Each image is im2col + one gemm per group, computed in blocks of output rows so the column
// buffer stays cache-sized; images with small output planes are batched into one gemm; with at
// least two such units per thread they run concurrently, each single-threaded. 1x1 / stride 1 /
// pad 0 kernels skip im2col; 3x3 stride-1 kernels take the Winograd path (winograd.hpp).
// conv_forward_pair computes two convolutions of one input from shared im2col blocks. The CUDA
// twin (src/cuda/kernels/conv.cu) shares ConvGeom.
#pragma once
#include <atomic>
#include <cstdint>

#include "kernels/geometry.hpp"

namespace lrpfast {

// Validated shape of one convolution (see make_conv_geom). Plain data, usable on the device.
struct ConvGeom {
  int N, C, H, W;  // input (N may be 0)
  int O;           // output channels
  int kh, kw, sh, sw, ph, pw, dh, dw;
  int group;
  int Ho, Wo;  // output plane

  LRPFAST_HD int cin_per_group() const { return C / group; }
  LRPFAST_HD int cout_per_group() const { return O / group; }
  LRPFAST_HD std::int64_t in_plane() const { return std::int64_t(H) * W; }
  LRPFAST_HD std::int64_t out_plane() const { return std::int64_t(Ho) * Wo; }
  // rows of the im2col matrix of one group (= a weight row's length) and of all groups
  LRPFAST_HD std::int64_t k_per_group() const { return std::int64_t(C / group) * kh * kw; }
  LRPFAST_HD std::int64_t k_total() const { return std::int64_t(C) * kh * kw; }
  LRPFAST_HD bool pointwise() const {
    return kh == 1 && kw == 1 && sh == 1 && sw == 1 && ph == 0 && pw == 0;
  }
};

// Checks every parameter and throws std::invalid_argument naming the offending one:
// x (N,C,H,W), w (O, w_cin, kh, kw) with w_cin == C/group, C and O divisible by group,
// kernel/stride/dilation >= 1, pad >= 0, and the dilated kernel fits the padded input.
ConvGeom make_conv_geom(std::int64_t N, std::int64_t C, std::int64_t H, std::int64_t W,
                        std::int64_t O, std::int64_t w_cin, std::int64_t kh, std::int64_t kw,
                        std::int64_t sh, std::int64_t sw, std::int64_t ph, std::int64_t pw,
                        std::int64_t dh, std::int64_t dw, std::int64_t group);

// conv_forward_pair's stacked weights: throws unless every group's outputs split in two halves.
void require_conv_pair(const ConvGeom& g);

// Checked output size of one axis (throws when < 1 or a parameter is out of range).
int conv_out_size_checked(std::int64_t in, std::int64_t kernel, std::int64_t stride,
                          std::int64_t pad, std::int64_t dilation);

namespace cpu {

// Whether conv_forward / conv_backward_data take the pointwise path: a 1x1 kernel without
// padding, one product per image straight on its planes (a strided kernel's subsampled); small
// planes of several images are batched the im2col way instead (default mode; see conv.cpp).
bool pointwise_per_image(const ConvGeom& g);

// Where conv_forward's output channels go: channel c of image n to y (N, O, P); or, for a
// stacked pair (y2 given), the first half of every group's Og channels to y and the second half
// to y2, both (N, O/2, P). Within one half of a group consecutive channels are P apart.
struct OutPlanes {
  float* y;
  float* y2;
  int O, Og;
  std::int64_t P;
  float* plane(std::int64_t n, int c) const {
    if (!y2) return y + (n * O + c) * P;
    const int h = Og / 2, gr = c / Og, j = c % Og;
    return (j < h ? y : y2) + (n * (O / 2) + gr * h + j % h) * P;
  }
};

// x (N,C,H,W), w (O,C/group,kh,kw), b (O) or nullptr -> y (N,O,Ho,Wo) (overwritten).
// wino_u: w's transformed kernels (winograd_kernels, adjoint false) for the Winograd path, or
// nullptr (transformed when that path is taken); ignored on the other paths.
void conv_forward(const ConvGeom& g, const float* x, const float* w, const float* b, float* y,
                  const float* wino_u = nullptr);

// Two convolutions of the same x in one pass over its im2col columns (one gemm per block with
// both weight sets): g describes the stacked convolution, w (O, C/group, kh, kw) holds every
// group's Og = O/group rows as [first Og/2 rows: W_gr; last Og/2: V_gr], b (O) likewise or
// nullptr. y (N, O/2, Ho, Wo) = conv(x, W) + b_W, y2 = conv(x, V) + b_V, each bit-identical to
// conv_forward with the stacked weights followed by the split; in deterministic mode (off the
// Winograd path) to conv_forward(x, W, b_W) / conv_forward(x, V, b_V) instead (each weight set's
// own gemm calls on the shared im2col blocks). Where one set's convolution takes the Winograd
// path, so does the pair (winograd_forward_pair, wino_u: the stacked w's kernels), equal to the
// two calls to float32 rounding. Og must be even. Used for LRP's z and z+ (W, W+) of the
// alpha-beta rule (Bach et al. 2015).
void conv_forward_pair(const ConvGeom& g, const float* x, const float* w, const float* b, float* y,
                       float* y2, const float* wino_u = nullptr);

// Element-wise steps of an LRP rule fused into conv_backward_data, so the signal and the
// product never make a round trip through memory (both optional, each as its own kernel would
// compute it, so the result is bit-identical to the unfused sequence):
//   z (N,O,Ho,Wo): the signal is stabilized_quotient(dy, z, eps) instead of dy;
//   times (N,C,H,W): the result is multiplied by it element-wise.
struct BackwardFusion {
  const float* z = nullptr;
  float eps = 0.f;
  const float* times = nullptr;
  // with times: set (never cleared) when some element of the result is not finite, tested in
  // the pass that multiplies by times, while the block is in cache (optional)
  std::atomic<bool>* nonfinite = nullptr;
  // with times: (N,C,H,W) added to the result in that pass, as (0 + add) + times * sum -- the
  // float32 value eltwise_forward's sum of add and the unfused result gives (the relevance of a
  // blob that several layers read, accumulated without another pass over it)
  const float* add = nullptr;
};

// dy (N,O,Ho,Wo), w (O,C/group,kh,kw) -> dx (N,C,H,W) (overwritten) = conv_forward's adjoint.
// wino_u: as for conv_forward, the kernels transformed for the adjoint (adjoint true).
void conv_backward_data(const ConvGeom& g, const float* dy, const float* w, float* dx,
                        const BackwardFusion& f = {}, const float* wino_u = nullptr);

}  // namespace cpu
}  // namespace lrpfast

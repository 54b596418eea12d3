// CUDA twin of src/cpp/kernels/conv.cpp: im2col of a chunk of images, then per group one strided
// batched cuBLAS product over the images of the chunk (the weights are the shared operand);
// backward_data is the transposed product followed by col2im. Pointwise (1x1, stride 1, pad 0)
// convolutions skip im2col: the input itself is the column matrix.
#include <algorithm>

#include "kernels/common.cuh"
#include "kernels/kernels.hpp"

namespace lrpfast {
namespace cuda {
namespace {

constexpr long long kColBudget = 256LL << 20;  // bytes of column buffer per chunk

// y (N, O, P) += each channel's bias. The weights of a product may be one part h of `parts` sets
// stacked per group (conv_forward_pair: parts 2, `run` channels of each group per part): channel
// c then takes row h*run + c % run of its group's stacked bias; parts 1 with run O is b[c].
__global__ void add_bias_kernel(long long n, int O, long long P, int run, int parts, int h,
                                const float* __restrict__ b, float* __restrict__ y) {
  LRPFAST_GRID_LOOP(i, n) {
    const int c = int((i / P) % O);
    y[i] += b[(c / run) * parts * run + h * run + c % run];
  }
}

void launch_bias(long long n, int O, long long P, int run, int parts, int h, const float* b,
                 float* y) {
  if (n <= 0 || !b) return;
  LRPFAST_LAUNCH(add_bias_kernel, blocks_for(n), kThreads, n, O, P, run, parts, h, b, y);
  LRPFAST_CUDA_LAUNCHED("add_bias");
}

int images_per_chunk(const ConvGeom& g) {
  const long long per = g.k_total() * g.out_plane() * (long long)sizeof(float);
  long long nb = per > 0 ? kColBudget / per : g.N;
  return int(std::max(1LL, std::min<long long>(nb, g.N)));
}

}  // namespace

void add_bias(long long n, int O, long long P, const float* b, float* y) {
  launch_bias(n, O, P, O, 1, 0, b, y);
}

namespace {

// conv_forward, or with y2 conv_forward_pair (each group's product in two halves, one per output)
void forward_into(const ConvGeom& g, const float* x, const float* w, const float* b, float* y,
                  float* y2) {
  if (g.N == 0) return;
  const long long P = g.out_plane(), Kg = g.k_per_group(), x_img = (long long)g.C * g.in_plane();
  const int Og = g.cout_per_group(), Cg = g.cin_per_group();
  const int parts = y2 ? 2 : 1, Op = Og / parts;  // rows per product, per group
  const long long y_img = (long long)(g.O / parts) * P;
  const bool pw = g.pointwise();
  const int nb = pw ? g.N : images_per_chunk(g);
  Scratch<float> col(pw ? 0 : std::size_t(nb) * g.k_total() * P);
  for (int n0 = 0; n0 < g.N; n0 += nb) {
    const int cnt = std::min(nb, g.N - n0);
    const float* src = x + n0 * x_img;
    long long src_img = x_img;
    if (!pw) {
      im2col_batched(g, cnt, src, col.p);
      src = col.p;
      src_img = g.k_total() * P;
    }
    for (int gi = 0; gi < g.group; ++gi) {
      // y_g (Op x P) = W_g (Op x Kg) * col_g (Kg x P); in the pointwise case col_g = x_g
      const long long b_off = pw ? group_in_offset(gi, Cg, g.in_plane()) : gi * Kg * P;
      for (int h = 0; h < parts; ++h) {
        const long long a_off = group_weight_offset(gi, Og, Kg) + h * Op * Kg;
        float* out = (h ? y2 : y) + n0 * y_img + group_out_offset(gi, Op, P);
        gemm_batched(false, false, Op, int(P), int(Kg), 1.f, w + a_off, int(Kg), 0, src + b_off,
                     int(P), src_img, 0.f, out, int(P), y_img, cnt);
      }
    }
  }
  for (int h = 0; h < parts; ++h)
    launch_bias((long long)g.N * y_img, g.O / parts, P, Op, parts, h, b, h ? y2 : y);
}

}  // namespace

void conv_forward(const ConvGeom& g, const float* x, const float* w, const float* b, float* y) {
  forward_into(g, x, w, b, y, nullptr);
}

void conv_forward_pair(const ConvGeom& g, const float* x, const float* w, const float* b, float* y,
                       float* y2) {
  forward_into(g, x, w, b, y, y2);
}

void conv_backward_data(const ConvGeom& g, const float* dy, const float* w, float* dx) {
  if (g.N == 0) return;
  const long long P = g.out_plane(), Kg = g.k_per_group(), x_img = (long long)g.C * g.in_plane();
  const long long y_img = (long long)g.O * P;
  const int Og = g.cout_per_group(), Cg = g.cin_per_group();
  const bool pw = g.pointwise();
  const int nb = pw ? g.N : images_per_chunk(g);
  Scratch<float> col(pw ? 0 : std::size_t(nb) * g.k_total() * P);
  for (int n0 = 0; n0 < g.N; n0 += nb) {
    const int cnt = std::min(nb, g.N - n0);
    float* dst = pw ? dx + n0 * x_img : col.p;
    const long long dst_img = pw ? x_img : g.k_total() * P;
    for (int gi = 0; gi < g.group; ++gi) {
      // col_g (Kg x P) = W_g^T (Kg x Og) * dy_g (Og x P)
      const long long c_off = pw ? group_in_offset(gi, Cg, g.in_plane()) : gi * Kg * P;
      gemm_batched(true, false, int(Kg), int(P), Og, 1.f, w + group_weight_offset(gi, Og, Kg),
                   int(Kg), 0, dy + n0 * y_img + group_out_offset(gi, Og, P), int(P), y_img, 0.f,
                   dst + c_off, int(P), dst_img, cnt);
    }
    if (!pw) col2im_batched(g, cnt, col.p, dx + n0 * x_img);
  }
}

}  // namespace cuda
}  // namespace lrpfast

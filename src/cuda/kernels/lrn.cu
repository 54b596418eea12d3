// CUDA twin of src/cpp/kernels/lrn.cpp: one thread per element sums x^2 over its window (channels
// for ACROSS_CHANNELS, an n x n spatial box for WITHIN_CHANNEL), then y = x * scale^-beta.
#include "kernels/common.cuh"
#include "kernels/kernels.hpp"

namespace lrpfast {
namespace cuda {
namespace {

__global__ void lrn_kernel(LrnParams p, int N, int C, int H, int W, const float* __restrict__ x,
                           float* __restrict__ y, float* __restrict__ scale) {
  const long long HW = (long long)H * W, n = (long long)N * C * HW;
  const int pre = lrn_pre_pad(p.local_size), post = p.local_size - 1 - pre;
  LRPFAST_GRID_LOOP(i, n) {
    float s;
    if (p.region == LrnRegion::Across) {
      const int c = int((i / HW) % C);
      const long long base = i - (long long)c * HW;  // channel 0 of this pixel
      const int c0 = c - pre < 0 ? 0 : c - pre, c1 = c + post > C - 1 ? C - 1 : c + post;
      float acc = 0.f;
      for (int cc = c0; cc <= c1; ++cc) {
        const float v = x[base + (long long)cc * HW];
        acc += v * v;
      }
      s = p.k + p.alpha / float(p.local_size) * acc;
    } else {
      const int h = int((i % HW) / W), w = int(i % W);
      const float* xp = x + (i - i % HW);
      const int h0 = h - pre < 0 ? 0 : h - pre, h1 = h + post > H - 1 ? H - 1 : h + post;
      const int w0 = w - pre < 0 ? 0 : w - pre, w1 = w + post > W - 1 ? W - 1 : w + post;
      float acc = 0.f;
      for (int hh = h0; hh <= h1; ++hh)
        for (int ww = w0; ww <= w1; ++ww) {
          const float v = xp[(long long)hh * W + ww];
          acc += v * v;
        }
      s = 1.f + p.alpha / (float(p.local_size) * float(p.local_size)) * acc;
    }
    scale[i] = s;
    y[i] = x[i] * powf(s, -p.beta);
  }
}

}  // namespace

void lrn_forward(const LrnParams& p, int N, int C, int H, int W, const float* x, float* y,
                 float* scale) {
  const long long n = (long long)N * C * H * W;
  if (n <= 0) return;
  LRPFAST_LAUNCH(lrn_kernel, blocks_for(n), kThreads, p, N, C, H, W, x, y, scale);
  LRPFAST_CUDA_LAUNCHED("lrn_forward");
}

}  // namespace cuda
}  // namespace lrpfast

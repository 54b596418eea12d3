// CUDA twin of src/cpp/kernels/pool.cpp. Forward: one thread per output; backward: one thread per
// input gathering the outputs whose window covers it (pool_out_range), so no atomics and the same
// sums on every run. Windows, sizes and argmax indices: geometry.hpp.
#include "kernels/common.cuh"
#include "kernels/kernels.hpp"

namespace lrpfast {
namespace cuda {
namespace {

// One thread per output: the max with its first row-major argmax (strict '>', as the CPU), or the
// window sum over Caffe's pool size.
template <bool kMax>
__global__ void pool_fwd(PoolGeom g, const float* __restrict__ x, float* __restrict__ y,
                         std::int32_t* __restrict__ argmax) {
  const long long op = g.out_plane(), n = g.planes() * op;
  LRPFAST_GRID_LOOP(i, n) {
    const long long pl = i / op;
    const int oh = int((i % op) / g.Wo), ow = int(i % g.Wo);
    const float* xp = x + pl * g.in_plane();
    const PoolWindow wh = pool_window(oh, g.H, g.kh, g.sh, g.ph);
    const PoolWindow ww = pool_window(ow, g.W, g.kw, g.sw, g.pw);
    if (kMax) {
      int best = plane_index(wh.start, ww.start, g.W);
      float m = xp[best];
      for (int h = wh.start; h < wh.end; ++h)
        for (int w = ww.start; w < ww.end; ++w) {
          const int k = plane_index(h, w, g.W);
          if (xp[k] > m) {
            m = xp[k];
            best = k;
          }
        }
      y[i] = m;
      argmax[i] = best;
    } else {
      float s = 0.f;
      for (int h = wh.start; h < wh.end; ++h)
        for (int w = ww.start; w < ww.end; ++w) s += xp[plane_index(h, w, g.W)];
      y[i] = s / float(wh.size * ww.size);
    }
  }
}

template <bool kMax>
__global__ void pool_bwd(PoolGeom g, const float* __restrict__ dy,
                         const std::int32_t* __restrict__ argmax, float* __restrict__ dx) {
  const long long ip = g.in_plane(), op = g.out_plane(), n = g.planes() * ip;
  LRPFAST_GRID_LOOP(i, n) {
    const long long pl = i / ip;
    const int h = int((i % ip) / g.W), w = int(i % g.W);
    const int me = plane_index(h, w, g.W);
    int oh0, oh1, ow0, ow1;
    pool_out_range(h, g.kh, g.sh, g.ph, g.Ho, &oh0, &oh1);
    pool_out_range(w, g.kw, g.sw, g.pw, g.Wo, &ow0, &ow1);
    const float* dyp = dy + pl * op;
    float acc = 0.f;
    for (int oh = oh0; oh < oh1; ++oh)
      for (int ow = ow0; ow < ow1; ++ow) {
        const int j = oh * g.Wo + ow;
        if (kMax) {
          if (argmax[pl * op + j] == me) acc += dyp[j];
        } else {
          const PoolWindow wh = pool_window(oh, g.H, g.kh, g.sh, g.ph);
          const PoolWindow ww = pool_window(ow, g.W, g.kw, g.sw, g.pw);
          acc += dyp[j] / float(wh.size * ww.size);
        }
      }
    dx[i] = acc;
  }
}

}  // namespace

void pool_max_forward(const PoolGeom& g, const float* x, float* y, std::int32_t* argmax) {
  const long long n = g.planes() * g.out_plane();
  if (n <= 0) return;
  LRPFAST_LAUNCH(pool_fwd<true>, blocks_for(n), kThreads, g, x, y, argmax);
  LRPFAST_CUDA_LAUNCHED("pool_max_forward");
}

void pool_ave_forward(const PoolGeom& g, const float* x, float* y) {
  const long long n = g.planes() * g.out_plane();
  if (n <= 0) return;
  LRPFAST_LAUNCH(pool_fwd<false>, blocks_for(n), kThreads, g, x, y, nullptr);
  LRPFAST_CUDA_LAUNCHED("pool_ave_forward");
}

void pool_max_backward(const PoolGeom& g, const float* dy, const std::int32_t* argmax, float* dx) {
  const long long n = g.planes() * g.in_plane();
  if (n <= 0) return;
  LRPFAST_LAUNCH(pool_bwd<true>, blocks_for(n), kThreads, g, dy, argmax, dx);
  LRPFAST_CUDA_LAUNCHED("pool_max_backward");
}

void pool_ave_backward(const PoolGeom& g, const float* dy, float* dx) {
  const long long n = g.planes() * g.in_plane();
  if (n <= 0) return;
  LRPFAST_LAUNCH(pool_bwd<false>, blocks_for(n), kThreads, g, dy, nullptr, dx);
  LRPFAST_CUDA_LAUNCHED("pool_ave_backward");
}

}  // namespace cuda
}  // namespace lrpfast

#include "kernels/pool.hpp"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cstring>
#include <string>

#include "kernels/check.hpp"
#include "kernels/parallel.hpp"

namespace lrpfast {

int pool_out_size_checked(std::int64_t in, std::int64_t kernel, std::int64_t stride,
                          std::int64_t pad, bool ceil_mode) {
  require(in >= 1, "pooling: input size must be >= 1, got ", in);
  require(kernel >= 1, "pooling: kernel size must be >= 1, got ", kernel);
  require(stride >= 1, "pooling: stride must be >= 1, got ", stride);
  require(pad >= 0, "pooling: pad must be >= 0, got ", pad);
  require(pad < kernel, "pooling: pad ", pad, " must be smaller than the kernel ", kernel,
          " (as in Caffe)");
  require(in + 2 * pad >= kernel, "pooling: kernel ", kernel, " is larger than the padded input ",
          in + 2 * pad, " (input ", in, ", pad ", pad, ")");
  checked_int(in + 2 * pad + stride, "pooling: padded input size + stride");
  const int out = pool_out_size(int(in), int(kernel), int(stride), int(pad), ceil_mode);
  require(std::int64_t(out - 1) * stride - pad < in, "pooling: the last window (output ", out - 1,
          ", stride ", stride, ") starts past the input of size ", in,
          "; stride > kernel without padding is not supported in ceil mode");
  return out;
}

PoolGeom make_pool_geom(std::int64_t N, std::int64_t C, std::int64_t H, std::int64_t W,
                        std::int64_t kh, std::int64_t kw, std::int64_t sh, std::int64_t sw,
                        std::int64_t ph, std::int64_t pw, bool ceil_mode) {
  require(N >= 0, "pooling: batch size must be >= 0, got ", N);
  require(C >= 1, "pooling: channels must be >= 1, got ", C);
  PoolGeom g{};
  g.Ho = pool_out_size_checked(H, kh, sh, ph, ceil_mode);
  g.Wo = pool_out_size_checked(W, kw, sw, pw, ceil_mode);
  g.N = checked_int(N, "pooling: batch size");
  g.C = checked_int(C, "pooling: channels");
  g.H = int(H), g.W = int(W), g.kh = int(kh), g.kw = int(kw), g.sh = int(sh), g.sw = int(sw);
  g.ph = int(ph), g.pw = int(pw);
  checked_int(g.in_plane(), "pooling: input plane H*W");  // argmax is int32
  checked_int(g.out_plane(), "pooling: output plane Ho*Wo");
  return g;
}

PoolMethod parse_pool_method(const char* name) {
  std::string s(name ? name : "");
  for (auto& ch : s) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  if (s == "max") return PoolMethod::Max;
  if (s == "ave" || s == "avg" || s == "average") return PoolMethod::Ave;
  fail("pooling: unknown method '", name ? name : "", "' (known: 'max', 'ave')");
}

namespace cpu {

namespace {

// The max and its first row-major argmax over one clipped window (not -FLT_MAX as Caffe's start,
// the window's first cell, so argmax is always valid; strict '>' keeps the first maximum).
inline void window_max(const float* xp, int W, PoolWindow wh, PoolWindow ww, float* y,
                       std::int32_t* arg) {
  int best = wh.start * W + ww.start;
  float m = xp[best];
  for (int h = wh.start; h < wh.end; ++h) {
    const float* row = xp + std::int64_t(h) * W;
    for (int w = ww.start; w < ww.end; ++w) {  // selects, not branches: data decide
      const float v = row[w];
      const bool gt = v > m;
      m = gt ? v : m;
      best = gt ? h * W + w : best;
    }
  }
  *y = m;
  *arg = best;
}

// Four outputs at a time (GCC/Clang vector extensions: SIMD where the target has it).
typedef float f4 __attribute__((vector_size(16)));
typedef std::int32_t i4 __attribute__((vector_size(16)));

template <int kStride>
inline f4 load4(const float* p, int s) {
  if constexpr (kStride == 1) {
    f4 v;
    std::memcpy(&v, p, sizeof v);
    return v;
  } else if constexpr (kStride == 2) {
#if defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)
    f4 a, b;  // p[0..3] and p[3..6]: never reads past p[6], the last element used
    std::memcpy(&a, p, sizeof a);
    std::memcpy(&b, p + 3, sizeof b);
    return __builtin_shufflevector(a, b, 0, 2, 5, 7);
#else
    return f4{p[0], p[2], p[4], p[6]};
#endif
  } else {
    return f4{p[0], p[s], p[2 * s], p[3 * s]};
  }
}

// Outputs [o0, o0 + 4) of one output row whose windows are whole (unclipped) along the width:
// window_max's taps in window_max's order, four outputs side by side (the same results).
template <int kStride>
inline void quad_max(const float* xp, const PoolGeom& g, PoolWindow wh, int o0, float* yr,
                     std::int32_t* ar) {
  const int sw = kStride > 0 ? kStride : g.sw;
  const i4 lane = i4{0, 1, 2, 3} * sw;
  const int first = wh.start * g.W - g.pw + o0 * sw;
  f4 m = load4<kStride>(xp + first, sw);
  i4 a = first + lane;
  for (int h = wh.start; h < wh.end; ++h) {
    for (int kj = (h == wh.start); kj < g.kw; ++kj) {
      const int base = h * g.W - g.pw + kj + o0 * sw;
      const f4 v = load4<kStride>(xp + base, sw);
      const i4 gt = v > m;
      m = gt ? v : m;
      a = gt ? base + lane : a;
    }
  }
  std::memcpy(yr + o0, &m, sizeof m);
  std::memcpy(ar + o0, &a, sizeof a);
}

// One output row: the interior columns [lo, hi) four at a time (the last quad moved back to end
// at hi: a few outputs computed twice, with the same values), the rest one by one.
template <int kStride>
void row_max(const float* xp, const PoolGeom& g, int oh, int lo, int hi, float* yr,
             std::int32_t* ar) {
  const PoolWindow wh = pool_window(oh, g.H, g.kh, g.sh, g.ph);
  auto edge = [&](int ow) {
    window_max(xp, g.W, wh, pool_window(ow, g.W, g.kw, g.sw, g.pw), yr + ow, ar + ow);
  };
  for (int ow = 0; ow < lo; ++ow) edge(ow);
  for (int o0 = lo; o0 < hi; o0 += 4) quad_max<kStride>(xp, g, wh, std::min(o0, hi - 4), yr, ar);
  for (int ow = hi; ow < g.Wo; ++ow) edge(ow);
}

}  // namespace

void pool_max_forward(const PoolGeom& g, const float* x, float* y, std::int32_t* argmax) {
  const std::int64_t ip = g.in_plane(), op = g.out_plane();
  // interior columns: whole windows, ow*sw - pw >= 0 and ow*sw - pw + kw <= W (at least 4 of
  // them, else all columns take window_max)
  int lo = std::min(g.Wo, (g.pw + g.sw - 1) / g.sw);
  int hi = std::min(g.Wo, g.W + g.pw - g.kw < 0 ? 0 : (g.W + g.pw - g.kw) / g.sw + 1);
  if (hi - lo < 4) lo = hi = g.Wo;
  parallel_for(g.planes(), g.planes() * ip, [&](std::int64_t pl0, std::int64_t pl1) {
    for (std::int64_t pl = pl0; pl < pl1; ++pl) {
      const float* xp = x + pl * ip;
      for (int oh = 0; oh < g.Ho; ++oh) {
        float* yr = y + pl * op + std::int64_t(oh) * g.Wo;
        std::int32_t* ar = argmax + pl * op + std::int64_t(oh) * g.Wo;
        if (g.sw == 1)
          row_max<1>(xp, g, oh, lo, hi, yr, ar);
        else if (g.sw == 2)
          row_max<2>(xp, g, oh, lo, hi, yr, ar);
        else
          row_max<0>(xp, g, oh, lo, hi, yr, ar);
      }
    }
  });
}

void pool_ave_forward(const PoolGeom& g, const float* x, float* y) {
  const std::int64_t ip = g.in_plane(), op = g.out_plane();
  parallel_for(g.planes(), g.planes() * ip, [&](std::int64_t pl0, std::int64_t pl1) {
    for (std::int64_t pl = pl0; pl < pl1; ++pl) {
      const float* xp = x + pl * ip;
      float* yp = y + pl * op;
      for (int oh = 0; oh < g.Ho; ++oh) {
        const PoolWindow wh = pool_window(oh, g.H, g.kh, g.sh, g.ph);
        for (int ow = 0; ow < g.Wo; ++ow) {
          const PoolWindow ww = pool_window(ow, g.W, g.kw, g.sw, g.pw);
          float s = 0.f;
          for (int h = wh.start; h < wh.end; ++h) {
            const float* row = xp + std::int64_t(h) * g.W;
            for (int w = ww.start; w < ww.end; ++w) s += row[w];
          }
          yp[oh * g.Wo + ow] = s / float(wh.size * ww.size);
        }
      }
    }
  });
}

void pool_max_backward(const PoolGeom& g, const float* dy, const std::int32_t* argmax, float* dx) {
  const std::int64_t ip = g.in_plane(), op = g.out_plane(), ny = g.planes() * op;
  std::atomic<bool> bad{false};  // an argmax outside its plane: that plane is not scattered
  parallel_for(g.planes(), g.planes() * ip, [&](std::int64_t pl0, std::int64_t pl1) {
    for (std::int64_t pl = pl0; pl < pl1; ++pl) {
      float* dxp = dx + pl * ip;
      const float* dyp = dy + pl * op;
      const std::int32_t* ap = argmax + pl * op;
      for (std::int64_t i = 0; i < ip; ++i) dxp[i] = 0.f;
      bool ok = true;
      for (std::int64_t j = 0; j < op; ++j) ok &= ap[j] >= 0 && ap[j] < ip;
      if (!ok) {
        bad.store(true);
        continue;
      }
      for (std::int64_t j = 0; j < op; ++j) dxp[ap[j]] += dyp[j];
    }
  });
  if (bad.load())
    for (std::int64_t i = 0; i < ny; ++i)
      if (argmax[i] < 0 || argmax[i] >= ip)
        fail("pool_backward: argmax[", i, "] = ", argmax[i], " is outside the input plane [0, ",
             ip, ")");
}

void pool_ave_backward(const PoolGeom& g, const float* dy, float* dx) {
  const std::int64_t ip = g.in_plane(), op = g.out_plane();
  parallel_for(g.planes(), g.planes() * ip, [&](std::int64_t pl0, std::int64_t pl1) {
    for (std::int64_t pl = pl0; pl < pl1; ++pl) {
      float* dxp = dx + pl * ip;
      const float* dyp = dy + pl * op;
      for (std::int64_t i = 0; i < ip; ++i) dxp[i] = 0.f;
      for (int oh = 0; oh < g.Ho; ++oh) {
        const PoolWindow wh = pool_window(oh, g.H, g.kh, g.sh, g.ph);
        for (int ow = 0; ow < g.Wo; ++ow) {
          const PoolWindow ww = pool_window(ow, g.W, g.kw, g.sw, g.pw);
          const float v = dyp[oh * g.Wo + ow] / float(wh.size * ww.size);
          for (int h = wh.start; h < wh.end; ++h) {
            float* row = dxp + std::int64_t(h) * g.W;
            for (int w = ww.start; w < ww.end; ++w) row[w] += v;
          }
        }
      }
    }
  });
}

}  // namespace cpu
}  // namespace lrpfast

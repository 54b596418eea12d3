#include "kernels/lrn.hpp"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <string>
#include <vector>

#include "kernels/check.hpp"
#include "kernels/geometry.hpp"
#include "kernels/parallel.hpp"

namespace lrpfast {

LrnParams make_lrn_params(std::int64_t local_size, double alpha, double beta, double k,
                          const char* region) {
  require(local_size >= 1 && local_size % 2 == 1 && local_size <= 1 << 20,
          "lrn: local_size must be a positive odd number (as in Caffe), got ", local_size);
  require(std::isfinite(alpha) && std::isfinite(beta) && std::isfinite(k),
          "lrn: alpha, beta and k must be finite, got ", alpha, ", ", beta, ", ", k);
  std::string s(region ? region : "");
  for (auto& ch : s) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  LrnRegion r;
  if (s == "across" || s == "across_channels")
    r = LrnRegion::Across;
  else if (s == "within" || s == "within_channel")
    r = LrnRegion::Within;
  else
    fail("lrn: unknown region '", region ? region : "", "' (known: 'across', 'within')");
  return LrnParams{int(local_size), float(alpha), float(beta), float(k), r};
}

namespace cpu {
namespace {

// y = x * scale^-beta. beta = 0.75 (every Caffe zoo net) as x / (r * sqrt(r)), r = sqrt(scale):
// two correctly rounded square roots instead of pow, within 2 ulp of it, and a loop that
// vectorises (pow does not).
void finish(const LrnParams& p, std::int64_t n, const float* x, float* y, const float* scale) {
  const float nb = -p.beta;
  if (p.beta == 0.75f) {
    parallel_for(n, n * 2, [&](std::int64_t lo, std::int64_t hi) {
      for (std::int64_t i = lo; i < hi; ++i) {
        const float r = std::sqrt(scale[i]);
        y[i] = x[i] / (r * std::sqrt(r));
      }
    });
    return;
  }
  parallel_for(n, n * 8, [&](std::int64_t lo, std::int64_t hi) {  // pow: ~8 element-costs
    for (std::int64_t i = lo; i < hi; ++i) y[i] = x[i] * std::pow(scale[i], nb);
  });
}

}  // namespace

void lrn_forward(const LrnParams& p, int N, int C, int H, int W, const float* x, float* y,
                 float* scale) {
  const std::int64_t HW = std::int64_t(H) * W, total = std::int64_t(N) * C * HW;
  const int pre = lrn_pre_pad(p.local_size), post = p.local_size - 1 - pre;
  if (p.region == LrnRegion::Across) {
    const float a = p.alpha / float(p.local_size);
    parallel_for(std::int64_t(N) * C, total * p.local_size,
                 [&](std::int64_t nc0, std::int64_t nc1) {
                   for (std::int64_t nc = nc0; nc < nc1; ++nc) {
                     const int c = int(nc % C);
                     const float* xn = x + (nc - c) * HW;  // image start
                     float* s = scale + nc * HW;
                     for (std::int64_t i = 0; i < HW; ++i) s[i] = 0.f;
                     const int c0 = std::max(0, c - pre), c1 = std::min(C - 1, c + post);
                     for (int cc = c0; cc <= c1; ++cc) {
                       const float* xc = xn + cc * HW;
                       for (std::int64_t i = 0; i < HW; ++i) s[i] += xc[i] * xc[i];
                     }
                     for (std::int64_t i = 0; i < HW; ++i) s[i] = p.k + a * s[i];
                   }
                 });
  } else {
    const float a = p.alpha / (float(p.local_size) * float(p.local_size));
    parallel_for(std::int64_t(N) * C, total * p.local_size,
                 [&](std::int64_t nc0, std::int64_t nc1) {
                   std::vector<float> colsum(static_cast<size_t>(HW));
                   for (std::int64_t nc = nc0; nc < nc1; ++nc) {
                     const float* xp = x + nc * HW;
                     float* s = scale + nc * HW;
                     // separable box sum of x^2: rows first (into s), then columns (into a plane
                     // buffer)
                     for (int h = 0; h < H; ++h) {
                       const float* xr = xp + std::int64_t(h) * W;
                       float* sr = s + std::int64_t(h) * W;
                       for (int w = 0; w < W; ++w) {
                         const int w0 = std::max(0, w - pre), w1 = std::min(W - 1, w + post);
                         float acc = 0.f;
                         for (int ww = w0; ww <= w1; ++ww) acc += xr[ww] * xr[ww];
                         sr[w] = acc;
                       }
                     }
                     for (int h = 0; h < H; ++h) {
                       const int h0 = std::max(0, h - pre), h1 = std::min(H - 1, h + post);
                       float* out = colsum.data() + std::int64_t(h) * W;
                       for (int w = 0; w < W; ++w) out[w] = 0.f;
                       for (int hh = h0; hh <= h1; ++hh) {
                         const float* sr = s + std::int64_t(hh) * W;
                         for (int w = 0; w < W; ++w) out[w] += sr[w];
                       }
                     }
                     for (std::int64_t i = 0; i < HW; ++i) s[i] = 1.f + a * colsum[size_t(i)];
                   }
                 });
  }
  finish(p, total, x, y, scale);
}

}  // namespace cpu
}  // namespace lrpfast

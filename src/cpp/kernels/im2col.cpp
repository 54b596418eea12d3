#include "kernels/im2col.hpp"

#include <cstring>

#include "kernels/parallel.hpp"

namespace lrpfast {
namespace cpu {

void im2col(const ConvGeom& g, const float* x, int oh0, int oh1, float* col, std::int64_t ldcol) {
  const int K = static_cast<int>(g.k_total());
  const int Wo = g.Wo, H = g.H, W = g.W, taps = g.kh * g.kw;
  const std::int64_t plane = g.in_plane();
  parallel_for(K, std::int64_t(K) * (oh1 - oh0) * Wo, [&](std::int64_t r0, std::int64_t r1) {
    for (int r = int(r0); r < int(r1); ++r) {
      const int c = r / taps, ki = (r % taps) / g.kw, kj = r % g.kw;
      const float* xc = x + c * plane;
      float* dst = col + r * ldcol;
      int lo, hi;  // output columns whose input column lies inside the image
      conv_valid_out_range(W, Wo, kj, g.sw, g.pw, g.dw, &lo, &hi);
      const int iw_lo = conv_in_coord(lo, kj, g.sw, g.pw, g.dw);
      for (int oh = oh0; oh < oh1; ++oh, dst += Wo) {
        const int ih = conv_in_coord(oh, ki, g.sh, g.ph, g.dh);
        if (ih < 0 || ih >= H) {
          std::memset(dst, 0, sizeof(float) * Wo);
          continue;
        }
        const float* src = xc + std::int64_t(ih) * W + iw_lo;
        for (int ow = 0; ow < lo; ++ow) dst[ow] = 0.f;
        if (g.sw == 1) {
          std::memcpy(dst + lo, src, sizeof(float) * (hi - lo));
        } else {
          const int s = g.sw;
          for (int ow = lo; ow < hi; ++ow) dst[ow] = src[(ow - lo) * s];
        }
        for (int ow = hi; ow < Wo; ++ow) dst[ow] = 0.f;
      }
    }
  });
}

void col2im(const ConvGeom& g, const float* col, std::int64_t ldcol, int oh0, int oh1, float* dx) {
  const int Wo = g.Wo, H = g.H, W = g.W;
  const std::int64_t plane = g.in_plane();
  // one thread per input channel: every thread writes only its own planes (no races)
  parallel_for(g.C, g.k_total() * (oh1 - oh0) * Wo, [&](std::int64_t c0, std::int64_t c1) {
    for (int c = int(c0); c < int(c1); ++c) {
      float* dxc = dx + c * plane;
      for (int ki = 0; ki < g.kh; ++ki) {
        for (int kj = 0; kj < g.kw; ++kj) {
          const std::int64_t r = (std::int64_t(c) * g.kh + ki) * g.kw + kj;
          const float* src = col + r * ldcol;
          int lo, hi;
          conv_valid_out_range(W, Wo, kj, g.sw, g.pw, g.dw, &lo, &hi);
          if (lo >= hi) continue;
          const int iw_lo = conv_in_coord(lo, kj, g.sw, g.pw, g.dw);
          for (int oh = oh0; oh < oh1; ++oh, src += Wo) {
            const int ih = conv_in_coord(oh, ki, g.sh, g.ph, g.dh);
            if (ih < 0 || ih >= H) continue;
            float* dst = dxc + std::int64_t(ih) * W + iw_lo;
            if (g.sw == 1) {
              for (int ow = lo; ow < hi; ++ow) dst[ow - lo] += src[ow];
            } else {
              const int s = g.sw;
              for (int ow = lo; ow < hi; ++ow) dst[(ow - lo) * s] += src[ow];
            }
          }
        }
      }
    }
  });
}

}  // namespace cpu
}  // namespace lrpfast

#include "kernels/im2col.hpp"

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/parallel.hpp"

namespace lrpfast {
namespace cpu {
namespace {

// With a column stride s > 1 a row of the column matrix reads every s-th input column. Both
// directions go through the input rows split by column phase: row ih of channel c becomes s
// runs, run q holding columns q, q + s, q + 2s, ... (padded with 0 to `wt` each), so that a
// strided gather or scatter-add is a contiguous copy or add over one run.
struct PhaseRows {
  int s, wt, ih0, ih1;  // runs of wt columns; input rows [ih0, ih1)
  std::int64_t row_len() const { return std::int64_t(s) * wt; }
  std::int64_t plane() const { return (ih1 - ih0) * row_len(); }
  // offset of input column iw (phase iw % s, position iw / s) of row ih within a channel
  std::int64_t at(int ih, int iw) const {
    return (ih - ih0) * row_len() + std::int64_t(iw % s) * wt + iw / s;
  }
  // split[q*wt + t] = row[t*s + q] (0 past W) for one input row
  void split_row(const float* row, int W, float* split) const {
    for (int q = 0; q < s; ++q, split += wt)
      for (int t = 0, iw = q; t < wt; ++t, iw += s) split[t] = iw < W ? row[iw] : 0.f;
  }
  // row[t*s + q] += split[q*wt + t] for t*s + q < W
  void add_row(const float* split, int W, float* row) const {
    for (int q = 0; q < s; ++q, split += wt)
      for (int t = 0, iw = q; iw < W; ++t, iw += s) row[iw] += split[t];
  }
};

// The input rows that output rows [oh0, oh1) read, by column phase.
PhaseRows phase_rows(const ConvGeom& g, int oh0, int oh1) {
  PhaseRows p{g.sw, (g.W + g.sw - 1) / g.sw, 0, 0};
  p.ih0 = std::max(0, conv_in_coord(oh0, 0, g.sh, g.ph, g.dh));
  p.ih1 = std::min(g.H, conv_in_coord(oh1 - 1, g.kh - 1, g.sh, g.ph, g.dh) + 1);
  p.ih1 = std::max(p.ih0, p.ih1);
  return p;
}

// The columns of output row oh that tap (ki, kj) reads from inside the image: [lo, hi), the
// first from input column iw_lo; false when the tap's input row lies in the padding.
bool tap_span(const ConvGeom& g, int oh, int ki, int kj, int* ih, int* lo, int* hi, int* iw_lo) {
  *ih = conv_in_coord(oh, ki, g.sh, g.ph, g.dh);
  if (*ih < 0 || *ih >= g.H) return false;
  conv_valid_out_range(g.W, g.Wo, kj, g.sw, g.pw, g.dw, lo, hi);
  *iw_lo = conv_in_coord(*lo, kj, g.sw, g.pw, g.dw);
  return true;
}

}  // namespace

void im2col(const ConvGeom& g, const float* x, int oh0, int oh1, float* col, std::int64_t ldcol) {
  const int K = static_cast<int>(g.k_total());
  const int Wo = g.Wo, W = g.W, taps = g.kh * g.kw;
  const std::int64_t plane = g.in_plane();
  const std::int64_t work = std::int64_t(K) * (oh1 - oh0) * Wo;
  std::vector<float> split;  // stride > 1: the input rows by column phase (PhaseRows)
  const PhaseRows ph = phase_rows(g, oh0, oh1);
  if (g.sw > 1) {
    split.resize(std::size_t(g.C) * ph.plane());
    parallel_for(g.C, std::int64_t(g.C) * ph.plane(), [&](std::int64_t c0, std::int64_t c1) {
      for (std::int64_t c = c0; c < c1; ++c)
        for (int ih = ph.ih0; ih < ph.ih1; ++ih)
          ph.split_row(x + c * plane + std::int64_t(ih) * W, W,
                       split.data() + c * ph.plane() + (ih - ph.ih0) * ph.row_len());
    });
  }
  parallel_for(K, work, [&](std::int64_t r0, std::int64_t r1) {
    for (int r = int(r0); r < int(r1); ++r) {
      const int c = r / taps, ki = (r % taps) / g.kw, kj = r % g.kw;
      float* dst = col + r * ldcol;
      for (int oh = oh0; oh < oh1; ++oh, dst += Wo) {
        int ih, lo, hi, iw_lo;
        if (!tap_span(g, oh, ki, kj, &ih, &lo, &hi, &iw_lo) || lo >= hi) {
          std::memset(dst, 0, sizeof(float) * Wo);
          continue;
        }
        const float* src = g.sw == 1 ? x + c * plane + std::int64_t(ih) * W + iw_lo
                                     : split.data() + c * ph.plane() + ph.at(ih, iw_lo);
        std::fill(dst, dst + lo, 0.f);
        std::memcpy(dst + lo, src, sizeof(float) * (hi - lo));
        std::fill(dst + hi, dst + Wo, 0.f);
      }
    }
  });
}

void col2im(const ConvGeom& g, const float* col, std::int64_t ldcol, int oh0, int oh1, float* dx) {
  const int Wo = g.Wo, W = g.W;
  const std::int64_t plane = g.in_plane();
  const PhaseRows ph = phase_rows(g, oh0, oh1);
  // one thread per input channel: every thread writes only its own planes (no races)
  parallel_for(g.C, g.k_total() * (oh1 - oh0) * Wo, [&](std::int64_t c0, std::int64_t c1) {
    std::vector<float> split;  // stride > 1: this channel's sums by column phase, added at the end
    for (int c = int(c0); c < int(c1); ++c) {
      float* dxc = dx + c * plane;
      if (g.sw > 1) split.assign(std::size_t(ph.plane()), 0.f);
      for (int ki = 0; ki < g.kh; ++ki) {
        for (int kj = 0; kj < g.kw; ++kj) {
          const std::int64_t r = (std::int64_t(c) * g.kh + ki) * g.kw + kj;
          const float* src = col + r * ldcol;
          for (int oh = oh0; oh < oh1; ++oh, src += Wo) {
            int ih, lo, hi, iw_lo;
            if (!tap_span(g, oh, ki, kj, &ih, &lo, &hi, &iw_lo) || lo >= hi) continue;
            float* dst = g.sw == 1 ? dxc + std::int64_t(ih) * W + iw_lo
                                   : split.data() + ph.at(ih, iw_lo);
            for (int ow = lo; ow < hi; ++ow) dst[ow - lo] += src[ow];
          }
        }
      }
      if (g.sw > 1)
        for (int ih = ph.ih0; ih < ph.ih1; ++ih)
          ph.add_row(split.data() + (ih - ph.ih0) * ph.row_len(), W, dxc + std::int64_t(ih) * W);
    }
  });
}

}  // namespace cpu
}  // namespace lrpfast

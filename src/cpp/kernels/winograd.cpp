#include "kernels/winograd.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "kernels/elementwise.hpp"
#include "kernels/gemm.hpp"
#include "kernels/parallel.hpp"
#include "kernels/setting.hpp"

namespace lrpfast {
namespace cpu {

namespace {

ConvAlgo algo_from_env() {
  const char* s = std::getenv("LRPFAST_CONV_ALGO");
  if (!s) return ConvAlgo::Auto;
  const std::string v(s);
  if (v == "direct") return ConvAlgo::Direct;
  if (v == "winograd") return ConvAlgo::Winograd;
  if (v == "taps") return ConvAlgo::Taps;
  return ConvAlgo::Auto;
}

// Below this many channels per group (input or output) the 16 gemms are too thin to beat im2col.
constexpr int kMinChannels = 16;
// ... or when padding and half tiles leave less than this saving. With the kernels transformed
// once and kept by the caller (winograd_kernels), 13x13 planes (1.49) are faster than the
// direct method on 2 cores (CaffeNet's conv3 at batch 16: 25 vs 37 ms; batch 1: 1.7 vs 1.9
// ms), and so are 9x9 (1.42: 7.4 vs 11.4 ms for 16 images of 256 channels) and 6x6 (1.27: 3.7
// vs 4.3 ms).
constexpr double kMinSaving = 1.2;
// Most tiles per block (whole images below this are padded to 16 columns each).
constexpr std::int64_t kMaxBlockTiles = 1024;

// One convolution in Winograd form: x (N, C, H, W) -> y (N, K, Ho, Wo), 3x3 taps at offset -pad,
// U (group, 16, Kg, Cg) the transformed kernels, b (K) or nullptr.
struct Problem {
  int N, C, H, W, K, Ho, Wo, ph, pw, group;
  BackwardFusion fuse;  // z (like x): transform x's signal; times (like y): multiply the result
  // A stacked pair (conv_forward_pair): each group's Kg outputs are two weight sets' halves, the
  // first written to y, the second to y2 (both (N, K/2, Ho, Wo)); nullptr: all to y.
  float* y2 = nullptr;
  int Cg() const { return C / group; }
  int Kg() const { return K / group; }
  // the output plane of channel k (0 <= k < K) of image n in y (and y2)
  float* plane(float* y, int n, int k) const {
    const std::int64_t P = std::int64_t(Ho) * Wo;
    if (!y2) return y + (std::int64_t(n) * K + k) * P;
    const int h = Kg() / 2, gr = k / Kg(), j = k % Kg();
    return (j < h ? y : y2) + (std::int64_t(n) * (K / 2) + gr * h + j % h) * P;
  }
  int th() const { return (Ho + 1) / 2; }
  int tw() const { return (Wo + 1) / 2; }
};

// A block of tile rows [r0, r1) (row r = image r / th, tile row r % th) and its gemm columns:
// tile (r, tx) sits in column col(r) + tx. A block never splits a tile row; when it holds several
// images each starts at a multiple of `stride` columns (a multiple of 16, zero-padded), so a tile's
// column -- and with it the BLAS arithmetic that produces it -- does not depend on the batch.
struct Block {
  int r0, r1;
  int th, tw, stride;
  std::int64_t cols;
  std::int64_t col(int r) const {
    return std::int64_t(r / th - r0 / th) * stride + std::int64_t(r % th - r0 % th) * tw;
  }
};

// u (4x4, row-major) = G g G^T for a 3x3 kernel g (row-major); flip: use g rotated by 180 deg.
void kernel_transform(const float* g, bool flip, float* u) {
  float k[9];
  for (int i = 0; i < 9; ++i) k[i] = flip ? g[8 - i] : g[i];
  float t[12];  // G g: 4x3
  for (int j = 0; j < 3; ++j) {
    const float a = k[j], b = k[3 + j], c = k[6 + j];
    t[j] = a;
    t[3 + j] = 0.5f * (a + b + c);
    t[6 + j] = 0.5f * (a - b + c);
    t[9 + j] = c;
  }
  for (int i = 0; i < 4; ++i) {  // (G g) G^T: 4x4
    const float a = t[3 * i], b = t[3 * i + 1], c = t[3 * i + 2];
    u[4 * i] = a;
    u[4 * i + 1] = 0.5f * (a + b + c);
    u[4 * i + 2] = 0.5f * (a - b + c);
    u[4 * i + 3] = c;
  }
}

// U for the forward (w: (K, Cg, 3, 3)) or, transposed, for the adjoint (w: (O, Cg, 3, 3) read as
// the kernels of a convolution from O to C channels with flipped taps).
void fill_kernels(const float* w, int O, int Cg, int group, bool adjoint, float* up) {
  const int Og = O / group;
  const int rows = adjoint ? Cg : Og, cols = adjoint ? Og : Cg;  // U[xi] is rows x cols
  const std::int64_t mat = std::int64_t(rows) * cols;
  // one U row at a time, so the 16 output streams are written contiguously
  parallel_for(std::int64_t(group) * rows, std::int64_t(O) * Cg * 64,
               [&](std::int64_t t0, std::int64_t t1) {
    float u[16];
    for (std::int64_t t = t0; t < t1; ++t) {
      const std::int64_t gr = t / rows, r = t % rows;
      float* dst = up + gr * 16 * mat + r * cols;
      for (int col = 0; col < cols; ++col) {
        const std::int64_t o = gr * Og + (adjoint ? col : r), c = adjoint ? r : col;
        kernel_transform(w + (o * Cg + c) * 9, adjoint, u);
        for (int xi = 0; xi < 16; ++xi) dst[xi * mat + col] = u[xi];
      }
    }
  });
}

std::unique_ptr<float[]> transform_kernels(const float* w, int O, int Cg, int group, bool adjoint) {
  std::unique_ptr<float[]> U(new float[size_t(16) * O * Cg]);
  fill_kernels(w, O, Cg, group, adjoint, U.get());
  return U;
}

// The transforms' inner loops, over whole rows of tiles (restrict: they vectorise).
// B^T d for the 4 input rows d0..d3 of a tile row, n columns.
void bt_rows(int n, const float* __restrict d0, const float* __restrict d1,
             const float* __restrict d2, const float* __restrict d3, float* __restrict t0,
             float* __restrict t1, float* __restrict t2, float* __restrict t3) {
  for (int j = 0; j < n; ++j) {
    t0[j] = d0[j] - d2[j];
    t1[j] = d1[j] + d2[j];
    t2[j] = d2[j] - d1[j];
    t3[j] = d1[j] - d3[j];
  }
}

// A^T m for one column of every tile: rows 0..3 of m -> the 2 output rows.
void at_rows(int tw, const float* __restrict m0, const float* __restrict m1,
             const float* __restrict m2, const float* __restrict m3, float* __restrict s0,
             float* __restrict s1) {
  for (int t = 0; t < tw; ++t) {
    s0[t] = m0[t] + m1[t] + m2[t];
    s1[t] = m1[t] - m2[t] - m3[t];
  }
}

// (A^T m) A for one output row: columns a..d of every tile -> y[2t], y[2t + 1] (+ bias).
void at_cols(int tw, const float* __restrict a, const float* __restrict b,
             const float* __restrict c, const float* __restrict d, float bias,
             float* __restrict y) {
  for (int t = 0; t < tw; ++t) {
    y[2 * t] = a[t] + b[t] + c[t] + bias;
    y[2 * t + 1] = b[t] - c[t] - d[t] + bias;
  }
}

// Input transform of a block, channels [c0, c0 + Cg) of x: V[xi][c][blk.col(r) + tx], row stride
// blk.cols.
void input_transform(const Problem& p, const float* x, int c0, const Block& blk, float* V) {
  const int Cg = p.Cg(), th = p.th(), tw = p.tw(), Wp = 2 * tw + 2, r0 = blk.r0, r1 = blk.r1;
  const std::int64_t ldv = blk.cols;
  const std::int64_t HW = std::int64_t(p.H) * p.W;
  parallel_for(Cg, std::int64_t(Cg) * (r1 - r0) * tw * 16, [&](std::int64_t ca, std::int64_t cb) {
    std::vector<float> buf(size_t(8) * Wp);
    float* d[4] = {buf.data(), buf.data() + Wp, buf.data() + 2 * Wp, buf.data() + 3 * Wp};
    float* t[4] = {buf.data() + 4 * Wp, buf.data() + 5 * Wp, buf.data() + 6 * Wp,
                   buf.data() + 7 * Wp};
    // input columns [-pw, -pw + Wp) of the padded row; the valid part is [0, W)
    const int x_lo = std::min(Wp, std::max(0, p.pw)), x_hi = std::max(x_lo, std::min(Wp, p.W + p.pw));
    // fills `row` with padded input row iy (its signal when fused), zero outside the plane
    auto load = [&](const float* plane, const float* zplane, int iy, float* row) {
      if (iy < 0 || iy >= p.H) {
        std::memset(row, 0, sizeof(float) * Wp);
        return;
      }
      std::memset(row, 0, sizeof(float) * x_lo);
      const std::int64_t at = std::int64_t(iy) * p.W + (x_lo - p.pw);
      if (zplane) {
        const float* a = plane + at;
        const float* z = zplane + at;
        float* o = row + x_lo;
        const float eps = p.fuse.eps;
        for (int j = 0; j < x_hi - x_lo; ++j) o[j] = stabilized_quotient(a[j], z[j], eps);
      } else {
        std::memcpy(row + x_lo, plane + at, sizeof(float) * (x_hi - x_lo));
      }
      std::memset(row + x_hi, 0, sizeof(float) * (Wp - x_hi));
    };
    for (std::int64_t c = ca; c < cb; ++c) {
      for (int r = r0; r < r1; ++r) {
        const int n = r / th, ty = r % th;
        const float* plane = x + (std::int64_t(n) * p.C + c0 + c) * HW;
        const float* zplane = p.fuse.z ? p.fuse.z + (plane - x) : nullptr;
        // the 4 input rows 2*ty - ph + i; the previous tile row of this plane loaded the first two
        const bool reuse = r > r0 && ty > 0;
        if (reuse) {
          std::swap(d[0], d[2]);
          std::swap(d[1], d[3]);
        }
        for (int i = reuse ? 2 : 0; i < 4; ++i) load(plane, zplane, 2 * ty - p.ph + i, d[i]);
        bt_rows(Wp, d[0], d[1], d[2], d[3], t[0], t[1], t[2], t[3]);  // B^T d, whole rows
        const std::int64_t tbase = blk.col(r);
        for (int i = 0; i < 4; ++i) {  // (B^T d) B, tile by tile
          const float* s = t[i];
          float* v0 = V + ((4 * i + 0) * std::int64_t(Cg) + c) * ldv + tbase;
          float* v1 = V + ((4 * i + 1) * std::int64_t(Cg) + c) * ldv + tbase;
          float* v2 = V + ((4 * i + 2) * std::int64_t(Cg) + c) * ldv + tbase;
          float* v3 = V + ((4 * i + 3) * std::int64_t(Cg) + c) * ldv + tbase;
          for (int tx = 0; tx < tw; ++tx) {
            const float a = s[2 * tx], b = s[2 * tx + 1], e = s[2 * tx + 2], f = s[2 * tx + 3];
            v0[tx] = a - e;
            v1[tx] = b + e;
            v2[tx] = e - b;
            v3[tx] = b - f;
          }
        }
      }
    }
  });
}

// Output transform: M[xi][k][t] -> y channels [k0, k0 + Kg) (+ bias), clipped to (Ho, Wo).
void output_transform(const Problem& p, const float* M, const float* b, int k0, const Block& blk,
                      float* y) {
  const int Kg = p.Kg(), th = p.th(), tw = p.tw(), r0 = blk.r0, r1 = blk.r1;
  const std::int64_t ldm = blk.cols;
  const std::int64_t P = std::int64_t(p.Ho) * p.Wo;
  parallel_for(Kg, std::int64_t(Kg) * (r1 - r0) * tw * 16, [&](std::int64_t ka, std::int64_t kb) {
    std::vector<float> buf(size_t(12) * tw + 4);
    float* y0 = buf.data();
    float* y1 = buf.data() + 2 * tw + 2;
    float* u = buf.data() + 4 * tw + 4;  // A^T m: u[j] (row 0) and u[4 + j] (row 1), tw each
    for (std::int64_t k = ka; k < kb; ++k) {
      const float bias = b ? b[k0 + k] : 0.f;
      for (int r = r0; r < r1; ++r) {
        const int n = r / th, ty = r % th;
        const std::int64_t tbase = blk.col(r);
        const float* m[16];
        for (int xi = 0; xi < 16; ++xi) m[xi] = M + (xi * std::int64_t(Kg) + k) * ldm + tbase;
        for (int j = 0; j < 4; ++j)  // A^T m, column j of every tile
          at_rows(tw, m[j], m[4 + j], m[8 + j], m[12 + j], u + j * tw, u + (4 + j) * tw);
        at_cols(tw, u, u + tw, u + 2 * tw, u + 3 * tw, bias, y0);  // (A^T m) A, output row 0
        at_cols(tw, u + 4 * tw, u + 5 * tw, u + 6 * tw, u + 7 * tw, bias, y1);  // row 1
        const std::int64_t at = (std::int64_t(n) * p.K + k0 + k) * P + std::int64_t(2 * ty) * p.Wo;
        const int nrows = 2 * ty + 1 < p.Ho ? 2 : 1;
        if (p.fuse.times) {
          const float* t = p.fuse.times + at;
          for (int j = 0; j < p.Wo; ++j) y0[j] *= t[j];
          if (nrows == 2)
            for (int j = 0; j < p.Wo; ++j) y1[j] *= t[p.Wo + j];
          if (p.fuse.add) {  // (0 + add) + times * sum, as BackwardFusion says
            const float* a = p.fuse.add + at;
            for (int j = 0; j < p.Wo; ++j) y0[j] = (0.f + a[j]) + y0[j];
            if (nrows == 2)
              for (int j = 0; j < p.Wo; ++j) y1[j] = (0.f + a[p.Wo + j]) + y1[j];
          }
          if (p.fuse.nonfinite &&
              (nonfinite_bits(y0, p.Wo) | (nrows == 2 ? nonfinite_bits(y1, p.Wo) : 0u)))
            p.fuse.nonfinite->store(true);
        }
        float* row = p.plane(y, n, int(k0 + k)) + std::int64_t(2 * ty) * p.Wo;
        std::memcpy(row, y0, sizeof(float) * p.Wo);
        if (nrows == 2) std::memcpy(row + p.Wo, y1, sizeof(float) * p.Wo);
      }
    }
  });
}

// One block of every group: transform, 16 gemms, transform back. V, M: scratch of
// 16 * Cg * cols and 16 * Kg * cols floats.
void run_block(const Problem& p, const float* x, const float* U, const float* b, const Block& blk,
               float* V, float* M, float* y) {
  const int Cg = p.Cg(), Kg = p.Kg();
  const std::int64_t n = blk.cols;
  for (int gr = 0; gr < p.group; ++gr) {
    input_transform(p, x, gr * Cg, blk, V);
    const float* Ug = U + std::int64_t(gr) * 16 * Kg * Cg;
    // the 16 products spread over the pool, each single-threaded: every element of M comes from
    // the same BLAS call whatever the thread count or scheme
    parallel_for(16, 16 * n * Kg * Cg, [&](std::int64_t x0, std::int64_t x1) {
      for (std::int64_t xi = x0; xi < x1; ++xi)
        gemm(false, false, Kg, int(n), Cg, 1.f, Ug + xi * Kg * Cg, Cg, V + xi * Cg * n, int(n),
             0.f, M + xi * Kg * n, int(n), /*threaded=*/false);
    });
    output_transform(p, M, b, gr * Kg, blk, y);
  }
}

void run(const Problem& p, const float* x, const float* U, const float* b, float* y) {
  if (p.N == 0) return;
  const int th = p.th(), tw = p.tw(), Cg = p.Cg(), Kg = p.Kg();
  // Tiles per block: enough gemm columns to amortise packing U[xi] (K x C), few enough that the
  // transformed block stays near L2 for thin layers (measured on VGG-16's layers, 2 threads).
  // (a pair: one weight set's Kg, so its blocks are those of either set's own call)
  const int Kb = p.y2 ? Kg / 2 : Kg;
  const std::int64_t target = std::clamp<std::int64_t>(std::max(Cg, Kb) / 2, 64, kMaxBlockTiles);
  const std::int64_t per_image = std::int64_t(th) * tw;
  // whole images per block (small planes) or tile rows of one image per block
  // (deterministic mode: never several images in one block -- the gemm's width would depend on
  // the batch, and with it the BLAS arithmetic on kernels that are not shape-invariant)
  const bool whole = per_image < target && !deterministic();
  const int stride = int((per_image + 15) / 16 * 16);
  const int span = whole ? int(std::clamp<std::int64_t>((target + stride / 2) / stride, 1, p.N))
                         : int(std::clamp<std::int64_t>((target + tw / 2) / tw, 1, th));
  const int per_n = whole ? 1 : (th + span - 1) / span;  // blocks per image (rows mode)
  const int nblocks = whole ? (p.N + span - 1) / span : p.N * per_n;
  const std::int64_t max_cols = whole ? std::int64_t(span) * stride : std::int64_t(span) * tw;
  auto block = [&](int i) {
    Block blk{0, 0, th, tw, stride, 0};
    if (whole) {
      const int n0 = i * span, n1 = std::min(p.N, n0 + span);
      blk.r0 = n0 * th, blk.r1 = n1 * th, blk.cols = std::int64_t(n1 - n0) * stride;
    } else {
      const int n = i / per_n, j = i % per_n;
      blk.r0 = n * th + j * span, blk.r1 = std::min(blk.r0 + span, (n + 1) * th);
      blk.cols = std::int64_t(blk.r1 - blk.r0) * tw;
    }
    return blk;
  };
  parallel_units(nblocks, [&](int i, Scratch& sc) {
    // V zeroed once: its padding columns are never written and must stay finite
    run_block(p, x, U, b, block(i), sc.get(0, 16 * Cg * max_cols, /*zeroed=*/true),
              sc.get(1, 16 * Kg * max_cols), y);
  });
}

}  // namespace

namespace {
Setting<ConvAlgo> g_algo(algo_from_env);
}  // namespace

void set_conv_algo(ConvAlgo a) { g_algo.set(a); }

ConvAlgo conv_algo() { return g_algo.get(); }

bool winograd_applies(const ConvGeom& g, bool backward) {
  const ConvAlgo a = conv_algo();
  if (a == ConvAlgo::Direct || a == ConvAlgo::Taps) return false;
  const bool shape = g.kh == 3 && g.kw == 3 && g.sh == 1 && g.sw == 1 && g.dh == 1 && g.dw == 1 &&
                     (!backward || (g.ph <= 2 && g.pw <= 2));
  if (!shape || g.N == 0) return false;
  // a block holds at least one whole tile row: keep its scratch (16 * C * tiles) bounded
  const std::int64_t row_tiles = ((backward ? g.W : g.Wo) + 1) / 2;
  if (row_tiles > kMaxBlockTiles * 4) return false;
  if (a == ConvAlgo::Winograd) return true;
  if (g.cin_per_group() < kMinChannels || g.cout_per_group() < kMinChannels) return false;
  // multiplication saving over the direct method on the plane it produces, counting the odd
  // edge's half tiles and a small image's padding to 16 gemm columns (see run())
  const std::int64_t ho = backward ? g.H : g.Ho, wo = backward ? g.W : g.Wo;
  const std::int64_t tiles = ((ho + 1) / 2) * ((wo + 1) / 2);
  const std::int64_t cols = tiles < kMaxBlockTiles ? (tiles + 15) / 16 * 16 : tiles;
  return 9.0 * double(ho * wo) >= kMinSaving * 16.0 * double(cols);
}

void winograd_kernels(const float* w, int O, int Cg, int group, bool adjoint, float* U) {
  fill_kernels(w, O, Cg, group, adjoint, U);
}

void winograd_forward(const ConvGeom& g, const float* x, const float* w, const float* b, float* y,
                      const float* U) {
  std::unique_ptr<float[]> own;
  if (!U) own = transform_kernels(w, g.O, g.cin_per_group(), g.group, false), U = own.get();
  const Problem p{g.N, g.C, g.H, g.W, g.O, g.Ho, g.Wo, g.ph, g.pw, g.group, {}};
  run(p, x, U, b, y);
}

void winograd_forward_pair(const ConvGeom& g, const float* x, const float* w, const float* b,
                           float* y, float* y2, const float* U) {
  std::unique_ptr<float[]> own;
  if (!U) own = transform_kernels(w, g.O, g.cin_per_group(), g.group, false), U = own.get();
  Problem p{g.N, g.C, g.H, g.W, g.O, g.Ho, g.Wo, g.ph, g.pw, g.group, {}};
  p.y2 = y2;
  run(p, x, U, b, y);
}

void winograd_backward_data(const ConvGeom& g, const float* dy, const float* w, float* dx,
                            const BackwardFusion& f, const float* U) {
  // dx = conv(dy, w flipped and transposed, pad 2 - pad): from O channels to C channels
  std::unique_ptr<float[]> own;
  if (!U) own = transform_kernels(w, g.O, g.cin_per_group(), g.group, true), U = own.get();
  const Problem p{g.N, g.O, g.Ho, g.Wo, g.C, g.H, g.W, 2 - g.ph, 2 - g.pw, g.group, f};
  run(p, dy, U, nullptr, dx);
}

}  // namespace cpu
}  // namespace lrpfast

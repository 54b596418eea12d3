#include "kernels/conv.hpp"

#include <algorithm>
#include <cstring>
#include <memory>

#include "kernels/check.hpp"
#include "kernels/elementwise.hpp"
#include "kernels/gemm.hpp"
#include "kernels/im2col.hpp"
#include "kernels/parallel.hpp"
#include "kernels/taps.hpp"
#include "kernels/winograd.hpp"

namespace lrpfast {

int conv_out_size_checked(std::int64_t in, std::int64_t kernel, std::int64_t stride,
                          std::int64_t pad, std::int64_t dilation) {
  require(in >= 1, "convolution: input size must be >= 1, got ", in);
  require(kernel >= 1, "convolution: kernel size must be >= 1, got ", kernel);
  require(stride >= 1, "convolution: stride must be >= 1, got ", stride);
  require(pad >= 0, "convolution: pad must be >= 0, got ", pad);
  require(dilation >= 1, "convolution: dilation must be >= 1, got ", dilation);
  const std::int64_t extent = dilation * (kernel - 1) + 1;
  require(in + 2 * pad >= extent, "convolution: kernel extent ", extent, " (kernel ", kernel,
          ", dilation ", dilation, ") is larger than the padded input ", in + 2 * pad, " (input ",
          in, ", pad ", pad, ")");
  checked_int(in + 2 * pad, "convolution: padded input size");
  checked_int(extent, "convolution: kernel extent");
  return conv_out_size(int(in), int(kernel), int(stride), int(pad), int(dilation));
}

ConvGeom make_conv_geom(std::int64_t N, std::int64_t C, std::int64_t H, std::int64_t W,
                        std::int64_t O, std::int64_t w_cin, std::int64_t kh, std::int64_t kw,
                        std::int64_t sh, std::int64_t sw, std::int64_t ph, std::int64_t pw,
                        std::int64_t dh, std::int64_t dw, std::int64_t group) {
  require(N >= 0, "convolution: batch size must be >= 0, got ", N);
  require(C >= 1 && O >= 1, "convolution: channel counts must be >= 1, got input channels ", C,
          " and output channels ", O);
  require(group >= 1, "convolution: group must be >= 1, got ", group);
  require(C % group == 0, "convolution: input channels ", C, " are not divisible by group ", group);
  require(O % group == 0, "convolution: output channels ", O, " are not divisible by group ",
          group);
  require(w_cin == C / group, "convolution: weight has ", w_cin,
          " input channels per group but the input has ", C, " channels and group ", group,
          " (expected ", C / group, ")");
  ConvGeom g{};
  g.Ho = conv_out_size_checked(H, kh, sh, ph, dh);
  g.Wo = conv_out_size_checked(W, kw, sw, pw, dw);
  g.N = checked_int(N, "convolution: batch size");
  g.C = checked_int(C, "convolution: input channels");
  g.H = int(H);
  g.W = int(W);
  g.O = checked_int(O, "convolution: output channels");
  g.kh = int(kh), g.kw = int(kw), g.sh = checked_int(sh, "convolution: stride"),
  g.sw = checked_int(sw, "convolution: stride"), g.ph = int(ph), g.pw = int(pw);
  g.dh = int(dh), g.dw = int(dw), g.group = int(group);
  checked_int(g.in_plane(), "convolution: input plane H*W");
  checked_int(g.out_plane(), "convolution: output plane Ho*Wo");
  checked_int(g.k_total() * g.Wo, "convolution: im2col row block C*kh*kw*Wo");
  return g;
}

void require_conv_pair(const ConvGeom& g) {
  require(g.cout_per_group() % 2 == 0, "conv_forward_pair: w must stack two weight sets, an even "
          "number of output channels per group; got ", g.O, " outputs in ", g.group, " group(s)");
}

namespace cpu {
namespace {

// Column-buffer budget in floats (4 MiB): a block of im2col rows this size stays in L2/L3 between
// being written by im2col and read by gemm, yet is wide enough (hundreds of columns for typical K)
// for gemm to run at full speed.
constexpr std::int64_t kColBudget = std::int64_t(1) << 20;
// Output planes smaller than this are batched (several images side by side in one gemm).
constexpr std::int64_t kSmallPlane = 1024;

struct Blocking {
  int images;  // > 1: that many whole images per gemm; 1: one image, `rows` output rows per gemm
  int rows;
};

Blocking plan(const ConvGeom& g) {
  const std::int64_t K = g.k_total(), P = g.out_plane();
  Blocking b{1, g.Ho};
  if (P < kSmallPlane && g.N > 1 && !deterministic()) {  // images side by side: batch-dependent
    const std::int64_t by_budget = kColBudget / (K * P);
    const std::int64_t by_width = kSmallPlane / P;  // enough columns for an efficient gemm
    b.images = int(std::max<std::int64_t>(1, std::min<std::int64_t>({by_budget, by_width, g.N})));
    if (b.images > 1) return b;
  }
  b.rows = int(std::clamp<std::int64_t>(kColBudget / (K * g.Wo), 1, g.Ho));
  return b;
}

// Below this many outputs per plane, a 1x1 stride-1 convolution of several images goes the
// batched im2col way (plan's images side by side: one product of nb*P columns) instead of one
// product per image straight on the planes: a P-column product re-packs the weights for every
// image and runs OpenBLAS's kernels at a fraction of their rate. ResNet-50's 7x7 stage at batch
// 8 (Xeon with AVX-512, 2 threads): 2048->512 forward 4.5 -> 3.5 ms, 512->2048 4.5 -> 3.2 ms,
// backward alike. At 8x8 the two ways were even and at 10x10 and above the planes won.
constexpr std::int64_t kPointwiseBatchPlane = 64;

// body(n0, nb, scratch) over the call's units (see parallel_units): groups of bl.images images
// (nb of them, the last group may be smaller) or single images (nb = 1).
template <class F>
void for_units(const ConvGeom& g, const Blocking& bl, F&& body) {
  const int per = std::max(1, bl.images);
  parallel_units((g.N + per - 1) / per,
                 [&](int u, Scratch& sc) { body(u * per, std::min(per, g.N - u * per), sc); });
}

// y[o, j] = b[o] for o < O, j < cols (row stride ldy): the products then add onto it (beta 1),
// which spares BLAS's zeroing of y (beta 0) and a second pass adding b. b comes first in each
// sum (b + sum_k w x): the same value to float32 rounding.
void fill_bias(const float* b, int O, int cols, float* y, std::int64_t ldy) {
  parallel_for(O, std::int64_t(O) * cols, [&](std::int64_t o0, std::int64_t o1) {
    for (std::int64_t o = o0; o < o1; ++o) std::fill_n(y + o * ldy, cols, b[o]);
  });
}


// nb images' (O, P) planes of dy (image-major, (nb, O, P)) into the channel-major gemm layout
// (O, nb*P) with row stride ld.
void gather_planes(const float* dy, int nb, int O, std::int64_t P, float* rows, std::int64_t ld) {
  parallel_for(std::int64_t(nb) * O, std::int64_t(O) * nb * P, [&](std::int64_t t0, std::int64_t t1) {
    for (std::int64_t t = t0; t < t1; ++t) {
      const std::int64_t i = t / O, o = t % O;
      std::memcpy(rows + o * ld + i * P, dy + (i * O + o) * P, sizeof(float) * P);
    }
  });
}

// The other way: channels c0 .. c0+nc-1 of the gemm layout rows (nc, ld), cols j0 .. j0+cols-1
// of each image's plane, for nb images from n0 (nb > 1: whole planes, image i at column i*P).
void scatter_rows(const float* rows, std::int64_t ld, std::int64_t n0, int nb, int c0, int nc,
                  std::int64_t j0, std::int64_t cols, const OutPlanes& out) {
  parallel_for(std::int64_t(nb) * nc, std::int64_t(nc) * nb * cols, [&](std::int64_t t0, std::int64_t t1) {
    for (std::int64_t t = t0; t < t1; ++t) {
      const std::int64_t i = t / nc, o = t % nc;
      std::memcpy(out.plane(n0 + i, int(c0 + o)) + j0, rows + o * ld + i * cols,
                  sizeof(float) * cols);
    }
  });
}

// dst[r*ldd + j] = stabilized_quotient(src[r*lds + j], z[r*lds + j], eps) for r < rows, j < cols.
void signal_rows(const float* src, const float* z, float eps, int rows, std::int64_t cols,
                 std::int64_t lds, float* dst, std::int64_t ldd) {
  parallel_for(rows, rows * cols, [&](std::int64_t r0, std::int64_t r1) {
    for (std::int64_t r = r0; r < r1; ++r) {
      const float* a = src + r * lds;
      const float* zz = z + r * lds;
      float* d = dst + r * ldd;
      for (std::int64_t j = 0; j < cols; ++j) d[j] = stabilized_quotient(a[j], zz[j], eps);
    }
  });
}

// nb images' (O, P) planes of dy (its signal when z is given) into the gemm layout (O, nb*P).
void gather_signal(const float* dy, const float* z, float eps, int nb, int O, std::int64_t P,
                   float* rows, std::int64_t ld) {
  if (!z) return gather_planes(dy, nb, O, P, rows, ld);
  for (int i = 0; i < nb; ++i)
    signal_rows(dy + std::int64_t(i) * O * P, z + std::int64_t(i) * O * P, eps, O, P, P,
                rows + i * P, ld);
}

// A strided 1x1 kernel's columns and back (no padding): cols[c, oh*Wo + ow] is x[c, oh*sh, ow*sw]
// (subsample), and spread puts each column back at its pixel of dx, +0 on the others (col2im
// of such a kernel: every pixel receives at most one column, added to +0).
void subsample(const ConvGeom& g, const float* x, float* cols) {
  parallel_for(std::int64_t(g.C) * g.Ho, std::int64_t(g.C) * g.out_plane(),
               [&](std::int64_t r0, std::int64_t r1) {
    for (std::int64_t r = r0; r < r1; ++r) {  // r = c * Ho + oh
      const float* src = x + (r / g.Ho) * g.in_plane() + std::int64_t(r % g.Ho) * g.sh * g.W;
      float* dst = cols + r * g.Wo;
      for (int ow = 0; ow < g.Wo; ++ow) dst[ow] = src[std::int64_t(ow) * g.sw];
    }
  });
}

void spread(const ConvGeom& g, const float* cols, float* dx) {
  parallel_for(std::int64_t(g.C) * g.H, std::int64_t(g.C) * g.in_plane(),
               [&](std::int64_t r0, std::int64_t r1) {
    for (std::int64_t r = r0; r < r1; ++r) {  // r = c * H + ih
      float* dst = dx + r * g.W;
      std::fill_n(dst, g.W, 0.f);
      const int ih = int(r % g.H);
      if (ih % g.sh != 0 || ih / g.sh >= g.Ho) continue;
      const float* src = cols + ((r / g.H) * g.Ho + ih / g.sh) * g.Wo;
      for (int ow = 0; ow < g.Wo; ++ow) dst[std::int64_t(ow) * g.sw] = 0.f + src[ow];
    }
  });
}

// a *= t, or a = (0 + add) + a * t; nonfinite (optional) set when a result is not finite (see
// BackwardFusion).
void scale_by(float* a, const float* t, const float* add, std::int64_t n,
              std::atomic<bool>* nonfinite) {
  parallel_for(n, n, [&](std::int64_t lo, std::int64_t hi) {
    if (add) {
      for (std::int64_t i = lo; i < hi; ++i) {
        const float p = a[i] * t[i];
        a[i] = (0.f + add[i]) + p;
      }
    } else {
      for (std::int64_t i = lo; i < hi; ++i) a[i] *= t[i];
    }
    if (nonfinite && nonfinite_bits(a + lo, hi - lo)) nonfinite->store(true);
  });
}

void zero(float* a, std::int64_t n) {
  parallel_for(n, n, [&](std::int64_t lo, std::int64_t hi) {
    std::memset(a + lo, 0, sizeof(float) * size_t(hi - lo));
  });
}

}  // namespace

// A 1x1 kernel without padding: its im2col matrix is the input plane (stride 1) or the input
// subsampled (strided; ResNet's downsampling shortcuts), one copy of the input's kept pixels.
bool one_by_one(const ConvGeom& g) { return g.kh == 1 && g.kw == 1 && g.ph == 0 && g.pw == 0; }

bool pointwise_per_image(const ConvGeom& g) {
  return one_by_one(g) && (g.out_plane() >= kPointwiseBatchPlane || plan(g).images == 1);
}

namespace {

// conv_forward's body, the output channels going where `out` says.
void forward_into(const ConvGeom& g, const float* x, const float* w, const float* b,
                  const OutPlanes& out, const float* wino_u = nullptr) {
  const bool split = out.y2 != nullptr;
  const std::int64_t P = g.out_plane(), HW = g.in_plane();
  const int Og = g.cout_per_group(), Kg = int(g.k_per_group()), Ip = int(P);
  // Output channels stored P apart (see OutPlanes): a group's, or a pair's half-group.
  const int run = split ? Og / 2 : Og;
  // Output channels per im2col gemm: a group's (a pair: both weight sets stacked, one call that
  // packs the columns once); in deterministic mode a pair runs each weight set's own call, so
  // y and y2 come from the very calls conv_forward makes with W or V alone (the same bits
  // whichever way the net computes z and z+, on any BLAS).
  const int rows = split && deterministic() ? Og / 2 : Og;
  const std::int64_t wg_stride = std::int64_t(Og) * Kg;
  // a pair takes the path either weight set's own convolution takes
  ConvGeom one = g;
  if (split) one.O = g.O / 2;
  if (winograd_applies(one, false)) {
    if (!split) return winograd_forward(g, x, w, b, out.y, wino_u);
    return winograd_forward_pair(g, x, w, b, out.y, out.y2, wino_u);
  }
  if (taps_applies(one)) return taps_forward(g, x, w, b, out);  // few input channels
  if (pointwise_per_image(g)) {  // the input plane (strided: its kept pixels) is the columns
    // whole images per thread where there are enough (parallel_units): each thread packs its
    // own columns once, instead of both threads packing every image's columns for their
    // slice of the weights, and no thread waits for the other after every image. A strided
    // 1x1 kernel subsamples the image first and then runs the same per-image products straight
    // into y (ResNet-50's downsampling shortcuts at batch 8: 256->512 at 56x56 7.9 -> 6.4 ms,
    // 512->1024 at 28x28 7.6 -> 6.3 ms, against the batched im2col way's product into a block
    // buffer and copy to y).
    parallel_units(g.N, [&](int n, Scratch& sc) {
      const float* xn = x + std::int64_t(n) * g.C * HW;
      if (!g.pointwise()) {
        float* sub = sc.get(0, std::int64_t(g.C) * P);
        subsample(g, xn, sub);
        xn = sub;
      }
      for (int c = 0; c < g.O; c += run) {
        const int gr = c / Og;
        float* dst = out.plane(n, c);
        if (b) fill_bias(b + c, run, Ip, dst, P);
        gemm(false, false, run, Ip, Kg, 1.f, w + std::int64_t(c) * Kg, Kg,
             xn + std::int64_t(gr) * Kg * P, Ip, b ? 1.f : 0.f, dst, Ip);
      }
    });
    return;
  }
  const Blocking bl = plan(g);
  const std::int64_t K = g.k_total();
  if (bl.images > 1) {  // several small images side by side: col (K, nb*P) -> tmp (O, nb*P)
    const std::int64_t ld = std::int64_t(bl.images) * P;
    for_units(g, bl, [&](int n0, int nb, Scratch& sc) {
      float* col = sc.get(0, K * ld);
      float* tmp = sc.get(1, std::int64_t(g.O) * ld);
      const int cols = int(nb * P);
      for (int i = 0; i < nb; ++i)
        im2col(g, x + std::int64_t(n0 + i) * g.C * HW, 0, g.Ho, col + i * P, ld);
      if (b) fill_bias(b, g.O, cols, tmp, ld);
      for (int gr = 0; gr < g.group; ++gr)
        for (int h = 0; h < Og; h += rows)
          gemm(false, false, rows, cols, Kg, 1.f, w + gr * wg_stride + std::int64_t(h) * Kg, Kg,
               col + gr * Kg * ld, int(ld), b ? 1.f : 0.f,
               tmp + (std::int64_t(gr) * Og + h) * ld, int(ld));
      scatter_rows(tmp, ld, n0, nb, 0, g.O, 0, P, out);
    });
    return;
  }
  // one image at a time, bl.rows output rows per gemm, written straight into y (a stacked pair:
  // each group's product into a block buffer, then its two halves to y and y2)
  for_units(g, bl, [&](int n, int, Scratch& sc) {
    float* col = sc.get(0, K * std::int64_t(bl.rows) * g.Wo);
    const float* xn = x + std::int64_t(n) * g.C * HW;
    for (int oh0 = 0; oh0 < g.Ho; oh0 += bl.rows) {
      const int oh1 = std::min(g.Ho, oh0 + bl.rows);
      const int cols = (oh1 - oh0) * g.Wo;
      const std::int64_t j0 = std::int64_t(oh0) * g.Wo;
      im2col(g, xn, oh0, oh1, col, cols);
      for (int gr = 0; gr < g.group; ++gr) {
        const float* cg = col + std::int64_t(gr) * Kg * cols;
        if (rows > run) {  // a stacked pair: through a block buffer, then each half to y / y2
          float* t = sc.get(1, std::int64_t(Og) * cols);
          if (b) fill_bias(b + gr * Og, Og, cols, t, cols);
          gemm(false, false, Og, cols, Kg, 1.f, w + gr * wg_stride, Kg, cg, cols, b ? 1.f : 0.f,
               t, cols);
          scatter_rows(t, cols, n, 1, gr * Og, Og, j0, cols, out);
          continue;
        }
        for (int h = 0; h < Og; h += rows) {  // straight into y (and y2)
          const int c = gr * Og + h;
          float* dst = out.plane(n, c) + j0;
          if (b) fill_bias(b + c, rows, cols, dst, P);
          gemm(false, false, rows, cols, Kg, 1.f, w + std::int64_t(c) * Kg, Kg, cg, cols,
               b ? 1.f : 0.f, dst, Ip);
        }
      }
    }
  });
}

}  // namespace

void conv_forward(const ConvGeom& g, const float* x, const float* w, const float* b, float* y,
                  const float* wino_u) {
  forward_into(g, x, w, b, OutPlanes{y, nullptr, g.O, g.cout_per_group(), g.out_plane()}, wino_u);
}

void conv_forward_pair(const ConvGeom& g, const float* x, const float* w, const float* b, float* y,
                       float* y2, const float* wino_u) {
  require_conv_pair(g);
  forward_into(g, x, w, b, OutPlanes{y, y2, g.O, g.cout_per_group(), g.out_plane()}, wino_u);
}

void conv_backward_data(const ConvGeom& g, const float* dy, const float* w, float* dx,
                        const BackwardFusion& f, const float* wino_u) {
  if (winograd_applies(g, true)) return winograd_backward_data(g, dy, w, dx, f, wino_u);
  const std::int64_t P = g.out_plane(), HW = g.in_plane();
  const int Og = g.cout_per_group(), Kg = int(g.k_per_group()), Ip = int(P);
  const std::int64_t wg_stride = std::int64_t(Og) * Kg;
  const std::int64_t in_img = std::int64_t(g.C) * HW, out_img = std::int64_t(g.O) * P;
  auto finish = [&](int n) {  // the fused product with `times`, while the image is in cache
    if (f.times)
      scale_by(dx + n * in_img, f.times + n * in_img, f.add ? f.add + n * in_img : nullptr, in_img,
               f.nonfinite);
  };
  if (pointwise_per_image(g)) {  // dx plane = W^T dy directly; whole images per thread
    parallel_units(g.N, [&](int n, Scratch& sc) {
      const float* sig = dy + n * out_img;
      if (f.z) {
        float* s = sc.get(0, out_img);
        // by channel rows, so that a lone image's quotient spreads over the pool
        signal_rows(sig, f.z + n * out_img, f.eps, g.O, P, P, s, P);
        sig = s;
      }
      float* dxn = dx + n * in_img;
      // strided: the product's (C, P) columns, then spread to the kept pixels (col2im)
      float* cols = g.pointwise() ? dxn : sc.get(1, std::int64_t(g.C) * P);
      for (int gr = 0; gr < g.group; ++gr)
        gemm(true, false, Kg, Ip, Og, 1.f, w + gr * wg_stride, Kg, sig + std::int64_t(gr) * Og * P,
             Ip, 0.f, cols + std::int64_t(gr) * Kg * P, Ip);
      if (!g.pointwise()) spread(g, cols, dxn);
      finish(n);
    });
    return;
  }
  const Blocking bl = plan(g);
  const std::int64_t K = g.k_total();
  if (bl.images > 1) {  // gather dy of nb images into (O, nb*P), one gemm per group, col2im each
    const std::int64_t ld = std::int64_t(bl.images) * P;
    for_units(g, bl, [&](int n0, int nb, Scratch& sc) {
      float* col = sc.get(0, K * ld);
      float* tmp = sc.get(1, std::int64_t(g.O) * ld);
      const int cols = int(nb * P);
      gather_signal(dy + n0 * out_img, f.z ? f.z + n0 * out_img : nullptr, f.eps, nb, g.O, P,
                    tmp, ld);
      for (int gr = 0; gr < g.group; ++gr)
        gemm(true, false, Kg, cols, Og, 1.f, w + gr * wg_stride, Kg, tmp + gr * Og * ld, int(ld),
             0.f, col + std::int64_t(gr) * Kg * ld, int(ld));
      zero(dx + n0 * in_img, nb * in_img);
      for (int i = 0; i < nb; ++i) {
        col2im(g, col + i * P, ld, 0, g.Ho, dx + (n0 + i) * in_img);
        finish(n0 + i);
      }
    });
    return;
  }
  for_units(g, bl, [&](int n, int, Scratch& sc) {
    float* col = sc.get(0, K * std::int64_t(bl.rows) * g.Wo);
    const float* dyn = dy + n * out_img;
    float* dxn = dx + n * in_img;
    zero(dxn, in_img);
    for (int oh0 = 0; oh0 < g.Ho; oh0 += bl.rows) {
      const int oh1 = std::min(g.Ho, oh0 + bl.rows);
      const int cols = (oh1 - oh0) * g.Wo;
      const float* sig = dyn + std::int64_t(oh0) * g.Wo;
      std::int64_t ld = P;
      if (f.z) {  // this block's signal, (O, cols)
        float* s = sc.get(1, std::int64_t(g.O) * cols);
        signal_rows(sig, f.z + n * out_img + std::int64_t(oh0) * g.Wo, f.eps, g.O, cols, P, s, cols);
        sig = s, ld = cols;
      }
      for (int gr = 0; gr < g.group; ++gr)
        gemm(true, false, Kg, cols, Og, 1.f, w + gr * wg_stride, Kg, sig + gr * Og * ld, int(ld),
             0.f, col + std::int64_t(gr) * Kg * cols, cols);
      col2im(g, col, cols, oh0, oh1, dxn);
    }
    finish(n);
  });
}

}  // namespace cpu
}  // namespace lrpfast

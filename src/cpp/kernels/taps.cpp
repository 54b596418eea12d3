#include "kernels/taps.hpp"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "kernels/parallel.hpp"
#include "kernels/streamed.hpp"
#include "kernels/winograd.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define LRPFAST_TAPS_X86 1
#else
#define LRPFAST_TAPS_X86 0
#endif

namespace lrpfast {
namespace cpu {
namespace {

using i64 = std::int64_t;

// Under Auto, groups of at most this many input channels take the taps path (RGB and RGBA
// first layers). Taps against im2col + OpenBLAS at batch 1 (Xeon with AVX-512, 2 threads):
// 3 channels, 7x7 stride 2 to 64 at 224x224 0.80 vs 1.37 ms, 3x3 to 64 at 112x112 0.36 vs
// 0.59 ms; 6 to 8 channels still won (0.41-0.43 vs 0.55-0.78 ms) but wider groups lost or
// tied on some shapes (16 channels, 3x3 at 112x112: 1.60 vs 1.33 ms; 256 channels, 3x3
// stride 2: 11.4 vs 8.7 ms at batch 8), where the weights of one tile no longer stay in L1.
constexpr int kTapsMaxChannels = 4;
// Output channels per register tile (the weights' packing unit) and most vectors along a row.
constexpr int kOB512 = 8, kNV512 = 3;  // 24 of AVX-512's 32 registers
constexpr int kOB256 = 6, kNV256 = 2;  // 12 of AVX2 + FMA's 16

// One register tile: OB output channels x nv vectors of one output row, from column ow on.
// src[t]: tap t's input row (phase-split, see taps.hpp) at output column 0; wp: (T, OB) weights;
// bias: OB values the chains start from; dst[o]: channel o's output row; cols: lanes to store.
using Tile = void (*)(int T, const float* const* src, int ow, const float* wp, const float* bias,
                      float* const* dst, int cols);

#if LRPFAST_TAPS_X86
// A lane count's partial store: the first n (< lanes) lanes of v to d.
__attribute__((target("avx512f"))) inline void store_part_avx512(float* d, __m512 v, int n) {
  _mm512_mask_storeu_ps(d, __mmask16((1u << n) - 1), v);
}

__attribute__((target("avx2"))) inline void store_part_avx2(float* d, __m256 v, int n) {
  alignas(32) static const int kLanes[16] = {-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0};
  _mm256_maskstore_ps(d, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(kLanes + 8 - n)), v);
}

// The tile (see Tile), written once for both instruction sets: VEC the vector type, L its
// lanes, then its unaligned load, broadcast, fused multiply-add and store.
#define LRPFAST_TAPS_TILE(SUFFIX, ATTR, VEC, L, LOAD, SET1, FMA, STORE)                         \
  template <int OB, int NV>                                                                    \
  ATTR void tile_##SUFFIX(int T, const float* const* src, int ow, const float* wp,             \
                          const float* bias, float* const* dst, int cols) {                    \
    VEC acc[OB][NV];                                                                           \
    _Pragma("GCC unroll 16") for (int o = 0; o < OB; ++o)                                      \
      _Pragma("GCC unroll 4") for (int v = 0; v < NV; ++v) acc[o][v] = SET1(bias[o]);          \
    for (int t = 0; t < T; ++t) {                                                              \
      const float* s = src[t] + ow;                                                            \
      VEC xv[NV];                                                                              \
      _Pragma("GCC unroll 4") for (int v = 0; v < NV; ++v) xv[v] = LOAD(s + L * v);            \
      const float* wt = wp + i64(t) * OB;                                                      \
      _Pragma("GCC unroll 16") for (int o = 0; o < OB; ++o) {                                  \
        const VEC wv = SET1(wt[o]);                                                            \
        _Pragma("GCC unroll 4") for (int v = 0; v < NV; ++v) acc[o][v] =                       \
            FMA(xv[v], wv, acc[o][v]);                                                         \
      }                                                                                        \
    }                                                                                          \
    _Pragma("GCC unroll 16") for (int o = 0; o < OB; ++o)                                      \
      _Pragma("GCC unroll 4") for (int v = 0; v < NV; ++v) {                                   \
        const int n = cols - L * v;                                                            \
        float* d = dst[o] + ow + L * v;                                                        \
        if (n >= L)                                                                            \
          STORE(d, acc[o][v]);                                                                 \
        else if (n > 0)                                                                        \
          store_part_##SUFFIX(d, acc[o][v], n);                                                \
      }                                                                                        \
  }

LRPFAST_TAPS_TILE(avx512, __attribute__((target("avx512f"))), __m512, 16, _mm512_loadu_ps,
                  _mm512_set1_ps, _mm512_fmadd_ps, _mm512_storeu_ps)
LRPFAST_TAPS_TILE(avx2, __attribute__((target("avx2,fma"))), __m256, 8, _mm256_loadu_ps,
                  _mm256_set1_ps, _mm256_fmadd_ps, _mm256_storeu_ps)
#undef LRPFAST_TAPS_TILE

bool cpu_has_avx2_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#endif

// The kernels the SIMD setting allows on this CPU: lanes per vector (0: none), channels per tile,
// and the tiles by vector count (tiles[nv - 1], nv = 1 .. nv_max).
struct Kernels {
  int lanes = 0, ob = 1, nv_max = 1;
  Tile tiles[3] = {nullptr, nullptr, nullptr};
};

Kernels kernels() {
  Kernels k;
#if LRPFAST_TAPS_X86
  const char* s = simd_kernels();
  if (std::strcmp(s, "avx512") == 0) {
    k.lanes = 16, k.ob = kOB512, k.nv_max = kNV512;
    k.tiles[0] = tile_avx512<kOB512, 1>;
    k.tiles[1] = tile_avx512<kOB512, 2>;
    k.tiles[2] = tile_avx512<kOB512, 3>;
  } else if (std::strcmp(s, "avx2") == 0 && cpu_has_avx2_fma()) {
    k.lanes = 8, k.ob = kOB256, k.nv_max = kNV256;
    k.tiles[0] = tile_avx2<kOB256, 1>;
    k.tiles[1] = tile_avx2<kOB256, 2>;
  }
#endif
  return k;
}

}  // namespace

bool taps_applies(const ConvGeom& g) {
  const ConvAlgo a = conv_algo();
  if (a == ConvAlgo::Direct || a == ConvAlgo::Winograd || g.N == 0) return false;
  if (kernels().lanes == 0) return false;
  if (a == ConvAlgo::Taps) return true;
  return g.cin_per_group() <= kTapsMaxChannels;
}

void taps_forward(const ConvGeom& g, const float* x, const float* w, const float* b,
                  const OutPlanes& out) {
  const Kernels k = kernels();
  const int L = k.lanes, OB = k.ob;
  const int Cg = g.cin_per_group(), Og = g.cout_per_group(), T = int(g.k_per_group());
  const int nob = (Og + OB - 1) / OB;  // register tiles of output channels per group
  const int Wl = (g.Wo + L - 1) / L * L;  // lanes computed per output row
  // phase-split rows: Mw elements per phase, enough for every tap's vectors
  const int Mw = Wl + ((g.kw - 1) * g.dw) / g.sw;
  const i64 row_len = i64(g.sw) * Mw;  // one input row, all its phases
  const i64 split_size = i64(g.C) * g.H * row_len;

  // weights (group, tile, tap, OB) and biases (group, tile, OB); channels past Og are zeros
  std::vector<float> wp(std::size_t(g.group) * nob * T * OB, 0.f);
  std::vector<float> bp(std::size_t(g.group) * nob * OB, 0.f);
  for (int gr = 0; gr < g.group; ++gr)
    for (int j = 0; j < Og; ++j) {
      const int c = gr * Og + j, tile = gr * nob + j / OB, lane = j % OB;
      const float* wr = w + i64(c) * T;
      float* dst = wp.data() + i64(tile) * T * OB + lane;
      for (int t = 0; t < T; ++t) dst[i64(t) * OB] = wr[t];
      if (b) bp[std::size_t(tile) * OB + lane] = b[c];
    }

  const i64 items = i64(g.group) * g.Ho * nob;  // (group, output row, channel tile)
  parallel_units(g.N, [&](int n, Scratch& sc) {
    float* xs = sc.get(0, split_size + Mw);
    float* zeros = xs + split_size;  // the padding rows above and below the image
    std::fill_n(zeros, Mw, 0.f);
    const float* xn = x + i64(n) * g.C * g.in_plane();
    parallel_for(i64(g.C) * g.H, split_size, [&](i64 r0, i64 r1) {
      for (i64 r = r0; r < r1; ++r) {  // r = c * H + ih
        const float* src = xn + r * g.W;
        float* dst = xs + r * row_len;
        for (int p = 0; p < g.sw; ++p, dst += Mw) {
          // element m is column m*sw + p - pw: inside the row for m in [m0, m1)
          const int m0 = std::min(Mw, (g.pw - p + g.sw - 1) / g.sw);
          const int m1 = std::max(m0, std::min<int>(Mw, (g.W + g.pw - p + g.sw - 1) / g.sw));
          std::fill(dst, dst + m0, 0.f);
          const float* s = src + (i64(m0) * g.sw + p - g.pw);
          if (g.sw == 1)
            std::memcpy(dst + m0, s, sizeof(float) * std::size_t(m1 - m0));
          else
            for (int m = m0; m < m1; ++m) dst[m] = s[i64(m - m0) * g.sw];
          std::fill(dst + m1, dst + Mw, 0.f);
        }
      }
    });
    parallel_for(items, items * Wl * OB, [&](i64 i0, i64 i1) {
      std::vector<const float*> src(static_cast<std::size_t>(T));
      std::vector<float> spare(static_cast<std::size_t>(Wl));  // where a tile's channels past Og go
      float* dst[kOB512 > kOB256 ? kOB512 : kOB256];
      i64 row_of_src = -1;
      for (i64 it = i0; it < i1; ++it) {
        const int tile = int(it % nob), oh = int((it / nob) % g.Ho), gr = int(it / (i64(nob) * g.Ho));
        if (it / nob != row_of_src) {  // this output row's tap rows
          row_of_src = it / nob;
          int t = 0;
          for (int c = gr * Cg; c < (gr + 1) * Cg; ++c)
            for (int ki = 0; ki < g.kh; ++ki) {
              const int ih = oh * g.sh - g.ph + ki * g.dh;
              const bool inside = ih >= 0 && ih < g.H;
              const float* row = xs + (i64(c) * g.H + ih) * row_len;
              for (int kj = 0; kj < g.kw; ++kj, ++t) {
                const int col = kj * g.dw;
                src[std::size_t(t)] = inside ? row + i64(col % g.sw) * Mw + col / g.sw : zeros;
              }
            }
        }
        for (int o = 0; o < OB; ++o) {
          const int j = tile * OB + o;
          dst[o] = j < Og ? out.plane(n, gr * Og + j) + i64(oh) * g.Wo : spare.data();
        }
        const float* wt = wp.data() + i64(gr * nob + tile) * T * OB;
        const float* bt = bp.data() + i64(gr * nob + tile) * OB;
        // the row's vectors in blocks of nv_max or fewer, as even as they go (4 -> 2 + 2, not
        // 3 + 1: a one-vector tile loads nearly as much as it computes)
        const int vecs = Wl / L, blocks = (vecs + k.nv_max - 1) / k.nv_max;
        for (int blk = 0, ow = 0; blk < blocks; ++blk) {
          const int nv = (vecs * (blk + 1)) / blocks - (vecs * blk) / blocks;
          k.tiles[nv - 1](T, src.data(), ow, wt, bt, dst, std::min(nv * L, g.Wo - ow));
          ow += nv * L;
        }
      }
    });
  });
}

}  // namespace cpu
}  // namespace lrpfast

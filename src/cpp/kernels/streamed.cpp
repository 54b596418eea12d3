#include "kernels/streamed.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "kernels/check.hpp"
#include "kernels/gemm.hpp"
#include "kernels/parallel.hpp"
#include "kernels/setting.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define LRPFAST_STREAMED_AVX512 1
#else
#define LRPFAST_STREAMED_AVX512 0
#endif

namespace lrpfast {
namespace {

using i64 = std::int64_t;

LinearAlgo algo_from_env() {
  const char* s = std::getenv("LRPFAST_LINEAR_ALGO");
  if (s && std::strcmp(s, "blas") == 0) return LinearAlgo::Blas;
  if (s && std::strcmp(s, "streamed") == 0 && streamed_native()) return LinearAlgo::Streamed;
  return LinearAlgo::Auto;
}

// nn computes C in blocks of at most this many rows.
constexpr int kMBlock = 256;
// Multiply-adds per element-cost of parallel_for's work measure: products under 2^21
// multiply-adds (kParallelGrain * 64, ~40 us on one core) run on the calling thread only.
constexpr std::int64_t kMaddsPerElement = 64;

// dst[c*ldd + r] = src[r*lds + c] for r < rows, c < cols, in 32 x 32 blocks (both sides touch
// whole cache lines).
void transpose(int rows, int cols, const float* src, i64 lds, float* dst, i64 ldd) {
  constexpr int kB = 32;
  for (int r0 = 0; r0 < rows; r0 += kB)
    for (int c0 = 0; c0 < cols; c0 += kB) {
      const int r1 = std::min(rows, r0 + kB), c1 = std::min(cols, c0 + kB);
      for (int r = r0; r < r1; ++r)
        for (int c = c0; c < c1; ++c) dst[c * ldd + r] = src[r * lds + c];
    }
}

// A (M x K) transposed into K x ld (ld >= M, zero-padded): the tiles' broadcasts (nn) or vector
// loads (nt) then walk it in order.
std::vector<float> transpose_a(int M, int K, const float* A, int lda, int ld) {
  std::vector<float> at(std::size_t(K) * ld, 0.f);
  transpose(M, K, A, lda, at.data(), ld);
  return at;
}

#if LRPFAST_STREAMED_AVX512
#define LRPFAST_AVX512 __attribute__((target("avx512f")))

bool has_avx512() {
  static const bool has = __builtin_cpu_supports("avx512f");
  return has;
}

// ---- nn: C = A B, vectors along the columns of B and C --------------------------------------
// Register tile: kTileM rows of A by one strip of kStrip = 64 columns (four vectors): 24
// accumulators. B is walked in tiles of kRowsNN rows by one strip (16 KiB, packed into L1 and
// reused by every row tile of A), C in column blocks of about kCBlock floats (kept in L2).
constexpr int kTileM = 6, kStrip = 64, kRowsNN = 64;
constexpr i64 kCBlock = i64(1) << 16;

// C[0..MT) x strip = (first ? 0 : C) + sum over r < rows of a[m*lda + r] bt[r, :], one FMA per
// r in order. `mask` covers the strip's columns (fewer than 64 at the right edge of C).
template <int MT>
LRPFAST_AVX512 void nn_tile(int rows, const float* a, int lda, const float* bt, float* C, int ldc,
                            const __mmask16* mask, bool first) {
  const __mmask16 k0 = mask[0], k1 = mask[1], k2 = mask[2], k3 = mask[3];
  __m512 acc[MT][4];
#pragma GCC unroll 6
  for (int m = 0; m < MT; ++m) {
    const float* c = C + i64(m) * ldc;
    acc[m][0] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(k0, c);
    acc[m][1] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(k1, c + 16);
    acc[m][2] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(k2, c + 32);
    acc[m][3] = first ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(k3, c + 48);
  }
  for (int r = 0; r < rows; ++r, bt += kStrip, ++a) {
    const __m512 b0 = _mm512_loadu_ps(bt), b1 = _mm512_loadu_ps(bt + 16);
    const __m512 b2 = _mm512_loadu_ps(bt + 32), b3 = _mm512_loadu_ps(bt + 48);
#pragma GCC unroll 6
    for (int m = 0; m < MT; ++m) {
      const __m512 av = _mm512_set1_ps(a[i64(m) * lda]);
      acc[m][0] = _mm512_fmadd_ps(av, b0, acc[m][0]);
      acc[m][1] = _mm512_fmadd_ps(av, b1, acc[m][1]);
      acc[m][2] = _mm512_fmadd_ps(av, b2, acc[m][2]);
      acc[m][3] = _mm512_fmadd_ps(av, b3, acc[m][3]);
    }
  }
#pragma GCC unroll 6
  for (int m = 0; m < MT; ++m) {
    float* c = C + i64(m) * ldc;
    _mm512_mask_storeu_ps(c, k0, acc[m][0]);
    _mm512_mask_storeu_ps(c + 16, k1, acc[m][1]);
    _mm512_mask_storeu_ps(c + 32, k2, acc[m][2]);
    _mm512_mask_storeu_ps(c + 48, k3, acc[m][3]);
  }
}

// bt (rows x 64) = B's rows 0 .. rows-1, the columns under `mask` (0 elsewhere); prefetches the
// same rows of the next strip, which the next call packs.
LRPFAST_AVX512 void nn_pack(int rows, const float* B, int ldb, const __mmask16* mask, float* bt) {
  for (int r = 0; r < rows; ++r, B += ldb, bt += kStrip) {
#pragma GCC unroll 4
    for (int q = 0; q < 4; ++q) {
      _mm_prefetch(reinterpret_cast<const char*>(B + kStrip + 16 * q), _MM_HINT_T0);
      _mm512_storeu_ps(bt + 16 * q, _mm512_maskz_loadu_ps(mask[q], B + 16 * q));
    }
  }
}

// The same tile as nn_pack from B given transposed: bt[r, c] = Bt[c, r] (Bt's rows 0 .. 63 at
// stride ldb; `cols` of them valid, 0 past), prefetching the next strip's rows.
LRPFAST_AVX512 void nn_pack_t(int rows, const float* Bt, int ldb, int cols, float* bt) {
  for (int c = 0; c < kStrip; ++c) {
    const float* src = Bt + i64(c) * ldb;
    if (c >= cols) {
      for (int r = 0; r < rows; ++r) bt[r * kStrip + c] = 0.f;
      continue;
    }
    for (int r = 0; r < rows; r += 16)
      _mm_prefetch(reinterpret_cast<const char*>(src + i64(kStrip) * ldb + r), _MM_HINT_T0);
    for (int r = 0; r < rows; ++r) bt[r * kStrip + c] = src[r];
  }
}

// Columns [j0, j1) of C = A B; with b_trans, B is given transposed (N x K, row stride ldb).
// Blocks of C of up to kMBlock rows and about kCBlock floats stay in L2 while K is walked.
LRPFAST_AVX512 void nn_columns(int M, int j0, int j1, int K, const float* A, int lda,
                               const float* B, int ldb, bool b_trans, float* C, int ldc) {
  std::vector<float> tile(std::size_t(kRowsNN) * kStrip);
  float* bt = tile.data();
  const int block = int(std::max<i64>(kStrip, kCBlock / std::min(M, kMBlock) / kStrip * kStrip));
  for (int jb = j0; jb < j1; jb += block) {
    const int je = std::min(j1, jb + block);
    for (int mb = 0; mb < M; mb += kMBlock) {
      const int me = std::min(M, mb + kMBlock);
      for (int r0 = 0; r0 < K; r0 += kRowsNN) {
        const int rows = std::min(K - r0, kRowsNN);
        for (int j = jb; j < je; j += kStrip) {
          __mmask16 mask[4];
          for (int q = 0; q < 4; ++q)
            mask[q] = __mmask16((1u << std::clamp(je - j - 16 * q, 0, 16)) - 1u);
          if (b_trans) nn_pack_t(rows, B + i64(j) * ldb + r0, ldb, std::min(kStrip, je - j), bt);
          else nn_pack(rows, B + i64(r0) * ldb + j, ldb, mask, bt);
          for (int m = mb; m < me; m += kTileM) {
            float* c = C + i64(m) * ldc + j;
            const float* a = A + i64(m) * lda + r0;
            const bool first = r0 == 0;
            switch (std::min(kTileM, me - m)) {
              case 6: nn_tile<6>(rows, a, lda, bt, c, ldc, mask, first); break;
              case 5: nn_tile<5>(rows, a, lda, bt, c, ldc, mask, first); break;
              case 4: nn_tile<4>(rows, a, lda, bt, c, ldc, mask, first); break;
              case 3: nn_tile<3>(rows, a, lda, bt, c, ldc, mask, first); break;
              case 2: nn_tile<2>(rows, a, lda, bt, c, ldc, mask, first); break;
              default: nn_tile<1>(rows, a, lda, bt, c, ldc, mask, first); break;
            }
          }
        }
      }
    }
  }
}

// ---- nt: C = A B^T, vectors along the rows of A (the batch) ---------------------------------
// Register tile: 16 rows of B (outputs o) by 16 rows of A (lanes): 16 accumulators, acc[j] lane
// i = C[n0 + i, o0 + j]. B is walked in tiles of 16 rows by kColsNT columns (packed into L1:
// broadcasts at fixed offsets), k-block by k-block; the partial sums wait in P between blocks.
constexpr int kTileO = 16, kColsNT = 256;
// Floats of `at` per k chunk (256 KiB, in L2 while every tile of outputs passes over it).
constexpr i64 kChunkNT = i64(1) << 16;
// Beyond this many rows of A, C = A B^T runs as nn on column blocks of B transposed.
constexpr int kMaxRowsNT = 128;

// P tile (16 outputs x 16 lanes) = (first ? 0 : P) + sum over k < kb of bt[j, k] at[k, :].
// With `pf`, one cache line per k of the next tile of B (16 rows at stride ldb from pf) is
// prefetched, spread over the work.
template <bool kPrefetch>
LRPFAST_AVX512 void nt_tile(int kb, const float* at, int ld, const float* bt, float* P, bool first,
                            const float* pf, int ldb) {
  __m512 acc[kTileO];
#pragma GCC unroll 16
  for (int j = 0; j < kTileO; ++j)
    acc[j] = first ? _mm512_setzero_ps() : _mm512_loadu_ps(P + 16 * j);
  for (int k = 0; k < kb; ++k, at += ld, ++bt) {
    if (kPrefetch)
      _mm_prefetch(reinterpret_cast<const char*>(pf + i64(k >> 4) * ldb + ((k & 15) << 4)),
                   _MM_HINT_T0);
    const __m512 av = _mm512_loadu_ps(at);
#pragma GCC unroll 16
    for (int j = 0; j < kTileO; ++j)
      acc[j] = _mm512_fmadd_ps(_mm512_set1_ps(bt[j * kColsNT]), av, acc[j]);
  }
#pragma GCC unroll 16
  for (int j = 0; j < kTileO; ++j) _mm512_storeu_ps(P + 16 * j, acc[j]);
}

// bt (16 x kColsNT) = B's rows 0 .. 15 (0 past `rows`), columns 0 .. kb-1.
LRPFAST_AVX512 void nt_pack(int rows, int kb, const float* B, int ldb, float* bt) {
  const __mmask16 tail = __mmask16((1u << (kb % 16)) - 1u);
  for (int j = 0; j < kTileO; ++j, bt += kColsNT) {
    const float* src = B + i64(j) * ldb;
    if (j >= rows) {
      std::fill(bt, bt + kb, 0.f);
      continue;
    }
    int k = 0;
    for (; k + 16 <= kb; k += 16) _mm512_storeu_ps(bt + k, _mm512_loadu_ps(src + k));
    if (tail) _mm512_mask_storeu_ps(bt + k, tail, _mm512_maskz_loadu_ps(tail, src + k));
  }
}

// Rows [o_lo, o_hi) of B (columns of C) of C = A B^T, A given transposed (at: K x ld, ld a
// multiple of 16 >= M, zero-padded). k is cut into chunks whose part of `at` stays in L2; within
// a chunk, each tile of 16 outputs walks its rows of B from left to right.
LRPFAST_AVX512 void nt_outputs(int M, int N, int o_lo, int o_hi, int K, const float* at, int ld,
                               const float* B, int ldb, float* C, int ldc) {
  std::vector<float> tile(std::size_t(kTileO) * kColsNT);
  std::vector<float> P(std::size_t(o_hi - o_lo + kTileO - 1) / kTileO * kTileO * ld);
  const int chunk = int(std::clamp<i64>(kChunkNT / ld / kColsNT * kColsNT, kColsNT, K));
  for (int c0 = 0; c0 < K; c0 += chunk) {
    const int c1 = std::min(K, c0 + chunk);
    for (int o0 = o_lo; o0 < o_hi; o0 += kTileO) {
      float* p = P.data() + std::size_t(o0 - o_lo) * ld;
      const float* rows = B + i64(o0) * ldb;
      for (int k0 = c0; k0 < c1; k0 += kColsNT) {
        const int kb = std::min(c1 - k0, kColsNT);
        const float* next = k0 + kb < c1 ? rows + k0 + kb : rows + i64(kTileO) * ldb + c0;
        nt_pack(std::min(kTileO, N - o0), kb, rows + k0, ldb, tile.data());
        for (int n0 = 0; n0 < ld; n0 += 16) {
          const float* a = at + i64(k0) * ld + n0;
          float* pt = p + std::size_t(n0) * kTileO;
          if (n0 == 0) nt_tile<true>(kb, a, ld, tile.data(), pt, k0 == 0, next, ldb);
          else nt_tile<false>(kb, a, ld, tile.data(), pt, k0 == 0, nullptr, ldb);
        }
      }
    }
  }
  // P holds, per tile of 16 outputs, 16-lane vectors: P[(o0 - o_lo)*ld + n0*16 + j*16 + i]
  for (int o0 = o_lo; o0 < o_hi; o0 += kTileO) {
    const float* p = P.data() + std::size_t(o0 - o_lo) * ld;
    const int nj = std::min(kTileO, N - o0);
    for (int n = 0; n < M; ++n) {
      const float* src = p + std::size_t(n / 16) * 16 * kTileO + n % 16;
      float* dst = C + i64(n) * ldc + o0;
      for (int j = 0; j < nj; ++j) dst[j] = src[16 * j];
    }
  }
}
#endif

}  // namespace

bool streamed_native() {
#if LRPFAST_STREAMED_AVX512
  return has_avx512();
#else
  return false;
#endif
}

namespace {
Setting<LinearAlgo> g_algo(algo_from_env);
}  // namespace

void set_linear_algo(LinearAlgo a) {
  require(a != LinearAlgo::Streamed || streamed_native(),
          "the streamed fully connected kernels need a CPU with AVX-512 (this one has none)");
  g_algo.set(a);
}

LinearAlgo linear_algo() { return g_algo.get(); }

namespace {

bool use_streamed() { return streamed_native() && linear_algo() != LinearAlgo::Blas; }

// C = A op(B) with the streamed kernels (op(B) = B^T when b_trans): nt for a few rows of A, nn
// otherwise. Both compute every element as the same chain of FMAs (k in order, from 0), so
// the choice -- made on M -- never changes a row's result.
void streamed(int M, int N, int K, const float* A, int lda, const float* B, int ldb, bool b_trans,
              float* C, int ldc) {
#if LRPFAST_STREAMED_AVX512
  // tiles (nt) or strips (nn) in contiguous ranges over the pool: the arithmetic of one does
  // not depend on the split
  const i64 work = i64(M) * N * K / kMaddsPerElement;
  if (b_trans && M <= kMaxRowsNT) {
    const int ld = (M + 15) / 16 * 16;
    const std::vector<float> at = transpose_a(M, K, A, lda, ld);
    const int tiles = (N + kTileO - 1) / kTileO;
    parallel_for(tiles, work, [&](i64 lo, i64 hi) {
      nt_outputs(M, N, int(lo) * kTileO, std::min<i64>(N, hi * kTileO), K, at.data(), ld, B, ldb,
                 C, ldc);
    });
    return;
  }
  const int strips = (N + kStrip - 1) / kStrip;
  parallel_for(strips, work, [&](i64 lo, i64 hi) {
    nn_columns(M, int(lo) * kStrip, std::min<i64>(N, hi * kStrip), K, A, lda, B, ldb, b_trans, C,
               ldc);
  });
#endif
}

}  // namespace

void gemm_streamed_nn(int M, int N, int K, const float* A, int lda, const float* B, int ldb,
                      float* C, int ldc) {
  if (M <= 0 || N <= 0) return;
  if (K > 0 && use_streamed()) return streamed(M, N, K, A, lda, B, ldb, false, C, ldc);
  gemm(false, false, M, N, K, 1.f, A, lda, B, ldb, 0.f, C, ldc);
}

void gemm_streamed_nt(int M, int N, int K, const float* A, int lda, const float* B, int ldb,
                      float* C, int ldc) {
  if (M <= 0 || N <= 0) return;
  if (K > 0 && use_streamed()) return streamed(M, N, K, A, lda, B, ldb, true, C, ldc);
  gemm(false, true, M, N, K, 1.f, A, lda, B, ldb, 0.f, C, ldc);
}

}  // namespace lrpfast

#include "kernels/streamed.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <type_traits>
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
  if (s && std::strcmp(s, "streamed") == 0) return LinearAlgo::Streamed;
  return LinearAlgo::Auto;
}

// The small-row nt kernels read 16 (AVX-512) or 8 (AVX2) rows of B side by side, 64 or 32 bytes
// of each per step. On Intel's cores the hardware prefetchers do not keep that many streams fed
// from L3: prefetching each row 256 floats (1 KiB) ahead read CaffeNet's fc6 (151 MB) at 44
// instead of 35 GB/s on 2 threads with AVX-512 and at 28 instead of 18-20 GB/s with AVX2 (Xeon
// with AVX-512 and AMX, L3-resident weights); the AVX-512 kernel then matches MKL's sgemv. On
// AMD's Zen 4 the AVX-512 kernel ran best without it (software prefetch cost 15-20% there). So
// the default is 256 on Intel, 0 elsewhere; LRPFAST_NT_PREFETCH=<floats> (0 = none) overrides
// it. Prefetching changes no arithmetic.
int prefetch_from_env() {
  if (const char* s = std::getenv("LRPFAST_NT_PREFETCH")) {
    char* end = nullptr;
    const long v = std::strtol(s, &end, 10);
    if (end != s && *end == '\0' && v >= 0 && v <= (1 << 20)) return int(v);
  }
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  if (__builtin_cpu_is("intel")) return 256;
#endif
  return 0;
}

Setting<int> g_prefetch(prefetch_from_env);

// Beyond this many rows of A, C = A B^T runs as nn on column blocks of B transposed (AVX-512), or
// as nt on blocks of this many rows (portable kernels).
constexpr int kMaxRowsNT = 128;
// Up to this many rows of A, small_rows runs the products: C = A B^T with the outputs in the
// vector lanes, C = A B with blocks of kSmallCols columns of C kept in cache (32 KiB a row, L2
// for 4 rows): B's rows are read in runs this long, which the hardware prefetcher follows (runs
// of 1024 columns read fc6 at 21-23 GB/s on 2 threads here, 8192 at 29-31; same bits).
// AVX-512's nt (32 registers: 8 accumulators beside the 16 transposed rows) takes up to 8 rows
// this way, against the batch kernels at 5-8 rows: VGG-16's fc6 forward 13-20 ms instead of
// 26-35, CaffeNet's 7.3 instead of 9.3 (same bits). nn, and AVX2 (16 registers), up to 4: the
// sweep's loads and stores of C outweigh its gain beyond (fc8 at 8 rows: 1.4 vs 0.7 ms).
constexpr int kSmallM = 4;
constexpr int kSmallM512 = 8;
constexpr int kSmallCols = 8192;
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

// bt (rows x 64) = columns j .. j+63 of B's rows brow[0 .. rows), those under `mask` (0
// elsewhere); prefetches the same rows of the next strip, which the next call packs.
LRPFAST_AVX512 void nn_pack(int rows, const float* const* brow, int j, const __mmask16* mask,
                            float* bt) {
  for (int r = 0; r < rows; ++r, bt += kStrip) {
    const float* B = brow[r] + j;
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

// Columns [j0, j1) of C = A B, B's K rows at brow[0 .. K); with b_trans, B is given transposed
// instead (N x K, row stride ldb; brow unused). Blocks of C of up to kMBlock rows and about
// kCBlock floats stay in L2 while K is walked.
LRPFAST_AVX512 void nn_columns(int M, int j0, int j1, int K, const float* A, int lda,
                               const float* B, int ldb, const float* const* brow, bool b_trans,
                               float* C, int ldc) {
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
          else nn_pack(rows, brow + r0, j, mask, bt);
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

// ---- nt for a few rows of A: outputs in the lanes ---------------------------------------------
// With M <= kSmallM512 rows of A, the batch-in-lanes tile above leaves most lanes empty (15 of 16
// at M = 1). Here the 16 lanes are 16 outputs: B's 16 rows are read 16 columns at a time, transposed
// in registers (lane j of v[k] = B[o0 + j, k0 + k]) and each of the M accumulators takes one FMA
// per k in order -- the same chain per element as nt_tile, so the same bits.

// v[c] (lane j) = r[j][c]: the 16 x 16 block r (row j = 16 consecutive floats of B's row o0 + j)
// transposed, in 64 shuffles.
LRPFAST_AVX512 inline void transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {  // per 128-bit lane: t[2i] = a0 b0 a1 b1, t[2i+1] = a2 b2 a3 b3
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int g = 0; g < 4; ++g)  // r[4g + e], per 128-bit lane L: rows 4g .. 4g+3 of column 4L + e
    for (int h = 0; h < 2; ++h) {
      const __m512d a = _mm512_castps_pd(t[4 * g + h]), b = _mm512_castps_pd(t[4 * g + 2 + h]);
      r[4 * g + 2 * h] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
      r[4 * g + 2 * h + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
    }
  for (int e = 0; e < 4; ++e) {  // gather lane L of r[e], r[4+e], r[8+e], r[12+e]: column 4L + e
    const __m512 lo02 = _mm512_shuffle_f32x4(r[e], r[4 + e], 0x88);    // lanes 0, 2 of each
    const __m512 hi02 = _mm512_shuffle_f32x4(r[8 + e], r[12 + e], 0x88);
    const __m512 lo13 = _mm512_shuffle_f32x4(r[e], r[4 + e], 0xdd);    // lanes 1, 3 of each
    const __m512 hi13 = _mm512_shuffle_f32x4(r[8 + e], r[12 + e], 0xdd);
    t[e] = _mm512_shuffle_f32x4(lo02, hi02, 0x88);        // column e
    t[8 + e] = _mm512_shuffle_f32x4(lo02, hi02, 0xdd);    // column 8 + e
    t[4 + e] = _mm512_shuffle_f32x4(lo13, hi13, 0x88);    // column 4 + e
    t[12 + e] = _mm512_shuffle_f32x4(lo13, hi13, 0xdd);   // column 12 + e
  }
  for (int c = 0; c < 16; ++c) r[c] = t[c];
}

// C[0 .. MS) x outputs [o0, o0 + nj) (nj <= 16) = A B^T over all K, one FMA per k in order.
// pf > 0: each of the 16 rows of B is prefetched pf floats ahead (nt_prefetch()).
template <int MS>
LRPFAST_AVX512 void nt_small_tile(int K, const float* A, int lda, const float* B, int ldb, int nj,
                                  float* C, int ldc, int pf) {
  __m512 acc[MS];
  for (int m = 0; m < MS; ++m) acc[m] = _mm512_setzero_ps();
  for (int k0 = 0; k0 < K; k0 += 16) {
    const int kb = std::min(16, K - k0);
    const __mmask16 cols = __mmask16((1u << kb) - 1u);
    if (pf > 0 && k0 + pf < K)
      for (int j = 0; j < nj; ++j)
        _mm_prefetch(reinterpret_cast<const char*>(B + i64(j) * ldb + k0 + pf), _MM_HINT_T0);
    __m512 v[16];
    for (int j = 0; j < 16; ++j) {
      const float* row = B + i64(j) * ldb + k0;
      if (j >= nj) {
        v[j] = _mm512_setzero_ps();
        continue;
      }
      v[j] = _mm512_maskz_loadu_ps(cols, row);
    }
    transpose16(v);
    for (int k = 0; k < kb; ++k)
      for (int m = 0; m < MS; ++m)
        acc[m] = _mm512_fmadd_ps(_mm512_set1_ps(A[i64(m) * lda + k0 + k]), v[k], acc[m]);
  }
  const __mmask16 outs = __mmask16((1u << nj) - 1u);
  for (int m = 0; m < MS; ++m) _mm512_mask_storeu_ps(C + i64(m) * ldc, outs, acc[m]);
}

// ---- nn for a few rows of A: C's rows in cache, B's rows streamed past ---------------------
// C[0 .. MS) x `cols` columns += A[0 .. MS) x columns j .. j+cols of B's rows brow[0 .. R), one FMA
// per row of B in order (R = 4 sweeps read four rows of B at a time for each load and store of C).
template <int MS, int R>
LRPFAST_AVX512 void nn_small_sweep(const float* A, int lda, const float* const* brow, int j0,
                                   int cols, float* C, int ldc) {
  __m512 a[MS][R];
  for (int m = 0; m < MS; ++m)
    for (int q = 0; q < R; ++q) a[m][q] = _mm512_set1_ps(A[i64(m) * lda + q]);
  const __mmask16 tail = __mmask16((1u << (cols % 16)) - 1u);
  for (int j = 0; j < cols; j += 16) {
    const __mmask16 k = j + 16 <= cols ? __mmask16(0xffff) : tail;
    __m512 b[R];
    for (int q = 0; q < R; ++q) b[q] = _mm512_maskz_loadu_ps(k, brow[q] + j0 + j);
    for (int m = 0; m < MS; ++m) {
      float* c = C + i64(m) * ldc + j;
      __m512 acc = _mm512_maskz_loadu_ps(k, c);
      for (int q = 0; q < R; ++q) acc = _mm512_fmadd_ps(a[m][q], b[q], acc);
      _mm512_mask_storeu_ps(c, k, acc);
    }
  }
}

// The small-M kernels of this path, for small_rows below.
struct SmallAvx512 {
  static constexpr int kLanes = 16;
  static constexpr int kMaxRows = kSmallM512;
  template <int MS>
  static void tile(int K, const float* A, int lda, const float* B, int ldb, int nj, float* C,
                   int ldc) {
    nt_small_tile<MS>(K, A, lda, B, ldb, nj, C, ldc, nt_prefetch());
  }
  template <int MS, int R>
  static void sweep(const float* A, int lda, const float* const* brow, int j0, int cols, float* C,
                    int ldc) {
    nn_small_sweep<MS, R>(A, lda, brow, j0, cols, C, ldc);
  }
};
#endif

// ---- portable kernels: the same per-element arithmetic in plain C++ --------------------------
// Every element of C is one fma chain over k = 0 .. K-1 from +0, exactly as in the AVX-512
// kernels above, so all three builds of them (AVX-512, AVX2 + FMA, generic) give the same bits.
// Compiled twice: for the generic target, and (x86-64) with AVX2 + FMA enabled, where the lane
// loops vectorise into vfmadd.
constexpr int kPortLanes = 16;        // rows of A (nt) or columns of C (nn) per vector group
constexpr int kPortTile = 4;          // outputs (nt) or rows of A (nn) per register tile
constexpr i64 kPortChunk = i64(1) << 14;  // floats of A^T per k chunk (64 KiB, in L2)
constexpr int kPortRows = 64;             // rows of B per sweep (nn)

// The builtin, not std::fma: std::fma's body is compiled for the default target, where it is a
// call into libm; the builtin becomes the FMA instruction wherever the function's target has one.
#if defined(__GNUC__) || defined(__clang__)
#define LRPFAST_FMAF(a, b, c) __builtin_fmaf(a, b, c)
#else
#define LRPFAST_FMAF(a, b, c) std::fma(a, b, c)
#endif
#define LRPFAST_PORTABLE_TILES(ATTR, SUFFIX)                                                    \
  /* P (nj x 16 lanes) = (first ? 0 : P) + sum_k at[k, lanes] B[o0 + j, k], k in [k0, k1) */      \
  template <int NJ>                                                                              \
  ATTR void nt_tile_##SUFFIX(int k0, int k1, const float* at, int ld, const float* B, i64 ldb,    \
                              float* P, bool first) {                                            \
    float acc[NJ][kPortLanes];                                                                   \
    for (int j = 0; j < NJ; ++j)                                                                 \
      for (int i = 0; i < kPortLanes; ++i) acc[j][i] = first ? 0.f : P[j * kPortLanes + i];      \
    for (int k = k0; k < k1; ++k) {                                                              \
      const float* a = at + i64(k) * ld;                                                         \
      for (int j = 0; j < NJ; ++j) {                                                             \
        const float b = B[j * ldb + k];                                                          \
        for (int i = 0; i < kPortLanes; ++i) acc[j][i] = LRPFAST_FMAF(a[i], b, acc[j][i]);           \
      }                                                                                          \
    }                                                                                            \
    for (int j = 0; j < NJ; ++j)                                                                 \
      for (int i = 0; i < kPortLanes; ++i) P[j * kPortLanes + i] = acc[j][i];                    \
  }                                                                                              \
  /* C[0 .. MT) x `cols` (<= 16) columns = (first ? 0 : C) + sum over k < K of A[m, k] times     \
     columns j .. j+cols of B's row brow[k] */                                                   \
  template <int MT>                                                                              \
  ATTR void nn_tile_##SUFFIX(int K, const float* A, int lda, const float* const* brow, int j,     \
                              int cols, float* C, int ldc, bool first) {                         \
    float acc[MT][kPortLanes] = {};                                                              \
    float row[kPortLanes] = {};                                                                  \
    if (!first)                                                                                  \
      for (int m = 0; m < MT; ++m)                                                               \
        for (int i = 0; i < cols; ++i) acc[m][i] = C[i64(m) * ldc + i];                          \
    for (int k = 0; k < K; ++k) {                                                                \
      const float* b = brow[k] + j;                                                              \
      for (int i = 0; i < cols; ++i) row[i] = b[i];                                              \
      for (int m = 0; m < MT; ++m) {                                                             \
        const float a = A[i64(m) * lda + k];                                                     \
        for (int i = 0; i < kPortLanes; ++i) acc[m][i] = LRPFAST_FMAF(a, row[i], acc[m][i]);         \
      }                                                                                          \
    }                                                                                            \
    for (int m = 0; m < MT; ++m)                                                                 \
      for (int i = 0; i < cols; ++i) C[i64(m) * ldc + i] = acc[m][i];                            \
  }

#define LRPFAST_PORTABLE_KERNELS(ATTR, SUFFIX)                                                    \
  /* C rows [0, M) (M <= kMaxRowsNT), outputs [o_lo, o_hi) of C = A B^T, at = A^T (K x ld); k in  \
     chunks whose part of at stays in L2 while every output tile passes over it */               \
  ATTR void nt_outputs_##SUFFIX(int M, int o_lo, int o_hi, int K, const float* at, int ld,        \
                                 const float* B, int ldb, float* C, int ldc) {                   \
    const int chunk = int(std::clamp<i64>(kPortChunk / ld, 16, std::max(K, 16)));                \
    const int span = o_hi - o_lo;                                                                \
    std::vector<float> P(std::size_t(span + kPortTile) * ld);                                    \
    for (int c0 = 0; c0 < K; c0 += chunk) {                                                      \
      const int c1 = std::min(K, c0 + chunk);                                                    \
      for (int o0 = o_lo; o0 < o_hi; o0 += kPortTile) {                                          \
        const int nj = std::min(kPortTile, o_hi - o0);                                           \
        const float* b = B + i64(o0) * ldb;                                                      \
        for (int n0 = 0; n0 < ld; n0 += kPortLanes) {                                            \
          float* p = P.data() + std::size_t(o0 - o_lo) * ld + std::size_t(n0) * kPortTile;       \
          const float* a = at + n0;                                                              \
          switch (nj) {                                                                          \
            case 4: nt_tile_##SUFFIX<4>(c0, c1, a, ld, b, ldb, p, c0 == 0); break;              \
            case 3: nt_tile_##SUFFIX<3>(c0, c1, a, ld, b, ldb, p, c0 == 0); break;              \
            case 2: nt_tile_##SUFFIX<2>(c0, c1, a, ld, b, ldb, p, c0 == 0); break;              \
            default: nt_tile_##SUFFIX<1>(c0, c1, a, ld, b, ldb, p, c0 == 0); break;             \
          }                                                                                      \
        }                                                                                        \
      }                                                                                          \
    }                                                                                            \
    for (int o0 = o_lo; o0 < o_hi; o0 += kPortTile) {                                            \
      const int nj = std::min(kPortTile, o_hi - o0);                                             \
      for (int n = 0; n < M; ++n) {                                                              \
        const float* p = P.data() + std::size_t(o0 - o_lo) * ld +                                \
                         std::size_t(n / kPortLanes) * kPortLanes * kPortTile + n % kPortLanes;  \
        for (int j = 0; j < nj; ++j) C[i64(n) * ldc + o0 + j] = p[j * kPortLanes];               \
      }                                                                                          \
    }                                                                                            \
  }                                                                                              \
  /* columns [j0, j1) of C = A B (B's K rows at brow[0 .. K)), k in blocks of kPortRows rows of  \
     B (swept row by row across the columns, so B streams from memory once) */                  \
  ATTR void nn_columns_##SUFFIX(int M, int j0, int j1, int K, const float* A, int lda,           \
                                 const float* const* brow, float* C, int ldc) {                  \
    for (int k0 = 0; k0 < K; k0 += kPortRows) {                                                  \
      const int kb = std::min(kPortRows, K - k0);                                                \
      for (int j = j0; j < j1; j += kPortLanes) {                                                \
        const int cols = std::min(kPortLanes, j1 - j);                                           \
        const float* const* b = brow + k0;                                                       \
        for (int m = 0; m < M; m += kPortTile) {                                                 \
          const float* a = A + i64(m) * lda + k0;                                                \
          float* c = C + i64(m) * ldc + j;                                                       \
          switch (std::min(kPortTile, M - m)) {                                                  \
            case 4: nn_tile_##SUFFIX<4>(kb, a, lda, b, j, cols, c, ldc, k0 == 0); break;        \
            case 3: nn_tile_##SUFFIX<3>(kb, a, lda, b, j, cols, c, ldc, k0 == 0); break;        \
            case 2: nn_tile_##SUFFIX<2>(kb, a, lda, b, j, cols, c, ldc, k0 == 0); break;        \
            default: nn_tile_##SUFFIX<1>(kb, a, lda, b, j, cols, c, ldc, k0 == 0); break;       \
          }                                                                                      \
        }                                                                                        \
      }                                                                                          \
    }                                                                                            \
  }

LRPFAST_PORTABLE_TILES(, generic)
LRPFAST_PORTABLE_KERNELS(, generic)
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define LRPFAST_HAS_AVX2_BUILD 1
// The AVX2 tiles, written with intrinsics (the compiler's vectorisation of the portable tiles
// leaves most of their lanes scalar); per element the same fma chain.
#define LRPFAST_AVX2 __attribute__((target("avx2,fma")))
template <int NJ>
LRPFAST_AVX2 void nt_tile_avx2(int k0, int k1, const float* at, int ld, const float* B, i64 ldb,
                               float* P, bool first) {
  __m256 acc[NJ][2];
  for (int j = 0; j < NJ; ++j) {
    acc[j][0] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(P + j * kPortLanes);
    acc[j][1] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(P + j * kPortLanes + 8);
  }
  for (int k = k0; k < k1; ++k) {
    const float* a = at + i64(k) * ld;
    const __m256 a0 = _mm256_loadu_ps(a), a1 = _mm256_loadu_ps(a + 8);
    for (int j = 0; j < NJ; ++j) {
      const __m256 b = _mm256_broadcast_ss(B + j * ldb + k);
      acc[j][0] = _mm256_fmadd_ps(a0, b, acc[j][0]);
      acc[j][1] = _mm256_fmadd_ps(a1, b, acc[j][1]);
    }
  }
  for (int j = 0; j < NJ; ++j) {
    _mm256_storeu_ps(P + j * kPortLanes, acc[j][0]);
    _mm256_storeu_ps(P + j * kPortLanes + 8, acc[j][1]);
  }
}

template <int MT>
LRPFAST_AVX2 void nn_tile_avx2(int K, const float* A, int lda, const float* const* brow, int j,
                               int cols, float* C, int ldc, bool first) {
  if (cols < kPortLanes) {  // the right edge: through a full-width copy
    float c[MT][kPortLanes] = {};
    std::vector<float> rows(std::size_t(K) * kPortLanes, 0.f);
    std::vector<const float*> rowp(static_cast<std::size_t>(K));
    for (int k = 0; k < K; ++k) {
      for (int i = 0; i < cols; ++i) rows[std::size_t(k) * kPortLanes + i] = brow[k][j + i];
      rowp[std::size_t(k)] = rows.data() + std::size_t(k) * kPortLanes;
    }
    for (int m = 0; m < MT; ++m)
      for (int i = 0; i < cols; ++i) c[m][i] = first ? 0.f : C[i64(m) * ldc + i];
    nn_tile_avx2<MT>(K, A, lda, rowp.data(), 0, kPortLanes, &c[0][0], kPortLanes, false);
    for (int m = 0; m < MT; ++m)
      for (int i = 0; i < cols; ++i) C[i64(m) * ldc + i] = c[m][i];
    return;
  }
  __m256 acc[MT][2];
  for (int m = 0; m < MT; ++m) {
    acc[m][0] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(C + i64(m) * ldc);
    acc[m][1] = first ? _mm256_setzero_ps() : _mm256_loadu_ps(C + i64(m) * ldc + 8);
  }
  for (int k = 0; k < K; ++k) {
    const float* b = brow[k] + j;
    const __m256 b0 = _mm256_loadu_ps(b), b1 = _mm256_loadu_ps(b + 8);
    for (int m = 0; m < MT; ++m) {
      const __m256 a = _mm256_broadcast_ss(A + i64(m) * lda + k);
      acc[m][0] = _mm256_fmadd_ps(a, b0, acc[m][0]);
      acc[m][1] = _mm256_fmadd_ps(a, b1, acc[m][1]);
    }
  }
  for (int m = 0; m < MT; ++m) {
    _mm256_storeu_ps(C + i64(m) * ldc, acc[m][0]);
    _mm256_storeu_ps(C + i64(m) * ldc + 8, acc[m][1]);
  }
}

// nt_small's twin: 8 outputs in the lanes, B read 8 columns at a time and transposed in registers
// (24 shuffles per 8 x 8 block); the same fma chain per element.
LRPFAST_AVX2 inline void transpose8(__m256 r[8]) {
  __m256 t[8];
  for (int i = 0; i < 4; ++i) {  // per 128-bit half: t[2i] = a0 b0 a1 b1, t[2i+1] = a2 b2 a3 b3
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int g = 0; g < 2; ++g)  // r[4g + e], per half H: rows 4g .. 4g+3 of column 4H + e
    for (int h = 0; h < 2; ++h) {
      r[4 * g + 2 * h] = _mm256_shuffle_ps(t[4 * g + h], t[4 * g + 2 + h], 0x44);
      r[4 * g + 2 * h + 1] = _mm256_shuffle_ps(t[4 * g + h], t[4 * g + 2 + h], 0xee);
    }
  for (int e = 0; e < 4; ++e) {
    t[e] = _mm256_permute2f128_ps(r[e], r[4 + e], 0x20);      // column e
    t[4 + e] = _mm256_permute2f128_ps(r[e], r[4 + e], 0x31);  // column 4 + e
  }
  for (int c = 0; c < 8; ++c) r[c] = t[c];
}

template <int MS>
LRPFAST_AVX2 void nt_small_tile_avx2(int K, const float* A, int lda, const float* B, int ldb,
                                     int nj, float* C, int ldc, int pf) {
  __m256 acc[MS];
  for (int m = 0; m < MS; ++m) acc[m] = _mm256_setzero_ps();
  alignas(32) float edge[8] = {};
  for (int k0 = 0; k0 < K; k0 += 8) {
    const int kb = std::min(8, K - k0);
    if (pf > 0 && k0 % 16 == 0 && k0 + pf < K)  // once per 64-byte line of each row
      for (int j = 0; j < nj; ++j)
        _mm_prefetch(reinterpret_cast<const char*>(B + i64(j) * ldb + k0 + pf), _MM_HINT_T0);
    __m256 v[8];
    for (int j = 0; j < 8; ++j) {
      const float* row = B + i64(j) * ldb + k0;
      if (j >= nj) {
        v[j] = _mm256_setzero_ps();
        continue;
      }
      if (kb == 8) {
        v[j] = _mm256_loadu_ps(row);
      } else {
        for (int c = 0; c < 8; ++c) edge[c] = c < kb ? row[c] : 0.f;
        v[j] = _mm256_load_ps(edge);
      }
    }
    transpose8(v);
    for (int k = 0; k < kb; ++k)
      for (int m = 0; m < MS; ++m)
        acc[m] = _mm256_fmadd_ps(_mm256_broadcast_ss(A + i64(m) * lda + k0 + k), v[k], acc[m]);
  }
  for (int m = 0; m < MS; ++m) {
    if (nj == 8) {
      _mm256_storeu_ps(C + i64(m) * ldc, acc[m]);
    } else {
      _mm256_store_ps(edge, acc[m]);
      for (int j = 0; j < nj; ++j) C[i64(m) * ldc + j] = edge[j];
    }
  }
}

// nn_small's twin: 8 columns per vector, the right edge one column at a time (same fma chain).
template <int MS, int R>
LRPFAST_AVX2 void nn_small_sweep_avx2(const float* A, int lda, const float* const* brow, int j0,
                                      int cols, float* C, int ldc) {
  __m256 a[MS][R];
  for (int m = 0; m < MS; ++m)
    for (int q = 0; q < R; ++q) a[m][q] = _mm256_set1_ps(A[i64(m) * lda + q]);
  int j = 0;
  for (; j + 8 <= cols; j += 8) {
    __m256 b[R];
    for (int q = 0; q < R; ++q) b[q] = _mm256_loadu_ps(brow[q] + j0 + j);
    for (int m = 0; m < MS; ++m) {
      float* c = C + i64(m) * ldc + j;
      __m256 acc = _mm256_loadu_ps(c);
      for (int q = 0; q < R; ++q) acc = _mm256_fmadd_ps(a[m][q], b[q], acc);
      _mm256_storeu_ps(c, acc);
    }
  }
  for (; j < cols; ++j)
    for (int m = 0; m < MS; ++m) {
      float& c = C[i64(m) * ldc + j];
      for (int q = 0; q < R; ++q) c = LRPFAST_FMAF(A[i64(m) * lda + q], brow[q][j0 + j], c);
    }
}

struct SmallAvx2 {
  static constexpr int kLanes = 8;
  static constexpr int kMaxRows = kSmallM;
  template <int MS>
  static void tile(int K, const float* A, int lda, const float* B, int ldb, int nj, float* C,
                   int ldc) {
    nt_small_tile_avx2<MS>(K, A, lda, B, ldb, nj, C, ldc, nt_prefetch());
  }
  template <int MS, int R>
  static void sweep(const float* A, int lda, const float* const* brow, int j0, int cols, float* C,
                    int ldc) {
    nn_small_sweep_avx2<MS, R>(A, lda, brow, j0, cols, C, ldc);
  }
};

LRPFAST_PORTABLE_KERNELS(LRPFAST_AVX2, avx2)
bool has_avx2_fma() {
  static const bool has = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return has;
}
#else
#define LRPFAST_HAS_AVX2_BUILD 0
bool has_avx2_fma() { return false; }
#endif
#undef LRPFAST_PORTABLE_KERNELS
#undef LRPFAST_PORTABLE_TILES

Simd simd_from_env() {
  const char* s = std::getenv("LRPFAST_SIMD");
  if (s && std::strcmp(s, "avx2") == 0) return Simd::Avx2;
  if (s && std::strcmp(s, "generic") == 0) return Simd::Generic;
  return Simd::Native;
}

Setting<Simd> g_simd(simd_from_env);

}  // namespace

void set_simd(Simd s) { g_simd.set(s); }
int nt_prefetch() { return g_prefetch.get(); }
void set_nt_prefetch(int floats) { g_prefetch.set(std::max(0, floats)); }
Simd simd() { return g_simd.get(); }

const char* simd_kernels() {
  const Simd s = simd();
#if LRPFAST_STREAMED_AVX512
  if (s == Simd::Native && has_avx512()) return "avx512";
#endif
  if (s != Simd::Generic && has_avx2_fma()) return "avx2";
  return "generic";
}

bool streamed_native() { return std::strcmp(simd_kernels(), "avx512") == 0; }

namespace {
Setting<LinearAlgo> g_algo(algo_from_env);
}  // namespace

void set_linear_algo(LinearAlgo a) { g_algo.set(a); }

LinearAlgo linear_algo() { return g_algo.get(); }

namespace {

// lrpfast's own kernels: 'streamed', or 'auto' where they are the fast choice (AVX-512; AVX2 for
// up to kSmallM rows of A, where OpenBLAS runs at its packing speed) or the deterministic one (any
// path: BLAS's arithmetic may depend on the batch).
bool use_streamed(int M) {
  const LinearAlgo a = linear_algo();
  if (a != LinearAlgo::Auto) return a == LinearAlgo::Streamed;
  return streamed_native() || deterministic() ||
         (M <= kSmallM && std::strcmp(simd_kernels(), "avx2") == 0);
}

// f(std::integral_constant<int, M>{}) for M = MS .. Max (M <= MS: MS): the row count as a
// template argument.
template <int MS, int Max, class F>
void with_rows(int M, F&& f) {
  if constexpr (MS < Max) {
    if (M > MS) return with_rows<MS + 1, Max>(M, f);
  }
  f(std::integral_constant<int, MS>{});
}

// C = A op(B) for M rows of A (nt: M <= S::kMaxRows; nn: M <= kSmallM) with one SIMD path's small
// kernels S (S::kLanes floats per vector): nt (b_trans) with S::tile, the outputs in the lanes; nn
// with S::sweep, blocks of kSmallCols columns of C in cache taking B's rows in order from +0.
// Every element is the same fma chain as in the batch kernels. Whole vectors of outputs or
// columns per thread.
template <class S>
void small_rows(bool b_trans, int M, int N, int K, const float* A, int lda, const float* B,
                int ldb, const float* const* brow, float* C, int ldc) {
  constexpr int L = S::kLanes;
  parallel_for((N + L - 1) / L, i64(M) * N * K / kMaddsPerElement, [&](i64 lo, i64 hi) {
    const int j0 = int(lo) * L, j1 = int(std::min<i64>(N, hi * L));
    if (b_trans) {
      with_rows<1, S::kMaxRows>(M, [&](auto rows) {
        for (int o0 = j0; o0 < j1; o0 += L)
          S::template tile<decltype(rows)::value>(K, A, lda, B + i64(o0) * ldb, ldb,
                                                  std::min(L, j1 - o0), C + o0, ldc);
      });
      return;
    }
    with_rows<1, kSmallM>(M, [&](auto rows) {
      constexpr int MS = decltype(rows)::value;
      for (int jb = j0; jb < j1; jb += kSmallCols) {
        const int cols = std::min(kSmallCols, j1 - jb);
        for (int m = 0; m < MS; ++m) std::fill_n(C + i64(m) * ldc + jb, cols, 0.f);
        int r = 0;
        for (; r + 4 <= K; r += 4)
          S::template sweep<MS, 4>(A + r, lda, brow + r, jb, cols, C + jb, ldc);
        for (; r < K; ++r) S::template sweep<MS, 1>(A + r, lda, brow + r, jb, cols, C + jb, ldc);
      }
    });
  });
}

// C = A op(B) with the portable kernels (AVX2 + FMA or generic): nt on blocks of at most
// kMaxRowsNT rows of A when b_trans, nn otherwise; ranges of outputs (nt) or column groups (nn)
// over the pool.
void portable(int M, int N, int K, const float* A, int lda, const float* B, int ldb,
              const float* const* brow, bool b_trans, float* C, int ldc) {
  [[maybe_unused]] const bool avx2 =
      LRPFAST_HAS_AVX2_BUILD && std::strcmp(simd_kernels(), "avx2") == 0;
  const i64 work = i64(M) * N * K / kMaddsPerElement;
#if LRPFAST_HAS_AVX2_BUILD
  if (avx2 && M <= kSmallM)
    return small_rows<SmallAvx2>(b_trans, M, N, K, A, lda, B, ldb, brow, C, ldc);
#endif
  if (b_trans) {
    for (int m0 = 0; m0 < M; m0 += kMaxRowsNT) {
      const int mb = std::min(kMaxRowsNT, M - m0);
      const int ld = (mb + kPortLanes - 1) / kPortLanes * kPortLanes;
      const std::vector<float> at = transpose_a(mb, K, A + i64(m0) * lda, lda, ld);
      float* c = C + i64(m0) * ldc;
      const int tiles = (N + kPortTile - 1) / kPortTile;
      parallel_for(tiles, work, [&](i64 lo, i64 hi) {
        const int o0 = int(lo) * kPortTile, o1 = int(std::min<i64>(N, hi * kPortTile));
#if LRPFAST_HAS_AVX2_BUILD
        if (avx2) return nt_outputs_avx2(mb, o0, o1, K, at.data(), ld, B, ldb, c, ldc);
#endif
        nt_outputs_generic(mb, o0, o1, K, at.data(), ld, B, ldb, c, ldc);
      });
    }
    return;
  }
  const int groups = (N + kPortLanes - 1) / kPortLanes;
  parallel_for(groups, work, [&](i64 lo, i64 hi) {
    const int j0 = int(lo) * kPortLanes, j1 = int(std::min<i64>(N, hi * kPortLanes));
#if LRPFAST_HAS_AVX2_BUILD
    if (avx2) return nn_columns_avx2(M, j0, j1, K, A, lda, brow, C, ldc);
#endif
    nn_columns_generic(M, j0, j1, K, A, lda, brow, C, ldc);
  });
}

// C = A op(B) with the streamed kernels (op(B) = B^T when b_trans): nt for a few rows of A, nn
// otherwise. Both compute every element as the same chain of FMAs (k in order, from 0), so
// the choice -- made on M -- never changes a row's result.
// nn reads B's rows through brow (K pointers; nullptr for nt).
void streamed(int M, int N, int K, const float* A, int lda, const float* B, int ldb,
              const float* const* brow, bool b_trans, float* C, int ldc) {
  if (!streamed_native()) return portable(M, N, K, A, lda, B, ldb, brow, b_trans, C, ldc);
#if LRPFAST_STREAMED_AVX512
  // tiles (nt) or strips (nn) in contiguous ranges over the pool: the arithmetic of one does
  // not depend on the split
  const i64 work = i64(M) * N * K / kMaddsPerElement;
  if (M <= (b_trans ? kSmallM512 : kSmallM))
    return small_rows<SmallAvx512>(b_trans, M, N, K, A, lda, B, ldb, brow, C, ldc);
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
    nn_columns(M, int(lo) * kStrip, std::min<i64>(N, hi * kStrip), K, A, lda, B, ldb, brow,
               b_trans, C, ldc);
  });
#endif
}

// The BLAS fallback: one product, or in deterministic mode one product per row of A (a BLAS
// call's arithmetic may depend on M, the batch; one row at a time it cannot).
void blas_rows(bool b_trans, int M, int N, int K, const float* A, int lda, const float* B, int ldb,
               float* C, int ldc) {
  if (!deterministic()) return gemm(false, b_trans, M, N, K, 1.f, A, lda, B, ldb, 0.f, C, ldc);
  for (int m = 0; m < M; ++m)
    gemm(false, b_trans, 1, N, K, 1.f, A + i64(m) * lda, lda, B, ldb, 0.f, C + i64(m) * ldc, ldc);
}

// The rows of B (K x N, row stride ldb) that C = A B needs, and A's columns for them: a row k
// whose column of A is zero in every row of the call (+0 or -0) is left out. Its terms
// fma(0, b, acc) would change no accumulator (acc + 0 = acc; the chains start at +0), so C keeps
// its bits and B's dead rows are never read. LRP's signals are sparse this way: a fully
// connected layer's relevance is zero at every output its ReLU switched off (half of CaffeNet's
// fc6 / fc7 outputs, more in trained nets), and a one-class seed is zero at all other classes.
struct LiveRows {
  std::vector<const float*> brow;  // B's live rows, in order
  std::vector<float> a;            // A's live columns (M x brow.size()) when some row is dead
  const float* A;
  int lda;
};

LiveRows live_rows(int M, int K, const float* A, int lda, const float* B, int ldb) {
  std::vector<char> live(std::size_t(K), 0);
  int n = 0;
  for (int m = 0; m < M && n < K; ++m) {
    const float* a = A + i64(m) * lda;
    for (int k = 0; k < K; ++k)
      if (!live[std::size_t(k)] && a[k] != 0.f) live[std::size_t(k)] = 1, ++n;  // NaN: live
  }
  LiveRows r{{}, {}, A, lda};
  r.brow.reserve(std::size_t(n));
  for (int k = 0; k < K; ++k)
    if (live[std::size_t(k)]) r.brow.push_back(B + i64(k) * ldb);
  if (n == K || n == 0) return r;
  r.a.resize(std::size_t(M) * n);
  for (int m = 0; m < M; ++m) {
    const float* src = A + i64(m) * lda;
    float* dst = r.a.data() + std::size_t(m) * n;
    for (int k = 0, j = 0; k < K; ++k)
      if (live[std::size_t(k)]) dst[j++] = src[k];
  }
  r.A = r.a.data();
  r.lda = n;
  return r;
}

}  // namespace

void gemm_streamed_nn(int M, int N, int K, const float* A, int lda, const float* B, int ldb,
                      float* C, int ldc) {
  if (M <= 0 || N <= 0) return;
  if (K > 0 && use_streamed(M)) {
    const LiveRows live = live_rows(M, K, A, lda, B, ldb);
    const int n = int(live.brow.size());
    if (n == 0) {  // A is all zero: C = +0, as the chains from +0 give
      for (int m = 0; m < M; ++m) std::fill_n(C + i64(m) * ldc, N, 0.f);
      return;
    }
    streamed(M, N, n, live.A, live.lda, B, ldb, live.brow.data(), false, C, ldc);
    // A chain that underflowed to -0 would turn +0 on a skipped term's +0 (-0 + +0 = +0): adding
    // +0 to every sum (which changes no other value) makes C the same bits whichever rows of B
    // the call skipped, so a row's result still does not depend on the rest of the batch.
    parallel_for(M, i64(M) * N, [&](i64 m0, i64 m1) {
      for (i64 m = m0; m < m1; ++m)
        for (float *c = C + m * ldc, *e = c + N; c < e; ++c) *c += 0.f;
    });
    return;
  }
  blas_rows(false, M, N, K, A, lda, B, ldb, C, ldc);
}

void gemm_streamed_nt(int M, int N, int K, const float* A, int lda, const float* B, int ldb,
                      float* C, int ldc) {
  if (M <= 0 || N <= 0) return;
  if (K > 0 && use_streamed(M)) return streamed(M, N, K, A, lda, B, ldb, nullptr, true, C, ldc);
  blas_rows(true, M, N, K, A, lda, B, ldb, C, ldc);
}

}  // namespace lrpfast

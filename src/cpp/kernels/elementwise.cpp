#include "kernels/elementwise.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define LRPFAST_F16C 1
#else
#define LRPFAST_F16C 0
#endif

#include "kernels/check.hpp"
#include "kernels/parallel.hpp"
#include "kernels/streamed.hpp"

// Compiled for AVX-512 and AVX2 as well as the baseline, the CPU picking at load time (GCC on
// x86-64 Linux): only for loops whose every build rounds alike (no multiply-add to contract).
#if defined(__x86_64__) && defined(__linux__) && defined(__GNUC__) && !defined(__clang__)
#define LRPFAST_WIDE __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define LRPFAST_WIDE
#endif

namespace lrpfast {

void check_stabilizer(double eps) {
  require(std::isfinite(eps) && eps >= 0, "stabilizer eps must be finite and >= 0, got ", eps);
}

EltwiseOp parse_eltwise_op(const char* name) {
  if (std::strcmp(name, "prod") == 0) return EltwiseOp::Prod;
  if (std::strcmp(name, "sum") == 0) return EltwiseOp::Sum;
  if (std::strcmp(name, "max") == 0) return EltwiseOp::Max;
  fail("operation must be 'sum', 'prod' or 'max', got '", name, "'");
}

namespace cpu {

void stabilized_divide(std::int64_t n, const float* r, const float* z, float eps, bool zero_to_zero,
                       float* out) {
  if (zero_to_zero) {
    parallel_for(n, n, [&](std::int64_t lo, std::int64_t hi) {
      for (std::int64_t i = lo; i < hi; ++i) out[i] = stabilized_quotient(r[i], z[i], eps);
    });
  } else {
    parallel_for(n, n, [&](std::int64_t lo, std::int64_t hi) {
      for (std::int64_t i = lo; i < hi; ++i) {
        const float d = z[i] >= 0.f ? z[i] + eps : z[i] - eps;
        out[i] = r[i] / d;
      }
    });
  }
}

namespace {
// Caffe's ReLU with slope 0 on one value: positive or NaN kept, else +0 (relu_forward's rounding).
inline float relu0(float v) {
  const bool keep = (v > 0.f) | (v != v);
  return keep ? v : 0.f;
}

// The Eltwise SUM of elements [lo, lo + m): y[i] = ((0 + c0 x0[lo+i]) + c1 x1[lo+i]) + ...
// One out-of-line body for eltwise_forward and for eltwise_sum_relevance's recomputed sum, so
// both round alike (the same instructions, whatever the compiler contracts).
#if defined(__GNUC__)
__attribute__((noinline))
#endif
void sum_block(int K, const float* const* xs, const float* coeffs,
                                         std::int64_t lo, std::int64_t m, float* __restrict y) {
  for (int k = 0; k < K; ++k) {
    const float c = coeffs ? coeffs[k] : 1.f;
    const float* __restrict x = xs[k] + lo;
    if (k == 0)
      for (std::int64_t i = 0; i < m; ++i) y[i] = 0.f + c * x[i];
    else
      for (std::int64_t i = 0; i < m; ++i) y[i] = y[i] + c * x[i];
  }
}
}  // namespace

// One block [b, b + m) of eltwise_sum_relevance from the sum z (z may be s itself): s[i] =
// stabilized_quotient(r, z), then each operand's share (c_k x_k) * s; returns nonfinite_bits of
// the shares when check. Divisions and products only (nothing a compiler could contract), so the
// AVX-512, AVX2 and baseline builds of it give the same bits.
LRPFAST_WIDE std::uint32_t sum_shares_block(int K, const float* const* xs, const float* coeffs,
                                            std::int64_t b, std::int64_t m, const float* r,
                                            const float* z, float eps, float* const* outs,
                                            float* s, bool check) {
  std::uint32_t hit = 0;
  const float* __restrict rr = r + b;
  for (int k = 0; k < K; ++k) {
    const float c = coeffs ? coeffs[k] : 1.f;
    const float* __restrict x = xs[k] + b;
    float* __restrict o = outs[k] + b;
    if (k == 0) {   // the quotient with the first share; kept for the others
      for (std::int64_t i = 0; i < m; ++i) {
        const float q = stabilized_quotient(rr[i], z[i], eps);   // (z[i] read before s[i] set)
        s[i] = q;
        o[i] = (c * x[i]) * q;
      }
    } else {
      for (std::int64_t i = 0; i < m; ++i) o[i] = (c * x[i]) * s[i];
    }
    if (check) hit |= nonfinite_bits(o, m);
  }
  return hit;
}

void eltwise_sum_relevance(int K, const float* const* xs, const float* coeffs, std::int64_t n,
                           const float* r, const float* y, float eps, float* const* outs,
                           bool* finite) {
  std::atomic<bool> bad{false};
  parallel_for(n, n * (K + 2), [&](std::int64_t lo, std::int64_t hi) {
    std::uint32_t hit = 0;
    constexpr std::int64_t kBlock = 1024;   // the quotient of a block, then each operand's share
    float s[kBlock];
    for (std::int64_t b = lo; b < hi; b += kBlock) {
      const std::int64_t m = std::min(kBlock, hi - b);
      // the sum the forward did not keep (y nullptr): recomputed with its bits
      if (!y) sum_block(K, xs, coeffs, b, m, s);
      hit |= sum_shares_block(K, xs, coeffs, b, m, r, y ? y + b : s, eps, outs, s,
                              finite != nullptr);
    }
    if (hit) bad.store(true, std::memory_order_relaxed);
  });
  if (finite) *finite = !bad.load();
}

LRPFAST_WIDE std::uint32_t nonfinite_bits(const float* x, std::int64_t n) {
  constexpr std::uint32_t kExp = 0x7f800000u;
  std::uint32_t hit = 0;
  for (std::int64_t i = 0; i < n; ++i) {
    std::uint32_t u;
    std::memcpy(&u, x + i, sizeof u);
    hit |= std::uint32_t((u & kExp) == kExp);
  }
  return hit;
}

bool all_finite(std::int64_t n, const float* x) {
  std::atomic<bool> bad{false};
  parallel_for(n, n, [&](std::int64_t lo, std::int64_t hi) {
    constexpr std::int64_t kBlock = 4096;   // blocks: an early exit without a branch per element
    for (std::int64_t b = lo; b < hi && !bad.load(std::memory_order_relaxed); b += kBlock) {
      const std::int64_t e = b + kBlock < hi ? b + kBlock : hi;
      if (nonfinite_bits(x + b, e - b)) bad.store(true, std::memory_order_relaxed);
    }
  });
  return !bad.load();
}

bool any_negative(std::int64_t n, const float* x) {
  std::atomic<bool> hit{false};
  parallel_for(n, n, [&](std::int64_t lo, std::int64_t hi) {
    constexpr std::int64_t kBlock = 4096;   // as all_finite: no branch per element
    for (std::int64_t b = lo; b < hi && !hit.load(std::memory_order_relaxed); b += kBlock) {
      const std::int64_t e = b + kBlock < hi ? b + kBlock : hi;
      int neg = 0;
      for (std::int64_t i = b; i < e; ++i) neg |= int(x[i] < 0.f);
      if (neg) hit.store(true, std::memory_order_relaxed);
    }
  });
  return hit.load();
}

namespace {

// One float to binary16 bits, to nearest even (the portable twin of F16C's vcvtps2ph).
std::uint16_t half_bits(float f) {
  std::uint32_t x;
  std::memcpy(&x, &f, sizeof x);
  const std::uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7fffffffu;
  if (x >= 0x47800000u) {  // |f| >= 2^16 (beyond half's range even after rounding), inf, NaN
    if (x > 0x7f800000u) return std::uint16_t(sign | 0x7e00u | ((x >> 13) & 0x3ffu));
    return std::uint16_t(sign | 0x7c00u);
  }
  if (x < 0x38800000u) {  // |f| < 2^-14: half subnormal or zero. Adding 0.5f puts the half's
    float v;              // last place (2^-24) at the float's last place: the FPU rounds (even)
    std::memcpy(&v, &x, sizeof v);
    v += 0.5f;
    std::uint32_t u;
    std::memcpy(&u, &v, sizeof u);
    return std::uint16_t(sign | (u - 0x3f000000u));
  }
  // normal: rebias the exponent, round the 13 dropped bits to nearest even (a carry may give
  // the next binade, or inf above 65504)
  const std::uint32_t odd = (x >> 13) & 1u;
  x += 0xc8000fffu + odd;  // (15 - 127) << 23, mod 2^32, plus 0xfff
  return std::uint16_t(sign | (x >> 13));
}

#if LRPFAST_F16C
__attribute__((target("avx,f16c"))) void to_float16_f16c(std::int64_t n, const float* x,
                                                          std::uint16_t* out) {
  std::int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), h);
  }
  for (; i < n; ++i) out[i] = half_bits(x[i]);
}

bool has_f16c() {
  static const bool has = __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
  return has;
}
#endif

}  // namespace

void to_float16(std::int64_t n, const float* x, std::uint16_t* out) {
#if LRPFAST_F16C
  if (simd() != Simd::Generic && has_f16c()) {
    to_float16_f16c(n, x, out);
    return;
  }
#endif
  for (std::int64_t i = 0; i < n; ++i) out[i] = half_bits(x[i]);
}

// y[i] = relu0(x[i]) for i < n (selects, nothing to round: every build gives the same bits)
LRPFAST_WIDE void relu_block(std::int64_t n, const float* __restrict x, float* __restrict y) {
  for (std::int64_t i = 0; i < n; ++i) y[i] = relu0(x[i]);
}

void relu_forward(std::int64_t n, const float* x, float slope, float* y) {
  parallel_for(n, n, [&](std::int64_t lo, std::int64_t hi) {
    if (slope == 0.f) {  // (selects written branch-free, so the loops vectorise)
      relu_block(hi - lo, x + lo, y + lo);
    } else {
      for (std::int64_t i = lo; i < hi; ++i) {
        const float v = x[i], neg = slope * v;
        y[i] = v > 0.f ? v : neg;
      }
    }
  });
}

namespace {
// One channel plane of alphabeta_signal (restrict + safe divisors: the loop vectorises).
template <bool kGuards>
void alphabeta_row(std::int64_t P, const float* __restrict rr, const float* __restrict zz,
                   const float* __restrict pp, float alpha, float beta, float* __restrict op,
                   float* __restrict on) {
  for (std::int64_t i = 0; i < P; ++i) {
    const float zpi = pp[i], zni = zz[i] - pp[i];
    // guards: the toolbox's z+ > 0 / z- < 0 tests (they differ from "== 0" only where
    // rounding in z - zp gave z- the wrong sign)
    const bool p0 = kGuards ? !(zpi > 0.f) : zpi == 0.f;
    const bool n0 = kGuards ? !(zni < 0.f) : zni == 0.f;
    const float qp = alpha * (rr[i] / (p0 ? 1.f : zpi));
    const float qn = -beta * (rr[i] / (n0 ? 1.f : zni));
    op[i] = p0 ? 0.f : qp;
    on[i] = n0 ? 0.f : qn;
  }
}
}  // namespace

void weight_signs(std::int64_t rows, std::int64_t K, const float* w, float* pos, float* neg) {
  parallel_for(rows, rows * K, [&](std::int64_t lo, std::int64_t hi) {
    const float* __restrict src = w + lo * K;
    const std::int64_t n = (hi - lo) * K;
    if (pos) {
      float* __restrict p = pos + lo * K;
      for (std::int64_t i = 0; i < n; ++i) p[i] = src[i] > 0.f ? src[i] : 0.f;
    }
    if (neg) {
      float* __restrict q = neg + lo * K;
      for (std::int64_t i = 0; i < n; ++i) q[i] = src[i] < 0.f ? src[i] : 0.f;
    }
  });
}

void alphabeta_signal(std::int64_t N, std::int64_t G, std::int64_t Og, std::int64_t P,
                      const float* r, const float* z, const float* zp, float alpha, float beta,
                      bool guards, float* out) {
  const std::int64_t rows = N * G * Og;  // one (n, g, o) channel plane per row
  parallel_for(rows, rows * P, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t t = lo; t < hi; ++t) {
      const std::int64_t ng = t / Og, o = t % Og;
      const float* rr = r + t * P;
      const float* zz = z + t * P;
      const float* pp = zp + t * P;
      float* op = out + (ng * 2 * Og + o) * P;  // (n, g, 0, o, :)
      float* on = op + Og * P;                  // (n, g, 1, o, :)
      if (guards)
        alphabeta_row<true>(P, rr, zz, pp, alpha, beta, op, on);
      else
        alphabeta_row<false>(P, rr, zz, pp, alpha, beta, op, on);
    }
  });
}

void eltwise_forward(EltwiseOp op, int K, const float* const* xs, const float* coeffs,
                     std::int64_t n, float* y, std::int32_t* argmax, float* relu) {
  // Blocks of elements, inputs in the inner loop over a block: each input is streamed once.
  constexpr std::int64_t kBlock = 4096;
  const std::int64_t blocks = (n + kBlock - 1) / kBlock;
  parallel_for(blocks, n * K, [&](std::int64_t b0, std::int64_t b1) {
    const std::int64_t lo = b0 * kBlock, hi = b1 * kBlock < n ? b1 * kBlock : n;
    const std::int64_t m = hi - lo;
    if (op == EltwiseOp::Sum && relu) {   // the sum of a block in cache, then its ReLU
      float s[kBlock];
      float* sum = y ? y + lo : s;
      for (std::int64_t b = 0; b < m; b += kBlock) {
        const std::int64_t e = std::min(kBlock, m - b);
        sum_block(K, xs, coeffs, lo + b, e, sum + (y ? b : 0));
        relu_block(e, sum + (y ? b : 0), relu + lo + b);
      }
      return;
    }
    float* yy = y + lo;
    if (op == EltwiseOp::Sum) {  // ((0 + c0 x0) + c1 x1) + ...: the first term on +0, unstored
      for (std::int64_t b = 0; b < m; b += kBlock)
        sum_block(K, xs, coeffs, lo + b, std::min(kBlock, m - b), yy + b);
    } else if (op == EltwiseOp::Prod) {
      std::memcpy(yy, xs[0] + lo, sizeof(float) * m);
      for (int k = 1; k < K; ++k) {
        const float* x = xs[k] + lo;
        for (std::int64_t i = 0; i < m; ++i) yy[i] = yy[i] * x[i];
      }
    } else {
      std::memcpy(yy, xs[0] + lo, sizeof(float) * m);
      std::int32_t* am = argmax ? argmax + lo : nullptr;
      if (am)
        for (std::int64_t i = 0; i < m; ++i) am[i] = 0;
      for (int k = 1; k < K; ++k) {
        const float* x = xs[k] + lo;
        for (std::int64_t i = 0; i < m; ++i) {
          if (x[i] > yy[i] || (x[i] != x[i] && yy[i] == yy[i])) {
            yy[i] = x[i];
            if (am) am[i] = k;
          }
        }
      }
    }
  });
}

void channel_affine(std::int64_t N, std::int64_t C, std::int64_t P, const float* x,
                    const float* scale, const float* bias, float* y) {
  const std::int64_t rows = N * C;  // one (n, c) channel plane per row
  parallel_for(rows, rows * P, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t t = lo; t < hi; ++t) {
      const float s = scale[t % C], b = bias ? bias[t % C] : 0.f;
      const float* xx = x + t * P;
      float* yy = y + t * P;
      if (bias) {
        for (std::int64_t i = 0; i < P; ++i) {
          const float p = xx[i] * s;  // rounded before the addition (no FMA in the default build)
          yy[i] = p + b;
        }
      } else {
        for (std::int64_t i = 0; i < P; ++i) yy[i] = xx[i] * s;
      }
    }
  });
}

}  // namespace cpu
}  // namespace lrpfast

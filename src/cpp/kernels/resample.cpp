#include "kernels/resample.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define LRPFAST_RESAMPLE_AVX2 1
#else
#define LRPFAST_RESAMPLE_AVX2 0
#endif

#include "kernels/check.hpp"
#include "kernels/streamed.hpp"

namespace lrpfast::cpu {

namespace {
constexpr int kBits = 22;                  // fractional bits of the fixed-point weights
constexpr std::int32_t kHalf = 1 << (kBits - 1);

inline std::uint8_t clip8(std::int32_t acc) {
  const std::int32_t v = acc >> kBits;
  return std::uint8_t(v < 0 ? 0 : (v > 255 ? 255 : v));
}
}  // namespace

BilinearTaps bilinear_taps(int in_size, int out_size, int begin, int n) {
  require(in_size >= 1 && out_size >= 1, "resize: sizes must be >= 1, got ", in_size, " -> ",
          out_size);
  require(begin >= 0 && n >= 0 && begin + std::int64_t(n) <= out_size, "resize: window [", begin,
          ", ", begin + std::int64_t(n), ") is outside the ", out_size, " outputs");
  // Pillow takes the source range as float32 numbers and their difference in float32.
  const double scale = double(float(in_size) - 0.0f) / out_size;
  const double fscale = scale < 1.0 ? 1.0 : scale;
  const double support = 1.0 * fscale;
  const double inv = 1.0 / fscale;
  BilinearTaps t;
  t.ksize = int(std::ceil(support)) * 2 + 1;
  t.first.assign(n, 0);
  t.count.assign(n, 0);
  t.coef.assign(std::size_t(n) * t.ksize, 0);
  std::vector<double> k(t.ksize);
  for (int o = 0; o < n; ++o) {
    const double centre = 0.0 + (begin + o + 0.5) * scale;
    int lo = int(centre - support + 0.5);
    if (lo < 0) lo = 0;
    int cnt = int(centre + support + 0.5);
    if (cnt > in_size) cnt = in_size;
    cnt = std::max(0, cnt - lo);
    double sum = 0.0;
    for (int i = 0; i < cnt; ++i) {
      double d = (i + lo - centre + 0.5) * inv;
      if (d < 0.0) d = -d;
      k[i] = d < 1.0 ? 1.0 - d : 0.0;
      sum += k[i];
    }
    std::int32_t* c = &t.coef[std::size_t(o) * t.ksize];
    for (int i = 0; i < cnt; ++i) {
      const double v = sum != 0.0 ? k[i] / sum : k[i];
      c[i] = v < 0 ? std::int32_t(-0.5 + v * (1 << kBits)) : std::int32_t(0.5 + v * (1 << kBits));
    }
    t.first[o] = lo;
    t.count[o] = cnt;
  }
  return t;
}

namespace {

// The horizontal pass of rows [r0, r0 + nr) of src into tmp (nr, nx, 3).
void horizontal_generic(const std::uint8_t* src, std::int64_t row_bytes, int stride, int r0, int nr,
                        const BilinearTaps& tx, int nx, std::uint8_t* tmp) {
  for (int r = 0; r < nr; ++r) {
    const std::uint8_t* s = src + (r0 + r) * row_bytes;
    std::uint8_t* d = tmp + std::int64_t(r) * nx * 3;
    for (int o = 0; o < nx; ++o) {
      const std::int32_t* c = &tx.coef[std::size_t(o) * tx.ksize];
      const std::uint8_t* p = s + std::int64_t(tx.first[o]) * stride;
      std::int32_t a0 = kHalf, a1 = kHalf, a2 = kHalf;
      for (int i = 0; i < tx.count[o]; ++i, p += stride) {
        a0 += p[0] * c[i];
        a1 += p[1] * c[i];
        a2 += p[2] * c[i];
      }
      d[3 * o] = clip8(a0);
      d[3 * o + 1] = clip8(a1);
      d[3 * o + 2] = clip8(a2);
    }
  }
}

// The vertical pass: out row o = taps of tmp rows (bytes of a row are independent samples).
void vertical_generic(const std::uint8_t* tmp, std::int64_t row, const BilinearTaps& ty, int r0,
                      int ny, std::uint8_t* out) {
  for (int o = 0; o < ny; ++o) {
    const std::int32_t* c = &ty.coef[std::size_t(o) * ty.ksize];
    const std::uint8_t* base = tmp + (ty.first[o] - r0) * row;
    std::uint8_t* d = out + o * row;
    for (std::int64_t b = 0; b < row; ++b) {
      std::int32_t a = kHalf;
      for (int i = 0; i < ty.count[o]; ++i) a += base[i * row + b] * c[i];
      d[b] = clip8(a);
    }
  }
}

#if LRPFAST_RESAMPLE_AVX2
// Integer sums are exact in any order, so the vector passes give the generic passes' bytes.
__attribute__((target("avx2"))) inline __m128i load16(const std::uint8_t* p,
                                                       const std::uint8_t* end) {
  if (p + 16 <= end) return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  std::uint8_t tail[16] = {};   // the last pixels of the buffer: no read past its end
  std::memcpy(tail, p, std::size_t(end - p));
  return _mm_loadu_si128(reinterpret_cast<const __m128i*>(tail));
}

// Four taps per step with 16-bit multiply-adds: each weight w (22 fractional bits) is split as
// w = hi * 2^11 + lo (lo in 0..2047), so that hi and lo fit the int16 operands of pmaddwd, and
// sum(pixel * w) = (sum(pixel * hi) << 11) + sum(pixel * lo) exactly. Lanes of the 128-bit half
// h (taps 2h and 2h + 1 of the step) hold, per channel, the pair (pixel of tap 2h, of 2h + 1).
__attribute__((target("avx2"))) void horizontal_avx2(const std::uint8_t* src,
                                                      const std::uint8_t* end,
                                                      std::int64_t row_bytes, int stride, int r0,
                                                      int nr, const BilinearTaps& tx, int nx,
                                                      std::uint8_t* tmp) {
  const int quads = (tx.ksize + 3) / 4;
  // per output and step: 16 int16 (hi) then 16 int16 (lo), laid out as the pixel pairs
  std::vector<std::int16_t> wv(std::size_t(nx) * quads * 32, 0);
  for (int o = 0; o < nx; ++o)
    for (int i = 0; i < tx.count[o]; ++i) {
      const std::int32_t c = tx.coef[std::size_t(o) * tx.ksize + i];
      std::int16_t* w = &wv[(std::size_t(o) * quads + i / 4) * 32];
      const int lane = (i % 4) / 2 * 8, odd = i % 2;
      for (int ch = 0; ch < 3; ++ch) {
        w[lane + 2 * ch + odd] = std::int16_t(c >> 11);
        w[16 + lane + 2 * ch + odd] = std::int16_t(c & 2047);
      }
    }
  const char s = char(stride);
  const __m256i spread = _mm256_setr_epi8(
      0, -1, s, -1, 1, -1, char(s + 1), -1, 2, -1, char(s + 2), -1, -1, -1, -1, -1,
      char(2 * s), -1, char(3 * s), -1, char(2 * s + 1), -1, char(3 * s + 1), -1, char(2 * s + 2),
      -1, char(3 * s + 2), -1, -1, -1, -1, -1);
  const __m128i half = _mm_set1_epi32(kHalf);
  for (int r = 0; r < nr; ++r) {
    const std::uint8_t* sp = src + (r0 + r) * row_bytes;
    std::uint8_t* d = tmp + std::int64_t(r) * nx * 3;
    for (int o = 0; o < nx; ++o) {
      const std::uint8_t* p = sp + std::int64_t(tx.first[o]) * stride;
      const __m256i* w = reinterpret_cast<const __m256i*>(&wv[std::size_t(o) * quads * 32]);
      const int nq = (tx.count[o] + 3) / 4;
      __m256i hi = _mm256_setzero_si256(), lo = _mm256_setzero_si256();
      for (int q = 0; q < nq; ++q, p += 4 * stride) {
        const __m256i px = _mm256_shuffle_epi8(_mm256_broadcastsi128_si256(load16(p, end)), spread);
        hi = _mm256_add_epi32(hi, _mm256_madd_epi16(px, _mm256_loadu_si256(w + 2 * q)));
        lo = _mm256_add_epi32(lo, _mm256_madd_epi16(px, _mm256_loadu_si256(w + 2 * q + 1)));
      }
      const __m128i h = _mm_add_epi32(_mm256_castsi256_si128(hi), _mm256_extracti128_si256(hi, 1));
      const __m128i l = _mm_add_epi32(_mm256_castsi256_si128(lo), _mm256_extracti128_si256(lo, 1));
      __m128i v = _mm_add_epi32(_mm_add_epi32(_mm_slli_epi32(h, 11), l), half);
      v = _mm_srai_epi32(v, kBits);
      v = _mm_packus_epi16(_mm_packs_epi32(v, v), v);  // clip to 0..255
      const std::uint32_t px = std::uint32_t(_mm_cvtsi128_si32(v));
      std::memcpy(d + 3 * o, &px, 3);
    }
  }
}

__attribute__((target("avx2"))) void vertical_avx2(const std::uint8_t* tmp, std::int64_t row,
                                                    const BilinearTaps& ty, int r0, int ny,
                                                    std::uint8_t* out) {
  const __m256i half = _mm256_set1_epi32(kHalf);
  for (int o = 0; o < ny; ++o) {
    const std::int32_t* c = &ty.coef[std::size_t(o) * ty.ksize];
    const std::uint8_t* base = tmp + (ty.first[o] - r0) * row;
    std::uint8_t* d = out + o * row;
    const int cnt = ty.count[o];
    std::int64_t b = 0;
    for (; b + 16 <= row; b += 16) {
      __m256i a = half, e = half;
      for (int i = 0; i < cnt; ++i) {
        const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(base + i * row + b));
        const __m256i wi = _mm256_set1_epi32(c[i]);
        a = _mm256_add_epi32(a, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(x), wi));
        e = _mm256_add_epi32(e, _mm256_mullo_epi32(_mm256_cvtepu8_epi32(_mm_srli_si128(x, 8)), wi));
      }
      a = _mm256_srai_epi32(a, kBits);
      e = _mm256_srai_epi32(e, kBits);
      // packs/packus work within 128-bit lanes: reorder to bytes 0..15
      const __m256i w16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, e), 0xD8);
      const __m128i b8 =
          _mm_packus_epi16(_mm256_castsi256_si128(w16), _mm256_extracti128_si256(w16, 1));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(d + b), b8);
    }
    for (; b < row; ++b) {
      std::int32_t a = kHalf;
      for (int i = 0; i < cnt; ++i) a += base[i * row + b] * c[i];
      d[b] = clip8(a);
    }
  }
}
#endif

thread_local std::vector<std::uint8_t> t_rows;   // the horizontal pass's rows, kept per thread

}  // namespace

void resize_bilinear_u8(const std::uint8_t* src, std::int64_t src_bytes, int h, int w,
                        std::int64_t row_bytes, int stride, int out_h, int out_w, int y0, int x0,
                        int ny, int nx, std::uint8_t* out) {
  require(stride == 3 || stride == 4, "resize: pixels must be 3 or 4 bytes, got ", stride);
  require(h >= 1 && w >= 1 && row_bytes >= std::int64_t(w) * stride &&
              src_bytes >= (h - 1) * row_bytes + std::int64_t(w) * stride,
          "resize: the source buffer does not hold ", h, " x ", w, " pixels");
  const BilinearTaps ty = bilinear_taps(h, out_h, y0, ny);
  const BilinearTaps tx = bilinear_taps(w, out_w, x0, nx);
  if (ny == 0 || nx == 0) return;
  const bool horizontal = out_w != w, vertical = out_h != h;
  // the source rows the window needs
  const int r0 = vertical ? ty.first[0] : y0;
  const int r1 = vertical ? ty.first[ny - 1] + ty.count[ny - 1] : y0 + ny;
  const std::int64_t row = std::int64_t(nx) * 3;
  std::uint8_t* rows = out;
  if (vertical) {
    t_rows.resize(std::size_t(r1 - r0) * row);
    rows = t_rows.data();
  }
  if (horizontal) {
#if LRPFAST_RESAMPLE_AVX2
    if (std::strcmp(simd_kernels(), "generic") != 0)
      horizontal_avx2(src, src + src_bytes, row_bytes, stride, r0, r1 - r0, tx, nx, rows);
    else
#endif
      horizontal_generic(src, row_bytes, stride, r0, r1 - r0, tx, nx, rows);
  } else {
    for (int r = r0; r < r1; ++r)
      for (int o = 0; o < nx; ++o)
        std::memcpy(rows + (r - r0) * row + 3 * o,
                    src + r * row_bytes + std::int64_t(x0 + o) * stride, 3);
  }
  if (!vertical) return;   // the rows are the window's rows, written to out
#if LRPFAST_RESAMPLE_AVX2
  if (std::strcmp(simd_kernels(), "generic") != 0) {
    vertical_avx2(rows, row, ty, r0, ny, out);
    return;
  }
#endif
  vertical_generic(rows, row, ty, r0, ny, out);
}

}  // namespace lrpfast::cpu

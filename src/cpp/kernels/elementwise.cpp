#include "kernels/elementwise.hpp"

#include <cmath>

#include "kernels/check.hpp"
#include "kernels/parallel.hpp"

namespace lrpfast {

void check_stabilizer(double eps) {
  require(std::isfinite(eps) && eps >= 0, "stabilizer eps must be finite and >= 0, got ", eps);
}

namespace cpu {

void stabilized_divide(std::int64_t n, const float* r, const float* z, float eps, bool zero_to_zero,
                       float* out) {
  if (zero_to_zero) {
    parallel_for(n, n, [&](std::int64_t lo, std::int64_t hi) {
      for (std::int64_t i = lo; i < hi; ++i) {
        const float d = z[i] >= 0.f ? z[i] + eps : z[i] - eps;
        out[i] = d == 0.f ? 0.f : r[i] / d;
      }
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

void alphabeta_signal(std::int64_t N, std::int64_t G, std::int64_t Og, std::int64_t P,
                      const float* r, const float* z, const float* zp, float alpha, float beta,
                      float* out) {
  const std::int64_t rows = N * G * Og;  // one (n, g, o) channel plane per row
  parallel_for(rows, rows * P, [&](std::int64_t lo, std::int64_t hi) {
    for (std::int64_t t = lo; t < hi; ++t) {
      const std::int64_t ng = t / Og, o = t % Og;
      const float* rr = r + t * P;
      const float* zz = z + t * P;
      const float* pp = zp + t * P;
      float* op = out + (ng * 2 * Og + o) * P;  // (n, g, 0, o, :)
      float* on = op + Og * P;                  // (n, g, 1, o, :)
      for (std::int64_t i = 0; i < P; ++i) {
        const float zpi = pp[i], zni = zz[i] - pp[i];
        op[i] = zpi == 0.f ? 0.f : alpha * (rr[i] / zpi);
        on[i] = zni == 0.f ? 0.f : -beta * (rr[i] / zni);
      }
    }
  });
}

}  // namespace cpu
}  // namespace lrpfast

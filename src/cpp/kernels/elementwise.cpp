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

}  // namespace cpu
}  // namespace lrpfast

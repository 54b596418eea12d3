#include "kernels/linear.hpp"

#include "kernels/check.hpp"
#include "kernels/parallel.hpp"
#include "kernels/streamed.hpp"

namespace lrpfast {

LinearGeom make_linear_geom(std::int64_t N, std::int64_t K, std::int64_t O, std::int64_t w_k) {
  require(N >= 0, "linear: batch size must be >= 0, got ", N);
  require(K >= 1 && O >= 1, "linear: input and output sizes must be >= 1, got ", K, " and ", O);
  require(w_k == K, "linear: weight has ", w_k, " inputs per output but x has ", K, " features");
  return LinearGeom{checked_int(N, "linear: batch size"), checked_int(K, "linear: input size"),
                    checked_int(O, "linear: output size")};
}

namespace cpu {

void linear_forward(const LinearGeom& g, const float* x, const float* w, const float* b, float* y) {
  gemm_streamed_nt(g.N, g.O, g.K, x, g.K, w, g.K, y, g.O);
  if (!b) return;
  parallel_for(g.N, std::int64_t(g.N) * g.O, [&](std::int64_t n0, std::int64_t n1) {
    for (std::int64_t n = n0; n < n1; ++n) {
      float* row = y + n * g.O;
      for (int o = 0; o < g.O; ++o) row[o] += b[o];
    }
  });
}

void linear_backward_data(const LinearGeom& g, const float* dy, const float* w, float* dx) {
  gemm_streamed_nn(g.N, g.K, g.O, dy, g.O, w, g.K, dx, g.K);
}

}  // namespace cpu
}  // namespace lrpfast

// Local response normalisation (Caffe's LRN layer), float32, NCHW.
//   ACROSS_CHANNELS: scale[c] = k + alpha/n * sum_{c' = c-(n-1)/2 .. c+(n-1)/2, clipped} x[c']^2
//   WITHIN_CHANNEL:  scale    = 1 + alpha/n^2 * sum over the n x n spatial window centred at the
//                    pixel (zero padding (n-1)/2) of x^2 -- Caffe builds it from an AVE pooling
//                    whose divisor is always n^2 here, and a Power layer with shift 1, so `k` is
//                    ignored in this region (as in Caffe).
//   y = x * scale^(-beta); scale (the shape of x) is returned for the backward / LRP rules.
#pragma once
#include <cstdint>

namespace lrpfast {

enum class LrnRegion { Across, Within };

struct LrnParams {
  int local_size;  // odd, >= 1
  float alpha, beta, k;
  LrnRegion region;
};

// Checks local_size (odd, >= 1), finite alpha/beta/k; throws std::invalid_argument.
LrnParams make_lrn_params(std::int64_t local_size, double alpha, double beta, double k,
                          const char* region);

namespace cpu {
// x (N,C,H,W) -> y, scale (N,C,H,W)
void lrn_forward(const LrnParams& p, int N, int C, int H, int W, const float* x, float* y,
                 float* scale);
}  // namespace cpu
}  // namespace lrpfast

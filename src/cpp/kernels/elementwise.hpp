// Element-wise primitives of the relevance rules, float32.
#pragma once
#include <cstdint>

namespace lrpfast {

// Checks eps (finite, >= 0); throws std::invalid_argument.
void check_stabilizer(double eps);

namespace cpu {
// out[i] = r[i] / (z[i] + eps * sign(z[i])), sign(0) = +1 (so -0.0 counts as +).
// zero_to_zero: where that denominator is exactly 0, out[i] = 0 (LRP: "a zero denominator
// contributes nothing"); otherwise IEEE division (inf / nan). out may alias r or z.
void stabilized_divide(std::int64_t n, const float* r, const float* z, float eps, bool zero_to_zero,
                       float* out);

// The alpha-beta signal for inputs x >= 0, from the layer output z and its positive part zp
// (z, zp, r: (N, G*Og, P), G groups of Og channels, P elements per channel). Writes
// out (N, G, 2, Og, P):  out[n,g,0,o,:] = alpha * r / zp,  out[n,g,1,o,:] = -beta * r / (z - zp)
// (z - zp is the negative part zn, since b = b+ + b-), a zero denominator giving 0. The
// transposed product with the stacked weights [W+; W-] (per group) then yields
// alpha * W+^T (r/zp) - beta * W-^T (r/zn) in ONE gemm of depth 2*Og.
void alphabeta_signal(std::int64_t N, std::int64_t G, std::int64_t Og, std::int64_t P,
                      const float* r, const float* z, const float* zp, float alpha, float beta,
                      float* out);
}  // namespace cpu
}  // namespace lrpfast

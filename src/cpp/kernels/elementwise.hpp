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
}  // namespace cpu
}  // namespace lrpfast

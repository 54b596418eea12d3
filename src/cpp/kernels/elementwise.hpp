// Element-wise primitives of the relevance rules, float32.
#pragma once
#include <cstdint>

namespace lrpfast {

// Checks eps (finite, >= 0); throws std::invalid_argument.
void check_stabilizer(double eps);

// Caffe's EltwiseParameter operations (same codes).
enum class EltwiseOp : int { Prod = 0, Sum = 1, Max = 2 };
// "prod", "sum" or "max" -> EltwiseOp; throws std::invalid_argument otherwise.
EltwiseOp parse_eltwise_op(const char* name);

// r / (z + eps * sign(z)), sign(0) = +1, and 0 where that denominator is exactly 0: the one
// definition of the stabilised quotient (stabilized_divide, and fused into conv_backward_data).
// Written branch-free (the division never sees the zero it would be masked for), so loops over
// it vectorise: GCC will not if-convert a division that could trap.
inline float stabilized_quotient(float r, float z, float eps) {
  const float d = z + (z >= 0.f ? eps : -eps);
  const bool zero = d == 0.f;
  const float q = r / (zero ? 1.f : d);
  return zero ? 0.f : q;
}

namespace cpu {
// Nonzero when some x[i], i < n, is NaN or +-inf (its exponent bits all set): the one test of
// all_finite and of the kernels that check their own output while it is in cache. Compiled for
// AVX-512 and AVX2 as well as the baseline (the CPU picks at load time where the toolchain
// supports it): a kernel's fused check then costs a fraction of the product it follows.
std::uint32_t nonfinite_bits(const float* x, std::int64_t n);

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
// guards (the LRP Toolbox's alpha-beta): a part contributes only where zp > 0 (zn < 0).
void alphabeta_signal(std::int64_t N, std::int64_t G, std::int64_t Og, std::int64_t P,
                      const float* r, const float* z, const float* zp, float alpha, float beta,
                      bool guards, float* out);

// Sign parts of a weight matrix w (rows, K): pos = max(w, 0) and/or neg = min(w, 0) (either
// may be null), one pass over w; the alpha-beta rule's W+ / W- derived where they are used.
void weight_signs(std::int64_t rows, std::int64_t K, const float* w, float* pos, float* neg);

// Relevance of Caffe's Eltwise SUM y = sum_k c_k x_k under the z rule, each operand getting its
// share of y (eps-stabilised; Bach et al. 2015, eq. 56, with the sum's operands as the inputs):
//   outs[k][i] = (c_k * xs[k][i]) * stabilized_quotient(r[i], y[i], eps)
// in that float32 order, so bit-identical to numpy's np.float32(c) * x * stabilized_divide(r, y).
// One pass for all K outputs (coeffs: K values; nullptr = all 1). y nullptr: the sum is
// recomputed block by block with eltwise_forward's bits (a forward that fused its ReLU kept no y).
// finite (optional): set to whether every output element is finite, tested block by block while
// the block is in cache.
void eltwise_sum_relevance(int K, const float* const* xs, const float* coeffs, std::int64_t n,
                           const float* r, const float* y, float eps, float* const* outs,
                           bool* finite = nullptr);

// True when no x[i] is NaN or +-infinity (exponent bits all ones), in one parallel pass at
// memory speed (the engine's finiteness checks after every layer; numpy's isfinite or a float
// sum costs several times more).
bool all_finite(std::int64_t n, const float* x);

// True when some x[i] < 0 (as numpy's (x < 0).any(): -0 and NaN are not negative), in one
// parallel pass that stops at the first block holding one. The alpha-beta and z+ rules ask it of
// every input before taking the x >= 0 shortcuts; numpy's version builds a bool array first.
bool any_negative(std::int64_t n, const float* x);

// out[i] = x[i] rounded to IEEE half precision (binary16), to nearest with ties to even, as
// numpy's x.astype(np.float16): overflow gives +-inf, values below half's subnormal range +-0;
// NaN stays NaN (quieted, payload truncated, as the x86 F16C instruction does). F16C (8 lanes)
// where the CPU has it and the simd setting is not "generic", else a portable bit-exact loop;
// both give the same bits. Serial: it serves the pipeline's writer thread, beside the engine.
void to_float16(std::int64_t n, const float* x, std::uint16_t* out);

// Caffe's ReLU forward, y = x > 0 ? x : slope * x, rounded as numpy's np.where(x > 0, x, slope*x);
// slope 0 gives +0 for x <= 0 (as np.maximum(x, 0)), NaN staying NaN.
void relu_forward(std::int64_t n, const float* x, float slope, float* y);

// Caffe's Eltwise forward over K >= 1 inputs xs[0..K) of n elements each (the same shape),
// evaluated per element in input order with float32 rounding after every step, so the result is
// bit-identical to the obvious numpy loop (and to the CUDA twin):
//   Sum:  y = ((0 + c[0]*x0) + c[1]*x1) + ...   (coeffs: K values; nullptr = all 1)
//   Prod: y = (x0 * x1) * ...                   (coeffs ignored)
//   Max:  y = max_k xk; argmax[i] = the FIRST k holding it (strictly greater wins; a NaN input
//         wins over a number, so NaN propagates as in np.maximum). argmax may be nullptr.
// relu (Sum only, optional): also writes relu[i] = relu_forward(y[i], slope 0), from each block
// of the sum while it is in cache; y may then be nullptr (the sum is not stored). A residual
// block's sum and its ReLU thus cost one pass, and the net keeps no sum it can recompute.
void eltwise_forward(EltwiseOp op, int K, const float* const* xs, const float* coeffs,
                     std::int64_t n, float* y, std::int32_t* argmax, float* relu = nullptr);

// The forward of BatchNorm/Scale after folding (a per-channel affine map), x and y (N, C, P):
// y[n,c,p] = x[n,c,p] * scale[c] + bias[c], rounded after the product and after the sum (as
// numpy's x * scale + bias; the default build emits no fused multiply-add). bias nullptr: y = x * scale.
// y may alias x.
void channel_affine(std::int64_t N, std::int64_t C, std::int64_t P, const float* x,
                    const float* scale, const float* bias, float* y);
}  // namespace cpu
}  // namespace lrpfast

// Convolutions with few input channels per group (a network's first layer on RGB images):
// computed tap by tap, with the vector lanes along each output row, instead of im2col + gemm.
//
// Such a layer's im2col matrix has only C/group * kh * kw rows (CaffeNet's conv1 363, ResNet's
// 147, VGG-16's 27) against thousands of columns: the product is short and wide, OpenBLAS packs
// the whole column matrix once for a few multiply-adds per element, and the forward ran at half
// oneDNN's rate (Xeon with AVX-512, 2 threads: ResNet-50's 7x7 stride-2 conv1 at batch 8 11.9 vs
// 6.2 ms, CaffeNet's conv1 at batch 1 1.8 vs 0.8 ms, VGG-16's conv1_1 2.1 vs 1.1 ms).
//
// Here every output row is a set of 16-lane vectors (AVX-512; 8 lanes with AVX2). Its input
// rows are first split by column phase (column ow*sw + kj*dw of the padded row is element
// ow + (kj*dw)/sw of phase (kj*dw) % sw), so each tap (c, ki, kj) reads its 16 inputs as one
// contiguous vector whatever the stride or dilation, and a register tile of OB output channels
// by NV vectors takes one broadcast weight per channel:
//
//   y[o, oh, ow] = b[o] + sum over taps t = (c, ki, kj) in order of w[o, t] x[c, oh*sh - ph +
//                  ki*dh, ow*sw - pw + kj*dw]   (x = 0 outside the image)
//
// Every output element is ONE chain of fused multiply-adds from b[o] (+0 without a bias) over the
// taps in (c, ki, kj) order: the AVX-512 and AVX2 kernels give the same bits, and an image's
// result depends neither on its batch nor on the thread count (deterministic in every mode).
#pragma once

#include "kernels/conv.hpp"

namespace lrpfast {
namespace cpu {

// Whether conv_forward takes this path: under set_conv_algo Auto (default) for groups of at most
// kTapsMaxChannels input channels where the CPU has AVX2 + FMA (and the SIMD setting allows it);
// under Taps wherever the CPU has them; never under Direct.
bool taps_applies(const ConvGeom& g);

// conv_forward's contract through OutPlanes (y, or a stacked pair's y and y2).
void taps_forward(const ConvGeom& g, const float* x, const float* w, const float* b,
                  const OutPlanes& out);

}  // namespace cpu
}  // namespace lrpfast

// Winograd F(2x2, 3x3) convolution for 3x3 / stride 1 / dilation 1 kernels (any pad, any group):
// the CPU engine's fast path for both conv_forward and conv_backward_data (the transposed product
// of a 3x3 stride-1 convolution is itself a 3x3 stride-1 convolution with the kernel flipped and
// its channel axes swapped, padded by 2 - pad).
//
// Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks" (arXiv:1509.09308):
// every 2x2 output tile is Y = A^T [ (G g G^T) (.) (B^T d B) ] A, with d the 4x4 input tile and g
// the 3x3 kernel; summed over input channels, the 16 element-wise products become 16 matrix
// products U[xi] (K x C) * V[xi] (C x tiles), 2.25x fewer multiplications than the direct method.
// F(2x2,3x3) keeps float32 accuracy (its transforms only add, subtract and halve); the larger
// F(4x4,3x3) would not, so it is not used.
//
//   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]
//   G   = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]
//   A^T = [1 1 1 0; 0 1 -1 -1]
//
// Work is done in blocks of whole tile rows: input transform of a block -> 16 gemms -> output
// transform, so the transformed tiles stay in cache. Many blocks run concurrently, one per pool
// thread; few blocks run one after another with the pool inside (the 16 gemms spread over it).
// Every gemm is single-threaded and a tile's gemm column depends only on its image (whole small
// images start at 16-column boundaries), so an image's result does not depend on the rest of the
// batch or on the thread count. The backward can fuse an LRP rule's quotient (into the input
// transform) and product (into the output transform): see BackwardFusion in conv.hpp.
#pragma once

#include "kernels/conv.hpp"

namespace lrpfast {
namespace cpu {

// Which algorithm conv_forward / conv_backward_data use: Auto picks Winograd for 3x3 stride-1
// kernels with enough channels, the taps path (taps.hpp) for a forward with few input channels
// per group, im2col + gemm otherwise; Direct is im2col + gemm everywhere; Winograd forces it
// wherever it applies (im2col elsewhere); Taps forces the taps path for every forward where the
// CPU has its kernels (never Winograd).
enum class ConvAlgo { Auto = 0, Direct = 1, Winograd = 2, Taps = 3 };
void set_conv_algo(ConvAlgo a);  // process-wide
ConvAlgo conv_algo();  // default Auto, or LRPFAST_CONV_ALGO=direct|winograd|taps|auto

// True when the call should take the Winograd path (geometry applies and, under Auto, the
// channel counts make its 16 gemms efficient). backward: the transposed product (needs pad <= 2).
bool winograd_applies(const ConvGeom& g, bool backward);

// The transformed kernels U = G g G^T of w (O, C/group, 3, 3), 16 * O * C/group floats, as
// winograd_forward (adjoint false) or winograd_backward_data (adjoint true) use them. Passing
// them in (U) skips the transform, which at batch 1 costs more than the products themselves
// (512 x 512 kernels on a 7 x 7 plane: 6 of 7 ms); the caller keeps them per weight set.
void winograd_kernels(const float* w, int O, int Cg, int group, bool adjoint, float* U);
// Same contracts as conv_forward / conv_backward_data (outputs overwritten); U: see
// winograd_kernels (nullptr: transformed here).
void winograd_forward(const ConvGeom& g, const float* x, const float* w, const float* b, float* y,
                      const float* U = nullptr);
void winograd_backward_data(const ConvGeom& g, const float* dy, const float* w, float* dx,
                            const BackwardFusion& f = {}, const float* U = nullptr);
// conv_forward_pair's Winograd path: w (O, C/group, 3, 3) stacks two weight sets per group (see
// conv_forward_pair), U its transformed kernels. One input transform per block serves both sets
// and each of the 16 products takes both (2x the rows: the transformed input is packed once);
// blocks are sized as for one set's own call. y, y2: (N, O/2, Ho, Wo).
void winograd_forward_pair(const ConvGeom& g, const float* x, const float* w, const float* b,
                           float* y, float* y2, const float* U = nullptr);

}  // namespace cpu
}  // namespace lrpfast

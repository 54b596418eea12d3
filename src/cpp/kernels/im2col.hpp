// im2col / col2im for one image (NCHW, float32) over a range of output rows.
//
// The column matrix has one row per (channel c, tap ki, tap kj) -- row index (c*kh + ki)*kw + kj,
// i.e. the layout of a Caffe weight row w[o, c, ki, kj] -- and one column per output position
// (oh, ow) with oh in [oh0, oh1): column (oh - oh0)*Wo + ow. Row r starts at col + r*ldcol, so
// several images (or row blocks) can sit side by side in one wider matrix.
#pragma once
#include "kernels/conv.hpp"

namespace lrpfast {
namespace cpu {

// col[r, j] = x[c, ih, iw] (0 in the padding) for the output rows [oh0, oh1) of image x (C,H,W).
void im2col(const ConvGeom& g, const float* x, int oh0, int oh1, float* col, std::int64_t ldcol);

// Adjoint of im2col: dx[c, ih, iw] += col[r, j] for every column of output rows [oh0, oh1).
// dx (C,H,W) is accumulated into, not overwritten.
void col2im(const ConvGeom& g, const float* col, std::int64_t ldcol, int oh0, int oh1, float* dx);

}  // namespace cpu
}  // namespace lrpfast

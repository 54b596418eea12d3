// CUDA twin of src/cpp/kernels/im2col.cpp. im2col: one thread per column-matrix element;
// col2im: one thread per input element gathering its taps (conv_out_coord), so no atomics and a
// deterministic sum. Index arithmetic: geometry.hpp.
#include "kernels/common.cuh"
#include "kernels/kernels.hpp"

namespace lrpfast {
namespace cuda {
namespace {

// col[n][r][(oh-oh0)*Wo + ow] at col + n*col_img + r*ldcol + ...; x image n at x + n*x_img.
__global__ void im2col_kernel(ConvGeom g, int nb, const float* __restrict__ x, long long x_img,
                              int oh0, int rows, float* __restrict__ col, long long ldcol,
                              long long col_img) {
  const long long K = g.k_total();
  const long long cols = (long long)rows * g.Wo;
  const long long total = nb * K * cols;
  LRPFAST_GRID_LOOP(i, total) {
    const long long j = i % cols;
    const long long r = (i / cols) % K;
    const long long n = i / (cols * K);
    int c, ki, kj;
    im2col_row_taps(int(r), g.kh, g.kw, &c, &ki, &kj);
    const int oh = oh0 + int(j / g.Wo), ow = int(j % g.Wo);
    const int ih = conv_in_coord(oh, ki, g.sh, g.ph, g.dh);
    const int iw = conv_in_coord(ow, kj, g.sw, g.pw, g.dw);
    float v = 0.f;
    if (ih >= 0 && ih < g.H && iw >= 0 && iw < g.W)
      v = x[n * x_img + (long long)c * g.in_plane() + (long long)ih * g.W + iw];
    col[n * col_img + r * ldcol + j] = v;
  }
}

// dx[n, c, ih, iw] (accumulate ? += : =) sum over taps of col[n][r][oh*Wo + ow] for the output
// rows [oh0, oh0 + rows).
__global__ void col2im_kernel(ConvGeom g, int nb, const float* __restrict__ col, long long ldcol,
                              long long col_img, int oh0, int rows, float* __restrict__ dx,
                              long long x_img, bool accumulate) {
  const long long plane = g.in_plane();
  const long long total = (long long)nb * g.C * plane;
  LRPFAST_GRID_LOOP(i, total) {
    const int iw = int(i % g.W), ih = int((i / g.W) % g.H);
    const int c = int((i / plane) % g.C);
    const long long n = i / (plane * g.C);
    float acc = 0.f;
    for (int ki = 0; ki < g.kh; ++ki) {
      const int oh = conv_out_coord(ih, ki, g.sh, g.ph, g.dh, g.Ho);
      if (oh < oh0 || oh >= oh0 + rows) continue;  // also oh == -1
      for (int kj = 0; kj < g.kw; ++kj) {
        const int ow = conv_out_coord(iw, kj, g.sw, g.pw, g.dw, g.Wo);
        if (ow < 0) continue;
        const long long r = ((long long)c * g.kh + ki) * g.kw + kj;
        acc += col[n * col_img + r * ldcol + (long long)(oh - oh0) * g.Wo + ow];
      }
    }
    float* d = dx + n * x_img + (i % (plane * g.C));
    *d = accumulate ? *d + acc : acc;
  }
}

}  // namespace

void im2col(const ConvGeom& g, const float* x, int oh0, int oh1, float* col, std::int64_t ldcol) {
  const long long n = g.k_total() * (long long)(oh1 - oh0) * g.Wo;
  if (n <= 0) return;
  LRPFAST_LAUNCH(im2col_kernel, blocks_for(n), kThreads, g, 1, x, 0, oh0, oh1 - oh0, col, ldcol, 0);
  LRPFAST_CUDA_LAUNCHED("im2col");
}

void col2im(const ConvGeom& g, const float* col, std::int64_t ldcol, int oh0, int oh1, float* dx) {
  const long long n = (long long)g.C * g.in_plane();
  if (n <= 0 || oh1 <= oh0) return;
  LRPFAST_LAUNCH(col2im_kernel, blocks_for(n), kThreads, g, 1, col, ldcol, 0, oh0, oh1 - oh0, dx, 0, true);
  LRPFAST_CUDA_LAUNCHED("col2im");
}

void im2col_batched(const ConvGeom& g, int nb, const float* x, float* col) {
  const long long P = g.out_plane(), K = g.k_total();
  const long long n = nb * K * P;
  if (n <= 0) return;
  LRPFAST_LAUNCH(im2col_kernel, blocks_for(n), kThreads, g, nb, x, (long long)g.C * g.in_plane(), 0, g.Ho,
                                             col, P, K * P);
  LRPFAST_CUDA_LAUNCHED("im2col_batched");
}

void col2im_batched(const ConvGeom& g, int nb, const float* col, float* dx) {
  const long long P = g.out_plane(), K = g.k_total(), x_img = (long long)g.C * g.in_plane();
  const long long n = nb * x_img;
  if (n <= 0) return;
  LRPFAST_LAUNCH(col2im_kernel, blocks_for(n), kThreads, g, nb, col, P, K * P, 0, g.Ho, dx, x_img, false);
  LRPFAST_CUDA_LAUNCHED("col2im_batched");
}

}  // namespace cuda
}  // namespace lrpfast

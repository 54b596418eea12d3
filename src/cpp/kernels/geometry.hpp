// Index arithmetic shared by the CPU kernels and their CUDA twins (src/cuda/kernels/, same stems).
// Everything here is a small inline function of plain integers so that nvcc can compile it for the
// device too: LRPFAST_HD expands to `__host__ __device__` under nvcc and to nothing otherwise.
// Validation (which throws) lives in the host-only make_*_geom() functions of conv.hpp / pool.hpp.
#pragma once

#if defined(__CUDACC__)
#define LRPFAST_HD __host__ __device__
#else
#define LRPFAST_HD
#endif

namespace lrpfast {

// Output sizes are computed in 64 bits (any int arguments, e.g. 2^30, cannot overflow) and
// saturate at INT_MAX; the host-only *_checked wrappers refuse sizes out of range.
LRPFAST_HD inline int saturate_int(long long v) { return v > 2147483647LL ? 2147483647 : int(v); }

// ---- convolution -------------------------------------------------------------------------------

// Extent of a dilated kernel: d(k-1)+1 input positions between its first and last tap.
LRPFAST_HD inline long long dilated_extent(int kernel, int dilation) {
  return (long long)dilation * (kernel - 1) + 1;
}

// Caffe's convolution output size (floor). The result is < 1 when the kernel does not fit the
// padded input; callers validate that.
LRPFAST_HD inline int conv_out_size(int in, int kernel, int stride, int pad, int dilation) {
  const long long span = (long long)in + 2LL * pad - dilated_extent(kernel, dilation);
  return span < 0 ? 0 : saturate_int(span / stride + 1);
}

// Input coordinate read by output coordinate `o` through kernel tap `k` (may lie in the padding,
// i.e. outside [0, in)).
LRPFAST_HD inline int conv_in_coord(int o, int k, int stride, int pad, int dilation) {
  return o * stride - pad + k * dilation;
}

// For one kernel tap `k`, the half-open range [*lo, *hi) of output coordinates whose input
// coordinate conv_in_coord(o, k, ...) lies inside [0, in). Outputs outside it read padding.
// Lets im2col/col2im run their inner loops without a per-element bounds test.
LRPFAST_HD inline void conv_valid_out_range(int in, int out, int k, int stride, int pad,
                                            int dilation, int* lo, int* hi) {
  const int off = k * dilation - pad;  // in_coord = o*stride + off
  // smallest o with o*stride + off >= 0
  int l = off >= 0 ? 0 : (-off + stride - 1) / stride;
  // smallest o with o*stride + off >= in  (=> valid o < h)
  const int lim = in - off;  // need o*stride < lim
  int h = lim <= 0 ? 0 : (lim + stride - 1) / stride;
  if (h > out) h = out;
  if (l > h) l = h;
  *lo = l;
  *hi = h;
}

// Inverse of conv_in_coord for the CUDA col2im (a gather): the output coordinate o in [0, out) that
// reads input coordinate `i` through tap `k` (conv_in_coord(o, k, ...) == i), or -1 when none does.
LRPFAST_HD inline int conv_out_coord(int i, int k, int stride, int pad, int dilation, int out) {
  const int t = i + pad - k * dilation;
  if (t < 0 || t % stride != 0) return -1;
  const int o = t / stride;
  return o < out ? o : -1;
}

// Row r of the im2col matrix -> (channel c, tap ki, tap kj): r = (c*kh + ki)*kw + kj, the layout of
// a Caffe weight row w[o, c, ki, kj].
LRPFAST_HD inline void im2col_row_taps(int r, int kh, int kw, int* c, int* ki, int* kj) {
  *c = r / (kh * kw);
  *ki = (r / kw) % kh;
  *kj = r % kw;
}

// Grouped convolution: where group `gi` starts in the weights (O, C/group, kh, kw), in one image of
// the input (C, H, W) and of the output (O, Ho, Wo), in elements.
LRPFAST_HD inline long long group_weight_offset(int gi, int cout_per_group, long long k_per_group) {
  return (long long)gi * cout_per_group * k_per_group;
}
LRPFAST_HD inline long long group_in_offset(int gi, int cin_per_group, long long in_plane) {
  return (long long)gi * cin_per_group * in_plane;
}
LRPFAST_HD inline long long group_out_offset(int gi, int cout_per_group, long long out_plane) {
  return (long long)gi * cout_per_group * out_plane;
}

// ---- pooling (Caffe semantics) -----------------------------------------------------------------

// Caffe's pooling output size. ceil_mode (Caffe's only mode): ceil((in + 2p - k)/s) + 1, then, when
// pad > 0, drop the last window if it would start inside the right/bottom padding
// ((out-1)*s >= in + p). floor mode: floor((in + 2p - k)/s) + 1. Returns 0 when in + 2p < k.
LRPFAST_HD inline int pool_out_size(int in, int kernel, int stride, int pad, bool ceil_mode) {
  const long long span = (long long)in + 2LL * pad - kernel;
  if (span < 0) return 0;
  long long out = (ceil_mode ? (span + stride - 1) / stride : span / stride) + 1;
  if (ceil_mode && pad > 0 && (out - 1) * stride >= (long long)in + pad) --out;
  return saturate_int(out);
}

// Window of output coordinate `o` along one axis, Caffe-style.
//   MAX: [start, end) clipped to [0, in).
//   AVE: the divisor `size` is counted on the window clipped to [-pad, in + pad) (padding counts),
//        the sum runs over the window clipped to [0, in).
struct PoolWindow {
  int start, end;  // clipped to the input
  int size;        // Caffe's AVE divisor along this axis (includes padding cells)
};

LRPFAST_HD inline PoolWindow pool_window(int o, int in, int kernel, int stride, int pad) {
  int start = o * stride - pad;
  int end = start + kernel;
  if (end > in + pad) end = in + pad;
  PoolWindow w;
  w.size = end - start;
  w.start = start < 0 ? 0 : start;
  w.end = end > in ? in : end;
  return w;
}

// Pooling's adjoint as a gather (CUDA pool backward): the half-open range [*lo, *hi) of output
// coordinates along one axis whose (clipped) window contains input coordinate `i` in [0, in). Empty
// when *lo >= *hi. Matches pool_window: o covers i iff o*stride - pad <= i < o*stride - pad + kernel.
LRPFAST_HD inline void pool_out_range(int i, int kernel, int stride, int pad, int out, int* lo,
                                      int* hi) {
  const int t = i + pad;
  int l = t < kernel ? 0 : (t - kernel) / stride + 1;
  int h = t / stride + 1;
  if (h > out) h = out;
  if (l > h) l = h;
  *lo = l;
  *hi = h;
}

// Flat index of (h, w) inside an input plane of width W: the value MAX pooling stores as argmax.
LRPFAST_HD inline int plane_index(int h, int w, int W) { return h * W + w; }

// ---- local response normalisation --------------------------------------------------------------

// Caffe's LRN window half width on the "before" side: (local_size - 1) / 2 (local_size is odd).
LRPFAST_HD inline int lrn_pre_pad(int local_size) { return (local_size - 1) / 2; }

}  // namespace lrpfast

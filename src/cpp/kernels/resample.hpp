// Resizing 8-bit RGB photos to the network input: Pillow's antialiased bilinear filter
// (Image.resize(..., BILINEAR)), computed bit for bit as Pillow computes it in its classic pass
// order, but only on the window of the resized picture that the network keeps (a centre crop is
// a fraction of it).
#pragma once
#include <cstdint>
#include <vector>

namespace lrpfast::cpu {

// The filter taps along one axis, resizing in_size samples to out_size, for the outputs
// [begin, begin + n). Pillow's rule for its antialiased bilinear filter:
//   scale = in_size / out_size, s = max(scale, 1) (the filter widens when shrinking),
//   centre_o = (o + 0.5) * scale,
//   taps i in [trunc(centre_o - s + 0.5), trunc(centre_o + s + 0.5)) clipped to [0, in_size),
//   w_i = tri((i - centre_o + 0.5) / s), tri(x) = max(0, 1 - |x|), normalised to sum 1,
//   then as fixed point with 22 fractional bits, rounded half away from zero.
struct BilinearTaps {
  int ksize = 0;                  // taps per output, at most
  std::vector<int> first, count;  // per output: first input index, number of taps
  std::vector<std::int32_t> coef; // per output: ksize weights (zero past count)
};
BilinearTaps bilinear_taps(int in_size, int out_size, int begin, int n);

// Rows [y0, y0 + ny) and columns [x0, x0 + nx) of the (out_h, out_w) bilinear resize of src
// (h, w) pixels of `stride` bytes (3: RGB, 4: RGBX, the first three are used), rows
// `row_bytes` apart, into out (ny, nx, 3). Pillow's classic order (every version up to 12; 13
// goes vertical first for some shapes): horizontal pass to 8 bits first (skipped when
// out_w == w), then vertical (skipped when out_h == h); every sum is
// 2^21 + sum(pixel * weight), shifted right by 22 and clipped to 0..255.
void resize_bilinear_u8(const std::uint8_t* src, std::int64_t src_bytes, int h, int w,
                        std::int64_t row_bytes, int stride, int out_h, int out_w, int y0, int x0,
                        int ny, int nx, std::uint8_t* out);

}  // namespace lrpfast::cpu

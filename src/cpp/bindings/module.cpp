// Python bindings of the CPU engine: numpy arrays <-> raw pointers; the GIL is released around
// every compute call; C++ exceptions become Python exceptions (std::invalid_argument -> ValueError,
// other std::exception -> RuntimeError). Every argument is validated here or in the kernels'
// make_*_geom() before any pointer is touched, so bad input from Python raises instead of crashing.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "bindings/args.hpp"
#include "kernels/check.hpp"
#include "kernels/conv.hpp"
#include "kernels/elementwise.hpp"
#include "kernels/gemm.hpp"
#include "kernels/host_memory.hpp"
#include "kernels/linear.hpp"
#include "kernels/lrn.hpp"
#include "kernels/parallel.hpp"
#include "kernels/pool.hpp"
#include "kernels/resample.hpp"
#include "kernels/streamed.hpp"
#include "kernels/taps.hpp"
#include "kernels/winograd.hpp"

namespace py = pybind11;
using lrpfast::chw;
using lrpfast::fail;
using lrpfast::pair;
using lrpfast::require;
using lrpfast::shape_str;
using lrpfast::to_index;
using i64 = std::int64_t;

namespace {

constexpr auto kIn = py::array::c_style | py::array::forcecast;

// An input converted to a C-contiguous array of T (a copy only when needed), with its shape
// checked: `ndim` dimensions (-1: any), described to the user as `layout` (e.g. "(N,C,H,W)").
template <class T>
struct Input {
  py::array_t<T, kIn> arr;
  std::vector<i64> shape;
  const T* data() const { return arr.data(); }
  i64 size() const { return i64(arr.size()); }
  i64 operator[](size_t i) const { return shape[i]; }
};

template <class T>
Input<T> input(const py::handle& obj, const char* name, int ndim, const char* layout) {
  if (obj.is_none()) fail(name, " is required, got None");
  auto arr = py::array_t<T, kIn>::ensure(obj);
  if (!arr)
    fail(name, " must be an array of ", std::is_same<T, float>::value ? "float32" : "int32",
         " (or convertible to one), got ",
         std::string(py::str(py::type::of(obj).attr("__name__"))));
  Input<T> in{arr, std::vector<i64>(arr.shape(), arr.shape() + arr.ndim())};
  if (ndim >= 0 && in.shape.size() != size_t(ndim))
    fail(name, " must be ", ndim, "-D ", layout, ", got shape ", shape_str(in.shape));
  return in;
}

// Optional bias: None -> nullptr; otherwise a 1-D array of length n.
const float* bias(const py::handle& obj, Input<float>& keep, i64 n) {
  if (obj.is_none()) return nullptr;
  keep = input<float>(obj, "b", 1, "(O)");
  require(keep[0] == n, "b must have shape (", n, ",) (one value per output), got ",
          shape_str(keep.shape));
  return keep.data();
}

template <class T>
py::array_t<T> output(const std::vector<i64>& shape) {
  return py::array_t<T>(std::vector<py::ssize_t>(shape.begin(), shape.end()));
}

// ---- functions -------------------------------------------------------------------------------

// The optional pre-transformed Winograd kernels of w (winograd_kernels): checked for their size.
const float* winograd_arg(const py::object& uo, Input<float>& keep, const lrpfast::ConvGeom& g) {
  if (uo.is_none()) return nullptr;
  keep = input<float>(uo, "winograd", 1, "(16*O*C/group,)");
  require(g.kh == 3 && g.kw == 3, "winograd: the kernels are 3x3 only, got ", g.kh, "x", g.kw);
  require(keep[0] == 16 * i64(g.O) * g.cin_per_group(), "winograd must hold 16*O*C/group = ",
          16 * i64(g.O) * g.cin_per_group(), " values (winograd_kernels of w), got ", keep[0]);
  return keep.data();
}

py::array_t<float> conv_forward(const py::object& xo, const py::object& wo, const py::object& bo,
                                const py::object& stride, const py::object& pad,
                                const py::object& dilation, const py::object& group,
                                const py::object& uo) {
  auto x = input<float>(xo, "x", 4, "(N,C,H,W)");
  auto w = input<float>(wo, "w", 4, "(O,C/group,kh,kw)");
  const auto g = lrpfast::conv_geom(x.shape, w.shape, stride, pad, dilation, to_index(group, "group"));
  Input<float> bk, uk;
  const float* b = bias(bo, bk, g.O);
  const float* u = winograd_arg(uo, uk, g);
  auto y = output<float>({g.N, g.O, g.Ho, g.Wo});
  float* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;
    lrpfast::cpu::conv_forward(g, x.data(), w.data(), b, yp, u);
  }
  return y;
}

py::array_t<float> winograd_kernels(const py::object& wo, i64 group, bool adjoint) {
  auto w = input<float>(wo, "w", 4, "(O,C/group,3,3)");
  require(w[2] == 3 && w[3] == 3, "w must hold 3x3 kernels, got shape ", shape_str(w.shape));
  require(group >= 1 && w[0] % group == 0, "group ", group, " must divide the output channels ",
          w[0]);
  auto U = output<float>({16 * w[0] * w[1]});
  float* up = U.mutable_data();
  {
    py::gil_scoped_release nogil;
    lrpfast::cpu::winograd_kernels(w.data(), int(w[0]), int(w[1]), int(group), adjoint, up);
  }
  return U;
}

bool winograd_applies(i64 n, const py::object& in_shape, const py::object& wo_shape,
                      const py::object& stride, const py::object& pad, const py::object& dilation,
                      i64 group, bool backward) {
  const auto in = chw(in_shape);
  std::vector<i64> ws;
  try {
    ws = wo_shape.cast<std::vector<i64>>();
  } catch (const py::cast_error&) {
    fail("w_shape must be a tuple (O, C/group, kh, kw), got ", std::string(py::repr(wo_shape)));
  }
  require(ws.size() == 4, "w_shape must be a tuple (O, C/group, kh, kw), got ",
          std::string(py::repr(wo_shape)));
  const auto s = pair(stride, "stride"), p = pair(pad, "pad"), d = pair(dilation, "dilation");
  const auto g = lrpfast::make_conv_geom(n, in[0], in[1], in[2], ws[0], ws[1], ws[2], ws[3], s[0],
                                         s[1], p[0], p[1], d[0], d[1], group);
  return lrpfast::cpu::winograd_applies(g, backward);
}

py::tuple conv_forward_pair(const py::object& xo, const py::object& wo, const py::object& bo,
                            const py::object& stride, const py::object& pad,
                            const py::object& dilation, const py::object& group,
                            const py::object& uo) {
  auto x = input<float>(xo, "x", 4, "(N,C,H,W)");
  auto w = input<float>(wo, "w", 4, "(O,C/group,kh,kw)");
  const auto g = lrpfast::conv_geom(x.shape, w.shape, stride, pad, dilation, to_index(group, "group"));
  lrpfast::require_conv_pair(g);
  Input<float> bk, uk;
  const float* b = bias(bo, bk, g.O);
  const float* u = winograd_arg(uo, uk, g);
  auto y = output<float>({g.N, g.O / 2, g.Ho, g.Wo}), y2 = output<float>({g.N, g.O / 2, g.Ho, g.Wo});
  float* yp = y.mutable_data();
  float* y2p = y2.mutable_data();
  {
    py::gil_scoped_release nogil;
    lrpfast::cpu::conv_forward_pair(g, x.data(), w.data(), b, yp, y2p, u);
  }
  return py::make_tuple(y, y2);
}

std::string conv_forward_algorithm(const py::object& xo, const py::object& wo,
                                   const py::object& stride, const py::object& pad,
                                   const py::object& dilation, const py::object& group) {
  auto x = input<float>(xo, "x", 4, "(N,C,H,W)");
  auto w = input<float>(wo, "w", 4, "(O,C/group,kh,kw)");
  const auto g = lrpfast::conv_geom(x.shape, w.shape, stride, pad, dilation, to_index(group, "group"));
  if (lrpfast::cpu::winograd_applies(g, false)) return "winograd";
  if (lrpfast::cpu::taps_applies(g)) return "taps";
  return lrpfast::cpu::pointwise_per_image(g) ? "pointwise" : "im2col";
}

py::object conv_backward_data(const py::object& dyo, const py::object& wo,
                              const py::object& in_shape, const py::object& stride,
                              const py::object& pad, const py::object& dilation,
                              const py::object& group, const py::object& zo, double eps,
                              const py::object& timeso, const py::object& uo, bool check_finite,
                              const py::object& addo) {
  auto dy = input<float>(dyo, "dy", 4, "(N,O,Ho,Wo)");
  auto w = input<float>(wo, "w", 4, "(O,C/group,kh,kw)");
  const auto in = chw(in_shape);
  const auto s = pair(stride, "stride"), p = pair(pad, "pad"), d = pair(dilation, "dilation");
  const auto g = lrpfast::make_conv_geom(dy[0], in[0], in[1], in[2], w[0], w[1], w[2], w[3], s[0],
                                         s[1], p[0], p[1], d[0], d[1], to_index(group, "group"));
  require(dy[1] == g.O && dy[2] == g.Ho && dy[3] == g.Wo, "dy must have shape (N, ", g.O, ", ",
          g.Ho, ", ", g.Wo, ") for this convolution of an input (", in[0], ", ", in[1], ", ", in[2],
          "), got ", shape_str(dy.shape));
  lrpfast::cpu::BackwardFusion f;
  Input<float> z, times;
  if (!zo.is_none()) {
    z = input<float>(zo, "z", 4, "(N,O,Ho,Wo)");
    require(z.shape == dy.shape, "z must have the shape of dy ", shape_str(dy.shape), ", got ",
            shape_str(z.shape));
    lrpfast::check_stabilizer(eps);
    f.z = z.data(), f.eps = float(eps);
  }
  auto dx = output<float>({g.N, g.C, g.H, g.W});
  if (!timeso.is_none()) {
    times = input<float>(timeso, "times", 4, "(N,C,H,W)");
    require(times.shape == std::vector<i64>{g.N, g.C, g.H, g.W},
            "times must have the shape of dx (", g.N, ", ", g.C, ", ", g.H, ", ", g.W, "), got ",
            shape_str(times.shape));
    f.times = times.data();
  }
  Input<float> add;
  if (!addo.is_none()) {
    require(f.times, "add needs times (it is added in the pass that multiplies by times)");
    add = input<float>(addo, "add", 4, "(N,C,H,W)");
    require(add.shape == times.shape, "add must have the shape of dx (", g.N, ", ", g.C, ", ", g.H,
            ", ", g.W, "), got ", shape_str(add.shape));
    f.add = add.data();
  }
  Input<float> uk;
  const float* u = winograd_arg(uo, uk, g);
  float* dxp = dx.mutable_data();
  std::atomic<bool> nonfinite{false};
  bool finite = true;
  if (check_finite && f.times) f.nonfinite = &nonfinite;
  {
    py::gil_scoped_release nogil;
    lrpfast::cpu::conv_backward_data(g, dy.data(), w.data(), dxp, f, u);
    // with times the kernel tested its products; without, one pass over dx
    if (check_finite) finite = f.times ? !nonfinite.load() : lrpfast::cpu::all_finite(dx.size(), dxp);
  }
  if (check_finite) return py::make_tuple(dx, finite);
  return std::move(dx);
}

py::array_t<float> linear_forward(const py::object& xo, const py::object& wo,
                                  const py::object& bo) {
  auto x = input<float>(xo, "x", 2, "(N,K)");
  auto w = input<float>(wo, "w", 2, "(O,K)");
  const auto g = lrpfast::make_linear_geom(x[0], x[1], w[0], w[1]);
  Input<float> bk;
  const float* b = bias(bo, bk, g.O);
  auto y = output<float>({g.N, g.O});
  float* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;
    lrpfast::cpu::linear_forward(g, x.data(), w.data(), b, yp);
  }
  return y;
}

py::array_t<float> linear_backward_data(const py::object& dyo, const py::object& wo) {
  auto dy = input<float>(dyo, "dy", 2, "(N,O)");
  auto w = input<float>(wo, "w", 2, "(O,K)");
  require(dy[1] == w[0], "dy has ", dy[1], " outputs per row but w has ", w[0], " rows");
  const auto g = lrpfast::make_linear_geom(dy[0], w[1], w[0], w[1]);
  auto dx = output<float>({g.N, g.K});
  float* dxp = dx.mutable_data();
  {
    py::gil_scoped_release nogil;
    lrpfast::cpu::linear_backward_data(g, dy.data(), w.data(), dxp);
  }
  return dx;
}

py::tuple pool_forward(const py::object& xo, const std::string& method, const py::object& kernel,
                       const py::object& stride, const py::object& pad, bool ceil_mode) {
  auto x = input<float>(xo, "x", 4, "(N,C,H,W)");
  const auto m = lrpfast::parse_pool_method(method.c_str());
  const auto k = pair(kernel, "kernel"), s = pair(stride, "stride"), p = pair(pad, "pad");
  const auto g = lrpfast::make_pool_geom(x[0], x[1], x[2], x[3], k[0], k[1], s[0], s[1], p[0], p[1],
                                         ceil_mode);
  auto y = output<float>({g.N, g.C, g.Ho, g.Wo});
  float* yp = y.mutable_data();
  if (m == lrpfast::PoolMethod::Max) {
    auto am = output<std::int32_t>({g.N, g.C, g.Ho, g.Wo});
    std::int32_t* ap = am.mutable_data();
    {
      py::gil_scoped_release nogil;
      lrpfast::cpu::pool_max_forward(g, x.data(), yp, ap);
    }
    return py::make_tuple(y, am);
  }
  {
    py::gil_scoped_release nogil;
    lrpfast::cpu::pool_ave_forward(g, x.data(), yp);
  }
  return py::make_tuple(y, output<std::int32_t>({0}));
}

py::array_t<float> pool_backward(const py::object& dyo, const py::object& in_shape,
                                 const std::string& method, const py::object& kernel,
                                 const py::object& stride, const py::object& pad,
                                 const py::object& argmax, const py::object& ceil_mode) {
  auto dy = input<float>(dyo, "dy", 4, "(N,C,Ho,Wo)");
  const auto m = lrpfast::parse_pool_method(method.c_str());
  const auto in = chw(in_shape);
  const auto k = pair(kernel, "kernel"), s = pair(stride, "stride"), p = pair(pad, "pad");
  auto geom = [&](bool ceil) {
    return lrpfast::make_pool_geom(dy[0], in[0], in[1], in[2], k[0], k[1], s[0], s[1], p[0], p[1],
                                   ceil);
  };
  auto fits = [&](const lrpfast::PoolGeom& g) {
    return dy[1] == g.C && dy[2] == g.Ho && dy[3] == g.Wo;
  };
  lrpfast::PoolGeom g;
  if (!ceil_mode.is_none()) {
    g = geom(bool(py::bool_(ceil_mode)));
  } else {  // not given: the mode whose output shape dy has (ceil, Caffe's, first)
    g = geom(true);
    if (!fits(g)) {
      try {
        const auto gf = geom(false);
        if (fits(gf)) g = gf;
      } catch (const std::invalid_argument&) {
      }
    }
  }
  require(fits(g), "dy must have shape (N, ", g.C, ", ", g.Ho, ", ", g.Wo,
          ") for this pooling of an input (", in[0], ", ", in[1], ", ", in[2], "), got ",
          shape_str(dy.shape));
  auto dx = output<float>({g.N, g.C, g.H, g.W});
  float* dxp = dx.mutable_data();
  if (m == lrpfast::PoolMethod::Max) {
    if (argmax.is_none()) fail("argmax is required for max pooling, got None");
    auto am = input<std::int32_t>(argmax, "argmax", 4, "(N,C,Ho,Wo)");
    require(am.shape == dy.shape, "argmax must have the shape of dy ", shape_str(dy.shape),
            ", got ", shape_str(am.shape));
    py::gil_scoped_release nogil;
    lrpfast::cpu::pool_max_backward(g, dy.data(), am.data(), dxp);
  } else {
    py::gil_scoped_release nogil;
    lrpfast::cpu::pool_ave_backward(g, dy.data(), dxp);
  }
  return dx;
}

py::tuple lrn_forward(const py::object& xo, const py::object& local_size, double alpha, double beta,
                      double k, const std::string& region) {
  auto x = input<float>(xo, "x", 4, "(N,C,H,W)");
  const auto p =
      lrpfast::make_lrn_params(to_index(local_size, "local_size"), alpha, beta, k, region.c_str());
  for (size_t i = 0; i < 4; ++i) lrpfast::checked_int(x[i], "lrn: dimension");
  auto y = output<float>(x.shape), sc = output<float>(x.shape);
  float* yp = y.mutable_data();
  float* sp = sc.mutable_data();
  {
    py::gil_scoped_release nogil;
    lrpfast::cpu::lrn_forward(p, int(x[0]), int(x[1]), int(x[2]), int(x[3]), x.data(), yp, sp);
  }
  return py::make_tuple(y, sc);
}

py::array_t<float> stabilized_divide(const py::object& ro, const py::object& zo, double eps,
                                     bool zero_to_zero) {
  auto r = input<float>(ro, "r", -1, "");
  auto z = input<float>(zo, "z", -1, "");
  require(r.shape == z.shape, "r and z must have the same shape, got ", shape_str(r.shape), " and ",
          shape_str(z.shape));
  lrpfast::check_stabilizer(eps);
  auto out = output<float>(r.shape);
  float* op = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    lrpfast::cpu::stabilized_divide(r.size(), r.data(), z.data(), float(eps), zero_to_zero, op);
  }
  return out;
}

py::array_t<float> alphabeta_signal(const py::object& ro, const py::object& zo,
                                    const py::object& zpo, double alpha, double beta, i64 groups,
                                    bool guards) {
  auto r = input<float>(ro, "r", -1, "");
  auto z = input<float>(zo, "z", -1, "");
  auto zp = input<float>(zpo, "zp", -1, "");
  require(r.shape == z.shape && r.shape == zp.shape, "r, z and zp must have the same shape, got ",
          shape_str(r.shape), ", ", shape_str(z.shape), " and ", shape_str(zp.shape));
  require(r.shape.size() >= 2, "r must be (N, C, ...), got ", shape_str(r.shape));
  const i64 N = r.shape[0], C = r.shape[1];
  require(groups >= 1 && C % groups == 0, "groups ", groups, " must divide the channels ", C);
  i64 P = 1;
  for (size_t d = 2; d < r.shape.size(); ++d) P *= r.shape[d];
  std::vector<i64> oshape(r.shape.begin(), r.shape.end());
  oshape[1] = 2 * C;
  auto out = output<float>(oshape);
  float* op = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    lrpfast::cpu::alphabeta_signal(N, groups, C / groups, P, r.data(), z.data(), zp.data(),
                                   float(alpha), float(beta), guards, op);
  }
  return out;
}

// (y, argmax): Caffe's Eltwise over the arrays of `xs` (one shape); argmax (int32, shape of y)
// for "max", None otherwise.
py::tuple eltwise_forward(const py::object& xso, const std::string& operation,
                          const py::object& coeffso, bool relu) {
  const auto op = lrpfast::parse_eltwise_op(operation.c_str());
  const auto xs = lrpfast::eltwise_inputs(xso, "arrays", [](py::handle h, const std::string& n) {
    return input<float>(h, n.c_str(), -1, "");
  });
  const size_t K = xs.size();
  std::vector<const float*> ptrs;
  for (const auto& x : xs) ptrs.push_back(x.data());
  const std::vector<float> coeffs = lrpfast::eltwise_coeffs(coeffso, op, K);
  require(!relu || op == lrpfast::EltwiseOp::Sum, "relu=True needs operation 'sum', got '",
          operation, "'");
  auto y = output<float>(xs[0].shape);   // relu: the ReLU of the sum (the sum is not kept)
  float* yp = y.mutable_data();
  py::object am = py::none();
  std::int32_t* ap = nullptr;
  if (op == lrpfast::EltwiseOp::Max) {
    auto a = output<std::int32_t>(xs[0].shape);
    ap = a.mutable_data();
    am = a;
  }
  {
    py::gil_scoped_release nogil;
    lrpfast::cpu::eltwise_forward(op, int(K), ptrs.data(), coeffs.empty() ? nullptr : coeffs.data(),
                                  xs[0].size(), relu ? nullptr : yp, ap, relu ? yp : nullptr);
  }
  return py::make_tuple(y, am);
}

py::object eltwise_sum_relevance(const py::object& xso, const py::object& ro, const py::object& yo,
                                 const py::object& coeffso, double eps, bool check_finite) {
  const auto xs = lrpfast::eltwise_inputs(xso, "arrays", [](py::handle h, const std::string& n) {
    return input<float>(h, n.c_str(), -1, "");
  });
  auto r = input<float>(ro, "r", -1, "");
  require(r.shape == xs[0].shape, "r must have the shape of the inputs ", shape_str(xs[0].shape),
          ", got ", shape_str(r.shape));
  const float* yp = nullptr;   // None: the kernel recomputes the sum
  std::optional<decltype(r)> y;
  if (!yo.is_none()) {
    y.emplace(input<float>(yo, "y", -1, ""));
    require(y->shape == xs[0].shape, "y must have the shape of the inputs ",
            shape_str(xs[0].shape), ", got ", shape_str(y->shape));
    yp = y->data();
  }
  lrpfast::check_stabilizer(eps);
  const size_t K = xs.size();
  const std::vector<float> coeffs = lrpfast::eltwise_coeffs(coeffso, lrpfast::EltwiseOp::Sum, K);
  std::vector<const float*> ptrs;
  std::vector<float*> outs;
  py::list result;
  for (const auto& x : xs) {
    ptrs.push_back(x.data());
    auto o = output<float>(x.shape);
    outs.push_back(o.mutable_data());
    result.append(o);
  }
  bool finite = true;
  {
    py::gil_scoped_release nogil;
    lrpfast::cpu::eltwise_sum_relevance(int(K), ptrs.data(), coeffs.empty() ? nullptr : coeffs.data(),
                                        r.size(), r.data(), yp, float(eps), outs.data(),
                                        check_finite ? &finite : nullptr);
  }
  if (check_finite) return py::make_tuple(result, finite);
  return std::move(result);
}

py::array_t<float> weight_signs(const py::object& wo, const std::string& kind) {
  auto w = input<float>(wo, "w", 2, "(rows, K)");
  const i64 rows = w[0], K = w[1];
  require(kind == "pos" || kind == "neg" || kind == "pm", "kind must be 'pos', 'neg' or 'pm', got '",
          kind, "'");
  auto out = output<float>({kind == "pm" ? 2 * rows : rows, K});
  float* op = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    lrpfast::cpu::weight_signs(rows, K, w.data(), kind == "neg" ? nullptr : op,
                               kind == "pos" ? nullptr : (kind == "pm" ? op + rows * K : op));
  }
  return out;
}

bool all_finite(const py::array_t<float, py::array::c_style>& x) {
  py::gil_scoped_release nogil;
  return lrpfast::cpu::all_finite(static_cast<i64>(x.size()), x.data());
}

bool any_negative(const py::array_t<float, py::array::c_style>& x) {
  py::gil_scoped_release nogil;
  return lrpfast::cpu::any_negative(static_cast<i64>(x.size()), x.data());
}

py::array to_float16(const py::array_t<float, py::array::c_style>& x) {
  std::vector<py::ssize_t> shape(x.shape(), x.shape() + x.ndim());
  py::array out(py::dtype("float16"), shape);
  auto* op = static_cast<std::uint16_t*>(out.mutable_data());
  {
    py::gil_scoped_release nogil;
    lrpfast::cpu::to_float16(static_cast<i64>(x.size()), x.data(), op);
  }
  return out;
}

// Pixels (h, w, 3|4) uint8, rows may be further apart than w pixels (a numpy view of an image).
py::array resize_bilinear(const py::array& src, std::array<int, 2> size,
                          std::array<int, 4> window) {
  require(src.dtype().is(py::dtype::of<std::uint8_t>()) && src.ndim() == 3 &&
              (src.shape(2) == 3 || src.shape(2) == 4),
          "resize_bilinear: src must be (h, w, 3) or (h, w, 4) uint8, got ",
          std::string(py::str(src.dtype())), " with shape ",
          shape_str(std::vector<i64>(src.shape(), src.shape() + src.ndim())));
  const i64 h = src.shape(0), w = src.shape(1), c = src.shape(2);
  require(h >= 1 && w >= 1 && h <= INT_MAX && w <= INT_MAX, "resize_bilinear: src has no pixels");
  require(src.strides(2) == 1 && src.strides(1) == c && src.strides(0) >= w * c,
          "resize_bilinear: src's pixels must be contiguous within its rows");
  const auto [y0, x0, ny, nx] = window;
  require(size[0] >= 1 && size[1] >= 1, "resize_bilinear: size must be >= 1, got (", size[0], ", ",
          size[1], ")");
  require(ny >= 0 && nx >= 0 && y0 >= 0 && x0 >= 0 && i64(y0) + ny <= size[0] &&
              i64(x0) + nx <= size[1],
          "resize_bilinear: window (y0, x0, ny, nx) = (", y0, ", ", x0, ", ", ny, ", ", nx,
          ") is outside the resized (", size[0], ", ", size[1], ")");
  py::array_t<std::uint8_t> out(std::vector<py::ssize_t>{ny, nx, 3});
  const auto* sp = static_cast<const std::uint8_t*>(src.data());
  const i64 bytes = (h - 1) * src.strides(0) + w * c;
  auto* op = out.mutable_data();
  {
    py::gil_scoped_release nogil;
    lrpfast::cpu::resize_bilinear_u8(sp, bytes, int(h), int(w), src.strides(0), int(c), size[0],
                                     size[1], y0, x0, ny, nx, op);
  }
  return out;
}

// The Arrow C data interface's two structs (the published ABI), for Pillow's image export.
struct ArrowSchema {
  const char* format;
  const char* name;
  const char* metadata;
  std::int64_t flags, n_children;
  ArrowSchema** children;
  ArrowSchema* dictionary;
  void (*release)(ArrowSchema*);
  void* private_data;
};
struct ArrowArray {
  std::int64_t length, null_count, offset, n_buffers, n_children;
  const void** buffers;
  ArrowArray** children;
  ArrowArray* dictionary;
  void (*release)(ArrowArray*);
  void* private_data;
};

// A PIL image's Arrow export (fixed-size lists of 4 uint8 per pixel, one contiguous buffer) as
// an (h, w, 4) uint8 view that keeps the exported array alive; ValueError for any other layout.
py::array arrow_pixels(const py::capsule& schema, const py::capsule& array, i64 h, i64 w) {
  require(schema.name() && std::string(schema.name()) == "arrow_schema" && array.name() &&
              std::string(array.name()) == "arrow_array",
          "arrow_pixels: expected 'arrow_schema' and 'arrow_array' capsules");
  const auto* s = schema.get_pointer<ArrowSchema>();
  const auto* a = array.get_pointer<ArrowArray>();
  require(h >= 1 && w >= 1, "arrow_pixels: h and w must be >= 1");
  const bool layout =
      s && a && s->release && a->release && s->format && std::string(s->format) == "+w:4" &&
      s->n_children == 1 && s->children && s->children[0] && s->children[0]->format &&
      std::string(s->children[0]->format) == "C" && a->length == h * w && a->offset == 0 &&
      a->n_children == 1 && a->children && a->children[0] && a->children[0]->n_buffers == 2 &&
      a->children[0]->length == h * w * 4 && a->children[0]->offset == 0 &&
      a->children[0]->buffers && a->children[0]->buffers[1];
  require(layout, "arrow_pixels: not an image of ", h, " x ", w,
          " pixels of 4 uint8 in one buffer");
  const void* data = a->children[0]->buffers[1];
  return py::array(py::dtype::of<std::uint8_t>(), std::vector<py::ssize_t>{h, w, 4},
                   std::vector<py::ssize_t>{w * 4, 4, 1}, data, array);
}

py::array_t<float> relu_forward(const py::object& xo, double slope) {
  auto x = input<float>(xo, "x", -1, "");
  require(std::isfinite(slope), "negative_slope must be finite, got ", slope);
  auto y = output<float>(x.shape);
  float* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;
    lrpfast::cpu::relu_forward(x.size(), x.data(), float(slope), yp);
  }
  return y;
}

py::array_t<float> channel_affine(const py::object& xo, const py::object& so,
                                  const py::object& bo) {
  auto x = input<float>(xo, "x", -1, "");
  require(x.shape.size() >= 2, "x must be (N, C, ...) with at least 2 dimensions, got shape ",
          shape_str(x.shape));
  const i64 N = x[0], C = x[1];
  i64 P = 1;
  for (size_t d = 2; d < x.shape.size(); ++d) P *= x[d];
  auto s = input<float>(so, "scale", 1, "(C)");
  require(s[0] == C, "scale must have shape (", C, ",) (one value per channel), got ",
          shape_str(s.shape));
  Input<float> bk;
  if (!bo.is_none()) {
    bk = input<float>(bo, "bias", 1, "(C)");
    require(bk[0] == C, "bias must have shape (", C, ",) (one value per channel), got ",
            shape_str(bk.shape));
  }
  auto y = output<float>(x.shape);
  float* yp = y.mutable_data();
  {
    py::gil_scoped_release nogil;
    lrpfast::cpu::channel_affine(N, C, P, x.data(), s.data(), bo.is_none() ? nullptr : bk.data(),
                                 yp);
  }
  return y;
}

int set_num_threads(i64 n) {
  require(n >= 1 && n <= 4096, "number of threads must be in 1..4096, got ", n);
  py::gil_scoped_release nogil;  // may wait for another thread's job to end before shrinking
  return lrpfast::set_num_threads(int(n));
}

}  // namespace

// set_<what>_algorithm(name) / get_<what>_algorithm() for a process-wide Setting whose enum
// values are the positions of `names`.
template <class E>
void def_algorithm(py::module_& m, const std::string& what, std::vector<std::string> names,
                   void (*set)(E), E (*get)(), const char* doc,
                   const std::string& suffix = "_algorithm") {
  const std::string setter = "set_" + what + suffix, getter = "get_" + what + suffix;
  m.def(
      setter.c_str(),
      [names, setter, set](const std::string& name) {
        for (std::size_t i = 0; i < names.size(); ++i)
          if (name == names[i]) return set(E(i));
        std::string list;
        for (std::size_t i = 0; i < names.size(); ++i)
          list += (i ? (i + 1 == names.size() ? " or '" : ", '") : "'") + names[i] + "'";
        throw py::value_error(setter + ": must be " + list + ", got '" + name + "'");
      },
      py::arg("algorithm"), doc);
  m.def(
      getter.c_str(), [names, get] { return names[std::size_t(get())]; },
      ("The algorithm set by " + setter + ".").c_str());
}

PYBIND11_MODULE(_core, m) {
  m.doc() =
      "lrpfast native CPU engine (private; use the lrpfast package).\n\n"
      "All arrays are float32, NCHW, C-contiguous (other inputs are converted, copying only when\n"
      "needed). Kernel/stride/pad/dilation arguments take an int or an (h, w) pair. Bad shapes or\n"
      "parameters raise ValueError.";
  m.attr("__version__") = LRPFAST_VERSION;
  m.attr("cuda_compiled") = bool(LRPFAST_WITH_CUDA);
  lrpfast::init_memory_reuse();

  m.def("blas_name", &lrpfast::blas_name, "Name, version and CPU kernel of the BLAS in use.");
  m.def("blas_config", &lrpfast::blas_config, "The BLAS library's own configuration string.");
  m.def(
      "set_num_threads", &set_num_threads, py::arg("n"),
      "Set the number of threads lrpfast computes with (1 <= n <= 4096, capped at the CPUs this\n"
      "process may run on; returns the number set): its matrix products (sliced\n"
      "over single-threaded BLAS calls) and its element-wise/im2col/pooling loops share one pool.\n"
      "Default: $LRPFAST_NUM_THREADS, else $OMP_NUM_THREADS, else the CPUs available.");
  m.def("available_cpus", &lrpfast::available_cpus, "CPUs this process may run on.");
  m.def("pool_threads", &lrpfast::pool_threads,
        "Threads lrpfast's pool holds now, the caller's included (1 before its first use).");
  m.def("get_num_threads", &lrpfast::num_threads,
        "Number of threads lrpfast computes with (BLAS itself always runs single-threaded).");

  def_algorithm<lrpfast::cpu::ConvAlgo>(
      m, "conv", {"auto", "direct", "winograd", "taps"}, lrpfast::cpu::set_conv_algo,
      lrpfast::cpu::conv_algo,
      "Algorithm of the CPU convolutions (process-wide): 'auto' (default; Winograd F(2x2,3x3)\n"
      "for 3x3 stride-1 kernels when both channel counts per group are >= 16, the taps path\n"
      "for forwards with <= 4 input channels per group, im2col + gemm otherwise), 'direct'\n"
      "(im2col + gemm everywhere), 'winograd' (wherever it applies) or 'taps' (every forward,\n"
      "where the CPU has AVX2 + FMA). Default from $LRPFAST_CONV_ALGO.");
  def_algorithm<lrpfast::LinearAlgo>(
      m, "linear", {"auto", "blas", "streamed"}, lrpfast::set_linear_algo, lrpfast::linear_algo,
      "Kernels of the fully connected products (process-wide): 'auto' (default; lrpfast's\n"
      "streamed kernels where they run on AVX-512 or in deterministic mode, else BLAS), 'blas'\n"
      "or 'streamed' (lrpfast's kernels on every CPU). Default from $LRPFAST_LINEAR_ALGO.");
  def_algorithm<lrpfast::Simd>(
      m, "simd", {"native", "avx2", "generic"}, lrpfast::set_simd, lrpfast::simd,
      "lrpfast's hand-written SIMD kernels (process-wide): 'native' (default; the best the CPU\n"
      "has), 'avx2' (at most AVX2 + FMA, as on a CPU without AVX-512) or 'generic' (plain C++,\n"
      "the path of non-x86 machines). Default from $LRPFAST_SIMD.", "");
  m.def("simd_kernels", &lrpfast::simd_kernels,
        "The SIMD kernels that run under the simd setting on this CPU: 'avx512', 'avx2' or 'generic'.");
  m.def(
      "set_nt_prefetch",
      [](int floats) {
        if (floats < 0) throw py::value_error("set_nt_prefetch: floats must be >= 0, got " +
                                              std::to_string(floats));
        lrpfast::set_nt_prefetch(floats);
      },
      py::arg("floats"),
      "Software prefetch distance, in floats ahead in each weight row, of the fully connected\n"
      "forward kernels for small batches (AVX-512: 1 to 8 images, AVX2: 1 to 4; process-wide;\n"
      "0 = none). It changes no result, only speed. Default from $LRPFAST_NT_PREFETCH, else 256\n"
      "on Intel CPUs (where it read CaffeNet's fc6 25-40% faster) and 0 on others (AMD Zen 4\n"
      "ran best without).");
  m.def("get_nt_prefetch", &lrpfast::nt_prefetch, "The setting of set_nt_prefetch.");
  m.def("set_deterministic", &lrpfast::set_deterministic, py::arg("on"),
        "Deterministic mode (process-wide): every product is cut into calls that depend on one\n"
        "image and the layer alone, so an image's result is bit-identical alone or in any batch,\n"
        "on any number of threads. Default from $LRPFAST_DETERMINISTIC (off).");
  m.def("get_deterministic", &lrpfast::deterministic, "The setting of set_deterministic.");
  m.def(
      "set_memory_reuse",
      [](bool on) {
        if (!lrpfast::set_memory_reuse(on))
          throw py::value_error("set_memory_reuse: not supported by this C library (needs glibc)");
      },
      py::arg("on"),
      "Reuse freed host memory between and within passes (glibc malloc settings, process-wide;\n"
      "default on unless $LRPFAST_MEMORY_REUSE=0 or glibc's MALLOC_*_ variables are set).");
  m.def("get_memory_reuse", &lrpfast::memory_reuse, "The setting of set_memory_reuse.");
  m.def("release_memory", &lrpfast::release_memory,
        "Return the freed memory the process holds (glibc malloc_trim) to the system; False\n"
        "where the C library is not glibc.");
  m.def("linear_streamed_native", &lrpfast::streamed_native,
        "True where the streamed fully connected kernels run on AVX-512 (see set_simd).");
  m.def(
      "conv_out_size",
      [](i64 in, i64 kernel, i64 stride, i64 pad, i64 dilation) {
        return lrpfast::conv_out_size_checked(in, kernel, stride, pad, dilation);
      },
      py::arg("in_size"), py::arg("kernel"), py::arg("stride") = 1, py::arg("pad") = 0,
      py::arg("dilation") = 1,
      "Caffe's convolution output size floor((in + 2*pad - (dilation*(kernel-1)+1)) / stride) + "
      "1.\n"
      "Raises ValueError when the kernel does not fit the padded input or a parameter is invalid.");
  m.def(
      "pool_out_size",
      [](i64 in, i64 kernel, i64 stride, i64 pad, bool ceil_mode) {
        return lrpfast::pool_out_size_checked(in, kernel, stride, pad, ceil_mode);
      },
      py::arg("in_size"), py::arg("kernel"), py::arg("stride") = 1, py::arg("pad") = 0,
      py::arg("ceil_mode") = true,
      "Caffe's pooling output size: ceil((in + 2*pad - kernel) / stride) + 1, minus 1 when pad > "
      "0\n"
      "and the last window would start in the padding ((out-1)*stride >= in + pad); with\n"
      "ceil_mode=False floor(...) + 1. Requires 0 <= pad < kernel (as Caffe); raises ValueError\n"
      "when the output would be < 1.");

  m.def("conv_forward", &conv_forward, py::arg("x"), py::arg("w"), py::arg("b"),
        py::arg("stride") = 1, py::arg("pad") = 0, py::arg("dilation") = 1, py::arg("group") = 1,
        py::kw_only(), py::arg("winograd") = py::none(),
        "2-D convolution, Caffe semantics.\n\n"
        "x (N,C,H,W), w (O,C/group,kh,kw), b (O,) or None -> y (N,O,Ho,Wo) with\n"
        "Ho = conv_out_size(H, kh, stride[0], pad[0], dilation[0]) (same for Wo).\n"
        "Computed as im2col + one gemm per group (1x1/stride 1/pad 0 kernels skip im2col), or\n"
        "Winograd F(2x2,3x3) for 3x3 stride-1 kernels (conv_forward_algorithm says which).\n"
        "winograd: winograd_kernels(w, group, False), kept by the caller, skips transforming\n"
        "the kernels on that path (the same result; ignored on the others).");
  m.def("winograd_kernels", &winograd_kernels, py::arg("w"), py::arg("group") = 1,
        py::arg("adjoint") = false,
        "The Winograd F(2x2,3x3) transforms G g G^T of the 3x3 kernels w (O,C/group,3,3), flat\n"
        "(16*O*C/group,), for conv_forward (adjoint False) or conv_backward_data (adjoint True).");
  m.def("winograd_applies", &winograd_applies, py::arg("n"), py::arg("in_shape"),
        py::arg("w_shape"), py::arg("stride"), py::arg("pad"), py::arg("dilation"),
        py::arg("group"), py::arg("backward"),
        "Whether conv_forward (backward False) or conv_backward_data (True) of n images of\n"
        "in_shape (C,H,W) by kernels of w_shape takes the Winograd path (under the current\n"
        "set_conv_algorithm).");
  m.def("conv_forward_pair", &conv_forward_pair, py::arg("x"), py::arg("w"), py::arg("b"),
        py::arg("stride") = 1, py::arg("pad") = 0, py::arg("dilation") = 1, py::arg("group") = 1,
        py::kw_only(), py::arg("winograd") = py::none(),
        "Two convolutions of the same x in one pass over its im2col columns.\n\n"
        "w (O,C/group,kh,kw) stacks two weight sets: each group's O/group rows are [W_g; V_g]\n"
        "(half each; b likewise, or None). Returns (y, y2), each (N,O/2,Ho,Wo): y = conv(x, W)\n"
        "+ b_V. Direct paths: bit-identical to conv_forward(x, w, b, ...) split per group (in\n"
        "deterministic mode to the two separate calls). The Winograd path (taken where one\n"
        "weight set's convolution takes it) shares each block's input transform and runs\n"
        "products of twice the rows; equal to the two calls to float32 rounding. LRP's z and z+\n"
        "of the alpha-beta rule share their work this way. winograd: winograd_kernels of the\n"
        "stacked w, kept by the caller (ignored off that path).");
  m.def("conv_forward_algorithm", &conv_forward_algorithm, py::arg("x"), py::arg("w"),
        py::arg("stride") = 1, py::arg("pad") = 0, py::arg("dilation") = 1, py::arg("group") = 1,
        "The algorithm conv_forward takes for these arguments (as for conv_forward; nothing is\n"
        "computed): 'winograd', 'pointwise' (1x1, no im2col) or 'im2col'.");
  m.def("conv_backward_data", &conv_backward_data, py::arg("dy"), py::arg("w"), py::arg("in_shape"),
        py::arg("stride") = 1, py::arg("pad") = 0, py::arg("dilation") = 1, py::arg("group") = 1,
        py::kw_only(), py::arg("z") = py::none(), py::arg("eps") = 0.0,
        py::arg("times") = py::none(), py::arg("winograd") = py::none(),
        py::arg("check_finite") = false, py::arg("add") = py::none(),
        "Gradient of conv_forward w.r.t. its input (the transposed convolution).\n\n"
        "dy (N,O,Ho,Wo), w (O,C/group,kh,kw), in_shape (C,H,W) or (N,C,H,W) (N is taken from dy)\n"
        "-> dx (N,C,H,W) = col2im(W^T dy). Bias plays no part.\n"
        "Fused rule steps (bit-identical to doing them apart): z (N,O,Ho,Wo) replaces dy by\n"
        "stabilized_divide(dy, z, eps); times (N,C,H,W) multiplies the result element-wise.\n"
        "check_finite: returns (dx, True when dx holds no NaN or infinity), tested in the pass\n"
        "that multiplies by times (one more pass over dx without times).\n"
        "add (N,C,H,W), with times: dx = (0 + add) + times * col2im(W^T dy) in that pass, the\n"
        "bits of eltwise_forward([add, <the result without add>], 'sum').");
  m.def("linear_forward", &linear_forward, py::arg("x"), py::arg("w"), py::arg("b"),
        "Fully connected layer: x (N,K), w (O,K), b (O,) or None -> y (N,O) = x w^T + b.");
  m.def("linear_backward_data", &linear_backward_data, py::arg("dy"), py::arg("w"),
        "Gradient of linear_forward w.r.t. x: dy (N,O), w (O,K) -> dx (N,K) = dy w.");
  m.def(
      "pool_forward", &pool_forward, py::arg("x"), py::arg("method"), py::arg("kernel"),
      py::arg("stride") = 1, py::arg("pad") = 0, py::arg("ceil_mode") = true,
      "2-D pooling, Caffe semantics. x (N,C,H,W) -> (y (N,C,Ho,Wo), argmax).\n\n"
      "method 'max': maximum over the window clipped to the image; argmax (int32, shape of y) is\n"
      "the flat index h*W + w inside the input plane of the first maximum in row-major order.\n"
      "method 'ave': window sum / pool_size, pool_size counting the window clipped to the padded\n"
      "image (Caffe); argmax is an empty int32 array. Output size: pool_out_size. Global pooling:\n"
      "kernel (H, W), stride 1, pad 0.");
  m.def(
      "pool_backward", &pool_backward, py::arg("dy"), py::arg("in_shape"), py::arg("method"),
      py::arg("kernel"), py::arg("stride") = 1, py::arg("pad") = 0, py::arg("argmax") = py::none(),
      py::arg("ceil_mode") = py::none(),
      "Adjoint of pool_forward. dy (N,C,Ho,Wo), in_shape (C,H,W) or (N,C,H,W) -> dx (N,C,H,W).\n\n"
      "'max': dx[n, c].flat[argmax] += dy (winner takes all; argmax from pool_forward, required).\n"
      "'ave': dx += dy / pool_size over each clipped window (the transpose of the AVE forward);\n"
      "argmax is ignored. ceil_mode: as in pool_forward; None (default) takes the mode matching\n"
      "dy's shape (ceil first).");
  m.def("lrn_forward", &lrn_forward, py::arg("x"), py::arg("local_size"), py::arg("alpha"),
        py::arg("beta"), py::arg("k") = 1.0, py::arg("region") = "across",
        "Caffe LRN. x (N,C,H,W) -> (y, scale), both (N,C,H,W), y = x * scale^(-beta).\n\n"
        "region 'across' (ACROSS_CHANNELS): scale = k + alpha/n * sum of x^2 over the n channels\n"
        "centred at c (clipped at the ends). region 'within' (WITHIN_CHANNEL): scale = 1 + "
        "alpha/n^2\n"
        "* sum of x^2 over the n x n window centred at the pixel (zero padding); k is ignored, as "
        "in\n"
        "Caffe. local_size n must be odd.");
  m.def("stabilized_divide", &stabilized_divide, py::arg("r"), py::arg("z"), py::arg("eps"),
        py::arg("zero_to_zero") = true,
        "Element-wise r / (z + eps*sign(z)) with sign(0) = +1 (eps >= 0). With zero_to_zero, a\n"
        "denominator that is exactly 0 gives 0 (LRP's 'zero denominator contributes nothing').\n"
        "r and z must have the same shape; returns a new float32 array of that shape.");

  m.def("alphabeta_signal", &alphabeta_signal, py::arg("r"), py::arg("z"), py::arg("zp"),
        py::arg("alpha"), py::arg("beta"), py::arg("groups") = 1, py::arg("guards") = false,
        "The alpha-beta signal for inputs x >= 0: r, z (layer output), zp (its positive part)\n"
        "(N, C, ...) -> (N, 2C, ...) laid out per group g as [alpha*r/zp ; -beta*r/(z-zp)] over\n"
        "that group's C/groups channels (a zero denominator gives 0), for one transposed product\n"
        "with the stacked weights [W+; W-] (ops weight kind 'pm'). guards (the LRP Toolbox's\n"
        "alpha-beta): a part contributes only where zp > 0, resp. z - zp < 0.");

  m.def("eltwise_forward", &eltwise_forward, py::arg("xs"), py::arg("operation"),
        py::arg("coeffs") = py::none(), py::kw_only(), py::arg("relu") = false,
        "Caffe's Eltwise: xs, a sequence of K >= 1 arrays of one shape -> (y, argmax), y of that\n"
        "shape, evaluated per element in input order in float32 (bit-identical to the numpy\n"
        "loop). operation 'sum': y = sum_k coeffs[k] * xs[k] (coeffs: K values, None = all 1);\n"
        "'prod': the product; 'max': the maximum, argmax (int32, shape of y) the index k of the\n"
        "first input holding it. argmax is None except for 'max'. relu=True ('sum' only): y is\n"
        "relu_forward(the sum), computed in the same pass; the sum itself is not kept.");
  m.def("weight_signs", &weight_signs, py::arg("w"), py::arg("kind"),
        "Sign parts of w (rows, K): 'pos' max(w, 0), 'neg' min(w, 0), 'pm' both stacked\n"
        "(2*rows, K) = [W+; W-], from one pass over w.");
  m.def("eltwise_sum_relevance", &eltwise_sum_relevance, py::arg("xs"), py::arg("r"), py::arg("y"),
        py::arg("coeffs") = py::none(), py::arg("eps") = 0.0, py::kw_only(),
        py::arg("check_finite") = false,
        "Relevance of Eltwise SUM y = sum_k coeffs[k]*xs[k] (z rule, eps-stabilised): the list\n"
        "[coeffs[k] * xs[k] * stabilized_divide(r, y, eps)], one pass, float32 as numpy rounds it.\n"
        "y None: the sum is recomputed in the pass, with eltwise_forward's bits.\n"
        "check_finite: returns (list, True when no output holds a NaN or infinity), tested in\n"
        "the same pass.");
  m.def("all_finite", &all_finite, py::arg("x"),
        "True when the float32 array x (any shape) holds no NaN or infinity; one parallel pass.");
  m.def("any_negative", &any_negative, py::arg("x"),
        "True when some element of the float32 array x is < 0 (numpy's (x < 0).any(): -0 and\n"
        "NaN are not); one parallel pass that stops early.");
  m.def("to_float16", &to_float16, py::arg("x"),
        "x (float32, any shape) as a new float16 array of the same shape, bit for bit numpy's\n"
        "x.astype(np.float16) (ties to even; NaN stays NaN); F16C where the CPU has it.");
  m.def("resize_bilinear", &resize_bilinear, py::arg("src"), py::arg("size"), py::arg("window"),
        "Rows y0..y0+ny-1, columns x0..x0+nx-1 (window = (y0, x0, ny, nx)) of the image src\n"
        "((h, w, 3) or (h, w, 4) uint8, the first three channels used) resized to size = (H, W)\n"
        "with Pillow's antialiased bilinear filter -> (ny, nx, 3) uint8, the same bytes as\n"
        "Image.resize((W, H), BILINEAR) cropped to the window, computing only the window.");
  m.def("arrow_pixels", &arrow_pixels, py::arg("schema"), py::arg("array"), py::arg("h"),
        py::arg("w"),
        "A PIL image's __arrow_c_array__() capsules -> (h, w, 4) uint8 view of its pixels (no\n"
        "copy; the view keeps the export alive). ValueError unless one contiguous buffer.");
  m.def("relu_forward", &relu_forward, py::arg("x"), py::arg("negative_slope") = 0.0,
        "Caffe's ReLU: x > 0 ? x : negative_slope * x (any shape), rounded as numpy's\n"
        "np.where(x > 0, x, slope * x); slope 0 gives +0 where x <= 0, as np.maximum(x, 0).");
  m.def("channel_affine", &channel_affine, py::arg("x"), py::arg("scale"),
        py::arg("bias") = py::none(),
        "Per-channel affine map (BatchNorm/Scale after folding): x (N, C, ...), scale (C,), bias\n"
        "(C,) or None -> y (N, C, ...) = x * scale[c] + bias[c], rounded as numpy's x*s + b.");

  // The LRPFAST_HD index helpers of kernels/geometry.hpp shared by the CPU kernels and their CUDA
  // twins, exposed so CPU tests (tests/test_cuda_geometry.py) check the CUDA index arithmetic.
  auto geo = m.def_submodule("geometry", "host/device index helpers of geometry.hpp (for tests)");
  geo.def("dilated_extent", &lrpfast::dilated_extent);
  geo.def("conv_out_size", &lrpfast::conv_out_size);
  geo.def("conv_in_coord", &lrpfast::conv_in_coord);
  geo.def("conv_out_coord", &lrpfast::conv_out_coord);
  geo.def("conv_valid_out_range", [](int in, int out, int k, int s, int p, int d) {
    int lo, hi;
    lrpfast::conv_valid_out_range(in, out, k, s, p, d, &lo, &hi);
    return py::make_tuple(lo, hi);
  });
  geo.def("im2col_row_taps", [](int r, int kh, int kw) {
    int c, ki, kj;
    lrpfast::im2col_row_taps(r, kh, kw, &c, &ki, &kj);
    return py::make_tuple(c, ki, kj);
  });
  geo.def("group_weight_offset", &lrpfast::group_weight_offset);
  geo.def("group_in_offset", &lrpfast::group_in_offset);
  geo.def("group_out_offset", &lrpfast::group_out_offset);
  geo.def("pool_out_size", &lrpfast::pool_out_size);
  geo.def("pool_window", [](int o, int in, int k, int s, int p) {
    const auto w = lrpfast::pool_window(o, in, k, s, p);
    return py::make_tuple(w.start, w.end, w.size);
  });
  geo.def("pool_out_range", [](int i, int k, int s, int p, int out) {
    int lo, hi;
    lrpfast::pool_out_range(i, k, s, p, out, &lo, &hi);
    return py::make_tuple(lo, hi);
  });
  geo.def("plane_index", &lrpfast::plane_index);
  geo.def("lrn_pre_pad", &lrpfast::lrn_pre_pad);
}

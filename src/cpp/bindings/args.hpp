// Argument parsing shared by the CPU (_core) and CUDA (_cuda) bindings.
#pragma once
#include <pybind11/pybind11.h>

#include <array>
#include <cstdint>
#include <sstream>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/check.hpp"
#include "kernels/conv.hpp"
#include "kernels/elementwise.hpp"

namespace lrpfast {

// "(2, 3)", "(4,)": a shape in error messages.
inline std::string shape_str(const std::vector<std::int64_t>& s) {
  std::ostringstream os;
  os << '(';
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << (s.size() == 1 ? ",)" : ")");
  return os.str();
}

// An integer argument (Python int or anything with __index__; bool and float refused).
inline std::int64_t to_index(const pybind11::handle& v, const char* name) {
  if (v.is_none()) fail(name, " is required, got None");
  if (pybind11::isinstance<pybind11::bool_>(v) || pybind11::isinstance<pybind11::float_>(v))
    fail(name, " must be an integer, got ", std::string(pybind11::repr(v)));
  PyObject* idx = PyNumber_Index(v.ptr());
  if (!idx) {
    PyErr_Clear();
    fail(name, " must be an integer, got ", std::string(pybind11::repr(v)));
  }
  const std::int64_t r = PyLong_AsLongLong(idx);
  Py_DECREF(idx);
  if (r == -1 && PyErr_Occurred()) {
    PyErr_Clear();
    fail(name, " is too large");
  }
  return r;
}

// An int or a (h, w) pair.
inline std::array<std::int64_t, 2> pair(const pybind11::handle& obj, const char* name) {
  if (obj.is_none()) fail(name, " is required, got None");
  if (pybind11::isinstance<pybind11::sequence>(obj) &&
      !pybind11::isinstance<pybind11::str>(obj)) {
    auto seq = pybind11::reinterpret_borrow<pybind11::sequence>(obj);
    if (seq.size() != 2)
      fail(name, " must be an int or an (h, w) pair, got ", std::string(pybind11::repr(obj)));
    return {to_index(seq[0], name), to_index(seq[1], name)};
  }
  const std::int64_t v = to_index(obj, name);
  return {v, v};
}

// The checked geometry of the convolution of x (N,C,H,W) by w (O,C/group,kh,kw) (shapes already
// known to be 4-D), from Python's stride, pad and dilation arguments.
inline ConvGeom conv_geom(const std::vector<std::int64_t>& x, const std::vector<std::int64_t>& w,
                          const pybind11::handle& stride, const pybind11::handle& pad,
                          const pybind11::handle& dilation, std::int64_t group) {
  const auto s = pair(stride, "stride"), p = pair(pad, "pad"), d = pair(dilation, "dilation");
  return make_conv_geom(x[0], x[1], x[2], x[3], w[0], w[1], w[2], w[3], s[0], s[1], p[0], p[1],
                        d[0], d[1], group);
}

// in_shape (C,H,W) or (N,C,H,W) -> (C,H,W); N is taken from the gradient.
inline std::array<std::int64_t, 3> chw(const pybind11::handle& obj) {
  if (obj.is_none()) fail("in_shape is required, got None");
  if (!pybind11::isinstance<pybind11::sequence>(obj) || pybind11::isinstance<pybind11::str>(obj))
    fail("in_shape must be a tuple (C,H,W) or (N,C,H,W), got ",
         std::string(pybind11::repr(obj)));
  auto seq = pybind11::reinterpret_borrow<pybind11::sequence>(obj);
  const size_t n = seq.size();
  if (n != 3 && n != 4)
    fail("in_shape must be a tuple (C,H,W) or (N,C,H,W), got ",
         std::string(pybind11::repr(obj)));
  const size_t o = n - 3;
  return {to_index(seq[o], "in_shape"), to_index(seq[o + 1], "in_shape"),
          to_index(seq[o + 2], "in_shape")};
}

// Eltwise's inputs: a non-empty sequence whose items load(item, "xs[k]") turns into arrays (with
// a `shape`) of one shape.
template <class Load>
auto eltwise_inputs(const pybind11::object& xso, const char* kind, Load load) {
  using A = std::decay_t<decltype(load(pybind11::handle(), std::string()))>;
  if (xso.is_none() || !pybind11::isinstance<pybind11::sequence>(xso) ||
      pybind11::isinstance<pybind11::str>(xso) || pybind11::len(xso) == 0)
    fail("xs must be a non-empty sequence of ", kind);
  auto seq = pybind11::reinterpret_borrow<pybind11::sequence>(xso);
  require(seq.size() <= std::size_t(INT32_MAX), "xs: too many inputs");
  std::vector<A> xs;
  for (std::size_t k = 0; k < seq.size(); ++k) {
    const std::string name = "xs[" + std::to_string(k) + "]";
    xs.push_back(load(seq[k], name));
    require(xs[k].shape == xs[0].shape, name, " must have the shape of xs[0] ",
            shape_str(xs[0].shape), ", got ", shape_str(xs[k].shape));
  }
  return xs;
}

// Eltwise's per-input coefficients: None -> {} (all 1), else one number per input ('sum' only).
inline std::vector<float> eltwise_coeffs(const pybind11::object& coeffso, EltwiseOp op,
                                         std::size_t inputs) {
  std::vector<float> coeffs;
  if (coeffso.is_none()) return coeffs;
  require(op == EltwiseOp::Sum, "coeffs are only defined for operation 'sum'");
  if (!pybind11::isinstance<pybind11::sequence>(coeffso) ||
      pybind11::isinstance<pybind11::str>(coeffso))
    fail("coeffs must be a sequence of numbers or None, got ",
         std::string(pybind11::repr(coeffso)));
  try {
    for (auto c : coeffso) coeffs.push_back(float(c.cast<double>()));
  } catch (const pybind11::cast_error&) {
    fail("coeffs must be a sequence of numbers, got ", std::string(pybind11::repr(coeffso)));
  }
  require(coeffs.size() == inputs, "coeffs must have one value per input (", inputs, "), got ",
          coeffs.size());
  return coeffs;
}

}  // namespace lrpfast

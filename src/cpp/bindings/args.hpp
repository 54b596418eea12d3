// Argument parsing shared by the CPU (_core) and CUDA (_cuda) bindings.
#pragma once
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "kernels/check.hpp"
#include "kernels/elementwise.hpp"

namespace lrpfast {

// Eltwise's per-input coefficients: None -> {} (all 1), else one number per input ('sum' only).
inline std::vector<float> eltwise_coeffs(const pybind11::object& coeffso, EltwiseOp op,
                                         std::size_t inputs) {
  std::vector<float> coeffs;
  if (coeffso.is_none()) return coeffs;
  require(op == EltwiseOp::Sum, "coeffs are only defined for operation 'sum'");
  if (!pybind11::isinstance<pybind11::sequence>(coeffso) || pybind11::isinstance<pybind11::str>(coeffso))
    fail("coeffs must be a sequence of numbers or None, got ", std::string(pybind11::repr(coeffso)));
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

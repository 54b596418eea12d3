// Python bindings of the CPU engine: numpy arrays <-> raw pointers; the GIL is released around
// every compute call; C++ exceptions become Python ValueError/RuntimeError.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "kernels/gemm.hpp"

namespace py = pybind11;

PYBIND11_MODULE(_core, m) {
  m.doc() = "lrpfast native CPU engine (private; use the lrpfast package)";
  m.attr("__version__") = LRPFAST_VERSION;
  m.attr("cuda_compiled") = bool(LRPFAST_WITH_CUDA);
  m.def("blas_name", &lrpfast::blas_name);
  m.def("blas_config", &lrpfast::blas_config);
  m.def("set_num_threads", &lrpfast::blas_set_num_threads, py::arg("n"));
  m.def("get_num_threads", &lrpfast::blas_get_num_threads);
}

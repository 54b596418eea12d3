// lrpfast._cuda_host.host: the test controls of the host CUDA stand-in (host_api.hpp). Compiled
// into the host build of the bindings only (module.cpp calls this under LRPFAST_CUDA_HOST).
#include <pybind11/pybind11.h>

#include "host_api.hpp"

namespace py = pybind11;
namespace h = lrpfast_host;

void lrpfast_host_api(py::module_ m) {
  auto ptr = [](std::uintptr_t p) { return reinterpret_cast<void*>(p); };
  m.def("stream_create", &h::stream_create, py::arg("blocking") = false,
        "A deferred stream (its work runs when an event, wait or synchronisation needs it).");
  m.def("stream_pending", &h::stream_pending);
  m.def("enqueue_copy", [ptr](std::uintptr_t s, std::uintptr_t dst, std::uintptr_t src,
                              std::size_t bytes) { h::enqueue_copy(s, ptr(dst), ptr(src), bytes); });
  m.def("enqueue_fill", [ptr](std::uintptr_t s, std::uintptr_t p, float v, std::size_t n) {
    h::enqueue_fill(s, static_cast<float*>(ptr(p)), v, n);
  });
  m.def("fail_next_launch", &h::fail_next_launch, py::arg("code"), py::arg("asynchronous"));
  m.def("fail_next_gemm", &h::fail_next_gemm, py::arg("status"));
  m.def("set_force_tf32", &h::set_force_tf32);
  m.def("set_memory_limit", &h::set_memory_limit);
  m.def("stats", [] {
    const h::Stats s = h::get_stats();
    py::dict d;
    d["launches"] = s.launches;
    d["gemms"] = s.gemms;
    d["mallocs"] = s.mallocs;
    return d;
  });
  m.def("device_of", [ptr](std::uintptr_t p) { return h::device_of(ptr(p)); });
  m.def("device_bytes", &h::device_bytes);
  m.def("current_device", &h::current_device);
}

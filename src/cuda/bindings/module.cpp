// lrpfast._cuda: the CUDA engine's Python module, separate from _core so that _core never depends
// on CUDA libraries. Loaded lazily by lrpfast.cuda; importing it needs libcublas (RPATH to the
// nvidia-cublas wheel) but no driver or GPU: the CUDA runtime is linked statically and finds the
// driver at the first CUDA call, and device_count() reports its absence without throwing.
//
// DeviceArray owns device memory from the caching allocator (or wraps a foreign pointer taken from
// __cuda_array_interface__ or a DLPack capsule, keeping the owner alive), C-contiguous float32 or
// int32. DLPack both ways: DeviceArray.__dlpack__ / __dlpack_device__ export, from_dlpack imports
// (the "dltensor" capsule of DLPack 0.x and the "dltensor_versioned" one of 1.x, bindings/dlpack.hpp). The kernel
// functions mirror _core's (same names and arguments) with DeviceArray in place of numpy arrays;
// validation happens on the host (make_*_geom) before any kernel runs.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <memory>
#include <type_traits>
#include <sstream>
#include <string>
#include <vector>

#include "bindings/dlpack.hpp"
#include "bindings/args.hpp"
#include "kernels/check.hpp"
#include "kernels/elementwise.hpp"
#include "kernels/kernels.hpp"

namespace py = pybind11;
namespace cu = lrpfast::cuda;
namespace dl = lrpfast::dlpack;
using lrpfast::chw;
using lrpfast::fail;
using lrpfast::pair;
using lrpfast::require;
using lrpfast::shape_str;
using lrpfast::to_index;
using i64 = std::int64_t;

namespace {

struct Block {  // owned device memory of the current device, back to its cache with the last view
  void* p = nullptr;
  std::size_t bytes = 0;
  int device = 0;
  explicit Block(std::size_t b) : bytes(b), device(cu::current_device()) { p = cu::alloc(b); }
  ~Block() { cu::release(p, bytes, device); }
};

struct DeviceArray {
  std::shared_ptr<Block> block;  // null for a foreign pointer
  py::object foreign;            // the owner of a foreign pointer
  void* ptr = nullptr;
  std::vector<i64> shape;
  bool is_int = false;  // int32 (argmax) instead of float32
  int device = 0;       // the CUDA device holding the memory

  i64 size() const {
    i64 n = 1;
    for (i64 d : shape) n *= d;
    return n;
  }
  std::size_t nbytes() const { return std::size_t(size()) * 4; }
  float* f() const {
    require(!is_int, "expected a float32 device array, got int32");
    return static_cast<float*>(ptr);
  }
  std::int32_t* i() const {
    require(is_int, "expected an int32 device array, got float32");
    return static_cast<std::int32_t*>(ptr);
  }
  i64 operator[](size_t k) const { return shape[k]; }
};

DeviceArray empty(const std::vector<i64>& shape, bool is_int = false) {
  DeviceArray a;
  a.shape = shape;
  a.is_int = is_int;
  for (i64 d : shape) require(d >= 0, "negative dimension in shape ", shape_str(shape));
  a.block = std::make_shared<Block>(a.nbytes());
  a.ptr = a.block->p;
  a.device = a.block->device;
  return a;
}

// The device of the named operands (null entries skipped), which must all be on one device: what
// a kernel call makes current (cu::DeviceGuard) before allocating its outputs and launching.
int device_of(std::initializer_list<std::pair<const char*, const DeviceArray*>> ops) {
  int dev = -1;
  const char* first = nullptr;
  for (const auto& [name, a] : ops) {
    if (!a) continue;
    if (dev < 0) {
      dev = a->device;
      first = name;
    } else if (a->device != dev) {
      fail("device arrays on different GPUs: ", first, " is on cuda:", dev, " but ", name,
           " is on cuda:", a->device, " (copy one with lrpfast.cuda.to_device(..., device=))");
    }
  }
  return dev < 0 ? cu::current_device() : dev;
}
const DeviceArray* opt(const py::object& o) {  // an optional DeviceArray argument
  return o.is_none() ? nullptr : &o.cast<const DeviceArray&>();
}

DeviceArray from_host(const py::array& arr) {
  const bool is_int = arr.dtype().kind() == 'i' || arr.dtype().kind() == 'u';
  py::array c;
  if (is_int)
    c = py::array_t<std::int32_t, py::array::c_style | py::array::forcecast>::ensure(arr);
  else
    c = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(arr);
  if (!c) fail("cannot convert the array to float32/int32");
  DeviceArray d = empty(std::vector<i64>(c.shape(), c.shape() + c.ndim()), is_int);
  cu::copy_to_device(d.ptr, c.data(), d.nbytes());
  return d;
}

py::array to_host(const DeviceArray& d) {
  cu::DeviceGuard on(d.device);
  std::vector<py::ssize_t> shp(d.shape.begin(), d.shape.end());
  py::array out = d.is_int ? py::array(py::array_t<std::int32_t>(shp))
                           : py::array(py::array_t<float>(shp));
  {
    py::gil_scoped_release nogil;
    cu::copy_to_host(out.mutable_data(), d.ptr, d.nbytes());
  }
  return out;
}

py::dict cuda_array_interface(const DeviceArray& d) {
  py::dict r;
  r["shape"] = py::tuple(py::cast(d.shape));
  r["typestr"] = d.is_int ? "<i4" : "<f4";
  r["data"] = py::make_tuple(reinterpret_cast<std::uintptr_t>(d.ptr), false);
  r["strides"] = py::none();
  r["version"] = 3;
  r["stream"] = 1;  // the legacy default stream, which every lrpfast kernel uses
  return r;
}

// Wraps obj.__cuda_array_interface__ (C-contiguous float32/int32) without copying.
DeviceArray from_cuda_array_interface(const py::object& obj) {
  if (!py::hasattr(obj, "__cuda_array_interface__"))
    fail("object of type ", std::string(py::str(py::type::of(obj).attr("__name__"))),
         " has no __cuda_array_interface__");
  py::dict cai = obj.attr("__cuda_array_interface__");
  const std::string ts = py::str(cai["typestr"]);
  require(ts == "<f4" || ts == "<i4", "__cuda_array_interface__: need float32 or int32, got '", ts,
          "'");
  DeviceArray d;
  d.is_int = ts == "<i4";
  for (auto v : py::tuple(cai["shape"])) d.shape.push_back(v.cast<i64>());
  if (cai.contains("strides") && !cai["strides"].is_none()) {
    i64 expect = 4;
    auto st = py::tuple(cai["strides"]);
    for (size_t k = d.shape.size(); k-- > 0;) {
      if (d.shape[k] != 1)
        require(st[k].cast<i64>() == expect,
                "__cuda_array_interface__: only C-contiguous arrays are supported");
      expect *= d.shape[k];
    }
  }
  d.ptr = reinterpret_cast<void*>(py::tuple(cai["data"])[0].cast<std::uintptr_t>());
  d.device = cu::pointer_device(d.ptr);
  d.foreign = obj;
  // Protocol v3: a non-None `stream` is the producer's stream, with work on the data possibly
  // still queued; lrpfast's stream waits for it (1 and 2, the default streams, are ordered before
  // the legacy default stream's later work already; 0 is disallowed by the protocol).
  if (cai.contains("stream") && !cai["stream"].is_none()) {
    const i64 st = to_index(cai["stream"], "__cuda_array_interface__ stream");
    require(st != 0, "__cuda_array_interface__: stream 0 is disallowed (protocol v3); use 1 for "
            "the legacy default stream, 2 for the per-thread default stream, or a stream handle");
    if (st != 1 && st != 2) {
      cu::DeviceGuard on(d.device);
      py::gil_scoped_release nogil;
      cu::wait_for_stream(std::uintptr_t(st));
    }
  }
  return d;
}

// A view of `shape` starting `offset` elements into `a` (same memory, same owner). It shares the
// block, so a view exported through DLPack hands the consumer's stream back to the parent block.
DeviceArray view(const DeviceArray& a, i64 offset, const std::vector<i64>& shape) {
  i64 n = 1;
  for (i64 d : shape) {
    require(d >= 0, "view: negative dimension in ", shape_str(shape));
    n *= d;
  }
  require(offset >= 0 && offset + n <= a.size(), "view: ", n, " elements at offset ", offset,
          " do not fit a device array of shape ", shape_str(a.shape));
  DeviceArray r = a;
  r.ptr = static_cast<char*>(a.ptr) + 4 * offset;
  r.shape = shape;
  return r;
}

DeviceArray reshape(const DeviceArray& a, const std::vector<i64>& shape) {
  DeviceArray r = a;
  i64 n = 1, neg = -1;
  std::vector<i64> s = shape;
  for (size_t k = 0; k < s.size(); ++k) {
    if (s[k] == -1) {
      require(neg < 0, "reshape: only one -1 allowed");
      neg = i64(k);
    } else {
      n *= s[k];
    }
  }
  if (neg >= 0) s[size_t(neg)] = n ? a.size() / n : 0, n *= s[size_t(neg)];
  require(n == a.size(), "cannot reshape a device array of shape ", shape_str(a.shape), " into ",
          shape_str(shape));
  r.shape = s;
  return r;
}

DeviceArray copy(const DeviceArray& a) {
  cu::DeviceGuard on(a.device);
  DeviceArray r = empty(a.shape, a.is_int);
  cu::copy_device(r.ptr, a.ptr, a.nbytes());
  return r;
}

void ndim(const DeviceArray& a, size_t n, const char* name, const char* layout) {
  if (a.shape.size() != n)
    fail(name, " must be ", n, "-D ", layout, ", got shape ", shape_str(a.shape));
}
const float* bias(const py::object& bo, i64 n) {
  if (bo.is_none()) return nullptr;
  const DeviceArray& b = bo.cast<const DeviceArray&>();
  require(b.shape.size() == 1 && b[0] == n, "b must have shape (", n, ",), got ",
          shape_str(b.shape));
  return b.f();
}

// ---- DLPack ------------------------------------------------------------------------------------
// Export: a capsule owning a ManagedTensor whose manager_ctx holds a view of the array (so the
// memory outlives the DeviceArray if needed); the deleter frees both, from any thread. Import: the
// capsule is checked, renamed "used_..." and its ManagedTensor owned by a Python object that the
// DeviceArray (and every view of it) keeps: the producer's deleter runs once, with the last view.
template <class M>
struct Names;
template <>
struct Names<dl::ManagedTensor> {
  static constexpr const char* name = "dltensor";
  static constexpr const char* used = "used_dltensor";
};
template <>
struct Names<dl::ManagedTensorVersioned> {
  static constexpr const char* name = "dltensor_versioned";
  static constexpr const char* used = "used_dltensor_versioned";
};

struct ExportCtx {
  DeviceArray keep;                      // holds the block (or the foreign owner) alive
  std::vector<std::int64_t> shape, strides;  // what dl_tensor.shape / .strides point to
  std::uintptr_t stream = 0;             // the consumer's stream handle, 0 for a default stream
};

// True for a consumer stream that needs events: a handle, not None/1/2 (the default streams,
// which the legacy default stream of lrpfast's later work is ordered after anyway) or -1 (the
// consumer synchronises itself).
bool stream_handle(i64 s) { return s != 1 && s != 2 && s != -1; }

template <class M>
void delete_exported(M* m) {  // the deleter handed to consumers: any thread, GIL or not
  if (!m) return;
  auto* ctx = static_cast<ExportCtx*>(m->manager_ctx);
  delete m;
  // The consumer is done queuing work on the memory, not necessarily done running it: the block
  // is reused only after the work queued on the consumer's stream so far (cu::record_use).
  if (ctx->stream && ctx->keep.block) {
    try {
      cu::DeviceGuard on(ctx->keep.device);
      cu::record_use(ctx->keep.block->p, ctx->stream);
    } catch (const std::exception&) {  // no event: wait for everything instead
      try {
        cu::synchronize();
      } catch (const std::exception&) {  // a deleter must not throw
      }
    }
  }
  if (!Py_IsInitialized()) return;  // interpreter gone: leak the view rather than crash
  py::gil_scoped_acquire gil;       // the view may own Python objects
  delete ctx;
}

template <class M>
void capsule_destructor(PyObject* cap) {  // a capsule nobody consumed deletes its tensor
  if (!PyCapsule_IsValid(cap, Names<M>::name)) return;  // consumed: renamed "used_..."
  PyObject *type, *value, *tb;
  PyErr_Fetch(&type, &value, &tb);
  auto* m = static_cast<M*>(PyCapsule_GetPointer(cap, Names<M>::name));
  if (m && m->deleter) m->deleter(m);
  PyErr_Restore(type, value, tb);
}

template <class M>
py::capsule export_dlpack(const DeviceArray& a, dl::Device device, std::uint64_t flags,
                          std::uintptr_t stream = 0) {
  auto ctx = std::make_unique<ExportCtx>();
  ctx->keep = a;
  ctx->stream = stream;
  ctx->shape = a.shape;
  ctx->strides.assign(a.shape.size(), 1);  // C-contiguous, in elements
  for (size_t k = a.shape.size(); k-- > 1;)
    ctx->strides[k - 1] = ctx->strides[k] * std::max<i64>(a.shape[k], 1);
  auto m = std::make_unique<M>();  // zero-initialised
  dl::Tensor& t = m->dl_tensor;
  t.data = a.ptr;
  t.device = device;
  t.ndim = std::int32_t(a.shape.size());
  t.dtype = a.is_int ? dl::DataType{dl::kDLInt, 32, 1} : dl::DataType{dl::kDLFloat, 32, 1};
  t.shape = ctx->shape.data();
  t.strides = ctx->strides.data();
  t.byte_offset = 0;
  m->manager_ctx = ctx.get();
  m->deleter = &delete_exported<M>;
  if constexpr (std::is_same<M, dl::ManagedTensorVersioned>::value) {
    m->version = {1, 0};
    m->flags = flags;
  }
  PyObject* cap = PyCapsule_New(m.get(), Names<M>::name, &capsule_destructor<M>);
  if (!cap) throw py::error_already_set();
  ctx.release();
  m.release();
  return py::reinterpret_steal<py::capsule>(cap);
}

std::string device_str(std::int32_t type) {
  switch (type) {
    case dl::kDLCPU: return "CPU";
    case dl::kDLCUDA: return "CUDA";
    case dl::kDLCUDAHost: return "CUDA host (pinned) memory";
    case dl::kDLCUDAManaged: return "CUDA managed memory";
  }
  return "device type " + std::to_string(type);
}

std::string dtype_str(dl::DataType d) {
  static const char* names[] = {"int", "uint", "float", "opaque", "bfloat", "complex", "bool"};
  std::string s = d.code < 7 ? names[d.code] : "code" + std::to_string(d.code) + "_";
  s += std::to_string(d.bits);
  if (d.lanes != 1) s += "x" + std::to_string(d.lanes);
  return s;
}

// A DeviceArray view of a DLTensor on `want` (device type and id), float32 or int32, C-contiguous.
DeviceArray dlpack_view(const dl::Tensor& t, dl::Device want) {
  require(t.device.device_type == want.device_type, "DLPack: the tensor is on ",
          device_str(t.device.device_type), ", expected ", device_str(want.device_type),
          " (DLPack device type ", want.device_type, ")");
  if (want.device_id >= 0)
    require(t.device.device_id == want.device_id, "DLPack: the tensor is on ",
            device_str(t.device.device_type), " device ", t.device.device_id,
            " but lrpfast runs on device ", want.device_id);
  else
    require(t.device.device_id >= 0 && t.device.device_id < cu::device_count(nullptr),
            "DLPack: the tensor is on ", device_str(t.device.device_type), " device ",
            t.device.device_id, ", which this process does not have");
  const bool f32 = t.dtype.code == dl::kDLFloat && t.dtype.bits == 32 && t.dtype.lanes == 1;
  const bool i32 = t.dtype.code == dl::kDLInt && t.dtype.bits == 32 && t.dtype.lanes == 1;
  require(f32 || i32, "DLPack: need a float32 (or int32) tensor, got ", dtype_str(t.dtype));
  require(t.ndim >= 0 && (t.ndim == 0 || t.shape), "DLPack: invalid ndim ", t.ndim);
  DeviceArray d;
  d.is_int = i32;
  d.device = t.device.device_id;
  d.shape.assign(t.shape, t.shape + t.ndim);
  for (i64 s : d.shape) require(s >= 0, "DLPack: negative dimension in shape ", shape_str(d.shape));
  if (t.strides && d.size() > 0) {
    const std::vector<i64> st(t.strides, t.strides + t.ndim);
    i64 expect = 1;
    for (size_t k = d.shape.size(); k-- > 0;) {
      require(d.shape[k] == 1 || st[k] == expect,
              "DLPack: only C-contiguous tensors are supported, got strides ", shape_str(st),
              " (elements) for shape ", shape_str(d.shape));
      expect *= d.shape[k];
    }
  }
  char* p = static_cast<char*>(t.data) + t.byte_offset;
  require(d.size() == 0 || (t.data && reinterpret_cast<std::uintptr_t>(p) % 4 == 0),
          "DLPack: null or misaligned data pointer");
  d.ptr = p;
  return d;
}

template <class M>
DeviceArray take_dlpack(PyObject* cap, dl::Device want) {
  auto* m = static_cast<M*>(PyCapsule_GetPointer(cap, Names<M>::name));
  if (!m) throw py::error_already_set();
  if constexpr (std::is_same<M, dl::ManagedTensorVersioned>::value) {
    require(m->version.major == 1, "DLPack: version ", m->version.major, ".", m->version.minor,
            " is not supported (1.x is)");
    require(!(m->flags & dl::kFlagReadOnly),
            "DLPack: read-only tensors are not supported (device arrays are writable)");
  }
  DeviceArray d = dlpack_view(m->dl_tensor, want);  // throws before anything changes hands
  if (PyCapsule_SetName(cap, Names<M>::used) != 0) throw py::error_already_set();
  d.foreign = py::capsule(m, [](void* p) {
    auto* mm = static_cast<M*>(p);
    if (mm->deleter) mm->deleter(mm);
  });
  return d;
}

// Consumes a "dltensor" or "dltensor_versioned" capsule describing memory on `want`. A capsule
// that fails a check stays unconsumed (its own destructor then calls the producer's deleter).
DeviceArray import_dlpack(const py::object& obj, dl::Device want) {
  PyObject* cap = obj.ptr();
  if (!PyCapsule_CheckExact(cap))
    fail("DLPack: expected a 'dltensor' capsule, got ",
         std::string(py::str(py::type::of(obj).attr("__name__"))));
  const char* cname = PyCapsule_GetName(cap);
  const std::string name = cname ? cname : "";
  if (name == Names<dl::ManagedTensor>::name) return take_dlpack<dl::ManagedTensor>(cap, want);
  if (name == Names<dl::ManagedTensorVersioned>::name)
    return take_dlpack<dl::ManagedTensorVersioned>(cap, want);
  require(name.rfind("used_", 0) != 0, "DLPack: this capsule was already consumed ('", name, "')");
  fail("DLPack: expected a 'dltensor' or 'dltensor_versioned' capsule, got '", name, "'");
}

// DeviceArray.__dlpack__: a legacy capsule, or a versioned one when max_version >= (1, 0). stream:
// the consumer's stream (None or 1: the legacy default stream our kernels run on, -1: no
// synchronisation); any other stream is made to wait for our queued work, and a stream handle's
// work is waited for before the block is reused (delete_exported).
py::capsule dunder_dlpack(const DeviceArray& a, const py::object& stream,
                          const py::object& max_version, const py::object& dl_device,
                          const py::object& copy_flag) {
  const dl::Device device{dl::kDLCUDA, a.device};
  if (!dl_device.is_none()) {
    auto t = py::reinterpret_borrow<py::sequence>(dl_device);
    if (t.size() != 2 || t[0].cast<i64>() != device.device_type ||
        t[1].cast<i64>() != device.device_id)
      throw py::buffer_error("__dlpack__: can only export to the array's own device (2, " +
                             std::to_string(device.device_id) + "), got " +
                             std::string(py::repr(dl_device)));
  }
  const bool want_copy = !copy_flag.is_none() && copy_flag.cast<bool>();
  const DeviceArray src = want_copy ? copy(a) : a;
  std::uintptr_t consumer = 0;  // a stream handle to record the consumer's use on
  if (!stream.is_none()) {
    const i64 s = to_index(stream, "stream");
    require(s != 0, "__dlpack__: stream 0 is ambiguous for CUDA; pass 1 (legacy default stream), "
            "2 (per-thread default stream) or a stream handle");
    if (s != 1 && s != -1) {  // the consumer's stream waits for the work queued on the array
      cu::DeviceGuard on(a.device);
      py::gil_scoped_release nogil;
      cu::stream_wait(std::uintptr_t(s));
    }
    if (stream_handle(s)) consumer = std::uintptr_t(s);
  }
  const bool versioned = !max_version.is_none() &&
                         py::reinterpret_borrow<py::sequence>(max_version)[0].cast<i64>() >= 1;
  if (versioned)
    return export_dlpack<dl::ManagedTensorVersioned>(src, device,
                                                     want_copy ? dl::kFlagIsCopied : 0, consumer);
  return export_dlpack<dl::ManagedTensor>(src, device, 0, consumer);
}

// Test entry (module dlpack_testing): a C-contiguous float32/int32 HOST array as a DeviceArray
// view, so export_dlpack/import_dlpack run on host memory with any device type.
DeviceArray host_view(const py::array& arr, const py::object& owner) {
  const bool f32 = arr.dtype().kind() == 'f' && arr.itemsize() == 4;
  const bool i32 = arr.dtype().kind() == 'i' && arr.itemsize() == 4;
  require(f32 || i32, "arr must be float32 or int32");
  require(arr.flags() & py::array::c_style, "arr must be C-contiguous");
  DeviceArray d;
  d.is_int = i32;
  d.shape.assign(arr.shape(), arr.shape() + arr.ndim());
  d.ptr = const_cast<void*>(arr.data());
  d.foreign = py::make_tuple(arr, owner);
  return d;
}

// ---- kernels -----------------------------------------------------------------------------------

DeviceArray conv_forward(const DeviceArray& x, const DeviceArray& w, const py::object& bo,
                         const py::object& stride, const py::object& pad,
                         const py::object& dilation, i64 group) {
  cu::DeviceGuard on(device_of({{"x", &x}, {"w", &w}, {"b", opt(bo)}}));
  ndim(x, 4, "x", "(N,C,H,W)");
  ndim(w, 4, "w", "(O,C/group,kh,kw)");
  const auto g = lrpfast::conv_geom(x.shape, w.shape, stride, pad, dilation, group);
  const float* b = bias(bo, g.O);
  DeviceArray y = empty({g.N, g.O, g.Ho, g.Wo});
  py::gil_scoped_release nogil;
  cu::conv_forward(g, x.f(), w.f(), b, y.f());
  return y;
}

py::tuple conv_forward_pair(const DeviceArray& x, const DeviceArray& w, const py::object& bo,
                            const py::object& stride, const py::object& pad,
                            const py::object& dilation, i64 group) {
  cu::DeviceGuard on(device_of({{"x", &x}, {"w", &w}, {"b", opt(bo)}}));
  ndim(x, 4, "x", "(N,C,H,W)");
  ndim(w, 4, "w", "(O,C/group,kh,kw)");
  const auto g = lrpfast::conv_geom(x.shape, w.shape, stride, pad, dilation, group);
  lrpfast::require_conv_pair(g);
  const float* b = bias(bo, g.O);
  DeviceArray y = empty({g.N, g.O / 2, g.Ho, g.Wo}), y2 = empty({g.N, g.O / 2, g.Ho, g.Wo});
  {
    py::gil_scoped_release nogil;
    cu::conv_forward_pair(g, x.f(), w.f(), b, y.f(), y2.f());
  }
  return py::make_tuple(y, y2);
}

// Twin of _core.conv_backward_data, fused steps included (here as separate launches: the
// signal stabilized_divide(dy, z, eps) before, the product with `times` after).
DeviceArray conv_backward_data(const DeviceArray& dy, const DeviceArray& w,
                               const py::object& in_shape, const py::object& stride,
                               const py::object& pad, const py::object& dilation, i64 group,
                               const py::object& zo, double eps, const py::object& timeso) {
  cu::DeviceGuard on(device_of({{"dy", &dy}, {"w", &w}, {"z", opt(zo)}, {"times", opt(timeso)}}));
  ndim(dy, 4, "dy", "(N,O,Ho,Wo)");
  ndim(w, 4, "w", "(O,C/group,kh,kw)");
  const auto in = chw(in_shape);
  const auto s = pair(stride, "stride"), p = pair(pad, "pad"), d = pair(dilation, "dilation");
  const auto g = lrpfast::make_conv_geom(dy[0], in[0], in[1], in[2], w[0], w[1], w[2], w[3], s[0],
                                         s[1], p[0], p[1], d[0], d[1], group);
  require(dy[1] == g.O && dy[2] == g.Ho && dy[3] == g.Wo, "dy must have shape (N, ", g.O, ", ",
          g.Ho, ", ", g.Wo, "), got ", shape_str(dy.shape));
  const float* sig = dy.f();
  DeviceArray signal;
  if (!zo.is_none()) {
    const DeviceArray& z = zo.cast<const DeviceArray&>();
    require(z.shape == dy.shape, "z must have the shape of dy ", shape_str(dy.shape), ", got ",
            shape_str(z.shape));
    lrpfast::check_stabilizer(eps);
    signal = empty(dy.shape);
    cu::stabilized_divide(dy.size(), dy.f(), z.f(), float(eps), true, signal.f());
    sig = signal.f();
  }
  const float* times = nullptr;
  if (!timeso.is_none()) {
    const DeviceArray& t = timeso.cast<const DeviceArray&>();
    require(t.shape == std::vector<i64>{g.N, g.C, g.H, g.W}, "times must have the shape of dx (",
            g.N, ", ", g.C, ", ", g.H, ", ", g.W, "), got ", shape_str(t.shape));
    times = t.f();
  }
  DeviceArray dx = empty({g.N, g.C, g.H, g.W});
  py::gil_scoped_release nogil;
  cu::conv_backward_data(g, sig, w.f(), dx.f());
  if (times) {
    const std::int64_t n = dx.size(), one = 1;
    cu::binary(cu::BinaryOp::Mul, 1, &n, times, &one, dx.f(), &one, dx.f());
  }
  return dx;
}

DeviceArray relu_forward(const DeviceArray& x, double slope) {
  cu::DeviceGuard on(device_of({{"x", &x}}));
  require(std::isfinite(slope), "negative_slope must be finite, got ", slope);
  DeviceArray y = empty(x.shape);
  py::gil_scoped_release nogil;
  cu::relu_forward(x.size(), x.f(), float(slope), y.f());
  return y;
}

DeviceArray linear_forward(const DeviceArray& x, const DeviceArray& w, const py::object& bo) {
  cu::DeviceGuard on(device_of({{"x", &x}, {"w", &w}, {"b", opt(bo)}}));
  ndim(x, 2, "x", "(N,K)");
  ndim(w, 2, "w", "(O,K)");
  const auto g = lrpfast::make_linear_geom(x[0], x[1], w[0], w[1]);
  const float* b = bias(bo, g.O);
  DeviceArray y = empty({g.N, g.O});
  py::gil_scoped_release nogil;
  cu::linear_forward(g, x.f(), w.f(), b, y.f());
  return y;
}

DeviceArray linear_backward_data(const DeviceArray& dy, const DeviceArray& w) {
  cu::DeviceGuard on(device_of({{"dy", &dy}, {"w", &w}}));
  ndim(dy, 2, "dy", "(N,O)");
  ndim(w, 2, "w", "(O,K)");
  require(dy[1] == w[0], "dy has ", dy[1], " outputs per row but w has ", w[0], " rows");
  const auto g = lrpfast::make_linear_geom(dy[0], w[1], w[0], w[1]);
  DeviceArray dx = empty({g.N, g.K});
  py::gil_scoped_release nogil;
  cu::linear_backward_data(g, dy.f(), w.f(), dx.f());
  return dx;
}

py::tuple pool_forward(const DeviceArray& x, const std::string& method, const py::object& kernel,
                       const py::object& stride, const py::object& pad, bool ceil_mode) {
  cu::DeviceGuard on(device_of({{"x", &x}}));
  ndim(x, 4, "x", "(N,C,H,W)");
  const auto m = lrpfast::parse_pool_method(method.c_str());
  const auto k = pair(kernel, "kernel"), s = pair(stride, "stride"), p = pair(pad, "pad");
  const auto g = lrpfast::make_pool_geom(x[0], x[1], x[2], x[3], k[0], k[1], s[0], s[1], p[0], p[1],
                                         ceil_mode);
  DeviceArray y = empty({g.N, g.C, g.Ho, g.Wo});
  if (m == lrpfast::PoolMethod::Max) {
    DeviceArray am = empty({g.N, g.C, g.Ho, g.Wo}, true);
    {
      py::gil_scoped_release nogil;
      cu::pool_max_forward(g, x.f(), y.f(), am.i());
    }
    return py::make_tuple(y, am);
  }
  {
    py::gil_scoped_release nogil;
    cu::pool_ave_forward(g, x.f(), y.f());
  }
  return py::make_tuple(y, py::none());
}

DeviceArray pool_backward(const DeviceArray& dy, const py::object& in_shape,
                          const std::string& method, const py::object& kernel,
                          const py::object& stride, const py::object& pad, const py::object& amo,
                          const py::object& ceil_mode) {
  cu::DeviceGuard on(device_of({{"dy", &dy}, {"argmax", opt(amo)}}));
  ndim(dy, 4, "dy", "(N,C,Ho,Wo)");
  const auto m = lrpfast::parse_pool_method(method.c_str());
  const auto in = chw(in_shape);
  const auto k = pair(kernel, "kernel"), s = pair(stride, "stride"), p = pair(pad, "pad");
  // ceil_mode None: the mode matching dy's shape (ceil first), as _core.pool_backward
  auto g = lrpfast::make_pool_geom(dy[0], in[0], in[1], in[2], k[0], k[1], s[0], s[1], p[0], p[1],
                                   ceil_mode.is_none() ? true : ceil_mode.cast<bool>());
  if (ceil_mode.is_none() && (dy[2] != g.Ho || dy[3] != g.Wo))
    g = lrpfast::make_pool_geom(dy[0], in[0], in[1], in[2], k[0], k[1], s[0], s[1], p[0], p[1],
                                false);
  require(dy[1] == g.C && dy[2] == g.Ho && dy[3] == g.Wo, "dy must have shape (N, ", g.C, ", ",
          g.Ho, ", ", g.Wo, "), got ", shape_str(dy.shape));
  DeviceArray dx = empty({g.N, g.C, g.H, g.W});
  if (m == lrpfast::PoolMethod::Max) {
    require(!amo.is_none(), "pool_backward: max pooling needs the argmax of the forward pass");
    const DeviceArray& am = amo.cast<const DeviceArray&>();
    require(am.shape == dy.shape, "argmax must have the shape of dy ", shape_str(dy.shape));
    py::gil_scoped_release nogil;
    cu::pool_max_backward(g, dy.f(), am.i(), dx.f());
  } else {
    py::gil_scoped_release nogil;
    cu::pool_ave_backward(g, dy.f(), dx.f());
  }
  return dx;
}

py::tuple lrn_forward(const DeviceArray& x, i64 local_size, double alpha, double beta, double k,
                      const std::string& region) {
  cu::DeviceGuard on(device_of({{"x", &x}}));
  ndim(x, 4, "x", "(N,C,H,W)");
  const auto p = lrpfast::make_lrn_params(local_size, alpha, beta, k, region.c_str());
  DeviceArray y = empty(x.shape), scale = empty(x.shape);
  {
    py::gil_scoped_release nogil;
    cu::lrn_forward(p, int(x[0]), int(x[1]), int(x[2]), int(x[3]), x.f(), y.f(), scale.f());
  }
  return py::make_tuple(y, scale);
}

DeviceArray stabilized_divide(const DeviceArray& r, const DeviceArray& z, double eps,
                              bool zero_to_zero) {
  cu::DeviceGuard on(device_of({{"r", &r}, {"z", &z}}));
  lrpfast::check_stabilizer(eps);
  require(r.shape == z.shape, "stabilized_divide: r ", shape_str(r.shape), " and z ",
          shape_str(z.shape), " must have the same shape");
  DeviceArray out = empty(r.shape);
  py::gil_scoped_release nogil;
  cu::stabilized_divide(r.size(), r.f(), z.f(), float(eps), zero_to_zero, out.f());
  return out;
}

// Twins of _core.eltwise_forward / _core.channel_affine (same arguments, checks and results).
py::tuple eltwise_forward(const py::object& xso, const std::string& operation,
                          const py::object& coeffso) {
  const auto op = lrpfast::parse_eltwise_op(operation.c_str());
  const auto xs = lrpfast::eltwise_inputs(xso, "device arrays", [](py::handle h,
                                                                   const std::string& n) {
    DeviceArray a;
    try {
      a = h.cast<DeviceArray>();
    } catch (const py::cast_error&) {
      fail(n, " must be a device array, got ",
           std::string(py::str(py::type::of(h).attr("__name__"))));
    }
    require(!a.is_int, n, " must be float32, got int32");
    return a;
  });
  const size_t K = xs.size();
  std::vector<const float*> ptrs;
  for (const auto& x : xs) ptrs.push_back(x.f());
  for (const auto& x : xs) device_of({{"xs[0]", &xs[0]}, {"an input", &x}});
  cu::DeviceGuard on(xs[0].device);
  const std::vector<float> coeffs = lrpfast::eltwise_coeffs(coeffso, op, K);
  DeviceArray y = empty(xs[0].shape);
  py::object am = py::none();
  std::int32_t* ap = nullptr;
  if (op == lrpfast::EltwiseOp::Max) {
    DeviceArray a = empty(xs[0].shape, true);
    ap = a.i();
    am = py::cast(a);
  }
  {
    py::gil_scoped_release nogil;
    cu::eltwise_forward(op, int(K), ptrs.data(), coeffs.empty() ? nullptr : coeffs.data(),
                        y.size(), y.f(), ap);
  }
  return py::make_tuple(y, am);
}

DeviceArray channel_affine(const DeviceArray& x, const DeviceArray& scale, const py::object& bo) {
  cu::DeviceGuard on(device_of({{"x", &x}, {"scale", &scale}, {"bias", opt(bo)}}));
  require(x.shape.size() >= 2, "x must be (N, C, ...) with at least 2 dimensions, got shape ",
          shape_str(x.shape));
  const i64 N = x[0], C = x[1];
  i64 P = 1;
  for (size_t d = 2; d < x.shape.size(); ++d) P *= x[d];
  require(scale.shape.size() == 1 && scale[0] == C, "scale must have shape (", C,
          ",) (one value per channel), got ", shape_str(scale.shape));
  const float* b = nullptr;
  if (!bo.is_none()) {
    const DeviceArray& bias = bo.cast<const DeviceArray&>();
    require(bias.shape.size() == 1 && bias[0] == C, "bias must have shape (", C,
            ",) (one value per channel), got ", shape_str(bias.shape));
    b = bias.f();
  }
  DeviceArray y = empty(x.shape);
  py::gil_scoped_release nogil;
  cu::channel_affine(N, C, P, x.f(), scale.f(), b, y.f());
  return y;
}

// numpy broadcasting of a and b -> out shape and element strides (0 on broadcast axes).
DeviceArray binary(int op, const DeviceArray& a, const DeviceArray& b) {
  cu::DeviceGuard on(device_of({{"a", &a}, {"b", &b}}));
  const size_t nd = std::max(a.shape.size(), b.shape.size());
  require(nd <= size_t(cu::kMaxDims), "binary: at most ", cu::kMaxDims, " dimensions");
  std::vector<i64> shape(nd), sa(nd), sb(nd);
  i64 ra = 1, rb = 1;
  for (size_t k = nd; k-- > 0;) {
    const i64 da = k + a.shape.size() >= nd ? a.shape[k + a.shape.size() - nd] : 1;
    const i64 db = k + b.shape.size() >= nd ? b.shape[k + b.shape.size() - nd] : 1;
    require(da == db || da == 1 || db == 1, "operands could not be broadcast together with shapes ",
            shape_str(a.shape), " ", shape_str(b.shape));
    shape[k] = da == 1 ? db : da;
    sa[k] = da == 1 ? 0 : ra;
    sb[k] = db == 1 ? 0 : rb;
    ra *= da;
    rb *= db;
  }
  DeviceArray out = empty(shape);
  py::gil_scoped_release nogil;
  cu::binary(cu::BinaryOp(op), int(nd), shape.data(), a.f(), sa.data(), b.f(), sb.data(), out.f());
  return out;
}

DeviceArray broadcast_to(const DeviceArray& a, const std::vector<i64>& shape) {
  cu::DeviceGuard on(device_of({{"a", &a}}));
  const size_t nd = shape.size();
  require(nd >= a.shape.size() && nd <= size_t(cu::kMaxDims), "broadcast_to: bad shape ",
          shape_str(shape));
  std::vector<i64> sa(nd);
  i64 ra = 1;
  for (size_t k = nd; k-- > 0;) {
    const i64 da = k + a.shape.size() >= nd ? a.shape[k + a.shape.size() - nd] : 1;
    require(da == shape[k] || da == 1, "cannot broadcast ", shape_str(a.shape), " to ",
            shape_str(shape));
    sa[k] = da == 1 ? 0 : ra;
    ra *= da;
  }
  DeviceArray out = empty(shape);
  py::gil_scoped_release nogil;
  cu::binary(cu::BinaryOp::First, int(nd), shape.data(), a.f(), sa.data(), nullptr, nullptr,
             out.f());
  return out;
}

DeviceArray binary_scalar(int op, const DeviceArray& a, double s, bool left) {
  cu::DeviceGuard on(device_of({{"a", &a}}));
  DeviceArray out = empty(a.shape);
  py::gil_scoped_release nogil;
  cu::binary_scalar(cu::BinaryOp(op), a.size(), a.f(), float(s), left, out.f());
  return out;
}

DeviceArray unary(int op, const DeviceArray& a) {
  cu::DeviceGuard on(device_of({{"a", &a}}));
  DeviceArray out = empty(a.shape);
  py::gil_scoped_release nogil;
  cu::unary(cu::UnaryOp(op), a.size(), a.f(), out.f());
  return out;
}

}  // namespace

#ifdef LRPFAST_CUDA_HOST
void lrpfast_host_api(py::module_ m);  // src/cuda/host/api.cpp: the host build's test controls
#else
#define LRPFAST_CUDA_MODULE _cuda
#endif

PYBIND11_MODULE(LRPFAST_CUDA_MODULE, m) {
  m.doc() = "lrpfast CUDA engine (loaded lazily by lrpfast.cuda)";
#ifdef LRPFAST_CUDA_HOST
  lrpfast_host_api(m.def_submodule("host", "controls of the host CUDA stand-in (tests only)"));
#endif
  m.attr("__version__") = LRPFAST_VERSION;
  m.def("device_count", [] {
    std::string why;
    const int n = cu::device_count(&why);
    return py::make_tuple(n, why);
  }, "(number of CUDA devices, reason when 0); never raises.");
  m.def("device_name", &cu::device_name);
  m.def("blas_name", &cu::blas_name);
  m.def("blas_math_mode", &cu::blas_math_mode,
        "cuBLAS math mode of lrpfast's handles (2: CUBLAS_PEDANTIC_MATH, exact FP32).");
  m.def("synchronize", [] {
    py::gil_scoped_release nogil;
    cu::synchronize();
  }, "Wait for the current device's queued work; raises on an asynchronous kernel fault.");
  m.def("get_device", &cu::current_device, "The calling thread's current CUDA device.");
  m.def("set_device", &cu::set_device, py::arg("device"),
        "Make `device` current for the calling thread (ValueError when it does not exist).");
  m.def("set_sync_launches", &cu::set_sync_launches, py::arg("on"),
        "Debug switch: every kernel launch and cuBLAS call waits and reports its own fault\n"
        "(initially on when the environment variable LRPFAST_CUDA_SYNC=1).");
  m.def("sync_launches", &cu::sync_launches);
  m.def("empty_cache", [] {
    py::gil_scoped_release nogil;
    cu::empty_cache();
  }, "Free the device blocks kept by the caching allocator (every device).");
  m.def("memory_stats", [](const py::object& device) {
    std::size_t a = 0, b = 0;
    cu::memory_stats(device.is_none() ? cu::current_device() : device.cast<int>(), &a, &b);
    return py::make_tuple(a, b);
  }, py::arg("device") = py::none(), "(bytes in use, bytes cached) on device (None: current)");

  py::class_<DeviceArray>(m, "DeviceArray")
      .def_property_readonly("shape", [](const DeviceArray& d) { return py::tuple(py::cast(d.shape)); })
      .def_property_readonly("dtype", [](const DeviceArray& d) {
        return py::dtype(d.is_int ? "int32" : "float32");
      })
      .def_property_readonly("size", &DeviceArray::size)
      .def_property_readonly("nbytes", &DeviceArray::nbytes)
      .def_property_readonly("ptr", [](const DeviceArray& d) {
        return reinterpret_cast<std::uintptr_t>(d.ptr);
      })
      .def_property_readonly("device", [](const DeviceArray& d) { return d.device; },
                             "The CUDA device holding the memory.")
      .def_property_readonly("__cuda_array_interface__", &cuda_array_interface)
      .def("__dlpack__", &dunder_dlpack, py::arg("stream") = py::none(), py::kw_only(),
           py::arg("max_version") = py::none(), py::arg("dl_device") = py::none(),
           py::arg("copy") = py::none(),
           "DLPack export (no copy unless copy=True): a 'dltensor' capsule, or a\n"
           "'dltensor_versioned' one when max_version >= (1, 0). stream: the consumer's CUDA\n"
           "stream (None/1 legacy default, 2 per-thread default, -1 no synchronisation, or a\n"
           "handle, made to wait for the work queued on the array).")
      .def("__dlpack_device__", [](const DeviceArray& d) {
        return py::make_tuple(int(dl::kDLCUDA), d.device);
      }, "(2, the array's device id): kDLCUDA")
      .def("to_host", &to_host, "Copy to a new numpy array (synchronous).")
      .def("reshape", &reshape, "A view with another shape (same memory).")
      .def("view", &view, py::arg("offset"), py::arg("shape"),
           "A view of `shape` starting `offset` elements in (same memory and owner).")
      .def("copy", &copy);
  m.def("from_host", &from_host, "Copy a numpy array to the device (float32, or int32 for ints).");
  m.def("from_cuda_array_interface", &from_cuda_array_interface,
        "Wrap an object exposing __cuda_array_interface__ (no copy; keeps it alive).");
  m.def("from_dlpack", [](const py::object& cap) {
    return import_dlpack(cap, {dl::kDLCUDA, -1});
  }, py::arg("capsule"),
        "Wrap a DLPack capsule ('dltensor' or 'dltensor_versioned') of a C-contiguous float32 or\n"
        "int32 tensor on a CUDA device (no copy; the array keeps that device): the capsule is\n"
        "consumed and the producer's deleter runs once when the last view of the result is freed.");
  auto dt = m.def_submodule(
      "dlpack_testing",
      "The DLPack packing/unpacking of __dlpack__ and from_dlpack with the device as a parameter,\n"
      "over HOST arrays: lets CPU tests (and the host emulation of tests/cuda_emulation.py) run\n"
      "the very code the GPU path runs. Not for general use.");
  dt.def("to_dlpack", [](const py::array& arr, std::int32_t device_type, std::int32_t device_id,
                         bool versioned, const py::object& owner) {
    const DeviceArray d = host_view(arr, owner);
    const dl::Device dev{device_type, device_id};
    return versioned ? export_dlpack<dl::ManagedTensorVersioned>(d, dev, 0)
                     : export_dlpack<dl::ManagedTensor>(d, dev, 0);
  }, py::arg("arr"), py::arg("device_type") = int(dl::kDLCPU), py::arg("device_id") = 0,
         py::arg("versioned") = false, py::arg("owner") = py::none(),
         "A capsule describing the host array arr (float32/int32, C-contiguous) as on\n"
         "(device_type, device_id); arr and owner stay alive until the deleter runs.");
  dt.def("from_dlpack", [](const py::object& cap, std::int32_t device_type,
                           std::int32_t device_id) {
    return import_dlpack(cap, {device_type, device_id});
  }, py::arg("capsule"), py::arg("device_type") = int(dl::kDLCPU), py::arg("device_id") = 0,
         "from_dlpack expecting (device_type, device_id): a DeviceArray whose ptr is the\n"
         "tensor's address (read it with ctypes; to_host would copy from the GPU).");
  m.def("empty", [](const std::vector<i64>& shape, bool is_int) { return empty(shape, is_int); },
        py::arg("shape"), py::arg("is_int") = false);
  m.def("zeros", [](const std::vector<i64>& shape) {
    DeviceArray a = empty(shape);
    cu::memset0(a.ptr, a.nbytes());
    return a;
  });

  m.def("conv_forward", &conv_forward, py::arg("x"), py::arg("w"), py::arg("b"),
        py::arg("stride") = 1, py::arg("pad") = 0, py::arg("dilation") = 1, py::arg("group") = 1);
  m.def("conv_forward_pair", &conv_forward_pair, py::arg("x"), py::arg("w"), py::arg("b"),
        py::arg("stride") = 1, py::arg("pad") = 0, py::arg("dilation") = 1, py::arg("group") = 1);
  m.def("conv_backward_data", &conv_backward_data, py::arg("dy"), py::arg("w"), py::arg("in_shape"),
        py::arg("stride") = 1, py::arg("pad") = 0, py::arg("dilation") = 1, py::arg("group") = 1,
        py::kw_only(), py::arg("z") = py::none(), py::arg("eps") = 0.0,
        py::arg("times") = py::none());
  m.def("relu_forward", &relu_forward, py::arg("x"), py::arg("negative_slope") = 0.0);
  m.def("linear_forward", &linear_forward, py::arg("x"), py::arg("w"), py::arg("b"));
  m.def("linear_backward_data", &linear_backward_data, py::arg("dy"), py::arg("w"));
  m.def("pool_forward", &pool_forward, py::arg("x"), py::arg("method"), py::arg("kernel"),
        py::arg("stride") = 1, py::arg("pad") = 0, py::arg("ceil_mode") = true);
  m.def("pool_backward", &pool_backward, py::arg("dy"), py::arg("in_shape"), py::arg("method"),
        py::arg("kernel"), py::arg("stride") = 1, py::arg("pad") = 0, py::arg("argmax") = py::none(),
        py::arg("ceil_mode") = py::none());
  m.def("lrn_forward", &lrn_forward, py::arg("x"), py::arg("local_size"), py::arg("alpha"),
        py::arg("beta"), py::arg("k") = 1.0, py::arg("region") = "across");
  m.def("stabilized_divide", &stabilized_divide, py::arg("r"), py::arg("z"), py::arg("eps"),
        py::arg("zero_to_zero") = true);
  m.def("eltwise_forward", &eltwise_forward, py::arg("xs"), py::arg("operation"),
        py::arg("coeffs") = py::none());
  m.def("channel_affine", &channel_affine, py::arg("x"), py::arg("scale"),
        py::arg("bias") = py::none());
  m.def("binary", &binary, "op code (kernels.hpp BinaryOp), a, b with numpy broadcasting");
  m.def("binary_scalar", &binary_scalar, py::arg("op"), py::arg("a"), py::arg("s"),
        py::arg("scalar_left") = false);
  m.def("unary", &unary);
  m.def("broadcast_to", &broadcast_to);
  m.def("count_nonzero", [](const DeviceArray& a) {
    cu::DeviceGuard on(a.device);
    py::gil_scoped_release nogil;
    return cu::count_nonzero(a.size(), a.f());
  });
  m.def("sum", [](const DeviceArray& a) {
    cu::DeviceGuard on(a.device);
    py::gil_scoped_release nogil;
    return cu::sum(a.size(), a.f());
  }, "The sum in double, deterministic (the same bits on every run).");
}

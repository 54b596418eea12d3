"""A host emulation of ``lrpfast._cuda``: the same Python-visible API (DeviceArray, allocation,
copies, the element-wise, convolution, GEMM, pooling and LRN kernels) over numpy and
``lrpfast._core``, so that the whole device path of lrpfast.cuda (DeviceArray dispatch, the
GPU operators, Net(device="cuda") with upload-once, copy-in/copy-out and its errors) runs on a
machine without a GPU:

    import cuda_emulation
    with cuda_emulation.active() as emu:      # lrpfast.cuda.set_backend(emu) ... restored
        net = lrpfast.Net(..., device="cuda")
        emu.stats                             # host<->device transfers counted

"Device memory" is host memory owned by an opaque array (no ``__array__``: numpy cannot read it
by accident); ``__cuda_array_interface__`` gives its real address, and
``from_cuda_array_interface`` wraps such an address without a copy, as the real module does.

DLPack (``__dlpack__``, ``__dlpack_device__``, ``from_dlpack``) is not re-implemented here: the
capsules are packed and unpacked by the real C++ code of ``lrpfast._cuda`` (its
``dlpack_testing`` entries, which take the device as a parameter), on this host memory tagged
as CUDA device 0, so the checks, capsule renaming and deleter calls under test are the GPU's.
That needs ``lrpfast._cuda`` importable (it is wherever it was built: no driver is needed).
"""
from __future__ import annotations

import contextlib
import ctypes
import weakref

import numpy as np

from lrpfast import cuda
from lrpfast._loader import _core

__version__ = "emulated"
stats = {"h2d": 0, "d2h": 0, "h2d_bytes": 0, "d2h_bytes": 0, "allocs": 0}
_live: "weakref.WeakValueDictionary[int, np.ndarray]" = weakref.WeakValueDictionary()


def reset_stats():
    for k in stats:
        stats[k] = 0


class DeviceArray:
    __slots__ = ("_h", "_owner", "__weakref__")

    def __init__(self, h: np.ndarray, owner=None):
        assert h.dtype in (np.float32, np.int32) and h.flags.c_contiguous
        self._h = h
        self._owner = owner
        if owner is None:
            base = h if h.base is None else h.base
            if isinstance(base, np.ndarray):
                _live[base.ctypes.data] = base

    shape = property(lambda self: tuple(self._h.shape))
    dtype = property(lambda self: self._h.dtype)
    size = property(lambda self: int(self._h.size))
    nbytes = property(lambda self: int(self._h.nbytes))
    ptr = property(lambda self: int(self._h.ctypes.data))
    device = 0

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": "<i4" if self._h.dtype == np.int32 else "<f4",
                "data": (self.ptr, False), "strides": None, "version": 3, "stream": 1}

    def __array__(self, *a, **k):
        raise TypeError("emulated device memory: use to_host() (numpy must not read it directly)")

    def to_host(self) -> np.ndarray:
        stats["d2h"] += 1
        stats["d2h_bytes"] += self._h.nbytes
        return self._h.copy()

    def reshape(self, shape):
        return DeviceArray(self._h.reshape([int(s) for s in shape]), self._owner)

    def view(self, offset, shape):
        n = int(np.prod([int(d) for d in shape]))
        flat = self._h.reshape(-1)
        if offset < 0 or offset + n > flat.size:
            raise ValueError(f"view: {n} elements at offset {offset} do not fit {self.shape}")
        return DeviceArray(flat[offset:offset + n].reshape([int(d) for d in shape]), self._owner)

    def __dlpack__(self, stream=None, *, max_version=None, dl_device=None, copy=None):
        if stream is not None and int(stream) == 0:
            raise ValueError("__dlpack__: stream 0 is ambiguous for CUDA")
        if dl_device is not None and tuple(dl_device) != (2, 0):
            raise BufferError(f"__dlpack__: can only export to the array's own device (2, 0), "
                              f"got {dl_device}")
        h = self._h.copy() if copy else self._h
        versioned = max_version is not None and int(max_version[0]) >= 1
        return dlpack_impl().to_dlpack(h, 2, 0, versioned, self)

    def __dlpack_device__(self):
        return (2, 0)

    def copy(self):
        return _new(self._h.copy())


def _new(h: np.ndarray) -> DeviceArray:
    stats["allocs"] += 1
    h = np.ascontiguousarray(h)
    if h.dtype != np.int32:
        h = h.astype(np.float32, copy=False)
    return DeviceArray(h)


def _h(a) -> np.ndarray:
    if not isinstance(a, DeviceArray):
        raise TypeError(f"expected an (emulated) device array, got {type(a).__name__}")
    return a._h


# ---- runtime
def device_count():
    return 1, ""


def device_name(device=0):
    return "lrpfast host emulation"


def blas_name():
    return "numpy/_core (emulated)"


def synchronize():
    pass


def get_device():
    return 0


def set_device(device):
    if device != 0:
        raise ValueError(f"CUDA device {device} does not exist (1 device)")


def empty_cache():
    pass


def memory_stats():
    return 0, 0


def from_host(arr) -> DeviceArray:
    a = np.asarray(arr)
    a = np.array(a, dtype=np.int32 if a.dtype.kind in "iu" else np.float32, order="C", copy=True)
    stats["h2d"] += 1
    stats["h2d_bytes"] += a.nbytes
    return _new(a)


def from_cuda_array_interface(obj) -> DeviceArray:
    if not hasattr(obj, "__cuda_array_interface__"):
        raise TypeError(f"object of type {type(obj).__name__} has no __cuda_array_interface__")
    cai = obj.__cuda_array_interface__
    ts = cai["typestr"]
    if ts not in ("<f4", "<i4"):
        raise ValueError(f"__cuda_array_interface__: need float32 or int32, got '{ts}'")
    shape = tuple(int(d) for d in cai["shape"])
    if cai.get("strides") is not None:
        exp = 4
        for d, st in zip(reversed(shape), reversed(cai["strides"])):
            if d != 1 and st != exp:
                raise ValueError("__cuda_array_interface__: only C-contiguous arrays are supported")
            exp *= d
    ptr = int(cai["data"][0])
    n = int(np.prod(shape)) if shape else 1
    # the address must lie inside live emulated memory (a real pointer would crash the host)
    if not any(p <= ptr and ptr + 4 * n <= p + b.nbytes for p, b in list(_live.items())):
        raise ValueError("from_cuda_array_interface: address not in emulated device memory")
    ct = ctypes.c_int32 if ts == "<i4" else ctypes.c_float
    buf = (ct * n).from_address(ptr)
    h = np.ctypeslib.as_array(buf).reshape(shape)
    return DeviceArray(h, owner=obj)


def dlpack_impl():
    """The C++ DLPack packing/unpacking of the real lrpfast._cuda (module dlpack_testing)."""
    try:
        from lrpfast import _cuda
    except ImportError:
        cuda._preload_cublas()
        try:
            from lrpfast import _cuda
        except ImportError as e:
            raise RuntimeError(f"emulated DLPack needs lrpfast._cuda importable ({e})") from None
    return _cuda.dlpack_testing


def from_dlpack(capsule) -> DeviceArray:
    d = dlpack_impl().from_dlpack(capsule, 2, 0)   # checks, renames, owns the deleter
    shape = tuple(d.shape)
    n = int(np.prod(shape)) if shape else 1
    if n == 0:
        return DeviceArray(np.empty(shape, d.dtype), owner=d)
    ct = ctypes.c_int32 if d.dtype == np.int32 else ctypes.c_float
    h = np.ctypeslib.as_array((ct * n).from_address(d.ptr)).reshape(shape)
    _live[d.ptr] = h                               # views of it may be re-wrapped (slicing)
    return DeviceArray(h, owner=(d, h))            # d's last reference runs the deleter


def empty(shape, is_int=False):
    return _new(np.empty(shape, np.int32 if is_int else np.float32))


def zeros(shape):
    return _new(np.zeros(shape, np.float32))


# ---- kernels (the _core twins)
def _b(b):
    return None if b is None else _h(b)


def conv_forward(x, w, b, stride=1, pad=0, dilation=1, group=1):
    return _new(_core.conv_forward(_h(x), _h(w), _b(b), stride, pad, dilation, group))


def conv_forward_pair(x, w, b, stride=1, pad=0, dilation=1, group=1):
    y, y2 = _core.conv_forward_pair(_h(x), _h(w), _b(b), stride, pad, dilation, group)
    return _new(y), _new(y2)


def conv_backward_data(dy, w, in_shape, stride=1, pad=0, dilation=1, group=1, *, z=None,
                       eps=0.0, times=None):
    return _new(_core.conv_backward_data(_h(dy), _h(w), tuple(in_shape)[-3:], stride, pad,
                                         dilation, group, z=_b(z), eps=eps, times=_b(times)))


def relu_forward(x, negative_slope=0.0):
    return _new(_core.relu_forward(_h(x), negative_slope))


def linear_forward(x, w, b):
    return _new(_core.linear_forward(_h(x), _h(w), _b(b)))


def linear_backward_data(dy, w):
    return _new(_core.linear_backward_data(_h(dy), _h(w)))


def pool_forward(x, method, kernel, stride=1, pad=0, ceil_mode=True):
    y, am = _core.pool_forward(_h(x), method, kernel, stride, pad, ceil_mode)
    return _new(y), (_new(am) if method == "max" else None)


def pool_backward(dy, in_shape, method, kernel, stride=1, pad=0, argmax=None, ceil_mode=None):
    if method == "max" and argmax is None:
        raise ValueError("pool_backward: max pooling needs the argmax of the forward pass")
    am = _h(argmax) if argmax is not None else np.zeros(0, np.int32)
    return _new(_core.pool_backward(_h(dy), tuple(in_shape), method, kernel, stride, pad, am,
                                    ceil_mode))


def lrn_forward(x, local_size, alpha, beta, k=1.0, region="across"):
    y, s = _core.lrn_forward(_h(x), local_size, alpha, beta, k, region)
    return _new(y), _new(s)


def stabilized_divide(r, z, eps, zero_to_zero=True):
    if r.shape != z.shape:
        raise ValueError(f"stabilized_divide: r {r.shape} and z {z.shape} must have the same "
                         f"shape")
    return _new(_core.stabilized_divide(_h(r), _h(z), float(eps), bool(zero_to_zero)))


def eltwise_forward(xs, operation, coeffs=None):
    y, am = _core.eltwise_forward([_h(x) for x in xs], operation, coeffs)
    return _new(y), (None if am is None else _new(am))


def channel_affine(x, scale, bias=None):
    return _new(_core.channel_affine(_h(x), _h(scale), _b(bias)))


_BINOPS = [np.add, np.subtract, np.multiply, np.true_divide, np.maximum, np.minimum, np.greater,
           np.less, np.greater_equal, np.less_equal, np.equal]


def _binop(op, a, b):
    r = _BINOPS[op](a, b)
    return r.astype(np.float32) if r.dtype == bool else r


def binary(op, a, b):
    return _new(_binop(op, _h(a), _h(b)))


def binary_scalar(op, a, s, scalar_left=False):
    s = np.float32(s)
    return _new(_binop(op, s, _h(a)) if scalar_left else _binop(op, _h(a), s))


_UNOPS = [np.negative, np.absolute, np.square, lambda a: np.maximum(a, 0),
          lambda a: np.minimum(a, 0), np.sqrt, np.exp, np.log]


def unary(op, a):
    return _new(_UNOPS[op](_h(a)))


def broadcast_to(a, shape):
    return _new(np.broadcast_to(_h(a), tuple(shape)).copy())


def count_nonzero(a):
    return int(np.count_nonzero(_h(a)))


def sum(a):  # noqa: A001 - the real module's name
    return float(_h(a).astype(np.float64).sum())


@contextlib.contextmanager
def active():
    """lrpfast.cuda runs on this emulation inside the block (the previous backend restored)."""
    import sys

    old = cuda.set_backend(sys.modules[__name__])
    reset_stats()
    try:
        yield sys.modules[__name__]
    finally:
        cuda.set_backend(old)

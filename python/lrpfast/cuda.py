"""The CUDA engine's Python side: lazy loading of ``lrpfast._cuda``, a clear error without a GPU,
:class:`DeviceArray` (device memory that numpy ufuncs act on, so :mod:`lrpfast.rules` runs
unchanged on it) and the GPU twins of the operators in :mod:`lrpfast.ops`.

Nothing here is imported by ``import lrpfast``; ``lrpfast._cuda`` (which links cuBLAS) is loaded
at the first use. Layout: C-contiguous float32 (int32 for max-pooling argmax), NCHW.

    from lrpfast import cuda
    cuda.require_gpu()                       # RuntimeError naming the reason when unusable
    x = cuda.to_device(np_array)             # host -> device, once per call
    y = np.maximum(x, 0) * x                 # runs on the GPU (DeviceArray.__array_ufunc__)
    y.to_host()                              # device -> host

Interop: ``DeviceArray.__cuda_array_interface__`` (CuPy, Numba, PyTorch ``torch.as_tensor``) and
:func:`from_cuda` for objects exposing it (no copy).
"""
from __future__ import annotations

import ctypes
import glob
import importlib.util
import os

import numpy as np

ARCHS = "sm_75, sm_80, sm_86, sm_89, sm_90 (+PTX)"
_mod = None


def compiled() -> bool:
    """True when this installation contains ``lrpfast._cuda`` (checked without loading it)."""
    return importlib.util.find_spec("lrpfast._cuda") is not None


def _preload_cublas() -> None:
    """Load libcublas from an installed nvidia-cublas wheel (RTLD_GLOBAL) when the module's RPATH
    does not reach it, e.g. in unusual site layouts."""
    spec = importlib.util.find_spec("nvidia")
    if spec is None or not spec.submodule_search_locations:
        return
    for root in spec.submodule_search_locations:
        for pattern in ("*/lib/libcublasLt.so.*", "*/lib/libcublas.so.*"):
            for lib in sorted(glob.glob(os.path.join(root, pattern))):
                try:
                    ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
                except OSError:
                    pass


def _load():
    global _mod
    if _mod is None:
        if not compiled():
            raise RuntimeError("device='cuda': this lrpfast was built without the CUDA engine "
                               "(no CUDA compiler at build time, or LRPFAST_CUDA=OFF); rebuild "
                               "with nvcc on PATH")
        try:
            from . import _cuda
        except ImportError:
            _preload_cublas()
            try:
                from . import _cuda
            except ImportError as e:
                raise RuntimeError(f"device='cuda': lrpfast._cuda cannot be loaded ({e}); install "
                                   f"cuBLAS with `pip install 'lrpfast[cuda]'` "
                                   f"(nvidia-cublas 13.x)") from None
        _mod = _cuda
    return _mod


def available() -> tuple[bool, str]:
    """(usable, reason when not): compiled, loadable, and a driver reporting >= 1 GPU."""
    try:
        m = _load()
    except RuntimeError as e:
        return False, str(e)
    n, why = m.device_count()
    if n < 1:
        return False, (f"device='cuda': no CUDA driver/GPU found (lrpfast._cuda built for {ARCHS})"
                       f": {why}")
    return True, ""


def require_gpu():
    """Returns the loaded ``_cuda`` module or raises RuntimeError saying why CUDA is unusable."""
    ok, why = available()
    if not ok:
        raise RuntimeError(why)
    return _load()


# ---------------------------------------------------------------- DeviceArray
# BinaryOp / UnaryOp codes of src/cuda/kernels/kernels.hpp
_BIN = {np.add: 0, np.subtract: 1, np.multiply: 2, np.true_divide: 3, np.maximum: 4,
        np.minimum: 5, np.greater: 6, np.less: 7, np.greater_equal: 8, np.less_equal: 9,
        np.equal: 10}
_SWAP = {0: 0, 2: 2, 4: 4, 5: 5, 6: 7, 7: 6, 8: 9, 9: 8, 10: 10}  # op(s, a) == op'(a, s)
_UN = {np.negative: 0, np.absolute: 1, np.square: 2, np.sqrt: 5, np.exp: 6, np.log: 7}


class DeviceArray:
    """A float32 (or int32) C-contiguous array in GPU memory.

    numpy ufuncs add, subtract, multiply, true_divide, maximum, minimum, the comparisons (which
    give float32 0/1 masks rather than bool, so ``R * (x > 0)`` works) and negative/absolute/
    square/sqrt/exp/log run on the device, with numpy broadcasting; scalars stay scalars. Anything
    else raises TypeError instead of silently copying to the host. ``np.asarray(d)`` copies to the
    host explicitly.
    """

    __slots__ = ("_a",)
    __array_priority__ = 100

    def __init__(self, raw):
        self._a = raw

    # -- basics
    shape = property(lambda self: tuple(self._a.shape))
    ndim = property(lambda self: len(self._a.shape))
    size = property(lambda self: int(self._a.size))
    dtype = property(lambda self: self._a.dtype)
    __cuda_array_interface__ = property(lambda self: self._a.__cuda_array_interface__)

    def __len__(self):
        return self.shape[0]

    def __repr__(self):
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype})"

    def to_host(self) -> np.ndarray:
        return self._a.to_host()

    def __array__(self, dtype=None, copy=None):
        a = self._a.to_host()
        return a if dtype is None else a.astype(dtype)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return DeviceArray(self._a.reshape([int(s) for s in shape]))

    def copy(self):
        return DeviceArray(self._a.copy())

    def astype(self, dtype, copy=True):
        if np.dtype(dtype) != np.float32 or self.dtype != np.float32:
            raise TypeError(f"DeviceArray: only float32 is supported on the GPU, asked {dtype}")
        return self.copy() if copy else self

    def any(self) -> bool:
        return bool(_load().count_nonzero(self._a) > 0)

    def sum(self) -> float:
        return float(_load().sum(self._a))

    # -- ufuncs
    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kw):
        m = _load()
        if method != "__call__" or kw:
            return NotImplemented
        if ufunc in _UN and len(inputs) == 1:
            res = DeviceArray(m.unary(_UN[ufunc], inputs[0]._a))
        elif ufunc in _BIN and len(inputs) == 2:
            a, b = inputs
            op = _BIN[ufunc]
            if isinstance(a, DeviceArray) and isinstance(b, DeviceArray):
                res = DeviceArray(m.binary(op, a._a, b._a))
            elif isinstance(a, DeviceArray) and np.ndim(b) == 0:
                res = DeviceArray(m.binary_scalar(op, a._a, float(b), False))
            elif isinstance(b, DeviceArray) and np.ndim(a) == 0:
                res = DeviceArray(m.binary_scalar(op, b._a, float(a), True))
            else:  # a host array operand: copy it once, explicitly
                a = a if isinstance(a, DeviceArray) else to_device(a)
                b = b if isinstance(b, DeviceArray) else to_device(b)
                res = DeviceArray(m.binary(op, a._a, b._a))
        else:
            raise TypeError(f"DeviceArray: numpy.{ufunc.__name__} is not supported on the GPU "
                            f"(supported: {', '.join(sorted(u.__name__ for u in (*_BIN, *_UN)))})")
        if out is not None:  # in-place (a += b): rebind the target's storage
            out[0]._a = res._a
            return out[0]
        return res

    def __add__(self, o): return np.add(self, o)
    def __radd__(self, o): return np.add(o, self)
    def __sub__(self, o): return np.subtract(self, o)
    def __rsub__(self, o): return np.subtract(o, self)
    def __mul__(self, o): return np.multiply(self, o)
    def __rmul__(self, o): return np.multiply(o, self)
    def __truediv__(self, o): return np.true_divide(self, o)
    def __rtruediv__(self, o): return np.true_divide(o, self)
    def __neg__(self): return np.negative(self)
    def __gt__(self, o): return np.greater(self, o)
    def __lt__(self, o): return np.less(self, o)
    def __ge__(self, o): return np.greater_equal(self, o)
    def __le__(self, o): return np.less_equal(self, o)
    def __iadd__(self, o): return np.add(self, o, out=(self,))
    def __isub__(self, o): return np.subtract(self, o, out=(self,))
    def __imul__(self, o): return np.multiply(self, o, out=(self,))


def to_device(a) -> DeviceArray:
    """numpy (or anything np.asarray accepts) -> DeviceArray; ints become float32 except int32."""
    if isinstance(a, DeviceArray):
        return a
    if hasattr(a, "__cuda_array_interface__"):
        return from_cuda(a)
    a = np.asarray(a)
    if a.dtype != np.int32:
        a = np.ascontiguousarray(a, dtype=np.float32)
    return DeviceArray(_load().from_host(a))


def from_cuda(obj) -> DeviceArray:
    """Wrap an object exposing ``__cuda_array_interface__`` (CuPy, PyTorch CUDA tensor via
    ``tensor.__cuda_array_interface__``) without a copy; float32/int32, C-contiguous."""
    return DeviceArray(_load().from_cuda_array_interface(obj))


def broadcast_to(a: DeviceArray, shape) -> DeviceArray:
    return DeviceArray(_load().broadcast_to(a._a, [int(s) for s in shape]))


def stabilized_divide(r, z, eps: float, zero_to_zero: bool = True) -> DeviceArray:
    return DeviceArray(_load().stabilized_divide(r._a, z._a, float(eps), bool(zero_to_zero)))


# ---------------------------------------------------------------- operators (twins of ops.py)
class _CudaOpMixin:
    """Makes an ops.LinearOp run on the GPU: the weight variants are computed on the host once
    (ops.LinearOp.weights caches them), uploaded once and kept on the device."""

    def _dev_init(self):
        self._dw: dict = {}
        self._db: dict = {}

    def dweights(self, kind):
        if kind not in self._dw:
            self._dw[kind] = to_device(self.weights(kind))
        return self._dw[kind]._a

    def dbias(self, kind):
        b = self.bias(kind)
        if b is None:
            return None
        if kind not in self._db:
            self._db[kind] = to_device(b)
        return self._db[kind]._a

    def fwd_count(self, x_shape, kind):
        key = ("dev", tuple(x_shape[1:]), kind)
        if key not in self._count_cache:
            ones = to_device(np.ones((1,) + tuple(x_shape[1:]), np.float32))
            self._count_cache[key] = self.fwd(ones, kind, None)
        return broadcast_to(self._count_cache[key], (x_shape[0],) + self._count_cache[key].shape[1:])


def make_cuda_op(op):
    """The GPU twin of an ops.LinearOp instance (ConvOp, InnerProductOp, DiagOp, AvgPoolOp)."""
    from . import ops

    m = _load()
    if isinstance(op, ops.ConvOp):
        class CudaConvOp(_CudaOpMixin, ops.ConvOp):
            def fwd(self, x, kind="w", bias="b"):
                return DeviceArray(m.conv_forward(x._a, self.dweights(kind), self.dbias(bias),
                                                  self.stride, self.pad, self.dilation, self.group))

            def bwd(self, s, kind="w"):
                return DeviceArray(m.conv_backward_data(s._a, self.dweights(kind), self.in_shape,
                                                        self.stride, self.pad, self.dilation,
                                                        self.group))
        cls = CudaConvOp
    elif isinstance(op, ops.InnerProductOp):
        class CudaInnerProductOp(_CudaOpMixin, ops.InnerProductOp):
            def fwd(self, x, kind="w", bias="b"):
                w = self.weights(kind)
                y = m.linear_forward(x._a.reshape([-1, w.shape[1]]), self.dweights(kind),
                                     self.dbias(bias))
                return DeviceArray(y).reshape((x.shape[0],) + self.lead_shape + (w.shape[0],))

            def bwd(self, s, kind="w"):
                w = self.weights(kind)
                dx = m.linear_backward_data(s._a.reshape([-1, w.shape[0]]), self.dweights(kind))
                return DeviceArray(dx).reshape((s.shape[0],) + self.in_shape)
        cls = CudaInnerProductOp
    elif isinstance(op, ops.DiagOp):
        class CudaDiagOp(_CudaOpMixin, ops.DiagOp):
            def _bc(self, v, ndim):
                return DeviceArray(v).reshape((1, -1) + (1,) * (ndim - 2))

            def fwd(self, x, kind="w", bias="b"):
                y = x * self._bc(self.dweights(kind), x.ndim)
                bb = self.dbias(bias)
                return y if bb is None else y + self._bc(bb, x.ndim)

            def bwd(self, s, kind="w"):
                return s * self._bc(self.dweights(kind), s.ndim)
        cls = CudaDiagOp
    elif isinstance(op, ops.AvgPoolOp):
        class CudaAvgPoolOp(_CudaOpMixin, ops.AvgPoolOp):
            def fwd(self, x, kind="w", bias=None):
                return DeviceArray(m.pool_forward(x._a, "ave", self.kernel, self.stride, self.pad,
                                                  self.ceil_mode)[0])

            def bwd(self, s, kind="w"):
                return DeviceArray(m.pool_backward(s._a, self.in_shape, "ave", self.kernel,
                                                   self.stride, self.pad, None, self.ceil_mode))
        cls = CudaAvgPoolOp
    else:
        raise TypeError(f"no CUDA twin for operator {type(op).__name__}")
    twin = cls.__new__(cls)
    twin.__dict__.update(op.__dict__)
    twin._count_cache = {}
    twin._dev_init()
    return twin

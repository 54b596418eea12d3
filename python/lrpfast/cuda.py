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

Interop (no copies; inputs and outputs may stay on the GPU):

* DLPack both ways: ``DeviceArray.__dlpack__`` / ``__dlpack_device__`` (kDLCUDA = 2), so
  ``torch.from_dlpack(d)``, ``cupy.from_dlpack(d)``, ``jax.dlpack.from_dlpack(d)`` work; and
  :func:`from_dlpack` wraps any object with ``__dlpack__`` (or a raw "dltensor" /
  "dltensor_versioned" capsule): C-contiguous float32 (int32) on the current CUDA device, the
  producer kept alive and its deleter called when the last view is freed.
* ``DeviceArray.__cuda_array_interface__`` (CuPy, Numba, ``torch.as_tensor``) and :func:`from_cuda`
  for objects exposing it.

:func:`to_device` and ``Net(device="cuda")`` accept both kinds of input; an object offering both
(a PyTorch CUDA tensor, CuPy) goes through DLPack, whose stream hand-over orders the producer's
pending work before lrpfast's kernels; an ``__cuda_array_interface__`` import waits for the
producer's ``stream`` (protocol v3). Exported memory is never reused before the work its DLPack
consumer queued on the stream it named has run (an event per consumer stream).

Devices: every DeviceArray knows its device (``.device``); kernels run on their operands' device
(operands on different GPUs raise ValueError); ``Net(device="cuda:1")`` and
``to_device(a, device=1)`` place new arrays; :func:`use_device` sets it for a block. Errors name
the kernel or cuBLAS call and its status; ``LRPFAST_CUDA_SYNC=1`` makes every launch wait, so an
asynchronous fault is reported under the kernel that caused it. cuBLAS runs in
CUBLAS_PEDANTIC_MATH (exact FP32, never TF32) and ``DeviceArray.sum`` is deterministic.

    t = torch.randn(8, 3, 227, 227, device="cuda")
    R = net.relevance(t, -1)                 # a DeviceArray, never copied to the host
    torch.from_dlpack(R)                     # back to PyTorch, same memory
"""
from __future__ import annotations

import contextlib
import ctypes
import glob
import importlib.util
import os
import re

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


_override = None   # a stand-in for lrpfast._cuda (tests: the host emulation), see set_backend


def set_backend(module):
    """Replace ``lrpfast._cuda`` by ``module`` (same Python-visible API), e.g. the host emulation
    of tests/cuda_emulation.py that runs the whole device path on the CPU; ``None`` restores the
    real module. Returns the previous override. Device arrays of one backend must not meet
    another's; the device constant caches are emptied."""
    global _mod, _override
    old = _override
    _override = module
    _mod = module
    _CONSTS.clear()
    return old


def emulated() -> bool:
    """True while a stand-in backend (set_backend) replaces lrpfast._cuda."""
    return _override is not None


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


def parse_device(device) -> int:
    """``"cuda"`` (the calling thread's current device) or ``"cuda:N"`` -> the device index;
    ValueError naming the devices this process has when there is no such device."""
    m = re.fullmatch(r"cuda(?::(\d+))?", str(device))
    if m is None:
        raise ValueError(f"device {device!r} is not a CUDA device (use 'cuda' or 'cuda:N')")
    mod = require_gpu()
    if m.group(1) is None:
        return int(mod.get_device())
    index, n = int(m.group(1)), int(mod.device_count()[0])
    if index >= n:
        raise ValueError(f"device {device!r} does not exist: this process has {n} CUDA "
                         f"device{'s' if n != 1 else ''} (cuda:0 .. cuda:{n - 1})")
    return index


@contextlib.contextmanager
def use_device(index: int):
    """Inside the block, the calling thread's new device arrays (uploads, constants, zeros) go
    to CUDA device ``index``; kernels always run on the device of their operands."""
    m = _load()
    prev = int(m.get_device())
    if prev == index:
        yield
        return
    m.set_device(int(index))
    try:
        yield
    finally:
        m.set_device(prev)


# ---------------------------------------------------------------- DeviceArray
# BinaryOp / UnaryOp codes of src/cuda/kernels/kernels.hpp
_ADD, _SUB, _MUL, _DIV, _MAX, _MIN, _EQ = 0, 1, 2, 3, 4, 5, 10
_BIN = {np.add: 0, np.subtract: 1, np.multiply: 2, np.true_divide: 3, np.maximum: 4,
        np.minimum: 5, np.greater: 6, np.less: 7, np.greater_equal: 8, np.less_equal: 9,
        np.equal: 10,
        # 0/1 float masks (what the comparisons give): logic as arithmetic
        np.logical_and: 2, np.bitwise_and: 2, np.logical_or: 4, np.bitwise_or: 4}
_UN = {np.negative: 0, np.absolute: 1, np.square: 2, np.sqrt: 5, np.exp: 6, np.log: 7}
_CONSTS: dict = {}       # small host constants uploaded once (content-keyed), see _const
_CONST_MAX = 1 << 16     # elements


def _const(a: np.ndarray) -> "DeviceArray":
    """A small host array on the device, uploaded once per content (selection matrices, ZBox
    bounds, seeds masks): constants never cost a transfer twice."""
    a = np.ascontiguousarray(a, dtype=np.int32 if a.dtype == np.int32 else np.float32)
    if a.size > _CONST_MAX:
        return DeviceArray(_load().from_host(a))
    key = (int(_load().get_device()), a.dtype.str, a.shape, a.tobytes())
    d = _CONSTS.get(key)
    if d is None:
        d = _CONSTS[key] = DeviceArray(_load().from_host(a))
    return d


def _prod(s) -> int:
    n = 1
    for d in s:
        n *= int(d)
    return n


class DeviceArray:
    """A float32 (or int32) C-contiguous array in GPU memory.

    numpy ufuncs add, subtract, multiply, true_divide, maximum, minimum, the comparisons (which
    give float32 0/1 masks rather than bool, so ``R * (x > 0)`` works; ``&``, ``|``, ``~`` act on
    such masks) and negative/absolute/square/sqrt/exp/log run on the device, with numpy
    broadcasting; scalars stay scalars. The numpy functions the engine uses (where, concatenate,
    split, zeros_like, ones_like, full_like, broadcast_to, copy, reshape, transpose, sum, max)
    dispatch to device code through ``__array_function__``; anything else raises TypeError
    instead of silently copying to the host. ``np.asarray(d)`` copies to the host explicitly.
    """

    __slots__ = ("_a",)
    __array_priority__ = 100
    _lrpfast_device = True

    def __init__(self, raw):
        self._a = raw

    # -- basics
    shape = property(lambda self: tuple(self._a.shape))
    ndim = property(lambda self: len(self._a.shape))
    size = property(lambda self: int(self._a.size))
    dtype = property(lambda self: self._a.dtype)
    device = property(lambda self: int(self._a.device), doc="The CUDA device index.")
    __cuda_array_interface__ = property(lambda self: self._a.__cuda_array_interface__)
    T = property(lambda self: self.transpose())

    @property
    def _lrpfast_kernels(self):
        """The twin of ``lrpfast._core`` for device arrays (what rules/layers call)."""
        return KERNELS

    def __len__(self):
        return self.shape[0]

    def __repr__(self):
        return f"DeviceArray(shape={self.shape}, dtype={self.dtype})"

    def to_host(self) -> np.ndarray:
        return self._a.to_host()

    def __dlpack__(self, stream=None, *, max_version=None, dl_device=None, copy=None):
        """DLPack export (no copy unless ``copy=True``): see ``lrpfast._cuda.DeviceArray``."""
        return self._a.__dlpack__(stream, max_version=max_version, dl_device=dl_device,
                                  copy=copy)

    def __dlpack_device__(self):
        """(2, device id): kDLCUDA."""
        return self._a.__dlpack_device__()

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

    def sum(self, axis=None, keepdims=False, dtype=None):
        """The sum (a float, in double) or, along one axis, a device array (a GEMM with ones)."""
        if axis is None:
            return float(_load().sum(self._a))
        outer, L, inner, shape = self._axis_split(axis, keepdims)
        ones = _const(np.ones((1, L, 1, 1), np.float32))
        y = _load().conv_forward(self._a.reshape([outer, L, inner, 1]), ones._a, None, 1, 0, 1, 1)
        return DeviceArray(y).reshape(shape)

    def max(self, axis=None, keepdims=False):
        """The maximum along one axis (a max-pooling window spanning it)."""
        if axis is None:
            return self.reshape(1, -1).max(axis=1).to_host().reshape(()).item()
        outer, L, inner, shape = self._axis_split(axis, keepdims)
        y, _ = _load().pool_forward(self._a.reshape([outer, 1, L, inner]), "max", (L, 1), 1, 0,
                                    True)
        return DeviceArray(y).reshape(shape)

    def _axis_split(self, axis, keepdims):
        if not isinstance(axis, (int, np.integer)):
            raise TypeError("DeviceArray: reductions over one axis only")
        s = self.shape
        ax = int(axis) + len(s) if axis < 0 else int(axis)
        out = s[:ax] + ((1,) if keepdims else ()) + s[ax + 1:]
        return _prod(s[:ax]), s[ax], _prod(s[ax + 1:]), out

    def transpose(self, *axes):
        if len(axes) == 1 and isinstance(axes[0], (tuple, list)):
            axes = tuple(axes[0])
        axes = tuple(int(a) % self.ndim for a in axes) or tuple(reversed(range(self.ndim)))
        return _transpose(self, axes)

    def _view(self, offset: int, shape) -> "DeviceArray":
        return DeviceArray(self._a.view(int(offset), [int(d) for d in shape]))

    def __getitem__(self, key):
        """Views along the first axis: ``d[i]`` and ``d[a:b]`` (contiguous, no copy)."""
        n = self.shape[0]
        row = _prod(self.shape[1:])
        if isinstance(key, (int, np.integer)):
            i = int(key) + (n if key < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"index {key} out of range for axis 0 of size {n}")
            return self._view(i * row, self.shape[1:])
        if isinstance(key, slice):
            a, b, st = key.indices(n)
            if st != 1:
                raise TypeError("DeviceArray: only contiguous slices (step 1) of the first axis")
            b = max(a, b)
            return self._view(a * row, (b - a,) + self.shape[1:])
        raise TypeError(f"DeviceArray: indexing supports d[i] and d[a:b] on the first axis, "
                        f"got {key!r}")

    # -- ufuncs
    def __array_ufunc__(self, ufunc, method, *inputs, out=None, **kw):
        m = _load()
        if method != "__call__" or kw:
            return NotImplemented
        if out is not None and not all(isinstance(o, DeviceArray) for o in out):
            raise TypeError(f"DeviceArray: numpy.{ufunc.__name__} cannot write device results "
                            f"into a host array (copy with .to_host() first)")
        if ufunc in _UN and len(inputs) == 1:
            res = DeviceArray(m.unary(_UN[ufunc], inputs[0]._a))
        elif ufunc in (np.logical_not, np.invert) and len(inputs) == 1:  # 0/1 mask -> 1 - mask
            res = DeviceArray(m.binary_scalar(_SUB, inputs[0]._a, 1.0, True))
        elif ufunc is np.not_equal and len(inputs) == 2:
            res = 1.0 - np.equal(*inputs)
        elif ufunc in _BIN and len(inputs) == 2:
            a, b = inputs
            op = _BIN[ufunc]
            if isinstance(a, DeviceArray) and isinstance(b, DeviceArray):
                res = DeviceArray(m.binary(op, a._a, b._a))
            elif isinstance(a, DeviceArray) and np.ndim(b) == 0:
                res = DeviceArray(m.binary_scalar(op, a._a, float(b), False))
            elif isinstance(b, DeviceArray) and np.ndim(a) == 0:
                res = DeviceArray(m.binary_scalar(op, b._a, float(a), True))
            else:  # a host array operand: uploaded once (small constants cached by content)
                with use_device((a if isinstance(a, DeviceArray) else b).device):
                    a = a if isinstance(a, DeviceArray) else _host_operand(a)
                    b = b if isinstance(b, DeviceArray) else _host_operand(b)
                res = DeviceArray(m.binary(op, a._a, b._a))
        else:
            raise TypeError(f"DeviceArray: numpy.{ufunc.__name__} is not supported on the GPU "
                            f"(supported: {', '.join(sorted(u.__name__ for u in (*_BIN, *_UN)))})")
        if out is not None:  # in-place (a += b): rebind the target's storage
            out[0]._a = res._a
            return out[0]
        return res

    def __array_function__(self, func, types, args, kwargs):
        impl = _FUNCS.get(func)
        if impl is None:
            raise TypeError(f"DeviceArray: numpy.{func.__name__} is not supported on the GPU "
                            f"(supported: {', '.join(sorted(f.__name__ for f in _FUNCS))})")
        return impl(*args, **kwargs)

    def __add__(self, o): return np.add(self, o)
    def __radd__(self, o): return np.add(o, self)
    def __sub__(self, o): return np.subtract(self, o)
    def __rsub__(self, o): return np.subtract(o, self)
    def __mul__(self, o): return np.multiply(self, o)
    def __rmul__(self, o): return np.multiply(o, self)
    def __truediv__(self, o): return np.true_divide(self, o)
    def __rtruediv__(self, o): return np.true_divide(o, self)
    def __neg__(self): return np.negative(self)
    def __abs__(self): return np.absolute(self)
    def __gt__(self, o): return np.greater(self, o)
    def __lt__(self, o): return np.less(self, o)
    def __ge__(self, o): return np.greater_equal(self, o)
    def __le__(self, o): return np.less_equal(self, o)
    def __eq__(self, o): return np.equal(self, o)
    def __ne__(self, o): return np.not_equal(self, o)
    def __and__(self, o): return np.multiply(self, o)
    def __rand__(self, o): return np.multiply(o, self)
    def __or__(self, o): return np.maximum(self, o)
    def __ror__(self, o): return np.maximum(o, self)
    def __invert__(self): return np.logical_not(self)
    def __iadd__(self, o): return np.add(self, o, out=(self,))
    def __isub__(self, o): return np.subtract(self, o, out=(self,))
    def __imul__(self, o): return np.multiply(self, o, out=(self,))
    def __itruediv__(self, o): return np.true_divide(self, o, out=(self,))
    def __iand__(self, o): return np.multiply(self, o, out=(self,))
    def __ior__(self, o): return np.maximum(self, o, out=(self,))
    __hash__ = None


def _host_operand(a) -> DeviceArray:
    a = np.asarray(a)
    if a.dtype == bool:
        a = a.astype(np.float32)
    return _const(a)


def _dev(a) -> DeviceArray:
    """A device operand: DeviceArrays as they are, host arrays as (cached) constants."""
    return a if isinstance(a, DeviceArray) else _host_operand(a)


def to_device(a, device=None) -> DeviceArray:
    """numpy (or anything np.asarray accepts) -> DeviceArray (a copy; ints become float32 except
    int32) on ``device`` (an index, "cuda:N", or None: the current device). Device arrays are
    wrapped without a copy: a CUDA DLPack producer or capsule through :func:`from_dlpack`
    (preferred), else ``__cuda_array_interface__`` through :func:`from_cuda`; one on another
    device than a given ``device`` is copied there (through the host)."""
    index = None if device is None else (
        int(device) if isinstance(device, (int, np.integer)) else parse_device(device))
    if isinstance(a, DeviceArray) or _dlpack_on_cuda(a) or _is_capsule(a) \
            or hasattr(a, "__cuda_array_interface__"):
        d = a if isinstance(a, DeviceArray) else (
            from_cuda(a) if not (_dlpack_on_cuda(a) or _is_capsule(a)) else from_dlpack(a))
        if index is None or d.device == index:
            return d
        a = d.to_host()
    a = np.asarray(a)
    if a.dtype != np.int32:
        a = np.ascontiguousarray(a, dtype=np.float32)
    if index is None:
        return DeviceArray(_load().from_host(a))
    with use_device(index):
        return DeviceArray(_load().from_host(a))


def from_cuda(obj) -> DeviceArray:
    """Wrap an object exposing ``__cuda_array_interface__`` (CuPy, PyTorch CUDA tensor via
    ``tensor.__cuda_array_interface__``) without a copy; float32/int32, C-contiguous."""
    return DeviceArray(_load().from_cuda_array_interface(obj))


KDLCUDA = 2  # DLPack's device type of CUDA device memory
_DL_DEVICES = {1: "the CPU", 2: "CUDA", 3: "CUDA host (pinned) memory", 13: "CUDA managed memory"}


def _is_capsule(a) -> bool:
    return type(a).__name__ == "PyCapsule"


def _dlpack_on_cuda(a) -> bool:
    """a speaks DLPack and says its memory is CUDA device memory (numpy arrays and CPU tensors,
    which speak it too, do not)."""
    if not (hasattr(a, "__dlpack__") and hasattr(a, "__dlpack_device__")):
        return False
    try:
        return int(a.__dlpack_device__()[0]) == KDLCUDA
    except Exception:  # noqa: BLE001 - a broken producer is simply not a device array
        return False


def from_dlpack(obj) -> DeviceArray:
    """Wrap a DLPack tensor without a copy: any object with ``__dlpack__`` (PyTorch CUDA tensor,
    CuPy, JAX, a DeviceArray) or a raw "dltensor"/"dltensor_versioned" capsule (consumed).
    The tensor must be C-contiguous float32 (or int32) on a CUDA device, which the result keeps
    (ValueError otherwise); the producer stays alive and its deleter runs once, when the last view of the
    result is freed. The producer is asked for stream 1 (the legacy default stream every lrpfast
    kernel runs on), so its pending work is ordered before ours."""
    if isinstance(obj, DeviceArray):
        return obj
    m = _load()
    if not _is_capsule(obj):
        if not hasattr(obj, "__dlpack__"):
            raise TypeError(f"from_dlpack: {type(obj).__name__} has no __dlpack__")
        if hasattr(obj, "__dlpack_device__"):
            kind = int(obj.__dlpack_device__()[0])
            if kind != KDLCUDA:
                raise ValueError(f"from_dlpack: the tensor is on "
                                 f"{_DL_DEVICES.get(kind, f'DLPack device type {kind}')}, not "
                                 f"on a CUDA device (copy it with cuda.to_device instead)")
        try:
            obj = obj.__dlpack__(stream=1, max_version=(1, 0))
        except TypeError:  # a producer predating DLPack 1.0 (no max_version)
            obj = obj.__dlpack__(stream=1)
    return DeviceArray(m.from_dlpack(obj))


def is_device_array(a) -> bool:
    """A DeviceArray, an object exposing ``__cuda_array_interface__`` (CuPy, PyTorch CUDA) or a
    DLPack producer on a CUDA device."""
    return (isinstance(a, DeviceArray) or hasattr(a, "__cuda_array_interface__")
            or _dlpack_on_cuda(a))


def all_finite(a: DeviceArray) -> bool:
    """No NaN/inf, with one reduction: sum(a * 0) is NaN exactly when one element is not finite."""
    return bool(np.isfinite(_load().sum(np.multiply(a, 0.0)._a)))


def broadcast_to(a: DeviceArray, shape) -> DeviceArray:
    shape = tuple(int(s) for s in (shape if isinstance(shape, (tuple, list)) else (shape,)))
    if not isinstance(a, DeviceArray):
        a = _host_operand(a)
    if a.shape == shape:
        return a
    return DeviceArray(_load().broadcast_to(a._a, list(shape)))


def stabilized_divide(r, z, eps: float, zero_to_zero: bool = True) -> DeviceArray:
    if not isinstance(z, DeviceArray):
        z = _host_operand(z)
    return DeviceArray(_load().stabilized_divide(r._a, z._a, float(eps), bool(zero_to_zero)))


# ---------------------------------------------------------------- numpy functions on the device
def _zeros_like(a, dtype=None, **kw):
    with use_device(a.device):
        return DeviceArray(_load().zeros(list(a.shape)))


def _full_like(a, fill_value, dtype=None, **kw):
    return DeviceArray(_load().binary_scalar(_ADD, _zeros_like(a)._a, float(fill_value), False))


def _ones_like(a, dtype=None, **kw):
    return _full_like(a, 1.0)


def _where(cond, a, b):
    """cond: a 0/1 float mask. cond*a + (1-cond)*b: exact for finite values."""
    if not isinstance(cond, DeviceArray):
        cond = _host_operand(cond)
    first = cond * a
    if np.ndim(b) == 0 and float(b) == 0.0:
        return first if isinstance(first, DeviceArray) else broadcast_to(first, cond.shape)
    res = first + (1.0 - cond) * b
    return res


def _selector(rows: int, cols: int, off_r: int, off_c: int, n: int) -> DeviceArray:
    """(rows, cols, 1, 1) 0/1 matrix with ones at (off_r + i, off_c + i), i < n (a 1x1 conv that
    moves channel blocks: concatenation and its split, exact)."""
    e = np.zeros((rows, cols, 1, 1), np.float32)
    i = np.arange(n)
    e[off_r + i, off_c + i, 0, 0] = 1.0
    return _const(e)


def _norm_axis(axis, nd):
    axis = int(axis)
    if not -nd <= axis < nd:
        raise ValueError(f"axis {axis} out of range for {nd} dimensions")
    return axis + nd if axis < 0 else axis


def _concatenate(arrays, axis=0, out=None, **kw):
    arrays = [a if isinstance(a, DeviceArray) else to_device(a) for a in arrays]
    if len(arrays) == 1:
        return arrays[0].copy()
    s0 = arrays[0].shape
    ax = _norm_axis(axis, len(s0))
    outer, inner = _prod(s0[:ax]), _prod(s0[ax + 1:])
    lens = [a.shape[ax] for a in arrays]
    L = sum(lens)
    m = _load()
    y, off = None, 0
    for a, lk in zip(arrays, lens):
        if a.shape[:ax] != s0[:ax] or a.shape[ax + 1:] != s0[ax + 1:]:
            raise ValueError(f"concatenate: shapes {[x.shape for x in arrays]} differ outside "
                             f"axis {ax}")
        part = DeviceArray(m.conv_forward(a._a.reshape([outer, lk, inner, 1]),
                                          _selector(L, lk, off, 0, lk)._a, None, 1, 0, 1, 1))
        y = part if y is None else y + part
        off += lk
    return y.reshape(s0[:ax] + (L,) + s0[ax + 1:])


def _split(a, indices_or_sections, axis=0):
    s = a.shape
    ax = _norm_axis(axis, len(s))
    L = s[ax]
    if isinstance(indices_or_sections, (int, np.integer)):
        k = int(indices_or_sections)
        if L % k:
            raise ValueError("array split does not result in an equal division")
        cuts = [L // k * i for i in range(1, k)]
    else:
        cuts = [int(c) for c in indices_or_sections]
    bounds = [0] + cuts + [L]
    outer, inner = _prod(s[:ax]), _prod(s[ax + 1:])
    m = _load()
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        lk = max(hi - lo, 0)
        shape = s[:ax] + (lk,) + s[ax + 1:]
        if ax == 0:
            out.append(a[lo:hi].copy())
        else:
            y = m.conv_forward(a._a.reshape([outer, L, inner, 1]), _selector(lk, L, 0, lo, lk)._a,
                               None, 1, 0, 1, 1)
            out.append(DeviceArray(y).reshape(shape))
    return out


def _swap(x: DeviceArray, outer: int, A: int, B: int, inner: int) -> DeviceArray:
    """(outer, A, B, inner) -> (outer, B, A, inner), exactly, as one grouped transposed 1x1
    convolution: x is the weight (outer*A, B, 1, inner), an identity (1, outer*A, A, 1) the
    output gradient, so dx[g, b, a, i] = x[g, a, b, i]."""
    eye = _const(np.eye(A, dtype=np.float32))
    dy = broadcast_to(eye.reshape(1, A, A), (outer, A, A)).reshape(1, outer * A, A, 1)
    dx = _load().conv_backward_data(dy._a, x._a.reshape([outer * A, B, 1, inner]),
                                    (outer * B, A, inner), (1, inner), 0, 1, outer)
    return DeviceArray(dx).reshape(outer, B, A, inner)


def _transpose(a: DeviceArray, order) -> DeviceArray:
    """Any axis permutation as at most ndim-1 block swaps (each an exact GEMM)."""
    order = [int(o) for o in order]
    if sorted(order) != list(range(a.ndim)):
        raise ValueError(f"axes {order} are not a permutation of {a.ndim} axes")
    shape, cur, x = list(a.shape), list(range(a.ndim)), a
    for i, want in enumerate(order):
        j = cur.index(want)
        if j > i:
            A, B = _prod(shape[i:j]), shape[j]
            if A > 1 and B > 1:
                x = _swap(x, _prod(shape[:i]), A, B, _prod(shape[j + 1:]))
            cur = cur[:i] + [cur[j]] + cur[i:j] + cur[j + 1:]
            shape = shape[:i] + [shape[j]] + shape[i:j] + shape[j + 1:]
    return x.reshape(shape)


def _np_transpose(a, axes=None):
    return a.transpose() if axes is None else a.transpose(axes)


def _ascontiguous(a, dtype=None, **kw):
    return a


_FUNCS = {
    np.where: _where, np.concatenate: _concatenate, np.split: _split,
    np.zeros_like: _zeros_like, np.ones_like: _ones_like, np.full_like: _full_like,
    np.broadcast_to: lambda a, shape, subok=False: broadcast_to(a, shape),
    np.copy: lambda a, *args, **kw: a.copy(),
    np.reshape: lambda a, shape=None, *args, **kw: a.reshape(shape),
    np.transpose: _np_transpose,
    np.sum: lambda a, axis=None, dtype=None, out=None, keepdims=False, **kw:
        a.sum(axis=axis, keepdims=keepdims),
    np.max: lambda a, axis=None, out=None, keepdims=False, **kw: a.max(axis=axis,
                                                                       keepdims=keepdims),
    np.amax: lambda a, axis=None, out=None, keepdims=False, **kw: a.max(axis=axis,
                                                                        keepdims=keepdims),
    np.any: lambda a, *args, **kw: a.any(),
    np.ndim: lambda a: a.ndim, np.shape: lambda a: a.shape, np.size: lambda a, axis=None:
        a.size if axis is None else a.shape[axis],
}


# ---------------------------------------------------------------- the _core twin for devices
class _Kernels:
    """What :mod:`lrpfast.layers` and :mod:`lrpfast.rules` call on ``_core``, for DeviceArrays
    (same names and arguments); ``DeviceArray._lrpfast_kernels`` returns this."""

    @staticmethod
    def stabilized_divide(r, z, eps, zero_to_zero=True):
        return stabilized_divide(r, z, eps, zero_to_zero)

    @staticmethod
    def relu_forward(x, negative_slope=0.0):
        return DeviceArray(_load().relu_forward(_dev(x)._a, float(negative_slope)))

    @staticmethod
    def alphabeta_signal(r, z, zp, alpha, beta, groups=1):
        """_core.alphabeta_signal from the device primitives: (N, C, ...) -> (N, 2C, ...),
        per group [alpha*r/zp ; -beta*r/(z-zp)], a zero denominator giving 0."""
        sp = stabilized_divide(r, zp, 0.0, True) * float(alpha)
        sn = stabilized_divide(r, z - zp, 0.0, True) * float(-beta)
        n, c = r.shape[0], r.shape[1]
        split = (n, int(groups), 1, (c // int(groups)) * _prod(r.shape[2:]))
        out = np.concatenate([sp.reshape(split), sn.reshape(split)], axis=2)
        return out.reshape((n, 2 * c) + tuple(r.shape[2:]))

    @staticmethod
    def eltwise_forward(xs, operation, coeffs=None):
        """Caffe's Eltwise ("sum" with coeffs, "prod", "max"): K device arrays of one shape ->
        (y, argmax), argmax (int32, shape of y: the first input holding the maximum) for "max",
        else None. Bit-identical to _core.eltwise_forward."""
        y, am = _load().eltwise_forward([_dev(x)._a for x in xs], operation,
                                        None if coeffs is None else [float(c) for c in coeffs])
        return DeviceArray(y), (None if am is None else DeviceArray(am))

    @staticmethod
    def eltwise_sum_relevance(xs, r, y, coeffs=None, eps=0.0):
        """_core.eltwise_sum_relevance from the device primitives: [coeffs[k] * xs[k] *
        stabilized_divide(r, y, eps)], in that float32 order."""
        s = stabilized_divide(r, y, eps, True)
        cs = [1.0] * len(xs) if coeffs is None else coeffs
        return [np.float32(c) * x * s for c, x in zip(cs, xs)]

    @staticmethod
    def channel_affine(x, scale, bias=None):
        """x (N, C, ...), scale (C,), bias (C,) or None -> x * scale[c] + bias[c] (the forward
        of BatchNorm/Scale); host scale/bias are uploaded once (content-keyed)."""
        return DeviceArray(_load().channel_affine(_dev(x)._a, _dev(scale)._a,
                                                  None if bias is None else _dev(bias)._a))

    @staticmethod
    def pool_forward(x, method, kernel, stride=1, pad=0, ceil_mode=True):
        y, am = _load().pool_forward(x._a, method, kernel, stride, pad, ceil_mode)
        return DeviceArray(y), (None if am is None else DeviceArray(am))

    @staticmethod
    def pool_backward(dy, in_shape, method, kernel, stride=1, pad=0, argmax=None,
                      ceil_mode=None):
        am = argmax._a if isinstance(argmax, DeviceArray) else None
        return DeviceArray(_load().pool_backward(dy._a, tuple(in_shape), method, kernel, stride,
                                                 pad, am, ceil_mode))

    @staticmethod
    def lrn_forward(x, local_size, alpha, beta, k=1.0, region="across"):
        y, scale = _load().lrn_forward(x._a, local_size, alpha, beta, k, region)
        return DeviceArray(y), DeviceArray(scale)

    @staticmethod
    def normalize_forward(x, across_spatial, eps, scale):
        """SSD's Normalize in float32: x / sqrt(sum x^2 + eps) * scale (per pixel across
        channels, or over the whole sample); the sums are GEMMs with ones."""
        N, C, H, W = x.shape
        sq = x * x
        if across_spatial:
            s = sq.reshape(N, 1, C * H * W).sum(axis=2, keepdims=True).reshape(N, 1, 1, 1)
        else:
            s = sq.sum(axis=1, keepdims=True)
        y = x / np.sqrt(s + float(eps))
        scale = np.asarray(scale, np.float32)
        if scale.size == 1:
            return y * float(scale.reshape(-1)[0])
        return y * _const(scale.reshape(1, -1, 1, 1))


KERNELS = _Kernels()


# ---------------------------------------------------------------- operators (twins of ops.py)
class _CudaOpMixin:
    """Makes an ops.LinearOp run on the GPU: the weight variants are computed on the host once
    (ops.LinearOp.weights caches them), uploaded once and kept on the device."""

    def bwd_signal(self, R, kind="w", **fused):
        """The unfused sequence of device kernels (ConvOp's override calls the CPU engine)."""
        from . import ops
        return ops.LinearOp.bwd_signal(self, R, kind, **fused)

    def bwd_flat(self, R, x_shape):
        """The generic order on the device (ConvOp's override calls the CPU engine)."""
        from . import ops
        return ops.LinearOp.bwd_flat(self, R, x_shape)

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

            def pairs_zplus(self, x):
                return True   # no Winograd on the device: the pair always shares its im2col

            def fwd_zplus(self, x):
                """ops.ConvOp.fwd_zplus's twin: one im2col for z and z+."""
                y, yp = m.conv_forward_pair(x._a, self.dweights("wpos"), self.dbias("wpos"),
                                            self.stride, self.pad, self.dilation, self.group)
                return DeviceArray(y), DeviceArray(yp)

            def bwd(self, s, kind="w"):
                return DeviceArray(m.conv_backward_data(s._a, self.dweights(kind), self.in_shape,
                                                        self.stride, self.pad, self.dilation,
                                                        self.group))

            def bwd_signal(self, R, kind="w", *, z=None, eps=0.0, times=None):
                """ops.ConvOp.bwd_signal's twin: the same fused call on the device."""
                if kind == "ones":
                    return ops.LinearOp.bwd_signal(self, R, kind, z=z, eps=eps, times=times)
                return DeviceArray(m.conv_backward_data(
                    R._a, self.dweights(kind), self.in_shape, self.stride, self.pad,
                    self.dilation, self.group, z=None if z is None else _dev(z)._a,
                    eps=float(eps), times=None if times is None else _dev(times)._a))
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
            def fwd(self, x, kind="w", bias="b"):
                return DeviceArray(m.channel_affine(_dev(x)._a, self.dweights(kind),
                                                    self.dbias(bias)))

            def bwd(self, s, kind="w"):
                return DeviceArray(m.channel_affine(_dev(s)._a, self.dweights(kind), None))
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

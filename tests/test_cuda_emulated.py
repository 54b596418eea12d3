"""The whole device path of the CUDA engine, run on the CPU: lrpfast._cuda is replaced by the
host emulation of tests/cuda_emulation.py (same Python-visible API over numpy/_core), so
DeviceArray dispatch, the GPU operators, Net(device="cuda") (weights uploaded once, inputs copied
in at entry and results out at exit, device-array inputs and outputs) and the up-front errors
are tested without a GPU, against the CPU engine on the rule x layer grid and whole networks.
The real-GPU twin of these tests is tests/test_cuda_gpu.py."""
from __future__ import annotations

import ctypes

import numpy as np
import pytest

import cuda_cases as cc
import cuda_emulation
import lrpfast
import nets
from conftest import seeded_rng
from lrpfast import cuda, rules as R


@pytest.fixture
def emu():
    with cuda_emulation.active() as m:
        yield m


@pytest.mark.parametrize("rule_id,case_id,N", [pytest.param(*g, id="-".join(map(str, g)))
                                               for g in cc.GRID])
def test_grid_emulated(emu, rule_id, case_id, N):
    got, want = cc.grid_case(rule_id, case_id, N)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    assert cc.nmse(got, want) <= cc.tol(rule_id)


RULES_WHOLE = ["epsilon", R.Zero(), R.AlphaBeta(2, 1), R.Flat(), R.WSquare(), R.Gamma(0.25),
               R.Gradient(), R.Deconvnet(), R.GuidedBackprop(), "cmp_alpha2_flat", "preset_a"]


@pytest.mark.parametrize("rules", RULES_WHOLE, ids=repr)
def test_whole_network(emu, rules):
    rng = seeded_rng("cuda-emu", "whole", repr(rules))
    tn = cc.vgg_like(3, rng)
    x = nets.random_input((3, 3, 12, 12), rng)
    cpu = lrpfast.Net.from_text(tn.text, tn.weights)
    dev = lrpfast.Net.from_text(tn.text, tn.weights, device="cuda")
    sets = [-1, [[0, 3]] * 3, -2, [4, 0, 6]]
    want = cpu.relevance_multi(x, sets, rules)
    got = dev.relevance_multi(x, sets, rules)
    assert isinstance(got, np.ndarray) and got.shape == want.shape
    assert cc.nmse(got, want) <= cc.NMSE_TOL
    readout = ["cat", "p1", "data"]
    want = cpu.relevance(x, 2, rules, readout=readout)
    got = dev.relevance(x, 2, rules, readout=readout)
    for k in readout:
        assert cc.nmse(got[k], want[k]) <= cc.NMSE_TOL, k


def test_whole_network_forward_blobs(emu):
    rng = seeded_rng("cuda-emu", "fwd")
    tn = cc.vgg_like(2, rng)
    x = nets.random_input((2, 3, 12, 12), rng)
    cpu = lrpfast.Net.from_text(tn.text, tn.weights)
    dev = lrpfast.Net.from_text(tn.text, tn.weights, device="cuda")
    assert cc.nmse(dev.forward(x), cpu.forward(x)) <= cc.NMSE_TOL      # Softmax output
    names = ["c1", "cat", "res", "p3", "fc"]
    want, got = cpu.forward(x, blobs=names), dev.forward(x, blobs=names)
    for k in names:
        assert isinstance(got[k], np.ndarray)
        assert cc.nmse(got[k], want[k]) <= cc.NMSE_TOL, k
    # the inference pass (each activation freed after its last reader) on the device too
    lean = dev.forward(x, blobs=names, keep=False)
    for k in names:
        np.testing.assert_array_equal(lean[k], got[k], err_msg=k)


@pytest.mark.parametrize("across", [False, True])
def test_permute_normalize_softmax(emu, across):
    cc.check_ssdlike(across, seeded_rng("cuda-emu", "ssd", across),
                     ("epsilon", R.Gradient(), R.AlphaBeta(1, 0)))


def test_eltwise_max_prod_and_chunks(emu):
    rng = seeded_rng("cuda-emu", "eltwise")
    layers = [nets.conv("a", "data", 4, kernel=3, pad=1), nets.conv("b", "data", 4, kernel=1),
              nets.eltwise("m", ["a", "b"], "MAX"), nets.conv("c", "data", 4, kernel=1),
              nets.eltwise("p", ["m", "c"], "PROD"), nets.ip("fc", "p", 5)]
    tn = nets.build(layers, (5, 3, 5, 6), rng)
    x = nets.random_input((5, 3, 5, 6), rng)
    cpu = lrpfast.Net.from_text(tn.text, tn.weights)
    per_sample = cpu._bytes_per_sample()
    dev = lrpfast.Net.from_text(tn.text, tn.weights, device="cuda",
                                memory_limit=2 * per_sample)     # 3 chunks: 2 + 2 + 1
    assert len(dev._chunks(5)) == 3
    for rules in (R.Gradient(), R.GuidedBackprop()):
        want = cpu.relevance_multi(x, [-1, 4], rules, readout=["data", "m"])
        got = dev.relevance_multi(x, [-1, 4], rules, readout=["data", "m"])
        for k in want:
            assert cc.nmse(got[k], want[k]) <= cc.NMSE_TOL, k
    assert cc.nmse(dev.forward(x), cpu.forward(x)) <= cc.NMSE_TOL
    with pytest.raises(ValueError, match="PROD"):
        dev.relevance(x, 0, "epsilon")


def test_upload_once_and_copies_at_entry_exit(emu):
    rng = seeded_rng("cuda-emu", "copies")
    tn = cc.vgg_like(2, rng)
    x = nets.random_input((2, 3, 12, 12), rng)
    dev = lrpfast.Net.from_text(tn.text, tn.weights, device="cuda")
    dev.relevance(x, 1, R.AlphaBeta(2, 1))                    # warm: weights + variants uploaded
    cuda_emulation.reset_stats()
    out = dev.relevance(x, 1, R.AlphaBeta(2, 1))
    assert emu.stats["h2d"] == 1 and emu.stats["h2d_bytes"] == x.nbytes   # the input only
    assert emu.stats["d2h"] == 1 and emu.stats["d2h_bytes"] == out.nbytes  # the result only
    cuda_emulation.reset_stats()
    dev.relevance(x, -1, R.AlphaBeta(2, 1))      # top-1 needs the logits: one small download
    assert emu.stats["h2d"] <= 2 and emu.stats["d2h"] == 2
    assert emu.stats["d2h_bytes"] == x.nbytes + 2 * 7 * 4


class FakeCudaTensor:
    """Stands for a CuPy array / PyTorch CUDA tensor: only __cuda_array_interface__."""

    def __init__(self, dev):
        self._d = dev
        self.__cuda_array_interface__ = dev.__cuda_array_interface__


def _warm_pair(tag):
    """A small VGG-like net on the CPU and on the (emulated) device, its input on the host and
    on the device, the CPU's epsilon map, after one device call (the weights are uploaded once)
    and with the transfer counters reset."""
    rng = seeded_rng("cuda-emu", tag)
    tn = cc.vgg_like(2, rng)
    x = nets.random_input((2, 3, 12, 12), rng)
    cpu = lrpfast.Net.from_text(tn.text, tn.weights)
    dev = lrpfast.Net.from_text(tn.text, tn.weights, device="cuda")
    want = cpu.relevance(x, 3, "epsilon")
    xd = cuda.to_device(x)
    dev.relevance(xd, 3, "epsilon")
    cuda_emulation.reset_stats()
    return x, xd, cpu, dev, want


def test_device_inputs_give_device_outputs(emu):
    x, xd, cpu, dev, want = _warm_pair("devio")
    got = dev.relevance(FakeCudaTensor(xd), 3, "epsilon")
    assert isinstance(got, cuda.DeviceArray) and got.shape == want.shape
    assert emu.stats["h2d_bytes"] == 0 and emu.stats["d2h"] == 0     # nothing crossed
    assert cc.nmse(got, want) <= cc.NMSE_TOL
    assert isinstance(dev.forward(xd), cuda.DeviceArray)
    Rt = cpu.forward(x, blobs=["fc"])["fc"]
    got = dev.propagate(xd, cuda.to_device(Rt), top="fc")
    assert isinstance(got, cuda.DeviceArray)
    assert cc.nmse(got, cpu.propagate(x, Rt, top="fc")) <= cc.NMSE_TOL
    # interop the other way: the result's __cuda_array_interface__ wraps without a copy
    back = cuda.from_cuda(FakeCudaTensor(got))
    np.testing.assert_array_equal(back.to_host(), got.to_host())
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        dev.relevance(cuda.to_device(bad), 0)
    with pytest.raises(ValueError, match="expects shape"):
        dev.forward(cuda.to_device(x[:, :2]))


def test_unsupported_raises_before_work(emu):
    rng = seeded_rng("cuda-emu", "unsupported")
    tn = cc.vgg_like(1, rng)
    x = nets.random_input((1, 3, 12, 12), rng)
    dev = lrpfast.Net.from_text(tn.text, tn.weights, device="cuda")
    from lrpfast.compat import RelPropOpts
    opts = RelPropOpts()                          # caffe mode: the toolbox's pooling / LRN
    assert opts.to_composite().caffe is not None
    cuda_emulation.reset_stats()
    with pytest.raises(ValueError, match="caffe-mode.*CPU engine only"):
        dev.relevance(x, 0, opts)
    assert emu.stats["h2d"] <= 1 and emu.stats["allocs"] <= 1   # at most the input was copied
    dev.forward(x)
    with pytest.raises(NotImplementedError, match="CPU engine only"):
        dev.backward_relevance(0)


@pytest.mark.filterwarnings("ignore:invalid value")
def test_device_array_numpy_surface(emu):
    rng = seeded_rng("cuda-emu", "surface")
    a = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    b = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    da, db = cuda.to_device(a), cuda.to_device(b)
    np.testing.assert_array_equal(np.where(da > 0, da, 0.5 * da).to_host(),
                                  np.where(a > 0, a, np.float32(0.5) * a))
    np.testing.assert_array_equal(((da > 0) & ~(db > 0)).to_host(), ((a > 0) & ~(b > 0)))
    np.testing.assert_array_equal(((da > 0) | (db > 0)).to_host(), ((a > 0) | (b > 0)))
    for ax in (1, 2, 3):
        np.testing.assert_array_equal(np.concatenate([da, db], axis=ax).to_host(),
                                      np.concatenate([a, b], axis=ax))
        parts = np.split(np.concatenate([da, db], axis=ax), [a.shape[ax]], axis=ax)
        np.testing.assert_array_equal(parts[1].to_host(), b)
    for order in ([0, 2, 3, 1], [0, 3, 2, 1], [3, 1, 0, 2], [1, 0, 2, 3]):
        np.testing.assert_array_equal(da.transpose(order).to_host(), a.transpose(order))
    np.testing.assert_allclose(da.max(axis=2, keepdims=True).to_host(),
                               a.max(axis=2, keepdims=True))
    np.testing.assert_allclose(da.sum(axis=1, keepdims=True).to_host(),
                               a.sum(axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(da[1].to_host(), a[1])
    np.testing.assert_array_equal(da[0:1].to_host(), a[0:1])
    np.testing.assert_array_equal(np.zeros_like(da).to_host(), np.zeros_like(a))
    np.testing.assert_array_equal(np.full_like(da, 2.5).to_host(), np.full_like(a, 2.5))
    y = da.copy()
    np.maximum(y, db, out=y)
    np.testing.assert_array_equal(y.to_host(), np.maximum(a, b))
    assert cuda.all_finite(da) and not cuda.all_finite(cuda.to_device(np.where(a > 0, np.inf, a)))
    with pytest.raises(TypeError, match="not supported on the GPU"):
        np.sort(da)
    with pytest.raises(TypeError, match="host array"):
        h = np.zeros_like(a)
        h += da


def test_no_gpu_without_emulation():
    """Without the emulation this machine (no driver) must refuse device='cuda' clearly."""
    ok, why = cuda.available()
    if ok:
        pytest.skip("a GPU is present")
    rng = seeded_rng("cuda-emu", "nogpu")
    tn = cc.vgg_like(1, rng)
    with pytest.raises((RuntimeError, ValueError), match="cuda"):
        lrpfast.Net.from_text(tn.text, tn.weights, device="cuda")


# ---- Eltwise and BatchNorm/Scale kernels: the device twins against _core ----------------------
@pytest.mark.parametrize("op", ["sum", "prod", "max"])
def test_eltwise_affine_kernels(emu, op):
    from lrpfast import ops
    from lrpfast._loader import _core

    rng = seeded_rng("cuda-emu", "eltwise-kernel", op)
    for k in (1, 2, 3, 4):
        xs = [rng.normal(size=(2, 3, 5, 7)).astype(np.float32) for _ in range(k)]
        coeffs = rng.uniform(-2, 2, k).tolist() if op == "sum" else None
        y, am = _core.eltwise_forward(xs, op, coeffs)
        gy, gam = R.kernels(cuda.to_device(xs[0])).eltwise_forward(
            [cuda.to_device(x) for x in xs], op, coeffs)
        np.testing.assert_array_equal(gy.to_host(), y)
        if op == "max":
            np.testing.assert_array_equal(gam.to_host(), am)
        else:
            assert gam is None
    x = rng.normal(size=(3, 4, 5)).astype(np.float32)
    s, b = rng.normal(size=4).astype(np.float32), rng.normal(size=4).astype(np.float32)
    op_ = ops.DiagOp(s, b, (4, 5))
    twin = cuda.make_cuda_op(op_)
    for kind, bias in (("w", "b"), ("pos", "pos"), ("sq", None)):
        np.testing.assert_array_equal(twin.fwd(cuda.to_device(x), kind, bias).to_host(),
                                      op_.fwd(x, kind, bias))
    np.testing.assert_array_equal(twin.bwd(cuda.to_device(x), "neg").to_host(), op_.bwd(x, "neg"))
    np.testing.assert_array_equal(cuda.KERNELS.channel_affine(cuda.to_device(x), s, b).to_host(),
                                  _core.channel_affine(x, s, b))
    with pytest.raises(ValueError, match="scale must have shape"):
        cuda.KERNELS.channel_affine(cuda.to_device(x), s[:3])


@pytest.mark.parametrize("slope", [0.0, 0.1])
def test_relu_and_fused_conv_backward_twins(emu, slope):
    """The device's relu_forward and fused conv_backward_data (CudaConvOp.bwd_signal) take the
    CPU engine's arguments and give its results."""
    from lrpfast import ops
    from lrpfast._loader import _core
    rng = seeded_rng("cuda-emu", "fused", slope)
    x = rng.normal(size=(2, 4, 7, 6)).astype(np.float32)
    np.testing.assert_array_equal(cuda.KERNELS.relu_forward(cuda.to_device(x), slope).to_host(),
                                  _core.relu_forward(x, slope))
    w = rng.normal(size=(6, 4, 3, 3)).astype(np.float32)
    op_ = ops.ConvOp(w, None, (4, 7, 6), (1, 1), (1, 1), (1, 1), 1)
    twin = cuda.make_cuda_op(op_)
    z = op_.fwd(x, "w", None)
    R = rng.normal(size=z.shape).astype(np.float32)
    for kind in ("w", "pos", "ones"):
        got = twin.bwd_signal(cuda.to_device(R), kind, z=cuda.to_device(z), eps=1e-3,
                              times=cuda.to_device(x))
        np.testing.assert_array_equal(got.to_host(),
                                      op_.bwd_signal(R, kind, z=z, eps=1e-3, times=x))
    with pytest.raises(ValueError, match="times must have the shape of dx"):
        twin.bwd_signal(cuda.to_device(R), "w", times=cuda.to_device(x[:1]))
    xp = np.abs(x)   # fwd_zplus (conv_forward_pair twin): z and z+ of the CPU operator
    op_b = ops.ConvOp(w[:, :2], rng.normal(size=6).astype(np.float32), (4, 7, 6), (1, 1),
                      (1, 1), (1, 1), 2)
    z, zp = cuda.make_cuda_op(op_b).fwd_zplus(cuda.to_device(xp))
    cz, czp = op_b.fwd_zplus(xp)   # its CPU twin (the stacked gemm; separate calls may round
    np.testing.assert_array_equal(z.to_host(), cz)    # otherwise outside deterministic mode)
    np.testing.assert_array_equal(zp.to_host(), czp)


# ---- DLPack ------------------------------------------------------------------------------------
# An independent ctypes rendering of the DLPack ABI (from the spec, not from lrpfast's header),
# for producers the tests control: odd dtypes, devices, strides, versions and a counted deleter.
class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


_DELETER = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class _DLManaged(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p),
                ("deleter", _DELETER)]


class _DLManagedVersioned(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32),
                ("manager_ctx", ctypes.c_void_p), ("deleter", _DELETER),
                ("flags", ctypes.c_uint64), ("dl_tensor", _DLTensor)]


_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
_capsule_name = ctypes.pythonapi.PyCapsule_GetName
_capsule_name.restype = ctypes.c_char_p
_capsule_name.argtypes = [ctypes.py_object]


def capsule_name(cap) -> str:
    return _capsule_name(cap).decode()


class Producer:
    """A DLPack producer over a host numpy array claiming to live on `device`; counts the calls of
    its deleter. Its capsule has no destructor (the test owns the memory)."""

    def __init__(self, arr, device=(2, 0), dtype=(2, 32, 1), strides=None, offset=0, shift=0,
                 version=None, flags=0):
        self.arr, self.deleted = arr, 0
        self._shape = (ctypes.c_int64 * max(arr.ndim, 1))(*arr.shape)
        self._strides = None if strides is None else (ctypes.c_int64 * arr.ndim)(*strides)
        self._del = _DELETER(self._delete)
        self.m = _DLManagedVersioned() if version else _DLManaged()
        if version:
            self.m.major, self.m.minor = version
            self.m.flags = flags
        t = self.m.dl_tensor
        t.data = arr.ctypes.data - offset + shift
        t.byte_offset = offset
        t.device = _DLDevice(*device)
        t.ndim = arr.ndim
        t.dtype = _DLDataType(*dtype)
        t.shape = self._shape
        if self._strides is not None:
            t.strides = self._strides
        self.m.deleter = self._del
        self.name = b"dltensor_versioned" if version else b"dltensor"
        self.capsule = _capsule_new(ctypes.addressof(self.m), self.name, None)

    def _delete(self, ptr):
        assert ptr == ctypes.addressof(self.m)
        self.deleted += 1


class DLPackOnly:
    """Stands for a PyTorch CUDA tensor / CuPy array seen through DLPack only."""

    def __init__(self, obj):
        self._o = obj

    def __dlpack__(self, stream=None, **kw):
        return self._o.__dlpack__(stream, **kw)

    def __dlpack_device__(self):
        return self._o.__dlpack_device__()


@pytest.fixture
def dlp(emu):
    try:
        return cuda_emulation.dlpack_impl()
    except RuntimeError as e:
        pytest.skip(str(e))


def _ptr(d):
    return d.__cuda_array_interface__["data"][0]


def test_dlpack_roundtrip(dlp):
    rng = seeded_rng("cuda-emu", "dlpack")
    x = rng.normal(size=(2, 3, 4)).astype(np.float32)
    xd = cuda.to_device(x)
    assert xd.__dlpack_device__() == (2, 0)
    for versioned in (False, True):
        cap = xd.__dlpack__(max_version=(1, 0)) if versioned else xd.__dlpack__(stream=1)
        name = "dltensor_versioned" if versioned else "dltensor"
        assert capsule_name(cap) == name
        back = cuda.from_dlpack(cap)                 # no copy: the same memory
        assert capsule_name(cap) == "used_" + name
        assert _ptr(back) == _ptr(xd) and back.shape == x.shape
        np.testing.assert_array_equal(back.to_host(), x)
        with pytest.raises(ValueError, match="already consumed"):
            cuda.from_dlpack(cap)
    back = cuda.from_dlpack(DLPackOnly(xd))          # any object with __dlpack__
    assert _ptr(back) == _ptr(xd)
    cp = cuda.from_dlpack(xd.__dlpack__(copy=True))  # copy=True exports a copy
    assert _ptr(cp) != _ptr(xd)
    np.testing.assert_array_equal(cp.to_host(), x)
    am = cuda.from_dlpack(cuda.to_device(np.arange(6, dtype=np.int32)).__dlpack__())
    assert am.dtype == np.int32                      # int32 (argmax) is allowed
    with pytest.raises(ValueError, match="stream 0"):
        xd.__dlpack__(stream=0)
    with pytest.raises(BufferError):
        xd.__dlpack__(dl_device=(1, 0))
    # numpy arrays (and CPU tensors) speak DLPack too but are host data: copied, not wrapped
    assert not cuda.is_device_array(x) and cuda.is_device_array(DLPackOnly(xd))
    with pytest.raises(ValueError, match="the CPU"):
        cuda.from_dlpack(x)
    torch = pytest.importorskip("torch")
    with pytest.raises(ValueError, match="the CPU"):
        cuda.from_dlpack(torch.zeros(3))


def test_dlpack_deleter_once_and_checks(dlp):
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    for version in (None, (1, 0), (1, 3)):
        p = Producer(x, version=version)
        d = cuda.from_dlpack(p.capsule)
        assert capsule_name(p.capsule) == "used_" + p.name.decode()
        view = d.reshape(6, 4)
        np.testing.assert_array_equal(view.to_host(), x.reshape(6, 4))
        del d, p.capsule
        assert p.deleted == 0                        # a view still uses the memory
        del view
        assert p.deleted == 1                        # the last view: exactly once
    # strides that are C-contiguous (size-1 axes may have any stride) and a byte offset are fine
    y = np.ascontiguousarray(x[:, :1])
    p2 = Producer(y, strides=(4, 7, 1), offset=4)
    np.testing.assert_array_equal(cuda.from_dlpack(p2.capsule).to_host(), y)
    # unusable tensors: ValueError naming the problem, the capsule left unconsumed (its own
    # destructor then releases it) and the deleter not called
    bad = [({"device": (1, 0)}, "on CPU, expected CUDA"),
           ({"device": (13, 0)}, "CUDA managed"),
           ({"device": (2, 1)}, "device 1 but lrpfast runs on device 0"),
           ({"dtype": (2, 64, 1)}, "float32.*got float64"),
           ({"dtype": (4, 16, 1)}, "got bfloat16"),
           ({"dtype": (2, 32, 4)}, "got float32x4"),
           ({"strides": (1, 2, 6)}, "C-contiguous"),
           ({"shift": 2}, "misaligned"),
           ({"version": (2, 0)}, "version 2.0 is not supported"),
           ({"version": (1, 0), "flags": 1}, "read-only")]
    for kw, match in bad:
        p = Producer(x, **kw)
        with pytest.raises(ValueError, match=match):
            cuda.from_dlpack(p.capsule)
        assert capsule_name(p.capsule) == p.name.decode() and p.deleted == 0, kw
    with pytest.raises(ValueError, match="expected a 'dltensor'"):
        cuda.from_dlpack(_capsule_new(x.ctypes.data, b"something_else", None))


def test_dlpack_exports_free_their_memory(dlp):
    """The C++ exporter: an unconsumed capsule releases its array when it dies, a consumed one
    when the consumer calls the deleter (here: the last view of the imported array)."""
    import gc
    import weakref

    class Owner:
        pass

    for versioned in (False, True):
        o = Owner()
        ref = weakref.ref(o)
        cap = dlp.to_dlpack(np.ones(3, np.float32), 2, 0, versioned, o)
        del o
        assert ref() is not None
        del cap
        gc.collect()
        assert ref() is None                          # never consumed: capsule destructor
        o = Owner()
        ref = weakref.ref(o)
        cap = dlp.to_dlpack(np.ones(3, np.float32), 2, 0, versioned, o)
        d = cuda.from_dlpack(cap)
        del o, cap
        gc.collect()
        assert ref() is not None                      # consumed: d owns it now
        del d
        gc.collect()
        assert ref() is None


def test_dlpack_layout_against_numpy_and_torch(dlp):
    """lrpfast's C++ capsules read by numpy/PyTorch and theirs read by lrpfast, on host memory
    (kDLCPU): the struct layout and ownership hand-over agree with real consumers/producers."""
    x = np.arange(12, dtype=np.float32).reshape(3, 4)

    class Host:
        def __init__(self, a, versioned=None):
            self.a, self.versioned = a, versioned

        def __dlpack__(self, stream=None, max_version=None, **kw):
            v = self.versioned if self.versioned is not None else (
                max_version is not None and max_version[0] >= 1)
            return dlp.to_dlpack(self.a, 1, 0, v)

        def __dlpack_device__(self):
            return (1, 0)

    for v in (False, True):
        y = np.from_dlpack(Host(x, v))
        assert np.shares_memory(y, x)
        np.testing.assert_array_equal(y, x)
    d = dlp.from_dlpack(x.__dlpack__())               # numpy's capsule (kDLCPU)
    assert d.ptr == x.ctypes.data and d.shape == (3, 4) and d.dtype == np.float32
    with pytest.raises(ValueError, match="C-contiguous"):
        dlp.from_dlpack(x.T.__dlpack__())
    with pytest.raises(ValueError, match="got float64"):
        dlp.from_dlpack(x.astype(np.float64).__dlpack__())
    with pytest.raises(ValueError, match="on CPU, expected CUDA"):
        dlp.from_dlpack(x.__dlpack__(), 2, 0)
    torch = pytest.importorskip("torch")
    for v in (False, True):
        t = torch.from_dlpack(Host(x, v))
        assert t.data_ptr() == x.ctypes.data and tuple(t.shape) == (3, 4)
    t = torch.arange(6, dtype=torch.int32).reshape(2, 3)
    for cap in (t.__dlpack__(), t.__dlpack__(max_version=(1, 0))):
        d = dlp.from_dlpack(cap)
        assert d.ptr == t.data_ptr() and d.shape == (2, 3) and d.dtype == np.int32


def test_dlpack_net_inputs_and_outputs(emu, dlp):
    x, xd, cpu, dev, want = _warm_pair("dlpack-net")
    got = dev.relevance(DLPackOnly(xd), 3, "epsilon")  # a DLPack-only device input
    assert isinstance(got, cuda.DeviceArray)
    assert emu.stats["h2d_bytes"] == 0 and emu.stats["d2h"] == 0     # nothing crossed
    assert cc.nmse(got, want) <= cc.NMSE_TOL
    out = cuda.from_dlpack(got.__dlpack__())          # and the result goes out the same way
    assert _ptr(out) == _ptr(got)
    with pytest.raises(ValueError, match="float32"):
        dev.relevance(DLPackOnly(cuda.to_device(np.zeros((2, 3, 12, 12), np.int32))), 0)


"""The whole device path of the CUDA engine, run on the CPU: lrpfast._cuda is replaced by the
host emulation of tests/cuda_emulation.py (same Python-visible API over numpy/_core), so
DeviceArray dispatch, the GPU operators, Net(device="cuda") (weights uploaded once, inputs copied
in at entry and results out at exit, device-array inputs and outputs) and the up-front errors
are tested without a GPU, against the CPU engine on the rule x layer grid and whole networks.
The real-GPU twin of these tests is tests/test_cuda_gpu.py."""
from __future__ import annotations

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


@pytest.mark.parametrize("across", [False, True])
def test_permute_normalize_softmax(emu, across):
    rng = seeded_rng("cuda-emu", "ssd", across)
    text, w = cc.ssdlike(2, across, rng)
    x = nets.random_input((2, 3, 8, 7), rng)
    cpu = lrpfast.Net.from_text(text, w)
    dev = lrpfast.Net.from_text(text, w, device="cuda")
    names = ["norm", "perm", "prob"]
    want, got = cpu.forward(x, blobs=names), dev.forward(x, blobs=names)
    for k in names:
        assert cc.nmse(got[k], want[k]) <= cc.NMSE_TOL, k
    for rules in ("epsilon", R.Gradient(), R.AlphaBeta(1, 0)):
        assert cc.nmse(dev.relevance(x, -1, rules), cpu.relevance(x, -1, rules)) <= cc.NMSE_TOL


def test_eltwise_max_prod_and_chunks(emu):
    rng = seeded_rng("cuda-emu", "eltwise")
    layers = [nets.conv("a", "data", 4, kernel=3, pad=1), nets.conv("b", "data", 4, kernel=1),
              nets.eltwise("m", ["a", "b"], "MAX"), nets.conv("c", "data", 4, kernel=1),
              nets.eltwise("p", ["m", "c"], "PROD"), nets.ip("fc", "p", 5)]
    tn = nets.build(layers, (5, 3, 5, 6), rng)
    x = nets.random_input((5, 3, 5, 6), rng)
    cpu = lrpfast.Net.from_text(tn.text, tn.weights)
    per_sample = sum(int(np.prod(s)) for s in cpu.shapes.values()) * 4 * 3
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


def test_device_inputs_give_device_outputs(emu):
    rng = seeded_rng("cuda-emu", "devio")
    tn = cc.vgg_like(2, rng)
    x = nets.random_input((2, 3, 12, 12), rng)
    cpu = lrpfast.Net.from_text(tn.text, tn.weights)
    dev = lrpfast.Net.from_text(tn.text, tn.weights, device="cuda")
    want = cpu.relevance(x, 3, "epsilon")
    xd = cuda.to_device(x)
    dev.relevance(xd, 3, "epsilon")                 # warm: the weights are uploaded once
    cuda_emulation.reset_stats()
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

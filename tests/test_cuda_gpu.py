"""GPU tests of the CUDA engine against the CPU engine (skipped cleanly without a GPU).

Run on a GPU machine with one command:

    python -m pytest -q -m gpu tests/test_cuda_gpu.py

(``-m gpu`` overrides the default ``-m "not slow"``.) The last test re-runs the kernel tests
under ``compute-sanitizer`` when it is on PATH (or in /usr/local/cuda/bin).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from conftest import seeded_rng  # noqa: E402
from lrpfast import cuda, ops, rules
from lrpfast._loader import _core

pytestmark = pytest.mark.gpu

_OK, _WHY = cuda.available()
if not _OK:
    pytest.skip(_WHY, allow_module_level=True)
# On the host build (-p cuda_host_plugin, no GPU) the parts that need real hardware skip.
hardware = pytest.mark.skipif(cuda.emulated(), reason="needs a real GPU (host build)")

# GPU and CPU differ only in float32 summation order (cuBLAS vs OpenBLAS blocking, gather vs
# scatter): normalised MSE well below 1e-6 (the tolerance for backends).
NMSE_TOL = 1e-6


def nmse(got, ref) -> float:
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    assert got.shape == ref.shape
    den = float(np.mean(ref * ref)) or 1.0
    return float(np.mean((got - ref) ** 2)) / den


def close(got, ref, tol=NMSE_TOL):
    got = got.to_host() if isinstance(got, cuda.DeviceArray) else got
    assert nmse(got, ref) <= tol, nmse(got, ref)


def rnd(key, shape):
    return seeded_rng("cuda-gpu", key, shape).standard_normal(shape).astype(np.float32)


CONV = [  # x shape, w shape, stride, pad, dilation, group
    ((2, 3, 17, 15), (8, 3, 3, 3), 1, 1, 1, 1),
    ((3, 4, 27, 27), (6, 2, 5, 5), 2, 2, 1, 2),
    ((1, 3, 35, 35), (16, 3, 11, 11), 4, 0, 1, 1),
    ((2, 8, 9, 9), (8, 8, 1, 1), 1, 0, 1, 1),
    ((2, 4, 12, 13), (4, 1, 3, 3), (2, 1), (1, 0), (2, 1), 4),
]


@pytest.mark.parametrize("case", CONV)
def test_kernels_conv(case):
    xs, ws, s, p, d, g = case
    x, w, b = rnd("x", xs), rnd("w", ws), rnd("b", (ws[0],))
    y = _core.conv_forward(x, w, b, s, p, d, g)
    close(cuda.DeviceArray(cuda._load().conv_forward(cuda.to_device(x)._a, cuda.to_device(w)._a,
                                                     cuda.to_device(b)._a, s, p, d, g)), y)
    dy = rnd("dy", y.shape)
    dx = _core.conv_backward_data(dy, w, xs[1:], s, p, d, g)
    close(cuda.DeviceArray(cuda._load().conv_backward_data(cuda.to_device(dy)._a,
                                                           cuda.to_device(w)._a, xs[1:], s, p, d,
                                                           g)), dx)


@pytest.mark.parametrize("case", CONV)
def test_kernels_conv_forward_pair(case):
    """conv_forward_pair (stacked [W; V] per group, one im2col) on the device against the CPU
    engine's, with a bias and without."""
    xs, ws, s, p, d, g = case
    ws = (2 * ws[0],) + ws[1:]          # two weight sets of ws[0] outputs, stacked per group
    x, w, b = rnd("x", xs), rnd("wpair", ws), rnd("bpair", (ws[0],))
    dev = cuda.to_device
    for bias in (b, None):
        want = _core.conv_forward_pair(x, w, bias, s, p, d, g)
        got = cuda._load().conv_forward_pair(dev(x)._a, dev(w)._a,
                                             None if bias is None else dev(bias)._a, s, p, d, g)
        for gg, ww in zip(got, want):
            close(cuda.DeviceArray(gg), ww)


@pytest.mark.parametrize("case", CONV)
def test_kernels_conv_fused_backward(case):
    """conv_backward_data(dy, ..., z=, eps=, times=) on the device against the CPU engine's fused
    call; relu_forward too."""
    xs, ws, s, p, d, g = case
    x, w = rnd("x", xs), rnd("w", ws)
    z = _core.conv_forward(x, w, None, s, p, d, g)
    dy = rnd("dy", z.shape)
    want = _core.conv_backward_data(dy, w, xs[1:], s, p, d, g, z=z, eps=1e-3, times=x)
    dev = cuda.to_device
    got = cuda._load().conv_backward_data(dev(dy)._a, dev(w)._a, xs[1:], s, p, d, g,
                                          z=dev(z)._a, eps=1e-3, times=dev(x)._a)
    close(cuda.DeviceArray(got), want)
    np.testing.assert_array_equal(cuda.DeviceArray(cuda._load().relu_forward(dev(x)._a)).to_host(),
                                  _core.relu_forward(x))


def test_kernels_linear():
    m = cuda._load()
    x, w, b = rnd("x", (5, 300)), rnd("w", (40, 300)), rnd("b", (40,))
    close(cuda.DeviceArray(m.linear_forward(cuda.to_device(x)._a, cuda.to_device(w)._a,
                                            cuda.to_device(b)._a)), _core.linear_forward(x, w, b))
    dy = rnd("dy", (5, 40))
    close(cuda.DeviceArray(m.linear_backward_data(cuda.to_device(dy)._a, cuda.to_device(w)._a)),
          _core.linear_backward_data(dy, w))


@pytest.mark.parametrize("method", ["max", "ave"])
@pytest.mark.parametrize("geom", [(3, 2, 0), (3, 2, 1), (2, 2, 0), (5, 1, 2)])
def test_kernels_pool(method, geom):
    m = cuda._load()
    k, s, p = geom
    x = rnd("x", (2, 3, 13, 14))
    y, am = _core.pool_forward(x, method, k, s, p, True)
    gy, gam = m.pool_forward(cuda.to_device(x)._a, method, k, s, p, True)
    close(cuda.DeviceArray(gy), y)
    if method == "max":
        np.testing.assert_array_equal(gam.to_host(), am)
    dy = rnd("dy", y.shape)
    dx = _core.pool_backward(dy, x.shape, method, k, s, p, am if method == "max" else None)
    gdx = m.pool_backward(cuda.to_device(dy)._a, x.shape, method, k, s, p, gam)
    close(cuda.DeviceArray(gdx), dx)


@pytest.mark.parametrize("region", ["across", "within"])
def test_kernels_lrn(region):
    x = rnd("x", (2, 7, 9, 8))
    y, sc = _core.lrn_forward(x, 5, 1e-2, 0.75, 2.0, region)
    gy, gsc = cuda._load().lrn_forward(cuda.to_device(x)._a, 5, 1e-2, 0.75, 2.0, region)
    close(cuda.DeviceArray(gy), y)
    close(cuda.DeviceArray(gsc), sc)


def test_kernels_elementwise():
    r, z = rnd("r", (4, 5, 6)), rnd("z", (4, 5, 6))
    z[0, 0, :3] = 0.0
    for eps in (0.0, 1e-2):
        close(cuda.stabilized_divide(cuda.to_device(r), cuda.to_device(z), eps),
              _core.stabilized_divide(r, z, eps, True))
    dr, dz = cuda.to_device(r), cuda.to_device(z)
    close(np.maximum(dr, 0), np.maximum(r, 0))
    close(np.minimum(dr, 0), np.minimum(r, 0))
    close(dr * dz + dr - dz, r * z + r - z)
    close(dr * (dz > 0), r * (z > 0))
    close(dr * cuda.to_device(z[:, :, :1]),
          r * z[:, :, :1])
    close(2.0 * dr / 3.0, 2.0 * r / 3.0)
    close(np.square(dr), r * r)
    assert (dz < 0).any() == bool((z < 0).any())
    assert abs((dr).sum() - float(r.astype(np.float64).sum())) < 1e-3


@pytest.mark.parametrize("op", ["sum", "prod", "max"])
def test_kernels_eltwise_affine(op):
    """Same float32 operations in the same order without FMA: bit-identical to _core."""
    m = cuda._load()
    for k in (1, 2, 4, 11):                    # 11 inputs: two launches of up to 8
        xs = [rnd(f"elt{i}", (2, 5, 7, 9)) for i in range(k)]
        if op == "max":                        # ties: the first input holding the maximum wins
            for x in xs[1:]:
                x.reshape(-1)[::3] = xs[0].reshape(-1)[::3]
        coeffs = np.linspace(-1.5, 2.0, k).tolist() if op == "sum" else None
        y, am = _core.eltwise_forward(xs, op, coeffs)
        gy, gam = m.eltwise_forward([cuda.to_device(x)._a for x in xs], op, coeffs)
        np.testing.assert_array_equal(gy.to_host(), y)
        if op == "max":
            np.testing.assert_array_equal(gam.to_host(), am)
        else:
            assert gam is None
    x, sc, b = rnd("ax", (3, 6, 5, 7)), rnd("as", (6,)), rnd("ab", (6,))
    for bias in (b, None):
        got = m.channel_affine(cuda.to_device(x)._a, cuda.to_device(sc)._a,
                               None if bias is None else cuda.to_device(bias)._a)
        np.testing.assert_array_equal(got.to_host(), _core.channel_affine(x, sc, bias))


def _ptr(d):
    return d.__cuda_array_interface__["data"][0]


def test_kernels_dlpack():
    x = rnd("dl", (2, 3, 4, 5))
    xd = cuda.to_device(x)
    assert xd.__dlpack_device__()[0] == 2
    for kw in ({}, {"stream": 1}, {"stream": 2}, {"stream": -1}, {"max_version": (1, 0)}):
        back = cuda.from_dlpack(xd.__dlpack__(**kw))
        assert _ptr(back) == _ptr(xd)
        np.testing.assert_array_equal(back.to_host(), x)
    cp = cuda.from_dlpack(xd.__dlpack__(copy=True))
    assert _ptr(cp) != _ptr(xd)
    np.testing.assert_array_equal(cp.to_host(), x)
    with pytest.raises(ValueError, match="stream 0"):
        xd.__dlpack__(stream=0)
    with pytest.raises(ValueError, match="the CPU"):
        cuda.from_dlpack(x)


@hardware
def test_dlpack_torch():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch without CUDA")
    x = rnd("dlt", (2, 3, 12, 12))
    xd = cuda.to_device(x)
    t = torch.from_dlpack(xd)                               # lrpfast -> PyTorch, same memory
    assert t.is_cuda and t.data_ptr() == _ptr(xd)
    np.testing.assert_array_equal(t.cpu().numpy(), x)
    with torch.cuda.stream(torch.cuda.Stream()):            # a non-default consumer stream
        t2 = torch.from_dlpack(xd) * 2
    torch.cuda.synchronize()
    np.testing.assert_array_equal(t2.cpu().numpy(), 2 * x)
    tt = torch.from_numpy(x).cuda()
    d = cuda.from_dlpack(tt)                                # PyTorch -> lrpfast, same memory
    assert _ptr(d) == tt.data_ptr()
    np.testing.assert_array_equal(d.to_host(), x)
    rng = seeded_rng("cuda-gpu", "dlpack-net")
    tn = cc.vgg_like(2, rng)
    cpu = lrpfast.Net.from_text(tn.text, tn.weights)
    dev = lrpfast.Net.from_text(tn.text, tn.weights, device="cuda")
    got = dev.relevance(tt, 3, "epsilon")                  # torch in -> DeviceArray out
    assert isinstance(got, cuda.DeviceArray)
    assert cc.nmse(torch.from_dlpack(got).cpu().numpy(), cpu.relevance(x, 3, "epsilon")) \
        <= cc.NMSE_TOL


# ---- the rule x layer grid: each rule of rules.py over GPU twins of each operator type --------
RULES = [rules.Zero(), rules.Epsilon(0.01), rules.AlphaBeta(1, 0), rules.AlphaBeta(2, 1),
         rules.Flat(), rules.WSquare(), rules.ZBox(-1.0, 1.0), rules.Gamma(0.25),
         rules.Gradient(), rules.Deconvnet(), rules.GuidedBackprop()]


def _ops():
    w = rnd("wc", (6, 3, 3, 3))
    yield "conv", ops.ConvOp(w, rnd("bc", (6,)), (3, 11, 10), 2, 1, 1, 1), (2, 3, 11, 10)
    yield "conv_group", ops.ConvOp(rnd("wg", (6, 1, 3, 3)), None, (3, 9, 9), 1, 1, 1, 3), (2, 3, 9, 9)
    yield "ip", ops.InnerProductOp(rnd("wi", (7, 60)), rnd("bi", (7,)), (60,)), (3, 60)
    yield "diag", ops.DiagOp(rnd("wd", (4,)), rnd("bd", (4,)), (4, 5, 5)), (2, 4, 5, 5)
    yield "avgpool", ops.AvgPoolOp((3, 9, 9), 3, 2, 1), (2, 3, 9, 9)


@pytest.mark.parametrize("rule", RULES, ids=repr)
@pytest.mark.parametrize("name,op,xshape", list(_ops()), ids=[n for n, *_ in _ops()])
def test_rule_layer_grid(rule, name, op, xshape):
    x = rnd("x" + name, xshape)
    z = op.fwd(x, "w", "b" if op.b is not None else None)
    R = rnd("R" + name, z.shape)
    ref = rule.linear(op, x, R)
    got = rule.linear(cuda.make_cuda_op(op), cuda.to_device(x), cuda.to_device(R))
    close(got, ref)


# ---- Net(device="cuda") against Net(device="cpu"): the rule x layer grid of test_rules_grid and
# whole networks (the same comparisons tests/test_cuda_emulated.py runs on the host emulation)
import cuda_cases as cc  # noqa: E402
import lrpfast  # noqa: E402
import nets  # noqa: E402


@pytest.mark.parametrize("rule_id,case_id,N", [pytest.param(*g, id="-".join(map(str, g)))
                                               for g in cc.GRID])
def test_net_grid(rule_id, case_id, N):
    got, want = cc.grid_case(rule_id, case_id, N)
    assert cc.nmse(got, want) <= cc.tol(rule_id)


@pytest.mark.parametrize("rules", ["epsilon", rules.AlphaBeta(2, 1), rules.Flat(),
                                   rules.Gradient(), rules.GuidedBackprop(), "cmp_alpha2_flat"],
                         ids=repr)
def test_whole_network(rules):
    rng = seeded_rng("cuda-gpu", "whole", repr(rules))
    tn = cc.vgg_like(3, rng)
    x = nets.random_input((3, 3, 12, 12), rng)
    cpu = lrpfast.Net.from_text(tn.text, tn.weights)
    dev = lrpfast.Net.from_text(tn.text, tn.weights, device="cuda")
    assert cc.nmse(dev.forward(x), cpu.forward(x)) <= cc.NMSE_TOL
    sets = [-1, [[0, 3]] * 3, -2, [4, 0, 6]]
    assert cc.nmse(dev.relevance_multi(x, sets, rules), cpu.relevance_multi(x, sets, rules)) \
        <= cc.NMSE_TOL
    got = dev.relevance(cuda.to_device(x), 2, rules)          # device in -> device out
    assert isinstance(got, cuda.DeviceArray)
    assert cc.nmse(got, cpu.relevance(x, 2, rules)) <= cc.NMSE_TOL


@pytest.mark.parametrize("across", [False, True])
def test_whole_network_permute_normalize(across):
    cc.check_ssdlike(across, seeded_rng("cuda-gpu", "ssd", across),
                     ("epsilon", rules.Gradient(), rules.AlphaBeta(1, 0)))


def test_memory_reused_across_calls():
    rng = seeded_rng("cuda-gpu", "memory")
    tn = cc.vgg_like(4, rng)
    x = nets.random_input((4, 3, 12, 12), rng)
    dev = lrpfast.Net.from_text(tn.text, tn.weights, device="cuda")
    dev.relevance(x, -1, "epsilon")
    m = cuda._load()
    m.synchronize()
    used_cached = sum(m.memory_stats())
    for _ in range(3):
        dev.relevance(x, -1, "epsilon")
    m.synchronize()
    assert sum(m.memory_stats()) == used_cached      # the caching allocator: no growth


@hardware
def test_compute_sanitizer():
    exe = shutil.which("compute-sanitizer") or "/usr/local/cuda/bin/compute-sanitizer"
    if not os.path.exists(exe) or os.environ.get("LRPFAST_IN_SANITIZER"):
        pytest.skip("compute-sanitizer not available (or already running under it)")
    env = dict(os.environ, LRPFAST_IN_SANITIZER="1")
    res = subprocess.run([exe, "--error-exitcode", "99", sys.executable, "-m", "pytest", "-q",
                          "-m", "gpu", "-k", "kernels", __file__], env=env, capture_output=True,
                         text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-4000:]


# ---- exact FP32, determinism, stream hand-over with PyTorch (tests/test_cuda_host.py has the
# host-build twins with deferred streams and the negative controls)
def test_exact_fp32_products():
    """CUBLAS_PEDANTIC_MATH: an identity times (1 + 2^-12) comes out exact on every GEMM path
    (TF32 or a reduced-precision emulation would round it to 1)."""
    m = cuda._load()
    assert m.blas_math_mode() == 2
    assert cc.exact_fp32_products(m) == {"linear": True, "conv 1x1": True, "conv 3x3": True}


def test_sum_and_relevance_bitwise_repeatable():
    x = rnd("sum", (3_000_001,))
    d = cuda.to_device(x)
    assert len({cuda._load().sum(d._a) for _ in range(5)}) == 1
    rng = seeded_rng("cuda-gpu", "repeat")
    tn = cc.vgg_like(4, rng)
    xi = nets.random_input((4, 3, 12, 12), rng)
    net = lrpfast.Net.from_text(tn.text, tn.weights, device="cuda")
    first = net.relevance(xi, -1, "epsilon")
    for _ in range(3):
        np.testing.assert_array_equal(net.relevance(xi, -1, "epsilon"), first)


@hardware
def test_dlpack_export_lifetime_torch_side_stream():
    """A block exported to PyTorch on a busy side stream is not reused before that stream has
    read it (recorded per consumer stream at the deleter)."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch without CUDA")
    n = 1 << 24
    d = cuda.to_device(np.ones(n, np.float32))
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(500_000_000)              # keeps the side stream busy
        t = torch.from_dlpack(d)                    # __dlpack__(stream=side)
        y = t * 2                                   # queued behind the sleep, reads d
    del t, d
    d2 = cuda.to_device(np.full(n, 7, np.float32))  # same size: the same block
    torch.cuda.synchronize()
    assert bool((y == 2).all()), "the block was reused under the consumer's stream"
    del d2


@hardware
def test_cai_import_honours_producer_stream_cupy():
    cupy = pytest.importorskip("cupy")
    torch = pytest.importorskip("torch")
    n = 1 << 24
    sc = cupy.cuda.Stream(non_blocking=True)
    z = cupy.zeros(n, cupy.float32)
    cupy.cuda.runtime.deviceSynchronize()
    with torch.cuda.stream(torch.cuda.ExternalStream(sc.ptr)):
        torch.cuda._sleep(500_000_000)              # the producer's stream is busy...
    with sc:
        z += 5                                      # ...so this write is still queued
        r = cuda.from_cuda(z)                       # CAI v3 names sc
    assert (np.maximum(r, 0).to_host() == 5).all()


def test_devices():
    m = cuda._load()
    n = m.device_count()[0]
    a = cuda.to_device(np.ones(4, np.float32), device=n - 1)
    assert a.device == n - 1 and a.__dlpack_device__() == (2, n - 1)
    with pytest.raises(ValueError, match="does not exist"):
        cuda.to_device(np.ones(3), device=f"cuda:{n}")
    if n < 2:
        pytest.skip("one GPU: the cross-device checks need two")
    b = cuda.to_device(np.ones(4, np.float32), device=0)
    with pytest.raises(ValueError, match="different GPUs"):
        a + b
    rng = seeded_rng("cuda-gpu", "device1")
    tn = cc.vgg_like(2, rng)
    x = nets.random_input((2, 3, 12, 12), rng)
    want = lrpfast.Net.from_text(tn.text, tn.weights).relevance(x, -1, "epsilon")
    got = lrpfast.Net.from_text(tn.text, tn.weights, device="cuda:1").relevance(x, -1, "epsilon")
    assert cc.nmse(got, want) <= cc.NMSE_TOL

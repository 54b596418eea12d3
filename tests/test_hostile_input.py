"""Hostile and careless input (issue 14): bounded memory per sample, work proportional to the
file, no silent NaN, intact output files, argument checks. Each test names the point it covers."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import lrpfast
from lrpfast._loader import _core
import numpy as np
import pytest
from conftest import seeded_rng
from lrpfast import caffe
from lrpfast import explain as ex
from lrpfast import rules as R
from lrpfast.caffe import CaffeFormatError
from lrpfast.cli import main as cli_main
from PIL import Image

DATA = Path(lrpfast.__file__).parent / "data"
PROTO, WEIGHTS = DATA / "digits_cnn.prototxt", DATA / "digits_cnn.caffemodel"
MEAN = DATA / "digits_cnn_mean.binaryproto"


def small_net(layers: str, shape=(1, 2, 6, 6)) -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    return f'input: "data"\ninput_shape {{ {dims} }}\n{layers}'


CONV_IP = small_net("""
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
  convolution_param { num_output: 3 kernel_size: 3 } }
layer { name: "relu" type: "ReLU" bottom: "conv" top: "conv" }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
  inner_product_param { num_output: 4 } }
""")


def conv_ip_weights(rng, scale=1.0):
    return {"conv": [rng.standard_normal((3, 2, 3, 3)).astype(np.float32) * scale,
                     np.zeros(3, np.float32)],
            "ip": [rng.standard_normal((4, 48)).astype(np.float32) * 0.1,
                   np.zeros(4, np.float32)]}


def x_for(net, rng, n=2):
    shape = next(iter(net.inputs.values()))
    return rng.standard_normal((n,) + shape).astype(np.float32)


# ----------------------------------------------------------------------- 1. memory per sample
PAD_6000 = small_net("""
layer { name: "huge" type: "Convolution" bottom: "data" top: "huge"
  convolution_param { num_output: 2 kernel_size: 1 pad: 6000 } }
layer { name: "ip" type: "InnerProduct" bottom: "huge" top: "ip"
  inner_product_param { num_output: 2 } }
""", (1, 3, 64, 64))


def test_sample_memory_refused_before_any_work():
    """The issue's 379-byte model (1x1 conv, pad 6000, 64x64 input): refused at once, naming
    the layer and the bytes, instead of 6.9 GB and 83 s."""
    net = lrpfast.Net.from_text(PAD_6000)   # structure only: no weights needed to know memory
    mem = net.layer_memory()
    ho = 64 + 2 * 6000
    # the largest output: 8 bytes per element kept, 16 more as the largest blob (layer_memory)
    assert mem["huge"] == 2 * ho * ho * (8 + 16)
    assert sum(mem.values()) == net._bytes_per_sample()
    net.has_weights = True   # the check comes before the weights are touched
    t = time.perf_counter()
    huge_mib = f"{mem['huge'] / 2**20:.1f} MiB"
    with pytest.raises(lrpfast.SampleMemoryError, match=rf"more than memory_limit=2147483648 .*"
                       rf"layer 'huge' alone needs {huge_mib}") as e:
        net.relevance(np.zeros((1, 3, 64, 64), np.float32), 0, top="ip")
    assert time.perf_counter() - t < 1.0
    assert isinstance(e.value, MemoryError) and isinstance(e.value, ValueError)
    with pytest.raises(lrpfast.SampleMemoryError, match="huge"):
        net.forward(np.zeros((1, 3, 64, 64), np.float32))


def test_sample_memory_checked_against_the_machine(monkeypatch):
    """A limit above what the machine can give is capped by the available memory."""
    net = lrpfast.Net.from_text(PAD_6000, memory_limit=1 << 50)
    net.has_weights = True
    monkeypatch.setattr(lrpfast.net, "_available_memory", lambda: 100 << 20)
    with pytest.raises(lrpfast.SampleMemoryError, match="the memory this process can still "
                                                         r"allocate \(100\.0 MiB\)"):
        net.forward(np.zeros((1, 3, 64, 64), np.float32))


def test_sample_memory_under_ulimit_subprocess(tmp_path):
    """Under an address-space limit (ulimit -v) and a huge memory_limit, a too-large sample
    is a SampleMemoryError, not an allocation failure deep inside a pass."""
    if "libasan" in os.environ.get("LD_PRELOAD", ""):
        pytest.skip("AddressSanitizer reserves terabytes of address space: no RLIMIT_AS fits")
    code = f"""
import resource, numpy as np, lrpfast
net = lrpfast.Net.from_text({PAD_6000!r}, memory_limit=1 << 40)
net.has_weights = True
resource.setrlimit(resource.RLIMIT_AS, (3_000_000_000, resource.RLIM_INFINITY))
try:
    net.forward(np.zeros((1, 3, 64, 64), np.float32))
except lrpfast.SampleMemoryError as e:
    print("refused:", e)
"""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=env, check=False)
    assert r.returncode == 0, r.stderr
    assert "refused:" in r.stdout and "'huge'" in r.stdout


def test_memory_limit_argument():
    for bad in ("big", 0, -5, True, float("nan"), 1.5, None):
        with pytest.raises(ValueError, match="memory_limit must be a positive number of bytes"):
            lrpfast.Net.from_text(CONV_IP, memory_limit=bad)
    assert lrpfast.Net.from_text(CONV_IP, memory_limit=2e9).memory_limit == 2_000_000_000


# -------------------------------------------------------------- 2. work proportional to file
def _ld(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (tag, varint length, payload)."""
    def varint(v):
        out = bytearray()
        while v >= 0x80:
            out.append((v & 0x7F) | 0x80)
            v >>= 7
        return bytes(out + bytes([v]))
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def test_many_empty_blobs_stop_early(tmp_path):
    """1M empty blob entries (1.9 MiB) used to take 71 s and 378 MiB and print every shape;
    the reader now stops at the cap with a one-line message."""
    layer = _ld(1, b"conv") + _ld(2, b"Convolution") + _ld(7, b"") * 1_000_000
    p = tmp_path / "blobs.caffemodel"
    p.write_bytes(_ld(100, layer))
    t = time.perf_counter()
    with pytest.raises(CaffeFormatError, match=r"more than 64 blobs in one layer") as e:
        caffe.read_caffemodel(p)
    assert time.perf_counter() - t < 2.0   # was 71 s; a loose bound for a busy machine
    assert len(str(e.value)) < 300 and "\n" not in str(e.value)


def test_blob_count_errors_are_short():
    """A layer with too many blobs lists a few shapes and a count of the rest."""
    rng = seeded_rng("hostile", "blob count")
    w = conv_ip_weights(rng)
    w["conv"] = w["conv"] + [np.zeros(i + 1, np.float32) for i in range(50)]
    with pytest.raises(lrpfast.LayerError, match=r"got 52 with shapes .* and 46 more") as e:
        lrpfast.Net.from_text(CONV_IP, w)
    assert len(str(e.value)) < 400


def test_load_time_linear_in_many_tiny_layers(tmp_path):
    """Many tiny layers: time grows linearly (4x the file, < 8x the time; generous for noise)."""
    def timed(n):
        p = tmp_path / f"layers{n}.caffemodel"
        p.write_bytes(b"".join(_ld(100, _ld(1, b"L%d" % i)) for i in range(n)))
        t = time.perf_counter()
        caffe.read_caffemodel(p)
        return time.perf_counter() - t
    timed(1000)   # warm up
    small, big = min(timed(5_000) for _ in range(3)), min(timed(20_000) for _ in range(3))
    assert big < 10 * small + 0.05   # linear: 4x; quadratic would be 16x


def test_memory_proportional_to_file(tmp_path):
    """Layers of 64 empty blob entries each (2 bytes per entry): Python allocations stay within
    a small multiple of the file (an array per entry used to cost ~135x); a Net decodes only
    its own layers' blobs."""
    import tracemalloc
    p = tmp_path / "spread.caffemodel"
    p.write_bytes(b"".join(_ld(100, _ld(1, b"L%d" % i) + _ld(7, b"") * 64)
                           for i in range(1000)))
    size = p.stat().st_size
    tracemalloc.start()
    try:
        w = caffe.read_caffemodel(p)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(w) == 1000 and all(len(b) == 64 and b[0].size == 0 for b in w.values())
    assert peak < 8 * size, (peak, size)
    sub = caffe.read_caffemodel(p, layers={"L7", "absent"})
    assert list(sub) == ["L7"] and len(sub["L7"]) == 64


# ---------------------------------------------------------------------------- 3. no silent NaN
def test_huge_weight_raises_naming_the_layer():
    """A finite but huge weight overflows float32 in the pass: NonFiniteError names the first
    layer whose output is not finite (here the conv; the ReLU and IP only carry it on)."""
    rng = seeded_rng("hostile", "huge weight")
    w = conv_ip_weights(rng)
    w["conv"][0][0, 0, 0, 0] = 3e38
    net = lrpfast.Net.from_text(CONV_IP, w)
    x = np.full((2, 2, 6, 6), 10.0, np.float32)
    with pytest.raises(lrpfast.NonFiniteError, match=r"layer 0 'conv' \(Convolution\): its "
                                                     r"output is not finite") as e:
        net.relevance(x, 0)
    assert e.value.layer == "conv" and e.value.stage == "forward"
    with pytest.raises(lrpfast.NonFiniteError, match="'conv'"):
        net.forward(x)
    # an inference pass has freed the conv's output by the end: it still names the conv
    with pytest.raises(lrpfast.NonFiniteError, match=r"layer 0 'conv' \(Convolution\)") as e:
        net.forward(x, keep=False)
    assert e.value.layer == "conv"
    off = lrpfast.Net.from_text(CONV_IP, w, check_finite=False)   # the flag turns it off
    assert not np.all(np.isfinite(off.forward(x)))


def test_scale_overflow_raises():
    """Scale weights of 3e38 are finite but overflow on any input above 1."""
    net_text = small_net("""
layer { name: "sc" type: "Scale" bottom: "data" top: "sc" scale_param { bias_term: false } }
layer { name: "ip" type: "InnerProduct" bottom: "sc" top: "ip" inner_product_param { num_output: 2 } }
""")
    rng = seeded_rng("hostile", "scale")
    w = {"sc": [np.full(2, 3e38, np.float32)],
         "ip": [rng.standard_normal((2, 72)).astype(np.float32), np.zeros(2, np.float32)]}
    net = lrpfast.Net.from_text(net_text, w)
    with pytest.raises(lrpfast.NonFiniteError, match="'sc'"):
        net.relevance(np.full((1, 2, 6, 6), 5.0, np.float32), 0)


def test_nonfinite_relevance_names_the_layer(monkeypatch):
    """A relevance that becomes non-finite inside the backward pass names that layer."""
    rng = seeded_rng("hostile", "relevance nan")
    net = lrpfast.Net.from_text(CONV_IP, conv_ip_weights(rng))
    relu = net.layer("relu")
    orig = type(relu).relevance

    def poisoned(self, xs, ys, state, Rs, ctx):
        out = orig(self, xs, ys, state, Rs, ctx)
        with np.errstate(invalid="ignore"):
            return [o * np.float32(np.inf) for o in out]
    monkeypatch.setattr(relu, "relevance", poisoned.__get__(relu))
    with pytest.raises(lrpfast.NonFiniteError, match=r"layer 1 'relu' \(ReLU\): its relevance") \
            as e:
        net.relevance(x_for(net, rng), 0)
    assert e.value.stage == "relevance"
    net.check_finite = False
    with np.errstate(invalid="ignore"):
        assert not np.all(np.isfinite(net.relevance(x_for(net, rng), 0)))


# (N, C, O, H, k, stride, pad): conv_backward_data's paths -- Winograd, 1x1 per image, strided
# 1x1, small planes batched per product, large planes in row blocks
CHECK_CASES = [(2, 16, 16, 12, 3, 1, 1), (2, 8, 12, 9, 1, 1, 0), (2, 8, 12, 9, 1, 2, 0),
               (6, 8, 8, 7, 3, 1, 1), (2, 3, 8, 40, 5, 1, 2)]


@pytest.mark.parametrize("case", CHECK_CASES, ids=[str(c) for c in CHECK_CASES])
def test_kernels_check_their_own_relevance(case):
    """conv_backward_data(check_finite=True) reports whether dx is all finite -- tested in the
    product with times, or in one more pass without it -- and computes the same bits as without
    the check; a NaN or infinity anywhere (in times, or reached through the quotient) is seen."""
    N, C, O, H, k, s, p = case
    rng = seeded_rng("hostile", "fused check", *case)
    x = rng.standard_normal((N, C, H, H)).astype(np.float32)
    w = rng.standard_normal((O, C, k, k)).astype(np.float32)
    z = _core.conv_forward(x, w, None, s, p)
    R = rng.standard_normal(z.shape).astype(np.float32)
    for times in (x, None):
        plain = _core.conv_backward_data(R, w, x.shape, s, p, z=z, eps=1e-3, times=times)
        dx, ok = _core.conv_backward_data(R, w, x.shape, s, p, z=z, eps=1e-3, times=times,
                                          check_finite=True)
        np.testing.assert_array_equal(dx, plain)
        assert ok is bool(np.isfinite(dx).all()) is True
    for bad in (np.nan, np.inf, -np.inf):
        t = x.copy()
        t.reshape(-1)[int(rng.integers(t.size))] = bad          # one product not finite
        with np.errstate(invalid="ignore"):
            dx, ok = _core.conv_backward_data(R, w, x.shape, s, p, z=z, eps=1e-3, times=t,
                                              check_finite=True)
        assert not ok and not np.isfinite(dx).all()
        R2 = R.copy()
        R2.reshape(-1)[int(rng.integers(R2.size))] = bad        # a signal not finite
        for times in (x, None):
            with np.errstate(invalid="ignore"):
                dx, ok = _core.conv_backward_data(R2, w, x.shape, s, p, z=z, eps=1e-3,
                                                  times=times, check_finite=True)
            assert ok is bool(np.isfinite(dx).all())


def test_eltwise_relevance_checks_itself():
    rng = seeded_rng("hostile", "eltwise check")
    xs = [rng.standard_normal((2, 3, 50, 70)).astype(np.float32) for _ in range(2)]
    y = xs[0] + xs[1]
    R = rng.standard_normal(y.shape).astype(np.float32)
    outs, ok = _core.eltwise_sum_relevance(xs, R, y, [1.0, 2.0], 1e-3, check_finite=True)
    assert ok is True
    for a, b in zip(outs, _core.eltwise_sum_relevance(xs, R, y, [1.0, 2.0], 1e-3)):
        np.testing.assert_array_equal(a, b)
    for where in (0, 20999, y.size - 1):                 # first, inside, last block
        bad = [xs[0], xs[1].copy()]
        bad[1].reshape(-1)[where] = np.inf
        with np.errstate(invalid="ignore"):
            outs, ok = _core.eltwise_sum_relevance(bad, R, y, None, 1e-3, check_finite=True)
        assert not ok and not all(np.isfinite(o).all() for o in outs)


RESIDUAL = small_net("""
layer { name: "c1" type: "Convolution" bottom: "data" top: "c1"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "r1" type: "ReLU" bottom: "c1" top: "c1" }
layer { name: "c2" type: "Convolution" bottom: "c1" top: "c2"
  convolution_param { num_output: 4 kernel_size: 3 pad: 1 } }
layer { name: "sum" type: "Eltwise" bottom: "c2" bottom: "c1" top: "sum" }
layer { name: "ip" type: "InnerProduct" bottom: "sum" top: "ip"
  inner_product_param { num_output: 3 } }
""", (1, 2, 5, 5))


def residual_weights(rng):
    return {"c1": [rng.standard_normal((4, 2, 3, 3)).astype(np.float32),
                   np.zeros(4, np.float32)],
            "c2": [rng.standard_normal((4, 4, 3, 3)).astype(np.float32),
                   np.zeros(4, np.float32)],
            "ip": [rng.standard_normal((3, 100)).astype(np.float32), np.zeros(3, np.float32)]}


def test_relevance_checked_by_its_kernels_is_not_read_again(monkeypatch):
    """The convolutions' and the residual sum's relevance are tested by the kernels that write
    them: the net's own check reads only the others (here the InnerProduct's), keeps no
    reference to them after the pass, and the result is the same."""
    import lrpfast.net as net_mod
    from lrpfast import ops
    rng = seeded_rng("hostile", "noted")
    net = lrpfast.Net.from_text(RESIDUAL, residual_weights(rng))
    x = x_for(net, rng)
    want = net.relevance(x, 0, rules="epsilon")
    read = []
    orig = net_mod._all_finite

    def counting(v):   # the layer whose relevance is read (None: the forward's outputs)
        layer = sys._getframe(1).f_locals.get("layer")
        read.append(getattr(layer, "name", None))
        return orig(v)
    monkeypatch.setattr(net_mod, "_all_finite", counting)
    np.testing.assert_array_equal(net.relevance(x, 0, rules="epsilon"), want)
    assert read == [None, "ip"], read
    assert getattr(ops._finite, "arrays", []) == []


@pytest.mark.parametrize("case", CHECK_CASES, ids=[str(c) for c in CHECK_CASES])
def test_transposed_product_adds_a_held_relevance_exactly(case):
    """conv_backward_data(add=a, times=x) is eltwise_forward([a, <the result without add>])
    bit for bit on every path (the net's sum of two relevances of one blob), its finite flag
    covers the sum, and add without times or of another shape is refused."""
    N, C, O, H, k, s, p = case
    rng = seeded_rng("hostile", "fused add", *case)
    x = rng.standard_normal((N, C, H, H)).astype(np.float32)
    w = rng.standard_normal((O, C, k, k)).astype(np.float32)
    z = _core.conv_forward(x, w, None, s, p)
    R = rng.standard_normal(z.shape).astype(np.float32)
    held = rng.standard_normal(x.shape).astype(np.float32)
    held.reshape(-1)[:4] = [0.0, -0.0, -0.0, 0.0]          # signed zeros: the sum's first term
    t = x.copy()
    t.reshape(-1)[:4] = [0.0, -0.0, 0.0, -0.0]             # and zero products of either sign
    plain = _core.conv_backward_data(R, w, x.shape, s, p, z=z, eps=1e-3, times=t)
    want = _core.eltwise_forward([held, plain], "sum")[0]
    got, ok = _core.conv_backward_data(R, w, x.shape, s, p, z=z, eps=1e-3, times=t, add=held,
                                       check_finite=True)
    assert ok and np.array_equal(got.view(np.int32), want.view(np.int32))
    inf = held.copy()
    inf.reshape(-1)[int(rng.integers(inf.size))] = np.inf   # the flag covers the sum
    _, ok = _core.conv_backward_data(R, w, x.shape, s, p, z=z, eps=1e-3, times=t, add=inf,
                                     check_finite=True)
    assert not ok
    with pytest.raises(ValueError, match="add needs times"):
        _core.conv_backward_data(R, w, x.shape, s, p, add=held)
    with pytest.raises(ValueError, match="add must have the shape"):
        _core.conv_backward_data(R, w, x.shape, s, p, times=t, add=held[:1])


@pytest.mark.parametrize("rules", ["epsilon", "cmp_alpha2_flat", "alpha1beta0"])
def test_residual_relevance_added_in_the_kernel_is_the_same_sum(monkeypatch, rules):
    """A blob that two layers read gets the sum of their relevances; the net lets the second
    layer's transposed product add the first one's in its last pass. Same bits as the net's own
    sum, for the input's relevance and for a readout at that blob (which the net then sums
    itself, so the readout sees each layer's part)."""
    import lrpfast.net as net_mod
    from lrpfast import ops
    rng = seeded_rng("hostile", "residual sum")
    net = lrpfast.Net.from_text(RESIDUAL, residual_weights(rng))
    x = np.abs(x_for(net, rng, n=3))
    sums = []
    orig = net_mod._add
    monkeypatch.setattr(net_mod, "_add", lambda a, b: sums.append(1) or orig(a, b))
    fused = net.relevance(x, 0, rules=rules)
    both = net.relevance(x, 0, rules=rules, readout=["data", "c1"])
    assert len(sums) == 1        # only the readout pass sums at "c1" itself
    monkeypatch.setattr(ops, "offer_sum", lambda target: None)   # the net's own sums
    sums.clear()
    apart = net.relevance(x, 0, rules=rules)
    assert len(sums) == 1
    assert np.array_equal(fused.view(np.int32), apart.view(np.int32))
    assert np.array_equal(both["data"].view(np.int32), apart.view(np.int32))
    apart_c1 = net.relevance(x, 0, rules=rules, readout="c1")
    assert np.array_equal(both["c1"].view(np.int32), apart_c1.view(np.int32))


def test_nonfinite_relevance_from_a_fused_kernel_names_the_layer(monkeypatch):
    """A relevance made non-finite inside a convolution's fused transposed product (an infinite
    weight seen only by the backward pass) is reported by that kernel's own check: the pass
    raises at that convolution, not later."""
    from lrpfast import ops
    rng = seeded_rng("hostile", "fused overflow")
    net = lrpfast.Net.from_text(RESIDUAL, residual_weights(rng))
    orig = ops.ConvOp.bwd_signal

    def poisoned(self, R, kind="w", **kw):
        if self.w.shape != (4, 4, 3, 3):          # only c2's operator
            return orig(self, R, kind, **kw)
        w = self.weights(kind).copy()
        w.reshape(-1)[5] = np.inf
        monkeypatch.setattr(self, "weights", lambda k, w=w: w)
        try:
            return orig(self, R, kind, **kw)
        finally:
            monkeypatch.delattr(self, "weights")
    monkeypatch.setattr(ops.ConvOp, "bwd_signal", poisoned)
    with np.errstate(all="ignore"):
        with pytest.raises(lrpfast.NonFiniteError, match=r"'c2' \(Convolution\): its relevance") \
                as e:
            net.relevance(x_for(net, rng), 0, rules="epsilon")
    assert e.value.stage == "relevance"


def test_all_finite_helper_exact():
    """The cheap check: a float32 sum that overflows on finite values is not a false alarm."""
    from lrpfast.net import _all_finite
    a = np.full(10, 3e38, np.float32)
    assert _all_finite(a)
    for bad in (np.nan, np.inf, -np.inf):
        b = a.copy()
        b[7] = bad
        assert not _all_finite(b)
    assert _all_finite(np.zeros(0, np.float32))


@pytest.mark.parametrize("layer, blobs, msg", [
    ('layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" }',
     [np.zeros(2), np.array([1.0, -4.0]), np.ones(1)], r"channel 1: variance -4 \+ eps"),
    ('layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" batch_norm_param { eps: 0 } }',
     [np.zeros(2), np.array([1.0, 0.0]), np.ones(1)], r"channel 1: variance 0 \+ eps 0"),
    ('layer { name: "lrn" type: "LRN" bottom: "data" top: "lrn" lrn_param { k: -5 } }', None,
     r"k must be > 0, got -5"),
    ('layer { name: "lrn" type: "LRN" bottom: "data" top: "lrn" lrn_param { alpha: -1 } }', None,
     r"alpha must be >= 0"),
    ('layer { name: "lrn" type: "LRN" bottom: "data" top: "lrn" lrn_param { beta: nan } }', None,
     r"beta must be a finite number"),
    (('layer { name: "e" type: "Eltwise" bottom: "data" bottom: "data" top: "e" '
      'eltwise_param { coeff: 1 coeff: nan } }'), None, r"coeff must be a finite number"),
    ('layer { name: "n" type: "Normalize" bottom: "data" top: "n" norm_param { eps: 0 } }',
     [np.ones(2)], r"eps must be > 0"),
    ('layer { name: "r" type: "ReLU" bottom: "data" top: "r" relu_param { negative_slope: inf } }',
     None, r"negative_slope must be a finite number"),
    ('layer { name: "r" type: "ReLU" bottom: "data" top: "r" }', [np.ones(3)],
     r"takes no weight blobs, got 1"),
    ('layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" batch_norm_param { eps: 0 } }',
     [np.array([0.0, 3e38]), np.array([1.0, 1e-4]), np.ones(1)], r"shift is not finite"),
])
def test_degenerate_layer_parameters_refused_at_load(layer, blobs, msg):
    text = small_net(layer)
    name = layer.split('name: "')[1].split('"')[0]
    w = {name: [np.asarray(b) for b in blobs]} if blobs is not None else {}
    with pytest.raises(lrpfast.LayerError, match=msg), np.errstate(over="ignore"):
        lrpfast.Net.from_text(text, w)


@pytest.mark.parametrize("make", [
    lambda: R.Gamma(float("nan")), lambda: R.Gamma(float("inf")), lambda: R.Gamma(1e39),
    lambda: R.Gamma(0.25, eps=float("nan")), lambda: R.ZBox(float("nan"), float("nan")),
    lambda: R.ZBox(-float("inf"), float("inf")), lambda: R.ZBox([0, np.nan], [1, 1]),
    lambda: R.AlphaBeta(float("nan"), 0), lambda: R.Epsilon("x"),
])
def test_rule_parameters_validated_when_made(make):
    with pytest.raises(ValueError, match="finite|must be a number"):
        make()


# ---------------------------------------------------------------------- 4. output integrity
def _toolbox_setup(tmp_path, lines, base=64):
    root = tmp_path / "imgs"
    root.mkdir(exist_ok=True)
    for i in range(8):
        Image.open(DATA / "images" / f"demo_{i:02d}.png").save(root / f"demo_{i:02d}.png")
    Image.open(DATA / "images" / "demo_00.png").save(root / "demo_00.jpg", quality=95)
    values = {"param_file": PROTO, "model_file": WEIGHTS, "mean_file": MEAN,
              "use_mean_file_asbinaryprotoblob": 1, "synsetfile": "", "lastlayerindex": -2,
              "firstlayerindex": 0, "numclasses": 10, "baseimgsize": base,
              "standalone_outpath": tmp_path / "out", "standalone_rootpath": "imgs",
              "relpropformulatype": 0, "epsstab": 1, "alphabeta_beta": 0,
              "auxiliaryvariable_maxlayerindexforflatdistinconv": 0}
    (tmp_path / "config.txt").write_text("".join(f"{k}\n{v}\n" for k, v in values.items()))
    # the toolbox's layout: list lines under the prefix, the root a stub found in their paths;
    # outputs are OUT/imgs/<file name with extension>_rawhm.txt etc.
    (tmp_path / "list.txt").write_text("".join(f"imgs/{l}\n" for l in lines))
    return ["explain", str(tmp_path / "config.txt"), str(tmp_path / "list.txt"), str(tmp_path),
            "--no-progress"]


def test_explain_collisions_are_errors(tmp_path, capsys):
    """The issue's list demo_00.png 1, demo_00.jpg 2, demo_00.png 5: the output names keep the
    extension (the toolbox's rule), so the .jpg has its own files; the second demo_00.png
    would overwrite the first one's and is reported and skipped (exit 1)."""
    argv = _toolbox_setup(tmp_path, ["demo_00.png 1", "demo_00.jpg 2", "demo_00.png 5",
                                     "demo_01.png 3"])
    assert cli_main(argv) == 1
    err = capsys.readouterr().err
    assert "demo_00.png (file list line 3): would overwrite the outputs of file list line 1" in err
    assert err.count("lrpfast: error:") == 1
    out = tmp_path / "out" / "imgs"
    assert (out / "demo_00.jpg_rawhm.txt").is_file()
    net = lrpfast.Net(str(PROTO), str(WEIGHTS))
    x = ex.preprocess(str(tmp_path / "imgs" / "demo_00.png"), 64, (64, 64),
                      ex.read_mean(MEAN, 1))[1]
    want = ex.read_rawhm(out / "demo_00.png_rawhm.txt")
    net.forward(x[None])
    got = net.backward_relevance([1], lrpfast.RelPropOpts(relpropformulatype=0)).R[0]
    # rawhm holds the channels in RGB order, the net's relevance is BGR
    np.testing.assert_allclose(want, got[::-1], rtol=1e-4, atol=1e-6 * np.abs(got).max())
    assert (out / "demo_01.png_rawhm.txt").is_file()


def test_explain_never_follows_a_symlink(tmp_path):
    argv = _toolbox_setup(tmp_path, ["demo_01.png 1"])
    (tmp_path / "out" / "imgs").mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    link = tmp_path / "out" / "imgs" / "demo_01.png_rawhm.txt"
    link.symlink_to(Path("..") / ".." / "victim.txt")
    assert cli_main(argv) == 0
    assert victim.read_text() == "precious\n"
    assert not link.is_symlink() and ex.read_rawhm(link).shape == (3, 64, 64)


def test_outputs_keep_the_usual_mode(tmp_path):
    argv = _toolbox_setup(tmp_path, ["demo_01.png 1"])
    old = os.umask(0o022)
    try:
        assert cli_main(argv) == 0
    finally:
        os.umask(old)
    for f in (tmp_path / "out" / "imgs").iterdir():
        assert f.stat().st_mode & 0o777 == 0o644, f


def _no_partial_files(out: Path):
    """Every file in ``out`` is complete (rawhm parses, PNG decodes) and no temp file is left."""
    names = [p.name for p in out.rglob("*") if p.is_file()]
    assert not [n for n in names if n.endswith(".part")], names
    for p in out.rglob("*_rawhm.txt"):
        assert ex.read_rawhm(p).shape == (3, 64, 64)
    for p in out.rglob("*.png"):
        with Image.open(p) as im:
            im.load()


def test_ctrl_c_exits_130_without_partial_files(tmp_path, capsys, monkeypatch):
    """A KeyboardInterrupt while the 3rd PNG is being written: exit 130, one line, the file
    being written is absent (not truncated), earlier files are complete."""
    from lrpfast import render
    argv = _toolbox_setup(tmp_path, [f"demo_0{i}.png {i}" for i in range(4)])
    calls = []
    real = render.save_png

    def interrupted(path, img):
        calls.append(path)
        if len(calls) == 3:
            with open(path, "wb") as f:   # half a file, then Ctrl-C
                f.write(b"\x89PNG\r\n")
            raise KeyboardInterrupt
        real(path, img)
    monkeypatch.setattr(render, "save_png", interrupted)
    assert cli_main(argv) == 130
    err = capsys.readouterr().err
    assert err == "lrpfast: interrupted\n"
    out = tmp_path / "out"
    _no_partial_files(out)
    assert (out / "imgs" / "demo_00.png_heatmap.png").is_file()
    assert not (out / "imgs" / "demo_01.png_heatmap.png").exists()


def test_ctrl_c_signal_subprocess(tmp_path):
    """A real SIGINT to ``lrpfast explain`` during a run: exit status 130, one line on stderr,
    no partial files."""
    root_lines = []
    argv = _toolbox_setup(tmp_path, [])
    for k in range(60):   # 60 folders x 8 images: long enough to be interrupted mid-run
        d = tmp_path / "imgs" / f"d{k:02d}"
        d.mkdir()
        for i in range(8):
            os.link(tmp_path / "imgs" / f"demo_{i:02d}.png", d / f"demo_{i:02d}.png")
            root_lines.append(f"imgs/d{k:02d}/demo_{i:02d}.png {i}")
    (tmp_path / "list.txt").write_text("\n".join(root_lines) + "\n")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "lrpfast", *argv], stderr=subprocess.PIPE,
                            text=True, env=env)
    out = tmp_path / "out"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (out / "imgs" / "d01").is_dir():
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip(f"the run ended before the signal arrived (parent SIGINT: "
                    f"{signal.getsignal(signal.SIGINT)})")
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["lrpfast: interrupted"]
    _no_partial_files(out)


def _signal_from_another_thread(sig):
    """Send ``sig`` to this process while a second thread is alive, as the engine's and BLAS's
    threads are during a run: the kernel may hand it to that thread, and Python still runs the
    handler in the main thread at its next bytecode."""
    done = threading.Event()
    t = threading.Thread(target=done.wait)
    t.start()
    try:
        os.kill(os.getpid(), sig)
        time.sleep(0.05)   # delivery, then the main thread's next check of pending signals
        for _ in range(1000):
            pass
    finally:
        done.set()
        t.join()


@pytest.mark.skipif(not hasattr(signal, "SIGTERM") or os.name != "posix", reason="POSIX signals")
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_during_a_write_acts_after_the_file_is_complete(tmp_path, sig):
    """A real signal to the process while an output file is being written (a second thread
    alive, which the kernel may deliver it to): the write completes and is renamed into place,
    the signal's handler runs right after the block, no temporary file is left. Before the
    fix the KeyboardInterrupt came inside the block, leaving the file unwritten."""
    from lrpfast import _files
    signum = getattr(signal, sig)
    seen = []

    def handler(s, frame):
        seen.append(s)
        raise KeyboardInterrupt
    old = signal.signal(signum, handler)
    target = tmp_path / "out.txt"
    reached_end = False
    try:
        with pytest.raises(KeyboardInterrupt):
            with _files.atomic_path(target) as tmp:
                _signal_from_another_thread(signum)
                assert seen == []   # held back
                Path(tmp).write_text("complete\n")
                reached_end = True
    finally:
        signal.signal(signum, old)
    assert reached_end and seen == [signum]
    assert target.read_text() == "complete\n"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]
    assert signal.getsignal(signum) is old   # restored


def test_a_signal_outside_a_write_is_not_held_back(tmp_path):
    """The deferral is only for the block: an ignored signal stays ignored, and after the block
    the handler in place is the one from before (nested blocks included)."""
    from lrpfast import _files
    old = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with _files.atomic_path(tmp_path / "a.txt") as a, _files.atomic_path(tmp_path / "b.txt") as b:
            _signal_from_another_thread(signal.SIGTERM)   # ignored: nothing raised later
            Path(a).write_text("a")
            Path(b).write_text("b")
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]
    # Python's own SIGINT handler, set here: a process started in the background by a
    # non-interactive shell inherits SIGINT ignored, and Python then leaves it so
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with _files.atomic_path(tmp_path / "a.txt") as a, \
                    _files.atomic_path(tmp_path / "b.txt") as b:
                _signal_from_another_thread(signal.SIGINT)
                Path(a).write_text("A")
                Path(b).write_text("B")
        assert (tmp_path / "a.txt").read_text() + (tmp_path / "b.txt").read_text() == "AB"
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, old_int)


def test_cli_reports_any_per_image_failure_and_goes_on(tmp_path, capsys, monkeypatch):
    """A MemoryError (or any exception) for one image is one error line; the next image is
    still written."""
    argv = _toolbox_setup(tmp_path, ["demo_00.png 0", "demo_01.png 1"])
    orig = lrpfast.Net.backward_relevance_multi
    calls = []

    def flaky(self, classinds, opts=None):
        calls.append(1)
        if len(calls) == 1:
            raise MemoryError("Unable to allocate 3.64 TiB")
        return orig(self, classinds, opts)
    monkeypatch.setattr(lrpfast.Net, "backward_relevance_multi", flaky)
    assert cli_main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("lrpfast: error:") == 1
    assert "demo_00.png (file list line 1): relevance failed:" in err
    assert "MemoryError" in err
    assert (tmp_path / "out" / "imgs" / "demo_01.png_rawhm.txt").is_file()
    assert not (tmp_path / "out" / "imgs" / "demo_00.png_rawhm.txt").exists()


def test_heatmaps_memory_refusal_per_image(tmp_path, capsys, monkeypatch):
    """A net that loads but whose sample does not fit the machine (here: 16 MiB available):
    each image fails with one message naming the layer and the bytes, the run goes on."""
    text = small_net("""
layer { name: "wide" type: "Convolution" bottom: "data" top: "wide"
  convolution_param { num_output: 2 kernel_size: 1 pad: 1000 } }
layer { name: "gp" type: "Pooling" bottom: "wide" top: "gp"
  pooling_param { pool: AVE global_pooling: true } }
layer { name: "ip" type: "InnerProduct" bottom: "gp" top: "ip"
  inner_product_param { num_output: 3 } }
""", (1, 3, 64, 64))
    proto = tmp_path / "wide.prototxt"
    proto.write_text(text)
    rng = seeded_rng("hostile", "heatmaps memory")
    w = {"wide": [rng.standard_normal((2, 3, 1, 1)).astype(np.float32), np.zeros(2, np.float32)],
         "ip": [rng.standard_normal((3, 2)).astype(np.float32), np.zeros(3, np.float32)]}
    caffe.write_caffemodel(tmp_path / "w.caffemodel", w, str(proto))
    assert lrpfast.Net(str(proto)).layer_memory()["wide"] == 2 * 2064 ** 2 * (8 + 16)
    monkeypatch.setattr(lrpfast.net, "_available_memory", lambda: 16 << 20)
    imgs = [str(DATA / "images" / f"demo_0{i}.png") for i in range(3)]
    code = cli_main(["heatmaps", "--model", str(proto), "--weights",
                     str(tmp_path / "w.caffemodel"), "--images", *imgs, "--out",
                     str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("lrpfast: error:") == 3
    assert err.count("layer 'wide' alone needs 195.0 MiB") == 3


# ------------------------------------------------------------------------ 5. smaller points
def test_fifo_and_other_non_regular_model_paths_refused(tmp_path):
    fifo = tmp_path / "model.fifo"
    os.mkfifo(fifo)
    result = []

    def load(path, reader):
        try:
            reader(path)
        except Exception as e:   # noqa: BLE001 - recorded for the assertion below
            result.append(e)
    for reader in (caffe.read_net, caffe.read_caffemodel, caffe.read_binaryproto,
                   lambda p: lrpfast.Net(p)):
        th = threading.Thread(target=load, args=(str(fifo), reader), daemon=True)
        th.start()
        th.join(5)
        if th.is_alive():   # unblock the reader so the test process can end
            with open(fifo, "wb"):
                pass
            pytest.fail(f"{reader} blocked on a FIFO")
    assert len(result) == 4
    assert all(isinstance(e, CaffeFormatError) and "is a FIFO; expected a regular file" in str(e)
               for e in result)
    # a FIFO named .txt: the toolbox plain-text model sniffing must not open it either
    fifo_txt = tmp_path / "model.txt"
    os.mkfifo(fifo_txt)
    from lrpfast.toolbox.model import read_model
    for reader in (lambda p: lrpfast.Net(p), read_model):
        th = threading.Thread(target=load, args=(str(fifo_txt), reader), daemon=True)
        th.start()
        th.join(5)
        if th.is_alive():
            with open(fifo_txt, "wb"):
                pass
            pytest.fail(f"{reader} blocked on a FIFO named .txt")
    assert len(result) == 6 and all("FIFO" in str(e) for e in result[4:])
    with pytest.raises(CaffeFormatError, match="is a folder"):
        caffe.read_caffemodel(tmp_path)
    if os.path.exists("/dev/zero"):
        with pytest.raises(CaffeFormatError, match="is a device"):
            caffe.read_caffemodel("/dev/zero")
    with pytest.raises(FileNotFoundError):
        caffe.read_caffemodel(tmp_path / "missing")


def test_non_utf8_prototxt_comment(tmp_path):
    p = tmp_path / "latin1.prototxt"
    p.write_bytes(b'# caf\xe9 au lait\ninput: "data"\n')
    with pytest.raises(CaffeFormatError, match=r"line 1: byte 0xe9 is not UTF-8") as e:
        caffe.read_prototxt(p)
    assert "binary" not in str(e.value)
    p.write_bytes(b"\x08\x01\x12\x03abc")
    with pytest.raises(CaffeFormatError, match="binary data"):
        caffe.read_prototxt(p)


def test_classes_argument_checked():
    rng = seeded_rng("hostile", "classes")
    net = lrpfast.Net.from_text(CONV_IP, conv_ip_weights(rng))
    x = x_for(net, rng)
    for bad in (1.5, None, True, "2", [0, 1.5], [[0, True], 1], {0: 1}):
        with pytest.raises(TypeError, match=r"classes"):
            net.relevance(x, bad)
    np.testing.assert_array_equal(net.relevance(x, np.array(3)), net.relevance(x, 3))
    np.testing.assert_array_equal(net.relevance(x, np.array([3, 1])), net.relevance(x, [3, 1]))
    np.testing.assert_array_equal(net.relevance(x, [np.int64(2), [0, 1]]),
                                  net.relevance(x, [2, [0, 1]]))


def test_name_errors_stay_short():
    """A net of 500 layers: a wrong blob or layer name lists 20 names and a count."""
    layers = "".join(f'layer {{ name: "r{i}" type: "ReLU" bottom: "data" top: "b{i}" }}\n'
                     for i in range(500))
    net = lrpfast.Net.from_text(small_net(layers))
    with pytest.raises(KeyError, match=r"r19, \.\.\. \(480 more\)") as e:
        net.layer("nope")
    assert len(str(e.value)) < 300
    with pytest.raises(KeyError, match=r"\(481 more\)"):
        net.forward(np.zeros((1, 2, 6, 6), np.float32), blobs=["nope"])


def test_top_argument_checked():
    """A bool is refused; out-of-range indices name the range. (Negative indices count from
    the end, Python-style, as lrpfast.sentinels documents; -1/-2 are the deprecated codes.)"""
    rng = seeded_rng("hostile", "top")
    net = lrpfast.Net.from_text(CONV_IP, conv_ip_weights(rng))
    x = x_for(net, rng)
    for bad in (True, np.bool_(False)):
        with pytest.raises(ValueError, match=r"top=.*expected None, lrpfast.LOGITS"):
            net.relevance(x, 0, top=bad)
    with pytest.raises(IndexError, match=r"layer index 7 out of range"):
        net.relevance(x, 0, top=7)
    np.testing.assert_array_equal(net.relevance(x, 0, top=2), net.relevance(x, 0))


def _heatmaps_argv(tmp_path, *extra):
    return ["heatmaps", "--model", str(PROTO), "--weights", str(WEIGHTS), "--images",
            str(DATA / "images" / "demo_00.png"), str(DATA / "images" / "demo_01.png"),
            "--out", str(tmp_path / "o"), "--no-progress", *extra]


@pytest.mark.parametrize("extra, msg", [
    (("--size", "-5"), "--size must be in 1..8192, got -5"),
    (("--size", "100000"), "--size must be in 1..8192"),
    (("--mean", "nan,1,2"), "--mean needs 3 finite values"),
    (("--batch", "0"), "--batch must be in 1..1024"),
    (("--batch", "100000"), "--batch must be in 1..1024"),
])
def test_heatmaps_usage_errors_once(tmp_path, capsys, extra, msg):
    assert cli_main(_heatmaps_argv(tmp_path, *extra)) == 2
    err = capsys.readouterr().err
    assert err.count("lrpfast: error:") == 1 and msg in err
    assert not (tmp_path / "o").exists()


def test_explain_config_bounds(tmp_path, capsys):
    argv = _toolbox_setup(tmp_path, ["demo_00.png 1"], base=40000)
    assert cli_main(argv) == 2
    err = capsys.readouterr().err
    assert "key 'baseimgsize' must be <= 8192" in err and err.count("error:") == 1
    argv = _toolbox_setup(tmp_path, ["demo_00.png 1"])
    assert cli_main(argv + ["--batch", "5000"]) == 2
    assert "--batch must be in 1..1024" in capsys.readouterr().err


def test_geometry_no_int_overflow():
    """geometry.hpp computes sizes in 64 bits and saturates (UBSan flagged the int overflow)."""
    geo = lrpfast._core.geometry
    assert geo.conv_out_size(2**30, 3, 1, 2**30, 1) == 2**31 - 1
    assert geo.pool_out_size(2**30, 3, 1, 2**30 - 1, True) == 2**31 - 1
    assert geo.dilated_extent(2**30, 4) == 4 * (2**30 - 1) + 1
    rng = seeded_rng("hostile", "geometry")
    for _ in range(200):   # small values: the Caffe formulas, independently in Python
        i, k, s, p, d = (int(v) for v in rng.integers(1, 40, 5))
        span = i + 2 * p - (d * (k - 1) + 1)
        assert geo.conv_out_size(i, k, s, p, d) == (0 if span < 0 else span // s + 1)

"""The taps path of conv_forward (src/cpp/kernels/taps.cpp): convolutions with few input channels
per group (a network's first layer) computed tap by tap with the vector lanes along each output
row, against a float64 reference written here from the definition (one strided slice of the
zero-padded input per tap; no im2col, no engine indexing), over strides 1-4, pads 0-3, dilations
1-3, groups, kernel sizes 1-11, planes narrower than a vector and several vectors wide, and
output channel counts that leave a register tile part-filled; plus its promises: the same bits
on the AVX-512 and AVX2 kernels, for an image alone or in any batch, on 1 or 2 threads, for a
stacked pair and for the two weight sets alone; and when 'auto' takes it.

Tolerance: every output is one chain of float32 fused multiply-adds over its T taps, whose error
is at most T * 2^-24 * sum |terms| (sequential summation's bound); BOUND is that, exactly.
"""
from __future__ import annotations

import numpy as np
import pytest

from lrpfast._loader import _core

from conftest import deterministic_as, seeded_rng, simd_paths

# Random geometries: (N, Cg, Og, group, kh, kw, sh, sw, ph, pw, dh, dw, H, W)
_rng = np.random.default_rng(20261208)
RANDOM_CASES = []
for _ in range(40):
    kh, kw = int(_rng.integers(1, 12)), int(_rng.integers(1, 12))
    dh, dw = int(_rng.integers(1, 4)), int(_rng.integers(1, 4))
    ph, pw = int(_rng.integers(0, 4)), int(_rng.integers(0, 4))
    H = int(_rng.integers(max(1, (kh - 1) * dh + 1 - 2 * ph), 40))
    W = int(_rng.integers(max(1, (kw - 1) * dw + 1 - 2 * pw), 90))
    RANDOM_CASES.append((int(_rng.integers(1, 4)), int(_rng.integers(1, 5)),
                         int(_rng.integers(1, 21)), int(_rng.choice([1, 1, 2, 3])), kh, kw,
                         int(_rng.integers(1, 5)), int(_rng.integers(1, 5)), ph, pw, dh, dw, H, W))
# The three first layers the engine meets most, and edge shapes: one output column, a width
# of exactly one and two vectors, 1x1 stride 2 (a downsampling layer with RGB input)
NAMED_CASES = [
    (2, 3, 96, 1, 11, 11, 4, 4, 0, 0, 1, 1, 227, 227),   # CaffeNet conv1
    (2, 3, 64, 1, 7, 7, 2, 2, 3, 3, 1, 1, 64, 70),       # ResNet conv1 (smaller plane)
    (1, 3, 64, 1, 3, 3, 1, 1, 1, 1, 1, 1, 40, 48),       # VGG conv1_1 (smaller plane)
    (3, 2, 5, 1, 3, 3, 1, 1, 0, 0, 1, 1, 6, 3),          # one output column
    (1, 1, 9, 1, 3, 5, 1, 1, 1, 2, 1, 1, 7, 16),         # one vector wide
    (2, 4, 17, 2, 2, 2, 1, 1, 0, 1, 1, 1, 5, 32),        # two vectors wide, 8x+1 channels
    (2, 3, 8, 1, 1, 1, 2, 2, 0, 0, 1, 1, 13, 29),        # 1x1 stride 2
]
CASES = NAMED_CASES + RANDOM_CASES


def out_size(n, k, s, p, d):
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def reference(x, w, b, stride, pad, dilation, group, absolute=False):
    """y[n, o, i, j] = b[o] + sum_{c in group(o), u, v} w[o, c, u, v] *
    xpad[n, c, i*sh + u*dh, j*sw + v*dw], in float64 (absolute: the sum of |terms|)."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    if absolute:
        x, w = np.abs(x), np.abs(w)
    (sh, sw), (ph, pw), (dh, dw) = stride, pad, dilation
    N, C, H, W = x.shape
    O, cg, kh, kw = w.shape
    og = O // group
    Ho, Wo = out_size(H, kh, sh, ph, dh), out_size(W, kw, sw, pw, dw)
    xp = np.zeros((N, C, H + 2 * ph, W + 2 * pw))
    xp[:, :, ph:ph + H, pw:pw + W] = x
    y = np.zeros((N, O, Ho, Wo))
    for g in range(group):
        for u in range(kh):
            for v in range(kw):
                patch = xp[:, g * cg:(g + 1) * cg, u * dh:u * dh + sh * (Ho - 1) + 1:sh,
                           v * dw:v * dw + sw * (Wo - 1) + 1:sw]
                y[:, g * og:(g + 1) * og] += np.einsum("ncij,oc->noij", patch,
                                                       w[g * og:(g + 1) * og, :, u, v])
    if b is not None and not absolute:
        y += b.astype(np.float64)[None, :, None, None]
    return y


def taps_available() -> bool:
    x, w = np.zeros((1, 1, 4, 4), np.float32), np.zeros((1, 1, 3, 3), np.float32)
    return _core.conv_forward_algorithm(x, w) == "taps"


# SIMD settings with a taps kernel of their own on this CPU (AVX-512, AVX2 + FMA)
TAPS_PATHS = [p for p in simd_paths() if p != "generic"]


@pytest.fixture
def taps():
    """Forces the taps path for one test (skipped where the CPU lacks AVX2 + FMA), restoring the
    algorithm and SIMD settings after it."""
    before = _core.get_simd()
    _core.set_conv_algorithm("taps")
    try:
        if not taps_available():
            pytest.skip("the taps kernels need AVX2 + FMA (or AVX-512)")
        yield
    finally:
        _core.set_conv_algorithm("auto")
        _core.set_simd(before)


def make(case, key):
    N, cg, og, group, kh, kw, sh, sw, ph, pw, dh, dw, H, W = case
    rng = seeded_rng("taps", key, *case)
    x = rng.standard_normal((N, cg * group, H, W)).astype(np.float32)
    w = rng.standard_normal((og * group, cg, kh, kw)).astype(np.float32)
    b = rng.standard_normal(og * group).astype(np.float32)
    return x, w, b, (sh, sw), (ph, pw), (dh, dw), group


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
@pytest.mark.parametrize("path", TAPS_PATHS)
def test_forward_vs_float64(case, path, taps):
    _core.set_simd(path)
    x, w, b, s, p, d, group = make(case, "fwd")
    for bias in (b, None):
        y = _core.conv_forward(x, w, bias, s, p, d, group)
        ref = reference(x, w, bias, s, p, d, group)
        assert y.shape == ref.shape and y.dtype == np.float32
        taps_per_output = w.shape[1] * w.shape[2] * w.shape[3]
        scale = reference(x, w, None, s, p, d, group, True)
        if bias is not None:
            scale += np.abs(bias.astype(np.float64))[None, :, None, None]
        bound = (taps_per_output + 1) * 2.0 ** -24 * scale
        err = np.abs(y - ref)
        assert np.all(err <= bound + 1e-30), f"max excess {np.max(err - bound)}"


@pytest.mark.parametrize("case", CASES[:12], ids=[str(c) for c in CASES[:12]])
def test_same_bits_on_both_kernels_threads_and_batches(case, taps):
    """One fma chain per output: AVX-512 and AVX2, 1 and 2 threads, image alone or in its batch,
    all bit-identical."""
    import lrpfast
    x, w, b, s, p, d, group = make(case, "bits")
    before_simd, before_threads = _core.get_simd(), lrpfast.get_num_threads()
    outs = []
    try:
        for path in ("native", "avx2"):
            _core.set_simd(path)
            for threads in (1, 2):
                lrpfast.set_num_threads(threads)
                outs.append(_core.conv_forward(x, w, b, s, p, d, group))
                alone = _core.conv_forward(x[-1:], w, b, s, p, d, group)
                np.testing.assert_array_equal(alone[0], outs[-1][-1])
    finally:
        _core.set_simd(before_simd)
        lrpfast.set_num_threads(before_threads)
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])


@pytest.mark.parametrize("det", [False, True], ids=["default", "deterministic"])
def test_pair_is_the_two_weight_sets_alone(taps, det):
    """conv_forward_pair on the taps path: each half equals that weight set's own call, bit for
    bit (each output channel's chain does not depend on the others)."""
    rng = seeded_rng("taps-pair")
    x = rng.standard_normal((3, 6, 31, 45)).astype(np.float32)
    W, V = (rng.standard_normal((2, 10, 3, 5, 5)).astype(np.float32) for _ in range(2))
    bw, bv = (rng.standard_normal(20).astype(np.float32) for _ in range(2))
    group = 2
    # each group's rows stacked as [W_g; V_g]
    stacked = np.concatenate([np.concatenate([W[g], V[g]]) for g in range(group)])
    bs = np.concatenate([np.concatenate([bw[g * 10:(g + 1) * 10], bv[g * 10:(g + 1) * 10]])
                         for g in range(group)])
    with deterministic_as(det):
        y, y2 = _core.conv_forward_pair(x, stacked, bs, 2, 1, 1, group)
        np.testing.assert_array_equal(y, _core.conv_forward(x, W.reshape(20, 3, 5, 5), bw, 2, 1,
                                                            1, group))
        np.testing.assert_array_equal(y2, _core.conv_forward(x, V.reshape(20, 3, 5, 5), bv, 2, 1,
                                                             1, group))


def test_auto_takes_taps_for_few_input_channels_only():
    """'auto': groups of <= 4 input channels take the taps path (AVX2 + FMA or AVX-512), wider
    ones im2col or Winograd; 'direct' never takes it, 'taps' always; the generic SIMD setting
    has no taps kernels. The paths round differently, so the choice is observable in the bits."""
    if not taps_available():
        pytest.skip("the taps kernels need AVX2 + FMA (or AVX-512)")
    rng = seeded_rng("taps-auto")
    x = rng.standard_normal((2, 8, 20, 20)).astype(np.float32)
    w = rng.standard_normal((32, 4, 5, 5)).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)  # taps start each chain from it, gemm adds it
    try:
        got = {}
        for a in ("auto", "taps", "direct"):
            _core.set_conv_algorithm(a)
            got[a] = (_core.conv_forward_algorithm(x, w, 1, 2, 1, 2),
                      _core.conv_forward(x, w, b, 1, 2, 1, 2))
        assert [got[a][0] for a in ("auto", "taps", "direct")] == ["taps", "taps", "im2col"]
        np.testing.assert_array_equal(got["auto"][1], got["taps"][1])
        assert not np.array_equal(got["taps"][1], got["direct"][1])
        wide = rng.standard_normal((32, 5, 5, 5)).astype(np.float32)
        xw = rng.standard_normal((2, 5, 20, 20)).astype(np.float32)
        _core.set_conv_algorithm("auto")
        assert _core.conv_forward_algorithm(xw, wide, 1, 2) == "im2col"
        w3 = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
        x3 = rng.standard_normal((2, 16, 20, 20)).astype(np.float32)
        assert _core.conv_forward_algorithm(x3, w3, 1, 1) == "winograd"
        _core.set_conv_algorithm("taps")
        assert _core.conv_forward_algorithm(xw, wide, 1, 2) == "taps"
        assert _core.conv_forward_algorithm(x3, w3, 1, 1) == "taps"
        before = _core.get_simd()
        _core.set_simd("generic")
        try:
            assert _core.conv_forward_algorithm(x, w, 1, 2, 1, 2) == "im2col"
        finally:
            _core.set_simd(before)
    finally:
        _core.set_conv_algorithm("auto")


def test_non_finite_inputs_propagate(taps):
    """A NaN or infinity in the input reaches exactly the outputs whose window holds it (the
    padding and the lanes past the row's end never mix into real outputs)."""
    x = np.ones((1, 3, 12, 37), np.float32)
    x[0, 1, 5, 20] = np.nan
    w = np.ones((8, 3, 3, 3), np.float32)
    y = _core.conv_forward(x, w, None, 1, 1)
    bad = np.zeros((12, 37), bool)
    bad[4:7, 19:22] = True
    assert np.array_equal(np.isnan(y[0]), np.broadcast_to(bad, (8, 12, 37)))

"""The CPU convolution's algorithms and fused paths: the Winograd F(2x2,3x3) path
(src/cpp/kernels/winograd.cpp) against float64 references written here with explicit loops over
the 3x3 taps (no im2col, no engine indexing) -- forward and transposed product, pads 0..3, groups,
odd and tiny planes, batches; its invariances (batch composition, thread count); the algorithm
switch; and the rule steps fused into conv_backward_data (z/eps/times), which must be
bit-identical to the unfused sequence on every code path.

Tolerance: an F(2x2,3x3) output is the direct sum re-associated through transforms that only
add, subtract and halve, so its error stays a small multiple of float32 rounding of the terms'
magnitude sum_i |w_i x_i| (measured here: <= 4e-7 of it); WINO_TOL leaves ~25x headroom.
"""
from __future__ import annotations

import os
import subprocess
import sys
import zlib

import numpy as np
import pytest

from lrpfast._loader import _core

from conftest import deterministic_as

WINO_TOL = 1e-5   # |engine - float64| <= WINO_TOL * (sum of |terms|) per output element


def rng_for(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


@pytest.fixture
def algo():
    """Sets the process-wide algorithm for one test, restoring 'auto' after it."""
    yield _core.set_conv_algorithm
    _core.set_conv_algorithm("auto")


def ref_forward(x, w, b, pad, group, absolute=False):
    """y[n, o, i, j] = b[o] + sum_{c in group(o), u, v} w[o, c, u, v] x[n, c, i + u - p, j + v - p]
    in float64 (absolute: the same sum over |terms|, for the error scale)."""
    x, w = x.astype(np.float64), w.astype(np.float64)
    if absolute:
        x, w = np.abs(x), np.abs(w)
    N, C, H, W = x.shape
    O = w.shape[0]
    Ho, Wo = H + 2 * pad - 2, W + 2 * pad - 2
    xp = np.zeros((N, C, H + 2 * pad, W + 2 * pad))
    xp[:, :, pad:pad + H, pad:pad + W] = x
    y = np.zeros((N, O, Ho, Wo))
    cg, og = C // group, O // group
    for g in range(group):
        xs = xp[:, g * cg:(g + 1) * cg]
        for u in range(3):
            for v in range(3):
                patch = xs[:, :, u:u + Ho, v:v + Wo]               # (N, cg, Ho, Wo)
                y[:, g * og:(g + 1) * og] += np.einsum("ncij,oc->noij", patch,
                                                       w[g * og:(g + 1) * og, :, u, v])
    if b is not None and not absolute:
        y += b.astype(np.float64)[None, :, None, None]
    return y


def ref_backward(dy, w, in_chw, pad, group, absolute=False):
    """dx = the adjoint of ref_forward: every output's dy scattered back along its 3x3 taps."""
    dy, w = dy.astype(np.float64), w.astype(np.float64)
    if absolute:
        dy, w = np.abs(dy), np.abs(w)
    N, O, Ho, Wo = dy.shape
    C, H, W = in_chw
    dxp = np.zeros((N, C, H + 2 * pad, W + 2 * pad))
    cg, og = C // group, O // group
    for g in range(group):
        for u in range(3):
            for v in range(3):
                dxp[:, g * cg:(g + 1) * cg, u:u + Ho, v:v + Wo] += np.einsum(
                    "noij,oc->ncij", dy[:, g * og:(g + 1) * og], w[g * og:(g + 1) * og, :, u, v])
    return dxp[:, :, pad:pad + H, pad:pad + W]


# (N, C, O, H, W, pad, group, bias): odd/even/tiny planes (1 output row or column, planes smaller
# than a tile), pads 0..3, 1..3 groups, 1..3 images
CASES = [
    (1, 16, 16, 8, 8, 1, 1, True),
    (2, 5, 7, 9, 11, 1, 1, True),
    (3, 6, 4, 7, 5, 0, 2, False),
    (1, 3, 9, 3, 3, 0, 3, True),      # one output pixel
    (2, 4, 4, 1, 1, 1, 1, True),      # 1x1 input, pad 1
    (1, 8, 6, 2, 13, 2, 2, False),
    (2, 4, 6, 6, 4, 3, 2, True),      # pad 3: forward only takes Winograd
    (1, 2, 3, 17, 3, 1, 1, True),
    (3, 32, 16, 14, 14, 1, 1, True),  # whole images per block
    (1, 16, 32, 40, 30, 1, 2, False), # tile rows per block
]


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
@pytest.mark.parametrize("which", ["winograd", "direct", "auto"])
def test_forward_and_adjoint_vs_float64(case, which, algo):
    N, C, O, H, W, pad, group, bias = case
    rng = rng_for("wino", case)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((O, C // group, 3, 3)).astype(np.float32)
    b = rng.standard_normal(O).astype(np.float32) if bias else None
    algo(which)
    y = _core.conv_forward(x, w, b, 1, pad, 1, group)
    want = ref_forward(x, w, b, pad, group)
    scale = ref_forward(x, w, None, pad, group, absolute=True) + 1e-30
    assert y.shape == want.shape
    assert np.max(np.abs(y - want) / scale) <= WINO_TOL
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = _core.conv_backward_data(dy, w, (C, H, W), 1, pad, 1, group)
    want = ref_backward(dy, w, (C, H, W), pad, group)
    scale = ref_backward(dy, w, (C, H, W), pad, group, absolute=True) + 1e-30
    assert dx.shape == want.shape
    assert np.max(np.abs(dx - want) / scale) <= WINO_TOL


def _pair(C, O, H, seed):
    rng = rng_for("inv", C, O, H, seed)
    x = rng.standard_normal((5, C, H, H)).astype(np.float32)
    w = rng.standard_normal((O, C, 3, 3)).astype(np.float32)
    return x, w


INVARIANCE_CASES = [
    ("winograd", 96, 128, 28), ("winograd", 32, 32, 13), ("winograd", 16, 24, 57),
    ("winograd", 64, 16, 6), ("direct", 16, 24, 57), ("direct", 64, 32, 40),
    ("direct", 24, 20, 9)]   # small planes: batched several images per gemm by default


@pytest.mark.parametrize("which,C,O,H", INVARIANCE_CASES)
def test_batch_and_thread_invariance(which, C, O, H, algo, deterministic):
    """Deterministic mode: an image's output is bit-identical whatever else is in the batch and
    however many threads run -- every gemm call's shape depends on one image and the layer only
    (OpenBLAS's Haswell and small-matrix kernels round differently for other call shapes)."""
    algo(which)
    x, w = _pair(C, O, H, 0)
    dy = np.random.default_rng(1).standard_normal((5, O, H, H)).astype(np.float32)
    threads = _core.get_num_threads()
    try:
        full = _core.conv_forward(x, w, None, 1, 1, 1, 1)
        back = _core.conv_backward_data(dy, w, (C, H, H), 1, 1, 1, 1)
        for lo, hi in [(0, 1), (1, 3), (2, 5), (4, 5)]:
            np.testing.assert_array_equal(_core.conv_forward(x[lo:hi], w, None, 1, 1, 1, 1),
                                          full[lo:hi])
            np.testing.assert_array_equal(
                _core.conv_backward_data(dy[lo:hi], w, (C, H, H), 1, 1, 1, 1), back[lo:hi])
        for t in (1, 2, 3):
            _core.set_num_threads(t)
            np.testing.assert_array_equal(_core.conv_forward(x, w, None, 1, 1, 1, 1), full)
            np.testing.assert_array_equal(_core.conv_backward_data(dy, w, (C, H, H), 1, 1, 1, 1),
                                          back)
    finally:
        _core.set_num_threads(threads)


@pytest.mark.parametrize("which,C,O,H", INVARIANCE_CASES)
def test_default_mode_batch_and_thread_agreement(which, C, O, H, algo):
    """Without deterministic mode an image's output agrees with its output in any batch and on
    any thread count to float32 rounding of the products: another batch or thread count may
    take other gemm call shapes, whose sums round differently, each within WINO_TOL of float64
    (relative to the sum of |terms|), so two results within twice that."""
    algo(which)
    x, w = _pair(C, O, H, 0)
    scale = np.abs(_core.conv_forward(np.abs(x), np.abs(w), None, 1, 1, 1, 1)).astype(np.float64)
    bound = 2 * WINO_TOL * scale + 1e-30
    full = _core.conv_forward(x, w, None, 1, 1, 1, 1)
    threads = _core.get_num_threads()
    try:
        for lo, hi in [(0, 1), (1, 3), (4, 5)]:
            assert (np.abs(_core.conv_forward(x[lo:hi], w, None, 1, 1, 1, 1) - full[lo:hi])
                    <= bound[lo:hi]).all()
        _core.set_num_threads(1)
        assert (np.abs(_core.conv_forward(x, w, None, 1, 1, 1, 1) - full) <= bound).all()
    finally:
        _core.set_num_threads(threads)


def test_auto_picks_winograd_for_wide_layers_only(algo):
    """'auto' equals forced Winograd (bitwise) when both channel counts are >= 16 and the
    direct method otherwise; the two methods round differently, so the choice is observable."""
    x, w = _pair(16, 16, 20, 2)
    outs = {}
    for a in ("auto", "winograd", "direct"):
        algo(a)
        outs[a] = _core.conv_forward(x, w, None, 1, 1, 1, 1)
    np.testing.assert_array_equal(outs["auto"], outs["winograd"])
    assert not np.array_equal(outs["winograd"], outs["direct"])
    x, w = x[:, :15], w[:, :15]
    for a in ("auto", "direct"):
        algo(a)
        outs[a] = _core.conv_forward(x, w, None, 1, 1, 1, 1)
    np.testing.assert_array_equal(outs["auto"], outs["direct"])


def test_algorithm_switch(algo):
    import lrpfast
    for a in ("direct", "winograd", "auto"):
        lrpfast.set_conv_algorithm(a)
        assert _core.get_conv_algorithm() == lrpfast.get_conv_algorithm() == a
        assert lrpfast.info()["conv_algorithm"] == a
    with pytest.raises(ValueError, match="'auto', 'direct', 'winograd' or 'taps'"):
        lrpfast.set_conv_algorithm("fft")


def test_algorithm_from_environment():
    code = "from lrpfast._loader import _core; print(_core.get_conv_algorithm())"
    for v in ("direct", "winograd"):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**os.environ, "LRPFAST_CONV_ALGO": v}, check=True)
        assert out.stdout.strip() == v


# (N, C, O, H, W, k, stride, pad, group, algorithm): every conv_backward_data code path --
# Winograd, 1x1 (pointwise), small planes batched per gemm, large planes in row blocks, strided
FUSED_CASES = [
    (3, 16, 32, 12, 10, 3, 1, 1, 1, "winograd"),
    (2, 6, 4, 9, 7, 3, 1, 0, 2, "winograd"),
    (3, 8, 12, 5, 6, 1, 1, 0, 1, "direct"),
    (5, 6, 9, 7, 5, 3, 2, 1, 3, "direct"),
    (2, 3, 8, 45, 40, 5, 1, 2, 1, "direct"),
    (1, 4, 6, 30, 33, 3, 1, 1, 2, "direct"),
    (6, 4, 8, 34, 34, 5, 1, 2, 2, "direct"),     # row blocks, images spread over threads
    (4, 16, 16, 14, 14, 3, 1, 1, 1, "auto"),
    (3, 8, 12, 17, 15, 1, 2, 0, 1, "auto"),       # strided 1x1: subsampled, one product per image
    (2, 12, 8, 20, 19, 1, 3, 0, 2, "auto"),
]


@pytest.mark.parametrize("case", FUSED_CASES, ids=[str(c) for c in FUSED_CASES])
@pytest.mark.parametrize("eps", [0.0, 1e-3])
def test_fused_backward_is_the_unfused_sequence(case, eps, algo):
    N, C, O, H, W, k, stride, pad, group, which = case
    rng = rng_for("fused", case, eps)
    algo(which)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((O, C // group, k, k)).astype(np.float32)
    z = _core.conv_forward(x, w, None, stride, pad, 1, group)
    z.reshape(-1)[::7] = 0.0                       # exact zeros: the quotient is 0 there
    R = rng.standard_normal(z.shape).astype(np.float32)
    args = ((C, H, W), stride, pad, 1, group)
    s = _core.stabilized_divide(R, z, eps, True)
    want = x * _core.conv_backward_data(s, w, *args)
    np.testing.assert_array_equal(_core.conv_backward_data(R, w, *args, z=z, eps=eps, times=x),
                                  want)
    np.testing.assert_array_equal(_core.conv_backward_data(R, w, *args, z=z, eps=eps),
                                  _core.conv_backward_data(s, w, *args))
    np.testing.assert_array_equal(_core.conv_backward_data(R, w, *args, times=x),
                                  x * _core.conv_backward_data(R, w, *args))


def test_fused_backward_argument_errors():
    x = np.ones((2, 3, 6, 6), np.float32)
    w = np.ones((4, 3, 3, 3), np.float32)
    R = np.ones((2, 4, 4, 4), np.float32)
    with pytest.raises(ValueError, match="z must have the shape of dy"):
        _core.conv_backward_data(R, w, (3, 6, 6), z=R[:1])
    with pytest.raises(ValueError, match="times must have the shape of dx"):
        _core.conv_backward_data(R, w, (3, 6, 6), times=x[:, :2])
    with pytest.raises(ValueError, match="eps"):
        _core.conv_backward_data(R, w, (3, 6, 6), z=R, eps=-1.0)
    with pytest.raises(ValueError, match="eps"):
        _core.conv_backward_data(R, w, (3, 6, 6), z=R, eps=float("nan"))


# (N, C, O, H, W, k, stride, pad, dilation, group, bias, algorithm): every conv_forward code path
# for a stacked pair -- im2col in row blocks (one or several images per thread), small planes
# batched per gemm, 1x1 (pointwise), strided, dilated, grouped, and Winograd (split afterwards);
# O counts one weight set's outputs
PAIR_CASES = [
    (2, 3, 8, 45, 40, 5, 1, 2, 1, 1, True, "direct"),     # row blocks
    (6, 4, 8, 34, 34, 5, 1, 2, 1, 2, True, "direct"),     # row blocks, images over threads
    (5, 6, 9, 7, 5, 3, 2, 1, 1, 3, False, "direct"),      # small planes batched, strided
    (3, 4, 6, 11, 13, 3, 1, 2, 2, 2, True, "direct"),     # dilated
    (3, 8, 12, 5, 6, 1, 1, 0, 1, 1, True, "direct"),      # pointwise
    (2, 6, 4, 9, 7, 1, 1, 0, 1, 2, False, "direct"),      # pointwise, groups
    (1, 3, 5, 30, 30, 11, 4, 0, 1, 1, True, "direct"),    # CaffeNet-like first layer
    (3, 16, 16, 12, 10, 3, 1, 1, 1, 1, True, "winograd"),
    (2, 16, 32, 14, 14, 3, 1, 1, 1, 2, True, "auto"),
    (1, 16, 16, 13, 13, 3, 1, 1, 1, 1, True, "winograd"),    # odd plane: half tiles, batch 1
    (4, 8, 6, 9, 11, 3, 1, 0, 1, 2, False, "winograd"),     # groups, pad 0, 3 outputs a half
    (3, 5, 4, 7, 8, 3, 1, 2, 1, 1, True, "winograd"),       # pad 2, odd channel counts
    (3, 32, 32, 28, 28, 3, 1, 1, 1, 1, True, "auto"),       # Winograd blocks of tile rows
]


@pytest.mark.parametrize("det", [False, True], ids=["default", "deterministic"])
@pytest.mark.parametrize("case", PAIR_CASES, ids=[str(c) for c in PAIR_CASES])
def test_forward_pair(case, algo, det):
    """conv_forward_pair(x, [W; V] per group) = (conv(x, W) + b_W, conv(x, V) + b_V): against
    float64; by default bit-identical to the stacked convolution split per group (one gemm per
    block with both weight sets; 1x1 kernels run each set's own gemm); in deterministic mode,
    off the Winograd path, bit-identical to two separate calls (each weight set runs the gemm
    calls conv_forward makes for it alone: z and z+ do not change when the net computes them
    in one pass, whatever the BLAS kernel). Whatever is not bitwise agrees to rounding."""
    from reference import conv_forward as ref_conv
    N, C, O, H, W, k, stride, pad, dil, group, bias, which = case
    rng = rng_for("pair", case)
    algo(which)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((O, C // group, k, k)).astype(np.float32)
    v = np.maximum(w, 0) if group != 2 else rng.standard_normal(w.shape).astype(np.float32)
    bw = rng.standard_normal(O).astype(np.float32) if bias else None
    bv = np.abs(bw) if bias else None
    og = O // group
    stack = lambda a, c: np.concatenate(   # noqa: E731
        [np.concatenate([a[i * og:(i + 1) * og], c[i * og:(i + 1) * og]]) for i in range(group)])
    ws, bs = stack(w, v), (stack(bw, bv) if bias else None)
    args = (stride, pad, dil, group)
    before = _core.get_deterministic()
    _core.set_deterministic(det)
    try:
        y, y2 = _core.conv_forward_pair(x, ws, bs, *args)
        full = _core.conv_forward(x, ws, bs, *args)
        alone = [_core.conv_forward(x, w, bw, *args), _core.conv_forward(x, v, bv, *args)]
        path = _core.conv_forward_algorithm(x, ws, *args)
    finally:
        _core.set_deterministic(before)
    full = full.reshape((N, group, 2, og) + full.shape[2:])
    assert y.shape == y2.shape == (N, O) + full.shape[4:]
    for half, (got, wt, bt) in enumerate(((y, w, bw), (y2, v, bv))):
        want = ref_conv(x, wt, bt, stride, pad, dil, group)
        scale = ref_conv(np.abs(x), np.abs(wt), None, stride, pad, dil, group) + 1e-30
        assert np.max(np.abs(got - want) / scale) <= WINO_TOL
        split = full[:, :, half].reshape(y.shape)
        for other, bitwise in ((split, path == "winograd" or (not det and path != "pointwise")),
                               (alone[half], det and path != "winograd")):
            if bitwise:
                np.testing.assert_array_equal(got, other)
            else:   # other gemm shapes: both within WINO_TOL of float64
                assert np.max(np.abs(got - other) / scale) <= 2 * WINO_TOL


def test_forward_pair_argument_errors_and_algorithm_names(algo):
    x = np.ones((2, 4, 9, 9), np.float32)
    with pytest.raises(ValueError, match="even number of output channels per group"):
        _core.conv_forward_pair(x, np.ones((6, 2, 3, 3), np.float32), None, 1, 1, 1, 2)
    with pytest.raises(ValueError, match="b must have shape"):
        _core.conv_forward_pair(x, np.ones((4, 4, 3, 3), np.float32), np.ones(3, np.float32))
    with pytest.raises(ValueError, match="input channels per group"):
        _core.conv_forward_pair(x, np.ones((4, 3, 3, 3), np.float32), None)
    y, y2 = _core.conv_forward_pair(x[:0], np.ones((4, 4, 3, 3), np.float32), None, 1, 1)
    assert y.shape == y2.shape == (0, 2, 9, 9)
    with pytest.raises(ValueError, match="kernel extent"):
        _core.conv_forward_algorithm(x, np.ones((4, 4, 11, 11), np.float32))
    x16 = np.ones((1, 16, 20, 20), np.float32)
    algo("auto")
    assert _core.conv_forward_algorithm(x16, np.ones((16, 16, 3, 3), np.float32), 1, 1) == "winograd"
    assert _core.conv_forward_algorithm(x16, np.ones((16, 16, 1, 1), np.float32)) == "pointwise"
    # 1x1 on small planes: several images side by side in one product (im2col's batched way)
    # by default, one product per image in deterministic mode
    x7 = np.ones((8, 16, 7, 7), np.float32)
    assert _core.conv_forward_algorithm(x7, np.ones((16, 16, 1, 1), np.float32)) == "im2col"
    assert _core.conv_forward_algorithm(x7[:1], np.ones((16, 16, 1, 1), np.float32)) == "pointwise"
    assert _core.conv_forward_algorithm(np.ones((8, 16, 8, 8), np.float32),
                                        np.ones((16, 16, 1, 1), np.float32)) == "pointwise"
    before = _core.get_deterministic()
    _core.set_deterministic(True)
    try:
        assert _core.conv_forward_algorithm(x7, np.ones((16, 16, 1, 1), np.float32)) == "pointwise"
    finally:
        _core.set_deterministic(before)
    assert _core.conv_forward_algorithm(x16, np.ones((16, 16, 5, 5), np.float32), 1, 2) == "im2col"
    algo("direct")
    assert _core.conv_forward_algorithm(x16, np.ones((16, 16, 3, 3), np.float32), 1, 1) == "im2col"


@pytest.mark.parametrize("case", CASES, ids=[str(c) for c in CASES])
def test_kept_winograd_kernels_give_the_same_bits(case, algo):
    """The kernels transformed once (winograd_kernels, kept by the caller) give exactly what the
    per-call transform gives, forward and adjoint, and match the float64 reference."""
    N, C, O, H, W, pad, group, bias = case
    rng = rng_for("kept-u", case)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((O, C // group, 3, 3)).astype(np.float32)
    b = rng.standard_normal(O).astype(np.float32) if bias else None
    algo("winograd")
    uf = _core.winograd_kernels(w, group, False)
    ub = _core.winograd_kernels(w, group, True)
    assert uf.shape == ub.shape == (16 * O * (C // group),)
    y = _core.conv_forward(x, w, b, 1, pad, 1, group, winograd=uf)
    np.testing.assert_array_equal(y, _core.conv_forward(x, w, b, 1, pad, 1, group))
    err = np.abs(y - ref_forward(x, w, b, pad, group))
    assert (err <= WINO_TOL * ref_forward(x, w, b, pad, group, absolute=True) + 1e-30).all()
    dy = rng.standard_normal(y.shape).astype(np.float32)
    if _core.winograd_applies(N, (C, H, W), w.shape, 1, pad, 1, group, True):
        dx = _core.conv_backward_data(dy, w, (C, H, W), 1, pad, 1, group, winograd=ub)
        np.testing.assert_array_equal(dx, _core.conv_backward_data(dy, w, (C, H, W), 1, pad, 1,
                                                                   group))
        err = np.abs(dx - ref_backward(dy, w, (C, H, W), pad, group))
        assert (err <= WINO_TOL * ref_backward(dy, w, (C, H, W), pad, group, absolute=True)
                + 1e-30).all()
    else:
        assert pad > 2   # the adjoint's Winograd path needs pad <= 2


def test_winograd_kernels_argument_errors(algo):
    w = np.ones((4, 2, 3, 3), np.float32)
    x = np.ones((1, 2, 5, 5), np.float32)
    with pytest.raises(ValueError, match=r"winograd must hold 16\*O\*C/group = 128 values"):
        _core.conv_forward(x, w, None, 1, 1, winograd=np.ones(127, np.float32))
    with pytest.raises(ValueError, match="3x3 kernels"):
        _core.winograd_kernels(np.ones((4, 2, 5, 5), np.float32))
    with pytest.raises(ValueError, match="must divide the output channels"):
        _core.winograd_kernels(w, 3)
    with pytest.raises(ValueError, match="the kernels are 3x3 only"):
        _core.conv_forward(x, np.ones((4, 2, 1, 1), np.float32), None,
                           winograd=np.ones(128, np.float32))
    with pytest.raises(ValueError, match="w_shape must be a tuple"):
        _core.winograd_applies(1, (2, 5, 5), (4, 2, 3), 1, 1, 1, 1, False)
    algo("direct")
    assert not _core.winograd_applies(1, (2, 5, 5), (4, 2, 3, 3), 1, 1, 1, 1, False)
    algo("winograd")
    assert _core.winograd_applies(1, (2, 5, 5), (4, 2, 3, 3), 1, 1, 1, 1, False)
    assert not _core.winograd_applies(1, (2, 5, 5), (4, 2, 3, 3), 2, 1, 1, 1, False)


def test_conv_op_transforms_its_kernels_once_per_weight_set_and_direction(monkeypatch, algo):
    """ops.ConvOp keeps U per (weights, direction): repeated passes do not transform again,
    release() drops them, and the results are the per-call transform's bits."""
    from lrpfast import ops
    algo("winograd")
    rng = rng_for("op-u")
    w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    op = ops.ConvOp(w, b, (8, 9, 9), (1, 1), (1, 1), (1, 1), 1)
    made = []
    real = _core.winograd_kernels
    monkeypatch.setattr(_core, "winograd_kernels",
                        lambda w, g, adj: made.append(adj) or real(w, g, adj))
    x = np.abs(rng.standard_normal((2, 8, 9, 9))).astype(np.float32)
    R = rng.standard_normal((2, 16, 9, 9)).astype(np.float32)
    for _ in range(3):
        y = op.fwd(x)
        dx = op.bwd(R)
        op.bwd_signal(R, "pos", z=y, eps=1e-6)
    assert made == [False, True, True]   # w forward, w adjoint, W+ adjoint: once each
    np.testing.assert_array_equal(y, _core.conv_forward(x, w, b, 1, 1, 1, 1))
    np.testing.assert_array_equal(dx, _core.conv_backward_data(R, w, (8, 9, 9), 1, 1, 1, 1))
    op.release()
    op.fwd(x)
    assert made == [False, True, True, False]


def _stacked(w, v, group):
    og = w.shape[0] // group
    return np.concatenate([np.concatenate([w[i * og:(i + 1) * og], v[i * og:(i + 1) * og]])
                           for i in range(group)])


# (N, C, O per set, H, W, pad, group): blocks of whole images and of tile rows; one set's outputs
# wider than its inputs (the stacked call's blocks would be twice as wide as the pair's); groups
WINO_PAIR_CASES = [(1, 16, 128, 28, 28, 1, 1), (3, 32, 16, 14, 14, 1, 1),
                   (2, 32, 64, 13, 11, 0, 2), (1, 64, 16, 57, 9, 2, 1)]


@pytest.mark.parametrize("case", WINO_PAIR_CASES, ids=[str(c) for c in WINO_PAIR_CASES])
def test_winograd_pair_against_float64_and_the_two_calls(case, algo):
    """conv_forward_pair on the Winograd path (one input transform, products of both weight
    sets): each half against float64 and the separate Winograd calls within WINO_TOL of the
    terms' magnitude; the kept stacked kernels (winograd=) give the bits of the per-call
    transform; a wrong-sized kernel array is refused."""
    from reference import conv_forward as ref_conv
    N, C, O, H, W, pad, group = case
    rng = rng_for("wino-pair", case)
    algo("auto")
    x = np.abs(rng.standard_normal((N, C, H, W))).astype(np.float32)
    w = rng.standard_normal((O, C // group, 3, 3)).astype(np.float32)
    v = np.maximum(w, 0)
    bw = rng.standard_normal(O).astype(np.float32)
    ws, bs = _stacked(w, v, group), _stacked(bw, np.abs(bw), group)
    assert _core.conv_forward_algorithm(x, w, 1, pad, 1, group) == "winograd"
    u = _core.winograd_kernels(ws, group, False)
    y, y2 = _core.conv_forward_pair(x, ws, bs, 1, pad, 1, group, winograd=u)
    y_, y2_ = _core.conv_forward_pair(x, ws, bs, 1, pad, 1, group)
    np.testing.assert_array_equal(y, y_)
    np.testing.assert_array_equal(y2, y2_)
    for got, wt, bt in ((y, w, bw), (y2, v, np.abs(bw))):
        scale = ref_conv(x, np.abs(wt), None, 1, pad, 1, group) + 1e-30
        assert np.max(np.abs(got - ref_conv(x, wt, bt, 1, pad, 1, group)) / scale) <= WINO_TOL
        alone = _core.conv_forward(x, wt, bt, 1, pad, 1, group)
        assert np.max(np.abs(got - alone) / scale) <= 2 * WINO_TOL
    with pytest.raises(ValueError, match="winograd must hold"):
        _core.conv_forward_pair(x, ws, bs, 1, pad, 1, group,
                                winograd=_core.winograd_kernels(w, group, False))


def test_pair_takes_the_path_of_one_weight_set(algo):
    """8 outputs per set stay on the direct path (under Winograd's 16-channel minimum) even
    though the stacked 16 would qualify: the pair is then bit-identical to the stacked direct
    convolution split, as on every direct path."""
    rng = rng_for("pair-path")
    algo("auto")
    x = np.abs(rng.standard_normal((2, 32, 14, 14))).astype(np.float32)
    w = rng.standard_normal((8, 32, 3, 3)).astype(np.float32)
    ws = _stacked(w, np.maximum(w, 0), 1)
    assert _core.conv_forward_algorithm(x, w, 1, 1) == "im2col"
    assert _core.conv_forward_algorithm(x, ws, 1, 1) == "winograd"
    y, y2 = _core.conv_forward_pair(x, ws, None, 1, 1)
    algo("direct")
    full = _core.conv_forward(x, ws, None, 1, 1)
    np.testing.assert_array_equal(y, full[:, :8])
    np.testing.assert_array_equal(y2, full[:, 8:])


@pytest.mark.parametrize("det", [False, True], ids=["default", "deterministic"])
def test_conv_op_pairs_z_and_zplus_on_the_winograd_path(monkeypatch, algo, det):
    """ops.ConvOp on a Winograd layer: by default z and z+ come from one conv_forward_pair
    with the kept stacked kernels (transformed once over repeated passes); in deterministic
    mode from each weight set's own call (pairs_zplus False), so the bits of z never depend
    on the rule."""
    from lrpfast import ops
    algo("auto")
    rng = rng_for("op-pair")
    w = rng.standard_normal((32, 16, 3, 3)).astype(np.float32)
    b = rng.standard_normal(32).astype(np.float32)
    op = ops.ConvOp(w, b, (16, 12, 12), (1, 1), (1, 1), (1, 1), 1)
    x = np.abs(rng.standard_normal((2, 16, 12, 12))).astype(np.float32)
    made = []
    real = _core.winograd_kernels
    monkeypatch.setattr(_core, "winograd_kernels",
                        lambda w, g, adj: made.append(w.shape[0]) or real(w, g, adj))
    before = _core.get_deterministic()
    _core.set_deterministic(det)
    try:
        assert op.pairs_zplus(x) is (not det)
        if not det:
            for _ in range(3):
                z, zp = op.fwd_zplus(x)
            assert made == [64]   # the stacked [W; W+] kernels, transformed once
            want = _core.conv_forward_pair(x, op.weights("wpos"), op.bias("wpos"), 1, 1)
            np.testing.assert_array_equal(z, want[0])
            np.testing.assert_array_equal(zp, want[1])
            scale = _core.conv_forward(x, np.abs(w), None, 1, 1) + 1e-30
            assert np.max(np.abs(z - op.fwd(x)) / scale) <= 2 * WINO_TOL
    finally:
        _core.set_deterministic(before)


# (N, C, O, H, W, stride (h, w), group): strided 1x1 kernels without padding (ResNet's
# downsampling shortcuts) -- one product per image on the subsampled input, or several small
# planes batched the im2col way -- odd sizes, strides that do and do not divide the plane
STRIDED_1X1 = [
    (3, 8, 12, 17, 15, (2, 2), 1), (2, 6, 10, 20, 23, (3, 2), 2), (1, 5, 7, 9, 31, (1, 4), 1),
    (4, 16, 24, 11, 11, (2, 2), 1), (9, 8, 8, 8, 8, (2, 2), 4), (2, 3, 5, 40, 1, (5, 1), 1)]


@pytest.mark.parametrize("det", [False, True], ids=["default", "deterministic"])
@pytest.mark.parametrize("case", STRIDED_1X1, ids=[str(c) for c in STRIDED_1X1])
def test_strided_1x1_vs_float64(case, det):
    """conv_forward keeps the pixels (oh*sh, ow*sw) and multiplies; conv_backward_data puts each
    output's W^T dy back on its pixel and +0 on the pixels no output reads -- against float64
    written from that definition (slices, no engine indexing); an image alone equals it in its
    batch in deterministic mode."""
    with deterministic_as(det):
        _check_strided_1x1(case, det)


def _check_strided_1x1(case, det):
    N, C, O, H, W, (sh, sw), group = case
    rng = rng_for("s1x1", case)
    x = rng.standard_normal((N, C, H, W)).astype(np.float32)
    w = rng.standard_normal((O, C // group, 1, 1)).astype(np.float32)
    b = rng.standard_normal(O).astype(np.float32)
    cg, og = C // group, O // group
    kept = x.astype(np.float64)[:, :, ::sh, ::sw]
    ref = np.concatenate([np.einsum("nchw,oc->nohw", kept[:, g * cg:(g + 1) * cg],
                                    w[g * og:(g + 1) * og, :, 0, 0].astype(np.float64))
                          for g in range(group)], axis=1) + b[None, :, None, None]
    y = _core.conv_forward(x, w, b, (sh, sw), 0, 1, group)
    scale = np.abs(kept).sum(1, keepdims=True).max() * np.abs(w).max() + np.abs(b).max()
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, rtol=0, atol=1e-5 * scale)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = _core.conv_backward_data(dy, w, (C, H, W), (sh, sw), 0, 1, group)
    want = np.zeros((N, C, H, W))
    want[:, :, ::sh, ::sw] = np.concatenate(
        [np.einsum("nohw,oc->nchw", dy[:, g * og:(g + 1) * og].astype(np.float64),
                   w[g * og:(g + 1) * og, :, 0, 0].astype(np.float64)) for g in range(group)],
        axis=1)
    np.testing.assert_allclose(dx, want, rtol=0, atol=1e-5 * np.abs(dy).sum(1).max() *
                               np.abs(w).max())
    off = np.ones((H, W), bool)
    off[::sh, ::sw] = False
    assert not np.signbit(dx[:, :, off]).any() and not dx[:, :, off].any()
    if det:
        np.testing.assert_array_equal(_core.conv_forward(x[-1:], w, b, (sh, sw), 0, 1, group)[0],
                                      y[-1])
        np.testing.assert_array_equal(
            _core.conv_backward_data(dy[-1:], w, (C, H, W), (sh, sw), 0, 1, group)[0], dx[-1])


def test_strided_1x1_takes_the_pointwise_path():
    x = np.zeros((8, 64, 56, 56), np.float32)
    w = np.zeros((128, 64, 1, 1), np.float32)
    assert _core.conv_forward_algorithm(x, w, 2, 0) == "pointwise"
    assert _core.conv_forward_algorithm(x, w, 2, 1) == "im2col"       # padded: im2col
    assert _core.conv_forward_algorithm(x[:, :, :13, :13], w, 2, 0) == "im2col"  # 7x7: batched
